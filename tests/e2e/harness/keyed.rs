//! One set of output checkers for every end-to-end test, over any record type: keyed
//! updates (each key's final value right, no update twice), items that must each appear
//! exactly once, and multisets that must match an oracle.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Debug;

const SHOWN: usize = 25;

/// One committed update: a key's value as of an epoch (or another per-key order such as a
/// version), and where it was read from (a file and line, a topic and offset) for messages.
#[derive(Debug, Clone)]
pub struct Update<K, V> {
    /// The key.
    pub key: K,
    /// Its value as of `epoch`.
    pub value: V,
    /// The epoch (or version) the update belongs to; a key has at most one per epoch.
    pub epoch: u64,
    /// Where the update was read from.
    pub origin: String,
}

/// Panics with `what`, a headline and the first violations, if there are any.
pub(crate) fn fail_if_any(what: &str, headline: String, violations: Vec<String>) {
    if violations.is_empty() {
        return;
    }
    let mut msg = format!("{what}: {headline}: {} problem(s)\n", violations.len());
    for line in violations.iter().take(SHOWN) {
        msg.push_str("  - ");
        msg.push_str(line);
        msg.push('\n');
    }
    if violations.len() > SHOWN {
        msg.push_str(&format!("  ... and {} more\n", violations.len() - SHOWN));
    }
    panic!("{msg}");
}

fn keyed_violations<K, V>(
    oracle: &BTreeMap<K, V>,
    updates: &[Update<K, V>],
    changes_only: bool,
) -> (usize, Vec<String>)
where
    K: Ord + Debug,
    V: PartialEq + Debug,
{
    let mut by_key: BTreeMap<&K, Vec<&Update<K, V>>> = BTreeMap::new();
    for u in updates {
        by_key.entry(&u.key).or_default().push(u);
    }
    let mut v = Vec::new();
    for (key, us) in &by_key {
        if !oracle.contains_key(*key) {
            v.push(format!(
                "key {key:?} is not in the input (first at {})",
                us[0].origin
            ));
        }
    }
    for (key, expected) in oracle {
        let Some(us) = by_key.get(key) else {
            v.push(format!(
                "key {key:?} (final value {expected:?}) is missing from the output"
            ));
            continue;
        };
        let mut us = us.clone();
        us.sort_by_key(|u| u.epoch);
        for pair in us.windows(2) {
            let (a, b) = (pair[0], pair[1]);
            if a.epoch == b.epoch {
                v.push(format!(
                    "key {key:?}: two updates for epoch {} ({:?} at {}, {:?} at {})",
                    a.epoch, a.value, a.origin, b.value, b.origin
                ));
            } else if changes_only && a.value == b.value {
                v.push(format!(
                    "key {key:?}: value {:?} committed twice (epoch {} at {}, epoch {} at {})",
                    a.value, a.epoch, a.origin, b.epoch, b.origin
                ));
            }
        }
        let last = us.last().expect("non-empty");
        if last.value != *expected {
            v.push(format!(
                "key {key:?}: final value {:?} (epoch {} at {}) but the oracle has {expected:?}",
                last.value, last.epoch, last.origin
            ));
        }
    }
    (by_key.len(), v)
}

/// Exactly-once for a job that reports each key's new value once per epoch in which it
/// changed: every key of the oracle appears and no other; per key, no two updates of one
/// epoch, no value committed twice in a row, and the last update (in epoch order) equals
/// the oracle's final value.
pub fn check_keyed_exactly_once<K, V>(what: &str, oracle: &BTreeMap<K, V>, updates: &[Update<K, V>])
where
    K: Ord + Debug,
    V: PartialEq + Debug,
{
    let (keys, v) = keyed_violations(oracle, updates, true);
    fail_if_any(
        what,
        format!(
            "exactly-once violated in {} committed updates ({} keys in the oracle, {keys} in the output)",
            updates.len(),
            oracle.len()
        ),
        v,
    );
}

/// Each key's final value right and no update twice, for keyed output whose updates may
/// repeat a value (a balance that returns to where it was): every key of the oracle
/// appears and no other, no key has two updates of one epoch (or version), and the last
/// update equals the oracle's final value.
pub fn check_keyed_final<K, V>(what: &str, oracle: &BTreeMap<K, V>, updates: &[Update<K, V>])
where
    K: Ord + Debug,
    V: PartialEq + Debug,
{
    let (keys, v) = keyed_violations(oracle, updates, false);
    fail_if_any(
        what,
        format!(
            "final values wrong in {} committed updates ({} keys in the oracle, {keys} in the output)",
            updates.len(),
            oracle.len()
        ),
        v,
    );
}

/// Every item of `expected` exactly once in `got`, and nothing else.
pub fn check_each_once<T: Ord + Debug>(
    what: &str,
    expected: &BTreeSet<T>,
    got: impl IntoIterator<Item = T>,
) {
    let mut seen: BTreeMap<T, usize> = BTreeMap::new();
    for item in got {
        *seen.entry(item).or_default() += 1;
    }
    let total: usize = seen.values().sum();
    let mut v = Vec::new();
    for item in expected
        .iter()
        .filter(|i| !seen.contains_key(*i))
        .take(SHOWN)
    {
        v.push(format!("{item:?} is missing"));
    }
    for (item, n) in seen.iter().filter(|(_, n)| **n > 1).take(SHOWN) {
        v.push(format!("{item:?} appears {n} times"));
    }
    for item in seen.keys().filter(|i| !expected.contains(*i)).take(SHOWN) {
        v.push(format!("{item:?} is not expected"));
    }
    fail_if_any(
        what,
        format!(
            "expected {} items exactly once, got {total}",
            expected.len()
        ),
        v,
    );
}

/// The same records as the oracle, as many times each (in any order).
pub fn check_same_multiset<T: Ord + Clone + Debug>(what: &str, expected: &[T], got: &[T]) {
    let count = |v: &[T]| {
        let mut m: BTreeMap<T, i64> = BTreeMap::new();
        for x in v {
            *m.entry(x.clone()).or_default() += 1;
        }
        m
    };
    let (ce, cg) = (count(expected), count(got));
    let mut v = Vec::new();
    for (k, n) in &ce {
        let m = cg.get(k).copied().unwrap_or(0);
        if m < *n {
            v.push(format!("{k:?}: {m} committed, the oracle has {n}"));
        }
    }
    for (k, m) in &cg {
        let n = ce.get(k).copied().unwrap_or(0);
        if *m > n {
            v.push(format!("{k:?}: {m} committed, the oracle has {n}"));
        }
    }
    fail_if_any(
        what,
        format!(
            "expected {} committed records, got {}",
            expected.len(),
            got.len()
        ),
        v,
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn u(key: &str, value: u64, epoch: u64) -> Update<String, u64> {
        Update {
            key: key.into(),
            value,
            epoch,
            origin: format!("e{epoch}"),
        }
    }

    #[test]
    fn accepts_one_update_per_changed_epoch_ending_at_the_oracle() {
        let oracle = BTreeMap::from([("a".to_string(), 3u64), ("b".to_string(), 1)]);
        check_keyed_exactly_once("t", &oracle, &[u("a", 1, 1), u("b", 1, 1), u("a", 3, 4)]);
    }

    #[test]
    #[should_panic(expected = "value 1 committed twice")]
    fn rejects_an_update_committed_twice() {
        let oracle = BTreeMap::from([("a".to_string(), 2u64)]);
        check_keyed_exactly_once("t", &oracle, &[u("a", 1, 1), u("a", 1, 2), u("a", 2, 3)]);
    }

    #[test]
    fn a_value_may_come_back_when_only_final_values_count() {
        let oracle = BTreeMap::from([("a".to_string(), 1u64)]);
        check_keyed_final("t", &oracle, &[u("a", 1, 1), u("a", 2, 2), u("a", 1, 3)]);
    }

    #[test]
    #[should_panic(expected = "two updates for epoch 2")]
    fn rejects_two_updates_of_one_version() {
        let oracle = BTreeMap::from([("a".to_string(), 2u64)]);
        check_keyed_final("t", &oracle, &[u("a", 1, 2), u("a", 2, 2)]);
    }

    #[test]
    #[should_panic(expected = "final value 1")]
    fn rejects_a_lost_update() {
        let oracle = BTreeMap::from([("a".to_string(), 2u64)]);
        check_keyed_exactly_once("t", &oracle, &[u("a", 1, 1)]);
    }

    #[test]
    #[should_panic(expected = "missing from the output")]
    fn rejects_a_missing_key() {
        let oracle = BTreeMap::from([("a".to_string(), 2u64), ("b".to_string(), 1)]);
        check_keyed_exactly_once("t", &oracle, &[u("a", 2, 1)]);
    }

    #[test]
    fn each_once_accepts_every_item_once() {
        check_each_once("t", &BTreeSet::from([1, 2, 3]), [3, 1, 2]);
    }

    #[test]
    #[should_panic(expected = "2 appears 2 times")]
    fn each_once_rejects_a_repeat() {
        check_each_once("t", &BTreeSet::from([1, 2]), [1, 2, 2]);
    }

    #[test]
    #[should_panic(expected = "3 is missing")]
    fn each_once_rejects_a_loss() {
        check_each_once("t", &BTreeSet::from([1, 2, 3]), [1, 2]);
    }

    #[test]
    #[should_panic(expected = "\"x\": 2 committed, the oracle has 1")]
    fn a_multiset_must_match_in_counts() {
        check_same_multiset("t", &["x", "y"], &["x", "y", "x"]);
    }
}
