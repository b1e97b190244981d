#![doc = include_str!("../README.md")]
#![forbid(unsafe_code)]

mod codec;
mod config;
mod payload;
mod raft;
mod state_machine;
mod switch_on;
pub mod testing;

pub use codec::{BytesCodec, CodecError, JsonCodec, PayloadCodec};
pub use config::{Sealed, SealedRaft};
pub use payload::EnvelopePayload;
pub use raft::{ClientWriteRaftError, DrainTimeout, EnvelopeRaft, PreparedWrite, WriteError};
pub use state_machine::{EnvelopeSnapshotBuilder, EnvelopeStateMachine, HaltRecord};
pub use switch_on::{switch_on, SwitchOnError, SwitchOnNode};
