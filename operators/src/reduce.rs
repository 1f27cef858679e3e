//! `reduce_by_key`: a running per-key aggregate that reports every key it changed, once
//! per epoch.
//!
//! ## Design
//!
//! The aggregate per key is keyed state in the `keyed` engine. Invariants: each
//! key changed in an epoch is reported exactly once for that epoch, with its aggregate
//! after every record of epochs `<= e`; a restore resumes from the aggregates of the
//! restored checkpoint, so the reports after it continue exactly where the committed
//! ones stopped.

use std::hash::Hash;

use serde::de::DeserializeOwned;
use serde::Serialize;
use timely::dataflow::Stream;
use weir_runtime::{Job, Result};

/// The output of [`ReduceByKey::reduce_by_key`]: `(key, aggregate, epoch)` for every key
/// changed in an epoch.
pub type Changes<'s, K, S> = Stream<'s, u64, Vec<(K, S, u64)>>;

/// Keeps a running aggregate per key and, at the end of every epoch, emits
/// `(key, aggregate, epoch)` for each key whose aggregate changed in that epoch.
///
/// The aggregate is checkpointed per key group and restored after a crash, also at a
/// different number of workers.
///
/// # Examples
///
/// ```
/// use timely::dataflow::operators::{Capture, ToStream};
/// use timely::dataflow::operators::capture::Extract;
/// use weir_operators::ReduceByKey;
///
/// let (send, recv) = std::sync::mpsc::channel();
/// let send = std::sync::Mutex::new(send);
/// weir_runtime::run(weir_runtime::JobConfig::thread("doc-reduce"), move |job| {
///     let words = vec![("a".to_string(), 1u64), ("b".to_string(), 1), ("a".to_string(), 1)].to_stream(job.scope());
///     let counts = words.reduce_by_key(job, "count", |count: &mut u64, n: u64| *count += n)?;
///     counts.capture_into(send.lock().unwrap().clone());
///     Ok(())
/// }).unwrap();
/// let mut out: Vec<(String, u64)> = recv.extract().into_iter().flat_map(|(_, v)| v).map(|(k, c, _)| (k, c)).collect();
/// out.sort();
/// assert_eq!(out, vec![("a".to_string(), 2), ("b".to_string(), 1)]);
/// ```
pub trait ReduceByKey<'s, K, V> {
    /// Folds each record's value into its key's aggregate with `fold`.
    ///
    /// `name` must be unique in the job; it names the operator's checkpointed state.
    fn reduce_by_key<S, F>(
        self,
        job: &mut Job<'s>,
        name: &str,
        fold: F,
    ) -> Result<Changes<'s, K, S>>
    where
        S: Default + Clone + Serialize + DeserializeOwned + timely::ExchangeData,
        F: FnMut(&mut S, V) + 'static;
}

impl<'s, K, V> ReduceByKey<'s, K, V> for Stream<'s, u64, Vec<(K, V)>>
where
    K: timely::ExchangeData + Hash + Eq + Clone,
    V: timely::ExchangeData,
{
    fn reduce_by_key<S, F>(
        self,
        job: &mut Job<'s>,
        name: &str,
        mut fold: F,
    ) -> Result<Changes<'s, K, S>>
    where
        S: Default + Clone + Serialize + DeserializeOwned + timely::ExchangeData,
        F: FnMut(&mut S, V) + 'static,
    {
        crate::keyed::per_key(
            self,
            job,
            name,
            crate::Ttl::Never,
            move |_k: &K, s: &mut S, v: V, _out: &mut Vec<(K, S, u64)>| fold(s, v),
            |k: &K, s: &S, epoch: u64, out: &mut Vec<(K, S, u64)>| {
                out.push((k.clone(), s.clone(), epoch))
            },
        )
    }
}
