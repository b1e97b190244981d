//! The proposer side: a decorator of `openraft::Raft<Sealed<C>>` that seals each request before
//! it is proposed.

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
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
use crate::config::{Sealed, SealedRaft};
use crate::payload::EnvelopePayload;

/// The error `Raft::client_write` returns, for node id `NID` and node `N`.
pub type ClientWriteRaftError<NID, N> = RaftError<NID, ClientWriteError<NID, N>>;

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

/// Counts cleartext proposals between the moment they were prepared and the moment Raft has
/// answered for them: switch-on waits until none is left (see [`EnvelopeRaft::seal_new_proposals`]).
#[derive(Default)]
pub(crate) struct Drain {
    /// Readers: proposers while they prepare. Writer: switch-on, to order itself after every
    /// prepare that may have read the old (cleartext) setting.
    switch: RwLock<()>,
    cleartext_in_flight: AtomicUsize,
    /// True when the cleartext-above-cutover guard is switched off (`Default`: on).
    cleartext_guard_off: AtomicBool,
    /// Envelopes being submitted, by key: destroying a key waits until none sealed under it is
    /// left between `submit` and Raft's answer.
    sealed_in_flight: std::sync::Mutex<std::collections::BTreeMap<KeyId, usize>>,
    /// Woken whenever a cleartext proposal stops being counted.
    released: tokio::sync::Notify,
    /// Cleartext proposals whose caller stopped waiting before Raft answered: still counted
    /// until a drain has made sure RaftCore handled them (see `UntilHandled`).
    abandoned: std::sync::Mutex<Vec<Arc<InFlight>>>,
}

impl Drain {
    fn sealed_in_flight(&self, key_id: KeyId) -> usize {
        let map = self.sealed_in_flight.lock().unwrap_or_else(PoisonError::into_inner);
        map.get(&key_id).copied().unwrap_or(0)
    }
}

/// Counts one envelope under its key while `submit` runs.
struct SealedInFlight<'a>(&'a Drain, KeyId);

impl<'a> SealedInFlight<'a> {
    fn new(drain: &'a Drain, key_id: KeyId) -> Self {
        *drain.sealed_in_flight.lock().unwrap_or_else(PoisonError::into_inner).entry(key_id).or_default() +=
            1;
        Self(drain, key_id)
    }
}

impl Drop for SealedInFlight<'_> {
    fn drop(&mut self) {
        let mut map = self.0.sealed_in_flight.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(n) = map.get_mut(&self.1) {
            *n -= 1;
            if *n == 0 {
                map.remove(&self.1);
            }
        }
    }
}

/// Keeps a cleartext proposal counted while `submit` waits for Raft's answer. When the caller
/// stops waiting (the `submit` future is dropped) before the answer, the proposal stays counted,
/// parked in the drain's `abandoned` list: the next drain releases it once RaftCore has handled
/// every API message queued before (`with_raft_state` travels through the same FIFO channel as
/// the write, so when it returns the write was appended or refused). Dropping needs no runtime.
struct UntilHandled<'a> {
    drain: &'a Drain,
    token: Option<Arc<InFlight>>,
}

impl Drop for UntilHandled<'_> {
    fn drop(&mut self) {
        if let Some(token) = self.token.take() {
            self.drain.abandoned.lock().unwrap_or_else(PoisonError::into_inner).push(token);
        }
    }
}

/// Waits until no cleartext proposal prepared through `drain` is still waiting for Raft: woken
/// by each release, never polling. Proposals whose caller stopped waiting are released once
/// RaftCore has handled them.
pub(crate) async fn drain_cleartext<C: RaftTypeConfig<Entry = Entry<C>>>(
    raft: &SealedRaft<C>,
    drain: &Drain,
    timeout: Duration,
) -> Result<(), DrainTimeout> {
    use openraft::type_config::TypeConfigExt;
    use openraft::Instant as _;
    // Orders this wait after every prepare that read the wrapper before it changed.
    drop(drain.switch.write().unwrap_or_else(PoisonError::into_inner));
    let start = C::now();
    let deadline = start + timeout;
    loop {
        let released = drain.released.notified();
        let mut released = std::pin::pin!(released);
        // Registered before the count is read, so a release in between is not missed.
        released.as_mut().enable();
        let in_flight = drain.cleartext_in_flight.load(Ordering::SeqCst);
        if in_flight == 0 {
            return Ok(());
        }
        let abandoned = std::mem::take(&mut *drain.abandoned.lock().unwrap_or_else(PoisonError::into_inner));
        if !abandoned.is_empty() {
            // Every write queued before this call has been appended or refused when it returns.
            let _ = raft.with_raft_state(|_| ()).await;
            drop(abandoned);
            continue;
        }
        let left = crate::admin::time_left::<C>(deadline);
        if left.is_zero() || C::timeout(left, released).await.is_err() {
            let in_flight = drain.cleartext_in_flight.load(Ordering::SeqCst);
            if in_flight == 0 {
                return Ok(());
            }
            return Err(DrainTimeout { in_flight, waited: start.elapsed() });
        }
    }
}

/// Held by a cleartext proposal until Raft has answered for it (or it is dropped unsubmitted).
pub(crate) struct InFlight(Arc<Drain>);

impl InFlight {
    fn new(drain: &Arc<Drain>) -> Arc<Self> {
        drain.cleartext_in_flight.fetch_add(1, Ordering::SeqCst);
        Arc::new(Self(drain.clone()))
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.cleartext_in_flight.fetch_sub(1, Ordering::SeqCst);
        self.0.released.notify_waiters();
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

/// The switch-on drain did not finish in time: cleartext proposals prepared before sealing was
/// switched on are still waiting for Raft's answer. Sealing stays on; retry the drain.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("{in_flight} cleartext proposals still in flight after {waited:?}")]
pub struct DrainTimeout {
    /// Cleartext proposals still waiting.
    pub in_flight: usize,
    /// How long the drain waited.
    pub waited: Duration,
}

/// The proposer decorator: the application's write path with the envelope layer in front of
/// `openraft::Raft<Sealed<C>>`.
///
/// [`client_write`](Self::client_write) takes the application's own request type and returns
/// the same `ClientWriteResponse<C>` and `RaftError` a plain `Raft<C>` returns; only sealing
/// failures add a variant. Make one per node and clone it (clones share the switch-on drain).
///
/// Management calls (`initialize`, membership changes, metrics, `wait`, `shutdown`) go to
/// [`raft`](Self::raft) directly. Writes must not: `EnvelopePayload` has no public constructor outside
/// this crate, so every application write goes through the layer.
pub struct EnvelopeRaft<C: RaftTypeConfig<Entry = Entry<C>>> {
    raft: SealedRaft<C>,
    layer: Arc<EnvelopeLayer>,
    codec: Arc<dyn PayloadCodec<C::D>>,
    pub(crate) drain: Arc<Drain>,
    pub(crate) admin: Option<Arc<crate::admin::Admin<C>>>,
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
        let admin = Some(Arc::new(crate::admin::Admin::new(raft.clone(), state, drain.clone())));
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
        }
        result.map(unseal_response).map_err(WriteError::Raft)
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
    /// # Errors
    /// [`WriteError::Raft`], typically `ForwardToLeader`: retry on the leader.
    pub async fn commit_barrier(&self) -> Result<LogId<C::NodeId>, WriteError<C::NodeId, C::Node>> {
        let response = self.raft.client_write(EnvelopePayload::barrier()).await.map_err(WriteError::Raft)?;
        Ok(response.log_id)
    }
}

/// `ClientWriteResponse<Sealed<C>>` and `ClientWriteResponse<C>` hold the same types.
fn unseal_response<C: RaftTypeConfig<Entry = Entry<C>>>(
    r: ClientWriteResponse<Sealed<C>>,
) -> ClientWriteResponse<C> {
    ClientWriteResponse { log_id: r.log_id, data: r.data, membership: r.membership }
}
