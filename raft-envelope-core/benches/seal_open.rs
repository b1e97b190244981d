//! Seal and open through the public API against raw `aws_lc_rs` AES-256-GCM with a counter
//! nonce, side by side in one run. Results and the command: `BENCHMARKS.md`.
#![allow(missing_docs, clippy::unwrap_used)] // criterion macros generate undocumented items

use std::hint::black_box;
use std::sync::Arc;

use aws_lc_rs::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM};
use criterion::{criterion_group, BenchmarkId, Criterion, Throughput};
use raft_envelope_core::{
    Algorithm, ClusterId, EnvelopeCipher, KeyId, Keyring, PayloadUnwrapper, PayloadWrapper, ProposalId,
    SecretKey,
};

const SIZES: [usize; 4] = [64, 1024, 4096, 65536];

/// The baseline: one AES-256-GCM key and a 96-bit counter nonce, no header, no keyring, no
/// counters. Two shapes: `raw_owned` produces a new owned message per call, as a proposal needs
/// (the like-for-like comparison); `raw_reused_buffer` seals into one reused buffer (the least
/// work any sealer can do, a floor no owned-output API can reach).
struct Raw {
    key: LessSafeKey,
    counter: u64,
}

impl Raw {
    fn new() -> Self {
        Self { key: LessSafeKey::new(UnboundKey::new(&AES_256_GCM, &[7; 32]).unwrap()), counter: 0 }
    }

    fn nonce(&mut self) -> Nonce {
        self.counter += 1;
        let mut n = [0u8; 12];
        n[4..].copy_from_slice(&self.counter.to_be_bytes());
        Nonce::assume_unique_for_key(n)
    }
}

fn cipher() -> EnvelopeCipher {
    let ring =
        Keyring::with_active_key(KeyId(1), Algorithm::Aes256Gcm, SecretKey::from_bytes([7; 32])).unwrap();
    EnvelopeCipher::new(ClusterId::new("bench-cluster").unwrap(), Arc::new(ring))
}

fn seal(c: &mut Criterion) {
    let mut group = c.benchmark_group("seal");
    for size in SIZES {
        let payload = vec![0x5a; size];
        group.throughput(Throughput::Bytes(size as u64));
        let mut raw = Raw::new();
        group.bench_with_input(BenchmarkId::new("raw_owned", size), &payload, |b, p| {
            b.iter(|| {
                let mut out = Vec::with_capacity(p.len() + 16);
                out.extend_from_slice(p);
                let nonce = raw.nonce();
                raw.key.seal_in_place_append_tag(nonce, Aad::from(&b"aad"[..]), &mut out).unwrap();
                black_box(out)
            })
        });
        let mut buf = Vec::with_capacity(size + 16);
        group.bench_with_input(BenchmarkId::new("raw_reused_buffer", size), &payload, |b, p| {
            b.iter(|| {
                buf.clear();
                buf.extend_from_slice(p);
                let nonce = raw.nonce();
                raw.key.seal_in_place_append_tag(nonce, Aad::from(&b"aad"[..]), &mut buf).unwrap();
                black_box(&buf);
            })
        });
        let envelope = cipher();
        group.bench_with_input(BenchmarkId::new("envelope", size), &payload, |b, p| {
            b.iter(|| black_box(envelope.seal(ProposalId(1), p).unwrap()))
        });
    }
    group.finish();
}

fn open(c: &mut Criterion) {
    let mut group = c.benchmark_group("open");
    for size in SIZES {
        let payload = vec![0x5a; size];
        group.throughput(Throughput::Bytes(size as u64));
        let mut raw = Raw::new();
        let nonce_bytes = {
            let mut n = [0u8; 12];
            n[4..].copy_from_slice(&1u64.to_be_bytes());
            n
        };
        let mut sealed = payload.clone();
        let first = raw.nonce();
        raw.key.seal_in_place_append_tag(first, Aad::from(&b"aad"[..]), &mut sealed).unwrap();
        group.bench_with_input(BenchmarkId::new("raw_owned", size), &sealed, |b, s| {
            b.iter(|| {
                let mut out = s.clone();
                let nonce = Nonce::assume_unique_for_key(nonce_bytes);
                let len = raw.key.open_in_place(nonce, Aad::from(&b"aad"[..]), &mut out).unwrap().len();
                out.truncate(len);
                black_box(out)
            })
        });
        let mut buf = Vec::with_capacity(sealed.len());
        group.bench_with_input(BenchmarkId::new("raw_reused_buffer", size), &sealed, |b, s| {
            b.iter(|| {
                buf.clear();
                buf.extend_from_slice(s);
                let nonce = Nonce::assume_unique_for_key(nonce_bytes);
                black_box(raw.key.open_in_place(nonce, Aad::from(&b"aad"[..]), &mut buf).unwrap());
            })
        });
        let envelope = cipher();
        let env = envelope.seal(ProposalId(1), &payload).unwrap();
        group.bench_with_input(BenchmarkId::new("envelope", size), &env, |b, e| {
            b.iter(|| black_box(envelope.open(e).unwrap()))
        });
        // An adapter that owns the entry's buffer opens in place; the copy stands for the entry
        // the engine hands over (the raw in-place baseline copies likewise).
        let mut owned = Vec::with_capacity(env.len());
        group.bench_with_input(BenchmarkId::new("envelope_in_place", size), &env, |b, e| {
            b.iter(|| {
                owned.clear();
                owned.extend_from_slice(e);
                owned = envelope.open_owned(std::mem::take(&mut owned)).unwrap();
                black_box(&owned);
            })
        });
    }
    group.finish();
}

/// Side-by-side ratios that survive a noisy machine: for each size, 41 rounds that each time a
/// batch of raw seals and a batch of envelope seals back to back (order alternating), and the
/// median of the per-round ratios. Printed after the criterion groups.
fn interleaved_ratios() {
    println!("\ninterleaved medians (41 rounds, order alternating), envelope / raw_owned:");
    println!("| size | seal | open | open in place | seal vs raw with the envelope's AAD length |");
    println!("|---|---|---|---|---|");
    for size in SIZES {
        let payload = vec![0x5a; size];
        let batch = (2_000_000 / (size + 256)).max(50);
        let envelope = cipher();
        let sealed = envelope.seal(ProposalId(1), &payload).unwrap();
        let mut raw = Raw::new();
        let mut raw_sealed = payload.clone();
        let first = raw.nonce();
        raw.key.seal_in_place_append_tag(first, Aad::from(&b"aad"[..]), &mut raw_sealed).unwrap();
        let first_nonce = {
            let mut n = [0u8; 12];
            n[4..].copy_from_slice(&1u64.to_be_bytes());
            n
        };
        let time = |f: &mut dyn FnMut()| {
            let t = std::time::Instant::now();
            for _ in 0..batch {
                f();
            }
            t.elapsed().as_secs_f64()
        };
        let mut ratios: [Vec<f64>; 4] = Default::default();
        // The envelope authenticates header ‖ cluster id: 28 + 1 + 13 bytes here.
        let long_aad = [0x42u8; 42];
        for round in 0..41 {
            let mut raw_seal = || {
                let mut out = Vec::with_capacity(payload.len() + 16);
                out.extend_from_slice(&payload);
                let nonce = raw.nonce();
                raw.key.seal_in_place_append_tag(nonce, Aad::from(&b"aad"[..]), &mut out).unwrap();
                black_box(out);
            };
            let mut env_seal = || drop(black_box(envelope.seal(ProposalId(1), &payload).unwrap()));
            let (a, b) = if round % 2 == 0 {
                let a = time(&mut raw_seal);
                (a, time(&mut env_seal))
            } else {
                let b = time(&mut env_seal);
                (time(&mut raw_seal), b)
            };
            ratios[0].push(b / a);
            let mut raw_seal_long_aad = || {
                let mut out = Vec::with_capacity(payload.len() + 16);
                out.extend_from_slice(&payload);
                let nonce = raw.nonce();
                raw.key.seal_in_place_append_tag(nonce, Aad::from(&long_aad[..]), &mut out).unwrap();
                black_box(out);
            };
            let c = time(&mut raw_seal_long_aad);
            ratios[3].push(time(&mut env_seal) / c);
            let mut raw_open = || {
                let mut out = raw_sealed.clone();
                let n = Nonce::assume_unique_for_key(first_nonce);
                black_box(raw.key.open_in_place(n, Aad::from(&b"aad"[..]), &mut out).unwrap());
            };
            let mut env_open = || drop(black_box(envelope.open(&sealed).unwrap()));
            let mut env_in_place = || drop(black_box(envelope.open_owned(sealed.clone()).unwrap()));
            let a = time(&mut raw_open);
            ratios[1].push(time(&mut env_open) / a);
            ratios[2].push(time(&mut env_in_place) / a);
        }
        let median = |v: &mut Vec<f64>| {
            v.sort_by(f64::total_cmp);
            v[v.len() / 2]
        };
        let [s, o, i, l] = &mut ratios;
        println!(
            "| {size} B | {:.2}× | {:.2}× | {:.2}× | {:.2}× |",
            median(s),
            median(o),
            median(i),
            median(l)
        );
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(60).warm_up_time(std::time::Duration::from_millis(500))
        .measurement_time(std::time::Duration::from_secs(2));
    targets = seal, open
}
fn main() {
    benches();
    Criterion::default().configure_from_args().final_summary();
    // Only under `cargo bench` (criterion's test mode runs each benchmark once and stops here).
    if std::env::args().any(|a| a == "--bench") {
        interleaved_ratios();
    }
}
