//! Heap allocations on the hot paths, counted with an instrumented global allocator.
//!
//! One `#[test]` only: the allocator is global, so no other test may run in this binary.
#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use std::alloc::System;
use std::sync::Arc;

use raft_envelope_core::*;

use stats_alloc::{Region, StatsAlloc, INSTRUMENTED_SYSTEM};

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

fn allocations(f: impl FnOnce()) -> usize {
    let region = Region::new(GLOBAL);
    f();
    let stats = region.change();
    stats.allocations + stats.reallocations
}

#[test]
fn seal_open_and_decide_allocate_at_most_once_each_and_owned_paths_never() {
    let ring =
        Keyring::with_active_key(KeyId(1), Algorithm::Aes256Gcm, SecretKey::from_bytes([3; 32])).unwrap();
    let cipher = Arc::new(EnvelopeCipher::new(ClusterId::new("c").unwrap(), Arc::new(ring)));
    let gate = ApplyGate::new(Arc::new(Some(10u64))).with_unwrapper(cipher.clone());
    let layer = EnvelopeLayer::new(ApplyGate::inert()).with_wrapper(cipher.clone());
    for size in [0usize, 64, 4096, 65536] {
        let payload = vec![1u8; size];
        // Warm up lazily initialised state (thread locals, the RNG) outside the regions.
        let envelope = cipher.seal(ProposalId(1), &payload).unwrap();
        cipher.open(&envelope).unwrap();

        // An empty plaintext needs no buffer at all.
        let plaintext_buffers = usize::from(size > 0);
        let mut sealed = Vec::new();
        assert_eq!(allocations(|| sealed = cipher.seal(ProposalId(2), &payload).unwrap()), 1, "seal {size}");
        assert_eq!(allocations(|| drop(cipher.open(&sealed).unwrap())), plaintext_buffers, "open {size}");
        assert_eq!(
            allocations(|| drop(gate.decide(11, EntryKind::Envelope, &sealed).unwrap())),
            plaintext_buffers,
            "decide envelope {size}"
        );
        assert_eq!(
            allocations(|| drop(gate.decide(9, EntryKind::Cleartext, &payload).unwrap())),
            0,
            "decide cleartext {size}"
        );
        let owned = payload.clone();
        assert_eq!(allocations(|| drop(layer.prepare(owned).unwrap())), 1, "prepare {size}");
        let owned = sealed.clone();
        assert_eq!(allocations(|| drop(cipher.open_owned(owned).unwrap())), 0, "open in place {size}");
        let owned = sealed.clone();
        assert_eq!(
            allocations(|| drop(gate.decide_owned(11, EntryKind::Envelope, owned).unwrap())),
            0,
            "decide_owned envelope {size}"
        );
        let owned = payload.clone();
        assert_eq!(
            allocations(|| drop(gate.decide_owned(9, EntryKind::Cleartext, owned).unwrap())),
            0,
            "decide_owned cleartext {size}"
        );
        // A buffer an applier keeps from entry to entry, already grown.
        let mut buffer = Vec::with_capacity(size);
        assert_eq!(allocations(|| cipher.open_into(&sealed, &mut buffer).unwrap()), 0, "open_into {size}");
        assert_eq!(buffer, payload);
        assert_eq!(
            allocations(|| assert_eq!(
                gate.decide_into(11, EntryKind::Envelope, &sealed, &mut buffer).unwrap(),
                payload
            )),
            0,
            "decide_into envelope {size}"
        );
    }
}
