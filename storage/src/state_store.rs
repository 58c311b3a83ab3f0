//! The state machine on RocksDB.
//!
//! The application's data lives in its own column family; every apply batch is one RocksDB
//! write that carries the data changes together with `last_applied` and the membership, so a
//! restart resumes exactly after the last applied entry: never replaying the whole log, never
//! applying an entry twice. Apply runs on a blocking thread, off the async runtime.
//!
//! These writes are not fsynced: the log entries they come from are already durable on a
//! quorum, and a write lost to a power failure is re-applied from the log. The one place that
//! needs the state itself durable is a snapshot, because the log below it is purged
//! afterwards; building one therefore syncs the WAL first.
//!
//! Snapshots are built from a RocksDB point-in-time view, so apply and heartbeats go on while
//! the file is written, and installed with one atomic write batch, so a crash mid-install
//! leaves the old state intact.

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
    _config: PhantomData<C>,
}

impl<C, A> Clone for StateStore<C, A> {
    fn clone(&self) -> Self {
        Self {
            db: self.db.clone(),
            app: self.app.clone(),
            snapshot_dir: self.snapshot_dir.clone(),
            publishing: self.publishing.clone(),
            _config: PhantomData,
        }
    }
}

type AppliedState<C> = (Option<LogIdOf<C>>, StoredMembershipOf<C>);

impl<C: RaftTypeConfig, A: Application<C>> StateStore<C, A> {
    pub(crate) fn new(db: Arc<DB>, snapshot_dir: PathBuf, app: A) -> Result<Self, Error> {
        fs::create_dir_all(&snapshot_dir).map_err(|e| Error::io(&snapshot_dir, e))?;
        remove_partial_files(&snapshot_dir)?;
        Ok(Self {
            db,
            app: Arc::new(app),
            snapshot_dir,
            publishing: Arc::default(),
            _config: PhantomData,
        })
    }

    /// The application this store applies entries through.
    pub fn app(&self) -> &A {
        &self.app
    }

    /// A read-only view of the applied data, for serving queries.
    pub fn reader(&self) -> Reader {
        Reader::new(self.db.clone())
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
        self.db.write(batch)?;
        Ok(responses)
    }

    fn build_snapshot_blocking(&self) -> Result<SnapshotOf<C, SnapshotFile>, Error> {
        // The log below this snapshot is purged once it exists, so the state it was taken
        // from must survive a power loss too.
        self.db.flush_wal(true)?;
        let view = self.db.snapshot();
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
        fs::File::open(&self.snapshot_dir)
            .and_then(|dir| dir.sync_all())
            .map_err(|e| Error::io(&self.snapshot_dir, e))?;
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
        let (pairs, stored_meta) = SnapshotReader::open(&snapshot)?;
        let stored_meta: SnapshotMetaOf<C> = bincode::deserialize(&stored_meta)?;
        if stored_meta.last_log_id != meta.last_log_id {
            return Err(Error::Corrupt(format!(
                "snapshot file is for {:?}, expected {:?}",
                stored_meta.last_log_id, meta.last_log_id
            )));
        }
        let cf_data = self.db.cf_handle(cf::SM_DATA).expect("state column family");
        let mut batch = WriteBatch::default();
        // Application keys are never empty, and none starts with 0xff bytes this long.
        batch.delete_range_cf(cf_data, &[][..], &[0xffu8; 64][..]);
        for pair in pairs {
            let (key, value) = pair?;
            batch.put_cf(cf_data, key, value);
        }
        self.put_applied_state(&mut batch, &meta.last_log_id, Some(&meta.last_membership))?;
        let mut opts = WriteOptions::default();
        opts.set_sync(true);
        self.db.write_opt(batch, &opts)?;

        let path = self.snapshot_dir.join(snapshot_name::<C>(meta));
        if snapshot.path != path {
            self.publish(&snapshot.path, &path)?;
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
        let responses = self
            .blocking(move |this| this.apply_blocking(&batch))
            .await?;
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
