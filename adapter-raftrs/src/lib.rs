//! raft-rs (tikv `raft` 0.7) adapter for raft-envelope: sealed proposals and a fail-closed
//! applier, with the same semantics as the openraft adapter.
//!
//! - [`EnvelopeProposer`] decorates `RawNode::propose`: every payload goes through
//!   [`EnvelopeLayer::prepare`](raft_envelope_core::EnvelopeLayer::prepare). Inert, the stored
//!   entry is exactly what was proposed (`data` and `context` byte for byte), so an existing
//!   cluster adopts the adapter without migrating its log. Sealing, `data` is the envelope and
//!   `context` the adapter's marker ([`framing`]).
//! - [`EnvelopeApplier`] decorates the application's [`StateMachine`]: every committed entry goes
//!   through `layer.gate().decide(index, kind, data)`; conf changes and empty leader entries are
//!   control entries, untouched.
//! - [`EnvelopeNode`] drives a `RawNode` with both, fails closed the raft-rs way (never
//!   `advance()`; `advance_append` then `advance_apply_to(last good)`; halted means not driven
//!   any more; restart with `Config.applied` = last good re-delivers the failing entry), refuses
//!   forwarded cleartext proposals while sealing, and routes responses by `(index, term)` and
//!   by the authenticated proposal id of an opened envelope ([`ProposalTracker`]), reporting
//!   dropped proposals as errors.
//!
//! # Refusals and limits
//!
//! - **Cleartext above the cutover.** A node whose layer does not seal refuses a cleartext
//!   proposal once a cutover `C` is in force and its last log index is `>= C`: the proposer with
//!   [`ProposeError::NotSealing`] (retryable, nothing appended), [`EnvelopeNode::step`] a
//!   forwarded one with [`StepError::CleartextProposalRefused`]. Such an entry could only land
//!   above `C` and would halt every replica.
//! - **Empty payloads** are refused ([`ProposeError::EmptyPayload`], nothing appended): raft-rs
//!   stores an empty payload with an empty context like its own no-op entry, which the state
//!   machine never sees. (openraft applies empty payloads; encode requests with at least one
//!   byte to get the same behaviour on both.)
//! - **Snapshots.** With a layer state, snapshots carry it and are sealed
//!   ([`EnvelopeNode::compact`], [`LayerState::seal_snapshot`](raft_envelope_core::LayerState::seal_snapshot));
//!   a received one is restored only once opened and authenticated, else the node halts at
//!   its index (fail closed). With a plain layer nothing can authenticate a snapshot, so while
//!   a cutover is in force [`EnvelopeNode`] refuses to restore one: the node halts with a
//!   [`FatalApplyError`](raft_envelope_core::FatalApplyError) naming the snapshot's index,
//!   [`FailureReason::UnsealedSnapshot`](raft_envelope_core::error::FailureReason::UnsealedSnapshot) and the cutover, plus a
//!   `tracing` error event. Inert, snapshots are restored as before. [`MemStore`] keeps the
//!   snapshot's data so a compacted leader can send it.
//! - **Barriers** are proposed on the leader only ([`ProposeError::NotLeader`]) and matched
//!   only by `(index, term)`: their marker id is not authenticated.
//! - **Keys and cutover through the log.** [`EnvelopeNode::with_layer_state`] builds the layer
//!   from a replicated [`LayerState`](raft_envelope_core::LayerState): layer control entries
//!   (context marker kind `0x03`, [`framing::is_layer_control`]) are applied by
//!   `LayerState::apply_control` (a halt there is a halt like any other), never reach the user's
//!   state machine, and are held until the driver prefetched their keys
//!   ([`EnvelopeNode::prefetch_pending`]). Admin: [`EnvelopeNode::propose_install`],
//!   [`EnvelopeNode::propose_control`], [`EnvelopeNode::encryption_status`],
//!   [`EnvelopeNode::rotation_due`], [`EnvelopeNode::compact`], [`EnvelopeNode::retention`],
//!   and on the test cluster `enable_encryption`, `rotate_key`, `retire_key`, `destroy_key`
//!   (with proof), `encryption_status`, `compact`, `add_member`, and automatic rotation.
//! - [`testing::Cluster`] runs a real multi-node raft-rs cluster in one process on a
//!   deterministic message pump, with fault hooks and the switch-on procedure.
//!
//! # Order
//!
//! A proposal is prepared (sealed) by the layer first, then appended by raft-rs; a committed
//! entry is decided by the layer's gate first, then handed to the state machine:
//!
//! ```
//! use std::sync::Arc;
//! use raft::{storage::MemStorage, Config};
//! use raft_envelope_core::{Algorithm, ApplyGate, ClusterId, EntryKind, EnvelopeCipher, EnvelopeLayer, KeyId, Keyring, SecretKey};
//! use raft_envelope_core::error::ConfigError;
//! use raft_envelope_raftrs::{framing, testing::KvStore, EnvelopeNode};
//!
//! let ring = Arc::new(Keyring::with_active_key(KeyId(1), Algorithm::Aes256Gcm, SecretKey::generate()?)?);
//! let cipher = Arc::new(EnvelopeCipher::new(ClusterId::new("orders")?, ring));
//! let layer = Arc::new(EnvelopeLayer::new(ApplyGate::inert().with_unwrapper(cipher.clone())).with_wrapper(cipher));
//! let storage = MemStorage::new_with_conf_state((vec![1], vec![]));
//! let logger = slog::Logger::root(slog::Discard, slog::o!());
//! let config = Config { id: 1, ..Config::default() };
//! let mut node = EnvelopeNode::new(&config, storage.clone(), KvStore::default(), layer, &logger).expect("node");
//! node.campaign().expect("campaign");
//! let ticket = node.propose(b"x=1".to_vec()).expect("propose");
//! while node.raw_node().has_ready() {
//!     node.on_ready().expect("ready");
//! }
//! // The log holds the envelope, marked in the entry's context ...
//! let (index, _term) = ticket.appended_at.expect("proposed on the leader");
//! let entry = raft::Storage::entries(&storage, index, index + 1, None, raft::GetEntriesContext::empty(false))
//!     .expect("stored")
//!     .remove(0);
//! assert_eq!(framing::classify(&entry), EntryKind::Envelope);
//! assert!(!entry.data.windows(3).any(|w| w == b"x=1"));
//! // ... and the state machine the plaintext.
//! assert_eq!(node.state_machine().get("x"), Some("1"));
//! # Ok::<(), ConfigError>(())
//! ```
//!
//! The crate's `README.md` has the quick start (doctested).
#![forbid(unsafe_code)]

/// The crate README's examples, compiled and run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;

pub mod admin;
mod applier;
mod error;
pub mod framing;
mod mem_store;
mod node;
mod proposer;
mod state_machine;
#[cfg(feature = "testing")]
pub mod testing;
mod tracker;

pub use applier::{AppliedEntry, EnvelopeApplier};
pub use error::{NodeError, ProposeError, StepError, StopKind, StopReason};
pub use mem_store::MemStore;
pub use node::{EnvelopeNode, DEFAULT_PROPOSAL_TIMEOUT_TICKS, DEFAULT_TICK_INTERVAL};
pub use proposer::{EnvelopeProposer, PreparedProposal, Ticket};
pub use raft_envelope_core::lifecycle::EncryptionStatus;
pub use state_machine::{LogStore, StateMachine};
pub use tracker::{Applied, Completion, ProposalTracker};
