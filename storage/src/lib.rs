//! keel's durable storage: per node, one RocksDB for the Raft log and one for the state
//! machine's data.
//!
//! The crate is split the way openraft splits storage: [`LogStore`] implements
//! [`openraft::storage::RaftLogStorage`] (log entries, vote, committed and purge markers) and
//! [`StateStore`] implements [`openraft::storage::RaftStateMachine`] (applied data, last
//! applied log id, membership, snapshots). Only the log is written through a WAL, so one
//! `fsync` makes a group of appends durable; the state machine is rebuilt from the log after a
//! crash. Why two databases rather than two halves of one: see [`Store`].
//!
//! The crate is generic over the openraft type configuration and knows nothing of what the
//! commands mean: the domain plugs in through [`Application`], reading and writing keys
//! through a [`Txn`] whose changes land in the same RocksDB write batch as `last_applied`.
//! It knows nothing of HTTP either; the network layer moves [`SnapshotData`] as bytes.

mod entry_cache;
mod error;
mod format;
mod frozen;
mod keyspace;
mod layout;
mod log_store;
mod snapshot;
mod state_store;
mod txn;

use std::os::unix::fs::DirBuilderExt;
use std::os::unix::fs::MetadataExt;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::path::PathBuf;
use std::sync::Arc;

use rocksdb::ColumnFamilyDescriptor;
use rocksdb::Options;
use rocksdb::DB;

pub use error::Error;
pub use format::STORE_FORMAT;
pub use frozen::FrozenState;
pub use layout::prefix_end;
pub use log_store::LogStore;
pub use snapshot::SnapshotData;
pub use snapshot::SnapshotFile;
pub use state_store::Application;
pub use state_store::StateStore;
pub use txn::KvRead;
pub use txn::Pair;
pub use txn::Reader;
pub use txn::Txn;

/// Column families, one per kind of data, so that range deletes of the log never touch the
/// state machine and a snapshot iterates exactly the application's keys.
pub(crate) mod cf {
    pub const LOG: &str = "raft_log";
    pub const LOG_META: &str = "raft_meta";
    pub const SM_META: &str = "sm_meta";
    pub const SM_DATA: &str = "sm_data";
    /// The application's histories and counters (see [`crate::layout`]).
    pub const SM_HISTORY: &str = "sm_history";
    /// The families of the application's keys.
    pub const APP_FAMILIES: [&str; 2] = [SM_DATA, SM_HISTORY];
    /// The log's database.
    pub const LOG_FAMILIES: [&str; 2] = [LOG, LOG_META];
    /// The state machine's database.
    pub const STATE_FAMILIES: [&str; 3] = [SM_META, SM_DATA, SM_HISTORY];
}

/// An opened node store: the two RocksDB instances and where snapshot files go.
///
/// The log and the state machine live in databases of their own (`log/` and `db/`) because
/// they want opposite WAL settings. Every log append is fsynced, and an fsync that extends a
/// file also commits the file's new size to the filesystem journal; recycled WAL files are
/// overwritten in place instead (measured on this machine's ext4: 58-64 against 78-103 µs of
/// CPU and 131-141 against 191-243 µs per 5 KB write and `fdatasync`). RocksDB refuses WAL
/// recycling in a database that also takes writes without the WAL, which is how the state
/// machine writes (see [`StateStore`]).
pub struct Store {
    log: Arc<DB>,
    state: Arc<DB>,
    dir: PathBuf,
}

impl Store {
    /// Opens (creating if missing) the RocksDB stores under `dir`.
    pub fn open(dir: &Path) -> Result<Self, Error> {
        // The store holds the cluster's data, secret and password hash: the directory is its
        // user's alone, whoever made it (RocksDB's files in it take the process's umask).
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| Error::io(dir, e))?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
            .map_err(|e| Error::io(dir, e))?;
        let cache = rocksdb::Cache::new_lru_cache(BLOCK_CACHE_BYTES);
        let mut state = open_state(&dir.join("db"), &cache)?;
        let log_dir = dir.join("log");
        if !log_dir.exists() {
            move_log_out(&state, dir, &cache)?;
        }
        for legacy in cf::LOG_FAMILIES {
            if state.cf_handle(legacy).is_some() {
                state.drop_cf(legacy)?;
            }
        }
        let log = open_log(&log_dir, &cache)?;
        Ok(Self {
            log: Arc::new(log),
            state: Arc::new(state),
            dir: dir.to_path_buf(),
        })
    }

    /// The Raft log half of the store.
    pub fn log_store<C: openraft::RaftTypeConfig>(&self) -> LogStore<C> {
        LogStore::new(self.log.clone())
    }

    /// The state-machine half of the store, applying entries through `app`.
    pub fn state_store<C, A>(&self, app: A) -> Result<StateStore<C, A>, Error>
    where
        C: openraft::RaftTypeConfig,
        A: Application<C>,
    {
        StateStore::new(self.state.clone(), self.dir.join("snapshots"), app)
    }

    /// Whether the store holds Raft state (a vote, log entries, an applied state): a node
    /// that lost the identity it belongs with must not start afresh on it.
    pub fn holds_raft_state(&self) -> Result<bool, Error> {
        let log_families = cf::LOG_FAMILIES.iter().map(|name| (&self.log, *name));
        let state_meta = std::iter::once((&self.state, cf::SM_META));
        for (db, name) in log_families.chain(state_meta) {
            let family = db
                .cf_handle(name)
                .ok_or_else(|| Error::Corrupt(format!("column family {name} is missing")))?;
            if db
                .iterator_cf(family, rocksdb::IteratorMode::Start)
                .next()
                .transpose()?
                .is_some()
            {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Bytes the store occupies on disk (RocksDB files and snapshots), as `du` counts them.
    pub fn disk_usage(&self) -> u64 {
        dir_size(&self.dir)
    }
}

fn db_options() -> Options {
    let mut opts = Options::default();
    opts.create_if_missing(true);
    opts.create_missing_column_families(true);
    opts.set_keep_log_file_num(4);
    opts.increase_parallelism(2);
    opts.set_max_total_wal_size(MAX_WAL_BYTES);
    opts
}

/// The state machine's database, with its format marker (see [`format`]). A store written
/// before the log moved out still holds the log's families too; they are opened (RocksDB opens
/// all or nothing) until dropped.
fn open_state(path: &Path, cache: &rocksdb::Cache) -> Result<DB, Error> {
    let mut opts = db_options();
    // The state machine's writes skip the WAL (see the state store), so its data and its
    // `last_applied` are only consistent after a crash if they were flushed together.
    opts.set_atomic_flush(true);
    // A database exists once it has a CURRENT file; any other failure to list is an error.
    let existing = if path.join("CURRENT").exists() {
        DB::list_cf(&opts, path)?
    } else {
        Vec::new()
    };
    let known: Vec<&str> = [rocksdb::DEFAULT_COLUMN_FAMILY_NAME, format::FAMILY]
        .into_iter()
        .chain(cf::STATE_FAMILIES)
        .chain(cf::LOG_FAMILIES)
        .collect();
    format::check(path, &existing, &known)?;
    let families = cf::STATE_FAMILIES
        .into_iter()
        .chain([format::FAMILY])
        .chain(
            cf::LOG_FAMILIES
                .into_iter()
                .filter(|log| existing.iter().any(|e| e == log)),
        )
        .map(|name| ColumnFamilyDescriptor::new(name, family_options(name, cache)));
    let db = DB::open_cf_descriptors(&opts, path, families).map_err(Error::opening)?;
    format::mark(&db)?;
    Ok(db)
}

fn open_log(path: &Path, cache: &rocksdb::Cache) -> Result<DB, Error> {
    let mut opts = db_options();
    opts.set_recycle_log_file_num(RECYCLED_WAL_FILES);
    // A WAL file can be reused only once every family with writes in it was flushed: the
    // metadata family flushes with the log's, or it would pin every WAL file to the limit.
    opts.set_atomic_flush(true);
    let families =
        cf::LOG_FAMILIES.map(|name| ColumnFamilyDescriptor::new(name, family_options(name, cache)));
    DB::open_cf_descriptors(&opts, path, families).map_err(Error::opening)
}

/// Copies the log of a store written before the log had a database of its own out of the
/// state's database, into `dir/log`. The copy is built under another name and renamed once
/// durable, so a crash midway leaves the old layout whole, and the next start copies again.
fn move_log_out(state: &DB, dir: &Path, cache: &rocksdb::Cache) -> Result<(), Error> {
    let partial = dir.join("log.partial");
    if partial.exists() {
        std::fs::remove_dir_all(&partial).map_err(|e| Error::io(&partial, e))?;
    }
    let log = open_log(&partial, cache)?;
    let mut moved = false;
    for name in cf::LOG_FAMILIES {
        // A store that never had the old layout has nothing to copy.
        let Some(from) = state.cf_handle(name) else {
            continue;
        };
        moved = true;
        let to = log.cf_handle(name).expect("log column family");
        let mut batch = rocksdb::WriteBatch::default();
        for pair in state.iterator_cf(from, rocksdb::IteratorMode::Start) {
            let (key, value) = pair?;
            batch.put_cf(to, key, value);
            if batch.size_in_bytes() >= COPY_BATCH_BYTES {
                log.write(std::mem::take(&mut batch))?;
            }
        }
        log.write(batch)?;
    }
    log.flush_wal(true)?;
    drop(log);
    let log_dir = dir.join("log");
    std::fs::rename(&partial, &log_dir).map_err(|e| Error::io(&log_dir, e))?;
    sync_dir(dir)?;
    if moved {
        tracing::info!(dir = %dir.display(), "moved the Raft log into a database of its own");
    }
    Ok(())
}

/// Makes renames in `dir` durable.
pub(crate) fn sync_dir(dir: &Path) -> Result<(), Error> {
    std::fs::File::open(dir)
        .and_then(|dir| dir.sync_all())
        .map_err(|e| Error::io(dir, e))
}

/// Write-batch size of the log's one-time move into its own database.
const COPY_BATCH_BYTES: usize = 4 << 20;

/// WAL files the log's database keeps for reuse (see [`Store`]): each is about one memtable.
const RECYCLED_WAL_FILES: usize = 2;

/// WAL kept before RocksDB flushes the column families that pin the oldest WAL file. The
/// metadata families take a few bytes per write and would otherwise never fill a memtable,
/// so every WAL file stayed until RocksDB's default limit (four times all memtables, about
/// 2 GiB), and a start replayed all of it. Measured after a million writes
/// (`scripts/bench-scale.sh`): 2.1 GB -> 570 MB per node, restart to a linearizable read
/// 3.2-3.7 s -> 0.37 s.
const MAX_WAL_BYTES: u64 = 256 << 20;

/// The state machine's memtable size, per family of the application's keys. Applied writes
/// skip the WAL, so what a crash loses from memory is re-applied from the log when the node starts again: this bounds that work (at
/// about 1.2 KB of state per 256-byte put, ~14 000 entries). RocksDB's default of 64 MiB
/// made a follower killed after 300 000 puts serve its first linearizable read 1.35 s after it
/// started again (up to ~55 000 entries to re-apply); 16 MiB, 0.57 s.
const STATE_MEMTABLE_BYTES: usize = 16 << 20;

/// The log's memtable size, and so about the size of a WAL file: small enough that WAL files
/// are recycled (see [`Store`]) seconds into a write load rather than after 64 MiB of log.
/// Entries are read back from memory anyway (see the log store).
const LOG_MEMTABLE_BYTES: usize = 8 << 20;

/// Level-0 files of the history family before they are compacted. Every file of the family
/// spans all of it (see [`crate::layout`]), so each compaction from level 0 rewrites the whole
/// family: waiting for 12 files instead of RocksDB's 4 rewrites it a third as often. Reads of
/// it are watchers' range scans, which search the extra files, and point reads of counters,
/// which a write batch rewrote moments before and so find in the memtable; the request records
/// are mirrored in memory and not read.
const HISTORY_LEVEL0_FILES: i32 = 12;

/// Share of the state machine's memtable spent on its Bloom filter.
const MEMTABLE_BLOOM_RATIO: f64 = 0.05;

/// Block cache shared by the column families.
const BLOCK_CACHE_BYTES: usize = 64 << 20;

/// Per column family tuning. The state machine's point lookups mostly miss (a new key, a new
/// lease), so its tables and its memtable carry Bloom filters: without them every miss
/// searched each level's index and data blocks. The log is read by ranges and needs none.
fn family_options(name: &str, cache: &rocksdb::Cache) -> Options {
    let mut table = rocksdb::BlockBasedOptions::default();
    table.set_block_cache(cache);
    let mut opts = Options::default();
    if name == cf::SM_DATA {
        table.set_bloom_filter(10.0, false);
        table.set_whole_key_filtering(true);
        // The same for the memtable, where a miss otherwise walks the skip list.
        opts.set_memtable_prefix_bloom_ratio(MEMTABLE_BLOOM_RATIO);
        opts.set_memtable_whole_key_filtering(true);
    }
    // The history family needs no filters: its histories are read by ranges (watchers) or not
    // at all (request records, mirrored in memory), and its counters are found in the memtable.
    if cf::APP_FAMILIES.contains(&name) {
        opts.set_write_buffer_size(STATE_MEMTABLE_BYTES);
    }
    if name == cf::SM_HISTORY {
        // Writes slow down and stop as many files beyond the trigger as RocksDB's defaults.
        opts.set_level_zero_file_num_compaction_trigger(HISTORY_LEVEL0_FILES);
        opts.set_level_zero_slowdown_writes_trigger(HISTORY_LEVEL0_FILES + 16);
        opts.set_level_zero_stop_writes_trigger(HISTORY_LEVEL0_FILES + 32);
    }
    if name == cf::LOG {
        opts.set_write_buffer_size(LOG_MEMTABLE_BYTES);
    }
    opts.set_block_based_table_factory(&table);
    opts
}

fn dir_size(path: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(path) else {
        return 0;
    };
    entries
        .flatten()
        .map(|entry| match entry.metadata() {
            Ok(meta) if meta.is_dir() => dir_size(&entry.path()),
            // What the file takes on disk, as `du` counts it: RocksDB preallocates its
            // write-ahead logs, tens of MiB each, long before their length says so.
            Ok(meta) => meta.blocks() * 512,
            Err(_) => 0,
        })
        .sum()
}
