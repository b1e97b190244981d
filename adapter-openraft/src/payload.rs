//! What travels through the openraft log: the payload of every normal entry.

use std::fmt;

use raft_envelope_core::{wire::EnvelopeHeader, EntryKind, KeyId};
use serde::{Deserialize, Serialize};

/// The `D` of a [`Sealed`](crate::Sealed) type config: the bytes of one normal log entry, tagged
/// with what they are, so the apply side can tell cleartext from an envelope without any key.
///
/// Built only by this crate ([`EnvelopeRaft`](crate::EnvelopeRaft) and the switch-on barrier),
/// so ordinary application code has no way to put a cleartext payload into the log around the
/// layer (a cleartext entry above the cutover would halt every replica). It is not a hard boundary: the type must be `Deserialize` for log
/// stores and networks, so code that deserializes one and calls `Raft::client_write` on
/// [`EnvelopeRaft::raft`](crate::EnvelopeRaft::raft) itself bypasses the layer. Don't: above the
/// cutover such an entry halts every replica.
///
/// The serde form is an externally tagged enum (`Cleartext`, `Envelope`, `Barrier`, `Control`);
/// variants are only ever appended, so logs written before a variant existed still read.
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
    /// A layer control entry (key install / promote / retire / destroy, enforce): the bytes
    /// `LayerState::encode_entry` returned, clear or sealed. Applied by the layer state, never
    /// handed to the user's state machine (which sees an `EntryPayload::Blank`).
    Control(Vec<u8>),
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

    pub(crate) fn control(bytes: Vec<u8>) -> Self {
        Self(Repr::Control(bytes))
    }

    /// True for a layer control entry (key lifecycle or enforce), which the layer applies itself
    /// and the user's state machine never sees.
    pub fn is_layer_control(&self) -> bool {
        matches!(self.0, Repr::Control(_))
    }

    /// What the entry is: [`EntryKind::Cleartext`], [`EntryKind::Envelope`], or
    /// [`EntryKind::Control`] for a layer-owned barrier or layer control entry.
    pub fn kind(&self) -> EntryKind {
        match &self.0 {
            Repr::Cleartext(_) => EntryKind::Cleartext,
            Repr::Envelope(_) => EntryKind::Envelope,
            Repr::Barrier | Repr::Control(_) => EntryKind::Control,
        }
    }

    /// The stored bytes: the encoded request (cleartext), the envelope, the layer control entry,
    /// or nothing (barrier).
    pub fn as_bytes(&self) -> &[u8] {
        match &self.0 {
            Repr::Cleartext(b) | Repr::Envelope(b) | Repr::Control(b) => b,
            Repr::Barrier => &[],
        }
    }

    /// The key id in the envelope's clear header, when this is a readable envelope (or a sealed
    /// layer control entry).
    pub fn key_id(&self) -> Option<KeyId> {
        match &self.0 {
            Repr::Envelope(b) | Repr::Control(b) => EnvelopeHeader::parse(b).ok().map(|h| h.key_id),
            _ => None,
        }
    }

    /// The stored bytes, mutable: for fault injection in tests only.
    #[cfg(feature = "testing")]
    pub(crate) fn bytes_mut(&mut self) -> Option<&mut Vec<u8>> {
        match &mut self.0 {
            Repr::Cleartext(b) | Repr::Envelope(b) | Repr::Control(b) => Some(b),
            Repr::Barrier => None,
        }
    }
}

/// Shows the kind and length only: cleartext bytes may be sensitive.
impl fmt::Debug for EnvelopePayload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match &self.0 {
            Repr::Control(_) => "layer-control".to_string(),
            _ => self.kind().to_string(),
        };
        write!(f, "EnvelopePayload({kind}, {} bytes)", self.as_bytes().len())
    }
}

impl fmt::Display for EnvelopePayload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // Reason: test code; a panic is the failure report.

    use super::*;

    #[test]
    fn control_variant_is_appended_so_old_logs_still_read() {
        // postcard encodes the variant index: the existing variants keep theirs.
        let cases = [
            (EnvelopePayload::cleartext(b"ab".to_vec()), vec![0, 2, b'a', b'b']),
            (EnvelopePayload::envelope(b"ab".to_vec()), vec![1, 2, b'a', b'b']),
            (EnvelopePayload::barrier(), vec![2]),
            (EnvelopePayload::control(b"ab".to_vec()), vec![3, 2, b'a', b'b']),
        ];
        for (payload, bytes) in cases {
            assert_eq!(postcard::to_allocvec(&payload).unwrap(), bytes);
            assert_eq!(postcard::from_bytes::<EnvelopePayload>(&bytes).unwrap(), payload);
        }
        let json = serde_json::to_string(&EnvelopePayload::control(vec![1])).unwrap();
        assert_eq!(json, r#"{"Control":[1]}"#);
    }

    #[test]
    fn control_entry_kind_bytes_and_debug() {
        let p = EnvelopePayload::control(b"SECRET-BYTES".to_vec());
        assert_eq!(p.kind(), EntryKind::Control);
        assert!(p.is_layer_control());
        assert!(!EnvelopePayload::barrier().is_layer_control());
        assert_eq!(p.as_bytes(), b"SECRET-BYTES");
        assert_eq!(p.key_id(), None, "a clear control entry has no key id");
        let shown = format!("{p:?} {p}");
        assert!(!shown.contains("SECRET"), "{shown}");
        assert!(shown.contains("layer-control") && shown.contains("12 bytes"), "{shown}");
    }
}
