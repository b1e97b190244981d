//! Key lifecycle through the log on a real 3-node openraft cluster: switch-on, rotation and
//! destruction as layer control entries, applied identically by every replica.
#![allow(clippy::unwrap_used)] // Reason: tests fail loudly on any unexpected error.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use raft_envelope_core::error::ControlError;
use raft_envelope_core::lifecycle::{AutoRotation, Retired};
use raft_envelope_core::{
    error::FailureReason,
    lifecycle::{DestroyRefused, KeyState, SealBudget},
    provider::{FileKekProvider, KekId, KeyProvider},
    Algorithm, ClusterId, EntryKind, KeyId, LayerState, PayloadUnwrapper, SecretKey,
};
use raft_envelope_openraft::testing::{Application, KvApp, StoredEntryView, TestCluster};
use raft_envelope_openraft::AdminError;

const WAIT: Duration = Duration::from_secs(5);

/// The key-value application, also recording the index of every payload it was handed.
#[derive(Default)]
struct Recording {
    kv: KvApp,
    indexes: Vec<u64>,
}

impl Application for Recording {
    fn apply(&mut self, index: u64, payload: &[u8]) -> Vec<u8> {
        self.indexes.push(index);
        self.kv.apply(index, payload)
    }

    fn snapshot(&self) -> Vec<u8> {
        serde_json::to_vec(&(self.kv.snapshot(), &self.indexes)).unwrap()
    }

    fn restore(&mut self, bytes: &[u8]) -> Result<(), String> {
        let (kv, indexes): (Vec<u8>, Vec<u64>) = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
        self.kv.restore(&kv)?;
        self.indexes = indexes;
        Ok(())
    }
}

fn kek_id() -> KekId {
    KekId::new("kek-1").unwrap()
}

fn kek() -> Arc<dyn KeyProvider> {
    Arc::new(FileKekProvider::from_key(kek_id(), SecretKey::from_bytes([7; 32])).unwrap())
}

async fn start(providers: [Option<Arc<dyn KeyProvider>>; 3]) -> Arc<TestCluster<Recording>> {
    start_with_limit(providers, SealBudget::NIST_LIMIT).await
}

async fn start_with_limit(
    providers: [Option<Arc<dyn KeyProvider>>; 3],
    limit: u64,
) -> Arc<TestCluster<Recording>> {
    let nodes = providers
        .into_iter()
        .map(|p| (Arc::new(LayerState::with_seal_limit(cluster_id(), limit)), p, Recording::default()))
        .collect();
    Arc::new(TestCluster::start_with_layer_states(nodes).await.unwrap())
}

fn cluster_id() -> ClusterId {
    ClusterId::new("test").unwrap()
}

/// Enables encryption, writes under key 1, rotates to key 2, writes again, compacts every log:
/// the install entries are gone from every log. Returns the last index written.
async fn enabled_rotated_and_compacted(cluster: &TestCluster<Recording>) -> u64 {
    cluster.enable_encryption(kek().as_ref(), &kek_id(), Algorithm::Aes256Gcm).await.unwrap();
    write(cluster, "one=under-key-1").await;
    cluster.rotate_key(kek().as_ref(), &kek_id(), Algorithm::Aes256Gcm).await.unwrap();
    let last = write(cluster, "two=under-key-2").await;
    wait_all(cluster, &[1, 2, 3], last).await;
    for id in [1, 2, 3] {
        cluster.compact(id).await.unwrap();
        assert!(cluster.read_entry(id, 1).unwrap().is_none(), "node {id} compacted its log");
    }
    last
}

async fn write(cluster: &TestCluster<Recording>, kv: &str) -> u64 {
    cluster.write(kv.as_bytes().to_vec()).await.unwrap().log_id.index
}

async fn wait_all(cluster: &TestCluster<Recording>, ids: &[u64], index: u64) {
    for id in ids {
        cluster.wait_applied(*id, index, WAIT).await.unwrap();
    }
}

/// The payload entries (not control entries) node `id` stores above `cutover`.
fn payloads_above(cluster: &TestCluster<Recording>, id: u64, cutover: u64) -> Vec<StoredEntryView> {
    let entries = cluster.stored_entries(id).unwrap();
    entries.into_iter().filter(|e| e.index > cutover && e.kind != EntryKind::Control).collect()
}

/// Indexes of the layer control entries node `id` stores.
fn control_indexes(cluster: &TestCluster<Recording>, id: u64) -> Vec<u64> {
    let entries = cluster.stored_entries(id).unwrap();
    entries.iter().filter(|e| e.label == "layer-control").map(|e| e.index).collect()
}

fn assert_same_layer_state(cluster: &TestCluster<Recording>) {
    let first = cluster.layer_snapshot(1).unwrap().unwrap();
    for id in [2, 3] {
        assert_eq!(cluster.layer_snapshot(id).unwrap().unwrap(), first, "layer state of node {id}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enable_through_control_entries_seals_everywhere_and_never_reaches_the_state_machine() {
    let cluster = start([Some(kek()), Some(kek()), Some(kek())]).await;
    let legacy = write(&cluster, "legacy=LEGACY-MARKER-51aa").await;
    let leader = cluster.leader().unwrap();
    let before = cluster.node(leader).unwrap().raft.unwrap().encryption_status().unwrap();
    assert_eq!((before.cutover, before.active_key), (None, None));

    let enabled = cluster.enable_encryption(kek().as_ref(), &kek_id(), Algorithm::Aes256Gcm).await.unwrap();
    assert_eq!(enabled.key_id, KeyId(1));
    assert!(enabled.cutover > legacy);

    let mut last = 0;
    for i in 0..5 {
        last = write(&cluster, &format!("secret{i}=PLAINTEXT-MARKER-9c4e")).await;
    }
    wait_all(&cluster, &[1, 2, 3], last).await;

    for id in [1, 2, 3] {
        let node = cluster.node(id).unwrap();
        assert!(!node.is_halted(), "node {id} halted");
        let status = node.raft.unwrap().encryption_status().unwrap();
        assert_eq!(status.cutover, Some(enabled.cutover));
        assert_eq!(status.active_key, Some(KeyId(1)));
        assert_eq!(status.keys[0].sealed_entries, 6, "enforce + 5 writes sealed under key 1");
        // Every payload above the cutover is an envelope; the marker is nowhere in the log.
        for e in payloads_above(&cluster, id, enabled.cutover) {
            assert_eq!((e.kind, e.key_id), (EntryKind::Envelope, Some(KeyId(1))), "entry {}", e.index);
        }
        assert!(!cluster.log_contains(id, b"PLAINTEXT-MARKER-9c4e").unwrap());
        // Install, promote, enforce: control entries, none of them handed to the application.
        let controls = control_indexes(&cluster, id);
        assert_eq!(controls.len(), 3);
        assert_eq!(*controls.last().unwrap(), enabled.cutover, "the enforce entry is at C");
        let seen = node.sm.with_app(|a| a.indexes.clone());
        assert_eq!(seen.len(), 6, "the application saw exactly the six writes");
        assert!(controls.iter().all(|c| !seen.contains(c)));
        assert_eq!(
            node.sm.with_app(|a| a.kv.data.get("secret4").cloned()).as_deref(),
            Some("PLAINTEXT-MARKER-9c4e")
        );
    }
    assert_same_layer_state(&cluster);
    cluster.shutdown().await;
}

/// Writers that keep proposing through the leader until stopped; each returns how many writes
/// succeeded and how many failed.
fn spawn_writers(
    cluster: &Arc<TestCluster<Recording>>,
    n: usize,
    stop: &Arc<AtomicBool>,
) -> Vec<tokio::task::JoinHandle<(u64, u64)>> {
    (0..n)
        .map(|w| {
            let (cluster, stop) = (cluster.clone(), stop.clone());
            tokio::spawn(async move {
                let (mut ok, mut failed) = (0u64, 0u64);
                let mut i = 0u64;
                while !stop.load(Ordering::SeqCst) {
                    match cluster.write(format!("w{w}-{i}=MARKER-{w}-{i}").into_bytes()).await {
                        Ok(_) => ok += 1,
                        Err(_) => failed += 1,
                    }
                    i += 1;
                }
                (ok, failed)
            })
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enable_under_concurrent_writers_and_a_leader_change_never_lands_cleartext_above_the_cutover() {
    for round in 0..3 {
        let cluster = start([Some(kek()), Some(kek()), Some(kek())]).await;
        let stop = Arc::new(AtomicBool::new(false));
        let writers = spawn_writers(&cluster, 8, &stop);
        tokio::time::sleep(Duration::from_millis(30)).await;
        let enable = {
            let cluster = cluster.clone();
            tokio::spawn(async move {
                cluster.enable_encryption(kek().as_ref(), &kek_id(), Algorithm::Aes256Gcm).await
            })
        };
        if round > 0 {
            // A leader change while the enable runs (round 1: early; round 2: later).
            tokio::time::sleep(Duration::from_millis(5 * round)).await;
            cluster.change_leader().await.unwrap();
        }
        let enabled = enable.await.unwrap().unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        stop.store(true, Ordering::SeqCst);
        let mut written = 0;
        for w in writers {
            // Writes may fail across a leader change (the test helper gives up after 5 s
            // without a leader); only halts and cleartext above C matter here.
            written += w.await.unwrap().0;
        }
        assert!(written > 0);
        let last = write(&cluster, "last=sealed").await;
        wait_all(&cluster, &[1, 2, 3], last).await;
        for id in [1, 2, 3] {
            assert!(!cluster.node(id).unwrap().is_halted(), "round {round}: node {id} halted");
            for e in payloads_above(&cluster, id, enabled.cutover) {
                assert_eq!(e.kind, EntryKind::Envelope, "round {round}: entry {} on node {id}", e.index);
            }
        }
        assert_same_layer_state(&cluster);
        cluster.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_under_concurrent_writers_keeps_old_entries_open_and_never_halts() {
    let cluster = start([Some(kek()), Some(kek()), Some(kek())]).await;
    let enabled = cluster.enable_encryption(kek().as_ref(), &kek_id(), Algorithm::Aes256Gcm).await.unwrap();
    let first = write(&cluster, "first=under-key-1").await;

    let stop = Arc::new(AtomicBool::new(false));
    let writers = spawn_writers(&cluster, 4, &stop);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let k2 = cluster.rotate_key(kek().as_ref(), &kek_id(), Algorithm::Aes256GcmSiv).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let k3 = cluster.rotate_key(kek().as_ref(), &kek_id(), Algorithm::Aes256Gcm).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    stop.store(true, Ordering::SeqCst);
    let mut written = 0;
    for w in writers {
        let (ok, failed) = w.await.unwrap();
        assert_eq!(failed, 0, "no write fails across a rotation");
        written += ok;
    }
    assert_eq!((k2, k3), (KeyId(2), KeyId(3)));
    let last = write(&cluster, "last=under-key-3").await;
    wait_all(&cluster, &[1, 2, 3], last).await;

    let state = cluster.node(1).unwrap().layer_state.unwrap();
    let states: Vec<KeyState> = state.keys().iter().map(|k| k.state).collect();
    assert_eq!(states, [KeyState::DecryptOnly, KeyState::DecryptOnly, KeyState::Active]);
    assert!(state.keys().iter().all(|k| k.sealed_entries > 0), "every key sealed something");
    assert!(written > 0);
    for id in [1, 2, 3] {
        assert!(!cluster.node(id).unwrap().is_halted(), "node {id} halted");
        let applied = cluster.node(id).unwrap().sm.with_app(|a| a.kv.applied_payloads);
        assert_eq!(applied, written + 2, "node {id} applied every write");
        // The entry sealed under key 1 before the rotations still opens on every replica.
        let (kind, bytes) = cluster.read_entry(id, first).unwrap().unwrap();
        assert_eq!(kind, EntryKind::Envelope);
        let layer_state = cluster.node(id).unwrap().layer_state.unwrap();
        assert_eq!(layer_state.cipher().open(&bytes).unwrap(), b"first=under-key-1");
        // Every payload above the cutover is sealed, under the key active when it was proposed.
        for e in payloads_above(&cluster, id, enabled.cutover) {
            assert_eq!(e.kind, EntryKind::Envelope, "entry {}", e.index);
        }
    }
    assert_same_layer_state(&cluster);
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replica_without_the_kek_halts_at_the_install_entry_and_resumes_after_restart_with_it() {
    // Node 3's provider has a KEK of the same name but other bytes: it cannot unwrap.
    let wrong: Arc<dyn KeyProvider> =
        Arc::new(FileKekProvider::from_key(kek_id(), SecretKey::from_bytes([8; 32])).unwrap());
    let cluster = start([Some(kek()), Some(kek()), Some(wrong)]).await;
    if cluster.leader() == Some(3) {
        cluster.change_leader().await.unwrap();
    }
    let enabled = cluster.enable_encryption(kek().as_ref(), &kek_id(), Algorithm::Aes256Gcm).await.unwrap();
    let halt = cluster.wait_halted(3, WAIT).await.unwrap();
    let install = control_indexes(&cluster, 1)[0];
    assert_eq!(halt.index, install, "halts exactly at the install entry");
    assert_eq!(halt.reason, FailureReason::KeyUnavailable);
    assert_eq!(halt.key_id, Some(enabled.key_id));
    assert_eq!(cluster.applied_index(3).unwrap(), install - 1, "nothing of the install applied");

    // The others keep going.
    let after = write(&cluster, "after=sealed").await;
    wait_all(&cluster, &[1, 2], after).await;

    // Sticky: a restart still without the KEK halts on the same entry again.
    cluster.restart_with_provider(3, None).await.unwrap();
    let node = cluster.node(3).unwrap();
    assert!(node.is_halted());
    assert_eq!(node.halt.get().map(|h| h.index), Some(install));

    // With the KEK it resumes from the install entry and converges.
    cluster.restart_with_provider(3, Some(kek())).await.unwrap();
    let node = cluster.node(3).unwrap();
    assert!(node.start_error.is_none(), "restart failed: {:?}", node.start_error);
    wait_all(&cluster, &[3], after).await;
    assert_eq!(node.sm.with_app(|a| a.kv.data.get("after").cloned()).as_deref(), Some("sealed"));
    assert_same_layer_state(&cluster);
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn destroyed_key_refused_while_active_and_old_envelope_above_cutover_then_halts() {
    let cluster = start([Some(kek()), Some(kek()), Some(kek())]).await;
    cluster.enable_encryption(kek().as_ref(), &kek_id(), Algorithm::Aes256Gcm).await.unwrap();
    let old = write(&cluster, "old=under-key-1").await;
    let refused = cluster.destroy_key(KeyId(1)).await.unwrap_err();
    assert!(matches!(refused, AdminError::DestroyRefused(DestroyRefused::ActiveKey(KeyId(1)))), "{refused}");
    let refused = cluster.destroy_key(KeyId(9)).await.unwrap_err();
    assert!(matches!(refused, AdminError::Refused(ControlError::UnknownKey(KeyId(9)))), "{refused}");

    cluster.rotate_key(kek().as_ref(), &kek_id(), Algorithm::Aes256Gcm).await.unwrap();
    // Already decrypt-only: nothing to do.
    assert_eq!(cluster.retire_key(KeyId(1)).await.unwrap(), Retired::AlreadyDecryptOnly);
    // Every log still holds the entry sealed under key 1: refused, naming a replica.
    let refused = cluster.destroy_key(KeyId(1)).await.unwrap_err();
    assert!(
        matches!(&refused, AdminError::DestroyRefused(DestroyRefused::InLog { key_id: KeyId(1), .. })),
        "{refused}"
    );
    let (_, bytes) = cluster.read_entry(1, old).unwrap().unwrap();
    for id in [1, 2, 3] {
        cluster.compact(id).await.unwrap();
    }
    cluster.destroy_key(KeyId(1)).await.unwrap();
    let after = write(&cluster, "new=under-key-2").await;
    wait_all(&cluster, &[1, 2, 3], after).await;
    assert_same_layer_state(&cluster);
    let state = cluster.node(2).unwrap().layer_state.unwrap();
    assert_eq!(state.keys()[0].state, KeyState::Destroyed);
    assert_eq!(state.keys()[0].wrapped_key, None);

    // An old envelope sealed under the destroyed key, replayed above the cutover: the leader
    // halts on it with destroyed_key, without applying it. A follower halts the same way if it
    // learned the commit before the leader stopped; otherwise it never applies it (openraft:
    // the halted leader cannot send the commit index any more, DESIGN.md §8.1 known limits).
    let leader = cluster.leader().unwrap();
    let index = cluster.append_unchecked(EntryKind::Envelope, bytes).await.unwrap();
    let halt = cluster.wait_halted(leader, WAIT).await.unwrap();
    assert_eq!((halt.index, halt.reason, halt.key_id), (index, FailureReason::DestroyedKey, Some(KeyId(1))));
    tokio::time::sleep(Duration::from_millis(200)).await;
    for id in [1, 2, 3] {
        assert_eq!(cluster.applied_index(id).unwrap(), index - 1, "node {id} applied nothing of it");
        if let Some(halt) = cluster.halted(id).unwrap() {
            assert_eq!((halt.index, halt.reason), (index, FailureReason::DestroyedKey));
        }
    }
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tampered_sealed_control_entry_halts_that_replica_only() {
    let cluster = start([Some(kek()), Some(kek()), Some(kek())]).await;
    cluster.enable_encryption(kek().as_ref(), &kek_id(), Algorithm::Aes256Gcm).await.unwrap();
    let leader = cluster.leader().unwrap();
    let victim = [1, 2, 3].into_iter().find(|id| *id != leader).unwrap();
    cluster.hold_commit(victim, true).unwrap();
    cluster.rotate_key(kek().as_ref(), &kek_id(), Algorithm::Aes256Gcm).await.unwrap();
    let controls = control_indexes(&cluster, leader);
    let install = controls[controls.len() - 2];
    cluster.wait_stored(victim, install, WAIT).await.unwrap();
    // The install entry is sealed under key 1 (above C): flip one bit of its tag.
    assert_eq!(cluster.read_entry(victim, install).unwrap().unwrap().0, EntryKind::Control);
    cluster.tamper(victim, install, |b| *b.last_mut().unwrap() ^= 1).unwrap();
    cluster.hold_commit(victim, false).unwrap();

    let halt = cluster.wait_halted(victim, WAIT).await.unwrap();
    assert_eq!(
        (halt.index, halt.reason, halt.key_id),
        (install, FailureReason::AuthenticationFailed, Some(KeyId(1)))
    );
    assert_eq!(cluster.applied_index(victim).unwrap(), install - 1);
    let after = write(&cluster, "after=sealed-under-2").await;
    let others: Vec<u64> = [1, 2, 3].into_iter().filter(|id| *id != victim).collect();
    wait_all(&cluster, &others, after).await;
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn member_joining_after_compaction_installs_the_sealed_snapshot_and_opens_everything() {
    let cluster = start([Some(kek()), Some(kek()), Some(kek())]).await;
    let last = enabled_rotated_and_compacted(&cluster).await;
    let state = Arc::new(LayerState::new(cluster_id()));
    let joiner = cluster.add_member(state.clone(), Some(kek()), Recording::default()).await.unwrap();
    wait_all(&cluster, &[joiner], last).await;
    let after = write(&cluster, "three=after-join").await;
    wait_all(&cluster, &[1, 2, 3, joiner], after).await;

    let node = cluster.node(joiner).unwrap();
    assert!(!node.is_halted(), "{:?}", node.halt.get());
    let kv = node.sm.with_app(|a| a.kv.data.clone());
    assert_eq!(kv.get("one").map(String::as_str), Some("under-key-1"), "state from the snapshot");
    assert_eq!(kv.get("three").map(String::as_str), Some("after-join"), "entries after the snapshot");
    assert_eq!(state.snapshot(), cluster.layer_snapshot(1).unwrap().unwrap(), "same layer state");
    assert_eq!(state.active_key(), Some(KeyId(2)), "the joiner seals under the active key");
    for e in cluster.stored_entries(joiner).unwrap() {
        assert_ne!(e.kind, EntryKind::Cleartext, "the joiner stores no cleartext (entry {})", e.index);
    }
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn member_without_the_kek_halts_at_the_snapshot_and_resumes_with_it() {
    let cluster = start([Some(kek()), Some(kek()), Some(kek())]).await;
    let last = enabled_rotated_and_compacted(&cluster).await;
    let state = Arc::new(LayerState::new(cluster_id()));
    let joiner = cluster.add_member(state.clone(), None, Recording::default()).await.unwrap();
    let halt = cluster.wait_halted(joiner, WAIT).await.unwrap();
    assert_eq!(halt.reason, FailureReason::KeyUnavailable, "{halt}");
    assert!(halt.index >= last, "halted at the snapshot's index");
    assert_eq!(cluster.applied_index(joiner).unwrap(), 0, "nothing of the snapshot was installed");
    assert!(state.keys().is_empty(), "the layer state is unchanged");

    cluster.restart_with_provider(joiner, Some(kek())).await.unwrap();
    let after = write(&cluster, "three=after-repair").await;
    wait_all(&cluster, &[joiner], after).await;
    assert!(!cluster.node(joiner).unwrap().is_halted());
    assert_eq!(state.snapshot(), cluster.layer_snapshot(1).unwrap().unwrap());
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_never_run_out_of_budget_when_rotation_is_automatic() {
    // 200 seals per key: rotation is due with 25 left.
    let cluster = start_with_limit([Some(kek()), Some(kek()), Some(kek())], 200).await;
    for (_, raft) in cluster.running() {
        raft.set_auto_rotation(Some(AutoRotation::new(kek(), Algorithm::Aes256Gcm)));
    }
    cluster.enable_encryption(kek().as_ref(), &kek_id(), Algorithm::Aes256Gcm).await.unwrap();
    let mut last = 0;
    for i in 0..600 {
        last = match cluster.write(format!("k{i}=v").into_bytes()).await {
            Ok(r) => r.log_id.index,
            Err(e) => panic!("write {i} failed: {e}"),
        };
    }
    wait_all(&cluster, &[1, 2, 3], last).await;
    let status = cluster.node(1).unwrap().raft.unwrap().encryption_status().unwrap();
    let active = status.active_key.unwrap();
    assert!(active.0 >= 3, "600 writes at 200 seals per key rotated at least twice: {active}");
    for key in &status.keys {
        assert!(key.sealed_entries <= 200, "{} sealed {} entries", key.key_id, key.sealed_entries);
    }
    for id in [1, 2, 3] {
        assert!(!cluster.node(id).unwrap().is_halted(), "node {id} halted");
    }
    assert_same_layer_state(&cluster);
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_with_the_layer_state_persisted_beside_the_state_machine_resumes() {
    let cluster = start([Some(kek()), Some(kek()), Some(kek())]).await;
    cluster.enable_encryption(kek().as_ref(), &kek_id(), Algorithm::Aes256Gcm).await.unwrap();
    write(&cluster, "one=under-key-1").await;
    cluster.rotate_key(kek().as_ref(), &kek_id(), Algorithm::Aes256Gcm).await.unwrap();
    let last = write(&cluster, "two=under-key-2").await;
    wait_all(&cluster, &[1, 2, 3], last).await;
    let victim = [1, 2, 3].into_iter().find(|id| Some(*id) != cluster.leader()).unwrap();
    // What a node persists with its state machine (same applied index).
    let persisted = cluster.layer_snapshot(victim).unwrap().unwrap().encode();

    let restored = Arc::new(LayerState::new(cluster_id()));
    restored.restore_persisted(&persisted, kek().as_ref()).await.unwrap();
    cluster.restart_with_layer_state(victim, restored.clone(), Some(kek())).await.unwrap();
    let after = write(&cluster, "three=after-restart").await;
    wait_all(&cluster, &[1, 2, 3], after).await;
    assert!(!cluster.node(victim).unwrap().is_halted());
    assert_same_layer_state(&cluster);
    let sealing = cluster.node(victim).unwrap().layer.is_sealing();
    assert!(sealing, "the restored node seals again at once");
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_with_an_empty_layer_state_halts_instead_of_passing_ciphertext_on() {
    let cluster = start([Some(kek()), Some(kek()), Some(kek())]).await;
    cluster.enable_encryption(kek().as_ref(), &kek_id(), Algorithm::Aes256Gcm).await.unwrap();
    let last = write(&cluster, "one=under-key-1").await;
    wait_all(&cluster, &[1, 2, 3], last).await;
    let victim = [1, 2, 3].into_iter().find(|id| Some(*id) != cluster.leader()).unwrap();
    let applied = cluster.applied_index(victim).unwrap();

    // The layer state was lost; the state machine was not. The next envelope cannot open.
    cluster
        .restart_with_layer_state(victim, Arc::new(LayerState::new(cluster_id())), Some(kek()))
        .await
        .unwrap();
    let after = write(&cluster, "two=after-restart").await;
    let halt = cluster.wait_halted(victim, WAIT).await.unwrap();
    assert_eq!((halt.index, halt.reason), (after, FailureReason::UnknownKey), "{halt}");
    assert_eq!(cluster.applied_index(victim).unwrap(), after - 1);
    assert!(applied < after);
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn destroy_is_refused_with_reports_taken_before_the_rotation() {
    let cluster = start([Some(kek()), Some(kek()), Some(kek())]).await;
    cluster.enable_encryption(kek().as_ref(), &kek_id(), Algorithm::Aes256Gcm).await.unwrap();
    write(&cluster, "one=under-key-1").await;
    // Reports taken while key 1 still seals: those members could still append under it.
    let stale: Vec<_> = cluster.running().iter().map(|(_, r)| r.retention()).collect();
    cluster.rotate_key(kek().as_ref(), &kek_id(), Algorithm::Aes256Gcm).await.unwrap();
    let last = write(&cluster, "two=under-key-2").await;
    wait_all(&cluster, &[1, 2, 3], last).await;
    for id in [1, 2, 3] {
        cluster.compact(id).await.unwrap();
    }
    let leader = cluster.node(cluster.leader().unwrap()).unwrap().raft.unwrap();
    let refused = leader.destroy_key(KeyId(1), &stale).await.unwrap_err();
    assert!(
        matches!(&refused, AdminError::DestroyRefused(DestroyRefused::StillSealing { key_id: KeyId(1), .. })),
        "{refused}"
    );
    let fresh: Vec<_> = cluster.running().iter().map(|(_, r)| r.retention()).collect();
    leader.destroy_key(KeyId(1), &fresh).await.unwrap();
    cluster.shutdown().await;
}

/// A key provider that answers correctly, but slowly (`delay`), and whose first
/// `hanging_calls_left` unwrap calls never answer (a connection that hung): a KMS having a bad
/// day.
struct UnreliableProvider {
    inner: Arc<dyn KeyProvider>,
    delay: Duration,
    hanging_calls_left: AtomicU64,
}

impl UnreliableProvider {
    fn shared(delay: Duration, hanging_calls: u64) -> Arc<dyn KeyProvider> {
        Arc::new(Self { inner: kek(), delay, hanging_calls_left: AtomicU64::new(hanging_calls) })
    }
}

#[raft_envelope_core::async_trait]
impl KeyProvider for UnreliableProvider {
    fn kek_id(&self) -> &KekId {
        self.inner.kek_id()
    }

    async fn wrap(
        &self,
        context: &raft_envelope_core::provider::WrapContext<'_>,
        key: &SecretKey,
    ) -> Result<raft_envelope_core::provider::WrappedKey, raft_envelope_core::provider::KeyProviderError>
    {
        self.inner.wrap(context, key).await
    }

    async fn unwrap(
        &self,
        context: &raft_envelope_core::provider::WrapContext<'_>,
        wrapped: &raft_envelope_core::provider::WrappedKey,
    ) -> Result<SecretKey, raft_envelope_core::provider::KeyProviderError> {
        let hang = self
            .hanging_calls_left
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok();
        if hang {
            std::future::pending::<()>().await;
        }
        tokio::time::sleep(self.delay).await;
        self.inner.unwrap(context, wrapped).await
    }
}

/// Restarts a follower with `provider` (its apply path warns every 20 ms while it waits),
/// rotates, writes, and checks every replica converges without a halt.
async fn rotation_converges_with_a_follower_provider(provider: Arc<dyn KeyProvider>) {
    let cluster = start([Some(kek()), Some(kek()), Some(kek())]).await;
    cluster.enable_encryption(kek().as_ref(), &kek_id(), Algorithm::Aes256Gcm).await.unwrap();
    cluster.set_provider_warn_interval(Duration::from_millis(20));
    let victim = [1, 2, 3].into_iter().find(|id| Some(*id) != cluster.leader()).unwrap();
    cluster.restart_with_provider(victim, Some(provider)).await.unwrap();

    cluster.rotate_key(kek().as_ref(), &kek_id(), Algorithm::Aes256Gcm).await.unwrap();
    let last = write(&cluster, "after=rotation").await;
    wait_all(&cluster, &[1, 2, 3], last).await;
    assert!(!cluster.node(victim).unwrap().is_halted(), "{:?}", cluster.halted(victim).unwrap());
    assert_same_layer_state(&cluster);
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_key_provider_stalls_apply_but_never_halts() {
    // 20 times slower than the interval the apply path warns at.
    rotation_converges_with_a_follower_provider(UnreliableProvider::shared(Duration::from_millis(400), 0))
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_provider_call_that_hangs_is_made_again_and_apply_resumes() {
    // Both the prefetch on append and the first call of the apply path hang.
    rotation_converges_with_a_follower_provider(UnreliableProvider::shared(Duration::ZERO, 2)).await;
}

/// A node whose log holds layer control entries it has not applied (it stored a rotation but
/// has not learned it committed, and was restarted meanwhile) knows it, and appends nothing until
/// it applied them: a follower answers with the leader (as without the layer), a leader with
/// `ControlPending`. Elected with its layer state behind its log, it could otherwise append
/// cleartext above an enforce entry or seal under a key the rotation replaced.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_with_unapplied_control_entries_in_its_log_appends_nothing() {
    let cluster = start([Some(kek()), Some(kek()), Some(kek())]).await;
    cluster.enable_encryption(kek().as_ref(), &kek_id(), Algorithm::Aes256Gcm).await.unwrap();
    let leader = cluster.leader().unwrap();
    let victim = [1, 2, 3].into_iter().find(|id| *id != leader).unwrap();
    cluster.hold_commit(victim, true).unwrap();
    cluster.rotate_key(kek().as_ref(), &kek_id(), Algorithm::Aes256Gcm).await.unwrap();
    let promote = *control_indexes(&cluster, leader).last().unwrap();
    cluster.wait_stored(victim, promote, WAIT).await.unwrap();
    cluster.restart_with_provider(victim, Some(kek())).await.unwrap();

    let state = cluster.node(victim).unwrap().layer_state.unwrap();
    assert!(
        state.local().control_pending(),
        "the restarted node knows its log may hold unapplied control entries"
    );
    let raft = cluster.node(victim).unwrap().raft.unwrap();
    let answer = raft.client_write(b"x=1".to_vec()).await.unwrap_err();
    assert!(answer.forward_to_leader().is_some(), "a follower points at the leader: {answer}");

    cluster.hold_commit(victim, false).unwrap();
    let last = write(&cluster, "after=release").await;
    wait_all(&cluster, &[victim], last).await;
    assert!(!state.local().control_pending(), "applied past them, it may append again");
    assert_eq!(state.active_key(), Some(KeyId(2)));
    cluster.shutdown().await;
}
