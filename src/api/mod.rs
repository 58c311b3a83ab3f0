//! The REST API: one module per dialect, all served by one axum router on the node's address
//! next to the Raft peer routes.
//!
//! - [`bootstrap`]: Redis Enterprise style node bootstrap (`/v1/bootstrap`).
//! - [`cluster`]: the control cluster itself (`/v1/cluster`, `/v1/nodes`).
//! - [`kv`]: the revisioned key-value store with watches (`/v1/kv`) and leases (`/v1/leases`).
//! - [`clusterflux`]: ClusterFlux node registry and versioned metadata (`/nodes`, `/clusters`).
//! - [`undermoon`]: the undermoon broker API for its coordinator (`/api/v3`).
//! - [`metrics`]: Prometheus text (`/metrics`).
//!
//! Authentication is per route family: once the cluster has credentials, every family
//! requires HTTP Basic unless the operator opened it with `--open-routes`. Membership changes
//! (joins hand out the cluster secret) cannot be opened.

mod answers;
mod bootstrap;
mod cluster;
mod clusterflux;
mod kv;
mod leases;
mod metrics;
mod undermoon;

use std::sync::Arc;
use std::time::Duration;
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::Request;
use axum::extract::State;
use axum::http::header;
use axum::http::Method;
use axum::http::StatusCode;
use axum::http::Uri;
use axum::middleware::Next;
use axum::response::IntoResponse;
use axum::response::Response;
use axum::Router;

use crate::domain::cluster::Credentials;
use crate::node::Node;
use crate::Error;
use answers::Answers;
use answers::FamilyAnswers;

/// The whole HTTP surface of `node`.
pub fn router(node: Arc<Node>) -> Router {
    let answers = Arc::new(Answers::default());
    let guarded = |routes: Router, family: &'static str, checks_credentials: bool| {
        let guard = Arc::new(Guard {
            node: node.clone(),
            family,
            checks_credentials,
            answers: answers.family(family),
        });
        with_method_errors(routes, family)
            .route_layer(axum::middleware::from_fn_with_state(guard, guard_family))
    };
    let mut app = guarded(bootstrap::public_routes(node.clone()), "bootstrap", false);
    for (family, routes) in [
        ("cluster", cluster::routes(node.clone())),
        // Never open: joining hands out the cluster secret.
        (
            "membership",
            cluster::membership_routes(node.clone()).merge(bootstrap::member_routes(node.clone())),
        ),
        (
            "kv",
            kv::routes(node.clone()).merge(leases::routes(node.clone())),
        ),
        ("clusterflux", clusterflux::routes(node.clone())),
        ("undermoon", undermoon::routes(node.clone())),
        ("metrics", metrics::routes(node.clone(), answers.clone())),
    ] {
        app = app.merge(guarded(routes, family, true));
    }
    let unknown_routes = answers.family("none");
    app.merge(keel_raft::service::router(node.raft_slot()))
        .fallback(move |method: Method, uri: Uri| async move {
            let under_undermoon = uri
                .path()
                .strip_prefix(undermoon::PREFIX)
                .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'));
            let family = if under_undermoon { "undermoon" } else { "keel" };
            let message = "no such endpoint; see the README for the API".to_string();
            let response = dialect_error(family, StatusCode::NOT_FOUND, message);
            unknown_routes.record(false, &method, &uri, &response);
            response
        })
}

/// `routes` answering a method they do not take in the family's error format (axum adds the
/// Allow header).
fn with_method_errors(routes: Router, family: &'static str) -> Router {
    routes.method_not_allowed_fallback(
        move |method: axum::http::Method, uri: axum::extract::OriginalUri| async move {
            let path = uri.0.path().to_string();
            let message =
                format!("{path} does not take {method}; the Allow header lists what it takes");
            dialect_error(family, StatusCode::METHOD_NOT_ALLOWED, message)
        },
    )
}

/// The error format of a route family: undermoon's for its broker API, keel's for the rest.
fn dialect_error(family: &str, status: StatusCode, message: String) -> Response {
    if family == "undermoon" {
        undermoon::plain_error(status, message)
    } else {
        plain_error(status, message)
    }
}

/// A client error axum wrote by itself before the handler ran (a body over the limit, a path
/// it cannot decode: plain text) in the family's error format, so that a client reads every
/// error alike. Handlers answer JSON, which passes untouched, as does every success.
async fn in_dialect(family: &str, response: Response) -> Response {
    let status = response.status();
    if !status.is_client_error() {
        return response;
    }
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|kind| kind.as_bytes().starts_with(b"application/json"));
    if is_json {
        return response;
    }
    let message = if status == StatusCode::PAYLOAD_TOO_LARGE {
        "the request body is larger than the limit of 2 MiB".to_string()
    } else {
        let text = axum::body::to_bytes(response.into_body(), 64 << 10)
            .await
            .unwrap_or_default();
        String::from_utf8_lossy(&text).into_owned()
    };
    dialect_error(family, status, message)
}

/// An error of keel's own dialects for an answer axum writes by itself.
fn plain_error(status: StatusCode, message: String) -> Response {
    let code = match status {
        StatusCode::NOT_FOUND => "not_found",
        StatusCode::METHOD_NOT_ALLOWED => "method_not_allowed",
        StatusCode::PAYLOAD_TOO_LARGE => "payload_too_large",
        _ => "bad_request",
    };
    (
        status,
        axum::Json(serde_json::json!({ "error_code": code, "message": message })),
    )
        .into_response()
}

/// What a route family's guard knows; see [`guard_family`].
struct Guard {
    node: Arc<Node>,
    family: &'static str,
    /// False for the bootstrap call, which must be open to make a cluster.
    checks_credentials: bool,
    answers: Arc<FamilyAnswers>,
}

/// Every route family's guard: checks credentials (unless the family is open), answers errors
/// axum wrote in the family's dialect, and counts and logs the answers. One middleware does it
/// all, as each layer costs every request (a layer of its own for the log cost 2.5 % of
/// put (64)).
async fn guard_family(State(guard): State<Arc<Guard>>, request: Request, next: Next) -> Response {
    let Guard {
        node,
        family,
        checks_credentials,
        answers,
    } = guard.as_ref();
    let (method, uri) = (request.method().clone(), request.uri().clone());
    let relayed = request.headers().contains_key(RELAYED_HEADER);
    let unanswered = answers.until_answered(relayed);
    let header = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|h| h.to_str().ok());
    let authorized = if *checks_credentials {
        authorize(node, family, header).await
    } else {
        Ok(())
    };
    let response = match authorized {
        Err(denied) if *family == "undermoon" => {
            undermoon::UndermoonError::from(denied).into_response()
        }
        Err(denied) => denied.into_response(),
        Ok(()) => in_dialect(family, next.run(request).await).await,
    };
    unanswered.answered();
    answers.record(relayed, &method, &uri, &response);
    response
}

/// The credentials a request to `family` must carry: none for an open family, an idle node
/// (only the bootstrap call can do anything there, and it must be open) or the loopback-only
/// embedded default; an error while a member has not applied its cluster's first command
/// (nothing to check against, so it serves nothing).
fn credentials_to_check<'a>(
    node: &'a Node,
    family: &str,
) -> Result<Option<&'a Credentials>, Error> {
    if node.settings.open_routes.iter().any(|open| open == family) || !node.is_member() {
        return Ok(None);
    }
    match node.credentials()? {
        Some(credentials) => Ok(credentials.as_ref()),
        None => Err(node.not_ready()),
    }
}

async fn authorize(node: &Node, family: &str, header: Option<&str>) -> Result<(), Error> {
    let Some(credentials) = credentials_to_check(node, family)? else {
        return Ok(());
    };
    if node.verifier.check(credentials, header).await {
        Ok(())
    } else {
        Err(Error::Unauthorized(
            "missing or wrong cluster credentials; send them with HTTP Basic authentication".into(),
        ))
    }
}

/// The query of a route that takes no parameters: one sent by mistake (`?ttl=10` for a body's
/// field, a misspelt option) is refused rather than ignored.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct NoParams {}

/// Query parameters, refused in the API's own error format when they do not parse.
pub(crate) struct Params<T>(pub T);

impl<S: Send + Sync, T: serde::de::DeserializeOwned> axum::extract::FromRequestParts<S>
    for Params<T>
{
    type Rejection = Error;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &S,
    ) -> Result<Self, Error> {
        axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|axum::extract::Query(params)| Params(params))
            .map_err(|e| Error::bad_request("invalid_query", e.body_text()))
    }
}

/// Parses a JSON body, answering in the API's own error format.
pub(crate) fn parse_json<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, Error> {
    parse_json_or(body, "invalid_body")
}

/// Parses a JSON body, refusing it with error code `code` (a dialect's own).
pub(crate) fn parse_json_or<T: serde::de::DeserializeOwned>(
    body: &[u8],
    code: &'static str,
) -> Result<T, Error> {
    serde_json::from_slice(body)
        .map_err(|e| Error::bad_request(code, format!("invalid JSON body: {e}")))
}

/// Marks a request relayed to the leader, so it is never relayed twice.
const RELAYED_HEADER: &str = "x-keel-relayed";

/// A request kept whole so it can be relayed to the leader's REST API.
pub(crate) struct Relayable {
    method: axum::http::Method,
    path_and_query: String,
    headers: axum::http::HeaderMap,
    body: Bytes,
    /// How long the leader may take; the node's request timeout unless set longer.
    timeout: Option<Duration>,
    /// Whether the request may go to a new leader once the old one may have received it.
    may_go_again: bool,
}

impl Relayable {
    pub(crate) fn new(parts: &axum::http::request::Parts, body: Bytes) -> Self {
        Self {
            method: parts.method.clone(),
            // A nested router sees its URI without the prefix; the leader needs all of it.
            path_and_query: parts
                .extensions
                .get::<axum::extract::OriginalUri>()
                .map_or(&parts.uri, |original| &original.0)
                .path_and_query()
                .map_or("/".into(), |p| p.to_string()),
            headers: parts.headers.clone(),
            body,
            timeout: None,
            may_go_again: true,
        }
    }

    /// For requests that must not be carried out twice: one is sent to a new leader only if
    /// the old one was never reached. Refreshes and reads may go to each leader in turn.
    pub(crate) fn at_most_once(self) -> Self {
        Self {
            may_go_again: false,
            ..self
        }
    }

    /// For requests the leader serves slowly by design (waiting on other systems).
    pub(crate) fn with_timeout(self, timeout: Duration) -> Self {
        Self {
            timeout: Some(timeout),
            ..self
        }
    }

    /// The leader's answer, within `timeout`.
    async fn relay(
        &self,
        node: &Node,
        leader: &str,
        timeout: Duration,
    ) -> Result<Response, RelayFailed> {
        let mut request = node
            .http
            .request(
                self.method.clone(),
                format!("http://{leader}{}", self.path_and_query),
            )
            .timeout(timeout)
            .header(RELAYED_HEADER, "1")
            .body(self.body.clone());
        for name in [header::AUTHORIZATION, header::CONTENT_TYPE] {
            if let Some(value) = self.headers.get(&name) {
                request = request.header(name, value);
            }
        }
        let unavailable = |message| Error::Unavailable {
            code: "leader_unavailable",
            message,
            retry_after: Duration::from_secs(1),
        };
        let answer = request.send().await.map_err(|e| {
            let error = unavailable(format!("the leader at {leader} did not answer: {e}"));
            if e.is_connect() {
                RelayFailed::NotDelivered(error)
            } else {
                RelayFailed::NoAnswer(error)
            }
        })?;
        let status = answer.status();
        let content_type = answer.headers().get(header::CONTENT_TYPE).cloned();
        let body = answer.bytes().await.map_err(|e| {
            RelayFailed::NoAnswer(unavailable(format!("the leader's answer broke off: {e}")))
        })?;
        let mut response = (status, body).into_response();
        if let Some(content_type) = content_type {
            response
                .headers_mut()
                .insert(header::CONTENT_TYPE, content_type);
        }
        Ok(response)
    }
}

/// Why a relay brought no answer: the leader was never reached (the connection was refused),
/// or it may have received the request.
enum RelayFailed {
    NotDelivered(Error),
    NoAnswer(Error),
}

/// The outcome of [`on_leader`]: served here, or the leader's answer relayed.
pub(crate) enum LeaderOnly<T> {
    Here(T),
    Relayed(Response),
}

/// Serves a request that only the leader can answer (lease refreshes live in the leader's
/// memory). `attempt` serves it if this node leads and returns `None` otherwise; then the
/// request is relayed to the leader, or, during an election, retried until the deadline. A
/// relay to a leader that is down, paused or cut off goes to the next leader as soon as this
/// node hears of one (unless the request is [`Relayable::at_most_once`]), as forwarded writes
/// do: waiting for the old leader kept keep-alives failing for the whole request timeout at
/// every failover.
pub(crate) async fn on_leader<T>(
    node: &Node,
    request: &Relayable,
    mut attempt: impl FnMut() -> Result<Option<T>, Error>,
) -> Result<LeaderOnly<T>, Error> {
    // Finding the leader takes at most the request timeout; a relay takes the request's own
    // time if it has one (the leader may wait on other systems).
    let deadline = Instant::now() + node.settings.raft.request_timeout;
    let relayed = request.headers.contains_key(RELAYED_HEADER);
    let mut last_problem = None;
    loop {
        if let Some(done) = attempt()? {
            return Ok(LeaderOnly::Here(done));
        }
        let now = Instant::now();
        if now >= deadline {
            return Err(last_problem.unwrap_or_else(|| {
                keel_raft::Error::NoLeader {
                    retry_after: Duration::from_secs(1),
                }
                .into()
            }));
        }
        let raft = node.raft()?;
        if let Some((leader_id, leader)) = raft.remote_leader().filter(|_| !relayed) {
            let time = request.timeout.unwrap_or(deadline - now);
            let outcome = tokio::select! {
                // An answer that is ready is taken, whatever else happened meanwhile.
                biased;
                outcome = request.relay(node, &leader.addr, time) => outcome,
                () = raft.leader_moved_from(leader_id), if request.may_go_again => continue,
            };
            match outcome {
                Ok(response) => return Ok(LeaderOnly::Relayed(response)),
                Err(RelayFailed::NotDelivered(err)) => last_problem = Some(err),
                Err(RelayFailed::NoAnswer(err)) if request.may_go_again => last_problem = Some(err),
                Err(RelayFailed::NoAnswer(err)) => return Err(err),
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Wakes a waiting reader when this node applies an entry (or installs a snapshot): when
/// what it reads may have changed. Other Raft news (heartbeats, replication progress) changes
/// openraft's metrics many times a second; waking on those kept idle watch streams from ever
/// reaching their progress deadline and cost CPU per waiting reader. Created before the first
/// read, it cannot miss a change that happens between a read and the wait; a wake-up with
/// nothing new for the reader just means reading again.
pub(crate) struct ChangeWatch {
    metrics: openraft::type_config::alias::WatchReceiverOf<
        keel_raft::types::TypeConfig,
        keel_raft::types::RaftMetrics,
    >,
    /// The applied index the reader has been woken for.
    applied: Option<u64>,
    stopped: std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>,
}

impl ChangeWatch {
    pub(crate) fn new(node: &Node) -> Result<Self, Error> {
        use openraft::async_runtime::WatchReceiver;
        let metrics = node.raft()?.raft().metrics();
        let applied = applied_index(&metrics.borrow_watched());
        Ok(Self {
            metrics,
            applied,
            stopped: Box::pin(node.stopped()),
        })
    }

    /// Waits for the next applied entry; false when `deadline` passes first. A node that is
    /// stopping answers at once that the caller should ask another node.
    pub(crate) async fn next(&mut self, deadline: Instant) -> Result<bool, Error> {
        use openraft::async_runtime::WatchReceiver;
        let Self {
            metrics,
            applied,
            stopped,
        } = self;
        let applied_since = async {
            loop {
                metrics.changed().await.map_err(|_| stopping())?;
                let now = applied_index(&metrics.borrow_watched());
                if now != *applied {
                    *applied = now;
                    return Ok(true);
                }
            }
        };
        tokio::select! {
            woken = applied_since => woken,
            () = stopped => Err(stopping()),
            _ = tokio::time::sleep_until(deadline.into()) => Ok(false),
        }
    }
}

fn applied_index(metrics: &keel_raft::types::RaftMetrics) -> Option<u64> {
    metrics.last_applied.as_ref().map(|log_id| log_id.index)
}

fn stopping() -> Error {
    Error::Unavailable {
        code: "shutting_down",
        message: "this node is shutting down; ask another node of the cluster".into(),
        retry_after: Duration::from_secs(1),
    }
}
