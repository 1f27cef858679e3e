//! `count_by_key`: how many times each key has been seen, reported once per epoch.
//!
//! ## Design
//!
//! A [`crate::ReduceByKey`] with addition: the count per key is keyed state, checkpointed
//! per key group, and each key whose count changed in an epoch is reported once, as of
//! the end of that epoch.

use std::hash::Hash;

use timely::dataflow::operators::vec::Map;
use timely::dataflow::Stream;
use weir_runtime::{Job, Result};

use crate::reduce::{Changes, ReduceByKey};

/// Counts records per key and, at the end of every epoch, emits `(key, count, epoch)` for
/// each key seen in that epoch. The counts are checkpointed per key group.
///
/// # Examples
///
/// ```
/// use timely::dataflow::operators::{Capture, ToStream};
/// use timely::dataflow::operators::capture::Extract;
/// use weir_operators::CountByKey;
///
/// let (send, recv) = std::sync::mpsc::channel();
/// let send = std::sync::Mutex::new(send);
/// weir_runtime::run(weir_runtime::JobConfig::thread("doc-count"), move |job| {
///     let words = vec!["a".to_string(), "b".to_string(), "a".to_string()].to_stream(job.scope());
///     words.count_by_key(job, "count")?.capture_into(send.lock().unwrap().clone());
///     Ok(())
/// }).unwrap();
/// let mut out: Vec<(String, u64)> = recv.extract().into_iter().flat_map(|(_, v)| v).map(|(k, c, _)| (k, c)).collect();
/// out.sort();
/// assert_eq!(out, vec![("a".to_string(), 2), ("b".to_string(), 1)]);
/// ```
pub trait CountByKey<'s, K> {
    /// Counts the records of each key; `name` must be unique in the job.
    fn count_by_key(self, job: &mut Job<'s>, name: &str) -> Result<Changes<'s, K, u64>>;
}

impl<'s, K> CountByKey<'s, K> for Stream<'s, u64, Vec<K>>
where
    K: timely::ExchangeData + Hash + Eq + Clone,
{
    fn count_by_key(self, job: &mut Job<'s>, name: &str) -> Result<Changes<'s, K, u64>> {
        self.map(|k| (k, ()))
            .reduce_by_key(job, name, |count: &mut u64, ()| *count += 1)
    }
}
