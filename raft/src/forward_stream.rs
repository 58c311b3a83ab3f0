//! Forwarding over long-lived connections: how a follower hands the leader what only the
//! leader can do (batches of proposals, ReadIndex rounds, membership changes).
//!
//! Two thirds of a spread-out client load arrives at followers. Each of their write batches
//! and ReadIndex rounds used to be an HTTP request through reqwest and axum, and a client
//! writing through a follower waited for that exchange on top of the commit itself.
//!
//! Here a follower upgrades one HTTP request to the leader (`POST /raft/forward-stream`,
//! cluster secret checked like every peer route) to a raw connection and sends each request
//! as a length-prefixed bincode frame `(id, request)`. The leader carries the requests out
//! concurrently and answers `(id, answer)` as each finishes, so a slow write batch does not
//! hold up a ReadIndex round behind it. One connection per leader address is kept.
//!
//! A call that gets no answer in time closes its connection, as an HTTP request that timed
//! out would: a connection into a partition must not swallow every later call too. Callers
//! whose connection closed see the leader as unreachable and try again (proposals carry
//! request ids, so a retried one applies once). A leader that predates this protocol answers
//! the upgrade with 404; the follower then forwards to it by single HTTP requests.
//!
//! Connections do not outlive their use: a follower closes one that has been idle for
//! [`IDLE_CLOSE`] (the leader it served has usually moved on), and forgets the addresses it
//! no longer has a connection to. A leader drops a connection that has been silent for twice
//! that: its follower vanished without closing it (powered off, partitioned away for good).

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;

use bytes::Bytes;
use futures::stream::FuturesUnordered;
use futures::FutureExt;
use futures::SinkExt;
use futures::StreamExt;
use tokio::io::AsyncRead;
use tokio::io::AsyncWrite;
use tokio::sync::mpsc;
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

use crate::frames::decode;
use crate::frames::encode;
use crate::frames::framed;
use crate::network::CallError;
use crate::network::PeerClient;
use crate::network::Refusals;
use crate::node::LeaderAnswer;
use crate::node::LeaderRequest;
use crate::node::NotDone;

/// The route a follower upgrades, and the protocol name it asks for.
pub const PATH: &str = "/raft/forward-stream";
pub const PROTOCOL: &str = "keel-forward-stream";

/// The HTTP route a follower falls back to for a leader without the stream.
pub const SINGLE_PATH: &str = "/raft/forward";

/// How long a follower keeps a connection nobody used; the leader waits twice as long.
const IDLE_CLOSE: Duration = Duration::from_secs(60);

/// What the leader answers to one forwarded request.
pub(crate) type Answer = Result<LeaderAnswer, NotDone>;

/// Requests waiting to be written on one connection. Forwarding keeps few in flight (two
/// proposal batches and a ReadIndex round per consistency level), so this is never reached
/// in practice; it bounds memory if the leader stops reading.
const QUEUED_REQUESTS: usize = 64;

/// A request on its way to the connection task: its id, its encoded frame and who waits.
type Queued = (u64, Bytes, oneshot::Sender<Answer>);

/// A follower's connections to the leaders it forwards to, by address.
pub(crate) struct Forwarder {
    peers: PeerClient,
    connections: Mutex<HashMap<String, Arc<tokio::sync::Mutex<Option<Connection>>>>>,
    /// Leaders that refused the stream.
    refused: Refusals,
    next_id: AtomicU64,
    opened: AtomicU64,
}

/// The caller's end of one connection; the connection task holds the other.
#[derive(Clone)]
struct Connection {
    requests: mpsc::Sender<Queued>,
    /// Cancelled to close the connection: a call on it went unanswered, or the node at the
    /// other end no longer leads.
    closed: CancellationToken,
}

impl Connection {
    fn is_open(&self) -> bool {
        !self.closed.is_cancelled() && !self.requests.is_closed()
    }
}

impl Forwarder {
    pub(crate) fn new(peers: PeerClient) -> Self {
        Self {
            peers,
            connections: Default::default(),
            refused: Default::default(),
            next_id: AtomicU64::new(0),
            opened: AtomicU64::new(0),
        }
    }

    /// Connections this node opened to leaders: one per leader it forwarded to when all is
    /// well, climbing when connections keep breaking.
    pub(crate) fn opened(&self) -> u64 {
        self.opened.load(Ordering::Relaxed)
    }

    /// Has the leader at `addr` carry out `request`, answering within `timeout`.
    pub(crate) async fn call(
        &self,
        addr: &str,
        request: &LeaderRequest,
        timeout: Duration,
    ) -> Result<Answer, CallError> {
        let deadline = tokio::time::Instant::now() + timeout;
        let Some(connection) = self.connection(addr, timeout).await? else {
            let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
            return self.peers.call(addr, SINGLE_PATH, request, remaining).await;
        };
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let frame = encode(&(id, request)).map_err(|e| CallError::Refused {
            addr: addr.into(),
            status: 0,
            body: format!("cannot encode the request: {e}"),
        })?;
        let (answer, answered) = oneshot::channel();
        let closed = || CallError::Unreachable {
            addr: addr.into(),
            reason: "the forward stream closed".into(),
        };
        let exchange = async {
            connection
                .requests
                .send((id, frame, answer))
                .await
                .map_err(|_| closed())?;
            answered.await.map_err(|_| closed())
        };
        match tokio::time::timeout_at(deadline, exchange).await {
            Ok(result) => result,
            Err(_) => {
                connection.closed.cancel();
                Err(CallError::Timeout {
                    addr: addr.into(),
                    timeout,
                })
            }
        }
    }

    /// Closes the connection to `addr`, whose node no longer leads: calls still waiting on it
    /// (sent before that node was paused or cut off) end as unreachable, and the connection
    /// holds no unanswered calls that would keep it from closing when idle. A connection being
    /// opened, or looked up by another caller at this instant, is left alone: its callers give
    /// up by themselves, at the change of leader or their deadline.
    pub(crate) fn close(&self, addr: &str) {
        let slot = self
            .connections
            .lock()
            .expect("forward connections")
            .get(addr)
            .cloned();
        let Some(slot) = slot else { return };
        if let Ok(connection) = slot.try_lock() {
            if let Some(connection) = connection.as_ref() {
                connection.closed.cancel();
            }
        };
    }

    /// The open connection to `addr`, opening one if there is none (or it closed); `None` if
    /// the leader there does not speak the stream.
    async fn connection(
        &self,
        addr: &str,
        timeout: Duration,
    ) -> Result<Option<Connection>, CallError> {
        let slot = {
            let mut connections = self.connections.lock().expect("forward connections");
            match connections.get(addr) {
                Some(slot) => slot.clone(),
                None => connections.entry(addr.to_string()).or_default().clone(),
            }
        };
        // Callers of one address wait for one upgrade instead of each opening a connection.
        let mut slot = slot.lock().await;
        if let Some(connection) = slot.as_ref().filter(|c| c.is_open()) {
            return Ok(Some(connection.clone()));
        }
        let upgrade = self
            .refused
            .upgrade(&self.peers, addr, PATH, PROTOCOL, timeout);
        let Some(upgraded) = upgrade.await? else {
            return Ok(None);
        };
        self.opened.fetch_add(1, Ordering::Relaxed);
        self.forget_closed_except(addr);
        let (requests, queued) = mpsc::channel(QUEUED_REQUESTS);
        let closed = CancellationToken::new();
        tokio::spawn(drive(upgraded.io, queued, closed.clone()));
        let connection = Connection { requests, closed };
        *slot = Some(connection.clone());
        Ok(Some(connection))
    }

    /// Drops the slots of addresses other than `addr` that hold no open connection (a slot
    /// in use by a caller is kept), so the map holds the leaders of now, not of history.
    fn forget_closed_except(&self, addr: &str) {
        let mut connections = self.connections.lock().expect("forward connections");
        connections.retain(|other, slot| {
            other == addr
                || slot
                    .try_lock()
                    .map_or(true, |slot| slot.as_ref().is_some_and(Connection::is_open))
        });
    }

    /// Addresses this follower keeps a slot for.
    #[cfg(test)]
    fn addresses(&self) -> usize {
        self.connections.lock().expect("forward connections").len()
    }
}

/// The follower's end of one connection: writes queued requests, hands each answer to whoever
/// waits for it. Returns when the connection breaks, is `closed`, no caller can queue any
/// more, or nothing happened on it for [`IDLE_CLOSE`] while no caller waited; the waiters
/// still unanswered then see their answer dropped.
async fn drive<IO: AsyncRead + AsyncWrite>(
    io: IO,
    mut queued: mpsc::Receiver<Queued>,
    closed: CancellationToken,
) {
    let (mut read, mut write) = framed(io);
    let mut waiting: HashMap<u64, oneshot::Sender<Answer>> = HashMap::new();
    loop {
        tokio::select! {
            () = closed.cancelled() => return,
            () = tokio::time::sleep(IDLE_CLOSE), if waiting.is_empty() => return,
            next = queued.recv() => {
                let Some(mut request) = next else { return };
                // Everything queued meanwhile goes out in one write.
                loop {
                    let (id, frame, answer) = request;
                    waiting.insert(id, answer);
                    if write.feed(frame).await.is_err() {
                        return;
                    }
                    match queued.try_recv() {
                        Ok(next) => request = next,
                        Err(_) => break,
                    }
                }
                if SinkExt::<Bytes>::flush(&mut write).await.is_err() {
                    return;
                }
            }
            frame = read.next() => match decode::<(u64, Answer)>(frame) {
                Ok((id, answer)) => {
                    if let Some(waiter) = waiting.remove(&id) {
                        let _ = waiter.send(answer);
                    }
                }
                Err(reason) => {
                    tracing::debug!(%reason, "forward stream ends");
                    return;
                }
            },
        }
    }
}

/// The leader's end: carries out every request that arrives with `execute`, concurrently, and
/// writes each answer as soon as it is ready. Returns when the connection closes or breaks,
/// or nothing arrived on it for twice [`IDLE_CLOSE`] while no request ran.
pub(crate) async fn serve<IO, E, F>(io: IO, execute: E)
where
    IO: AsyncRead + AsyncWrite,
    E: Fn(LeaderRequest) -> F,
    F: Future<Output = Answer>,
{
    let (mut read, mut write) = framed(io);
    let mut running = FuturesUnordered::new();
    loop {
        tokio::select! {
            () = tokio::time::sleep(2 * IDLE_CLOSE), if running.is_empty() => {
                tracing::debug!("a follower left its forward stream silent; closing it");
                return;
            }
            frame = read.next() => match decode::<(u64, LeaderRequest)>(frame) {
                Ok((id, request)) => {
                    let answer = execute(request);
                    running.push(async move { (id, answer.await) });
                }
                Err(reason) => {
                    tracing::debug!(%reason, "forward stream ends");
                    return;
                }
            },
            Some(mut done) = running.next(), if !running.is_empty() => {
                // Answers that are ready together go out in one write.
                loop {
                    let Ok(frame) = encode(&done) else { return };
                    if write.feed(frame).await.is_err() {
                        return;
                    }
                    match running.next().now_or_never() {
                        Some(Some(next)) => done = next,
                        _ => break,
                    }
                }
                if SinkExt::<Bytes>::flush(&mut write).await.is_err() {
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    //! The two ends of a connection on an in-memory pipe: each case sends requests through the
    //! follower's end to a scripted leader and states what every caller gets back (`None`: the
    //! caller's answer was dropped, which it reports as an unreachable leader).

    use std::ops::Range;

    use super::*;

    /// How the leader's end behaves.
    #[derive(Debug, Clone, Copy)]
    enum Leader {
        /// The real [`serve`], with [`execute`].
        Serves,
        /// Reads one request, then closes the connection.
        ClosesAfterOneRequest,
        /// Answers the first request with bytes that are no answer, and keeps the connection.
        AnswersGarbage,
    }

    /// `Remove { id }` takes longer the smaller `id` is, so that answers finish out of order,
    /// and its answer names `id`.
    async fn execute(request: LeaderRequest) -> Answer {
        let LeaderRequest::Remove { id } = request else {
            panic!("unexpected {request:?}");
        };
        tokio::time::sleep(Duration::from_millis(60 - 10 * id)).await;
        Ok(LeaderAnswer::Reply(vec![id as u8]))
    }

    async fn exchange(leader: Leader, ids: Range<u64>) -> Vec<Option<String>> {
        let (follower_io, leader_io) = tokio::io::duplex(1 << 16);
        match leader {
            Leader::Serves => {
                tokio::spawn(serve(leader_io, execute));
            }
            Leader::ClosesAfterOneRequest => {
                tokio::spawn(async move {
                    let (mut read, _write) = framed(leader_io);
                    read.next().await;
                });
            }
            Leader::AnswersGarbage => {
                tokio::spawn(async move {
                    let (mut read, mut write) = framed(leader_io);
                    read.next().await;
                    write.send(Bytes::from_static(b"\xff\xff")).await.ok();
                    while read.next().await.is_some() {}
                });
            }
        }
        let (queue, queued) = mpsc::channel(QUEUED_REQUESTS);
        tokio::spawn(drive(follower_io, queued, CancellationToken::new()));
        let calls = ids.map(|id| {
            let queue = queue.clone();
            async move {
                let (answer, answered) = oneshot::channel();
                let frame = encode(&(id, &LeaderRequest::Remove { id })).unwrap();
                queue.send((id, frame, answer)).await.ok()?;
                answered.await.ok().map(|answer| format!("{answer:?}"))
            }
        });
        let all = futures::future::join_all(calls);
        tokio::time::timeout(Duration::from_secs(5), all)
            .await
            .expect("a caller was left waiting")
    }

    #[tokio::test]
    async fn cases() {
        let reply = |id: u8| Some(format!("Ok(Reply([{id}]))"));
        let cases = [
            (
                "every answer reaches its own caller, though they finish out of order",
                Leader::Serves,
                0..5,
                (0..5).map(reply).collect(),
            ),
            (
                "a leader that closes fails every caller still waiting",
                Leader::ClosesAfterOneRequest,
                0..3,
                vec![None, None, None],
            ),
            (
                "an undecodable answer ends the connection and fails every caller",
                Leader::AnswersGarbage,
                0..3,
                vec![None, None, None],
            ),
        ];
        for (name, leader, ids, expected) in cases {
            assert_eq!(exchange(leader, ids).await, expected, "{name} ({leader:?})");
        }
    }

    /// A leader that accepts the forward stream and never answers on it.
    async fn silent_leader() -> String {
        let route = axum::routing::post(|request: axum::extract::Request| async move {
            let upgrade = hyper::upgrade::on(request);
            tokio::spawn(async move {
                if let Ok(io) = upgrade.await {
                    let (mut read, _write) = framed(hyper_util::rt::TokioIo::new(io));
                    while read.next().await.is_some() {}
                }
            });
            axum::response::Response::builder()
                .status(axum::http::StatusCode::SWITCHING_PROTOCOLS)
                .header(axum::http::header::CONNECTION, "upgrade")
                .header(axum::http::header::UPGRADE, PROTOCOL)
                .body(axum::body::Body::empty())
                .unwrap()
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let routes = axum::Router::new().route(PATH, route);
        tokio::spawn(async move { axum::serve(listener, routes).await.unwrap() });
        addr
    }

    #[tokio::test]
    async fn a_call_left_unanswered_closes_its_connection() {
        let addr = silent_leader().await;
        let forwarder = Forwarder::new(PeerClient::new("secret".into(), None));
        for attempt in 1..=2 {
            let request = LeaderRequest::Remove { id: 0 };
            let answer = forwarder
                .call(&addr, &request, Duration::from_millis(200))
                .await;
            assert!(
                matches!(answer, Err(CallError::Timeout { .. })),
                "{answer:?}"
            );
            // The next call does not wait on the connection that swallowed this one.
            assert_eq!(forwarder.opened(), attempt);
        }
    }

    #[tokio::test]
    async fn a_follower_forgets_leaders_it_has_no_connection_to() {
        let (first, second) = (silent_leader().await, silent_leader().await);
        let forwarder = Forwarder::new(PeerClient::new("secret".into(), None));
        let request = LeaderRequest::Remove { id: 0 };
        for addr in [&first, &second] {
            let answer = forwarder
                .call(addr, &request, Duration::from_millis(100))
                .await;
            assert!(matches!(answer, Err(CallError::Timeout { .. })));
        }
        // The unanswered call closed the first connection; opening the second forgot it.
        assert_eq!(forwarder.addresses(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_connection_closes_but_a_slow_answer_keeps_it() {
        let (follower_io, leader_io) = tokio::io::duplex(1 << 16);
        let slow = |_| async {
            tokio::time::sleep(3 * IDLE_CLOSE).await;
            Ok(LeaderAnswer::Done)
        };
        let leader = tokio::spawn(serve(leader_io, slow));
        let (queue, queued) = mpsc::channel(QUEUED_REQUESTS);
        let follower = tokio::spawn(drive(follower_io, queued, CancellationToken::new()));
        let (answer, answered) = oneshot::channel();
        let frame = encode(&(7u64, &LeaderRequest::Remove { id: 7 })).unwrap();
        queue.send((7, frame, answer)).await.unwrap();
        assert!(
            matches!(answered.await, Ok(Ok(LeaderAnswer::Done))),
            "neither end may close a connection while a request on it runs"
        );
        let answered_at = tokio::time::Instant::now();
        let closes = tokio::time::timeout(IDLE_CLOSE + Duration::from_secs(1), follower);
        closes
            .await
            .expect("the idle follower's end stays open")
            .unwrap();
        assert!(answered_at.elapsed() >= IDLE_CLOSE);
        // The follower closed it, so the leader's end returns too, at once.
        let returns = tokio::time::timeout(Duration::from_secs(1), leader);
        returns
            .await
            .expect("the leader's end outlives its follower's")
            .unwrap();
        assert!(queue.is_closed());
    }

    #[tokio::test(start_paused = true)]
    async fn a_leader_drops_a_connection_its_follower_left_silent() {
        let (follower_io, leader_io) = tokio::io::duplex(1 << 16);
        let started = tokio::time::Instant::now();
        let drops = tokio::time::timeout(3 * IDLE_CLOSE, serve(leader_io, execute));
        drops.await.expect("the silent connection stays open");
        assert!(started.elapsed() >= 2 * IDLE_CLOSE);
        drop(follower_io);
    }
}
