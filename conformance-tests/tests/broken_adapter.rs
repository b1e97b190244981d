//! SPEC R7: the suite can fail. Each deliberately broken variant of the test double must fail
//! named cases, among them the case written for exactly that bug.

use raft_envelope_conformance::double::{DoubleBuilder, Fault};
use raft_envelope_conformance::{run_all, CaseResult};

/// For each broken variant, cases that must fail on it.
fn expected(fault: Fault) -> &'static [&'static str] {
    match fault {
        Fault::SkipFailingEntry => &["halt_does_not_advance_applied", "cleartext_above_cutover_halts"],
        Fault::CiphertextAsPlaintext => {
            &["sealed_below_cutover_is_opened", "envelope_without_unwrapper_halts_at_any_index"]
        }
        Fault::CiphertextOnFailure => &["tamper_each_bit_halts", "wrong_cluster_halts"],
        Fault::AdvanceAppliedOnFailure => &["halt_does_not_advance_applied", "cutover_boundary_plus_one"],
        Fault::ForgetHaltOnRestart => &["halt_is_sticky_across_restart"],
        Fault::OpenOnlyAboveCutover => &["sealed_below_cutover_is_opened"],
        Fault::SniffsFraming => &["cleartext_lookalike_passes_unchanged", "inert_passthrough"],
        _ => &[],
    }
}

#[test]
fn broken_adapter_is_caught() {
    for fault in Fault::BROKEN {
        let report = run_all(&DoubleBuilder::with_fault(fault));
        let failed = report.failed();
        println!(
            "{fault:?}: {} of {} cases failed: {}",
            failed.len(),
            report.results.len(),
            failed.join(", ")
        );
        assert!(!failed.is_empty(), "the suite did not catch the broken adapter {fault:?}");
        for case in expected(fault) {
            assert!(failed.contains(case), "{case} must fail on the broken adapter {fault:?}");
        }
    }
    let correct = run_all(&DoubleBuilder::default());
    let failed: Vec<_> = correct.results.iter().filter(|(_, r)| matches!(r, CaseResult::Failed(_))).collect();
    assert!(failed.is_empty(), "the correct double must pass every case: {failed:?}");
    // The double has every capability but `key_lifecycle`: only the lifecycle cases may skip.
    let skipped: Vec<_> = correct
        .results
        .iter()
        .filter(|(_, r)| matches!(r, CaseResult::Skipped(why) if !why.contains("key_lifecycle")))
        .collect();
    assert!(skipped.is_empty(), "the double has every other capability: {skipped:?}");
}
