//! The undermoon broker: Redis clusters made of server proxies, their slots, failovers,
//! migrations and epochs — keel's main domain, replicated through the Raft log.
//!
//! - [`slots`]: slot ranges and the arithmetic of even splits, expansion and shrinking.
//! - [`model`]: what is stored, in undermoon's dump layout.
//! - [`alloc`]: host-aware choice of proxies.
//! - [`state`]: the operations, each applied whole or not at all; [`migrate`] and [`failover`]
//!   hold the migration and failure halves, [`consistency`] the invariants.
//! - [`view`]: the JSON shapes the coordinator reads.
//!
//! Storage: one key per proxy and per cluster under `broker/`, plus one for the epoch,
//! settings and change count. The decoded broker is cached ([`BrokerCache`]); when the cache
//! is stale it is loaded with one scan (one RocksDB iterator, so a consistent view). An
//! operation runs on a copy in memory and writes back only what changed; copying is linear
//! in the number of proxies, and a control plane's broker holds thousands, not millions.

pub mod alloc;
pub mod consistency;
mod failover;
mod migrate;
pub mod model;
pub mod slots;
pub mod state;
pub mod view;

#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::sync::Arc;

use keel_storage::Error as StorageError;
use keel_storage::KvRead;
use keel_storage::Txn;
use serde::Deserialize;
use serde::Serialize;

pub use self::model::BrokerSettings;
pub use self::model::MetaStore;
pub use self::state::Answer;
pub use self::state::Broker;
pub use self::state::BrokerError;
pub use self::state::Op;
use super::decode;
use super::encode;
use model::ClusterStore;
use model::ProxyResource;

const PREFIX: &[u8] = b"broker/";
const PREFIX_END: &[u8] = b"broker0"; // the byte after '/'
const META_KEY: &[u8] = b"broker/meta";
const PROXY_PREFIX: &[u8] = b"broker/proxy/";
const CLUSTER_PREFIX: &[u8] = b"broker/cluster/";

/// A broker operation with the proposer's clock reading (Unix seconds), which failure
/// reports are stamped with and judged by.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BrokerCommand {
    pub now: i64,
    pub op: Op,
}

pub type BrokerReply = Result<Answer, BrokerError>;

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
struct Meta {
    global_epoch: u64,
    settings: BrokerSettings,
    clock: i64,
    changes: u64,
}

/// A proxy with its failure state, stored under one key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct ProxyRecord {
    resource: ProxyResource,
    failed: bool,
    failures: BTreeMap<String, i64>,
}

/// The same record, borrowed from a [`Broker`] for comparing and encoding.
#[derive(PartialEq, Serialize)]
struct ProxyRecordRef<'a> {
    resource: &'a ProxyResource,
    failed: bool,
    failures: Option<&'a BTreeMap<String, i64>>,
}

impl<'a> ProxyRecordRef<'a> {
    fn of(broker: &'a Broker, address: &str) -> Option<Self> {
        let store = &broker.store;
        Some(Self {
            resource: store.all_proxies.get(address)?,
            failed: store.failed_proxies.contains(address),
            failures: store.failures.get(address).filter(|f| !f.is_empty()),
        })
    }

    fn encode(&self) -> Result<Vec<u8>, StorageError> {
        encode(&ProxyRecord {
            resource: self.resource.clone(),
            failed: self.failed,
            failures: self.failures.cloned().unwrap_or_default(),
        })
    }
}

/// The decoded broker kept between commands and shared with readers, so neither reloads
/// every proxy and cluster. It is valid while its change count matches the stored one: each
/// successful operation counts one, and every node applies the same ones in the same order,
/// so equal counts mean equal states (also after a snapshot install).
#[derive(Default)]
pub struct BrokerCache(std::sync::Mutex<Option<Arc<Broker>>>);

impl BrokerCache {
    fn valid(&self, changes: u64) -> Option<Arc<Broker>> {
        let cached = self.0.lock().expect("broker cache");
        cached.as_ref().filter(|b| b.changes == changes).cloned()
    }

    fn keep(&self, broker: Arc<Broker>) {
        *self.0.lock().expect("broker cache") = Some(broker);
    }

    /// The broker as stored in `read`: the cached one if it is current, else loaded.
    pub fn current(&self, read: &impl KvRead) -> Result<Arc<Broker>, StorageError> {
        if let Some(broker) = self.valid(stored_changes(read)?) {
            return Ok(broker);
        }
        let broker = Arc::new(load(read)?);
        self.keep(broker.clone());
        Ok(broker)
    }
}

fn stored_changes(read: &impl KvRead) -> Result<u64, StorageError> {
    Ok(read
        .get(META_KEY)?
        .map(|b| decode::<Meta>(&b))
        .transpose()?
        .map_or(0, |meta| meta.changes))
}

fn proxy_key(address: &str) -> Vec<u8> {
    [PROXY_PREFIX, address.as_bytes()].concat()
}

fn cluster_key(name: &str) -> Vec<u8> {
    [CLUSTER_PREFIX, name.as_bytes()].concat()
}

/// Reads the whole broker in one consistent scan.
pub fn load(read: &impl KvRead) -> Result<Broker, StorageError> {
    let mut broker = Broker::default();
    for (key, value) in read.scan(PREFIX, PREFIX_END, usize::MAX)? {
        if key == META_KEY {
            let meta: Meta = decode(&value)?;
            broker.store.global_epoch = meta.global_epoch;
            broker.settings = meta.settings;
            broker.clock = meta.clock;
            broker.changes = meta.changes;
        } else if key.starts_with(PROXY_PREFIX) {
            let record: ProxyRecord = decode(&value)?;
            let address = record.resource.proxy_address.clone();
            if record.failed {
                broker.store.failed_proxies.insert(address.clone());
            }
            if !record.failures.is_empty() {
                broker
                    .store
                    .failures
                    .insert(address.clone(), record.failures);
            }
            broker.store.all_proxies.insert(address, record.resource);
        } else if key.starts_with(CLUSTER_PREFIX) {
            let cluster: ClusterStore = decode(&value)?;
            broker.store.clusters.insert(cluster.name.clone(), cluster);
        }
    }
    Ok(broker)
}

/// Writes what differs between `before` and `after`.
fn save(txn: &mut Txn<'_>, before: &Broker, after: &Broker) -> Result<(), StorageError> {
    let meta = |b: &Broker| Meta {
        global_epoch: b.store.global_epoch,
        settings: b.settings.clone(),
        clock: b.clock,
        changes: b.changes,
    };
    if meta(before) != meta(after) {
        txn.put(META_KEY.to_vec(), encode(&meta(after))?);
    }
    for address in after.store.all_proxies.keys() {
        let record = ProxyRecordRef::of(after, address).expect("listed above");
        if ProxyRecordRef::of(before, address).as_ref() != Some(&record) {
            txn.put(proxy_key(address), record.encode()?);
        }
    }
    let (old, new) = (&before.store.all_proxies, &after.store.all_proxies);
    for address in old.keys().filter(|a| !new.contains_key(*a)) {
        txn.delete(proxy_key(address));
    }
    let (old, new) = (&before.store.clusters, &after.store.clusters);
    for (name, cluster) in new {
        if old.get(name) != Some(cluster) {
            txn.put(cluster_key(name), encode(cluster)?);
        }
    }
    for name in old.keys().filter(|n| !new.contains_key(*n)) {
        txn.delete(cluster_key(name));
    }
    Ok(())
}

pub fn apply(
    command: BrokerCommand,
    txn: &mut Txn<'_>,
    cache: &BrokerCache,
) -> Result<BrokerReply, StorageError> {
    let before = cache.current(txn)?;
    let mut after = Broker::clone(&before);
    let reply = after.execute_in_place(command.now, command.op);
    if reply.is_ok() {
        save(txn, &before, &after)?;
        cache.keep(Arc::new(after));
    }
    Ok(reply)
}
