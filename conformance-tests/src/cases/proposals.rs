//! R4 Proposals: only envelopes above the cutover, refusals never appended, no self-inflicted
//! halts while switching on (proposals through the leader or forwarded by followers), and
//! responses unchanged by the layer.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::thread;
use std::time::{Duration, Instant};

use raft_envelope_core::{EntryKind, SealError};

use super::support::{contains, payload, require, Env, PRIMARY};
use crate::harness::{Cluster, ClusterBuilder, NodeId, ProposeError, RecordingStateMachine, Response};
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
/// the case thread after one and two thirds of the proposals were made. The `k`-th proposal of
/// client `c` goes through replica `route(c, k)` ([`Cluster::propose_via`]), or through the
/// leader ([`Cluster::propose`]) when `route` names none.
fn run_load<C: Cluster>(
    cluster: &C,
    clients: usize,
    per_client: usize,
    route: impl Fn(usize, usize) -> Option<NodeId> + Sync,
    switch: impl Fn(usize),
) -> Load {
    let load = Mutex::new(Load::default());
    let done = AtomicUsize::new(0);
    let total = clients * per_client;
    thread::scope(|s| {
        for c in 0..clients {
            let (load, done, route) = (&load, &done, &route);
            s.spawn(move || {
                for k in 0..per_client {
                    let p = payload(&format!("load-{c}-{k}"));
                    let result = match route(c, k) {
                        Some(node) => cluster.propose_via(node, p.clone()),
                        None => cluster.propose(p.clone()),
                    };
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
    let load = run_load(
        &env.cluster,
        4,
        24,
        |_, _| None,
        |third| {
            if third == 1 {
                *cutover.lock().expect("cutover") = Some(env.switch_on());
            }
        },
    );
    let cutover = cutover.into_inner().expect("cutover").expect("the cutover was set");
    check_after_load(&env, &load, cutover);
    Outcome::Passed
}

/// R4: a leader change while encryption is switched on under load never halts a replica.
pub fn leader_change_during_cutover_never_halts<B: ClusterBuilder>(builder: &B) -> Outcome {
    require!(builder.capabilities(), leader_change);
    let env = Env::start(builder);
    let cutover = Mutex::new(None);
    let load = run_load(
        &env.cluster,
        4,
        24,
        |_, _| None,
        |third| {
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
        },
    );
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
    let load = run_load(&env.cluster, 3, 6, |_, _| None, |_| {});
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

/// After proposals through followers around a switch-on at `cutover`: no replica halted, every
/// replica converged, no payload applied twice, every payload applied above the cutover stored
/// there as an envelope without its plaintext (with `raw_log`), and each payload of
/// `at_or_below` applied, if at all, at or below the cutover. Then a proposal through each
/// follower succeeds, sealed, above the cutover, with its own response.
fn check_forwarded<B: ClusterBuilder>(env: &Env<B>, cutover: u64, at_or_below: &[Vec<u8>]) {
    let last = env.last_index();
    env.wait_all(last);
    let on_leader = env.payloads(env.leader());
    for node in &env.nodes {
        assert!(env.halted(*node).is_none(), "node {node} halted on the cluster's own forwarded proposals");
        let applied = env.payloads(*node);
        assert_eq!(applied, on_leader, "node {node} must converge");
        for (k, p) in applied.iter().enumerate() {
            assert!(
                applied[..k].iter().all(|q| q.bytes != p.bytes),
                "node {node}: a payload was applied twice (again at {})",
                p.index
            );
            if at_or_below.contains(&p.bytes) {
                assert!(
                    p.index <= cutover,
                    "node {node}: a cleartext proposal forwarded before the switch landed at {} > C = {cutover}",
                    p.index
                );
            }
            if p.index > cutover && env.caps.raw_log {
                let stored = env.cluster.read_entry(*node, p.index).expect("read_entry");
                let stored =
                    stored.unwrap_or_else(|| panic!("node {node} applied {} but stores no entry", p.index));
                assert_eq!(
                    stored.kind,
                    EntryKind::Envelope,
                    "node {node}: the payload applied at {} > C = {cutover} was not stored as an envelope",
                    p.index
                );
                assert!(!contains(&stored.bytes, &p.bytes), "node {node}: plaintext stored at {}", p.index);
            }
        }
    }
    let leader = env.leader();
    for follower in env.nodes.iter().filter(|n| **n != leader) {
        let p = payload(&format!("after-switch-via-{follower}"));
        let r = match env.cluster.propose_via(*follower, p.clone()) {
            Ok(r) => r,
            Err(e) => panic!("a sealed proposal through follower {follower} must succeed: {e}"),
        };
        assert!(r.index > cutover, "a proposal made after the switch landed at {} <= C = {cutover}", r.index);
        assert_eq!(
            r.data[8..],
            RecordingStateMachine::digest(&p).to_be_bytes(),
            "the client of follower {follower} received another proposal's response"
        );
        env.wait_all(r.index);
        for node in &env.nodes {
            let at = env.payloads(*node).into_iter().find(|x| x.index == r.index).map(|x| x.bytes);
            assert_eq!(at, Some(p.clone()), "node {node} must apply the forwarded proposal at {}", r.index);
            if env.caps.raw_log {
                let stored =
                    env.cluster.read_entry(*node, r.index).expect("read_entry").expect("stored entry");
                assert_eq!(
                    stored.kind,
                    EntryKind::Envelope,
                    "node {node}: a forwarded proposal stored unsealed"
                );
                assert!(
                    !contains(&stored.bytes, &p),
                    "node {node}: plaintext of a forwarded proposal stored"
                );
            }
        }
    }
}

/// R4, proposals through followers: a follower seals before forwarding, and a correctly
/// configured cluster never appends a forwarded cleartext proposal above the cutover.
///
/// 1. Clients propose through every replica in turn while encryption is switched on: the checks
///    of `cutover_under_concurrent_load_never_halts`, and every payload applied above C was
///    stored as an envelope (with `raw_log`).
/// 2. With `hold_forwarded`: a cleartext proposal made through a follower before the switch is
///    held in flight between the follower and the leader, encryption is switched on, then it is
///    released. It must be refused or land at or below C, never above (its client may see an
///    error, never an acknowledgement above C); no replica halts. Without `hold_forwarded` this
///    part is not run (the case still passes on part 1).
///
/// Both parts end with a sealed proposal through each follower, which must succeed above C.
pub fn forwarded_proposals_are_sealed_and_never_halt<B: ClusterBuilder>(builder: &B) -> Outcome {
    require!(builder.capabilities(), follower_proposals);
    tracing::info!("--- part 1: clients propose through every replica while encryption is switched on");
    let env = Env::start(builder);
    let nodes = env.nodes.clone();
    let cutover = Mutex::new(None);
    let route = |c: usize, k: usize| Some(nodes[(c + k) % nodes.len()]);
    let load = run_load(&env.cluster, 4, 12, route, |third| {
        if third == 1 {
            *cutover.lock().expect("cutover") = Some(env.switch_on());
        }
    });
    let cutover = cutover.into_inner().expect("cutover").expect("the cutover was set");
    check_after_load(&env, &load, cutover);
    check_forwarded(&env, cutover, &[]);
    drop(env);

    if !builder.capabilities().hold_forwarded {
        tracing::warn!("--- part 2 not run: needs capability `hold_forwarded`");
        return Outcome::Passed;
    }
    tracing::info!("--- part 2: a cleartext proposal forwarded before the switch, held in flight past it");
    let env = Env::start(builder);
    let follower = env.follower();
    let held = payload("held-forwarded-cleartext");
    assert_eq!(env.cluster.hold_forwarded(true).expect("hold_forwarded"), 0, "nothing is held yet");
    let (result, forwarded, switched) = thread::scope(|s| {
        let proposer = s.spawn(|| env.cluster.propose_via(follower, held.clone()));
        let deadline = Instant::now() + env.timeout.max(Duration::from_secs(10));
        let mut forwarded = false;
        while Instant::now() < deadline {
            if env.cluster.hold_forwarded(true).expect("hold_forwarded") > 0 {
                forwarded = true;
                break;
            }
            thread::sleep(Duration::from_millis(1));
        }
        // Switch on only once the cleartext proposal is in flight; release it whatever happens,
        // so the proposer thread ends.
        let cutover = forwarded.then(|| env.switch_on());
        let released = env.cluster.hold_forwarded(false).expect("hold_forwarded");
        tracing::info!(released, "--- released the held forwarded proposals after the cutover was set");
        (proposer.join().expect("proposer thread"), forwarded, cutover)
    });
    assert!(forwarded, "the proposal through follower {follower} was never held in flight: {result:?}");
    let cutover = switched.expect("the cutover was set");
    match &result {
        Ok(r) => assert!(
            r.index <= cutover,
            "a cleartext proposal forwarded before the switch was acknowledged at {} > C = {cutover}",
            r.index
        ),
        Err(e) => tracing::info!("--- the held cleartext proposal was not acknowledged: {e}"),
    }
    check_forwarded(&env, cutover, &[held]);
    Outcome::Passed
}
