//! The peer streams between two in-process nodes on real RocksDB stores and real HTTP:
//! replication through the append stream and forwarding through the forward stream, and for
//! each a peer that answers the upgrade with 404 like a keel from before it, which must still
//! get every entry or forward (one HTTP request at a time).

use std::collections::BTreeSet;
use std::sync::atomic::AtomicUsize;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::Request;
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::IntoResponse;
use keel_raft::append_stream;
use keel_raft::entry_format;
use keel_raft::forward_stream;
use keel_raft::service::RaftSlot;
use keel_raft::types::KeelNode;
use keel_raft::Consistency;
use keel_raft::RaftConfig;
use keel_raft::RaftNode;
use keel_raft::StateMachine;
use keel_storage::Error;
use keel_storage::KvRead;
use keel_storage::Store;
use keel_storage::Txn;
use openraft::ChangeMembers;

/// Stores every command under its log index and answers the command it applied, so that a
/// proposer can tell its own reply from another's in the same batch.
struct Recorder;

impl StateMachine for Recorder {
    fn apply(&self, index: u64, command: &[u8], txn: &mut Txn<'_>) -> Result<Vec<u8>, Error> {
        txn.put(index.to_be_bytes().to_vec(), command.to_vec());
        Ok(command.to_vec())
    }
}

/// What a node's peer routes were asked for.
#[derive(Default)]
struct Seen {
    upgrades: AtomicUsize,
    single_appends: AtomicUsize,
    forward_upgrades: AtomicUsize,
    single_forwards: AtomicUsize,
}

struct TestNode {
    raft: Arc<RaftNode>,
    addr: String,
    seen: Arc<Seen>,
    _dir: tempfile::TempDir,
}

/// What a node's peer routes answer, as the builds of keel did.
#[derive(Clone, Copy, PartialEq)]
enum Build {
    /// This one.
    Current,
    /// Append and forward streams, but no entry format in the upgrade's answer: one proposal
    /// per entry.
    WithoutEntryFormats,
    /// No streams: upgrades answer 404.
    WithoutStreams,
}

/// Starts node `id` on a free port; with `speaks_streams` false its upgrades answer 404.
async fn start(id: u64, speaks_streams: bool) -> TestNode {
    let build = if speaks_streams {
        Build::Current
    } else {
        Build::WithoutStreams
    };
    start_as(id, build).await
}

/// Starts node `id` on a free port, answering as `build`.
async fn start_as(id: u64, build: Build) -> TestNode {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let raft = RaftNode::start(
        id,
        &store,
        Arc::new(Recorder),
        "secret".into(),
        RaftConfig::default(),
    )
    .await
    .unwrap();
    let slot = RaftSlot::default();
    slot.set(raft.clone()).ok().unwrap();
    let seen = Arc::new(Seen::default());
    let counted = seen.clone();
    let routes = keel_raft::service::router(slot).layer(axum::middleware::from_fn(
        move |request: Request, next: Next| {
            let seen = counted.clone();
            async move {
                let counter = match request.uri().path() {
                    append_stream::PATH => &seen.upgrades,
                    "/raft/append" => &seen.single_appends,
                    forward_stream::PATH => &seen.forward_upgrades,
                    forward_stream::SINGLE_PATH => &seen.single_forwards,
                    _ => return next.run(request).await,
                };
                counter.fetch_add(1, Ordering::SeqCst);
                let upgrade = [append_stream::PATH, forward_stream::PATH];
                if build == Build::WithoutStreams && upgrade.contains(&request.uri().path()) {
                    return StatusCode::NOT_FOUND.into_response();
                }
                let mut response = next.run(request).await;
                if build == Build::WithoutEntryFormats {
                    response.headers_mut().remove(entry_format::HEADER);
                }
                response
            }
        },
    ));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    tokio::spawn(async move { axum::serve(listener, routes).await.unwrap() });
    TestNode {
        raft,
        addr,
        seen,
        _dir: dir,
    }
}

/// Node 1, the leader of a cluster of its own.
async fn leader(speaks_streams: bool) -> TestNode {
    let leader = start(1, speaks_streams).await;
    leader.raft.initialize(leader.addr.clone()).await.unwrap();
    leader
        .raft
        .raft()
        .wait(Some(Duration::from_secs(10)))
        .applied_index_at_least(Some(1), "the first membership")
        .await
        .unwrap();
    leader
}

/// A two-node cluster: node 1 leads, node 2 follows.
async fn two_nodes(leader_speaks_streams: bool, follower_speaks_streams: bool) -> [TestNode; 2] {
    let follower = start(2, follower_speaks_streams).await;
    let leader = leader(leader_speaks_streams).await;
    if follower_speaks_streams {
        leader
            .raft
            .add_voter(2, follower.addr.clone())
            .await
            .unwrap();
    } else {
        // A leader refuses to add a node of an earlier build now, so this one is made a
        // member the way it was before that: as a cluster in the middle of an upgrade has it.
        let raft = leader.raft.raft();
        let node = KeelNode {
            addr: follower.addr.clone(),
        };
        raft.add_learner(2, node, true).await.unwrap();
        raft.change_membership(ChangeMembers::AddVoterIds(BTreeSet::from([2])), false)
            .await
            .unwrap();
    }
    [leader, follower]
}

/// Proposes `writes` commands concurrently through `via`, so that several share a batch, and
/// checks that every one was acknowledged with its own reply.
async fn propose(via: &TestNode, writes: usize) {
    let proposals = (0..writes).map(|n| {
        let raft = via.raft.clone();
        async move {
            let command = format!("write {n}").into_bytes();
            let reply = raft.propose(command.clone(), None).await.unwrap();
            assert_eq!(
                String::from_utf8_lossy(&reply),
                String::from_utf8_lossy(&command),
                "a proposal got another one's reply"
            );
        }
    });
    futures::future::join_all(proposals).await;
}

/// Checks that `follower` applied every entry `leader` has, and the same ones. It waits for the
/// follower's applied index, not for a key of the last entry: that may be the blank entry of a
/// new term (an election on a loaded machine), which stores nothing.
async fn same_entries(leader: &TestNode, follower: &TestNode) {
    let last = leader.raft.metrics().last_applied.unwrap().index;
    follower
        .raft
        .raft()
        .wait(Some(Duration::from_secs(10)))
        .applied_index_at_least(Some(last), "the leader's last entry")
        .await
        .unwrap_or_else(|err| panic!("the follower never applied entry {last}: {err}"));
    for index in 1..=last {
        assert_eq!(
            follower.raft.reader().get(&index.to_be_bytes()).unwrap(),
            leader.raft.reader().get(&index.to_be_bytes()).unwrap(),
            "entry {index} differs"
        );
    }
}

/// A two-node cluster whose follower does or does not speak the append stream, `writes`
/// commands proposed on the leader; returns the follower once it applied all of them.
async fn replicate(follower_speaks_stream: bool, writes: usize) -> TestNode {
    let [leader, follower] = two_nodes(true, follower_speaks_stream).await;
    propose(&leader, writes).await;
    same_entries(&leader, &follower).await;
    follower
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_gets_every_entry_through_the_stream() {
    let follower = replicate(true, 200).await;
    // Connections are kept across sessions: one for entries, one for heartbeats, and new ones
    // only when openraft restarts a stream (as when the learner became a voter); one more is
    // the leader asking the node what it reads before adding it.
    let upgrades = follower.seen.upgrades.load(Ordering::SeqCst);
    assert!((2..=5).contains(&upgrades), "{upgrades} connections");
    assert_eq!(
        follower.seen.single_appends.load(Ordering::SeqCst),
        0,
        "entries went around the stream"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_without_the_stream_gets_every_entry_one_request_at_a_time() {
    let follower = replicate(false, 200).await;
    assert!(follower.seen.single_appends.load(Ordering::SeqCst) > 0);
    // The refusal is remembered: the leader does not ask again for every heartbeat.
    let upgrades = follower.seen.upgrades.load(Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let heartbeats = follower.seen.single_appends.load(Ordering::SeqCst);
    assert_eq!(follower.seen.upgrades.load(Ordering::SeqCst), upgrades);
    assert!(upgrades <= 2, "asked {upgrades} times");
    assert!(heartbeats > 0);
}

/// Writes and linearizable reads through the follower of a leader that does or does not speak
/// the forward stream; returns the leader once every write was acknowledged and applied on
/// both nodes.
async fn forward(leader_speaks_stream: bool) -> [TestNode; 2] {
    let [leader, follower] = two_nodes(leader_speaks_stream, true).await;
    let reads = (0..20).map(|_| follower.raft.read_barrier(Consistency::Linearizable));
    let (_, reads) = tokio::join!(propose(&follower, 200), futures::future::join_all(reads));
    for read in reads {
        read.unwrap();
    }
    same_entries(&leader, &follower).await;
    [leader, follower]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_forwards_writes_and_reads_through_one_stream() {
    let [leader, follower] = forward(true).await;
    assert_eq!(leader.seen.forward_upgrades.load(Ordering::SeqCst), 1);
    assert_eq!(follower.raft.forward_streams_opened(), 1);
    assert_eq!(
        leader.seen.single_forwards.load(Ordering::SeqCst),
        0,
        "forwards went around the stream"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_without_the_stream_gets_forwards_one_request_at_a_time() {
    let [leader, follower] = forward(false).await;
    assert!(leader.seen.single_forwards.load(Ordering::SeqCst) > 0);
    // The refusal is remembered: the follower does not ask again for every forward.
    assert_eq!(leader.seen.forward_upgrades.load(Ordering::SeqCst), 1);
    assert_eq!(follower.raft.forward_streams_opened(), 0);
}

/// Asks the leader of a cluster of one to add a node answering as `build`; returns the node
/// and the leader's answer.
async fn add_to_a_leader(build: Build) -> (TestNode, TestNode, Result<(), keel_raft::Error>) {
    let joining = start_as(2, build).await;
    let leader = leader(true).await;
    let added = leader.raft.add_voter(2, joining.addr.clone()).await;
    (leader, joining, added)
}

/// Checks that adding node 2 was refused as a membership change, before anything changed (it
/// is not even a learner), and returns why.
fn refused(leader: &TestNode, added: Result<(), keel_raft::Error>) -> String {
    let Err(keel_raft::Error::Membership(why)) = added else {
        panic!("node 2 was added, or refused for another reason: {added:?}");
    };
    let metrics = leader.raft.metrics();
    let membership = metrics.membership_config.membership();
    assert!(membership.get_node(&2).is_none(), "{membership:?}");
    why
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_refuses_to_add_a_node_of_an_earlier_build() {
    for build in [Build::WithoutEntryFormats, Build::WithoutStreams] {
        let (leader, earlier, added) = add_to_a_leader(build).await;
        let why = refused(&leader, added);
        assert!(why.contains("earlier keel"), "{why}");
        assert!(why.contains("empty its data directory"), "{why}");
        // Asked once.
        assert_eq!(earlier.seen.upgrades.load(Ordering::SeqCst), 1);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_refuses_to_add_a_node_it_cannot_ask() {
    let leader = leader(true).await;
    // A port nothing listens on.
    let gone = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = gone.local_addr().unwrap().to_string();
    drop(gone);
    let added = leader.raft.add_voter(2, addr.clone()).await;
    let why = refused(&leader, added);
    assert!(
        why.contains(&addr) && why.contains("advertised address") && why.contains("restart it"),
        "{why}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_asking_to_join_at_another_address_is_refused_and_again_at_its_own_is_not() {
    let [leader, follower] = two_nodes(true, true).await;
    let elsewhere = "127.0.0.1:1".to_string();
    let added = leader.raft.add_voter(2, elsewhere.clone()).await;
    let Err(keel_raft::Error::Membership(why)) = added else {
        panic!("node 2 was added again, or refused for another reason: {added:?}");
    };
    assert!(
        why.contains(&format!("a member at {}", follower.addr)) && why.contains(&elsewhere),
        "{why}"
    );
    // Asked again where it is (a joiner whose answer was lost): nothing changes.
    leader
        .raft
        .add_voter(2, follower.addr.clone())
        .await
        .unwrap();
    propose(&follower, 10).await;
}

/// A peer that is down is retried with openraft's backoff, not in a loop: a connection that
/// failed before the request stream was polled used to skip the backoff, and a leader tried
/// again at once, tens of thousands of times a second.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_is_down_is_retried_with_backoff() {
    let leader = leader(true).await;
    // Accepts each connection and closes it at once, counting them.
    let down = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = down.local_addr().unwrap().to_string();
    let attempts = Arc::new(AtomicUsize::new(0));
    let counted = attempts.clone();
    tokio::spawn(async move {
        while let Ok((connection, _)) = down.accept().await {
            counted.fetch_add(1, Ordering::SeqCst);
            drop(connection);
        }
    });
    let node = KeelNode { addr };
    leader
        .raft
        .raft()
        .add_learner(2, node, false)
        .await
        .unwrap();
    let watched = Duration::from_secs(2);
    let before = attempts.load(Ordering::SeqCst);
    // Writes go on meanwhile: each is more to replicate, and must not be a retry too.
    let writing = async {
        let start = std::time::Instant::now();
        while start.elapsed() < watched {
            propose(&leader, 5).await;
        }
    };
    writing.await;
    let tried = attempts.load(Ordering::SeqCst) - before;
    // A retry at most every heartbeat (50 ms) or so: about 40 attempts in 2 s.
    assert!(
        (1..=60).contains(&tried),
        "{tried} connection attempts in {watched:?}"
    );
}

/// A removal that reaches a leader after the node is gone (the leader it was first sent to
/// carried it out and was replaced before answering, or another removal came first) succeeds:
/// the node is gone, as asked. Asked through the follower, which forwards it, and the leader,
/// at once; then once more.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removal_that_finds_the_node_gone_already_succeeds() {
    let [leader, follower] = two_nodes(true, true).await;
    let third = start(3, true).await;
    leader.raft.add_voter(3, third.addr.clone()).await.unwrap();
    let (through_follower, through_leader) =
        tokio::join!(follower.raft.remove(3), leader.raft.remove(3));
    through_follower.unwrap();
    through_leader.unwrap();
    leader.raft.remove(3).await.unwrap();
    let metrics = leader.raft.metrics();
    let voters: Vec<u64> = metrics.membership_config.membership().voter_ids().collect();
    assert_eq!(voters, [1, 2]);
}
