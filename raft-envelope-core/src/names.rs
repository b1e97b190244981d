//! Validated names: the cluster identity bound into every envelope, and KEK ids.

use std::fmt;

use crate::errors::ConfigError;

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
