//! The apply side: a `RaftStateMachine<Sealed<C>>` around the application's `RaftStateMachine<C>`.

use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use openraft::storage::RaftStateMachine;
use openraft::{
    AnyError, Entry, EntryPayload, LogId, RaftSnapshotBuilder, RaftTypeConfig, Snapshot, SnapshotMeta,
    StorageError, StorageIOError, StoredMembership,
};
use raft_envelope_core::{
    apply::{Admission, ApplyContext, EntryRecord},
    error::FailureReason,
    lifecycle::{RetainedSnapshot, SnapshotCapture},
    provider::KeyProvider,
    wire::{SnapshotHeader, HEADER_LEN, TAG_LEN},
    ApplyGate, EntryKind, EnvelopeLayer, FatalApplyError, LayerState, PayloadWrapper,
};

use crate::codec::{JsonCodec, PayloadCodec};

/// The header and tag of an envelope, joined (what the digest covers; the replay window reads
/// the header), taken before the envelope is opened in place. On the stack: no allocation per
/// entry. An envelope shorter than this never opens, so it never reaches the layer state.
fn record_parts(envelope: &[u8]) -> [u8; HEADER_LEN + TAG_LEN] {
    let mut parts = [0u8; HEADER_LEN + TAG_LEN];
    if envelope.len() >= HEADER_LEN + TAG_LEN {
        parts[..HEADER_LEN].copy_from_slice(&envelope[..HEADER_LEN]);
        parts[HEADER_LEN..].copy_from_slice(&envelope[envelope.len() - TAG_LEN..]);
    }
    parts
}
use crate::config::Sealed;
use crate::payload::Repr;

/// Where an [`EnvelopeStateMachine`] records the entry it halted on, readable from outside the
/// Raft task (by an operator endpoint, a test or a demo).
///
/// openraft reports the halt as `Fatal::StorageError` whose message names the index and reason,
/// but as a string; this keeps the typed [`FatalApplyError`].
#[derive(Clone, Default)]
pub struct HaltRecord(Arc<Mutex<Option<FatalApplyError>>>);

impl HaltRecord {
    /// The error the state machine halted with, if it has halted.
    pub fn get(&self) -> Option<FatalApplyError> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    fn set(&self, error: FatalApplyError) {
        *self.0.lock().unwrap_or_else(PoisonError::into_inner) = Some(error);
    }
}

impl fmt::Debug for HaltRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("HaltRecord").field(&self.get()).finish()
    }
}

/// Decorates the application's state machine: every committed normal entry goes through the
/// layer's [`ApplyGate`](raft_envelope_core::ApplyGate) before the application sees it.
///
/// For each entry of a batch, in log order:
/// - `Blank` and `Membership` entries (and the layer's own barrier, which the application sees as
///   `Blank`) pass through untouched;
/// - a normal entry is decided by `layer.gate().decide(index, kind, bytes)`; what may be applied
///   is decoded by the codec into the application's request and handed on.
/// - a layer control entry (key lifecycle, enforce) is applied to the node's
///   [`LayerState`] ([`with_layer_state`](Self::with_layer_state); without one it halts,
///   `invalid_control`), never to the application, which sees `Blank` in its place; before an
///   install entry the key is unwrapped with the node's key provider (bounded wait);
/// - after an envelope opens and decodes, the layer state records it under its key id
///   and every other entry goes through `LayerState::admit`: exactly-once envelopes (a duplicate
///   or expired one reaches the application as `Blank`, and its proposer gets
///   [`WriteError::Duplicate`](crate::WriteError::Duplicate) /
///   [`WriteError::Expired`](crate::WriteError::Expired)), per-key counts and the running digest
///   integrity checkpoints compare.
///
/// The good prefix of the batch is applied to the inner state machine. On the first entry that
/// must not be applied, `apply` returns `Err(StorageError)` whose message names the index, key id
/// and reason: openraft then stops the node (`Fatal::StorageError`), does not advance its applied
/// index past the good prefix, and on restart `Raft::new` re-applies from the inner state
/// machine's `applied_state()` and fails on the same entry until the cause is repaired. No byte of
/// the failing entry reaches the inner state machine.
pub struct EnvelopeStateMachine<C: RaftTypeConfig, SM> {
    inner: SM,
    layer: Arc<EnvelopeLayer>,
    codec: Arc<dyn PayloadCodec<C::D>>,
    halt: HaltRecord,
    lifecycle: Option<Lifecycle>,
}

/// The key lifecycle part of a node built from a [`LayerState`].
struct Lifecycle {
    state: Arc<LayerState>,
    provider: Option<Arc<dyn KeyProvider>>,
    /// How often a wait for the key provider traces a warning.
    provider_warn_every: Duration,
    cache: Arc<FramedCache>,
}

/// How often, by default, the apply path traces a warning while it waits for a slow key provider
/// (an unreachable KMS): it keeps waiting, and the replica stalls instead of halting; only an
/// answer that the key cannot be unwrapped halts it (`key_unavailable`).
pub const DEFAULT_PROVIDER_WARN_INTERVAL: Duration = Duration::from_secs(5);

/// Waits for a key provider call, tracing a warning every `every` it takes: a slow provider
/// (an unreachable KMS) stalls apply on this replica, it does not halt it. One call is awaited
/// for four intervals, then dropped and made again with twice the time (a connection that hung
/// is not waited on forever; a provider that is just slow gets ever longer).
async fn await_provider<C, F, Fut>(
    every: Duration,
    index: u64,
    mut call: F,
) -> Result<(), raft_envelope_core::error::ControlError>
where
    C: RaftTypeConfig,
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<(), raft_envelope_core::error::ControlError>>
        + openraft::OptionalSend,
{
    use openraft::type_config::TypeConfigExt;
    use openraft::Instant as _;
    let start = C::now();
    let mut budget = every.saturating_mul(4);
    loop {
        let mut attempt = std::pin::pin!(call());
        let deadline = C::now() + budget;
        loop {
            let left = crate::drain::time_left::<C>(deadline);
            if left.is_zero() {
                break;
            }
            match C::timeout(every.min(left), &mut attempt).await {
                Ok(result) => return result,
                Err(_) => tracing::warn!(
                    index,
                    waited_ms = start.elapsed().as_millis() as u64,
                    "the key provider has not answered yet; apply waits for it"
                ),
            }
        }
        budget = budget.saturating_mul(2);
    }
}

/// The [`EnvelopeLayer`] of a node whose keys and cutover come from `state` (changed through
/// layer control entries, see [`EnvelopeRaft::enable_encryption`](crate::EnvelopeRaft::enable_encryption)):
/// its gate reads `state.cutover_source()` and opens with `state.cipher()`; it seals with the
/// same cipher as soon as the state has an active key (at once when it already has one, as after
/// a restart; otherwise when the node's [`EnvelopeStateMachine`] applies the first promote).
///
/// Give the same `Arc<LayerState>` (and this layer) to the node's
/// [`EnvelopeStateMachine::with_layer_state`] and [`EnvelopeRaft::with_layer_state`](crate::EnvelopeRaft::with_layer_state).
/// The layer state must be kept (persisted) with the application's state machine: both are at
/// the same applied index.
pub fn layer_from_state(state: &LayerState) -> Arc<EnvelopeLayer> {
    let cipher = Arc::new(state.cipher());
    let layer = EnvelopeLayer::new(ApplyGate::new(state.cutover_source()).with_unwrapper(cipher.clone()));
    if state.active_key().is_some() {
        layer.set_wrapper(Some(cipher));
    }
    Arc::new(layer)
}

impl<C: RaftTypeConfig, SM> EnvelopeStateMachine<C, SM> {
    /// Decorates `inner` with `layer`, decoding requests with [`JsonCodec`].
    pub fn new(inner: SM, layer: Arc<EnvelopeLayer>) -> Self {
        Self::with_codec(inner, layer, Arc::new(JsonCodec::<C::D>::new()))
    }

    /// Decorates `inner` with `layer`, decoding requests with `codec` (the same codec the
    /// proposers encode with).
    pub fn with_codec(inner: SM, layer: Arc<EnvelopeLayer>, codec: Arc<dyn PayloadCodec<C::D>>) -> Self {
        Self { inner, layer, codec, halt: HaltRecord::default(), lifecycle: None }
    }

    /// Decorates `inner` for a node whose keys and cutover change through layer control entries:
    /// `layer` must come from [`layer_from_state`]`(&state)`. Layer control entries are applied to
    /// `state` (never to `inner`, which sees an `EntryPayload::Blank` in their place); an entry that
    /// cannot be applied halts the replica like any other. Without a key provider
    /// ([`with_key_provider`](Self::with_key_provider)) this node can apply only the install
    /// entries whose key it created itself (the admin node); others halt with `key_unavailable`.
    pub fn with_layer_state(
        inner: SM,
        layer: Arc<EnvelopeLayer>,
        state: Arc<LayerState>,
        codec: Arc<dyn PayloadCodec<C::D>>,
    ) -> Self {
        let lifecycle = Lifecycle {
            state,
            provider: None,
            provider_warn_every: DEFAULT_PROVIDER_WARN_INTERVAL,
            cache: Arc::default(),
        };
        Self { inner, layer, codec, halt: HaltRecord::default(), lifecycle: Some(lifecycle) }
    }

    /// Sets the key provider this node unwraps installed data keys with, ahead of applying each
    /// install entry or installing a snapshot (`LayerState::prefetch`; usually already done when
    /// the entry was appended, see [`PrefetchingLogStore`](crate::PrefetchingLogStore)). A slow
    /// provider makes apply wait, with a warning every `warn_every`; a provider that answers that
    /// it cannot unwrap the key makes the entry halt with `key_unavailable` (fail closed), and it
    /// applies once a restart brings a provider that can. No effect on a state machine built
    /// without a layer state.
    pub fn with_key_provider(mut self, provider: Arc<dyn KeyProvider>, warn_every: Duration) -> Self {
        if let Some(lifecycle) = &mut self.lifecycle {
            lifecycle.provider = Some(provider);
            lifecycle.provider_warn_every = warn_every;
        }
        self
    }

    /// The layer state, when built with [`with_layer_state`](Self::with_layer_state).
    pub fn layer_state(&self) -> Option<&Arc<LayerState>> {
        self.lifecycle.as_ref().map(|l| &l.state)
    }

    /// Where this state machine records the entry it halts on.
    pub fn halt_record(&self) -> HaltRecord {
        self.halt.clone()
    }

    /// The layer.
    pub fn layer(&self) -> &Arc<EnvelopeLayer> {
        &self.layer
    }

    /// The application's state machine.
    pub fn get_ref(&self) -> &SM {
        &self.inner
    }

    /// The application's state machine, mutable.
    pub fn get_mut(&mut self) -> &mut SM {
        &mut self.inner
    }

    /// The application's state machine.
    pub fn into_inner(self) -> SM {
        self.inner
    }

    /// Maps one committed entry to what the application's state machine sees, or the reason the
    /// replica must halt on it.
    fn open_entry(&self, entry: Entry<Sealed<C>>) -> Result<Entry<C>, (LogId<C::NodeId>, FatalApplyError)>
    where
        C: RaftTypeConfig<Entry = Entry<C>>,
    {
        let Entry { log_id, payload } = entry;
        let index = log_id.index;
        let gate = self.layer.gate();
        let payload = match payload {
            EntryPayload::Blank => {
                let _ = gate.decide(index, EntryKind::Control, &[]);
                self.admit(index, EntryRecord::Engine(&[]));
                EntryPayload::Blank
            }
            EntryPayload::Membership(m) => {
                let _ = gate.decide(index, EntryKind::Control, &[]);
                self.admit(index, EntryRecord::Engine(b"membership"));
                EntryPayload::Membership(m)
            }
            EntryPayload::Normal(p) => {
                let kind = p.kind();
                let key_id = p.key_id();
                let bytes = match p.0 {
                    Repr::Barrier => {
                        if let Some(halt) = gate.refuse_unsealed_barrier(index) {
                            return Err((log_id, halt));
                        }
                        let _ = gate.decide(index, EntryKind::Control, &[]);
                        self.admit(index, EntryRecord::Engine(&[]));
                        return Ok(Entry { log_id, payload: EntryPayload::Blank });
                    }
                    Repr::Control(bytes) => {
                        self.apply_layer_control(index, &bytes).map_err(|e| (log_id.clone(), e))?;
                        return Ok(Entry { log_id, payload: EntryPayload::Blank });
                    }
                    Repr::Cleartext(bytes) | Repr::Envelope(bytes) => bytes,
                };
                // The entry is ours: cleartext is moved on, an envelope is opened in place;
                // neither is copied before the codec. An envelope's header and tag (what the
                // layer state records of it) are taken first; cleartext is recorded as it is.
                let context = ApplyContext::of(index, kind, &bytes);
                let parts = (kind == EntryKind::Envelope).then(|| record_parts(&bytes));
                let plain = gate.decide_owned(index, kind, bytes).map_err(|e| (log_id.clone(), e))?;
                // Admitted before decoding, as on raft-rs: a duplicate reaches neither the codec
                // nor the application, which sees a blank entry in its place.
                let admission = match &parts {
                    Some(parts) => self.admit(index, EntryRecord::Envelope(parts)),
                    None => self.admit(index, EntryRecord::Cleartext(&plain)),
                };
                if !admission.applies() {
                    return Ok(Entry { log_id, payload: EntryPayload::Blank });
                }
                match self.codec.decode_in(&context, plain) {
                    Ok(request) => EntryPayload::Normal(request),
                    Err(codec) => {
                        let mut error = FatalApplyError::new(index, FailureReason::Malformed, gate.cutover());
                        error.key_id = key_id;
                        tracing::debug!(index, "the payload does not decode as a request ({codec})");
                        return Err((log_id, gate.record_halt(error)));
                    }
                }
            }
        };
        Ok(Entry { log_id, payload })
    }

    /// The layer state's part of applying an entry that passed the gate
    /// ([`LayerState::admit`]); a node without a layer state applies everything.
    fn admit(&self, index: u64, record: EntryRecord<'_>) -> Admission {
        let Some(lifecycle) = &self.lifecycle else { return Admission::Apply };
        let admission = lifecycle.state.admit(index, record);
        if !admission.applies() {
            lifecycle.state.local().note_not_applied(index, admission);
        }
        admission
    }

    /// Applies a layer control entry to the layer state; starts sealing once a key is active.
    fn apply_layer_control(&self, index: u64, bytes: &[u8]) -> Result<(), FatalApplyError> {
        let gate = self.layer.gate();
        let Some(lifecycle) = &self.lifecycle else {
            // A node built without a layer state cannot apply key changes: fail closed.
            let error = FatalApplyError::new(index, FailureReason::InvalidControl, gate.cutover());
            return Err(gate.record_halt(error));
        };
        lifecycle.state.apply_control(index, bytes).map_err(|e| gate.record_halt(e))?;
        // Once a key is active every proposal prepared from now on is sealed. A cleartext
        // proposal prepared before is counted by its `EnvelopeRaft` until Raft answers for it;
        // the admin drains those before it proposes the enforce entry.
        let cipher: Arc<dyn PayloadWrapper> = Arc::new(lifecycle.state.cipher());
        lifecycle.state.sync_sealing(&self.layer, &cipher);
        Ok(())
    }

    /// Unwraps the key of an install entry ahead of applying it (a no-op for other entries and
    /// for keys already available). A failure is left to the apply, which halts fail closed.
    async fn prefetch(&self, entry: &Entry<Sealed<C>>)
    where
        C: RaftTypeConfig<Entry = Entry<C>>,
    {
        let (Some(lifecycle), EntryPayload::Normal(p)) = (&self.lifecycle, &entry.payload) else { return };
        let (Repr::Control(bytes), Some(provider)) = (&p.0, &lifecycle.provider) else { return };
        if lifecycle.state.applied_index().is_some_and(|a| entry.log_id.index <= a) {
            return;
        }
        let index = entry.log_id.index;
        let state = &lifecycle.state;
        let call = || async move { state.prefetch(bytes, provider.as_ref()).await.map(drop) };
        if let Err(e) = await_provider::<C, _, _>(lifecycle.provider_warn_every, index, call).await {
            tracing::warn!(index, "could not unwrap the key of a layer control entry: {e}");
        }
    }
}

impl<C: RaftTypeConfig, SM> fmt::Debug for EnvelopeStateMachine<C, SM> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EnvelopeStateMachine").field("layer", &self.layer).field("halt", &self.halt).finish()
    }
}

impl<C: RaftTypeConfig, SM> EnvelopeStateMachine<C, SM> {
    /// The halt for installing a snapshot while a cutover is in force on a node without a layer
    /// state (its snapshots are not sealed), recorded and traced; `None` when the layer enforces
    /// nothing.
    fn snapshot_refusal(&self, meta: &SnapshotMeta<C::NodeId, C::Node>) -> Option<FatalApplyError> {
        let index = meta.last_log_id.as_ref().map_or(0, |l| l.index);
        let error = self.layer.gate().refuse_unsealed_snapshot(index)?;
        self.halt.set(error.clone());
        Some(error)
    }
}

impl<C, SM> EnvelopeStateMachine<C, SM>
where
    C: RaftTypeConfig<Entry = Entry<C>>,
    SM: RaftStateMachine<C>,
{
    /// Installs a snapshot framed with the layer state: unwraps the keys it needs (bounded
    /// wait), opens and authenticates it, restores the layer state, then hands the application's
    /// bytes to the inner state machine. On any failure nothing is restored and the replica halts
    /// at the snapshot's index (fail closed); a restart that brings the KEK resumes there.
    async fn install_framed_snapshot(
        &mut self,
        meta: &SnapshotMeta<C::NodeId, C::Node>,
        mut snapshot: Box<C::SnapshotData>,
    ) -> Result<(), StorageError<C::NodeId>> {
        let Some(lifecycle) = &self.lifecycle else { return Ok(()) };
        let index = meta.last_log_id.as_ref().map_or(0, |l| l.index);
        let framed = read_all(&mut *snapshot).await.map_err(|e| read_error(meta, e))?;
        if let Some(provider) = &lifecycle.provider {
            let (state, framed) = (&lifecycle.state, &framed);
            let call = || state.prefetch_sealed_snapshot(framed, provider.as_ref());
            if let Err(e) = await_provider::<C, _, _>(lifecycle.provider_warn_every, index, call).await {
                tracing::warn!(index, "could not unwrap the keys of a snapshot: {e}");
            }
        }
        let gate = self.layer.gate();
        let data = match lifecycle.state.install_snapshot(index, &framed) {
            Ok(data) => data,
            Err(e) => {
                let error = gate.record_halt(FatalApplyError::from_control(index, e, gate.cutover()));
                self.halt.set(error.clone());
                return Err(
                    StorageIOError::write_snapshot(Some(meta.signature()), AnyError::new(&error)).into()
                );
            }
        };
        let cipher: Arc<dyn PayloadWrapper> = Arc::new(lifecycle.state.cipher());
        lifecycle.state.sync_sealing(&self.layer, &cipher);
        lifecycle.cache.put(meta.snapshot_id.clone(), framed);
        let state = lifecycle.state.clone();
        let mut inner_data = self.inner.begin_receiving_snapshot().await?;
        write_all(&mut *inner_data, &data).await.map_err(|e| read_error(meta, e))?;
        self.inner.install_snapshot(meta, inner_data).await?;
        state.local().note_applied_through(index);
        Ok(())
    }
}

fn halt_error<NID: openraft::NodeId>(log_id: LogId<NID>, error: &FatalApplyError) -> StorageError<NID> {
    StorageIOError::apply(log_id, AnyError::new(error)).into()
}

impl<C, SM> RaftStateMachine<Sealed<C>> for EnvelopeStateMachine<C, SM>
where
    C: RaftTypeConfig<Entry = Entry<C>>,
    SM: RaftStateMachine<C>,
{
    type SnapshotBuilder = EnvelopeSnapshotBuilder<C, SM::SnapshotBuilder>;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogId<C::NodeId>>, StoredMembership<C::NodeId, C::Node>), StorageError<C::NodeId>>
    {
        let (applied, membership) = self.inner.applied_state().await?;
        if let (Some(lifecycle), Some(applied)) = (&self.lifecycle, &applied) {
            lifecycle.state.local().note_applied_through(applied.index);
        }
        Ok((applied, membership))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<C::R>, StorageError<C::NodeId>>
    where
        I: IntoIterator<Item = Entry<Sealed<C>>> + openraft::OptionalSend,
        I::IntoIter: openraft::OptionalSend,
    {
        let mut good: Vec<Entry<C>> = Vec::new();
        let mut failure = None;
        for entry in entries {
            self.prefetch(&entry).await;
            match self.open_entry(entry) {
                Ok(e) => good.push(e),
                Err(f) => {
                    failure = Some(f);
                    break;
                }
            }
        }
        let last_good = good.last().map(|e| e.log_id.index);
        let responses = if good.is_empty() { Vec::new() } else { self.inner.apply(good).await? };
        if let (Some(lifecycle), Some(index)) = (&self.lifecycle, last_good) {
            lifecycle.state.local().note_applied_through(index);
        }
        match failure {
            None => Ok(responses),
            Some((log_id, error)) => {
                self.halt.set(error.clone());
                Err(halt_error(log_id, &error))
            }
        }
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        // The layer state is captured now, with the application's state: both at this applied
        // index, while the build itself may run as entries go on applying.
        // The framed snapshot goes into a fresh buffer from the application's state machine,
        // never into the application's own snapshot storage.
        let frame = match &self.lifecycle {
            None => None,
            Some(l) => Some(SnapshotFrame {
                state: l.state.clone(),
                capture: l.state.capture_for_snapshot(),
                cache: l.cache.clone(),
                buffer: Mutex::new(Some(self.inner.begin_receiving_snapshot().await)),
            }),
        };
        EnvelopeSnapshotBuilder { inner: self.inner.get_snapshot_builder().await, frame }
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<C::SnapshotData>, StorageError<C::NodeId>> {
        self.inner.begin_receiving_snapshot().await
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<C::NodeId, C::Node>,
        snapshot: Box<C::SnapshotData>,
    ) -> Result<(), StorageError<C::NodeId>> {
        if self.lifecycle.is_some() {
            return self.install_framed_snapshot(meta, snapshot).await;
        }
        // Without a layer state snapshots are not sealed: above a cutover, a snapshot from the
        // network could install any state without a key and move the applied index past entries
        // never opened. Fail closed: the replica halts instead.
        if let Some(error) = self.snapshot_refusal(meta) {
            return Err(StorageIOError::write_snapshot(Some(meta.signature()), AnyError::new(&error)).into());
        }
        self.inner.install_snapshot(meta, snapshot).await
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<Sealed<C>>>, StorageError<C::NodeId>> {
        if let Some(lifecycle) = &self.lifecycle {
            let Some(mut current) = self.inner.get_current_snapshot().await? else { return Ok(None) };
            let cached = lifecycle.cache.get(&current.meta.snapshot_id);
            return match cached {
                Some(framed) => {
                    let meta = current.meta.clone();
                    let mut buffer = self.inner.begin_receiving_snapshot().await?;
                    write_all(&mut *buffer, &framed).await.map_err(|e| read_error(&meta, e))?;
                    current.snapshot = buffer;
                    Ok(Some(seal_snapshot_type(current)))
                }
                // Framed by an earlier process (or never): frame the current state now, with the
                // layer state at the same applied index.
                None => {
                    let mut builder = self.get_snapshot_builder().await;
                    builder.build_snapshot().await.map(Some)
                }
            };
        }
        // Never send the state machine's state in the clear once a cutover is in force: a
        // follower that needs a snapshot waits (it is not sent one) instead.
        if self.layer.gate().cutover_in_force().is_some() {
            return Ok(None);
        }
        Ok(self.inner.get_current_snapshot().await?.map(seal_snapshot_type))
    }
}

/// Only the type config parameter changes. A node without a layer state passes snapshots through
/// unchanged while inert, and neither sends nor installs them once a cutover is in force (see
/// `install_snapshot`); a node with one frames them first (`EnvelopeSnapshotBuilder`).
fn seal_snapshot_type<C>(s: Snapshot<C>) -> Snapshot<Sealed<C>>
where
    C: RaftTypeConfig<Entry = Entry<C>>,
{
    Snapshot { meta: s.meta, snapshot: s.snapshot }
}

/// The snapshot builder of an [`EnvelopeStateMachine`]: the application's builder; on a node with
/// a layer state, its snapshot is framed with the layer state and sealed
/// (`LayerState::seal_snapshot_of`, `DESIGN.md` §10.10).
pub struct EnvelopeSnapshotBuilder<C: RaftTypeConfig, B> {
    inner: B,
    frame: Option<SnapshotFrame<C>>,
}

impl<C: RaftTypeConfig, B> fmt::Debug for EnvelopeSnapshotBuilder<C, B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EnvelopeSnapshotBuilder")
            .field("framed", &self.frame.is_some())
            .finish_non_exhaustive()
    }
}

/// A buffer for a framed snapshot, or why the application's state machine could not give one.
type SnapshotBuffer<C> =
    Result<Box<<C as RaftTypeConfig>::SnapshotData>, StorageError<<C as RaftTypeConfig>::NodeId>>;

/// What a builder frames its snapshot with: the layer state captured with the application's.
struct SnapshotFrame<C: RaftTypeConfig> {
    state: Arc<LayerState>,
    /// Keeps the key it seals under in use (not destroyable) until the build is done.
    capture: SnapshotCapture,
    cache: Arc<FramedCache>,
    /// Where the framed snapshot goes (`begin_receiving_snapshot` of the application's state
    /// machine); taken by the build. In a mutex only because builders must be `Sync`.
    buffer: Mutex<Option<SnapshotBuffer<C>>>,
}

impl<C, B> RaftSnapshotBuilder<Sealed<C>> for EnvelopeSnapshotBuilder<C, B>
where
    C: RaftTypeConfig<Entry = Entry<C>>,
    B: RaftSnapshotBuilder<C>,
{
    async fn build_snapshot(&mut self) -> Result<Snapshot<Sealed<C>>, StorageError<C::NodeId>> {
        let mut snapshot = self.inner.build_snapshot().await?;
        let Some(frame) = &self.frame else { return Ok(seal_snapshot_type(snapshot)) };
        let meta = snapshot.meta.clone();
        let index = meta.last_log_id.as_ref().map_or(0, |l| l.index);
        // The layer state was captured in `get_snapshot_builder`, so the application's builder
        // must capture its state there too (openraft's contract: a snapshot view). One that reads
        // the state machine later would pair this layer state (replay windows, digest, counts)
        // with another index, and every replica installing it would diverge from the others:
        // refuse to frame it, failing this node's build (fail closed), and say why.
        if let Some(captured) = frame.capture.layer().applied_index.filter(|a| *a != index) {
            let error = AnyError::error(format!(
                "the application's snapshot builder read the state machine at index {index}, but the layer \
                 state was captured at {captured} in get_snapshot_builder: a snapshot builder must capture \
                 the state when get_snapshot_builder returns it"
            ));
            tracing::error!(index, captured, "inconsistent snapshot refused");
            return Err(StorageIOError::write_snapshot(Some(meta.signature()), error).into());
        }
        let data = read_all(&mut snapshot.snapshot).await.map_err(|e| read_error(&meta, e))?;
        let framed = frame.state.seal_snapshot_of(frame.capture.layer(), index, &data).map_err(|e| {
            StorageError::from(StorageIOError::write_snapshot(Some(meta.signature()), AnyError::new(&e)))
        })?;
        let buffer = frame.buffer.lock().unwrap_or_else(PoisonError::into_inner).take();
        let Some(buffer) = buffer else {
            let error = AnyError::error("snapshot built twice");
            return Err(StorageIOError::write_snapshot(Some(meta.signature()), error).into());
        };
        let mut buffer = buffer?;
        write_all(&mut *buffer, &framed).await.map_err(|e| read_error(&meta, e))?;
        snapshot.snapshot = buffer;
        let sealed_under = SnapshotHeader::read(&framed).ok().and_then(|h| h.sealed_under);
        frame.state.local().record_retained_snapshot(RetainedSnapshot::new(index, sealed_under));
        frame.cache.put(meta.snapshot_id.clone(), framed);
        tracing::info!(index, key_id = sealed_under.map(|k| k.0), "snapshot framed with the layer state");
        Ok(seal_snapshot_type(snapshot))
    }
}

/// The framed bytes of the node's current snapshot, by snapshot id: what
/// `get_current_snapshot` sends, since the application's state machine keeps only its own bytes.
#[derive(Default)]
pub(crate) struct FramedCache(Mutex<Option<(String, Arc<Vec<u8>>)>>);

impl FramedCache {
    fn get(&self, snapshot_id: &str) -> Option<Arc<Vec<u8>>> {
        let cached = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        cached.as_ref().filter(|(id, _)| id == snapshot_id).map(|(_, bytes)| bytes.clone())
    }

    fn put(&self, snapshot_id: String, framed: Vec<u8>) {
        *self.0.lock().unwrap_or_else(PoisonError::into_inner) = Some((snapshot_id, Arc::new(framed)));
    }
}

async fn read_all<D>(data: &mut D) -> std::io::Result<Vec<u8>>
where
    D: tokio::io::AsyncRead + tokio::io::AsyncSeek + Unpin + ?Sized,
{
    use tokio::io::{AsyncReadExt, AsyncSeekExt};
    data.seek(std::io::SeekFrom::Start(0)).await?;
    let mut out = Vec::new();
    data.read_to_end(&mut out).await?;
    Ok(out)
}

/// Writes `bytes` from the start of `data` and rewinds it.
async fn write_all<D>(data: &mut D, bytes: &[u8]) -> std::io::Result<()>
where
    D: tokio::io::AsyncWrite + tokio::io::AsyncSeek + Unpin + ?Sized,
{
    use tokio::io::{AsyncSeekExt, AsyncWriteExt};
    data.seek(std::io::SeekFrom::Start(0)).await?;
    data.write_all(bytes).await?;
    data.flush().await?;
    data.seek(std::io::SeekFrom::Start(0)).await?;
    Ok(())
}

fn read_error<NID: openraft::NodeId, N: openraft::Node>(
    meta: &SnapshotMeta<NID, N>,
    error: std::io::Error,
) -> StorageError<NID> {
    StorageIOError::read_snapshot(Some(meta.signature()), &error).into()
}
