//! The committed log id on a real RocksDB log. The state machine's writes skip the WAL, so
//! after a crash a node rebuilds its state by re-applying the log up to the committed log id it
//! finds. That id must therefore reach the operating system as soon as openraft reports it:
//! were it written later (say with the next append), a node killed in between would come back
//! with less applied than it had served, and its stale reads would go back in time.

use keel_storage::LogStore;
use keel_storage::Store;
use openraft::entry::RaftEntry;
use openraft::storage::IOFlushed;
use openraft::storage::RaftLogStorage;
use openraft::testing::log_id;
use openraft::type_config::alias::EntryOf;
use openraft::type_config::alias::LogIdOf;
use openraft::type_config::TypeConfigExt;
use rocksdb::Options;
use rocksdb::DB;

openraft::declare_raft_types!(
    pub TestConfig:
        D = String,
        R = String,
);

fn committed_at(index: u64) -> Option<LogIdOf<TestConfig>> {
    Some(log_id::<TestConfig>(1, 1, index))
}

async fn append(log: &mut LogStore<TestConfig>, index: u64) {
    let entry = EntryOf::<TestConfig>::new_blank(log_id::<TestConfig>(1, 1, index));
    let (flushed, done) = TestConfig::oneshot();
    log.append([entry], IOFlushed::signal(flushed))
        .await
        .unwrap();
    done.await.unwrap().unwrap();
}

/// The committed log id as a node killed now would find it: the log's database opened
/// read-only from its files beside the running store, which holds whatever reached the
/// operating system, WAL included.
fn committed_on_disk(dir: &std::path::Path) -> Option<LogIdOf<TestConfig>> {
    let db = DB::open_cf_for_read_only(
        &Options::default(),
        dir.join("log"),
        ["raft_log", "raft_meta"],
        false,
    )
    .unwrap();
    let meta = db.cf_handle("raft_meta").unwrap();
    let bytes = db.get_cf(meta, b"committed").unwrap()?;
    bincode::deserialize(&bytes).unwrap()
}

#[tokio::test]
async fn a_reported_commit_is_on_disk_before_the_next_append() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let mut log = store.log_store::<TestConfig>();
    for index in 1..=3 {
        append(&mut log, index).await;
    }
    assert_eq!(committed_on_disk(dir.path()), None);

    log.save_committed(committed_at(2)).await.unwrap();
    assert_eq!(committed_on_disk(dir.path()), committed_at(2));
    log.save_committed(committed_at(3)).await.unwrap();
    assert_eq!(committed_on_disk(dir.path()), committed_at(3));
    assert_eq!(log.read_committed().await.unwrap(), committed_at(3));
}
