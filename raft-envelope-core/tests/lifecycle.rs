//! Key lifecycle through the log, core part: control entries applied by `LayerState`, key
//! providers, layer snapshots.
#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

mod common;

use std::sync::Arc;

use proptest::prelude::*;
use raft_envelope_core::*;

use raft_envelope_core::apply::EntryRecord;
use raft_envelope_core::error::{ControlError, FailureReason};
use raft_envelope_core::lifecycle::{ControlOutcome, KeyState, LayerSnapshot, SealBudget};
use raft_envelope_core::provider::{
    FileKekProvider, KekId, KeyProvider, KeyProviderError, WrapContext, WrappedKey,
};
use raft_envelope_core::wire::{
    is_clear_control_entry, ControlCommand, EnvelopeHeader, InstallKey, Purpose, LAYER_SNAPSHOT_MAGIC,
    MAX_CONTROL_ENTRY_LEN,
};

fn kek(name: &str, byte: u8) -> FileKekProvider {
    FileKekProvider::from_key(KekId::new(name).unwrap(), SecretKey::from_bytes([byte; 32])).unwrap()
}

fn state() -> LayerState {
    LayerState::new(common::cluster("cluster-a"))
}

fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(f)
}

/// A scripted admin history: install 1, promote 1, enforce, install 2, promote 2, retire 1,
/// destroy 1 (with some sealed entries in between). Returns `(index, entry)` pairs as a leader
/// would append them, plus the leader's state after applying them all.
fn history(provider: &FileKekProvider) -> (Vec<(u64, Vec<u8>)>, LayerState) {
    let leader = state();
    let mut log = Vec::new();
    let mut index = 10;
    let mut append = |leader: &LayerState, command: &ControlCommand| {
        let entry = leader.encode_entry(ProposalId(index), command).unwrap();
        leader.apply_control(index, &entry).unwrap();
        log.push((index, entry));
        index += 1;
    };
    let install1 = block_on(leader.generate_install(KeyId(1), Algorithm::Aes256Gcm, provider)).unwrap();
    append(&leader, &install1);
    append(&leader, &ControlCommand::PromoteKey { key_id: KeyId(1) });
    append(&leader, &ControlCommand::Enforce);
    let install2 = block_on(leader.generate_install(KeyId(2), Algorithm::Aes256GcmSiv, provider)).unwrap();
    append(&leader, &install2);
    append(&leader, &ControlCommand::PromoteKey { key_id: KeyId(2) });
    append(&leader, &ControlCommand::RetireKey { key_id: KeyId(1) });
    append(&leader, &ControlCommand::DestroyKey { key_id: KeyId(1) });
    (log, leader)
}

fn replay(provider: &FileKekProvider, log: &[(u64, Vec<u8>)]) -> LayerState {
    let replica = state();
    for (index, entry) in log {
        block_on(replica.prefetch(entry, provider)).unwrap();
        replica.apply_control(*index, entry).unwrap();
    }
    replica
}

#[test]
fn same_log_gives_identical_layer_state_on_three_replicas() {
    let provider = kek("kek-1", 9);
    let (log, leader) = history(&provider);
    let replicas: Vec<LayerState> = (0..3).map(|_| replay(&provider, &log)).collect();
    let expected = leader.snapshot();
    for r in &replicas {
        assert_eq!(r.snapshot(), expected);
        assert_eq!(r.active_key(), Some(KeyId(2)));
        assert_eq!(r.cutover(), Some(12));
        assert_eq!(r.keyring().state(KeyId(1)), Some(KeyState::Destroyed));
        assert_eq!(r.keyring().state(KeyId(2)), Some(KeyState::Active));
        assert_eq!(r.cutover_source().cutover(), Some(12));
    }
    // Destroyed keys carry no material in the snapshot.
    assert_eq!(expected.keys[0].wrapped_key, None);
    assert_eq!(expected.keys[0].state, KeyState::Destroyed);
    // The entries after the first promote were sealed under key 1, then key 2.
    assert_eq!(expected.keys[0].sealed_entries, 3); // enforce, install 2, promote 2
    assert_eq!(expected.keys[1].sealed_entries, 2); // retire 1, destroy 1
    assert_eq!(expected.keys[1].last_sealed_index, Some(16));
    // Every replica opens what any other seals.
    let envelope = replicas[0].cipher().seal(ProposalId(1), b"x=1").unwrap();
    for r in &replicas[1..] {
        assert_eq!(r.cipher().open(&envelope).unwrap(), b"x=1");
    }
}

#[test]
fn entries_are_sealed_once_a_key_is_active() {
    let provider = kek("kek-1", 9);
    let (log, _) = history(&provider);
    assert!(is_clear_control_entry(&log[0].1), "install before any key: clear");
    assert!(is_clear_control_entry(&log[1].1), "promote of the first key: clear");
    for (index, entry) in &log[2..] {
        let header = EnvelopeHeader::parse(entry).unwrap();
        assert_eq!(header.purpose, Purpose::Control, "entry {index} sealed for control");
    }
}

#[test]
fn replica_without_the_kek_halts_at_the_install_entry_and_resumes_once_given_it() {
    let provider = kek("kek-1", 9);
    let (log, leader) = history(&provider);
    let replica = state();
    let (install_index, install) = &log[0];

    // Nothing prefetched: halt at the install entry, naming it, the key and the reason.
    let halt = replica.apply_control(*install_index, install).unwrap_err();
    assert_eq!(halt.index, *install_index);
    assert_eq!(halt.key_id, Some(KeyId(1)));
    assert_eq!(halt.reason, FailureReason::KeyUnavailable);
    assert!(matches!(halt.control.as_deref(), Some(&ControlError::KeyUnavailable { .. })));
    // Sticky: the same entry fails again; nothing changed.
    assert_eq!(replica.apply_control(*install_index, install).unwrap_err().index, *install_index);
    assert_eq!(replica.applied_index(), None);
    assert!(replica.keys().is_empty());

    // A provider with another KEK (same name, other bytes) cannot unwrap it.
    let wrong = kek("kek-1", 1);
    let err = block_on(replica.prefetch(install, &wrong)).unwrap_err();
    assert!(matches!(
        err,
        ControlError::Provider {
            key_id: KeyId(1),
            source: KeyProviderError::UnwrapFailed { reason: FailureReason::AuthenticationFailed, .. }
        }
    ));
    // A provider for another KEK name refuses.
    let other = kek("kek-2", 9);
    let err = block_on(replica.prefetch(install, &other)).unwrap_err();
    assert!(matches!(err, ControlError::Provider { source: KeyProviderError::UnknownKek { .. }, .. }));
    assert_eq!(
        replica.apply_control(*install_index, install).unwrap_err().reason,
        FailureReason::KeyUnavailable
    );

    // Given the KEK, the same entry applies and the replica converges.
    assert_eq!(block_on(replica.prefetch(install, &provider)).unwrap(), Some(KeyId(1)));
    assert!(matches!(replica.apply_control(*install_index, install).unwrap(), ControlOutcome::Applied(_)));
    for (index, entry) in &log[1..] {
        block_on(replica.prefetch(entry, &provider)).unwrap();
        replica.apply_control(*index, entry).unwrap();
    }
    assert_eq!(replica.snapshot(), leader.snapshot());
}

#[test]
fn destroy_then_open_fails_with_destroyed_key() {
    let provider = kek("kek-1", 9);
    let replica = state();
    let install = block_on(replica.generate_install(KeyId(1), Algorithm::Aes256Gcm, &provider)).unwrap();
    replica.apply_control(1, &install.encode()).unwrap();
    replica.apply_control(2, &ControlCommand::PromoteKey { key_id: KeyId(1) }.encode()).unwrap();
    let cipher = replica.cipher();
    let envelope = cipher.seal(ProposalId(7), b"secret").unwrap();
    assert_eq!(cipher.open(&envelope).unwrap(), b"secret");

    let destroy =
        replica.encode_entry(ProposalId(3), &ControlCommand::DestroyKey { key_id: KeyId(1) }).unwrap();
    assert!(matches!(replica.apply_control(3, &destroy).unwrap(), ControlOutcome::Applied(_)));
    assert!(matches!(cipher.open(&envelope), Err(OpenError::DestroyedKey { key_id: KeyId(1) })));
    let gate = ApplyGate::new(replica.cutover_source()).with_unwrapper(Arc::new(cipher.clone()));
    assert_eq!(
        gate.decide(4, EntryKind::Envelope, &envelope).unwrap_err().reason,
        FailureReason::DestroyedKey
    );
    // Nothing seals any more; a promote of the destroyed key halts; destroying again changes nothing.
    assert!(matches!(cipher.seal(ProposalId(8), b"x"), Err(SealError::NoActiveKey)));
    let promote = ControlCommand::PromoteKey { key_id: KeyId(1) }.encode();
    let halt = replica.apply_control(4, &promote).unwrap_err();
    assert_eq!((halt.index, halt.reason), (4, FailureReason::InvalidControl));
    assert!(matches!(halt.control.as_deref(), Some(&ControlError::KeyDestroyed(KeyId(1)))));
    let again = ControlCommand::DestroyKey { key_id: KeyId(1) }.encode();
    assert!(matches!(replica.apply_control(4, &again).unwrap(), ControlOutcome::Unchanged(_)));
}

#[test]
fn enforce_sets_the_cutover_to_its_own_index() {
    let provider = kek("kek-1", 9);
    let replica = state();
    let gate = ApplyGate::new(replica.cutover_source()).with_unwrapper(Arc::new(replica.cipher()));
    assert_eq!(gate.decide(41, EntryKind::Cleartext, b"legacy").unwrap().as_bytes(), b"legacy");

    let install = block_on(replica.generate_install(KeyId(5), Algorithm::Aes256Gcm, &provider)).unwrap();
    replica.apply_control(40, &install.encode()).unwrap();
    replica.apply_control(41, &ControlCommand::PromoteKey { key_id: KeyId(5) }.encode()).unwrap();
    // The enforce entry at exactly C may be in the clear.
    let enforce = ControlCommand::Enforce.encode();
    assert!(matches!(replica.apply_control(42, &enforce).unwrap(), ControlOutcome::Applied(_)));
    assert_eq!(replica.cutover(), Some(42));
    assert_eq!(gate.cutover(), Some(42));
    assert_eq!(gate.decide(42, EntryKind::Cleartext, b"marker").unwrap().as_bytes(), b"marker");
    assert_eq!(
        gate.decide(43, EntryKind::Cleartext, b"late").unwrap_err().reason,
        FailureReason::CleartextAboveCutover
    );

    // Above C a clear control entry halts; the same command sealed applies; C never moves.
    let halt = replica.apply_control(43, &enforce).unwrap_err();
    assert_eq!((halt.index, halt.reason), (43, FailureReason::CleartextAboveCutover));
    let sealed = replica.encode_entry(ProposalId(1), &ControlCommand::Enforce).unwrap();
    assert!(matches!(replica.apply_control(43, &sealed).unwrap(), ControlOutcome::Unchanged(_)));
    assert_eq!(replica.cutover(), Some(42));
    // Replays at or below the applied index are ignored.
    assert_eq!(replica.apply_control(42, &enforce).unwrap(), ControlOutcome::AlreadyApplied);
}

#[test]
fn clear_entries_are_refused_once_enforced_without_an_active_key() {
    let provider = kek("kek-1", 9);
    let replica = state();
    let install = block_on(replica.generate_install(KeyId(1), Algorithm::Aes256Gcm, &provider)).unwrap();
    replica.apply_control(1, &install.encode()).unwrap();
    replica.apply_control(2, &ControlCommand::PromoteKey { key_id: KeyId(1) }.encode()).unwrap();
    replica
        .apply_control(3, &replica.encode_entry(ProposalId(1), &ControlCommand::Enforce).unwrap())
        .unwrap();
    let retire =
        replica.encode_entry(ProposalId(2), &ControlCommand::RetireKey { key_id: KeyId(1) }).unwrap();
    replica.apply_control(4, &retire).unwrap();
    assert!(matches!(
        replica.encode_entry(ProposalId(3), &ControlCommand::PromoteKey { key_id: KeyId(1) }),
        Err(SealError::NoActiveKey)
    ));
}

#[test]
fn commands_that_cannot_apply_halt_and_change_nothing() {
    let provider = kek("kek-1", 9);
    let replica = state();
    let before = replica.snapshot();
    for (command, reason) in [
        (ControlCommand::PromoteKey { key_id: KeyId(9) }, FailureReason::InvalidControl),
        (ControlCommand::RetireKey { key_id: KeyId(9) }, FailureReason::InvalidControl),
        (ControlCommand::DestroyKey { key_id: KeyId(9) }, FailureReason::InvalidControl),
    ] {
        let halt = replica.apply_control(5, &command.encode()).unwrap_err();
        assert_eq!((halt.index, halt.key_id, halt.reason), (5, Some(KeyId(9)), reason));
        assert!(matches!(halt.control.as_deref(), Some(&ControlError::UnknownKey(KeyId(9)))));
    }
    // Malformed entries and payload envelopes halt as invalid or wrong purpose.
    let halt = replica.apply_control(5, b"not a control entry").unwrap_err();
    assert_eq!(halt.reason, FailureReason::InvalidControl);
    let install = block_on(replica.generate_install(KeyId(1), Algorithm::Aes256Gcm, &provider)).unwrap();
    replica.apply_control(5, &install.encode()).unwrap();
    replica.apply_control(6, &ControlCommand::PromoteKey { key_id: KeyId(1) }.encode()).unwrap();
    let payload = replica.cipher().seal(ProposalId(1), &ControlCommand::Enforce.encode()).unwrap();
    assert_eq!(replica.apply_control(7, &payload).unwrap_err().reason, FailureReason::WrongPurpose);
    // The same install twice is a no-op; another key under the same id halts.
    assert!(matches!(replica.apply_control(7, &install.encode()).unwrap(), ControlOutcome::Unchanged(_)));
    let other = LayerState::new(common::cluster("cluster-a"));
    let conflicting = block_on(other.generate_install(KeyId(1), Algorithm::Aes256Gcm, &provider)).unwrap();
    let halt = replica.apply_control(8, &conflicting.encode()).unwrap_err();
    assert!(matches!(halt.control.as_deref(), Some(&ControlError::ConflictingInstall(KeyId(1)))));
    assert_eq!(replica.applied_index(), Some(7));
    assert_ne!(replica.snapshot(), before);
    // And a sealed control entry tampered with halts with authentication_failed.
    let mut sealed = replica.encode_entry(ProposalId(2), &ControlCommand::Enforce).unwrap();
    let last = sealed.len() - 1;
    sealed[last] ^= 1;
    assert_eq!(replica.apply_control(8, &sealed).unwrap_err().reason, FailureReason::AuthenticationFailed);
    assert_eq!(replica.cutover(), None);
}

#[test]
fn wrapped_keys_are_bound_to_cluster_key_id_and_algorithm() {
    let provider = kek("kek-1", 9);
    let cluster = common::cluster("cluster-a");
    let kek_id = provider.kek_id().clone();
    let key = SecretKey::generate().unwrap();
    let ctx = WrapContext::new(&cluster, KeyId(3), Algorithm::Aes256Gcm, &kek_id);
    let wrapped = block_on(provider.wrap(&ctx, &key)).unwrap();
    assert_eq!(wrapped.as_bytes().len(), 81);
    let header = EnvelopeHeader::parse(wrapped.as_bytes()).unwrap();
    assert_eq!((header.purpose, header.proposal_id), (Purpose::KeyWrap, ProposalId(3)));
    assert_eq!(block_on(provider.unwrap(&ctx, &wrapped)).unwrap().expose_secret(), key.expose_secret());

    let other_cluster = common::cluster("cluster-b");
    for bad in [
        WrapContext::new(&other_cluster, KeyId(3), Algorithm::Aes256Gcm, &kek_id),
        WrapContext::new(&cluster, KeyId(4), Algorithm::Aes256Gcm, &kek_id),
        WrapContext::new(&cluster, KeyId(3), Algorithm::Aes256GcmSiv, &kek_id),
    ] {
        let err = block_on(provider.unwrap(&bad, &wrapped)).unwrap_err();
        assert!(matches!(err, KeyProviderError::UnwrapFailed { .. }), "{bad:?}: {err}");
    }
    // A data envelope is not a wrapped key (purpose), and vice versa.
    let data = common::cipher().seal(ProposalId(3), &[0u8; 37]).unwrap();
    let err = block_on(provider.unwrap(&ctx, &WrappedKey::new(data).unwrap())).unwrap_err();
    assert!(matches!(err, KeyProviderError::UnwrapFailed { .. }));
}

#[test]
fn snapshot_round_trip_restores_exactly_the_same_layer_state() {
    let provider = kek("kek-1", 9);
    let (log, leader) = history(&provider);
    let old = {
        // An envelope sealed under key 2 before the snapshot.
        leader.cipher().seal(ProposalId(99), b"before snapshot").unwrap()
    };
    leader.admit(17, EntryRecord::Envelope(&old));
    let snapshot = leader.snapshot();
    let bytes = snapshot.encode();
    assert!(bytes.starts_with(&LAYER_SNAPSHOT_MAGIC));
    let decoded = LayerSnapshot::decode(&bytes).unwrap();
    assert_eq!(decoded, snapshot);
    assert_eq!(decoded.encode(), bytes);

    // A new member restores from the snapshot alone (the control entries were compacted).
    let joiner = state();
    assert!(matches!(joiner.restore(&decoded), Err(ControlError::KeyUnavailable { key_id: KeyId(2), .. })));
    assert_eq!(joiner.snapshot(), LayerSnapshot::default(), "nothing changed on error");
    block_on(joiner.prefetch_snapshot(&decoded, &provider)).unwrap();
    joiner.restore(&decoded).unwrap();
    assert_eq!(joiner.snapshot(), snapshot);
    assert_eq!(joiner.cutover_source().cutover(), Some(12));
    assert_eq!(joiner.keyring().state(KeyId(1)), Some(KeyState::Destroyed));
    assert_eq!(joiner.keyring().active_key(), Some(KeyId(2)));
    assert_eq!(joiner.cipher().open(&old).unwrap(), b"before snapshot");
    // Restored budgets start at the recorded count.
    assert_eq!(joiner.keyring().budget_remaining(KeyId(2)), Some(SealBudget::NIST_LIMIT - 3));

    // A replica that had applied a prefix of the same log restores too; an older snapshot is refused.
    let lagging = replay(&provider, &log[..4]);
    block_on(lagging.prefetch_snapshot(&decoded, &provider)).unwrap();
    lagging.restore(&decoded).unwrap();
    assert_eq!(lagging.snapshot(), snapshot);
    let older = replay(&provider, &log[..3]).snapshot();
    assert!(matches!(lagging.restore(&older), Err(ControlError::InconsistentSnapshot { .. })));
    assert_eq!(lagging.snapshot(), snapshot);
    // Both then apply later entries identically.
    let next = leader.encode_entry(ProposalId(1), &ControlCommand::RetireKey { key_id: KeyId(2) }).unwrap();
    for r in [&leader, &joiner, &lagging] {
        r.apply_control(18, &next).unwrap();
    }
    assert_eq!(joiner.snapshot(), leader.snapshot());
    assert_eq!(lagging.snapshot(), leader.snapshot());
}

#[test]
fn snapshot_decoder_rejects_broken_invariants() {
    let provider = kek("kek-1", 9);
    let (_, leader) = history(&provider);
    let bytes = leader.snapshot().encode();
    for cut in 0..bytes.len() {
        assert!(LayerSnapshot::decode(&bytes[..cut]).is_err(), "truncated at {cut}");
    }
    let mut trailing = bytes.clone();
    trailing.push(0);
    assert!(LayerSnapshot::decode(&trailing).is_err());
    // Two active keys.
    let mut snapshot = leader.snapshot();
    snapshot.keys[0].state = KeyState::Active;
    snapshot.keys[0].wrapped_key = snapshot.keys[1].wrapped_key.clone();
    assert!(matches!(LayerSnapshot::decode(&snapshot.encode()), Err(ControlError::MalformedSnapshot { .. })));
    assert!(matches!(state().restore(&snapshot), Err(ControlError::MalformedSnapshot { .. })));
}

#[test]
fn no_key_bytes_in_debug_or_errors() {
    let provider = kek("kek-1", 0xAB);
    let (log, leader) = history(&provider);
    let replica = state();
    let halt = replica.apply_control(log[0].0, &log[0].1).unwrap_err();
    let texts = [
        format!("{provider:?}"),
        format!("{leader:?}"),
        format!("{:?}", leader.snapshot()),
        format!("{halt} {halt:?}"),
        format!("{:?}", ControlCommand::decode(&log[0].1).unwrap()),
    ];
    for text in &texts {
        assert!(!text.to_lowercase().contains("abababab"), "KEK bytes leaked: {text}");
        assert!(!text.contains("171, 171"), "KEK bytes leaked: {text}");
    }
    assert!(texts[2].contains("WrappedKey(81 bytes)"), "{}", texts[2]);
}

mod kek_file {
    use super::*;
    use std::path::PathBuf;

    const HEX: &str = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";

    fn write(name: &str, contents: &[u8], mode: u32) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("raft-envelope-kek-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(name);
        std::fs::write(&path, contents).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        }
        let _ = mode;
        path
    }

    fn load(path: &PathBuf) -> Result<FileKekProvider, KeyProviderError> {
        FileKekProvider::load(KekId::new("file-kek").unwrap(), path)
    }

    #[test]
    fn good_files_load_and_match_the_key() {
        let reference = FileKekProvider::from_key(
            KekId::new("file-kek").unwrap(),
            SecretKey::from_slice(&common::hex(HEX)).unwrap(),
        )
        .unwrap();
        let cluster = common::cluster("c");
        for (name, contents) in [
            ("plain", HEX.to_string()),
            ("newline", format!("{HEX}\n")),
            ("crlf", format!("{HEX}\r\n")),
            ("upper", HEX.to_uppercase()),
        ] {
            let provider = load(&write(name, contents.as_bytes(), 0o600)).unwrap();
            assert_eq!(provider.path().map(|p| p.ends_with(name)), Some(true));
            let ctx = WrapContext::new(&cluster, KeyId(1), Algorithm::Aes256Gcm, provider.kek_id());
            let key = SecretKey::generate().unwrap();
            let wrapped = block_on(provider.wrap(&ctx, &key)).unwrap();
            assert_eq!(
                block_on(reference.unwrap(&ctx, &wrapped)).unwrap().expose_secret(),
                key.expose_secret()
            );
        }
        load(&write("owner-read-only", HEX.as_bytes(), 0o400)).unwrap();
    }

    #[test]
    fn missing_short_long_and_garbage_files_have_their_own_errors() {
        let missing = std::env::temp_dir().join("raft-envelope-kek-does-not-exist");
        assert!(matches!(load(&missing), Err(KeyProviderError::KekFileMissing { .. })));
        let short = write("short", &HEX.as_bytes()[..63], 0o600);
        assert!(matches!(load(&short), Err(KeyProviderError::KekFileLength { len: 63, .. })));
        let raw = write("raw", &[7u8; 32], 0o600);
        let err = load(&raw).unwrap_err();
        assert!(matches!(err, KeyProviderError::KekFileLength { len: 32, .. }));
        assert!(err.to_string().contains("64 hex characters"), "{err}");
        let long = write("long", format!("{HEX}{HEX}").as_bytes(), 0o600);
        assert!(matches!(load(&long), Err(KeyProviderError::KekFileLength { len: 128, .. })));
        let two_newlines = write("two-newlines", format!("{HEX}\n\n").as_bytes(), 0o600);
        assert!(matches!(load(&two_newlines), Err(KeyProviderError::KekFileLength { .. })));
        let garbage = write("garbage", format!("{}zz", &HEX[..62]).as_bytes(), 0o600);
        let err = load(&garbage).unwrap_err();
        assert!(matches!(err, KeyProviderError::KekFileGarbage { offset: 62, .. }));
        assert!(!err.to_string().contains("zz"));
        let empty = write("empty", b"", 0o600);
        assert!(matches!(load(&empty), Err(KeyProviderError::KekFileLength { len: 0, .. })));
        let dir = std::env::temp_dir();
        assert!(matches!(load(&dir), Err(KeyProviderError::KekFileUnreadable { .. })));
    }

    #[cfg(unix)]
    #[test]
    fn files_accessible_to_group_or_others_are_refused() {
        for mode in [0o644, 0o640, 0o604, 0o660, 0o606, 0o610] {
            let path = write(&format!("mode-{mode:o}"), HEX.as_bytes(), mode);
            match load(&path) {
                Err(KeyProviderError::KekFilePermissions { mode: m, .. }) => assert_eq!(m, mode),
                other => panic!("mode {mode:o}: {other:?}"),
            }
        }
    }
}

fn arb_command() -> impl Strategy<Value = ControlCommand> {
    let key_id = any::<u32>().prop_map(KeyId);
    prop_oneof![
        (
            key_id.clone(),
            prop_oneof![Just(Algorithm::Aes256Gcm), Just(Algorithm::Aes256GcmSiv)],
            "[a-z0-9:/._-]{1,255}",
            proptest::collection::vec(any::<u8>(), 1..300)
        )
            .prop_map(|(k, a, kek, w)| ControlCommand::InstallKey(InstallKey::new(
                k,
                a,
                KekId::new(kek).unwrap(),
                WrappedKey::new(w).unwrap()
            ))),
        key_id.clone().prop_map(|key_id| ControlCommand::PromoteKey { key_id }),
        key_id.clone().prop_map(|key_id| ControlCommand::RetireKey { key_id }),
        key_id.prop_map(|key_id| ControlCommand::DestroyKey { key_id }),
        Just(ControlCommand::Enforce),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn control_decoder_is_total(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
        let _ = ControlCommand::decode(&bytes);
        let _ = LayerSnapshot::decode(&bytes);
        let replica = state();
        let _ = replica.apply_control(1, &bytes);
    }

    #[test]
    fn control_decoder_is_total_near_valid_entries(
        command in arb_command(),
        flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..4),
        cut in any::<prop::sample::Index>(),
    ) {
        let mut bytes = command.encode();
        prop_assert!(bytes.len() <= MAX_CONTROL_ENTRY_LEN);
        prop_assert_eq!(ControlCommand::decode(&bytes), Ok(command.clone()));
        for (at, value) in flips {
            let i = at.index(bytes.len());
            bytes[i] ^= value;
        }
        let cut = cut.index(bytes.len() + 1);
        let decoded = ControlCommand::decode(&bytes[..cut]);
        if let Ok(decoded) = decoded {
            // Whatever decodes re-encodes to exactly the bytes read: no two encodings of a command.
            prop_assert_eq!(decoded.encode(), bytes[..cut].to_vec());
        }
        let replica = state();
        let _ = replica.apply_control(1, &bytes[..cut]);
    }

    #[test]
    fn snapshot_decoder_is_total_near_valid_snapshots(
        flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
        cut in any::<prop::sample::Index>(),
    ) {
        let bytes = snapshot_bytes();
        let mut bytes = bytes.clone();
        for (at, value) in flips {
            let i = at.index(bytes.len());
            bytes[i] ^= value;
        }
        let cut = cut.index(bytes.len() + 1);
        if let Ok(decoded) = LayerSnapshot::decode(&bytes[..cut]) {
            prop_assert_eq!(decoded.encode(), bytes[..cut].to_vec());
        }
    }
}

fn snapshot_bytes() -> Vec<u8> {
    use std::sync::OnceLock;
    static BYTES: OnceLock<Vec<u8>> = OnceLock::new();
    BYTES
        .get_or_init(|| {
            let provider = kek("kek-1", 9);
            history(&provider).1.snapshot().encode()
        })
        .clone()
}
