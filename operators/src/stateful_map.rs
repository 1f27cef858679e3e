//! `stateful_map`: a per-key state machine that may emit a record for every input record.

use std::hash::Hash;

use serde::de::DeserializeOwned;
use serde::Serialize;
use timely::dataflow::Stream;
use weir_runtime::{Job, Result};

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
        mut logic: F,
    ) -> Result<Stream<'s, u64, Vec<O>>>
    where
        S: Default + Serialize + DeserializeOwned + 'static,
        O: timely::ExchangeData,
        F: FnMut(&K, &mut S, V) -> Option<O> + 'static,
    {
        crate::keyed::keyed(
            self,
            job,
            name,
            move |k: &K, s: &mut S, v: V, out: &mut Vec<O>| out.extend(logic(k, s, v)),
            |_: &K, _: &S, _: u64, _: &mut Vec<O>| {},
        )
    }
}
