//! The revisioned key-value store (`/v1/kv`), modelled on etcd's: one store-wide revision that
//! every change bumps, and per key the revision that created it, the one that last changed
//! it and how many times it changed. Compare-and-set compares the key's `mod_revision`;
//! `prev_revision = 0` means "only if absent". A key may be attached to a lease and dies with
//! it.
//!
//! Every change is also recorded as an event under its revision, so watchers can ask for
//! "everything after revision N" and get each change exactly once, in order, from any node.
//! The most recent [`HISTORY`] revisions are kept; older ones are compacted as new ones are
//! written, at the same revision on every node.

use keel_storage::prefix_end;
use keel_storage::Error as StorageError;
use keel_storage::KvRead;
use keel_storage::Txn;
use serde::Deserialize;
use serde::Serialize;

use super::decode;
use super::encode;
use super::lease;
use super::lease::Attachment;

const PREFIX: &[u8] = b"kv/";
/// The events: a history (see [`keel_storage::Application::history_prefixes`]), written in
/// revision order.
pub(super) const EVENT_PREFIX: &[u8] = b"kv-event/";
/// The store's counters (see [`keel_storage::Application::counter_prefixes`]).
pub(super) const META_PREFIX: &[u8] = b"kv-meta/";
const REVISION_KEY: &[u8] = b"kv-meta/revision";

/// Revisions of history kept for watchers.
pub const HISTORY: u64 = 100_000;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum KvCommand {
    Put {
        key: String,
        value: String,
        prev_revision: Option<u64>,
        lease: Option<u64>,
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
    /// The lease the key is attached to, 0 for none.
    pub lease: u64,
}

/// The outcome of a successful write.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct KvWrite {
    /// The store's revision after the write.
    pub revision: u64,
    /// The key as written (put) or as it was before (delete). A put's reply leaves the value
    /// out (empty): the proposer has the value it sent, and every reply is stored with its
    /// request's record and shipped back from the leader, so carrying the value again cost
    /// about 5 % of a write's CPU (paired put (64) runs, 5 of 6 better, +6.8 % writes summed).
    pub kv: KeyValue,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum KvError {
    /// The compare-and-set failed; `current` is the key's `mod_revision` (0 if absent).
    RevisionMismatch {
        current: u64,
    },
    NotFound,
    LeaseNotFound,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EventKind {
    Put,
    Delete,
}

/// One change, as watchers see it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    pub revision: u64,
    #[serde(rename = "type")]
    pub kind: EventKind,
    /// The key after a put; before a delete.
    pub kv: KeyValue,
}

fn data_key(key: &str) -> Vec<u8> {
    [PREFIX, key.as_bytes()].concat()
}

fn event_key(revision: u64) -> Vec<u8> {
    [EVENT_PREFIX, &revision.to_be_bytes()].concat()
}

/// The key applying `command` reads first.
pub(super) fn read_key(command: &KvCommand) -> Vec<u8> {
    match command {
        KvCommand::Put { key, .. } | KvCommand::Delete { key, .. } => data_key(key),
    }
}

/// The store's current revision (0 before the first write).
pub fn revision(read: &impl KvRead) -> Result<u64, StorageError> {
    read.get(REVISION_KEY)?.map_or(Ok(0), |b| decode(&b))
}

/// The oldest revision whose event is still kept (history before it is compacted).
pub fn oldest_kept(revision: u64) -> u64 {
    revision.saturating_sub(HISTORY - 1).max(1)
}

pub fn get(read: &impl KvRead, key: &str) -> Result<Option<KeyValue>, StorageError> {
    read.get(&data_key(key))?.map(|b| decode(&b)).transpose()
}

/// How much of the store one listing page holds at most (past the first key): a page of the
/// most keys at the largest values would be 10 GiB in memory at once.
pub const PAGE_BYTES: usize = 4 << 20;

/// Keys starting with `prefix` from `from` on, at most `limit` and about [`PAGE_BYTES`] of
/// them, and whether more may follow.
pub fn range(
    read: &impl KvRead,
    prefix: &str,
    from: Option<&str>,
    limit: usize,
) -> Result<(Vec<KeyValue>, bool), StorageError> {
    let start = data_key(from.filter(|f| *f > prefix).unwrap_or(prefix));
    let end = prefix_end(&data_key(prefix));
    let mut pairs = read.scan_up_to(&start, &end, limit.saturating_add(1), PAGE_BYTES)?;
    let held: usize = pairs
        .iter()
        .map(|(key, value)| key.len() + value.len())
        .sum();
    let more = pairs.len() > limit || held >= PAGE_BYTES;
    pairs.truncate(limit);
    let kvs = pairs
        .into_iter()
        .map(|(_, v)| decode(&v))
        .collect::<Result<_, _>>()?;
    Ok((kvs, more))
}

/// The events with revision in `(after, ..]`, oldest first, at most `limit` and up to the one
/// that crosses `bytes` of the store. The first one
/// is `after + 1` unless that history is compacted.
pub fn events_after(
    read: &impl KvRead,
    after: u64,
    limit: usize,
    bytes: usize,
) -> Result<Vec<Event>, StorageError> {
    let start = event_key(after.saturating_add(1));
    let end = prefix_end(EVENT_PREFIX);
    read.scan_up_to(&start, &end, limit, bytes)?
        .into_iter()
        .map(|(_, bytes)| decode(&bytes))
        .collect()
}

/// Bumps the revision and records `event` for watchers, compacting the oldest.
fn record(txn: &mut Txn<'_>, kind: EventKind, mut kv: KeyValue) -> Result<KvWrite, StorageError> {
    let revision = revision(txn)? + 1;
    if kind == EventKind::Put {
        kv.mod_revision = revision;
        if kv.create_revision == 0 {
            kv.create_revision = revision;
        }
        txn.put(data_key(&kv.key), encode(&kv)?);
    } else {
        txn.delete(data_key(&kv.key));
    }
    txn.put(REVISION_KEY.to_vec(), encode(&revision)?);
    let event = Event { revision, kind, kv };
    txn.put(event_key(revision), encode(&event)?);
    // One deletion per revision, though a range deletion now and then would write less: a
    // node of an earlier build deletes one event per revision too, and after installing a
    // snapshot that still held older events it would leave a gap inside its history.
    if let Some(compacted) = revision.checked_sub(HISTORY) {
        txn.delete(event_key(compacted));
    }
    Ok(KvWrite {
        revision,
        kv: event.kv,
    })
}

/// Deletes `key` because lease `lease` ended (if the key still belongs to it).
pub(crate) fn remove_leased(txn: &mut Txn<'_>, key: &str, lease: u64) -> Result<(), StorageError> {
    if let Some(kv) = get(txn, key)?.filter(|kv| kv.lease == lease) {
        record(txn, EventKind::Delete, kv)?;
    }
    Ok(())
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
    let old_lease = current.as_ref().map_or(0, |kv| kv.lease);
    let attachment = Attachment::Key(key.clone());
    match command {
        KvCommand::Put {
            key, value, lease, ..
        } => {
            let lease = lease.unwrap_or(0);
            if lease != 0 && !lease::attach(txn, lease, attachment.clone())? {
                return Ok(Err(KvError::LeaseNotFound));
            }
            if old_lease != 0 && old_lease != lease {
                lease::detach(txn, old_lease, &attachment)?;
            }
            let kv = KeyValue {
                create_revision: current.as_ref().map_or(0, |kv| kv.create_revision),
                version: current.as_ref().map_or(1, |kv| kv.version + 1),
                mod_revision: 0,
                key,
                value,
                lease,
            };
            let mut written = record(txn, EventKind::Put, kv)?;
            written.kv.value.clear();
            Ok(Ok(written))
        }
        KvCommand::Delete { .. } => {
            let Some(kv) = current else {
                return Ok(Err(KvError::NotFound));
            };
            if old_lease != 0 {
                lease::detach(txn, old_lease, &attachment)?;
            }
            Ok(Ok(record(txn, EventKind::Delete, kv)?))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_write_names_the_key_it_reads_so_that_it_is_read_ahead() {
        use keel_raft::StateMachine;
        let domain = crate::domain::Domain::default();
        let keys_read = |command: KvCommand| {
            domain.keys_read(&encode(&crate::domain::Command::Kv(command)).unwrap())
        };
        let put = KvCommand::Put {
            key: "a".into(),
            value: "1".into(),
            prev_revision: None,
            lease: None,
        };
        let delete = KvCommand::Delete {
            key: "b".into(),
            prev_revision: Some(3),
        };
        assert_eq!(keys_read(put), [data_key("a")]);
        assert_eq!(keys_read(delete), [data_key("b")]);
        assert!(domain.keys_read(b"not a command").is_empty());
    }

    #[test]
    fn the_revision_is_one_of_the_domain_s_counters_and_no_key_or_event_is() {
        use crate::domain::is_counter;
        assert!(is_counter(REVISION_KEY));
        for key in ["a", "-meta/revision", "kv-meta/revision"] {
            assert!(!is_counter(&data_key(key)), "{key}");
        }
        assert!(!is_counter(&event_key(1)));
    }

    #[test]
    fn history_keeps_the_last_revisions() {
        assert_eq!(oldest_kept(5), 1);
        assert_eq!(oldest_kept(HISTORY), 1);
        assert_eq!(oldest_kept(HISTORY + 10), 11);
    }

    /// Puts applied through the state machine to a real store, in entries of 997, checked
    /// after each entry: every event of the last [`HISTORY`] revisions is there, in order, and
    /// none older.
    #[tokio::test]
    async fn events_of_the_kept_history_stay_and_older_ones_go() {
        use futures::stream;
        use keel_raft::machine::Machine;
        use keel_raft::types::Entry;
        use keel_raft::types::Proposal;
        use keel_raft::types::TypeConfig;
        use openraft::entry::RaftEntry;
        use openraft::storage::RaftStateMachine;

        const PER_ENTRY: u64 = 997;
        let dir = tempfile::tempdir().unwrap();
        let machine = Machine::new(std::sync::Arc::new(crate::domain::Domain::default()));
        let mut state = keel_storage::Store::open(dir.path())
            .unwrap()
            .state_store::<TypeConfig, _>(machine)
            .unwrap();
        let mut revision = 0;
        for index in 1.. {
            let proposals: Vec<Proposal> = (0..PER_ENTRY)
                .map(|n| {
                    let put = KvCommand::Put {
                        key: format!("k{}", n % 10),
                        value: String::new(),
                        prev_revision: None,
                        lease: None,
                    };
                    Proposal {
                        request_id: None,
                        command: encode(&crate::domain::Command::Kv(put)).unwrap().into(),
                    }
                })
                .collect();
            let log_id = openraft::testing::log_id::<TypeConfig>(1, 1, index);
            let entry = Entry::new_normal(log_id, proposals.into());
            state
                .apply(stream::iter([Ok((entry, None))]))
                .await
                .unwrap();
            revision += PER_ENTRY;
            let reader = state.reader();
            assert_eq!(super::revision(&reader).unwrap(), revision);

            let oldest_left = events_after(&reader, 0, 1, usize::MAX).unwrap()[0].revision;
            assert_eq!(oldest_left, oldest_kept(revision), "at revision {revision}");
            let kept =
                events_after(&reader, oldest_kept(revision) - 1, usize::MAX, usize::MAX).unwrap();
            let revisions: Vec<u64> = kept.iter().map(|event| event.revision).collect();
            let expected: Vec<u64> = (oldest_kept(revision)..=revision).collect();
            assert!(revisions == expected, "at revision {revision}");

            if revision > HISTORY + 3 * PER_ENTRY {
                break;
            }
        }
    }
}
