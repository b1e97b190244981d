//! A small application state machine over byte payloads, and the type config it runs with.

use std::collections::BTreeMap;
use std::fmt;
use std::io::Cursor;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use openraft::storage::RaftStateMachine;
use openraft::{
    Entry, EntryPayload, LogId, OptionalSend, RaftSnapshotBuilder, Snapshot, SnapshotMeta, StorageError,
    StoredMembership,
};

openraft::declare_raft_types!(
    /// The application's own type config in tests and the demo: byte requests, byte responses,
    /// everything else openraft's default. The engine runs with `Sealed<TestConfig>`.
    pub TestConfig:
        D = Vec<u8>,
        R = Vec<u8>,
);

/// The application logic behind a [`MemStateMachine`]: applies one payload, returns the client
/// response.
pub trait Application: Send + Sync + 'static {
    /// Applies the payload of the normal entry at `index`.
    fn apply(&mut self, index: u64, payload: &[u8]) -> Vec<u8>;
}

/// A key-value application: a payload `key=value` sets `key`; the response is the previous
/// value (empty when there was none). Any other payload is recorded and answered with nothing.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct KvApp {
    /// The current value of each key.
    pub data: BTreeMap<String, String>,
    /// How many payloads were applied.
    pub applied_payloads: u64,
}

/// Shows only sizes: values may be sensitive.
impl fmt::Debug for KvApp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KvApp({} keys, {} payloads)", self.data.len(), self.applied_payloads)
    }
}

impl Application for KvApp {
    fn apply(&mut self, _index: u64, payload: &[u8]) -> Vec<u8> {
        self.applied_payloads += 1;
        let text = String::from_utf8_lossy(payload);
        match text.split_once('=') {
            Some((k, v)) => self.data.insert(k.to_string(), v.to_string()).unwrap_or_default().into_bytes(),
            None => Vec::new(),
        }
    }
}

struct State<A> {
    last_applied: Option<LogId<u64>>,
    membership: StoredMembership<u64, openraft::BasicNode>,
    app: A,
}

/// The application's state machine (`RaftStateMachine<TestConfig>`), in memory. Cloning gives
/// another handle to the same state, so the state survives a node restart when the test keeps a
/// handle (like a state machine on disk would).
///
/// Snapshots carry the applied log id and membership only, not the application state: the test
/// cluster never builds or ships one (`SnapshotPolicy::Never`).
pub struct MemStateMachine<A> {
    state: Arc<Mutex<State<A>>>,
}

impl<A> Clone for MemStateMachine<A> {
    fn clone(&self) -> Self {
        Self { state: self.state.clone() }
    }
}

impl<A> fmt::Debug for MemStateMachine<A> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemStateMachine").field("last_applied", &self.lock().last_applied).finish()
    }
}

impl<A> MemStateMachine<A> {
    /// A state machine that has applied nothing, running `app`.
    pub fn new(app: A) -> Self {
        Self {
            state: Arc::new(Mutex::new(State {
                last_applied: None,
                membership: StoredMembership::default(),
                app,
            })),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State<A>> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The index of the last entry applied, control entries included: the truth about how far
    /// this replica got.
    pub fn last_applied(&self) -> Option<u64> {
        self.lock().last_applied.map(|l| l.index)
    }

    /// Reads the application state.
    pub fn with_app<T>(&self, f: impl FnOnce(&A) -> T) -> T {
        f(&self.lock().app)
    }
}

impl<A: Application> RaftStateMachine<TestConfig> for MemStateMachine<A> {
    type SnapshotBuilder = Self;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogId<u64>>, StoredMembership<u64, openraft::BasicNode>), StorageError<u64>> {
        let state = self.lock();
        Ok((state.last_applied, state.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Vec<u8>>, StorageError<u64>>
    where
        I: IntoIterator<Item = Entry<TestConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut state = self.lock();
        let mut responses = Vec::new();
        for entry in entries {
            state.last_applied = Some(entry.log_id);
            let response = match entry.payload {
                EntryPayload::Blank => Vec::new(),
                EntryPayload::Normal(payload) => state.app.apply(entry.log_id.index, &payload),
                EntryPayload::Membership(m) => {
                    state.membership = StoredMembership::new(Some(entry.log_id), m);
                    Vec::new()
                }
            };
            responses.push(response);
        }
        Ok(responses)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, StorageError<u64>> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<u64, openraft::BasicNode>,
        _snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError<u64>> {
        let mut state = self.lock();
        state.last_applied = meta.last_log_id;
        state.membership = meta.last_membership.clone();
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TestConfig>>, StorageError<u64>> {
        Ok(None)
    }
}

impl<A: Application> RaftSnapshotBuilder<TestConfig> for MemStateMachine<A> {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TestConfig>, StorageError<u64>> {
        let state = self.lock();
        let meta = SnapshotMeta {
            last_log_id: state.last_applied,
            last_membership: state.membership.clone(),
            snapshot_id: format!("applied-{}", state.last_applied.map(|l| l.index).unwrap_or(0)),
        };
        Ok(Snapshot { meta, snapshot: Box::new(Cursor::new(Vec::new())) })
    }
}
