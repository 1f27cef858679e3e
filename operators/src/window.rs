//! `window`: tumbling, sliding and session windows in event time, per key, with an
//! aggregate, allowed lateness and a side output for late records.
//!
//! ## Semantics
//!
//! A window `[start, end)` of a key fires once, when the job's watermark reaches
//! `end + allowed_lateness`, emitting the aggregate of every record of that key whose
//! event time falls in it. It fires exactly once in the committed output: the firing and
//! the state without the window are in the same epoch, so a kill before that epoch's
//! checkpoint replays both, and a kill after it replays neither.
//!
//! A record is late when, by its own split's watermark when it was read (see
//! [`crate::event_time`]), its window had already closed: `end + allowed_lateness <=
//! split watermark` for tumbling and sliding windows, `ts + allowed_lateness <= split
//! watermark` for session windows (a session can grow, so the record's own time is what
//! counts). Late records go to the late output with a reason, never silently dropped. A
//! record that is late for some of its sliding windows only is added to the others.
//!
//! ## Design
//!
//! Open windows and their aggregates are keyed state per key group. Invariants: a window
//! fires exactly once in the committed output, and is removed from the state in the same
//! epoch as it fires; a record is either added to a window, or sent to the late output
//! with a reason.

use std::collections::BTreeMap;
use std::hash::Hash;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use timely::dataflow::Stream;
use weir_runtime::{Flow, Job, KeyedState, Result};

use crate::event_time::{EventStream, Timed};
use crate::keyed::Emitted;
use crate::timed::{Logic, TimedStore};

/// The shape of a window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WindowKind {
    /// Back-to-back windows of `size`: `[k * size, (k + 1) * size)`.
    Tumbling {
        /// Window length.
        size: u64,
    },
    /// Windows of `size` starting every `slide`: a record is in `size / slide` windows.
    Sliding {
        /// Window length.
        size: u64,
        /// Distance between window starts.
        slide: u64,
    },
    /// A key's records closer than `gap` to each other form one session
    /// `[first, last + gap)`.
    Session {
        /// Inactivity that ends a session.
        gap: u64,
    },
}

/// A window definition: shape and allowed lateness.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Windows {
    /// The shape.
    pub kind: WindowKind,
    /// How long after its end a window still accepts records (and waits to fire).
    pub allowed_lateness: u64,
}

impl Windows {
    /// Tumbling windows of `size`.
    pub fn tumbling(size: u64) -> Self {
        Windows {
            kind: WindowKind::Tumbling { size: size.max(1) },
            allowed_lateness: 0,
        }
    }
    /// Sliding windows of `size` every `slide`.
    pub fn sliding(size: u64, slide: u64) -> Self {
        Windows {
            kind: WindowKind::Sliding {
                size: size.max(1),
                slide: slide.clamp(1, size.max(1)),
            },
            allowed_lateness: 0,
        }
    }
    /// Session windows closed by `gap` of inactivity.
    pub fn session(gap: u64) -> Self {
        Windows {
            kind: WindowKind::Session { gap: gap.max(1) },
            allowed_lateness: 0,
        }
    }
    /// With `lateness` of allowed lateness.
    pub fn allowed_lateness(self, lateness: u64) -> Self {
        Windows {
            allowed_lateness: lateness,
            ..self
        }
    }
}

/// A fired window.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Fired<K, A> {
    /// The key.
    pub key: K,
    /// Window start (inclusive).
    pub start: u64,
    /// Window end (exclusive).
    pub end: u64,
    /// The aggregate of the window's records.
    pub value: A,
}

/// A late record and why it was late.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Late<D> {
    /// The record, with its event time.
    pub record: Timed<D>,
    /// Why it was late.
    pub reason: String,
}

/// Fired windows and late records.
pub type WindowOutputs<'s, K, A, D> = (Flow<'s, Fired<K, A>>, Flow<'s, Late<D>>);

/// Aggregates event-time windows per key: `events.window(name, windows)` returns a
/// [`WindowBuilder`]; give it the key and the fold (and, for session windows, how two
/// aggregates merge), then [`build`](WindowBuilder::build) it.
///
/// # Examples
///
/// ```
/// use weir_runtime::{testing, JobConfig};
/// use weir_operators::{AssignEventTime, Window, Windows};
///
/// let mut out = testing::run_collect(JobConfig::thread("doc-window"), 2, |job| {
///     // (user, event time): two sessions for "u" (gap 10), one for "v".
///     let clicks = vec![('u', 1), ('u', 5), ('v', 7), ('u', 30)];
///     let (events, _rejected) = job
///         .source("clicks", testing::items(clicks))?
///         .assign_event_time("clock", |c| Ok(c.1))
///         .build()?;
///     let (sessions, _late) = events
///         .window("sessions", Windows::session(10))
///         .key(|c| c.0)
///         .fold(|count: &mut u64, _c| *count += 1)
///         .merge(|count, other| *count += other)
///         .build()?;
///     Ok(sessions.map(|f| (f.key, f.start, f.end, f.value)))
/// })
/// .unwrap();
/// out.sort();
/// assert_eq!(out, vec![('u', 1, 15, 2), ('u', 30, 40, 1), ('v', 7, 17, 1)]);
/// ```
pub trait Window<'s, D> {
    /// Starts a window operator named `name` (unique in the job) over `windows`.
    fn window(self, name: &str, windows: Windows) -> WindowBuilder<'s, D, (), (), (), ()>;
}

impl<'s, D: timely::ExchangeData + Clone> Window<'s, D> for EventStream<'s, D> {
    fn window(self, name: &str, windows: Windows) -> WindowBuilder<'s, D, (), (), (), ()> {
        WindowBuilder {
            events: self,
            name: name.to_string(),
            windows,
            key: (),
            fold: (),
            merge: None,
            _marker: std::marker::PhantomData,
        }
    }
}

/// A window operator under construction (see [`Window`]): `K` is the key, `A` the
/// aggregate.
#[must_use = "a window does nothing until it is built"]
pub struct WindowBuilder<'s, D, K, A, FK, FF> {
    events: EventStream<'s, D>,
    name: String,
    windows: Windows,
    key: FK,
    fold: FF,
    merge: Option<MergeFn<A>>,
    _marker: std::marker::PhantomData<fn() -> K>,
}

type MergeFn<A> = Box<dyn Fn(&mut A, A)>;

impl<'s, D> WindowBuilder<'s, D, (), (), (), ()> {
    /// Groups records by `key`.
    pub fn key<K, FK: Fn(&D) -> K + 'static>(self, key: FK) -> WindowBuilder<'s, D, K, (), FK, ()> {
        WindowBuilder {
            events: self.events,
            name: self.name,
            windows: self.windows,
            key,
            fold: (),
            merge: None,
            _marker: std::marker::PhantomData,
        }
    }
}

impl<'s, D, K, FK> WindowBuilder<'s, D, K, (), FK, ()> {
    /// Folds each window's records into an `A`, which starts at `A::default()`.
    pub fn fold<A, FF: Fn(&mut A, &D) + 'static>(
        self,
        fold: FF,
    ) -> WindowBuilder<'s, D, K, A, FK, FF> {
        WindowBuilder {
            events: self.events,
            name: self.name,
            windows: self.windows,
            key: self.key,
            fold,
            merge: None,
            _marker: std::marker::PhantomData,
        }
    }
}

impl<'s, D, K, A, FK, FF> WindowBuilder<'s, D, K, A, FK, FF>
where
    D: timely::ExchangeData + Clone,
    K: timely::ExchangeData + Clone + Hash + Eq + Ord,
    A: timely::ExchangeData + Clone + Default + Serialize + DeserializeOwned,
    FK: Fn(&D) -> K + 'static,
    FF: Fn(&mut A, &D) + 'static,
{
    /// Combines two aggregates when session windows merge. Session windows need it;
    /// tumbling and sliding windows never merge.
    pub fn merge(self, merge: impl Fn(&mut A, A) + 'static) -> Self {
        WindowBuilder {
            merge: Some(Box::new(merge)),
            ..self
        }
    }

    /// Adds the operator: returns the fired windows and the late records.
    pub fn build(self) -> Result<WindowOutputs<'s, K, A, D>> {
        let WindowBuilder {
            events,
            name,
            windows,
            key,
            fold,
            merge,
            _marker,
        } = self;
        let merge = match (windows.kind, merge) {
            (_, Some(merge)) => merge,
            (WindowKind::Session { .. }, None) => {
                return Err(weir_runtime::RuntimeError::config(
                    "window merge",
                    format!("window `{name}`: session windows merge; give `.merge(..)` to combine two aggregates"),
                ))
            }
            (_, None) => Box::new(|_: &mut A, _: A| {}),
        };
        let job = events.job.clone();
        let (fired, late) = window(events, &job, &name, windows, key, fold, merge)?;
        Ok((job.flow(fired), job.flow(late)))
    }
}

#[allow(clippy::type_complexity)]
fn window<'s, D, K, A, FK, FF, FM>(
    events: EventStream<'s, D>,
    job: &Job<'s>,
    name: &str,
    windows: Windows,
    key: FK,
    fold: FF,
    merge: FM,
) -> Result<(
    Stream<'s, u64, Vec<Fired<K, A>>>,
    Stream<'s, u64, Vec<Late<D>>>,
)>
where
    D: timely::ExchangeData + Clone,
    K: timely::ExchangeData + Clone + Hash + Eq + Ord,
    A: timely::ExchangeData + Clone + Default + Serialize + DeserializeOwned,
    FK: Fn(&D) -> K + 'static,
    FF: Fn(&mut A, &D) + 'static,
    FM: Fn(&mut A, A) + 'static,
{
    let marks = events.marks_to_every_worker(0);
    let logic = WindowLogic {
        windows,
        state: KeyedState::restore(job.ctx(), name)?,
        timers: Timers::new(),
        dirty: Vec::new(),
        fold,
        merge,
        _marker: std::marker::PhantomData,
    };
    let store = TimedStore::restore(events.senders, logic, key)?;
    store.build(events.records, Some(marks), job, name)
}

/// The open windows of one key: `(start, end, aggregate)`.
///
/// Event time mostly rises, so nearly every record of a key falls in the key's latest
/// window. That one is kept inline in the key's slot of the state's table: a record
/// finds it with the probe that found the key, and touches no other memory. Windows
/// that started earlier, still open until the watermark passes them, wait in `older`,
/// ordered by start. Checkpoints store all of them as a map from start to (end,
/// aggregate), the layout of the `BTreeMap` they were once kept in, so either reads the
/// other's.
struct Open<A> {
    /// The window with the largest start, if any is open.
    latest: Option<(u64, u64, A)>,
    /// The other open windows, ordered by start, all before `latest`'s.
    older: Vec<(u64, u64, A)>,
    /// One more than the epoch in which the key was last listed as changed, in memory
    /// only: a key is listed once per epoch, not once per record (see
    /// [`WindowLogic::end_epoch`]).
    listed: u64,
}

impl<A> Open<A> {
    fn new() -> Self {
        Open {
            latest: None,
            older: Vec::new(),
            listed: 0,
        }
    }

    /// Whether the key still has to be listed as changed in `epoch`; marks it listed.
    fn list_in(&mut self, epoch: u64) -> bool {
        let mark = epoch.saturating_add(1);
        std::mem::replace(&mut self.listed, mark) != mark
    }

    /// Whether no window is open.
    fn is_empty(&self) -> bool {
        self.latest.is_none() && self.older.is_empty()
    }

    /// The open windows, in order of start.
    fn iter(&self) -> impl Iterator<Item = &(u64, u64, A)> {
        self.older.iter().chain(self.latest.as_ref())
    }

    /// The aggregate of the window starting at `start`; `open` gives the end and the
    /// first aggregate of a window that is not open yet.
    fn entry(&mut self, start: u64, open: impl FnOnce() -> (u64, A)) -> &mut A {
        match &self.latest {
            Some(w) if w.0 == start => {}
            Some(w) if w.0 > start => return self.older_entry(start, open),
            _ => {
                let (end, acc) = open();
                self.set_latest(start, end, acc);
            }
        }
        &mut self.latest.as_mut().expect("just matched or set").2
    }

    /// Where the earlier window starting at `start` is in `older`, or would go.
    fn older_position(&self, start: u64) -> std::result::Result<usize, usize> {
        self.older.binary_search_by_key(&start, |w| w.0)
    }

    /// The aggregate of a window that starts before the latest one.
    fn older_entry(&mut self, start: u64, open: impl FnOnce() -> (u64, A)) -> &mut A {
        let i = match self.older_position(start) {
            Ok(i) => i,
            Err(i) => {
                let (end, acc) = open();
                self.older.insert(i, (start, end, acc));
                i
            }
        };
        &mut self.older[i].2
    }

    /// Makes `[start, end)` the latest window, which starts after every open one.
    fn set_latest(&mut self, start: u64, end: u64, acc: A) {
        if let Some(previous) = self.latest.replace((start, end, acc)) {
            self.older.push(previous);
        }
    }

    /// Opens the window `[start, end)` with `acc`, replacing one of the same start.
    fn insert(&mut self, start: u64, end: u64, acc: A) {
        match &mut self.latest {
            Some(w) if w.0 == start => *w = (start, end, acc),
            Some(w) if w.0 > start => match self.older_position(start) {
                Ok(i) => self.older[i] = (start, end, acc),
                Err(i) => self.older.insert(i, (start, end, acc)),
            },
            _ => self.set_latest(start, end, acc),
        }
    }

    /// Closes the window starting at `start`: its end and aggregate, if it was open.
    fn remove(&mut self, start: u64) -> Option<(u64, A)> {
        let removed = if self.latest.as_ref().is_some_and(|w| w.0 == start) {
            let (_, end, acc) = self.latest.take().expect("just matched");
            // The latest of the older ones takes its place.
            self.latest = self.older.pop();
            (end, acc)
        } else {
            let i = self.older_position(start).ok()?;
            let (_, end, acc) = self.older.remove(i);
            (end, acc)
        };
        Some(removed)
    }

    /// Frees the vector of earlier windows once none is left, after a window fired: a
    /// tumbling window's key holds earlier windows only from a boundary until the
    /// watermark passes it, and a key back to its latest window alone keeps no
    /// allocation. (Merging sessions removes and opens windows in one record; it keeps
    /// the vector rather than free and allocate it again.)
    fn fired(&mut self) {
        if self.older.is_empty() && self.older.capacity() > 0 {
            self.older = Vec::new();
        }
    }
}

impl<A: Serialize> Serialize for Open<A> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.collect_map(self.iter().map(|(start, end, acc)| (start, (end, acc))))
    }
}

impl<'de, A: Deserialize<'de>> Deserialize<'de> for Open<A> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct Windows<A>(std::marker::PhantomData<A>);
        impl<'de, A: Deserialize<'de>> serde::de::Visitor<'de> for Windows<A> {
            type Value = Open<A>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a map from window start to (end, aggregate)")
            }
            fn visit_map<M: serde::de::MapAccess<'de>>(
                self,
                mut map: M,
            ) -> std::result::Result<Open<A>, M::Error> {
                let mut open = Open::new();
                while let Some((start, (end, acc))) = map.next_entry::<u64, (u64, A)>()? {
                    // Stored in order of start: each one becomes the latest.
                    open.insert(start, end, acc);
                }
                Ok(open)
            }
        }
        d.deserialize_map(Windows(std::marker::PhantomData))
    }
}

/// When open windows fire: fire at -> (key, window start), in the order they were set.
///
/// Many windows share a time to fire at (all keys' tumbling windows of one start do), so
/// a new window costs a push, not an insert into one ordered set of every window. A
/// session that grows keeps its timer at its old end: when that goes off and the session
/// is not due yet (see [`due`]), the timer is set again at the session's end then. A
/// session merged into an earlier one leaves its timer behind, to find nothing. Every
/// open window has a timer at or before the time it is due, so none fires late, and only
/// a due one fires.
type Timers<K> = BTreeMap<u64, Vec<(K, u64)>>;

/// Whether the window `(start, end)` of a key, found when its timer at `at` went off,
/// fires now: only if the timer is still the window's own, that is, the window (which
/// may have grown since, as sessions do) is due at `at`.
fn due(at: u64, end: u64, lateness: u64) -> bool {
    end.saturating_add(lateness) == at
}

struct WindowLogic<K, A, D, FF, FM> {
    windows: Windows,
    state: KeyedState<K, Open<A>, crate::FastHash>,
    timers: Timers<K>,
    /// Keys changed by records of the open epoch, each once, with their group's index:
    /// reported to the state when the epoch ends, so that a key with many records in an
    /// epoch is looked up in the changed set once.
    dirty: Vec<(usize, K)>,
    fold: FF,
    merge: FM,
    _marker: std::marker::PhantomData<fn(D)>,
}

impl<K, A, D, FF, FM> Logic for WindowLogic<K, A, D, FF, FM>
where
    K: timely::ExchangeData + Clone + Hash + Eq + Ord,
    A: timely::ExchangeData + Clone + Default + Serialize + DeserializeOwned,
    D: timely::ExchangeData,
    FF: Fn(&mut A, &D) + 'static,
    FM: Fn(&mut A, A) + 'static,
{
    type Key = K;
    type Value = D;
    type Out = Fired<K, A>;
    type Side = Late<D>;
    type StateKey = K;
    type StateValue = Open<A>;

    fn apply(
        &mut self,
        epoch: u64,
        key: K,
        ts: u64,
        split_wm: u64,
        fired: u64,
        data: D,
        out: &mut Emitted<Self::Out, Self::Side>,
    ) {
        let lateness = self.windows.allowed_lateness;
        let closed = |end: u64| end.saturating_add(lateness) <= split_wm.max(fired);
        let late = |reason: String, data: D| Late {
            record: Timed { ts, split_wm, data },
            reason,
        };
        match self.windows.kind {
            WindowKind::Tumbling { size } | WindowKind::Sliding { size, .. } => {
                let slide = match self.windows.kind {
                    WindowKind::Sliding { slide, .. } => slide,
                    _ => size,
                };
                // The windows that hold `ts` start at `last_start` and every `slide` below
                // it; they are walked twice (is any still open, then fold), allocating
                // nothing per record.
                let last_start = ts - ts % slide;
                let holding = move || {
                    let mut next = Some(last_start);
                    std::iter::from_fn(move || loop {
                        let start = next?;
                        next = (start >= slide && start.saturating_add(size) > ts)
                            .then(|| start - slide);
                        if start.saturating_add(size) > ts {
                            return Some(start);
                        }
                    })
                };
                if holding().all(|s| closed(s.saturating_add(size))) {
                    let reason = format!(
                        "event time {ts} is past its window's end + allowed lateness {lateness} (watermark {})",
                        split_wm.max(fired)
                    );
                    out.side(late(reason, data));
                    return;
                }
                let group = self.state.group_of(&key);
                let map = self.state.group_mut(group, &key);
                // Look up before inserting, so that a known key is found with one probe
                // and not cloned.
                let open = match map.get_mut(&key) {
                    Some(open) => open,
                    None => map.entry(key.clone()).or_insert_with(Open::new),
                };
                for s in holding().filter(|s| !closed(s.saturating_add(size))) {
                    let acc = open.entry(s, || {
                        let at = s.saturating_add(size).saturating_add(lateness);
                        self.timers.entry(at).or_default().push((key.clone(), s));
                        (s.saturating_add(size), A::default())
                    });
                    (self.fold)(acc, &data);
                }
                if open.list_in(epoch) {
                    self.dirty.push((group, key));
                }
            }
            WindowKind::Session { gap } => {
                if ts.saturating_add(lateness) <= split_wm.max(fired) {
                    let reason = format!(
                        "event time {ts} + allowed lateness {lateness} is behind the watermark {}",
                        split_wm.max(fired)
                    );
                    out.side(late(reason, data));
                    return;
                }
                let (mut start, mut end) = (ts, ts.saturating_add(gap));
                let mut acc = A::default();
                (self.fold)(&mut acc, &data);
                let group = self.state.group_of(&key);
                let map = self.state.group_mut(group, &key);
                let open = match map.get_mut(&key) {
                    Some(open) => open,
                    None => map.entry(key.clone()).or_insert_with(Open::new),
                };
                // Sessions that touch [start, end) merge into it.
                let touching: Vec<u64> = open
                    .iter()
                    .take_while(|w| w.0 <= end)
                    .filter(|w| w.1 >= start)
                    .map(|w| w.0)
                    .collect();
                // The session keeps the start of the earliest one it merges, whose timer
                // (at its old end) then finds it grown and sets the next one; the timers
                // of the others find nothing at their starts. Only a session that starts
                // at this record needs a timer of its own: a key whose session grows with
                // every record holds one timer, not one per record.
                let armed = touching.first().is_some_and(|&s| s <= ts);
                for s in touching {
                    let (e, other) = open.remove(s).expect("listed");
                    start = start.min(s);
                    end = end.max(e);
                    (self.merge)(&mut acc, other);
                }
                open.insert(start, end, acc);
                if !armed {
                    self.timers
                        .entry(end.saturating_add(lateness))
                        .or_default()
                        .push((key.clone(), start));
                }
                if open.list_in(epoch) {
                    self.dirty.push((group, key));
                }
            }
        }
    }

    fn advance(&mut self, wm: u64, out: &mut Emitted<Self::Out, Self::Side>) {
        let lateness = self.windows.allowed_lateness;
        while let Some(entry) = self.timers.first_entry() {
            let at = *entry.key();
            if at > wm {
                break;
            }
            for (key, start) in entry.remove() {
                let group = self.state.group_of(&key);
                let map = self.state.group_mut(group, &key);
                let Some(open) = map.get_mut(&key) else {
                    continue;
                };
                let (end, value) = match open.remove(start) {
                    Some((end, value)) if due(at, end, lateness) => (end, value),
                    // A session that grew since: due later, when this timer goes again.
                    Some((end, value)) => {
                        open.insert(start, end, value);
                        self.timers
                            .entry(end.saturating_add(lateness))
                            .or_default()
                            .push((key, start));
                        continue;
                    }
                    // Fired already by an earlier entry, or merged away.
                    None => continue,
                };
                out.push(Fired {
                    key: key.clone(),
                    start,
                    end,
                    value,
                });
                if open.is_empty() {
                    map.remove(&key);
                } else {
                    open.fired();
                }
                self.state.changed(group, key);
            }
        }
    }

    fn end_epoch(&mut self, _epoch: u64) {
        for (group, key) in self.dirty.drain(..) {
            self.state.changed(group, key);
        }
    }

    fn state(&mut self) -> &mut KeyedState<K, Open<A>, crate::FastHash> {
        &mut self.state
    }

    fn restored(&mut self) {
        let lateness = self.windows.allowed_lateness;
        for (k, open) in self.state.iter() {
            for (s, e, _) in open.iter() {
                self.timers
                    .entry(e.saturating_add(lateness))
                    .or_default()
                    .push((k.clone(), *s));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The windows of `open` as the map checkpoints store them.
    fn as_map(open: &Open<(u64, u64)>) -> BTreeMap<u64, (u64, (u64, u64))> {
        open.iter().map(|&(s, e, a)| (s, (e, a))).collect()
    }

    #[test]
    fn open_windows_are_stored_as_their_map_alone() {
        use weir_checkpoint::codec::{decode, encode};
        let windows: BTreeMap<u64, (u64, (u64, u64))> = [(0, (60, (3, 1))), (60, (120, (7, 2)))]
            .into_iter()
            .collect();
        let mut open = Open::new();
        // Inserted out of order: kept in order of start.
        for (&s, &(e, a)) in windows.iter().rev() {
            open.insert(s, e, a);
        }
        assert!(open.list_in(4));
        assert!(!open.list_in(4), "listed once per epoch");
        assert!(open.list_in(5));
        // The same bytes as the map (the layout of checkpoints written when the windows
        // were kept in one), and the mark is not stored.
        let bytes = encode("open windows", &open).unwrap();
        assert_eq!(bytes, encode("windows", &windows).unwrap());
        let back: Open<(u64, u64)> = decode("open windows", &bytes).unwrap();
        assert_eq!(as_map(&back), windows);
        assert_eq!(back.listed, 0);
        // An empty key's windows, too.
        let empty = BTreeMap::<u64, (u64, (u64, u64))>::new();
        assert_eq!(
            encode("open windows", &Open::<(u64, u64)>::new()).unwrap(),
            encode("windows", &empty).unwrap()
        );
    }

    #[test]
    fn records_of_the_latest_window_touch_only_the_keys_slot() {
        let mut open: Open<(u64, u64)> = Open::new();
        *open.entry(0, || (60, (0, 0))) = (1, 1);
        *open.entry(60, || (120, (0, 0))) = (2, 1);
        // The window before goes to `older`; the latest stays inline.
        assert_eq!(open.latest, Some((60, 120, (2, 1))));
        assert_eq!(open.older, vec![(0, 60, (1, 1))]);
        // A late-ish record of the window before finds it there.
        open.entry(0, || unreachable!("open")).0 += 1;
        assert_eq!(open.older, vec![(0, 60, (2, 1))]);
        // When the latest fires first (sessions may), the one before takes its place.
        assert_eq!(open.remove(60), Some((120, (2, 1))));
        assert_eq!(open.latest, Some((0, 60, (2, 1))));
        // Back to one window after a firing, the key keeps no allocation.
        open.fired();
        assert_eq!(open.older.capacity(), 0);
        assert_eq!(open.remove(0), Some((60, (2, 1))));
        assert!(open.is_empty());
    }

    /// What is done to a key's open windows.
    #[derive(Debug, Clone)]
    enum Op {
        /// Adds to the window at a start, opening it (with an end) if it is not open.
        Add(u64, u64, u64),
        /// Opens a window, replacing one of the same start.
        Insert(u64, u64, u64),
        /// Closes the window at a start.
        Remove(u64),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (0..20u64, 0..100u64, 0..10u64).prop_map(|(s, e, v)| Op::Add(s, e, v)),
            (0..20u64, 0..100u64, 0..10u64).prop_map(|(s, e, v)| Op::Insert(s, e, v)),
            (0..20u64).prop_map(Op::Remove),
        ]
    }

    proptest! {
        /// The inline windows behave as the map they replace, and read back the same
        /// from a checkpoint, whatever the order windows open and close in.
        #[test]
        fn open_windows_behave_as_a_map(ops in proptest::collection::vec(op(), 0..40)) {
            use weir_checkpoint::codec::{decode, encode};
            let mut open: Open<(u64, u64)> = Open::new();
            let mut model: BTreeMap<u64, (u64, (u64, u64))> = BTreeMap::new();
            for op in ops {
                match op {
                    Op::Add(s, e, v) => {
                        open.entry(s, || (e, (0, 0))).0 += v;
                        model.entry(s).or_insert((e, (0, 0))).1 .0 += v;
                    }
                    Op::Insert(s, e, v) => {
                        open.insert(s, e, (v, 1));
                        model.insert(s, (e, (v, 1)));
                    }
                    Op::Remove(s) => prop_assert_eq!(open.remove(s), model.remove(&s)),
                }
                prop_assert_eq!(as_map(&open), model.clone());
            }
            let bytes = encode("open windows", &open).unwrap();
            prop_assert_eq!(&bytes, &encode("windows", &model).unwrap());
            let back: Open<(u64, u64)> = decode("open windows", &bytes).unwrap();
            prop_assert_eq!(as_map(&back), model);
        }
    }

    #[test]
    fn a_timer_fires_only_the_window_that_is_due_at_its_time() {
        // A tumbling window [0, 100) with lateness 5 is due at 105.
        assert!(due(105, 100, 5));
        // A session that grew from ending at 100 to 130 is not due at its old timer.
        assert!(!due(105, 130, 5));
        // Lateness that reaches the end of time saturates, as the timer's time does.
        assert!(due(u64::MAX, u64::MAX - 1, 10));
    }
}
