//! The KV service on raft-rs: one [`EnvelopeNode`] per process on a [`DiskStore`], its Ready loop
//! on a thread of its own, messages to the other nodes as raft-rs encodes them (protobuf) over
//! HTTP, and the key lifecycle across processes through [`HttpPlane`].

use std::collections::HashMap;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use protobuf::Message as _;
use raft::eraftpb::{ConfChange, ConfChangeType, ConfState, Message, MessageType, Snapshot};
use raft::{Config, SnapshotStatus};
use raft_envelope_core::lifecycle::{ControlPlane, Lifecycle, LifecycleError, MemberReports, Retention};
use raft_envelope_core::provider::{FileKekProvider, KeyProvider};
use raft_envelope_core::{Algorithm, ClusterId, EnvelopeLayer, LayerState, ProposalId};
use raft_envelope_raftrs::admin::{AdminHandle, AdminInbox, PlaneError};
use raft_envelope_raftrs::{EnvelopeNode, PreparedProposal, ProposeError, StateMachine};
use serde_json::{json, Value};

use crate::http::{Request, Response};
use crate::kv::{Command, KvMap};
use crate::service::{AdminOp, Engine, Failure, Peers};
use crate::status::{encryption_json, halt_json};
use crate::{block_on, DiskStore, NodeOptions};

/// The application's state machine: the map, rebuilt by replaying the log (from the retained
/// snapshot) at every start.
#[derive(Default)]
struct KvSm {
    map: KvMap,
    applied: u64,
}

impl StateMachine for KvSm {
    type Response = ();

    fn apply(&mut self, index: u64, _term: u64, payload: &[u8]) {
        self.applied = index;
        if let Some(command) = Command::decode(payload) {
            self.map.apply(&command);
        }
    }

    fn apply_control(&mut self, index: u64, _term: u64, _conf: Option<&ConfState>) {
        self.applied = index;
    }

    fn applied_index(&self) -> u64 {
        self.applied
    }

    fn snapshot_data(&self) -> Result<Vec<u8>, String> {
        Ok(self.map.to_bytes())
    }

    fn restore_snapshot(&mut self, snapshot: &Snapshot) -> Result<(), String> {
        self.map = KvMap::from_bytes(snapshot.get_data())?;
        self.applied = snapshot.get_metadata().index;
        Ok(())
    }
}

type Reply<T> = Sender<T>;

enum Input {
    Raft(Vec<Message>),
    Unreachable(u64, bool),
    Write(Vec<u8>, Reply<Result<u64, Failure>>),
    Read(String, Reply<Result<Option<String>, Failure>>),
    Status(Reply<Value>),
    Compact(Reply<Result<u64, String>>),
    Member { add: bool, node: u64, reply: Reply<Result<(), Failure>> },
}

/// A write waiting for its outcome; retried (the same sealed bytes: applied once) while the
/// refusal says nothing was appended or the outcome is unknown.
struct PendingWrite {
    payload: Vec<u8>,
    prepared: Option<PreparedProposal>,
    /// It was appended here at least once: after a leader change its outcome is unknown, and it
    /// is not sent on to the new leader (which would append it again under a new identity).
    appended: bool,
    reply: Reply<Result<u64, Failure>>,
    deadline: Instant,
}

/// How long a write may take, retries included.
const WRITE_DEADLINE: Duration = Duration::from_secs(20);

/// Applied entries between two automatic snapshots (and log compactions).
const COMPACT_EVERY: u64 = 5000;

/// A running raft-rs node of the service.
pub struct RaftrsEngine {
    id: u64,
    inputs: Sender<Input>,
    admin: AdminHandle,
    lifecycle: Lifecycle<HttpPlane>,
    kek: Arc<FileKekProvider>,
    layer: Arc<EnvelopeLayer>,
}

impl std::fmt::Debug for RaftrsEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RaftrsEngine").field("id", &self.id).finish_non_exhaustive()
    }
}

impl RaftrsEngine {
    /// Opens the node's store in `options.data_dir`, restores the retained snapshot (layer state
    /// and map) and starts the Ready loop and the senders to the other nodes.
    ///
    /// # Errors
    /// The store cannot be opened, its snapshot cannot be opened with `kek`, raft-rs refuses.
    pub fn start(options: NodeOptions, kek: Arc<FileKekProvider>) -> Result<Arc<Self>, String> {
        let id = options.id;
        let voters = if options.join { vec![] } else { options.peers.keys().copied().collect() };
        std::fs::create_dir_all(&options.data_dir).map_err(|e| e.to_string())?;
        let store = DiskStore::open(&options.data_dir.join("raft.redb"), ConfState::from((voters, vec![])))
            .map_err(|e| e.to_string())?;
        let cluster = ClusterId::new(options.cluster.clone()).map_err(|e| e.to_string())?;
        let state = Arc::new(LayerState::new(cluster));
        let mut sm = KvSm::default();
        if let Some(snapshot) = raft_envelope_raftrs::LogStore::retained_snapshot(&store) {
            // The map and the layer state come back from the snapshot the store retains; the
            // log after it is replayed by raft-rs.
            let index = snapshot.get_metadata().index;
            block_on(state.prefetch_sealed_snapshot(snapshot.get_data(), kek.as_ref()))
                .map_err(|e| format!("retained snapshot at {index}: {e}"))?;
            let user = state
                .install_snapshot(index, snapshot.get_data())
                .map_err(|e| format!("retained snapshot at {index}: {e}"))?;
            sm.map = KvMap::from_bytes(&user)?;
            sm.applied = index;
        }
        let config = Config {
            id,
            election_tick: 10,
            heartbeat_tick: 2,
            check_quorum: true,
            pre_vote: true,
            max_inflight_msgs: 256,
            ..Config::default()
        };
        let logger = slog::Logger::root(slog::Discard, slog::o!());
        let provider: Arc<dyn KeyProvider> = kek.clone();
        let node = EnvelopeNode::with_layer_state(&config, store, sm, state, provider, &logger)
            .map_err(|e| e.to_string())?
            .with_checkpoints(options.checkpoints, options.tick)
            .with_proposal_timeout(60);
        let layer = node.layer().clone();
        let (admin, inbox) = node.admin_channel().map_err(|e| e.to_string())?;
        let peers = Peers::new(&options.peers, Duration::from_secs(5));
        let (inputs, rx) = mpsc::channel();
        let mut outboxes = HashMap::new();
        for (peer, client) in peers.others(id) {
            let (tx, out_rx) = mpsc::channel::<Message>();
            outboxes.insert(peer, tx);
            let (client, back) = (client.clone(), inputs.clone());
            thread::spawn(move || send_loop(peer, &client, &out_rx, &back));
        }
        let tick = options.tick;
        thread::spawn(move || ready_loop(node, &rx, &outboxes, inbox.with_timeout_ticks(200), tick));
        // The admin side's own connections: a drain that waits on a member never holds up the
        // Raft messages to it.
        let admin_peers = Peers::new(&options.peers, Duration::from_secs(60));
        let lifecycle = Lifecycle::new(HttpPlane { local: admin.clone(), peers: admin_peers, me: id });
        Ok(Arc::new(Self { id, inputs, admin, lifecycle, kek, layer }))
    }

    fn ask<T>(&self, make: impl FnOnce(Reply<T>) -> Input) -> Result<T, Failure> {
        let (tx, rx) = mpsc::channel();
        self.inputs.send(make(tx)).map_err(|_| Failure::Unavailable("the node's loop ended".into()))?;
        rx.recv_timeout(WRITE_DEADLINE + Duration::from_secs(5))
            .map_err(|_| Failure::Unavailable("the node's loop did not answer".into()))
    }
}

fn admin_failure(e: LifecycleError<RemoteError, u64>) -> Failure {
    match e {
        LifecycleError::Engine(RemoteError::Local(PlaneError::NotLeader { leader, .. })) => {
            Failure::NotLeader((leader != 0).then_some(leader))
        }
        LifecycleError::Engine(e) => Failure::Unavailable(e.to_string()),
        LifecycleError::Busy => Failure::Unavailable(e.to_string()),
        e => Failure::Refused(e.to_string()),
    }
}

impl Engine for RaftrsEngine {
    fn id(&self) -> u64 {
        self.id
    }

    fn write(&self, command: Command) -> Result<u64, Failure> {
        self.ask(|reply| Input::Write(command.encode(), reply))?
    }

    fn read(&self, key: &str) -> Result<Option<String>, Failure> {
        self.ask(|reply| Input::Read(key.to_owned(), reply))?
    }

    fn status(&self) -> Value {
        let mut status = self.ask(Input::Status).unwrap_or_else(|e| json!({ "error": format!("{e:?}") }));
        status["encryption"] = encryption_json(self.admin.layer_state());
        status
    }

    fn admin(&self, op: AdminOp) -> Result<Value, Failure> {
        let kek = self.kek.as_ref();
        let lifecycle = &self.lifecycle;
        let algorithm = Algorithm::Aes256Gcm;
        match op {
            AdminOp::Enable => block_on(lifecycle.enable_encryption(kek, kek.kek_id(), algorithm))
                .map(|e| json!({ "key_id": e.key_id.0, "cutover": e.cutover }))
                .map_err(admin_failure),
            AdminOp::Rotate => block_on(lifecycle.rotate_key(kek, kek.kek_id(), algorithm))
                .map(|k| json!({ "key_id": k.0 }))
                .map_err(admin_failure),
            AdminOp::Retire(key) => block_on(lifecycle.retire_key(key))
                .map(|r| json!({ "retired": format!("{r:?}") }))
                .map_err(admin_failure),
            AdminOp::Destroy(key) => block_on(lifecycle.destroy_key(key))
                .map(|d| json!({ "destroyed": format!("{d:?}") }))
                .map_err(admin_failure),
            AdminOp::Compact => self
                .ask(Input::Compact)?
                .map(|index| json!({ "snapshot_index": index }))
                .map_err(Failure::Unavailable),
            AdminOp::Member { add, node } => {
                self.ask(|reply| Input::Member { add, node, reply })?.map(|()| json!({ "proposed": true }))
            }
            AdminOp::Checkpoint => Err(Failure::BadRequest(
                "raft-rs nodes propose checkpoints on their own (every 1024 entries or 10 s)".into(),
            )),
        }
    }

    fn retention(&self) -> Result<Value, Failure> {
        let report = block_on(self.admin.retention()).map_err(|e| Failure::Unavailable(e.to_string()))?;
        serde_json::to_value(report).map_err(|e| Failure::Unavailable(e.to_string()))
    }

    fn wait_applied(&self, index: u64) -> Result<u64, Failure> {
        block_on(self.admin.wait_applied(index)).map_err(|e| Failure::Unavailable(e.to_string()))
    }

    fn raft(&self, request: Request) -> Response {
        match decode_frames(&request.body) {
            Ok(messages) => match self.inputs.send(Input::Raft(messages)) {
                Ok(()) => Response::text(200, ""),
                Err(_) => Response::text(503, "stopped"),
            },
            Err(e) => Response::text(400, e),
        }
    }

    fn export_metrics(&self) {
        raft_envelope_core::metrics::export(self.admin.layer_state(), self.layer.gate());
    }
}

/// Messages to one peer, batched into one request while more are waiting.
fn send_loop(peer: u64, client: &crate::http::Client, out: &Receiver<Message>, back: &Sender<Input>) {
    while let Ok(first) = out.recv() {
        let mut batch = vec![first];
        while batch.len() < 512 {
            match out.try_recv() {
                Ok(m) => batch.push(m),
                Err(_) => break,
            }
        }
        let snapshot = batch.iter().any(|m| m.get_msg_type() == MessageType::MsgSnapshot);
        let body = encode_frames(&batch);
        let result = client.call("POST", "/raft/messages", &body);
        let ok = matches!(result, Ok((200, _)));
        if !ok {
            tracing::debug!(peer, "messages not delivered: {result:?}");
        }
        if !ok || snapshot {
            let _ = back.send(Input::Unreachable(peer, ok));
        }
    }
}

/// The body of one request to a peer: `[u32 length, big-endian][protobuf Message]` per message.
pub fn encode_frames(messages: &[Message]) -> Vec<u8> {
    let mut out = Vec::new();
    for m in messages {
        let bytes = m.write_to_bytes().unwrap_or_default();
        out.extend_from_slice(&(bytes.len() as u32).to_be_bytes());
        out.extend_from_slice(&bytes);
    }
    out
}

/// Reads the raft-rs messages a peer sent in one request body, framed as [`encode_frames`] wrote
/// them. Untrusted bytes from the network: a truncated or malformed frame is an error, never a
/// panic (fuzzed: `fuzz/`).
///
/// # Errors
/// A truncated frame or a message that does not decode.
pub fn decode_frames(mut body: &[u8]) -> Result<Vec<Message>, String> {
    let mut out = Vec::new();
    while !body.is_empty() {
        let (len, rest) = body.split_at_checked(4).ok_or("truncated frame")?;
        let len = u32::from_be_bytes(len.try_into().map_err(|_| "bad length")?) as usize;
        let (bytes, rest) = rest.split_at_checked(len).ok_or("truncated message")?;
        out.push(Message::parse_from_bytes(bytes).map_err(|e| e.to_string())?);
        body = rest;
    }
    Ok(out)
}

fn ready_loop(
    mut node: EnvelopeNode<DiskStore, KvSm>,
    inputs: &Receiver<Input>,
    outboxes: &HashMap<u64, Sender<Message>>,
    mut inbox: AdminInbox,
    tick: Duration,
) {
    let mut waiting: HashMap<ProposalId, PendingWrite> = HashMap::new();
    let mut retry: Vec<PendingWrite> = Vec::new();
    let mut next_tick = Instant::now() + tick;
    loop {
        match inputs.recv_timeout(next_tick.saturating_duration_since(Instant::now())) {
            Ok(Input::Raft(messages)) => {
                for m in messages {
                    if let Err(e) = node.step(m) {
                        tracing::debug!("message refused: {e}");
                    }
                }
            }
            Ok(Input::Unreachable(peer, delivered)) => {
                if !delivered {
                    node.report_unreachable(peer);
                }
                let status = if delivered { SnapshotStatus::Finish } else { SnapshotStatus::Failure };
                node.report_snapshot(peer, status);
            }
            Ok(Input::Write(payload, reply)) => {
                let write = PendingWrite {
                    payload,
                    prepared: None,
                    appended: false,
                    reply,
                    deadline: Instant::now() + WRITE_DEADLINE,
                };
                submit(&mut node, write, &mut waiting, &mut retry);
            }
            Ok(Input::Read(key, reply)) => drop(reply.send(match node.halted() {
                Some(halt) => Err(Failure::Unavailable(format!("node {} halted: {halt}", node.id()))),
                None => Ok(node.state_machine().map.get(&key).cloned()),
            })),
            Ok(Input::Status(reply)) => drop(reply.send(node_status(&node))),
            Ok(Input::Compact(reply)) => drop(reply.send(node.compact().map_err(|e| e.to_string()))),
            Ok(Input::Member { add, node: id, reply }) => {
                let mut change = ConfChange { node_id: id, ..ConfChange::default() };
                change.set_change_type(if add {
                    ConfChangeType::AddNode
                } else {
                    ConfChangeType::RemoveNode
                });
                let result = if node.is_leader() {
                    node.propose_conf_change(Vec::new(), change).map_err(|e| Failure::Refused(e.to_string()))
                } else {
                    Err(Failure::NotLeader(Some(node.leader_id()).filter(|l| *l != 0)))
                };
                let _ = reply.send(result);
            }
            Err(RecvTimeoutError::Disconnected) => return,
            Err(RecvTimeoutError::Timeout) => {
                node.tick();
                next_tick = Instant::now() + tick;
                for write in std::mem::take(&mut retry) {
                    submit(&mut node, write, &mut waiting, &mut retry);
                }
            }
        }
        if node.needs_prefetch() {
            // Outside the apply path: the key provider may be slow (a KMS).
            if let Some((index, e)) = block_on(node.prefetch_pending()) {
                tracing::warn!(index, "could not unwrap a key ahead of applying: {e}");
            }
        }
        let messages = match node.on_ready() {
            Ok(messages) => messages,
            Err(_) => node.take_last_messages(), // halted: fail closed, send what was due
        };
        for m in messages {
            if let Some(out) = outboxes.get(&m.to) {
                let _ = out.send(m);
            }
        }
        // As openraft's `SnapshotPolicy::LogsSinceLast`: a sealed snapshot every
        // COMPACT_EVERY applied entries keeps the log (and a restart's replay) bounded.
        let retained = node.raw_node().raft.raft_log.first_index();
        if node.halted().is_none() && node.applied().saturating_sub(retained) >= COMPACT_EVERY {
            if let Err(e) = node.compact() {
                tracing::warn!("compaction failed: {e}");
            }
        }
        node.serve_admin(&mut inbox);
        for done in node.take_completions() {
            let Some(write) = waiting.remove(&done.id) else { continue };
            match done.result {
                Ok(applied) => drop(write.reply.send(Ok(applied.index))),
                Err(e) => settle(write, e, &mut retry),
            }
        }
    }
}

fn submit(
    node: &mut EnvelopeNode<DiskStore, KvSm>,
    mut write: PendingWrite,
    waiting: &mut HashMap<ProposalId, PendingWrite>,
    retry: &mut Vec<PendingWrite>,
) {
    // Writes are proposed on the leader only: a follower would forward the proposal inside
    // raft-rs, but only a sealed one carries an identity its completion can be matched by here.
    // The service sends the request on to the leader instead.
    if !node.is_leader() {
        let leader = Some(node.leader_id()).filter(|l| *l != 0);
        let _ = write.reply.send(Err(match leader {
            _ if write.appended => Failure::Unavailable(
                "outcome unknown: the leader changed after the write was appended (read before retrying)"
                    .into(),
            ),
            Some(l) => Failure::NotLeader(Some(l)),
            None => Failure::Unavailable("no leader known here".into()),
        }));
        return;
    }
    let prepared = match write.prepared.take() {
        Some(p) => Ok(p),
        None => node.prepare(write.payload.clone()),
    };
    let result = prepared.and_then(|p| {
        let submitted = node.submit(&p);
        write.prepared = Some(p);
        submitted
    });
    match result {
        Ok(ticket) => {
            write.appended = true;
            drop(waiting.insert(ticket.id, write));
        }
        Err(e) => settle(write, e, retry),
    }
}

/// What a failed attempt means for a write: done (a duplicate names where it was applied),
/// retried with the same bytes (the outcome is unknown: applied at most once), prepared again
/// (refused before anything was appended), or failed.
fn settle(mut write: PendingWrite, e: ProposeError, retry: &mut Vec<PendingWrite>) {
    let sealed = write.prepared.as_ref().is_some_and(|p| p.kind() == raft_envelope_core::EntryKind::Envelope);
    match e {
        ProposeError::Duplicate { first_index, .. } => return drop(write.reply.send(Ok(first_index))),
        ProposeError::Halted { .. } | ProposeError::Stopped(_) | ProposeError::Expired { .. } => {
            return drop(write.reply.send(Err(Failure::Unavailable(e.to_string()))));
        }
        _ if Instant::now() >= write.deadline => {
            return drop(write.reply.send(Err(Failure::Unavailable(e.to_string()))));
        }
        // Unknown outcome: a sealed write goes again byte for byte (the layer applies it once).
        ProposeError::Dropped | ProposeError::TimedOut { .. } | ProposeError::Superseded { .. } if sealed => {
        }
        // Refused before appending (or a cleartext write whose outcome is unknown): prepare again.
        _ => write.prepared = None,
    }
    retry.push(write);
}

fn node_status(node: &EnvelopeNode<DiskStore, KvSm>) -> Value {
    let raft = &node.raw_node().raft;
    let role = match raft.state {
        raft::StateRole::Leader => "leader",
        raft::StateRole::Follower => "follower",
        raft::StateRole::Candidate | raft::StateRole::PreCandidate => "candidate",
    };
    json!({
        "node": node.id(),
        "engine": "raftrs",
        "role": role,
        "leader": node.leader_id(),
        "term": node.term(),
        "applied": node.applied(),
        "commit": node.commit_index(),
        "last_index": node.last_index(),
        "first_index": raft.raft_log.first_index(),
        "voters": raft.prs().conf().voters().ids().iter().collect::<Vec<u64>>(),
        "keys": node.state_machine().map.len(),
        "halt": node.halted().map(halt_json),
        "stopped": node.stopped().map(|s| json!({ "index": s.index, "detail": s.detail })),
    })
}

/// The raft-rs [`ControlPlane`] across processes: leader-local steps through this node's
/// [`AdminHandle`], the drain and the destroy proof over every member's HTTP API.
struct HttpPlane {
    local: AdminHandle,
    peers: Peers,
    me: u64,
}

/// What the cross-process plane failed at.
#[derive(Debug, thiserror::Error)]
enum RemoteError {
    #[error(transparent)]
    Local(PlaneError),
}

#[raft_envelope_core::async_trait]
impl ControlPlane for HttpPlane {
    type NodeId = u64;
    type Error = RemoteError;

    fn layer_state(&self) -> &LayerState {
        self.local.layer_state()
    }

    async fn catch_up(&self) -> Result<(), RemoteError> {
        self.local.catch_up().await.map_err(RemoteError::Local)
    }

    async fn propose_control(&self, id: ProposalId, entry: Vec<u8>) -> Result<u64, RemoteError> {
        self.local.propose_control(id, entry).await.map_err(RemoteError::Local)
    }

    /// Bounded, best effort (as the in-process `ClusterPlane`): on raft-rs a member that lags
    /// cannot append cleartext above the cutover (`DESIGN.md` §10.9); waiting only spares
    /// writers refusals.
    async fn drain_cleartext(&self, applied_through: u64) -> Result<(), RemoteError> {
        let _ = self.local.wait_applied(applied_through).await;
        for (peer, client) in self.peers.others(self.me) {
            if let Err(e) = client.call("GET", &format!("/admin/applied?index={applied_through}"), &[]) {
                tracing::debug!(peer, "not waiting for this member to apply the promote: {e}");
            }
        }
        Ok(())
    }

    async fn retention_reports(&self) -> Result<MemberReports<u64>, RemoteError> {
        let members = self.local.members().await.map_err(RemoteError::Local)?;
        let mut reports = Vec::new();
        if let Ok(report) = self.local.retention().await {
            reports.push(report);
        }
        for (peer, client) in self.peers.others(self.me).filter(|(p, _)| members.contains(p)) {
            // A member that cannot answer sends no report: the destroy is refused, naming it.
            match client.call("GET", "/admin/retention", &[]) {
                Ok((200, body)) => match serde_json::from_slice::<Retention<u64>>(&body) {
                    Ok(report) => reports.push(report),
                    Err(e) => tracing::warn!(peer, "unreadable retention report: {e}"),
                },
                Ok((status, _)) => tracing::warn!(peer, status, "no retention report"),
                Err(e) => tracing::warn!(peer, "no retention report: {e}"),
            }
        }
        Ok(MemberReports::new(members, reports))
    }
}
