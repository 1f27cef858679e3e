//! One checker for keyed output of any record type: the committed updates of a job that
//! reports each key's new value once per epoch in which it changed.

use std::collections::BTreeMap;
use std::fmt::Debug;

const SHOWN: usize = 25;

/// One committed update: a key's value as of an epoch, and where it was read from (a
/// file and line, a topic and offset) for messages.
#[derive(Debug, Clone)]
pub struct Update<K, V> {
    /// The key.
    pub key: K,
    /// Its value as of `epoch`.
    pub value: V,
    /// The epoch the update belongs to.
    pub epoch: u64,
    /// Where the update was read from.
    pub origin: String,
}

/// Exactly-once for keyed updates: every key of the oracle appears and no other; per key,
/// no two updates of one epoch, no value committed twice in a row, and the last update
/// (in epoch order) equals the oracle's final value. Panics with the violations.
pub fn check_keyed_exactly_once<K, V>(what: &str, oracle: &BTreeMap<K, V>, updates: &[Update<K, V>])
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
            } else if a.value == b.value {
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
    if v.is_empty() {
        return;
    }
    let mut msg = format!(
        "{what}: exactly-once violated: {} problem(s) in {} committed updates ({} keys in the oracle, {} in the output)\n",
        v.len(),
        updates.len(),
        oracle.len(),
        by_key.len()
    );
    for line in v.iter().take(SHOWN) {
        msg.push_str("  - ");
        msg.push_str(line);
        msg.push('\n');
    }
    if v.len() > SHOWN {
        msg.push_str(&format!("  ... and {} more\n", v.len() - SHOWN));
    }
    panic!("{msg}");
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
}
