//! What the aws-lc-rs choice buys: the same envelope v1 (header, AAD, AES-256-GCM) built on
//! RustCrypto `aes-gcm`, side by side with `EnvelopeCipher` in one run.
//! Results and the command: `BENCHMARKS.md`.
#![allow(missing_docs, clippy::unwrap_used)] // criterion macros generate undocumented items

use std::hint::black_box;
use std::sync::Arc;

use aes_gcm::aead::{AeadInPlace, KeyInit};
use aes_gcm::{Aes256Gcm, Nonce};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use raft_envelope_core::{
    wire::{EnvelopeHeader, HEADER_LEN, TAG_LEN},
    Algorithm, ClusterId, EnvelopeCipher, KeyId, Keyring, PayloadUnwrapper, PayloadWrapper, ProposalId,
    SecretKey,
};

const SIZES: [usize; 4] = [64, 1024, 4096, 65536];
const CLUSTER: &[u8] = b"bench-cluster";

/// Envelope v1 on RustCrypto, written from DESIGN.md §2 (only what the bench needs).
struct RustCryptoEnvelope {
    cipher: Aes256Gcm,
    counter: u64,
}

impl RustCryptoEnvelope {
    fn new(key: &[u8; 32]) -> Self {
        Self { cipher: Aes256Gcm::new_from_slice(key).unwrap(), counter: 0 }
    }

    fn aad(header: &[u8]) -> Vec<u8> {
        let mut aad = header.to_vec();
        aad.push(CLUSTER.len() as u8);
        aad.extend_from_slice(CLUSTER);
        aad
    }

    fn seal_with_nonce(&self, nonce: [u8; 12], proposal: u64, payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(HEADER_LEN + payload.len() + TAG_LEN);
        out.extend_from_slice(&[1, 1, 1, 0]);
        out.extend_from_slice(&1u32.to_be_bytes());
        out.extend_from_slice(&proposal.to_be_bytes());
        out.extend_from_slice(&nonce);
        let aad = Self::aad(&out);
        out.extend_from_slice(payload);
        let tag = self
            .cipher
            .encrypt_in_place_detached(Nonce::from_slice(&nonce), &aad, &mut out[HEADER_LEN..])
            .unwrap();
        out.extend_from_slice(&tag);
        out
    }

    fn seal(&mut self, proposal: u64, payload: &[u8]) -> Vec<u8> {
        self.counter += 1;
        let mut nonce = [0u8; 12];
        nonce[4..].copy_from_slice(&self.counter.to_be_bytes());
        self.seal_with_nonce(nonce, proposal, payload)
    }

    fn open(&self, envelope: &[u8]) -> Vec<u8> {
        let (header, rest) = envelope.split_at(HEADER_LEN);
        let (ciphertext, tag) = rest.split_at(rest.len() - TAG_LEN);
        let mut out = ciphertext.to_vec();
        self.cipher
            .decrypt_in_place_detached(
                Nonce::from_slice(&header[16..28]),
                &Self::aad(header),
                &mut out,
                tag.into(),
            )
            .unwrap();
        out
    }
}

fn ours() -> EnvelopeCipher {
    let ring =
        Keyring::with_active_key(KeyId(1), Algorithm::Aes256Gcm, SecretKey::from_bytes([7; 32])).unwrap();
    EnvelopeCipher::new(ClusterId::new(CLUSTER).unwrap(), Arc::new(ring))
}

fn peer(c: &mut Criterion) {
    // Both implementations make and accept the same bytes.
    let mut rc = RustCryptoEnvelope::new(&[7; 32]);
    let ours = ours();
    let sealed_by_ours = ours.seal(ProposalId(5), b"interop").unwrap();
    assert_eq!(rc.open(&sealed_by_ours), b"interop");
    let nonce = EnvelopeHeader::parse(&sealed_by_ours).unwrap().nonce;
    assert_eq!(rc.seal_with_nonce(nonce, 5, b"interop"), sealed_by_ours);

    let mut seal = c.benchmark_group("peer_seal");
    for size in SIZES {
        let payload = vec![0x5a; size];
        seal.throughput(Throughput::Bytes(size as u64));
        seal.bench_with_input(BenchmarkId::new("aws_lc_rs", size), &payload, |b, p| {
            b.iter(|| black_box(ours.seal(ProposalId(1), p).unwrap()))
        });
        seal.bench_with_input(BenchmarkId::new("rustcrypto_aes_gcm", size), &payload, |b, p| {
            b.iter(|| black_box(rc.seal(1, p)))
        });
    }
    seal.finish();

    let mut open = c.benchmark_group("peer_open");
    for size in SIZES {
        let envelope = ours.seal(ProposalId(1), &vec![0x5a; size]).unwrap();
        open.throughput(Throughput::Bytes(size as u64));
        open.bench_with_input(BenchmarkId::new("aws_lc_rs", size), &envelope, |b, e| {
            b.iter(|| black_box(ours.open(e).unwrap()))
        });
        open.bench_with_input(BenchmarkId::new("rustcrypto_aes_gcm", size), &envelope, |b, e| {
            b.iter(|| black_box(rc.open(e)))
        });
    }
    open.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(40).warm_up_time(std::time::Duration::from_millis(500))
        .measurement_time(std::time::Duration::from_secs(2));
    targets = peer
}
criterion_main!(benches);
