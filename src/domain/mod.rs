//! keel's domain: the commands that travel through the Raft log and the deterministic state
//! machine that applies them.
//!
//! Nothing here knows HTTP, Raft or RocksDB column families: state is read and written
//! through the storage crate's key-value [`Txn`], and everything a command needs that varies
//! between nodes (ids, secrets, hashes, time) was chosen by the proposer and is inside the
//! command. Each family of commands has its own module and key prefix.

pub mod cluster;
pub mod kv;
pub mod lease;
pub mod registry;

use keel_raft::StateMachine;
use keel_storage::Error as StorageError;
use keel_storage::Txn;
use serde::Deserialize;
use serde::Serialize;

/// Every change to keel's state.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Command {
    Cluster(cluster::ClusterCommand),
    Kv(kv::KvCommand),
    Lease(lease::LeaseCommand),
    Registry(registry::RegistryCommand),
}

/// The answer to a [`Command`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Reply {
    Cluster(cluster::ClusterReply),
    Kv(Result<kv::KvWrite, kv::KvError>),
    Lease(Result<Vec<lease::Lease>, lease::LeaseError>),
    Registry(registry::RegistryReply),
    /// The command could not be decoded: a node running a newer keel proposed it.
    Undecodable(String),
}

/// The state machine keel's Raft applies.
pub struct Domain;

impl StateMachine for Domain {
    fn apply(
        &self,
        _index: u64,
        command: &[u8],
        txn: &mut Txn<'_>,
    ) -> Result<Vec<u8>, StorageError> {
        let reply = match bincode::deserialize::<Command>(command) {
            Ok(Command::Cluster(command)) => Reply::Cluster(cluster::apply(command, txn)?),
            Ok(Command::Kv(command)) => Reply::Kv(kv::apply(command, txn)?),
            Ok(Command::Lease(command)) => Reply::Lease(lease::apply(command, txn)?),
            Ok(Command::Registry(command)) => Reply::Registry(registry::apply(command, txn)?),
            Err(err) => Reply::Undecodable(err.to_string()),
        };
        Ok(bincode::serialize(&reply)?)
    }
}

/// Encodes a value stored by the domain.
pub(crate) fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, StorageError> {
    Ok(bincode::serialize(value)?)
}

/// Decodes a value stored by the domain.
pub(crate) fn decode<T: for<'de> Deserialize<'de>>(bytes: &[u8]) -> Result<T, StorageError> {
    Ok(bincode::deserialize(bytes)?)
}
