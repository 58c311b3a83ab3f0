//! A store this build opened cannot be opened by the builds before the format marker, which
//! would misread it; a store of a newer format, or with a column family this build does not
//! know, is refused without a change to its files.

use std::path::Path;

mod common;

use keel_storage::Store;
use keel_storage::STORE_FORMAT;
use rocksdb::DB;

/// The state database's families as the builds before the marker opened them.
const FAMILIES_BEFORE_THE_MARKER: [&str; 3] = ["sm_meta", "sm_data", "sm_history"];

fn open_state_raw(dir: &Path, families: &[&str]) -> Result<DB, rocksdb::Error> {
    common::open_raw(&dir.join("db"), families)
}

fn marker(db: &DB) -> Option<Vec<u8>> {
    let family = db.cf_handle("keel_store_format").unwrap();
    db.get_cf(family, b"version").unwrap()
}

/// The names and sizes of the files in `dir`, sorted.
fn files(dir: &Path) -> Vec<(String, u64)> {
    let mut files: Vec<(String, u64)> = std::fs::read_dir(dir)
        .unwrap()
        .map(|entry| {
            let entry = entry.unwrap();
            let name = entry.file_name().to_string_lossy().into_owned();
            (name, entry.metadata().unwrap().len())
        })
        .collect();
    files.sort();
    files
}

fn refusal(dir: &Path) -> String {
    match Store::open(dir) {
        Ok(_) => panic!("the store opened"),
        Err(err) => err.to_string(),
    }
}

#[test]
fn a_build_from_before_the_marker_cannot_open_a_store_this_build_opened() {
    let dir = tempfile::tempdir().unwrap();
    drop(Store::open(dir.path()).unwrap());

    let err = open_state_raw(dir.path(), &FAMILIES_BEFORE_THE_MARKER)
        .expect_err("an earlier build opened the store");
    assert!(
        err.to_string().contains("keel_store_format"),
        "the refusal names the marker: {err}"
    );

    let mut with_marker = FAMILIES_BEFORE_THE_MARKER.to_vec();
    with_marker.push("keel_store_format");
    let db = open_state_raw(dir.path(), &with_marker).unwrap();
    assert_eq!(marker(&db), Some(STORE_FORMAT.to_be_bytes().to_vec()));
}

#[test]
fn a_store_of_a_newer_format_is_refused_and_left_as_it_was() {
    let dir = tempfile::tempdir().unwrap();
    drop(Store::open(dir.path()).unwrap());
    let mut families = FAMILIES_BEFORE_THE_MARKER.to_vec();
    families.push("keel_store_format");
    let newer = (STORE_FORMAT + 1).to_be_bytes();
    {
        let db = open_state_raw(dir.path(), &families).unwrap();
        let family = db.cf_handle("keel_store_format").unwrap();
        db.put_cf(family, b"version", newer).unwrap();
    }

    let files_before = files(&dir.path().join("db"));
    let err = refusal(dir.path());
    assert!(err.contains("written by a newer keel"), "{err}");
    assert!(
        err.contains(&format!("store format is {}", STORE_FORMAT + 1)),
        "{err}"
    );
    assert_eq!(
        files(&dir.path().join("db")),
        files_before,
        "the refusal changed the database's files"
    );

    let db = open_state_raw(dir.path(), &families).unwrap();
    assert_eq!(
        marker(&db),
        Some(newer.to_vec()),
        "the marker was rewritten"
    );
}

#[test]
fn a_store_with_a_column_family_this_build_does_not_know_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    drop(Store::open(dir.path()).unwrap());
    let mut families = FAMILIES_BEFORE_THE_MARKER.to_vec();
    families.extend(["keel_store_format", "from_a_later_keel"]);
    drop(open_state_raw(dir.path(), &families).unwrap());

    let err = refusal(dir.path());
    assert!(err.contains("written by a newer keel"), "{err}");
    assert!(err.contains("from_a_later_keel"), "{err}");
}

#[test]
fn a_store_from_before_the_marker_is_marked_when_opened() {
    let dir = tempfile::tempdir().unwrap();
    drop(open_state_raw(dir.path(), &FAMILIES_BEFORE_THE_MARKER).unwrap());

    drop(Store::open(dir.path()).unwrap());
    drop(Store::open(dir.path()).unwrap());

    let mut families = FAMILIES_BEFORE_THE_MARKER.to_vec();
    families.push("keel_store_format");
    let db = open_state_raw(dir.path(), &families).unwrap();
    assert_eq!(marker(&db), Some(STORE_FORMAT.to_be_bytes().to_vec()));
}
