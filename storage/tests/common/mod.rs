//! Helpers the storage tests share.

use std::path::Path;

use rocksdb::ColumnFamilyDescriptor;
use rocksdb::Options;
use rocksdb::DB;

/// Opens the RocksDB database at `path` directly, with exactly `families` (created if
/// missing), as a build that knows only those would.
pub fn open_raw(path: &Path, families: &[&str]) -> Result<DB, rocksdb::Error> {
    let mut opts = Options::default();
    opts.create_if_missing(true);
    opts.create_missing_column_families(true);
    let families = families
        .iter()
        .map(|name| ColumnFamilyDescriptor::new(*name, Options::default()));
    DB::open_cf_descriptors(&opts, path, families)
}
