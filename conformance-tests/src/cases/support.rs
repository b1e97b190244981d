//! What the cases share: the key fixture, the per-case environment and the fail-closed assertions.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

use raft_envelope_core::{
    error::FailureReason, lifecycle::SealBudget, wire::KEY_LEN, ApplyGate, ClusterId, Cutover, CutoverSource,
    EnvelopeCipher, EnvelopeLayer, FatalApplyError, KeyId, Keyring, SecretKey,
};

use crate::harness::{AppliedPayload, Capabilities, Cluster, ClusterBuilder, NodeId, Response, StoredEntry};
use crate::Outcome;

/// The data key every replica holds at the start of a case.
pub(crate) const PRIMARY: KeyId = KeyId(101);
/// The key rotated to by rotation cases.
pub(crate) const ROTATED: KeyId = KeyId(102);
/// A key no replica ever needs: a keyring holding only this one lacks [`PRIMARY`].
pub(crate) const DECOY: KeyId = KeyId(999);

/// Number of replicas in every case's cluster.
pub(crate) const REPLICAS: usize = 3;

/// Returns early from a case with [`Outcome::Skipped`] when the harness lacks a capability.
macro_rules! require {
    ($caps:expr, $($cap:ident),+) => {
        $(
            if !$caps.$cap {
                return $crate::Outcome::Skipped(concat!("needs capability `", stringify!($cap), "`").into());
            }
        )+
    };
}
pub(crate) use require;

/// The state a key should be in, in a keyring built by [`Fixture::ring`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Role {
    Active,
    DecryptOnly,
    Destroyed,
}

/// Keys, cluster identity and cutover of one case. Key material is generated per case and kept
/// only here, so every replica's keyring can hold the same keys in separate instances (separate
/// nonce sequences, as separate processes would have).
pub(crate) struct Fixture {
    pub(crate) cluster_id: ClusterId,
    pub(crate) cutover: Arc<Cutover>,
    material: Mutex<BTreeMap<KeyId, [u8; KEY_LEN]>>,
    budget: Option<u64>,
}

impl fmt::Debug for Fixture {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Fixture").field("cluster_id", &self.cluster_id).finish_non_exhaustive()
    }
}

impl Fixture {
    pub(crate) fn new(budget: Option<u64>) -> Self {
        Self {
            cluster_id: ClusterId::new("raft-envelope-conformance").expect("short cluster id"),
            cutover: Arc::new(Cutover::inert()),
            material: Mutex::new(BTreeMap::new()),
            budget,
        }
    }

    /// The material of `id`, generated on first use.
    pub(crate) fn material(&self, id: KeyId) -> [u8; KEY_LEN] {
        let mut keys = self.material.lock().unwrap_or_else(PoisonError::into_inner);
        *keys.entry(id).or_insert_with(|| *SecretKey::generate().expect("random key").expose_secret())
    }

    /// A new keyring instance holding `keys` in the given states.
    pub(crate) fn ring(&self, keys: &[(KeyId, Role)]) -> Arc<Keyring> {
        let ring = Keyring::new();
        for (id, role) in keys {
            let budget = self.budget.map_or_else(SealBudget::default, SealBudget::new);
            let key = SecretKey::from_bytes(self.material(*id));
            ring.insert_with_budget(*id, raft_envelope_core::Algorithm::Aes256Gcm, key, budget)
                .expect("insert key");
            match role {
                Role::Active => ring.promote(*id).expect("promote"),
                Role::DecryptOnly => {}
                Role::Destroyed => ring.destroy(*id).expect("destroy"),
            }
        }
        Arc::new(ring)
    }

    /// A cipher for this case's cluster over `ring`.
    pub(crate) fn cipher(&self, ring: Arc<Keyring>) -> Arc<EnvelopeCipher> {
        Arc::new(EnvelopeCipher::new(self.cluster_id.clone(), ring))
    }

    /// A cipher over a new keyring with [`PRIMARY`] active: what every replica starts with.
    pub(crate) fn standard_cipher(&self) -> Arc<EnvelopeCipher> {
        self.cipher(self.ring(&[(PRIMARY, Role::Active)]))
    }
}

/// What one replica looks like from outside, for "nothing changed" comparisons.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct View {
    pub(crate) applied: u64,
    pub(crate) payloads: Vec<AppliedPayload>,
    pub(crate) halted: Option<(u64, FailureReason)>,
}

/// A replica that halted on a fresh sealed entry, which it stores but has not applied.
#[derive(Debug)]
pub(crate) struct HaltedFollower {
    pub(crate) node: NodeId,
    pub(crate) index: u64,
    pub(crate) payload: Vec<u8>,
    pub(crate) before: View,
}

/// Where an injected entry sits and who must halt on it.
#[derive(Debug)]
pub(crate) struct Injection {
    pub(crate) index: u64,
    pub(crate) nodes: Vec<(NodeId, View)>,
}

static PAYLOAD_SEQ: AtomicU64 = AtomicU64::new(0);

/// A unique recognisable plaintext: `conformance-plaintext-<tag>-<n>`.
pub(crate) fn payload(tag: &str) -> Vec<u8> {
    format!("conformance-plaintext-{tag}-{}", PAYLOAD_SEQ.fetch_add(1, Ordering::Relaxed)).into_bytes()
}

/// True when `needle` occurs in `haystack`.
pub(crate) fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && haystack.windows(needle.len()).any(|w| w == needle)
}

/// One case's cluster, fixture and per-replica layers.
pub(crate) struct Env<B: ClusterBuilder> {
    pub(crate) fx: Fixture,
    pub(crate) caps: Capabilities,
    pub(crate) timeout: Duration,
    pub(crate) nodes: Vec<NodeId>,
    ciphers: Vec<Option<Arc<EnvelopeCipher>>>,
    layers: Vec<Arc<EnvelopeLayer>>,
    sealing: AtomicBool,
    // Dropped before the guard.
    pub(crate) cluster: B::Cluster,
    _guard: B::Guard,
}

impl<B: ClusterBuilder> Env<B> {
    /// A cluster of [`REPLICAS`] replicas, each with its own keyring holding [`PRIMARY`], an
    /// unwrapper, no wrapper and an inert cutover.
    pub(crate) fn start(builder: &B) -> Self {
        Self::start_with(builder, None)
    }

    /// As [`start`](Self::start), every key with a sealing budget of `budget`.
    pub(crate) fn start_with(builder: &B, budget: Option<u64>) -> Self {
        tracing::info!("--- start a cluster of {REPLICAS} replicas (layer inert, unwrapper installed)");
        let fx = Fixture::new(budget);
        let ciphers: Vec<_> = (0..REPLICAS).map(|_| Some(fx.standard_cipher())).collect();
        let layers: Vec<_> = ciphers.iter().map(|c| Self::make_layer(&fx, c.as_ref(), true, false)).collect();
        let (cluster, guard) = builder.build(layers.clone()).expect("build the cluster");
        let nodes = cluster.nodes();
        assert_eq!(nodes.len(), REPLICAS, "the harness must start one replica per layer");
        let env = Self {
            fx,
            caps: builder.capabilities(),
            timeout: builder.wait_timeout(),
            nodes,
            ciphers,
            layers,
            sealing: AtomicBool::new(false),
            cluster,
            _guard: guard,
        };
        let last = env.last_index();
        env.wait_all(last);
        env
    }

    fn make_layer(
        fx: &Fixture,
        cipher: Option<&Arc<EnvelopeCipher>>,
        unwrapper: bool,
        sealing: bool,
    ) -> Arc<EnvelopeLayer> {
        let mut gate = ApplyGate::new(fx.cutover.clone());
        if let (true, Some(c)) = (unwrapper, cipher) {
            gate = gate.with_unwrapper(c.clone());
        }
        let layer = EnvelopeLayer::new(gate);
        if let (true, Some(c)) = (sealing, cipher) {
            layer.set_wrapper(Some(c.clone()));
        }
        Arc::new(layer)
    }

    fn pos(&self, node: NodeId) -> usize {
        self.nodes.iter().position(|n| *n == node).expect("known node")
    }

    /// The cipher `node` currently seals and opens with.
    pub(crate) fn cipher_of(&self, node: NodeId) -> Arc<EnvelopeCipher> {
        self.ciphers[self.pos(node)].clone().expect("node has a cipher")
    }

    /// The layer `node` currently runs with.
    pub(crate) fn layer_of(&self, node: NodeId) -> Arc<EnvelopeLayer> {
        self.layers[self.pos(node)].clone()
    }

    /// Every layer starts sealing with its own cipher.
    pub(crate) fn start_sealing(&self) {
        tracing::info!("--- every replica's layer starts sealing");
        self.sealing.store(true, Ordering::SeqCst);
        for (layer, cipher) in self.layers.iter().zip(&self.ciphers) {
            if let Some(c) = cipher {
                layer.set_wrapper(Some(c.clone()));
            }
        }
    }

    /// Every layer stops sealing.
    pub(crate) fn stop_sealing(&self) {
        tracing::info!("--- every replica's layer stops sealing");
        self.sealing.store(false, Ordering::SeqCst);
        for layer in &self.layers {
            layer.set_wrapper(None);
        }
    }

    /// Sets the cutover every replica's gate reads.
    pub(crate) fn set_cutover(&self, cutover: Option<u64>) {
        tracing::info!("--- cutover set to {cutover:?}");
        self.fx.cutover.set(cutover);
    }

    /// Starts sealing, then sets the cutover at [`Cluster::safe_cutover`]; returns it.
    pub(crate) fn switch_on(&self) -> u64 {
        self.start_sealing();
        let c = self.cluster.safe_cutover().expect("safe_cutover");
        self.set_cutover(Some(c));
        c
    }

    /// Restarts `node` with `cipher` (as unwrapper when `unwrapper`, and as wrapper while the
    /// case is sealing).
    pub(crate) fn restart(&mut self, node: NodeId, cipher: Option<Arc<EnvelopeCipher>>, unwrapper: bool) {
        tracing::info!(node, unwrapper, "--- restart node {node}");
        let layer =
            Self::make_layer(&self.fx, cipher.as_ref(), unwrapper, self.sealing.load(Ordering::SeqCst));
        let pos = self.pos(node);
        self.ciphers[pos] = cipher;
        self.layers[pos] = layer.clone();
        self.cluster.restart(node, layer).expect("restart");
    }

    pub(crate) fn leader(&self) -> NodeId {
        self.cluster.leader().expect("the cluster has a leader")
    }

    /// A replica that is not the leader and not halted.
    pub(crate) fn follower(&self) -> NodeId {
        let leader = self.leader();
        *self
            .nodes
            .iter()
            .rev()
            .find(|n| **n != leader && self.halted(**n).is_none())
            .expect("a follower that is not halted")
    }

    pub(crate) fn last_index(&self) -> u64 {
        self.cluster.last_index().expect("last_index")
    }

    /// Proposes through the layer; the case fails when the proposal is not applied.
    pub(crate) fn propose(&self, payload: &[u8]) -> Response {
        match self.cluster.propose(payload.to_vec()) {
            Ok(r) => r,
            Err(e) => panic!("proposal of {} bytes failed: {e}", payload.len()),
        }
    }

    /// Proposes each payload in turn and waits until every replica that is not halted applied the
    /// last one.
    pub(crate) fn propose_all(&self, payloads: &[Vec<u8>]) -> Vec<Response> {
        let responses: Vec<_> = payloads.iter().map(|p| self.propose(p)).collect();
        if let Some(last) = responses.last() {
            self.wait_all(last.index);
        }
        responses
    }

    pub(crate) fn halted(&self, node: NodeId) -> Option<FatalApplyError> {
        self.cluster.halted(node).expect("halted")
    }

    pub(crate) fn applied(&self, node: NodeId) -> u64 {
        self.cluster.applied_index(node).expect("applied_index")
    }

    pub(crate) fn payloads(&self, node: NodeId) -> Vec<AppliedPayload> {
        self.cluster.applied_payloads(node).expect("applied_payloads")
    }

    pub(crate) fn view(&self, node: NodeId) -> View {
        View {
            applied: self.applied(node),
            payloads: self.payloads(node),
            halted: self.halted(node).map(|e| (e.index, e.reason)),
        }
    }

    pub(crate) fn wait_applied(&self, node: NodeId, index: u64) {
        if let Err(e) = self.cluster.wait_applied(node, index, self.timeout) {
            panic!("node {node} should apply index {index}: {e} (halted: {:?})", self.halted(node));
        }
    }

    /// Waits until every replica that is not halted applied `index`.
    pub(crate) fn wait_all(&self, index: u64) {
        for node in &self.nodes {
            if self.halted(*node).is_none() {
                self.wait_applied(*node, index);
            }
        }
    }

    /// Waits until `node` halts; the case fails if it does not within the timeout.
    pub(crate) fn wait_halted(&self, node: NodeId) -> FatalApplyError {
        let deadline = Instant::now() + self.timeout;
        loop {
            if let Some(e) = self.halted(node) {
                return e;
            }
            assert!(
                Instant::now() < deadline,
                "node {node} should have halted (fail closed) but did not within {:?}; applied {}",
                self.timeout,
                self.applied(node)
            );
            thread::sleep(Duration::from_millis(5));
        }
    }

    /// Asserts `node` halted at `index` (with `reason`, when given) and that nothing changed since
    /// `before`: applied index at `index - 1`, no payload handed to its state machine, and
    /// `secret` (when given) absent from the error.
    pub(crate) fn assert_halted_unchanged(
        &self,
        node: NodeId,
        before: &View,
        index: u64,
        reason: Option<FailureReason>,
        secret: Option<&[u8]>,
    ) -> FatalApplyError {
        let err = self.wait_halted(node);
        assert_eq!(err.index, index, "node {node} must halt at the failing entry: {err}");
        if let Some(reason) = reason {
            assert_eq!(err.reason, reason, "node {node} halted for the wrong reason: {err}");
        }
        let now = self.view(node);
        assert_eq!(
            now.applied,
            index - 1,
            "node {node}: the applied index must stay below the failing entry"
        );
        assert_eq!(now.applied, before.applied, "node {node}: the applied index must not move on a halt");
        assert_eq!(now.payloads, before.payloads, "node {node}: its state machine must receive nothing");
        assert!(
            now.payloads.iter().all(|p| p.index < index),
            "node {node}: no byte of entry {index} or later may reach the state machine"
        );
        if let Some(secret) = secret {
            let text = format!("{err} {err:?}");
            assert!(!contains(text.as_bytes(), secret), "the fatal error must not contain payload bytes");
        }
        err
    }

    /// Restarts a follower with a keyring lacking [`PRIMARY`], proposes one sealed payload and
    /// waits until the follower halts on it: the entry is then stored there but not applied, and
    /// the other replicas applied it. Starts sealing when the case has not yet.
    pub(crate) fn halt_follower_fresh(&mut self) -> HaltedFollower {
        if !self.sealing.load(Ordering::SeqCst) {
            self.start_sealing();
        }
        let node = self.follower();
        tracing::info!(node, "--- make node {node} halt on a fresh entry (keyring without the key)");
        let decoy = self.fx.cipher(self.fx.ring(&[(DECOY, Role::Active)]));
        self.restart(node, Some(decoy), true);
        let payload = payload("fresh");
        let index = self.propose(&payload).index;
        let err = self.wait_halted(node);
        assert_eq!(
            (err.index, err.reason, err.key_id),
            (index, FailureReason::UnknownKey, Some(PRIMARY)),
            "a replica without the key must halt on the entry with UnknownKey"
        );
        self.wait_all(index);
        let before = self.view(node);
        assert_eq!(before.applied, index - 1, "node {node} must not apply past the last good entry");
        HaltedFollower { node, index, payload, before }
    }

    /// Places `entry` at a fresh log index above the cutover, where it must halt: on one follower
    /// (tampering its stored log, then restarting it with its keys) when the harness can, else on
    /// every replica through [`Cluster::append_unchecked`]. Sets the cutover if none is set.
    pub(crate) fn inject(&mut self, entry: StoredEntry) -> Result<Injection, Outcome> {
        if self.fx.cutover.cutover().is_none() {
            self.switch_on();
        }
        if self.caps.raw_log && self.caps.restart {
            let h = self.halt_follower_fresh();
            tracing::info!(
                node = h.node,
                index = h.index,
                "--- overwrite entry {} on node {}",
                h.index,
                h.node
            );
            self.cluster.write_entry(h.node, h.index, entry).expect("write_entry");
            let cipher = self.fx.standard_cipher();
            self.restart(h.node, Some(cipher), true);
            Ok(Injection { index: h.index, nodes: vec![(h.node, h.before)] })
        } else if self.caps.unchecked_append {
            let last = self.last_index();
            self.wait_all(last);
            let nodes: Vec<_> = self.nodes.iter().map(|n| (*n, self.view(*n))).collect();
            tracing::info!("--- append an entry without the layer");
            let index = self.cluster.append_unchecked(entry).expect("append_unchecked");
            Ok(Injection { index, nodes })
        } else {
            Err(Outcome::Skipped("needs capabilities `raw_log` and `restart`, or `unchecked_append`".into()))
        }
    }

    /// Asserts the replicas named by `inj` failed closed on it: see
    /// [`assert_fails_closed_everywhere`](Self::assert_fails_closed_everywhere).
    pub(crate) fn assert_injection_halts(
        &self,
        inj: &Injection,
        reason: Option<FailureReason>,
    ) -> Vec<FatalApplyError> {
        self.assert_fails_closed_everywhere(&inj.nodes, inj.index, reason, None)
    }

    /// Asserts an entry at `index` that fails on every replica (a deterministic failure) is
    /// handled fail-closed by all of them: at least one replica halts on it, and every replica
    /// either halts on it with nothing changed ([`assert_halted_unchanged`]
    /// (Self::assert_halted_unchanged)), or never applies it nor anything after it.
    ///
    /// The second form is real engine behaviour, not a loophole: once a quorum has halted, a
    /// replica that had not yet learned the entry is committed can never learn it, so it neither
    /// applies nor halts. Such a replica is watched for a grace period and must stay unchanged.
    pub(crate) fn assert_fails_closed_everywhere(
        &self,
        nodes: &[(NodeId, View)],
        index: u64,
        reason: Option<FailureReason>,
        secret: Option<&[u8]>,
    ) -> Vec<FatalApplyError> {
        let deadline = Instant::now() + self.timeout;
        while nodes.iter().all(|(node, _)| self.halted(*node).is_none()) {
            assert!(
                Instant::now() < deadline,
                "no replica halted on the failing entry {index} within {:?}",
                self.timeout
            );
            thread::sleep(Duration::from_millis(5));
        }
        let grace = Instant::now() + self.timeout.min(Duration::from_millis(500));
        let mut halts = Vec::new();
        for (node, before) in nodes {
            while self.halted(*node).is_none() && Instant::now() < grace {
                thread::sleep(Duration::from_millis(5));
            }
            if self.halted(*node).is_some() {
                halts.push(self.assert_halted_unchanged(*node, before, index, reason, secret));
            } else {
                let now = self.view(*node);
                tracing::info!(node, applied = now.applied, "--- node {node} never learned entry {index}");
                assert!(
                    now.applied < index,
                    "node {node} applied past the failing entry {index} without halting"
                );
                assert_eq!(
                    now.payloads, before.payloads,
                    "node {node}: its state machine must receive nothing"
                );
            }
        }
        halts
    }
}
