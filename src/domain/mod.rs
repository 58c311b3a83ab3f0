//! keel's domain: the commands that travel through the Raft log and the deterministic state
//! machine that applies them.
//!
//! Nothing here knows HTTP, Raft or RocksDB column families: state is read and written
//! through the storage crate's key-value [`Txn`], and everything a command needs that varies
//! between nodes (ids, secrets, hashes, time) was chosen by the proposer and is inside the
//! command. Each family of commands has its own module and key prefix.

pub mod broker;
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
    /// Appended last: bincode numbers variants in order, and logs hold the older ones.
    Broker(broker::BrokerCommand),
}

/// The answer to a [`Command`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Reply {
    Cluster(cluster::ClusterReply),
    Kv(Result<kv::KvWrite, kv::KvError>),
    Lease(Result<Vec<lease::Lease>, lease::LeaseError>),
    Registry(registry::RegistryReply),
    Broker(broker::BrokerReply),
}

/// The state machine keel's Raft applies.
#[derive(Default)]
pub struct Domain {
    /// The undermoon broker as last applied, shared with the API's reads.
    pub broker: broker::BrokerCache,
}

impl StateMachine for Domain {
    fn history_prefixes(&self) -> Vec<Vec<u8>> {
        vec![kv::EVENT_PREFIX.to_vec()]
    }

    fn counter_prefixes(&self) -> Vec<Vec<u8>> {
        vec![kv::META_PREFIX.to_vec(), registry::META_PREFIX.to_vec()]
    }

    /// A key-value write reads its key first. Decoding the command here and again in `apply`
    /// costs less than the lookup a batch saves; see the README's benchmark section.
    fn keys_read(&self, command: &[u8]) -> Vec<Vec<u8>> {
        match decode(command) {
            Ok(Command::Kv(command)) => vec![kv::read_key(&command)],
            _ => Vec::new(),
        }
    }

    fn apply(
        &self,
        index: u64,
        command: &[u8],
        txn: &mut Txn<'_>,
    ) -> Result<Vec<u8>, StorageError> {
        // A command this node cannot decode was proposed by a newer keel. Skipping it would
        // let this node's state silently diverge, so the node stops instead.
        let command: Command = bincode::deserialize(command).map_err(|e| {
            StorageError::Corrupt(format!(
                "log entry {index} holds a command this keel cannot decode ({e}); upgrade this node"
            ))
        })?;
        let reply = match command {
            Command::Broker(command) => Reply::Broker(broker::apply(command, txn, &self.broker)?),
            Command::Cluster(command) => Reply::Cluster(cluster::apply(command, txn)?),
            Command::Kv(command) => Reply::Kv(kv::apply(command, txn)?),
            Command::Lease(command) => Reply::Lease(lease::apply(command, index, txn)?),
            Command::Registry(command) => Reply::Registry(registry::apply(command, index, txn)?),
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

/// Whether `key` lies under one of the domain's counter prefixes.
#[cfg(test)]
fn is_counter(key: &[u8]) -> bool {
    Domain::default()
        .counter_prefixes()
        .iter()
        .any(|prefix| key.starts_with(prefix))
}
