//! Snapshot files.
//!
//! A snapshot on the wire is a file, never a buffer: it is written by streaming a
//! point-in-time RocksDB view of the state machine's data to disk (see [`crate::frozen`] for
//! when), sent to followers by streaming the file, and installed by streaming it back into a
//! write batch. The format is deliberately dull:
//!
//! ```text
//! "KEELSNAP2" | u32 meta length | bincode(meta) | { u32 key length | u32 value length | key | value }* | u32::MAX | u32 CRC-32
//! ```
//!
//! The end marker lets a reader tell a complete file from a truncated transfer; the CRC-32 of
//! every byte before it catches a file damaged in transfer or on disk, which would otherwise
//! install as a state no other node has. [`SnapshotFile::verify`] checks both before a
//! received file reaches the state machine, and reading pairs checks the CRC again at the end,
//! before an install completes. Files of the first version (`KEELSNAP1`, no CRC) are still
//! read, so a node keeps the snapshots an older keel wrote.

use std::fs::File;
use std::io::BufReader;
use std::io::BufWriter;
use std::io::Read;
use std::io::Write;
use std::path::Path;
use std::path::PathBuf;
use std::sync::Arc;

use crate::frozen::FrozenState;
use crate::txn::Pair;
use crate::Error;

const MAGIC: &[u8; 9] = b"KEELSNAP2";
/// The first version's magic: no CRC after the end marker.
const MAGIC_V1: &[u8; 9] = b"KEELSNAP1";
const END: u32 = u32::MAX;

/// openraft's `SnapshotData` for keel: a snapshot's bytes, in a file or still this node's
/// frozen state.
#[derive(Debug)]
pub enum SnapshotData {
    /// A snapshot file, such as one received from the leader.
    File(SnapshotFile),
    /// This node's own snapshot, written to a file when first opened.
    Frozen(Arc<FrozenState>),
}

impl SnapshotData {
    /// A handle on the snapshot's bytes from their start, as the network sends them.
    /// Blocking: the first open of a frozen state writes its file.
    pub fn open(&self) -> Result<File, Error> {
        match self {
            Self::File(file) => file.reopen(),
            Self::Frozen(state) => Ok(SnapshotFile::open(state.file()?)?.file),
        }
    }
}

/// A snapshot on disk.
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

    /// Checks that the file is a whole, undamaged keel snapshot (header, end marker and CRC),
    /// so a transfer cut short or corrupted is refused before it reaches the state machine.
    pub fn verify(&self) -> Result<(), Error> {
        let (reader, _) = SnapshotReader::open(self)?;
        let len = self.len()?;
        let trailer = if reader.checksummed { 8 } else { 4 };
        let mut input = self.reopen()?;
        let mut hasher = crc32fast::Hasher::new();
        let mut left = len
            .checked_sub(trailer)
            .ok_or_else(|| reader.corrupt("truncated"))?;
        let mut chunk = vec![0u8; 1 << 20];
        while left > 0 {
            let take = chunk.len().min(usize::try_from(left).unwrap_or(usize::MAX));
            input
                .read_exact(&mut chunk[..take])
                .map_err(|_| reader.corrupt("truncated"))?;
            hasher.update(&chunk[..take]);
            left -= take as u64;
        }
        let mut tail = [0u8; 8];
        let tail = &mut tail[..trailer as usize];
        input
            .read_exact(tail)
            .map_err(|_| reader.corrupt("truncated"))?;
        if u32::from_le_bytes(tail[..4].try_into().expect("4 bytes")) != END {
            return Err(reader.corrupt("truncated"));
        }
        if reader.checksummed {
            // The CRC covers the end marker too.
            hasher.update(&tail[..4]);
            if u32::from_le_bytes(tail[4..].try_into().expect("4 bytes")) != hasher.finalize() {
                return Err(reader.corrupt("checksum mismatch: the file is damaged"));
            }
        }
        Ok(())
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
    let mut out = Checksummed {
        inner: BufWriter::with_capacity(1 << 20, file),
        hasher: crc32fast::Hasher::new(),
    };
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
    let crc = out.hasher.finalize();
    let mut file = out.inner;
    file.write_all(&crc.to_le_bytes()).map_err(io_err)?;
    let file = file.into_inner().map_err(|e| io_err(e.into_error()))?;
    file.sync_all().map_err(io_err)?;
    Ok(())
}

/// A writer that keeps the CRC-32 of what passes through it.
struct Checksummed<W> {
    inner: W,
    hasher: crc32fast::Hasher,
}

impl<W: Write> Write for Checksummed<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let written = self.inner.write(buf)?;
        self.hasher.update(&buf[..written]);
        Ok(written)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
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
    /// Whether the file carries a CRC (every version but the first).
    checksummed: bool,
    /// The CRC-32 of the bytes read so far.
    hasher: crc32fast::Hasher,
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
            checksummed: true,
            hasher: crc32fast::Hasher::new(),
        };
        let mut magic = [0u8; MAGIC.len()];
        reader.read_exact(&mut magic)?;
        reader.checksummed = match &magic {
            MAGIC => true,
            MAGIC_V1 => false,
            _ => return Err(reader.corrupt("not a keel snapshot")),
        };
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
            .map_err(|_| self.corrupt("truncated"))?;
        self.hasher.update(buf);
        Ok(())
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
            if self.checksummed {
                let crc = self.hasher.clone().finalize();
                if self.read_u32()? != crc {
                    return Err(self.corrupt("checksum mismatch: the file is damaged"));
                }
            }
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
