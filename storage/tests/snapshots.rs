//! Snapshots end to end on real RocksDB stores: build on one node, ship the bytes the way the
//! network does, verify and install on another.

use std::io::Read;
use std::io::Write;

use futures::stream;
use keel_storage::Application;
use keel_storage::Error;
use keel_storage::KvRead;
use keel_storage::SnapshotData;
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

/// Each command is a key, stored with its log index as the value. Keys `k0000` to `k0099` are
/// a history and `k0150` to `k0159` counters, so every test has keys in both of the state's
/// families.
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

    fn history_prefixes(&self) -> Vec<Vec<u8>> {
        vec![b"k00".to_vec()]
    }

    fn counter_prefixes(&self) -> Vec<Vec<u8>> {
        vec![b"k015".to_vec()]
    }
}

/// [`KeyPerEntry`] as a keel that had no histories stores it: every key in the data family.
struct KeyPerEntryWithoutHistories;

impl Application<TestConfig> for KeyPerEntryWithoutHistories {
    fn apply(&self, entry: &EntryOf<TestConfig>, txn: &mut Txn<'_>) -> Result<String, Error> {
        KeyPerEntry.apply(entry, txn)
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

async fn apply<A: Application<TestConfig>>(
    state: &mut StateStore<TestConfig, A>,
    range: std::ops::Range<u64>,
) {
    let batch: Vec<_> = entries(range).into_iter().map(|e| Ok((e, None))).collect();
    state.apply(stream::iter(batch)).await.unwrap();
}

/// A state store in `dir` that has applied the entries of `range`.
async fn state_store_with(
    dir: &std::path::Path,
    range: std::ops::Range<u64>,
) -> StateStore<TestConfig, KeyPerEntry> {
    let mut state = reopen(dir);
    apply(&mut state, range).await;
    state
}

/// The whole snapshot, read from its start as the network sends it.
fn bytes_of(snapshot: &SnapshotData) -> Vec<u8> {
    let mut bytes = Vec::new();
    snapshot.open().unwrap().read_to_end(&mut bytes).unwrap();
    bytes
}

/// The state store of the node whose data directory is `dir`, as a restart opens it.
fn reopen(dir: &std::path::Path) -> StateStore<TestConfig, KeyPerEntry> {
    Store::open(dir).unwrap().state_store(KeyPerEntry).unwrap()
}

/// The same, as a keel that had no histories opens it.
fn reopen_without_histories(
    dir: &std::path::Path,
) -> StateStore<TestConfig, KeyPerEntryWithoutHistories> {
    Store::open(dir)
        .unwrap()
        .state_store(KeyPerEntryWithoutHistories)
        .unwrap()
}

/// The snapshot files in a store's data directory.
fn snapshot_files(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut files: Vec<_> = std::fs::read_dir(dir.join("snapshots"))
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "snap"))
        .collect();
    files.sort();
    files
}

#[tokio::test(flavor = "multi_thread")]
async fn a_snapshot_shipped_as_bytes_installs_whole_on_another_store() {
    let dir_a = tempfile::tempdir().unwrap();
    let mut a = state_store_with(dir_a.path(), 1..301).await;
    let built = a.build_snapshot().await.unwrap();
    assert_eq!(built.meta.last_log_id.unwrap().index(), 300);

    // A build copies nothing: the state is written to a file only once a follower needs it.
    assert!(snapshot_files(dir_a.path()).is_empty());
    // Writes applied after the build are not part of the snapshot.
    apply(&mut a, 301..321).await;

    // What the leader sends is the *current* snapshot.
    let current = a.get_current_snapshot().await.unwrap().unwrap();
    assert_eq!(current.meta, built.meta);
    let bytes = bytes_of(&current.snapshot);
    assert!(bytes.starts_with(b"KEELSNAP2"));
    assert_eq!(snapshot_files(dir_a.path()).len(), 1);
    // A second transfer streams the same file from its start.
    assert_eq!(bytes_of(&current.snapshot), bytes);

    let dir_b = tempfile::tempdir().unwrap();
    let mut b = state_store_with(dir_b.path(), 1..5).await;

    // A transfer cut short is refused before it can reach the state machine.
    let truncated = SnapshotFile::create(b.incoming_snapshot_path()).unwrap();
    (&truncated.file)
        .write_all(&bytes[..bytes.len() / 2])
        .unwrap();
    assert!(truncated.verify().is_err());

    let received = SnapshotFile::create(b.incoming_snapshot_path()).unwrap();
    (&received.file).write_all(&bytes).unwrap();
    received.verify().unwrap();
    b.install_snapshot(&current.meta, SnapshotData::File(received))
        .await
        .unwrap();

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

/// A snapshot file with one byte flipped in the value of the pair at about `fraction` of its
/// length: every length still adds up, so only the checksum tells it from the original.
fn damaged_midway(bytes: &[u8], fraction: f64) -> Vec<u8> {
    let u32_at = |at: usize| u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
    let mut at = 9 + 4 + u32_at(9);
    while (at as f64) < bytes.len() as f64 * fraction {
        at += 8 + u32_at(at) + u32_at(at + 4);
    }
    let mut damaged = bytes.to_vec();
    damaged[at + 8 + u32_at(at)] ^= 0xff;
    damaged
}

#[tokio::test(flavor = "multi_thread")]
async fn an_install_cut_short_refuses_reads_and_is_finished_on_restart() {
    // About 10 MiB of state, so the install writes several batches before it stops.
    let dir_a = tempfile::tempdir().unwrap();
    let mut a = state_store_with(dir_a.path(), 0..0).await;
    let long_keys: Vec<_> = (1..20_001)
        .map(|i| {
            let key = format!("k{i:05}{}", "x".repeat(500));
            Ok((
                EntryOf::<TestConfig>::new_normal(
                    openraft::testing::log_id::<TestConfig>(1, 1, i),
                    key,
                ),
                None,
            ))
        })
        .collect();
    a.apply(stream::iter(long_keys)).await.unwrap();
    let snapshot = a.build_snapshot().await.unwrap();
    let bytes = bytes_of(&snapshot.snapshot);

    let dir_b = tempfile::tempdir().unwrap();
    let mut b = state_store_with(dir_b.path(), 1..5).await;
    // A transfer that damaged a byte is refused on arrival.
    let damaged = damaged_midway(&bytes, 0.6);
    let received = SnapshotFile::create(b.incoming_snapshot_path()).unwrap();
    (&received.file).write_all(&damaged).unwrap();
    assert!(
        received.verify().is_err(),
        "the checksum catches the flipped byte"
    );
    // Damage after the check (on disk) is caught while loading, after several batches.
    let received = SnapshotFile::create(b.incoming_snapshot_path()).unwrap();
    (&received.file).write_all(&bytes).unwrap();
    received.verify().unwrap();
    std::fs::write(&received.path, &damaged).unwrap();
    let failed = b
        .install_snapshot(&snapshot.meta, SnapshotData::File(received))
        .await;
    assert!(failed.is_err(), "the checksum stops the install");
    // Part of the snapshot is loaded and the old keys are gone: reads must not see that.
    assert!(matches!(b.reader().get(b"k0001"), Err(Error::Installing)));
    assert!(matches!(
        b.reader().scan(b"k", b"l", 10),
        Err(Error::Installing)
    ));
    // Nor may a snapshot be built from it, and the build must not wait for it forever.
    assert!(b.build_snapshot().await.is_err());
    drop(b);

    // A restart loads the same file again, and refuses to start on a file it cannot load.
    let store_b = Store::open(dir_b.path()).unwrap();
    let refused = store_b
        .state_store(KeyPerEntry)
        .err()
        .expect("cannot finish");
    assert!(
        refused.to_string().contains("remove its data directory"),
        "{refused}"
    );
    drop(store_b);

    // Had the node been killed while loading an intact file, the restart finishes the job.
    let snapshots = dir_b.path().join("snapshots");
    let installing = std::fs::read_dir(&snapshots)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .find(|path| path.extension().is_none_or(|ext| ext != "snap"))
        .expect("the file being installed is kept");
    std::fs::write(&installing, &bytes).unwrap();
    let store_b = Store::open(dir_b.path()).unwrap();
    let mut b = store_b.state_store(KeyPerEntry).unwrap();
    let (applied, _) = b.applied_state().await.unwrap();
    assert_eq!(applied, snapshot.meta.last_log_id);
    let reader = b.reader();
    assert_eq!(reader.scan(b"k", b"l", 30_000).unwrap().len(), 20_000);
    assert_eq!(reader.get(b"k0001").unwrap(), None, "the old state is gone");
    let current = b.get_current_snapshot().await.unwrap().unwrap();
    assert_eq!(current.meta, snapshot.meta);
    assert!(!installing.exists(), "published under its snapshot name");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_first_version_snapshot_without_checksum_still_installs() {
    let dir_a = tempfile::tempdir().unwrap();
    let mut a = state_store_with(dir_a.path(), 1..101).await;
    let snapshot = a.build_snapshot().await.unwrap();
    // Version 1 is version 2 without the CRC after the end marker.
    let mut v1 = bytes_of(&snapshot.snapshot);
    v1[..9].copy_from_slice(b"KEELSNAP1");
    v1.truncate(v1.len() - 4);

    let dir_b = tempfile::tempdir().unwrap();
    let mut b = state_store_with(dir_b.path(), 0..0).await;
    let received = SnapshotFile::create(b.incoming_snapshot_path()).unwrap();
    (&received.file).write_all(&v1).unwrap();
    received.verify().unwrap();
    b.install_snapshot(&snapshot.meta, SnapshotData::File(received))
        .await
        .unwrap();
    assert_eq!(b.reader().scan(b"k", b"l", 1000).unwrap().len(), 100);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_newer_snapshot_replaces_the_file_and_a_restart_starts_from_its_own_state() {
    let dir = tempfile::tempdir().unwrap();
    let mut a = state_store_with(dir.path(), 1..101).await;
    let first = a.build_snapshot().await.unwrap();
    let old_file = bytes_of(&first.snapshot);
    assert_eq!(snapshot_files(dir.path()).len(), 1);

    // A build with nothing applied since is the same snapshot.
    let again = a.build_snapshot().await.unwrap();
    assert_eq!(again.meta, first.meta);
    assert_eq!(bytes_of(&again.snapshot), old_file);

    apply(&mut a, 101..201).await;
    let second = a.build_snapshot().await.unwrap();
    assert_eq!(second.meta.last_log_id.unwrap().index(), 200);
    assert!(
        snapshot_files(dir.path()).is_empty(),
        "the superseded snapshot's file is removed"
    );
    let newer_file = bytes_of(&second.snapshot);
    assert_ne!(newer_file, old_file);

    // After a restart the node's snapshot is the state it starts with: here exactly the last
    // snapshot, whose file it keeps.
    drop((a, first, again, second));
    let mut a = reopen(dir.path());
    let current = a.get_current_snapshot().await.unwrap().unwrap();
    assert_eq!(current.meta.last_log_id.unwrap().index(), 200);
    assert_eq!(bytes_of(&current.snapshot), newer_file);

    // With entries applied past it, the restarted node's snapshot is its newer state, and the
    // older file goes.
    apply(&mut a, 201..251).await;
    drop(a); // a clean close flushes the state

    let mut a = reopen(dir.path());
    let current = a.get_current_snapshot().await.unwrap().unwrap();
    assert_eq!(current.meta.last_log_id.unwrap().index(), 250);
    assert!(snapshot_files(dir.path()).is_empty());
    let dir_b = tempfile::tempdir().unwrap();
    let mut b = state_store_with(dir_b.path(), 0..0).await;
    b.install_snapshot(&current.meta, current.snapshot)
        .await
        .unwrap();
    assert_eq!(b.reader().scan(b"k", b"l", 1000).unwrap().len(), 250);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_store_written_without_histories_moves_them_to_their_family_when_it_opens() {
    let dir = tempfile::tempdir().unwrap();
    let mut old = reopen_without_histories(dir.path());
    apply(&mut old, 1..301).await;
    drop(old);

    // Reads of a history look in its family only, so a key left behind would be lost.
    for _ in 0..2 {
        let state = reopen(dir.path());
        let reader = state.reader();
        assert_eq!(reader.get(b"k0050").unwrap().unwrap(), b"50");
        assert_eq!(reader.get(b"k0155").unwrap().unwrap(), b"155");
        assert_eq!(reader.scan(b"k00", b"k01", 1000).unwrap().len(), 99);
        assert_eq!(reader.scan(b"k014", b"k016", 1000).unwrap().len(), 20);
        assert_eq!(reader.scan(b"k", b"l", 1000).unwrap().len(), 300);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn snapshots_move_between_stores_with_and_without_histories() {
    let with = tempfile::tempdir().unwrap();
    let mut a = state_store_with(with.path(), 1..301).await;
    let from_histories = a.build_snapshot().await.unwrap();

    let without = tempfile::tempdir().unwrap();
    let mut b = reopen_without_histories(without.path());
    apply(&mut b, 1..5).await;
    b.install_snapshot(&from_histories.meta, from_histories.snapshot)
        .await
        .unwrap();
    assert_eq!(b.reader().scan(b"k", b"l", 1000).unwrap().len(), 300);
    assert_eq!(b.reader().get(b"k0050").unwrap().unwrap(), b"50");

    apply(&mut b, 301..311).await;
    let from_one_family = b.build_snapshot().await.unwrap();
    let into = tempfile::tempdir().unwrap();
    let mut c = state_store_with(into.path(), 1..5).await;
    c.install_snapshot(&from_one_family.meta, from_one_family.snapshot)
        .await
        .unwrap();
    assert_eq!(c.reader().scan(b"k", b"l", 1000).unwrap().len(), 310);
    assert_eq!(c.reader().get(b"k0050").unwrap().unwrap(), b"50");
    assert_eq!(c.reader().get(b"k0155").unwrap().unwrap(), b"155");
    assert_eq!(c.reader().get(b"k0305").unwrap().unwrap(), b"305");
}
