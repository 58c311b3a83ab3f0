//! Slot migrations of a cluster: expanding onto added chunks, shrinking onto the first ones,
//! auto scaling, and committing a finished migration.
//!
//! A migration is stored twice, migrating at its source part and importing at its target,
//! with the epoch it started at; the moved slots leave the source's stable slots when it
//! starts and join the target's when it commits, so every slot is owned exactly once.

use super::model::ClusterStore;
use super::model::MigrationMetaStore;
use super::model::MigrationSlotRangeStore;
use super::model::Part;
use super::slots;
use super::slots::RangeList;
use super::slots::SlotRange;
use super::slots::SlotRangeTag;
use super::state::chunk_count;
use super::state::Answer;
use super::state::Broker;
use super::state::BrokerError;

impl Broker {
    /// The slots each master (chunk * 2 + part) owns outright.
    fn holdings(cluster: &ClusterStore) -> Vec<RangeList> {
        cluster
            .chunks
            .iter()
            .flat_map(|c| c.stable_slots.iter())
            .map(|s| s.as_ref().map(|s| s.range_list.clone()).unwrap_or_default())
            .collect()
    }

    /// Writes `holdings` back and records `moves` as migrations tagged `epoch`.
    fn start_migrations(
        cluster: &mut ClusterStore,
        holdings: Vec<RangeList>,
        moves: Vec<slots::Move>,
        epoch: u64,
    ) {
        for (master, slots) in holdings.into_iter().enumerate() {
            cluster.chunks[master / 2].stable_slots[master % 2] =
                (!slots.is_empty()).then(|| SlotRange::stable(slots));
        }
        for slots::Move { src, dst, ranges } in moves {
            let meta = MigrationMetaStore {
                epoch,
                src_chunk_index: src / 2,
                src_chunk_part: src % 2,
                dst_chunk_index: dst / 2,
                dst_chunk_part: dst % 2,
            };
            for (master, is_migrating) in [(src, true), (dst, false)] {
                cluster.chunks[master / 2].migrating_slots[master % 2].push(
                    MigrationSlotRangeStore {
                        range_list: ranges.clone(),
                        is_migrating,
                        meta: meta.clone(),
                    },
                );
            }
        }
        cluster.epoch = epoch;
    }

    pub(super) fn expand(&mut self, name: &str) -> Result<Answer, BrokerError> {
        let mut holdings = Self::holdings(self.idle_cluster(name)?);
        let moves = slots::plan_expansion(&mut holdings);
        if moves.is_empty() {
            return Err(BrokerError::SlotsAlreadyEven);
        }
        let epoch = self.bump();
        Self::start_migrations(self.cluster_mut(name)?, holdings, moves, epoch);
        Ok(Answer::Done)
    }

    pub(super) fn shrink(&mut self, name: &str, node_number: usize) -> Result<Answer, BrokerError> {
        let cluster = self.cluster(name)?;
        if cluster
            .chunks
            .iter()
            .any(|c| c.stable_slots.iter().any(Option::is_none))
        {
            return Err(BrokerError::FreeNodeFound);
        }
        if cluster.is_migrating() {
            return Err(BrokerError::MigrationRunning);
        }
        let keep = chunk_count(node_number)?;
        if keep >= cluster.chunks.len() {
            return Err(BrokerError::InvalidNodeNumber);
        }
        let mut holdings = Self::holdings(cluster);
        let moves = slots::plan_shrink(&mut holdings, keep * 2);
        let epoch = self.bump();
        Self::start_migrations(self.cluster_mut(name)?, holdings, moves, epoch);
        Ok(Answer::Done)
    }

    pub(super) fn auto_scale(
        &mut self,
        now: i64,
        name: &str,
        node_number: usize,
    ) -> Result<Answer, BrokerError> {
        self.idle_cluster(name)?;
        chunk_count(node_number)?;
        // Dropping leftover free nodes first makes the call safe to repeat.
        match self.remove_free_nodes(name) {
            Ok(_) | Err(BrokerError::FreeNodeNotFound) => {}
            Err(e) => return Err(e),
        }
        let existing = self.cluster(name)?.node_number();
        if node_number > existing {
            self.add_nodes(now, name, node_number - existing)?;
            let cluster = self.cluster(name)?;
            return Ok(Answer::ScaledOut {
                proxies: cluster.proxy_addresses().cloned().collect(),
                epoch: cluster.epoch,
            });
        }
        if node_number < existing {
            self.shrink(name, node_number)?;
        }
        Ok(Answer::Done)
    }

    pub(super) fn commit_migration(
        &mut self,
        name: &str,
        slot_range: SlotRange,
    ) -> Result<Answer, BrokerError> {
        let task_epoch = match &slot_range.tag {
            SlotRangeTag::Migrating(meta) | SlotRangeTag::Importing(meta) => meta.epoch,
            SlotRangeTag::None => return Err(BrokerError::InvalidMigrationTask),
        };
        let cluster = self.cluster_mut(name)?;
        let mut found: [Option<(Part, usize)>; 2] = [None, None];
        for (chunk_index, chunk) in cluster.chunks.iter().enumerate() {
            for (part, tasks) in chunk.migrating_slots.iter().enumerate() {
                for (position, task) in tasks.iter().enumerate() {
                    if task.range_list == slot_range.range_list && task.meta.epoch == task_epoch {
                        let side = usize::from(!task.is_migrating);
                        found[side] = Some((
                            Part {
                                chunk: chunk_index,
                                part,
                            },
                            position,
                        ));
                    }
                }
            }
        }
        let [Some((src, src_position)), Some((dst, dst_position))] = found else {
            return Err(BrokerError::MigrationTaskNotFound);
        };
        cluster.chunks[src.chunk].migrating_slots[src.part].remove(src_position);
        let task = cluster.chunks[dst.chunk].migrating_slots[dst.part].remove(dst_position);
        match &mut cluster.chunks[dst.chunk].stable_slots[dst.part] {
            Some(stable) => stable.range_list.merge(&task.range_list),
            empty => *empty = Some(SlotRange::stable(task.range_list)),
        }
        self.stamp(name);
        Ok(Answer::Done)
    }
}
