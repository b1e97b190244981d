//! Small identifier types shared by the envelope format, the keyring and the adapters.

use std::fmt;

use crate::error::ConfigError;

/// Identifies one data key in a [`Keyring`](crate::Keyring).
///
/// Key ids travel in the clear (but authenticated) in every envelope header, so a replica can tell
/// which key it needs before it has that key. An id is never reused for different key material:
/// the nonce argument in `DESIGN.md` depends on it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct KeyId(pub u32);

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

/// The user-chosen identity of a cluster or Raft group, bound into every envelope's
/// authenticated data.
///
/// An envelope sealed for one cluster never opens in another, even when both share a key.
/// At most [`ClusterId::MAX_LEN`] bytes; it is not secret.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct ClusterId {
    len: u8,
    bytes: [u8; ClusterId::MAX_LEN],
}

impl ClusterId {
    /// The longest identity accepted, in bytes.
    pub const MAX_LEN: usize = 64;

    /// Makes a cluster identity from up to [`ClusterId::MAX_LEN`] bytes.
    ///
    /// # Errors
    /// [`ConfigError::ClusterIdTooLong`] for a longer input.
    pub fn new(id: impl AsRef<[u8]>) -> Result<Self, ConfigError> {
        let id = id.as_ref();
        if id.len() > Self::MAX_LEN {
            return Err(ConfigError::ClusterIdTooLong { len: id.len() });
        }
        let len = id.len() as u8; // <= 64
        let mut bytes = [0u8; Self::MAX_LEN];
        bytes[..id.len()].copy_from_slice(id);
        Ok(Self { len, bytes })
    }

    /// The identity's bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
    }
}

impl fmt::Debug for ClusterId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ClusterId({:?})", String::from_utf8_lossy(self.as_bytes()))
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

/// Names a key-encryption key (KEK): the key a [`KeyProvider`](crate::KeyProvider) wraps data
/// keys under. Not secret; carried in the clear in every key-install control entry.
///
/// 1 to [`KekId::MAX_LEN`] bytes of UTF-8, chosen by the operator: a name such as `"file-kek-1"`,
/// or a KMS key's resource name. It must mean the same KEK on every replica.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct KekId(Box<str>);

impl KekId {
    /// The longest id accepted, in bytes.
    pub const MAX_LEN: usize = 255;

    /// Makes a KEK id.
    ///
    /// # Errors
    /// [`ConfigError::KekIdLength`] when `id` is empty or longer than [`KekId::MAX_LEN`] bytes.
    pub fn new(id: impl Into<String>) -> Result<Self, ConfigError> {
        let id = id.into();
        if id.is_empty() || id.len() > Self::MAX_LEN {
            return Err(ConfigError::KekIdLength { len: id.len() });
        }
        Ok(Self(id.into_boxed_str()))
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for KekId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KekId({:?})", &*self.0)
    }
}

impl fmt::Display for KekId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}
