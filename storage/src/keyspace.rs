//! Key encodings shared by the stores: log indexes as big-endian integers so that RocksDB's
//! byte order is numeric order, and the fixed names of metadata keys.

pub(crate) fn index_key(index: u64) -> [u8; 8] {
    index.to_be_bytes()
}

pub(crate) fn key_index(key: &[u8]) -> Result<u64, crate::Error> {
    let bytes: [u8; 8] = key
        .try_into()
        .map_err(|_| crate::Error::Corrupt(format!("log key of {} bytes", key.len())))?;
    Ok(u64::from_be_bytes(bytes))
}

pub(crate) const VOTE: &[u8] = b"vote";
pub(crate) const COMMITTED: &[u8] = b"committed";
pub(crate) const LAST_PURGED: &[u8] = b"last_purged";
pub(crate) const LAST_APPLIED: &[u8] = b"last_applied";
pub(crate) const MEMBERSHIP: &[u8] = b"membership";
/// Present once the cluster's leader told this node it removed it.
pub(crate) const REMOVED: &[u8] = b"removed";
/// Present while a snapshot install is loading: which file, and the snapshot's metadata.
pub(crate) const INSTALLING: &[u8] = b"installing";
