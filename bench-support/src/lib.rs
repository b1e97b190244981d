//! Runs the same write workload against a cluster with the envelope layer off and one with it on,
//! interleaved round by round in one process, so machine noise hits both sides alike.
//!
//! Criterion runs one benchmark after the other, which on a shared machine lets a burst of load
//! land on one side only; the end-to-end benches therefore use this runner and report the on/off
//! ratio per round (its median) next to throughput and latency percentiles.
#![forbid(unsafe_code)]

use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant};

/// A running cluster a bench writes to. `propose` blocks until the write is applied on the
/// leader and its response is back (an async engine blocks on its runtime).
pub trait BenchCluster: Sync {
    /// Proposes `payload` and waits for its response.
    ///
    /// # Errors
    /// A description of the failure; the bench aborts on it.
    fn propose(&self, payload: Vec<u8>) -> Result<(), String>;
}

/// One workload: `writers` concurrent clients proposing payloads of `payload_len` bytes.
#[derive(Clone, Copy, Debug)]
pub struct Workload {
    /// Concurrent writers.
    pub writers: usize,
    /// Bytes per proposal.
    pub payload_len: usize,
    /// Proposals per round (split across the writers).
    pub proposals_per_round: usize,
    /// Rounds per side; rounds alternate off, on, on, off, ...
    pub rounds: usize,
}

/// Measurements of one side (off or on) of a workload.
#[derive(Clone, Debug, Default)]
pub struct Side {
    /// Proposals per second of each round.
    pub throughput: Vec<f64>,
    /// Every proposal's latency, from the call to the applied response.
    pub latencies: Vec<Duration>,
}

impl Side {
    /// Median proposals per second over the rounds.
    pub fn median_throughput(&self) -> f64 {
        median(&self.throughput)
    }

    /// Latency percentile `p` (0 to 100).
    pub fn latency(&self, p: f64) -> Duration {
        let mut sorted = self.latencies.clone();
        sorted.sort_unstable();
        if sorted.is_empty() {
            return Duration::ZERO;
        }
        let rank = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
        sorted[rank.min(sorted.len() - 1)]
    }
}

/// The result of one workload: both sides and the per-round on/off throughput ratios.
#[derive(Clone, Debug)]
pub struct Comparison {
    /// The workload.
    pub workload: Workload,
    /// Layer off.
    pub off: Side,
    /// Layer on.
    pub on: Side,
    /// on/off throughput of each pair of adjacent rounds.
    pub ratios: Vec<f64>,
}

impl Comparison {
    /// Median of the per-round on/off throughput ratios.
    pub fn ratio(&self) -> f64 {
        median(&self.ratios)
    }
}

fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// Runs one round on `cluster`, returning proposals per second and the latencies.
fn round(cluster: &dyn BenchCluster, w: &Workload, seq: &AtomicUsize) -> (f64, Vec<Duration>) {
    let per_writer = w.proposals_per_round.div_ceil(w.writers);
    let start = Instant::now();
    let latencies: Vec<Duration> = thread::scope(|s| {
        let handles: Vec<_> = (0..w.writers)
            .map(|_| {
                s.spawn(move || {
                    let mut lat = Vec::with_capacity(per_writer);
                    for _ in 0..per_writer {
                        let n = seq.fetch_add(1, Ordering::Relaxed);
                        let mut payload = vec![b'x'; w.payload_len];
                        let tag = format!("k{n}=");
                        let len = tag.len().min(payload.len());
                        payload[..len].copy_from_slice(&tag.as_bytes()[..len]);
                        let t = Instant::now();
                        if let Err(e) = cluster.propose(payload) {
                            panic!("bench proposal failed: {e}");
                        }
                        lat.push(t.elapsed());
                    }
                    lat
                })
            })
            .collect();
        handles.into_iter().flat_map(|h| h.join().unwrap_or_default()).collect()
    });
    let elapsed = start.elapsed().as_secs_f64();
    (latencies.len() as f64 / elapsed, latencies)
}

/// Runs `workload` on both clusters, alternating sides round by round (off, on, on, off, ...),
/// after one untimed warm-up round on each.
pub fn compare(off: &dyn BenchCluster, on: &dyn BenchCluster, workload: Workload) -> Comparison {
    let seq = AtomicUsize::new(0);
    let warm = Workload { proposals_per_round: workload.proposals_per_round / 4 + 1, ..workload };
    round(off, &warm, &seq);
    round(on, &warm, &seq);
    let mut result = Comparison { workload, off: Side::default(), on: Side::default(), ratios: Vec::new() };
    for r in 0..workload.rounds {
        let order: [(bool, &dyn BenchCluster); 2] =
            if r % 2 == 0 { [(false, off), (true, on)] } else { [(true, on), (false, off)] };
        let mut pair = [0.0; 2];
        for (is_on, cluster) in order {
            let (tput, lat) = round(cluster, &workload, &seq);
            let side = if is_on { &mut result.on } else { &mut result.off };
            side.throughput.push(tput);
            side.latencies.extend(lat);
            pair[usize::from(is_on)] = tput;
        }
        result.ratios.push(pair[1] / pair[0]);
    }
    result
}

fn ms(d: Duration) -> String {
    format!("{:.2}", d.as_secs_f64() * 1000.0)
}

/// The results as a markdown table.
pub fn markdown(engine: &str, results: &[Comparison]) -> String {
    let mut out = format!(
        "| engine | writers | payload | off prop/s | on prop/s | on/off (median of rounds) | off p50 ms | on p50 ms | off p99 ms | on p99 ms |\n{}\n",
        "|---".repeat(10) + "|"
    );
    for c in results {
        let _ = writeln!(
            out,
            "| {engine} | {} | {} B | {:.0} | {:.0} | {:.3} | {} | {} | {} | {} |",
            c.workload.writers,
            c.workload.payload_len,
            c.off.median_throughput(),
            c.on.median_throughput(),
            c.ratio(),
            ms(c.off.latency(50.0)),
            ms(c.on.latency(50.0)),
            ms(c.off.latency(99.0)),
            ms(c.on.latency(99.0)),
        );
    }
    out
}

/// Writes the results as JSON to `target/bench-results/<engine>.json` (for the plot script) and
/// returns the path.
///
/// # Errors
/// An I/O error.
pub fn save(engine: &str, results: &[Comparison]) -> std::io::Result<PathBuf> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/bench-results");
    std::fs::create_dir_all(&dir)?;
    let rows: Vec<serde_json::Value> = results
        .iter()
        .map(|c| {
            serde_json::json!({
                "engine": engine,
                "writers": c.workload.writers,
                "payload_len": c.workload.payload_len,
                "off_throughput": c.off.median_throughput(),
                "on_throughput": c.on.median_throughput(),
                "ratio": c.ratio(),
                "ratios": c.ratios,
                "off_p50_ms": c.off.latency(50.0).as_secs_f64() * 1000.0,
                "on_p50_ms": c.on.latency(50.0).as_secs_f64() * 1000.0,
                "off_p99_ms": c.off.latency(99.0).as_secs_f64() * 1000.0,
                "on_p99_ms": c.on.latency(99.0).as_secs_f64() * 1000.0,
            })
        })
        .collect();
    let path = dir.join(format!("{engine}.json"));
    std::fs::write(&path, serde_json::to_string_pretty(&rows).unwrap_or_default())?;
    Ok(path)
}

/// The standard grid: 1, 8 and 64 writers × 256 B and 4 KiB. `BENCH_QUICK=1` shrinks the rounds
/// (used by `.ci/run`-style smoke runs); `BENCH_ROUNDS` / `BENCH_PROPOSALS` override them.
pub fn standard_grid() -> Vec<Workload> {
    let quick = std::env::var_os("BENCH_QUICK").is_some();
    let rounds = env_usize("BENCH_ROUNDS").unwrap_or(if quick { 1 } else { 8 });
    let proposals = env_usize("BENCH_PROPOSALS").unwrap_or(if quick { 64 } else { 1536 });
    let mut grid = Vec::new();
    for payload_len in [256, 4096] {
        for writers in [1, 8, 64] {
            let proposals_per_round = if writers == 1 { proposals / 4 } else { proposals };
            grid.push(Workload { writers, payload_len, proposals_per_round, rounds });
        }
    }
    grid
}

/// The whole bench binary for one engine: `start(sealed)` makes a cluster with the layer off
/// (`false`) or on (`true`). Under `cargo bench` (which passes `--bench`) runs the
/// [`standard_grid`] interleaved, prints the table and saves the JSON; otherwise (`cargo test
/// --benches`, `-- --test`) only starts both clusters and writes once, as a smoke test.
///
/// # Panics
/// When a cluster fails to start or a proposal fails: a bench binary reports by panicking.
pub fn run<C: BenchCluster>(engine: &str, start: impl Fn(bool) -> C) {
    let args: Vec<String> = std::env::args().collect();
    let (off, on) = (start(false), start(true));
    if !args.iter().any(|a| a == "--bench") || args.iter().any(|a| a == "--test") {
        for cluster in [&off, &on] {
            if let Err(e) = cluster.propose(b"k=v".to_vec()) {
                panic!("{engine}: smoke proposal failed: {e}");
            }
        }
        println!("{engine} cluster bench: setup ok");
        return;
    }
    let mut results = Vec::new();
    for workload in standard_grid() {
        let c = compare(&off, &on, workload);
        eprintln!(
            "{engine} writers={} payload={} B: off {:.0}/s on {:.0}/s ratio {:.3}",
            workload.writers,
            workload.payload_len,
            c.off.median_throughput(),
            c.on.median_throughput(),
            c.ratio()
        );
        results.push(c);
    }
    println!("{}", markdown(engine, &results));
    match save(engine, &results) {
        Ok(path) => println!("saved {}", path.display()),
        Err(e) => eprintln!("could not save the results: {e}"),
    }
}

fn env_usize(name: &str) -> Option<usize> {
    std::env::var(name).ok()?.parse().ok()
}
