//! The REST API: one module per dialect, all served by one axum router on the node's address
//! next to the Raft peer routes.
//!
//! - [`bootstrap`]: Redis Enterprise style node bootstrap (`/v1/bootstrap`).
//! - [`cluster`]: the control cluster itself (`/v1/cluster`, `/v1/nodes`).
//! - [`kv`]: the revisioned key-value store (`/v1/kv`).
//! - [`metrics`]: Prometheus text (`/metrics`).
//!
//! Authentication is per route family: once the cluster has credentials, every family
//! requires HTTP Basic unless the operator opened it with `--open-routes`.

mod bootstrap;
mod cluster;
mod kv;
mod metrics;

use std::sync::Arc;

use axum::extract::Request;
use axum::extract::State;
use axum::http::header;
use axum::middleware::Next;
use axum::response::IntoResponse;
use axum::response::Response;
use axum::Router;

use crate::node::Node;
use crate::Error;

/// The whole HTTP surface of `node`.
pub fn router(node: Arc<Node>) -> Router {
    let mut app = Router::new().merge(bootstrap::public_routes(node.clone()));
    for (family, routes) in [
        (
            "cluster",
            cluster::routes(node.clone()).merge(bootstrap::member_routes(node.clone())),
        ),
        ("kv", kv::routes(node.clone())),
        ("metrics", metrics::routes(node.clone())),
    ] {
        let guard = Arc::new((node.clone(), family));
        app = app.merge(routes.route_layer(axum::middleware::from_fn_with_state(
            guard,
            require_credentials,
        )));
    }
    app.merge(keel_raft::service::router(node.raft_slot()))
        .fallback(|| async {
            Error::NotFound {
                code: "not_found",
                message: "no such endpoint; see the README for the API".into(),
            }
        })
}

async fn require_credentials(
    State(guard): State<Arc<(Arc<Node>, &'static str)>>,
    request: Request,
    next: Next,
) -> Response {
    let (node, family) = guard.as_ref();
    if let Err(denied) = authorize(node, family, request.headers().get(header::AUTHORIZATION)) {
        return denied.into_response();
    }
    next.run(request).await
}

fn authorize(node: &Node, family: &str, header: Option<&header::HeaderValue>) -> Result<(), Error> {
    if node.settings.open_routes.iter().any(|open| open == family) {
        return Ok(());
    }
    let Some(credentials) = node.cluster_config()?.and_then(|c| c.credentials) else {
        return Ok(());
    };
    let header = header.and_then(|h| h.to_str().ok());
    if node.verifier.check(&credentials, header) {
        Ok(())
    } else {
        Err(Error::Unauthorized(
            "missing or wrong cluster credentials; send them with HTTP Basic authentication".into(),
        ))
    }
}

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
    serde_json::from_slice(body)
        .map_err(|e| Error::bad_request("config_error", format!("invalid JSON body: {e}")))
}
