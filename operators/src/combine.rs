//! The combiner in front of associative keyed aggregations: each worker merges the values
//! of a key within an epoch before they cross the exchange to the key's owner.
//!
//! ## Design
//!
//! The combiner holds, per open epoch, one partial aggregate per key (and a capability
//! at that epoch). When its input frontier passes an epoch, it sends that epoch's
//! partials on and drops the capability; when an epoch's map reaches [`FLUSH_AT`] keys,
//! it sends them on early, so its memory stays bounded. Invariants:
//! - a partial carries exactly the epoch of the values merged into it, so the keyed
//!   operator after it sees each epoch's values (merged) at the same epoch as without
//!   the combiner;
//! - values of one key are merged in arrival order, and partials of one key leave in the
//!   order their values arrived: with an associative `merge`, the aggregate the owner
//!   computes is the one it would compute from the values themselves;
//! - it keeps nothing across epochs: after a crash, the source replays every value that
//!   a partial in flight held, so nothing needs to be checkpointed here.

use std::borrow::Borrow;
use std::cell::RefCell;
use std::collections::hash_map::Entry;
use std::collections::{BTreeMap, HashMap};
use std::hash::Hash;
use std::rc::Rc;

use timely::container::CapacityContainerBuilder;
use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::generic::Operator;
use timely::dataflow::operators::Capability;

use crate::Records;

/// Keys an epoch's map holds before its partials are sent on early: the most a table of
/// 65 536 slots holds (7/8 of them), so that the map never doubles to 131 072 slots just
/// before it is flushed.
pub(crate) const FLUSH_AT: usize = (1 << 16) / 8 * 7;

/// One epoch's partial aggregates, by key.
type Partials<K, V> = HashMap<K, V, crate::FastHash>;

/// Merges the values of each key within each epoch with `merge`, which must be
/// associative; the output holds one value per key and epoch (or a few, when an epoch's
/// keys exceed [`FLUSH_AT`]).
pub(crate) fn combine<'s, K, V, F>(
    stream: Records<'s, (K, V)>,
    merge: Rc<RefCell<F>>,
) -> Records<'s, (K, V)>
where
    K: timely::ExchangeData + Hash + Eq,
    V: timely::ExchangeData,
    F: FnMut(&mut V, V) + 'static,
{
    combine_with(stream, merge, |(k, v), combiner| combiner.emit_owned(k, v))
}

/// Like [`combine`], for records that are not `(key, value)` pairs: `explode` emits
/// any number of keyed values per record into a [`Combiner`], which merges them with
/// `merge` into the epoch's partials, borrowing each key until it is new.
pub(crate) fn combine_with<'s, R, K, V, F, E>(
    stream: Records<'s, R>,
    merge: Rc<RefCell<F>>,
    mut explode: E,
) -> Records<'s, (K, V)>
where
    R: timely::ExchangeData,
    K: timely::ExchangeData + Hash + Eq,
    V: timely::ExchangeData,
    F: FnMut(&mut V, V) + 'static,
    E: FnMut(R, &mut Combiner<'_, K, V>) + 'static,
{
    stream.unary_frontier::<CapacityContainerBuilder<Vec<(K, V)>>, _, _, _>(
        Pipeline,
        "combine",
        move |_cap, _info| {
            let mut open: BTreeMap<u64, (Capability<u64>, Partials<K, V>)> = BTreeMap::new();
            // One map of a flushed epoch, kept for its allocation (more would keep the
            // memory of every epoch that was ever open at once).
            let mut spare: Option<Partials<K, V>> = None;
            // Partials flushed early from a full map, until they are sent on.
            let mut full: Vec<(K, V)> = Vec::new();
            move |(input, frontier), output| {
                let mut merge = merge.borrow_mut();
                input.for_each(|cap, batch| {
                    let Some(&epoch) = cap.least() else {
                        // Sent under no capability: no epoch to merge it into, and the keyed
                        // operator drops such records too.
                        return;
                    };
                    let (cap, partials) = open.entry(epoch).or_insert_with(|| {
                        let cap = cap.retain_least(0).expect("a least time");
                        (cap, spare.take().unwrap_or_default())
                    });
                    for record in batch.drain(..) {
                        explode(
                            record,
                            &mut Combiner {
                                partials: &mut *partials,
                                merge: &mut *merge,
                                full: &mut full,
                            },
                        );
                        if !full.is_empty() {
                            // Taken, not drained: a flush is rare, and its buffer is as
                            // large as a full map, not worth keeping until the next one.
                            output
                                .session(&*cap)
                                .give_iterator(std::mem::take(&mut full).into_iter());
                        }
                    }
                });
                while let Some(entry) = open.first_entry() {
                    if frontier.less_equal(entry.key()) {
                        break;
                    }
                    let (cap, mut partials) = entry.remove();
                    output.session(&cap).give_iterator(partials.drain());
                    spare.get_or_insert(partials);
                }
            }
        },
    )
}

/// Where the function of `flat_reduce_by_key` emits a record's keyed values: each value
/// is merged right away into its key's partial aggregate of the epoch, on the worker that
/// read the record, before anything crosses the exchange.
///
/// [`Combiner::emit`] takes the key by reference (a `&str` for a `String` key) and
/// copies it only when the epoch's partials do not hold it yet, so a key that repeats
/// costs a hash and a lookup, not an allocation.
pub struct Combiner<'a, K, V> {
    partials: &'a mut Partials<K, V>,
    merge: &'a mut dyn FnMut(&mut V, V),
    /// Where the partials go when the map is full, to be sent on after the record.
    full: &'a mut Vec<(K, V)>,
}

impl<K: Hash + Eq, V> Combiner<'_, K, V> {
    /// Merges `value` into the partial aggregate of `key`, copying the key (with
    /// [`ToOwned`]) only if this epoch has none for it yet.
    #[inline]
    pub fn emit<Q>(&mut self, key: &Q, value: V)
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ToOwned<Owned = K> + ?Sized,
    {
        match self.partials.get_mut(key) {
            Some(partial) => (self.merge)(partial, value),
            None => {
                self.make_room();
                self.partials.insert(key.to_owned(), value);
            }
        }
    }

    /// Merges `value` into the partial aggregate of `key`, an owned key.
    #[inline]
    pub fn emit_owned(&mut self, key: K, value: V) {
        // Only a full map pays a second lookup: every other key is one probe.
        if self.partials.len() >= FLUSH_AT && !self.partials.contains_key(&key) {
            self.flush();
        }
        match self.partials.entry(key) {
            Entry::Occupied(mut e) => (self.merge)(e.get_mut(), value),
            Entry::Vacant(e) => {
                e.insert(value);
            }
        }
    }

    /// Before a new key goes in: a map holding [`FLUSH_AT`] keys is flushed, so that it
    /// never grows past that, however many keys one record emits.
    #[inline]
    fn make_room(&mut self) {
        if self.partials.len() >= FLUSH_AT {
            self.flush();
        }
    }

    #[cold]
    #[inline(never)]
    fn flush(&mut self) {
        self.full.extend(self.partials.drain());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_map_is_flushed_at_flush_at_keys_and_never_doubles_past_65536_slots() {
        let mut partials: Partials<u64, u64> = Partials::default();
        let mut full = Vec::new();
        let mut add = |a: &mut u64, b: u64| *a += b;
        let mut combiner = Combiner {
            partials: &mut partials,
            merge: &mut add,
            full: &mut full,
        };
        // One record may emit more keys than a map holds: every key twice, in a row.
        let keys = FLUSH_AT as u64 + 1000;
        for k in 0..keys {
            combiner.emit(&k, 1);
            combiner.emit_owned(k, 1);
        }
        // A table of 65 536 slots holds FLUSH_AT keys; one more key would double it.
        assert_eq!(partials.capacity(), FLUSH_AT);
        assert_eq!(full.len(), FLUSH_AT);
        // Nothing is lost or merged twice.
        let mut sums: Vec<(u64, u64)> = full.into_iter().chain(partials.drain()).collect();
        sums.sort();
        assert_eq!(sums, (0..keys).map(|k| (k, 2)).collect::<Vec<_>>());
    }
}
