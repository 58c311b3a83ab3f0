//! The control cluster itself: `GET /v1/cluster` (leader, term, indexes, members), the first
//! step of `join_cluster` (`POST /v1/cluster/join`), the second step as joiners of earlier
//! builds take it (`POST /v1/cluster/members`; see [`crate::node`] for today's), and
//! `POST /v1/nodes/{uid}/actions/remove`.
//!
//! Membership changes go through openraft's joint consensus, so no single change can leave
//! the cluster without a quorum; removing the last voter is refused.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::Path;
use axum::extract::State;
use axum::routing::get;
use axum::routing::post;
use axum::Json;
use axum::Router;
use keel_raft::Consistency;
use openraft::ServerState;
use serde::Deserialize;
use serde_json::json;
use serde_json::Value;

use super::parse_json;
use super::NoParams;
use super::Params;
use crate::domain::cluster::ClusterCommand;
use crate::domain::cluster::ClusterReply;
use crate::domain::Command;
use crate::domain::Reply;
use crate::node::JoinGrant;
use crate::node::MemberRequest;
use crate::node::Node;
use crate::Error;

/// What the cluster looks like: `--open-routes cluster` serves it without credentials.
pub fn routes(node: Arc<Node>) -> Router {
    Router::new()
        .route("/v1/cluster", get(cluster))
        .with_state(node)
}

/// Changes to the membership, which always need credentials.
pub fn membership_routes(node: Arc<Node>) -> Router {
    Router::new()
        .route("/v1/cluster/join", post(join))
        .route("/v1/cluster/members", post(add_member))
        .route("/v1/nodes/{uid}/actions/remove", post(remove))
        .with_state(node)
}

fn role(state: ServerState) -> &'static str {
    match state {
        ServerState::Leader => "leader",
        ServerState::Follower => "follower",
        ServerState::Candidate => "candidate",
        ServerState::Learner => "learner",
        ServerState::Shutdown => "shutdown",
    }
}

async fn cluster(State(node): State<Arc<Node>>, _: Params<NoParams>) -> Result<Json<Value>, Error> {
    let raft = node.raft()?;
    let metrics = raft.metrics();
    let membership = metrics.membership_config.membership();
    let voters: Vec<u64> = membership.voter_ids().collect();
    let members: Vec<Value> = membership
        .nodes()
        .map(|(uid, member)| {
            json!({
                "uid": uid,
                "addr": member.addr,
                "voter": voters.contains(uid),
                "role": if voters.contains(uid) { "voter" } else { "learner" },
            })
        })
        .collect();
    // Unknown for the moment while this node installs a snapshot; the rest comes from Raft.
    let name = node.cluster_config().ok().flatten().map(|c| c.name);
    let removed = raft.is_removed();
    Ok(Json(json!({
        "name": name,
        // A removed node knows no leader of the cluster, whatever its Raft core last saw.
        "leader": metrics.current_leader.filter(|_| !removed),
        "term": metrics.current_term,
        "commit_index": metrics.local_committed.map(|id| id.index),
        "applied_index": metrics.last_applied.map(|id| id.index),
        "snapshot_index": metrics.snapshot.map(|id| id.index),
        "members": members,
        "this_node": {
            "uid": raft.id(),
            "role": if removed { "removed" } else { role(metrics.state) },
            // Growing past a few election timeouts: the leader above is only the last one
            // this node heard of.
            "leader_unheard_ms": raft.leader_unheard_for(&metrics).map(|ago| ago.as_millis() as u64),
        },
    })))
}

#[derive(Deserialize)]
struct JoinRequest {
    addr: String,
}

async fn join(State(node): State<Arc<Node>>, body: Bytes) -> Result<Json<JoinGrant>, Error> {
    let request: JoinRequest = parse_json(&body)?;
    if request.addr.is_empty() {
        return Err(Error::bad_request("config_error", "addr is required"));
    }
    if matches!(node.credentials()?, Some(None)) {
        // It would take any credentials, and hand its secret to a node that may listen
        // where anyone reaches it.
        return Err(Error::Conflict {
            code: "membership_change_refused",
            message: "this cluster was created on loopback without credentials and takes no \
                      other members; create a cluster with credentials to run several nodes"
                .into(),
            details: serde_json::Value::Null,
        });
    }
    let reply = node
        .propose(&Command::Cluster(ClusterCommand::AllocateNodeId), None)
        .await?;
    let Reply::Cluster(ClusterReply::NodeId(uid)) = reply else {
        return Err(Error::Internal(format!(
            "unexpected reply to a uid allocation: {reply:?}"
        )));
    };
    let config = node
        .cluster_config()?
        .ok_or_else(|| Error::Internal("the cluster config is missing".into()))?;
    tracing::info!(uid, addr = %request.addr, "granted a uid to a joining node");
    Ok(Json(JoinGrant {
        uid,
        cluster_name: config.name,
        secret: config.secret,
    }))
}

async fn add_member(State(node): State<Arc<Node>>, body: Bytes) -> Result<Json<Value>, Error> {
    let request: MemberRequest = parse_json(&body)?;
    node.raft()?
        .add_voter(request.uid, request.addr.clone())
        .await
        .map_err(|err| {
            Error::from(err).concerning(json!({ "uid": request.uid, "addr": request.addr }))
        })?;
    tracing::info!(uid = request.uid, addr = %request.addr, "added a voter");
    Ok(Json(
        json!({ "uid": request.uid, "addr": request.addr, "role": "voter" }),
    ))
}

async fn remove(
    State(node): State<Arc<Node>>,
    Path(uid): Path<String>,
    _: Params<NoParams>,
) -> Result<Json<Value>, Error> {
    let uid: u64 = uid
        .parse()
        .map_err(|_| Error::bad_request("invalid_uid", format!("{uid:?} is not a node uid")))?;
    let raft = node.raft()?;
    // Up to date with the leader, so that a node just added is known here.
    raft.read_barrier(Consistency::Linearizable).await?;
    let metrics = raft.metrics();
    if metrics
        .membership_config
        .membership()
        .get_node(&uid)
        .is_none()
    {
        return Err(Error::NotFound {
            code: "node_not_found",
            message: format!(
                "the cluster has no control node with uid {uid}; GET /v1/cluster lists its members"
            ),
        });
    }
    raft.remove(uid)
        .await
        .map_err(|err| Error::from(err).concerning(json!({ "uid": uid })))?;
    tracing::info!(uid, "removed a control node");
    Ok(Json(json!({ "uid": uid, "removed": true })))
}
