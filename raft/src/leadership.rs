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

use std::collections::BTreeMap;
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

/// A gap between two looks that means the process itself did not run.
const STALL: Duration = Duration::from_millis(500);

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
    /// The term in which this node leads, and since when each member that has not answered
    /// it yet was first seen not answering (a member added later is silent from its adding).
    unanswered: Mutex<Option<(u64, BTreeMap<NodeId, Duration>)>>,
    /// Set when the node begins to stop: silences are then expected, and not told.
    stopping: AtomicBool,
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
            unanswered: Mutex::default(),
            stopping: AtomicBool::new(false),
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

    /// The node begins to stop.
    pub(crate) fn stop_telling(&self) {
        self.stopping.store(true, Ordering::Relaxed);
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

    /// While this node leads: how long ago each other member last answered it (since it was
    /// first seen not answering, for one that has not answered yet; left out until
    /// [`Self::follow`] has seen it).
    pub(crate) fn followers_unheard_for(&self, metrics: &RaftMetrics) -> Vec<(NodeId, Duration)> {
        let (Some(acks), ServerState::Leader) = (metrics.heartbeat.as_ref(), metrics.state) else {
            return Vec::new();
        };
        let unanswered = self.unanswered.lock().expect("leadership");
        let since = unanswered
            .as_ref()
            .filter(|(term, _)| *term == metrics.current_term)
            .map(|(_, since)| since);
        let now = self.started.elapsed();
        acks.iter()
            .filter(|(id, _)| **id != metrics.id)
            .filter_map(|(id, ack)| {
                let ago = match ack {
                    Some(ack) => openraft::Instant::elapsed(&**ack),
                    None => now.saturating_sub(*since?.get(id)?),
                };
                Some((*id, ago))
            })
            .collect()
    }

    /// Notes, while this node leads, when each member that has not answered it was first seen
    /// so: on a new term, every member starts afresh.
    fn note_unanswered(&self, metrics: &RaftMetrics) {
        let mut unanswered = self.unanswered.lock().expect("leadership");
        let (Some(acks), ServerState::Leader) = (metrics.heartbeat.as_ref(), metrics.state) else {
            *unanswered = None;
            return;
        };
        let term = metrics.current_term;
        if unanswered.as_ref().map(|(led, _)| *led) != Some(term) {
            *unanswered = Some((term, BTreeMap::new()));
        }
        let Some((_, since)) = unanswered.as_mut() else {
            return;
        };
        let now = self.started.elapsed();
        since.retain(|id, _| matches!(acks.get(id), Some(None)));
        for (id, _) in acks.iter().filter(|(_, ack)| ack.is_none()) {
            since.entry(*id).or_insert(now);
        }
    }

    /// Follows `raft` until it shuts down. A leader unheard by a quorum, or a follower unheard
    /// by its leader, for `silence` is reported.
    pub(crate) async fn follow(self: Arc<Self>, raft: KeelRaft, silence: Duration) {
        let mut leader: Option<NodeId> = None;
        // A leader named but not heard from yet (as after a restart), told once it is.
        let mut awaited: Option<NodeId> = None;
        let mut silent = false;
        let mut silent_followers = BTreeSet::new();
        let mut tick = tokio::time::interval(LOOK_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut looked = Instant::now();
        let mut judge_from = looked;
        loop {
            tick.tick().await;
            let metrics = raft.metrics().borrow_watched().clone();
            if metrics.state == ServerState::Shutdown || self.stopping.load(Ordering::Relaxed) {
                return;
            }
            // A process that did not run (paused, or starved of CPU) sees only silence at
            // first: what it knows is that old. It judges again once it had time to hear the
            // others (an election timeout), and says why its view was stale.
            let stalled = looked.elapsed();
            looked = Instant::now();
            if stalled > STALL {
                tracing::warn!(
                    "this process did not run for {stalled:.1?} (paused, or starved of CPU); \
                     what it knew of the cluster is that old"
                );
                judge_from = looked + silence / 3;
                silent = false;
                silent_followers.clear();
            }
            self.note_unanswered(&metrics);
            if metrics.current_leader != leader {
                awaited = self.tell_new_leader(&metrics, leader);
                leader = metrics.current_leader;
                let seen = leader.map(|leader| (leader, self.started.elapsed()));
                *self.seen.lock().expect("leadership") = seen;
                // Told as a change of leader, not as a quorum or a leader come back.
                silent = false;
            }
            let term = metrics.current_term;
            if awaited.is_some() && self.heard_leader() == awaited {
                tracing::info!(term, leader = awaited, "following the leader");
                awaited = None;
            }
            if metrics.state != ServerState::Leader {
                silent_followers.clear();
            }
            if looked < judge_from {
                continue;
            }
            if metrics.state == ServerState::Leader {
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

    /// Tells who leads now that it changed from `before`; returns the leader if it is named
    /// but not heard from yet.
    fn tell_new_leader(&self, metrics: &RaftMetrics, before: Option<NodeId>) -> Option<NodeId> {
        let term = metrics.current_term;
        match metrics.current_leader {
            Some(leader) => {
                self.changes.fetch_add(1, Ordering::Relaxed);
                if leader == metrics.id {
                    tracing::info!(term, "this node leads");
                } else if self.heard_leader() == Some(leader) {
                    tracing::info!(term, leader, "following the leader");
                } else {
                    // As on a restart: the vote this node kept names the leader it had.
                    tracing::info!(
                        term,
                        leader,
                        "the last leader this node knows of is node {leader}; not heard from yet"
                    );
                    return Some(leader);
                }
            }
            None if before == Some(metrics.id) => {
                tracing::info!(term, "this node no longer leads; no leader known")
            }
            None => tracing::info!(term, "no leader known"),
        }
        None
    }

    /// The leader this node last heard from.
    fn heard_leader(&self) -> Option<NodeId> {
        self.heard.lock().expect("leadership").map(|(who, _)| who)
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
