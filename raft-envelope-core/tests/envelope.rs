//! Envelope format behaviour: round trips, tamper and truncation, confusion, decoder totality.
#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

mod common;

use std::sync::Arc;

use common::{cipher, cipher_with, cluster};
use proptest::prelude::*;
use raft_envelope_core::*;

use raft_envelope_core::error::{ConfigError, FailureReason};
use raft_envelope_core::wire::{EnvelopeHeader, Purpose, HEADER_LEN, OVERHEAD};

#[test]
fn round_trip_at_every_size_and_algorithm() {
    for alg in [Algorithm::Aes256Gcm, Algorithm::Aes256GcmSiv] {
        let c = cipher_with(alg);
        for len in [0usize, 1, 64, 4096, 1 << 20] {
            let payload: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
            let env = c.seal(ProposalId(len as u64), &payload).unwrap();
            assert_eq!(env.len(), len + OVERHEAD, "{alg} {len}");
            assert_eq!(c.open(&env).unwrap(), payload, "{alg} {len}");
        }
    }
}

#[test]
fn header_is_readable_without_a_key() {
    let env = cipher_with(Algorithm::Aes256GcmSiv).seal(ProposalId(99), b"payload").unwrap();
    let h = EnvelopeHeader::parse(&env).unwrap();
    assert_eq!(h.algorithm, Algorithm::Aes256GcmSiv);
    assert_eq!(h.purpose, Purpose::RaftPayload);
    assert_eq!(h.key_id, KeyId(1));
    assert_eq!(h.proposal_id, ProposalId(99));
    assert_eq!(h.to_bytes()[..], env[..HEADER_LEN]);
}

#[test]
fn ciphertext_does_not_contain_the_plaintext() {
    let marker = b"PLAINTEXT-MARKER-0123456789";
    let env = cipher().seal(ProposalId(1), marker).unwrap();
    assert!(!env.windows(marker.len()).any(|w| w == marker));
}

#[test]
fn every_single_bit_flip_is_rejected() {
    for alg in [Algorithm::Aes256Gcm, Algorithm::Aes256GcmSiv] {
        let c = cipher_with(alg);
        let env = c.seal(ProposalId(3), b"sample payload").unwrap();
        for bit in 0..env.len() * 8 {
            let mut t = env.clone();
            t[bit / 8] ^= 1 << (bit % 8);
            assert!(c.open(&t).is_err(), "{alg}: flip of bit {bit} was accepted");
        }
    }
}

#[test]
fn opening_in_place_matches_opening_into_a_new_buffer() {
    for alg in [Algorithm::Aes256Gcm, Algorithm::Aes256GcmSiv] {
        let c = cipher_with(alg);
        for len in [0usize, 1, 64, 4096] {
            let payload: Vec<u8> = (0..len).map(|i| (i % 13) as u8).collect();
            let env = c.seal(ProposalId(1), &payload).unwrap();
            assert_eq!(c.open_owned(env.clone()).unwrap(), c.open(&env).unwrap(), "{alg} {len}");
        }
    }
}

#[test]
fn every_single_bit_flip_is_rejected_in_place_too() {
    let c = cipher();
    let env = c.seal(ProposalId(3), b"sample payload").unwrap();
    for bit in 0..env.len() * 8 {
        let mut t = env.clone();
        t[bit / 8] ^= 1 << (bit % 8);
        let borrowed = c.open(&t).unwrap_err().reason();
        let in_place = c.open_owned(t).unwrap_err().reason();
        assert_eq!(in_place, borrowed, "bit {bit}: both paths must reject it alike");
    }
}

#[test]
fn truncation_at_every_length_is_rejected() {
    let c = cipher();
    let env = c.seal(ProposalId(3), b"sample payload").unwrap();
    for len in 0..env.len() {
        let err = c.open(&env[..len]).unwrap_err();
        let expected =
            if len < OVERHEAD { FailureReason::Malformed } else { FailureReason::AuthenticationFailed };
        assert_eq!(err.reason(), expected, "length {len}");
    }
}

#[test]
fn appended_bytes_are_rejected() {
    let c = cipher();
    let mut env = c.seal(ProposalId(3), b"sample payload").unwrap();
    env.push(0);
    assert_eq!(c.open(&env).unwrap_err().reason(), FailureReason::AuthenticationFailed);
}

#[test]
fn key_id_rewrite_is_rejected() {
    // Two ids with the same material: only the tag stops the rewrite.
    let ring = Arc::new(Keyring::new());
    ring.insert(KeyId(1), Algorithm::Aes256Gcm, SecretKey::from_bytes([5; 32])).unwrap();
    ring.insert(KeyId(2), Algorithm::Aes256Gcm, SecretKey::from_bytes([5; 32])).unwrap();
    ring.promote(KeyId(1)).unwrap();
    let c = EnvelopeCipher::new(cluster("c"), ring);
    let mut env = c.seal(ProposalId(1), b"x").unwrap();
    env[4..8].copy_from_slice(&2u32.to_be_bytes());
    let err = c.open(&env).unwrap_err();
    assert_eq!(err.reason(), FailureReason::AuthenticationFailed);
    assert_eq!(err.key_id(), Some(KeyId(2)));
}

#[test]
fn purpose_confusion_is_rejected() {
    let c = cipher();
    let snapshot = c.seal_for(Purpose::Snapshot, ProposalId(1), b"state").unwrap();
    let err = c.open(&snapshot).unwrap_err();
    assert_eq!(err.reason(), FailureReason::WrongPurpose);
    // Rewriting the purpose byte does not help: the tag binds it.
    let mut forged = snapshot.clone();
    forged[2] = Purpose::RaftPayload.wire_id();
    assert_eq!(c.open(&forged).unwrap_err().reason(), FailureReason::AuthenticationFailed);
    assert_eq!(c.open_for(Purpose::Snapshot, &snapshot).unwrap(), b"state");
}

#[test]
fn cluster_confusion_is_rejected() {
    let ring = Arc::new(
        Keyring::with_active_key(KeyId(1), Algorithm::Aes256Gcm, SecretKey::from_bytes([9; 32])).unwrap(),
    );
    let a = EnvelopeCipher::new(cluster("cluster-a"), ring.clone());
    let b = EnvelopeCipher::new(cluster("cluster-b"), ring);
    let env = a.seal(ProposalId(1), b"x").unwrap();
    assert_eq!(b.open(&env).unwrap_err().reason(), FailureReason::AuthenticationFailed);
    assert_eq!(a.open(&env).unwrap(), b"x");
}

#[test]
fn cluster_id_longer_than_64_bytes_is_refused() {
    assert!(ClusterId::new([0u8; 64]).is_ok());
    assert_eq!(ClusterId::new([0u8; 65]).unwrap_err(), ConfigError::ClusterIdTooLong { len: 65 });
}

#[test]
fn envelope_from_another_keyring_with_other_material_is_rejected() {
    let env = cipher().seal(ProposalId(1), b"x").unwrap();
    let other =
        Keyring::with_active_key(KeyId(1), Algorithm::Aes256Gcm, SecretKey::from_bytes([8; 32])).unwrap();
    let c = EnvelopeCipher::new(cluster("cluster-a"), Arc::new(other));
    assert_eq!(c.open(&env).unwrap_err().reason(), FailureReason::AuthenticationFailed);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn decoder_is_total_on_arbitrary_input(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
        let c = cipher();
        let _ = EnvelopeHeader::parse(&bytes);
        prop_assert!(c.open(&bytes).is_err());
        let gate = ApplyGate::new(Arc::new(Some(0u64))).with_unwrapper(Arc::new(c));
        prop_assert!(gate.decide(1, EntryKind::Envelope, &bytes).is_err());
    }

    #[test]
    fn decoder_is_total_on_mutated_envelopes(
        edits in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..4),
        cut in any::<usize>(),
    ) {
        let c = cipher();
        let mut env = c.seal(ProposalId(1), b"some payload").unwrap();
        // One change per distinct position, so two edits never cancel out.
        let positions: std::collections::BTreeMap<usize, u8> =
            edits.iter().map(|(pos, byte)| (pos % env.len(), byte | 1)).collect();
        for (i, byte) in positions {
            env[i] ^= byte;
        }
        env.truncate(cut % (env.len() + 1));
        prop_assert!(c.open(&env).is_err());
    }
}
