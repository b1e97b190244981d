//! Key lifecycle through the log on raft-rs: keys and the cutover change only through layer
//! control entries (install, promote, enforce, retire, destroy), applied at the same index on
//! every replica, never reaching the user's state machine.
#![allow(clippy::unwrap_used)] // reason: tests fail loudly on any unexpected error

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;

use raft::eraftpb::{Entry, Message, MessageType, Snapshot};
use raft_envelope_core::{
    is_clear_control_entry, Algorithm, ClusterId, ControlCommand, EntryKind, EnvelopeHeader, FailureReason,
    FileKekProvider, KekId, KeyId, KeyProvider, KeyState, LayerState, PayloadUnwrapper, ProposalId, Purpose,
    SecretKey,
};
use raft_envelope_raftrs::framing::{classify, is_layer_control, ContextMarker};
use raft_envelope_raftrs::testing::{block_on, Cluster, ClusterConfig, ClusterError, KvStore};
use raft_envelope_raftrs::{ProposeError, StepError};

mod common;

const KEK_BYTES: u8 = 7;

fn kek_id() -> KekId {
    KekId::new("kek-1").unwrap()
}

fn provider(byte: u8) -> Arc<dyn KeyProvider> {
    Arc::new(FileKekProvider::from_key(kek_id(), SecretKey::from_bytes([byte; 32])).unwrap())
}

/// A 3-node cluster whose node `k` unwraps with `kek_bytes[k]`; returns it and the layer states.
fn cluster(kek_bytes: [u8; 3]) -> (Cluster<KvStore>, Vec<Arc<LayerState>>) {
    let states: Vec<Arc<LayerState>> =
        (0..3).map(|_| Arc::new(LayerState::new(ClusterId::new("lifecycle").unwrap()))).collect();
    let nodes = states.iter().zip(kek_bytes).map(|(s, b)| (s.clone(), provider(b))).collect();
    let c = Cluster::with_layer_states(ClusterConfig::default(), nodes, |_| KvStore::default()).unwrap();
    (c, states)
}

fn enable(c: &mut Cluster<KvStore>) -> u64 {
    c.enable_encryption(provider(KEK_BYTES).as_ref(), &kek_id(), Algorithm::Aes256Gcm).unwrap()
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// Every index node `id` stores that holds a layer control entry.
fn control_indexes(c: &Cluster<KvStore>, id: u64) -> BTreeSet<u64> {
    (1..=c.stored_last_index(id).unwrap())
        .filter(|i| c.read_entry(id, *i).unwrap().is_some_and(|e| is_layer_control(&e)))
        .collect()
}

fn assert_identical_layer_states(c: &Cluster<KvStore>, states: &[Arc<LayerState>]) {
    let expected = states[0].snapshot();
    for (k, s) in states.iter().enumerate() {
        assert_eq!(s.snapshot(), expected, "node {}: layer state differs", k + 1);
    }
    for id in c.ids() {
        assert_eq!(c.encryption_status_of(id).unwrap().keys, expected.keys);
    }
}

#[test]
fn enable_through_control_entries_seals_everywhere_and_control_never_reaches_the_state_machine() {
    let (mut c, states) = cluster([KEK_BYTES; 3]);
    c.propose(b"before=clear".to_vec()).unwrap();
    let before = c.encryption_status().unwrap();
    assert_eq!((before.cutover, before.active_key, before.keys.len()), (None, None, 0));

    let cutover = enable(&mut c);
    let status = c.encryption_status().unwrap();
    assert_eq!(status.cutover, Some(cutover));
    assert_eq!(status.active_key, Some(KeyId(1)));
    assert_eq!(status.keys.len(), 1);
    let install_at = status.keys[0].installed_at;
    assert!(install_at < cutover);
    for id in c.ids() {
        assert!(c.node(id).unwrap().layer().is_sealing(), "node {id} seals after the promote");
        assert_eq!(c.node(id).unwrap().layer().gate().cutover(), Some(cutover));
    }

    // Writes through the leader and through both followers (forwarded envelopes).
    let leader = c.wait_leader().unwrap();
    for (k, via) in c.ids().into_iter().enumerate() {
        c.propose_via(via, format!("secret{k}=xyzzy{k}").into_bytes()).unwrap();
    }
    c.wait_converged(leader).unwrap();
    for id in c.ids() {
        assert!(c.halted(id).unwrap().is_none(), "node {id} halted");
        let sm = c.state_machine(id).unwrap();
        assert_eq!(sm.get("before"), Some("clear"));
        for k in 0..3 {
            assert_eq!(sm.get(&format!("secret{k}")), Some(format!("xyzzy{k}").as_str()));
        }
        // Above C: only envelopes and control entries, and no plaintext in the stored bytes.
        for i in cutover + 1..=c.stored_last_index(id).unwrap() {
            let e = c.read_entry(id, i).unwrap().unwrap();
            assert_ne!(classify(&e), EntryKind::Cleartext, "node {id}: cleartext at {i} > C");
            assert!(!contains(&e.data, b"xyzzy"), "node {id}: plaintext stored at {i}");
        }
    }

    // The control entries: install and promote in the clear (no key yet), enforce sealed under
    // the new key, and the enforce is the cutover.
    let controls = control_indexes(&c, leader);
    assert_eq!(controls.len(), 3, "install, promote, enforce");
    assert_eq!(controls.iter().next_back(), Some(&cutover));
    assert_eq!(controls.iter().next(), Some(&install_at));
    for i in &controls {
        let data = c.read_entry(leader, *i).unwrap().unwrap().data;
        if *i == cutover {
            let header = EnvelopeHeader::parse(&data).unwrap();
            assert_eq!((header.purpose, header.key_id), (Purpose::Control, KeyId(1)));
        } else {
            assert!(is_clear_control_entry(&data));
        }
    }

    // Never in the user's state machine: exactly our four payloads, none at a control index.
    for id in c.ids() {
        let payloads = c.state_machine(id).unwrap().payloads();
        assert_eq!(payloads.len(), 4, "node {id}");
        assert!(payloads.iter().all(|(i, _)| !controls.contains(i)), "node {id}: control entry applied");
        assert!(payloads.iter().all(|(_, p)| p.contains(&b'=')));
    }
    assert_identical_layer_states(&c, &states);
    assert_eq!(states[0].keys()[0].sealed_entries, 4, "enforce + 3 payloads sealed under key 1");

    // Idempotent: enabling again returns the same cutover and appends nothing.
    let last = c.node(leader).unwrap().last_index();
    assert_eq!(enable(&mut c), cutover);
    assert_eq!(c.node(leader).unwrap().last_index(), last);
}

#[test]
fn rotation_under_load_never_halts_and_old_entries_still_open() {
    let (c, states) = cluster([KEK_BYTES; 3]);
    let cluster = Mutex::new(c);
    let cutover = enable(&mut cluster.lock().unwrap());
    const WRITERS: usize = 6;
    const EACH: usize = 6;
    let done = AtomicUsize::new(0);
    let acked = Mutex::new(Vec::new());
    let mut rotated = Vec::new();
    thread::scope(|scope| {
        for w in 0..WRITERS {
            let (cluster, done, acked) = (&cluster, &done, &acked);
            scope.spawn(move || {
                for k in 0..EACH {
                    let payload = format!("w{w}k{k}=v").into_bytes();
                    let index = common::write_until_applied(
                        cluster,
                        &payload,
                        |_| 1 + ((w + k) % 3) as u64,
                        || {},
                        &format!("writer {w}"),
                    );
                    acked.lock().unwrap().push((payload, index));
                    done.fetch_add(1, Ordering::SeqCst);
                }
            });
        }
        for round in 1..=2 {
            while done.load(Ordering::SeqCst) < WRITERS * EACH * round / 3 {
                thread::yield_now();
            }
            let mut c = cluster.lock().unwrap();
            rotated.push(c.rotate_key(provider(KEK_BYTES).as_ref(), Algorithm::Aes256GcmSiv).unwrap());
            // At least one payload under each new key, whatever the writers' timing.
            c.propose(format!("rotation{round}=done").into_bytes()).unwrap();
        }
    });
    let mut c = cluster.into_inner().unwrap();
    assert_eq!(rotated, vec![KeyId(2), KeyId(3)]);
    let leader = c.wait_leader().unwrap();
    c.wait_converged(leader).unwrap();
    let acked = acked.into_inner().unwrap();
    assert_eq!(acked.len(), WRITERS * EACH);
    for id in c.ids() {
        assert!(c.halted(id).unwrap().is_none(), "node {id} halted");
        let payloads = c.state_machine(id).unwrap().payloads();
        for (p, index) in &acked {
            let at: Vec<_> = payloads.iter().filter(|(_, b)| b == p).map(|(i, _)| *i).collect();
            assert_eq!(at, vec![*index], "node {id}: applied exactly once at its index");
        }
    }
    let status = c.encryption_status().unwrap();
    assert_eq!(status.cutover, Some(cutover));
    assert_eq!(status.active_key, Some(KeyId(3)));
    let states_of: Vec<KeyState> = status.keys.iter().map(|k| k.state).collect();
    assert_eq!(states_of, vec![KeyState::DecryptOnly, KeyState::DecryptOnly, KeyState::Active]);
    assert!(status.keys.iter().all(|k| k.sealed_entries > 0), "every key sealed something: {status:?}");
    assert_identical_layer_states(&c, &states);

    // Old entries still open on every replica after the rotations: each envelope in the log,
    // under whichever key sealed it.
    let mut by_key = BTreeSet::new();
    for i in cutover + 1..=c.stored_last_index(leader).unwrap() {
        let e = c.read_entry(leader, i).unwrap().unwrap();
        if classify(&e) == EntryKind::Envelope {
            by_key.insert(EnvelopeHeader::parse(&e.data).unwrap().key_id);
            for s in &states {
                assert!(s.cipher().open(&e.data).is_ok(), "entry {i} opens");
            }
        }
    }
    assert_eq!(by_key, BTreeSet::from([KeyId(1), KeyId(2), KeyId(3)]));
}

#[test]
fn replica_without_the_kek_halts_at_the_install_entry_and_resumes_after_restart_with_it() {
    let (mut c, states) = cluster([KEK_BYTES, KEK_BYTES, 99]);
    let cutover = enable(&mut c);
    let install_at = c.encryption_status().unwrap().keys[0].installed_at;

    let halt = c.halted(3).unwrap().expect("node 3 cannot unwrap the key: it halts");
    assert_eq!(halt.index, install_at);
    assert_eq!(halt.reason, FailureReason::KeyUnavailable);
    assert_eq!(halt.key_id, Some(KeyId(1)));
    assert_eq!(c.applied(3).unwrap(), install_at - 1, "nothing of the install entry applied");
    assert!(states[2].keys().is_empty());
    assert!(!format!("{halt} {halt:?}").contains("0707"), "no key bytes in the error");

    // The others keep going.
    c.propose(b"during=halt".to_vec()).unwrap();
    assert_eq!(c.state_machine(1).unwrap().get("during"), Some("halt"));

    // Sticky: a restart still without the KEK halts at the same entry.
    c.restart_with_provider(3, provider(98)).unwrap();
    assert_eq!(
        c.halted(3).unwrap().map(|h| (h.index, h.reason)),
        Some((install_at, FailureReason::KeyUnavailable))
    );

    // Given the KEK, it resumes from the install entry and converges.
    c.restart_with_provider(3, provider(KEK_BYTES)).unwrap();
    let leader = c.wait_leader().unwrap();
    c.wait_converged(leader).unwrap();
    assert!(c.halted(3).unwrap().is_none());
    assert_eq!(c.state_machine(3).unwrap().get("during"), Some("halt"));
    assert_eq!(states[2].cutover(), Some(cutover));
    assert_identical_layer_states(&c, &states);
}

#[test]
fn destroyed_key_old_envelope_above_cutover_halts_that_replica() {
    let (mut c, states) = cluster([KEK_BYTES; 3]);
    enable(&mut c);
    let old = c.propose(b"old=1".to_vec()).unwrap();
    let leader = c.wait_leader().unwrap();
    let old_entry = c.read_entry(leader, old.index).unwrap().unwrap();
    assert_eq!(EnvelopeHeader::parse(&old_entry.data).unwrap().key_id, KeyId(1));

    let new = c.rotate_key(provider(KEK_BYTES).as_ref(), Algorithm::Aes256Gcm).unwrap();
    assert_eq!(new, KeyId(2));
    c.destroy_key(KeyId(1)).unwrap();
    c.wait_converged(leader).unwrap();
    for s in &states {
        assert_eq!(s.keyring().state(KeyId(1)), Some(KeyState::Destroyed));
        assert_eq!(s.keys()[0].wrapped_key, None);
    }
    assert_identical_layer_states(&c, &states);

    // Node 3 stores a new entry without applying it; its disk is then given the old envelope.
    c.hold_commit(3, true).unwrap();
    let victim = c.node_mut(leader).unwrap().propose(b"new=2".to_vec()).unwrap();
    let (index, _) = victim.appended_at.unwrap();
    assert!(c.wait_until(|c| c.stored_last_index(3).unwrap() >= index && c.applied(1).unwrap() >= index));
    c.write_entry(3, index, old_entry.data.to_vec(), old_entry.context.to_vec()).unwrap();
    c.hold_commit(3, false).unwrap();
    c.wait_applied(3, index).unwrap();

    let halt = c.halted(3).unwrap().expect("node 3 halts on the envelope under the destroyed key");
    assert_eq!((halt.index, halt.reason, halt.key_id), (index, FailureReason::DestroyedKey, Some(KeyId(1))));
    assert_eq!(c.applied(3).unwrap(), index - 1);
    assert!(c.state_machine(3).unwrap().get("new").is_none());
    for id in [1, 2] {
        assert!(c.halted(id).unwrap().is_none());
        assert_eq!(c.state_machine(id).unwrap().get("new"), Some("2"));
    }
}

#[test]
fn admin_commands_are_proposed_on_the_leader_only_and_the_active_key_is_not_retired() {
    let (mut c, _states) = cluster([KEK_BYTES; 3]);
    enable(&mut c);
    let leader = c.wait_leader().unwrap();
    let follower = c.ids().into_iter().find(|i| *i != leader).unwrap();
    let e = c.node_mut(follower).unwrap().propose_control(&ControlCommand::Enforce);
    assert!(matches!(e, Err(ProposeError::NotLeader { .. })), "{e:?}");

    // Retiring the active key is refused (above C nothing could seal a later promote); after a
    // rotation the old key is decrypt-only already and retiring it changes nothing.
    let refused = c.retire_key(KeyId(1)).unwrap_err();
    assert!(matches!(refused, ClusterError::RetireActiveKey(KeyId(1))), "{refused:?}");
    c.rotate_key(provider(KEK_BYTES).as_ref(), Algorithm::Aes256Gcm).unwrap();
    c.retire_key(KeyId(1)).unwrap();
    let status = c.encryption_status().unwrap();
    assert_eq!(status.active_key, Some(KeyId(2)));
    assert_eq!(status.keys[0].state, KeyState::DecryptOnly);
    c.propose(b"x=1".to_vec()).unwrap();
}

fn forwarded(from: u64, to: u64, entry: Entry) -> Message {
    let mut m = Message::default();
    m.set_msg_type(MessageType::MsgPropose);
    m.from = from;
    m.to = to;
    m.mut_entries().push(entry);
    m
}

/// Between appending the promote and applying it, a node that does not seal yet refuses
/// cleartext, from its own proposer and forwarded: an enforce may follow the promote, and a
/// cleartext entry appended now could land above it.
#[test]
fn cleartext_is_refused_while_a_control_entry_is_unapplied_and_forwarded_control_is_refused() {
    let (mut c, _states) = cluster([KEK_BYTES; 3]);
    let leader = c.wait_leader().unwrap();
    let follower = c.ids().into_iter().find(|i| *i != leader).unwrap();
    let kek = provider(KEK_BYTES);
    let node = c.node_mut(leader).unwrap();
    let (key_id, _) = block_on(node.propose_install(kek.as_ref(), Algorithm::Aes256Gcm)).unwrap();
    // Install appended, not applied: cleartext refused, retryable, nothing appended.
    let last = node.last_index();
    let refused = node.propose(b"x=1".to_vec()).unwrap_err();
    assert!(matches!(refused, ProposeError::ControlPending) && refused.is_retryable(), "{refused:?}");
    let step =
        node.step(forwarded(follower, leader, Entry { data: b"y=1".to_vec().into(), ..Default::default() }));
    assert!(matches!(step, Err(StepError::CleartextProposalRefused { .. })), "{step:?}");
    assert_eq!(node.last_index(), last);
    c.settle();
    c.propose(b"x=1".to_vec()).unwrap(); // applied: no key active yet, cleartext again
    let node = c.node_mut(leader).unwrap();
    node.propose_control(&ControlCommand::PromoteKey { key_id }).unwrap();
    assert!(matches!(node.propose(b"x=2".to_vec()), Err(ProposeError::ControlPending)));
    c.settle();
    // Applied: the node seals.
    let applied = c.propose(b"x=2".to_vec()).unwrap();
    let stored = c.read_entry(leader, applied.index).unwrap().unwrap();
    assert_eq!(classify(&stored), EntryKind::Envelope);

    // A forwarded layer control entry is refused (admin commands are proposed on the leader).
    let mut forged = Entry { data: ControlCommand::Enforce.encode().into(), ..Default::default() };
    forged.context = ContextMarker::layer_control(ProposalId(1)).encode().into();
    let step = c.node_mut(leader).unwrap().step(forwarded(follower, leader, forged));
    assert!(matches!(step, Err(StepError::ControlProposalRefused { .. })), "{step:?}");
    assert_eq!(c.encryption_status().unwrap().cutover, None);
}

/// A layer control entry in the clear above the cutover (appended around the layer) halts every
/// replica with `cleartext_above_cutover` and reaches no state machine.
#[test]
fn clear_control_entry_above_cutover_halts_and_reaches_no_state_machine() {
    let (mut c, states) = cluster([KEK_BYTES; 3]);
    enable(&mut c);
    let context = ContextMarker::layer_control(ProposalId(1)).encode();
    let destroy = ControlCommand::DestroyKey { key_id: KeyId(1) }.encode();
    let index = c.append_unchecked(context, destroy).unwrap();
    c.settle();
    for id in c.ids() {
        let halt = c.halted(id).unwrap().expect("halted");
        assert_eq!((halt.index, halt.reason), (index, FailureReason::CleartextAboveCutover));
        assert_eq!(c.applied(id).unwrap(), index - 1);
        assert!(c.state_machine(id).unwrap().payloads().iter().all(|(i, _)| *i != index));
    }
    for s in &states {
        assert_eq!(s.keyring().state(KeyId(1)), Some(KeyState::Active), "nothing destroyed");
    }
}

/// Enable under concurrent writers (through every node) with a leader change between the
/// promote and the enforce: nobody halts, nothing cleartext above C, every write applied once.
#[test]
fn enable_under_concurrent_writers_with_a_leader_change_never_halts() {
    for run in 0..5 {
        let (c, states) = cluster([KEK_BYTES; 3]);
        let cluster = Mutex::new(c);
        const WRITERS: usize = 8;
        const EACH: usize = 4;
        let done = AtomicUsize::new(0);
        let acked = Mutex::new(Vec::new());
        let cutover = thread::scope(|scope| {
            for w in 0..WRITERS {
                let (cluster, done, acked) = (&cluster, &done, &acked);
                scope.spawn(move || {
                    for k in 0..EACH {
                        let payload = format!("w{w}k{k}=run{run}").into_bytes();
                        // Refusals (`ControlPending` while the install or promote is unapplied) are
                        // retried by `write_until_applied`.
                        let index = common::write_until_applied(
                            cluster,
                            &payload,
                            |c| common::leader_until_sealing(c, (w + k) as u64),
                            || {},
                            &format!("run {run}: writer {w}"),
                        );
                        acked.lock().unwrap().push((payload, index));
                        done.fetch_add(1, Ordering::SeqCst);
                    }
                });
            }
            while done.load(Ordering::SeqCst) < WRITERS * EACH / 4 {
                thread::yield_now();
            }
            // Install and promote on the leader, then change leader before the promote has been
            // applied everywhere, then enforce through the new leader.
            {
                let mut c = cluster.lock().unwrap();
                let leader = c.wait_leader().unwrap();
                let kek = provider(KEK_BYTES);
                let node = c.node_mut(leader).unwrap();
                let (key_id, install) =
                    block_on(node.propose_install(kek.as_ref(), Algorithm::Aes256Gcm)).unwrap();
                let install_index = install.appended_at.unwrap().0;
                c.wait_applied(leader, install_index).unwrap();
                c.node_mut(leader).unwrap().propose_control(&ControlCommand::PromoteKey { key_id }).unwrap();
            }
            thread::yield_now();
            let mut c = cluster.lock().unwrap();
            c.change_leader().unwrap();
            drop(c);
            while done.load(Ordering::SeqCst) < WRITERS * EACH / 2 {
                thread::yield_now();
            }
            let mut c = cluster.lock().unwrap();
            enable(&mut c)
        });
        let mut c = cluster.into_inner().unwrap();
        let leader = c.wait_leader().unwrap();
        c.wait_converged(leader).unwrap();
        let acked = acked.into_inner().unwrap();
        assert_eq!(acked.len(), WRITERS * EACH);
        for id in c.ids() {
            assert!(c.halted(id).unwrap().is_none(), "run {run}: node {id} halted");
            let payloads = c.state_machine(id).unwrap().payloads();
            for (p, index) in &acked {
                let at: Vec<_> = payloads.iter().filter(|(_, b)| b == p).map(|(i, _)| *i).collect();
                assert_eq!(at, vec![*index], "run {run}: node {id}: applied once at its index");
            }
            for i in cutover + 1..=c.stored_last_index(id).unwrap() {
                let e = c.read_entry(id, i).unwrap().unwrap();
                assert_ne!(classify(&e), EntryKind::Cleartext, "run {run}: node {id}: cleartext at {i} > C");
            }
        }
        assert_eq!(c.encryption_status().unwrap().keys.len(), 1, "run {run}: one key");
        assert_identical_layer_states(&c, &states);
    }
}

/// A replica cut off during enable and two rotations receives install, promote, enforce and the
/// sealed installs in one catch-up: it prefetches each install once the key that sealed it has
/// been applied, and ends with the same layer state and data.
#[test]
fn lagging_replica_catches_up_through_enable_and_rotations() {
    let (mut c, states) = cluster([KEK_BYTES; 3]);
    c.isolate(3);
    let cutover = enable(&mut c);
    c.propose(b"a=1".to_vec()).unwrap();
    let kek = provider(KEK_BYTES);
    assert_eq!(c.rotate_key(kek.as_ref(), Algorithm::Aes256Gcm).unwrap(), KeyId(2));
    c.propose(b"b=2".to_vec()).unwrap();
    assert_eq!(c.rotate_key(kek.as_ref(), Algorithm::Aes256GcmSiv).unwrap(), KeyId(3));
    c.propose(b"c=3".to_vec()).unwrap();
    assert!(states[2].keys().is_empty(), "node 3 saw nothing yet");
    c.heal();
    let leader = c.wait_leader().unwrap();
    c.wait_converged(leader).unwrap();
    assert!(c.halted(3).unwrap().is_none());
    for (k, v) in [("a", "1"), ("b", "2"), ("c", "3")] {
        assert_eq!(c.state_machine(3).unwrap().get(k), Some(v));
    }
    assert_eq!(states[2].cutover(), Some(cutover));
    assert_eq!(states[2].active_key(), Some(KeyId(3)));
    assert_identical_layer_states(&c, &states);
}

/// Snapshots do not carry the layer state yet: a node with a layer state refuses every snapshot
/// (even before any key exists, since the snapshot could cover an enforce), halting fail closed
/// at its index with nothing of it restored.
#[test]
fn node_with_a_layer_state_refuses_snapshots() {
    let (mut c, _states) = cluster([KEK_BYTES; 3]);
    let leader = c.wait_leader().unwrap();
    let to = c.ids().into_iter().find(|i| *i != leader).unwrap();
    let node = c.node(leader).unwrap();
    let (index, term) = (node.last_index() + 10, node.term());
    let mut snapshot = Snapshot { data: b"evil=1".to_vec().into(), ..Default::default() };
    let meta = snapshot.mut_metadata();
    meta.index = index;
    meta.term = term;
    meta.mut_conf_state().voters = c.ids();
    let mut m = Message::default();
    m.set_msg_type(MessageType::MsgSnapshot);
    m.from = leader;
    m.to = to;
    m.term = term;
    m.set_snapshot(snapshot);
    let applied = c.applied(to).unwrap();
    c.node_mut(to).unwrap().step(m).unwrap();
    c.settle();
    let halt = c.halted(to).unwrap().expect("refused");
    assert_eq!((halt.index, halt.reason, halt.cutover), (index, FailureReason::UnsealedSnapshot, None));
    assert_eq!(c.applied(to).unwrap(), applied);
    assert!(c.state_machine(to).unwrap().get("evil").is_none());
}
