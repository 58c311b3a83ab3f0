//! The control cluster's own settings: its name, the credentials clients must present, the
//! secret peers authenticate with, and the allocation of control-node uids.
//!
//! The first command of every cluster is `Init`, proposed by the node that created it. The
//! password arrives already hashed (argon2, salted by the proposer), so no node ever stores a
//! password and apply stays deterministic.

use keel_storage::Error as StorageError;
use keel_storage::KvRead;
use keel_storage::Txn;
use serde::Deserialize;
use serde::Serialize;

use super::decode;
use super::encode;

const CONFIG_KEY: &[u8] = b"cluster/config";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Credentials {
    pub username: String,
    /// An argon2 PHC string.
    pub password_hash: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterConfig {
    pub name: String,
    /// `None` only for the loopback-only embedded default.
    pub credentials: Option<Credentials>,
    pub secret: String,
    /// The uid the next joining control node gets.
    pub next_node_id: u64,
}

/// The most bytes of a cluster's name.
const MAX_NAME_LEN: usize = 253;

/// Whether `name` can name a cluster: 1 to [`MAX_NAME_LEN`] bytes, no spaces or control
/// characters (the bootstrap API and `--cluster-name` alike).
pub fn is_valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && !name.chars().any(|c| c.is_whitespace() || c.is_control())
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum ClusterCommand {
    Init {
        name: String,
        credentials: Option<Credentials>,
        secret: String,
        founder: u64,
    },
    /// Reserves the next control-node uid for a node that is joining.
    AllocateNodeId,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ClusterReply {
    Initialized,
    AlreadyInitialized,
    NodeId(u64),
    NotInitialized,
}

pub fn config(read: &impl KvRead) -> Result<Option<ClusterConfig>, StorageError> {
    read.get(CONFIG_KEY)?.map(|b| decode(&b)).transpose()
}

pub fn apply(command: ClusterCommand, txn: &mut Txn<'_>) -> Result<ClusterReply, StorageError> {
    let current = config(txn)?;
    let reply = match (command, current) {
        (ClusterCommand::Init { .. }, Some(_)) => ClusterReply::AlreadyInitialized,
        (
            ClusterCommand::Init {
                name,
                credentials,
                secret,
                founder,
            },
            None,
        ) => {
            let config = ClusterConfig {
                name,
                credentials,
                secret,
                next_node_id: founder + 1,
            };
            txn.put(CONFIG_KEY.to_vec(), encode(&config)?);
            ClusterReply::Initialized
        }
        (ClusterCommand::AllocateNodeId, None) => ClusterReply::NotInitialized,
        (ClusterCommand::AllocateNodeId, Some(mut config)) => {
            let id = config.next_node_id;
            config.next_node_id += 1;
            txn.put(CONFIG_KEY.to_vec(), encode(&config)?);
            ClusterReply::NodeId(id)
        }
    };
    Ok(reply)
}
