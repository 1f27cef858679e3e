//! The skeleton every replayable source shares, public so that a job can bring its own:
//! epoch barriers from the job's clock, positions checkpointed per key group, replay from
//! the restored positions, the at-most-once read-position ledger, and a final report when
//! the input ends or the job is asked to stop. A source only implements [`Reader`].
//!
//! ## Design
//!
//! A `Reader` reads items from splits and advances a position per split; this skeleton
//! does everything else. Invariants:
//! - at every epoch boundary the positions as of the end of the closing epoch are
//!   snapshotted before any item of the next epoch is emitted;
//! - a restore resumes every split exactly at its restored position (with at-most-once,
//!   at the newest position of the ledger, written before the items are emitted), at any
//!   number of workers: splits follow their key group;
//! - a read error fails the run (see `JobContext::fail`); nothing is skipped.

use std::hash::Hash;

use serde::de::DeserializeOwned;
use serde::Serialize;
use timely::container::CapacityContainerBuilder;
use timely::dataflow::operators::generic::builder_rc::OperatorBuilder;
use timely::dataflow::operators::generic::OutputBuilder;
use timely::dataflow::operators::Capability;
use timely::dataflow::Stream;
use weir_runtime::checkpoint::Report;
use weir_runtime::metrics::Gauge;
use weir_runtime::{encode_keyed, Delivery, Job, JobContext, Result, RuntimeError, Snapshotter};

/// What a source reads from, one split (file, partition, generator slice) at a time.
///
/// Contract: a split's position is a number that only grows (an offset, a sequence, a
/// count of items read), and reading from a position yields the same items after a
/// restart: that is what makes the source replayable. A worker reads only the splits it
/// owns (`JobContext::owns(&split)`, decided by the split's key group), so every split
/// is read by exactly one worker, also after a restore at another number of workers.
/// `positions` holds the restored position of every owned split that has one (absent
/// means "from the beginning"); `read` must advance a split's position past exactly the
/// items it put into `out`. It is an error to read a split this worker does not own, or
/// to emit an item without advancing its split's position: a restore would then repeat
/// or skip it.
pub trait Reader: 'static {
    /// A split's identity; splits are spread over workers by key group.
    type Split: Serialize + DeserializeOwned + Hash + Eq + Clone + Ord + 'static;
    /// What the source emits.
    type Item: timely::ExchangeData;
    /// Reads up to `max` records (see [`Reader::records`]) into `out`, advancing
    /// `positions`; returns `false` once every split is exhausted. An error fails the run
    /// (nothing is skipped).
    fn read(
        &mut self,
        positions: &mut std::collections::BTreeMap<Self::Split, u64>,
        max: usize,
        out: &mut Vec<Self::Item>,
    ) -> Result<bool>;

    /// How many records `item` holds: what the rate limit, `max` of [`Reader::read`] and
    /// the `weir_source_records_total` metric count. 1 (the default) for a reader whose
    /// items are records; the number of records in it for a reader that hands out batches
    /// (such as `files::line_batches`), so that one allocation carries many records.
    fn records(item: &Self::Item) -> usize {
        let _ = item;
        1
    }

    /// How much of this worker's input has been read and how much there is, for a source
    /// that knows (files in bytes, Kafka in offsets): the metrics' source lag and `weir
    /// launch`'s progress. `None` (the default) when the source cannot tell.
    fn backlog(&self, positions: &std::collections::BTreeMap<Self::Split, u64>) -> Option<Backlog> {
        let _ = positions;
        None
    }
}

/// How much of a source's input was read so far and how much there is (see
/// [`Reader::backlog`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backlog {
    /// Read so far.
    pub done: u64,
    /// In all, as far as the source knows now (an unbounded source's end moves on).
    pub total: u64,
    /// What `done` and `total` count.
    pub unit: BacklogUnit,
}

/// What a [`Backlog`] counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BacklogUnit {
    /// Bytes of input (files): the `weir_source_bytes_*` metrics.
    Bytes,
    /// Offsets, one per record (Kafka): the `weir_source_offsets_*` metrics.
    Offsets,
}

/// Options every source takes.
#[derive(Debug, Clone, Copy, Default)]
pub struct SourceOptions {
    /// Records per second per worker (see [`Reader::records`]); `None` reads as fast as
    /// possible.
    pub rate_limit: Option<u64>,
}

/// The positions a source restarts from: the restored checkpoint's, or with at-most-once
/// delivery the ledger's (everything ever read, processed or not).
fn restore_positions<S: Serialize + DeserializeOwned + Hash + Eq + Ord + Clone>(
    ctx: &JobContext,
    name: &str,
) -> Result<std::collections::BTreeMap<S, u64>> {
    let mut positions: std::collections::BTreeMap<S, u64> =
        ctx.restore_keyed::<S, u64>(name)?.into_iter().collect();
    if ctx.delivery() == Delivery::AtMostOnce {
        if let Some(store) = ctx.store() {
            let root = store.layout().ledger_root(name);
            for (path, bytes) in ctx.block_on(store.read_prefix(&root))? {
                let entries: Vec<(S, u64)> =
                    weir_runtime::checkpoint::codec::decode(&path, &bytes)?;
                for (split, pos) in entries {
                    if ctx.owns(&split) {
                        let p = positions.entry(split).or_insert(0);
                        *p = (*p).max(pos);
                    }
                }
            }
        }
    }
    Ok(positions)
}

/// A replayable source around the [`Reader`] that `make` builds on every worker, with
/// the worker's context (to pick the splits it owns): what a source written outside
/// weir's crates passes to [`weir_runtime::Job::source`].
///
/// The positions of the splits a worker owns are restored from the checkpoint (or, with
/// at-most-once delivery, from the ledger of everything ever read), handed to the
/// reader, and checkpointed at every epoch boundary.
///
/// # Examples
///
/// A source that counts to `n` in each of three splits:
///
/// ```
/// use std::collections::BTreeMap;
/// use weir_connectors::source::{from_reader, Reader};
/// use weir_runtime::{testing, JobConfig};
///
/// struct Count { n: u64, splits: Vec<u32> }
///
/// impl Reader for Count {
///     type Split = u32;
///     type Item = (u32, u64);
///     fn read(&mut self, positions: &mut BTreeMap<u32, u64>, max: usize, out: &mut Vec<(u32, u64)>) -> weir_runtime::Result<bool> {
///         let mut more = false;
///         for split in &self.splits {
///             let pos = positions.entry(*split).or_insert(0);
///             while *pos < self.n && out.len() < max {
///                 out.push((*split, *pos));
///                 *pos += 1;
///             }
///             more |= *pos < self.n;
///         }
///         Ok(more)
///     }
/// }
///
/// let mut items = testing::run_collect(JobConfig::thread("doc-source"), 2, |job| {
///     job.source("count", from_reader(|ctx| {
///         Ok(Count { n: 4, splits: (0..3u32).filter(|s| ctx.owns(s)).collect() })
///     }))
/// })
/// .unwrap();
/// items.sort();
/// assert_eq!(items.len(), 12);
/// assert_eq!(items[0], (0, 0));
/// assert_eq!(items[11], (2, 3));
/// ```
pub fn from_reader<R, F>(make: F) -> FromReader<F>
where
    R: Reader,
    F: FnOnce(&JobContext) -> Result<R>,
{
    FromReader {
        make,
        opts: SourceOptions::default(),
    }
}

/// The source [`from_reader`] returns.
pub struct FromReader<F> {
    make: F,
    opts: SourceOptions,
}

impl<F> FromReader<F> {
    /// Reads with `opts` (a rate limit).
    pub fn options(self, opts: SourceOptions) -> Self {
        FromReader { opts, ..self }
    }
}

impl<R, F> weir_runtime::Source for FromReader<F>
where
    R: Reader,
    F: FnOnce(&JobContext) -> Result<R>,
{
    type Item = R::Item;
    fn build<'s>(self, job: &Job<'s>, name: &str) -> Result<Stream<'s, u64, Vec<R::Item>>> {
        let reader = (self.make)(job.ctx())?;
        source(job, name, reader, self.opts)
    }
}

/// Builds a replayable source named `name` around `reader` on this worker (the
/// timely-level form of [`from_reader`]); `name` must be unique in the job.
pub(crate) fn source<'s, R: Reader>(
    job: &Job<'s>,
    name: &str,
    mut reader: R,
    opts: SourceOptions,
) -> Result<Stream<'s, u64, Vec<R::Item>>> {
    job.claim_name(name)?;
    let ctx = job.ctx().clone();
    let mut positions = restore_positions::<R::Split>(&ctx, name)?;
    let checkpointing = ctx.checkpointing();
    let at_most_once = ctx.delivery() == Delivery::AtMostOnce;
    let mut builder = OperatorBuilder::new(format!("source:{name}"), job.scope());
    let address = builder.operator_info().address;
    let (data_out, data) = builder.new_output::<Vec<R::Item>>();
    let (report_out, reports) = builder.new_output::<Vec<Report>>();
    let mut data_out = OutputBuilder::<_, CapacityContainerBuilder<Vec<R::Item>>>::from(data_out);
    let mut report_out =
        OutputBuilder::<_, CapacityContainerBuilder<Vec<Report>>>::from(report_out);
    let worker = job.scope().worker();
    let activator = worker.activator_for(address.clone());
    let mut snapshotter = Snapshotter::new(&ctx, name, &address, worker);
    let name = name.to_string();
    let ledger_path = ctx.store().map(|s| {
        s.layout().ledger_entry(
            &name,
            weir_runtime::WorkerIndex(ctx.worker()),
            ctx.generation(),
        )
    });
    let range = ctx.key_group_range();
    let first_epoch = ctx.first_epoch();
    let key_groups = ctx.key_groups();
    let source = format!("source `{name}`");
    let read_records = ctx.metrics().source_counter(ctx.worker(), &name);
    let mut lag = Lag::new(&ctx, &name);
    lag.show(reader.backlog(&positions));
    let backpressure = ctx.metrics().source_backpressure(ctx.worker(), &name);
    builder.build(move |mut caps| {
        let mut report_cap: Option<Capability<u64>> = caps.pop();
        let mut data_cap: Option<Capability<u64>> = caps.pop();
        for c in report_cap.iter_mut().chain(data_cap.iter_mut()) {
            c.downgrade(&first_epoch);
        }
        let started = std::time::Instant::now();
        let mut emitted: u64 = 0;
        let mut changed = true;
        let mut batch: Vec<R::Item> = Vec::new();
        let snapshot = move |snapshotter: &mut Snapshotter,
                             positions: &std::collections::BTreeMap<R::Split, u64>,
                             cap: Capability<u64>,
                             changed: &mut bool,
                             is_final: bool|
              -> Result<()> {
            if !checkpointing {
                return Ok(());
            }
            let bytes = if std::mem::take(changed) {
                Some(snapshotter.sync(*cap.time(), || {
                    encode_keyed(&name, key_groups, positions.iter())
                })?)
            } else {
                None
            };
            snapshotter.snapshot(cap, range, bytes, Vec::new(), is_final);
            Ok(())
        };
        // Since when the source had a full batch ready and waited for the worker.
        let mut ready_since: Option<std::time::Instant> = None;
        move |_frontiers| {
            if let Some(since) = ready_since.take() {
                backpressure.inc_by(since.elapsed().as_secs_f64());
            }
            if ctx.failed() {
                return;
            }
            if let (Some(dc), Some(rc)) = (data_cap.as_mut(), report_cap.as_mut()) {
                let mut full = false;
                // Barrier injection: close every epoch the clock has passed.
                let now = ctx.clock().current();
                if now > *dc.time() {
                    let due = rc.delayed(&(now - 1));
                    if let Err(e) = snapshot(&mut snapshotter, &positions, due, &mut changed, false)
                    {
                        return ctx.fail(&format!("{source}: snapshot"), e);
                    }
                    dc.downgrade(&now);
                    rc.downgrade(&now);
                }
                let mut budget = 4096usize;
                if let Some(rate) = opts.rate_limit {
                    let allowed = (started.elapsed().as_secs_f64() * rate as f64) as u64;
                    budget = budget.min(allowed.saturating_sub(emitted) as usize);
                }
                // A stop request ends the input here; positions stay where they are, so
                // a restore from the final savepoint reads on from this point.
                let stopping = ctx.stop_requested();
                let mut more = !stopping;
                if budget > 0 && !stopping {
                    let before = positions.clone();
                    more = match reader.read(&mut positions, budget, &mut batch) {
                        Ok(more) => more,
                        Err(e) => return ctx.fail(&source, e),
                    };
                    if positions != before {
                        changed = true;
                    }
                    if at_most_once && positions != before {
                        // Make the read position durable before anything is processed.
                        let store = ctx.store().expect("checkpointing");
                        let path = ledger_path.as_ref().expect("checkpointing");
                        let entries: Vec<(&R::Split, &u64)> = positions.iter().collect();
                        let written = weir_runtime::checkpoint::codec::encode("ledger", &entries)
                            .map_err(RuntimeError::from)
                            .and_then(|bytes| {
                                ctx.block_on(store.put_object(path, bytes))
                                    .map_err(RuntimeError::from)
                            });
                        if let Err(e) = written {
                            return ctx.fail(&format!("{source}: at-most-once ledger"), e);
                        }
                    }
                    let records: usize = batch.iter().map(R::records).sum();
                    emitted += records as u64;
                    read_records.add(records);
                    lag.show(reader.backlog(&positions));
                    // A full batch: more input is ready as soon as this worker gets
                    // back to the source.
                    full = records >= budget;
                    if !batch.is_empty() {
                        data_out
                            .activate()
                            .session(dc)
                            .give_iterator(batch.drain(..));
                    }
                }
                if !more {
                    let epoch = *dc.time();
                    let due = rc.delayed(&epoch);
                    if let Err(e) = snapshot(&mut snapshotter, &positions, due, &mut changed, true)
                    {
                        return ctx.fail(&format!("{source}: snapshot"), e);
                    }
                    data_cap = None;
                    report_cap = None;
                } else if budget == 0 {
                    let wait = std::time::Duration::from_secs_f64(
                        1.0 / opts.rate_limit.unwrap_or(1).max(1) as f64,
                    );
                    let wait = ctx.clock().until_next().map_or(wait, |n| n.min(wait));
                    activator.activate_after(wait);
                } else {
                    activator.activate();
                    if full {
                        ready_since = Some(std::time::Instant::now());
                    }
                }
            }
            let mut reports = report_out.activate();
            snapshotter.poll(|cap, report| reports.session(cap).give(report));
        }
    });
    if checkpointing {
        job.register_reports(reports);
    }
    Ok(data)
}

/// The gauges of a source's lag on one worker, in the unit its reader counts, created at
/// its first report (a source that cannot tell has none).
struct Lag {
    metrics: std::sync::Arc<weir_runtime::metrics::Metrics>,
    worker: usize,
    name: String,
    gauges: Option<(Gauge, Gauge)>,
}

impl Lag {
    fn new(ctx: &JobContext, name: &str) -> Self {
        Lag {
            metrics: std::sync::Arc::clone(ctx.metrics()),
            worker: ctx.worker(),
            name: name.to_string(),
            gauges: None,
        }
    }

    fn show(&mut self, backlog: Option<Backlog>) {
        let Some(b) = backlog else { return };
        let (read, left) = self.gauges.get_or_insert_with(|| match b.unit {
            BacklogUnit::Bytes => self.metrics.source_bytes(self.worker, &self.name),
            BacklogUnit::Offsets => self.metrics.source_offsets(self.worker, &self.name),
        });
        read.set(b.done as i64);
        left.set(b.total.saturating_sub(b.done) as i64);
    }
}
