//! `raft-envelope-kv`: the encrypted KV service, one node per process, on either engine.
//!
//! ```text
//! raft-envelope-kv node --engine raftrs --id 1 --peers 1=127.0.0.1:7001,2=127.0.0.1:7002,3=127.0.0.1:7003 \
//!     --data-dir /var/lib/kv/1 --kek-file /etc/kv/kek
//! raft-envelope-kv demo                     # three nodes on loopback, every step of the README
//! raft-envelope-kv dump-log --engine raftrs --data-dir D   # stored payloads, hex, one per line
//! ```
#![forbid(unsafe_code)]

use std::collections::BTreeMap;
use std::io::Write;
use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};
use raft_envelope_core::lifecycle::CheckpointPolicy;
use raft_envelope_core::provider::{FileKekProvider, KekId};
use raft_envelope_examples::openraft_engine::OpenraftEngine;
use raft_envelope_examples::raftrs_engine::RaftrsEngine;
use raft_envelope_examples::service::{self, Engine, Peers};
use raft_envelope_examples::{demo, stored_log, EngineKind, NodeOptions};

/// The raft-envelope KV service.
#[derive(Debug, Parser)]
#[command(name = "raft-envelope-kv", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Runs one node until it is killed.
    Node(NodeArgs),
    /// Starts three nodes on loopback and walks through switching encryption on, rotating,
    /// a SIGKILL, a tampered log and its repair.
    Demo {
        /// The engine.
        #[arg(long, value_enum, default_value_t = Engine_::Openraft)]
        engine: Engine_,
        /// Keep the data directories (printed) instead of removing them.
        #[arg(long)]
        keep: bool,
    },
    /// Prints the payload of every entry a stopped node stores, hex-encoded, one per line, for
    /// `raft-envelope inspect --hex`.
    DumpLog {
        /// The engine that wrote the store.
        #[arg(long, value_enum)]
        engine: Engine_,
        /// The node's data directory.
        #[arg(long)]
        data_dir: PathBuf,
    },
    /// Flips one byte of the entry at `index` in a stopped node's store (to show what a replica
    /// does with a log altered behind its back).
    Tamper {
        /// The engine that wrote the store.
        #[arg(long, value_enum)]
        engine: Engine_,
        /// The node's data directory.
        #[arg(long)]
        data_dir: PathBuf,
        /// The entry's index.
        #[arg(long)]
        index: u64,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
#[allow(non_camel_case_types)]
enum Engine_ {
    Openraft,
    Raftrs,
}

impl From<Engine_> for EngineKind {
    fn from(e: Engine_) -> Self {
        match e {
            Engine_::Openraft => EngineKind::Openraft,
            Engine_::Raftrs => EngineKind::Raftrs,
        }
    }
}

#[derive(Debug, clap::Args)]
struct NodeArgs {
    /// The engine.
    #[arg(long, value_enum)]
    engine: Engine_,
    /// This node's id.
    #[arg(long)]
    id: u64,
    /// Every member, `ID=HOST:PORT,...` (this node's address is where it listens).
    #[arg(long)]
    peers: String,
    /// Where the node keeps its data.
    #[arg(long)]
    data_dir: PathBuf,
    /// The key-encryption key file (64 hex digits, readable by its owner only:
    /// `raft-envelope keygen --out FILE`).
    #[arg(long)]
    kek_file: PathBuf,
    /// The KEK's id, the same on every node.
    #[arg(long, default_value = "kek-1")]
    kek_id: String,
    /// The cluster's name, bound into every envelope.
    #[arg(long, default_value = "kv")]
    cluster: String,
    /// Join a running cluster (the leader adds this node) instead of starting a new one.
    #[arg(long)]
    join: bool,
    /// The tick interval in milliseconds (elections after 10 ticks).
    #[arg(long, default_value_t = 50)]
    tick_ms: u64,
    /// Propose no integrity checkpoints (while a rolling upgrade onto the layer is under way).
    #[arg(long)]
    no_checkpoints: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Cmd::Node(args) => run_node(args),
        Cmd::Demo { engine, keep } => demo::run(engine.into(), keep),
        Cmd::DumpLog { engine, data_dir } => stored_log::dump(engine.into(), &data_dir).map(|payloads| {
            let mut out = std::io::stdout().lock();
            for (index, payload) in payloads {
                let hex: String = payload.iter().map(|b| format!("{b:02x}")).collect();
                let _ = writeln!(out, "{hex}");
                let _ = index;
            }
        }),
        Cmd::Tamper { engine, data_dir, index } => stored_log::tamper(engine.into(), &data_dir, index)
            .map(|()| println!("flipped one byte of entry {index}")),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("raft-envelope-kv: {e}");
            ExitCode::from(2)
        }
    }
}

fn parse_peers(text: &str) -> Result<BTreeMap<u64, SocketAddr>, String> {
    text.split(',')
        .map(|p| {
            let (id, addr) = p.split_once('=').ok_or_else(|| format!("{p}: expected ID=HOST:PORT"))?;
            let id = id.trim().parse().map_err(|_| format!("{id}: not a node id"))?;
            let addr = addr.trim().parse().map_err(|_| format!("{addr}: not an address"))?;
            Ok((id, addr))
        })
        .collect()
}

fn run_node(args: NodeArgs) -> Result<(), String> {
    tracing_subscriber::fmt().with_writer(std::io::stderr).with_target(false).init();
    let peers = parse_peers(&args.peers)?;
    let addr = *peers.get(&args.id).ok_or("--peers must hold this node's own address")?;
    let kek_id = KekId::new(args.kek_id).map_err(|e| e.to_string())?;
    let kek = Arc::new(FileKekProvider::load(kek_id, &args.kek_file).map_err(|e| e.to_string())?);
    let prometheus = metrics_exporter_prometheus::PrometheusBuilder::new()
        .install_recorder()
        .map_err(|e| format!("metrics recorder: {e}"))?;
    let listener = TcpListener::bind(addr).map_err(|e| format!("cannot listen on {addr}: {e}"))?;
    let options = NodeOptions {
        id: args.id,
        peers: peers.clone(),
        data_dir: args.data_dir,
        cluster: args.cluster,
        join: args.join,
        tick: Duration::from_millis(args.tick_ms.max(1)),
        checkpoints: if args.no_checkpoints { CheckpointPolicy::OFF } else { CheckpointPolicy::DEFAULT },
    };
    let engine: Arc<dyn Engine> = match EngineKind::from(args.engine) {
        EngineKind::Raftrs => RaftrsEngine::start(options, kek)?,
        EngineKind::Openraft => OpenraftEngine::start(options, kek)?,
    };
    let render = Arc::new(move || prometheus.render());
    // Forwarded requests wait as long as the leader may take: a write retries for up to 20 s,
    // an enable waits for every member.
    service::serve(listener, engine, Peers::new(&peers, Duration::from_secs(90)), render);
    tracing::info!(node = args.id, %addr, "serving");
    loop {
        std::thread::park();
    }
}
