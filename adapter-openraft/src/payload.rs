//! What travels through the openraft log: the payload of every normal entry.

use std::fmt;

use raft_envelope_core::{EntryKind, EnvelopeHeader, KeyId};
use serde::{Deserialize, Serialize};

/// The `D` of a [`Sealed`](crate::Sealed) type config: the bytes of one normal log entry, tagged
/// with what they are, so the apply side can tell cleartext from an envelope without any key.
///
/// Built only by this crate ([`EnvelopeRaft`](crate::EnvelopeRaft) and the switch-on barrier),
/// so ordinary application code has no way to put a cleartext payload into the log around the
/// layer (ENGINES.md pitfall 7). It is not a hard boundary: the type must be `Deserialize` for log
/// stores and networks, so code that deserializes one and calls `Raft::client_write` on
/// [`EnvelopeRaft::raft`](crate::EnvelopeRaft::raft) itself bypasses the layer. Don't: above the
/// cutover such an entry halts every replica.
///
/// The serde form is an externally tagged enum (`Cleartext`, `Envelope`, `Barrier`); new
/// variants (replicated control entries) are added without breaking old logs.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct EnvelopePayload(pub(crate) Repr);

#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum Repr {
    /// The application request encoded by the codec, in the clear.
    Cleartext(Vec<u8>),
    /// The encoded application request, sealed.
    Envelope(Vec<u8>),
    /// A layer-owned control entry with no application data: the switch-on barrier. The user's
    /// state machine sees it as an `EntryPayload::Blank`.
    Barrier,
}

impl EnvelopePayload {
    pub(crate) fn cleartext(bytes: Vec<u8>) -> Self {
        Self(Repr::Cleartext(bytes))
    }

    pub(crate) fn envelope(bytes: Vec<u8>) -> Self {
        Self(Repr::Envelope(bytes))
    }

    pub(crate) fn barrier() -> Self {
        Self(Repr::Barrier)
    }

    /// What the entry is: [`EntryKind::Cleartext`], [`EntryKind::Envelope`], or
    /// [`EntryKind::Control`] for a layer-owned barrier.
    pub fn kind(&self) -> EntryKind {
        match &self.0 {
            Repr::Cleartext(_) => EntryKind::Cleartext,
            Repr::Envelope(_) => EntryKind::Envelope,
            Repr::Barrier => EntryKind::Control,
        }
    }

    /// The stored bytes: the encoded request (cleartext), the envelope, or nothing (barrier).
    pub fn as_bytes(&self) -> &[u8] {
        match &self.0 {
            Repr::Cleartext(b) | Repr::Envelope(b) => b,
            Repr::Barrier => &[],
        }
    }

    /// The key id in the envelope's clear header, when this is a readable envelope.
    pub fn key_id(&self) -> Option<KeyId> {
        match &self.0 {
            Repr::Envelope(b) => EnvelopeHeader::parse(b).ok().map(|h| h.key_id),
            _ => None,
        }
    }

    /// The stored bytes, mutable: for fault injection in tests only.
    pub(crate) fn bytes_mut(&mut self) -> Option<&mut Vec<u8>> {
        match &mut self.0 {
            Repr::Cleartext(b) | Repr::Envelope(b) => Some(b),
            Repr::Barrier => None,
        }
    }
}

/// Shows the kind and length only: cleartext bytes may be sensitive.
impl fmt::Debug for EnvelopePayload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "EnvelopePayload({}, {} bytes)", self.kind(), self.as_bytes().len())
    }
}

impl fmt::Display for EnvelopePayload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}
