//! R8 Observability: a halt emits an error event with index, key id and reason; counters exist
//! for seals, opens and open failures by reason, per key id.

use raft_envelope_core::error::FailureReason;

use super::support::{require, Env, PRIMARY};
use crate::harness::ClusterBuilder;
use crate::{trace, Outcome};

/// R8 (extra): a halt emits a `tracing` event at error level naming index, key id and reason.
///
/// Read from the process-wide subscriber this crate installs; skipped (and said so) when another
/// global subscriber was installed first.
pub fn halt_emits_error_event<B: ClusterBuilder>(builder: &B) -> Outcome {
    if !trace::install() {
        return Outcome::Skipped("another global tracing subscriber is installed".into());
    }
    require!(builder.capabilities(), restart);
    let mut env = Env::start(builder);
    env.switch_on();
    let mark = trace::mark();
    let h = env.halt_follower_fresh();
    let index = format!("index={}", h.index);
    let key = format!("key_id={}", PRIMARY.0);
    let found = trace::since(mark).into_iter().any(|l| {
        l.level == tracing::Level::ERROR
            && l.text.contains(&index)
            && l.text.contains(&key)
            && l.text.contains(FailureReason::UnknownKey.as_str())
    });
    assert!(found, "expected an ERROR event with {index}, {key} and reason unknown_key");
    Outcome::Passed
}

/// R8 (extra): the apply gate counts pass-throughs, opens and halts by reason, and the keyrings
/// count seals, opens and open failures per key id, so an adapter that bypasses the gate shows.
pub fn counters_track_seals_opens_failures<B: ClusterBuilder>(builder: &B) -> Outcome {
    require!(builder.capabilities(), restart);
    let mut env = Env::start(builder);
    let r = env.propose(b"counted cleartext");
    env.wait_all(r.index);
    env.switch_on();
    let h = env.halt_follower_fresh();
    let leader = env.leader();
    let seals = env.cipher_of(leader).keyring().stats().into_iter().find(|s| s.key_id == PRIMARY);
    assert!(seals.is_some_and(|s| s.seals >= 1), "the leader's keyring must count its seals");
    for node in env.nodes.iter().filter(|n| **n != h.node) {
        let stats = env.layer_of(*node).gate().stats();
        assert!(stats.opened >= 1 && stats.passed_through >= 1, "node {node} gate counters: {stats:?}");
        let opens = env.cipher_of(*node).keyring().stats().into_iter().find(|s| s.key_id == PRIMARY);
        assert!(opens.is_some_and(|s| s.opens >= 1), "node {node}: its keyring must count opens");
    }
    let stats = env.layer_of(h.node).gate().stats();
    let halts = stats.halts.get(&FailureReason::UnknownKey).copied().unwrap_or(0);
    assert!(halts >= 1, "the gate must count halts by reason: {stats:?}");
    let failures = env.cipher_of(h.node).keyring().stats().into_iter().find(|s| s.key_id == PRIMARY);
    let failures = failures.and_then(|s| s.open_failures.get(&FailureReason::UnknownKey).copied());
    assert!(failures >= Some(1), "the keyring must count open failures by reason, per key id");
    Outcome::Passed
}
