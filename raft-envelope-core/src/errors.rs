//! Error types. None of them ever holds key material or payload bytes.

use std::error::Error as StdError;
use std::fmt;
use std::sync::Arc;

use crate::ids::{Algorithm, KeyId, Purpose};

/// A third-party implementation's own error, shared so the enclosing error stays `Clone`.
pub type BoxedError = Arc<dyn StdError + Send + Sync + 'static>;

/// Sealing a proposal failed. The proposal must be refused to its caller and never appended.
///
/// Every variant is *retryable* from the client's point of view: nothing was written, and the
/// same proposal may succeed once the operator fixes the cause (for example rotates to a fresh
/// key when a budget ran out).
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum SealError {
    /// The keyring holds no active key, so nothing can be sealed.
    #[error("no active key to seal with")]
    NoActiveKey,
    /// The active key has used up its sealing budget; rotate to a new key.
    #[error("{key_id} has spent its sealing budget of {limit} seals; rotate to a new key")]
    BudgetExhausted {
        /// The exhausted key.
        key_id: KeyId,
        /// Its budget.
        limit: u64,
    },
    /// The AEAD implementation refused to seal (for example an over-long payload).
    #[error("{algorithm} refused to seal a payload of {len} bytes under {key_id}")]
    Cipher {
        /// The key that was used.
        key_id: KeyId,
        /// Its algorithm.
        algorithm: Algorithm,
        /// The payload length (never the payload).
        len: usize,
    },
    /// A third-party wrapper's own error.
    #[error("wrapper error: {0}")]
    Other(#[source] BoxedError),
}

/// Why an entry could not be handed to the state machine. Fieldless so it can index counters and
/// metrics labels; the matching error carries the details.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[non_exhaustive]
pub enum FailureReason {
    /// The tag did not verify: any bit of header, nonce, ciphertext or tag changed, the wrong key
    /// material, or another cluster's identity.
    AuthenticationFailed,
    /// The envelope names a key this replica does not hold.
    UnknownKey,
    /// The envelope names a key this replica has destroyed.
    DestroyedKey,
    /// The envelope is too short or its header is not well formed.
    Malformed,
    /// The envelope format version is not one this build reads.
    UnsupportedVersion,
    /// The algorithm id is unknown, or differs from the named key's algorithm.
    UnsupportedAlgorithm,
    /// The envelope was made for another purpose (for example a snapshot).
    WrongPurpose,
    /// A cleartext payload sits above the cutover.
    CleartextAboveCutover,
    /// An envelope must be opened but no unwrapper is configured.
    NoUnwrapper,
    /// A third-party unwrapper reported its own error.
    Other,
    /// A layer control entry installs a data key this replica could not unwrap: its key
    /// provider has not supplied it (no KEK, the KMS unreachable, or not fetched yet). Repaired by
    /// providing the key ([`LayerState::prefetch`](crate::LayerState::prefetch)); the same entry
    /// then applies.
    KeyUnavailable,
    /// A layer control entry is malformed, or its command cannot be applied to the keyring (an
    /// unknown or destroyed key, a conflicting install).
    InvalidControl,
    /// A snapshot arrived while a cutover is in force, and snapshots are not sealed yet: restoring
    /// it could install any state without a key, so the replica halts instead.
    UnsealedSnapshot,
    /// An engine-framed barrier (not a sealed control entry) above the cutover: nothing proves
    /// it came from the layer, so a rewritten entry could pass for it. Above the cutover the
    /// layer's barriers are sealed control entries (`ControlCommand::Barrier`).
    UnauthenticatedBarrier,
    /// An integrity checkpoint's digest differs from this replica's own: what it applied in the
    /// checkpoint's range is not what the leader applied (a rewritten or replayed entry on this
    /// replica's log, or any other divergence). The error names the range.
    Diverged,
}

impl FailureReason {
    /// Every reason, in counter order.
    pub const ALL: [FailureReason; 15] = [
        FailureReason::AuthenticationFailed,
        FailureReason::UnknownKey,
        FailureReason::DestroyedKey,
        FailureReason::Malformed,
        FailureReason::UnsupportedVersion,
        FailureReason::UnsupportedAlgorithm,
        FailureReason::WrongPurpose,
        FailureReason::CleartextAboveCutover,
        FailureReason::NoUnwrapper,
        FailureReason::Other,
        FailureReason::KeyUnavailable,
        FailureReason::InvalidControl,
        FailureReason::UnsealedSnapshot,
        FailureReason::UnauthenticatedBarrier,
        FailureReason::Diverged,
    ];

    /// A short stable label, suitable for logs and metrics.
    pub const fn as_str(self) -> &'static str {
        match self {
            FailureReason::AuthenticationFailed => "authentication_failed",
            FailureReason::UnknownKey => "unknown_key",
            FailureReason::DestroyedKey => "destroyed_key",
            FailureReason::Malformed => "malformed",
            FailureReason::UnsupportedVersion => "unsupported_version",
            FailureReason::UnsupportedAlgorithm => "unsupported_algorithm",
            FailureReason::WrongPurpose => "wrong_purpose",
            FailureReason::CleartextAboveCutover => "cleartext_above_cutover",
            FailureReason::NoUnwrapper => "no_unwrapper",
            FailureReason::Other => "other",
            FailureReason::KeyUnavailable => "key_unavailable",
            FailureReason::InvalidControl => "invalid_control",
            FailureReason::UnsealedSnapshot => "unsealed_snapshot",
            FailureReason::UnauthenticatedBarrier => "unauthenticated_barrier",
            FailureReason::Diverged => "diverged",
        }
    }

    pub(crate) const fn index(self) -> usize {
        match self {
            FailureReason::AuthenticationFailed => 0,
            FailureReason::UnknownKey => 1,
            FailureReason::DestroyedKey => 2,
            FailureReason::Malformed => 3,
            FailureReason::UnsupportedVersion => 4,
            FailureReason::UnsupportedAlgorithm => 5,
            FailureReason::WrongPurpose => 6,
            FailureReason::CleartextAboveCutover => 7,
            FailureReason::NoUnwrapper => 8,
            FailureReason::Other => 9,
            FailureReason::KeyUnavailable => 10,
            FailureReason::InvalidControl => 11,
            FailureReason::UnsealedSnapshot => 12,
            FailureReason::UnauthenticatedBarrier => 13,
            FailureReason::Diverged => 14,
        }
    }
}

impl fmt::Display for FailureReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How an envelope failed to parse.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Malformation {
    /// Shorter than a header plus a tag.
    Truncated {
        /// The length seen.
        len: usize,
    },
    /// The reserved flags byte is not zero.
    ReservedFlags(u8),
    /// The purpose byte names no known purpose.
    UnknownPurpose(u8),
}

impl fmt::Display for Malformation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Malformation::Truncated { len } => write!(f, "truncated ({len} bytes)"),
            Malformation::ReservedFlags(b) => write!(f, "reserved flags {b:#04x} set"),
            Malformation::UnknownPurpose(b) => write!(f, "unknown purpose {b:#04x}"),
        }
    }
}

/// Opening an envelope failed. When this happens to a committed entry above the cutover, the
/// replica halts: see [`FatalApplyError`].
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum OpenError {
    /// The tag did not verify (tampering, a wrong key, or another cluster's envelope).
    #[error("authentication failed under {key_id}")]
    AuthenticationFailed {
        /// The key named in the header.
        key_id: KeyId,
    },
    /// The header names a key this keyring does not hold.
    #[error("{key_id} is not in the keyring")]
    UnknownKey {
        /// The key named in the header.
        key_id: KeyId,
    },
    /// The header names a key that has been destroyed.
    #[error("{key_id} has been destroyed")]
    DestroyedKey {
        /// The key named in the header.
        key_id: KeyId,
    },
    /// The envelope is not well formed.
    #[error("malformed envelope: {0}")]
    Malformed(Malformation),
    /// The envelope's format version is not supported.
    #[error("unsupported envelope version {0}")]
    UnsupportedVersion(u8),
    /// The algorithm id is unknown, or does not match the key's algorithm.
    #[error("unsupported algorithm id {algorithm_id} for {key_id:?}")]
    UnsupportedAlgorithm {
        /// The algorithm byte of the header.
        algorithm_id: u8,
        /// The key named in the header, when it could be read.
        key_id: Option<KeyId>,
    },
    /// The envelope was sealed for another purpose.
    #[error("envelope made for {found}, expected {expected} ({key_id})")]
    WrongPurpose {
        /// The purpose the opener asked for.
        expected: Purpose,
        /// The purpose in the header.
        found: Purpose,
        /// The key named in the header.
        key_id: KeyId,
    },
    /// A third-party unwrapper's own error.
    #[error("unwrapper error: {source}")]
    Other {
        /// The key involved, when the unwrapper knows it.
        key_id: Option<KeyId>,
        /// The unwrapper's error.
        #[source]
        source: BoxedError,
    },
}

impl OpenError {
    /// The key id named by the envelope, when it could be read.
    pub fn key_id(&self) -> Option<KeyId> {
        match self {
            OpenError::AuthenticationFailed { key_id }
            | OpenError::UnknownKey { key_id }
            | OpenError::DestroyedKey { key_id }
            | OpenError::WrongPurpose { key_id, .. } => Some(*key_id),
            OpenError::UnsupportedAlgorithm { key_id, .. } | OpenError::Other { key_id, .. } => *key_id,
            OpenError::Malformed(_) | OpenError::UnsupportedVersion(_) => None,
        }
    }

    /// The fieldless reason, for counters and metrics.
    pub fn reason(&self) -> FailureReason {
        match self {
            OpenError::AuthenticationFailed { .. } => FailureReason::AuthenticationFailed,
            OpenError::UnknownKey { .. } => FailureReason::UnknownKey,
            OpenError::DestroyedKey { .. } => FailureReason::DestroyedKey,
            OpenError::Malformed(_) => FailureReason::Malformed,
            OpenError::UnsupportedVersion(_) => FailureReason::UnsupportedVersion,
            OpenError::UnsupportedAlgorithm { .. } => FailureReason::UnsupportedAlgorithm,
            OpenError::WrongPurpose { .. } => FailureReason::WrongPurpose,
            OpenError::Other { .. } => FailureReason::Other,
        }
    }
}

/// A keyring or configuration change was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// A cluster identity longer than [`ClusterId::MAX_LEN`](crate::ClusterId::MAX_LEN).
    #[error("cluster id of {len} bytes is longer than 64")]
    ClusterIdTooLong {
        /// The length given.
        len: usize,
    },
    /// Key material of the wrong length.
    #[error("key material must be 32 bytes, got {len}")]
    KeyLength {
        /// The length given.
        len: usize,
    },
    /// Key id 0 is reserved and never names a data key ([`KeyId::RESERVED`](crate::KeyId::RESERVED)).
    #[error("key id 0 is reserved and never names a data key")]
    ReservedKeyId,
    /// A key id is already in the keyring (ids are never reused, even after destruction).
    #[error("{0} is already in the keyring")]
    DuplicateKeyId(KeyId),
    /// The key id is not in the keyring.
    #[error("{0} is not in the keyring")]
    UnknownKey(KeyId),
    /// The key has been destroyed; it can take no further state change.
    #[error("{0} has been destroyed")]
    KeyDestroyed(KeyId),
    /// The system random generator failed.
    #[error("the system random generator failed")]
    Random,
    /// A key-encryption-key id that is empty or longer than
    /// [`KekId::MAX_LEN`](crate::KekId::MAX_LEN) bytes.
    #[error("KEK id of {len} bytes; expected 1 to 255")]
    KekIdLength {
        /// The length given.
        len: usize,
    },
    /// A wrapped data key that is empty or longer than
    /// [`WrappedKey::MAX_LEN`](crate::WrappedKey::MAX_LEN) bytes.
    #[error("wrapped key of {len} bytes; expected 1 to 4096")]
    WrappedKeyLength {
        /// The length given.
        len: usize,
    },
}

/// Why a node must not append a proposal now ([`LayerState::check_append`]). Retryable: nothing
/// was appended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AppendRefusal {
    /// The node's log may hold a layer control entry it has not applied: its layer state may be
    /// behind its log. Retry once it applied it.
    #[error("a layer control entry in this node's log is not applied yet")]
    ControlPending,
    /// The envelope is sealed under a key that is not the active key (a rotation applied since
    /// it was sealed): seal it again.
    #[error("sealed under {key_id}, which is not the active key")]
    NotActiveKey {
        /// The key it was sealed under.
        key_id: KeyId,
    },
}
