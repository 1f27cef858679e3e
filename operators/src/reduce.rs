//! `reduce_by_key` and `fold_by_key`: a running per-key aggregate that reports every key it changed, once
//! per epoch.
//!
//! ## Design
//!
//! The aggregate per key is keyed state in the `keyed` engine. Invariants: each
//! key changed in an epoch is reported exactly once for that epoch, with its aggregate
//! after every record of epochs `<= e`; a restore resumes from the aggregates of the
//! restored checkpoint, so the reports after it continue exactly where the committed
//! ones stopped.
//!
//! `reduce_by_key` merges each epoch's values of a key on the worker that reads them
//! before they cross the exchange (see `combine`): one record per key, epoch and
//! sending worker reaches the key's owner instead of one per value. That needs the
//! reduce function to be associative, which its documentation requires.

use std::cell::RefCell;
use std::hash::Hash;
use std::rc::Rc;

use serde::de::DeserializeOwned;
use serde::Serialize;
use weir_runtime::{Flow, Result};

/// The output of [`ReduceByKey::reduce_by_key`] and [`ReduceByKey::fold_by_key`]:
/// `(key, aggregate, epoch)` for every key changed in an epoch.
pub type Changes<'s, K, S> = Flow<'s, (K, S, u64)>;

/// Keeps a running aggregate per key and, at the end of every epoch, emits
/// `(key, aggregate, epoch)` for each key whose aggregate changed in that epoch.
///
/// The aggregate is checkpointed per key group and restored after a crash, also at a
/// different number of workers.
///
/// # Examples
///
/// ```
/// use weir_runtime::{testing, JobConfig};
/// use weir_operators::ReduceByKey;
///
/// let mut out = testing::run_collect(JobConfig::thread("doc-reduce"), 2, |job| {
///     job.source("words", testing::items(vec![("a".to_string(), 1), ("b".to_string(), 1), ("a".to_string(), 1)]))?
///         .reduce_by_key("count", |count, n| *count += n)
/// })
/// .unwrap();
/// out.sort();
/// assert_eq!(out.iter().map(|(k, c, _)| (k.as_str(), *c)).collect::<Vec<_>>(), [("a", 2), ("b", 1)]);
/// ```
pub trait ReduceByKey<'s, K, V> {
    /// Combines the values of each key with `reduce`: a key's aggregate is its first
    /// value, and every later value is reduced into it. `name` must be unique in the
    /// job; it names the operator's checkpointed state.
    ///
    /// `reduce` must be associative: reducing `b` and then `c` into `a` must give what
    /// reducing into `a` the result of reducing `c` into `b` gives. Each worker reduces
    /// the values of a key it reads within an epoch into one before sending them to the
    /// worker that owns the key, in the order it read them. (As values from different
    /// workers arrive in no fixed order, a reduction whose result depends on the order
    /// of its values was already not deterministic with more than one worker.)
    fn reduce_by_key<F>(self, name: &str, reduce: F) -> Result<Changes<'s, K, V>>
    where
        V: Clone + Serialize + DeserializeOwned,
        F: FnMut(&mut V, V) + 'static;

    /// Folds each value into its key's aggregate `S`, which starts at `S::default()`.
    /// `name` must be unique in the job.
    ///
    /// ```
    /// use weir_runtime::{testing, JobConfig};
    /// use weir_operators::ReduceByKey;
    ///
    /// let mut out = testing::run_collect(JobConfig::thread("doc-fold"), 1, |job| {
    ///     job.source("temps", testing::items(vec![('o', 3), ('o', -2), ('r', 20)]))?
    ///         // The readings of each place, as a list.
    ///         .fold_by_key("readings", |seen: &mut Vec<i32>, t| seen.push(t))
    /// })
    /// .unwrap();
    /// out.sort();
    /// assert_eq!(out.iter().map(|(k, s, _)| (*k, s.clone())).collect::<Vec<_>>(), [('o', vec![3, -2]), ('r', vec![20])]);
    /// ```
    fn fold_by_key<S, F>(self, name: &str, fold: F) -> Result<Changes<'s, K, S>>
    where
        S: Default + Clone + Serialize + DeserializeOwned + timely::ExchangeData,
        F: FnMut(&mut S, V) + 'static;
}

impl<'s, K, V> ReduceByKey<'s, K, V> for Flow<'s, (K, V)>
where
    K: timely::ExchangeData + Hash + Eq + Clone,
    V: timely::ExchangeData,
{
    fn reduce_by_key<F>(self, name: &str, reduce: F) -> Result<Changes<'s, K, V>>
    where
        V: Clone + Serialize + DeserializeOwned,
        F: FnMut(&mut V, V) + 'static,
    {
        let job = self.job().clone();
        // The combiner and the keyed operator run on the same worker thread, one at a
        // time: they share the one reduce function.
        let reduce = Rc::new(RefCell::new(reduce));
        let combined = crate::combine::combine(self.into_stream(), Rc::clone(&reduce));
        reduce_combined(&job, name, combined, reduce)
    }

    fn fold_by_key<S, F>(self, name: &str, mut fold: F) -> Result<Changes<'s, K, S>>
    where
        S: Default + Clone + Serialize + DeserializeOwned + timely::ExchangeData,
        F: FnMut(&mut S, V) + 'static,
    {
        let job = self.job().clone();
        let out = crate::keyed::per_key(
            self.into_stream(),
            &job,
            name,
            crate::Ttl::Never,
            move |_k: &K, s: &mut S, v: V, _out: &mut Vec<(K, S, u64)>| fold(s, v),
            |k: &K, s: &S, epoch: u64, out: &mut Vec<(K, S, u64)>| {
                out.push((k.clone(), s.clone(), epoch))
            },
        )?;
        Ok(job.flow(out))
    }
}

/// The keyed half of [`ReduceByKey::reduce_by_key`] and of `flat_reduce_by_key`:
/// reduces the combiner's partials of each key into its aggregate.
pub(crate) fn reduce_combined<'s, K, V, F>(
    job: &weir_runtime::Job<'s>,
    name: &str,
    combined: crate::Records<'s, (K, V)>,
    reduce: Rc<RefCell<F>>,
) -> Result<Changes<'s, K, V>>
where
    K: timely::ExchangeData + Hash + Eq + Clone,
    V: timely::ExchangeData + Clone + Serialize + DeserializeOwned,
    F: FnMut(&mut V, V) + 'static,
{
    let out = crate::keyed::per_key(
        combined,
        job,
        name,
        crate::Ttl::Never,
        move |_k: &K, s: &mut Option<V>, v: V, _out: &mut Vec<(K, V, u64)>| match s {
            Some(s) => (reduce.borrow_mut())(s, v),
            None => *s = Some(v),
        },
        |k: &K, s: &Option<V>, epoch: u64, out: &mut Vec<(K, V, u64)>| {
            out.extend(s.iter().map(|s| (k.clone(), s.clone(), epoch)))
        },
    )?;
    Ok(job.flow(out))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use weir_runtime::{testing, JobConfig};

    use crate::ReduceByKey;

    #[test]
    fn an_epoch_that_changed_more_keys_than_one_piece_reports_each_once() {
        // More keys than one piece of an epoch's end emits, each with two values.
        let keys = 3 * crate::keyed::END_EPOCH_CHUNK as u64 + 17;
        let items: Vec<(u64, u64)> = (0..2 * keys).map(|i| (i % keys, 1)).collect();
        let out = testing::run_collect(JobConfig::thread("reduce-pieces"), 2, move |job| {
            job.source("items", testing::items(items.clone()))?
                .reduce_by_key("sum", |sum, n| *sum += n)
        })
        .unwrap();
        // Each key is reported at most once per epoch, and its newest report counts both
        // of its values.
        let mut newest: BTreeMap<u64, (u64, u64)> = BTreeMap::new();
        let mut reports: BTreeMap<(u64, u64), usize> = BTreeMap::new();
        for (k, sum, epoch) in out {
            *reports.entry((k, epoch)).or_default() += 1;
            let e = newest.entry(k).or_insert((epoch, sum));
            if epoch >= e.0 {
                *e = (epoch, sum);
            }
        }
        assert!(
            reports.values().all(|&n| n == 1),
            "a key reported twice in an epoch"
        );
        assert_eq!(newest.len() as u64, keys);
        assert!(newest.values().all(|&(_, sum)| sum == 2));
    }
}
