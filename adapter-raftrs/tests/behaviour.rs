//! raft-rs specific behaviour beyond the conformance suite: byte-for-byte inert storage (context
//! included), the context framing, the raft-rs fail-closed mechanics, response routing, and the
//! switch-on under concurrent writers with forwarding and leader changes.
#![allow(clippy::unwrap_used)] // reason: tests fail loudly on any unexpected error

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Instant;

use raft::eraftpb::{ConfState, Entry, EntryType, Message, MessageType, Snapshot};
use raft_envelope_core::{
    error::FailureReason, wire::EnvelopeHeader, Algorithm, ApplyGate, ClusterId, Cutover, EntryKind,
    EnvelopeCipher, EnvelopeLayer, KeyId, Keyring, PayloadWrapper, SecretKey,
};
use raft_envelope_raftrs::framing::{classify, ContextMarker, CONTEXT_MAGIC};
use raft_envelope_raftrs::testing::{Cluster, ClusterError, KvStore};
use raft_envelope_raftrs::{NodeError, ProposeError, StateMachine, StepError};

mod common;

const KEY: KeyId = KeyId(1);

/// Keys, ciphers, cutovers and layers of a 3-node test cluster (one keyring instance per node).
struct Setup {
    material: SecretKey,
    ciphers: Vec<Arc<EnvelopeCipher>>,
    cutovers: Vec<Arc<Cutover>>,
}

impl Setup {
    fn new() -> Self {
        let material = SecretKey::generate().unwrap();
        let mut s = Self { material, ciphers: Vec::new(), cutovers: Vec::new() };
        for _ in 0..3 {
            s.ciphers.push(s.cipher(true));
            s.cutovers.push(Arc::new(Cutover::inert()));
        }
        s
    }

    fn cipher(&self, with_key: bool) -> Arc<EnvelopeCipher> {
        let ring = Keyring::new();
        if with_key {
            ring.insert(KEY, Algorithm::Aes256Gcm, SecretKey::from_bytes(*self.material.expose_secret()))
                .unwrap();
            ring.promote(KEY).unwrap();
        }
        Arc::new(EnvelopeCipher::new(ClusterId::new("behaviour").unwrap(), Arc::new(ring)))
    }

    fn layer(&self, node: usize, cipher: Arc<EnvelopeCipher>) -> Arc<EnvelopeLayer> {
        Arc::new(EnvelopeLayer::new(ApplyGate::new(self.cutovers[node].clone()).with_unwrapper(cipher)))
    }

    fn cluster(&self) -> Cluster<KvStore> {
        self.cluster_of(KvStore::default)
    }

    fn cluster_of<SM: StateMachine>(&self, mut make_sm: impl FnMut() -> SM) -> Cluster<SM> {
        let layers = (0..3).map(|k| self.layer(k, self.ciphers[k].clone())).collect();
        Cluster::new(layers, |_| make_sm()).unwrap()
    }

    fn switch_on<SM: StateMachine>(&self, c: &mut Cluster<SM>) -> u64 {
        let ciphers = self.ciphers.clone();
        let cutovers = self.cutovers.clone();
        c.switch_on(
            |id| ciphers[(id - 1) as usize].clone() as Arc<dyn PayloadWrapper>,
            |id, cut| cutovers[(id - 1) as usize].set(Some(cut)),
        )
        .unwrap()
    }
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

#[test]
fn inert_entries_are_stored_byte_for_byte_context_included() {
    let s = Setup::new();
    let mut c = s.cluster();
    let leader = c.leader().unwrap();
    let follower = c.ids().into_iter().find(|i| *i != leader).unwrap();
    let mut sent = Vec::new();
    for (via, ctx, data) in [
        (leader, b"user-ctx".to_vec(), b"a=1".to_vec()),
        (leader, Vec::new(), vec![0u8, 1, 2, 255]),
        (follower, b"tikv-flags".to_vec(), b"b=2".to_vec()),
    ] {
        let ticket = c.node_mut(via).unwrap().propose_with_context(ctx.clone(), data.clone()).unwrap();
        assert_eq!(ticket.kind, EntryKind::Cleartext);
        c.settle();
        sent.push((ctx, data));
    }
    let last = c.node(leader).unwrap().last_index();
    c.wait_converged(leader).unwrap();
    for id in c.ids() {
        let stored: Vec<_> = (1..=last)
            .filter_map(|i| c.read_entry(id, i).unwrap())
            .filter(|e| classify(e) == EntryKind::Cleartext)
            .map(|e| {
                assert_eq!(e.get_entry_type(), EntryType::EntryNormal);
                (e.context.to_vec(), e.data.to_vec())
            })
            .collect();
        assert_eq!(stored, sent, "node {id}: inert entries must be stored exactly as proposed");
        assert_eq!(c.state_machine(id).unwrap().get("b"), Some("2"));
    }
}

#[test]
fn sealed_entries_carry_the_marker_and_no_plaintext() {
    let s = Setup::new();
    let mut c = s.cluster();
    let cutover = s.switch_on(&mut c);
    let leader = c.leader().unwrap();
    let follower = c.ids().into_iter().find(|i| *i != leader).unwrap();
    let markers: Vec<Vec<u8>> =
        (0..6).map(|k| format!("secret{k}=PLAINTEXT-MARKER-{k}").into_bytes()).collect();
    for (k, m) in markers.iter().enumerate() {
        let via = if k % 2 == 0 { leader } else { follower };
        c.propose_via(via, m.clone()).unwrap();
    }
    c.wait_converged(leader).unwrap();
    for id in c.ids() {
        let last = c.stored_last_index(id).unwrap();
        let mut envelopes = 0;
        for i in cutover + 1..=last {
            let e = c.read_entry(id, i).unwrap().unwrap();
            for m in &markers {
                assert!(!contains(&e.data, m) && !contains(&e.context, m), "node {id}: plaintext at {i}");
            }
            match classify(&e) {
                EntryKind::Envelope => {
                    envelopes += 1;
                    let header = EnvelopeHeader::parse(&e.data).unwrap();
                    let marker = ContextMarker::decode(&e.context).unwrap().unwrap();
                    assert_eq!(marker, ContextMarker::envelope(header.proposal_id));
                    assert_eq!(header.key_id, KEY);
                }
                EntryKind::Control => {}
                other => panic!("node {id}: {other} entry above the cutover at {i}"),
            }
        }
        assert_eq!(envelopes, markers.len());
        assert_eq!(c.state_machine(id).unwrap().get("secret5"), Some("PLAINTEXT-MARKER-5"));
    }
}

#[test]
fn contexts_are_refused_rather_than_leaked_or_confused() {
    let s = Setup::new();
    let mut c = s.cluster();
    let leader = c.leader().unwrap();
    let last = c.node(leader).unwrap().last_index();
    let mut reserved = CONTEXT_MAGIC.to_vec();
    reserved.push(9);
    let err = c.node_mut(leader).unwrap().propose_with_context(reserved, b"x=1".to_vec()).unwrap_err();
    assert!(matches!(err, ProposeError::ReservedContext), "{err}");
    s.switch_on(&mut c);
    let last_on = c.node(leader).unwrap().last_index();
    assert_eq!(last_on, last + 1, "only the barrier was appended");
    let err = c.node_mut(leader).unwrap().propose_with_context(b"ctx".to_vec(), b"x=1".to_vec()).unwrap_err();
    assert!(matches!(err, ProposeError::ContextWhileSealing), "{err}");
    assert_eq!(c.node(leader).unwrap().last_index(), last_on, "refusals append nothing");
}

#[test]
fn halt_is_sticky_never_advances_raft_applied_and_repair_resumes() {
    let s = Setup::new();
    let mut c = s.cluster();
    s.switch_on(&mut c);
    c.propose(b"k=v".to_vec()).unwrap();
    let leader = c.leader().unwrap();
    let victim = c.ids().into_iter().find(|i| *i != leader).unwrap();
    let k = (victim - 1) as usize;
    c.restart(victim, s.layer(k, s.cipher(false))).unwrap();
    let index = c.propose(b"secret=1".to_vec()).unwrap().index;
    c.wait_converged(leader).unwrap();
    let halt = c.halted(victim).unwrap().expect("the node without the key halts");
    assert_eq!((halt.index, halt.reason, halt.key_id), (index, FailureReason::UnknownKey, Some(KEY)));
    let node = c.node(victim).unwrap();
    assert_eq!(node.applied(), index - 1);
    assert_eq!(
        node.raw_node().raft.raft_log.applied,
        index - 1,
        "raft-rs applied never moved past last good"
    );
    assert!(node.raw_node().raft.raft_log.committed >= index, "the failing entry is committed");
    assert_eq!(c.state_machine(victim).unwrap().get("secret"), None);

    for round in 0..3 {
        c.restart(victim, s.layer(k, s.cipher(false))).unwrap();
        let again = c.halted(victim).unwrap().expect("still halted after restart");
        assert_eq!((again.index, again.reason), (index, FailureReason::UnknownKey), "round {round}");
        assert_eq!(c.applied(victim).unwrap(), index - 1);
    }
    // The others keep going.
    let later = c.propose(b"other=2".to_vec()).unwrap().index;
    c.restart(victim, s.layer(k, s.cipher(true))).unwrap();
    assert_eq!(c.wait_applied(victim, later).unwrap(), later.max(c.node(leader).unwrap().commit_index()));
    assert!(c.halted(victim).unwrap().is_none());
    assert_eq!(c.state_machine(victim).unwrap(), c.state_machine(leader).unwrap(), "converged");
}

#[test]
fn forwarded_cleartext_in_flight_across_switch_on_is_refused_not_appended() {
    let s = Setup::new();
    let mut c = s.cluster();
    let leader = c.leader().unwrap();
    let follower = c.ids().into_iter().find(|i| *i != leader).unwrap();
    c.hold_forwarded_proposals(true);
    let late = c.propose_async(follower, b"late=CLEARTEXT".to_vec()).unwrap();
    c.settle();
    c.hold_forwarded_proposals(false);
    let cutover = s.switch_on(&mut c);
    let refused_before = c.refused_steps();
    c.release_held();
    assert_eq!(c.refused_steps(), refused_before + 1, "the sealing leader refused the cleartext proposal");
    c.tick(70); // past the proposal timeout
    let outcome = c.outcome(late).expect("the late proposal has an outcome");
    assert!(matches!(outcome, Err(ProposeError::TimedOut { .. })), "{outcome:?}");
    for id in c.ids() {
        assert!(c.halted(id).unwrap().is_none());
        for i in cutover + 1..=c.stored_last_index(id).unwrap() {
            let e = c.read_entry(id, i).unwrap().unwrap();
            assert_ne!(classify(&e), EntryKind::Cleartext, "node {id}: cleartext at {i} > C");
        }
        assert_eq!(c.state_machine(id).unwrap().get("late"), None);
    }
    // The same client retries: sealed now, applied.
    assert!(c.propose_via(follower, b"late=CLEARTEXT".to_vec()).is_ok());
}

#[test]
fn response_routing_reports_superseded_and_dropped_proposals() {
    let s = Setup::new();
    let mut c = s.cluster();
    s.switch_on(&mut c);
    let old = c.leader().unwrap();
    // The old leader appends a proposal nobody else sees, then loses leadership.
    c.isolate(old);
    let lost = c.propose_async(old, b"lost=1".to_vec()).unwrap();
    let others: Vec<u64> = c.ids().into_iter().filter(|i| *i != old).collect();
    c.node_mut(others[0]).unwrap().campaign().unwrap();
    c.settle();
    let new = c.wait_leader().unwrap();
    assert_ne!(new, old);
    let won = c.propose_via(new, b"won=1".to_vec()).unwrap();
    c.heal();
    c.tick(10);
    match c.outcome(lost) {
        Some(Err(ProposeError::Superseded { index, term })) => {
            assert!(term > 0 || index > 0);
        }
        other => panic!("expected Superseded, got {other:?}"),
    }
    assert_eq!(c.state_machine(old).unwrap().get("lost"), None);
    assert_eq!(c.state_machine(old).unwrap().get("won"), Some("1"));
    assert!(won.index > 0);
    // raft-rs drops proposals during a leadership transfer: reported at once.
    let leader = c.wait_leader().unwrap();
    let target = c.ids().into_iter().find(|i| *i != leader).unwrap();
    c.node_mut(leader).unwrap().transfer_leader(target).unwrap();
    let err = c.node_mut(leader).unwrap().propose(b"x=1".to_vec()).unwrap_err();
    assert!(matches!(err, ProposeError::Dropped), "{err}");
}

/// 32 concurrent writers through every node (followers forward) while encryption is switched
/// on, with a leader change in every other run; 20 runs. No node ever halts, every acknowledged
/// write is applied exactly once at its index on every node, nothing cleartext above C.
#[test]
fn thirty_two_writers_during_switch_on_twenty_times_never_halt() {
    let started = Instant::now();
    let retries = AtomicUsize::new(0);
    let mut refused = 0;
    for run in 0..20 {
        let s = Setup::new();
        let cluster = Mutex::new(s.cluster());
        let done = AtomicUsize::new(0);
        let acked = Mutex::new(Vec::new());
        const WRITERS: usize = 32;
        const EACH: usize = 4;
        let cutover = thread::scope(|scope| {
            for w in 0..WRITERS {
                let (cluster, done, acked, retries) = (&cluster, &done, &acked, &retries);
                scope.spawn(move || {
                    for k in 0..EACH {
                        let payload = format!("w{w}k{k}=run{run}").into_bytes();
                        let index = common::write_until_applied(
                            cluster,
                            &payload,
                            |c| common::leader_until_sealing(c, (w + k) as u64),
                            || {
                                retries.fetch_add(1, Ordering::Relaxed);
                            },
                            &format!("run {run}: writer {w}"),
                        );
                        acked.lock().unwrap().push((payload, index));
                        done.fetch_add(1, Ordering::SeqCst);
                    }
                });
            }
            while done.load(Ordering::SeqCst) < WRITERS * EACH / 3 {
                thread::yield_now();
            }
            // Cleartext proposals forwarded by followers just before the switch, still in the
            // network when the barrier commits: the sealing leader must refuse them.
            let cutover = {
                let mut c = cluster.lock().unwrap();
                c.hold_forwarded_proposals(true);
                let leader = c.leader().unwrap();
                for g in 0..8 {
                    let via = c.ids().into_iter().filter(|i| *i != leader).nth(g % 2).unwrap();
                    let _ = c.propose_async(via, format!("ghost{g}=run{run}").into_bytes());
                }
                c.settle();
                let cutover = s.switch_on(&mut c);
                c.hold_forwarded_proposals(false);
                c.release_held();
                cutover
            };
            if run % 2 == 1 {
                cluster.lock().unwrap().change_leader().unwrap();
            }
            cutover
        });
        let mut c = cluster.into_inner().unwrap();
        assert!(c.refused_steps() >= 8, "run {run}: the in-flight cleartext proposals were refused");
        refused += c.refused_steps();
        let acked = acked.into_inner().unwrap();
        assert_eq!(acked.len(), WRITERS * EACH);
        common::assert_converged(&mut c, &acked, Some(cutover), &format!("run {run}"));
        for id in c.ids() {
            let payloads = c.state_machine(id).unwrap().payloads();
            assert!(payloads.iter().all(|(_, b)| !b.starts_with(b"ghost")), "run {run}: a ghost was applied");
        }
    }
    let elapsed = started.elapsed();
    eprintln!(
        "20 runs x 32 writers: {elapsed:?}, {} retries, {refused} refused steps",
        retries.load(Ordering::Relaxed)
    );
    assert!(elapsed.as_secs() < 60, "took {elapsed:?}");
}

/// After switch-on a node restarted with its cutover but without its wrapper (a configuration
/// error) must not put cleartext above the cutover: its own proposals are refused with
/// `NotSealing` (nothing appended), forwarded cleartext proposals are refused by `step`, and no
/// node halts.
#[test]
fn node_restarted_without_wrapper_refuses_cleartext_above_cutover_and_nobody_halts() {
    let s = Setup::new();
    let mut c = s.cluster();
    let cutover = s.switch_on(&mut c);
    c.propose(b"before=1".to_vec()).unwrap();
    let leader = c.leader().unwrap();
    let ids = c.ids();
    let follower = ids.iter().copied().find(|i| *i != leader).unwrap();
    let third = ids.iter().copied().find(|i| *i != leader && *i != follower).unwrap();

    // The follower comes back with its cutover (and keys to open) but no wrapper.
    c.restart(follower, s.layer((follower - 1) as usize, s.cipher(true))).unwrap();
    assert!(!c.node(follower).unwrap().layer().is_sealing());
    let follower_last = c.node(follower).unwrap().last_index();
    let leader_last = c.node(leader).unwrap().last_index();
    assert!(follower_last >= cutover);
    let err = c.node_mut(follower).unwrap().propose(b"clear=FOLLOWER".to_vec()).unwrap_err();
    assert!(matches!(err, ProposeError::NotSealing { cutover: at } if at == cutover), "{err}");
    assert!(err.is_retryable());
    c.tick(3);
    assert_eq!(c.node(follower).unwrap().last_index(), follower_last, "nothing appended");
    assert_eq!(c.node(leader).unwrap().last_index(), leader_last, "nothing forwarded");

    // The leader too, then it leads again: its own cleartext is refused, and so is a
    // forwarded cleartext proposal stepped into it.
    c.restart(leader, s.layer((leader - 1) as usize, s.cipher(true))).unwrap();
    c.wait_leader().unwrap();
    c.transfer_leader(leader).unwrap();
    assert!(c.node(leader).unwrap().is_leader() && !c.node(leader).unwrap().layer().is_sealing());
    let err = c.node_mut(leader).unwrap().propose(b"clear=LEADER".to_vec()).unwrap_err();
    assert!(matches!(err, ProposeError::NotSealing { cutover: at } if at == cutover), "{err}");
    let last = c.node(leader).unwrap().last_index();
    let err =
        c.node_mut(leader).unwrap().step(forwarded(follower, leader, &[b"clear=FORWARDED"])).unwrap_err();
    assert!(matches!(err, StepError::CleartextProposalRefused { from } if from == follower), "{err}");
    c.settle();
    assert_eq!(c.node(leader).unwrap().last_index(), last, "the forwarded cleartext was not appended");

    // A sealing node still writes through the non-sealing leader (it forwards an envelope),
    // and every node applies it.
    let sealed = c.propose_via(third, b"sealed=2".to_vec()).unwrap();
    c.wait_converged(leader).unwrap();
    for id in c.ids() {
        assert!(c.halted(id).unwrap().is_none(), "node {id} halted");
        assert_eq!(c.state_machine(id).unwrap().get("sealed"), Some("2"));
        assert!(c.applied(id).unwrap() >= sealed.index);
        for i in cutover + 1..=c.stored_last_index(id).unwrap() {
            let e = c.read_entry(id, i).unwrap().unwrap();
            assert_ne!(classify(&e), EntryKind::Cleartext, "node {id}: cleartext at {i} > C");
        }
        assert_eq!(c.state_machine(id).unwrap().get("clear"), None);
    }
    // Repaired (sealing again), the same node writes.
    c.node(follower).unwrap().layer().set_wrapper(Some(s.ciphers[(follower - 1) as usize].clone()));
    assert!(c.propose_via(follower, b"clear=RETRIED".to_vec()).is_ok());
}

/// A state machine that accepts snapshots and records every restore.
#[derive(Debug, Default, PartialEq, Eq)]
struct SnapshotSm {
    kv: KvStore,
    restored: Vec<u64>,
}

impl StateMachine for SnapshotSm {
    type Response = String;

    fn apply(&mut self, index: u64, term: u64, payload: &[u8]) -> String {
        self.kv.apply(index, term, payload)
    }

    fn apply_control(&mut self, index: u64, term: u64, conf_state: Option<&ConfState>) {
        self.kv.apply_control(index, term, conf_state);
    }

    fn applied_index(&self) -> u64 {
        self.kv.applied_index()
    }

    fn restore_snapshot(&mut self, snapshot: &Snapshot) -> Result<(), String> {
        self.restored.push(snapshot.get_metadata().index);
        Ok(())
    }
}

/// A snapshot message as anyone on the network could forge it: arbitrary state, at an index
/// past everything the cluster has.
fn forged_snapshot(c: &Cluster<SnapshotSm>, leader: u64, to: u64) -> (Message, u64) {
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
    (m, index)
}

/// A plain layer (keys and cutover from configuration) cannot authenticate a snapshot: while a
/// cutover is in force an (injected) snapshot is never
/// restored; the node halts fail closed at the snapshot's index with nothing of it applied or
/// stored, and the others keep going. Inert, the snapshot is restored as before.
#[test]
fn snapshot_is_refused_while_a_cutover_is_in_force() {
    let s = Setup::new();
    let mut c = s.cluster_of(SnapshotSm::default);
    let cutover = s.switch_on(&mut c);
    c.propose(b"k=v".to_vec()).unwrap();
    let leader = c.leader().unwrap();
    c.wait_converged(leader).unwrap();
    let victim = c.ids().into_iter().find(|i| *i != leader).unwrap();
    let applied = c.applied(victim).unwrap();
    let stored = c.stored_last_index(victim).unwrap();
    let (message, index) = forged_snapshot(&c, leader, victim);
    c.isolate(victim);
    c.node_mut(victim).unwrap().step(message).unwrap();
    c.settle();

    let halt = c.halted(victim).unwrap().expect("the node refusing the snapshot halts");
    assert_eq!(
        (halt.index, halt.reason, halt.cutover, halt.key_id),
        (index, FailureReason::UnsealedSnapshot, Some(cutover), None)
    );
    assert!(c.node(victim).unwrap().stopped().is_none());
    let sm = c.state_machine(victim).unwrap();
    assert!(sm.restored.is_empty(), "restore_snapshot must not be called");
    assert_eq!(sm.kv.get("evil"), None);
    assert_eq!(c.applied(victim).unwrap(), applied, "the applied index did not move");
    assert_eq!(c.node(victim).unwrap().raw_node().raft.raft_log.applied, applied);
    assert_eq!(c.stored_last_index(victim).unwrap(), stored, "nothing of the snapshot was stored");
    assert!(matches!(
        c.node_mut(victim).unwrap().propose(b"x=1".to_vec()),
        Err(ProposeError::Halted { index: at, reason: FailureReason::UnsealedSnapshot }) if at == index
    ));

    // The others keep going; the victim, rebuilt, never installed the forged state and catches
    // up from its own log.
    c.heal();
    let later = c.propose(b"later=1".to_vec()).unwrap();
    assert!(c.halted(leader).unwrap().is_none());
    c.restart(victim, s.layer((victim - 1) as usize, s.ciphers[(victim - 1) as usize].clone())).unwrap();
    assert!(c.halted(victim).unwrap().is_none());
    assert!(c.wait_applied(victim, later.index).unwrap() >= later.index);
    assert_eq!(c.state_machine(victim).unwrap(), c.state_machine(leader).unwrap(), "converged");

    // Inert (no cutover): restored as before.
    let s = Setup::new();
    let mut c = s.cluster_of(SnapshotSm::default);
    c.propose(b"k=v".to_vec()).unwrap();
    let leader = c.leader().unwrap();
    c.wait_converged(leader).unwrap();
    let victim = c.ids().into_iter().find(|i| *i != leader).unwrap();
    let (message, index) = forged_snapshot(&c, leader, victim);
    c.isolate(victim);
    c.node_mut(victim).unwrap().step(message).unwrap();
    c.settle();
    assert!(c.halted(victim).unwrap().is_none());
    assert_eq!(c.state_machine(victim).unwrap().restored, vec![index]);
    assert_eq!(c.applied(victim).unwrap(), index);
}

/// An empty payload is refused at the proposer, inert or sealing, with or without a context:
/// raft-rs would store it like its own no-op and it would never reach the state machine.
#[test]
fn empty_payloads_are_refused_not_appended() {
    let s = Setup::new();
    let mut c = s.cluster();
    let leader = c.leader().unwrap();
    let follower = c.ids().into_iter().find(|i| *i != leader).unwrap();
    let last = c.node(leader).unwrap().last_index();
    for via in [leader, follower] {
        let node = c.node_mut(via).unwrap();
        let err = node.propose(Vec::new()).unwrap_err();
        assert!(matches!(err, ProposeError::EmptyPayload), "{err}");
        assert!(!err.is_retryable());
        let err = node.propose_with_context(b"ctx".to_vec(), Vec::new()).unwrap_err();
        assert!(matches!(err, ProposeError::EmptyPayload), "{err}");
    }
    c.tick(3);
    assert_eq!(c.node(leader).unwrap().last_index(), last, "nothing appended while inert");
    s.switch_on(&mut c);
    let last = c.node(leader).unwrap().last_index();
    for via in [leader, follower] {
        let err = c.node_mut(via).unwrap().propose(Vec::new()).unwrap_err();
        assert!(matches!(err, ProposeError::EmptyPayload), "{err}");
    }
    c.tick(3);
    assert_eq!(c.node(leader).unwrap().last_index(), last, "nothing appended while sealing");
    // A one-byte payload is applied.
    let r = c.propose(b"=".to_vec()).unwrap();
    assert_eq!(r.response.as_deref(), Some(""));
}

/// A forged barrier entry above the cutover, naming a pending forwarded proposal's id (the
/// marker id is not authenticated): nothing proves the layer wrote it, so every replica halts on
/// it (`unauthenticated_barrier`), and it completes no proposal.
#[test]
fn forged_barrier_above_cutover_halts_and_completes_nothing() {
    let s = Setup::new();
    let mut c = s.cluster();
    s.switch_on(&mut c);
    let leader = c.leader().unwrap();
    let follower = c.ids().into_iter().find(|i| *i != leader).unwrap();
    c.hold_forwarded_proposals(true);
    let id = c.propose_async(follower, b"fwd=1".to_vec()).unwrap();
    c.settle();
    let forged = c.append_unchecked(ContextMarker::barrier(id).encode(), Vec::new()).unwrap();
    c.settle();
    for node in c.ids() {
        let halt =
            c.halted(node).unwrap().unwrap_or_else(|| panic!("node {node} halts on the forged barrier"));
        assert_eq!((halt.index, halt.reason), (forged, FailureReason::UnauthenticatedBarrier));
        assert_eq!(c.applied(node).unwrap(), forged - 1, "node {node} applied nothing of it");
    }
    assert!(!matches!(c.outcome(id), Some(Ok(_))), "the forged barrier completed a forwarded proposal");
}

/// A barrier is proposed on the leader only: it is matched by (index, term), never by its
/// unauthenticated marker id, so a follower refuses it instead of forwarding it.
#[test]
fn barrier_is_refused_on_a_follower() {
    let s = Setup::new();
    let mut c = s.cluster();
    let leader = c.leader().unwrap();
    let follower = c.ids().into_iter().find(|i| *i != leader).unwrap();
    let last = c.node(leader).unwrap().last_index();
    let err = c.node_mut(follower).unwrap().propose_barrier().unwrap_err();
    assert!(matches!(err, ProposeError::NotLeader { leader: l } if l == leader), "{err}");
    assert!(err.is_retryable());
    c.tick(3);
    assert_eq!(c.node(leader).unwrap().last_index(), last);
    let barrier = c.commit_barrier().unwrap();
    assert_eq!(barrier, last + 1);
}

fn forwarded(from: u64, to: u64, payloads: &[&[u8]]) -> Message {
    let mut m = Message::default();
    m.set_msg_type(MessageType::MsgPropose);
    m.from = from;
    m.to = to;
    for p in payloads {
        m.mut_entries().push(Entry { data: p.to_vec().into(), ..Default::default() });
    }
    m
}

/// Without sealing, forwarded cleartext is refused exactly when it would land above the cutover:
/// with the cutover at the next index, one entry (landing at C) is accepted and applied, two
/// (the second landing at C + 1) are refused, and once the log reaches C so is one.
#[test]
fn forwarded_cleartext_is_refused_only_when_it_would_land_above_the_cutover() {
    let s = Setup::new();
    let mut c = s.cluster();
    let leader = c.leader().unwrap();
    let follower = c.ids().into_iter().find(|i| *i != leader).unwrap();
    let cutover = c.node(leader).unwrap().last_index() + 1;
    for k in 0..3 {
        s.cutovers[k].set(Some(cutover));
    }
    let two = forwarded(follower, leader, &[b"a=1", b"b=2"]);
    let err = c.node_mut(leader).unwrap().step(two).unwrap_err();
    assert!(matches!(err, StepError::CleartextProposalRefused { .. }), "{err}");
    assert_eq!(c.node(leader).unwrap().last_index(), cutover - 1, "nothing appended");
    c.node_mut(leader).unwrap().step(forwarded(follower, leader, &[b"c=3"])).unwrap();
    c.wait_converged(leader).unwrap();
    let err = c.node_mut(leader).unwrap().step(forwarded(follower, leader, &[b"d=4"])).unwrap_err();
    assert!(matches!(err, StepError::CleartextProposalRefused { .. }), "{err}");
    c.settle();
    assert_eq!(c.node(leader).unwrap().last_index(), cutover);
    for id in c.ids() {
        assert!(c.halted(id).unwrap().is_none(), "node {id} halted");
        assert_eq!(c.state_machine(id).unwrap().payloads().last(), Some(&(cutover, b"c=3".to_vec())));
    }
}

/// Inert, a compacted leader brings a replica that fell behind its log up by snapshot
/// ([`MemStore`](raft_envelope_raftrs::MemStore) keeps the snapshot's data), exactly as without
/// the layer.
#[test]
fn inert_compacted_leader_brings_a_lagging_replica_up_by_snapshot() {
    let s = Setup::new();
    let mut c = s.cluster();
    let leader = c.leader().unwrap();
    let lagging = c.ids().into_iter().find(|i| *i != leader).unwrap();
    c.isolate(lagging);
    c.propose(b"a=1".to_vec()).unwrap();
    let index = c.compact(leader).unwrap();
    assert!(c.read_entry(leader, index).unwrap().is_none(), "compacted");
    c.heal();
    let later = c.propose(b"b=2".to_vec()).unwrap();
    assert!(c.wait_applied(lagging, later.index).unwrap() >= later.index);
    assert!(c.halted(lagging).unwrap().is_none());
    assert_eq!(c.state_machine(lagging).unwrap(), c.state_machine(leader).unwrap());
    let retained = c.retention(lagging).unwrap().snapshot.map(|r| r.last_index);
    assert_eq!(retained, Some(index), "the replica keeps the snapshot it installed");
}

/// A plain layer cannot seal a snapshot, and every replica with a cutover refuses an unsealed
/// one: compacting is refused while a cutover is in force, with nothing compacted.
#[test]
fn plain_layer_refuses_to_compact_while_a_cutover_is_in_force() {
    let s = Setup::new();
    let mut c = s.cluster();
    s.switch_on(&mut c);
    c.propose(b"a=1".to_vec()).unwrap();
    let leader = c.leader().unwrap();
    let refused = c.compact(leader).unwrap_err();
    assert!(matches!(refused, ClusterError::Node(NodeError::Snapshot { .. })), "{refused:?}");
    assert_eq!(c.retention(leader).unwrap().first_log_index, 1, "nothing compacted");
    assert!(c.halted(leader).unwrap().is_none());
}
