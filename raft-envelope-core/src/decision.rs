//! The one apply-side decision every adapter calls for every committed entry (SPEC R2, R3).

use std::collections::BTreeMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crate::apply_error::FatalApplyError;
use crate::envelope::EnvelopeHeader;
use crate::errors::FailureReason;
use crate::traits::{CutoverSource, PayloadUnwrapper};

/// What a committed entry is, as told by the adapter's framing without any key.
///
/// The layer's own control entries (key lifecycle, enforce) are not an entry kind: the adapter's
/// framing routes them to [`LayerState::apply_control`](crate::LayerState::apply_control), never
/// through [`decide`] and never to the state machine.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum EntryKind {
    /// An application payload in the clear (legacy history, or the layer is not sealing yet).
    Cleartext,
    /// An application payload sealed into an envelope.
    Envelope,
    /// An entry the engine itself interprets (openraft `Blank`/`Membership`, raft-rs empty leader
    /// entries and conf changes). Never wrapped, unwrapped or rejected.
    Control,
}

impl fmt::Display for EntryKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            EntryKind::Cleartext => "cleartext",
            EntryKind::Envelope => "envelope",
            EntryKind::Control => "control",
        })
    }
}

/// What to hand to the state machine for an entry that may be applied.
#[derive(PartialEq, Eq)]
pub enum Decision<'a> {
    /// Hand the entry's bytes over unchanged (cleartext at or below the cutover, or a control
    /// entry).
    PassThrough(&'a [u8]),
    /// Hand over this plaintext, opened from the entry's envelope.
    Opened(Vec<u8>),
}

impl Decision<'_> {
    /// The bytes to hand to the state machine.
    pub fn as_bytes(&self) -> &[u8] {
        match self {
            Decision::PassThrough(bytes) => bytes,
            Decision::Opened(plain) => plain,
        }
    }

    /// The bytes to hand to the state machine, owned.
    pub fn into_owned(self) -> Vec<u8> {
        match self {
            Decision::PassThrough(bytes) => bytes.to_vec(),
            Decision::Opened(plain) => plain,
        }
    }
}

/// Shows only lengths: the bytes may be plaintext.
impl fmt::Debug for Decision<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Decision::PassThrough(b) => write!(f, "PassThrough({} bytes)", b.len()),
            Decision::Opened(b) => write!(f, "Opened({} bytes)", b.len()),
        }
    }
}

/// Decides what happens to the committed entry at `index`: pass it through, hand over its opened
/// plaintext, or halt the replica.
///
/// | entry at `index` | `index <= cutover`, or no cutover | `index > cutover` |
/// |---|---|---|
/// | [`EntryKind::Cleartext`] | pass through | halt |
/// | [`EntryKind::Envelope`], opens | opened plaintext | opened plaintext |
/// | [`EntryKind::Envelope`], fails or no unwrapper | halt | halt |
/// | [`EntryKind::Control`] | pass through | pass through |
///
/// `Some(u64::MAX)` behaves exactly like `None`. Every halt emits a `tracing` event at error level
/// with the index, the key id when readable, the reason and the cutover, never any payload byte.
///
/// Adapters must not re-implement any part of this table; they call this function (or
/// [`ApplyGate::decide`], which adds counters) and act on the result: apply, or stop without
/// advancing the applied index.
///
/// # Errors
/// A [`FatalApplyError`]: the replica must halt at `index`.
pub fn decide<'a>(
    index: u64,
    kind: EntryKind,
    bytes: &'a [u8],
    cutover: Option<u64>,
    unwrapper: Option<&dyn PayloadUnwrapper>,
) -> Result<Decision<'a>, FatalApplyError> {
    let result = match verdict(index, kind, bytes, cutover, unwrapper) {
        Ok(None) => Ok(Decision::PassThrough(bytes)),
        Ok(Some(unwrapper)) => unwrapper
            .open(bytes)
            .map(Decision::Opened)
            .map_err(|e| FatalApplyError::from_open(index, e, cutover)),
        Err(e) => Err(e),
    };
    traced(result, kind)
}

/// [`decide`] with a buffer of the adapter's own: an opened envelope's plaintext is written into
/// `out` ([`PayloadUnwrapper::open_into`]) and returned from there, anything passed through is
/// returned as `bytes`. An adapter that keeps `out` from entry to entry allocates nothing per
/// entry, whatever the engine's entries are (shared, borrowed).
///
/// # Errors
/// A [`FatalApplyError`]: the replica must halt at `index`.
pub fn decide_into<'a>(
    index: u64,
    kind: EntryKind,
    bytes: &'a [u8],
    out: &'a mut Vec<u8>,
    cutover: Option<u64>,
    unwrapper: Option<&dyn PayloadUnwrapper>,
) -> Result<&'a [u8], FatalApplyError> {
    let result = match verdict(index, kind, bytes, cutover, unwrapper) {
        Ok(None) => Ok(bytes),
        Ok(Some(unwrapper)) => match unwrapper.open_into(bytes, out) {
            Ok(()) => Ok(out.as_slice()),
            Err(e) => Err(FatalApplyError::from_open(index, e, cutover)),
        },
        Err(e) => Err(e),
    };
    traced(result, kind)
}

/// [`decide`] for an entry whose bytes the adapter owns: cleartext and control entries come back
/// as they are (moved, not copied), envelopes are opened in place
/// ([`PayloadUnwrapper::open_owned`]), saving an allocation and a copy per entry.
///
/// # Errors
/// A [`FatalApplyError`]: the replica must halt at `index`.
pub fn decide_owned(
    index: u64,
    kind: EntryKind,
    bytes: Vec<u8>,
    cutover: Option<u64>,
    unwrapper: Option<&dyn PayloadUnwrapper>,
) -> Result<Vec<u8>, FatalApplyError> {
    let result = match verdict(index, kind, &bytes, cutover, unwrapper) {
        Ok(None) => Ok(bytes),
        Ok(Some(unwrapper)) => {
            unwrapper.open_owned(bytes).map_err(|e| FatalApplyError::from_open(index, e, cutover))
        }
        Err(e) => Err(e),
    };
    traced(result, kind)
}

/// The decision table without opening: `Ok(None)` hands the bytes over unchanged, `Ok(Some(u))`
/// opens them with `u`, `Err` halts. The only place the table is written down in code.
fn verdict<'u>(
    index: u64,
    kind: EntryKind,
    bytes: &[u8],
    cutover: Option<u64>,
    unwrapper: Option<&'u dyn PayloadUnwrapper>,
) -> Result<Option<&'u dyn PayloadUnwrapper>, FatalApplyError> {
    match kind {
        EntryKind::Control => Ok(None),
        EntryKind::Cleartext => match cutover {
            Some(c) if c != u64::MAX && index > c => {
                Err(FatalApplyError::new(index, FailureReason::CleartextAboveCutover, cutover))
            }
            _ => Ok(None),
        },
        EntryKind::Envelope => match unwrapper {
            None => {
                let mut error = FatalApplyError::new(index, FailureReason::NoUnwrapper, cutover);
                error.key_id = EnvelopeHeader::parse(bytes).ok().map(|h| h.key_id);
                Err(error)
            }
            Some(unwrapper) => Ok(Some(unwrapper)),
        },
    }
}

/// Emits the one error-level event every halt gets.
fn traced<T>(result: Result<T, FatalApplyError>, kind: EntryKind) -> Result<T, FatalApplyError> {
    if let Err(error) = &result {
        tracing::error!(
            index = error.index,
            key_id = error.key_id.map(|k| k.0),
            reason = error.reason.as_str(),
            cutover = error.cutover,
            entry_kind = %kind,
            "envelope layer halted apply: {error}"
        );
    }
    result
}

/// Counters kept by an [`ApplyGate`], as returned by [`ApplyGate::stats`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ApplyStats {
    /// Entries handed over unchanged (cleartext allowed by the cutover, and control entries).
    pub passed_through: u64,
    /// Envelopes opened and handed over as plaintext.
    pub opened: u64,
    /// Halting decisions, by reason (only non-zero reasons appear).
    pub halts: BTreeMap<crate::errors::FailureReason, u64>,
}

/// An adapter's apply-side configuration: the cutover source and the unwrapper, with counters.
///
/// Both adapters hold one and call [`decide`](Self::decide) for every committed entry in log
/// order.
///
/// ```
/// use std::sync::Arc;
/// use raft_envelope_core::{Algorithm, ApplyGate, ClusterId, Cutover, EntryKind, EnvelopeCipher, KeyId, Keyring, PayloadWrapper, ProposalId, SecretKey};
/// use raft_envelope_core::apply::decide;
/// use raft_envelope_core::error::{ConfigError, FailureReason};
///
/// let ring = Arc::new(Keyring::with_active_key(KeyId(1), Algorithm::Aes256Gcm, SecretKey::generate()?)?);
/// let cipher = Arc::new(EnvelopeCipher::new(ClusterId::new("c1")?, ring));
/// let gate = ApplyGate::new(Arc::new(Cutover::at(10))).with_unwrapper(cipher.clone());
///
/// // Legacy cleartext at or below the cutover passes through.
/// assert_eq!(gate.decide(10, EntryKind::Cleartext, b"old").unwrap().as_bytes(), b"old");
/// // Above it, cleartext halts the replica ...
/// let halt = gate.decide(11, EntryKind::Cleartext, b"new").unwrap_err();
/// assert_eq!(halt.reason, FailureReason::CleartextAboveCutover);
/// // ... and envelopes are opened.
/// let envelope = cipher.seal(ProposalId(5), b"new").expect("seal");
/// assert_eq!(gate.decide(11, EntryKind::Envelope, &envelope).unwrap().as_bytes(), b"new");
/// # Ok::<(), ConfigError>(())
/// ```
pub struct ApplyGate {
    cutover: Arc<dyn CutoverSource>,
    unwrapper: Option<Arc<dyn PayloadUnwrapper>>,
    passed_through: AtomicU64,
    opened: AtomicU64,
    halts: [AtomicU64; FailureReason::ALL.len()],
}

impl ApplyGate {
    /// A gate reading the cutover from `cutover`, with no unwrapper.
    pub fn new(cutover: Arc<dyn CutoverSource>) -> Self {
        Self {
            cutover,
            unwrapper: None,
            passed_through: AtomicU64::new(0),
            opened: AtomicU64::new(0),
            halts: Default::default(),
        }
    }

    /// A gate with no cutover and no unwrapper: every payload passes through byte for byte, and
    /// any envelope halts (an envelope is never passed on sealed).
    pub fn inert() -> Self {
        Self::new(Arc::new(None::<u64>))
    }

    /// Sets the unwrapper used to open envelopes.
    pub fn with_unwrapper(mut self, unwrapper: Arc<dyn PayloadUnwrapper>) -> Self {
        self.unwrapper = Some(unwrapper);
        self
    }

    /// The cutover as the source reports it now.
    pub fn cutover(&self) -> Option<u64> {
        self.cutover.cutover()
    }

    /// The cutover when one is in force: neither `None` nor `Some(u64::MAX)` (which behaves
    /// exactly like `None`).
    pub fn cutover_in_force(&self) -> Option<u64> {
        self.cutover().filter(|c| *c != u64::MAX)
    }

    /// The rule for installing a snapshot that carries no sealed layer state (a node whose keys
    /// and cutover come from its configuration): while a cutover is in force nothing can
    /// authenticate it, and installing it could put any state in place and move the applied index
    /// past entries never opened, so the replica halts at the snapshot's last index
    /// ([`FailureReason::UnsealedSnapshot`], recorded like every halt). `None`: it may be
    /// installed (inert). Both adapters call this; sealed snapshots go through
    /// [`LayerState::install_snapshot`](crate::LayerState::install_snapshot).
    pub fn refuse_unsealed_snapshot(&self, index: u64) -> Option<FatalApplyError> {
        let cutover = self.cutover_in_force()?;
        Some(self.record_halt(FatalApplyError::new(index, FailureReason::UnsealedSnapshot, Some(cutover))))
    }

    /// The rule for an engine-framed barrier at `index` (openraft's `EnvelopePayload::Barrier`,
    /// raft-rs's barrier marker with empty data): at or below the cutover it changes nothing and
    /// is skipped; above a cutover in force it halts the replica
    /// ([`FailureReason::UnauthenticatedBarrier`], recorded like every halt), since nothing proves
    /// the layer wrote it (a rewritten entry would otherwise be skipped silently). Above the
    /// cutover the layer's own barriers are sealed control entries. Both adapters call this.
    pub fn refuse_unsealed_barrier(&self, index: u64) -> Option<FatalApplyError> {
        let cutover = self.cutover_in_force().filter(|&c| index > c)?;
        Some(self.record_halt(FatalApplyError::new(
            index,
            FailureReason::UnauthenticatedBarrier,
            Some(cutover),
        )))
    }

    /// True when an unwrapper is configured.
    pub fn has_unwrapper(&self) -> bool {
        self.unwrapper.is_some()
    }

    /// [`decide`] with this gate's cutover and unwrapper, counting the outcome.
    ///
    /// # Errors
    /// A [`FatalApplyError`]: the replica must halt at `index`.
    pub fn decide<'a>(
        &self,
        index: u64,
        kind: EntryKind,
        bytes: &'a [u8],
    ) -> Result<Decision<'a>, FatalApplyError> {
        let result = decide(index, kind, bytes, self.cutover.cutover(), self.unwrapper.as_deref());
        let counter = match &result {
            Ok(Decision::PassThrough(_)) => &self.passed_through,
            Ok(Decision::Opened(_)) => &self.opened,
            Err(e) => &self.halts[e.reason.index()],
        };
        counter.fetch_add(1, Ordering::Relaxed);
        result
    }

    /// [`decide_into`] with this gate's cutover and unwrapper, counting the outcome.
    ///
    /// # Errors
    /// A [`FatalApplyError`]: the replica must halt at `index`.
    pub fn decide_into<'a>(
        &self,
        index: u64,
        kind: EntryKind,
        bytes: &'a [u8],
        out: &'a mut Vec<u8>,
    ) -> Result<&'a [u8], FatalApplyError> {
        let result = decide_into(index, kind, bytes, out, self.cutover.cutover(), self.unwrapper.as_deref());
        self.count(kind, result)
    }

    /// [`decide_owned`] with this gate's cutover and unwrapper, counting the outcome.
    ///
    /// # Errors
    /// A [`FatalApplyError`]: the replica must halt at `index`.
    pub fn decide_owned(
        &self,
        index: u64,
        kind: EntryKind,
        bytes: Vec<u8>,
    ) -> Result<Vec<u8>, FatalApplyError> {
        let result = decide_owned(index, kind, bytes, self.cutover.cutover(), self.unwrapper.as_deref());
        self.count(kind, result)
    }

    /// Counts a decision on an entry of `kind`: an envelope that passed was opened.
    fn count<T>(&self, kind: EntryKind, result: Result<T, FatalApplyError>) -> Result<T, FatalApplyError> {
        let counter = match &result {
            Ok(_) if kind == EntryKind::Envelope => &self.opened,
            Ok(_) => &self.passed_through,
            Err(e) => &self.halts[e.reason.index()],
        };
        counter.fetch_add(1, Ordering::Relaxed);
        result
    }

    /// Records a halt an adapter decided outside the decision table — a payload the gate let
    /// through that the adapter's decoder rejects, an unsealed snapshot refused above the
    /// cutover — so that every halt is counted under its reason and traced the same way, in one
    /// place. Returns `error` for the adapter to act on (stop without advancing).
    pub fn record_halt(&self, error: FatalApplyError) -> FatalApplyError {
        self.halts[error.reason.index()].fetch_add(1, Ordering::Relaxed);
        tracing::error!(
            index = error.index,
            key_id = error.key_id.map(|k| k.0),
            reason = error.reason.as_str(),
            cutover = error.cutover,
            "envelope layer halted apply: {error}"
        );
        error
    }

    /// The gate's counters.
    pub fn stats(&self) -> ApplyStats {
        ApplyStats {
            passed_through: self.passed_through.load(Ordering::Relaxed),
            opened: self.opened.load(Ordering::Relaxed),
            halts: FailureReason::ALL
                .iter()
                .filter_map(|r| {
                    let n = self.halts[r.index()].load(Ordering::Relaxed);
                    (n > 0).then_some((*r, n))
                })
                .collect(),
        }
    }
}

impl fmt::Debug for ApplyGate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ApplyGate")
            .field("cutover", &self.cutover.cutover())
            .field("has_unwrapper", &self.unwrapper.is_some())
            .field("stats", &self.stats())
            .finish()
    }
}
