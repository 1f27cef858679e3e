//! `assign_event_time`: event time and watermarks, tracked per source split and stored
//! in checkpoints.
//!
//! ## Semantics
//!
//! Every record gets an event time from a timestamp extractor; a record without one goes
//! to a side output with the extractor's reason. Each split (file, partition, generator
//! slice) has a watermark: the largest event time seen in it minus the allowed
//! out-of-orderness. A worker's watermark is the least over the splits it owns, and the
//! job's watermark (what windows fire on) is the least over the workers, carried to every
//! worker as [`Mark`]s at the end of each epoch.
//!
//! Every record also carries its split's watermark from just before it was read. Whether
//! a record is late is decided against that value, not against whatever the job's
//! watermark happens to be when the record arrives: so the same input gives the same
//! output however the run is timed, killed, restored or rescaled. Because the job's
//! watermark never exceeds a split's, a record that is not late by its own split always
//! finds its window still open.
//!
//! When the input ends, every worker reports the largest watermark, so every window
//! fires; when the job stops for a savepoint instead, watermarks stay where they are.
//!
//! The largest event time per split is checkpointed; after a restore, watermarks resume
//! exactly where the checkpoint left them, also at another number of workers.
//!
//! Idle splits: with an idle timeout, a split that has produced nothing for that long (in
//! processing time) no longer holds the watermark back, and a worker whose splits are all
//! idle is left out of the job's watermark. That makes progress depend on timing, so a
//! record from a split that was idle may find its window already fired; it then goes to
//! the late output with that reason. Without an idle timeout, a split that never produces
//! holds the watermark at zero until the input ends.
//!
//! ## Design
//!
//! Invariants: a split's watermark never goes back, also across restores and rescaling
//! (the largest event time per split is keyed state); the job's watermark moves only at
//! epoch boundaries; a record's lateness is decided once, from the watermark it carries.

use std::collections::{BTreeMap, HashMap};
use std::hash::Hash;
use std::rc::Rc;
use std::time::{Duration, Instant};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use timely::dataflow::operators::vec::Map;
use timely::dataflow::Stream;
use weir_runtime::{encode_keyed, keygroup, Flow, Job, Part, Result, Sealing};

pub use crate::keyed::Mark;
use crate::keyed::{keyed, Marks, Out, Store};

/// A record with its event time.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Timed<D> {
    /// Event time (milliseconds, or any unit the job uses consistently).
    pub ts: u64,
    /// The watermark of the record's split just before the record was read.
    pub split_wm: u64,
    /// The record.
    pub data: D,
}

/// A record that could not be given an event time, and why.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Rejected<D> {
    /// The record.
    pub data: D,
    /// Why it was rejected.
    pub reason: String,
}

/// A stream of timestamped records with its watermarks, carrying its job like a
/// [`Flow`].
pub struct EventStream<'s, D> {
    /// The job.
    pub(crate) job: Job<'s>,
    /// The records.
    pub records: Stream<'s, u64, Vec<Timed<D>>>,
    /// Watermark reports, from `senders` instances numbered `0..senders`.
    pub watermarks: Stream<'s, u64, Vec<Mark>>,
    /// How many instances report watermarks.
    pub senders: usize,
}

impl<'s, D: timely::ExchangeData + Clone> Clone for EventStream<'s, D> {
    fn clone(&self) -> Self {
        EventStream {
            job: self.job.clone(),
            records: self.records.clone(),
            watermarks: self.watermarks.clone(),
            senders: self.senders,
        }
    }
}

impl<'s, D: timely::ExchangeData> EventStream<'s, D> {
    /// The records with their event times, as a flow (without the watermarks).
    pub fn records(&self) -> Flow<'s, Timed<D>>
    where
        D: Clone,
    {
        self.job.flow(self.records.clone())
    }

    /// The records without their event times, as a flow.
    pub fn into_flow(self) -> Flow<'s, D> {
        self.job.flow(self.records).map(|t| t.data)
    }

    /// Maps every record, keeping its event time.
    pub fn map<D2: timely::ExchangeData, F: Fn(D) -> D2 + 'static>(
        self,
        f: F,
    ) -> EventStream<'s, D2> {
        EventStream {
            job: self.job,
            records: self.records.map(move |t| Timed {
                ts: t.ts,
                split_wm: t.split_wm,
                data: f(t.data),
            }),
            watermarks: self.watermarks,
            senders: self.senders,
        }
    }

    /// Keeps the records for which `f` is true.
    pub fn filter<F: Fn(&D) -> bool + 'static>(self, f: F) -> EventStream<'s, D> {
        EventStream {
            job: self.job,
            records: self
                .records
                .flat_map(move |t| if f(&t.data) { Some(t) } else { None }),
            watermarks: self.watermarks,
            senders: self.senders,
        }
    }

    /// The watermark reports as the second input of a keyed event-time operator: each
    /// report sent to every worker, its sender number shifted by `offset` (so that two
    /// event streams can feed one operator).
    pub(crate) fn marks_to_every_worker(&self, offset: usize) -> Marks<'s> {
        let peers = self.records.scope().peers();
        self.watermarks.clone().flat_map(move |m| {
            let m = Mark {
                from: m.from + offset,
                ..m
            };
            (0..peers).map(move |to| (to, m))
        })
    }
}

/// How watermarks follow event time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WatermarkStrategy {
    /// How far (in event time) a record may lag the largest event time of its split
    /// without being late.
    pub max_out_of_orderness: u64,
    /// A split that produced nothing for this long stops holding the watermark back.
    pub idle_timeout: Option<Duration>,
}

impl WatermarkStrategy {
    /// Bounded out-of-orderness, no idle timeout.
    pub fn bounded(max_out_of_orderness: u64) -> Self {
        WatermarkStrategy {
            max_out_of_orderness,
            idle_timeout: None,
        }
    }
}

/// Gives records event time and watermarks: `flow.assign_event_time(name, timestamp)`
/// returns an [`EventTime`] builder, and its [`build`](EventTime::build) the event stream
/// and the records `timestamp` rejected.
///
/// # Examples
///
/// ```
/// use weir_runtime::{testing, JobConfig};
/// use weir_operators::AssignEventTime;
///
/// let mut out = testing::run_collect(JobConfig::thread("doc-event-time"), 1, |job| {
///     // Records are "split:timestamp"; the second one has no timestamp.
///     let lines = vec!["a:10".to_string(), "a:oops".into(), "a:30".into()];
///     let lines = job.source("lines", testing::items(lines))?;
///     let (events, rejected) = lines
///         .assign_event_time("event-time", |line| {
///             line.split(':').nth(1).unwrap_or("").parse::<u64>().map_err(|e| format!("bad timestamp: {e}"))
///         })
///         .splits(vec!["a".to_string()], |line| line.split(':').next().unwrap_or("").to_string())
///         .bounded(5)
///         .build()?;
///     let rejected = rejected.map(|r| (0, r.reason.len() as u64));
///     Ok(events.records().map(|t| (t.ts, t.split_wm)).concat(rejected))
/// })
/// .unwrap();
/// out.sort();
/// // One rejected record (the reason is not empty); 30 was read when split `a` was at 10 - 5.
/// assert_eq!(out.len(), 3);
/// assert!(out[0].0 == 0 && out[0].1 > 0);
/// assert_eq!(&out[1..], &[(10, 0), (30, 5)]);
/// ```
pub trait AssignEventTime<'s, D> {
    /// Starts assigning event time with `timestamp` (an `Err` rejects the record with
    /// that reason) in the operator named `name` (unique in the job; the watermarks are
    /// checkpointed under it). By default the input is one split with no
    /// out-of-orderness; see [`EventTime`].
    fn assign_event_time<FT>(
        self,
        name: &str,
        timestamp: FT,
    ) -> EventTime<'s, D, u8, OneSplit<D>, FT>
    where
        FT: Fn(&D) -> std::result::Result<u64, String> + 'static;
}

/// The split function of an input that is one split.
pub type OneSplit<D> = fn(&D) -> u8;

fn one_split<D>(_: &D) -> u8 {
    0
}

impl<'s, D: timely::ExchangeData> AssignEventTime<'s, D> for Flow<'s, D> {
    fn assign_event_time<FT>(
        self,
        name: &str,
        timestamp: FT,
    ) -> EventTime<'s, D, u8, OneSplit<D>, FT>
    where
        FT: Fn(&D) -> std::result::Result<u64, String> + 'static,
    {
        EventTime {
            flow: self,
            name: name.to_string(),
            splits: vec![0],
            split_of: one_split::<D>,
            timestamp,
            strategy: WatermarkStrategy::bounded(0),
        }
    }
}

/// How [`AssignEventTime::assign_event_time`] assigns event time: the source's splits,
/// and how watermarks follow event time.
#[must_use = "an event-time assignment does nothing until it is built"]
pub struct EventTime<'s, D, P, FS, FT> {
    flow: Flow<'s, D>,
    name: String,
    splits: Vec<P>,
    split_of: FS,
    timestamp: FT,
    strategy: WatermarkStrategy,
}

impl<'s, D, P, FS, FT> EventTime<'s, D, P, FS, FT>
where
    D: timely::ExchangeData,
    P: timely::ExchangeData + Clone + Hash + Eq + Ord + Serialize + DeserializeOwned,
    FS: Fn(&D) -> P + 'static,
    FT: Fn(&D) -> std::result::Result<u64, String> + 'static,
{
    /// The source's splits, every one of them, and which split a record came from: each
    /// split has a watermark of its own.
    pub fn splits<P2, FS2>(self, splits: Vec<P2>, split_of: FS2) -> EventTime<'s, D, P2, FS2, FT>
    where
        FS2: Fn(&D) -> P2 + 'static,
    {
        EventTime {
            flow: self.flow,
            name: self.name,
            splits,
            split_of,
            timestamp: self.timestamp,
            strategy: self.strategy,
        }
    }

    /// How watermarks follow event time.
    pub fn watermarks(self, strategy: WatermarkStrategy) -> Self {
        EventTime { strategy, ..self }
    }

    /// Bounded out-of-orderness: a record may lag the largest event time of its split by
    /// `max_out_of_orderness` without being late.
    pub fn bounded(self, max_out_of_orderness: u64) -> Self {
        let strategy = WatermarkStrategy {
            max_out_of_orderness,
            ..self.strategy
        };
        EventTime { strategy, ..self }
    }

    /// A split that produced nothing for `timeout` stops holding the watermark back.
    pub fn idle_timeout(self, timeout: Duration) -> Self {
        let strategy = WatermarkStrategy {
            idle_timeout: Some(timeout),
            ..self.strategy
        };
        EventTime { strategy, ..self }
    }

    /// Adds the operator: returns the event stream and the records `timestamp` rejected.
    #[allow(clippy::type_complexity)]
    pub fn build(self) -> Result<(EventStream<'s, D>, Flow<'s, Rejected<D>>)> {
        let EventTime {
            flow,
            name,
            splits,
            split_of,
            timestamp,
            strategy,
        } = self;
        let job = flow.job().clone();
        let stream = flow.into_stream();
        assign(stream, &job, &name, splits, split_of, timestamp, strategy)
    }
}

/// What the assigner emits on its side output.
#[derive(Clone, Serialize, Deserialize)]
enum Aside<D> {
    Rejected(Rejected<D>),
    Mark(Mark),
}

#[allow(clippy::type_complexity)]
fn assign<'s, D, P, FS, FT>(
    stream: Stream<'s, u64, Vec<D>>,
    job: &Job<'s>,
    name: &str,
    splits: Vec<P>,
    split_of: FS,
    timestamp: FT,
    strategy: WatermarkStrategy,
) -> Result<(EventStream<'s, D>, Flow<'s, Rejected<D>>)>
where
    D: timely::ExchangeData,
    P: timely::ExchangeData + Clone + Hash + Eq + Ord + Serialize + DeserializeOwned,
    FS: Fn(&D) -> P + 'static,
    FT: Fn(&D) -> std::result::Result<u64, String> + 'static,
{
    let ctx = job.ctx().clone();
    let (n, peers, worker) = (ctx.key_groups(), ctx.peers(), ctx.worker());
    let owned: Vec<P> = splits
        .into_iter()
        .filter(|p| keygroup::owner(keygroup::key_group(p, n), n, peers) == worker)
        .collect();
    let max_ts: HashMap<P, u64, crate::FastHash> =
        ctx.restore_keyed::<P, u64>(name)?.into_iter().collect();
    let split_of = Rc::new(split_of);
    let store = SplitClocks {
        ctx: ctx.clone(),
        split_of: Rc::clone(&split_of),
        worker,
        owned,
        max_ts,
        active: HashMap::new(),
        started: Instant::now(),
        strategy,
        timestamp,
        last_mark: None,
        _marker: std::marker::PhantomData,
    };
    let group = move |d: &D, n| keygroup::key_group(&split_of(d), n);
    let (records, aside) = keyed(stream, None, group, job, name, store)?;
    let (rejected, watermarks) = job.flow(aside).split(|e| match e {
        Aside::Rejected(r) => Ok(r),
        Aside::Mark(m) => Err(m),
    });
    Ok((
        EventStream {
            job: job.clone(),
            records,
            watermarks: watermarks.into_stream(),
            senders: peers,
        },
        rejected,
    ))
}

/// The assigner's state on one worker: the largest event time per owned split.
struct SplitClocks<P, D, FS, FT> {
    ctx: weir_runtime::JobContext,
    /// Which split a record came from.
    split_of: Rc<FS>,
    worker: usize,
    owned: Vec<P>,
    max_ts: HashMap<P, u64, crate::FastHash>,
    /// When each split last produced a record (processing time; not checkpointed).
    active: HashMap<P, Instant>,
    started: Instant,
    strategy: WatermarkStrategy,
    timestamp: FT,
    last_mark: Option<Mark>,
    _marker: std::marker::PhantomData<fn(D)>,
}

impl<P, D, FS, FT> SplitClocks<P, D, FS, FT>
where
    P: Hash + Eq,
{
    fn split_wm(&self, p: &P) -> u64 {
        self.max_ts
            .get(p)
            .map_or(0, |m| m.saturating_sub(self.strategy.max_out_of_orderness))
    }
}

impl<P, D, FS, FT> Store for SplitClocks<P, D, FS, FT>
where
    P: timely::ExchangeData + Clone + Hash + Eq + Ord + Serialize + DeserializeOwned,
    D: timely::ExchangeData,
    FS: Fn(&D) -> P + 'static,
    FT: Fn(&D) -> std::result::Result<u64, String> + 'static,
{
    type Record = D;
    type Out = Timed<D>;
    type Side = Aside<D>;

    fn apply(&mut self, _epoch: u64, data: D, out: &mut Out<Self>) {
        match (self.timestamp)(&data) {
            Err(reason) => out.side(Aside::Rejected(Rejected { data, reason })),
            Ok(ts) => {
                let split = (self.split_of)(&data);
                if self.strategy.idle_timeout.is_some() {
                    self.active.insert(split.clone(), Instant::now());
                }
                // One lookup: the split's watermark before this record, then its largest
                // event time with it.
                let split_wm = match self.max_ts.get_mut(&split) {
                    Some(max) => {
                        let wm = max.saturating_sub(self.strategy.max_out_of_orderness);
                        *max = (*max).max(ts);
                        wm
                    }
                    None => {
                        self.max_ts.insert(split, ts);
                        0
                    }
                };
                out.push(Timed { ts, split_wm, data });
            }
        }
    }

    fn close(&mut self, _epoch: u64, is_final: bool, out: &mut Out<Self>) -> bool {
        // At the end of the input every split is complete; when the job is only stopping
        // (for a savepoint) they are not, and the watermark must stay where it is.
        let ended = is_final && !self.ctx.is_stopping();
        let mark = if ended || self.owned.is_empty() {
            Mark {
                from: self.worker,
                wm: u64::MAX,
                idle: false,
            }
        } else {
            let idle = |p: &P| match self.strategy.idle_timeout {
                None => false,
                Some(t) => self.active.get(p).unwrap_or(&self.started).elapsed() >= t,
            };
            let busy: Vec<&P> = self.owned.iter().filter(|p| !idle(p)).collect();
            let wm = if busy.is_empty() {
                self.owned.iter().map(|p| self.split_wm(p)).min()
            } else {
                busy.iter().map(|p| self.split_wm(p)).min()
            };
            Mark {
                from: self.worker,
                wm: wm.unwrap_or(0),
                idle: busy.is_empty(),
            }
        };
        if self.last_mark != Some(mark) {
            self.last_mark = Some(mark);
            out.side(Aside::Mark(mark));
        }
        false
    }

    fn encode(&mut self, name: &str, key_groups: u32, _full: bool) -> Result<Sealing> {
        let sorted: BTreeMap<&P, &u64> = self.max_ts.iter().collect();
        encode_keyed(name, key_groups, sorted).map(|b| Sealing::Now(Some(Part::whole(b))))
    }
}
