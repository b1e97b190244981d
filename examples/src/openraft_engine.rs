//! The KV service on openraft: one [`EnvelopeRaft`] per process on a [`RedbLogStore`], openraft's
//! RPCs as JSON over HTTP (as openraft's own examples carry them), the state machine in memory
//! and persisted only as sealed snapshots.
//!
//! The state machine ([`KvStateMachine`]) never writes its state in the clear: each snapshot it
//! builds or installs is sealed with the node's layer state (`LayerState::seal_snapshot_of`, the
//! same frame the adapter sends) and fsynced to `snapshot.sealed` before openraft is told, so a
//! purged log is always covered on disk. At start the node opens that file with its KEK (map and
//! layer state at the snapshot's index) and openraft replays the log after it.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::io::{Cursor, Write as _};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use openraft::error::{InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable};
use openraft::network::{Backoff, RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::storage::RaftStateMachine;
use openraft::{
    AnyError, BasicNode, Entry, EntryPayload, LogId, OptionalSend, Raft, RaftSnapshotBuilder, ServerState,
    Snapshot, SnapshotMeta, SnapshotPolicy, StorageError, StorageIOError, StoredMembership,
};
use raft_envelope_core::lifecycle::{Retention, SnapshotCapture};
use raft_envelope_core::provider::{FileKekProvider, KeyProvider};
use raft_envelope_core::{Algorithm, ClusterId, EnvelopeLayer, LayerState};
use raft_envelope_openraft::{
    layer_from_state, EnvelopeRaft, EnvelopeStateMachine, HaltRecord, JsonCodec, PayloadCodec,
    PrefetchingLogStore, Sealed, WriteError, DEFAULT_PROVIDER_WARN_INTERVAL,
};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::http::{Client, Request, Response};
use crate::kv::{Command, KvMap};
use crate::service::{AdminOp, Engine, Failure, Peers};
use crate::status::{encryption_json, halt_json};
use crate::{NodeOptions, RedbLogStore};

openraft::declare_raft_types!(
    /// The service's openraft types, before the layer's `Sealed<KvConfig>`.
    pub KvConfig:
        D = Command,
        R = Option<String>,
);

/// What the engine runs: openraft over the layer's type config.
type KvRaft = Raft<Sealed<KvConfig>>;
type NodeId = u64;

/// The application's state: the map and what openraft needs to know about it.
#[derive(Default)]
struct SmState {
    map: KvMap,
    last_applied: Option<LogId<NodeId>>,
    membership: StoredMembership<NodeId, BasicNode>,
    current: Option<(SnapshotMeta<NodeId, BasicNode>, Vec<u8>)>,
}

/// The KV state machine for openraft: in memory, persisted as sealed snapshots only.
#[derive(Clone)]
pub struct KvStateMachine {
    inner: Arc<Mutex<SmState>>,
    layer: Arc<LayerState>,
    file: Arc<PathBuf>,
}

impl fmt::Debug for KvStateMachine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KvStateMachine").field("last_applied", &self.lock().last_applied).finish()
    }
}

/// `snapshot.sealed`: magic, the metadata's length (u32, big-endian), the metadata (JSON: ids and
/// membership, nothing secret), the sealed frame (`DESIGN.md` §10.10).
const SNAPSHOT_MAGIC: &[u8; 8] = b"KVSNAP1\n";

fn sm_error(e: impl fmt::Display) -> StorageError<NodeId> {
    StorageIOError::write_state_machine(AnyError::error(e.to_string())).into()
}

impl KvStateMachine {
    /// A state machine persisting its sealed snapshots in `data_dir`, sealed by `layer`; when the
    /// directory holds one, its map and `layer` come back from it (keys unwrapped with `kek`).
    ///
    /// # Errors
    /// The snapshot file cannot be read or opened (tampered, another cluster, a KEK that does not
    /// unwrap its keys): the node does not start.
    pub async fn open(
        data_dir: &Path,
        layer: Arc<LayerState>,
        kek: &dyn KeyProvider,
    ) -> Result<Self, String> {
        let file = data_dir.join("snapshot.sealed");
        let mut state = SmState::default();
        if let Some((meta, frame)) = read_snapshot_file(&file)? {
            let index = meta.last_log_id.map_or(0, |l| l.index);
            layer
                .prefetch_sealed_snapshot(&frame, kek)
                .await
                .map_err(|e| format!("snapshot at {index}: {e}"))?;
            let user =
                layer.install_snapshot(index, &frame).map_err(|e| format!("snapshot at {index}: {e}"))?;
            state.map = KvMap::from_bytes(&user)?;
            state.last_applied = meta.last_log_id;
            state.membership = meta.last_membership.clone();
            state.current = Some((meta, user));
        }
        Ok(Self { inner: Arc::new(Mutex::new(state)), layer, file: Arc::new(file) })
    }

    fn lock(&self) -> MutexGuard<'_, SmState> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Writes `frame` with `meta` to the snapshot file: a new file, fsynced, renamed over the old
    /// one, the directory fsynced.
    fn persist(&self, meta: &SnapshotMeta<NodeId, BasicNode>, frame: &[u8]) -> Result<(), std::io::Error> {
        let meta_json = serde_json::to_vec(meta)?;
        let tmp = self.file.with_extension("tmp");
        let write = || -> std::io::Result<()> {
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(SNAPSHOT_MAGIC)?;
            f.write_all(&(meta_json.len() as u32).to_be_bytes())?;
            f.write_all(&meta_json)?;
            f.write_all(frame)?;
            f.sync_all()?;
            std::fs::rename(&tmp, self.file.as_ref())?;
            if let Some(dir) = self.file.parent() {
                std::fs::File::open(dir)?.sync_all()?;
            }
            Ok(())
        };
        write()
    }
}

/// A persisted snapshot: its metadata and its sealed frame.
type StoredSnapshot = (SnapshotMeta<NodeId, BasicNode>, Vec<u8>);

fn read_snapshot_file(file: &Path) -> Result<Option<StoredSnapshot>, String> {
    let bytes = match std::fs::read(file) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("{}: {e}", file.display())),
    };
    let bad = || format!("{}: not a snapshot file", file.display());
    let rest = bytes.strip_prefix(SNAPSHOT_MAGIC.as_slice()).ok_or_else(bad)?;
    let (len, rest) = rest.split_at_checked(4).ok_or_else(bad)?;
    let len = u32::from_be_bytes(len.try_into().map_err(|_| bad())?) as usize;
    let (meta, frame) = rest.split_at_checked(len).ok_or_else(bad)?;
    let meta = serde_json::from_slice(meta).map_err(|e| format!("{}: {e}", file.display()))?;
    Ok(Some((meta, frame.to_vec())))
}

/// The builder of a [`KvStateMachine`] snapshot: the map and the layer state, both captured when
/// openraft asked for the builder.
pub struct KvSnapshotBuilder {
    meta: SnapshotMeta<NodeId, BasicNode>,
    data: Vec<u8>,
    capture: SnapshotCapture,
    sm: KvStateMachine,
}

impl fmt::Debug for KvSnapshotBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KvSnapshotBuilder").field("snapshot_id", &self.meta.snapshot_id).finish()
    }
}

impl RaftSnapshotBuilder<KvConfig> for KvSnapshotBuilder {
    async fn build_snapshot(&mut self) -> Result<Snapshot<KvConfig>, StorageError<NodeId>> {
        if let Some(last) = self.meta.last_log_id {
            let frame = self
                .sm
                .layer
                .seal_snapshot_of(self.capture.layer(), last.index, &self.data)
                .map_err(sm_error)?;
            self.sm.persist(&self.meta, &frame).map_err(sm_error)?;
        }
        self.sm.lock().current = Some((self.meta.clone(), self.data.clone()));
        Ok(Snapshot { meta: self.meta.clone(), snapshot: Box::new(Cursor::new(self.data.clone())) })
    }
}

impl RaftStateMachine<KvConfig> for KvStateMachine {
    type SnapshotBuilder = KvSnapshotBuilder;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogId<NodeId>>, StoredMembership<NodeId, BasicNode>), StorageError<NodeId>> {
        let state = self.lock();
        Ok((state.last_applied, state.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Option<String>>, StorageError<NodeId>>
    where
        I: IntoIterator<Item = Entry<KvConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut state = self.lock();
        let mut responses = Vec::new();
        for entry in entries {
            state.last_applied = Some(entry.log_id);
            responses.push(match entry.payload {
                EntryPayload::Normal(command) => {
                    let key = match &command {
                        Command::Put { key, .. } | Command::Delete { key } => key.clone(),
                    };
                    let previous = state.map.get(&key).cloned();
                    state.map.apply(&command);
                    previous
                }
                EntryPayload::Membership(m) => {
                    state.membership = StoredMembership::new(Some(entry.log_id), m);
                    None
                }
                EntryPayload::Blank => None,
            });
        }
        Ok(responses)
    }

    async fn get_snapshot_builder(&mut self) -> KvSnapshotBuilder {
        let state = self.lock();
        let meta = SnapshotMeta {
            last_log_id: state.last_applied,
            last_membership: state.membership.clone(),
            snapshot_id: format!("applied-{}", state.last_applied.map_or(0, |l| l.index)),
        };
        KvSnapshotBuilder {
            meta,
            data: state.map.to_bytes(),
            capture: self.layer.capture_for_snapshot(),
            sm: self.clone(),
        }
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, StorageError<NodeId>> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<NodeId, BasicNode>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError<NodeId>> {
        let data = snapshot.into_inner();
        let map = KvMap::from_bytes(&data).map_err(sm_error)?;
        // The adapter restored the layer state from the sealed snapshot just before: both are at
        // the snapshot's index, and persisted together.
        if let Some(last) = meta.last_log_id {
            let frame = self.layer.seal_snapshot(last.index, &data).map_err(sm_error)?;
            self.persist(meta, &frame).map_err(sm_error)?;
        }
        let mut state = self.lock();
        state.map = map;
        state.last_applied = meta.last_log_id;
        state.membership = meta.last_membership.clone();
        state.current = Some((meta.clone(), data));
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<KvConfig>>, StorageError<NodeId>> {
        let state = self.lock();
        Ok(state.current.as_ref().map(|(meta, data)| Snapshot {
            meta: meta.clone(),
            snapshot: Box::new(Cursor::new(data.clone())),
        }))
    }
}

/// openraft's RPCs to the other nodes: JSON over HTTP.
#[derive(Debug, Clone)]
struct HttpNetwork {
    peers: Peers,
    tick: Duration,
}

impl RaftNetworkFactory<Sealed<KvConfig>> for HttpNetwork {
    type Network = HttpConnection;

    async fn new_client(&mut self, target: NodeId, _node: &BasicNode) -> HttpConnection {
        HttpConnection { client: self.peers.get(target).cloned(), target, tick: self.tick }
    }
}

/// One peer.
#[derive(Debug)]
struct HttpConnection {
    client: Option<Client>,
    target: NodeId,
    tick: Duration,
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct Unavailable(String);

type RpcResult<T, E> = Result<T, RPCError<NodeId, BasicNode, RaftError<NodeId, E>>>;

impl HttpConnection {
    async fn call<Req, Resp, E>(&self, path: &'static str, request: &Req) -> RpcResult<Resp, E>
    where
        Req: Serialize,
        Resp: for<'de> Deserialize<'de>,
        E: std::error::Error + for<'de> Deserialize<'de>,
    {
        let client = self.client.clone().ok_or_else(|| {
            RPCError::Unreachable(Unreachable::new(&Unavailable(format!("no address for {}", self.target))))
        })?;
        let body = serde_json::to_vec(request).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        let answer = tokio::task::spawn_blocking(move || client.call("POST", path, &body))
            .await
            .map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        let (status, body) = answer.map_err(|e| RPCError::Unreachable(Unreachable::new(&e)))?;
        if status != 200 {
            let why = Unavailable(format!("{} answered {status}", self.target));
            return Err(RPCError::Unreachable(Unreachable::new(&why)));
        }
        let result: Result<Resp, RaftError<NodeId, E>> =
            serde_json::from_slice(&body).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        result.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }
}

impl RaftNetwork<Sealed<KvConfig>> for HttpConnection {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<Sealed<KvConfig>>,
        _option: RPCOption,
    ) -> RpcResult<AppendEntriesResponse<NodeId>, openraft::error::Infallible> {
        self.call("/raft/append", &rpc).await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<Sealed<KvConfig>>,
        _option: RPCOption,
    ) -> RpcResult<InstallSnapshotResponse<NodeId>, InstallSnapshotError> {
        self.call("/raft/snapshot", &rpc).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        _option: RPCOption,
    ) -> RpcResult<VoteResponse<NodeId>, openraft::error::Infallible> {
        self.call("/raft/vote", &rpc).await
    }

    /// A peer that is down is retried every other tick, not after openraft's 500 ms.
    fn backoff(&self) -> Backoff {
        Backoff::new(std::iter::repeat(self.tick * 2))
    }
}

/// How long a write may take, retries included.
const WRITE_DEADLINE: Duration = Duration::from_secs(20);

/// A running openraft node of the service.
pub struct OpenraftEngine {
    id: u64,
    rt: tokio::runtime::Runtime,
    raft: EnvelopeRaft<KvConfig>,
    sm: KvStateMachine,
    state: Arc<LayerState>,
    layer: Arc<EnvelopeLayer>,
    halt: HaltRecord,
    kek: Arc<FileKekProvider>,
    peers: Peers,
    /// Admin commands run one at a time on this node.
    admin_lock: tokio::sync::Mutex<()>,
}

impl fmt::Debug for OpenraftEngine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OpenraftEngine").field("id", &self.id).finish_non_exhaustive()
    }
}

impl OpenraftEngine {
    /// Opens the node's store and sealed snapshot in `options.data_dir` and starts openraft;
    /// the lowest id of a new cluster initializes it.
    ///
    /// # Errors
    /// The store or the snapshot cannot be opened, openraft refuses the configuration.
    pub fn start(options: NodeOptions, kek: Arc<FileKekProvider>) -> Result<Arc<dyn Engine>, String> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .map_err(|e| e.to_string())?;
        std::fs::create_dir_all(&options.data_dir).map_err(|e| e.to_string())?;
        let cluster = ClusterId::new(options.cluster.clone()).map_err(|e| e.to_string())?;
        let state = Arc::new(LayerState::new(cluster));
        let sm = rt.block_on(KvStateMachine::open(&options.data_dir, state.clone(), kek.as_ref()))?;
        let layer = layer_from_state(&state);
        let codec: Arc<dyn PayloadCodec<Command>> = Arc::new(JsonCodec::<Command>::new());
        let provider: Arc<dyn KeyProvider> = kek.clone();
        let envelope_sm =
            EnvelopeStateMachine::with_layer_state(sm.clone(), layer.clone(), state.clone(), codec.clone())
                .with_key_provider(provider.clone(), DEFAULT_PROVIDER_WARN_INTERVAL);
        let halt = envelope_sm.halt_record();
        let store = RedbLogStore::<Sealed<KvConfig>>::open(&options.data_dir.join("openraft.redb"))
            .map_err(|e| e.to_string())?;
        let log = PrefetchingLogStore::new(store, state.clone(), provider);
        let tick_ms = options.tick.as_millis() as u64;
        let config = openraft::Config {
            cluster_name: options.cluster.clone(),
            heartbeat_interval: tick_ms * 2,
            election_timeout_min: tick_ms * 10,
            election_timeout_max: tick_ms * 20,
            // Snapshots every 5000 entries; the log up to a snapshot is purged once it is on disk.
            snapshot_policy: SnapshotPolicy::LogsSinceLast(5000),
            max_in_snapshot_log_to_keep: 0,
            ..Default::default()
        }
        .validate()
        .map_err(|e| e.to_string())?;
        let peers = Peers::new(&options.peers, Duration::from_secs(5));
        let network = HttpNetwork { peers, tick: options.tick };
        // The admin side's own connections (the destroy proof's reports), apart from openraft's.
        let peers = Peers::new(&options.peers, Duration::from_secs(60));
        let raft: KvRaft =
            match rt.block_on(Raft::new(options.id, Arc::new(config), network, log, envelope_sm)) {
                Ok(raft) => raft,
                // openraft re-applies the committed log while it starts: an entry that does not open
                // stops it there. The node stays up to say so (status, metrics) and serves nothing.
                Err(_) if halt.get().is_some() => {
                    return Ok(Arc::new(HaltedNode { id: options.id, _rt: rt, state, layer, halt }));
                }
                Err(e) => return Err(e.to_string()),
            };
        let first = options.peers.keys().next().copied();
        if !options.join && first == Some(options.id) {
            let members: BTreeMap<NodeId, BasicNode> =
                options.peers.iter().map(|(id, addr)| (*id, BasicNode::new(addr.to_string()))).collect();
            // Refused (NotAllowed) once the cluster is initialized: a restart.
            if let Err(e) = rt.block_on(raft.initialize(members)) {
                tracing::debug!("not initializing: {e}");
            }
        }
        let raft = EnvelopeRaft::with_layer_state(raft, layer.clone(), state.clone(), codec);
        raft.set_checkpoints(options.checkpoints);
        Ok(Arc::new(Self {
            id: options.id,
            rt,
            raft,
            sm,
            state,
            layer,
            halt,
            kek,
            peers,
            admin_lock: tokio::sync::Mutex::new(()),
        }))
    }

    fn leader(&self) -> Option<NodeId> {
        self.raft.raft().metrics().borrow().current_leader
    }

    fn not_leader(&self) -> Failure {
        Failure::NotLeader(self.leader().filter(|l| *l != self.id))
    }

    async fn write_async(&self, command: &Command) -> Result<u64, Failure> {
        // Sent on to the leader only before anything was proposed here: once proposed, openraft
        // answers `ForwardToLeader` also for an entry it appended before losing leadership, and
        // the new leader would append the write again under a new identity.
        if self.leader() != Some(self.id) {
            return Err(self.not_leader());
        }
        let deadline = Instant::now() + WRITE_DEADLINE;
        let mut prepared = None;
        loop {
            let p = match prepared.take() {
                Some(p) => p,
                None => self.raft.prepare(command).map_err(|e| Failure::Unavailable(e.to_string()))?,
            };
            let error = match self.raft.submit(&p).await {
                Ok(response) => return Ok(response.log_id.index),
                Err(WriteError::Duplicate { first_index, .. }) => return Ok(first_index),
                Err(e) => e,
            };
            if error.forward_to_leader().is_some() {
                return Err(Failure::Unavailable(format!(
                    "outcome unknown: leadership moved while the write was proposed (read before retrying): {error}"
                )));
            }
            if Instant::now() >= deadline || self.halt.get().is_some() {
                return Err(Failure::Unavailable(error.to_string()));
            }
            match &error {
                // Refused before it was appended: prepare it again (a rotation, a control entry
                // being applied, a new leader catching up).
                e if e.is_seal_refusal() => {}
                // The outcome is unknown (a leader change, a timeout): the same sealed bytes
                // again, applied at most once.
                WriteError::Raft(_) if p.kind() == raft_envelope_core::EntryKind::Envelope => {
                    prepared = Some(p)
                }
                WriteError::Raft(_) => {}
                _ => return Err(Failure::Unavailable(error.to_string())),
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn admin_async(&self, op: AdminOp) -> Result<Value, Failure> {
        let raft = &self.raft;
        let kek = self.kek.as_ref();
        let algorithm = Algorithm::Aes256Gcm;
        let leader_only = op.on_leader();
        if leader_only && raft.raft().ensure_linearizable().await.is_err() {
            return Err(self.not_leader());
        }
        let _one = self.admin_lock.lock().await;
        let failed = |e: raft_envelope_openraft::AdminError<NodeId, BasicNode>| match e
            .engine()
            .and_then(|p| p.forward_to_leader())
        {
            Some(_) => self.not_leader(),
            None => Failure::Refused(e.to_string()),
        };
        match op {
            // Only the leader appends client writes (followers send them to it), so it is the
            // only proposer the drain waits for.
            AdminOp::Enable => raft
                .enable_encryption(kek, kek.kek_id(), algorithm, std::slice::from_ref(raft))
                .await
                .map(|e| json!({ "key_id": e.key_id.0, "cutover": e.cutover }))
                .map_err(failed),
            AdminOp::Rotate => raft
                .rotate_key(kek, kek.kek_id(), algorithm)
                .await
                .map(|k| json!({ "key_id": k.0 }))
                .map_err(failed),
            AdminOp::Retire(key) => {
                raft.retire_key(key).await.map(|r| json!({ "retired": format!("{r:?}") })).map_err(failed)
            }
            AdminOp::Destroy(key) => {
                let reports = self.gather_retention().await;
                raft.destroy_key(key, &reports)
                    .await
                    .map(|d| json!({ "destroyed": format!("{d:?}") }))
                    .map_err(failed)
            }
            AdminOp::Compact => {
                let applied = raft.raft().metrics().borrow().last_applied.map_or(0, |l| l.index);
                raft.raft().trigger().snapshot().await.map_err(|e| Failure::Unavailable(e.to_string()))?;
                let waited = raft
                    .raft()
                    .wait(Some(Duration::from_secs(10)))
                    .metrics(|m| m.snapshot.is_some_and(|s| s.index >= applied), "snapshot")
                    .await
                    .map_err(|e| Failure::Unavailable(e.to_string()))?;
                Ok(json!({ "snapshot_index": waited.snapshot.map(|s| s.index) }))
            }
            AdminOp::Checkpoint => {
                raft.propose_checkpoint().await.map(|i| json!({ "index": i })).map_err(failed)
            }
            AdminOp::Member { add, node } => self.change_member(add, node).await,
        }
    }

    async fn change_member(&self, add: bool, node: NodeId) -> Result<Value, Failure> {
        let raft = self.raft.raft();
        let voters: BTreeSet<NodeId> =
            raft.metrics().borrow().membership_config.membership().voter_ids().collect();
        let failed = |e: String| Failure::Refused(e);
        let mut next = voters.clone();
        if add {
            let addr = self
                .peers
                .get(node)
                .map(|c| c.addr().to_string())
                .ok_or(Failure::BadRequest(format!("no address for {node}")))?;
            raft.add_learner(node, BasicNode::new(addr), true).await.map_err(|e| failed(e.to_string()))?;
            next.insert(node);
        } else {
            next.remove(&node);
        }
        raft.change_membership(next, false).await.map_err(|e| failed(e.to_string()))?;
        Ok(
            json!({ "voters": raft.metrics().borrow().membership_config.membership().voter_ids().collect::<Vec<_>>() }),
        )
    }

    async fn gather_retention(&self) -> Vec<Retention<NodeId>> {
        let mut reports = vec![self.raft.retention()];
        for (peer, client) in self.peers.others(self.id) {
            let client = client.clone();
            let answer =
                tokio::task::spawn_blocking(move || client.call("GET", "/admin/retention", &[])).await;
            match answer {
                Ok(Ok((200, body))) => match serde_json::from_slice(&body) {
                    Ok(report) => reports.push(report),
                    Err(e) => tracing::warn!(peer, "unreadable retention report: {e}"),
                },
                // A member that cannot answer sends no report: the destroy is refused, naming it.
                other => tracing::warn!(peer, "no retention report: {other:?}"),
            }
        }
        reports
    }

    fn raft_rpc(&self, request: &Request) -> Result<Vec<u8>, String> {
        let raft = self.raft.raft();
        let body = &request.body;
        let json = |e: serde_json::Error| e.to_string();
        match request.path.as_str() {
            "/raft/append" => {
                let rpc = serde_json::from_slice(body).map_err(json)?;
                serde_json::to_vec(&self.rt.block_on(raft.append_entries(rpc))).map_err(json)
            }
            "/raft/vote" => {
                let rpc = serde_json::from_slice(body).map_err(json)?;
                serde_json::to_vec(&self.rt.block_on(raft.vote(rpc))).map_err(json)
            }
            "/raft/snapshot" => {
                let rpc = serde_json::from_slice(body).map_err(json)?;
                serde_json::to_vec(&self.rt.block_on(raft.install_snapshot(rpc))).map_err(json)
            }
            other => Err(format!("no endpoint {other}")),
        }
    }
}

impl Engine for OpenraftEngine {
    fn id(&self) -> u64 {
        self.id
    }

    fn write(&self, command: Command) -> Result<u64, Failure> {
        self.rt.block_on(self.write_async(&command))
    }

    fn read(&self, key: &str) -> Result<Option<String>, Failure> {
        if let Some(halt) = self.halt.get() {
            return Err(Failure::Unavailable(format!("node {} halted: {halt}", self.id)));
        }
        Ok(self.sm.lock().map.get(key).cloned())
    }

    fn status(&self) -> Value {
        let m = self.raft.raft().metrics().borrow().clone();
        let role = match m.state {
            ServerState::Leader => "leader",
            ServerState::Follower => "follower",
            ServerState::Candidate => "candidate",
            ServerState::Learner => "learner",
            ServerState::Shutdown => "stopped",
        };
        json!({
            "node": self.id,
            "engine": "openraft",
            "role": role,
            "leader": m.current_leader.unwrap_or(0),
            "term": m.current_term,
            "applied": m.last_applied.map_or(0, |l| l.index),
            "last_index": m.last_log_index.unwrap_or(0),
            "first_index": m.purged.map_or(1, |p| p.index + 1),
            "voters": m.membership_config.membership().voter_ids().collect::<Vec<_>>(),
            "keys": self.sm.lock().map.len(),
            "halt": self.halt.get().as_ref().map(halt_json),
            "stopped": matches!(m.state, ServerState::Shutdown).then(|| json!({ "detail": format!("{:?}", m.running_state) })),
            "encryption": encryption_json(&self.state),
        })
    }

    fn admin(&self, op: AdminOp) -> Result<Value, Failure> {
        self.rt.block_on(self.admin_async(op))
    }

    fn retention(&self) -> Result<Value, Failure> {
        serde_json::to_value(self.raft.retention()).map_err(|e| Failure::Unavailable(e.to_string()))
    }

    fn wait_applied(&self, index: u64) -> Result<u64, Failure> {
        self.rt
            .block_on(
                self.raft
                    .raft()
                    .wait(Some(Duration::from_secs(10)))
                    .applied_index_at_least(Some(index), "admin"),
            )
            .map(|m| m.last_applied.map_or(0, |l| l.index))
            .map_err(|e| Failure::Unavailable(e.to_string()))
    }

    fn raft(&self, request: Request) -> Response {
        match self.raft_rpc(&request) {
            Ok(body) => Response { status: 200, content_type: "application/json", body },
            Err(e) => Response::text(400, e),
        }
    }

    fn export_metrics(&self) {
        raft_envelope_core::metrics::export(&self.state, self.layer.gate());
    }
}

/// A node that halted while openraft started (re-applying its committed log): it answers
/// `status` and `/metrics` with the halt and refuses everything else. A restart replays the same
/// entry; repair the replica (`docs/OPERATIONS.md`).
struct HaltedNode {
    id: u64,
    _rt: tokio::runtime::Runtime,
    state: Arc<LayerState>,
    layer: Arc<EnvelopeLayer>,
    halt: HaltRecord,
}

impl HaltedNode {
    fn refused(&self) -> Failure {
        let why = self.halt.get().map(|h| h.to_string()).unwrap_or_default();
        Failure::Unavailable(format!("node {} halted: {why}", self.id))
    }
}

impl Engine for HaltedNode {
    fn id(&self) -> u64 {
        self.id
    }

    fn write(&self, _command: Command) -> Result<u64, Failure> {
        Err(self.refused())
    }

    fn read(&self, _key: &str) -> Result<Option<String>, Failure> {
        Err(self.refused())
    }

    fn status(&self) -> Value {
        let applied = self.state.status().applied_index.unwrap_or(0);
        json!({
            "node": self.id,
            "engine": "openraft",
            "role": "stopped",
            "leader": 0,
            "applied": applied,
            "halt": self.halt.get().as_ref().map(halt_json),
            "encryption": encryption_json(&self.state),
        })
    }

    fn admin(&self, _op: AdminOp) -> Result<Value, Failure> {
        Err(self.refused())
    }

    fn retention(&self) -> Result<Value, Failure> {
        Err(self.refused())
    }

    fn wait_applied(&self, _index: u64) -> Result<u64, Failure> {
        Err(self.refused())
    }

    fn raft(&self, _request: Request) -> Response {
        Response::text(503, "halted")
    }

    fn export_metrics(&self) {
        raft_envelope_core::metrics::export(&self.state, self.layer.gate());
    }
}

/// The payload bytes of every entry a stopped openraft node stores (postcard-decoded entries:
/// cleartext, envelopes, control entries), with their index.
///
/// # Errors
/// The store cannot be read, or an entry does not decode.
pub fn stored_payloads(data_dir: &Path) -> Result<Vec<(u64, Vec<u8>)>, String> {
    let rows = RedbLogStore::<Sealed<KvConfig>>::stored_entries(&data_dir.join("openraft.redb"))
        .map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    for (index, bytes) in rows {
        let entry: Entry<Sealed<KvConfig>> =
            postcard::from_bytes(&bytes).map_err(|e| format!("entry {index} does not decode: {e}"))?;
        if let EntryPayload::Normal(payload) = entry.payload {
            if !payload.as_bytes().is_empty() {
                out.push((index, payload.as_bytes().to_vec()));
            }
        }
    }
    Ok(out)
}

/// Flips the last byte (an envelope's tag) of the payload stored at `index` in a stopped
/// openraft node's store.
///
/// # Errors
/// The store cannot be read or written, or has no payload at `index`.
pub fn tamper(data_dir: &Path, index: u64) -> Result<(), String> {
    let path = data_dir.join("openraft.redb");
    let rows = RedbLogStore::<Sealed<KvConfig>>::stored_entries(&path).map_err(|e| e.to_string())?;
    let (_, mut bytes) =
        rows.into_iter().find(|(i, _)| *i == index).ok_or(format!("no entry {index} stored"))?;
    let entry: Entry<Sealed<KvConfig>> = postcard::from_bytes(&bytes).map_err(|e| e.to_string())?;
    let EntryPayload::Normal(payload) = entry.payload else {
        return Err(format!("entry {index} has no payload"));
    };
    let len = payload.as_bytes().len();
    if len == 0 {
        return Err(format!("entry {index} has no payload"));
    }
    // postcard stores the payload's bytes as they are, last in the entry: its last byte is the
    // payload's last byte.
    let last = bytes.len() - 1;
    bytes[last] ^= 0x01;
    RedbLogStore::<Sealed<KvConfig>>::overwrite_stored_entry(&path, index, &bytes).map_err(|e| e.to_string())
}
