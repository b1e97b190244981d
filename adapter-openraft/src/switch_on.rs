//! Switching encryption on for a running cluster, without a cleartext entry above the cutover.

use std::sync::Arc;
use std::time::Duration;

use openraft::{Entry, RaftTypeConfig};
use raft_envelope_core::{Cutover, PayloadWrapper};

use crate::raft::{DrainTimeout, EnvelopeRaft, WriteError};

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
    let deadline = tokio::time::Instant::now() + timeout;
    for (i, node) in nodes.iter().enumerate() {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        node.raft
            .seal_new_proposals(wrapper.clone(), left)
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

async fn commit_barrier_on_leader<C: RaftTypeConfig<Entry = Entry<C>>>(
    nodes: &[SwitchOnNode<'_, C>],
    deadline: tokio::time::Instant,
) -> Result<u64, SwitchOnError<C::NodeId, C::Node>> {
    let mut last_error = None;
    while tokio::time::Instant::now() < deadline {
        let leader = nodes.iter().find_map(|n| n.raft.raft().metrics().borrow().current_leader.clone());
        let target = leader.and_then(|id| nodes.iter().find(|n| n.raft.raft().metrics().borrow().id == id));
        if let Some(node) = target {
            match node.raft.commit_barrier().await {
                Ok(log_id) => return Ok(log_id.index),
                Err(e) => last_error = Some(e),
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Err(last_error.map(SwitchOnError::Barrier).unwrap_or(SwitchOnError::NoLeader))
}
