//! The revisioned key-value store over HTTP: `/v1/kv/{key}` (PUT, GET, DELETE) and
//! `GET /v1/kv?prefix=...` for listings.
//!
//! Reads are linearizable unless `?consistency=lease` or `?consistency=stale` asks for less;
//! the answer says which it got in `X-Keel-Consistency`, and the store revision it saw in
//! `X-Keel-Revision`. Writes take `?prev_revision=N` for compare-and-set (`0`: create only)
//! and an `Idempotency-Key` header that makes a retried write apply once.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::DefaultBodyLimit;
use axum::extract::Path;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::http::HeaderValue;
use axum::response::IntoResponse;
use axum::response::Response;
use axum::routing::get;
use axum::Json;
use axum::Router;
use keel_raft::Consistency;
use serde::Deserialize;
use serde_json::json;

use super::parse_json;
use super::Params;
use crate::domain::kv;
use crate::domain::kv::KvCommand;
use crate::domain::kv::KvError;
use crate::domain::Command;
use crate::domain::Reply;
use crate::node::Node;
use crate::Error;

pub const MAX_KEY_BYTES: usize = 1024;
pub const MAX_VALUE_BYTES: usize = 1 << 20;
const MAX_BODY_BYTES: usize = 2 * MAX_VALUE_BYTES;
const DEFAULT_LIST_LIMIT: usize = 1000;
const MAX_LIST_LIMIT: usize = 10_000;

pub fn routes(node: Arc<Node>) -> Router {
    Router::new()
        .route("/v1/kv", get(list))
        .route("/v1/kv/{*key}", get(read).put(put).delete(delete))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(node)
}

#[derive(Debug, Deserialize)]
struct ReadParams {
    consistency: Option<String>,
}

#[derive(Debug, Deserialize)]
struct ListParams {
    #[serde(default)]
    prefix: String,
    start: Option<String>,
    limit: Option<usize>,
    consistency: Option<String>,
}

#[derive(Debug, Deserialize)]
struct WriteParams {
    prev_revision: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PutBody {
    value: String,
}

fn parse_consistency(value: Option<&str>) -> Result<Consistency, Error> {
    match value.unwrap_or("linearizable") {
        "linearizable" => Ok(Consistency::Linearizable),
        "lease" => Ok(Consistency::Lease),
        "stale" => Ok(Consistency::Stale),
        other => Err(Error::bad_request(
            "invalid_consistency",
            format!("consistency {other:?} is not one of linearizable, lease, stale"),
        )),
    }
}

fn consistency_name(consistency: Consistency) -> &'static str {
    match consistency {
        Consistency::Linearizable => "linearizable",
        Consistency::Lease => "lease",
        Consistency::Stale => "stale",
    }
}

fn check_key(key: &str) -> Result<(), Error> {
    if key.is_empty() || key.len() > MAX_KEY_BYTES {
        return Err(Error::bad_request(
            "invalid_key",
            format!("keys must be 1 to {MAX_KEY_BYTES} bytes"),
        ));
    }
    Ok(())
}

/// The client's idempotency key, namespaced apart from the ids keel makes up.
fn request_id(headers: &HeaderMap) -> Result<Option<String>, Error> {
    let Some(value) = headers.get("idempotency-key") else {
        return Ok(None);
    };
    let key = value
        .to_str()
        .ok()
        .filter(|k| !k.is_empty() && k.len() <= keel_raft::machine::MAX_REQUEST_ID_LEN - 7)
        .ok_or_else(|| {
            Error::bad_request(
                "invalid_idempotency_key",
                "Idempotency-Key must be 1 to 120 visible ASCII characters",
            )
        })?;
    Ok(Some(format!("client:{key}")))
}

/// Serves a read after making this node's state fresh enough for `consistency`.
async fn fresh_read<T>(
    node: &Node,
    consistency: Consistency,
    read: impl FnOnce(&keel_storage::Reader) -> Result<T, Error>,
) -> Result<(T, u64, HeaderMap), Error> {
    let raft = node.raft()?;
    raft.read_barrier(consistency).await?;
    let reader = raft.reader();
    let revision = kv::revision(&reader)?;
    let value = read(&reader)?;
    let mut headers = HeaderMap::new();
    headers.insert(
        "x-keel-consistency",
        HeaderValue::from_static(consistency_name(consistency)),
    );
    headers.insert("x-keel-revision", HeaderValue::from(revision));
    Ok((value, revision, headers))
}

async fn read(
    State(node): State<Arc<Node>>,
    Path(key): Path<String>,
    Params(params): Params<ReadParams>,
) -> Result<Response, Error> {
    check_key(&key)?;
    let consistency = parse_consistency(params.consistency.as_deref())?;
    let (found, _, headers) =
        fresh_read(&node, consistency, |reader| Ok(kv::get(reader, &key)?)).await?;
    match found {
        Some(kv) => Ok((headers, Json(kv)).into_response()),
        None => Err(Error::NotFound {
            code: "key_not_found",
            message: format!("key {key:?} does not exist"),
        }),
    }
}

async fn list(
    State(node): State<Arc<Node>>,
    Params(params): Params<ListParams>,
) -> Result<Response, Error> {
    let consistency = parse_consistency(params.consistency.as_deref())?;
    let limit = params.limit.unwrap_or(DEFAULT_LIST_LIMIT);
    if limit == 0 || limit > MAX_LIST_LIMIT {
        return Err(Error::bad_request(
            "invalid_limit",
            format!("limit must be 1 to {MAX_LIST_LIMIT}"),
        ));
    }
    let ((kvs, more), revision, headers) = fresh_read(&node, consistency, |reader| {
        Ok(kv::range(
            reader,
            &params.prefix,
            params.start.as_deref(),
            limit,
        )?)
    })
    .await?;
    Ok((
        headers,
        Json(json!({ "kvs": kvs, "more": more, "revision": revision })),
    )
        .into_response())
}

async fn write(node: &Node, command: KvCommand, headers: &HeaderMap) -> Result<Response, Error> {
    let reply = node
        .propose(Command::Kv(command), request_id(headers)?)
        .await?;
    match reply {
        Reply::Kv(Ok(write)) => {
            let body = json!({ "revision": write.revision, "kv": write.kv });
            Ok(([("x-keel-revision", write.revision.to_string())], Json(body)).into_response())
        }
        Reply::Kv(Err(KvError::RevisionMismatch { current })) => Err(Error::Conflict {
            code: "revision_mismatch",
            message: format!("the key's current revision is {current}; re-read it and retry with that prev_revision"),
            details: json!({ "current_revision": current }),
        }),
        Reply::Kv(Err(KvError::NotFound)) => Err(Error::NotFound {
            code: "key_not_found",
            message: "the key does not exist".into(),
        }),
        other => Err(Error::Internal(format!("unexpected reply to a kv write: {other:?}"))),
    }
}

fn body_error(rejection: BytesRejection) -> Error {
    if rejection.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
        Error::PayloadTooLarge(format!(
            "the body is larger than {MAX_BODY_BYTES} bytes; values may be at most {MAX_VALUE_BYTES} bytes"
        ))
    } else {
        Error::bad_request("invalid_body", rejection.body_text())
    }
}

async fn put(
    State(node): State<Arc<Node>>,
    Path(key): Path<String>,
    Params(params): Params<WriteParams>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, Error> {
    check_key(&key)?;
    let body: PutBody = parse_json(&body.map_err(body_error)?)?;
    if body.value.len() > MAX_VALUE_BYTES {
        return Err(Error::PayloadTooLarge(format!(
            "values may be at most {MAX_VALUE_BYTES} bytes"
        )));
    }
    let command = KvCommand::Put {
        key,
        value: body.value,
        prev_revision: params.prev_revision,
    };
    write(&node, command, &headers).await
}

async fn delete(
    State(node): State<Arc<Node>>,
    Path(key): Path<String>,
    Params(params): Params<WriteParams>,
    headers: HeaderMap,
) -> Result<Response, Error> {
    check_key(&key)?;
    let command = KvCommand::Delete {
        key,
        prev_revision: params.prev_revision,
    };
    write(&node, command, &headers).await
}
