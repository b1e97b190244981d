//! R2 Cutover, and why it is tag-aware: the decision looks at the index and at what the entry is.

use raft_envelope_core::{error::FailureReason, EntryKind};

use super::support::{payload, require, Env};
use crate::harness::{Cluster, ClusterBuilder, ProposeError, StoredEntry};
use crate::Outcome;

/// Lands a cleartext proposal at `C + offset` and checks the outcome the table in SPEC R2 gives.
fn boundary<B: ClusterBuilder>(builder: &B, offset: i8) -> Outcome {
    let env = Env::start(builder);
    env.propose_all(&[payload("legacy")]);
    let next = env.last_index() + 1;
    let cutover = match offset {
        -1 => next + 1,
        0 => next,
        _ => next - 1,
    };
    tracing::info!("--- cleartext proposal expected at {next}, cutover {cutover} (offset {offset})");
    env.set_cutover(Some(cutover));
    let before: Vec<_> = env.nodes.iter().map(|n| (*n, env.view(*n))).collect();
    let p = payload("boundary");
    if offset <= 0 {
        let response = env.propose(&p);
        assert_eq!(response.index, next, "the engine appended an unexpected entry before the proposal");
        env.wait_all(next);
        for node in &env.nodes {
            let last = env.payloads(*node).pop().expect("applied payload");
            assert_eq!(
                (last.index, &last.bytes),
                (next, &p),
                "node {node}: cleartext at C{offset:+} must pass"
            );
            assert!(env.halted(*node).is_none(), "node {node} must not halt on cleartext at C{offset:+}");
        }
    } else if env.caps.unchecked_append {
        // A correct proposer cannot put cleartext above the cutover (an adapter may refuse it):
        // append it the way a faulty or outdated proposer would.
        let index =
            env.cluster.append_unchecked(StoredEntry::cleartext(p.clone())).expect("append_unchecked");
        assert_eq!(index, next, "the engine appended an unexpected entry before the cleartext entry");
        env.assert_fails_closed_everywhere(
            &before,
            next,
            Some(FailureReason::CleartextAboveCutover),
            Some(&p),
        );
    } else {
        // Without a way around the layer: the proposal must be refused, or land and halt.
        match env.cluster.propose(p.clone()) {
            Ok(response) => {
                panic!("a cleartext entry above the cutover produced a response at {}", response.index)
            }
            Err(e @ ProposeError::Duplicate { .. }) => panic!("a fresh proposal cannot be a duplicate: {e}"),
            Err(ProposeError::Refused(_)) => {
                for (node, view) in &before {
                    assert_eq!(&env.view(*node), view, "node {node}: a refused proposal must change nothing");
                }
            }
            Err(ProposeError::Engine(_)) => {
                env.assert_fails_closed_everywhere(
                    &before,
                    next,
                    Some(FailureReason::CleartextAboveCutover),
                    Some(&p),
                );
            }
        }
    }
    Outcome::Passed
}

/// R2: a cleartext payload at index `C - 1` is handed over unchanged.
pub fn cutover_boundary_minus_one<B: ClusterBuilder>(builder: &B) -> Outcome {
    boundary(builder, -1)
}

/// R2: a cleartext payload at exactly `C` is handed over unchanged (the marker entry).
pub fn cutover_boundary_equal<B: ClusterBuilder>(builder: &B) -> Outcome {
    boundary(builder, 0)
}

/// R2/R3: a cleartext payload at `C + 1` halts every replica; nothing of it is applied.
pub fn cutover_boundary_plus_one<B: ClusterBuilder>(builder: &B) -> Outcome {
    boundary(builder, 1)
}

/// R2: an envelope at or below the cutover is opened, never passed on sealed.
pub fn sealed_below_cutover_is_opened<B: ClusterBuilder>(builder: &B) -> Outcome {
    let env = Env::start(builder);
    let cutover = env.last_index() + 100;
    env.set_cutover(Some(cutover));
    env.start_sealing();
    let payloads = vec![payload("below-a"), payload("below-b")];
    let responses = env.propose_all(&payloads);
    for r in &responses {
        assert!(r.index <= cutover, "the proposals were meant to land below the cutover");
    }
    for node in &env.nodes {
        let got: Vec<_> = env.payloads(*node).into_iter().map(|p| p.bytes).collect();
        assert_eq!(got, payloads, "node {node}: envelopes below the cutover must be opened");
        if env.caps.raw_log {
            for r in &responses {
                let stored = env.cluster.read_entry(*node, r.index).expect("read_entry").expect("entry");
                assert_eq!(stored.kind, EntryKind::Envelope, "node {node}: a sealing layer stores envelopes");
            }
        }
    }
    Outcome::Passed
}

/// R2: `C = u64::MAX` behaves exactly like no cutover.
pub fn cutover_max_is_inert<B: ClusterBuilder>(builder: &B) -> Outcome {
    let env = Env::start(builder);
    env.set_cutover(Some(u64::MAX));
    let mut payloads = vec![payload("max-clear-a"), payload("max-clear-b")];
    env.propose_all(&payloads);
    env.start_sealing();
    let sealed = vec![payload("max-sealed")];
    env.propose_all(&sealed);
    env.stop_sealing();
    let tail = vec![payload("max-clear-c")];
    env.propose_all(&tail);
    payloads.extend(sealed);
    payloads.extend(tail);
    for node in &env.nodes {
        assert!(env.halted(*node).is_none(), "node {node}: C = u64::MAX must never halt cleartext");
        let got: Vec<_> = env.payloads(*node).into_iter().map(|p| p.bytes).collect();
        assert_eq!(got, payloads, "node {node}: C = u64::MAX must behave like no cutover");
    }
    Outcome::Passed
}

/// R2: control entries (here: the new leader's entry) above the cutover are applied untouched.
pub fn control_entries_untouched_above_cutover<B: ClusterBuilder>(builder: &B) -> Outcome {
    require!(builder.capabilities(), leader_change);
    let env = Env::start(builder);
    let cutover = env.switch_on();
    env.propose_all(&[payload("before-election")]);
    tracing::info!("--- change leader: the engine appends a control entry above the cutover");
    let leader = env.cluster.change_leader().expect("change_leader");
    let last = env.last_index();
    assert!(last > cutover, "the new term's entry must land above the cutover");
    env.wait_all(last);
    let after = payload("after-election");
    let r = env.propose(&after);
    env.wait_all(r.index);
    for node in &env.nodes {
        assert!(
            env.halted(*node).is_none(),
            "node {node}: control entries must never halt (leader {leader})"
        );
        if env.caps.raw_log {
            let controls = (cutover + 1..=last)
                .filter_map(|i| env.cluster.read_entry(*node, i).expect("read_entry"))
                .filter(|e| e.kind == EntryKind::Control)
                .count();
            assert!(controls >= 1, "node {node}: expected a control entry above the cutover");
        }
        let got = env.payloads(*node).pop().expect("payload");
        assert_eq!(got.bytes, after, "node {node}: the cluster must keep applying after the control entry");
    }
    Outcome::Passed
}

/// R2 (extra): the framing, not the bytes, tells cleartext from envelope: a cleartext payload
/// that *is* a valid envelope passes through unopened, and sealing it again round-trips it.
pub fn cleartext_lookalike_passes_unchanged<B: ClusterBuilder>(builder: &B) -> Outcome {
    let env = Env::start(builder);
    let leader = env.leader();
    let envelope = raft_envelope_core::PayloadWrapper::seal(
        &*env.cipher_of(leader),
        raft_envelope_core::ProposalId(7),
        &payload("inner"),
    )
    .expect("seal");
    tracing::info!("--- propose a valid envelope as a cleartext payload");
    env.propose_all(std::slice::from_ref(&envelope));
    env.switch_on();
    tracing::info!("--- propose the same bytes sealed");
    env.propose_all(std::slice::from_ref(&envelope));
    for node in &env.nodes {
        let got: Vec<_> = env.payloads(*node).into_iter().map(|p| p.bytes).collect();
        assert_eq!(
            got,
            vec![envelope.clone(), envelope.clone()],
            "node {node}: bytes must arrive as proposed"
        );
    }
    Outcome::Passed
}

/// R2 (extra): an envelope is never handed over as plaintext at any index: with no cutover and no
/// unwrapper, a replica halts on it.
pub fn envelope_without_unwrapper_halts_at_any_index<B: ClusterBuilder>(builder: &B) -> Outcome {
    require!(builder.capabilities(), restart);
    let mut env = Env::start(builder);
    let node = env.follower();
    let cipher = env.cipher_of(node);
    env.restart(node, Some(cipher), false);
    env.start_sealing();
    let last = env.last_index();
    env.wait_all(last);
    let before = env.view(node);
    let p = payload("no-unwrapper");
    let r = env.propose(&p);
    env.assert_halted_unchanged(node, &before, r.index, Some(FailureReason::NoUnwrapper), Some(&p));
    Outcome::Passed
}
