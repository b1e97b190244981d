//! The in-process cluster and its deterministic message pump.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};

use raft::eraftpb::{ConfChange, ConfChangeType, Entry, Message, MessageType};
use raft::{Config, GetEntriesContext, SnapshotStatus, Storage};
use raft_envelope_core::lifecycle::{AutoRotation, Destroyed, Lifecycle, LifecycleError, Retention, Retired};
use raft_envelope_core::provider::{KekId, KeyProvider};
use raft_envelope_core::{
    Algorithm, EnvelopeLayer, FatalApplyError, KeyId, LayerState, PayloadWrapper, ProposalId,
};
use slog::Logger;

use crate::admin::{AdminError, AdminHandle, AdminInbox, ClusterPlane, PlaneError};
use crate::error::{NodeError, ProposeError, StopKind, StopReason};
use crate::mem_store::MemStore;
use crate::node::EnvelopeNode;
use crate::node::DEFAULT_TICK_INTERVAL;
use crate::proposer::raft_error;
use crate::state_machine::StateMachine;
use crate::tracker::Applied;
use raft_envelope_core::lifecycle::{CheckpointPolicy, EncryptionStatus};

/// The outcome of one proposal ([`Cluster::propose_twice`]).
pub type ProposeOutcome<R> = Result<Applied<R>, ProposeError>;

/// Timing of a test [`Cluster`], in logical ticks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClusterConfig {
    /// raft-rs `election_tick`.
    pub election_tick: usize,
    /// raft-rs `heartbeat_tick`.
    pub heartbeat_tick: usize,
    /// Ticks after which a proposal without an outcome is reported timed out.
    pub proposal_timeout_ticks: u64,
    /// Most ticks any wait of the cluster runs before giving up.
    pub max_wait_ticks: u64,
    /// When leaders with a layer state propose integrity checkpoints
    /// ([`EnvelopeNode::with_checkpoints`], one tick counted as [`DEFAULT_TICK_INTERVAL`]).
    pub checkpoints: CheckpointPolicy,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        Self {
            election_tick: 10,
            heartbeat_tick: 2,
            proposal_timeout_ticks: 60,
            max_wait_ticks: 400,
            checkpoints: CheckpointPolicy::DEFAULT,
        }
    }
}

/// A cluster operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClusterError {
    /// No node with this id.
    #[error("no node {0}")]
    NoSuchNode(u64),
    /// No leader could be found or elected in time.
    #[error("no leader")]
    NoLeader,
    /// A wait gave up.
    #[error("timed out waiting for {0}")]
    Timeout(&'static str),
    /// A node failed.
    #[error(transparent)]
    Node(#[from] NodeError),
    /// A proposal failed.
    #[error(transparent)]
    Propose(#[from] ProposeError),
    /// The storage refused an operation.
    #[error("storage: {0}")]
    Storage(String),
    /// An admin command failed or was refused ([`Lifecycle`]'s error over [`ClusterPlane`]):
    /// nothing unsafe happened, and it can be run again.
    #[error(transparent)]
    Admin(#[from] AdminError),
    /// The node has no layer state (started with a plain layer).
    #[error("node {0} has no layer state")]
    NoLayerState(u64),
}

/// How a node's layer is configured.
#[derive(Clone)]
enum Setup {
    /// A plain layer: keys and cutover from the node's configuration.
    Layer(Arc<EnvelopeLayer>),
    /// Keys and cutover through the log: the replicated layer state and the node's key provider.
    Lifecycle(Arc<LayerState>, Arc<dyn KeyProvider>),
}

struct Slot<SM: StateMachine> {
    storage: MemStore,
    node: Option<EnvelopeNode<MemStore, SM>>,
    /// The layer state kept across restarts (persisted with the state machine).
    state: Option<Arc<LayerState>>,
    /// The node's admin channel (lifecycle nodes): served by the pump as a Ready loop would.
    admin: Option<(AdminHandle, AdminInbox)>,
}

/// Wakes the blocked thread.
struct ThreadWaker(std::thread::Thread);

impl Wake for ThreadWaker {
    fn wake(self: Arc<Self>) {
        self.0.unpark();
    }
}

/// Runs `future` to completion on this thread (for key providers that need no async runtime,
/// like [`FileKekProvider`](raft_envelope_core::provider::FileKekProvider)): the test driver's way of
/// calling async providers outside the synchronous raft-rs apply path.
pub fn block_on<F: Future>(future: F) -> F::Output {
    let mut future = std::pin::pin!(future);
    let waker = Waker::from(Arc::new(ThreadWaker(std::thread::current())));
    let mut cx = Context::from_waker(&waker);
    loop {
        match future.as_mut().poll(&mut cx) {
            Poll::Ready(out) => return out,
            Poll::Pending => std::thread::park(),
        }
    }
}

/// A raft-rs cluster of [`EnvelopeNode`]s over [`MemStore`] in one process.
///
/// Messages go through one queue, delivered in order on the caller's thread
/// ([`settle`](Self::settle)); time advances only through [`tick`](Self::tick). A halted node is
/// not driven any more (messages to it are dropped), exactly as a production driver would stop
/// it; the others keep going.
///
/// Index layout: index 1 is the first leader's empty entry (the configuration lives in
/// `MemStore`, outside the log); every new term appends another empty entry.
///
/// Key lifecycle ([`with_layer_states`](Self::with_layer_states)): admin commands run one at a
/// time through the leader; when the leader's active key is due for rotation
/// ([`LayerState::rotation_due`]) the cluster rotates it by itself with the leader's provider
/// (before proposals and after ticks, never inside another admin command), unless
/// [`set_auto_rotation`](Self::set_auto_rotation) turned that off.
pub struct Cluster<SM: StateMachine> {
    cfg: ClusterConfig,
    logger: Logger,
    slots: BTreeMap<u64, Slot<SM>>,
    queue: VecDeque<Message>,
    held: Vec<Message>,
    hold_proposals: bool,
    isolated: Vec<u64>,
    commit_caps: HashMap<u64, u64>,
    done: HashMap<ProposalId, Result<Applied<SM::Response>, ProposeError>>,
    refused_steps: u64,
    /// The configuration every node started with (a new member starts with it too).
    initial_voters: Vec<u64>,
    auto_rotate: bool,
    /// An admin command is running: automatic rotation waits.
    admin_busy: bool,
}

impl<SM: StateMachine> Cluster<SM> {
    /// Starts one node per layer (ids 1..=n), all voters, elects node 1 and waits until every
    /// node applied the leader's first entry.
    ///
    /// # Errors
    /// [`ClusterError`] when a node cannot start or no leader is elected.
    pub fn new(
        layers: Vec<Arc<EnvelopeLayer>>,
        make_sm: impl FnMut(u64) -> SM,
    ) -> Result<Self, ClusterError> {
        Self::with_config(ClusterConfig::default(), layers, make_sm)
    }

    /// [`new`](Self::new) with explicit timing.
    ///
    /// # Errors
    /// [`ClusterError`] when a node cannot start or no leader is elected.
    pub fn with_config(
        cfg: ClusterConfig,
        layers: Vec<Arc<EnvelopeLayer>>,
        make_sm: impl FnMut(u64) -> SM,
    ) -> Result<Self, ClusterError> {
        Self::build(cfg, layers.into_iter().map(Setup::Layer).collect(), make_sm)
    }

    /// Starts one node per `(layer state, key provider)` (ids 1..=n), whose keys and cutover
    /// change only through layer control entries ([`EnvelopeNode::with_layer_state`]); the
    /// cluster prefetches install entries with each node's provider outside the apply path.
    /// Switch encryption on with [`enable_encryption`](Self::enable_encryption).
    ///
    /// # Errors
    /// [`ClusterError`] when a node cannot start or no leader is elected.
    pub fn with_layer_states(
        cfg: ClusterConfig,
        nodes: Vec<(Arc<LayerState>, Arc<dyn KeyProvider>)>,
        make_sm: impl FnMut(u64) -> SM,
    ) -> Result<Self, ClusterError> {
        Self::build(cfg, nodes.into_iter().map(|(s, p)| Setup::Lifecycle(s, p)).collect(), make_sm)
    }

    fn build(
        cfg: ClusterConfig,
        layers: Vec<Setup>,
        mut make_sm: impl FnMut(u64) -> SM,
    ) -> Result<Self, ClusterError> {
        let logger = Logger::root(slog::Discard, slog::o!());
        let ids: Vec<u64> = (1..=layers.len() as u64).collect();
        let mut cluster = Self {
            cfg,
            logger,
            slots: BTreeMap::new(),
            queue: VecDeque::new(),
            held: Vec::new(),
            hold_proposals: false,
            isolated: Vec::new(),
            commit_caps: HashMap::new(),
            done: HashMap::new(),
            refused_steps: 0,
            initial_voters: ids.clone(),
            auto_rotate: true,
            admin_busy: false,
        };
        for (id, layer) in ids.iter().zip(layers) {
            let storage = MemStore::new_with_conf_state((ids.clone(), vec![]));
            let state = match &layer {
                Setup::Lifecycle(state, _) => Some(state.clone()),
                Setup::Layer(_) => None,
            };
            let node = cluster.start_node(*id, storage.clone(), make_sm(*id), layer)?;
            let admin = cluster.admin_channel(&node);
            cluster.slots.insert(*id, Slot { storage, node: Some(node), state, admin });
        }
        if let Some(first) = ids.first() {
            cluster.node_mut(*first)?.campaign()?;
        }
        cluster.settle();
        let leader = cluster.wait_leader()?;
        cluster.wait_converged(leader)?;
        Ok(cluster)
    }

    fn start_node(
        &self,
        id: u64,
        storage: MemStore,
        sm: SM,
        setup: Setup,
    ) -> Result<EnvelopeNode<MemStore, SM>, ClusterError> {
        let config = Config {
            id,
            election_tick: self.cfg.election_tick,
            heartbeat_tick: self.cfg.heartbeat_tick,
            ..Config::default()
        };
        let node = match setup {
            Setup::Layer(layer) => EnvelopeNode::new(&config, storage, sm, layer, &self.logger)?,
            Setup::Lifecycle(state, provider) => {
                EnvelopeNode::with_layer_state(&config, storage, sm, state, provider, &self.logger)?
                    .with_checkpoints(self.cfg.checkpoints, DEFAULT_TICK_INTERVAL)
            }
        };
        Ok(node.with_proposal_timeout(self.cfg.proposal_timeout_ticks))
    }

    /// Hands the running nodes over to a driver of the caller's (each on its own thread, say,
    /// as a deployment runs them), in id order. The cluster's queue must be settled first: the
    /// messages it still holds are dropped (raft-rs sends them again).
    pub fn into_nodes(self) -> Vec<EnvelopeNode<MemStore, SM>> {
        self.slots.into_values().filter_map(|s| s.node).collect()
    }

    /// The node ids.
    pub fn ids(&self) -> Vec<u64> {
        self.slots.keys().copied().collect()
    }

    /// The node `id`.
    ///
    /// # Errors
    /// [`ClusterError::NoSuchNode`].
    pub fn node(&self, id: u64) -> Result<&EnvelopeNode<MemStore, SM>, ClusterError> {
        self.slots.get(&id).and_then(|s| s.node.as_ref()).ok_or(ClusterError::NoSuchNode(id))
    }

    /// The node `id`, mutable: drive it directly (propose, transfer leadership, ...).
    ///
    /// # Errors
    /// [`ClusterError::NoSuchNode`].
    pub fn node_mut(&mut self, id: u64) -> Result<&mut EnvelopeNode<MemStore, SM>, ClusterError> {
        self.slots.get_mut(&id).and_then(|s| s.node.as_mut()).ok_or(ClusterError::NoSuchNode(id))
    }

    /// True when node `id` exists and has neither halted nor stopped.
    pub fn running(&self, id: u64) -> bool {
        self.node(id).map(|n| n.halted().is_none() && n.stopped().is_none()).unwrap_or(false)
    }

    /// The state machine of node `id`.
    ///
    /// # Errors
    /// [`ClusterError::NoSuchNode`].
    pub fn state_machine(&self, id: u64) -> Result<&SM, ClusterError> {
        Ok(self.node(id)?.state_machine())
    }

    /// The last index node `id` applied.
    ///
    /// # Errors
    /// [`ClusterError::NoSuchNode`].
    pub fn applied(&self, id: u64) -> Result<u64, ClusterError> {
        Ok(self.node(id)?.applied())
    }

    /// The error node `id` halted with, if it halted.
    ///
    /// # Errors
    /// [`ClusterError::NoSuchNode`].
    pub fn halted(&self, id: u64) -> Result<Option<FatalApplyError>, ClusterError> {
        Ok(self.node(id)?.halted().cloned())
    }

    /// The running leader with the highest term, if any.
    pub fn leader(&self) -> Option<u64> {
        self.slots
            .iter()
            .filter_map(|(id, s)| s.node.as_ref().map(|n| (*id, n)))
            .filter(|(id, n)| n.is_leader() && self.running(*id))
            .max_by_key(|(_, n)| n.term())
            .map(|(id, _)| id)
    }

    /// How many forwarded cleartext proposals (or other messages) nodes refused to step.
    pub fn refused_steps(&self) -> u64 {
        self.refused_steps
    }

    /// Delivers messages and handles Readies until nothing moves. Deterministic: nodes in id
    /// order, messages in the order they were produced. No time passes.
    pub fn settle(&mut self) {
        for _ in 0..100_000 {
            let mut moved = false;
            let ids = self.ids();
            for id in &ids {
                if !self.running(*id) {
                    continue;
                }
                let Some(node) = self.slots.get_mut(id).and_then(|s| s.node.as_mut()) else { continue };
                if node.needs_prefetch() {
                    // Outside the apply path: the provider may be slow; apply never waits for it.
                    let _ = block_on(node.prefetch_pending());
                }
                match node.on_ready() {
                    Ok(messages) => {
                        moved |= !messages.is_empty();
                        self.queue.extend(messages);
                    }
                    Err(e) => {
                        tracing::warn!(node = id, "node stopped: {e}");
                        let last = node.take_last_messages();
                        moved |= !last.is_empty();
                        self.queue.extend(last);
                    }
                }
                if let Some(slot) = self.slots.get_mut(id) {
                    if let (Some(node), Some((_, inbox))) = (slot.node.as_mut(), slot.admin.as_mut()) {
                        node.serve_admin(inbox);
                    }
                }
                let Some(node) = self.slots.get_mut(id).and_then(|s| s.node.as_mut()) else { continue };
                for c in node.take_completions() {
                    self.done.insert(c.id, c.result);
                }
            }
            // A halted or stopped node still answers its admin requests (with `Stopped`).
            for slot in self.slots.values_mut() {
                if let (Some(node), Some((_, inbox))) = (slot.node.as_mut(), slot.admin.as_mut()) {
                    if node.halted().is_some() || node.stopped().is_some() {
                        node.serve_admin(inbox);
                    }
                }
            }
            while let Some(m) = self.queue.pop_front() {
                moved = true;
                self.deliver(m);
            }
            let pending = ids.iter().any(|id| {
                self.running(*id)
                    && self.node(*id).map(|n| n.raw_node().has_ready() || n.needs_driving()).unwrap_or(false)
            });
            if !moved && !pending {
                return;
            }
        }
        tracing::warn!("settle: gave up after 100000 rounds");
    }

    fn deliver(&mut self, mut m: Message) {
        if let Some(cap) = self.commit_caps.get(&m.to) {
            m.commit = m.commit.min(*cap);
        }
        if self.hold_proposals && m.get_msg_type() == MessageType::MsgPropose {
            self.held.push(m);
            return;
        }
        let (to, from) = (m.to, m.from);
        let snapshot = m.get_msg_type() == MessageType::MsgSnapshot;
        let delivered = self.step_into(m);
        if snapshot {
            // raft-rs waits for this report before it sends the peer anything else.
            let status = if delivered { SnapshotStatus::Finish } else { SnapshotStatus::Failure };
            if let Some(node) = self.slots.get_mut(&from).and_then(|s| s.node.as_mut()) {
                node.report_snapshot(to, status);
            }
        }
    }

    /// Steps `m` into its recipient; false when it was lost or refused.
    fn step_into(&mut self, m: Message) -> bool {
        let to = m.to;
        if self.isolated.contains(&to) || self.isolated.contains(&m.from) || !self.running(to) {
            return false;
        }
        let Some(node) = self.slots.get_mut(&to).and_then(|s| s.node.as_mut()) else { return false };
        match node.step(m) {
            Ok(()) => true,
            Err(e) => {
                self.refused_steps += 1;
                tracing::debug!(node = to, "step refused: {e}");
                false
            }
        }
    }

    /// Advances every running node by `ticks` ticks, settling after each.
    pub fn tick(&mut self, ticks: u64) {
        for _ in 0..ticks {
            for id in self.ids() {
                if self.running(id) {
                    if let Some(node) = self.slots.get_mut(&id).and_then(|s| s.node.as_mut()) {
                        node.tick();
                    }
                }
            }
            self.settle();
            self.maybe_rotate();
        }
    }

    /// Turns automatic rotation on (the default) or off.
    pub fn set_auto_rotation(&mut self, on: bool) {
        self.auto_rotate = on;
    }

    /// Automatic rotation ([`set_auto_rotation`](Self::set_auto_rotation)): runs
    /// [`rotate_if_due`](Self::rotate_if_due) unless an admin command is running. A failed attempt
    /// is traced and retried at the next opportunity; the old key keeps sealing meanwhile (an
    /// eighth of its budget is left when it becomes due).
    fn maybe_rotate(&mut self) {
        if !self.auto_rotate || self.admin_busy {
            return;
        }
        if let Err(e) = self.rotate_if_due() {
            tracing::warn!("automatic rotation failed, will retry: {e}");
        }
    }

    /// When the running leader's active key is due for rotation ([`EnvelopeNode::rotation_due`]),
    /// rotates through [`Lifecycle::rotate_if_due`] with the leader's own provider (same
    /// algorithm) and returns the new key's id; `Ok(None)` when nothing is due.
    ///
    /// # Errors
    /// [`ClusterError::Admin`]; the old key stays active.
    pub fn rotate_if_due(&mut self) -> Result<Option<KeyId>, ClusterError> {
        let Some(leader) = self.leader() else { return Ok(None) };
        let node = self.node(leader)?;
        let (Some(due), Some(provider), Some(state)) =
            (node.rotation_due(), node.key_provider().cloned(), node.layer_state().cloned())
        else {
            return Ok(None);
        };
        let algorithm = state.key(due).map_or(Algorithm::Aes256Gcm, |k| k.algorithm);
        let rotation = AutoRotation::new(provider, algorithm);
        let rotation = &rotation;
        let rotated = self.run_admin(|l| Box::pin(async move { l.rotate_if_due(rotation).await }))?;
        if let Some(key_id) = rotated {
            tracing::info!(from = due.0, to = key_id.0, "key rotated automatically");
        }
        Ok(rotated)
    }

    /// Runs an admin command with automatic rotation held off.
    fn admin<T>(&mut self, command: impl FnOnce(&mut Self) -> T) -> T {
        let busy = std::mem::replace(&mut self.admin_busy, true);
        let result = command(self);
        self.admin_busy = busy;
        result
    }

    /// Settles, then ticks until `done(self)` holds, at most `max_wait_ticks`.
    pub fn wait_until(&mut self, mut done: impl FnMut(&Self) -> bool) -> bool {
        self.settle();
        for _ in 0..self.cfg.max_wait_ticks {
            if done(self) {
                return true;
            }
            self.tick(1);
        }
        done(self)
    }

    /// Waits for a running leader.
    ///
    /// # Errors
    /// [`ClusterError::NoLeader`].
    pub fn wait_leader(&mut self) -> Result<u64, ClusterError> {
        if self.wait_until(|c| c.leader().is_some()) {
            self.leader().ok_or(ClusterError::NoLeader)
        } else {
            Err(ClusterError::NoLeader)
        }
    }

    /// Waits until every running node applied the leader's commit index.
    ///
    /// # Errors
    /// [`ClusterError::Timeout`].
    pub fn wait_converged(&mut self, leader: u64) -> Result<(), ClusterError> {
        let ok = self.wait_until(|c| {
            let Ok(target) = c.node(leader).map(|n| n.commit_index()) else { return false };
            c.ids().iter().all(|id| !c.running(*id) || c.applied(*id).map(|a| a >= target).unwrap_or(false))
        });
        if ok {
            Ok(())
        } else {
            Err(ClusterError::Timeout("convergence"))
        }
    }

    /// Waits until node `id` applied `index` (or halted, or the wait gave up); returns its
    /// applied index.
    ///
    /// # Errors
    /// [`ClusterError::NoSuchNode`].
    pub fn wait_applied(&mut self, id: u64, index: u64) -> Result<u64, ClusterError> {
        self.node(id)?;
        self.wait_until(|c| !c.running(id) || c.applied(id).map(|a| a >= index).unwrap_or(false));
        self.applied(id)
    }

    fn wait_completion(&mut self, id: ProposalId) -> Result<Applied<SM::Response>, ProposeError> {
        self.settle();
        for _ in 0..=self.cfg.max_wait_ticks {
            if let Some(result) = self.done.remove(&id) {
                return result;
            }
            self.tick(1);
        }
        Err(ProposeError::TimedOut { ticks: self.cfg.max_wait_ticks })
    }

    /// Proposes `payload` on node `via` (the leader, or a follower that forwards it) and waits
    /// for its outcome on that node.
    ///
    /// # Errors
    /// The [`ProposeError`] of the proposal.
    pub fn propose_via(&mut self, via: u64, payload: Vec<u8>) -> Result<Applied<SM::Response>, ProposeError> {
        self.maybe_rotate();
        let ticket = match self.slots.get_mut(&via).and_then(|s| s.node.as_mut()) {
            Some(node) => node.propose(payload)?,
            None => {
                return Err(ProposeError::Stopped(StopReason::new(
                    StopKind::NotRunning,
                    0,
                    format!("no node {via}"),
                )))
            }
        };
        self.wait_completion(ticket.id)
    }

    /// Proposes `payload` on the leader and waits for its outcome.
    ///
    /// # Errors
    /// The [`ProposeError`] of the proposal ([`ProposeError::Dropped`] when there is no leader).
    pub fn propose(&mut self, payload: Vec<u8>) -> Result<Applied<SM::Response>, ProposeError> {
        let Ok(leader) = self.wait_leader() else { return Err(ProposeError::Dropped) };
        self.propose_via(leader, payload)
    }

    /// Proposes `payload` on node `via` without waiting; the outcome is collected later with
    /// [`outcome`](Self::outcome).
    ///
    /// # Errors
    /// The proposer's refusal.
    pub fn propose_async(&mut self, via: u64, payload: Vec<u8>) -> Result<ProposalId, ProposeError> {
        self.maybe_rotate();
        match self.slots.get_mut(&via).and_then(|s| s.node.as_mut()) {
            Some(node) => Ok(node.propose(payload)?.id),
            None => {
                Err(ProposeError::Stopped(StopReason::new(StopKind::NotRunning, 0, format!("no node {via}"))))
            }
        }
    }

    /// Proposes an integrity checkpoint on the leader ([`EnvelopeNode::propose_checkpoint`])
    /// and waits until the leader applied it; returns its index.
    ///
    /// # Errors
    /// The checkpoint's [`ProposeError`] ([`ProposeError::Dropped`] when there is no leader).
    pub fn checkpoint(&mut self) -> Result<u64, ProposeError> {
        let Ok(leader) = self.wait_leader() else { return Err(ProposeError::Dropped) };
        let ticket = match self.slots.get_mut(&leader).and_then(|s| s.node.as_mut()) {
            Some(node) => node.propose_checkpoint()?,
            None => return Err(ProposeError::Dropped),
        };
        Ok(self.wait_completion(ticket.id)?.index)
    }

    /// Prepares `payload` once on the leader ([`EnvelopeNode::prepare`]) and submits it twice,
    /// waiting for each outcome before the next submission (a client retrying after a lost
    /// answer): both outcomes.
    ///
    /// # Errors
    /// The preparation's [`ProposeError`] ([`ProposeError::Dropped`] when there is no leader).
    pub fn propose_twice(
        &mut self,
        payload: Vec<u8>,
    ) -> Result<[ProposeOutcome<SM::Response>; 2], ProposeError> {
        self.maybe_rotate();
        let Ok(leader) = self.wait_leader() else { return Err(ProposeError::Dropped) };
        let node = self.slots.get_mut(&leader).and_then(|s| s.node.as_mut()).ok_or(ProposeError::Dropped)?;
        let prepared = node.prepare(payload)?;
        let submit = |c: &mut Self| -> ProposeOutcome<SM::Response> {
            let node = c.slots.get_mut(&leader).and_then(|s| s.node.as_mut()).ok_or(ProposeError::Dropped)?;
            let ticket = node.submit(&prepared)?;
            c.wait_completion(ticket.id)
        };
        let first = submit(self);
        let second = submit(self);
        Ok([first, second])
    }

    /// The outcome of proposal `id`, once reached (taken: a second call returns `None`).
    pub fn outcome(&mut self, id: ProposalId) -> Option<Result<Applied<SM::Response>, ProposeError>> {
        self.done.remove(&id)
    }

    /// Commits a switch-on barrier through the leader and returns its index.
    ///
    /// # Errors
    /// The barrier's [`ProposeError`].
    pub fn commit_barrier(&mut self) -> Result<u64, ProposeError> {
        let Ok(leader) = self.wait_leader() else { return Err(ProposeError::Dropped) };
        let ticket = match self.slots.get_mut(&leader).and_then(|s| s.node.as_mut()) {
            Some(node) => node.propose_barrier()?,
            None => return Err(ProposeError::Dropped),
        };
        Ok(self.wait_completion(ticket.id)?.index)
    }

    /// Switches encryption on and returns the cutover `C`:
    ///
    /// 1. **Seal**: every node's layer starts sealing with `wrapper_for(node)`.
    /// 2. **Barrier**: a barrier entry is committed through the leader; its index is `C`.
    /// 3. **Enforce**: `set_cutover(node, C)` for every node (the node's
    ///    [`Cutover`](raft_envelope_core::Cutover) that its gate reads).
    ///
    /// Why no cleartext from a correct client can land above `C`, forwarding and leader changes
    /// included: take an entry committed at `i > C`. Its term is at least the barrier's; by Log
    /// Matching the leader that created it held the barrier at `C` in its log, so it created the
    /// entry after the barrier existed, hence after step 1 finished on every node. A leader
    /// creates an entry either from its own `propose` — where sealing and appending happen in one
    /// `&mut RawNode` call, so a cleartext prepared before step 1 was appended before the
    /// barrier reached that node — or by stepping a forwarded `MsgPropose`, which
    /// [`EnvelopeNode::step`] refuses when it carries cleartext and the node seals (it does,
    /// since step 1). So every entry above `C` is an envelope or a control entry. A follower
    /// seals before forwarding (the proposal is prepared where `propose` is called), so
    /// forwarding only ever carries envelopes after step 1; a cleartext proposal still in flight
    /// from before is refused, and its proposer sees a timeout, never a halt.
    ///
    /// As a second guard, a node whose layer does not seal (for example one restarted with its
    /// cutover but without its wrapper) refuses cleartext once its log reaches `C`:
    /// [`ProposeError::NotSealing`] for its own proposals, [`EnvelopeNode::step`] for forwarded
    /// ones.
    ///
    /// Across processes, run the same three steps through your own admin endpoints.
    ///
    /// # Errors
    /// The barrier's [`ProposeError`]; nothing is enforced until step 3, so a failed attempt
    /// never halts a node and can be retried.
    pub fn switch_on(
        &mut self,
        mut wrapper_for: impl FnMut(u64) -> Arc<dyn PayloadWrapper>,
        mut set_cutover: impl FnMut(u64, u64),
    ) -> Result<u64, ProposeError> {
        for (id, slot) in &self.slots {
            if let Some(node) = &slot.node {
                node.layer().set_wrapper(Some(wrapper_for(*id)));
            }
        }
        let cutover = self.commit_barrier()?;
        for id in self.ids() {
            set_cutover(id, cutover);
        }
        tracing::info!(cutover, "envelope layer switched on");
        Ok(cutover)
    }

    /// Waits for a leader that has committed an entry of its term and applied up to its commit
    /// index (its layer state is current, as admin commands need).
    ///
    /// # Errors
    /// [`ClusterError::NoLeader`], [`ClusterError::Timeout`].
    pub fn admin_leader(&mut self) -> Result<u64, ClusterError> {
        let leader = self.wait_leader()?;
        let ready = self.wait_until(|c| {
            c.node(leader).is_ok_and(|n| {
                n.is_leader() && n.raw_node().raft.commit_to_current_term() && n.applied() >= n.commit_index()
            })
        });
        if !ready {
            return Err(ClusterError::Timeout("the leader to apply its commit index"));
        }
        Ok(leader)
    }

    /// The admin channel of a lifecycle node, its requests bounded by the cluster's wait.
    fn admin_channel(&self, node: &EnvelopeNode<MemStore, SM>) -> Option<(AdminHandle, AdminInbox)> {
        let (handle, inbox) = node.admin_channel().ok()?;
        Some((handle, inbox.with_timeout_ticks(self.cfg.max_wait_ticks)))
    }

    /// The key-lifecycle driver on the current leader, over every node's admin handle: the
    /// public admin API ([`ClusterPlane::lifecycle`]) as a user's own driver would use it.
    ///
    /// # Errors
    /// [`ClusterError::NoLeader`], [`ClusterError::NoLayerState`].
    pub fn lifecycle(&mut self) -> Result<Lifecycle<ClusterPlane>, ClusterError> {
        let leader = self.wait_leader()?;
        let handle = |s: &Slot<SM>| s.admin.as_ref().map(|(h, _)| h.clone());
        let on = self.slots.get(&leader).and_then(handle).ok_or(ClusterError::NoLayerState(leader))?;
        let members = self.slots.values().filter_map(handle).collect();
        Ok(ClusterPlane::lifecycle(on, members))
    }

    /// Runs `future` to completion, pumping the cluster (messages, Ready, admin requests, ticks)
    /// while it waits: the cluster plays every node's Ready loop. Admin requests are bounded in
    /// ticks by the nodes' inboxes, so the future always completes.
    pub fn drive<T>(&mut self, future: impl Future<Output = T>) -> T {
        let mut future = std::pin::pin!(future);
        let waker = Waker::from(Arc::new(ThreadWaker(std::thread::current())));
        let mut cx = Context::from_waker(&waker);
        loop {
            if let Poll::Ready(out) = future.as_mut().poll(&mut cx) {
                return out;
            }
            self.settle();
            if let Poll::Ready(out) = future.as_mut().poll(&mut cx) {
                return out;
            }
            self.tick(1);
        }
    }

    /// Runs an admin operation on the leader with automatic rotation held off; when leadership
    /// moved meanwhile (`NotLeader`, or a proposal superseded or dropped by a leader change), runs
    /// it again on the new leader, up to five times.
    fn run_admin<'a, T>(
        &mut self,
        op: impl Fn(
            Lifecycle<ClusterPlane>,
        ) -> std::pin::Pin<Box<dyn Future<Output = Result<T, AdminError>> + 'a>>,
    ) -> Result<T, ClusterError> {
        self.admin(|c| {
            let mut attempt = 0;
            loop {
                let lifecycle = c.lifecycle()?;
                let result = c.drive(op(lifecycle));
                attempt += 1;
                match result {
                    Err(LifecycleError::Engine(
                        PlaneError::NotLeader { .. } | PlaneError::Propose { .. },
                    )) if attempt < 5 => {}
                    other => return other.map_err(ClusterError::Admin),
                }
            }
        })
    }

    /// Switches encryption on through the log ([`Lifecycle::enable_encryption`]) and returns the
    /// cutover `C`: install a new data key wrapped under `kek_id`, promote it, wait until every
    /// running node applied the promote, commit the enforce entry (its index is `C`).
    ///
    /// Why no cleartext can land above `C`: take an entry `e` committed at `i > C`. The leader
    /// that created `e` appended it after its log prefix `1..i`, which is the committed prefix
    /// (Log Matching), so at that moment its log held the promote at `P < C`. Either that leader
    /// had applied `P` — then its layer sealed, so it sealed its own proposal (sealing and
    /// appending happen in one `&mut RawNode` call) and its `step` refused a forwarded cleartext
    /// one — or it had not, and then its log held a layer control entry above its applied
    /// index, for which a node refuses cleartext from its own proposer
    /// ([`ProposeError::ControlPending`]) and from `step`. Either way `e` is not cleartext.
    ///
    /// Idempotent: when a cutover is already set, returns it.
    ///
    /// # Errors
    /// [`ClusterError::Admin`]; a failed attempt leaves the cluster consistent and can be
    /// retried.
    pub fn enable_encryption(
        &mut self,
        provider: &dyn KeyProvider,
        kek_id: &KekId,
        algorithm: Algorithm,
    ) -> Result<u64, ClusterError> {
        let enabled = self
            .run_admin(|l| Box::pin(async move { l.enable_encryption(provider, kek_id, algorithm).await }))?;
        Ok(enabled.cutover)
    }

    /// Rotates ([`Lifecycle::rotate_key`]): installs a new key wrapped under `provider`'s KEK and
    /// promotes it (the previous active key becomes decrypt-only). Returns the new key id.
    ///
    /// # Errors
    /// [`ClusterError::Admin`].
    pub fn rotate_key(
        &mut self,
        provider: &dyn KeyProvider,
        algorithm: Algorithm,
    ) -> Result<KeyId, ClusterError> {
        self.run_admin(|l| {
            Box::pin(async move { l.rotate_key(provider, provider.kek_id(), algorithm).await })
        })
    }

    /// Starts sealing without enforcing ([`Lifecycle::start_sealing`]): installs a new key
    /// wrapped under `provider`'s KEK and promotes it. Returns the active key.
    ///
    /// # Errors
    /// [`ClusterError::Admin`].
    pub fn start_sealing(
        &mut self,
        provider: &dyn KeyProvider,
        algorithm: Algorithm,
    ) -> Result<KeyId, ClusterError> {
        self.run_admin(|l| {
            Box::pin(async move { l.start_sealing(provider, provider.kek_id(), algorithm).await })
        })
    }

    /// Retires `key_id` to decrypt-only on every replica ([`Lifecycle::retire_key`]).
    ///
    /// # Errors
    /// [`ClusterError::Admin`]: refused for an unknown or destroyed key, and for the active key
    /// under a cutover.
    pub fn retire_key(&mut self, key_id: KeyId) -> Result<Retired, ClusterError> {
        self.run_admin(|l| Box::pin(async move { l.retire_key(key_id).await }))
    }

    /// Destroys `key_id` with proof ([`Lifecycle::destroy_key`]): a barrier, every member's
    /// [`EnvelopeNode::retention`] report, [`LayerState::check_destroy`], then the destroy
    /// entry.
    ///
    /// # Errors
    /// [`ClusterError::Admin`], with [`LifecycleError::DestroyRefused`] naming the replica
    /// (nothing proposed).
    pub fn destroy_key(&mut self, key_id: KeyId) -> Result<Destroyed, ClusterError> {
        self.run_admin(|l| Box::pin(async move { l.destroy_key(key_id).await }))
    }

    /// What node `id` still stores that may hold entries sealed under a key
    /// ([`EnvelopeNode::retention`]).
    ///
    /// # Errors
    /// [`ClusterError::NoSuchNode`]; the node's error.
    pub fn retention(&self, id: u64) -> Result<Retention<u64>, ClusterError> {
        Ok(self.node(id)?.retention()?)
    }

    /// Makes node `id` take a snapshot at its applied index and compact its log up to it
    /// ([`EnvelopeNode::compact`]); returns the snapshot's index.
    ///
    /// # Errors
    /// [`ClusterError::NoSuchNode`]; the node's error.
    pub fn compact(&mut self, id: u64) -> Result<u64, ClusterError> {
        self.settle();
        Ok(self.node_mut(id)?.compact()?)
    }

    /// Adds a node with an empty log and state machine `sm`, keys and cutover through the log
    /// (`state`, `provider`), as a learner, through a conf change on the leader; returns its id
    /// (one above the highest) once the leader applied the conf change. It catches up by itself:
    /// by snapshot when the leader compacted its log (the new member must prefetch the
    /// snapshot's keys with its own KEK, or halts at the snapshot's index).
    ///
    /// It starts with the configuration every node started with, so it learns the current one
    /// from the log or from a snapshot. If the leader's log is compacted, the leader takes a new
    /// snapshot once the conf change is applied (raft-rs restores only a snapshot whose
    /// configuration includes the receiver), while the new node is still cut off.
    ///
    /// # Errors
    /// [`ClusterError`] when the node cannot start or the conf change is not applied in time.
    pub fn add_member(
        &mut self,
        state: Arc<LayerState>,
        provider: Arc<dyn KeyProvider>,
        sm: SM,
    ) -> Result<u64, ClusterError> {
        self.admin(|c| c.add_member_inner(state, provider, sm))
    }

    fn add_member_inner(
        &mut self,
        state: Arc<LayerState>,
        provider: Arc<dyn KeyProvider>,
        sm: SM,
    ) -> Result<u64, ClusterError> {
        let id = self.slots.keys().next_back().map_or(1, |k| k + 1);
        let storage = MemStore::new_with_conf_state((self.initial_voters.clone(), vec![]));
        let node = self.start_node(id, storage.clone(), sm, Setup::Lifecycle(state.clone(), provider))?;
        let admin = self.admin_channel(&node);
        self.slots.insert(id, Slot { storage, node: Some(node), state: Some(state), admin });
        self.isolated.push(id);
        let result = self.add_learner(id);
        self.isolated.retain(|i| *i != id);
        result?;
        self.settle();
        tracing::info!(node = id, "new member added as a learner");
        Ok(id)
    }

    fn add_learner(&mut self, id: u64) -> Result<(), ClusterError> {
        let leader = self.admin_leader()?;
        let mut change = ConfChange::default();
        change.set_change_type(ConfChangeType::AddLearnerNode);
        change.node_id = id;
        self.node_mut(leader)?.propose_conf_change(Vec::new(), change)?;
        let added = self.wait_until(|c| {
            c.node(leader)
                .is_ok_and(|n| n.raw_node().raft.prs().conf().to_conf_state().learners.contains(&id))
        });
        if !added {
            return Err(ClusterError::Timeout("the leader to apply the conf change"));
        }
        let compacted =
            self.node(leader)?.store().first_index().map_err(|e| ClusterError::Storage(e.to_string()))? > 1;
        if compacted {
            self.compact(leader)?;
        }
        Ok(())
    }

    /// The layer state's status on the leader (keys, cutover, active key).
    ///
    /// # Errors
    /// [`ClusterError::NoLeader`], [`ClusterError::NoLayerState`].
    pub fn encryption_status(&mut self) -> Result<EncryptionStatus, ClusterError> {
        let leader = self.wait_leader()?;
        self.encryption_status_of(leader)
    }

    /// The layer state's status on node `id`.
    ///
    /// # Errors
    /// [`ClusterError::NoSuchNode`], [`ClusterError::NoLayerState`].
    pub fn encryption_status_of(&self, id: u64) -> Result<EncryptionStatus, ClusterError> {
        self.node(id)?.encryption_status().ok_or(ClusterError::NoLayerState(id))
    }

    /// Restarts node `id` with `layer`: drops its `RawNode`, rebuilds it on the same storage and
    /// state machine (`Config.applied` = its last good index), and lets it catch up (or halt).
    ///
    /// # Errors
    /// [`ClusterError`] when the node cannot be rebuilt.
    pub fn restart(&mut self, id: u64, layer: Arc<EnvelopeLayer>) -> Result<(), ClusterError> {
        let slot = self.slots.get_mut(&id).ok_or(ClusterError::NoSuchNode(id))?;
        let old = slot.node.take().ok_or(ClusterError::NoSuchNode(id))?;
        let (storage, sm) = old.into_parts();
        slot.state = None;
        let node = self.start_node(id, storage, sm, Setup::Layer(layer))?;
        self.finish_restart(id, node)
    }

    /// Restarts node `id` of a [`with_layer_states`](Self::with_layer_states) cluster with the
    /// same layer state (persisted with its state machine) and `provider`, for example one that
    /// now holds the KEK it lacked: the node resumes from its last good index.
    ///
    /// # Errors
    /// [`ClusterError`] when the node cannot be rebuilt or has no layer state.
    pub fn restart_with_provider(
        &mut self,
        id: u64,
        provider: Arc<dyn KeyProvider>,
    ) -> Result<(), ClusterError> {
        let slot = self.slots.get_mut(&id).ok_or(ClusterError::NoSuchNode(id))?;
        let state = slot.state.clone().ok_or(ClusterError::NoLayerState(id))?;
        let old = slot.node.take().ok_or(ClusterError::NoSuchNode(id))?;
        let (storage, sm) = old.into_parts();
        let node = self.start_node(id, storage, sm, Setup::Lifecycle(state, provider))?;
        self.finish_restart(id, node)
    }

    fn finish_restart(&mut self, id: u64, node: EnvelopeNode<MemStore, SM>) -> Result<(), ClusterError> {
        let admin = self.admin_channel(&node);
        if let Some(slot) = self.slots.get_mut(&id) {
            slot.node = Some(node);
            slot.admin = admin;
        }
        self.settle();
        // Catch up: a heartbeat tells the leader where this node is.
        let target = self.leader().and_then(|l| self.node(l).ok().map(|n| n.commit_index()));
        self.wait_until(|c| {
            !c.running(id) || target.map_or(true, |t| c.applied(id).map(|a| a >= t).unwrap_or(false))
        });
        Ok(())
    }

    /// Makes `to` the leader (leadership transfer, then an election on `to` if the transfer did
    /// not happen) and waits until every running node applied the new term's entry.
    ///
    /// # Errors
    /// [`ClusterError`] when `to` does not become leader.
    pub fn transfer_leader(&mut self, to: u64) -> Result<(), ClusterError> {
        if !self.running(to) {
            return Err(ClusterError::NoSuchNode(to));
        }
        if let Some(leader) = self.leader() {
            if leader == to {
                return Ok(());
            }
            self.node_mut(leader)?.transfer_leader(to)?;
            self.settle();
        }
        if !self.wait_until(|c| c.leader() == Some(to)) {
            self.node_mut(to)?.campaign()?;
            if !self.wait_until(|c| c.leader() == Some(to)) {
                return Err(ClusterError::NoLeader);
            }
        }
        self.wait_converged(to)
    }

    /// Makes the next running node after the leader (in id order) the leader; returns it.
    ///
    /// # Errors
    /// [`ClusterError`] when no other node can lead.
    pub fn change_leader(&mut self) -> Result<u64, ClusterError> {
        let leader = self.wait_leader()?;
        let voters = self.node(leader)?.raw_node().raft.prs().conf().to_conf_state().voters;
        let ids: Vec<u64> = self.ids().into_iter().filter(|id| voters.contains(id)).collect();
        let pos = ids.iter().position(|i| *i == leader).unwrap_or(0);
        let next = (1..ids.len())
            .map(|k| ids[(pos + k) % ids.len()])
            .find(|id| self.running(*id))
            .ok_or(ClusterError::NoLeader)?;
        self.transfer_leader(next)?;
        Ok(next)
    }

    /// The entry node `id` stores at `index`, if any.
    ///
    /// # Errors
    /// [`ClusterError::NoSuchNode`].
    pub fn read_entry(&self, id: u64, index: u64) -> Result<Option<Entry>, ClusterError> {
        let storage = &self.slots.get(&id).ok_or(ClusterError::NoSuchNode(id))?.storage;
        if index == 0 || index > storage.last_index().unwrap_or(0) {
            return Ok(None);
        }
        Ok(storage
            .entries(index, index + 1, None, GetEntriesContext::empty(false))
            .ok()
            .and_then(|mut v| v.pop()))
    }

    /// The highest index node `id` stores.
    ///
    /// # Errors
    /// [`ClusterError::NoSuchNode`].
    pub fn stored_last_index(&self, id: u64) -> Result<u64, ClusterError> {
        let storage = &self.slots.get(&id).ok_or(ClusterError::NoSuchNode(id))?.storage;
        storage.last_index().map_err(|e| ClusterError::Storage(e.to_string()))
    }

    /// Overwrites `data` and `context` of the entry node `id` stores at `index` (index, term and
    /// type kept), as an attacker with access to its disk would. Restart the node afterwards.
    ///
    /// # Errors
    /// [`ClusterError`] when there is no such entry.
    pub fn write_entry(
        &mut self,
        id: u64,
        index: u64,
        data: Vec<u8>,
        context: Vec<u8>,
    ) -> Result<(), ClusterError> {
        let storage = self.slots.get(&id).ok_or(ClusterError::NoSuchNode(id))?.storage.clone();
        let last = storage.last_index().map_err(|e| ClusterError::Storage(e.to_string()))?;
        if index == 0 || index > last {
            return Err(ClusterError::Storage(format!("node {id} stores no entry {index}")));
        }
        let mut entries = storage
            .entries(index, last + 1, None, GetEntriesContext::empty(false))
            .map_err(|e| ClusterError::Storage(e.to_string()))?;
        if let Some(first) = entries.first_mut() {
            first.data = data.into();
            first.context = context.into();
        }
        let result = storage.mem_storage().wl().append(&entries);
        result.map_err(|e| ClusterError::Storage(e.to_string()))
    }

    /// Appends an entry through the leader's raft-rs node without its layer (a faulty or outdated
    /// proposer) and returns its index once committed on the leader (applied or not).
    ///
    /// # Errors
    /// [`ClusterError`] when there is no leader or it does not commit.
    pub fn append_unchecked(&mut self, context: Vec<u8>, data: Vec<u8>) -> Result<u64, ClusterError> {
        let leader = self.wait_leader()?;
        let node = self.node_mut(leader)?;
        node.raw_node_mut().propose(context, data).map_err(raft_error)?;
        let index = node.last_index();
        let ok = self.wait_until(|c| c.node(leader).map(|n| n.commit_index() >= index).unwrap_or(false));
        if ok {
            Ok(index)
        } else {
            Err(ClusterError::Timeout("unchecked append to commit"))
        }
    }

    /// Holds back (`true`) or lets through (`false`) forwarded proposals (`MsgPropose`) in the
    /// network: held messages are delivered by [`release_held`](Self::release_held).
    pub fn hold_forwarded_proposals(&mut self, hold: bool) {
        self.hold_proposals = hold;
    }

    /// Cuts node `id` off the network: every message to or from it is lost until
    /// [`heal`](Self::heal).
    pub fn isolate(&mut self, id: u64) {
        self.isolated.push(id);
    }

    /// Holds (`true`) or releases (`false`) node `id`'s view of the commit index: while held,
    /// messages to it carry at most the commit index it has now, so it stores new entries
    /// without applying them (a window to tamper with a stored, not yet applied entry).
    ///
    /// # Errors
    /// [`ClusterError::NoSuchNode`].
    pub fn hold_commit(&mut self, id: u64, hold: bool) -> Result<(), ClusterError> {
        let commit = self.node(id)?.commit_index();
        if hold {
            self.commit_caps.insert(id, commit);
        } else {
            self.commit_caps.remove(&id);
            self.settle();
        }
        Ok(())
    }

    /// Reconnects every isolated node.
    pub fn heal(&mut self) {
        self.isolated.clear();
        self.settle();
    }

    /// Delivers every held message and settles.
    pub fn release_held(&mut self) {
        let held = std::mem::take(&mut self.held);
        for m in held {
            self.deliver(m);
        }
        self.settle();
    }
}

impl<SM: StateMachine> fmt::Debug for Cluster<SM> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Cluster")
            .field("nodes", &self.slots.keys().collect::<Vec<_>>())
            .field("leader", &self.leader())
            .field("queued", &self.queue.len())
            .field("held", &self.held.len())
            .finish_non_exhaustive()
    }
}
