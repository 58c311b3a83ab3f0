//! Leases over HTTP (`/v1/leases`): grant, keep alive, time to live, revoke, list. Keys are
//! attached with `PUT /v1/kv/{key}?lease={id}` and deleted when the lease ends.
//!
//! A keep-alive and a time to live are answered by the leader from memory (no log entry), where
//! the lessor keeps the deadlines; on a follower they are relayed to the leader.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::Path;
use axum::extract::State;
use axum::http::request::Parts;
use axum::response::IntoResponse;
use axum::response::Response;
use axum::routing::get;
use axum::routing::post;
use axum::Json;
use axum::Router;
use keel_raft::Consistency;
use serde::Deserialize;
use serde_json::json;
use serde_json::Value;

use super::on_leader;
use super::parse_json;
use super::LeaderOnly;
use super::NoParams;
use super::Params;
use super::Relayable;
use crate::domain::lease;
use crate::domain::lease::Lease;
use crate::domain::lease::LeaseCommand;
use crate::domain::lease::LeaseError;
use crate::domain::Command;
use crate::domain::Reply;
use crate::lessor::LessorError;
use crate::node::Node;
use crate::Error;

/// Longest TTL a lease may have.
pub const MAX_TTL_SECS: u64 = 24 * 3600;

pub fn routes(node: Arc<Node>) -> Router {
    Router::new()
        .route("/v1/leases", get(list).post(grant))
        .route("/v1/leases/{id}", get(time_to_live).delete(revoke))
        .route("/v1/leases/{id}/keepalive", post(keepalive))
        .with_state(node)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct GrantBody {
    ttl: u64,
    id: Option<u64>,
}

pub(crate) fn check_ttl(ttl: u64) -> Result<u64, Error> {
    if ttl == 0 || ttl > MAX_TTL_SECS {
        return Err(Error::bad_request(
            "invalid_ttl",
            format!("ttl must be 1 to {MAX_TTL_SECS} seconds"),
        ));
    }
    Ok(ttl * 1000)
}

/// A fresh lease id, chosen by the proposer (never 0, which means "no lease"). At most 2^53 - 1,
/// the largest integer a JSON number keeps exactly in JavaScript: larger ids came back rounded
/// from JSON.parse, and keepalives for the rounded id let the real lease expire.
pub(crate) fn new_lease_id() -> u64 {
    let bytes = uuid::Uuid::new_v4().into_bytes();
    u64::from_be_bytes(bytes[..8].try_into().expect("8 bytes")) >> 11 | 1
}

fn parse_id(id: &str) -> Result<u64, Error> {
    id.parse()
        .ok()
        .filter(|id| *id != 0)
        .ok_or_else(|| Error::bad_request("invalid_lease", format!("{id:?} is not a lease id")))
}

fn lease_json(lease: &Lease) -> Value {
    let keys: Vec<&str> = lease
        .attachments
        .iter()
        .filter_map(|a| match a {
            lease::Attachment::Key(key) => Some(key.as_str()),
            lease::Attachment::RegisteredNode { .. } => None,
        })
        .collect();
    json!({ "id": lease.id, "ttl": lease.ttl_ms / 1000, "keys": keys })
}

fn lease_not_found(id: u64) -> Error {
    Error::NotFound {
        code: "lease_not_found",
        message: format!("lease {id} does not exist (it expired or was revoked)"),
    }
}

async fn grant(
    State(node): State<Arc<Node>>,
    _: Params<NoParams>,
    body: Bytes,
) -> Result<Json<Value>, Error> {
    let body: GrantBody = parse_json(&body)?;
    let ttl_ms = check_ttl(body.ttl)?;
    let id = body.id.filter(|id| *id != 0).unwrap_or_else(new_lease_id);
    match node
        .propose(&Command::Lease(LeaseCommand::Grant { id, ttl_ms }), None)
        .await?
    {
        Reply::Lease(Ok(leases)) => Ok(Json(lease_json(&leases[0]))),
        Reply::Lease(Err(LeaseError::AlreadyExists)) => Err(Error::Conflict {
            code: "lease_exists",
            message: format!("lease {id} already exists; omit the id to get a fresh one"),
            details: Value::Null,
        }),
        other => Err(Error::Internal(format!(
            "unexpected reply to a lease grant: {other:?}"
        ))),
    }
}

async fn revoke(
    State(node): State<Arc<Node>>,
    Path(id): Path<String>,
    _: Params<NoParams>,
) -> Result<Json<Value>, Error> {
    let id = parse_id(&id)?;
    match node
        .propose(&Command::Lease(LeaseCommand::Revoke { id }), None)
        .await?
    {
        Reply::Lease(Ok(leases)) => Ok(Json(lease_json(&leases[0]))),
        Reply::Lease(Err(LeaseError::NotFound)) => Err(lease_not_found(id)),
        other => Err(Error::Internal(format!(
            "unexpected reply to a lease revoke: {other:?}"
        ))),
    }
}

async fn list(State(node): State<Arc<Node>>, _: Params<NoParams>) -> Result<Json<Value>, Error> {
    let raft = node.raft()?;
    raft.read_barrier(Consistency::Linearizable).await?;
    let leases: Vec<Value> = lease::all(&raft.reader())?.iter().map(lease_json).collect();
    Ok(Json(json!({ "leases": leases })))
}

/// Restarts lease `id`'s TTL and answers `{"id": answered_id, "ttl"}`: served by the leader,
/// which holds the deadlines, and relayed there from a follower. `not_found` is the error for
/// a lease that expired or never was, in the caller's terms.
pub(crate) async fn refresh(
    node: &Node,
    id: u64,
    request: &Relayable,
    answered_id: u64,
    not_found: impl Fn() -> Error,
) -> Result<Response, Error> {
    let attempt = || on_lessor(node.lessor.refresh(node, id), &not_found);
    match on_leader(node, request, attempt).await? {
        LeaderOnly::Here(ttl) => {
            Ok(Json(json!({ "id": answered_id, "ttl": ttl.as_secs() })).into_response())
        }
        LeaderOnly::Relayed(response) => Ok(response),
    }
}

/// A lessor's answer as [`on_leader`] takes it: none when the request belongs on the leader.
fn on_lessor<T>(
    answer: Result<T, LessorError>,
    not_found: impl Fn() -> Error,
) -> Result<Option<T>, Error> {
    match answer {
        Ok(answer) => Ok(Some(answer)),
        Err(LessorError::NotLeader) => Ok(None),
        Err(LessorError::NotFound) => Err(not_found()),
        Err(LessorError::Failed(err)) => Err(err),
    }
}

/// Lease `id` with the time it has left (`remaining_ms`) unless refreshed, like etcd's
/// LeaseTimeToLive: served by the leader, which holds the deadlines, and relayed there from a
/// follower.
async fn time_to_live(
    State(node): State<Arc<Node>>,
    Path(id): Path<String>,
    _: Params<NoParams>,
    parts: Parts,
) -> Result<Response, Error> {
    let id = parse_id(&id)?;
    let attempt = || on_lessor(node.lessor.time_to_live(&node, id), || lease_not_found(id));
    match on_leader(&node, &Relayable::new(&parts, Bytes::new()), attempt).await? {
        LeaderOnly::Here((lease, left)) => {
            let mut answer = lease_json(&lease);
            let remaining_ms = u64::try_from(left.as_millis()).unwrap_or(u64::MAX);
            answer["remaining_ms"] = json!(remaining_ms);
            Ok(Json(answer).into_response())
        }
        LeaderOnly::Relayed(response) => Ok(response),
    }
}

async fn keepalive(
    State(node): State<Arc<Node>>,
    Path(id): Path<String>,
    _: Params<NoParams>,
    parts: Parts,
    body: Bytes,
) -> Result<Response, Error> {
    let id = parse_id(&id)?;
    refresh(&node, id, &Relayable::new(&parts, body), id, || {
        lease_not_found(id)
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fresh_lease_ids_survive_javascript_numbers() {
        const EXACT_IN_JAVASCRIPT: u64 = (1 << 53) - 1;
        for _ in 0..10_000 {
            let id = new_lease_id();
            assert!(id != 0 && id <= EXACT_IN_JAVASCRIPT, "{id}");
        }
    }
}
