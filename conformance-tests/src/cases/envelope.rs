//! R5 Envelope: self-describing, bound to purpose and cluster, total decoder, published vectors.

use std::sync::Arc;

use raft_envelope_core::{
    error::FailureReason,
    wire::{EnvelopeHeader, Purpose},
    Algorithm, ApplyGate, ClusterId, Cutover, EntryKind, EnvelopeCipher, KeyId, Keyring, PayloadUnwrapper,
    PayloadWrapper, ProposalId, SecretKey,
};

use super::support::{Env, Fixture, Role, PRIMARY};
use crate::harness::{Cluster, ClusterBuilder, StoredEntry};
use crate::Outcome;

/// The core's published test vectors (`raft-envelope-core/tests/data/vectors.json`).
const VECTORS: &str = include_str!("../../../raft-envelope-core/tests/data/vectors.json");

fn hex(s: &str) -> Vec<u8> {
    (0..s.len() / 2).map(|i| u8::from_str_radix(&s[2 * i..2 * i + 2], 16).expect("hex")).collect()
}

fn text<'a>(v: &'a serde_json::Value, field: &str) -> &'a str {
    v[field].as_str().unwrap_or_else(|| panic!("vector field {field}"))
}

fn purpose(name: &str) -> Purpose {
    match name {
        "raft-payload" => Purpose::RaftPayload,
        "snapshot" => Purpose::Snapshot,
        "key-wrap" => Purpose::KeyWrap,
        _ => Purpose::Control,
    }
}

/// A cipher holding every key a vector lists, for the cluster it is opened in.
fn vector_cipher(v: &serde_json::Value) -> EnvelopeCipher {
    let ring = Keyring::new();
    for key in v["keys"].as_array().expect("keys") {
        let id = KeyId(u32::try_from(key[0].as_u64().expect("key id")).expect("u32 key id"));
        let algorithm = match key[1].as_str().expect("algorithm") {
            "AES-256-GCM" => Algorithm::Aes256Gcm,
            _ => Algorithm::Aes256GcmSiv,
        };
        let material = SecretKey::from_slice(&hex(key[2].as_str().expect("key"))).expect("32 bytes");
        ring.insert(id, algorithm, material).expect("insert");
    }
    EnvelopeCipher::new(ClusterId::new(hex(text(v, "open_cluster_id"))).expect("cluster"), Arc::new(ring))
}

/// R5: every published vector opens (pass) or fails with its documented reason (fail), through
/// the cipher and through the apply gate; one pass vector is then written into a replica's log
/// and must reach its state machine as the documented plaintext.
pub fn known_answer_vectors<B: ClusterBuilder>(builder: &B) -> Outcome {
    let doc: serde_json::Value = serde_json::from_str(VECTORS).expect("vectors.json");
    let vectors = doc["vectors"].as_array().expect("vectors");
    let (mut pass, mut fail) = (0, 0);
    for v in vectors {
        let name = text(v, "name");
        let cipher = vector_cipher(v);
        let envelope = hex(text(v, "envelope"));
        let opened = cipher.open_for(purpose(text(v, "open_purpose")), &envelope);
        let header = EnvelopeHeader::parse(&envelope);
        match text(v, "expect") {
            "pass" => {
                pass += 1;
                assert_eq!(opened.expect(name), hex(text(v, "plaintext")), "vector {name}");
                let header = header.expect("a pass vector's header parses");
                assert_eq!(u64::from(header.key_id.0), v["key_id"].as_u64().expect("key_id"), "{name}");
                assert_eq!(header.proposal_id.0, v["proposal_id"].as_u64().expect("proposal_id"), "{name}");
                if header.purpose == Purpose::RaftPayload {
                    let gate = ApplyGate::new(Arc::new(Cutover::at(1))).with_unwrapper(Arc::new(cipher));
                    let d = gate.decide(2, EntryKind::Envelope, &envelope).expect(name);
                    assert_eq!(d.as_bytes(), hex(text(v, "plaintext")), "vector {name} through the gate");
                }
            }
            _ => {
                fail += 1;
                let err = opened.expect_err(name);
                assert_eq!(err.reason().as_str(), text(v, "reason"), "vector {name}");
                if text(v, "open_purpose") == "raft-payload" {
                    let gate = ApplyGate::new(Arc::new(Cutover::at(1))).with_unwrapper(Arc::new(cipher));
                    let halt = gate.decide(2, EntryKind::Envelope, &envelope).expect_err(name);
                    assert_eq!(halt.reason.as_str(), text(v, "reason"), "vector {name} through the gate");
                }
            }
        }
    }
    assert!(pass >= 5 && fail >= 5, "expected pass and fail vectors, got {pass} and {fail}");

    let caps = builder.capabilities();
    if !(caps.raw_log && caps.restart) {
        return Outcome::Skipped("vectors checked; the engine part needs `raw_log` and `restart`".into());
    }
    let v = vectors.iter().find(|v| text(v, "name") == "gcm_short_payload").expect("gcm_short_payload");
    let mut env = Env::start(builder);
    env.switch_on();
    let h = env.halt_follower_fresh();
    tracing::info!("--- write vector gcm_short_payload at {} on node {}", h.index, h.node);
    env.cluster.write_entry(h.node, h.index, StoredEntry::envelope(hex(text(v, "envelope")))).expect("write");
    env.restart(h.node, Some(Arc::new(vector_cipher(v))), true);
    env.wait_applied(h.node, h.index);
    let applied = env.payloads(h.node).pop().expect("applied");
    assert_eq!(
        (applied.index, applied.bytes),
        (h.index, hex(text(v, "plaintext"))),
        "engine decode of the vector"
    );
    Outcome::Passed
}

/// A small deterministic generator (xorshift64*), so failures reproduce.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// R5: the decoder and the gate never panic and accept nothing but the genuine envelope, over
/// every prefix of an envelope, 4,000 random inputs and 4,000 random mutations; a garbage entry in
/// a replica's log halts it with `Malformed`.
pub fn decoder_total_on_arbitrary_input<B: ClusterBuilder>(builder: &B) -> Outcome {
    let fx = Fixture::new(None);
    let cipher = fx.standard_cipher();
    let gate = ApplyGate::new(Arc::new(Cutover::at(10))).with_unwrapper(cipher.clone());
    let genuine = cipher.seal(ProposalId(9), b"the genuine one").expect("seal");
    let mut inputs: Vec<Vec<u8>> = (0..genuine.len()).map(|n| genuine[..n].to_vec()).collect();
    let mut rng = Rng(0x5eed_1234_abcd_0001);
    for _ in 0..4_000 {
        let len = rng.below(120);
        let mut input: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
        if let Some(first) = input.first_mut() {
            *first = [0, 1, 2, *first][rng.below(4)];
        }
        inputs.push(input);
    }
    for _ in 0..4_000 {
        let mut input = genuine.clone();
        for _ in 0..=rng.below(4) {
            let at = rng.below(input.len());
            input[at] = rng.next() as u8;
        }
        match rng.below(3) {
            0 => input.truncate(rng.below(input.len() + 1)),
            1 => input.extend((0..rng.below(20)).map(|_| rng.next() as u8)),
            _ => {}
        }
        inputs.push(input);
    }
    tracing::info!("--- decode {} arbitrary inputs", inputs.len());
    for input in &inputs {
        let _ = EnvelopeHeader::parse(input);
        let genuine_input = *input == genuine;
        assert_eq!(cipher.open(input).is_ok(), genuine_input, "only the genuine envelope may open");
        for index in [9, 11] {
            let d = gate.decide(index, EntryKind::Envelope, input);
            assert_eq!(d.is_ok(), genuine_input, "only the genuine envelope may pass the gate");
        }
    }

    let mut env = Env::start(builder);
    env.switch_on();
    let inj = match env.inject(StoredEntry::envelope(vec![1, 1, 1])) {
        Ok(inj) => inj,
        Err(Outcome::Skipped(why)) => return Outcome::Skipped(format!("decoder checked; engine part {why}")),
        Err(other) => return other,
    };
    env.assert_injection_halts(&inj, Some(FailureReason::Malformed));
    Outcome::Passed
}

/// R5: purpose is bound: an envelope made for a snapshot, a key wrap or a control entry is never
/// opened as a Raft payload, nor the other way round.
pub fn purpose_confusion_rejected<B: ClusterBuilder>(_builder: &B) -> Outcome {
    let fx = Fixture::new(None);
    let cipher = fx.standard_cipher();
    let gate = ApplyGate::new(Arc::new(Cutover::at(10))).with_unwrapper(cipher.clone());
    let as_payload = cipher.seal(ProposalId(1), b"payload").expect("seal");
    for other in [Purpose::Snapshot, Purpose::KeyWrap, Purpose::Control] {
        let envelope = cipher.seal_for(other, ProposalId(1), b"other use").expect("seal_for");
        assert_eq!(cipher.open_for(other, &envelope).expect("own purpose opens"), b"other use");
        let err = cipher.open(&envelope).expect_err("another purpose must not open as a payload");
        assert_eq!(err.reason(), FailureReason::WrongPurpose, "{other}");
        for index in [9, 11] {
            let halt = gate.decide(index, EntryKind::Envelope, &envelope).expect_err("must halt");
            assert_eq!(halt.reason, FailureReason::WrongPurpose, "{other} at {index}");
        }
        let err = cipher.open_for(other, &as_payload).expect_err("a payload must not open as another use");
        assert_eq!(err.reason(), FailureReason::WrongPurpose, "payload opened as {other}");
        let mut relabelled = envelope.clone();
        relabelled[2] = Purpose::RaftPayload.wire_id();
        let err = cipher.open(&relabelled).expect_err("a relabelled purpose byte must not open");
        assert_eq!(err.reason(), FailureReason::AuthenticationFailed, "{other} relabelled");
    }
    Outcome::Passed
}

/// R5: the cluster identity is bound: the same key in another cluster (including identities that
/// differ only by length or a trailing byte) never opens.
pub fn cluster_confusion_rejected<B: ClusterBuilder>(_builder: &B) -> Outcome {
    let fx = Fixture::new(None);
    let names: [&[u8]; 5] = [b"a", b"ab", b"a\0", b"", b"b"];
    let ciphers: Vec<_> = names
        .iter()
        .map(|n| EnvelopeCipher::new(ClusterId::new(n).expect("id"), fx.ring(&[(PRIMARY, Role::Active)])))
        .collect();
    for (i, sealer) in ciphers.iter().enumerate() {
        let envelope = sealer.seal(ProposalId(1), b"cluster bound").expect("seal");
        for (j, opener) in ciphers.iter().enumerate() {
            let result = opener.open(&envelope);
            if i == j {
                assert_eq!(result.expect("same cluster opens"), b"cluster bound");
            } else {
                let err = result.expect_err("another cluster must not open");
                assert_eq!(err.reason(), FailureReason::AuthenticationFailed, "{i} -> {j}");
                let gate = ApplyGate::inert().with_unwrapper(Arc::new(opener.clone()));
                assert!(gate.decide(1, EntryKind::Envelope, &envelope).is_err(), "{i} -> {j} via the gate");
            }
        }
    }
    Outcome::Passed
}
