//! Raft peer traffic over HTTP: the client half.
//!
//! Every RPC is an HTTP POST of a bincode body to `/raft/...` on the peer's API address, with
//! the cluster secret in a header so that a stranger cannot inject votes or entries. Every
//! request has a deadline (openraft's per-RPC TTL); connection failures surface as
//! `Unreachable`, which makes openraft back off instead of hammering a dead peer. Snapshots
//! are streamed from their file; they are never held in memory whole. AppendEntries (entries
//! and heartbeats) travel on the pipelined [`append_stream`] instead, and fall back to one
//! request each for a peer that does not speak it.
//!
//! [`PeerClient`] is also what a follower uses to forward client requests to the leader.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;
use std::time::Instant;

use futures::future::BoxFuture;
use futures::stream::BoxStream;
use futures::Stream;
use futures::StreamExt;
use openraft::error::NetworkError;
use openraft::error::RPCError;
use openraft::error::RaftError;
use openraft::error::ReplicationClosed;
use openraft::error::StreamingError;
use openraft::error::Unreachable;
use openraft::network::stream_append_sequential;
use openraft::network::RPCOption;
use openraft::raft::AppendEntriesRequest;
use openraft::raft::AppendEntriesResponse;
use openraft::raft::SnapshotResponse;
use openraft::raft::TransferLeaderRequest;
use openraft::raft::TransferLeaderResponse;
use openraft::raft::VoteRequest;
use openraft::raft::VoteResponse;
use openraft::type_config::alias::SnapshotOf;
use openraft::OptionalSend;
use openraft::RaftNetworkFactory;
use openraft::RaftNetworkV2;
use serde::de::DeserializeOwned;
use serde::Serialize;

use keel_storage::SnapshotData;

use crate::append_stream;
use crate::entry_format;
use crate::entry_format::PeerFormats;
use crate::types::KeelNode;
use crate::types::NodeId;
use crate::types::TypeConfig;
use crate::types::Vote;

/// Header carrying the cluster secret on peer traffic.
pub const SECRET_HEADER: &str = "x-keel-cluster-secret";

/// Why a peer call failed, before it is mapped to openraft's or keel's error types.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// The connection could not be made or broke: the peer may be down.
    #[error("cannot reach {addr}: {reason}")]
    Unreachable { addr: String, reason: String },
    /// The deadline passed.
    #[error("{addr} did not answer within {timeout:?}")]
    Timeout { addr: String, timeout: Duration },
    /// The peer answered, but not with what was asked for.
    #[error("{addr} answered {status}: {body}")]
    Refused {
        addr: String,
        status: u16,
        body: String,
    },
}

/// An HTTP client for one cluster's peer RPCs.
#[derive(Clone)]
pub struct PeerClient {
    http: reqwest::Client,
    secret: String,
    /// This node's uid, announced with every request, so that a leader can tell a node it
    /// removed.
    sender: Option<NodeId>,
    /// The uid of the node this client is for, so that a process at that address that is
    /// another member refuses instead of answering for it.
    target: Option<NodeId>,
}

/// Header carrying the uid of the node a peer request comes from.
pub const SENDER_HEADER: &str = "x-keel-node-uid";

/// Header carrying the uid a peer request is meant for.
pub const TARGET_HEADER: &str = "x-keel-target-uid";

/// An HTTP client for traffic to other keel nodes: no environment proxies (peer traffic must
/// not wander through a proxy meant for the outside world), and outgoing connections from
/// `source_ip` when the operator pins one (multi-homed hosts, the fault suite's proxies).
pub fn node_to_node_client(source_ip: Option<std::net::IpAddr>) -> reqwest::ClientBuilder {
    reqwest::Client::builder()
        .no_proxy()
        .local_address(source_ip)
        .connect_timeout(Duration::from_millis(500))
        .tcp_nodelay(true)
        .pool_idle_timeout(Duration::from_secs(30))
}

impl PeerClient {
    pub fn new(secret: String, source_ip: Option<std::net::IpAddr>) -> Self {
        let http = node_to_node_client(source_ip)
            .build()
            .expect("building the peer HTTP client");
        Self {
            http,
            secret,
            sender: None,
            target: None,
        }
    }

    /// The same client, for requests meant for node `uid` only.
    pub fn addressed_to(self, uid: NodeId) -> Self {
        Self {
            target: Some(uid),
            ..self
        }
    }

    fn identified(&self, mut request: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        if let Some(uid) = self.sender {
            request = request.header(SENDER_HEADER, uid);
        }
        if let Some(uid) = self.target {
            request = request.header(TARGET_HEADER, uid);
        }
        request
    }

    /// The same client, announcing `uid` as its node's.
    pub fn sent_by(self, uid: NodeId) -> Self {
        Self {
            sender: Some(uid),
            ..self
        }
    }

    /// POSTs `body` (bincode) to `path` on `addr` and decodes a bincode answer.
    pub async fn call<Req: Serialize, Resp: DeserializeOwned>(
        &self,
        addr: &str,
        path: &str,
        body: &Req,
        timeout: Duration,
    ) -> Result<Resp, CallError> {
        let body = bincode::serialize(body).map_err(|e| CallError::Refused {
            addr: addr.into(),
            status: 0,
            body: format!("cannot encode the request: {e}"),
        })?;
        self.send(addr, path, reqwest::Body::from(body), timeout)
            .await
    }

    async fn send<Resp: DeserializeOwned>(
        &self,
        addr: &str,
        path: &str,
        body: reqwest::Body,
        timeout: Duration,
    ) -> Result<Resp, CallError> {
        let request = self
            .http
            .post(format!("http://{addr}{path}"))
            .header(SECRET_HEADER, &self.secret)
            .timeout(timeout)
            .body(body);
        let response = self
            .identified(request)
            .send()
            .await
            .map_err(|e| classify(addr, timeout, e))?;
        let status = response.status();
        let bytes = response
            .bytes()
            .await
            .map_err(|e| classify(addr, timeout, e))?;
        if !status.is_success() {
            return Err(CallError::Refused {
                addr: addr.into(),
                status: status.as_u16(),
                body: String::from_utf8_lossy(&bytes).into_owned(),
            });
        }
        bincode::deserialize(&bytes).map_err(|e| CallError::Refused {
            addr: addr.into(),
            status: status.as_u16(),
            body: format!("undecodable answer: {e}"),
        })
    }

    /// Upgrades a POST to `path` on `addr` to a raw connection speaking `protocol`.
    pub(crate) async fn upgrade(
        &self,
        addr: &str,
        path: &str,
        protocol: &'static str,
        timeout: Duration,
    ) -> Result<Upgraded, CallError> {
        let exchange = async {
            let request = self
                .http
                .post(format!("http://{addr}{path}"))
                .header(SECRET_HEADER, &self.secret)
                .header(reqwest::header::CONNECTION, "upgrade")
                .header(reqwest::header::UPGRADE, protocol);
            let response = self
                .identified(request)
                .send()
                .await
                .map_err(|e| classify(addr, timeout, e))?;
            let status = response.status();
            if status != reqwest::StatusCode::SWITCHING_PROTOCOLS {
                return Err(CallError::Refused {
                    addr: addr.into(),
                    status: status.as_u16(),
                    body: response.text().await.unwrap_or_default(),
                });
            }
            let entry_format = response
                .headers()
                .get(entry_format::HEADER)
                .and_then(|value| value.to_str().ok())
                .map(str::to_string);
            let io = response
                .upgrade()
                .await
                .map_err(|e| classify(addr, timeout, e))?;
            Ok(Upgraded { io, entry_format })
        };
        tokio::time::timeout(timeout, exchange)
            .await
            .map_err(|_| CallError::Timeout {
                addr: addr.into(),
                timeout,
            })?
    }
}

/// A connection upgraded to a peer stream.
pub(crate) struct Upgraded {
    pub io: reqwest::Upgraded,
    /// The peer's [`entry_format::HEADER`], if it sent one.
    pub entry_format: Option<String>,
}

fn classify(addr: &str, timeout: Duration, err: reqwest::Error) -> CallError {
    if err.is_timeout() {
        CallError::Timeout {
            addr: addr.into(),
            timeout,
        }
    } else {
        CallError::Unreachable {
            addr: addr.into(),
            reason: err.to_string(),
        }
    }
}

/// Peers that refused a stream protocol (an older keel), by address, and until when they get
/// single HTTP requests instead. Shared by all of a node's callers of one protocol, so that a
/// refusal is asked for once, not once per replication stream or forward.
#[derive(Clone, Default)]
pub(crate) struct Refusals(Arc<Mutex<HashMap<String, Instant>>>);

impl Refusals {
    /// How long a peer that refused is sent single requests before it is asked again (it may
    /// have been upgraded meanwhile).
    const RETRY_AFTER: Duration = Duration::from_secs(60);

    /// Upgrades a POST to `path` on `addr` to a raw connection speaking `protocol`, unless
    /// the peer refused it lately. `None`: the peer does not speak the protocol (it answered
    /// 404, now or lately) and gets single requests instead.
    pub(crate) async fn upgrade(
        &self,
        client: &PeerClient,
        addr: &str,
        path: &str,
        protocol: &'static str,
        timeout: Duration,
    ) -> Result<Option<Upgraded>, CallError> {
        if self.refused_lately(addr) {
            return Ok(None);
        }
        match client.upgrade(addr, path, protocol, timeout).await {
            Ok(io) => Ok(Some(io)),
            Err(CallError::Refused { status: 404, .. }) => {
                tracing::info!(
                    addr,
                    protocol,
                    "peer does not speak this stream; sending it single requests"
                );
                self.remember(addr);
                Ok(None)
            }
            Err(err) => Err(err),
        }
    }

    fn refused_lately(&self, addr: &str) -> bool {
        let mut refused = self.0.lock().expect("refusals");
        let now = Instant::now();
        refused.retain(|_, until| now < *until);
        refused.contains_key(addr)
    }

    fn remember(&self, addr: &str) {
        self.0
            .lock()
            .expect("refusals")
            .insert(addr.to_string(), Instant::now() + Self::RETRY_AFTER);
    }
}

/// Creates a [`Peer`] per target node for openraft.
///
/// openraft gives appends and heartbeats a deadline of one heartbeat interval. On a link
/// slower than that (a congested network, the fault suite's 150 ms delays) every RPC would
/// time out and replication would stop altogether, so RPCs get at least `min_rpc_timeout`
/// (the minimum election timeout): a slow link then slows the cluster down instead of
/// freezing it, and a dead peer is still detected well before anyone calls an election.
pub struct Network {
    client: PeerClient,
    min_rpc_timeout: Duration,
    streamless: Refusals,
    streams_opened: Arc<AtomicU64>,
    formats: PeerFormats,
    outages: Outages,
}

impl Network {
    pub fn new(client: PeerClient, min_rpc_timeout: Duration) -> Self {
        Self {
            client,
            min_rpc_timeout,
            streamless: Default::default(),
            streams_opened: Default::default(),
            formats: Default::default(),
            outages: Default::default(),
        }
    }

    /// The entry formats peers announced to this node's append streams.
    pub fn peer_formats(&self) -> PeerFormats {
        self.formats.clone()
    }

    /// Counts the append stream connections this node's [`Peer`]s open: a few per follower
    /// and leadership when all is well, climbing when connections keep breaking.
    pub fn streams_opened(&self) -> Arc<AtomicU64> {
        self.streams_opened.clone()
    }
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = Peer;

    async fn new_client(&mut self, target: NodeId, node: &KeelNode) -> Peer {
        Peer {
            target,
            addr: node.addr.clone(),
            client: self.client.clone().addressed_to(target),
            min_rpc_timeout: self.min_rpc_timeout,
            channel: Default::default(),
            streamless: self.streamless.clone(),
            streams_opened: self.streams_opened.clone(),
            formats: self.formats.clone(),
            outages: self.outages.clone(),
        }
    }
}

/// openraft's connection to one peer.
pub struct Peer {
    target: NodeId,
    addr: String,
    client: PeerClient,
    min_rpc_timeout: Duration,
    /// The append stream's connection, kept between sessions (in a mutex only because
    /// openraft wants a `Sync` network and the connection is not; it is never contended).
    channel: Mutex<Option<append_stream::Channel>>,
    streamless: Refusals,
    streams_opened: Arc<AtomicU64>,
    formats: PeerFormats,
    outages: Outages,
}

/// Since when each unreachable peer has been, so that an outage is logged when it starts, now
/// and then while it lasts and when it ends, rather than at every retry. Shared by every
/// client openraft makes for a peer, as it makes new ones while retrying.
#[derive(Clone, Default)]
struct Outages(Arc<Mutex<HashMap<NodeId, Outage>>>);

/// When an outage started, when it was last logged and how many connections failed.
struct Outage {
    since: Instant,
    told: Instant,
    failures: u64,
}

/// How often a lasting outage is logged again.
const OUTAGE_REMINDER: Duration = Duration::from_secs(60);

impl Outages {
    fn failed(&self, target: NodeId, err: &CallError) {
        let now = Instant::now();
        let mut outages = self.0.lock().expect("peer outages");
        match outages.get_mut(&target) {
            None => {
                tracing::warn!(
                    target,
                    %err,
                    "cannot replicate to peer; retrying with backoff (is it down, or its address wrong?)"
                );
                let outage = Outage {
                    since: now,
                    told: now,
                    failures: 1,
                };
                outages.insert(target, outage);
            }
            Some(outage) => {
                outage.failures += 1;
                if now.duration_since(outage.told) >= OUTAGE_REMINDER {
                    tracing::warn!(
                        target,
                        %err,
                        failures = outage.failures,
                        "peer still unreachable after {:.0?}",
                        now.duration_since(outage.since)
                    );
                    outage.told = now;
                }
            }
        }
    }

    fn ended(&self, target: NodeId, addr: &str) {
        let ended = self.0.lock().expect("peer outages").remove(&target);
        if let Some(outage) = ended {
            tracing::info!(
                target,
                addr,
                failures = outage.failures,
                "peer reachable again after {:.1?}",
                outage.since.elapsed()
            );
        }
    }
}

impl Peer {
    async fn rpc<Req: Serialize, Resp: DeserializeOwned>(
        &self,
        path: &str,
        req: &Req,
        option: &RPCOption,
    ) -> Result<Resp, RPCError<TypeConfig>> {
        let answer: Result<Resp, RaftError<TypeConfig>> = self
            .client
            .call(
                &self.addr,
                path,
                req,
                option.hard_ttl().max(self.min_rpc_timeout),
            )
            .await
            .map_err(|e| to_rpc_error(self.target, e))?;
        answer.map_err(|e| RPCError::Network(NetworkError::new(&e)))
    }
}

pub(crate) fn to_rpc_error(target: NodeId, err: CallError) -> RPCError<TypeConfig> {
    tracing::debug!(target, %err, "peer RPC failed");
    match err {
        CallError::Unreachable { .. } | CallError::Timeout { .. } => {
            RPCError::Unreachable(Unreachable::new(&err))
        }
        CallError::Refused { .. } => RPCError::Network(NetworkError::new(&err)),
    }
}

impl RaftNetworkV2<TypeConfig> for Peer {
    type SnapshotData = SnapshotData;

    fn stream_append<'s, S>(
        &'s mut self,
        input: S,
        option: RPCOption,
    ) -> BoxFuture<'s, Result<BoxStream<'s, append_stream::Answer>, RPCError<TypeConfig>>>
    where
        S: Stream<Item = AppendEntriesRequest<TypeConfig>> + OptionalSend + Unpin + 'static,
    {
        Box::pin(async move {
            let timeout = option.hard_ttl().max(self.min_rpc_timeout);
            let slot = self.channel.get_mut().expect("append stream slot");
            let pooled = slot.take().and_then(|mut c| c.is_quiet().then_some(c));
            let channel = match pooled {
                Some(channel) => channel,
                None => match self
                    .streamless
                    .upgrade(
                        &self.client,
                        &self.addr,
                        append_stream::PATH,
                        append_stream::PROTOCOL,
                        timeout,
                    )
                    .await
                {
                    Ok(Some(upgraded)) => {
                        self.streams_opened.fetch_add(1, Ordering::Relaxed);
                        let format = upgraded.entry_format.as_deref();
                        self.formats.announced(self.target, format);
                        append_stream::Channel::new(upgraded.io)
                    }
                    Ok(None) => {
                        self.formats.announced(self.target, None);
                        return stream_append_sequential(self, input, option).await;
                    }
                    Err(err) => {
                        self.outages.failed(self.target, &err);
                        // openraft backs off after failed RPCs in its request stream, before
                        // it yields each request. A connection refused before that stream is
                        // polled would skip the backoff, and replication would retry at once,
                        // in a loop: 100 000 attempts and warnings in 3 s for a peer that is
                        // down. Waiting for the first request lets the backoff elapse.
                        let mut input = input;
                        let _ = input.next().await;
                        return Err(to_rpc_error(self.target, err));
                    }
                },
            };
            self.outages.ended(self.target, &self.addr);
            Ok(append_stream::session(
                self.channel.get_mut().expect("append stream slot"),
                channel,
                input,
                timeout,
                self.target,
                self.addr.clone(),
            ))
        })
    }

    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.rpc("/raft/append", &rpc, &option).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.rpc("/raft/vote", &rpc, &option).await
    }

    async fn pre_vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.rpc("/raft/pre-vote", &rpc, &option).await
    }

    async fn transfer_leader(
        &mut self,
        rpc: TransferLeaderRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<TransferLeaderResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.rpc(crate::service::TRANSFER_LEADER_PATH, &rpc, &option)
            .await
    }

    async fn full_snapshot(
        &mut self,
        vote: Vote,
        snapshot: SnapshotOf<TypeConfig, SnapshotData>,
        cancel: impl Future<Output = ReplicationClosed> + Send + 'static,
        option: RPCOption,
    ) -> Result<SnapshotResponse<TypeConfig>, StreamingError<TypeConfig>> {
        let header = bincode::serialize(&(vote, snapshot.meta))
            .map_err(|e| StreamingError::Network(NetworkError::new(&e)))?;
        let mut prefix = (header.len() as u32).to_le_bytes().to_vec();
        prefix.extend_from_slice(&header);
        // The first transfer of a snapshot writes it to a file: seconds for a large state.
        let data = snapshot.snapshot;
        let file = tokio::task::spawn_blocking(move || data.open())
            .await
            .map_err(|e| StreamingError::Network(NetworkError::new(&e)))?
            .map_err(|e| StreamingError::Network(NetworkError::new(&e)))?;
        let file = tokio::fs::File::from_std(file);
        let body = futures::stream::once(async move { Ok(bytes::Bytes::from(prefix)) })
            .chain(tokio_util::io::ReaderStream::with_capacity(file, 1 << 20));
        let send = self
            .client
            .send::<Result<SnapshotResponse<TypeConfig>, RaftError<TypeConfig>>>(
                &self.addr,
                "/raft/snapshot",
                reqwest::Body::wrap_stream(body),
                option.hard_ttl(),
            );
        let answer = tokio::select! {
            closed = cancel => return Err(StreamingError::Closed(closed)),
            answer = send => answer,
        };
        match answer {
            Ok(Ok(response)) => Ok(response),
            Ok(Err(remote)) => Err(StreamingError::Network(NetworkError::new(&remote))),
            Err(err @ (CallError::Unreachable { .. } | CallError::Timeout { .. })) => {
                Err(StreamingError::Unreachable(Unreachable::new(&err)))
            }
            Err(err) => Err(StreamingError::Network(NetworkError::new(&err))),
        }
    }
}
