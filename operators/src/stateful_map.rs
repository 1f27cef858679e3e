//! `stateful_map`: a per-key state machine that may emit a record for every input record.
//!
//! ## Design
//!
//! The state per key is keyed state in the `keyed` engine, applied in epoch order
//! and in arrival order within an epoch. Invariants: the state after epoch `e` is the
//! fold of exactly the records of epochs `<= e`; with a [`crate::Ttl`] a key's state is
//! dropped once it expired, which is part of the checkpointed state (a restore does not
//! revive expired keys).

use std::hash::Hash;

use serde::de::DeserializeOwned;
use serde::Serialize;
use weir_runtime::{Flow, Result};

use crate::Ttl;

/// Applies `logic(key, state, value)` to every record in epoch order, with `state`
/// kept per key, checkpointed per key group and restored after a crash; emits what
/// `logic` returns.
///
/// # Examples
///
/// ```
/// use weir_runtime::{testing, JobConfig};
/// use weir_operators::StatefulMap;
///
/// let mut out = testing::run_collect(JobConfig::thread("doc-stateful-map"), 2, |job| {
///     job.source("events", testing::items(vec![('k', 5), ('k', 7), ('k', 6)]))?
///         // Each value with the running maximum seen so far for its key.
///         .stateful_map("max", |_key, max: &mut u64, v| {
///             *max = (*max).max(v);
///             Some((v, *max))
///         })
/// })
/// .unwrap();
/// out.sort();
/// assert_eq!(out, [(5, 5), (6, 7), (7, 7)]);
/// ```
pub trait StatefulMap<'s, K, V> {
    /// Runs `logic` per record; `name` must be unique in the job.
    fn stateful_map<S, O, F>(self, name: &str, logic: F) -> Result<Flow<'s, O>>
    where
        S: Default + Serialize + DeserializeOwned + 'static,
        O: timely::ExchangeData,
        F: FnMut(&K, &mut S, V) -> Option<O> + 'static;

    /// Like [`stateful_map`](StatefulMap::stateful_map), with each key's state dropped
    /// once `ttl` has passed since its last update (the key then starts again from
    /// `S::default()`).
    ///
    /// ```
    /// use weir_runtime::{testing, JobConfig};
    /// use weir_operators::{StatefulMap, Ttl};
    ///
    /// let out = testing::run_collect(JobConfig::thread("doc-ttl"), 1, |job| {
    ///     job.source("events", testing::items(vec![('k', 1u64), ('k', 2)]))?
    ///         // A running sum that forgets a key one epoch after its last update.
    ///         .stateful_map_ttl("sum", Ttl::Epochs(1), |_key, sum: &mut u64, v| {
    ///             *sum += v;
    ///             Some(*sum)
    ///         })
    /// })
    /// .unwrap();
    /// assert_eq!(out, [1, 3]);
    /// ```
    fn stateful_map_ttl<S, O, F>(self, name: &str, ttl: Ttl, logic: F) -> Result<Flow<'s, O>>
    where
        S: Default + Serialize + DeserializeOwned + 'static,
        O: timely::ExchangeData,
        F: FnMut(&K, &mut S, V) -> Option<O> + 'static;
}

impl<'s, K, V> StatefulMap<'s, K, V> for Flow<'s, (K, V)>
where
    K: timely::ExchangeData + Hash + Eq + Clone,
    V: timely::ExchangeData,
{
    fn stateful_map<S, O, F>(self, name: &str, logic: F) -> Result<Flow<'s, O>>
    where
        S: Default + Serialize + DeserializeOwned + 'static,
        O: timely::ExchangeData,
        F: FnMut(&K, &mut S, V) -> Option<O> + 'static,
    {
        self.stateful_map_ttl(name, Ttl::Never, logic)
    }

    fn stateful_map_ttl<S, O, F>(self, name: &str, ttl: Ttl, mut logic: F) -> Result<Flow<'s, O>>
    where
        S: Default + Serialize + DeserializeOwned + 'static,
        O: timely::ExchangeData,
        F: FnMut(&K, &mut S, V) -> Option<O> + 'static,
    {
        let job = self.job().clone();
        let out = crate::keyed::per_key(
            self.into_stream(),
            &job,
            name,
            ttl,
            move |k: &K, s: &mut S, v: V, out: &mut Vec<O>| out.extend(logic(k, s, v)),
            |_: &K, _: &S, _: u64, _: &mut Vec<O>| {},
        )?;
        Ok(job.flow(out))
    }
}
