//! The revisioned key-value store over HTTP: `/v1/kv/{key}` (PUT, GET, DELETE) and
//! `GET /v1/kv?prefix=...` for listings.
//!
//! Reads are linearizable unless `?consistency=lease` or `?consistency=stale` asks for less;
//! the answer says which it got in `X-Keel-Consistency`, and the store revision it saw in
//! `X-Keel-Revision`. Writes take `?prev_revision=N` for compare-and-set (`0`: create only),
//! `?lease=ID` to die with a lease, and an `Idempotency-Key` header that makes a retried
//! write apply once.
//!
//! `?watch=true&revision=N` on a key or a prefix listing streams every change after revision
//! `N` as JSON lines (`{"revision","type","kv"}`), in order, none skipped, and waits for more;
//! a client that reconnects (to any node) with the last revision it saw resumes exactly
//! there. History older than the last `kv::HISTORY` revisions is compacted: asking for it
//! answers `410` with `compact_revision`, as etcd does. Idle streams get a
//! `{"progress_revision"}` line every few seconds.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;
use std::time::Instant;

use axum::body::Body;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::DefaultBodyLimit;
use axum::extract::Path;
use axum::extract::State;
use axum::http::header;
use axum::http::HeaderMap;
use axum::http::HeaderName;
use axum::http::HeaderValue;
use axum::response::IntoResponse;
use axum::response::Response;
use axum::routing::get;
use axum::Json;
use axum::Router;
use futures::StreamExt;
use keel_raft::Consistency;
use serde::Deserialize;
use serde_json::json;

use super::parse_json;
use super::ChangeWatch;
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

/// Unknown parameters are refused: a misspelt `prev_revision` must not make a blind write.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ReadParams {
    consistency: Option<String>,
    #[serde(default)]
    watch: bool,
    revision: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ListParams {
    #[serde(default)]
    prefix: String,
    start: Option<String>,
    limit: Option<usize>,
    consistency: Option<String>,
    #[serde(default)]
    watch: bool,
    revision: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct WriteParams {
    prev_revision: Option<u64>,
    lease: Option<u64>,
}

/// How long an idle watch stream goes without a line.
const PROGRESS_EVERY: Duration = Duration::from_secs(5);

/// Events read per batch while streaming, and the most of the store a batch holds (past its
/// first event): a watcher that does not read its stream holds a batch in memory, and 256
/// values of 1 MiB each made that 256 MiB per watcher.
const WATCH_BATCH: usize = 256;
const WATCH_BATCH_BYTES: usize = 1 << 20;

/// Which keys a watch follows.
enum KeyFilter {
    Exact(String),
    Prefix(String),
}

impl KeyFilter {
    fn matches(&self, key: &str) -> bool {
        match self {
            KeyFilter::Exact(k) => k == key,
            KeyFilter::Prefix(p) => key.starts_with(p.as_str()),
        }
    }
}

struct WatchStream {
    node: Arc<Node>,
    changes: ChangeWatch,
    after: u64,
    filter: KeyFilter,
    pending: VecDeque<Bytes>,
    ended: bool,
}

impl WatchStream {
    fn line(value: serde_json::Value) -> Bytes {
        let mut line = value.to_string().into_bytes();
        line.push(b'\n');
        Bytes::from(line)
    }

    /// Queues the next events, or waits for some; an error ends the stream.
    async fn fill(&mut self) -> Result<(), Error> {
        let raft = self.node.raft()?;
        let events =
            match kv::events_after(&raft.reader(), self.after, WATCH_BATCH, WATCH_BATCH_BYTES) {
                // A snapshot is replacing this node's state; the history goes on after it.
                Err(keel_storage::Error::Installing) => {
                    self.changes.next(Instant::now() + PROGRESS_EVERY).await?;
                    return Ok(());
                }
                events => events?,
            };
        if let Some(oldest) = events.first().map(|event| event.revision) {
            let before = self.after;
            // Past a gap further on, the next call starts at the gap.
            for event in in_order_after(self.after, events) {
                self.after = event.revision;
                if self.filter.matches(&event.kv.key) {
                    self.pending.push_back(Self::line(json!(event)));
                }
            }
            if self.after == before {
                // The history the client needs was compacted while it fell behind.
                return Err(Error::Compacted {
                    requested: before + 1,
                    oldest,
                });
            }
            return Ok(());
        }
        if !self.changes.next(Instant::now() + PROGRESS_EVERY).await? {
            // A progress line says the watcher has seen everything up to its revision, which
            // only a node in touch with a quorum knows: one cut off from it ends the stream
            // with the reason instead, so the watcher goes to another node.
            raft.read_barrier(Consistency::Linearizable).await?;
            // A watch that starts past the store's revision has seen nothing beyond the store.
            let seen = self.after.min(kv::revision(&raft.reader())?);
            self.pending
                .push_back(Self::line(json!({ "progress_revision": seen })));
        }
        Ok(())
    }

    async fn next_line(mut self) -> Option<(Bytes, Self)> {
        loop {
            if let Some(line) = self.pending.pop_front() {
                return Some((line, self));
            }
            if self.ended {
                return None;
            }
            // A stream that cannot go on (the node is stopping, say) ends with a line that
            // says why, so the client reconnects, elsewhere if need be, with the last
            // revision it saw.
            if let Err(err) = self.fill().await {
                self.ended = true;
                self.pending.push_back(Self::line(err.body()));
            }
        }
    }
}

/// The events that follow revision `after` one by one, up to the first gap. A node keeps its
/// history whole, but one of an earlier build can hold a gap (it expires one event per revision,
/// which leaves older ones behind after a snapshot held more), and a watcher must never skip a
/// change without being told.
fn in_order_after(after: u64, events: Vec<kv::Event>) -> impl Iterator<Item = kv::Event> {
    events
        .into_iter()
        .zip(after.saturating_add(1)..)
        .take_while(|(event, expected)| event.revision == *expected)
        .map(|(event, _)| event)
}

async fn watch(
    node: Arc<Node>,
    filter: KeyFilter,
    revision: Option<u64>,
) -> Result<Response, Error> {
    let raft = node.raft()?;
    let changes = ChangeWatch::new(&node)?;
    raft.read_barrier(Consistency::Linearizable).await?;
    let current = kv::revision(&raft.reader())?;
    // Without a revision, the watch starts with the next change.
    let after = revision.unwrap_or(current);
    let oldest = kv::oldest_kept(current);
    if after.saturating_add(1) < oldest {
        return Err(Error::Compacted {
            requested: after.saturating_add(1),
            oldest,
        });
    }
    let stream = WatchStream {
        node: node.clone(),
        changes,
        after,
        filter,
        pending: VecDeque::new(),
        ended: false,
    };
    let lines = futures::stream::unfold(stream, WatchStream::next_line)
        .map(Ok::<_, std::convert::Infallible>);
    let headers = [
        (
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/x-ndjson"),
        ),
        (
            HeaderName::from_static("x-keel-revision"),
            HeaderValue::from(current),
        ),
    ];
    Ok((headers, Body::from_stream(lines)).into_response())
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
        .filter(|k| {
            (1..=MAX_IDEMPOTENCY_KEY_LEN).contains(&k.len()) && k.bytes().all(|b| b.is_ascii_graphic())
        })
        .ok_or_else(|| {
            Error::bad_request(
                "invalid_idempotency_key",
                format!(
                    "Idempotency-Key must be 1 to {MAX_IDEMPOTENCY_KEY_LEN} visible ASCII characters (no spaces)"
                ),
            )
        })?;
    Ok(Some(format!("{CLIENT_REQUEST_ID}{key}")))
}

/// What a client's idempotency key is prefixed with to make its request id.
const CLIENT_REQUEST_ID: &str = "client:";
const MAX_IDEMPOTENCY_KEY_LEN: usize =
    keel_raft::machine::MAX_REQUEST_ID_LEN - CLIENT_REQUEST_ID.len();

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
    if params.watch {
        return watch(node, KeyFilter::Exact(key), params.revision).await;
    }
    refuse_a_past_read(params.revision)?;
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

/// keel keeps the past as watch events, not as versions to read: a read at a revision would
/// silently get the latest value instead.
fn refuse_a_past_read(revision: Option<u64>) -> Result<(), Error> {
    match revision {
        Some(_) => Err(Error::bad_request(
            "invalid_query",
            "revision applies to watches (watch=true): reads serve the latest value, with its \
             revision in X-Keel-Revision",
        )),
        None => Ok(()),
    }
}

async fn list(
    State(node): State<Arc<Node>>,
    Params(params): Params<ListParams>,
) -> Result<Response, Error> {
    if params.watch {
        return watch(node, KeyFilter::Prefix(params.prefix), params.revision).await;
    }
    refuse_a_past_read(params.revision)?;
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
    let command = Command::Kv(command);
    let reply = node.propose(&command, request_id(headers)?).await?;
    match reply {
        // The reply is the body, `{"revision": .., "kv": {..}}`, serialized straight from it.
        Reply::Kv(Ok(mut write)) => {
            // A put's reply leaves the value out; the answer shows the value as written.
            if let Command::Kv(KvCommand::Put { value, .. }) = command {
                write.kv.value = value;
            }
            let revision = write.revision.to_string();
            Ok(([("x-keel-revision", revision)], Json(write)).into_response())
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
        Reply::Kv(Err(KvError::LeaseNotFound)) => Err(Error::NotFound {
            code: "lease_not_found",
            message: "the lease does not exist (it expired or was revoked); grant a new one".into(),
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
        lease: params.lease.filter(|lease| *lease != 0),
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
    if params.lease.is_some() {
        return Err(Error::bad_request(
            "invalid_query",
            "lease applies to PUT: a deletion has no lease to attach",
        ));
    }
    let command = KvCommand::Delete {
        key,
        prev_revision: params.prev_revision,
    };
    write(&node, command, &headers).await
}

#[cfg(test)]
mod tests {
    use super::*;

    /// (the watcher's revision, the revisions read after it, those it may be sent)
    const CASES: &[(u64, &[u64], &[u64])] = &[
        (4, &[5, 6, 7], &[5, 6, 7]),
        (4, &[5, 6, 8, 9], &[5, 6]),
        (4, &[6, 7], &[]),
        (4, &[], &[]),
        (0, &[1, 3], &[1]),
    ];

    #[test]
    fn a_watcher_is_sent_events_up_to_the_first_gap_only() {
        let event = |revision| kv::Event {
            revision,
            kind: kv::EventKind::Put,
            kv: kv::KeyValue {
                key: format!("k{revision}"),
                value: String::new(),
                create_revision: revision,
                mod_revision: revision,
                version: 1,
                lease: 0,
            },
        };
        for (after, read, sent) in CASES {
            let events = read.iter().copied().map(event).collect();
            let revisions: Vec<u64> = in_order_after(*after, events).map(|e| e.revision).collect();
            assert_eq!(revisions, *sent, "after {after}, read {read:?}");
        }
    }
}
