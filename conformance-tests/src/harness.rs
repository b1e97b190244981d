//! The harness an engine implements to run the suite: a [`ClusterBuilder`] and its [`Cluster`].

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use raft_envelope_core::{
    apply::ApplyContext,
    error::ControlError,
    lifecycle::{DestroyRefused, LayerSnapshot},
    provider::KeyProvider,
    EntryKind, EnvelopeLayer, FatalApplyError, KeyId, LayerState, SealError,
};

/// Identifies one replica of a test cluster, as the harness numbers them.
pub type NodeId = u64;

/// What a harness can do beyond the required operations.
///
/// A case that needs a capability the harness lacks is reported as skipped, with the reason,
/// instead of passing silently. Build one with [`Capabilities::ALL`] or [`Capabilities::NONE`]
/// and struct update syntax:
///
/// ```
/// use raft_envelope_conformance::Capabilities;
///
/// let caps = Capabilities { leader_change: false, ..Capabilities::ALL };
/// assert!(caps.restart && !caps.leader_change);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Capabilities {
    /// [`Cluster::read_entry`] and [`Cluster::write_entry`] work: the harness can read and
    /// overwrite one replica's stored entries (tampering with its log).
    pub raw_log: bool,
    /// [`Cluster::restart`] works: a replica can be restarted, keeping its log and its state
    /// machine, with a new [`EnvelopeLayer`].
    pub restart: bool,
    /// [`Cluster::change_leader`] works.
    pub leader_change: bool,
    /// [`Cluster::append_unchecked`] works: an entry can be appended through the engine without
    /// the layer (a faulty or outdated proposer).
    pub unchecked_append: bool,
    /// [`Cluster::propose_via`] works: a proposal can be made through a follower's layer, the
    /// engine forwarding it to the leader. Not every engine forwards (openraft answers
    /// `ForwardToLeader`); without it the cases about forwarded proposals skip.
    pub follower_proposals: bool,
    /// [`Cluster::hold_forwarded`] works: proposals forwarded by followers can be held in flight
    /// between the follower and the leader, then released.
    pub hold_forwarded: bool,
    /// Key lifecycle through the log: [`ClusterBuilder::build_managed`] starts replicas whose
    /// keys and cutover change only through layer control entries, and
    /// [`Cluster::enable_encryption`], [`Cluster::rotate_key`], [`Cluster::destroy_key`],
    /// [`Cluster::layer_snapshot`] and [`Cluster::restart_with_provider`] work on them.
    pub key_lifecycle: bool,
    /// Snapshots and compaction on [`build_managed`](ClusterBuilder::build_managed) clusters:
    /// [`Cluster::compact`] and [`Cluster::add_member`] work, state-machine snapshots carry the
    /// layer state, and [`Cluster::destroy_key`] checks every replica's retained log and
    /// snapshot before destroying.
    pub snapshots: bool,
    /// [`Cluster::hold_commit`] works: a replica can be kept from learning that entries are
    /// committed, so it stores them without applying them (a window to rewrite a stored entry
    /// before it is applied).
    pub hold_commit: bool,
    /// Integrity checkpoints on [`build_managed`](ClusterBuilder::build_managed) clusters:
    /// [`Cluster::checkpoint`] works, and leaders propose checkpoints by themselves while a
    /// cutover is in force (at an interval of the harness's choosing, short enough that a
    /// load case crosses several).
    pub checkpoints: bool,
    /// [`Cluster::resubmit`] works: one prepared proposal can be submitted twice.
    pub resubmit: bool,
    /// [`Cluster::applied_contexts`] works: the harness records the [`ApplyContext`] its
    /// application is handed with each payload.
    pub apply_context: bool,
}

impl Capabilities {
    /// Every capability.
    pub const ALL: Capabilities = Capabilities {
        raw_log: true,
        restart: true,
        leader_change: true,
        unchecked_append: true,
        follower_proposals: true,
        hold_forwarded: true,
        key_lifecycle: true,
        snapshots: true,
        hold_commit: true,
        checkpoints: true,
        resubmit: true,
        apply_context: true,
    };
    /// Only the required operations.
    pub const NONE: Capabilities = Capabilities {
        raw_log: false,
        restart: false,
        leader_change: false,
        unchecked_append: false,
        follower_proposals: false,
        hold_forwarded: false,
        key_lifecycle: false,
        snapshots: false,
        hold_commit: false,
        checkpoints: false,
        resubmit: false,
        apply_context: false,
    };
}

/// One entry as a replica stores it: what its framing says it is, and its payload bytes.
#[derive(Clone, PartialEq, Eq)]
pub struct StoredEntry {
    /// The kind the adapter's framing tells, without any key.
    pub kind: EntryKind,
    /// The stored payload bytes: the envelope, the cleartext payload, or a control entry's bytes
    /// (empty when the engine stores none).
    pub bytes: Vec<u8>,
}

impl StoredEntry {
    /// The bytes that mark [`barrier`](Self::barrier); never a real payload's.
    pub const BARRIER: &'static [u8] = b"\0raft-envelope engine-framed barrier\0";

    /// The layer's engine-framed barrier (kind `Control`, bytes [`BARRIER`](Self::BARRIER)):
    /// [`Cluster::write_entry`] stores it in the engine's barrier framing (openraft
    /// `EnvelopePayload::Barrier`, raft-rs an `EntryNormal` with the barrier context marker and
    /// no data), as an attacker rewriting a stored entry would.
    pub fn barrier() -> Self {
        Self { kind: EntryKind::Control, bytes: Self::BARRIER.to_vec() }
    }

    /// True for [`barrier`](Self::barrier).
    pub fn is_barrier(&self) -> bool {
        self.kind == EntryKind::Control && self.bytes == Self::BARRIER
    }

    /// The bytes that mark [`noop`](Self::noop); never a real payload's.
    pub const NOOP: &'static [u8] = b"\0raft-envelope engine no-op\0";

    /// The engine's own empty entry (kind `Control`, bytes [`NOOP`](Self::NOOP)):
    /// [`Cluster::write_entry`] stores it as the engine's no-op (openraft `EntryPayload::Blank`,
    /// raft-rs an `EntryNormal` with no data and no context), which a new leader legitimately
    /// appends at any index, as an attacker rewriting a stored entry would.
    pub fn noop() -> Self {
        Self { kind: EntryKind::Control, bytes: Self::NOOP.to_vec() }
    }

    /// True for [`noop`](Self::noop).
    pub fn is_noop(&self) -> bool {
        self.kind == EntryKind::Control && self.bytes == Self::NOOP
    }

    /// A cleartext payload entry.
    pub fn cleartext(bytes: impl Into<Vec<u8>>) -> Self {
        Self { kind: EntryKind::Cleartext, bytes: bytes.into() }
    }

    /// An envelope entry.
    pub fn envelope(bytes: impl Into<Vec<u8>>) -> Self {
        Self { kind: EntryKind::Envelope, bytes: bytes.into() }
    }
}

/// Shows only kind and length: the bytes may be plaintext.
impl fmt::Debug for StoredEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StoredEntry").field("kind", &self.kind).field("len", &self.bytes.len()).finish()
    }
}

/// What a client receives for a committed and applied proposal.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Response {
    /// The log index the proposal landed at, as the engine reports it.
    pub index: u64,
    /// The state machine's response, as produced by [`RecordingStateMachine::apply`].
    pub data: Vec<u8>,
}

/// What [`Cluster::resubmit`] saw: the outcomes of two submissions of one prepared proposal.
#[derive(Debug)]
pub struct Resubmitted {
    /// The first submission's outcome.
    pub first: Result<Response, ProposeError>,
    /// The second submission's outcome (exactly-once: [`ProposeError::Duplicate`] naming the
    /// first one's index when the first was applied).
    pub second: Result<Response, ProposeError>,
}

/// One payload as a replica's state machine received it.
#[derive(Clone, PartialEq, Eq)]
pub struct AppliedPayload {
    /// The log index of the entry.
    pub index: u64,
    /// The bytes handed to the state machine.
    pub bytes: Vec<u8>,
}

/// Shows only index and length: the bytes are plaintext.
impl fmt::Debug for AppliedPayload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "AppliedPayload(index {}, {} bytes)", self.index, self.bytes.len())
    }
}

/// The application state machine every harness puts behind the layer: it records each payload it
/// is handed and answers with a response derived from the payload and the count so far.
///
/// Using it (or something observably identical) lets the suite compare state across replicas and
/// responses across clusters without knowing the engine.
///
/// ```
/// use raft_envelope_conformance::RecordingStateMachine;
///
/// let mut sm = RecordingStateMachine::default();
/// let response = sm.apply(3, b"x");
/// assert_eq!(response, RecordingStateMachine::response_for(1, b"x"));
/// assert_eq!(sm.payloads()[0].index, 3);
/// ```
#[derive(Clone, Default, PartialEq, Eq)]
pub struct RecordingStateMachine {
    payloads: Vec<AppliedPayload>,
}

impl RecordingStateMachine {
    /// Records `payload`, applied from log index `index`, and returns the client response.
    pub fn apply(&mut self, index: u64, payload: &[u8]) -> Vec<u8> {
        self.payloads.push(AppliedPayload { index, bytes: payload.to_vec() });
        Self::response_for(self.payloads.len() as u64, payload)
    }

    /// Every payload applied so far, in order.
    pub fn payloads(&self) -> &[AppliedPayload] {
        &self.payloads
    }

    /// The response for the `count`-th applied payload: `count` (8 bytes, big-endian) followed by
    /// [`digest`](Self::digest) of the payload (8 bytes, big-endian). It never contains payload
    /// bytes.
    pub fn response_for(count: u64, payload: &[u8]) -> Vec<u8> {
        let mut out = count.to_be_bytes().to_vec();
        out.extend_from_slice(&Self::digest(payload).to_be_bytes());
        out
    }

    /// The state as snapshot bytes, for harnesses whose engine snapshots the state machine:
    /// every payload with its index. [`from_snapshot`](Self::from_snapshot) reads it back.
    pub fn to_snapshot(&self) -> Vec<u8> {
        let mut out = Vec::new();
        for p in &self.payloads {
            out.extend_from_slice(&p.index.to_be_bytes());
            out.extend_from_slice(&(p.bytes.len() as u64).to_be_bytes());
            out.extend_from_slice(&p.bytes);
        }
        out
    }

    /// Reads bytes made by [`to_snapshot`](Self::to_snapshot); `None` when they are not.
    pub fn from_snapshot(mut bytes: &[u8]) -> Option<Self> {
        let mut payloads = Vec::new();
        while !bytes.is_empty() {
            let index = u64::from_be_bytes(bytes.get(..8)?.try_into().ok()?);
            let len = usize::try_from(u64::from_be_bytes(bytes.get(8..16)?.try_into().ok()?)).ok()?;
            let end = 16usize.checked_add(len)?;
            payloads.push(AppliedPayload { index, bytes: bytes.get(16..end)?.to_vec() });
            bytes = &bytes[end..];
        }
        Some(Self { payloads })
    }

    /// FNV-1a 64 of `bytes`: identifies a payload in responses without revealing it.
    pub fn digest(bytes: &[u8]) -> u64 {
        bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3))
    }
}

/// Shows only how many payloads were applied.
impl fmt::Debug for RecordingStateMachine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RecordingStateMachine({} payloads)", self.payloads.len())
    }
}

/// A proposal was not applied.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProposeError {
    /// The layer refused to seal the proposal; it was not appended. Retryable.
    #[error("proposal refused before appending: {0}")]
    Refused(#[source] SealError),
    /// The same prepared proposal was applied before, at `first_index`: this submission applied
    /// nothing (exactly-once envelopes, [`Cluster::resubmit`]).
    #[error("already applied at index {first_index}")]
    Duplicate {
        /// Where the proposal was applied.
        first_index: u64,
    },
    /// The engine failed the proposal (no leader, leader halted, timeout, ...). Must never carry
    /// payload bytes.
    #[error("engine error: {0}")]
    Engine(String),
}

/// A harness operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HarnessError {
    /// The harness does not offer this operation (it should also clear the matching
    /// [`Capabilities`] flag).
    #[error("not supported by this harness: {0}")]
    Unsupported(&'static str),
    /// A replica did not reach an applied index in time.
    #[error("node {node} did not apply index {index} within {timeout:?} (applied {applied})")]
    Timeout {
        /// The replica.
        node: NodeId,
        /// The index waited for.
        index: u64,
        /// Its applied index when the wait gave up.
        applied: u64,
        /// How long it waited.
        timeout: Duration,
    },
    /// No replica with this id.
    #[error("no node {0}")]
    NoSuchNode(NodeId),
    /// [`Cluster::destroy_key`] refused: a replica still retains entries or a snapshot sealed
    /// under the key, or did not report what it retains.
    #[error("destroy refused: {0}")]
    DestroyRefused(#[source] DestroyRefused<NodeId>),
    /// An admin command was refused before anything was proposed (it would halt every replica
    /// or leave nothing to seal with): [`ControlError::ActiveKeyNeeded`],
    /// [`ControlError::UnknownKey`], [`ControlError::KeyDestroyed`], ...
    #[error("refused before proposing: {0}")]
    Refused(#[source] ControlError),
    /// Anything else the engine reports. Must never carry payload or key bytes.
    #[error("{0}")]
    Engine(String),
}

/// One replica of a cluster started by [`ClusterBuilder::build_managed`]: its keys and cutover
/// live in `layer_state` and change only through layer control entries.
#[derive(Clone)]
pub struct ManagedNode {
    /// The replica's own layer state, starting empty (inert). The suite keeps a handle to it and
    /// may open entries with its cipher; the harness keeps the same instance across
    /// [`Cluster::restart_with_provider`] (as it keeps the state machine).
    pub layer_state: Arc<LayerState>,
    /// The replica's key provider, which unwraps the data keys of install entries; `None`: the
    /// replica holds no key-encryption key and halts (`key_unavailable`) at the first install
    /// entry. An engine whose nodes need a provider gives such a replica one that always fails.
    pub provider: Option<Arc<dyn KeyProvider>>,
}

/// Shows only whether a provider is set.
impl fmt::Debug for ManagedNode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ManagedNode").field("provider", &self.provider.is_some()).finish_non_exhaustive()
    }
}

/// Makes a fresh cluster for each case, like `openraft::testing::log::StoreBuilder`.
///
/// The suite builds every replica's [`EnvelopeLayer`] itself (keys, cutover source, unwrapper,
/// wrapper) and hands them over: the harness installs `layers[k]` on its `k`-th replica, on both
/// the proposing side (every proposal goes through [`EnvelopeLayer::prepare`]) and the apply side
/// (every committed entry goes through `layer.gate().decide(..)`, in log order).
///
/// Each gate reads the cutover from a [`Cutover`](raft_envelope_core::Cutover) the suite owns and
/// changes while the cluster runs, as an operator would on every node at once; the harness reads
/// it only through the gate (never caches it). Wrappers are switched the same way, through
/// [`EnvelopeLayer::set_wrapper`].
pub trait ClusterBuilder {
    /// The cluster this builder makes.
    type Cluster: Cluster;
    /// Dropped at the end of the case, after the cluster: temporary directories, runtimes, ...
    type Guard;

    /// What the clusters this builder makes can do.
    fn capabilities(&self) -> Capabilities;

    /// How long the suite waits for a replica to apply an index or to halt. Default: 10 s.
    fn wait_timeout(&self) -> Duration {
        Duration::from_secs(10)
    }

    /// Starts a cluster of `layers.len()` replicas (the suite asks for 3), with a leader elected
    /// and every entry the engine wrote while starting committed and applied on every replica.
    /// The replica's state machine must be a [`RecordingStateMachine`].
    ///
    /// # Errors
    /// Any [`HarnessError`]: the case fails.
    fn build(&self, layers: Vec<Arc<EnvelopeLayer>>) -> Result<(Self::Cluster, Self::Guard), HarnessError>;

    /// Starts a cluster of `nodes.len()` replicas (the suite asks for 3) whose layers are built
    /// from each node's [`ManagedNode::layer_state`] (gate over its cutover, its cipher as
    /// unwrapper, sealing once a key is active) and whose keys and cutover change only through
    /// layer control entries, which never reach the state machine. Otherwise as
    /// [`build`](Self::build): leader elected, start-up entries applied everywhere, a
    /// [`RecordingStateMachine`] per replica, and every [`Cluster`] method working as there.
    /// For these clusters [`Cluster::read_entry`] reports layer control entries with kind
    /// [`EntryKind::Control`] and their stored bytes.
    /// Capability [`Capabilities::key_lifecycle`].
    ///
    /// # Errors
    /// Any [`HarnessError`]; [`HarnessError::Unsupported`] by default.
    fn build_managed(&self, nodes: Vec<ManagedNode>) -> Result<(Self::Cluster, Self::Guard), HarnessError> {
        let _ = nodes;
        Err(HarnessError::Unsupported("build_managed"))
    }
}

/// A running test cluster. Every method is synchronous; an async engine blocks on its runtime
/// inside each method. `Sync`: concurrent-load cases call [`propose`](Self::propose) and
/// [`propose_via`](Self::propose_via) from several threads while the case thread calls other
/// methods (a `propose_via` waiting for a held proposal must not block them).
pub trait Cluster: Sync {
    /// The replicas, in the order of the layers given to [`ClusterBuilder::build`].
    fn nodes(&self) -> Vec<NodeId>;

    /// The current leader, if one is known.
    fn leader(&self) -> Option<NodeId>;

    /// Proposes `payload` through the leader's layer ([`EnvelopeLayer::prepare`], then the
    /// engine), waits until it is committed and applied on the leader, and returns the client's
    /// response.
    ///
    /// # Errors
    /// [`ProposeError::Refused`] when `prepare` failed (nothing may be appended then), otherwise
    /// [`ProposeError::Engine`].
    fn propose(&self, payload: Vec<u8>) -> Result<Response, ProposeError>;

    /// The leader's last log index (appended, not necessarily committed).
    ///
    /// # Errors
    /// Any [`HarnessError`].
    fn last_index(&self) -> Result<u64, HarnessError>;

    /// An index at which the cutover may be set once every layer seals: at or above every log
    /// index a cleartext proposal prepared before sealing started can land at.
    ///
    /// The default, [`last_index`](Self::last_index), is right only when preparing and appending
    /// a proposal are atomic with respect to this call; an engine with proposals in flight
    /// between the layer and the log must wait for them here.
    ///
    /// # Errors
    /// Any [`HarnessError`].
    fn safe_cutover(&self) -> Result<u64, HarnessError> {
        self.last_index()
    }

    /// Waits until `node` has applied `index` (or more), at most `timeout`.
    ///
    /// # Errors
    /// [`HarnessError::Timeout`], or another error.
    fn wait_applied(&self, node: NodeId, index: u64, timeout: Duration) -> Result<(), HarnessError>;

    /// The last log index `node` applied, control entries included, as its state machine
    /// records it (on openraft the inner state machine's applied state: the metrics lag behind
    /// after a fatal error).
    ///
    /// # Errors
    /// Any [`HarnessError`].
    fn applied_index(&self, node: NodeId) -> Result<u64, HarnessError>;

    /// Every payload `node`'s state machine received, in order
    /// ([`RecordingStateMachine::payloads`]).
    ///
    /// # Errors
    /// Any [`HarnessError`].
    fn applied_payloads(&self, node: NodeId) -> Result<Vec<AppliedPayload>, HarnessError>;

    /// Every [`ApplyContext`] `node`'s application was handed with a payload, in apply order
    /// (raft-rs `StateMachine::apply_in`, openraft `PayloadCodec::decode_in`): one per
    /// payload, since the replica started from its last snapshot.
    /// Capability [`Capabilities::apply_context`].
    ///
    /// # Errors
    /// Any [`HarnessError`]; [`HarnessError::Unsupported`] by default.
    fn applied_contexts(&self, node: NodeId) -> Result<Vec<ApplyContext>, HarnessError> {
        let _ = node;
        Err(HarnessError::Unsupported("applied_contexts"))
    }

    /// The error `node` halted with, or `None` while it applies normally.
    ///
    /// # Errors
    /// Any [`HarnessError`].
    fn halted(&self, node: NodeId) -> Result<Option<FatalApplyError>, HarnessError>;

    /// The entry `node` stores at `index`, or `None` when it has none there.
    /// Capability [`Capabilities::raw_log`].
    ///
    /// # Errors
    /// Any [`HarnessError`].
    fn read_entry(&self, node: NodeId, index: u64) -> Result<Option<StoredEntry>, HarnessError> {
        let _ = (node, index);
        Err(HarnessError::Unsupported("read_entry"))
    }

    /// Overwrites the entry `node` stores at `index` (kind [`EntryKind::Cleartext`] or
    /// [`EntryKind::Envelope`], or [`StoredEntry::barrier`] / [`StoredEntry::noop`]), as an
    /// attacker with access to its disk would. The suite calls it only on a halted replica, then
    /// [`restart`](Self::restart)s it, or on a replica whose commit is held
    /// ([`hold_commit`](Self::hold_commit)) at an index it stores but has not applied.
    /// Capability [`Capabilities::raw_log`].
    ///
    /// # Errors
    /// Any [`HarnessError`].
    fn write_entry(&self, node: NodeId, index: u64, entry: StoredEntry) -> Result<(), HarnessError> {
        let _ = (node, index, entry);
        Err(HarnessError::Unsupported("write_entry"))
    }

    /// Restarts `node` with `layer`, keeping its log and its state machine (and so its applied
    /// index): it applies again from its applied index + 1, catching up with the leader.
    /// A halted replica must halt again on the same entry unless `layer` repairs the cause.
    ///
    /// A replica that halts while restarting is not an error of `restart` (openraft's
    /// `Raft::new` re-applies committed entries and returns the fatal error itself): return `Ok`
    /// and report the halt through [`halted`](Self::halted).
    /// Capability [`Capabilities::restart`].
    ///
    /// # Errors
    /// Any [`HarnessError`].
    fn restart(&self, node: NodeId, layer: Arc<EnvelopeLayer>) -> Result<(), HarnessError> {
        let _ = (node, layer);
        Err(HarnessError::Unsupported("restart"))
    }

    /// Makes another replica that is not halted the leader and returns it once it leads (the
    /// engine appends its usual control entry for the new term).
    /// Capability [`Capabilities::leader_change`].
    ///
    /// # Errors
    /// Any [`HarnessError`].
    fn change_leader(&self) -> Result<NodeId, HarnessError> {
        Err(HarnessError::Unsupported("change_leader"))
    }

    /// Holds (`true`) or releases (`false`) `node`'s view of the commit index: while held, it
    /// stores the entries replicated to it but applies none beyond what it had learned was
    /// committed; on release it catches up. Capability [`Capabilities::hold_commit`].
    ///
    /// # Errors
    /// Any [`HarnessError`].
    fn hold_commit(&self, node: NodeId, hold: bool) -> Result<(), HarnessError> {
        let _ = (node, hold);
        Err(HarnessError::Unsupported("hold_commit"))
    }

    /// Proposes an integrity checkpoint on the leader of a
    /// [`build_managed`](ClusterBuilder::build_managed) cluster, whatever its policy: the
    /// leader's digest of everything it applied ([`LayerState::checkpoint_now`]). Returns the
    /// checkpoint's log index once the leader applied it. Capability
    /// [`Capabilities::checkpoints`].
    ///
    /// # Errors
    /// Any [`HarnessError`]; [`HarnessError::Unsupported`] by default.
    fn checkpoint(&self) -> Result<u64, HarnessError> {
        Err(HarnessError::Unsupported("checkpoint"))
    }

    /// Prepares `payload` once through the leader's layer, submits it and waits for its outcome,
    /// then submits the same prepared proposal again (a client retrying after a lost answer)
    /// and waits for that outcome too. Returns both. Capability [`Capabilities::resubmit`].
    ///
    /// # Errors
    /// Any [`HarnessError`]; [`HarnessError::Unsupported`] by default.
    fn resubmit(&self, payload: Vec<u8>) -> Result<Resubmitted, HarnessError> {
        let _ = payload;
        Err(HarnessError::Unsupported("resubmit"))
    }

    /// Appends `entry` through the leader without its layer, as a faulty or outdated proposer
    /// would, and returns its log index once committed (whether or not it could be applied).
    /// Capability [`Capabilities::unchecked_append`].
    ///
    /// # Errors
    /// Any [`HarnessError`].
    fn append_unchecked(&self, entry: StoredEntry) -> Result<u64, HarnessError> {
        let _ = entry;
        Err(HarnessError::Unsupported("append_unchecked"))
    }

    /// Proposes `payload` through replica `node`'s layer ([`EnvelopeLayer::prepare`] on `node`,
    /// then the engine's proposal on `node`): on a follower the engine forwards the prepared
    /// proposal to the leader, as a client connected to that follower would see it. Waits until
    /// the proposal is committed and applied on `node` and returns the response `node`'s state
    /// machine produced. `node` may also be the leader (no forwarding then).
    ///
    /// An engine may be unable to match some forwarded proposals to their entry (raft-rs: a
    /// forwarded cleartext proposal carries no identity) and report them as failed
    /// ([`ProposeError::Engine`]) even when they were applied; the suite allows that, never an
    /// acknowledgement with the wrong index or response.
    /// Capability [`Capabilities::follower_proposals`].
    ///
    /// # Errors
    /// [`ProposeError::Refused`] when `prepare` failed on `node` (nothing may be appended then),
    /// otherwise [`ProposeError::Engine`] (including a leader refusing a forwarded proposal).
    fn propose_via(&self, node: NodeId, payload: Vec<u8>) -> Result<Response, ProposeError> {
        let _ = (node, payload);
        Err(ProposeError::Engine("not supported by this harness: propose_via".into()))
    }

    /// Holds (`hold = true`) proposals forwarded by followers in flight, between the follower's
    /// layer and the leader (a slow network), or releases (`false`) every held proposal to the
    /// leader and stops holding. A [`propose_via`](Self::propose_via) whose proposal is held
    /// keeps waiting (or times out) meanwhile; other operations go on, and the leader's own
    /// proposals are never held.
    ///
    /// Returns how many forwarded proposals are held after a call with `true` (calling it again
    /// polls), and how many were released by a call with `false`.
    /// Capability [`Capabilities::hold_forwarded`].
    ///
    /// # Errors
    /// Any [`HarnessError`].
    fn hold_forwarded(&self, hold: bool) -> Result<usize, HarnessError> {
        let _ = hold;
        Err(HarnessError::Unsupported("hold_forwarded"))
    }

    /// Switches encryption on through the log, on a [`build_managed`](ClusterBuilder::build_managed)
    /// cluster: installs a new AES-256-GCM data key wrapped under `provider`'s KEK, promotes it,
    /// waits until every running replica seals and no cleartext proposal is left in flight, then
    /// commits the enforce entry, whose index becomes the cutover C on every replica. Safe under
    /// concurrent [`propose`](Self::propose) calls and leader changes (proposals may be refused
    /// or fail meanwhile, never halt a replica). Returns C; when a cutover is already set,
    /// returns it. Capability [`Capabilities::key_lifecycle`].
    ///
    /// # Errors
    /// Any [`HarnessError`]; [`HarnessError::Unsupported`] by default.
    fn enable_encryption(&self, provider: Arc<dyn KeyProvider>) -> Result<u64, HarnessError> {
        let _ = provider;
        Err(HarnessError::Unsupported("enable_encryption"))
    }

    /// Rotates through the log: installs a new AES-256-GCM data key wrapped under `provider`'s
    /// KEK and promotes it (the previous active key becomes decrypt-only). Returns the new key's
    /// id once the promote is applied on the leader.
    /// Capability [`Capabilities::key_lifecycle`].
    ///
    /// # Errors
    /// Any [`HarnessError`]; [`HarnessError::Unsupported`] by default.
    fn rotate_key(&self, provider: Arc<dyn KeyProvider>) -> Result<KeyId, HarnessError> {
        let _ = provider;
        Err(HarnessError::Unsupported("rotate_key"))
    }

    /// Starts sealing through the log without enforcing: installs a new AES-256-GCM data key
    /// wrapped under `provider`'s KEK and promotes it (the core's
    /// `Lifecycle::start_sealing`). Returns the active key. Capability
    /// [`Capabilities::key_lifecycle`].
    ///
    /// # Errors
    /// Any [`HarnessError`]; [`HarnessError::Unsupported`] by default.
    fn start_sealing(&self, provider: Arc<dyn KeyProvider>) -> Result<KeyId, HarnessError> {
        let _ = provider;
        Err(HarnessError::Unsupported("start_sealing"))
    }

    /// Retires `key` through the log (the core's `Lifecycle::retire_key`): `Some(index)` of
    /// the retire entry once the leader applied it, `None` when the key was already
    /// decrypt-only (nothing proposed). Capability [`Capabilities::key_lifecycle`].
    ///
    /// # Errors
    /// [`HarnessError::Refused`] for the active key under a cutover, an unknown or a destroyed
    /// key (nothing proposed); any other [`HarnessError`]; [`HarnessError::Unsupported`] by
    /// default.
    fn retire_key(&self, key: KeyId) -> Result<Option<u64>, HarnessError> {
        let _ = key;
        Err(HarnessError::Unsupported("retire_key"))
    }

    /// Destroys `key` through the log (a decrypt-only key: the suite never destroys the active
    /// one), returning once the destroy entry is applied on the leader. First the proof: with no
    /// proposal sealed under the key in flight and the leader's applied index caught up, every
    /// replica reports what it retains (first log index, retained snapshot) and
    /// [`LayerState::check_destroy`] must pass on the leader; otherwise nothing is proposed.
    /// Capability [`Capabilities::key_lifecycle`] (with [`Capabilities::snapshots`], the suite
    /// checks the refusal and compacts before destroying).
    ///
    /// # Errors
    /// [`HarnessError::DestroyRefused`] when the proof fails, naming the replica; any other
    /// [`HarnessError`]; [`HarnessError::Unsupported`] by default.
    fn destroy_key(&self, key: KeyId) -> Result<(), HarnessError> {
        let _ = key;
        Err(HarnessError::Unsupported("destroy_key"))
    }

    /// `node`'s layer state as it has applied it ([`LayerState::snapshot`]: keys, states, counts,
    /// cutover, applied index). Capability [`Capabilities::key_lifecycle`].
    ///
    /// # Errors
    /// Any [`HarnessError`]; [`HarnessError::Unsupported`] by default.
    fn layer_snapshot(&self, node: NodeId) -> Result<LayerSnapshot, HarnessError> {
        let _ = node;
        Err(HarnessError::Unsupported("layer_snapshot"))
    }

    /// Restarts `node` of a [`build_managed`](ClusterBuilder::build_managed) cluster, keeping its
    /// log, state machine and layer state, with `provider` as its key provider (`None`: no KEK,
    /// as in [`ManagedNode::provider`]). It applies again from its applied index + 1; a halted
    /// replica halts again on the same entry unless the provider repairs the cause. As for
    /// [`restart`](Self::restart), halting while restarting is reported by
    /// [`halted`](Self::halted), not as an error. Capability [`Capabilities::key_lifecycle`].
    ///
    /// # Errors
    /// Any [`HarnessError`]; [`HarnessError::Unsupported`] by default.
    fn restart_with_provider(
        &self,
        node: NodeId,
        provider: Option<Arc<dyn KeyProvider>>,
    ) -> Result<(), HarnessError> {
        let _ = (node, provider);
        Err(HarnessError::Unsupported("restart_with_provider"))
    }

    /// Makes `node` take a snapshot of its state machine (with its layer state) at its applied
    /// index and compact its log up to it: afterwards `node` stores no entry at or below the
    /// returned index ([`read_entry`](Self::read_entry) returns `None`), and a replica that needs
    /// them gets the snapshot instead. Capability [`Capabilities::snapshots`].
    ///
    /// # Errors
    /// Any [`HarnessError`]; [`HarnessError::Unsupported`] by default.
    fn compact(&self, node: NodeId) -> Result<u64, HarnessError> {
        let _ = node;
        Err(HarnessError::Unsupported("compact"))
    }

    /// Adds a new replica to a [`build_managed`](ClusterBuilder::build_managed) cluster, with an
    /// empty log, an empty [`RecordingStateMachine`] and `node`'s layer state and provider, and
    /// makes it a member (voter or learner) that replicates the log. Returns its id once it is a
    /// member; it catches up by itself (by snapshot when the leader compacted its log).
    /// Capability [`Capabilities::snapshots`].
    ///
    /// # Errors
    /// Any [`HarnessError`]; [`HarnessError::Unsupported`] by default.
    fn add_member(&self, node: ManagedNode) -> Result<NodeId, HarnessError> {
        let _ = node;
        Err(HarnessError::Unsupported("add_member"))
    }
}
