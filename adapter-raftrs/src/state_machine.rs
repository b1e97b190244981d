//! The application's side: the state machine behind the applier, and the log storage the node
//! persists into.

use raft::eraftpb::{ConfState, Entry, HardState, Snapshot};
use raft::storage::MemStorage;
use raft::Storage;

/// The application's state machine, as the [`EnvelopeApplier`](crate::EnvelopeApplier) drives it.
///
/// It only ever receives plaintext: cleartext payloads allowed by the cutover, and opened
/// envelopes. It never sees an envelope, and nothing of an entry that halts the replica.
///
/// An implementation must:
/// - record the index of every entry it is handed (payload or control) as its applied index,
///   persisted atomically with its state: [`applied_index`](Self::applied_index) is what the node
///   restarts from (`Config.applied`), so the entry after it is delivered again;
/// - be deterministic: every replica applies the same payloads in the same order.
pub trait StateMachine {
    /// What a proposer receives for its applied proposal.
    type Response;

    /// Applies one payload committed at `index` in `term`, and returns the client's response.
    fn apply(&mut self, index: u64, term: u64, payload: &[u8]) -> Self::Response;

    /// Records a control entry at `index` (the leader's no-op, a switch-on barrier, or a conf
    /// change whose resulting configuration is `conf_state`). It carries no application payload.
    fn apply_control(&mut self, index: u64, term: u64, conf_state: Option<&ConfState>);

    /// The index of the last entry handed to [`apply`](Self::apply) or
    /// [`apply_control`](Self::apply_control), as persisted (0 for a fresh state machine).
    fn applied_index(&self) -> u64;

    /// Replaces the state with `snapshot` (sent by the leader when this replica lags behind a
    /// compacted log). The default refuses, which stops the node: implement it if your cluster
    /// compacts its log.
    ///
    /// Never called while a cutover is in force: snapshots are not sealed yet, so nothing
    /// authenticates them, and [`EnvelopeNode`](crate::EnvelopeNode) halts instead of restoring
    /// one (fail closed). Until snapshots are sealed, a cluster with a cutover must not let a
    /// replica fall behind its compacted log.
    ///
    /// # Errors
    /// A description of why the snapshot could not be restored (never payload bytes).
    fn restore_snapshot(&mut self, snapshot: &Snapshot) -> Result<(), String> {
        let _ = snapshot;
        Err("this state machine does not restore snapshots".into())
    }
}

/// A raft-rs [`Storage`] the node can persist into: a cheap, shared handle (`Clone`), like
/// [`MemStorage`], for which it is implemented.
pub trait LogStore: Storage + Clone {
    /// Appends `entries`, replacing any conflicting suffix.
    ///
    /// # Errors
    /// A raft-rs storage error; the node stops.
    fn append(&self, entries: &[Entry]) -> raft::Result<()>;

    /// Persists the hard state (term, vote, commit).
    ///
    /// # Errors
    /// A raft-rs storage error; the node stops.
    fn set_hard_state(&self, hs: &HardState) -> raft::Result<()>;

    /// Persists a new commit index.
    ///
    /// # Errors
    /// A raft-rs storage error; the node stops.
    fn set_commit(&self, commit: u64) -> raft::Result<()>;

    /// Persists the configuration produced by an applied conf change.
    ///
    /// # Errors
    /// A raft-rs storage error; the node stops.
    fn set_conf_state(&self, conf_state: ConfState) -> raft::Result<()>;

    /// Installs a snapshot received from the leader.
    ///
    /// # Errors
    /// A raft-rs storage error; the node stops.
    fn apply_snapshot(&self, snapshot: Snapshot) -> raft::Result<()>;
}

impl LogStore for MemStorage {
    fn append(&self, entries: &[Entry]) -> raft::Result<()> {
        self.wl().append(entries)
    }

    fn set_hard_state(&self, hs: &HardState) -> raft::Result<()> {
        self.wl().set_hardstate(hs.clone());
        Ok(())
    }

    fn set_commit(&self, commit: u64) -> raft::Result<()> {
        self.wl().mut_hard_state().set_commit(commit);
        Ok(())
    }

    fn set_conf_state(&self, conf_state: ConfState) -> raft::Result<()> {
        self.wl().set_conf_state(conf_state);
        Ok(())
    }

    fn apply_snapshot(&self, snapshot: Snapshot) -> raft::Result<()> {
        self.wl().apply_snapshot(snapshot)
    }
}
