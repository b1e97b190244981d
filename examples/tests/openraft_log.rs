//! `RedbLogStore` passes openraft's own storage conformance suite, and keeps what openraft was
//! told is persisted across a reopen of the file.
#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use std::collections::BTreeSet;
use std::io::Cursor;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use openraft::storage::{LogState, RaftLogStorage, RaftLogStorageExt, RaftStateMachine, Snapshot};
use openraft::testing::{blank_ent, log_id, membership_ent, StoreBuilder, Suite};
use openraft::{
    BasicNode, Entry, EntryPayload, LogId, OptionalSend, RaftLogReader, RaftSnapshotBuilder, SnapshotMeta,
    StorageError, StorageIOError, StoredMembership, Vote,
};
use raft_envelope_examples::RedbLogStore;
use serde::{Deserialize, Serialize};

openraft::declare_raft_types!(
    /// The smallest type config: string commands, no responses, `u64` node ids.
    TypeConfig:
        D = String,
        R = (),
        NodeId = u64,
        Node = BasicNode,
);

type Store = RedbLogStore<TypeConfig>;

/// A directory under the system temp dir, removed when dropped.
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn tempdir(name: &str) -> TempDir {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("raft-envelope-openraft-{name}-{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    TempDir(dir)
}

/// What the state machine holds, and its snapshots' contents.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
struct Image {
    last_applied: Option<LogId<u64>>,
    last_membership: StoredMembership<u64, BasicNode>,
    commands: Vec<String>,
}

#[derive(Debug, Default)]
struct SmState {
    image: Image,
    current: Option<(SnapshotMeta<u64, BasicNode>, Vec<u8>)>,
    built: u64,
}

/// An in-memory state machine: the list of applied commands.
#[derive(Debug, Default, Clone)]
struct MemStateMachine(Arc<Mutex<SmState>>);

fn sm_error(e: impl std::error::Error + 'static) -> StorageError<u64> {
    StorageIOError::write_state_machine(&e).into()
}

impl RaftSnapshotBuilder<TypeConfig> for MemStateMachine {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError<u64>> {
        let mut state = self.0.lock().unwrap();
        let data = serde_json::to_vec(&state.image).map_err(sm_error)?;
        state.built += 1;
        let image = &state.image;
        let snapshot_id = match &image.last_applied {
            Some(id) => format!("{}-{}-{}", id.leader_id, id.index, state.built),
            None => format!("--{}", state.built),
        };
        let meta = SnapshotMeta {
            last_log_id: image.last_applied,
            last_membership: image.last_membership.clone(),
            snapshot_id,
        };
        state.current = Some((meta.clone(), data.clone()));
        Ok(Snapshot { meta, snapshot: Box::new(Cursor::new(data)) })
    }
}

impl RaftStateMachine<TypeConfig> for MemStateMachine {
    type SnapshotBuilder = Self;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogId<u64>>, StoredMembership<u64, BasicNode>), StorageError<u64>> {
        let state = self.0.lock().unwrap();
        Ok((state.image.last_applied, state.image.last_membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<()>, StorageError<u64>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut state = self.0.lock().unwrap();
        let mut replies = Vec::new();
        for entry in entries {
            state.image.last_applied = Some(entry.log_id);
            match entry.payload {
                EntryPayload::Blank => {}
                EntryPayload::Normal(command) => state.image.commands.push(command),
                EntryPayload::Membership(m) => {
                    state.image.last_membership = StoredMembership::new(Some(entry.log_id), m);
                }
            }
            replies.push(());
        }
        Ok(replies)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, StorageError<u64>> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<u64, BasicNode>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError<u64>> {
        let data = snapshot.into_inner();
        let image: Image = serde_json::from_slice(&data).map_err(sm_error)?;
        let mut state = self.0.lock().unwrap();
        state.image = image;
        state.current = Some((meta.clone(), data));
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, StorageError<u64>> {
        let state = self.0.lock().unwrap();
        Ok(state.current.as_ref().map(|(meta, data)| Snapshot {
            meta: meta.clone(),
            snapshot: Box::new(Cursor::new(data.clone())),
        }))
    }
}

/// A fresh store in a fresh directory per call, with a fresh state machine.
struct Builder;

impl StoreBuilder<TypeConfig, Store, MemStateMachine, TempDir> for Builder {
    async fn build(&self) -> Result<(TempDir, Store, MemStateMachine), StorageError<u64>> {
        let dir = tempdir("suite");
        let store = Store::open(&dir.0.join("log.redb")).map_err(|e| StorageIOError::write(&e))?;
        Ok((dir, store, MemStateMachine::default()))
    }
}

/// openraft's conformance suite (it runs each case in its own tokio runtime, so this is a plain
/// test).
#[test]
fn openraft_storage_suite() {
    Suite::test_all(Builder).unwrap();
}

fn normal(term: u64, index: u64, command: &str) -> Entry<TypeConfig> {
    Entry { log_id: log_id(term, 1, index), payload: EntryPayload::Normal(command.to_owned()) }
}

async fn all(store: &mut Store) -> Vec<Entry<TypeConfig>> {
    store.try_get_log_entries(..).await.unwrap()
}

#[tokio::test]
async fn entries_vote_committed_and_purge_survive_a_reopen() {
    let dir = tempdir("reopen");
    let path = dir.0.join("log.redb");
    let entries = vec![
        blank_ent::<TypeConfig>(1, 1, 1),
        membership_ent::<TypeConfig>(1, 1, 2, vec![BTreeSet::from([1, 2, 3])]),
        normal(1, 3, "a"),
        normal(1, 4, "b"),
        normal(2, 5, "c"),
        normal(2, 6, "d"),
    ];
    {
        let mut store = Store::open(&path).unwrap();
        store.blocking_append(entries.clone()).await.unwrap();
        store.save_vote(&Vote::new_committed(2, 1)).await.unwrap();
        store.save_committed(Some(log_id(2, 1, 5))).await.unwrap();
        store.purge(log_id(1, 1, 2)).await.unwrap();
        store.truncate(log_id(2, 1, 6)).await.unwrap();
    }

    let mut store = Store::open(&path).unwrap();
    assert_eq!(all(&mut store).await, entries[2..5].to_vec());
    assert_eq!(store.read_vote().await.unwrap(), Some(Vote::new_committed(2, 1)));
    assert_eq!(store.read_committed().await.unwrap(), Some(log_id(2, 1, 5)));
    assert_eq!(
        store.get_log_state().await.unwrap(),
        LogState { last_purged_log_id: Some(log_id(1, 1, 2)), last_log_id: Some(log_id(2, 1, 5)) }
    );

    // Appending after the reopen continues the log; a log reader sees it too.
    store.blocking_append([normal(3, 6, "e")]).await.unwrap();
    let mut reader = store.get_log_reader().await;
    assert_eq!(reader.try_get_log_entries(6..=6).await.unwrap(), vec![normal(3, 6, "e")]);
    drop(reader);

    // A purge past the last entry (as after installing a snapshot) empties the log, and the log
    // remembers where it stood.
    store.purge(log_id(4, 1, 9)).await.unwrap();
    drop(store);

    let mut store = Store::open(&path).unwrap();
    assert!(all(&mut store).await.is_empty());
    assert_eq!(
        store.get_log_state().await.unwrap(),
        LogState { last_purged_log_id: Some(log_id(4, 1, 9)), last_log_id: Some(log_id(4, 1, 9)) }
    );
    assert_eq!(store.read_vote().await.unwrap(), Some(Vote::new_committed(2, 1)));
}

#[tokio::test]
async fn a_fresh_store_is_empty_and_open_twice_is_refused() {
    let dir = tempdir("fresh");
    let path = dir.0.join("log.redb");
    let mut store = Store::open(&path).unwrap();
    assert_eq!(store.read_vote().await.unwrap(), None);
    assert_eq!(store.read_committed().await.unwrap(), None);
    assert_eq!(
        store.get_log_state().await.unwrap(),
        LogState { last_purged_log_id: None, last_log_id: None }
    );
    assert!(all(&mut store).await.is_empty());
    // redb locks the file: a second open while the first is alive fails instead of sharing it.
    assert!(Store::open(&path).is_err());
    // A clone shares the open database.
    let mut clone = store.clone();
    clone.save_vote(&Vote::new(3, 2)).await.unwrap();
    assert_eq!(store.read_vote().await.unwrap(), Some(Vote::new(3, 2)));
}
