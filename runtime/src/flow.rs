//! The job-level stream API: a [`Flow`] is a stream that carries its job, so that a job
//! reads as one chain from source to sink:
//!
//! ```text
//! job.source("input", files::lines("in"))?
//!     .flat_map(|line| ...)
//!     .reduce_by_key("count", |count, n| *count += n)?
//!     .sink("counts", files::jsonl("out"))
//! ```
//!
//! Sources and sinks are values that say what to read or write ([`Source`], [`Sink`]);
//! the job names them, restores their positions and drives their two-phase commit.
//! Stateful operators (in `weir-operators`) are extension traits on [`Flow`]. A flow can
//! always be taken apart into its timely stream ([`Flow::into_stream`]) and put back
//! together ([`Job::flow`]), for timely operators weir does not wrap.
//!
//! ## Design
//!
//! A flow is a timely stream of epochs plus a clone of the [`Job`] handle, which every
//! clone shares; it adds no operator of its own. Invariant: every source, sink and
//! stateful operator reached through a flow claims its name in the job, exactly as the
//! lower-level functions do, so a job built either way checkpoints the same state.

use std::sync::Arc;

use timely::dataflow::operators::core::{Concat, Exchange, Inspect, OkErr};
use timely::dataflow::operators::vec::{Filter, Map};
use timely::dataflow::Stream;

use crate::error::Result;
use crate::job::Job;
use crate::twophase::{Committer, TwoPhaseSink};

/// Something a job reads: files, a topic, a generator. [`Job::source`] builds it.
pub trait Source {
    /// The records it produces.
    type Item: timely::ExchangeData;
    /// Adds the source named `name` to `job` and returns its records, cut into epochs.
    fn build<'s>(self, job: &Job<'s>, name: &str) -> Result<Stream<'s, u64, Vec<Self::Item>>>;
}

/// Somewhere a job writes `D`s: files, a table, a topic. [`Flow::sink`] builds it.
pub trait Sink<D> {
    /// Adds the sink named `name` to `job`, writing `records`.
    fn build<'s>(self, job: &Job<'s>, name: &str, records: Stream<'s, u64, Vec<D>>) -> Result<()>;
}

/// A stream of `D`s in a job, timestamped with epochs, that carries its job.
pub struct Flow<'s, D> {
    job: Job<'s>,
    stream: Stream<'s, u64, Vec<D>>,
}

impl<'s, D: Clone + 'static> Clone for Flow<'s, D> {
    fn clone(&self) -> Self {
        Flow {
            job: self.job.clone(),
            stream: self.stream.clone(),
        }
    }
}

impl<'s> Job<'s> {
    /// Reads `source` as the source named `name` (unique in the job; its positions are
    /// checkpointed under it).
    pub fn source<S: Source>(&self, name: &str, source: S) -> Result<Flow<'s, S::Item>> {
        let stream = source.build(self, name)?;
        Ok(self.flow(stream))
    }

    /// Wraps a timely stream of this job as a flow.
    pub fn flow<D>(&self, stream: Stream<'s, u64, Vec<D>>) -> Flow<'s, D> {
        Flow {
            job: self.clone(),
            stream,
        }
    }
}

impl<'s, D: timely::ExchangeData> Flow<'s, D> {
    /// The job the flow belongs to.
    pub fn job(&self) -> &Job<'s> {
        &self.job
    }

    /// The underlying timely stream.
    pub fn stream(&self) -> &Stream<'s, u64, Vec<D>> {
        &self.stream
    }

    /// The underlying timely stream, for timely operators weir does not wrap;
    /// [`Job::flow`] wraps the result again.
    pub fn into_stream(self) -> Stream<'s, u64, Vec<D>> {
        self.stream
    }

    /// Applies `f` to the underlying timely stream.
    pub fn apply<D2>(
        self,
        f: impl FnOnce(Stream<'s, u64, Vec<D>>) -> Stream<'s, u64, Vec<D2>>,
    ) -> Flow<'s, D2> {
        Flow {
            stream: f(self.stream),
            job: self.job,
        }
    }

    /// Transforms every record.
    pub fn map<D2: timely::ExchangeData>(self, f: impl FnMut(D) -> D2 + 'static) -> Flow<'s, D2> {
        self.apply(|s| s.map(f))
    }

    /// Transforms every record into any number of records.
    pub fn flat_map<I>(self, f: impl FnMut(D) -> I + 'static) -> Flow<'s, I::Item>
    where
        I: IntoIterator,
        I::Item: timely::ExchangeData,
    {
        self.apply(|s| s.flat_map(f))
    }

    /// Keeps the records for which `f` is true.
    pub fn filter(self, f: impl FnMut(&D) -> bool + 'static) -> Flow<'s, D> {
        self.apply(|s| s.filter(f))
    }

    /// Calls `f` on every record and passes it on.
    pub fn inspect(self, f: impl FnMut(&D) + 'static) -> Flow<'s, D> {
        self.apply(|s| s.inspect(f))
    }

    /// Pairs every record with its key, `f(&record)`.
    pub fn key_by<K: timely::ExchangeData>(
        self,
        mut f: impl FnMut(&D) -> K + 'static,
    ) -> Flow<'s, (K, D)> {
        self.map(move |d| (f(&d), d))
    }

    /// Sends every record to the worker `route(&record) % workers`.
    pub fn exchange(self, route: impl FnMut(&D) -> u64 + 'static) -> Flow<'s, D> {
        self.apply(|s| s.exchange(route))
    }

    /// The records of both flows.
    pub fn concat(self, other: Flow<'s, D>) -> Flow<'s, D> {
        let other = other.stream;
        self.apply(|s| s.concat(other))
    }

    /// Splits the records in two by `f`: the `Ok`s and the `Err`s.
    #[allow(clippy::type_complexity)]
    pub fn split<A, B>(
        self,
        f: impl FnMut(D) -> std::result::Result<A, B> + 'static,
    ) -> (Flow<'s, A>, Flow<'s, B>)
    where
        A: timely::ExchangeData,
        B: timely::ExchangeData,
    {
        let (ok, err) = self.stream.ok_err::<Vec<A>, A, Vec<B>, B, _>(f);
        (self.job.flow(ok), self.job.flow(err))
    }

    /// Writes the records to `sink` as the sink named `name` (unique in the job).
    pub fn sink<S: Sink<D>>(self, name: &str, sink: S) -> Result<()> {
        sink.build(&self.job, name, self.stream)
    }
}

/// A [`Sink`] made of a user's [`TwoPhaseSink`], built on every worker by `make`, and
/// its [`Committer`]: what a sink written outside weir's crates passes to [`Flow::sink`].
///
/// `make` is called once per worker with the worker's context, so that the sink can
/// name its outputs ([`crate::JobContext::output`]). The runtime applies the job's
/// delivery guarantee and recovers the sink's leftovers through `committer`.
pub fn two_phase<S, C, F>(make: F, committer: Arc<C>) -> TwoPhase<F, C>
where
    S: TwoPhaseSink,
    C: Committer<Handle = S::Handle>,
    F: FnOnce(&crate::context::JobContext) -> Result<S>,
{
    TwoPhase { make, committer }
}

/// The sink [`two_phase`] returns.
pub struct TwoPhase<F, C> {
    make: F,
    committer: Arc<C>,
}

impl<D, S, C, F> Sink<D> for TwoPhase<F, C>
where
    D: timely::ExchangeData,
    S: TwoPhaseSink<Record = D>,
    C: Committer<Handle = S::Handle>,
    F: FnOnce(&crate::context::JobContext) -> Result<S>,
{
    fn build<'s>(self, job: &Job<'s>, name: &str, records: Stream<'s, u64, Vec<D>>) -> Result<()> {
        let sink = (self.make)(job.ctx())?;
        crate::sink::sink(job, records, name, sink, self.committer)
    }
}
