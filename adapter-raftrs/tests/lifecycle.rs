//! Key lifecycle through the log on raft-rs: keys and the cutover change only through layer
//! control entries (install, promote, enforce, retire, destroy), applied at the same index on
//! every replica, never reaching the user's state machine.
#![allow(clippy::unwrap_used)] // reason: tests fail loudly on any unexpected error

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;

use raft::eraftpb::{Entry, Message, MessageType, Snapshot};
use raft_envelope_core::lifecycle::{Destroyed, Retired};
use raft_envelope_core::{
    error::{ControlError, FailureReason},
    lifecycle::{DestroyRefused, KeyState, RetainedSnapshot, Retention},
    provider::{FileKekProvider, KekId, KeyProvider},
    wire::{is_clear_control_entry, ControlCommand, EnvelopeHeader, Purpose, SnapshotHeader},
    Algorithm, ClusterId, EntryKind, KeyId, LayerState, PayloadUnwrapper, ProposalId, SecretKey,
};
use raft_envelope_raftrs::admin::AdminError;
use raft_envelope_raftrs::framing::{classify, is_layer_control, ContextMarker};
use raft_envelope_raftrs::testing::{block_on, Cluster, ClusterConfig, ClusterError, KvStore};
use raft_envelope_raftrs::{LogStore, ProposeError, StepError};

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
    let acked = acked.into_inner().unwrap();
    assert_eq!(acked.len(), WRITERS * EACH);
    common::assert_converged(&mut c, &acked, None, "rotation");
    let leader = c.wait_leader().unwrap();
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
    for id in c.ids() {
        c.compact(id).unwrap();
    }
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
    assert!(
        matches!(refused, ClusterError::Admin(AdminError::Refused(ControlError::ActiveKeyNeeded(KeyId(1))))),
        "{refused:?}"
    );
    c.rotate_key(provider(KEK_BYTES).as_ref(), Algorithm::Aes256Gcm).unwrap();
    assert_eq!(c.retire_key(KeyId(1)).unwrap(), Retired::AlreadyDecryptOnly);
    // A key never installed: the entry would halt every replica, so nothing is proposed.
    let unknown = c.retire_key(KeyId(9)).unwrap_err();
    assert!(
        matches!(unknown, ClusterError::Admin(AdminError::Refused(ControlError::UnknownKey(KeyId(9))))),
        "{unknown:?}"
    );
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
        let acked = acked.into_inner().unwrap();
        assert_eq!(acked.len(), WRITERS * EACH);
        common::assert_converged(&mut c, &acked, Some(cutover), &format!("run {run}"));
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

/// A snapshot message as anyone on the network could forge it (raw state, no layer framing) is
/// never restored by a node with a layer state: it halts at the snapshot's index
/// (`invalid_control`), with nothing restored, persisted or applied.
#[test]
fn forged_snapshot_without_layer_framing_halts_the_receiver() {
    let (mut c, states) = cluster([KEK_BYTES; 3]);
    let leader = c.wait_leader().unwrap();
    let to = c.ids().into_iter().find(|i| *i != leader).unwrap();
    let node = c.node(leader).unwrap();
    let (index, term) = (node.last_index() + 10, node.term());
    let mut snapshot = Snapshot { data: b"evil=1".to_vec().into(), ..Default::default() };
    let meta = snapshot.mut_metadata();
    meta.index = index;
    meta.term = term;
    meta.mut_conf_state().voters = c.ids();
    let applied = c.applied(to).unwrap();
    let stored = c.stored_last_index(to).unwrap();
    c.node_mut(to).unwrap().step(snapshot_message(leader, to, term, snapshot)).unwrap();
    c.settle();
    let halt = c.halted(to).unwrap().expect("refused");
    assert_eq!((halt.index, halt.reason, halt.cutover), (index, FailureReason::InvalidControl, None));
    assert_eq!(c.applied(to).unwrap(), applied);
    assert_eq!(c.stored_last_index(to).unwrap(), stored, "nothing of the snapshot was stored");
    assert!(c.state_machine(to).unwrap().get("evil").is_none());
    assert_eq!(states[(to - 1) as usize].snapshot(), states[(leader - 1) as usize].snapshot());
}

/// Writes `a=1` everywhere, isolates a follower, writes `b=2`, and has the leader compact:
/// returns the leader, the isolated follower, the snapshot's index and the snapshot, which the
/// follower needs and has not received.
fn snapshot_behind_an_isolated_follower(c: &mut Cluster<KvStore>) -> (u64, u64, u64, Snapshot) {
    c.propose(b"a=1".to_vec()).unwrap();
    let leader = c.wait_leader().unwrap();
    c.wait_converged(leader).unwrap();
    let victim = c.ids().into_iter().find(|i| *i != leader).unwrap();
    c.isolate(victim);
    c.propose(b"b=2".to_vec()).unwrap();
    let index = c.compact(leader).unwrap();
    let snapshot = c.node(leader).unwrap().store().retained_snapshot().unwrap();
    (leader, victim, index, snapshot)
}

/// Hands `snapshot` to `victim` as the leader would, and lets the cluster settle.
fn deliver_snapshot(c: &mut Cluster<KvStore>, leader: u64, victim: u64, snapshot: Snapshot) {
    let term = c.node(leader).unwrap().term();
    c.node_mut(victim).unwrap().step(snapshot_message(leader, victim, term, snapshot)).unwrap();
    c.settle();
}

fn snapshot_message(from: u64, to: u64, term: u64, snapshot: Snapshot) -> Message {
    let mut m = Message::default();
    m.set_msg_type(MessageType::MsgSnapshot);
    m.from = from;
    m.to = to;
    m.term = term;
    m.set_snapshot(snapshot);
    m
}

/// A cluster with encryption on, a rotation, payloads under both keys, and every log compacted
/// past the second install entry.
fn compacted_cluster() -> (Cluster<KvStore>, Vec<Arc<LayerState>>, u64) {
    let (mut c, states) = cluster([KEK_BYTES; 3]);
    c.propose(b"clear=1".to_vec()).unwrap();
    enable(&mut c);
    c.propose(b"first=1".to_vec()).unwrap();
    c.rotate_key(provider(KEK_BYTES).as_ref(), Algorithm::Aes256Gcm).unwrap();
    c.propose(b"second=1".to_vec()).unwrap();
    let leader = c.wait_leader().unwrap();
    c.wait_converged(leader).unwrap();
    let mut compacted = u64::MAX;
    for id in c.ids() {
        compacted = compacted.min(c.compact(id).unwrap());
    }
    let installed = c.encryption_status().unwrap().keys[1].installed_at;
    assert!(compacted > installed);
    for id in c.ids() {
        assert!(c.read_entry(id, installed).unwrap().is_none(), "node {id} compacted the install entry");
    }
    (c, states, compacted)
}

fn new_state() -> Arc<LayerState> {
    Arc::new(LayerState::new(ClusterId::new("lifecycle").unwrap()))
}

#[test]
fn member_joining_after_compaction_installs_the_sealed_snapshot_and_opens_everything() {
    let (mut c, states, _) = compacted_cluster();
    let leader = c.wait_leader().unwrap();
    let snapshot = c.node(leader).unwrap().store().retained_snapshot().unwrap();
    assert!(!contains(&snapshot.data, b"second=1"), "the snapshot is sealed");
    assert_eq!(SnapshotHeader::read(&snapshot.data).unwrap().sealed_under, Some(KeyId(2)));

    let joiner_state = new_state();
    let joiner = c.add_member(joiner_state.clone(), provider(KEK_BYTES), KvStore::default()).unwrap();
    let after = c.propose(b"after=join".to_vec()).unwrap();
    assert!(c.wait_applied(joiner, after.index).unwrap() >= after.index);
    assert!(c.halted(joiner).unwrap().is_none());
    let sm = c.state_machine(joiner).unwrap();
    assert_eq!(sm, c.state_machine(leader).unwrap(), "the joiner reaches the leader's state");
    assert_eq!(sm.get("second"), Some("1"));
    assert_eq!(joiner_state.snapshot(), states[(leader - 1) as usize].snapshot(), "same layer state");
    assert!(c.node(joiner).unwrap().layer().is_sealing(), "a key is active: the joiner seals");
    let stored = c.read_entry(joiner, after.index).unwrap().unwrap();
    assert_eq!(classify(&stored), EntryKind::Envelope);
    assert!(!contains(&stored.data, b"join"));
    let retention = c.retention(joiner).unwrap();
    assert_eq!(retention.snapshot.map(|s| s.sealed_under), Some(Some(KeyId(2))));
}

#[test]
fn joiner_without_the_kek_halts_at_the_snapshot_index_and_resumes_with_it() {
    let (mut c, _states, _) = compacted_cluster();
    let joiner_state = new_state();
    let joiner = c.add_member(joiner_state.clone(), provider(99), KvStore::default()).unwrap();
    c.wait_applied(joiner, 1).unwrap();
    let halt = c.halted(joiner).unwrap().expect("no KEK: the joiner halts at the snapshot");
    let leader = c.wait_leader().unwrap();
    let snapshot_index = c.retention(leader).unwrap().snapshot.unwrap().last_index;
    assert_eq!((halt.index, halt.reason), (snapshot_index, FailureReason::KeyUnavailable));
    assert_eq!(c.applied(joiner).unwrap(), 0, "nothing restored");
    assert!(c.state_machine(joiner).unwrap().entries().is_empty());
    assert!(joiner_state.keys().is_empty(), "the layer state is unchanged");
    assert!(c.node(joiner).unwrap().store().retained_snapshot().is_none(), "nothing persisted");
    assert!(!format!("{halt} {halt:?}").contains("0707"), "no key bytes in the error");

    // The others keep going; restarted with the KEK, the joiner installs the snapshot.
    let during = c.propose(b"during=halt".to_vec()).unwrap();
    c.restart_with_provider(joiner, provider(KEK_BYTES)).unwrap();
    assert!(c.wait_applied(joiner, during.index).unwrap() >= during.index);
    assert!(c.halted(joiner).unwrap().is_none());
    assert_eq!(c.state_machine(joiner).unwrap(), c.state_machine(leader).unwrap());
}

#[test]
fn tampered_snapshot_halts_the_receiver_with_nothing_restored() {
    let (mut c, states) = cluster([KEK_BYTES; 3]);
    enable(&mut c);
    let (leader, victim, index, mut snapshot) = snapshot_behind_an_isolated_follower(&mut c);
    let mut data = snapshot.data.to_vec();
    let last = data.len() - 1;
    data[last] ^= 1; // one bit of the sealed body's tag
    snapshot.data = data.into();

    let before = (c.applied(victim).unwrap(), c.stored_last_index(victim).unwrap());
    let layer_before = states[(victim - 1) as usize].snapshot();
    deliver_snapshot(&mut c, leader, victim, snapshot);
    let halt = c.halted(victim).unwrap().expect("a tampered snapshot halts the receiver");
    assert_eq!(halt.index, index);
    assert_eq!(halt.reason, FailureReason::AuthenticationFailed);
    assert_eq!((c.applied(victim).unwrap(), c.stored_last_index(victim).unwrap()), before);
    assert!(c.state_machine(victim).unwrap().get("b").is_none());
    assert_eq!(states[(victim - 1) as usize].snapshot(), layer_before, "layer state unchanged");

    // Restarted and reconnected, it gets the genuine snapshot from the leader and converges.
    c.heal();
    c.restart_with_provider(victim, provider(KEK_BYTES)).unwrap();
    let later = c.propose(b"c=3".to_vec()).unwrap();
    assert!(c.wait_applied(victim, later.index).unwrap() >= later.index);
    assert!(c.halted(victim).unwrap().is_none());
    assert_eq!(c.state_machine(victim).unwrap().get("b"), Some("2"));
    assert_identical_layer_states(&c, &states);
}

#[test]
fn destroy_is_refused_while_a_log_or_snapshot_holds_the_key_and_allowed_after_compaction() {
    let (mut c, states) = cluster([KEK_BYTES; 3]);
    enable(&mut c);
    c.propose(b"old=1".to_vec()).unwrap();
    let leader = c.wait_leader().unwrap();
    // A snapshot sealed under key 1 on one follower.
    let follower = c.ids().into_iter().find(|i| *i != leader).unwrap();
    c.compact(follower).unwrap();
    c.rotate_key(provider(KEK_BYTES).as_ref(), Algorithm::Aes256Gcm).unwrap();
    c.propose(b"new=1".to_vec()).unwrap();

    let refused = c.destroy_key(KeyId(2)).unwrap_err();
    assert!(
        matches!(
            refused,
            ClusterError::Admin(AdminError::DestroyRefused(DestroyRefused::ActiveKey(KeyId(2))))
        ),
        "{refused:?}"
    );
    let refused = c.destroy_key(KeyId(1)).unwrap_err();
    assert!(
        matches!(
            &refused,
            ClusterError::Admin(AdminError::DestroyRefused(DestroyRefused::InLog { key_id: KeyId(1), .. }))
        ),
        "{refused:?}"
    );
    for id in c.ids().into_iter().filter(|i| *i != follower) {
        c.compact(id).unwrap();
    }
    // The follower compacted before the rotation: its snapshot is sealed under key 1 and its
    // log still holds entries under it.
    let refused = c.destroy_key(KeyId(1)).unwrap_err();
    match &refused {
        ClusterError::Admin(AdminError::DestroyRefused(DestroyRefused::InLog { replica, .. })) => {
            assert_eq!(*replica, follower)
        }
        other => panic!("refused because of node {follower}'s log: {other:?}"),
    }
    for s in &states {
        assert_eq!(s.keyring().state(KeyId(1)), Some(KeyState::DecryptOnly), "nothing destroyed");
    }
    c.compact(follower).unwrap();
    let retention = c.retention(follower).unwrap();
    assert_eq!(retention.snapshot.map(|s| s.sealed_under), Some(Some(KeyId(2))));
    let Destroyed::At { index } = c.destroy_key(KeyId(1)).unwrap() else { panic!("key 1 was live") };
    let after = c.propose(b"after=destroy".to_vec()).unwrap();
    for id in c.ids() {
        assert!(c.wait_applied(id, after.index).unwrap() >= after.index);
        assert!(c.halted(id).unwrap().is_none());
        assert!(c.state_machine(id).unwrap().payloads().iter().all(|(i, _)| *i != index));
    }
    for s in &states {
        assert_eq!(s.keyring().state(KeyId(1)), Some(KeyState::Destroyed));
    }
    assert_identical_layer_states(&c, &states);
}

/// A replica reports what it retains for the destroy proof: the first index of its log, the
/// snapshot its storage keeps with the key that snapshot is sealed under (read without keys), and
/// the key it seals under.
#[test]
fn retention_reports_the_first_log_index_and_the_key_of_the_retained_snapshot() {
    let (mut c, _states) = cluster([KEK_BYTES; 3]);
    enable(&mut c);
    c.propose(b"a=1".to_vec()).unwrap();
    let leader = c.wait_leader().unwrap();
    c.wait_converged(leader).unwrap();
    let index = c.compact(1).unwrap();
    assert_eq!(
        c.retention(1).unwrap(),
        Retention::new(1, index + 1, Some(RetainedSnapshot::new(index, Some(KeyId(1)))))
            .with_sealing(Some(KeyId(1)), Vec::new())
    );
    assert_eq!(c.retention(2).unwrap(), Retention::new(2, 1, None).with_sealing(Some(KeyId(1)), Vec::new()));
}

/// Every entry appended after a leader applied a promote is sealed under the promoted key:
/// while a layer control entry is unapplied, nothing is appended (own or forwarded, sealed or
/// not), and a forwarded envelope under another key than the active one is refused.
#[test]
fn proposals_are_refused_while_a_control_entry_is_unapplied_and_stale_keys_are_refused() {
    let (mut c, _states) = cluster([KEK_BYTES; 3]);
    enable(&mut c);
    let leader = c.wait_leader().unwrap();
    let follower = c.ids().into_iter().find(|i| *i != leader).unwrap();
    let old = c.propose(b"old=1".to_vec()).unwrap();
    let old_entry = c.read_entry(leader, old.index).unwrap().unwrap();

    let kek = provider(KEK_BYTES);
    let node = c.node_mut(leader).unwrap();
    let (key_id, _) = block_on(node.propose_install(kek.as_ref(), Algorithm::Aes256Gcm)).unwrap();
    assert!(node.layer().is_sealing());
    let last = node.last_index();
    assert!(matches!(node.propose(b"x=1".to_vec()), Err(ProposeError::ControlPending)));
    let step = node.step(forwarded(follower, leader, old_entry.clone()));
    assert!(matches!(step, Err(StepError::ControlPending { .. })), "{step:?}");
    assert_eq!(node.last_index(), last, "nothing appended");
    c.settle();
    c.node_mut(leader).unwrap().propose_control(&ControlCommand::PromoteKey { key_id }).unwrap();
    c.settle();

    // Key 2 active: an envelope forwarded under key 1 is refused.
    let node = c.node_mut(leader).unwrap();
    let last = node.last_index();
    let step = node.step(forwarded(follower, leader, old_entry));
    assert!(matches!(step, Err(StepError::NotActiveKey { key_id: Some(KeyId(1)), .. })), "{step:?}");
    assert_eq!(node.last_index(), last);
    let applied = c.propose_via(follower, b"y=2".to_vec()).unwrap();
    let stored = c.read_entry(leader, applied.index).unwrap().unwrap();
    assert_eq!(EnvelopeHeader::parse(&stored.data).unwrap().key_id, key_id);
}

/// With a small sealing budget, the cluster rotates by itself before the active key runs out:
/// every write succeeds (never `BudgetExhausted`), keys rotate several times, every replica
/// converges to the same state, and nothing halts.
#[test]
fn automatic_rotation_keeps_every_write_within_the_sealing_budget() {
    const LIMIT: u64 = 64;
    let states: Vec<Arc<LayerState>> = (0..3)
        .map(|_| Arc::new(LayerState::with_seal_limit(ClusterId::new("lifecycle").unwrap(), LIMIT)))
        .collect();
    let nodes = states.iter().map(|s| (s.clone(), provider(KEK_BYTES))).collect();
    let mut c = Cluster::with_layer_states(ClusterConfig::default(), nodes, |_| KvStore::default()).unwrap();
    enable(&mut c);
    let writes = 4 * LIMIT as usize;
    for k in 0..writes {
        let via = 1 + (k % 3) as u64;
        if let Err(e) = c.propose_via(via, format!("k{k}=v").into_bytes()) {
            panic!("write {k} through node {via} failed: {e}");
        }
    }
    let leader = c.wait_leader().unwrap();
    c.wait_converged(leader).unwrap();
    let status = c.encryption_status().unwrap();
    assert!(status.keys.len() >= 4, "rotated at least three times: {} keys", status.keys.len());
    assert!(!status.rotation_due);
    for key in &status.keys {
        assert!(key.sealed_entries <= LIMIT, "{} sealed {} entries", key.key_id, key.sealed_entries);
    }
    for id in c.ids() {
        assert!(c.halted(id).unwrap().is_none(), "node {id} halted");
        assert_eq!(c.state_machine(id).unwrap().entries().len(), writes);
    }
    assert_identical_layer_states(&c, &states);
}

/// Before any key exists the layer snapshot is in the clear (nothing to seal with): a member
/// joining then installs it, and follows the enable that comes after like every replica.
#[test]
fn member_joining_before_encryption_installs_the_clear_snapshot_and_follows_the_enable() {
    let (mut c, states) = cluster([KEK_BYTES; 3]);
    c.propose(b"clear=1".to_vec()).unwrap();
    let leader = c.wait_leader().unwrap();
    c.wait_converged(leader).unwrap();
    for id in c.ids() {
        c.compact(id).unwrap();
    }
    let snapshot = c.node(leader).unwrap().store().retained_snapshot().unwrap();
    assert_eq!(SnapshotHeader::read(&snapshot.data).unwrap().sealed_under, None);

    let joiner_state = new_state();
    let joiner = c.add_member(joiner_state.clone(), provider(KEK_BYTES), KvStore::default()).unwrap();
    let cutover = enable(&mut c);
    let after = c.propose(b"sealed=1".to_vec()).unwrap();
    assert!(c.wait_applied(joiner, after.index).unwrap() >= after.index);
    assert!(c.halted(joiner).unwrap().is_none());
    assert_eq!(c.state_machine(joiner).unwrap().get("clear"), Some("1"));
    assert_eq!(c.state_machine(joiner).unwrap().get("sealed"), Some("1"));
    assert_eq!(joiner_state.cutover(), Some(cutover));
    assert_eq!(joiner_state.snapshot(), states[(leader - 1) as usize].snapshot());
}

/// A snapshot in the clear whose layer section claims a cutover (an attacker rewriting an inert
/// snapshot to skip the sealed part of the log) is refused: the receiver halts at its index
/// (`unsealed_snapshot`) with nothing restored.
#[test]
fn clear_snapshot_claiming_a_cutover_halts_the_receiver() {
    let (mut c, states) = cluster([KEK_BYTES; 3]);
    let (leader, victim, index, mut snapshot) = snapshot_behind_an_isolated_follower(&mut c);
    let mut data = snapshot.data.to_vec();
    // Snapshot header (22 bytes), then the layer section: magic (8), version (1), cutover (8).
    let cutover_at = 22 + 9;
    assert_eq!(data[cutover_at..cutover_at + 8], u64::MAX.to_be_bytes(), "no cutover in the original");
    data[cutover_at..cutover_at + 8].copy_from_slice(&1u64.to_be_bytes());
    assert_eq!(SnapshotHeader::read(&data).unwrap().layer.cutover, Some(1));
    snapshot.data = data.into();

    let applied = c.applied(victim).unwrap();
    deliver_snapshot(&mut c, leader, victim, snapshot);
    let halt = c.halted(victim).unwrap().expect("refused");
    assert_eq!((halt.index, halt.reason), (index, FailureReason::UnsealedSnapshot));
    assert_eq!(c.applied(victim).unwrap(), applied);
    assert!(c.state_machine(victim).unwrap().get("b").is_none());
    assert_eq!(states[(victim - 1) as usize].cutover(), None);
}

/// A node restarted with layer control entries stored but not applied (its commit index ran
/// ahead of its state machine) refuses proposals until it has applied them: were it elected
/// before applying a promote, a cleartext entry it appended could land above the enforce entry.
#[test]
fn a_restarted_node_refuses_proposals_while_its_stored_log_holds_an_unapplied_control_entry() {
    use raft_envelope_raftrs::{EnvelopeNode, MemStore};

    let state = Arc::new(LayerState::new(ClusterId::new("lifecycle").unwrap()));
    let kek = provider(KEK_BYTES);
    let install = block_on(state.generate_install(KeyId(1), Algorithm::Aes256Gcm, kek.as_ref())).unwrap();
    let commands = [install, ControlCommand::PromoteKey { key_id: KeyId(1) }];
    let entries: Vec<Entry> = commands
        .iter()
        .zip(1u64..)
        .map(|(command, index)| Entry {
            index,
            term: 1,
            data: state.encode_entry(ProposalId(index), command).unwrap().into(),
            context: ContextMarker::layer_control(ProposalId(index)).encode().into(),
            ..Default::default()
        })
        .collect();
    let store = MemStore::new_with_conf_state((vec![1], vec![]));
    store.mem_storage().wl().append(&entries).unwrap();
    store.mem_storage().wl().set_hardstate(raft::eraftpb::HardState {
        term: 1,
        commit: 2,
        ..Default::default()
    });

    let config = raft::Config { id: 1, ..Default::default() };
    let logger = slog::Logger::root(slog::Discard, slog::o!());
    let mut node =
        EnvelopeNode::with_layer_state(&config, store, KvStore::default(), state, kek, &logger).unwrap();
    assert!(
        matches!(node.propose(b"a=1".to_vec()), Err(ProposeError::ControlPending)),
        "nothing may be appended while the stored promote is unapplied"
    );
}
