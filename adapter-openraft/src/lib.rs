#![doc = include_str!("../README.md")]
#![forbid(unsafe_code)]

mod admin;
mod codec;
mod config;
mod drain;
mod log_store;
mod payload;
mod plane;
mod raft;
mod state_machine;
mod switch_on;
#[cfg(feature = "testing")]
pub mod testing;

pub use codec::{BytesCodec, CodecDirection, CodecError, JsonCodec, PayloadCodec};
pub use config::ClientWriteRaftError;
pub use config::{Sealed, SealedRaft};
pub use drain::DrainTimeout;
pub use log_store::PrefetchingLogStore;
pub use payload::EnvelopePayload;
pub use plane::{forward_to_leader, AdminError, PlaneError, DEFAULT_ADMIN_TIMEOUT};
pub use raft::{EnvelopeRaft, PreparedWrite, WriteError};
pub use raft_envelope_core::lifecycle::EncryptionStatus;
pub use state_machine::{
    layer_from_state, EnvelopeSnapshotBuilder, EnvelopeStateMachine, HaltRecord,
    DEFAULT_PROVIDER_WARN_INTERVAL,
};
pub use switch_on::{switch_on, SwitchOnError, SwitchOnNode};
