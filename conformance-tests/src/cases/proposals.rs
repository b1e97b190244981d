//! R4 Proposals: only envelopes above the cutover, refusals never appended, no self-inflicted
//! halts while switching on, and responses unchanged by the layer.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::thread;
use std::time::{Duration, Instant};

use raft_envelope_core::{EntryKind, SealError};

use super::support::{contains, payload, require, Env, PRIMARY};
use crate::harness::{Cluster, ClusterBuilder, ProposeError, RecordingStateMachine, Response};
use crate::Outcome;

/// R4: above the cutover no replica's stored log holds a proposed plaintext marker.
pub fn no_plaintext_in_stored_log<B: ClusterBuilder>(builder: &B) -> Outcome {
    require!(builder.capabilities(), raw_log);
    let env = Env::start(builder);
    let cutover = env.switch_on();
    let markers: Vec<_> = (0..5).map(|k| payload(&format!("MARKER-{k}"))).collect();
    env.propose_all(&markers);
    let last = env.last_index();
    tracing::info!("--- scan every replica's stored entries {}..={last}", cutover + 1);
    for node in &env.nodes {
        let mut envelopes = 0;
        for index in cutover + 1..=last {
            let Some(entry) = env.cluster.read_entry(*node, index).expect("read_entry") else { continue };
            assert_ne!(entry.kind, EntryKind::Cleartext, "node {node}: cleartext stored above the cutover");
            envelopes += usize::from(entry.kind == EntryKind::Envelope);
            for m in &markers {
                assert!(!contains(&entry.bytes, m), "node {node}: plaintext found in stored entry {index}");
            }
        }
        assert!(envelopes >= markers.len(), "node {node}: expected the sealed proposals in its log");
        let got: Vec<_> = env.payloads(*node).into_iter().map(|p| p.bytes).collect();
        assert_eq!(got, markers, "node {node}: the state machine must still receive the plaintext");
    }
    Outcome::Passed
}

/// R4: a proposal whose sealing fails is refused with a retryable error and never appended; the
/// same proposal succeeds once the cause is fixed.
pub fn seal_failure_refused_not_appended<B: ClusterBuilder>(builder: &B) -> Outcome {
    let env = Env::start(builder);
    env.switch_on();
    env.propose_all(&[payload("sealed")]);
    let leader = env.leader();
    let ring = env.cipher_of(leader).keyring().clone();
    tracing::info!("--- retire the leader's only active key: nothing can seal");
    ring.retire(PRIMARY).expect("retire");
    let last = env.last_index();
    let before: Vec<_> = env.nodes.iter().map(|n| env.view(*n)).collect();
    let p = payload("refused");
    match env.cluster.propose(p.clone()) {
        Err(ProposeError::Refused(SealError::NoActiveKey)) => {}
        other => panic!("expected ProposeError::Refused(NoActiveKey), got {other:?}"),
    }
    assert_eq!(env.last_index(), last, "a refused proposal must not be appended");
    let after: Vec<_> = env.nodes.iter().map(|n| env.view(*n)).collect();
    assert_eq!(after, before, "a refused proposal must change nothing");
    if env.caps.raw_log {
        for node in &env.nodes {
            for index in 0..=last {
                if let Some(e) = env.cluster.read_entry(*node, index).expect("read_entry") {
                    assert!(!contains(&e.bytes, &p), "node {node}: the refused payload reached the log");
                }
            }
        }
    }
    tracing::info!("--- promote the key again: the same proposal now succeeds (retryable)");
    ring.promote(PRIMARY).expect("promote");
    let r = env.propose(&p);
    env.wait_all(r.index);
    for node in &env.nodes {
        assert_eq!(env.payloads(*node).pop().map(|x| x.bytes), Some(p.clone()), "node {node}");
    }
    Outcome::Passed
}

/// What the clients of a load run saw.
#[derive(Default)]
struct Load {
    ok: Vec<(Vec<u8>, Response)>,
    refused: usize,
    failed: usize,
}

/// Runs `clients` threads proposing `per_client` payloads each, calling `switch(done_third)` on
/// the case thread after one and two thirds of the proposals were made.
fn run_load<C: Cluster>(cluster: &C, clients: usize, per_client: usize, switch: impl Fn(usize)) -> Load {
    let load = Mutex::new(Load::default());
    let done = AtomicUsize::new(0);
    let total = clients * per_client;
    thread::scope(|s| {
        for c in 0..clients {
            let (load, done) = (&load, &done);
            s.spawn(move || {
                for k in 0..per_client {
                    let p = payload(&format!("load-{c}-{k}"));
                    let result = cluster.propose(p.clone());
                    let mut load = load.lock().expect("load");
                    match result {
                        Ok(r) => load.ok.push((p, r)),
                        Err(ProposeError::Refused(_)) => load.refused += 1,
                        Err(_) => load.failed += 1,
                    }
                    drop(load);
                    done.fetch_add(1, Ordering::SeqCst);
                }
            });
        }
        let deadline = Instant::now() + Duration::from_secs(60);
        for third in 1..=2 {
            while done.load(Ordering::SeqCst) < total * third / 3 && Instant::now() < deadline {
                thread::sleep(Duration::from_millis(1));
            }
            switch(third);
        }
    });
    load.into_inner().expect("load")
}

/// After a load run: no replica halted, all converged, every acknowledged proposal applied
/// exactly once at its index, and nothing cleartext above the cutover.
fn check_after_load<B: ClusterBuilder>(env: &Env<B>, load: &Load, cutover: u64) {
    tracing::info!(
        ok = load.ok.len(),
        refused = load.refused,
        failed = load.failed,
        "--- load done: check no halt and convergence"
    );
    assert!(!load.ok.is_empty(), "no proposal succeeded");
    let last = env.last_index();
    for node in &env.nodes {
        assert!(env.halted(*node).is_none(), "node {node} halted on the cluster's own proposals");
    }
    env.wait_all(last);
    let leader = env.payloads(env.leader());
    let by_index: BTreeMap<u64, &Vec<u8>> = leader.iter().map(|p| (p.index, &p.bytes)).collect();
    for (p, r) in &load.ok {
        assert_eq!(by_index.get(&r.index), Some(&p), "an acknowledged proposal must be applied at its index");
        assert_eq!(leader.iter().filter(|x| &x.bytes == p).count(), 1, "applied exactly once");
    }
    for node in &env.nodes {
        assert_eq!(env.payloads(*node), leader, "node {node} must converge");
        if env.caps.raw_log {
            for index in cutover + 1..=last {
                if let Some(e) = env.cluster.read_entry(*node, index).expect("read_entry") {
                    assert_ne!(e.kind, EntryKind::Cleartext, "node {node}: cleartext landed at {index} > C");
                }
            }
        }
    }
}

/// R4: switching encryption on while clients propose concurrently never lets a cleartext
/// proposal land above the cutover: no replica halts.
pub fn cutover_under_concurrent_load_never_halts<B: ClusterBuilder>(builder: &B) -> Outcome {
    let env = Env::start(builder);
    let cutover = Mutex::new(None);
    let load = run_load(&env.cluster, 4, 24, |third| {
        if third == 1 {
            *cutover.lock().expect("cutover") = Some(env.switch_on());
        }
    });
    let cutover = cutover.into_inner().expect("cutover").expect("the cutover was set");
    check_after_load(&env, &load, cutover);
    Outcome::Passed
}

/// R4: a leader change while encryption is switched on under load never halts a replica.
pub fn leader_change_during_cutover_never_halts<B: ClusterBuilder>(builder: &B) -> Outcome {
    require!(builder.capabilities(), leader_change);
    let env = Env::start(builder);
    let cutover = Mutex::new(None);
    let load = run_load(&env.cluster, 4, 24, |third| {
        if third == 1 {
            env.start_sealing();
            let leader = env.cluster.change_leader().expect("change_leader");
            tracing::info!("--- leader changed to {leader} while switching on");
            let c = env.cluster.safe_cutover().expect("safe_cutover");
            env.set_cutover(Some(c));
            *cutover.lock().expect("cutover") = Some(c);
        } else {
            let leader = env.cluster.change_leader().expect("change_leader");
            tracing::info!("--- leader changed to {leader} under load");
        }
    });
    let cutover = cutover.into_inner().expect("cutover").expect("the cutover was set");
    check_after_load(&env, &load, cutover);
    Outcome::Passed
}

/// R4: each client gets the same response with and without the layer, and concurrent clients
/// each get the response to their own proposal.
pub fn responses_identical_with_and_without_layer<B: ClusterBuilder>(builder: &B) -> Outcome {
    let payloads: Vec<_> = (0..6).map(|k| payload(&format!("resp-{k}"))).collect();
    tracing::info!("--- without the layer");
    let plain = {
        let env = Env::start(builder);
        env.propose_all(&payloads)
    };
    tracing::info!("--- with the layer sealing above a cutover");
    let env = Env::start(builder);
    env.switch_on();
    let sealed = env.propose_all(&payloads);
    for (k, (a, b)) in plain.iter().zip(&sealed).enumerate() {
        assert_eq!(a.data, b.data, "proposal {k}: the response must not depend on the layer");
        assert_eq!(a.index - plain[0].index, b.index - sealed[0].index, "proposal {k}: relative index");
    }
    tracing::info!("--- concurrent clients each get their own response");
    let load = run_load(&env.cluster, 3, 6, |_| {});
    assert_eq!(load.ok.len(), 18, "every concurrent proposal must succeed");
    for (p, r) in &load.ok {
        assert_eq!(
            r.data[8..],
            RecordingStateMachine::digest(p).to_be_bytes(),
            "a client received another proposal's response"
        );
    }
    Outcome::Passed
}
