//! The openraft type configuration keel runs with.
//!
//! Commands travel through the log as opaque bytes ([`Proposal::command`]) encoded by the
//! domain, so this crate and the storage crate need not know the domain's types, and the
//! domain can evolve its command set without touching consensus code. A proposal may carry a
//! client request id; a retried request with the same id is answered from the first result
//! instead of being applied twice (see [`crate::machine`]).
//!
//! The byte fields are encoded with `serde_bytes`: serde's default for `Vec<u8>` is a sequence
//! of one-byte elements, which bincode writes and reads a byte at a time (about 4 % of a node's
//! CPU under a write load). The encoding on the wire and on disk is the same either way: a length,
//! then the bytes.

use std::fmt;

use serde::Deserialize;
use serde::Serialize;

/// A control node's id: a small integer allocated by the cluster when the node joins.
pub type NodeId = u64;

/// What the cluster knows about a control node: where to reach it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeelNode {
    /// `host:port` of the node's HTTP server, which serves both the REST API and Raft traffic.
    pub addr: String,
}

impl fmt::Display for KeelNode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.addr)
    }
}

/// One client command on its way through the log.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Proposal {
    /// The client's idempotency key, if it sent one.
    pub request_id: Option<String>,
    /// The domain's encoded command.
    #[serde(with = "serde_bytes")]
    pub command: Vec<u8>,
}

impl fmt::Display for Proposal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "proposal of {} bytes", self.command.len())
    }
}

/// The domain's encoded answer to a [`Proposal`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reply(#[serde(with = "serde_bytes")] pub Vec<u8>);

openraft::declare_raft_types!(
    /// keel's Raft types.
    pub TypeConfig:
        D = Proposal,
        R = Reply,
        NodeId = NodeId,
        Node = KeelNode,
);

pub type Entry = openraft::type_config::alias::EntryOf<TypeConfig>;
pub type LogId = openraft::type_config::alias::LogIdOf<TypeConfig>;
pub type Vote = openraft::type_config::alias::VoteOf<TypeConfig>;
pub type Membership = openraft::Membership<NodeId, KeelNode>;
pub type RaftMetrics = openraft::RaftMetrics<TypeConfig>;
