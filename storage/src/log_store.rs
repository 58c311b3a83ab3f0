//! The Raft log on RocksDB.
//!
//! Entries are keyed by their big-endian index in their own column family; the vote, the
//! committed log id and the last purged log id sit in a small metadata family. Durability
//! follows openraft's contract: `append` writes the batch at once (so the entries are readable
//! when it returns) and reports them flushed only after the WAL is fsynced. The fsync runs on
//! a dedicated flusher thread that takes every append queued since its last fsync and makes
//! them durable together: under load one fsync covers many appends (group commit) instead of
//! one thread and one fsync per append.
//!
//! The newest entries are also kept in memory ([`EntryCache`]), because each is read back
//! right after its append, to be applied and replicated.
//!
//! The vote is written with a synchronous write because a node must never vote twice in a
//! term, even across a power loss.

use std::fmt::Debug;
use std::io;
use std::ops::Bound;
use std::ops::RangeBounds;
use std::sync::mpsc;
use std::sync::Arc;
use std::sync::Mutex;

use openraft::entry::RaftEntry;
use openraft::storage::IOFlushed;
use openraft::storage::RaftLogStorage;
use openraft::type_config::alias::LogIdOf;
use openraft::type_config::alias::VoteOf;
use openraft::LogState;
use openraft::OptionalSend;
use openraft::RaftLogReader;
use openraft::RaftTypeConfig;
use rocksdb::ColumnFamily;
use rocksdb::IteratorMode;
use rocksdb::ReadOptions;
use rocksdb::WriteBatch;
use rocksdb::WriteOptions;
use rocksdb::DB;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::cf;
use crate::entry_cache::EntryCache;
use crate::keyspace;
use crate::Error;

type FlushCallback = Box<dyn FnOnce(Result<(), String>) + Send>;

/// Makes the WAL durable on behalf of many appends at once.
///
/// Dropping it waits for the thread to finish, so the thread never outlives the stores and
/// never closes RocksDB while the process is exiting.
struct WalFlusher {
    queue: Option<mpsc::Sender<FlushCallback>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl WalFlusher {
    fn start(db: Arc<DB>) -> Self {
        let (queue, pending) = mpsc::channel::<FlushCallback>();
        let thread = std::thread::Builder::new()
            .name("keel-wal-flush".into())
            .spawn(move || {
                while let Ok(first) = pending.recv() {
                    let mut batch = vec![first];
                    batch.extend(pending.try_iter());
                    let result = db.flush_wal(true).map_err(|e| e.to_string());
                    for callback in batch {
                        callback(result.clone());
                    }
                }
            })
            .expect("spawning the WAL flusher thread");
        Self {
            queue: Some(queue),
            thread: Some(thread),
        }
    }

    fn after_fsync(&self, callback: FlushCallback) {
        let queue = self
            .queue
            .as_ref()
            .expect("the queue lives as long as the flusher");
        if let Err(mpsc::SendError(callback)) = queue.send(callback) {
            callback(Err("the WAL flusher has stopped".into()));
        }
    }
}

impl Drop for WalFlusher {
    fn drop(&mut self) {
        drop(self.queue.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// openraft's log storage on RocksDB; see the module documentation.
pub struct LogStore<C: RaftTypeConfig> {
    db: Arc<DB>,
    flusher: Arc<WalFlusher>,
    recent: Arc<Mutex<EntryCache<C::Entry>>>,
}

impl<C: RaftTypeConfig> Clone for LogStore<C> {
    fn clone(&self) -> Self {
        Self {
            db: self.db.clone(),
            flusher: self.flusher.clone(),
            recent: self.recent.clone(),
        }
    }
}

impl<C: RaftTypeConfig> LogStore<C> {
    pub(crate) fn new(db: Arc<DB>) -> Self {
        let flusher = Arc::new(WalFlusher::start(db.clone()));
        Self {
            db,
            flusher,
            recent: Arc::new(Mutex::new(EntryCache::new())),
        }
    }

    /// Records, durably, that the cluster's leader removed this node: a removed node is never
    /// sent the membership that leaves it out, and must not take itself for a member again
    /// when restarted.
    pub fn mark_removed(&self) -> Result<(), Error> {
        self.put_meta(keyspace::REMOVED, &true, true)
    }

    /// Whether [`Self::mark_removed`] was recorded.
    pub fn is_marked_removed(&self) -> Result<bool, Error> {
        Ok(self.get_meta::<bool>(keyspace::REMOVED)?.unwrap_or(false))
    }

    fn recent(&self) -> std::sync::MutexGuard<'_, EntryCache<C::Entry>> {
        self.recent.lock().expect("log entry cache")
    }

    fn cf_log(&self) -> &ColumnFamily {
        self.db.cf_handle(cf::LOG).expect("log column family")
    }

    fn cf_meta(&self) -> &ColumnFamily {
        self.db
            .cf_handle(cf::LOG_META)
            .expect("log meta column family")
    }

    fn get_meta<T: DeserializeOwned>(&self, key: &[u8]) -> Result<Option<T>, Error> {
        match self.db.get_pinned_cf(self.cf_meta(), key)? {
            Some(bytes) => Ok(Some(bincode::deserialize(&bytes)?)),
            None => Ok(None),
        }
    }

    fn put_meta<T: Serialize>(&self, key: &[u8], value: &T, sync: bool) -> Result<(), Error> {
        let mut opts = WriteOptions::default();
        opts.set_sync(sync);
        let bytes = bincode::serialize(value)?;
        self.db.put_cf_opt(self.cf_meta(), key, bytes, &opts)?;
        Ok(())
    }

    fn read_range(&self, start: u64, end: Option<u64>) -> Result<Vec<C::Entry>, Error> {
        let mut opts = ReadOptions::default();
        if let Some(end) = end {
            opts.set_iterate_upper_bound(keyspace::index_key(end));
        }
        let from = keyspace::index_key(start);
        let iter = self.db.iterator_cf_opt(
            self.cf_log(),
            opts,
            IteratorMode::From(&from, rocksdb::Direction::Forward),
        );
        let mut entries = Vec::new();
        let mut expected = start;
        for item in iter {
            let (key, value) = item?;
            let index = keyspace::key_index(&key)?;
            if index != expected && !entries.is_empty() {
                return Err(Error::Corrupt(format!(
                    "log hole: expected index {expected}, found {index}"
                )));
            }
            let entry: C::Entry = bincode::deserialize(&value)?;
            expected = index + 1;
            entries.push(entry);
        }
        Ok(entries)
    }
}

fn range_to_bounds(range: &impl RangeBounds<u64>) -> (u64, Option<u64>) {
    let start = match range.start_bound() {
        Bound::Included(x) => *x,
        Bound::Excluded(x) => x + 1,
        Bound::Unbounded => 0,
    };
    let end = match range.end_bound() {
        Bound::Included(x) => Some(x + 1),
        Bound::Excluded(x) => Some(*x),
        Bound::Unbounded => None,
    };
    (start, end)
}

impl<C: RaftTypeConfig> RaftLogReader<C> for LogStore<C>
where
    C::Entry: Clone,
{
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<C::Entry>, io::Error> {
        let (start, end) = range_to_bounds(&range);
        if end.is_some_and(|end| end <= start) {
            return Ok(Vec::new());
        }
        if let Some(entries) = end.and_then(|end| self.recent().get(start, end)) {
            return Ok(entries);
        }
        Ok(self.read_range(start, end)?)
    }

    async fn read_vote(&mut self) -> Result<Option<VoteOf<C>>, io::Error> {
        Ok(self.get_meta(keyspace::VOTE)?)
    }
}

impl<C: RaftTypeConfig> RaftLogStorage<C> for LogStore<C>
where
    C::Entry: Clone,
{
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<C>, io::Error> {
        let last_purged_log_id: Option<LogIdOf<C>> = self.get_meta(keyspace::LAST_PURGED)?;
        let last_entry = match self.db.iterator_cf(self.cf_log(), IteratorMode::End).next() {
            Some(item) => {
                let (_, value) = item.map_err(Error::from)?;
                let entry: C::Entry = bincode::deserialize(&value).map_err(Error::from)?;
                Some(entry.log_id())
            }
            None => None,
        };
        Ok(LogState {
            last_log_id: last_entry.or_else(|| last_purged_log_id.clone()),
            last_purged_log_id,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &VoteOf<C>) -> Result<(), io::Error> {
        Ok(self.put_meta(keyspace::VOTE, vote, true)?)
    }

    async fn save_committed(&mut self, committed: Option<LogIdOf<C>>) -> Result<(), io::Error> {
        // Written now, not with the next append: a node killed with kill -9 re-applies up to
        // this marker (the state's writes skip the WAL), and one written later would bring it
        // back with less applied than it had served (tests/committed.rs). Not synced: after a
        // power loss a node may come back with a marker as old as its last append's fsync, and
        // so with less applied until it hears from the leader; the entries are durable.
        Ok(self.put_meta(keyspace::COMMITTED, &committed, false)?)
    }

    async fn read_committed(&mut self) -> Result<Option<LogIdOf<C>>, io::Error> {
        Ok(self
            .get_meta::<Option<LogIdOf<C>>>(keyspace::COMMITTED)?
            .flatten())
    }

    async fn append<I>(&mut self, entries: I, callback: IOFlushed<C>) -> Result<(), io::Error>
    where
        I: IntoIterator<Item = C::Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut batch = WriteBatch::default();
        let mut written = Vec::new();
        for entry in entries {
            let bytes = bincode::serialize(&entry).map_err(Error::from)?;
            batch.put_cf(self.cf_log(), keyspace::index_key(entry.index()), &bytes);
            written.push((entry, bytes.len()));
        }
        self.db.write(batch).map_err(Error::from)?;
        let mut recent = self.recent();
        for (entry, size) in written {
            recent.appended(entry.index(), entry, size);
        }
        drop(recent);
        self.flusher.after_fsync(Box::new(move |result| {
            callback.io_completed(result.map_err(io::Error::other));
        }));
        Ok(())
    }

    async fn truncate_after(&mut self, last_log_id: Option<LogIdOf<C>>) -> Result<(), io::Error> {
        let from = last_log_id.map_or(0, |id| id.index() + 1);
        self.recent().truncated_from(from);
        // Synced: a truncated suffix that came back after a crash could be mistaken for
        // entries this node accepted from the new leader.
        let mut batch = WriteBatch::default();
        batch.delete_range_cf(
            self.cf_log(),
            keyspace::index_key(from),
            keyspace::index_key(u64::MAX),
        );
        batch.delete_cf(self.cf_log(), keyspace::index_key(u64::MAX));
        let mut opts = WriteOptions::default();
        opts.set_sync(true);
        self.db.write_opt(batch, &opts).map_err(Error::from)?;
        Ok(())
    }

    async fn purge(&mut self, log_id: LogIdOf<C>) -> Result<(), io::Error> {
        // The marker goes first: entries at or below it are ignored by openraft, so a crash
        // between the two writes leaves garbage, never a hole.
        self.put_meta(keyspace::LAST_PURGED, &log_id, false)?;
        self.recent().purged_up_to(log_id.index());
        self.db
            .delete_range_cf(
                self.cf_log(),
                keyspace::index_key(0),
                keyspace::index_key(log_id.index() + 1),
            )
            .map_err(Error::from)?;
        Ok(())
    }
}
