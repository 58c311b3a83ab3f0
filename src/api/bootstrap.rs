//! Redis Enterprise style node bootstrap (seed `000`): `GET /v1/bootstrap` and
//! `POST /v1/bootstrap/{action}` with `create_cluster` and `join_cluster`.
//!
//! The POST is asynchronous as in the seed: it validates the body, answers 200 at once and
//! the caller polls `GET /v1/bootstrap` until `completed` or `error`. A node that already
//! belongs to a cluster requires the cluster credentials for the POST and then refuses it
//! with 409, as it does while a bootstrap runs.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::Path;
use axum::extract::State;
use axum::http::header;
use axum::http::HeaderMap;
use axum::routing::get;
use axum::routing::post;
use axum::Json;
use axum::Router;
use serde::Deserialize;
use serde_json::json;
use serde_json::Value;

use super::credentials_to_check;
use super::parse_json_or;
use crate::machine_info;
use crate::node::BootstrapPlan;
use crate::node::Node;
use crate::Error;

/// `GET /v1/bootstrap` answers without credentials, always: with the machine's details only
/// to credentials, once the cluster has them.
pub fn public_routes(node: Arc<Node>) -> Router {
    Router::new()
        .route("/v1/bootstrap", get(status))
        .route("/v1/boostrap", get(status))
        .with_state(node)
}

/// `POST /v1/bootstrap/{action}`, behind credentials once the node is a member.
pub fn member_routes(node: Arc<Node>) -> Router {
    Router::new()
        .route("/v1/bootstrap/{action}", post(start))
        .with_state(node)
}

async fn status(State(node): State<Arc<Node>>, headers: HeaderMap) -> Json<Value> {
    let uid = node.raft().map(|raft| raft.id()).ok();
    // The state stays open to readiness probes. The machine's paths, addresses and sizes are
    // for the cluster's operators once it has credentials (the seed asks for them then).
    let header = headers
        .get(header::AUTHORIZATION)
        .and_then(|h| h.to_str().ok());
    let shown = match credentials_to_check(&node, "bootstrap") {
        // A probe that sends none is no refusal to count.
        Ok(Some(credentials)) => header.is_some() && node.verifier.check(credentials, header).await,
        // None needed, or a member that has not applied its cluster's credentials yet.
        Ok(None) | Err(_) => true,
    };
    if !shown {
        return Json(json!({
            "bootstrap_status": node.status(),
            "local_node_info": { "uid": uid },
        }));
    }
    let data_dir =
        std::fs::canonicalize(&node.settings.data_dir).unwrap_or(node.settings.data_dir.clone());
    let storage_size = machine_info::filesystem_size_mib(&data_dir);
    Json(json!({
        "bootstrap_status": node.status(),
        "local_node_info": {
            "uid": uid,
            "software_version": env!("CARGO_PKG_VERSION"),
            "cores": machine_info::cores(),
            "total_memory": machine_info::total_memory_mib(),
            "uptime": machine_info::uptime_secs(),
            "os_version": machine_info::os_version(),
            "persistent_storage_path": data_dir,
            "persistent_storage_size": storage_size,
            "ephemeral_storage_path": std::env::temp_dir(),
            "ephemeral_storage_size": machine_info::filesystem_size_mib(&std::env::temp_dir()),
            "data_size": node.store_size(),
            "available_addrs": machine_info::addresses(),
        }
    }))
}

#[derive(Debug, Deserialize)]
struct BootstrapRequest {
    action: Option<String>,
    #[serde(default)]
    cluster: ClusterSpec,
    #[serde(default)]
    node: Option<NodeSpec>,
    credentials: Option<CredentialsSpec>,
}

#[derive(Debug, Default, Deserialize)]
struct ClusterSpec {
    name: Option<String>,
    #[serde(default)]
    nodes: Vec<String>,
}

#[derive(Debug, Deserialize)]
struct NodeSpec {
    identity: Option<IdentitySpec>,
}

#[derive(Debug, Deserialize)]
struct IdentitySpec {
    addr: Option<String>,
}

#[derive(Debug, Deserialize)]
struct CredentialsSpec {
    username: String,
    password: String,
}

fn config_error(message: impl Into<String>) -> Error {
    Error::bad_request("config_error", message)
}

/// Adds this node's port to a member given as a bare host, as the seed lists members by IP.
fn member_address(member: &str, default_port: u16) -> String {
    if member.parse::<std::net::SocketAddr>().is_ok() {
        return member.to_string();
    }
    if let Ok(ip) = member.parse::<std::net::IpAddr>() {
        return std::net::SocketAddr::new(ip, default_port).to_string();
    }
    match member.rsplit_once(':') {
        Some((_, port)) if port.parse::<u16>().is_ok() => member.to_string(),
        _ => format!("{member}:{default_port}"),
    }
}

async fn start(
    State(node): State<Arc<Node>>,
    Path(action): Path<String>,
    body: Bytes,
) -> Result<Json<Value>, Error> {
    // A misspelt action is refused as such, on a member too.
    let creates = match action.as_str() {
        "create_cluster" => true,
        "join_cluster" => false,
        other => {
            return Err(config_error(format!(
                "unknown bootstrap action {other:?}; use create_cluster or join_cluster"
            )))
        }
    };
    node.bootstrap_refusal()?;
    let request: BootstrapRequest = parse_json_or(&body, "config_error")?;
    if request.action.as_deref().is_some_and(|a| a != action) {
        return Err(config_error(format!(
            "the body's action {:?} does not match the URL's {action:?}",
            request.action.unwrap_or_default()
        )));
    }
    if let Some(addr) = request.node.and_then(|n| n.identity).and_then(|i| i.addr) {
        let port = node.settings.listen.port();
        let addr = member_address(&addr, port);
        if addr != node.settings.advertise {
            return Err(config_error(format!(
                "node.identity.addr {addr} is not this node's advertised address {}; start keel with --advertise {addr}",
                node.settings.advertise
            )));
        }
    }
    let credentials = request
        .credentials
        .map(|c| (c.username, c.password))
        .filter(|(user, password)| !user.is_empty() && !password.is_empty());
    let plan = if creates {
        let name = request.cluster.name.unwrap_or_default();
        if !crate::domain::cluster::is_valid_name(&name) {
            return Err(config_error(
                "cluster.name must be 1 to 253 characters without spaces, e.g. \"my.cluster\"",
            ));
        }
        if credentials.is_none() {
            return Err(config_error(
                "credentials.username and credentials.password are required",
            ));
        }
        BootstrapPlan::Create { name, credentials }
    } else {
        if request.cluster.nodes.is_empty() {
            return Err(config_error(
                "cluster.nodes must list at least one member address",
            ));
        }
        let Some((username, password)) = credentials else {
            return Err(config_error(
                "credentials.username and credentials.password are required",
            ));
        };
        let port = node.settings.listen.port();
        BootstrapPlan::Join {
            members: request
                .cluster
                .nodes
                .iter()
                .map(|m| member_address(m, port))
                .collect(),
            username,
            password,
        }
    };
    node.begin_bootstrap(plan)?;
    Ok(Json(json!({ "state": "initiated" })))
}

#[cfg(test)]
mod tests {
    use super::member_address;

    #[test]
    fn member_addresses_get_a_port() {
        assert_eq!(member_address("10.0.0.1", 7799), "10.0.0.1:7799");
        assert_eq!(member_address("10.0.0.1:7702", 7799), "10.0.0.1:7702");
        assert_eq!(
            member_address("node-2.example", 7799),
            "node-2.example:7799"
        );
        assert_eq!(
            member_address("node-2.example:80", 7799),
            "node-2.example:80"
        );
        assert_eq!(member_address("2001:db8::1", 7799), "[2001:db8::1]:7799");
        assert_eq!(
            member_address("[2001:db8::1]:7702", 7799),
            "[2001:db8::1]:7702"
        );
    }
}
