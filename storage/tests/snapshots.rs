//! Snapshots end to end on real RocksDB stores: build on one node, ship the bytes the way the
//! network does, verify and install on another.

use std::io::Read;
use std::io::Write;

use futures::stream;
use keel_storage::Application;
use keel_storage::Error;
use keel_storage::KvRead;
use keel_storage::SnapshotFile;
use keel_storage::StateStore;
use keel_storage::Store;
use keel_storage::Txn;
use openraft::entry::RaftEntry;
use openraft::storage::RaftStateMachine;
use openraft::type_config::alias::EntryOf;
use openraft::EntryPayload;
use openraft::RaftSnapshotBuilder;

openraft::declare_raft_types!(
    pub TestConfig:
        D = String,
        R = String,
);

/// Each command is a key, stored with its log index as the value.
struct KeyPerEntry;

impl Application<TestConfig> for KeyPerEntry {
    fn apply(&self, entry: &EntryOf<TestConfig>, txn: &mut Txn<'_>) -> Result<String, Error> {
        if let EntryPayload::Normal(key) = &entry.payload {
            txn.put(
                key.clone().into_bytes(),
                entry.index().to_string().into_bytes(),
            );
        }
        Ok(String::new())
    }
}

fn entries(range: std::ops::Range<u64>) -> Vec<EntryOf<TestConfig>> {
    range
        .map(|i| {
            EntryOf::<TestConfig>::new_normal(
                openraft::testing::log_id::<TestConfig>(1, 1, i),
                format!("k{i:04}"),
            )
        })
        .collect()
}

async fn apply(state: &mut StateStore<TestConfig, KeyPerEntry>, range: std::ops::Range<u64>) {
    let batch: Vec<_> = entries(range).into_iter().map(|e| Ok((e, None))).collect();
    state.apply(stream::iter(batch)).await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_snapshot_shipped_as_bytes_installs_whole_on_another_store() {
    let dir_a = tempfile::tempdir().unwrap();
    let store_a = Store::open(dir_a.path()).unwrap();
    let mut a = store_a.state_store(KeyPerEntry).unwrap();
    apply(&mut a, 1..301).await;
    let built = a.build_snapshot().await.unwrap();
    assert_eq!(built.meta.last_log_id.unwrap().index(), 300);

    // What the leader sends is the *current* snapshot, whose header was read to learn its
    // metadata; streaming it must still start at byte 0.
    let current = a.get_current_snapshot().await.unwrap().unwrap();
    assert_eq!(current.meta, built.meta);
    let mut bytes = Vec::new();
    current
        .snapshot
        .reopen()
        .unwrap()
        .read_to_end(&mut bytes)
        .unwrap();
    assert!(bytes.starts_with(b"KEELSNAP1"));
    // Reading the header did not move the handle openraft holds (it once did, and a
    // follower received a snapshot without its first megabyte, and stopped).
    let mut from_handle = Vec::new();
    (&current.snapshot.file)
        .read_to_end(&mut from_handle)
        .unwrap();
    assert_eq!(from_handle, bytes);

    let dir_b = tempfile::tempdir().unwrap();
    let store_b = Store::open(dir_b.path()).unwrap();
    let mut b = store_b.state_store(KeyPerEntry).unwrap();
    apply(&mut b, 1..5).await;

    // A transfer cut short is refused before it can reach the state machine.
    let truncated = SnapshotFile::create(b.incoming_snapshot_path()).unwrap();
    (&truncated.file)
        .write_all(&bytes[..bytes.len() / 2])
        .unwrap();
    assert!(truncated.verify().is_err());

    let received = SnapshotFile::create(b.incoming_snapshot_path()).unwrap();
    (&received.file).write_all(&bytes).unwrap();
    received.verify().unwrap();
    b.install_snapshot(&current.meta, received).await.unwrap();

    let (applied, _) = b.applied_state().await.unwrap();
    assert_eq!(applied.unwrap().index(), 300);
    let reader = b.reader();
    let pairs = reader.scan(b"k", b"l", 1000).unwrap();
    assert_eq!(pairs.len(), 300);
    assert_eq!(reader.get(b"k0150").unwrap().unwrap(), b"150");
    // The installed snapshot is now this store's current one.
    let installed = b.get_current_snapshot().await.unwrap().unwrap();
    assert_eq!(installed.meta, current.meta);

    // Applying continues after the snapshot.
    apply(&mut b, 301..311).await;
    assert_eq!(b.reader().scan(b"k", b"l", 1000).unwrap().len(), 310);
}
