//! An in-memory raft-rs storage that keeps a state-machine snapshot with its data, so a leader
//! whose log was compacted can send it (raft-rs `MemStorage` keeps snapshot metadata only).

use std::fmt;
use std::sync::{Arc, PoisonError, RwLock};

use raft::eraftpb::{ConfState, Entry, HardState, Snapshot};
use raft::storage::MemStorage;
use raft::{GetEntriesContext, RaftState, Storage, StorageError};

use crate::state_machine::LogStore;

/// raft-rs's [`MemStorage`] plus the snapshot this replica retains (metadata **and** data):
/// the one it built when compacting ([`LogStore::compact`]) or installed from its leader
/// ([`LogStore::apply_snapshot`]). [`Storage::snapshot`] hands exactly that snapshot to raft-rs,
/// which sends it to a peer that needs entries below the first retained index.
///
/// `Clone` shares the same storage, like [`MemStorage`].
#[derive(Clone, Default)]
pub struct MemStore {
    log: MemStorage,
    snapshot: Arc<RwLock<Option<Snapshot>>>,
}

impl MemStore {
    /// An empty store whose configuration is `conf_state` (every node of a new cluster starts
    /// with the same one; see [`MemStorage::new_with_conf_state`]).
    pub fn new_with_conf_state<T>(conf_state: T) -> Self
    where
        ConfState: From<T>,
    {
        Self { log: MemStorage::new_with_conf_state(conf_state), snapshot: Arc::default() }
    }

    /// The underlying raft-rs storage (log entries, hard state, configuration), for fault
    /// injection in tests.
    pub fn mem_storage(&self) -> &MemStorage {
        &self.log
    }
}

fn other(what: &str) -> raft::Error {
    raft::Error::Store(StorageError::Other(what.to_owned().into()))
}

impl Storage for MemStore {
    fn initial_state(&self) -> raft::Result<RaftState> {
        self.log.initial_state()
    }

    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: impl Into<Option<u64>>,
        context: GetEntriesContext,
    ) -> raft::Result<Vec<Entry>> {
        self.log.entries(low, high, max_size, context)
    }

    fn term(&self, idx: u64) -> raft::Result<u64> {
        self.log.term(idx)
    }

    fn first_index(&self) -> raft::Result<u64> {
        self.log.first_index()
    }

    fn last_index(&self) -> raft::Result<u64> {
        self.log.last_index()
    }

    /// The retained snapshot; `SnapshotTemporarilyUnavailable` when there is none (or it is
    /// older than `request_index`): raft-rs tries again later.
    fn snapshot(&self, request_index: u64, _to: u64) -> raft::Result<Snapshot> {
        let retained = self.snapshot.read().unwrap_or_else(PoisonError::into_inner);
        match retained.as_ref() {
            Some(s) if s.get_metadata().index >= request_index => Ok(s.clone()),
            _ => Err(raft::Error::Store(StorageError::SnapshotTemporarilyUnavailable)),
        }
    }
}

impl LogStore for MemStore {
    fn append(&self, entries: &[Entry]) -> raft::Result<()> {
        self.log.append(entries)
    }

    fn set_hard_state(&self, hs: &HardState) -> raft::Result<()> {
        self.log.set_hard_state(hs)
    }

    fn set_commit(&self, commit: u64) -> raft::Result<()> {
        self.log.set_commit(commit)
    }

    fn set_conf_state(&self, conf_state: ConfState) -> raft::Result<()> {
        self.log.set_conf_state(conf_state)
    }

    fn apply_snapshot(&self, snapshot: Snapshot) -> raft::Result<()> {
        self.log.wl().apply_snapshot(snapshot.clone())?;
        *self.snapshot.write().unwrap_or_else(PoisonError::into_inner) = Some(snapshot);
        Ok(())
    }

    /// Keeps `snapshot` and drops every entry at or below its index; the hard state and the
    /// configuration are unchanged, and the term of the snapshot's index stays known (raft-rs
    /// needs it to append after it).
    fn compact(&self, snapshot: Snapshot) -> raft::Result<()> {
        let meta = snapshot.get_metadata();
        let index = meta.index;
        let (first, last) = (self.log.first_index()?, self.log.last_index()?);
        if index < first {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        if index > last {
            return Err(other("cannot compact past the last stored entry"));
        }
        if self.log.term(index)? != meta.term {
            return Err(other("snapshot term differs from the stored entry's term"));
        }
        let rest = if index < last {
            self.log.entries(index + 1, last + 1, None, GetEntriesContext::empty(false))?
        } else {
            Vec::new()
        };
        let state = self.log.initial_state()?;
        let mut marker = Snapshot::default();
        marker.set_metadata(meta.clone());
        {
            let mut core = self.log.wl();
            // Resets the log to start after `index` and records its term, then puts back what
            // `apply_snapshot` changed: the commit index and the configuration.
            core.apply_snapshot(marker)?;
            core.set_hardstate(state.hard_state);
            core.set_conf_state(state.conf_state);
            core.append(&rest)?;
        }
        *self.snapshot.write().unwrap_or_else(PoisonError::into_inner) = Some(snapshot);
        Ok(())
    }

    fn retained_snapshot(&self) -> Option<Snapshot> {
        self.snapshot.read().unwrap_or_else(PoisonError::into_inner).clone()
    }
}

/// Shows indexes only: snapshot data and entries may hold plaintext.
impl fmt::Debug for MemStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let snapshot = self.retained_snapshot().map(|s| s.get_metadata().index);
        f.debug_struct("MemStore")
            .field("first_index", &self.log.first_index().ok())
            .field("last_index", &self.log.last_index().ok())
            .field("snapshot_index", &snapshot)
            .finish()
    }
}
