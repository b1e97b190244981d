//! A raft-rs node driver with the envelope layer on both sides, failing closed the raft-rs way.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use raft::eraftpb::{Message, MessageType, Snapshot};
use raft::{Config, RawNode, ReadState, SnapshotStatus, StateRole};
use raft_envelope_core::{
    error::{AppendRefusal, ControlError},
    lifecycle::{CheckpointPolicy, EncryptionStatus, RetainedSnapshot, Retention},
    provider::KeyProvider,
    wire::{is_layer_snapshot, ControlCommand, EnvelopeHeader, SnapshotHeader},
    Algorithm, ApplyGate, EntryKind, EnvelopeLayer, FatalApplyError, KeyId, LayerState, ProposalId,
};
use raft_proto::ConfChangeI;

use slog::Logger;

use crate::applier::{AppliedEntry, EnvelopeApplier};
use crate::error::{NodeError, ProposeError, StepError, StopKind, StopReason};
use crate::framing::{classify, is_layer_control, ContextMarker};
use crate::proposer::{append, EnvelopeProposer, PreparedProposal, Ticket};
use crate::state_machine::{LogStore, StateMachine};
use crate::tracker::{Completion, ProposalTracker};

/// Default number of ticks after which a proposal without an outcome is reported
/// [`ProposeError::TimedOut`].
pub const DEFAULT_PROPOSAL_TIMEOUT_TICKS: u64 = 100;

/// One raft-rs node with the envelope layer installed: an [`EnvelopeProposer`] in front of
/// `propose`, an [`EnvelopeApplier`] in front of the state machine, a [`ProposalTracker`] for
/// responses, and the Ready loop that persists into a [`LogStore`].
///
/// Fail closed, the raft-rs way (`advance()` would mark every handed-out committed entry
/// applied, so it is never called):
/// - [`on_ready`](Self::on_ready) persists the Ready's entries and hard state, applies its
///   committed entries through the applier, calls `advance_append`, and then
///   `advance_apply_to(last good index)`;
/// - on a halting entry it stops at once: no `advance_*`, no messages sent, every pending
///   proposal fails with [`ProposeError::Halted`], and from then on every driving method returns
///   the halt ([`NodeError::Halted`]);
/// - recovery is a rebuild: [`into_parts`](Self::into_parts), repair the cause, then
///   [`new`](Self::new) with the same storage and state machine. `Config.applied` is set to the
///   state machine's applied index, so raft-rs hands the failing entry out again;
/// - a snapshot from the leader is restored only when authenticated: with a layer state it is
///   a sealed layer snapshot, opened by [`LayerState::install_snapshot`] after its keys were
///   prefetched; with a plain layer and a cutover in force it halts the node the same way
///   (nothing can authenticate it, see [`on_ready`](Self::on_ready)).
///
/// Order: a proposal is prepared (sealed) first, then appended by raft-rs; a committed entry is
/// decided by the gate first, then handed to the state machine.
pub struct EnvelopeNode<S: LogStore, SM: StateMachine> {
    raw: RawNode<S>,
    proposer: EnvelopeProposer,
    applier: EnvelopeApplier<SM>,
    tracker: ProposalTracker<SM::Response>,
    stopped: Option<StopReason>,
    last_messages: Vec<Message>,
    read_states: Vec<ReadState>,
    provider: Option<Arc<dyn KeyProvider>>,
    /// The snapshot raft-rs holds for this node whose keys were prefetched (key lifecycle): the
    /// Ready carrying a snapshot is not taken before that.
    snapshot_prefetched: Option<Snapshot>,
    /// Ticks since the node started: the clock admin requests are bounded by.
    ticks: u64,
    /// Proposals made for admin requests ([`serve_admin`](Self::serve_admin)): their outcomes go
    /// to the admin side, not to [`take_completions`](Self::take_completions).
    pub(crate) admin_ids: std::collections::BTreeSet<raft_envelope_core::ProposalId>,
    pub(crate) admin_done: Vec<Completion<SM::Response>>,
    user_done: Vec<Completion<SM::Response>>,
    /// When this node, leading, proposes integrity checkpoints.
    checkpoints: CheckpointPolicy,
    /// How long one tick is, to read the policy's time in ticks.
    tick_interval: Duration,
    /// The tick this node last proposed a checkpoint at.
    checkpoint_tick: u64,
}

/// The tick interval [`EnvelopeNode`] assumes until told otherwise
/// ([`EnvelopeNode::with_checkpoints`]): raft-rs's examples tick every 100 ms.
pub const DEFAULT_TICK_INTERVAL: Duration = Duration::from_millis(100);

impl<S: LogStore, SM: StateMachine> EnvelopeNode<S, SM> {
    /// Starts (or restarts) a node on `storage`, in front of `sm`, with `layer`.
    /// `config.applied` is overridden with `sm.applied_index()`.
    ///
    /// # Errors
    /// [`NodeError::Raft`] when raft-rs refuses the configuration or storage.
    pub fn new(
        config: &Config,
        storage: S,
        sm: SM,
        layer: Arc<EnvelopeLayer>,
        logger: &Logger,
    ) -> Result<Self, NodeError> {
        let mut config = config.clone();
        config.applied = sm.applied_index();
        let raw = RawNode::new(&config, storage, logger).map_err(NodeError::Raft)?;
        Ok(Self {
            raw,
            proposer: EnvelopeProposer::new(layer.clone()),
            applier: EnvelopeApplier::new(sm, layer),
            tracker: ProposalTracker::new(DEFAULT_PROPOSAL_TIMEOUT_TICKS),
            stopped: None,
            last_messages: Vec::new(),
            read_states: Vec::new(),
            provider: None,
            snapshot_prefetched: None,
            ticks: 0,
            admin_ids: std::collections::BTreeSet::new(),
            admin_done: Vec::new(),
            user_done: Vec::new(),
            checkpoints: CheckpointPolicy::DEFAULT,
            tick_interval: DEFAULT_TICK_INTERVAL,
            checkpoint_tick: 0,
        })
    }

    /// Starts (or restarts) a node whose keys and cutover come from the replicated `state`
    /// (key lifecycle through the log, `DESIGN.md` §10): the layer's gate reads
    /// `state.cutover_source()` and opens with `state.cipher()`, which also seals new proposals
    /// once a key is active (at once if `state` already has one, otherwise from the promote
    /// entry on). `provider` unwraps the keys of install entries ahead of applying them
    /// ([`prefetch_pending`](Self::prefetch_pending)).
    ///
    /// `state` must be persisted with the state machine (same applied index): on a restart pass
    /// the same state back. `config.applied` is overridden with `sm.applied_index()`.
    ///
    /// The driver must call [`prefetch_pending`](Self::prefetch_pending) (async) whenever
    /// [`pending_prefetch`](Self::pending_prefetch) is not empty, before
    /// [`on_ready`](Self::on_ready): a committed layer control entry is held, with everything
    /// after it, until then ([`needs_driving`](Self::needs_driving) says when).
    ///
    /// Sealing starts when this node applies a promote and never stops: after a retire of the
    /// only active key, proposals are refused ([`ProposeError::Refused`]), never sent in the
    /// clear.
    ///
    /// # Errors
    /// [`NodeError::Raft`] when raft-rs refuses the configuration or storage.
    pub fn with_layer_state(
        config: &Config,
        storage: S,
        sm: SM,
        state: Arc<LayerState>,
        provider: Arc<dyn KeyProvider>,
        logger: &Logger,
    ) -> Result<Self, NodeError> {
        let cipher = Arc::new(state.cipher());
        let gate = ApplyGate::new(state.cutover_source()).with_unwrapper(cipher.clone());
        let layer = Arc::new(EnvelopeLayer::new(gate));
        let mut node = Self::new(config, storage, sm, layer, logger)?;
        // After a restart the stored log may hold layer control entries this node has not
        // applied yet: until it applied past its last stored index, assume it does.
        state.local().note_control_appended(node.raw.raft.raft_log.last_index());
        state.local().note_applied_through(node.applier.applied());
        node.applier.set_layer_state(state, cipher);
        node.provider = Some(provider);
        Ok(node)
    }

    /// The replicated layer state, when this node runs the key lifecycle
    /// ([`with_layer_state`](Self::with_layer_state)).
    pub fn layer_state(&self) -> Option<&Arc<LayerState>> {
        self.applier.layer_state()
    }

    /// The key provider this node prefetches install entries with.
    pub fn key_provider(&self) -> Option<&Arc<dyn KeyProvider>> {
        self.provider.as_ref()
    }

    /// The layer state's status on this replica (`None` without a layer state).
    pub fn encryption_status(&self) -> Option<EncryptionStatus> {
        self.layer_state().map(|s| s.status())
    }

    /// The active key when it should be rotated ([`LayerState::rotation_due`]), on the leader
    /// only (admin commands are proposed there); `None` elsewhere and without a layer state. A
    /// driver rotates when this is `Some`: [`propose_install`](Self::propose_install) with the
    /// node's provider, then a promote once the install is applied
    /// ([`Cluster`](crate::testing::Cluster) does it by itself).
    pub fn rotation_due(&self) -> Option<KeyId> {
        if !self.is_leader() || self.check_running().is_err() {
            return None;
        }
        self.layer_state()?.rotation_due()
    }

    /// Takes a snapshot at this node's applied index and compacts its log up to it; returns the
    /// snapshot's index.
    ///
    /// The snapshot's data is [`StateMachine::snapshot_data`], framed with the layer state and
    /// sealed under the active key ([`LayerState::seal_snapshot`]) when this node has a layer
    /// state, as is otherwise (a plain layer refuses while a cutover is in force: no replica
    /// could restore such a snapshot). The storage keeps it ([`LogStore::compact`]): raft-rs sends it to
    /// a peer that needs entries it no longer stores, and [`retention`](Self::retention)
    /// reports it. Call it between [`on_ready`](Self::on_ready) calls (the applied index is then
    /// the state machine's).
    ///
    /// # Errors
    /// [`NodeError::Snapshot`] when the state machine, the layer or the storage cannot take the
    /// snapshot (nothing compacted, the node goes on); the halt.
    pub fn compact(&mut self) -> Result<u64, NodeError> {
        self.check_running()?;
        let index = self.applier.applied();
        let store = self.raw.store().clone();
        let fail = |reason: String| NodeError::Snapshot { index, reason };
        let retained = store.retained_snapshot().map_or(0, |s| s.get_metadata().index);
        if index == 0 || index <= retained {
            return Ok(retained);
        }
        let user = self.applier.get_ref().snapshot_data().map_err(fail)?;
        let (data, sealed_under) = match self.layer_state() {
            Some(state) => {
                let sealed = state.seal_snapshot(index, &user).map_err(|e| fail(e.to_string()))?;
                (sealed, state.active_key())
            }
            None if self.refuses_unsealed_snapshots() => {
                // Every replica would refuse (halt on) this snapshot: take none.
                return Err(fail("a plain layer cannot seal snapshots while a cutover is in force".into()));
            }
            None => (user, None),
        };
        let term = store.term(index).map_err(|e| fail(e.to_string()))?;
        let conf_state = store.initial_state().map_err(|e| fail(e.to_string()))?.conf_state;
        let mut snapshot = Snapshot::default();
        let meta = snapshot.mut_metadata();
        meta.index = index;
        meta.term = term;
        meta.set_conf_state(conf_state);
        snapshot.data = data.into();
        store.compact(snapshot).map_err(|e| fail(e.to_string()))?;
        if let Some(state) = self.layer_state() {
            state.local().record_retained_snapshot(RetainedSnapshot::new(index, sealed_under));
        }
        tracing::info!(index, key_id = sealed_under.map(|k| k.0), "snapshot taken, log compacted");
        Ok(index)
    }

    /// What this replica still stores that may hold entries sealed under a key, for
    /// [`LayerState::check_destroy`]: the first index of its log (everything below was
    /// compacted), the snapshot its storage retains with the key it is sealed under (read from
    /// the snapshot's header, without keys), and the key it seals under.
    ///
    /// # Errors
    /// [`NodeError::Raft`] when the storage cannot say; [`NodeError::Snapshot`] when the retained
    /// snapshot's header cannot be read (nothing can then be said about the key it is sealed
    /// under).
    pub fn retention(&self) -> Result<Retention<u64>, NodeError> {
        let store = self.raw.store();
        let first = store.first_index().map_err(NodeError::Raft)?;
        let snapshot = match store.retained_snapshot() {
            None => None,
            Some(s) => {
                let index = s.get_metadata().index;
                let sealed_under = if is_layer_snapshot(s.get_data()) {
                    SnapshotHeader::read(s.get_data())
                        .map_err(|e| NodeError::Snapshot { index, reason: e.to_string() })?
                        .sealed_under
                } else {
                    None
                };
                Some(RetainedSnapshot::new(index, sealed_under))
            }
        };
        // raft-rs seals and appends in one `&mut` call: nothing is ever in flight in between.
        let active = self.layer_state().and_then(|s| s.active_key());
        Ok(Retention::new(self.id(), first, snapshot).with_sealing(active, Vec::new()))
    }

    /// The committed layer control entries this node holds until they are prefetched
    /// (`(index, data)`, log order). A driver that prefetches itself calls
    /// [`LayerState::prefetch`] for each, in order, then [`mark_prefetched`](Self::mark_prefetched);
    /// [`prefetch_pending`](Self::prefetch_pending) does both with the node's provider.
    pub fn pending_prefetch(&self) -> Vec<(u64, Vec<u8>)> {
        self.applier.pending_prefetch()
    }

    /// Lets the held layer control entries up to `index` be applied (on the next
    /// [`on_ready`](Self::on_ready)).
    pub fn mark_prefetched(&mut self, index: u64) {
        self.applier.mark_prefetched(index);
    }

    /// True when this node has held entries it can apply now, or layer control entries waiting
    /// for [`prefetch_pending`](Self::prefetch_pending): drive it even without a raft-rs Ready.
    pub fn needs_driving(&self) -> bool {
        self.check_running().is_ok() && (self.applier.can_resume() || self.needs_prefetch())
    }

    /// True when [`prefetch_pending`](Self::prefetch_pending) has work: held layer control
    /// entries, or a snapshot from the leader whose keys were not prefetched yet
    /// ([`pending_snapshot`](Self::pending_snapshot)).
    pub fn needs_prefetch(&self) -> bool {
        !self.applier.pending_prefetch().is_empty() || self.pending_snapshot().is_some()
    }

    /// The index of the snapshot raft-rs received for this node (key lifecycle) that waits for
    /// [`prefetch_pending`](Self::prefetch_pending): until then the Ready carrying it is not
    /// taken, so nothing of it is restored or persisted.
    pub fn pending_snapshot(&self) -> Option<u64> {
        self.layer_state()?;
        let snapshot = self.raw.raft.raft_log.unstable.snapshot.as_ref()?;
        (self.snapshot_prefetched.as_ref() != Some(snapshot)).then(|| snapshot.get_metadata().index)
    }

    /// Prefetches, with the node's [`KeyProvider`], the keys of the held layer control entries,
    /// in log order, outside the apply path (raft-rs applies synchronously, so the provider is
    /// called here, never in [`on_ready`](Self::on_ready)). Run it in the driver before
    /// `on_ready` (for example with a current-thread runtime's `block_on`).
    ///
    /// An entry whose prefetch succeeds may be applied. When it fails and every entry before it
    /// has been applied (so the failure cannot be cured by applying more), the entry is released
    /// anyway: applying it halts the replica there (`key_unavailable` for a key this replica
    /// cannot unwrap; fail closed), and a restart with a provider that holds the KEK resumes
    /// from it. Otherwise (a sealed entry under a key an earlier, not yet applied entry
    /// installs) it is retried on the next call. Returns the failure that released an entry, if
    /// any.
    ///
    /// A snapshot from the leader ([`pending_snapshot`](Self::pending_snapshot)) has the keys of
    /// its layer section unwrapped ([`LayerState::prefetch_sealed_snapshot`]) and is then
    /// released whatever the outcome: if a key is still missing, installing it halts the node at
    /// the snapshot's index (`key_unavailable`) with nothing restored or persisted, and a restart
    /// with a provider that holds the KEK resumes there.
    pub async fn prefetch_pending(&mut self) -> Option<(u64, ControlError)> {
        let state = self.layer_state()?.clone();
        let mut failure = None;
        if self.pending_snapshot().is_some() {
            if let Some(snapshot) = self.raw.raft.raft_log.unstable.snapshot.clone() {
                let index = snapshot.get_metadata().index;
                let result = match &self.provider {
                    Some(p) => state.prefetch_sealed_snapshot(snapshot.get_data(), p.as_ref()).await,
                    None => Ok(()),
                };
                if let Err(e) = result {
                    tracing::warn!(index, key_id = e.key_id().map(|k| k.0), "snapshot prefetch failed: {e}");
                    failure = Some((index, e));
                }
                self.snapshot_prefetched = Some(snapshot);
            }
        }
        if failure.is_some() {
            return failure;
        }
        for (index, data) in self.applier.pending_prefetch() {
            let result = match &self.provider {
                Some(p) => state.prefetch(&data, p.as_ref()).await.map(|_| ()),
                None => Ok(()),
            };
            match result {
                Ok(()) => self.applier.mark_prefetched(index),
                Err(e) if index == self.applier.applied().saturating_add(1) => {
                    tracing::warn!(index, key_id = e.key_id().map(|k| k.0), "prefetch failed: {e}");
                    self.applier.mark_prefetched(index);
                    return Some((index, e));
                }
                Err(_) => return None,
            }
        }
        None
    }

    /// Proposes a layer control entry for `command` (admin, on the leader only), sealed under the
    /// active key when there is one ([`LayerState::encode_entry`]), and tracks it; matched by
    /// `(index, term)` like a barrier. Propose admin commands one at a time, each after the
    /// previous one applied on the leader.
    ///
    /// # Errors
    /// [`ProposeError::NotLeader`], [`ProposeError::NoLayerState`], [`ProposeError::Control`]
    /// when the command could not apply on this node's applied state
    /// ([`LayerState::check_command`]: it would halt every replica), [`ProposeError::Refused`]
    /// when the entry cannot be sealed (a cutover with no active key), raft-rs errors, the halt.
    pub fn propose_control(&mut self, command: &ControlCommand) -> Result<Ticket, ProposeError> {
        let state = self.layer_state().ok_or(ProposeError::NoLayerState)?.clone();
        // An entry that cannot apply would halt every replica: refuse it here instead.
        state.check_command(command).map_err(ProposeError::Control)?;
        let id = state.next_control_id();
        let data = state.encode_entry(id, command).map_err(ProposeError::Refused)?;
        let ticket = self.propose_control_entry(id, data)?;
        tracing::info!(
            command = command.name(),
            key_id = command.key_id().map(|k| k.0),
            "layer control entry proposed"
        );
        Ok(ticket)
    }

    /// Proposes an encoded layer control entry `entry` with proposal id `id` (made by the
    /// core's `Lifecycle`, or by [`LayerState::encode_entry`]) and tracks it; matched by
    /// `(index, term)`. Admin, on the leader only.
    ///
    /// # Errors
    /// [`ProposeError::NotLeader`], [`ProposeError::NoLayerState`], raft-rs errors, the halt.
    pub fn propose_control_entry(&mut self, id: ProposalId, entry: Vec<u8>) -> Result<Ticket, ProposeError> {
        self.propose_check()?;
        let state = self.layer_state().ok_or(ProposeError::NoLayerState)?.clone();
        if self.raw.raft.state != StateRole::Leader {
            return Err(ProposeError::NotLeader { leader: self.raw.raft.leader_id });
        }
        let context = ContextMarker::layer_control(id).encode();
        let ticket = append(&mut self.raw, id, EntryKind::Control, context, entry)?;
        state.local().note_control_appended(self.raw.raft.raft_log.last_index());
        self.tracker.track(&ticket);
        Ok(ticket)
    }

    /// Creates a new data key (id [`LayerState::next_key_id`] over this node's applied state),
    /// wraps it under `provider`'s KEK and proposes its install entry (admin, on the leader).
    /// Returns the key id and the ticket.
    ///
    /// # Errors
    /// [`ProposeError::Control`] when the key cannot be created or wrapped; see
    /// [`propose_control`](Self::propose_control).
    pub async fn propose_install(
        &mut self,
        provider: &dyn KeyProvider,
        algorithm: Algorithm,
    ) -> Result<(KeyId, Ticket), ProposeError> {
        self.propose_check()?;
        let state = self.layer_state().ok_or(ProposeError::NoLayerState)?.clone();
        if self.raw.raft.state != StateRole::Leader {
            return Err(ProposeError::NotLeader { leader: self.raw.raft.leader_id });
        }
        let key_id = state.next_key_id();
        let command =
            state.generate_install(key_id, algorithm, provider).await.map_err(ProposeError::Control)?;
        Ok((key_id, self.propose_control(&command)?))
    }

    /// The core's append rule ([`LayerState::check_append`]) for a proposal sealed under
    /// `sealed_under` (`None`: cleartext, or sealed by this node right now under its active key),
    /// or `None` when it may be appended (always, without a layer state). Until this node applied
    /// every layer control entry in its log (say a promote) it appends no proposal: a cleartext
    /// one could end up above an enforce entry, and a sealed one under a key the entry replaces
    /// (see [`Cluster::enable_encryption`](crate::testing::Cluster::enable_encryption) and
    /// [`Cluster::destroy_key`](crate::testing::Cluster::destroy_key)). The layer state learns of
    /// control entries when they are proposed here or stored; those received but not stored yet
    /// are in raft-rs's unstable log, read here.
    fn append_refusal(&self, sealed_under: Option<KeyId>) -> Option<AppendRefusal> {
        let state = self.layer_state()?;
        let applied = self.applier.applied();
        let unstable = self.raw.raft.raft_log.unstable_entries();
        if unstable.iter().any(|e| e.index > applied && is_layer_control(e)) {
            return Some(AppendRefusal::ControlPending);
        }
        state.check_append(sealed_under).err()
    }

    /// Sets when this node, while it leads a cluster with a cutover in force, proposes an
    /// integrity checkpoint (`policy`, default [`CheckpointPolicy::DEFAULT`]), and how long one of
    /// its ticks is (`tick_interval`, to read the policy's time; default
    /// [`DEFAULT_TICK_INTERVAL`]). Checked on every [`tick`](Self::tick) and after every [`on_ready`](Self::on_ready) that applied entries. Every replica compares
    /// the leader's digest at the checkpoint's index and halts (`diverged`) if its own differs.
    pub fn with_checkpoints(mut self, policy: CheckpointPolicy, tick_interval: Duration) -> Self {
        self.checkpoints = policy;
        self.tick_interval = tick_interval;
        self
    }

    /// Proposes an integrity checkpoint of everything this node applied so far (admin, on the
    /// leader), whatever the policy, and tracks it like a layer control entry.
    ///
    /// # Errors
    /// [`ProposeError::NoLayerState`]; [`ProposeError::Control`] when this node does not know its
    /// digest chain; see [`propose_control`](Self::propose_control).
    pub fn propose_checkpoint(&mut self) -> Result<Ticket, ProposeError> {
        let state = self.layer_state().ok_or(ProposeError::NoLayerState)?.clone();
        let command = state.checkpoint_now().ok_or(ProposeError::NoChain)?;
        let ticket = self.propose_control(&command)?;
        if let ControlCommand::Checkpoint { through, .. } = command {
            state.local().note_checkpoint_proposed(through);
        }
        self.checkpoint_tick = self.ticks;
        Ok(ticket)
    }

    /// Proposes a checkpoint when the policy says one is due (on the leader). Not tracked: its
    /// outcome is the cluster's, not a caller's.
    fn maybe_checkpoint(&mut self) {
        if self.raw.raft.state != StateRole::Leader {
            return;
        }
        let Some(state) = self.layer_state().cloned() else { return };
        let ticks = u32::try_from(self.ticks - self.checkpoint_tick).unwrap_or(u32::MAX);
        let elapsed = self.tick_interval.saturating_mul(ticks);
        let Some(command) = state.checkpoint_due(&self.checkpoints, elapsed) else { return };
        // Deferred while a control entry is not applied yet (it may rotate the key this would
        // be sealed under).
        if self.append_refusal(None).is_some() {
            return;
        }
        let id = state.next_control_id();
        let Ok(entry) = state.encode_entry(id, &command) else { return };
        let context = ContextMarker::layer_control(id).encode();
        match append(&mut self.raw, id, EntryKind::Control, context, entry) {
            Ok(ticket) => {
                state.local().note_control_appended(self.raw.raft.raft_log.last_index());
                if let ControlCommand::Checkpoint { through, .. } = command {
                    state.local().note_checkpoint_proposed(through);
                    tracing::debug!(through, at = ?ticket.appended_at, "integrity checkpoint proposed");
                }
                self.checkpoint_tick = self.ticks;
            }
            Err(e) => tracing::debug!("integrity checkpoint not proposed, retried on a later tick: {e}"),
        }
    }

    /// Sets after how many ticks a proposal without an outcome times out.
    pub fn with_proposal_timeout(mut self, ticks: u64) -> Self {
        self.tracker = ProposalTracker::new(ticks.max(1));
        self
    }

    fn check_running(&self) -> Result<(), NodeError> {
        if let Some(halt) = self.applier.halted() {
            return Err(NodeError::Halted(halt.clone()));
        }
        match &self.stopped {
            Some(why) => Err(NodeError::Stopped(why.clone())),
            None => Ok(()),
        }
    }

    fn propose_check(&self) -> Result<(), ProposeError> {
        match self.check_running() {
            Ok(()) => Ok(()),
            Err(NodeError::Halted(h)) => Err(ProposeError::halted(&h)),
            Err(NodeError::Stopped(why)) => Err(ProposeError::Stopped(why)),
            Err(e) => Err(ProposeError::Stopped(StopReason::new(
                StopKind::Raft,
                self.applier.applied(),
                e.to_string(),
            ))),
        }
    }

    /// Proposes `payload` (sealed when the layer seals) and tracks it; the outcome arrives in
    /// [`take_completions`](Self::take_completions) under the ticket's id.
    ///
    /// # Errors
    /// See [`EnvelopeProposer::propose_with_context`]; [`ProposeError::Halted`] once halted.
    pub fn propose(&mut self, payload: Vec<u8>) -> Result<Ticket, ProposeError> {
        self.propose_with_context(Vec::new(), payload)
    }

    /// Proposes `payload` with a user `context` (refused while the layer seals).
    ///
    /// # Errors
    /// See [`EnvelopeProposer::propose_with_context`]; [`ProposeError::Halted`] once halted.
    pub fn propose_with_context(
        &mut self,
        context: Vec<u8>,
        payload: Vec<u8>,
    ) -> Result<Ticket, ProposeError> {
        self.propose_check()?;
        if self.append_refusal(None).is_some() {
            return Err(ProposeError::ControlPending);
        }
        let ticket = self.proposer.propose_with_context(&mut self.raw, context, payload)?;
        self.tracker.track(&ticket);
        Ok(ticket)
    }

    /// Seals (when the layer seals) and frames `payload` without proposing it:
    /// [`submit`](Self::submit) it, and submit the same value again to retry. A retry of a
    /// proposal that was applied is not applied again: its completion is
    /// [`ProposeError::Duplicate`], naming the index where it was.
    ///
    /// # Errors
    /// See [`EnvelopeProposer::prepare`]; [`ProposeError::Halted`] once halted.
    pub fn prepare(&mut self, payload: Vec<u8>) -> Result<PreparedProposal, ProposeError> {
        self.propose_check()?;
        self.proposer.prepare(Vec::new(), payload)
    }

    /// Proposes a prepared proposal (again, to retry) and tracks it under its id.
    ///
    /// # Errors
    /// [`ProposeError::KeyRotated`] when it was sealed under a key that is no longer active
    /// (prepare it again); [`ProposeError::ControlPending`]; see [`EnvelopeProposer::submit`];
    /// [`ProposeError::Halted`] once halted.
    pub fn submit(&mut self, prepared: &PreparedProposal) -> Result<Ticket, ProposeError> {
        self.propose_check()?;
        match self.append_refusal(prepared.key_id()) {
            None => {}
            Some(AppendRefusal::NotActiveKey { key_id }) => return Err(ProposeError::KeyRotated { key_id }),
            Some(_) => return Err(ProposeError::ControlPending),
        }
        let ticket = self.proposer.submit(&mut self.raw, prepared)?;
        self.tracker.track(&ticket);
        Ok(ticket)
    }

    /// Proposes a switch-on barrier (a control entry) and tracks it.
    ///
    /// # Errors
    /// raft-rs errors; [`ProposeError::Halted`] once halted.
    pub fn propose_barrier(&mut self) -> Result<Ticket, ProposeError> {
        self.propose_check()?;
        let ticket = self.proposer.propose_barrier(&mut self.raw)?;
        self.tracker.track(&ticket);
        Ok(ticket)
    }

    /// Proposes a conf change, untouched by the layer.
    ///
    /// # Errors
    /// raft-rs errors; [`ProposeError::Halted`] once halted.
    pub fn propose_conf_change(
        &mut self,
        context: Vec<u8>,
        change: impl ConfChangeI,
    ) -> Result<(), ProposeError> {
        self.propose_check()?;
        self.proposer.propose_conf_change(&mut self.raw, context, change)
    }

    /// Steps a message from a peer into raft-rs.
    ///
    /// A forwarded proposal (`MsgPropose`) carrying a cleartext payload is refused
    /// ([`StepError::CleartextProposalRefused`]):
    /// - while this node's layer seals: together with the barrier this guarantees that no
    ///   cleartext proposal is appended above the cutover (see
    ///   [`Cluster::switch_on`](crate::testing::Cluster::switch_on));
    /// - while it does not seal but a cutover `C` is in force (not `None`, not `u64::MAX`) and
    ///   this node's last log index is already `>= C` (for a message with several entries: a
    ///   cleartext entry would come after index `C`): the entry could only land above `C` and
    ///   would halt every replica (the same guard as [`ProposeError::NotSealing`] on the
    ///   proposer).
    ///
    /// # Errors
    /// [`StepError`]; the message is dropped.
    pub fn step(&mut self, message: Message) -> Result<(), StepError> {
        if let Some(h) = self.applier.halted() {
            return Err(StepError::Halted { index: h.index, reason: h.reason });
        }
        if let Some(why) = &self.stopped {
            return Err(StepError::Stopped(why.clone()));
        }
        if message.get_msg_type() == MessageType::MsgPropose
            && message.get_entries().iter().any(is_layer_control)
        {
            tracing::warn!(
                from = message.from,
                "refused a forwarded layer control entry: admin commands are proposed on the leader"
            );
            return Err(StepError::ControlProposalRefused { from: message.from });
        }
        if message.get_msg_type() == MessageType::MsgPropose
            && message.get_entries().iter().any(|e| classify(e) == EntryKind::Cleartext)
        {
            let layer = self.proposer.layer();
            let sealing = layer.is_sealing() || self.append_refusal(None).is_some();
            // The k-th entry of the message (0-based) would be appended after last + k.
            let last = self.raw.raft.raft_log.last_index();
            let above = message.get_entries().iter().enumerate().find_map(|(k, e)| {
                let before = last.saturating_add(k as u64);
                (classify(e) == EntryKind::Cleartext)
                    .then(|| layer.cleartext_would_land_above_cutover(before))
                    .flatten()
            });
            if sealing || above.is_some() {
                tracing::warn!(
                    from = message.from,
                    sealing,
                    cutover = above,
                    "refused a forwarded cleartext proposal: this node seals or its log reached the cutover"
                );
                return Err(StepError::CleartextProposalRefused { from: message.from });
            }
        }
        if message.get_msg_type() == MessageType::MsgPropose {
            self.check_forwarded_keys(&message)?;
        }
        self.raw.step(message).map_err(StepError::Raft)
    }

    /// Key lifecycle: a forwarded proposal is appended only while this node's log holds no
    /// unapplied layer control entry, and only if every envelope in it is sealed under this
    /// node's active key. Together with sealing own proposals under the active key, every entry
    /// a leader appends after applying a promote of `k` is sealed under `k` or a later key, so
    /// once the leader applied its whole log the count of entries sealed under an older key is
    /// final (destroy with proof).
    fn check_forwarded_keys(&self, message: &Message) -> Result<(), StepError> {
        if self.layer_state().is_none() || message.get_entries().is_empty() {
            return Ok(());
        }
        let from = message.from;
        if self.append_refusal(None).is_some() {
            tracing::debug!(from, "refused a forwarded proposal: a layer control entry is not applied yet");
            return Err(StepError::ControlPending { from });
        }
        for e in message.get_entries().iter().filter(|e| classify(e) == EntryKind::Envelope) {
            let key_id = EnvelopeHeader::parse(e.get_data()).ok().map(|h| h.key_id);
            let refused = match key_id {
                None => true,
                Some(k) => self.append_refusal(Some(k)).is_some(),
            };
            if refused {
                tracing::warn!(
                    from,
                    key_id = key_id.map(|k| k.0),
                    "refused a forwarded envelope not sealed under the active key"
                );
                return Err(StepError::NotActiveKey { from, key_id });
            }
        }
        Ok(())
    }

    /// Advances the logical clock by one tick (elections, heartbeats, proposal timeouts).
    /// Does nothing once halted or stopped.
    pub fn tick(&mut self) -> bool {
        if self.check_running().is_err() {
            return false;
        }
        self.ticks += 1;
        self.tracker.on_tick();
        self.maybe_checkpoint();
        self.raw.tick()
    }

    /// Ticks since this node started.
    pub fn ticks(&self) -> u64 {
        self.ticks
    }

    /// Starts an election on this node.
    ///
    /// # Errors
    /// raft-rs errors, or the halt.
    pub fn campaign(&mut self) -> Result<(), NodeError> {
        self.check_running()?;
        self.raw.campaign().map_err(NodeError::Raft)
    }

    /// Asks this node (the leader) to hand leadership to `to`.
    ///
    /// # Errors
    /// The halt.
    pub fn transfer_leader(&mut self, to: u64) -> Result<(), NodeError> {
        self.check_running()?;
        self.raw.transfer_leader(to);
        Ok(())
    }

    /// Requests a linearizable read (`RawNode::read_index`); the result arrives in
    /// [`take_read_states`](Self::take_read_states).
    ///
    /// # Errors
    /// The halt.
    pub fn read_index(&mut self, context: Vec<u8>) -> Result<(), NodeError> {
        self.check_running()?;
        self.raw.read_index(context);
        Ok(())
    }

    /// The read states (`ReadIndex` results) reached since the last call.
    pub fn take_read_states(&mut self) -> Vec<ReadState> {
        std::mem::take(&mut self.read_states)
    }

    /// Tells raft-rs that `id` could not be reached (`RawNode::report_unreachable`).
    pub fn report_unreachable(&mut self, id: u64) {
        if self.check_running().is_ok() {
            self.raw.report_unreachable(id);
        }
    }

    /// Tells raft-rs how sending a snapshot to `id` went (`RawNode::report_snapshot`).
    pub fn report_snapshot(&mut self, id: u64, status: SnapshotStatus) {
        if self.check_running().is_ok() {
            self.raw.report_snapshot(id, status);
        }
    }

    /// Handles one Ready, if any, and returns the messages to send to peers.
    ///
    /// Order: leader messages; snapshot; persist entries and hard state; persisted messages;
    /// apply the committed entries through the applier; `advance_append`; persist the commit
    /// index; apply the light Ready's committed entries; `advance_apply_to(applied)`.
    ///
    /// Snapshots, with a layer state ([`with_layer_state`](Self::with_layer_state)): a Ready
    /// carrying a snapshot is not taken before [`prefetch_pending`](Self::prefetch_pending)
    /// unwrapped the snapshot's keys ([`pending_snapshot`](Self::pending_snapshot)). Then the
    /// layer opens and authenticates it and restores its own state from it
    /// ([`LayerState::install_snapshot`]), the user's bytes go to
    /// [`StateMachine::restore_snapshot`], the storage keeps the sealed snapshot, and the node
    /// seals from then on if a key is active. If the layer refuses it (tampered, another index or
    /// cluster, in the clear where it must be sealed, a key this replica cannot unwrap), the node
    /// halts at the snapshot's index (`FatalApplyError::from_control`, counted and traced like
    /// every halt) and nothing of it is restored or persisted.
    ///
    /// With a plain layer nothing authenticates a snapshot: while a cutover is in force (not
    /// `None`, not `u64::MAX`) the node halts with reason [`FailureReason::UnsealedSnapshot`](raft_envelope_core::error::FailureReason::UnsealedSnapshot)
    /// instead, nothing restored or persisted. Inert, the snapshot goes to
    /// [`StateMachine::restore_snapshot`] as before.
    ///
    /// # Errors
    /// [`NodeError::Halted`] when an entry or a snapshot halts
    /// the node: nothing is advanced, then or later, and the messages produced before the
    /// failing entry wait in [`take_last_messages`](Self::take_last_messages). [`NodeError::Stopped`] /
    /// [`NodeError::Raft`] for storage, snapshot or conf-change failures.
    pub fn on_ready(&mut self) -> Result<Vec<Message>, NodeError> {
        self.check_running()?;
        let result = self.ready_inner();
        if let Err(e) = &result {
            match e {
                NodeError::Halted(h) => self.tracker.on_halt(h),
                NodeError::Stopped(why) => {
                    self.tracker.fail_all(|| ProposeError::Stopped(why.clone()));
                    self.stopped = Some(why.clone());
                }
                other => {
                    let why = StopReason::new(StopKind::Raft, self.applier.applied(), other.to_string());
                    self.tracker.fail_all(|| ProposeError::Stopped(why.clone()));
                    self.stopped = Some(why);
                }
            }
        }
        result
    }

    fn ready_inner(&mut self) -> Result<Vec<Message>, NodeError> {
        if self.applier.can_resume() {
            // Held entries whose layer control entries have been prefetched meanwhile.
            self.apply(Vec::new())?;
            self.raw.advance_apply_to(self.applier.applied());
            self.tracker.on_log_changed(&self.raw);
        }
        if !self.raw.has_ready() || self.pending_snapshot().is_some() {
            // A snapshot whose keys were not prefetched yet: its Ready waits for the driver.
            return Ok(Vec::new());
        }
        let mut rd = self.raw.ready();
        let mut out = rd.take_messages();
        self.read_states.extend(rd.take_read_states());
        let store = self.raw.store().clone();
        if !rd.snapshot().is_empty() {
            let index = rd.snapshot().get_metadata().index;
            let snapshot = rd.snapshot().clone();
            if self.applier.layer_state().is_some() {
                // Opened, authenticated and restored (layer state, then the user's state), or
                // the node halts at the snapshot's index with nothing restored or persisted.
                if let Err(e) = self.applier.install_snapshot(&snapshot) {
                    self.last_messages = out;
                    return Err(e);
                }
            } else {
                if let Some(halt) = self.refuse_snapshot(index) {
                    self.last_messages = out;
                    return Err(NodeError::Halted(halt));
                }
                self.applier
                    .get_mut()
                    .restore_snapshot(&snapshot)
                    .map_err(|e| NodeError::Stopped(StopReason::new(StopKind::SnapshotRefused, index, e)))?;
            }
            store.apply_snapshot(snapshot).map_err(NodeError::Raft)?;
            self.applier.restored_to(index);
            if let Some(state) = self.applier.layer_state() {
                state.local().note_applied_through(index);
            }
            self.snapshot_prefetched = None;
        }
        if let (Some(state), Some(first)) = (self.applier.layer_state(), rd.entries().first()) {
            // Stored entries from `first` on are replaced (raft-rs overwrites a conflicting
            // tail): control entries noted there are gone, those in the new entries are noted.
            state.local().note_log_truncated(first.index - 1);
            if let Some(e) = rd.entries().iter().rev().find(|e| is_layer_control(e)) {
                state.local().note_control_appended(e.index);
            }
        }
        store.append(rd.entries()).map_err(NodeError::Raft)?;
        if let Some(hs) = rd.hs() {
            store.set_hard_state(hs).map_err(NodeError::Raft)?;
        }
        out.extend(rd.take_persisted_messages());
        let committed = rd.take_committed_entries();
        if let Err(e) = self.apply(committed) {
            self.last_messages = out;
            return Err(e);
        }
        let mut light = self.raw.advance_append(rd);
        if let Some(commit) = light.commit_index() {
            store.set_commit(commit).map_err(NodeError::Raft)?;
        }
        out.extend(light.take_messages());
        let committed = light.take_committed_entries();
        if let Err(e) = self.apply(committed) {
            self.last_messages = out;
            return Err(e);
        }
        self.raw.advance_apply_to(self.applier.applied());
        self.tracker.on_log_changed(&self.raw);
        // The entry rule of the checkpoint policy counts applied entries: checked where they
        // are applied (outside the Ready, so the append goes out with the next one), not only
        // on ticks.
        self.maybe_checkpoint();
        Ok(out)
    }

    /// A node with a plain layer (keys and cutover from its configuration) has nothing to
    /// authenticate a snapshot with: while a cutover is in force (not `None`, not `u64::MAX`),
    /// restoring one would let anyone who can inject a snapshot message install arbitrary state
    /// and move the applied index past entries never opened. Fail closed instead: the node halts
    /// at the snapshot's index, before anything of it is restored or persisted. Inert (no
    /// cutover), snapshots are restored as before. Nodes with a layer state never get here: they
    /// install sealed layer snapshots ([`LayerState::install_snapshot`]).
    /// A plain layer with a cutover in force: snapshots can be neither sealed nor restored.
    fn refuses_unsealed_snapshots(&self) -> bool {
        self.applier.layer().gate().cutover_in_force().is_some()
    }

    fn refuse_snapshot(&mut self, index: u64) -> Option<FatalApplyError> {
        let halt = self.applier.layer().gate().refuse_unsealed_snapshot(index)?;
        self.applier.halt(halt.clone());
        Some(halt)
    }

    /// The messages of the Ready that halted the node, produced before the failing entry was
    /// reached (taken: a second call returns nothing).
    ///
    /// Send them: they carry only replication state persisted before the halt (appends, commit
    /// index, responses), never anything of the failing entry's outcome, and they let the peers
    /// learn the commit index and reach their own decision on the entry, as they would have
    /// had this node halted a moment later.
    pub fn take_last_messages(&mut self) -> Vec<Message> {
        std::mem::take(&mut self.last_messages)
    }

    fn apply(&mut self, entries: Vec<raft::eraftpb::Entry>) -> Result<(), NodeError> {
        if entries.is_empty() && !self.applier.can_resume() {
            return Ok(());
        }
        let store = self.raw.store().clone();
        let mut applied: Vec<AppliedEntry<SM::Response>> = Vec::new();
        let result = self.applier.apply_committed(
            &mut self.raw,
            entries,
            |cs| store.set_conf_state(cs).map_err(|e| e.to_string()),
            &mut applied,
        );
        for entry in applied {
            self.tracker.on_applied(entry);
        }
        if let Some(state) = self.applier.layer_state() {
            state.local().note_applied_through(self.applier.applied());
        }
        result
    }

    /// The outcomes of tracked proposals reached since the last call.
    pub fn take_completions(&mut self) -> Vec<Completion<SM::Response>> {
        self.sort_completions();
        std::mem::take(&mut self.user_done)
    }

    /// Moves the tracker's new outcomes to the admin side or the application's.
    pub(crate) fn sort_completions(&mut self) {
        for c in self.tracker.take_completions() {
            if self.admin_ids.remove(&c.id) {
                self.admin_done.push(c);
            } else {
                self.user_done.push(c);
            }
        }
    }

    /// The error this node halted with, if it halted.
    pub fn halted(&self) -> Option<&FatalApplyError> {
        self.applier.halted()
    }

    /// Why the node stopped outside the envelope layer, if it did.
    pub fn stopped(&self) -> Option<&StopReason> {
        self.stopped.as_ref()
    }

    /// The last index handed to the state machine.
    pub fn applied(&self) -> u64 {
        self.applier.applied()
    }

    /// This node's id.
    pub fn id(&self) -> u64 {
        self.raw.raft.id
    }

    /// True while this node is the leader.
    pub fn is_leader(&self) -> bool {
        self.raw.raft.state == StateRole::Leader
    }

    /// The leader this node knows of (0 when none).
    pub fn leader_id(&self) -> u64 {
        self.raw.raft.leader_id
    }

    /// The current term.
    pub fn term(&self) -> u64 {
        self.raw.raft.term
    }

    /// The last index of this node's log.
    pub fn last_index(&self) -> u64 {
        self.raw.raft.raft_log.last_index()
    }

    /// This node's commit index.
    pub fn commit_index(&self) -> u64 {
        self.raw.raft.raft_log.committed
    }

    /// The raft-rs node, read only (driving it directly would bypass the fail-closed rules).
    pub fn raw_node(&self) -> &RawNode<S> {
        &self.raw
    }

    /// The storage.
    pub fn store(&self) -> &S {
        self.raw.store()
    }

    /// The application's state machine.
    pub fn state_machine(&self) -> &SM {
        self.applier.get_ref()
    }

    /// The layer.
    pub fn layer(&self) -> &Arc<EnvelopeLayer> {
        self.applier.layer()
    }

    /// The raft-rs node, mutable, bypassing the layer: for fault injection in tests only.
    #[cfg(feature = "testing")]
    pub(crate) fn raw_node_mut(&mut self) -> &mut RawNode<S> {
        &mut self.raw
    }

    /// Takes the node apart for a restart: the storage and the state machine (whose applied
    /// index is the last good one).
    pub fn into_parts(self) -> (S, SM) {
        let storage = self.raw.store().clone();
        (storage, self.applier.into_inner())
    }
}

impl<S: LogStore, SM: StateMachine> fmt::Debug for EnvelopeNode<S, SM> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EnvelopeNode")
            .field("id", &self.raw.raft.id)
            .field("term", &self.raw.raft.term)
            .field("leader", &self.is_leader())
            .field("applied", &self.applier.applied())
            .field("halted", &self.applier.halted())
            .field("stopped", &self.stopped)
            .finish_non_exhaustive()
    }
}
