//! What the broker stores: proxies, clusters made of chunks, failure reports, the global
//! epoch and the broker's own settings.
//!
//! The field names and shapes are those of undermoon's memory broker dump
//! (`mem-broker-0.2`), so `GET /api/v3/metadata` of an undermoon broker can be restored into
//! keel and back. A **chunk** is two proxies on two hosts holding four Redis nodes: nodes
//! 0–1 on the first proxy, 2–3 on the second. It has two master *parts*; where each part's
//! master sits is the chunk's [`RolePosition`], and replication is crosswise (0↔3, 1↔2), so
//! either proxy can hold both masters when the other fails.

use std::collections::BTreeMap;
use std::collections::BTreeSet;

use serde::Deserialize;
use serde::Serialize;

use super::slots::RangeList;
use super::slots::SlotRange;

/// The dump format version keel reads and writes.
pub const DUMP_VERSION: &str = "mem-broker-0.2";

/// A registered server proxy with its two Redis nodes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProxyResource {
    pub proxy_address: String,
    pub node_addresses: [String; 2],
    pub host: String,
    /// undermoon's StatefulSet index; keel does not use ordered allocation and keeps 0.
    #[serde(default)]
    pub index: usize,
    pub cluster: Option<String>,
}

/// Where a chunk's two masters are.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum RolePosition {
    /// Node 0 (first proxy) and node 2 (second proxy) are masters.
    Normal,
    /// The first proxy holds both masters (nodes 0 and 1): the second one failed.
    FirstChunkMaster,
    /// The second proxy holds both masters (nodes 3 and 2): the first one failed.
    SecondChunkMaster,
}

impl RolePosition {
    /// The node (0..4) that is the master of `part`.
    pub fn master_node(self, part: usize) -> usize {
        match (self, part) {
            (RolePosition::Normal, part) => 2 * part,
            (RolePosition::FirstChunkMaster, part) => part,
            (RolePosition::SecondChunkMaster, part) => 3 - part,
        }
    }

    /// The position in which the proxy on `side` (0 or 1) holds no master.
    pub fn without_side(side: usize) -> Self {
        if side == 0 {
            RolePosition::SecondChunkMaster
        } else {
            RolePosition::FirstChunkMaster
        }
    }
}

/// One end of a migration: a master part of a chunk, by index.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Part {
    pub chunk: usize,
    pub part: usize,
}

/// A migration as stored: the task's epoch and its two ends.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct MigrationMetaStore {
    pub epoch: u64,
    pub src_chunk_index: usize,
    pub src_chunk_part: usize,
    pub dst_chunk_index: usize,
    pub dst_chunk_part: usize,
}

impl MigrationMetaStore {
    pub fn src(&self) -> Part {
        Part {
            chunk: self.src_chunk_index,
            part: self.src_chunk_part,
        }
    }

    pub fn dst(&self) -> Part {
        Part {
            chunk: self.dst_chunk_index,
            part: self.dst_chunk_part,
        }
    }
}

/// A range in flight, stored on both ends: `is_migrating` on the source, not on the target.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MigrationSlotRangeStore {
    pub range_list: RangeList,
    pub is_migrating: bool,
    pub meta: MigrationMetaStore,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkStore {
    pub role_position: RolePosition,
    /// The slots each part owns outright (tag always `None`); `None` for a part without slots.
    pub stable_slots: [Option<SlotRange>; 2],
    pub migrating_slots: [Vec<MigrationSlotRangeStore>; 2],
    pub proxy_addresses: [String; 2],
    pub hosts: [String; 2],
    pub node_addresses: [String; 4],
}

impl ChunkStore {
    pub fn is_migrating(&self) -> bool {
        self.migrating_slots.iter().any(|m| !m.is_empty())
    }

    /// A chunk added for an expansion that has not received slots, or drained by a shrink.
    pub fn is_free(&self) -> bool {
        self.stable_slots.iter().all(Option::is_none) && !self.is_migrating()
    }

    pub fn side_of(&self, proxy: &str) -> Option<usize> {
        self.proxy_addresses.iter().position(|p| p == proxy)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterStore {
    pub epoch: u64,
    pub name: String,
    pub chunks: Vec<ChunkStore>,
    pub config: ClusterConfig,
}

impl ClusterStore {
    pub fn is_migrating(&self) -> bool {
        self.chunks.iter().any(ChunkStore::is_migrating)
    }

    pub fn node_number(&self) -> usize {
        self.chunks.len() * 4
    }

    /// Nodes in chunks whose masters hold slots (undermoon counts a chunk by its parts).
    pub fn node_number_with_slots(&self) -> usize {
        self.chunks
            .iter()
            .flat_map(|c| c.stable_slots.iter())
            .filter(|s| s.is_some())
            .count()
            * 2
    }

    pub fn proxy_addresses(&self) -> impl Iterator<Item = &String> {
        self.chunks.iter().flat_map(|c| c.proxy_addresses.iter())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CompressionStrategy {
    #[default]
    Disabled,
    SetGetOnly,
    AllowAll,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MigrationConfig {
    /// Seconds.
    pub max_migration_time: u64,
    /// Milliseconds.
    pub max_blocking_time: u64,
    /// Microseconds.
    pub scan_interval: u64,
    pub scan_count: u64,
}

impl Default for MigrationConfig {
    fn default() -> Self {
        Self {
            max_migration_time: 3 * 60 * 60,
            max_blocking_time: 10_000,
            scan_interval: 500,
            scan_count: 16,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ClusterConfig {
    #[serde(default)]
    pub compression_strategy: CompressionStrategy,
    #[serde(default)]
    pub migration_config: MigrationConfig,
}

/// Why a config change was refused: undermoon's `INVALID_CONFIG` fields.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InvalidConfig {
    pub key: String,
    pub value: String,
    pub message: String,
}

impl ClusterConfig {
    /// Applies one `key = value` of `PATCH /clusters/config` (keys as undermoon names them).
    pub fn set(&mut self, key: &str, value: &str) -> Result<(), InvalidConfig> {
        let invalid = |message: &str| InvalidConfig {
            key: key.to_string(),
            value: value.to_string(),
            message: message.to_string(),
        };
        let number = || {
            value
                .parse::<u64>()
                .map_err(|_| invalid("expected a non-negative integer"))
        };
        match key.to_ascii_lowercase().as_str() {
            "compression_strategy" => {
                self.compression_strategy = match value.to_ascii_lowercase().as_str() {
                    "disabled" => CompressionStrategy::Disabled,
                    "set_get_only" => CompressionStrategy::SetGetOnly,
                    "allow_all" => CompressionStrategy::AllowAll,
                    _ => {
                        return Err(invalid(
                            "expected \"disabled\", \"set_get_only\" or \"allow_all\"",
                        ))
                    }
                }
            }
            "migration_max_migration_time" => self.migration_config.max_migration_time = number()?,
            "migration_max_blocking_time" => self.migration_config.max_blocking_time = number()?,
            "migration_scan_interval" => self.migration_config.scan_interval = number()?,
            "migration_scan_count" => match number()? {
                0 => return Err(invalid("scan_count must be at least 1")),
                count => self.migration_config.scan_count = count,
            },
            _ => return Err(invalid("unknown field; expected compression_strategy or migration_max_migration_time, migration_max_blocking_time, migration_scan_interval, migration_scan_count")),
        }
        Ok(())
    }
}

/// The broker's own settings, replicated so every keel node answers alike.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BrokerSettings {
    /// Kept and reported for undermoon's tooling; Raft is keel's replication.
    pub replica_addresses: Vec<String>,
    /// Seconds a failure report counts.
    pub failure_ttl: u64,
    /// Distinct reporters needed before a proxy is listed as failed.
    pub failure_quorum: u64,
}

impl Default for BrokerSettings {
    fn default() -> Self {
        Self {
            replica_addresses: Vec::new(),
            failure_ttl: 60,
            failure_quorum: 1,
        }
    }
}

/// The whole broker state, in the dump's shape. `failures` maps a proxy to its reporters and
/// the time (Unix seconds, chosen by the proposer) of their latest report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MetaStore {
    pub version: String,
    pub global_epoch: u64,
    pub clusters: BTreeMap<String, ClusterStore>,
    pub all_proxies: BTreeMap<String, ProxyResource>,
    pub failed_proxies: BTreeSet<String>,
    pub failures: BTreeMap<String, BTreeMap<String, i64>>,
    /// undermoon's StatefulSet mode; keel always allocates by host, and a restore turns it off.
    #[serde(default)]
    pub enable_ordered_proxy: bool,
}

impl Default for MetaStore {
    fn default() -> Self {
        Self {
            version: DUMP_VERSION.to_string(),
            global_epoch: 0,
            clusters: BTreeMap::new(),
            all_proxies: BTreeMap::new(),
            failed_proxies: BTreeSet::new(),
            failures: BTreeMap::new(),
            enable_ordered_proxy: false,
        }
    }
}
