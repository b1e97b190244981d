//! End to end on raft-rs: a 3-node in-process cluster with the layer off and one with it on
//! (AES-256-GCM), the same write workload interleaved round by round.
//!
//! Each cluster is driven by one pump thread (the usual raft-rs event loop shape): it takes every
//! proposal waiting in its queue, proposes them on the leader, delivers messages and handles
//! Readies until the cluster is quiet, then answers the writers whose proposals were applied.
//!
//! Nodes are what a production node runs: each built from a `LayerState` (exactly-once
//! envelopes, the running digest, integrity checkpoints at the default policy), the on side
//! switched on through the log (install, promote, enforce). `BENCH_FIXED_LAYER=1` measures
//! fixed layers instead (a cipher and a cutover, no layer state: the rows before issue 12).
//!
//! Run: `cargo bench -p raft-envelope-raftrs --bench cluster` (results: `BENCHMARKS.md`).
#![allow(missing_docs, clippy::unwrap_used)] // a bench binary: a panic is the report

use std::collections::HashMap;
use std::sync::mpsc::{self, Receiver, Sender, SyncSender};
use std::sync::Arc;
use std::thread;

use raft::eraftpb::ConfState;
use raft_envelope_bench_support::BenchCluster;
use raft_envelope_core::provider::{FileKekProvider, KekId, KeyProvider};
use raft_envelope_core::{
    Algorithm, ApplyGate, ClusterId, Cutover, EnvelopeCipher, EnvelopeLayer, KeyId, Keyring, LayerState,
    PayloadWrapper, ProposalId, SecretKey,
};
use raft_envelope_raftrs::testing::{Cluster, ClusterConfig};
use raft_envelope_raftrs::StateMachine;

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

type Request = (Vec<u8>, SyncSender<Result<(), String>>);

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

fn start(sealed: bool) -> Pumped {
    let (queue, requests) = mpsc::channel::<Request>();
    let (ready_tx, ready_rx) = mpsc::channel();
    thread::spawn(move || pump(sealed, requests, ready_tx));
    ready_rx.recv().unwrap();
    Pumped { queue }
}

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
    let mut cluster =
        if std::env::var_os("BENCH_FIXED_LAYER").is_some() { fixed(sealed) } else { managed(sealed) };
    ready.send(()).unwrap();

    let mut pending: HashMap<ProposalId, SyncSender<Result<(), String>>> = HashMap::new();
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
    raft_envelope_bench_support::run("raft-rs", start);
}
