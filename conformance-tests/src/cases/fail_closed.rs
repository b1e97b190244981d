//! R3 Fail closed: any failure to open a payload entry above the cutover halts that replica, with
//! nothing changed, stickily, and without stopping the others.

use std::sync::Arc;
use std::time::Duration;

use raft_envelope_core::{
    error::FailureReason,
    wire::{Purpose, OVERHEAD},
    ApplyGate, ClusterId, Cutover, EntryKind, EnvelopeCipher, PayloadWrapper, ProposalId,
};

use super::support::{payload, require, Env, Fixture, Role, PRIMARY};
use crate::harness::{Cluster, ClusterBuilder, StoredEntry};
use crate::Outcome;

/// An envelope sealed the way replicas of `env` seal, for injecting.
fn sealed<B: ClusterBuilder>(env: &Env<B>, tag: &str) -> Vec<u8> {
    env.fx.standard_cipher().seal(ProposalId(1), &payload(tag)).expect("seal")
}

/// Injects `entry` and asserts the replicas it reaches halt with `reason`, nothing changed.
fn injected_halts<B: ClusterBuilder>(builder: &B, entry: StoredEntry, reason: FailureReason) -> Outcome {
    let mut env = Env::start(builder);
    env.switch_on();
    env.propose_all(&[payload("good")]);
    let inj = match env.inject(entry) {
        Ok(inj) => inj,
        Err(skip) => return skip,
    };
    env.assert_injection_halts(&inj, Some(reason));
    Outcome::Passed
}

/// R3: flipping any single bit of an envelope (header, nonce, ciphertext or tag) halts.
///
/// Every bit is flipped at the decision level (`ApplyGate::decide`, below, at and above the
/// cutover). Through the engine a sampled sweep flips one bit in every byte position (bit
/// `position % 8`), each on the stored entry of a halted replica that is then restarted; finally
/// the original entry is restored and the replica must resume and converge.
pub fn tamper_each_bit_halts<B: ClusterBuilder>(builder: &B) -> Outcome {
    tracing::info!("--- decision level: flip every bit of an envelope");
    let fx = Fixture::new(None);
    let cipher = fx.standard_cipher();
    let gate = ApplyGate::new(Arc::new(Cutover::at(10))).with_unwrapper(cipher.clone());
    let envelope = cipher.seal(ProposalId(3), b"tamper me").expect("seal");
    assert!(gate.decide(11, EntryKind::Envelope, &envelope).is_ok());
    for bit in 0..envelope.len() * 8 {
        let mut flipped = envelope.clone();
        flipped[bit / 8] ^= 1 << (bit % 8);
        for index in [9, 10, 11] {
            assert!(
                gate.decide(index, EntryKind::Envelope, &flipped).is_err(),
                "bit {bit} flipped must fail to open at index {index}"
            );
        }
    }

    require!(builder.capabilities(), raw_log, restart);
    let mut env = Env::start(builder);
    env.switch_on();
    let h = env.halt_follower_fresh();
    let original = env.cluster.read_entry(h.node, h.index).expect("read_entry").expect("stored entry");
    assert_eq!(original.kind, EntryKind::Envelope, "a sealed proposal must be stored as an envelope");
    tracing::info!(
        "--- engine: flip one bit per byte of the stored envelope ({} bytes)",
        original.bytes.len()
    );
    for pos in 0..original.bytes.len() {
        let mut bytes = original.bytes.clone();
        bytes[pos] ^= 1 << (pos % 8);
        env.cluster.write_entry(h.node, h.index, StoredEntry::envelope(bytes)).expect("write_entry");
        let cipher = env.fx.standard_cipher();
        env.restart(h.node, Some(cipher), true);
        env.assert_halted_unchanged(h.node, &h.before, h.index, None, Some(&h.payload));
    }
    tracing::info!("--- restore the original entry: the replica resumes");
    env.cluster.write_entry(h.node, h.index, original).expect("write_entry");
    let cipher = env.fx.standard_cipher();
    env.restart(h.node, Some(cipher), true);
    env.wait_applied(h.node, h.index);
    assert_eq!(env.payloads(h.node), env.payloads(env.leader()), "the restored replica must converge");
    Outcome::Passed
}

/// R3: an envelope shorter than a header plus a tag halts with `Malformed`; every truncation
/// fails at the decision level.
pub fn truncated_envelope_halts<B: ClusterBuilder>(builder: &B) -> Outcome {
    let fx = Fixture::new(None);
    let cipher = fx.standard_cipher();
    let gate = ApplyGate::new(Arc::new(Cutover::at(10))).with_unwrapper(cipher.clone());
    let envelope = cipher.seal(ProposalId(3), b"truncate me").expect("seal");
    for len in 0..envelope.len() {
        assert!(gate.decide(11, EntryKind::Envelope, &envelope[..len]).is_err(), "length {len} must fail");
    }
    let mut bytes = envelope;
    bytes.truncate(OVERHEAD - 1);
    injected_halts(builder, StoredEntry::envelope(bytes), FailureReason::Malformed)
}

/// R3: an envelope under a key the replica does not hold halts that replica with `UnknownKey`
/// and the key id; the others apply it.
pub fn unknown_key_halts<B: ClusterBuilder>(builder: &B) -> Outcome {
    require!(builder.capabilities(), restart);
    let mut env = Env::start(builder);
    env.switch_on();
    let h = env.halt_follower_fresh();
    let err = env.assert_halted_unchanged(
        h.node,
        &h.before,
        h.index,
        Some(FailureReason::UnknownKey),
        Some(&h.payload),
    );
    assert_eq!(err.key_id, Some(PRIMARY), "the error must name the key when it could be read");
    for node in env.nodes.iter().filter(|n| **n != h.node) {
        let last = env.payloads(*node).pop().expect("payload");
        assert_eq!(
            (last.index, last.bytes),
            (h.index, h.payload.clone()),
            "node {node} must apply the entry"
        );
    }
    Outcome::Passed
}

/// R3: an envelope under a key the replica has destroyed halts with `DestroyedKey`.
pub fn destroyed_key_halts<B: ClusterBuilder>(builder: &B) -> Outcome {
    require!(builder.capabilities(), restart);
    let mut env = Env::start(builder);
    env.switch_on();
    let node = env.follower();
    let ring = env.fx.ring(&[(PRIMARY, Role::Destroyed)]);
    let cipher = env.fx.cipher(ring);
    env.restart(node, Some(cipher), true);
    let last = env.last_index();
    env.wait_all(last);
    let before = env.view(node);
    let p = payload("destroyed");
    let r = env.propose(&p);
    let err =
        env.assert_halted_unchanged(node, &before, r.index, Some(FailureReason::DestroyedKey), Some(&p));
    assert_eq!(err.key_id, Some(PRIMARY), "the error must name the destroyed key");
    Outcome::Passed
}

/// R3: an envelope made for another purpose (a snapshot) halts with `WrongPurpose`.
pub fn wrong_purpose_halts<B: ClusterBuilder>(builder: &B) -> Outcome {
    let mut env = Env::start(builder);
    let bytes =
        env.fx.standard_cipher().seal_for(Purpose::Snapshot, ProposalId(1), &payload("snap")).expect("seal");
    env.switch_on();
    let inj = match env.inject(StoredEntry::envelope(bytes)) {
        Ok(inj) => inj,
        Err(skip) => return skip,
    };
    env.assert_injection_halts(&inj, Some(FailureReason::WrongPurpose));
    Outcome::Passed
}

/// R3: an envelope sealed with the same key for another cluster identity halts
/// (`AuthenticationFailed`).
pub fn wrong_cluster_halts<B: ClusterBuilder>(builder: &B) -> Outcome {
    let mut env = Env::start(builder);
    let other = EnvelopeCipher::new(
        ClusterId::new("another-cluster").expect("cluster id"),
        env.fx.ring(&[(PRIMARY, Role::Active)]),
    );
    let entry = StoredEntry::envelope(other.seal(ProposalId(1), &payload("elsewhere")).expect("seal"));
    env.switch_on();
    let inj = match env.inject(entry) {
        Ok(inj) => inj,
        Err(skip) => return skip,
    };
    env.assert_injection_halts(&inj, Some(FailureReason::AuthenticationFailed));
    Outcome::Passed
}

/// R3: a cleartext payload above the cutover (from a proposer that bypasses the layer) halts
/// every replica with `CleartextAboveCutover`.
pub fn cleartext_above_cutover_halts<B: ClusterBuilder>(builder: &B) -> Outcome {
    let caps = builder.capabilities();
    if !caps.unchecked_append {
        // Without a bypassing proposer, rewrite a stored entry instead.
        return envelope_rewritten_as_cleartext_halts(builder);
    }
    let env = Env::start(builder);
    env.switch_on();
    env.propose_all(&[payload("sealed")]);
    let last = env.last_index();
    env.wait_all(last);
    let before: Vec<_> = env.nodes.iter().map(|n| (*n, env.view(*n))).collect();
    let p = payload("bypass");
    tracing::info!("--- a faulty proposer appends cleartext above the cutover");
    let index = env.cluster.append_unchecked(StoredEntry::cleartext(p.clone())).expect("append_unchecked");
    env.assert_fails_closed_everywhere(&before, index, Some(FailureReason::CleartextAboveCutover), Some(&p));
    Outcome::Passed
}

/// R3 (extra): an attacker who rewrites a stored envelope above the cutover as a cleartext entry
/// (changing the framing, not just the bytes) halts the replica.
pub fn envelope_rewritten_as_cleartext_halts<B: ClusterBuilder>(builder: &B) -> Outcome {
    require!(builder.capabilities(), raw_log, restart);
    injected_halts(builder, StoredEntry::cleartext(payload("forged")), FailureReason::CleartextAboveCutover)
}

/// R3: with a cutover set and no unwrapper, an envelope halts with `NoUnwrapper` (key id named).
pub fn cutover_without_unwrapper_halts<B: ClusterBuilder>(builder: &B) -> Outcome {
    require!(builder.capabilities(), restart);
    let mut env = Env::start(builder);
    env.switch_on();
    let node = env.follower();
    let cipher = env.cipher_of(node);
    env.restart(node, Some(cipher), false);
    let last = env.last_index();
    env.wait_all(last);
    let before = env.view(node);
    let p = payload("no-unwrapper");
    let r = env.propose(&p);
    let err = env.assert_halted_unchanged(node, &before, r.index, Some(FailureReason::NoUnwrapper), Some(&p));
    assert_eq!(err.key_id, Some(PRIMARY), "the error must name the key read from the header");
    Outcome::Passed
}

/// R3: a halted replica's applied index stays at the last good entry while the cluster goes on,
/// and waiting for it to apply the failing entry times out.
pub fn halt_does_not_advance_applied<B: ClusterBuilder>(builder: &B) -> Outcome {
    let mut env = Env::start(builder);
    let mut tampered = sealed(&env, "tampered");
    let last = tampered.len() - 1;
    tampered[last] ^= 0x80;
    env.switch_on();
    let inj = match env.inject(StoredEntry::envelope(tampered)) {
        Ok(inj) => inj,
        Err(skip) => return skip,
    };
    env.assert_injection_halts(&inj, Some(FailureReason::AuthenticationFailed));
    if inj.nodes.len() < env.nodes.len() {
        tracing::info!("--- the others keep committing");
        env.propose_all(&[payload("after-a"), payload("after-b")]);
    }
    for (node, before) in &inj.nodes {
        let waited = env.cluster.wait_applied(*node, inj.index, Duration::from_millis(200));
        assert!(waited.is_err(), "node {node} must never report the failing entry as applied");
        env.assert_halted_unchanged(
            *node,
            before,
            inj.index,
            Some(FailureReason::AuthenticationFailed),
            None,
        );
    }
    Outcome::Passed
}

/// R3: a restart with the same log and keys fails on the same entry again, never skipping it.
pub fn halt_is_sticky_across_restart<B: ClusterBuilder>(builder: &B) -> Outcome {
    require!(builder.capabilities(), restart);
    let mut env = Env::start(builder);
    let mut tampered = sealed(&env, "sticky");
    tampered[OVERHEAD] ^= 0x01;
    env.switch_on();
    let inj = match env.inject(StoredEntry::envelope(tampered)) {
        Ok(inj) => inj,
        Err(skip) => return skip,
    };
    env.assert_injection_halts(&inj, Some(FailureReason::AuthenticationFailed));
    for round in 1..=2 {
        for (node, before) in &inj.nodes {
            tracing::info!("--- restart {round}: node {node} must halt on entry {} again", inj.index);
            let cipher = env.fx.standard_cipher();
            env.restart(*node, Some(cipher), true);
            env.assert_halted_unchanged(
                *node,
                before,
                inj.index,
                Some(FailureReason::AuthenticationFailed),
                None,
            );
        }
    }
    Outcome::Passed
}

/// R3: once the key is provided again, the halted replica resumes from the failing entry and
/// converges with its peers.
pub fn repaired_replica_resumes_and_converges<B: ClusterBuilder>(builder: &B) -> Outcome {
    require!(builder.capabilities(), restart);
    let mut env = Env::start(builder);
    env.switch_on();
    let h = env.halt_follower_fresh();
    env.propose_all(&[payload("while-halted-a"), payload("while-halted-b")]);
    tracing::info!("--- repair: restart node {} with the key", h.node);
    let cipher = env.fx.standard_cipher();
    env.restart(h.node, Some(cipher), true);
    let last = env.last_index();
    env.wait_applied(h.node, last);
    assert!(env.halted(h.node).is_none(), "the repaired replica must not halt");
    let r = env.propose(&payload("after-repair"));
    env.wait_all(r.index);
    let leader = env.payloads(env.leader());
    for node in &env.nodes {
        assert_eq!(env.payloads(*node), leader, "node {node} must converge with the leader");
    }
    Outcome::Passed
}

/// R3: a local failure on one replica does not stop the others.
pub fn one_replica_halt_others_continue<B: ClusterBuilder>(builder: &B) -> Outcome {
    require!(builder.capabilities(), restart);
    let mut env = Env::start(builder);
    env.switch_on();
    let h = env.halt_follower_fresh();
    let more: Vec<_> = (0..5).map(|k| payload(&format!("others-{k}"))).collect();
    let responses = env.propose_all(&more);
    for node in env.nodes.iter().filter(|n| **n != h.node) {
        let got: Vec<_> =
            env.payloads(*node).into_iter().rev().take(more.len()).rev().map(|p| p.bytes).collect();
        assert_eq!(got, more, "node {node} must keep applying");
        assert!(env.applied(*node) >= responses.last().expect("responses").index);
    }
    env.assert_halted_unchanged(
        h.node,
        &h.before,
        h.index,
        Some(FailureReason::UnknownKey),
        Some(&h.payload),
    );
    Outcome::Passed
}

/// R9: rewriting one replica's stored entry above the cutover into the layer's own
/// engine-framed barrier halts that replica (`unauthenticated_barrier`) with nothing of the entry
/// applied, instead of skipping it and diverging silently; the others go on.
pub fn barrier_rewrite_on_one_replica_halts_it<B: ClusterBuilder>(builder: &B) -> Outcome {
    require!(builder.capabilities(), raw_log, restart);
    injected_halts(builder, StoredEntry::barrier(), FailureReason::UnauthenticatedBarrier)
}
