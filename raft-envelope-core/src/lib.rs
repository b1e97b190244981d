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
//! use raft_envelope_core::*;
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

mod cipher;
mod control;
mod decision;
mod envelope;
mod error;
mod ids;
mod keyring;
mod layer;
mod layer_state;
mod provider;
mod retention;
mod snapshot;
mod traits;

/// The `async-trait` attribute, re-exported so a [`KeyProvider`] can be implemented without
/// depending on `async-trait` directly.
pub use async_trait::async_trait;

pub use cipher::EnvelopeCipher;
pub use control::{
    is_clear_control_entry, ControlCommand, ControlDecodeError, InstallKey, CONTROL_HEADER_LEN,
    CONTROL_MAGIC, CONTROL_VERSION, MAX_CONTROL_ENTRY_LEN,
};
pub use decision::{decide, decide_owned, ApplyGate, ApplyStats, Decision, EntryKind};
pub use envelope::{EnvelopeHeader, FORMAT_VERSION, HEADER_LEN, NONCE_LEN, OVERHEAD, TAG_LEN};
pub use error::{
    BoxedError, ConfigError, FailureReason, FatalApplyError, Malformation, OpenError, SealError,
};
pub use ids::{Algorithm, ClusterId, KekId, KeyId, ProposalId, Purpose};
pub use keyring::{KeyState, KeyStats, Keyring, SealBudget, SecretKey, KEY_LEN};
pub use layer::{EnvelopeLayer, Proposal};
pub use layer_state::{
    AppendRefusal, ControlError, ControlOutcome, EncryptionStatus, LayerKey, LayerSnapshot, LayerState,
    SnapshotCapture, LAYER_SNAPSHOT_MAGIC,
};
pub use provider::{FileKekProvider, KeyProvider, KeyProviderError, WrapContext, WrappedKey};
pub use retention::{DestroyRefused, RetainedSnapshot, Retention};
pub use snapshot::{is_layer_snapshot, SnapshotHeader, SNAPSHOT_MAGIC};
pub use traits::{Cutover, CutoverSource, PayloadUnwrapper, PayloadWrapper};
