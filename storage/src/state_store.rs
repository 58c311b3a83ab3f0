//! The state machine on RocksDB.
//!
//! The application's data lives in column families of its own (its histories apart from the
//! rest, see [`crate::layout`]); every apply batch is one RocksDB write that carries the data
//! changes together with `last_applied` and the membership, so the state on disk always names
//! the entry it reflects and a restart resumes right after it: never replaying the whole log,
//! never applying an entry twice. Large apply batches (a node catching up) run on a blocking
//! thread, off the async runtime.
//!
//! These writes skip RocksDB's WAL: the log entries they come from are already durable on a
//! quorum, so the WAL would only hold another copy of what the log holds (often several: an
//! application may store a command's payload under more than one key). After a crash the state
//! machine's column families come back as RocksDB last flushed them, data and `last_applied`
//! together (the store flushes its column families atomically), and openraft re-applies the
//! log from there. Writing that WAL copy was a third of each node's RocksDB write time under a
//! write load. The one place that needs the state itself durable is a snapshot, because the
//! log below it is purged afterwards; building one therefore flushes the state's memtables.
//!
//! A snapshot is this state frozen at a log id (see [`crate::frozen`]): a build takes a
//! RocksDB point-in-time view, and only a follower that needs the snapshot has it written to a
//! file. Snapshots received are installed in batches of [`INSTALL_BATCH_BYTES`], so memory
//! stays flat however large the state: one batch for the whole file grew a node by the
//! snapshot's size (409 MiB at a million keys). In between, the store holds part of the
//! snapshot, so the first write also records an install marker (synced), and the last one
//! replaces it with the new `last_applied` (synced): a node restarted mid-install finishes
//! loading the same file before it starts, and reads meanwhile are refused (see [`Installs`]).

use std::fs;
use std::io;
use std::path::Path;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::Mutex;

use futures::Stream;
use futures::TryStreamExt;
use openraft::entry::RaftEntry;
use openraft::storage::EntryResponder;
use openraft::storage::RaftStateMachine;
use openraft::type_config::alias::LogIdOf;
use openraft::type_config::alias::SnapshotMetaOf;
use openraft::type_config::alias::SnapshotOf;
use openraft::type_config::alias::StoredMembershipOf;
use openraft::OptionalSend;
use openraft::RaftSnapshotBuilder;
use openraft::RaftTypeConfig;
use openraft::StoredMembership;
use rocksdb::IteratorMode;
use rocksdb::ReadOptions;
use rocksdb::WriteBatch;
use rocksdb::WriteOptions;
use rocksdb::DB;

use crate::cf;
use crate::frozen::FrozenState;
use crate::frozen::OwnedView;
use crate::frozen::SnapshotDir;
use crate::keyspace;
use crate::layout::Families;
use crate::layout::Layout;
use crate::snapshot::SnapshotReader;
use crate::txn::Installs;
use crate::txn::Reader;
use crate::Error;
use crate::SnapshotData;
use crate::SnapshotFile;
use crate::Txn;

/// The domain's side of the state machine.
pub trait Application<C: RaftTypeConfig>: Send + Sync + 'static {
    /// Applies one committed entry (normal, blank or membership) through `txn` and returns
    /// what the proposer is told. It must be deterministic: no clocks, randomness or I/O, so
    /// that every node computes the same writes and the same response.
    ///
    /// An error here is a storage failure (a RocksDB read failed) and stops the node; a
    /// command the domain refuses is a normal response.
    fn apply(&self, entry: &C::Entry, txn: &mut Txn<'_>) -> Result<C::R, Error>;

    /// Prefixes of the keyspaces that are histories: written at their end, in key order, and
    /// dropped from their start. They get a column family of their own, so that compactions
    /// of their new files never rewrite the other keys; a store opened with a prefix it did not
    /// have before moves such keys over when it opens.
    fn history_prefixes(&self) -> Vec<Vec<u8>> {
        Vec::new()
    }

    /// Prefixes of counters: small keys that most writes rewrite (a store-wide revision, an
    /// id sequence). They are kept with the histories, not with the data: a key that every
    /// flush carries makes every file of its family span the family's whole key range, so no
    /// file moves down a level without a rewrite, while a history's files span its range
    /// anyway. A store opened with a prefix it did not have before moves such keys over.
    fn counter_prefixes(&self) -> Vec<Vec<u8>> {
        Vec::new()
    }
}

/// openraft's state machine on RocksDB; see the module documentation.
pub struct StateStore<C: RaftTypeConfig, A> {
    db: Arc<DB>,
    app: Arc<A>,
    layout: Layout,
    snapshots: SnapshotDir,
    current: Arc<Mutex<Option<CurrentSnapshot<C>>>>,
    installs: Installs,
}

/// The snapshot this node would send a follower now: the latest built or installed.
struct CurrentSnapshot<C: RaftTypeConfig> {
    meta: SnapshotMetaOf<C>,
    state: Arc<FrozenState>,
}

impl<C: RaftTypeConfig> CurrentSnapshot<C> {
    fn snapshot(&self) -> SnapshotOf<C, SnapshotData> {
        SnapshotOf::<C, SnapshotData> {
            meta: self.meta.clone(),
            snapshot: SnapshotData::Frozen(self.state.clone()),
        }
    }
}

/// Apply batches up to this many entries run on the runtime's thread: under load most batches
/// are small, and handing one to the blocking pool and back cost two thread wake-ups, more
/// than the write itself. Larger batches (a node catching up) go to the blocking pool, so
/// that heartbeats and timers keep running meanwhile.
const APPLY_INLINE_ENTRIES: usize = 64;

/// Write-batch size of a snapshot install.
const INSTALL_BATCH_BYTES: usize = 4 << 20;

/// Where a received snapshot waits while it is installed: a name the start-up cleanup of
/// partial files keeps (a restart finishes the install from it) and that is not yet a
/// snapshot this node would serve (its state does not match it until the install is done).
const INSTALLING_FILE: &str = "installing.snapfile";

impl<C: RaftTypeConfig, A> Clone for StateStore<C, A> {
    fn clone(&self) -> Self {
        Self {
            db: self.db.clone(),
            app: self.app.clone(),
            layout: self.layout.clone(),
            snapshots: self.snapshots.clone(),
            current: self.current.clone(),
            installs: self.installs.clone(),
        }
    }
}

type AppliedState<C> = (Option<LogIdOf<C>>, StoredMembershipOf<C>);

impl<C: RaftTypeConfig, A: Application<C>> StateStore<C, A> {
    pub(crate) fn new(db: Arc<DB>, snapshot_dir: PathBuf, app: A) -> Result<Self, Error> {
        let store = Self {
            db,
            layout: Layout::new(
                app.history_prefixes()
                    .into_iter()
                    .chain(app.counter_prefixes())
                    .collect(),
            ),
            app: Arc::new(app),
            snapshots: SnapshotDir::open(snapshot_dir)?,
            current: Arc::default(),
            installs: Installs::default(),
        };
        store.finish_interrupted_install()?;
        store.move_into_history_family()?;
        store.start_from_own_state()?;
        Ok(store)
    }

    /// Makes the state this node starts with its current snapshot (see [`crate::frozen`]):
    /// the file of a snapshot at exactly that log id is kept, any other is removed.
    fn start_from_own_state(&self) -> Result<(), Error> {
        let view = OwnedView::new(self.db.clone());
        let meta = self.meta_in(&view)?;
        let Some(index) = meta.last_log_id.as_ref().map(|id| id.index()) else {
            return self.snapshots.retain(|_| false);
        };
        let name = SnapshotDir::name(index);
        self.snapshots.retain(|file| file == name)?;
        let header = bincode::serialize(&meta)?;
        let state = if self.snapshots.join(&name).exists() {
            FrozenState::from_file(header, index, self.snapshots.clone())
        } else {
            FrozenState::from_view(view, header, index, self.snapshots.clone())
        };
        *self.current.lock().expect("current snapshot lock") = Some(CurrentSnapshot {
            meta,
            state: Arc::new(state),
        });
        Ok(())
    }

    /// The applied state in `view`, as a snapshot's metadata.
    fn meta_in(&self, view: &OwnedView) -> Result<SnapshotMetaOf<C>, Error> {
        let cf_meta = self
            .db
            .cf_handle(cf::SM_META)
            .expect("state meta column family");
        let (last_log_id, last_membership) =
            Self::applied_state_from(|key| Ok(view.get().get_cf(cf_meta, key)?))?;
        Ok(SnapshotMetaOf::<C> {
            last_log_id,
            last_membership,
        })
    }

    /// Removes the files of the snapshots that `meta`'s supersedes. A transfer already
    /// streaming one keeps its open handle.
    fn remove_files_before(&self, meta: &SnapshotMetaOf<C>) -> Result<(), Error> {
        let name = SnapshotDir::name(snapshot_index::<C>(meta));
        self.snapshots.retain(|file| file >= name.as_str())
    }

    /// The application this store applies entries through.
    pub fn app(&self) -> &A {
        &self.app
    }

    /// A read-only view of the applied data, for serving queries.
    pub fn reader(&self) -> Reader {
        Reader::new(self.db.clone(), self.layout.clone(), self.installs.clone())
    }

    /// Snapshots installed since the store was opened: how often this node, as a follower,
    /// fell so far behind that the leader had to send its whole state.
    pub fn snapshots_installed(&self) -> u64 {
        self.installs.completed()
    }

    /// Where an incoming snapshot should be written before it is installed.
    pub fn incoming_snapshot_path(&self) -> PathBuf {
        let unique = format!(
            "incoming-{}-{:?}.partial",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default()
                .as_nanos()
        );
        self.snapshots.join(&unique)
    }

    fn applied_state_from(
        get: impl Fn(&[u8]) -> Result<Option<Vec<u8>>, Error>,
    ) -> Result<AppliedState<C>, Error> {
        let last_applied = match get(keyspace::LAST_APPLIED)? {
            Some(bytes) => bincode::deserialize(&bytes)?,
            None => None,
        };
        let membership = match get(keyspace::MEMBERSHIP)? {
            Some(bytes) => bincode::deserialize(&bytes)?,
            None => StoredMembership::default(),
        };
        Ok((last_applied, membership))
    }

    fn put_applied_state(
        &self,
        batch: &mut WriteBatch,
        last_applied: &Option<LogIdOf<C>>,
        membership: Option<&StoredMembershipOf<C>>,
    ) -> Result<(), Error> {
        let cf_meta = self
            .db
            .cf_handle(cf::SM_META)
            .expect("state meta column family");
        batch.put_cf(
            cf_meta,
            keyspace::LAST_APPLIED,
            bincode::serialize(last_applied)?,
        );
        if let Some(membership) = membership {
            batch.put_cf(
                cf_meta,
                keyspace::MEMBERSHIP,
                bincode::serialize(membership)?,
            );
        }
        Ok(())
    }

    fn apply_blocking(&self, entries: &[C::Entry]) -> Result<Vec<C::R>, Error> {
        let mut txn = Txn::new(&self.db, &self.layout);
        let mut responses = Vec::with_capacity(entries.len());
        let mut membership = None;
        for entry in entries {
            if let Some(config) = entry.get_membership() {
                membership = Some(StoredMembership::new(Some(entry.log_id()), config));
            }
            responses.push(self.app.apply(entry, &mut txn)?);
        }
        let Some(last) = entries.last() else {
            return Ok(responses);
        };
        let mut batch = WriteBatch::default();
        txn.write_into(&mut batch);
        self.put_applied_state(&mut batch, &Some(last.log_id()), membership.as_ref())?;
        self.write_unlogged(batch)?;
        Ok(responses)
    }

    /// Writes applied state without the WAL; see the module documentation.
    fn write_unlogged(&self, batch: WriteBatch) -> Result<(), Error> {
        let mut unlogged = WriteOptions::default();
        unlogged.disable_wal(true);
        Ok(self.db.write_opt(batch, &unlogged)?)
    }

    /// Makes everything applied so far durable: the state's memtables go to disk, data and
    /// applied state in one atomic flush.
    fn flush_state(&self) -> Result<(), Error> {
        let families =
            cf::STATE_FAMILIES.map(|name| self.db.cf_handle(name).expect("state column family"));
        let mut wait = rocksdb::FlushOptions::default();
        wait.set_wait(true);
        self.db.flush_cfs_opt(&families, &wait)?;
        Ok(())
    }

    fn build_snapshot_blocking(&self) -> Result<SnapshotOf<C, SnapshotData>, Error> {
        // A view taken while an install is loading would hold part of two states.
        let view = loop {
            match self.installs.guard(|| Ok(OwnedView::new(self.db.clone()))) {
                Err(Error::Installing) if self.installs.failed() => {
                    return Err(Error::Corrupt(
                        "a snapshot install failed on this node; restart it to finish the install"
                            .into(),
                    ))
                }
                Err(Error::Installing) => std::thread::sleep(std::time::Duration::from_millis(20)),
                view => break view?,
            }
        };
        let meta = self.meta_in(&view)?;
        // The log below this snapshot is purged once it exists, so the state it was taken
        // from must survive a crash too: applied writes skip the WAL, so they are durable only
        // once flushed. Flushed after the view was taken, so all the view holds is on disk.
        self.flush_state()?;
        let header = bincode::serialize(&meta)?;
        let index = snapshot_index::<C>(&meta);
        let mut current = self.current.lock().expect("current snapshot lock");
        let built = CurrentSnapshot {
            meta,
            state: Arc::new(FrozenState::from_view(
                view,
                header,
                index,
                self.snapshots.clone(),
            )),
        };
        match &*current {
            // Nothing new since the last build: the current snapshot stays.
            Some(newest) if newest.meta.last_log_id == built.meta.last_log_id => {
                return Ok(newest.snapshot())
            }
            // This build finished after an install of a newer snapshot, which stays current.
            Some(newest) if snapshot_index::<C>(&newest.meta) > index => {
                return Ok(built.snapshot())
            }
            _ => {}
        }
        let snapshot = built.snapshot();
        *current = Some(built);
        drop(current);
        self.remove_files_before(&snapshot.meta)?;
        Ok(snapshot)
    }

    fn install_blocking(
        &self,
        meta: &SnapshotMetaOf<C>,
        snapshot: SnapshotData,
    ) -> Result<(), Error> {
        let installing = self.snapshots.join(INSTALLING_FILE);
        match snapshot {
            SnapshotData::File(file) => {
                fs::rename(&file.path, &installing).map_err(|e| Error::io(&installing, e))?
            }
            // Another store's own snapshot, handed over in-process (openraft's storage suite).
            SnapshotData::Frozen(state) => {
                let source = state.file()?;
                fs::copy(&source, &installing).map_err(|e| Error::io(&installing, e))?;
                SnapshotFile::open(installing.clone())?
                    .file
                    .sync_all()
                    .map_err(|e| Error::io(&installing, e))?;
            }
        }
        self.snapshots.sync()?;
        self.load_snapshot(meta, &installing)?;
        self.publish_installed(meta, &installing)
    }

    /// Publishes the file just installed under its snapshot name, as the current snapshot.
    fn publish_installed(&self, meta: &SnapshotMetaOf<C>, installed: &Path) -> Result<(), Error> {
        let index = snapshot_index::<C>(meta);
        self.snapshots
            .publish(installed, &SnapshotDir::name(index))?;
        let header = bincode::serialize(meta)?;
        *self.current.lock().expect("current snapshot lock") = Some(CurrentSnapshot {
            meta: meta.clone(),
            state: Arc::new(FrozenState::from_file(
                header,
                index,
                self.snapshots.clone(),
            )),
        });
        self.remove_files_before(meta)
    }

    /// Replaces the state machine's data and applied state with the snapshot at `path`; see
    /// the module documentation.
    fn load_snapshot(&self, meta: &SnapshotMetaOf<C>, path: &Path) -> Result<(), Error> {
        let (pairs, stored_meta) = SnapshotReader::open(&SnapshotFile::open(path.to_path_buf())?)?;
        let stored_meta: SnapshotMetaOf<C> = bincode::deserialize(&stored_meta)?;
        if stored_meta.last_log_id != meta.last_log_id {
            return Err(Error::Corrupt(format!(
                "snapshot file {} is for {:?}, expected {:?}",
                path.display(),
                stored_meta.last_log_id,
                meta.last_log_id
            )));
        }
        let file_name = path
            .file_name()
            .and_then(|name| name.to_str())
            .ok_or_else(|| Error::Corrupt(format!("snapshot path {}", path.display())))?;
        self.installs.begin();
        let loaded = self.replace_state(meta, file_name, pairs);
        match &loaded {
            Ok(()) => self.installs.end(),
            Err(_) => self.installs.fail(),
        }
        loaded
    }

    /// The writes of [`Self::load_snapshot`]: marker and range delete, the pairs in batches,
    /// then the applied state in place of the marker.
    fn replace_state(
        &self,
        meta: &SnapshotMetaOf<C>,
        file_name: &str,
        pairs: SnapshotReader,
    ) -> Result<(), Error> {
        let cf_meta = self
            .db
            .cf_handle(cf::SM_META)
            .expect("state meta column family");
        let families = Families::new(&self.db, &self.layout);
        let mut synced = WriteOptions::default();
        synced.set_sync(true);
        let mut batch = WriteBatch::default();
        batch.put_cf(
            cf_meta,
            keyspace::INSTALLING,
            bincode::serialize(&(file_name, meta))?,
        );
        for name in cf::APP_FAMILIES {
            let family = self.db.cf_handle(name).expect("state column family");
            // Application keys are never empty, and none starts with 0xff bytes this long.
            batch.delete_range_cf(family, &[][..], &[0xffu8; 64][..]);
        }
        self.db.write_opt(batch, &synced)?;
        let mut batch = WriteBatch::default();
        for pair in pairs {
            let (key, value) = pair?;
            batch.put_cf(families.of(&key), key, value);
            if batch.size_in_bytes() >= INSTALL_BATCH_BYTES {
                self.db.write(std::mem::take(&mut batch))?;
            }
        }
        self.put_applied_state(&mut batch, &meta.last_log_id, Some(&meta.last_membership))?;
        batch.delete_cf(cf_meta, keyspace::INSTALLING);
        self.db.write_opt(batch, &synced)?;
        Ok(())
    }

    /// Moves the keys of the application's histories and counters that the data family holds
    /// (a store written before they had a family of their own) into the history family. Each
    /// batch moves its keys in one write, and the state is flushed at the end, so a crash
    /// midway leaves every key in one family or the other and the next start moves the rest.
    fn move_into_history_family(&self) -> Result<(), Error> {
        let data = self.db.cf_handle(cf::SM_DATA).expect("state column family");
        let history = self
            .db
            .cf_handle(cf::SM_HISTORY)
            .expect("history column family");
        let mut moved = 0u64;
        for (prefix, end) in self.layout.history_family_ranges() {
            let mut batch = WriteBatch::default();
            let mut within = ReadOptions::default();
            within.set_iterate_upper_bound(end);
            let keys = self.db.iterator_cf_opt(
                data,
                within,
                IteratorMode::From(prefix, rocksdb::Direction::Forward),
            );
            for pair in keys {
                let (key, value) = pair?;
                batch.put_cf(history, &key, value);
                batch.delete_cf(data, key);
                moved += 1;
                if batch.size_in_bytes() >= INSTALL_BATCH_BYTES {
                    self.write_unlogged(std::mem::take(&mut batch))?;
                }
            }
            self.write_unlogged(batch)?;
        }
        if moved > 0 {
            self.flush_state()?;
            tracing::info!(
                keys = moved,
                "moved the state's histories and counters into the history column family"
            );
        }
        Ok(())
    }

    /// Loads again the snapshot whose install a crash or kill interrupted, so the node never
    /// starts on a state that is part old and part new.
    fn finish_interrupted_install(&self) -> Result<(), Error> {
        let cf_meta = self
            .db
            .cf_handle(cf::SM_META)
            .expect("state meta column family");
        let installing = self.snapshots.join(INSTALLING_FILE);
        let Some(marker) = self.db.get_cf(cf_meta, keyspace::INSTALLING)? else {
            // The install stopped before it changed any data: the state is the old one whole.
            if installing.exists() {
                fs::remove_file(&installing).map_err(|e| Error::io(&installing, e))?;
            }
            return Ok(());
        };
        let (file_name, meta): (String, SnapshotMetaOf<C>) = bincode::deserialize(&marker)?;
        let path = self.snapshots.join(&file_name);
        tracing::warn!(
            snapshot = %path.display(),
            "a snapshot install was interrupted; loading the snapshot again before starting"
        );
        self.load_snapshot(&meta, &path).map_err(|err| {
            Error::Corrupt(format!(
                "cannot finish installing snapshot {}: {err}. This node's state is incomplete: \
                 remove its data directory and add it to the cluster again",
                path.display()
            ))
        })?;
        if path == installing {
            let name = SnapshotDir::name(snapshot_index::<C>(&meta));
            self.snapshots.publish(&installing, &name)?;
        }
        Ok(())
    }

    async fn blocking<T: Send + 'static>(
        &self,
        work: impl FnOnce(Self) -> Result<T, Error> + Send + 'static,
    ) -> Result<T, io::Error> {
        let this = self.clone();
        match tokio::task::spawn_blocking(move || work(this)).await {
            Ok(result) => result.map_err(io::Error::from),
            Err(join) => Err(io::Error::other(join)),
        }
    }
}

/// The log index a snapshot covers up to (0 for the empty state's).
fn snapshot_index<C: RaftTypeConfig>(meta: &SnapshotMetaOf<C>) -> u64 {
    meta.last_log_id.as_ref().map_or(0, |id| id.index())
}

impl<C, A> RaftSnapshotBuilder<C> for StateStore<C, A>
where
    C: RaftTypeConfig,
    A: Application<C>,
{
    type SnapshotData = SnapshotData;

    async fn build_snapshot(&mut self) -> Result<SnapshotOf<C, SnapshotData>, io::Error> {
        self.blocking(|this| this.build_snapshot_blocking()).await
    }
}

impl<C, A> RaftStateMachine<C> for StateStore<C, A>
where
    C: RaftTypeConfig,
    A: Application<C>,
{
    type SnapshotData = SnapshotData;
    type SnapshotBuilder = Self;

    async fn applied_state(&mut self) -> Result<AppliedState<C>, io::Error> {
        let cf_meta = self
            .db
            .cf_handle(cf::SM_META)
            .expect("state meta column family");
        Ok(Self::applied_state_from(|key| {
            Ok(self.db.get_cf(cf_meta, key)?)
        })?)
    }

    async fn apply<Strm>(&mut self, mut entries: Strm) -> Result<(), io::Error>
    where
        Strm: Stream<Item = Result<EntryResponder<C>, io::Error>> + Unpin + OptionalSend,
    {
        let mut batch = Vec::new();
        let mut responders = Vec::new();
        while let Some((entry, responder)) = entries.try_next().await? {
            batch.push(entry);
            responders.push(responder);
        }
        let responses = if batch.len() <= APPLY_INLINE_ENTRIES {
            self.apply_blocking(&batch)?
        } else {
            self.blocking(move |this| this.apply_blocking(&batch))
                .await?
        };
        for (responder, response) in responders.into_iter().zip(responses) {
            if let Some(responder) = responder {
                responder.send(response);
            }
        }
        Ok(())
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMetaOf<C>,
        snapshot: SnapshotData,
    ) -> Result<(), io::Error> {
        let meta = meta.clone();
        self.blocking(move |this| this.install_blocking(&meta, snapshot))
            .await
    }

    async fn get_current_snapshot(
        &mut self,
    ) -> Result<Option<SnapshotOf<C, SnapshotData>>, io::Error> {
        let current = self.current.lock().expect("current snapshot lock");
        Ok(current.as_ref().map(CurrentSnapshot::snapshot))
    }
}

#[cfg(test)]
mod tests {
    use openraft::type_config::alias::EntryOf;

    use super::*;

    openraft::declare_raft_types!(
        TestConfig:
            D = String,
            R = (),
    );

    /// Declares a history (`h/`) and a counter (`c/`); every entry writes one key of each
    /// and one plain key (`d/`).
    struct HistoryAndCounter;

    impl Application<TestConfig> for HistoryAndCounter {
        fn apply(&self, entry: &EntryOf<TestConfig>, txn: &mut Txn<'_>) -> Result<(), Error> {
            let index = entry.log_id().index().to_string();
            for prefix in ["h/", "c/", "d/"] {
                txn.put(
                    format!("{prefix}{index}").into_bytes(),
                    index.clone().into_bytes(),
                );
            }
            Ok(())
        }

        fn history_prefixes(&self) -> Vec<Vec<u8>> {
            vec![b"h/".to_vec()]
        }

        fn counter_prefixes(&self) -> Vec<Vec<u8>> {
            vec![b"c/".to_vec()]
        }
    }

    /// Where applied keys land in RocksDB, read from the column families themselves.
    #[test]
    fn counters_live_in_the_history_family() {
        let dir = tempfile::tempdir().unwrap();
        let store = crate::Store::open(dir.path())
            .unwrap()
            .state_store(HistoryAndCounter)
            .unwrap();
        let entry = EntryOf::<TestConfig>::new_normal(
            openraft::testing::log_id::<TestConfig>(1, 1, 7),
            String::new(),
        );
        store.apply_blocking(&[entry]).unwrap();
        let family_of = |key: &[u8]| -> Vec<&str> {
            [cf::SM_DATA, cf::SM_HISTORY]
                .into_iter()
                .filter(|name| {
                    let family = store.db.cf_handle(name).unwrap();
                    store.db.get_cf(family, key).unwrap().is_some()
                })
                .collect()
        };
        assert_eq!(family_of(b"h/7"), [cf::SM_HISTORY]);
        assert_eq!(family_of(b"c/7"), [cf::SM_HISTORY]);
        assert_eq!(family_of(b"d/7"), [cf::SM_DATA]);
    }
}
