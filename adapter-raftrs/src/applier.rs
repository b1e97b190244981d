//! The apply side: every committed entry goes through the layer's gate before the state machine.

use std::collections::VecDeque;
use std::fmt;
use std::sync::Arc;

use protobuf::Message as _;
use raft::eraftpb::{ConfChange, ConfChangeV2, ConfState, Entry, EntryType, Snapshot};
use raft::{RawNode, Storage};
use raft_envelope_core::{
    apply::{Admission, ApplyContext, EntryRecord},
    error::FailureReason,
    lifecycle::RetainedSnapshot,
    wire::SnapshotHeader,
    EntryKind, EnvelopeLayer, FatalApplyError, LayerState, PayloadWrapper, ProposalId,
};

use crate::error::{NodeError, StopKind, StopReason};
use crate::framing::{classify, is_barrier, is_layer_control};
use crate::state_machine::StateMachine;

/// One entry the applier handed on, for response routing.
#[derive(Clone, PartialEq, Eq)]
pub struct AppliedEntry<R> {
    /// Its log index.
    pub index: u64,
    /// Its term.
    pub term: u64,
    /// What it was.
    pub kind: EntryKind,
    /// The proposal it carried: the authenticated header id of an opened envelope. `None` for
    /// every other entry: cleartext and control entries (barriers included, whose marker id is
    /// not authenticated) carry no identity that may complete a proposal.
    pub proposal: Option<ProposalId>,
    /// The state machine's response, for payload entries it was handed.
    pub response: Option<R>,
    /// What the layer state decided for it: [`Admission::Apply`], or a duplicate or expired
    /// envelope the state machine was not handed (its proposer gets
    /// [`ProposeError::Duplicate`](crate::ProposeError::Duplicate) /
    /// [`ProposeError::Expired`](crate::ProposeError::Expired)).
    pub admission: Admission,
}

impl<R> fmt::Debug for AppliedEntry<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AppliedEntry")
            .field("index", &self.index)
            .field("term", &self.term)
            .field("kind", &self.kind)
            .field("proposal", &self.proposal)
            .field("admission", &self.admission)
            .finish_non_exhaustive()
    }
}

/// Decorates the application's [`StateMachine`]: each committed entry, in log order, is decided
/// by `layer.gate().decide(index, kind, data)` (the core's decision, never re-implemented here)
/// and only what may be applied is handed on.
///
/// On the first entry that must not be applied the applier halts: it records the
/// [`FatalApplyError`], hands nothing of that entry (or any later one) to the state machine and
/// keeps [`applied`](Self::applied) at the last good index. It stays halted: every later call
/// returns the same error. The driver must then stop driving the `RawNode` and never call
/// `advance_apply*` past [`applied`](Self::applied) (`advance()` would mark the failing entry
/// applied): [`EnvelopeNode`](crate::EnvelopeNode) does exactly that.
///
/// With a [`LayerState`] ([`with_layer_state`](Self::with_layer_state)), layer control entries
/// ([`is_layer_control`]) go to [`LayerState::apply_control`] instead of the gate, the user's
/// state machine only records their index ([`StateMachine::apply_control`], like a barrier), and
/// every other entry that passes the gate goes through [`LayerState::admit`] (exactly-once
/// envelopes, the running digest of integrity checkpoints): a duplicate or expired envelope is
/// recorded like a control entry ([`StateMachine::apply_control`]) and never handed to
/// [`StateMachine::apply_in`]. A layer control
/// entry is applied only once the driver has tried to prefetch it
/// ([`mark_prefetched`](Self::mark_prefetched)): until then the applier holds it and every later
/// committed entry, in order, so a key provider is never called on the apply path.
pub struct EnvelopeApplier<SM> {
    layer: Arc<EnvelopeLayer>,
    sm: SM,
    applied: u64,
    halt: Option<FatalApplyError>,
    lifecycle: Option<Lifecycle>,
    held: VecDeque<Entry>,
    /// Where envelopes are opened: reused from entry to entry, so applying allocates nothing.
    scratch: Vec<u8>,
}

/// The key-lifecycle part of an applier.
struct Lifecycle {
    state: Arc<LayerState>,
    wrapper: Arc<dyn PayloadWrapper>,
    prefetched_through: u64,
}

impl<SM: StateMachine> EnvelopeApplier<SM> {
    /// An applier in front of `sm`, starting after `sm.applied_index()`.
    pub fn new(sm: SM, layer: Arc<EnvelopeLayer>) -> Self {
        let applied = sm.applied_index();
        Self { layer, sm, applied, halt: None, lifecycle: None, held: VecDeque::new(), scratch: Vec::new() }
    }

    /// Applies layer control entries through `state`; once a key is active the layer seals with
    /// `wrapper` (set on the layer at once if `state` already has an active key). Without a layer
    /// state a layer control entry halts the replica (`invalid_control`): it cannot be applied.
    pub fn with_layer_state(mut self, state: Arc<LayerState>, wrapper: Arc<dyn PayloadWrapper>) -> Self {
        self.set_layer_state(state, wrapper);
        self
    }

    pub(crate) fn set_layer_state(&mut self, state: Arc<LayerState>, wrapper: Arc<dyn PayloadWrapper>) {
        state.sync_sealing(&self.layer, &wrapper);
        self.lifecycle = Some(Lifecycle { state, wrapper, prefetched_through: 0 });
    }

    /// The layer state, when this applier runs the key lifecycle.
    pub fn layer_state(&self) -> Option<&Arc<LayerState>> {
        self.lifecycle.as_ref().map(|l| &l.state)
    }

    /// The committed layer control entries held until the driver tries to prefetch them
    /// (`(index, data)`, in log order): call
    /// [`LayerState::prefetch`] for each, in order, then [`mark_prefetched`](Self::mark_prefetched).
    pub fn pending_prefetch(&self) -> Vec<(u64, Vec<u8>)> {
        let Some(l) = &self.lifecycle else { return Vec::new() };
        self.held
            .iter()
            .filter(|e| e.index > l.prefetched_through && is_layer_control(e))
            .map(|e| (e.index, e.get_data().to_vec()))
            .collect()
    }

    /// Records that prefetching was tried for every layer control entry up to `index`: they may
    /// now be applied (a key still missing then halts the replica at its install entry,
    /// `key_unavailable`).
    pub fn mark_prefetched(&mut self, index: u64) {
        if let Some(l) = &mut self.lifecycle {
            l.prefetched_through = l.prefetched_through.max(index);
        }
    }

    /// True when held entries can be applied now (the first held entry was prefetched).
    pub fn can_resume(&self) -> bool {
        let (Some(l), Some(first)) = (&self.lifecycle, self.held.front()) else { return false };
        self.halt.is_none() && first.index <= l.prefetched_through
    }

    /// The layer.
    pub fn layer(&self) -> &Arc<EnvelopeLayer> {
        &self.layer
    }

    /// The last index handed to the state machine (payload or control): the value for
    /// `advance_apply_to` and, after a restart, for `Config.applied`.
    pub fn applied(&self) -> u64 {
        self.applied
    }

    /// The error this applier halted with, if it halted.
    pub fn halted(&self) -> Option<&FatalApplyError> {
        self.halt.as_ref()
    }

    /// The application's state machine.
    pub fn get_ref(&self) -> &SM {
        &self.sm
    }

    /// The application's state machine, mutable (for snapshot restore; never apply through it).
    pub fn get_mut(&mut self) -> &mut SM {
        &mut self.sm
    }

    /// The application's state machine.
    pub fn into_inner(self) -> SM {
        self.sm
    }

    /// Applies committed `entries` in order. Conf changes are decoded and applied to `node`
    /// (`apply_conf_change`), and the resulting configuration is passed to `persist_conf`.
    /// Every entry handed on is pushed to `out`.
    ///
    /// # Errors
    /// [`NodeError::Halted`] on the first entry that must not be applied (and on every call
    /// after that); [`NodeError::Stopped`] when a conf change cannot be decoded or applied.
    pub fn apply_committed<T: Storage>(
        &mut self,
        node: &mut RawNode<T>,
        entries: Vec<Entry>,
        mut persist_conf: impl FnMut(ConfState) -> Result<(), String>,
        out: &mut Vec<AppliedEntry<SM::Response>>,
    ) -> Result<(), NodeError> {
        if let Some(halt) = &self.halt {
            return Err(NodeError::Halted(halt.clone()));
        }
        let mut queue = std::mem::take(&mut self.held);
        queue.extend(entries);
        while let Some(entry) = queue.pop_front() {
            if entry.index <= self.applied {
                continue;
            }
            if is_layer_control(&entry) {
                let Some(l) = &self.lifecycle else {
                    let cutover = self.layer.gate().cutover();
                    let halt = self.layer.gate().record_halt(FatalApplyError::new(
                        entry.index,
                        FailureReason::InvalidControl,
                        cutover,
                    ));
                    self.halt = Some(halt.clone());
                    return Err(NodeError::Halted(halt));
                };
                if entry.index > l.prefetched_through {
                    // Not prefetched yet: hold it and everything after it, in order.
                    queue.push_front(entry);
                    self.held = queue;
                    return Ok(());
                }
                if let Err(halt) = l.state.apply_control(entry.index, entry.get_data()) {
                    // Counted and traced by the gate, like every other halt.
                    let halt = self.layer.gate().record_halt(halt);
                    self.halt = Some(halt.clone());
                    return Err(NodeError::Halted(halt));
                }
                l.state.sync_sealing(&self.layer, &l.wrapper);
                let (index, term) = (entry.index, entry.term);
                self.sm.apply_control(index, term, None);
                self.applied = index;
                out.push(AppliedEntry {
                    index,
                    term,
                    kind: EntryKind::Control,
                    proposal: None,
                    response: None,
                    admission: Admission::Apply,
                });
                continue;
            }
            if is_barrier(&entry) {
                if let Some(halt) = self.layer.gate().refuse_unsealed_barrier(entry.index) {
                    self.halt = Some(halt.clone());
                    return Err(NodeError::Halted(halt));
                }
            }
            let kind = classify(&entry);
            let (index, term) = (entry.index, entry.term);
            let context = ApplyContext::of(index, kind, entry.get_data());
            // An envelope is opened into the applier's own buffer, reused from entry to entry: no
            // allocation per entry (the entry's bytes are shared with the log store, so they are
            // not decrypted where they are).
            let mut scratch = std::mem::take(&mut self.scratch);
            let payload = match self.layer.gate().decide_into(index, kind, entry.get_data(), &mut scratch) {
                Ok(payload) => payload,
                Err(halt) => {
                    self.halt = Some(halt.clone());
                    return Err(NodeError::Halted(halt));
                }
            };
            let applied = match kind {
                EntryKind::Control => {
                    let conf = match entry.get_entry_type() {
                        EntryType::EntryNormal => None,
                        EntryType::EntryConfChange | EntryType::EntryConfChangeV2 => {
                            let cs = apply_conf_change(node, &entry)?;
                            persist_conf(cs.clone()).map_err(|e| {
                                NodeError::Stopped(StopReason::new(StopKind::ConfChange, entry.index, e))
                            })?;
                            Some(cs)
                        }
                    };
                    if let Some(l) = &self.lifecycle {
                        l.state.admit(index, EntryRecord::Engine(entry.get_data()));
                    }
                    self.sm.apply_control(index, term, conf.as_ref());
                    // A control entry carries no authenticated identity (a barrier's marker id
                    // is unauthenticated): it is only ever matched by (index, term).
                    AppliedEntry {
                        index,
                        term,
                        kind,
                        proposal: None,
                        response: None,
                        admission: Admission::Apply,
                    }
                }
                _ => {
                    let admission = match &self.lifecycle {
                        None => Admission::Apply,
                        Some(l) => l.state.admit(
                            index,
                            match kind {
                                EntryKind::Envelope => EntryRecord::Envelope(entry.get_data()),
                                _ => EntryRecord::Cleartext(entry.get_data()),
                            },
                        ),
                    };
                    let response = match admission {
                        Admission::Apply => Some(self.sm.apply_in(&context, term, payload)),
                        // Not applied again: the state machine only records the index.
                        _ => {
                            self.sm.apply_control(index, term, None);
                            None
                        }
                    };
                    AppliedEntry { index, term, kind, proposal: context.proposal_id, response, admission }
                }
            };
            self.scratch = scratch;
            self.applied = index;
            out.push(applied);
        }
        Ok(())
    }

    /// Halts the applier with `halt` (a failure found outside the entry stream, such as a
    /// refused snapshot): sticky, exactly like a halting entry.
    pub(crate) fn halt(&mut self, halt: FatalApplyError) {
        if self.halt.is_none() {
            self.halt = Some(halt);
        }
    }

    /// Records that a snapshot up to `index` replaced the state: held entries it covers are
    /// dropped (they are in the snapshot).
    pub(crate) fn restored_to(&mut self, index: u64) {
        self.applied = self.applied.max(index);
        self.held.retain(|e| e.index > index);
    }

    /// Installs a snapshot made by [`LayerState::seal_snapshot`] (key lifecycle): opens and
    /// authenticates it, restores the layer state from it
    /// ([`LayerState::install_snapshot`]), hands the user's bytes to
    /// [`StateMachine::restore_snapshot`] (same metadata, `data` = the user's bytes) and seals
    /// from now on if the restored state has an active key. Keys must have been prefetched.
    ///
    /// # Errors
    /// [`NodeError::Halted`] when the layer refuses the snapshot (nothing changed; sticky, counted
    /// and traced like every halt, at the snapshot's index); [`NodeError::Stopped`] when the state
    /// machine refuses the user's bytes.
    pub(crate) fn install_snapshot(&mut self, snapshot: &Snapshot) -> Result<(), NodeError> {
        if let Some(halt) = &self.halt {
            return Err(NodeError::Halted(halt.clone()));
        }
        let Some(l) = &self.lifecycle else {
            return Err(NodeError::Stopped(StopReason::new(
                StopKind::SnapshotWithoutLayerState,
                snapshot.get_metadata().index,
                "build the node with a layer state",
            )));
        };
        let index = snapshot.get_metadata().index;
        let sealed_under = SnapshotHeader::read(snapshot.get_data()).ok().and_then(|h| h.sealed_under);
        let data = match l.state.install_snapshot(index, snapshot.get_data()) {
            Ok(data) => data,
            Err(e) => {
                let halt = FatalApplyError::from_control(index, e, l.state.cutover());
                let halt = self.layer.gate().record_halt(halt);
                self.halt = Some(halt.clone());
                return Err(NodeError::Halted(halt));
            }
        };
        l.state.local().record_retained_snapshot(RetainedSnapshot::new(index, sealed_under));
        l.state.sync_sealing(&self.layer, &l.wrapper);
        let mut user = Snapshot::default();
        user.set_metadata(snapshot.get_metadata().clone());
        user.data = data.into();
        self.sm
            .restore_snapshot(&user)
            .map_err(|e| NodeError::Stopped(StopReason::new(StopKind::SnapshotRefused, index, e)))?;
        Ok(())
    }
}

fn apply_conf_change<T: Storage>(node: &mut RawNode<T>, entry: &Entry) -> Result<ConfState, NodeError> {
    let stopped = |what: &str, e: &dyn fmt::Display| {
        NodeError::Stopped(StopReason::new(StopKind::ConfChange, entry.index, format!("{what}: {e}")))
    };
    if entry.get_entry_type() == EntryType::EntryConfChange {
        let mut cc = ConfChange::default();
        cc.merge_from_bytes(entry.get_data()).map_err(|e| stopped("decode", &e))?;
        node.apply_conf_change(&cc).map_err(|e| stopped("apply", &e))
    } else {
        let mut cc = ConfChangeV2::default();
        cc.merge_from_bytes(entry.get_data()).map_err(|e| stopped("decode", &e))?;
        node.apply_conf_change(&cc).map_err(|e| stopped("apply", &e))
    }
}

impl<SM> fmt::Debug for EnvelopeApplier<SM> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EnvelopeApplier")
            .field("applied", &self.applied)
            .field("halt", &self.halt)
            .field("layer", &self.layer)
            .field("layer_state", &self.lifecycle.as_ref().map(|l| &l.state))
            .field("held", &self.held.len())
            .finish_non_exhaustive()
    }
}
