//! Keyed state that checkpoints incrementally: a map per key group, the keys changed
//! since the last snapshot, and a chain of packed objects per operator and worker.
//!
//! ## Design
//!
//! A worker's state of one operator is split into its key groups, each a hash map. The
//! operator tells the state which keys it changed ([`KeyedState::changed`]); removals
//! through [`KeyedState::retain`] are recorded as tombstones. At a barrier,
//! [`KeyedState::seal`] decides one packed object (see [`weir_checkpoint::pack`]) with a
//! section per key group that needs one:
//! - a **base**, the group's whole state, encoded at the barrier, for a group that has
//!   none in the chain (restore from a savepoint, a failed upload). A group that was
//!   empty where the chain starts (a fresh state) needs none while it fills: its deltas
//!   from there are its state, it gets a base at the barrier only while still empty (a
//!   few bytes), and a rebase (below) once its deltas outgrow the ratio; so a state
//!   filled in the first interval is not encoded whole at the barrier;
//! - a **rebase**, the group's whole state encoded off the barrier (below), for a group
//!   whose deltas since its base outgrew `compaction-ratio` of it or whose base is
//!   [`MAX_AGE`] objects old, at most a few groups per snapshot so that new bases are
//!   staggered over checkpoints ([`rebase_plan`]);
//! - a **delta**, one value per changed key and a tombstone per removed one, for every
//!   other group that changed.
//!
//! Deltas are encoded off the barrier, copy-on-write: the barrier only takes each
//! changed group's set of changed keys (the snapshot is *sealed*), and the entries are
//! encoded a slice per activation of the operator, after its records
//! ([`KeyedState::background`]), or the moment a record is about to change a key that
//! is still waiting: every change goes through [`KeyedState::group_mut`] (which names the
//! key), [`KeyedState::remove`], [`KeyedState::retain`] or [`KeyedState::update_all`],
//! and each first encodes the key's value for the sealed snapshots waiting for it. A key
//! still waiting has not changed since the barrier, so every entry is its value at the
//! barrier. [`KeyedState::take_sealed`] returns the objects once encoded, in barrier
//! order; at most [`MAX_SEALED`] snapshots are encoding at once (a barrier finishes the
//! oldest first), and the end of the input finishes them all. So the work at a barrier
//! follows the number of changed groups, not keys, except for bases and the keys a
//! rebase (below) takes over; an operator that sweeps all its entries when an epoch
//! closes (expiry, a join's cleanup by watermark) encodes the waiting entries it visits.
//!
//! A new base off the barrier (compaction) starts at a snapshot that writes the group's
//! delta as usual and takes the list of the group's keys. The operator then encodes their
//! current values a slice at a time whenever it has nothing else to do
//! ([`KeyedState::background`]), while records keep changing the group; each snapshot also
//! encodes at least an eighth of the keys, so that the base completes even in an operator
//! that never idles. The keys changed or removed since the start are kept. The first
//! snapshot after the base is complete writes it as the group's rebase section: the
//! encoded entries, then the current value or a tombstone of every key changed since the
//! start. Applied in order to an empty group, that is exactly the group's state at this
//! snapshot: an entry encoded before its key changed is overwritten by the later value or
//! tombstone. Until then the group's deltas go on as before, so every manifest restores.
//!
//! The snapshotter keeps the chain of objects and reports it whole; a manifest's parts
//! of one operator that one worker reports are that chain, oldest first, and each part
//! entry names the groups it holds bases for, so the manifest lists every group's base
//! and deltas. After a restore at another number of workers, a worker's chain starts
//! with the objects of the old chains that hold any of its groups, whoever wrote them
//! (see `Snapshotter::reuse_restored`); their other groups are skipped.
//! An object drops off the front of the chain once every group has a newer base
//! ([`weir_checkpoint::manifest::chain_start`]), and retention deletes a directory once
//! no retained manifest lists a part in it.
//!
//! An operator may add a small value of its own to every object (event-time operators
//! store the watermark they fired up to): a section of the reserved group
//! [`META_GROUP`], which forces an object whenever the value changed.
//!
//! A restore reads every part of the operator that covers one of its groups, in
//! manifest order: a base or rebase replaces the group, a delta upserts and removes keys.
//! Sections that a later base of their group replaces are not decoded. Bases are bincode
//! maps, decoded straight into the group's hash map. With
//! incremental checkpoints off, every snapshot is a base of every group (a chain of one
//! object). Whole parts (one bincode list of groups), as written before packed objects
//! existed, are read as bases.

use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasher, Hash};

use serde::de::DeserializeOwned;
use serde::{Serialize, Serializer};
use weir_checkpoint::pack::{PackWriter, SectionKind};
use weir_checkpoint::store::VerifiedPart;

use crate::context::JobContext;
use crate::entries::FastRef;
use crate::error::Result;
use crate::keygroup;
use crate::restore::overlaps;
use crate::snapshot::Part;

/// A base smaller than this counts as this large when deciding whether its deltas
/// outgrew it, so that tiny groups are not rewritten at every change.
const MIN_BASE_BYTES: u64 = 4096;
/// A group gets a new base once its base is this many objects old, so that a chain
/// never grows without bound when a group stops changing.
pub const MAX_AGE: u32 = 64;
/// At most one in this many groups gets a new base for its deltas in one snapshot (at
/// least one group does).
pub const STAGGER: usize = 32;

/// The group of the section that holds an operator's own value (see the module's
/// design); never a key group, since a job has fewer key groups.
pub const META_GROUP: u32 = u32::MAX;

/// What [`KeyedState::update_all`] did to an entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Update {
    /// Left as it was.
    Kept,
    /// Changed in place.
    Changed,
    /// To be removed.
    Removed,
}

/// What a worker knows about one key group's entries in the chain.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GroupStats {
    /// Whether the chain holds a base of the group.
    pub based: bool,
    /// Whether the group has no base in the chain and was empty where the chain
    /// starts: its deltas are then its state. Such a group gets a base at the barrier
    /// only while it is empty (a few bytes, so that it does not hold the chain's first
    /// object forever), and otherwise once its deltas outgrow the ratio.
    pub implied: bool,
    /// The size of that base's section in bytes.
    pub base_bytes: u64,
    /// Bytes of the group's delta sections since its base.
    pub delta_bytes: u64,
    /// Objects written since the base (the base's own included).
    pub age: u32,
    /// Whether a new base of the group is being encoded off the barrier.
    pub pending: bool,
}

/// What the next snapshot does for one group ([`rebase_plan`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Plan {
    /// A delta of its changes, if any.
    Delta,
    /// A base, encoded at the barrier: the group has none in the chain, or every group
    /// gets one.
    BaseNow,
    /// A delta now, and a new base encoded off the barrier, taken over by a later
    /// snapshot as a rebase section.
    BaseLater,
}

/// What the next snapshot does for each group: a base at the barrier for every group
/// without one (unless its empty start stands for it, [`GroupStats::implied`]), or for
/// every group when `full`; otherwise a new base off the barrier for
/// the groups whose deltas exceed `ratio` of their base or whose base is [`MAX_AGE`]
/// objects old, the most overdue first, at most `max(1, groups / STAGGER)` of them and
/// none whose new base is already under way; a delta for the rest.
pub fn rebase_plan(stats: &[GroupStats], ratio: f64, full: bool) -> Vec<Plan> {
    let mut plan: Vec<Plan> = stats
        .iter()
        .map(|s| {
            if full || !(s.based || s.implied) {
                Plan::BaseNow
            } else {
                Plan::Delta
            }
        })
        .collect();
    let mut due: Vec<(f64, usize)> = stats
        .iter()
        .enumerate()
        .filter(|(i, s)| plan[*i] == Plan::Delta && !s.pending)
        .filter_map(|(i, s)| {
            let base = s.base_bytes.max(MIN_BASE_BYTES) as f64;
            let by_size = s.delta_bytes as f64 / (ratio * base);
            let by_age = s.age as f64 / MAX_AGE as f64;
            let score = by_size.max(by_age);
            (score >= 1.0).then_some((score, i))
        })
        .collect();
    due.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
    for (_, i) in due.into_iter().take((stats.len() / STAGGER).max(1)) {
        plan[i] = Plan::BaseLater;
    }
    plan
}

/// The ranges `[start, end)` of the groups (offset by `lo`) set in `plan`.
fn ranges(plan: &[bool], lo: u32) -> Vec<(u32, u32)> {
    let mut out: Vec<(u32, u32)> = Vec::new();
    for (i, _) in plan.iter().enumerate().filter(|(_, b)| **b) {
        let g = lo + i as u32;
        match out.last_mut() {
            Some((_, end)) if *end == g => *end = g + 1,
            _ => out.push((g, g + 1)),
        }
    }
    out
}

/// One worker's keyed state of one operator, split into its key groups, checkpointed
/// incrementally (see the module's design).
pub struct KeyedState<K, V, H = std::hash::RandomState> {
    name: String,
    key_groups: u32,
    lo: u32,
    groups: Vec<HashMap<K, V, H>>,
    changed: Vec<HashSet<K, H>>,
    stats: Vec<GroupStats>,
    incremental: bool,
    ratio: f64,
    /// The operator's own values read from the restored objects, in chain order.
    restored_meta: Vec<Vec<u8>>,
    /// The operator's own value as last written.
    last_meta: Option<Vec<u8>>,
    /// New bases being encoded off the barrier.
    pending: Vec<PendingBase<K, H>>,
    /// Snapshots sealed at barriers and not yet taken, oldest first.
    sealed: std::collections::VecDeque<Sealed<K, H>>,
    /// Emptied key sets of taken snapshots, whose tables the next changes reuse.
    spare: Vec<HashSet<K, H>>,
    /// Per group, how many bases the snapshots have written (see `SealedDelta`).
    base_serial: Vec<u32>,
    /// How much longer a slow encoder (the `encode` failpoint) holds the work left off
    /// the barrier, when that is all that is left (see [`KeyedState::held_for`]).
    held: Option<std::time::Duration>,
}

/// A new base of one group, encoded off the barrier a slice at a time (see the module's
/// design).
struct PendingBase<K, H> {
    /// The group's index among this worker's groups.
    index: usize,
    /// The group's keys when the base was started; those from `next` on are still to
    /// be encoded.
    keys: Vec<K>,
    next: usize,
    /// The entries encoded so far, each a bincode `(K, Option<V>)`.
    encoded: Vec<u8>,
    count: u64,
    /// The keys changed or removed since the base was started, up to the last snapshot.
    since: HashSet<K, H>,
    /// Why an entry did not encode: the next snapshot fails with it.
    error: Option<bincode::Error>,
}

/// What [`KeyedState::seal`] did with a snapshot.
#[derive(Debug)]
pub enum Sealing {
    /// The snapshot is complete: its object, or `None` if nothing changed.
    Now(Option<Part>),
    /// Its deltas are being encoded: [`KeyedState::take_sealed`] returns the object
    /// once they are.
    Later,
}

/// Snapshots whose deltas may be encoded at once; a barrier that would start one more
/// first finishes the oldest.
pub const MAX_SEALED: usize = 3;

/// A snapshot sealed at a barrier whose deltas are still being encoded (see the
/// module's design).
struct Sealed<K, H> {
    /// Sections encoded at the barrier (bases, rebases), by group index, ascending, each
    /// in pieces that the object joins: a rebase's entries encoded off the barrier are
    /// not copied at it.
    fixed: Vec<(usize, SectionKind, Vec<Vec<u8>>)>,
    /// Each group's delta: the keys still to encode and the entries encoded.
    deltas: Vec<Option<SealedDelta<K, H>>>,
    /// Deltas with keys left to encode.
    open: usize,
    /// The groups that get a base.
    bases: Vec<bool>,
    /// The operator's own value, if the object carries it.
    meta: Option<Vec<u8>>,
    state_bytes: u64,
    /// Why an entry did not encode: taking the snapshot fails with it.
    error: Option<bincode::Error>,
    /// When it was sealed.
    at: std::time::Instant,
}

/// Appends the bincode `(key, value)` entry to `encoded`, counting it, unless an
/// entry failed already.
fn put<K: Serialize + 'static, V: Serialize + 'static>(
    encoded: &mut Vec<u8>,
    count: &mut u64,
    key: &K,
    value: Option<&V>,
    error: &mut Option<bincode::Error>,
) {
    if error.is_none() {
        match bincode::serialize_into(encoded, &(FastRef(key), value.map(FastRef))) {
            Ok(()) => *count += 1,
            Err(e) => *error = Some(e),
        }
    }
}

/// One group's delta of a sealed snapshot.
struct SealedDelta<K, H> {
    /// The keys changed in the snapshot's interval whose entries are still to encode.
    keys: HashSet<K, H>,
    /// The entries encoded so far, each a bincode `(K, Option<V>)`.
    encoded: Vec<u8>,
    count: u64,
    /// The group's base serial at the barrier: the delta's size counts toward that
    /// base's deltas only if no newer base came since.
    serial: u32,
}

impl<K: Hash + Eq + Clone + Serialize + 'static, H: BuildHasher + Default> Sealed<K, H> {
    /// Encodes `key`'s `value` if the delta of the group at `group` still waits for it.
    /// Encodes `key`'s value if the delta of the group at `group` still waits for it;
    /// `value` is looked up only then.
    fn take_key<'v, V: Serialize + 'static>(
        &mut self,
        group: usize,
        key: &K,
        value: impl FnOnce() -> Option<&'v V>,
    ) {
        let Some(delta) = self.deltas[group].as_mut() else {
            return;
        };
        if !delta.keys.is_empty() && delta.keys.remove(key) {
            put(
                &mut delta.encoded,
                &mut delta.count,
                key,
                value(),
                &mut self.error,
            );
            if delta.keys.is_empty() {
                self.open -= 1;
            }
        }
    }

    /// Encodes up to `entries` keys of the open deltas from the maps `groups`, stopping
    /// once `bytes` are written; returns the keys and bytes done.
    fn step<V: Serialize + 'static>(
        &mut self,
        groups: &[HashMap<K, V, H>],
        entries: usize,
        bytes: usize,
    ) -> (usize, usize) {
        let (mut keys_done, mut bytes_done) = (0, 0);
        for (i, slot) in self.deltas.iter_mut().enumerate() {
            let Some(delta) = slot.as_mut() else {
                continue;
            };
            if delta.keys.is_empty() {
                continue;
            }
            if keys_done >= entries || bytes_done >= bytes {
                break;
            }
            let before = delta.encoded.len();
            let room = entries - keys_done;
            let SealedDelta {
                keys,
                encoded,
                count,
                ..
            } = delta;
            if keys.len() <= room {
                // The whole rest: drained, without cloning the keys, and the set keeps
                // its table for a later snapshot.
                keys_done += keys.len();
                for k in keys.drain() {
                    put(encoded, count, &k, groups[i].get(&k), &mut self.error);
                }
                self.open -= 1;
            } else {
                let batch: Vec<K> = keys.iter().take(room).cloned().collect();
                keys_done += batch.len();
                for k in batch {
                    keys.remove(&k);
                    put(encoded, count, &k, groups[i].get(&k), &mut self.error);
                }
                // Iterating from the start skips the emptied slots: keep the table
                // dense.
                if delta.keys.len() * 4 < delta.keys.capacity() {
                    delta.keys.shrink_to_fit();
                }
            }
            bytes_done += delta.encoded.len() - before;
        }
        (keys_done, bytes_done)
    }

    /// Encodes every key left.
    fn finish<V: Serialize + 'static>(&mut self, groups: &[HashMap<K, V, H>]) {
        while self.open > 0 {
            self.step(groups, usize::MAX, usize::MAX);
        }
    }
}

/// Entries encoded per step of a new base off the barrier, at most.
const STEP_ENTRIES: usize = 4096;
/// Bytes encoded per step of a new base off the barrier, about.
const STEP_BYTES: usize = 256 << 10;
/// Entries of sealed snapshots' deltas encoded per step, at most.
const SEALED_STEP_ENTRIES: usize = 16384;
/// Bytes of sealed snapshots' deltas encoded per step, about.
const SEALED_STEP_BYTES: usize = 1 << 20;

impl<K, V, H> KeyedState<K, V, H>
where
    K: Hash + Eq + Clone + Serialize + DeserializeOwned + 'static,
    V: Serialize + DeserializeOwned + 'static,
    H: BuildHasher + Default,
{
    /// The state of operator `name` on this worker as the restored checkpoint holds it
    /// (empty on a fresh start), whatever the number of workers that wrote it.
    pub fn restore(ctx: &JobContext, name: &str) -> Result<Self> {
        let config = ctx.config();
        let mut state = Self::empty(
            name,
            ctx.key_groups(),
            ctx.key_group_range(),
            // Without checkpoints nothing would ever take the changed keys.
            config.incremental_checkpoints && ctx.checkpointing(),
            config.compaction_ratio,
        );
        let (Some(manifest), Some(store)) = (ctx.restored(), ctx.store()) else {
            return Ok(state);
        };
        let range = ctx.key_group_range();
        let chain: Vec<&weir_checkpoint::PartEntry> = manifest
            .parts_of(name)
            .filter(|entry| overlaps(entry, range))
            .collect();
        state.replay_chain(&chain, |entry| {
            let part = match ctx.take_restored_part(entry) {
                Some(part) => part,
                None => ctx.block_on(store.get_part(entry))?,
            };
            crate::failpoint::hit("restore");
            Ok(part)
        })?;
        Ok(state)
    }

    /// Restores this worker's groups from `chain`, the parts of the operator that cover
    /// one of them in manifest order, opened with `open`. Equivalent to
    /// [`KeyedState::replay`] of every part, but the sections that a newer base in the
    /// chain replaces ([`weir_checkpoint::manifest::newest_bases`]) are not decoded, and
    /// a whole part whose every group has a newer base is not opened.
    pub fn replay_chain(
        &mut self,
        chain: &[&weir_checkpoint::PartEntry],
        mut open: impl FnMut(&weir_checkpoint::PartEntry) -> Result<VerifiedPart>,
    ) -> Result<()> {
        let range = (self.lo, self.lo + self.groups.len() as u32);
        let newest = weir_checkpoint::manifest::newest_bases(chain, range);
        for (at, entry) in chain.iter().enumerate() {
            let needed = |g: u32| {
                g.checked_sub(range.0)
                    .and_then(|i| newest.get(i as usize))
                    .is_some_and(|b| b.is_none_or(|b| b <= at))
            };
            // A whole part holds nothing but bases. A packed one may also hold the
            // operator's own value, so it is always opened.
            if entry.packed.is_none()
                && !(entry.key_group_start.max(range.0)..entry.key_group_end.min(range.1))
                    .any(needed)
            {
                self.age(entry);
                continue;
            }
            let part = open(entry)?;
            self.apply(&part, needed)?;
        }
        Ok(())
    }

    /// An empty state of operator `name` over the groups `[lo, hi)` of `key_groups`.
    pub fn empty(
        name: &str,
        key_groups: u32,
        (lo, hi): (u32, u32),
        incremental: bool,
        ratio: f64,
    ) -> Self {
        let width = hi.saturating_sub(lo) as usize;
        KeyedState {
            name: name.to_string(),
            key_groups,
            lo,
            groups: (0..width).map(|_| HashMap::default()).collect(),
            changed: (0..width).map(|_| HashSet::default()).collect(),
            // An empty group needs no base: its deltas from the chain's first object
            // on are its state.
            stats: vec![
                GroupStats {
                    implied: incremental,
                    ..GroupStats::default()
                };
                width
            ],
            incremental,
            ratio,
            restored_meta: Vec::new(),
            last_meta: None,
            pending: Vec::new(),
            sealed: Default::default(),
            spare: Vec::new(),
            held: None,
            base_serial: vec![0; width],
        }
    }

    /// Applies one part of a chain, read in manifest order: a base replaces its group, a
    /// delta upserts and removes keys. Groups this worker does not own are skipped.
    pub fn replay(&mut self, part: &VerifiedPart) -> Result<()> {
        self.apply(part, |_| true)
    }

    /// [`KeyedState::replay`] of the sections of the groups for which `needed` holds; the
    /// others are not decoded. A restore skips the sections that a newer base in the
    /// chain replaces: the result is the same, without their decoding.
    fn apply(&mut self, part: &VerifiedPart, needed: impl Fn(u32) -> bool) -> Result<()> {
        let entry = part.entry();
        if entry.packed.is_none() {
            let groups: Vec<(u32, HashMap<K, V, H>)> = part.decode().map_err(|e| {
                weir_checkpoint::CheckpointError::Corrupt {
                    path: entry.path.clone(),
                    reason: format!(
                        "{e}; operator `{}` keeps its state in packed objects since incremental checkpoints, and this whole part was probably written by an earlier version of weir: restore it with the version that wrote it, or start the job without --restore",
                        self.name
                    ),
                }
            })?;
            let per_group = entry.size / groups.len().max(1) as u64;
            let lo = self.lo;
            let hi = lo + self.groups.len() as u32;
            // Groups of the part without entries were empty.
            for g in entry.key_group_start.max(lo)..entry.key_group_end.min(hi) {
                let i = (g - lo) as usize;
                self.groups[i].clear();
                self.stats[i] = GroupStats {
                    based: true,
                    ..GroupStats::default()
                };
            }
            for (g, map) in groups {
                if let Some(i) = self.index(g) {
                    self.check_group(entry, g, map.keys())?;
                    self.groups[i] = map;
                    self.stats[i].base_bytes = per_group;
                }
            }
        } else {
            for section in part.sections()? {
                if section.group == META_GROUP {
                    let bytes = part.section_bytes(&section)?.to_vec();
                    self.restored_meta.push(bytes);
                    continue;
                }
                let Some(i) = self.index(section.group) else {
                    continue;
                };
                if !needed(section.group) {
                    continue;
                }
                let len = section.range.len() as u64;
                // A section that fails leaves its group empty, not half applied (the
                // caller drops the whole state on an error).
                let mut map = std::mem::take(&mut self.groups[i]);
                let key_groups = self.key_groups;
                let into = crate::entries::SectionInto {
                    map: &mut map,
                    kind: section.kind,
                    bytes: len as usize,
                    group: section.group,
                    group_of: |k: &K| keygroup::key_group(k, key_groups),
                };
                let decoded = part.decode_section_seed(&section, into)?;
                if let Err(found) = decoded {
                    return Err(self.wrong_group(entry, section.group, found));
                }
                self.groups[i] = map;
                if section.kind.is_base() {
                    self.stats[i] = GroupStats {
                        based: true,
                        base_bytes: len,
                        ..GroupStats::default()
                    };
                } else {
                    self.stats[i].delta_bytes += len;
                }
            }
        }
        self.age(entry);
        Ok(())
    }

    /// One more object in the chain since the base of each group that `entry` covers.
    /// A chain taken over after a restore at another number of workers holds objects of
    /// other key group ranges, which age only their own groups.
    fn age(&mut self, entry: &weir_checkpoint::PartEntry) {
        let lo = self.lo;
        let hi = lo + self.groups.len() as u32;
        let (start, end) = (entry.key_group_start.max(lo), entry.key_group_end.min(hi));
        for g in start..end.max(start) {
            let s = &mut self.stats[(g - lo) as usize];
            if s.based || s.implied {
                s.age += 1;
            }
        }
    }

    /// Checks that every key of a restored section belongs to its key group: a key
    /// restored into another group would be looked up in the wrong map (a writer that
    /// hashed keys differently, a damaged object with a valid checksum).
    fn check_group<'k>(
        &self,
        entry: &weir_checkpoint::PartEntry,
        group: u32,
        keys: impl Iterator<Item = &'k K>,
    ) -> Result<()>
    where
        K: 'k,
    {
        for k in keys {
            let found = keygroup::key_group(k, self.key_groups);
            if found != group {
                return Err(self.wrong_group(entry, group, found));
            }
        }
        Ok(())
    }

    /// The error of a key of key group `found` in the section of key group `group`.
    fn wrong_group(
        &self,
        entry: &weir_checkpoint::PartEntry,
        group: u32,
        found: u32,
    ) -> crate::error::RuntimeError {
        weir_checkpoint::CheckpointError::Corrupt {
            path: entry.path.clone(),
            reason: format!(
                "the section of key group {group} of operator `{}` holds a key of key group {found} (of {}): it was written with another key hash or another number of key groups",
                self.name, self.key_groups
            ),
        }
        .into()
    }

    /// The snapshotter did not take over the restored chain (a savepoint, a whole part
    /// written by another worker): the next snapshot writes a base of every group (a few
    /// bytes for an empty one).
    pub fn restored_chain_dropped(&mut self) {
        self.pending.clear();
        for (s, map) in self.stats.iter_mut().zip(&self.groups) {
            // The new chain starts with the next object: an empty group needs no base.
            *s = GroupStats {
                implied: map.is_empty() && self.incremental,
                ..GroupStats::default()
            };
        }
    }

    fn index(&self, group: u32) -> Option<usize> {
        let i = group.checked_sub(self.lo)? as usize;
        (i < self.groups.len()).then_some(i)
    }

    /// The index of `key`'s group among this worker's groups.
    ///
    /// # Panics
    ///
    /// If this worker does not own the key's group: records are routed to the owner of
    /// their key's group before they reach the state.
    pub fn group_of(&self, key: &K) -> usize {
        let g = keygroup::key_group(key, self.key_groups);
        self.index(g).unwrap_or_else(|| {
            panic!(
                "operator `{}`: key group {g} is not among this worker's groups {}..{}",
                self.name,
                self.lo,
                self.lo + self.groups.len() as u32
            )
        })
    }

    /// The value of `key`.
    pub fn get(&self, key: &K) -> Option<&V> {
        self.groups[self.group_of(key)].get(key)
    }

    /// The map of the group at `group` (an index from [`Self::group_of`]).
    pub fn group(&self, group: usize) -> &HashMap<K, V, H> {
        &self.groups[group]
    }

    /// The map of the group at `group` (an index from [`Self::group_of`]), to change the
    /// entry of `key` and no other: a snapshot still encoding its deltas first takes the
    /// key's value from before the change. The change must then be reported with
    /// [`Self::changed`].
    pub fn group_mut(&mut self, group: usize, key: &K) -> &mut HashMap<K, V, H> {
        self.before_write(group, key);
        &mut self.groups[group]
    }

    /// Records that `key` of the group at `group` changed (or was removed) since the
    /// last snapshot.
    pub fn changed(&mut self, group: usize, key: K) {
        if self.incremental {
            self.changed[group].insert(key);
        }
    }

    /// Whether the state keeps the keys that changed since the last snapshot (it does
    /// when it checkpoints incrementally): then [`Self::changed_keys`] lists them, and an
    /// operator that needs the keys it changed need not keep a copy of its own.
    pub fn tracks_changes(&self) -> bool {
        self.incremental
    }

    /// The keys of the group at `group` reported with [`Self::changed`], changed by
    /// [`Self::update_all`] or removed since the last snapshot, in no particular order;
    /// none if the state does not [track changes](Self::tracks_changes). A key removed
    /// since is listed too, and has no entry unless it was written again.
    pub fn changed_keys(&self, group: usize) -> impl Iterator<Item = &K> + '_ {
        self.changed[group].iter()
    }

    /// How many key groups this worker holds: group indexes are `0..group_count()`.
    pub fn group_count(&self) -> usize {
        self.groups.len()
    }

    /// Removes `key`, leaving a tombstone for the next snapshot.
    pub fn remove(&mut self, key: &K) -> Option<V> {
        let group = self.group_of(key);
        self.before_write(group, key);
        let removed = self.groups[group].remove(key);
        if removed.is_some() && self.incremental {
            self.changed[group].insert(key.clone());
        }
        removed
    }

    /// Keeps the entries for which `keep` is true; the others are removed, and recorded
    /// as tombstones for the next snapshot. Returns how many were removed. `keep` must
    /// not change an entry it keeps (that change would reach no snapshot): use
    /// [`Self::update_all`] to change entries.
    pub fn retain(&mut self, mut keep: impl FnMut(&K, &mut V) -> bool) -> usize {
        let mut removed = 0;
        let incremental = self.incremental;
        let sealed = &mut self.sealed;
        for (i, (map, changed)) in self
            .groups
            .iter_mut()
            .zip(self.changed.iter_mut())
            .enumerate()
        {
            map.retain(|k, v| {
                // `keep` may remove the entry: sealed snapshots take it first.
                for s in sealed.iter_mut() {
                    s.take_key(i, k, || Some(&*v));
                }
                let kept = keep(k, v);
                if !kept {
                    removed += 1;
                    if incremental {
                        changed.insert(k.clone());
                    }
                }
                kept
            });
        }
        removed
    }

    /// Runs `f` on every entry: entries it changed go into the next snapshot's delta,
    /// entries it removes leave a tombstone there.
    pub fn update_all(&mut self, mut f: impl FnMut(&K, &mut V) -> Update) {
        let incremental = self.incremental;
        let sealed = &mut self.sealed;
        for (i, (map, changed)) in self
            .groups
            .iter_mut()
            .zip(self.changed.iter_mut())
            .enumerate()
        {
            map.retain(|k, v| {
                for s in sealed.iter_mut() {
                    s.take_key(i, k, || Some(&*v));
                }
                let update = f(k, v);
                if update != Update::Kept && incremental {
                    changed.insert(k.clone());
                }
                update != Update::Removed
            });
        }
    }

    /// The operator's own values found in the restored objects (see
    /// [`Self::encode_with_meta`]), oldest first per chain.
    pub fn restored_meta<M: DeserializeOwned>(&self) -> Result<Vec<M>> {
        self.restored_meta
            .iter()
            .map(|b| {
                bincode::deserialize(b).map_err(|e| {
                    weir_checkpoint::CheckpointError::Corrupt {
                        path: format!("the restored objects of operator `{}`", self.name),
                        reason: format!("its own value does not decode: {e}"),
                    }
                    .into()
                })
            })
            .collect()
    }

    /// Every entry.
    pub fn iter(&self) -> impl Iterator<Item = (&K, &V)> {
        self.groups.iter().flat_map(|m| m.iter())
    }

    /// The number of entries.
    pub fn len(&self) -> usize {
        self.groups.iter().map(HashMap::len).sum()
    }

    /// Whether there are no entries.
    pub fn is_empty(&self) -> bool {
        self.groups.iter().all(HashMap::is_empty)
    }

    /// The per-group figures the next snapshot decides by (for tests and metrics).
    pub fn stats(&self) -> &[GroupStats] {
        &self.stats
    }

    /// Encodes the snapshot at a barrier at once: a packed object with the new bases
    /// and deltas, `None` if nothing changed. `full` asks for a base of every group, as
    /// after a failed upload; without incremental checkpoints every snapshot is one.
    /// For callers that never leave a snapshot sealed: one sealed earlier and not yet
    /// taken stays for [`Self::take_sealed`], and would belong before this object in the
    /// chain.
    pub fn encode(&mut self, full: bool) -> Result<Option<Part>> {
        let sealed = self.seal(full)?;
        self.now(sealed)
    }

    /// [`Self::encode`], with the operator's own value `meta` in the object; an object
    /// is written whenever `meta` differs from the value last written.
    pub fn encode_with_meta<M: Serialize>(&mut self, full: bool, meta: &M) -> Result<Option<Part>> {
        let sealed = self.seal_with_meta(full, meta)?;
        self.now(sealed)
    }

    fn now(&mut self, sealed: Sealing) -> Result<Option<Part>> {
        match sealed {
            Sealing::Now(part) => Ok(part),
            Sealing::Later => {
                let mut last = self.sealed.pop_back().expect("just sealed");
                last.finish(&self.groups);
                self.assemble(last).map(Some)
            }
        }
    }

    /// Seals the snapshot at a barrier (see the module's design): decides its sections,
    /// encodes the new bases and rebases, and takes each changed group's keys for its
    /// delta, whose entries are encoded off the barrier, by [`Self::background`] or when
    /// a key is about to change. Returns the object at once when it has no delta;
    /// otherwise [`Self::take_sealed`] returns it once it is encoded, sealed snapshots in
    /// the order they were sealed.
    pub fn seal(&mut self, full: bool) -> Result<Sealing> {
        self.seal_inner(full, None)
    }

    /// [`Self::seal`], with the operator's own value `meta` in the object; an object is
    /// written whenever `meta` differs from the value last written.
    pub fn seal_with_meta<M: Serialize>(&mut self, full: bool, meta: &M) -> Result<Sealing> {
        let bytes = bincode::serialize(meta).map_err(|e| self.encode_error(e))?;
        self.seal_inner(full, Some(bytes))
    }

    /// The oldest sealed snapshot, once its deltas are encoded: the object, or the
    /// error an entry failed to encode with.
    pub fn take_sealed(&mut self) -> Option<Result<Part>> {
        if self.sealed.front()?.open > 0 {
            return None;
        }
        let sealed = self.sealed.pop_front()?;
        Some(self.assemble(sealed))
    }

    /// Encodes every sealed snapshot's remaining entries now (the input ended).
    pub fn finish_sealed(&mut self) {
        for sealed in &mut self.sealed {
            sealed.finish(&self.groups);
        }
    }

    /// Snapshots sealed and not yet taken.
    pub fn sealed_len(&self) -> usize {
        self.sealed.len()
    }

    fn seal_inner(&mut self, full: bool, meta: Option<Vec<u8>>) -> Result<Sealing> {
        // Bound the snapshots whose deltas are still being encoded: the oldest finishes
        // at this barrier.
        let (mut finished, mut taken_over) = (0, 0);
        while self.sealed.iter().filter(|s| s.open > 0).count() >= MAX_SEALED {
            let oldest = self
                .sealed
                .iter_mut()
                .find(|s| s.open > 0)
                .expect("counted");
            oldest.finish(&self.groups);
            finished += 1;
        }
        let full = full || !self.incremental;
        if full {
            self.pending.clear();
            self.stats.iter_mut().for_each(|s| s.pending = false);
        }
        let mut plan = rebase_plan(&self.stats, self.ratio, full);
        // A group whose empty start stands for its base gets a real one while that is
        // still empty, which costs a few bytes.
        for (i, step) in plan.iter_mut().enumerate() {
            if *step == Plan::Delta
                && self.stats[i].implied
                && !self.stats[i].pending
                && self.groups[i].is_empty()
            {
                *step = Plan::BaseNow;
            }
        }
        // A new base off the barrier advances by at least an eighth of its keys per
        // snapshot, so that it completes even when the operator never idles.
        for p in 0..self.pending.len() {
            let least = self.pending[p].keys.len().div_ceil(8);
            self.advance(p, least, usize::MAX);
        }
        let mut sealed = Sealed {
            fixed: Vec::new(),
            deltas: (0..plan.len()).map(|_| None).collect(),
            open: 0,
            bases: vec![false; plan.len()],
            meta: None,
            state_bytes: 0,
            error: None,
            at: std::time::Instant::now(),
        };
        for (i, step) in plan.iter().enumerate() {
            let done = self
                .pending
                .iter()
                .position(|p| p.index == i && p.next == p.keys.len());
            if *step == Plan::BaseNow {
                // A base now replaces a new base under way.
                self.pending.retain(|p| p.index != i);
                self.base_serial[i] += 1;
                let bytes = bincode::serialize(&Entries(&self.groups[i]))
                    .map_err(|e| self.encode_error(e))?;
                self.stats[i] = GroupStats {
                    based: true,
                    base_bytes: bytes.len() as u64,
                    ..GroupStats::default()
                };
                sealed.fixed.push((i, SectionKind::Base, vec![bytes]));
                sealed.bases[i] = true;
            } else if let Some(p) = done {
                let mut base = self.pending.swap_remove(p);
                if let Some(e) = base.error.take() {
                    return Err(self.encode_error(e));
                }
                self.base_serial[i] += 1;
                base.since.extend(self.changed[i].drain());
                let count = base.count + base.since.len() as u64;
                taken_over += base.since.len();
                let mut since = Vec::new();
                for k in &base.since {
                    bincode::serialize_into(
                        &mut since,
                        &(FastRef(k), self.groups[i].get(k).map(FastRef)),
                    )
                    .map_err(|e| self.encode_error(e))?;
                }
                let pieces = vec![count.to_le_bytes().to_vec(), base.encoded, since];
                self.stats[i] = GroupStats {
                    based: true,
                    base_bytes: pieces.iter().map(|p| p.len() as u64).sum(),
                    ..GroupStats::default()
                };
                sealed.fixed.push((i, SectionKind::Rebase, pieces));
                sealed.bases[i] = true;
            } else if !self.changed[i].is_empty() {
                let spare = self.spare.pop().unwrap_or_default();
                let keys = std::mem::replace(&mut self.changed[i], spare);
                // A new base under way must also write the keys of this delta.
                if let Some(base) = self.pending.iter_mut().find(|p| p.index == i) {
                    base.since.extend(keys.iter().cloned());
                }
                sealed.deltas[i] = Some(SealedDelta {
                    keys,
                    encoded: Vec::new(),
                    count: 0,
                    serial: self.base_serial[i],
                });
                sealed.open += 1;
            }
            if *step == Plan::BaseLater {
                self.pending.push(PendingBase {
                    index: i,
                    keys: self.groups[i].keys().cloned().collect(),
                    next: 0,
                    encoded: Vec::new(),
                    count: 0,
                    since: HashSet::default(),
                    error: None,
                });
                self.stats[i].pending = true;
            }
            // What is left changed went into a base written now.
            self.changed[i].clear();
        }
        let mut wrote = !sealed.fixed.is_empty() || sealed.open > 0;
        if let Some(meta) = meta {
            if wrote || self.last_meta.as_ref() != Some(&meta) {
                self.last_meta = Some(meta.clone());
                sealed.meta = Some(meta);
                wrote = true;
            }
        }
        if !wrote {
            return Ok(Sealing::Now(None));
        }
        for s in &mut self.stats {
            s.age += 1;
        }
        sealed.state_bytes = self.stats.iter().map(|s| s.base_bytes).sum();
        tracing::debug!(
            state = %self.name,
            finished,
            still_encoding = self.sealed.iter().filter(|s| s.open > 0).count(),
            taken_over,
            bases_now = plan.iter().filter(|p| **p == Plan::BaseNow).count(),
            bases = sealed.bases.iter().filter(|b| **b).count(),
            deltas = sealed.open,
            fixed_bytes = sealed.fixed.iter().flat_map(|f| &f.2).map(Vec::len).sum::<usize>(),
            "sealed a snapshot (finished: older snapshots encoded at this barrier; still_encoding: older snapshots whose deltas are still being encoded off it; taken_over: keys of finished new bases encoded at it)"
        );
        if sealed.open == 0 {
            return self.assemble(sealed).map(|p| Sealing::Now(Some(p)));
        }
        self.sealed.push_back(sealed);
        Ok(Sealing::Later)
    }

    /// The packed object of a sealed snapshot whose deltas are encoded.
    fn assemble(&mut self, sealed: Sealed<K, H>) -> Result<Part> {
        if let Some(e) = sealed.error {
            return Err(self.encode_error(e));
        }
        let mut writer = PackWriter::new(&self.name);
        let mut fixed = sealed.fixed.into_iter().peekable();
        for (i, delta) in sealed.deltas.into_iter().enumerate() {
            let group = self.lo + i as u32;
            if let Some((_, kind, pieces)) = fixed.next_if(|(at, ..)| *at == i) {
                let pieces: Vec<&[u8]> = pieces.iter().map(Vec::as_slice).collect();
                writer.push_encoded(group, kind, &pieces)?;
            } else if let Some(d) = delta {
                let before = writer.len();
                writer.push_encoded(
                    group,
                    SectionKind::Delta,
                    &[&d.count.to_le_bytes(), &d.encoded],
                )?;
                if self.base_serial[i] == d.serial {
                    self.stats[i].delta_bytes += (writer.len() - before) as u64;
                }
                if self.spare.len() < self.groups.len() {
                    self.spare.push(d.keys);
                }
            }
        }
        if let Some(meta) = &sealed.meta {
            writer.push(META_GROUP, SectionKind::Base, &Raw(meta))?;
        }
        Ok(Part {
            bytes: writer.finish(),
            bases: Some(ranges(&sealed.bases, self.lo)),
            state_bytes: sealed.state_bytes,
        })
    }

    /// Encodes the value `key` has now into every sealed snapshot whose delta of group
    /// `group` still waits for it: the value at that snapshot's barrier, since the key
    /// has not changed since. Called before a key changes.
    #[inline]
    fn before_write(&mut self, group: usize, key: &K) {
        if self.sealed.is_empty() {
            return;
        }
        let map = &self.groups[group];
        for sealed in &mut self.sealed {
            sealed.take_key(group, key, || map.get(key));
        }
    }

    /// Encodes a slice of the work left off the barrier: entries of the sealed
    /// snapshots' deltas, oldest first (about `SEALED_STEP_ENTRIES` entries or
    /// `SEALED_STEP_BYTES` bytes), then of the new bases under way (about `STEP_ENTRIES`
    /// entries or `STEP_BYTES` bytes). Returns whether more is left, so that the operator
    /// schedules itself again; [`Self::take_sealed`] returns a snapshot once its deltas
    /// are encoded, and a snapshot takes over each base once it is complete. Operators
    /// call this when they have nothing else to do.
    pub fn background(&mut self) -> bool {
        // A slow encoder, for tests: a snapshot's deltas wait this long after its
        // barrier, except for the keys written meanwhile.
        let hold = if self.sealed.iter().any(|s| s.open > 0) {
            crate::failpoint::delay("encode")
        } else {
            None
        };
        let mut held = None;
        // Sealed snapshots first, oldest first: a checkpoint waits for them.
        let mut budget = (SEALED_STEP_ENTRIES, SEALED_STEP_BYTES);
        for sealed in self.sealed.iter_mut() {
            if budget.0 == 0 || budget.1 == 0 {
                break;
            }
            if sealed.open > 0 {
                if let Some(wait) = hold.and_then(|hold| hold.checked_sub(sealed.at.elapsed())) {
                    held = Some(wait);
                    break;
                }
            }
            let (entries, bytes) = sealed.step(&self.groups, budget.0, budget.1);
            budget = (
                budget.0.saturating_sub(entries),
                budget.1.saturating_sub(bytes),
            );
        }
        let mut budget = (STEP_ENTRIES, STEP_BYTES);
        for p in 0..self.pending.len() {
            let (entries, bytes) = self.advance(p, budget.0, budget.1);
            budget = (
                budget.0.saturating_sub(entries),
                budget.1.saturating_sub(bytes),
            );
            if budget.0 == 0 || budget.1 == 0 {
                break;
            }
        }
        let bases_left = self.pending.iter().any(|p| p.next < p.keys.len());
        self.held = held.filter(|_| !bases_left);
        self.encoding_left()
    }

    /// How long the work left off the barrier waits before [`Self::background`] can go
    /// on with it, when a slow encoder holds it: under the `encode=delay:MS` failpoint
    /// only (a test's), and `None` otherwise. The operator then runs again after that
    /// wait instead of at once.
    pub fn held_for(&self) -> Option<std::time::Duration> {
        self.held
    }

    /// Whether a sealed snapshot or a new base still has keys to encode.
    fn encoding_left(&self) -> bool {
        self.sealed.iter().any(|s| s.open > 0) || self.pending.iter().any(|p| p.next < p.keys.len())
    }

    /// Encodes up to `entries` more keys of pending base `p`, stopping once `bytes` are
    /// written; returns the keys and bytes done.
    fn advance(&mut self, p: usize, entries: usize, bytes: usize) -> (usize, usize) {
        let base = &mut self.pending[p];
        let map = &self.groups[base.index];
        let (start_key, start_len) = (base.next, base.encoded.len());
        let end = base.keys.len().min(base.next.saturating_add(entries));
        while base.error.is_none() && base.next < end && base.encoded.len() - start_len < bytes {
            let k = &base.keys[base.next];
            base.next += 1;
            // A key removed since the base was started is among `since`, which the
            // snapshot that takes the base over writes after these entries.
            if let Some(v) = map.get(k) {
                match bincode::serialize_into(&mut base.encoded, &(FastRef(k), Some(FastRef(v)))) {
                    Ok(()) => base.count += 1,
                    Err(e) => base.error = Some(e),
                }
            }
        }
        let done = (base.next - start_key, base.encoded.len() - start_len);
        if base.next == base.keys.len() || base.error.is_some() {
            // Finished: the keys are no longer needed.
            base.keys = Vec::new();
            base.next = 0;
        }
        done
    }

    fn encode_error(&self, e: bincode::Error) -> crate::error::RuntimeError {
        crate::error::RuntimeError::from(weir_checkpoint::CheckpointError::Encode {
            what: self.name.clone(),
            reason: e.to_string(),
        })
    }
}

/// Bytes already encoded, written as they are.
struct Raw<'a>(&'a [u8]);

impl Serialize for Raw<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        use serde::ser::SerializeTuple;
        let mut t = s.serialize_tuple(self.0.len())?;
        for b in self.0 {
            t.serialize_element(b)?;
        }
        t.end()
    }
}

/// A group's entries, serialized as a bincode map (the layout of a sequence of pairs).
struct Entries<'a, K, V, H>(&'a HashMap<K, V, H>);

impl<K: Serialize + 'static, V: Serialize + 'static, H> Serialize for Entries<'_, K, V, H> {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.collect_seq(self.0.iter().map(|(k, v)| (FastRef(k), FastRef(v))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn based(base: u64, delta: u64, age: u32) -> GroupStats {
        GroupStats {
            based: true,
            base_bytes: base,
            delta_bytes: delta,
            age,
            pending: false,
            implied: false,
        }
    }

    #[test]
    fn groups_without_a_base_always_get_one_and_the_rest_are_staggered() {
        let mut stats = vec![based(1 << 20, 0, 1); 64];
        stats[3].based = false;
        // Every group is overdue; only two may rebase besides the one without a base.
        for s in stats.iter_mut().skip(10) {
            s.delta_bytes = 1 << 20;
        }
        stats[20].delta_bytes = 2 << 20;
        let plan = rebase_plan(&stats, 0.5, false);
        let chosen = |plan: &[Plan], step| -> Vec<usize> {
            (0..plan.len()).filter(|i| plan[*i] == step).collect()
        };
        // The group without a base gets one at the barrier, the others off it.
        assert_eq!(chosen(&plan, Plan::BaseNow), vec![3]);
        assert_eq!(chosen(&plan, Plan::BaseLater), vec![10, 20]);
        assert!(rebase_plan(&stats, 0.5, true)
            .iter()
            .all(|p| *p == Plan::BaseNow));
        // Groups whose new base is under way are not chosen again.
        stats[10].pending = true;
        stats[20].pending = true;
        let plan = rebase_plan(&stats, 0.5, false);
        assert_eq!(chosen(&plan, Plan::BaseLater), vec![11, 12]);
        // A group whose empty start stands for its base gets none at the barrier; its
        // deltas are measured against the smallest base.
        let implied = GroupStats {
            implied: true,
            delta_bytes: 100,
            ..GroupStats::default()
        };
        assert_eq!(rebase_plan(&[implied], 0.5, false), vec![Plan::Delta]);
        let grown = GroupStats {
            delta_bytes: 1 << 20,
            ..implied
        };
        assert_eq!(rebase_plan(&[grown], 0.5, false), vec![Plan::BaseLater]);
        assert_eq!(rebase_plan(&[grown], 0.5, true), vec![Plan::BaseNow]);
    }

    #[test]
    fn deltas_below_the_ratio_and_young_bases_are_left_alone() {
        let stats = vec![
            based(1000 << 10, 400 << 10, 5),
            based(100, 2000, 5),
            based(100, 5000, 5),
            based(1 << 20, 0, MAX_AGE),
        ];
        // Group 1's deltas are below half the minimum base; group 2's are above it;
        // group 3's base is old. One rebase per snapshot: the most overdue goes first.
        use Plan::{BaseLater, Delta};
        assert_eq!(
            rebase_plan(&stats, 0.5, false),
            vec![Delta, Delta, BaseLater, Delta]
        );
        let stats = [stats[0], stats[1], stats[3]];
        assert_eq!(
            rebase_plan(&stats, 0.5, false),
            vec![Delta, Delta, BaseLater]
        );
        assert_eq!(
            ranges(&[true, true, false, true], 8),
            vec![(8, 10), (11, 12)]
        );
    }

    use proptest::prelude::*;
    use std::collections::BTreeMap;
    use weir_checkpoint::{PartEntry, WorkerIndex};

    type State = KeyedState<u16, u32>;
    const GROUPS: u32 = 8;

    /// The chain a snapshotter keeps for one worker: parts appended, the unneeded front
    /// dropped, as `Snapshotter::snapshot_part` does.
    #[derive(Default)]
    struct Chain {
        parts: Vec<VerifiedPart>,
        seq: u64,
        worker: usize,
    }

    impl Chain {
        fn push(&mut self, part: Part, range: (u32, u32)) {
            self.seq += 1;
            self.push_at(part, range, self.seq);
        }

        /// Appends `part`, written for checkpoint `epoch`.
        fn push_at(&mut self, part: Part, range: (u32, u32), epoch: u64) {
            let entry = PartEntry {
                operator: "op".into(),
                worker: WorkerIndex(self.worker),
                key_group_start: range.0,
                key_group_end: range.1,
                path: format!("job/chk-{epoch:020}/op/w{}-g0", self.worker),
                size: part.bytes.len() as u64,
                crc32: weir_checkpoint::codec::crc32(&part.bytes),
                packed: part.bases.clone(),
            };
            let verified = VerifiedPart::verify(&entry, part.bytes.into()).unwrap();
            if part.bases.is_none() {
                self.parts.clear();
            }
            self.parts.push(verified);
            let entries: Vec<&PartEntry> = self.parts.iter().map(|p| p.entry()).collect();
            let start = weir_checkpoint::manifest::chain_start(&entries, range);
            self.parts.drain(..start);
        }
    }

    /// The state a restore of `range` reads from `chains` (`replay_chain`, which skips
    /// what newer bases replace), checked against a replay of every part.
    fn restored(chains: &[&Chain], range: (u32, u32)) -> State {
        let parts: Vec<&VerifiedPart> = chains.iter().flat_map(|c| c.parts.iter()).collect();
        let entries: Vec<&PartEntry> = parts.iter().map(|p| p.entry()).collect();
        let mut every = State::empty("op", GROUPS, range, true, 0.5);
        for part in &parts {
            every.replay(part).unwrap();
        }
        let mut state = State::empty("op", GROUPS, range, true, 0.5);
        state
            .replay_chain(&entries, |entry| {
                let part = parts.iter().find(|p| std::ptr::eq(p.entry(), entry));
                Ok((*part.expect("a part of the chain")).clone())
            })
            .unwrap();
        assert_eq!(contents(&state), contents(&every));
        assert_eq!(state.stats, every.stats);
        state
    }

    fn contents(state: &State) -> BTreeMap<u16, u32> {
        state.iter().map(|(k, v)| (*k, *v)).collect()
    }

    #[derive(Debug, Clone)]
    enum Op {
        Put(u16, u32),
        Remove(u16),
        Snapshot {
            full: bool,
        },
        /// A step of the new bases under way off the barrier.
        Background,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            6 => (0u16..200, any::<u32>()).prop_map(|(k, v)| Op::Put(k, v)),
            2 => (0u16..200).prop_map(Op::Remove),
            2 => Just(Op::Snapshot { full: false }),
            1 => Just(Op::Snapshot { full: true }),
            2 => Just(Op::Background),
        ]
    }

    fn apply(state: &mut State, model: &mut BTreeMap<u16, u32>, op: &Op) -> Option<Part> {
        match op {
            Op::Put(k, v) => {
                let g = state.group_of(k);
                state.group_mut(g, k).insert(*k, *v);
                state.changed(g, *k);
                model.insert(*k, *v);
                None
            }
            Op::Remove(k) => {
                state.retain(|key, _| key != k);
                model.remove(k);
                None
            }
            Op::Snapshot { full } => state.encode(*full).unwrap(),
            Op::Background => {
                state.background();
                None
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// Bases and squashed deltas replayed in chain order equal the state, at the same
        /// parallelism and split over two workers, after any sequence of changes,
        /// removals, snapshots and new bases (compaction).
        #[test]
        fn replaying_the_chain_restores_the_state(
            ops in proptest::collection::vec(op(), 1..300),
            ratio in prop_oneof![Just(0.05f64), Just(0.5), Just(4.0)],
        ) {
            let all = (0, GROUPS);
            let mut state = State::empty("op", GROUPS, all, true, ratio);
            let mut model = BTreeMap::new();
            let mut chain = Chain::default();
            for op in &ops {
                if let Some(part) = apply(&mut state, &mut model, op) {
                    chain.push(part, all);
                    prop_assert_eq!(contents(&restored(&[&chain], all)), model.clone());
                    let low = contents(&restored(&[&chain], (0, 3)));
                    let high = contents(&restored(&[&chain], (3, GROUPS)));
                    prop_assert_eq!(low.len() + high.len(), model.len());
                    let mut both = low;
                    both.extend(high);
                    prop_assert_eq!(both, model.clone());
                }
            }
        }

        /// Two workers' chains restore one worker (3 → 1 style), and that worker's new
        /// chain, which starts with a base of every group that is not empty, restores
        /// two again.
        #[test]
        fn chains_move_between_parallelisms(
            ops in proptest::collection::vec((any::<bool>(), op()), 1..200),
        ) {
            let halves = [(0, 5), (5, GROUPS)];
            let mut workers: Vec<State> = halves
                .iter()
                .map(|r| State::empty("op", GROUPS, *r, true, 0.5))
                .collect();
            let mut chains = [Chain::default(), Chain::default()];
            let mut model = BTreeMap::new();
            for (_, op) in &ops {
                let worker = match op {
                    Op::Background => {
                        workers.iter_mut().for_each(|w| { w.background(); });
                        continue;
                    }
                    Op::Put(k, _) | Op::Remove(k) => {
                        let g = keygroup::key_group(k, GROUPS);
                        usize::from(g >= halves[1].0)
                    }
                    Op::Snapshot { .. } => {
                        for (w, r) in halves.iter().enumerate() {
                            if let Some(part) = workers[w].encode(false).unwrap() {
                                chains[w].push(part, *r);
                            }
                        }
                        continue;
                    }
                };
                apply(&mut workers[worker], &mut model, op);
            }
            for (w, r) in halves.iter().enumerate() {
                if let Some(part) = workers[w].encode(false).unwrap() {
                    chains[w].push(part, *r);
                }
            }
            let all = (0, GROUPS);
            let mut one = restored(&[&chains[0], &chains[1]], all);
            prop_assert_eq!(contents(&one), model.clone());
            one.restored_chain_dropped();
            let mut chain = Chain::default();
            // A base of every group that is not empty.
            if let Some(part) = one.encode(false).unwrap() {
                chain.push(part, all);
            }
            prop_assert!(chain.parts.len() <= 1);
            prop_assert_eq!(contents(&restored(&[&chain], all)), model);
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// Two workers' chains are taken over by one worker, as after a restore at
        /// another number of workers: it restores from the objects of both, oldest
        /// first, without new bases, and extends that chain with its own deltas (and new
        /// bases as they come due); the chain it reports then restores one worker and two
        /// workers again.
        #[test]
        fn chains_taken_over_at_another_parallelism_restore_again(
            before in proptest::collection::vec(op(), 1..150),
            after in proptest::collection::vec(op(), 1..150),
        ) {
            let halves = [(0, 5), (5, GROUPS)];
            let all = (0, GROUPS);
            let mut workers: Vec<State> = halves
                .iter()
                .map(|r| State::empty("op", GROUPS, *r, true, 0.5))
                .collect();
            let mut chains = [Chain::default(), Chain { worker: 1, ..Chain::default() }];
            let mut model = BTreeMap::new();
            let mut epoch = 0;
            for op in before.iter().chain([&Op::Snapshot { full: false }]) {
                let worker = match op {
                    Op::Background => {
                        workers.iter_mut().for_each(|w| { w.background(); });
                        continue;
                    }
                    Op::Put(k, _) | Op::Remove(k) => {
                        usize::from(keygroup::key_group(k, GROUPS) >= halves[1].0)
                    }
                    Op::Snapshot { full } => {
                        epoch += 1;
                        for (w, r) in halves.iter().enumerate() {
                            if let Some(part) = workers[w].encode(*full).unwrap() {
                                chains[w].push_at(part, *r, epoch);
                            }
                        }
                        continue;
                    }
                };
                apply(&mut workers[worker], &mut model, op);
            }
            // The one worker's chain: both chains' objects, oldest first.
            let mut one_chain = Chain {
                parts: chains.iter().flat_map(|c| c.parts.iter().cloned()).collect(),
                ..Chain::default()
            };
            one_chain.parts.sort_by_key(|p| weir_checkpoint::layout::object_checkpoint_dir(&p.entry().path));
            let mut one = restored(&[&one_chain], all);
            prop_assert_eq!(contents(&one), model.clone());
            let mut wrote_bases = false;
            for op in after.iter().chain([&Op::Snapshot { full: false }]) {
                if let Op::Snapshot { full } = op {
                    epoch += 1;
                    if let Some(part) = one.encode(*full).unwrap() {
                        // Groups that had bases keep them: a base of every group only when
                        // asked for one.
                        wrote_bases |= part.bases.as_ref().is_some_and(|b| b == &vec![all]);
                        one_chain.push_at(part, all, epoch);
                    }
                } else {
                    apply(&mut one, &mut model, op);
                }
            }
            let asked = after.iter().any(|op| matches!(op, Op::Snapshot { full: true }));
            prop_assert!(asked || !wrote_bases, "a base of every group though none was asked for");
            prop_assert_eq!(contents(&restored(&[&one_chain], all)), model.clone());
            let mut both = contents(&restored(&[&one_chain], halves[0]));
            both.extend(contents(&restored(&[&one_chain], halves[1])));
            prop_assert_eq!(both, model);
        }
    }

    /// A step of the sealed-snapshot property: a change, a barrier, a background step,
    /// or taking the snapshots whose deltas are encoded.
    #[derive(Debug, Clone)]
    enum Step {
        Op(Op),
        /// Removes one key through [`KeyedState::remove`].
        RemoveKey(u16),
        /// Adds one to every value of an even key, through [`KeyedState::update_all`].
        Bump,
        Take,
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            12 => op().prop_map(Step::Op),
            1 => (0u16..200).prop_map(Step::RemoveKey),
            1 => Just(Step::Bump),
            3 => Just(Step::Take),
        ]
    }

    /// Snapshots taken at barriers, in order: the model at the barrier, and the object
    /// once encoded (`None` while sealed; `Some(None)` if nothing changed).
    type Barriers = std::collections::VecDeque<(BTreeMap<u16, u32>, Option<Option<Part>>)>;

    /// Takes the snapshots whose objects are encoded, in barrier order, into `chain`; each
    /// must restore exactly the state at its barrier.
    fn take_encoded(state: &mut State, barriers: &mut Barriers, chain: &mut Chain) {
        let all = (0, GROUPS);
        while let Some((_, part)) = barriers.front_mut() {
            if part.is_none() {
                match state.take_sealed() {
                    None => break,
                    Some(taken) => *part = Some(Some(taken.unwrap())),
                }
            }
            let (at_barrier, part) = barriers.pop_front().unwrap();
            if let Some(part) = part.unwrap() {
                chain.push(part, all);
            }
            assert_eq!(contents(&restored(&[chain], all)), at_barrier);
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(128))]

        /// A sealed snapshot's object holds the state at its barrier, however the keys of
        /// its deltas change (set, removed one by one, retained, updated all at once)
        /// before its entries are encoded, with several snapshots sealed at once.
        #[test]
        fn sealed_snapshots_hold_the_state_at_their_barriers(
            steps in proptest::collection::vec(step(), 1..400),
            ratio in prop_oneof![Just(0.05f64), Just(0.5), Just(4.0)],
        ) {
            let all = (0, GROUPS);
            let mut state = State::empty("op", GROUPS, all, true, ratio);
            let mut model = BTreeMap::new();
            let mut chain = Chain::default();
            let mut barriers = Barriers::new();
            for step in &steps {
                match step {
                    Step::Op(Op::Snapshot { full }) => {
                        let part = match state.seal(*full).unwrap() {
                            Sealing::Now(part) => Some(part),
                            Sealing::Later => None,
                        };
                        barriers.push_back((model.clone(), part));
                        let open = state.sealed.iter().filter(|s| s.open > 0).count();
                        prop_assert!(open <= MAX_SEALED, "{open} snapshots encoding at once");
                    }
                    Step::Op(op) => {
                        apply(&mut state, &mut model, op);
                    }
                    Step::RemoveKey(k) => {
                        prop_assert_eq!(state.remove(k), model.remove(k));
                    }
                    Step::Bump => {
                        state.update_all(|k, v| {
                            if k % 2 == 0 {
                                *v = v.wrapping_add(1);
                                Update::Changed
                            } else {
                                Update::Kept
                            }
                        });
                        for (k, v) in model.iter_mut() {
                            if k % 2 == 0 {
                                *v = v.wrapping_add(1);
                            }
                        }
                    }
                    Step::Take => take_encoded(&mut state, &mut barriers, &mut chain),
                }
            }
            state.finish_sealed();
            take_encoded(&mut state, &mut barriers, &mut chain);
            prop_assert!(barriers.is_empty());
            if let Some(part) = state.encode(false).unwrap() {
                chain.push(part, all);
            }
            prop_assert_eq!(contents(&restored(&[&chain], all)), model);
        }
    }

    #[test]
    fn a_barrier_takes_the_changed_keys_and_their_entries_are_encoded_off_it() {
        let all = (0, GROUPS);
        let mut state = State::empty("op", GROUPS, all, true, 100.0);
        let mut model = BTreeMap::new();
        for k in 0..100u16 {
            apply(&mut state, &mut model, &Op::Put(k, 1));
        }
        // A fresh state's groups are empty where the chain starts: no base is written,
        // and the first snapshot's deltas are sealed, not encoded.
        assert!(matches!(state.seal(false).unwrap(), Sealing::Later));
        let at_first = model.clone();
        assert!(state.take_sealed().is_none());
        // Keys change after the barrier: the snapshot keeps their values from before.
        apply(&mut state, &mut model, &Op::Put(1, 2));
        assert_eq!(state.remove(&2), Some(1));
        model.remove(&2);
        apply(&mut state, &mut model, &Op::Put(500, 5));
        // A second barrier while the first is still encoding.
        assert!(matches!(state.seal(false).unwrap(), Sealing::Later));
        let at_second = model.clone();
        apply(&mut state, &mut model, &Op::Put(1, 3));
        while state.background() {}
        let mut chain = Chain::default();
        let first = state.take_sealed().unwrap().unwrap();
        assert_eq!(first.bases, Some(vec![]));
        assert!(kinds(&first).iter().all(|(_, k)| *k == SectionKind::Delta));
        chain.push(first, all);
        assert_eq!(contents(&restored(&[&chain], all)), at_first);
        chain.push(state.take_sealed().unwrap().unwrap(), all);
        assert_eq!(contents(&restored(&[&chain], all)), at_second);
        assert!(state.take_sealed().is_none());
        // `encode` seals and encodes at once.
        chain.push(state.encode(false).unwrap().unwrap(), all);
        assert_eq!(contents(&restored(&[&chain], all)), model);
    }

    /// The kinds of sections of a snapshot, by group.
    fn kinds(part: &Part) -> Vec<(u32, SectionKind)> {
        let (_, sections) = weir_checkpoint::pack::open("p", &part.bytes).unwrap();
        sections.iter().map(|s| (s.group, s.kind)).collect()
    }

    #[test]
    fn a_new_base_is_encoded_off_the_barrier_and_taken_over_by_a_later_snapshot() {
        let all = (0, GROUPS);
        let mut state = State::empty("op", GROUPS, all, true, 0.01);
        let mut model = BTreeMap::new();
        let mut chain = Chain::default();
        for k in 0..200u16 {
            apply(&mut state, &mut model, &Op::Put(k, 1));
        }
        chain.push(state.encode(false).unwrap().unwrap(), all);
        // Every group's deltas outgrow the ratio: the next snapshot writes deltas only
        // and starts one new base (8 groups, staggered to one per snapshot).
        for round in 2..4 {
            for k in 0..200u16 {
                apply(&mut state, &mut model, &Op::Put(k, round));
            }
            let part = state.encode(false).unwrap().unwrap();
            assert!(kinds(&part).iter().all(|(_, k)| *k == SectionKind::Delta));
            assert_eq!(part.bases, Some(vec![]));
            chain.push(part, all);
        }
        // The first snapshot's groups were empty where the chain starts, so it wrote
        // deltas; each later one starts at most one new base (staggered).
        let pending: Vec<usize> = (0..GROUPS as usize)
            .filter(|i| state.stats()[*i].pending)
            .collect();
        assert!((1..=2).contains(&pending.len()), "{pending:?}");
        let group = pending[0];
        // The group keeps changing while its base is encoded: a changed key, a removed
        // one, a new one, before and after the encoding.
        let keys: Vec<u16> = model
            .keys()
            .copied()
            .filter(|k| keygroup::key_group(k, GROUPS) as usize == group)
            .collect();
        apply(&mut state, &mut model, &Op::Put(keys[0], 3));
        apply(&mut state, &mut model, &Op::Remove(keys[1]));
        while state.background() {}
        apply(&mut state, &mut model, &Op::Put(keys[2], 4));
        apply(&mut state, &mut model, &Op::Remove(keys[3]));
        apply(&mut state, &mut model, &Op::Put(keys[1], 5));
        let part = state.encode(false).unwrap().unwrap();
        assert!(kinds(&part).contains(&(group as u32, SectionKind::Rebase)));
        let rebased: Vec<bool> = (0..GROUPS as usize).map(|i| pending.contains(&i)).collect();
        assert_eq!(part.bases, Some(ranges(&rebased, 0)));
        assert!(pending.iter().all(|i| !state.stats()[*i].pending));
        chain.push(part, all);
        assert_eq!(contents(&restored(&[&chain], all)), model);
        // Without steps off the barrier, snapshots finish the base: an eighth of its
        // keys each.
        let due = (0..GROUPS as usize).find(|i| state.stats()[*i].pending);
        let due = due.expect("the next overdue group's base was started");
        let mut snapshots = 0;
        while state.stats()[due].pending {
            apply(&mut state, &mut model, &Op::Put(keys[0], snapshots));
            chain.push(state.encode(false).unwrap().unwrap(), all);
            snapshots += 1;
        }
        assert!(snapshots <= 9, "{snapshots} snapshots");
        assert_eq!(contents(&restored(&[&chain], all)), model);
    }

    #[test]
    fn a_group_emptied_while_its_first_base_is_encoded_restores_empty() {
        let all = (0, GROUPS);
        let mut state = State::empty("op", GROUPS, all, true, 0.01);
        let mut model = BTreeMap::new();
        let mut chain = Chain::default();
        for round in 1..=2 {
            for k in 0..200u16 {
                apply(&mut state, &mut model, &Op::Put(k, round));
            }
            chain.push(state.encode(false).unwrap().unwrap(), all);
        }
        // The groups filled from an empty start have only deltas; the second snapshot
        // started a new base of one, whose entries are now encoded.
        let group = (0..GROUPS as usize)
            .find(|i| state.stats()[*i].pending)
            .expect("a new base under way");
        assert!(state.stats()[group].implied);
        while state.background() {}
        // Every key of the group goes before the next barrier: the group is empty, and
        // its new base must not bring the keys back.
        let keys: Vec<u16> = model
            .keys()
            .copied()
            .filter(|k| keygroup::key_group(k, GROUPS) as usize == group)
            .collect();
        for k in keys {
            apply(&mut state, &mut model, &Op::Remove(k));
        }
        for _ in 0..4 {
            if let Some(part) = state.encode(false).unwrap() {
                chain.push(part, all);
            }
            assert_eq!(contents(&restored(&[&chain], all)), model);
        }
    }

    #[test]
    fn byte_string_keys_and_values_restore_from_bases_deltas_and_rebases() {
        // `Vec<u8>` keys and values decode as byte strings (`crate::entries`): the chain
        // must restore the same state as it does for other types.
        type Bytes = KeyedState<Vec<u8>, Vec<u8>>;
        let all = (0, GROUPS);
        let mut state = Bytes::empty("op", GROUPS, all, true, 0.5);
        let mut model: BTreeMap<Vec<u8>, Vec<u8>> = BTreeMap::new();
        let put = |state: &mut Bytes, model: &mut BTreeMap<Vec<u8>, Vec<u8>>, k: u32, v: u32| {
            let (k, v) = (k.to_le_bytes().to_vec(), vec![v as u8; (v % 300) as usize]);
            let g = state.group_of(&k);
            state.group_mut(g, &k).insert(k.clone(), v.clone());
            state.changed(g, k.clone());
            model.insert(k, v);
        };
        let mut parts: Vec<VerifiedPart> = Vec::new();
        let mut seen = Vec::new();
        let mut push = |part: Part| {
            let entry = PartEntry {
                operator: "op".into(),
                worker: WorkerIndex(0),
                key_group_start: all.0,
                key_group_end: all.1,
                path: format!("job/chk-{:020}/op/w0-g0", parts.len() + 1),
                size: part.bytes.len() as u64,
                crc32: weir_checkpoint::codec::crc32(&part.bytes),
                packed: part.bases.clone(),
            };
            parts.push(VerifiedPart::verify(&entry, part.bytes.into()).unwrap());
        };
        for round in 0..6u32 {
            for k in 0..400 {
                if (k + round) % 3 == 0 {
                    put(&mut state, &mut model, k, k * 7 + round);
                }
            }
            let k = (round * 11).to_le_bytes().to_vec();
            state.retain(|key, _| *key != k);
            model.remove(&k);
            // Rebases encoded off the barrier between snapshots, and a base of
            // every group at the fourth.
            while state.background() {}
            if let Some(part) = state.encode(round == 3).unwrap() {
                seen.extend(kinds(&part).into_iter().map(|(_, kind)| kind));
                push(part);
            }
        }
        for kind in [SectionKind::Base, SectionKind::Delta, SectionKind::Rebase] {
            assert!(seen.contains(&kind), "no {kind:?} section in the chain");
        }
        let mut back = Bytes::empty("op", GROUPS, all, true, 0.5);
        for part in &parts {
            back.replay(part).unwrap();
        }
        let restored: BTreeMap<Vec<u8>, Vec<u8>> =
            back.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        assert_eq!(restored, model);
    }

    #[test]
    fn deltas_squash_to_one_value_per_changed_key_and_tombstones() {
        let all = (0, GROUPS);
        let mut state = State::empty("op", GROUPS, all, true, 100.0);
        let mut chain = Chain::default();
        let mut model = BTreeMap::new();
        for k in 0..100u16 {
            apply(&mut state, &mut model, &Op::Put(k, 0));
        }
        chain.push(state.encode(false).unwrap().unwrap(), all);
        // One key written three times and one removed: two entries in the delta.
        for v in 1..=3 {
            apply(&mut state, &mut model, &Op::Put(7, v));
        }
        apply(&mut state, &mut model, &Op::Remove(9));
        let part = state.encode(false).unwrap().unwrap();
        assert_eq!(part.bases, Some(vec![]));
        let (payload, sections) = weir_checkpoint::pack::open("d", &part.bytes).unwrap();
        let mut entries: Vec<(u16, Option<u32>)> = Vec::new();
        for s in &sections {
            assert_eq!(s.kind, SectionKind::Delta);
            entries.extend(
                weir_checkpoint::pack::decode_section::<Vec<(u16, Option<u32>)>>("d", payload, s)
                    .unwrap(),
            );
        }
        entries.sort();
        assert_eq!(entries, vec![(7, Some(3)), (9, None)]);
        chain.push(part, all);
        assert_eq!(contents(&restored(&[&chain], all)), model);
        // Nothing changed: nothing to write.
        assert!(state.encode(false).unwrap().is_none());
        // Without incremental checkpoints every snapshot is a base of every group.
        let mut whole = State::empty("op", GROUPS, all, false, 0.5);
        apply(&mut whole, &mut BTreeMap::new(), &Op::Put(1, 1));
        assert_eq!(whole.encode(false).unwrap().unwrap().bases, Some(vec![all]));
        assert_eq!(whole.encode(true).unwrap().unwrap().bases, Some(vec![all]));
    }

    #[test]
    fn an_operators_own_value_is_written_when_it_moves_and_read_back() {
        let all = (0, GROUPS);
        let mut state = State::empty("op", GROUPS, all, true, 0.5);
        let mut chain = Chain::default();
        chain.push(state.encode_with_meta(false, &7u64).unwrap().unwrap(), all);
        // Unchanged state and value: nothing to write; a new value alone: an object.
        assert!(state.encode_with_meta(false, &7u64).unwrap().is_none());
        let part = state.encode_with_meta(false, &9u64).unwrap().unwrap();
        assert_eq!(part.bases, Some(vec![]));
        chain.push(part, all);
        let mut model = BTreeMap::new();
        apply(&mut state, &mut model, &Op::Put(3, 3));
        chain.push(state.encode_with_meta(false, &9u64).unwrap().unwrap(), all);
        let back = restored(&[&chain], all);
        assert_eq!(back.restored_meta::<u64>().unwrap(), vec![7, 9, 9]);
        assert_eq!(contents(&back), model);
        assert!(back.restored_meta::<(u64, u64)>().is_err());
    }

    #[test]
    fn a_key_in_the_wrong_group_fails_the_restore_and_names_the_object() {
        let all = (0, GROUPS);
        let key = 5u16;
        let wrong = (keygroup::key_group(&key, GROUPS) + 1) % GROUPS;
        // A key that does belong to group `wrong`.
        let own = (0u16..)
            .find(|k| keygroup::key_group(k, GROUPS) == wrong)
            .unwrap();
        let part = |kind: SectionKind, entries: &[(u16, u32)]| {
            let mut w = PackWriter::new("t");
            if kind == SectionKind::Base {
                w.push(wrong, kind, &entries.to_vec()).unwrap();
            } else {
                let changes: Vec<(u16, Option<u32>)> =
                    entries.iter().map(|(k, v)| (*k, Some(*v))).collect();
                w.push(wrong, kind, &changes).unwrap();
            }
            let bytes = w.finish();
            let entry = PartEntry {
                operator: "op".into(),
                worker: WorkerIndex(0),
                key_group_start: 0,
                key_group_end: GROUPS,
                path: "job/chk-1/op/w0-g0".into(),
                size: bytes.len() as u64,
                crc32: weir_checkpoint::codec::crc32(&bytes),
                packed: Some(vec![all]),
            };
            VerifiedPart::verify(&entry, bytes.into()).unwrap()
        };
        for kind in [SectionKind::Base, SectionKind::Delta, SectionKind::Rebase] {
            let mut state = State::empty("op", GROUPS, all, true, 0.5);
            state.replay(&part(SectionKind::Base, &[(own, 1)])).unwrap();
            assert_eq!(state.iter().count(), 1);
            // The group's own key is applied before the stranger is found.
            let err = state
                .replay(&part(kind, &[(own, 2), (key, 1)]))
                .unwrap_err()
                .to_string();
            assert!(
                err.contains("job/chk-1/op/w0-g0")
                    && err.contains("another key hash")
                    && err.contains(&format!("key group {wrong} of operator `op`")),
                "{kind:?}: {err}"
            );
            // The failed section's group holds nothing: neither its earlier state nor
            // the section's entries before the stranger.
            assert_eq!(state.iter().count(), 0, "{kind:?}");
        }
    }
}
