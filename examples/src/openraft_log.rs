//! A crash-safe openraft log store on disk: [`RedbLogStore`].

use std::fmt;
use std::fmt::Debug;
use std::io;
use std::marker::PhantomData;
use std::ops::{Bound, RangeBounds};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{
    AnyError, LogId, OptionalSend, RaftLogId, RaftLogReader, RaftTypeConfig, StorageError, StorageIOError,
    Vote,
};
use redb::{Database, ReadableTable, TableDefinition, WriteTransaction};
use serde::de::DeserializeOwned;
use serde::Serialize;

/// Log entries by index, each the entry postcard-encoded (payload bytes stored as they are).
const ENTRIES: TableDefinition<'_, u64, &[u8]> = TableDefinition::new("openraft_entries");
/// [`VOTE`], [`COMMITTED`], [`LAST_PURGED`]: serde_json-encoded.
const META: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("openraft_meta");

/// The last saved [`Vote`].
const VOTE: &str = "vote";
/// The last saved committed log id, an `Option<LogId>`.
const COMMITTED: &str = "committed";
/// The id of the last purged entry, kept when the purge empties the log.
const LAST_PURGED: &str = "last_purged_log_id";

/// An openraft log store (storage-v2 [`RaftLogStorage`]: log entries, vote, committed log id) on
/// disk in one [`redb`] database file.
///
/// Every change (appended entries, a truncation, a purge, a vote, the committed log id) is one
/// redb write transaction, committed with redb's default durability (`Durability::Immediate`:
/// `fsync` before the commit returns) before the call returns, and for an append before
/// `LogFlushed::log_io_completed` is called: what openraft was told is persisted survives a crash
/// or `SIGKILL`. Nothing is cached in memory; reads go to the file (redb's page cache).
///
/// Entries are stored [`postcard`]-encoded (compact, and a payload's bytes are stored as they
/// are: with the layer switched on, envelopes), keyed by their index, so `C::Entry` must be serde (as
/// openraft's `Entry<C>` is with openraft's `serde` feature). The state machine and its snapshots
/// are not here: pair the store with a [`RaftStateMachine`](openraft::storage::RaftStateMachine)
/// that persists its own state.
///
/// **Blocking.** redb is a blocking API and every method of this store runs its transaction, fsync
/// included, on the calling task's executor thread. That keeps every write strictly in call
/// order (openraft requires write IO to be serialized) and is what this example settles for; a
/// store under real load would hand the IO to a dedicated thread and call the append callback from
/// there.
///
/// `Clone` is cheap and shares the same open database: the file stays open (and locked by redb
/// against a second open) until the last clone, log readers included, is dropped.
pub struct RedbLogStore<C: RaftTypeConfig> {
    db: Arc<Database>,
    path: Arc<PathBuf>,
    _types: PhantomData<fn() -> C>,
}

impl<C: RaftTypeConfig> Clone for RedbLogStore<C> {
    fn clone(&self) -> Self {
        Self { db: Arc::clone(&self.db), path: Arc::clone(&self.path), _types: PhantomData }
    }
}

/// Shows the file only: entries may hold application data.
impl<C: RaftTypeConfig> fmt::Debug for RedbLogStore<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedbLogStore").field("path", &self.path).finish_non_exhaustive()
    }
}

/// Any error as openraft carries it.
fn any(e: impl std::error::Error + 'static) -> AnyError {
    AnyError::new(&e)
}

fn read_logs<NID: openraft::NodeId>(e: AnyError) -> StorageError<NID> {
    StorageIOError::read_logs(e).into()
}

fn write_logs<NID: openraft::NodeId>(e: AnyError) -> StorageError<NID> {
    StorageIOError::write_logs(e).into()
}

fn read_vote<NID: openraft::NodeId>(e: AnyError) -> StorageError<NID> {
    StorageIOError::read_vote(e).into()
}

fn write_vote<NID: openraft::NodeId>(e: AnyError) -> StorageError<NID> {
    StorageIOError::write_vote(e).into()
}

fn read_store<NID: openraft::NodeId>(e: AnyError) -> StorageError<NID> {
    StorageIOError::read(e).into()
}

fn write_store<NID: openraft::NodeId>(e: AnyError) -> StorageError<NID> {
    StorageIOError::write(e).into()
}

/// `range` as the `[start, end)` bounds redb takes, or `None` when it holds no index.
fn index_bounds(range: &impl RangeBounds<u64>) -> Option<(Bound<u64>, Bound<u64>)> {
    let start = match range.start_bound() {
        Bound::Included(&i) => i,
        Bound::Excluded(&i) => i.checked_add(1)?,
        Bound::Unbounded => 0,
    };
    let end = match range.end_bound() {
        Bound::Included(&i) => i.checked_add(1).map_or(Bound::Unbounded, Bound::Excluded),
        Bound::Excluded(&i) => Bound::Excluded(i),
        Bound::Unbounded => Bound::Unbounded,
    };
    if let Bound::Excluded(end) = end {
        if end <= start {
            return None;
        }
    }
    Some((Bound::Included(start), end))
}

impl<C: RaftTypeConfig> RedbLogStore<C> {
    /// Opens the store in `path` (one file), creating an empty one (no entries, no vote) when it
    /// does not exist; an existing store keeps what it holds.
    ///
    /// # Errors
    /// The file cannot be opened or created (redb also refuses a file that is open already, in
    /// this process or another), or its tables cannot be created. The error names the file and
    /// says what redb reported; an I/O failure keeps its [`io::ErrorKind`].
    pub fn open(path: &Path) -> Result<Self, io::Error> {
        let failed = |e: redb::Error| {
            let kind = match &e {
                redb::Error::Io(io) => io.kind(),
                _ => io::ErrorKind::Other,
            };
            io::Error::new(kind, format!("{}: {e}", path.display()))
        };
        let db = Database::create(path).map_err(|e| failed(e.into()))?;
        // Both tables exist from the first open on, so a read never meets a missing table.
        let txn = db.begin_write().map_err(|e| failed(e.into()))?;
        txn.open_table(ENTRIES).map_err(|e| failed(e.into()))?;
        txn.open_table(META).map_err(|e| failed(e.into()))?;
        txn.commit().map_err(|e| failed(e.into()))?;
        Ok(Self { db: Arc::new(db), path: Arc::new(path.to_path_buf()), _types: PhantomData })
    }

    /// Every entry stored in the file at `path`, in index order, as it is stored (postcard
    /// bytes), read without opening a node (the node is stopped): forensics, `dump-log`.
    ///
    /// # Errors
    /// The file cannot be read.
    pub fn stored_entries(path: &Path) -> Result<Vec<(u64, Vec<u8>)>, io::Error> {
        let failed = |e: redb::Error| io::Error::other(format!("{}: {e}", path.display()));
        let db = Database::open(path).map_err(|e| failed(e.into()))?;
        let read = db.begin_read().map_err(|e| failed(e.into()))?;
        let table = read.open_table(ENTRIES).map_err(|e| failed(e.into()))?;
        let mut out = Vec::new();
        for row in table.iter().map_err(|e| failed(e.into()))? {
            let (index, bytes) = row.map_err(|e| failed(e.into()))?;
            out.push((index.value(), bytes.value().to_vec()));
        }
        Ok(out)
    }

    /// Replaces the stored bytes of the entry at `index` in the file at `path` (the node is
    /// stopped): what someone with write access to a replica's disk can do. For demonstrations
    /// and tests of tampering; a node never calls it.
    ///
    /// # Errors
    /// The file cannot be written, or holds no entry at `index`.
    pub fn overwrite_stored_entry(path: &Path, index: u64, bytes: &[u8]) -> Result<(), io::Error> {
        let failed = |e: redb::Error| io::Error::other(format!("{}: {e}", path.display()));
        let db = Database::open(path).map_err(|e| failed(e.into()))?;
        let txn = db.begin_write().map_err(|e| failed(e.into()))?;
        {
            let mut table = txn.open_table(ENTRIES).map_err(|e| failed(e.into()))?;
            if table.get(index).map_err(|e| failed(e.into()))?.is_none() {
                return Err(io::Error::other(format!("no entry {index} stored")));
            }
            table.insert(index, bytes).map_err(|e| failed(e.into()))?;
        }
        txn.commit().map_err(|e| failed(e.into()))
    }

    /// The file the store is in.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Runs `change` in one write transaction, committed before it returns. redb's default
    /// durability (`Immediate`) makes the commit `fsync` the file: when this returns `Ok`, the
    /// change is on disk. A failed `change` aborts the transaction (nothing is written).
    fn write(&self, change: impl FnOnce(&WriteTransaction) -> Result<(), AnyError>) -> Result<(), AnyError> {
        let txn = self.db.begin_write().map_err(any)?;
        change(&txn)?;
        txn.commit().map_err(any)
    }

    /// Stores `value` under `key` in the meta table, in `txn`.
    fn put_meta(txn: &WriteTransaction, key: &str, value: &impl Serialize) -> Result<(), AnyError> {
        let bytes = serde_json::to_vec(value).map_err(any)?;
        let mut meta = txn.open_table(META).map_err(any)?;
        meta.insert(key, bytes.as_slice()).map_err(any)?;
        Ok(())
    }

    /// What is stored under `key` in the meta table, if anything.
    fn get_meta<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>, AnyError> {
        let read = self.db.begin_read().map_err(any)?;
        let meta = read.open_table(META).map_err(any)?;
        let Some(bytes) = meta.get(key).map_err(any)? else { return Ok(None) };
        serde_json::from_slice(bytes.value())
            .map(Some)
            .map_err(|e| AnyError::error(format!("stored {key} does not decode: {e}")))
    }

    /// Decodes the entry stored at `index`, checking it says that index.
    fn decode(index: u64, bytes: &[u8]) -> Result<C::Entry, AnyError>
    where
        C::Entry: DeserializeOwned,
    {
        let entry: C::Entry = postcard::from_bytes(bytes)
            .map_err(|e| AnyError::error(format!("entry stored at {index} does not decode: {e}")))?;
        let said = entry.get_log_id().index;
        if said != index {
            return Err(AnyError::error(format!("entry stored at {index} says index {said}")));
        }
        Ok(entry)
    }

    /// The stored entries within `range`, in index order.
    fn read_entries(&self, range: &impl RangeBounds<u64>) -> Result<Vec<C::Entry>, AnyError>
    where
        C::Entry: DeserializeOwned,
    {
        let Some(bounds) = index_bounds(range) else { return Ok(Vec::new()) };
        let read = self.db.begin_read().map_err(any)?;
        let table = read.open_table(ENTRIES).map_err(any)?;
        let mut entries = Vec::new();
        for row in table.range::<u64>(bounds).map_err(any)? {
            let (index, bytes) = row.map_err(any)?;
            entries.push(Self::decode(index.value(), bytes.value())?);
        }
        Ok(entries)
    }

    /// The id of the last stored entry, if there is one.
    fn last_entry_id(&self) -> Result<Option<LogId<C::NodeId>>, AnyError>
    where
        C::Entry: DeserializeOwned,
    {
        let read = self.db.begin_read().map_err(any)?;
        let table = read.open_table(ENTRIES).map_err(any)?;
        let Some((index, bytes)) = table.last().map_err(any)? else { return Ok(None) };
        Ok(Some(Self::decode(index.value(), bytes.value())?.get_log_id().clone()))
    }

    /// Removes every stored entry with an index in `range`, in `txn`.
    fn remove_entries(txn: &WriteTransaction, range: impl RangeBounds<u64>) -> Result<(), AnyError> {
        let mut table = txn.open_table(ENTRIES).map_err(any)?;
        table.retain_in::<u64, _>(range, |_, _| false).map_err(any)?;
        Ok(())
    }
}

impl<C> RaftLogReader<C> for RedbLogStore<C>
where
    C: RaftTypeConfig,
    C::Entry: Serialize + DeserializeOwned,
{
    /// Entries not stored (purged, or past the end) are left out.
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<C::Entry>, StorageError<C::NodeId>> {
        self.read_entries(&range).map_err(read_logs)
    }
}

impl<C> RaftLogStorage<C> for RedbLogStore<C>
where
    C: RaftTypeConfig,
    C::Entry: Serialize + DeserializeOwned,
{
    /// A clone of the store: the same database, read through its own read transactions.
    type LogReader = Self;

    /// `last_log_id` is the last stored entry's, or the last purged one's when the log is empty.
    async fn get_log_state(&mut self) -> Result<LogState<C>, StorageError<C::NodeId>> {
        let last_purged_log_id: Option<LogId<C::NodeId>> = self.get_meta(LAST_PURGED).map_err(read_logs)?;
        let last_log_id = self.last_entry_id().map_err(read_logs)?.or_else(|| last_purged_log_id.clone());
        Ok(LogState { last_purged_log_id, last_log_id })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<C::NodeId>) -> Result<(), StorageError<C::NodeId>> {
        self.write(|txn| Self::put_meta(txn, VOTE, vote)).map_err(write_vote)
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<C::NodeId>>, StorageError<C::NodeId>> {
        self.get_meta(VOTE).map_err(read_vote)
    }

    /// Stored, so that a restarted node re-applies committed entries its state machine had not
    /// persisted.
    async fn save_committed(
        &mut self,
        committed: Option<LogId<C::NodeId>>,
    ) -> Result<(), StorageError<C::NodeId>> {
        self.write(|txn| Self::put_meta(txn, COMMITTED, &committed)).map_err(write_store)
    }

    async fn read_committed(&mut self) -> Result<Option<LogId<C::NodeId>>, StorageError<C::NodeId>> {
        let stored: Option<Option<LogId<C::NodeId>>> = self.get_meta(COMMITTED).map_err(read_store)?;
        Ok(stored.flatten())
    }

    /// Writes the entries in one transaction and calls `callback` once it is committed (fsynced),
    /// before returning. openraft truncates a conflicting suffix before appending over it, so an
    /// entry here only ever replaces one at the same index.
    async fn append<I>(&mut self, entries: I, callback: LogFlushed<C>) -> Result<(), StorageError<C::NodeId>>
    where
        I: IntoIterator<Item = C::Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let encoded = entries
            .into_iter()
            .map(|entry| Ok((entry.get_log_id().index, postcard::to_stdvec(&entry).map_err(any)?)))
            .collect::<Result<Vec<(u64, Vec<u8>)>, AnyError>>();
        let written = encoded.and_then(|encoded| {
            self.write(|txn| {
                let mut table = txn.open_table(ENTRIES).map_err(any)?;
                for (index, bytes) in &encoded {
                    table.insert(*index, bytes.as_slice()).map_err(any)?;
                }
                Ok(())
            })
        });
        match written {
            Ok(()) => {
                callback.log_io_completed(Ok(()));
                Ok(())
            }
            Err(e) => {
                callback.log_io_completed(Err(io::Error::other(e.to_string())));
                Err(write_logs(e))
            }
        }
    }

    /// Removes the entries from `log_id`'s index on (inclusive).
    async fn truncate(&mut self, log_id: LogId<C::NodeId>) -> Result<(), StorageError<C::NodeId>> {
        self.write(|txn| Self::remove_entries(txn, log_id.index..)).map_err(write_logs)
    }

    /// Records `log_id` as the last purged one and removes the entries up to its index
    /// (inclusive), in one transaction. `log_id` may be past the last entry (after a snapshot was
    /// installed): the log is then empty and its last log id is `log_id`.
    async fn purge(&mut self, log_id: LogId<C::NodeId>) -> Result<(), StorageError<C::NodeId>> {
        self.write(|txn| {
            Self::put_meta(txn, LAST_PURGED, &log_id)?;
            Self::remove_entries(txn, ..=log_id.index)
        })
        .map_err(write_logs)
    }
}
