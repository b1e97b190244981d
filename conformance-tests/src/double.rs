//! A deterministic in-memory test double of a Raft engine, and the reference harness.
//!
//! [`DoubleBuilder`] makes a [`DoubleCluster`]: N replicas sharing one leader-driven log, each with
//! its own stored copy of the log, its own [`EnvelopeLayer`] and its own
//! [`RecordingStateMachine`]. A proposal goes through the leader's
//! [`EnvelopeLayer::prepare`], is appended to every running replica, committed at once (when a
//! majority runs) and applied on every running replica in log order, each committed entry going
//! through [`ApplyGate::decide`](raft_envelope_core::ApplyGate::decide): the core's decision, with
//! no logic re-implemented here. Everything happens on the caller's thread under one lock, so runs
//! are reproducible.
//!
//! A proposal through a follower ([`Cluster::propose_via`]) is prepared by the follower's layer
//! and forwarded to the leader, which refuses forwarded cleartext while it seals (like the raft-rs
//! adapter's `EnvelopeNode::step`); forwarded proposals can be held in flight
//! ([`Cluster::hold_forwarded`]), their proposers waiting until they are released.
//!
//! Index layout (deliberately unlike both real engines): index 1 is a control entry (the initial
//! membership), index 2 the first leader's control entry, index 3 the first payload; every leader
//! change appends another control entry.
//!
//! [`Fault`] turns the double into a deliberately broken adapter, to prove the suite catches
//! it (SPEC R7, `broken_adapter_is_caught`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

use raft_envelope_core::{wire::EnvelopeHeader, EntryKind, EnvelopeLayer, FatalApplyError};

use crate::harness::{
    AppliedPayload, Capabilities, Cluster, ClusterBuilder, HarnessError, NodeId, ProposeError,
    RecordingStateMachine, Response, StoredEntry,
};

/// A deliberate adapter bug, for checking that the suite fails on it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum Fault {
    /// No bug: the correct adapter.
    #[default]
    None,
    /// On a halting decision, skips the entry and keeps applying.
    SkipFailingEntry,
    /// Ignores the decision for envelopes: hands the stored ciphertext to the state machine.
    CiphertextAsPlaintext,
    /// Hands the stored ciphertext to the state machine when an envelope fails to open, and goes on.
    CiphertextOnFailure,
    /// Halts on a failing entry, but counts it as applied first.
    AdvanceAppliedOnFailure,
    /// Halts correctly, but a restart forgets the halt and skips the failing entry.
    ForgetHaltOnRestart,
    /// The literal rule "open iff index > cutover": hands envelopes at or below the cutover to
    /// the state machine sealed (an envelope landing exactly at the cutover is then passed on).
    OpenOnlyAboveCutover,
    /// Tells envelopes from cleartext by sniffing the bytes (does a header parse?) instead of
    /// by the entry's framing.
    SniffsFraming,
}

impl Fault {
    /// Every broken variant (all but [`Fault::None`]).
    pub const BROKEN: [Fault; 7] = [
        Fault::SkipFailingEntry,
        Fault::CiphertextAsPlaintext,
        Fault::CiphertextOnFailure,
        Fault::AdvanceAppliedOnFailure,
        Fault::ForgetHaltOnRestart,
        Fault::OpenOnlyAboveCutover,
        Fault::SniffsFraming,
    ];
}

/// Builds [`DoubleCluster`]s; [`Capabilities::ALL`] except `key_lifecycle`, `snapshots`, `hold_commit`,
/// `checkpoints`, `resubmit` and `apply_context` (the double has no
/// layer control entries: the lifecycle cases skip on it).
///
/// ```
/// use raft_envelope_conformance::double::DoubleBuilder;
/// use raft_envelope_conformance::{cases, Outcome};
///
/// assert_eq!(cases::inert_passthrough(&DoubleBuilder::default()), Outcome::Passed);
/// ```
#[derive(Clone, Copy, Debug, Default)]
pub struct DoubleBuilder {
    fault: Fault,
}

impl DoubleBuilder {
    /// A builder whose clusters have the bug `fault`.
    pub fn with_fault(fault: Fault) -> Self {
        Self { fault }
    }
}

impl ClusterBuilder for DoubleBuilder {
    type Cluster = DoubleCluster;
    type Guard = ();

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            key_lifecycle: false,
            snapshots: false,
            hold_commit: false,
            checkpoints: false,
            resubmit: false,
            apply_context: false,
            ..Capabilities::ALL
        }
    }

    fn wait_timeout(&self) -> Duration {
        Duration::from_millis(50)
    }

    fn build(&self, layers: Vec<Arc<EnvelopeLayer>>) -> Result<(DoubleCluster, ()), HarnessError> {
        let ids: Vec<NodeId> = (1..=layers.len() as u64).collect();
        let membership = StoredEntry {
            kind: EntryKind::Control,
            bytes: ids.iter().map(|id| id.to_string()).collect::<Vec<_>>().join(",").into_bytes(),
        };
        let replicas = ids
            .iter()
            .zip(layers)
            .map(|(id, layer)| Replica {
                id: *id,
                layer,
                log: vec![membership.clone()],
                applied: 0,
                sm: RecordingStateMachine::default(),
                halted: None,
            })
            .collect();
        let mut inner = Inner {
            replicas,
            leader: 0,
            fault: self.fault,
            hold: false,
            held: Vec::new(),
            outcomes: HashMap::new(),
            next_ticket: 0,
        };
        inner
            .append(StoredEntry { kind: EntryKind::Control, bytes: Vec::new() })
            .map_err(HarnessError::Engine)?;
        Ok((DoubleCluster { inner: Mutex::new(inner) }, ()))
    }
}

struct Replica {
    id: NodeId,
    layer: Arc<EnvelopeLayer>,
    /// `log[k]` is the entry at index `k + 1`.
    log: Vec<StoredEntry>,
    applied: u64,
    sm: RecordingStateMachine,
    halted: Option<FatalApplyError>,
}

impl Replica {
    fn running(&self) -> bool {
        self.halted.is_none()
    }

    /// Applies committed entries in order through the gate; returns the response for `want`.
    fn apply_to(&mut self, commit: u64, fault: Fault, want: u64) -> Option<Vec<u8>> {
        let mut response = None;
        while self.running() && self.applied < commit {
            let index = self.applied + 1;
            let Some(entry) = self.log.get(index as usize - 1) else { break };
            let mut kind = entry.kind;
            if fault == Fault::SniffsFraming && kind != EntryKind::Control {
                kind = if EnvelopeHeader::parse(&entry.bytes).is_ok() {
                    EntryKind::Envelope
                } else {
                    EntryKind::Cleartext
                };
            }
            let below_cutover = !matches!(self.layer.gate().cutover(), Some(c) if index > c);
            let sealed_through = match fault {
                Fault::CiphertextAsPlaintext => kind == EntryKind::Envelope,
                Fault::OpenOnlyAboveCutover => kind == EntryKind::Envelope && below_cutover,
                _ => false,
            };
            let handed = if sealed_through {
                Ok(Some(entry.bytes.clone()))
            } else if entry.is_barrier() {
                match (self.layer.gate().refuse_unsealed_barrier(index), fault) {
                    (None, _) | (Some(_), Fault::SkipFailingEntry) => Ok(None),
                    (Some(err), _) => Err(err),
                }
            } else {
                match self.layer.gate().decide(index, kind, &entry.bytes) {
                    Ok(_) if entry.kind == EntryKind::Control => Ok(None),
                    Ok(decision) => Ok(Some(decision.into_owned())),
                    Err(err) => match fault {
                        Fault::SkipFailingEntry => Ok(None),
                        Fault::CiphertextOnFailure if entry.kind == EntryKind::Envelope => {
                            Ok(Some(entry.bytes.clone()))
                        }
                        _ => Err(err),
                    },
                }
            };
            match handed {
                Ok(Some(bytes)) => {
                    let r = self.sm.apply(index, &bytes);
                    if index == want {
                        response = Some(r);
                    }
                    self.applied = index;
                }
                Ok(None) => self.applied = index,
                Err(err) => {
                    if fault == Fault::AdvanceAppliedOnFailure {
                        self.applied = index;
                    }
                    self.halted = Some(err);
                }
            }
        }
        response
    }
}

/// How long a proposer waits for its held forwarded proposal to be released.
const HELD_TIMEOUT: Duration = Duration::from_secs(10);

/// A forwarded proposal held in flight.
struct Held {
    ticket: u64,
    via: usize,
    entry: StoredEntry,
}

struct Inner {
    replicas: Vec<Replica>,
    leader: usize,
    fault: Fault,
    /// Forwarded proposals are held while set.
    hold: bool,
    held: Vec<Held>,
    /// Outcomes of released proposals, by ticket, until their proposer takes them.
    outcomes: HashMap<u64, Result<Response, ProposeError>>,
    next_ticket: u64,
}

impl Inner {
    fn pos(&self, node: NodeId) -> Result<usize, HarnessError> {
        self.replicas.iter().position(|r| r.id == node).ok_or(HarnessError::NoSuchNode(node))
    }

    fn last_index(&self) -> u64 {
        self.replicas[self.leader].log.len() as u64
    }

    /// Appends through the leader, commits when a majority runs, applies everywhere; returns the
    /// index and the leader's response.
    fn append(&mut self, entry: StoredEntry) -> Result<(u64, Option<Vec<u8>>), String> {
        self.append_for(entry, self.leader)
    }

    /// A prepared proposal of replica `via` reaches the leader: refused when it is cleartext and
    /// the leader seals (a follower that prepared it before sealing started), else appended.
    /// Returns `via`'s response.
    fn forward(&mut self, via: usize, entry: StoredEntry) -> Result<Response, ProposeError> {
        if via != self.leader
            && entry.kind == EntryKind::Cleartext
            && self.replicas[self.leader].layer.is_sealing()
        {
            return Err(ProposeError::Engine("the leader refused a forwarded cleartext proposal".into()));
        }
        let (index, data) = self.append_for(entry, via).map_err(ProposeError::Engine)?;
        match data {
            Some(data) => Ok(Response { index, data }),
            None => Err(ProposeError::Engine(format!("entry {index} was not applied on the proposer"))),
        }
    }

    /// [`append`](Self::append), returning the response of the replica at position `respond`.
    fn append_for(&mut self, entry: StoredEntry, respond: usize) -> Result<(u64, Option<Vec<u8>>), String> {
        if !self.replicas[self.leader].running() {
            return Err("the leader halted; change the leader".into());
        }
        let running = self.replicas.iter().filter(|r| r.running()).count();
        if running * 2 <= self.replicas.len() {
            return Err("no quorum: too many replicas halted".into());
        }
        let index = self.last_index() + 1;
        for r in self.replicas.iter_mut().filter(|r| r.running()) {
            r.log.push(entry.clone());
        }
        let fault = self.fault;
        let mut response = None;
        for (k, r) in self.replicas.iter_mut().enumerate() {
            let got = r.apply_to(index, fault, index);
            if k == respond {
                response = got;
            }
        }
        Ok((index, response))
    }
}

/// A cluster made by [`DoubleBuilder`]. Every operation runs synchronously under one lock.
pub struct DoubleCluster {
    inner: Mutex<Inner>,
}

impl std::fmt::Debug for DoubleCluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let inner = self.lock();
        f.debug_struct("DoubleCluster")
            .field("replicas", &inner.replicas.len())
            .field("leader", &inner.replicas[inner.leader].id)
            .field("fault", &inner.fault)
            .finish()
    }
}

impl DoubleCluster {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn with<T>(&self, node: NodeId, f: impl FnOnce(&Replica) -> T) -> Result<T, HarnessError> {
        let inner = self.lock();
        let pos = inner.pos(node)?;
        Ok(f(&inner.replicas[pos]))
    }
}

impl Cluster for DoubleCluster {
    fn nodes(&self) -> Vec<NodeId> {
        self.lock().replicas.iter().map(|r| r.id).collect()
    }

    fn leader(&self) -> Option<NodeId> {
        let inner = self.lock();
        Some(inner.replicas[inner.leader].id)
    }

    fn propose(&self, payload: Vec<u8>) -> Result<Response, ProposeError> {
        let mut inner = self.lock();
        let leader = &inner.replicas[inner.leader];
        if !leader.running() {
            return Err(ProposeError::Engine("the leader halted".into()));
        }
        let proposal = leader.layer.prepare(payload).map_err(ProposeError::Refused)?;
        let (index, data) = inner
            .append(StoredEntry { kind: proposal.kind, bytes: proposal.bytes })
            .map_err(ProposeError::Engine)?;
        match data {
            Some(data) => Ok(Response { index, data }),
            None => Err(ProposeError::Engine(format!("entry {index} was not applied on the leader"))),
        }
    }

    fn last_index(&self) -> Result<u64, HarnessError> {
        Ok(self.lock().last_index())
    }

    fn wait_applied(&self, node: NodeId, index: u64, timeout: Duration) -> Result<(), HarnessError> {
        // Nothing happens in the background: what is not applied now never will be.
        let applied = self.applied_index(node)?;
        if applied >= index {
            Ok(())
        } else {
            Err(HarnessError::Timeout { node, index, applied, timeout })
        }
    }

    fn applied_index(&self, node: NodeId) -> Result<u64, HarnessError> {
        self.with(node, |r| r.applied)
    }

    fn applied_payloads(&self, node: NodeId) -> Result<Vec<AppliedPayload>, HarnessError> {
        self.with(node, |r| r.sm.payloads().to_vec())
    }

    fn halted(&self, node: NodeId) -> Result<Option<FatalApplyError>, HarnessError> {
        self.with(node, |r| r.halted.clone())
    }

    fn read_entry(&self, node: NodeId, index: u64) -> Result<Option<StoredEntry>, HarnessError> {
        self.with(node, |r| index.checked_sub(1).and_then(|k| r.log.get(k as usize)).cloned())
    }

    fn write_entry(&self, node: NodeId, index: u64, entry: StoredEntry) -> Result<(), HarnessError> {
        let mut inner = self.lock();
        let pos = inner.pos(node)?;
        let slot = index
            .checked_sub(1)
            .and_then(|k| inner.replicas[pos].log.get_mut(k as usize))
            .ok_or_else(|| HarnessError::Engine(format!("node {node} stores no entry {index}")))?;
        *slot = entry;
        Ok(())
    }

    fn restart(&self, node: NodeId, layer: Arc<EnvelopeLayer>) -> Result<(), HarnessError> {
        let mut inner = self.lock();
        let pos = inner.pos(node)?;
        let fault = inner.fault;
        let leader_log = inner.replicas[inner.leader].log.clone();
        let commit = leader_log.len() as u64;
        let r = &mut inner.replicas[pos];
        r.layer = layer;
        if let Some(err) = r.halted.take() {
            if fault == Fault::ForgetHaltOnRestart {
                r.applied = r.applied.max(err.index);
            }
        }
        // Catch up: receive the entries this replica missed while it was down.
        let have = r.log.len();
        r.log.extend(leader_log.into_iter().skip(have));
        r.apply_to(commit, fault, 0);
        Ok(())
    }

    fn change_leader(&self) -> Result<NodeId, HarnessError> {
        let mut inner = self.lock();
        let n = inner.replicas.len();
        let next = (1..n)
            .map(|k| (inner.leader + k) % n)
            .find(|k| inner.replicas[*k].running())
            .ok_or_else(|| HarnessError::Engine("no other running replica can lead".into()))?;
        inner.leader = next;
        inner
            .append(StoredEntry { kind: EntryKind::Control, bytes: Vec::new() })
            .map_err(HarnessError::Engine)?;
        Ok(inner.replicas[next].id)
    }

    fn append_unchecked(&self, entry: StoredEntry) -> Result<u64, HarnessError> {
        self.lock().append(entry).map(|(index, _)| index).map_err(HarnessError::Engine)
    }

    fn propose_via(&self, node: NodeId, payload: Vec<u8>) -> Result<Response, ProposeError> {
        let mut inner = self.lock();
        let via = inner.pos(node).map_err(|e| ProposeError::Engine(e.to_string()))?;
        if !inner.replicas[via].running() {
            return Err(ProposeError::Engine(format!("node {node} halted")));
        }
        let proposal = inner.replicas[via].layer.prepare(payload).map_err(ProposeError::Refused)?;
        let entry = StoredEntry { kind: proposal.kind, bytes: proposal.bytes };
        if via == inner.leader || !inner.hold {
            return inner.forward(via, entry);
        }
        let ticket = inner.next_ticket;
        inner.next_ticket += 1;
        inner.held.push(Held { ticket, via, entry });
        drop(inner);
        let deadline = Instant::now() + HELD_TIMEOUT;
        loop {
            thread::sleep(Duration::from_millis(1));
            let mut inner = self.lock();
            if let Some(outcome) = inner.outcomes.remove(&ticket) {
                return outcome;
            }
            if Instant::now() >= deadline {
                inner.held.retain(|h| h.ticket != ticket);
                return Err(ProposeError::Engine("the forwarded proposal was held past the timeout".into()));
            }
        }
    }

    fn hold_forwarded(&self, hold: bool) -> Result<usize, HarnessError> {
        let mut inner = self.lock();
        inner.hold = hold;
        if hold {
            return Ok(inner.held.len());
        }
        let held = std::mem::take(&mut inner.held);
        let released = held.len();
        for h in held {
            let outcome = inner.forward(h.via, h.entry);
            inner.outcomes.insert(h.ticket, outcome);
        }
        Ok(released)
    }
}
