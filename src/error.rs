//! The `keel` crate's one error type and its mapping to HTTP.
//!
//! Every variant names an `error_code` (the Redis Enterprise dialect's field, which the other
//! dialects reuse) and a message that says what to do next. Nothing maps to 500 except a
//! failure of this node itself.

use std::time::Duration;

use axum::http::header;
use axum::http::HeaderValue;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::response::Response;
use axum::Json;
use serde_json::json;
use serde_json::Value;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The request is malformed or breaks a limit.
    #[error("{message}")]
    BadRequest { code: &'static str, message: String },
    #[error("{0}")]
    PayloadTooLarge(String),
    /// Missing or wrong credentials.
    #[error("{0}")]
    Unauthorized(String),
    #[error("{message}")]
    NotFound { code: &'static str, message: String },
    /// The request conflicts with the current state; `details` says with what.
    #[error("{message}")]
    Conflict {
        code: &'static str,
        message: String,
        details: Value,
    },
    /// The cluster cannot serve this now (no leader, no quorum, not bootstrapped); retry.
    #[error("{message}")]
    Unavailable {
        code: &'static str,
        message: String,
        retry_after: Duration,
    },
    /// The history a watch asked for is gone; start again from a fresh read.
    #[error("revision {requested} is compacted; the oldest revision still kept is {oldest}")]
    Compacted { requested: u64, oldest: u64 },
    /// A failure of this node (storage, an undecodable reply).
    #[error("{0}")]
    Internal(String),
}

impl Error {
    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::BadRequest {
            code,
            message: message.into(),
        }
    }

    /// Names what a conflict concerns (fields merged into the answer's body), unless it
    /// already does; other errors are returned as they are.
    pub fn concerning(self, subject: Value) -> Self {
        match self {
            Error::Conflict {
                code,
                message,
                details: Value::Null,
            } => Error::Conflict {
                code,
                message,
                details: subject,
            },
            other => other,
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            Error::BadRequest { .. } => StatusCode::BAD_REQUEST,
            Error::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Error::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            Error::NotFound { .. } => StatusCode::NOT_FOUND,
            Error::Conflict { .. } => StatusCode::CONFLICT,
            Error::Unavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
            Error::Compacted { .. } => StatusCode::GONE,
            Error::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    pub fn code(&self) -> &'static str {
        match self {
            Error::BadRequest { code, .. }
            | Error::NotFound { code, .. }
            | Error::Conflict { code, .. }
            | Error::Unavailable { code, .. } => code,
            Error::PayloadTooLarge(_) => "payload_too_large",
            Error::Unauthorized(_) => "access_denied",
            Error::Compacted { .. } => "compacted",
            Error::Internal(_) => "internal_error",
        }
    }
}

impl From<keel_raft::Error> for Error {
    fn from(err: keel_raft::Error) -> Self {
        use keel_raft::Error as Raft;
        let message = err.to_string();
        match err {
            Raft::NoLeader { retry_after } => Error::Unavailable {
                code: "no_leader",
                message,
                retry_after,
            },
            Raft::Timeout(_) | Raft::LeaderUnreachable { .. } | Raft::Indeterminate => {
                Error::Unavailable {
                    code: "leader_unavailable",
                    message,
                    retry_after: Duration::from_secs(1),
                }
            }
            Raft::NotInitialized => Error::Unavailable {
                code: "not_bootstrapped",
                message,
                retry_after: Duration::from_secs(5),
            },
            Raft::Membership(_) => Error::Conflict {
                code: "membership_change_refused",
                message,
                details: Value::Null,
            },
            Raft::Fatal(_) => Error::Internal(message),
            Raft::NotAMember(_) => Error::Unavailable {
                code: "not_a_member",
                message,
                retry_after: Duration::from_secs(5),
            },
            Raft::ShuttingDown => Error::Unavailable {
                code: "shutting_down",
                message,
                retry_after: Duration::from_secs(1),
            },
        }
    }
}

impl From<keel_storage::Error> for Error {
    fn from(err: keel_storage::Error) -> Self {
        match err {
            keel_storage::Error::Installing => Error::Unavailable {
                code: "installing_snapshot",
                message: err.to_string(),
                retry_after: Duration::from_secs(1),
            },
            err => Error::Internal(format!(
                "storage failure: {err}; check this node's disk and log"
            )),
        }
    }
}

impl Error {
    /// The JSON an error answers with (and a watch stream ends with): its code, its message
    /// and what it concerns.
    pub fn body(&self) -> Value {
        let mut body = json!({ "error_code": self.code(), "message": self.to_string() });
        match self {
            Error::Conflict {
                details: Value::Object(details),
                ..
            } => {
                let fields = details.iter().map(|(k, v)| (k.clone(), v.clone()));
                body.as_object_mut().expect("object").extend(fields);
            }
            Error::Compacted { oldest, .. } => {
                body["compact_revision"] = json!(oldest.saturating_sub(1));
            }
            _ => {}
        }
        body
    }
}

/// Why a request failed on the server's side, kept with its answer for the API's log of
/// failed requests, which knows the request.
#[derive(Clone)]
pub struct Failure(pub String);

impl Failure {
    /// `response`, carrying `why` when there is a reason to log.
    pub fn attach(mut response: Response, why: Option<String>) -> Response {
        if let Some(why) = why {
            response.extensions_mut().insert(Failure(why));
        }
        response
    }
}

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        let status = self.status();
        let why = status.is_server_error().then(|| self.to_string());
        let body = self.body();
        let retry_after = match self {
            Error::Unavailable { retry_after, .. } => Some(retry_after),
            _ => None,
        };
        let mut response = Failure::attach((status, Json(body)).into_response(), why);
        if let Some(after) = retry_after {
            let secs = after.as_secs().max(1).to_string();
            response.headers_mut().insert(
                header::RETRY_AFTER,
                HeaderValue::from_str(&secs).expect("digits"),
            );
        }
        if status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Basic realm=\"keel\""),
            );
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn storage_errors_map_to_what_the_client_should_do() {
        let cases = [
            (keel_storage::Error::Installing, 503, "installing_snapshot"),
            (
                keel_storage::Error::Corrupt("bad key".into()),
                500,
                "internal_error",
            ),
        ];
        for (storage, status, code) in cases {
            let error = Error::from(storage);
            assert_eq!((error.status().as_u16(), error.code()), (status, code));
        }
        let response = Error::from(keel_storage::Error::Installing).into_response();
        assert_eq!(response.headers()[header::RETRY_AFTER], "1");
    }

    #[tokio::test]
    async fn a_compacted_revision_names_where_history_starts() {
        let response = Error::Compacted {
            requested: 5,
            oldest: 20,
        }
        .into_response();
        assert_eq!(response.status(), StatusCode::GONE);
        let body = axum::body::to_bytes(response.into_body(), 1 << 16)
            .await
            .unwrap();
        let body: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(
            (&body["error_code"], &body["compact_revision"]),
            (&json!("compacted"), &json!(19)),
            "{body}"
        );
    }
}
