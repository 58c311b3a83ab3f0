//! The metadata the coordinator reads: clusters, nodes and proxies in the exact JSON shapes
//! of undermoon's broker API, computed from the stored chunks.
//!
//! A master node carries its part's stable slots followed by the ranges it is migrating out
//! (`Migrating`) or importing (`Importing`); replicas carry no slots. A proxy in a cluster
//! reports the cluster's epoch, its own two nodes and, as peers, every other proxy holding
//! masters; a free proxy reports the global epoch and its nodes as slot-less masters.

use serde::Deserialize;
use serde::Serialize;

use super::model::ChunkStore;
use super::model::ClusterConfig;
use super::model::ClusterStore;
use super::model::MetaStore;
use super::model::MigrationSlotRangeStore;
use super::model::Part;
use super::slots::MigrationMeta;
use super::slots::SlotRange;
use super::slots::SlotRangeTag;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Master,
    Replica,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplPeer {
    pub node_address: String,
    pub proxy_address: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplMeta {
    pub role: Role,
    pub peers: Vec<ReplPeer>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Node {
    pub address: String,
    pub proxy_address: String,
    pub slots: Vec<SlotRange>,
    pub repl: ReplMeta,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cluster {
    pub name: String,
    pub epoch: u64,
    pub nodes: Vec<Node>,
    pub config: ClusterConfig,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerProxy {
    pub proxy_address: String,
    pub slots: Vec<SlotRange>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Proxy {
    pub cluster_name: Option<String>,
    pub address: String,
    pub epoch: u64,
    pub nodes: Vec<Node>,
    pub peers: Vec<PeerProxy>,
    pub cluster_config: Option<ClusterConfig>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterInfo {
    pub name: String,
    pub node_number: usize,
    pub node_number_with_slots: usize,
    pub is_migrating: bool,
}

/// The master node and proxy of a part, as addresses.
fn part_addresses(chunks: &[ChunkStore], at: Part) -> (String, String) {
    let chunk = &chunks[at.chunk];
    let node = chunk.role_position.master_node(at.part);
    (
        chunk.proxy_addresses[node / 2].clone(),
        chunk.node_addresses[node].clone(),
    )
}

fn migration_slot_range(chunks: &[ChunkStore], stored: &MigrationSlotRangeStore) -> SlotRange {
    let (src_proxy_address, src_node_address) = part_addresses(chunks, stored.meta.src());
    let (dst_proxy_address, dst_node_address) = part_addresses(chunks, stored.meta.dst());
    let meta = MigrationMeta {
        epoch: stored.meta.epoch,
        src_proxy_address,
        src_node_address,
        dst_proxy_address,
        dst_node_address,
    };
    SlotRange {
        range_list: stored.range_list.clone(),
        tag: if stored.is_migrating {
            SlotRangeTag::Migrating(meta)
        } else {
            SlotRangeTag::Importing(meta)
        },
    }
}

/// Node `i` of a chunk, with its replication peer across the chunk (0↔3, 1↔2).
fn chunk_node(cluster: &ClusterStore, chunk: &ChunkStore, i: usize) -> Node {
    let master_of = (0..2).find(|part| chunk.role_position.master_node(*part) == i);
    let slots = match master_of {
        Some(part) => chunk.stable_slots[part]
            .iter()
            .cloned()
            .chain(
                chunk.migrating_slots[part]
                    .iter()
                    .map(|m| migration_slot_range(&cluster.chunks, m)),
            )
            .collect(),
        None => Vec::new(),
    };
    let peer = 3 - i;
    Node {
        address: chunk.node_addresses[i].clone(),
        proxy_address: chunk.proxy_addresses[i / 2].clone(),
        slots,
        repl: ReplMeta {
            role: if master_of.is_some() {
                Role::Master
            } else {
                Role::Replica
            },
            peers: vec![ReplPeer {
                node_address: chunk.node_addresses[peer].clone(),
                proxy_address: chunk.proxy_addresses[peer / 2].clone(),
            }],
        },
    }
}

pub fn cluster(cluster: &ClusterStore) -> Cluster {
    Cluster {
        name: cluster.name.clone(),
        epoch: cluster.epoch,
        nodes: cluster
            .chunks
            .iter()
            .flat_map(|chunk| (0..4).map(move |i| chunk_node(cluster, chunk, i)))
            .collect(),
        config: cluster.config.clone(),
    }
}

pub fn cluster_info(cluster: &ClusterStore) -> ClusterInfo {
    ClusterInfo {
        name: cluster.name.clone(),
        node_number: cluster.node_number(),
        node_number_with_slots: cluster.node_number_with_slots(),
        is_migrating: cluster.is_migrating(),
    }
}

pub fn proxy(store: &MetaStore, address: &str) -> Option<Proxy> {
    let resource = store.all_proxies.get(address)?;
    let Some(stored) = resource
        .cluster
        .as_ref()
        .and_then(|name| store.clusters.get(name))
    else {
        let nodes = resource
            .node_addresses
            .iter()
            .map(|node| Node {
                address: node.clone(),
                proxy_address: address.to_string(),
                slots: Vec::new(),
                repl: ReplMeta {
                    role: Role::Master,
                    peers: Vec::new(),
                },
            })
            .collect();
        return Some(Proxy {
            cluster_name: None,
            address: address.to_string(),
            epoch: store.global_epoch,
            nodes,
            peers: Vec::new(),
            cluster_config: None,
        });
    };
    let whole = cluster(stored);
    let (nodes, others): (Vec<Node>, Vec<Node>) = whole
        .nodes
        .into_iter()
        .partition(|node| node.proxy_address == address);
    let mut peers: Vec<PeerProxy> = Vec::new();
    for node in others.into_iter().filter(|n| n.repl.role == Role::Master) {
        match peers.last_mut() {
            Some(peer) if peer.proxy_address == node.proxy_address => peer.slots.extend(node.slots),
            _ => peers.push(PeerProxy {
                proxy_address: node.proxy_address,
                slots: node.slots,
            }),
        }
    }
    Some(Proxy {
        cluster_name: Some(stored.name.clone()),
        address: address.to_string(),
        epoch: stored.epoch,
        nodes,
        peers,
        cluster_config: Some(stored.config.clone()),
    })
}
