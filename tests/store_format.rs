//! A keel node refuses, at start-up, a data directory a newer keel wrote, and says what to do,
//! rather than opening a store it could misread.

use std::process::Command;
use std::time::Duration;
use std::time::Instant;

use keel_storage::Store;
use keel_storage::STORE_FORMAT;
use rocksdb::Options;
use rocksdb::DB;

#[test]
fn a_node_refuses_a_data_directory_of_a_newer_store_format() {
    let data = tempfile::tempdir().unwrap();
    drop(Store::open(data.path()).unwrap());
    let db_path = data.path().join("db");
    {
        let families = DB::list_cf(&Options::default(), &db_path).unwrap();
        let db = DB::open_cf(&Options::default(), &db_path, families).unwrap();
        let marker = db.cf_handle("keel_store_format").unwrap();
        db.put_cf(marker, b"version", (STORE_FORMAT + 1).to_be_bytes())
            .unwrap();
    }

    let mut child = Command::new(env!("CARGO_BIN_EXE_keel"))
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(data.path())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > Duration::from_secs(30) {
            child.kill().unwrap();
            panic!("keel kept running on a store of a newer format");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let stderr = std::io::read_to_string(child.stderr.take().unwrap()).unwrap();
    assert!(!status.success(), "{stderr}");
    assert!(
        stderr.contains("written by a newer keel")
            && stderr.contains(&format!("store format is {}", STORE_FORMAT + 1))
            && stderr.contains("Run that keel or a later one"),
        "{stderr}"
    );
    assert!(
        !data.path().join("identity.json").exists(),
        "the refused node set itself up anyway"
    );
}
