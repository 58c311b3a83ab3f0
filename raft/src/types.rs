//! The openraft type configuration keel runs with.
//!
//! Commands travel through the log as opaque bytes ([`Proposal::command`]) encoded by the
//! domain, so this crate and the storage crate need not know the domain's types, and the
//! domain can evolve its command set without touching consensus code. A proposal may carry a
//! client request id; a retried request with the same id is answered from the first result
//! instead of being applied twice (see [`crate::machine`]).
//!
//! A proposal's fields are shared, not owned (`Arc<str>`, [`Bytes`]): the leader hands each
//! entry to its log cache, to every follower's replication and to apply, and a deep copy for
//! each was about 4.5 % of its CPU samples under a write load. The encoding on the wire and on disk is what
//! it was with `String` and `Vec<u8>` (a length, then the bytes; `Bytes` is written as a byte
//! string, not the one-byte-element sequence serde's default for `Vec<u8>` would be), so logs
//! and snapshots of earlier builds read back unchanged.

use std::fmt;
use std::sync::Arc;

use bytes::Bytes;
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
    pub request_id: Option<Arc<str>>,
    /// The domain's encoded command.
    pub command: Bytes,
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The proposal as earlier builds wrote it to their logs and forwarded it to leaders.
    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct OwnedProposal {
        request_id: Option<String>,
        #[serde(with = "serde_bytes")]
        command: Vec<u8>,
    }

    #[test]
    fn a_proposal_encodes_as_it_did_with_owned_fields() {
        for request_id in [None, Some("auto:0f3c"), Some("")] {
            for command in [&b""[..], b"\x00\xffcommand"] {
                let owned = OwnedProposal {
                    request_id: request_id.map(str::to_string),
                    command: command.to_vec(),
                };
                let shared = Proposal {
                    request_id: request_id.map(Into::into),
                    command: Bytes::copy_from_slice(command),
                };
                let written = bincode::serialize(&owned).unwrap();
                assert_eq!(bincode::serialize(&shared).unwrap(), written);
                assert_eq!(bincode::deserialize::<Proposal>(&written).unwrap(), shared);
            }
        }
    }
}
