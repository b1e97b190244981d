//! The key SPEC behaviours over a real 3-node openraft cluster in one process.
#![allow(clippy::unwrap_used)] // Reason: tests fail loudly on any unexpected error.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use raft_envelope_core::{
    error::FailureReason, Algorithm, ApplyGate, ClusterId, Cutover, EntryKind, EnvelopeCipher, EnvelopeLayer,
    KeyId, Keyring, SecretKey,
};
use raft_envelope_openraft::testing::{KvApp, TestCluster};

const WAIT: Duration = Duration::from_secs(5);

/// One data key shared by every node; each node holds its own keyring with a copy.
struct Keys([u8; 32]);

impl Keys {
    fn new() -> Self {
        Self(*SecretKey::generate().unwrap().expose_secret())
    }

    fn cipher(&self, key_id: u32) -> Arc<EnvelopeCipher> {
        let ring =
            Keyring::with_active_key(KeyId(key_id), Algorithm::Aes256Gcm, SecretKey::from_bytes(self.0))
                .unwrap();
        Arc::new(EnvelopeCipher::new(ClusterId::new("test").unwrap(), Arc::new(ring)))
    }
}

struct Fixture {
    cluster: Arc<TestCluster<KvApp>>,
    cutovers: Vec<Arc<Cutover>>,
    ciphers: Vec<Arc<EnvelopeCipher>>,
}

/// A 3-node cluster whose layers can open envelopes but do not seal and enforce nothing yet.
async fn start(keys: &Keys) -> Fixture {
    start_with(keys, [1, 1, 1]).await
}

async fn start_with(keys: &Keys, key_ids: [u32; 3]) -> Fixture {
    let cutovers: Vec<Arc<Cutover>> = (0..3).map(|_| Arc::new(Cutover::inert())).collect();
    let ciphers: Vec<Arc<EnvelopeCipher>> = key_ids.iter().map(|k| keys.cipher(*k)).collect();
    let nodes = (0..3)
        .map(|i| {
            let gate = ApplyGate::new(cutovers[i].clone()).with_unwrapper(ciphers[i].clone());
            (Arc::new(EnvelopeLayer::new(gate)), KvApp::default())
        })
        .collect();
    let cluster = Arc::new(TestCluster::start(nodes).await.unwrap());
    Fixture { cluster, cutovers, ciphers }
}

impl Fixture {
    async fn switch_on(&self) -> u64 {
        self.cluster.switch_on(self.ciphers[0].clone(), &self.cutovers, WAIT).await.unwrap()
    }

    /// A fresh layer for node `id` (1-based) with the same cutover and `cipher`, sealing.
    fn layer(&self, id: u64, cipher: Arc<EnvelopeCipher>) -> Arc<EnvelopeLayer> {
        let gate = ApplyGate::new(self.cutovers[id as usize - 1].clone()).with_unwrapper(cipher.clone());
        Arc::new(EnvelopeLayer::new(gate).with_wrapper(cipher))
    }

    async fn write(&self, kv: &str) -> u64 {
        self.cluster.write(kv.as_bytes().to_vec()).await.unwrap().log_id.index
    }

    async fn wait_all(&self, ids: &[u64], index: u64) {
        for id in ids {
            self.cluster.wait_applied(*id, index, WAIT).await.unwrap();
        }
    }

    fn value(&self, id: u64, key: &str) -> Option<String> {
        self.cluster.node(id).unwrap().sm.with_app(|a| a.data.get(key).cloned())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inert_layer_passes_payloads_and_responses_unchanged() {
    let keys = Keys::new();
    let f = start(&keys).await;
    let r1 = f.cluster.write(b"a=1".to_vec()).await.unwrap();
    let r2 = f.cluster.write(b"a=2".to_vec()).await.unwrap();
    assert_eq!(r2.data, b"1".to_vec(), "the application's response comes back unchanged");
    f.wait_all(&[1, 2, 3], r2.log_id.index).await;
    let stored = f.cluster.read_entry(3, r1.log_id.index).unwrap().unwrap();
    assert_eq!(stored, (EntryKind::Cleartext, b"a=1".to_vec()), "inert: stored bytes are the payload");

    // The same writes on a cluster that seals from the start get the same responses at the same
    // indexes.
    let sealed = start(&keys).await;
    for layer_node in sealed.cluster.running() {
        layer_node.1.layer().set_wrapper(Some(sealed.ciphers[0].clone()));
    }
    let s1 = sealed.cluster.write(b"a=1".to_vec()).await.unwrap();
    let s2 = sealed.cluster.write(b"a=2".to_vec()).await.unwrap();
    assert_eq!((s1.log_id.index, s1.data), (r1.log_id.index, r1.data));
    assert_eq!((s2.log_id.index, s2.data), (r2.log_id.index, r2.data));
    assert_eq!(sealed.cluster.read_entry(1, s1.log_id.index).unwrap().unwrap().0, EntryKind::Envelope);
    f.cluster.shutdown().await;
    sealed.cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plaintext_marker_above_cutover_is_absent_from_every_stored_log() {
    let keys = Keys::new();
    let f = start(&keys).await;
    let legacy = f.write("legacy=LEGACY-MARKER-1c9e").await;
    let cutover = f.switch_on().await;
    assert!(cutover > legacy);
    let first = f.write("secret=PLAINTEXT-MARKER-7f3a").await;
    // ... and across a leader change.
    f.cluster.change_leader().await.unwrap();
    let second = f.write("other=PLAINTEXT-MARKER-2b8d").await;
    assert!(first > cutover && second > first);
    f.wait_all(&[1, 2, 3], second).await;
    for id in [1, 2, 3] {
        assert!(
            f.cluster.log_contains(id, b"LEGACY-MARKER-1c9e").unwrap(),
            "sanity: cleartext below C is visible"
        );
        assert!(
            !f.cluster.log_contains(id, b"PLAINTEXT-MARKER").unwrap(),
            "node {id} stores a plaintext marker"
        );
        for e in f.cluster.stored_entries(id).unwrap().iter().filter(|e| e.index > cutover) {
            assert_ne!(e.kind, EntryKind::Cleartext, "node {id} stores cleartext at {}", e.index);
        }
        assert_eq!(f.value(id, "secret").as_deref(), Some("PLAINTEXT-MARKER-7f3a"));
        assert_eq!(f.value(id, "other").as_deref(), Some("PLAINTEXT-MARKER-2b8d"));
        assert!(f.cluster.halted(id).unwrap().is_none());
    }
    f.cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tampered_entry_halts_at_its_index_sticky_until_repaired() {
    let keys = Keys::new();
    let f = start(&keys).await;
    f.switch_on().await;
    let before = f.write("k=before").await;
    f.wait_all(&[1, 2, 3], before).await;

    // Node 3 stores the next entry but does not learn it is committed yet; flip one bit of it.
    f.cluster.hold_commit(3, true).unwrap();
    let target = f.write("k=target").await;
    f.cluster.wait_stored(3, target, WAIT).await.unwrap();
    let original = f.cluster.read_entry(3, target).unwrap().unwrap();
    assert_eq!(original.0, EntryKind::Envelope);
    f.cluster.tamper(3, target, |bytes| bytes[40] ^= 0x01).unwrap();
    f.cluster.hold_commit(3, false).unwrap();

    let halt = f.cluster.wait_halted(3, WAIT).await.unwrap();
    assert_eq!(
        (halt.index, halt.reason, halt.key_id),
        (target, FailureReason::AuthenticationFailed, Some(KeyId(1)))
    );
    assert_eq!(f.cluster.applied_index(3).unwrap(), target - 1, "applied stops at the last good entry");
    assert_eq!(f.value(3, "k").as_deref(), Some("before"), "nothing of the failing entry reached the app");

    // The others keep serving.
    let after = f.write("k=after").await;
    f.wait_all(&[1, 2], after).await;

    // Sticky: a restart with the same log and keys fails on the same entry again.
    f.cluster.restart(3, f.layer(3, f.ciphers[2].clone())).await.unwrap();
    let node = f.cluster.node(3).unwrap();
    assert!(node.start_error.is_some(), "restart must not skip the entry");
    assert_eq!(node.halt.get().unwrap().index, target);
    assert_eq!(f.cluster.applied_index(3).unwrap(), target - 1);

    // Repaired (the stored bytes restored): it resumes from that entry and converges.
    f.cluster.write_entry(3, target, original.0, original.1).unwrap();
    f.cluster.restart(3, f.layer(3, f.ciphers[2].clone())).await.unwrap();
    f.cluster.wait_applied(3, after, WAIT).await.unwrap();
    assert_eq!(f.value(3, "k").as_deref(), Some("after"));
    assert!(f.cluster.halted(3).unwrap().is_none());
    f.cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_key_halts_one_replica_and_key_restores_it() {
    let keys = Keys::new();
    // Node 3 holds the same material under another id: it cannot open key#1 envelopes.
    let f = start_with(&keys, [1, 1, 9]).await;
    f.switch_on().await;
    let index = f.write("x=1").await;
    let halt = f.cluster.wait_halted(3, WAIT).await.unwrap();
    assert_eq!((halt.index, halt.reason), (index, FailureReason::UnknownKey));
    assert_eq!(f.cluster.applied_index(3).unwrap(), index - 1);
    let later = f.write("x=2").await;
    f.wait_all(&[1, 2], later).await;

    f.cluster.restart(3, f.layer(3, keys.cipher(1))).await.unwrap();
    f.cluster.wait_applied(3, later, WAIT).await.unwrap();
    assert_eq!(f.value(3, "x").as_deref(), Some("2"));
    f.cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cleartext_appended_above_cutover_halts_every_replica() {
    let keys = Keys::new();
    let f = start(&keys).await;
    let cutover = f.switch_on().await;
    let good = f.write("a=1").await;
    f.wait_all(&[1, 2, 3], good).await;
    let leader = f.cluster.leader().unwrap();
    let index = f.cluster.append_unchecked(EntryKind::Cleartext, b"a=evil".to_vec()).await.unwrap();
    assert!(index > cutover);
    let halt = f.cluster.wait_halted(leader, WAIT).await.unwrap();
    assert_eq!((halt.index, halt.reason), (index, FailureReason::CleartextAboveCutover));
    // A follower halts too once it learns the entry is committed; one that never learns it (the
    // leader stopped first and no quorum is left) simply never applies it.
    tokio::time::sleep(Duration::from_millis(500)).await;
    for id in [1, 2, 3] {
        if let Some(halt) = f.cluster.halted(id).unwrap() {
            assert_eq!((halt.index, halt.reason), (index, FailureReason::CleartextAboveCutover));
        }
        assert!(f.cluster.applied_index(id).unwrap() < index, "node {id} applied past the cleartext entry");
        assert_eq!(f.value(id, "a").as_deref(), Some("1"));
    }
    f.cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seal_refusal_is_retryable_and_appends_nothing() {
    let keys = Keys::new();
    let f = start(&keys).await;
    f.switch_on().await;
    let leader = f.cluster.leader().unwrap();
    let raft = f.cluster.node(leader).unwrap().raft.unwrap();
    let last = f.cluster.last_index().unwrap();
    f.ciphers[leader as usize - 1].keyring().retire(KeyId(1)).unwrap();
    let err = raft.client_write(b"z=1".to_vec()).await.unwrap_err();
    assert!(err.is_seal_refusal(), "{err}");
    assert_eq!(f.cluster.last_index().unwrap(), last, "nothing appended");
    f.cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_stopped_sealing_refuses_cleartext_above_the_cutover() {
    let keys = Keys::new();
    let f = start(&keys).await;
    f.switch_on().await;
    let leader = f.cluster.leader().unwrap();
    let raft = f.cluster.node(leader).unwrap().raft.unwrap();
    let last = f.cluster.last_index().unwrap();
    raft.layer().set_wrapper(None); // a misconfigured node
    let err = raft.client_write(b"z=1".to_vec()).await.unwrap_err();
    assert!(matches!(err, raft_envelope_openraft::WriteError::NotSealing { .. }), "{err}");
    assert!(err.is_seal_refusal());
    assert_eq!(f.cluster.last_index().unwrap(), last, "nothing appended");
    for id in [1, 2, 3] {
        assert!(f.cluster.halted(id).unwrap().is_none());
    }
    f.cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn switch_on_waits_for_cleartext_prepared_before_it() {
    let keys = Keys::new();
    let f = start(&keys).await;
    let leader = f.cluster.leader().unwrap();
    let raft = f.cluster.node(leader).unwrap().raft.unwrap();
    let prepared = raft.prepare(&b"early=1".to_vec()).unwrap();
    assert_eq!(prepared.kind(), EntryKind::Cleartext);
    let err = raft.seal_new_proposals(f.ciphers[0].clone(), Duration::from_millis(100)).await.unwrap_err();
    assert_eq!(err.in_flight, 1, "the prepared cleartext proposal holds the drain");
    assert_eq!(raft.prepare(&b"late=1".to_vec()).unwrap().kind(), EntryKind::Envelope);
    let response = raft.submit(&prepared).await.unwrap();
    raft.drain_cleartext(Duration::from_millis(100)).await.unwrap_err(); // still held by `prepared`
    drop(prepared);
    raft.drain_cleartext(Duration::from_millis(100)).await.unwrap();
    let barrier = raft.commit_barrier().await.unwrap();
    assert!(barrier.index > response.log_id.index, "the early cleartext lands below the barrier");
    f.cluster.shutdown().await;
}

/// A caller that stops waiting for its cleartext write does not release the switch-on drain
/// before Raft has handled the write: the entry is appended below the barrier, never above it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abandoned_cleartext_write_lands_below_the_barrier_and_releases_the_drain() {
    let keys = Keys::new();
    let f = start(&keys).await;
    let leader = f.cluster.leader().unwrap();
    let raft = f.cluster.node(leader).unwrap().raft.unwrap();
    let followers: Vec<u64> = f.cluster.ids().into_iter().filter(|id| *id != leader).collect();
    for id in &followers {
        f.cluster.set_isolated(*id, true); // the write can be appended but not committed
    }
    let prepared = raft.prepare(&b"abandoned=1".to_vec()).unwrap();
    let gave_up = tokio::time::timeout(Duration::from_millis(50), raft.submit(&prepared)).await;
    assert!(gave_up.is_err(), "the write cannot commit while the followers are cut off");
    drop(prepared);
    raft.seal_new_proposals(f.ciphers[0].clone(), Duration::from_secs(2)).await.unwrap();
    for id in &followers {
        f.cluster.set_isolated(*id, false);
    }
    let barrier = raft.commit_barrier().await.unwrap();
    let stored = f.cluster.stored_entries(leader).unwrap();
    let abandoned =
        stored.iter().find(|e| e.bytes == b"abandoned=1").expect("the abandoned write was appended");
    assert_eq!(abandoned.kind, EntryKind::Cleartext);
    assert!(abandoned.index < barrier.index, "cleartext at {} must lie below the barrier", abandoned.index);
    f.cluster.shutdown().await;
}

/// 32 writers propose while encryption is switched on (every 4th round with a leader change in
/// the middle), 20 rounds: no node ever halts and nothing above the cutover is cleartext.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn switch_on_under_32_concurrent_writers_never_halts_x20() {
    let started = Instant::now();
    let keys = Keys::new();
    for round in 0..20 {
        let f = start(&keys).await;
        // Only the drain may keep cleartext below the cutover here, not the proposal guard.
        f.cluster.set_refuse_cleartext_above_cutover(false);
        let stop = Arc::new(AtomicBool::new(false));
        let written = Arc::new(AtomicU64::new(0));
        let writers: Vec<_> = (0..32)
            .map(|w| {
                let (cluster, stop, written) = (f.cluster.clone(), stop.clone(), written.clone());
                tokio::spawn(async move {
                    let mut n = 0u32;
                    while !stop.load(Ordering::Relaxed) {
                        if cluster.write(format!("w{w}=v{n}").into_bytes()).await.is_ok() {
                            written.fetch_add(1, Ordering::Relaxed);
                        }
                        n += 1;
                    }
                })
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(30)).await;
        let leader_change = (round % 4 == 3).then(|| {
            let cluster = f.cluster.clone();
            tokio::spawn(async move { cluster.change_leader().await })
        });
        let cutover = match f.cluster.switch_on(f.ciphers[0].clone(), &f.cutovers, WAIT).await {
            Ok(c) => c,
            Err(e) => {
                for id in [1, 2, 3] {
                    let n = f.cluster.node(id).unwrap();
                    eprintln!(
                        "node {id}: {:?} metrics {:?}",
                        n,
                        n.raft.as_ref().map(|r| r.raft().metrics().borrow().clone())
                    );
                }
                panic!("round {round}: {e}");
            }
        };
        tokio::time::sleep(Duration::from_millis(30)).await;
        if let Some(change) = leader_change {
            change.await.unwrap().unwrap();
        }
        stop.store(true, Ordering::Relaxed);
        for w in writers {
            w.await.unwrap();
        }
        let last = f.write("final=1").await;
        f.wait_all(&[1, 2, 3], last).await;
        for id in [1, 2, 3] {
            assert!(f.cluster.halted(id).unwrap().is_none(), "round {round}: node {id} halted");
            for e in f.cluster.stored_entries(id).unwrap().iter().filter(|e| e.index > cutover) {
                assert_ne!(e.kind, EntryKind::Cleartext, "round {round}: node {id} cleartext at {}", e.index);
            }
        }
        assert!(written.load(Ordering::Relaxed) > 32, "round {round}: the writers made progress");
        f.cluster.shutdown().await;
    }
    eprintln!("20 rounds in {:?}", started.elapsed());
}

/// Snapshots are not sealed yet: above a cutover an unsealed snapshot is never installed (the
/// replica halts, nothing reaches its state machine) and never handed out for sending.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsealed_snapshot_is_refused_above_the_cutover() {
    use openraft::storage::RaftStateMachine;
    use openraft::{CommittedLeaderId, LogId, SnapshotMeta, StoredMembership};
    use raft_envelope_openraft::testing::MemStateMachine;
    use raft_envelope_openraft::EnvelopeStateMachine;

    let meta = SnapshotMeta {
        last_log_id: Some(LogId::new(CommittedLeaderId::new(1, 1), 9)),
        last_membership: StoredMembership::default(),
        snapshot_id: "forged".to_string(),
    };
    let cutover = Arc::new(Cutover::at(5));
    let layer = Arc::new(EnvelopeLayer::new(ApplyGate::new(cutover.clone())));
    let inner = MemStateMachine::new(KvApp::default());
    let mut sm =
        EnvelopeStateMachine::<raft_envelope_openraft::testing::TestConfig, _>::new(inner.clone(), layer);

    let data = Box::new(std::io::Cursor::new(b"any state".to_vec()));
    assert!(sm.install_snapshot(&meta, data).await.is_err(), "an unsealed snapshot above C must not install");
    let halt = sm.halt_record().get().expect("the refusal is recorded as a halt");
    assert_eq!((halt.index, halt.reason), (9, FailureReason::UnsealedSnapshot));
    assert_eq!(inner.last_applied(), None, "nothing reached the state machine");
    assert!(sm.get_current_snapshot().await.unwrap().is_none(), "no snapshot is sent in the clear above C");

    cutover.set(None); // inert: snapshots pass through as without the layer
    let data = Box::new(std::io::Cursor::new(raft_envelope_openraft::testing::Application::snapshot(
        &KvApp::default(),
    )));
    sm.install_snapshot(&meta, data).await.unwrap();
    assert_eq!(inner.last_applied(), Some(9));
}
