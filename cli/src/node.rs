//! The admin API of a running node of the KV service (`raft-envelope-kv`, `examples/`): one
//! HTTP/1.1 request per call, JSON answers, and how `raft-envelope status` prints them.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

use serde_json::Value;

/// Sends `method path` to the node at `addr` (`HOST:PORT`) and returns the status code and the
/// JSON answer (`{"error": ...}` when the node refused).
///
/// # Errors
/// The node cannot be reached, or did not answer with JSON within `timeout`.
pub fn call(addr: &str, method: &str, path: &str, timeout: Duration) -> Result<(u16, Value), String> {
    let target = addr
        .to_socket_addrs()
        .map_err(|e| format!("{addr}: {e}"))?
        .next()
        .ok_or_else(|| format!("{addr}: no address"))?;
    let stream = TcpStream::connect_timeout(&target, timeout).map_err(|e| format!("{addr}: {e}"))?;
    stream.set_read_timeout(Some(timeout)).map_err(|e| e.to_string())?;
    let mut writer = stream.try_clone().map_err(|e| e.to_string())?;
    let head =
        format!("{method} {path} HTTP/1.1\r\nhost: {addr}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
    writer.write_all(head.as_bytes()).map_err(|e| format!("{addr}: {e}"))?;
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    reader.read_line(&mut line).map_err(|e| format!("{addr}: {e}"))?;
    let status: u16 = line
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("{addr}: not an HTTP answer"))?;
    let mut length = 0usize;
    loop {
        let mut header = String::new();
        if reader.read_line(&mut header).map_err(|e| e.to_string())? == 0 {
            break;
        }
        let header = header.trim_end();
        if header.is_empty() {
            break;
        }
        if let Some((name, value)) = header.split_once(':') {
            if name.eq_ignore_ascii_case("content-length") {
                length = value.trim().parse().map_err(|_| "bad content-length".to_owned())?;
            }
        }
    }
    let mut body = vec![0; length];
    reader.read_exact(&mut body).map_err(|e| format!("{addr}: {e}"))?;
    let value = serde_json::from_slice(&body).map_err(|_| format!("{addr}: the answer is not JSON"))?;
    Ok((status, value))
}

/// A node's status (`GET /status`) as text for an operator.
pub fn status_text(status: &Value) -> String {
    let n = |k: &str| status.get(k).and_then(Value::as_u64).unwrap_or(0);
    let s = |k: &str| status.get(k).and_then(Value::as_str).unwrap_or("?");
    let mut out = format!(
        "node {} ({}): {}, term {}, leader {}, applied {}, last index {}\n",
        n("node"),
        s("engine"),
        s("role"),
        n("term"),
        n("leader"),
        n("applied"),
        n("last_index"),
    );
    match status.get("halt").filter(|h| !h.is_null()) {
        Some(h) => out.push_str(&format!(
            "HALTED at index {}: {} (key {}) -- {}\n",
            h["index"],
            h["reason"].as_str().unwrap_or("?"),
            h["key_id"],
            h["detail"].as_str().unwrap_or("")
        )),
        None => out.push_str("running (not halted)\n"),
    }
    let e = &status["encryption"];
    match e["cutover"].as_u64() {
        Some(c) => out.push_str(&format!("encryption: enforced above index {c}")),
        None => out.push_str("encryption: not enforced"),
    }
    out.push_str(&format!(
        ", active key {}\n",
        e["active_key"].as_u64().map_or("none".into(), |k| k.to_string())
    ));
    for k in e["keys"].as_array().into_iter().flatten() {
        out.push_str(&format!(
            "  key {:<3} {:<13} {}  kek {}  installed at {}  sealed {}  budget left {:.4}%\n",
            k["key_id"],
            k["state"].as_str().unwrap_or("?"),
            k["algorithm"].as_str().unwrap_or("?"),
            k["kek_id"].as_str().unwrap_or("?"),
            k["installed_at"],
            k["sealed_entries"],
            k["budget_left"].as_f64().unwrap_or(0.0) * 100.0,
        ));
    }
    let c = &e["checkpoints"];
    out.push_str(&format!(
        "checkpoints: through {}, verified {}, unverifiable {}, diverged {}",
        c["through"], c["verified"], c["unverifiable"], c["diverged"]
    ));
    out
}
