//! The invariants of a broker's store, checked on every metadata restore and by the tests
//! after every operation.

use std::collections::BTreeSet;

use super::model::MetaStore;
use super::model::MigrationMetaStore;
use super::model::Part;
use super::slots;
use super::slots::RangeList;
use super::slots::SlotRangeTag;
use super::state::valid_cluster_name;
use super::state::valid_registration;

/// Checks what a dump from a client must hold beyond [`check_consistency`]: the rules the
/// API applies to new proxies hold for the dump's (see [`valid_registration`]), and stable
/// slots carry no migration. These are checked before the dump is proposed, not when it is
/// applied, so that a restore an earlier build applied applies alike.
pub fn check_dump(store: &MetaStore) -> Result<(), String> {
    for (address, proxy) in &store.all_proxies {
        if !valid_registration(address, &proxy.node_addresses, Some(&proxy.host)) {
            return Err(format!(
                "proxy {address:?} has an invalid address, host or Redis nodes"
            ));
        }
    }
    for (name, cluster) in &store.clusters {
        let tagged = cluster
            .chunks
            .iter()
            .flat_map(|chunk| chunk.stable_slots.iter().flatten())
            .any(|slots| slots.tag != SlotRangeTag::None);
        if tagged {
            return Err(format!(
                "cluster {name} has stable slots tagged as migrating or importing; tasks belong in migrating_slots"
            ));
        }
    }
    Ok(())
}

/// Checks that a store is internally consistent: every cluster's proxies exist and belong to
/// it, each proxy is in at most one chunk, failed and reported proxies are registered and free,
/// and every cluster's slots
/// (owned and in flight) cover the slot space exactly once with well-formed migrations.
pub fn check_consistency(store: &MetaStore) -> Result<(), String> {
    let mut seen = BTreeSet::new();
    for (name, cluster) in &store.clusters {
        if name != &cluster.name || !valid_cluster_name(name) {
            return Err(format!("cluster {name:?} has the name {:?}", cluster.name));
        }
        let mut owned = RangeList::default();
        let mut total = 0;
        // Every task is stored twice, migrating at its source and importing at its target.
        let mut halves: [Vec<(&RangeList, &MigrationMetaStore)>; 2] = [Vec::new(), Vec::new()];
        for (index, chunk) in cluster.chunks.iter().enumerate() {
            for (side, address) in chunk.proxy_addresses.iter().enumerate() {
                let proxy = store.all_proxies.get(address).ok_or_else(|| {
                    format!("cluster {name} uses proxy {address}, which is not registered")
                })?;
                if proxy.cluster.as_deref() != Some(name.as_str()) {
                    return Err(format!(
                        "proxy {address} is in cluster {name} but says {:?}",
                        proxy.cluster
                    ));
                }
                if proxy.host != chunk.hosts[side]
                    || proxy.node_addresses[..] != chunk.node_addresses[2 * side..2 * side + 2]
                {
                    return Err(format!(
                        "chunk {index} of {name} disagrees with proxy {address}"
                    ));
                }
                if !seen.insert(address.clone()) {
                    return Err(format!("proxy {address} is in two chunks"));
                }
            }
            for part in 0..2 {
                let lists = chunk.stable_slots[part]
                    .iter()
                    .map(|s| &s.range_list)
                    .chain(chunk.migrating_slots[part].iter().map(|t| &t.range_list));
                if lists
                    .into_iter()
                    .any(|l| l.is_empty() || !l.is_well_formed())
                {
                    return Err(format!("chunk {index} of {name} has malformed slot ranges"));
                }
                if let Some(stable) = &chunk.stable_slots[part] {
                    total += stable.range_list.slot_count();
                    owned.merge(&stable.range_list);
                }
                for task in &chunk.migrating_slots[part] {
                    let ends = [task.meta.src(), task.meta.dst()];
                    let here = Part { chunk: index, part };
                    if ends
                        .iter()
                        .any(|end| end.chunk >= cluster.chunks.len() || end.part > 1)
                        || ends[usize::from(!task.is_migrating)] != here
                    {
                        return Err(format!("a migration of {name} has an invalid end"));
                    }
                    if task.is_migrating {
                        total += task.range_list.slot_count();
                        owned.merge(&task.range_list);
                    }
                    halves[usize::from(task.is_migrating)].push((&task.range_list, &task.meta));
                }
            }
        }
        let [mut importing, mut migrating] = halves;
        importing.sort();
        migrating.sort();
        if importing != migrating {
            return Err(format!(
                "a migration of {name} is not stored at both its source and its target"
            ));
        }
        let full =
            cluster.chunks.is_empty() || owned == RangeList::single(0, slots::SLOT_COUNT - 1);
        if !full || (!cluster.chunks.is_empty() && total != slots::SLOT_COUNT) {
            return Err(format!(
                "the slots of {name} do not cover 0-16383 exactly once"
            ));
        }
    }
    for (address, proxy) in &store.all_proxies {
        if address != &proxy.proxy_address {
            return Err(format!(
                "proxy {address} is stored as {}",
                proxy.proxy_address
            ));
        }
        if let Some(name) = &proxy.cluster {
            if !seen.contains(address) {
                return Err(format!(
                    "proxy {address} says cluster {name}, which does not hold it"
                ));
            }
        }
    }
    if let Some(failed) = store.failed_proxies.iter().find(|a| seen.contains(*a)) {
        return Err(format!("failed proxy {failed} is still in a cluster"));
    }
    // Failures are stored with the proxy's record: one without a record would not survive a
    // restart, and the nodes would disagree.
    let unregistered = store
        .failed_proxies
        .iter()
        .chain(store.failures.keys())
        .find(|a| !store.all_proxies.contains_key(*a));
    if let Some(address) = unregistered {
        return Err(format!(
            "proxy {address} is failed or reported, but not registered"
        ));
    }
    Ok(())
}
