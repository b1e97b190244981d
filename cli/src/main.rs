//! `raft-envelope`: the operator tool.
//!
//! - `keygen --out FILE`: a new key-encryption key (KEK) file, 64 hex digits, mode 0600, in the
//!   format `FileKekProvider::load` reads; refuses to overwrite a file.
//! - `inspect [FILE]`: what a stored item is, from a file or standard input (raw bytes, or
//!   `--hex` for one hex-encoded item per line): an envelope's header (algorithm, purpose, key
//!   id, proposal id, lengths), a control entry's command (key id, KEK id, lengths, checkpoint
//!   range and digest), a snapshot frame (last index, the layer section's keys, cutover and
//!   integrity state, the body's envelope header) or a layer state. It never opens anything and
//!   never prints payload bytes, ciphertext or wrapped keys: only what is public in the formats
//!   of `DESIGN.md` §2, §10.1, §10.4, §10.10 and §11.4. `--json` prints one JSON object per item.
//! - `status`, `enable`, `rotate`, `retire --key N`, `destroy --key N`, `compact`, `checkpoint`,
//!   `add-member --id N`, `remove-member --id N` against a running node of the KV service
//!   (`--node HOST:PORT`; lifecycle commands are forwarded to the leader), text or `--json`.
#![forbid(unsafe_code)]

use std::fs::OpenOptions;
use std::io::{self, Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use raft_envelope_cli::{inspect, node};
use raft_envelope_core::SecretKey;
use zeroize::Zeroizing;

/// The raft-envelope operator tool.
#[derive(Debug, Parser)]
#[command(name = "raft-envelope", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Writes a new key-encryption key (64 hex digits) to a new file only its owner may read.
    Keygen {
        /// Where to write it; must not exist.
        #[arg(long)]
        out: PathBuf,
    },
    /// Shows what stored bytes are (envelope, control entry, snapshot frame, layer state),
    /// never their secret parts.
    Inspect {
        /// The file to read; standard input when absent or `-`.
        file: Option<PathBuf>,
        /// The input is text, one hex-encoded item per line (blank lines skipped).
        #[arg(long)]
        hex: bool,
        /// One JSON object per item instead of text.
        #[arg(long)]
        json: bool,
    },
    /// A node's status: role, indexes, halt, keys, cutover, checkpoints.
    Status(NodeArgs),
    /// Switches encryption on (install, promote, drain, enforce); prints the cutover.
    Enable(NodeArgs),
    /// Rotates the data key; the previous one becomes decrypt-only.
    Rotate(NodeArgs),
    /// Retires a key to decrypt-only.
    Retire {
        /// The key id.
        #[arg(long)]
        key: u32,
        #[command(flatten)]
        node: NodeArgs,
    },
    /// Destroys a key once no member retains anything sealed under it (compact first).
    Destroy {
        /// The key id.
        #[arg(long)]
        key: u32,
        #[command(flatten)]
        node: NodeArgs,
    },
    /// Takes a sealed snapshot on the node and compacts its log.
    Compact(NodeArgs),
    /// Proposes an integrity checkpoint now (openraft nodes; raft-rs nodes propose their own).
    Checkpoint(NodeArgs),
    /// Adds a voter (start it with `--join` first).
    AddMember {
        /// The new member's id.
        #[arg(long)]
        id: u64,
        #[command(flatten)]
        node: NodeArgs,
    },
    /// Removes a voter.
    RemoveMember {
        /// The member's id.
        #[arg(long)]
        id: u64,
        #[command(flatten)]
        node: NodeArgs,
    },
}

/// Which node to ask, and how to print its answer.
#[derive(Debug, clap::Args)]
struct NodeArgs {
    /// The node's API address.
    #[arg(long, default_value = "127.0.0.1:7001")]
    node: String,
    /// Print the node's JSON answer as it is.
    #[arg(long)]
    json: bool,
    /// How long to wait for the answer, in seconds (an enable waits for every member).
    #[arg(long, default_value_t = 60)]
    timeout: u64,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Keygen { out } => keygen(&out),
        Command::Inspect { file, hex, json } => run_inspect(file, hex, json),
        Command::Status(n) => admin(&n, "GET", "/status".into()),
        Command::Enable(n) => admin(&n, "POST", "/admin/enable".into()),
        Command::Rotate(n) => admin(&n, "POST", "/admin/rotate".into()),
        Command::Retire { key, node } => admin(&node, "POST", format!("/admin/retire?key={key}")),
        Command::Destroy { key, node } => admin(&node, "POST", format!("/admin/destroy?key={key}")),
        Command::Compact(n) => admin(&n, "POST", "/admin/compact".into()),
        Command::Checkpoint(n) => admin(&n, "POST", "/admin/checkpoint".into()),
        Command::AddMember { id, node } => admin(&node, "POST", format!("/admin/add?node={id}")),
        Command::RemoveMember { id, node } => admin(&node, "POST", format!("/admin/remove?node={id}")),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            let _ = writeln!(io::stderr(), "raft-envelope: {e}");
            ExitCode::from(2)
        }
    }
}

fn keygen(out: &PathBuf) -> Result<ExitCode, String> {
    let key = SecretKey::generate().map_err(|e| format!("cannot generate a key: {e}"))?;
    let mut text = Zeroizing::new(String::with_capacity(65));
    for b in key.expose_secret() {
        text.push(char::from(b"0123456789abcdef"[usize::from(b >> 4)]));
        text.push(char::from(b"0123456789abcdef"[usize::from(b & 0x0f)]));
    }
    text.push('\n');
    let mut options = OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(out).map_err(|e| format!("cannot create {}: {e}", out.display()))?;
    if let Err(e) = file.write_all(text.as_bytes()).and_then(|()| file.sync_all()) {
        // Never leave a partial KEK file behind (a later `load` would refuse it anyway).
        drop(file);
        let _ = std::fs::remove_file(out);
        return Err(format!("cannot write {}: {e}", out.display()));
    }
    // The new name itself survives a crash once its directory is synced.
    if let Some(dir) = out.parent().filter(|d| !d.as_os_str().is_empty()) {
        let _ = std::fs::File::open(dir).and_then(|d| d.sync_all());
    }
    println!("wrote a new KEK to {} (mode 0600)", out.display());
    Ok(ExitCode::SUCCESS)
}

/// One admin request; exit code 1 when the node refused (its reason on standard error).
fn admin(args: &NodeArgs, method: &str, path: String) -> Result<ExitCode, String> {
    let (status, answer) =
        node::call(&args.node, method, &path, std::time::Duration::from_secs(args.timeout))?;
    if status != 200 {
        let why = answer.get("error").and_then(|e| e.as_str()).unwrap_or("refused");
        if args.json {
            println!("{answer}");
        }
        let _ = writeln!(io::stderr(), "raft-envelope: {} refused: {why}", args.node);
        return Ok(ExitCode::from(1));
    }
    if args.json {
        println!("{answer}");
    } else if path == "/status" {
        println!("{}", node::status_text(&answer));
    } else {
        let fields: Vec<String> = answer
            .as_object()
            .into_iter()
            .flatten()
            .map(|(k, v)| format!("{k} {}", v.as_str().map_or_else(|| v.to_string(), str::to_owned)))
            .collect();
        println!("{}: {}", path.trim_start_matches("/admin/"), fields.join(", "));
    }
    Ok(ExitCode::SUCCESS)
}

fn run_inspect(file: Option<PathBuf>, hex: bool, json: bool) -> Result<ExitCode, String> {
    let mut input = Vec::new();
    match file.as_ref().filter(|p| p.as_os_str() != "-") {
        Some(path) => {
            input = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?
        }
        None => {
            io::stdin().read_to_end(&mut input).map_err(|e| format!("cannot read standard input: {e}"))?;
        }
    }
    let items = if hex { inspect::hex_lines(&input)? } else { vec![input] };
    let mut unknown = false;
    let mut out = io::stdout().lock();
    for (n, item) in items.iter().enumerate() {
        let report = inspect::inspect(item);
        unknown |= report.is_unknown();
        let text = if json { report.to_json().to_string() } else { report.to_text(n + 1, items.len()) };
        writeln!(out, "{text}").map_err(|e| e.to_string())?;
    }
    // 1: something was not recognised (as `grep` says "no match"), but everything was shown.
    Ok(if unknown { ExitCode::from(1) } else { ExitCode::SUCCESS })
}
