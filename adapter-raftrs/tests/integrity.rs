//! Integrity on raft-rs: the leader proposes checkpoints by itself, every replica verifies them.
#![allow(clippy::unwrap_used)] // reason: tests fail loudly on any unexpected error

use std::sync::Arc;
use std::time::Duration;

use raft_envelope_core::lifecycle::CheckpointPolicy;
use raft_envelope_core::{
    provider::{FileKekProvider, KekId, KeyProvider},
    Algorithm, ClusterId, LayerState, SecretKey,
};
use raft_envelope_raftrs::testing::{Cluster, ClusterConfig, KvStore};

fn provider() -> Arc<dyn KeyProvider> {
    Arc::new(FileKekProvider::from_key(KekId::new("kek-1").unwrap(), SecretKey::from_bytes([7; 32])).unwrap())
}

/// Three nodes with layer states, encryption enabled, leaders check-pointing under `policy`.
fn cluster(policy: CheckpointPolicy) -> (Cluster<KvStore>, Vec<Arc<LayerState>>) {
    let states: Vec<Arc<LayerState>> =
        (0..3).map(|_| Arc::new(LayerState::new(ClusterId::new("integrity").unwrap()))).collect();
    let nodes = states.iter().map(|s| (s.clone(), provider())).collect();
    let config = ClusterConfig { checkpoints: policy, ..ClusterConfig::default() };
    let mut c = Cluster::with_layer_states(config, nodes, |_| KvStore::default()).unwrap();
    c.enable_encryption(provider().as_ref(), &KekId::new("kek-1").unwrap(), Algorithm::Aes256Gcm).unwrap();
    (c, states)
}

#[test]
fn leader_proposes_checkpoints_every_n_entries_and_every_replica_verifies_them() {
    let (mut c, states) = cluster(CheckpointPolicy::new(8, Duration::from_secs(3600)));
    for i in 0..20 {
        c.propose(format!("put k{i} v{i}").into_bytes()).unwrap();
        c.tick(1);
    }
    c.tick(5);
    let through: Vec<_> = states.iter().map(|s| s.integrity().checkpointed_through()).collect();
    assert!(through[0].is_some(), "a checkpoint was proposed and applied");
    assert!(through.iter().all(|t| *t == through[0]), "every replica verified the same checkpoint");
}

#[test]
fn an_idle_leader_proposes_one_checkpoint_for_its_last_writes_then_none() {
    // Time rule: 10 ticks; no entry rule to speak of.
    let (mut c, states) = cluster(CheckpointPolicy::new(1_000_000, Duration::from_secs(1)));
    for i in 0..5 {
        c.propose(format!("put k{i} v{i}").into_bytes()).unwrap();
    }
    let leader = c.wait_leader().unwrap();
    let before = c.node(leader).unwrap().last_index();
    c.tick(200);
    let after = c.node(leader).unwrap().last_index();
    assert_eq!(after, before + 1, "one checkpoint for the writes, none for the checkpoint itself");
    assert_eq!(states[0].integrity().checkpointed_through(), Some(before));
}
