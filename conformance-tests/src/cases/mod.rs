//! Every case of the suite, one public function each, grouped by SPEC rule.
//!
//! Each case builds its own cluster through the [`ClusterBuilder`](crate::ClusterBuilder), runs
//! alone, panics on a violation (so `#[test]` reports it) and returns [`Outcome`](crate::Outcome):
//! passed, or skipped with the reason when the harness lacks a capability.
//! [`conformance_suite!`](crate::conformance_suite) expands one `#[test]` per case.

mod support;

pub mod cutover;
pub mod envelope;
pub mod fail_closed;
pub mod inert;
pub mod integrity;
pub mod keys;
pub mod lifecycle;
pub mod observability;
pub mod proposals;

pub use cutover::{
    cleartext_lookalike_passes_unchanged, control_entries_untouched_above_cutover, cutover_boundary_equal,
    cutover_boundary_minus_one, cutover_boundary_plus_one, cutover_max_is_inert,
    envelope_without_unwrapper_halts_at_any_index, sealed_below_cutover_is_opened,
};
pub use envelope::{
    cluster_confusion_rejected, decoder_total_on_arbitrary_input, known_answer_vectors,
    purpose_confusion_rejected,
};
pub use fail_closed::{
    barrier_rewrite_on_one_replica_halts_it, cleartext_above_cutover_halts, cutover_without_unwrapper_halts,
    destroyed_key_halts, envelope_rewritten_as_cleartext_halts, halt_does_not_advance_applied,
    halt_is_sticky_across_restart, one_replica_halt_others_continue, repaired_replica_resumes_and_converges,
    tamper_each_bit_halts, truncated_envelope_halts, unknown_key_halts, wrong_cluster_halts,
    wrong_purpose_halts,
};
pub use inert::{inert_passthrough, inert_stored_log_unchanged};
pub use integrity::{
    checkpoints_never_halt_correct_replicas_under_load,
    duplicate_submission_applies_once_and_names_the_first_index,
    noop_rewrite_on_one_replica_halts_it_at_the_next_checkpoint, proposal_id_reaches_the_application,
    replayed_envelope_on_one_replica_halts_it_at_the_next_checkpoint,
};
pub use keys::{
    no_key_bytes_in_debug_or_errors, nonce_unique_across_replicas_and_restarts,
    retired_key_opens_never_seals, seal_budget_enforced,
};
pub use lifecycle::{
    control_entries_never_reach_the_state_machine, destroy_refused_while_needed_allowed_after_compaction,
    layer_state_identical_on_all_replicas, member_joins_by_snapshot_after_compaction_and_opens_everything,
    replica_without_kek_halts_at_install_and_resumes, retire_makes_key_decrypt_only_everywhere,
    rotation_under_load_old_entries_still_open, switch_on_through_control_entries_under_load_never_halts,
};
pub use observability::{counters_track_seals_opens_failures, halt_emits_error_event};
pub use proposals::{
    cutover_under_concurrent_load_never_halts, forwarded_proposals_are_sealed_and_never_halt,
    leader_change_during_cutover_never_halts, no_plaintext_in_stored_log,
    responses_identical_with_and_without_layer, seal_failure_refused_not_appended,
};
