//! The three roles an engine adapter plugs together.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crate::errors::{OpenError, SealError};
use crate::ids::ProposalId;

/// Seals a proposal payload into an envelope before it is proposed to Raft.
///
/// Called on the proposing node, once per client proposal, on the client's task: sealing is CPU
/// work and the trait is synchronous.
///
/// An implementation must:
/// - return a self-describing envelope that the matching [`PayloadUnwrapper`] opens on every
///   replica, binding `proposal` into the authenticated data;
/// - never use a (key, nonce) pair twice, across threads, replicas, restarts and leader changes;
/// - refuse (return [`SealError`]) rather than produce anything weaker, for example when its key's
///   sealing budget is spent. A refused proposal is never appended.
///
/// An implementation must not:
/// - return the payload, or any part of it, in the clear, or put payload or key bytes into errors,
///   logs or traces;
/// - block on I/O (fetch keys out of band and cache them).
pub trait PayloadWrapper: Send + Sync {
    /// Seals `payload`, proposed as `proposal`, into a new envelope.
    ///
    /// # Errors
    /// A [`SealError`]: the proposal must be refused to its caller (retryable) and not appended.
    fn seal(&self, proposal: ProposalId, payload: &[u8]) -> Result<Vec<u8>, SealError>;
}

/// Opens an envelope found in a committed entry, before the state machine sees it.
///
/// Called on every replica for every committed envelope, in log order, on the apply path.
///
/// An implementation must:
/// - return the exact payload that was sealed, or an error; never a partial or unauthenticated
///   result;
/// - be deterministic for a given envelope and key set: every replica holding the same keys
///   reaches the same outcome;
/// - reject envelopes made for another purpose or another cluster.
///
/// An implementation must not:
/// - block on I/O or wait for a key service: an error here halts the replica, so a missing key
///   must be fetched and installed out of band, then the replica restarted;
/// - put payload or key bytes into errors, logs or traces.
pub trait PayloadUnwrapper: Send + Sync {
    /// Opens `envelope` and returns the payload it seals.
    ///
    /// # Errors
    /// An [`OpenError`]; on the apply path above the cutover it halts the replica.
    fn open(&self, envelope: &[u8]) -> Result<Vec<u8>, OpenError>;

    /// Opens an envelope the caller owns, reusing its buffer where the implementation can (the
    /// built-in cipher decrypts in place: no allocation). The default calls
    /// [`open`](Self::open).
    ///
    /// # Errors
    /// As [`open`](Self::open); the buffer's contents are then unspecified (never plaintext).
    fn open_owned(&self, envelope: Vec<u8>) -> Result<Vec<u8>, OpenError> {
        self.open(&envelope)
    }

    /// Opens an envelope into `out`, which then holds exactly the plaintext, reusing its
    /// capacity: an applier that keeps one buffer across entries allocates nothing per entry,
    /// and copies nothing but what the cipher writes (the built-in cipher decrypts straight from
    /// `envelope` into `out`, zeroing only what `out` must grow by). The default calls
    /// [`open`](Self::open) and copies.
    ///
    /// # Errors
    /// As [`open`](Self::open); `out` is then empty.
    fn open_into(&self, envelope: &[u8], out: &mut Vec<u8>) -> Result<(), OpenError> {
        out.clear();
        out.extend_from_slice(&self.open(envelope)?);
        Ok(())
    }
}

/// Tells the apply side the cutover: the log index after which every payload entry must be an
/// envelope. `None` means inert (no enforcement); `Some(u64::MAX)` behaves exactly like `None`.
///
/// Read once per applied entry: an implementation must be cheap and non-blocking (an atomic load,
/// not a lock held by another subsystem, never I/O). It must return the same value on every
/// replica for the same applied prefix, or replicas will disagree about which entries halt.
pub trait CutoverSource: Send + Sync {
    /// The cutover index, or `None` when the layer is inert.
    fn cutover(&self) -> Option<u64>;
}

impl<T: PayloadWrapper + ?Sized> PayloadWrapper for Arc<T> {
    fn seal(&self, proposal: ProposalId, payload: &[u8]) -> Result<Vec<u8>, SealError> {
        (**self).seal(proposal, payload)
    }
}

impl<T: PayloadWrapper + ?Sized> PayloadWrapper for &T {
    fn seal(&self, proposal: ProposalId, payload: &[u8]) -> Result<Vec<u8>, SealError> {
        (**self).seal(proposal, payload)
    }
}

impl<T: PayloadUnwrapper + ?Sized> PayloadUnwrapper for Arc<T> {
    fn open(&self, envelope: &[u8]) -> Result<Vec<u8>, OpenError> {
        (**self).open(envelope)
    }

    fn open_owned(&self, envelope: Vec<u8>) -> Result<Vec<u8>, OpenError> {
        (**self).open_owned(envelope)
    }

    fn open_into(&self, envelope: &[u8], out: &mut Vec<u8>) -> Result<(), OpenError> {
        (**self).open_into(envelope, out)
    }
}

impl<T: PayloadUnwrapper + ?Sized> PayloadUnwrapper for &T {
    fn open(&self, envelope: &[u8]) -> Result<Vec<u8>, OpenError> {
        (**self).open(envelope)
    }

    fn open_owned(&self, envelope: Vec<u8>) -> Result<Vec<u8>, OpenError> {
        (**self).open_owned(envelope)
    }

    fn open_into(&self, envelope: &[u8], out: &mut Vec<u8>) -> Result<(), OpenError> {
        (**self).open_into(envelope, out)
    }
}

impl<T: CutoverSource + ?Sized> CutoverSource for Arc<T> {
    fn cutover(&self) -> Option<u64> {
        (**self).cutover()
    }
}

/// A fixed cutover.
impl CutoverSource for Option<u64> {
    fn cutover(&self) -> Option<u64> {
        *self
    }
}

/// A cutover that can be changed at run time, read with one atomic load.
///
/// ```
/// use raft_envelope_core::{Cutover, CutoverSource};
///
/// let cutover = Cutover::inert();
/// assert_eq!(cutover.cutover(), None);
/// cutover.set(Some(41));
/// assert_eq!(cutover.cutover(), Some(41));
/// ```
#[derive(Debug)]
pub struct Cutover(AtomicU64);

impl Cutover {
    /// No cutover: the layer is inert.
    pub fn inert() -> Self {
        Self(AtomicU64::new(u64::MAX))
    }

    /// A cutover at index `c`.
    pub fn at(c: u64) -> Self {
        Self(AtomicU64::new(c))
    }

    /// Changes the cutover. `None` and `Some(u64::MAX)` both mean inert.
    pub fn set(&self, cutover: Option<u64>) {
        self.0.store(cutover.unwrap_or(u64::MAX), Ordering::Release);
    }
}

impl Default for Cutover {
    fn default() -> Self {
        Self::inert()
    }
}

impl CutoverSource for Cutover {
    fn cutover(&self) -> Option<u64> {
        match self.0.load(Ordering::Acquire) {
            u64::MAX => None,
            c => Some(c),
        }
    }
}
