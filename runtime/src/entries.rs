//! Decoding a key group's entries from their bincode sections, with byte strings read in
//! one copy.
//!
//! Keyed state is encoded with bincode through serde. serde has no way to tell a format
//! that a sequence holds bytes, so a `Vec<u8>` key or value is written as a length and the
//! bytes (the same bytes as a byte string), but read back a byte at a time: a restore of
//! 240-byte `Vec<u8>` values spent half of its time there (BENCHMARKS.md, "Byte strings
//! in keyed state"). [`Fast`] reads a key or value whose type *is* `Vec<u8>` as a byte
//! string instead (bincode's `deserialize_byte_buf`: the length, then one copy of the
//! bytes), which is the same encoding; every other type decodes as serde would. The
//! stored format does not change, and damaged bytes are the same errors: a length past
//! the section's end is an error, never an allocation of that length.
//!
//! A section is decoded straight into its group's map (`SectionInto`): each entry's key
//! group is checked as it is read, and the entry inserted or removed at once, without
//! first collecting the section's entries into a vector of their own.

use std::any::{Any, TypeId};
use std::collections::HashMap;
use std::fmt;
use std::hash::{BuildHasher, Hash};

use serde::de::{DeserializeOwned, DeserializeSeed, Deserializer, SeqAccess, Visitor};
use serde::{Deserialize, Serialize, Serializer};
use weir_checkpoint::pack::SectionKind;

/// A `T` decoded as serde would, except that a `Vec<u8>` is read as a byte string: the
/// same bytes in bincode, read in one copy. Keyed state reads every key and value
/// through it; an operator whose stored value wraps the user's state in a struct of its
/// own reads that field through it too.
///
/// ```
/// use weir_runtime::entries::Fast;
/// let bytes = bincode::serialize(&vec![1u8, 2, 3]).unwrap();
/// let Fast(back) = bincode::deserialize::<Fast<Vec<u8>>>(&bytes).unwrap();
/// assert_eq!(back, vec![1, 2, 3]);
/// let Fast(n) = bincode::deserialize::<Fast<u64>>(&bincode::serialize(&7u64).unwrap()).unwrap();
/// assert_eq!(n, 7);
/// ```
pub struct Fast<T>(pub T);

/// `&T` encoded as serde would, except that a `Vec<u8>` is written as a byte string:
/// in bincode the same bytes as the sequence serde writes (the length, then the bytes),
/// written in one copy instead of a byte at a time. [`Fast`] reads either.
///
/// ```
/// use weir_runtime::entries::{Fast, FastRef};
/// let value = vec![1u8, 2, 3];
/// let bytes = bincode::serialize(&FastRef(&value)).unwrap();
/// assert_eq!(bytes, bincode::serialize(&value).unwrap());
/// let Fast(back) = bincode::deserialize::<Fast<Vec<u8>>>(&bytes).unwrap();
/// assert_eq!(back, value);
/// ```
pub struct FastRef<'a, T>(pub &'a T);

impl<T: Serialize + 'static> Serialize for FastRef<'_, T> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match (self.0 as &dyn Any).downcast_ref::<Vec<u8>>() {
            Some(bytes) => s.serialize_bytes(bytes),
            None => self.0.serialize(s),
        }
    }
}

/// Reads a byte string (or, from a format that does not have them, a sequence of bytes).
struct ByteBuf;

impl<'de> Visitor<'de> for ByteBuf {
    type Value = Vec<u8>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a byte string")
    }

    fn visit_byte_buf<E>(self, v: Vec<u8>) -> Result<Vec<u8>, E> {
        Ok(v)
    }

    fn visit_bytes<E>(self, v: &[u8]) -> Result<Vec<u8>, E> {
        Ok(v.to_vec())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<u8>, A::Error> {
        let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(1 << 20));
        while let Some(b) = seq.next_element()? {
            out.push(b);
        }
        Ok(out)
    }
}

impl<'de, T: DeserializeOwned + 'static> Deserialize<'de> for Fast<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        if TypeId::of::<T>() != TypeId::of::<Vec<u8>>() {
            return T::deserialize(d).map(Fast);
        }
        let mut slot = Some(d.deserialize_byte_buf(ByteBuf)?);
        let value = (&mut slot as &mut dyn Any)
            .downcast_mut::<Option<T>>()
            .and_then(Option::take)
            .expect("T is Vec<u8>");
        Ok(Fast(value))
    }
}

/// How many entries of `T` `bytes` bytes could hold at most, each taking at least its
/// size in memory: a count read from damaged bytes never reserves room for more entries
/// than its section could fill, so the memory it reserves stays proportional to the
/// section's length (a hash map's slots and control bytes add a small factor).
fn most<T>(bytes: usize) -> usize {
    bytes / std::mem::size_of::<T>().max(1)
}

/// A section of a key group, decoded into the group's `map` as it is read: each entry is
/// inserted or removed at once, without collecting the section's entries first.
///
/// - A base holds `(key, value)` entries and replaces the group's state.
/// - A delta holds `(key, value or tombstone)` entries, applied in order.
/// - A rebase is laid out like a delta and replaces the group's state.
///
/// A base or rebase starts from an empty map, with room reserved for the section's entry
/// count as far as `bytes`, the section's length, could hold entries. Every key is
/// checked against `group` with `group_of` before it is applied: the decoding is
/// `Ok(Err(found))` at the first key of another group `found`, and that entry and the
/// ones after it are not applied. The map then holds part of the section (the entries
/// before it) and must be discarded.
pub(crate) struct SectionInto<'a, K, V, H, G> {
    pub(crate) map: &'a mut HashMap<K, V, H>,
    pub(crate) kind: SectionKind,
    pub(crate) bytes: usize,
    pub(crate) group: u32,
    pub(crate) group_of: G,
}

impl<'de, K, V, H, G> DeserializeSeed<'de> for SectionInto<'_, K, V, H, G>
where
    K: DeserializeOwned + Hash + Eq + 'static,
    V: DeserializeOwned + 'static,
    H: BuildHasher,
    G: Fn(&K) -> u32,
{
    type Value = Result<(), u32>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de, K, V, H, G> Visitor<'de> for SectionInto<'_, K, V, H, G>
where
    K: DeserializeOwned + Hash + Eq + 'static,
    V: DeserializeOwned + 'static,
    H: BuildHasher,
    G: Fn(&K) -> u32,
{
    type Value = Result<(), u32>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a key group's entries")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        if self.kind.is_base() {
            self.map.clear();
            let room = seq.size_hint().unwrap_or(0).min(most::<(K, V)>(self.bytes));
            self.map.reserve(room);
        }
        let stranger = |k: &K| {
            let g = (self.group_of)(k);
            (g != self.group).then_some(g)
        };
        if self.kind == SectionKind::Base {
            while let Some((Fast(k), Fast(v))) = seq.next_element::<(Fast<K>, Fast<V>)>()? {
                if let Some(found) = stranger(&k) {
                    return Ok(Err(found));
                }
                self.map.insert(k, v);
            }
        } else {
            while let Some((Fast(k), v)) = seq.next_element::<(Fast<K>, Option<Fast<V>>)>()? {
                if let Some(found) = stranger(&k) {
                    return Ok(Err(found));
                }
                match v {
                    Some(Fast(v)) => self.map.insert(k, v),
                    None => self.map.remove(&k),
                };
            }
        }
        Ok(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options() -> impl bincode::Options {
        use bincode::Options;
        bincode::DefaultOptions::new()
            .with_fixint_encoding()
            .allow_trailing_bytes()
    }

    /// Every key in group 0.
    fn any<K>(_: &K) -> u32 {
        0
    }

    fn base_into<K, V>(map: &mut HashMap<K, V>, bytes: &[u8]) -> bincode::Result<Result<(), u32>>
    where
        K: DeserializeOwned + Hash + Eq + 'static,
        V: DeserializeOwned + 'static,
    {
        use bincode::Options;
        let seed = SectionInto {
            map,
            kind: SectionKind::Base,
            bytes: bytes.len(),
            group: 0,
            group_of: any::<K>,
        };
        options().deserialize_seed(seed, bytes)
    }

    fn section_into<K, V>(
        map: &mut HashMap<K, V>,
        bytes: &[u8],
        kind: SectionKind,
    ) -> bincode::Result<Result<(), u32>>
    where
        K: DeserializeOwned + Hash + Eq + 'static,
        V: DeserializeOwned + 'static,
    {
        use bincode::Options;
        let seed = SectionInto {
            map,
            kind,
            bytes: bytes.len(),
            group: 0,
            group_of: any::<K>,
        };
        options().deserialize_seed(seed, bytes)
    }

    #[test]
    fn byte_strings_decode_as_the_sequences_they_were_written_as() {
        let changes: Vec<(Vec<u8>, Option<Vec<u8>>)> = vec![
            (b"k1".to_vec(), Some(vec![0, 1, 2, 255])),
            (b"k2".to_vec(), None),
            (b"k3".to_vec(), Some(Vec::new())),
        ];
        let bytes = bincode::serialize(&changes).unwrap();
        let mut back = HashMap::from([(b"k2".to_vec(), vec![1u8])]);
        section_into(&mut back, &bytes, SectionKind::Delta)
            .unwrap()
            .unwrap();
        let expected = HashMap::from([
            (b"k1".to_vec(), vec![0, 1, 2, 255]),
            (b"k3".to_vec(), Vec::new()),
        ]);
        assert_eq!(back, expected);

        // Other types decode as serde would, byte vectors inside them included.
        type Nested = (u64, Option<(String, Vec<u8>)>);
        let nested: Vec<Nested> = vec![(7, Some(("x".into(), vec![9; 300]))), (8, None)];
        let bytes = bincode::serialize(&nested).unwrap();
        let mut back = HashMap::from([(8u64, ("y".to_string(), vec![1u8]))]);
        section_into(&mut back, &bytes, SectionKind::Delta)
            .unwrap()
            .unwrap();
        assert_eq!(back, HashMap::from([(7, ("x".to_string(), vec![9; 300]))]));

        let base: HashMap<Vec<u8>, Vec<u8>> = (0..100u8)
            .map(|i| (vec![i; i as usize], vec![i; 3]))
            .collect();
        let bytes = bincode::serialize(&base.iter().collect::<Vec<_>>()).unwrap();
        let mut back = HashMap::new();
        base_into(&mut back, &bytes).unwrap().unwrap();
        assert_eq!(back, base);
    }

    #[test]
    fn changes_apply_in_order_and_a_rebase_starts_from_an_empty_group() {
        // A key written, removed and written again: the last change wins.
        let changes: Vec<(u64, Option<u64>)> = vec![
            (1, Some(10)),
            (2, Some(20)),
            (1, None),
            (3, None),
            (2, Some(21)),
        ];
        let bytes = bincode::serialize(&changes).unwrap();
        let before = HashMap::from([(3u64, 30u64), (4, 40)]);

        let mut delta = before.clone();
        section_into(&mut delta, &bytes, SectionKind::Delta)
            .unwrap()
            .unwrap();
        assert_eq!(delta, HashMap::from([(2, 21), (4, 40)]));

        let mut rebase = before;
        section_into(&mut rebase, &bytes, SectionKind::Rebase)
            .unwrap()
            .unwrap();
        assert_eq!(rebase, HashMap::from([(2, 21)]));
    }

    #[test]
    fn a_key_of_another_group_stops_the_section_and_names_its_group() {
        use bincode::Options;
        // Even keys are in group 0, odd keys in group 1.
        let parity = |k: &u64| (k % 2) as u32;
        let entries: Vec<(u64, u64)> = vec![(2, 1), (5, 2), (4, 3)];
        for kind in [SectionKind::Base, SectionKind::Delta, SectionKind::Rebase] {
            let bytes = if kind == SectionKind::Base {
                bincode::serialize(&entries).unwrap()
            } else {
                let changes: Vec<(u64, Option<u64>)> =
                    entries.iter().map(|(k, v)| (*k, Some(*v))).collect();
                bincode::serialize(&changes).unwrap()
            };
            let mut map = HashMap::from([(6u64, 6u64)]);
            let seed = SectionInto {
                map: &mut map,
                kind,
                bytes: bytes.len(),
                group: 0,
                group_of: parity,
            };
            assert_eq!(
                options().deserialize_seed(seed, &bytes).unwrap(),
                Err(1),
                "{kind:?}"
            );
            // The entries before the stranger were applied; it and those after it were
            // not. A base or rebase started from an empty group, a delta did not.
            let mut expected = HashMap::from([(2, 1)]);
            if kind == SectionKind::Delta {
                expected.insert(6, 6);
            }
            assert_eq!(map, expected, "{kind:?}");
        }
    }

    #[test]
    fn byte_strings_are_written_as_the_bytes_serde_writes_for_them() {
        for value in [Vec::new(), vec![0u8], vec![7u8; 300]] {
            let entry = (FastRef(&5u64), Some(FastRef(&value)));
            assert_eq!(
                bincode::serialize(&entry).unwrap(),
                bincode::serialize(&(5u64, Some(&value))).unwrap()
            );
        }
        let other = ("x".to_string(), vec![1u8, 2]);
        assert_eq!(
            bincode::serialize(&FastRef(&other)).unwrap(),
            bincode::serialize(&other).unwrap()
        );
    }

    #[test]
    fn damaged_byte_strings_are_errors_without_allocating_their_length() {
        let changes = vec![(1u64, Some(vec![5u8; 64]))];
        let bytes = bincode::serialize(&changes).unwrap();
        let mut map: HashMap<u64, Vec<u8>> = HashMap::new();
        // Cut short inside the value.
        assert!(section_into(&mut map, &bytes[..bytes.len() - 10], SectionKind::Delta).is_err());
        // A value's length (after the count, the key and the tag) set to far more than
        // the section holds.
        let mut long = bytes.clone();
        long[17..25].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(section_into(&mut map, &long, SectionKind::Delta).is_err());
        // An entry count far beyond the entries: an error once they run out, and a
        // rebase reserves room for no more entries than the bytes could fill.
        let mut many = bytes;
        many[..8].copy_from_slice(&(u64::MAX / 2).to_le_bytes());
        assert!(section_into(&mut map, &many, SectionKind::Delta).is_err());
        let mut map: HashMap<u64, Vec<u8>> = HashMap::new();
        assert!(section_into(&mut map, &many, SectionKind::Rebase).is_err());
        assert!(map.capacity() < 16, "reserved {}", map.capacity());
    }

    #[test]
    fn a_damaged_base_count_reserves_no_more_room_than_its_bytes_could_fill() {
        let base: Vec<(u64, u64)> = (0..100).map(|i| (i, i * 2)).collect();
        let mut bytes = bincode::serialize(&base).unwrap();
        let mut map = HashMap::new();
        base_into(&mut map, &bytes).unwrap().unwrap();
        assert_eq!(map, base.iter().copied().collect());

        // A count of a billion entries: an error once the 100 run out, with room
        // reserved for about as many entries as the 1 608 bytes could fill (100).
        bytes[..8].copy_from_slice(&1_000_000_000u64.to_le_bytes());
        let mut map: HashMap<u64, u64> = HashMap::new();
        assert!(base_into(&mut map, &bytes).is_err());
        assert!(map.capacity() < 256, "reserved {}", map.capacity());
    }
}
