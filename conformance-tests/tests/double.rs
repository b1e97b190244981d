//! The whole suite against the deterministic test double: every case must pass.

raft_envelope_conformance::conformance_suite!(raft_envelope_conformance::double::DoubleBuilder::default());
