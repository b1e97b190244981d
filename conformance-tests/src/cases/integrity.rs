//! Nothing above the cutover on trust (R9, issue 12): exactly-once envelopes and replicated
//! integrity checkpoints, on [`build_managed`](crate::ClusterBuilder::build_managed) clusters.
//!
//! A rewrite of one replica's stored log that the envelope alone cannot see (a valid envelope
//! copied over another entry, an entry turned into the engine's no-op) makes that replica's
//! digest of what it applied differ from the others'; the next checkpoint the leader proposes
//! halts it (`diverged`, naming the range) while the others go on. A correct replica never halts
//! on a checkpoint, whatever the load, leader changes, restarts and snapshots.

use std::thread;
use std::time::{Duration, Instant};

use raft_envelope_core::{
    error::ControlError, error::FailureReason, wire::EnvelopeHeader, EntryKind, FatalApplyError,
};

use super::lifecycle::{Managed, SWITCH_ON_WRITERS, WRITERS};
use super::support::{payload, require, REPLICAS};
use crate::harness::{ClusterBuilder, NodeId, ProposeError, StoredEntry};
use crate::{Cluster, Outcome};

/// R9: a prepared proposal submitted twice through the leader (a client retrying after a lost
/// answer) is applied once, at the same index on every replica; the second submission is
/// answered [`ProposeError::Duplicate`] naming that index, and no replica halts.
pub fn duplicate_submission_applies_once_and_names_the_first_index<B: ClusterBuilder>(
    builder: &B,
) -> Outcome {
    require!(builder.capabilities(), key_lifecycle, resubmit);
    let env = Managed::start(builder, [true; REPLICAS]);
    env.enable();
    let p = payload("submitted-twice");
    let twice = env.cluster.resubmit(p.clone()).expect("resubmit");
    let first = twice.first.unwrap_or_else(|e| panic!("the first submission is applied: {e}"));
    match twice.second {
        Err(ProposeError::Duplicate { first_index }) => {
            assert_eq!(first_index, first.index, "the duplicate names the index where it first applied")
        }
        other => panic!("the second submission must be answered Duplicate at {}: {other:?}", first.index),
    }
    let last = env.propose(&payload("after-the-duplicate")).index;
    env.wait_all(last);
    for node in &env.nodes {
        assert!(env.halted(*node).is_none(), "node {node} halted: {:?}", env.halted(*node));
        let applied: Vec<u64> =
            env.payloads(*node).iter().filter(|a| a.bytes == p).map(|a| a.index).collect();
        assert_eq!(applied, vec![first.index], "node {node} applies the proposal once, at its first index");
    }
    env.settled_layer_state(&env.nodes, "every replica has the leader's layer state");
    Outcome::Passed
}

/// R10: with every payload the application is handed its apply context: the index, what the
/// entry was, and for an opened envelope the proposal id of its authenticated header (the same on
/// every replica, equal to the stored header's) and its key; cleartext carries no proposal id.
pub fn proposal_id_reaches_the_application<B: ClusterBuilder>(builder: &B) -> Outcome {
    require!(builder.capabilities(), key_lifecycle, apply_context);
    let env = Managed::start(builder, [true; REPLICAS]);
    let clear = env.propose(&payload("in-the-clear"));
    env.enable();
    let key = env.snapshot(env.leader()).active_key();
    let sealed = env.propose_n("sealed", 3);
    let last = sealed.last().expect("proposals").1.index;
    env.wait_all(last);
    let leader = env.leader();
    let of = |node: NodeId| env.cluster.applied_contexts(node).expect("applied_contexts");
    let leaders = of(leader);
    for node in &env.nodes {
        let contexts = of(*node);
        let indexes: Vec<u64> = contexts.iter().map(|c| c.index).collect();
        let payloads: Vec<u64> = env.payloads(*node).iter().map(|p| p.index).collect();
        assert_eq!(indexes, payloads, "node {node}: one context with every payload, in order");
        let at = |index: u64| *contexts.iter().find(|c| c.index == index).expect("a context");
        let c = at(clear.index);
        assert_eq!((c.kind, c.proposal_id, c.key_id), (EntryKind::Cleartext, None, None), "node {node}");
        for (_, r) in &sealed {
            let c = at(r.index);
            assert_eq!(c.kind, EntryKind::Envelope, "node {node}: {} was sealed", r.index);
            assert_eq!(c.key_id, key, "node {node}: sealed under the active key");
            assert!(c.proposal_id.is_some(), "node {node}: the proposal id reaches the application");
            let on_leader = leaders.iter().find(|l| l.index == r.index).expect("the leader's context");
            assert_eq!(c.proposal_id, on_leader.proposal_id, "node {node}: the same id on every replica");
            if env.caps.raw_log {
                let stored = env.cluster.read_entry(*node, r.index).expect("read_entry").expect("entry");
                let header = EnvelopeHeader::parse(&stored.bytes).expect("an envelope");
                assert_eq!(c.proposal_id, Some(header.proposal_id), "node {node}: the authenticated id");
            }
        }
    }
    Outcome::Passed
}

/// R9: a valid envelope copied from one index over a later entry of one replica's stored log
/// (a replay on disk) is not applied twice there, and the next integrity checkpoint halts that
/// replica (`diverged`, naming the range); the others apply the entry the leader wrote and go on.
pub fn replayed_envelope_on_one_replica_halts_it_at_the_next_checkpoint<B: ClusterBuilder>(
    builder: &B,
) -> Outcome {
    require!(builder.capabilities(), key_lifecycle, raw_log, hold_commit, checkpoints);
    rewrite_is_caught_by_the_next_checkpoint(builder, "replay", |replayed| {
        assert_eq!(replayed.kind, EntryKind::Envelope, "the entry replayed is an envelope");
        replayed.clone()
    })
}

/// R9: an entry of one replica's stored log rewritten into the engine's own no-op (which a new
/// leader legitimately appends at any index, so it cannot halt by itself) is caught by the next
/// integrity checkpoint: that replica halts (`diverged`), the others go on.
pub fn noop_rewrite_on_one_replica_halts_it_at_the_next_checkpoint<B: ClusterBuilder>(
    builder: &B,
) -> Outcome {
    require!(builder.capabilities(), key_lifecycle, raw_log, hold_commit, checkpoints);
    rewrite_is_caught_by_the_next_checkpoint(builder, "no-op rewrite", |_| StoredEntry::noop())
}

/// Holds a follower's commit, proposes two payloads, rewrites the second as the follower stores
/// it (`rewrite` gets the first), releases the follower, proposes a checkpoint, and checks that
/// the follower halts `diverged` on a checkpoint naming the rewritten index while the others go
/// on.
fn rewrite_is_caught_by_the_next_checkpoint<B: ClusterBuilder>(
    builder: &B,
    what: &str,
    rewrite: impl FnOnce(&StoredEntry) -> StoredEntry,
) -> Outcome {
    let env = Managed::start(builder, [true; REPLICAS]);
    env.enable();
    env.propose_n("before", 2);
    let leader = env.leader();
    let victim = *env.nodes.iter().find(|n| **n != leader).expect("a follower");
    let last = env.cluster.last_index().expect("last_index");
    env.wait_all(last);

    tracing::info!(victim, "--- {what}: hold the follower's commit, propose two entries");
    env.cluster.hold_commit(victim, true).expect("hold_commit");
    let first = env.propose(&payload("original"));
    let second = env.propose(&payload("overwritten"));
    let stored = wait_stored(&env, victim, second.index);
    assert!(stored, "node {victim} stores index {} while its commit is held", second.index);
    let original = env.cluster.read_entry(victim, first.index).expect("read_entry").expect("entry");
    env.cluster.write_entry(victim, second.index, rewrite(&original)).expect("write_entry");
    env.cluster.hold_commit(victim, false).expect("hold_commit");
    wait_applied_or_halted(&env, victim, second.index);

    let checkpoint = checkpoint_retried(&env);
    let halt = env.wait_halted(victim);
    assert_diverged_at_a_checkpoint(&env, victim, &halt, second.index, checkpoint);
    assert_eq!(
        env.applied(victim),
        halt.index - 1,
        "the halt does not advance node {victim}'s applied index"
    );
    assert!(
        env.payloads(victim).iter().all(|a| a.index < halt.index),
        "nothing at or above the checkpoint reaches node {victim}'s state machine"
    );

    let after = env.propose(&payload("after-the-halt")).index;
    let others: Vec<NodeId> = env.nodes.iter().copied().filter(|n| *n != victim).collect();
    for node in &others {
        env.wait_applied(*node, after);
        assert!(env.halted(*node).is_none(), "node {node} halted: {:?}", env.halted(*node));
        assert_eq!(env.payloads(*node), env.payloads(leader), "node {node} applies what the leader applied");
    }
    assert!(
        env.payloads(leader).iter().any(|a| a.index == second.index),
        "the others applied the entry the leader wrote at {}",
        second.index
    );
    Outcome::Passed
}

/// `halt` is a `diverged` halt on a checkpoint entry above `rewritten` (at or below
/// `checkpoint`, the one the case proposed: a checkpoint the leader proposed by itself may come
/// first), naming a range that holds `rewritten`.
fn assert_diverged_at_a_checkpoint<B: ClusterBuilder>(
    env: &Managed<B>,
    victim: NodeId,
    halt: &FatalApplyError,
    rewritten: u64,
    checkpoint: u64,
) {
    assert_eq!(halt.reason, FailureReason::Diverged, "node {victim} halts diverged: {halt}");
    assert!(
        halt.index > rewritten && halt.index <= checkpoint,
        "node {victim} halts at a checkpoint after {rewritten}, by {checkpoint}: {halt}"
    );
    match halt.control.as_deref() {
        Some(ControlError::Diverged { from, through }) => assert!(
            *from <= rewritten && rewritten <= *through,
            "the halt names a range holding {rewritten}: {from}..={through}"
        ),
        other => panic!("node {victim}'s halt names the diverged range: {other:?}"),
    }
    let entry = env.cluster.read_entry(victim, halt.index).expect("read_entry").expect("entry");
    assert_eq!(entry.kind, EntryKind::Control, "node {victim} halts on a layer control entry");
}

/// Waits until `node` stores `index`; false when it does not within the harness's timeout.
fn wait_stored<B: ClusterBuilder>(env: &Managed<B>, node: NodeId, index: u64) -> bool {
    let deadline = Instant::now() + env.timeout;
    while Instant::now() < deadline {
        if env.cluster.read_entry(node, index).expect("read_entry").is_some() {
            return true;
        }
        thread::sleep(Duration::from_millis(2));
    }
    false
}

/// Waits until `node` applied `index` or halted.
fn wait_applied_or_halted<B: ClusterBuilder>(env: &Managed<B>, node: NodeId, index: u64) {
    let deadline = Instant::now() + env.timeout;
    while env.halted(node).is_none() {
        // In short waits: the harness drives the engine while it waits (a halt ends a wait early
        // on some engines, not on others).
        if env.cluster.wait_applied(node, index, Duration::from_millis(100)).is_ok() {
            return;
        }
        assert!(Instant::now() < deadline, "node {node} neither applied {index} nor halted");
    }
}

/// R9: integrity checkpoints never halt a correct replica: 64 writers while the leader changes
/// and a follower restarts between checkpoints, then a member joins by snapshot after every log
/// was compacted and more writers run across another leader change. Checkpoints are proposed
/// all along (the leaders' own policy, then one explicitly); every replica, the new member
/// included, verified the last one, and no replica halted.
pub fn checkpoints_never_halt_correct_replicas_under_load<B: ClusterBuilder>(builder: &B) -> Outcome {
    require!(builder.capabilities(), key_lifecycle, checkpoints, leader_change, snapshots);
    let mut env = Managed::start(builder, [true; REPLICAS]);
    env.enable();
    let kek = env.kek();
    let (_, acked) = env.under_load(SWITCH_ON_WRITERS, |cluster| {
        leader_change(cluster, "under load");
        let leader = cluster.leader();
        let follower = cluster.nodes().into_iter().find(|n| Some(*n) != leader).expect("a follower");
        tracing::info!(follower, "--- restart a follower between checkpoints");
        cluster.restart_with_provider(follower, Some(kek)).expect("restart_with_provider");
    });
    let last = env.propose(&payload("after-the-first-load")).index;
    env.wait_all(last);
    env.assert_converged(&acked, "after the first load");
    let through = env.snapshot(env.leader()).integrity.checkpointed_through();
    assert!(through.is_some(), "the leaders proposed checkpoints by themselves under load");

    env.compact_all();
    let joiner = env.join();
    tracing::info!(joiner, "--- a member joined by snapshot");
    let (_, acked) = env.under_load(WRITERS, |cluster| leader_change(cluster, "after the join"));
    let checkpoint = checkpoint_retried(&env);
    let last = env.propose(&payload("after-the-last-checkpoint")).index;
    assert!(last > checkpoint);
    env.wait_all(last);
    env.assert_converged(&acked, "after the second load");
    for node in &env.nodes {
        assert!(env.halted(*node).is_none(), "node {node} halted: {:?}", env.halted(*node));
    }
    // Identical layer states, the new member's included: each checked the same checkpoints.
    let settled = env.settled_layer_state(&env.nodes, "after the last checkpoint");
    let verified = settled.integrity.checkpointed_through();
    assert!(verified > through, "the new member {joiner} and every other replica checked newer checkpoints");
    Outcome::Passed
}

/// Changes the leader; an election that does not finish in the harness's time only means this
/// run had no leader change (the change is the disturbance, not the property under test).
fn leader_change<C: Cluster>(cluster: &C, when: &str) {
    if let Err(e) = cluster.change_leader() {
        tracing::warn!("--- no leader change {when} ({e})");
    }
}

/// [`Cluster::checkpoint`], retried while a leader change settles.
fn checkpoint_retried<B: ClusterBuilder>(env: &Managed<B>) -> u64 {
    let deadline = Instant::now() + env.timeout;
    loop {
        match env.cluster.checkpoint() {
            Ok(index) => return index,
            Err(e) if Instant::now() < deadline => {
                tracing::info!("--- checkpoint failed ({e}), propose it again");
                thread::sleep(Duration::from_millis(20));
            }
            Err(e) => panic!("checkpoint still failing after {:?}: {e}", env.timeout),
        }
    }
}
