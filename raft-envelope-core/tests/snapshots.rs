//! Snapshots that carry the layer state, the destroy proof, and rotation when the budget runs low.
#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

mod common;

use raft_envelope_core::apply::EntryRecord;
use raft_envelope_core::error::{AppendRefusal, ControlError, FailureReason};
use raft_envelope_core::lifecycle::{DestroyRefused, LayerSnapshot, RetainedSnapshot, Retention};
use raft_envelope_core::provider::{FileKekProvider, KekId};
use raft_envelope_core::wire::{is_layer_snapshot, ControlCommand, SnapshotHeader};
use raft_envelope_core::*;

fn kek(byte: u8) -> FileKekProvider {
    FileKekProvider::from_key(KekId::new("kek-1").unwrap(), SecretKey::from_bytes([byte; 32])).unwrap()
}

fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(f)
}

/// Installs `key` at index `at` and promotes it at `at + 1` on `state`, as a leader would.
fn install_and_promote(state: &LayerState, provider: &FileKekProvider, key: KeyId, at: u64) {
    let install = block_on(state.generate_install(key, Algorithm::Aes256Gcm, provider)).unwrap();
    state.apply_control(at, &state.encode_entry(ProposalId(at), &install).unwrap()).unwrap();
    let promote = ControlCommand::PromoteKey { key_id: key };
    state.apply_control(at + 1, &state.encode_entry(ProposalId(at + 1), &promote).unwrap()).unwrap();
}

/// An envelope sealed under the active key, as the entry at `index` would store it.
fn sealed_probe(state: &LayerState, index: u64) -> Vec<u8> {
    state.cipher().seal(ProposalId(index), b"probe").unwrap()
}

/// A leader that installed key 1, promoted it and enforced at index 12, then rotated to key 2
/// (install 13, promote 14), with payloads sealed under key 1 at 20..=22.
fn enforced_leader(provider: &FileKekProvider) -> LayerState {
    let leader = LayerState::new(common::cluster("cluster-a"));
    let mut index = 10;
    let mut append = |command: &ControlCommand| {
        let entry = leader.encode_entry(ProposalId(index), command).unwrap();
        leader.apply_control(index, &entry).unwrap();
        index += 1;
    };
    append(&block_on(leader.generate_install(KeyId(1), Algorithm::Aes256Gcm, provider)).unwrap());
    append(&ControlCommand::PromoteKey { key_id: KeyId(1) });
    append(&ControlCommand::Enforce);
    for i in 20..=22 {
        let _ = leader.admit(i, EntryRecord::Envelope(&sealed_probe(&leader, i)));
    }
    let install2 = block_on(leader.generate_install(KeyId(2), Algorithm::Aes256Gcm, provider)).unwrap();
    for (i, command) in [(23, install2), (24, ControlCommand::PromoteKey { key_id: KeyId(2) })] {
        let entry = leader.encode_entry(ProposalId(i), &command).unwrap();
        leader.apply_control(i, &entry).unwrap();
    }
    leader
}

#[test]
fn a_new_replica_reaches_the_leaders_layer_state_from_a_snapshot_alone() {
    let provider = kek(7);
    let leader = enforced_leader(&provider);
    let sealed = leader.seal_snapshot(30, b"user state").unwrap();
    assert!(is_layer_snapshot(&sealed));
    assert!(!sealed.windows(10).any(|w| w == b"user state"), "the user's snapshot is sealed");

    let joiner = LayerState::new(common::cluster("cluster-a"));
    block_on(joiner.prefetch_sealed_snapshot(&sealed, &provider)).unwrap();
    let data = joiner.install_snapshot(30, &sealed).unwrap();
    assert_eq!(data, b"user state");
    assert_eq!(joiner.snapshot(), leader.snapshot());
    assert_eq!(joiner.cutover_source().cutover(), Some(12));
    // Entries sealed under either key open on the joiner.
    let envelope = leader.cipher().seal(ProposalId(1), b"x").unwrap();
    assert_eq!(joiner.cipher().open(&envelope).unwrap(), b"x");
}

#[test]
fn a_snapshot_taken_before_a_rotation_is_sealed_under_the_key_active_then() {
    let provider = kek(7);
    let leader = LayerState::new(common::cluster("cluster-a"));
    install_and_promote(&leader, &provider, KeyId(1), 1);
    let captured = leader.snapshot();
    // Entries go on applying while the snapshot is built: a rotation.
    install_and_promote(&leader, &provider, KeyId(2), 3);

    let sealed = leader.seal_snapshot_of(&captured, 2, b"state at 2").unwrap();
    assert_eq!(SnapshotHeader::read(&sealed).unwrap().sealed_under, Some(KeyId(1)));
    let joiner = LayerState::new(common::cluster("cluster-a"));
    block_on(joiner.prefetch_sealed_snapshot(&sealed, &provider)).unwrap();
    assert_eq!(joiner.install_snapshot(2, &sealed).unwrap(), b"state at 2");
    assert_eq!(joiner.snapshot(), captured);
    assert_eq!(joiner.local().retained_snapshot(), Some(RetainedSnapshot::new(2, Some(KeyId(1)))));
}

#[test]
fn a_snapshot_header_is_readable_without_keys() {
    let provider = kek(7);
    let leader = enforced_leader(&provider);
    let sealed = leader.seal_snapshot(30, b"user state").unwrap();
    let header = SnapshotHeader::read(&sealed).unwrap();
    assert_eq!(header.last_index, 30);
    assert_eq!(header.sealed_under, Some(KeyId(2)));
    assert_eq!(header.layer, leader.snapshot());
}

#[test]
fn an_inert_layer_state_frames_the_snapshot_in_the_clear() {
    let leader = LayerState::new(common::cluster("cluster-a"));
    let framed = leader.seal_snapshot(5, b"user state").unwrap();
    assert!(framed.ends_with(b"user state"));
    assert_eq!(SnapshotHeader::read(&framed).unwrap().sealed_under, None);
    let joiner = LayerState::new(common::cluster("cluster-a"));
    assert_eq!(joiner.install_snapshot(5, &framed).unwrap(), b"user state");
}

#[test]
fn an_inert_frame_matches_the_design_vector() {
    // DESIGN.md §10.10: the frame of an inert layer state, last index 5, data "user state".
    let expected = "e552534e500d0a1a0100000000000000000500000052e5524c53540d0a1a02ffffffffffffffff\
                    ffffffffffffffff00000000\
                    010000000000000000000000000000000000000000000000000000000000000000\
                    ffffffffffffffff000000000000000000000000\
                    75736572207374617465";
    let framed = LayerState::new(common::cluster("cluster-a")).seal_snapshot(5, b"user state").unwrap();
    let hex: String = framed.iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(hex, expected);
}

#[test]
fn a_snapshot_without_its_keys_unwrapped_is_refused_as_key_unavailable() {
    let provider = kek(7);
    let sealed = enforced_leader(&provider).seal_snapshot(30, b"user state").unwrap();
    let joiner = LayerState::new(common::cluster("cluster-a"));
    let error = joiner.install_snapshot(30, &sealed).unwrap_err();
    assert_eq!(error.reason(), FailureReason::KeyUnavailable);
    assert_eq!(joiner.snapshot(), LayerSnapshot::default(), "nothing changed");
}

#[test]
fn a_replica_with_another_kek_cannot_prefetch_a_snapshot() {
    let sealed = enforced_leader(&kek(7)).seal_snapshot(30, b"user state").unwrap();
    let joiner = LayerState::new(common::cluster("cluster-a"));
    let error = block_on(joiner.prefetch_sealed_snapshot(&sealed, &kek(8))).unwrap_err();
    assert_eq!(error.reason(), FailureReason::KeyUnavailable);
}

#[test]
fn a_tampered_layer_section_is_refused() {
    let provider = kek(7);
    let leader = enforced_leader(&provider);
    let mut forged = leader.snapshot();
    forged.cutover = Some(1_000); // a lower or higher cutover than the real one
    let sealed = leader.seal_snapshot(30, b"user state").unwrap();
    let original_layer = leader.snapshot().encode();
    let mut tampered = sealed[..22].to_vec();
    let forged_bytes = forged.encode();
    assert_eq!(forged_bytes.len(), original_layer.len());
    tampered.extend_from_slice(&forged_bytes);
    tampered.extend_from_slice(&sealed[22 + original_layer.len()..]);

    let joiner = LayerState::new(common::cluster("cluster-a"));
    block_on(joiner.prefetch_sealed_snapshot(&tampered, &provider)).unwrap();
    let error = joiner.install_snapshot(30, &tampered).unwrap_err();
    assert!(matches!(error, ControlError::MalformedSnapshot { .. }), "{error}");
    assert_eq!(joiner.cutover(), None, "nothing changed");
}

#[test]
fn a_flipped_body_bit_is_refused_as_authentication_failure() {
    let provider = kek(7);
    let mut sealed = enforced_leader(&provider).seal_snapshot(30, b"user state").unwrap();
    let last = sealed.len() - 1;
    sealed[last] ^= 1;
    let joiner = LayerState::new(common::cluster("cluster-a"));
    block_on(joiner.prefetch_sealed_snapshot(&sealed, &provider)).unwrap();
    let error = joiner.install_snapshot(30, &sealed).unwrap_err();
    assert_eq!(error.reason(), FailureReason::AuthenticationFailed);
}

#[test]
fn a_snapshot_offered_for_another_index_is_refused() {
    let provider = kek(7);
    let sealed = enforced_leader(&provider).seal_snapshot(30, b"user state").unwrap();
    let joiner = LayerState::new(common::cluster("cluster-a"));
    block_on(joiner.prefetch_sealed_snapshot(&sealed, &provider)).unwrap();
    assert!(joiner.install_snapshot(31, &sealed).is_err());
    // Rewriting the clear index field does not help: the sealed body is bound to 30.
    let mut rewritten = sealed.clone();
    rewritten[10..18].copy_from_slice(&31u64.to_be_bytes());
    assert!(joiner.install_snapshot(31, &rewritten).is_err());
    assert_eq!(joiner.install_snapshot(30, &sealed).unwrap(), b"user state");
}

#[test]
fn a_clear_snapshot_is_refused_once_the_layer_state_enforces() {
    let provider = kek(7);
    let leader = enforced_leader(&provider);
    // A clear frame claiming an inert layer state, offered to an enforcing replica.
    let clear = LayerState::new(common::cluster("cluster-a")).seal_snapshot(30, b"forged").unwrap();
    let error = leader.install_snapshot(30, &clear).unwrap_err();
    assert_eq!(error.reason(), FailureReason::UnsealedSnapshot);
}

#[test]
fn a_clear_snapshot_is_refused_once_a_key_is_active_here() {
    let provider = kek(7);
    let replica = LayerState::new(common::cluster("cluster-a"));
    install_and_promote(&replica, &provider, KeyId(1), 1);
    let clear = LayerState::new(common::cluster("cluster-a")).seal_snapshot(30, b"forged").unwrap();
    assert_eq!(replica.install_snapshot(30, &clear).unwrap_err().reason(), FailureReason::UnsealedSnapshot);
}

#[test]
fn a_clear_snapshot_after_switching_off_installs_where_the_key_is_still_active() {
    // Install and promote key 1, then (no cutover yet) destroy it: the layer is off again and
    // its snapshots are clear. A follower that lagged with key 1 active must still catch up.
    let provider = kek(7);
    let leader = LayerState::new(common::cluster("cluster-a"));
    install_and_promote(&leader, &provider, KeyId(1), 1);
    let follower = LayerState::new(common::cluster("cluster-a"));
    install_and_promote(&follower, &provider, KeyId(1), 1);
    let destroy = ControlCommand::DestroyKey { key_id: KeyId(1) };
    leader.apply_control(3, &leader.encode_entry(ProposalId(3), &destroy).unwrap()).unwrap();
    let clear = leader.seal_snapshot(3, b"user state").unwrap();
    assert!(SnapshotHeader::read(&clear).unwrap().sealed_under.is_none());
    assert_eq!(follower.install_snapshot(3, &clear).unwrap(), b"user state");
    assert_eq!(follower.active_key(), None);
}

#[test]
fn a_capture_keeps_its_key_in_use_until_dropped() {
    let provider = kek(7);
    let leader = std::sync::Arc::new(enforced_leader(&provider));
    assert!(leader.local().keys_in_use().is_empty());
    let capture = leader.capture_for_snapshot();
    assert_eq!(capture.layer(), &leader.snapshot());
    assert_eq!(leader.local().keys_in_use(), vec![KeyId(2)]);
    let sealed = leader.seal_snapshot_of(capture.layer(), 30, b"state").unwrap();
    drop(capture);
    assert!(leader.local().keys_in_use().is_empty());
    assert_eq!(SnapshotHeader::read(&sealed).unwrap().sealed_under, Some(KeyId(2)));
}

#[test]
fn a_snapshot_from_another_cluster_is_refused() {
    let provider = kek(7);
    let sealed = enforced_leader(&provider).seal_snapshot(30, b"user state").unwrap();
    let other = LayerState::new(common::cluster("cluster-b"));
    // The wrapped keys are bound to cluster-a: they do not even unwrap here.
    assert!(block_on(other.prefetch_sealed_snapshot(&sealed, &provider)).is_err());
}

fn members() -> Vec<u64> {
    vec![1, 2, 3]
}

fn compacted(first: u64, snapshot_key: Option<KeyId>) -> Vec<Retention<u64>> {
    (1..=3).map(|r| Retention::new(r, first, Some(RetainedSnapshot::new(first - 1, snapshot_key)))).collect()
}

#[test]
fn destroying_is_refused_while_a_log_still_holds_entries_sealed_under_the_key() {
    let leader = enforced_leader(&kek(7));
    let mut reports = compacted(30, Some(KeyId(2)));
    // Replica 2 still has index 22 on: payloads and the rotation's control entries (23, 24)
    // were sealed under key 1.
    reports[1].first_log_index = 22;
    match leader.check_destroy(KeyId(1), &members(), &reports).unwrap_err() {
        DestroyRefused::InLog { replica, key_id, first_log_index, last_sealed_index } => {
            assert_eq!((replica, key_id, first_log_index, last_sealed_index), (2, KeyId(1), 22, 24));
        }
        other => panic!("unexpected {other}"),
    }
}

#[test]
fn destroying_is_refused_while_a_snapshot_sealed_under_the_key_is_retained() {
    let leader = enforced_leader(&kek(7));
    let mut reports = compacted(30, Some(KeyId(2)));
    reports[2].snapshot = Some(RetainedSnapshot::new(21, Some(KeyId(1))));
    let error = leader.check_destroy(KeyId(1), &members(), &reports).unwrap_err();
    assert_eq!(error, DestroyRefused::InSnapshot { replica: 3, key_id: KeyId(1), snapshot_index: 21 });
    assert!(error.to_string().contains("replica 3"));
}

#[test]
fn destroying_is_refused_while_a_replica_may_still_seal_under_the_key() {
    let leader = enforced_leader(&kek(7));
    let mut reports = compacted(30, Some(KeyId(2)));
    // Replica 1 has not applied the rotation yet.
    reports[0] = reports[0].clone().with_sealing(Some(KeyId(1)), Vec::new());
    let error = leader.check_destroy(KeyId(1), &members(), &reports).unwrap_err();
    assert_eq!(error, DestroyRefused::StillSealing { replica: 1, key_id: KeyId(1) });
    // Replica 2 rotated but still has an envelope under key 1 on its way to the log.
    reports[0] = reports[0].clone().with_sealing(Some(KeyId(2)), Vec::new());
    reports[1] = reports[1].clone().with_sealing(Some(KeyId(2)), vec![KeyId(1)]);
    let error = leader.check_destroy(KeyId(1), &members(), &reports).unwrap_err();
    assert_eq!(error, DestroyRefused::StillSealing { replica: 2, key_id: KeyId(1) });
}

#[test]
fn destroying_is_refused_without_a_report_from_every_member() {
    let leader = enforced_leader(&kek(7));
    let mut reports = compacted(30, Some(KeyId(2)));
    reports.pop();
    let error = leader.check_destroy(KeyId(1), &members(), &reports).unwrap_err();
    assert_eq!(error, DestroyRefused::NoReport { replica: 3 });
}

#[test]
fn destroying_is_allowed_once_every_replica_compacted_past_the_key() {
    let leader = enforced_leader(&kek(7));
    leader.check_destroy(KeyId(1), &members(), &compacted(25, Some(KeyId(2)))).unwrap();
    let error = leader.check_destroy(KeyId(1), &members(), &compacted(24, Some(KeyId(2)))).unwrap_err();
    assert!(matches!(error, DestroyRefused::InLog { last_sealed_index: 24, .. }), "{error}");
}

#[test]
fn destroying_the_active_key_is_always_refused() {
    let leader = enforced_leader(&kek(7));
    let error = leader.check_destroy(KeyId(2), &members(), &compacted(40, None)).unwrap_err();
    assert_eq!(error, DestroyRefused::ActiveKey(KeyId(2)));
    assert!(matches!(
        leader.check_command(&ControlCommand::RetireKey { key_id: KeyId(2) }),
        Err(ControlError::ActiveKeyNeeded(KeyId(2)))
    ));
    leader.check_command(&ControlCommand::RetireKey { key_id: KeyId(1) }).unwrap();
}

#[test]
fn commands_that_would_halt_every_replica_are_refused_before_proposing() {
    let leader = enforced_leader(&kek(7));
    let unknown = KeyId(9);
    for command in [
        ControlCommand::PromoteKey { key_id: unknown },
        ControlCommand::RetireKey { key_id: unknown },
        ControlCommand::DestroyKey { key_id: unknown },
    ] {
        assert!(matches!(leader.check_command(&command), Err(ControlError::UnknownKey(k)) if k == unknown));
    }
    leader
        .apply_control(
            25,
            &leader.encode_entry(ProposalId(25), &ControlCommand::DestroyKey { key_id: KeyId(1) }).unwrap(),
        )
        .unwrap();
    let promote_destroyed = ControlCommand::PromoteKey { key_id: KeyId(1) };
    assert!(matches!(leader.check_command(&promote_destroyed), Err(ControlError::KeyDestroyed(_))));
    // Destroying a destroyed key changes nothing: allowed.
    leader.check_command(&ControlCommand::DestroyKey { key_id: KeyId(1) }).unwrap();
    leader.check_command(&ControlCommand::Enforce).unwrap();
}

#[test]
fn rotation_becomes_due_when_an_eighth_of_the_budget_is_left() {
    let provider = kek(7);
    let leader = LayerState::with_seal_limit(common::cluster("cluster-a"), 80);
    install_and_promote(&leader, &provider, KeyId(1), 1);
    assert_eq!(leader.rotation_due(), None);
    // Replicated counts alone make it due (a new leader that sealed nothing itself).
    for i in 3..3 + 70 {
        let _ = leader.admit(i, EntryRecord::Envelope(&sealed_probe(&leader, i)));
    }
    assert_eq!(leader.rotation_due(), Some(KeyId(1)));
    let status = leader.status();
    assert!(status.rotation_due);
    assert_eq!(status.budget_remaining.get(&KeyId(1)), Some(&10));
}

#[test]
fn local_seals_alone_make_rotation_due() {
    let provider = kek(7);
    let leader = LayerState::with_seal_limit(common::cluster("cluster-a"), 80);
    install_and_promote(&leader, &provider, KeyId(1), 1);
    for i in 0..69 {
        leader.cipher().seal(ProposalId(i), b"x").unwrap();
    }
    assert_eq!(leader.rotation_due(), None);
    leader.cipher().seal(ProposalId(70), b"x").unwrap();
    assert_eq!(leader.rotation_due(), Some(KeyId(1)));
}

#[test]
fn control_is_pending_until_the_replica_applied_past_the_last_appended_control_entry() {
    let state = LayerState::new(common::cluster("cluster-a"));
    assert!(!state.local().control_pending());
    state.local().note_control_appended(7);
    assert!(state.local().control_pending());
    state.local().note_applied_through(6);
    assert!(state.local().control_pending());
    state.local().note_applied_through(7);
    assert!(!state.local().control_pending());
    // Raised by appends, never by an older note.
    state.local().note_control_appended(3);
    state.local().note_applied_through(2);
    assert!(!state.local().control_pending());
    // A truncated tail takes its control entries with it.
    state.local().note_control_appended(20);
    assert!(state.local().control_pending());
    state.local().note_log_truncated(9);
    state.local().note_applied_through(9);
    assert!(!state.local().control_pending());
}

#[test]
fn appending_is_refused_under_a_rotated_key_or_while_control_is_pending() {
    let leader = enforced_leader(&kek(7)); // key 2 active, key 1 decrypt-only
    leader.check_append(None).unwrap();
    leader.check_append(Some(KeyId(2))).unwrap();
    assert_eq!(leader.check_append(Some(KeyId(1))), Err(AppendRefusal::NotActiveKey { key_id: KeyId(1) }));
    leader.local().note_control_appended(40);
    assert_eq!(leader.check_append(None), Err(AppendRefusal::ControlPending));
    assert_eq!(leader.check_append(Some(KeyId(2))), Err(AppendRefusal::ControlPending));
    leader.local().note_applied_through(40);
    leader.check_append(Some(KeyId(2))).unwrap();
}
