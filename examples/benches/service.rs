//! The KV service end to end, as deployed: three `raft-envelope-kv node` processes per cluster on
//! loopback, redb on disk with an fsync per commit, HTTP between nodes and from the clients. One
//! cluster never switched on (**off**), one switched on through the log (**on**); the same writes
//! interleaved round by round by `bench-support`, on each engine.
//!
//! Every write is a client's `PUT /kv/KEY` to the leader, answered once applied there; each
//! writer thread keeps its own kept-alive connection.
//!
//! Run: `cargo bench -p raft-envelope-examples --bench service` (results: `BENCHMARKS.md` §4.2).
//! `BENCH_ENGINE=openraft|raftrs` runs one engine; `BENCH_ROUNDS`, `BENCH_PROPOSALS` as for the
//! other cluster benches.
#![allow(missing_docs, clippy::unwrap_used)] // a bench binary: a panic is the report

use std::cell::RefCell;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use raft_envelope_bench_support::{compare, markdown, save, BenchCluster, Workload};
use raft_envelope_examples::http::Client;
use raft_envelope_examples::local_cluster::LocalCluster;
use raft_envelope_examples::EngineKind;

struct Service {
    cluster: LocalCluster,
    leader: std::net::SocketAddr,
    next: AtomicU64,
}

thread_local! {
    static CONNECTION: RefCell<Option<Client>> = const { RefCell::new(None) };
}

impl BenchCluster for Service {
    fn propose(&self, payload: Vec<u8>) -> Result<(), String> {
        let key = self.next.fetch_add(1, Ordering::Relaxed);
        let value: String = payload.iter().map(|b| char::from(b'a' + b % 26)).collect();
        CONNECTION.with(|c| {
            let mut c = c.borrow_mut();
            let client = c.get_or_insert_with(|| Client::new(self.leader, Duration::from_secs(30)));
            if client.addr() != self.leader {
                *client = Client::new(self.leader, Duration::from_secs(30));
            }
            match client.call("PUT", &format!("/kv/k{key}"), value.as_bytes()) {
                Ok((200, _)) => Ok(()),
                Ok((status, body)) => Err(format!("{status}: {}", String::from_utf8_lossy(&body))),
                Err(e) => Err(e.to_string()),
            }
        })
    }
}

fn start(engine: EngineKind, sealed: bool) -> Service {
    let side = if sealed { "on" } else { "off" };
    let dir: PathBuf = std::env::temp_dir().join(format!(
        "raft-envelope-bench-{}-{side}-{}",
        engine.name(),
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    let bin = PathBuf::from(env!("CARGO_BIN_EXE_raft-envelope-kv"));
    let cluster = LocalCluster::start(&bin, engine, &dir, 3, false).unwrap();
    let leader = cluster.wait_leader(&cluster.ids(), Duration::from_secs(30)).unwrap();
    if sealed {
        cluster.json(leader, "POST", "/admin/enable").unwrap();
    }
    let leader = cluster.wait_leader(&cluster.ids(), Duration::from_secs(30)).unwrap();
    Service { leader: cluster.addr(leader), cluster, next: AtomicU64::new(0) }
}

fn env_usize(name: &str) -> Option<usize> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let timed = args.iter().any(|a| a == "--bench") && !args.iter().any(|a| a == "--test");
    let only = std::env::var("BENCH_ENGINE").ok();
    for engine in [EngineKind::Openraft, EngineKind::Raftrs] {
        if only.as_deref().is_some_and(|o| o != engine.name()) {
            continue;
        }
        let name = format!("kv-{}", engine.name());
        let (off, on) = (start(engine, false), start(engine, true));
        if !timed {
            for side in [&off, &on] {
                side.propose(b"smoke".to_vec()).unwrap();
            }
            println!("{name} service bench: setup ok");
            continue;
        }
        let rounds = env_usize("BENCH_ROUNDS").unwrap_or(6);
        let proposals = env_usize("BENCH_PROPOSALS").unwrap_or(512);
        let mut results = Vec::new();
        for writers in [1, 8, 32] {
            let proposals_per_round = if writers == 1 { proposals / 4 } else { proposals };
            let workload = Workload { writers, payload_len: 256, proposals_per_round, rounds };
            let c = compare(&off, &on, workload);
            eprintln!(
                "{name} writers={writers}: off {:.0}/s on {:.0}/s ratio {:.3}",
                c.off.median_throughput(),
                c.on.median_throughput(),
                c.ratio()
            );
            results.push(c);
        }
        println!("{}", markdown(&name, &results));
        if let Err(e) = save(&name, &results) {
            eprintln!("could not save the results: {e}");
        }
        // Nothing halted on either side.
        for side in [&off, &on] {
            for id in side.cluster.ids() {
                let status = side.cluster.status(id).unwrap();
                assert!(status["halt"].is_null(), "{name} node {id} halted: {}", status["halt"]);
            }
        }
    }
}
