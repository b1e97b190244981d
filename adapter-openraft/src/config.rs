//! The type config the Raft engine runs with, derived from the application's own.

use std::marker::PhantomData;

use openraft::raft::responder::OneshotResponder;
use openraft::RaftTypeConfig;

use crate::payload::EnvelopePayload;

/// The openraft type config of a node running the envelope layer, derived from the
/// application's own config `C`.
///
/// Everything is `C`'s except the log payload: `D` is [`EnvelopePayload`] (cleartext or sealed
/// bytes). The response `R`, node id, node, snapshot data and runtime are `C`'s, so the
/// application's request, response and state machine types stay as they are. The log store and
/// the network are written for `Sealed<C>` (`RaftLogStorage<Sealed<C>>`,
/// `RaftNetworkFactory<Sealed<C>>`); most are already generic over the type config, and then the
/// change is one type argument.
///
/// `C` must use openraft's default entry type (`Entry = openraft::Entry<C>`, which
/// `declare_raft_types!` sets unless told otherwise).
pub struct Sealed<C>(PhantomData<C>);

/// The `Raft` handle type of a sealed node.
pub type SealedRaft<C> = openraft::Raft<Sealed<C>>;

// Manual impls: derives would put bounds on `C` that the trait bounds below already imply, but
// spelled out they keep `Sealed<C>` usable for any `C`.
impl<C> Clone for Sealed<C> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<C> Copy for Sealed<C> {}
impl<C> Default for Sealed<C> {
    fn default() -> Self {
        Self(PhantomData)
    }
}
impl<C> PartialEq for Sealed<C> {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}
impl<C> Eq for Sealed<C> {}
impl<C> PartialOrd for Sealed<C> {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl<C> Ord for Sealed<C> {
    fn cmp(&self, _: &Self) -> std::cmp::Ordering {
        std::cmp::Ordering::Equal
    }
}
impl<C: std::fmt::Debug + Default> std::fmt::Debug for Sealed<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Sealed<{:?}>", C::default())
    }
}

impl<C> RaftTypeConfig for Sealed<C>
where
    C: RaftTypeConfig<Entry = openraft::Entry<C>>,
{
    type D = EnvelopePayload;
    type R = C::R;
    type NodeId = C::NodeId;
    type Node = C::Node;
    type Entry = openraft::Entry<Sealed<C>>;
    type SnapshotData = C::SnapshotData;
    type AsyncRuntime = C::AsyncRuntime;
    type Responder = OneshotResponder<Sealed<C>>;
}

/// The error `Raft::client_write` returns, for node id `NID` and node `N`.
pub type ClientWriteRaftError<NID, N> =
    openraft::error::RaftError<NID, openraft::error::ClientWriteError<NID, N>>;
