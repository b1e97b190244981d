//! The raft-envelope conformance suite against a real 3-node openraft cluster in one process,
//! with the kit a user's own harness uses (`raft_envelope_openraft::testing::suite`): every
//! case runs against the project's key-value demo application behind the layer.

use raft_envelope_openraft::testing::{suite::SuiteBuilder, KvApp};

raft_envelope_conformance::conformance_main!(SuiteBuilder::new(KvApp::default));
