//! A real multi-node raft-rs cluster in one process, for tests, demos and the conformance
//! harness: a deterministic single-thread message pump, fault hooks (tamper, restart, leader
//! change, held proposals, unchecked appends) and the switch-on procedure.

mod cluster;
mod kv;

pub use cluster::{block_on, Cluster, ClusterConfig, ClusterError, ProposeOutcome};
pub use kv::KvStore;
