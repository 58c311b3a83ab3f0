//! The revisioned key-value store (`/v1/kv`), modelled on etcd's: one store-wide revision that
//! every write bumps, and per key the revision that created it, the one that last changed
//! it and how many times it changed. Compare-and-set compares the key's `mod_revision`;
//! `prev_revision = 0` means "only if absent".

use keel_storage::Error as StorageError;
use keel_storage::KvRead;
use keel_storage::Txn;
use serde::Deserialize;
use serde::Serialize;

use super::decode;
use super::encode;

const PREFIX: &[u8] = b"kv/";
const REVISION_KEY: &[u8] = b"kv-meta/revision";

#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum KvCommand {
    Put {
        key: String,
        value: String,
        prev_revision: Option<u64>,
    },
    Delete {
        key: String,
        prev_revision: Option<u64>,
    },
}

/// A stored key with its revisions.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyValue {
    pub key: String,
    pub value: String,
    pub create_revision: u64,
    pub mod_revision: u64,
    pub version: u64,
}

/// The outcome of a successful write.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct KvWrite {
    /// The store's revision after the write.
    pub revision: u64,
    /// The key as written (put) or as it was before (delete).
    pub kv: KeyValue,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum KvError {
    /// The compare-and-set failed; `current` is the key's `mod_revision` (0 if absent).
    RevisionMismatch {
        current: u64,
    },
    NotFound,
}

fn data_key(key: &str) -> Vec<u8> {
    [PREFIX, key.as_bytes()].concat()
}

/// The smallest byte string greater than every string starting with `prefix`.
fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < u8::MAX {
            end.push(last + 1);
            return end;
        }
    }
    vec![u8::MAX; 64]
}

/// The store's current revision (0 before the first write).
pub fn revision(read: &impl KvRead) -> Result<u64, StorageError> {
    read.get(REVISION_KEY)?.map_or(Ok(0), |b| decode(&b))
}

pub fn get(read: &impl KvRead, key: &str) -> Result<Option<KeyValue>, StorageError> {
    read.get(&data_key(key))?.map(|b| decode(&b)).transpose()
}

/// Keys in `[from, to)` (or, without `to`, every key starting with `prefix`), at most `limit`,
/// and whether more follow.
pub fn range(
    read: &impl KvRead,
    prefix: &str,
    from: Option<&str>,
    limit: usize,
) -> Result<(Vec<KeyValue>, bool), StorageError> {
    let start = data_key(from.filter(|f| *f > prefix).unwrap_or(prefix));
    let end = prefix_end(&data_key(prefix));
    let mut pairs = read.scan(&start, &end, limit.saturating_add(1))?;
    let more = pairs.len() > limit;
    pairs.truncate(limit);
    let kvs = pairs
        .into_iter()
        .map(|(_, v)| decode(&v))
        .collect::<Result<_, _>>()?;
    Ok((kvs, more))
}

pub fn apply(
    command: KvCommand,
    txn: &mut Txn<'_>,
) -> Result<Result<KvWrite, KvError>, StorageError> {
    let (key, prev_revision) = match &command {
        KvCommand::Put {
            key, prev_revision, ..
        }
        | KvCommand::Delete { key, prev_revision } => (key.clone(), *prev_revision),
    };
    let current = get(txn, &key)?;
    let current_revision = current.as_ref().map_or(0, |kv| kv.mod_revision);
    if prev_revision.is_some_and(|prev| prev != current_revision) {
        return Ok(Err(KvError::RevisionMismatch {
            current: current_revision,
        }));
    }
    let revision = revision(txn)? + 1;
    let kv = match command {
        KvCommand::Put { key, value, .. } => {
            let kv = KeyValue {
                create_revision: current.as_ref().map_or(revision, |kv| kv.create_revision),
                version: current.as_ref().map_or(1, |kv| kv.version + 1),
                mod_revision: revision,
                key,
                value,
            };
            txn.put(data_key(&kv.key), encode(&kv)?);
            kv
        }
        KvCommand::Delete { key, .. } => {
            let Some(kv) = current else {
                return Ok(Err(KvError::NotFound));
            };
            txn.delete(data_key(&key));
            kv
        }
    };
    txn.put(REVISION_KEY.to_vec(), encode(&revision)?);
    Ok(Ok(KvWrite { revision, kv }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_end_is_the_next_prefix() {
        assert_eq!(prefix_end(b"kv/a"), b"kv/b".to_vec());
        assert_eq!(prefix_end(b"kv/a\xff"), b"kv/b".to_vec());
        assert_eq!(prefix_end(b"kv/"), b"kv0".to_vec());
    }
}
