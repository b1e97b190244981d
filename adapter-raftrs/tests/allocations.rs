//! Heap allocations the layer adds to a raft-rs cluster's write and apply path, counted with an
//! instrumented global allocator: the same writes through a cluster with the layer on and one
//! with it off, the difference per entry.
//!
//! One `#[test]` only: the allocator is global, so no other test may run in this binary.
#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use std::alloc::System;
use std::sync::Arc;

use raft::eraftpb::ConfState;
use raft_envelope_core::lifecycle::CheckpointPolicy;
use raft_envelope_core::provider::{FileKekProvider, KekId, KeyProvider};
use raft_envelope_core::{Algorithm, ClusterId, LayerState, SecretKey};
use raft_envelope_raftrs::testing::{Cluster, ClusterConfig};
use raft_envelope_raftrs::StateMachine;
use stats_alloc::{Region, StatsAlloc, INSTRUMENTED_SYSTEM};

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

const ENTRIES: usize = 600;

/// Reads every byte it is handed and allocates nothing itself.
#[derive(Default)]
struct Sum {
    applied: u64,
    sum: u64,
}

impl StateMachine for Sum {
    type Response = ();

    fn apply(&mut self, index: u64, _term: u64, payload: &[u8]) {
        self.applied = index;
        self.sum += payload.iter().map(|b| u64::from(*b)).sum::<u64>();
    }

    fn apply_control(&mut self, index: u64, _term: u64, _conf_state: Option<&ConfState>) {
        self.applied = index;
    }

    fn applied_index(&self) -> u64 {
        self.applied
    }
}

fn cluster(sealed: bool) -> Cluster<Sum> {
    let kek_id = KekId::new("kek").unwrap();
    let kek = *SecretKey::generate().unwrap().expose_secret();
    let provider = || -> Arc<dyn KeyProvider> {
        Arc::new(FileKekProvider::from_key(kek_id.clone(), SecretKey::from_bytes(kek)).unwrap())
    };
    let nodes =
        (0..3).map(|_| (Arc::new(LayerState::new(ClusterId::new("c").unwrap())), provider())).collect();
    // Checkpoints are entries of the layer's own (one per policy interval), not per write.
    let config = ClusterConfig { checkpoints: CheckpointPolicy::OFF, ..ClusterConfig::default() };
    let mut cluster = Cluster::with_layer_states(config, nodes, |_| Sum::default()).unwrap();
    if sealed {
        cluster.enable_encryption(provider().as_ref(), &kek_id, Algorithm::Aes256Gcm).unwrap();
    }
    cluster
}

/// Allocations while `ENTRIES` writes are proposed on the leader, then while they are applied
/// on all three replicas (payloads built before counting).
fn allocations(cluster: &mut Cluster<Sum>, round: usize) -> (usize, usize) {
    let leader = cluster.leader().unwrap();
    let payloads: Vec<Vec<u8>> =
        (0..ENTRIES).map(|i| format!("set k{} {:0>200}", i % 50, round).into_bytes()).collect();
    let region = Region::new(GLOBAL);
    for p in payloads {
        cluster.propose_async(leader, p).unwrap();
    }
    let proposing = region.change();
    cluster.settle();
    let all = region.change();
    let count = |s: stats_alloc::Stats| s.allocations + s.reallocations;
    (count(proposing), count(all) - count(proposing))
}

#[test]
fn the_layer_allocates_three_times_per_proposal_and_never_per_applied_entry() {
    let (mut off, mut on) = (cluster(false), cluster(true));
    // Warm up: buffers, maps and raft-rs's own vectors reach their working size.
    for round in 0..3 {
        allocations(&mut off, round);
        allocations(&mut on, round);
    }
    let (mut propose, mut apply) = (0f64, 0f64);
    for round in 3..6 {
        let ((p_off, a_off), (p_on, a_on)) = (allocations(&mut off, round), allocations(&mut on, round));
        propose += p_on as f64 - p_off as f64;
        apply += a_on as f64 - a_off as f64;
    }
    let writes = (3 * ENTRIES) as f64;
    let (propose, apply) = (propose / writes, apply / writes / 3.0);
    eprintln!("the layer's allocations: {propose:.3} per proposal, {apply:.3} per applied entry per replica");
    // Proposing: the envelope, the raft-rs context marker that names it, and raft-rs's
    // promotion of that context to shared `Bytes` when it first clones the entry.
    assert!(propose <= 3.05, "{propose:.3} allocations per proposal");
    // Applying: envelopes are opened into the applier's reused buffer, the replay window and
    // the digest history reuse their rings.
    assert!(apply <= 0.01, "{apply:.3} allocations per applied entry and replica");
}
