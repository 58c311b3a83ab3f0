//! What an operator follows a cluster by, told by each node in its log and metrics: who
//! leads, this node taking or losing leadership, a leader that no longer hears from a quorum,
//! and a follower that no longer hears from its leader.
//!
//! openraft keeps a leader that lost its quorum in the leader state (it cannot know whether
//! the others are down or only silent), and its own election messages are warnings at every
//! retry, which keel's default log filter hides. Without this, a node whose followers were
//! all paused reported itself leader for as long as it lasted, and logged nothing but failed
//! requests. A follower is in the same position with pre-vote: while no other node can win an
//! election (the leader and a quorum are gone, or this node is cut off), it keeps the leader
//! it last heard of.

use std::sync::atomic::AtomicBool;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use std::time::Instant;

use openraft::async_runtime::WatchReceiver;
use openraft::ServerState;

use crate::node::KeelRaft;
use crate::types::NodeId;
use crate::types::RaftMetrics;

/// How often the node looks; the log it writes is about changes, not ticks.
const LOOK_EVERY: Duration = Duration::from_millis(100);

/// What the node has told so far, when it last heard from a leader, and whether it was
/// removed from the cluster.
pub(crate) struct Leadership {
    changes: AtomicU64,
    started: Instant,
    /// Milliseconds after `started` at which a leader's AppendEntries (heartbeats included)
    /// last reached this node and was taken.
    leader_heard_at: AtomicU64,
    /// Set once the leader said this node is no longer a member (see
    /// [`crate::node::RaftNode::learn_removed`]). A removed node rarely holds the membership
    /// that leaves it out: the leader stops replicating to it first.
    removed: AtomicBool,
}

impl Leadership {
    pub(crate) fn new(removed: bool) -> Self {
        Self {
            changes: AtomicU64::new(0),
            started: Instant::now(),
            leader_heard_at: AtomicU64::new(0),
            removed: removed.into(),
        }
    }

    pub(crate) fn is_removed(&self) -> bool {
        self.removed.load(Ordering::Relaxed)
    }

    /// Marks this node removed; true the first time.
    pub(crate) fn mark_removed(&self) -> bool {
        !self.removed.swap(true, Ordering::Relaxed)
    }

    /// Times this node saw a new leader since it started.
    pub(crate) fn changes(&self) -> u64 {
        self.changes.load(Ordering::Relaxed)
    }

    /// A leader's AppendEntries reached this node and was taken.
    pub(crate) fn heard_from_leader(&self) {
        let now = self.started.elapsed().as_millis() as u64;
        self.leader_heard_at.fetch_max(now, Ordering::Relaxed);
    }

    /// While this node follows a leader it knows: how long ago that leader was last heard
    /// (since this node started, if never). A removed node follows nobody.
    pub(crate) fn leader_unheard_for(&self, metrics: &RaftMetrics) -> Option<Duration> {
        if self.is_removed() {
            return None;
        }
        metrics
            .current_leader
            .filter(|leader| *leader != metrics.id)?;
        let heard = Duration::from_millis(self.leader_heard_at.load(Ordering::Relaxed));
        Some(self.started.elapsed().saturating_sub(heard))
    }

    /// Follows `raft` until it shuts down. A leader unheard by a quorum, or a follower unheard
    /// by its leader, for `silence` is reported.
    pub(crate) async fn follow(self: Arc<Self>, raft: KeelRaft, silence: Duration) {
        let mut leader: Option<NodeId> = None;
        let mut silent = false;
        let mut tick = tokio::time::interval(LOOK_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let metrics = raft.metrics().borrow_watched().clone();
            if metrics.state == ServerState::Shutdown {
                return;
            }
            if metrics.current_leader != leader {
                self.tell_new_leader(&metrics, leader);
                leader = metrics.current_leader;
                // Told as a change of leader, not as a quorum or a leader come back.
                silent = false;
            }
            let term = metrics.current_term;
            if metrics.state == ServerState::Leader {
                let unheard = quorum_unheard_for(&metrics).filter(|ago| *ago > silence);
                match (unheard, silent) {
                    (Some(ago), false) => tracing::warn!(
                        term,
                        "this node leads but no quorum has answered it for {ago:.1?}: the other \
                         voters are down or cut off from it, and it serves nothing that needs \
                         the cluster until they answer"
                    ),
                    (None, true) => tracing::info!(term, "a quorum answers again"),
                    _ => {}
                }
                silent = unheard.is_some();
            } else if let Some(leader) = leader {
                let unheard = self
                    .leader_unheard_for(&metrics)
                    .filter(|ago| *ago > silence);
                match (unheard, silent) {
                    (Some(ago), false) => tracing::warn!(
                        term,
                        leader,
                        "the leader has not been heard from for {ago:.1?} and no other node \
                         was elected: this node is cut off from the others, or fewer than a \
                         quorum of voters are up; it serves nothing that needs the cluster \
                         until it hears from a leader"
                    ),
                    (None, true) => tracing::info!(term, leader, "the leader is heard again"),
                    _ => {}
                }
                silent = unheard.is_some();
            }
        }
    }

    fn tell_new_leader(&self, metrics: &RaftMetrics, before: Option<NodeId>) {
        let term = metrics.current_term;
        match metrics.current_leader {
            Some(leader) => {
                self.changes.fetch_add(1, Ordering::Relaxed);
                if leader == metrics.id {
                    tracing::info!(term, "this node leads");
                } else {
                    tracing::info!(term, leader, "following the leader");
                }
            }
            None if before == Some(metrics.id) => {
                tracing::info!(term, "this node no longer leads; no leader known")
            }
            None => tracing::info!(term, "no leader known"),
        }
    }
}

/// How long ago a quorum last acknowledged this node's leadership, if it leads.
pub(crate) fn quorum_unheard_for(metrics: &RaftMetrics) -> Option<Duration> {
    if metrics.state != ServerState::Leader {
        return None;
    }
    // A single voter is its own quorum, and nobody acknowledges it.
    let mut voters = metrics.membership_config.membership().voter_ids();
    if voters.next() == Some(metrics.id) && voters.next().is_none() {
        return Some(Duration::ZERO);
    }
    let acked = metrics.last_quorum_acked.as_ref()?;
    Some(openraft::Instant::elapsed(&**acked))
}
