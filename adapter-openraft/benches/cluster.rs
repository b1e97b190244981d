//! End to end on openraft: a 3-node in-process cluster with the layer off and one with it on
//! (AES-256-GCM), the same write workload interleaved round by round.
//!
//! Nodes are what a production node runs: each built from a `LayerState` (exactly-once
//! envelopes, the running digest, integrity checkpoints at the default policy), the on side
//! switched on through the log (`enable_encryption`). `BENCH_FIXED_LAYER=1` measures fixed
//! layers instead (a cipher and a cutover, no layer state: the rows before issue 12).
//!
//! Run: `cargo bench -p raft-envelope-openraft --bench cluster` (results: `BENCHMARKS.md`).
#![allow(missing_docs, clippy::unwrap_used)] // a bench binary: a panic is the report

use std::sync::Arc;
use std::time::Duration;

use raft_envelope_bench_support::BenchCluster;
use raft_envelope_core::provider::{FileKekProvider, KekId, KeyProvider};
use raft_envelope_core::{
    Algorithm, ApplyGate, ClusterId, Cutover, EnvelopeCipher, EnvelopeLayer, KeyId, Keyring, LayerState,
    SecretKey,
};
use raft_envelope_openraft::testing::{Application, TestCluster};

/// Counts what it applies; keeps no payload, so memory stays flat over a long run.
#[derive(Default)]
struct Count(u64);

impl Application for Count {
    fn apply(&mut self, _index: u64, payload: &[u8]) -> Vec<u8> {
        self.0 += payload.len() as u64;
        Vec::new()
    }

    fn snapshot(&self) -> Vec<u8> {
        self.0.to_be_bytes().to_vec()
    }

    fn restore(&mut self, bytes: &[u8]) -> Result<(), String> {
        self.0 = u64::from_be_bytes(bytes.try_into().map_err(|_| "not a count snapshot")?);
        Ok(())
    }
}

struct Cluster {
    runtime: tokio::runtime::Runtime,
    cluster: TestCluster<Count>,
}

impl BenchCluster for Cluster {
    fn propose(&self, payload: Vec<u8>) -> Result<(), String> {
        self.runtime.handle().block_on(self.cluster.write(payload)).map(drop).map_err(|e| e.to_string())
    }
}

fn start(sealed: bool) -> Cluster {
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    if std::env::var_os("BENCH_FIXED_LAYER").is_some() {
        return fixed(runtime, sealed);
    }
    let kek_id = KekId::new("bench-kek").unwrap();
    let kek = *SecretKey::generate().unwrap().expose_secret();
    let provider = || -> Arc<dyn KeyProvider> {
        Arc::new(FileKekProvider::from_key(kek_id.clone(), SecretKey::from_bytes(kek)).unwrap())
    };
    let nodes = (0..3)
        .map(|_| {
            (Arc::new(LayerState::new(ClusterId::new("bench").unwrap())), Some(provider()), Count::default())
        })
        .collect();
    let cluster = runtime.block_on(TestCluster::start_with_layer_states(nodes)).unwrap();
    if sealed {
        runtime
            .block_on(cluster.enable_encryption(provider().as_ref(), &kek_id, Algorithm::Aes256Gcm))
            .unwrap();
    }
    Cluster { runtime, cluster }
}

fn fixed(runtime: tokio::runtime::Runtime, sealed: bool) -> Cluster {
    let key = *SecretKey::generate().unwrap().expose_secret();
    let cutovers: Vec<Arc<Cutover>> = (0..3).map(|_| Arc::new(Cutover::inert())).collect();
    let mut cipher = None;
    let nodes = cutovers
        .iter()
        .map(|cutover| {
            let mut gate = ApplyGate::new(cutover.clone());
            if sealed {
                // One keyring per node, as separate processes would have.
                let ring =
                    Keyring::with_active_key(KeyId(1), Algorithm::Aes256Gcm, SecretKey::from_bytes(key));
                let c =
                    Arc::new(EnvelopeCipher::new(ClusterId::new("bench").unwrap(), Arc::new(ring.unwrap())));
                gate = gate.with_unwrapper(c.clone());
                cipher = Some(c);
            }
            (Arc::new(EnvelopeLayer::new(gate)), Count::default())
        })
        .collect();
    let cluster = runtime.block_on(TestCluster::start(nodes)).unwrap();
    if let Some(cipher) = cipher {
        runtime.block_on(cluster.switch_on(cipher, &cutovers, Duration::from_secs(10))).unwrap();
    }
    Cluster { runtime, cluster }
}

fn main() {
    raft_envelope_bench_support::run("openraft", start);
}
