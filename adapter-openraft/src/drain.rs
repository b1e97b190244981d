//! Waiting for cleartext proposals to be answered by Raft (switch-on's drain) and counting
//! envelopes in flight (the destroy proof), without polling and without needing a runtime to
//! drop.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use openraft::type_config::TypeConfigExt;
use openraft::{Entry, RaftTypeConfig};
use raft_envelope_core::KeyId;

use crate::config::SealedRaft;

/// The time from now until `deadline`, zero once it passed.
pub(crate) fn time_left<C: RaftTypeConfig>(
    deadline: <C::AsyncRuntime as openraft::AsyncRuntime>::Instant,
) -> Duration {
    let now = C::now();
    if deadline > now {
        deadline - now
    } else {
        Duration::ZERO
    }
}

/// Counts cleartext proposals between the moment they were prepared and the moment Raft has
/// answered for them: switch-on waits until none is left (see [`EnvelopeRaft::seal_new_proposals`]).
#[derive(Default)]
pub(crate) struct Drain {
    /// Readers: proposers while they prepare. Writer: switch-on, to order itself after every
    /// prepare that may have read the old (cleartext) setting.
    pub(crate) switch: RwLock<()>,
    pub(crate) cleartext_in_flight: AtomicUsize,
    /// True when the cleartext-above-cutover guard is switched off (`Default`: on).
    pub(crate) cleartext_guard_off: AtomicBool,
    /// Envelopes being submitted, by key: destroying a key waits until none sealed under it is
    /// left between `submit` and Raft's answer.
    pub(crate) sealed_in_flight: std::sync::Mutex<std::collections::BTreeMap<KeyId, usize>>,
    /// Woken whenever a cleartext proposal stops being counted.
    pub(crate) released: tokio::sync::Notify,
    /// Cleartext proposals whose caller stopped waiting before Raft answered: still counted
    /// until a drain has made sure RaftCore handled them (see `UntilHandled`).
    pub(crate) abandoned: std::sync::Mutex<Vec<Arc<InFlight>>>,
}

impl Drain {
    pub(crate) fn sealed_in_flight(&self, key_id: KeyId) -> usize {
        let map = self.sealed_in_flight.lock().unwrap_or_else(PoisonError::into_inner);
        map.get(&key_id).copied().unwrap_or(0)
    }
}

/// Counts one envelope under its key while `submit` runs.
pub(crate) struct SealedInFlight<'a>(&'a Drain, KeyId);

impl<'a> SealedInFlight<'a> {
    pub(crate) fn new(drain: &'a Drain, key_id: KeyId) -> Self {
        *drain.sealed_in_flight.lock().unwrap_or_else(PoisonError::into_inner).entry(key_id).or_default() +=
            1;
        Self(drain, key_id)
    }
}

impl Drop for SealedInFlight<'_> {
    fn drop(&mut self) {
        let mut map = self.0.sealed_in_flight.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(n) = map.get_mut(&self.1) {
            *n -= 1;
            if *n == 0 {
                map.remove(&self.1);
            }
        }
    }
}

/// Keeps a cleartext proposal counted while `submit` waits for Raft's answer. When the caller
/// stops waiting (the `submit` future is dropped) before the answer, the proposal stays counted,
/// parked in the drain's `abandoned` list: the next drain releases it once RaftCore has handled
/// every API message queued before (`with_raft_state` travels through the same FIFO channel as
/// the write, so when it returns the write was appended or refused). Dropping needs no runtime.
pub(crate) struct UntilHandled<'a> {
    pub(crate) drain: &'a Drain,
    pub(crate) token: Option<Arc<InFlight>>,
}

impl Drop for UntilHandled<'_> {
    fn drop(&mut self) {
        if let Some(token) = self.token.take() {
            self.drain.abandoned.lock().unwrap_or_else(PoisonError::into_inner).push(token);
        }
    }
}

/// Waits until no cleartext proposal prepared through `drain` is still waiting for Raft: woken
/// by each release, never polling. Proposals whose caller stopped waiting are released once
/// RaftCore has handled them.
pub(crate) async fn drain_cleartext<C: RaftTypeConfig<Entry = Entry<C>>>(
    raft: &SealedRaft<C>,
    drain: &Drain,
    timeout: Duration,
) -> Result<(), DrainTimeout> {
    use openraft::type_config::TypeConfigExt;
    use openraft::Instant as _;
    // Orders this wait after every prepare that read the wrapper before it changed.
    drop(drain.switch.write().unwrap_or_else(PoisonError::into_inner));
    let start = C::now();
    let deadline = start + timeout;
    loop {
        let released = drain.released.notified();
        let mut released = std::pin::pin!(released);
        // Registered before the count is read, so a release in between is not missed.
        released.as_mut().enable();
        let in_flight = drain.cleartext_in_flight.load(Ordering::SeqCst);
        if in_flight == 0 {
            return Ok(());
        }
        let abandoned = std::mem::take(&mut *drain.abandoned.lock().unwrap_or_else(PoisonError::into_inner));
        if !abandoned.is_empty() {
            // Every write queued before this call has been appended or refused when it returns.
            let _ = raft.with_raft_state(|_| ()).await;
            drop(abandoned);
            continue;
        }
        let left = time_left::<C>(deadline);
        if left.is_zero() || C::timeout(left, released).await.is_err() {
            let in_flight = drain.cleartext_in_flight.load(Ordering::SeqCst);
            if in_flight == 0 {
                return Ok(());
            }
            return Err(DrainTimeout { in_flight, waited: start.elapsed() });
        }
    }
}

/// Held by a cleartext proposal until Raft has answered for it (or it is dropped unsubmitted).
pub(crate) struct InFlight(Arc<Drain>);

impl InFlight {
    pub(crate) fn new(drain: &Arc<Drain>) -> Arc<Self> {
        drain.cleartext_in_flight.fetch_add(1, Ordering::SeqCst);
        Arc::new(Self(drain.clone()))
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.cleartext_in_flight.fetch_sub(1, Ordering::SeqCst);
        self.0.released.notify_waiters();
    }
}

/// The switch-on drain did not finish in time: cleartext proposals prepared before sealing was
/// switched on are still waiting for Raft's answer. Sealing stays on; retry the drain.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("{in_flight} cleartext proposals still in flight after {waited:?}")]
pub struct DrainTimeout {
    /// Cleartext proposals still waiting.
    pub in_flight: usize,
    /// How long the drain waited.
    pub waited: Duration,
}
