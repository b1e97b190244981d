//! The KV service's HTTP API, the same on both engines: clients, operators and the other nodes
//! talk to one port per node.
//!
//! | method and path | what |
//! |---|---|
//! | `GET /kv/KEY` | the value this node applied (404 when absent) |
//! | `PUT /kv/KEY` (body: the value), `DELETE /kv/KEY` | a write through Raft; answers once applied here, with its index |
//! | `GET /status` | role, leader, term, indexes, the halt (reason, index) if any, the encryption status |
//! | `POST /admin/enable`, `/admin/rotate`, `/admin/retire?key=N`, `/admin/destroy?key=N` | the key lifecycle, run on the leader (forwarded there) |
//! | `POST /admin/compact`, `/admin/checkpoint` | a sealed snapshot of this node / an integrity checkpoint (leader) |
//! | `POST /admin/add?node=N`, `/admin/remove?node=N` | a voter joins or leaves (leader) |
//! | `GET /admin/retention`, `GET /admin/applied?index=N` | what the destroy proof and the drain ask of every member |
//! | `GET /metrics` | Prometheus text: the layer's series (`raft_envelope_*`) |
//! | `POST /raft/...` | node to node |

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use raft_envelope_core::KeyId;
use serde_json::{json, Value};

use crate::http::{Client, Handler, Request, Response};
use crate::kv::Command;

/// Why a request failed, and how the API says it.
#[derive(Debug)]
pub enum Failure {
    /// This node does not lead; the leader it knows of (forwarded there when known).
    NotLeader(Option<u64>),
    /// Refused, nothing changed (409).
    Refused(String),
    /// Not possible now: halted, stopped, timed out, no leader (503).
    Unavailable(String),
    /// The request is malformed (400).
    BadRequest(String),
}

impl Failure {
    fn response(&self) -> Response {
        let (status, text) = match self {
            Failure::NotLeader(leader) => (503, format!("not the leader (leader known here: {leader:?})")),
            Failure::Refused(why) => (409, why.clone()),
            Failure::Unavailable(why) => (503, why.clone()),
            Failure::BadRequest(why) => (400, why.clone()),
        };
        Response::json(status, &json!({ "error": text }))
    }
}

/// An admin command.
#[derive(Debug, Clone, Copy)]
pub enum AdminOp {
    /// Switch encryption on (install, promote, drain, enforce).
    Enable,
    /// Rotate the data key.
    Rotate,
    /// Retire a key to decrypt-only.
    Retire(KeyId),
    /// Destroy a key once nothing retained needs it.
    Destroy(KeyId),
    /// Take a sealed snapshot here and compact the log.
    Compact,
    /// Propose an integrity checkpoint now.
    Checkpoint,
    /// Add (`add`) or remove `node` as a voter.
    Member {
        /// Add, or remove.
        add: bool,
        /// The node.
        node: u64,
    },
}

impl AdminOp {
    /// Whether the command runs on the leader only.
    pub fn on_leader(self) -> bool {
        !matches!(self, AdminOp::Compact)
    }
}

/// One node of the service on an engine.
pub trait Engine: Send + Sync + 'static {
    /// This node's id.
    fn id(&self) -> u64;
    /// A write through Raft; its index once applied here.
    ///
    /// # Errors
    /// [`Failure`].
    fn write(&self, command: Command) -> Result<u64, Failure>;
    /// The value of `key` as applied here.
    ///
    /// # Errors
    /// [`Failure::Unavailable`] when the node stopped.
    fn read(&self, key: &str) -> Result<Option<String>, Failure>;
    /// The node's status (JSON object, see the module table).
    fn status(&self) -> Value;
    /// Runs an admin command here.
    ///
    /// # Errors
    /// [`Failure::NotLeader`] for a leader-only command on a follower, or what the command says.
    fn admin(&self, op: AdminOp) -> Result<Value, Failure>;
    /// What this node retains (the destroy proof's report), as JSON.
    ///
    /// # Errors
    /// [`Failure::Unavailable`].
    fn retention(&self) -> Result<Value, Failure>;
    /// Waits (bounded) until this node applied `index`; its applied index.
    ///
    /// # Errors
    /// [`Failure::Unavailable`].
    fn wait_applied(&self, index: u64) -> Result<u64, Failure>;
    /// A node-to-node request.
    fn raft(&self, request: Request) -> Response;
    /// Hands the layer's counters to the metrics recorder (before a scrape).
    fn export_metrics(&self);
}

/// The other members' addresses, and a client of each.
#[derive(Debug, Clone)]
pub struct Peers {
    clients: BTreeMap<u64, Client>,
}

impl Peers {
    /// Clients of `addrs` (this node's own entry included or not).
    pub fn new(addrs: &BTreeMap<u64, SocketAddr>, timeout: Duration) -> Self {
        Self { clients: addrs.iter().map(|(id, a)| (*id, Client::new(*a, timeout))).collect() }
    }

    /// The client of `id`.
    pub fn get(&self, id: u64) -> Option<&Client> {
        self.clients.get(&id)
    }

    /// Every member but `me`.
    pub fn others(&self, me: u64) -> impl Iterator<Item = (u64, &Client)> {
        self.clients.iter().filter(move |(id, _)| **id != me).map(|(id, c)| (*id, c))
    }
}

/// Serves the node's API on `listener` (threads of its own; returns at once).
pub fn serve(
    listener: std::net::TcpListener,
    engine: Arc<dyn Engine>,
    peers: Peers,
    render: Arc<dyn Fn() -> String + Send + Sync>,
) {
    crate::http::serve(listener, handler(engine, peers, render));
}

/// The HTTP handler of a node: routes to `engine`, forwards leader-only requests to the leader,
/// renders `/metrics` with `render`.
pub fn handler(
    engine: Arc<dyn Engine>,
    peers: Peers,
    render: Arc<dyn Fn() -> String + Send + Sync>,
) -> Handler {
    Arc::new(move |request: Request| route(engine.as_ref(), &peers, render.as_ref(), request))
}

fn route(engine: &dyn Engine, peers: &Peers, render: &dyn Fn() -> String, request: Request) -> Response {
    let path = request.path.clone();
    let forwarded = request.query.contains_key("forwarded");
    let result = match (request.method.as_str(), path.as_str()) {
        (_, p) if p.starts_with("/raft/") => return engine.raft(request),
        ("GET", "/metrics") => {
            engine.export_metrics();
            return Response {
                status: 200,
                content_type: "text/plain; version=0.0.4",
                body: render().into_bytes(),
            };
        }
        ("GET", "/status" | "/admin/status") => Ok(engine.status()),
        ("GET", p) if p.starts_with("/kv/") => match engine.read(&p[4..]) {
            Ok(Some(value)) => return Response::text(200, value),
            Ok(None) => return Response::text(404, ""),
            Err(e) => Err(e),
        },
        ("PUT" | "POST", p) if p.starts_with("/kv/") => match String::from_utf8(request.body.clone()) {
            Ok(value) => {
                engine.write(Command::Put { key: p[4..].to_owned(), value }).map(|i| json!({ "index": i }))
            }
            Err(_) => Err(Failure::BadRequest("the value must be UTF-8".into())),
        },
        ("DELETE", p) if p.starts_with("/kv/") => {
            engine.write(Command::Delete { key: p[4..].to_owned() }).map(|i| json!({ "index": i }))
        }
        ("GET", "/admin/retention") => engine.retention(),
        ("GET", "/admin/applied") => match request.param::<u64>("index") {
            Some(index) => engine.wait_applied(index).map(|applied| json!({ "applied": applied })),
            None => Err(Failure::BadRequest("index=N".into())),
        },
        ("POST", p) if p.starts_with("/admin/") => match admin_op(&p[7..], &request) {
            Ok(op) => engine.admin(op),
            Err(e) => Err(e),
        },
        _ => return Response::text(404, "no such endpoint"),
    };
    match result {
        Ok(value) => Response::json(200, &value),
        Err(Failure::NotLeader(Some(leader))) if !forwarded && leader != engine.id() => {
            forward(peers, leader, &request).unwrap_or_else(|e| e.response())
        }
        Err(e) => e.response(),
    }
}

fn admin_op(name: &str, request: &Request) -> Result<AdminOp, Failure> {
    let key = || request.param::<u32>("key").map(KeyId).ok_or_else(|| Failure::BadRequest("key=N".into()));
    Ok(match name {
        "enable" => AdminOp::Enable,
        "rotate" => AdminOp::Rotate,
        "retire" => AdminOp::Retire(key()?),
        "destroy" => AdminOp::Destroy(key()?),
        "compact" => AdminOp::Compact,
        "checkpoint" => AdminOp::Checkpoint,
        "add" | "remove" => AdminOp::Member {
            add: name == "add",
            node: request.param("node").ok_or_else(|| Failure::BadRequest("node=N".into()))?,
        },
        other => return Err(Failure::BadRequest(format!("no admin command {other}"))),
    })
}

/// Sends `request` on to the leader once (marked, so that it is not forwarded again).
fn forward(peers: &Peers, leader: u64, request: &Request) -> Result<Response, Failure> {
    let client = peers.get(leader).ok_or(Failure::Unavailable(format!("leader {leader} has no address")))?;
    let mut query: Vec<String> = request.query.iter().map(|(k, v)| format!("{k}={v}")).collect();
    query.push("forwarded=1".into());
    let target = format!("{}?{}", request.path, query.join("&"));
    let (status, body) = client
        .call(&request.method, &target, &request.body)
        .map_err(|e| Failure::Unavailable(format!("leader {leader} unreachable: {e}")))?;
    Ok(Response { status, content_type: "application/json", body })
}
