//! How a raft-rs entry tells, without any key, what it is: the context marker.
//!
//! raft-rs stores two free byte fields per entry, `data` and `context`. This adapter keeps `data`
//! for the payload (cleartext byte for byte, or the envelope exactly as the core sealed it) and
//! marks its own entries in `context`:
//!
//! ```text
//! offset  size  field
//!      0     8  magic        E5 52 45 4E 56 0D 0A 1A   ("\xE5RENV\r\n\x1A")
//!      8     1  version      0x01
//!      9     1  kind         0x01 envelope, 0x02 switch-on barrier, 0x03 layer control
//!     10     8  proposal id  u64 big-endian
//! ```
//!
//! | entry | kind |
//! |---|---|
//! | `EntryConfChange`, `EntryConfChangeV2` | [`EntryKind::Control`] |
//! | `EntryNormal`, empty `data` and empty `context` (the leader's no-op, a refused conf change) | [`EntryKind::Control`] |
//! | `EntryNormal`, context = barrier marker, empty `data` | [`EntryKind::Control`] |
//! | `EntryNormal`, context = layer control marker (`data` = [`LayerState::encode_entry`](raft_envelope_core::LayerState::encode_entry) bytes) | [`EntryKind::Control`]; applied by [`LayerState::apply_control`](raft_envelope_core::LayerState::apply_control), never by the gate nor the user's state machine ([`is_layer_control`]) |
//! | `EntryNormal`, context = envelope marker | [`EntryKind::Envelope`] |
//! | `EntryNormal`, context starts with the magic but is anything else | [`EntryKind::Envelope`] (it then fails to open: fail closed) |
//! | any other `EntryNormal` | [`EntryKind::Cleartext`] |
//!
//! Why it cannot be confused with a user's own context: the proposer refuses any user context
//! that starts with the magic (so a correct client never produces one), and while sealing it
//! refuses any non-empty user context at all (a context is stored and replicated in the clear and
//! is not authenticated, so accepting one would put user bytes in the clear above the cutover).
//! The magic borrows PNG's signature idea: a high-bit byte, CR LF and ^Z, so a text context
//! never starts with it by accident.
//!
//! A layer control entry is classified [`EntryKind::Control`] so that nothing that only knows
//! the three kinds (the gate, a check for cleartext above the cutover) ever treats its `data` as
//! a payload; the applier recognises it first ([`is_layer_control`]) and hands its `data` to the
//! layer state, which applies the control table of `DESIGN.md` §10.2 (clear at or below the
//! cutover, sealed above it, fail closed otherwise). Whatever `data` holds, it never reaches the
//! user's state machine: at worst it halts the replica.
//!
//! The marker's proposal id is informational only and never completes a proposal: it is not
//! authenticated. The adapter routes a forwarded envelope by the proposal id of the envelope
//! header (authenticated by opening) and a barrier only by the `(index, term)` its leader
//! appended it at.
//!
//! An empty payload with an empty context would be indistinguishable from raft-rs's own no-op
//! entry (a control entry), so the proposer refuses empty payloads
//! ([`ProposeError::EmptyPayload`](crate::ProposeError::EmptyPayload)).

use raft::eraftpb::{Entry, EntryType};
use raft_envelope_core::{EntryKind, ProposalId};

/// The first 8 bytes of every context this adapter writes.
pub const CONTEXT_MAGIC: [u8; 8] = [0xE5, b'R', b'E', b'N', b'V', b'\r', b'\n', 0x1A];
/// The context marker format version this build writes and reads.
pub const CONTEXT_VERSION: u8 = 1;
/// Length of a context marker in bytes.
pub const CONTEXT_LEN: usize = 18;

const KIND_ENVELOPE: u8 = 1;
const KIND_BARRIER: u8 = 2;
const KIND_LAYER_CONTROL: u8 = 3;

/// What a context marker says an entry is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum MarkerKind {
    /// `data` is an envelope made by [`EnvelopeLayer::prepare`](raft_envelope_core::EnvelopeLayer::prepare).
    Envelope,
    /// The switch-on barrier: a control entry with empty `data`, never handed to the state machine.
    Barrier,
    /// A layer control entry: `data` is a control entry as
    /// [`LayerState::encode_entry`](raft_envelope_core::LayerState::encode_entry) wrote it (clear
    /// or sealed), applied by the layer state, never handed to the state machine.
    LayerControl,
}

/// A decoded context marker.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ContextMarker {
    /// What the entry is.
    pub kind: MarkerKind,
    /// The proposal id the proposer chose (not authenticated: never used to complete a proposal).
    pub proposal_id: ProposalId,
}

impl ContextMarker {
    /// The marker of an envelope entry.
    pub fn envelope(proposal_id: ProposalId) -> Self {
        Self { kind: MarkerKind::Envelope, proposal_id }
    }

    /// The marker of a switch-on barrier entry.
    pub fn barrier(proposal_id: ProposalId) -> Self {
        Self { kind: MarkerKind::Barrier, proposal_id }
    }

    /// The marker of a layer control entry.
    pub fn layer_control(proposal_id: ProposalId) -> Self {
        Self { kind: MarkerKind::LayerControl, proposal_id }
    }

    /// The marker's [`CONTEXT_LEN`] wire bytes.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(CONTEXT_LEN);
        out.extend_from_slice(&CONTEXT_MAGIC);
        out.push(CONTEXT_VERSION);
        out.push(match self.kind {
            MarkerKind::Envelope => KIND_ENVELOPE,
            MarkerKind::Barrier => KIND_BARRIER,
            MarkerKind::LayerControl => KIND_LAYER_CONTROL,
        });
        out.extend_from_slice(&self.proposal_id.0.to_be_bytes());
        out
    }

    /// Decodes a context. `None` when the context does not start with [`CONTEXT_MAGIC`] (a
    /// user's context, or none); `Some(Err(()))` when it does but is not a marker this build
    /// knows. Total: never panics, never allocates.
    #[allow(clippy::result_unit_err)] // reason: the only information is "not a known marker"
    pub fn decode(context: &[u8]) -> Option<Result<Self, ()>> {
        if !starts_with_magic(context) {
            return None;
        }
        let Some(bytes) = context.first_chunk::<CONTEXT_LEN>() else { return Some(Err(())) };
        if context.len() != CONTEXT_LEN || bytes[8] != CONTEXT_VERSION {
            return Some(Err(()));
        }
        let kind = match bytes[9] {
            KIND_ENVELOPE => MarkerKind::Envelope,
            KIND_BARRIER => MarkerKind::Barrier,
            KIND_LAYER_CONTROL => MarkerKind::LayerControl,
            _ => return Some(Err(())),
        };
        let mut id = [0u8; 8];
        id.copy_from_slice(&bytes[10..CONTEXT_LEN]);
        Some(Ok(Self { kind, proposal_id: ProposalId(u64::from_be_bytes(id)) }))
    }
}

/// True when `context` starts with [`CONTEXT_MAGIC`]: reserved for this adapter.
pub fn starts_with_magic(context: &[u8]) -> bool {
    context.starts_with(&CONTEXT_MAGIC)
}

/// What `entry` is, as this adapter's framing tells without any key (table in the module docs).
pub fn classify(entry: &Entry) -> EntryKind {
    match entry.get_entry_type() {
        EntryType::EntryConfChange | EntryType::EntryConfChangeV2 => EntryKind::Control,
        EntryType::EntryNormal => classify_normal(entry.get_context(), entry.get_data()),
    }
}

/// [`classify`] for a normal entry given its `context` and `data`.
pub fn classify_normal(context: &[u8], data: &[u8]) -> EntryKind {
    match ContextMarker::decode(context) {
        None if data.is_empty() && context.is_empty() => EntryKind::Control,
        None => EntryKind::Cleartext,
        Some(Ok(ContextMarker { kind: MarkerKind::Barrier, .. })) if data.is_empty() => EntryKind::Control,
        // A barrier carrying data is no barrier this adapter wrote: treat the data as cleartext,
        // which halts above the cutover.
        Some(Ok(ContextMarker { kind: MarkerKind::Barrier, .. })) => EntryKind::Cleartext,
        // The layer's own entry: routed to the layer state before the gate (`is_layer_control`).
        Some(Ok(ContextMarker { kind: MarkerKind::LayerControl, .. })) => EntryKind::Control,
        // An envelope, or a marker from another version: never passed on as plaintext.
        Some(_) => EntryKind::Envelope,
    }
}

/// True when `entry` is a layer control entry (a normal entry whose context is the layer control
/// marker): its `data` goes to
/// [`LayerState::apply_control`](raft_envelope_core::LayerState::apply_control), never to the
/// gate's payload path nor to the user's state machine.
pub fn is_layer_control(entry: &Entry) -> bool {
    entry.get_entry_type() == EntryType::EntryNormal
        && matches!(
            ContextMarker::decode(entry.get_context()),
            Some(Ok(ContextMarker { kind: MarkerKind::LayerControl, .. }))
        )
}

/// True for the layer's engine-framed barrier: an `EntryNormal` with a barrier marker and no
/// data. Above a cutover such an entry halts the replica
/// ([`ApplyGate::refuse_unsealed_barrier`](raft_envelope_core::ApplyGate::refuse_unsealed_barrier)).
pub fn is_barrier(entry: &Entry) -> bool {
    entry.get_entry_type() == EntryType::EntryNormal
        && entry.get_data().is_empty()
        && matches!(
            ContextMarker::decode(entry.get_context()),
            Some(Ok(ContextMarker { kind: MarkerKind::Barrier, .. }))
        )
}

/// The proposal id a context marker names, if any. Not authenticated: for diagnostics only, the
/// adapter never completes a proposal from it.
pub fn marker_proposal_id(entry: &Entry) -> Option<ProposalId> {
    match ContextMarker::decode(entry.get_context()) {
        Some(Ok(m)) => Some(m.proposal_id),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn normal(context: &[u8], data: &[u8]) -> Entry {
        Entry { context: context.to_vec().into(), data: data.to_vec().into(), ..Default::default() }
    }

    #[test]
    fn table() {
        let env = ContextMarker::envelope(ProposalId(7)).encode();
        let bar = ContextMarker::barrier(ProposalId(8)).encode();
        assert_eq!(env.len(), CONTEXT_LEN);
        assert_eq!(classify(&normal(b"", b"")), EntryKind::Control);
        assert_eq!(classify(&normal(b"", b"x")), EntryKind::Cleartext);
        assert_eq!(classify(&normal(b"user", b"")), EntryKind::Cleartext);
        assert_eq!(classify(&normal(&env, b"x")), EntryKind::Envelope);
        assert_eq!(classify(&normal(&env, b"")), EntryKind::Envelope);
        assert_eq!(classify(&normal(&bar, b"")), EntryKind::Control);
        assert_eq!(classify(&normal(&bar, b"x")), EntryKind::Cleartext);
        assert_eq!(classify(&normal(&CONTEXT_MAGIC, b"x")), EntryKind::Envelope);
        let mut future = env.clone();
        future[8] = 2;
        assert_eq!(classify(&normal(&future, b"x")), EntryKind::Envelope);
        let mut cc = normal(b"", b"\x08\x01");
        cc.set_entry_type(EntryType::EntryConfChange);
        assert_eq!(classify(&cc), EntryKind::Control);
        assert_eq!(marker_proposal_id(&normal(&env, b"x")), Some(ProposalId(7)));
        let ctl = ContextMarker::layer_control(ProposalId(9)).encode();
        assert_eq!(ctl[9], 0x03);
        assert_eq!(classify(&normal(&ctl, b"\xE5RCTL")), EntryKind::Control);
        assert_eq!(classify(&normal(&ctl, b"")), EntryKind::Control);
        assert!(is_layer_control(&normal(&ctl, b"x")));
        assert!(!is_layer_control(&normal(&bar, b"")));
        assert!(!is_layer_control(&normal(&env, b"x")));
        let mut cc_ctl = normal(&ctl, b"x");
        cc_ctl.set_entry_type(EntryType::EntryConfChange);
        assert!(!is_layer_control(&cc_ctl));
    }

    #[test]
    fn decode_is_total() {
        for len in 0..40 {
            let mut c = CONTEXT_MAGIC.to_vec();
            c.resize(len.max(8), 0xAA);
            let _ = ContextMarker::decode(&c[..len.min(c.len())]);
        }
        let m = ContextMarker::envelope(ProposalId(u64::MAX));
        assert_eq!(ContextMarker::decode(&m.encode()), Some(Ok(m)));
    }
}
