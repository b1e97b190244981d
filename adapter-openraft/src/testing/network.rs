//! An in-process network: each RPC calls the target node's `Raft` handle directly.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use openraft::error::{InstallSnapshotError, RPCError, RaftError, RemoteError, Unreachable};
use openraft::network::{Backoff, RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::{LogId, Raft, RaftTypeConfig};

struct Routes<C: RaftTypeConfig> {
    nodes: BTreeMap<C::NodeId, Raft<C>>,
    isolated: BTreeSet<C::NodeId>,
    /// Nodes that receive entries but not commit progress: node -> the commit they may learn.
    held_commit: BTreeMap<C::NodeId, Option<LogId<C::NodeId>>>,
}

/// Routes RPCs between the nodes of one process. Cloning gives another handle to the same
/// routing table.
pub struct Router<C: RaftTypeConfig> {
    routes: Arc<Mutex<Routes<C>>>,
}

impl<C: RaftTypeConfig> Clone for Router<C> {
    fn clone(&self) -> Self {
        Self { routes: self.routes.clone() }
    }
}

impl<C: RaftTypeConfig> Default for Router<C> {
    fn default() -> Self {
        Self {
            routes: Arc::new(Mutex::new(Routes {
                nodes: BTreeMap::new(),
                isolated: BTreeSet::new(),
                held_commit: BTreeMap::new(),
            })),
        }
    }
}

impl<C: RaftTypeConfig> fmt::Debug for Router<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let routes = self.lock();
        f.debug_struct("Router").field("nodes", &routes.nodes.keys().collect::<Vec<_>>()).finish()
    }
}

#[derive(Debug, thiserror::Error)]
#[error("node {0} is not reachable")]
struct NotReachable(String);

impl<C: RaftTypeConfig> Router<C> {
    fn lock(&self) -> MutexGuard<'_, Routes<C>> {
        self.routes.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Makes `raft` reachable as `id` (replacing an earlier handle).
    pub fn register(&self, id: C::NodeId, raft: Raft<C>) {
        self.lock().nodes.insert(id, raft);
    }

    /// Makes `id` unreachable (a stopped node).
    pub fn remove(&self, id: &C::NodeId) {
        self.lock().nodes.remove(id);
    }

    /// Cuts `id` off from the others, or reconnects it.
    pub fn set_isolated(&self, id: C::NodeId, isolated: bool) {
        let mut routes = self.lock();
        if isolated {
            routes.isolated.insert(id);
        } else {
            routes.isolated.remove(&id);
        }
    }

    /// Holds back commit progress sent to `id` (it keeps receiving and storing entries but does
    /// not learn that they are committed, so it does not apply them), or releases it.
    /// `known` is the commit it may still learn (usually what it already knows).
    pub fn hold_commit(&self, id: C::NodeId, hold: Option<Option<LogId<C::NodeId>>>) {
        let mut routes = self.lock();
        match hold {
            Some(known) => {
                routes.held_commit.insert(id, known);
            }
            None => {
                routes.held_commit.remove(&id);
            }
        }
    }

    fn held_commit(&self, id: &C::NodeId) -> Option<Option<LogId<C::NodeId>>> {
        self.lock().held_commit.get(id).cloned()
    }

    fn route(&self, from: &C::NodeId, to: &C::NodeId) -> Result<Raft<C>, Unreachable> {
        let routes = self.lock();
        if routes.isolated.contains(from) || routes.isolated.contains(to) {
            return Err(Unreachable::new(&NotReachable(to.to_string())));
        }
        routes.nodes.get(to).cloned().ok_or_else(|| Unreachable::new(&NotReachable(to.to_string())))
    }

    /// The network factory for node `from`.
    pub fn network_for(&self, from: C::NodeId) -> NetworkFactory<C> {
        NetworkFactory { router: self.clone(), from }
    }
}

/// The [`RaftNetworkFactory`] of one node.
pub struct NetworkFactory<C: RaftTypeConfig> {
    router: Router<C>,
    from: C::NodeId,
}

impl<C: RaftTypeConfig> fmt::Debug for NetworkFactory<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "NetworkFactory(from {})", self.from)
    }
}

impl<C: RaftTypeConfig> RaftNetworkFactory<C> for NetworkFactory<C> {
    type Network = Connection<C>;

    async fn new_client(&mut self, target: C::NodeId, _node: &C::Node) -> Self::Network {
        Connection { router: self.router.clone(), from: self.from.clone(), target }
    }
}

/// A connection from one node to another.
pub struct Connection<C: RaftTypeConfig> {
    router: Router<C>,
    from: C::NodeId,
    target: C::NodeId,
}

impl<C: RaftTypeConfig> fmt::Debug for Connection<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Connection({} -> {})", self.from, self.target)
    }
}

type RpcResult<C, T, E> = Result<
    T,
    RPCError<
        <C as RaftTypeConfig>::NodeId,
        <C as RaftTypeConfig>::Node,
        RaftError<<C as RaftTypeConfig>::NodeId, E>,
    >,
>;

impl<C: RaftTypeConfig> Connection<C> {
    fn target(&self) -> Result<Raft<C>, Unreachable> {
        self.router.route(&self.from, &self.target)
    }

    fn remote<E: std::error::Error>(
        &self,
        e: RaftError<C::NodeId, E>,
    ) -> RPCError<C::NodeId, C::Node, RaftError<C::NodeId, E>> {
        RPCError::RemoteError(RemoteError::new(self.target.clone(), e))
    }
}

impl<C: RaftTypeConfig> RaftNetwork<C> for Connection<C> {
    async fn append_entries(
        &mut self,
        mut rpc: AppendEntriesRequest<C>,
        _option: RPCOption,
    ) -> RpcResult<C, AppendEntriesResponse<C::NodeId>, openraft::error::Infallible> {
        let raft = self.target().map_err(RPCError::Unreachable)?;
        if let Some(known) = self.router.held_commit(&self.target) {
            if rpc.leader_commit > known {
                rpc.leader_commit = known;
            }
        }
        raft.append_entries(rpc).await.map_err(|e| self.remote(e))
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<C>,
        _option: RPCOption,
    ) -> RpcResult<C, InstallSnapshotResponse<C::NodeId>, InstallSnapshotError> {
        let raft = self.target().map_err(RPCError::Unreachable)?;
        raft.install_snapshot(rpc).await.map_err(|e| self.remote(e))
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<C::NodeId>,
        _option: RPCOption,
    ) -> RpcResult<C, VoteResponse<C::NodeId>, openraft::error::Infallible> {
        let raft = self.target().map_err(RPCError::Unreachable)?;
        raft.vote(rpc).await.map_err(|e| self.remote(e))
    }

    /// Retry an unreachable peer quickly: openraft's default 500 ms back-off is longer than the
    /// test cluster's election timeout, so a restarted follower would campaign before its leader
    /// retried, and cases that restart a follower would find it leading.
    fn backoff(&self) -> Backoff {
        Backoff::new(std::iter::repeat(Duration::from_millis(20)))
    }
}
