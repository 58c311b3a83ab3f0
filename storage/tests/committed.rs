//! The committed log id on a real RocksDB log: reported to the store after every commit, it is
//! written only with the next append, and a restarted node reads the last one written.

use keel_storage::LogStore;
use keel_storage::Store;
use openraft::entry::RaftEntry;
use openraft::storage::IOFlushed;
use openraft::storage::RaftLogStorage;
use openraft::testing::log_id;
use openraft::type_config::alias::EntryOf;
use openraft::type_config::alias::LogIdOf;
use openraft::type_config::TypeConfigExt;

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

/// The log of the node whose data directory is `dir`, as a restart opens it.
fn reopen(dir: &std::path::Path) -> LogStore<TestConfig> {
    Store::open(dir).unwrap().log_store()
}

#[tokio::test]
async fn the_committed_log_id_is_written_with_the_next_append() {
    let dir = tempfile::tempdir().unwrap();
    {
        let mut log = reopen(dir.path());
        append(&mut log, 1).await;
        append(&mut log, 2).await;
        log.save_committed(committed_at(1)).await.unwrap();
        // This node reads what it was told at once, written or not.
        assert_eq!(log.read_committed().await.unwrap(), committed_at(1));
        append(&mut log, 3).await;
        log.save_committed(committed_at(2)).await.unwrap();
        log.save_committed(committed_at(3)).await.unwrap();
        assert_eq!(log.read_committed().await.unwrap(), committed_at(3));
    }
    // Commits after the last append were not written: a restart re-applies up to the marker
    // it finds and learns the rest from the leader.
    let mut log = reopen(dir.path());
    assert_eq!(log.read_committed().await.unwrap(), committed_at(1));

    log.save_committed(committed_at(3)).await.unwrap();
    append(&mut log, 4).await;
    drop(log);
    let mut log = reopen(dir.path());
    assert_eq!(log.read_committed().await.unwrap(), committed_at(3));
}

#[tokio::test]
async fn a_store_that_never_committed_reads_none() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = reopen(dir.path());
    append(&mut log, 1).await;
    drop(log);
    let mut log = reopen(dir.path());
    assert_eq!(log.read_committed().await.unwrap(), None);
}
