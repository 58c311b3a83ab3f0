//! Snapshot files.
//!
//! A snapshot is a file, never a buffer: it is written by streaming a point-in-time RocksDB
//! view of the state machine's data to disk, sent to followers by streaming the file, and
//! installed by streaming it back into a write batch. The format is deliberately dull:
//!
//! ```text
//! "KEELSNAP1" | u32 meta length | bincode(meta) | { u32 key length | u32 value length | key | value }* | u32::MAX
//! ```
//!
//! The end marker lets a reader tell a complete file from a truncated transfer.

use std::fs::File;
use std::io::BufReader;
use std::io::BufWriter;
use std::io::Read;
use std::io::Write;
use std::path::Path;
use std::path::PathBuf;

use crate::txn::Pair;
use crate::Error;

const MAGIC: &[u8; 9] = b"KEELSNAP1";
const END: u32 = u32::MAX;

/// A snapshot on disk: openraft's `SnapshotData` for keel.
#[derive(Debug)]
pub struct SnapshotFile {
    pub path: PathBuf,
    pub file: File,
}

impl SnapshotFile {
    /// Creates an empty file at `path` to receive a snapshot into.
    pub fn create(path: PathBuf) -> Result<Self, Error> {
        let file = File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .map_err(|e| Error::io(&path, e))?;
        Ok(Self { path, file })
    }

    pub fn open(path: PathBuf) -> Result<Self, Error> {
        let file = File::open(&path).map_err(|e| Error::io(&path, e))?;
        Ok(Self { path, file })
    }

    /// Size in bytes.
    pub fn len(&self) -> Result<u64, Error> {
        Ok(self
            .file
            .metadata()
            .map_err(|e| Error::io(&self.path, e))?
            .len())
    }

    pub fn is_empty(&self) -> Result<bool, Error> {
        Ok(self.len()? == 0)
    }

    /// Checks that the file is a whole keel snapshot (its header and its end marker), so a
    /// transfer cut short is refused before it reaches the state machine.
    pub fn verify(&self) -> Result<(), Error> {
        use std::os::unix::fs::FileExt;
        SnapshotReader::open(self)?;
        let len = self.len()?;
        let mut tail = [0u8; 4];
        let complete = len >= 4
            && self.file.read_exact_at(&mut tail, len - 4).is_ok()
            && u32::from_le_bytes(tail) == END;
        if complete {
            Ok(())
        } else {
            Err(Error::Corrupt(format!(
                "snapshot {}: truncated",
                self.path.display()
            )))
        }
    }

    /// A fresh handle on the file, positioned at its start.
    pub fn reopen(&self) -> Result<File, Error> {
        File::open(&self.path).map_err(|e| Error::io(&self.path, e))
    }
}

/// Streams `pairs` into a new snapshot file at `path`, fsynced before it returns.
pub(crate) fn write(
    path: &Path,
    meta: &[u8],
    pairs: impl Iterator<Item = Result<Pair, Error>>,
) -> Result<(), Error> {
    let io_err = |e| Error::io(path, e);
    let file = File::create(path).map_err(io_err)?;
    let mut out = BufWriter::with_capacity(1 << 20, file);
    out.write_all(MAGIC).map_err(io_err)?;
    write_len(&mut out, meta.len()).map_err(io_err)?;
    out.write_all(meta).map_err(io_err)?;
    for pair in pairs {
        let (key, value) = pair?;
        write_len(&mut out, key.len()).map_err(io_err)?;
        write_len(&mut out, value.len()).map_err(io_err)?;
        out.write_all(&key).map_err(io_err)?;
        out.write_all(&value).map_err(io_err)?;
    }
    out.write_all(&END.to_le_bytes()).map_err(io_err)?;
    let file = out.into_inner().map_err(|e| io_err(e.into_error()))?;
    file.sync_all().map_err(io_err)?;
    Ok(())
}

fn write_len(out: &mut impl Write, len: usize) -> std::io::Result<()> {
    let len = u32::try_from(len).map_err(std::io::Error::other)?;
    out.write_all(&len.to_le_bytes())
}

/// Reads a snapshot file from its start: the metadata first, then the pairs one by one.
pub(crate) struct SnapshotReader {
    path: PathBuf,
    input: BufReader<File>,
    done: bool,
}

impl SnapshotReader {
    /// Opens `snapshot` for reading and returns it with its metadata bytes.
    pub(crate) fn open(snapshot: &SnapshotFile) -> Result<(Self, Vec<u8>), Error> {
        // A handle of its own: a duplicated one would share (and move) the file offset of
        // `snapshot.file`, which the network streams from.
        let path = snapshot.path.clone();
        let file = File::open(&path).map_err(|e| Error::io(&path, e))?;
        let mut reader = Self {
            path,
            input: BufReader::with_capacity(1 << 20, file),
            done: false,
        };
        let mut magic = [0u8; MAGIC.len()];
        reader.read_exact(&mut magic)?;
        if &magic != MAGIC {
            return Err(reader.corrupt("not a keel snapshot"));
        }
        let len = reader.read_u32()?;
        let meta = reader.read_vec(len)?;
        Ok((reader, meta))
    }

    fn corrupt(&self, what: &str) -> Error {
        Error::Corrupt(format!("snapshot {}: {what}", self.path.display()))
    }

    fn read_exact(&mut self, buf: &mut [u8]) -> Result<(), Error> {
        self.input
            .read_exact(buf)
            .map_err(|_| self.corrupt("truncated"))
    }

    fn read_u32(&mut self) -> Result<u32, Error> {
        let mut buf = [0u8; 4];
        self.read_exact(&mut buf)?;
        Ok(u32::from_le_bytes(buf))
    }

    fn read_vec(&mut self, len: u32) -> Result<Vec<u8>, Error> {
        let mut buf = vec![0u8; len as usize];
        self.read_exact(&mut buf)?;
        Ok(buf)
    }

    fn next_pair(&mut self) -> Result<Option<Pair>, Error> {
        let key_len = self.read_u32()?;
        if key_len == END {
            return Ok(None);
        }
        let value_len = self.read_u32()?;
        let key = self.read_vec(key_len)?;
        let value = self.read_vec(value_len)?;
        Ok(Some((key, value)))
    }
}

impl Iterator for SnapshotReader {
    type Item = Result<Pair, Error>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        let next = self.next_pair();
        self.done = !matches!(next, Ok(Some(_)));
        next.transpose()
    }
}
