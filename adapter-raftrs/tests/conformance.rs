//! The conformance suite (every SPEC case) against a real 3-node raft-rs cluster in one process.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

use raft::eraftpb::{ConfState, Snapshot};
use raft_envelope_conformance::{
    AppliedPayload, Capabilities, ClusterBuilder, HarnessError, ManagedNode, NodeId,
    ProposeError as SuiteProposeError, RecordingStateMachine, Response, Resubmitted, StoredEntry,
};
use raft_envelope_core::apply::ApplyContext;
use raft_envelope_core::lifecycle::{CheckpointPolicy, LifecycleError, Retired};
use raft_envelope_core::{
    lifecycle::LayerSnapshot,
    provider::{FileKekProvider, KekId, KeyProvider},
    wire::{ControlCommand, EnvelopeHeader},
    Algorithm, EntryKind, EnvelopeLayer, FatalApplyError, KeyId, ProposalId, SecretKey,
};
use raft_envelope_raftrs::framing::{classify, ContextMarker};
use raft_envelope_raftrs::testing::{block_on, Cluster, ClusterConfig, ClusterError};
use raft_envelope_raftrs::{Applied, ProposeError, StateMachine};

/// The suite's recording state machine, with the applied index the raft-rs node restarts from.
#[derive(Debug, Default)]
struct Recorder {
    sm: RecordingStateMachine,
    applied: u64,
    /// The context of every payload, as `apply_in` was handed it.
    contexts: Vec<ApplyContext>,
}

impl StateMachine for Recorder {
    type Response = Vec<u8>;

    fn apply(&mut self, index: u64, _term: u64, payload: &[u8]) -> Vec<u8> {
        self.applied = index;
        self.sm.apply(index, payload)
    }

    fn apply_in(&mut self, context: &ApplyContext, term: u64, payload: &[u8]) -> Vec<u8> {
        self.contexts.push(*context);
        self.apply(context.index, term, payload)
    }

    fn apply_control(&mut self, index: u64, _term: u64, _conf_state: Option<&ConfState>) {
        self.applied = index;
    }

    fn applied_index(&self) -> u64 {
        self.applied
    }

    fn snapshot_data(&self) -> Result<Vec<u8>, String> {
        Ok(self.sm.to_snapshot())
    }

    fn restore_snapshot(&mut self, snapshot: &Snapshot) -> Result<(), String> {
        let sm = RecordingStateMachine::from_snapshot(snapshot.get_data())
            .ok_or_else(|| "malformed recording state machine snapshot".to_owned())?;
        *self = Recorder { sm, applied: snapshot.get_metadata().index, contexts: Vec::new() };
        Ok(())
    }
}

/// Builds [`RaftRs`] clusters: every capability.
#[derive(Debug, Default)]
struct RaftRsBuilder;

impl ClusterBuilder for RaftRsBuilder {
    type Cluster = RaftRs;
    type Guard = ();

    fn capabilities(&self) -> Capabilities {
        Capabilities::ALL
    }

    fn build(&self, layers: Vec<Arc<EnvelopeLayer>>) -> Result<(RaftRs, ()), HarnessError> {
        let cluster = Cluster::new(layers, |_| Recorder::default()).map_err(engine)?;
        let raft_rs = RaftRs {
            cluster: Mutex::new(cluster),
            holding: AtomicBool::new(false),
            held: AtomicUsize::new(0),
        };
        Ok((raft_rs, ()))
    }

    /// `Cluster::with_layer_states`; a node without a provider gets [`no_kek`].
    fn build_managed(&self, nodes: Vec<ManagedNode>) -> Result<(RaftRs, ()), HarnessError> {
        let nodes = nodes
            .into_iter()
            .map(|n| Ok((n.layer_state, n.provider.map_or_else(no_kek, Ok)?)))
            .collect::<Result<Vec<_>, HarnessError>>()?;
        // Checkpoints every 8 entries or 2 s (20 ticks): a load case crosses many of them.
        let config = ClusterConfig {
            checkpoints: CheckpointPolicy::new(8, Duration::from_secs(2)),
            ..ClusterConfig::default()
        };
        let cluster = Cluster::with_layer_states(config, nodes, |_| Recorder::default()).map_err(engine)?;
        let raft_rs = RaftRs {
            cluster: Mutex::new(cluster),
            holding: AtomicBool::new(false),
            held: AtomicUsize::new(0),
        };
        Ok((raft_rs, ()))
    }
}

/// A provider for a replica without a KEK (raft-rs nodes always have one): a fresh random KEK
/// under a name no install entry uses, so every unwrap fails.
fn no_kek() -> Result<Arc<dyn KeyProvider>, HarnessError> {
    let kek_id = KekId::new("no-kek-on-this-replica").map_err(engine)?;
    let kek = SecretKey::generate().map_err(engine)?;
    Ok(Arc::new(FileKekProvider::from_key(kek_id, kek).map_err(engine)?))
}

/// A [`Cluster`] behind a lock: proposals from several threads take turns on the pump.
#[derive(Debug)]
struct RaftRs {
    cluster: Mutex<Cluster<Recorder>>,
    /// Forwarded proposals (`MsgPropose`) are held in the network while set.
    holding: AtomicBool,
    /// Proposals made through a follower while holding, not yet released: each one's
    /// `MsgPropose` sits in the cluster's held messages (see `propose_via`).
    held: AtomicUsize,
}

/// The pause between the steps of a switch-on, standing for the admin's round trips: without
/// it the single-threaded pump would run the steps back to back and the suite's writers would
/// never get an entry in between.
const ADMIN_STEP_PAUSE: Duration = Duration::from_millis(3);

/// How long `propose_via` waits for an outcome; the node's own proposal timeout (60 ticks)
/// normally answers long before.
const PROPOSE_VIA_TIMEOUT: Duration = Duration::from_secs(30);

fn suite_error(e: ProposeError) -> SuiteProposeError {
    match e {
        ProposeError::Refused(e) => SuiteProposeError::Refused(e),
        ProposeError::Duplicate { first_index, .. } => SuiteProposeError::Duplicate { first_index },
        e => SuiteProposeError::Engine(e.to_string()),
    }
}

fn suite_result(result: Result<Applied<Vec<u8>>, ProposeError>) -> Result<Response, SuiteProposeError> {
    let applied = result.map_err(suite_error)?;
    match applied.response {
        Some(data) => Ok(Response { index: applied.index, data }),
        None => Err(SuiteProposeError::Engine("applied without a response".into())),
    }
}

fn engine(e: impl std::fmt::Display) -> HarnessError {
    HarnessError::Engine(e.to_string())
}

fn admin(e: ClusterError) -> HarnessError {
    match e {
        ClusterError::Admin(LifecycleError::DestroyRefused(reason)) => HarnessError::DestroyRefused(reason),
        ClusterError::Admin(LifecycleError::Refused(reason)) => HarnessError::Refused(reason),
        other => engine(other),
    }
}

impl RaftRs {
    fn lock(&self) -> MutexGuard<'_, Cluster<Recorder>> {
        self.cluster.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Waits for the outcome of proposal `id`, taking the lock one tick at a time so that other
    /// threads' proposals and commands go on meanwhile.
    fn await_outcome(&self, id: ProposalId) -> Result<Applied<Vec<u8>>, ProposeError> {
        let deadline = Instant::now() + PROPOSE_VIA_TIMEOUT;
        loop {
            {
                let mut c = self.lock();
                c.settle();
                if let Some(result) = c.outcome(id) {
                    return result;
                }
                if Instant::now() >= deadline {
                    return Err(ProposeError::TimedOut { ticks: 0 });
                }
                c.tick(1);
            }
            thread::yield_now();
        }
    }

    /// Installs a new AES-256-GCM key wrapped by `provider` and promotes it, on the admin-ready
    /// leader, releasing the lock between the steps; returns the key and the promote's index.
    fn install_and_promote(&self, provider: &dyn KeyProvider) -> Result<(KeyId, u64), HarnessError> {
        let (key_id, install) = {
            let mut c = self.lock();
            let leader = c.admin_leader().map_err(engine)?;
            let node = c.node_mut(leader).map_err(engine)?;
            let (key_id, ticket) =
                block_on(node.propose_install(provider, Algorithm::Aes256Gcm)).map_err(engine)?;
            (key_id, ticket.id)
        };
        self.await_outcome(install).map_err(engine)?;
        // An admin's next step comes a network round trip later: writers go on meanwhile.
        thread::sleep(ADMIN_STEP_PAUSE);
        let promote = self.propose_control(&ControlCommand::PromoteKey { key_id })?;
        Ok((key_id, self.await_outcome(promote).map_err(engine)?.index))
    }

    /// Proposes a layer control entry on the admin-ready leader without waiting.
    fn propose_control(&self, command: &ControlCommand) -> Result<ProposalId, HarnessError> {
        let mut c = self.lock();
        let leader = c.admin_leader().map_err(engine)?;
        Ok(c.node_mut(leader).map_err(engine)?.propose_control(command).map_err(engine)?.id)
    }

    /// Locked and settled: every message in flight delivered.
    fn settled(&self) -> MutexGuard<'_, Cluster<Recorder>> {
        let mut c = self.lock();
        c.settle();
        c
    }
}

/// The raft-rs framing of a stored entry the suite writes.
fn frame(entry: &StoredEntry) -> Vec<u8> {
    if entry.is_noop() {
        return Vec::new();
    }
    if entry.is_barrier() {
        return ContextMarker::barrier(ProposalId(0)).encode();
    }
    match entry.kind {
        EntryKind::Envelope => {
            let id = EnvelopeHeader::parse(&entry.bytes).map(|h| h.proposal_id).unwrap_or(ProposalId(0));
            ContextMarker::envelope(id).encode()
        }
        _ => Vec::new(),
    }
}

fn node_error(e: ClusterError) -> HarnessError {
    match e {
        ClusterError::NoSuchNode(n) => HarnessError::NoSuchNode(n),
        e => engine(e),
    }
}

impl raft_envelope_conformance::Cluster for RaftRs {
    fn nodes(&self) -> Vec<NodeId> {
        self.lock().ids()
    }

    fn leader(&self) -> Option<NodeId> {
        self.lock().wait_leader().ok()
    }

    /// `propose_async` on the leader, then waits for the outcome taking the lock one tick at a
    /// time, like [`propose_via`](Self::propose_via): concurrent proposals, admin commands and
    /// leader changes interleave with it.
    fn propose(&self, payload: Vec<u8>) -> Result<Response, SuiteProposeError> {
        let id = {
            let mut c = self.lock();
            let leader = c.wait_leader().map_err(|e| SuiteProposeError::Engine(e.to_string()))?;
            c.propose_async(leader, payload).map_err(suite_error)?
        };
        suite_result(self.await_outcome(id))
    }

    fn last_index(&self) -> Result<u64, HarnessError> {
        let mut c = self.lock();
        let leader = c.wait_leader().map_err(engine)?;
        Ok(c.node(leader).map_err(node_error)?.last_index())
    }

    fn safe_cutover(&self) -> Result<u64, HarnessError> {
        // The switch-on barrier: committed after every layer seals (the suite set the wrappers).
        self.lock().commit_barrier().map_err(engine)
    }

    fn wait_applied(&self, node: NodeId, index: u64, timeout: Duration) -> Result<(), HarnessError> {
        let applied = self.lock().wait_applied(node, index).map_err(node_error)?;
        if applied >= index {
            Ok(())
        } else {
            Err(HarnessError::Timeout { node, index, applied, timeout })
        }
    }

    fn applied_index(&self, node: NodeId) -> Result<u64, HarnessError> {
        self.settled().applied(node).map_err(node_error)
    }

    fn applied_payloads(&self, node: NodeId) -> Result<Vec<AppliedPayload>, HarnessError> {
        Ok(self.settled().state_machine(node).map_err(node_error)?.sm.payloads().to_vec())
    }

    fn applied_contexts(&self, node: NodeId) -> Result<Vec<ApplyContext>, HarnessError> {
        Ok(self.settled().state_machine(node).map_err(node_error)?.contexts.clone())
    }

    fn halted(&self, node: NodeId) -> Result<Option<FatalApplyError>, HarnessError> {
        self.settled().halted(node).map_err(node_error)
    }

    fn read_entry(&self, node: NodeId, index: u64) -> Result<Option<StoredEntry>, HarnessError> {
        let entry = self.settled().read_entry(node, index).map_err(node_error)?;
        Ok(entry.map(|e| StoredEntry { kind: classify(&e), bytes: e.data.to_vec() }))
    }

    fn write_entry(&self, node: NodeId, index: u64, entry: StoredEntry) -> Result<(), HarnessError> {
        let context = frame(&entry);
        let data = if entry.is_barrier() || entry.is_noop() { Vec::new() } else { entry.bytes };
        self.lock().write_entry(node, index, data, context).map_err(node_error)
    }

    fn hold_commit(&self, node: NodeId, hold: bool) -> Result<(), HarnessError> {
        self.lock().hold_commit(node, hold).map_err(node_error)
    }

    /// `EnvelopeNode::propose_checkpoint` on the leader, then waits for it with the lock
    /// released between ticks (as `propose`).
    fn checkpoint(&self) -> Result<u64, HarnessError> {
        let id = {
            let mut c = self.lock();
            let leader = c.wait_leader().map_err(engine)?;
            c.node_mut(leader).map_err(node_error)?.propose_checkpoint().map_err(engine)?.id
        };
        Ok(self.await_outcome(id).map_err(engine)?.index)
    }

    fn resubmit(&self, payload: Vec<u8>) -> Result<Resubmitted, HarnessError> {
        let [first, second] = self.lock().propose_twice(payload).map_err(engine)?;
        Ok(Resubmitted { first: suite_result(first), second: suite_result(second) })
    }

    fn restart(&self, node: NodeId, layer: Arc<EnvelopeLayer>) -> Result<(), HarnessError> {
        self.lock().restart(node, layer).map_err(node_error)
    }

    fn change_leader(&self) -> Result<NodeId, HarnessError> {
        self.lock().change_leader().map_err(node_error)
    }

    fn append_unchecked(&self, entry: StoredEntry) -> Result<u64, HarnessError> {
        let context = frame(&entry);
        self.lock().append_unchecked(context, entry.bytes).map_err(node_error)
    }

    /// `propose_async` on `node` (its `EnvelopeNode::propose`: sealed by its layer, forwarded by
    /// raft-rs when `node` follows), then waits for the outcome on `node`, taking the lock one
    /// tick at a time: other proposals, the switch-on barrier and `hold_forwarded` go on
    /// meanwhile, so a cleartext proposal prepared before the switch can still be on its way to
    /// the leader when the barrier is appended (the leader refuses it then).
    fn propose_via(&self, node: NodeId, payload: Vec<u8>) -> Result<Response, SuiteProposeError> {
        let id = {
            let mut c = self.lock();
            let id = c.propose_async(node, payload).map_err(suite_error)?;
            if self.holding.load(Ordering::SeqCst) && c.leader() != Some(node) {
                // A follower forwards in its next Ready: after this settle the MsgPropose is held.
                c.settle();
                self.held.fetch_add(1, Ordering::SeqCst);
            }
            id
        };
        suite_result(self.await_outcome(id))
    }

    fn hold_forwarded(&self, hold: bool) -> Result<usize, HarnessError> {
        let mut c = self.lock();
        self.holding.store(hold, Ordering::SeqCst);
        c.hold_forwarded_proposals(hold);
        if hold {
            Ok(self.held.load(Ordering::SeqCst))
        } else {
            c.release_held();
            Ok(self.held.swap(0, Ordering::SeqCst))
        }
    }

    /// `Cluster::enable_encryption`, step by step with the lock released in between (install,
    /// promote, every running node applies the promote, enforce), so the suite's writers keep
    /// proposing through the whole switch-on.
    fn enable_encryption(&self, provider: Arc<dyn KeyProvider>) -> Result<u64, HarnessError> {
        let state = {
            let mut c = self.lock();
            let leader = c.admin_leader().map_err(engine)?;
            c.node(leader)
                .map_err(engine)?
                .layer_state()
                .cloned()
                .ok_or(HarnessError::Unsupported("no layer state"))?
        };
        if let Some(cutover) = state.cutover() {
            return Ok(cutover);
        }
        if state.active_key().is_none() {
            let (_, promoted) = self.install_and_promote(provider.as_ref())?;
            // Not needed for safety (a node refuses proposals while the promote is unapplied in
            // its log): it only spares the writers refusals.
            let deadline = Instant::now() + PROPOSE_VIA_TIMEOUT;
            loop {
                {
                    let mut c = self.lock();
                    let ids = c.ids();
                    if ids.iter().all(|id| !c.running(*id) || c.applied(*id).is_ok_and(|a| a >= promoted)) {
                        break;
                    }
                    if Instant::now() >= deadline {
                        return Err(HarnessError::Engine(
                            "the promote was not applied everywhere in time".into(),
                        ));
                    }
                    c.tick(1);
                }
                thread::yield_now();
            }
        }
        thread::sleep(ADMIN_STEP_PAUSE);
        let enforce = self.propose_control(&ControlCommand::Enforce)?;
        let index = self.await_outcome(enforce).map_err(engine)?.index;
        Ok(state.cutover().unwrap_or(index))
    }

    /// Install, then promote, with the lock released in between (as `enable_encryption`).
    fn rotate_key(&self, provider: Arc<dyn KeyProvider>) -> Result<KeyId, HarnessError> {
        Ok(self.install_and_promote(provider.as_ref())?.0)
    }

    fn start_sealing(&self, provider: Arc<dyn KeyProvider>) -> Result<KeyId, HarnessError> {
        self.lock().start_sealing(provider.as_ref(), Algorithm::Aes256Gcm).map_err(admin)
    }

    fn retire_key(&self, key: KeyId) -> Result<Option<u64>, HarnessError> {
        match self.lock().retire_key(key).map_err(admin)? {
            Retired::At { index } => Ok(Some(index)),
            _ => Ok(None),
        }
    }

    /// `Cluster::destroy_key`: the proof (a barrier, every member's retention,
    /// `check_destroy`) runs before anything is proposed.
    fn destroy_key(&self, key: KeyId) -> Result<(), HarnessError> {
        match self.lock().destroy_key(key) {
            Ok(_) => Ok(()),
            Err(ClusterError::Admin(LifecycleError::DestroyRefused(reason))) => {
                Err(HarnessError::DestroyRefused(reason))
            }
            Err(e) => Err(engine(e)),
        }
    }

    fn compact(&self, node: NodeId) -> Result<u64, HarnessError> {
        self.lock().compact(node).map_err(node_error)
    }

    /// `Cluster::add_member`: a learner; a node without a provider gets [`no_kek`].
    fn add_member(&self, node: ManagedNode) -> Result<NodeId, HarnessError> {
        let provider = node.provider.map_or_else(no_kek, Ok)?;
        self.lock().add_member(node.layer_state, provider, Recorder::default()).map_err(engine)
    }

    fn layer_snapshot(&self, node: NodeId) -> Result<LayerSnapshot, HarnessError> {
        let c = self.settled();
        let state = c.node(node).map_err(node_error)?.layer_state().cloned();
        state
            .map(|s| s.snapshot())
            .ok_or(HarnessError::Unsupported("layer_snapshot: node started without a layer state"))
    }

    fn restart_with_provider(
        &self,
        node: NodeId,
        provider: Option<Arc<dyn KeyProvider>>,
    ) -> Result<(), HarnessError> {
        let provider = provider.map_or_else(no_kek, Ok)?;
        self.lock().restart_with_provider(node, provider).map_err(node_error)
    }
}

raft_envelope_conformance::conformance_main!(RaftRsBuilder);
