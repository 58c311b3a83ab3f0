//! The bridge between the storage crate's state store and the domain's state machine.
//!
//! The domain implements [`StateMachine`] over raw command bytes; [`Machine`] unwraps log
//! entries for it and adds what every command needs: exactly-once application of retried
//! requests. A proposal with a request id records its reply under that id; the same id
//! proposed again (a client retry after a timeout, a forward that was re-sent) returns the
//! recorded reply without touching the state. Records expire after [`REQUEST_ID_WINDOW`] log
//! entries, counted in log indexes so every node expires the same records at the same entry,
//! or sooner once newer entries hold [`MAX_REMEMBERED_REQUESTS`] of them: an entry carries a
//! batch of proposals, and without a bound on records the window would hold up to a batch's
//! worth of ids per entry. Records go by whole entries, oldest first, which every node does
//! alike, a node that restarted too (the store's order within an entry is not the order the
//! records were made in, so trimming inside an entry would not be).
//!
//! Every write carries a request id (nodes make one up when the client sent none), so a record
//! is made for every write, and its cost is part of every write's. A record is therefore one
//! key, the entry's index followed by the id, whose value is the reply. Keys in index order let
//! the records that left the window go in one range deletion every [`EXPIRE_EVERY`] entries,
//! instead of one deletion each. The ids on record are mirrored in memory
//! ([`RequestWindow`]), so a new id (almost every proposal) costs no RocksDB read. The earlier
//! layout (a record keyed by id plus an index entry, each deleted when it expired) cost four
//! writes per request and held the reply twice over in flushes and compactions; measured
//! against it in paired put (64) runs on a 3-node cluster, 3 of 3 pairs better, +11 % writes
//! summed, 146-176 µs of CPU per write against 177-202.
//!
//! Keys starting with a zero byte belong to this module; the domain must not use them.

use std::collections::HashMap;
use std::collections::VecDeque;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::sync::Mutex;

use keel_storage::Application;
use keel_storage::Error;
use keel_storage::KvRead;
use keel_storage::Txn;
use openraft::entry::RaftEntry;
use openraft::EntryPayload;
use serde::Deserialize;

use crate::types::Entry;
use crate::types::Proposal;
use crate::types::Replies;
use crate::types::Reply;
use crate::types::TypeConfig;

/// How many log entries a request id is remembered for.
pub const REQUEST_ID_WINDOW: u64 = 100_000;

/// The most request ids remembered, give or take the records of one entry. At least
/// [`REQUEST_ID_WINDOW`]: then, with one proposal per entry as earlier builds write them, the
/// bound never applies and such builds and this one remember the same records.
pub const MAX_REMEMBERED_REQUESTS: usize = 100_000;

/// Longest request id accepted, in bytes.
pub const MAX_REQUEST_ID_LEN: usize = 128;

/// Records that left the window stay in the store (unseen: the mirror no longer names them)
/// until the next entry whose index is a multiple of this deletes them all.
pub const EXPIRE_EVERY: u64 = 1024;

/// `REQUEST_PREFIX`, the entry's index (big-endian), then the [`RequestId`]: the reply.
const REQUEST_PREFIX: &[u8] = b"\x00rq/";

/// The layout of keel 0.1 stores before this one: `\x00req/` + id + `/` + fingerprint (16 hex
/// digits) to a bincoded [`LegacyRecord`], and `\x00req-index/` + index to the record's key.
/// Loading the window converts them.
const LEGACY_PREFIX: &[u8] = b"\x00req/";
const LEGACY_BY_INDEX_PREFIX: &[u8] = b"\x00req-index/";

/// The domain's deterministic state machine.
pub trait StateMachine: Send + Sync + 'static {
    /// Applies the command at log `index` and returns the encoded reply. No clocks,
    /// randomness or I/O: everything that varies is inside `command`. The commands of one
    /// entry are applied in order and share its index.
    fn apply(&self, index: u64, command: &[u8], txn: &mut Txn<'_>) -> Result<Vec<u8>, Error>;

    /// The prefixes of the domain's histories; see [`Application::history_prefixes`].
    fn history_prefixes(&self) -> Vec<Vec<u8>> {
        Vec::new()
    }

    /// The prefixes of the domain's counters; see [`Application::counter_prefixes`].
    fn counter_prefixes(&self) -> Vec<Vec<u8>> {
        Vec::new()
    }

    /// Keys that applying `command` will read. An entry's are read from the store together
    /// before its commands are applied ([`Txn::prefetch`]); a key left out is read when asked
    /// for, so this is about speed only.
    fn keys_read(&self, _command: &[u8]) -> Vec<Vec<u8>> {
        Vec::new()
    }
}

#[derive(Deserialize)]
struct LegacyRecord {
    index: u64,
    #[serde(with = "serde_bytes")]
    reply: Vec<u8>,
}

/// The client's id followed by a fingerprint (FNV-1a, big-endian) of the command. A request id
/// names one command: the same id with another command (two clients that picked the same key, a
/// client reusing keys) is another request, not a retry.
type RequestId = Arc<[u8]>;

fn request_id(id: &str, command: &[u8]) -> RequestId {
    [id.as_bytes(), &fnv1a(command).to_be_bytes()]
        .concat()
        .into()
}

/// FNV-1a: stable across nodes, versions and platforms, unlike std's hashers.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, byte| {
        (hash ^ u64::from(*byte)).wrapping_mul(0x0100_0000_01b3)
    })
}

fn index_key(index: u64) -> Vec<u8> {
    [REQUEST_PREFIX, &index.to_be_bytes()].concat()
}

fn record_key(index: u64, id: &[u8]) -> Vec<u8> {
    [REQUEST_PREFIX, &index.to_be_bytes(), id].concat()
}

/// The end of all record keys.
fn records_end() -> Vec<u8> {
    index_key(u64::MAX)
}

/// The request records the store holds, mirrored in memory; see the module documentation.
///
/// It is loaded from the store by the first apply, and again whenever the entries it sees
/// are not consecutive: after a restart, or after a snapshot replaced the store's contents.
/// It may run ahead of the store within an apply batch; a batch that fails to commit stops
/// the node, so it never has to be rolled back.
///
/// The ids are looked up in two generations of hash maps, and an id leaves them with its
/// whole generation, never one by one: a hash map that removes as many keys as it inserts
/// fills with tombstones and then rehashes every key in place. With one map, 120 000 entries
/// of 64 ids applied to a store took 21-22 ms each time that happened (after about 4.5 million
/// records, and 25-32 ms once before), on the thread that also serves the node's requests.
/// Records that left the window may linger in the maps until their generation goes;
/// [`RequestWindow::recorded_at`] ignores them.
#[derive(Default)]
struct RequestWindow {
    /// The entry this window expects next.
    next: u64,
    /// Ids on record, in the order they were recorded, with the entry that recorded them.
    recorded: VecDeque<(u64, RequestId)>,
    /// Id to the latest entry that recorded it, for the ids recorded since `earlier` closed.
    latest: HashMap<RequestId, u64>,
    /// The same for the ids recorded before, by entries up to `earlier_last`.
    earlier: HashMap<RequestId, u64>,
    earlier_last: u64,
    /// A generation whose records have all left the window, freed a few ids per entry.
    retiring: std::collections::hash_map::IntoIter<RequestId, u64>,
    /// Bytes of the ids in `recorded`.
    id_bytes: usize,
}

/// Ids of a retired generation freed per entry applied: twice the most proposals an entry
/// carries, so a generation is gone long before the next one retires.
const RETIRED_PER_ENTRY: usize = 2 * crate::node::MAX_ENTRY_PROPOSALS;

impl RequestWindow {
    /// Loads the records that are still in the window at entry `next`, converting records of
    /// the legacy layout in `txn` on the way.
    fn load(txn: &mut Txn<'_>, next: u64) -> Result<Self, Error> {
        let oldest_kept = oldest_kept(next);
        let mut window = Self {
            next,
            ..Self::default()
        };
        convert_legacy_records(txn, oldest_kept)?;
        for (key, _) in txn.scan(&index_key(oldest_kept), &records_end(), usize::MAX)? {
            let (index, id) = parse_record_key(&key)?;
            window.record(index, id.into());
        }
        Ok(window)
    }

    fn record(&mut self, index: u64, id: RequestId) {
        self.id_bytes += id.len();
        self.latest.insert(id.clone(), index);
        self.recorded.push_back((index, id));
    }

    /// The entry whose record of `id` is in the window, if one is.
    ///
    /// Records leave `recorded` oldest first and never out of order, so a record is still there
    /// exactly when its entry is no older than the oldest entry there.
    fn recorded_at(&self, id: &RequestId) -> Option<u64> {
        let (oldest, _) = self.recorded.front()?;
        let latest = self.latest.get(id).or_else(|| self.earlier.get(id))?;
        (latest >= oldest).then_some(*latest)
    }

    /// Forgets every record that left the window when entry `index` is applied; every
    /// [`EXPIRE_EVERY`] entries, deletes them from the store too.
    fn expire(&mut self, index: u64, txn: &mut Txn<'_>) {
        self.forget_expired(index);
        if index.is_multiple_of(EXPIRE_EVERY) {
            let oldest_remembered = self.recorded.front().map_or(index, |(at, _)| *at);
            if oldest_remembered > 0 {
                txn.delete_range(index_key(0), index_key(oldest_remembered));
            }
        }
    }

    /// Forgets every record that left the window when entry `index` is applied.
    fn forget_expired(&mut self, index: u64) {
        let oldest_kept = oldest_kept(index);
        while let Some((recorded_at, _)) = self.recorded.front() {
            if *recorded_at >= oldest_kept {
                break;
            }
            self.forget_oldest();
        }
        loop {
            let oldest_entry = self.oldest_entry_records();
            if self.recorded.len() - oldest_entry < MAX_REMEMBERED_REQUESTS {
                break;
            }
            for _ in 0..oldest_entry {
                self.forget_oldest();
            }
        }
        self.turn_generations();
    }

    /// Retires the earlier generation once none of its records is left in the window, and
    /// frees a few ids of the one retiring.
    fn turn_generations(&mut self) {
        let earlier_left = self
            .recorded
            .front()
            .is_none_or(|(oldest, _)| *oldest > self.earlier_last);
        // With nothing recorded since, there is no generation to close: turning anyway would
        // retire the last one whole at the next entry.
        if earlier_left && !self.latest.is_empty() {
            // Nothing is left of the generation retired before, unless entries were much
            // larger than [`RETIRED_PER_ENTRY`] assumes.
            self.retiring.by_ref().for_each(drop);
            // The next generation will be about as large as this one: sized for it, its map
            // seldom grows, and growing rehashes every key too.
            let capacity = self.latest.len();
            let latest = std::mem::replace(&mut self.latest, HashMap::with_capacity(capacity));
            self.retiring = std::mem::replace(&mut self.earlier, latest).into_iter();
            self.earlier_last = self.recorded.back().map_or(0, |(at, _)| *at);
        }
        self.retiring
            .by_ref()
            .take(RETIRED_PER_ENTRY)
            .for_each(drop);
    }

    /// How many records the oldest entry on record made.
    fn oldest_entry_records(&self) -> usize {
        let Some((oldest, _)) = self.recorded.front() else {
            return 0;
        };
        self.recorded
            .iter()
            .take_while(|(recorded_at, _)| recorded_at == oldest)
            .count()
    }

    fn forget_oldest(&mut self) {
        if let Some((_, id)) = self.recorded.pop_front() {
            self.id_bytes -= id.len();
        }
    }
}

/// The oldest entry whose records are still in the window when entry `index` is applied.
fn oldest_kept(index: u64) -> u64 {
    index.saturating_sub(REQUEST_ID_WINDOW - 1)
}

fn parse_record_key(key: &[u8]) -> Result<(u64, &[u8]), Error> {
    key.strip_prefix(REQUEST_PREFIX)
        .filter(|rest| rest.len() >= 8)
        .map(|rest| {
            let (index, id) = rest.split_at(8);
            let index = u64::from_be_bytes(index.try_into().expect("8 bytes"));
            (index, id)
        })
        .ok_or_else(|| Error::Corrupt(format!("bad request record key {key:?}")))
}

/// Rewrites the records of the legacy layout that are still in the window in this layout, and
/// deletes that layout's keys.
fn convert_legacy_records(txn: &mut Txn<'_>, oldest_kept: u64) -> Result<(), Error> {
    let legacy_end = [LEGACY_PREFIX, &[0xff]].concat();
    let legacy = txn.scan(LEGACY_PREFIX, &legacy_end, usize::MAX)?;
    if legacy.is_empty() {
        return Ok(());
    }
    for (key, value) in &legacy {
        let record: LegacyRecord = bincode::deserialize(value)?;
        if record.index < oldest_kept {
            continue;
        }
        let id_and_fingerprint = &key[LEGACY_PREFIX.len()..];
        let bad = || Error::Corrupt(format!("bad legacy request record key {key:?}"));
        let (id, fingerprint) = id_and_fingerprint
            .len()
            .checked_sub(17)
            .map(|split| id_and_fingerprint.split_at(split))
            .ok_or_else(bad)?;
        let fingerprint = std::str::from_utf8(fingerprint)
            .ok()
            .and_then(|hex| hex.strip_prefix('/'))
            .and_then(|hex| u64::from_str_radix(hex, 16).ok())
            .ok_or_else(bad)?;
        let id = [id, &fingerprint.to_be_bytes()].concat();
        txn.put(record_key(record.index, &id), record.reply);
    }
    txn.delete_range(LEGACY_PREFIX.to_vec(), legacy_end);
    let by_index_end = [LEGACY_BY_INDEX_PREFIX, &[0xff]].concat();
    txn.delete_range(LEGACY_BY_INDEX_PREFIX.to_vec(), by_index_end);
    Ok(())
}

/// What the in-memory mirror of the request records holds, for `/metrics`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RememberedRequests {
    /// Request ids on record.
    pub ids: usize,
    /// Estimated heap bytes of the mirror: each id once (shared by the queue and the maps),
    /// plus per-record overhead.
    pub bytes: usize,
}

/// Rough per-record overhead of the mirror: its queue slot (24 bytes), the id's reference
/// count (16) and its entries in up to two generations' maps (about 28 each).
const MIRROR_ENTRY_OVERHEAD: usize = 100;

/// The storage [`Application`] keel's Raft runs; see the module documentation.
pub struct Machine {
    domain: Arc<dyn StateMachine>,
    requests: Mutex<Option<RequestWindow>>,
    proposals_applied: AtomicU64,
}

impl Machine {
    pub fn new(domain: Arc<dyn StateMachine>) -> Self {
        Self {
            domain,
            requests: Mutex::default(),
            proposals_applied: AtomicU64::new(0),
        }
    }

    /// Proposals applied (retries answered from their record too) since this process started.
    pub fn proposals_applied(&self) -> u64 {
        self.proposals_applied.load(Ordering::Relaxed)
    }

    /// What the mirror of request records holds; empty until the first entry is applied.
    pub fn remembered_requests(&self) -> RememberedRequests {
        // A panic in apply stops the node anyway; /metrics still answers meanwhile.
        let requests = self
            .requests
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        requests
            .as_ref()
            .map_or_else(RememberedRequests::default, |window| RememberedRequests {
                ids: window.recorded.len(),
                bytes: window.id_bytes + MIRROR_ENTRY_OVERHEAD * window.recorded.len(),
            })
    }
}

impl Machine {
    /// Applies one of the proposals of entry `index`, unless its request id is on record.
    fn apply_proposal(
        &self,
        index: u64,
        proposal: &Proposal,
        requests: &mut RequestWindow,
        txn: &mut Txn<'_>,
    ) -> Result<Reply, Error> {
        let Some(id) = &proposal.request_id else {
            return Ok(Reply(self.domain.apply(index, &proposal.command, txn)?));
        };
        let id = request_id(id, &proposal.command);
        if let Some(recorded_at) = requests.recorded_at(&id) {
            if let Some(reply) = txn.get(&record_key(recorded_at, &id))? {
                return Ok(Reply(reply));
            }
        }
        let reply = self.domain.apply(index, &proposal.command, txn)?;
        txn.put(record_key(index, &id), reply.clone());
        requests.record(index, id);
        Ok(Reply(reply))
    }
}

impl Application<TypeConfig> for Machine {
    /// The request records are a history too: written in index order, expired oldest first.
    fn history_prefixes(&self) -> Vec<Vec<u8>> {
        let mut prefixes = self.domain.history_prefixes();
        prefixes.push(REQUEST_PREFIX.to_vec());
        prefixes
    }

    fn counter_prefixes(&self) -> Vec<Vec<u8>> {
        self.domain.counter_prefixes()
    }

    fn apply(&self, entry: &Entry, txn: &mut Txn<'_>) -> Result<Replies, Error> {
        let index = entry.index();
        let mut requests = self.requests.lock().expect("request window");
        let requests = match &mut *requests {
            Some(window) if window.next == index => window,
            stale => stale.insert(RequestWindow::load(txn, index)?),
        };
        requests.next = index + 1;
        requests.expire(index, txn);
        let EntryPayload::Normal(proposals) = &entry.payload else {
            return Ok(Replies::default());
        };
        let keys = proposals
            .0
            .iter()
            .flat_map(|proposal| self.domain.keys_read(&proposal.command))
            .collect();
        txn.prefetch(keys)?;
        let mut replies = Vec::with_capacity(proposals.0.len());
        for proposal in proposals.0.iter() {
            replies.push(self.apply_proposal(index, proposal, requests, txn)?);
        }
        self.proposals_applied
            .fetch_add(replies.len() as u64, Ordering::Relaxed);
        Ok(Replies(replies))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Declares a history (`h/`) and a counter (`c/`); applies nothing.
    struct HistoryAndCounter;

    impl StateMachine for HistoryAndCounter {
        fn apply(&self, _: u64, _: &[u8], _: &mut Txn<'_>) -> Result<Vec<u8>, Error> {
            Ok(Vec::new())
        }

        fn history_prefixes(&self) -> Vec<Vec<u8>> {
            vec![b"h/".to_vec()]
        }

        fn counter_prefixes(&self) -> Vec<Vec<u8>> {
            vec![b"c/".to_vec()]
        }
    }

    /// Ids `{index}-0` to `{index}-{count - 1}`, as entry `index` records them.
    fn ids_of(index: u64, count: u64) -> Vec<RequestId> {
        (0..count)
            .map(|n| format!("{index}-{n}").into_bytes().into())
            .collect()
    }

    /// Entries of 1 to 64 records, and now and then one that records again an id that has
    /// just left the window, checked after every entry against [`WindowModel`]: the ids of the
    /// oldest entry on record and of the one just before it, and every id recorded again.
    /// Over 420 000 records, so that three full generations of the window's maps retire.
    #[test]
    fn the_window_names_exactly_the_records_still_in_it() {
        let fresh_ids = |index: u64| ids_of(index, 1 + index * 7919 % 64);
        let mut both = WindowAndModel::default();
        let mut recorded_again: Vec<RequestId> = Vec::new();
        let mut turns = 0;
        let mut index = 1;
        while both.model.latest.len() < 420_000 {
            let earlier_last = both.window.earlier_last;
            both.forget_expired(index);
            turns += usize::from(both.window.earlier_last != earlier_last);
            let mut ids = fresh_ids(index);
            let oldest = both.model.entries.front().map(|(at, _)| *at);
            if let Some(oldest) = oldest.filter(|at| *at > 1 && index % 97 == 0) {
                let again: RequestId = format!("{}-0", oldest - 1).into_bytes().into();
                recorded_again.push(again.clone());
                ids.push(again);
            }
            both.record(index, &ids);
            let (oldest, _) = *both.model.entries.front().expect("records");
            let checked = [oldest.saturating_sub(1), oldest]
                .into_iter()
                .flat_map(fresh_ids)
                .chain(recorded_again.iter().cloned());
            both.assert_agree(checked, index);
            index += 1;
        }
        // The first turn closes a generation of one entry; three more retire full ones.
        assert!(turns >= 4, "the generations turned {turns} times");
    }

    /// Which records the window must hold, computed from the two rules alone: whole entries
    /// leave when they are [`REQUEST_ID_WINDOW`] entries old, and then, oldest first, while the
    /// ones after them still hold [`MAX_REMEMBERED_REQUESTS`] records.
    #[derive(Default)]
    struct WindowModel {
        /// Entries with records, oldest first, and how many each made.
        entries: VecDeque<(u64, usize)>,
        records: usize,
        latest: HashMap<RequestId, u64>,
    }

    impl WindowModel {
        fn forget_expired(&mut self, index: u64) {
            while let Some(&(entry, count)) = self.entries.front() {
                // Remembered while entries `entry..entry + REQUEST_ID_WINDOW` apply.
                let too_old = entry + REQUEST_ID_WINDOW <= index;
                if !too_old && self.records - count < MAX_REMEMBERED_REQUESTS {
                    break;
                }
                self.entries.pop_front();
                self.records -= count;
            }
        }

        fn record(&mut self, index: u64, ids: &[RequestId]) {
            if ids.is_empty() {
                return;
            }
            for id in ids {
                self.latest.insert(id.clone(), index);
            }
            self.entries.push_back((index, ids.len()));
            self.records += ids.len();
        }

        fn recorded_at(&self, id: &RequestId) -> Option<u64> {
            let (oldest, _) = self.entries.front()?;
            self.latest.get(id).copied().filter(|at| at >= oldest)
        }
    }

    /// The window under test and [`WindowModel`], given the same entries.
    #[derive(Default)]
    struct WindowAndModel {
        window: RequestWindow,
        model: WindowModel,
    }

    impl WindowAndModel {
        fn forget_expired(&mut self, index: u64) {
            self.window.forget_expired(index);
            self.model.forget_expired(index);
        }

        fn record(&mut self, index: u64, ids: &[RequestId]) {
            for id in ids {
                self.window.record(index, id.clone());
            }
            self.model.record(index, ids);
        }

        /// Checks that the window names each of `ids` as recorded at the entry the model does.
        fn assert_agree(&self, ids: impl IntoIterator<Item = RequestId>, index: u64) {
            for id in ids {
                assert_eq!(
                    self.window.recorded_at(&id),
                    self.model.recorded_at(&id),
                    "id {id:?} at entry {index}"
                );
            }
        }
    }

    /// Stretches of entries with many records, with none (so that everything leaves by age and
    /// the window empties), and with a few, each stretch recording again ids that left the
    /// window long before. Checked against [`WindowModel`]: the ids of the oldest entries kept,
    /// of the entry before them, of the first stretch, and those recorded again.
    #[test]
    fn the_window_forgets_by_age_and_by_count_and_may_empty() {
        let first_stretch: Vec<RequestId> = (1..=300).flat_map(|index| ids_of(index, 2)).collect();
        let stretches: [(u64, u64); 6] = [
            (300, 64),
            (REQUEST_ID_WINDOW + 2_000, 0),
            (2_500, 64),
            (REQUEST_ID_WINDOW / 2, 1),
            (REQUEST_ID_WINDOW + 2_000, 0),
            (100, 3),
        ];
        let mut both = WindowAndModel::default();
        let mut recorded_again: Vec<RequestId> = Vec::new();
        let mut emptied = 0;
        let mut index = 1;
        for (entries, per_entry) in stretches {
            let again = first_stretch[recorded_again.len()].clone();
            for step in 0..entries {
                both.forget_expired(index);
                let mut ids = ids_of(index, per_entry);
                if step == entries / 2 && per_entry > 0 {
                    ids.push(again.clone());
                    recorded_again.push(again.clone());
                }
                both.record(index, &ids);
                if both.window.recorded.is_empty() {
                    emptied += 1;
                    assert_eq!(both.window.id_bytes, 0, "entry {index}");
                    assert!(both.model.entries.is_empty(), "entry {index}");
                }
                let oldest = both.model.entries.front().map_or(index, |(at, _)| *at);
                let sampled = per_entry > 1 || index % 250 == 0 || step < 3 || step + 3 >= entries;
                let checked = [oldest.saturating_sub(1), oldest]
                    .into_iter()
                    .flat_map(|at| ids_of(at, 64))
                    .chain(first_stretch.iter().cloned())
                    .chain(recorded_again.iter().cloned())
                    .filter(|_| sampled);
                both.assert_agree(checked, index);
                index += 1;
            }
        }
        assert!(emptied > 3_000, "the window was empty at {emptied} entries");
    }

    #[test]
    fn the_domain_s_histories_and_counters_reach_the_store() {
        let machine = Machine::new(Arc::new(HistoryAndCounter));
        assert_eq!(
            Application::history_prefixes(&machine),
            vec![b"h/".to_vec(), REQUEST_PREFIX.to_vec()]
        );
        assert_eq!(
            Application::counter_prefixes(&machine),
            vec![b"c/".to_vec()]
        );
    }
}
