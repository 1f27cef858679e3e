//! `deduplicate`: forwards the first record of each key and drops its repeats for a
//! window of event time (or processing time), with memory bounded by the window.
//!
//! ## Semantics and memory
//!
//! Keys are remembered as 64-bit hashes (a stable FNV-1a hash of the key), never as the
//! key itself, so a key costs the same whatever its size: about 10 to 20 bytes in memory
//! (an 8-byte hash in an open-addressing set) and 16 bytes in a checkpoint. The price is
//! that two different keys with the same hash count as one: among `n` keys remembered at
//! once, the chance of any such collision is about `n² / 2⁶⁵` (1 in 37 million for a
//! million keys); a colliding record is dropped as a repeat.
//!
//! Event time is cut into slots of `window / 8`; a key is remembered in the slot of its
//! first record, and a slot is forgotten when the watermark passes its end plus
//! `window`. So a repeat whose event time is within `window` of the first record is
//! always dropped (when the source respects its out-of-orderness bound), and a repeat
//! more than `window + window / 8` later is forwarded once the watermark has passed.
//! Records late by their split's watermark by more than `window` cannot be checked and
//! go to the late output.
//!
//! Which copy of a repeated key is forwarded is the first one to reach the operator;
//! copies from different splits may arrive in either order.
//!
//! With processing time, the clock is the wall clock when the record is applied, and
//! slots are forgotten as it passes; that is not reproducible across restores, but the
//! remembered keys are checkpointed, so a restore still drops repeats of keys seen
//! before the checkpoint.
//!
//! ## Design
//!
//! Invariants: a key is forwarded at most once while it is remembered; the remembered
//! hashes and their slots are checkpointed per key group, so a restore (at any number of
//! workers) still drops repeats of keys seen before the checkpoint; memory is bounded by
//! the keys of one window plus one slot.

use std::collections::BTreeMap;
use std::hash::Hash;

use timely::dataflow::operators::vec::Map;
use weir_runtime::{keygroup, Flow, KeyedState, Result};

use crate::event_time::{EventStream, Timed};
use crate::keyed::{now_ms, Emitted};
use crate::timed::{Logic, TimedStore};
use crate::window::Late;

/// Slots per window.
const SLOTS: u64 = 8;

/// Drops repeated keys.
///
/// # Examples
///
/// ```
/// use weir_runtime::{testing, JobConfig};
/// use weir_operators::{AssignEventTime, Deduplicate};
///
/// let mut ids = testing::run_collect(JobConfig::thread("doc-dedup"), 2, |job| {
///     // (id, event time): id 7 is sent twice.
///     let (events, _) = job
///         .source("events", testing::items(vec![(7, 100), (8, 101), (7, 102)]))?
///         .assign_event_time("clock", |e| Ok(e.1))
///         .bounded(10)
///         .build()?;
///     let (unique, _late) = events.deduplicate("dedup", |e| e.0, 1_000)?;
///     Ok(unique.into_flow().map(|e| e.0))
/// })
/// .unwrap();
/// ids.sort();
/// assert_eq!(ids, vec![7, 8]);
/// ```
pub trait Deduplicate<'s, D> {
    /// Forwards the first record of each `key` and drops repeats for `window` of event
    /// time. Returns the forwarded records, with the input's watermarks, and the late
    /// ones. `name` must be unique.
    #[allow(clippy::type_complexity)]
    fn deduplicate<K, FK>(
        self,
        name: &str,
        key: FK,
        window: u64,
    ) -> Result<(EventStream<'s, D>, Flow<'s, Late<D>>)>
    where
        K: Hash,
        FK: Fn(&D) -> K + 'static;
}

/// Drops repeated keys within a window of processing time, for streams without event
/// time (for example behind an at-least-once source).
///
/// # Examples
///
/// ```
/// use weir_runtime::{testing, JobConfig};
/// use weir_operators::DeduplicateProcessingTime;
///
/// let mut ids = testing::run_collect(JobConfig::thread("doc-dedup-pt"), 2, |job| {
///     job.source("ids", testing::items(vec![1, 2, 1, 3, 2]))?
///         .deduplicate_processing_time("dedup", |id| *id, std::time::Duration::from_secs(60))
/// })
/// .unwrap();
/// ids.sort();
/// assert_eq!(ids, vec![1, 2, 3]);
/// ```
pub trait DeduplicateProcessingTime<'s, D> {
    /// Forwards the first record of each `key` and drops repeats for `window` of wall
    /// clock time. `name` must be unique.
    fn deduplicate_processing_time<K, FK>(
        self,
        name: &str,
        key: FK,
        window: std::time::Duration,
    ) -> Result<Flow<'s, D>>
    where
        K: Hash,
        FK: Fn(&D) -> K + 'static;
}

impl<'s, D: timely::ExchangeData> Deduplicate<'s, D> for EventStream<'s, D> {
    fn deduplicate<K, FK>(
        self,
        name: &str,
        key: FK,
        window: u64,
    ) -> Result<(EventStream<'s, D>, Flow<'s, Late<D>>)>
    where
        K: Hash,
        FK: Fn(&D) -> K + 'static,
    {
        let job = self.job.clone();
        let job = &job;
        let senders = self.senders;
        let watermarks = self.watermarks.clone();
        let marks = self.marks_to_every_worker(0);
        let logic = DedupLogic::new(window, false, KeyedState::restore(job.ctx(), name)?);
        let hash = move |d: &D| keygroup::stable_hash(&key(d));
        let store = TimedStore::restore(senders, logic, hash)?;
        let (records, late) = store.build(self.records, Some(marks), job, name)?;
        Ok((
            EventStream {
                job: job.clone(),
                records,
                watermarks,
                senders,
            },
            job.flow(late),
        ))
    }
}

impl<'s, D: timely::ExchangeData> DeduplicateProcessingTime<'s, D> for Flow<'s, D> {
    fn deduplicate_processing_time<K, FK>(
        self,
        name: &str,
        key: FK,
        window: std::time::Duration,
    ) -> Result<Flow<'s, D>>
    where
        K: Hash,
        FK: Fn(&D) -> K + 'static,
    {
        let job = self.job().clone();
        let job = &job;
        let input = self.into_stream().map(|data| Timed {
            ts: 0,
            split_wm: 0,
            data,
        });
        let logic = DedupLogic::new(
            window.as_millis() as u64,
            true,
            KeyedState::restore(job.ctx(), name)?,
        );
        let hash = move |d: &D| keygroup::stable_hash(&key(d));
        let store = TimedStore::restore(0, logic, hash)?.on_processing_time();
        // Without watermarks nothing is late: the side output stays empty.
        let (records, _late) = store.build(input, None, job, name)?;
        Ok(job.flow(records).map(|t| t.data))
    }
}

/// Remembered key hashes: the slot each was first seen in, and the hashes of each slot
/// in the order they expire.
struct DedupLogic<D> {
    window: u64,
    slot: u64,
    processing_time: bool,
    /// Hash -> slot: the checkpointed state.
    seen: KeyedState<u64, u64, crate::FastHash>,
    /// Slot -> hashes, derived from `seen`.
    slots: BTreeMap<u64, Vec<u64>>,
    _marker: std::marker::PhantomData<fn(D)>,
}

impl<D> DedupLogic<D> {
    fn new(
        window: u64,
        processing_time: bool,
        seen: KeyedState<u64, u64, crate::FastHash>,
    ) -> Self {
        let window = window.max(1);
        DedupLogic {
            window,
            slot: (window / SLOTS).max(1),
            processing_time,
            seen,
            slots: BTreeMap::new(),
            _marker: std::marker::PhantomData,
        }
    }
}

impl<D: timely::ExchangeData> Logic for DedupLogic<D> {
    type Key = u64;
    type Value = D;
    type Out = Timed<D>;
    type Side = Late<D>;
    type StateKey = u64;
    type StateValue = u64;

    fn apply(
        &mut self,
        _epoch: u64,
        hash: u64,
        ts: u64,
        split_wm: u64,
        fired: u64,
        data: D,
        out: &mut Emitted<Self::Out, Self::Side>,
    ) {
        let ts = if self.processing_time { now_ms() } else { ts };
        if !self.processing_time && ts.saturating_add(self.window) <= split_wm.max(fired) {
            out.side(Late {
                record: Timed { ts, split_wm, data },
                reason: format!(
                    "event time {ts} is more than the deduplication window {} behind the watermark {}",
                    self.window,
                    split_wm.max(fired)
                ),
            });
            return;
        }
        let slot = ts / self.slot;
        let group = self.seen.group_of(&hash);
        match self.seen.group_mut(group, &hash).entry(hash) {
            std::collections::hash_map::Entry::Occupied(_) => return,
            std::collections::hash_map::Entry::Vacant(v) => {
                v.insert(slot);
            }
        }
        self.seen.changed(group, hash);
        self.slots.entry(slot).or_default().push(hash);
        out.push(Timed { ts, split_wm, data });
    }

    fn advance(&mut self, wm: u64, _out: &mut Emitted<Self::Out, Self::Side>) {
        let wm = if self.processing_time { now_ms() } else { wm };
        // Slot `s` ends at (s + 1) * slot; it is forgotten once wm >= end + window.
        while let Some((&s, _)) = self.slots.first_key_value() {
            if (s + 1)
                .saturating_mul(self.slot)
                .saturating_add(self.window)
                > wm
            {
                break;
            }
            if let Some((_, hashes)) = self.slots.pop_first() {
                for h in hashes {
                    self.seen.remove(&h);
                }
            }
        }
    }

    fn state(&mut self) -> &mut KeyedState<u64, u64, crate::FastHash> {
        &mut self.seen
    }

    fn restored(&mut self) {
        for (h, slot) in self.seen.iter() {
            self.slots.entry(*slot).or_default().push(*h);
        }
    }
}
