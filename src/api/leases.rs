//! Leases over HTTP (`/v1/leases`): grant, keep alive, revoke, list. Keys are attached with
//! `PUT /v1/kv/{key}?lease={id}` and deleted when the lease ends.
//!
//! A keep-alive is answered by the leader from memory (no log entry); on a follower it is
//! relayed to the leader.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::Path;
use axum::extract::State;
use axum::http::request::Parts;
use axum::response::IntoResponse;
use axum::response::Response;
use axum::routing::delete;
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
use super::Params;
use super::Relayable;
use crate::domain::lease;
use crate::domain::lease::Lease;
use crate::domain::lease::LeaseCommand;
use crate::domain::lease::LeaseError;
use crate::domain::Command;
use crate::domain::Reply;
use crate::lessor::RefreshError;
use crate::node::Node;
use crate::Error;

/// Longest TTL a lease may have.
pub const MAX_TTL_SECS: u64 = 24 * 3600;

pub fn routes(node: Arc<Node>) -> Router {
    Router::new()
        .route("/v1/leases", get(list).post(grant))
        .route("/v1/leases/{id}", delete(revoke))
        .route("/v1/leases/{id}/keepalive", post(keepalive))
        .with_state(node)
}

/// The lease routes take no query parameters: one sent by mistake (`?ttl=10` for the body's
/// field) is refused rather than ignored.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NoParams {}

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

/// Refreshes lease `id` on the leader, relaying `request` there if needed.
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
    let attempt = || match node.lessor.refresh(node, id) {
        Ok(ttl) => Ok(Some(ttl)),
        Err(RefreshError::NotLeader) => Ok(None),
        Err(RefreshError::NotFound) => Err(not_found()),
        Err(RefreshError::Failed(err)) => Err(err),
    };
    match on_leader(node, request, attempt).await? {
        LeaderOnly::Here(ttl) => {
            Ok(Json(json!({ "id": answered_id, "ttl": ttl.as_secs() })).into_response())
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
