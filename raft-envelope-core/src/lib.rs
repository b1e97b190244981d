//! The engine-free core of raft-envelope: authenticated encryption of replicated Raft payloads.
//!
//! This crate is the contract every engine adapter builds on:
//!
//! - three roles: [`PayloadWrapper`] seals a proposal, [`PayloadUnwrapper`] opens a committed
//!   entry, [`CutoverSource`] tells the log index after which every payload must be sealed;
//! - the envelope wire format v1 ([`EnvelopeHeader`], byte table in `DESIGN.md`);
//! - [`EnvelopeCipher`], AES-256-GCM and AES-256-GCM-SIV on `aws-lc-rs`, over a [`Keyring`] of
//!   active / decrypt-only / destroyed keys with per-key sealing budgets;
//! - [`decide`] / [`ApplyGate`], the single apply-side decision every adapter calls, so that no
//!   engine can drift from the behavioural contract;
//! - the key lifecycle through the log: [`ControlCommand`] (control entry format v1, byte table
//!   in `DESIGN.md` §10), applied at its log index by [`LayerState`] on every replica, with data
//!   keys wrapped under a key-encryption key by a [`KeyProvider`] ([`FileKekProvider`] built in).
//!
//! # Sealing and opening
//!
//! ```
//! use std::sync::Arc;
//! use raft_envelope_core::{Algorithm, ApplyGate, ClusterId, Cutover, EntryKind, EnvelopeCipher, KeyId, Keyring, PayloadWrapper, ProposalId, SecretKey};
//! use raft_envelope_core::apply::decide;
//! use raft_envelope_core::error::ConfigError;
//! use raft_envelope_core::wire::OVERHEAD;
//!
//! // One keyring per node, the same keys on every replica.
//! let keyring = Arc::new(Keyring::with_active_key(KeyId(1), Algorithm::Aes256Gcm, SecretKey::generate()?)?);
//! let cipher = Arc::new(EnvelopeCipher::new(ClusterId::new("payments")?, keyring));
//!
//! // Proposer side: seal before proposing.
//! let envelope = cipher.seal(ProposalId(42), b"debit 10").expect("seal");
//! assert_eq!(envelope.len(), b"debit 10".len() + OVERHEAD);
//!
//! // Apply side: every committed entry goes through the gate, in log order.
//! let gate = ApplyGate::new(Arc::new(Cutover::at(100))).with_unwrapper(cipher);
//! match gate.decide(101, EntryKind::Envelope, &envelope) {
//!     Ok(decision) => assert_eq!(decision.as_bytes(), b"debit 10"), // hand to the state machine
//!     Err(halt) => panic!("stop applying without advancing: {halt}"),
//! }
//! # Ok::<(), ConfigError>(())
//! ```
//!
//! # Inert by default
//!
//! With no cutover and no wrapper nothing changes: cleartext payloads pass through byte for byte.
//!
//! ```
//! use raft_envelope_core::{ApplyGate, Decision, EntryKind};
//!
//! let gate = ApplyGate::inert();
//! assert_eq!(gate.decide(7, EntryKind::Cleartext, b"x").unwrap(), Decision::PassThrough(b"x"));
//! ```

#![forbid(unsafe_code)]

/// The workspace README's examples, compiled and run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../../README.md")]
struct ReadmeDoctests;

mod apply_error;
mod cipher;
mod control;
mod decision;
mod envelope;
mod errors;
mod ids;
mod integrity;
mod keyring;
mod layer;
mod layer_state;
mod local;
mod names;
mod retention;
mod snapshot;
mod traits;

pub mod lifecycle;
#[cfg(feature = "metrics")]
pub mod metrics;
pub mod provider;

/// The `async-trait` attribute, re-exported so a [`provider::KeyProvider`] or a
/// [`lifecycle::ControlPlane`] can be implemented without depending on `async-trait` directly.
pub use async_trait::async_trait;

pub use apply_error::FatalApplyError;
pub use cipher::EnvelopeCipher;
pub use decision::{ApplyGate, Decision, EntryKind};
pub use errors::{OpenError, SealError};
pub use ids::{Algorithm, KeyId, ProposalId};
pub use keyring::{Keyring, SecretKey};
pub use layer::EnvelopeLayer;
pub use layer_state::LayerState;
pub use names::ClusterId;
pub use traits::{Cutover, CutoverSource, PayloadUnwrapper, PayloadWrapper};

/// Wire formats: the envelope header and its constants, layer control entries, snapshot
/// frames. Byte tables and test vectors in `DESIGN.md`.
pub mod wire {
    pub use crate::control::{
        is_clear_control_entry, CommandKind, ControlCommand, ControlDecodeError, InstallKey,
        CONTROL_HEADER_LEN, CONTROL_MAGIC, CONTROL_VERSION, MAX_CONTROL_ENTRY_LEN,
    };
    pub use crate::envelope::{EnvelopeHeader, FORMAT_VERSION, HEADER_LEN, NONCE_LEN, OVERHEAD, TAG_LEN};
    pub use crate::ids::Purpose;
    pub use crate::keyring::KEY_LEN;
    pub use crate::layer_state::LAYER_SNAPSHOT_MAGIC;
    pub use crate::snapshot::{is_layer_snapshot, SnapshotHeader, SNAPSHOT_MAGIC};
}

/// The apply side beyond [`ApplyGate`]: the decision as free functions, its counters, and what
/// [`EnvelopeLayer::prepare`] returns.
pub mod apply {
    pub use crate::decision::{
        decide, decide_into, decide_owned, ApplyGate, ApplyStats, Decision, EntryKind,
    };
    pub use crate::integrity::{Admission, ApplyContext, EntryRecord};
    pub use crate::layer::Proposal;
}

/// Every error type of the crate. None of them ever holds key material or payload bytes.
pub mod error {
    pub use crate::apply_error::{ControlError, FatalApplyError};
    pub use crate::errors::{
        AppendRefusal, BoxedError, ConfigError, FailureReason, Malformation, OpenError, SealError,
    };
}
