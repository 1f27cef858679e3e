//! A deterministic generator source for tests and benchmarks.
//!
//! Delivery contract: item `i` of `0..total` belongs to split `i % splits`; splits are
//! spread over workers by key group and their next index is checkpointed, so a restore
//! (at any number of workers) emits every item exactly once across the job's committed
//! output, in the same per-split order.
//!
//! ## Design
//!
//! The next index per split is the only state; item `i` is a pure function of `i`, so a
//! replay emits the same items.

use std::collections::BTreeMap;

use timely::dataflow::Stream;
use weir_runtime::{Job, Result};

use crate::source::{source, Reader, SourceOptions};

/// The number of splits the generator cuts its items into: item `i` is in split
/// `i % SPLITS` (useful as the split of event-time watermarks).
pub const SPLITS: u32 = 64;

/// A source of `make(i)` for every `i` in `0..total`, spread over workers.
///
/// # Examples
///
/// ```
/// use weir_runtime::{testing, JobConfig};
/// use weir_connectors::generator;
///
/// let mut items = testing::run_collect(JobConfig::thread("doc-gen"), 2, |job| {
///     job.source("gen", generator::items(100, |i| i * 2))
/// })
/// .unwrap();
/// items.sort();
/// assert_eq!(items, (0..100).map(|i| i * 2).collect::<Vec<_>>());
/// ```
pub fn items<D, F>(total: u64, make: F) -> Items<F>
where
    D: timely::ExchangeData,
    F: Fn(u64) -> D + 'static,
{
    Items {
        total,
        make,
        opts: SourceOptions::default(),
    }
}

/// The source [`items`] returns.
pub struct Items<F> {
    total: u64,
    make: F,
    opts: SourceOptions,
}

impl<F> Items<F> {
    /// Reads with `opts` (a rate limit).
    pub fn options(self, opts: SourceOptions) -> Self {
        Items { opts, ..self }
    }
}

impl<D, F> weir_runtime::Source for Items<F>
where
    D: timely::ExchangeData,
    F: Fn(u64) -> D + 'static,
{
    type Item = D;
    fn build<'s>(self, job: &Job<'s>, name: &str) -> Result<Stream<'s, u64, Vec<D>>> {
        generate(job, name, self.total, self.opts, self.make)
    }
}

/// Emits `make(i)` for every `i` in `0..total` as the source named `name`: the
/// timely-level form of [`items`].
pub(crate) fn generate<'s, D, F>(
    job: &Job<'s>,
    name: &str,
    total: u64,
    opts: SourceOptions,
    make: F,
) -> Result<Stream<'s, u64, Vec<D>>>
where
    D: timely::ExchangeData,
    F: Fn(u64) -> D + 'static,
{
    let splits = SPLITS;
    let ctx = job.ctx();
    let owned: Vec<u32> = (0..splits).filter(|s| ctx.owns(s)).collect();
    source(
        job,
        name,
        Generator {
            total,
            splits,
            owned,
            next: 0,
            make,
        },
        opts,
    )
}

struct Generator<F> {
    total: u64,
    splits: u32,
    owned: Vec<u32>,
    next: usize,
    make: F,
}

impl<D: timely::ExchangeData, F: Fn(u64) -> D + 'static> Reader for Generator<F> {
    type Split = u32;
    type Item = D;

    fn read(
        &mut self,
        positions: &mut BTreeMap<u32, u64>,
        max: usize,
        out: &mut Vec<D>,
    ) -> Result<bool> {
        let n = self.splits as u64;
        let mut emitted = 0;
        let mut exhausted = 0;
        // Take a run of items from one split at a time, round robin over the owned splits.
        let run = (max / self.owned.len().max(1)).max(1) as u64;
        while emitted < max && exhausted < self.owned.len() {
            let split = self.owned[self.next % self.owned.len()];
            self.next += 1;
            let pos = positions.entry(split).or_insert(0);
            let start = *pos;
            let mut i = start * n + split as u64;
            while i < self.total && *pos - start < run && emitted < max {
                out.push((self.make)(i));
                *pos += 1;
                emitted += 1;
                i += n;
            }
            if i >= self.total {
                exhausted += 1;
            } else {
                exhausted = 0;
            }
        }
        Ok(exhausted < self.owned.len())
    }
}
