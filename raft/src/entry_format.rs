//! Which log entry layout every member of the cluster can read.
//!
//! Builds before entry format 2 read one proposal per log entry and stop at an entry of
//! several (see [`crate::types::Proposals`]). During a rolling upgrade such a build may still
//! follow a leader of this one, so a leader writes entries of several proposals only once every
//! other member has announced format 2: a follower announces the formats it reads in the
//! [`HEADER`] of its answer to the leader's append stream upgrade, which this leader
//! remembers per node for as long as it runs. A member it has not heard from since it started
//! (one that is down, or predates append streams) counts as one that cannot, so until it
//! answers, every write gets an entry of its own, as before.
//!
//! A node of an earlier build that joined a cluster whose log already holds entries of several
//! proposals could not catch up, so a leader asks a node what it reads before adding it, the
//! same way (an append stream upgrade, closed at once), and refuses one that reads only one
//! proposal per entry, whether or not the log holds such entries yet: join nodes of the
//! leader's build or a later one, also in the middle of a rolling upgrade. Nothing can stop a
//! member taken back to an earlier build once such entries were written: upgrade, do not
//! downgrade.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::Mutex;

use crate::types::NodeId;

/// The header of an append stream's `101 Switching Protocols` that names the newest entry
/// format the follower reads.
pub const HEADER: &str = "x-keel-entry-format";

/// One proposal per entry: what every build reads.
pub const ONE_PROPOSAL: u32 = 1;

/// Several proposals per entry: what this build writes once every member reads it.
pub const SEVERAL_PROPOSALS: u32 = 2;

/// The format a peer's [`HEADER`] names: one proposal per entry if it names none (an earlier
/// build) or something this build cannot read as a format.
pub fn announced_format(header: Option<&str>) -> u32 {
    header
        .and_then(|f| f.trim().parse().ok())
        .unwrap_or(ONE_PROPOSAL)
}

/// What each peer announced to this node when it opened an append stream to it.
#[derive(Debug, Clone, Default)]
pub struct PeerFormats(Arc<Mutex<HashMap<NodeId, u32>>>);

impl PeerFormats {
    /// Records what `peer` answered to an upgrade, `None` if it named no format.
    pub fn announced(&self, peer: NodeId, format: Option<&str>) {
        self.0
            .lock()
            .expect("peer formats")
            .insert(peer, announced_format(format));
    }

    /// Whether every one of `peers` announced that it reads entries of several proposals.
    pub fn all_read_several(&self, mut peers: impl Iterator<Item = NodeId>) -> bool {
        let formats = self.0.lock().expect("peer formats");
        peers.all(|peer| formats.get(&peer).is_some_and(|f| *f >= SEVERAL_PROPOSALS))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_of_several_proposals_wait_for_every_peer_to_announce_them() {
        let formats = PeerFormats::default();
        assert!(formats.all_read_several([].into_iter()));
        assert!(!formats.all_read_several([2, 3].into_iter()));
        formats.announced(2, Some("2"));
        assert!(!formats.all_read_several([2, 3].into_iter()));
        // A peer of an earlier build names no format.
        formats.announced(3, None);
        assert!(!formats.all_read_several([2, 3].into_iter()));
        formats.announced(3, Some(" 2"));
        assert!(formats.all_read_several([2, 3].into_iter()));
        // Restarted on an earlier build.
        formats.announced(2, Some("nonsense"));
        assert!(!formats.all_read_several([2, 3].into_iter()));
    }
}
