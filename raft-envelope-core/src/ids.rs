//! Small identifier types shared by the envelope format, the keyring and the adapters.

use std::fmt;

/// Identifies one data key in a [`Keyring`](crate::Keyring).
///
/// Key ids travel in the clear (but authenticated) in every envelope header, so a replica can tell
/// which key it needs before it has that key. An id is never reused for different key material:
/// the nonce argument in `DESIGN.md` depends on it. Id 0 is reserved ([`KeyId::RESERVED`]):
/// a keyring refuses it as a data key id ([`ConfigError::ReservedKeyId`](crate::ConfigError::ReservedKeyId)), so an envelope
/// header naming key 0 never opens.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct KeyId(pub u32);

impl KeyId {
    /// Key id 0: never a data key. Free for a future use of the format (for example "no key"
    /// in a record where a key id field is fixed-width); data keys start at 1.
    pub const RESERVED: KeyId = KeyId(0);
}

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "key#{}", self.0)
    }
}

/// Identifies one client proposal, chosen by the proposing adapter.
///
/// It is carried in the clear but authenticated inside the envelope header, so an adapter can
/// route the applied result back to the waiting client without opening the envelope, and a state
/// machine can detect a replayed envelope.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ProposalId(pub u64);

impl fmt::Display for ProposalId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "proposal#{}", self.0)
    }
}

/// What an envelope was made for. Bound into the authenticated data and checked on open, so an
/// envelope made for one use (say a snapshot) is never accepted for another (a log payload).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[non_exhaustive]
pub enum Purpose {
    /// A replicated Raft log payload (a client proposal).
    RaftPayload,
    /// A state-machine snapshot.
    Snapshot,
    /// A data key wrapped under a key-encryption key.
    KeyWrap,
    /// A control entry owned by the envelope layer.
    Control,
}

impl Purpose {
    /// The wire value of this purpose (byte 2 of the header).
    pub const fn wire_id(self) -> u8 {
        match self {
            Purpose::RaftPayload => 1,
            Purpose::Snapshot => 2,
            Purpose::KeyWrap => 3,
            Purpose::Control => 4,
        }
    }

    /// The purpose with this wire value, if any.
    pub const fn from_wire_id(id: u8) -> Option<Self> {
        match id {
            1 => Some(Purpose::RaftPayload),
            2 => Some(Purpose::Snapshot),
            3 => Some(Purpose::KeyWrap),
            4 => Some(Purpose::Control),
            _ => None,
        }
    }
}

impl fmt::Display for Purpose {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Purpose::RaftPayload => "raft-payload",
            Purpose::Snapshot => "snapshot",
            Purpose::KeyWrap => "key-wrap",
            Purpose::Control => "control",
        })
    }
}

/// The AEAD algorithm of a key, and of every envelope sealed under it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[non_exhaustive]
pub enum Algorithm {
    /// AES-256-GCM (NIST SP 800-38D), 96-bit nonce, 128-bit tag.
    Aes256Gcm,
    /// AES-256-GCM-SIV (RFC 8452), 96-bit nonce, 128-bit tag; nonce-misuse resistant.
    Aes256GcmSiv,
}

impl Algorithm {
    /// The wire value of this algorithm (byte 1 of the header).
    pub const fn wire_id(self) -> u8 {
        match self {
            Algorithm::Aes256Gcm => 1,
            Algorithm::Aes256GcmSiv => 2,
        }
    }

    /// The algorithm with this wire value, if any.
    pub const fn from_wire_id(id: u8) -> Option<Self> {
        match id {
            1 => Some(Algorithm::Aes256Gcm),
            2 => Some(Algorithm::Aes256GcmSiv),
            _ => None,
        }
    }

    pub(crate) fn aead(self) -> &'static aws_lc_rs::aead::Algorithm {
        match self {
            Algorithm::Aes256Gcm => &aws_lc_rs::aead::AES_256_GCM,
            Algorithm::Aes256GcmSiv => &aws_lc_rs::aead::AES_256_GCM_SIV,
        }
    }
}

impl fmt::Display for Algorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Algorithm::Aes256Gcm => "AES-256-GCM",
            Algorithm::Aes256GcmSiv => "AES-256-GCM-SIV",
        })
    }
}
