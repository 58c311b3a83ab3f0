//! Redis Cluster slots as undermoon describes them: inclusive ranges, range lists, and the
//! tags that mark a range migrating out of one node and importing into another.
//!
//! The arithmetic that decides which master holds how many slots also lives here, because
//! creation, expansion and shrinking must agree on it: masters are numbered in cluster order
//! and each gets `SLOT_COUNT / masters` slots, the first `SLOT_COUNT % masters` one more.

use serde::Deserialize;
use serde::Serialize;

/// Redis Cluster's slot count.
pub const SLOT_COUNT: u32 = 16384;

/// An inclusive range of slots, `[start, end]` on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Range(pub u32, pub u32);

impl Range {
    pub fn len(&self) -> u32 {
        self.1 - self.0 + 1
    }
}

/// Ranges in slot order, merged where they touch (see [`RangeList::compact`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct RangeList(pub Vec<Range>);

impl RangeList {
    pub fn single(start: u32, end: u32) -> Self {
        Self(vec![Range(start, end)])
    }

    pub fn slot_count(&self) -> u32 {
        self.0.iter().map(Range::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Sorts the ranges and merges those that overlap or touch.
    pub fn compact(&mut self) {
        self.0.sort();
        let mut merged: Vec<Range> = Vec::with_capacity(self.0.len());
        for range in self.0.drain(..) {
            match merged.last_mut() {
                Some(last) if range.0 <= last.1.saturating_add(1) => last.1 = last.1.max(range.1),
                _ => merged.push(range),
            }
        }
        self.0 = merged;
    }

    pub fn merge(&mut self, other: &RangeList) {
        self.0.extend_from_slice(&other.0);
        self.compact();
    }

    /// Removes `count` slots from the high end (expansion hands out the tail of each master).
    pub fn take_last(&mut self, mut count: u32) -> RangeList {
        let mut taken = Vec::new();
        while count > 0 {
            let Some(last) = self.0.last_mut() else { break };
            if last.len() <= count {
                count -= last.len();
                taken.push(*last);
                self.0.pop();
            } else {
                taken.push(Range(last.1 - count + 1, last.1));
                last.1 -= count;
                count = 0;
            }
        }
        let mut taken = RangeList(taken);
        taken.compact();
        taken
    }

    /// Removes `count` slots from the low end (shrinking drains a master from its start).
    pub fn take_first(&mut self, mut count: u32) -> RangeList {
        let mut taken = Vec::new();
        while count > 0 && !self.0.is_empty() {
            let first = &mut self.0[0];
            if first.len() <= count {
                count -= first.len();
                taken.push(self.0.remove(0));
            } else {
                taken.push(Range(first.0, first.0 + count - 1));
                first.0 += count;
                count = 0;
            }
        }
        RangeList(taken)
    }

    /// Whether every range is inside the slot space and ordered without overlaps.
    pub fn is_well_formed(&self) -> bool {
        self.0.iter().all(|r| r.0 <= r.1 && r.1 < SLOT_COUNT)
            && self.0.windows(2).all(|w| w[0].1 < w[1].0)
    }
}

/// Where a migrating range goes, as the server proxies see it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MigrationMeta {
    pub epoch: u64,
    pub src_proxy_address: String,
    pub src_node_address: String,
    pub dst_proxy_address: String,
    pub dst_node_address: String,
}

/// `"None"`, `{"Migrating": meta}` or `{"Importing": meta}` on the wire.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum SlotRangeTag {
    Migrating(MigrationMeta),
    Importing(MigrationMeta),
    None,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SlotRange {
    pub range_list: RangeList,
    pub tag: SlotRangeTag,
}

impl SlotRange {
    pub fn stable(range_list: RangeList) -> Self {
        Self {
            range_list,
            tag: SlotRangeTag::None,
        }
    }
}

/// How many slots master number `index` of `masters` holds when slots are even.
pub fn even_share(index: usize, masters: usize) -> u32 {
    let masters = masters as u32;
    let index = index as u32;
    SLOT_COUNT / masters + u32::from(index < SLOT_COUNT % masters)
}

/// The even split of all slots over `masters` masters, in master order.
pub fn even_split(masters: usize) -> Vec<RangeList> {
    let mut next = 0;
    (0..masters)
        .map(|index| {
            let count = even_share(index, masters);
            let list = RangeList::single(next, next + count - 1);
            next += count;
            list
        })
        .collect()
}

/// One planned move: `ranges` go from master `src` to master `dst` (master numbers).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Move {
    pub src: usize,
    pub dst: usize,
    pub ranges: RangeList,
}

/// Plans an expansion: `holdings[m]` are the slots master `m` holds now (empty for the
/// masters of newly added chunks, which come last). Every master ends with its even share;
/// each old master gives its surplus from the tail of its slots, filling new masters in order.
pub fn plan_expansion(holdings: &mut [RangeList]) -> Vec<Move> {
    let masters = holdings.len();
    let receivers: Vec<usize> = (0..masters).filter(|m| holdings[*m].is_empty()).collect();
    let mut moves = Vec::new();
    let mut receiver = receivers.iter().copied().peekable();
    let mut received = 0;
    for (src, held) in holdings.iter_mut().enumerate() {
        while held.slot_count() > even_share(src, masters) {
            let Some(&dst) = receiver.peek() else {
                return moves;
            };
            let need = even_share(dst, masters) - received;
            let surplus = held.slot_count() - even_share(src, masters);
            let count = need.min(surplus);
            let ranges = held.take_last(count);
            moves.push(Move { src, dst, ranges });
            received += count;
            if received == even_share(dst, masters) {
                receiver.next();
                received = 0;
            }
        }
    }
    moves
}

/// Plans a shrink to the first `keep` masters: every slot of the other masters moves, from the
/// start of each, to the kept masters in order until each holds its even share of `keep`.
/// Like [`plan_expansion`], it takes the moved slots out of `holdings` and gives them to no one:
/// the targets own them only when the migration commits.
pub fn plan_shrink(holdings: &mut [RangeList], keep: usize) -> Vec<Move> {
    let mut owned: Vec<u32> = holdings[..keep].iter().map(RangeList::slot_count).collect();
    let mut moves = Vec::new();
    let mut dst = 0;
    for (src, held) in holdings.iter_mut().enumerate().skip(keep) {
        while !held.is_empty() && dst < keep {
            let need = even_share(dst, keep).saturating_sub(owned[dst]);
            if need == 0 {
                dst += 1;
                continue;
            }
            let ranges = held.take_first(need);
            owned[dst] += ranges.slot_count();
            moves.push(Move { src, dst, ranges });
        }
    }
    moves
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counts(holdings: &[RangeList]) -> Vec<u32> {
        holdings.iter().map(RangeList::slot_count).collect()
    }

    #[test]
    fn even_split_covers_every_slot_once() {
        for masters in [1, 2, 3, 6, 8, 10, 64] {
            let split = even_split(masters);
            let mut all = RangeList::default();
            for list in &split {
                all.merge(list);
            }
            assert_eq!(
                all,
                RangeList::single(0, SLOT_COUNT - 1),
                "{masters} masters"
            );
            let counts = counts(&split);
            assert!(counts.windows(2).all(|w| w[0] >= w[1] && w[0] - w[1] <= 1));
        }
    }

    #[test]
    fn expansion_then_shrink_returns_to_even() {
        for (old, new) in [(2, 4), (4, 6), (6, 8), (2, 8), (8, 10)] {
            let mut holdings = even_split(old);
            holdings.resize(new, RangeList::default());
            let moves = plan_expansion(&mut holdings);
            for m in &moves {
                holdings[m.dst].merge(&m.ranges);
            }
            let expected: Vec<u32> = (0..new).map(|i| even_share(i, new)).collect();
            assert_eq!(counts(&holdings), expected, "{old} -> {new}");

            let moves = plan_shrink(&mut holdings, old);
            assert!(moves.iter().all(|m| m.src >= old && m.dst < old));
            for m in &moves {
                holdings[m.dst].merge(&m.ranges);
            }
            let expected: Vec<u32> = (0..old).map(|i| even_share(i, old)).collect();
            assert_eq!(counts(&holdings[..old]), expected, "{new} -> {old}");
            assert!(holdings[old..].iter().all(RangeList::is_empty));
        }
    }

    #[test]
    fn take_splits_ranges_and_compact_merges_them() {
        let mut list = RangeList(vec![Range(0, 9), Range(20, 29)]);
        assert_eq!(
            list.take_last(15),
            RangeList(vec![Range(5, 9), Range(20, 29)])
        );
        assert_eq!(list, RangeList::single(0, 4));
        let mut list = RangeList(vec![Range(10, 19), Range(0, 9), Range(30, 30)]);
        list.compact();
        assert_eq!(list, RangeList(vec![Range(0, 19), Range(30, 30)]));
        assert_eq!(list.take_first(3), RangeList::single(0, 2));
    }
}
