//! A real multi-node openraft cluster in one process, with the envelope layer on every node and
//! fault hooks (tamper, restart, leader change).

use std::collections::BTreeMap;
use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use openraft::raft::ClientWriteResponse;
use openraft::{BasicNode, Config, EntryPayload, Raft, ServerState, SnapshotPolicy};
use raft_envelope_core::{
    lifecycle::LayerSnapshot,
    provider::{KekId, KeyProvider},
    Algorithm, Cutover, EntryKind, EnvelopeLayer, FatalApplyError, KeyId, LayerState, PayloadWrapper,
};

use super::log_store::MemLogStore;
use super::network::Router;
use super::state_machine::{Application, MemStateMachine, TestConfig};
use crate::codec::{BytesCodec, CodecError, PayloadCodec};
use crate::config::Sealed;
use crate::log_store::PrefetchingLogStore;
use crate::payload::EnvelopePayload;
use crate::plane::{forward_to_leader, AdminError, PlaneError};
use crate::raft::{EnvelopeRaft, WriteError};
use crate::state_machine::{
    layer_from_state, EnvelopeStateMachine, HaltRecord, DEFAULT_PROVIDER_WARN_INTERVAL,
};
use crate::switch_on::{switch_on, SwitchOnError, SwitchOnNode};
use raft_envelope_core::apply::ApplyContext;
use raft_envelope_core::lifecycle::{CheckpointPolicy, Destroyed, Enabled, LifecycleError, Retired};

/// The engine's type config in the test cluster.
pub type SealedTestConfig = Sealed<TestConfig>;

/// A test-cluster operation failed. Never carries payload or key bytes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ClusterError(pub String);

impl ClusterError {
    fn new(message: impl fmt::Display) -> Self {
        Self(message.to_string())
    }
}

/// One node of a [`TestCluster`]: its engine (while running), layer, retained log and
/// application state machine.
pub struct TestNode<A> {
    /// Node id (1-based).
    pub id: u64,
    /// The proposer; `None` while the node is down (its last start failed).
    pub raft: Option<EnvelopeRaft<TestConfig>>,
    /// The layer installed by the last (re)start.
    pub layer: Arc<EnvelopeLayer>,
    /// The node's log, kept across restarts.
    pub log: MemLogStore<SealedTestConfig>,
    /// The application's state machine, kept across restarts.
    pub sm: MemStateMachine<A>,
    /// Where the current incarnation records its halt.
    pub halt: HaltRecord,
    /// Why the last (re)start failed, if it did.
    pub start_error: Option<String>,
    /// The node's layer state when its keys and cutover change through the log (kept across
    /// restarts, like the state machine).
    pub layer_state: Option<Arc<LayerState>>,
    /// The key provider the current incarnation unwraps installed keys with.
    pub provider: Option<Arc<dyn KeyProvider>>,
    /// Every apply context the node's codec was handed with a payload, in apply order (kept
    /// across restarts, like the state machine).
    pub contexts: ContextLog,
}

/// The apply contexts one node's codec was handed ([`PayloadCodec::decode_in`]): what an
/// application learns about each payload (index, kind, authenticated proposal id).
#[derive(Clone, Debug, Default)]
pub struct ContextLog(Arc<Mutex<Vec<ApplyContext>>>);

impl ContextLog {
    /// Every context recorded so far, in order.
    pub fn all(&self) -> Vec<ApplyContext> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }
}

/// [`BytesCodec`] on a node's apply path, recording each apply context in the node's
/// [`ContextLog`].
struct ContextTap(ContextLog);

impl PayloadCodec<Vec<u8>> for ContextTap {
    fn encode(&self, request: &Vec<u8>) -> Result<Vec<u8>, CodecError> {
        BytesCodec.encode(request)
    }

    fn decode(&self, bytes: &[u8]) -> Result<Vec<u8>, CodecError> {
        BytesCodec.decode(bytes)
    }

    fn decode_in(&self, context: &ApplyContext, bytes: Vec<u8>) -> Result<Vec<u8>, CodecError> {
        self.0 .0.lock().unwrap_or_else(PoisonError::into_inner).push(*context);
        BytesCodec.decode_owned(bytes)
    }
}

impl<A> Clone for TestNode<A> {
    fn clone(&self) -> Self {
        Self {
            id: self.id,
            raft: self.raft.clone(),
            layer: self.layer.clone(),
            log: self.log.clone(),
            sm: self.sm.clone(),
            halt: self.halt.clone(),
            start_error: self.start_error.clone(),
            layer_state: self.layer_state.clone(),
            provider: self.provider.clone(),
            contexts: self.contexts.clone(),
        }
    }
}

impl<A> fmt::Debug for TestNode<A> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TestNode")
            .field("id", &self.id)
            .field("running", &self.raft.is_some())
            .field("applied", &self.sm.last_applied())
            .field("halt", &self.halt)
            .finish()
    }
}

impl<A> TestNode<A> {
    /// True when this node stopped on an entry it must not apply (or could not start).
    pub fn is_halted(&self) -> bool {
        self.halt.get().is_some() || self.start_error.is_some()
    }

    /// The running engine, if the node is up.
    pub fn running_raft(&self) -> Option<&Raft<SealedTestConfig>> {
        self.raft.as_ref().map(|r| r.raft())
    }
}

/// One stored entry, as the demo's table shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct StoredEntryView {
    /// Log index.
    pub index: u64,
    /// Term of the leader that created it.
    pub term: u64,
    /// `Blank`/`Membership` (control), barrier (control), cleartext or envelope.
    pub kind: EntryKind,
    /// A short label: `blank`, `membership`, `barrier`, `layer-control`, `cleartext`, `envelope`.
    pub label: &'static str,
    /// The key id in the envelope header, for envelopes.
    pub key_id: Option<KeyId>,
    /// The stored payload bytes (empty for control entries).
    pub bytes: Vec<u8>,
}

/// Shows lengths only.
impl fmt::Debug for StoredEntryView {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "StoredEntryView({} {} {} bytes)", self.index, self.label, self.bytes.len())
    }
}

/// The engine configuration of the test cluster: short timers, snapshots only on request.
pub fn test_config() -> Result<Arc<Config>, ClusterError> {
    let config = Config {
        cluster_name: "raft-envelope-test".to_string(),
        heartbeat_interval: 50,
        election_timeout_min: 150,
        election_timeout_max: 300,
        // Snapshots only when a test asks ([`TestCluster::compact`]), which then purges the whole
        // log up to the snapshot.
        snapshot_policy: SnapshotPolicy::Never,
        max_in_snapshot_log_to_keep: 0,
        ..Default::default()
    };
    config.validate().map(Arc::new).map_err(ClusterError::new)
}

/// The outcome of one submission of a write ([`TestCluster::write_twice`]).
pub type WriteOutcome = Result<ClientWriteResponse<TestConfig>, WriteError<u64, BasicNode>>;

/// A cluster of `n` openraft nodes in this process, each with its envelope layer, an in-memory
/// [`MemLogStore`] and a [`MemStateMachine`] running application `A`, connected by a [`Router`].
/// Requests and responses are bytes ([`BytesCodec`]), so the stored log holds payload bytes
/// verbatim when they are not sealed.
///
/// Async: call it from a multi-thread tokio runtime.
pub struct TestCluster<A> {
    router: Router<SealedTestConfig>,
    config: Arc<Config>,
    codec: Arc<dyn PayloadCodec<Vec<u8>>>,
    nodes: Arc<Mutex<BTreeMap<u64, TestNode<A>>>>,
    refuse_cleartext: AtomicBool,
    /// How often a node's apply path warns while it waits for its key provider, in ms.
    provider_warn_ms: std::sync::atomic::AtomicU64,
    /// The integrity checkpoint policy of nodes with a layer state, now and after restarts.
    checkpoints: Mutex<CheckpointPolicy>,
}

impl<A> fmt::Debug for TestCluster<A> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let nodes = self.nodes.lock().unwrap_or_else(PoisonError::into_inner);
        f.debug_struct("TestCluster").field("nodes", &*nodes).finish()
    }
}

impl<A: Application> TestCluster<A> {
    fn lock(&self) -> MutexGuard<'_, BTreeMap<u64, TestNode<A>>> {
        self.nodes.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Starts one node per `(layer, application)` pair (ids 1, 2, ...), initializes them as one
    /// cluster, waits for a leader and for every node to apply the start-up entries.
    ///
    /// # Errors
    /// A [`ClusterError`] when a node does not start or the cluster does not form in time.
    pub async fn start(nodes: Vec<(Arc<EnvelopeLayer>, A)>) -> Result<Self, ClusterError> {
        let nodes = nodes.into_iter().map(|(layer, app)| (NodeLayer::Fixed(layer), app)).collect();
        Self::start_nodes(nodes).await
    }

    /// Starts one node per `(layer state, key provider, application)` triple (ids 1, 2, ...):
    /// every node's keys and cutover change through layer control entries (the admin API:
    /// [`enable_encryption`](Self::enable_encryption), [`rotate_key`](Self::rotate_key), ...),
    /// starting inert. A node without a provider can apply only install entries whose key it
    /// created itself.
    ///
    /// # Errors
    /// A [`ClusterError`] when a node does not start or the cluster does not form in time.
    pub async fn start_with_layer_states(nodes: Vec<ManagedNode<A>>) -> Result<Self, ClusterError> {
        let nodes = nodes
            .into_iter()
            .map(|(state, provider, app)| (NodeLayer::State(state, provider), app))
            .collect();
        Self::start_nodes(nodes).await
    }

    async fn start_nodes(nodes: Vec<(NodeLayer, A)>) -> Result<Self, ClusterError> {
        let cluster = Self {
            router: Router::default(),
            config: test_config()?,
            codec: Arc::new(BytesCodec),
            nodes: Arc::new(Mutex::new(BTreeMap::new())),
            refuse_cleartext: AtomicBool::new(true),
            provider_warn_ms: std::sync::atomic::AtomicU64::new(
                DEFAULT_PROVIDER_WARN_INTERVAL.as_millis() as u64
            ),
            checkpoints: Mutex::new(CheckpointPolicy::DEFAULT),
        };
        for (i, (node_layer, app)) in nodes.into_iter().enumerate() {
            let id = i as u64 + 1;
            let (layer, layer_state, provider) = match &node_layer {
                NodeLayer::Fixed(layer) => (layer.clone(), None, None),
                NodeLayer::State(state, provider) => {
                    (layer_from_state(state), Some(state.clone()), provider.clone())
                }
            };
            let node = TestNode {
                id,
                raft: None,
                layer: layer.clone(),
                log: MemLogStore::new(),
                sm: MemStateMachine::new(app),
                halt: HaltRecord::default(),
                start_error: None,
                layer_state,
                provider,
                contexts: ContextLog::default(),
            };
            cluster.lock().insert(id, node);
            cluster.boot(id, node_layer).await?;
        }
        let ids = cluster.ids();
        let first = cluster.raft_of(ids[0])?;
        let members: BTreeMap<u64, BasicNode> = ids.iter().map(|id| (*id, BasicNode::default())).collect();
        first.raft().initialize(members).await.map_err(ClusterError::new)?;
        let leader = cluster.wait_leader(Duration::from_secs(5)).await?;
        let last = cluster.last_index_of(leader)?;
        for id in ids {
            cluster.wait_applied(id, last, Duration::from_secs(5)).await?;
        }
        Ok(cluster)
    }

    /// (Re)starts node `id` from its retained log and state machine with `layer` (or a layer
    /// built from its layer state).
    async fn boot(&self, id: u64, node_layer: NodeLayer) -> Result<(), ClusterError> {
        let (log, sm, contexts) = {
            let nodes = self.lock();
            let node = nodes.get(&id).ok_or_else(|| ClusterError::new(format!("no node {id}")))?;
            (node.log.clone(), node.sm.clone(), node.contexts.clone())
        };
        let apply_codec: Arc<dyn PayloadCodec<Vec<u8>>> = Arc::new(ContextTap(contexts));
        let (layer, esm, state) = match &node_layer {
            NodeLayer::Fixed(layer) => {
                (layer.clone(), EnvelopeStateMachine::with_codec(sm, layer.clone(), apply_codec), None)
            }
            NodeLayer::State(state, provider) => {
                let layer = layer_from_state(state);
                let mut esm =
                    EnvelopeStateMachine::with_layer_state(sm, layer.clone(), state.clone(), apply_codec);
                if let Some(provider) = provider {
                    esm = esm.with_key_provider(provider.clone(), self.provider_warn_every());
                }
                (layer, esm, Some(state.clone()))
            }
        };
        let halt = esm.halt_record();
        let (config, network) = (self.config.clone(), self.router.network_for(id));
        let started = match &node_layer {
            // Keys of install entries are unwrapped when the entries are appended.
            NodeLayer::State(state, Some(provider)) => {
                let log = PrefetchingLogStore::new(log, state.clone(), provider.clone());
                Raft::new(id, config, network, log, esm).await
            }
            _ => Raft::new(id, config, network, log, esm).await,
        };
        let mut nodes = self.lock();
        let node = nodes.get_mut(&id).ok_or_else(|| ClusterError::new(format!("no node {id}")))?;
        node.layer = layer.clone();
        node.halt = halt;
        if let NodeLayer::State(_, provider) = &node_layer {
            node.provider = provider.clone();
        }
        match started {
            Ok(raft) => {
                self.router.register(id, raft.clone());
                let raft = match state {
                    None => EnvelopeRaft::with_codec(raft, layer, self.codec.clone()),
                    Some(state) => {
                        let raft = EnvelopeRaft::with_layer_state(raft, layer, state, self.codec.clone());
                        raft.set_checkpoints(self.checkpoint_policy());
                        raft
                    }
                };
                raft.set_refuse_cleartext_above_cutover(self.refuse_cleartext.load(Ordering::SeqCst));
                node.raft = Some(raft);
                node.start_error = None;
            }
            Err(fatal) => {
                node.raft = None;
                node.start_error = Some(fatal.to_string());
            }
        }
        Ok(())
    }

    /// How often nodes (re)started from now on warn while their apply path waits for a slow key
    /// provider ([`EnvelopeStateMachine::with_key_provider`]); default
    /// [`DEFAULT_PROVIDER_WARN_INTERVAL`].
    pub fn set_provider_warn_interval(&self, every: Duration) {
        self.provider_warn_ms.store(every.as_millis() as u64, Ordering::SeqCst);
    }

    fn provider_warn_every(&self) -> Duration {
        Duration::from_millis(self.provider_warn_ms.load(Ordering::SeqCst))
    }

    /// Sets [`EnvelopeRaft::set_refuse_cleartext_above_cutover`] on every node, now and after
    /// restarts (default: refuse).
    pub fn set_refuse_cleartext_above_cutover(&self, refuse: bool) {
        self.refuse_cleartext.store(refuse, Ordering::SeqCst);
        for (_, raft) in self.running() {
            raft.set_refuse_cleartext_above_cutover(refuse);
        }
    }

    /// The node ids, ascending.
    pub fn ids(&self) -> Vec<u64> {
        self.lock().keys().copied().collect()
    }

    /// A snapshot of node `id`'s handles.
    ///
    /// # Errors
    /// No such node.
    pub fn node(&self, id: u64) -> Result<TestNode<A>, ClusterError> {
        self.lock().get(&id).cloned().ok_or_else(|| ClusterError::new(format!("no node {id}")))
    }

    fn raft_of(&self, id: u64) -> Result<EnvelopeRaft<TestConfig>, ClusterError> {
        self.node(id)?.raft.ok_or_else(|| ClusterError::new(format!("node {id} is down")))
    }

    /// The proposer of every running node.
    pub fn running(&self) -> Vec<(u64, EnvelopeRaft<TestConfig>)> {
        self.lock().values().filter_map(|n| n.raft.clone().map(|r| (n.id, r))).collect()
    }

    /// The node that is leader now (a running, not halted node in state Leader), if any.
    pub fn leader(&self) -> Option<u64> {
        let nodes = self.lock();
        nodes.values().find_map(|n| {
            let raft = n.raft.as_ref()?;
            let m = raft.raft().metrics().borrow().clone();
            (m.running_state.is_ok() && m.state == ServerState::Leader && !n.is_halted()).then_some(n.id)
        })
    }

    /// Waits until a leader is known.
    ///
    /// # Errors
    /// None within `timeout`.
    pub async fn wait_leader(&self, timeout: Duration) -> Result<u64, ClusterError> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(id) = self.leader() {
                return Ok(id);
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(ClusterError::new(format!("no leader within {timeout:?}")));
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    fn last_index_of(&self, id: u64) -> Result<u64, ClusterError> {
        let raft = self.raft_of(id)?;
        let last = raft.raft().metrics().borrow().last_log_index;
        Ok(last.unwrap_or(0))
    }

    /// The leader's last log index.
    ///
    /// # Errors
    /// No leader.
    pub fn last_index(&self) -> Result<u64, ClusterError> {
        let leader = self.leader().ok_or_else(|| ClusterError::new("no leader"))?;
        self.last_index_of(leader)
    }

    /// Proposes `payload` through the leader's layer (following `ForwardToLeader` and waiting
    /// out elections for up to 5 s) and returns the application's response.
    ///
    /// # Errors
    /// The last [`WriteError`] (a seal refusal is returned at once), or no leader.
    pub async fn write(&self, payload: Vec<u8>) -> Result<ClientWriteResponse<TestConfig>, WriteFailure> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        loop {
            let leader = match self.leader() {
                Some(id) => self.raft_of(id).ok(),
                None => None,
            };
            if let Some(raft) = leader {
                match raft.client_write(payload.clone()).await {
                    Ok(r) => return Ok(r),
                    // A rotation applied between sealing and submitting (seal again), a new
                    // leader still applying its first entry, or a control entry not applied yet.
                    Err(
                        WriteError::KeyRotated { .. }
                        | WriteError::LeaderCatchingUp
                        | WriteError::ControlPending,
                    ) if tokio::time::Instant::now() < deadline => {
                        tokio::time::sleep(Duration::from_millis(1)).await;
                        continue;
                    }
                    Err(e) if e.is_seal_refusal() => return Err(WriteFailure::Write(e)),
                    Err(e) if e.forward_to_leader().is_none() || tokio::time::Instant::now() >= deadline => {
                        return Err(WriteFailure::Write(e))
                    }
                    Err(_) => {}
                }
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(WriteFailure::NoLeader);
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// The index of the last entry node `id`'s application state machine applied (control
    /// entries included): the truth about how far the replica got.
    ///
    /// # Errors
    /// No such node.
    pub fn applied_index(&self, id: u64) -> Result<u64, ClusterError> {
        Ok(self.node(id)?.sm.last_applied().unwrap_or(0))
    }

    /// Waits until node `id` has applied `index`.
    ///
    /// # Errors
    /// Timeout, or the node halted first (the error names its halt).
    pub async fn wait_applied(&self, id: u64, index: u64, timeout: Duration) -> Result<(), ClusterError> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let node = self.node(id)?;
            let applied = node.sm.last_applied().unwrap_or(0);
            if applied >= index {
                return Ok(());
            }
            if let Some(halt) = node.halt.get() {
                return Err(ClusterError::new(format!("node {id} halted before applying {index}: {halt}")));
            }
            if let Some(e) = node.start_error {
                return Err(ClusterError::new(format!("node {id} is down: {e}")));
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(ClusterError::new(format!(
                    "node {id} did not apply index {index} within {timeout:?} (applied {applied})"
                )));
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// The error node `id` halted with, if it halted.
    ///
    /// # Errors
    /// No such node.
    pub fn halted(&self, id: u64) -> Result<Option<FatalApplyError>, ClusterError> {
        Ok(self.node(id)?.halt.get())
    }

    /// Waits until node `id` halts, and returns its error.
    ///
    /// # Errors
    /// It did not halt within `timeout`.
    pub async fn wait_halted(&self, id: u64, timeout: Duration) -> Result<FatalApplyError, ClusterError> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(halt) = self.halted(id)? {
                return Ok(halt);
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(ClusterError::new(format!("node {id} did not halt within {timeout:?}")));
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Restarts node `id` with `layer`, keeping its log and state machine. A halted node's
    /// restart replays from its applied index + 1 inside `Raft::new`: when the cause is not
    /// repaired the start fails ([`TestNode::start_error`], [`TestNode::halt`]).
    ///
    /// # Errors
    /// No such node.
    pub async fn restart(&self, id: u64, layer: Arc<EnvelopeLayer>) -> Result<(), ClusterError> {
        self.stop(id).await?;
        self.boot(id, NodeLayer::Fixed(layer)).await
    }

    /// Restarts node `id`, keeping its log and state machine, with a new layer state `state` (for
    /// example restored from bytes persisted with the state machine,
    /// `LayerState::restore_persisted`) and `provider`: what a process restart with the state
    /// machine on disk looks like.
    ///
    /// # Errors
    /// No such node.
    pub async fn restart_with_layer_state(
        &self,
        id: u64,
        state: Arc<LayerState>,
        provider: Option<Arc<dyn KeyProvider>>,
    ) -> Result<(), ClusterError> {
        self.stop(id).await?;
        {
            let mut nodes = self.lock();
            let node = nodes.get_mut(&id).ok_or_else(|| ClusterError::new(format!("no node {id}")))?;
            node.layer_state = Some(state.clone());
        }
        self.boot(id, NodeLayer::State(state, provider)).await
    }

    /// Restarts node `id`, started with [`start_with_layer_states`](Self::start_with_layer_states),
    /// keeping its log, state machine and layer state, with `provider` as its key provider.
    ///
    /// # Errors
    /// No such node, or it has no layer state.
    pub async fn restart_with_provider(
        &self,
        id: u64,
        provider: Option<Arc<dyn KeyProvider>>,
    ) -> Result<(), ClusterError> {
        let state = self
            .node(id)?
            .layer_state
            .ok_or_else(|| ClusterError::new(format!("node {id} has no layer state")))?;
        self.stop(id).await?;
        {
            // openraft cannot restart a node whose log was purged past its state machine: that is
            // what a snapshot install that halted leaves (openraft purges the log for the
            // snapshot even though the state machine refused it). Such a replica holds nothing
            // the snapshot does not: the operator wipes its log and state and it rejoins,
            // receiving the snapshot again.
            let mut nodes = self.lock();
            let node = nodes.get_mut(&id).ok_or_else(|| ClusterError::new(format!("no node {id}")))?;
            if node.log.purged() > node.sm.last_applied() {
                tracing::info!(
                    id,
                    "log purged past the state machine by a refused snapshot: wiped to rejoin"
                );
                node.log = MemLogStore::new();
                node.sm.forget_applied();
            }
        }
        self.boot(id, NodeLayer::State(state, provider)).await
    }

    async fn stop(&self, id: u64) -> Result<(), ClusterError> {
        let old = self.node(id)?.raft;
        self.router.remove(&id);
        if let Some(raft) = old {
            let _ = raft.raft().shutdown().await;
        }
        Ok(())
    }

    /// The layer state of node `id` in snapshot form (keys, states, counts, cutover), when it
    /// has one.
    ///
    /// # Errors
    /// No such node.
    pub fn layer_snapshot(&self, id: u64) -> Result<Option<LayerSnapshot>, ClusterError> {
        Ok(self.node(id)?.layer_state.map(|s| s.snapshot()))
    }

    /// Runs `command` on the leader until it no longer answers "not the leader" or "leadership
    /// not confirmed" (5 s).
    async fn on_leader<T, F, Fut>(&self, command: F) -> Result<T, AdminError<u64, BasicNode>>
    where
        F: Fn(EnvelopeRaft<TestConfig>) -> Fut,
        Fut: std::future::Future<Output = Result<T, AdminError<u64, BasicNode>>>,
    {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        loop {
            let leader = self.leader().and_then(|id| self.raft_of(id).ok());
            if let Some(raft) = leader {
                match command(raft).await {
                    // Not (or no longer) the leader, or leadership not confirmed by a quorum
                    // during an election: run it again on whoever leads next.
                    Err(e)
                        if (forward_to_leader(&e).is_some()
                            || matches!(e, LifecycleError::Engine(PlaneError::NotLeader(_))))
                            && tokio::time::Instant::now() < deadline => {}
                    other => return other,
                }
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(LifecycleError::Engine(PlaneError::NoLeader));
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// [`EnvelopeRaft::enable_encryption`] on the leader, draining every running node that has
    /// not halted (a halted node's engine has stopped and can append nothing).
    ///
    /// # Errors
    /// [`AdminError`].
    pub async fn enable_encryption(
        &self,
        provider: &dyn KeyProvider,
        kek_id: &KekId,
        algorithm: Algorithm,
    ) -> Result<Enabled, AdminError<u64, BasicNode>> {
        self.on_leader(|raft| async move {
            let proposers: Vec<EnvelopeRaft<TestConfig>> = self
                .running()
                .into_iter()
                .filter(|(id, _)| !self.node(*id).map(|n| n.is_halted()).unwrap_or(true))
                .map(|(_, r)| r)
                .collect();
            raft.enable_encryption(provider, kek_id, algorithm, &proposers).await
        })
        .await
    }

    /// [`EnvelopeRaft::rotate_key`] on the leader.
    ///
    /// # Errors
    /// [`AdminError`].
    pub async fn rotate_key(
        &self,
        provider: &dyn KeyProvider,
        kek_id: &KekId,
        algorithm: Algorithm,
    ) -> Result<KeyId, AdminError<u64, BasicNode>> {
        self.on_leader(|raft| async move { raft.rotate_key(provider, kek_id, algorithm).await }).await
    }

    /// [`EnvelopeRaft::start_sealing`] on the leader.
    ///
    /// # Errors
    /// [`AdminError`].
    pub async fn start_sealing(
        &self,
        provider: &dyn KeyProvider,
        kek_id: &KekId,
        algorithm: Algorithm,
    ) -> Result<KeyId, AdminError<u64, BasicNode>> {
        self.on_leader(|raft| async move { raft.start_sealing(provider, kek_id, algorithm).await }).await
    }

    /// [`EnvelopeRaft::retire_key`] on the leader.
    ///
    /// # Errors
    /// [`AdminError`].
    pub async fn retire_key(&self, key_id: KeyId) -> Result<Retired, AdminError<u64, BasicNode>> {
        self.on_leader(|raft| async move { raft.retire_key(key_id).await }).await
    }

    /// [`EnvelopeRaft::destroy_key`] on the leader, with the [`EnvelopeRaft::retention`]
    /// report of every running node (a node that is down sends none, and the destroy is refused
    /// while it is a member).
    ///
    /// # Errors
    /// [`AdminError`], [`LifecycleError::DestroyRefused`] naming the replica.
    pub async fn destroy_key(&self, key_id: KeyId) -> Result<Destroyed, AdminError<u64, BasicNode>> {
        self.on_leader(|raft| async move {
            let reports: Vec<_> = self.running().iter().map(|(_, r)| r.retention()).collect();
            raft.destroy_key(key_id, &reports).await
        })
        .await
    }

    /// Makes node `id` snapshot its state machine (with its layer state) at its applied index and
    /// purge its log up to the snapshot; returns the snapshot's index.
    ///
    /// # Errors
    /// The node is down, or the snapshot or purge did not finish within 10 s.
    pub async fn compact(&self, id: u64) -> Result<u64, ClusterError> {
        let raft = self.raft_of(id)?;
        let engine = raft.raft();
        let applied = engine.metrics().borrow().last_applied.map_or(0, |l| l.index);
        engine.trigger().snapshot().await.map_err(ClusterError::new)?;
        let timeout = Duration::from_secs(10);
        let snapshot = engine
            .wait(Some(timeout))
            .metrics(|m| m.snapshot.is_some_and(|s| s.index >= applied), "snapshot built")
            .await
            .map_err(ClusterError::new)?
            .snapshot
            .map_or(0, |s| s.index);
        engine.trigger().purge_log(snapshot).await.map_err(ClusterError::new)?;
        engine
            .wait(Some(timeout))
            .metrics(|m| m.purged.is_some_and(|p| p.index >= snapshot), "log purged")
            .await
            .map_err(ClusterError::new)?;
        Ok(snapshot)
    }

    /// Starts a new node (the next id) with an empty log and state machine, `state` and
    /// `provider`, and adds it to the cluster as a learner through the leader; returns its id
    /// once it is a member. It catches up by itself (by snapshot when the leader purged its log).
    ///
    /// # Errors
    /// The node does not start, or no leader adds it within 5 s.
    pub async fn add_member(
        &self,
        state: Arc<LayerState>,
        provider: Option<Arc<dyn KeyProvider>>,
        app: A,
    ) -> Result<u64, ClusterError> {
        let id = self.ids().last().copied().unwrap_or(0) + 1;
        let node = TestNode {
            id,
            raft: None,
            layer: layer_from_state(&state),
            log: MemLogStore::new(),
            sm: MemStateMachine::new(app),
            halt: HaltRecord::default(),
            start_error: None,
            layer_state: Some(state.clone()),
            provider: provider.clone(),
            contexts: ContextLog::default(),
        };
        self.lock().insert(id, node);
        self.boot(id, NodeLayer::State(state, provider)).await?;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        loop {
            let leader = self.leader().and_then(|l| self.raft_of(l).ok());
            if let Some(leader) = leader {
                match leader.raft().add_learner(id, BasicNode::default(), false).await {
                    Ok(_) => return Ok(id),
                    Err(e) if tokio::time::Instant::now() >= deadline => return Err(ClusterError::new(e)),
                    Err(_) => {}
                }
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(ClusterError::new("no leader to add the member"));
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Makes another running, non-halted node the leader: the current leader is cut off from the
    /// network until the chosen node wins an election, then reconnected. Returns the new leader
    /// once it has applied its first entry of the new term.
    ///
    /// # Errors
    /// No leader change within 5 s.
    pub async fn change_leader(&self) -> Result<u64, ClusterError> {
        let old = self.wait_leader(Duration::from_secs(5)).await?;
        let old_term = self.raft_of(old)?.raft().metrics().borrow().current_term;
        // The candidate with the longest log can win (the others would refuse it their vote).
        let mut candidates: Vec<(u64, EnvelopeRaft<TestConfig>)> = self
            .running()
            .into_iter()
            .filter(|(id, _)| *id != old && !self.node(*id).map(|n| n.is_halted()).unwrap_or(true))
            .collect();
        candidates.sort_by_key(|(_, r)| std::cmp::Reverse(r.raft().metrics().borrow().last_log_index));
        if candidates.is_empty() {
            return Err(ClusterError::new("no other node can lead"));
        }
        self.router.set_isolated(old, true);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        let mut attempt = 0usize;
        let result = 'elect: loop {
            let (_, raft) = &candidates[attempt % candidates.len()];
            attempt += 1;
            let _ = raft.raft().trigger().elect().await;
            // One election round: the candidate wins, or another node does on its own timer.
            let round_end = tokio::time::Instant::now() + Duration::from_millis(400);
            while tokio::time::Instant::now() < round_end {
                let new = self.running().into_iter().find_map(|(id, r)| {
                    let m = r.raft().metrics().borrow().clone();
                    (id != old && m.state == ServerState::Leader && m.current_term > old_term).then_some(id)
                });
                if let Some(id) = new {
                    break 'elect Ok(id);
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            if tokio::time::Instant::now() >= deadline {
                break Err(ClusterError::new("no new leader within 5 s"));
            }
        };
        self.router.set_isolated(old, false);
        let new = result?;
        let last = self.last_index_of(new)?;
        self.wait_applied(new, last, Duration::from_secs(5)).await?;
        // The old leader learns the new term from the next heartbeat.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while self.leader() != Some(new) && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Ok(new)
    }

    /// Cuts node `id` off the network, or reconnects it.
    pub fn set_isolated(&self, id: u64, isolated: bool) {
        self.router.set_isolated(id, isolated);
    }

    /// Sets when the leader proposes integrity checkpoints
    /// ([`EnvelopeRaft::set_checkpoints`]) on every node with a layer state, now and after
    /// restarts (default [`CheckpointPolicy::DEFAULT`]).
    pub fn set_checkpoints(&self, policy: CheckpointPolicy) {
        *self.checkpoints.lock().unwrap_or_else(PoisonError::into_inner) = policy;
        for (_, raft) in self.running() {
            raft.set_checkpoints(policy);
        }
    }

    fn checkpoint_policy(&self) -> CheckpointPolicy {
        *self.checkpoints.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// [`EnvelopeRaft::propose_checkpoint`] on the leader: returns the checkpoint's index once
    /// the leader applied it.
    ///
    /// # Errors
    /// [`AdminError`].
    pub async fn checkpoint(&self) -> Result<u64, AdminError<u64, BasicNode>> {
        self.on_leader(|raft| async move { raft.propose_checkpoint().await }).await
    }

    /// Prepares `payload` once on the leader and submits it twice, one submission after the
    /// other (a client retrying after a lost answer; [`EnvelopeRaft::submit`]): both outcomes.
    /// The first is prepared again while the answer is retryable (a rotation, a new leader
    /// catching up, a control entry pending), for up to 5 s.
    ///
    /// # Errors
    /// No leader within 5 s.
    pub async fn write_twice(&self, payload: Vec<u8>) -> Result<[WriteOutcome; 2], ClusterError> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        loop {
            let leader = self.wait_leader(Duration::from_secs(5)).await?;
            let raft = self.raft_of(leader)?;
            let prepared = match raft.prepare(&payload) {
                Ok(p) => p,
                Err(e) => return Ok([Err(e), Err(WriteError::ControlPending)]),
            };
            match raft.submit(&prepared).await {
                Err(
                    WriteError::KeyRotated { .. } | WriteError::LeaderCatchingUp | WriteError::ControlPending,
                ) if tokio::time::Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
                first => {
                    let second = raft.submit(&prepared).await;
                    return Ok([first, second]);
                }
            }
        }
    }

    /// Fault injection: overwrites the entry node `id` stores at `index` with openraft's own
    /// empty entry (`EntryPayload::Blank`, what a new leader appends), keeping its log id.
    ///
    /// # Errors
    /// No such node or entry.
    pub fn write_blank(&self, id: u64, index: u64) -> Result<(), ClusterError> {
        let node = self.node(id)?;
        let found = node.log.modify(index, |e| e.payload = EntryPayload::Blank).map_err(ClusterError::new)?;
        found.then_some(()).ok_or_else(|| ClusterError::new(format!("node {id} has no entry {index}")))
    }

    /// Holds back commit progress sent to node `id` (`true`): it keeps storing new entries but
    /// does not learn they are committed, so it does not apply them; `false` releases it. Lets a
    /// test tamper with an entry a replica stores but has not applied yet.
    ///
    /// # Errors
    /// No such node.
    pub fn hold_commit(&self, id: u64, hold: bool) -> Result<(), ClusterError> {
        let known = self.node(id)?.log.committed();
        self.router.hold_commit(id, hold.then_some(known));
        Ok(())
    }

    /// Waits until node `id` stores an entry at `index`.
    ///
    /// # Errors
    /// Timeout.
    pub async fn wait_stored(&self, id: u64, index: u64, timeout: Duration) -> Result<(), ClusterError> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if self.node(id)?.log.entry(index).map_err(ClusterError::new)?.is_some() {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(ClusterError::new(format!(
                    "node {id} did not store index {index} within {timeout:?}"
                )));
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Switch-on over every running node: see [`switch_on`]. `cutovers[k]` is the cutover source
    /// of node `k + 1`'s gate. Returns the cutover index.
    ///
    /// # Errors
    /// [`SwitchOnError`].
    pub async fn switch_on(
        &self,
        wrapper: Arc<dyn PayloadWrapper>,
        cutovers: &[Arc<Cutover>],
        timeout: Duration,
    ) -> Result<u64, SwitchOnError<u64, BasicNode>> {
        let running = self.running();
        let nodes: Vec<SwitchOnNode<'_, TestConfig>> = running
            .iter()
            .filter_map(|(id, raft)| {
                let cutover = cutovers.get(usize::try_from(*id).ok()?.checked_sub(1)?)?;
                Some(SwitchOnNode { raft, cutover })
            })
            .collect();
        switch_on(&nodes, wrapper, timeout).await
    }

    /// An index at which the cutover may be set once every layer seals: drains every running
    /// node's cleartext proposals, then commits a barrier and returns its index (switch-on steps
    /// 1 and 2 without touching any layer).
    ///
    /// # Errors
    /// Drain timeout, or no barrier committed within `timeout`.
    pub async fn safe_cutover(&self, timeout: Duration) -> Result<u64, ClusterError> {
        for (_, raft) in self.running() {
            raft.drain_cleartext(timeout).await.map_err(ClusterError::new)?;
        }
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(leader) = self.leader() {
                match self.raft_of(leader)?.commit_barrier().await {
                    Ok(log_id) => return Ok(log_id.index),
                    Err(e) if tokio::time::Instant::now() >= deadline => return Err(ClusterError::new(e)),
                    Err(_) => {}
                }
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(ClusterError::new("no leader to commit the barrier"));
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Fault injection: appends a payload through the leader's engine *without* its layer, as a
    /// faulty or outdated proposer would, and returns its index once it is committed (whether or
    /// not it could be applied).
    ///
    /// # Errors
    /// No leader, or the entry was not committed in time.
    pub async fn append_unchecked(&self, kind: EntryKind, bytes: Vec<u8>) -> Result<u64, ClusterError> {
        let leader = self.wait_leader(Duration::from_secs(5)).await?;
        let raft = self.raft_of(leader)?;
        let payload = match kind {
            EntryKind::Envelope => EnvelopePayload::envelope(bytes),
            EntryKind::Cleartext => EnvelopePayload::cleartext(bytes),
            _ => EnvelopePayload::barrier(),
        };
        let rx = raft.raft().client_write_ff(payload).await.map_err(ClusterError::new)?;
        match tokio::time::timeout(Duration::from_secs(5), rx).await {
            Ok(Ok(Ok(response))) => Ok(response.log_id.index),
            _ => {
                // The leader halted on it (or lost leadership): its halt names the index.
                let halt = self.wait_halted(leader, Duration::from_secs(5)).await?;
                Ok(halt.index)
            }
        }
    }

    /// Every stored entry of node `id`, decoded, for display.
    ///
    /// # Errors
    /// No such node, or an entry does not decode.
    pub fn stored_entries(&self, id: u64) -> Result<Vec<StoredEntryView>, ClusterError> {
        let node = self.node(id)?;
        let mut out = Vec::new();
        for (index, _) in node.log.raw_entries() {
            let Some(entry) = node.log.entry(index).map_err(ClusterError::new)? else { continue };
            let (kind, label, key_id, bytes) = match &entry.payload {
                EntryPayload::Blank => (EntryKind::Control, "blank", None, Vec::new()),
                EntryPayload::Membership(_) => (EntryKind::Control, "membership", None, Vec::new()),
                EntryPayload::Normal(p) => {
                    let label = match p.kind() {
                        EntryKind::Cleartext => "cleartext",
                        EntryKind::Envelope => "envelope",
                        _ if p.is_layer_control() => "layer-control",
                        _ => "barrier",
                    };
                    (p.kind(), label, p.key_id(), p.as_bytes().to_vec())
                }
            };
            out.push(StoredEntryView {
                index,
                term: entry.log_id.leader_id.term,
                kind,
                label,
                key_id,
                bytes,
            });
        }
        Ok(out)
    }

    /// The stored payload of node `id` at `index`: its kind and bytes (control entries: empty).
    ///
    /// # Errors
    /// No such node, or the entry does not decode.
    pub fn read_entry(&self, id: u64, index: u64) -> Result<Option<(EntryKind, Vec<u8>)>, ClusterError> {
        let node = self.node(id)?;
        let entry = node.log.entry(index).map_err(ClusterError::new)?;
        Ok(entry.map(|e| match e.payload {
            EntryPayload::Normal(p) => (p.kind(), p.as_bytes().to_vec()),
            _ => (EntryKind::Control, Vec::new()),
        }))
    }

    /// Fault injection: overwrites the payload node `id` stores at `index` with `bytes` framed as
    /// `kind` (cleartext or envelope), keeping its log id, as an attacker with access to the
    /// replica's disk would.
    ///
    /// # Errors
    /// No such node or entry.
    pub fn write_entry(
        &self,
        id: u64,
        index: u64,
        kind: EntryKind,
        bytes: Vec<u8>,
    ) -> Result<(), ClusterError> {
        let node = self.node(id)?;
        let payload = match kind {
            EntryKind::Envelope => EnvelopePayload::envelope(bytes),
            // The layer's engine-framed barrier (what an attacker would rewrite an entry into).
            EntryKind::Control => EnvelopePayload::barrier(),
            _ => EnvelopePayload::cleartext(bytes),
        };
        let found = node
            .log
            .modify(index, |e| e.payload = EntryPayload::Normal(payload))
            .map_err(ClusterError::new)?;
        found.then_some(()).ok_or_else(|| ClusterError::new(format!("node {id} has no entry {index}")))
    }

    /// Fault injection: lets `change` modify the payload bytes node `id` stores at `index`
    /// (for example flip one bit of an envelope).
    ///
    /// # Errors
    /// No such node or payload entry.
    pub fn tamper(&self, id: u64, index: u64, change: impl FnOnce(&mut Vec<u8>)) -> Result<(), ClusterError> {
        let node = self.node(id)?;
        let mut changed = false;
        node.log
            .modify(index, |e| {
                if let EntryPayload::Normal(p) = &mut e.payload {
                    if let Some(bytes) = p.bytes_mut() {
                        change(bytes);
                        changed = true;
                    }
                }
            })
            .map_err(ClusterError::new)?;
        changed
            .then_some(())
            .ok_or_else(|| ClusterError::new(format!("node {id} has no payload entry {index}")))
    }

    /// True when `needle` occurs in any byte node `id`'s log store holds.
    ///
    /// # Errors
    /// No such node.
    pub fn log_contains(&self, id: u64, needle: &[u8]) -> Result<bool, ClusterError> {
        let node = self.node(id)?;
        Ok(node.log.raw_entries().iter().any(|(_, bytes)| bytes.windows(needle.len()).any(|w| w == needle)))
    }

    /// Stops every running node.
    pub async fn shutdown(&self) {
        for (id, raft) in self.running() {
            self.router.remove(&id);
            let _ = raft.raft().shutdown().await;
        }
    }
}

/// One node of [`TestCluster::start_with_layer_states`]: its layer state, its key provider (if
/// any) and its application.
pub type ManagedNode<A> = (Arc<LayerState>, Option<Arc<dyn KeyProvider>>, A);

/// How a node's layer is built at (re)start.
enum NodeLayer {
    /// A layer configured by the test (keys and cutover from configuration).
    Fixed(Arc<EnvelopeLayer>),
    /// A layer built from a layer state changed through the log, with the node's key provider.
    State(Arc<LayerState>, Option<Arc<dyn KeyProvider>>),
}

/// [`TestCluster::write`] failed.
// Reason: a test-only error, built rarely; keeping `WriteError` inline keeps matching simple.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WriteFailure {
    /// The layer or the engine refused the write.
    #[error(transparent)]
    Write(WriteError<u64, BasicNode>),
    /// No leader was found in time.
    #[error("no leader")]
    NoLeader,
}
