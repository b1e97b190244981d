//! An in-memory `RaftLogStorage` that keeps every entry as the serialized bytes a disk would hold.

use std::collections::BTreeMap;
use std::fmt;
use std::fmt::Debug;
use std::ops::RangeBounds;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use openraft::storage::{LogFlushed, RaftLogStorage};
use openraft::{
    AnyError, ErrorSubject, ErrorVerb, LogId, LogState, OptionalSend, RaftLogReader, RaftTypeConfig,
    StorageError, StorageIOError, Vote,
};
use serde::de::DeserializeOwned;
use serde::Serialize;

#[derive(Default)]
struct Inner<NID: openraft::NodeId> {
    vote: Option<Vote<NID>>,
    committed: Option<LogId<NID>>,
    last_purged: Option<LogId<NID>>,
    /// index -> the entry serialized with `postcard` (payload bytes appear verbatim).
    log: BTreeMap<u64, Vec<u8>>,
}

/// An in-memory log store for any type config whose entries are serde types. Cloning gives
/// another handle to the same log, so the log survives a node restart when the test keeps a
/// handle.
///
/// Entries are kept serialized (`postcard`), exactly the bytes a disk-backed store would write,
/// so tests can search them for plaintext and tamper with them.
pub struct MemLogStore<C: RaftTypeConfig> {
    inner: Arc<Mutex<Inner<C::NodeId>>>,
}

impl<C: RaftTypeConfig> Clone for MemLogStore<C> {
    fn clone(&self) -> Self {
        Self { inner: self.inner.clone() }
    }
}

impl<C: RaftTypeConfig> Default for MemLogStore<C> {
    fn default() -> Self {
        Self {
            inner: Arc::new(Mutex::new(Inner {
                vote: None,
                committed: None,
                last_purged: None,
                log: BTreeMap::new(),
            })),
        }
    }
}

impl<C: RaftTypeConfig> Debug for MemLogStore<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let inner = self.lock();
        f.debug_struct("MemLogStore")
            .field("entries", &inner.log.len())
            .field("committed", &inner.committed)
            .finish()
    }
}

fn io_error<NID: openraft::NodeId>(
    verb: ErrorVerb,
    e: &(dyn std::error::Error + 'static),
) -> StorageError<NID> {
    StorageIOError::new(ErrorSubject::Logs, verb, AnyError::error(e.to_string())).into()
}

// Reason: `StorageError` is openraft's error type, returned as openraft's own storage traits do.
#[allow(clippy::result_large_err)]
impl<C> MemLogStore<C>
where
    C: RaftTypeConfig,
    C::Entry: Serialize + DeserializeOwned,
{
    /// An empty log.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, Inner<C::NodeId>> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Every stored entry as `(index, serialized bytes)`, in log order.
    pub fn raw_entries(&self) -> Vec<(u64, Vec<u8>)> {
        self.lock().log.iter().map(|(i, b)| (*i, b.clone())).collect()
    }

    /// The entry stored at `index`, decoded.
    ///
    /// # Errors
    /// A `StorageError` when the stored bytes do not decode.
    pub fn entry(&self, index: u64) -> Result<Option<C::Entry>, StorageError<C::NodeId>> {
        match self.lock().log.get(&index) {
            None => Ok(None),
            Some(bytes) => postcard::from_bytes(bytes).map(Some).map_err(|e| io_error(ErrorVerb::Read, &e)),
        }
    }

    /// Fault injection: decodes the entry at `index`, lets `change` modify it, stores it again.
    /// Returns false when there is no entry at `index`.
    ///
    /// # Errors
    /// A `StorageError` when the stored bytes do not decode or encode.
    pub fn modify(
        &self,
        index: u64,
        change: impl FnOnce(&mut C::Entry),
    ) -> Result<bool, StorageError<C::NodeId>> {
        let mut inner = self.lock();
        let Some(bytes) = inner.log.get_mut(&index) else { return Ok(false) };
        let mut entry: C::Entry = postcard::from_bytes(bytes).map_err(|e| io_error(ErrorVerb::Read, &e))?;
        change(&mut entry);
        *bytes = postcard::to_allocvec(&entry).map_err(|e| io_error(ErrorVerb::Write, &e))?;
        Ok(true)
    }

    /// The index of the last purged entry, if any.
    pub fn purged(&self) -> Option<u64> {
        self.lock().last_purged.as_ref().map(|l| l.index)
    }

    /// The committed log id saved by the engine.
    pub fn committed(&self) -> Option<LogId<C::NodeId>> {
        self.lock().committed.clone()
    }

    fn read_range<RB: RangeBounds<u64>>(&self, range: RB) -> Result<Vec<C::Entry>, StorageError<C::NodeId>> {
        let inner = self.lock();
        inner
            .log
            .range(range)
            .map(|(_, bytes)| postcard::from_bytes(bytes).map_err(|e| io_error(ErrorVerb::Read, &e)))
            .collect()
    }
}

impl<C> RaftLogReader<C> for MemLogStore<C>
where
    C: RaftTypeConfig,
    C::Entry: Serialize + DeserializeOwned,
{
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<C::Entry>, StorageError<C::NodeId>> {
        self.read_range(range)
    }
}

impl<C> RaftLogStorage<C> for MemLogStore<C>
where
    C: RaftTypeConfig,
    C::Entry: Serialize + DeserializeOwned,
{
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<C>, StorageError<C::NodeId>> {
        let last_serialized = self.lock().log.iter().next_back().map(|(_, b)| b.clone());
        let last_purged_log_id = self.lock().last_purged.clone();
        let last_log_id = match last_serialized {
            None => last_purged_log_id.clone(),
            Some(bytes) => {
                let entry: C::Entry =
                    postcard::from_bytes(&bytes).map_err(|e| io_error(ErrorVerb::Read, &e))?;
                Some(openraft::RaftLogId::get_log_id(&entry).clone())
            }
        };
        Ok(LogState { last_purged_log_id, last_log_id })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<C::NodeId>) -> Result<(), StorageError<C::NodeId>> {
        self.lock().vote = Some(vote.clone());
        Ok(())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<C::NodeId>>, StorageError<C::NodeId>> {
        Ok(self.lock().vote.clone())
    }

    async fn save_committed(
        &mut self,
        committed: Option<LogId<C::NodeId>>,
    ) -> Result<(), StorageError<C::NodeId>> {
        self.lock().committed = committed;
        Ok(())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId<C::NodeId>>, StorageError<C::NodeId>> {
        Ok(self.lock().committed.clone())
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<C>) -> Result<(), StorageError<C::NodeId>>
    where
        I: IntoIterator<Item = C::Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        {
            let mut inner = self.lock();
            for entry in entries {
                let index = openraft::RaftLogId::get_log_id(&entry).index;
                let bytes = postcard::to_allocvec(&entry).map_err(|e| io_error(ErrorVerb::Write, &e))?;
                inner.log.insert(index, bytes);
            }
        }
        callback.log_io_completed(Ok(()));
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId<C::NodeId>) -> Result<(), StorageError<C::NodeId>> {
        let mut inner = self.lock();
        let _ = inner.log.split_off(&log_id.index);
        Ok(())
    }

    async fn purge(&mut self, log_id: LogId<C::NodeId>) -> Result<(), StorageError<C::NodeId>> {
        let mut inner = self.lock();
        let keep = inner.log.split_off(&(log_id.index + 1));
        inner.log = keep;
        inner.last_purged = Some(log_id);
        Ok(())
    }
}
