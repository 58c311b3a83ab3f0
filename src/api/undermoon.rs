//! The undermoon broker dialect (seed `001` and `shared/specs/undermoon-broker.md`) under
//! `/api/v3`: what undermoon's unmodified coordinator calls, plus the memory broker's
//! operator API.
//!
//! Every mutating call is one [`BrokerCommand`] through Raft, stamped with this node's clock
//! (Unix seconds) for failure reports. Reads are linearizable and come from the state
//! machine's current broker (shared, never reloaded while it is current), so a coordinator
//! that round-robins over all keel nodes sees one broker. Errors are `{"error": "CODE"}` with
//! undermoon's statuses; when the cluster cannot decide (no leader, no quorum) the answer is
//! `409 RETRY`, which the coordinator retries.
//!
//! Beyond undermoon: `GET /clusters/meta/{name}?epoch_gt=N[&timeout=S]` waits (default 30 s,
//! at most 300 s) until the cluster's epoch exceeds `N` instead of answering at once.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use std::time::Instant;
use std::time::SystemTime;

use axum::body::Bytes;
use axum::extract::Path;
use axum::extract::State;
use axum::http::request::Parts;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::response::Response;
use axum::routing::get;
use axum::routing::post;
use axum::routing::put;
use axum::Json;
use axum::Router;
use keel_raft::Consistency;
use openraft::ServerState;
use serde::Deserialize;
use serde_json::json;
use serde_json::Value;

use super::on_leader;
use super::ChangeWatch;
use super::LeaderOnly;
use super::Relayable;
use crate::domain::broker::consistency::check_dump;
use crate::domain::broker::slots::SlotRange;
use crate::domain::broker::state::chunk_count;
use crate::domain::broker::state::valid_cluster_name;
use crate::domain::broker::state::valid_registration;
use crate::domain::broker::view;
use crate::domain::broker::Answer;
use crate::domain::broker::Broker;
use crate::domain::broker::BrokerCommand;
use crate::domain::broker::BrokerError;
use crate::domain::broker::MetaStore;
use crate::domain::broker::Op;
use crate::domain::Command;
use crate::domain::Reply;
use crate::error::Failure;
use crate::node::Node;
use crate::proxy_probe;
use crate::Error;

const DEFAULT_WAIT_SECS: u64 = 30;
const MAX_WAIT_SECS: u64 = 300;
/// How long auto scaling waits for the new proxies to take the new metadata (undermoon: 30 s).
const PROXY_SYNC_WAIT: Duration = Duration::from_secs(30);

/// An error in the dialect's own format.
#[derive(Debug)]
pub(crate) enum UndermoonError {
    Broker(BrokerError),
    /// The cluster cannot decide now; the coordinator retries on 409.
    Retry(String),
    /// Another scaling operation is running on the leader.
    NodeNumberChanging,
    /// New proxies did not take the metadata in time; the nodes were added, retry the call.
    ProxyNotSync(String),
    InvalidRequest(String),
    /// Missing or wrong credentials (a cluster that did not open these routes).
    Unauthorized(String),
    Internal(String),
}

impl From<BrokerError> for UndermoonError {
    fn from(error: BrokerError) -> Self {
        UndermoonError::Broker(error)
    }
}

impl From<Error> for UndermoonError {
    fn from(error: Error) -> Self {
        match error {
            Error::BadRequest { .. } | Error::PayloadTooLarge(_) => {
                UndermoonError::InvalidRequest(error.to_string())
            }
            Error::Unavailable { .. } => UndermoonError::Retry(error.to_string()),
            Error::Unauthorized(message) => UndermoonError::Unauthorized(message),
            _ => UndermoonError::Internal(error.to_string()),
        }
    }
}

impl From<keel_raft::Error> for UndermoonError {
    fn from(error: keel_raft::Error) -> Self {
        Error::from(error).into()
    }
}

impl From<keel_storage::Error> for UndermoonError {
    fn from(error: keel_storage::Error) -> Self {
        Error::from(error).into()
    }
}

fn broker_status(error: &BrokerError) -> StatusCode {
    match error {
        BrokerError::ClusterNotFound
        | BrokerError::ProxyNotFound
        | BrokerError::FreeNodeNotFound
        | BrokerError::MigrationTaskNotFound => StatusCode::NOT_FOUND,
        BrokerError::InvalidNodeNumber
        | BrokerError::InvalidClusterName
        | BrokerError::InvalidMigrationTask
        | BrokerError::InvalidProxyAddress
        | BrokerError::SlotsAlreadyEven
        | BrokerError::InvalidConfig(_)
        | BrokerError::InvalidMetadata(_)
        | BrokerError::InvalidEpoch => StatusCode::BAD_REQUEST,
        BrokerError::InUse
        | BrokerError::NoAvailableResource
        | BrokerError::AlreadyExisted
        | BrokerError::FreeNodeFound
        | BrokerError::NodeNumAlreadyEnough
        | BrokerError::MigrationRunning
        | BrokerError::InvalidMetaVersion
        | BrokerError::EpochSmallerThanCurrent => StatusCode::CONFLICT,
    }
}

impl IntoResponse for UndermoonError {
    fn into_response(self) -> Response {
        let (status, body) = match self {
            UndermoonError::Broker(BrokerError::InvalidConfig(invalid)) => (
                StatusCode::BAD_REQUEST,
                json!({
                    "error": "INVALID_CONFIG",
                    "key": invalid.key,
                    "value": invalid.value,
                    "message": invalid.message,
                }),
            ),
            UndermoonError::Broker(BrokerError::InvalidMetadata(message)) => (
                StatusCode::BAD_REQUEST,
                json!({ "error": "INVALID_METADATA", "message": message }),
            ),
            UndermoonError::Broker(error) => {
                (broker_status(&error), json!({ "error": error.code() }))
            }
            UndermoonError::Retry(message) => (
                StatusCode::CONFLICT,
                json!({ "error": "RETRY", "message": message }),
            ),
            UndermoonError::NodeNumberChanging => (
                StatusCode::CONFLICT,
                json!({ "error": "NODE_NUMBER_CHANGING", "message": "another scaling operation is running; retry when it finished" }),
            ),
            UndermoonError::ProxyNotSync(message) => (
                StatusCode::INTERNAL_SERVER_ERROR,
                json!({ "error": "PROXY_NOT_SYNC", "message": message }),
            ),
            UndermoonError::InvalidRequest(message) => (
                StatusCode::BAD_REQUEST,
                json!({ "error": "INVALID_REQUEST", "message": message }),
            ),
            UndermoonError::Unauthorized(message) => (
                StatusCode::UNAUTHORIZED,
                json!({ "error": "UNAUTHORIZED", "message": message }),
            ),
            UndermoonError::Internal(message) => (
                StatusCode::INTERNAL_SERVER_ERROR,
                json!({ "error": "INTERNAL", "message": message }),
            ),
        };
        let why = status.is_server_error().then(|| body.to_string());
        Failure::attach((status, Json(body)).into_response(), why)
    }
}

type Answered = Result<Response, UndermoonError>;

/// The dialect's state: the node and the leader's scaling lock.
pub(crate) struct Api {
    node: Arc<Node>,
    scaling: Arc<tokio::sync::Mutex<()>>,
}

pub fn routes(node: Arc<Node>) -> Router {
    let api = Arc::new(Api {
        node,
        scaling: Arc::new(tokio::sync::Mutex::new(())),
    });
    let routes = Router::new()
        .route("/version", get(version))
        .route("/metadata", get(dump).put(restore))
        .route("/clusters/names", get(cluster_names))
        .route(
            "/clusters/meta/{name}",
            get(cluster_meta)
                .post(create_cluster)
                .delete(remove_cluster),
        )
        .route("/clusters/info/{name}", get(cluster_info))
        .route(
            "/clusters/nodes/{name}",
            axum::routing::patch(add_nodes).put(grow_to),
        )
        .route(
            "/clusters/free_nodes/{name}",
            axum::routing::delete(remove_free_nodes),
        )
        .route("/clusters/migrations", put(commit_migration))
        .route("/clusters/migrations/expand/{name}", post(expand))
        .route("/clusters/migrations/shrink/{name}/{number}", post(shrink))
        .route(
            "/clusters/migrations/auto/{name}/{number}",
            post(auto_scale),
        )
        .route(
            "/clusters/config/{name}",
            axum::routing::patch(change_config),
        )
        .route("/clusters/balance/{name}", put(balance_masters))
        .route("/proxies/addresses", get(proxy_addresses))
        .route("/proxies/meta", post(add_proxy))
        .route(
            "/proxies/meta/{address}",
            get(proxy_meta).delete(remove_proxy),
        )
        .route("/proxies/failover/{address}", post(failover))
        .route("/proxies/failed/addresses", get(failed_proxies))
        .route("/failures", get(failures))
        .route("/failures/{address}/{reporter}", post(report_failure))
        .route("/epoch", get(epoch))
        .route("/epoch/recovery", put(recover_epoch))
        .route("/epoch/{epoch}", put(bump_epoch))
        .route("/resources/failures/check", post(check_failure_tolerance))
        .route("/config", get(broker_config).put(configure))
        .with_state(api);
    Router::new().nest(PREFIX, routes)
}

/// Where the dialect's routes live.
pub(crate) const PREFIX: &str = "/api/v3";

/// An error axum answers by itself on these routes (an unknown path, a method a route does not
/// take, a body over the limit), in the dialect's shape.
pub(crate) fn plain_error(status: StatusCode, message: String) -> Response {
    let error = match status {
        StatusCode::NOT_FOUND => "NOT_FOUND",
        StatusCode::PAYLOAD_TOO_LARGE => "PAYLOAD_TOO_LARGE",
        _ => "INVALID_REQUEST",
    };
    (status, Json(json!({ "error": error, "message": message }))).into_response()
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

fn parse_body<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, UndermoonError> {
    serde_json::from_slice(body)
        .map_err(|e| UndermoonError::InvalidRequest(format!("invalid JSON body: {e}")))
}

fn parse_number(what: &str, text: &str) -> Result<usize, UndermoonError> {
    text.parse()
        .map_err(|_| UndermoonError::InvalidRequest(format!("{what} {text:?} is not a number")))
}

fn check_name(name: &str) -> Result<(), UndermoonError> {
    if valid_cluster_name(name) {
        Ok(())
    } else {
        Err(BrokerError::InvalidClusterName.into())
    }
}

fn ok() -> Answered {
    Ok(StatusCode::OK.into_response())
}

impl Api {
    /// Proposes `op` and returns its answer or the broker's refusal.
    async fn propose(&self, op: Op) -> Result<Answer, UndermoonError> {
        let command = Command::Broker(BrokerCommand { now: now(), op });
        match self.node.propose(&command, None).await? {
            Reply::Broker(reply) => Ok(reply?),
            other => Err(UndermoonError::Internal(format!(
                "unexpected reply to a broker command: {other:?}"
            ))),
        }
    }

    /// The broker as of a linearizable read.
    async fn read(&self) -> Result<Arc<Broker>, UndermoonError> {
        self.with_broker(|broker| broker).await
    }

    /// Runs `work` on the broker as of a linearizable read, on a blocking thread: reloading
    /// a stale cache and whole-broker computations take time linear in the proxies.
    async fn with_broker<T: Send + 'static>(
        &self,
        work: impl FnOnce(Arc<Broker>) -> T + Send + 'static,
    ) -> Result<T, UndermoonError> {
        let raft = self.node.raft()?;
        raft.read_barrier(Consistency::Linearizable).await?;
        let (node, reader) = (self.node.clone(), raft.reader());
        tokio::task::spawn_blocking(move || node.domain.broker.current(&reader).map(work))
            .await
            .map_err(|e| UndermoonError::Internal(format!("a broker read failed: {e}")))?
            .map_err(UndermoonError::from)
    }

    /// Runs a scaling operation on the leader under its scaling lock (undermoon's broker
    /// refuses a second one with NODE_NUMBER_CHANGING); elsewhere relays it to the leader.
    async fn scaling<F, Fut>(&self, parts: &Parts, body: Bytes, run: F) -> Answered
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = Answered>,
    {
        let is_leader = || {
            let leads = self.node.raft()?.metrics().state == ServerState::Leader;
            Ok(leads.then_some(()))
        };
        // The leader may wait for proxies (auto scaling) before it answers.
        let request = Relayable::new(parts, body)
            .with_timeout(PROXY_SYNC_WAIT + self.node.settings.raft.request_timeout * 2)
            .at_most_once();
        match on_leader(&self.node, &request, is_leader).await? {
            LeaderOnly::Relayed(response) => Ok(response),
            LeaderOnly::Here(()) => {
                let _guard = self
                    .scaling
                    .try_lock()
                    .map_err(|_| UndermoonError::NodeNumberChanging)?;
                run().await
            }
        }
    }
}

async fn version() -> &'static str {
    env!("CARGO_PKG_VERSION")
}

async fn dump(State(api): State<Arc<Api>>) -> Answered {
    Ok(Json(&api.read().await?.store).into_response())
}

async fn restore(State(api): State<Arc<Api>>, body: Bytes) -> Answered {
    let store: MetaStore = parse_body(&body)?;
    check_dump(&store).map_err(BrokerError::InvalidMetadata)?;
    api.propose(Op::Restore {
        store: Box::new(store),
    })
    .await?;
    ok()
}

#[derive(Deserialize)]
struct Page {
    offset: Option<usize>,
    limit: Option<usize>,
}

fn page<'a>(
    names: impl Iterator<Item = &'a String>,
    query: &Result<axum::extract::Query<Page>, axum::extract::rejection::QueryRejection>,
) -> Result<Vec<String>, UndermoonError> {
    let Page { offset, limit } = match query {
        Ok(axum::extract::Query(page)) => Page {
            offset: page.offset,
            limit: page.limit,
        },
        Err(e) => return Err(UndermoonError::InvalidRequest(e.body_text())),
    };
    Ok(names
        .skip(offset.unwrap_or(0))
        .take(limit.unwrap_or(usize::MAX))
        .cloned()
        .collect())
}

async fn cluster_names(
    State(api): State<Arc<Api>>,
    query: Result<axum::extract::Query<Page>, axum::extract::rejection::QueryRejection>,
) -> Answered {
    let broker = api.read().await?;
    let names = page(broker.store.clusters.keys(), &query)?;
    Ok(Json(json!({ "names": names })).into_response())
}

async fn proxy_addresses(
    State(api): State<Arc<Api>>,
    query: Result<axum::extract::Query<Page>, axum::extract::rejection::QueryRejection>,
) -> Answered {
    let broker = api.read().await?;
    let addresses = page(broker.store.all_proxies.keys(), &query)?;
    Ok(Json(json!({ "addresses": addresses })).into_response())
}

#[derive(Deserialize)]
struct Watch {
    epoch_gt: Option<u64>,
    timeout: Option<u64>,
}

async fn cluster_meta(
    State(api): State<Arc<Api>>,
    Path(name): Path<String>,
    query: Result<axum::extract::Query<Watch>, axum::extract::rejection::QueryRejection>,
) -> Answered {
    let Watch { epoch_gt, timeout } = query
        .map(|axum::extract::Query(watch)| watch)
        .map_err(|e| UndermoonError::InvalidRequest(e.body_text()))?;
    let wait = timeout.unwrap_or(DEFAULT_WAIT_SECS);
    if wait > MAX_WAIT_SECS {
        return Err(UndermoonError::InvalidRequest(format!(
            "timeout may be at most {MAX_WAIT_SECS} seconds"
        )));
    }
    let deadline = Instant::now() + Duration::from_secs(wait);
    let mut changes = ChangeWatch::new(&api.node)?;
    loop {
        let broker = api.read().await?;
        let cluster = broker.store.clusters.get(&name);
        // An absent cluster is as new as the global epoch: it was removed, or never existed.
        let epoch = cluster.map_or(broker.store.global_epoch, |c| c.epoch);
        let seen = epoch_gt.is_none_or(|n| epoch > n);
        if seen || !changes.next(deadline).await? {
            let cluster = cluster.map(view::cluster);
            return Ok(Json(json!({ "cluster": cluster })).into_response());
        }
    }
}

async fn cluster_info(State(api): State<Arc<Api>>, Path(name): Path<String>) -> Answered {
    check_name(&name)?;
    let broker = api.read().await?;
    let cluster = broker
        .store
        .clusters
        .get(&name)
        .ok_or(BrokerError::ClusterNotFound)?;
    Ok(Json(view::cluster_info(cluster)).into_response())
}

async fn proxy_meta(State(api): State<Arc<Api>>, Path(address): Path<String>) -> Answered {
    let broker = api.read().await?;
    let proxy = view::proxy(&broker.store, &address);
    Ok(Json(json!({ "proxy": proxy })).into_response())
}

#[derive(Deserialize)]
struct NodeNumber {
    node_number: usize,
}

async fn create_cluster(
    State(api): State<Arc<Api>>,
    Path(name): Path<String>,
    body: Bytes,
) -> Answered {
    check_name(&name)?;
    let NodeNumber { node_number } = parse_body(&body)?;
    chunk_count(node_number)?;
    api.propose(Op::CreateCluster { name, node_number }).await?;
    ok()
}

async fn remove_cluster(State(api): State<Arc<Api>>, Path(name): Path<String>) -> Answered {
    check_name(&name)?;
    api.propose(Op::RemoveCluster { name }).await?;
    ok()
}

fn nodes_answer(answer: Answer) -> Answered {
    match answer {
        Answer::Nodes(nodes) => Ok(Json(nodes).into_response()),
        other => Err(UndermoonError::Internal(format!(
            "unexpected answer to adding nodes: {other:?}"
        ))),
    }
}

async fn add_nodes(
    State(api): State<Arc<Api>>,
    Path(name): Path<String>,
    parts: Parts,
    body: Bytes,
) -> Answered {
    check_name(&name)?;
    let NodeNumber { node_number } = parse_body(&body)?;
    chunk_count(node_number)?;
    api.scaling(&parts, body, || async {
        nodes_answer(api.propose(Op::AddNodes { name, node_number }).await?)
    })
    .await
}

#[derive(Deserialize)]
struct ClusterNodeNumber {
    cluster_node_number: usize,
}

async fn grow_to(
    State(api): State<Arc<Api>>,
    Path(name): Path<String>,
    parts: Parts,
    body: Bytes,
) -> Answered {
    check_name(&name)?;
    let ClusterNodeNumber {
        cluster_node_number,
    } = parse_body(&body)?;
    api.scaling(&parts, body, || async {
        let op = Op::GrowTo {
            name,
            node_number: cluster_node_number,
        };
        nodes_answer(api.propose(op).await?)
    })
    .await
}

async fn remove_free_nodes(
    State(api): State<Arc<Api>>,
    Path(name): Path<String>,
    parts: Parts,
) -> Answered {
    check_name(&name)?;
    api.scaling(&parts, Bytes::new(), || async {
        api.propose(Op::RemoveFreeNodes { name }).await?;
        ok()
    })
    .await
}

async fn expand(State(api): State<Arc<Api>>, Path(name): Path<String>, parts: Parts) -> Answered {
    check_name(&name)?;
    api.scaling(&parts, Bytes::new(), || async {
        api.propose(Op::Expand { name }).await?;
        ok()
    })
    .await
}

async fn shrink(
    State(api): State<Arc<Api>>,
    Path((name, number)): Path<(String, String)>,
    parts: Parts,
) -> Answered {
    check_name(&name)?;
    let node_number = parse_number("node number", &number)?;
    chunk_count(node_number)?;
    api.scaling(&parts, Bytes::new(), || async {
        api.propose(Op::Shrink { name, node_number }).await?;
        ok()
    })
    .await
}

/// Waits until every proxy reports at least `epoch`, probing once a second.
async fn wait_for_proxies(proxies: &[String], epoch: u64) -> Result<(), UndermoonError> {
    let deadline = Instant::now() + PROXY_SYNC_WAIT;
    loop {
        let behind: Vec<String> = proxy_probe::epochs(proxies)
            .await
            .into_iter()
            .zip(proxies)
            .filter_map(|(reply, proxy)| match reply {
                Ok(reached) if reached >= epoch => None,
                Ok(reached) => Some(format!("{proxy} is at epoch {reached}")),
                Err(e) => Some(format!("{proxy}: {e}")),
            })
            .collect();
        if behind.is_empty() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(UndermoonError::ProxyNotSync(format!(
                "the new nodes were added, but these proxies did not reach epoch {epoch} within {} s: {}; check that the coordinator runs, then call this again",
                PROXY_SYNC_WAIT.as_secs(),
                behind.join("; ")
            )));
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

async fn auto_scale(
    State(api): State<Arc<Api>>,
    Path((name, number)): Path<(String, String)>,
    parts: Parts,
) -> Answered {
    check_name(&name)?;
    let node_number = parse_number("node number", &number)?;
    chunk_count(node_number)?;
    api.scaling(&parts, Bytes::new(), || async {
        let op = Op::AutoScale {
            name: name.clone(),
            node_number,
        };
        if let Answer::ScaledOut { proxies, epoch } = api.propose(op).await? {
            // The new proxies must know their nodes before slots migrate to them.
            wait_for_proxies(&proxies, epoch).await?;
            match api.propose(Op::Expand { name }).await {
                Ok(_) | Err(UndermoonError::Broker(BrokerError::SlotsAlreadyEven)) => {}
                Err(e) => return Err(e),
            }
        }
        ok()
    })
    .await
}

#[derive(Deserialize)]
struct MigrationTask {
    cluster_name: String,
    slot_range: SlotRange,
}

async fn commit_migration(State(api): State<Arc<Api>>, body: Bytes) -> Answered {
    let MigrationTask {
        cluster_name,
        slot_range,
    } = parse_body(&body)?;
    check_name(&cluster_name)?;
    api.propose(Op::CommitMigration {
        name: cluster_name,
        slot_range,
    })
    .await?;
    ok()
}

async fn change_config(
    State(api): State<Arc<Api>>,
    Path(name): Path<String>,
    body: Bytes,
) -> Answered {
    check_name(&name)?;
    let fields: BTreeMap<String, Value> = parse_body(&body)?;
    // undermoon takes strings; numbers and booleans are accepted as their text.
    let changes = fields
        .into_iter()
        .map(|(key, value)| match value {
            Value::String(text) => (key, text),
            other => (key, other.to_string()),
        })
        .collect();
    api.propose(Op::ChangeConfig { name, changes }).await?;
    ok()
}

async fn balance_masters(State(api): State<Arc<Api>>, Path(name): Path<String>) -> Answered {
    check_name(&name)?;
    api.propose(Op::BalanceMasters { name }).await?;
    ok()
}

#[derive(Deserialize)]
struct ProxyRegistration {
    proxy_address: String,
    nodes: [String; 2],
    /// undermoon's optional StatefulSet `index` is ignored: keel allocates by host.
    #[serde(default)]
    host: Option<String>,
}

async fn add_proxy(State(api): State<Arc<Api>>, body: Bytes) -> Answered {
    let registration: ProxyRegistration = parse_body(&body)?;
    let ProxyRegistration {
        proxy_address,
        nodes,
        host,
    } = &registration;
    if !valid_registration(proxy_address, nodes, host.as_deref()) {
        return Err(BrokerError::InvalidProxyAddress.into());
    }
    api.propose(Op::AddProxy {
        address: registration.proxy_address,
        nodes: registration.nodes,
        host: registration.host,
    })
    .await?;
    ok()
}

async fn remove_proxy(State(api): State<Arc<Api>>, Path(address): Path<String>) -> Answered {
    api.propose(Op::RemoveProxy { address }).await?;
    ok()
}

async fn failover(State(api): State<Arc<Api>>, Path(address): Path<String>) -> Answered {
    // Coordinators repeat a failover for as long as the failure reports live. When it would
    // change nothing (the proxy is already failed over, or its chunk's masters already moved
    // and no free proxy can replace it), answer without a log entry.
    let op = Op::Failover { address };
    let trial_op = op.clone();
    let changes_nothing = api
        .with_broker(move |broker| {
            let mut trial = Broker::clone(&broker);
            let answer = trial.execute(now(), trial_op);
            matches!(answer, Ok(Answer::Proxy(None))) && trial.store == broker.store
        })
        .await?;
    if changes_nothing {
        return Ok(Json(json!({ "proxy": null })).into_response());
    }
    match api.propose(op).await? {
        Answer::Proxy(proxy) => Ok(Json(json!({ "proxy": proxy })).into_response()),
        other => Err(UndermoonError::Internal(format!(
            "unexpected answer to a failover: {other:?}"
        ))),
    }
}

async fn failed_proxies(State(api): State<Arc<Api>>) -> Answered {
    let broker = api.read().await?;
    Ok(Json(json!({ "addresses": broker.store.failed_proxies })).into_response())
}

async fn failures(State(api): State<Arc<Api>>) -> Answered {
    let broker = api.read().await?;
    Ok(Json(json!({ "addresses": broker.failures(broker.now(now())) })).into_response())
}

async fn report_failure(
    State(api): State<Arc<Api>>,
    Path((address, reporter)): Path<(String, String)>,
) -> Answered {
    api.propose(Op::ReportFailure { address, reporter }).await?;
    ok()
}

async fn epoch(State(api): State<Arc<Api>>) -> Answered {
    Ok(Json(api.read().await?.store.global_epoch).into_response())
}

async fn bump_epoch(State(api): State<Arc<Api>>, Path(epoch): Path<String>) -> Answered {
    let epoch = parse_number("epoch", &epoch)? as u64;
    api.propose(Op::BumpEpoch { epoch }).await?;
    ok()
}

async fn recover_epoch(State(api): State<Arc<Api>>) -> Answered {
    let proxies: Vec<String> = api
        .read()
        .await?
        .store
        .all_proxies
        .keys()
        .cloned()
        .collect();
    let mut largest = 0;
    let mut failed_addresses = Vec::new();
    for (proxy, reply) in proxies.iter().zip(proxy_probe::epochs(&proxies).await) {
        match reply {
            Ok(epoch) => largest = largest.max(epoch),
            Err(_) => failed_addresses.push(proxy.clone()),
        }
    }
    api.propose(Op::RecoverEpoch {
        at_least: largest.saturating_add(1),
    })
    .await?;
    Ok(Json(json!({ "failed_addresses": failed_addresses })).into_response())
}

async fn check_failure_tolerance(State(api): State<Arc<Api>>) -> Answered {
    let hosts = api
        .with_broker(|broker| broker.hosts_cannot_fail(broker.now(now())))
        .await?;
    Ok(Json(json!({ "hosts_cannot_fail": hosts })).into_response())
}

async fn broker_config(State(api): State<Arc<Api>>) -> Answered {
    Ok(Json(&api.read().await?.settings).into_response())
}

/// The longest a failure report may be kept, in seconds. Far beyond any real use; larger
/// values once wrapped round when reports were aged, and every report was dropped at once.
const MAX_FAILURE_TTL: u64 = 365 * 24 * 3600;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SettingsChange {
    replica_addresses: Option<Vec<String>>,
    failure_ttl: Option<u64>,
    failure_quorum: Option<u64>,
}

async fn configure(State(api): State<Arc<Api>>, body: Bytes) -> Answered {
    let change: SettingsChange = parse_body(&body)?;
    if change.failure_quorum == Some(0) || change.failure_ttl == Some(0) {
        return Err(UndermoonError::InvalidRequest(
            "failure_ttl and failure_quorum must be at least 1".into(),
        ));
    }
    if change.failure_ttl > Some(MAX_FAILURE_TTL) {
        return Err(UndermoonError::InvalidRequest(format!(
            "failure_ttl may be at most {MAX_FAILURE_TTL} seconds (a year); reports older than it are forgotten"
        )));
    }
    api.propose(Op::Configure {
        replica_addresses: change.replica_addresses,
        failure_ttl: change.failure_ttl,
        failure_quorum: change.failure_quorum,
    })
    .await?;
    ok()
}
