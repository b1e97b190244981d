//! A raft-rs node with the layer on `DiskStore`: what it writes to disk holds no plaintext above
//! the cutover, and a node restarted from the file alone (a fresh state machine and layer state)
//! rebuilds both by replaying its log, opening every envelope with its KEK.
#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use raft::eraftpb::{ConfState, Snapshot};
use raft::Config;
use raft_envelope_core::provider::{FileKekProvider, KekId, KeyProvider};
use raft_envelope_core::wire::ControlCommand;
use raft_envelope_core::{Algorithm, ClusterId, LayerState, SecretKey};
use raft_envelope_examples::DiskStore;
use raft_envelope_raftrs::{EnvelopeNode, StateMachine};

const MARKER: &str = "PLAINTEXT-MARKER-d41c";

#[derive(Default)]
struct Kv {
    map: BTreeMap<String, String>,
    applied: u64,
}

impl StateMachine for Kv {
    type Response = ();

    fn apply(&mut self, index: u64, _term: u64, payload: &[u8]) {
        self.applied = index;
        if let Some((k, v)) = String::from_utf8_lossy(payload).split_once('=') {
            self.map.insert(k.to_owned(), v.to_owned());
        }
    }

    fn apply_control(&mut self, index: u64, _term: u64, _conf: Option<&ConfState>) {
        self.applied = index;
    }

    fn applied_index(&self) -> u64 {
        self.applied
    }

    fn restore_snapshot(&mut self, _snapshot: &Snapshot) -> Result<(), String> {
        Err("this test takes no snapshots".into())
    }
}

struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(f)
}

fn start(path: &Path, provider: Arc<dyn KeyProvider>) -> (EnvelopeNode<DiskStore, Kv>, Arc<LayerState>) {
    let store = DiskStore::open(path, ConfState::from((vec![1], vec![]))).unwrap();
    let state = Arc::new(LayerState::new(ClusterId::new("disk").unwrap()));
    let config = Config { id: 1, election_tick: 10, heartbeat_tick: 2, ..Config::default() };
    let logger = slog::Logger::root(slog::Discard, slog::o!());
    let node =
        EnvelopeNode::with_layer_state(&config, store, Kv::default(), state.clone(), provider, &logger)
            .unwrap();
    (node, state)
}

/// Runs the node's Ready loop (one node: no messages to send) until nothing is left to do.
fn drive(node: &mut EnvelopeNode<DiskStore, Kv>) {
    for _ in 0..100 {
        if let Some((index, e)) = block_on(node.prefetch_pending()) {
            panic!("prefetch failed at {index}: {e}");
        }
        node.on_ready().unwrap();
        if !node.needs_driving() && node.applied() >= node.commit_index() && node.is_leader() {
            return;
        }
        node.tick();
    }
    panic!("the node did not settle");
}

fn grep(dir: &Path, needle: &[u8]) -> usize {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|f| std::fs::read(f.unwrap().path()).unwrap())
        .map(|bytes| bytes.windows(needle.len()).filter(|w| *w == needle).count())
        .sum()
}

#[test]
fn a_node_on_disk_stores_no_plaintext_above_the_cutover_and_rebuilds_from_its_log() {
    let dir =
        TempDir(std::env::temp_dir().join(format!("raft-envelope-node-on-disk-{}", std::process::id())));
    let _ = std::fs::remove_dir_all(&dir.0);
    std::fs::create_dir_all(&dir.0).unwrap();
    let path = dir.0.join("raft.redb");
    let kek = SecretKey::generate().unwrap();
    let provider = || -> Arc<dyn KeyProvider> {
        Arc::new(
            FileKekProvider::from_key(
                KekId::new("kek-1").unwrap(),
                SecretKey::from_bytes(*kek.expose_secret()),
            )
            .unwrap(),
        )
    };

    let (mut node, state) = start(&path, provider());
    node.campaign().unwrap();
    drive(&mut node);
    node.propose(b"before=in-the-clear".to_vec()).unwrap();
    drive(&mut node);
    let (key_id, _) = block_on(node.propose_install(provider().as_ref(), Algorithm::Aes256Gcm)).unwrap();
    drive(&mut node);
    node.propose_control(&ControlCommand::PromoteKey { key_id }).unwrap();
    drive(&mut node);
    node.propose_control(&ControlCommand::Enforce).unwrap();
    drive(&mut node);
    let cutover = state.cutover().expect("enforced");
    for i in 0..3 {
        node.propose(format!("secret{i}={MARKER}").into_bytes()).unwrap();
        drive(&mut node);
    }
    let applied = node.state_machine().map.clone();
    assert_eq!(applied.get("secret2").map(String::as_str), Some(MARKER));
    let last = node.last_index();
    assert!(last > cutover);
    drop(node);

    assert_eq!(grep(&dir.0, MARKER.as_bytes()), 0, "no plaintext above the cutover on disk");
    assert!(grep(&dir.0, b"in-the-clear") > 0, "cleartext below the cutover is stored as it was");

    // Restart from the file alone: a fresh state machine and layer state replay the log.
    let (mut node, state) = start(&path, provider());
    drive(&mut node);
    assert_eq!(node.state_machine().map, applied, "the state machine is rebuilt from the log");
    assert_eq!(state.cutover(), Some(cutover), "the layer state is rebuilt from the log");
    assert!(node.applied() >= last);
    node.propose(b"after=restart".to_vec()).unwrap();
    drive(&mut node);
    assert_eq!(node.state_machine().map.get("after").map(String::as_str), Some("restart"));
    assert!(node.halted().is_none(), "{:?}", node.halted());
}
