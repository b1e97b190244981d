//! openraft's [`ControlPlane`] for the core's [`Lifecycle`]: how an admin command proposes and
//! waits on this engine, and the admin state a node's `EnvelopeRaft` clones share.

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use openraft::error::{CheckIsLeaderError, ClientWriteError, ForwardToLeader, RaftError};
use openraft::type_config::TypeConfigExt;
use openraft::{Entry, RaftTypeConfig};
use raft_envelope_core::lifecycle::{
    AutoRotation, CheckpointPolicy, ControlPlane, Lifecycle, LifecycleError, MemberReports, Retention,
};
use raft_envelope_core::{LayerState, ProposalId};

use crate::config::{ClientWriteRaftError, SealedRaft};
use crate::drain::{drain_cleartext, time_left, Drain, DrainTimeout};
use crate::payload::EnvelopePayload;

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
    /// This node does not know its integrity digest chain (its layer state started after the
    /// log's first entry), so it cannot propose a checkpoint.
    #[error("this node cannot propose an integrity checkpoint: its digest chain is unknown")]
    NoChain,
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

/// What the drain waits on for one proposer: nothing that refers back to its admin (no cycle).
pub(crate) struct ProposerView<C: RaftTypeConfig<Entry = Entry<C>>> {
    pub(crate) raft: SealedRaft<C>,
    pub(crate) drain: Arc<Drain>,
}

/// openraft's [`ControlPlane`]: the node's own `Raft` for proposing and waiting, the proposers
/// given to [`EnvelopeRaft::enable_encryption`] for the drain, the reports given to
/// [`EnvelopeRaft::destroy_key`] for the proof.
pub(crate) struct NodePlane<C: RaftTypeConfig<Entry = Entry<C>>> {
    raft: SealedRaft<C>,
    own_drain: Arc<Drain>,
    pub(crate) state: Arc<LayerState>,
    pub(crate) proposers: Mutex<Vec<ProposerView<C>>>,
    pub(crate) reports: Mutex<Vec<Retention<C::NodeId>>>,
    pub(crate) timeout_ms: AtomicU64,
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
            drain_cleartext::<C>(&raft, &drain, left)
                .await
                .map_err(|source| PlaneError::Drain { node, source })?;
        }
        Ok(())
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
    pub(crate) lifecycle: Lifecycle<NodePlane<C>>,
    pub(crate) auto: Mutex<Option<Arc<AutoRotation>>>,
    pub(crate) auto_on: AtomicBool,
    pub(crate) rotating: AtomicBool,
    /// When this node, leading, proposes integrity checkpoints.
    pub(crate) checkpoints: Mutex<CheckpointPolicy>,
    pub(crate) checkpointing: AtomicBool,
    /// When this node last proposed one (or started: the time rule counts from there, so a new
    /// node's first sealed write does not check-point at once).
    pub(crate) last_checkpoint: Mutex<<C::AsyncRuntime as openraft::AsyncRuntime>::Instant>,
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
            checkpoints: Mutex::new(CheckpointPolicy::DEFAULT),
            checkpointing: AtomicBool::new(false),
            last_checkpoint: Mutex::new(C::now()),
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
