//! How the application's request type becomes the bytes that are sealed, and back.

use std::fmt;
use std::marker::PhantomData;

use raft_envelope_core::apply::ApplyContext;
use serde::de::DeserializeOwned;
use serde::Serialize;

/// Turns the application's request (`C::D`) into bytes before sealing, and the opened bytes back
/// into a request before the application's state machine sees it.
///
/// Called on the proposer (encode) and on every replica's apply path (decode). It must be
/// deterministic: every replica decodes the same bytes to the same request.
pub trait PayloadCodec<D>: Send + Sync + 'static {
    /// Encodes a request.
    ///
    /// # Errors
    /// A [`CodecError`]; the proposal is refused and not appended.
    fn encode(&self, request: &D) -> Result<Vec<u8>, CodecError>;

    /// Decodes the bytes of a committed entry.
    ///
    /// # Errors
    /// A [`CodecError`]; on the apply path this halts the replica at that entry.
    fn decode(&self, bytes: &[u8]) -> Result<D, CodecError>;

    /// Decodes bytes the apply path owns (the opened plaintext, or the cleartext moved out of the
    /// entry). The default borrows them for [`decode`](Self::decode); a codec whose request is
    /// the bytes themselves takes them without a copy.
    ///
    /// # Errors
    /// As [`decode`](Self::decode).
    fn decode_owned(&self, bytes: Vec<u8>) -> Result<D, CodecError> {
        self.decode(&bytes)
    }

    /// Decodes the bytes of the committed entry `context` describes: its index, whether it was
    /// sealed, and the proposal id from the envelope's authenticated header. The apply path
    /// calls this one, so a codec whose request type has room for it can hand the proposal id
    /// to the application (for its own de-duplication or tracing). The default ignores the
    /// context and calls [`decode_owned`](Self::decode_owned).
    ///
    /// # Errors
    /// As [`decode`](Self::decode).
    fn decode_in(&self, context: &ApplyContext, bytes: Vec<u8>) -> Result<D, CodecError> {
        let _ = context;
        self.decode_owned(bytes)
    }
}

/// A codec failed. Deliberately carries no detail from the underlying codec, whose messages may
/// quote payload bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("{direction} failed on a payload of {len} bytes")]
pub struct CodecError {
    direction: CodecDirection,
    len: usize,
}

/// Which way a codec failed ([`CodecError::direction`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum CodecDirection {
    /// Encoding a request before it is proposed: nothing was appended.
    Encode,
    /// Decoding a committed payload: the replica halts on the entry.
    Decode,
}

impl std::fmt::Display for CodecDirection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            CodecDirection::Encode => "encoding",
            CodecDirection::Decode => "decoding",
        })
    }
}

impl CodecError {
    /// Encoding a request failed.
    pub fn encode() -> Self {
        Self { direction: CodecDirection::Encode, len: 0 }
    }

    /// Decoding `len` bytes failed.
    pub fn decode(len: usize) -> Self {
        Self { direction: CodecDirection::Decode, len }
    }

    /// Which way it failed.
    pub fn direction(&self) -> CodecDirection {
        self.direction
    }

    /// The payload's length (0 when encoding).
    pub fn payload_len(&self) -> usize {
        self.len
    }
}

/// The default codec: `serde_json`, for any serde request type (every `C::D` is one with
/// openraft's `serde` feature).
pub struct JsonCodec<D>(PhantomData<fn() -> D>);

impl<D> JsonCodec<D> {
    /// The JSON codec.
    pub fn new() -> Self {
        Self(PhantomData)
    }
}

impl<D> Default for JsonCodec<D> {
    fn default() -> Self {
        Self::new()
    }
}

impl<D> fmt::Debug for JsonCodec<D> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("JsonCodec")
    }
}

impl<D: Serialize + DeserializeOwned + 'static> PayloadCodec<D> for JsonCodec<D> {
    fn encode(&self, request: &D) -> Result<Vec<u8>, CodecError> {
        serde_json::to_vec(request).map_err(|_| CodecError::encode())
    }

    fn decode(&self, bytes: &[u8]) -> Result<D, CodecError> {
        serde_json::from_slice(bytes).map_err(|_| CodecError::decode(bytes.len()))
    }
}

/// The identity codec for applications whose request type is already `Vec<u8>`.
#[derive(Debug, Clone, Copy, Default)]
pub struct BytesCodec;

impl PayloadCodec<Vec<u8>> for BytesCodec {
    fn encode(&self, request: &Vec<u8>) -> Result<Vec<u8>, CodecError> {
        Ok(request.clone())
    }

    fn decode(&self, bytes: &[u8]) -> Result<Vec<u8>, CodecError> {
        Ok(bytes.to_vec())
    }

    fn decode_owned(&self, bytes: Vec<u8>) -> Result<Vec<u8>, CodecError> {
        Ok(bytes)
    }
}
