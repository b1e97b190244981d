//! The admin API: switch-on and key lifecycle through layer control entries in the Raft log.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use openraft::error::{CheckIsLeaderError, ForwardToLeader, RaftError};
use openraft::{Entry, RaftTypeConfig};
use raft_envelope_core::{
    Algorithm, ControlCommand, ControlError, DestroyRefused, EncryptionStatus, KekId, KeyId, KeyProvider,
    KeyState, LayerState, Retention, SealError,
};

use crate::payload::EnvelopePayload;
use crate::raft::{ClientWriteRaftError, DrainTimeout, EnvelopeRaft};

/// How long an admin command waits, by default, for the other nodes to start sealing and drain
/// their cleartext proposals ([`EnvelopeRaft::set_admin_timeout`]).
pub const DEFAULT_ADMIN_TIMEOUT: Duration = Duration::from_secs(10);

/// The admin side of a node built with [`EnvelopeRaft::with_layer_state`], shared by its clones.
pub(crate) struct Admin {
    state: Arc<LayerState>,
    auto: std::sync::Mutex<Option<Arc<AutoRotation>>>,
    auto_on: std::sync::atomic::AtomicBool,
    rotating: std::sync::atomic::AtomicBool,
    /// Admin commands run one at a time on this node (two installs of one key id with different
    /// material would halt every replica).
    serial: tokio::sync::Mutex<()>,
    timeout_ms: AtomicU64,
}

impl Admin {
    pub(crate) fn new(state: Arc<LayerState>) -> Self {
        Self {
            state,
            auto: std::sync::Mutex::new(None),
            auto_on: std::sync::atomic::AtomicBool::new(false),
            rotating: std::sync::atomic::AtomicBool::new(false),
            serial: tokio::sync::Mutex::new(()),
            timeout_ms: AtomicU64::new(DEFAULT_ADMIN_TIMEOUT.as_millis() as u64),
        }
    }

    pub(crate) fn state(&self) -> &Arc<LayerState> {
        &self.state
    }
}

/// What [`EnvelopeRaft::enable_encryption`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Enabled {
    /// The active key.
    pub key_id: KeyId,
    /// The cutover: the index of the enforce entry.
    pub cutover: u64,
}

/// An admin command failed. Nothing unsafe happened: the commands applied so far are in the log
/// and applied identically everywhere, and the command can be run again (enable resumes where it
/// stopped). Never holds key bytes.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AdminError<NID: openraft::NodeId, N: openraft::Node> {
    /// This node was not built with [`EnvelopeRaft::with_layer_state`].
    #[error("this node has no layer state (build it with EnvelopeRaft::with_layer_state)")]
    NoLayerState,
    /// The provider wraps under another KEK than the one asked for.
    #[error("the key provider wraps under KEK {provider}, not {requested}")]
    KekMismatch {
        /// The KEK asked for.
        requested: KekId,
        /// The provider's KEK.
        provider: KekId,
    },
    /// Encryption is already enforced.
    #[error("encryption is already enforced (cutover {cutover})")]
    AlreadyEnforced {
        /// The cutover.
        cutover: u64,
    },
    /// The command would halt every replica, or leave nothing able to seal: refused, nothing
    /// proposed.
    #[error("refused for {key_id}: {reason}")]
    Refused {
        /// The key named.
        key_id: KeyId,
        /// Why.
        reason: &'static str,
    },
    /// The install entry could not be created (the provider could not wrap the new key, ...).
    #[error("could not create the install entry: {0}")]
    Control(#[source] ControlError),
    /// The control entry could not be sealed; nothing was appended.
    #[error("could not seal the control entry: {0}")]
    Seal(#[source] SealError),
    /// This node could not confirm its leadership (typically not the leader: run the command on
    /// the leader, see [`forward_to_leader`](Self::forward_to_leader)).
    #[error("leadership not confirmed: {0}")]
    NotLeader(RaftError<NID, CheckIsLeaderError<NID, N>>),
    /// openraft refused or failed the control entry's write.
    #[error(transparent)]
    Raft(ClientWriteRaftError<NID, N>),
    /// The entry was applied but did not have the expected effect (another admin command raced
    /// this one).
    #[error("the {command} entry at index {index} did not take effect")]
    NotApplied {
        /// The command.
        command: &'static str,
        /// Its index.
        index: u64,
    },
    /// A proposer had not applied the promote entry (and started sealing) in time.
    #[error("proposer #{node} did not start sealing within {waited:?}")]
    NotSealing {
        /// Position in the list of proposers given.
        node: usize,
        /// How long the command waited.
        waited: Duration,
    },
    /// No leader was found to run the command on (in-process helpers such as
    /// [`TestCluster`](crate::testing::TestCluster)).
    #[error("no leader to run the admin command on")]
    NoLeader,
    /// The destroy proof failed: a replica still retains entries or a snapshot sealed under the
    /// key, or did not report. Nothing was proposed; compact (or take a new snapshot) and retry.
    #[error("destroy refused: {0}")]
    DestroyRefused(#[source] DestroyRefused),
    /// A proposer did not drain its cleartext proposals in time.
    #[error("proposer #{node} did not drain its cleartext proposals: {source}")]
    Drain {
        /// Position in the list of proposers given.
        node: usize,
        /// The drain error.
        source: DrainTimeout,
    },
}

impl<NID: openraft::NodeId, N: openraft::Node> AdminError<NID, N> {
    /// The leader to run the command on, when this node is not the leader.
    pub fn forward_to_leader(&self) -> Option<&ForwardToLeader<NID, N>> {
        match self {
            AdminError::NotLeader(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(f))) => Some(f),
            AdminError::Raft(RaftError::APIError(openraft::error::ClientWriteError::ForwardToLeader(f))) => {
                Some(f)
            }
            _ => None,
        }
    }
}

impl fmt::Debug for Admin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Admin").field("state", &self.state).finish()
    }
}

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
            admin.timeout_ms.store(timeout.as_millis() as u64, Ordering::SeqCst);
        }
    }

    fn admin(&self) -> Result<&Arc<Admin>, C> {
        self.admin.as_ref().ok_or(AdminError::NoLayerState)
    }

    /// The key state this node has applied: keys with their states and counts, the cutover, the
    /// active key. Local (no Raft round trip); the same on every replica at the same applied
    /// index.
    ///
    /// # Errors
    /// [`AdminError::NoLayerState`].
    pub fn encryption_status(&self) -> Result<EncryptionStatus, C> {
        Ok(self.admin()?.state().status())
    }

    /// Proposes one layer control entry on this node (the leader) and waits until this node has
    /// applied it; returns its index.
    async fn propose_control(&self, state: &LayerState, command: &ControlCommand) -> Result<u64, C> {
        // An entry that cannot apply would halt every replica: refuse it here instead.
        state.check_command(command).map_err(AdminError::Control)?;
        let id = self.layer().next_proposal_id();
        let bytes = state.encode_entry(id, command).map_err(AdminError::Seal)?;
        let response =
            self.raft().client_write(EnvelopePayload::control(bytes)).await.map_err(AdminError::Raft)?;
        Ok(response.log_id.index)
    }

    /// Confirms leadership and waits until this node applied everything committed before, so
    /// that the layer state it validates against (and takes new key ids from) is current.
    async fn catch_up(&self) -> Result<(), C> {
        self.raft().ensure_linearizable().await.map_err(AdminError::NotLeader)?;
        Ok(())
    }

    async fn install_and_promote(
        &self,
        state: &LayerState,
        provider: &dyn KeyProvider,
        kek_id: &KekId,
        algorithm: Algorithm,
    ) -> Result<KeyId, C> {
        if provider.kek_id() != kek_id {
            return Err(AdminError::KekMismatch {
                requested: kek_id.clone(),
                provider: provider.kek_id().clone(),
            });
        }
        let key_id = state.next_key_id();
        let install =
            state.generate_install(key_id, algorithm, provider).await.map_err(AdminError::Control)?;
        let index = self.propose_control(state, &install).await?;
        if !state.keys().iter().any(|k| k.key_id == key_id) {
            return Err(AdminError::NotApplied { command: "install key", index });
        }
        let index = self.propose_control(state, &ControlCommand::PromoteKey { key_id }).await?;
        if state.active_key() != Some(key_id) {
            return Err(AdminError::NotApplied { command: "promote key", index });
        }
        Ok(key_id)
    }

    /// Switches encryption on through the log, on the leader: install a new data key wrapped
    /// under `kek_id` (every replica unwraps it with its own provider), promote it (every node
    /// seals new proposals once it applied the promote), wait until every node in `proposers`
    /// seals and has no cleartext proposal left waiting for Raft (as
    /// [`seal_new_proposals`](Self::seal_new_proposals)), then commit the enforce entry: its
    /// index is the cutover on every replica.
    ///
    /// `proposers` must hold every node that accepts client writes (this node is always
    /// included); a proposer whose engine has stopped (halted, for example on the install entry
    /// because its provider lacks the KEK) is skipped, since it can append nothing. Resumable: run again after an error and it continues from the key already
    /// active.
    ///
    /// Why no cleartext lands above the cutover: an entry committed above it follows the enforce
    /// entry in the committed log, so (Log Matching) the leader that created it already held the
    /// enforce entry, which was created after every proposer sealed and drained. Every cleartext
    /// proposal had by then been appended or refused for good, and every later one is sealed.
    ///
    /// # Errors
    /// [`AdminError`]; see there. Only the leader runs it ([`AdminError::forward_to_leader`]).
    pub async fn enable_encryption(
        &self,
        provider: &dyn KeyProvider,
        kek_id: &KekId,
        algorithm: Algorithm,
        proposers: &[EnvelopeRaft<C>],
    ) -> Result<Enabled, C> {
        let admin = self.admin()?;
        let state = admin.state();
        let _serial = admin.serial.lock().await;
        self.catch_up().await?;
        if let Some(cutover) = state.cutover() {
            return Err(AdminError::AlreadyEnforced { cutover });
        }
        let key_id = match state.active_key() {
            Some(active) => active,
            None => self.install_and_promote(state, provider, kek_id, algorithm).await?,
        };

        // Drain: every proposer seals (it applied the promote), then has no cleartext proposal
        // left that Raft has not answered for.
        let timeout = Duration::from_millis(admin.timeout_ms.load(Ordering::SeqCst));
        let start = tokio::time::Instant::now();
        let deadline = start + timeout;
        let me = std::iter::once(self);
        for (node, proposer) in proposers.iter().chain(me).enumerate() {
            while !proposer.layer().is_sealing() {
                if proposer.raft().metrics().borrow().running_state.is_err() {
                    // Its engine has stopped (halted): it can append nothing any more. A restart
                    // replays the log from its state machine and seals once it applied the
                    // promote.
                    break;
                }
                if tokio::time::Instant::now() >= deadline {
                    return Err(AdminError::NotSealing { node, waited: start.elapsed() });
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            proposer.drain_cleartext(left).await.map_err(|source| AdminError::Drain { node, source })?;
        }

        let index = self.propose_control(state, &ControlCommand::Enforce).await?;
        let cutover = state.cutover().ok_or(AdminError::NotApplied { command: "enforce", index })?;
        tracing::info!(cutover, key_id = key_id.0, "encryption enforced through the log");
        Ok(Enabled { key_id, cutover })
    }

    /// Rotates the data key, on the leader: installs a new key wrapped under `kek_id` and
    /// promotes it; the previous active key becomes decrypt-only (it still opens the entries
    /// sealed under it). Returns the new key's id.
    ///
    /// # Errors
    /// [`AdminError`]; only the leader runs it.
    pub async fn rotate_key(
        &self,
        provider: &dyn KeyProvider,
        kek_id: &KekId,
        algorithm: Algorithm,
    ) -> Result<KeyId, C> {
        let admin = self.admin()?;
        let _serial = admin.serial.lock().await;
        self.catch_up().await?;
        let key_id = self.install_and_promote(admin.state(), provider, kek_id, algorithm).await?;
        tracing::info!(key_id = key_id.0, "data key rotated through the log");
        Ok(key_id)
    }

    /// The state of `key_id` for a retire or destroy, refusing what would halt every replica or
    /// leave nothing able to seal.
    fn check_changeable(state: &LayerState, key_id: KeyId) -> Result<KeyState, C> {
        let key = state
            .keys()
            .into_iter()
            .find(|k| k.key_id == key_id)
            .ok_or(AdminError::Refused { key_id, reason: "never installed" })?;
        if key.state == KeyState::Active {
            return Err(AdminError::Refused { key_id, reason: "it is the active key: rotate first" });
        }
        Ok(key.state)
    }

    /// Retires `key_id` to decrypt-only, on the leader. Retiring the active key is refused
    /// (nothing could seal, not even the next admin command once enforced): rotate instead, which
    /// retires the previous key in the same entry as the promote. A key that is already
    /// decrypt-only needs nothing, and nothing is proposed.
    ///
    /// # Errors
    /// [`AdminError::Refused`] (unknown, destroyed or active key), or a proposal error.
    pub async fn retire_key(&self, key_id: KeyId) -> Result<(), C> {
        let admin = self.admin()?;
        let _serial = admin.serial.lock().await;
        self.catch_up().await?;
        match Self::check_changeable(admin.state(), key_id)? {
            KeyState::Destroyed => Err(AdminError::Refused { key_id, reason: "destroyed" }),
            _ => Ok(()),
        }
    }

    /// Destroys `key_id`, on the leader, once it is proven that nothing retained still needs it:
    /// every replica drops its material when it applies the entry; envelopes under it no longer
    /// open (`destroyed_key`). The active key is refused (rotate first); destroying a destroyed
    /// key proposes nothing.
    ///
    /// The proof, before anything is proposed: [`LayerState::check_destroy`] passes with
    /// `reports`, one [`retention`](Self::retention) from every member (voters and learners)
    /// after a barrier is applied here. A member passes when it has applied the rotation away
    /// from the key and has no envelope under it in flight (from then on it refuses to submit
    /// one, [`WriteError::KeyRotated`](crate::WriteError::KeyRotated), and a leader seals
    /// nothing before it applied an entry of its own term,
    /// [`WriteError::LeaderCatchingUp`](crate::WriteError::LeaderCatchingUp)), and its log and
    /// retained snapshot hold nothing sealed under the key. Everything sealed under the key was
    /// then answered for, so appended before the barrier and counted. Reports taken before the
    /// call are fine: logs only get shorter, new snapshots are sealed under the active key, and a
    /// member that had rotated away stays so; a stale report only refuses more.
    ///
    /// # Errors
    /// [`AdminError::DestroyRefused`] naming the replica, [`AdminError::Refused`] (unknown or
    /// active key), or a proposal error.
    pub async fn destroy_key(&self, key_id: KeyId, reports: &[Retention]) -> Result<(), C> {
        let admin = self.admin()?;
        let state = admin.state();
        let _serial = admin.serial.lock().await;
        self.catch_up().await?;
        if Self::check_changeable(state, key_id)? == KeyState::Destroyed {
            return Ok(());
        }
        // Every envelope under the key that a member answered for before reporting is applied
        // on this leader after the barrier, so the count `check_destroy` reads is final.
        self.commit_barrier().await.map_err(|e| match e {
            crate::WriteError::Raft(e) => AdminError::Raft(e),
            other => AdminError::Refused {
                key_id,
                reason: if other.is_seal_refusal() { "barrier refused" } else { "barrier failed" },
            },
        })?;
        let members: Vec<String> = {
            let metrics = self.raft().metrics().borrow().clone();
            metrics.membership_config.membership().nodes().map(|(id, _)| id.to_string()).collect()
        };
        state.check_destroy(key_id, &members, reports).map_err(AdminError::DestroyRefused)?;
        let index = self.propose_control(state, &ControlCommand::DestroyKey { key_id }).await?;
        let destroyed = state.keys().iter().any(|k| k.key_id == key_id && k.state == KeyState::Destroyed);
        if !destroyed {
            return Err(AdminError::NotApplied { command: "destroy key", index });
        }
        tracing::info!(key_id = key_id.0, index, "data key destroyed through the log");
        Ok(())
    }

    /// Rotates when the active key's sealing budget runs low
    /// ([`LayerState::rotation_due`]): call it periodically on every node (it does nothing on
    /// followers, or while the budget lasts), or let [`set_auto_rotation`](Self::set_auto_rotation)
    /// call it after writes. Returns the new key's id when it rotated.
    ///
    /// # Errors
    /// As [`rotate_key`](Self::rotate_key).
    pub async fn rotate_if_due(
        &self,
        provider: &dyn KeyProvider,
        kek_id: &KekId,
        algorithm: Algorithm,
    ) -> Result<Option<KeyId>, C> {
        let admin = self.admin()?;
        if admin.state().rotation_due().is_none() || !self.is_leader() {
            return Ok(None);
        }
        let _serial = admin.serial.lock().await;
        self.catch_up().await?;
        // Another caller may have rotated while this one waited.
        if admin.state().rotation_due().is_none() {
            return Ok(None);
        }
        let key_id = self.install_and_promote(admin.state(), provider, kek_id, algorithm).await?;
        tracing::info!(key_id = key_id.0, "data key rotated automatically: the sealing budget ran low");
        Ok(Some(key_id))
    }

    /// Rotates automatically (as [`rotate_if_due`](Self::rotate_if_due), in a background task)
    /// when a write through this node finds the active key's budget low; `None` switches it off.
    /// Shared by clones. Needs a Tokio runtime.
    pub fn set_auto_rotation(&self, rotation: Option<AutoRotation>) {
        if let Some(admin) = &self.admin {
            admin.auto_on.store(rotation.is_some(), Ordering::Relaxed);
            *admin.auto.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = rotation.map(Arc::new);
        }
    }

    /// After a write: starts a rotation in the background when one is due and none is running.
    pub(crate) fn maybe_rotate(&self) {
        let Some(admin) = &self.admin else { return };
        // The common case (automatic rotation off) costs one atomic load per write.
        if !admin.auto_on.load(Ordering::Relaxed) {
            return;
        }
        let Some(auto) = admin.auto.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone() else {
            return;
        };
        if admin.state().rotation_due().is_none() || admin.rotating.swap(true, Ordering::SeqCst) {
            return;
        }
        let this = self.clone();
        tokio::spawn(async move {
            if let Err(e) = this.rotate_if_due(auto.provider.as_ref(), &auto.kek_id, auto.algorithm).await {
                tracing::warn!("automatic rotation failed, retried on a later write: {e}");
            }
            if let Some(admin) = &this.admin {
                admin.rotating.store(false, Ordering::SeqCst);
            }
        });
    }

    fn is_leader(&self) -> bool {
        let metrics = self.raft().metrics().borrow().clone();
        metrics.current_leader == Some(metrics.id)
    }
}

/// What [`EnvelopeRaft::set_auto_rotation`] rotates with.
#[derive(Clone)]
#[non_exhaustive]
pub struct AutoRotation {
    /// Wraps the new data keys.
    pub provider: Arc<dyn KeyProvider>,
    /// The KEK to wrap under (the provider's).
    pub kek_id: KekId,
    /// The new keys' algorithm.
    pub algorithm: Algorithm,
}

impl AutoRotation {
    /// Rotation with `provider`, under its own KEK, to `algorithm` keys.
    pub fn new(provider: Arc<dyn KeyProvider>, algorithm: Algorithm) -> Self {
        let kek_id = provider.kek_id().clone();
        Self { provider, kek_id, algorithm }
    }
}

impl fmt::Debug for AutoRotation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AutoRotation")
            .field("kek_id", &self.kek_id)
            .field("algorithm", &self.algorithm)
            .finish()
    }
}
