//! The structured target: an arbitrary history of a three-replica cluster, fed entry by entry to
//! the apply gate and the layer state exactly as the raft-rs adapter's applier feeds them
//! (`DESIGN.md` §1.2, §10.3, §11), with an adversary that may append what no correct node would.
//!
//! A history is a list of [`Step`]s. Replica 0 is the leader: it proposes (payloads, clear or
//! sealed as its layer state says, and admin commands it checked with
//! [`LayerState::check_command`]) and applies each entry as soon as it is appended. The followers
//! apply when a step says so, restart from what they persisted, or install a snapshot the
//! leader makes. The adversary duplicates, tampers with or injects entries.
//!
//! Invariants checked after every step and at the end:
//! 1. **Nothing above the cutover reaches the application unopened**: an entry handed on above
//!    the cutover is an envelope the leader sealed, and what is handed on is its plaintext.
//! 2. **Fail closed**: a halt leaves the layer state, the application and the applied index as
//!    they were, and applying the same entry again halts the same way.
//! 3. **Exactly once**: no envelope reaches a replica's application twice.
//! 4. **A correct cluster never halts**: no replica halts at, and no snapshot the leader made
//!    is refused below, the first entry the adversary appended.
//! 5. **Same sequence, same state**: once every replica applied the whole log, all of them hold
//!    the same application state, the same layer snapshot bytes, and the same halt (if any).
//! 6. **Restart restores**: what a replica persisted always restores.

use std::sync::Arc;

use raft_envelope_core::apply::EntryRecord;
use raft_envelope_core::error::FailureReason;
use raft_envelope_core::wire::{ControlCommand, EnvelopeHeader};
use raft_envelope_core::{
    Algorithm, ApplyGate, EntryKind, FatalApplyError, KeyId, LayerState, PayloadWrapper, ProposalId,
};

use crate::fixtures::{self, block_on};

/// Replicas in the cluster; replica 0 leads.
pub const REPLICAS: usize = 3;
/// Steps of a history beyond this are ignored (keeps one run short).
pub const MAX_STEPS: usize = 64;
/// Payload bytes beyond this are ignored.
pub const MAX_PAYLOAD: usize = 48;

/// One step of a history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// The leader proposes a payload: sealed when its layer state has an active key, in the clear
    /// otherwise (refused, as the adapters refuse it, when a cutover is in force and no key is).
    Propose(Vec<u8>),
    /// A node that has not switched on yet proposes in the clear (refused once a cutover is in
    /// force, as the adapters refuse it).
    ProposeClear(Vec<u8>),
    /// The engine appends an entry of its own (a new leader's empty entry).
    Engine,
    /// The leader installs a data key through the log.
    Install {
        /// Which key (1 to 4).
        key: u8,
        /// AES-256-GCM-SIV instead of AES-256-GCM.
        siv: bool,
    },
    /// The leader promotes a key (1 to 4).
    Promote(u8),
    /// The leader retires a key (1 to 4).
    Retire(u8),
    /// The leader destroys a key (1 to 4).
    Destroy(u8),
    /// The leader enforces: the cutover becomes the entry's index.
    Enforce,
    /// The leader appends the engine-framed switch-on barrier (refused once a cutover is in force).
    Barrier,
    /// The leader appends a barrier control command.
    ControlBarrier,
    /// The leader proposes an integrity checkpoint of what it applied.
    Checkpoint,
    /// A replica applies every entry it has not applied yet.
    CatchUp(u8),
    /// A replica persists its layer state and application together.
    Persist(u8),
    /// A replica restarts from what it persisted and replays the log after it.
    Restart(u8),
    /// A follower installs a snapshot the leader makes now.
    Snapshot(u8),
    /// The adversary appends a copy of an earlier entry (a retried proposal when it is an
    /// envelope whose key is still live: that is no attack, and must not halt).
    Duplicate(u8),
    /// The adversary appends a copy of an earlier entry with one byte changed.
    Tamper {
        /// Which earlier entry, counted back from the last.
        back: u8,
        /// Which byte.
        at: u16,
        /// What it is XORed with (0 is taken as 1).
        xor: u8,
    },
    /// The adversary appends bytes of its own as an entry of some kind.
    Inject {
        /// 0 cleartext, 1 envelope, 2 layer control, 3 barrier, 4 engine entry.
        kind: u8,
        /// The entry's bytes.
        bytes: Vec<u8>,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Framing {
    Payload(EntryKind),
    Engine,
    LayerControl,
    Barrier,
}

#[derive(Clone)]
struct Logged {
    framing: Framing,
    bytes: Vec<u8>,
    /// For an envelope the leader sealed (or an exact copy of one): the index of the original
    /// and the plaintext sealed in it.
    sealed: Option<(u64, Vec<u8>)>,
}

/// What one replica's application holds: `(index, origin of an envelope, payload)` per applied
/// payload.
type App = Vec<(u64, Option<u64>, Vec<u8>)>;

#[derive(Clone)]
struct Persisted {
    layer: Option<Vec<u8>>,
    app: App,
    applied: u64,
}

struct Replica {
    state: Arc<LayerState>,
    gate: ApplyGate,
    applied: u64,
    app: App,
    halted: Option<(u64, FailureReason)>,
    persisted: Persisted,
}

impl Replica {
    fn new() -> Self {
        let fresh = Persisted { layer: None, app: Vec::new(), applied: 0 };
        Self::restored(&fresh)
    }

    fn restored(persisted: &Persisted) -> Self {
        let state = Arc::new(LayerState::new(fixtures::cluster()));
        if let Some(layer) = &persisted.layer {
            block_on(state.restore_persisted(layer, fixtures::kek()))
                .expect("invariant 6: a replica's persisted layer state restores");
        }
        let gate = ApplyGate::new(state.cutover_source()).with_unwrapper(Arc::new(state.cipher()));
        Self {
            state,
            gate,
            applied: persisted.applied,
            app: persisted.app.clone(),
            halted: None,
            persisted: persisted.clone(),
        }
    }

    /// Applies `entry` at `index` as the raft-rs applier does; checks invariants 1 and 3.
    fn apply(&mut self, index: u64, entry: &Logged) -> Result<(), FatalApplyError> {
        let bytes = entry.bytes.as_slice();
        match entry.framing {
            Framing::LayerControl => {
                let _ = block_on(self.state.prefetch(bytes, fixtures::kek()));
                self.state.apply_control(index, bytes).map_err(|halt| self.gate.record_halt(halt))?;
            }
            Framing::Barrier | Framing::Engine => {
                if entry.framing == Framing::Barrier {
                    if let Some(halt) = self.gate.refuse_unsealed_barrier(index) {
                        return Err(halt);
                    }
                }
                self.gate.decide(index, EntryKind::Control, bytes)?;
                self.state.admit(index, EntryRecord::Engine(bytes));
            }
            Framing::Payload(kind) => {
                let cutover = self.state.cutover();
                let mut scratch = Vec::new();
                let payload = self.gate.decide_into(index, kind, bytes, &mut scratch)?.to_vec();
                let record = match kind {
                    EntryKind::Envelope => EntryRecord::Envelope(bytes),
                    _ => EntryRecord::Cleartext(bytes),
                };
                if self.state.admit(index, record).applies() {
                    let above = cutover.is_some_and(|c| index > c);
                    let origin = match kind {
                        EntryKind::Envelope => {
                            let (origin, plain) =
                                entry.sealed.as_ref().expect("invariant 1: an envelope no one sealed opened");
                            assert_eq!(
                                &payload, plain,
                                "invariant 1: an envelope opened to another plaintext"
                            );
                            Some(*origin)
                        }
                        _ => {
                            assert!(!above, "invariant 1: cleartext handed on above the cutover at {index}");
                            None
                        }
                    };
                    if origin.is_some() {
                        assert!(
                            self.app.iter().all(|(_, o, _)| *o != origin),
                            "invariant 3: an envelope applied twice (origin {origin:?}, again at {index})"
                        );
                    }
                    self.app.push((index, origin, payload));
                }
            }
        }
        Ok(())
    }

    /// Applies every entry of `log` after `applied`, stopping at the first halt (invariant 2).
    fn catch_up(&mut self, log: &[Logged]) {
        while self.halted.is_none() && (self.applied as usize) < log.len() {
            let index = self.applied + 1;
            let entry = &log[self.applied as usize];
            let before = (self.state.snapshot(), self.app.clone());
            match self.apply(index, entry) {
                Ok(()) => self.applied = index,
                Err(halt) => {
                    assert_eq!(halt.index, index, "a halt names another index");
                    let after = (self.state.snapshot(), self.app.clone());
                    assert!(after == before, "invariant 2: a halt at {index} changed the replica");
                    let again =
                        self.apply(index, entry).expect_err("invariant 2: a halted entry applied on retry");
                    assert_eq!((again.index, again.reason), (halt.index, halt.reason), "invariant 2");
                    self.halted = Some((index, halt.reason));
                }
            }
        }
    }

    fn persist(&mut self) {
        self.persisted = Persisted {
            layer: Some(self.state.snapshot().encode()),
            app: self.app.clone(),
            applied: self.applied,
        };
    }
}

fn encode_app(app: &App) -> Vec<u8> {
    let mut out = Vec::new();
    for (index, origin, payload) in app {
        out.extend_from_slice(&index.to_be_bytes());
        out.extend_from_slice(&origin.unwrap_or(u64::MAX).to_be_bytes());
        out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
        out.extend_from_slice(payload);
    }
    out
}

fn decode_app(mut bytes: &[u8]) -> App {
    let mut app = Vec::new();
    while !bytes.is_empty() {
        let (index, rest) = bytes.split_at(8);
        let (origin, rest) = rest.split_at(8);
        let (len, rest) = rest.split_at(4);
        let len = u32::from_be_bytes(len.try_into().expect("4 bytes")) as usize;
        let (payload, rest) = rest.split_at(len);
        let origin = u64::from_be_bytes(origin.try_into().expect("8 bytes"));
        app.push((
            u64::from_be_bytes(index.try_into().expect("8 bytes")),
            (origin != u64::MAX).then_some(origin),
            payload.to_vec(),
        ));
        bytes = rest;
    }
    app
}

/// A cluster running one history.
struct Run {
    replicas: Vec<Replica>,
    log: Vec<Logged>,
    /// The index of the first entry the adversary appended.
    first_foreign: Option<u64>,
    next_proposal: u64,
}

impl Run {
    fn new() -> Self {
        Self {
            replicas: (0..REPLICAS).map(|_| Replica::new()).collect(),
            log: Vec::new(),
            first_foreign: None,
            next_proposal: 1,
        }
    }

    fn leader(&self) -> &LayerState {
        &self.replicas[0].state
    }

    fn correct_through(&self, index: u64) -> bool {
        self.first_foreign.is_none_or(|f| index < f)
    }

    /// Appends an entry and lets the leader apply it.
    fn append(&mut self, entry: Logged, foreign: bool) {
        self.log.push(entry);
        let index = self.log.len() as u64;
        if foreign && self.first_foreign.is_none() {
            self.first_foreign = Some(index);
        }
        self.replicas[0].catch_up(&self.log);
        self.check_liveness();
    }

    fn check_liveness(&self) {
        for (i, r) in self.replicas.iter().enumerate() {
            if let Some((index, reason)) = r.halted {
                assert!(
                    !self.correct_through(index),
                    "invariant 4: replica {i} halted at {index} ({reason:?}) on an entry a correct node appended"
                );
            }
        }
    }

    fn proposal_id(&mut self) -> ProposalId {
        self.next_proposal += 1;
        ProposalId(self.next_proposal)
    }

    fn propose_control(&mut self, command: ControlCommand) {
        if self.leader().check_command(&command).is_err() {
            return;
        }
        let id = self.leader().next_control_id();
        if let Ok(bytes) = self.leader().encode_entry(id, &command) {
            self.append(Logged { framing: Framing::LayerControl, bytes, sealed: None }, false);
        }
    }

    fn step(&mut self, step: Step) {
        let key = |k: u8| KeyId(1 + u32::from(k % 4));
        let replica = |r: u8| usize::from(r) % REPLICAS;
        let clip = |mut p: Vec<u8>| {
            p.truncate(MAX_PAYLOAD);
            p
        };
        match step {
            Step::Propose(payload) => {
                let payload = clip(payload);
                let id = self.proposal_id();
                let leader = self.leader();
                if leader.active_key().is_some() {
                    if let Ok(bytes) = leader.cipher().seal(id, &payload) {
                        let origin = self.log.len() as u64 + 1;
                        let entry = Logged {
                            framing: Framing::Payload(EntryKind::Envelope),
                            bytes,
                            sealed: Some((origin, payload)),
                        };
                        self.append(entry, false);
                    }
                } else if leader.cutover().is_none() {
                    let entry = Logged {
                        framing: Framing::Payload(EntryKind::Cleartext),
                        bytes: payload,
                        sealed: None,
                    };
                    self.append(entry, false);
                }
            }
            Step::ProposeClear(payload) => {
                if self.leader().cutover().is_none() {
                    let entry = Logged {
                        framing: Framing::Payload(EntryKind::Cleartext),
                        bytes: clip(payload),
                        sealed: None,
                    };
                    self.append(entry, false);
                }
            }
            Step::Engine => {
                self.append(Logged { framing: Framing::Engine, bytes: Vec::new(), sealed: None }, false)
            }
            Step::Install { key: k, siv } => {
                let algorithm = if siv { Algorithm::Aes256GcmSiv } else { Algorithm::Aes256Gcm };
                if let Ok(command) =
                    block_on(self.leader().generate_install(key(k), algorithm, fixtures::kek()))
                {
                    self.propose_control(command);
                }
            }
            Step::Promote(k) => self.propose_control(ControlCommand::PromoteKey { key_id: key(k) }),
            Step::Retire(k) => self.propose_control(ControlCommand::RetireKey { key_id: key(k) }),
            Step::Destroy(k) => self.propose_control(ControlCommand::DestroyKey { key_id: key(k) }),
            Step::Enforce => self.propose_control(ControlCommand::Enforce),
            Step::ControlBarrier => self.propose_control(ControlCommand::Barrier),
            Step::Barrier => {
                if self.leader().cutover().is_none() {
                    self.append(Logged { framing: Framing::Barrier, bytes: Vec::new(), sealed: None }, false);
                }
            }
            Step::Checkpoint => {
                if let Some(command) = self.leader().checkpoint_now() {
                    self.propose_control(command);
                }
            }
            Step::CatchUp(r) => {
                let r = replica(r);
                self.replicas[r].catch_up(&self.log);
                self.check_liveness();
            }
            Step::Persist(r) => self.replicas[replica(r)].persist(),
            Step::Restart(r) => {
                let r = replica(r);
                let persisted = self.replicas[r].persisted.clone();
                self.replicas[r] = Replica::restored(&persisted);
                if r == 0 {
                    self.replicas[0].catch_up(&self.log);
                    self.check_liveness();
                }
            }
            Step::Snapshot(r) => self.install_snapshot(1 + usize::from(r) % (REPLICAS - 1)),
            Step::Duplicate(back) => {
                let Some(entry) = self.earlier(back) else { return };
                // A retried proposal: the same envelope again, its key still live; or the same
                // cleartext again while no cutover is in force.
                let clear_retry = entry.framing == Framing::Payload(EntryKind::Cleartext)
                    && self.leader().cutover().is_none();
                let retry = clear_retry
                    || entry.framing == Framing::Payload(EntryKind::Envelope)
                        && EnvelopeHeader::parse(&entry.bytes)
                            .ok()
                            .and_then(|h| self.leader().key(h.key_id))
                            .is_some_and(|k| k.wrapped_key.is_some());
                self.append(entry, !retry);
            }
            Step::Tamper { back, at, xor } => {
                let Some(mut entry) = self.earlier(back) else { return };
                if entry.bytes.is_empty() {
                    entry.bytes.push(xor);
                } else {
                    let at = usize::from(at) % entry.bytes.len();
                    entry.bytes[at] ^= xor.max(1);
                }
                entry.sealed = None;
                self.append(entry, true);
            }
            Step::Inject { kind, bytes } => {
                let framing = match kind % 5 {
                    0 => Framing::Payload(EntryKind::Cleartext),
                    1 => Framing::Payload(EntryKind::Envelope),
                    2 => Framing::LayerControl,
                    3 => Framing::Barrier,
                    _ => Framing::Engine,
                };
                self.append(Logged { framing, bytes, sealed: None }, true);
            }
        }
    }

    fn earlier(&self, back: u8) -> Option<Logged> {
        let len = self.log.len();
        (len > 0).then(|| self.log[len - 1 - usize::from(back) % len].clone())
    }

    fn install_snapshot(&mut self, to: usize) {
        let last = self.replicas[0].applied;
        if self.replicas[0].halted.is_some()
            || self.replicas[to].halted.is_some()
            || last <= self.replicas[to].applied
        {
            return;
        }
        let Ok(frame) = self.leader().seal_snapshot(last, &encode_app(&self.replicas[0].app)) else { return };
        let correct = self.correct_through(last + 1);
        let follower = &mut self.replicas[to];
        let _ = block_on(follower.state.prefetch_sealed_snapshot(&frame, fixtures::kek()));
        let before = follower.state.snapshot();
        match follower.state.install_snapshot(last, &frame) {
            Ok(data) => {
                follower.app = decode_app(&data);
                follower.applied = last;
            }
            Err(e) => {
                assert!(!correct, "invariant 4: a correct leader's snapshot at {last} was refused: {e}");
                assert_eq!(
                    follower.state.snapshot(),
                    before,
                    "invariant 2: a refused snapshot changed the replica"
                );
                follower.halted = Some((last + 1, FailureReason::InvalidControl));
            }
        }
    }

    /// Every replica applies the whole log; all must agree (invariant 5).
    fn finish(mut self) -> Summary {
        for r in &mut self.replicas {
            r.catch_up(&self.log);
        }
        self.check_liveness();
        let leader = &self.replicas[0];
        let expected = (leader.applied, leader.halted, &leader.app, leader.state.snapshot().encode());
        for (i, r) in self.replicas.iter().enumerate().skip(1) {
            if r.halted
                .is_some_and(|(_, reason)| reason == FailureReason::InvalidControl && leader.halted.is_none())
            {
                continue; // refused a snapshot from a log the adversary wrote: halted outside the log
            }
            let got = (r.applied, r.halted, &r.app, r.state.snapshot().encode());
            if got != expected {
                let (mine, theirs) = (leader.state.snapshot(), r.state.snapshot());
                panic!(
                    "invariant 5: replica {i} and the leader applied the same log and differ: applied {} vs {}, \
                     halted {:?} vs {:?}, application equal: {}, layer: {mine:?} vs {theirs:?}",
                    expected.0,
                    got.0,
                    expected.1,
                    got.1,
                    expected.2 == got.2
                );
            }
        }
        Summary {
            log_len: self.log.len() as u64,
            applied: self.replicas.iter().map(|r| r.applied).collect(),
            halted: leader.halted.map(|(index, _)| index),
            cutover: leader.state.cutover(),
            keys: leader.state.keys().iter().map(|k| (k.key_id.0, format!("{:?}", k.state))).collect(),
            payloads_applied: leader.app.len(),
        }
    }
}

/// What a history ended with (for tests that a history reached what it meant to).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary {
    /// Entries appended.
    pub log_len: u64,
    /// Each replica's applied index.
    pub applied: Vec<u64>,
    /// Where the leader (and so every replica) halted.
    pub halted: Option<u64>,
    /// The leader's cutover.
    pub cutover: Option<u64>,
    /// The leader's keys and their states.
    pub keys: Vec<(u32, String)>,
    /// Payloads the leader's application received.
    pub payloads_applied: usize,
}

/// Runs `steps` (at most [`MAX_STEPS`]) on a fresh three-replica cluster, checking every
/// invariant of this module.
pub fn run(steps: Vec<Step>) -> Summary {
    let mut run = Run::new();
    for step in steps.into_iter().take(MAX_STEPS) {
        if run.replicas[0].halted.is_some() {
            break; // the leader halted: nothing more is proposed
        }
        run.step(step);
    }
    run.finish()
}

/// [`run`] over raw fuzzer bytes, read as steps by [`Step::decode`].
pub fn run_bytes(mut data: &[u8]) {
    let mut steps = Vec::new();
    while let Some(step) = Step::decode(&mut data) {
        steps.push(step);
    }
    run(steps);
}

const OPS: u8 = 20;

impl Step {
    /// Reads one step from the front of `input` (an opcode byte, then the step's fields: one
    /// byte each, a payload as a length byte and that many bytes). `None` when `input` is used up.
    /// Every byte string reads as some history, and [`encode`](Self::encode) writes the bytes
    /// that read back as a given step, so hand-written histories seed the corpus.
    pub fn decode(input: &mut &[u8]) -> Option<Self> {
        fn byte(input: &mut &[u8]) -> u8 {
            let (first, rest) = input.split_first().map_or((0, &[][..]), |(b, r)| (*b, r));
            *input = rest;
            first
        }
        fn bytes(input: &mut &[u8]) -> Vec<u8> {
            let len = usize::from(byte(input)).min(input.len());
            let (head, rest) = input.split_at(len);
            *input = rest;
            head.to_vec()
        }
        let op = byte_opt(input)? % OPS;
        Some(match op {
            0 => Step::Propose(bytes(input)),
            1 => Step::ProposeClear(bytes(input)),
            2 => Step::Engine,
            3 => Step::Install { key: byte(input), siv: byte(input) & 1 == 1 },
            4 => Step::Promote(byte(input)),
            5 => Step::Retire(byte(input)),
            6 => Step::Destroy(byte(input)),
            7 => Step::Enforce,
            8 => Step::Barrier,
            9 => Step::ControlBarrier,
            10 => Step::Checkpoint,
            11 => Step::CatchUp(byte(input)),
            12 => Step::Persist(byte(input)),
            13 => Step::Restart(byte(input)),
            14 => Step::Snapshot(byte(input)),
            15 => Step::Duplicate(byte(input)),
            16 => {
                let back = byte(input);
                let at = u16::from_be_bytes([byte(input), byte(input)]);
                Step::Tamper { back, at, xor: byte(input) }
            }
            17 => Step::Inject { kind: byte(input), bytes: bytes(input) },
            // Spare opcodes lean towards what drives a history forward.
            18 => Step::Propose(bytes(input)),
            _ => Step::CatchUp(byte(input)),
        })
    }

    /// The bytes [`decode`](Self::decode) reads back as this step.
    pub fn encode(&self, out: &mut Vec<u8>) {
        let payload = |out: &mut Vec<u8>, p: &[u8]| {
            let p = &p[..p.len().min(255)];
            out.push(p.len() as u8);
            out.extend_from_slice(p);
        };
        match self {
            Step::Propose(p) => {
                out.push(0);
                payload(out, p);
            }
            Step::ProposeClear(p) => {
                out.push(1);
                payload(out, p);
            }
            Step::Engine => out.push(2),
            Step::Install { key, siv } => out.extend_from_slice(&[3, *key, u8::from(*siv)]),
            Step::Promote(k) => out.extend_from_slice(&[4, *k]),
            Step::Retire(k) => out.extend_from_slice(&[5, *k]),
            Step::Destroy(k) => out.extend_from_slice(&[6, *k]),
            Step::Enforce => out.push(7),
            Step::Barrier => out.push(8),
            Step::ControlBarrier => out.push(9),
            Step::Checkpoint => out.push(10),
            Step::CatchUp(r) => out.extend_from_slice(&[11, *r]),
            Step::Persist(r) => out.extend_from_slice(&[12, *r]),
            Step::Restart(r) => out.extend_from_slice(&[13, *r]),
            Step::Snapshot(r) => out.extend_from_slice(&[14, *r]),
            Step::Duplicate(b) => out.extend_from_slice(&[15, *b]),
            Step::Tamper { back, at, xor } => {
                out.extend_from_slice(&[16, *back]);
                out.extend_from_slice(&at.to_be_bytes());
                out.push(*xor);
            }
            Step::Inject { kind, bytes } => {
                out.extend_from_slice(&[17, *kind]);
                payload(out, bytes);
            }
        }
    }
}

fn byte_opt(input: &mut &[u8]) -> Option<u8> {
    let (first, rest) = input.split_first()?;
    *input = rest;
    Some(*first)
}

/// A few hand-written histories: the seeds of the target's corpus (switch-on, rotation, destroy,
/// restarts, a snapshot, checkpoints, retries).
pub fn seed_histories() -> Vec<Vec<Step>> {
    use Step::*;
    let switch_on = vec![
        Propose(b"before".to_vec()),
        Install { key: 0, siv: false },
        Promote(0),
        Propose(b"sealed early".to_vec()),
        Barrier,
        Enforce,
        Propose(b"sealed".to_vec()),
        Checkpoint,
        CatchUp(1),
        CatchUp(2),
    ];
    let mut rotation = switch_on.clone();
    rotation.extend([
        Persist(1),
        Install { key: 1, siv: true },
        Promote(1),
        Propose(b"under key 2".to_vec()),
        Retire(0),
        Duplicate(0),
        Restart(1),
        Snapshot(1),
        Destroy(0),
        Engine,
        ControlBarrier,
        Checkpoint,
        Restart(2),
    ]);
    let mut attacked = rotation.clone();
    attacked.extend([Tamper { back: 1, at: 30, xor: 1 }, Inject { kind: 0, bytes: b"forged".to_vec() }]);
    vec![switch_on, rotation, attacked]
}

/// The bytes [`run_bytes`] reads back as `steps`.
pub fn encode_steps(steps: &[Step]) -> Vec<u8> {
    let mut out = Vec::new();
    for step in steps {
        step.encode(&mut out);
    }
    out
}
