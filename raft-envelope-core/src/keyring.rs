//! Data keys, their states, their sealing budgets and their counters.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};

use arc_swap::ArcSwapOption;
use aws_lc_rs::aead::{self, LessSafeKey, Nonce, UnboundKey};
use zeroize::{Zeroize, Zeroizing};

use crate::envelope::{Aad, EnvelopeHeader, HEADER_LEN, NONCE_LEN, OVERHEAD, TAG_LEN};
use crate::errors::{ConfigError, FailureReason, OpenError, SealError};
use crate::ids::{Algorithm, KeyId, ProposalId, Purpose};
use crate::names::ClusterId;

/// Length of a data key in bytes (AES-256).
pub const KEY_LEN: usize = 32;

/// A 256-bit data key. Its bytes never appear in `Debug` output and are zeroized on drop.
pub struct SecretKey(Zeroizing<[u8; KEY_LEN]>);

impl SecretKey {
    /// Takes ownership of 32 key bytes.
    pub fn from_bytes(bytes: [u8; KEY_LEN]) -> Self {
        Self(Zeroizing::new(bytes))
    }

    pub(crate) fn from_zeroizing(bytes: Zeroizing<[u8; KEY_LEN]>) -> Self {
        Self(bytes)
    }

    /// Copies 32 key bytes from a slice.
    ///
    /// # Errors
    /// [`ConfigError::KeyLength`] when the slice is not 32 bytes long.
    pub fn from_slice(bytes: &[u8]) -> Result<Self, ConfigError> {
        let mut key = Zeroizing::new([0u8; KEY_LEN]);
        if bytes.len() != KEY_LEN {
            return Err(ConfigError::KeyLength { len: bytes.len() });
        }
        key.copy_from_slice(bytes);
        Ok(Self(key))
    }

    /// A fresh key from the system random generator.
    ///
    /// # Errors
    /// [`ConfigError::Random`] if the generator fails.
    pub fn generate() -> Result<Self, ConfigError> {
        let mut key = Zeroizing::new([0u8; KEY_LEN]);
        aws_lc_rs::rand::fill(&mut key[..]).map_err(|_| ConfigError::Random)?;
        Ok(Self(key))
    }

    /// The key bytes, for handing to a key-encryption service. Handle with care.
    pub fn expose_secret(&self) -> &[u8; KEY_LEN] {
        &self.0
    }
}

impl fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretKey(<redacted>)")
    }
}

/// The lifecycle state of a key in a [`Keyring`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum KeyState {
    /// Seals new envelopes and opens old ones. At most one key is active.
    Active,
    /// Opens envelopes but never seals.
    DecryptOnly,
    /// Its material is gone: envelopes under it fail with [`FailureReason::DestroyedKey`].
    Destroyed,
}

/// How many envelopes a key may seal before it must be rotated.
///
/// The default, 2<sup>32</sup>, is the NIST SP 800-38D §8.3 invocation limit for AES-GCM with
/// nonces that are not built by the deterministic construction; see `DESIGN.md` for the
/// collision bound this gives with our nonces.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SealBudget {
    limit: u64,
    already_used: u64,
}

impl SealBudget {
    /// The NIST SP 800-38D §8.3 limit: 2<sup>32</sup> seals per key.
    pub const NIST_LIMIT: u64 = 1 << 32;

    /// A budget of `limit` seals, none used yet. Values above [`SealBudget::NIST_LIMIT`] are
    /// lowered to it.
    pub fn new(limit: u64) -> Self {
        Self { limit: limit.min(Self::NIST_LIMIT), already_used: 0 }
    }

    /// Records seals made under this key before this keyring was built (for example by an earlier
    /// process), so they count against the budget.
    pub fn with_already_used(mut self, used: u64) -> Self {
        self.already_used = used;
        self
    }

    /// The total number of seals allowed.
    pub fn limit(&self) -> u64 {
        self.limit
    }

    /// How many remaining seals count as "low": a warning is traced when the key crosses it, and
    /// [`KeyStats::budget_low`] turns true. One eighth of the limit.
    pub fn low_watermark(&self) -> u64 {
        self.limit / 8
    }
}

impl Default for SealBudget {
    fn default() -> Self {
        Self::new(Self::NIST_LIMIT)
    }
}

/// Counters and state of one key, as returned by [`Keyring::stats`].
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct KeyStats {
    /// The key.
    pub key_id: KeyId,
    /// Its state; `None` for an id this keyring never held but was asked to open under.
    pub state: Option<KeyState>,
    /// Its algorithm, when known.
    pub algorithm: Option<Algorithm>,
    /// Envelopes sealed by this keyring under the key.
    pub seals: u64,
    /// Envelopes opened by this keyring under the key.
    pub opens: u64,
    /// Open failures naming this key, by reason (only non-zero reasons appear).
    pub open_failures: BTreeMap<FailureReason, u64>,
    /// Seals left before the budget refuses.
    pub budget_remaining: u64,
    /// True when `budget_remaining` is at or below the budget's low watermark.
    pub budget_low: bool,
}

/// A key's sealing counters, shared by its slot and by the active-key snapshot that seals
/// without the keyring's lock, so they outlive the key material (a destroyed key's stats).
#[derive(Default)]
struct SealCounters {
    /// Nonce positions handed out by this keyring (successful or refused).
    reserved: AtomicU64,
    /// Seals the AEAD refused after a position was reserved (practically never).
    cipher_failures: AtomicU64,
}

/// Everything sealing under one key needs. Held by the key's slot (the key material: dropped,
/// and zeroized by aws-lc, when the key is destroyed and no seal in flight holds it) and, while
/// the key is active, by the keyring's lock-free active snapshot.
struct Sealer {
    key_id: KeyId,
    algorithm: Algorithm,
    key: LessSafeKey,
    /// Random 96-bit starting point of this keyring's nonce sequence for the key.
    nonce_base: u128,
    budget: SealBudget,
    counters: Arc<SealCounters>,
}

struct Slot {
    algorithm: Algorithm,
    state: KeyState,
    /// `None` once destroyed (or for a key recorded destroyed without ever being held).
    key: Option<Arc<Sealer>>,
    budget: SealBudget,
    counters: Arc<SealCounters>,
    opens: AtomicU64,
    failures: [AtomicU64; FailureReason::ALL.len()],
}

impl Slot {
    /// A slot with fresh counters.
    fn new(
        key_id: KeyId,
        algorithm: Algorithm,
        state: KeyState,
        key: Option<LessSafeKey>,
        nonce_base: u128,
        budget: SealBudget,
    ) -> Self {
        let counters = Arc::new(SealCounters::default());
        let key = key.map(|key| {
            Arc::new(Sealer { key_id, algorithm, key, nonce_base, budget, counters: counters.clone() })
        });
        Self {
            algorithm,
            state,
            key,
            budget,
            counters,
            opens: AtomicU64::new(0),
            failures: Default::default(),
        }
    }

    fn remaining(&self) -> u64 {
        let used = self.budget.already_used.saturating_add(self.counters.reserved.load(Ordering::Relaxed));
        self.budget.limit.saturating_sub(used)
    }

    /// Successful seals: reserved positions within the budget, less AEAD refusals. Derived so
    /// the hot path pays for one atomic counter, not two.
    fn seals(&self) -> u64 {
        let allowed = self.budget.limit.saturating_sub(self.budget.already_used);
        self.counters.reserved.load(Ordering::Relaxed).min(allowed)
            - self.counters.cipher_failures.load(Ordering::Relaxed)
    }

    fn stats(&self, key_id: KeyId) -> KeyStats {
        let remaining = self.remaining();
        KeyStats {
            key_id,
            state: Some(self.state),
            algorithm: Some(self.algorithm),
            seals: self.seals(),
            opens: self.opens.load(Ordering::Relaxed),
            open_failures: FailureReason::ALL
                .iter()
                .filter_map(|r| {
                    let n = self.failures[r.index()].load(Ordering::Relaxed);
                    (n > 0).then_some((*r, n))
                })
                .collect(),
            budget_remaining: remaining,
            budget_low: remaining <= self.budget.low_watermark(),
        }
    }
}

#[derive(Default)]
struct Inner {
    slots: BTreeMap<KeyId, Slot>,
}

/// Maps key ids to data keys, each active, decrypt-only or destroyed. At most one key is active
/// and seals; every non-destroyed key opens.
///
/// All methods take `&self`, so one `Arc<Keyring>` can be shared by the sealing and opening sides
/// and changed while they run. Key material never leaves the keyring and is zeroized on drop.
///
/// ```
/// use raft_envelope_core::{Algorithm, KeyId, Keyring, SecretKey, lifecycle::KeyState};
///
/// let ring = Keyring::new();
/// ring.insert(KeyId(1), Algorithm::Aes256Gcm, SecretKey::generate()?)?;
/// ring.promote(KeyId(1))?;
/// ring.insert(KeyId(2), Algorithm::Aes256Gcm, SecretKey::generate()?)?;
/// ring.promote(KeyId(2))?; // key 1 becomes decrypt-only
/// assert_eq!(ring.state(KeyId(1)), Some(KeyState::DecryptOnly));
/// assert_eq!(ring.active_key(), Some(KeyId(2)));
/// # Ok::<(), raft_envelope_core::error::ConfigError>(())
/// ```
pub struct Keyring {
    inner: RwLock<Inner>,
    /// The active key's sealer (the one record of which key is active), read without a lock by
    /// every seal under the active key (many proposing threads at once); replaced only under
    /// `inner`'s write lock.
    active: ArcSwapOption<Sealer>,
    unknown_key_failures: Mutex<BTreeMap<KeyId, u64>>,
}

impl Default for Keyring {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for Keyring {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let inner = self.read();
        let mut list = f.debug_map();
        for (id, slot) in &inner.slots {
            list.entry(&id.0, &format_args!("{:?} {}", slot.state, slot.algorithm));
        }
        list.finish()
    }
}

impl Keyring {
    /// An empty keyring: it seals nothing and opens nothing.
    pub fn new() -> Self {
        Self {
            inner: RwLock::new(Inner::default()),
            active: ArcSwapOption::empty(),
            unknown_key_failures: Mutex::new(BTreeMap::new()),
        }
    }

    /// A keyring holding one active key with the default budget.
    ///
    /// # Errors
    /// As [`Keyring::insert`].
    pub fn with_active_key(id: KeyId, algorithm: Algorithm, key: SecretKey) -> Result<Self, ConfigError> {
        let ring = Self::new();
        ring.insert(id, algorithm, key)?;
        ring.promote(id)?;
        Ok(ring)
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Inner> {
        self.inner.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Inner> {
        self.inner.write().unwrap_or_else(PoisonError::into_inner)
    }

    /// Adds a key in the decrypt-only state with the default budget. Call [`Keyring::promote`] to
    /// make it seal.
    ///
    /// # Errors
    /// [`ConfigError::DuplicateKeyId`] when the id is (or was) in the keyring: ids are never reused;
    /// [`ConfigError::ReservedKeyId`] for [`KeyId::RESERVED`].
    pub fn insert(&self, id: KeyId, algorithm: Algorithm, key: SecretKey) -> Result<(), ConfigError> {
        self.insert_with_budget(id, algorithm, key, SealBudget::default())
    }

    /// Adds a key in the decrypt-only state with an explicit sealing budget.
    ///
    /// # Errors
    /// As [`Keyring::insert`]; [`ConfigError::Random`] if no nonce base could be drawn.
    pub fn insert_with_budget(
        &self,
        id: KeyId,
        algorithm: Algorithm,
        key: SecretKey,
        budget: SealBudget,
    ) -> Result<(), ConfigError> {
        if id == KeyId::RESERVED {
            return Err(ConfigError::ReservedKeyId);
        }
        self.insert_material(id, algorithm, key, budget)
    }

    /// The one slot a [`FileKekProvider`](crate::provider::FileKekProvider) keeps: its KEK under
    /// the reserved id 0, so a key-wrap envelope never names a data key id.
    pub(crate) fn insert_kek(&self, algorithm: Algorithm, key: SecretKey) -> Result<(), ConfigError> {
        self.insert_material(KeyId::RESERVED, algorithm, key, SealBudget::default())
    }

    fn insert_material(
        &self,
        id: KeyId,
        algorithm: Algorithm,
        key: SecretKey,
        budget: SealBudget,
    ) -> Result<(), ConfigError> {
        let mut base = [0u8; 16];
        aws_lc_rs::rand::fill(&mut base[4..]).map_err(|_| ConfigError::Random)?;
        let unbound = UnboundKey::new(algorithm.aead(), &key.0[..])
            .map_err(|_| ConfigError::KeyLength { len: KEY_LEN })?;
        let slot = Slot::new(
            id,
            algorithm,
            KeyState::DecryptOnly,
            Some(LessSafeKey::new(unbound)),
            u128::from_be_bytes(base),
            budget,
        );
        self.insert_slot(id, slot)?;
        tracing::info!(key_id = id.0, %algorithm, "key inserted (decrypt-only)");
        Ok(())
    }

    /// Adds `slot` under `id`, which must never have been used.
    fn insert_slot(&self, id: KeyId, slot: Slot) -> Result<(), ConfigError> {
        let mut inner = self.write();
        if inner.slots.contains_key(&id) {
            return Err(ConfigError::DuplicateKeyId(id));
        }
        inner.slots.insert(id, slot);
        Ok(())
    }

    /// Records `id` as destroyed without ever holding its material (a replica restored from a
    /// snapshot that lists a key destroyed before the replica joined): envelopes under it fail
    /// with [`FailureReason::DestroyedKey`], and the id stays reserved.
    pub(crate) fn insert_destroyed(&self, id: KeyId, algorithm: Algorithm) -> Result<(), ConfigError> {
        if id == KeyId::RESERVED {
            return Err(ConfigError::ReservedKeyId);
        }
        self.insert_slot(id, Slot::new(id, algorithm, KeyState::Destroyed, None, 0, SealBudget::default()))
    }

    /// Makes `id` the one active (sealing) key; the previously active key becomes decrypt-only.
    ///
    /// # Errors
    /// [`ConfigError::UnknownKey`] or [`ConfigError::KeyDestroyed`].
    pub fn promote(&self, id: KeyId) -> Result<(), ConfigError> {
        let mut inner = self.write();
        Self::check_live(&inner, id)?;
        if let Some(previous) = self.active_key() {
            if let Some(slot) = inner.slots.get_mut(&previous) {
                slot.state = KeyState::DecryptOnly;
            }
        }
        if let Some(slot) = inner.slots.get_mut(&id) {
            slot.state = KeyState::Active;
            self.active.store(slot.key.clone());
        }
        drop(inner);
        tracing::info!(key_id = id.0, "key promoted to active");
        Ok(())
    }

    /// Makes `id` decrypt-only. If it was active, nothing seals until another key is promoted.
    ///
    /// # Errors
    /// [`ConfigError::UnknownKey`] or [`ConfigError::KeyDestroyed`].
    pub fn retire(&self, id: KeyId) -> Result<(), ConfigError> {
        let mut inner = self.write();
        Self::check_live(&inner, id)?;
        if self.active_key() == Some(id) {
            self.active.store(None);
        }
        if let Some(slot) = inner.slots.get_mut(&id) {
            slot.state = KeyState::DecryptOnly;
        }
        drop(inner);
        tracing::info!(key_id = id.0, "key retired to decrypt-only");
        Ok(())
    }

    /// Destroys `id`: its material is dropped (and zeroized), the id stays reserved, and envelopes
    /// under it fail with [`FailureReason::DestroyedKey`]. Destroying twice is not an error.
    ///
    /// # Errors
    /// [`ConfigError::UnknownKey`].
    pub fn destroy(&self, id: KeyId) -> Result<(), ConfigError> {
        let mut inner = self.write();
        if self.active_key() == Some(id) {
            self.active.store(None);
        }
        let slot = inner.slots.get_mut(&id).ok_or(ConfigError::UnknownKey(id))?;
        slot.state = KeyState::Destroyed;
        slot.key = None;
        drop(inner);
        tracing::info!(key_id = id.0, "key destroyed");
        Ok(())
    }

    fn check_live(inner: &Inner, id: KeyId) -> Result<(), ConfigError> {
        match inner.slots.get(&id) {
            None => Err(ConfigError::UnknownKey(id)),
            Some(slot) if slot.state == KeyState::Destroyed => Err(ConfigError::KeyDestroyed(id)),
            Some(_) => Ok(()),
        }
    }

    /// The active key, if any.
    pub fn active_key(&self) -> Option<KeyId> {
        self.active.load().as_ref().map(|sealer| sealer.key_id)
    }

    /// The state of `id`, if the keyring holds it.
    pub fn state(&self, id: KeyId) -> Option<KeyState> {
        self.read().slots.get(&id).map(|s| s.state)
    }

    /// Seals left for `id` before its budget refuses.
    pub fn budget_remaining(&self, id: KeyId) -> Option<u64> {
        self.read().slots.get(&id).map(Slot::remaining)
    }

    /// Counters and state of every key, plus ids this keyring was asked to open under but never
    /// held (with `state: None`), in key id order.
    pub fn stats(&self) -> Vec<KeyStats> {
        let mut out: BTreeMap<KeyId, KeyStats> =
            self.read().slots.iter().map(|(id, slot)| (*id, slot.stats(*id))).collect();
        let unknown = self.unknown_key_failures.lock().unwrap_or_else(PoisonError::into_inner);
        for (id, n) in unknown.iter() {
            let entry = out.entry(*id).or_insert_with(|| KeyStats {
                key_id: *id,
                state: None,
                algorithm: None,
                seals: 0,
                opens: 0,
                open_failures: BTreeMap::new(),
                budget_remaining: 0,
                budget_low: false,
            });
            *entry.open_failures.entry(FailureReason::UnknownKey).or_default() += n;
        }
        out.into_values().collect()
    }

    /// Seals `payload` under the active key into a new envelope.
    pub(crate) fn seal(
        &self,
        purpose: Purpose,
        cluster: &ClusterId,
        proposal_id: ProposalId,
        payload: &[u8],
    ) -> Result<Vec<u8>, SealError> {
        let mut out = Vec::with_capacity(HEADER_LEN + payload.len() + TAG_LEN);
        self.seal_into(None, purpose, cluster, proposal_id, &[payload], &mut out)?;
        Ok(out)
    }

    /// Appends to `out` an envelope sealing the concatenation of `parts` under `key` — the active
    /// key when `None`; otherwise a key that holds material (active or decrypt-only), as for a
    /// snapshot framed with the layer state of an earlier index whose active key has since been
    /// rotated — with its nonce counter and budget, under one read of the keyring. Each part is
    /// copied once, straight into `out`, and sealed in place (a snapshot: frame header, then
    /// digest and application bytes, with no intermediate plaintext buffer). On error `out` is as
    /// it was (what was appended is wiped first).
    pub(crate) fn seal_into(
        &self,
        key: Option<KeyId>,
        purpose: Purpose,
        cluster: &ClusterId,
        proposal_id: ProposalId,
        parts: &[&[u8]],
        out: &mut Vec<u8>,
    ) -> Result<(), SealError> {
        let (active, inner);
        let sealer = match key {
            // The hot path: no lock, whatever the number of threads sealing at once.
            None => {
                active = self.active.load();
                active.as_deref()
            }
            Some(key_id) => {
                inner = self.read();
                inner.slots.get(&key_id).and_then(|slot| slot.key.as_deref())
            }
        };
        Self::seal_with(sealer.ok_or(SealError::NoActiveKey)?, purpose, cluster, proposal_id, parts, out)
    }

    /// Seals under `sealer`'s key at its next nonce position, within its budget.
    fn seal_with(
        sealer: &Sealer,
        purpose: Purpose,
        cluster: &ClusterId,
        proposal_id: ProposalId,
        parts: &[&[u8]],
        out: &mut Vec<u8>,
    ) -> Result<(), SealError> {
        let key_id = sealer.key_id;
        let budget = &sealer.budget;
        // Reserve a nonce position; refuse before the budget is spent.
        let position = sealer.counters.reserved.fetch_add(1, Ordering::Relaxed);
        let used = budget.already_used.saturating_add(position);
        if used >= budget.limit {
            return Err(SealError::BudgetExhausted { key_id, limit: budget.limit });
        }
        let remaining = budget.limit - used - 1;
        if remaining == budget.low_watermark() {
            tracing::warn!(key_id = key_id.0, remaining, "sealing budget low: rotate to a new key");
        }

        // nonce = (random 96-bit base + position) mod 2^96
        let nonce_value = sealer.nonce_base.wrapping_add(u128::from(position)) & ((1u128 << 96) - 1);
        let mut nonce = [0u8; NONCE_LEN];
        nonce.copy_from_slice(&nonce_value.to_be_bytes()[4..]);
        Self::seal_with_nonce(
            &sealer.key,
            sealer.algorithm,
            key_id,
            proposal_id,
            nonce,
            purpose,
            cluster,
            parts,
            out,
        )
        .inspect_err(|_| {
            sealer.counters.cipher_failures.fetch_add(1, Ordering::Relaxed);
        })
    }

    #[allow(clippy::too_many_arguments)] // one call site plus the vector test; a struct would only rename them
    fn seal_with_nonce(
        key: &LessSafeKey,
        algorithm: Algorithm,
        key_id: KeyId,
        proposal_id: ProposalId,
        nonce: [u8; NONCE_LEN],
        purpose: Purpose,
        cluster: &ClusterId,
        parts: &[&[u8]],
        out: &mut Vec<u8>,
    ) -> Result<(), SealError> {
        let header = EnvelopeHeader::new(algorithm, purpose, key_id, proposal_id, nonce).to_bytes();
        let aad = Aad::new(&header, cluster);
        let len: usize = parts.iter().map(|p| p.len()).sum();
        let start = out.len();
        // Copied once into `out` (no allocation when it has the room), sealed in place.
        out.reserve(HEADER_LEN + len + TAG_LEN);
        out.extend_from_slice(&header);
        for part in parts {
            out.extend_from_slice(part);
        }
        let sealed = key.seal_in_place_separate_tag(
            Nonce::assume_unique_for_key(nonce),
            aead::Aad::from(aad.as_bytes()),
            &mut out[start + HEADER_LEN..],
        );
        match sealed {
            Ok(tag) => {
                out.extend_from_slice(tag.as_ref());
                Ok(())
            }
            Err(_) => {
                // Plaintext was copied in: wipe it before giving the buffer back.
                out[start..].zeroize();
                out.truncate(start);
                Err(SealError::Cipher { key_id, algorithm, len })
            }
        }
    }

    /// Seals with a caller-chosen nonce: only for checking known-answer vectors.
    #[cfg(test)]
    pub(crate) fn seal_with_fixed_nonce(
        &self,
        key_id: KeyId,
        nonce: [u8; NONCE_LEN],
        purpose: Purpose,
        cluster: &ClusterId,
        proposal_id: ProposalId,
        payload: &[u8],
    ) -> Result<Vec<u8>, SealError> {
        let inner = self.read();
        let slot = inner.slots.get(&key_id).ok_or(SealError::NoActiveKey)?;
        let key = &slot.key.as_ref().ok_or(SealError::NoActiveKey)?.key;
        let mut out = Vec::new();
        Self::seal_with_nonce(
            key,
            slot.algorithm,
            key_id,
            proposal_id,
            nonce,
            purpose,
            cluster,
            &[payload],
            &mut out,
        )?;
        Ok(out)
    }

    /// Opens an envelope made for `purpose` in `cluster` into a new buffer.
    pub(crate) fn open(
        &self,
        purpose: Purpose,
        cluster: &ClusterId,
        envelope: &[u8],
    ) -> Result<Vec<u8>, OpenError> {
        let mut out = Vec::new();
        self.open_into(purpose, cluster, envelope, &mut out)?;
        Ok(out)
    }

    /// Opens an envelope made for `purpose` in `cluster` into `out`, decrypting straight from
    /// `envelope`: `out` is resized to the plaintext's length (zeroing only what it grows by,
    /// since safe Rust hands the cipher initialized memory) and keeps its capacity. On failure
    /// `out` is wiped and emptied.
    pub(crate) fn open_into(
        &self,
        purpose: Purpose,
        cluster: &ClusterId,
        envelope: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<(), OpenError> {
        let header = EnvelopeHeader::parse(envelope)?;
        let (ciphertext, tag) = envelope[HEADER_LEN..].split_at(envelope.len() - OVERHEAD);
        let result = self.with_opening_key(purpose, cluster, &header, |key, nonce, aad| {
            out.resize(ciphertext.len(), 0);
            key.open_separate_gather(nonce, aad, ciphertext, tag, out).map_err(|_| ())
        });
        if result.is_err() {
            // Unauthenticated output may hold plaintext-like bytes: wipe it.
            out.zeroize();
            out.clear();
        }
        result
    }

    /// Opens an envelope made for `purpose` in `cluster` in its own buffer: no allocation.
    pub(crate) fn open_in_place(
        &self,
        purpose: Purpose,
        cluster: &ClusterId,
        mut envelope: Vec<u8>,
    ) -> Result<Vec<u8>, OpenError> {
        let header = EnvelopeHeader::parse(&envelope)?;
        let len = envelope.len();
        self.with_opening_key(purpose, cluster, &header, |key, nonce, aad| {
            let (body, tag) = envelope.split_at_mut(len - TAG_LEN);
            match key.open_in_place_separate_tag(nonce, aad, tag, &mut body[HEADER_LEN..]) {
                Ok(_) => {
                    envelope.truncate(len - TAG_LEN);
                    envelope.drain(..HEADER_LEN);
                    Ok(envelope)
                }
                Err(_) => {
                    envelope.zeroize();
                    Err(())
                }
            }
        })
    }

    /// Finds the key `header` names, checks it may open for `purpose`, runs `decrypt` with it,
    /// the nonce and the authenticated data, and counts the outcome. `decrypt` fails only when
    /// the tag does not verify.
    fn with_opening_key<T>(
        &self,
        purpose: Purpose,
        cluster: &ClusterId,
        header: &EnvelopeHeader,
        decrypt: impl FnOnce(&LessSafeKey, Nonce, aead::Aad<&[u8]>) -> Result<T, ()>,
    ) -> Result<T, OpenError> {
        let key_id = header.key_id;
        let inner = self.read();
        let Some(slot) = inner.slots.get(&key_id) else {
            drop(inner);
            *self
                .unknown_key_failures
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .entry(key_id)
                .or_default() += 1;
            return Err(OpenError::UnknownKey { key_id });
        };
        let result = Self::check_opening_key(slot, header, purpose).and_then(|key| {
            // `parse` accepted only version 1 and zero flags, so re-encoding gives the stored bytes.
            let aad = Aad::new(&header.to_bytes(), cluster);
            decrypt(key, Nonce::assume_unique_for_key(header.nonce), aead::Aad::from(aad.as_bytes()))
                .map_err(|()| OpenError::AuthenticationFailed { key_id })
        });
        match &result {
            Ok(_) => slot.opens.fetch_add(1, Ordering::Relaxed),
            Err(e) => slot.failures[e.reason().index()].fetch_add(1, Ordering::Relaxed),
        };
        result
    }

    fn check_opening_key<'s>(
        slot: &'s Slot,
        header: &EnvelopeHeader,
        purpose: Purpose,
    ) -> Result<&'s LessSafeKey, OpenError> {
        let key_id = header.key_id;
        let key = &slot.key.as_ref().ok_or(OpenError::DestroyedKey { key_id })?.key;
        if header.purpose != purpose {
            return Err(OpenError::WrongPurpose { expected: purpose, found: header.purpose, key_id });
        }
        if header.algorithm != slot.algorithm {
            return Err(OpenError::UnsupportedAlgorithm {
                algorithm_id: header.algorithm.wire_id(),
                key_id: Some(key_id),
            });
        }
        Ok(key)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // test code: a panic is the failure report

    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap()).collect()
    }

    /// The Rust sealer produces byte-identical envelopes to the independent implementation
    /// (`tests/data/gen_vectors.py`) for every pass vector.
    #[test]
    fn sealing_reproduces_every_pass_vector_byte_for_byte() {
        let doc: serde_json::Value =
            serde_json::from_str(include_str!("../tests/data/vectors.json")).unwrap();
        let mut checked = 0;
        for v in doc["vectors"].as_array().unwrap().iter().filter(|v| v["expect"] == "pass") {
            let alg = match v["algorithm"].as_str().unwrap() {
                "AES-256-GCM" => Algorithm::Aes256Gcm,
                _ => Algorithm::Aes256GcmSiv,
            };
            let purpose = match v["purpose"].as_str().unwrap() {
                "raft-payload" => Purpose::RaftPayload,
                _ => Purpose::Snapshot,
            };
            let key_id = KeyId(u32::try_from(v["key_id"].as_u64().unwrap()).unwrap());
            let ring = Keyring::new();
            let key = v["keys"][0][2].as_str().unwrap();
            ring.insert(key_id, alg, SecretKey::from_slice(&hex(key)).unwrap()).unwrap();
            let nonce: [u8; NONCE_LEN] = hex(v["nonce"].as_str().unwrap()).try_into().unwrap();
            let cluster = ClusterId::new(hex(v["cluster_id"].as_str().unwrap())).unwrap();
            let sealed = ring
                .seal_with_fixed_nonce(
                    key_id,
                    nonce,
                    purpose,
                    &cluster,
                    ProposalId(v["proposal_id"].as_u64().unwrap()),
                    &hex(v["plaintext"].as_str().unwrap()),
                )
                .unwrap();
            assert_eq!(sealed, hex(v["envelope"].as_str().unwrap()), "vector {}", v["name"]);
            checked += 1;
        }
        assert!(checked >= 7, "only {checked} pass vectors");
    }

    #[test]
    fn nonce_sequence_starts_at_a_random_base_and_counts_up() {
        let ring =
            Keyring::with_active_key(KeyId(1), Algorithm::Aes256Gcm, SecretKey::from_bytes([1; 32])).unwrap();
        let cluster = ClusterId::new("c").unwrap();
        let nonces: Vec<u128> = (0..3)
            .map(|_| {
                let env = ring.seal(Purpose::RaftPayload, &cluster, ProposalId(0), b"x").unwrap();
                let n = EnvelopeHeader::parse(&env).unwrap().nonce;
                let mut wide = [0u8; 16];
                wide[4..].copy_from_slice(&n);
                u128::from_be_bytes(wide)
            })
            .collect();
        let mask = (1u128 << 96) - 1;
        assert_eq!(nonces[1], (nonces[0] + 1) & mask);
        assert_eq!(nonces[2], (nonces[0] + 2) & mask);
    }
}
