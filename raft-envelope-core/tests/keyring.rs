//! Keyring behaviour: states, destruction, budgets, nonces, secrecy, counters.
#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

mod common;

use std::collections::HashSet;
use std::sync::Arc;

use common::cluster;
use raft_envelope_core::error::{ConfigError, FailureReason};
use raft_envelope_core::lifecycle::{KeyState, SealBudget};
use raft_envelope_core::wire::{EnvelopeHeader, HEADER_LEN};
use raft_envelope_core::*;

fn ring_with_two_keys() -> (Arc<Keyring>, EnvelopeCipher) {
    let ring = Arc::new(Keyring::new());
    ring.insert(KeyId(1), Algorithm::Aes256Gcm, SecretKey::from_bytes([1; 32])).unwrap();
    ring.insert(KeyId(2), Algorithm::Aes256GcmSiv, SecretKey::from_bytes([2; 32])).unwrap();
    let cipher = EnvelopeCipher::new(cluster("c"), ring.clone());
    (ring, cipher)
}

#[test]
fn inserted_key_is_decrypt_only_until_promoted() {
    let (ring, cipher) = ring_with_two_keys();
    assert_eq!(ring.state(KeyId(1)), Some(KeyState::DecryptOnly));
    assert!(matches!(cipher.seal(ProposalId(1), b"x"), Err(SealError::NoActiveKey)));
    ring.promote(KeyId(1)).unwrap();
    assert!(cipher.seal(ProposalId(1), b"x").is_ok());
}

#[test]
fn exactly_one_key_is_active() {
    let (ring, cipher) = ring_with_two_keys();
    ring.promote(KeyId(1)).unwrap();
    ring.promote(KeyId(2)).unwrap();
    assert_eq!(ring.active_key(), Some(KeyId(2)));
    assert_eq!(ring.state(KeyId(1)), Some(KeyState::DecryptOnly));
    let env = cipher.seal(ProposalId(1), b"x").unwrap();
    assert_eq!(EnvelopeHeader::parse(&env).unwrap().key_id, KeyId(2));
    assert_eq!(EnvelopeHeader::parse(&env).unwrap().algorithm, Algorithm::Aes256GcmSiv);
}

#[test]
fn retired_key_opens_but_never_seals() {
    let (ring, cipher) = ring_with_two_keys();
    ring.promote(KeyId(1)).unwrap();
    let old = cipher.seal(ProposalId(1), b"old").unwrap();
    ring.retire(KeyId(1)).unwrap();
    assert_eq!(ring.state(KeyId(1)), Some(KeyState::DecryptOnly));
    assert!(matches!(cipher.seal(ProposalId(2), b"new"), Err(SealError::NoActiveKey)));
    assert_eq!(cipher.open(&old).unwrap(), b"old");
}

#[test]
fn destroyed_key_gives_its_own_error() {
    let (ring, cipher) = ring_with_two_keys();
    ring.promote(KeyId(1)).unwrap();
    let env = cipher.seal(ProposalId(1), b"x").unwrap();
    ring.destroy(KeyId(1)).unwrap();
    let err = cipher.open(&env).unwrap_err();
    assert!(matches!(err, OpenError::DestroyedKey { key_id: KeyId(1) }), "{err:?}");
    assert_eq!(ring.active_key(), None);
    assert_eq!(ring.promote(KeyId(1)).unwrap_err(), ConfigError::KeyDestroyed(KeyId(1)));
}

#[test]
fn unknown_key_gives_its_own_error() {
    let (ring, cipher) = ring_with_two_keys();
    ring.promote(KeyId(1)).unwrap();
    let env = cipher.seal(ProposalId(1), b"x").unwrap();
    let other = EnvelopeCipher::new(cluster("c"), Arc::new(Keyring::new()));
    assert!(matches!(other.open(&env).unwrap_err(), OpenError::UnknownKey { key_id: KeyId(1) }));
}

#[test]
fn key_ids_are_never_reused() {
    let (ring, _) = ring_with_two_keys();
    ring.destroy(KeyId(1)).unwrap();
    let again = ring.insert(KeyId(1), Algorithm::Aes256Gcm, SecretKey::from_bytes([3; 32]));
    assert_eq!(again.unwrap_err(), ConfigError::DuplicateKeyId(KeyId(1)));
}

#[test]
fn key_material_of_wrong_length_is_refused() {
    assert_eq!(SecretKey::from_slice(&[0; 31]).unwrap_err(), ConfigError::KeyLength { len: 31 });
    assert!(SecretKey::from_slice(&[0; 32]).is_ok());
}

#[test]
fn seal_budget_refuses_before_it_is_spent() {
    let ring = Arc::new(Keyring::new());
    let budget = SealBudget::new(10).with_already_used(6);
    ring.insert_with_budget(KeyId(1), Algorithm::Aes256Gcm, SecretKey::from_bytes([1; 32]), budget).unwrap();
    ring.promote(KeyId(1)).unwrap();
    let cipher = EnvelopeCipher::new(cluster("c"), ring.clone());
    assert_eq!(ring.budget_remaining(KeyId(1)), Some(4));
    for left in (0..4).rev() {
        cipher.seal(ProposalId(1), b"x").unwrap();
        assert_eq!(ring.budget_remaining(KeyId(1)), Some(left));
    }
    let err = cipher.seal(ProposalId(1), b"x").unwrap_err();
    assert!(matches!(err, SealError::BudgetExhausted { key_id: KeyId(1), limit: 10 }), "{err:?}");
    assert_eq!(ring.budget_remaining(KeyId(1)), Some(0));
    // Still opens what it sealed.
    assert_eq!(ring.stats()[0].seals, 4);
}

#[test]
fn low_budget_is_reported_early_enough_to_rotate() {
    let ring = Arc::new(Keyring::new());
    ring.insert_with_budget(
        KeyId(1),
        Algorithm::Aes256Gcm,
        SecretKey::from_bytes([1; 32]),
        SealBudget::new(16),
    )
    .unwrap();
    ring.promote(KeyId(1)).unwrap();
    let cipher = EnvelopeCipher::new(cluster("c"), ring.clone());
    for _ in 0..13 {
        cipher.seal(ProposalId(1), b"x").unwrap();
    }
    assert!(!ring.stats()[0].budget_low, "3 of 16 left is above the 1/8 watermark");
    cipher.seal(ProposalId(1), b"x").unwrap();
    let stats = &ring.stats()[0];
    assert!(stats.budget_low);
    assert_eq!(stats.budget_remaining, 2);
}

#[test]
fn budget_is_capped_at_the_nist_limit() {
    assert_eq!(SealBudget::new(u64::MAX).limit(), SealBudget::NIST_LIMIT);
    assert_eq!(SealBudget::default().limit(), 1 << 32);
}

#[test]
fn nonces_never_repeat_across_threads() {
    let ring = Arc::new(
        Keyring::with_active_key(KeyId(1), Algorithm::Aes256Gcm, SecretKey::from_bytes([1; 32])).unwrap(),
    );
    let cipher = Arc::new(EnvelopeCipher::new(cluster("c"), ring));
    let handles: Vec<_> = (0..8)
        .map(|_| {
            let cipher = cipher.clone();
            std::thread::spawn(move || {
                (0..2000)
                    .map(|_| EnvelopeHeader::parse(&cipher.seal(ProposalId(0), b"x").unwrap()).unwrap().nonce)
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let mut seen = HashSet::new();
    for h in handles {
        for nonce in h.join().unwrap() {
            assert!(seen.insert(nonce), "nonce repeated");
        }
    }
    assert_eq!(seen.len(), 16_000);
}

#[test]
fn seals_racing_rotations_each_use_a_key_that_was_active_and_every_envelope_opens() {
    let ring = Arc::new(Keyring::new());
    ring.insert(KeyId(1), Algorithm::Aes256Gcm, SecretKey::from_bytes([1; 32])).unwrap();
    ring.promote(KeyId(1)).unwrap();
    let cipher = Arc::new(EnvelopeCipher::new(cluster("c"), ring.clone()));
    let sealers: Vec<_> = (0..4)
        .map(|_| {
            let cipher = cipher.clone();
            std::thread::spawn(move || {
                (0..3000).map(|_| cipher.seal(ProposalId(0), b"x").unwrap()).collect::<Vec<_>>()
            })
        })
        .collect();
    for id in 2..=20 {
        ring.insert(KeyId(id), Algorithm::Aes256Gcm, SecretKey::from_bytes([id as u8; 32])).unwrap();
        ring.promote(KeyId(id)).unwrap();
        std::thread::yield_now();
    }
    let envelopes: Vec<Vec<u8>> = sealers.into_iter().flat_map(|h| h.join().unwrap()).collect();
    let mut nonces = HashSet::new();
    for envelope in &envelopes {
        let header = EnvelopeHeader::parse(envelope).unwrap();
        assert!((1..=20).contains(&header.key_id.0));
        assert!(nonces.insert((header.key_id, header.nonce)), "a nonce repeated under one key");
        assert_eq!(cipher.open(envelope).unwrap(), b"x");
    }
    let sealed: u64 = ring.stats().iter().map(|k| k.seals).sum();
    assert_eq!(sealed, envelopes.len() as u64, "every seal is counted under the key it used");
    // Once retired, nothing seals until a key is promoted again.
    ring.retire(KeyId(20)).unwrap();
    assert!(matches!(cipher.seal(ProposalId(0), b"x"), Err(SealError::NoActiveKey)));
}

#[test]
fn nonces_never_repeat_across_replicas_and_restarts() {
    // Each keyring stands for one replica process (or one restart of it) holding the same key.
    let mut seen = HashSet::new();
    for _replica_or_restart in 0..64 {
        let ring =
            Keyring::with_active_key(KeyId(1), Algorithm::Aes256Gcm, SecretKey::from_bytes([1; 32])).unwrap();
        let cipher = EnvelopeCipher::new(cluster("c"), Arc::new(ring));
        for _ in 0..100 {
            let env = cipher.seal(ProposalId(0), b"x").unwrap();
            assert!(seen.insert(EnvelopeHeader::parse(&env).unwrap().nonce), "nonce repeated");
        }
    }
}

#[test]
fn no_key_bytes_in_debug_or_errors() {
    let key_bytes = [0xA7u8; 32];
    let ring = Arc::new(
        Keyring::with_active_key(KeyId(1), Algorithm::Aes256Gcm, SecretKey::from_bytes(key_bytes)).unwrap(),
    );
    let cipher = EnvelopeCipher::new(cluster("c"), ring.clone());
    let env = cipher.seal(ProposalId(1), b"secret payload").unwrap();
    let mut tampered = env.clone();
    tampered[30] ^= 1;
    let open_err = cipher.open(&tampered).unwrap_err();
    let fatal = FatalApplyError::from_open(9, open_err.clone(), Some(3));
    let texts = [
        format!("{:?}", SecretKey::from_bytes(key_bytes)),
        format!("{ring:?}"),
        format!("{cipher:?}"),
        format!("{open_err:?} {open_err}"),
        format!("{fatal:?} {fatal}"),
        format!("{:?}", ring.stats()),
    ];
    let needles = ["a7", "A7", "167", "secret payload"];
    for text in &texts {
        for needle in needles {
            assert!(!text.contains(needle), "{needle:?} found in {text:?}");
        }
    }
    assert!(format!("{fatal}").contains("log index 9"));
    assert!(format!("{fatal}").contains("key#1"));
}

#[test]
fn counters_track_seals_opens_and_failures_per_key() {
    let (ring, cipher) = ring_with_two_keys();
    ring.promote(KeyId(1)).unwrap();
    let env = cipher.seal(ProposalId(1), b"x").unwrap();
    cipher.open(&env).unwrap();
    let mut bad = env.clone();
    bad[HEADER_LEN] ^= 1;
    cipher.open(&bad).unwrap_err();
    let mut unknown = env.clone();
    unknown[4..8].copy_from_slice(&77u32.to_be_bytes());
    cipher.open(&unknown).unwrap_err();

    let stats = ring.stats();
    let k1 = stats.iter().find(|s| s.key_id == KeyId(1)).unwrap();
    assert_eq!((k1.seals, k1.opens), (1, 1));
    assert_eq!(k1.open_failures.get(&FailureReason::AuthenticationFailed), Some(&1));
    let k77 = stats.iter().find(|s| s.key_id == KeyId(77)).unwrap();
    assert_eq!(k77.state, None);
    assert_eq!(k77.open_failures.get(&FailureReason::UnknownKey), Some(&1));
}
