//! The apply-side decision (SPEC R2, R3) at the cutover boundary for every entry kind.
#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

mod common;

use std::sync::Arc;

use common::cipher;
use raft_envelope_core::apply::{decide, decide_into, decide_owned};
use raft_envelope_core::error::FailureReason;
use raft_envelope_core::wire::{EnvelopeHeader, Purpose, HEADER_LEN};
use raft_envelope_core::*;

const C: u64 = 100;

/// What the decision should be, written out independently of the implementation.
#[derive(Debug, PartialEq, Eq)]
enum Expect {
    Pass,
    Opened,
    Halt(FailureReason),
}

fn outcome(r: Result<Decision<'_>, FatalApplyError>) -> Expect {
    match r {
        Ok(Decision::PassThrough(_)) => Expect::Pass,
        Ok(Decision::Opened(_)) => Expect::Opened,
        Err(e) => Expect::Halt(e.reason),
    }
}

fn check(index: u64, cutover: Option<u64>, kind: EntryKind, with_unwrapper: bool, expect: Expect) {
    let c = cipher();
    let bytes = match kind {
        EntryKind::Envelope => c.seal(ProposalId(1), b"payload").unwrap(),
        _ => b"payload".to_vec(),
    };
    let unwrapper: Option<&dyn PayloadUnwrapper> = if with_unwrapper { Some(&c) } else { None };
    let got = outcome(decide(index, kind, &bytes, cutover, unwrapper));
    assert_eq!(got, expect, "index {index}, cutover {cutover:?}, {kind}, unwrapper {with_unwrapper}");
}

#[test]
fn cleartext_is_allowed_at_and_below_the_cutover_and_halts_above() {
    check(C - 1, Some(C), EntryKind::Cleartext, true, Expect::Pass);
    check(C, Some(C), EntryKind::Cleartext, true, Expect::Pass);
    check(C + 1, Some(C), EntryKind::Cleartext, true, Expect::Halt(FailureReason::CleartextAboveCutover));
    check(C + 1, Some(C), EntryKind::Cleartext, false, Expect::Halt(FailureReason::CleartextAboveCutover));
}

#[test]
fn cleartext_passes_everywhere_without_a_cutover() {
    for index in [0, 1, C - 1, C, C + 1, u64::MAX] {
        check(index, None, EntryKind::Cleartext, false, Expect::Pass);
        check(index, Some(u64::MAX), EntryKind::Cleartext, false, Expect::Pass);
    }
}

#[test]
fn envelopes_are_opened_at_every_index() {
    for cutover in [None, Some(C), Some(u64::MAX), Some(0)] {
        for index in [0, C - 1, C, C + 1, u64::MAX] {
            check(index, cutover, EntryKind::Envelope, true, Expect::Opened);
        }
    }
}

#[test]
fn envelopes_halt_without_an_unwrapper_at_every_index() {
    for cutover in [None, Some(C), Some(u64::MAX)] {
        for index in [C - 1, C, C + 1] {
            check(index, cutover, EntryKind::Envelope, false, Expect::Halt(FailureReason::NoUnwrapper));
        }
    }
}

#[test]
fn control_entries_pass_untouched_at_every_index() {
    for cutover in [None, Some(C), Some(u64::MAX), Some(0)] {
        for index in [0, C - 1, C, C + 1, u64::MAX] {
            for unwrapper in [true, false] {
                check(index, cutover, EntryKind::Control, unwrapper, Expect::Pass);
            }
        }
    }
}

#[test]
fn cutover_max_behaves_like_none() {
    for kind in [EntryKind::Cleartext, EntryKind::Envelope, EntryKind::Control] {
        for unwrapper in [true, false] {
            let c = cipher();
            let bytes = c.seal(ProposalId(1), b"p").unwrap();
            let u: Option<&dyn PayloadUnwrapper> = if unwrapper { Some(&c) } else { None };
            let a = outcome(decide(C + 1, kind, &bytes, None, u));
            let b = outcome(decide(C + 1, kind, &bytes, Some(u64::MAX), u));
            assert_eq!(a, b, "{kind} unwrapper {unwrapper}");
        }
    }
}

#[test]
fn owned_and_buffered_decisions_agree_with_the_borrowed_one_everywhere() {
    let c = cipher();
    let env = c.seal(ProposalId(1), b"payload").unwrap();
    let mut tampered = env.clone();
    tampered[HEADER_LEN] ^= 1;
    for kind in [EntryKind::Cleartext, EntryKind::Envelope, EntryKind::Control] {
        for bytes in [&env, &tampered, &b"payload".to_vec()] {
            for cutover in [None, Some(C), Some(u64::MAX)] {
                for index in [C - 1, C, C + 1] {
                    for with_unwrapper in [true, false] {
                        let u: Option<&dyn PayloadUnwrapper> = if with_unwrapper { Some(&c) } else { None };
                        let borrowed = decide(index, kind, bytes, cutover, u)
                            .map(|d| d.into_owned())
                            .map_err(|e| (e.index, e.reason, e.key_id));
                        let owned = decide_owned(index, kind, bytes.clone(), cutover, u)
                            .map_err(|e| (e.index, e.reason, e.key_id));
                        assert_eq!(borrowed, owned, "{kind} index {index} cutover {cutover:?}");
                        // A reused buffer, holding an earlier entry's longer plaintext.
                        let mut out = vec![0xee; 64];
                        let into = decide_into(index, kind, bytes, &mut out, cutover, u)
                            .map(<[u8]>::to_vec)
                            .map_err(|e| (e.index, e.reason, e.key_id));
                        assert_eq!(borrowed, into, "{kind} index {index} cutover {cutover:?}");
                        if into.is_err() {
                            // Wiped when the cipher refused, untouched when the table did.
                            assert!(
                                out.is_empty() || out == [0xee; 64],
                                "nothing of a refused entry in the buffer"
                            );
                        }
                    }
                }
            }
        }
    }
}

#[test]
fn pass_through_hands_over_the_exact_bytes() {
    let bytes = b"\x00\x01 exact bytes \xff";
    let d = decide(5, EntryKind::Cleartext, bytes, None, None).unwrap();
    assert_eq!(d, Decision::PassThrough(bytes));
}

#[test]
fn opened_entry_hands_over_the_plaintext_never_the_envelope() {
    let c = cipher();
    let env = c.seal(ProposalId(1), b"plain").unwrap();
    let d = decide(C + 1, EntryKind::Envelope, &env, Some(C), Some(&c)).unwrap();
    assert_eq!(d.into_owned(), b"plain");
}

#[test]
fn halt_error_names_index_key_reason_and_cutover() {
    let c = cipher();
    let mut env = c.seal(ProposalId(1), b"plain").unwrap();
    env[HEADER_LEN] ^= 0x10;
    let err = decide(C + 7, EntryKind::Envelope, &env, Some(C), Some(&c)).unwrap_err();
    assert_eq!(err.index, C + 7);
    assert_eq!(err.key_id, Some(KeyId(1)));
    assert_eq!(err.reason, FailureReason::AuthenticationFailed);
    assert_eq!(err.cutover, Some(C));
    assert_eq!(
        err.to_string(),
        "apply halted at log index 107 (key#1): authentication_failed (authentication failed under key#1)"
    );
}

#[test]
fn missing_unwrapper_error_still_names_the_key() {
    let env = cipher().seal(ProposalId(1), b"plain").unwrap();
    let err = decide(3, EntryKind::Envelope, &env, Some(1), None).unwrap_err();
    assert_eq!((err.reason, err.key_id), (FailureReason::NoUnwrapper, Some(KeyId(1))));
}

#[test]
fn every_failure_reason_of_the_unwrapper_halts() {
    let c = cipher();
    let good = c.seal(ProposalId(1), b"plain").unwrap();
    let mut unknown = good.clone();
    unknown[7] = 9;
    let snapshot = c.seal_for(Purpose::Snapshot, ProposalId(1), b"s").unwrap();
    let cases: [(&[u8], FailureReason); 4] = [
        (&good[..10], FailureReason::Malformed),
        (&unknown, FailureReason::UnknownKey),
        (&snapshot, FailureReason::WrongPurpose),
        (&[2u8; 60], FailureReason::UnsupportedVersion),
    ];
    for (bytes, reason) in cases {
        for index in [C - 1, C, C + 1] {
            let err = decide(index, EntryKind::Envelope, bytes, Some(C), Some(&c)).unwrap_err();
            assert_eq!(err.reason, reason);
        }
    }
}

#[test]
fn gate_reads_the_cutover_on_every_decision() {
    let cutover = Arc::new(Cutover::inert());
    let gate = ApplyGate::new(cutover.clone());
    assert!(gate.decide(C + 1, EntryKind::Cleartext, b"x").is_ok());
    cutover.set(Some(C));
    assert_eq!(
        gate.decide(C + 1, EntryKind::Cleartext, b"x").unwrap_err().reason,
        FailureReason::CleartextAboveCutover
    );
    cutover.set(None);
    assert!(gate.decide(C + 1, EntryKind::Cleartext, b"x").is_ok());
}

#[test]
fn gate_counts_outcomes_by_reason() {
    let c = Arc::new(cipher());
    let gate = ApplyGate::new(Arc::new(Some(C))).with_unwrapper(c.clone());
    let env = c.seal(ProposalId(1), b"x").unwrap();
    gate.decide(C, EntryKind::Cleartext, b"x").unwrap();
    gate.decide(C, EntryKind::Control, b"").unwrap();
    gate.decide(C + 1, EntryKind::Envelope, &env).unwrap();
    gate.decide(C + 1, EntryKind::Cleartext, b"x").unwrap_err();
    gate.decide(C + 1, EntryKind::Envelope, &env[..5]).unwrap_err();
    let stats = gate.stats();
    assert_eq!((stats.passed_through, stats.opened), (2, 1));
    assert_eq!(stats.halts.get(&FailureReason::CleartextAboveCutover), Some(&1));
    assert_eq!(stats.halts.get(&FailureReason::Malformed), Some(&1));
}

#[test]
fn halts_decided_outside_the_table_are_counted_by_the_gate() {
    let gate = ApplyGate::inert();
    let error = gate.record_halt(FatalApplyError::new(42, FailureReason::UnsealedSnapshot, Some(7)));
    assert_eq!((error.index, error.reason), (42, FailureReason::UnsealedSnapshot));
    assert_eq!(gate.stats().halts.get(&FailureReason::UnsealedSnapshot), Some(&1));
}

#[test]
fn inert_layer_passes_proposals_through_without_sealing() {
    let layer = EnvelopeLayer::inert();
    let p = layer.prepare(b"as proposed".to_vec()).unwrap();
    assert_eq!(p.kind, EntryKind::Cleartext);
    assert_eq!(p.bytes, b"as proposed");
    assert_eq!(layer.gate().decide(p.id.0, p.kind, &p.bytes).unwrap().as_bytes(), b"as proposed");
}

#[test]
fn sealing_layer_binds_the_proposal_id_and_opens_through_its_gate() {
    let c = Arc::new(cipher());
    let layer =
        EnvelopeLayer::new(ApplyGate::new(Arc::new(Some(0))).with_unwrapper(c.clone())).with_wrapper(c);
    let a = layer.prepare(b"one".to_vec()).unwrap();
    let b = layer.prepare(b"two".to_vec()).unwrap();
    assert_ne!(a.id, b.id);
    assert_eq!(EnvelopeHeader::parse(&a.bytes).unwrap().proposal_id, a.id);
    assert_eq!(layer.gate().decide(1, a.kind, &a.bytes).unwrap().as_bytes(), b"one");
    assert!(!format!("{a:?}").contains("one"));
}

#[test]
fn cleartext_is_refused_only_once_the_log_reaches_the_cutover() {
    let cutover = Arc::new(Cutover::inert());
    let layer = EnvelopeLayer::new(ApplyGate::new(cutover.clone()));
    assert_eq!(layer.cleartext_would_land_above_cutover(C + 5), None, "no cutover");
    cutover.set(Some(C));
    assert_eq!(layer.cleartext_would_land_above_cutover(C - 2), None, "the next entry lands at or below C");
    assert_eq!(layer.cleartext_would_land_above_cutover(C - 1), None, "the next entry lands at C");
    assert_eq!(layer.cleartext_would_land_above_cutover(C), Some(C), "the next entry lands above C");
    cutover.set(Some(u64::MAX));
    assert_eq!(layer.cleartext_would_land_above_cutover(u64::MAX), None, "u64::MAX is inert");
}

#[test]
fn seal_failure_is_returned_to_the_proposer() {
    let ring = Arc::new(Keyring::new()); // no active key
    let c = Arc::new(EnvelopeCipher::new(common::cluster("c"), ring));
    let layer = EnvelopeLayer::inert().with_wrapper(c);
    assert!(matches!(layer.prepare(b"x".to_vec()), Err(SealError::NoActiveKey)));
}

#[test]
fn an_unsealed_snapshot_halts_only_while_a_cutover_is_in_force() {
    let cutover = Arc::new(Cutover::inert());
    let gate = ApplyGate::new(cutover.clone());
    assert!(gate.refuse_unsealed_snapshot(9).is_none(), "inert: installed as without the layer");
    cutover.set(Some(u64::MAX));
    assert!(gate.refuse_unsealed_snapshot(9).is_none(), "u64::MAX behaves like none");
    cutover.set(Some(5));
    let halt = gate.refuse_unsealed_snapshot(9).expect("halts above a cutover");
    assert_eq!((halt.index, halt.reason, halt.cutover), (9, FailureReason::UnsealedSnapshot, Some(5)));
    assert_eq!(gate.stats().halts.get(&FailureReason::UnsealedSnapshot), Some(&1), "counted like every halt");
}

/// SPEC R9: an engine-framed barrier changes nothing at or below the cutover and halts above
/// it (`unauthenticated_barrier`), counted like every halt; inert, it never halts.
#[test]
fn engine_framed_barrier_halts_only_above_the_cutover() {
    let gate = ApplyGate::new(Arc::new(Cutover::at(10)));
    assert!(gate.refuse_unsealed_barrier(9).is_none());
    assert!(gate.refuse_unsealed_barrier(10).is_none(), "the barrier at C is the static switch-on's");
    let halt = gate.refuse_unsealed_barrier(11).expect("halts above C");
    assert_eq!(
        (halt.index, halt.reason, halt.cutover),
        (11, FailureReason::UnauthenticatedBarrier, Some(10))
    );
    assert_eq!(gate.stats().halts.get(&FailureReason::UnauthenticatedBarrier), Some(&1));
    assert!(ApplyGate::inert().refuse_unsealed_barrier(u64::MAX).is_none());
    assert!(ApplyGate::new(Arc::new(Cutover::at(u64::MAX))).refuse_unsealed_barrier(5).is_none());
}

/// The layer's own barrier is a control command: encoded, decoded, and checked like the others.
#[test]
fn barrier_control_command_round_trips() {
    let bytes = raft_envelope_core::wire::ControlCommand::Barrier.encode();
    assert_eq!(
        raft_envelope_core::wire::ControlCommand::decode(&bytes).unwrap(),
        raft_envelope_core::wire::ControlCommand::Barrier
    );
    assert_eq!(bytes[9], 0x06);
}
