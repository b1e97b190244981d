//! Unwrapping installed keys when entries reach the log, not when they are applied.

use std::fmt;
use std::fmt::Debug;
use std::ops::RangeBounds;
use std::sync::Arc;

use openraft::storage::{LogFlushed, LogState, RaftLogReader, RaftLogStorage};
use openraft::type_config::TypeConfigExt;
use openraft::{Entry, EntryPayload, LogId, OptionalSend, RaftTypeConfig, StorageError, Vote};
use raft_envelope_core::{provider::KeyProvider, LayerState};

use crate::config::Sealed;
use crate::payload::Repr;

/// Decorates the node's log store for a node with a layer state. When a layer control entry is
/// appended (proposed here, or received from the leader):
/// - the key it installs is unwrapped with the node's [`KeyProvider`] in a background task
///   (`LayerState::prefetch`), so that by the time the entry is applied the key is cached and
///   apply does not wait for the key provider;
/// - the layer state learns that an unapplied control entry is in the log
///   (`LayerState::note_control_appended`; at start, the last stored index), and the node's
///   [`EnvelopeRaft`](crate::EnvelopeRaft) refuses writes until it applied past it
///   ([`WriteError::ControlPending`](crate::WriteError::ControlPending)): a node whose layer state
///   is behind its log (restarted, or newly elected) can then never append cleartext above an
///   enforce entry, nor seal under a key an unapplied rotation replaced.
///
/// Everything else goes to the decorated store unchanged. Recommended for every node built from
/// a layer state; without it the state machine unwraps keys when it reaches the entry, and only
/// the metrics-based `LeaderCatchingUp` guard covers a layer state behind its log. Unwrapping
/// runs in a task spawned on the engine's `AsyncRuntime`.
///
/// ```text
/// let log = PrefetchingLogStore::new(my_log_store, state.clone(), kek_provider.clone());
/// let raft = Raft::new(id, config, network, log, envelope_state_machine).await?;
/// ```
pub struct PrefetchingLogStore<LS> {
    inner: LS,
    state: Arc<LayerState>,
    provider: Arc<dyn KeyProvider>,
}

impl<LS> PrefetchingLogStore<LS> {
    /// Decorates `inner`; keys are unwrapped into `state` (the node's layer state) with
    /// `provider`.
    pub fn new(inner: LS, state: Arc<LayerState>, provider: Arc<dyn KeyProvider>) -> Self {
        Self { inner, state, provider }
    }

    /// The decorated store.
    pub fn get_ref(&self) -> &LS {
        &self.inner
    }
}

/// For each appended entry: a layer control entry is noted in the layer state before it is stored
/// (until this node applied it, it appends no proposal), and the key it installs is unwrapped in
/// the background.
fn on_append<C>(state: &Arc<LayerState>, provider: &Arc<dyn KeyProvider>, entry: &Entry<Sealed<C>>)
where
    C: RaftTypeConfig<Entry = Entry<C>>,
{
    let EntryPayload::Normal(payload) = &entry.payload else { return };
    let Repr::Control(bytes) = &payload.0 else { return };
    let index = entry.log_id.index;
    state.local().note_control_appended(index);
    let (state, provider, bytes) = (state.clone(), provider.clone(), bytes.clone());
    // On the engine's runtime: the append does not wait for the key provider (a slow KMS).
    drop(C::spawn(async move {
        // A failure is not final here: the apply tries again before it halts.
        if let Err(e) = state.prefetch(&bytes, provider.as_ref()).await {
            tracing::warn!(index, "could not unwrap the key of an appended layer control entry: {e}");
        }
    }));
}

impl<LS: Clone> Clone for PrefetchingLogStore<LS> {
    fn clone(&self) -> Self {
        Self { inner: self.inner.clone(), state: self.state.clone(), provider: self.provider.clone() }
    }
}

impl<LS: fmt::Debug> fmt::Debug for PrefetchingLogStore<LS> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PrefetchingLogStore").field("inner", &self.inner).finish_non_exhaustive()
    }
}

impl<C, LS> RaftLogReader<Sealed<C>> for PrefetchingLogStore<LS>
where
    C: RaftTypeConfig<Entry = Entry<C>>,
    LS: RaftLogReader<Sealed<C>>,
{
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry<Sealed<C>>>, StorageError<C::NodeId>> {
        self.inner.try_get_log_entries(range).await
    }
}

impl<C, LS> RaftLogStorage<Sealed<C>> for PrefetchingLogStore<LS>
where
    C: RaftTypeConfig<Entry = Entry<C>>,
    LS: RaftLogStorage<Sealed<C>>,
{
    type LogReader = LS::LogReader;

    async fn get_log_state(&mut self) -> Result<LogState<Sealed<C>>, StorageError<C::NodeId>> {
        let state = self.inner.get_log_state().await?;
        // Read when the node starts: the stored log was not scanned, so any entry up to its last
        // index may be a layer control entry this node has not applied.
        if let Some(last) = &state.last_log_id {
            self.state.local().note_control_appended(last.index);
        }
        Ok(state)
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.inner.get_log_reader().await
    }

    async fn save_vote(&mut self, vote: &Vote<C::NodeId>) -> Result<(), StorageError<C::NodeId>> {
        self.inner.save_vote(vote).await
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<C::NodeId>>, StorageError<C::NodeId>> {
        self.inner.read_vote().await
    }

    async fn save_committed(
        &mut self,
        committed: Option<LogId<C::NodeId>>,
    ) -> Result<(), StorageError<C::NodeId>> {
        self.inner.save_committed(committed).await
    }

    async fn read_committed(&mut self) -> Result<Option<LogId<C::NodeId>>, StorageError<C::NodeId>> {
        self.inner.read_committed().await
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<Sealed<C>>,
    ) -> Result<(), StorageError<C::NodeId>>
    where
        I: IntoIterator<Item = Entry<Sealed<C>>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        // Looked at as the decorated store takes them: no copy of the batch.
        let (state, provider) = (self.state.clone(), self.provider.clone());
        let entries = entries.into_iter().inspect(move |entry| on_append(&state, &provider, entry));
        self.inner.append(entries, callback).await
    }

    async fn truncate(&mut self, log_id: LogId<C::NodeId>) -> Result<(), StorageError<C::NodeId>> {
        self.inner.truncate(log_id.clone()).await?;
        // Entries from `log_id` on are gone, with any control entry among them.
        self.state.local().note_log_truncated(log_id.index.saturating_sub(1));
        Ok(())
    }

    async fn purge(&mut self, log_id: LogId<C::NodeId>) -> Result<(), StorageError<C::NodeId>> {
        self.inner.purge(log_id).await
    }
}
