//! The proposing side: a decorator around `RawNode::propose`.

use std::fmt;
use std::sync::Arc;

use raft::{RawNode, StateRole, Storage};
use raft_envelope_core::{wire::EnvelopeHeader, EntryKind, EnvelopeLayer, ProposalId};
use raft_proto::ConfChangeI;

use crate::error::ProposeError;
use crate::framing::{starts_with_magic, ContextMarker};

/// What the proposer knows about a proposal it handed to raft-rs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Ticket {
    /// The proposal's identity: in the envelope header (authenticated) and the context marker
    /// when sealed.
    pub id: ProposalId,
    /// What was proposed: [`EntryKind::Envelope`], [`EntryKind::Cleartext`], or
    /// [`EntryKind::Control`] for a barrier.
    pub kind: EntryKind,
    /// `(index, term)` the entry was appended at, when proposed on the leader. `None` when the
    /// proposal was forwarded to the leader by a follower.
    pub appended_at: Option<(u64, u64)>,
}

/// A proposal prepared by [`EnvelopeProposer::prepare`]: sealed (or cleartext) and framed, ready
/// to be submitted, and submitted again byte for byte to retry.
#[derive(Clone, PartialEq, Eq)]
pub struct PreparedProposal {
    id: ProposalId,
    kind: EntryKind,
    context: Vec<u8>,
    data: Vec<u8>,
}

impl PreparedProposal {
    /// The proposal's identity (in the envelope's authenticated header when sealed).
    pub fn id(&self) -> ProposalId {
        self.id
    }

    /// [`EntryKind::Envelope`] when sealed, [`EntryKind::Cleartext`] otherwise.
    pub fn kind(&self) -> EntryKind {
        self.kind
    }

    /// The key it is sealed under, when sealed.
    pub fn key_id(&self) -> Option<raft_envelope_core::KeyId> {
        match self.kind {
            EntryKind::Envelope => EnvelopeHeader::parse(&self.data).ok().map(|h| h.key_id),
            _ => None,
        }
    }
}

/// Shows only the identity, kind and lengths: the data may be plaintext.
impl fmt::Debug for PreparedProposal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PreparedProposal")
            .field("id", &self.id)
            .field("kind", &self.kind)
            .field("len", &self.data.len())
            .finish()
    }
}

/// Decorates `RawNode::propose`: every payload goes through [`EnvelopeLayer::prepare`] first.
///
/// Framing (see [`framing`](crate::framing)):
/// - layer inert: `data` = the payload and `context` = the user's context, both byte for byte,
///   so the stored entry is exactly what raft-rs would have stored without the layer;
/// - layer sealing: `data` = the envelope, `context` = the envelope marker with the proposal id.
///   A non-empty user context is refused ([`ProposeError::ContextWhileSealing`]).
///
/// Conf changes go to raft-rs untouched (raft-rs parses their data itself).
///
/// Refusals, before anything is appended:
/// - an empty payload ([`ProposeError::EmptyPayload`]): raft-rs would store it like its own
///   no-op entry, a control entry the state machine never sees;
/// - a cleartext proposal when the layer is not sealing, a cutover `C` is in force (not `None`,
///   not `u64::MAX`) and the node's last log index is already `>= C`
///   ([`ProposeError::NotSealing`]): the entry could only land above `C` and would halt every
///   replica. With no cutover, or a cutover above the last index, cleartext is proposed as
///   before (it may still land at or below `C`).
///
/// Sealing and appending happen in one `&mut RawNode` call, so no other operation on the node
/// (in particular a switch-on barrier) can come between them.
#[derive(Clone)]
pub struct EnvelopeProposer {
    layer: Arc<EnvelopeLayer>,
}

impl EnvelopeProposer {
    /// A proposer sealing through `layer`.
    pub fn new(layer: Arc<EnvelopeLayer>) -> Self {
        Self { layer }
    }

    /// The layer.
    pub fn layer(&self) -> &Arc<EnvelopeLayer> {
        &self.layer
    }

    /// Proposes `payload` with an empty context.
    ///
    /// # Errors
    /// See [`propose_with_context`](Self::propose_with_context).
    pub fn propose<T: Storage>(
        &self,
        node: &mut RawNode<T>,
        payload: Vec<u8>,
    ) -> Result<Ticket, ProposeError> {
        self.propose_with_context(node, Vec::new(), payload)
    }

    /// Prepares `payload` through the layer and proposes it to `node` with `context`: exactly
    /// [`prepare`](Self::prepare) then [`submit`](Self::submit).
    ///
    /// # Errors
    /// [`ProposeError::Refused`] when sealing failed, [`ProposeError::ContextWhileSealing`] /
    /// [`ProposeError::ReservedContext`] for a context that cannot be stored,
    /// [`ProposeError::EmptyPayload`] for an empty payload, [`ProposeError::NotSealing`] for
    /// cleartext that could only land above the cutover, and [`ProposeError::Dropped`] /
    /// [`ProposeError::Raft`] from raft-rs. Nothing is appended in any of these cases.
    pub fn propose_with_context<T: Storage>(
        &self,
        node: &mut RawNode<T>,
        context: Vec<u8>,
        payload: Vec<u8>,
    ) -> Result<Ticket, ProposeError> {
        let prepared = self.prepare(context, payload)?;
        self.check_submission(node, &prepared)?;
        // Proposed once: its bytes move into raft-rs, no copy kept for a retry.
        append(node, prepared.id, prepared.kind, prepared.context, prepared.data)
    }

    /// Seals (when the layer seals) and frames `payload` with `context`, without proposing it:
    /// [`submit`](Self::submit) it, and submit the same value again to retry (after a timeout or
    /// a leader change). A retry proposes byte-identical data: if the first submission was
    /// applied, the retry is not applied again ([`ProposeError::Duplicate`] names where it was).
    ///
    /// # Errors
    /// [`ProposeError::Refused`], [`ProposeError::ContextWhileSealing`],
    /// [`ProposeError::ReservedContext`], [`ProposeError::EmptyPayload`].
    pub fn prepare(&self, context: Vec<u8>, payload: Vec<u8>) -> Result<PreparedProposal, ProposeError> {
        if starts_with_magic(&context) {
            return Err(ProposeError::ReservedContext);
        }
        if !context.is_empty() && self.layer.is_sealing() {
            return Err(ProposeError::ContextWhileSealing);
        }
        if payload.is_empty() {
            return Err(ProposeError::EmptyPayload);
        }
        let proposal = self.layer.prepare(payload).map_err(ProposeError::Refused)?;
        let context = match proposal.kind {
            EntryKind::Envelope if !context.is_empty() => return Err(ProposeError::ContextWhileSealing),
            EntryKind::Envelope => ContextMarker::envelope(proposal.id).encode(),
            _ => context,
        };
        Ok(PreparedProposal { id: proposal.id, kind: proposal.kind, context, data: proposal.bytes })
    }

    /// Proposes a prepared proposal to `node` (again, for a retry).
    ///
    /// # Errors
    /// [`ProposeError::NotSealing`] for cleartext that could only land above the cutover, and
    /// [`ProposeError::Dropped`] / [`ProposeError::Raft`] from raft-rs. Nothing is appended in
    /// any of these cases.
    pub fn submit<T: Storage>(
        &self,
        node: &mut RawNode<T>,
        prepared: &PreparedProposal,
    ) -> Result<Ticket, ProposeError> {
        self.check_submission(node, prepared)?;
        append(node, prepared.id, prepared.kind, prepared.context.clone(), prepared.data.clone())
    }

    /// Refuses cleartext that could only land above the cutover. Checked at submission: the
    /// kind prepared is what would be appended, even if the wrapper was switched meanwhile.
    fn check_submission<T: Storage>(
        &self,
        node: &RawNode<T>,
        prepared: &PreparedProposal,
    ) -> Result<(), ProposeError> {
        if prepared.kind != EntryKind::Envelope {
            let last = node.raft.raft_log.last_index();
            if let Some(cutover) = self.layer.cleartext_would_land_above_cutover(last) {
                tracing::warn!(
                    cutover,
                    last_index = last,
                    "refused a cleartext proposal: the layer is not sealing and the log reached the cutover"
                );
                return Err(ProposeError::NotSealing { cutover });
            }
        }
        Ok(())
    }

    /// Proposes a switch-on barrier: a control entry (empty data, barrier marker) that the state
    /// machine never sees. Its committed index is a safe cutover once every layer seals.
    ///
    /// Only on the leader: a barrier carries no authenticated identity, so its outcome is matched
    /// only by the `(index, term)` the leader appends it at, never by the id in its marker.
    ///
    /// # Errors
    /// [`ProposeError::NotLeader`] when `node` is not the leader (nothing is appended or
    /// forwarded); [`ProposeError::Dropped`] / [`ProposeError::Raft`] from raft-rs.
    pub fn propose_barrier<T: Storage>(&self, node: &mut RawNode<T>) -> Result<Ticket, ProposeError> {
        if node.raft.state != StateRole::Leader {
            return Err(ProposeError::NotLeader { leader: node.raft.leader_id });
        }
        // Above the cutover an engine-framed barrier halts every replica: refuse it here.
        if let Some(cutover) = self.layer.cleartext_would_land_above_cutover(node.raft.raft_log.last_index())
        {
            return Err(ProposeError::NotSealing { cutover });
        }
        let id = self.layer.next_proposal_id();
        append(node, id, EntryKind::Control, ContextMarker::barrier(id).encode(), Vec::new())
    }

    /// Proposes a conf change, untouched by the layer.
    ///
    /// # Errors
    /// [`ProposeError::ReservedContext`], or raft-rs errors.
    pub fn propose_conf_change<T: Storage>(
        &self,
        node: &mut RawNode<T>,
        context: Vec<u8>,
        change: impl ConfChangeI,
    ) -> Result<(), ProposeError> {
        if starts_with_magic(&context) {
            return Err(ProposeError::ReservedContext);
        }
        node.propose_conf_change(context, change).map_err(raft_error)
    }
}

pub(crate) fn append<T: Storage>(
    node: &mut RawNode<T>,
    id: ProposalId,
    kind: EntryKind,
    context: Vec<u8>,
    data: Vec<u8>,
) -> Result<Ticket, ProposeError> {
    let leader = node.raft.state == StateRole::Leader;
    let before = node.raft.raft_log.last_index();
    let term = node.raft.term;
    node.propose(context, data).map_err(raft_error)?;
    let after = node.raft.raft_log.last_index();
    let appended_at = (leader && after == before + 1).then_some((after, term));
    tracing::trace!(proposal = id.0, %kind, ?appended_at, "proposed");
    Ok(Ticket { id, kind, appended_at })
}

/// The cutover, when a cleartext entry appended to a log whose last index is `last_index` could
/// only land above it: a cutover is in force (`Some(c)`, `c != u64::MAX`) and `last_index >= c`.
/// The layer's sealing state is the caller's to check.
pub(crate) fn raft_error(e: raft::Error) -> ProposeError {
    match e {
        raft::Error::ProposalDropped => ProposeError::Dropped,
        e => ProposeError::Raft(e),
    }
}

impl fmt::Debug for EnvelopeProposer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EnvelopeProposer").field("layer", &self.layer).finish()
    }
}
