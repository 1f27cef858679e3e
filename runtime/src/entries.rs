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

use std::any::{Any, TypeId};
use std::collections::HashMap;
use std::fmt;
use std::hash::{BuildHasher, Hash};
use std::marker::PhantomData;

use serde::de::{DeserializeOwned, DeserializeSeed, Deserializer, SeqAccess, Visitor};
use serde::{Deserialize, Serialize, Serializer};

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

/// How many entries to reserve room for ahead, at most: a length read from damaged
/// bytes must not allocate more than about 1 MiB before the entries run out (as serde's
/// own collections do).
fn cautious<T>(hint: Option<usize>) -> usize {
    hint.unwrap_or(0)
        .min((1 << 20) / std::mem::size_of::<T>().max(1))
}

/// A base section: the group's `(key, value)` entries, decoded into `map`, which is
/// empty. The section's entry count reserves room ahead, as far as `bytes`, the
/// section's length, could hold entries: a count read from damaged bytes never reserves
/// more memory than the section takes.
pub(crate) struct BaseInto<'a, K, V, H> {
    pub(crate) map: &'a mut HashMap<K, V, H>,
    pub(crate) bytes: usize,
}

impl<'de, K, V, H> DeserializeSeed<'de> for BaseInto<'_, K, V, H>
where
    K: DeserializeOwned + Hash + Eq + 'static,
    V: DeserializeOwned + 'static,
    H: BuildHasher,
{
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de, K, V, H> Visitor<'de> for BaseInto<'_, K, V, H>
where
    K: DeserializeOwned + Hash + Eq + 'static,
    V: DeserializeOwned + 'static,
    H: BuildHasher,
{
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a key group's entries")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let most = self.bytes / std::mem::size_of::<(K, V)>().max(1);
        self.map.reserve(seq.size_hint().unwrap_or(0).min(most));
        while let Some((Fast(k), Fast(v))) = seq.next_element::<(Fast<K>, Fast<V>)>()? {
            self.map.insert(k, v);
        }
        Ok(())
    }
}

/// A delta or rebase section: `(key, value or tombstone)` entries, in order.
pub(crate) struct Changes<K, V>(pub(crate) Vec<(K, Option<V>)>);

impl<'de, K, V> Deserialize<'de> for Changes<K, V>
where
    K: DeserializeOwned + 'static,
    V: DeserializeOwned + 'static,
{
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Entries<K, V>(PhantomData<(K, V)>);
        impl<'de, K, V> Visitor<'de> for Entries<K, V>
        where
            K: DeserializeOwned + 'static,
            V: DeserializeOwned + 'static,
        {
            type Value = Vec<(K, Option<V>)>;

            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a key group's changes")
            }

            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                let mut out = Vec::with_capacity(cautious::<(K, Option<V>)>(seq.size_hint()));
                while let Some((Fast(k), v)) = seq.next_element::<(Fast<K>, Option<Fast<V>>)>()? {
                    out.push((k, v.map(|Fast(v)| v)));
                }
                Ok(out)
            }
        }
        d.deserialize_seq(Entries(PhantomData)).map(Changes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base_into<K, V>(map: &mut HashMap<K, V>, bytes: &[u8]) -> bincode::Result<()>
    where
        K: DeserializeOwned + Hash + Eq + 'static,
        V: DeserializeOwned + 'static,
    {
        use bincode::Options;
        let seed = BaseInto {
            map,
            bytes: bytes.len(),
        };
        bincode::DefaultOptions::new()
            .with_fixint_encoding()
            .allow_trailing_bytes()
            .deserialize_seed(seed, bytes)
    }

    #[test]
    fn byte_strings_decode_as_the_sequences_they_were_written_as() {
        let changes: Vec<(Vec<u8>, Option<Vec<u8>>)> = vec![
            (b"k1".to_vec(), Some(vec![0, 1, 2, 255])),
            (Vec::new(), None),
            (b"k3".to_vec(), Some(Vec::new())),
        ];
        let bytes = bincode::serialize(&changes).unwrap();
        let Changes(back) = bincode::deserialize::<Changes<Vec<u8>, Vec<u8>>>(&bytes).unwrap();
        assert_eq!(back, changes);

        // Other types decode as serde would, byte vectors inside them included.
        let nested: Vec<(u64, Option<(String, Vec<u8>)>)> =
            vec![(7, Some(("x".into(), vec![9; 300]))), (8, None)];
        let bytes = bincode::serialize(&nested).unwrap();
        let Changes(back) =
            bincode::deserialize::<Changes<u64, (String, Vec<u8>)>>(&bytes).unwrap();
        assert_eq!(back, nested);

        let base: HashMap<Vec<u8>, Vec<u8>> = (0..100u8)
            .map(|i| (vec![i; i as usize], vec![i; 3]))
            .collect();
        let bytes = bincode::serialize(&base.iter().collect::<Vec<_>>()).unwrap();
        let mut back = HashMap::new();
        base_into(&mut back, &bytes).unwrap();
        assert_eq!(back, base);
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
        // Cut short inside the value.
        assert!(bincode::deserialize::<Changes<u64, Vec<u8>>>(&bytes[..bytes.len() - 10]).is_err());
        // A value's length (after the count, the key and the tag) set to far more than
        // the section holds.
        let mut long = bytes.clone();
        long[17..25].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(bincode::deserialize::<Changes<u64, Vec<u8>>>(&long).is_err());
        // An entry count far beyond the entries.
        let mut many = bytes;
        many[..8].copy_from_slice(&(u64::MAX / 2).to_le_bytes());
        assert!(bincode::deserialize::<Changes<u64, Vec<u8>>>(&many).is_err());
    }

    #[test]
    fn a_damaged_base_count_reserves_no_more_room_than_its_bytes_could_fill() {
        let base: Vec<(u64, u64)> = (0..100).map(|i| (i, i * 2)).collect();
        let mut bytes = bincode::serialize(&base).unwrap();
        let mut map = HashMap::new();
        base_into(&mut map, &bytes).unwrap();
        assert_eq!(map, base.iter().copied().collect());

        // A count of a billion entries: an error once the 100 run out, with room
        // reserved for about as many entries as the 1 608 bytes could fill (100).
        bytes[..8].copy_from_slice(&1_000_000_000u64.to_le_bytes());
        let mut map: HashMap<u64, u64> = HashMap::new();
        assert!(base_into(&mut map, &bytes).is_err());
        assert!(map.capacity() < 256, "reserved {}", map.capacity());
    }
}
