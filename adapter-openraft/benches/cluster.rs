//! End to end on openraft: a 3-node in-process cluster with the layer off and one with it on
//! (AES-256-GCM), the same write workload interleaved round by round.
//!
//! Run: `cargo bench -p raft-envelope-openraft --bench cluster` (results: `BENCHMARKS.md`).
#![allow(missing_docs, clippy::unwrap_used)] // a bench binary: a panic is the report

use std::sync::Arc;
use std::time::Duration;

use raft_envelope_bench_support::{compare, markdown, save, standard_grid, BenchCluster};
use raft_envelope_core::{
    Algorithm, ApplyGate, ClusterId, Cutover, EnvelopeCipher, EnvelopeLayer, KeyId, Keyring, SecretKey,
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
    // Only `cargo bench` passes `--bench`; under `cargo test --all-targets` (and `-- --test`)
    // build and smoke-run the setup only.
    if !std::env::args().any(|a| a == "--bench") || std::env::args().any(|a| a == "--test") {
        let (off, on) = (start(false), start(true));
        off.propose(b"k=v".to_vec()).unwrap();
        on.propose(b"k=v".to_vec()).unwrap();
        println!("cluster: setup ok");
        return;
    }
    let off = start(false);
    let on = start(true);
    let mut results = Vec::new();
    for workload in standard_grid() {
        let c = compare(&off, &on, workload);
        eprintln!(
            "openraft writers={} payload={} B: off {:.0}/s on {:.0}/s ratio {:.3}",
            workload.writers,
            workload.payload_len,
            c.off.median_throughput(),
            c.on.median_throughput(),
            c.ratio()
        );
        results.push(c);
    }
    println!("{}", markdown("openraft", &results));
    println!("saved {}", save("openraft", &results).unwrap().display());
}
