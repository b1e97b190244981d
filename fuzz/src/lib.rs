//! The checks behind raft-envelope's fuzz targets (`FUZZING.md`).
//!
//! Each function here takes untrusted input exactly as it reaches the library (bytes from a log,
//! a snapshot, the network or a file; or a structured history of entries) and panics when an
//! invariant breaks. `fuzz_targets/*.rs` hand libFuzzer's inputs to them; `tests/corpora.rs`
//! replays every committed corpus and regression input through them on the stable toolchain, so a
//! fuzz finding, once its input is committed under `regressions/`, is a test for ever.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod bytes;
pub mod fixtures;
pub mod history;
pub mod seeds;

/// Every target: its name (the file under `fuzz_targets/`, the folder under `corpus/` and
/// `regressions/`) and its check.
pub const TARGETS: &[(&str, fn(&[u8]))] = &[
    ("envelope_header", bytes::envelope_header),
    ("envelope_open", bytes::envelope_open),
    ("control_entry", bytes::control_entry),
    ("layer_snapshot", bytes::layer_snapshot),
    ("integrity_state", bytes::integrity_state),
    ("snapshot_frame", bytes::snapshot_frame),
    ("raftrs_entry", bytes::raftrs_entry),
    ("openraft_payload", bytes::openraft_payload),
    ("kek_file", bytes::kek_file),
    ("service_wire", bytes::service_wire),
    ("inspect", bytes::inspect),
    ("apply_history", history::run_bytes),
];
