//! Key-encryption keys: the [`KeyProvider`] that wraps and unwraps data keys under a
//! key-encryption key (KEK), and the built-in [`FileKekProvider`].

use std::fmt;
use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use zeroize::Zeroizing;

use crate::errors::{BoxedError, ConfigError, FailureReason};
use crate::ids::{Algorithm, KeyId, ProposalId, Purpose};
use crate::keyring::{Keyring, SecretKey, KEY_LEN};
use crate::names::ClusterId;
pub use crate::names::KekId;

/// A data key wrapped under a key-encryption key: opaque bytes in the provider's own format,
/// 1 to [`WrappedKey::MAX_LEN`] bytes. Not secret (it only opens under the KEK), but `Debug`
/// shows only its length.
#[derive(Clone, PartialEq, Eq)]
pub struct WrappedKey(Vec<u8>);

impl WrappedKey {
    /// The longest wrapped key accepted, in bytes (room for a KMS ciphertext blob).
    pub const MAX_LEN: usize = 4096;

    /// Takes a wrapped key.
    ///
    /// # Errors
    /// [`ConfigError::WrappedKeyLength`] when empty or longer than [`WrappedKey::MAX_LEN`].
    pub fn new(bytes: Vec<u8>) -> Result<Self, ConfigError> {
        if bytes.is_empty() || bytes.len() > Self::MAX_LEN {
            return Err(ConfigError::WrappedKeyLength { len: bytes.len() });
        }
        Ok(Self(bytes))
    }

    /// The wrapped bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Debug for WrappedKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "WrappedKey({} bytes)", self.0.len())
    }
}

/// What a wrapped data key is bound to. A provider must make a wrapped key unwrap only under the
/// same context (the built-in provider authenticates all of it; a KMS implementation passes it as
/// the request's encryption context / additional authenticated data), so a wrapped key cannot be
/// replayed as another key id, algorithm or cluster.
#[derive(Clone, Copy, Debug)]
#[non_exhaustive]
pub struct WrapContext<'a> {
    /// The cluster (or Raft group) the key serves.
    pub cluster: &'a ClusterId,
    /// The data key's id.
    pub key_id: KeyId,
    /// The data key's algorithm.
    pub algorithm: Algorithm,
    /// The KEK to wrap under or unwrap with.
    pub kek_id: &'a KekId,
}

impl<'a> WrapContext<'a> {
    /// A context.
    pub fn new(cluster: &'a ClusterId, key_id: KeyId, algorithm: Algorithm, kek_id: &'a KekId) -> Self {
        Self { cluster, key_id, algorithm, kek_id }
    }
}

/// Wraps and unwraps data keys under a key-encryption key (KEK).
///
/// Data keys travel through the Raft log wrapped (in [`InstallKey`](crate::InstallKey) control
/// entries); every replica unwraps them with its own provider.
///
/// # The rule: a provider call never blocks apply
///
/// Providers are `async` and may be slow or unavailable (a remote KMS). Applying a committed
/// entry must not wait for them, so:
/// - a replica unwraps a new key *ahead of* applying it — when the install entry is appended to
///   its log, when it receives it, or on an admin command — with
///   [`LayerState::prefetch`](crate::LayerState::prefetch), which caches the unwrapped key;
/// - [`LayerState::apply_control`](crate::LayerState::apply_control) is synchronous and only
///   consumes that cache;
/// - a replica that has no unwrapped key when it reaches the install entry halts there
///   ([`FailureReason::KeyUnavailable`]; fail closed, SPEC R3) and applies the same entry once the
///   key has been provided (sticky, never skipped).
///
/// # Implementing a provider for a remote KMS
///
/// ```
/// use raft_envelope_core::{async_trait, SecretKey, provider::{KekId, KeyProvider, KeyProviderError, WrapContext, WrappedKey}};
/// use std::sync::Arc;
///
/// /// Stand-in for a KMS SDK client (encrypt / decrypt under a named key with an encryption
/// /// context the KMS authenticates).
/// struct KmsClient;
/// #[derive(Debug, thiserror::Error)]
/// #[error("kms: {0}")]
/// struct KmsError(String);
/// impl KmsClient {
///     async fn encrypt(&self, key: &str, plaintext: &[u8], ctx: &[(&str, String)]) -> Result<Vec<u8>, KmsError> {
///         # let _ = (key, ctx);
///         Ok(plaintext.iter().map(|b| b ^ 0x5a).collect()) // the real call goes over the network
///     }
///     async fn decrypt(&self, key: &str, blob: &[u8], ctx: &[(&str, String)]) -> Result<Vec<u8>, KmsError> {
///         # let _ = (key, ctx);
///         Ok(blob.iter().map(|b| b ^ 0x5a).collect())
///     }
/// }
///
/// struct KmsProvider {
///     client: KmsClient,
///     kek_id: KekId, // e.g. the KMS key's resource name
/// }
///
/// fn context(ctx: &WrapContext<'_>) -> Vec<(&'static str, String)> {
///     // Bind the wrapped key to its cluster, key id and algorithm.
///     vec![
///         ("cluster", String::from_utf8_lossy(ctx.cluster.as_bytes()).into_owned()),
///         ("key_id", ctx.key_id.0.to_string()),
///         ("algorithm", ctx.algorithm.to_string()),
///     ]
/// }
///
/// fn kms_error(kek_id: &KekId, e: KmsError) -> KeyProviderError {
///     // Errors carry no key bytes (the SDK's error must not either).
///     KeyProviderError::Other { kek_id: Some(kek_id.clone()), source: Arc::new(e) }
/// }
///
/// #[async_trait]
/// impl KeyProvider for KmsProvider {
///     fn kek_id(&self) -> &KekId {
///         &self.kek_id
///     }
///
///     async fn wrap(&self, ctx: &WrapContext<'_>, key: &SecretKey) -> Result<WrappedKey, KeyProviderError> {
///         let blob = self
///             .client
///             .encrypt(self.kek_id.as_str(), key.expose_secret(), &context(ctx))
///             .await
///             .map_err(|e| kms_error(&self.kek_id, e))?;
///         Ok(WrappedKey::new(blob)?)
///     }
///
///     async fn unwrap(&self, ctx: &WrapContext<'_>, wrapped: &WrappedKey) -> Result<SecretKey, KeyProviderError> {
///         if ctx.kek_id != &self.kek_id {
///             return Err(KeyProviderError::UnknownKek { requested: ctx.kek_id.clone(), held: self.kek_id.clone() });
///         }
///         let plain = zeroize::Zeroizing::new(
///             self.client
///                 .decrypt(self.kek_id.as_str(), wrapped.as_bytes(), &context(ctx))
///                 .await
///                 .map_err(|e| kms_error(&self.kek_id, e))?,
///         );
///         Ok(SecretKey::from_slice(&plain)?)
///     }
/// }
/// ```
///
/// An implementation must not put key bytes into errors, logs or traces, and should time out
/// rather than hang: a replica waiting for its provider simply stays behind (or halted) until
/// the key arrives.
#[async_trait::async_trait]
pub trait KeyProvider: Send + Sync {
    /// The KEK this provider wraps new keys under.
    fn kek_id(&self) -> &KekId;

    /// Wraps `key` under the KEK named by `context.kek_id`, bound to `context`.
    ///
    /// # Errors
    /// A [`KeyProviderError`]; nothing is installed.
    async fn wrap(&self, context: &WrapContext<'_>, key: &SecretKey) -> Result<WrappedKey, KeyProviderError>;

    /// Unwraps `wrapped`, which must have been wrapped for exactly `context`.
    ///
    /// # Errors
    /// A [`KeyProviderError`]: this replica cannot obtain the key (it halts at the install entry
    /// until the key is provided).
    async fn unwrap(
        &self,
        context: &WrapContext<'_>,
        wrapped: &WrappedKey,
    ) -> Result<SecretKey, KeyProviderError>;
}

/// A key provider could not wrap or unwrap a key, or could not be set up. Never holds key bytes.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum KeyProviderError {
    /// The KEK file does not exist.
    #[error("KEK file {} does not exist", path.display())]
    KekFileMissing {
        /// The path given.
        path: PathBuf,
    },
    /// The KEK file could not be read (or is not a regular file: kind `InvalidInput`).
    #[error("KEK file {} could not be read: {kind}", path.display())]
    KekFileUnreadable {
        /// The path given.
        path: PathBuf,
        /// The I/O error's kind.
        kind: io::ErrorKind,
    },
    /// The KEK file grants permissions to its group or to others; it must be `0600` or `0400`
    /// (owner only).
    #[error("KEK file {} has mode {mode:04o}: it must not be accessible to group or others (chmod 600)", path.display())]
    KekFilePermissions {
        /// The path given.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// The KEK file is shorter or longer than 64 hex characters (plus an optional newline).
    #[error("KEK file {} holds {len} bytes; expected exactly 64 hex characters (32 bytes), optionally followed by one newline (create it with `openssl rand -hex 32`)", path.display())]
    KekFileLength {
        /// The path given.
        path: PathBuf,
        /// The file's length in bytes.
        len: u64,
    },
    /// The KEK file has the right length but a character that is not a hex digit.
    #[error("KEK file {} is not hex: byte {offset} is not a hex digit", path.display())]
    KekFileGarbage {
        /// The path given.
        path: PathBuf,
        /// The offset of the first bad byte (never the byte itself).
        offset: usize,
    },
    /// The provider does not hold the KEK the key was wrapped under.
    #[error("KEK {requested} is not held by this provider (it holds {held})")]
    UnknownKek {
        /// The KEK asked for.
        requested: KekId,
        /// The KEK the provider holds.
        held: KekId,
    },
    /// The wrapped key did not unwrap: another KEK, another cluster, another key id or algorithm,
    /// or tampered bytes.
    #[error("{key_id} did not unwrap under KEK {kek_id}: {reason}")]
    UnwrapFailed {
        /// The data key.
        key_id: KeyId,
        /// The KEK.
        kek_id: KekId,
        /// Why.
        reason: FailureReason,
    },
    /// The provider could not wrap the key.
    #[error("{key_id} could not be wrapped under KEK {kek_id}")]
    WrapFailed {
        /// The data key.
        key_id: KeyId,
        /// The KEK.
        kek_id: KekId,
    },
    /// A configuration value was refused (for example a KMS returned an over-long blob).
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A third-party provider's own error (a KMS call failed or timed out).
    #[error("key provider error{}: {source}", kek_id.as_ref().map(|k| format!(" (KEK {k})")).unwrap_or_default())]
    Other {
        /// The KEK involved, when known.
        kek_id: Option<KekId>,
        /// The provider's error.
        #[source]
        source: BoxedError,
    },
}

/// The built-in provider: a 256-bit KEK read from a local file.
///
/// # The KEK file
/// Exactly 64 hex digits (upper or lower case) encoding 32 bytes, optionally followed by one
/// `\n` or `\r\n` — the output of `openssl rand -hex 32`. Hex rather than raw bytes because KEKs
/// are handed around by secret managers, configuration tools and terminals that mangle binary
/// (a raw file would be one stray newline away from a different or short key). On unix the file
/// must not be accessible to group or others (mode `0600` or `0400`), as ssh demands of private
/// keys. Each problem has its own [`KeyProviderError`]: missing, unreadable, permissions, length,
/// not hex.
///
/// # The wrapped form
/// An envelope (format v1, `DESIGN.md` §2) of [`Purpose::KeyWrap`] sealed with AES-256-GCM under
/// the KEK: header key id 0, header proposal id = the data key's id, the cluster id in the
/// authenticated data, and plaintext `algorithm id (1) ‖ key id (4, big-endian) ‖ key (32)`:
/// 81 bytes. Unwrapping checks the purpose, the cluster, the tag and that the algorithm and key
/// id inside match the install command.
///
/// ```
/// use raft_envelope_core::{Algorithm, ClusterId, KeyId, SecretKey};
/// use raft_envelope_core::provider::{FileKekProvider, KekId, KeyProvider, KeyProviderError, WrapContext};
///
/// # async fn demo() -> Result<(), KeyProviderError> {
/// # let dir = std::env::temp_dir().join(format!("kek-doc-{}", std::process::id()));
/// # std::fs::create_dir_all(&dir).unwrap();
/// # let path = dir.join("kek.hex");
/// # std::fs::write(&path, "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f\n").unwrap();
/// # #[cfg(unix)] { use std::os::unix::fs::PermissionsExt; std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap(); }
/// let provider = FileKekProvider::load(KekId::new("kek-1")?, &path)?;
/// let cluster = ClusterId::new("payments")?;
/// let ctx = WrapContext::new(&cluster, KeyId(2), Algorithm::Aes256Gcm, provider.kek_id());
/// let key = SecretKey::generate()?;
/// let wrapped = provider.wrap(&ctx, &key).await?;
/// let unwrapped = provider.unwrap(&ctx, &wrapped).await?;
/// assert_eq!(unwrapped.expose_secret(), key.expose_secret());
/// # Ok(()) }
/// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(demo()).unwrap();
/// ```
pub struct FileKekProvider {
    kek_id: KekId,
    path: Option<PathBuf>,
    /// The KEK, as the only key of a keyring (key id 0): the keyring's nonce construction and
    /// budget apply to wrapping.
    kek: Keyring,
}

/// The key id the KEK has inside the provider's keyring (and in the wrapped envelope's header).
const KEK_SLOT: KeyId = KeyId(0);
/// `algorithm (1) ‖ key id (4) ‖ key (32)`.
const WRAPPED_PLAINTEXT_LEN: usize = 1 + 4 + KEY_LEN;
/// Bytes of the file read at most (a longer file is refused without reading it all).
const KEK_FILE_READ_LIMIT: usize = 80;

impl FileKekProvider {
    /// Reads the KEK named `kek_id` from the file at `path` (format above).
    ///
    /// # Errors
    /// [`KeyProviderError::KekFileMissing`], [`KeyProviderError::KekFileUnreadable`],
    /// [`KeyProviderError::KekFilePermissions`], [`KeyProviderError::KekFileLength`] or
    /// [`KeyProviderError::KekFileGarbage`]; [`KeyProviderError::Config`] if the system random
    /// generator fails.
    pub fn load(kek_id: KekId, path: impl AsRef<Path>) -> Result<Self, KeyProviderError> {
        let path = path.as_ref();
        let key = read_kek_file(path)?;
        let provider = Self::from_key(kek_id, key)?;
        tracing::info!(kek_id = %provider.kek_id, path = %path.display(), "KEK loaded from file");
        Ok(Self { path: Some(path.to_path_buf()), ..provider })
    }

    /// A provider holding `kek` directly (for tests, or a KEK obtained some other way).
    ///
    /// # Errors
    /// [`KeyProviderError::Config`] if the system random generator fails.
    pub fn from_key(kek_id: KekId, kek: SecretKey) -> Result<Self, KeyProviderError> {
        let ring = Keyring::new();
        ring.insert_kek(Algorithm::Aes256Gcm, kek)?;
        ring.promote(KEK_SLOT)?;
        Ok(Self { kek_id, path: None, kek: ring })
    }

    /// The file the KEK was read from, if any.
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }
}

impl fmt::Debug for FileKekProvider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FileKekProvider").field("kek_id", &self.kek_id).field("path", &self.path).finish()
    }
}

#[async_trait::async_trait]
impl KeyProvider for FileKekProvider {
    fn kek_id(&self) -> &KekId {
        &self.kek_id
    }

    async fn wrap(&self, context: &WrapContext<'_>, key: &SecretKey) -> Result<WrappedKey, KeyProviderError> {
        self.check_kek(context)?;
        let mut plain = Zeroizing::new([0u8; WRAPPED_PLAINTEXT_LEN]);
        plain[0] = context.algorithm.wire_id();
        plain[1..5].copy_from_slice(&context.key_id.0.to_be_bytes());
        plain[5..].copy_from_slice(key.expose_secret());
        let sealed = self
            .kek
            .seal(Purpose::KeyWrap, context.cluster, ProposalId(u64::from(context.key_id.0)), &plain[..])
            .map_err(|_| KeyProviderError::WrapFailed {
                key_id: context.key_id,
                kek_id: self.kek_id.clone(),
            })?;
        Ok(WrappedKey::new(sealed)?)
    }

    async fn unwrap(
        &self,
        context: &WrapContext<'_>,
        wrapped: &WrappedKey,
    ) -> Result<SecretKey, KeyProviderError> {
        self.check_kek(context)?;
        let failed = |reason| KeyProviderError::UnwrapFailed {
            key_id: context.key_id,
            kek_id: self.kek_id.clone(),
            reason,
        };
        let plain = Zeroizing::new(
            self.kek
                .open(Purpose::KeyWrap, context.cluster, wrapped.as_bytes())
                .map_err(|e| failed(e.reason()))?,
        );
        if plain.len() != WRAPPED_PLAINTEXT_LEN
            || plain[0] != context.algorithm.wire_id()
            || plain[1..5] != context.key_id.0.to_be_bytes()
        {
            return Err(failed(FailureReason::AuthenticationFailed));
        }
        Ok(SecretKey::from_slice(&plain[5..])?)
    }
}

impl FileKekProvider {
    fn check_kek(&self, context: &WrapContext<'_>) -> Result<(), KeyProviderError> {
        if context.kek_id != &self.kek_id {
            return Err(KeyProviderError::UnknownKek {
                requested: context.kek_id.clone(),
                held: self.kek_id.clone(),
            });
        }
        Ok(())
    }
}

fn read_kek_file(path: &Path) -> Result<SecretKey, KeyProviderError> {
    let io_error = |e: io::Error| match e.kind() {
        io::ErrorKind::NotFound => KeyProviderError::KekFileMissing { path: path.to_path_buf() },
        kind => KeyProviderError::KekFileUnreadable { path: path.to_path_buf(), kind },
    };
    let mut file = File::open(path).map_err(io_error)?;
    // Check the permissions of the file we opened (not of the path again: no race).
    let meta = file.metadata().map_err(io_error)?;
    if !meta.is_file() {
        return Err(KeyProviderError::KekFileUnreadable {
            path: path.to_path_buf(),
            kind: io::ErrorKind::InvalidInput,
        });
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = meta.permissions().mode() & 0o7777;
        if mode & 0o077 != 0 {
            return Err(KeyProviderError::KekFilePermissions { path: path.to_path_buf(), mode });
        }
    }
    let mut buf = Zeroizing::new([0u8; KEK_FILE_READ_LIMIT]);
    let mut len = 0;
    loop {
        match file.read(&mut buf[len..]) {
            Ok(0) => break,
            Ok(n) => {
                len += n;
                if len == KEK_FILE_READ_LIMIT {
                    return Err(KeyProviderError::KekFileLength {
                        path: path.to_path_buf(),
                        len: meta.len().max(len as u64),
                    });
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(io_error(e)),
        }
    }
    parse_hex_kek(&buf[..len]).map_err(|bad| match bad {
        HexProblem::Length => KeyProviderError::KekFileLength { path: path.to_path_buf(), len: len as u64 },
        HexProblem::NotHex(offset) => KeyProviderError::KekFileGarbage { path: path.to_path_buf(), offset },
    })
}

enum HexProblem {
    Length,
    NotHex(usize),
}

/// 64 hex digits, optionally followed by `\n` or `\r\n`.
fn parse_hex_kek(text: &[u8]) -> Result<SecretKey, HexProblem> {
    let digits = text.strip_suffix(b"\r\n").or_else(|| text.strip_suffix(b"\n")).unwrap_or(text);
    if digits.len() != 2 * KEY_LEN {
        return Err(HexProblem::Length);
    }
    let nibble = |i: usize| -> Result<u8, HexProblem> {
        let c = digits[i];
        match c {
            b'0'..=b'9' => Ok(c - b'0'),
            b'a'..=b'f' => Ok(c - b'a' + 10),
            b'A'..=b'F' => Ok(c - b'A' + 10),
            _ => Err(HexProblem::NotHex(i)),
        }
    };
    let mut key = Zeroizing::new([0u8; KEY_LEN]);
    for (i, byte) in key.iter_mut().enumerate() {
        *byte = (nibble(2 * i)? << 4) | nibble(2 * i + 1)?;
    }
    Ok(SecretKey::from_zeroizing(key))
}
