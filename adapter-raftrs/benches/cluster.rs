//! End to end on raft-rs: a 3-node in-process cluster with the layer off and one with it on
//! (AES-256-GCM), the same write workload interleaved round by round.
//!
//! Two shapes (`BENCH_SHAPE`):
//! - `threads` (the default, shaped like a deployment, raft-rs's `five_mem_node`): each node runs
//!   its own Ready loop on its own thread, with channels between the nodes. A writer seals its
//!   proposal on its own thread (through the leader's proposer) and hands it to the leader's
//!   loop; each replica opens entries on its own loop, in its apply path.
//! - `pump`: one thread drives all three nodes in turn (the earlier bench): it takes every
//!   proposal waiting, proposes them on the leader, delivers messages and handles Readies until
//!   the cluster is quiet, then answers the writers. One seal and three opens per proposal run in
//!   series on that thread.
//!
//! Nodes are what a production node runs: each built from a `LayerState` (exactly-once
//! envelopes, the running digest, integrity checkpoints at the default policy), the on side
//! switched on through the log (install, promote, enforce). `BENCH_FIXED_LAYER=1` measures
//! fixed layers instead (a cipher and a cutover, no layer state: no replay window, no digest).
//!
//! Run: `cargo bench -p raft-envelope-raftrs --bench cluster` (results: `BENCHMARKS.md`).
#![allow(missing_docs, clippy::unwrap_used)] // a bench binary: a panic is the report

use std::collections::HashMap;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender, SyncSender};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use raft::eraftpb::{ConfState, Message};
use raft_envelope_bench_support::BenchCluster;
use raft_envelope_core::provider::{FileKekProvider, KekId, KeyProvider};
use raft_envelope_core::{
    Algorithm, ApplyGate, ClusterId, Cutover, EnvelopeCipher, EnvelopeLayer, KeyId, Keyring, LayerState,
    PayloadWrapper, ProposalId, SecretKey,
};
use raft_envelope_raftrs::testing::{block_on, Cluster, ClusterConfig};
use raft_envelope_raftrs::{
    EnvelopeNode, EnvelopeProposer, MemStore, PreparedProposal, ProposeError, StateMachine,
};

/// Counts what it applies; keeps no payload, so memory stays flat over a long run.
#[derive(Default)]
struct Count {
    applied: u64,
    bytes: u64,
}

impl StateMachine for Count {
    type Response = ();

    fn apply(&mut self, index: u64, _term: u64, payload: &[u8]) {
        self.applied = index;
        self.bytes += payload.len() as u64;
    }

    fn apply_control(&mut self, index: u64, _term: u64, _conf_state: Option<&ConfState>) {
        self.applied = index;
    }

    fn applied_index(&self) -> u64 {
        self.applied
    }
}

type Reply = SyncSender<Result<(), String>>;

fn managed(sealed: bool) -> Cluster<Count> {
    let kek_id = KekId::new("bench-kek").unwrap();
    let kek = *SecretKey::generate().unwrap().expose_secret();
    let provider = || -> Arc<dyn KeyProvider> {
        Arc::new(FileKekProvider::from_key(kek_id.clone(), SecretKey::from_bytes(kek)).unwrap())
    };
    let nodes =
        (0..3).map(|_| (Arc::new(LayerState::new(ClusterId::new("bench").unwrap())), provider())).collect();
    let mut cluster =
        Cluster::with_layer_states(ClusterConfig::default(), nodes, |_| Count::default()).unwrap();
    if sealed {
        cluster.enable_encryption(provider().as_ref(), &kek_id, Algorithm::Aes256Gcm).unwrap();
    }
    cluster
}

// ---- one Ready loop per node thread -------------------------------------------------------

/// What a node's loop receives: a message from a peer, or a writer's sealed proposal.
enum Input {
    Message(Message),
    Propose(PreparedProposal, Reply),
}

/// A cluster whose nodes each run on their own thread; writers seal on their own threads.
struct Threaded {
    /// The leader's proposer: sealing happens on the writer's thread.
    proposer: EnvelopeProposer,
    leader: Sender<Input>,
}

impl BenchCluster for Threaded {
    fn propose(&self, payload: Vec<u8>) -> Result<(), String> {
        let prepared = self.proposer.prepare(Vec::new(), payload).map_err(|e| e.to_string())?;
        let (tx, rx) = mpsc::sync_channel(1);
        self.leader.send(Input::Propose(prepared, tx)).map_err(|e| e.to_string())?;
        rx.recv().map_err(|e| e.to_string())?
    }
}

/// Time per raft-rs tick: heartbeats every two ticks, elections after ten or more (no leader change
/// is expected in a bench, and none happens while every loop runs).
const TICK: Duration = Duration::from_millis(50);

fn build(sealed: bool) -> Cluster<Count> {
    if std::env::var_os("BENCH_FIXED_LAYER").is_some() {
        fixed(sealed)
    } else {
        managed(sealed)
    }
}

fn start_threaded(sealed: bool) -> Threaded {
    let mut cluster = build(sealed);
    cluster.settle();
    let leader = cluster.leader().unwrap();
    let nodes = cluster.into_nodes();
    let (senders, receivers): (Vec<Sender<Input>>, Vec<Receiver<Input>>) =
        nodes.iter().map(|_| mpsc::channel()).unzip();
    let peers: HashMap<u64, Sender<Input>> =
        nodes.iter().zip(&senders).map(|(n, tx)| (n.id(), tx.clone())).collect();
    let mut proposer = None;
    let mut leader_inbox = None;
    for (node, inbox) in nodes.into_iter().zip(receivers) {
        if node.id() == leader {
            proposer = Some(EnvelopeProposer::new(node.layer().clone()));
            leader_inbox = Some(peers[&node.id()].clone());
        }
        let peers = peers.clone();
        thread::spawn(move || ready_loop(node, inbox, peers));
    }
    Threaded { proposer: proposer.unwrap(), leader: leader_inbox.unwrap() }
}

/// A node's loop as a deployment writes it: take what arrived, tick on time, handle the Ready,
/// send the messages to their peers, answer the writers whose proposals applied.
fn ready_loop(
    mut node: EnvelopeNode<MemStore, Count>,
    inbox: Receiver<Input>,
    peers: HashMap<u64, Sender<Input>>,
) {
    let mut waiting: HashMap<ProposalId, Reply> = HashMap::new();
    // Refused for the moment (a layer control entry, such as a checkpoint, not applied yet
    // here): submitted again once the loop has handled its Ready, as a deployment does.
    let mut retry: Vec<(PreparedProposal, Reply)> = Vec::new();
    let mut next_tick = Instant::now() + TICK;
    loop {
        for (prepared, reply) in std::mem::take(&mut retry) {
            submit(&mut node, prepared, reply, &mut waiting, &mut retry);
        }
        // Proposals waiting to be submitted again: do not sleep until the next tick.
        let wait = if retry.is_empty() {
            next_tick.saturating_duration_since(Instant::now())
        } else {
            Duration::ZERO
        };
        let first = match inbox.recv_timeout(wait) {
            Ok(input) => Some(input),
            Err(RecvTimeoutError::Timeout) => None,
            Err(RecvTimeoutError::Disconnected) => return,
        };
        for input in first.into_iter().chain(inbox.try_iter()) {
            match input {
                Input::Message(m) => {
                    let _ = node.step(m);
                }
                Input::Propose(prepared, reply) => {
                    submit(&mut node, prepared, reply, &mut waiting, &mut retry)
                }
            }
        }
        if Instant::now() >= next_tick {
            node.tick();
            next_tick = Instant::now() + TICK;
        }
        // Until raft-rs has nothing more to hand over (handling one Ready can make another).
        while node.raw_node().has_ready() || node.needs_driving() {
            if node.needs_prefetch() {
                let _ = block_on(node.prefetch_pending());
            }
            let messages = match node.on_ready() {
                Ok(messages) => messages,
                Err(e) => panic!("node {} stopped: {e}", node.id()),
            };
            for m in messages {
                if let Some(peer) = peers.get(&m.to) {
                    let _ = peer.send(Input::Message(m));
                }
            }
            for c in node.take_completions() {
                if let Some(reply) = waiting.remove(&c.id) {
                    let _ = reply.send(c.result.map(drop).map_err(|e| e.to_string()));
                }
            }
        }
    }
}

fn submit(
    node: &mut EnvelopeNode<MemStore, Count>,
    prepared: PreparedProposal,
    reply: Reply,
    waiting: &mut HashMap<ProposalId, Reply>,
    retry: &mut Vec<(PreparedProposal, Reply)>,
) {
    match node.submit(&prepared) {
        Ok(ticket) => drop(waiting.insert(ticket.id, reply)),
        Err(ProposeError::ControlPending) => retry.push((prepared, reply)),
        Err(e) => drop(reply.send(Err(e.to_string()))),
    }
}

// ---- one pump thread for the whole cluster -------------------------------------------------

type Request = (Vec<u8>, Reply);

struct Pumped {
    queue: Sender<Request>,
}

impl BenchCluster for Pumped {
    fn propose(&self, payload: Vec<u8>) -> Result<(), String> {
        let (tx, rx) = mpsc::sync_channel(1);
        self.queue.send((payload, tx)).map_err(|e| e.to_string())?;
        rx.recv().map_err(|e| e.to_string())?
    }
}

fn start_pumped(sealed: bool) -> Pumped {
    let (queue, requests) = mpsc::channel::<Request>();
    let (ready_tx, ready_rx) = mpsc::channel();
    thread::spawn(move || pump(sealed, requests, ready_tx));
    ready_rx.recv().unwrap();
    Pumped { queue }
}

fn fixed(sealed: bool) -> Cluster<Count> {
    let key = *SecretKey::generate().unwrap().expose_secret();
    let cutovers: Vec<Arc<Cutover>> = (0..3).map(|_| Arc::new(Cutover::inert())).collect();
    let ciphers: Vec<Arc<EnvelopeCipher>> = (0..3)
        .map(|_| {
            // One keyring per node, as separate processes would have.
            let ring =
                Keyring::with_active_key(KeyId(1), Algorithm::Aes256Gcm, SecretKey::from_bytes(key)).unwrap();
            Arc::new(EnvelopeCipher::new(ClusterId::new("bench").unwrap(), Arc::new(ring)))
        })
        .collect();
    let layers = (0..3)
        .map(|i| {
            let mut gate = ApplyGate::new(cutovers[i].clone());
            if sealed {
                gate = gate.with_unwrapper(ciphers[i].clone());
            }
            Arc::new(EnvelopeLayer::new(gate))
        })
        .collect();
    let mut cluster = Cluster::new(layers, |_| Count::default()).unwrap();
    if sealed {
        let wrapper = |id: u64| -> Arc<dyn PayloadWrapper> { ciphers[id as usize - 1].clone() };
        cluster.switch_on(wrapper, |id, c| cutovers[id as usize - 1].set(Some(c))).unwrap();
    }
    cluster
}

fn pump(sealed: bool, requests: Receiver<Request>, ready: Sender<()>) {
    let mut cluster = build(sealed);
    ready.send(()).unwrap();

    let mut pending: HashMap<ProposalId, Reply> = HashMap::new();
    loop {
        let mut batch = Vec::new();
        if pending.is_empty() {
            match requests.recv() {
                Ok(r) => batch.push(r),
                Err(_) => return, // the bench is done
            }
        }
        batch.extend(requests.try_iter());
        let leader = cluster.leader().unwrap();
        for (payload, reply) in batch {
            match cluster.propose_async(leader, payload) {
                Ok(id) => {
                    pending.insert(id, reply);
                }
                Err(e) => {
                    let _ = reply.send(Err(e.to_string()));
                }
            }
        }
        cluster.settle();
        let before = pending.len();
        pending.retain(|id, reply| match cluster.outcome(*id) {
            Some(outcome) => {
                let _ = reply.send(outcome.map(drop).map_err(|e| e.to_string()));
                false
            }
            None => true,
        });
        if pending.len() == before && !pending.is_empty() {
            cluster.tick(1);
        }
    }
}

fn main() {
    match std::env::var("BENCH_SHAPE").as_deref() {
        Ok("pump") => raft_envelope_bench_support::run("raft-rs-pump", start_pumped),
        Ok("threads") | Err(_) => raft_envelope_bench_support::run("raft-rs", start_threaded),
        Ok(other) => panic!("BENCH_SHAPE={other}: expected threads or pump"),
    }
}
