//! The errors that halt a replica: [`FatalApplyError`], and [`ControlError`] for layer control
//! entries and layer snapshots.

use crate::control::ControlDecodeError;
use crate::errors::{ConfigError, FailureReason, OpenError};
use crate::ids::KeyId;
use crate::names::KekId;
use crate::provider::KeyProviderError;

/// A committed entry could not be handed to the state machine: the replica must halt.
///
/// *Invariably fatal* for apply: the adapter stops applying at [`index`](Self::index), does not
/// advance its applied index, hands no byte of the entry to the state machine, and fails again on
/// the same entry after a restart until the cause is repaired. Never contains key or payload bytes.
#[derive(Debug, Clone, thiserror::Error)]
#[error("apply halted at log index {index}{key}: {reason}{detail}",
    key = self.key_id.map(|k| format!(" ({k})")).unwrap_or_default(),
    detail = self.detail())]
#[non_exhaustive]
pub struct FatalApplyError {
    /// The log index of the entry that failed.
    pub index: u64,
    /// The key named by the envelope, when it could be read.
    pub key_id: Option<KeyId>,
    /// Why it failed.
    pub reason: FailureReason,
    /// The cutover in force when the decision was made.
    pub cutover: Option<u64>,
    /// The unwrapper's error, when opening failed.
    pub source: Option<OpenError>,
    /// Why a layer control entry could not be applied, when the entry was one
    /// ([`LayerState::apply_control`](crate::LayerState::apply_control)). Boxed: it is rare, and
    /// keeps this error small on every apply path's `Result`.
    pub control: Option<Box<ControlError>>,
}

impl FatalApplyError {
    /// The error for `index` failing with `reason` and no unwrapper error.
    pub fn new(index: u64, reason: FailureReason, cutover: Option<u64>) -> Self {
        Self { index, key_id: None, reason, cutover, source: None, control: None }
    }

    /// The error for `index` failing because the unwrapper returned `error`.
    pub fn from_open(index: u64, error: OpenError, cutover: Option<u64>) -> Self {
        Self {
            index,
            key_id: error.key_id(),
            reason: error.reason(),
            cutover,
            source: Some(error),
            control: None,
        }
    }

    /// The error for the layer control entry at `index` failing with `error`.
    pub fn from_control(index: u64, error: ControlError, cutover: Option<u64>) -> Self {
        let source = match &error {
            ControlError::Open(open) => Some(open.clone()),
            _ => None,
        };
        Self {
            index,
            key_id: error.key_id(),
            reason: error.reason(),
            cutover,
            source,
            control: Some(Box::new(error)),
        }
    }

    fn detail(&self) -> String {
        match (&self.source, &self.control) {
            (Some(open), _) => format!(" ({open})"),
            (None, Some(control)) => format!(" ({control})"),
            (None, None) => String::new(),
        }
    }
}

/// Why a layer control entry (or a layer snapshot) could not be applied. Never holds key bytes.
///
/// On the apply path it is carried by the [`FatalApplyError`] that halts the replica
/// ([`FatalApplyError::control`]).
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum ControlError {
    /// The entry is not a well-formed control entry.
    #[error("malformed control entry: {0}")]
    Decode(#[from] ControlDecodeError),
    /// A sealed control entry did not open (any [`OpenError`]: tampering, unknown or destroyed
    /// key, wrong purpose, another cluster).
    #[error("sealed control entry did not open: {0}")]
    Open(OpenError),
    /// A control entry in the clear above the cutover: above it, control entries must be sealed.
    #[error("control entry in the clear above the cutover {cutover}")]
    CleartextAboveCutover {
        /// The cutover.
        cutover: u64,
    },
    /// The command names a key the layer never installed.
    #[error("{0} was never installed")]
    UnknownKey(KeyId),
    /// The command needs a live key, but it has been destroyed (promote, retire, or re-install).
    #[error("{0} has been destroyed")]
    KeyDestroyed(KeyId),
    /// An install names a key id already installed with other material or settings, or held by
    /// the keyring outside the layer state. Key ids are never reused.
    #[error("{0} is already installed with other material")]
    ConflictingInstall(KeyId),
    /// This replica holds no unwrapped copy of the key the install entry (or snapshot) needs:
    /// call [`LayerState::prefetch`] (or [`LayerState::prefetch_snapshot`]) with a provider
    /// holding the KEK, then apply again.
    #[error("{key_id} is not unwrapped on this replica (KEK {kek_id}); provide the key and retry")]
    KeyUnavailable {
        /// The data key.
        key_id: KeyId,
        /// The KEK it is wrapped under.
        kek_id: KekId,
    },
    /// The key provider failed (prefetching, or wrapping a new key).
    #[error("key provider failed for {key_id}: {source}")]
    Provider {
        /// The data key.
        key_id: KeyId,
        /// The provider's error.
        #[source]
        source: KeyProviderError,
    },
    /// The keyring refused the change (for example the system random generator failed).
    #[error("keyring refused: {0}")]
    Keyring(ConfigError),
    /// A layer snapshot is not well formed.
    #[error("malformed layer snapshot: {what}")]
    MalformedSnapshot {
        /// What is wrong.
        what: &'static str,
    },
    /// With a cutover in force, the command would retire or destroy the only key that seals:
    /// rotate to a new key first ([`LayerState::check_command`]).
    #[error("{0} is the active key and a cutover is in force: rotate to a new key first")]
    ActiveKeyNeeded(KeyId),
    /// A sealed snapshot did not open (tampering, another cluster or index, a key not held here).
    #[error("sealed snapshot did not open: {0}")]
    SnapshotOpen(OpenError),
    /// A snapshot in the clear whose layer state has a cutover or an active key: such snapshots
    /// must be sealed.
    #[error("snapshot in the clear, but its layer state requires sealing")]
    UnsealedSnapshot,
    /// An integrity checkpoint's digest differs from this replica's: it diverged from the
    /// leader somewhere in `from..=through`.
    #[error(
        "diverged from the leader: the applied entries {from}..={through} differ (integrity checkpoint)"
    )]
    Diverged {
        /// The first index of the range (after the last verified checkpoint).
        from: u64,
        /// The last index of the range.
        through: u64,
    },
    /// A checkpoint names an index at or above its own: no leader proposes one.
    #[error("checkpoint through {through} is not below its own index")]
    CheckpointAhead {
        /// The index it names.
        through: u64,
    },
    /// A layer snapshot contradicts this layer state (it is older, or another history).
    #[error("layer snapshot inconsistent with this layer state{}: {what}", key_id.map(|k| format!(" ({k})")).unwrap_or_default())]
    InconsistentSnapshot {
        /// The key concerned, if any.
        key_id: Option<KeyId>,
        /// What differs.
        what: &'static str,
    },
}

impl ControlError {
    /// The key involved, when there is one.
    pub fn key_id(&self) -> Option<KeyId> {
        match self {
            ControlError::Open(e) => e.key_id(),
            ControlError::SnapshotOpen(e) => e.key_id(),
            ControlError::UnknownKey(k)
            | ControlError::KeyDestroyed(k)
            | ControlError::ActiveKeyNeeded(k)
            | ControlError::ConflictingInstall(k) => Some(*k),
            ControlError::KeyUnavailable { key_id, .. } | ControlError::Provider { key_id, .. } => {
                Some(*key_id)
            }
            ControlError::InconsistentSnapshot { key_id, .. } => *key_id,
            ControlError::Decode(_)
            | ControlError::CleartextAboveCutover { .. }
            | ControlError::Keyring(_)
            | ControlError::UnsealedSnapshot
            | ControlError::Diverged { .. }
            | ControlError::CheckpointAhead { .. }
            | ControlError::MalformedSnapshot { .. } => None,
        }
    }

    /// The fieldless reason, for counters, metrics and [`FatalApplyError::reason`].
    pub fn reason(&self) -> FailureReason {
        match self {
            ControlError::Open(e) | ControlError::SnapshotOpen(e) => e.reason(),
            ControlError::UnsealedSnapshot => FailureReason::UnsealedSnapshot,
            ControlError::CleartextAboveCutover { .. } => FailureReason::CleartextAboveCutover,
            ControlError::KeyUnavailable { .. } | ControlError::Provider { .. } => {
                FailureReason::KeyUnavailable
            }
            ControlError::Keyring(_) => FailureReason::Other,
            ControlError::Diverged { .. } => FailureReason::Diverged,
            ControlError::Decode(_)
            | ControlError::UnknownKey(_)
            | ControlError::KeyDestroyed(_)
            | ControlError::ConflictingInstall(_)
            | ControlError::ActiveKeyNeeded(_)
            | ControlError::CheckpointAhead { .. }
            | ControlError::MalformedSnapshot { .. }
            | ControlError::InconsistentSnapshot { .. } => FailureReason::InvalidControl,
        }
    }
}
