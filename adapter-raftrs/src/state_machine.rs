//! The application's side: the state machine behind the applier, and the log storage the node
//! persists into.

use raft::eraftpb::{ConfState, Entry, HardState, Snapshot};
use raft::storage::MemStorage;
use raft::Storage;
use raft_envelope_core::apply::ApplyContext;

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

    /// [`apply`](Self::apply) with what the layer knows about the entry: its index, whether it
    /// was sealed, and the proposal id from the envelope's authenticated header (for an
    /// application's own de-duplication or tracing). The applier calls this one; the default
    /// forwards to [`apply`](Self::apply).
    fn apply_in(&mut self, context: &ApplyContext, term: u64, payload: &[u8]) -> Self::Response {
        self.apply(context.index, term, payload)
    }

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
    /// The snapshot's `data` is what [`snapshot_data`](Self::snapshot_data) returned on the
    /// replica that built it, and its metadata says which index it includes. On a node with a
    /// layer state ([`EnvelopeNode::with_layer_state`](crate::EnvelopeNode::with_layer_state))
    /// it is called only after the layer opened and authenticated the sealed snapshot and
    /// restored its own state from it. On a node with a plain layer it is never called while a
    /// cutover is in force: nothing authenticates such a snapshot, so
    /// [`EnvelopeNode`](crate::EnvelopeNode) halts instead of restoring it (fail closed).
    ///
    /// # Errors
    /// A description of why the snapshot could not be restored (never payload bytes).
    fn restore_snapshot(&mut self, snapshot: &Snapshot) -> Result<(), String> {
        let _ = snapshot;
        Err("this state machine does not restore snapshots".into())
    }

    /// The state as of [`applied_index`](Self::applied_index), as bytes that
    /// [`restore_snapshot`](Self::restore_snapshot) reads back, for
    /// [`EnvelopeNode::compact`](crate::EnvelopeNode::compact). With a layer state the node seals
    /// them with the layer state before they reach the storage. The default refuses: implement
    /// it if your cluster compacts its log.
    ///
    /// # Errors
    /// A description of why no snapshot could be taken (never payload bytes).
    fn snapshot_data(&self) -> Result<Vec<u8>, String> {
        Err("this state machine does not take snapshots".into())
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

    /// Installs a snapshot received from the leader (and keeps it, if the store retains
    /// snapshots).
    ///
    /// # Errors
    /// A raft-rs storage error; the node stops.
    fn apply_snapshot(&self, snapshot: Snapshot) -> raft::Result<()>;

    /// Keeps `snapshot` (metadata and data) as the one [`Storage::snapshot`] returns, and drops
    /// every log entry at or below its index. The default refuses: raft-rs `MemStorage` cannot
    /// hand out snapshot data (use [`MemStore`](crate::MemStore)).
    ///
    /// # Errors
    /// A raft-rs storage error; nothing changed.
    fn compact(&self, snapshot: Snapshot) -> raft::Result<()> {
        let _ = snapshot;
        Err(raft::Error::Store(raft::StorageError::Other("this store does not keep snapshots".into())))
    }

    /// The snapshot this store keeps (built by [`compact`](Self::compact) or installed by
    /// [`apply_snapshot`](Self::apply_snapshot)), if any. The default: none.
    fn retained_snapshot(&self) -> Option<Snapshot> {
        None
    }
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
