//! The admin API on `EnvelopeRaft`: switch-on and key lifecycle through layer control entries
//! in the Raft log, driven by the core's [`Lifecycle`](raft_envelope_core::lifecycle::Lifecycle)
//! over openraft's `ControlPlane` (`plane.rs`).

use std::sync::atomic::Ordering;
use std::sync::{Arc, PoisonError};
use std::time::Duration;

use openraft::type_config::TypeConfigExt;
use openraft::{Entry, RaftTypeConfig};
use raft_envelope_core::lifecycle::{
    AutoRotation, CheckpointPolicy, Destroyed, Enabled, EncryptionStatus, LifecycleError, Retention, Retired,
};
use raft_envelope_core::provider::{KekId, KeyProvider};
use raft_envelope_core::wire::{ControlCommand, EnvelopeHeader};
use raft_envelope_core::{Algorithm, KeyId, LayerState};

use crate::drain::SealedInFlight;
use crate::payload::EnvelopePayload;
use crate::plane::{Admin, AdminError, PlaneError, ProposerView};
use crate::raft::EnvelopeRaft;

type Result<T, C> =
    std::result::Result<T, AdminError<<C as RaftTypeConfig>::NodeId, <C as RaftTypeConfig>::Node>>;

// Reason: the error carries openraft's `RaftError` unboxed, as `client_write` does.
#[allow(clippy::result_large_err)]
impl<C: RaftTypeConfig<Entry = Entry<C>>> EnvelopeRaft<C> {
    /// The layer state, when built with [`with_layer_state`](Self::with_layer_state).
    pub fn layer_state(&self) -> Option<&Arc<LayerState>> {
        self.admin.as_ref().map(|a| a.state())
    }

    /// How long [`enable_encryption`](Self::enable_encryption) waits for the proposers to start
    /// sealing and to drain (default [`DEFAULT_ADMIN_TIMEOUT`]). Shared by clones.
    pub fn set_admin_timeout(&self, timeout: Duration) {
        if let Some(admin) = &self.admin {
            admin.lifecycle.plane().timeout_ms.store(timeout.as_millis() as u64, Ordering::SeqCst);
        }
    }

    fn admin(&self) -> Result<&Arc<Admin<C>>, C> {
        self.admin.as_ref().ok_or(LifecycleError::Engine(PlaneError::NoLayerState))
    }

    /// The key state this node has applied: keys with their states and counts, the cutover, the
    /// active key. Local (no Raft round trip); the same on every replica at the same applied
    /// index.
    ///
    /// # Errors
    /// [`PlaneError::NoLayerState`].
    pub fn encryption_status(&self) -> Result<EncryptionStatus, C> {
        Ok(self.admin()?.lifecycle.status())
    }

    /// Switches encryption on through the log, on the leader
    /// ([`Lifecycle::enable_encryption`]): install a new data key wrapped under `kek_id`, promote
    /// it, wait until every node in `proposers` applied the promote and has no cleartext proposal
    /// left waiting for Raft, then commit the enforce entry: its index is the cutover.
    ///
    /// `proposers` must hold every node that accepts client writes (this node is always
    /// included); a proposer whose engine has stopped (halted) is skipped, since it can append
    /// nothing. Resumable; when encryption is already enforced nothing is proposed.
    ///
    /// # Errors
    /// [`AdminError`]; only the leader runs it ([`forward_to_leader`]).
    pub async fn enable_encryption(
        &self,
        provider: &dyn KeyProvider,
        kek_id: &KekId,
        algorithm: Algorithm,
        proposers: &[EnvelopeRaft<C>],
    ) -> Result<Enabled, C> {
        let admin = self.admin()?;
        *admin.lifecycle.plane().proposers.lock().unwrap_or_else(PoisonError::into_inner) = proposers
            .iter()
            .map(|p| ProposerView { raft: p.raft().clone(), drain: p.drain.clone() })
            .collect();
        admin.lifecycle.enable_encryption(provider, kek_id, algorithm).await
    }

    /// Starts sealing without enforcing, on the leader ([`Lifecycle::start_sealing`]): installs
    /// a new data key wrapped under `kek_id` and promotes it. Returns the active key.
    ///
    /// # Errors
    /// [`AdminError`]; only the leader runs it.
    pub async fn start_sealing(
        &self,
        provider: &dyn KeyProvider,
        kek_id: &KekId,
        algorithm: Algorithm,
    ) -> Result<KeyId, C> {
        self.admin()?.lifecycle.start_sealing(provider, kek_id, algorithm).await
    }

    /// Rotates the data key, on the leader ([`Lifecycle::rotate_key`]): installs a new key
    /// wrapped under `kek_id` and promotes it; the previous active key becomes decrypt-only.
    /// Returns the new key's id.
    ///
    /// # Errors
    /// [`AdminError`]; only the leader runs it.
    pub async fn rotate_key(
        &self,
        provider: &dyn KeyProvider,
        kek_id: &KekId,
        algorithm: Algorithm,
    ) -> Result<KeyId, C> {
        self.admin()?.lifecycle.rotate_key(provider, kek_id, algorithm).await
    }

    /// Retires `key_id` to decrypt-only on every replica, on the leader
    /// ([`Lifecycle::retire_key`]): the active key only while no cutover is in force (the
    /// cluster proposes in the clear again); a decrypt-only key needs nothing.
    ///
    /// # Errors
    /// [`AdminError`]: [`LifecycleError::Refused`] for an unknown or destroyed key, or the active
    /// key under a cutover (rotate instead).
    pub async fn retire_key(&self, key_id: KeyId) -> Result<Retired, C> {
        self.admin()?.lifecycle.retire_key(key_id).await
    }

    /// Destroys `key_id`, on the leader, once it is proven that nothing retained still needs it
    /// ([`Lifecycle::destroy_key`]). `reports` holds one [`retention`](Self::retention) from every
    /// member (voters and learners), gathered by the caller (over the application's RPC when the
    /// nodes live in other processes). Reports taken before the call are fine: logs only get
    /// shorter, new snapshots are sealed under the active key, and a member that had rotated
    /// away stays so; a stale report only refuses more.
    ///
    /// A member passes when it has applied the rotation away from the key and has no envelope
    /// under it in flight (from then on it refuses to submit one,
    /// [`WriteError::KeyRotated`](crate::WriteError::KeyRotated), and a leader seals nothing
    /// before it applied an entry of its own term,
    /// [`WriteError::LeaderCatchingUp`](crate::WriteError::LeaderCatchingUp)), and its log and
    /// retained snapshot hold nothing sealed under the key.
    ///
    /// # Errors
    /// [`LifecycleError::DestroyRefused`] naming the replica, [`LifecycleError::Refused`], or
    /// openraft's error.
    pub async fn destroy_key(&self, key_id: KeyId, reports: &[Retention<C::NodeId>]) -> Result<Destroyed, C> {
        let admin = self.admin()?;
        *admin.lifecycle.plane().reports.lock().unwrap_or_else(PoisonError::into_inner) = reports.to_vec();
        admin.lifecycle.destroy_key(key_id).await
    }

    /// Rotates when the active key's sealing budget runs low ([`Lifecycle::rotate_if_due`]):
    /// call it periodically on every node (it does nothing on followers, or while the budget
    /// lasts), or let [`set_auto_rotation`](Self::set_auto_rotation) call it after writes.
    /// Returns the new key's id when it rotated.
    ///
    /// # Errors
    /// As [`rotate_key`](Self::rotate_key).
    pub async fn rotate_if_due(&self, rotation: &AutoRotation) -> Result<Option<KeyId>, C> {
        let admin = self.admin()?;
        if admin.state().rotation_due().is_none() || !self.is_leader() {
            return Ok(None);
        }
        admin.lifecycle.rotate_if_due(rotation).await
    }

    /// Rotates automatically (as [`rotate_if_due`](Self::rotate_if_due), in a task spawned on
    /// the engine's `AsyncRuntime`) when a write through this node finds the active key's budget
    /// low; `None` switches it off. Shared by clones.
    pub fn set_auto_rotation(&self, rotation: Option<AutoRotation>) {
        if let Some(admin) = &self.admin {
            admin.auto_on.store(rotation.is_some(), Ordering::Relaxed);
            *admin.auto.lock().unwrap_or_else(PoisonError::into_inner) = rotation.map(Arc::new);
        }
    }

    /// Sets when this node, while it leads a cluster with a cutover in force, proposes an
    /// integrity checkpoint (default [`CheckpointPolicy::DEFAULT`]): checked after each sealed
    /// write through this node, proposed in a task on the engine's runtime. Every replica
    /// compares the leader's digest at the checkpoint's index and halts (`diverged`) if its own
    /// differs. Shared by clones.
    pub fn set_checkpoints(&self, policy: CheckpointPolicy) {
        if let Some(admin) = &self.admin {
            *admin.checkpoints.lock().unwrap_or_else(PoisonError::into_inner) = policy;
        }
    }

    /// Proposes an integrity checkpoint of everything this node applied so far (on the leader),
    /// whatever the policy, and returns its log index once applied here.
    ///
    /// # Errors
    /// [`PlaneError::NoLayerState`]; [`PlaneError::NoChain`] when this node does not know its
    /// digest chain; a sealing or engine error (`ForwardToLeader` on a follower).
    pub async fn propose_checkpoint(&self) -> Result<u64, C> {
        let admin = self.admin()?;
        let state = admin.state();
        let command = state.checkpoint_now().ok_or(LifecycleError::Engine(PlaneError::NoChain))?;
        let entry = state.encode_entry(state.next_control_id(), &command).map_err(LifecycleError::Seal)?;
        // As for a sealed write: counted in flight under its key (the destroy proof waits for
        // it), and refused while a control entry is unapplied or the key is no longer active
        // (it would land after a rotation or a destroy): proposed again later.
        let key_id = EnvelopeHeader::parse(&entry).ok().map(|h| h.key_id);
        let _sealed = key_id.map(|k| SealedInFlight::new(&self.drain, k));
        if state.check_append(key_id).is_err() {
            return Err(LifecycleError::Busy);
        }
        let written = self.raft().client_write(EnvelopePayload::control(entry)).await;
        let index = written.map_err(|e| LifecycleError::Engine(PlaneError::Raft(e)))?.log_id.index;
        if let ControlCommand::Checkpoint { through, .. } = command {
            state.local().note_checkpoint_proposed(through);
        }
        *admin.last_checkpoint.lock().unwrap_or_else(PoisonError::into_inner) = C::now();
        Ok(index)
    }

    /// After a sealed write: proposes a checkpoint in the background when the policy says one is
    /// due and none is being proposed.
    pub(crate) fn maybe_checkpoint(&self) {
        let Some(admin) = &self.admin else { return };
        let policy = *admin.checkpoints.lock().unwrap_or_else(PoisonError::into_inner);
        let elapsed = openraft::Instant::elapsed(
            &*admin.last_checkpoint.lock().unwrap_or_else(PoisonError::into_inner),
        );
        if admin.state().checkpoint_due(&policy, elapsed).is_none() || !self.is_leader() {
            return;
        }
        if admin.checkpointing.swap(true, Ordering::SeqCst) {
            return;
        }
        let this = self.clone();
        drop(C::spawn(async move {
            if let Err(e) = this.propose_checkpoint().await {
                tracing::debug!("integrity checkpoint not proposed, retried after a later write: {e}");
            }
            if let Some(admin) = &this.admin {
                admin.checkpointing.store(false, Ordering::SeqCst);
            }
        }));
    }

    /// After a write: starts a rotation in the background when one is due and none is running.
    pub(crate) fn maybe_rotate(&self) {
        let Some(admin) = &self.admin else { return };
        // The common case (automatic rotation off) costs one atomic load per write.
        if !admin.auto_on.load(Ordering::Relaxed) {
            return;
        }
        let Some(auto) = admin.auto.lock().unwrap_or_else(PoisonError::into_inner).clone() else {
            return;
        };
        if admin.state().rotation_due().is_none() || admin.rotating.swap(true, Ordering::SeqCst) {
            return;
        }
        let this = self.clone();
        // Spawned on the engine's runtime: the write that noticed returns at once, and the
        // rotation's entries go through Raft like any admin command.
        drop(C::spawn(async move {
            if let Err(e) = this.rotate_if_due(&auto).await {
                tracing::warn!("automatic rotation failed, retried on a later write: {e}");
            }
            if let Some(admin) = &this.admin {
                admin.rotating.store(false, Ordering::SeqCst);
            }
        }));
    }

    fn is_leader(&self) -> bool {
        let metrics = self.raft().metrics().borrow().clone();
        metrics.current_leader == Some(metrics.id)
    }
}
