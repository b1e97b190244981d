//! What each case needs from a harness, declared ahead of running it, so that a case a harness
//! cannot run is reported as *ignored* by the test runner ([`run_suite`](crate::run_suite)),
//! never as passed. `tests/capabilities.rs` checks this table against the skips the cases
//! report themselves.

use crate::harness::Capabilities;

/// One way to satisfy a case: every named capability.
type AllOf = &'static [&'static str];

/// What a case needs: any one of the listed sets (an empty list: nothing).
fn requirement(case: &str) -> &'static [AllOf] {
    const INJECT: &[AllOf] = &[&["raw_log", "restart"], &["unchecked_append"]];
    match case {
        "inert_stored_log_unchanged"
        | "no_plaintext_in_stored_log"
        | "nonce_unique_across_replicas_and_restarts" => &[&["raw_log"]],
        "control_entries_untouched_above_cutover" | "leader_change_during_cutover_never_halts" => {
            &[&["leader_change"]]
        }
        "envelope_without_unwrapper_halts_at_any_index"
        | "unknown_key_halts"
        | "destroyed_key_halts"
        | "cutover_without_unwrapper_halts"
        | "repaired_replica_resumes_and_converges"
        | "one_replica_halt_others_continue"
        | "retired_key_opens_never_seals"
        | "no_key_bytes_in_debug_or_errors"
        | "halt_emits_error_event"
        | "counters_track_seals_opens_failures" => &[&["restart"]],
        "tamper_each_bit_halts"
        | "envelope_rewritten_as_cleartext_halts"
        | "known_answer_vectors"
        | "barrier_rewrite_on_one_replica_halts_it" => &[&["raw_log", "restart"]],
        "truncated_envelope_halts"
        | "wrong_purpose_halts"
        | "wrong_cluster_halts"
        | "halt_does_not_advance_applied"
        | "decoder_total_on_arbitrary_input"
        | "cleartext_above_cutover_halts" => INJECT,
        "halt_is_sticky_across_restart" => &[&["raw_log", "restart"], &["restart", "unchecked_append"]],
        "forwarded_proposals_are_sealed_and_never_halt" => &[&["follower_proposals"]],
        "switch_on_through_control_entries_under_load_never_halts"
        | "rotation_under_load_old_entries_still_open"
        | "control_entries_never_reach_the_state_machine"
        | "layer_state_identical_on_all_replicas"
        | "retire_makes_key_decrypt_only_everywhere" => &[&["key_lifecycle"]],
        "replica_without_kek_halts_at_install_and_resumes" => &[&["key_lifecycle", "leader_change"]],
        "member_joins_by_snapshot_after_compaction_and_opens_everything"
        | "destroy_refused_while_needed_allowed_after_compaction" => &[&["key_lifecycle", "snapshots"]],
        "duplicate_submission_applies_once_and_names_the_first_index" => &[&["key_lifecycle", "resubmit"]],
        "proposal_id_reaches_the_application" => &[&["key_lifecycle", "apply_context"]],
        "replayed_envelope_on_one_replica_halts_it_at_the_next_checkpoint"
        | "noop_rewrite_on_one_replica_halts_it_at_the_next_checkpoint" => {
            &[&["key_lifecycle", "raw_log", "hold_commit", "checkpoints"]]
        }
        "checkpoints_never_halt_correct_replicas_under_load" => {
            &[&["key_lifecycle", "checkpoints", "leader_change", "snapshots"]]
        }
        _ => &[],
    }
}

fn has(caps: &Capabilities, name: &str) -> bool {
    match name {
        "raw_log" => caps.raw_log,
        "restart" => caps.restart,
        "leader_change" => caps.leader_change,
        "unchecked_append" => caps.unchecked_append,
        "follower_proposals" => caps.follower_proposals,
        "hold_forwarded" => caps.hold_forwarded,
        "key_lifecycle" => caps.key_lifecycle,
        "snapshots" => caps.snapshots,
        "hold_commit" => caps.hold_commit,
        "checkpoints" => caps.checkpoints,
        "resubmit" => caps.resubmit,
        "apply_context" => caps.apply_context,
        _ => false,
    }
}

/// Why `case` cannot run with `caps` (the capabilities it needs, as the reason shown), or
/// `None` when it can.
pub fn unmet(case: &str, caps: &Capabilities) -> Option<String> {
    let options = requirement(case);
    if options.is_empty() || options.iter().any(|all| all.iter().all(|c| has(caps, c))) {
        return None;
    }
    let text: Vec<String> = options
        .iter()
        .map(|all| all.iter().map(|c| format!("`{c}`")).collect::<Vec<_>>().join(" + "))
        .collect();
    Some(format!("needs capability {}", text.join(" or ")))
}

/// The cases that read the suite's own trace capture (they cannot run when another global
/// `tracing` subscriber was installed first).
pub(crate) fn needs_traces(case: &str) -> bool {
    matches!(case, "no_key_bytes_in_debug_or_errors" | "halt_emits_error_event")
}
