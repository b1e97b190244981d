//! Nodes of the KV service as child processes on loopback: what the demo and the process-level
//! tests run. Every node is a real `raft-envelope-kv node` process with its own data directory
//! and port; every child is killed (SIGKILL) when the cluster is dropped, on success or panic.

use std::collections::BTreeMap;
use std::fs::OpenOptions;
use std::io::Write;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

use raft_envelope_core::SecretKey;
use serde_json::Value;

use crate::http::Client;
use crate::EngineKind;

/// A cluster of node processes.
#[derive(Debug)]
pub struct LocalCluster {
    bin: PathBuf,
    engine: EngineKind,
    dir: PathBuf,
    peers: BTreeMap<u64, SocketAddr>,
    children: Mutex<BTreeMap<u64, Child>>,
    clients: BTreeMap<u64, Client>,
    keep: bool,
}

fn free_ports(n: usize) -> Result<Vec<u16>, String> {
    // Held together so that they differ, released just before the nodes bind them.
    let listeners: Vec<TcpListener> = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0"))
        .collect::<Result<_, _>>()
        .map_err(|e| e.to_string())?;
    listeners.iter().map(|l| l.local_addr().map(|a| a.port()).map_err(|e| e.to_string())).collect()
}

/// Writes a new KEK file (64 hex digits) only its owner may read.
///
/// # Errors
/// The file exists or cannot be written.
pub fn write_kek_file(path: &Path) -> Result<(), String> {
    let key = SecretKey::generate().map_err(|e| e.to_string())?;
    let hex: zeroize::Zeroizing<String> =
        zeroize::Zeroizing::new(key.expose_secret().iter().map(|b| format!("{b:02x}")).collect());
    let mut options = OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    file.write_all(hex.as_bytes()).and_then(|()| file.sync_all()).map_err(|e| e.to_string())
}

impl LocalCluster {
    /// Starts `n` nodes (ids 1..=n) of `bin` (`raft-envelope-kv`) on `engine`, with data
    /// directories and a shared KEK file under `dir` (created; removed on drop unless `keep`).
    ///
    /// # Errors
    /// The directory, the KEK file or a process cannot be created.
    pub fn start(bin: &Path, engine: EngineKind, dir: &Path, n: u64, keep: bool) -> Result<Self, String> {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        write_kek_file(&dir.join("kek"))?;
        let ports = free_ports(n as usize)?;
        let peers: BTreeMap<u64, SocketAddr> =
            (1..=n).zip(ports).map(|(id, port)| (id, SocketAddr::from(([127, 0, 0, 1], port)))).collect();
        let clients = peers.iter().map(|(id, a)| (*id, Client::new(*a, Duration::from_secs(30)))).collect();
        let cluster = Self {
            bin: bin.to_path_buf(),
            engine,
            dir: dir.to_path_buf(),
            peers,
            children: Mutex::new(BTreeMap::new()),
            clients,
            keep,
        };
        for id in 1..=n {
            cluster.spawn(id, false)?;
        }
        Ok(cluster)
    }

    fn children(&self) -> MutexGuard<'_, BTreeMap<u64, Child>> {
        self.children.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The node ids.
    pub fn ids(&self) -> Vec<u64> {
        self.peers.keys().copied().collect()
    }

    /// The engine the nodes run.
    pub fn engine(&self) -> EngineKind {
        self.engine
    }

    /// Where node `id` keeps its data.
    pub fn data_dir(&self, id: u64) -> PathBuf {
        self.dir.join(format!("n{id}"))
    }

    /// The cluster's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Node `id`'s API address.
    pub fn addr(&self, id: u64) -> SocketAddr {
        self.peers[&id]
    }

    /// Starts node `id` (again); `join`: with an empty configuration, for the leader to add.
    ///
    /// # Errors
    /// The process cannot be started.
    pub fn spawn(&self, id: u64, join: bool) -> Result<(), String> {
        let peers: Vec<String> = self.peers.iter().map(|(i, a)| format!("{i}={a}")).collect();
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join(format!("n{id}.log")))
            .map_err(|e| e.to_string())?;
        let mut command = Command::new(&self.bin);
        command
            .args([
                "node",
                "--engine",
                self.engine.name(),
                "--id",
                &id.to_string(),
                "--peers",
                &peers.join(","),
            ])
            .arg("--data-dir")
            .arg(self.data_dir(id))
            .arg("--kek-file")
            .arg(self.dir.join("kek"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().map_err(|e| e.to_string())?)
            .stderr(log);
        if join {
            command.arg("--join");
        }
        let child = command.spawn().map_err(|e| format!("{}: {e}", self.bin.display()))?;
        if let Some(mut old) = self.children().insert(id, child) {
            let _ = old.kill();
            let _ = old.wait();
        }
        Ok(())
    }

    /// Kills node `id` with SIGKILL (no shutdown of any kind) and waits for it to be gone.
    pub fn kill(&self, id: u64) {
        if let Some(mut child) = self.children().remove(&id) {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Whether node `id`'s process is running.
    pub fn is_running(&self, id: u64) -> bool {
        self.children().get_mut(&id).is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// `method path` on node `id`: status code and body.
    ///
    /// # Errors
    /// The node cannot be reached.
    pub fn call(&self, id: u64, method: &str, path: &str, body: &[u8]) -> Result<(u16, Vec<u8>), String> {
        self.clients[&id].call(method, path, body).map_err(|e| format!("node {id}: {e}"))
    }

    /// A JSON request to node `id`; the answer when it is 200.
    ///
    /// # Errors
    /// The node cannot be reached or refused (its reason).
    pub fn json(&self, id: u64, method: &str, path: &str) -> Result<Value, String> {
        let (status, body) = self.call(id, method, path, &[])?;
        let value: Value = serde_json::from_slice(&body).map_err(|e| format!("node {id}: {e}"))?;
        if status == 200 {
            Ok(value)
        } else {
            Err(format!("node {id}: {}", value.get("error").and_then(Value::as_str).unwrap_or("refused")))
        }
    }

    /// Node `id`'s status, if it answers.
    pub fn status(&self, id: u64) -> Option<Value> {
        self.json(id, "GET", "/status").ok()
    }

    /// Writes `key = value` through node `id`; the index it was applied at.
    ///
    /// # Errors
    /// The write failed (the node's reason).
    pub fn put(&self, id: u64, key: &str, value: &str) -> Result<u64, String> {
        let (status, body) = self.call(id, "PUT", &format!("/kv/{key}"), value.as_bytes())?;
        let answer: Value = serde_json::from_slice(&body).map_err(|e| e.to_string())?;
        match (status, answer["index"].as_u64()) {
            (200, Some(index)) => Ok(index),
            _ => Err(format!("node {id}: {}", answer["error"].as_str().unwrap_or("refused"))),
        }
    }

    /// The value of `key` as node `id` applied it.
    ///
    /// # Errors
    /// The node cannot be reached or does not serve reads (halted).
    pub fn get(&self, id: u64, key: &str) -> Result<Option<String>, String> {
        match self.call(id, "GET", &format!("/kv/{key}"), &[])? {
            (200, body) => Ok(Some(String::from_utf8_lossy(&body).into_owned())),
            (404, _) => Ok(None),
            (status, body) => Err(format!("node {id}: {status} {}", String::from_utf8_lossy(&body))),
        }
    }

    /// Waits until the running nodes among `ids` agree on a leader that leads; returns it.
    ///
    /// # Errors
    /// None within `timeout`.
    pub fn wait_leader(&self, ids: &[u64], timeout: Duration) -> Result<u64, String> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            let statuses: Vec<Value> = ids.iter().filter_map(|id| self.status(*id)).collect();
            let leaders: Vec<u64> = statuses.iter().filter_map(|s| s["leader"].as_u64()).collect();
            if let Some(leader) = leaders.first().copied().filter(|l| *l != 0) {
                let agreed = leaders.len() == ids.len() && leaders.iter().all(|l| *l == leader);
                let leads = statuses.iter().any(|s| s["node"] == leader && s["role"] == "leader");
                if agreed && leads {
                    return Ok(leader);
                }
            }
            thread::sleep(Duration::from_millis(50));
        }
        Err(format!("no leader agreed on by nodes {ids:?} within {timeout:?}"))
    }

    /// Waits until every node in `ids` has applied at least `index`.
    ///
    /// # Errors
    /// One did not within `timeout` (its last status).
    pub fn wait_applied(&self, ids: &[u64], index: u64, timeout: Duration) -> Result<(), String> {
        let deadline = Instant::now() + timeout;
        for id in ids {
            loop {
                let status = self.status(*id);
                if status.as_ref().and_then(|s| s["applied"].as_u64()).is_some_and(|a| a >= index) {
                    break;
                }
                if Instant::now() >= deadline {
                    return Err(format!("node {id} did not apply {index} within {timeout:?}: {status:?}"));
                }
                thread::sleep(Duration::from_millis(50));
            }
        }
        Ok(())
    }

    /// Waits until node `id` reports a halt; returns it (`status.halt`).
    ///
    /// # Errors
    /// It did not halt within `timeout`.
    pub fn wait_halted(&self, id: u64, timeout: Duration) -> Result<Value, String> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some(halt) = self.status(id).map(|s| s["halt"].clone()).filter(|h| !h.is_null()) {
                return Ok(halt);
            }
            thread::sleep(Duration::from_millis(50));
        }
        Err(format!("node {id} did not halt within {timeout:?}"))
    }

    /// The highest applied index among the running nodes in `ids`.
    pub fn max_applied(&self, ids: &[u64]) -> u64 {
        ids.iter().filter_map(|id| self.status(*id)).filter_map(|s| s["applied"].as_u64()).max().unwrap_or(0)
    }

    /// Replaces node `id` after a halt, as the runbook says (`docs/OPERATIONS.md`): remove it
    /// from the configuration, compact the leader's log, wipe its data directory and start it
    /// empty, add it back, and compact again so that the snapshot it is sent names it. Returns
    /// once it applied what the leader had.
    ///
    /// # Errors
    /// A step failed (which, and why).
    pub fn replace(&self, id: u64, timeout: Duration) -> Result<(), String> {
        let others: Vec<u64> = self.ids().into_iter().filter(|i| *i != id).collect();
        let leader = self.wait_leader(&others, timeout)?;
        self.json(leader, "POST", &format!("/admin/remove?node={id}"))?;
        self.wait_voters(leader, id, false, timeout)?;
        self.json(leader, "POST", "/admin/compact")?;
        self.kill(id);
        let dir = self.data_dir(id);
        std::fs::remove_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        self.spawn(id, true)?;
        self.wait_answers(id, timeout)?;
        self.json(leader, "POST", &format!("/admin/add?node={id}"))?;
        self.wait_voters(leader, id, true, timeout)?;
        self.json(leader, "POST", "/admin/compact")?;
        let target = self.max_applied(&others);
        self.wait_applied(&[id], target, timeout)
    }

    fn wait_answers(&self, id: u64, timeout: Duration) -> Result<(), String> {
        let deadline = Instant::now() + timeout;
        while self.status(id).is_none() {
            if Instant::now() >= deadline {
                return Err(format!("node {id} does not answer"));
            }
            thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }

    fn wait_voters(&self, leader: u64, id: u64, present: bool, timeout: Duration) -> Result<(), String> {
        let deadline = Instant::now() + timeout;
        loop {
            let voters = self.status(leader).map(|s| s["voters"].clone()).unwrap_or_default();
            let has = voters.as_array().is_some_and(|v| v.iter().any(|x| x.as_u64() == Some(id)));
            if has == present {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "node {id} still {} the voters: {voters}",
                    if present { "not in" } else { "in" }
                ));
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// How many times `needle` occurs in the files of every node's data directory.
    pub fn grep_data(&self, needle: &[u8]) -> usize {
        self.ids().into_iter().map(|id| grep_dir(&self.data_dir(id), needle)).sum()
    }

    /// How many times `needle` occurs in the nodes' own output (`n{id}.log` beside the data).
    pub fn grep_logs(&self, needle: &[u8]) -> usize {
        let logs = self.ids().into_iter().map(|id| self.dir.join(format!("n{id}.log")));
        logs.map(|p| count(&std::fs::read(p).unwrap_or_default(), needle)).sum()
    }
}

/// How many times `needle` occurs in the files under `dir`.
pub fn grep_dir(dir: &Path, needle: &[u8]) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else { return 0 };
    entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .map(|p| {
            if p.is_dir() {
                grep_dir(&p, needle)
            } else {
                count(&std::fs::read(&p).unwrap_or_default(), needle)
            }
        })
        .sum()
}

fn count(haystack: &[u8], needle: &[u8]) -> usize {
    haystack.windows(needle.len()).filter(|w| *w == needle).count()
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        for (_, mut child) in std::mem::take(&mut *self.children()) {
            let _ = child.kill();
            let _ = child.wait();
        }
        if !self.keep {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}
