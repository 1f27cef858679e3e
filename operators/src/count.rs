//! `count_by_key`: how many times each key has been seen, reported once per epoch.
//!
//! ## Design
//!
//! A [`crate::ReduceByKey`] with addition: the count per key is keyed state, checkpointed
//! per key group, and each key whose count changed in an epoch is reported once, as of
//! the end of that epoch. Each worker counts the records of a key it reads within an
//! epoch before sending one `(key, count)` to the key's owner (see `combine`), which adds
//! it to the key's count.

use std::cell::RefCell;
use std::hash::Hash;
use std::rc::Rc;

use weir_runtime::{Flow, Result};

use crate::reduce::{Changes, ReduceByKey};

/// Counts records per key and, at the end of every epoch, emits `(key, count, epoch)` for
/// each key seen in that epoch. The counts are checkpointed per key group.
///
/// # Examples
///
/// ```
/// use weir_runtime::{testing, JobConfig};
/// use weir_operators::CountByKey;
///
/// let mut out = testing::run_collect(JobConfig::thread("doc-count"), 2, |job| {
///     job.source("words", testing::items(vec!['a', 'b', 'a']))?.count_by_key("count")
/// })
/// .unwrap();
/// out.sort();
/// assert_eq!(out.iter().map(|(k, c, _)| (*k, *c)).collect::<Vec<_>>(), [('a', 2), ('b', 1)]);
/// ```
pub trait CountByKey<'s, K> {
    /// Counts the records of each key; `name` must be unique in the job.
    fn count_by_key(self, name: &str) -> Result<Changes<'s, K, u64>>;
}

impl<'s, K> CountByKey<'s, K> for Flow<'s, K>
where
    K: timely::ExchangeData + Hash + Eq + Clone,
{
    fn count_by_key(self, name: &str) -> Result<Changes<'s, K, u64>> {
        let job = self.job().clone();
        let ones = self.map(|k| (k, 1u64)).into_stream();
        let add = Rc::new(RefCell::new(|count: &mut u64, n: u64| *count += n));
        job.flow(crate::combine::combine(ones, add))
            .fold_by_key(name, |count: &mut u64, n: u64| *count += n)
    }
}
