//! What an operator follows a cluster by, told by each node in its log and metrics: who
//! leads, this node taking or losing leadership, and a leader that no longer hears from a
//! quorum.
//!
//! openraft keeps a leader that lost its quorum in the leader state (it cannot know whether
//! the others are down or only silent), and its own election messages are warnings at every
//! retry, which keel's default log filter hides. Without this, a node whose followers were
//! all paused reported itself leader for as long as it lasted, and logged nothing but failed
//! requests.

use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use openraft::async_runtime::WatchReceiver;
use openraft::ServerState;

use crate::node::KeelRaft;
use crate::types::NodeId;
use crate::types::RaftMetrics;

/// How often the node looks; the log it writes is about changes, not ticks.
const LOOK_EVERY: Duration = Duration::from_millis(100);

/// What the node has told so far.
#[derive(Default)]
pub(crate) struct Leadership {
    changes: AtomicU64,
}

impl Leadership {
    /// Times this node saw a new leader since it started.
    pub(crate) fn changes(&self) -> u64 {
        self.changes.load(Ordering::Relaxed)
    }

    /// Follows `raft` until it shuts down. A leader unheard by a quorum for `quorum_silence`
    /// is reported.
    pub(crate) async fn follow(self: Arc<Self>, raft: KeelRaft, quorum_silence: Duration) {
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
            }
            if metrics.state != ServerState::Leader {
                // Told as a change of leader, not as a quorum come back.
                silent = false;
                continue;
            }
            let unheard = quorum_unheard_for(&metrics).filter(|ago| *ago > quorum_silence);
            match (unheard, silent) {
                (Some(ago), false) => {
                    tracing::warn!(
                        term = metrics.current_term,
                        "this node leads but no quorum has answered it for {ago:.1?}: the other \
                         voters are down or cut off from it, and it serves nothing that needs \
                         the cluster until they answer"
                    );
                    silent = true;
                }
                (None, true) => {
                    tracing::info!(term = metrics.current_term, "a quorum answers again");
                    silent = false;
                }
                _ => {}
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
