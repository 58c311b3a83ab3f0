//! Raft peer traffic over HTTP: the server half, mounted under `/raft` on the node's API
//! server.
//!
//! Every route checks the cluster secret first (in constant time) and answers 401 without
//! touching Raft when it is wrong. Bodies are bincode; answers are bincode `Result`s, so a
//! Raft-level refusal travels back as data and only transport failures are HTTP errors.
//! `/raft/append-stream` and `/raft/forward-stream` upgrade their connections to the
//! [`append_stream`] and the [`forward_stream`].

use std::future::Future;
use std::sync::Arc;
use std::sync::OnceLock;

use axum::body::Body;
use axum::body::Bytes;
use axum::extract::DefaultBodyLimit;
use axum::extract::Request;
use axum::extract::State;
use axum::http::header;
use axum::http::HeaderMap;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::response::Response;
use axum::routing::post;
use axum::Router;
use futures::StreamExt;
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use openraft::error::RaftError;
use openraft::raft::AppendEntriesRequest;
use openraft::raft::AppendEntriesResponse;
use openraft::raft::TransferLeaderRequest;
use openraft::raft::VoteRequest;
use openraft::type_config::alias::SnapshotMetaOf;
use openraft::type_config::alias::SnapshotOf;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::io::AsyncWriteExt;

use keel_storage::SnapshotData;
use keel_storage::SnapshotFile;

use crate::append_stream;
use crate::entry_format;
use crate::forward_stream;
use crate::network::SECRET_HEADER;
use crate::network::SENDER_HEADER;
use crate::network::TARGET_HEADER;
use crate::node::LeaderRequest;
use crate::node::RaftNode;
use crate::types::NodeId;
use crate::types::TypeConfig;
use crate::types::Vote;

/// Largest non-snapshot peer message accepted.
const MAX_RPC_BYTES: usize = 256 << 20;

/// Holds the node's Raft once it has one: the peer routes exist from the start, but a node
/// answers them only after it has joined a cluster.
pub type RaftSlot = Arc<OnceLock<Arc<RaftNode>>>;

/// The `/raft/...` routes of the node in `slot`.
pub fn router(slot: RaftSlot) -> Router {
    Router::new()
        .route("/raft/append", post(append))
        .route("/raft/vote", post(vote))
        .route("/raft/pre-vote", post(pre_vote))
        .route(TRANSFER_LEADER_PATH, post(transfer_leader))
        .route(REMOVED_PATH, post(removed))
        .route("/raft/snapshot", post(snapshot))
        .route(forward_stream::SINGLE_PATH, post(forward))
        .route(append_stream::PATH, post(append_stream))
        .route(forward_stream::PATH, post(forward_stream))
        .layer(DefaultBodyLimit::max(MAX_RPC_BYTES))
        .with_state(slot)
}

/// Compares in time independent of where the strings differ.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Why a peer request was turned away before reaching Raft.
type Refusal = (StatusCode, String);

fn authorized<'a>(slot: &'a RaftSlot, headers: &HeaderMap) -> Result<&'a Arc<RaftNode>, Refusal> {
    let Some(node) = slot.get() else {
        return Err((
            StatusCode::SERVICE_UNAVAILABLE,
            "this node has not joined a cluster yet".into(),
        ));
    };
    let given = headers
        .get(SECRET_HEADER)
        .map(|v| v.as_bytes())
        .unwrap_or_default();
    if !constant_time_eq(given, node.secret().as_bytes()) {
        return Err((
            StatusCode::UNAUTHORIZED,
            "wrong or missing cluster secret".into(),
        ));
    }
    // Nodes of earlier builds do not say whom they mean.
    match uid_header(headers, TARGET_HEADER) {
        Some(uid) if uid != node.id() => Err((
            StatusCode::MISDIRECTED_REQUEST,
            format!(
                "this address serves node {}, not node {uid}: two members share it (a node \
                 joined again on a removed node's address?); remove the one that is gone",
                node.id()
            ),
        )),
        _ => Ok(node),
    }
}

/// The node uid a peer request's header `name` carries, if any.
fn uid_header(headers: &HeaderMap, name: &str) -> Option<NodeId> {
    headers.get(name)?.to_str().ok()?.parse().ok()
}

fn encode<T: Serialize>(value: &T) -> Response {
    match bincode::serialize(value) {
        Ok(bytes) => bytes.into_response(),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("cannot encode answer: {e}"),
        )
            .into_response(),
    }
}

/// The answer to a peer request that reached a node shutting down.
fn shutting_down() -> Response {
    (StatusCode::SERVICE_UNAVAILABLE, "this node is stopping").into_response()
}

/// Authenticates, decodes the bincode request, runs `handle` and encodes its answer.
async fn rpc<Req, Resp, Fut>(
    slot: &RaftSlot,
    headers: &HeaderMap,
    body: &[u8],
    handle: impl FnOnce(Arc<RaftNode>, Req) -> Fut,
) -> Response
where
    Req: DeserializeOwned,
    Resp: Serialize,
    Fut: Future<Output = Resp>,
{
    let node = match authorized(slot, headers) {
        Ok(node) => node.clone(),
        Err(refusal) => return refusal.into_response(),
    };
    match bincode::deserialize(body) {
        Ok(request) => match node.clone().until_shutdown(handle(node, request)).await {
            Some(answer) => encode(&answer),
            None => shutting_down(),
        },
        Err(e) => (
            StatusCode::BAD_REQUEST,
            format!("undecodable peer message: {e}"),
        )
            .into_response(),
    }
}

async fn append(State(slot): State<RaftSlot>, headers: HeaderMap, body: Bytes) -> Response {
    rpc(
        &slot,
        &headers,
        &body,
        |node, request: AppendEntriesRequest<TypeConfig>| async move {
            let vote = request.vote;
            let response = node.raft().append_entries(request).await;
            let taken = matches!(
                response,
                Ok(AppendEntriesResponse::Success | AppendEntriesResponse::PartialSuccess(_))
            );
            if taken {
                node.heard_from_leader(&vote);
            }
            response
        },
    )
    .await
}

async fn vote(State(slot): State<RaftSlot>, headers: HeaderMap, body: Bytes) -> Response {
    rpc(
        &slot,
        &headers,
        &body,
        |node, request: VoteRequest<TypeConfig>| async move { node.raft().vote(request).await },
    )
    .await
}

async fn pre_vote(State(slot): State<RaftSlot>, headers: HeaderMap, body: Bytes) -> Response {
    rpc(
        &slot,
        &headers,
        &body,
        |node, request: VoteRequest<TypeConfig>| async move { node.raft().pre_vote(request).await },
    )
    .await
}

/// Where a leader that is stopping asks a follower to take over.
pub const TRANSFER_LEADER_PATH: &str = "/raft/transfer-leader";

async fn transfer_leader(
    State(slot): State<RaftSlot>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    rpc(
        &slot,
        &headers,
        &body,
        |node, request: TransferLeaderRequest<TypeConfig>| async move {
            node.raft()
                .handle_transfer_leader(request)
                .await
                .map_err(RaftError::<TypeConfig>::Fatal)
        },
    )
    .await
}

/// Where a leader tells a node it removed that it is no longer a member.
pub const REMOVED_PATH: &str = "/raft/removed";

async fn removed(State(slot): State<RaftSlot>, headers: HeaderMap, body: Bytes) -> Response {
    rpc(&slot, &headers, &body, |node, (): ()| async move {
        node.learn_removed(true).map_err(|e| e.to_string())
    })
    .await
}

async fn forward(State(slot): State<RaftSlot>, headers: HeaderMap, body: Bytes) -> Response {
    rpc(
        &slot,
        &headers,
        &body,
        |node, request: LeaderRequest| async move { node.execute(&request).await },
    )
    .await
}

/// Switches the connection to the append stream (a leader's, to this follower).
async fn append_stream(State(slot): State<RaftSlot>, request: Request) -> Response {
    upgrade(
        &slot,
        request,
        append_stream::PROTOCOL,
        append_stream::serve,
    )
}

/// Switches the connection to the forward stream (a follower's, to this leader).
async fn forward_stream(State(slot): State<RaftSlot>, request: Request) -> Response {
    // Followers of earlier builds do not say who they are.
    let sender = uid_header(request.headers(), SENDER_HEADER);
    upgrade(&slot, request, forward_stream::PROTOCOL, move |node, io| {
        forward_stream::serve(io, move |request| {
            let node = node.clone();
            async move {
                if let Some(refusal) = sender.and_then(|uid| node.refuse_non_member(uid, &request))
                {
                    return Err(refusal);
                }
                node.execute(&request).await
            }
        })
    })
}

/// Authenticates an upgrade to `protocol` and serves the connection with `serve` on a task
/// of its own once the 101 answer is out.
fn upgrade<F>(
    slot: &RaftSlot,
    request: Request,
    protocol: &'static str,
    serve: impl FnOnce(Arc<RaftNode>, TokioIo<Upgraded>) -> F + Send + 'static,
) -> Response
where
    F: Future<Output = ()> + Send,
{
    let node = match authorized(slot, request.headers()) {
        Ok(node) => node.clone(),
        Err(refusal) => return refusal.into_response(),
    };
    let asked = request
        .headers()
        .get(header::UPGRADE)
        .is_some_and(|asked| asked == protocol);
    if !asked {
        return (
            StatusCode::BAD_REQUEST,
            format!("ask for `Upgrade: {protocol}`"),
        )
            .into_response();
    }
    let upgrade = hyper::upgrade::on(request);
    tokio::spawn(async move {
        match upgrade.await {
            Ok(io) => {
                let serving = serve(node.clone(), TokioIo::new(io));
                node.until_shutdown(serving).await;
            }
            Err(err) => tracing::debug!(%err, protocol, "upgrade failed"),
        }
    });
    Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header(header::CONNECTION, "upgrade")
        .header(header::UPGRADE, protocol)
        .header(entry_format::HEADER, entry_format::SEVERAL_PROPOSALS)
        .body(Body::empty())
        .expect("a well-formed response")
}

/// Receives a streamed snapshot into a file, then hands it to Raft.
async fn snapshot(State(slot): State<RaftSlot>, headers: HeaderMap, body: Body) -> Response {
    let node = match authorized(&slot, &headers) {
        Ok(node) => node,
        Err(refusal) => return refusal.into_response(),
    };
    let installed = node.until_shutdown(async {
        let (vote, snapshot) = receive_snapshot(node, body).await?;
        Ok::<_, String>(node.raft().install_full_snapshot(vote, snapshot).await)
    });
    match installed.await {
        Some(Ok(answer)) => encode(&answer),
        Some(Err(reason)) => (StatusCode::BAD_REQUEST, reason).into_response(),
        None => shutting_down(),
    }
}

async fn receive_snapshot(
    node: &RaftNode,
    body: Body,
) -> Result<(Vote, SnapshotOf<TypeConfig, SnapshotData>), String> {
    let path = node.state().incoming_snapshot_path();
    let received = receive_into(path.clone(), body).await;
    if received.is_err() {
        let _ = tokio::fs::remove_file(&path).await;
    }
    received
}

async fn receive_into(
    path: std::path::PathBuf,
    body: Body,
) -> Result<(Vote, SnapshotOf<TypeConfig, SnapshotData>), String> {
    let target = SnapshotFile::create(path.clone()).map_err(|e| e.to_string())?;
    let mut out = tokio::fs::File::from_std(target.file.try_clone().map_err(|e| e.to_string())?);
    let mut stream = body.into_data_stream();
    let mut head = Vec::new();
    let mut header: Option<(Vote, SnapshotMetaOf<TypeConfig>)> = None;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| format!("snapshot transfer broke: {e}"))?;
        if header.is_some() {
            out.write_all(&chunk).await.map_err(|e| e.to_string())?;
            continue;
        }
        head.extend_from_slice(&chunk);
        if head.len() < 4 {
            continue;
        }
        let len = u32::from_le_bytes(head[..4].try_into().expect("4 bytes")) as usize;
        if head.len() < 4 + len {
            continue;
        }
        header = Some(bincode::deserialize(&head[4..4 + len]).map_err(|e| e.to_string())?);
        out.write_all(&head[4 + len..])
            .await
            .map_err(|e| e.to_string())?;
    }
    let (vote, meta) = header.ok_or("snapshot transfer ended before its header")?;
    out.sync_all().await.map_err(|e| e.to_string())?;
    // A broken transfer is refused here (the leader sends it again) instead of failing the
    // state machine, which would stop this node. The check reads the whole file, so it runs
    // off the async runtime, whose timers and heartbeats must not wait for it.
    let target = tokio::task::spawn_blocking(move || target.verify().map(|()| target))
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())?;
    Ok((
        vote,
        SnapshotOf::<TypeConfig, SnapshotData> {
            meta,
            snapshot: SnapshotData::File(target),
        },
    ))
}
