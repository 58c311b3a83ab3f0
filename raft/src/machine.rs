//! The bridge between the storage crate's state store and the domain's state machine.
//!
//! The domain implements [`StateMachine`] over raw command bytes; [`Machine`] unwraps log
//! entries for it and adds what every command needs: exactly-once application of retried
//! requests. A proposal with a request id records its reply under that id; the same id
//! proposed again (a client retry after a timeout, a forward that was re-sent) returns the
//! recorded reply without touching the state. Records expire after [`REQUEST_ID_WINDOW`] log
//! entries, counted in log indexes so every node expires the same records at the same entry.
//!
//! Almost every proposal carries a new id, so the lookup almost always misses. The ids on
//! record are therefore mirrored in memory ([`RequestWindow`]): a new id costs no RocksDB
//! read, and expiry knows which record to delete without reading its index entry. These two
//! reads were a third of the time apply took.
//!
//! Keys starting with a zero byte belong to this module; the domain must not use them.

use std::collections::HashMap;
use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::Mutex;

use keel_storage::Application;
use keel_storage::Error;
use keel_storage::KvRead;
use keel_storage::Txn;
use openraft::entry::RaftEntry;
use openraft::EntryPayload;
use serde::Deserialize;
use serde::Serialize;

use crate::types::Entry;
use crate::types::Reply;
use crate::types::TypeConfig;

/// How many log entries a request id is remembered for.
pub const REQUEST_ID_WINDOW: u64 = 100_000;

/// Longest request id accepted, in bytes.
pub const MAX_REQUEST_ID_LEN: usize = 128;

const REQUEST_PREFIX: &[u8] = b"\x00req/";
const REQUEST_BY_INDEX_PREFIX: &[u8] = b"\x00req-index/";

/// The domain's deterministic state machine.
pub trait StateMachine: Send + Sync + 'static {
    /// Applies the command at log `index` and returns the encoded reply. No clocks,
    /// randomness or I/O: everything that varies is inside `command`.
    fn apply(&self, index: u64, command: &[u8], txn: &mut Txn<'_>) -> Result<Vec<u8>, Error>;
}

#[derive(Serialize, Deserialize)]
struct RequestRecord {
    index: u64,
    #[serde(with = "serde_bytes")]
    reply: Vec<u8>,
}

/// A request id names one command: the same id with another command (two clients that
/// picked the same key, a client reusing keys) is another request, not a retry.
fn request_key(id: &str, command: &[u8]) -> Vec<u8> {
    let fingerprint = format!("/{:016x}", fnv1a(command));
    [REQUEST_PREFIX, id.as_bytes(), fingerprint.as_bytes()].concat()
}

/// FNV-1a: stable across nodes, versions and platforms, unlike std's hashers.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, byte| {
        (hash ^ u64::from(*byte)).wrapping_mul(0x0100_0000_01b3)
    })
}

fn request_by_index_key(index: u64) -> Vec<u8> {
    [REQUEST_BY_INDEX_PREFIX, &index.to_be_bytes()].concat()
}

/// The request records the store holds, mirrored in memory; see the module documentation.
///
/// It is loaded from the store by the first apply, and again whenever the entries it sees
/// are not consecutive: after a restart, or after a snapshot replaced the store's contents.
/// It may run ahead of the store within an apply batch; a batch that fails to commit stops
/// the node, so it never has to be rolled back.
#[derive(Default)]
struct RequestWindow {
    /// The entry this window expects next.
    next: u64,
    /// Record keys (without [`REQUEST_PREFIX`]) in the order they were recorded.
    recorded: VecDeque<(u64, Vec<u8>)>,
    /// Record key to the latest index that recorded it.
    latest: HashMap<Vec<u8>, u64>,
    /// Bytes of the record keys in `recorded`.
    key_bytes: usize,
}

impl RequestWindow {
    fn load(read: &impl KvRead, next: u64) -> Result<Self, Error> {
        let end = [REQUEST_BY_INDEX_PREFIX, &[0xff; 9]].concat();
        let mut window = Self {
            next,
            ..Self::default()
        };
        for (key, record) in read.scan(REQUEST_BY_INDEX_PREFIX, &end, usize::MAX)? {
            let index = key[REQUEST_BY_INDEX_PREFIX.len()..]
                .try_into()
                .map(u64::from_be_bytes)
                .map_err(|_| Error::Corrupt(format!("bad request index key {key:?}")))?;
            window.record(index, record);
        }
        Ok(window)
    }

    fn record(&mut self, index: u64, record: Vec<u8>) {
        self.key_bytes += record.len();
        self.latest.insert(record.clone(), index);
        self.recorded.push_back((index, record));
    }

    /// Forgets (in the store too) every record that left the window at entry `index`.
    fn expire(&mut self, index: u64, txn: &mut Txn<'_>) {
        let Some(oldest_kept) = index.checked_sub(REQUEST_ID_WINDOW - 1) else {
            return;
        };
        while let Some((recorded_at, _)) = self.recorded.front() {
            if *recorded_at >= oldest_kept {
                break;
            }
            let (recorded_at, record) = self.recorded.pop_front().expect("front exists");
            self.key_bytes -= record.len();
            txn.delete(request_by_index_key(recorded_at));
            // A retry recorded again after an earlier record of the same id stays.
            if self.latest.get(&record) == Some(&recorded_at) {
                self.latest.remove(&record);
                txn.delete([REQUEST_PREFIX, &record].concat());
            }
        }
    }
}

/// What the in-memory mirror of the request records holds, for `/metrics`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RememberedRequests {
    /// Request ids on record.
    pub ids: usize,
    /// Estimated heap bytes of the mirror: each key is held twice, plus per-entry overhead.
    pub bytes: usize,
}

/// Rough per-record overhead of the mirror's queue slot and hash-map entry.
const MIRROR_ENTRY_OVERHEAD: usize = 80;

/// The storage [`Application`] keel's Raft runs; see the module documentation.
pub struct Machine {
    domain: Arc<dyn StateMachine>,
    requests: Mutex<Option<RequestWindow>>,
}

impl Machine {
    pub fn new(domain: Arc<dyn StateMachine>) -> Self {
        Self {
            domain,
            requests: Mutex::default(),
        }
    }

    /// What the mirror of request records holds; empty until the first entry is applied.
    pub fn remembered_requests(&self) -> RememberedRequests {
        // A panic in apply stops the node anyway; /metrics still answers meanwhile.
        let requests = self
            .requests
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        requests
            .as_ref()
            .map_or_else(RememberedRequests::default, |window| RememberedRequests {
                ids: window.latest.len(),
                bytes: 2 * window.key_bytes + MIRROR_ENTRY_OVERHEAD * window.recorded.len(),
            })
    }
}

impl Application<TypeConfig> for Machine {
    fn apply(&self, entry: &Entry, txn: &mut Txn<'_>) -> Result<Reply, Error> {
        let index = entry.index();
        let mut requests = self.requests.lock().expect("request window");
        let requests = match &mut *requests {
            Some(window) if window.next == index => window,
            stale => stale.insert(RequestWindow::load(txn, index)?),
        };
        requests.next = index + 1;
        requests.expire(index, txn);
        let EntryPayload::Normal(proposal) = &entry.payload else {
            return Ok(Reply::default());
        };
        let Some(id) = &proposal.request_id else {
            return Ok(Reply(self.domain.apply(index, &proposal.command, txn)?));
        };
        let key = request_key(id, &proposal.command);
        let record = key[REQUEST_PREFIX.len()..].to_vec();
        if requests.latest.contains_key(&record) {
            if let Some(stored) = txn.get(&key)? {
                let stored: RequestRecord = bincode::deserialize(&stored)?;
                return Ok(Reply(stored.reply));
            }
        }
        let reply = self.domain.apply(index, &proposal.command, txn)?;
        let stored = RequestRecord {
            index,
            reply: reply.clone(),
        };
        txn.put(request_by_index_key(index), record.clone());
        txn.put(key, bincode::serialize(&stored)?);
        requests.record(index, record);
        Ok(Reply(reply))
    }
}
