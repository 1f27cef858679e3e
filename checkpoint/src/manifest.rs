//! The manifest: the last object of a checkpoint, and the only proof that it is complete.

use serde::{Deserialize, Serialize};

use crate::ids::{Epoch, Generation, WorkerIndex};

/// One object written for a checkpoint: an operator's state or a source's positions,
/// written by one worker, covering a range of key groups.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PartEntry {
    /// The operator's name, unique in the job.
    pub operator: String,
    /// The worker that wrote the part.
    pub worker: WorkerIndex,
    /// First key group in the part.
    pub key_group_start: u32,
    /// One past the last key group in the part.
    pub key_group_end: u32,
    /// The object's path relative to the store root.
    pub path: String,
    /// The object's size in bytes.
    pub size: u64,
    /// CRC-32 of the whole object, header included.
    pub crc32: u32,
    /// For a packed object (see [`crate::pack`]): the key group ranges `[start, end)` it
    /// holds a base for. Its other sections are deltas over the parts of the same
    /// operator and worker listed before it in the manifest, which form its chain.
    /// Absent (or null) for a whole part: a base for all its key groups. Always
    /// serialized, since part entries also travel in bincode reports, which cannot skip
    /// a field.
    #[serde(default)]
    pub packed: Option<Vec<(u32, u32)>>,
}

impl PartEntry {
    /// Whether the part holds a base for key group `group`: a whole part does for
    /// every key group it covers.
    pub fn is_base_for(&self, group: u32) -> bool {
        match &self.packed {
            None => (self.key_group_start..self.key_group_end).contains(&group),
            Some(ranges) => ranges.iter().any(|(lo, hi)| (*lo..*hi).contains(&group)),
        }
    }
}

/// For each key group of `[lo, hi)`, the position in `chain` (parts in manifest order)
/// of the last part that holds a base of it, if any. A restore needs a group's sections
/// from that part on: everything before it is replaced by that base.
pub fn newest_bases(chain: &[&PartEntry], (lo, hi): (u32, u32)) -> Vec<Option<usize>> {
    (lo..hi)
        .map(|g| chain.iter().rposition(|p| p.is_base_for(g)))
        .collect()
}

/// The index of the first part of `chain` (one operator's parts written by one worker,
/// oldest first) that a restore of the key groups `[lo, hi)` still needs: everything
/// from the oldest of the groups' newest bases ([`newest_bases`]) on. The parts before it
/// can leave the chain.
pub fn chain_start(chain: &[&PartEntry], range: (u32, u32)) -> usize {
    newest_bases(chain, range)
        .into_iter()
        .map(|b| b.unwrap_or(0))
        .min()
        .unwrap_or(0)
}

/// A sink's pre-committed output that the checkpoint covers and that must be committed
/// once the checkpoint is complete.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SinkEntry {
    /// The sink's name, unique in the job.
    pub sink: String,
    /// The worker that pre-committed it.
    pub worker: WorkerIndex,
    /// The epoch whose output it holds.
    pub epoch: Epoch,
    /// The generation that wrote it.
    pub generation: Generation,
    /// The sink's own description of what to commit (a staged file name, a transaction id).
    pub handle: String,
}

/// Everything a restore needs to know about a complete checkpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// The job's name.
    pub job: String,
    /// The checkpoint's epoch: the state covers exactly the records of epochs <= this.
    pub epoch: Epoch,
    /// The generation (restart count) that wrote it.
    pub generation: Generation,
    /// The number of workers that wrote it.
    pub workers: usize,
    /// The number of key groups keyed state is split into (fixed for the job's life).
    pub key_groups: u32,
    /// Wall-clock milliseconds since the Unix epoch when the manifest was written.
    pub created_ms: u64,
    /// Wall-clock milliseconds since the Unix epoch of the epoch's barrier, when known:
    /// `created_ms - barrier_ms` is the checkpoint's duration.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub barrier_ms: Option<u64>,
    /// The names of the job's checkpointed operators, sources and sinks, so that a
    /// restore into a changed job graph is detected.
    pub operators: Vec<String>,
    /// Every state and position part.
    pub parts: Vec<PartEntry>,
    /// Every pre-committed sink output that this checkpoint commits.
    pub sinks: Vec<SinkEntry>,
    /// The name of the node whose link commits this checkpoint (see
    /// `protocol::Node`); absent in manifests written before links existed,
    /// which are committed by existing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub link: Option<String>,
}

impl Manifest {
    /// Total size of the checkpoint's parts in bytes.
    pub fn total_bytes(&self) -> u64 {
        // Saturating: a manifest read from storage may claim any sizes.
        self.parts
            .iter()
            .fold(0u64, |total, p| total.saturating_add(p.size))
    }

    /// The parts of one operator.
    pub fn parts_of<'a>(&'a self, operator: &'a str) -> impl Iterator<Item = &'a PartEntry> + 'a {
        self.parts.iter().filter(move |p| p.operator == operator)
    }

    /// The pending outputs of one sink.
    pub fn sinks_of<'a>(&'a self, sink: &'a str) -> impl Iterator<Item = &'a SinkEntry> + 'a {
        self.sinks.iter().filter(move |s| s.sink == sink)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_total_of_claimed_sizes_saturates() {
        let mut big = part(None);
        big.size = u64::MAX;
        let m = Manifest {
            job: "j".into(),
            epoch: Epoch(1),
            generation: Generation(0),
            workers: 1,
            key_groups: 4,
            created_ms: 0,
            barrier_ms: None,
            operators: vec![],
            parts: vec![big, part(None), part(None)],
            sinks: vec![],
            link: None,
        };
        assert_eq!(m.total_bytes(), u64::MAX);
    }

    #[test]
    fn part_entries_round_trip_through_bincode_and_json() {
        for packed in [None, Some(vec![(0, 2)])] {
            let entry = part(packed);
            let bytes = bincode::serialize(&entry).unwrap();
            assert_eq!(bincode::deserialize::<PartEntry>(&bytes).unwrap(), entry);
            let json = serde_json::to_string(&entry).unwrap();
            assert_eq!(serde_json::from_str::<PartEntry>(&json).unwrap(), entry);
        }
        // A manifest written before packed objects existed has no such field.
        let old = r#"{"operator":"op","worker":0,"key_group_start":0,"key_group_end":4,"path":"p","size":0,"crc32":0}"#;
        assert_eq!(serde_json::from_str::<PartEntry>(old).unwrap(), part(None));
    }

    fn part(packed: Option<Vec<(u32, u32)>>) -> PartEntry {
        PartEntry {
            operator: "op".into(),
            worker: WorkerIndex(0),
            key_group_start: 0,
            key_group_end: 4,
            path: "p".into(),
            size: 0,
            crc32: 0,
            packed,
        }
    }

    #[test]
    fn a_chain_starts_at_the_oldest_newest_base() {
        let full = part(Some(vec![(0, 4)]));
        let some = part(Some(vec![(1, 3)]));
        let rest = part(Some(vec![(0, 1), (3, 4)]));
        let delta = part(Some(vec![]));
        let whole = part(None);
        assert_eq!(chain_start(&[&full, &delta], (0, 4)), 0);
        assert_eq!(chain_start(&[&full, &some, &delta], (0, 4)), 0);
        assert_eq!(chain_start(&[&full, &some, &rest], (0, 4)), 1);
        assert_eq!(chain_start(&[&full, &delta, &full], (0, 4)), 2);
        // A whole part is a base for all its key groups.
        assert_eq!(chain_start(&[&full, &whole], (0, 4)), 1);
        assert!(!some.is_base_for(0) && some.is_base_for(2) && !some.is_base_for(3));
    }

    #[test]
    fn a_restore_needs_each_group_from_its_newest_base_on() {
        let whole = part(None);
        let some = part(Some(vec![(1, 2)]));
        let delta = part(Some(vec![]));
        let rest = part(Some(vec![(2, 4)]));
        let chain = [&whole, &some, &delta, &rest];
        assert_eq!(
            newest_bases(&chain, (0, 4)),
            vec![Some(0), Some(1), Some(3), Some(3)]
        );
        assert_eq!(newest_bases(&chain, (3, 6)), vec![Some(3), None, None]);
        assert_eq!(newest_bases(&chain[1..], (0, 2)), vec![None, Some(0)]);
    }
}
