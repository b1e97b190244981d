//! What the layer state remembers about applied entries so that nothing above the cutover is
//! taken on trust: a replay window per sealing session (exactly-once envelopes) and a running
//! digest of everything applied (replicated integrity checkpoints). `DESIGN.md` §11 has the
//! argument; the byte form is part of the layer snapshot (§10.4).

use std::collections::{BTreeMap, VecDeque};
use std::fmt;
use std::time::Duration;

use aws_lc_rs::digest;

use crate::control::Reader;
use crate::envelope::{EnvelopeHeader, HEADER_LEN, NONCE_LEN, TAG_LEN};
use crate::ids::{KeyId, ProposalId};
use crate::EntryKind;

/// Envelopes one sealing session remembers: a retry or replay of any of them is recognised as a
/// duplicate. Everything older than the oldest remembered one is refused as expired.
pub const REPLAY_WINDOW: usize = 1024;
/// Log entries after which a remembered envelope is forgotten (its session's floor rises past
/// it): an envelope first applied more than this many entries ago is refused as expired if it
/// comes back.
pub const REPLAY_HORIZON: u64 = 1 << 16;
/// How often (in log indexes) forgotten envelopes are swept from memory.
const SWEEP_EVERY: u64 = 1024;
/// Digests of the most recent applied indexes kept for checkpoint entries to compare with.
pub const DIGEST_HISTORY: usize = 256;
/// Nonces of one session lie within 2^32 positions of each other (the per-key sealing budget);
/// a session accepts nonces within 2^33 either side of its first one.
const SESSION_SPAN: u128 = 1 << 34;
const SESSION_BACK: u128 = 1 << 33;
const NONCE_MOD_MASK: u128 = (1 << 96) - 1;

/// What the layer state decided for an opened envelope (or any other entry) that passed the
/// gate ([`LayerState::admit`](crate::LayerState::admit)).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Admission {
    /// Hand the entry to the state machine.
    Apply,
    /// The same envelope (same key and nonce) was applied at `first_index`: do not apply it
    /// again. Every replica decides the same; the proposer gets
    /// [`Admission::Duplicate`] as its answer.
    Duplicate {
        /// Where it was applied.
        first_index: u64,
    },
    /// The envelope is older than its session's replay window: whether it was applied before
    /// can no longer be told, so it is not applied (never a silent apply). Every replica decides
    /// the same; the proposer should prepare the request again.
    Expired {
        /// The key it was sealed under.
        key_id: KeyId,
    },
}

impl Admission {
    /// True for [`Admission::Apply`].
    pub fn applies(&self) -> bool {
        matches!(self, Admission::Apply)
    }
}

/// What an application's state machine may know about the entry it is handed, next to the
/// payload: where it is, what it was, and (for an opened envelope) the proposal id from its
/// authenticated header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct ApplyContext {
    /// The entry's log index.
    pub index: u64,
    /// What the entry was in the log.
    pub kind: EntryKind,
    /// The proposal id of an opened envelope (authenticated); `None` for cleartext.
    pub proposal_id: Option<ProposalId>,
    /// The key an opened envelope was sealed under.
    pub key_id: Option<KeyId>,
}

impl ApplyContext {
    /// The context of the entry at `index` whose stored bytes are `bytes` (an envelope's
    /// header is read for its proposal id and key id).
    pub fn of(index: u64, kind: EntryKind, bytes: &[u8]) -> Self {
        let header = match kind {
            EntryKind::Envelope => EnvelopeHeader::parse(bytes).ok(),
            _ => None,
        };
        Self { index, kind, proposal_id: header.map(|h| h.proposal_id), key_id: header.map(|h| h.key_id) }
    }
}

/// An applied entry as the running digest records it.
#[derive(Clone, Copy)]
#[non_exhaustive]
pub enum EntryRecord<'a> {
    /// A cleartext payload: its bytes are hashed.
    Cleartext(&'a [u8]),
    /// A payload envelope as stored: its authenticated header and tag are hashed.
    Envelope(&'a [u8]),
    /// An entry the engine interprets itself (a no-op, a membership change): the bytes the
    /// engine stores for it, possibly none, are hashed.
    Engine(&'a [u8]),
    /// A layer control entry as stored (sealed: header and tag; clear: its bytes).
    LayerControl(&'a [u8]),
}

impl fmt::Debug for EntryRecord<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (name, len) = match self {
            EntryRecord::Cleartext(b) => ("Cleartext", b.len()),
            EntryRecord::Envelope(b) => ("Envelope", b.len()),
            EntryRecord::Engine(b) => ("Engine", b.len()),
            EntryRecord::LayerControl(b) => ("LayerControl", b.len()),
        };
        write!(f, "{name}({len} bytes)")
    }
}

/// When the leader proposes an integrity checkpoint: after `every_entries` applied entries, or
/// after `every` with at least one new entry, whichever comes first. Only while a cutover is in
/// force and a key is active (the checkpoint is a sealed control entry).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct CheckpointPolicy {
    /// Entries between checkpoints (0: never by count).
    pub every_entries: u64,
    /// Time between checkpoints (zero: never by time).
    pub every: Duration,
}

impl CheckpointPolicy {
    /// The default: every 1024 entries or 10 seconds.
    pub const DEFAULT: Self = Self { every_entries: 1024, every: Duration::from_secs(10) };
    /// No automatic checkpoints (they can still be proposed explicitly).
    pub const OFF: Self = Self { every_entries: 0, every: Duration::ZERO };

    /// A checkpoint every `entries` entries or every `every`.
    pub const fn new(every_entries: u64, every: Duration) -> Self {
        Self { every_entries, every }
    }

    /// True when a checkpoint is due: `since` entries and `elapsed` time since the last one.
    pub fn due(&self, since: u64, elapsed: Duration) -> bool {
        since > 0
            && ((self.every_entries > 0 && since >= self.every_entries)
                || (!self.every.is_zero() && elapsed >= self.every))
    }
}

impl Default for CheckpointPolicy {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// How a checkpoint entry compared with this replica's own digest.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Equal: everything up to `through` is what the leader applied.
    Verified,
    /// This replica cannot tell (its digest at `through` is no longer kept, or it never knew
    /// its chain): no halt.
    Unverifiable,
    /// Different: the replica diverged somewhere in `from..=through`.
    Diverged { from: u64 },
}

/// One sealing session's replay window: envelopes of one key whose nonces come from one
/// keyring's counter (they lie within [`SESSION_SPAN`] of each other).
#[derive(Clone, PartialEq, Eq)]
struct Session {
    key: KeyId,
    /// Nonce value the session's positions count from (first nonce seen minus 2^33).
    anchor: u128,
    /// Positions at or below it are expired.
    floor: Option<u64>,
    /// Remembered positions and the index each was applied at.
    recent: Window,
}

/// A session's remembered positions, each with the index it was applied at, in position order:
/// a sorted ring of at most [`REPLAY_WINDOW`] + 1 pairs. Positions arrive almost in order (one
/// sealer's nonce counter), so an insert is a push at the back, and the ring's storage is reused:
/// remembering an envelope allocates nothing once the window is full.
#[derive(Clone, Default, PartialEq, Eq)]
struct Window(VecDeque<(u64, u64)>);

impl Window {
    fn find(&self, position: u64) -> Result<usize, usize> {
        match self.0.back() {
            Some(&(last, _)) if last < position => Err(self.0.len()),
            _ => self.0.binary_search_by_key(&position, |&(p, _)| p),
        }
    }

    fn get(&self, position: u64) -> Option<u64> {
        self.find(position).ok().map(|at| self.0[at].1)
    }

    /// Remembers `position` at `index`; the index it had before, if any.
    fn insert(&mut self, position: u64, index: u64) -> Option<u64> {
        match self.find(position) {
            Ok(at) => Some(std::mem::replace(&mut self.0[at].1, index)),
            Err(at) => {
                self.0.insert(at, (position, index));
                None
            }
        }
    }

    fn pop_first(&mut self) -> Option<(u64, u64)> {
        self.0.pop_front()
    }

    fn len(&self) -> usize {
        self.0.len()
    }

    fn iter(&self) -> impl Iterator<Item = &(u64, u64)> {
        self.0.iter()
    }

    /// Forgets every position applied before `oldest`; the highest position forgotten.
    fn forget_applied_before(&mut self, oldest: u64) -> Option<u64> {
        let highest = self.0.iter().filter(|(_, at)| *at < oldest).map(|(p, _)| *p).max();
        if highest.is_some() {
            self.0.retain(|(_, at)| *at >= oldest);
        }
        highest
    }
}

impl Session {
    fn position(&self, key: KeyId, nonce: u128) -> Option<u64> {
        let rel = nonce.wrapping_sub(self.anchor) & NONCE_MOD_MASK;
        (self.key == key && rel < SESSION_SPAN).then_some(rel as u64)
    }

    fn judge(&self, position: u64) -> Option<Admission> {
        if self.floor.is_some_and(|f| position <= f) {
            return Some(Admission::Expired { key_id: self.key });
        }
        self.recent.get(position).map(|first_index| Admission::Duplicate { first_index })
    }

    fn forget_first(&mut self) {
        if let Some((position, _)) = self.recent.pop_first() {
            self.floor = Some(self.floor.map_or(position, |f| f.max(position)));
        }
    }
}

/// The replicated integrity state of a layer state: replay windows, the running digest and the
/// last checkpoint. Identical on every replica that applied the same log prefix; carried in
/// layer snapshots. Shows only counts and indexes in `Debug`.
#[derive(Clone, PartialEq, Eq)]
pub struct IntegrityState {
    sessions: Vec<Session>,
    /// The running digest through the last recorded index; `None` when this replica does not
    /// know its chain (it started from a layer state without one).
    digest: Option<[u8; 32]>,
    /// Digests of the most recent indexes, oldest first.
    history: VecDeque<(u64, [u8; 32])>,
    /// The last index a checkpoint verified (or that a checkpoint covered).
    checkpointed_through: Option<u64>,
    /// Indexes of envelopes that were not applied (duplicate, expired) within the horizon, with
    /// the decision: a replay of the log at or below the applied index gets it again.
    refused: BTreeMap<u64, Admission>,
}

impl Default for IntegrityState {
    fn default() -> Self {
        Self {
            sessions: Vec::new(),
            digest: Some([0; 32]),
            history: VecDeque::new(),
            checkpointed_through: None,
            refused: BTreeMap::new(),
        }
    }
}

impl fmt::Debug for IntegrityState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IntegrityState")
            .field("sessions", &self.sessions.len())
            .field("remembered", &self.remembered())
            .field("digest_known", &self.digest.is_some())
            .field("checkpointed_through", &self.checkpointed_through)
            .finish()
    }
}

fn nonce_value(nonce: &[u8; NONCE_LEN]) -> u128 {
    let mut wide = [0u8; 16];
    wide[4..].copy_from_slice(nonce);
    u128::from_be_bytes(wide)
}

impl IntegrityState {
    /// A state whose digest chain is unknown (restored from a layer state that had none).
    pub(crate) fn unknown_chain() -> Self {
        Self { digest: None, ..Self::default() }
    }

    /// Envelopes remembered across all sessions.
    pub fn remembered(&self) -> usize {
        self.sessions.iter().map(|s| s.recent.len()).sum()
    }

    /// Sealing sessions tracked.
    pub fn sessions(&self) -> usize {
        self.sessions.len()
    }

    /// The last index an applied checkpoint covered.
    pub fn checkpointed_through(&self) -> Option<u64> {
        self.checkpointed_through
    }

    /// The running digest through the last recorded index, if this replica knows its chain.
    pub fn digest(&self) -> Option<[u8; 32]> {
        self.digest
    }

    /// The replay decision for the envelope `header` at `index`, without changing anything.
    pub(crate) fn judge(&self, header: &EnvelopeHeader) -> Option<Admission> {
        let nonce = nonce_value(&header.nonce);
        self.sessions
            .iter()
            .find_map(|s| s.position(header.key_id, nonce).map(|p| (s, p)))
            .and_then(|(s, p)| s.judge(p))
    }

    /// As [`judge`](Self::judge) for an entry at or below the last recorded index (a replay
    /// after a restart whose state machine is behind the layer state): the decision it got then.
    pub(crate) fn judge_again(&self, index: u64) -> Admission {
        self.refused.get(&index).copied().unwrap_or(Admission::Apply)
    }

    /// Records that the envelope at `index` was not applied (`decision`), for
    /// [`judge_again`](Self::judge_again). Bounded: at most [`REPLAY_WINDOW`] refusals, and none
    /// older than [`REPLAY_HORIZON`] after a sweep.
    pub(crate) fn refused(&mut self, index: u64, decision: Admission) {
        self.refused.insert(index, decision);
        while self.refused.len() > REPLAY_WINDOW {
            self.refused.pop_first();
        }
    }

    /// Records that the envelope `header` was applied at `index` (after [`judge`](Self::judge)
    /// returned `None`).
    pub(crate) fn remember(&mut self, index: u64, header: &EnvelopeHeader) {
        let nonce = nonce_value(&header.nonce);
        let found = self.sessions.iter().position(|s| s.position(header.key_id, nonce).is_some());
        let at = match found {
            Some(at) => at,
            None => {
                let anchor = nonce.wrapping_sub(SESSION_BACK) & NONCE_MOD_MASK;
                self.sessions.push(Session {
                    key: header.key_id,
                    anchor,
                    floor: None,
                    recent: Window::default(),
                });
                self.sessions.len() - 1
            }
        };
        let session = &mut self.sessions[at];
        if let Some(position) = session.position(header.key_id, nonce) {
            session.recent.insert(position, index);
            while session.recent.len() > REPLAY_WINDOW {
                session.forget_first();
            }
        }
    }

    /// Adds the entry at `index` to the running digest and keeps the result for checkpoints;
    /// every [`SWEEP_EVERY`] indexes forgets envelopes older than [`REPLAY_HORIZON`].
    pub(crate) fn record(&mut self, index: u64, entry: EntryRecord<'_>) {
        self.record_decided(index, entry, true);
    }

    /// As [`record`](Self::record), for an entry whose admission was `applied` or not: an
    /// envelope that was not applied (duplicate, expired) is hashed with its own tag, so a
    /// replica that decided otherwise than the others diverges at the next checkpoint instead
    /// of silently.
    pub(crate) fn record_decided(&mut self, index: u64, entry: EntryRecord<'_>, applied: bool) {
        if let Some(previous) = self.digest {
            let mut ctx = digest::Context::new(&digest::SHA256);
            ctx.update(b"raft-envelope digest v1");
            ctx.update(&previous);
            ctx.update(&index.to_be_bytes());
            let (tag, parts): (u8, [&[u8]; 2]) = match entry {
                EntryRecord::Cleartext(b) => (1, [b, &[]]),
                EntryRecord::Envelope(b) if applied => (2, authenticated_parts(b)),
                EntryRecord::Envelope(b) => (6, authenticated_parts(b)),
                EntryRecord::Engine(b) => (3, [b, &[]]),
                EntryRecord::LayerControl(b) if EnvelopeHeader::parse(b).is_ok() => {
                    (4, authenticated_parts(b))
                }
                EntryRecord::LayerControl(b) => (5, [b, &[]]),
            };
            ctx.update(&[tag]);
            ctx.update(&((parts[0].len() + parts[1].len()) as u64).to_be_bytes());
            ctx.update(parts[0]);
            ctx.update(parts[1]);
            let mut next = [0u8; 32];
            next.copy_from_slice(ctx.finish().as_ref());
            self.digest = Some(next);
            self.history.push_back((index, next));
            while self.history.len() > DIGEST_HISTORY {
                self.history.pop_front();
            }
        }
        if index % SWEEP_EVERY == 0 {
            self.sweep(index);
        }
    }

    fn sweep(&mut self, index: u64) {
        let Some(oldest) = index.checked_sub(REPLAY_HORIZON) else { return };
        self.refused.retain(|at, _| *at >= oldest);
        for session in &mut self.sessions {
            if let Some(position) = session.recent.forget_applied_before(oldest) {
                session.floor = Some(session.floor.map_or(position, |f| f.max(position)));
            }
        }
    }

    /// Forgets the sessions of a destroyed key: its envelopes no longer open.
    pub(crate) fn forget_key(&mut self, key: KeyId) {
        self.sessions.retain(|s| s.key != key);
    }

    /// Compares a checkpoint's digest through `through` with this replica's.
    pub(crate) fn verify(&self, through: u64, digest: &[u8; 32]) -> Verdict {
        let Some(&(_, mine)) = self.history.iter().find(|(i, _)| *i == through) else {
            return Verdict::Unverifiable;
        };
        if mine == *digest {
            Verdict::Verified
        } else {
            Verdict::Diverged { from: self.checkpointed_through.map_or(0, |c| c + 1) }
        }
    }

    /// Records that a checkpoint through `through` was applied.
    pub(crate) fn checkpointed(&mut self, through: u64) {
        self.checkpointed_through = Some(self.checkpointed_through.map_or(through, |c| c.max(through)));
    }

    /// The running digest at the last recorded index.
    pub(crate) fn latest(&self) -> Option<(u64, [u8; 32])> {
        self.history.back().copied()
    }

    pub(crate) fn encode_into(&self, out: &mut Vec<u8>) {
        match &self.digest {
            Some(d) => {
                out.push(1);
                out.extend_from_slice(d);
            }
            None => out.push(0),
        }
        out.extend_from_slice(&self.checkpointed_through.unwrap_or(u64::MAX).to_be_bytes());
        out.extend_from_slice(&(self.history.len() as u32).to_be_bytes());
        for (index, d) in &self.history {
            out.extend_from_slice(&index.to_be_bytes());
            out.extend_from_slice(d);
        }
        out.extend_from_slice(&(self.sessions.len() as u32).to_be_bytes());
        for s in &self.sessions {
            out.extend_from_slice(&s.key.0.to_be_bytes());
            out.extend_from_slice(&s.anchor.to_be_bytes()[4..]);
            out.extend_from_slice(&s.floor.unwrap_or(u64::MAX).to_be_bytes());
            out.extend_from_slice(&(s.recent.len() as u32).to_be_bytes());
            for (position, index) in s.recent.iter() {
                out.extend_from_slice(&position.to_be_bytes());
                out.extend_from_slice(&index.to_be_bytes());
            }
        }
        out.extend_from_slice(&(self.refused.len() as u32).to_be_bytes());
        for (index, decision) in &self.refused {
            out.extend_from_slice(&index.to_be_bytes());
            let (kind, value) = match decision {
                Admission::Duplicate { first_index } => (1u8, *first_index),
                Admission::Expired { key_id } => (2u8, u64::from(key_id.0)),
                Admission::Apply => (0u8, 0), // never stored: `refused` takes refusals only
            };
            out.push(kind);
            out.extend_from_slice(&value.to_be_bytes());
        }
    }

    /// Reads what [`encode_into`](Self::encode_into) wrote. Total; allocates no more than the
    /// input's length.
    pub(crate) fn decode_from(r: &mut Reader<'_>) -> Result<Self, &'static str> {
        let field = |_| "integrity field";
        let digest = match r.u8("digest flag").map_err(field)? {
            0 => None,
            1 => {
                let mut d = [0u8; 32];
                d.copy_from_slice(r.take(32, "digest").map_err(field)?);
                Some(d)
            }
            _ => return Err("digest flag"),
        };
        let checkpointed_through = match r.u64("checkpointed through").map_err(field)? {
            u64::MAX => None,
            v => Some(v),
        };
        let count = r.u32("history count").map_err(field)? as usize;
        if count > DIGEST_HISTORY || count * 40 > r.0.len() {
            return Err("history count");
        }
        let mut history = VecDeque::with_capacity(count);
        for _ in 0..count {
            let index = r.u64("history index").map_err(field)?;
            let mut d = [0u8; 32];
            d.copy_from_slice(r.take(32, "history digest").map_err(field)?);
            if history.back().is_some_and(|(last, _)| *last >= index) {
                return Err("history not increasing");
            }
            history.push_back((index, d));
        }
        let count = r.u32("session count").map_err(field)? as usize;
        if count.saturating_mul(28) > r.0.len() {
            return Err("session count");
        }
        let mut sessions = Vec::with_capacity(count);
        for _ in 0..count {
            let key = KeyId(r.u32("session key").map_err(field)?);
            let mut wide = [0u8; 16];
            wide[4..].copy_from_slice(r.take(12, "session anchor").map_err(field)?);
            let anchor = u128::from_be_bytes(wide);
            let floor = match r.u64("session floor").map_err(field)? {
                u64::MAX => None,
                v => Some(v),
            };
            let n = r.u32("window count").map_err(field)? as usize;
            if n > REPLAY_WINDOW || n * 16 > r.0.len() {
                return Err("window count");
            }
            let mut recent = Window::default();
            let mut previous = None;
            for _ in 0..n {
                let position = r.u64("window position").map_err(field)?;
                let index = r.u64("window index").map_err(field)?;
                // Increasing, as written: one encoding per state (found by fuzzing).
                if position as u128 >= SESSION_SPAN || previous.is_some_and(|p| p >= position) {
                    return Err("window position");
                }
                previous = Some(position);
                recent.insert(position, index);
            }
            let session = Session { key, anchor, floor, recent };
            // Sessions of one key never overlap (an envelope would match the first one while
            // remembered in the other, and a duplicate would apply again).
            if sessions.iter().any(|s: &Session| {
                s.position(key, anchor).is_some() || session.position(s.key, s.anchor).is_some()
            }) {
                return Err("overlapping sessions");
            }
            sessions.push(session);
        }
        let count = r.u32("refused count").map_err(field)? as usize;
        if count > REPLAY_WINDOW || count * 17 > r.0.len() {
            return Err("refused count");
        }
        let mut refused = BTreeMap::new();
        for _ in 0..count {
            let index = r.u64("refused index").map_err(field)?;
            let kind = r.u8("refused kind").map_err(field)?;
            let value = r.u64("refused value").map_err(field)?;
            let decision = match kind {
                1 => Admission::Duplicate { first_index: value },
                2 => {
                    Admission::Expired { key_id: KeyId(u32::try_from(value).map_err(|_| "refused key id")?) }
                }
                _ => return Err("refused kind"),
            };
            if refused.last_key_value().is_some_and(|(last, _)| *last >= index) {
                return Err("refused not increasing");
            }
            refused.insert(index, decision);
        }
        Ok(Self { sessions, digest, history, checkpointed_through, refused })
    }
}

/// An envelope's authenticated header and tag (its ciphertext is covered by the tag).
fn authenticated_parts(envelope: &[u8]) -> [&[u8]; 2] {
    if envelope.len() < HEADER_LEN + TAG_LEN {
        return [envelope, &[]];
    }
    [&envelope[..HEADER_LEN], &envelope[envelope.len() - TAG_LEN..]]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::{Algorithm, Purpose};

    fn header(key: u32, nonce: u128) -> EnvelopeHeader {
        let mut n = [0u8; NONCE_LEN];
        n.copy_from_slice(&nonce.to_be_bytes()[4..]);
        EnvelopeHeader::new(Algorithm::Aes256Gcm, Purpose::RaftPayload, KeyId(key), ProposalId(1), n)
    }

    #[test]
    fn a_remembered_envelope_is_a_duplicate_naming_its_first_index() {
        let mut s = IntegrityState::default();
        let h = header(1, 77);
        assert_eq!(s.judge(&h), None);
        s.remember(10, &h);
        assert_eq!(s.judge(&h), Some(Admission::Duplicate { first_index: 10 }));
        assert_eq!(s.judge(&header(1, 78)), None);
        assert_eq!(s.judge(&header(2, 77)), None, "another key is another session");
    }

    #[test]
    fn an_envelope_older_than_the_window_is_expired_not_applied() {
        let mut s = IntegrityState::default();
        for i in 0..=REPLAY_WINDOW as u128 {
            s.remember(i as u64 + 1, &header(1, 1000 + i));
        }
        assert_eq!(s.judge(&header(1, 1000)), Some(Admission::Expired { key_id: KeyId(1) }));
        assert_eq!(s.judge(&header(1, 999)), Some(Admission::Expired { key_id: KeyId(1) }));
        assert_eq!(s.judge(&header(1, 1001)), Some(Admission::Duplicate { first_index: 2 }));
        assert_eq!(s.remembered(), REPLAY_WINDOW);
    }

    #[test]
    fn nonces_across_the_96_bit_wrap_stay_one_session() {
        let mut s = IntegrityState::default();
        let top = NONCE_MOD_MASK;
        s.remember(1, &header(1, top));
        s.remember(2, &header(1, 0));
        assert_eq!(s.sessions(), 1);
        assert_eq!(s.judge(&header(1, 0)), Some(Admission::Duplicate { first_index: 2 }));
    }

    #[test]
    fn old_entries_are_forgotten_after_the_horizon() {
        let mut s = IntegrityState::default();
        s.remember(5, &header(1, 500));
        s.record(REPLAY_HORIZON + SWEEP_EVERY, EntryRecord::Engine(&[]));
        assert_eq!(s.judge(&header(1, 500)), Some(Admission::Expired { key_id: KeyId(1) }));
        assert_eq!(s.judge(&header(1, 501)), None);
    }

    #[test]
    fn the_digest_depends_on_every_record() {
        let run = |entries: &[(u64, EntryRecord<'_>)]| {
            let mut s = IntegrityState::default();
            for (i, e) in entries {
                s.record(*i, *e);
            }
            s.latest().expect("recorded").1
        };
        let env = [1u8; 60];
        let base = run(&[(1, EntryRecord::Cleartext(b"a")), (2, EntryRecord::Envelope(&env))]);
        assert_ne!(base, run(&[(1, EntryRecord::Cleartext(b"b")), (2, EntryRecord::Envelope(&env))]));
        assert_ne!(base, run(&[(1, EntryRecord::Cleartext(b"a")), (2, EntryRecord::Engine(&[]))]));
        assert_ne!(base, run(&[(1, EntryRecord::Cleartext(b"a")), (3, EntryRecord::Envelope(&env))]));
        assert_eq!(base, run(&[(1, EntryRecord::Cleartext(b"a")), (2, EntryRecord::Envelope(&env))]));
    }

    #[test]
    fn a_checkpoint_verifies_equal_and_names_the_range_otherwise() {
        let mut s = IntegrityState::default();
        s.record(1, EntryRecord::Cleartext(b"a"));
        let (through, good) = s.latest().expect("recorded");
        assert_eq!(s.verify(through, &good), Verdict::Verified);
        s.checkpointed(through);
        s.record(2, EntryRecord::Cleartext(b"b"));
        assert_eq!(s.verify(2, &good), Verdict::Diverged { from: 2 });
        assert_eq!(s.verify(99, &good), Verdict::Unverifiable);
        assert_eq!(IntegrityState::unknown_chain().verify(1, &good), Verdict::Unverifiable);
    }

    #[test]
    fn encoding_round_trips_and_decoding_is_total() {
        let mut s = IntegrityState::default();
        for i in 0..40u64 {
            s.record(i + 1, EntryRecord::Cleartext(&i.to_be_bytes()));
            s.remember(i + 1, &header(1 + (i % 3) as u32, u128::from(i) * 7));
        }
        s.checkpointed(20);
        let mut bytes = Vec::new();
        s.encode_into(&mut bytes);
        assert_eq!(IntegrityState::decode_from(&mut Reader(&bytes)), Ok(s));
        for len in 0..bytes.len() {
            let _ = IntegrityState::decode_from(&mut Reader(&bytes[..len]));
        }
    }

    #[test]
    fn the_replay_window_behaves_as_an_ordered_map_whatever_the_arrival_order() {
        let (mut window, mut model) = (Window::default(), BTreeMap::new());
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        for index in 0..5000u64 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            // Mostly increasing, sometimes behind, sometimes a position seen before.
            let position = (index + x % 64).saturating_sub(32);
            assert_eq!(window.insert(position, index), model.insert(position, index));
            assert_eq!(window.get(position), model.get(&position).copied());
            if window.len() > 100 {
                assert_eq!(window.pop_first(), model.pop_first());
            }
            if index % 700 == 0 {
                let oldest = index.saturating_sub(50);
                let expected = model.iter().filter(|(_, at)| **at < oldest).map(|(p, _)| *p).max();
                model.retain(|_, at| *at >= oldest);
                assert_eq!(window.forget_applied_before(oldest), expected);
            }
            assert_eq!(window.len(), model.len());
        }
        assert!(window.iter().copied().eq(model.into_iter()));
    }

    #[test]
    fn an_envelope_not_applied_is_hashed_apart_from_an_applied_one() {
        let envelope = [1u8; HEADER_LEN + 8 + TAG_LEN];
        let (mut applied, mut refused) = (IntegrityState::default(), IntegrityState::default());
        applied.record_decided(5, EntryRecord::Envelope(&envelope), true);
        refused.record_decided(5, EntryRecord::Envelope(&envelope), false);
        assert_ne!(applied.digest(), refused.digest(), "replicas that decided apart diverge");
    }
}
