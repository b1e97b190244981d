//! What a deployment of raft-envelope is made of, as parts a user copies.
//!
//! - [`DiskStore`]: crash-safe on-disk storage for a raft-rs node (log, hard state,
//!   configuration, retained snapshot) in one [`redb`] file, every change fsynced before raft-rs
//!   is told it is persisted. `DESIGN.md` says why redb.
//! - [`RedbLogStore`]: the same for an openraft node (log, vote, committed), also on redb.
//! - The KV service (`raft-envelope-kv`, `src/bin/`): one node per process on either engine,
//!   its [`service`] HTTP API (client, admin, `/metrics`, node to node), and the engines behind
//!   it: [`raftrs_engine`] and [`openraft_engine`].
#![forbid(unsafe_code)]

pub mod demo;
mod disk_store;
pub mod http;
pub mod kv;
pub mod local_cluster;
pub mod openraft_engine;
mod openraft_log;
pub mod raftrs_engine;
pub mod service;
pub mod status;
pub mod stored_log;

pub use disk_store::{DiskStore, OpenError};
pub use openraft_log::RedbLogStore;

/// How a node of the service starts, on either engine.
#[derive(Debug, Clone)]
pub struct NodeOptions {
    /// This node's id.
    pub id: u64,
    /// Every member's HTTP address, this node's included.
    pub peers: std::collections::BTreeMap<u64, std::net::SocketAddr>,
    /// Where the node keeps its data: `raft.redb` (raft-rs), or `openraft.redb` and
    /// `snapshot.sealed` (openraft).
    pub data_dir: std::path::PathBuf,
    /// The cluster's name (bound into every envelope).
    pub cluster: String,
    /// The node joins a running cluster (an empty configuration; the leader adds it and sends
    /// it a snapshot) instead of starting a new one with `peers` as voters.
    pub join: bool,
    /// The tick interval: heartbeats every 2 ticks, elections after 10 (to 20 on openraft).
    pub tick: std::time::Duration,
    /// When the leader proposes integrity checkpoints (`CheckpointPolicy::OFF` during a rolling
    /// upgrade onto the layer, `docs/OPERATIONS.md` §4).
    pub checkpoints: raft_envelope_core::lifecycle::CheckpointPolicy,
}

/// Which engine a node runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EngineKind {
    /// openraft 0.9.
    Openraft,
    /// raft-rs 0.7.
    Raftrs,
}

impl EngineKind {
    /// Its name on the command line.
    pub fn name(self) -> &'static str {
        match self {
            EngineKind::Openraft => "openraft",
            EngineKind::Raftrs => "raftrs",
        }
    }
}

/// Runs a future to completion on this thread (the admin APIs need no runtime).
pub fn block_on<F: std::future::Future>(future: F) -> F::Output {
    use std::sync::Arc;
    use std::task::{Context, Poll, Wake, Waker};
    struct Unpark(std::thread::Thread);
    impl Wake for Unpark {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
    }
    let mut future = std::pin::pin!(future);
    let waker = Waker::from(Arc::new(Unpark(std::thread::current())));
    let mut cx = Context::from_waker(&waker);
    loop {
        if let Poll::Ready(out) = future.as_mut().poll(&mut cx) {
            return out;
        }
        std::thread::park();
    }
}
