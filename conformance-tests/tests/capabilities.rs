//! Cases honour capabilities: against a harness that lacks some, they skip (saying why) or take
//! another path, never fail for that reason, and still catch broken adapters.

use std::sync::Arc;
use std::time::Duration;

use raft_envelope_conformance::double::{DoubleBuilder, DoubleCluster, Fault};
use raft_envelope_conformance::{
    run_all, AppliedPayload, Capabilities, Cluster, ClusterBuilder, HarnessError, NodeId, ProposeError,
    Response, StoredEntry,
};
use raft_envelope_core::{EnvelopeLayer, FatalApplyError};

/// The double with only `caps`: every other optional operation is refused.
struct Limited {
    inner: DoubleBuilder,
    caps: Capabilities,
}

struct LimitedCluster {
    inner: DoubleCluster,
    caps: Capabilities,
}

impl ClusterBuilder for Limited {
    type Cluster = LimitedCluster;
    type Guard = ();

    fn capabilities(&self) -> Capabilities {
        self.caps
    }

    fn wait_timeout(&self) -> Duration {
        self.inner.wait_timeout()
    }

    fn build(&self, layers: Vec<Arc<EnvelopeLayer>>) -> Result<(LimitedCluster, ()), HarnessError> {
        let (inner, ()) = self.inner.build(layers)?;
        Ok((LimitedCluster { inner, caps: self.caps }, ()))
    }
}

impl Cluster for LimitedCluster {
    fn nodes(&self) -> Vec<NodeId> {
        self.inner.nodes()
    }
    fn leader(&self) -> Option<NodeId> {
        self.inner.leader()
    }
    fn propose(&self, payload: Vec<u8>) -> Result<Response, ProposeError> {
        self.inner.propose(payload)
    }
    fn last_index(&self) -> Result<u64, HarnessError> {
        self.inner.last_index()
    }
    fn wait_applied(&self, node: NodeId, index: u64, timeout: Duration) -> Result<(), HarnessError> {
        self.inner.wait_applied(node, index, timeout)
    }
    fn applied_index(&self, node: NodeId) -> Result<u64, HarnessError> {
        self.inner.applied_index(node)
    }
    fn applied_payloads(&self, node: NodeId) -> Result<Vec<AppliedPayload>, HarnessError> {
        self.inner.applied_payloads(node)
    }
    fn halted(&self, node: NodeId) -> Result<Option<FatalApplyError>, HarnessError> {
        self.inner.halted(node)
    }
    fn read_entry(&self, node: NodeId, index: u64) -> Result<Option<StoredEntry>, HarnessError> {
        if !self.caps.raw_log {
            panic!("read_entry called without the raw_log capability");
        }
        self.inner.read_entry(node, index)
    }
    fn write_entry(&self, node: NodeId, index: u64, entry: StoredEntry) -> Result<(), HarnessError> {
        if !self.caps.raw_log {
            panic!("write_entry called without the raw_log capability");
        }
        self.inner.write_entry(node, index, entry)
    }
    fn restart(&self, node: NodeId, layer: Arc<EnvelopeLayer>) -> Result<(), HarnessError> {
        if !self.caps.restart {
            panic!("restart called without the restart capability");
        }
        self.inner.restart(node, layer)
    }
    fn change_leader(&self) -> Result<NodeId, HarnessError> {
        if !self.caps.leader_change {
            panic!("change_leader called without the leader_change capability");
        }
        self.inner.change_leader()
    }
    fn append_unchecked(&self, entry: StoredEntry) -> Result<u64, HarnessError> {
        if !self.caps.unchecked_append {
            panic!("append_unchecked called without the unchecked_append capability");
        }
        self.inner.append_unchecked(entry)
    }
    fn propose_via(&self, node: NodeId, payload: Vec<u8>) -> Result<Response, ProposeError> {
        if !self.caps.follower_proposals {
            panic!("propose_via called without the follower_proposals capability");
        }
        self.inner.propose_via(node, payload)
    }
    fn hold_forwarded(&self, hold: bool) -> Result<usize, HarnessError> {
        if !self.caps.hold_forwarded {
            panic!("hold_forwarded called without the hold_forwarded capability");
        }
        self.inner.hold_forwarded(hold)
    }
}

const PARTIAL: [Capabilities; 7] = [
    Capabilities::NONE,
    Capabilities { unchecked_append: true, ..Capabilities::NONE },
    Capabilities { raw_log: true, ..Capabilities::NONE },
    Capabilities { restart: true, leader_change: true, ..Capabilities::NONE },
    Capabilities { raw_log: true, restart: true, ..Capabilities::NONE },
    // Forwarding without holding, and holding without reading the log.
    Capabilities { raw_log: true, follower_proposals: true, ..Capabilities::NONE },
    Capabilities {
        unchecked_append: true,
        follower_proposals: true,
        hold_forwarded: true,
        ..Capabilities::NONE
    },
];

#[test]
fn missing_capabilities_skip_never_fail() {
    for caps in PARTIAL {
        let report = run_all(&Limited { inner: DoubleBuilder::default(), caps });
        println!("{caps:?}: skipped {:?}", report.skipped());
        assert!(report.failed().is_empty(), "{caps:?}: cases failed: {:?}", report.results);
        assert!(!report.skipped().is_empty(), "{caps:?}: some case needs a missing capability");
    }
}

#[test]
fn limited_harnesses_still_catch_broken_adapters() {
    for caps in &PARTIAL[1..] {
        for fault in [Fault::SkipFailingEntry, Fault::CiphertextAsPlaintext, Fault::AdvanceAppliedOnFailure] {
            let report = run_all(&Limited { inner: DoubleBuilder::with_fault(fault), caps: *caps });
            assert!(!report.failed().is_empty(), "{caps:?}: {fault:?} not caught");
        }
    }
}

/// The requirement table the runner ignores cases by (`unmet`) says exactly which cases skip
/// themselves: a case the table lets run never skips, and a case it ignores would skip.
#[test]
fn declared_requirements_match_the_cases_own_skips() {
    let all = Capabilities { key_lifecycle: false, snapshots: false, ..Capabilities::ALL };
    for caps in PARTIAL.iter().chain(std::iter::once(&all)) {
        let report = run_all(&Limited { inner: DoubleBuilder::default(), caps: *caps });
        for (name, result) in &report.results {
            let declared = raft_envelope_conformance::unmet(name, caps);
            let skipped = matches!(result, raft_envelope_conformance::CaseResult::Skipped(_));
            assert_eq!(
                declared.is_some(),
                skipped,
                "{caps:?}: {name}: declared {declared:?}, ran {result:?}"
            );
        }
    }
}
