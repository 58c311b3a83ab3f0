//! Key-value access to the state machine's data for the domain.
//!
//! [`Txn`] is what `apply` writes through: it buffers the changes of a whole batch of entries
//! in memory (so a later entry sees an earlier one's writes) and hands them to the state store,
//! which commits them in one RocksDB write together with `last_applied`. [`Reader`] is the
//! read-only view the API serves reads from. Both implement [`KvRead`], so a query written once
//! runs against either. A [`Txn`] can also delete a whole key range at once, which RocksDB
//! stores as one range tombstone instead of a deletion per key, and read the keys a batch will
//! ask for ahead, in one lookup ([`Txn::prefetch`]).
//!
//! Both see the application's keys as one keyspace, though they live in two column families
//! (see [`crate::layout`]).
//!
//! A snapshot install replaces the data in several writes (see the state store), so between
//! them the store holds part of the old state and part of the new. [`Installs`] lets a
//! [`Reader`] tell that its read overlapped an install and refuse it with
//! [`Error::Installing`] rather than answer from a state that never existed. Reads never
//! wait: they run on the API's async tasks, and an install can take seconds.

use std::collections::BTreeMap;
use std::collections::HashMap;
use std::ops::Bound;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use rocksdb::WriteBatch;
use rocksdb::DB;

use crate::layout::Families;
use crate::layout::Layout;
use crate::Error;

/// A key and its value, as returned by scans.
pub type Pair = (Vec<u8>, Vec<u8>);

/// Reads of the state machine's data.
pub trait KvRead {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, Error>;

    /// Pairs with `from <= key < to` in key order, at most `limit` of them.
    fn scan(&self, from: &[u8], to: &[u8], limit: usize) -> Result<Vec<Pair>, Error> {
        self.scan_up_to(from, to, limit, usize::MAX)
    }

    /// The same, stopping early once the pairs hold `bytes` of keys and values (never before
    /// the first), so that a reader of large values holds a bounded amount of them at once.
    fn scan_up_to(
        &self,
        from: &[u8],
        to: &[u8],
        limit: usize,
        bytes: usize,
    ) -> Result<Vec<Pair>, Error>;
}

/// What a scan with a byte budget takes: a pair while the pairs before it hold less than the
/// budget, so the one that crosses it too, and always the first.
pub(crate) struct ByteBudget {
    bytes: usize,
    held: Option<usize>,
}

impl ByteBudget {
    pub(crate) fn new(bytes: usize) -> Self {
        Self { bytes, held: None }
    }

    /// Whether a pair of `len` bytes is taken (and counted).
    pub(crate) fn takes(&mut self, len: usize) -> bool {
        let held = self.held.unwrap_or(0);
        let taken = self.held.is_none() || held < self.bytes;
        if taken {
            self.held = Some(held.saturating_add(len));
        }
        taken
    }
}

/// The leading `pairs` a budget of `bytes` takes.
pub(crate) fn within_bytes(pairs: impl IntoIterator<Item = Pair>, bytes: usize) -> Vec<Pair> {
    let mut budget = ByteBudget::new(bytes);
    pairs
        .into_iter()
        .take_while(|(key, value)| budget.takes(key.len() + value.len()))
        .collect()
}

/// The write side of one apply batch; see the module documentation.
pub struct Txn<'a> {
    db: &'a DB,
    families: Families<'a>,
    overlay: BTreeMap<Vec<u8>, Option<Vec<u8>>>,
    /// Ranges `[from, to)` deleted in this batch. The overlay holds only what was written
    /// after them, so it takes precedence over them.
    deleted_ranges: Vec<(Vec<u8>, Vec<u8>)>,
    /// Values read ahead by [`Txn::prefetch`], as the store held them before this batch: the
    /// overlay and the deleted ranges take precedence over them.
    prefetched: HashMap<Vec<u8>, Option<Vec<u8>>>,
}

impl<'a> Txn<'a> {
    pub(crate) fn new(db: &'a DB, layout: &'a Layout) -> Self {
        Self {
            db,
            families: Families::new(db, layout),
            overlay: BTreeMap::new(),
            deleted_ranges: Vec::new(),
            prefetched: HashMap::new(),
        }
    }

    /// Reads `keys` from the store in one batched lookup per column family, for the `get`s of
    /// this batch that will ask for them. A key the batch already wrote or deleted is not read.
    ///
    /// One RocksDB `MultiGet` of a batch's keys visits each memtable and file once for all of
    /// them, where a `get` per key visits each once per key; for a write of a new key that
    /// lookup finds nothing, and finding nothing is what a Bloom filter probe per place costs.
    pub fn prefetch(&mut self, keys: Vec<Vec<u8>>) -> Result<(), Error> {
        let (history, data): (Vec<_>, Vec<_>) = keys
            .into_iter()
            .filter(|key| {
                !self.overlay.contains_key(key)
                    && !self.in_deleted_range(key)
                    && !self.prefetched.contains_key(key)
            })
            .partition(|key| self.families.is_history(key));
        for keys in [data, history] {
            let Some(first) = keys.first() else {
                continue;
            };
            let values = self
                .db
                .batched_multi_get_cf(self.families.of(first), &keys, false);
            for (key, value) in keys.iter().zip(values) {
                let value = value?.map(|slice| slice.to_vec());
                self.prefetched.insert(key.clone(), value);
            }
        }
        Ok(())
    }

    pub fn put(&mut self, key: Vec<u8>, value: Vec<u8>) {
        self.overlay.insert(key, Some(value));
    }

    pub fn delete(&mut self, key: Vec<u8>) {
        self.overlay.insert(key, None);
    }

    /// Deletes every key with `from <= key < to`.
    pub fn delete_range(&mut self, from: Vec<u8>, to: Vec<u8>) {
        if from >= to {
            return;
        }
        let written: Vec<Vec<u8>> = self
            .overlay
            .range::<[u8], _>((Bound::Included(&from[..]), Bound::Excluded(&to[..])))
            .map(|(key, _)| key.clone())
            .collect();
        for key in written {
            self.overlay.remove(&key);
        }
        self.deleted_ranges.push((from, to));
    }

    fn in_deleted_range(&self, key: &[u8]) -> bool {
        self.deleted_ranges
            .iter()
            .any(|(from, to)| from.as_slice() <= key && key < to.as_slice())
    }

    /// Adds the buffered changes to `batch`: the range deletions first, so that what the
    /// overlay wrote after them lands on top.
    pub(crate) fn write_into(self, batch: &mut WriteBatch) {
        for (from, to) in &self.deleted_ranges {
            for family in self.families.of_range(from, to) {
                batch.delete_range_cf(family, from, to);
            }
        }
        for (key, value) in self.overlay {
            let family = self.families.of(&key);
            match value {
                Some(value) => batch.put_cf(family, key, value),
                None => batch.delete_cf(family, key),
            }
        }
    }
}

impl KvRead for Txn<'_> {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, Error> {
        match self.overlay.get(key) {
            Some(value) => Ok(value.clone()),
            None if self.in_deleted_range(key) => Ok(None),
            None => match self.prefetched.get(key) {
                Some(value) => Ok(value.clone()),
                None => Ok(self.db.get_cf(self.families.of(key), key)?),
            },
        }
    }

    fn scan_up_to(
        &self,
        from: &[u8],
        to: &[u8],
        limit: usize,
        bytes: usize,
    ) -> Result<Vec<Pair>, Error> {
        // Read enough from RocksDB that deletions in the overlay cannot starve the result.
        let pending = self
            .overlay
            .range::<[u8], _>((Bound::Included(from), Bound::Excluded(to)));
        let deletions = pending.clone().filter(|(_, v)| v.is_none()).count();
        let overlaps_deleted_range = self
            .deleted_ranges
            .iter()
            .any(|(start, end)| start.as_slice() < to && from < end.as_slice());
        let read_limit = if overlaps_deleted_range {
            usize::MAX
        } else {
            limit.saturating_add(deletions)
        };
        let stored = self
            .families
            .scan(self.db, from, to, read_limit, usize::MAX)?;

        let mut merged: BTreeMap<Vec<u8>, Vec<u8>> = stored
            .into_iter()
            .filter(|(key, _)| !self.in_deleted_range(key))
            .collect();
        for (key, value) in pending {
            match value {
                Some(value) => merged.insert(key.clone(), value.clone()),
                None => merged.remove(key),
            };
        }
        Ok(within_bytes(merged.into_iter().take(limit), bytes))
    }
}

/// A sequence lock over snapshot installs: the count is odd while an install is loading data.
#[derive(Clone, Default)]
pub(crate) struct Installs(Arc<InstallState>);

#[derive(Default)]
struct InstallState {
    count: AtomicU64,
    failed: AtomicBool,
}

impl Installs {
    pub(crate) fn begin(&self) {
        self.0.count.fetch_add(1, Ordering::SeqCst);
    }

    pub(crate) fn end(&self) {
        self.0.count.fetch_add(1, Ordering::SeqCst);
    }

    /// Marks the install that began as failed: it never ends, so reads stay refused rather
    /// than see the partial state. openraft stops on the storage error, and a restart of the
    /// node finishes the install.
    pub(crate) fn fail(&self) {
        self.0.failed.store(true, Ordering::SeqCst);
    }

    pub(crate) fn failed(&self) -> bool {
        self.0.failed.load(Ordering::SeqCst)
    }

    /// Installs finished since the store was opened.
    pub(crate) fn completed(&self) -> u64 {
        self.0.count.load(Ordering::SeqCst) / 2
    }

    /// Runs `read`, or fails with [`Error::Installing`] if an install was loading data at any
    /// moment of it.
    pub(crate) fn guard<T>(&self, read: impl FnOnce() -> Result<T, Error>) -> Result<T, Error> {
        let before = self.0.count.load(Ordering::SeqCst);
        if before % 2 == 1 {
            return Err(Error::Installing);
        }
        let value = read()?;
        if self.0.count.load(Ordering::SeqCst) != before {
            return Err(Error::Installing);
        }
        Ok(value)
    }
}

/// A read-only view of the latest applied state.
#[derive(Clone)]
pub struct Reader {
    db: Arc<DB>,
    layout: Layout,
    installs: Installs,
}

impl Reader {
    pub(crate) fn new(db: Arc<DB>, layout: Layout, installs: Installs) -> Self {
        Self {
            db,
            layout,
            installs,
        }
    }

    fn families(&self) -> Families<'_> {
        Families::new(&self.db, &self.layout)
    }
}

impl KvRead for Reader {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, Error> {
        self.installs
            .guard(|| Ok(self.db.get_cf(self.families().of(key), key)?))
    }

    fn scan_up_to(
        &self,
        from: &[u8],
        to: &[u8],
        limit: usize,
        bytes: usize,
    ) -> Result<Vec<Pair>, Error> {
        self.installs
            .guard(|| self.families().scan(&self.db, from, to, limit, bytes))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(pairs: Vec<Pair>) -> Vec<String> {
        pairs
            .into_iter()
            .map(|(key, _)| String::from_utf8(key).unwrap())
            .collect()
    }

    #[test]
    fn a_range_deletion_hides_stored_and_buffered_keys_but_not_later_writes() {
        let dir = tempfile::tempdir().unwrap();
        let store = crate::Store::open(dir.path()).unwrap();
        let mut batch = WriteBatch::default();
        // "b" keys are a history, so the ranges below span both families.
        let layout = Layout::new(vec![b"b".to_vec()]);
        let mut stored = Txn::new(&store.state, &layout);
        for key in ["a", "b1", "b2", "c"] {
            stored.put(key.into(), b"old".to_vec());
        }
        stored.write_into(&mut batch);
        store.state.write(batch).unwrap();

        let mut txn = Txn::new(&store.state, &layout);
        txn.put(b"b3".to_vec(), b"buffered".to_vec());
        txn.delete_range(b"b".to_vec(), b"c".to_vec());
        txn.put(b"b2".to_vec(), b"new".to_vec());
        assert_eq!(txn.get(b"b1").unwrap(), None);
        assert_eq!(txn.get(b"b3").unwrap(), None);
        assert_eq!(txn.get(b"b2").unwrap(), Some(b"new".to_vec()));
        assert_eq!(txn.get(b"c").unwrap(), Some(b"old".to_vec()));
        assert_eq!(keys(txn.scan(b"a", b"z", 3).unwrap()), ["a", "b2", "c"]);
        assert_eq!(keys(txn.scan_up_to(b"a", b"z", 3, 0).unwrap()), ["a"]);

        let mut batch = WriteBatch::default();
        txn.write_into(&mut batch);
        store.state.write(batch).unwrap();
        let reader = Reader::new(store.state.clone(), layout, Installs::default());
        assert_eq!(keys(reader.scan(b"a", b"z", 10).unwrap()), ["a", "b2", "c"]);
        // A byte budget stops a scan at the pair that crosses it ("a" and its value hold 4
        // bytes), and never before the first.
        assert_eq!(keys(reader.scan_up_to(b"a", b"z", 10, 0).unwrap()), ["a"]);
        assert_eq!(keys(reader.scan_up_to(b"a", b"z", 10, 4).unwrap()), ["a"]);
        assert_eq!(
            keys(reader.scan_up_to(b"a", b"z", 10, 5).unwrap()),
            ["a", "b2"]
        );
        assert_eq!(reader.get(b"b2").unwrap(), Some(b"new".to_vec()));

        let family = |name| store.state.cf_handle(name).unwrap();
        let stored_in = |name| {
            let pairs = store
                .state
                .iterator_cf(family(name), rocksdb::IteratorMode::Start);
            keys(
                pairs
                    .map(|pair| pair.unwrap())
                    .map(|(k, v)| (k.into_vec(), v.into_vec()))
                    .collect(),
            )
        };
        assert_eq!(stored_in(crate::cf::SM_DATA), ["a", "c"]);
        assert_eq!(stored_in(crate::cf::SM_HISTORY), ["b2"]);
    }

    /// A key as stored, what the batch does to it before and after prefetching it, and what
    /// `get` answers then.
    struct PrefetchCase {
        key: &'static str,
        stored: bool,
        before: Option<fn(&mut Txn<'_>, &[u8])>,
        after: Option<fn(&mut Txn<'_>, &[u8])>,
        expected: Option<&'static str>,
    }

    /// Every key is written behind the batch's back after the prefetch, so an answer of
    /// "stored", or of none for a key not stored, came from the prefetch.
    #[test]
    fn prefetched_keys_answer_gets_unless_the_batch_changed_them() {
        fn put(txn: &mut Txn<'_>, key: &[u8]) {
            txn.put(key.to_vec(), b"batch".to_vec());
        }
        fn delete(txn: &mut Txn<'_>, key: &[u8]) {
            txn.delete(key.to_vec());
        }
        fn delete_range(txn: &mut Txn<'_>, key: &[u8]) {
            txn.delete_range(key.to_vec(), [key, b"\0"].concat());
        }
        let case = |key, stored, before, after, expected| PrefetchCase {
            key,
            stored,
            before,
            after,
            expected,
        };
        let cases = [
            case("a", true, None, None, Some("stored")),
            case("b", false, None, None, None),
            case("h1", true, None, None, Some("stored")),
            case("c", true, Some(put), None, Some("batch")),
            case("d", true, None, Some(put), Some("batch")),
            case("e", true, None, Some(delete), None),
            case("f", true, Some(delete_range), None, None),
            case("g", true, None, Some(delete_range), None),
        ];
        let dir = tempfile::tempdir().unwrap();
        let store = crate::Store::open(dir.path()).unwrap();
        // "h" keys are a history, so the prefetch reads both families.
        let layout = Layout::new(vec![b"h".to_vec()]);
        let write = |value: &[u8], all: bool| {
            let mut stored = Txn::new(&store.state, &layout);
            for case in cases.iter().filter(|case| all || case.stored) {
                stored.put(case.key.as_bytes().to_vec(), value.to_vec());
            }
            let mut batch = WriteBatch::default();
            stored.write_into(&mut batch);
            store.state.write(batch).unwrap();
        };
        write(b"stored", false);
        let mut txn = Txn::new(&store.state, &layout);
        for case in &cases {
            if let Some(step) = case.before {
                step(&mut txn, case.key.as_bytes());
            }
        }
        txn.prefetch(cases.iter().map(|case| case.key.into()).collect())
            .unwrap();
        write(b"behind the batch's back", true);
        for case in &cases {
            if let Some(step) = case.after {
                step(&mut txn, case.key.as_bytes());
            }
        }
        for case in cases {
            let got = txn.get(case.key.as_bytes()).unwrap();
            let got = got
                .as_deref()
                .map(|value| std::str::from_utf8(value).unwrap());
            assert_eq!(got, case.expected, "key {}", case.key);
        }
    }
}
