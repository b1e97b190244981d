//! R1 Inert by default: with no cutover and no wrapper, the layer changes nothing observable.

use raft_envelope_core::EntryKind;

use super::support::{payload, require, Env};
use crate::harness::{Cluster, ClusterBuilder};
use crate::Outcome;

/// Payloads of assorted shapes, including one that looks like an envelope.
fn assorted() -> Vec<Vec<u8>> {
    let mut lookalike = vec![1u8, 1, 1, 0, 0, 0, 0, 101];
    lookalike.resize(64, 0xAB);
    vec![payload("inert-a"), vec![0u8], vec![0xFF; 300], lookalike, payload("inert-b")]
}

/// R1: with no cutover and no wrapper every payload reaches every state machine byte for byte, in
/// order, and each client gets its response.
pub fn inert_passthrough<B: ClusterBuilder>(builder: &B) -> Outcome {
    let env = Env::start(builder);
    let payloads = assorted();
    tracing::info!("--- propose {} payloads through the inert layer", payloads.len());
    let responses = env.propose_all(&payloads);
    for node in &env.nodes {
        let got = env.payloads(*node);
        assert_eq!(got.len(), payloads.len(), "node {node} must apply every payload");
        for ((applied, sent), response) in got.iter().zip(&payloads).zip(&responses) {
            assert_eq!(&applied.bytes, sent, "node {node}: payload at {} changed", applied.index);
            assert_eq!(applied.index, response.index, "node {node}: payload applied at another index");
        }
        assert!(env.halted(*node).is_none(), "an inert layer never halts");
    }
    Outcome::Passed
}

/// R1: with the layer inert, the stored log holds each payload unchanged, as cleartext.
pub fn inert_stored_log_unchanged<B: ClusterBuilder>(builder: &B) -> Outcome {
    require!(builder.capabilities(), raw_log);
    let env = Env::start(builder);
    let payloads = assorted();
    let responses = env.propose_all(&payloads);
    tracing::info!("--- read every replica's stored entries");
    for node in &env.nodes {
        for (sent, response) in payloads.iter().zip(&responses) {
            let stored = env.cluster.read_entry(*node, response.index).expect("read_entry");
            let stored = stored.unwrap_or_else(|| panic!("node {node} has no entry {}", response.index));
            assert_eq!(
                stored.kind,
                EntryKind::Cleartext,
                "node {node}: inert proposals are stored as cleartext"
            );
            assert_eq!(&stored.bytes, sent, "node {node}: entry {} must be stored unchanged", response.index);
        }
    }
    Outcome::Passed
}
