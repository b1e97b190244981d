//! Fixed keys, cluster and KEK the targets open with, and the seed inputs made with them.

use std::future::Future;
use std::pin::pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll, Waker};

use raft_envelope_core::lifecycle::LayerSnapshot;
use raft_envelope_core::provider::{FileKekProvider, KekId};
use raft_envelope_core::wire::{ControlCommand, Purpose};
use raft_envelope_core::{
    Algorithm, ClusterId, EnvelopeCipher, KeyId, Keyring, LayerState, PayloadWrapper, ProposalId, SecretKey,
};

/// The cluster every fixture seals for.
pub const CLUSTER: &str = "fuzz-cluster";
/// The key-encryption key id of [`kek`].
pub const KEK_ID: &str = "fuzz-kek";

/// [`CLUSTER`] as a cluster id.
pub fn cluster() -> ClusterId {
    ClusterId::new(CLUSTER).expect("a short cluster id")
}

/// The file KEK every layer state of the targets wraps and unwraps its data keys with.
pub fn kek() -> &'static FileKekProvider {
    static KEK: OnceLock<FileKekProvider> = OnceLock::new();
    KEK.get_or_init(|| {
        FileKekProvider::from_key(KekId::new(KEK_ID).expect("kek id"), SecretKey::from_bytes([0x55; 32]))
            .expect("a file KEK")
    })
}

/// A keyring with key 1 (AES-256-GCM, active), key 2 (AES-256-GCM-SIV, decrypt-only) and key 3
/// (destroyed): every state an opening key can be in.
pub fn keyring() -> Keyring {
    let ring = Keyring::new();
    ring.insert(KeyId(1), Algorithm::Aes256Gcm, SecretKey::from_bytes([0x11; 32])).expect("key 1");
    ring.insert(KeyId(2), Algorithm::Aes256GcmSiv, SecretKey::from_bytes([0x22; 32])).expect("key 2");
    ring.insert(KeyId(3), Algorithm::Aes256Gcm, SecretKey::from_bytes([0x33; 32])).expect("key 3");
    ring.destroy(KeyId(3)).expect("destroy 3");
    ring.promote(KeyId(1)).expect("promote 1");
    ring
}

/// One cipher over [`keyring`] for [`CLUSTER`], shared by every run of a target.
pub fn cipher() -> &'static EnvelopeCipher {
    static CIPHER: OnceLock<EnvelopeCipher> = OnceLock::new();
    CIPHER.get_or_init(|| EnvelopeCipher::new(cluster(), Arc::new(keyring())))
}

/// Drives a future that never waits on anything outside itself (a file KEK's wrap and unwrap,
/// a layer state's prefetch) to its end.
pub fn block_on<F: Future>(future: F) -> F::Output {
    let mut future = pin!(future);
    let mut cx = Context::from_waker(Waker::noop());
    loop {
        if let Poll::Ready(out) = future.as_mut().poll(&mut cx) {
            return out;
        }
        std::thread::yield_now();
    }
}

/// A layer state that applied, from index 1: install key 1 (AES-256-GCM), promote it, enforce
/// (cutover 3), install key 2 (AES-256-GCM-SIV), promote it, retire key 1. Returns the state and
/// the log entries it applied, `(index, bytes)`.
pub fn switched_on() -> (LayerState, Vec<(u64, Vec<u8>)>) {
    let state = LayerState::new(cluster());
    let mut log = Vec::new();
    let mut index = 0;
    let mut append = |state: &LayerState, command: ControlCommand| {
        index += 1;
        let entry = state.encode_entry(ProposalId(index), &command).expect("encode");
        state.apply_control(index, &entry).expect("apply");
        log.push((index, entry));
    };
    let install = block_on(state.generate_install(KeyId(1), Algorithm::Aes256Gcm, kek())).expect("install 1");
    append(&state, install);
    append(&state, ControlCommand::PromoteKey { key_id: KeyId(1) });
    append(&state, ControlCommand::Enforce);
    let install =
        block_on(state.generate_install(KeyId(2), Algorithm::Aes256GcmSiv, kek())).expect("install 2");
    append(&state, install);
    append(&state, ControlCommand::PromoteKey { key_id: KeyId(2) });
    append(&state, ControlCommand::RetireKey { key_id: KeyId(1) });
    (state, log)
}

/// Valid envelopes of every purpose under keys 1 and 2 of [`cipher`], and one under the
/// destroyed key 3 (sealed before it was destroyed, with a keyring of its own).
pub fn envelopes() -> Vec<Vec<u8>> {
    let c = cipher();
    let mut out = Vec::new();
    for (i, purpose) in
        [Purpose::RaftPayload, Purpose::Snapshot, Purpose::KeyWrap, Purpose::Control].into_iter().enumerate()
    {
        let id = ProposalId(i as u64);
        out.push(c.seal_for(purpose, id, b"").expect("seal"));
        out.push(c.seal_for(purpose, id, b"debit 10 from account 7").expect("seal"));
    }
    out.push(c.seal(ProposalId(99), &[0xA5; 300]).expect("seal"));
    for id in [2, 3] {
        let ring = Keyring::new();
        let alg = if id == 2 { Algorithm::Aes256GcmSiv } else { Algorithm::Aes256Gcm };
        ring.insert(KeyId(id), alg, SecretKey::from_bytes([0x11 * id as u8; 32])).expect("key");
        ring.promote(KeyId(id)).expect("promote");
        let sealer = EnvelopeCipher::new(cluster(), Arc::new(ring));
        out.push(sealer.seal(ProposalId(7), b"credit 3").expect("seal"));
    }
    out
}

/// One control entry of every command, in the clear.
pub fn control_entries() -> Vec<Vec<u8>> {
    let (_, log) = switched_on();
    let mut out: Vec<Vec<u8>> = [
        ControlCommand::PromoteKey { key_id: KeyId(4) },
        ControlCommand::RetireKey { key_id: KeyId(4) },
        ControlCommand::DestroyKey { key_id: KeyId(4) },
        ControlCommand::Enforce,
        ControlCommand::Barrier,
        ControlCommand::Checkpoint { through: 41, digest: [0xC4; 32] },
    ]
    .iter()
    .map(ControlCommand::encode)
    .collect();
    // The first install went in the clear (no key was active yet).
    out.push(log[0].1.clone());
    out
}

/// The layer state of [`switched_on`] after some applied envelopes, as a layer snapshot.
pub fn layer_snapshots() -> Vec<Vec<u8>> {
    let (state, _) = switched_on();
    let mut out = vec![LayerSnapshot::default().encode(), state.snapshot().encode()];
    let cipher = state.cipher();
    for (i, index) in (7..12).enumerate() {
        let envelope = cipher.seal(ProposalId(100 + i as u64), b"x").expect("seal");
        state.admit(index, raft_envelope_core::apply::EntryRecord::Envelope(&envelope));
    }
    if let Some(checkpoint) = state.checkpoint_now() {
        let entry = state.encode_entry(state.next_control_id(), &checkpoint).expect("encode");
        state.apply_control(12, &entry).expect("checkpoint");
    }
    out.push(state.snapshot().encode());
    out
}

/// Snapshot frames: one sealed by [`switched_on`]'s state at its applied index, and one in the
/// clear from an inert layer state.
pub fn snapshot_frames() -> Vec<Vec<u8>> {
    let (state, log) = switched_on();
    let last = log.last().map_or(0, |(i, _)| *i);
    let inert = LayerState::new(cluster());
    vec![
        state.seal_snapshot(last, b"the application's state").expect("sealed snapshot"),
        state.seal_snapshot(last, b"").expect("sealed snapshot"),
        inert.seal_snapshot(0, b"state before any key").expect("clear snapshot"),
    ]
}
