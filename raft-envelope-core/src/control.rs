//! Control entry format v1: the envelope layer's own log entries. `DESIGN.md` §10 has the byte
//! table.
//!
//! ```text
//! offset  size  field
//!      0     8  magic          E5 52 43 54 4C 0D 0A 1A  ("\xE5RCTL\r\n\x1A")
//!      8     1  version        = 0x01
//!      9     1  command        (0x01 install key, 0x02 promote, 0x03 retire, 0x04 destroy,
//!                               0x05 enforce)
//!     10     4  body length n  u32 big-endian, exactly the bytes that follow
//!     14     n  body
//! ```

use std::fmt;

use crate::ids::{Algorithm, KeyId};
use crate::names::KekId;
use crate::provider::WrappedKey;

/// The first 8 bytes of every control entry in the clear: `"\xE5RCTL\r\n\x1A"`.
///
/// The first byte is not an envelope version (`0x01`), so a control entry never parses as an
/// envelope; `E5 52` is not valid UTF-8, so no text or JSON payload starts with it; `\r\n` and
/// `\x1A` catch line-ending and text-mode mangling (the PNG trick).
pub const CONTROL_MAGIC: [u8; 8] = [0xE5, b'R', b'C', b'T', b'L', b'\r', b'\n', 0x1A];
/// The only control entry format version this build writes and reads.
pub const CONTROL_VERSION: u8 = 1;
/// Length of a control entry's fixed header: magic, version, command, body length.
pub const CONTROL_HEADER_LEN: usize = 14;
/// The longest control entry this build writes or reads, in bytes (an install with the longest
/// KEK id and wrapped key).
pub const MAX_CONTROL_ENTRY_LEN: usize =
    CONTROL_HEADER_LEN + INSTALL_FIXED_LEN + KekId::MAX_LEN + WrappedKey::MAX_LEN;

/// Install body bytes other than the KEK id and the wrapped key.
const INSTALL_FIXED_LEN: usize = 4 + 1 + 1 + 2;

const CMD_INSTALL: u8 = 0x01;
const CMD_PROMOTE: u8 = 0x02;
const CMD_RETIRE: u8 = 0x03;
const CMD_DESTROY: u8 = 0x04;
const CMD_ENFORCE: u8 = 0x05;
const CMD_BARRIER: u8 = 0x06;
const CMD_CHECKPOINT: u8 = 0x07;
/// Checkpoint body: through (u64) and digest (32 bytes).
const CHECKPOINT_LEN: usize = 8 + 32;

/// Installs a data key, wrapped under a key-encryption key, in the decrypt-only state.
///
/// Every replica unwraps [`wrapped_key`](Self::wrapped_key) with its own
/// [`KeyProvider`](crate::KeyProvider) for [`kek_id`](Self::kek_id) *before* applying the entry
/// (see [`LayerState::prefetch`](crate::LayerState::prefetch)); a replica that has no unwrapped
/// key when it applies the entry halts there.
#[derive(Clone, PartialEq, Eq, Debug)]
#[non_exhaustive]
pub struct InstallKey {
    /// The new key's id. Never reused.
    pub key_id: KeyId,
    /// The new key's AEAD algorithm.
    pub algorithm: Algorithm,
    /// The key-encryption key the data key is wrapped under.
    pub kek_id: KekId,
    /// The data key, wrapped (opaque to this layer: the provider's own format).
    pub wrapped_key: WrappedKey,
}

impl InstallKey {
    /// An install command.
    pub fn new(key_id: KeyId, algorithm: Algorithm, kek_id: KekId, wrapped_key: WrappedKey) -> Self {
        Self { key_id, algorithm, kek_id, wrapped_key }
    }
}

/// A command of the envelope layer, carried in a layer control entry and applied by
/// [`LayerState::apply_control`](crate::LayerState::apply_control) at the entry's log index on
/// every replica. It never reaches the user's state machine.
#[derive(Clone, PartialEq, Eq, Debug)]
#[non_exhaustive]
pub enum ControlCommand {
    /// Add a wrapped data key, decrypt-only.
    InstallKey(InstallKey),
    /// Make a key the one active (sealing) key; the previous active key becomes decrypt-only.
    PromoteKey {
        /// The key.
        key_id: KeyId,
    },
    /// Make a key decrypt-only (if it was active, nothing seals until another is promoted).
    RetireKey {
        /// The key.
        key_id: KeyId,
    },
    /// Destroy a key: its material is dropped on every replica and envelopes under it no longer
    /// open.
    DestroyKey {
        /// The key.
        key_id: KeyId,
    },
    /// Enforce sealing: the cutover becomes this entry's own log index (the first time; a later
    /// enforce changes nothing). Above it, cleartext payloads halt (SPEC R2).
    Enforce,
    /// Changes nothing: a barrier the layer proposes to learn that everything before it is
    /// applied (the destroy proof). Sealed like every control entry above the cutover, so a
    /// rewritten entry cannot pass for it (SPEC R9).
    Barrier,
    /// An integrity checkpoint: the leader's running digest of everything it applied through
    /// `through` (an index below this entry's own). Every replica compares it with its own
    /// digest at `through` and halts (`diverged`) when they differ (SPEC R10, `DESIGN.md` §11).
    Checkpoint {
        /// The last index the digest covers.
        through: u64,
        /// The running digest through `through`.
        digest: [u8; 32],
    },
}

/// The kind of a [`ControlCommand`], without its fields: for errors, counters and traces.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
#[non_exhaustive]
pub enum CommandKind {
    /// [`ControlCommand::InstallKey`].
    InstallKey,
    /// [`ControlCommand::PromoteKey`].
    PromoteKey,
    /// [`ControlCommand::RetireKey`].
    RetireKey,
    /// [`ControlCommand::DestroyKey`].
    DestroyKey,
    /// [`ControlCommand::Enforce`].
    Enforce,
    /// [`ControlCommand::Barrier`].
    Barrier,
    /// [`ControlCommand::Checkpoint`].
    Checkpoint,
}

impl CommandKind {
    /// A short stable name, for logs, traces and metrics labels.
    pub const fn as_str(self) -> &'static str {
        match self {
            CommandKind::InstallKey => "install_key",
            CommandKind::PromoteKey => "promote_key",
            CommandKind::RetireKey => "retire_key",
            CommandKind::DestroyKey => "destroy_key",
            CommandKind::Enforce => "enforce",
            CommandKind::Barrier => "barrier",
            CommandKind::Checkpoint => "checkpoint",
        }
    }
}

impl fmt::Display for CommandKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl ControlCommand {
    /// The key the command is about, if any.
    pub fn key_id(&self) -> Option<KeyId> {
        match self {
            ControlCommand::InstallKey(install) => Some(install.key_id),
            ControlCommand::PromoteKey { key_id }
            | ControlCommand::RetireKey { key_id }
            | ControlCommand::DestroyKey { key_id } => Some(*key_id),
            ControlCommand::Enforce | ControlCommand::Barrier | ControlCommand::Checkpoint { .. } => None,
        }
    }

    /// Which command this is, without its fields.
    pub const fn kind(&self) -> CommandKind {
        match self {
            ControlCommand::InstallKey(_) => CommandKind::InstallKey,
            ControlCommand::PromoteKey { .. } => CommandKind::PromoteKey,
            ControlCommand::RetireKey { .. } => CommandKind::RetireKey,
            ControlCommand::DestroyKey { .. } => CommandKind::DestroyKey,
            ControlCommand::Enforce => CommandKind::Enforce,
            ControlCommand::Barrier => CommandKind::Barrier,
            ControlCommand::Checkpoint { .. } => CommandKind::Checkpoint,
        }
    }

    /// A short stable name, for logs and traces.
    pub const fn name(&self) -> &'static str {
        self.kind().as_str()
    }

    const fn wire_id(&self) -> u8 {
        match self {
            ControlCommand::InstallKey(_) => CMD_INSTALL,
            ControlCommand::PromoteKey { .. } => CMD_PROMOTE,
            ControlCommand::RetireKey { .. } => CMD_RETIRE,
            ControlCommand::DestroyKey { .. } => CMD_DESTROY,
            ControlCommand::Enforce => CMD_ENFORCE,
            ControlCommand::Barrier => CMD_BARRIER,
            ControlCommand::Checkpoint { .. } => CMD_CHECKPOINT,
        }
    }

    /// The command's control entry bytes, in the clear (format v1).
    ///
    /// Above the cutover a control entry must be sealed:
    /// [`LayerState::encode_entry`](crate::LayerState::encode_entry) seals it when the keyring
    /// has an active key.
    pub fn encode(&self) -> Vec<u8> {
        let mut body = Vec::new();
        match self {
            ControlCommand::InstallKey(install) => {
                let kek = install.kek_id.as_str().as_bytes();
                let wrapped = install.wrapped_key.as_bytes();
                body.reserve(INSTALL_FIXED_LEN + kek.len() + wrapped.len());
                body.extend_from_slice(&install.key_id.0.to_be_bytes());
                body.push(install.algorithm.wire_id());
                // KekId and WrappedKey guarantee 1..=255 and 1..=4096 bytes.
                body.push(kek.len() as u8);
                body.extend_from_slice(kek);
                body.extend_from_slice(&(wrapped.len() as u16).to_be_bytes());
                body.extend_from_slice(wrapped);
            }
            ControlCommand::PromoteKey { key_id }
            | ControlCommand::RetireKey { key_id }
            | ControlCommand::DestroyKey { key_id } => body.extend_from_slice(&key_id.0.to_be_bytes()),
            ControlCommand::Enforce | ControlCommand::Barrier => {}
            ControlCommand::Checkpoint { through, digest } => {
                body.reserve(CHECKPOINT_LEN);
                body.extend_from_slice(&through.to_be_bytes());
                body.extend_from_slice(digest);
            }
        }
        let mut out = Vec::with_capacity(CONTROL_HEADER_LEN + body.len());
        out.extend_from_slice(&CONTROL_MAGIC);
        out.push(CONTROL_VERSION);
        out.push(self.wire_id());
        out.extend_from_slice(&(body.len() as u32).to_be_bytes()); // at most ~4.4 KiB
        out.extend_from_slice(&body);
        out
    }

    /// Reads a control entry in the clear.
    ///
    /// Total: never panics, whatever the input, and allocates at most the KEK id and wrapped key
    /// it returns (both bounded, and never more than the input's length).
    ///
    /// # Errors
    /// A [`ControlDecodeError`] saying what is wrong.
    pub fn decode(bytes: &[u8]) -> Result<Self, ControlDecodeError> {
        let Some((header, body)) = bytes.split_first_chunk::<CONTROL_HEADER_LEN>() else {
            if bytes.len() >= CONTROL_MAGIC.len() && bytes[..CONTROL_MAGIC.len()] != CONTROL_MAGIC {
                return Err(ControlDecodeError::BadMagic);
            }
            return Err(ControlDecodeError::Truncated { len: bytes.len() });
        };
        if header[..8] != CONTROL_MAGIC {
            return Err(ControlDecodeError::BadMagic);
        }
        if header[8] != CONTROL_VERSION {
            return Err(ControlDecodeError::UnsupportedVersion(header[8]));
        }
        let command = header[9];
        let declared = u32::from_be_bytes([header[10], header[11], header[12], header[13]]);
        if u64::from(declared) != body.len() as u64 {
            return Err(ControlDecodeError::BodyLength { declared, actual: body.len() });
        }
        let mut r = Reader(body);
        let parsed = match command {
            CMD_INSTALL => {
                let key_id = KeyId(r.u32("key id")?);
                let alg = r.u8("algorithm")?;
                let algorithm =
                    Algorithm::from_wire_id(alg).ok_or(ControlDecodeError::UnknownAlgorithm(alg))?;
                let kek_len = usize::from(r.u8("KEK id length")?);
                let kek = r.take(kek_len, "KEK id")?;
                let kek = std::str::from_utf8(kek).map_err(|_| ControlDecodeError::InvalidKekId)?;
                let kek_id = KekId::new(kek).map_err(|_| ControlDecodeError::InvalidKekId)?;
                let wrapped_len = usize::from(r.u16("wrapped key length")?);
                let wrapped = r.take(wrapped_len, "wrapped key")?;
                let wrapped_key = WrappedKey::new(wrapped.to_vec())
                    .map_err(|_| ControlDecodeError::WrappedKeyLength { len: wrapped_len })?;
                ControlCommand::InstallKey(InstallKey { key_id, algorithm, kek_id, wrapped_key })
            }
            CMD_PROMOTE => ControlCommand::PromoteKey { key_id: KeyId(r.u32("key id")?) },
            CMD_RETIRE => ControlCommand::RetireKey { key_id: KeyId(r.u32("key id")?) },
            CMD_DESTROY => ControlCommand::DestroyKey { key_id: KeyId(r.u32("key id")?) },
            CMD_ENFORCE => ControlCommand::Enforce,
            CMD_BARRIER => ControlCommand::Barrier,
            CMD_CHECKPOINT => {
                let through = r.u64("through")?;
                let mut digest = [0u8; 32];
                digest.copy_from_slice(r.take(32, "digest")?);
                ControlCommand::Checkpoint { through, digest }
            }
            other => return Err(ControlDecodeError::UnknownCommand(other)),
        };
        if !r.0.is_empty() {
            return Err(ControlDecodeError::TrailingBytes { len: r.0.len() });
        }
        Ok(parsed)
    }
}

/// True when `bytes` starts with [`CONTROL_MAGIC`]: a control entry in the clear (well formed or
/// not). A sealed control entry is an envelope of [`Purpose::Control`](crate::Purpose::Control).
pub fn is_clear_control_entry(bytes: &[u8]) -> bool {
    bytes.starts_with(&CONTROL_MAGIC)
}

/// A cursor over a body that never reads past its end.
pub(crate) struct Reader<'a>(pub(crate) &'a [u8]);

impl<'a> Reader<'a> {
    pub(crate) fn take(&mut self, n: usize, field: &'static str) -> Result<&'a [u8], ControlDecodeError> {
        if self.0.len() < n {
            return Err(ControlDecodeError::FieldTruncated { field });
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    pub(crate) fn u8(&mut self, field: &'static str) -> Result<u8, ControlDecodeError> {
        Ok(self.take(1, field)?[0])
    }

    pub(crate) fn u16(&mut self, field: &'static str) -> Result<u16, ControlDecodeError> {
        let b = self.take(2, field)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    pub(crate) fn u32(&mut self, field: &'static str) -> Result<u32, ControlDecodeError> {
        let b = self.take(4, field)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    pub(crate) fn u64(&mut self, field: &'static str) -> Result<u64, ControlDecodeError> {
        let b = self.take(8, field)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_be_bytes(a))
    }
}

/// Why bytes are not a well-formed control entry (format v1).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ControlDecodeError {
    /// Shorter than the 14-byte header.
    #[error("control entry truncated ({len} bytes)")]
    Truncated {
        /// The length seen.
        len: usize,
    },
    /// Does not start with [`CONTROL_MAGIC`].
    #[error("not a control entry (bad magic)")]
    BadMagic,
    /// A control format version this build does not read.
    #[error("unsupported control entry version {0}")]
    UnsupportedVersion(u8),
    /// A command byte this build does not know.
    #[error("unknown control command {0:#04x}")]
    UnknownCommand(u8),
    /// The declared body length is not the number of bytes that follow the header.
    #[error("control body length {declared} declared, {actual} present")]
    BodyLength {
        /// The length in the header.
        declared: u32,
        /// The bytes present.
        actual: usize,
    },
    /// A field runs past the end of the body.
    #[error("control entry field {field} truncated")]
    FieldTruncated {
        /// The field.
        field: &'static str,
    },
    /// Bytes left over after the command's last field.
    #[error("{len} trailing bytes after the control command")]
    TrailingBytes {
        /// How many.
        len: usize,
    },
    /// An algorithm id this build does not know.
    #[error("unknown algorithm id {0:#04x} in install command")]
    UnknownAlgorithm(u8),
    /// The KEK id is empty or not UTF-8.
    #[error("KEK id empty or not UTF-8")]
    InvalidKekId,
    /// The wrapped key is empty.
    #[error("wrapped key of {len} bytes")]
    WrappedKeyLength {
        /// Its length.
        len: usize,
    },
}

impl fmt::Display for InstallKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "install {} ({}) wrapped under KEK {:?}", self.key_id, self.algorithm, self.kek_id.as_str())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // test code: a panic is the failure report

    use super::*;

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// Known-answer vectors: the exact bytes of each command (DESIGN.md §10.1).
    #[test]
    fn known_answer_encodings() {
        let install = ControlCommand::InstallKey(InstallKey::new(
            KeyId(2),
            Algorithm::Aes256Gcm,
            KekId::new("kek-1").unwrap(),
            WrappedKey::new(vec![0xAA, 0xBB, 0xCC]).unwrap(),
        ));
        let cases: [(ControlCommand, &str); 5] = [
            (install, "e55243544c0d0a1a 01 01 00000010 00000002 01 05 6b656b2d31 0003 aabbcc"),
            (ControlCommand::PromoteKey { key_id: KeyId(2) }, "e55243544c0d0a1a 01 02 00000004 00000002"),
            (ControlCommand::RetireKey { key_id: KeyId(1) }, "e55243544c0d0a1a 01 03 00000004 00000001"),
            (
                ControlCommand::DestroyKey { key_id: KeyId(0x01020304) },
                "e55243544c0d0a1a 01 04 00000004 01020304",
            ),
            (ControlCommand::Enforce, "e55243544c0d0a1a 01 05 00000000"),
        ];
        for (command, expected) in cases {
            let expected = expected.replace(' ', "");
            let bytes = command.encode();
            assert_eq!(hex(&bytes), expected, "{}", command.name());
            assert_eq!(ControlCommand::decode(&bytes).unwrap(), command);
            assert!(is_clear_control_entry(&bytes));
        }
    }

    #[test]
    fn malformed_entries_are_named() {
        let good = ControlCommand::PromoteKey { key_id: KeyId(2) }.encode();
        let cases: Vec<(Vec<u8>, ControlDecodeError)> = vec![
            (vec![], ControlDecodeError::Truncated { len: 0 }),
            (good[..13].to_vec(), ControlDecodeError::Truncated { len: 13 }),
            (b"set x = 1 please".to_vec(), ControlDecodeError::BadMagic),
            (
                {
                    let mut b = good.clone();
                    b[8] = 2;
                    b
                },
                ControlDecodeError::UnsupportedVersion(2),
            ),
            (
                {
                    let mut b = good.clone();
                    b[9] = 0x09;
                    b
                },
                ControlDecodeError::UnknownCommand(9),
            ),
            (good[..17].to_vec(), ControlDecodeError::BodyLength { declared: 4, actual: 3 }),
            (
                {
                    let mut b = good.clone();
                    b[13] = 3;
                    b.pop();
                    b
                },
                ControlDecodeError::FieldTruncated { field: "key id" },
            ),
            (
                {
                    let mut b = good.clone();
                    b[13] = 5;
                    b.push(0);
                    b
                },
                ControlDecodeError::TrailingBytes { len: 1 },
            ),
        ];
        for (bytes, expected) in cases {
            assert_eq!(ControlCommand::decode(&bytes), Err(expected.clone()), "{expected}");
        }
        // An envelope (version byte 0x01 first) is never a control entry.
        let mut envelope = vec![1u8, 1, 1, 0];
        envelope.resize(60, 0);
        assert_eq!(ControlCommand::decode(&envelope), Err(ControlDecodeError::BadMagic));
    }

    #[test]
    fn install_fields_are_validated() {
        let install = |alg: u8, kek: &[u8], wrapped_len: u16, wrapped: &[u8]| {
            let mut body = vec![0, 0, 0, 7, alg, kek.len() as u8];
            body.extend_from_slice(kek);
            body.extend_from_slice(&wrapped_len.to_be_bytes());
            body.extend_from_slice(wrapped);
            let mut out = CONTROL_MAGIC.to_vec();
            out.extend_from_slice(&[1, 1]);
            out.extend_from_slice(&(body.len() as u32).to_be_bytes());
            out.extend_from_slice(&body);
            ControlCommand::decode(&out)
        };
        assert!(install(1, b"k", 1, b"w").is_ok());
        assert!(install(2, b"k", 1, b"w").is_ok());
        assert_eq!(install(3, b"k", 1, b"w"), Err(ControlDecodeError::UnknownAlgorithm(3)));
        assert_eq!(install(1, b"", 1, b"w"), Err(ControlDecodeError::InvalidKekId));
        assert_eq!(install(1, &[0xff], 1, b"w"), Err(ControlDecodeError::InvalidKekId));
        assert_eq!(install(1, b"k", 0, b""), Err(ControlDecodeError::WrappedKeyLength { len: 0 }));
        assert_eq!(
            install(1, b"k", 2, b"w"),
            Err(ControlDecodeError::FieldTruncated { field: "wrapped key" })
        );
        let long = vec![0u8; 4097];
        assert_eq!(install(1, b"k", 4097, &long), Err(ControlDecodeError::WrappedKeyLength { len: 4097 }));
    }
}
