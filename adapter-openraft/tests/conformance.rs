//! The raft-envelope conformance suite against a real 3-node openraft cluster in one process
//! (`raft_envelope_openraft::testing::TestCluster`): one `#[test]` per SPEC case.
#![allow(clippy::unwrap_used)] // Reason: test harness; failures should be loud.

use std::sync::Arc;
use std::time::Duration;

use raft_envelope_conformance::{
    AppliedPayload, Capabilities, Cluster, ClusterBuilder, HarnessError, ManagedNode, NodeId, ProposeError,
    RecordingStateMachine, Response, StoredEntry,
};
use raft_envelope_core::{
    lifecycle::LayerSnapshot, provider::KeyProvider, Algorithm, EntryKind, EnvelopeLayer, FatalApplyError,
    KeyId,
};
use raft_envelope_openraft::testing::{Application, ClusterError, TestCluster, WriteFailure};
use raft_envelope_openraft::{AdminError, WriteError};

/// The suite's state machine as the test cluster's application.
struct Recording(RecordingStateMachine);

impl Application for Recording {
    fn apply(&mut self, index: u64, payload: &[u8]) -> Vec<u8> {
        self.0.apply(index, payload)
    }

    fn snapshot(&self) -> Vec<u8> {
        self.0.to_snapshot()
    }

    fn restore(&mut self, bytes: &[u8]) -> Result<(), String> {
        self.0 = RecordingStateMachine::from_snapshot(bytes).ok_or("not a recording snapshot")?;
        Ok(())
    }
}

/// Builds an openraft cluster on its own tokio runtime for each case.
#[derive(Debug, Default)]
struct OpenraftBuilder;

/// A running openraft test cluster and the runtime it lives on.
struct OpenraftCluster {
    cluster: TestCluster<Recording>,
    runtime: tokio::runtime::Runtime,
}

impl Drop for OpenraftCluster {
    fn drop(&mut self) {
        self.runtime.block_on(self.cluster.shutdown());
    }
}

fn engine(e: ClusterError) -> HarnessError {
    HarnessError::Engine(e.0)
}

impl ClusterBuilder for OpenraftBuilder {
    type Cluster = OpenraftCluster;
    type Guard = ();

    fn capabilities(&self) -> Capabilities {
        // openraft does not forward: a follower answers `ForwardToLeader`, so there is no
        // follower-side proposal path to test (`propose_via` keeps its default).
        Capabilities { follower_proposals: false, hold_forwarded: false, ..Capabilities::ALL }
    }

    fn build(&self, layers: Vec<Arc<EnvelopeLayer>>) -> Result<(OpenraftCluster, ()), HarnessError> {
        let runtime = runtime()?;
        let nodes = layers.into_iter().map(|l| (l, Recording(RecordingStateMachine::default()))).collect();
        let cluster = runtime.block_on(TestCluster::start(nodes)).map_err(engine)?;
        Ok((OpenraftCluster { cluster, runtime }, ()))
    }

    /// `TestCluster::start_with_layer_states`: a node without a provider halts at an install
    /// entry whose key it did not create.
    fn build_managed(&self, nodes: Vec<ManagedNode>) -> Result<(OpenraftCluster, ()), HarnessError> {
        let runtime = runtime()?;
        let nodes = nodes
            .into_iter()
            .map(|n| (n.layer_state, n.provider, Recording(RecordingStateMachine::default())))
            .collect();
        let cluster = runtime.block_on(TestCluster::start_with_layer_states(nodes)).map_err(engine)?;
        Ok((OpenraftCluster { cluster, runtime }, ()))
    }
}

fn runtime() -> Result<tokio::runtime::Runtime, HarnessError> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| HarnessError::Engine(e.to_string()))
}

fn admin(e: AdminError<u64, openraft::BasicNode>) -> HarnessError {
    match e {
        AdminError::DestroyRefused(reason) => HarnessError::DestroyRefused(reason),
        other => HarnessError::Engine(other.to_string()),
    }
}

impl Cluster for OpenraftCluster {
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
            Err(WriteFailure::Write(WriteError::Seal(e))) => Err(ProposeError::Refused(e)),
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
        Ok(n.sm.with_app(|a| a.0.payloads().to_vec()))
    }

    fn halted(&self, node: NodeId) -> Result<Option<FatalApplyError>, HarnessError> {
        self.cluster.halted(node).map_err(|_| HarnessError::NoSuchNode(node))
    }

    fn read_entry(&self, node: NodeId, index: u64) -> Result<Option<StoredEntry>, HarnessError> {
        let entry = self.cluster.read_entry(node, index).map_err(engine)?;
        Ok(entry.map(|(kind, bytes)| StoredEntry { kind, bytes }))
    }

    fn write_entry(&self, node: NodeId, index: u64, entry: StoredEntry) -> Result<(), HarnessError> {
        self.cluster.write_entry(node, index, entry.kind, entry.bytes).map_err(engine)
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
        let app = Recording(RecordingStateMachine::default());
        self.runtime.block_on(self.cluster.add_member(node.layer_state, node.provider, app)).map_err(engine)
    }
}

raft_envelope_conformance::conformance_suite!(OpenraftBuilder);
