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

    /// The application state as snapshot bytes.
    fn snapshot(&self) -> Vec<u8>;

    /// Replaces the application state with one read from [`snapshot`](Self::snapshot) bytes.
    ///
    /// # Errors
    /// The bytes are not a snapshot of this application (a message without payload bytes).
    fn restore(&mut self, bytes: &[u8]) -> Result<(), String>;
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

    fn snapshot(&self) -> Vec<u8> {
        serde_json::to_vec(&(&self.data, self.applied_payloads)).unwrap_or_default()
    }

    fn restore(&mut self, bytes: &[u8]) -> Result<(), String> {
        let (data, applied_payloads) =
            serde_json::from_slice(bytes).map_err(|e| format!("not a KvApp snapshot: {e}"))?;
        self.data = data;
        self.applied_payloads = applied_payloads;
        Ok(())
    }
}

struct State<A> {
    last_applied: Option<LogId<u64>>,
    membership: StoredMembership<u64, openraft::BasicNode>,
    app: A,
    /// The last snapshot built or installed: its meta and the application's bytes.
    current: Option<(SnapshotMeta<u64, openraft::BasicNode>, Vec<u8>)>,
}

/// The application's state machine (`RaftStateMachine<TestConfig>`), in memory. Cloning gives
/// another handle to the same state, so the state survives a node restart when the test keeps a
/// handle (like a state machine on disk would).
///
/// Snapshots carry the application state ([`Application::snapshot`]), captured when openraft asks
/// for the builder; the last one built or installed is kept as the current snapshot.
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
                current: None,
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

    /// Forgets how far this state machine got (applied index, membership, snapshot), for a
    /// replica that rejoins by snapshot: the install replaces the application state.
    pub(crate) fn forget_applied(&self) {
        let mut state = self.lock();
        state.last_applied = None;
        state.membership = StoredMembership::default();
        state.current = None;
    }

    /// Reads the application state.
    pub fn with_app<T>(&self, f: impl FnOnce(&A) -> T) -> T {
        f(&self.lock().app)
    }
}

/// Builds a snapshot of the state captured when it was made.
pub struct MemSnapshotBuilder<A> {
    meta: SnapshotMeta<u64, openraft::BasicNode>,
    data: Vec<u8>,
    sm: MemStateMachine<A>,
}

impl<A> fmt::Debug for MemSnapshotBuilder<A> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemSnapshotBuilder").field("snapshot_id", &self.meta.snapshot_id).finish()
    }
}

impl<A: Application> RaftStateMachine<TestConfig> for MemStateMachine<A> {
    type SnapshotBuilder = MemSnapshotBuilder<A>;

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
        let state = self.lock();
        let meta = SnapshotMeta {
            last_log_id: state.last_applied,
            last_membership: state.membership.clone(),
            snapshot_id: format!("applied-{}", state.last_applied.map(|l| l.index).unwrap_or(0)),
        };
        MemSnapshotBuilder { meta, data: state.app.snapshot(), sm: self.clone() }
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, StorageError<u64>> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<u64, openraft::BasicNode>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError<u64>> {
        let data = snapshot.into_inner();
        let mut state = self.lock();
        state.app.restore(&data).map_err(|e| {
            StorageError::from(openraft::StorageIOError::read_snapshot(
                Some(meta.signature()),
                openraft::AnyError::error(e),
            ))
        })?;
        state.last_applied = meta.last_log_id;
        state.membership = meta.last_membership.clone();
        state.current = Some((meta.clone(), data));
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TestConfig>>, StorageError<u64>> {
        let state = self.lock();
        Ok(state.current.as_ref().map(|(meta, data)| Snapshot {
            meta: meta.clone(),
            snapshot: Box::new(Cursor::new(data.clone())),
        }))
    }
}

impl<A: Application> RaftSnapshotBuilder<TestConfig> for MemSnapshotBuilder<A> {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TestConfig>, StorageError<u64>> {
        self.sm.lock().current = Some((self.meta.clone(), self.data.clone()));
        Ok(Snapshot { meta: self.meta.clone(), snapshot: Box::new(Cursor::new(self.data.clone())) })
    }
}
