//! Replays every committed corpus and regression input through its target's check, on the stable
//! toolchain: a fuzz finding committed under `regressions/<target>/` is a test from then on.
//! `WRITE_SEEDS=1` writes each target's seeds to `corpus/<target>/seed-<n>` (run once when a
//! target or a format changes).

use std::fs;
use std::path::{Path, PathBuf};

use raft_envelope_fuzz::history::{self, Step};
use raft_envelope_fuzz::seeds::seeds;
use raft_envelope_fuzz::TARGETS;

fn dir(kind: &str, target: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(kind).join(target)
}

fn inputs(kind: &str, target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let Ok(entries) = fs::read_dir(dir(kind, target)) else { return Vec::new() };
    let mut out: Vec<_> = entries
        .map(|e| e.expect("a corpus entry").path())
        .filter(|p| p.is_file() && p.file_name().is_some_and(|n| n != ".gitkeep"))
        .map(|p| {
            let bytes = fs::read(&p).expect("read a corpus input");
            (p, bytes)
        })
        .collect();
    out.sort();
    out
}

#[test]
fn every_target_has_a_fuzz_target_and_a_committed_corpus() {
    for (name, _) in TARGETS {
        let target = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz_targets").join(format!("{name}.rs"));
        assert!(target.is_file(), "no fuzz target file for {name}");
        assert!(!inputs("corpus", name).is_empty(), "no committed corpus for {name}");
    }
}

#[test]
fn every_committed_corpus_and_regression_input_passes_its_check() {
    let mut replayed = 0;
    for (name, check) in TARGETS {
        for kind in ["corpus", "regressions"] {
            for (path, bytes) in inputs(kind, name) {
                let outcome = std::panic::catch_unwind(|| check(&bytes));
                assert!(outcome.is_ok(), "{name}: {} fails its check", path.display());
                replayed += 1;
            }
        }
    }
    eprintln!("{replayed} committed inputs replayed");
}

#[test]
fn every_seed_passes_its_check() {
    let write = std::env::var_os("WRITE_SEEDS").is_some();
    for (name, check) in TARGETS {
        let seeds = seeds(name);
        assert!(!seeds.is_empty(), "{name} has no seeds");
        for (i, seed) in seeds.iter().enumerate() {
            check(seed);
            if write {
                fs::create_dir_all(dir("corpus", name)).expect("corpus dir");
                fs::write(dir("corpus", name).join(format!("seed-{i}")), seed).expect("write a seed");
            }
        }
    }
}

#[test]
fn a_history_encodes_to_bytes_that_read_back_as_it() {
    for steps in history::seed_histories() {
        let bytes = history::encode_steps(&steps);
        let mut input = bytes.as_slice();
        let mut read = Vec::new();
        while let Some(step) = Step::decode(&mut input) {
            read.push(step);
        }
        assert_eq!(read, steps);
    }
}

#[test]
fn the_seed_histories_switch_on_rotate_and_destroy_without_a_halt() {
    let [switch_on, rotation, _] = history::seed_histories().try_into().expect("three seed histories");
    let on = history::run(switch_on);
    assert_eq!(on.halted, None);
    assert!(on.cutover.is_some(), "the switch-on enforced a cutover: {on:?}");
    assert!(on.applied.iter().all(|&a| a == on.log_len), "every replica applied the whole log: {on:?}");
    let rotated = history::run(rotation);
    assert_eq!(rotated.halted, None);
    assert!(rotated.keys.contains(&(1, "Destroyed".into())), "key 1 destroyed: {rotated:?}");
    assert!(rotated.keys.contains(&(2, "Active".into())), "key 2 active: {rotated:?}");
}

#[test]
fn a_tampered_entry_above_the_cutover_halts_every_replica_there() {
    let [_, rotation, attacked] = history::seed_histories().try_into().expect("three seed histories");
    let clean_len = history::run(rotation).log_len;
    let summary = history::run(attacked);
    assert_eq!(summary.halted, Some(clean_len + 1), "{summary:?}");
    assert!(summary.applied.iter().all(|&a| a == clean_len), "{summary:?}");
}

#[test]
#[ignore = "prints one input's history; run with INPUT=path"]
fn print_history() {
    let bytes = fs::read(std::env::var("INPUT").expect("INPUT=path")).expect("read INPUT");
    let mut input = bytes.as_slice();
    while let Some(step) = Step::decode(&mut input) {
        eprintln!("{step:?}");
    }
    history::run_bytes(&bytes);
}
