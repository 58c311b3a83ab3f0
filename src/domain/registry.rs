//! The ClusterFlux node registry and versioned cluster metadata.
//!
//! A registered node lives exactly as long as its lease: registering grants a lease (id chosen
//! by the proposer) and attaches the node to it; refreshes move the lease's deadline on the
//! leader without a log entry; expiry or deregistration revokes the lease, which removes the
//! node. Node ids come from a replicated counter, so every node assigns the same ones.
//!
//! Each cluster also has one metadata blob with a version: a write names the version it was
//! based on and succeeds only if that is still the stored one (compare-and-set); the stored
//! version then goes up by one. A stale write gets the current version and blob back.

use keel_storage::Error as StorageError;
use keel_storage::KvRead;
use keel_storage::Txn;
use serde::Deserialize;
use serde::Serialize;

use super::decode;
use super::encode;
use super::lease;
use super::lease::Attachment;

const NODE_PREFIX: &[u8] = b"registry/";
/// The registry's counters (see [`keel_storage::Application::counter_prefixes`]).
pub(super) const META_PREFIX: &[u8] = b"registry-meta/";
const NEXT_ID_KEY: &[u8] = b"registry-meta/next-id";
const VERSIONED_PREFIX: &[u8] = b"versioned/";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeInfo {
    pub ip: String,
    pub hostname: String,
    pub bind_address: String,
    /// Free-form JSON the node registered with, kept as text.
    pub metadata: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegisteredNode {
    pub id: u64,
    pub cluster: String,
    pub lease: u64,
    pub ttl_ms: u64,
    pub info: NodeInfo,
}

/// A cluster's metadata blob and its version (0: never written).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Versioned {
    pub version: u64,
    pub data: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum RegistryCommand {
    Register {
        cluster: String,
        lease: u64,
        ttl_ms: u64,
        info: NodeInfo,
    },
    Deregister {
        cluster: String,
        id: u64,
    },
    WriteVersioned {
        cluster: String,
        based_on: u64,
        data: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum RegistryReply {
    Registered(RegisteredNode),
    Deregistered,
    NodeNotFound,
    LeaseTaken,
    Written(Versioned),
    /// The write was based on an old version; here is the current one.
    Stale(Versioned),
}

fn node_prefix(cluster: &str) -> Vec<u8> {
    [NODE_PREFIX, cluster.as_bytes(), b"/"].concat()
}

fn node_key(cluster: &str, id: u64) -> Vec<u8> {
    [node_prefix(cluster).as_slice(), &id.to_be_bytes()].concat()
}

fn versioned_key(cluster: &str) -> Vec<u8> {
    [VERSIONED_PREFIX, cluster.as_bytes()].concat()
}

pub fn node(
    read: &impl KvRead,
    cluster: &str,
    id: u64,
) -> Result<Option<RegisteredNode>, StorageError> {
    read.get(&node_key(cluster, id))?
        .map(|b| decode(&b))
        .transpose()
}

/// Registered nodes of `cluster`, or of every cluster, in (cluster, id) order.
pub fn nodes(
    read: &impl KvRead,
    cluster: Option<&str>,
) -> Result<Vec<RegisteredNode>, StorageError> {
    let start = cluster.map_or(NODE_PREFIX.to_vec(), node_prefix);
    let mut end = start.clone();
    end.push(0xff);
    read.scan(&start, &end, usize::MAX)?
        .into_iter()
        .map(|(_, v)| decode(&v))
        .collect()
}

pub fn versioned(read: &impl KvRead, cluster: &str) -> Result<Versioned, StorageError> {
    Ok(read
        .get(&versioned_key(cluster))?
        .map(|b| decode(&b))
        .transpose()?
        .unwrap_or(Versioned {
            version: 0,
            data: String::new(),
        }))
}

/// Removes a registered node (its lease is being revoked).
pub(crate) fn remove(txn: &mut Txn<'_>, cluster: &str, id: u64) -> Result<(), StorageError> {
    txn.delete(node_key(cluster, id));
    Ok(())
}

pub fn apply(
    command: RegistryCommand,
    index: u64,
    txn: &mut Txn<'_>,
) -> Result<RegistryReply, StorageError> {
    Ok(match command {
        RegistryCommand::Register {
            cluster,
            lease: lease_id,
            ttl_ms,
            info,
        } => {
            let id = txn.get(NEXT_ID_KEY)?.map_or(Ok(1), |b| decode::<u64>(&b))?;
            if lease::grant(txn, lease_id, ttl_ms, index)?.is_err() {
                return Ok(RegistryReply::LeaseTaken);
            }
            txn.put(NEXT_ID_KEY.to_vec(), encode(&(id + 1))?);
            lease::attach(
                txn,
                lease_id,
                Attachment::RegisteredNode {
                    cluster: cluster.clone(),
                    id,
                },
            )?;
            let node = RegisteredNode {
                id,
                cluster,
                lease: lease_id,
                ttl_ms,
                info,
            };
            txn.put(node_key(&node.cluster, id), encode(&node)?);
            RegistryReply::Registered(node)
        }
        RegistryCommand::Deregister { cluster, id } => match node(txn, &cluster, id)? {
            Some(node) => {
                // Revoking the lease removes the node with it.
                if lease::revoke(txn, node.lease)?.is_err() {
                    remove(txn, &cluster, id)?;
                }
                RegistryReply::Deregistered
            }
            None => RegistryReply::NodeNotFound,
        },
        RegistryCommand::WriteVersioned {
            cluster,
            based_on,
            data,
        } => {
            let current = versioned(txn, &cluster)?;
            if current.version != based_on {
                return Ok(RegistryReply::Stale(current));
            }
            let next = Versioned {
                version: current.version + 1,
                data,
            };
            txn.put(versioned_key(&cluster), encode(&next)?);
            RegistryReply::Written(next)
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::is_counter;

    #[test]
    fn the_id_sequence_is_one_of_the_domain_s_counters_and_no_node_is() {
        assert!(is_counter(NEXT_ID_KEY));
        assert!(!is_counter(&node_prefix("registry-meta")));
        assert!(!is_counter(&versioned_key("registry-meta")));
    }
}
