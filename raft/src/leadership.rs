//! What an operator follows a cluster by, told by each node in its log and metrics: who
//! leads, this node taking or losing leadership, a leader that no longer hears from a quorum
//! or from one of its followers, and a follower that no longer hears from its leader.
//!
//! openraft keeps a leader that lost its quorum in the leader state (it cannot know whether
//! the others are down or only silent), and its own election messages are warnings at every
//! retry, which keel's default log filter hides. Without this, a node whose followers were
//! all paused reported itself leader for as long as it lasted, and logged nothing but failed
//! requests. A follower is in the same position with pre-vote: while no other node can win an
//! election (the leader and a quorum are gone, or this node is cut off), it keeps the leader
//! it last heard of. And a follower that went down while no writes came was told by nothing
//! until the next write failed to reach it, though the cluster was one failure from losing its
//! quorum.

use std::collections::BTreeSet;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;
use std::time::Instant;

use openraft::async_runtime::WatchReceiver;
use openraft::ServerState;

use crate::node::KeelRaft;
use crate::types::NodeId;
use crate::types::RaftMetrics;

/// How often the node looks; the log it writes is about changes, not ticks.
const LOOK_EVERY: Duration = Duration::from_millis(100);

/// Who, and since when (time since the node started).
type Since<T> = Mutex<Option<(T, Duration)>>;

/// What the node has told so far, when it last heard from a leader, and whether it was
/// removed from the cluster.
pub(crate) struct Leadership {
    changes: AtomicU64,
    started: Instant,
    /// The leader whose AppendEntries (heartbeats included) last reached this node and was
    /// taken, and when.
    heard: Since<NodeId>,
    /// The leader [`Self::follow`] last saw named, and when it first saw it: a leader not heard
    /// yet is unheard since then, not since the previous one was heard.
    seen: Since<NodeId>,
    /// The term in which this node leads, and since when.
    leading: Since<u64>,
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
            heard: Mutex::default(),
            seen: Mutex::default(),
            leading: Mutex::default(),
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

    /// The AppendEntries of `leader` reached this node and was taken.
    pub(crate) fn heard_from(&self, leader: NodeId) {
        *self.heard.lock().expect("leadership") = Some((leader, self.started.elapsed()));
    }

    /// While this node follows a leader it knows: how long ago that leader was last heard
    /// (since this node first saw it named, if never). A removed node follows nobody. Unknown
    /// for the moment between a change of leader and the next look of [`Self::follow`].
    pub(crate) fn leader_unheard_for(&self, metrics: &RaftMetrics) -> Option<Duration> {
        if self.is_removed() {
            return None;
        }
        let leader = metrics
            .current_leader
            .filter(|leader| *leader != metrics.id)?;
        let of_leader = |since: &Since<NodeId>| {
            let since = *since.lock().expect("leadership");
            since.filter(|(who, _)| *who == leader).map(|(_, at)| at)
        };
        let since = of_leader(&self.heard).max(of_leader(&self.seen))?;
        Some(self.started.elapsed().saturating_sub(since))
    }

    /// While this node leads: how long ago each other member last answered it (since this
    /// node took the lead, for one that has not answered yet).
    pub(crate) fn followers_unheard_for(&self, metrics: &RaftMetrics) -> Vec<(NodeId, Duration)> {
        let leading = *self.leading.lock().expect("leadership");
        let Some((_, since)) = leading.filter(|(term, _)| *term == metrics.current_term) else {
            return Vec::new();
        };
        let Some(acks) = metrics.heartbeat.as_ref() else {
            return Vec::new();
        };
        let led_for = self.started.elapsed().saturating_sub(since);
        acks.iter()
            .filter(|(id, _)| **id != metrics.id)
            .map(|(id, ack)| {
                let ago = ack
                    .as_ref()
                    .map_or(led_for, |ack| openraft::Instant::elapsed(&**ack));
                (*id, ago)
            })
            .collect()
    }

    /// Follows `raft` until it shuts down. A leader unheard by a quorum, or a follower unheard
    /// by its leader, for `silence` is reported.
    pub(crate) async fn follow(self: Arc<Self>, raft: KeelRaft, silence: Duration) {
        let mut leader: Option<NodeId> = None;
        let mut silent = false;
        let mut silent_followers = BTreeSet::new();
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
                let seen = leader.map(|leader| (leader, self.started.elapsed()));
                *self.seen.lock().expect("leadership") = seen;
                // Told as a change of leader, not as a quorum or a leader come back.
                silent = false;
            }
            let term = metrics.current_term;
            let leads = metrics.state == ServerState::Leader;
            {
                let mut leading = self.leading.lock().expect("leadership");
                let led_term = leading.map(|(term, _)| term);
                if leads && led_term != Some(term) {
                    *leading = Some((term, self.started.elapsed()));
                    silent_followers.clear();
                } else if !leads {
                    *leading = None;
                }
            }
            if leads {
                self.tell_silent_followers(&metrics, silence, &mut silent_followers);
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

    /// Tells followers of this leader that fell silent for `silence`, and those that answer
    /// again; `silent` holds the ones told.
    fn tell_silent_followers(
        &self,
        metrics: &RaftMetrics,
        silence: Duration,
        silent: &mut BTreeSet<NodeId>,
    ) {
        let term = metrics.current_term;
        let unheard = self.followers_unheard_for(metrics);
        silent.retain(|id| unheard.iter().any(|(member, _)| member == id));
        let membership = metrics.membership_config.membership();
        // During a change of voters a write needs a quorum of the old and of the new set.
        let joint = membership.get_joint_config().len() > 1;
        let voters: Vec<NodeId> = membership.voter_ids().collect();
        let answering = voters
            .iter()
            .filter(|voter| {
                **voter == metrics.id
                    || unheard
                        .iter()
                        .any(|(id, ago)| id == *voter && *ago <= silence)
            })
            .count();
        for &(follower, ago) in &unheard {
            if ago > silence && silent.insert(follower) {
                let addr = membership
                    .get_node(&follower)
                    .map(|node| node.addr.as_str());
                let standing = if joint {
                    "the voters are changing".to_string()
                } else if voters.contains(&follower) {
                    format!(
                        "{answering} of {} voters answer, and writes need {}",
                        voters.len(),
                        voters.len() / 2 + 1
                    )
                } else {
                    "it is a learner, which no quorum counts".to_string()
                };
                tracing::warn!(
                    term,
                    follower,
                    addr,
                    "follower {follower} has not answered this leader for {ago:.1?}: it is down, \
                     paused or cut off; {standing}"
                );
            } else if ago <= silence && silent.remove(&follower) {
                tracing::info!(term, follower, "follower {follower} answers again");
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
