//! Keyed joins of two streams: an interval join in event time and a regular join whose
//! state expires.
//!
//! ## Interval join
//!
//! `left.interval_join(right, ...)` emits `(key, l, r)` for every pair with equal keys
//! and `r.ts - l.ts` in `[lower, upper]`, once, when the second of the two arrives. A
//! left record is kept until the watermark passes `l.ts + upper`, a right one until it
//! passes `r.ts - lower`; both sides are checkpointed. A record whose event time is
//! behind its own split's watermark (it broke the source's out-of-orderness bound) may
//! have lost its partners and goes to the late output. Otherwise the output does not
//! depend on timing, kills or restores.
//!
//! ## Regular join
//!
//! `left.join_ttl(right, ...)` keeps every record of both sides per key and emits each
//! matching pair once, when the second arrives. A key's records are dropped once the
//! [`Ttl`] has passed since the key was last updated, which bounds the state.
//!
//! ## Design
//!
//! Both sides' buffered records are keyed state in one `keyed` store per join,
//! checkpointed together. Invariants: each matching pair is emitted exactly once in the
//! committed output (when the second record of the pair is applied, in epoch order); a
//! record is dropped from the state only when no later partner can match it (the
//! watermark passed its interval, or its key's TTL expired).

use std::hash::Hash;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use timely::dataflow::operators::vec::Map;
use timely::dataflow::operators::Concat;
use timely::dataflow::Stream;
use weir_runtime::state::Update;
use weir_runtime::{Flow, Job, KeyedState, Result};

use crate::event_time::{EventStream, Timed};
use crate::keyed::{per_key, Emitted, Ttl};
use crate::timed::{Logic, TimedStore};
use crate::window::Late;

/// A record of either side of a join.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Side<A, B> {
    /// From the left input.
    Left(A),
    /// From the right input.
    Right(B),
}

/// Joined pairs and late records.
pub type JoinOutputs<'s, K, A, B> = (
    Flow<'s, (K, Timed<A>, Timed<B>)>,
    Flow<'s, Late<Side<A, B>>>,
);

/// Joins two event streams on a key within an interval of event time:
/// `left.interval_join(name, right)` returns an [`IntervalJoinBuilder`]; give it the keys
/// ([`on`](IntervalJoinBuilder::on)) and the interval
/// ([`within`](IntervalJoinBuilder::within)), then [`build`](IntervalJoinBuilder::build)
/// it.
///
/// # Examples
///
/// ```
/// use weir_runtime::{testing, JobConfig};
/// use weir_operators::{AssignEventTime, IntervalJoin};
///
/// let out = testing::run_collect(JobConfig::thread("doc-interval-join"), 2, |job| {
///     // Orders and payments as (order id, event time).
///     let orders = job.source("orders", testing::items(vec![(1, 100), (2, 200)]))?;
///     let payments = job.source("payments", testing::items(vec![(1, 150), (2, 900)]))?;
///     let (orders, _) = orders.assign_event_time("orders-clock", |o| Ok(o.1)).build()?;
///     let (payments, _) = payments.assign_event_time("payments-clock", |p| Ok(p.1)).build()?;
///     // A payment counts if it comes within 500 after its order.
///     let (paid, _late) = orders
///         .interval_join("paid", payments)
///         .on(|o| o.0, |p| p.0)
///         .within(0, 500)
///         .build()?;
///     Ok(paid.map(|(k, o, p)| (k, o.ts, p.ts)))
/// })
/// .unwrap();
/// assert_eq!(out, vec![(1, 100, 150)]);
/// ```
pub trait IntervalJoin<'s, A> {
    /// Starts an interval join named `name` (unique in the job) of this stream with
    /// `right`.
    fn interval_join<B>(
        self,
        name: &str,
        right: EventStream<'s, B>,
    ) -> IntervalJoinBuilder<'s, A, B, (), ()>;
}

impl<'s, A: timely::ExchangeData + Clone> IntervalJoin<'s, A> for EventStream<'s, A> {
    fn interval_join<B>(
        self,
        name: &str,
        right: EventStream<'s, B>,
    ) -> IntervalJoinBuilder<'s, A, B, (), ()> {
        IntervalJoinBuilder {
            left: self,
            right,
            name: name.to_string(),
            keys: ((), ()),
            bounds: None,
        }
    }
}

/// An interval join under construction (see [`IntervalJoin`]).
#[must_use = "a join does nothing until it is built"]
pub struct IntervalJoinBuilder<'s, A, B, FA, FB> {
    left: EventStream<'s, A>,
    right: EventStream<'s, B>,
    name: String,
    keys: (FA, FB),
    bounds: Option<(i64, i64)>,
}

impl<'s, A, B> IntervalJoinBuilder<'s, A, B, (), ()> {
    /// Joins a left record and a right record when `left_key` of the one equals
    /// `right_key` of the other.
    pub fn on<K, FA, FB>(self, left_key: FA, right_key: FB) -> IntervalJoinBuilder<'s, A, B, FA, FB>
    where
        FA: Fn(&A) -> K + 'static,
        FB: Fn(&B) -> K + 'static,
    {
        IntervalJoinBuilder {
            left: self.left,
            right: self.right,
            name: self.name,
            keys: (left_key, right_key),
            bounds: self.bounds,
        }
    }
}

impl<'s, A, B, FA, FB> IntervalJoinBuilder<'s, A, B, FA, FB> {
    /// Joins the pairs whose `r.ts - l.ts` is in `[lower, upper]`.
    pub fn within(self, lower: i64, upper: i64) -> Self {
        IntervalJoinBuilder {
            bounds: Some((lower, upper)),
            ..self
        }
    }

    /// Adds the operator: returns the joined pairs `(key, left, right)` and the late
    /// records.
    pub fn build<K>(self) -> Result<JoinOutputs<'s, K, A, B>>
    where
        A: timely::ExchangeData + Clone,
        B: timely::ExchangeData + Clone,
        K: timely::ExchangeData + Clone + Hash + Eq,
        FA: Fn(&A) -> K + 'static,
        FB: Fn(&B) -> K + 'static,
    {
        let IntervalJoinBuilder {
            left,
            right,
            name,
            keys: (left_key, right_key),
            bounds,
        } = self;
        let Some((lower, upper)) = bounds else {
            return Err(weir_runtime::RuntimeError::config(
                "interval join bounds",
                format!("`{name}`: no interval; give `.within(lower, upper)`"),
            ));
        };
        let job = left.job.clone();
        let (pairs, late) =
            interval_join(left, &job, &name, right, left_key, right_key, lower, upper)?;
        Ok((job.flow(pairs), job.flow(late)))
    }
}

#[allow(clippy::too_many_arguments, clippy::type_complexity)]
fn interval_join<'s, A, B, K, FA, FB>(
    left: EventStream<'s, A>,
    job: &Job<'s>,
    name: &str,
    right: EventStream<'s, B>,
    left_key: FA,
    right_key: FB,
    lower: i64,
    upper: i64,
) -> Result<(
    Stream<'s, u64, Vec<(K, Timed<A>, Timed<B>)>>,
    Stream<'s, u64, Vec<Late<Side<A, B>>>>,
)>
where
    A: timely::ExchangeData + Clone,
    B: timely::ExchangeData + Clone,
    K: timely::ExchangeData + Clone + Hash + Eq,
    FA: Fn(&A) -> K + 'static,
    FB: Fn(&B) -> K + 'static,
{
    if lower > upper {
        return Err(weir_runtime::RuntimeError::config(
            "interval join bounds",
            format!("`{name}`: lower bound {lower} is above upper bound {upper}"),
        ));
    }
    let senders = left.senders + right.senders;
    let offset = left.senders;
    let marks = left
        .marks_to_every_worker(0)
        .concat(right.marks_to_every_worker(offset));
    let records = left
        .map(Side::<A, B>::Left)
        .records
        .concat(right.map(Side::<A, B>::Right).records);
    let key = move |s: &Side<A, B>| match s {
        Side::Left(a) => left_key(a),
        Side::Right(b) => right_key(b),
    };
    let logic = IntervalLogic {
        lower,
        upper,
        state: KeyedState::restore(job.ctx(), name)?,
    };
    let store = TimedStore::restore(senders, logic, key)?;
    store.build(records, Some(marks), job, name)
}

/// Both sides' records of one key.
#[derive(Clone, Serialize, Deserialize)]
struct Buffers<A, B> {
    left: Vec<(u64, A)>,
    right: Vec<(u64, B)>,
}

impl<A, B> Default for Buffers<A, B> {
    fn default() -> Self {
        Buffers {
            left: Vec::new(),
            right: Vec::new(),
        }
    }
}

struct IntervalLogic<K, A, B> {
    lower: i64,
    upper: i64,
    state: KeyedState<K, Buffers<A, B>, crate::FastHash>,
}

fn stamp<D>(ts: u64, data: D) -> Timed<D> {
    Timed {
        ts,
        split_wm: 0,
        data,
    }
}

/// `ts + d`, saturating at the ends of `u64`.
fn shift(ts: u64, d: i64) -> u64 {
    if d >= 0 {
        ts.saturating_add(d as u64)
    } else {
        ts.saturating_sub(d.unsigned_abs())
    }
}

impl<K, A, B> Logic for IntervalLogic<K, A, B>
where
    K: timely::ExchangeData + Clone + Hash + Eq,
    A: timely::ExchangeData + Clone,
    B: timely::ExchangeData + Clone,
{
    type Key = K;
    type Value = Side<A, B>;
    type Out = (K, Timed<A>, Timed<B>);
    type Side = Late<Side<A, B>>;
    type StateKey = K;
    type StateValue = Buffers<A, B>;

    fn apply(
        &mut self,
        _epoch: u64,
        key: K,
        ts: u64,
        split_wm: u64,
        fired: u64,
        value: Side<A, B>,
        out: &mut Emitted<Self::Out, Self::Side>,
    ) {
        if ts < split_wm.max(fired) {
            out.side(Late {
                record: Timed {
                    ts,
                    split_wm,
                    data: value,
                },
                reason: format!(
                    "event time {ts} is behind the watermark {}; its join partners may be gone",
                    split_wm.max(fired)
                ),
            });
            return;
        }
        let group = self.state.group_of(&key);
        let buffers = self
            .state
            .group_mut(group, &key)
            .entry(key.clone())
            .or_default();
        let (lower, upper) = (self.lower, self.upper);
        match value {
            Side::Left(a) => {
                let (lo, hi) = (shift(ts, lower), shift(ts, upper));
                for (rts, b) in &buffers.right {
                    if *rts >= lo && *rts <= hi {
                        out.push((key.clone(), stamp(ts, a.clone()), stamp(*rts, b.clone())));
                    }
                }
                buffers.left.push((ts, a));
            }
            Side::Right(b) => {
                for (lts, a) in &buffers.left {
                    let (lo, hi) = (shift(*lts, lower), shift(*lts, upper));
                    if ts >= lo && ts <= hi {
                        out.push((key.clone(), stamp(*lts, a.clone()), stamp(ts, b.clone())));
                    }
                }
                buffers.right.push((ts, b));
            }
        }
        self.state.changed(group, key);
    }

    fn advance(&mut self, wm: u64, _out: &mut Emitted<Self::Out, Self::Side>) {
        let (lower, upper) = (self.lower, self.upper);
        self.state.update_all(|_, b| {
            let before = (b.left.len(), b.right.len());
            b.left.retain(|(ts, _)| shift(*ts, upper) >= wm);
            b.right.retain(|(ts, _)| shift(*ts, lower) >= wm);
            if b.left.is_empty() && b.right.is_empty() {
                Update::Removed
            } else if (b.left.len(), b.right.len()) != before {
                Update::Changed
            } else {
                Update::Kept
            }
        });
    }

    fn state(&mut self) -> &mut KeyedState<K, Buffers<A, B>, crate::FastHash> {
        &mut self.state
    }

    fn restored(&mut self) {}
}

/// Joins two keyed streams, keeping each key's records until its state expires.
///
/// # Examples
///
/// ```
/// use weir_runtime::{testing, JobConfig};
/// use weir_operators::{JoinTtl, Ttl};
///
/// let mut out = testing::run_collect(JobConfig::thread("doc-join"), 2, |job| {
///     let users = job.source("users", testing::items(vec![(1, "ada".to_string()), (2, "bob".into())]))?;
///     let orders = job.source("orders", testing::items(vec![(1, 30), (1, 12), (3, 5)]))?;
///     users.join_ttl("user-orders", orders, Ttl::Never)
/// })
/// .unwrap();
/// out.sort();
/// assert_eq!(out, vec![(1, "ada".to_string(), 12), (1, "ada".to_string(), 30)]);
/// ```
pub trait JoinTtl<'s, K, A> {
    /// Emits `(key, a, b)` for every pair of records with equal keys, each pair once.
    /// `name` must be unique.
    fn join_ttl<B>(
        self,
        name: &str,
        right: Flow<'s, (K, B)>,
        ttl: Ttl,
    ) -> Result<Flow<'s, (K, A, B)>>
    where
        B: timely::ExchangeData + Clone + Serialize + DeserializeOwned;
}

impl<'s, K, A> JoinTtl<'s, K, A> for Flow<'s, (K, A)>
where
    K: timely::ExchangeData + Hash + Eq + Clone,
    A: timely::ExchangeData + Clone + Serialize + DeserializeOwned,
{
    fn join_ttl<B>(
        self,
        name: &str,
        right: Flow<'s, (K, B)>,
        ttl: Ttl,
    ) -> Result<Flow<'s, (K, A, B)>>
    where
        B: timely::ExchangeData + Clone + Serialize + DeserializeOwned,
    {
        let job = self.job().clone();
        let left = self.into_stream().map(|(k, a)| (k, Side::<A, B>::Left(a)));
        let right = right
            .into_stream()
            .map(|(k, b)| (k, Side::<A, B>::Right(b)));
        per_key(
            left.concat(right),
            &job,
            name,
            ttl,
            |k: &K, s: &mut Buffers<A, B>, v: Side<A, B>, out: &mut Vec<(K, A, B)>| match v {
                Side::Left(a) => {
                    out.extend(
                        s.right
                            .iter()
                            .map(|(_, b)| (k.clone(), a.clone(), b.clone())),
                    );
                    s.left.push((0, a));
                }
                Side::Right(b) => {
                    out.extend(
                        s.left
                            .iter()
                            .map(|(_, a)| (k.clone(), a.clone(), b.clone())),
                    );
                    s.right.push((0, b));
                }
            },
            |_: &K, _: &Buffers<A, B>, _: u64, _: &mut Vec<(K, A, B)>| {},
        )
        .map(|out| job.flow(out))
    }
}
