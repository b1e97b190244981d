//! Helpers shared by the raft-rs integration tests.
#![allow(dead_code, clippy::unwrap_used)] // each test binary uses a subset; a panic is the report

use std::sync::Mutex;
use std::thread;
use std::time::{Duration, Instant};

use raft_envelope_core::EntryKind;
use raft_envelope_raftrs::framing::classify;
use raft_envelope_raftrs::testing::{Cluster, KvStore};
use raft_envelope_raftrs::{ProposeError, StateMachine};

/// Where a writer proposes: the leader while the layer is inert (a cleartext proposal forwarded
/// by a follower carries no identity and could only time out), then `spread`'s node once the
/// layer seals (followers forward envelopes).
pub(crate) fn leader_until_sealing<SM: StateMachine>(c: &Cluster<SM>, spread: u64) -> u64 {
    let sealing = c.node(1).unwrap().layer().is_sealing();
    match c.leader() {
        Some(l) if !sealing => l,
        _ => 1 + spread % 3,
    }
}

/// Proposes `payload` through `via(cluster)` until it is applied, pumping the shared cluster one
/// tick at a time between looks (so other writers and the test thread get the lock), and returns
/// the index it was applied at. Refusals and failed outcomes are retried (`on_retry` is called
/// for each failed outcome) for at most 20 s — bounded by time, not attempts, because refusals
/// come back at once and may repeat. A halt panics with `what`.
pub(crate) fn write_until_applied<SM: StateMachine>(
    cluster: &Mutex<Cluster<SM>>,
    payload: &[u8],
    via: impl Fn(&Cluster<SM>) -> u64,
    mut on_retry: impl FnMut(),
    what: &str,
) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        assert!(Instant::now() < deadline, "{what}: gave up after 20 s");
        let id = {
            let mut c = cluster.lock().unwrap();
            let node = via(&c);
            c.propose_async(node, payload.to_vec())
        };
        let Ok(id) = id else {
            thread::sleep(Duration::from_millis(1));
            continue;
        };
        let outcome = loop {
            let mut c = cluster.lock().unwrap();
            c.settle();
            if let Some(o) = c.outcome(id) {
                break o;
            }
            c.tick(1);
            drop(c);
            thread::yield_now();
        };
        match outcome {
            Ok(applied) => return applied.index,
            Err(e @ ProposeError::Halted { .. }) => panic!("{what}: a writer saw a halt: {e}"),
            Err(_) => on_retry(),
        }
    }
}

/// Waits until every replica caught up with the leader, then checks that none halted, that each
/// applied every acknowledged `(payload, index)` exactly once, at that index, and, with a
/// cutover, that none stores cleartext above it. `what` names the run in failures.
pub(crate) fn assert_converged(
    c: &mut Cluster<KvStore>,
    acked: &[(Vec<u8>, u64)],
    cutover: Option<u64>,
    what: &str,
) {
    let leader = c.wait_leader().unwrap();
    c.wait_converged(leader).unwrap();
    for id in c.ids() {
        assert!(c.halted(id).unwrap().is_none(), "{what}: node {id} halted");
        let payloads = c.state_machine(id).unwrap().payloads();
        for (p, index) in acked {
            let at: Vec<_> = payloads.iter().filter(|(_, b)| b == p).map(|(i, _)| *i).collect();
            assert_eq!(at, vec![*index], "{what}: node {id}: applied exactly once at its index");
        }
        let Some(cutover) = cutover else { continue };
        for i in cutover + 1..=c.stored_last_index(id).unwrap() {
            let e = c.read_entry(id, i).unwrap().unwrap();
            assert_ne!(classify(&e), EntryKind::Cleartext, "{what}: node {id}: cleartext at {i} > C");
        }
    }
}
