//! The proof needed before destroying a key: no replica still retains an entry or a snapshot
//! sealed under it (`DESIGN.md` §10.11).

use std::fmt;

use crate::ids::KeyId;
use crate::keyring::KeyState;
use crate::layer_state::{LayerKey, LayerState};
use crate::local::RetainedSnapshot;

/// What one replica still stores that may hold entries sealed under a key: reported by each
/// replica (the adapters' `retention()`), gathered by the lifecycle driver's
/// [`ControlPlane::retention_reports`](crate::lifecycle::ControlPlane::retention_reports), checked
/// by [`LayerState::check_destroy`](crate::LayerState::check_destroy).
///
/// `N` is the engine's node id (`u64` on raft-rs, `C::NodeId` on openraft). With the `serde`
/// feature a report is `Serialize` / `Deserialize`, so it can travel over a user's own RPC.
#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[non_exhaustive]
pub struct Retention<N> {
    /// The replica, as the engine names it.
    pub replica: N,
    /// The lowest log index still in its log: everything below was compacted (purged).
    pub first_log_index: u64,
    /// The snapshot it retains, if any.
    pub snapshot: Option<RetainedSnapshot>,
    /// The key this replica seals new proposals under, as its applied layer state says.
    pub active_key: Option<KeyId>,
    /// Keys of envelopes this replica sealed that are on their way to the log (proposals
    /// submitted and not yet answered by the engine), and of its snapshot builds in progress.
    pub in_flight: Vec<KeyId>,
}

impl<N> Retention<N> {
    /// A replica's report: its log and snapshot. Add what it may still seal under with
    /// [`with_sealing`](Self::with_sealing) when its proposals can be in flight between sealing
    /// and the log.
    pub fn new(replica: N, first_log_index: u64, snapshot: Option<RetainedSnapshot>) -> Self {
        Self { replica, first_log_index, snapshot, active_key: None, in_flight: Vec::new() }
    }

    /// Adds the key the replica seals under and the keys of its envelopes in flight.
    pub fn with_sealing(mut self, active_key: Option<KeyId>, in_flight: Vec<KeyId>) -> Self {
        self.active_key = active_key;
        self.in_flight = in_flight;
        self
    }
}

/// Why a key may not be destroyed yet. Names the replica (`N`, the engine's node id) and what
/// it still retains.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DestroyRefused<N: fmt::Debug + fmt::Display> {
    /// The key was never installed.
    #[error("{0} was never installed")]
    UnknownKey(KeyId),
    /// The key seals new entries: rotate to a new key first.
    #[error("{0} is the active key: rotate to a new key first")]
    ActiveKey(KeyId),
    /// A member sent no report, so nothing is known about what it retains.
    #[error("replica {replica} has not reported what it retains")]
    NoReport {
        /// The member.
        replica: N,
    },
    /// A replica still seals under the key (it has not applied the rotation away from it), or
    /// has envelopes sealed under it on their way to the log.
    #[error("replica {replica} may still append entries sealed under {key_id}: wait until it applied the rotation")]
    StillSealing {
        /// The replica.
        replica: N,
        /// The key.
        key_id: KeyId,
    },
    /// A replica's log still holds entries sealed under the key.
    #[error(
        "replica {replica} still holds entries sealed under {key_id} in its log (first retained index \
         {first_log_index}, last entry sealed under the key at {last_sealed_index}): compact past it first"
    )]
    InLog {
        /// The replica.
        replica: N,
        /// The key.
        key_id: KeyId,
        /// The lowest index still in its log.
        first_log_index: u64,
        /// The last entry sealed under the key.
        last_sealed_index: u64,
    },
    /// A replica retains a snapshot sealed under the key.
    #[error("replica {replica} retains a snapshot at index {snapshot_index} sealed under {key_id}: take a new snapshot first")]
    InSnapshot {
        /// The replica.
        replica: N,
        /// The key.
        key_id: KeyId,
        /// The snapshot's last index.
        snapshot_index: u64,
    },
}

/// The destroy proof over one key's replicated record (`None`: never installed); see
/// [`LayerState::check_destroy`](crate::LayerState::check_destroy).
fn check_destroy<N>(
    key_id: KeyId,
    key: Option<&LayerKey>,
    members: &[N],
    reports: &[Retention<N>],
) -> Result<(), DestroyRefused<N>>
where
    N: Clone + PartialEq + fmt::Debug + fmt::Display,
{
    let key = key.ok_or(DestroyRefused::UnknownKey(key_id))?;
    match key.state {
        KeyState::Destroyed => return Ok(()),
        KeyState::Active => return Err(DestroyRefused::ActiveKey(key_id)),
        KeyState::DecryptOnly => {}
    }
    for member in members {
        let report = reports
            .iter()
            .find(|r| &r.replica == member)
            .ok_or_else(|| DestroyRefused::NoReport { replica: member.clone() })?;
        if report.active_key == Some(key_id) || report.in_flight.contains(&key_id) {
            return Err(DestroyRefused::StillSealing { replica: member.clone(), key_id });
        }
        if let Some(last) = key.last_sealed_index.filter(|&last| report.first_log_index <= last) {
            return Err(DestroyRefused::InLog {
                replica: member.clone(),
                key_id,
                first_log_index: report.first_log_index,
                last_sealed_index: last,
            });
        }
        if let Some(snapshot) = report.snapshot.filter(|s| s.sealed_under == Some(key_id)) {
            return Err(DestroyRefused::InSnapshot {
                replica: member.clone(),
                key_id,
                snapshot_index: snapshot.last_index,
            });
        }
    }
    Ok(())
}

impl LayerState {
    /// The proof needed before proposing `DestroyKey { key_id }`: every member in `members` has
    /// reported in `reports`, none may still append an entry sealed under the key (its active key
    /// is another, no envelope under the key in flight: with the adapters' refusal to submit
    /// under an inactive key, nothing under it can land later), and none retains an entry sealed
    /// under the key in its log (its first retained index is above the last entry sealed under
    /// the key, [`LayerKey::last_sealed_index`](crate::lifecycle::LayerKey::last_sealed_index)) or a snapshot sealed under it. The active key is
    /// never destroyed; a key already destroyed passes (destroying it again changes nothing).
    ///
    /// Call it on the leader after its applied index has caught up with its log and no proposal
    /// sealed under the key is in flight ([`Lifecycle::destroy_key`](crate::lifecycle::Lifecycle::destroy_key)
    /// commits a barrier first), so that `last_sealed_index` is final. The install entry and
    /// older snapshots still hold a copy of the key wrapped under its KEK until they are
    /// compacted (or the KEK is retired).
    ///
    /// # Errors
    /// The first [`DestroyRefused`] found, naming the replica.
    pub fn check_destroy<N>(
        &self,
        key_id: KeyId,
        members: &[N],
        reports: &[Retention<N>],
    ) -> Result<(), DestroyRefused<N>>
    where
        N: Clone + PartialEq + fmt::Debug + fmt::Display,
    {
        check_destroy(key_id, self.key(key_id).as_ref(), members, reports)
    }
}
