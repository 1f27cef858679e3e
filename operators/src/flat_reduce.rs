//! `flat_reduce_by_key`: `reduce_by_key` over the keyed values that each record yields,
//! merged before any of them becomes a record of its own.
//!
//! ## Design
//!
//! The records go into the combiner (see `combine`) whole; the job's function emits a
//! record's keyed values into the epoch's partials through a [`Combiner`], borrowing each
//! key until it is new. The partials then take the path of `reduce_by_key`'s: the same
//! keyed operator and state, so both have the same invariants and checkpoints.

use std::cell::RefCell;
use std::hash::Hash;
use std::rc::Rc;

use serde::de::DeserializeOwned;
use serde::Serialize;
use weir_runtime::{Flow, Result};

pub use crate::combine::Combiner;
use crate::reduce::{reduce_combined, Changes};

/// [`crate::reduce::ReduceByKey::reduce_by_key`] on keyed values that records yield, without a
/// record per value: `explode` emits any number of `(key, value)` pairs of a record into
/// a [`Combiner`], which merges them on the worker that read the record, borrowing each
/// key (a `&str` for a `String` key) and copying it only when it is new in the epoch.
///
/// It gives what `flat_map` into `(key, value)` pairs and then `reduce_by_key` give,
/// with the same state (a job can switch between the two and restore its checkpoints),
/// but without allocating a key, or a record of timely's containers, per value: a word
/// count over batches of lines allocates a word only when it first shows up in an epoch.
///
/// # Examples
///
/// ```
/// use weir_runtime::{testing, JobConfig};
/// use weir_operators::FlatReduceByKey;
///
/// let lines = vec!["a b a".to_string(), "b c".to_string()];
/// let mut out = testing::run_collect(JobConfig::thread("doc-flat-reduce"), 2, move |job| {
///     job.source("lines", testing::items(lines.clone()))?.flat_reduce_by_key(
///         "count",
///         |line: &String, words| {
///             for word in line.split_whitespace() {
///                 words.emit(word, 1u64);
///             }
///         },
///         |count: &mut u64, n| *count += n,
///     )
/// })
/// .unwrap();
/// out.sort();
/// let counts: Vec<(String, u64)> = out.into_iter().map(|(w, c, _)| (w, c)).collect();
/// assert_eq!(counts, [("a".to_string(), 2), ("b".to_string(), 2), ("c".to_string(), 1)]);
/// ```
pub trait FlatReduceByKey<'s, R> {
    /// Reduces every value that `explode` emits for a record into its key's aggregate
    /// with `reduce`, which must be associative (see [`crate::reduce::ReduceByKey::reduce_by_key`]);
    /// emits `(key, aggregate, epoch)` for every key changed in an epoch. `name` must be
    /// unique in the job; it names the operator's checkpointed state.
    fn flat_reduce_by_key<K, V, E, F>(
        self,
        name: &str,
        explode: E,
        reduce: F,
    ) -> Result<Changes<'s, K, V>>
    where
        K: timely::ExchangeData + Hash + Eq + Clone,
        V: timely::ExchangeData + Clone + Serialize + DeserializeOwned,
        E: FnMut(&R, &mut Combiner<'_, K, V>) + 'static,
        F: FnMut(&mut V, V) + 'static;
}

impl<'s, R: timely::ExchangeData> FlatReduceByKey<'s, R> for Flow<'s, R> {
    fn flat_reduce_by_key<K, V, E, F>(
        self,
        name: &str,
        mut explode: E,
        reduce: F,
    ) -> Result<Changes<'s, K, V>>
    where
        K: timely::ExchangeData + Hash + Eq + Clone,
        V: timely::ExchangeData + Clone + Serialize + DeserializeOwned,
        E: FnMut(&R, &mut Combiner<'_, K, V>) + 'static,
        F: FnMut(&mut V, V) + 'static,
    {
        let job = self.job().clone();
        let reduce = Rc::new(RefCell::new(reduce));
        let combined = crate::combine::combine_with(
            self.into_stream(),
            Rc::clone(&reduce),
            move |record: R, combiner: &mut Combiner<'_, K, V>| explode(&record, combiner),
        );
        reduce_combined(&job, name, combined, reduce)
    }
}
