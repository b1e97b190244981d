//! The admin API: switch-on and key lifecycle through layer control entries in the Raft log,
//! driven by the core's [`Lifecycle`] over openraft's [`ControlPlane`].

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use openraft::error::{CheckIsLeaderError, ClientWriteError, ForwardToLeader, RaftError};
use openraft::type_config::TypeConfigExt;
use openraft::{Entry, RaftTypeConfig};
use raft_envelope_core::lifecycle::{
    AutoRotation, ControlPlane, Destroyed, Enabled, EncryptionStatus, Lifecycle, LifecycleError,
    MemberReports, Retention, Retired,
};
use raft_envelope_core::provider::{KekId, KeyProvider};
use raft_envelope_core::{Algorithm, KeyId, LayerState, ProposalId};

use crate::config::SealedRaft;
use crate::payload::EnvelopePayload;
use crate::raft::{ClientWriteRaftError, Drain, DrainTimeout, EnvelopeRaft};

/// How long an admin command waits, by default, for the other nodes to start sealing and drain
/// their cleartext proposals ([`EnvelopeRaft::set_admin_timeout`]).
pub const DEFAULT_ADMIN_TIMEOUT: Duration = Duration::from_secs(10);

/// What openraft failed or refused during an admin command (the engine's side of a
/// [`LifecycleError`]).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PlaneError<NID: openraft::NodeId, N: openraft::Node> {
    /// This node was not built with [`EnvelopeRaft::with_layer_state`].
    #[error("this node has no layer state (build it with EnvelopeRaft::with_layer_state)")]
    NoLayerState,
    /// This node could not confirm its leadership (typically not the leader: run the command on
    /// the leader, see [`forward_to_leader`](Self::forward_to_leader)).
    #[error("leadership not confirmed: {0}")]
    NotLeader(RaftError<NID, CheckIsLeaderError<NID, N>>),
    /// openraft refused or failed the control entry's (or the barrier's) write.
    #[error(transparent)]
    Raft(ClientWriteRaftError<NID, N>),
    /// A proposer had not applied the promote entry (and started sealing) in time.
    #[error("node {node} did not start sealing within {waited:?}")]
    NotSealing {
        /// The proposer.
        node: NID,
        /// How long the command waited.
        waited: Duration,
    },
    /// A proposer did not drain its cleartext proposals in time.
    #[error("node {node} did not drain its cleartext proposals: {source}")]
    Drain {
        /// The proposer.
        node: NID,
        /// The drain error.
        source: DrainTimeout,
    },
    /// No leader was found to run the command on (in-process helpers that look for one).
    #[error("no leader to run the admin command on")]
    NoLeader,
}

impl<NID: openraft::NodeId, N: openraft::Node> PlaneError<NID, N> {
    /// The leader to run the command on, when this node is not the leader.
    pub fn forward_to_leader(&self) -> Option<&ForwardToLeader<NID, N>> {
        match self {
            PlaneError::NotLeader(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(f)))
            | PlaneError::Raft(RaftError::APIError(ClientWriteError::ForwardToLeader(f))) => Some(f),
            _ => None,
        }
    }
}

/// An admin command on openraft failed: the core's [`LifecycleError`] with openraft's
/// [`PlaneError`]. Nothing unsafe happened; the command can be run again.
pub type AdminError<NID, N> = LifecycleError<PlaneError<NID, N>, NID>;

/// The leader to run an admin command on, when it failed because this node does not lead.
pub fn forward_to_leader<NID: openraft::NodeId, N: openraft::Node>(
    error: &AdminError<NID, N>,
) -> Option<&ForwardToLeader<NID, N>> {
    error.engine().and_then(PlaneError::forward_to_leader)
}

type Result<T, C> =
    std::result::Result<T, AdminError<<C as RaftTypeConfig>::NodeId, <C as RaftTypeConfig>::Node>>;

/// The time from now until `deadline`, zero once it passed.
pub(crate) fn time_left<C: RaftTypeConfig>(
    deadline: <C::AsyncRuntime as openraft::AsyncRuntime>::Instant,
) -> Duration {
    let now = C::now();
    if deadline > now {
        deadline - now
    } else {
        Duration::ZERO
    }
}

/// What the drain waits on for one proposer: nothing that refers back to its admin (no cycle).
pub(crate) struct ProposerView<C: RaftTypeConfig<Entry = Entry<C>>> {
    raft: SealedRaft<C>,
    drain: Arc<Drain>,
}

/// openraft's [`ControlPlane`]: the node's own `Raft` for proposing and waiting, the proposers
/// given to [`EnvelopeRaft::enable_encryption`] for the drain, the reports given to
/// [`EnvelopeRaft::destroy_key`] for the proof.
pub(crate) struct NodePlane<C: RaftTypeConfig<Entry = Entry<C>>> {
    raft: SealedRaft<C>,
    own_drain: Arc<Drain>,
    state: Arc<LayerState>,
    proposers: Mutex<Vec<ProposerView<C>>>,
    reports: Mutex<Vec<Retention<C::NodeId>>>,
    timeout_ms: AtomicU64,
}

impl<C: RaftTypeConfig<Entry = Entry<C>>> NodePlane<C> {
    fn timeout(&self) -> Duration {
        Duration::from_millis(self.timeout_ms.load(Ordering::SeqCst))
    }
}

#[raft_envelope_core::async_trait]
impl<C: RaftTypeConfig<Entry = Entry<C>>> ControlPlane for NodePlane<C> {
    type NodeId = C::NodeId;
    type Error = PlaneError<C::NodeId, C::Node>;

    fn layer_state(&self) -> &LayerState {
        &self.state
    }

    async fn catch_up(&self) -> std::result::Result<(), Self::Error> {
        self.raft.ensure_linearizable().await.map_err(PlaneError::NotLeader)?;
        Ok(())
    }

    async fn propose_control(
        &self,
        _id: ProposalId,
        entry: Vec<u8>,
    ) -> std::result::Result<u64, Self::Error> {
        let response =
            self.raft.client_write(EnvelopePayload::control(entry)).await.map_err(PlaneError::Raft)?;
        Ok(response.log_id.index)
    }

    async fn drain_cleartext(&self, applied_through: u64) -> std::result::Result<(), Self::Error> {
        let timeout = self.timeout();
        let deadline = C::now() + timeout;
        let mut proposers: Vec<(SealedRaft<C>, Arc<Drain>)> = {
            let list = self.proposers.lock().unwrap_or_else(PoisonError::into_inner);
            list.iter().map(|p| (p.raft.clone(), p.drain.clone())).collect()
        };
        proposers.push((self.raft.clone(), self.own_drain.clone()));
        for (raft, drain) in proposers {
            let node = raft.metrics().borrow().id.clone();
            // Sealing: it applied the promote (a node sets its wrapper while applying it, before
            // its metrics show the index). A node whose engine stopped (halted) appends nothing.
            let left = time_left::<C>(deadline);
            let waited = raft
                .wait(Some(left))
                .metrics(
                    |m| {
                        m.running_state.is_err()
                            || m.last_applied.as_ref().is_some_and(|l| l.index >= applied_through)
                    },
                    "the proposer to apply the promote entry",
                )
                .await;
            let metrics = match waited {
                Ok(m) => m,
                Err(_) => return Err(PlaneError::NotSealing { node, waited: timeout }),
            };
            if metrics.running_state.is_err() {
                continue;
            }
            let left = time_left::<C>(deadline);
            crate::raft::drain_cleartext::<C>(&raft, &drain, left)
                .await
                .map_err(|source| PlaneError::Drain { node, source })?;
        }
        Ok(())
    }

    async fn commit_barrier(&self) -> std::result::Result<u64, Self::Error> {
        let response = self.raft.client_write(EnvelopePayload::barrier()).await.map_err(PlaneError::Raft)?;
        Ok(response.log_id.index)
    }

    async fn retention_reports(&self) -> std::result::Result<MemberReports<C::NodeId>, Self::Error> {
        let members: Vec<C::NodeId> = {
            let metrics = self.raft.metrics().borrow().clone();
            metrics.membership_config.membership().nodes().map(|(id, _)| id.clone()).collect()
        };
        let reports = self.reports.lock().unwrap_or_else(PoisonError::into_inner).clone();
        Ok(MemberReports::new(members, reports))
    }
}

/// The admin side of a node built with [`EnvelopeRaft::with_layer_state`], shared by its clones.
pub(crate) struct Admin<C: RaftTypeConfig<Entry = Entry<C>>> {
    lifecycle: Lifecycle<NodePlane<C>>,
    auto: Mutex<Option<Arc<AutoRotation>>>,
    auto_on: AtomicBool,
    rotating: AtomicBool,
}

impl<C: RaftTypeConfig<Entry = Entry<C>>> Admin<C> {
    pub(crate) fn new(raft: SealedRaft<C>, state: Arc<LayerState>, drain: Arc<Drain>) -> Self {
        let plane = NodePlane {
            raft,
            state,
            own_drain: drain,
            proposers: Mutex::new(Vec::new()),
            reports: Mutex::new(Vec::new()),
            timeout_ms: AtomicU64::new(DEFAULT_ADMIN_TIMEOUT.as_millis() as u64),
        };
        Self {
            lifecycle: Lifecycle::new(plane),
            auto: Mutex::new(None),
            auto_on: AtomicBool::new(false),
            rotating: AtomicBool::new(false),
        }
    }

    pub(crate) fn state(&self) -> &Arc<LayerState> {
        &self.lifecycle.plane().state
    }
}

impl<C: RaftTypeConfig<Entry = Entry<C>>> fmt::Debug for Admin<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Admin").field("state", self.state()).finish()
    }
}

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
