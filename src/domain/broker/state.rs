//! The broker's operations on its state: every mutating endpoint of undermoon's broker as one
//! deterministic function of the state, the operation and the proposer's clock reading.
//!
//! [`Broker::execute`] runs an operation on a copy and keeps the copy only on success, so an
//! operation applies whole or not at all: unlike undermoon's broker, an error answer never
//! comes with a half-made change. Each successful change to clusters bumps the global epoch
//! once and stamps the changed cluster with it; the epoch never goes down.

use serde::Deserialize;
use serde::Serialize;

use super::alloc;
use super::alloc::FreeByHost;
use super::alloc::Links;
use super::consistency::check_consistency;
use super::failover::Failover;
use super::model::BrokerSettings;
use super::model::ChunkStore;
use super::model::ClusterConfig;
use super::model::ClusterStore;
use super::model::InvalidConfig;
use super::model::MetaStore;
use super::model::ProxyResource;
use super::model::RolePosition;
use super::model::DUMP_VERSION;
use super::slots;
use super::slots::SlotRange;
use super::view;
use super::view::Node;
use super::view::Proxy;

/// undermoon's error codes; the HTTP status of each is the API's business.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum BrokerError {
    InUse,
    NoAvailableResource,
    AlreadyExisted,
    ClusterNotFound,
    FreeNodeNotFound,
    FreeNodeFound,
    ProxyNotFound,
    InvalidNodeNumber,
    NodeNumAlreadyEnough,
    InvalidClusterName,
    InvalidMigrationTask,
    InvalidProxyAddress,
    MigrationTaskNotFound,
    MigrationRunning,
    InvalidConfig(InvalidConfig),
    SlotsAlreadyEven,
    InvalidMetaVersion,
    EpochSmallerThanCurrent,
    /// A metadata dump that contradicts itself; the message says where.
    InvalidMetadata(String),
    /// An epoch beyond [`MAX_EPOCH`]: it would leave no room to grow.
    InvalidEpoch,
}

impl BrokerError {
    pub fn code(&self) -> &'static str {
        match self {
            BrokerError::InUse => "IN_USE",
            BrokerError::NoAvailableResource => "NO_AVAILABLE_RESOURCE",
            BrokerError::AlreadyExisted => "ALREADY_EXISTED",
            BrokerError::ClusterNotFound => "CLUSTER_NOT_FOUND",
            BrokerError::FreeNodeNotFound => "FREE_NODE_NOT_FOUND",
            BrokerError::FreeNodeFound => "FREE_NODE_FOUND",
            BrokerError::ProxyNotFound => "PROXY_NOT_FOUND",
            BrokerError::InvalidNodeNumber => "INVALID_NODE_NUMBER",
            BrokerError::NodeNumAlreadyEnough => "NODE_NUM_ALREADY_ENOUGH",
            BrokerError::InvalidClusterName => "INVALID_CLUSTER_NAME",
            BrokerError::InvalidMigrationTask => "INVALID_MIGRATION_TASK",
            BrokerError::InvalidProxyAddress => "INVALID_PROXY_ADDRESS",
            BrokerError::MigrationTaskNotFound => "MIGRATION_TASK_NOT_FOUND",
            BrokerError::MigrationRunning => "MIGRATION_RUNNING",
            BrokerError::InvalidConfig(_) => "INVALID_CONFIG",
            BrokerError::SlotsAlreadyEven => "SLOTS_ALREADY_EVEN",
            BrokerError::InvalidMetaVersion => "INVALID_META_VERSION",
            BrokerError::EpochSmallerThanCurrent => "EPOCH_SMALLER_THAN_CURRENT",
            BrokerError::InvalidMetadata(_) => "INVALID_METADATA",
            BrokerError::InvalidEpoch => "INVALID_EPOCH",
        }
    }
}

/// One mutating broker operation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Op {
    AddProxy {
        address: String,
        nodes: [String; 2],
        host: Option<String>,
    },
    RemoveProxy {
        address: String,
    },
    CreateCluster {
        name: String,
        node_number: usize,
    },
    RemoveCluster {
        name: String,
    },
    /// `PATCH /clusters/nodes`: add `node_number` nodes.
    AddNodes {
        name: String,
        node_number: usize,
    },
    /// `PUT /clusters/nodes`: add nodes until the cluster has `node_number`.
    GrowTo {
        name: String,
        node_number: usize,
    },
    RemoveFreeNodes {
        name: String,
    },
    Expand {
        name: String,
    },
    Shrink {
        name: String,
        node_number: usize,
    },
    /// The first step of `POST /clusters/migrations/auto`: drop free nodes, then add nodes or
    /// start shrinking. Scaling out continues with [`Op::Expand`] once the proxies caught up.
    AutoScale {
        name: String,
        node_number: usize,
    },
    CommitMigration {
        name: String,
        slot_range: SlotRange,
    },
    ChangeConfig {
        name: String,
        changes: Vec<(String, String)>,
    },
    BalanceMasters {
        name: String,
    },
    ReportFailure {
        address: String,
        reporter: String,
    },
    Failover {
        address: String,
    },
    BumpEpoch {
        epoch: u64,
    },
    /// Moves the epoch past every value handed out: past the global epoch and `at_least`
    /// (the largest epoch the proxies reported).
    RecoverEpoch {
        at_least: u64,
    },
    Restore {
        store: Box<MetaStore>,
    },
    /// Changes the given settings and keeps the others.
    Configure {
        replica_addresses: Option<Vec<String>>,
        failure_ttl: Option<u64>,
        failure_quorum: Option<u64>,
    },
}

/// What a successful operation answers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Answer {
    Done,
    /// The nodes added to a cluster.
    Nodes(Vec<Node>),
    /// A failover's replacement, or `None` when there was nothing to replace it with (a free
    /// proxy, or no free proxy left).
    Proxy(Option<Box<Proxy>>),
    /// Auto scaling added nodes: the expansion waits until these proxies reached `epoch`.
    ScaledOut {
        proxies: Vec<String>,
        epoch: u64,
    },
}

/// undermoon's cluster names: 1 to 30 of `[A-Za-z0-9@_-]`.
pub fn valid_cluster_name(name: &str) -> bool {
    (1..=30).contains(&name.len())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "@_-".contains(c))
}

/// `host:port`, where host is a name or IPv4 address and port a number.
pub fn valid_address(address: &str) -> bool {
    match address.split_once(':') {
        Some((host, port)) => {
            !host.is_empty()
                && host
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || ".-_".contains(c))
                && port.parse::<u16>().is_ok()
        }
        None => false,
    }
}

/// The longest host name an address may carry (DNS's limit).
const MAX_HOST_LEN: usize = 253;

/// Whether a proxy registration is well formed, as the API checks it before proposing it:
/// every address is `host:port` ([`valid_address`]) with a host of at most 253 characters,
/// a host given apart is a valid host name, and the proxy's two Redis nodes differ. Applying
/// a registration checks only [`valid_address`], the rule of earlier builds, so that entries
/// they accepted apply alike on every build.
pub fn valid_registration(address: &str, nodes: &[String; 2], host: Option<&str>) -> bool {
    let short = |a: &str| a.split(':').next().is_some_and(|h| h.len() <= MAX_HOST_LEN);
    let addresses_valid = std::iter::once(address)
        .chain(nodes.iter().map(String::as_str))
        .all(|a| valid_address(a) && short(a));
    let host_valid =
        host.is_none_or(|h| h.is_empty() || valid_address(&format!("{h}:0")) && short(h));
    addresses_valid && host_valid && nodes[0] != nodes[1]
}

/// The most chunks a cluster can have: each of its two masters needs a slot.
pub const MAX_CHUNKS: usize = slots::SLOT_COUNT as usize / 2;

/// The largest epoch accepted from a request, leaving room for every later bump.
pub const MAX_EPOCH: u64 = u64::MAX / 2;

/// How many chunks make `node_number` nodes: a positive multiple of 4 (a chunk holds 4), at
/// most [`MAX_CHUNKS`].
pub fn chunk_count(node_number: usize) -> Result<usize, BrokerError> {
    if node_number == 0 || node_number % 4 != 0 || node_number / 4 > MAX_CHUNKS {
        return Err(BrokerError::InvalidNodeNumber);
    }
    Ok(node_number / 4)
}

/// The broker's state: the dump plus the broker's settings.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Broker {
    pub store: MetaStore,
    pub settings: BrokerSettings,
    /// The latest proposer clock applied (Unix seconds). Operations run at the later of
    /// this and their own reading, so broker time never goes back and a node whose clock
    /// lags cannot make old failure reports look fresh.
    pub clock: i64,
    /// Successful operations applied so far; see [`super::BrokerCache`].
    pub changes: u64,
}

impl Broker {
    /// Runs `op` at Unix time `now` (seconds, chosen by the proposer). On error nothing changes.
    pub fn execute(&mut self, now: i64, op: Op) -> Result<Answer, BrokerError> {
        let mut next = self.clone();
        let answer = next.execute_in_place(now, op)?;
        *self = next;
        Ok(answer)
    }

    /// [`Broker::execute`] without the copy: on error `self` may be half changed, so the
    /// caller must throw it away (the state machine runs it on a copy it drops on error).
    pub fn execute_in_place(&mut self, now: i64, op: Op) -> Result<Answer, BrokerError> {
        self.clock = self.now(now);
        let answer = self.run(self.clock, op)?;
        self.changes += 1;
        Ok(answer)
    }

    /// Broker time given a clock reading: never before the latest applied operation.
    pub fn now(&self, reading: i64) -> i64 {
        reading.max(self.clock)
    }

    fn run(&mut self, now: i64, op: Op) -> Result<Answer, BrokerError> {
        match op {
            Op::AddProxy {
                address,
                nodes,
                host,
            } => self.add_proxy(address, nodes, host),
            Op::RemoveProxy { address } => self.remove_proxy(&address),
            Op::CreateCluster { name, node_number } => self.create_cluster(now, name, node_number),
            Op::RemoveCluster { name } => self.remove_cluster(&name),
            Op::AddNodes { name, node_number } => self.add_nodes(now, &name, node_number),
            Op::GrowTo { name, node_number } => {
                let existing = self.cluster(&name)?.node_number();
                match node_number.checked_sub(existing) {
                    Some(added) if added > 0 => self.add_nodes(now, &name, added),
                    _ => Err(BrokerError::NodeNumAlreadyEnough),
                }
            }
            Op::RemoveFreeNodes { name } => self.remove_free_nodes(&name),
            Op::Expand { name } => self.expand(&name),
            Op::Shrink { name, node_number } => self.shrink(&name, node_number),
            Op::AutoScale { name, node_number } => self.auto_scale(now, &name, node_number),
            Op::CommitMigration { name, slot_range } => self.commit_migration(&name, slot_range),
            Op::ChangeConfig { name, changes } => self.change_config(&name, &changes),
            Op::BalanceMasters { name } => self.balance_masters(now, &name),
            Op::ReportFailure { address, reporter } => {
                self.report_failure(now, address, reporter);
                Ok(Answer::Done)
            }
            Op::Failover { address } => match self.failover(now, &address)? {
                Failover::Replaced(new) => {
                    Ok(Answer::Proxy(view::proxy(&self.store, &new).map(Box::new)))
                }
                Failover::FreeProxy | Failover::NoReplacement => Ok(Answer::Proxy(None)),
            },
            Op::BumpEpoch { epoch } => {
                if epoch > MAX_EPOCH {
                    return Err(BrokerError::InvalidEpoch);
                }
                if epoch <= self.store.global_epoch {
                    return Err(BrokerError::EpochSmallerThanCurrent);
                }
                self.stamp_all(epoch);
                Ok(Answer::Done)
            }
            Op::RecoverEpoch { at_least } => {
                if at_least > MAX_EPOCH {
                    return Err(BrokerError::InvalidEpoch);
                }
                self.stamp_all(at_least.max(self.store.global_epoch + 1));
                Ok(Answer::Done)
            }
            Op::Restore { store } => self.restore(*store),
            Op::Configure {
                replica_addresses,
                failure_ttl,
                failure_quorum,
            } => {
                let settings = &mut self.settings;
                if let Some(addresses) = replica_addresses {
                    settings.replica_addresses = addresses;
                }
                settings.failure_ttl = failure_ttl.unwrap_or(settings.failure_ttl).max(1);
                settings.failure_quorum = failure_quorum.unwrap_or(settings.failure_quorum).max(1);
                Ok(Answer::Done)
            }
        }
    }

    pub(super) fn bump(&mut self) -> u64 {
        self.store.global_epoch += 1;
        self.store.global_epoch
    }

    pub(super) fn stamp_all(&mut self, epoch: u64) {
        self.store.global_epoch = epoch;
        for cluster in self.store.clusters.values_mut() {
            cluster.epoch = epoch;
        }
    }

    /// Bumps the global epoch and stamps `name` with it.
    pub(super) fn stamp(&mut self, name: &str) -> u64 {
        let epoch = self.bump();
        if let Some(cluster) = self.store.clusters.get_mut(name) {
            cluster.epoch = epoch;
        }
        epoch
    }

    pub fn cluster(&self, name: &str) -> Result<&ClusterStore, BrokerError> {
        if !valid_cluster_name(name) {
            return Err(BrokerError::InvalidClusterName);
        }
        self.store
            .clusters
            .get(name)
            .ok_or(BrokerError::ClusterNotFound)
    }

    /// A cluster with no migration running, as every change of its layout needs.
    pub(super) fn idle_cluster(&self, name: &str) -> Result<&ClusterStore, BrokerError> {
        let cluster = self.cluster(name)?;
        if cluster.is_migrating() {
            return Err(BrokerError::MigrationRunning);
        }
        Ok(cluster)
    }

    pub(super) fn cluster_mut(&mut self, name: &str) -> Result<&mut ClusterStore, BrokerError> {
        self.cluster(name)?;
        Ok(self.store.clusters.get_mut(name).expect("checked above"))
    }

    /// Reporters whose report on `address` is younger than the failure TTL at `now`.
    pub fn live_reports(&self, address: &str, now: i64) -> usize {
        let ttl = self.settings.failure_ttl as i64;
        self.store.failures.get(address).map_or(0, |reports| {
            reports.values().filter(|at| now - **at < ttl).count()
        })
    }

    /// Proxies that at least `failure_quorum` reporters reported within the TTL.
    pub fn failures(&self, now: i64) -> Vec<String> {
        let quorum = self.settings.failure_quorum.max(1) as usize;
        self.store
            .failures
            .keys()
            .filter(|address| self.store.all_proxies.contains_key(*address))
            .filter(|address| self.live_reports(address, now) >= quorum)
            .cloned()
            .collect()
    }

    /// Free proxies that may be allocated: in no cluster, not failed, not reported lately.
    pub(super) fn free_by_host(&self, now: i64) -> FreeByHost {
        let mut free = FreeByHost::new();
        for proxy in self.store.all_proxies.values() {
            if proxy.cluster.is_none()
                && !self.store.failed_proxies.contains(&proxy.proxy_address)
                && self.live_reports(&proxy.proxy_address, now) == 0
            {
                free.entry(proxy.host.clone())
                    .or_default()
                    .push(proxy.proxy_address.clone());
            }
        }
        free
    }

    /// Takes `count` new slot-less chunks for `cluster` out of the free proxies.
    pub(super) fn take_chunks(
        &mut self,
        now: i64,
        cluster: &str,
        count: usize,
    ) -> Result<Vec<ChunkStore>, BrokerError> {
        let existing = self
            .store
            .clusters
            .get(cluster)
            .map_or(0, |c| c.chunks.len());
        if existing + count > MAX_CHUNKS {
            return Err(BrokerError::InvalidNodeNumber);
        }
        let pairs = alloc::allocate_chunks(self.free_by_host(now), Links::of(&self.store), count)
            .ok_or(BrokerError::NoAvailableResource)?;
        let mut chunks = Vec::with_capacity(count);
        for pair in pairs {
            let [first, second] = pair.map(|address| {
                let proxy = self
                    .store
                    .all_proxies
                    .get_mut(&address)
                    .expect("allocated proxies exist");
                proxy.cluster = Some(cluster.to_string());
                proxy.clone()
            });
            chunks.push(ChunkStore {
                role_position: RolePosition::Normal,
                stable_slots: [None, None],
                migrating_slots: [Vec::new(), Vec::new()],
                node_addresses: [
                    first.node_addresses[0].clone(),
                    first.node_addresses[1].clone(),
                    second.node_addresses[0].clone(),
                    second.node_addresses[1].clone(),
                ],
                proxy_addresses: [first.proxy_address, second.proxy_address],
                hosts: [first.host, second.host],
            });
        }
        Ok(chunks)
    }

    pub(super) fn release(&mut self, chunks: &[ChunkStore]) {
        for address in chunks.iter().flat_map(|c| c.proxy_addresses.iter()) {
            if let Some(proxy) = self.store.all_proxies.get_mut(address) {
                proxy.cluster = None;
            }
        }
    }

    fn add_proxy(
        &mut self,
        address: String,
        nodes: [String; 2],
        host: Option<String>,
    ) -> Result<Answer, BrokerError> {
        if !valid_address(&address) || !nodes.iter().all(|n| valid_address(n)) {
            return Err(BrokerError::InvalidProxyAddress);
        }
        if let Some(existing) = self.store.all_proxies.get(&address) {
            // A failed or reported proxy that registers again is back in service.
            let was_failed = self.store.failed_proxies.contains(&address)
                || self.store.failures.contains_key(&address);
            if !was_failed || existing.node_addresses != nodes {
                return Err(BrokerError::AlreadyExisted);
            }
            self.store.failed_proxies.remove(&address);
            self.store.failures.remove(&address);
            self.bump();
            return Ok(Answer::Done);
        }
        let host = host
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| address.split(':').next().unwrap_or_default().to_string());
        self.store.all_proxies.insert(
            address.clone(),
            ProxyResource {
                proxy_address: address,
                node_addresses: nodes,
                host,
                index: 0,
                cluster: None,
            },
        );
        self.bump();
        Ok(Answer::Done)
    }

    fn remove_proxy(&mut self, address: &str) -> Result<Answer, BrokerError> {
        let proxy = self
            .store
            .all_proxies
            .get(address)
            .ok_or(BrokerError::ProxyNotFound)?;
        if proxy.cluster.is_some() {
            return Err(BrokerError::InUse);
        }
        self.store.all_proxies.remove(address);
        self.store.failed_proxies.remove(address);
        self.store.failures.remove(address);
        self.bump();
        Ok(Answer::Done)
    }

    fn create_cluster(
        &mut self,
        now: i64,
        name: String,
        node_number: usize,
    ) -> Result<Answer, BrokerError> {
        if !valid_cluster_name(&name) {
            return Err(BrokerError::InvalidClusterName);
        }
        if self.store.clusters.contains_key(&name) {
            return Err(BrokerError::AlreadyExisted);
        }
        let count = chunk_count(node_number)?;
        let mut chunks = self.take_chunks(now, &name, count)?;
        for (master, slots) in slots::even_split(count * 2).into_iter().enumerate() {
            chunks[master / 2].stable_slots[master % 2] = Some(SlotRange::stable(slots));
        }
        let epoch = self.bump();
        self.store.clusters.insert(
            name.clone(),
            ClusterStore {
                epoch,
                name,
                chunks,
                config: ClusterConfig::default(),
            },
        );
        Ok(Answer::Done)
    }

    fn remove_cluster(&mut self, name: &str) -> Result<Answer, BrokerError> {
        self.cluster(name)?;
        let cluster = self.store.clusters.remove(name).expect("checked above");
        self.release(&cluster.chunks);
        self.bump();
        Ok(Answer::Done)
    }

    pub(super) fn add_nodes(
        &mut self,
        now: i64,
        name: &str,
        node_number: usize,
    ) -> Result<Answer, BrokerError> {
        self.idle_cluster(name)?;
        let count = chunk_count(node_number)?;
        let chunks = self.take_chunks(now, name, count)?;
        let cluster = self.cluster_mut(name)?;
        let first_new = cluster.chunks.len();
        cluster.chunks.extend(chunks);
        self.stamp(name);
        let nodes = view::cluster(self.cluster(name)?)
            .nodes
            .split_off(first_new * 4);
        Ok(Answer::Nodes(nodes))
    }

    pub(super) fn remove_free_nodes(&mut self, name: &str) -> Result<Answer, BrokerError> {
        let cluster = self.cluster_mut(name)?;
        if cluster.is_migrating() {
            return Err(BrokerError::MigrationRunning);
        }
        let (free, kept): (Vec<ChunkStore>, Vec<ChunkStore>) =
            cluster.chunks.drain(..).partition(ChunkStore::is_free);
        cluster.chunks = kept;
        if free.is_empty() {
            return Err(BrokerError::FreeNodeNotFound);
        }
        self.release(&free);
        self.stamp(name);
        Ok(Answer::Done)
    }

    fn change_config(
        &mut self,
        name: &str,
        changes: &[(String, String)],
    ) -> Result<Answer, BrokerError> {
        let cluster = self.cluster_mut(name)?;
        if cluster.is_migrating() {
            return Err(BrokerError::MigrationRunning);
        }
        let mut config = cluster.config.clone();
        for (key, value) in changes {
            config.set(key, value).map_err(BrokerError::InvalidConfig)?;
        }
        if config != cluster.config {
            cluster.config = config;
            self.stamp(name);
        }
        Ok(Answer::Done)
    }

    fn restore(&mut self, mut store: MetaStore) -> Result<Answer, BrokerError> {
        if store.version != DUMP_VERSION {
            return Err(BrokerError::InvalidMetaVersion);
        }
        if store.global_epoch > MAX_EPOCH {
            return Err(BrokerError::InvalidEpoch);
        }
        if store.global_epoch < self.store.global_epoch {
            return Err(BrokerError::EpochSmallerThanCurrent);
        }
        if store
            .clusters
            .values()
            .any(|c| c.epoch > store.global_epoch)
        {
            return Err(BrokerError::InvalidEpoch);
        }
        // undermoon records failure reports for any address, so its dumps can name proxies
        // that are not registered; keel ignores reports of those, and keeps no failure
        // without the proxy's record (see `check_consistency`).
        let registered = &store.all_proxies;
        store.failed_proxies.retain(|a| registered.contains_key(a));
        store.failures.retain(|a, _| registered.contains_key(a));
        check_consistency(&store).map_err(BrokerError::InvalidMetadata)?;
        // Restored clusters must reach proxies that may hold any epoch handed out so far,
        // and proxies only take metadata with a greater epoch: stamp everything past both.
        let epoch = store.global_epoch.max(self.store.global_epoch) + 1;
        self.store = MetaStore {
            enable_ordered_proxy: false,
            ..store
        };
        self.stamp_all(epoch);
        Ok(Answer::Done)
    }
}
