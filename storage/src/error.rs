//! The storage crate's one error type.
//!
//! openraft wants `std::io::Error` from every storage call, so [`Error`] converts into it; the
//! message keeps the RocksDB or file-system cause so an operator can act on it (disk full,
//! permissions, a corrupt file).

use std::path::Path;
use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("rocksdb: {0}")]
    Rocks(#[from] rocksdb::Error),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("encoding: {0}")]
    Codec(#[from] bincode::Error),
    #[error("corrupt data: {0}")]
    Corrupt(String),
    /// The store was opened by a later keel, in a format this build could misread.
    #[error("this data directory was written by a newer keel: {0}. Run that keel or a later one on it: a node cannot go back to an earlier keel once a later one opened its store")]
    NewerStore(String),
    /// Another process holds the store's lock.
    #[error("another process (a keel still running?) is using this data directory: {0}")]
    InUse(String),
    /// A read overlapped the install of a snapshot, which replaces the state in steps.
    #[error("this node is installing a snapshot from the leader and serves reads again once it has; retry, or ask another node")]
    Installing,
}

impl Error {
    /// `err` from opening a database, telling a lock held by another process apart.
    pub(crate) fn opening(err: rocksdb::Error) -> Self {
        if err.kind() == rocksdb::ErrorKind::IOError && err.as_ref().contains("While lock file") {
            Self::InUse(err.into_string())
        } else {
            Self::Rocks(err)
        }
    }

    pub(crate) fn io(path: &Path, source: std::io::Error) -> Self {
        Self::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}

impl From<Error> for std::io::Error {
    fn from(err: Error) -> Self {
        match err {
            Error::Io { source, .. } => source,
            Error::Corrupt(msg) => std::io::Error::new(std::io::ErrorKind::InvalidData, msg),
            other => std::io::Error::other(other.to_string()),
        }
    }
}
