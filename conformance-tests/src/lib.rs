#![doc = include_str!("../README.md")]
#![forbid(unsafe_code)]

use std::any::Any;
use std::fmt::Write as _;
use std::io::Write as _;
use std::panic::{self, AssertUnwindSafe};

pub mod cases;
pub mod double;
mod harness;
mod needs;
mod trace;

pub use needs::unmet;

pub use harness::{
    AppliedPayload, Capabilities, Cluster, ClusterBuilder, HarnessError, ManagedNode, NodeId, ProposeError,
    RecordingStateMachine, Response, Resubmitted, StoredEntry,
};

/// How a case ended when it did not fail (a failing case panics).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Every check of the case passed.
    Passed,
    /// The case could not run: the harness lacks a capability (the reason says which). Checks that
    /// need no engine may already have passed.
    Skipped(String),
}

/// A case: takes the builder, panics on a violation.
pub type Case<B> = fn(&B) -> Outcome;

/// How one case ended in [`run_all`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CaseResult {
    /// The case passed.
    Passed,
    /// The case was skipped, with the reason.
    Skipped(String),
    /// The case failed, with its panic message.
    Failed(String),
}

/// The outcome of every case run by [`run_all`] or [`run_named`].
#[derive(Clone, Debug, Default)]
pub struct SuiteReport {
    /// Each case's name and result, in suite order.
    pub results: Vec<(&'static str, CaseResult)>,
}

impl SuiteReport {
    /// The names of the cases that failed.
    pub fn failed(&self) -> Vec<&'static str> {
        self.results.iter().filter(|(_, r)| matches!(r, CaseResult::Failed(_))).map(|(n, _)| *n).collect()
    }

    /// The names of the cases that were skipped.
    pub fn skipped(&self) -> Vec<&'static str> {
        self.results.iter().filter(|(_, r)| matches!(r, CaseResult::Skipped(_))).map(|(n, _)| *n).collect()
    }
}

/// Every case of the suite with its name, in suite order.
pub fn all_cases<B: ClusterBuilder>() -> Vec<(&'static str, Case<B>)> {
    __cases!(@list table [B])
}

/// How many captured log lines a failing case prints with its failure.
const FAILURE_LOG_LINES: usize = 400;

/// Runs every case as its own test through `libtest-mimic`, with `cargo test`'s usual output,
/// arguments (`--list`, filters, `--ignored`, `--test-threads`, ...) and summary:
///
/// - a case the harness lacks a capability for is **ignored** (and says which capability it
///   needs), never reported as passed;
/// - a case that fails prints its panic message and the log lines captured while it ran (this
///   project's crates at every level, everything else at INFO and above): engine logs are shown
///   only for failing cases, or live for every case with `RAFT_ENVELOPE_SUITE_LOG=1`;
/// - cases run one at a time unless `--test-threads` says otherwise (each builds its own
///   cluster, and one at a time keeps each failure's log its own).
///
/// Used by [`conformance_main!`]; returns the process's exit code.
pub fn run_suite<B>(builder: B) -> std::process::ExitCode
where
    B: ClusterBuilder + Send + Sync + 'static,
{
    let traces = trace::install();
    let mut args = libtest_mimic::Arguments::from_args();
    if args.test_threads.is_none() {
        args.test_threads = Some(1);
    }
    let caps = builder.capabilities();
    let builder = std::sync::Arc::new(builder);
    let mut ignored = Vec::new();
    let trials = all_cases::<B>()
        .into_iter()
        .map(|(name, case)| {
            let mut why = needs::unmet(name, &caps);
            if why.is_none() && !traces && needs::needs_traces(name) {
                why = Some(
                    "needs the suite's tracing subscriber (another global subscriber is installed)".into(),
                );
            }
            if let Some(why) = &why {
                ignored.push(format!("{name}: {why}"));
            }
            let builder = builder.clone();
            libtest_mimic::Trial::test(name, move || run_trial(name, builder.as_ref(), case))
                .with_ignored_flag(why.is_some())
        })
        .collect();
    if !ignored.is_empty() && !args.list {
        let _ = writeln!(std::io::stderr(), "ignored for this harness:\n  {}", ignored.join("\n  "));
    }
    libtest_mimic::run(&args, trials).exit_code()
}

/// Runs one case for [`run_suite`]: passed, or failed with its panic message and its log.
fn run_trial<B: ClusterBuilder>(name: &str, builder: &B, case: Case<B>) -> Result<(), libtest_mimic::Failed> {
    let mark = trace::mark();
    tracing::info!("=== case {name}");
    let result = panic::catch_unwind(AssertUnwindSafe(|| case(builder)));
    let failure = match result {
        Ok(Outcome::Passed) => return Ok(()),
        Ok(Outcome::Skipped(why)) => format!(
            "the case skipped itself although the harness declares what it needs ({why}): \
             the suite's requirement table is out of date"
        ),
        Err(payload) => panic_text(payload),
    };
    let lines = trace::since(mark);
    let shown = &lines[lines.len().saturating_sub(FAILURE_LOG_LINES)..];
    let mut message =
        format!("{failure}\n--- log of {name} (last {} of {} lines) ---\n", shown.len(), lines.len());
    for line in shown {
        let _ = writeln!(message, "{:>5} {}", line.level, line.text);
    }
    Err(message.into())
}

fn panic_text(payload: Box<dyn Any + Send>) -> String {
    match payload.downcast::<String>() {
        Ok(s) => *s,
        Err(payload) => payload.downcast::<&str>().map_or_else(|_| "panic".to_owned(), |s| (*s).to_owned()),
    }
}

/// Runs the named cases (every case when `names` is empty), catching failures, and reports each.
/// Unknown names are ignored.
pub fn run_named<B: ClusterBuilder>(builder: &B, names: &[&str]) -> SuiteReport {
    trace::install();
    let results = all_cases::<B>()
        .into_iter()
        .filter(|(name, _)| names.is_empty() || names.contains(name))
        .map(|(name, case)| {
            tracing::info!("=== case {name}");
            let result = match panic::catch_unwind(AssertUnwindSafe(|| case(builder))) {
                Ok(Outcome::Passed) => CaseResult::Passed,
                Ok(Outcome::Skipped(why)) => CaseResult::Skipped(why),
                Err(payload) => CaseResult::Failed(panic_text(payload)),
            };
            (name, result)
        })
        .collect();
    SuiteReport { results }
}

/// Runs every case, catching failures, and reports each.
pub fn run_all<B: ClusterBuilder>(builder: &B) -> SuiteReport {
    run_named(builder, &[])
}

/// The `main` of a conformance test target: runs every case against the [`ClusterBuilder`]
/// the expression evaluates to, each as its own test ([`run_suite`]). The target needs
/// `harness = false` (the suite is its own test runner, so skipped cases show as ignored):
///
/// ```toml
/// [[test]]
/// name = "conformance"
/// harness = false
/// ```
///
/// ```
/// # mod hidden {
/// raft_envelope_conformance::conformance_main!(raft_envelope_conformance::double::DoubleBuilder::default());
/// # }
/// # fn main() {}
/// ```
#[macro_export]
macro_rules! conformance_main {
    ($builder:expr) => {
        /// Built only by the standard test harness: fails, saying what to fix (with
        /// `harness = false` this test does not exist and `main` runs the suite).
        #[test]
        fn conformance_main_needs_harness_false() {
            panic!("conformance_main! is a test target's main: set `harness = false` for this target in Cargo.toml");
        }

        #[allow(dead_code)] // Reason: unused only under the standard harness, which the test above reports.
        fn main() -> std::process::ExitCode {
            $crate::run_suite($builder)
        }
    };
}

/// The one list of cases, in suite order; used by [`all_cases`].
#[doc(hidden)]
#[macro_export]
macro_rules! __cases {
    (@list $mode:ident [$($arg:tt)*]) => {
        $crate::__cases! { @$mode [$($arg)*]
            // R1
            inert_passthrough,
            inert_stored_log_unchanged,
            // R2
            cutover_boundary_minus_one,
            cutover_boundary_equal,
            cutover_boundary_plus_one,
            sealed_below_cutover_is_opened,
            cutover_max_is_inert,
            control_entries_untouched_above_cutover,
            cleartext_lookalike_passes_unchanged,
            envelope_without_unwrapper_halts_at_any_index,
            // R3
            tamper_each_bit_halts,
            truncated_envelope_halts,
            unknown_key_halts,
            destroyed_key_halts,
            wrong_purpose_halts,
            wrong_cluster_halts,
            cleartext_above_cutover_halts,
            envelope_rewritten_as_cleartext_halts,
            cutover_without_unwrapper_halts,
            halt_does_not_advance_applied,
            halt_is_sticky_across_restart,
            repaired_replica_resumes_and_converges,
            one_replica_halt_others_continue,
            // R4
            no_plaintext_in_stored_log,
            seal_failure_refused_not_appended,
            cutover_under_concurrent_load_never_halts,
            leader_change_during_cutover_never_halts,
            forwarded_proposals_are_sealed_and_never_halt,
            responses_identical_with_and_without_layer,
            // R5
            known_answer_vectors,
            decoder_total_on_arbitrary_input,
            purpose_confusion_rejected,
            cluster_confusion_rejected,
            // R6
            retired_key_opens_never_seals,
            no_key_bytes_in_debug_or_errors,
            nonce_unique_across_replicas_and_restarts,
            seal_budget_enforced,
            // R8
            halt_emits_error_event,
            counters_track_seals_opens_failures,
            // Key lifecycle through the log
            switch_on_through_control_entries_under_load_never_halts,
            rotation_under_load_old_entries_still_open,
            replica_without_kek_halts_at_install_and_resumes,
            control_entries_never_reach_the_state_machine,
            layer_state_identical_on_all_replicas,
            member_joins_by_snapshot_after_compaction_and_opens_everything,
            destroy_refused_while_needed_allowed_after_compaction,
            // R9: nothing above the cutover on trust
            barrier_rewrite_on_one_replica_halts_it,
            duplicate_submission_applies_once_and_names_the_first_index,
            proposal_id_reaches_the_application,
            replayed_envelope_on_one_replica_halts_it_at_the_next_checkpoint,
            noop_rewrite_on_one_replica_halts_it_at_the_next_checkpoint,
            checkpoints_never_halt_correct_replicas_under_load,
            // R11: lifecycle is one behaviour on every engine
            retire_makes_key_decrypt_only_everywhere,
        }
    };
    (@table [$b:ty] $($case:ident,)+) => {
        vec![$((stringify!($case), $crate::cases::$case::<$b> as $crate::Case<$b>)),+]
    };
}
