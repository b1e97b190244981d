//! What one replica knows about itself and does not replicate: the bookkeeping behind the append
//! rule and the destroy-proof report.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering::SeqCst};
use std::sync::{Mutex, MutexGuard, PoisonError};

use crate::ids::KeyId;
use crate::integrity::Admission;

/// A snapshot one replica retains, as it reports it for the destroy proof.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[non_exhaustive]
pub struct RetainedSnapshot {
    /// The last log index it includes.
    pub last_index: u64,
    /// The key its body is sealed under (`None`: in the clear).
    pub sealed_under: Option<KeyId>,
}

impl RetainedSnapshot {
    /// A retained snapshot.
    pub fn new(last_index: u64, sealed_under: Option<KeyId>) -> Self {
        Self { last_index, sealed_under }
    }
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Node-local bookkeeping of a [`LayerState`](crate::LayerState) ([`LayerState::local`](crate::LayerState::local)):
/// facts about this replica's own log, snapshot and snapshot builds, which differ between
/// replicas and are never replicated, persisted or put in a snapshot. The adapters feed it from
/// the engine's storage callbacks; [`LayerState::check_append`](crate::LayerState::check_append)
/// and the replica's retention report read it.
#[derive(Debug, Default)]
pub struct NodeLocal {
    /// The snapshot this replica keeps.
    retained: Mutex<Option<RetainedSnapshot>>,
    /// The keys snapshot builds in progress will seal under, with how many builds each.
    claims: Mutex<BTreeMap<KeyId, usize>>,
    /// The highest log index at which a layer control entry may sit in this replica's log.
    control_hint: AtomicU64,
    /// The last log index this replica applied, any entry.
    applied_through: AtomicU64,
    /// One above the `through` of the last checkpoint this node proposed (0: none).
    checkpoint_proposed: AtomicU64,
    /// Recent entries this replica did not hand to its state machine (duplicate or expired
    /// envelopes), by index, for the proposer's answer.
    not_applied: Mutex<BTreeMap<u64, Admission>>,
    /// Checkpoints this replica applied: verified, not verifiable here, diverged.
    checkpoints: [AtomicU64; 3],
}

/// How the integrity checkpoints this replica applied compared
/// ([`NodeLocal::checkpoint_results`]); counted since the process started.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct CheckpointResults {
    /// The replica's digest matched the leader's.
    pub verified: u64,
    /// The replica no longer kept (or never knew) its digest at the checkpoint's range.
    pub unverifiable: u64,
    /// The digests differed: the replica halted (`diverged`), once per attempt.
    pub diverged: u64,
}

/// Which [`CheckpointResults`] field a checkpoint adds to.
#[derive(Clone, Copy)]
pub(crate) enum CheckpointResult {
    Verified = 0,
    Unverifiable = 1,
    Diverged = 2,
}

/// How many [`NodeLocal::not_applied_at`] answers a replica keeps.
const NOT_APPLIED_KEPT: usize = 4096;

impl NodeLocal {
    /// Counts one applied checkpoint.
    pub(crate) fn note_checkpoint_result(&self, result: CheckpointResult) {
        self.checkpoints[result as usize].fetch_add(1, SeqCst);
    }

    /// How the integrity checkpoints this replica applied compared, since the process started.
    pub fn checkpoint_results(&self) -> CheckpointResults {
        let n = |r: CheckpointResult| self.checkpoints[r as usize].load(SeqCst);
        CheckpointResults {
            verified: n(CheckpointResult::Verified),
            unverifiable: n(CheckpointResult::Unverifiable),
            diverged: n(CheckpointResult::Diverged),
        }
    }

    /// Records that this replica's log may hold a layer control entry at `index` (one was
    /// appended there; or, after a restart, `index` is the last stored index and the log was not
    /// read). Only ever raised by appends: an entry that is truncated later keeps the hint until
    /// the replica applies past it or [`note_log_truncated`](Self::note_log_truncated) lowers it.
    pub fn note_control_appended(&self, index: u64) {
        self.control_hint.fetch_max(index, SeqCst);
    }

    /// Records that this replica's log was truncated so that it ends at `last` at most (entries
    /// above it were removed): a control entry noted above it is gone.
    pub fn note_log_truncated(&self, last: u64) {
        self.control_hint.fetch_min(last, SeqCst);
    }

    /// Records that this replica applied every entry up to `index` (any kind).
    pub fn note_applied_through(&self, index: u64) {
        self.applied_through.fetch_max(index, SeqCst);
    }

    /// Records that this node proposed a checkpoint through `through`, so that
    /// [`LayerState::checkpoint_due`](crate::LayerState::checkpoint_due) counts from it.
    pub fn note_checkpoint_proposed(&self, through: u64) {
        self.checkpoint_proposed.fetch_max(through.saturating_add(1), SeqCst);
    }

    /// Records that a checkpoint entry was applied at `index`: the policy counts from there, so
    /// the checkpoint entry itself is no new entry to check-point (an idle cluster proposes none).
    pub(crate) fn note_checkpoint_applied(&self, index: u64) {
        self.checkpoint_proposed.fetch_max(index.saturating_add(1), SeqCst);
    }

    /// Where the checkpoint policy counts from on this node: the `through` of the last
    /// checkpoint it proposed, or the index of the last checkpoint entry it applied, whichever
    /// is later. Local and not persisted.
    pub fn checkpoint_proposed(&self) -> Option<u64> {
        self.checkpoint_proposed.load(SeqCst).checked_sub(1)
    }

    /// Records that the entry at `index` was not handed to the state machine (`admission` is
    /// not [`Admission::Apply`]), so the proposer waiting for it can be told why
    /// ([`not_applied_at`](Self::not_applied_at)). The most recent 4096 are kept.
    pub fn note_not_applied(&self, index: u64, admission: Admission) {
        let mut map = lock(&self.not_applied);
        map.insert(index, admission);
        while map.len() > NOT_APPLIED_KEPT {
            map.pop_first();
        }
    }

    /// Why the entry at `index` was not applied on this replica, if it was not and is recent.
    pub fn not_applied_at(&self, index: u64) -> Option<Admission> {
        lock(&self.not_applied).get(&index).copied()
    }

    /// True while this replica's log may hold a layer control entry it has not applied. Until
    /// it has, its layer state may be behind its log (a promote, an enforce, a rotation another
    /// leader committed): an adapter appends no proposal then, so that no cleartext can land above
    /// an enforce entry and nothing is sealed under a key an unapplied entry rotates away.
    pub fn control_pending(&self) -> bool {
        self.control_hint.load(SeqCst) > self.applied_through.load(SeqCst)
    }

    /// Records the snapshot this replica now keeps (it built or installed one), for
    /// [`retained_snapshot`](Self::retained_snapshot). An older snapshot than the one recorded
    /// is ignored.
    pub fn record_retained_snapshot(&self, snapshot: RetainedSnapshot) {
        let mut retained = lock(&self.retained);
        if !retained.is_some_and(|r| r.last_index > snapshot.last_index) {
            *retained = Some(snapshot);
        }
    }

    /// The snapshot this replica keeps, as last recorded: its index and the key its body is
    /// sealed under. What goes into its [`Retention`](crate::lifecycle::Retention) report.
    pub fn retained_snapshot(&self) -> Option<RetainedSnapshot> {
        *lock(&self.retained)
    }

    /// Keys this replica may still seal snapshots under besides its active key: those of
    /// snapshot builds in progress ([`LayerState::capture_for_snapshot`](crate::LayerState::capture_for_snapshot)).
    /// Adapters add them to their [`Retention`](crate::lifecycle::Retention) report.
    pub fn keys_in_use(&self) -> Vec<KeyId> {
        lock(&self.claims).keys().copied().collect()
    }

    pub(crate) fn claim(&self, key: KeyId) {
        *lock(&self.claims).entry(key).or_default() += 1;
    }

    pub(crate) fn release(&self, key: KeyId) {
        let mut claims = lock(&self.claims);
        if let Some(n) = claims.get_mut(&key) {
            *n -= 1;
            if *n == 0 {
                claims.remove(&key);
            }
        }
    }
}
