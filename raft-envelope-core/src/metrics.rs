//! The layer's counters through the [`metrics`](https://docs.rs/metrics) facade (feature
//! `metrics`), so an application's own exporter (Prometheus or any other) shows them.
//!
//! Nothing is recorded on the hot path: the layer keeps its counters in atomics as always
//! ([`Keyring::stats`], [`ApplyGate::stats`], [`NodeLocal`](crate::lifecycle::NodeLocal)), and
//! [`export`] (or [`export_keyring`] for a node without a layer state) hands their current values
//! to the installed recorder, as absolute counters and gauges. Call it before rendering a scrape,
//! or from a timer. Every series carries the label `cluster` (the [`ClusterId`]), so one process
//! hosting several Raft groups exports each apart.
//!
//! | name | type | labels | what |
//! |---|---|---|---|
//! | `raft_envelope_seals_total` | counter | `key_id` | envelopes this node sealed |
//! | `raft_envelope_opens_total` | counter | `key_id` | envelopes this node opened |
//! | `raft_envelope_open_failures_total` | counter | `key_id` (`unknown` for ids this node never held), `reason` | envelopes that did not open |
//! | `raft_envelope_entries_passed_through_total` | counter | | entries applied unchanged (cleartext at or below C, control) |
//! | `raft_envelope_entries_opened_total` | counter | | envelopes opened on the apply path |
//! | `raft_envelope_halts_total` | counter | `reason` | halting decisions, by reason |
//! | `raft_envelope_key_budget_remaining` | gauge | `key_id` | entries this node may still seal under the key (0 once destroyed) |
//! | `raft_envelope_key_budget_remaining_ratio` | gauge | `key_id` | the same as a share of what one key may seal (1.0: unused, 0: exhausted or destroyed) |
//! | `raft_envelope_active_key` | gauge | | the active key's id (0: none) |
//! | `raft_envelope_cutover_index` | gauge | | the cutover (absent: none) |
//! | `raft_envelope_applied_index` | gauge | | the last index the layer state took into account |
//! | `raft_envelope_rotation_due` | gauge | | 1 when the active key should be rotated |
//! | `raft_envelope_checkpointed_through` | gauge | | the last index an integrity checkpoint covered |
//! | `raft_envelope_checkpoints_total` | counter | `result` (`verified`, `unverifiable`, `diverged`) | checkpoints applied here |
//!
//! Never a key, a wrapped key or a payload byte: ids, counts and indexes only.

use metrics::{counter, gauge};

use crate::{ApplyGate, ClusterId, Keyring, LayerState};

/// Exports a node's counters (its layer state, its keyring, its apply gate).
pub fn export(state: &LayerState, gate: &ApplyGate) {
    let cluster = label(state.cluster());
    export_keyring(state.cluster(), state.keyring(), gate);
    let status = state.status();
    for key in &status.keys {
        // A key that can no longer seal or open (destroyed) has no budget left.
        let left = status.budget_remaining.get(&key.key_id).copied().unwrap_or(0);
        gauge!("raft_envelope_key_budget_remaining", "cluster" => cluster.clone(), "key_id" => key.key_id.0.to_string())
            .set(left as f64);
        gauge!("raft_envelope_key_budget_remaining_ratio", "cluster" => cluster.clone(), "key_id" => key.key_id.0.to_string())
            .set(left as f64 / state.seal_limit().max(1) as f64);
    }
    // 0 when no key is active (key ids start at 1).
    gauge!("raft_envelope_active_key", "cluster" => cluster.clone())
        .set(status.active_key.map_or(0.0, |k| f64::from(k.0)));
    if let Some(cutover) = status.cutover {
        gauge!("raft_envelope_cutover_index", "cluster" => cluster.clone()).set(cutover as f64);
    }
    if let Some(applied) = status.applied_index {
        gauge!("raft_envelope_applied_index", "cluster" => cluster.clone()).set(applied as f64);
    }
    gauge!("raft_envelope_rotation_due", "cluster" => cluster.clone())
        .set(f64::from(u8::from(status.rotation_due)));
    if let Some(through) = state.checkpointed_through() {
        gauge!("raft_envelope_checkpointed_through", "cluster" => cluster.clone()).set(through as f64);
    }
    let results = state.local().checkpoint_results();
    for (result, n) in [
        ("verified", results.verified),
        ("unverifiable", results.unverifiable),
        ("diverged", results.diverged),
    ] {
        counter!("raft_envelope_checkpoints_total", "cluster" => cluster.clone(), "result" => result)
            .absolute(n);
    }
}

/// Exports the counters of a node without a layer state (a fixed keyring and gate).
pub fn export_keyring(cluster: &ClusterId, keyring: &Keyring, gate: &ApplyGate) {
    let cluster = label(cluster);
    for key in keyring.stats() {
        // Ids this keyring never held (named by envelopes that could not open) share one label:
        // anyone who can write the log chooses them.
        let id = if key.state.is_some() { key.key_id.0.to_string() } else { "unknown".to_owned() };
        counter!("raft_envelope_seals_total", "cluster" => cluster.clone(), "key_id" => id.clone())
            .absolute(key.seals);
        counter!("raft_envelope_opens_total", "cluster" => cluster.clone(), "key_id" => id.clone())
            .absolute(key.opens);
        for (reason, n) in &key.open_failures {
            counter!(
                "raft_envelope_open_failures_total",
                "cluster" => cluster.clone(),
                "key_id" => id.clone(),
                "reason" => reason.as_str()
            )
            .absolute(*n);
        }
    }
    let stats = gate.stats();
    counter!("raft_envelope_entries_passed_through_total", "cluster" => cluster.clone())
        .absolute(stats.passed_through);
    counter!("raft_envelope_entries_opened_total", "cluster" => cluster.clone()).absolute(stats.opened);
    for (reason, n) in &stats.halts {
        counter!("raft_envelope_halts_total", "cluster" => cluster.clone(), "reason" => reason.as_str())
            .absolute(*n);
    }
}

/// The `cluster` label: the cluster id as text (bytes that are not UTF-8 replaced).
fn label(cluster: &ClusterId) -> String {
    String::from_utf8_lossy(cluster.as_bytes()).into_owned()
}
