//! The admin API for raft-rs: the core's [`Lifecycle`] driven over a node's Ready loop.
//!
//! raft-rs has no runtime and no threads: the application's own loop owns each
//! [`EnvelopeNode`] and drives it. An admin command runs elsewhere (an admin endpoint, an
//! operator thread, a task) and talks to the loop through an [`AdminHandle`] (cheap to clone,
//! `Send + Sync`); the loop serves the requests with [`EnvelopeNode::serve_admin`] once per
//! iteration, next to `tick` and `on_ready`:
//!
//! ```text
//! let (handle, mut inbox) = node.admin_channel()?;     // once, when the node starts
//! // hand `handle` to the admin side; then, in the Ready loop:
//! loop {
//!     if timer_fired { node.tick(); }
//!     for m in incoming() { node.step(m)?; }
//!     if node.needs_prefetch() { block_on(node.prefetch_pending()); }
//!     send(node.on_ready()?);
//!     node.serve_admin(&mut inbox);
//!     answer_clients(node.take_completions());
//! }
//! ```
//!
//! On the admin side, [`ClusterPlane`] is the [`ControlPlane`] over the handles of every member
//! living in one process (tests, demos, a multi-Raft host), and [`ClusterPlane::lifecycle`] the
//! driver with the same operations and outcomes as openraft's `EnvelopeRaft`:
//! `enable_encryption`, `rotate_key`, `retire_key`, `destroy_key`, `rotate_if_due`, `status`.
//! When the members live in other processes, implement [`ControlPlane`] over your RPC: the
//! leader-local methods call the leader's [`AdminHandle`]; `drain_cleartext` asks every member
//! for [`AdminHandle::wait_applied`] and `retention_reports` for [`AdminHandle::retention`]
//! (both answers are plain data; [`Retention`] is serializable with the core's `serde` feature).
//!
//! Every request is bounded in ticks of the serving node ([`AdminInbox::with_timeout_ticks`]):
//! an answer always comes, [`PlaneError::TimedOut`] at worst.

use std::collections::BTreeSet;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::mpsc;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, Waker};

use raft_envelope_core::lifecycle::{ControlPlane, Lifecycle, LifecycleError, MemberReports, Retention};
use raft_envelope_core::{LayerState, ProposalId};

use crate::error::ProposeError;
use crate::node::EnvelopeNode;
use crate::state_machine::{LogStore, StateMachine};
use crate::tracker::Completion;

/// How many ticks of the serving node an admin request may wait by default (10 s at the usual
/// 100 ms tick).
pub const DEFAULT_ADMIN_TIMEOUT_TICKS: u64 = 100;

/// What a raft-rs node failed or refused during an admin command (the engine's side of a
/// [`LifecycleError`]).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PlaneError {
    /// The node is not the leader: run the command on the leader.
    #[error("node {node} is not the leader (leader known there: {leader})")]
    NotLeader {
        /// The node asked.
        node: u64,
        /// The leader it knows of (0 when none).
        leader: u64,
    },
    /// The control entry or barrier was refused or failed (dropped, superseded, timed out, the
    /// node halted).
    #[error("node {node}: {source}")]
    Propose {
        /// The node asked.
        node: u64,
        /// The proposal's error.
        source: ProposeError,
    },
    /// The node did not reach what was asked within the inbox's timeout.
    #[error("node {node} did not {what} within {ticks} ticks")]
    TimedOut {
        /// The node asked.
        node: u64,
        /// What it was waiting for.
        what: Awaited,
        /// Ticks waited.
        ticks: u64,
    },
    /// The node halted (fail closed) or stopped, or its loop dropped its inbox.
    #[error("node {node} is not running")]
    Stopped {
        /// The node asked.
        node: u64,
    },
    /// The node could not report what it retains (its storage failed).
    #[error("node {node} could not report what it retains: {reason}")]
    Retention {
        /// The node asked.
        node: u64,
        /// What failed (never key or payload bytes).
        reason: String,
    },
    /// No member of the plane leads.
    #[error("no leader among the members")]
    NoLeader,
}

/// What an admin request waited for ([`PlaneError::TimedOut`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Awaited {
    /// To commit an entry of its term and apply its commit index.
    CatchUp,
    /// To apply its control entry or barrier.
    Proposal,
    /// To apply an index.
    Applied,
}

impl fmt::Display for Awaited {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Awaited::CatchUp => "catch up as leader",
            Awaited::Proposal => "apply the proposed entry",
            Awaited::Applied => "apply the index",
        })
    }
}

/// An admin command on raft-rs failed: the core's [`LifecycleError`] with raft-rs's
/// [`PlaneError`]. Nothing unsafe happened; the command can be run again.
pub type AdminError = LifecycleError<PlaneError, u64>;

/// A one-shot answer: the serving loop fills it, the admin side awaits it.
struct Slot<T> {
    value: Option<T>,
    waker: Option<Waker>,
    closed: bool,
}

struct Reply<T>(Arc<Mutex<Slot<T>>>);

impl<T> Reply<T> {
    fn send(self, value: T) {
        let mut slot = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        slot.value = Some(value);
        if let Some(w) = slot.waker.take() {
            w.wake();
        }
    }
}

impl<T> Drop for Reply<T> {
    fn drop(&mut self) {
        let mut slot = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        slot.closed = true;
        if let Some(w) = slot.waker.take() {
            w.wake();
        }
    }
}

struct Answer<T>(Arc<Mutex<Slot<T>>>);

impl<T> Future for Answer<T> {
    type Output = Option<T>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<T>> {
        let mut slot = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(v) = slot.value.take() {
            return Poll::Ready(Some(v));
        }
        if slot.closed {
            return Poll::Ready(None);
        }
        slot.waker = Some(cx.waker().clone());
        Poll::Pending
    }
}

fn oneshot<T>() -> (Reply<T>, Answer<T>) {
    let slot = Arc::new(Mutex::new(Slot { value: None, waker: None, closed: false }));
    (Reply(slot.clone()), Answer(slot))
}

type Answered<T> = Result<T, PlaneError>;

enum Request {
    CatchUp(Reply<Answered<()>>),
    Propose { id: ProposalId, entry: Vec<u8>, reply: Reply<Answered<u64>> },
    Applied { index: u64, reply: Reply<Answered<u64>> },
    Retention(Reply<Answered<Retention<u64>>>),
    Members(Reply<Answered<Vec<u64>>>),
}

enum Waiting {
    CatchUp { since: u64, reply: Reply<Answered<()>> },
    Proposal { id: ProposalId, since: u64, reply: Reply<Answered<u64>> },
    Applied { index: u64, since: u64, reply: Reply<Answered<u64>> },
}

/// The admin side's end of a node's admin channel ([`EnvelopeNode::admin_channel`]): sends
/// requests to the node's Ready loop and awaits the answers. Clone it freely; it works from any
/// thread and with any executor (it needs no runtime).
#[derive(Clone)]
pub struct AdminHandle {
    node: u64,
    state: Arc<LayerState>,
    requests: mpsc::Sender<Request>,
}

impl fmt::Debug for AdminHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AdminHandle").field("node", &self.node).finish_non_exhaustive()
    }
}

/// The Ready loop's end of a node's admin channel: pass it to [`EnvelopeNode::serve_admin`] on
/// every iteration.
pub struct AdminInbox {
    node: u64,
    requests: mpsc::Receiver<Request>,
    waiting: Vec<Waiting>,
    timeout_ticks: u64,
}

impl fmt::Debug for AdminInbox {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AdminInbox")
            .field("node", &self.node)
            .field("waiting", &self.waiting.len())
            .field("timeout_ticks", &self.timeout_ticks)
            .finish()
    }
}

impl AdminInbox {
    /// How many ticks of the node a request may wait (default [`DEFAULT_ADMIN_TIMEOUT_TICKS`]).
    pub fn with_timeout_ticks(mut self, ticks: u64) -> Self {
        self.timeout_ticks = ticks.max(1);
        self
    }
}

pub(crate) fn channel(node: u64, state: Arc<LayerState>) -> (AdminHandle, AdminInbox) {
    let (tx, rx) = mpsc::channel();
    (
        AdminHandle { node, state, requests: tx },
        AdminInbox { node, requests: rx, waiting: Vec::new(), timeout_ticks: DEFAULT_ADMIN_TIMEOUT_TICKS },
    )
}

impl AdminHandle {
    /// The node this handle talks to.
    pub fn node(&self) -> u64 {
        self.node
    }

    /// The node's layer state (shared with its Ready loop; read it for status).
    pub fn layer_state(&self) -> &Arc<LayerState> {
        &self.state
    }

    async fn ask<T>(&self, make: impl FnOnce(Reply<Answered<T>>) -> Request) -> Answered<T> {
        let (reply, answer) = oneshot();
        let stopped = PlaneError::Stopped { node: self.node };
        if self.requests.send(make(reply)).is_err() {
            return Err(stopped);
        }
        answer.await.unwrap_or(Err(stopped))
    }

    /// Waits until the node leads, has committed an entry of its term and applied up to its
    /// commit index (its layer state is current).
    ///
    /// # Errors
    /// [`PlaneError::NotLeader`], [`PlaneError::TimedOut`], [`PlaneError::Stopped`].
    pub async fn catch_up(&self) -> Result<(), PlaneError> {
        self.ask(Request::CatchUp).await
    }

    /// Proposes the layer control entry `entry` (proposal id `id`) on the node (the leader) and
    /// waits until the node applied it; returns its index.
    ///
    /// # Errors
    /// [`PlaneError::NotLeader`], [`PlaneError::Propose`], [`PlaneError::TimedOut`],
    /// [`PlaneError::Stopped`].
    pub async fn propose_control(&self, id: ProposalId, entry: Vec<u8>) -> Result<u64, PlaneError> {
        self.ask(|reply| Request::Propose { id, entry, reply }).await
    }

    /// Waits until the node applied `index` (so it seals when a promote is at or below it);
    /// returns its applied index.
    ///
    /// # Errors
    /// [`PlaneError::Stopped`] when the node halted or stopped (it appends nothing then),
    /// [`PlaneError::TimedOut`].
    pub async fn wait_applied(&self, index: u64) -> Result<u64, PlaneError> {
        self.ask(|reply| Request::Applied { index, reply }).await
    }

    /// What the node retains ([`EnvelopeNode::retention`]).
    ///
    /// # Errors
    /// [`PlaneError::Retention`], [`PlaneError::Stopped`].
    pub async fn retention(&self) -> Result<Retention<u64>, PlaneError> {
        self.ask(Request::Retention).await
    }

    /// The members (voters, learners, outgoing voters) of the node's current configuration.
    ///
    /// # Errors
    /// [`PlaneError::Stopped`].
    pub async fn members(&self) -> Result<Vec<u64>, PlaneError> {
        self.ask(Request::Members).await
    }
}

impl<S: LogStore, SM: StateMachine> EnvelopeNode<S, SM> {
    /// A new admin channel to this node: the [`AdminHandle`] for the admin side, the
    /// [`AdminInbox`] for this node's Ready loop ([`serve_admin`](Self::serve_admin)). A
    /// restarted node needs a new channel.
    ///
    /// # Errors
    /// [`ProposeError::NoLayerState`]: admin commands need a node built
    /// [`with_layer_state`](Self::with_layer_state).
    pub fn admin_channel(&self) -> Result<(AdminHandle, AdminInbox), ProposeError> {
        let state = self.layer_state().ok_or(ProposeError::NoLayerState)?.clone();
        Ok(channel(self.id(), state))
    }

    /// Serves the admin requests that arrived on `inbox` and answers those whose wait is over.
    /// Call it on every iteration of the Ready loop, after [`on_ready`](Self::on_ready). Never
    /// blocks. A halted or stopped node answers every request with [`PlaneError::Stopped`]
    /// (keep serving it until it is dropped, or drop the inbox).
    pub fn serve_admin(&mut self, inbox: &mut AdminInbox) {
        let node = self.id();
        let running = self.halted().is_none() && self.stopped().is_none();
        while let Ok(request) = inbox.requests.try_recv() {
            let now = self.ticks();
            match request {
                _ if !running => reply_stopped(request, node),
                Request::CatchUp(reply) => match self.leader_or_refuse() {
                    Ok(()) => inbox.waiting.push(Waiting::CatchUp { since: now, reply }),
                    Err(e) => reply.send(Err(e)),
                },
                Request::Propose { id, entry, reply } => {
                    match self.leader_or_refuse().and_then(|()| {
                        self.propose_control_entry(id, entry)
                            .map_err(|source| PlaneError::Propose { node, source })
                    }) {
                        Ok(ticket) => {
                            self.admin_ids.insert(ticket.id);
                            inbox.waiting.push(Waiting::Proposal { id: ticket.id, since: now, reply });
                        }
                        Err(e) => reply.send(Err(e)),
                    }
                }
                Request::Applied { index, reply } => {
                    inbox.waiting.push(Waiting::Applied { index, since: now, reply })
                }
                Request::Retention(reply) => reply.send(
                    self.retention().map_err(|e| PlaneError::Retention { node, reason: e.to_string() }),
                ),
                Request::Members(reply) => reply.send(Ok(self.members())),
            }
        }
        self.sort_completions();
        let waiting = std::mem::take(&mut inbox.waiting);
        for wait in waiting {
            if let Some(wait) = self.answer(wait, running, inbox.timeout_ticks) {
                inbox.waiting.push(wait);
            }
        }
    }

    /// Answers `wait` if it is over; gives it back otherwise.
    fn answer(&mut self, wait: Waiting, running: bool, timeout: u64) -> Option<Waiting> {
        let node = self.id();
        let now = self.ticks();
        let timed_out =
            |since: u64, what| PlaneError::TimedOut { node, what, ticks: now.saturating_sub(since) };
        match wait {
            Waiting::CatchUp { reply, .. } if !running => reply.send(Err(PlaneError::Stopped { node })),
            Waiting::CatchUp { reply, .. } if !self.is_leader() => reply.send(Err(self.not_leader())),
            Waiting::CatchUp { reply, .. } if self.caught_up() => reply.send(Ok(())),
            Waiting::CatchUp { since, reply } if now.saturating_sub(since) >= timeout => {
                reply.send(Err(timed_out(since, Awaited::CatchUp)))
            }
            Waiting::Proposal { id, since, reply } => {
                let done = self.admin_done.iter().position(|c| c.id == id);
                match done.map(|i| self.admin_done.swap_remove(i)) {
                    Some(Completion { result: Ok(applied), .. }) => reply.send(Ok(applied.index)),
                    Some(Completion { result: Err(source), .. }) => {
                        reply.send(Err(PlaneError::Propose { node, source }))
                    }
                    // The tracker answers every tracked proposal (timeout included), also on a
                    // halt; the inbox's own bound is the last resort.
                    None if !running || now.saturating_sub(since) >= timeout.saturating_mul(2) => {
                        self.admin_ids.remove(&id);
                        reply.send(Err(if running {
                            timed_out(since, Awaited::Proposal)
                        } else {
                            PlaneError::Stopped { node }
                        }))
                    }
                    None => return Some(Waiting::Proposal { id, since, reply }),
                }
            }
            Waiting::Applied { reply, .. } if !running => reply.send(Err(PlaneError::Stopped { node })),
            Waiting::Applied { index, reply, .. } if self.applied() >= index => {
                reply.send(Ok(self.applied()))
            }
            Waiting::Applied { since, reply, .. } if now.saturating_sub(since) >= timeout => {
                reply.send(Err(timed_out(since, Awaited::Applied)))
            }
            wait => return Some(wait),
        }
        None
    }

    fn not_leader(&self) -> PlaneError {
        PlaneError::NotLeader { node: self.id(), leader: self.leader_id() }
    }

    fn leader_or_refuse(&self) -> Result<(), PlaneError> {
        if self.is_leader() {
            Ok(())
        } else {
            Err(self.not_leader())
        }
    }

    /// The leader has committed an entry of its term and applied up to its commit index.
    fn caught_up(&self) -> bool {
        self.is_leader()
            && self.raw_node().raft.commit_to_current_term()
            && self.applied() >= self.commit_index()
    }

    /// Voters, learners and outgoing voters of the current configuration.
    pub(crate) fn members(&self) -> Vec<u64> {
        let conf = self.raw_node().raft.prs().conf().to_conf_state();
        let ids: BTreeSet<u64> =
            conf.voters.iter().chain(&conf.learners).chain(&conf.voters_outgoing).copied().collect();
        ids.into_iter().collect()
    }
}

fn reply_stopped(request: Request, node: u64) {
    let stopped = || PlaneError::Stopped { node };
    match request {
        Request::CatchUp(r) => r.send(Err(stopped())),
        Request::Propose { reply, .. } | Request::Applied { reply, .. } => reply.send(Err(stopped())),
        Request::Retention(r) => r.send(Err(stopped())),
        Request::Members(r) => r.send(Err(stopped())),
    }
}

/// The [`ControlPlane`] over the [`AdminHandle`]s of members that live in one process: commands
/// run on `node` (the leader), the drain and the destroy proof ask every member.
#[derive(Debug, Clone)]
pub struct ClusterPlane {
    node: AdminHandle,
    members: Vec<AdminHandle>,
}

impl ClusterPlane {
    /// Commands run on `node`; `members` are the handles of every member (with or without
    /// `node`).
    pub fn new(node: AdminHandle, members: Vec<AdminHandle>) -> Self {
        Self { node, members }
    }

    /// The key-lifecycle driver over this plane: `enable_encryption`, `rotate_key`,
    /// `retire_key`, `destroy_key`, `rotate_if_due`, `status`.
    pub fn lifecycle(node: AdminHandle, members: Vec<AdminHandle>) -> Lifecycle<Self> {
        Lifecycle::new(Self::new(node, members))
    }

    fn everyone(&self) -> impl Iterator<Item = &AdminHandle> {
        std::iter::once(&self.node).chain(self.members.iter().filter(|m| m.node != self.node.node))
    }
}

#[raft_envelope_core::async_trait]
impl ControlPlane for ClusterPlane {
    type NodeId = u64;
    type Error = PlaneError;

    fn layer_state(&self) -> &LayerState {
        &self.node.state
    }

    async fn catch_up(&self) -> Result<(), PlaneError> {
        self.node.catch_up().await
    }

    async fn propose_control(&self, id: ProposalId, entry: Vec<u8>) -> Result<u64, PlaneError> {
        self.node.propose_control(id, entry).await
    }

    /// Waits (bounded) until every member applied the promote, so that writers see few
    /// refusals; a member that does not get there in time (partitioned, lagging) is not an
    /// error. On raft-rs the drain is not what keeps cleartext from landing above the cutover:
    /// sealing and appending happen in one `&mut RawNode` call, and a node whose log holds a
    /// layer control entry it has not applied appends nothing
    /// ([`ProposeError::ControlPending`], `DESIGN.md` §10.9), so a lagging member can do no
    /// harm. A halted or stopped member appends nothing.
    async fn drain_cleartext(&self, applied_through: u64) -> Result<(), PlaneError> {
        for member in self.everyone() {
            if let Err(e) = member.wait_applied(applied_through).await {
                tracing::debug!(node = member.node, "not waiting for this member to apply the promote: {e}");
            }
        }
        Ok(())
    }

    async fn retention_reports(&self) -> Result<MemberReports<u64>, PlaneError> {
        let members = self.node.members().await?;
        let mut reports = Vec::new();
        for handle in self.everyone().filter(|h| members.contains(&h.node)) {
            // A member that cannot answer sends no report: the destroy is refused, naming it.
            if let Ok(report) = handle.retention().await {
                reports.push(report);
            }
        }
        Ok(MemberReports::new(members, reports))
    }
}
