//! `to_collection`: differential dataflow collections whose results survive restore.
//!
//! ## How it works, and what a restore costs
//!
//! A stream of updates `(data, diff)` becomes a differential
//! [`VecCollection`] timestamped with epochs, so any
//! differential operator (`count`, `reduce`, `join`, `distinct`, iteration, ...) can run on
//! it. The operator keeps the consolidated input collection (every record with a non-zero
//! accumulated diff) as keyed state and checkpoints it with every epoch.
//!
//! On restore from epoch `e`, the consolidated input is replayed into the collection at
//! time `e`, and the differential operators downstream recompute their results from it.
//! Those results, at times `<= e`, are what earlier runs already committed; weir's sinks
//! drop output at epochs before the run's first epoch, and [`changes`] drops it too, so
//! only the changes after `e` are committed. The output is thus exactly that of a run
//! without failure.
//!
//! The cost: a restore reads the consolidated inputs (proportional to the number of
//! distinct input records, not to the history) and recomputes every downstream
//! differential operator over them, about as long as processing that many records once;
//! arrangements are not snapshotted. `BENCHMARKS.md` measures it.
//!
//! ## Design
//!
//! Invariants: the checkpointed state is the consolidated input as of exactly the closed
//! epochs; output at epochs the restored checkpoint covers is never committed again.

use std::hash::Hash;

use differential_dataflow::{AsCollection, VecCollection};
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::collections::BTreeMap;

use timely::container::CapacityContainerBuilder;
use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::generic::Operator;
use timely::dataflow::Stream;
use weir_runtime::{Flow, Job, KeyedState, Part, Result, Sealing};

use crate::keyed::{by_key, keyed, Out, Store};

/// Turns a flow of updates into a differential collection that survives restore.
///
/// # Examples
///
/// ```
/// use weir_runtime::{testing, JobConfig};
/// use weir_operators::collection::ToCollection;
///
/// let out = testing::run_collect(JobConfig::thread("doc-collection"), 2, |job| {
///     // Words added (+1) and one retracted (-1).
///     let updates = vec![('a', 1), ('b', 1), ('a', 1), ('b', -1)];
///     Ok(job
///         .source("updates", testing::items(updates))?
///         .to_collection("words")?
///         .apply(|words| words.count())
///         .changes())
/// })
/// .unwrap();
/// let out: Vec<_> = out.into_iter().map(|(d, _epoch, diff)| (d, diff)).collect();
/// assert_eq!(out, vec![(('a', 2), 1)]);
/// ```
pub trait ToCollection<'s, D> {
    /// Accumulates the updates `(data, diff)` into a collection whose consolidated
    /// contents are checkpointed under `name` (unique in the job) and replayed on restore.
    fn to_collection(self, name: &str) -> Result<DurableCollection<'s, D>>;
}

impl<'s, D> ToCollection<'s, D> for Flow<'s, (D, isize)>
where
    D: timely::ExchangeData + Clone + Hash + Eq + Ord + Serialize + DeserializeOwned,
{
    fn to_collection(self, name: &str) -> Result<DurableCollection<'s, D>> {
        let job = self.job().clone();
        let ctx = job.ctx().clone();
        let replay_at = ctx.restored().map(|m| m.epoch.0);
        let store = Inputs {
            counts: KeyedState::restore(&ctx, name)?,
            replay_at,
        };
        let collection = keyed(self.into_stream(), None, by_key, &job, name, store)?
            .0
            .as_collection();
        Ok(DurableCollection { job, collection })
    }
}

/// A differential collection of a job, built on [`ToCollection::to_collection`]: any
/// differential operator runs on it through [`apply`](DurableCollection::apply), and
/// [`changes`](DurableCollection::changes) turns its changes into a flow for a sink.
pub struct DurableCollection<'s, D: 'static> {
    job: Job<'s>,
    collection: VecCollection<'s, u64, D, isize>,
}

impl<'s, D: timely::ExchangeData + Clone> DurableCollection<'s, D> {
    /// The differential collection.
    pub fn collection(&self) -> &VecCollection<'s, u64, D, isize> {
        &self.collection
    }

    /// Runs differential operators on the collection.
    pub fn apply<D2: timely::ExchangeData + Clone>(
        self,
        f: impl FnOnce(VecCollection<'s, u64, D, isize>) -> VecCollection<'s, u64, D2, isize>,
    ) -> DurableCollection<'s, D2> {
        DurableCollection {
            collection: f(self.collection),
            job: self.job,
        }
    }

    /// Another collection of the same job, derived from this one with differential
    /// operators: for jobs that read several results off one durable input.
    pub fn derived<D2: timely::ExchangeData + Clone>(
        &self,
        collection: VecCollection<'s, u64, D2, isize>,
    ) -> DurableCollection<'s, D2> {
        DurableCollection {
            job: self.job.clone(),
            collection,
        }
    }

    /// The collection's changes as `(data, epoch, diff)` (see [`changes`]).
    pub fn changes(self) -> Flow<'s, (D, u64, isize)> {
        let changes = changes(self.collection, &self.job);
        self.job.flow(changes)
    }
}

/// The changes of a collection as `(data, epoch, diff)`, each at its own epoch, without
/// those at epochs a restored checkpoint already covers (they were committed by an
/// earlier run).
///
/// Differential operators may send an update in a batch stamped with an earlier time
/// than the update's own; this moves every update to its own epoch, so that sinks commit
/// it with that epoch.
pub fn changes<'s, D: timely::ExchangeData + Clone>(
    collection: VecCollection<'s, u64, D, isize>,
    job: &Job<'s>,
) -> Stream<'s, u64, Vec<(D, u64, isize)>> {
    let committed = job.ctx().restored().map(|m| m.epoch.0);
    collection
        .inner
        .unary::<CapacityContainerBuilder<Vec<(D, u64, isize)>>, _, _, _>(
            Pipeline,
            "changes",
            move |_, _| {
                let mut by_time: BTreeMap<u64, Vec<(D, u64, isize)>> = BTreeMap::new();
                move |input, output| {
                    input.for_each(|cap, data| {
                        for (d, t, r) in data.drain(..) {
                            if committed.is_none_or(|c| t > c) {
                                by_time.entry(t).or_default().push((d, t, r));
                            }
                        }
                        for (t, updates) in std::mem::take(&mut by_time) {
                            output
                                .session(&cap.delayed(&t, 0))
                                .give_iterator(updates.into_iter());
                        }
                    });
                }
            },
        )
}

/// The consolidated input collection on one worker.
struct Inputs<D> {
    counts: KeyedState<D, isize, crate::FastHash>,
    replay_at: Option<u64>,
}

impl<D> Store for Inputs<D>
where
    D: timely::ExchangeData + Clone + Hash + Eq + Ord + Serialize + DeserializeOwned,
{
    type Record = (D, isize);
    type Out = (D, u64, isize);
    type Side = ();

    fn apply(&mut self, epoch: u64, (d, diff): (D, isize), out: &mut Out<Self>) {
        if diff == 0 {
            return;
        }
        let group = self.counts.group_of(&d);
        let counts = self.counts.group_mut(group, &d);
        let count = counts.entry(d.clone()).or_insert(0);
        *count += diff;
        if *count == 0 {
            counts.remove(&d);
        }
        self.counts.changed(group, d.clone());
        out.push((d, epoch, diff));
    }

    fn encode(&mut self, _name: &str, _key_groups: u32, full: bool) -> Result<Sealing> {
        self.counts.seal(full)
    }

    fn take_sealed(&mut self) -> Option<Result<Part>> {
        self.counts.take_sealed()
    }

    fn finish_sealed(&mut self) {
        self.counts.finish_sealed()
    }

    fn restored_parts_dropped(&mut self) {
        self.counts.restored_chain_dropped();
    }

    fn background(&mut self) -> bool {
        self.counts.background()
    }

    fn held_for(&mut self) -> Option<std::time::Duration> {
        self.counts.held_for()
    }

    fn replay(&mut self) -> Option<(u64, Vec<Self::Out>)> {
        let epoch = self.replay_at?;
        let mut all: Vec<Self::Out> = self
            .counts
            .iter()
            .map(|(d, c)| (d.clone(), epoch, *c))
            .collect();
        all.sort_unstable();
        Some((epoch, all))
    }
}
