//! Envelope wire format v1. `DESIGN.md` has the byte table and test vectors.
//!
//! ```text
//! offset  size  field
//!      0     1  version        = 0x01
//!      1     1  algorithm id   (0x01 AES-256-GCM, 0x02 AES-256-GCM-SIV)
//!      2     1  purpose id     (0x01 raft payload, 0x02 snapshot, 0x03 key wrap, 0x04 control)
//!      3     1  flags          = 0x00 (reserved)
//!      4     4  key id         u32 big-endian
//!      8     8  proposal id    u64 big-endian
//!     16    12  nonce
//!     28     n  ciphertext     (n = plaintext length)
//!   28+n    16  tag
//! ```
//!
//! Authenticated data = the 28 header bytes ‖ one byte cluster-id length ‖ the cluster id.

use crate::errors::{Malformation, OpenError};
use crate::ids::{Algorithm, KeyId, ProposalId, Purpose};
use crate::names::ClusterId;

/// The only envelope format version this build writes and reads.
pub const FORMAT_VERSION: u8 = 1;
/// Length of the clear, authenticated header in bytes.
pub const HEADER_LEN: usize = 28;
/// Length of the nonce in bytes.
pub const NONCE_LEN: usize = 12;
/// Length of the authentication tag in bytes.
pub const TAG_LEN: usize = 16;
/// Bytes an envelope adds to its payload.
pub const OVERHEAD: usize = HEADER_LEN + TAG_LEN;

/// Longest authenticated-data block: header, length byte, cluster id.
pub(crate) const MAX_AAD_LEN: usize = HEADER_LEN + 1 + ClusterId::MAX_LEN;

/// The clear part of an envelope, readable without any key.
///
/// Everything here is authenticated: changing any byte makes the envelope fail to open.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct EnvelopeHeader {
    /// The AEAD algorithm.
    pub algorithm: Algorithm,
    /// What the envelope was made for.
    pub purpose: Purpose,
    /// The key it was sealed under.
    pub key_id: KeyId,
    /// The proposal it carries.
    pub proposal_id: ProposalId,
    /// The AEAD nonce.
    pub nonce: [u8; NONCE_LEN],
}

impl EnvelopeHeader {
    pub(crate) fn new(
        algorithm: Algorithm,
        purpose: Purpose,
        key_id: KeyId,
        proposal_id: ProposalId,
        nonce: [u8; NONCE_LEN],
    ) -> Self {
        Self { algorithm, purpose, key_id, proposal_id, nonce }
    }

    /// Reads the header of `envelope` without any key, checking the whole envelope is at least
    /// a header plus a tag long.
    ///
    /// Total: never panics and never allocates, whatever the input.
    ///
    /// # Errors
    /// [`OpenError::Malformed`], [`OpenError::UnsupportedVersion`] or
    /// [`OpenError::UnsupportedAlgorithm`].
    pub fn parse(envelope: &[u8]) -> Result<Self, OpenError> {
        // Order as documented in DESIGN.md §2: version first, then length.
        match envelope.first() {
            None => return Err(OpenError::Malformed(Malformation::Truncated { len: 0 })),
            Some(&v) if v != FORMAT_VERSION => return Err(OpenError::UnsupportedVersion(v)),
            Some(_) => {}
        }
        let Some(header) = envelope.first_chunk::<HEADER_LEN>() else {
            return Err(OpenError::Malformed(Malformation::Truncated { len: envelope.len() }));
        };
        if envelope.len() < OVERHEAD {
            return Err(OpenError::Malformed(Malformation::Truncated { len: envelope.len() }));
        }
        let key_id = KeyId(u32::from_be_bytes([header[4], header[5], header[6], header[7]]));
        let algorithm = Algorithm::from_wire_id(header[1])
            .ok_or(OpenError::UnsupportedAlgorithm { algorithm_id: header[1], key_id: Some(key_id) })?;
        let purpose = Purpose::from_wire_id(header[2])
            .ok_or(OpenError::Malformed(Malformation::UnknownPurpose(header[2])))?;
        if header[3] != 0 {
            return Err(OpenError::Malformed(Malformation::ReservedFlags(header[3])));
        }
        let mut id = [0u8; 8];
        id.copy_from_slice(&header[8..16]);
        let mut nonce = [0u8; NONCE_LEN];
        nonce.copy_from_slice(&header[16..HEADER_LEN]);
        Ok(Self { algorithm, purpose, key_id, proposal_id: ProposalId(u64::from_be_bytes(id)), nonce })
    }

    /// The header's 28 wire bytes.
    pub fn to_bytes(&self) -> [u8; HEADER_LEN] {
        let mut out = [0u8; HEADER_LEN];
        out[0] = FORMAT_VERSION;
        out[1] = self.algorithm.wire_id();
        out[2] = self.purpose.wire_id();
        out[3] = 0;
        out[4..8].copy_from_slice(&self.key_id.0.to_be_bytes());
        out[8..16].copy_from_slice(&self.proposal_id.0.to_be_bytes());
        out[16..HEADER_LEN].copy_from_slice(&self.nonce);
        out
    }
}

/// The authenticated data for an envelope: header ‖ len(cluster) ‖ cluster.
pub(crate) struct Aad {
    buf: [u8; MAX_AAD_LEN],
    len: usize,
}

impl Aad {
    pub(crate) fn new(header: &[u8; HEADER_LEN], cluster: &ClusterId) -> Self {
        let id = cluster.as_bytes();
        let mut buf = [0u8; MAX_AAD_LEN];
        buf[..HEADER_LEN].copy_from_slice(header);
        // ClusterId guarantees id.len() <= 64.
        buf[HEADER_LEN] = id.len() as u8;
        buf[HEADER_LEN + 1..HEADER_LEN + 1 + id.len()].copy_from_slice(id);
        Self { buf, len: HEADER_LEN + 1 + id.len() }
    }

    pub(crate) fn as_bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}
