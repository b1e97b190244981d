//! Helpers shared by the core's integration tests.
#![allow(dead_code, unreachable_pub)] // each test binary uses a different subset

use std::sync::Arc;

use raft_envelope_core::{Algorithm, ClusterId, EnvelopeCipher, KeyId, Keyring, SecretKey};

pub fn cluster(name: &str) -> ClusterId {
    ClusterId::new(name).expect("short cluster id")
}

pub fn cipher_with(alg: Algorithm) -> EnvelopeCipher {
    let ring = Keyring::with_active_key(KeyId(1), alg, SecretKey::from_bytes([7; 32])).expect("keyring");
    EnvelopeCipher::new(cluster("cluster-a"), Arc::new(ring))
}

pub fn cipher() -> EnvelopeCipher {
    cipher_with(Algorithm::Aes256Gcm)
}

pub fn hex(s: &str) -> Vec<u8> {
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex")).collect()
}
