//! The openraft type configuration keel runs with.
//!
//! Commands travel through the log as opaque bytes ([`Proposal::command`]) encoded by the
//! domain, so this crate and the storage crate need not know the domain's types, and the
//! domain can evolve its command set without touching consensus code. A proposal may carry a
//! client request id; a retried request with the same id is answered from the first result
//! instead of being applied twice (see [`crate::machine`]).
//!
//! One log entry carries [`Proposals`]: the writes that reached the leader together share an
//! entry, so the Raft core, the log store and replication do their per-entry work once per
//! batch rather than once per write. An entry of one proposal is encoded exactly as earlier
//! builds encoded their single-proposal entries, so their logs read back unchanged; an entry
//! of several is something those builds cannot read, and leaders write one only once every
//! member has said it can ([`crate::entry_format`]).
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
use serde::de;
use serde::ser::SerializeTuple;
use serde::Deserialize;
use serde::Deserializer;
use serde::Serialize;
use serde::Serializer;

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

/// The proposals one log entry carries, applied in order; never empty.
///
/// Encoded as a lone [`Proposal`] when there is one, which begins with its request id's
/// `Option` tag (0 or 1). Several begin with [`SEVERAL_PROPOSALS_TAG`] instead, then the
/// sequence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Proposals(pub Arc<[Proposal]>);

/// The first byte of an entry of several proposals: no `Option` tag is 2.
const SEVERAL_PROPOSALS_TAG: u8 = 2;

impl From<Vec<Proposal>> for Proposals {
    fn from(proposals: Vec<Proposal>) -> Self {
        Self(proposals.into())
    }
}

impl fmt::Display for Proposals {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let bytes: usize = self.0.iter().map(|p| p.command.len()).sum();
        write!(f, "{} proposals of {bytes} bytes", self.0.len())
    }
}

impl Serialize for Proposals {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match &*self.0 {
            [one] => one.serialize(serializer),
            several => {
                let mut tuple = serializer.serialize_tuple(2)?;
                tuple.serialize_element(&SEVERAL_PROPOSALS_TAG)?;
                tuple.serialize_element(several)?;
                tuple.end()
            }
        }
    }
}

impl<'de> Deserialize<'de> for Proposals {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;

        impl<'de> de::Visitor<'de> for Visitor {
            type Value = Proposals;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("one proposal or a tagged sequence of them")
            }

            fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<Proposals, A::Error> {
                let missing = || de::Error::custom("a log entry's proposals end early");
                let tag: u8 = seq.next_element()?.ok_or_else(missing)?;
                let request_id = match tag {
                    0 => None,
                    1 => Some(seq.next_element()?.ok_or_else(missing)?),
                    SEVERAL_PROPOSALS_TAG => {
                        let several: Vec<Proposal> = seq.next_element()?.ok_or_else(missing)?;
                        if several.is_empty() {
                            return Err(de::Error::custom("a log entry holds no proposal"));
                        }
                        return Ok(several.into());
                    }
                    other => {
                        return Err(de::Error::custom(format!(
                            "a log entry begins with {other}, which this keel cannot read; \
                             upgrade this node"
                        )))
                    }
                };
                let command = seq.next_element()?.ok_or_else(missing)?;
                Ok(vec![Proposal {
                    request_id,
                    command,
                }]
                .into())
            }
        }

        // bincode lays a tuple's elements out one after another, which is how a lone
        // proposal's fields (tag, id, command) and a batch's (tag, sequence) are laid out.
        deserializer.deserialize_tuple(3, Visitor)
    }
}

/// The domain's replies to an entry's [`Proposals`], in their order.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Replies(pub Vec<Reply>);

/// The domain's encoded answer to a [`Proposal`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reply(#[serde(with = "serde_bytes")] pub Vec<u8>);

openraft::declare_raft_types!(
    /// keel's Raft types.
    pub TypeConfig:
        D = Proposals,
        R = Replies,
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

    fn proposal(request_id: Option<&str>, command: &[u8]) -> Proposal {
        Proposal {
            request_id: request_id.map(Into::into),
            command: Bytes::copy_from_slice(command),
        }
    }

    #[test]
    fn an_entry_of_one_proposal_encodes_as_earlier_builds_wrote_it() {
        for request_id in [None, Some("auto:0f3c")] {
            let lone = proposal(request_id, b"\x02command");
            let written = bincode::serialize(&lone).unwrap();
            let entry = Proposals::from(vec![lone]);
            assert_eq!(bincode::serialize(&entry).unwrap(), written);
            assert_eq!(bincode::deserialize::<Proposals>(&written).unwrap(), entry);
        }
    }

    #[test]
    fn an_entry_of_several_proposals_reads_back_as_written() {
        let entry = Proposals::from(vec![
            proposal(None, b""),
            proposal(Some("a"), b"\x00"),
            proposal(Some(""), b"\x01\x02"),
        ]);
        let written = bincode::serialize(&entry).unwrap();
        assert_eq!(written[0], SEVERAL_PROPOSALS_TAG);
        assert_eq!(bincode::deserialize::<Proposals>(&written).unwrap(), entry);
    }

    #[test]
    fn unreadable_entries_are_refused_not_misread() {
        let several = bincode::serialize(&Proposals::from(vec![
            proposal(None, b"a"),
            proposal(None, b"b"),
        ]))
        .unwrap();
        let empty = [&[SEVERAL_PROPOSALS_TAG][..], &0u64.to_le_bytes()].concat();
        let cases: [(&[u8], &str); 4] = [
            (&[3, 0], "cannot read"),
            (&empty, "no proposal"),
            (&several[..several.len() - 1], ""),
            (&[], ""),
        ];
        for (bytes, why) in cases {
            let err = bincode::deserialize::<Proposals>(bytes).unwrap_err();
            assert!(err.to_string().contains(why), "{err}");
        }
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
