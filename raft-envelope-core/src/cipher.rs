//! The built-in AEAD implementation of [`PayloadWrapper`] and [`PayloadUnwrapper`].

use std::sync::Arc;

use crate::errors::{OpenError, SealError};
use crate::ids::{ProposalId, Purpose};
use crate::keyring::Keyring;
use crate::names::ClusterId;
use crate::traits::{PayloadUnwrapper, PayloadWrapper};

/// AES-256-GCM / AES-256-GCM-SIV envelopes (on `aws-lc-rs`) under a shared [`Keyring`], bound to
/// one cluster identity.
///
/// Seals with the keyring's active key; opens under whichever key the envelope names. As a
/// [`PayloadWrapper`] / [`PayloadUnwrapper`] it works on [`Purpose::RaftPayload`] envelopes;
/// [`seal_for`](Self::seal_for) and [`open_for`](Self::open_for) serve the other purposes.
///
/// ```
/// use std::sync::Arc;
/// use raft_envelope_core::{Algorithm, ClusterId, EnvelopeCipher, KeyId, Keyring, PayloadUnwrapper, PayloadWrapper, ProposalId, SecretKey};
/// use raft_envelope_core::error::ConfigError;
/// use raft_envelope_core::wire::EnvelopeHeader;
///
/// let ring = Arc::new(Keyring::with_active_key(KeyId(7), Algorithm::Aes256Gcm, SecretKey::generate()?)?);
/// let cipher = EnvelopeCipher::new(ClusterId::new("orders-eu")?, ring);
///
/// let envelope = cipher.seal(ProposalId(1), b"set x = 1").expect("seal");
/// let header = EnvelopeHeader::parse(&envelope).expect("header");
/// assert_eq!(header.key_id, KeyId(7));
/// assert_eq!(cipher.open(&envelope).expect("open"), b"set x = 1");
/// # Ok::<(), ConfigError>(())
/// ```
#[derive(Debug, Clone)]
pub struct EnvelopeCipher {
    cluster: ClusterId,
    keyring: Arc<Keyring>,
}

impl EnvelopeCipher {
    /// A cipher for `cluster` over `keyring`.
    pub fn new(cluster: ClusterId, keyring: Arc<Keyring>) -> Self {
        Self { cluster, keyring }
    }

    /// The keyring, for rotation and stats.
    pub fn keyring(&self) -> &Arc<Keyring> {
        &self.keyring
    }

    /// The cluster identity bound into every envelope.
    pub fn cluster(&self) -> &ClusterId {
        &self.cluster
    }

    /// Seals `payload` for `purpose` under the active key.
    ///
    /// # Errors
    /// [`SealError::NoActiveKey`], [`SealError::BudgetExhausted`] or [`SealError::Cipher`].
    pub fn seal_for(
        &self,
        purpose: Purpose,
        proposal: ProposalId,
        payload: &[u8],
    ) -> Result<Vec<u8>, SealError> {
        self.keyring.seal(purpose, &self.cluster, proposal, payload)
    }

    /// Opens an envelope that must have been made for `purpose` in this cluster.
    ///
    /// # Errors
    /// Any [`OpenError`]; nothing of the payload is returned on failure.
    pub fn open_for(&self, purpose: Purpose, envelope: &[u8]) -> Result<Vec<u8>, OpenError> {
        self.keyring.open(purpose, &self.cluster, envelope)
    }
}

impl PayloadWrapper for EnvelopeCipher {
    fn seal(&self, proposal: ProposalId, payload: &[u8]) -> Result<Vec<u8>, SealError> {
        self.seal_for(Purpose::RaftPayload, proposal, payload)
    }
}

impl PayloadUnwrapper for EnvelopeCipher {
    fn open(&self, envelope: &[u8]) -> Result<Vec<u8>, OpenError> {
        self.open_for(Purpose::RaftPayload, envelope)
    }

    fn open_owned(&self, envelope: Vec<u8>) -> Result<Vec<u8>, OpenError> {
        self.keyring.open_in_place(Purpose::RaftPayload, &self.cluster, envelope)
    }

    fn open_into(&self, envelope: &[u8], out: &mut Vec<u8>) -> Result<(), OpenError> {
        self.keyring.open_into(Purpose::RaftPayload, &self.cluster, envelope, out)
    }
}
