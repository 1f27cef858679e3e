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
use timely::dataflow::Stream;
use weir_runtime::{Job, Result};

use crate::Ttl;

/// Applies `logic(key, state, value)` to every record in epoch order, with `state`
/// kept per key, checkpointed per key group and restored after a crash; emits what
/// `logic` returns.
///
/// # Examples
///
/// ```
/// use timely::dataflow::operators::{Capture, ToStream};
/// use timely::dataflow::operators::capture::Extract;
/// use weir_operators::StatefulMap;
///
/// let (send, recv) = std::sync::mpsc::channel();
/// let send = std::sync::Mutex::new(send);
/// weir_runtime::run(weir_runtime::JobConfig::thread("doc-stateful-map"), move |job| {
///     let events = vec![("k".to_string(), 5u64), ("k".to_string(), 7)].to_stream(job.scope());
///     // Emit each value with the running maximum seen so far for its key.
///     let maxima = events.stateful_map(job, "max", |_key, max: &mut u64, v: u64| {
///         *max = (*max).max(v);
///         Some((v, *max))
///     })?;
///     maxima.capture_into(send.lock().unwrap().clone());
///     Ok(())
/// }).unwrap();
/// let mut out: Vec<(u64, u64)> = recv.extract().into_iter().flat_map(|(_, v)| v).collect();
/// out.sort();
/// assert_eq!(out, vec![(5, 5), (7, 7)]);
/// ```
pub trait StatefulMap<'s, K, V> {
    /// Runs `logic` per record; `name` must be unique in the job.
    fn stateful_map<S, O, F>(
        self,
        job: &mut Job<'s>,
        name: &str,
        logic: F,
    ) -> Result<Stream<'s, u64, Vec<O>>>
    where
        S: Default + Serialize + DeserializeOwned + 'static,
        O: timely::ExchangeData,
        F: FnMut(&K, &mut S, V) -> Option<O> + 'static;

    /// Like [`stateful_map`](StatefulMap::stateful_map), with each key's state dropped
    /// once `ttl` has passed since its last update (the key then starts again from
    /// `S::default()`).
    ///
    /// ```
    /// use timely::dataflow::operators::{Capture, ToStream};
    /// use timely::dataflow::operators::capture::Extract;
    /// use weir_operators::{StatefulMap, Ttl};
    ///
    /// let (send, recv) = std::sync::mpsc::channel();
    /// let send = std::sync::Mutex::new(send);
    /// weir_runtime::run(weir_runtime::JobConfig::thread("doc-ttl"), move |job| {
    ///     let events = vec![("k".to_string(), 1u64), ("k".to_string(), 2)].to_stream(job.scope());
    ///     // A running sum that forgets a key one epoch after its last update.
    ///     let sums = events.stateful_map_ttl(job, "sum", Ttl::Epochs(1), |_key, sum: &mut u64, v: u64| {
    ///         *sum += v;
    ///         Some(*sum)
    ///     })?;
    ///     sums.capture_into(send.lock().unwrap().clone());
    ///     Ok(())
    /// }).unwrap();
    /// let out: Vec<u64> = recv.extract().into_iter().flat_map(|(_, v)| v).collect();
    /// assert_eq!(out, vec![1, 3]);
    /// ```
    fn stateful_map_ttl<S, O, F>(
        self,
        job: &mut Job<'s>,
        name: &str,
        ttl: Ttl,
        logic: F,
    ) -> Result<Stream<'s, u64, Vec<O>>>
    where
        S: Default + Serialize + DeserializeOwned + 'static,
        O: timely::ExchangeData,
        F: FnMut(&K, &mut S, V) -> Option<O> + 'static;
}

impl<'s, K, V> StatefulMap<'s, K, V> for Stream<'s, u64, Vec<(K, V)>>
where
    K: timely::ExchangeData + Hash + Eq + Clone,
    V: timely::ExchangeData,
{
    fn stateful_map<S, O, F>(
        self,
        job: &mut Job<'s>,
        name: &str,
        logic: F,
    ) -> Result<Stream<'s, u64, Vec<O>>>
    where
        S: Default + Serialize + DeserializeOwned + 'static,
        O: timely::ExchangeData,
        F: FnMut(&K, &mut S, V) -> Option<O> + 'static,
    {
        self.stateful_map_ttl(job, name, Ttl::Never, logic)
    }

    fn stateful_map_ttl<S, O, F>(
        self,
        job: &mut Job<'s>,
        name: &str,
        ttl: Ttl,
        mut logic: F,
    ) -> Result<Stream<'s, u64, Vec<O>>>
    where
        S: Default + Serialize + DeserializeOwned + 'static,
        O: timely::ExchangeData,
        F: FnMut(&K, &mut S, V) -> Option<O> + 'static,
    {
        crate::keyed::per_key(
            self,
            job,
            name,
            ttl,
            move |k: &K, s: &mut S, v: V, out: &mut Vec<O>| out.extend(logic(k, s, v)),
            |_: &K, _: &S, _: u64, _: &mut Vec<O>| {},
        )
    }
}
