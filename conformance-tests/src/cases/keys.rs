//! R6 Keys and nonces: key states, secrecy of key material, nonce uniqueness, sealing budgets.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::thread;

use raft_envelope_core::{
    lifecycle::{KeyState, SealBudget},
    wire::{EnvelopeHeader, KEY_LEN},
    Algorithm, EntryKind, EnvelopeCipher, KeyId, PayloadUnwrapper, PayloadWrapper, ProposalId, SealError,
    SecretKey,
};

use super::support::{contains, payload, require, Env, Fixture, Role, DECOY, PRIMARY, ROTATED};
use crate::harness::{Cluster, ClusterBuilder, ProposeError};
use crate::{trace, Outcome};

/// Inserts [`ROTATED`] into every replica's keyring and makes it the active key.
fn rotate_everywhere<B: ClusterBuilder>(env: &Env<B>, skip: Option<u64>) {
    tracing::info!("--- rotate: {ROTATED} becomes active on every replica, {PRIMARY} decrypt-only");
    for node in env.nodes.iter().filter(|n| Some(**n) != skip) {
        let ring = env.cipher_of(*node).keyring().clone();
        let key = SecretKey::from_bytes(env.fx.material(ROTATED));
        ring.insert(ROTATED, Algorithm::Aes256Gcm, key).expect("insert");
        ring.promote(ROTATED).expect("promote");
        assert_eq!(ring.state(PRIMARY), Some(KeyState::DecryptOnly), "the previous key must be decrypt-only");
    }
}

fn seals(env_ring: &raft_envelope_core::Keyring, id: KeyId) -> u64 {
    env_ring.stats().iter().find(|s| s.key_id == id).map_or(0, |s| s.seals)
}

/// R6: after rotation the retired key still opens (a replica catching up applies entries sealed
/// under it) but never seals again.
pub fn retired_key_opens_never_seals<B: ClusterBuilder>(builder: &B) -> Outcome {
    let fx = Fixture::new(None);
    let retired_only = fx.cipher(fx.ring(&[(PRIMARY, Role::DecryptOnly)]));
    let old = fx.standard_cipher().seal(ProposalId(1), b"old").expect("seal");
    assert_eq!(retired_only.open(&old).expect("a decrypt-only key opens"), b"old");
    assert!(matches!(retired_only.seal(ProposalId(2), b"new"), Err(SealError::NoActiveKey)));

    require!(builder.capabilities(), restart);
    let mut env = Env::start(builder);
    env.switch_on();
    let h = env.halt_follower_fresh();
    rotate_everywhere(&env, Some(h.node));
    let leader_ring = env.cipher_of(env.leader()).keyring().clone();
    let before = (seals(&leader_ring, PRIMARY), seals(&leader_ring, ROTATED));
    let p = payload("after-rotation");
    let r = env.propose(&p);
    env.wait_all(r.index);
    let after = (seals(&leader_ring, PRIMARY), seals(&leader_ring, ROTATED));
    assert_eq!((after.0, after.1), (before.0, before.1 + 1), "only the active key seals");
    if env.caps.raw_log {
        let stored = env.cluster.read_entry(env.leader(), r.index).expect("read").expect("entry");
        let header = EnvelopeHeader::parse(&stored.bytes).expect("header");
        assert_eq!(header.key_id, ROTATED, "new proposals must be sealed under the new key");
    }
    tracing::info!("--- node {} catches up with {PRIMARY} decrypt-only", h.node);
    let ring = env.fx.ring(&[(PRIMARY, Role::DecryptOnly), (ROTATED, Role::Active)]);
    let cipher = env.fx.cipher(ring.clone());
    env.restart(h.node, Some(cipher), true);
    env.wait_applied(h.node, r.index);
    assert_eq!(env.payloads(h.node), env.payloads(env.leader()), "the catching-up replica must converge");
    let stats = ring.stats();
    let primary = stats.iter().find(|s| s.key_id == PRIMARY).expect("primary stats");
    assert!(primary.opens >= 1 && primary.seals == 0, "the retired key opened and never sealed");
    Outcome::Passed
}

/// Text forms a key could leak in.
fn key_forms(key: &[u8; KEY_LEN]) -> Vec<Vec<u8>> {
    let lower: String = key.iter().map(|b| format!("{b:02x}")).collect();
    let debug = format!("{:?}", &key[..8]);
    vec![
        key.to_vec(),
        lower.clone().into_bytes(),
        lower.to_uppercase().into_bytes(),
        debug[..debug.len() - 1].into(),
    ]
}

/// R6: key material never appears in `Debug`, `Display`, errors or traces; neither does a
/// proposed payload.
///
/// Traces are read from a process-wide subscriber this crate installs; when another global
/// subscriber is installed first, the trace part is skipped (and said so).
pub fn no_key_bytes_in_debug_or_errors<B: ClusterBuilder>(builder: &B) -> Outcome {
    let tracing_ok = trace::install();
    let mark = trace::mark();
    require!(builder.capabilities(), restart);
    let mut env = Env::start(builder);
    env.switch_on();
    let secret = payload("SECRET");
    env.propose_all(std::slice::from_ref(&secret));
    let h = env.halt_follower_fresh();
    let mut texts = Vec::new();
    let halt = env.halted(h.node).expect("halted");
    texts.push(format!("{halt} {halt:?}"));
    let leader = env.leader();
    let ring = env.cipher_of(leader).keyring().clone();
    ring.retire(PRIMARY).expect("retire");
    let refused = env.cluster.propose(secret.clone()).expect_err("nothing can seal");
    assert!(matches!(refused, ProposeError::Refused(_)), "{refused}");
    texts.push(format!("{refused} {refused:?}"));
    ring.promote(PRIMARY).expect("promote");
    let mut tampered = env.cipher_of(leader).seal(ProposalId(5), &secret).expect("seal");
    tampered[30] ^= 1;
    let open = env.cipher_of(leader).open(&tampered).expect_err("tampered");
    texts.push(format!("{open} {open:?}"));
    for node in &env.nodes {
        let cipher = env.cipher_of(*node);
        texts.push(format!("{cipher:?} {:?} {:?}", env.layer_of(*node), cipher.keyring()));
        texts.push(format!("{:?}", cipher.keyring().stats()));
    }
    for id in [PRIMARY, DECOY] {
        texts.push(format!("{:?}", SecretKey::from_bytes(env.fx.material(id))));
    }
    if tracing_ok {
        texts.extend(trace::since(mark).into_iter().map(|l| l.text));
    }
    tracing::info!("--- search {} texts for key material and the payload", texts.len());
    for id in [PRIMARY, DECOY] {
        let material = env.fx.material(id);
        for form in key_forms(&material) {
            for t in &texts {
                assert!(!contains(t.as_bytes(), &form), "{id} material found in: {t}");
            }
        }
    }
    for t in &texts {
        assert!(!contains(t.as_bytes(), &secret), "a payload found in: {t}");
    }
    if tracing_ok {
        Outcome::Passed
    } else {
        Outcome::Skipped("Debug and errors checked; traces not inspected: another global subscriber".into())
    }
}

/// R6: no (key, nonce) pair repeats: across concurrent sealers, separate keyring instances
/// holding the same key (replicas, restarts), and through the engine across leader changes and
/// restarts.
pub fn nonce_unique_across_replicas_and_restarts<B: ClusterBuilder>(builder: &B) -> Outcome {
    let fx = Fixture::new(None);
    tracing::info!("--- decision level: 3 keyring instances x 2 threads x 2,000 seals under one key");
    let ciphers: Vec<Arc<EnvelopeCipher>> = (0..3).map(|_| fx.standard_cipher()).collect();
    let nonces: Vec<[u8; 12]> = thread::scope(|s| {
        let handles: Vec<_> = ciphers
            .iter()
            .flat_map(|c| [c.clone(), c.clone()])
            .map(|c| {
                s.spawn(move || {
                    (0..2_000u64)
                        .map(|k| {
                            EnvelopeHeader::parse(&c.seal(ProposalId(k), b"n").expect("seal"))
                                .expect("h")
                                .nonce
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles.into_iter().flat_map(|h| h.join().expect("sealer")).collect()
    });
    let unique: BTreeSet<_> = nonces.iter().collect();
    assert_eq!(unique.len(), nonces.len(), "a nonce repeated under one key");

    let caps = builder.capabilities();
    require!(caps, raw_log);
    let mut env = Env::start(builder);
    env.switch_on();
    let batch = |env: &Env<B>, tag: &str| {
        let ps: Vec<_> = (0..10).map(|k| payload(&format!("{tag}-{k}"))).collect();
        env.propose_all(&ps);
    };
    batch(&env, "first-leader");
    let first = env.leader();
    if caps.leader_change {
        env.cluster.change_leader().expect("change_leader");
        batch(&env, "second-leader");
    }
    if caps.restart && caps.leader_change {
        tracing::info!(
            "--- restart the first leader (new keyring instance, same key) and make it lead again"
        );
        let cipher = env.fx.standard_cipher();
        env.restart(first, Some(cipher), true);
        let last = env.last_index();
        env.wait_all(last);
        for _ in 0..3 * env.nodes.len() {
            if env.leader() == first {
                break;
            }
            env.cluster.change_leader().expect("change_leader");
        }
        assert_eq!(env.leader(), first, "the restarted node must lead again, or its seals are not tested");
        batch(&env, "restarted-leader");
    }
    let leader = env.leader();
    let mut seen = BTreeSet::new();
    let mut count = 0;
    for index in 0..=env.last_index() {
        let Some(e) = env.cluster.read_entry(leader, index).expect("read_entry") else { continue };
        if e.kind == EntryKind::Envelope {
            let h = EnvelopeHeader::parse(&e.bytes).expect("header");
            assert!(seen.insert((h.key_id, h.nonce)), "(key, nonce) reused at index {index}");
            count += 1;
        }
    }
    assert!(count >= 10, "expected sealed entries in the log, found {count}");
    Outcome::Passed
}

/// R6: a key seals at most its budget: the layer reports the budget low before it is spent,
/// refuses (without appending) once it is, and sealing resumes after rotation.
///
/// Counts relative to the leader's remaining budget once sealing is on, so a harness that seals
/// a marker of its own while switching on is fine.
pub fn seal_budget_enforced<B: ClusterBuilder>(builder: &B) -> Outcome {
    const LIMIT: u64 = 16;
    assert_eq!(SealBudget::new(u64::MAX).limit(), SealBudget::NIST_LIMIT, "budgets are capped at NIST's");
    let low = SealBudget::new(LIMIT).low_watermark();
    let env = Env::start_with(builder, Some(LIMIT));
    env.switch_on();
    let ring = env.cipher_of(env.leader()).keyring().clone();
    let stats = |ring: &raft_envelope_core::Keyring| {
        ring.stats().into_iter().find(|s| s.key_id == PRIMARY).expect("stats")
    };
    let start = stats(&ring).budget_remaining;
    assert!(start > low + 1, "the harness used {} of {LIMIT} seals while switching on", LIMIT - start);
    let before_low: Vec<_> = (0..start - low - 1).map(|k| payload(&format!("budget-{k}"))).collect();
    env.propose_all(&before_low);
    let s = stats(&ring);
    assert_eq!((s.budget_remaining, s.budget_low), (low + 1, false), "one seal above the low watermark");
    env.propose_all(&[payload("budget-low")]);
    let s = stats(&ring);
    assert_eq!(
        (s.budget_remaining, s.budget_low),
        (low, true),
        "the budget must be reported low before it is spent"
    );
    let rest: Vec<_> = (0..low).map(|k| payload(&format!("budget-rest-{k}"))).collect();
    env.propose_all(&rest);
    assert_eq!(stats(&ring).budget_remaining, 0);
    let last = env.last_index();
    match env.cluster.propose(payload("over-budget")) {
        Err(ProposeError::Refused(SealError::BudgetExhausted { key_id, limit })) => {
            assert_eq!((key_id, limit), (PRIMARY, LIMIT));
        }
        other => panic!("expected Refused(BudgetExhausted), got {other:?}"),
    }
    assert_eq!(env.last_index(), last, "a refused proposal must not be appended");
    rotate_everywhere(&env, None);
    let r = env.propose(&payload("after-rotation"));
    env.wait_all(r.index);
    for node in &env.nodes {
        assert!(env.halted(*node).is_none(), "node {node}");
    }
    Outcome::Passed
}
