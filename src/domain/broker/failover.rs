//! Failures and failover: reports with quorum and TTL, replacing a failed proxy, putting
//! masters back in place, and checking that every host may fail.
//!
//! A chunk's two masters sit where its [`RolePosition`] says. Failing a proxy moves both onto
//! the surviving proxy of its chunk, then a free proxy takes the failed one's place as
//! replicas. Migrations whose ends moved get the new epoch, so the proxies see new tasks.

use std::collections::BTreeSet;

use super::alloc;
use super::alloc::Links;
use super::model::ClusterStore;
use super::model::Part;
use super::model::RolePosition;
use super::state::Answer;
use super::state::Broker;
use super::state::BrokerError;

/// How a failover ended.
pub(super) enum Failover {
    FreeProxy,
    Replaced(String),
    /// The surviving half holds the masters, but no free proxy could take the failed one's place.
    NoReplacement,
}

impl Broker {
    /// Points migrations whose ends moved to another node at `epoch`, so the proxies see them
    /// as new tasks between the new nodes.
    fn retag_migrations(cluster: &mut ClusterStore, moved: &BTreeSet<Part>, epoch: u64) {
        for chunk in &mut cluster.chunks {
            for task in chunk.migrating_slots.iter_mut().flatten() {
                if moved.contains(&task.meta.src()) || moved.contains(&task.meta.dst()) {
                    task.meta.epoch = epoch;
                }
            }
        }
    }

    /// Sets a chunk's role position; returns the parts whose master node changed.
    fn set_roles(cluster: &mut ClusterStore, chunk: usize, roles: RolePosition) -> Vec<Part> {
        let before = cluster.chunks[chunk].role_position;
        cluster.chunks[chunk].role_position = roles;
        (0..2)
            .filter(|part| before.master_node(*part) != roles.master_node(*part))
            .map(|part| Part { chunk, part })
            .collect()
    }

    pub(super) fn balance_masters(&mut self, now: i64, name: &str) -> Result<Answer, BrokerError> {
        let unhealthy: BTreeSet<String> = self
            .store
            .all_proxies
            .keys()
            .filter(|a| self.store.failed_proxies.contains(*a) || self.live_reports(a, now) > 0)
            .cloned()
            .collect();
        let cluster = self.cluster_mut(name)?;
        let mut moved = BTreeSet::new();
        for chunk in 0..cluster.chunks.len() {
            let healthy = cluster.chunks[chunk]
                .proxy_addresses
                .iter()
                .all(|a| !unhealthy.contains(a));
            if healthy {
                moved.extend(Self::set_roles(cluster, chunk, RolePosition::Normal));
            }
        }
        if !moved.is_empty() {
            let epoch = self.stamp(name);
            Self::retag_migrations(self.cluster_mut(name)?, &moved, epoch);
        }
        Ok(Answer::Done)
    }

    /// Records a report. Reports on unregistered addresses are dropped: undermoon lists only
    /// registered proxies as failed and clears a proxy's reports when it registers.
    pub(super) fn report_failure(&mut self, now: i64, address: String, reporter: String) {
        if !self.store.all_proxies.contains_key(&address) {
            return;
        }
        let ttl = self.settings.failure_ttl as i64;
        for reports in self.store.failures.values_mut() {
            reports.retain(|_, at| now - *at < ttl);
        }
        self.store.failures.retain(|_, reports| !reports.is_empty());
        let reports = self.store.failures.entry(address).or_default();
        if reports.insert(reporter, now).is_none() {
            self.bump();
        }
    }

    pub(super) fn failover(&mut self, now: i64, address: &str) -> Result<Failover, BrokerError> {
        let proxy = self
            .store
            .all_proxies
            .get(address)
            .ok_or(BrokerError::ProxyNotFound)?;
        let Some(name) = proxy.cluster.clone() else {
            self.store.failures.remove(address);
            self.store.failed_proxies.insert(address.to_string());
            return Ok(Failover::FreeProxy);
        };
        let free = self.free_by_host(now);
        let links = Links::of(&self.store);
        let cluster = self.cluster_mut(&name)?;
        let (chunk, side) = cluster
            .chunks
            .iter()
            .enumerate()
            .find_map(|(i, c)| c.side_of(address).map(|side| (i, side)))
            .ok_or_else(|| {
                BrokerError::InvalidMetadata(format!("{address} is not in cluster {name}"))
            })?;
        let moved: BTreeSet<Part> =
            Self::set_roles(cluster, chunk, RolePosition::without_side(side))
                .into_iter()
                .collect();
        let hosts = cluster.chunks[chunk].hosts.clone();
        let replacement = alloc::replacement(&free, &links, &hosts[1 - side], &hosts[side]);
        if let Some(new) = &replacement {
            let resource = self.store.all_proxies[new].clone();
            let cluster = self.cluster_mut(&name)?;
            let chunk = &mut cluster.chunks[chunk];
            chunk.proxy_addresses[side] = resource.proxy_address.clone();
            chunk.hosts[side] = resource.host.clone();
            chunk.node_addresses[2 * side] = resource.node_addresses[0].clone();
            chunk.node_addresses[2 * side + 1] = resource.node_addresses[1].clone();
            self.store.all_proxies.get_mut(new).expect("exists").cluster = Some(name.clone());
            self.store
                .all_proxies
                .get_mut(address)
                .expect("exists")
                .cluster = None;
            self.store.failed_proxies.insert(address.to_string());
        }
        if replacement.is_some() || !moved.is_empty() {
            let epoch = self.stamp(&name);
            Self::retag_migrations(self.cluster_mut(&name)?, &moved, epoch);
        }
        Ok(match replacement {
            Some(new) => Failover::Replaced(new),
            None => Failover::NoReplacement,
        })
    }

    /// Hosts whose loss could not be repaired: failing every proxy on one of them leaves some
    /// chunk without a replacement. Empty means every single host may fail.
    pub fn hosts_cannot_fail(&self, now: i64) -> Vec<String> {
        let hosts: BTreeSet<&String> = self.store.all_proxies.values().map(|p| &p.host).collect();
        hosts
            .into_iter()
            .filter(|host| {
                let mut trial = self.clone();
                let on_host: Vec<String> = self
                    .store
                    .all_proxies
                    .values()
                    .filter(|p| &&p.host == host)
                    .map(|p| p.proxy_address.clone())
                    .collect();
                trial.store.failed_proxies.extend(on_host.iter().cloned());
                on_host.iter().any(|address| {
                    trial.store.all_proxies[address].cluster.is_some()
                        && matches!(trial.failover(now, address), Ok(Failover::NoReplacement))
                })
            })
            .cloned()
            .collect()
    }
}
