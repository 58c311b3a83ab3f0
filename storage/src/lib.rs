//! keel's durable storage: one RocksDB per node holding both the Raft log and the state
//! machine's data.
//!
//! The crate is split the way openraft splits storage: [`LogStore`] implements
//! [`openraft::storage::RaftLogStorage`] (log entries, vote, committed and purge markers) and
//! [`StateStore`] implements [`openraft::storage::RaftStateMachine`] (applied data, last
//! applied log id, membership, snapshots). Both live in the same RocksDB instance but in
//! separate column families. Only the log is written through the WAL, so one `fsync` makes a
//! group of appends durable; the state machine is rebuilt from the log after a crash.
//!
//! The crate is generic over the openraft type configuration and knows nothing of what the
//! commands mean: the domain plugs in through [`Application`], reading and writing keys
//! through a [`Txn`] whose changes land in the same RocksDB write batch as `last_applied`.
//! It knows nothing of HTTP either; the network layer moves [`SnapshotData`] as bytes.

mod entry_cache;
mod error;
mod frozen;
mod keyspace;
mod log_store;
mod snapshot;
mod state_store;
mod txn;

use std::path::Path;
use std::path::PathBuf;
use std::sync::Arc;

use rocksdb::ColumnFamilyDescriptor;
use rocksdb::Options;
use rocksdb::DB;

pub use error::Error;
pub use frozen::FrozenState;
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
    pub const ALL: [&str; 4] = [LOG, LOG_META, SM_META, SM_DATA];
}

/// An opened node store: the RocksDB handle and where snapshot files go.
pub struct Store {
    db: Arc<DB>,
    dir: PathBuf,
}

impl Store {
    /// Opens (creating if missing) the RocksDB store under `dir`.
    pub fn open(dir: &Path) -> Result<Self, Error> {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let mut opts = Options::default();
        opts.create_if_missing(true);
        opts.create_missing_column_families(true);
        opts.set_keep_log_file_num(4);
        opts.increase_parallelism(2);
        opts.set_max_total_wal_size(MAX_WAL_BYTES);
        // The state machine's writes skip the WAL (see the state store), so its data and its
        // `last_applied` are only consistent after a crash if they were flushed together.
        opts.set_atomic_flush(true);
        let cache = rocksdb::Cache::new_lru_cache(BLOCK_CACHE_BYTES);
        let families = cf::ALL
            .iter()
            .map(|name| ColumnFamilyDescriptor::new(*name, family_options(name, &cache)));
        let db = DB::open_cf_descriptors(&opts, dir.join("db"), families)?;
        Ok(Self {
            db: Arc::new(db),
            dir: dir.to_path_buf(),
        })
    }

    /// The Raft log half of the store.
    pub fn log_store<C: openraft::RaftTypeConfig>(&self) -> LogStore<C> {
        LogStore::new(self.db.clone())
    }

    /// The state-machine half of the store, applying entries through `app`.
    pub fn state_store<C, A>(&self, app: A) -> Result<StateStore<C, A>, Error>
    where
        C: openraft::RaftTypeConfig,
        A: Application<C>,
    {
        StateStore::new(self.db.clone(), self.dir.join("snapshots"), app)
    }

    /// Bytes the store occupies on disk (RocksDB files and snapshots).
    pub fn disk_usage(&self) -> u64 {
        dir_size(&self.dir)
    }
}

/// WAL kept before RocksDB flushes the column families that pin the oldest WAL file. The
/// metadata families take a few bytes per write and would otherwise never fill a memtable,
/// so every WAL file stayed until RocksDB's default limit (four times all memtables, about
/// 2 GiB), and a start replayed all of it. Measured after a million writes
/// (`scripts/bench-scale.sh`): 2.1 GB -> 570 MB per node, restart to a linearizable read
/// 3.2-3.7 s -> 0.37 s.
const MAX_WAL_BYTES: u64 = 256 << 20;

/// The state machine's memtable size. Applied writes skip the WAL, so what a crash loses from
/// memory is re-applied from the log when the node starts again: this bounds that work (at
/// about 1.2 KB of state per 256-byte put, ~14 000 entries). RocksDB's default of 64 MiB
/// made a follower killed after 300 000 puts serve its first linearizable read 1.35 s after it
/// started again (up to ~55 000 entries to re-apply); 16 MiB, 0.57 s.
const STATE_MEMTABLE_BYTES: usize = 16 << 20;

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
        opts.set_write_buffer_size(STATE_MEMTABLE_BYTES);
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
            Ok(meta) => meta.len(),
            Err(_) => 0,
        })
        .sum()
}
