//! Response routing: matching a proposal to its applied result, without FIFO.

use std::collections::{BTreeMap, HashMap};
use std::fmt;

use raft::{RawNode, Storage};
use raft_envelope_core::{apply::Admission, EntryKind, FatalApplyError, ProposalId};

use crate::applier::AppliedEntry;
use crate::error::ProposeError;
use crate::proposer::Ticket;

/// A proposal's outcome.
#[derive(Debug)]
pub struct Completion<R> {
    /// The proposal.
    pub id: ProposalId,
    /// Its result on this node.
    pub result: Result<Applied<R>, ProposeError>,
}

/// Where and with what response a proposal was applied.
#[derive(Clone, PartialEq, Eq)]
pub struct Applied<R> {
    /// The log index it was applied at.
    pub index: u64,
    /// The term of that entry.
    pub term: u64,
    /// The state machine's response (`None` for a barrier, which the state machine never sees).
    pub response: Option<R>,
}

impl<R> fmt::Debug for Applied<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Applied")
            .field("index", &self.index)
            .field("term", &self.term)
            .field("has_response", &self.response.is_some())
            .finish()
    }
}

#[derive(Debug)]
struct Pending {
    /// Where the latest submission was appended on this node, if it was.
    appended_at: Option<(u64, u64)>,
    /// Every index a submission of it was appended at on this node (a proposal submitted again
    /// while pending has several): the first one applied completes it.
    indexes: Vec<u64>,
    /// A submission of it was forwarded to a leader (no index known here): an opened envelope
    /// carrying its id completes it, wherever it lands.
    forwarded: bool,
    kind: EntryKind,
    age: u64,
}

/// Matches proposals to their applied entries on one node.
///
/// - A proposal made on the leader is matched by `(index, term)`: by Log Matching, the entry
///   committed at that index with that term is the one appended, whatever it carries (cleartext
///   included). Another term at that index, or a log truncated below it, means a new leader
///   replaced it: [`ProposeError::Superseded`].
/// - A proposal forwarded by a follower has no index yet; an envelope is matched by its proposal
///   id when the entry is applied on this node: the envelope header's id, authenticated by
///   opening. Only that id completes a proposal, and only a forwarded envelope proposal: the id
///   in a context marker (of a barrier or of anything else) is not authenticated and is never
///   used, so a forged entry cannot complete a pending proposal. A barrier is matched only by
///   `(index, term)` (it is only proposed on the leader), and a forwarded cleartext proposal
///   carries no identity and can only time out.
/// - Every proposal times out after `timeout_ticks` ticks ([`ProposeError::TimedOut`]), and a
///   halt fails every pending proposal ([`ProposeError::Halted`]).
pub struct ProposalTracker<R> {
    pending: HashMap<ProposalId, Pending>,
    /// Index -> the proposal appended there and the term it was appended in.
    by_index: BTreeMap<u64, (ProposalId, u64)>,
    timeout_ticks: u64,
    done: Vec<Completion<R>>,
}

impl<R> ProposalTracker<R> {
    /// A tracker timing proposals out after `timeout_ticks` ticks.
    pub fn new(timeout_ticks: u64) -> Self {
        Self { pending: HashMap::new(), by_index: BTreeMap::new(), timeout_ticks, done: Vec::new() }
    }

    /// Starts tracking `ticket`.
    pub fn track(&mut self, ticket: &Ticket) {
        // A proposal submitted again while pending keeps every submission's index: whichever is
        // applied first completes it (the later copies apply as duplicates, answered to no one).
        if let Some((index, term)) = ticket.appended_at {
            // The log at `index` was replaced since another proposal was appended there.
            let other = self.by_index.get(&index).map(|(o, _)| *o).filter(|o| *o != ticket.id);
            if let Some(other) = other {
                self.drop_submission(other, index, term);
            }
        }
        let pending = self.pending.entry(ticket.id).or_insert(Pending {
            appended_at: None,
            indexes: Vec::new(),
            forwarded: false,
            kind: ticket.kind,
            age: 0,
        });
        pending.kind = ticket.kind;
        pending.age = 0;
        match ticket.appended_at {
            Some((index, term)) => {
                pending.appended_at = Some((index, term));
                pending.indexes.push(index);
                self.by_index.insert(index, (ticket.id, term));
            }
            None => pending.forwarded = true,
        }
    }

    /// Number of proposals without an outcome yet.
    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    fn finish(&mut self, id: ProposalId, result: Result<Applied<R>, ProposeError>) {
        if let Some(p) = self.pending.remove(&id) {
            for index in p.indexes {
                if self.by_index.get(&index).is_some_and(|(other, _)| *other == id) {
                    self.by_index.remove(&index);
                }
            }
            self.done.push(Completion { id, result });
        }
    }

    /// The submission of `id` at `index` is gone (another term there, or truncated): `id`
    /// fails as superseded once no other submission of it is left.
    fn drop_submission(&mut self, id: ProposalId, index: u64, term: u64) {
        self.by_index.remove(&index);
        let gone = self.pending.get_mut(&id).is_some_and(|p| {
            p.indexes.retain(|i| *i != index);
            p.indexes.is_empty() && !p.forwarded
        });
        if gone {
            self.finish(id, Err(ProposeError::Superseded { index, term }));
        }
    }

    /// Routes one applied entry: by `(index, term)` for proposals appended on this node while it
    /// led, then by [`AppliedEntry::proposal`] for forwarded envelope proposals, and only when
    /// the entry itself is an opened envelope ([`EntryKind::Envelope`]).
    pub fn on_applied(&mut self, entry: AppliedEntry<R>) {
        let AppliedEntry { index, term, kind, proposal, response, admission } = entry;
        let outcome = move || match admission {
            Admission::Duplicate { first_index } => Err(ProposeError::Duplicate { index, first_index }),
            Admission::Expired { .. } => Err(ProposeError::Expired { index }),
            _ => Ok(Applied { index, term, response }),
        };
        if let Some((id, expected)) = self.by_index.get(&index).copied() {
            if expected == term {
                self.finish(id, outcome());
                return;
            }
            self.drop_submission(id, index, term);
        }
        // Only the authenticated id of an opened envelope, and only for a forwarded envelope
        // proposal: a proposal appended here is matched by (index, term) alone.
        if kind != EntryKind::Envelope {
            return;
        }
        if let Some(id) = proposal {
            let forwarded_envelope =
                self.pending.get(&id).is_some_and(|p| p.kind == EntryKind::Envelope && p.forwarded);
            if forwarded_envelope {
                self.finish(id, outcome());
            }
        }
    }

    /// Ages every pending proposal by one tick and times out the expired ones.
    pub fn on_tick(&mut self) {
        let mut expired = Vec::new();
        for (id, p) in &mut self.pending {
            p.age += 1;
            if p.age >= self.timeout_ticks {
                expired.push(*id);
            }
        }
        for id in expired {
            let ticks = self.timeout_ticks;
            self.finish(id, Err(ProposeError::TimedOut { ticks }));
        }
    }

    /// Fails the proposals whose entry the local log no longer holds: a new leader truncated it
    /// (the log is shorter than its index, or holds another term there). Cheap: it looks only
    /// at proposals made on this node while it led.
    pub fn on_log_changed<T: Storage>(&mut self, node: &RawNode<T>) {
        if self.by_index.is_empty() {
            return;
        }
        let log = &node.raft.raft_log;
        let last = log.last_index();
        let mut gone = Vec::new();
        for (index, (id, expected)) in &self.by_index {
            if *index > last {
                gone.push((*id, *index, 0));
            } else if let Ok(t) = log.term(*index) {
                if t != *expected {
                    gone.push((*id, *index, t));
                }
            }
        }
        for (id, index, term) in gone {
            self.drop_submission(id, index, term);
        }
    }

    /// Fails every pending proposal: the node halted.
    pub fn on_halt(&mut self, halt: &FatalApplyError) {
        self.fail_all(|| ProposeError::halted(halt));
    }

    /// Fails every pending proposal with `error()`.
    pub fn fail_all(&mut self, error: impl Fn() -> ProposeError) {
        let ids: Vec<_> = self.pending.keys().copied().collect();
        for id in ids {
            self.finish(id, Err(error()));
        }
    }

    /// The outcomes reached since the last call.
    pub fn take_completions(&mut self) -> Vec<Completion<R>> {
        std::mem::take(&mut self.done)
    }
}

impl<R> fmt::Debug for ProposalTracker<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProposalTracker")
            .field("pending", &self.pending.len())
            .field("timeout_ticks", &self.timeout_ticks)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ticket(id: u64, appended_at: Option<(u64, u64)>) -> Ticket {
        Ticket { id: ProposalId(id), kind: EntryKind::Envelope, appended_at }
    }

    fn applied(index: u64, term: u64, proposal: Option<u64>) -> AppliedEntry<u8> {
        AppliedEntry {
            index,
            term,
            kind: EntryKind::Envelope,
            proposal: proposal.map(ProposalId),
            response: Some(7),
            admission: Admission::Apply,
        }
    }

    #[test]
    fn routes_by_index_and_term_then_by_id_never_fifo() {
        let mut t = ProposalTracker::<u8>::new(10);
        t.track(&ticket(1, Some((5, 2))));
        t.track(&ticket(2, None));
        t.track(&ticket(3, Some((6, 2))));
        // Forwarded proposal 2 lands first, at an index nobody expected.
        t.on_applied(applied(4, 2, Some(2)));
        // Index 5 was replaced by a new leader's entry: proposal 1 is superseded, not matched.
        t.on_applied(applied(5, 3, None));
        // Index 6 holds proposal 3 with its term.
        t.on_applied(applied(6, 2, Some(3)));
        let done: Vec<_> = t.take_completions().into_iter().map(|c| (c.id.0, c.result)).collect();
        assert!(matches!(&done[0], (2, Ok(a)) if a.index == 4));
        assert!(matches!(&done[1], (1, Err(ProposeError::Superseded { index: 5, term: 3 }))));
        assert!(matches!(&done[2], (3, Ok(a)) if a.index == 6 && a.response == Some(7)));
        assert_eq!(t.pending(), 0);
    }

    #[test]
    fn a_proposal_submitted_again_while_pending_completes_with_the_first_copy_applied() {
        let mut t = ProposalTracker::<u8>::new(10);
        t.track(&ticket(1, Some((5, 2))));
        t.track(&ticket(1, Some((6, 2))));
        t.on_applied(applied(5, 2, Some(1)));
        let duplicate =
            AppliedEntry { admission: Admission::Duplicate { first_index: 5 }, ..applied(6, 2, Some(1)) };
        t.on_applied(duplicate);
        let done: Vec<_> = t.take_completions().into_iter().map(|c| (c.id.0, c.result)).collect();
        assert_eq!(done.len(), 1, "one outcome per proposal");
        assert!(
            matches!(&done[0], (1, Ok(a)) if a.index == 5 && a.response == Some(7)),
            "the response reaches the caller"
        );
        assert_eq!(t.pending(), 0);
    }

    #[test]
    fn a_proposal_appended_here_then_forwarded_completes_where_the_forwarded_copy_lands() {
        let mut t = ProposalTracker::<u8>::new(10);
        t.track(&ticket(1, Some((5, 2))));
        // This node stepped down; the client's retry is forwarded to the new leader.
        t.track(&ticket(1, None));
        // The new leader appended the forwarded copy at 5 in its term.
        t.on_applied(applied(5, 3, Some(1)));
        let done = t.take_completions();
        assert!(
            matches!(&done[..], [c] if matches!(&c.result, Ok(a) if a.index == 5)),
            "applied, not superseded"
        );
    }

    #[test]
    fn a_resubmitted_proposal_is_superseded_only_when_every_copy_is() {
        let mut t = ProposalTracker::<u8>::new(10);
        t.track(&ticket(1, Some((5, 2))));
        t.track(&ticket(1, Some((6, 2))));
        t.on_applied(applied(5, 3, None));
        assert!(t.take_completions().is_empty(), "the copy at 6 may still apply");
        t.on_applied(applied(6, 2, Some(1)));
        let done = t.take_completions();
        assert!(matches!(&done[..], [c] if matches!(&c.result, Ok(a) if a.index == 6)));
    }

    fn entry(index: u64, kind: EntryKind, proposal: Option<u64>) -> AppliedEntry<u8> {
        AppliedEntry {
            index,
            term: 2,
            kind,
            proposal: proposal.map(ProposalId),
            response: None,
            admission: Admission::Apply,
        }
    }

    #[test]
    fn unauthenticated_ids_never_complete_a_proposal() {
        let mut t = ProposalTracker::<u8>::new(10);
        // A forwarded envelope proposal, a barrier and an envelope appended on this leader.
        t.track(&ticket(1, None));
        t.track(&Ticket { id: ProposalId(2), kind: EntryKind::Control, appended_at: Some((8, 2)) });
        t.track(&ticket(3, Some((9, 2))));
        // Forged entries naming pending ids: a barrier (control) and a cleartext entry carry no
        // authenticated identity and complete nothing.
        t.on_applied(entry(4, EntryKind::Control, Some(1)));
        t.on_applied(entry(5, EntryKind::Cleartext, Some(1)));
        t.on_applied(entry(6, EntryKind::Control, Some(2)));
        // A (replayed) envelope naming the leader's proposals at another index: they are matched
        // by (index, term) only.
        t.on_applied(entry(7, EntryKind::Envelope, Some(3)));
        t.on_applied(entry(7, EntryKind::Envelope, Some(2)));
        assert!(t.take_completions().is_empty());
        assert_eq!(t.pending(), 3);
        // The real entries complete them.
        t.on_applied(entry(8, EntryKind::Control, None));
        t.on_applied(entry(9, EntryKind::Envelope, Some(3)));
        t.on_applied(entry(10, EntryKind::Envelope, Some(1)));
        let done: Vec<_> = t.take_completions().into_iter().map(|c| (c.id.0, c.result)).collect();
        assert!(matches!(&done[0], (2, Ok(a)) if a.index == 8));
        assert!(matches!(&done[1], (3, Ok(a)) if a.index == 9));
        assert!(matches!(&done[2], (1, Ok(a)) if a.index == 10));
        assert_eq!(t.pending(), 0);
    }

    #[test]
    fn times_out_and_fails_on_halt() {
        let mut t = ProposalTracker::<u8>::new(2);
        t.track(&ticket(1, None));
        t.on_tick();
        t.track(&ticket(2, Some((3, 1))));
        t.on_tick();
        let done = t.take_completions();
        assert_eq!(done.len(), 1);
        assert!(matches!(done[0].result, Err(ProposeError::TimedOut { ticks: 2 })));
        let halt = FatalApplyError::new(3, raft_envelope_core::error::FailureReason::UnknownKey, Some(1));
        t.on_halt(&halt);
        let done = t.take_completions();
        assert!(matches!(done[0].result, Err(ProposeError::Halted { index: 3, .. })));
    }
}
