//! Exactly-once application of retried requests, on real RocksDB stores: a request id is
//! applied once while its record is in the window, across a restart and after a snapshot
//! replaced the store, and is forgotten (in the store too) once it leaves the window; records
//! of the earlier layout are converted. Entries of several proposals apply each once, and the
//! bound on ids remembered trims whole entries alike on a node that restarted.

use std::io::Read;
use std::io::Write;
use std::sync::Arc;

use futures::stream;
use keel_raft::machine::Machine;
use keel_raft::machine::EXPIRE_EVERY;
use keel_raft::machine::MAX_REMEMBERED_REQUESTS;
use keel_raft::machine::REQUEST_ID_WINDOW;
use keel_raft::types::Entry;
use keel_raft::types::Proposal;
use keel_raft::types::Proposals;
use keel_raft::types::TypeConfig;
use keel_raft::StateMachine;
use keel_storage::Error;
use keel_storage::KvRead;
use keel_storage::SnapshotData;
use keel_storage::SnapshotFile;
use keel_storage::StateStore;
use keel_storage::Store;
use keel_storage::Txn;
use openraft::entry::RaftEntry;
use openraft::storage::RaftStateMachine;
use openraft::RaftSnapshotBuilder;

/// Counts the commands applied to it. `legacy ID INDEX` also writes a request record of the
/// earlier layout, as a store written by an earlier keel holds it: request `ID` with the
/// command `x`, recorded at `INDEX`, replied `legacy reply`.
struct Counter;

fn count(read: &impl KvRead) -> u64 {
    read.get(b"count")
        .unwrap()
        .map_or(0, |b| u64::from_be_bytes(b.try_into().unwrap()))
}

impl StateMachine for Counter {
    fn apply(&self, _index: u64, command: &[u8], txn: &mut Txn<'_>) -> Result<Vec<u8>, Error> {
        let count = count(txn) + 1;
        txn.put(b"count".to_vec(), count.to_be_bytes().to_vec());
        if let Some(legacy) = std::str::from_utf8(command)
            .unwrap()
            .strip_prefix("legacy ")
        {
            let (id, index) = legacy.split_once(' ').unwrap();
            let index: u64 = index.parse().unwrap();
            let record_key = format!("\x00req/{id}/{:016x}", fnv1a(b"x"));
            let record = bincode::serialize(&(index, b"legacy reply".to_vec())).unwrap();
            txn.put(record_key.clone().into_bytes(), record);
            let index_key = [b"\x00req-index/".as_slice(), &index.to_be_bytes()].concat();
            txn.put(index_key, record_key.into_bytes());
        }
        Ok(Vec::new())
    }
}

type State = StateStore<TypeConfig, Machine>;

fn open(dir: &std::path::Path) -> State {
    Store::open(dir)
        .unwrap()
        .state_store(Machine::new(Arc::new(Counter)))
        .unwrap()
}

fn entry(index: u64, request_id: Option<&str>, command: &str) -> Entry {
    batch(index, &[(request_id, command)])
}

/// An entry of several proposals: (request id, command) each.
fn batch(index: u64, proposals: &[(Option<&str>, &str)]) -> Entry {
    let proposals: Vec<Proposal> = proposals
        .iter()
        .map(|(request_id, command)| Proposal {
            request_id: request_id.map(Into::into),
            command: command.as_bytes().to_vec().into(),
        })
        .collect();
    Entry::new_normal(
        openraft::testing::log_id::<TypeConfig>(1, 1, index),
        Proposals::from(proposals),
    )
}

/// Applies `entries` as one batch and returns how many commands the domain has applied.
async fn apply(state: &mut State, entries: Vec<Entry>) -> u64 {
    let batch: Vec<_> = entries.into_iter().map(|e| Ok((e, None))).collect();
    state.apply(stream::iter(batch)).await.unwrap();
    count(&state.reader())
}

/// Writes without a request id, from `from` up to and including `to`.
async fn fill(state: &mut State, from: u64, to: u64) {
    let mut next = from;
    while next <= to {
        let last = (next + 9_999).min(to);
        apply(
            state,
            (next..=last).map(|i| entry(i, None, "fill")).collect(),
        )
        .await;
        next = last + 1;
    }
}

/// An implementation of its own of the fingerprint the earlier layout's keys carry.
fn fnv1a(bytes: &[u8]) -> u64 {
    let mut hash = 0xcbf2_9ce4_8422_2325_u64;
    for byte in bytes {
        hash = (hash ^ u64::from(*byte)).wrapping_mul(0x0100_0000_01b3);
    }
    hash
}

fn stored(state: &State, prefix: &[u8]) -> Vec<(Vec<u8>, Vec<u8>)> {
    let end = [prefix, &[0xff]].concat();
    state.reader().scan(prefix, &end, usize::MAX).unwrap()
}

fn stored_records(state: &State) -> usize {
    stored(state, b"\x00rq/").len()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_request_id_is_applied_once_until_it_leaves_the_window() {
    let dir = tempfile::tempdir().unwrap();
    let mut state = open(dir.path());
    let a = |index| entry(index, Some("a"), "x");
    // The same id with another command is another request.
    let applied = apply(&mut state, vec![a(1), a(2), entry(3, Some("a"), "y")]).await;
    assert_eq!(applied, 2);

    // A restart keeps the records.
    drop(state);
    let mut state = open(dir.path());
    assert_eq!(apply(&mut state, vec![a(4)]).await, 2);

    // The last entry that still remembers index 1, then the first that does not.
    fill(&mut state, 5, REQUEST_ID_WINDOW - 1).await;
    let filled = REQUEST_ID_WINDOW - 5;
    assert_eq!(
        apply(&mut state, vec![a(REQUEST_ID_WINDOW)]).await,
        2 + filled
    );
    assert_eq!(stored_records(&state), 2);
    assert_eq!(state.app().remembered_requests().ids, 2);
    let past = apply(&mut state, vec![a(REQUEST_ID_WINDOW + 1)]).await;
    assert_eq!(past, 3 + filled);
    // Index 1's record is forgotten, but stays in the store until the next range deletion.
    assert_eq!(stored_records(&state), 3);
    let remembered = state.app().remembered_requests();
    assert_eq!(remembered.ids, 2);
    assert!(remembered.bytes > 0, "{remembered:?}");
    assert_eq!(
        apply(&mut state, vec![a(REQUEST_ID_WINDOW + 2)]).await,
        past
    );

    // The entry at the next multiple of EXPIRE_EVERY deletes index 1's and index 3's records
    // (both left the window by then); the one made at REQUEST_ID_WINDOW + 1 stays.
    let sweep = (REQUEST_ID_WINDOW + 2).next_multiple_of(EXPIRE_EVERY);
    fill(&mut state, REQUEST_ID_WINDOW + 3, sweep - 1).await;
    assert_eq!(stored_records(&state), 3);
    fill(&mut state, sweep, sweep).await;
    assert_eq!(stored_records(&state), 1);
    assert_eq!(state.app().remembered_requests().ids, 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn records_of_the_earlier_layout_are_converted_when_the_window_is_loaded() {
    let dir = tempfile::tempdir().unwrap();
    let mut state = open(dir.path());
    apply(&mut state, vec![entry(1, None, "legacy a 1")]).await;
    drop(state);

    let mut state = open(dir.path());
    // "a" with "x" was recorded at index 1: a retry is answered from the record.
    assert_eq!(apply(&mut state, vec![entry(2, Some("a"), "x")]).await, 1);
    assert_eq!(stored(&state, b"\x00req/"), vec![]);
    assert_eq!(stored(&state, b"\x00req-index/"), vec![]);
    let records = stored(&state, b"\x00rq/");
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].1, b"legacy reply");
    // Another command under the same id is another request.
    assert_eq!(apply(&mut state, vec![entry(3, Some("a"), "y")]).await, 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn records_arrive_with_a_snapshot() {
    let dir_a = tempfile::tempdir().unwrap();
    let mut a = open(dir_a.path());
    let applied = apply(
        &mut a,
        vec![
            entry(1, Some("a"), "x"),
            entry(2, None, "z"),
            entry(3, None, "z"),
        ],
    )
    .await;
    assert_eq!(applied, 3);
    a.build_snapshot().await.unwrap();
    let current = a.get_current_snapshot().await.unwrap().unwrap();
    let mut bytes = Vec::new();
    current
        .snapshot
        .open()
        .unwrap()
        .read_to_end(&mut bytes)
        .unwrap();

    // b has applied entries of its own (its window is loaded) before the snapshot lands.
    let dir_b = tempfile::tempdir().unwrap();
    let mut b = open(dir_b.path());
    apply(&mut b, vec![entry(1, Some("b"), "x"), entry(2, None, "z")]).await;
    let received = SnapshotFile::create(b.incoming_snapshot_path()).unwrap();
    (&received.file).write_all(&bytes).unwrap();
    b.install_snapshot(&current.meta, SnapshotData::File(received))
        .await
        .unwrap();
    assert_eq!(apply(&mut b, vec![entry(4, Some("a"), "x")]).await, 3);
    assert_eq!(apply(&mut b, vec![entry(5, Some("b"), "x")]).await, 4);
}

#[tokio::test(flavor = "multi_thread")]
async fn proposals_sharing_an_entry_apply_in_order_and_each_once() {
    let dir = tempfile::tempdir().unwrap();
    let mut state = open(dir.path());
    let first = batch(
        1,
        &[
            (Some("a"), "x"),
            (Some("b"), "x"),
            (Some("a"), "x"),
            (None, "z"),
        ],
    );
    assert_eq!(apply(&mut state, vec![first]).await, 3);
    let second = batch(2, &[(Some("b"), "x"), (Some("c"), "x"), (Some("a"), "y")]);
    assert_eq!(apply(&mut state, vec![second]).await, 5);
    assert_eq!(state.app().remembered_requests().ids, 4);
}

/// Applies entries `from..=to` of `PER_ENTRY` proposals, ids `e{index}-{n}`.
async fn fill_batches(state: &mut State, from: u64, to: u64) {
    for first in (from..=to).step_by(100) {
        let entries = (first..=(first + 99).min(to))
            .map(|index| {
                let ids: Vec<String> = (0..PER_ENTRY).map(|n| format!("e{index}-{n}")).collect();
                let proposals: Vec<_> = ids.iter().map(|id| (Some(id.as_str()), "x")).collect();
                batch(index, &proposals)
            })
            .collect();
        apply(state, entries).await;
    }
}

const PER_ENTRY: u64 = 64;

#[tokio::test(flavor = "multi_thread")]
async fn at_most_so_many_ids_are_remembered_by_whole_entries_alike_after_a_restart() {
    let last = 2100;
    let kept_entries = (MAX_REMEMBERED_REQUESTS as u64).div_ceil(PER_ENTRY);
    let sweep = last / EXPIRE_EVERY * EXPIRE_EVERY;
    assert!(
        sweep > kept_entries + 1,
        "the bound trims before the store's last sweep"
    );
    let oldest_kept = last - kept_entries + 1;

    let dir_a = tempfile::tempdir().unwrap();
    let mut a = open(dir_a.path());
    fill_batches(&mut a, 1, last).await;
    let dir_b = tempfile::tempdir().unwrap();
    let mut b = open(dir_b.path());
    fill_batches(&mut b, 1, 1000).await;
    drop(b);
    let mut b = open(dir_b.path());
    fill_batches(&mut b, 1001, last).await;
    drop(b);
    let mut b = open(dir_b.path());

    for state in [&mut a, &mut b] {
        let applied = count(&state.reader());
        let kept = format!("e{oldest_kept}-{}", PER_ENTRY - 1);
        let forgotten = format!("e{}-0", oldest_kept - 1);
        assert_eq!(
            apply(state, vec![entry(last + 1, Some(&kept), "x")]).await,
            applied
        );
        let remembered = state.app().remembered_requests().ids;
        assert_eq!(remembered as u64, kept_entries * PER_ENTRY);
        assert_eq!(
            apply(state, vec![entry(last + 2, Some(&forgotten), "x")]).await,
            applied + 1
        );
    }
    assert_eq!(a.app().remembered_requests(), b.app().remembered_requests());
    // The sweep deleted the records the bound had dropped by then, on both alike.
    assert!(stored_records(&a) < (last as usize) * PER_ENTRY as usize);
    assert_eq!(stored(&a, b"\x00rq/"), stored(&b, b"\x00rq/"));
}
