//! The conformance suite's harness for openraft: `SuiteBuilder` runs every case of
//! `raft-envelope-conformance` on an in-process 3-node openraft cluster whose nodes each run
//! your [`Application`] behind the envelope layer.
//!
//! ```text
//! // tests/conformance.rs, with `harness = false` for this target in Cargo.toml
//! use raft_envelope_openraft::testing::{suite::SuiteBuilder, KvApp};
//! raft_envelope_conformance::conformance_main!(SuiteBuilder::new(KvApp::default));
//! ```
//!
//! What it does for you, so that a harness needs nothing engine-specific: `safe_cutover`
//! drains every node's in-flight cleartext and commits a barrier (the last log index is not
//! safe on openraft: a write accepted by the leader may still land after it); `change_leader`
//! transfers leadership and cuts the old leader off until the new one leads; writes refused
//! with a retryable answer ([`WriteError::LeaderCatchingUp`], [`WriteError::ControlPending`],
//! [`WriteError::KeyRotated`] — prepared again —, `ForwardToLeader`) are retried by the test
//! cluster; proposals are bounded in time; openraft's own logs are shown only for failing
//! cases. Tampering goes through the in-memory log store's serialized bytes.
//!
//! Your application sees every payload the layer hands over, in log order, exactly as in
//! production, and must accept any bytes (the suite proposes arbitrary payloads). The suite
//! checks the layer through a recording tap in front of it ([`Tapped`]): responses are the
//! tap's, which the suite knows how to check. Storage and network are the test cluster's
//! in-memory ones.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use raft_envelope_conformance::{
    AppliedPayload, Capabilities, Cluster, ClusterBuilder, HarnessError, ManagedNode, NodeId, ProposeError,
    RecordingStateMachine, Response, Resubmitted, StoredEntry,
};
use raft_envelope_core::apply::ApplyContext;
use raft_envelope_core::lifecycle::{CheckpointPolicy, LayerSnapshot, Retired};
use raft_envelope_core::provider::KeyProvider;
use raft_envelope_core::{Algorithm, EntryKind, EnvelopeLayer, FatalApplyError, KeyId};

use super::{Application, ClusterError, TestCluster, WriteFailure, WriteOutcome};
use crate::{AdminError, WriteError};

/// No application behind the tap: [`SuiteBuilder::recording`] runs the suite's recording state
/// machine alone.
#[derive(Debug, Default, Clone, Copy)]
pub struct Recording;

impl Application for Recording {
    fn apply(&mut self, _index: u64, _payload: &[u8]) -> Vec<u8> {
        Vec::new()
    }

    fn snapshot(&self) -> Vec<u8> {
        Vec::new()
    }

    fn restore(&mut self, _bytes: &[u8]) -> Result<(), String> {
        Ok(())
    }
}

/// Your application behind a recording tap: every payload is recorded (for the suite's
/// checks) and then applied to `app`; the response is the tap's.
#[derive(Debug)]
pub struct Tapped<A> {
    record: RecordingStateMachine,
    app: A,
}

impl<A> Tapped<A> {
    /// Your application.
    pub fn app(&self) -> &A {
        &self.app
    }
}

impl<A: Application> Application for Tapped<A> {
    fn apply(&mut self, index: u64, payload: &[u8]) -> Vec<u8> {
        let response = self.record.apply(index, payload);
        let _ = self.app.apply(index, payload);
        response
    }

    /// The tap's recording (length-prefixed), then the application's snapshot.
    fn snapshot(&self) -> Vec<u8> {
        let record = self.record.to_snapshot();
        let mut out = Vec::with_capacity(8 + record.len());
        out.extend_from_slice(&(record.len() as u64).to_be_bytes());
        out.extend_from_slice(&record);
        out.extend_from_slice(&self.app.snapshot());
        out
    }

    fn restore(&mut self, bytes: &[u8]) -> Result<(), String> {
        let (len, rest) = bytes.split_at_checked(8).ok_or("snapshot shorter than its header")?;
        let len = u64::from_be_bytes(len.try_into().map_err(|_| "header")?) as usize;
        let (record, app) = rest.split_at_checked(len).ok_or("snapshot shorter than its recording")?;
        self.record = RecordingStateMachine::from_snapshot(record).ok_or("not a recording snapshot")?;
        self.app.restore(app)
    }
}

/// The conformance suite's [`ClusterBuilder`] for openraft: every case gets a fresh 3-node
/// [`TestCluster`] on its own Tokio runtime, each node running `make_app()` behind the layer.
pub struct SuiteBuilder<A> {
    make_app: Arc<dyn Fn() -> A + Send + Sync>,
}

impl<A> fmt::Debug for SuiteBuilder<A> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SuiteBuilder").finish_non_exhaustive()
    }
}

impl<A: Application> SuiteBuilder<A> {
    /// A builder whose nodes each run a fresh `make_app()`.
    pub fn new(make_app: impl Fn() -> A + Send + Sync + 'static) -> Self {
        Self { make_app: Arc::new(make_app) }
    }

    fn app(&self) -> Tapped<A> {
        Tapped { record: RecordingStateMachine::default(), app: (self.make_app)() }
    }
}

impl SuiteBuilder<Recording> {
    /// A builder whose nodes run the suite's recording state machine alone.
    pub fn recording() -> Self {
        Self::new(Recording::default)
    }
}

/// A running cluster of a case and the runtime it lives on.
pub struct SuiteCluster<A: Application> {
    cluster: TestCluster<Tapped<A>>,
    runtime: tokio::runtime::Runtime,
    make_app: Arc<dyn Fn() -> A + Send + Sync>,
}

impl<A: Application> fmt::Debug for SuiteCluster<A> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SuiteCluster").field("cluster", &self.cluster).finish_non_exhaustive()
    }
}

impl<A: Application> Drop for SuiteCluster<A> {
    fn drop(&mut self) {
        self.runtime.block_on(self.cluster.shutdown());
    }
}

fn engine(e: ClusterError) -> HarnessError {
    HarnessError::Engine(e.0)
}

impl<A: Application> ClusterBuilder for SuiteBuilder<A> {
    type Cluster = SuiteCluster<A>;
    type Guard = ();

    fn capabilities(&self) -> Capabilities {
        // openraft does not forward: a follower answers `ForwardToLeader`, so there is no
        // follower-side proposal path to test (`propose_via` keeps its default).
        Capabilities { follower_proposals: false, hold_forwarded: false, ..Capabilities::ALL }
    }

    fn build(&self, layers: Vec<Arc<EnvelopeLayer>>) -> Result<(SuiteCluster<A>, ()), HarnessError> {
        let runtime = runtime()?;
        let nodes = layers.into_iter().map(|l| (l, self.app())).collect();
        let cluster = runtime.block_on(TestCluster::start(nodes)).map_err(engine)?;
        Ok((SuiteCluster { cluster, runtime, make_app: self.make_app.clone() }, ()))
    }

    /// `TestCluster::start_with_layer_states`: a node without a provider halts at an install
    /// entry whose key it did not create.
    fn build_managed(&self, nodes: Vec<ManagedNode>) -> Result<(SuiteCluster<A>, ()), HarnessError> {
        let runtime = runtime()?;
        let nodes = nodes.into_iter().map(|n| (n.layer_state, n.provider, self.app())).collect();
        let cluster = runtime.block_on(TestCluster::start_with_layer_states(nodes)).map_err(engine)?;
        cluster.set_checkpoints(SUITE_CHECKPOINTS);
        Ok((SuiteCluster { cluster, runtime, make_app: self.make_app.clone() }, ()))
    }
}

/// Checkpoints every 8 sealed entries or 200 ms: a load case crosses many of them.
const SUITE_CHECKPOINTS: CheckpointPolicy = CheckpointPolicy::new(8, Duration::from_millis(200));

fn runtime() -> Result<tokio::runtime::Runtime, HarnessError> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| HarnessError::Engine(e.to_string()))
}

fn propose_error(e: WriteError<u64, openraft::BasicNode>) -> ProposeError {
    match e {
        WriteError::Seal(e) => ProposeError::Refused(e),
        WriteError::Duplicate { first_index, .. } => ProposeError::Duplicate { first_index },
        e => ProposeError::Engine(e.to_string()),
    }
}

fn outcome(result: WriteOutcome) -> Result<Response, ProposeError> {
    result.map(|r| Response { index: r.log_id.index, data: r.data }).map_err(propose_error)
}

fn admin(e: AdminError<u64, openraft::BasicNode>) -> HarnessError {
    match e {
        AdminError::DestroyRefused(reason) => HarnessError::DestroyRefused(reason),
        AdminError::Refused(reason) => HarnessError::Refused(reason),
        other => HarnessError::Engine(other.to_string()),
    }
}

impl<A: Application> Cluster for SuiteCluster<A> {
    fn nodes(&self) -> Vec<NodeId> {
        self.cluster.ids()
    }

    fn leader(&self) -> Option<NodeId> {
        self.cluster.leader()
    }

    fn propose(&self, payload: Vec<u8>) -> Result<Response, ProposeError> {
        // Bounded: a write to a leader that lost its quorum may wait until it learns a new term;
        // a case must see an error (and retry) rather than hang.
        let write =
            async { tokio::time::timeout(Duration::from_secs(10), self.cluster.write(payload)).await };
        let Ok(result) = self.runtime.block_on(write) else {
            return Err(ProposeError::Engine("no response within 10 s".into()));
        };
        match result {
            Ok(r) => Ok(Response { index: r.log_id.index, data: r.data }),
            Err(WriteFailure::Write(e)) => Err(propose_error(e)),
            Err(e) => Err(ProposeError::Engine(e.to_string())),
        }
    }

    fn last_index(&self) -> Result<u64, HarnessError> {
        self.cluster.last_index().map_err(engine)
    }

    fn safe_cutover(&self) -> Result<u64, HarnessError> {
        self.runtime.block_on(self.cluster.safe_cutover(Duration::from_secs(10))).map_err(engine)
    }

    fn wait_applied(&self, node: NodeId, index: u64, timeout: Duration) -> Result<(), HarnessError> {
        self.runtime.block_on(self.cluster.wait_applied(node, index, timeout)).map_err(|e| {
            let applied = self.cluster.applied_index(node).unwrap_or(0);
            if applied < index && self.cluster.halted(node).ok().flatten().is_none() {
                HarnessError::Timeout { node, index, applied, timeout }
            } else {
                engine(e)
            }
        })
    }

    fn applied_index(&self, node: NodeId) -> Result<u64, HarnessError> {
        self.cluster.applied_index(node).map_err(engine)
    }

    fn applied_payloads(&self, node: NodeId) -> Result<Vec<AppliedPayload>, HarnessError> {
        let n = self.cluster.node(node).map_err(|_| HarnessError::NoSuchNode(node))?;
        Ok(n.sm.with_app(|a| a.record.payloads().to_vec()))
    }

    fn applied_contexts(&self, node: NodeId) -> Result<Vec<ApplyContext>, HarnessError> {
        Ok(self.cluster.node(node).map_err(|_| HarnessError::NoSuchNode(node))?.contexts.all())
    }

    fn halted(&self, node: NodeId) -> Result<Option<FatalApplyError>, HarnessError> {
        self.cluster.halted(node).map_err(|_| HarnessError::NoSuchNode(node))
    }

    fn read_entry(&self, node: NodeId, index: u64) -> Result<Option<StoredEntry>, HarnessError> {
        let entry = self.cluster.read_entry(node, index).map_err(engine)?;
        Ok(entry.map(|(kind, bytes)| StoredEntry { kind, bytes }))
    }

    fn write_entry(&self, node: NodeId, index: u64, entry: StoredEntry) -> Result<(), HarnessError> {
        if entry.is_noop() {
            return self.cluster.write_blank(node, index).map_err(engine);
        }
        self.cluster.write_entry(node, index, entry.kind, entry.bytes).map_err(engine)
    }

    fn hold_commit(&self, node: NodeId, hold: bool) -> Result<(), HarnessError> {
        self.cluster.hold_commit(node, hold).map_err(engine)
    }

    fn checkpoint(&self) -> Result<u64, HarnessError> {
        self.runtime.block_on(self.cluster.checkpoint()).map_err(admin)
    }

    fn resubmit(&self, payload: Vec<u8>) -> Result<Resubmitted, HarnessError> {
        let [first, second] = self.runtime.block_on(self.cluster.write_twice(payload)).map_err(engine)?;
        Ok(Resubmitted { first: outcome(first), second: outcome(second) })
    }

    fn restart(&self, node: NodeId, layer: Arc<EnvelopeLayer>) -> Result<(), HarnessError> {
        self.runtime.block_on(self.cluster.restart(node, layer)).map_err(engine)
    }

    fn change_leader(&self) -> Result<NodeId, HarnessError> {
        self.runtime.block_on(self.cluster.change_leader()).map_err(engine)
    }

    fn append_unchecked(&self, entry: StoredEntry) -> Result<u64, HarnessError> {
        let kind = if entry.kind == EntryKind::Envelope { EntryKind::Envelope } else { EntryKind::Cleartext };
        self.runtime.block_on(self.cluster.append_unchecked(kind, entry.bytes)).map_err(engine)
    }

    fn enable_encryption(&self, provider: Arc<dyn KeyProvider>) -> Result<u64, HarnessError> {
        let enabled = self.runtime.block_on(self.cluster.enable_encryption(
            provider.as_ref(),
            provider.kek_id(),
            Algorithm::Aes256Gcm,
        ));
        enabled.map(|e| e.cutover).map_err(admin)
    }

    fn rotate_key(&self, provider: Arc<dyn KeyProvider>) -> Result<KeyId, HarnessError> {
        self.runtime
            .block_on(self.cluster.rotate_key(provider.as_ref(), provider.kek_id(), Algorithm::Aes256Gcm))
            .map_err(admin)
    }

    fn start_sealing(&self, provider: Arc<dyn KeyProvider>) -> Result<KeyId, HarnessError> {
        self.runtime
            .block_on(self.cluster.start_sealing(provider.as_ref(), provider.kek_id(), Algorithm::Aes256Gcm))
            .map_err(admin)
    }

    fn retire_key(&self, key: KeyId) -> Result<Option<u64>, HarnessError> {
        match self.runtime.block_on(self.cluster.retire_key(key)).map_err(admin)? {
            Retired::At { index } => Ok(Some(index)),
            _ => Ok(None),
        }
    }

    fn destroy_key(&self, key: KeyId) -> Result<(), HarnessError> {
        self.runtime.block_on(self.cluster.destroy_key(key)).map(drop).map_err(admin)
    }

    fn layer_snapshot(&self, node: NodeId) -> Result<LayerSnapshot, HarnessError> {
        self.cluster
            .layer_snapshot(node)
            .map_err(|_| HarnessError::NoSuchNode(node))?
            .ok_or(HarnessError::Unsupported("layer_snapshot: node started without a layer state"))
    }

    fn restart_with_provider(
        &self,
        node: NodeId,
        provider: Option<Arc<dyn KeyProvider>>,
    ) -> Result<(), HarnessError> {
        self.runtime.block_on(self.cluster.restart_with_provider(node, provider)).map_err(engine)
    }

    fn compact(&self, node: NodeId) -> Result<u64, HarnessError> {
        self.runtime.block_on(self.cluster.compact(node)).map_err(engine)
    }

    fn add_member(&self, node: ManagedNode) -> Result<NodeId, HarnessError> {
        let app = Tapped { record: RecordingStateMachine::default(), app: (self.make_app)() };
        self.runtime.block_on(self.cluster.add_member(node.layer_state, node.provider, app)).map_err(engine)
    }
}
