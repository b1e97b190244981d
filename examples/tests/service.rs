//! The KV service as it is deployed: three `raft-envelope-kv node` processes on loopback, each
//! with its own data directory, on each engine. Nodes are killed with SIGKILL, restarted from
//! their disks, their stored logs scanned and altered on disk. Every test is bounded in time and
//! kills its processes when it ends, also on failure. The tests of one engine run one at a time
//! (a lock), so that a 2-core machine runs one cluster at once.
#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

use raft_envelope_examples::local_cluster::LocalCluster;
use raft_envelope_examples::{stored_log, EngineKind};

const WAIT: Duration = Duration::from_secs(60);

static ONE_CLUSTER_AT_A_TIME: Mutex<()> = Mutex::new(());

struct Running {
    cluster: Arc<LocalCluster>,
    _one: MutexGuard<'static, ()>,
}

impl std::ops::Deref for Running {
    type Target = LocalCluster;
    fn deref(&self) -> &LocalCluster {
        &self.cluster
    }
}

fn start(engine: EngineKind, name: &str) -> Running {
    let one = ONE_CLUSTER_AT_A_TIME.lock().unwrap_or_else(PoisonError::into_inner);
    let dir: PathBuf = std::env::temp_dir().join(format!(
        "raft-envelope-kv-{}-{name}-{}",
        engine.name(),
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    let bin = PathBuf::from(env!("CARGO_BIN_EXE_raft-envelope-kv"));
    let cluster = LocalCluster::start(&bin, engine, &dir, 3, false).unwrap();
    cluster.wait_leader(&cluster.ids(), WAIT).unwrap();
    Running { cluster: Arc::new(cluster), _one: one }
}

/// Writers putting distinct keys through every node until stopped; what they saw.
struct Writers {
    stop: Arc<AtomicBool>,
    threads: Vec<thread::JoinHandle<(BTreeMap<String, String>, u64)>>,
    written: Arc<AtomicU64>,
}

impl Writers {
    /// `retry`: a client that tries a write again (another node, a moment later) while the
    /// cluster has no leader, as a real client does across a node's death; without it, every
    /// refusal counts as a failed write.
    fn start(cluster: &Arc<LocalCluster>, n: u64, retry: bool) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let written = Arc::new(AtomicU64::new(0));
        let threads = (0..n)
            .map(|w| {
                let (c, stop, written) = (cluster.clone(), stop.clone(), written.clone());
                thread::spawn(move || {
                    let (mut acked, mut failed) = (BTreeMap::new(), 0u64);
                    let mut i = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        let (key, value) = (format!("w{w}:{i}"), format!("value-{w}-{i}"));
                        let deadline = Instant::now() + Duration::from_secs(30);
                        let mut node = 1 + (w + i) % 3;
                        loop {
                            match c.put(node, &key, &value) {
                                Ok(_) => {
                                    acked.insert(key, value);
                                    written.fetch_add(1, Ordering::Relaxed);
                                    break;
                                }
                                Err(_) if retry && Instant::now() < deadline => {
                                    node = 1 + node % 3;
                                    thread::sleep(Duration::from_millis(50));
                                }
                                Err(e) => {
                                    eprintln!("write {key} failed: {e}");
                                    failed += 1;
                                    break;
                                }
                            }
                        }
                        i += 1;
                    }
                    (acked, failed)
                })
            })
            .collect();
        Self { stop, threads, written }
    }

    /// Waits until `n` more writes were acknowledged; a cluster that stops taking writes fails.
    fn wait_for(&self, n: u64) {
        let deadline = Instant::now() + WAIT;
        let start = self.written.load(Ordering::Relaxed);
        while self.written.load(Ordering::Relaxed) < start + n {
            assert!(Instant::now() < deadline, "{n} writes were not acknowledged within {WAIT:?}");
            thread::sleep(Duration::from_millis(10));
        }
    }

    fn stop(mut self) -> (BTreeMap<String, String>, u64) {
        self.stop.store(true, Ordering::Relaxed);
        let mut all = BTreeMap::new();
        let mut failed = 0;
        for t in std::mem::take(&mut self.threads) {
            let (acked, f) = t.join().unwrap();
            all.extend(acked);
            failed += f;
        }
        (all, failed)
    }
}

/// A test that fails with writers running stops them before the cluster's processes go.
impl Drop for Writers {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in std::mem::take(&mut self.threads) {
            let _ = t.join();
        }
    }
}

fn assert_no_halt(c: &LocalCluster) {
    for id in c.ids() {
        let status = c.status(id).unwrap_or_else(|| panic!("node {id} does not answer"));
        assert!(status["halt"].is_null(), "node {id} halted: {}", status["halt"]);
    }
}

/// Every running node applied the same index and reads back every acknowledged write.
fn assert_converged(c: &LocalCluster, acked: &BTreeMap<String, String>) {
    let target = c.max_applied(&c.ids());
    c.wait_applied(&c.ids(), target, WAIT).unwrap();
    for id in c.ids() {
        for (key, value) in acked {
            assert_eq!(c.get(id, key).unwrap().as_deref(), Some(value.as_str()), "node {id}, {key}");
        }
    }
}

fn writes_under_load_while_encryption_is_enabled_and_a_key_rotated_all_succeed_and_nothing_halts(
    engine: EngineKind,
) {
    let c = start(engine, "load");
    let writers = Writers::start(&c.cluster, 4, false);
    writers.wait_for(50);
    let enabled = c.json(2, "POST", "/admin/enable").unwrap();
    assert!(enabled["cutover"].as_u64().unwrap() > 0);
    writers.wait_for(50);
    c.json(3, "POST", "/admin/rotate").unwrap();
    writers.wait_for(50);
    let (acked, failed) = writers.stop();
    assert_eq!(failed, 0, "every write under load succeeds");
    assert!(acked.len() >= 150);
    assert_no_halt(&c);
    assert_converged(&c, &acked);
}

fn sigkill_of_the_leader_mid_enable_and_of_a_follower_mid_rotation_converges_without_a_halt(
    engine: EngineKind,
) {
    let c = start(engine, "sigkill");
    let writers = Writers::start(&c.cluster, 2, true);
    writers.wait_for(20);

    let leader = c.wait_leader(&c.ids(), WAIT).unwrap();
    let enabling = {
        let c = c.cluster.clone();
        thread::spawn(move || c.json(leader, "POST", "/admin/enable"))
    };
    thread::sleep(Duration::from_millis(15));
    c.kill(leader);
    let _ = enabling.join().unwrap(); // the leader died: any outcome
    let others: Vec<u64> = c.ids().into_iter().filter(|i| *i != leader).collect();
    let new_leader = c.wait_leader(&others, WAIT).unwrap();
    c.spawn(leader, false).unwrap();
    // Resumable: whatever the dead leader got through, enabling again completes it.
    let enabled = c.json(new_leader, "POST", "/admin/enable").unwrap();
    let cutover = enabled["cutover"].as_u64().unwrap();
    writers.wait_for(20);

    let leader = c.wait_leader(&c.ids(), WAIT).unwrap();
    let follower = c.ids().into_iter().find(|i| *i != leader).unwrap();
    let rotating = {
        let c = c.cluster.clone();
        thread::spawn(move || c.json(leader, "POST", "/admin/rotate"))
    };
    thread::sleep(Duration::from_millis(5));
    c.kill(follower);
    rotating.join().unwrap().expect("a rotation needs a majority, not every member");
    writers.wait_for(20);
    c.spawn(follower, false).unwrap();
    writers.wait_for(20);
    let (acked, failed) = writers.stop();
    assert_eq!(failed, 0, "a client that retries loses no write");
    c.wait_leader(&c.ids(), WAIT).unwrap();
    assert_converged(&c, &acked);
    assert_no_halt(&c);
    for id in c.ids() {
        assert_eq!(c.status(id).unwrap()["encryption"]["cutover"].as_u64(), Some(cutover), "node {id}");
    }
}

fn a_full_restart_recovers_the_layer_state_and_every_value_from_disk(engine: EngineKind) {
    let c = start(engine, "restart");
    let mut acked = BTreeMap::new();
    for i in 0..20 {
        c.put(1 + i % 3, &format!("before:{i}"), &format!("clear-{i}")).unwrap();
        acked.insert(format!("before:{i}"), format!("clear-{i}"));
    }
    c.json(1, "POST", "/admin/enable").unwrap();
    for i in 0..20 {
        c.put(1 + i % 3, &format!("sealed:{i}"), &format!("v{i}")).unwrap();
        acked.insert(format!("sealed:{i}"), format!("v{i}"));
    }
    c.json(1, "POST", "/admin/rotate").unwrap();
    // One node keeps a sealed snapshot and a compacted log, the others their whole log.
    c.json(2, "POST", "/admin/compact").unwrap();
    let first = c.status(2).unwrap()["first_index"].as_u64().unwrap();
    assert!(first > 1, "node 2 compacted its log (first index {first})");
    for i in 0..20 {
        c.put(1 + i % 3, &format!("after:{i}"), &format!("w{i}")).unwrap();
        acked.insert(format!("after:{i}"), format!("w{i}"));
    }
    let target = c.max_applied(&c.ids());
    c.wait_applied(&c.ids(), target, WAIT).unwrap();
    let before: Vec<serde_json::Value> =
        c.ids().iter().map(|id| c.status(*id).unwrap()["encryption"].clone()).collect();

    for id in c.ids() {
        c.kill(id);
    }
    for id in c.ids() {
        c.spawn(id, false).unwrap();
    }
    c.wait_leader(&c.ids(), WAIT).unwrap();
    c.wait_applied(&c.ids(), target, WAIT).unwrap();
    assert_no_halt(&c);
    for (id, was) in c.ids().into_iter().zip(before) {
        let now = &c.status(id).unwrap()["encryption"];
        assert_eq!(now["cutover"], was["cutover"], "node {id}: the cutover comes back from disk");
        assert_eq!(now["active_key"], was["active_key"], "node {id}: the active key comes back from disk");
        assert_eq!(now["keys"].as_array().map(Vec::len), was["keys"].as_array().map(Vec::len), "node {id}");
    }
    assert_converged(&c, &acked);
    c.put(3, "after:restart", "ok").unwrap();
}

fn no_plaintext_written_above_the_cutover_reaches_any_data_directory(engine: EngineKind) {
    let c = start(engine, "scan");
    let marker = format!("PLAINTEXT-MARKER-{}-{}", engine.name(), std::process::id());
    for i in 0..10 {
        c.put(1 + i % 3, &format!("clear:{i}"), &format!("BELOW-CUTOVER-{i}")).unwrap();
    }
    c.json(1, "POST", "/admin/enable").unwrap();
    for i in 0..30 {
        c.put(1 + i % 3, &format!("secret:{i}"), &format!("{marker}-{i}")).unwrap();
    }
    c.json(2, "POST", "/admin/rotate").unwrap();
    let target = c.max_applied(&c.ids());
    c.wait_applied(&c.ids(), target, WAIT).unwrap();
    assert_eq!(c.grep_data(marker.as_bytes()), 0, "no byte of plaintext above the cutover in any log");
    assert!(c.grep_data(b"BELOW-CUTOVER-") > 0, "the scan finds cleartext written below the cutover");
    // Then with sealed snapshots and compacted logs on every node.
    for id in c.ids() {
        c.json(id, "POST", "/admin/compact").unwrap();
    }
    for i in 30..40 {
        c.put(1 + i % 3, &format!("secret:{i}"), &format!("{marker}-{i}")).unwrap();
    }
    let target = c.max_applied(&c.ids());
    c.wait_applied(&c.ids(), target, WAIT).unwrap();
    for id in c.ids() {
        c.kill(id); // everything a node wrote is on disk, nothing in flight
    }
    assert_eq!(c.grep_data(marker.as_bytes()), 0, "no byte of plaintext above the cutover on disk");
    assert_eq!(c.grep_logs(marker.as_bytes()), 0, "nor in any node's own log output");
    assert!(c.grep_logs(b"cutover") > 0, "the nodes' log output is where the scan looks");
}

fn a_flipped_byte_in_one_nodes_log_halts_that_node_alone_and_a_replaced_node_converges(engine: EngineKind) {
    let c = start(engine, "tamper");
    let enabled = c.json(1, "POST", "/admin/enable").unwrap();
    let cutover = enabled["cutover"].as_u64().unwrap();
    let mut acked = BTreeMap::new();
    let mut last_put = 0;
    for i in 0..10 {
        last_put = c.put(1 + i % 3, &format!("k{i}"), &format!("v{i}")).unwrap();
        acked.insert(format!("k{i}"), format!("v{i}"));
    }
    assert!(last_put > cutover);
    let leader = c.wait_leader(&c.ids(), WAIT).unwrap();
    let victim = c.ids().into_iter().find(|i| *i != leader).unwrap();
    let target = c.max_applied(&c.ids());
    c.wait_applied(&[victim], target, WAIT).unwrap();
    c.kill(victim);
    // The sealed write itself (not a control entry or a checkpoint next to it).
    let index = last_put;
    stored_log::tamper(engine, &c.data_dir(victim), index).unwrap();
    c.spawn(victim, false).unwrap();

    let halt = c.wait_halted(victim, WAIT).unwrap();
    assert_eq!(halt["index"].as_u64(), Some(index));
    assert_eq!(halt["reason"], "authentication_failed");
    let (_, metrics) = c.call(victim, "GET", "/metrics", &[]).unwrap();
    let metrics = String::from_utf8(metrics).unwrap();
    assert!(
        metrics.lines().any(|l| l.starts_with("raft_envelope_halts_total")
            && l.contains("reason=\"authentication_failed\"")
            && l.ends_with(" 1")),
        "{metrics}"
    );
    let others: Vec<u64> = c.ids().into_iter().filter(|i| *i != victim).collect();
    let leader = c.wait_leader(&others, WAIT).unwrap();
    for i in 10..15 {
        c.put(leader, &format!("k{i}"), &format!("v{i}")).unwrap();
        acked.insert(format!("k{i}"), format!("v{i}"));
    }
    let still = c.status(victim).unwrap();
    assert!(still["applied"].as_u64().unwrap() < index, "the halted node applied nothing past the entry");

    c.replace(victim, WAIT).unwrap();
    assert_no_halt(&c);
    assert_converged(&c, &acked);
}

macro_rules! on_both_engines {
    ($($name:ident),* $(,)?) => {
        mod openraft {
            $(#[test] fn $name() { super::$name(super::EngineKind::Openraft) })*
        }
        mod raftrs {
            $(#[test] fn $name() { super::$name(super::EngineKind::Raftrs) })*
        }
    };
}

on_both_engines!(
    writes_under_load_while_encryption_is_enabled_and_a_key_rotated_all_succeed_and_nothing_halts,
    sigkill_of_the_leader_mid_enable_and_of_a_follower_mid_rotation_converges_without_a_halt,
    a_full_restart_recovers_the_layer_state_and_every_value_from_disk,
    no_plaintext_written_above_the_cutover_reaches_any_data_directory,
    a_flipped_byte_in_one_nodes_log_halts_that_node_alone_and_a_replaced_node_converges,
);
