//! The key lifecycle, written once for every engine: switch encryption on, rotate, retire and
//! destroy keys through layer control entries in the Raft log.
//!
//! [`Lifecycle`] owns the algorithm ("what to do next"); each engine implements the small
//! [`ControlPlane`] trait ("how to propose, how to wait"). Both adapters drive their admin API
//! through it, so the same inputs give the same outcome on openraft and raft-rs; a user's own
//! engine, or a deployment whose nodes live in separate processes, implements [`ControlPlane`]
//! over its own RPC (every value that crosses it is plain data; with the `serde` feature the
//! reports are serializable).
//!
//! | operation | entries proposed | outcome on every replica, at the entry's index |
//! |---|---|---|
//! | [`start_sealing`](Lifecycle::start_sealing) | install, promote | a new key active: every node seals, nothing enforced |
//! | [`enable_encryption`](Lifecycle::enable_encryption) | install, promote, (drain), enforce | a new key active; cutover = the enforce entry's index |
//! | [`rotate_key`](Lifecycle::rotate_key) | install, promote | the new key active, the previous one decrypt-only |
//! | [`retire_key`](Lifecycle::retire_key) | retire | the key decrypt-only (only the active key changes; refused under a cutover) |
//! | [`destroy_key`](Lifecycle::destroy_key) | barrier, destroy | the key's material gone; envelopes under it no longer open |
//! | [`rotate_if_due`](Lifecycle::rotate_if_due) | install, promote, when the budget runs low | as `rotate_key` |
//!
//! Every command is checked before anything is proposed
//! ([`LayerState::check_command`](crate::LayerState::check_command)): an entry that could not
//! apply would halt every replica, so it is refused instead ([`LifecycleError::Refused`]).

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use crate::apply_error::ControlError;
use crate::control::{CommandKind, ControlCommand};
use crate::errors::SealError;
use crate::ids::{Algorithm, KeyId, ProposalId};
use crate::layer_state::LayerState;
use crate::names::KekId;
use crate::provider::KeyProvider;

pub use crate::integrity::{CheckpointPolicy, IntegrityState, DIGEST_HISTORY, REPLAY_HORIZON, REPLAY_WINDOW};
pub use crate::keyring::{KeyState, KeyStats, SealBudget};
pub use crate::layer_state::{ControlOutcome, EncryptionStatus, LayerKey, LayerSnapshot, SnapshotCapture};
pub use crate::local::{CheckpointResults, NodeLocal, RetainedSnapshot};
pub use crate::retention::{DestroyRefused, Retention};

/// The engine-facing half of the key lifecycle: what [`Lifecycle`] needs from one engine to run
/// an admin command on the node it is given (normally the leader).
///
/// Several methods, unlike the one-method role traits: together they are the engine's side of
/// one protocol, and a [`ControlPlane`] is implemented once per engine integration. Each is
/// implementable over a user's own RPC between processes: nothing but ids, indexes, bytes and
/// [`Retention`] reports crosses it.
///
/// Every wait is bounded by the implementation (its own timeouts) and reported as
/// [`Error`](Self::Error); [`Lifecycle`] itself never sleeps or polls.
#[async_trait::async_trait]
pub trait ControlPlane: Send + Sync {
    /// The engine's node id, naming replicas in [`Retention`] reports and [`DestroyRefused`].
    type NodeId: Clone + PartialEq + fmt::Debug + fmt::Display + Send + Sync;
    /// The engine's error (not the leader, timed out, stopped, ...).
    type Error: std::error::Error + Send + Sync + 'static;

    /// The layer state of the node commands run on. It must be that node's own, as applied by
    /// its state machine.
    fn layer_state(&self) -> &LayerState;

    /// Confirms that this node leads and waits until it has applied every entry committed before
    /// (so [`layer_state`](Self::layer_state) is current: new key ids are taken from it, commands
    /// are checked against it). openraft: `Raft::ensure_linearizable`; raft-rs: the leader has
    /// committed an entry of its term and applied up to its commit index.
    async fn catch_up(&self) -> Result<(), Self::Error>;

    /// Proposes the layer control entry `entry` (made by [`Lifecycle`], sealed when a key is
    /// active, with proposal id `id`) through this node and waits until this node has applied
    /// it. Returns its log index.
    async fn propose_control(&self, id: ProposalId, entry: Vec<u8>) -> Result<u64, Self::Error>;

    /// Switch-on's drain: waits until every node that accepts client writes has applied at least
    /// `applied_through` (so it seals: the promote is at or below it) and has no cleartext
    /// proposal left that it prepared before and the engine has not answered for. A node whose
    /// engine has stopped (halted) may be skipped: it appends nothing. The enforce entry is
    /// proposed only after this returns, which is what keeps cleartext from landing above the
    /// cutover on engines where a proposal can be prepared in the clear and appended later
    /// (`DESIGN.md` §10.8).
    async fn drain_cleartext(&self, applied_through: u64) -> Result<(), Self::Error>;

    /// Every member of the current configuration (voters and learners) and the [`Retention`]
    /// report each gave, asked after the destroy's barrier applied on this node. A member
    /// that does not answer is left out of `reports` (the destroy is then refused, naming it).
    async fn retention_reports(&self) -> Result<MemberReports<Self::NodeId>, Self::Error>;
}

/// The members of a configuration and the reports they gave
/// ([`ControlPlane::retention_reports`]).
#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[non_exhaustive]
pub struct MemberReports<N> {
    /// Every member (voters and learners).
    pub members: Vec<N>,
    /// The reports received, any order.
    pub reports: Vec<Retention<N>>,
}

impl<N> MemberReports<N> {
    /// Members and their reports.
    pub fn new(members: Vec<N>, reports: Vec<Retention<N>>) -> Self {
        Self { members, reports }
    }
}

/// What [`Lifecycle::enable_encryption`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Enabled {
    /// The active key.
    pub key_id: KeyId,
    /// The cutover: the index of the enforce entry.
    pub cutover: u64,
    /// False when encryption was already enforced and nothing was proposed.
    pub newly_enforced: bool,
}

/// What [`Lifecycle::retire_key`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Retired {
    /// The retire entry at `index` made the key decrypt-only on every replica.
    At {
        /// The retire entry's index.
        index: u64,
    },
    /// The key was already decrypt-only (a rotation retired it): nothing was proposed.
    AlreadyDecryptOnly,
}

/// What [`Lifecycle::destroy_key`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Destroyed {
    /// The destroy entry at `index` dropped the key on every replica.
    At {
        /// The destroy entry's index.
        index: u64,
    },
    /// The key was already destroyed: nothing was proposed.
    AlreadyDestroyed,
}

/// What automatic rotation rotates with ([`Lifecycle::rotate_if_due`]).
#[derive(Clone)]
#[non_exhaustive]
pub struct AutoRotation {
    /// Wraps the new data keys.
    pub provider: Arc<dyn KeyProvider>,
    /// The KEK to wrap under (the provider's).
    pub kek_id: KekId,
    /// The new keys' algorithm.
    pub algorithm: Algorithm,
}

impl AutoRotation {
    /// Rotation with `provider`, under its own KEK, to `algorithm` keys.
    pub fn new(provider: Arc<dyn KeyProvider>, algorithm: Algorithm) -> Self {
        let kek_id = provider.kek_id().clone();
        Self { provider, kek_id, algorithm }
    }
}

impl fmt::Debug for AutoRotation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AutoRotation")
            .field("kek_id", &self.kek_id)
            .field("algorithm", &self.algorithm)
            .finish()
    }
}

/// An admin command failed. Nothing unsafe happened: the entries applied so far are in the log
/// and applied identically everywhere, and the command can be run again (enable resumes where it
/// stopped). Never holds key bytes.
///
/// `E` is the [`ControlPlane`]'s error, `N` its node id.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LifecycleError<E, N: fmt::Debug + fmt::Display> {
    /// The engine failed or refused (not the leader, a timeout, the node stopped): see `E`.
    #[error(transparent)]
    Engine(E),
    /// Another admin command is running on this node; commands run one at a time (two installs
    /// of one key id would halt every replica). Retry when it finished.
    #[error("another admin command is running on this node")]
    Busy,
    /// The provider wraps under another KEK than the one asked for.
    #[error("the key provider wraps under KEK {provider}, not {requested}")]
    KekMismatch {
        /// The KEK asked for.
        requested: KekId,
        /// The provider's KEK.
        provider: KekId,
    },
    /// The command would halt every replica or leave nothing able to seal
    /// ([`LayerState::check_command`](crate::LayerState::check_command)): refused, nothing
    /// proposed. [`ControlError::UnknownKey`], [`ControlError::KeyDestroyed`],
    /// [`ControlError::ActiveKeyNeeded`] (with a cutover in force the active key is neither
    /// retired nor destroyed: rotate first), [`ControlError::ConflictingInstall`].
    #[error("refused before proposing: {0}")]
    Refused(#[source] ControlError),
    /// The install entry could not be made (the provider could not wrap the new key).
    #[error("could not make the install entry: {0}")]
    Install(#[source] ControlError),
    /// The control entry could not be sealed; nothing was proposed.
    #[error("could not seal the control entry: {0}")]
    Seal(#[source] SealError),
    /// The entry was applied but did not have the expected effect (an admin command on another
    /// node raced this one).
    #[error("the {command} entry at index {index} did not take effect")]
    NotApplied {
        /// The command.
        command: CommandKind,
        /// Its index.
        index: u64,
    },
    /// The destroy proof failed: a replica still retains entries or a snapshot sealed under the
    /// key, or did not report. Nothing was proposed; compact (or take a new snapshot) and retry.
    #[error("destroy refused: {0}")]
    DestroyRefused(#[source] DestroyRefused<N>),
}

impl<E, N: fmt::Debug + fmt::Display> LifecycleError<E, N> {
    /// The engine's error, when the engine failed.
    pub fn engine(&self) -> Option<&E> {
        match self {
            LifecycleError::Engine(e) => Some(e),
            _ => None,
        }
    }
}

/// The error type of [`Lifecycle`] over plane `P`.
pub type PlaneError<P> = LifecycleError<<P as ControlPlane>::Error, <P as ControlPlane>::NodeId>;

/// The key-lifecycle driver: runs admin commands on the node `P` is for, one at a time.
///
/// ```
/// use raft_envelope_core::lifecycle::{ControlPlane, Lifecycle, MemberReports, Retention};
/// use raft_envelope_core::provider::{FileKekProvider, KekId, KeyProvider};
/// use raft_envelope_core::{Algorithm, ClusterId, LayerState, ProposalId, SecretKey};
/// use std::sync::Mutex;
///
/// /// A one-node "engine": the log is a vector, applying is immediate.
/// struct OneNode { state: LayerState, log: Mutex<Vec<Vec<u8>>> }
///
/// #[raft_envelope_core::async_trait]
/// impl ControlPlane for OneNode {
///     type NodeId = u64;
///     type Error = std::convert::Infallible;
///     fn layer_state(&self) -> &LayerState { &self.state }
///     async fn catch_up(&self) -> Result<(), Self::Error> { Ok(()) }
///     async fn propose_control(&self, _id: ProposalId, entry: Vec<u8>) -> Result<u64, Self::Error> {
///         let mut log = self.log.lock().unwrap();
///         log.push(entry);
///         let index = log.len() as u64;
///         self.state.apply_control(index, &log[index as usize - 1]).expect("applies");
///         Ok(index)
///     }
///     async fn drain_cleartext(&self, _applied: u64) -> Result<(), Self::Error> { Ok(()) }
///     async fn retention_reports(&self) -> Result<MemberReports<u64>, Self::Error> {
///         Ok(MemberReports::new(vec![1], vec![Retention::new(1, u64::MAX, None)]))
///     }
/// }
///
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// let kek = FileKekProvider::from_key(KekId::new("kek-1")?, SecretKey::generate()?)?;
/// let node = OneNode { state: LayerState::new(ClusterId::new("orders")?), log: Mutex::default() };
/// let admin = Lifecycle::new(node);
/// let enabled = admin.enable_encryption(&kek, kek.kek_id(), Algorithm::Aes256Gcm).await?;
/// assert_eq!(enabled.cutover, 3); // install 1, promote 2, enforce 3
/// let second = admin.rotate_key(&kek, kek.kek_id(), Algorithm::Aes256Gcm).await?;
/// assert_eq!(admin.status().active_key, Some(second));
/// # Ok(()) }
/// # tokio::runtime::Builder::new_current_thread().build()?.block_on(demo()).map_err(|e| e.to_string())?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct Lifecycle<P> {
    plane: P,
    busy: AtomicBool,
}

/// Marks the driver busy for one command.
struct Serial<'a>(&'a AtomicBool);

impl Drop for Serial<'_> {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

impl<P: fmt::Debug> fmt::Debug for Lifecycle<P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Lifecycle")
            .field("plane", &self.plane)
            .field("busy", &self.busy.load(Ordering::Relaxed))
            .finish()
    }
}

impl<P: ControlPlane> Lifecycle<P> {
    /// A driver over `plane`.
    pub fn new(plane: P) -> Self {
        Self { plane, busy: AtomicBool::new(false) }
    }

    /// The plane.
    pub fn plane(&self) -> &P {
        &self.plane
    }

    /// The key state the node has applied: keys with their states, counts and budgets, the
    /// cutover, the active key. Local; the same on every replica at the same applied index.
    pub fn status(&self) -> EncryptionStatus {
        self.plane.layer_state().status()
    }

    fn serial(&self) -> Result<Serial<'_>, PlaneError<P>> {
        match self.busy.compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire) {
            Ok(_) => Ok(Serial(&self.busy)),
            Err(_) => Err(LifecycleError::Busy),
        }
    }

    /// Starts a command: this node runs no other, leads, and has applied everything committed.
    async fn begin(&self) -> Result<Serial<'_>, PlaneError<P>> {
        let serial = self.serial()?;
        self.plane.catch_up().await.map_err(LifecycleError::Engine)?;
        Ok(serial)
    }

    /// Checks `command`, seals it (when a key is active) and proposes it; returns its index once
    /// this node applied it.
    async fn propose(&self, command: &ControlCommand) -> Result<u64, PlaneError<P>> {
        let state = self.plane.layer_state();
        state.check_command(command).map_err(LifecycleError::Refused)?;
        let id = state.next_control_id();
        let entry = state.encode_entry(id, command).map_err(LifecycleError::Seal)?;
        let index = self.plane.propose_control(id, entry).await.map_err(LifecycleError::Engine)?;
        tracing::debug!(
            index,
            command = command.name(),
            key_id = command.key_id().map(|k| k.0),
            "layer control entry proposed and applied"
        );
        Ok(index)
    }

    async fn install_and_promote(
        &self,
        provider: &dyn KeyProvider,
        kek_id: &KekId,
        algorithm: Algorithm,
    ) -> Result<KeyId, PlaneError<P>> {
        if provider.kek_id() != kek_id {
            return Err(LifecycleError::KekMismatch {
                requested: kek_id.clone(),
                provider: provider.kek_id().clone(),
            });
        }
        let state = self.plane.layer_state();
        let key_id = state.next_key_id();
        let install =
            state.generate_install(key_id, algorithm, provider).await.map_err(LifecycleError::Install)?;
        let index = self.propose(&install).await?;
        if state.key(key_id).is_none() {
            return Err(LifecycleError::NotApplied { command: CommandKind::InstallKey, index });
        }
        let index = self.propose(&ControlCommand::PromoteKey { key_id }).await?;
        if state.active_key() != Some(key_id) {
            return Err(LifecycleError::NotApplied { command: CommandKind::PromoteKey, index });
        }
        Ok(key_id)
    }

    /// Switches encryption on through the log: install a new data key wrapped under `kek_id`
    /// (every replica unwraps it with its own provider before it applies the entry), promote it
    /// (every node seals new proposals once it applied the promote), drain
    /// ([`ControlPlane::drain_cleartext`]), then commit the enforce entry: its index is the
    /// cutover on every replica.
    ///
    /// Resumable and idempotent: when a key is already active, install and promote are skipped;
    /// when a cutover is already in force, nothing is proposed
    /// ([`Enabled::newly_enforced`] is false).
    ///
    /// Why no cleartext lands above the cutover (`DESIGN.md` §10.8, §10.9): an entry committed
    /// above it follows the enforce entry in the committed log, so (Log Matching) the leader
    /// that created it already held the enforce entry, which was created after every proposer
    /// sealed and drained; and a node appends nothing while its log holds a layer control entry
    /// it has not applied ([`LayerState::check_append`](crate::LayerState::check_append)).
    ///
    /// # Errors
    /// [`LifecycleError`]; run it again to resume.
    pub async fn enable_encryption(
        &self,
        provider: &dyn KeyProvider,
        kek_id: &KekId,
        algorithm: Algorithm,
    ) -> Result<Enabled, PlaneError<P>> {
        let _serial = self.begin().await?;
        let state = self.plane.layer_state();
        if let (Some(cutover), Some(key_id)) = (state.cutover(), state.active_key()) {
            return Ok(Enabled { key_id, cutover, newly_enforced: false });
        }
        let key_id = match state.active_key() {
            Some(active) => active,
            None => self.install_and_promote(provider, kek_id, algorithm).await?,
        };
        let promoted_through = state.applied_index().unwrap_or(0);
        self.plane.drain_cleartext(promoted_through).await.map_err(LifecycleError::Engine)?;
        let index = self.propose(&ControlCommand::Enforce).await?;
        let cutover =
            state.cutover().ok_or(LifecycleError::NotApplied { command: CommandKind::Enforce, index })?;
        tracing::info!(cutover, key_id = key_id.0, "encryption enforced through the log");
        Ok(Enabled { key_id, cutover, newly_enforced: true })
    }

    /// The first half of a switch-on, on its own: installs a new data key wrapped under `kek_id`
    /// and promotes it, so every node seals its new proposals from the promote entry on, but
    /// enforces nothing (cleartext still applies everywhere). A staged rollout seals first,
    /// watches, then calls [`enable_encryption`](Self::enable_encryption) to enforce; until then
    /// [`retire_key`](Self::retire_key) on the active key goes back to cleartext proposals.
    /// Returns the active key (the existing one when a key is already active: nothing proposed).
    ///
    /// # Errors
    /// [`LifecycleError`].
    pub async fn start_sealing(
        &self,
        provider: &dyn KeyProvider,
        kek_id: &KekId,
        algorithm: Algorithm,
    ) -> Result<KeyId, PlaneError<P>> {
        let _serial = self.begin().await?;
        if let Some(active) = self.plane.layer_state().active_key() {
            return Ok(active);
        }
        let key_id = self.install_and_promote(provider, kek_id, algorithm).await?;
        tracing::info!(key_id = key_id.0, "every node seals new proposals; nothing enforced yet");
        Ok(key_id)
    }

    /// Rotates the data key: installs a new key wrapped under `kek_id` and promotes it; the
    /// previous active key becomes decrypt-only in the same entry (it still opens everything
    /// sealed under it). Returns the new key's id.
    ///
    /// # Errors
    /// [`LifecycleError`].
    pub async fn rotate_key(
        &self,
        provider: &dyn KeyProvider,
        kek_id: &KekId,
        algorithm: Algorithm,
    ) -> Result<KeyId, PlaneError<P>> {
        let _serial = self.begin().await?;
        let key_id = self.install_and_promote(provider, kek_id, algorithm).await?;
        tracing::info!(key_id = key_id.0, "data key rotated through the log");
        Ok(key_id)
    }

    /// Rotates when the active key's sealing budget runs low
    /// ([`LayerState::rotation_due`](crate::LayerState::rotation_due)); returns the new key's
    /// id when it rotated. Call it periodically on the leader (an adapter's automatic rotation
    /// calls it after writes); while the budget lasts it proposes nothing.
    ///
    /// # Errors
    /// As [`rotate_key`](Self::rotate_key).
    pub async fn rotate_if_due(&self, rotation: &AutoRotation) -> Result<Option<KeyId>, PlaneError<P>> {
        if self.plane.layer_state().rotation_due().is_none() {
            return Ok(None);
        }
        let _serial = self.begin().await?;
        // Another leader may have rotated before this node caught up.
        if self.plane.layer_state().rotation_due().is_none() {
            return Ok(None);
        }
        let key_id = self
            .install_and_promote(rotation.provider.as_ref(), &rotation.kek_id, rotation.algorithm)
            .await?;
        tracing::info!(key_id = key_id.0, "data key rotated automatically: the sealing budget ran low");
        Ok(Some(key_id))
    }

    /// Retires `key_id` to decrypt-only on every replica at the retire entry's index: it opens
    /// everything sealed under it and seals nothing more.
    ///
    /// Only the active key changes: with no cutover in force, retiring it stops sealing (new
    /// proposals go out in the clear again, as before switch-on; every envelope still opens) —
    /// the way back from a switch-on that was not enforced. With a cutover in force the active
    /// key is refused ([`ControlError::ActiveKeyNeeded`]: nothing could seal the payloads and
    /// control entries above the cutover): rotate instead, which retires the previous key in the
    /// promote entry. A key that is already decrypt-only needs nothing
    /// ([`Retired::AlreadyDecryptOnly`], nothing proposed).
    ///
    /// # Errors
    /// [`LifecycleError::Refused`] (unknown, destroyed, or active under a cutover), or the
    /// engine's error.
    pub async fn retire_key(&self, key_id: KeyId) -> Result<Retired, PlaneError<P>> {
        let _serial = self.begin().await?;
        let state = self.plane.layer_state();
        match state.key(key_id).map(|k| k.state) {
            None => return Err(LifecycleError::Refused(ControlError::UnknownKey(key_id))),
            Some(KeyState::Destroyed) => {
                return Err(LifecycleError::Refused(ControlError::KeyDestroyed(key_id)))
            }
            Some(KeyState::DecryptOnly) => return Ok(Retired::AlreadyDecryptOnly),
            Some(KeyState::Active) => {}
        }
        let index = self.propose(&ControlCommand::RetireKey { key_id }).await?;
        if state.key(key_id).map(|k| k.state) != Some(KeyState::DecryptOnly) {
            return Err(LifecycleError::NotApplied { command: CommandKind::RetireKey, index });
        }
        tracing::info!(key_id = key_id.0, index, "data key retired through the log");
        Ok(Retired::At { index })
    }

    /// Destroys `key_id` once it is proven that nothing retained still needs it: every replica
    /// drops its material when it applies the entry, and envelopes under it no longer open
    /// (`destroyed_key`). The active key is refused (rotate first); a destroyed key proposes
    /// nothing ([`Destroyed::AlreadyDestroyed`]).
    ///
    /// The proof, before anything is proposed: a barrier control entry is committed and applied
    /// on this node, so every envelope under the key that a member
    /// answered for is counted in [`LayerKey::last_sealed_index`]; then every member reports
    /// what it retains ([`ControlPlane::retention_reports`]) and
    /// [`LayerState::check_destroy`](crate::LayerState::check_destroy) passes: no member still
    /// seals under the key or has an envelope under it in flight, no log holds an entry at or
    /// below the key's last sealed index, no retained snapshot is sealed under it.
    ///
    /// # Errors
    /// [`LifecycleError::DestroyRefused`] naming the replica, [`LifecycleError::Refused`]
    /// (unknown or active key), or the engine's error.
    pub async fn destroy_key(&self, key_id: KeyId) -> Result<Destroyed, PlaneError<P>> {
        let _serial = self.begin().await?;
        let state = self.plane.layer_state();
        match state.key(key_id).map(|k| k.state) {
            None => return Err(LifecycleError::Refused(ControlError::UnknownKey(key_id))),
            Some(KeyState::Destroyed) => return Ok(Destroyed::AlreadyDestroyed),
            Some(KeyState::Active) => {
                return Err(LifecycleError::DestroyRefused(DestroyRefused::ActiveKey(key_id)))
            }
            Some(KeyState::DecryptOnly) => {}
        }
        // A sealed barrier: once it applied here, everything appended before it is counted.
        self.propose(&ControlCommand::Barrier).await?;
        let reports = self.plane.retention_reports().await.map_err(LifecycleError::Engine)?;
        state.check_destroy(key_id, &reports.members, &reports.reports).map_err(|reason| {
            tracing::warn!(key_id = key_id.0, "destroy refused: {reason}");
            LifecycleError::DestroyRefused(reason)
        })?;
        let index = self.propose(&ControlCommand::DestroyKey { key_id }).await?;
        if state.key(key_id).map(|k| k.state) != Some(KeyState::Destroyed) {
            return Err(LifecycleError::NotApplied { command: CommandKind::DestroyKey, index });
        }
        tracing::info!(key_id = key_id.0, index, "data key destroyed through the log");
        Ok(Destroyed::At { index })
    }
}
