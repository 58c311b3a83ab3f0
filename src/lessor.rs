//! The leader's lessor: the clock half of leases (see `domain::lease`).
//!
//! Only the leader keeps deadlines, in memory. A refresh moves a deadline and costs no log
//! entry, so thousands of agents refreshing every few seconds add no Raft traffic. Every tick
//! the lessor reconciles its deadlines with the replicated lease table (new leases get
//! now + TTL, revoked ones are dropped) and proposes one `Expire` command for every lease
//! whose deadline has passed. When a node becomes leader it first catches up with the log,
//! then starts every deadline at now + TTL: a lease refreshed just before the old leader
//! died cannot expire early because the new one never saw that refresh.
//!
//! A refresh, or a question of the time a lease has left, is refused once the deadline has
//! passed (the lease is being expired, as etcd does), and by a leader that has not heard from a
//! quorum within the minimum election timeout: a deposed leader cut off from the majority must
//! not promise a TTL that the new leader's clock will not honour. Deadlines are kept per grant
//! (id and granting log index), so an id revoked and granted again starts afresh.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;
use std::time::Instant;

use keel_raft::Consistency;
use openraft::Instant as _;
use openraft::ServerState;

use crate::domain::lease;
use crate::domain::lease::Lease;
use crate::domain::lease::LeaseCommand;
use crate::domain::Command;
use crate::node::Node;
use crate::Error;

/// How often deadlines are checked; expiry happens at most this late.
const TICK: Duration = Duration::from_millis(100);

/// Most leases expired by one command.
const MAX_EXPIRE_BATCH: usize = 1000;

/// A lease as the lessor tracks it: its id and the log index that granted it.
type Grant = (u64, u64);

#[derive(Default)]
struct Deadlines {
    /// The term in which these deadlines were set; a new term starts them afresh.
    term: Option<u64>,
    by_lease: HashMap<Grant, Instant>,
}

#[derive(Default)]
pub struct Lessor {
    deadlines: Mutex<Deadlines>,
}

/// Why the lessor could not answer here.
pub enum LessorError {
    /// This node does not lead; the request belongs on the leader.
    NotLeader,
    NotFound,
    Failed(Error),
}

impl Lessor {
    /// Moves lease `id`'s deadline to now + TTL; returns the TTL.
    pub fn refresh(&self, node: &Node, id: u64) -> Result<Duration, LessorError> {
        self.with_live_lease(node, id, |lease, deadline, now| {
            let ttl = Duration::from_millis(lease.ttl_ms);
            *deadline = now + ttl;
            ttl
        })
    }

    /// Lease `id` and the time it has left unless refreshed.
    pub fn time_to_live(&self, node: &Node, id: u64) -> Result<(Lease, Duration), LessorError> {
        self.with_live_lease(node, id, |lease, deadline, now| {
            (lease, deadline.saturating_duration_since(now))
        })
    }

    /// Runs `act` on lease `id`, its deadline and the time now, on a leader that may speak for
    /// the deadlines: one whose lessor has set them in the current term and that has heard
    /// from a quorum within the minimum election timeout. A lease granted since the last tick
    /// gets its deadline here (now + TTL, which the tick keeps), so what is answered is what
    /// the lessor holds to. A lease past its deadline is being expired, so it is not found.
    fn with_live_lease<T>(
        &self,
        node: &Node,
        id: u64,
        act: impl FnOnce(Lease, &mut Instant, Instant) -> T,
    ) -> Result<T, LessorError> {
        let raft = node.raft().map_err(LessorError::Failed)?;
        let metrics = raft.metrics();
        // A single voter is its own quorum; openraft records no acknowledgement for it.
        let sole_voter = metrics
            .membership_config
            .membership()
            .voter_ids()
            .eq([raft.id()]);
        let quorum_heard_from = sole_voter
            || metrics
                .last_quorum_acked
                .as_ref()
                .is_some_and(|at| at.elapsed() < node.settings.raft.election_timeout_min);
        let mut deadlines = self.deadlines.lock().expect("lessor");
        if metrics.state != ServerState::Leader
            || deadlines.term != Some(metrics.current_term)
            || !quorum_heard_from
        {
            return Err(LessorError::NotLeader);
        }
        let lease = lease::get(&raft.reader(), id)
            .map_err(|e| LessorError::Failed(e.into()))?
            .ok_or(LessorError::NotFound)?;
        let now = Instant::now();
        let deadline = deadlines
            .by_lease
            .entry((lease.id, lease.granted_at))
            .or_insert(now + Duration::from_millis(lease.ttl_ms));
        if *deadline <= now {
            return Err(LessorError::NotFound);
        }
        Ok(act(lease, deadline, now))
    }

    /// Runs the expiry loop until the node begins to stop: a read or an expiry still waiting
    /// for a quorum when the Raft core stops would fail for nothing, and the next leader
    /// restarts every deadline anyway.
    pub async fn run(self: Arc<Self>, node: Arc<Node>) {
        let stopped = node.stopped();
        let expiring = async {
            let mut ticker = tokio::time::interval(TICK);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticker.tick().await;
                if let Err(err) = self.tick(&node).await {
                    tracing::debug!(%err, "lessor tick failed");
                }
            }
        };
        tokio::select! {
            () = expiring => {}
            () = stopped => {}
        }
    }

    async fn tick(&self, node: &Node) -> Result<(), Error> {
        let Ok(raft) = node.raft() else {
            return Ok(());
        };
        let metrics = raft.metrics();
        if metrics.state != ServerState::Leader {
            let mut deadlines = self.deadlines.lock().expect("lessor");
            deadlines.term = None;
            deadlines.by_lease.clear();
            return Ok(());
        }
        let new_term = self.deadlines.lock().expect("lessor").term != Some(metrics.current_term);
        if new_term {
            // Apply everything the previous leaders committed before trusting the table.
            raft.read_barrier(Consistency::Linearizable).await?;
        }
        let leases = lease::all(&raft.reader())?;
        let now = Instant::now();
        let expired: Vec<Grant> = {
            let mut deadlines = self.deadlines.lock().expect("lessor");
            if new_term {
                deadlines.term = Some(metrics.current_term);
                deadlines.by_lease.clear();
            }
            let mut live = HashMap::with_capacity(leases.len());
            for lease in &leases {
                let grant = (lease.id, lease.granted_at);
                let deadline = deadlines
                    .by_lease
                    .get(&grant)
                    .copied()
                    .unwrap_or(now + Duration::from_millis(lease.ttl_ms));
                live.insert(grant, deadline);
            }
            deadlines.by_lease = live;
            let mut expired: Vec<Grant> = deadlines
                .by_lease
                .iter()
                .filter(|(_, deadline)| **deadline <= now)
                .map(|(grant, _)| *grant)
                .collect();
            expired.sort_unstable();
            expired.truncate(MAX_EXPIRE_BATCH);
            expired
        };
        if expired.is_empty() {
            return Ok(());
        }
        node.propose(
            &Command::Lease(LeaseCommand::Expire {
                leases: expired.clone(),
            }),
            None,
        )
        .await?;
        // Told once committed: a leader without a quorum proposes the same expiry again after
        // each attempt times out.
        tracing::info!(leases = ?expired, "leases expired");
        let mut deadlines = self.deadlines.lock().expect("lessor");
        for grant in expired {
            deadlines.by_lease.remove(&grant);
        }
        Ok(())
    }
}
