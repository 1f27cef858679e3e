//! The restored checkpoint's parts, read and verified once per process.
//!
//! ## Design
//!
//! The run chooses its checkpoint before the dataflow starts and verifies every part
//! that this process's workers need (size, whole-object CRC, header); operators then
//! read their key groups from these kept parts (see `JobContext::restore_groups`).
//! Invariants:
//! - a part is read from storage and checked once per process, however many local
//!   workers restore from it;
//! - a kept part is dropped as soon as the last local worker that needs it took it, and
//!   every part nobody took is dropped once every local worker has built its dataflow, so
//!   restored bytes do not outlive the restore;
//! - a worker that finds no kept part reads and verifies it from the store again: a
//!   restore never skips a part silently.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use weir_checkpoint::store::VerifiedPart;
use weir_checkpoint::PartEntry;

use crate::keygroup;

/// The restored checkpoint's parts that this process's workers read, as verified when
/// the run chose its checkpoint, so that each is read and checked only once.
///
/// A part is handed to every local worker whose key groups it covers and dropped once the
/// last of them has taken it; whatever is left (parts no operator asked for) is dropped
/// when every local worker has built its dataflow. A worker that finds no kept part (it
/// asks for a part twice, or after the release) reads it from the store again.
pub(crate) struct RestoredParts {
    /// Verified parts by path, with the number of local workers yet to take each.
    parts: Mutex<HashMap<String, (VerifiedPart, usize)>>,
    /// Local workers that have not finished building their dataflow yet.
    building: AtomicUsize,
}

impl RestoredParts {
    /// Keeps `parts` (none on a fresh start) for the local workers `local` of `peers`
    /// workers over `key_groups`.
    pub(crate) fn new(
        parts: Vec<VerifiedPart>,
        local: std::ops::Range<usize>,
        key_groups: u32,
        peers: usize,
    ) -> Self {
        let building = local.len();
        let parts = parts
            .into_iter()
            .filter_map(|part| {
                let takers = local
                    .clone()
                    .filter(|w| overlaps(part.entry(), keygroup::range(*w, key_groups, peers)))
                    .count();
                (takers > 0).then(|| (part.entry().path.clone(), (part, takers)))
            })
            .collect();
        RestoredParts {
            parts: Mutex::new(parts),
            building: AtomicUsize::new(building),
        }
    }

    /// Whether `entry`'s part needs reading, by one of the local workers `local`.
    pub(crate) fn wanted(
        entry: &PartEntry,
        local: std::ops::Range<usize>,
        key_groups: u32,
        peers: usize,
    ) -> bool {
        local
            .into_iter()
            .any(|w| overlaps(entry, keygroup::range(w, key_groups, peers)))
    }

    /// Takes the kept part for `entry`, if there is one; it is dropped once every local
    /// worker that needs it has taken it.
    pub(crate) fn take(&self, entry: &PartEntry) -> Option<VerifiedPart> {
        let mut parts = self.parts.lock().expect("poisoned");
        let (part, takers) = parts.get_mut(&entry.path)?;
        if part.entry() != entry {
            return None;
        }
        *takers -= 1;
        if *takers == 0 {
            parts.remove(&entry.path).map(|(part, _)| part)
        } else {
            Some(part.clone())
        }
    }

    /// Notes that a local worker has built its dataflow; the last one drops every part
    /// still kept, and is told so (`true`): every local worker has restored its state.
    pub(crate) fn built(&self) -> bool {
        let before = self
            .building
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1));
        if before == Ok(1) {
            self.parts.lock().expect("poisoned").clear();
        }
        before == Ok(1)
    }

    /// Bytes still kept (for tests).
    #[cfg(test)]
    fn kept_bytes(&self) -> usize {
        let parts = self.parts.lock().expect("poisoned");
        parts.values().map(|(p, _)| p.bytes_read() as usize).sum()
    }
}

/// Whether a part covers any of the key groups `[lo, hi)`.
pub(crate) fn overlaps(entry: &PartEntry, (lo, hi): (u32, u32)) -> bool {
    entry.key_group_end > lo && entry.key_group_start < hi
}

/// A part entry of operator `op` by `worker` over the key groups `range`, for tests.
#[cfg(test)]
pub(crate) fn test_part(op: &str, worker: usize, range: (u32, u32), path: &str) -> PartEntry {
    PartEntry {
        operator: op.into(),
        worker: weir_checkpoint::WorkerIndex(worker),
        key_group_start: range.0,
        key_group_end: range.1,
        path: path.into(),
        size: 0,
        crc32: 0,
        packed: None,
    }
}

#[cfg(test)]
mod tests {
    use weir_checkpoint::codec;

    use super::{test_part as part, *};

    fn verified(op: &str, range: (u32, u32), path: &str, value: u64) -> VerifiedPart {
        let bytes = codec::encode("t", &vec![(range.0, value)]).unwrap();
        let mut entry = part(op, 0, range, path);
        entry.size = bytes.len() as u64;
        entry.crc32 = codec::crc32(&bytes);
        VerifiedPart::verify(&entry, bytes.into()).unwrap()
    }

    #[test]
    fn restored_parts_go_once_every_local_worker_that_needs_them_took_them() {
        // Restoring 2 workers' parts on 4 workers, of which this process runs 0 and 1.
        let a = verified("op", (0, 64), "job/chk-1/op/a", 1);
        let b = verified("op", (64, 128), "job/chk-1/op/b", 2);
        let (ea, eb) = (a.entry().clone(), b.entry().clone());
        let parts = RestoredParts::new(vec![a, b], 0..2, 128, 4);
        // Part b is for workers 2 and 3, in another process: not kept.
        assert!(parts.take(&eb).is_none());
        let size = ea.size as usize;
        assert_eq!(parts.kept_bytes(), size);
        // Part a is for workers 0 and 1: it stays until both have taken it.
        let first = parts.take(&ea).unwrap();
        assert_eq!(first.decode::<Vec<(u32, u64)>>().unwrap(), vec![(0, 1)]);
        assert_eq!(parts.kept_bytes(), size);
        assert!(parts.take(&ea).is_some());
        assert_eq!(parts.kept_bytes(), 0);
        assert!(parts.take(&ea).is_none());
    }

    #[test]
    fn restored_parts_nobody_took_go_when_every_local_worker_has_built() {
        let a = verified("op", (0, 128), "job/chk-1/op/a", 1);
        let ea = a.entry().clone();
        let parts = RestoredParts::new(vec![a], 0..2, 128, 2);
        assert!(!parts.built());
        assert_eq!(parts.kept_bytes(), ea.size as usize);
        assert!(parts.built(), "the last local worker is told");
        assert_eq!(parts.kept_bytes(), 0);
        assert!(!parts.built());
        // Without parts (a fresh start, or this process reads none), the last local
        // worker is told too.
        let none = RestoredParts::new(Vec::new(), 0..2, 128, 2);
        assert!(!none.built());
        assert!(none.built());
        // A part with the same path but another entry is not handed out.
        let other = verified("op", (0, 128), "job/chk-1/op/a", 2);
        let parts = RestoredParts::new(vec![other], 0..1, 128, 1);
        assert!(parts.take(&ea).is_none());
    }
}
