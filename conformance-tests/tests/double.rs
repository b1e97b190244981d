//! The whole suite against the deterministic test double: every case must pass (the key-lifecycle
//! cases skip: the double has no `key_lifecycle` capability).

raft_envelope_conformance::conformance_suite!(raft_envelope_conformance::double::DoubleBuilder::default());
