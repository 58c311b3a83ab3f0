//! The newest log entries, kept in memory for the readers that want them right after they
//! were appended.
//!
//! Every entry is read back soon after its append: by the state machine when it applies it,
//! and on the leader once more per follower, when it is replicated. Served from RocksDB, each
//! read was an iterator seek plus a bincode decode of every entry, 5-8 % of a node's CPU under
//! a write load; a clone from here costs a copy of the command.
//!
//! The cache holds one run of consecutive entries, each as RocksDB holds it: an append that
//! does not continue the run starts a new one, a truncation cuts it back, a purge drops its
//! front. Bounded by entry count and encoded bytes, it forgets its oldest entries first; a
//! read the run does not cover whole goes to RocksDB.

use std::collections::VecDeque;

/// Entries kept at most.
const MAX_ENTRIES: usize = 4096;

/// Encoded bytes kept at most (a single entry may be up to ~1 MiB).
const MAX_BYTES: usize = 16 << 20;

/// See the module documentation.
pub(crate) struct EntryCache<E> {
    /// Log index of `entries[0]`.
    first: u64,
    /// Each entry with its encoded size.
    entries: VecDeque<(E, usize)>,
    bytes: usize,
}

impl<E> EntryCache<E> {
    pub(crate) fn new() -> Self {
        Self {
            first: 0,
            entries: VecDeque::new(),
            bytes: 0,
        }
    }

    /// One past the last cached index.
    fn end(&self) -> u64 {
        self.first + self.entries.len() as u64
    }

    /// Records an entry just written at `index`, `size` bytes encoded.
    pub(crate) fn appended(&mut self, index: u64, entry: E, size: usize) {
        if index != self.end() || self.entries.is_empty() {
            self.entries.clear();
            self.bytes = 0;
            self.first = index;
        }
        self.entries.push_back((entry, size));
        self.bytes += size;
        while self.entries.len() > MAX_ENTRIES || (self.bytes > MAX_BYTES && self.entries.len() > 1)
        {
            self.drop_front();
        }
    }

    /// Forgets the entries from `index` on.
    pub(crate) fn truncated_from(&mut self, index: u64) {
        while self.end() > index.max(self.first) {
            let (_, size) = self.entries.pop_back().expect("the run is not empty");
            self.bytes -= size;
        }
    }

    /// Forgets the entries up to and including `index`.
    pub(crate) fn purged_up_to(&mut self, index: u64) {
        while !self.entries.is_empty() && self.first <= index {
            self.drop_front();
        }
    }

    fn drop_front(&mut self) {
        let (_, size) = self.entries.pop_front().expect("the run is not empty");
        self.bytes -= size;
        self.first += 1;
    }
}

impl<E: Clone> EntryCache<E> {
    /// The entries `start..end`, if the run holds every one of them. Open-ended and empty
    /// ranges are left to RocksDB, which alone knows for sure where the log ends.
    pub(crate) fn get(&self, start: u64, end: u64) -> Option<Vec<E>> {
        if start < self.first || end > self.end() || start >= end {
            return None;
        }
        let from = (start - self.first) as usize;
        let to = (end - self.first) as usize;
        Some(
            self.entries
                .range(from..to)
                .map(|(e, _)| e.clone())
                .collect(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A cache holding `range`, one byte per entry, each entry equal to its index.
    fn holding(range: std::ops::Range<u64>) -> EntryCache<u64> {
        let mut cache = EntryCache::new();
        for index in range {
            cache.appended(index, index, 1);
        }
        cache
    }

    #[test]
    fn reads_are_served_only_when_the_run_covers_them() {
        let cache = holding(10..20);
        // (start, end, expected)
        let cases: &[(u64, u64, Option<Vec<u64>>)] = &[
            (10, 12, Some(vec![10, 11])),
            (15, 20, Some((15..20).collect())),
            (19, 20, Some(vec![19])),
            (18, 21, None),
            (20, 21, None),
            (9, 12, None),
            (12, 12, None),
        ];
        for (start, end, expected) in cases {
            assert_eq!(&cache.get(*start, *end), expected, "{start}..{end}");
        }
        assert_eq!(EntryCache::<u64>::new().get(0, 1), None);
    }

    #[test]
    fn an_append_that_skips_ahead_starts_a_new_run() {
        let mut cache = holding(10..20);
        cache.appended(30, 30, 1);
        assert_eq!(cache.get(19, 20), None);
        assert_eq!(cache.get(30, 31), Some(vec![30]));
        // An append over an entry the run holds (openraft truncates first, but if not) also
        // starts a new run, so the entries after it are read from RocksDB.
        cache.appended(30, 130, 1);
        assert_eq!(cache.get(30, 31), Some(vec![130]));
    }

    #[test]
    fn truncation_cuts_the_run_and_the_next_append_continues_it() {
        let mut cache = holding(10..20);
        cache.truncated_from(15);
        assert_eq!(cache.get(10, 15), Some((10..15).collect()));
        assert_eq!(cache.get(10, 16), None);
        cache.appended(15, 115, 1);
        assert_eq!(cache.get(14, 16), Some(vec![14, 115]));
        cache.truncated_from(5);
        assert_eq!(cache.get(10, 11), None);
    }

    #[test]
    fn purge_drops_the_front() {
        let mut cache = holding(10..20);
        cache.purged_up_to(14);
        assert_eq!(cache.get(14, 15), None);
        assert_eq!(cache.get(15, 17), Some(vec![15, 16]));
        cache.purged_up_to(50);
        assert_eq!(cache.get(19, 20), None);
    }

    #[test]
    fn the_oldest_entries_go_first_when_full() {
        let cache = holding(0..MAX_ENTRIES as u64 + 10);
        assert_eq!(cache.get(9, 10), None);
        assert_eq!(cache.get(10, 11), Some(vec![10]));

        let mut cache = EntryCache::new();
        cache.appended(1, 1, MAX_BYTES / 2);
        cache.appended(2, 2, MAX_BYTES / 2);
        cache.appended(3, 3, 1);
        assert_eq!(cache.get(1, 2), None);
        assert_eq!(cache.get(2, 4), Some(vec![2, 3]));
        // A single entry larger than the budget is still kept, so the next read is served.
        cache.appended(4, 4, 2 * MAX_BYTES);
        assert_eq!(cache.get(4, 5), Some(vec![4]));
    }
}
