//! The key-lifecycle driver (`lifecycle::Lifecycle`) over a one-node in-memory plane: what each
//! admin command proposes, what it refuses before proposing, and what it leaves behind.
#![allow(clippy::unwrap_used)] // Reason: test code; failures should be loud.

use std::sync::{Arc, Mutex};

use raft_envelope_core::apply::EntryRecord;
use raft_envelope_core::error::{ConfigError, ControlError};
use raft_envelope_core::lifecycle::{
    ControlPlane, DestroyRefused, Destroyed, KeyState, Lifecycle, LifecycleError, MemberReports, Retention,
    Retired,
};
use raft_envelope_core::provider::{FileKekProvider, KekId, KeyProvider};
use raft_envelope_core::wire::{ControlCommand, InstallKey};
use raft_envelope_core::{
    Algorithm, ClusterId, EnvelopeLayer, KeyId, Keyring, LayerState, PayloadWrapper, ProposalId, SecretKey,
};

/// One replica whose log is a vector; a proposed entry applies at once.
struct OneNode {
    state: LayerState,
    log: Mutex<Vec<Vec<u8>>>,
    first_log_index: Mutex<u64>,
}

#[raft_envelope_core::async_trait]
impl ControlPlane for OneNode {
    type NodeId = u64;
    type Error = std::convert::Infallible;

    fn layer_state(&self) -> &LayerState {
        &self.state
    }

    async fn catch_up(&self) -> Result<(), Self::Error> {
        Ok(())
    }

    async fn propose_control(&self, _id: ProposalId, entry: Vec<u8>) -> Result<u64, Self::Error> {
        let mut log = self.log.lock().unwrap();
        log.push(entry);
        let index = log.len() as u64;
        self.state.apply_control(index, log.last().unwrap()).unwrap();
        Ok(index)
    }

    async fn drain_cleartext(&self, _applied_through: u64) -> Result<(), Self::Error> {
        Ok(())
    }

    async fn retention_reports(&self) -> Result<MemberReports<u64>, Self::Error> {
        let report = Retention::new(1, *self.first_log_index.lock().unwrap(), None)
            .with_sealing(self.state.active_key(), Vec::new());
        Ok(MemberReports::new(vec![1], vec![report]))
    }
}

fn kek() -> FileKekProvider {
    FileKekProvider::from_key(KekId::new("kek").unwrap(), SecretKey::from_bytes([7; 32])).unwrap()
}

fn driver() -> Lifecycle<OneNode> {
    let state = LayerState::new(ClusterId::new("driver").unwrap());
    Lifecycle::new(OneNode { state, log: Mutex::default(), first_log_index: Mutex::new(1) })
}

fn run<T>(future: impl std::future::Future<Output = T>) -> T {
    tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(future)
}

fn proposed(driver: &Lifecycle<OneNode>) -> usize {
    driver.plane().log.lock().unwrap().len()
}

#[test]
fn key_id_zero_is_never_a_data_key() {
    let ring = Keyring::new();
    let refused = ring.insert(KeyId::RESERVED, Algorithm::Aes256Gcm, SecretKey::generate().unwrap());
    assert_eq!(refused, Err(ConfigError::ReservedKeyId));
    let d = driver();
    let wrapped = run(d.plane().state.generate_install(KeyId(1), Algorithm::Aes256Gcm, &kek())).unwrap();
    let ControlCommand::InstallKey(install) = wrapped else { panic!("an install") };
    let zero = ControlCommand::InstallKey(InstallKey::new(
        KeyId::RESERVED,
        install.algorithm,
        install.kek_id.clone(),
        install.wrapped_key.clone(),
    ));
    assert!(matches!(
        d.plane().state.check_command(&zero),
        Err(ControlError::Keyring(ConfigError::ReservedKeyId))
    ));
}

#[test]
fn enable_proposes_install_promote_enforce_and_is_idempotent() {
    let d = driver();
    let enabled = run(d.enable_encryption(&kek(), kek().kek_id(), Algorithm::Aes256Gcm)).unwrap();
    assert_eq!((enabled.key_id, enabled.cutover, enabled.newly_enforced), (KeyId(1), 3, true));
    let again = run(d.enable_encryption(&kek(), kek().kek_id(), Algorithm::Aes256Gcm)).unwrap();
    assert_eq!((again.cutover, again.newly_enforced), (3, false));
    assert_eq!(proposed(&d), 3, "the second enable proposed nothing");
}

#[test]
fn a_provider_with_another_kek_is_refused_before_proposing() {
    let d = driver();
    let other = KekId::new("other").unwrap();
    let refused = run(d.enable_encryption(&kek(), &other, Algorithm::Aes256Gcm)).unwrap_err();
    assert!(matches!(refused, LifecycleError::KekMismatch { .. }), "{refused}");
    assert_eq!(proposed(&d), 0);
}

#[test]
fn retiring_the_active_key_without_a_cutover_stops_sealing() {
    let d = driver();
    let key = run(d.start_sealing(&kek(), kek().kek_id(), Algorithm::Aes256Gcm)).unwrap();
    let state = &d.plane().state;
    let layer = EnvelopeLayer::inert();
    let wrapper: Arc<dyn PayloadWrapper> = Arc::new(state.cipher());
    assert!(state.sync_sealing(&layer, &wrapper) && layer.is_sealing(), "an active key: the node seals");

    assert_eq!(run(d.retire_key(key)).unwrap(), Retired::At { index: 3 });
    assert_eq!(state.key(key).unwrap().state, KeyState::DecryptOnly);
    assert_eq!(state.active_key(), None);
    assert!(
        state.sync_sealing(&layer, &wrapper) && !layer.is_sealing(),
        "no active key: proposals in the clear"
    );
}

#[test]
fn retiring_a_decrypt_only_key_proposes_nothing() {
    let d = driver();
    run(d.enable_encryption(&kek(), kek().kek_id(), Algorithm::Aes256Gcm)).unwrap();
    run(d.rotate_key(&kek(), kek().kek_id(), Algorithm::Aes256Gcm)).unwrap();
    let before = proposed(&d);
    assert_eq!(run(d.retire_key(KeyId(1))).unwrap(), Retired::AlreadyDecryptOnly);
    assert_eq!(proposed(&d), before);
}

#[test]
fn under_a_cutover_the_active_key_is_neither_retired_nor_destroyed() {
    let d = driver();
    let enabled = run(d.enable_encryption(&kek(), kek().kek_id(), Algorithm::Aes256Gcm)).unwrap();
    let before = proposed(&d);
    let refused = run(d.retire_key(enabled.key_id)).unwrap_err();
    assert!(matches!(refused, LifecycleError::Refused(ControlError::ActiveKeyNeeded(_))), "{refused}");
    let refused = run(d.destroy_key(enabled.key_id)).unwrap_err();
    assert!(matches!(refused, LifecycleError::DestroyRefused(DestroyRefused::ActiveKey(_))), "{refused}");
    assert_eq!(proposed(&d), before, "nothing proposed");
    let unknown = run(d.retire_key(KeyId(9))).unwrap_err();
    assert!(matches!(unknown, LifecycleError::Refused(ControlError::UnknownKey(KeyId(9)))), "{unknown}");
}

#[test]
fn destroy_waits_for_the_proof_then_drops_the_key_once() {
    let d = driver();
    run(d.enable_encryption(&kek(), kek().kek_id(), Algorithm::Aes256Gcm)).unwrap();
    // A payload sealed under key 1 lands at index 4 and is applied.
    let sealed = d.plane().state.cipher().seal(ProposalId(1), b"x").unwrap();
    d.plane().log.lock().unwrap().push(sealed.clone());
    d.plane().state.admit(4, EntryRecord::Envelope(&sealed));
    run(d.rotate_key(&kek(), kek().kek_id(), Algorithm::Aes256Gcm)).unwrap();
    let refused = run(d.destroy_key(KeyId(1))).unwrap_err();
    assert!(
        matches!(refused, LifecycleError::DestroyRefused(DestroyRefused::InLog { replica: 1, .. })),
        "{refused}"
    );
    // Compacted past the last entry sealed under key 1: the rotation's promote at 6.
    *d.plane().first_log_index.lock().unwrap() = 7;
    assert!(matches!(run(d.destroy_key(KeyId(1))).unwrap(), Destroyed::At { .. }));
    assert_eq!(d.plane().state.key(KeyId(1)).unwrap().state, KeyState::Destroyed);
    let before = proposed(&d);
    assert_eq!(run(d.destroy_key(KeyId(1))).unwrap(), Destroyed::AlreadyDestroyed);
    assert_eq!(proposed(&d), before);
}
