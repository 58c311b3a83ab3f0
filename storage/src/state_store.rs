//! The state machine on RocksDB.
//!
//! The application's data lives in its own column family; every apply batch is one RocksDB
//! write that carries the data changes together with `last_applied` and the membership, so the
//! state on disk always names the entry it reflects and a restart resumes right after it:
//! never replaying the whole log, never applying an entry twice. Large apply batches (a node catching up) run on a blocking thread,
//! off the async runtime.
//!
//! These writes skip RocksDB's WAL: the log entries they come from are already durable on a
//! quorum, so the WAL would only hold another copy of what the log holds (often several: an
//! application may store a command's payload under more than one key). After a crash the state
//! machine's column families come back as RocksDB last flushed them, data and `last_applied`
//! together (the store flushes its column families atomically), and openraft re-applies the
//! log from there. Writing that WAL copy was a third of each node's RocksDB write time under a
//! write load. The one place that needs the state itself durable is a snapshot, because the
//! log below it is purged afterwards; building one therefore flushes the state's memtables
//! first.
//!
//! Snapshots are built from a RocksDB point-in-time view, so apply and heartbeats go on while
//! the file is written. They are installed in batches of [`INSTALL_BATCH_BYTES`], so memory
//! stays flat however large the state: one batch for the whole file grew a node by the
//! snapshot's size (409 MiB at a million keys). In between, the store holds part of the
//! snapshot, so the first write also records an install marker (synced), and the last one
//! replaces it with the new `last_applied` (synced): a node restarted mid-install finishes
//! loading the same file before it starts, and reads meanwhile are refused (see [`Installs`]).

use std::fs;
use std::io;
use std::marker::PhantomData;
use std::path::Path;
use std::path::PathBuf;
use std::sync::Arc;

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
use rocksdb::WriteBatch;
use rocksdb::WriteOptions;
use rocksdb::DB;

use crate::cf;
use crate::keyspace;
use crate::snapshot;
use crate::snapshot::SnapshotReader;
use crate::txn::Installs;
use crate::txn::Reader;
use crate::Error;
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
}

/// openraft's state machine on RocksDB; see the module documentation.
pub struct StateStore<C, A> {
    db: Arc<DB>,
    app: Arc<A>,
    snapshot_dir: PathBuf,
    publishing: Arc<std::sync::Mutex<()>>,
    installs: Installs,
    _config: PhantomData<C>,
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

impl<C, A> Clone for StateStore<C, A> {
    fn clone(&self) -> Self {
        Self {
            db: self.db.clone(),
            app: self.app.clone(),
            snapshot_dir: self.snapshot_dir.clone(),
            publishing: self.publishing.clone(),
            installs: self.installs.clone(),
            _config: PhantomData,
        }
    }
}

type AppliedState<C> = (Option<LogIdOf<C>>, StoredMembershipOf<C>);

impl<C: RaftTypeConfig, A: Application<C>> StateStore<C, A> {
    pub(crate) fn new(db: Arc<DB>, snapshot_dir: PathBuf, app: A) -> Result<Self, Error> {
        fs::create_dir_all(&snapshot_dir).map_err(|e| Error::io(&snapshot_dir, e))?;
        remove_partial_files(&snapshot_dir)?;
        let store = Self {
            db,
            app: Arc::new(app),
            snapshot_dir,
            publishing: Arc::default(),
            installs: Installs::default(),
            _config: PhantomData,
        };
        store.finish_interrupted_install()?;
        Ok(store)
    }

    /// The application this store applies entries through.
    pub fn app(&self) -> &A {
        &self.app
    }

    /// A read-only view of the applied data, for serving queries.
    pub fn reader(&self) -> Reader {
        Reader::new(self.db.clone(), self.installs.clone())
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
        self.snapshot_dir.join(unique)
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
        let mut txn = Txn::new(&self.db);
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
        let mut unlogged = WriteOptions::default();
        unlogged.disable_wal(true);
        self.db.write_opt(batch, &unlogged)?;
        Ok(responses)
    }

    /// Makes everything applied so far durable: the state's memtables go to disk, data and
    /// applied state in one atomic flush.
    fn flush_state(&self) -> Result<(), Error> {
        let families = [cf::SM_DATA, cf::SM_META]
            .map(|name| self.db.cf_handle(name).expect("state column family"));
        let mut wait = rocksdb::FlushOptions::default();
        wait.set_wait(true);
        self.db.flush_cfs_opt(&families, &wait)?;
        Ok(())
    }

    fn build_snapshot_blocking(&self) -> Result<SnapshotOf<C, SnapshotFile>, Error> {
        // The log below this snapshot is purged once it exists, so the state it was taken
        // from must survive a crash too: applied writes skip the WAL, so they are durable only
        // once flushed.
        self.flush_state()?;
        // A view taken while an install is loading would hold part of two states.
        let view = loop {
            match self.installs.guard(|| Ok(self.db.snapshot())) {
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
        let cf_meta = self
            .db
            .cf_handle(cf::SM_META)
            .expect("state meta column family");
        let cf_data = self.db.cf_handle(cf::SM_DATA).expect("state column family");
        let (last_log_id, last_membership) =
            Self::applied_state_from(|key| Ok(view.get_cf(cf_meta, key)?))?;
        let meta = SnapshotMetaOf::<C> {
            last_log_id,
            last_membership,
        };
        let name = snapshot_name::<C>(&meta);
        let partial = self.snapshot_dir.join(format!("{name}.partial"));
        let pairs = view.iterator_cf(cf_data, IteratorMode::Start).map(|item| {
            item.map(|(k, v)| (k.into_vec(), v.into_vec()))
                .map_err(Error::from)
        });
        snapshot::write(&partial, &bincode::serialize(&meta)?, pairs)?;
        let path = self.snapshot_dir.join(name);
        self.publish(&partial, &path)?;
        Ok(SnapshotOf::<C, SnapshotFile> {
            meta,
            snapshot: SnapshotFile::open(path)?,
        })
    }

    /// Makes `partial` a snapshot under `path` and drops the ones it supersedes.
    ///
    /// A build runs concurrently with an install, so a build that finishes late may be older
    /// than the snapshot already here: only snapshots covering less of the log are removed,
    /// and the current snapshot is always the newest file (names sort by log index).
    fn publish(&self, partial: &Path, path: &Path) -> Result<(), Error> {
        let _one_at_a_time = self.publishing.lock().expect("snapshot publish lock");
        fs::rename(partial, path).map_err(|e| Error::io(path, e))?;
        sync_dir(&self.snapshot_dir)?;
        for old in snapshot_files(&self.snapshot_dir)? {
            if old.as_path() < path {
                fs::remove_file(&old).map_err(|e| Error::io(&old, e))?;
            }
        }
        Ok(())
    }

    fn install_blocking(
        &self,
        meta: &SnapshotMetaOf<C>,
        snapshot: SnapshotFile,
    ) -> Result<(), Error> {
        let published = self.snapshot_dir.join(snapshot_name::<C>(meta));
        if snapshot.path == published {
            return self.load_snapshot(meta, &published);
        }
        let installing = self.snapshot_dir.join(INSTALLING_FILE);
        fs::rename(&snapshot.path, &installing).map_err(|e| Error::io(&installing, e))?;
        sync_dir(&self.snapshot_dir)?;
        self.load_snapshot(meta, &installing)?;
        self.publish(&installing, &published)
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
        let cf_data = self.db.cf_handle(cf::SM_DATA).expect("state column family");
        let cf_meta = self
            .db
            .cf_handle(cf::SM_META)
            .expect("state meta column family");
        let mut synced = WriteOptions::default();
        synced.set_sync(true);
        let mut batch = WriteBatch::default();
        batch.put_cf(
            cf_meta,
            keyspace::INSTALLING,
            bincode::serialize(&(file_name, meta))?,
        );
        // Application keys are never empty, and none starts with 0xff bytes this long.
        batch.delete_range_cf(cf_data, &[][..], &[0xffu8; 64][..]);
        self.db.write_opt(batch, &synced)?;
        let mut batch = WriteBatch::default();
        for pair in pairs {
            let (key, value) = pair?;
            batch.put_cf(cf_data, key, value);
            if batch.size_in_bytes() >= INSTALL_BATCH_BYTES {
                self.db.write(std::mem::take(&mut batch))?;
            }
        }
        self.put_applied_state(&mut batch, &meta.last_log_id, Some(&meta.last_membership))?;
        batch.delete_cf(cf_meta, keyspace::INSTALLING);
        self.db.write_opt(batch, &synced)?;
        Ok(())
    }

    /// Loads again the snapshot whose install a crash or kill interrupted, so the node never
    /// starts on a state that is part old and part new.
    fn finish_interrupted_install(&self) -> Result<(), Error> {
        let cf_meta = self
            .db
            .cf_handle(cf::SM_META)
            .expect("state meta column family");
        let installing = self.snapshot_dir.join(INSTALLING_FILE);
        let Some(marker) = self.db.get_cf(cf_meta, keyspace::INSTALLING)? else {
            // The install stopped before it changed any data: the state is the old one whole.
            if installing.exists() {
                fs::remove_file(&installing).map_err(|e| Error::io(&installing, e))?;
            }
            return Ok(());
        };
        let (file_name, meta): (String, SnapshotMetaOf<C>) = bincode::deserialize(&marker)?;
        let path = self.snapshot_dir.join(&file_name);
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
            self.publish(
                &installing,
                &self.snapshot_dir.join(snapshot_name::<C>(&meta)),
            )?;
        }
        Ok(())
    }

    fn current_snapshot_blocking(&self) -> Result<Option<SnapshotOf<C, SnapshotFile>>, Error> {
        let Some(path) = snapshot_files(&self.snapshot_dir)?.into_iter().max() else {
            return Ok(None);
        };
        let snapshot = SnapshotFile::open(path)?;
        let (_, meta) = SnapshotReader::open(&snapshot)?;
        Ok(Some(SnapshotOf::<C, SnapshotFile> {
            meta: bincode::deserialize(&meta)?,
            snapshot,
        }))
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

/// Snapshot file names sort by the log index they cover.
fn snapshot_name<C: RaftTypeConfig>(meta: &SnapshotMetaOf<C>) -> String {
    let index = meta.last_log_id.as_ref().map_or(0, |id| id.index());
    format!("{index:020}.snap")
}

fn snapshot_files(dir: &Path) -> Result<Vec<PathBuf>, Error> {
    let entries = fs::read_dir(dir).map_err(|e| Error::io(dir, e))?;
    Ok(entries
        .flatten()
        .map(|entry| entry.path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "snap"))
        .collect())
}

/// Makes renames in `dir` durable.
fn sync_dir(dir: &Path) -> Result<(), Error> {
    fs::File::open(dir)
        .and_then(|dir| dir.sync_all())
        .map_err(|e| Error::io(dir, e))
}

fn remove_partial_files(dir: &Path) -> Result<(), Error> {
    let entries = fs::read_dir(dir).map_err(|e| Error::io(dir, e))?;
    for path in entries.flatten().map(|entry| entry.path()) {
        if path.extension().is_some_and(|ext| ext == "partial") {
            fs::remove_file(&path).map_err(|e| Error::io(&path, e))?;
        }
    }
    Ok(())
}

impl<C, A> RaftSnapshotBuilder<C> for StateStore<C, A>
where
    C: RaftTypeConfig,
    A: Application<C>,
{
    type SnapshotData = SnapshotFile;

    async fn build_snapshot(&mut self) -> Result<SnapshotOf<C, SnapshotFile>, io::Error> {
        self.blocking(|this| this.build_snapshot_blocking()).await
    }
}

impl<C, A> RaftStateMachine<C> for StateStore<C, A>
where
    C: RaftTypeConfig,
    A: Application<C>,
{
    type SnapshotData = SnapshotFile;
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
        snapshot: SnapshotFile,
    ) -> Result<(), io::Error> {
        let meta = meta.clone();
        self.blocking(move |this| this.install_blocking(&meta, snapshot))
            .await
    }

    async fn get_current_snapshot(
        &mut self,
    ) -> Result<Option<SnapshotOf<C, SnapshotFile>>, io::Error> {
        self.blocking(|this| this.current_snapshot_blocking()).await
    }
}
