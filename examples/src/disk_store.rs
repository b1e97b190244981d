//! A crash-safe raft-rs log store on disk: [`DiskStore`].

use std::fmt;
use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};

use raft::eraftpb::{ConfState, Entry, HardState, Snapshot};
use raft::{GetEntriesContext, RaftState, Storage, StorageError};
use raft_envelope_raftrs::{LogStore, MemStore};
use redb::{Database, ReadableTable, TableDefinition};

/// Log entries by index, each the entry's protobuf bytes exactly as raft-rs encodes it.
const ENTRIES: TableDefinition<'_, u64, &[u8]> = TableDefinition::new("entries");
/// `hard_state`, `conf_state`, `snapshot`: protobuf bytes.
const META: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("meta");

/// raft-rs storage for one node, on disk in one [`redb`] database file.
///
/// Every change (appended entries, hard state, commit, configuration, an installed snapshot, a
/// compaction) is one redb write transaction, committed with `fsync` before the call returns:
/// what raft-rs was told is persisted survives a crash or `SIGKILL`. Reads are served from an
/// in-memory copy ([`MemStore`]) loaded when the file is opened, so a node reads its log at memory
/// speed and the on-disk form is only ever written.
///
/// Entries are stored as raft-rs encodes them (protobuf), so with the layer switched on the file
/// holds envelopes above the cutover and never their plaintext; the application's state machine
/// and its layer state are persisted by the application, beside it.
///
/// `Clone` shares the same store.
#[derive(Clone)]
pub struct DiskStore {
    db: Arc<Database>,
    mem: MemStore,
    /// Serializes writers, so the in-memory copy follows the disk in commit order.
    write: Arc<Mutex<()>>,
}

/// Why a [`DiskStore`] could not be opened.
#[derive(Debug)]
pub struct OpenError(String);

impl fmt::Display for OpenError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for OpenError {}

fn store_error(e: impl fmt::Display) -> raft::Error {
    raft::Error::Store(StorageError::Other(e.to_string().into()))
}

fn decode<M: protobuf::Message>(bytes: &[u8], what: &str) -> Result<M, OpenError> {
    M::parse_from_bytes(bytes).map_err(|e| OpenError(format!("stored {what} does not decode: {e}")))
}

fn encode(m: &dyn protobuf::Message) -> raft::Result<Vec<u8>> {
    m.write_to_bytes().map_err(store_error)
}

impl DiskStore {
    /// Opens the store in `path` (one file), creating it with configuration `conf_state` (the
    /// initial voters, as every node of a new cluster starts with) when it does not exist; an
    /// existing store keeps its own configuration.
    ///
    /// # Errors
    /// The file cannot be opened or created, or what it holds does not decode.
    pub fn open(path: &Path, conf_state: ConfState) -> Result<Self, OpenError> {
        let io = |e: redb::Error| OpenError(format!("{}: {e}", path.display()));
        let db = Database::create(path).map_err(|e| io(e.into()))?;
        let mut hard_state = None;
        let mut stored_conf = None;
        let mut snapshot = None;
        let mut entries = Vec::new();
        {
            let read = db.begin_read().map_err(|e| io(e.into()))?;
            if let Ok(meta) = read.open_table(META) {
                if let Some(v) = meta.get("hard_state").map_err(|e| io(e.into()))? {
                    hard_state = Some(decode::<HardState>(v.value(), "hard state")?);
                }
                if let Some(v) = meta.get("conf_state").map_err(|e| io(e.into()))? {
                    stored_conf = Some(decode::<ConfState>(v.value(), "configuration")?);
                }
                if let Some(v) = meta.get("snapshot").map_err(|e| io(e.into()))? {
                    snapshot = Some(decode::<Snapshot>(v.value(), "snapshot")?);
                }
            }
            if let Ok(table) = read.open_table(ENTRIES) {
                for row in table.iter().map_err(|e| io(e.into()))? {
                    let (index, bytes) = row.map_err(|e| io(e.into()))?;
                    let entry = decode::<Entry>(bytes.value(), "entry")?;
                    if entry.index != index.value() {
                        return Err(OpenError(format!(
                            "entry stored at {} says {}",
                            index.value(),
                            entry.index
                        )));
                    }
                    entries.push(entry);
                }
            }
        }
        let fresh = stored_conf.is_none();
        let conf = stored_conf.unwrap_or(conf_state);
        let mem = MemStore::new_with_conf_state(conf.clone());
        let failed = |e: raft::Error| OpenError(format!("{}: {e}", path.display()));
        if let Some(snapshot) = snapshot {
            mem.apply_snapshot(snapshot).map_err(failed)?;
        }
        if !entries.is_empty() {
            mem.append(&entries).map_err(failed)?;
        }
        mem.set_conf_state(conf).map_err(failed)?;
        if let Some(hs) = hard_state {
            mem.set_hard_state(&hs).map_err(failed)?;
        }
        let store = Self { db: Arc::new(db), mem, write: Arc::new(Mutex::new(())) };
        if fresh {
            store.persist_state().map_err(failed)?;
        }
        Ok(store)
    }

    /// Every entry stored in the file at `path`, in index order, read without opening a node
    /// (the node is stopped): what `raft-envelope-kv dump-log` prints for `raft-envelope inspect`.
    ///
    /// # Errors
    /// The file cannot be read or an entry does not decode.
    pub fn stored_entries(path: &Path) -> Result<Vec<Entry>, OpenError> {
        let io = |e: redb::Error| OpenError(format!("{}: {e}", path.display()));
        let db = Database::open(path).map_err(|e| io(e.into()))?;
        let read = db.begin_read().map_err(|e| io(e.into()))?;
        let Ok(table) = read.open_table(ENTRIES) else { return Ok(Vec::new()) };
        let mut entries = Vec::new();
        for row in table.iter().map_err(|e| io(e.into()))? {
            let (_, bytes) = row.map_err(|e| io(e.into()))?;
            entries.push(decode::<Entry>(bytes.value(), "entry")?);
        }
        Ok(entries)
    }

    /// Replaces the stored entry at `entry.index` in the file at `path` (the node is stopped):
    /// what someone with write access to a replica's disk can do. For demonstrations and tests
    /// of tampering; a node never calls it.
    ///
    /// # Errors
    /// The file cannot be written, or holds no entry at that index.
    pub fn overwrite_entry(path: &Path, entry: &Entry) -> Result<(), OpenError> {
        let io = |e: redb::Error| OpenError(format!("{}: {e}", path.display()));
        let db = Database::open(path).map_err(|e| io(e.into()))?;
        let txn = db.begin_write().map_err(|e| io(e.into()))?;
        {
            let mut table = txn.open_table(ENTRIES).map_err(|e| io(e.into()))?;
            if table.get(entry.index).map_err(|e| io(e.into()))?.is_none() {
                return Err(OpenError(format!("no entry {} stored", entry.index)));
            }
            let bytes = protobuf::Message::write_to_bytes(entry).map_err(|e| OpenError(e.to_string()))?;
            table.insert(entry.index, bytes.as_slice()).map_err(|e| io(e.into()))?;
        }
        txn.commit().map_err(|e| io(e.into()))?;
        Ok(())
    }

    /// Runs `change` in one write transaction, committed (fsync) before it returns, then applies
    /// `then` to the in-memory copy.
    fn write(
        &self,
        change: impl FnOnce(&redb::WriteTransaction) -> raft::Result<()>,
        then: impl FnOnce(&MemStore) -> raft::Result<()>,
    ) -> raft::Result<()> {
        let _serial = self.write.lock().unwrap_or_else(PoisonError::into_inner);
        let txn = self.db.begin_write().map_err(store_error)?;
        change(&txn)?;
        txn.commit().map_err(store_error)?;
        then(&self.mem)
    }

    /// Writes the in-memory hard state and configuration to disk (after a change that moved
    /// them, such as a snapshot).
    fn persist_state(&self) -> raft::Result<()> {
        let state = self.mem.initial_state()?;
        self.write(
            |txn| {
                let mut meta = txn.open_table(META).map_err(store_error)?;
                meta.insert("hard_state", encode(&state.hard_state)?.as_slice()).map_err(store_error)?;
                meta.insert("conf_state", encode(&state.conf_state)?.as_slice()).map_err(store_error)?;
                Ok(())
            },
            |_| Ok(()),
        )
    }

    /// Removes every stored entry in `range` from the entries table.
    fn remove_entries(
        txn: &redb::WriteTransaction,
        range: impl std::ops::RangeBounds<u64>,
    ) -> raft::Result<()> {
        let mut table = txn.open_table(ENTRIES).map_err(store_error)?;
        table.retain_in(range, |_, _| false).map_err(store_error)?;
        Ok(())
    }
}

impl Storage for DiskStore {
    fn initial_state(&self) -> raft::Result<RaftState> {
        self.mem.initial_state()
    }

    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: impl Into<Option<u64>>,
        context: GetEntriesContext,
    ) -> raft::Result<Vec<Entry>> {
        self.mem.entries(low, high, max_size, context)
    }

    fn term(&self, idx: u64) -> raft::Result<u64> {
        self.mem.term(idx)
    }

    fn first_index(&self) -> raft::Result<u64> {
        self.mem.first_index()
    }

    fn last_index(&self) -> raft::Result<u64> {
        self.mem.last_index()
    }

    fn snapshot(&self, request_index: u64, to: u64) -> raft::Result<Snapshot> {
        self.mem.snapshot(request_index, to)
    }
}

impl LogStore for DiskStore {
    /// Replaces any stored suffix from the first new entry's index, as raft-rs requires.
    fn append(&self, entries: &[Entry]) -> raft::Result<()> {
        let Some(first) = entries.first() else { return Ok(()) };
        let encoded: Vec<(u64, Vec<u8>)> =
            entries.iter().map(|e| Ok((e.index, encode(e)?))).collect::<raft::Result<_>>()?;
        self.write(
            |txn| {
                Self::remove_entries(txn, first.index..)?;
                let mut table = txn.open_table(ENTRIES).map_err(store_error)?;
                for (index, bytes) in &encoded {
                    table.insert(*index, bytes.as_slice()).map_err(store_error)?;
                }
                Ok(())
            },
            |mem| mem.append(entries),
        )
    }

    fn set_hard_state(&self, hs: &HardState) -> raft::Result<()> {
        let bytes = encode(hs)?;
        self.write(
            |txn| {
                let mut meta = txn.open_table(META).map_err(store_error)?;
                meta.insert("hard_state", bytes.as_slice()).map_err(store_error)?;
                Ok(())
            },
            |mem| mem.set_hard_state(hs),
        )
    }

    fn set_commit(&self, commit: u64) -> raft::Result<()> {
        let mut hs = self.mem.initial_state()?.hard_state;
        hs.commit = commit;
        self.set_hard_state(&hs)
    }

    fn set_conf_state(&self, conf_state: ConfState) -> raft::Result<()> {
        let bytes = encode(&conf_state)?;
        self.write(
            |txn| {
                let mut meta = txn.open_table(META).map_err(store_error)?;
                meta.insert("conf_state", bytes.as_slice()).map_err(store_error)?;
                Ok(())
            },
            |mem| mem.set_conf_state(conf_state),
        )
    }

    /// Keeps the snapshot and drops every stored entry (raft-rs starts the log after it); the
    /// hard state and configuration it implies are written in the same transaction.
    fn apply_snapshot(&self, snapshot: Snapshot) -> raft::Result<()> {
        let meta_of = snapshot.get_metadata();
        // What raft-rs's MemStorage makes of it: commit at the snapshot, the larger term, the
        // snapshot's configuration.
        let mut hs = self.mem.initial_state()?.hard_state;
        hs.commit = meta_of.index;
        hs.term = hs.term.max(meta_of.term);
        let (hs_bytes, conf_bytes, bytes) =
            (encode(&hs)?, encode(meta_of.get_conf_state())?, encode(&snapshot)?);
        self.write(
            |txn| {
                Self::remove_entries(txn, ..)?;
                let mut meta = txn.open_table(META).map_err(store_error)?;
                meta.insert("snapshot", bytes.as_slice()).map_err(store_error)?;
                meta.insert("hard_state", hs_bytes.as_slice()).map_err(store_error)?;
                meta.insert("conf_state", conf_bytes.as_slice()).map_err(store_error)?;
                Ok(())
            },
            |mem| mem.apply_snapshot(snapshot),
        )
    }

    /// Keeps the snapshot and drops the stored entries at or below its index, checked first by
    /// the in-memory copy (nothing is written when it refuses).
    fn compact(&self, snapshot: Snapshot) -> raft::Result<()> {
        let index = snapshot.get_metadata().index;
        let bytes = encode(&snapshot)?;
        // The in-memory copy validates (index within the log, term matching) before anything
        // is written: a refused compaction changes nothing on disk either.
        let probe = self.mem.clone();
        let (first, last) = (probe.first_index()?, probe.last_index()?);
        if index < first || index > last || probe.term(index)? != snapshot.get_metadata().term {
            return self.mem.compact(snapshot);
        }
        self.write(
            |txn| {
                Self::remove_entries(txn, ..=index)?;
                let mut meta = txn.open_table(META).map_err(store_error)?;
                meta.insert("snapshot", bytes.as_slice()).map_err(store_error)?;
                Ok(())
            },
            |mem| mem.compact(snapshot),
        )
    }

    fn retained_snapshot(&self) -> Option<Snapshot> {
        self.mem.retained_snapshot()
    }
}

/// Shows indexes only: entries and snapshot data may hold plaintext.
impl fmt::Debug for DiskStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DiskStore").field("log", &self.mem).finish_non_exhaustive()
    }
}
