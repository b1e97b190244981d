//! State-machine snapshots that carry the layer state: format v1, sealing and installing
//! (`DESIGN.md` §10.10).

use aws_lc_rs::digest::{digest, SHA256, SHA256_OUTPUT_LEN};
use zeroize::Zeroize;

use crate::apply_error::ControlError;
use crate::envelope::{EnvelopeHeader, HEADER_LEN, TAG_LEN};
use crate::errors::SealError;
use crate::ids::{KeyId, ProposalId, Purpose};
use crate::keyring::{KeyState, Keyring, SecretKey};
use crate::layer_state::{LayerSnapshot, LayerState};
use crate::local::lock;
use crate::local::RetainedSnapshot;

/// `"\xE5RSNP\r\n\x1A"`: the first 8 bytes of a snapshot made by [`LayerState::seal_snapshot`].
pub const SNAPSHOT_MAGIC: [u8; 8] = [0xE5, b'R', b'S', b'N', b'P', b'\r', b'\n', 0x1A];
const SNAPSHOT_FORMAT_VERSION: u8 = 1;
/// Magic, version, body kind, last index, layer section length.
const FIXED_LEN: usize = 8 + 1 + 1 + 8 + 4;
const BODY_CLEAR: u8 = 0;
const BODY_SEALED: u8 = 1;

/// The readable part of a snapshot made by [`LayerState::seal_snapshot`]: what a replica learns
/// before it opens anything. Nothing in it is trusted until
/// [`LayerState::install_snapshot`] has opened the body, which authenticates it.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct SnapshotHeader {
    /// The last log index the snapshot includes.
    pub last_index: u64,
    /// The layer state as of that index (wrapped keys only).
    pub layer: LayerSnapshot,
    /// The key the body is sealed under; `None` for a body in the clear (an inert layer state).
    pub sealed_under: Option<KeyId>,
}

struct Parsed<'a> {
    header: SnapshotHeader,
    /// Everything before the body: what the sealed digest covers.
    prefix: &'a [u8],
    body: &'a [u8],
}

fn parse(bytes: &[u8]) -> Result<Parsed<'_>, ControlError> {
    let bad = |what| ControlError::MalformedSnapshot { what };
    if bytes.len() < FIXED_LEN || bytes[..8] != SNAPSHOT_MAGIC {
        return Err(bad("not a sealed snapshot (magic)"));
    }
    if bytes[8] != SNAPSHOT_FORMAT_VERSION {
        return Err(bad("unsupported snapshot version"));
    }
    let kind = bytes[9];
    let last_index = u64::from_be_bytes(bytes[10..18].try_into().map_err(|_| bad("last index"))?);
    let layer_len = u32::from_be_bytes(bytes[18..22].try_into().map_err(|_| bad("layer length"))?) as usize;
    let layer_end =
        FIXED_LEN.checked_add(layer_len).filter(|&end| end <= bytes.len()).ok_or(bad("layer length"))?;
    let layer = LayerSnapshot::decode(&bytes[FIXED_LEN..layer_end])?;
    let body = &bytes[layer_end..];
    let sealed_under = match kind {
        BODY_CLEAR => None,
        BODY_SEALED => Some(EnvelopeHeader::parse(body).map_err(ControlError::SnapshotOpen)?.key_id),
        _ => return Err(bad("body kind")),
    };
    Ok(Parsed {
        header: SnapshotHeader { last_index, layer, sealed_under },
        prefix: &bytes[..layer_end],
        body,
    })
}

/// Whether `bytes` starts like a snapshot made by [`LayerState::seal_snapshot`] (its magic).
pub fn is_layer_snapshot(bytes: &[u8]) -> bool {
    bytes.starts_with(&SNAPSHOT_MAGIC)
}

impl SnapshotHeader {
    /// Reads the header of a snapshot made by [`LayerState::seal_snapshot`], without opening it.
    ///
    /// # Errors
    /// [`ControlError::MalformedSnapshot`] or [`ControlError::SnapshotOpen`] (a malformed body
    /// envelope).
    pub fn read(bytes: &[u8]) -> Result<Self, ControlError> {
        parse(bytes).map(|p| p.header)
    }
}

impl LayerState {
    /// Frames the user's state-machine snapshot `data`, which includes the log up to
    /// `last_index`, together with this layer state (format v1, `DESIGN.md` §10.10). The body is
    /// sealed under the active key as a [`Purpose::Snapshot`] envelope bound to `last_index`
    /// and to the layer section (by its SHA-256 inside the sealed body); while the layer state is
    /// inert (no key active, no cutover) it stays in the clear.
    ///
    /// Call it where the state machine builds its snapshot, with the layer state at the same
    /// applied index.
    ///
    /// # Errors
    /// [`SealError::NoActiveKey`] when a cutover is in force but no key is active; any sealing
    /// error.
    pub fn seal_snapshot(&self, last_index: u64, data: &[u8]) -> Result<Vec<u8>, SealError> {
        self.seal_snapshot_of(&self.snapshot(), last_index, data)
    }

    /// As [`seal_snapshot`](Self::seal_snapshot), with the layer state `layer` this state had at
    /// `last_index` ([`snapshot`](Self::snapshot) taken then): for engines that capture the state
    /// machine when a snapshot starts and seal it later, while entries go on applying. The body
    /// is sealed under `layer`'s active key, even if a later entry rotated it.
    ///
    /// # Errors
    /// As [`seal_snapshot`](Self::seal_snapshot); [`SealError::NoActiveKey`] also when `layer`'s
    /// active key has been destroyed here since.
    ///
    /// Either way, record what this replica now retains with
    /// [`NodeLocal::record_retained_snapshot`](crate::lifecycle::NodeLocal::record_retained_snapshot) once the engine keeps it.
    pub fn seal_snapshot_of(
        &self,
        layer: &LayerSnapshot,
        last_index: u64,
        data: &[u8],
    ) -> Result<Vec<u8>, SealError> {
        let sealing_key = layer.active_key();
        let sealing = sealing_key.is_some();
        if !sealing && layer.cutover.is_some() {
            return Err(SealError::NoActiveKey);
        }
        let layer_bytes = layer.encode();
        let body_len =
            if sealing { HEADER_LEN + SHA256_OUTPUT_LEN + data.len() + TAG_LEN } else { data.len() };
        // One allocation; the application's bytes are copied once, straight into place.
        let mut out = Vec::with_capacity(FIXED_LEN + layer_bytes.len() + body_len);
        out.extend_from_slice(&SNAPSHOT_MAGIC);
        out.push(SNAPSHOT_FORMAT_VERSION);
        out.push(if sealing { BODY_SEALED } else { BODY_CLEAR });
        out.extend_from_slice(&last_index.to_be_bytes());
        out.extend_from_slice(&(layer_bytes.len() as u32).to_be_bytes());
        out.extend_from_slice(&layer_bytes);
        let Some(key_id) = sealing_key else {
            out.extend_from_slice(data);
            return Ok(out);
        };
        let sum = digest(&SHA256, &out);
        let parts = [sum.as_ref(), data];
        self.keyring.seal_into(
            Some(key_id),
            Purpose::Snapshot,
            &self.cluster,
            ProposalId(last_index),
            &parts,
            &mut out,
        )?;
        tracing::debug!(last_index, key_id = key_id.0, "snapshot sealed");
        Ok(out)
    }

    /// Unwraps, with `provider`, the keys a snapshot made by [`seal_snapshot`](Self::seal_snapshot)
    /// needs that this replica does not hold yet, ahead of
    /// [`install_snapshot`](Self::install_snapshot). Call it where the snapshot is received, never
    /// on the apply path.
    ///
    /// # Errors
    /// As [`SnapshotHeader::read`], and [`ControlError::Provider`] for the first key that cannot
    /// be unwrapped.
    pub async fn prefetch_sealed_snapshot(
        &self,
        bytes: &[u8],
        provider: &dyn crate::provider::KeyProvider,
    ) -> Result<(), ControlError> {
        let header = SnapshotHeader::read(bytes)?;
        self.prefetch_snapshot(&header.layer, provider).await
    }

    /// Installs a snapshot made by [`seal_snapshot`](Self::seal_snapshot) that includes the log up
    /// to `last_index`: opens its body, checks it was sealed for `last_index` in this cluster
    /// and with exactly this layer section, restores the layer state from it
    /// ([`restore`](Self::restore)) and returns the user's snapshot bytes to hand to the state
    /// machine. Synchronous: keys this replica does not hold must have been unwrapped first
    /// ([`prefetch_sealed_snapshot`](Self::prefetch_sealed_snapshot)).
    ///
    /// | body | accepted when |
    /// |---|---|
    /// | in the clear | neither its layer section nor this replica has a cutover, the section has no active key, and a key active here is retired or destroyed in the section |
    /// | sealed | it opens under the layer section's active key, for `last_index`, with the layer section's digest |
    ///
    /// # Errors
    /// Nothing changes on error; the adapter halts the replica (fail closed): the reason is
    /// [`ControlError::reason`]. [`ControlError::UnsealedSnapshot`],
    /// [`ControlError::SnapshotOpen`] (tampering, another cluster or index, a destroyed key),
    /// [`ControlError::KeyUnavailable`], [`ControlError::MalformedSnapshot`], or any error of
    /// [`restore`](Self::restore).
    pub fn install_snapshot(&self, last_index: u64, bytes: &[u8]) -> Result<Vec<u8>, ControlError> {
        let bad = |what| ControlError::MalformedSnapshot { what };
        let parsed = parse(bytes)?;
        let header = &parsed.header;
        if header.last_index != last_index {
            return Err(bad("snapshot made for another index"));
        }
        let mut data = match header.sealed_under {
            None => {
                // A key active here may only have stopped sealing through the log: the section
                // must show it retired or destroyed (switching off before enforcing), else this is
                // a clear frame claiming a history this replica never had.
                let retired_here = self.active_key().map_or(true, |mine| {
                    header.layer.keys.iter().any(|k| k.key_id == mine && k.state != KeyState::Active)
                });
                if header.layer.cutover.is_some()
                    || header.layer.active_key().is_some()
                    || self.cutover().is_some()
                    || !retired_here
                {
                    return Err(ControlError::UnsealedSnapshot);
                }
                parsed.body.to_vec()
            }
            Some(key_id) => {
                if header.layer.active_key() != Some(key_id) {
                    return Err(bad("body not sealed under the snapshot's active key"));
                }
                let envelope = EnvelopeHeader::parse(parsed.body).map_err(ControlError::SnapshotOpen)?;
                if envelope.proposal_id != ProposalId(last_index) {
                    return Err(bad("snapshot made for another index"));
                }
                let mut plain = self.open_snapshot_body(&header.layer, key_id, parsed.body)?;
                let sum = digest(&SHA256, parsed.prefix);
                if plain.get(..SHA256_OUTPUT_LEN) != Some(sum.as_ref()) {
                    plain.zeroize();
                    return Err(bad("layer section does not match the sealed body"));
                }
                // The application's bytes, in the same buffer: no second copy.
                plain.drain(..SHA256_OUTPUT_LEN);
                plain
            }
        };
        if let Err(e) = self.restore(&header.layer) {
            data.zeroize();
            return Err(e);
        }
        tracing::info!(last_index, key_id = header.sealed_under.map(|k| k.0), "snapshot installed");
        self.local().record_retained_snapshot(RetainedSnapshot::new(last_index, header.sealed_under));
        Ok(data)
    }

    /// Opens a snapshot body sealed under `key_id`: with this keyring when it holds the key, else
    /// with the copy [`prefetch_sealed_snapshot`](Self::prefetch_sealed_snapshot) unwrapped.
    fn open_snapshot_body(
        &self,
        layer: &LayerSnapshot,
        key_id: KeyId,
        body: &[u8],
    ) -> Result<Vec<u8>, ControlError> {
        if self.keyring.state(key_id).is_some() {
            return self
                .keyring
                .open(Purpose::Snapshot, &self.cluster, body)
                .map_err(ControlError::SnapshotOpen);
        }
        let record =
            layer.keys.iter().find(|k| k.key_id == key_id).ok_or(ControlError::UnknownKey(key_id))?;
        let cache = lock(&self.unwrapped);
        let cached = cache.get(&key_id).filter(|u| {
            u.install.algorithm == record.algorithm
                && u.install.kek_id == record.kek_id
                && Some(&u.install.wrapped_key) == record.wrapped_key.as_ref()
        });
        let Some(unwrapped) = cached else {
            return Err(ControlError::KeyUnavailable { key_id, kek_id: record.kek_id.clone() });
        };
        let scratch = Keyring::new();
        let material = SecretKey::from_slice(unwrapped.key.expose_secret()).map_err(ControlError::Keyring)?;
        scratch.insert(key_id, record.algorithm, material).map_err(ControlError::Keyring)?;
        drop(cache);
        scratch.open(Purpose::Snapshot, &self.cluster, body).map_err(ControlError::SnapshotOpen)
    }
}
