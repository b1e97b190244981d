//! Switching encryption on for a running cluster, without a cleartext entry above the cutover.

use std::sync::Arc;
use std::time::Duration;

use openraft::{Entry, RaftTypeConfig};
use raft_envelope_core::{Cutover, PayloadWrapper};

use openraft::type_config::TypeConfigExt;

use crate::drain::{time_left, DrainTimeout};
use crate::raft::{EnvelopeRaft, WriteError};

/// One node as the switch-on procedure sees it: its proposer and the cutover its apply gate
/// reads.
#[derive(Debug)]
pub struct SwitchOnNode<'a, C: RaftTypeConfig<Entry = Entry<C>>> {
    /// The node's proposer.
    pub raft: &'a EnvelopeRaft<C>,
    /// The cutover its [`ApplyGate`](raft_envelope_core::ApplyGate) reads.
    pub cutover: &'a Cutover,
}

/// Switch-on failed; nothing unsafe happened, and the procedure can be run again.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SwitchOnError<NID: openraft::NodeId, N: openraft::Node> {
    /// Step 1 did not drain in time on one node (sealing is on everywhere it was reached).
    #[error("node #{node} did not drain its cleartext proposals: {source}")]
    Drain {
        /// Position of the node in the list given.
        node: usize,
        /// The drain error.
        source: DrainTimeout,
    },
    /// Step 2 could not commit the barrier before the deadline.
    #[error("could not commit the switch-on barrier: {0}")]
    Barrier(WriteError<NID, N>),
    /// Step 2 found no leader among the nodes given before the deadline.
    #[error("no leader among the given nodes")]
    NoLeader,
}

/// Switches encryption on for a running cluster whose every proposer is in `nodes`, and returns
/// the cutover index, which the operator must persist in every node's configuration (and give
/// to nodes added later).
///
/// 1. **Seal**: on every node, `set_wrapper(wrapper)`, then wait until every cleartext proposal
///    prepared before has been answered by Raft ([`EnvelopeRaft::seal_new_proposals`]).
/// 2. **Barrier**: commit a barrier entry through Raft on the leader
///    ([`EnvelopeRaft::commit_barrier`]); its index is the cutover `C`.
/// 3. **Enforce**: set `C` on every node's [`Cutover`].
///
/// Why no cleartext from a correct client can land above `C`, leader changes included: an entry
/// committed at an index above `C` follows the barrier in the committed log, so (Log Matching)
/// the leader that created it already held the barrier, which was created after step 1 finished.
/// After step 1, every cleartext proposal has been answered by Raft, that is, appended by some
/// leader or refused for good; every later one is sealed. So every cleartext entry was created
/// before the barrier existed anywhere and cannot follow it in the committed log.
///
/// Across processes, run the same three steps through your own admin endpoints; the helper is
/// the in-process form (tests, demos, single-process deployments).
///
/// # Errors
/// [`SwitchOnError`]; the procedure is idempotent and can be retried. Until step 3, nothing is
/// enforced, so a failed attempt never halts a node.
pub async fn switch_on<C: RaftTypeConfig<Entry = Entry<C>>>(
    nodes: &[SwitchOnNode<'_, C>],
    wrapper: Arc<dyn PayloadWrapper>,
    timeout: Duration,
) -> Result<u64, SwitchOnError<C::NodeId, C::Node>> {
    let deadline = C::now() + timeout;
    for (i, node) in nodes.iter().enumerate() {
        node.raft
            .seal_new_proposals(wrapper.clone(), time_left::<C>(deadline))
            .await
            .map_err(|source| SwitchOnError::Drain { node: i, source })?;
    }
    let index = commit_barrier_on_leader(nodes, deadline).await?;
    for node in nodes {
        node.cutover.set(Some(index));
    }
    tracing::info!(cutover = index, "envelope layer switched on");
    Ok(index)
}

/// Commits the barrier on whichever node leads, waiting on the nodes' metrics (never polling)
/// for a leader, and for a new leader after a refusal.
async fn commit_barrier_on_leader<C: RaftTypeConfig<Entry = Entry<C>>>(
    nodes: &[SwitchOnNode<'_, C>],
    deadline: <C::AsyncRuntime as openraft::AsyncRuntime>::Instant,
) -> Result<u64, SwitchOnError<C::NodeId, C::Node>> {
    let Some(first) = nodes.first() else { return Err(SwitchOnError::NoLeader) };
    let mut refused_by: Option<(C::NodeId, u64)> = None;
    loop {
        let left = time_left::<C>(deadline);
        // A leader, and after a refusal a different leader or a later term.
        let metrics = first
            .raft
            .raft()
            .wait(Some(left))
            .metrics(
                |m| match (&m.current_leader, &refused_by) {
                    (None, _) => false,
                    (Some(_), None) => true,
                    (Some(leader), Some((old, term))) => leader != old || m.current_term > *term,
                },
                "a leader to commit the switch-on barrier",
            )
            .await;
        let Ok(metrics) = metrics else {
            return Err(SwitchOnError::NoLeader);
        };
        let leader = metrics.current_leader.clone();
        let Some(node) = nodes.iter().find(|n| Some(&n.raft.raft().metrics().borrow().id) == leader.as_ref())
        else {
            return Err(SwitchOnError::NoLeader);
        };
        match node.raft.commit_barrier().await {
            Ok(log_id) => return Ok(log_id.index),
            Err(e) if time_left::<C>(deadline).is_zero() => return Err(SwitchOnError::Barrier(e)),
            Err(e) => {
                tracing::debug!("switch-on barrier refused, waiting for a new leader: {e}");
                refused_by = leader.map(|l| (l, metrics.current_term));
            }
        }
    }
}
