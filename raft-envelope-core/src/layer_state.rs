//! The layer's replicated state: keyring and cutover changed by control entries at their log
//! index, identically on every replica, and its snapshot form.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, Mutex};

use zeroize::Zeroizing;

use crate::apply_error::{ControlError, FatalApplyError};
use crate::cipher::EnvelopeCipher;
use crate::control::{ControlCommand, ControlDecodeError, InstallKey, Reader};
use crate::envelope::{EnvelopeHeader, FORMAT_VERSION};
use crate::errors::{AppendRefusal, ConfigError, SealError};
use crate::ids::{Algorithm, KeyId, ProposalId, Purpose};
use crate::integrity::{Admission, CheckpointPolicy, EntryRecord, IntegrityState, Verdict};
use crate::keyring::{KeyState, Keyring, SealBudget, SecretKey};
use crate::local::{lock, CheckpointResult, NodeLocal};
use crate::names::{ClusterId, KekId};
use crate::provider::{KeyProvider, WrapContext, WrappedKey};
use crate::traits::Cutover;

/// One key as the layer state knows it: replicated, identical on every replica that applied the
/// same log prefix.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct LayerKey {
    /// The key.
    pub key_id: KeyId,
    /// Its algorithm.
    pub algorithm: Algorithm,
    /// The KEK its wrapped copy is wrapped under.
    pub kek_id: KekId,
    /// Its wrapped copy, for snapshots; `None` once destroyed (the snapshot then carries no copy
    /// of the material at all).
    pub wrapped_key: Option<WrappedKey>,
    /// Its state.
    pub state: KeyState,
    /// The log index of the install entry.
    pub installed_at: u64,
    /// Committed entries sealed under the key that this layer state has applied (recorded payload
    /// envelopes and sealed control entries).
    pub sealed_entries: u64,
    /// The log index of the last of them.
    pub last_sealed_index: Option<u64>,
}

/// The layer's replicated key state as one replica has applied it, for operators and admin
/// endpoints ([`LayerState::status`]). Never holds key material.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct EncryptionStatus {
    /// Every installed key with its state, algorithm, KEK, install index, sealed entries and last
    /// sealed index, in key id order.
    pub keys: Vec<LayerKey>,
    /// The cutover set by the enforce entry, if encryption is enforced.
    pub cutover: Option<u64>,
    /// The key new proposals are sealed under, if any.
    pub active_key: Option<KeyId>,
    /// The last log index the layer state has taken into account.
    pub applied_index: Option<u64>,
    /// For each key that can still seal or open, how many more entries this replica may seal
    /// under it: the budget less the larger of the seals made here and the sealed entries
    /// applied. Only the active key's figure matters for sealing.
    pub budget_remaining: BTreeMap<KeyId, u64>,
    /// Whether the active key's budget is low enough that it should be rotated
    /// ([`LayerState::rotation_due`]).
    pub rotation_due: bool,
}

/// What applying a control entry did.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ControlOutcome {
    /// The command changed the layer state.
    Applied(ControlCommand),
    /// The command repeats the current state (the same install again, promoting the active key,
    /// retiring a decrypt-only key, destroying a destroyed key, a second enforce): nothing
    /// changed, on every replica alike. A retried admin proposal appended twice lands here.
    Unchanged(ControlCommand),
    /// The index is at or below [`LayerState::applied_index`]: the entry was already taken into
    /// account (a replay after restoring the layer state), and is ignored.
    AlreadyApplied,
}

/// The layer's replicated snapshot state: everything a replica needs to reach exactly the layer
/// state of its peers without the control entries that built it (they may have been compacted).
///
/// Carries wrapped keys only (never unwrapped material); restoring needs the KEKs
/// ([`LayerState::prefetch_snapshot`], then [`LayerState::restore`]). Byte form:
/// [`encode`](Self::encode) / [`decode`](Self::decode), `DESIGN.md` §10.4.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct LayerSnapshot {
    /// Every key ever installed, in key id order (destroyed ones without material).
    pub keys: Vec<LayerKey>,
    /// The cutover set by the first enforce entry, if any.
    pub cutover: Option<u64>,
    /// The last log index taken into account.
    pub applied_index: Option<u64>,
    /// Replay windows, running digest and last checkpoint (`DESIGN.md` §11).
    pub integrity: IntegrityState,
}

/// `"\xE5RLST\r\n\x1A"`: the first 8 bytes of an encoded [`LayerSnapshot`].
pub const LAYER_SNAPSHOT_MAGIC: [u8; 8] = [0xE5, b'R', b'L', b'S', b'T', b'\r', b'\n', 0x1A];
/// The layer snapshot version this build writes; it reads 1 (no integrity state) and 2.
const SNAPSHOT_VERSION: u8 = 2;
const NONE_INDEX: u64 = u64::MAX;
/// Fixed bytes of one key record (all but the KEK id and the wrapped key).
const KEY_RECORD_FIXED_LEN: usize = 4 + 1 + 1 + 8 + 8 + 8 + 1 + 2;

fn state_wire(state: KeyState) -> u8 {
    match state {
        KeyState::Active => 1,
        KeyState::DecryptOnly => 2,
        KeyState::Destroyed => 3,
    }
}

fn opt_index(v: u64) -> Option<u64> {
    (v != NONE_INDEX).then_some(v)
}

impl LayerSnapshot {
    /// The active key, if any.
    pub fn active_key(&self) -> Option<KeyId> {
        self.keys.iter().find(|k| k.state == KeyState::Active).map(|k| k.key_id)
    }

    /// The snapshot's bytes (format v2).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(29 + self.keys.len() * (KEY_RECORD_FIXED_LEN + 128));
        out.extend_from_slice(&LAYER_SNAPSHOT_MAGIC);
        out.push(SNAPSHOT_VERSION);
        out.extend_from_slice(&self.cutover.unwrap_or(NONE_INDEX).to_be_bytes());
        out.extend_from_slice(&self.applied_index.unwrap_or(NONE_INDEX).to_be_bytes());
        out.extend_from_slice(&(self.keys.len() as u32).to_be_bytes());
        for k in &self.keys {
            out.extend_from_slice(&k.key_id.0.to_be_bytes());
            out.push(state_wire(k.state));
            out.push(k.algorithm.wire_id());
            out.extend_from_slice(&k.installed_at.to_be_bytes());
            out.extend_from_slice(&k.sealed_entries.to_be_bytes());
            out.extend_from_slice(&k.last_sealed_index.unwrap_or(NONE_INDEX).to_be_bytes());
            let kek = k.kek_id.as_str().as_bytes();
            out.push(kek.len() as u8); // KekId: 1..=255
            out.extend_from_slice(kek);
            let wrapped = k.wrapped_key.as_ref().map(WrappedKey::as_bytes).unwrap_or_default();
            out.extend_from_slice(&(wrapped.len() as u16).to_be_bytes()); // WrappedKey: <= 4096
            out.extend_from_slice(wrapped);
        }
        self.integrity.encode_into(&mut out);
        out
    }

    /// Reads a snapshot. Total: never panics, and allocates no more than the input's length.
    ///
    /// # Errors
    /// [`ControlError::MalformedSnapshot`], naming what is wrong.
    pub fn decode(bytes: &[u8]) -> Result<Self, ControlError> {
        let bad = |what| ControlError::MalformedSnapshot { what };
        let field = |e: ControlDecodeError| match e {
            ControlDecodeError::FieldTruncated { field } => bad(field),
            _ => bad("field"),
        };
        let mut r = Reader(bytes);
        if r.take(8, "magic").map_err(field)? != LAYER_SNAPSHOT_MAGIC {
            return Err(bad("magic"));
        }
        let version = r.u8("version").map_err(field)?;
        if version != 1 && version != SNAPSHOT_VERSION {
            return Err(bad("unsupported version"));
        }
        let cutover = opt_index(r.u64("cutover").map_err(field)?);
        let applied_index = opt_index(r.u64("applied index").map_err(field)?);
        let count = r.u32("key count").map_err(field)?;
        if u64::from(count) * KEY_RECORD_FIXED_LEN as u64 > r.0.len() as u64 {
            return Err(bad("key count"));
        }
        let mut keys: Vec<LayerKey> = Vec::with_capacity(count as usize);
        for _ in 0..count {
            let key_id = KeyId(r.u32("key id").map_err(field)?);
            let state = match r.u8("key state").map_err(field)? {
                1 => KeyState::Active,
                2 => KeyState::DecryptOnly,
                3 => KeyState::Destroyed,
                _ => return Err(bad("key state")),
            };
            let algorithm =
                Algorithm::from_wire_id(r.u8("algorithm").map_err(field)?).ok_or(bad("algorithm"))?;
            let installed_at = r.u64("installed at").map_err(field)?;
            let sealed_entries = r.u64("sealed entries").map_err(field)?;
            let last_sealed_index = opt_index(r.u64("last sealed index").map_err(field)?);
            let kek_len = usize::from(r.u8("KEK id length").map_err(field)?);
            let kek = r.take(kek_len, "KEK id").map_err(field)?;
            let kek_id =
                std::str::from_utf8(kek).ok().and_then(|k| KekId::new(k).ok()).ok_or(bad("KEK id"))?;
            let wrapped_len = usize::from(r.u16("wrapped key length").map_err(field)?);
            let wrapped = r.take(wrapped_len, "wrapped key").map_err(field)?;
            let wrapped_key = match (state, wrapped_len) {
                (KeyState::Destroyed, 0) => None,
                (KeyState::Destroyed, _) => return Err(bad("destroyed key with material")),
                (_, _) => Some(WrappedKey::new(wrapped.to_vec()).map_err(|_| bad("wrapped key length"))?),
            };
            if keys.last().is_some_and(|last| last.key_id >= key_id) {
                return Err(bad("key ids not strictly increasing"));
            }
            keys.push(LayerKey {
                key_id,
                algorithm,
                kek_id,
                wrapped_key,
                state,
                installed_at,
                sealed_entries,
                last_sealed_index,
            });
        }
        let integrity = match version {
            // An inert v1 state had hashed nothing, and neither had anyone else (§11.2).
            1 if keys.is_empty() && cutover.is_none() => IntegrityState::default(),
            1 => IntegrityState::unknown_chain(),
            _ => IntegrityState::decode_from(&mut r).map_err(bad)?,
        };
        if !r.0.is_empty() {
            return Err(bad("trailing bytes"));
        }
        if keys.iter().filter(|k| k.state == KeyState::Active).count() > 1 {
            return Err(bad("more than one active key"));
        }
        Ok(Self { keys, cutover, applied_index, integrity })
    }
}

/// A key unwrapped ahead of its install entry (or of a snapshot restore), waiting to be applied.
pub(crate) struct Unwrapped {
    pub(crate) install: InstallKey,
    pub(crate) key: SecretKey,
}

#[derive(Default)]
struct Inner {
    keys: BTreeMap<KeyId, LayerKey>,
    cutover: Option<u64>,
    applied: Option<u64>,
    integrity: IntegrityState,
}

impl Inner {
    /// True once the layer is no longer inert: a key was installed or a cutover set. Monotonic
    /// (keys are never forgotten, the cutover never unset) and a function of the log prefix, so
    /// every replica starts its digest chain at the same entry: the first layer control entry.
    /// While inert, nothing is hashed (inert costs nothing, `DESIGN.md` §11.2).
    fn recording(&self) -> bool {
        !self.keys.is_empty() || self.cutover.is_some()
    }
}

/// The envelope layer's own state machine, run by the adapters for every layer control entry at
/// its log index: it applies [`ControlCommand`]s to a [`Keyring`] and a [`Cutover`] so that every
/// replica reaches the same key states and the same cutover at the same log index.
///
/// The layer state owns its keyring and cutover: build the node's [`EnvelopeCipher`] from
/// [`cipher`](Self::cipher) and its [`ApplyGate`](crate::ApplyGate) from
/// [`cutover_source`](Self::cutover_source), and change keys and cutover only through control
/// entries.
///
/// # The adapter's part
/// - Frame layer control entries so the engine's log tells them apart from application payloads
///   (as it tells envelopes from cleartext), propose them with [`encode_entry`](Self::encode_entry),
///   and apply each committed one, in log order, with [`apply_control`](Self::apply_control)
///   instead of [`decide`](crate::decide): it never reaches the user's state machine. On `Err`,
///   halt exactly as for a [`decide`](crate::decide) halt.
/// - Before applying, unwrap new keys with [`prefetch`](Self::prefetch) (on append, on receipt,
///   or on an admin command); apply never waits for a key provider.
/// - After an envelope opens on the apply path, call
///   [`admit`](Self::admit) with it (and with every other entry that is not a layer control
///   entry), and apply it only on [`Admission::Apply`](crate::apply::Admission::Apply).
/// - Put [`snapshot`](Self::snapshot) into state-machine snapshots and
///   [`restore`](Self::restore) it when installing one.
///
/// # Applying control entries
///
/// | control entry at index `i` | `i <= cutover`, or no cutover | `i > cutover` |
/// |---|---|---|
/// | in the clear ([`CONTROL_MAGIC`](crate::CONTROL_MAGIC)) | applied | halt |
/// | sealed ([`Purpose::Control`] envelope), opens | applied | applied |
/// | sealed, does not open | halt | halt |
/// | command cannot be applied, or its key is not unwrapped here | halt | halt |
///
/// Applying is atomic: on `Err` nothing changed, and the same entry can be applied again once the
/// cause is repaired (for a missing key: [`prefetch`](Self::prefetch), then apply again).
///
/// ```
/// use raft_envelope_core::{Algorithm, ClusterId, KeyId, LayerState, ProposalId, SecretKey};
/// use raft_envelope_core::provider::{FileKekProvider, KekId};
/// use raft_envelope_core::wire::ControlCommand;
///
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// let kek = FileKekProvider::from_key(KekId::new("kek-1")?, SecretKey::generate()?)?;
/// let leader = LayerState::new(ClusterId::new("payments")?);
///
/// // Admin, on the leader: a new key wrapped under the KEK, then promote, then enforce.
/// let install = leader.generate_install(KeyId(1), Algorithm::Aes256Gcm, &kek).await?;
/// let entries = [
///     leader.encode_entry(ProposalId(1), &install)?,
///     ControlCommand::PromoteKey { key_id: KeyId(1) }.encode(),
///     ControlCommand::Enforce.encode(),
/// ];
///
/// // Every replica: unwrap ahead of apply, then apply at the entries' indexes.
/// let follower = LayerState::new(ClusterId::new("payments")?);
/// for (index, entry) in (10..).zip(&entries) {
///     follower.prefetch(entry, &kek).await?;
///     follower.apply_control(index, entry)?;
///     leader.apply_control(index, entry)?;
/// }
/// assert_eq!(follower.cutover(), Some(12));
/// assert_eq!(follower.active_key(), Some(KeyId(1)));
/// assert_eq!(follower.snapshot(), leader.snapshot());
/// # Ok(()) }
/// # tokio::runtime::Builder::new_current_thread().build()?.block_on(demo()).map_err(|e| e.to_string())?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct LayerState {
    pub(crate) cluster: ClusterId,
    pub(crate) keyring: Arc<Keyring>,
    cutover: Arc<Cutover>,
    inner: Mutex<Inner>,
    pub(crate) unwrapped: Mutex<BTreeMap<KeyId, Unwrapped>>,
    seal_limit: u64,
    /// Proposal ids for the control entries this node seals.
    next_control_id: std::sync::atomic::AtomicU64,
    /// Node-local bookkeeping, never replicated.
    local: NodeLocal,
}

/// The layer state captured for a snapshot build that seals later, while entries go on applying
/// ([`LayerState::capture_for_snapshot`]). While it lives, the key it will seal under counts as
/// in use on this replica ([`LayerState::keys_in_use`]), so that key cannot be proven
/// destroyable before the build has sealed.
pub struct SnapshotCapture {
    state: Arc<LayerState>,
    layer: LayerSnapshot,
    key: Option<KeyId>,
}

impl SnapshotCapture {
    /// The captured layer state, to pass to [`LayerState::seal_snapshot_of`].
    pub fn layer(&self) -> &LayerSnapshot {
        &self.layer
    }
}

impl Drop for SnapshotCapture {
    fn drop(&mut self) {
        if let Some(key) = self.key {
            self.state.local.release(key);
        }
    }
}

impl fmt::Debug for SnapshotCapture {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SnapshotCapture")
            .field("applied_index", &self.layer.applied_index)
            .field("key", &self.key)
            .finish()
    }
}

impl LayerState {
    /// An empty layer state for `cluster`: no keys, no cutover (inert).
    pub fn new(cluster: ClusterId) -> Self {
        Self::with_seal_limit(cluster, SealBudget::NIST_LIMIT)
    }

    /// An empty layer state whose keys may each seal at most `limit` entries (lowered to
    /// [`SealBudget::NIST_LIMIT`]); [`rotation_due`](Self::rotation_due) reports the active key
    /// once an eighth of that is left. Every replica of a cluster must use the same limit. A small
    /// limit is for tests of rotation; [`new`](Self::new) uses the NIST limit.
    pub fn with_seal_limit(cluster: ClusterId, limit: u64) -> Self {
        Self {
            cluster,
            keyring: Arc::new(Keyring::new()),
            cutover: Arc::new(Cutover::inert()),
            inner: Mutex::new(Inner::default()),
            unwrapped: Mutex::new(BTreeMap::new()),
            seal_limit: SealBudget::new(limit).limit(),
            next_control_id: std::sync::atomic::AtomicU64::new(random_u64()),
            local: NodeLocal::default(),
        }
    }

    /// This replica's own bookkeeping (its log, its snapshot, its snapshot builds), which the
    /// adapters feed and which is never replicated.
    pub fn local(&self) -> &NodeLocal {
        &self.local
    }

    /// A fresh proposal id for a control entry this node seals.
    pub fn next_control_id(&self) -> ProposalId {
        ProposalId(self.next_control_id.fetch_add(1, std::sync::atomic::Ordering::Relaxed))
    }

    /// The rule every adapter applies right before a proposal is appended to its log (its own,
    /// or one forwarded to it): refused while its log may hold a layer control entry it has not
    /// applied ([`NodeLocal::control_pending`](crate::lifecycle::NodeLocal::control_pending)), and an envelope (`sealed_under` its
    /// key) only under the active key. Together they make every entry appended after a promote of
    /// key `k` sealed under `k` or a later key, and no cleartext land above an enforce entry,
    /// whatever the engine (`DESIGN.md` §10.8, §10.9, §10.11).
    ///
    /// # Errors
    /// [`AppendRefusal`]: nothing may be appended; the proposal may be retried (prepared again
    /// after [`AppendRefusal::NotActiveKey`]).
    pub fn check_append(&self, sealed_under: Option<KeyId>) -> Result<(), AppendRefusal> {
        if let Some(key_id) = sealed_under {
            if self.keyring.active_key() != Some(key_id) {
                return Err(AppendRefusal::NotActiveKey { key_id });
            }
        }
        if self.local.control_pending() {
            return Err(AppendRefusal::ControlPending);
        }
        Ok(())
    }

    /// Captures this layer state for a snapshot build that will seal later (with
    /// [`seal_snapshot_of`](Self::seal_snapshot_of)); the active key counts as in use until the
    /// capture is dropped. Call it where the engine captures the application's state, at the same
    /// applied index.
    pub fn capture_for_snapshot(self: &Arc<Self>) -> SnapshotCapture {
        let inner = lock(&self.inner);
        let layer = LayerSnapshot {
            keys: inner.keys.values().cloned().collect(),
            cutover: inner.cutover,
            applied_index: inner.applied,
            integrity: inner.integrity.clone(),
        };
        let key = layer.active_key();
        if let Some(key) = key {
            self.local.claim(key);
        }
        drop(inner);
        SnapshotCapture { state: self.clone(), layer, key }
    }

    /// Makes `layer` seal exactly while this state has an active key: sets `wrapper` when a key
    /// became active (a promote applied, or a snapshot restored one), removes it when the
    /// active key was retired with no cutover in force (proposals go out in the clear again).
    /// Call it after every applied control entry and restored snapshot. Returns whether the
    /// layer changed.
    pub fn sync_sealing(
        &self,
        layer: &crate::EnvelopeLayer,
        wrapper: &Arc<dyn crate::PayloadWrapper>,
    ) -> bool {
        match (self.keyring.active_key().is_some(), layer.is_sealing()) {
            (true, false) => {
                layer.set_wrapper(Some(wrapper.clone()));
                tracing::info!(
                    applied_index = self.applied_index(),
                    "a key is active: this node seals new proposals"
                );
                true
            }
            (false, true) if self.cutover().is_none() => {
                layer.set_wrapper(None);
                tracing::info!(
                    applied_index = self.applied_index(),
                    "no key is active: this node proposes in the clear"
                );
                true
            }
            _ => false,
        }
    }

    /// The most entries one key may seal ([`with_seal_limit`](Self::with_seal_limit)).
    pub fn seal_limit(&self) -> u64 {
        self.seal_limit
    }

    /// The active key when it should be replaced: its remaining sealing budget is at or below an
    /// eighth of [`seal_limit`](Self::seal_limit), counting the larger of the seals this process
    /// made under it and the sealed entries every replica applied (replicated, so a new leader
    /// sees the same count). An admin loop on the leader rotates when this returns `Some`.
    pub fn rotation_due(&self) -> Option<KeyId> {
        let active = self.keyring.active_key()?;
        let budget = SealBudget::new(self.seal_limit);
        let replicated = lock(&self.inner).keys.get(&active).map_or(0, |k| k.sealed_entries);
        let remaining_replicated = budget.limit().saturating_sub(replicated);
        let remaining_local = self.keyring.budget_remaining(active).unwrap_or(0);
        (remaining_replicated.min(remaining_local) <= budget.low_watermark()).then_some(active)
    }

    /// Checks, before proposing, that `command` can apply on every replica that applied what
    /// this one did, and will not leave the cluster stuck. A command that cannot apply halts
    /// every replica (fail closed), so an admin API refuses it here instead: promoting or
    /// retiring a key that was never installed or is destroyed, destroying one never installed,
    /// installing a key id already taken; and, with a cutover in force, retiring or destroying
    /// the active key, which would leave nothing to seal control entries and payloads under
    /// (every later clear entry halts): rotate first. Run it on the leader over its applied
    /// state, with admin commands serialized.
    ///
    /// # Errors
    /// [`ControlError::ActiveKeyNeeded`], [`ControlError::UnknownKey`],
    /// [`ControlError::KeyDestroyed`], [`ControlError::ConflictingInstall`].
    pub fn check_command(&self, command: &ControlCommand) -> Result<(), ControlError> {
        match command {
            ControlCommand::RetireKey { key_id } | ControlCommand::DestroyKey { key_id }
                if self.cutover().is_some() && self.active_key() == Some(*key_id) =>
            {
                Err(ControlError::ActiveKeyNeeded(*key_id))
            }
            ControlCommand::PromoteKey { key_id } | ControlCommand::RetireKey { key_id } => {
                Self::live(&lock(&self.inner), *key_id).map(drop)
            }
            ControlCommand::DestroyKey { key_id } => match lock(&self.inner).keys.contains_key(key_id) {
                true => Ok(()),
                false => Err(ControlError::UnknownKey(*key_id)),
            },
            ControlCommand::InstallKey(install) => match lock(&self.inner).keys.get(&install.key_id) {
                // The same checks as applying it: a repeat of the same install is harmless.
                None if install.key_id == KeyId::RESERVED => {
                    Err(ControlError::Keyring(ConfigError::ReservedKeyId))
                }
                None if self.keyring.state(install.key_id).is_some() => {
                    Err(ControlError::ConflictingInstall(install.key_id))
                }
                None => Ok(()),
                Some(existing) if existing.state == KeyState::Destroyed => {
                    Err(ControlError::KeyDestroyed(install.key_id))
                }
                Some(existing)
                    if existing.algorithm == install.algorithm
                        && existing.kek_id == install.kek_id
                        && existing.wrapped_key.as_ref() == Some(&install.wrapped_key) =>
                {
                    Ok(())
                }
                Some(_) => Err(ControlError::ConflictingInstall(install.key_id)),
            },
            ControlCommand::Enforce | ControlCommand::Barrier | ControlCommand::Checkpoint { .. } => Ok(()),
        }
    }

    /// The cluster identity bound into sealed control entries and wrapped keys.
    pub fn cluster(&self) -> &ClusterId {
        &self.cluster
    }

    /// The keyring this state drives (share it; change it only through control entries).
    pub fn keyring(&self) -> &Arc<Keyring> {
        &self.keyring
    }

    /// A cipher over this state's keyring, for the node's wrapper and unwrapper.
    pub fn cipher(&self) -> EnvelopeCipher {
        EnvelopeCipher::new(self.cluster.clone(), Arc::clone(&self.keyring))
    }

    /// The cutover this state drives, for the node's [`ApplyGate`](crate::ApplyGate).
    pub fn cutover_source(&self) -> Arc<Cutover> {
        Arc::clone(&self.cutover)
    }

    /// The cutover set by the first applied enforce entry, if any.
    pub fn cutover(&self) -> Option<u64> {
        lock(&self.inner).cutover
    }

    /// The last log index this state has taken into account (control entries and recorded
    /// envelopes).
    pub fn applied_index(&self) -> Option<u64> {
        lock(&self.inner).applied
    }

    /// The active key, if any.
    pub fn active_key(&self) -> Option<KeyId> {
        lock(&self.inner).keys.values().find(|k| k.state == KeyState::Active).map(|k| k.key_id)
    }

    /// Every installed key, in key id order.
    pub fn keys(&self) -> Vec<LayerKey> {
        lock(&self.inner).keys.values().cloned().collect()
    }

    /// One installed key, if it was ever installed.
    pub fn key(&self, key_id: KeyId) -> Option<LayerKey> {
        lock(&self.inner).keys.get(&key_id).cloned()
    }

    /// A key id never used in this state: one above the highest installed.
    pub fn next_key_id(&self) -> KeyId {
        let inner = lock(&self.inner);
        KeyId(inner.keys.keys().next_back().map_or(1, |k| k.0.saturating_add(1)))
    }

    /// The replicated key state and cutover this replica has applied, for status endpoints.
    pub fn status(&self) -> EncryptionStatus {
        EncryptionStatus {
            keys: self.keys(),
            cutover: self.cutover(),
            active_key: self.active_key(),
            applied_index: self.applied_index(),
            budget_remaining: self.budgets(),
            rotation_due: self.rotation_due().is_some(),
        }
    }

    fn budgets(&self) -> BTreeMap<KeyId, u64> {
        let inner = lock(&self.inner);
        inner
            .keys
            .values()
            .filter(|k| k.state != KeyState::Destroyed)
            .map(|k| {
                let replicated = self.seal_limit.saturating_sub(k.sealed_entries);
                let local = self.keyring.budget_remaining(k.key_id).unwrap_or(0);
                (k.key_id, replicated.min(local))
            })
            .collect()
    }

    /// The snapshot form of this state.
    pub fn snapshot(&self) -> LayerSnapshot {
        let inner = lock(&self.inner);
        LayerSnapshot {
            keys: inner.keys.values().cloned().collect(),
            cutover: inner.cutover,
            applied_index: inner.applied,
            integrity: inner.integrity.clone(),
        }
    }

    /// Creates a new data key for `key_id`, wraps it under `provider`'s KEK and returns the
    /// install command to propose. The unwrapped key is cached here, so this node applies the
    /// entry without calling the provider again.
    ///
    /// # Errors
    /// [`ControlError::ConflictingInstall`] when the id is taken, [`ControlError::Provider`] when
    /// wrapping fails, [`ControlError::Keyring`] when no key could be generated.
    pub async fn generate_install(
        &self,
        key_id: KeyId,
        algorithm: Algorithm,
        provider: &dyn KeyProvider,
    ) -> Result<ControlCommand, ControlError> {
        let taken = lock(&self.inner).keys.contains_key(&key_id) || self.keyring.state(key_id).is_some();
        if taken {
            return Err(ControlError::ConflictingInstall(key_id));
        }
        let key = SecretKey::generate().map_err(ControlError::Keyring)?;
        let kek_id = provider.kek_id().clone();
        let context = WrapContext::new(&self.cluster, key_id, algorithm, &kek_id);
        let wrapped = provider
            .wrap(&context, &key)
            .await
            .map_err(|source| ControlError::Provider { key_id, source })?;
        let install = InstallKey::new(key_id, algorithm, kek_id, wrapped);
        lock(&self.unwrapped).insert(key_id, Unwrapped { install: install.clone(), key });
        Ok(ControlCommand::InstallKey(install))
    }

    /// The log entry bytes for `command`: sealed as a [`Purpose::Control`] envelope under the
    /// active key when there is one, in the clear otherwise.
    ///
    /// # Errors
    /// [`SealError::NoActiveKey`] when a cutover is in force but no key is active (a clear entry
    /// would halt every replica above the cutover: refuse, never append); any sealing error.
    pub fn encode_entry(&self, proposal: ProposalId, command: &ControlCommand) -> Result<Vec<u8>, SealError> {
        let clear = command.encode();
        if self.keyring.active_key().is_some() {
            return self.keyring.seal(Purpose::Control, &self.cluster, proposal, &clear);
        }
        if self.cutover().is_some() {
            return Err(SealError::NoActiveKey);
        }
        Ok(clear)
    }

    /// Reads a control entry, clear or sealed: the command and, when sealed, the key it was sealed
    /// under.
    fn read_entry(&self, entry: &[u8]) -> Result<(ControlCommand, Option<KeyId>), ControlError> {
        if entry.first() == Some(&FORMAT_VERSION) {
            let header = EnvelopeHeader::parse(entry).map_err(ControlError::Open)?;
            let plain = Zeroizing::new(
                self.keyring.open(Purpose::Control, &self.cluster, entry).map_err(ControlError::Open)?,
            );
            Ok((ControlCommand::decode(&plain)?, Some(header.key_id)))
        } else {
            Ok((ControlCommand::decode(entry)?, None))
        }
    }

    /// Unwraps, with `provider`, the key a control entry installs and caches it for
    /// [`apply_control`](Self::apply_control). Call it when the entry is appended or received, or
    /// on an admin command, never on the apply path; a no-op for other commands and for keys
    /// already installed or cached. Returns the key id it made available, if any.
    ///
    /// # Errors
    /// [`ControlError::Decode`] / [`ControlError::Open`] when the entry cannot be read here,
    /// [`ControlError::Provider`] when the provider cannot unwrap the key (the replica will halt
    /// at the entry until it can).
    pub async fn prefetch(
        &self,
        entry: &[u8],
        provider: &dyn KeyProvider,
    ) -> Result<Option<KeyId>, ControlError> {
        let (command, _) = self.read_entry(entry)?;
        match command {
            ControlCommand::InstallKey(install) => {
                self.prefetch_key(&install, provider).await?;
                Ok(Some(install.key_id))
            }
            _ => Ok(None),
        }
    }

    /// Restores a layer state persisted with `snapshot().encode()` (restarting a replica whose
    /// state machine is on disk): decodes it, unwraps its keys with `provider`, then
    /// [`restore`](Self::restore)s it. Call it on a fresh layer state before the engine starts.
    ///
    /// Persist the layer state together with the application's state machine, never behind it:
    /// its applied index must be at or above the state machine's, since control entries at or
    /// below the state machine's applied index are not replayed. A layer state ahead of the state
    /// machine is fine: replayed control entries at or below its applied index are recognized as
    /// already applied ([`ControlOutcome::AlreadyApplied`]).
    ///
    /// # Errors
    /// [`ControlError::MalformedSnapshot`], [`ControlError::Provider`], or any error of
    /// [`restore`](Self::restore). Nothing changes on error.
    pub async fn restore_persisted(
        &self,
        bytes: &[u8],
        provider: &dyn KeyProvider,
    ) -> Result<(), ControlError> {
        let snapshot = LayerSnapshot::decode(bytes)?;
        self.prefetch_snapshot(&snapshot, provider).await?;
        self.restore(&snapshot)
    }

    /// Unwraps, with `provider`, every live key of `snapshot` this state does not hold yet, and
    /// caches them for [`restore`](Self::restore).
    ///
    /// # Errors
    /// [`ControlError::Provider`] for the first key that cannot be unwrapped.
    pub async fn prefetch_snapshot(
        &self,
        snapshot: &LayerSnapshot,
        provider: &dyn KeyProvider,
    ) -> Result<(), ControlError> {
        for key in &snapshot.keys {
            if let Some(wrapped) = &key.wrapped_key {
                let install = InstallKey::new(key.key_id, key.algorithm, key.kek_id.clone(), wrapped.clone());
                self.prefetch_key(&install, provider).await?;
            }
        }
        Ok(())
    }

    async fn prefetch_key(
        &self,
        install: &InstallKey,
        provider: &dyn KeyProvider,
    ) -> Result<(), ControlError> {
        let key_id = install.key_id;
        let installed = lock(&self.inner).keys.contains_key(&key_id);
        let cached = lock(&self.unwrapped).get(&key_id).is_some_and(|u| u.install == *install);
        if installed || cached {
            return Ok(());
        }
        let context = WrapContext::new(&self.cluster, key_id, install.algorithm, &install.kek_id);
        let key = provider
            .unwrap(&context, &install.wrapped_key)
            .await
            .map_err(|source| ControlError::Provider { key_id, source })?;
        lock(&self.unwrapped).insert(key_id, Unwrapped { install: install.clone(), key });
        tracing::info!(key_id = key_id.0, kek_id = %install.kek_id, "data key unwrapped ahead of its install entry");
        Ok(())
    }

    /// Applies the layer control entry at `index` (clear or sealed): the layer-state counterpart
    /// of [`decide`](crate::decide), called for every committed layer control entry in log order.
    /// Nothing of it is handed to the user's state machine. Synchronous and non-blocking: it never
    /// calls a key provider.
    ///
    /// # Errors
    /// A [`FatalApplyError`] naming `index`, the key and the reason ([`FatalApplyError::control`]
    /// has the details): the replica must halt without advancing its applied index. Nothing
    /// changed; the same entry applies once the cause is repaired. Pass it to
    /// [`ApplyGate::record_halt`](crate::ApplyGate::record_halt) so it is counted and traced like
    /// every other halt (this method does neither).
    pub fn apply_control(&self, index: u64, entry: &[u8]) -> Result<ControlOutcome, FatalApplyError> {
        let mut inner = lock(&self.inner);
        if inner.applied.is_some_and(|applied| index <= applied) {
            return Ok(ControlOutcome::AlreadyApplied);
        }
        let cutover = inner.cutover;
        match self.apply_locked(&mut inner, index, entry) {
            Ok(outcome) => {
                if inner.recording() {
                    inner.integrity.record(index, EntryRecord::LayerControl(entry));
                }
                inner.applied = Some(index);
                if let ControlOutcome::Applied(command) | ControlOutcome::Unchanged(command) = &outcome {
                    tracing::info!(
                        index,
                        command = command.name(),
                        key_id = command.key_id().map(|k| k.0),
                        changed = matches!(outcome, ControlOutcome::Applied(_)),
                        "layer control entry applied"
                    );
                }
                Ok(outcome)
            }
            Err(error) => {
                // Not traced here: the adapter hands it to `ApplyGate::record_halt`, which counts
                // and traces every halt in one place.
                Err(FatalApplyError::from_control(index, error, cutover))
            }
        }
    }

    fn apply_locked(
        &self,
        inner: &mut Inner,
        index: u64,
        entry: &[u8],
    ) -> Result<ControlOutcome, ControlError> {
        let sealed = entry.first() == Some(&FORMAT_VERSION);
        if !sealed {
            if let Some(c) = inner.cutover.filter(|&c| c != u64::MAX && index > c) {
                return Err(ControlError::CleartextAboveCutover { cutover: c });
            }
        }
        let (command, sealed_under) = self.read_entry(entry)?;
        let changed = self.apply_command(inner, index, &command)?;
        if let Some(key) = sealed_under.and_then(|k| inner.keys.get_mut(&k)) {
            key.sealed_entries = key.sealed_entries.saturating_add(1);
            key.last_sealed_index = Some(index);
        }
        Ok(if changed { ControlOutcome::Applied(command) } else { ControlOutcome::Unchanged(command) })
    }

    /// Applies one command; `Ok(false)` when it repeats the current state. Validates before it
    /// changes anything, so an `Err` leaves keyring and records untouched.
    fn apply_command(
        &self,
        inner: &mut Inner,
        index: u64,
        command: &ControlCommand,
    ) -> Result<bool, ControlError> {
        match command {
            ControlCommand::InstallKey(install) => self.install(inner, index, install),
            ControlCommand::PromoteKey { key_id } => {
                match Self::live(inner, *key_id)? {
                    KeyState::Active => return Ok(false),
                    _ => self.keyring.promote(*key_id).map_err(ControlError::Keyring)?,
                }
                for key in inner.keys.values_mut() {
                    if key.state == KeyState::Active {
                        key.state = KeyState::DecryptOnly;
                    }
                }
                Self::set_state(inner, *key_id, KeyState::Active);
                Ok(true)
            }
            ControlCommand::RetireKey { key_id } => {
                match Self::live(inner, *key_id)? {
                    KeyState::Active => self.keyring.retire(*key_id).map_err(ControlError::Keyring)?,
                    _ => return Ok(false),
                }
                Self::set_state(inner, *key_id, KeyState::DecryptOnly);
                Ok(true)
            }
            ControlCommand::DestroyKey { key_id } => {
                let key = inner.keys.get_mut(key_id).ok_or(ControlError::UnknownKey(*key_id))?;
                if key.state == KeyState::Destroyed {
                    return Ok(false);
                }
                self.keyring.destroy(*key_id).map_err(ControlError::Keyring)?;
                key.state = KeyState::Destroyed;
                key.wrapped_key = None;
                lock(&self.unwrapped).remove(key_id);
                inner.integrity.forget_key(*key_id);
                Ok(true)
            }
            ControlCommand::Barrier => Ok(false),
            ControlCommand::Checkpoint { through, digest } => {
                if *through >= index {
                    return Err(ControlError::CheckpointAhead { through: *through });
                }
                match inner.integrity.verify(*through, digest) {
                    Verdict::Verified => {
                        inner.integrity.checkpointed(*through);
                        self.local.note_checkpoint_applied(index);
                        self.local.note_checkpoint_result(CheckpointResult::Verified);
                        tracing::debug!(index, through, "integrity checkpoint verified");
                        Ok(true)
                    }
                    Verdict::Unverifiable => {
                        // Deterministic: every replica with the same applied prefix keeps the
                        // same digests. Counted as covered so the next range starts after it.
                        inner.integrity.checkpointed(*through);
                        self.local.note_checkpoint_applied(index);
                        self.local.note_checkpoint_result(CheckpointResult::Unverifiable);
                        tracing::warn!(index, through, "integrity checkpoint not verifiable on this replica");
                        Ok(false)
                    }
                    Verdict::Diverged { from } => {
                        self.local.note_checkpoint_result(CheckpointResult::Diverged);
                        Err(ControlError::Diverged { from, through: *through })
                    }
                }
            }
            ControlCommand::Enforce => {
                if inner.cutover.is_some() {
                    return Ok(false);
                }
                inner.cutover = Some(index);
                self.cutover.set(Some(index));
                Ok(true)
            }
        }
    }

    fn install(&self, inner: &mut Inner, index: u64, install: &InstallKey) -> Result<bool, ControlError> {
        let key_id = install.key_id;
        if let Some(existing) = inner.keys.get(&key_id) {
            if existing.state == KeyState::Destroyed {
                return Err(ControlError::KeyDestroyed(key_id));
            }
            if existing.algorithm == install.algorithm
                && existing.kek_id == install.kek_id
                && existing.wrapped_key.as_ref() == Some(&install.wrapped_key)
            {
                return Ok(false);
            }
            return Err(ControlError::ConflictingInstall(key_id));
        }
        if self.keyring.state(key_id).is_some() {
            return Err(ControlError::ConflictingInstall(key_id));
        }
        let mut cache = lock(&self.unwrapped);
        let key = match cache.get(&key_id) {
            Some(u) if u.install == *install => {
                SecretKey::from_slice(u.key.expose_secret()).map_err(ControlError::Keyring)?
            }
            _ => return Err(ControlError::KeyUnavailable { key_id, kek_id: install.kek_id.clone() }),
        };
        self.keyring
            .insert_with_budget(key_id, install.algorithm, key, SealBudget::new(self.seal_limit))
            .map_err(ControlError::Keyring)?;
        cache.remove(&key_id);
        inner.keys.insert(
            key_id,
            LayerKey {
                key_id,
                algorithm: install.algorithm,
                kek_id: install.kek_id.clone(),
                wrapped_key: Some(install.wrapped_key.clone()),
                state: KeyState::DecryptOnly,
                installed_at: index,
                sealed_entries: 0,
                last_sealed_index: None,
            },
        );
        Ok(true)
    }

    /// The state of a key a command may change: installed and not destroyed.
    fn live(inner: &Inner, key_id: KeyId) -> Result<KeyState, ControlError> {
        match inner.keys.get(&key_id) {
            None => Err(ControlError::UnknownKey(key_id)),
            Some(k) if k.state == KeyState::Destroyed => Err(ControlError::KeyDestroyed(key_id)),
            Some(k) => Ok(k.state),
        }
    }

    fn set_state(inner: &mut Inner, key_id: KeyId, state: KeyState) {
        if let Some(key) = inner.keys.get_mut(&key_id) {
            key.state = state;
        }
    }

    /// The layer state's part of applying the committed entry at `index` that passed the gate
    /// (a cleartext payload, an opened envelope as stored, or an entry the engine interprets):
    /// the adapters call it for every such entry, in log order, and hand the entry to the state
    /// machine only on [`Admission::Apply`]. Layer control entries go to
    /// [`apply_control`](Self::apply_control) instead.
    ///
    /// - An envelope already applied (same key and nonce: a resubmitted proposal, or a replay)
    ///   is [`Admission::Duplicate`] naming where it first applied; one older than its sealing
    ///   session's replay window is [`Admission::Expired`]. Neither is applied, on every replica
    ///   alike (`DESIGN.md` §11.1).
    /// - Every entry extends the running digest that integrity checkpoints compare
    ///   (`DESIGN.md` §11.2), and an applied envelope counts toward its key's sealed entries
    ///   (the per-key budget, the status, the destroy proof).
    ///
    /// An index at or below [`applied_index`](Self::applied_index) (a replay after a restart
    /// whose state machine is behind the layer state) changes nothing and gets the decision it
    /// got the first time.
    pub fn admit(&self, index: u64, entry: EntryRecord<'_>) -> Admission {
        let mut inner = lock(&self.inner);
        let header = match entry {
            EntryRecord::Envelope(bytes) => EnvelopeHeader::parse(bytes).ok(),
            _ => None,
        };
        if inner.applied.is_some_and(|applied| index <= applied) {
            return header.map_or(Admission::Apply, |_| inner.integrity.judge_again(index));
        }
        let admission = match &header {
            Some(h) => match inner.integrity.judge(h) {
                Some(refused) => refused,
                None => {
                    inner.integrity.remember(index, h);
                    if let Some(key) = inner.keys.get_mut(&h.key_id) {
                        key.sealed_entries = key.sealed_entries.saturating_add(1);
                        key.last_sealed_index = Some(index);
                    }
                    Admission::Apply
                }
            },
            None => Admission::Apply,
        };
        if !admission.applies() {
            inner.integrity.refused(index, admission);
        }
        if inner.recording() {
            inner.integrity.record_decided(index, entry, admission.applies());
        }
        inner.applied = Some(index);
        if let (Some(h), false) = (&header, admission.applies()) {
            tracing::warn!(index, key_id = h.key_id.0, ?admission, "envelope not applied again");
        }
        admission
    }

    /// The checkpoint this node (the leader) should propose now under `policy`, if one is due:
    /// a cutover is in force, a key is active, this replica knows its digest chain, and
    /// `policy` says enough entries or time passed since the last checkpoint (applied, or
    /// proposed here: [`NodeLocal::checkpoint_proposed`]). `elapsed` is the time since this node
    /// last proposed one.
    pub fn checkpoint_due(
        &self,
        policy: &CheckpointPolicy,
        elapsed: std::time::Duration,
    ) -> Option<ControlCommand> {
        self.keyring.active_key()?;
        let inner = lock(&self.inner);
        inner.cutover?;
        let (through, digest) = inner.integrity.latest()?;
        inner.integrity.digest()?;
        let last = inner.integrity.checkpointed_through().max(self.local.checkpoint_proposed());
        let since = last.map_or(through, |l| through.saturating_sub(l));
        policy.due(since, elapsed).then_some(ControlCommand::Checkpoint { through, digest })
    }

    /// The checkpoint of everything this replica applied so far, whatever the policy (an
    /// operator's or a test's explicit checkpoint). `None` when nothing was recorded or the
    /// chain is unknown here.
    pub fn checkpoint_now(&self) -> Option<ControlCommand> {
        let inner = lock(&self.inner);
        inner.integrity.digest()?;
        let (through, digest) = inner.integrity.latest()?;
        Some(ControlCommand::Checkpoint { through, digest })
    }

    /// The last index an integrity checkpoint covered on this replica (without copying the
    /// integrity state).
    pub fn checkpointed_through(&self) -> Option<u64> {
        lock(&self.inner).integrity.checkpointed_through()
    }

    /// The replicated integrity state (replay windows, digest, last checkpoint).
    pub fn integrity(&self) -> IntegrityState {
        lock(&self.inner).integrity.clone()
    }

    /// Replaces this state with `snapshot` (a state-machine snapshot being installed): afterwards
    /// [`snapshot`](Self::snapshot) equals it, and the keyring and cutover follow. Live keys this
    /// state does not hold must have been unwrapped first ([`prefetch_snapshot`](Self::prefetch_snapshot));
    /// keys restored this way start their sealing budget at their recorded sealed entries.
    ///
    /// # Errors
    /// [`ControlError::KeyUnavailable`] for a key not unwrapped here,
    /// [`ControlError::InconsistentSnapshot`] when the snapshot is older than this state or
    /// contradicts it (another history), [`ControlError::MalformedSnapshot`] when it breaks an
    /// invariant. Nothing changes on these errors.
    pub fn restore(&self, snapshot: &LayerSnapshot) -> Result<(), ControlError> {
        let inconsistent = |key_id, what| Err(ControlError::InconsistentSnapshot { key_id, what });
        let mut inner = lock(&self.inner);
        let mut cache = lock(&self.unwrapped);

        // Validate everything first.
        let ids_ordered = snapshot.keys.windows(2).all(|w| w[0].key_id < w[1].key_id);
        let actives = snapshot.keys.iter().filter(|k| k.state == KeyState::Active).count();
        let material_ok =
            snapshot.keys.iter().all(|k| (k.state == KeyState::Destroyed) == k.wrapped_key.is_none());
        if !ids_ordered || actives > 1 || !material_ok {
            return Err(ControlError::MalformedSnapshot { what: "key invariants" });
        }
        match (inner.applied, snapshot.applied_index) {
            (Some(_), None) => return inconsistent(None, "snapshot older than this layer state"),
            (Some(mine), Some(theirs)) if theirs < mine => {
                return inconsistent(None, "snapshot older than this layer state")
            }
            _ => {}
        }
        if inner.cutover.is_some() && snapshot.cutover != inner.cutover {
            return inconsistent(None, "cutover differs");
        }
        let mut incoming: BTreeMap<KeyId, Option<SecretKey>> = BTreeMap::new();
        for key in &snapshot.keys {
            match inner.keys.get(&key.key_id) {
                Some(mine) => {
                    if mine.algorithm != key.algorithm || mine.kek_id != key.kek_id {
                        return inconsistent(Some(key.key_id), "algorithm or KEK differs");
                    }
                    if mine.state == KeyState::Destroyed && key.state != KeyState::Destroyed {
                        return inconsistent(Some(key.key_id), "destroyed here, alive in the snapshot");
                    }
                    if key.wrapped_key.is_some() && mine.wrapped_key != key.wrapped_key {
                        return inconsistent(Some(key.key_id), "wrapped key differs");
                    }
                }
                None => {
                    if self.keyring.state(key.key_id).is_some() {
                        return inconsistent(Some(key.key_id), "key held outside the layer state");
                    }
                    let material = match &key.wrapped_key {
                        None => None,
                        Some(wrapped) => match cache.get(&key.key_id) {
                            Some(u)
                                if u.install.algorithm == key.algorithm
                                    && u.install.kek_id == key.kek_id
                                    && u.install.wrapped_key == *wrapped =>
                            {
                                Some(
                                    SecretKey::from_slice(u.key.expose_secret())
                                        .map_err(ControlError::Keyring)?,
                                )
                            }
                            _ => {
                                return Err(ControlError::KeyUnavailable {
                                    key_id: key.key_id,
                                    kek_id: key.kek_id.clone(),
                                })
                            }
                        },
                    };
                    incoming.insert(key.key_id, material);
                }
            }
        }
        for id in inner.keys.keys() {
            if !snapshot.keys.iter().any(|k| k.key_id == *id) {
                return inconsistent(Some(*id), "key missing from the snapshot");
            }
        }

        // Then change the keyring: new keys, demotions and destructions, the promotion.
        for key in &snapshot.keys {
            match incoming.remove(&key.key_id) {
                Some(Some(material)) => {
                    let budget = SealBudget::new(self.seal_limit).with_already_used(key.sealed_entries);
                    self.keyring
                        .insert_with_budget(key.key_id, key.algorithm, material, budget)
                        .map_err(ControlError::Keyring)?;
                    cache.remove(&key.key_id);
                }
                Some(None) => {
                    self.keyring.insert_destroyed(key.key_id, key.algorithm).map_err(ControlError::Keyring)?
                }
                None => {}
            }
        }
        for key in &snapshot.keys {
            match (key.state, self.keyring.state(key.key_id)) {
                (KeyState::Destroyed, Some(KeyState::Destroyed)) => {}
                (KeyState::Destroyed, _) => {
                    self.keyring.destroy(key.key_id).map_err(ControlError::Keyring)?;
                    cache.remove(&key.key_id);
                }
                (KeyState::DecryptOnly, Some(KeyState::Active)) => {
                    self.keyring.retire(key.key_id).map_err(ControlError::Keyring)?
                }
                _ => {}
            }
        }
        if let Some(active) = snapshot.active_key() {
            if self.keyring.active_key() != Some(active) {
                self.keyring.promote(active).map_err(ControlError::Keyring)?;
            }
        }
        inner.keys = snapshot.keys.iter().map(|k| (k.key_id, k.clone())).collect();
        inner.cutover = snapshot.cutover;
        inner.applied = snapshot.applied_index;
        inner.integrity = snapshot.integrity.clone();
        self.cutover.set(snapshot.cutover);
        tracing::info!(
            keys = snapshot.keys.len(),
            cutover = snapshot.cutover,
            applied_index = snapshot.applied_index,
            "layer state restored from a snapshot"
        );
        Ok(())
    }
}

/// Shows key ids, states and lengths only: never key material.
impl fmt::Debug for LayerState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let inner = lock(&self.inner);
        let pending: Vec<KeyId> = lock(&self.unwrapped).keys().copied().collect();
        f.debug_struct("LayerState")
            .field("cluster", &self.cluster)
            .field("cutover", &inner.cutover)
            .field("applied_index", &inner.applied)
            .field("keys", &inner.keys.values().collect::<Vec<_>>())
            .field("unwrapped_pending", &pending)
            .finish()
    }
}

fn random_u64() -> u64 {
    let mut start = [0u8; 8];
    // Proposal ids only need to be distinct between concurrent proposers; when the system
    // generator fails the ids simply start at 0.
    let _ = aws_lc_rs::rand::fill(&mut start);
    u64::from_be_bytes(start)
}
