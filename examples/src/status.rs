//! What `GET /status` says about the layer, the same on both engines.

use raft_envelope_core::lifecycle::KeyState;
use raft_envelope_core::{FatalApplyError, LayerState};
use serde_json::{json, Value};

/// The encryption status of `state`: keys (state, KEK, sealed entries, the share of the sealing
/// budget left), the cutover, the active key, checkpoint results. Ids and counts only.
pub fn encryption_json(state: &LayerState) -> Value {
    let status = state.status();
    let limit = state.seal_limit().max(1) as f64;
    let keys: Vec<Value> = status
        .keys
        .iter()
        .map(|k| {
            let left = status.budget_remaining.get(&k.key_id).copied().unwrap_or(0);
            json!({
                "key_id": k.key_id.0,
                "state": match k.state {
                    KeyState::Active => "active",
                    KeyState::DecryptOnly => "decrypt-only",
                    KeyState::Destroyed => "destroyed",
                    _ => "other",
                },
                "algorithm": k.algorithm.to_string(),
                "kek_id": k.kek_id.to_string(),
                "installed_at": k.installed_at,
                "sealed_entries": k.sealed_entries,
                "budget_left": if k.state == KeyState::Destroyed { 0.0 } else { left as f64 / limit },
            })
        })
        .collect();
    let results = state.local().checkpoint_results();
    json!({
        "cutover": status.cutover,
        "active_key": status.active_key.map(|k| k.0),
        "applied_index": status.applied_index,
        "rotation_due": status.rotation_due,
        "keys": keys,
        "checkpoints": {
            "through": state.checkpointed_through(),
            "verified": results.verified,
            "unverifiable": results.unverifiable,
            "diverged": results.diverged,
        },
    })
}

/// A halt: where, why (the stable reason label), under which key.
pub fn halt_json(halt: &FatalApplyError) -> Value {
    json!({
        "index": halt.index,
        "reason": halt.reason.as_str(),
        "key_id": halt.key_id.map(|k| k.0),
        "cutover": halt.cutover,
        "detail": halt.to_string(),
    })
}
