//! The proposer side: a decorator of `openraft::Raft<Sealed<C>>` that seals each request before
//! it is proposed.

use std::fmt;
use std::sync::atomic::Ordering;
use std::sync::{Arc, PoisonError};
use std::time::Duration;

use openraft::error::{ClientWriteError, ForwardToLeader, RaftError};
use openraft::raft::ClientWriteResponse;
use openraft::{Entry, LogId, RaftTypeConfig};
use raft_envelope_core::{
    error::AppendRefusal,
    lifecycle::{RetainedSnapshot, Retention},
    EntryKind, EnvelopeLayer, KeyId, PayloadWrapper, ProposalId, SealError,
};

use crate::codec::{CodecError, JsonCodec, PayloadCodec};
use crate::config::{ClientWriteRaftError, Sealed, SealedRaft};
use crate::drain::{drain_cleartext, Drain, DrainTimeout, InFlight, SealedInFlight, UntilHandled};
use crate::payload::EnvelopePayload;
use raft_envelope_core::apply::Admission;

/// A write through [`EnvelopeRaft`] failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WriteError<NID: openraft::NodeId, N: openraft::Node> {
    /// Sealing was refused (no active key, budget spent, ...). Nothing was appended: retry once
    /// the operator has fixed the cause (for example rotated the key).
    #[error("proposal refused before it was appended: {0}")]
    Seal(#[source] SealError),
    /// The request could not be encoded. Nothing was appended.
    #[error("proposal refused before it was appended: {0}")]
    Encode(#[source] CodecError),
    /// The write was sealed under a key that is no longer the active key (a rotation applied
    /// since it was prepared): nothing was appended. Prepare it again; it will be sealed under
    /// the new key. Only nodes with a layer state refuse this, so that no entry sealed under a
    /// retired key lands after the rotation and a later destroy can be proven safe.
    #[error("proposal refused before it was appended: sealed under {key_id}, which is no longer active")]
    KeyRotated {
        /// The key it was sealed under.
        key_id: KeyId,
    },
    /// This node's log holds a layer control entry it has not applied yet (seen by
    /// [`PrefetchingLogStore`](crate::PrefetchingLogStore)), so its layer state may be behind its
    /// log: nothing was appended. Retry once it applied it (moments later). Only nodes with a
    /// layer state refuse this.
    #[error(
        "proposal refused before it was appended: a layer control entry is not applied yet on this node"
    )]
    ControlPending,
    /// This node leads a term but has not yet applied an entry of that term, so its layer state
    /// may not reflect control entries (a rotation, a destroy) earlier leaders committed: a
    /// sealed write is refused until it has (moments after an election). Nothing was appended;
    /// retry. Only nodes with a layer state refuse this.
    #[error("proposal refused before it was appended: this leader has not applied an entry of its term yet")]
    LeaderCatchingUp,
    /// This node's layer is not sealing while its cutover is in force, so the proposal could
    /// only land above the cutover in the clear and halt every replica: it was refused and not
    /// appended. Retryable once the node's layer seals again (a configuration error).
    #[error(
        "proposal refused before it was appended: the layer is not sealing but the cutover is {cutover}"
    )]
    NotSealing {
        /// The cutover in force.
        cutover: u64,
    },
    /// The write's envelope had already been applied, at `first_index` (the same
    /// [`PreparedWrite`] submitted again after a timeout or a leader change): the entry at
    /// `index` was not applied a second time, on any replica. The request took effect once.
    #[error("write already applied at index {first_index} (the entry at {index} was not applied again)")]
    Duplicate {
        /// The index of the entry that was not applied.
        index: u64,
        /// Where the same envelope was applied.
        first_index: u64,
    },
    /// The write's envelope is older than its sealing session's replay window: the entry at
    /// `index` was not applied, on any replica. Prepare the request again if it must still take
    /// effect.
    #[error("write expired: its envelope is older than the replay window (entry {index} not applied)")]
    Expired {
        /// The index of the entry that was not applied.
        index: u64,
    },
    /// openraft's own error, exactly as `Raft::client_write` returns it without the layer
    /// (`ForwardToLeader`, membership errors, or `Fatal` when the node has stopped).
    #[error(transparent)]
    Raft(ClientWriteRaftError<NID, N>),
}

impl<NID: openraft::NodeId, N: openraft::Node> WriteError<NID, N> {
    /// True when the layer refused the proposal before it reached Raft ([`WriteError::Seal`],
    /// [`WriteError::NotSealing`], [`WriteError::KeyRotated`], [`WriteError::LeaderCatchingUp`],
    /// [`WriteError::ControlPending`]): nothing was appended; retry once the cause is fixed
    /// (prepare again after `KeyRotated`).
    pub fn is_seal_refusal(&self) -> bool {
        matches!(
            self,
            WriteError::Seal(_)
                | WriteError::NotSealing { .. }
                | WriteError::KeyRotated { .. }
                | WriteError::LeaderCatchingUp
                | WriteError::ControlPending
        )
    }

    /// The leader to retry on, when this node is not the leader.
    pub fn forward_to_leader(&self) -> Option<&ForwardToLeader<NID, N>> {
        match self {
            WriteError::Raft(RaftError::APIError(ClientWriteError::ForwardToLeader(f))) => Some(f),
            _ => None,
        }
    }

    /// openraft's error, when the failure came from Raft.
    pub fn raft_error(&self) -> Option<&ClientWriteRaftError<NID, N>> {
        match self {
            WriteError::Raft(e) => Some(e),
            _ => None,
        }
    }
}

/// A request prepared for proposing: encoded and (when the layer seals) sealed, with its
/// [`ProposalId`].
///
/// Submitting the same `PreparedWrite` again (after a timeout or on the new leader after
/// `ForwardToLeader`) proposes byte-identical data with the same id: no new nonce is used, and a
/// state machine that records proposal ids (or the application's own request ids) can drop the
/// duplicate.
pub struct PreparedWrite {
    id: ProposalId,
    payload: EnvelopePayload,
    in_flight: Option<Arc<InFlight>>,
}

impl PreparedWrite {
    /// The proposal's identity (inside the envelope's authenticated header when sealed).
    pub fn id(&self) -> ProposalId {
        self.id
    }

    /// Whether it is sealed ([`EntryKind::Envelope`]) or cleartext.
    pub fn kind(&self) -> EntryKind {
        self.payload.kind()
    }
}

impl fmt::Debug for PreparedWrite {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PreparedWrite").field("id", &self.id).field("payload", &self.payload).finish()
    }
}

/// The proposer decorator: the application's write path with the envelope layer in front of
/// `openraft::Raft<Sealed<C>>`.
///
/// [`client_write`](Self::client_write) takes the application's own request type and returns
/// the same `ClientWriteResponse<C>` and `RaftError` a plain `Raft<C>` returns; only sealing
/// failures add a variant. Make one per node and clone it (clones share the switch-on drain).
///
/// Management calls (`initialize`, membership changes, metrics, `wait`, `shutdown`) are the
/// engine's own, reached directly through `Deref` (or [`raft`](Self::raft)). Writes cannot
/// bypass the layer: `EnvelopePayload` has no public constructor outside this crate, so every
/// application write goes through it.
pub struct EnvelopeRaft<C: RaftTypeConfig<Entry = Entry<C>>> {
    raft: SealedRaft<C>,
    layer: Arc<EnvelopeLayer>,
    codec: Arc<dyn PayloadCodec<C::D>>,
    pub(crate) drain: Arc<Drain>,
    pub(crate) admin: Option<Arc<crate::plane::Admin<C>>>,
}

impl<C: RaftTypeConfig<Entry = Entry<C>>> Clone for EnvelopeRaft<C> {
    fn clone(&self) -> Self {
        Self {
            raft: self.raft.clone(),
            layer: self.layer.clone(),
            codec: self.codec.clone(),
            drain: self.drain.clone(),
            admin: self.admin.clone(),
        }
    }
}

impl<C: RaftTypeConfig<Entry = Entry<C>>> fmt::Debug for EnvelopeRaft<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EnvelopeRaft")
            .field("layer", &self.layer)
            .field("cleartext_in_flight", &self.drain.cleartext_in_flight.load(Ordering::SeqCst))
            .finish()
    }
}

// Reason: the error mirrors `Raft::client_write`'s own `RaftError`, unboxed, so callers handle it as
// they did without the layer.
#[allow(clippy::result_large_err)]
impl<C: RaftTypeConfig<Entry = Entry<C>>> EnvelopeRaft<C> {
    /// Decorates `raft` with `layer` (the same `Arc` given to the node's
    /// [`EnvelopeStateMachine`](crate::EnvelopeStateMachine)), encoding requests with
    /// [`JsonCodec`].
    pub fn new(raft: SealedRaft<C>, layer: Arc<EnvelopeLayer>) -> Self {
        Self::with_codec(raft, layer, Arc::new(JsonCodec::<C::D>::new()))
    }

    /// Decorates `raft` with `layer`, encoding requests with `codec`.
    pub fn with_codec(
        raft: SealedRaft<C>,
        layer: Arc<EnvelopeLayer>,
        codec: Arc<dyn PayloadCodec<C::D>>,
    ) -> Self {
        Self { raft, layer, codec, drain: Arc::default(), admin: None }
    }

    /// Decorates `raft` for a node whose keys and cutover change through layer control entries:
    /// `layer` from [`layer_from_state`](crate::layer_from_state)`(&state)`, the same `layer` and
    /// `state` as the node's [`EnvelopeStateMachine::with_layer_state`](crate::EnvelopeStateMachine::with_layer_state).
    /// Enables the admin API ([`enable_encryption`](Self::enable_encryption),
    /// [`rotate_key`](Self::rotate_key), [`retire_key`](Self::retire_key),
    /// [`destroy_key`](Self::destroy_key), [`encryption_status`](Self::encryption_status)).
    pub fn with_layer_state(
        raft: SealedRaft<C>,
        layer: Arc<EnvelopeLayer>,
        state: Arc<raft_envelope_core::LayerState>,
        codec: Arc<dyn PayloadCodec<C::D>>,
    ) -> Self {
        let drain: Arc<Drain> = Arc::default();
        let admin = Some(Arc::new(crate::plane::Admin::new(raft.clone(), state, drain.clone())));
        Self { raft, layer, codec, drain, admin }
    }

    /// The engine, for management calls.
    pub fn raft(&self) -> &SealedRaft<C> {
        &self.raft
    }

    /// The layer.
    pub fn layer(&self) -> &Arc<EnvelopeLayer> {
        &self.layer
    }

    /// Encodes `request` and seals it when the layer is sealing.
    ///
    /// # Errors
    /// [`WriteError::Encode`], [`WriteError::Seal`] or [`WriteError::NotSealing`]; nothing is
    /// proposed.
    pub fn prepare(&self, request: &C::D) -> Result<PreparedWrite, WriteError<C::NodeId, C::Node>> {
        let bytes = self.codec.encode(request).map_err(WriteError::Encode)?;
        // Held while the layer reads its wrapper, so that switch-on either sees this proposal
        // counted as cleartext in flight, or this proposal sees the wrapper and seals.
        let _preparing = self.drain.switch.read().unwrap_or_else(PoisonError::into_inner);
        let proposal = self.layer.prepare(bytes).map_err(WriteError::Seal)?;
        let (payload, in_flight) = match proposal.kind {
            EntryKind::Envelope => (EnvelopePayload::envelope(proposal.bytes), None),
            _ => {
                if let Some(cutover) = self.cleartext_would_land_above_cutover() {
                    return Err(WriteError::NotSealing { cutover });
                }
                (EnvelopePayload::cleartext(proposal.bytes), Some(InFlight::new(&self.drain)))
            }
        };
        Ok(PreparedWrite { id: proposal.id, payload, in_flight })
    }

    /// Refuse (`true`, the default) or let through (`false`) a cleartext proposal that can only
    /// land above the cutover: this node's last log index already reached the cutover, so the
    /// entry would halt every replica that applies it. Shared by clones.
    ///
    /// Turning it off exists for tests that need such an entry in the log through the normal
    /// write path.
    pub fn set_refuse_cleartext_above_cutover(&self, refuse: bool) {
        self.drain.cleartext_guard_off.store(!refuse, Ordering::SeqCst);
    }

    /// The cutover when a cleartext proposal made now could only land above it.
    fn cleartext_would_land_above_cutover(&self) -> Option<u64> {
        if self.drain.cleartext_guard_off.load(Ordering::SeqCst) {
            return None;
        }
        // The metric only lags behind the log: if it reached the cutover, the log did.
        let last = self.raft.metrics().borrow().last_log_index.unwrap_or(0);
        self.layer.cleartext_would_land_above_cutover(last)
    }

    /// Proposes a prepared write and waits for its response.
    ///
    /// # Errors
    /// [`WriteError::Raft`]: openraft's error, unchanged.
    pub async fn submit(
        &self,
        prepared: &PreparedWrite,
    ) -> Result<ClientWriteResponse<C>, WriteError<C::NodeId, C::Node>> {
        let payload = prepared.payload.clone();
        let key_id = if self.admin.is_some() { payload.key_id() } else { None };
        let mut _sealed = None;
        if let Some(admin) = &self.admin {
            // Counted before the check: a destroy that saw no envelope under the key in flight
            // ran after the rotation, so the check below sees the key inactive and refuses.
            _sealed = key_id.map(|k| SealedInFlight::new(&self.drain, k));
            let metrics = self.raft.metrics();
            let m = metrics.borrow();
            let leading = m.current_leader.as_ref() == Some(&m.id);
            // The core's append rule (`LayerState::check_append`), as on raft-rs.
            match admin.state().check_append(key_id) {
                Ok(()) => {}
                Err(AppendRefusal::NotActiveKey { key_id }) => return Err(WriteError::KeyRotated { key_id }),
                // A follower answers as it would without the layer: with the leader.
                Err(_) if !leading => {
                    let node =
                        m.current_leader.as_ref().and_then(|l| m.membership_config.membership().get_node(l));
                    let forward = match (&m.current_leader, node) {
                        (Some(leader), Some(node)) => ForwardToLeader::new(leader.clone(), node.clone()),
                        _ => ForwardToLeader::empty(),
                    };
                    return Err(WriteError::Raft(RaftError::APIError(ClientWriteError::ForwardToLeader(
                        forward,
                    ))));
                }
                Err(_) => return Err(WriteError::ControlPending),
            }
            // Defence in depth (without `PrefetchingLogStore`, the only guard): a new leader
            // applies an entry of its own term, and so everything earlier leaders committed,
            // before it appends anything. Read from the metrics, which may lag.
            if leading && m.last_applied.as_ref().map(|l| l.leader_id.term) != Some(m.current_term) {
                return Err(WriteError::LeaderCatchingUp);
            }
        }
        let result = match &prepared.in_flight {
            None => self.raft.client_write(payload).await,
            Some(token) => {
                // The proposal stays counted until RaftCore has handled it, even when the caller
                // stops waiting: a dropped caller must not let the drain finish while its
                // proposal still sits in RaftCore's queue (see `UntilHandled`).
                let mut guard = UntilHandled { drain: &self.drain, token: Some(token.clone()) };
                let result = self.raft.client_write(payload).await;
                guard.token = None;
                result
            }
        };
        if result.is_ok() && key_id.is_some() {
            self.maybe_rotate();
            self.maybe_checkpoint();
        }
        let response = result.map(unseal_response).map_err(WriteError::Raft)?;
        if let Some(admin) = &self.admin {
            let index = response.log_id.index;
            match admin.state().local().not_applied_at(index) {
                Some(Admission::Duplicate { first_index }) => {
                    return Err(WriteError::Duplicate { index, first_index })
                }
                Some(Admission::Expired { .. }) => return Err(WriteError::Expired { index }),
                _ => {}
            }
        }
        Ok(response)
    }

    /// Proposes the application's `request` through the layer: encode, seal (when sealing),
    /// `Raft::client_write`. The response is the one the application's state machine returned
    /// for it, exactly as without the layer.
    ///
    /// # Errors
    /// [`WriteError::Seal`], [`WriteError::NotSealing`], [`WriteError::Encode`] (nothing
    /// appended) or [`WriteError::Raft`].
    pub async fn client_write(
        &self,
        request: C::D,
    ) -> Result<ClientWriteResponse<C>, WriteError<C::NodeId, C::Node>> {
        let prepared = self.prepare(&request)?;
        self.submit(&prepared).await
    }

    /// Switch-on step 1, on this node: every proposal prepared from now on is sealed with
    /// `wrapper`; then waits until every cleartext proposal prepared before has been answered by
    /// Raft (appended and applied, or refused), so none of them can be appended later.
    ///
    /// # Errors
    /// [`DrainTimeout`] when cleartext proposals are still in flight after `timeout`. Sealing
    /// stays switched on; call [`drain_cleartext`](Self::drain_cleartext) again.
    pub async fn seal_new_proposals(
        &self,
        wrapper: Arc<dyn PayloadWrapper>,
        timeout: Duration,
    ) -> Result<(), DrainTimeout> {
        {
            let _switching = self.drain.switch.write().unwrap_or_else(PoisonError::into_inner);
            self.layer.set_wrapper(Some(wrapper));
        }
        self.drain_cleartext(timeout).await
    }

    /// Waits until no cleartext proposal prepared on this node is still waiting for Raft.
    ///
    /// # Errors
    /// [`DrainTimeout`] after `timeout`.
    pub async fn drain_cleartext(&self, timeout: Duration) -> Result<(), DrainTimeout> {
        drain_cleartext::<C>(&self.raft, &self.drain, timeout).await
    }

    /// How many envelopes sealed under `key_id` are being submitted on this node (and its clones)
    /// and not yet answered by Raft.
    pub fn sealed_in_flight(&self, key_id: KeyId) -> usize {
        self.drain.sealed_in_flight(key_id)
    }

    /// What this node still retains that may hold entries sealed under a key: the first index
    /// of its log (everything below was compacted), the snapshot it keeps with the key it is
    /// sealed under, and what it may still seal under (its active key, keys of envelopes being
    /// submitted). Gather one from every member and pass them to
    /// [`destroy_key`](Self::destroy_key).
    pub fn retention(&self) -> Retention<C::NodeId> {
        let metrics = self.raft.metrics().borrow().clone();
        let first = metrics.purged.as_ref().map_or(0, |p| p.index + 1);
        let snapshot = match (&self.admin, &metrics.snapshot) {
            // What the layer state recorded when the snapshot was built or installed: not gated
            // on the metrics, which may lag behind.
            (Some(admin), _) => admin.state().local().retained_snapshot(),
            (None, Some(s)) => Some(RetainedSnapshot::new(s.index, None)),
            (None, None) => None,
        };
        let mut report = Retention::new(metrics.id.clone(), first, snapshot);
        if let Some(admin) = &self.admin {
            // The active key first, then the keys in flight: a submit counts itself before it
            // checks the active key, so one that passed its check under a key this read no
            // longer sees active was counted before the in-flight read below.
            let active = admin.state().active_key();
            let mut in_flight: Vec<KeyId> = self
                .drain
                .sealed_in_flight
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .keys()
                .copied()
                .collect();
            // Snapshot builds in progress seal under the key they captured.
            in_flight.extend(admin.state().local().keys_in_use());
            in_flight.sort_unstable();
            in_flight.dedup();
            report = report.with_sealing(active, in_flight);
        }
        report
    }

    /// Switch-on step 2, on the leader: commits a barrier entry (a layer-owned control entry the
    /// application's state machine sees as `Blank`) and returns its log id. Its index is the
    /// cutover.
    ///
    /// Only at or below the cutover: above a cutover in force an engine-framed barrier would
    /// halt every replica (`unauthenticated_barrier`, SPEC R9), so it is refused.
    ///
    /// # Errors
    /// [`WriteError::Raft`], typically `ForwardToLeader`: retry on the leader;
    /// [`WriteError::NotSealing`] when this node's log already reaches a cutover in force.
    pub async fn commit_barrier(&self) -> Result<LogId<C::NodeId>, WriteError<C::NodeId, C::Node>> {
        // Above the cutover an engine-framed barrier halts every replica: refuse it here.
        let last = self.raft.metrics().borrow().last_log_index.unwrap_or(0);
        if let Some(cutover) = self.layer.cleartext_would_land_above_cutover(last) {
            return Err(WriteError::NotSealing { cutover });
        }
        let response = self.raft.client_write(EnvelopePayload::barrier()).await.map_err(WriteError::Raft)?;
        Ok(response.log_id)
    }
}

/// Everything else a `Raft` offers, directly: `initialize`, `add_learner`,
/// `change_membership`, `metrics`, `wait`, `trigger`, `ensure_linearizable`, `shutdown`, the RPC
/// handlers (`append_entries`, `vote`, `install_snapshot`) ... Writes still go through the layer:
/// [`EnvelopeRaft::client_write`] is the inherent method, and `Raft::client_write` on the
/// engine takes an [`EnvelopePayload`], which only this crate constructs.
impl<C: RaftTypeConfig<Entry = Entry<C>>> std::ops::Deref for EnvelopeRaft<C> {
    type Target = SealedRaft<C>;

    fn deref(&self) -> &SealedRaft<C> {
        &self.raft
    }
}

impl<C: RaftTypeConfig<Entry = Entry<C>>> EnvelopeRaft<C> {
    /// Proposes a layer control entry `entry` made by the core's
    /// [`Lifecycle`](raft_envelope_core::lifecycle::Lifecycle) (for a
    /// [`ControlPlane`](raft_envelope_core::lifecycle::ControlPlane) of your own, over your RPC)
    /// and returns its index once this node (the leader) applied it. An entry that does not
    /// apply halts every replica: propose only what `Lifecycle` hands over.
    ///
    /// # Errors
    /// [`WriteError::Raft`], typically `ForwardToLeader`.
    // Reason: the error mirrors `Raft::client_write`'s own `RaftError`, unboxed.
    #[allow(clippy::result_large_err)]
    pub async fn propose_control(&self, entry: Vec<u8>) -> Result<u64, WriteError<C::NodeId, C::Node>> {
        let response =
            self.raft.client_write(EnvelopePayload::control(entry)).await.map_err(WriteError::Raft)?;
        Ok(response.log_id.index)
    }
}

/// `ClientWriteResponse<Sealed<C>>` and `ClientWriteResponse<C>` hold the same types.
fn unseal_response<C: RaftTypeConfig<Entry = Entry<C>>>(
    r: ClientWriteResponse<Sealed<C>>,
) -> ClientWriteResponse<C> {
    ClientWriteResponse { log_id: r.log_id, data: r.data, membership: r.membership }
}
