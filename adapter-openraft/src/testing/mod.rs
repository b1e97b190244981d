//! Test support, public so the conformance harness, the integration tests and the demo share
//! it: an in-process openraft cluster with the envelope layer on every node.
//!
//! - [`MemLogStore`]: an in-memory `RaftLogStorage` that keeps entries serialized, the bytes a
//!   disk would hold (search them for plaintext, tamper with them);
//! - [`Router`]: an in-process network calling the target node's `Raft` handle directly;
//! - [`MemStateMachine`] over an [`Application`] ([`KvApp`]), with the type config
//!   [`TestConfig`];
//! - [`TestCluster`]: starts `n` nodes and offers the fault hooks (tamper, overwrite, restart
//!   with a new layer, leader change, unchecked append) and the switch-on procedure.
//!
//! Not for production: no durability, no snapshots of application state.

mod cluster;
mod log_store;
mod network;
mod state_machine;
pub mod suite;

pub use cluster::{
    test_config, ClusterError, ContextLog, ManagedNode, SealedTestConfig, StoredEntryView, TestCluster,
    TestNode, WriteFailure, WriteOutcome,
};
pub use log_store::MemLogStore;
pub use network::{Connection, NetworkFactory, Router};
pub use state_machine::{Application, KvApp, MemSnapshotBuilder, MemStateMachine, TestConfig};
