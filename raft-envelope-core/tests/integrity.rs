//! Exactly-once envelopes and integrity checkpoints, as the layer state decides them on every
//! replica (`DESIGN.md` §11).
#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

mod common;

use std::time::Duration;

use raft_envelope_core::apply::{Admission, EntryRecord};
use raft_envelope_core::error::{ControlError, FailureReason};
use raft_envelope_core::lifecycle::{CheckpointPolicy, ControlOutcome, LayerSnapshot, REPLAY_WINDOW};
use raft_envelope_core::provider::{FileKekProvider, KekId};
use raft_envelope_core::wire::ControlCommand;
use raft_envelope_core::{Algorithm, KeyId, LayerState, PayloadWrapper, ProposalId, SecretKey};

fn kek() -> FileKekProvider {
    FileKekProvider::from_key(KekId::new("kek-1").unwrap(), SecretKey::from_bytes([5; 32])).unwrap()
}

fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(f)
}

/// Two replicas that applied the same switch-on: install 1, promote 2, enforce 3.
fn replicas() -> (LayerState, LayerState) {
    let leader = LayerState::new(common::cluster("cluster-a"));
    let follower = LayerState::new(common::cluster("cluster-a"));
    switch_on(&leader, &follower, 1);
    (leader, follower)
}

/// `leader` and `follower` apply the same switch-on (install, promote, enforce) from `first` on.
fn switch_on(leader: &LayerState, follower: &LayerState, first: u64) {
    let provider = kek();
    let install = block_on(leader.generate_install(KeyId(1), Algorithm::Aes256Gcm, &provider)).unwrap();
    let entries = [
        leader.encode_entry(ProposalId(1), &install).unwrap(),
        ControlCommand::PromoteKey { key_id: KeyId(1) }.encode(),
        ControlCommand::Enforce.encode(),
    ];
    for (index, entry) in (first..).zip(&entries) {
        block_on(follower.prefetch(entry, &provider)).unwrap();
        leader.apply_control(index, entry).unwrap();
        follower.apply_control(index, entry).unwrap();
    }
}

fn checkpoint_entry(state: &LayerState) -> Vec<u8> {
    let command = state.checkpoint_now().expect("a known chain");
    state.encode_entry(state.next_control_id(), &command).unwrap()
}

#[test]
fn an_envelope_applied_twice_is_a_duplicate_naming_the_first_index() {
    let (leader, _) = replicas();
    let envelope = leader.cipher().seal(ProposalId(7), b"debit 10").unwrap();
    assert_eq!(leader.admit(4, EntryRecord::Envelope(&envelope)), Admission::Apply);
    assert_eq!(leader.admit(5, EntryRecord::Envelope(&envelope)), Admission::Duplicate { first_index: 4 });
    let other = leader.cipher().seal(ProposalId(7), b"debit 10").unwrap();
    assert_eq!(
        leader.admit(6, EntryRecord::Envelope(&other)),
        Admission::Apply,
        "a new seal is a new proposal"
    );
}

#[test]
fn a_replayed_index_gets_the_decision_it_got_the_first_time() {
    let (leader, _) = replicas();
    let envelope = leader.cipher().seal(ProposalId(7), b"x").unwrap();
    leader.admit(4, EntryRecord::Envelope(&envelope));
    leader.admit(5, EntryRecord::Envelope(&envelope));
    let before = leader.snapshot();
    assert_eq!(leader.admit(4, EntryRecord::Envelope(&envelope)), Admission::Apply);
    assert_eq!(leader.admit(5, EntryRecord::Envelope(&envelope)), Admission::Duplicate { first_index: 4 });
    assert_eq!(leader.snapshot(), before, "a replay changes nothing");
}

#[test]
fn a_replayed_index_applies_again_after_its_envelope_left_the_window() {
    // A layer state persisted ahead of its state machine: the replay of index 4 must apply, as
    // it did, even though its envelope is now older than the window (it would be Expired).
    let (leader, _) = replicas();
    let first = leader.cipher().seal(ProposalId(7), b"x").unwrap();
    leader.admit(4, EntryRecord::Envelope(&first));
    for index in 5..5 + REPLAY_WINDOW as u64 + 1 {
        let later = leader.cipher().seal(ProposalId(index), b"y").unwrap();
        assert_eq!(leader.admit(index, EntryRecord::Envelope(&later)), Admission::Apply);
    }
    assert!(
        matches!(leader.admit(2000, EntryRecord::Envelope(&first)), Admission::Expired { .. }),
        "a new copy of it is expired"
    );
    assert_eq!(leader.admit(4, EntryRecord::Envelope(&first)), Admission::Apply, "the replay of 4");
    assert!(matches!(leader.admit(2000, EntryRecord::Envelope(&first)), Admission::Expired { .. }));
}

#[test]
fn only_applied_envelopes_count_toward_the_key_budget() {
    let (leader, _) = replicas();
    let envelope = leader.cipher().seal(ProposalId(7), b"x").unwrap();
    leader.admit(4, EntryRecord::Envelope(&envelope));
    leader.admit(5, EntryRecord::Envelope(&envelope));
    let key = leader.key(KeyId(1)).unwrap();
    assert_eq!((key.sealed_entries, key.last_sealed_index), (1, Some(4)));
}

#[test]
fn a_checkpoint_from_a_replica_with_the_same_history_verifies() {
    let (leader, follower) = replicas();
    for (i, state) in [(4, &leader), (4, &follower)] {
        state.admit(i, EntryRecord::Cleartext(b"below"));
    }
    let entry = checkpoint_entry(&leader);
    leader.apply_control(5, &entry).unwrap();
    follower.apply_control(5, &entry).unwrap();
    assert_eq!(follower.integrity().checkpointed_through(), Some(4));
    assert_eq!(follower.snapshot(), leader.snapshot());
}

#[test]
fn a_replica_that_applied_something_else_halts_diverged_naming_the_range() {
    let (leader, follower) = replicas();
    let envelope = leader.cipher().seal(ProposalId(7), b"x").unwrap();
    leader.admit(4, EntryRecord::Envelope(&envelope));
    follower.admit(4, EntryRecord::Engine(&[])); // the entry rewritten into an engine no-op
    let entry = checkpoint_entry(&leader);
    let halt = follower.apply_control(5, &entry).unwrap_err();
    assert_eq!((halt.index, halt.reason), (5, FailureReason::Diverged));
    assert!(
        matches!(halt.control.as_deref(), Some(ControlError::Diverged { from: 0, through: 4 })),
        "{halt}"
    );
    assert_eq!(follower.applied_index(), Some(4), "a halt changes nothing");
}

#[test]
fn a_checkpoint_names_a_range_after_the_last_verified_one() {
    let (leader, follower) = replicas();
    leader.admit(4, EntryRecord::Cleartext(b"a"));
    follower.admit(4, EntryRecord::Cleartext(b"a"));
    let first = checkpoint_entry(&leader);
    leader.apply_control(5, &first).unwrap();
    follower.apply_control(5, &first).unwrap();
    leader.admit(6, EntryRecord::Cleartext(b"b"));
    follower.admit(6, EntryRecord::Cleartext(b"edited"));
    let second = checkpoint_entry(&leader);
    let halt = follower.apply_control(7, &second).unwrap_err();
    assert!(
        matches!(halt.control.as_deref(), Some(ControlError::Diverged { from: 5, through: 6 })),
        "{halt}"
    );
}

#[test]
fn a_checkpoint_naming_its_own_index_or_later_is_invalid() {
    let (leader, _) = replicas();
    let digest = leader.integrity().digest().unwrap();
    let command = ControlCommand::Checkpoint { through: 4, digest };
    let entry = leader.encode_entry(ProposalId(9), &command).unwrap();
    let halt = leader.apply_control(4, &entry).unwrap_err();
    assert_eq!(halt.reason, FailureReason::InvalidControl);
}

#[test]
fn a_checkpoint_too_old_to_compare_does_not_halt() {
    let (leader, follower) = replicas();
    let entry = checkpoint_entry(&leader);
    for state in [&leader, &follower] {
        for i in 4..4 + 300 {
            state.admit(i, EntryRecord::Cleartext(b"x"));
        }
    }
    follower.apply_control(304, &entry).unwrap();
}

#[test]
fn a_layer_state_started_mid_log_never_halts_on_a_checkpoint() {
    let (leader, _) = replicas();
    leader.admit(4, EntryRecord::Cleartext(b"a"));
    let late = LayerState::new(common::cluster("cluster-a"));
    late.admit(4, EntryRecord::Cleartext(b"a"));
    // The leader's checkpoint (in the clear here: the late state holds no cutover) applies
    // without a halt: this replica keeps no digest at the checkpoint's range.
    let command = leader.checkpoint_now().unwrap();
    late.apply_control(5, &command.encode()).unwrap();
}

#[test]
fn an_inert_layer_state_hashes_nothing_so_a_late_start_matches_the_others() {
    // A layer added to a cluster that already has a log: every replica's state starts mid-log,
    // inert, and starts its chain at the same first layer control entry.
    let early = LayerState::new(common::cluster("cluster-a"));
    let late = LayerState::new(common::cluster("cluster-a"));
    for index in 1..=40 {
        early.admit(index, EntryRecord::Cleartext(b"before the layer"));
    }
    late.admit(40, EntryRecord::Cleartext(b"before the layer"));
    assert_eq!(early.integrity(), late.integrity(), "nothing hashed while inert");
    switch_on(&early, &late, 41);
    for state in [&early, &late] {
        state.admit(44, EntryRecord::Cleartext(b"after"));
    }
    assert_eq!(early.integrity(), late.integrity());
    let checkpoint = checkpoint_entry(&early);
    assert!(matches!(late.apply_control(45, &checkpoint), Ok(ControlOutcome::Applied(_))), "verified");
    assert_eq!(late.integrity().checkpointed_through(), Some(44));
}

#[test]
fn the_replay_window_travels_in_snapshots() {
    let (leader, _) = replicas();
    let envelope = leader.cipher().seal(ProposalId(7), b"x").unwrap();
    leader.admit(4, EntryRecord::Envelope(&envelope));
    let bytes = leader.snapshot().encode();
    let decoded = LayerSnapshot::decode(&bytes).unwrap();
    assert_eq!(decoded, leader.snapshot());
    let joiner = LayerState::new(common::cluster("cluster-a"));
    block_on(joiner.restore_persisted(&bytes, &kek())).unwrap();
    assert_eq!(joiner.admit(5, EntryRecord::Envelope(&envelope)), Admission::Duplicate { first_index: 4 });
}

#[test]
fn checkpoints_are_due_by_count_or_time_once_a_cutover_is_in_force() {
    let (leader, _) = replicas();
    let policy = CheckpointPolicy::new(4, Duration::from_secs(10));
    assert!(leader.checkpoint_due(&policy, Duration::ZERO).is_none(), "3 entries since none");
    leader.admit(4, EntryRecord::Cleartext(b"a"));
    let due = leader.checkpoint_due(&policy, Duration::ZERO).expect("4 entries");
    assert!(matches!(due, ControlCommand::Checkpoint { through: 4, .. }));
    leader.local().note_checkpoint_proposed(4);
    assert!(leader.checkpoint_due(&policy, Duration::from_secs(60)).is_none(), "nothing new");
    leader.admit(5, EntryRecord::Cleartext(b"b"));
    assert!(leader.checkpoint_due(&policy, Duration::from_secs(1)).is_none());
    assert!(leader.checkpoint_due(&policy, Duration::from_secs(10)).is_some(), "by time");
    let inert = LayerState::new(common::cluster("cluster-a"));
    inert.admit(1, EntryRecord::Cleartext(b"a"));
    assert!(inert.checkpoint_due(&CheckpointPolicy::new(1, Duration::ZERO), Duration::ZERO).is_none());
}

#[test]
fn the_digest_chain_matches_the_design_vector() {
    // DESIGN.md §11.2: an engine no-op at 1 (inert: not hashed), a clear enforce at 2 (the chain
    // starts), an engine no-op at 3 and cleartext "put a 1" at 4.
    let state = LayerState::new(common::cluster("cluster-a"));
    assert_eq!(state.admit(1, EntryRecord::Engine(b"")), Admission::Apply);
    state.apply_control(2, &ControlCommand::Enforce.encode()).unwrap();
    assert_eq!(state.admit(3, EntryRecord::Engine(b"")), Admission::Apply);
    assert_eq!(state.admit(4, EntryRecord::Cleartext(b"put a 1")), Admission::Apply);
    let hex = |d: [u8; 32]| d.iter().map(|b| format!("{b:02x}")).collect::<String>();
    let digest = state.integrity().digest().unwrap();
    assert_eq!(hex(digest), "313e54cfa969e6672e5baa30462219959bf1a27dab3dfdbb935993de1681c5be");
    let Some(ControlCommand::Checkpoint { through, digest: carried }) = state.checkpoint_now() else {
        panic!("a checkpoint of a known chain");
    };
    assert_eq!((through, carried), (4, digest));
    let entry: String =
        ControlCommand::Checkpoint { through, digest }.encode().iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(
        entry,
        "e55243544c0d0a1a0107000000280000000000000004\
         313e54cfa969e6672e5baa30462219959bf1a27dab3dfdbb935993de1681c5be"
    );
}
