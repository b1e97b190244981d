//! The operator tool as an operator runs it: a real process, real files, real pipes.
#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};

use raft_envelope_core::provider::{FileKekProvider, KekId};
use raft_envelope_core::wire::ControlCommand;
use raft_envelope_core::{Algorithm, ClusterId, KeyId, LayerState, PayloadWrapper, ProposalId};

const MARKER: &[u8] = b"PLAINTEXT-MARKER-7f3a";

fn tool(args: &[&str], stdin: &[u8]) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_raft-envelope"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(stdin).unwrap();
    child.wait_with_output().unwrap()
}

fn text(output: &Output) -> String {
    String::from_utf8(output.stdout.clone()).unwrap()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Never the marker, raw or hex-encoded, in what the tool prints.
fn assert_no_marker(output: &Output) {
    for stream in [&output.stdout, &output.stderr] {
        assert!(!stream.windows(MARKER.len()).any(|w| w == MARKER), "the plaintext is printed");
        let text = String::from_utf8_lossy(stream);
        assert!(!text.contains(&hex(MARKER)), "the plaintext is printed in hex");
    }
}

fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(f)
}

/// A layer state with key 1 installed, promoted and enforced, and its install entry.
fn enforced(dir: &Path) -> (LayerState, Vec<u8>, FileKekProvider) {
    let kek_file = dir.join("kek");
    assert!(tool(&["keygen", "--out", kek_file.to_str().unwrap()], b"").status.success());
    let provider = FileKekProvider::load(KekId::new("kek-1").unwrap(), &kek_file).unwrap();
    let state = LayerState::new(ClusterId::new("orders").unwrap());
    let install = block_on(state.generate_install(KeyId(1), Algorithm::Aes256Gcm, &provider)).unwrap();
    let entry = state.encode_entry(ProposalId(1), &install).unwrap();
    state.apply_control(1, &entry).unwrap();
    state.apply_control(2, &ControlCommand::PromoteKey { key_id: KeyId(1) }.encode()).unwrap();
    state.apply_control(3, &ControlCommand::Enforce.encode()).unwrap();
    (state, entry, provider)
}

#[test]
fn keygen_writes_a_kek_only_its_owner_may_read_and_never_overwrites() {
    let dir = tempdir();
    let path = dir.join("kek");
    let out = tool(&["keygen", "--out", path.to_str().unwrap()], b"");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
    }
    FileKekProvider::load(KekId::new("kek-1").unwrap(), &path).unwrap();
    let before = std::fs::read(&path).unwrap();
    let again = tool(&["keygen", "--out", path.to_str().unwrap()], b"");
    assert_eq!(again.status.code(), Some(2), "an existing KEK file is never overwritten");
    assert_eq!(std::fs::read(&path).unwrap(), before);
    assert!(!text(&out).contains(std::str::from_utf8(&before).unwrap().trim()), "the key is not printed");
}

#[test]
fn inspect_shows_an_envelope_header_never_its_plaintext() {
    let dir = tempdir();
    let (state, _, _) = enforced(&dir);
    let envelope = state.cipher().seal(ProposalId(42), MARKER).unwrap();
    let out = tool(&["inspect"], &envelope);
    assert!(out.status.success());
    let shown = text(&out);
    assert!(
        shown.contains("envelope") && shown.contains("key 1") && shown.contains("proposal 42"),
        "{shown}"
    );
    assert_no_marker(&out);
    let json = tool(&["inspect", "--json"], &envelope);
    let v: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(
        (v["kind"].as_str(), v["key_id"].as_u64(), v["proposal_id"].as_u64()),
        (Some("envelope"), Some(1), Some(42))
    );
    assert_eq!(v["plaintext_len"].as_u64(), Some(MARKER.len() as u64));
}

#[test]
fn inspect_shows_a_control_entry_without_its_wrapped_key() {
    let dir = tempdir();
    let (_, install, _) = enforced(&dir);
    let out = tool(&["inspect", "--json"], &install);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        (v["kind"].as_str(), v["command"].as_str(), v["kek_id"].as_str()),
        (Some("control"), Some("install_key"), Some("kek-1"))
    );
    let ControlCommand::InstallKey(decoded) = ControlCommand::decode(&install).unwrap() else { panic!() };
    assert_eq!(v["wrapped_key_len"].as_u64(), Some(decoded.wrapped_key.as_bytes().len() as u64));
    assert!(!text(&out).contains(&hex(decoded.wrapped_key.as_bytes())), "the wrapped key is not printed");
}

#[test]
fn inspect_shows_a_sealed_snapshot_frame_and_its_layer_state_never_the_data() {
    let dir = tempdir();
    let (state, _, _) = enforced(&dir);
    let frame = state.seal_snapshot(3, MARKER).unwrap();
    let path = dir.join("snapshot");
    std::fs::write(&path, &frame).unwrap();
    let out = tool(&["inspect", path.to_str().unwrap()], b"");
    assert!(out.status.success());
    let shown = text(&out);
    assert!(
        shown.contains("snapshot frame") && shown.contains("last index 3") && shown.contains("cutover 3"),
        "{shown}"
    );
    assert!(shown.contains("key 1: active"), "{shown}");
    assert_no_marker(&out);
}

#[test]
fn inspect_reads_many_items_as_hex_lines_and_flags_what_it_does_not_know() {
    let dir = tempdir();
    let (state, install, _) = enforced(&dir);
    let envelope = state.cipher().seal(ProposalId(9), MARKER).unwrap();
    let input = format!("{}\n\n{}\n{}\n", hex(&install), hex(&envelope), hex(b"put a 1"));
    let out = tool(&["inspect", "--hex", "--json"], input.as_bytes());
    assert_eq!(out.status.code(), Some(1), "cleartext is reported as unknown");
    let kinds: Vec<String> = text(&out)
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["kind"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(kinds, ["control", "envelope", "unknown"]);
    assert_no_marker(&out);
    let bad = tool(&["inspect", "--hex"], b"abc\n");
    assert_eq!(bad.status.code(), Some(2));
}

/// A fresh directory under the system's temp dir, removed when dropped.
struct TempDir(std::path::PathBuf);

impl std::ops::Deref for TempDir {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn tempdir() -> TempDir {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    let dir = std::env::temp_dir().join(format!(
        "raft-envelope-cli-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    ));
    std::fs::create_dir_all(&dir).unwrap();
    TempDir(dir)
}
