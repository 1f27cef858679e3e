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
    /// operator listed before it in the manifest that cover their key group: the chain
    /// of the worker that owns the group, which after a restore at another number of
    /// workers may hold objects that other workers wrote (see [`merge_chains`]).
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

/// For each part of `parts` (a manifest's, in manifest order), the key groups it covers
/// whose sections a restore does not need: a later part of the same operator holds a
/// base of them. The same rule as [`newest_bases`] over each worker's chain, for the
/// whole manifest at once, so that a restore reads only the sections it will decode.
pub fn superseded_groups(parts: &[PartEntry]) -> Vec<std::collections::BTreeSet<u32>> {
    let mut later_bases: std::collections::HashMap<&str, std::collections::BTreeSet<u32>> =
        std::collections::HashMap::new();
    let mut out = vec![std::collections::BTreeSet::new(); parts.len()];
    for (at, part) in parts.iter().enumerate().rev() {
        let bases = later_bases.entry(part.operator.as_str()).or_default();
        if part.key_group_start < part.key_group_end {
            out[at] = bases
                .range(part.key_group_start..part.key_group_end)
                .copied()
                .collect();
        }
        match &part.packed {
            None => bases.extend(part.key_group_start..part.key_group_end),
            Some(ranges) => {
                for (lo, hi) in ranges {
                    bases.extend(*lo..*hi);
                }
            }
        }
    }
    out
}

/// The index of the first part of `chain` (the parts of one operator that one worker
/// reports, oldest first) that a restore of the key groups `[lo, hi)` still needs: everything
/// from the oldest of the groups' newest bases ([`newest_bases`]) on. The parts before it
/// can leave the chain.
pub fn chain_start(chain: &[&PartEntry], range: (u32, u32)) -> usize {
    newest_bases(chain, range)
        .into_iter()
        .map(|b| b.unwrap_or(0))
        .min()
        .unwrap_or(0)
}

/// The parts of a checkpoint from its workers' reports, in report order, as the
/// manifest lists them: each object once, and each operator's objects oldest first.
///
/// Workers that took over the chains of a checkpoint written by another number of
/// workers report the objects of those chains that cover any of their key groups: an
/// object that covers groups of two workers is reported by both, and one worker may
/// still report an old object whose other groups a second worker has since given newer
/// bases. A restore applies a key group's sections in manifest order, skipping those
/// before the group's newest base, so the order must be every group's history. Each
/// group's sections lie in objects that its successive owners wrote one after the
/// other, each in the directory of the epoch it was written for; so an object reported
/// twice is listed once, and each operator's objects are ordered by the epoch of their
/// checkpoint directory (stably: one worker's chain is in that order already, and
/// objects of one epoch hold disjoint groups). The operators keep the order in which
/// they first appear.
pub fn merge_chains(parts: Vec<PartEntry>) -> Vec<PartEntry> {
    let mut seen = std::collections::HashSet::new();
    let mut out: Vec<PartEntry> = Vec::with_capacity(parts.len());
    for part in parts {
        if seen.insert(part.path.clone()) {
            out.push(part);
        }
    }
    let mut rank = std::collections::HashMap::new();
    for part in &out {
        let next = rank.len();
        rank.entry(part.operator.clone()).or_insert(next);
    }
    out.sort_by_cached_key(|p| {
        (
            rank[&p.operator],
            crate::layout::object_checkpoint_dir(&p.path),
        )
    });
    out
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

    fn at(op: &str, worker: usize, range: (u32, u32), path: &str) -> PartEntry {
        PartEntry {
            operator: op.into(),
            worker: WorkerIndex(worker),
            key_group_start: range.0,
            key_group_end: range.1,
            path: path.into(),
            packed: Some(vec![]),
            ..part(None)
        }
    }

    #[test]
    fn merged_chains_list_each_object_once_oldest_first() {
        let paths =
            |parts: &[PartEntry]| -> Vec<String> { parts.iter().map(|p| p.path.clone()).collect() };
        // Each worker's chain is oldest first; the workers' objects interleave by epoch.
        let plain = vec![
            at("op", 0, (0, 2), "j/chk-00000000000000000003/op/w0"),
            at("op", 0, (0, 2), "j/chk-00000000000000000005/op/w0"),
            at("op", 1, (2, 4), "j/chk-00000000000000000004/op/w1"),
            at("src", 0, (0, 4), "j/chk-00000000000000000005/src/w0"),
        ];
        assert_eq!(
            paths(&merge_chains(plain.clone())),
            paths(&[&plain[0], &plain[2], &plain[1], &plain[3]].map(|p| p.clone()))
        );
        // Worker 1 gave groups 0..2 a new base at epoch 6 and dropped the old object of
        // groups 0..4, which worker 0 (groups 2..4) still reports after it: nothing is
        // reported twice, and the old object still comes first.
        let old = at("op", 0, (0, 4), "j/chk-00000000000000000002/op/w0-g0");
        let new = at("op", 1, (0, 2), "j/chk-00000000000000000006/op/w1-g1");
        assert_eq!(
            paths(&merge_chains(vec![new.clone(), old.clone()])),
            paths(&[old, new])
        );
        // Worker 0 of three took over an old object of groups 0..4 and one of 0..2
        // (epoch 3); worker 1 took over the same 0..4 object and one of 2..4 that is
        // older than it (epoch 2), which worker 0's chain does not hold. The 2..4 object
        // must come before the 0..4 one, whatever the report order.
        let old_wide = at("op", 0, (0, 4), "j/chk-00000000000000000004/op/w0-g1");
        let old_left = at("op", 0, (0, 2), "j/chk-00000000000000000003/op/w0-g0");
        let old_right = at("op", 1, (2, 4), "j/chk-00000000000000000002/op/w1-g0");
        let new0 = at("op", 0, (0, 3), "j/chk-00000000000000000009/op/w0-g2");
        let new1 = at("op", 1, (3, 4), "j/chk-00000000000000000009/op/w1-g2");
        let src = at("src", 0, (0, 4), "j/chk-00000000000000000009/src/w0-g2");
        let reported = vec![
            old_left.clone(),
            old_wide.clone(),
            new0.clone(),
            old_right.clone(),
            old_wide.clone(),
            new1.clone(),
            src.clone(),
        ];
        let merged = merge_chains(reported);
        assert_eq!(
            paths(&merged),
            paths(&[old_right, old_left, old_wide, new0, new1, src])
        );
        // Every key group's sections are then in the order they were written.
        for g in 0..4 {
            let epochs: Vec<_> = merged
                .iter()
                .filter(|p| p.operator == "op" && (p.key_group_start..p.key_group_end).contains(&g))
                .map(|p| crate::layout::object_checkpoint_dir(&p.path))
                .collect();
            assert!(epochs.is_sorted(), "group {g}: {epochs:?}");
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
    fn superseded_groups_agree_with_each_chains_newest_bases() {
        let mut parts = vec![
            part(None),
            part(Some(vec![(1, 2)])),
            part(Some(vec![])),
            part(Some(vec![(2, 4)])),
        ];
        // Another operator's bases supersede nothing of this one's.
        let mut other = part(Some(vec![(0, 4)]));
        other.operator = "other".into();
        parts.push(other);
        let superseded = superseded_groups(&parts);
        let chain: Vec<&PartEntry> = parts[..4].iter().collect();
        let newest = newest_bases(&chain, (0, 4));
        for (at, skip) in superseded.iter().enumerate().take(4) {
            for g in 0..4u32 {
                let needed = newest[g as usize].is_none_or(|b| b <= at);
                assert_eq!(!skip.contains(&g), needed, "part {at}, group {g}");
            }
        }
        assert!(superseded[4].is_empty());
        assert_eq!(superseded[0], [1, 2, 3].into());
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
