//! The delivery guarantees, checked against the oracle.

use std::collections::{BTreeMap, HashMap};

use super::input::Oracle;
use super::keyed::{self, check_keyed_exactly_once, Update};
use super::output::Record;

fn by_word(records: &[Record]) -> BTreeMap<&str, Vec<&Record>> {
    let mut m: BTreeMap<&str, Vec<&Record>> = BTreeMap::new();
    for r in records {
        m.entry(r.word.as_str()).or_default().push(r);
    }
    m
}

fn fail_if_any(guarantee: &str, oracle: &Oracle, records: &[Record], violations: Vec<String>) {
    keyed::fail_if_any(
        &format!("{guarantee} violated"),
        format!(
            "{} committed records ({} distinct words in the input, {} in the output)",
            records.len(),
            oracle.len(),
            by_word(records).len()
        ),
        violations,
    );
}

/// Words in the output that are not in the input, and counts of zero.
fn common_violations(oracle: &Oracle, records: &[Record], v: &mut Vec<String>) {
    for (word, rs) in by_word(records) {
        if !oracle.contains_key(word) {
            v.push(format!(
                "word {word:?} is not in the input (first at {})",
                rs[0].origin
            ));
        }
    }
    for r in records.iter().filter(|r| r.count == 0) {
        v.push(format!("word {:?} has count 0 at {}", r.word, r.origin));
    }
}

fn max_counts(records: &[Record]) -> HashMap<&str, &Record> {
    let mut m: HashMap<&str, &Record> = HashMap::new();
    for r in records {
        let e = m.entry(r.word.as_str()).or_insert(r);
        if r.count > e.count {
            *e = r;
        }
    }
    m
}

/// Exactly-once: the keyed checker over the committed counts (every input word appears
/// and no other; per word, no two lines of one epoch and no count committed twice, the
/// last one equal to the oracle), and counts that only grow in epoch order.
pub fn check_exactly_once(oracle: &Oracle, records: &[Record]) {
    let updates: Vec<Update<String, u64>> = records
        .iter()
        .map(|r| Update {
            key: r.word.clone(),
            value: r.count,
            epoch: r.epoch,
            origin: r.origin.clone(),
        })
        .collect();
    check_keyed_exactly_once("word count", oracle, &updates);
    let mut v = Vec::new();
    common_violations(oracle, records, &mut v);
    for (word, rs) in by_word(records) {
        let mut rs = rs.clone();
        rs.sort_by_key(|r| (r.epoch, r.count));
        for pair in rs.windows(2) {
            let (a, b) = (pair[0], pair[1]);
            if a.count > b.count {
                v.push(format!(
                    "word {word:?}: count goes down from {} (epoch {}, {}) to {} (epoch {}, {})",
                    a.count, a.epoch, a.origin, b.count, b.epoch, b.origin
                ));
            }
        }
    }
    fail_if_any("exactly-once", oracle, records, v);
}

/// At-least-once: no loss. Every input word's maximum committed count equals the
/// oracle; duplicate lines are allowed.
pub fn check_at_least_once(oracle: &Oracle, records: &[Record]) {
    let mut v = Vec::new();
    common_violations(oracle, records, &mut v);
    let max = max_counts(records);
    for (word, &expected) in oracle {
        match max.get(word.as_str()) {
            None => v.push(format!("word {word:?} (count {expected} in the input) is missing from the output")),
            Some(r) if r.count != expected => v.push(format!(
                "word {word:?}: maximum committed count {} (epoch {}, {}) but the input has {expected}",
                r.count, r.epoch, r.origin
            )),
            Some(_) => {}
        }
    }
    fail_if_any("at-least-once", oracle, records, v);
}

/// At-most-once: nothing counted twice. No word's maximum committed count exceeds the
/// oracle; loss is allowed.
pub fn check_at_most_once(oracle: &Oracle, records: &[Record]) {
    let mut v = Vec::new();
    common_violations(oracle, records, &mut v);
    for (word, r) in max_counts(records) {
        if let Some(&expected) = oracle.get(word) {
            if r.count > expected {
                v.push(format!(
                    "word {word:?}: committed count {} (epoch {}, {}) exceeds the input's {expected}",
                    r.count, r.epoch, r.origin
                ));
            }
        }
    }
    fail_if_any("at-most-once", oracle, records, v);
}
