//! The bridge between the storage crate's state store and the domain's state machine.
//!
//! The domain implements [`StateMachine`] over raw command bytes; [`Machine`] unwraps log
//! entries for it and adds what every command needs: exactly-once application of retried
//! requests. A proposal with a request id records its reply under that id; the same id
//! proposed again (a client retry after a timeout, a forward that was re-sent) returns the
//! recorded reply without touching the state. Records expire after [`REQUEST_ID_WINDOW`] log
//! entries, counted in log indexes so every node expires the same records at the same entry.
//!
//! Keys starting with a zero byte belong to this module; the domain must not use them.

use std::sync::Arc;

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

/// The storage [`Application`] keel's Raft runs; see the module documentation.
pub struct Machine {
    domain: Arc<dyn StateMachine>,
}

impl Machine {
    pub fn new(domain: Arc<dyn StateMachine>) -> Self {
        Self { domain }
    }

    /// Forgets the request recorded at the entry that just left the window. Every entry
    /// (of any kind) expires exactly one index, so this is a point lookup: a scan from the
    /// oldest record would step over the tombstones of every record deleted before it, which
    /// made each apply slower the longer the cluster ran.
    fn forget_expired_request(index: u64, txn: &mut Txn<'_>) -> Result<(), Error> {
        let Some(expired) = index.checked_sub(REQUEST_ID_WINDOW) else {
            return Ok(());
        };
        let index_key = request_by_index_key(expired);
        if let Some(id) = txn.get(&index_key)? {
            txn.delete(index_key);
            txn.delete([REQUEST_PREFIX, &id].concat());
        }
        Ok(())
    }
}

impl Application<TypeConfig> for Machine {
    fn apply(&self, entry: &Entry, txn: &mut Txn<'_>) -> Result<Reply, Error> {
        let index = entry.index();
        Self::forget_expired_request(index, txn)?;
        let EntryPayload::Normal(proposal) = &entry.payload else {
            return Ok(Reply::default());
        };
        let Some(id) = &proposal.request_id else {
            return Ok(Reply(self.domain.apply(index, &proposal.command, txn)?));
        };
        let key = request_key(id, &proposal.command);
        if let Some(record) = txn.get(&key)? {
            let record: RequestRecord = bincode::deserialize(&record)?;
            return Ok(Reply(record.reply));
        }
        let reply = self.domain.apply(index, &proposal.command, txn)?;
        let record = RequestRecord {
            index,
            reply: reply.clone(),
        };
        txn.put(
            request_by_index_key(index),
            key[REQUEST_PREFIX.len()..].to_vec(),
        );
        txn.put(key, bincode::serialize(&record)?);
        Ok(Reply(reply))
    }
}
