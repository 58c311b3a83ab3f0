//! Which column family holds which of the application's keys.
//!
//! The application names some keyspaces as histories: written at their end, in key order,
//! and dropped from their start (keel's watch events and request records). They live in a
//! column family of their own, the other keys in the data family. In one family, every file
//! RocksDB flushed spanned the histories' key ranges and the data's, so each compaction of new
//! files into the base level rewrote all the data in between, cold keys included, and writes
//! grew dearer as the store filled: after ~600 000 puts, flushes and compactions took 21 % of a
//! node's CPU against 11-13 % on a fresh store. Apart, compacting a history rewrites only that
//! history, and new data keys that sort after the old ones move down the levels without being
//! rewritten. Measured over five 8 s put (64) runs of new keys on one 3-node
//! cluster, two clusters each way: compactions took 5.2-7.7 s of CPU against 13.5-15.9 s, and
//! read 13.0-21.5 M records against 32.3-33.7 M.
//!
//! Counters (a store-wide revision that every put bumps) live in the history family too. In
//! the data family, the one key every flush carried made each file span the family's whole
//! range, so new keys that sort after the old ones were rewritten by every compaction all the
//! same; the history family's files span its whole range anyway (each holds new entries at one
//! end and the deletions of expired ones at the other). Measured on a 3-node cluster, 300 000
//! put (64) writes after 150 000, together with the history family's level-0 trigger (see
//! `family_options`), 2 alternating pairs: compactions took 4.9-6.5 against 10.6-10.9 µs of
//! the nodes' CPU per write, and the writes ran 6-9 % faster.
//!
//! Routing is by prefix, so a key's family never depends on anything but the key, on every
//! node alike. A range that spans a history and other keys is read from both families and
//! merged, so callers see one ordered keyspace.

use std::sync::Arc;

use rocksdb::ColumnFamily;
use rocksdb::IteratorMode;
use rocksdb::ReadOptions;
use rocksdb::DB;

use crate::cf;
use crate::txn::within_bytes;
use crate::txn::ByteBudget;
use crate::Error;
use crate::Pair;

/// The smallest byte string greater than every string starting with `prefix`: the end of the
/// prefix's range.
pub fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < u8::MAX {
            end.push(last + 1);
            return end;
        }
    }
    vec![u8::MAX; 64]
}

/// The prefixes of the history family's keys (histories and counters); see the module
/// documentation.
#[derive(Clone, Debug, Default)]
pub(crate) struct Layout {
    /// Each prefix's key range, `[prefix, prefix_end(prefix))`.
    ranges: Arc<[(Vec<u8>, Vec<u8>)]>,
}

impl Layout {
    pub(crate) fn new(history_family_prefixes: Vec<Vec<u8>>) -> Self {
        let ranges = history_family_prefixes
            .into_iter()
            .map(|prefix| {
                let end = prefix_end(&prefix);
                (prefix, end)
            })
            .collect();
        Self { ranges }
    }

    pub(crate) fn in_history_family(&self, key: &[u8]) -> bool {
        self.ranges
            .iter()
            .any(|(prefix, _)| key.starts_with(prefix))
    }

    /// The key ranges of the history family.
    pub(crate) fn history_family_ranges(&self) -> impl Iterator<Item = (&[u8], &[u8])> {
        self.ranges
            .iter()
            .map(|(prefix, end)| (prefix.as_slice(), end.as_slice()))
    }

    /// Whether `[from, to)` may hold keys of the data family, and of the history family.
    fn spans(&self, from: &[u8], to: &[u8]) -> (bool, bool) {
        let within_one_range = self
            .history_family_ranges()
            .any(|(prefix, end)| prefix <= from && to <= end);
        let meets_a_range = self
            .history_family_ranges()
            .any(|(prefix, end)| prefix < to && from < end);
        (!within_one_range, meets_a_range)
    }
}

/// The handles of the application's two families, looked up once per batch or read.
pub(crate) struct Families<'a> {
    layout: &'a Layout,
    data: &'a ColumnFamily,
    history: &'a ColumnFamily,
}

impl<'a> Families<'a> {
    pub(crate) fn new(db: &'a DB, layout: &'a Layout) -> Self {
        Self {
            layout,
            data: db.cf_handle(cf::SM_DATA).expect("state column family"),
            history: db.cf_handle(cf::SM_HISTORY).expect("history column family"),
        }
    }

    /// Whether `key` is held by the history family.
    pub(crate) fn is_history(&self, key: &[u8]) -> bool {
        self.layout.in_history_family(key)
    }

    /// The family that holds `key`.
    pub(crate) fn of(&self, key: &[u8]) -> &'a ColumnFamily {
        if self.is_history(key) {
            self.history
        } else {
            self.data
        }
    }

    /// The families that may hold keys in `[from, to)`.
    pub(crate) fn of_range(&self, from: &[u8], to: &[u8]) -> Vec<&'a ColumnFamily> {
        let (data, history) = self.layout.spans(from, to);
        [(data, self.data), (history, self.history)]
            .into_iter()
            .filter_map(|(spanned, family)| spanned.then_some(family))
            .collect()
    }

    /// Pairs with `from <= key < to` in key order, at most `limit` and up to the one that
    /// crosses `bytes`, from every family the range spans.
    pub(crate) fn scan(
        &self,
        db: &DB,
        from: &[u8],
        to: &[u8],
        limit: usize,
        bytes: usize,
    ) -> Result<Vec<Pair>, Error> {
        let mut pairs = Vec::new();
        let families = self.of_range(from, to);
        for family in &families {
            pairs.extend(scan_family(db, family, from, to, limit, bytes)?);
        }
        if families.len() > 1 {
            pairs.sort_unstable_by(|a, b| a.0.cmp(&b.0));
            pairs.truncate(limit);
            pairs = within_bytes(pairs, bytes);
        }
        Ok(pairs)
    }
}

fn scan_family(
    db: &DB,
    family: &ColumnFamily,
    from: &[u8],
    to: &[u8],
    limit: usize,
    bytes: usize,
) -> Result<Vec<Pair>, Error> {
    let mut opts = ReadOptions::default();
    opts.set_iterate_upper_bound(to.to_vec());
    let iter = db.iterator_cf_opt(
        family,
        opts,
        IteratorMode::From(from, rocksdb::Direction::Forward),
    );
    let mut out = Vec::new();
    let mut budget = ByteBudget::new(bytes);
    for item in iter.take(limit) {
        let (key, value) = item?;
        if !budget.takes(key.len() + value.len()) {
            break;
        }
        out.push((key.into_vec(), value.into_vec()));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_end_is_the_end_of_the_prefix_range() {
        assert_eq!(prefix_end(b"kv/a"), b"kv/b".to_vec());
        assert_eq!(prefix_end(b"kv/a\xff"), b"kv/b".to_vec());
        assert_eq!(prefix_end(b"kv/"), b"kv0".to_vec());
    }

    #[test]
    fn a_range_spans_the_families_its_keys_can_be_in() {
        let layout = Layout::new(vec![b"h/".to_vec()]);
        assert!(layout.in_history_family(b"h/1"));
        assert!(!layout.in_history_family(b"h"));
        assert_eq!(layout.spans(b"h/", b"h0"), (false, true));
        assert_eq!(layout.spans(b"h/5", b"h/9"), (false, true));
        assert_eq!(layout.spans(b"a", b"b"), (true, false));
        assert_eq!(layout.spans(b"h0", b"z"), (true, false));
        assert_eq!(layout.spans(b"a", b"h/"), (true, false));
        assert_eq!(layout.spans(b"a", b"h/1"), (true, true));
        assert_eq!(layout.spans(b"h/5", b"z"), (true, true));
        assert_eq!(Layout::default().spans(b"", b"\xff"), (true, false));
    }
}
