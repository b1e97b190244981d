//! Known-answer vectors (`tests/data/vectors.json`, made by `gen_vectors.py`, an independent
//! implementation of the DESIGN.md layout): pass vectors open to their plaintext, fail vectors
//! fail with their labelled reason.
#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

mod common;

use std::sync::Arc;

use common::hex;
use raft_envelope_core::wire::{EnvelopeHeader, Purpose};
use raft_envelope_core::*;
use serde_json::Value;

fn algorithm(name: &str) -> Algorithm {
    match name {
        "AES-256-GCM" => Algorithm::Aes256Gcm,
        "AES-256-GCM-SIV" => Algorithm::Aes256GcmSiv,
        other => panic!("unknown algorithm {other}"),
    }
}

fn purpose(name: &str) -> Purpose {
    match name {
        "raft-payload" => Purpose::RaftPayload,
        "snapshot" => Purpose::Snapshot,
        "key-wrap" => Purpose::KeyWrap,
        "control" => Purpose::Control,
        other => panic!("unknown purpose {other}"),
    }
}

fn opener(v: &Value) -> EnvelopeCipher {
    let ring = Keyring::new();
    for k in v["keys"].as_array().unwrap() {
        let id = KeyId(u32::try_from(k[0].as_u64().unwrap()).unwrap());
        ring.insert(
            id,
            algorithm(k[1].as_str().unwrap()),
            SecretKey::from_slice(&hex(k[2].as_str().unwrap())).unwrap(),
        )
        .unwrap();
    }
    EnvelopeCipher::new(ClusterId::new(hex(v["open_cluster_id"].as_str().unwrap())).unwrap(), Arc::new(ring))
}

fn vectors() -> Vec<Value> {
    let doc: Value = serde_json::from_str(include_str!("data/vectors.json")).unwrap();
    doc["vectors"].as_array().unwrap().clone()
}

#[test]
fn pass_vectors_open_to_their_plaintext() {
    let pass: Vec<_> = vectors().into_iter().filter(|v| v["expect"] == "pass").collect();
    assert!(pass.len() >= 7);
    for v in pass {
        let env = hex(v["envelope"].as_str().unwrap());
        let header = EnvelopeHeader::parse(&env).unwrap();
        assert_eq!(header.key_id.0 as u64, v["key_id"].as_u64().unwrap());
        assert_eq!(header.proposal_id.0, v["proposal_id"].as_u64().unwrap());
        assert_eq!(header.algorithm, algorithm(v["algorithm"].as_str().unwrap()));
        assert_eq!(header.nonce[..], hex(v["nonce"].as_str().unwrap())[..]);
        let plain = opener(&v).open_for(purpose(v["open_purpose"].as_str().unwrap()), &env);
        assert_eq!(plain.unwrap(), hex(v["plaintext"].as_str().unwrap()), "vector {}", v["name"]);
    }
}

#[test]
fn fail_vectors_fail_with_their_labelled_reason() {
    let fail: Vec<_> = vectors().into_iter().filter(|v| v["expect"] == "fail").collect();
    assert!(fail.len() >= 10);
    for v in fail {
        let env = hex(v["envelope"].as_str().unwrap());
        let err = opener(&v).open_for(purpose(v["open_purpose"].as_str().unwrap()), &env).unwrap_err();
        assert_eq!(err.reason().as_str(), v["reason"].as_str().unwrap(), "vector {}", v["name"]);
    }
}
