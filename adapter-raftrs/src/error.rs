//! The adapter's errors. None of them ever holds key material or payload bytes.

use std::fmt;

use raft_envelope_core::{
    error::{ControlError, FailureReason},
    FatalApplyError, KeyId, SealError,
};

/// A proposal was not applied, or its outcome could not be established.
///
/// Returned by the proposer (refusals, before anything is appended) and delivered later through
/// a [`Completion`](crate::Completion) (dropped, superseded, timed out, halted).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProposeError {
    /// The layer refused to seal the proposal; it was not appended. Retryable once the operator
    /// fixes the cause (for example promotes a key).
    #[error("proposal refused before appending: {0}")]
    Refused(#[source] SealError),
    /// A non-empty user context was given while the layer seals. A raft-rs context is stored and
    /// replicated in the clear and is not authenticated, so it is refused rather than leaked.
    /// Nothing was appended.
    #[error("a user context cannot be proposed while the layer seals (it would be stored in the clear)")]
    ContextWhileSealing,
    /// The user context starts with the adapter's reserved marker magic. Nothing was appended.
    #[error("the user context starts with the reserved raft-envelope marker")]
    ReservedContext,
    /// The payload is empty. raft-rs stores an empty payload with an empty context exactly like
    /// its own no-op entry, so it could not be told apart from a control entry and would never
    /// reach the state machine; every empty payload is refused, sealing or not, so the behaviour
    /// does not change at switch-on. Nothing was appended. Not retryable as is: encode the
    /// request so it has at least one byte.
    #[error("an empty payload cannot be proposed (raft-rs stores it like its own no-op entry)")]
    EmptyPayload,
    /// The layer is not sealing, a cutover is in force and this node's log already reaches it:
    /// the cleartext entry could only land above the cutover and would halt every replica that
    /// applies it, so it was refused. Nothing was appended. Retryable once this node's layer
    /// seals again (a configuration error: a node restarted without its wrapper).
    #[error("proposal refused before appending: the layer is not sealing but the cutover is {cutover}")]
    NotSealing {
        /// The cutover in force.
        cutover: u64,
    },
    /// A switch-on barrier was proposed on a node that is not the leader. A barrier has no
    /// authenticated identity and is only ever matched by the `(index, term)` the leader appends
    /// it at, so it is not forwarded. Nothing was appended; retry on the leader.
    #[error("a barrier must be proposed on the leader (leader known here: {leader})")]
    NotLeader {
        /// The leader this node knows of (0 when none).
        leader: u64,
    },
    /// This node's log holds a layer control entry it has not applied (for example the promote
    /// of an enable or a rotation): a cleartext entry appended now could end up above an enforce
    /// entry, and a sealed one would be sealed under a key the entry replaces (which destroying
    /// that key later relies on never happening). Nothing was appended; retry once the node
    /// applied it.
    #[error("proposal refused before appending: a layer control entry is not applied yet on this node")]
    ControlPending,
    /// A prepared proposal was sealed under a key that is no longer the active one (a rotation
    /// applied since): nothing was appended. Prepare it again.
    #[error("proposal refused before appending: sealed under {key_id}, which is no longer active")]
    KeyRotated {
        /// The key it was sealed under.
        key_id: KeyId,
    },
    /// This node does not know its integrity digest chain (its layer state started after the
    /// log's first entry), so it cannot propose a checkpoint. Nothing was appended.
    #[error("this node cannot propose an integrity checkpoint: its digest chain is unknown")]
    NoChain,
    /// An admin command needs a node built with a layer state
    /// ([`EnvelopeNode::with_layer_state`](crate::EnvelopeNode::with_layer_state)).
    #[error("this node has no layer state (key lifecycle through the log is not enabled)")]
    NoLayerState,
    /// An admin command could not be prepared (a new key could not be created or wrapped).
    /// Nothing was appended.
    #[error("admin command refused before appending: {0}")]
    Control(#[source] ControlError),
    /// raft-rs dropped the proposal at once (no leader known, leadership transfer in progress,
    /// uncommitted-size limit, ...). Nothing was appended; retry, possibly on another node.
    #[error("raft-rs dropped the proposal (no leader, transfer in progress or size limit)")]
    Dropped,
    /// The entry was replaced at the index it had been appended at (another term there, or the log
    /// truncated below it): a new leader truncated it. It will never be applied; retry.
    #[error("proposal superseded: index {index} was committed with another entry (term {term})")]
    Superseded {
        /// The index the proposal had been appended at.
        index: u64,
        /// The term of the entry found there instead (0 when the log was truncated below it).
        term: u64,
    },
    /// No outcome within the configured number of ticks (for example a proposal forwarded to a
    /// leader that lost it). The proposal may still be applied later: make requests idempotent.
    #[error("no outcome for the proposal after {ticks} ticks")]
    TimedOut {
        /// Ticks waited.
        ticks: u64,
    },
    /// The proposal's envelope had already been applied, at `first_index` (the same proposal
    /// submitted again, [`EnvelopeNode::submit`](crate::EnvelopeNode::submit), after a timeout or
    /// a leader change): the entry at `index` was not applied a second time, on any replica.
    /// The request took effect once; its response was delivered to the first submission.
    #[error("proposal already applied at index {first_index} (the entry at {index} was not applied again)")]
    Duplicate {
        /// The index of the entry that was not applied.
        index: u64,
        /// Where the same envelope was applied.
        first_index: u64,
    },
    /// The proposal's envelope is older than its sealing session's replay window, so whether it
    /// was applied before can no longer be told: the entry at `index` was not applied, on any
    /// replica. Prepare the request again (a new seal) if it must still take effect.
    #[error("proposal expired: its envelope is older than the replay window (entry {index} not applied)")]
    Expired {
        /// The index of the entry that was not applied.
        index: u64,
    },
    /// This node halted (fail closed) before the proposal was applied here.
    #[error("the node halted at index {index} ({reason}) before the proposal was applied")]
    Halted {
        /// The index the node halted at.
        index: u64,
        /// Why it halted.
        reason: FailureReason,
    },
    /// The node stopped for a reason outside the envelope layer (storage, snapshot, conf change).
    #[error("the node stopped: {0}")]
    Stopped(StopReason),
    /// Any other raft-rs error.
    #[error("raft-rs error: {0}")]
    Raft(#[source] raft::Error),
}

impl ProposeError {
    /// True when nothing was appended and the same proposal may simply be retried.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            ProposeError::Refused(_)
                | ProposeError::NotSealing { .. }
                | ProposeError::ControlPending
                | ProposeError::NotLeader { .. }
                | ProposeError::Dropped
                | ProposeError::Superseded { .. }
        )
    }

    pub(crate) fn halted(error: &FatalApplyError) -> Self {
        ProposeError::Halted { index: error.index, reason: error.reason }
    }
}

/// Driving an [`EnvelopeNode`](crate::EnvelopeNode) failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NodeError {
    /// The node halted (fail closed): it must not be driven any more. Rebuild it from the same
    /// storage and state machine once the cause is repaired; it re-applies from the failing
    /// entry.
    #[error(transparent)]
    Halted(FatalApplyError),
    /// The node stopped for a reason outside the envelope layer (storage, conf change, snapshot).
    /// It must not be driven any more.
    #[error("node stopped: {0}")]
    Stopped(StopReason),
    /// raft-rs returned an error.
    #[error("raft-rs error: {0}")]
    Raft(#[source] raft::Error),
    /// A snapshot could not be taken ([`EnvelopeNode::compact`](crate::EnvelopeNode::compact)):
    /// nothing was compacted and the node goes on.
    #[error("no snapshot taken at index {index}: {reason}")]
    Snapshot {
        /// The applied index the snapshot was to include.
        index: u64,
        /// Why (never payload or key bytes).
        reason: String,
    },
}

/// A message was not stepped into the node.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StepError {
    /// A forwarded proposal carried a cleartext payload while this node's layer seals, or while
    /// a cutover is in force and this node's log already reaches it (the entry could only land
    /// above the cutover): refused, so no cleartext proposal can be appended above the cutover
    /// (SPEC R4).
    #[error("forwarded cleartext proposal from node {from} refused: this node seals or its log reached the cutover")]
    CleartextProposalRefused {
        /// The node the message came from.
        from: u64,
    },
    /// A forwarded proposal carried a layer control entry: admin commands are proposed on the
    /// leader only ([`EnvelopeNode::propose_control`](crate::EnvelopeNode::propose_control)), so
    /// a forwarded one is refused.
    #[error(
        "forwarded layer control entry from node {from} refused: admin commands are proposed on the leader"
    )]
    ControlProposalRefused {
        /// The node the message came from.
        from: u64,
    },
    /// A forwarded proposal arrived while this node's log holds a layer control entry it has
    /// not applied yet (key lifecycle): the key that will seal entries after it is not known
    /// here yet, so nothing is appended until it is applied (the same rule as
    /// [`ProposeError::ControlPending`](crate::ProposeError::ControlPending)).
    #[error(
        "forwarded proposal from node {from} refused: a layer control entry is not applied yet on this node"
    )]
    ControlPending {
        /// The node the message came from.
        from: u64,
    },
    /// A forwarded envelope is not sealed under this node's active key (key lifecycle): it was
    /// sealed by a node that has not applied the latest promote yet, or under a key that is
    /// being retired. Refused, so that every entry appended after a promote is sealed under the
    /// promoted key or a later one (what destroying the old key relies on).
    #[error("forwarded envelope from node {from} refused: not sealed under the active key (sealed under {})", key_id.map_or_else(|| "an unreadable header".to_owned(), |k| k.to_string()))]
    NotActiveKey {
        /// The node the message came from.
        from: u64,
        /// The key the envelope names, if its header parses.
        key_id: Option<KeyId>,
    },
    /// The node halted and takes no more messages.
    #[error("the node halted at index {index} ({reason})")]
    Halted {
        /// The index the node halted at.
        index: u64,
        /// Why it halted.
        reason: FailureReason,
    },
    /// The node stopped for a reason outside the envelope layer and takes no more messages.
    #[error("the node stopped: {0}")]
    Stopped(StopReason),
    /// raft-rs refused the message.
    #[error("raft-rs error: {0}")]
    Raft(#[source] raft::Error),
}

/// Why a node stopped outside the envelope layer: what failed, at which index, and the message of
/// the part that failed (storage, raft-rs, the application's state machine; never payload or key
/// bytes). The node must not be driven any more.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{kind} at index {index}: {detail}")]
#[non_exhaustive]
pub struct StopReason {
    /// What failed.
    pub kind: StopKind,
    /// The log index concerned (0 when none).
    pub index: u64,
    /// The failing part's own message.
    pub detail: String,
}

impl StopReason {
    /// A stop of `kind` at `index`.
    pub fn new(kind: StopKind, index: u64, detail: impl Into<String>) -> Self {
        Self { kind, index, detail: detail.into() }
    }
}

/// What made a node stop outside the envelope layer ([`StopReason`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum StopKind {
    /// raft-rs or the storage failed while the Ready was handled.
    Raft,
    /// A conf change entry did not decode or apply.
    ConfChange,
    /// The application's state machine refused a snapshot.
    SnapshotRefused,
    /// A layer snapshot arrived at a node without a layer state.
    SnapshotWithoutLayerState,
    /// The node is not running (a test cluster's node that is down).
    NotRunning,
}

impl fmt::Display for StopKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            StopKind::Raft => "raft-rs or storage failure",
            StopKind::ConfChange => "conf change failure",
            StopKind::SnapshotRefused => "the state machine refused the snapshot",
            StopKind::SnapshotWithoutLayerState => "a layer snapshot reached a node without a layer state",
            StopKind::NotRunning => "the node is not running",
        })
    }
}
