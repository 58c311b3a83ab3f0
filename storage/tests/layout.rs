//! A store written when the Raft log and the state machine shared one RocksDB opens with the
//! log moved into a database of its own, byte for byte, and the state left in place.

use std::path::Path;

mod common;

use keel_storage::Store;
use rocksdb::IteratorMode;
use rocksdb::Options;
use rocksdb::DB;

const LEGACY_FAMILIES: [&str; 4] = ["raft_log", "raft_meta", "sm_meta", "sm_data"];

type Pairs = Vec<(Vec<u8>, Vec<u8>)>;

fn open_raw(path: &Path, families: &[&str]) -> DB {
    common::open_raw(path, families).unwrap()
}

fn pairs(db: &DB, family: &str) -> Pairs {
    let cf = db.cf_handle(family).unwrap();
    db.iterator_cf(cf, IteratorMode::Start)
        .map(|pair| {
            let (key, value) = pair.unwrap();
            (key.to_vec(), value.to_vec())
        })
        .collect()
}

/// A store of the old layout: everything in `dir/db`. Returns what it wrote to each family,
/// in key order.
fn write_legacy_store(dir: &Path) -> [Pairs; 4] {
    let db = open_raw(&dir.join("db"), &LEGACY_FAMILIES);
    let contents: [Pairs; 4] = [
        (1..=500u64)
            .map(|i| (i.to_be_bytes().to_vec(), vec![i as u8; 300]))
            .collect(),
        vec![
            (b"last_purged".to_vec(), b"none".to_vec()),
            (b"vote".to_vec(), b"term 3".to_vec()),
        ],
        vec![(b"last_applied".to_vec(), b"500".to_vec())],
        vec![(b"k1".to_vec(), b"v1".to_vec())],
    ];
    for (family, pairs) in LEGACY_FAMILIES.iter().zip(&contents) {
        let cf = db.cf_handle(family).unwrap();
        for (key, value) in pairs {
            db.put_cf(cf, key, value).unwrap();
        }
    }
    contents
}

#[test]
fn a_store_of_the_old_layout_opens_with_its_log_moved_out_whole() {
    let dir = tempfile::tempdir().unwrap();
    let [log, log_meta, state_meta, state_data] = write_legacy_store(dir.path());
    // A move an earlier start did not finish.
    std::fs::create_dir_all(dir.path().join("log.partial")).unwrap();
    std::fs::write(dir.path().join("log.partial/CURRENT"), b"garbage").unwrap();

    drop(Store::open(dir.path()).unwrap());
    // Opening again finds the new layout and moves nothing.
    drop(Store::open(dir.path()).unwrap());

    assert!(!dir.path().join("log.partial").exists());
    let moved = open_raw(&dir.path().join("log"), &["raft_log", "raft_meta"]);
    assert_eq!(pairs(&moved, "raft_log"), log);
    assert_eq!(pairs(&moved, "raft_meta"), log_meta);
    drop(moved);
    let mut opts = Options::default();
    opts.create_if_missing(false);
    let mut families = DB::list_cf(&opts, dir.path().join("db")).unwrap();
    families.sort();
    assert_eq!(
        families,
        [
            "default",
            "keel_store_format",
            "sm_data",
            "sm_history",
            "sm_meta"
        ],
        "the log left the state's database"
    );
    let state = open_raw(
        &dir.path().join("db"),
        &["sm_meta", "sm_data", "sm_history", "keel_store_format"],
    );
    assert_eq!(pairs(&state, "sm_meta"), state_meta);
    assert_eq!(pairs(&state, "sm_data"), state_data);
}
