//! The raft crate's one error type, phrased for the layer above: each variant says whether
//! the request may be retried and what an operator should look at.

use std::time::Duration;

use serde::Deserialize;
use serde::Serialize;

#[derive(Debug, Clone, thiserror::Error, Serialize, Deserialize)]
pub enum Error {
    /// No leader is known right now (an election is running or a quorum is down).
    #[error(
        "no leader is available (election in progress or quorum lost); retry in {retry_after:?}"
    )]
    NoLeader { retry_after: Duration },
    /// The leader did not answer within the request deadline.
    #[error("the leader did not answer in time: {0}")]
    Timeout(String),
    /// The leader's address is known but could not be reached.
    #[error("the leader at {addr} is unreachable: {reason}")]
    LeaderUnreachable { addr: String, reason: String },
    /// This node has not joined a cluster yet.
    #[error("this node is not part of a cluster yet; bootstrap it with POST /v1/bootstrap/create_cluster or join_cluster")]
    NotInitialized,
    /// A membership change the cluster refuses (it would lose quorum, the node is unknown...).
    #[error("membership change refused: {0}")]
    Membership(String),
    /// The write may or may not have been applied: the leader changed before it answered.
    /// Retry with the same request id to find out.
    #[error(
        "the leader changed before the write was confirmed; retry with the same Idempotency-Key"
    )]
    Indeterminate,
    /// The node cannot go on (storage failure, Raft core stopped).
    #[error("internal failure: {0}; check this node's log and disk")]
    Fatal(String),
    /// The leader refuses this node's forwards: it is not a member (it was removed). Last,
    /// so that the variants before it keep their encoding for nodes of earlier builds.
    #[error(
        "this node (uid {0}) is no longer a member of the cluster: it was removed; stop it, or empty its data directory and join it again"
    )]
    NotAMember(u64),
    /// This node shut down before the request was answered; a write may have been applied.
    /// Only ever answered by the node itself, never sent to a peer.
    #[error(
        "this node is shutting down and did not learn whether the request took effect; ask another node, with the same Idempotency-Key for a write"
    )]
    ShuttingDown,
}

impl Error {
    /// Whether a client may simply retry (on any node).
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            Error::NoLeader { .. }
                | Error::Timeout(_)
                | Error::LeaderUnreachable { .. }
                | Error::Indeterminate
                | Error::ShuttingDown
        )
    }
}
