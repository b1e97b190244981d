//! The whole suite against the deterministic test double: every case must pass (the key-lifecycle
//! cases are ignored: the double has no `key_lifecycle` capability).

raft_envelope_conformance::conformance_main!(raft_envelope_conformance::double::DoubleBuilder::default());
