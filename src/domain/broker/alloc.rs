//! Host-aware choice of proxies: which free proxies form new chunks, and which one replaces a
//! failed proxy.
//!
//! Rules: the two proxies of a chunk are never on one host (so a host failure leaves every
//! chunk a surviving half), and chunks spread over host *pairs*, counting the links every
//! existing chunk already makes between two hosts, so that one host's failure moves masters
//! onto many hosts rather than one. Every choice breaks ties by name: the state machine must
//! choose the same proxies on every node (undermoon iterates hash maps here).

use std::collections::BTreeMap;

use super::model::MetaStore;

/// Chunks already linking each pair of hosts, keyed by the pair in name order.
pub struct Links(BTreeMap<(String, String), usize>);

fn pair(a: &str, b: &str) -> (String, String) {
    if a <= b {
        (a.to_string(), b.to_string())
    } else {
        (b.to_string(), a.to_string())
    }
}

impl Links {
    pub fn of(store: &MetaStore) -> Self {
        let mut links = BTreeMap::new();
        for chunk in store.clusters.values().flat_map(|c| c.chunks.iter()) {
            *links
                .entry(pair(&chunk.hosts[0], &chunk.hosts[1]))
                .or_insert(0) += 1;
        }
        Self(links)
    }

    fn count(&self, a: &str, b: &str) -> usize {
        self.0.get(&pair(a, b)).copied().unwrap_or(0)
    }

    fn add(&mut self, a: &str, b: &str) {
        *self.0.entry(pair(a, b)).or_insert(0) += 1;
    }
}

/// Free proxies by host, each host's in address order.
pub type FreeByHost = BTreeMap<String, Vec<String>>;

/// Picks `chunks` pairs of free proxies: each time the host with the most free proxies
/// (which keeps the rest pairable) with the peer host it is least linked to, preferring then
/// the peer with more free proxies. `None` when the free proxies cannot form that many chunks.
pub fn allocate_chunks(
    mut free: FreeByHost,
    mut links: Links,
    chunks: usize,
) -> Option<Vec<[String; 2]>> {
    if free.values().map(Vec::len).sum::<usize>() < 2 * chunks {
        return None;
    }
    let mut pairs = Vec::with_capacity(chunks);
    for _ in 0..chunks {
        let first_host = free
            .iter()
            .filter(|(_, proxies)| !proxies.is_empty())
            .max_by(|(a, pa), (b, pb)| pa.len().cmp(&pb.len()).then_with(|| b.cmp(a)))?
            .0
            .clone();
        let second_host = free
            .iter()
            .filter(|(host, proxies)| **host != first_host && !proxies.is_empty())
            .min_by(|(a, pa), (b, pb)| {
                links
                    .count(&first_host, a)
                    .cmp(&links.count(&first_host, b))
                    .then_with(|| pb.len().cmp(&pa.len()))
                    .then_with(|| a.cmp(b))
            })?
            .0
            .clone();
        let first = free.get_mut(&first_host)?.remove(0);
        let second = free.get_mut(&second_host)?.remove(0);
        links.add(&first_host, &second_host);
        pairs.push([first, second]);
    }
    Some(pairs)
}

/// Picks the free proxy that takes a failed proxy's place next to `surviving_host`: never on
/// that host, preferably not on the failed proxy's host (it may be down as a whole), then on
/// the host least linked to the surviving one, then on the host with most free proxies.
pub fn replacement(
    free: &FreeByHost,
    links: &Links,
    surviving_host: &str,
    failed_host: &str,
) -> Option<String> {
    free.iter()
        .filter(|(host, proxies)| *host != surviving_host && !proxies.is_empty())
        .min_by(|(a, pa), (b, pb)| {
            (*a == failed_host)
                .cmp(&(*b == failed_host))
                .then_with(|| {
                    links
                        .count(surviving_host, a)
                        .cmp(&links.count(surviving_host, b))
                })
                .then_with(|| pb.len().cmp(&pa.len()))
                .then_with(|| a.cmp(b))
        })
        .map(|(_, proxies)| proxies[0].clone())
}
