//! The ClusterFlux dialect (seed `002`): a registry of database nodes kept alive by TTL
//! heartbeats, and per-cluster metadata with versioned writes and watching reads.
//!
//! - `POST /nodes/{cluster}` registers (body: `ip`, `hostname`, `bind-address`, optional
//!   `metadata` and `ttl` in seconds, default 15) and answers the node with its new `id`.
//! - `PUT /nodes/{cluster}/{id}` refreshes (on the leader, in memory: no log entry);
//!   `DELETE` deregisters.
//! - `GET /nodes` lists keel's own control nodes as `cflux` and registered nodes as `influx`;
//!   `GET /nodes/{cluster}` one cluster's nodes.
//! - `POST /clusters/{cluster}/versions/{version}` writes the body as the cluster's metadata if
//!   the stored version is `{version}`; the stored version becomes `{version}+1`. A stale
//!   write gets `409` with the current `version` and `metadata`.
//! - `GET /clusters/{cluster}/versions/{version}` answers at once if the stored version is
//!   newer, otherwise waits (up to `?timeout=` seconds, default 30, at most 300) for the
//!   next write and answers it; on timeout it answers the unchanged current version.

use std::sync::Arc;
use std::time::Duration;
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::Path;
use axum::extract::State;
use axum::http::request::Parts;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::response::Response;
use axum::routing::get;
use axum::Json;
use axum::Router;
use keel_raft::Consistency;
use openraft::Instant as _;
use openraft::ServerState;
use serde::Deserialize;
use serde_json::json;
use serde_json::Value;

use super::leases;
use super::on_leader;
use super::parse_json_or;
use super::ChangeWatch;
use super::LeaderOnly;
use super::Params;
use super::Relayable;
use crate::domain::registry;
use crate::domain::registry::NodeInfo;
use crate::domain::registry::RegisteredNode;
use crate::domain::registry::RegistryCommand;
use crate::domain::registry::RegistryReply;
use crate::domain::registry::Versioned;
use crate::domain::Command;
use crate::domain::Reply;
use crate::node::Node;
use crate::Error;

const DEFAULT_TTL_SECS: u64 = 15;
const DEFAULT_WAIT_SECS: u64 = 30;
const MAX_WAIT_SECS: u64 = 300;
const MAX_METADATA_BYTES: usize = 1 << 20;

fn metadata_too_large() -> Error {
    Error::PayloadTooLarge(format!(
        "metadata may be at most {MAX_METADATA_BYTES} bytes"
    ))
}

/// The most bytes of a registered node's ip (a list of addresses, in the seed), hostname and
/// bind-address each: every listing carries them.
const MAX_FIELD_BYTES: usize = 1024;

pub fn routes(node: Arc<Node>) -> Router {
    Router::new()
        .route("/nodes", get(all_nodes))
        .route("/nodes/{cluster}", get(cluster_nodes).post(register))
        .route(
            "/nodes/{cluster}/{id}",
            axum::routing::put(refresh).delete(deregister),
        )
        .route(
            "/clusters/{cluster}/versions/{version}",
            get(read_versioned).post(write_versioned),
        )
        .with_state(node)
}

fn check_cluster(cluster: &str) -> Result<(), Error> {
    let valid = !cluster.is_empty()
        && cluster.len() <= 128
        && cluster
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c));
    if valid {
        Ok(())
    } else {
        Err(Error::bad_request(
            "invalid_cluster_name",
            "cluster names are 1 to 128 characters of letters, digits, '.', '_' and '-'",
        ))
    }
}

fn parse_number(what: &str, text: &str) -> Result<u64, Error> {
    text.parse()
        .map_err(|_| Error::bad_request("invalid_path", format!("{what} {text:?} is not a number")))
}

fn node_not_found(cluster: &str, id: u64) -> Error {
    Error::NotFound {
        code: "node_not_found",
        message: format!(
            "node {id} is not registered in cluster {cluster:?} (it expired or was deregistered)"
        ),
    }
}

fn node_json(node: &RegisteredNode) -> Value {
    let metadata = serde_json::from_str(&node.info.metadata).unwrap_or(Value::Null);
    json!({
        "id": node.id,
        "cluster": node.cluster,
        "ip": node.info.ip,
        "hostname": node.info.hostname,
        "bind-address": node.info.bind_address,
        "metadata": metadata,
        "ttl": node.ttl_ms / 1000,
        "alive": true,
    })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RegisterBody {
    #[serde(default)]
    ip: String,
    hostname: String,
    #[serde(rename = "bind-address")]
    bind_address: String,
    #[serde(default)]
    metadata: Option<Value>,
    ttl: Option<u64>,
}

async fn register(
    State(node): State<Arc<Node>>,
    Path(cluster): Path<String>,
    body: Bytes,
) -> Result<Json<Value>, Error> {
    check_cluster(&cluster)?;
    let body: RegisterBody = parse_json_or(&body, "config_error")?;
    if body.hostname.trim().is_empty() || body.bind_address.trim().is_empty() {
        return Err(Error::bad_request(
            "config_error",
            "hostname and bind-address are required",
        ));
    }
    let fields = [&body.ip, &body.hostname, &body.bind_address];
    if fields.iter().any(|field| field.len() > MAX_FIELD_BYTES) {
        return Err(Error::bad_request(
            "config_error",
            format!("ip, hostname and bind-address may be at most {MAX_FIELD_BYTES} bytes each"),
        ));
    }
    let metadata = body.metadata.map(|m| m.to_string()).unwrap_or_default();
    if metadata.len() > MAX_METADATA_BYTES {
        return Err(metadata_too_large());
    }
    let ttl_ms = leases::check_ttl(body.ttl.unwrap_or(DEFAULT_TTL_SECS))?;
    let command = RegistryCommand::Register {
        cluster,
        lease: leases::new_lease_id(),
        ttl_ms,
        info: NodeInfo {
            ip: body.ip,
            hostname: body.hostname,
            bind_address: body.bind_address,
            metadata,
        },
    };
    match node.propose(&Command::Registry(command), None).await? {
        Reply::Registry(RegistryReply::Registered(registered)) => Ok(Json(node_json(&registered))),
        Reply::Registry(RegistryReply::LeaseTaken) => Err(Error::Unavailable {
            code: "retry",
            message: "a lease id collided; retry the registration".into(),
            retry_after: Duration::from_secs(1),
        }),
        other => Err(Error::Internal(format!(
            "unexpected reply to a registration: {other:?}"
        ))),
    }
}

async fn refresh(
    State(node): State<Arc<Node>>,
    Path((cluster, id)): Path<(String, String)>,
    parts: Parts,
    body: Bytes,
) -> Result<Response, Error> {
    check_cluster(&cluster)?;
    let id = parse_number("node id", &id)?;
    let raft = node.raft()?;
    // The node may have registered through another node a moment ago: read fresh.
    raft.read_barrier(Consistency::Linearizable).await?;
    let registered = registry::node(&raft.reader(), &cluster, id)?
        .ok_or_else(|| node_not_found(&cluster, id))?;
    // A node whose lease ran out since the read above is as gone as one not found.
    let request = Relayable::new(&parts, body);
    leases::refresh(&node, registered.lease, &request, id, || {
        node_not_found(&cluster, id)
    })
    .await
}

async fn deregister(
    State(node): State<Arc<Node>>,
    Path((cluster, id)): Path<(String, String)>,
) -> Result<Json<Value>, Error> {
    check_cluster(&cluster)?;
    let id = parse_number("node id", &id)?;
    match node
        .propose(
            &Command::Registry(RegistryCommand::Deregister {
                cluster: cluster.clone(),
                id,
            }),
            None,
        )
        .await?
    {
        Reply::Registry(RegistryReply::Deregistered) => {
            Ok(Json(json!({ "id": id, "cluster": cluster })))
        }
        Reply::Registry(RegistryReply::NodeNotFound) => Err(node_not_found(&cluster, id)),
        other => Err(Error::Internal(format!(
            "unexpected reply to a deregistration: {other:?}"
        ))),
    }
}

async fn registered_nodes(node: &Node, cluster: Option<&str>) -> Result<Vec<Value>, Error> {
    let raft = node.raft()?;
    raft.read_barrier(Consistency::Linearizable).await?;
    Ok(registry::nodes(&raft.reader(), cluster)?
        .iter()
        .map(node_json)
        .collect())
}

async fn cluster_nodes(
    State(node): State<Arc<Node>>,
    Path(cluster): Path<String>,
) -> Result<Json<Value>, Error> {
    check_cluster(&cluster)?;
    Ok(Json(Value::Array(
        registered_nodes(&node, Some(&cluster)).await?,
    )))
}

/// keel's own members as the leader sees them: alive if they answered a heartbeat recently.
fn control_nodes(node: &Node) -> Result<Option<Vec<Value>>, Error> {
    let raft = node.raft()?;
    let metrics = raft.metrics();
    if metrics.state != ServerState::Leader {
        return Ok(None);
    }
    let recent = node.settings.raft.election_timeout_max;
    let heartbeats = metrics.heartbeat.clone().unwrap_or_default();
    let members = metrics
        .membership_config
        .membership()
        .nodes()
        .map(|(uid, member)| {
            let alive = *uid == raft.id()
                || heartbeats
                    .get(uid)
                    .and_then(|at| at.as_ref())
                    .is_some_and(|at| at.elapsed() < recent);
            let (host, _) = member.addr.rsplit_once(':').unwrap_or((&member.addr, ""));
            json!({
                "id": uid,
                "ip": host.trim_matches(['[', ']']),
                "hostname": host.trim_matches(['[', ']']),
                "bind-address": member.addr,
                "alive": alive,
            })
        })
        .collect();
    Ok(Some(members))
}

async fn all_nodes(State(node): State<Arc<Node>>, parts: Parts) -> Result<Response, Error> {
    let request = Relayable::new(&parts, Bytes::new());
    let cflux = match on_leader(&node, &request, || control_nodes(&node)).await? {
        LeaderOnly::Here(cflux) => cflux,
        LeaderOnly::Relayed(response) => return Ok(response),
    };
    let influx = registered_nodes(&node, None).await?;
    Ok(Json(json!({ "cflux": cflux, "influx": influx })).into_response())
}

fn versioned_json(versioned: &Versioned) -> Value {
    let metadata = serde_json::from_str(&versioned.data).unwrap_or(Value::Null);
    json!({ "version": versioned.version, "metadata": metadata })
}

async fn write_versioned(
    State(node): State<Arc<Node>>,
    Path((cluster, version)): Path<(String, String)>,
    body: Bytes,
) -> Result<Response, Error> {
    check_cluster(&cluster)?;
    let based_on = parse_number("version", &version)?;
    if body.len() > MAX_METADATA_BYTES {
        return Err(metadata_too_large());
    }
    let metadata: Value = parse_json_or(&body, "config_error")?;
    let command = RegistryCommand::WriteVersioned {
        cluster,
        based_on,
        data: metadata.to_string(),
    };
    match node.propose(&Command::Registry(command), None).await? {
        Reply::Registry(RegistryReply::Written(written)) => {
            Ok(Json(versioned_json(&written)).into_response())
        }
        Reply::Registry(RegistryReply::Stale(current)) => {
            // The dialect's answer (the newer version and its metadata), and keel's error
            // fields beside it, as every other error carries them.
            let mut answer = versioned_json(&current);
            answer["error_code"] = json!("version_conflict");
            answer["message"] = json!(format!(
                "version {based_on} is not the stored version {}; merge with the metadata answered and write again with version {}",
                current.version, current.version
            ));
            Ok((StatusCode::CONFLICT, Json(answer)).into_response())
        }
        other => Err(Error::Internal(format!(
            "unexpected reply to a metadata write: {other:?}"
        ))),
    }
}

/// Other parameters are ignored: ClusterFlux's clients are not keel's, and one that adds a
/// parameter of its own (a cache-buster, a trace id) must still be served.
#[derive(Deserialize)]
struct WaitParams {
    timeout: Option<u64>,
}

async fn read_versioned(
    State(node): State<Arc<Node>>,
    Path((cluster, version)): Path<(String, String)>,
    Params(params): Params<WaitParams>,
) -> Result<Json<Value>, Error> {
    check_cluster(&cluster)?;
    let seen = parse_number("version", &version)?;
    let wait = params.timeout.unwrap_or(DEFAULT_WAIT_SECS);
    if wait > MAX_WAIT_SECS {
        return Err(Error::bad_request(
            "invalid_timeout",
            format!("timeout may be at most {MAX_WAIT_SECS} seconds"),
        ));
    }
    let deadline = Instant::now() + Duration::from_secs(wait);
    let raft = node.raft()?;
    let mut changes = ChangeWatch::new(&node)?;
    raft.read_barrier(Consistency::Linearizable).await?;
    loop {
        let current = registry::versioned(&raft.reader(), &cluster)?;
        if current.version > seen || !changes.next(deadline).await? {
            return Ok(Json(versioned_json(&current)));
        }
    }
}
