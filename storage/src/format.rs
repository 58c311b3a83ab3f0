//! The store's format marker: what keeps a keel from opening a data directory it would misread.
//!
//! Some changes to what a store holds cannot be read by the builds before them: the counters
//! moved into the history family (an earlier build finds no revision and starts it over), and
//! log entries carry several proposals (an earlier build reads one). Going back to such a build
//! after an upgrade would not fail; it would corrupt the node's state quietly.
//!
//! So the state's database holds one more column family, [`FAMILY`], with the number of the
//! newest format the store was opened with ([`STORE_FORMAT`]). RocksDB refuses to open a
//! database without naming every column family it has, so every build from before the marker
//! fails to start on a store this build opened, with an error that names the family. Builds
//! from this one on compare the number instead and refuse a store of a newer format, or with a
//! column family they do not know, before they change anything in it.
//!
//! This guards a node's own store. It cannot make going back possible: a node of an earlier
//! build cannot follow a cluster whose log holds entries of several proposals either, even
//! with an empty store (see `keel_raft`'s entry formats). Upgrade; do not downgrade.
//!
//! A build that changes the format in a way the builds before it would misread raises
//! [`STORE_FORMAT`]. The marker is this node's own: it is not part of the replicated state, and
//! snapshots neither carry nor replace it.

use std::path::Path;

use rocksdb::Options;
use rocksdb::WriteOptions;
use rocksdb::DB;

use crate::Error;

/// The marker's column family. Its name is what a build from before the marker prints when it
/// refuses the store ("Column families not opened: keel_store_format").
pub(crate) const FAMILY: &str = "keel_store_format";

/// The newest store format this build reads and writes:
/// 1. The log in a database of its own; histories and counters in the history family; log
///    entries of several proposals.
pub const STORE_FORMAT: u32 = 1;

const VERSION_KEY: &[u8] = b"version";

/// Refuses the database at `path` if a later build wrote it: a column family this build does
/// not know, or a store format newer than [`STORE_FORMAT`]. Reads only: the marker is read
/// through a read-only open, because a read-write open already changes the database (it
/// replays the WAL, writes a new MANIFEST, creates the families it names).
pub(crate) fn check(path: &Path, existing: &[String], known: &[&str]) -> Result<(), Error> {
    if let Some(unknown) = existing.iter().find(|name| !known.contains(&name.as_str())) {
        return Err(Error::NewerStore(format!(
            "it has a column family this keel does not know ({unknown})"
        )));
    }
    if !existing.iter().any(|name| name == FAMILY) {
        return Ok(());
    }
    // A read-only open may name some of the families only; this one loads no other's files.
    let db = DB::open_cf_for_read_only(&Options::default(), path, [FAMILY], false)?;
    match read(&db)? {
        Some(found) if found > STORE_FORMAT => Err(Error::NewerStore(format!(
            "its store format is {found}, and this keel reads formats up to {STORE_FORMAT}"
        ))),
        _ => Ok(()),
    }
}

/// Records this build's format in a store [`check`] accepted, durably, before anything else
/// in the store changes.
pub(crate) fn mark(db: &DB) -> Result<(), Error> {
    if read(db)? == Some(STORE_FORMAT) {
        return Ok(());
    }
    let family = db.cf_handle(FAMILY).expect("format column family");
    let mut synced = WriteOptions::default();
    synced.set_sync(true);
    db.put_cf_opt(family, VERSION_KEY, STORE_FORMAT.to_be_bytes(), &synced)?;
    // The state's other writes skip the WAL; flushed, this one pins no WAL file.
    db.flush_cf(family)?;
    Ok(())
}

fn read(db: &DB) -> Result<Option<u32>, Error> {
    let family = db.cf_handle(FAMILY).expect("format column family");
    db.get_cf(family, VERSION_KEY)?
        .map(|bytes| {
            bytes
                .try_into()
                .map(u32::from_be_bytes)
                .map_err(|bytes| Error::Corrupt(format!("bad store format marker {bytes:?}")))
        })
        .transpose()
}
