//! Leases: liveness for keys and registered nodes.
//!
//! A lease has an id (chosen by the proposer), a TTL and a set of attachments. The state
//! machine stores only that: no clock is read here and no expiry time is replicated. Time
//! lives in the leader's lessor (`src/lessor.rs`), which keeps a deadline per lease in
//! memory, moves it on every refresh without touching the log, and proposes `Expire` for the
//! leases whose deadline passed. `Expire` deletes everything attached to them, so every node
//! deletes the same things at the same log index. A new leader starts every deadline afresh
//! at now + TTL, so a leader change never expires a lease early (etcd's lessor does the same).

use std::collections::BTreeSet;

use keel_storage::Error as StorageError;
use keel_storage::KvRead;
use keel_storage::Txn;
use serde::Deserialize;
use serde::Serialize;

use super::decode;
use super::encode;
use super::kv;
use super::registry;

const PREFIX: &[u8] = b"lease/";

/// What dies with a lease.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Attachment {
    Key(String),
    RegisteredNode { cluster: String, id: u64 },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    pub id: u64,
    /// The log index that granted it: an id revoked and granted again is another lease. The
    /// writes of one entry share its index, so a grant, revoke and grant again of one id in one
    /// entry leave a lease with the first grant's identity; the lessor only ever sees the state
    /// after a whole entry, so it cannot tell them apart and need not.
    pub granted_at: u64,
    pub ttl_ms: u64,
    pub attachments: BTreeSet<Attachment>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum LeaseCommand {
    Grant {
        id: u64,
        ttl_ms: u64,
    },
    Revoke {
        id: u64,
    },
    /// Proposed by the leader's lessor for leases whose deadline passed, each named by its id
    /// and the log index that granted it.
    Expire {
        leases: Vec<(u64, u64)>,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum LeaseError {
    NotFound,
    AlreadyExists,
}

fn lease_key(id: u64) -> Vec<u8> {
    [PREFIX, &id.to_be_bytes()].concat()
}

pub fn get(read: &impl KvRead, id: u64) -> Result<Option<Lease>, StorageError> {
    read.get(&lease_key(id))?.map(|b| decode(&b)).transpose()
}

/// Every lease, in id order.
pub fn all(read: &impl KvRead) -> Result<Vec<Lease>, StorageError> {
    let end = [PREFIX, &[0xff; 9]].concat();
    read.scan(PREFIX, &end, usize::MAX)?
        .into_iter()
        .map(|(_, v)| decode(&v))
        .collect()
}

fn put(txn: &mut Txn<'_>, lease: &Lease) -> Result<(), StorageError> {
    txn.put(lease_key(lease.id), encode(lease)?);
    Ok(())
}

pub(crate) fn attach(
    txn: &mut Txn<'_>,
    id: u64,
    attachment: Attachment,
) -> Result<bool, StorageError> {
    let Some(mut lease) = get(txn, id)? else {
        return Ok(false);
    };
    lease.attachments.insert(attachment);
    put(txn, &lease)?;
    Ok(true)
}

pub(crate) fn detach(
    txn: &mut Txn<'_>,
    id: u64,
    attachment: &Attachment,
) -> Result<(), StorageError> {
    if let Some(mut lease) = get(txn, id)? {
        lease.attachments.remove(attachment);
        put(txn, &lease)?;
    }
    Ok(())
}

pub(crate) fn grant(
    txn: &mut Txn<'_>,
    id: u64,
    ttl_ms: u64,
    granted_at: u64,
) -> Result<Result<Lease, LeaseError>, StorageError> {
    if get(txn, id)?.is_some() {
        return Ok(Err(LeaseError::AlreadyExists));
    }
    let lease = Lease {
        id,
        granted_at,
        ttl_ms,
        attachments: BTreeSet::new(),
    };
    put(txn, &lease)?;
    Ok(Ok(lease))
}

/// Deletes the lease and everything attached to it.
pub(crate) fn revoke(
    txn: &mut Txn<'_>,
    id: u64,
) -> Result<Result<Lease, LeaseError>, StorageError> {
    let Some(lease) = get(txn, id)? else {
        return Ok(Err(LeaseError::NotFound));
    };
    txn.delete(lease_key(id));
    for attachment in &lease.attachments {
        match attachment {
            Attachment::Key(key) => kv::remove_leased(txn, key, id)?,
            Attachment::RegisteredNode { cluster, id } => registry::remove(txn, cluster, *id)?,
        }
    }
    Ok(Ok(lease))
}

pub fn apply(
    command: LeaseCommand,
    index: u64,
    txn: &mut Txn<'_>,
) -> Result<Result<Vec<Lease>, LeaseError>, StorageError> {
    Ok(match command {
        LeaseCommand::Grant { id, ttl_ms } => grant(txn, id, ttl_ms, index)?.map(|l| vec![l]),
        LeaseCommand::Revoke { id } => revoke(txn, id)?.map(|l| vec![l]),
        LeaseCommand::Expire { leases } => {
            let mut expired = Vec::new();
            for (id, granted_at) in leases {
                // A lease revoked meanwhile is gone; one granted again under the same id is
                // another lease, with a deadline of its own.
                if get(txn, id)?.is_some_and(|lease| lease.granted_at == granted_at) {
                    expired.extend(revoke(txn, id)?);
                }
            }
            Ok(expired)
        }
    })
}
