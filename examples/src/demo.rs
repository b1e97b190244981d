//! `raft-envelope-kv demo`: three node processes on loopback, every step an operator cares about.
//!
//! Writes in the clear, switches encryption on and rotates the key under load, SIGKILLs a
//! follower and restarts it, shows a stopped node's stored log with `inspect` and scans every
//! data directory for plaintext written above the cutover, tampers with one byte of one node's
//! stored log and shows that node halt while the others serve, replaces it, and stops.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use raft_envelope_cli::inspect::inspect;
use raft_envelope_core::wire::EnvelopeHeader;

use crate::local_cluster::LocalCluster;
use crate::{stored_log, EngineKind};

const WAIT: Duration = Duration::from_secs(30);

/// What a writer thread saw.
#[derive(Debug, Default)]
struct Load {
    ok: AtomicU64,
    failed: AtomicU64,
}

/// Runs the demo on `engine`; keeps the data directories when `keep`.
///
/// # Errors
/// A step failed (which, and why); every node process is killed.
pub fn run(engine: EngineKind, keep: bool) -> Result<(), String> {
    let started = Instant::now();
    let bin = std::env::current_exe().map_err(|e| e.to_string())?;
    let dir = std::env::temp_dir().join(format!("raft-envelope-demo-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let marker = format!("PLAINTEXT-MARKER-{}", std::process::id());
    let step = |text: &str| println!("\n[{:>5.1}s] {text}", started.elapsed().as_secs_f64());

    step(&format!("starting 3 {} nodes, one process each, data in {}", engine.name(), dir.display()));
    let c = LocalCluster::start(&bin, engine, &dir, 3, keep)?;
    for id in c.ids() {
        println!("   node {id}: http://{}  data {}", c.addr(id), c.data_dir(id).display());
    }
    let leader = c.wait_leader(&c.ids(), WAIT)?;
    println!("   node {leader} leads");

    step("writing 20 keys in the clear (no key configured: the layer is inert)");
    for i in 0..20 {
        c.put(1 + i % 3, &format!("user:{i}"), &format!("clear-{i}"))?;
    }
    println!("   user:7 on node 3 = {:?}", c.get(3, "user:7")?);

    step("switching encryption on and rotating the key while 4 writers keep writing");
    let c = Arc::new(c);
    let (stop, load) = (Arc::new(AtomicBool::new(false)), Arc::new(Load::default()));
    let writers: Vec<_> = (0..4u64)
        .map(|w| {
            let (c, stop, load) = (c.clone(), stop.clone(), load.clone());
            thread::spawn(move || {
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let node = 1 + (w + n) % 3;
                    match c.put(node, &format!("load:{w}:{n}"), &format!("v{n}")) {
                        Ok(_) => load.ok.fetch_add(1, Ordering::Relaxed),
                        Err(_) => load.failed.fetch_add(1, Ordering::Relaxed),
                    };
                    n += 1;
                }
            })
        })
        .collect();
    let switched = (|| -> Result<u64, String> {
        thread::sleep(Duration::from_millis(500));
        let enabled = c.json(2, "POST", "/admin/enable")?;
        println!(
            "   enable (asked node 2, run on the leader): key {} active, cutover {}",
            enabled["key_id"], enabled["cutover"]
        );
        let cutover = enabled["cutover"].as_u64().ok_or("no cutover")?;
        thread::sleep(Duration::from_millis(500));
        let rotated = c.json(3, "POST", "/admin/rotate")?;
        println!("   rotate: key {} active; the previous key opens old entries only", rotated["key_id"]);
        thread::sleep(Duration::from_millis(500));
        Ok(cutover)
    })();
    // The writers hold the cluster: stop them before anything else, also on failure.
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        let _ = w.join();
    }
    let cutover = switched?;
    println!(
        "   writes under load: {} succeeded, {} failed",
        load.ok.load(Ordering::Relaxed),
        load.failed.load(Ordering::Relaxed)
    );
    for i in 0..5 {
        c.put(1, &format!("card:{i}"), &format!("{marker}-{i}"))?;
    }
    println!("   5 more keys written above the cutover, their values hold {marker}");

    let leader = c.wait_leader(&c.ids(), WAIT)?;
    let follower = c.ids().into_iter().find(|i| *i != leader).ok_or("no follower")?;
    step(&format!("SIGKILL follower {follower}, write while it is down, restart it"));
    c.kill(follower);
    for i in 5..10 {
        c.put(leader, &format!("card:{i}"), &format!("{marker}-{i}"))?;
    }
    c.spawn(follower, false)?;
    let target = c.max_applied(&[leader]);
    c.wait_applied(&[follower], target, WAIT)?;
    println!(
        "   node {follower} restarted from its disk and caught up to {target}: card:9 = {:?}",
        c.get(follower, "card:9")?
    );

    let victim = c
        .ids()
        .into_iter()
        .rev()
        .find(|i| *i != c.wait_leader(&c.ids(), WAIT).unwrap_or(0))
        .ok_or("no follower")?;
    step(&format!("stopping node {victim} and reading its stored log (raft-envelope inspect)"));
    c.kill(victim);
    let payloads = stored_log::dump(engine, &c.data_dir(victim))?;
    let shown: Vec<&(u64, Vec<u8>)> = payloads
        .iter()
        .filter(|(i, _)| *i <= cutover + 3 && *i + 3 >= cutover)
        .chain(payloads.iter().rev().take(2).collect::<Vec<_>>().into_iter().rev())
        .collect();
    for (index, bytes) in shown {
        println!("   {index:>5}  {}", inspect(bytes).to_text(1, 1));
    }
    println!("   ... {} stored payloads in all", payloads.len());
    let above = payloads.iter().filter(|(i, _)| *i > cutover).count();
    let sealed = payloads.iter().filter(|(i, b)| *i > cutover && EnvelopeHeader::parse(b).is_ok()).count();
    println!("   above the cutover ({cutover}): {above} payloads, {sealed} of them envelopes");
    let hits = c.grep_data(marker.as_bytes());
    let clear = c.grep_data(b"clear-7");
    println!("   every byte of every data directory: {hits} hits for {marker}; the cleartext value clear-7 (below the cutover) is there {clear} times");
    if hits != 0 || sealed != above {
        return Err("plaintext above the cutover on disk".into());
    }

    let (index, _) = payloads
        .iter()
        .rev()
        .find(|(i, b)| *i > cutover && EnvelopeHeader::parse(b).is_ok())
        .ok_or("no envelope")?;
    step(&format!(
        "flipping one byte of the envelope at index {index} in node {victim}'s stored log, restarting it"
    ));
    stored_log::tamper(engine, &c.data_dir(victim), *index)?;
    c.spawn(victim, false)?;
    let halt = c.wait_halted(victim, WAIT)?;
    println!(
        "   node {victim} halted at index {}: {} (key {}), nothing after it applied",
        halt["index"],
        halt["reason"].as_str().unwrap_or("?"),
        halt["key_id"]
    );
    let (_, metrics) = c.call(victim, "GET", "/metrics", &[])?;
    for line in
        String::from_utf8_lossy(&metrics).lines().filter(|l| l.starts_with("raft_envelope_halts_total"))
    {
        println!("   /metrics: {line}");
    }
    let others: Vec<u64> = c.ids().into_iter().filter(|i| *i != victim).collect();
    let leader = c.wait_leader(&others, WAIT)?;
    let at = c.put(leader, "after:halt", "still-serving")?;
    c.wait_applied(&others, at, WAIT)?;
    println!(
        "   the other two serve: after:halt written at {at}, read on {others:?}: {:?}",
        others.iter().map(|i| c.get(*i, "after:halt")).collect::<Vec<_>>()
    );

    step(&format!("replacing node {victim}: remove, compact, wipe, start empty, add back"));
    c.replace(victim, WAIT)?;
    let same =
        (0..10).all(|i| c.get(victim, &format!("card:{i}")).ok() == c.get(leader, &format!("card:{i}")).ok());
    println!(
        "   node {victim} is back from a sealed snapshot: card:0..9 equal to the leader's: {same}; status:"
    );
    let status = c.status(victim).ok_or("no status")?;
    println!(
        "{}",
        raft_envelope_cli::node::status_text(&status)
            .lines()
            .map(|l| format!("   | {l}"))
            .collect::<Vec<_>>()
            .join("\n")
    );

    step("stopping every node");
    drop(c);
    println!(
        "done in {:.1}s{}",
        started.elapsed().as_secs_f64(),
        if keep { format!(" (data kept in {})", dir.display()) } else { String::new() }
    );
    Ok(())
}
