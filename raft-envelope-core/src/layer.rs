//! The configuration both adapters share: what the proposer side seals with, and the apply gate.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock};

use crate::decision::{ApplyGate, EntryKind};
use crate::errors::SealError;
use crate::ids::ProposalId;
use crate::traits::PayloadWrapper;

/// A payload ready to be proposed: its identity, its kind and the bytes the log will store.
#[derive(Clone, PartialEq, Eq)]
pub struct Proposal {
    /// The proposal's identity (also inside the envelope header when sealed).
    pub id: ProposalId,
    /// [`EntryKind::Envelope`] when sealed, [`EntryKind::Cleartext`] when the layer is not sealing.
    pub kind: EntryKind,
    /// The bytes to store in the log: the envelope, or the payload unchanged.
    pub bytes: Vec<u8>,
}

/// Shows only the length: the bytes may be plaintext.
impl fmt::Debug for Proposal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Proposal")
            .field("id", &self.id)
            .field("kind", &self.kind)
            .field("len", &self.bytes.len())
            .finish()
    }
}

/// The envelope layer of one node: the proposer-side wrapper (switchable at run time) and the
/// apply-side [`ApplyGate`]. Each adapter decorates its engine's proposer and state machine with
/// one shared `Arc<EnvelopeLayer>`.
///
/// ```
/// use std::sync::Arc;
/// use raft_envelope_core::{Algorithm, ApplyGate, ClusterId, EntryKind, EnvelopeCipher, EnvelopeLayer, KeyId, Keyring, SecretKey};
/// use raft_envelope_core::error::ConfigError;
/// use raft_envelope_core::wire::EnvelopeHeader;
///
/// let ring = Arc::new(Keyring::with_active_key(KeyId(1), Algorithm::Aes256Gcm, SecretKey::generate()?)?);
/// let cipher = Arc::new(EnvelopeCipher::new(ClusterId::new("c")?, ring));
/// let layer = EnvelopeLayer::new(ApplyGate::inert().with_unwrapper(cipher.clone()));
///
/// // Inert: proposals pass through unchanged, without a copy.
/// let p = layer.prepare(b"hello".to_vec()).expect("prepare");
/// assert_eq!((p.kind, p.bytes.as_slice()), (EntryKind::Cleartext, &b"hello"[..]));
///
/// // Switched on: every proposal is sealed.
/// layer.set_wrapper(Some(cipher));
/// let p = layer.prepare(b"hello".to_vec()).expect("prepare");
/// assert_eq!(p.kind, EntryKind::Envelope);
/// assert_eq!(EnvelopeHeader::parse(&p.bytes).expect("header").proposal_id, p.id);
/// # Ok::<(), ConfigError>(())
/// ```
pub struct EnvelopeLayer {
    wrapper: RwLock<Option<Arc<dyn PayloadWrapper>>>,
    gate: ApplyGate,
    next_id: AtomicU64,
}

impl EnvelopeLayer {
    /// A layer that applies through `gate` and does not seal until
    /// [`set_wrapper`](Self::set_wrapper) is called.
    pub fn new(gate: ApplyGate) -> Self {
        let mut start = [0u8; 8];
        // Proposal ids only need to be distinct between concurrent proposers; when the system
        // generator fails the node's ids simply start at 0.
        let _ = aws_lc_rs::rand::fill(&mut start);
        Self { wrapper: RwLock::new(None), gate, next_id: AtomicU64::new(u64::from_be_bytes(start)) }
    }

    /// A layer that neither seals nor enforces anything.
    pub fn inert() -> Self {
        Self::new(ApplyGate::inert())
    }

    /// Sets the wrapper at construction.
    pub fn with_wrapper(self, wrapper: Arc<dyn PayloadWrapper>) -> Self {
        self.set_wrapper(Some(wrapper));
        self
    }

    /// Starts (`Some`) or stops (`None`) sealing new proposals. Proposals prepared after this
    /// returns use the new setting.
    ///
    /// Stopping while a cutover is in force makes this node's later proposals halt every replica
    /// that applies them: only stop sealing on a cluster without a cutover.
    pub fn set_wrapper(&self, wrapper: Option<Arc<dyn PayloadWrapper>>) {
        *self.wrapper.write().unwrap_or_else(PoisonError::into_inner) = wrapper;
    }

    /// True when new proposals are sealed.
    pub fn is_sealing(&self) -> bool {
        self.wrapper.read().unwrap_or_else(PoisonError::into_inner).is_some()
    }

    /// The cutover, when a cleartext entry appended after `last_log_index` could only land above
    /// it: a cutover is in force (not `None`, not `u64::MAX`) and the log already reaches it.
    /// Such an entry would halt every replica that applies it, so an adapter whose layer is not
    /// sealing refuses the proposal instead (SPEC R4: refuse or seal). The one rule both adapters
    /// apply before appending cleartext.
    pub fn cleartext_would_land_above_cutover(&self, last_log_index: u64) -> Option<u64> {
        let cutover = self.gate.cutover_in_force()?;
        (last_log_index >= cutover).then_some(cutover)
    }

    /// The apply-side gate.
    pub fn gate(&self) -> &ApplyGate {
        &self.gate
    }

    /// A fresh proposal id, distinct from every other one this layer hands out.
    pub fn next_proposal_id(&self) -> ProposalId {
        ProposalId(self.next_id.fetch_add(1, Ordering::Relaxed))
    }

    /// Prepares `payload` for proposing: sealed when a wrapper is set, otherwise unchanged.
    ///
    /// # Errors
    /// The wrapper's [`SealError`]: refuse the proposal to its caller and do not append it.
    pub fn prepare(&self, payload: Vec<u8>) -> Result<Proposal, SealError> {
        let id = self.next_proposal_id();
        let wrapper = self.wrapper.read().unwrap_or_else(PoisonError::into_inner);
        match wrapper.as_ref() {
            Some(w) => {
                let bytes = w.seal(id, &payload)?;
                Ok(Proposal { id, kind: EntryKind::Envelope, bytes })
            }
            None => Ok(Proposal { id, kind: EntryKind::Cleartext, bytes: payload }),
        }
    }
}

impl fmt::Debug for EnvelopeLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EnvelopeLayer")
            .field("sealing", &self.is_sealing())
            .field("gate", &self.gate)
            .finish()
    }
}
