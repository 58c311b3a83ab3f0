//! What a snapshot is on this node: the state machine frozen at a log id, written out as a
//! snapshot file only when a follower needs one.
//!
//! The state machine already lives in RocksDB, durable once flushed, so a snapshot need not
//! be a copy of it: building one flushes the state and takes a RocksDB point-in-time view,
//! which costs milliseconds whatever the state's size. Only when the leader has to send the
//! snapshot to a follower is the view streamed into a file (see [`crate::snapshot`]); the file
//! then stands in for the view, which is released. etcd ships its bbolt file the same way.
//! Writing the whole state to a file at every build made each node's CPU per write grow with
//! the state (measured at 300 000 keys: put (64) 7 381-8 889 op/s with a build inside the run
//! against 9 622-10 309 without one).
//!
//! A view does not survive a restart, and need not: the log below a snapshot is purged only
//! after the state it was taken from was flushed, so the state a node starts with is at or
//! beyond its last snapshot, and is itself the snapshot it starts with (see
//! [`crate::StateStore`]).

use std::fmt;
use std::fs;
use std::path::Path;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::Mutex;

use rocksdb::IteratorMode;
use rocksdb::ReadOptions;
use rocksdb::SnapshotWithThreadMode;
use rocksdb::DB;

use crate::cf;
use crate::snapshot;
use crate::Error;

/// A RocksDB point-in-time view that keeps its database open for as long as it lives.
pub(crate) struct OwnedView {
    // Declared before `db`, so it is released first, while the database is still open.
    view: SnapshotWithThreadMode<'static, DB>,
    db: Arc<DB>,
}

impl OwnedView {
    pub(crate) fn new(db: Arc<DB>) -> Self {
        let view = db.snapshot();
        // SAFETY: the view borrows the `DB` inside the `Arc`, which never moves, and this struct
        // keeps that `Arc` for the view's whole life: fields drop in declaration order, so the
        // view is released before the handle. The `'static` never leaves the struct: `get`
        // lends the view out for no longer than `&self`.
        let view = unsafe {
            std::mem::transmute::<SnapshotWithThreadMode<'_, DB>, SnapshotWithThreadMode<'static, DB>>(
                view,
            )
        };
        Self { view, db }
    }

    pub(crate) fn get(&self) -> &SnapshotWithThreadMode<'_, DB> {
        &self.view
    }

    /// Streams the view's application data into a new snapshot file at `path`.
    fn write(&self, path: &Path, meta: &[u8]) -> Result<(), Error> {
        // The pairs of both families, one after the other: an install puts each key in its
        // family again, so the file is what it was when the state had one family.
        let pairs = cf::APP_FAMILIES.into_iter().flat_map(|name| {
            let family = self.db.cf_handle(name).expect("state column family");
            // One pass over everything: keep it out of the block cache reads are served from.
            let mut once = ReadOptions::default();
            once.fill_cache(false);
            self.view
                .iterator_cf_opt(family, once, IteratorMode::Start)
                .map(|item| {
                    item.map(|(k, v)| (k.into_vec(), v.into_vec()))
                        .map_err(Error::from)
                })
        });
        snapshot::write(path, meta, pairs)
    }
}

/// The directory of a node's snapshot files: names that sort by the log index they cover,
/// written under a `.partial` name and renamed (durably) once whole.
#[derive(Clone)]
pub(crate) struct SnapshotDir {
    path: PathBuf,
}

impl SnapshotDir {
    /// Opens `path`, creating it if missing and removing what a crash left half-written.
    pub(crate) fn open(path: PathBuf) -> Result<Self, Error> {
        fs::create_dir_all(&path).map_err(|e| Error::io(&path, e))?;
        let dir = Self { path };
        for partial in dir.files_with_extension("partial")? {
            fs::remove_file(&partial).map_err(|e| Error::io(&partial, e))?;
        }
        Ok(dir)
    }

    pub(crate) fn join(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }

    /// The file name of the snapshot covering the log up to `index`.
    pub(crate) fn name(index: u64) -> String {
        format!("{index:020}.snap")
    }

    fn files_with_extension(&self, extension: &str) -> Result<Vec<PathBuf>, Error> {
        let entries = fs::read_dir(&self.path).map_err(|e| Error::io(&self.path, e))?;
        Ok(entries
            .flatten()
            .map(|entry| entry.path())
            .filter(|path| path.extension().is_some_and(|ext| ext == extension))
            .collect())
    }

    /// Removes the snapshot files whose names `keep` refuses.
    pub(crate) fn retain(&self, keep: impl Fn(&str) -> bool) -> Result<(), Error> {
        for file in self.files_with_extension("snap")? {
            let name = file.file_name().and_then(|name| name.to_str());
            if !name.is_some_and(&keep) {
                fs::remove_file(&file).map_err(|e| Error::io(&file, e))?;
            }
        }
        Ok(())
    }

    /// Renames the whole file `from` to `name`, durably.
    pub(crate) fn publish(&self, from: &Path, name: &str) -> Result<PathBuf, Error> {
        let path = self.path.join(name);
        fs::rename(from, &path).map_err(|e| Error::io(&path, e))?;
        self.sync()?;
        Ok(path)
    }

    /// Makes renames in the directory durable.
    pub(crate) fn sync(&self) -> Result<(), Error> {
        crate::sync_dir(&self.path)
    }
}

/// A snapshot this node can send: the state at one log id, as a view until it is first
/// needed and as a file from then on.
pub struct FrozenState {
    /// The snapshot's metadata as its file header carries it.
    meta: Vec<u8>,
    name: String,
    dir: SnapshotDir,
    source: Mutex<Source>,
}

enum Source {
    View(OwnedView),
    File(PathBuf),
}

impl FrozenState {
    pub(crate) fn from_view(view: OwnedView, meta: Vec<u8>, index: u64, dir: SnapshotDir) -> Self {
        Self::new(Source::View(view), meta, index, dir)
    }

    /// A snapshot whose file `dir` already holds under its name.
    pub(crate) fn from_file(meta: Vec<u8>, index: u64, dir: SnapshotDir) -> Self {
        let path = dir.join(&SnapshotDir::name(index));
        Self::new(Source::File(path), meta, index, dir)
    }

    fn new(source: Source, meta: Vec<u8>, index: u64, dir: SnapshotDir) -> Self {
        Self {
            meta,
            name: SnapshotDir::name(index),
            dir,
            source: Mutex::new(source),
        }
    }

    /// The snapshot file, written first if this is the first time it is needed. Blocking, and
    /// seconds long for a large state the first time.
    pub(crate) fn file(&self) -> Result<PathBuf, Error> {
        let mut source = self.source.lock().expect("frozen snapshot lock");
        let view = match &*source {
            Source::File(path) => return Ok(path.clone()),
            Source::View(view) => view,
        };
        let partial = self.dir.join(&format!("{}.partial", self.name));
        view.write(&partial, &self.meta)?;
        let path = self.dir.publish(&partial, &self.name)?;
        let bytes = snapshot::SnapshotFile::open(path.clone())?.len()?;
        // The file goes once a newer snapshot replaces it, so its size is told here.
        tracing::info!(snapshot = %path.display(), bytes, "wrote the snapshot to a file for a follower");
        *source = Source::File(path.clone());
        Ok(path)
    }
}

impl fmt::Debug for FrozenState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FrozenState")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}
