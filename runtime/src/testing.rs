//! Running jobs in-process and reading what they committed: the helpers of doc examples
//! and in-process tests.
//!
//! [`collect`] writes a stream through an exactly-once sink whose "external system" is a
//! [`Committed`] value in memory. It follows the two-phase protocol like any other sink:
//! each worker's epoch output is staged, and becomes visible only when the coordinator
//! commits it after the checkpoint's manifest (or at once with at-least-once and
//! at-most-once delivery). A [`Committed`] outlives a run, so a second [`crate::run`] in
//! the same process recovers its leftovers like a restarted job recovers a real sink's.
//!
//! ## Design
//!
//! Invariants:
//! - a record is visible in [`Committed::records`] only once its epoch's output was
//!   committed, and at most once per (worker, epoch, generation) output;
//! - commit is idempotent and abort of an output that is gone succeeds;
//! - committing an output that was neither staged nor committed is an error (it would be
//!   a silent loss).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use timely::dataflow::Stream;

use crate::config::JobConfig;
use crate::error::{Result, RuntimeError};
use crate::flow::{Flow, Sink, Source};
use crate::job::Job;
use crate::twophase::{Committer, Output, OutputId, TwoPhaseSink};

struct State<D> {
    staged: BTreeMap<(String, OutputId), Vec<D>>,
    committed: BTreeMap<(String, OutputId), Vec<D>>,
    /// What runs before the last fresh start committed: still output, no longer markers.
    earlier: Vec<D>,
}

/// What [`collect`] sinks committed, shared by every worker and kept across runs.
pub struct Committed<D> {
    state: Arc<Mutex<State<D>>>,
}

impl<D> Clone for Committed<D> {
    fn clone(&self) -> Self {
        Committed {
            state: Arc::clone(&self.state),
        }
    }
}

impl<D> Default for Committed<D> {
    fn default() -> Self {
        Committed {
            state: Arc::new(Mutex::new(State {
                staged: BTreeMap::new(),
                committed: BTreeMap::new(),
                earlier: Vec::new(),
            })),
        }
    }
}

impl<D: Clone> Committed<D> {
    /// An empty output.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State<D>> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Every committed record: those of runs before the last fresh start first, then by
    /// epoch, worker and arrival.
    pub fn records(&self) -> Vec<D> {
        let state = self.lock();
        let mut outputs: Vec<_> = state.committed.iter().collect();
        outputs.sort_by_key(|((_, id), _)| (id.epoch, id.worker));
        let mut records = state.earlier.clone();
        records.extend(
            outputs
                .into_iter()
                .flat_map(|(_, records)| records.iter().cloned()),
        );
        records
    }

    /// How many outputs are staged and neither committed nor aborted yet.
    pub fn staged(&self) -> usize {
        self.lock().staged.len()
    }
}

/// A [`Committed`] is itself a sink: [`crate::Flow::sink`] writes a flow into it through
/// [`collect`].
///
/// # Examples
///
/// ```
/// use timely::dataflow::operators::ToStream;
/// use weir_runtime::testing::Committed;
///
/// let out = Committed::new();
/// let sink = out.clone();
/// weir_runtime::run(weir_runtime::JobConfig::thread("doc-collect"), move |job| {
///     job.flow((1..=3u64).to_stream(job.scope()))
///         .map(|n| n * 10)
///         .sink("out", sink.clone())
/// })
/// .unwrap();
/// assert_eq!(out.records(), vec![10, 20, 30]);
/// assert_eq!(out.staged(), 0);
/// ```
impl<D: timely::ExchangeData + Clone + Send> Sink<D> for Committed<D> {
    fn build<'s>(self, job: &Job<'s>, name: &str, records: Stream<'s, u64, Vec<D>>) -> Result<()> {
        collect(job, records, name, &self)
    }
}

/// Writes `stream` into `into` through an exactly-once two-phase sink named `name`.
pub fn collect<'s, D>(
    job: &Job<'s>,
    stream: Stream<'s, u64, Vec<D>>,
    name: &str,
    into: &Committed<D>,
) -> Result<()>
where
    D: timely::ExchangeData + Clone + Send,
{
    let committer = Arc::new(MemoryCommitter {
        name: name.to_string(),
        out: into.clone(),
    });
    let sink = MemorySink {
        name: name.to_string(),
        ctx: job.ctx().clone(),
        out: into.clone(),
        pending: BTreeMap::new(),
    };
    crate::sink::sink(job, stream, name, sink, committer)
}

/// Runs `build` in-process on `workers` worker threads with `config`, and returns what
/// the flow it returns committed, through [`collect`].
///
/// # Examples
///
/// ```
/// use timely::dataflow::operators::ToStream;
/// use weir_runtime::{testing, JobConfig};
///
/// for workers in [1, 3] {
///     let mut doubled = testing::run_collect(JobConfig::thread("doc-run"), workers, |job| {
///         Ok(job.flow((0..10u64).to_stream(job.scope())).map(|x| 2 * x))
///     })
///     .unwrap();
///     doubled.sort();
///     // `to_stream` emits on every worker.
///     assert_eq!(doubled.len(), 10 * workers);
/// }
/// ```
pub fn run_collect<D, F>(mut config: JobConfig, workers: usize, build: F) -> Result<Vec<D>>
where
    D: timely::ExchangeData + Clone + Send,
    F: for<'s> Fn(&Job<'s>) -> Result<Flow<'s, D>> + Send + Sync + 'static,
{
    config.workers = workers;
    config.processes = 1;
    config.process = 0;
    let out = Committed::new();
    let sink = out.clone();
    crate::run(config, move |job| {
        build(job)?.sink("collected", sink.clone())
    })?;
    Ok(out.records())
}

struct MemorySink<D> {
    name: String,
    ctx: crate::JobContext,
    out: Committed<D>,
    pending: BTreeMap<u64, Vec<D>>,
}

impl<D: Clone + 'static> TwoPhaseSink for MemorySink<D> {
    type Record = D;
    type Handle = ();

    fn write(&mut self, epoch: u64, record: D) -> Result<()> {
        self.pending.entry(epoch).or_default().push(record);
        Ok(())
    }

    fn pre_commit(&mut self, epoch: u64) -> Result<Option<()>> {
        let Some(records) = self.pending.remove(&epoch) else {
            return Ok(None);
        };
        let id = self.ctx.output(epoch);
        self.out
            .lock()
            .staged
            .insert((self.name.clone(), id), records);
        Ok(Some(()))
    }
}

struct MemoryCommitter<D> {
    name: String,
    out: Committed<D>,
}

impl<D: Clone + Send + 'static> Committer for MemoryCommitter<D> {
    type Handle = ();

    fn staged(&self) -> Result<Vec<Output<()>>> {
        let state = self.out.lock();
        Ok(state
            .staged
            .keys()
            .filter(|(sink, _)| *sink == self.name)
            .map(|(_, id)| Output {
                id: *id,
                handle: (),
            })
            .collect())
    }

    fn commit(&self, output: &Output<()>) -> Result<()> {
        let key = (self.name.clone(), output.id);
        let mut state = self.out.lock();
        if let Some(records) = state.staged.remove(&key) {
            state.committed.insert(key, records);
            return Ok(());
        }
        if state.committed.contains_key(&key) {
            return Ok(());
        }
        Err(RuntimeError::Io {
            operator: self.name.clone(),
            reason: format!("output {} is neither staged nor committed", output.id),
        })
    }

    fn abort(&self, output: &Output<()>) -> Result<()> {
        self.out
            .lock()
            .staged
            .remove(&(self.name.clone(), output.id));
        Ok(())
    }

    /// Forgets which outputs an earlier run committed (their records stay), and drops
    /// what it staged.
    fn fresh_start(&self) -> Result<()> {
        let mut state = self.out.lock();
        let state = &mut *state;
        let mine = |(sink, _): &(String, OutputId)| *sink == self.name;
        let mut forgotten: Vec<_> = state
            .committed
            .keys()
            .filter(|k| mine(k))
            .cloned()
            .collect();
        forgotten.sort_by_key(|(_, id)| (id.generation, id.epoch, id.worker));
        for key in forgotten {
            let records = state.committed.remove(&key).expect("listed");
            state.earlier.extend(records);
        }
        state.staged.retain(|k, _| !mine(k));
        Ok(())
    }
}

/// A source of `items`, read by worker 0 in one epoch: the input of doc examples and
/// in-process tests.
///
/// It keeps no position, so a restored run reads every item again; use a real source
/// (`weir_connectors::generator`, files) where a test restores.
///
/// # Examples
///
/// ```
/// use weir_runtime::{testing, JobConfig};
///
/// let mut out = testing::run_collect(JobConfig::thread("doc-items"), 2, |job| {
///     Ok(job.source("numbers", testing::items(vec![1u64, 2, 3]))?.filter(|n| n % 2 == 1))
/// })
/// .unwrap();
/// out.sort();
/// assert_eq!(out, vec![1, 3]);
/// ```
pub fn items<D>(items: Vec<D>) -> Items<D> {
    Items(items)
}

/// The source [`items`] returns.
pub struct Items<D>(Vec<D>);

impl<D: timely::ExchangeData> Source for Items<D> {
    type Item = D;
    fn build<'s>(self, job: &Job<'s>, _name: &str) -> Result<Stream<'s, u64, Vec<D>>> {
        use timely::dataflow::operators::ToStream;
        let mine = if job.ctx().worker() == 0 {
            self.0
        } else {
            Vec::new()
        };
        Ok(mine.to_stream(job.scope()))
    }
}
