//! The key lifecycle on raft-rs from a driver of your own, with the public admin API only (no
//! test kit): three nodes, each on its own thread running its own Ready loop, messages over
//! channels, and an operator on the main thread.
//!
//! ```text
//! cargo run -p raft-envelope-raftrs --example admin_driver
//! ```
//!
//! The operator seals without enforcing and retires that key again (back to cleartext), then
//! switches encryption on for real, rotates, and destroys the first keys once every log is
//! compacted, printing the status after each step.

use std::collections::{BTreeMap, HashMap};
use std::error::Error;
use std::future::Future;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};
use std::thread;
use std::time::{Duration, Instant};

use raft::eraftpb::{ConfState, Message, Snapshot};
use raft::Config;
use raft_envelope_core::lifecycle::{EncryptionStatus, Lifecycle};
use raft_envelope_core::provider::{FileKekProvider, KekId, KeyProvider};
use raft_envelope_core::{Algorithm, ClusterId, KeyId, LayerState, ProposalId, SecretKey};
use raft_envelope_raftrs::admin::{AdminHandle, ClusterPlane};
use raft_envelope_raftrs::{EnvelopeNode, MemStore, StateMachine};

/// The application: a key-value map.
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

    fn snapshot_data(&self) -> Result<Vec<u8>, String> {
        Ok(self.map.iter().map(|(k, v)| format!("{k}={v}\n")).collect::<String>().into_bytes())
    }

    fn restore_snapshot(&mut self, snapshot: &Snapshot) -> Result<(), String> {
        let text = String::from_utf8_lossy(snapshot.get_data()).into_owned();
        self.map =
            text.lines().filter_map(|l| l.split_once('=')).map(|(k, v)| (k.into(), v.into())).collect();
        self.applied = snapshot.get_metadata().index;
        Ok(())
    }
}

/// What the outside sends a node's loop.
enum Input {
    Raft(Message),
    Write(Vec<u8>, Sender<Result<u64, String>>),
    Compact(Sender<Result<u64, String>>),
    Stop,
}

/// A node's Ready loop: tick every 10 ms, step what arrives, prefetch keys, persist and send,
/// serve admin requests, answer clients.
fn run_node(
    mut node: EnvelopeNode<MemStore, Kv>,
    inputs: Receiver<Input>,
    peers: HashMap<u64, Sender<Input>>,
    mut inbox: raft_envelope_raftrs::admin::AdminInbox,
) {
    let mut waiting: HashMap<ProposalId, Sender<Result<u64, String>>> = HashMap::new();
    let mut next_tick = Instant::now();
    loop {
        match inputs.recv_timeout(next_tick.saturating_duration_since(Instant::now())) {
            Ok(Input::Raft(m)) => drop(node.step(m)),
            Ok(Input::Write(payload, reply)) => match node.propose(payload) {
                Ok(ticket) => drop(waiting.insert(ticket.id, reply)),
                Err(e) => drop(reply.send(Err(e.to_string()))),
            },
            Ok(Input::Compact(reply)) => drop(reply.send(node.compact().map_err(|e| e.to_string()))),
            Ok(Input::Stop) | Err(RecvTimeoutError::Disconnected) => return,
            Err(RecvTimeoutError::Timeout) => {
                node.tick();
                next_tick = Instant::now() + Duration::from_millis(10);
            }
        }
        if node.needs_prefetch() {
            // Outside the apply path: the key provider may be slow (a KMS).
            block_on(node.prefetch_pending());
        }
        let messages = match node.on_ready() {
            Ok(messages) => messages,
            Err(_) => node.take_last_messages(), // halted: fail closed, send what was due
        };
        for m in messages {
            if let Some(peer) = peers.get(&m.to) {
                let _ = peer.send(Input::Raft(m));
            }
        }
        node.serve_admin(&mut inbox);
        for done in node.take_completions() {
            if let Some(reply) = waiting.remove(&done.id) {
                let _ = reply.send(done.result.map(|a| a.index).map_err(|e| e.to_string()));
            }
        }
    }
}

fn main() -> Result<(), Box<dyn Error>> {
    let kek = Arc::new(FileKekProvider::from_key(KekId::new("kek-1")?, SecretKey::generate()?)?);
    let logger = slog::Logger::root(slog::Discard, slog::o!());
    let ids = [1u64, 2, 3];
    let channels: Vec<(Sender<Input>, Receiver<Input>)> = ids.iter().map(|_| mpsc::channel()).collect();
    let senders: HashMap<u64, Sender<Input>> =
        ids.iter().zip(&channels).map(|(id, (s, _))| (*id, s.clone())).collect();
    let mut handles: Vec<AdminHandle> = Vec::new();
    let mut threads = Vec::new();
    for ((id, (_, inputs)), _) in ids.iter().zip(channels).zip(0..) {
        let state = Arc::new(LayerState::new(ClusterId::new("orders")?));
        let config = Config { id: *id, election_tick: 10, heartbeat_tick: 2, ..Config::default() };
        let storage = MemStore::new_with_conf_state((ids.to_vec(), vec![]));
        let provider: Arc<dyn KeyProvider> = kek.clone();
        let mut node =
            EnvelopeNode::with_layer_state(&config, storage, Kv::default(), state, provider, &logger)?;
        if *id == 1 {
            node.campaign()?;
        }
        let (handle, inbox) = node.admin_channel()?;
        handles.push(handle);
        let peers = senders.clone();
        threads.push(thread::spawn(move || run_node(node, inputs, peers, inbox.with_timeout_ticks(500))));
    }

    let leader = wait_leader(&handles)?;
    println!("3 nodes, each with its own Ready loop; node {} leads", leader.node());
    let admin = ClusterPlane::lifecycle(leader.clone(), handles.clone());
    let write = |kv: &str| -> Result<u64, Box<dyn Error>> {
        let (reply, answer) = mpsc::channel();
        senders[&leader.node()].send(Input::Write(kv.as_bytes().to_vec(), reply))?;
        Ok(answer.recv_timeout(Duration::from_secs(10))??)
    };

    write("user:1=alice")?;
    let key = block_on(admin.start_sealing(kek.as_ref(), kek.kek_id(), Algorithm::Aes256Gcm))?;
    println!("\nstart_sealing: {key} seals every new proposal, nothing enforced yet");
    write("user:2=bob")?;
    show(&admin);

    let retired = block_on(admin.retire_key(key))?;
    println!("\nretire_key({key}): {retired:?} -- proposals go out in the clear again");
    write("user:3=carol")?;
    show(&admin);

    let enabled = block_on(admin.enable_encryption(kek.as_ref(), kek.kek_id(), Algorithm::Aes256Gcm))?;
    println!("\nenable_encryption: {} active, cutover {}", enabled.key_id, enabled.cutover);
    write("card:1=4111-1111-1111-1111")?;
    let rotated = block_on(admin.rotate_key(kek.as_ref(), kek.kek_id(), Algorithm::Aes256Gcm))?;
    println!("rotate_key: {rotated} active");
    write("card:2=5500-0000-0000-0004")?;
    show(&admin);

    for old in [key, enabled.key_id] {
        match block_on(admin.destroy_key(old)) {
            Err(refused) => println!("\ndestroy_key({old}): {refused}"),
            Ok(done) => println!("\ndestroy_key({old}): {done:?} (unexpected before compaction)"),
        }
    }
    for id in ids {
        let (reply, answer) = mpsc::channel();
        senders[&id].send(Input::Compact(reply))?;
        println!("node {id} compacted its log into a sealed snapshot at {}", answer.recv()??);
    }
    for old in [key, enabled.key_id] {
        println!("destroy_key({old}): {:?}", block_on(admin.destroy_key(old))?);
    }
    write("after:destroy=ok")?;
    show(&admin);

    for id in ids {
        let _ = senders[&id].send(Input::Stop);
    }
    for t in threads {
        let _ = t.join();
    }
    Ok(())
}

/// The first node whose `catch_up` answers: it leads and has applied its commit index.
fn wait_leader(handles: &[AdminHandle]) -> Result<AdminHandle, Box<dyn Error>> {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        for h in handles {
            if block_on(h.catch_up()).is_ok() {
                return Ok(h.clone());
            }
        }
        thread::sleep(Duration::from_millis(20));
    }
    Err("no leader within 10 s".into())
}

fn show(admin: &Lifecycle<ClusterPlane>) {
    let EncryptionStatus { keys, cutover, active_key, .. } = admin.status();
    let keys: Vec<String> = keys.iter().map(|k| format!("{}={:?}", k.key_id, k.state)).collect();
    println!(
        "   status: keys [{}], active {:?}, cutover {cutover:?}",
        keys.join(", "),
        active_key.map(|k: KeyId| k.0)
    );
}

/// Runs a future on this thread (the admin API needs no runtime).
fn block_on<F: Future>(future: F) -> F::Output {
    struct Unpark(thread::Thread);
    impl Wake for Unpark {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
    }
    let mut future = std::pin::pin!(future);
    let waker = Waker::from(Arc::new(Unpark(thread::current())));
    let mut cx = Context::from_waker(&waker);
    loop {
        if let Poll::Ready(out) = future.as_mut().poll(&mut cx) {
            return out;
        }
        thread::park();
    }
}
