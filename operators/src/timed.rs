//! The store under every event-time operator: records keyed by a key, watermark reports
//! from every sender, and the watermark up to which the operator has fired, which is
//! checkpointed with the state.
//!
//! ## Design
//!
//! The job's watermark is the least watermark over the senders that are not idle; it is
//! recomputed when epochs close, and only then do windows fire and state expire
//! ([`Logic::advance`]), so firing happens at epoch boundaries and its output belongs to
//! the epoch that closed. The watermark the operator last advanced to (`fired`) is stored
//! in every key group's part; after a restore it is the largest stored value, so nothing
//! that fired before the checkpoint fires again, whatever the new number of workers.

use std::collections::{BTreeMap, HashMap};
use std::hash::Hash;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use weir_runtime::{encode_groups, JobContext, Result};

use crate::keyed::Store;

/// A watermark report: sender `from` has reached event time `wm`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mark {
    /// The reporting instance (a worker of an event-time assigner).
    pub from: usize,
    /// Its watermark.
    pub wm: u64,
    /// It has only idle splits and is left out of the job's watermark.
    pub idle: bool,
}

/// Where a message of an event-time operator goes: to the owner of a key, or to a worker.
#[derive(Debug, Clone, Hash, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum Route<K> {
    Key(K),
    To(usize),
}

/// A message of an event-time operator: a record or a watermark report.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) enum Input<V> {
    Record { ts: u64, split_wm: u64, value: V },
    Mark(Mark),
}

/// What an event-time operator does with its records and the watermark.
pub(crate) trait Logic: 'static {
    type Key: timely::ExchangeData + Hash;
    type Value: timely::ExchangeData;
    type Out: timely::ExchangeData;
    /// One entry of the checkpointed state.
    type Entry: Serialize + DeserializeOwned;

    /// Applies a record with event time `ts`, read when its split was at `split_wm`;
    /// the operator has fired up to `fired`.
    #[allow(clippy::too_many_arguments)]
    fn apply(
        &mut self,
        epoch: u64,
        key: Self::Key,
        ts: u64,
        split_wm: u64,
        fired: u64,
        value: Self::Value,
        out: &mut Vec<Self::Out>,
    );
    /// The watermark has reached `wm`: fire and expire.
    fn advance(&mut self, wm: u64, out: &mut Vec<Self::Out>);
    /// The state, as entries grouped by key group.
    fn entries(&self, key_groups: u32) -> BTreeMap<u32, Vec<Self::Entry>>;
    /// Takes back restored entries.
    fn restore(&mut self, entries: Vec<Self::Entry>);
}

/// A [`Store`] around a [`Logic`].
pub(crate) struct TimedStore<L> {
    logic: L,
    senders: usize,
    marks: HashMap<usize, Mark>,
    fired: u64,
    range: (u32, u32),
    processing_time: bool,
}

impl<L: Logic> TimedStore<L> {
    /// A store for operator `name` with `senders` watermark senders, restored from the
    /// checkpoint this run started from.
    pub(crate) fn restore(
        ctx: &JobContext,
        name: &str,
        senders: usize,
        mut logic: L,
    ) -> Result<Self> {
        let groups = ctx.restore_groups::<(u64, Vec<L::Entry>)>(name)?;
        let fired = groups.iter().map(|(_, (f, _))| *f).max().unwrap_or(0);
        logic.restore(groups.into_iter().flat_map(|(_, (_, e))| e).collect());
        Ok(TimedStore {
            logic,
            senders,
            marks: HashMap::new(),
            fired,
            range: ctx.key_group_range(),
            processing_time: false,
        })
    }

    /// Advances on the wall clock (milliseconds since the Unix epoch) instead of
    /// watermark reports.
    pub(crate) fn on_processing_time(self) -> Self {
        TimedStore {
            processing_time: true,
            ..self
        }
    }
}

impl<L: Logic> Store for TimedStore<L> {
    type Key = Route<L::Key>;
    type Value = Input<L::Value>;
    type Out = L::Out;

    fn route(key: &Self::Key, key_groups: u32, peers: usize) -> usize {
        match key {
            Route::Key(k) => weir_runtime::keygroup::owner(
                weir_runtime::keygroup::key_group(k, key_groups),
                key_groups,
                peers,
            ),
            Route::To(w) => *w,
        }
    }

    fn apply(&mut self, epoch: u64, key: Self::Key, value: Self::Value, out: &mut Vec<L::Out>) {
        match (key, value) {
            (
                Route::Key(k),
                Input::Record {
                    ts,
                    split_wm,
                    value,
                },
            ) => self
                .logic
                .apply(epoch, k, ts, split_wm, self.fired, value, out),
            (_, Input::Mark(m)) => {
                let e = self.marks.entry(m.from).or_insert(m);
                // A sender's watermark never goes back (reports may cross on the way).
                e.wm = e.wm.max(m.wm);
                e.idle = m.idle;
            }
            (Route::To(_), Input::Record { .. }) => {
                unreachable!("records are routed by key")
            }
        }
    }

    fn close(&mut self, _epoch: u64, _is_final: bool, out: &mut Vec<L::Out>) -> bool {
        // At the end of the input the senders' final reports carry the largest
        // watermark; a job that stops for a savepoint sends none, and nothing fires.
        let wm = if self.processing_time {
            crate::keyed::now_ms()
        } else if self.marks.len() < self.senders {
            0
        } else {
            self.marks
                .values()
                .filter(|m| !m.idle)
                .map(|m| m.wm)
                .min()
                .unwrap_or(0)
        };
        if wm <= self.fired {
            return false;
        }
        self.fired = wm;
        self.logic.advance(wm, out);
        true
    }

    fn encode(&self, name: &str, key_groups: u32) -> Result<Vec<u8>> {
        let mut entries = self.logic.entries(key_groups);
        // Every owned group records `fired`, even one without entries.
        let groups = (self.range.0..self.range.1)
            .map(|g| (g, (self.fired, entries.remove(&g).unwrap_or_default())));
        encode_groups(name, groups)
    }
}

/// The key group of `key`.
pub(crate) fn group_of<K: Hash>(key: &K, key_groups: u32) -> u32 {
    weir_runtime::keygroup::key_group(key, key_groups)
}

/// Splits a stream in two by `f`.
#[allow(clippy::type_complexity)]
pub(crate) fn split<'s, X, A, B, F>(
    stream: timely::dataflow::Stream<'s, u64, Vec<X>>,
    f: F,
) -> (
    timely::dataflow::Stream<'s, u64, Vec<A>>,
    timely::dataflow::Stream<'s, u64, Vec<B>>,
)
where
    X: 'static,
    A: 'static,
    B: 'static,
    F: FnMut(X) -> std::result::Result<A, B> + 'static,
{
    use timely::dataflow::operators::core::OkErr;
    stream.ok_err::<Vec<A>, A, Vec<B>, B, _>(f)
}
