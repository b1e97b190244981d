//! The layer's counters through the `metrics` facade: what an exporter sees after `export`.
#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

mod common;

use metrics_util::debugging::{DebugValue, DebuggingRecorder};
use metrics_util::MetricKind;
use raft_envelope_core::apply::EntryRecord;
use raft_envelope_core::provider::{FileKekProvider, KekId};
use raft_envelope_core::wire::ControlCommand;
use raft_envelope_core::{Algorithm, EntryKind, KeyId, LayerState, PayloadWrapper, ProposalId, SecretKey};

fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(f)
}

type Series = (MetricKind, String, Vec<(String, String)>, f64);

/// Every series the recorder holds: (kind, name, sorted labels, value).
fn series(recorder: &DebuggingRecorder) -> Vec<Series> {
    recorder
        .snapshotter()
        .snapshot()
        .into_vec()
        .into_iter()
        .map(|(key, _, _, value)| {
            let (kind, key) = key.into_parts();
            let mut labels: Vec<_> =
                key.labels().map(|l| (l.key().to_owned(), l.value().to_owned())).collect();
            labels.sort();
            let value = match value {
                DebugValue::Counter(n) => n as f64,
                DebugValue::Gauge(g) => g.into_inner(),
                DebugValue::Histogram(_) => f64::NAN,
            };
            (kind, key.name().to_owned(), labels, value)
        })
        .collect()
}

fn value_of(all: &[Series], name: &str, label: Option<(&str, &str)>) -> Option<(MetricKind, f64)> {
    all.iter()
        .find(|(_, n, labels, _)| {
            n == name && label.map_or(true, |(k, v)| labels.iter().any(|(lk, lv)| lk == k && lv == v))
        })
        .map(|(kind, _, _, v)| (*kind, *v))
}

#[test]
fn export_shows_seals_opens_halts_budget_and_checkpoint_results() {
    let provider =
        FileKekProvider::from_key(KekId::new("kek-1").unwrap(), SecretKey::from_bytes([5; 32])).unwrap();
    let state = LayerState::new(common::cluster("orders"));
    let install = block_on(state.generate_install(KeyId(1), Algorithm::Aes256Gcm, &provider)).unwrap();
    state.apply_control(1, &state.encode_entry(ProposalId(1), &install).unwrap()).unwrap();
    state.apply_control(2, &ControlCommand::PromoteKey { key_id: KeyId(1) }.encode()).unwrap();
    state.apply_control(3, &ControlCommand::Enforce.encode()).unwrap();
    let gate = raft_envelope_core::ApplyGate::new(state.cutover_source())
        .with_unwrapper(std::sync::Arc::new(state.cipher()));
    let envelope = state.cipher().seal(ProposalId(7), b"secret payload").unwrap();
    gate.decide(4, EntryKind::Envelope, &envelope).unwrap();
    state.admit(4, EntryRecord::Envelope(&envelope));
    let checkpoint = state.checkpoint_now().unwrap();
    state.apply_control(5, &state.encode_entry(ProposalId(2), &checkpoint).unwrap()).unwrap();
    let mut tampered = envelope.clone();
    *tampered.last_mut().unwrap() ^= 1;
    let _ = gate.decide(6, EntryKind::Envelope, &tampered).unwrap_err();

    let recorder = DebuggingRecorder::new();
    metrics::with_local_recorder(&recorder, || raft_envelope_core::metrics::export(&state, &gate));
    let all = series(&recorder);
    let key1 = Some(("key_id", "1"));
    let counter = |name, label| match value_of(&all, name, label) {
        Some((MetricKind::Counter, v)) => v,
        other => panic!("{name} {label:?}: {other:?}"),
    };
    let gauge = |name, label| match value_of(&all, name, label) {
        Some((MetricKind::Gauge, v)) => v,
        other => panic!("{name} {label:?}: {other:?}"),
    };
    // The checkpoint entry and the envelope were sealed here; the gate opened the envelope.
    assert_eq!(counter("raft_envelope_seals_total", key1), 2.0);
    assert!(counter("raft_envelope_opens_total", key1) >= 1.0);
    assert_eq!(counter("raft_envelope_entries_opened_total", None), 1.0);
    assert_eq!(counter("raft_envelope_halts_total", Some(("reason", "authentication_failed"))), 1.0);
    assert!(gauge("raft_envelope_key_budget_remaining", key1) > 0.0);
    let ratio = gauge("raft_envelope_key_budget_remaining_ratio", key1);
    assert!(ratio > 0.99 && ratio < 1.0, "two seals of 2^32 used: {ratio}");
    assert_eq!(counter("raft_envelope_checkpoints_total", Some(("result", "verified"))), 1.0);
    assert_eq!(counter("raft_envelope_checkpoints_total", Some(("result", "diverged"))), 0.0);
    assert_eq!(gauge("raft_envelope_cutover_index", None), 3.0);
    assert_eq!(gauge("raft_envelope_active_key", None), 1.0);
    assert_eq!(gauge("raft_envelope_checkpointed_through", None), 4.0);
    for (_, name, labels, _) in &all {
        assert!(labels.iter().any(|(k, v)| k == "cluster" && v == "orders"), "{name} names its cluster");
        assert!(name.starts_with("raft_envelope_"), "{name}");
    }
}
