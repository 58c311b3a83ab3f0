//! One control node's Raft: start-up, membership, and requests that must reach the leader.
//!
//! Any node accepts any request. [`RaftNode::propose`] and [`RaftNode::read_barrier`] run
//! locally when this node leads and are otherwise forwarded to the leader on the
//! [`crate::forward_stream`]; when the leader changes or is unreachable they wait for the
//! next one and try again, up to the request deadline; a request still waiting on a leader
//! when another takes over is sent to the new one at once. That retry is safe because every
//! proposal carries a request id (the client's `Idempotency-Key`, or one this node makes up),
//! and the state machine answers a repeated id with the first reply instead of applying it
//! again. A ReadIndex round done twice is just later, adding a voter that is one already
//! changes nothing, and a removal that finds the node gone already succeeds
//! ([`RaftNode::remove`]).
//!
//! Concurrent proposals on one node travel together: a batch is one forward from a follower,
//! and one message to the Raft core on the leader, which appends it to the log in one write
//! and replicates it in one request per follower. Once every member reads them
//! ([`crate::entry_format`]), a batch is also one log entry (or a few, for large commands),
//! so the per-entry work of the Raft core, the log and apply is done once per batch.
//!
//! Linearizable reads use ReadIndex: the leader confirms with a quorum that it still leads and
//! returns its commit index; the node that serves the read (leader or follower) waits until it
//! has applied that far and then reads its own state. Followers thus serve linearizable reads
//! without shipping the data through the leader.

use std::collections::BTreeMap;
use std::collections::BTreeSet;
use std::future::Future;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::Weak;
use std::time::Duration;
use std::time::Instant;

use futures::StreamExt;
use keel_storage::Reader;
use keel_storage::StateStore;
use keel_storage::Store;
use openraft::async_runtime::WatchReceiver;
use openraft::error::ChangeMembershipError;
use openraft::error::ClientWriteError;
use openraft::error::ForwardToLeader;
use openraft::error::LinearizableReadError;
use openraft::error::RaftError;
use openraft::raft::linearizable_read::Linearizer;
use openraft::raft::linearizable_read::ReadLogId;
use openraft::vote::RaftLeaderId;
use openraft::ChangeMembers;
use openraft::ReadPolicy;
use openraft::SnapshotPolicy;
use serde::Deserialize;
use serde::Serialize;
use tokio_util::sync::CancellationToken;
use tokio_util::sync::WaitForCancellationFutureOwned;
use tokio_util::task::TaskTracker;

use crate::append_stream;
use crate::entry_format;
use crate::entry_format::PeerFormats;
use crate::forward_stream::Forwarder;
use crate::leadership::Leadership;
use crate::machine::Machine;
use crate::machine::RememberedRequests;
use crate::machine::StateMachine;
use crate::network::CallError;
use crate::network::Network;
use crate::network::PeerClient;
use crate::types::KeelNode;
use crate::types::LogId;
use crate::types::NodeId;
use crate::types::Proposal;
use crate::types::Proposals;
use crate::types::RaftMetrics;
use crate::types::Reply;
use crate::types::TypeConfig;
use crate::types::Vote;
use crate::Error;

pub type KeelStateStore = StateStore<TypeConfig, Machine>;
pub type KeelRaft = openraft::Raft<TypeConfig, KeelStateStore>;

/// Timing and log-retention settings of a node.
#[derive(Debug, Clone)]
pub struct RaftConfig {
    pub heartbeat: Duration,
    pub election_timeout_min: Duration,
    pub election_timeout_max: Duration,
    /// Build a snapshot (and purge the log below it) after this many writes, or this many new
    /// entries (see [`trigger_snapshots`]).
    pub snapshot_every: u64,
    /// Log entries kept below the latest snapshot, so a briefly lagging follower can catch
    /// up from the log instead of by snapshot.
    pub keep_logs_after_snapshot: u64,
    /// How long a client request may wait for a leader and an answer.
    pub request_timeout: Duration,
    /// Local address for connections to other nodes (`None`: the system picks).
    pub peer_source_ip: Option<std::net::IpAddr>,
}

impl Default for RaftConfig {
    fn default() -> Self {
        Self {
            // A follower votes only once the leader's lease (the maximum election timeout) has
            // run out, so these bound write unavailability after a leader dies: about 0.53 s
            // measured (scripts/bench-failover.sh), against 0.85 s with 250/500 ms and 1.7 s
            // with 500/1000 ms. Three nodes and a load generator on two cores, at 256 clients
            // of every workload, held no election even at 100/200 ms.
            heartbeat: Duration::from_millis(50),
            election_timeout_min: Duration::from_millis(150),
            election_timeout_max: Duration::from_millis(300),
            snapshot_every: 100_000,
            keep_logs_after_snapshot: 5_000,
            request_timeout: Duration::from_secs(5),
            peer_source_ip: None,
        }
    }
}

/// How a read is made consistent before it is served from local state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Consistency {
    /// ReadIndex: the leader confirms its leadership with a quorum for this read.
    Linearizable,
    /// The leader's lease stands in for the quorum round; correct while clocks drift little.
    Lease,
    /// Whatever this node has applied, with no coordination.
    Stale,
}

/// A request that only the leader can carry out.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) enum LeaderRequest {
    Propose(Proposal),
    /// Proposals a follower gathered while its previous forwards were in flight.
    ProposeBatch(Vec<Proposal>),
    ReadIndex {
        lease: bool,
    },
    AddVoter {
        id: NodeId,
        node: KeelNode,
    },
    Remove {
        id: NodeId,
    },
}

#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum LeaderAnswer {
    Reply(#[serde(with = "serde_bytes")] Vec<u8>),
    /// One result per proposal of a [`LeaderRequest::ProposeBatch`], in order.
    Replies(Vec<Result<Reply, Error>>),
    ReadIndex(ReadLogId<TypeConfig>),
    Done,
}

/// Why the leader path did not produce an answer.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum NotDone {
    /// This node does not lead; the leader is given if known.
    NotLeader(Option<(NodeId, KeelNode)>),
    Failed(Error),
}

impl From<ForwardToLeader<TypeConfig>> for NotDone {
    fn from(f: ForwardToLeader<TypeConfig>) -> Self {
        NotDone::NotLeader(f.leader_id.zip(f.leader_node))
    }
}

/// One control node's Raft; see the module documentation.
pub struct RaftNode {
    id: NodeId,
    raft: KeelRaft,
    state: KeelStateStore,
    forwarder: Forwarder,
    peers: PeerClient,
    secret: String,
    config: RaftConfig,
    /// Reads waiting for a ReadIndex, for linearizable (0) and lease (1) consistency.
    read_batches: [Mutex<ReadBatch>; 2],
    /// Proposals waiting for a batch to carry them to the leader's Raft core.
    proposals: Mutex<ProposalBatch>,
    auto_ids: AutoRequestIds,
    append_streams_opened: Arc<AtomicU64>,
    leadership: Arc<Leadership>,
    peer_formats: PeerFormats,
    /// Held by the leader while it writes a membership change to the log, so that nodes
    /// joining at the same time are added one after the other instead of refused for a change
    /// in progress.
    membership_changes: tokio::sync::Mutex<()>,
    /// The log store, for the removal mark.
    log: keel_storage::LogStore<TypeConfig>,
    /// Work that calls into the Raft core for others (peer requests, batches of proposals and
    /// of reads), so that a node shutting down ends it before its Raft core stops: openraft
    /// logs each call that reaches a stopped core as an error, with its entries.
    core_calls: TaskTracker,
    /// Cancelled by [`Self::shutdown`], after the API server closed: peer requests and
    /// connections still open end, and any that come late are refused.
    shutting_down: CancellationToken,
}

/// How long a node shutting down waits for the calls into its Raft core it ended to be
/// dropped.
const CORE_DRAIN: Duration = Duration::from_secs(1);

/// Request ids for proposals whose client sent none, so that a forward retried after a
/// leader change is still applied once.
///
/// An id is this process's random prefix and a counter: unique across nodes and restarts like
/// a random id per request, without a call into the kernel's random source for every write
/// (about 1 % of a node's CPU under a write load).
struct AutoRequestIds {
    prefix: String,
    next: AtomicU64,
}

impl AutoRequestIds {
    fn new() -> Self {
        Self {
            prefix: format!("auto:{}:", uuid::Uuid::new_v4().simple()),
            next: AtomicU64::new(0),
        }
    }

    fn next(&self) -> String {
        format!(
            "{}{}",
            self.prefix,
            self.next.fetch_add(1, Ordering::Relaxed)
        )
    }
}

/// How many batches of proposals a node keeps in flight at once.
// put (64), three nodes on two cores, alternating runs of a fresh cluster each (300 000
// writes): three against two, 7 of 7 pairs better, +3.4 % summed, 63-68 against 67-69 µs of
// the nodes' CPU per write; four against three level (+1.3 % over 2 pairs), and four measured
// -2.9 % against two on an earlier day's host; five against three level too (42 200 against
// 42 300 op/s summed over 3 alternating pairs, 2026-12-07, when put (64) left 8-10 % of the CPUs
// idle).
const BATCHES_IN_FLIGHT: usize = 3;

/// Most proposals in one log entry.
pub(crate) const MAX_ENTRY_PROPOSALS: usize = 64;

/// An entry takes no more proposals once their commands reach this size, so that a batch of
/// `max_payload_entries` entries stays far below the peer streams' frame limit.
const MAX_ENTRY_COMMAND_BYTES: usize = 1 << 20;

type ProposeResult = Result<Vec<u8>, Error>;

/// A request waiting for its batch: where its answer goes, and when its caller is owed one.
struct Waiting<T> {
    answer: tokio::sync::oneshot::Sender<T>,
    deadline: Instant,
}

/// Proposals that travel together: one batch carries every proposal that arrived while the
/// earlier batches were in flight.
#[derive(Default)]
struct ProposalBatch {
    waiting: Vec<(Proposal, Waiting<ProposeResult>)>,
    in_flight: usize,
}

type ReadIndexResult = Result<ReadLogId<TypeConfig>, Error>;

/// Reads that share one ReadIndex round: every read in a batch arrived before the round
/// started, so the leadership it confirms is as recent as each of them needs.
#[derive(Default)]
struct ReadBatch {
    waiting: Vec<Waiting<ReadIndexResult>>,
    running: bool,
}

/// The requests of a batch whose callers still wait, and how long the batch may take: until
/// the latest of their deadlines. Each caller stops waiting at its own deadline, counted from
/// when it asked; counted from when its batch left instead, a request queued behind batches
/// that take their whole time (no leader, no quorum) waited twice the request timeout. A
/// request whose caller stopped waiting is not sent. `None` when no caller waits.
fn still_owed<W, R>(
    batch: Vec<W>,
    waiting: impl Fn(&W) -> &Waiting<R>,
) -> (Vec<W>, Option<Duration>) {
    let owed: Vec<W> = batch
        .into_iter()
        .filter(|request| !waiting(request).answer.is_closed())
        .collect();
    let latest = owed.iter().map(|request| waiting(request).deadline).max();
    let time = latest.map(|deadline| deadline.saturating_duration_since(Instant::now()));
    (owed, time)
}

/// Waits for the answer to a request queued with `deadline`, at most a moment past it: its
/// batch, which ends by then, answers with its reason, which is worth more than "timed out".
async fn answer_by<T>(
    deadline: Instant,
    answered: tokio::sync::oneshot::Receiver<T>,
) -> Option<Result<T, tokio::sync::oneshot::error::RecvError>> {
    let by = tokio::time::Instant::from_std(deadline + ANSWER_GRACE);
    tokio::time::timeout_at(by, answered).await.ok()
}

/// How long past its deadline a request waits for its batch's answer.
const ANSWER_GRACE: Duration = Duration::from_millis(100);

impl RaftNode {
    /// Starts the Raft node `id` on `store`, applying commands through `domain`.
    pub async fn start(
        id: NodeId,
        store: &Store,
        domain: Arc<dyn StateMachine>,
        secret: String,
        config: RaftConfig,
    ) -> Result<Arc<Self>, Error> {
        let raft_config = openraft::Config {
            cluster_name: "keel".into(),
            heartbeat_interval: config.heartbeat.as_millis() as u64,
            election_timeout_min: config.election_timeout_min.as_millis() as u64,
            election_timeout_max: config.election_timeout_max.as_millis() as u64,
            snapshot_policy: SnapshotPolicy::LogsSinceLast(config.snapshot_every),
            max_in_snapshot_log_to_keep: config.keep_logs_after_snapshot,
            install_snapshot_timeout: 600_000,
            // An entry's commands stop at MAX_ENTRY_COMMAND_BYTES plus one command (at most
            // ~1 MiB, the API's value limit), so a batch stays well under the peer routes'
            // 256 MiB body limit.
            max_payload_entries: 64,
            // Replication reads an entry as soon as the leader's append returns instead of at
            // the end of the core's loop, and the core takes acknowledgements before more
            // proposals. Commit still waits for the leader's fsync. Measured in paired runs:
            // put@64 +14 %, get@64 +12-17 %, mixed@64 +11-15 %, put@256 within noise.
            broadcast_submitted_on_append: Some(true),
            // A node that cannot win (cut off, paused, restarted on a wrong address) asks
            // whether it would before it raises its term: a higher term forced the healthy
            // leader to step down when such a node came back (3 of 3 rounds after a 3 s
            // SIGSTOP of a follower), and a cluster without a quorum raised its term about 5
            // times a second.
            enable_pre_vote: Some(true),
            ..Default::default()
        };
        let raft_config = Arc::new(
            raft_config
                .validate()
                .map_err(|e| Error::Fatal(format!("invalid Raft settings: {e}")))?,
        );
        let state = store
            .state_store(Machine::new(domain))
            .map_err(|e| Error::Fatal(e.to_string()))?;
        let peers = PeerClient::new(secret.clone(), config.peer_source_ip).sent_by(id);
        let network = Network::new(peers.clone(), config.election_timeout_min);
        let append_streams_opened = network.streams_opened();
        let peer_formats = network.peer_formats();
        let log = store.log_store();
        let removed = log
            .is_marked_removed()
            .map_err(|e| Error::Fatal(e.to_string()))?;
        let raft = KeelRaft::new(id, raft_config, network, log.clone(), state.clone())
            .await
            .map_err(|e| Error::Fatal(e.to_string()))?;
        let node = Arc::new(Self {
            id,
            raft,
            state,
            forwarder: Forwarder::new(peers.clone()),
            peers,
            secret,
            config,
            read_batches: Default::default(),
            proposals: Default::default(),
            auto_ids: AutoRequestIds::new(),
            append_streams_opened,
            leadership: Arc::new(Leadership::new(removed)),
            peer_formats,
            membership_changes: Default::default(),
            core_calls: TaskTracker::new(),
            shutting_down: CancellationToken::new(),
            log,
        });
        if removed {
            node.warn_removed();
        }
        // A leader unheard for a few election timeouts has lost its quorum, not a heartbeat.
        let quorum_silence = node.config.election_timeout_max * 3;
        tokio::spawn(
            node.leadership
                .clone()
                .follow(node.raft.clone(), quorum_silence),
        );
        tokio::spawn(trigger_snapshots(
            Arc::downgrade(&node),
            node.config.snapshot_every,
        ));
        Ok(node)
    }

    pub fn id(&self) -> NodeId {
        self.id
    }

    pub fn raft(&self) -> &KeelRaft {
        &self.raft
    }

    pub(crate) fn secret(&self) -> &str {
        &self.secret
    }

    pub(crate) fn state(&self) -> &KeelStateStore {
        &self.state
    }

    /// What this node remembers of recent request ids (for exactly-once retries).
    pub fn remembered_requests(&self) -> RememberedRequests {
        self.state.app().remembered_requests()
    }

    /// A read-only view of this node's applied state.
    pub fn reader(&self) -> Reader {
        self.state.reader()
    }

    /// Whether the leader said this node was removed (see [`Self::learn_removed`]).
    pub fn is_removed(&self) -> bool {
        self.leadership.is_removed()
    }

    /// Takes the leader's word that this node was removed: told once the change is committed
    /// (`for_good`), it keeps the mark across restarts; refused a forward, only until then (a
    /// node that joins is refused too, before the leader adds it).
    pub(crate) fn learn_removed(&self, for_good: bool) -> Result<(), Error> {
        if for_good {
            self.log
                .mark_removed()
                .map_err(|e| Error::Fatal(e.to_string()))?;
        }
        if self.leadership.mark_removed() {
            self.warn_removed();
        }
        Ok(())
    }

    fn warn_removed(&self) {
        tracing::warn!(
            "the leader says this node (uid {}) was removed from the cluster: it answers 503 \
             not_a_member to what needs the cluster; stop it, or remove its data directory and \
             join it again",
            self.id
        );
    }

    /// Times this node saw a new leader since it started.
    pub fn leader_changes(&self) -> u64 {
        self.leadership.changes()
    }

    /// How long ago a quorum last acknowledged this node's leadership, if it leads
    /// (`metrics` is this node's).
    pub fn quorum_unheard_for(&self, metrics: &RaftMetrics) -> Option<Duration> {
        crate::leadership::quorum_unheard_for(metrics)
    }

    /// While this node follows a leader it knows: how long ago that leader was last heard.
    pub fn leader_unheard_for(&self, metrics: &RaftMetrics) -> Option<Duration> {
        self.leadership.leader_unheard_for(metrics)
    }

    /// While this node leads: how long ago each other member last answered it.
    pub fn followers_unheard_for(&self, metrics: &RaftMetrics) -> Vec<(NodeId, Duration)> {
        self.leadership.followers_unheard_for(metrics)
    }

    /// A leader's AppendEntries, sent under `vote`, reached this node and was taken.
    pub(crate) fn heard_from_leader(&self, vote: &Vote) {
        self.leadership.heard_from(*vote.leader_id().node_id());
    }

    /// How many entries each follower's log is behind this leader's (empty unless it leads).
    pub fn follower_lags(&self, metrics: &RaftMetrics) -> Vec<(NodeId, u64)> {
        let last = metrics.last_log_index.unwrap_or(0);
        let Some(replication) = &metrics.replication else {
            return Vec::new();
        };
        replication
            .iter()
            .filter(|(id, _)| **id != self.id)
            .map(|(id, matched)| {
                let matched = matched.as_ref().map_or(0, |log_id| log_id.index);
                (*id, last.saturating_sub(matched))
            })
            .collect()
    }

    /// Append stream connections this node has opened to followers while it led.
    pub fn append_streams_opened(&self) -> u64 {
        self.append_streams_opened.load(Ordering::Relaxed)
    }

    /// The log entry format this node writes while it leads ([`crate::entry_format`]).
    pub fn entry_format(&self) -> u32 {
        if self.members_read_several_proposals() {
            entry_format::SEVERAL_PROPOSALS
        } else {
            entry_format::ONE_PROPOSAL
        }
    }

    /// Forward stream connections this node has opened to leaders while it followed.
    pub fn forward_streams_opened(&self) -> u64 {
        self.forwarder.opened()
    }

    /// Snapshots this node has installed from a leader since it started.
    pub fn snapshots_installed(&self) -> u64 {
        self.state.snapshots_installed()
    }

    pub fn metrics(&self) -> RaftMetrics {
        self.raft.metrics().borrow_watched().clone()
    }

    /// Waits until the Raft core stops on a failure it cannot go on from (a full or failing
    /// disk), and says what it was; never returns if the core is shut down on purpose.
    pub async fn failure(&self) -> String {
        // The server metrics change with the vote and the leader only (the full metrics, with
        // every write), and their channel closes when the core task ends, however it ends.
        let mut server = self.raft.server_metrics();
        while server.changed().await.is_ok() {}
        // A core that stops says so in its last metrics; one that says nothing panicked.
        match self.metrics().running_state {
            Err(openraft::error::Fatal::Stopped) => std::future::pending().await,
            Err(fatal) => fatal.to_string(),
            Ok(()) => "the Raft core ended unexpectedly (a panic?)".into(),
        }
    }

    /// Makes this node the single voter of a new cluster.
    pub async fn initialize(&self, addr: String) -> Result<(), Error> {
        let members = BTreeMap::from([(self.id, KeelNode { addr })]);
        self.raft
            .initialize(members)
            .await
            .map_err(|e| Error::Fatal(format!("cannot initialize the cluster: {e}")))
    }

    pub async fn is_initialized(&self) -> bool {
        self.raft.is_initialized().await.unwrap_or(false)
    }

    /// Waits until some node leads, up to `timeout`.
    pub async fn wait_for_leader(&self, timeout: Duration) -> Result<NodeId, Error> {
        let metrics = self
            .raft
            .wait(Some(timeout))
            .metrics(|m| m.current_leader.is_some(), "a leader")
            .await
            .map_err(|_| Error::NoLeader {
                retry_after: Duration::from_secs(1),
            })?;
        Ok(metrics.current_leader.expect("waited for a leader"))
    }

    /// Commits `command` through the leader and returns the domain's reply.
    ///
    /// Concurrent proposals share batches, up to [`BATCHES_IN_FLIGHT`] at a time: on the
    /// leader one batch is one message to the Raft core (one log write, one replication
    /// request), on a follower one forward to the leader.
    pub async fn propose(
        self: &Arc<Self>,
        command: Vec<u8>,
        request_id: Option<String>,
    ) -> Result<Vec<u8>, Error> {
        let request_id = request_id.unwrap_or_else(|| self.auto_ids.next());
        let proposal = Proposal {
            request_id: Some(request_id.into()),
            command: command.into(),
        };
        let (answer, answered) = tokio::sync::oneshot::channel();
        let deadline = Instant::now() + self.config.request_timeout;
        let start_batch = {
            let mut batch = self.proposals.lock().expect("proposal batch");
            batch.waiting.push((proposal, Waiting { answer, deadline }));
            let start = batch.in_flight < BATCHES_IN_FLIGHT;
            batch.in_flight += usize::from(start);
            start
        };
        if start_batch {
            self.spawn_until_shutdown(self.clone().run_proposals());
        }
        answer_by(deadline, answered)
            .await
            .ok_or_else(|| Error::Timeout("no leader answered this write in time".into()))?
            .map_err(|_| self.dropped("the batch carrying this write"))?
    }

    /// Carries batches of queued proposals to the leader until none is waiting.
    async fn run_proposals(self: Arc<Self>) {
        loop {
            let batch = {
                let mut batch = self.proposals.lock().expect("proposal batch");
                if batch.waiting.is_empty() {
                    batch.in_flight -= 1;
                    return;
                }
                std::mem::take(&mut batch.waiting)
            };
            let (batch, Some(time)) = still_owed(batch, |(_, waiting)| waiting) else {
                continue;
            };
            let (proposals, answers): (Vec<Proposal>, Vec<_>) = batch.into_iter().unzip();
            let count = proposals.len();
            let results = match self
                .on_leader(LeaderRequest::ProposeBatch(proposals), time)
                .await
            {
                Ok(LeaderAnswer::Replies(replies)) if replies.len() == count => replies
                    .into_iter()
                    .map(|reply| reply.map(|Reply(bytes)| bytes))
                    .collect(),
                Ok(other) => vec![
                    Err(Error::Fatal(format!(
                        "unexpected answer to a batch of proposals: {other:?}"
                    )));
                    count
                ],
                Err(err) => vec![Err(err); count],
            };
            for (waiting, result) in answers.into_iter().zip(results) {
                let _ = waiting.answer.send(result);
            }
        }
    }

    /// Returns once this node's state is fresh enough to serve a read of `consistency`.
    ///
    /// Concurrent reads on one node share their ReadIndex rounds (one forward to the leader,
    /// one quorum confirmation per batch) instead of each making its own.
    pub async fn read_barrier(self: &Arc<Self>, consistency: Consistency) -> Result<(), Error> {
        // Even a stale read: a removed node's state stops for good.
        if self.is_removed() {
            return Err(Error::NotAMember(self.id));
        }
        let lease = match consistency {
            Consistency::Stale => return Ok(()),
            Consistency::Lease => true,
            Consistency::Linearizable => false,
        };
        let (answer, answered) = tokio::sync::oneshot::channel();
        let deadline = Instant::now() + self.config.request_timeout;
        let start_rounds = {
            let mut batch = self.read_batches[usize::from(lease)]
                .lock()
                .expect("read batch");
            batch.waiting.push(Waiting { answer, deadline });
            !std::mem::replace(&mut batch.running, true)
        };
        if start_rounds {
            self.spawn_until_shutdown(self.clone().run_read_rounds(lease));
        }
        let read_log_id = answer_by(deadline, answered)
            .await
            .ok_or_else(|| Error::Timeout("no ReadIndex round answered this read in time".into()))?
            .map_err(|_| self.dropped("the ReadIndex round"))??;
        let linearizer = Linearizer::new(self.id, read_log_id, None);
        let catch_up = tokio::time::Instant::from_std(deadline);
        match tokio::time::timeout_at(catch_up, linearizer.await_ready(&self.raft)).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(fatal)) => Err(Error::Fatal(fatal.to_string())),
            Err(_) => Err(Error::Timeout(
                "this node did not catch up with the leader's commit index in time".into(),
            )),
        }
    }

    /// Runs ReadIndex rounds until no read is waiting.
    async fn run_read_rounds(self: Arc<Self>, lease: bool) {
        loop {
            let batch = {
                let mut batch = self.read_batches[usize::from(lease)]
                    .lock()
                    .expect("read batch");
                if batch.waiting.is_empty() {
                    batch.running = false;
                    return;
                }
                std::mem::take(&mut batch.waiting)
            };
            let (batch, Some(time)) = still_owed(batch, |waiting| waiting) else {
                continue;
            };
            let result = match self
                .on_leader(LeaderRequest::ReadIndex { lease }, time)
                .await
            {
                Ok(LeaderAnswer::ReadIndex(read_log_id)) => Ok(read_log_id),
                Ok(other) => Err(Error::Fatal(format!(
                    "unexpected answer to ReadIndex: {other:?}"
                ))),
                Err(err) => Err(err),
            };
            for waiting in batch {
                let _ = waiting.answer.send(result.clone());
            }
        }
    }

    /// Adds a node as a learner, waits for it to catch up, then makes it a voter.
    pub async fn add_voter(&self, id: NodeId, addr: String) -> Result<(), Error> {
        let request = LeaderRequest::AddVoter {
            id,
            node: KeelNode { addr },
        };
        self.on_leader(request, Duration::from_secs(120))
            .await
            .map(|_| ())
    }

    /// Has the cluster add this node as a voter at `addr`, asking through any of `members`:
    /// the last step of a join, after this node got its uid and the cluster secret (which
    /// authenticates the request, so that a join cut short by a restart can be finished
    /// without the operator's credentials). A member that does not lead names the leader,
    /// which is asked next. Members that cannot be reached, know no leader or are busy with
    /// another membership change are asked in turn, each call bounded by [`JOIN_CALL`], until
    /// `timeout`, or for longer while this node, a learner already, is still catching up (a
    /// large snapshot can take minutes, and giving up would abandon its transfer). Adding a
    /// node that is already a voter at the same address changes nothing, so asking again
    /// after an answer was lost is safe.
    pub async fn join_through(
        &self,
        members: &[String],
        addr: String,
        timeout: Duration,
    ) -> Result<(), Error> {
        let request = LeaderRequest::AddVoter {
            id: self.id,
            node: KeelNode { addr },
        };
        let mut deadline = Instant::now() + timeout;
        let mut applied_at_deadline = self.applied_index();
        let mut members = members.iter().cycle();
        let mut leader: Option<String> = None;
        let mut last_problem = String::from("no member answered");
        loop {
            let Some(target) = leader.take().or_else(|| members.next().cloned()) else {
                return Err(Error::Membership("no member to ask was given".into()));
            };
            let remaining = deadline.saturating_duration_since(Instant::now());
            let mut pause = Duration::from_millis(200);
            match self
                .forwarder
                .call(&target, &request, remaining.min(JOIN_CALL))
                .await
            {
                Ok(Ok(_)) => return Ok(()),
                Ok(Err(NotDone::NotLeader(Some((_, node))))) => {
                    leader = Some(node.addr);
                    pause = Duration::from_millis(30);
                }
                Ok(Err(NotDone::NotLeader(None))) => {
                    last_problem = format!("{target} knows no leader");
                }
                Ok(Err(NotDone::Failed(err))) if err.is_retryable() || is_busy(&err) => {
                    last_problem = format!("{target}: {err}");
                }
                Ok(Err(NotDone::Failed(err))) => return Err(err),
                Err(CallError::Refused {
                    addr,
                    status: status @ (401 | 403),
                    body,
                }) => {
                    return Err(Error::Membership(format!(
                        "{addr} refused the cluster secret this node was given ({status}: \
                         {body}); it belongs to another cluster"
                    )))
                }
                Err(err) => last_problem = err.to_string(),
            }
            tracing::debug!(%target, problem = %last_problem, "asking to join again");
            if Instant::now() + pause >= deadline {
                let applied = self.applied_index();
                if !(self.is_learner() && applied > applied_at_deadline) {
                    return Err(Error::Timeout(format!(
                        "no member added this node within {timeout:?}; the last answer: \
                         {last_problem}"
                    )));
                }
                tracing::info!(applied, "still catching up as a learner; asking to join on");
                applied_at_deadline = applied;
                deadline = Instant::now() + timeout;
            }
            tokio::time::sleep(pause).await;
        }
    }

    /// The index of the last log entry this node applied.
    fn applied_index(&self) -> u64 {
        let metrics = self.raft.metrics();
        let applied = metrics.borrow_watched().last_applied;
        applied.map_or(0, |log_id| log_id.index)
    }

    /// Whether this node is a learner in the membership it knows of.
    fn is_learner(&self) -> bool {
        let metrics = self.raft.metrics();
        let metrics = metrics.borrow_watched();
        let membership = metrics.membership_config.membership();
        let is_learner = membership.learner_ids().any(|id| id == self.id);
        is_learner
    }

    /// Removes node `id`, a member (voter or learner) when the caller checked.
    ///
    /// A request may reach the leader more than once: it goes to the next leader when the one
    /// it waits on is replaced, as every request to the leader does, and the earlier one may
    /// have carried it out before it stopped. The next leader then finds no such member and
    /// refuses; so does any leader when two removals of one node race. Either way the node is
    /// gone, as asked, so that refusal is a success once this node, up to date with the leader,
    /// knows no such member either (or learns that it is the node removed).
    pub async fn remove(self: &Arc<Self>, id: NodeId) -> Result<(), Error> {
        let refused = match self
            .on_leader(LeaderRequest::Remove { id }, Duration::from_secs(30))
            .await
        {
            Ok(_) => return Ok(()),
            Err(refused) if is_not_a_member(&refused) => refused,
            Err(err) => return Err(err),
        };
        match self.read_barrier(Consistency::Linearizable).await {
            Ok(()) => {
                let metrics = self.metrics();
                let member = metrics.membership_config.membership().get_node(&id);
                member.map_or(Ok(()), |_| Err(refused))
            }
            Err(Error::NotAMember(removed)) if removed == id => Ok(()),
            Err(_) => Err(refused),
        }
    }

    /// Carries out `request` on the leader, wherever it is; see the module documentation.
    async fn on_leader(
        &self,
        request: LeaderRequest,
        timeout: Duration,
    ) -> Result<LeaderAnswer, Error> {
        if self.is_removed() {
            return Err(Error::NotAMember(self.id));
        }
        let deadline = Instant::now() + timeout;
        let mut last_problem = None;
        loop {
            // Checked before each new attempt, not after: one made with no time left would
            // fail at once and hide the problem met before it ("did not answer within 0ns").
            if Instant::now() >= deadline {
                return Err(match last_problem {
                    Some((addr, CallError::Unreachable { reason, .. })) => {
                        Error::LeaderUnreachable { addr, reason }
                    }
                    Some((_, err @ CallError::Timeout { .. })) => Error::Timeout(err.to_string()),
                    _ => Error::NoLeader {
                        retry_after: Duration::from_secs(1),
                    },
                });
            }
            let remaining = deadline.saturating_duration_since(Instant::now());
            // A follower that knows its leader forwards at once: asking its own Raft core
            // first cost a round through the core (and a copy of every proposal) per batch.
            let leader = match self.remote_leader() {
                Some(leader) => Some(leader),
                // A leader that lost its quorum keeps a write pending; the deadline bounds it.
                None => match tokio::time::timeout(remaining, self.execute(&request)).await {
                    Err(_) => {
                        let why = "the leader could not confirm the request with a quorum in time";
                        return Err(Error::Timeout(why.into()));
                    }
                    Ok(Ok(answer)) => return Ok(answer),
                    Ok(Err(NotDone::Failed(err))) => return Err(err),
                    Ok(Err(NotDone::NotLeader(leader))) => leader,
                },
            };
            if let Some((leader_id, node)) = leader.filter(|(id, _)| *id != self.id) {
                let remaining = deadline.saturating_duration_since(Instant::now());
                let answer = tokio::select! {
                    // An answer that is ready is taken, whatever else happened meanwhile.
                    biased;
                    answer = self.forwarder.call(&node.addr, &request, remaining) => answer,
                    () = self.leader_moved_from(leader_id) => {
                        tracing::debug!(leader_id, "the leader changed while a request to it was pending; sending it to the new one");
                        self.forwarder.close(&node.addr);
                        continue;
                    }
                };
                match answer {
                    Ok(Ok(answer)) => return Ok(answer),
                    Ok(Err(NotDone::Failed(err @ Error::NotAMember(_)))) => {
                        let _ = self.learn_removed(false);
                        return Err(err);
                    }
                    Ok(Err(NotDone::Failed(err))) => return Err(err),
                    Ok(Err(NotDone::NotLeader(_))) => {}
                    Err(err) => {
                        tracing::debug!(leader_id, %err, "forwarding to the leader failed");
                        last_problem = Some((node.addr.clone(), err));
                    }
                }
            }
            let remaining = deadline.saturating_duration_since(Instant::now());
            tokio::time::sleep(remaining.min(Duration::from_millis(30))).await;
        }
    }

    /// Returns once this node hears of a leader other than `leader`. A request forwarded to a
    /// leader that was paused or cut off gets no answer, and waiting out its deadline kept the
    /// client waiting long after the other members had elected a new leader.
    pub async fn leader_moved_from(&self, leader: NodeId) {
        // Server metrics change with the vote and the leader only, not with every write.
        let mut server = self.raft.server_metrics();
        loop {
            let current = server.borrow_watched().current_leader;
            if current.is_some_and(|current| current != leader) {
                return;
            }
            if server.changed().await.is_err() {
                // Raft stopped; the request's deadline ends the wait.
                return std::future::pending().await;
            }
        }
    }

    /// `call` into the Raft core (a peer request, a connection's whole life for the streams,
    /// a batch), ended (`None`) when this node shuts down, and counted among the calls a
    /// shutdown waits for; one that comes after the shutdown never starts.
    pub(crate) fn until_shutdown<T>(
        &self,
        call: impl Future<Output = T>,
    ) -> impl Future<Output = Option<T>> {
        let shutting_down = self.shutting_down();
        self.core_calls.track_future(async move {
            tokio::select! {
                biased;
                () = shutting_down => None,
                answer = call => Some(answer),
            }
        })
    }

    /// Runs `work` on a task of its own until this node shuts down. A batch outlives the
    /// requests it carries, which the API server drops when it closes.
    fn spawn_until_shutdown(&self, work: impl Future<Output = ()> + Send + 'static) {
        tokio::spawn(self.until_shutdown(work));
    }

    /// Why the batch `what` ended without an answer: ended by a shutdown, or lost.
    fn dropped(&self, what: &str) -> Error {
        if self.shutting_down.is_cancelled() {
            Error::ShuttingDown
        } else {
            Error::Fatal(format!("{what} was dropped"))
        }
    }

    /// Resolves once this node shuts down: ends what openraft reads from a peer on a task of
    /// its own, which [`Self::until_shutdown`] cannot drop.
    pub(crate) fn shutting_down(&self) -> WaitForCancellationFutureOwned {
        self.shutting_down.clone().cancelled_owned()
    }

    /// The leader as this node last heard of it, unless that is this node or unknown.
    pub fn remote_leader(&self) -> Option<(NodeId, KeelNode)> {
        let metrics = self.raft.metrics();
        let metrics = metrics.borrow_watched();
        let leader = metrics.current_leader.filter(|id| *id != self.id)?;
        let node = metrics.membership_config.membership().get_node(&leader)?;
        Some((leader, node.clone()))
    }

    /// Carries out `request` if this node leads.
    pub(crate) async fn execute(&self, request: &LeaderRequest) -> Result<LeaderAnswer, NotDone> {
        match request {
            // From a follower of an earlier keel, which forwards some proposals one by one.
            LeaderRequest::Propose(proposal) => {
                match self
                    .write_batch(std::slice::from_ref(proposal))
                    .await?
                    .pop()
                {
                    Some(Reply(bytes)) => Ok(LeaderAnswer::Reply(bytes)),
                    None => Err(NotDone::Failed(Error::Fatal(
                        "Raft answered no result for a proposal".into(),
                    ))),
                }
            }
            LeaderRequest::ProposeBatch(proposals) => {
                let replies = self.write_batch(proposals).await?;
                Ok(LeaderAnswer::Replies(replies.into_iter().map(Ok).collect()))
            }
            LeaderRequest::ReadIndex { lease } => {
                let policy = if *lease {
                    ReadPolicy::LeaseRead
                } else {
                    ReadPolicy::ReadIndex
                };
                match self.raft.get_read_log_id(policy).await {
                    Ok((read_log_id, _)) => Ok(LeaderAnswer::ReadIndex(read_log_id)),
                    Err(RaftError::APIError(LinearizableReadError::ForwardToLeader(f))) => {
                        Err(f.into())
                    }
                    // No quorum acknowledged this leader recently: wait like for an election.
                    Err(RaftError::APIError(LinearizableReadError::QuorumNotEnough(_))) => {
                        Err(NotDone::NotLeader(None))
                    }
                    Err(RaftError::Fatal(fatal)) => {
                        Err(NotDone::Failed(Error::Fatal(fatal.to_string())))
                    }
                }
            }
            LeaderRequest::AddVoter { id, node } => {
                self.refuse_an_address_conflict(*id, node)?;
                self.refuse_an_earlier_build(*id, node).await?;
                // The lock covers the changes written to the log, not the learner's catching
                // up (minutes, with a large snapshot), which a removal need not wait for.
                let added = {
                    let _one_change_at_a_time = self.membership_changes.lock().await;
                    // Again under the lock: two joins at one address must not both pass.
                    self.refuse_an_address_conflict(*id, node)?;
                    when_membership_settles(|| self.raft.add_learner(*id, node.clone(), false))
                        .await?
                };
                self.wait_until_caught_up(*id, added.log_id).await;
                let _one_change_at_a_time = self.membership_changes.lock().await;
                let voter = ChangeMembers::AddVoterIds(BTreeSet::from([*id]));
                when_membership_settles(|| self.raft.change_membership(voter.clone(), false))
                    .await?;
                Ok(LeaderAnswer::Done)
            }
            LeaderRequest::Remove { id } => {
                let _one_change_at_a_time = self.membership_changes.lock().await;
                let membership = self
                    .raft
                    .metrics()
                    .borrow_watched()
                    .membership_config
                    .clone();
                let membership = membership.membership();
                let ids = BTreeSet::from([*id]);
                let change = if membership.voter_ids().any(|voter| voter == *id) {
                    self.refuse_a_removal_without_quorum(*id)?;
                    ChangeMembers::RemoveVoters(ids)
                } else if membership.get_node(id).is_some() {
                    ChangeMembers::RemoveNodes(ids)
                } else {
                    return Err(NotDone::Failed(Error::Membership(format!(
                        "node {id} {NOT_A_MEMBER}"
                    ))));
                };
                let addr = membership.get_node(id).map(|node| node.addr.clone());
                when_membership_settles(|| self.raft.change_membership(change.clone(), false))
                    .await?;
                if let Some(addr) = addr {
                    tokio::spawn(tell_removed(
                        self.peers.clone().addressed_to(*id),
                        addr,
                        self.config.election_timeout_min,
                    ));
                }
                Ok(LeaderAnswer::Done)
            }
        }
    }

    /// Appends `proposals` to the log in one message to the Raft core and waits for each
    /// reply, in order.
    async fn write_batch(&self, proposals: &[Proposal]) -> Result<Vec<Reply>, NotDone> {
        let fatal = |fatal: openraft::error::Fatal<TypeConfig>| {
            NotDone::Failed(Error::Fatal(fatal.to_string()))
        };
        let per_entry = if self.members_read_several_proposals() {
            MAX_ENTRY_PROPOSALS
        } else {
            1
        };
        let entries = split_into_entries(proposals, per_entry);
        let mut results = self.raft.client_write_many(entries).await.map_err(fatal)?;
        let mut replies = Vec::with_capacity(proposals.len());
        while let Some(result) = results.next().await {
            match result.map_err(fatal)? {
                Ok(written) => replies.extend(written.response.0),
                // Leadership moved: the follower sends the whole batch to the new leader,
                // and the request ids answer the ones applied here.
                Err(err) => return Err(write_error(RaftError::APIError(err))),
            }
        }
        if replies.len() != proposals.len() {
            return Err(NotDone::Failed(Error::Fatal(format!(
                "{} replies to {} proposals",
                replies.len(),
                proposals.len()
            ))));
        }
        Ok(replies)
    }

    /// Refuses to add a node that reads only one proposal per log entry (an earlier build): it
    /// would join as a learner that never catches up (see [`crate::entry_format`]). The node is
    /// asked the way a leader's append stream asks it, and the connection is closed at once.
    /// Any earlier build is refused, whether or not the log holds such entries yet. A node that
    /// cannot be asked is refused too: `add_learner` would wait out the request's deadline and
    /// leave a learner that never answers (and, never announcing its format, keeps the cluster
    /// at one write per entry).
    async fn refuse_an_earlier_build(&self, id: NodeId, node: &KeelNode) -> Result<(), NotDone> {
        // Only the leader adds members; anywhere else `add_learner` answers where it is.
        if !self.raft.metrics().borrow_watched().state.is_leader() {
            return Ok(());
        }
        let asked = self
            .peers
            .upgrade(
                &node.addr,
                append_stream::PATH,
                append_stream::PROTOCOL,
                self.config.request_timeout,
            )
            .await;
        let format = match asked {
            Ok(upgraded) => entry_format::announced_format(upgraded.entry_format.as_deref()),
            Err(CallError::Refused { status: 404, .. }) => entry_format::ONE_PROPOSAL,
            Err(err) => {
                return Err(NotDone::Failed(Error::Membership(format!(
                    "cannot ask node {id} at {} which log entries it reads: {err}. Check that it \
                     runs and that its advertised address reaches it from this node, then \
                     restart it (with --advertise corrected if need be): it asks to join again. \
                     A node of an earlier build must have its data directory emptied and join \
                     again instead",
                    node.addr
                ))))
            }
        };
        if format >= entry_format::SEVERAL_PROPOSALS {
            return Ok(());
        }
        Err(NotDone::Failed(Error::Membership(format!(
            "node {id} at {} answered as an earlier keel (or not keel): it reads one write per \
             log entry and cannot follow this cluster's log. Stop it, empty its data directory \
             (it holds this join's identity), start it with this leader's keel build or a later \
             one, and join it again",
            node.addr
        ))))
    }

    /// Refuses to add `id` at an address another member has (a node that lost its data and
    /// joined again beside its old self: one process would count as two voters), or at an
    /// address other than the one it is a member at (openraft would keep the old address,
    /// and the node would wait to be reached there).
    fn refuse_an_address_conflict(&self, id: NodeId, node: &KeelNode) -> Result<(), NotDone> {
        let metrics = self.raft.metrics();
        let metrics = metrics.borrow_watched();
        let membership = metrics.membership_config.membership();
        let namesake = membership
            .nodes()
            .find(|(uid, member)| **uid != id && member.addr == node.addr);
        if let Some((other, _)) = namesake {
            return Err(NotDone::Failed(Error::Membership(format!(
                "{} is the address of member {other} already: one process cannot be two voters. \
                 If node {other} is gone, remove it first (POST /v1/nodes/{other}/actions/remove)",
                node.addr
            ))));
        }
        match membership.get_node(&id) {
            Some(member) if member.addr != node.addr => {
                Err(NotDone::Failed(Error::Membership(format!(
                    "node {id} is a member at {} and now asks to join at {}. Restart it with \
                     --advertise {}; or remove it (POST /v1/nodes/{id}/actions/remove), empty \
                     its data directory and join it again",
                    member.addr, node.addr, member.addr
                ))))
            }
            _ => Ok(()),
        }
    }

    /// Waits until the learner `id` is replicated to within openraft's lag threshold of the
    /// log's end and has the entry that `added` it, so that promoting it does not stall
    /// commits while it catches up; or until this node stops leading or the learner is
    /// removed. The caller's deadline bounds the wait.
    async fn wait_until_caught_up(&self, id: NodeId, added: LogId) {
        let lag = self.raft.config().replication_lag_threshold;
        let caught_up = |metrics: &RaftMetrics| {
            let Some(replication) = &metrics.replication else {
                return true;
            };
            let Some(matched) = replication.get(&id) else {
                return metrics
                    .membership_config
                    .membership()
                    .get_node(&id)
                    .is_none();
            };
            let matched = matched.as_ref().map_or(0, |log_id| log_id.index);
            matched >= added.index && matched + lag >= metrics.last_log_index.unwrap_or(0)
        };
        let wait = self.raft.wait(None);
        if let Err(err) = wait.metrics(caught_up, "a new learner to catch up").await {
            tracing::warn!(id, %err, "stopped waiting for a new learner to catch up");
        }
    }

    /// Whether every other member, voter or learner, announced that it reads entries of
    /// several proposals.
    fn members_read_several_proposals(&self) -> bool {
        let metrics = self.raft.metrics();
        let metrics = metrics.borrow_watched();
        let membership = metrics.membership_config.membership();
        let others = membership
            .nodes()
            .map(|(id, _)| *id)
            .filter(|id| *id != self.id);
        self.peer_formats.all_read_several(others)
    }

    /// Refuses the proposals and reads a node forwards once it is no longer a member: removed,
    /// it may never learn so, and would go on serving as one. Joins are asked before the
    /// joiner is a member and pass.
    pub(crate) fn refuse_non_member(
        &self,
        sender: NodeId,
        request: &LeaderRequest,
    ) -> Option<NotDone> {
        let serves_clients = matches!(
            request,
            LeaderRequest::Propose(_)
                | LeaderRequest::ProposeBatch(_)
                | LeaderRequest::ReadIndex { .. }
        );
        let metrics = self.raft.metrics();
        let metrics = metrics.borrow_watched();
        let leads = metrics.current_leader == Some(self.id);
        let member = metrics
            .membership_config
            .membership()
            .get_node(&sender)
            .is_some();
        (serves_clients && leads && !member).then_some(NotDone::Failed(Error::NotAMember(sender)))
    }

    /// How long ago `id` acknowledged a heartbeat of this leader (sent then), if within
    /// `within` (and zero for the leader itself): whether it is up, as far as a leader can tell.
    fn acked_lately(
        &self,
        metrics: &RaftMetrics,
        id: NodeId,
        within: Duration,
    ) -> Option<Duration> {
        if id == self.id {
            return Some(Duration::ZERO);
        }
        let ack = metrics.heartbeat.as_ref()?.get(&id)?.as_ref()?;
        Some(openraft::Instant::elapsed(&**ack)).filter(|ago| *ago < within)
    }

    /// Refuses to remove voter `id` unless a quorum of the voters left is up: the change passes
    /// through a joint membership that needs a quorum of both, and one that cannot get it
    /// leaves the cluster stuck in between, taking no writes. Only a leader knows who answers:
    /// any other node sends the request on to the leader it knows.
    fn refuse_a_removal_without_quorum(&self, id: NodeId) -> Result<(), NotDone> {
        let metrics = self.metrics();
        if metrics.current_leader != Some(self.id) {
            return Err(NotDone::NotLeader(self.remote_leader()));
        }
        // Twice the longest election timeout: a slow link's acknowledgements come late, and a
        // voter counted down by mistake refuses a removal that would have gone through.
        let within =
            Duration::from_millis(self.raft.config().election_timeout_max).saturating_mul(2);
        let left: Vec<NodeId> = metrics
            .membership_config
            .membership()
            .voter_ids()
            .filter(|voter| *voter != id)
            .collect();
        if left.is_empty() {
            return Err(NotDone::Failed(Error::Membership(format!(
                "node {id} is the cluster's last voter, and a cluster cannot go on without one: \
                 add another voter first (then remove this one), or stop the node and empty its \
                 data directory to end the cluster"
            ))));
        }
        let (up, down): (Vec<NodeId>, Vec<NodeId>) = left
            .iter()
            .partition(|voter| self.acked_lately(&metrics, **voter, within).is_some());
        if up.len() * 2 > left.len() {
            return Ok(());
        }
        Err(NotDone::Failed(Error::Membership(format!(
            "removing node {id} would leave voters {left:?}, of which {down:?} do not answer: \
             the change needs a quorum of them up. Bring those nodes back (or retry in a moment \
             if they just came back), or remove a node that is down first"
        ))))
    }

    /// Hands leadership to the voter whose log is furthest along, if this node leads, and
    /// waits (at most [`HANDOVER_WAIT`]) until another node leads. A leader that just stopped
    /// would leave the cluster without one until an election timeout passed and an election
    /// was held; handed over, the next leader starts at once.
    pub async fn hand_over_leadership(&self) {
        // Silences from here on are this node's stop, or the others' of the same stop.
        self.leadership.stop_telling();
        let metrics = self.metrics();
        if metrics.current_leader != Some(self.id) {
            return;
        }
        let matched = |id: &NodeId| {
            let replication = metrics.replication.as_ref()?;
            replication.get(id)?.as_ref().map(|log_id| log_id.index)
        };
        // A voter that acknowledged no heartbeat lately may be down: asked to take over, it
        // would leave the cluster to an ordinary election after all.
        let alive_within = Duration::from_millis(self.raft.config().election_timeout_min);
        let Some(successor) = metrics
            .membership_config
            .membership()
            .voter_ids()
            .filter(|id| *id != self.id)
            .filter_map(|id| Some((id, self.acked_lately(&metrics, id, alive_within)?)))
            .max_by_key(|(id, ago)| (matched(id), std::cmp::Reverse(*ago)))
            .map(|(id, _)| id)
        else {
            return;
        };
        let started = Instant::now();
        if let Err(err) = self.raft.trigger().transfer_leader(successor).await {
            tracing::warn!(%err, "cannot hand leadership over");
            return;
        }
        let handed = self
            .raft
            .wait(Some(HANDOVER_WAIT))
            .metrics(
                |m| m.current_leader.is_some_and(|leader| leader != self.id),
                "another node to lead",
            )
            .await;
        // Another leader may also come of an ordinary election: the handover stops heartbeats.
        match handed.map(|metrics| metrics.current_leader) {
            Ok(Some(leader)) if leader == successor => tracing::info!(
                successor,
                "handed leadership over in {:.0?}",
                started.elapsed()
            ),
            Ok(Some(leader)) => tracing::info!(
                successor,
                "node {leader} leads now, not the successor asked: an election came first"
            ),
            // openraft's timeout error carries a dump of the whole metrics.
            Ok(None) | Err(_) => tracing::warn!(
                successor,
                "leadership was not handed over in {HANDOVER_WAIT:?} (the successor did not \
                 take it: down, or cut off?); the others elect a leader once this node is gone"
            ),
        }
    }

    pub async fn shutdown(&self) {
        self.shutting_down.cancel();
        self.core_calls.close();
        if tokio::time::timeout(CORE_DRAIN, self.core_calls.wait())
            .await
            .is_err()
        {
            tracing::debug!("calls into Raft still running {CORE_DRAIN:?} after the stop");
        }
        if let Err(err) = self.raft.shutdown().await {
            tracing::warn!(%err, "Raft did not shut down cleanly");
        }
    }
}

/// How long a stopping leader waits for its successor to take over.
const HANDOVER_WAIT: Duration = Duration::from_secs(2);

/// The longest one call of a join to a member may take: a member that accepts the
/// connection and then stalls must not use up the whole join.
pub const JOIN_CALL: Duration = Duration::from_secs(30);

/// How a leader refuses to remove a node that is not a member. Matched by its text, as
/// leaders of earlier builds word it: a variant of its own would not decode on their nodes.
const NOT_A_MEMBER: &str = "is not a member of this cluster";

fn is_not_a_member(err: &Error) -> bool {
    matches!(err, Error::Membership(message) if message.ends_with(NOT_A_MEMBER))
}

/// Whether `err` is openraft refusing a membership change because another is in progress, as
/// a leader of an earlier build (without [`when_membership_settles`]) answers. Matched by
/// openraft's text: a variant of its own would not decode on nodes of earlier builds.
fn is_busy(err: &Error) -> bool {
    matches!(err, Error::Membership(message) if message.contains("undergoing a configuration change"))
}

/// How long a membership change waits for one in progress (left by an earlier leader, or
/// made by hand with openraft's API) to be committed before it is refused.
const MEMBERSHIP_SETTLE: Duration = Duration::from_secs(10);

/// Runs the membership `change`, again while openraft refuses it because an earlier change is
/// not committed yet, for up to [`MEMBERSHIP_SETTLE`].
async fn when_membership_settles<T, Change, Changed>(change: Change) -> Result<T, NotDone>
where
    Change: Fn() -> Changed,
    Changed: std::future::Future<Output = Result<T, WriteError>>,
{
    let deadline = Instant::now() + MEMBERSHIP_SETTLE;
    loop {
        match change().await {
            Err(RaftError::APIError(ClientWriteError::ChangeMembershipError(
                ChangeMembershipError::InProgress(_),
            ))) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            result => return result.map_err(write_error),
        }
    }
}

type WriteError = RaftError<TypeConfig, ClientWriteError<TypeConfig>>;

fn write_error(err: WriteError) -> NotDone {
    match err {
        RaftError::APIError(ClientWriteError::ForwardToLeader(f)) => f.into(),
        // The entry was dropped by a new leader; its request id makes a retry safe.
        RaftError::APIError(ClientWriteError::LogEntryDiscarded(f)) => f.into(),
        RaftError::APIError(ClientWriteError::ChangeMembershipError(e)) => {
            NotDone::Failed(Error::Membership(e.to_string()))
        }
        RaftError::APIError(ClientWriteError::PreconditionFailed(e)) => {
            NotDone::Failed(Error::Membership(e.to_string()))
        }
        RaftError::Fatal(fatal) => NotDone::Failed(Error::Fatal(fatal.to_string())),
    }
}

/// Builds a snapshot once `every` proposals were applied since the last one, for as long as
/// the node runs.
///
/// openraft's own policy (kept as a backstop) counts log entries, and an entry holds up to
/// [`MAX_ENTRY_PROPOSALS`] writes: by itself it would let the log grow that many times longer
/// under load than at one write per entry, and snapshots come that much rarer. After a
/// restart the count starts afresh.
async fn trigger_snapshots(node: Weak<RaftNode>, every: u64) {
    let mut ticker = tokio::time::interval(SNAPSHOT_CHECK);
    let mut seen_snapshot = None;
    let mut counted_from = 0;
    loop {
        ticker.tick().await;
        let Some(node) = node.upgrade() else {
            return;
        };
        let applied = node.state.app().proposals_applied();
        let snapshot = node.raft.metrics().borrow_watched().snapshot;
        if snapshot != seen_snapshot {
            seen_snapshot = snapshot;
            counted_from = applied;
        }
        if applied - counted_from >= every {
            counted_from = applied;
            if let Err(fatal) = node.raft.trigger().snapshot().await {
                tracing::warn!(%fatal, "Raft stopped; no more snapshots are triggered by writes");
                return;
            }
        }
    }
}

/// How often [`trigger_snapshots`] looks at the count.
const SNAPSHOT_CHECK: Duration = Duration::from_millis(200);

/// Splits `proposals` into log entries, in order, of at most `per_entry` proposals and within
/// [`MAX_ENTRY_COMMAND_BYTES`].
fn split_into_entries(proposals: &[Proposal], per_entry: usize) -> Vec<Proposals> {
    let mut entries = Vec::new();
    let mut entry: Vec<Proposal> = Vec::new();
    let mut bytes = 0;
    for proposal in proposals {
        if entry.len() == per_entry || bytes >= MAX_ENTRY_COMMAND_BYTES {
            entries.push(std::mem::take(&mut entry).into());
            bytes = 0;
        }
        bytes += proposal.command.len();
        entry.push(proposal.clone());
    }
    if !entry.is_empty() {
        entries.push(entry.into());
    }
    entries
}

/// Tells the node `peer` is addressed to, at `addr`, that it was removed: at once, then every
/// few seconds for [`TELL_REMOVED_FOR`] while it does not answer (it may be down or paused, and
/// come back believing it a member). A node of an earlier build answers 404 and learns when it
/// next forwards.
async fn tell_removed(peer: PeerClient, addr: String, timeout: Duration) {
    let started = Instant::now();
    loop {
        let told = peer
            .call::<_, Result<(), String>>(&addr, crate::service::REMOVED_PATH, &(), timeout)
            .await;
        let problem = match told {
            Ok(Ok(())) | Err(CallError::Refused { status: 404, .. }) => return,
            Ok(Err(problem)) => problem,
            Err(err) => err.to_string(),
        };
        if started.elapsed() > TELL_REMOVED_FOR {
            tracing::info!(%addr, %problem, "gave up telling a removed node so");
            return;
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}

/// How long a leader keeps telling a removed node that does not answer.
const TELL_REMOVED_FOR: Duration = Duration::from_secs(600);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_membership_change_in_progress_reads_as_busy_and_other_refusals_do_not() {
        let in_progress = ChangeMembershipError::InProgress(openraft::error::InProgress {
            committed: None,
            membership_log_id: None,
        });
        let refused = write_error(RaftError::APIError(
            ClientWriteError::ChangeMembershipError(in_progress),
        ));
        let NotDone::Failed(busy) = refused else {
            panic!("{refused:?}");
        };
        assert!(is_busy(&busy), "{busy:?}");
        let permanent = Error::Membership("node 4 answered as an earlier keel".into());
        assert!(!is_busy(&permanent));
        assert!(!is_busy(&Error::Timeout(
            "undergoing a configuration change".into()
        )));
    }

    #[test]
    fn a_batch_becomes_entries_within_the_limits_in_order() {
        let proposal = |n: usize, bytes: usize| Proposal {
            request_id: Some(n.to_string().into()),
            command: vec![0; bytes].into(),
        };
        let sizes =
            |entries: &[Proposals]| -> Vec<usize> { entries.iter().map(|e| e.0.len()).collect() };
        assert!(split_into_entries(&[], MAX_ENTRY_PROPOSALS).is_empty());
        let small: Vec<_> = (0..MAX_ENTRY_PROPOSALS * 2 + 1)
            .map(|n| proposal(n, 300))
            .collect();
        let entries = split_into_entries(&small, MAX_ENTRY_PROPOSALS);
        assert_eq!(
            sizes(&entries),
            [MAX_ENTRY_PROPOSALS, MAX_ENTRY_PROPOSALS, 1]
        );
        let in_order: Vec<Proposal> = entries.iter().flat_map(|e| e.0.iter().cloned()).collect();
        assert_eq!(in_order, small);
        // An entry closes once its commands reach the limit; a large command still fits.
        let large = [
            proposal(0, MAX_ENTRY_COMMAND_BYTES - 1),
            proposal(1, 1),
            proposal(2, MAX_ENTRY_COMMAND_BYTES * 2),
            proposal(3, 1),
        ];
        assert_eq!(
            sizes(&split_into_entries(&large, MAX_ENTRY_PROPOSALS)),
            [2, 1, 1]
        );
        assert_eq!(sizes(&split_into_entries(&small[..3], 1)), [1, 1, 1]);
    }

    #[test]
    fn auto_request_ids_repeat_neither_within_a_process_nor_across_restarts() {
        let before_restart = AutoRequestIds::new();
        let after_restart = AutoRequestIds::new();
        let ids: BTreeSet<String> = (0..1000)
            .flat_map(|_| [before_restart.next(), after_restart.next()])
            .collect();
        assert_eq!(ids.len(), 2000);
    }
}
