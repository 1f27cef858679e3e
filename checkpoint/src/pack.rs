//! Packed objects: one object per operator, worker and checkpoint that holds many key
//! groups' sections, each a base (the key group's whole state), a delta (the entries
//! changed since the previous object of the chain, with tombstones) or a rebase (the key
//! group's whole state as upserts and tombstones applied to an empty group), behind an
//! index of byte ranges.
//!
//! ## Design
//!
//! ```text
//! | header (20 bytes, kind Packed) | section 0 | section 1 | ... | index | n: u32 LE |
//! index entry (21 bytes): group u32 LE | kind u8 (0 base, 1 delta, 2 rebase) | offset u64 LE | len u64 LE
//! ```
//!
//! A section is bincode 1.3 of the section's value; offsets are relative to the start of
//! the payload. The index sits at the end so that a writer encodes every section
//! straight into the object's buffer, without a second copy, and fills in the header
//! (length and CRC) last. A reader checks the header and CRC first (one pass over the
//! bytes), then that every index entry lies inside the section area, in ascending key
//! group order with at most one section per group, before it decodes anything: a damaged
//! object is an error that names it, never a panic or an allocation of a size it claims.

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::codec::{self, PayloadKind, HEADER_LEN};
use crate::error::{CheckpointError, Result};

/// Length of one index entry in bytes.
const ENTRY_LEN: usize = 4 + 1 + 8 + 8;

/// What a section of a packed object holds for its key group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SectionKind {
    /// The key group's whole state.
    Base,
    /// The key group's entries changed since the previous object of its chain: a new value
    /// per changed key, or a tombstone for a removed key.
    Delta,
    /// The key group's whole state, laid out like a delta (values and tombstones) and
    /// applied to an empty group in order: a base encoded over several steps while the
    /// group kept changing, followed by the entries changed meanwhile (format version 3).
    Rebase,
}

impl SectionKind {
    /// Whether the section replaces its group's whole state.
    pub fn is_base(self) -> bool {
        matches!(self, SectionKind::Base | SectionKind::Rebase)
    }

    fn byte(self) -> u8 {
        match self {
            SectionKind::Base => 0,
            SectionKind::Delta => 1,
            SectionKind::Rebase => 2,
        }
    }
}

/// One section of a packed object, as its index describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Section {
    /// The key group.
    pub group: u32,
    /// Base or delta.
    pub kind: SectionKind,
    /// Its bytes within the payload.
    pub range: std::ops::Range<usize>,
}

/// Writes a packed object section by section, in ascending key group order.
#[derive(Debug)]
pub struct PackWriter {
    what: String,
    buf: Vec<u8>,
    index: Vec<(u32, SectionKind, u64, u64)>,
}

impl PackWriter {
    /// A writer for an object described as `what` in errors.
    pub fn new(what: &str) -> Self {
        PackWriter {
            what: what.to_string(),
            buf: vec![0; HEADER_LEN],
            index: Vec::new(),
        }
    }

    /// Appends the section of `group`; groups must come in ascending order.
    pub fn push<T: Serialize + ?Sized>(
        &mut self,
        group: u32,
        kind: SectionKind,
        value: &T,
    ) -> Result<()> {
        self.check_order(group)?;
        let start = self.buf.len();
        bincode::serialize_into(&mut self.buf, value).map_err(|e| CheckpointError::Encode {
            what: self.what.clone(),
            reason: e.to_string(),
        })?;
        self.end_section(group, kind, start);
        Ok(())
    }

    /// Appends the section of `group` from parts already encoded in bincode 1.3, which
    /// together form the section's value; groups must come in ascending order.
    pub fn push_encoded(&mut self, group: u32, kind: SectionKind, parts: &[&[u8]]) -> Result<()> {
        self.check_order(group)?;
        let start = self.buf.len();
        self.buf.reserve(parts.iter().map(|p| p.len()).sum());
        for part in parts {
            self.buf.extend_from_slice(part);
        }
        self.end_section(group, kind, start);
        Ok(())
    }

    fn check_order(&self, group: u32) -> Result<()> {
        if self.index.last().is_some_and(|(g, ..)| *g >= group) {
            return Err(CheckpointError::Encode {
                what: self.what.clone(),
                reason: format!("key group {group} pushed out of order"),
            });
        }
        Ok(())
    }

    fn end_section(&mut self, group: u32, kind: SectionKind, start: usize) {
        let offset = (start - HEADER_LEN) as u64;
        self.index
            .push((group, kind, offset, (self.buf.len() - start) as u64));
    }

    /// The bytes written so far, sections only.
    pub fn len(&self) -> usize {
        self.buf.len() - HEADER_LEN
    }

    /// Whether no section was pushed.
    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
    }

    /// The finished object: header, sections, index.
    pub fn finish(mut self) -> Vec<u8> {
        for (group, kind, offset, len) in &self.index {
            self.buf.extend_from_slice(&group.to_le_bytes());
            self.buf.push(kind.byte());
            self.buf.extend_from_slice(&offset.to_le_bytes());
            self.buf.extend_from_slice(&len.to_le_bytes());
        }
        self.buf
            .extend_from_slice(&(self.index.len() as u32).to_le_bytes());
        let payload_len = (self.buf.len() - HEADER_LEN) as u64;
        let crc = codec::crc32(&self.buf[HEADER_LEN..]);
        let header = codec::header(PayloadKind::Packed, payload_len, crc);
        self.buf[..HEADER_LEN].copy_from_slice(&header);
        self.buf
    }
}

/// Reads the index of a packed payload (the bytes after the header, whose checksum was
/// checked already). `path` names the object in errors.
pub fn index(path: &str, payload: &[u8]) -> Result<Vec<Section>> {
    let corrupt = |reason: String| CheckpointError::Corrupt {
        path: path.to_string(),
        reason,
    };
    let Some(count_at) = payload.len().checked_sub(4) else {
        return Err(corrupt(format!(
            "a packed object's payload of {} bytes is too short for its index",
            payload.len()
        )));
    };
    let count = u32::from_le_bytes(payload[count_at..].try_into().expect("4 bytes")) as usize;
    let index_len = count
        .checked_mul(ENTRY_LEN)
        .filter(|l| *l <= count_at)
        .ok_or_else(|| {
            corrupt(format!(
                "index claims {count} sections, more than the payload of {} bytes holds",
                payload.len()
            ))
        })?;
    let data_end = count_at - index_len;
    let mut sections = Vec::with_capacity(count);
    let mut next = 0usize;
    for entry in payload[data_end..count_at].chunks_exact(ENTRY_LEN) {
        let group = u32::from_le_bytes(entry[0..4].try_into().expect("4 bytes"));
        let kind = match entry[4] {
            0 => SectionKind::Base,
            1 => SectionKind::Delta,
            2 => SectionKind::Rebase,
            k => {
                return Err(corrupt(format!(
                    "section of key group {group} has kind {k}"
                )))
            }
        };
        let offset = u64::from_le_bytes(entry[5..13].try_into().expect("8 bytes"));
        let len = u64::from_le_bytes(entry[13..21].try_into().expect("8 bytes"));
        let end = offset
            .checked_add(len)
            .filter(|e| *e <= data_end as u64)
            .ok_or_else(|| {
                corrupt(format!(
                    "section of key group {group} at {offset}+{len} lies outside the {data_end} section bytes"
                ))
            })?;
        if sections.last().is_some_and(|s: &Section| s.group >= group) {
            return Err(corrupt(format!(
                "key group {group} follows key group {} in the index",
                sections.last().map_or(0, |s: &Section| s.group)
            )));
        }
        if (offset as usize) < next {
            return Err(corrupt(format!(
                "section of key group {group} overlaps the one before it"
            )));
        }
        next = end as usize;
        sections.push(Section {
            group,
            kind,
            range: offset as usize..end as usize,
        });
    }
    Ok(sections)
}

/// Decodes one section of a packed payload. `path` names the object in errors.
pub fn decode_section<T: DeserializeOwned>(
    path: &str,
    payload: &[u8],
    section: &Section,
) -> Result<T> {
    let bytes = payload
        .get(section.range.clone())
        .ok_or_else(|| CheckpointError::Corrupt {
            path: path.to_string(),
            reason: format!("section of key group {} is out of bounds", section.group),
        })?;
    bincode::deserialize(bytes).map_err(|e| CheckpointError::Corrupt {
        path: path.to_string(),
        reason: format!(
            "section of key group {} does not decode: {e}",
            section.group
        ),
    })
}

/// Checks a whole packed object (header, checksum, index) and returns its payload and
/// sections.
pub fn open<'a>(path: &str, bytes: &'a [u8]) -> Result<(&'a [u8], Vec<Section>)> {
    let (kind, payload) = codec::unframe(path, bytes)?;
    if kind != PayloadKind::Packed {
        return Err(CheckpointError::Corrupt {
            path: path.to_string(),
            reason: format!("expected a packed object, found {kind:?}"),
        });
    }
    Ok((payload, index(path, payload)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn object() -> Vec<u8> {
        let mut w = PackWriter::new("t");
        w.push(3, SectionKind::Base, &vec![(1u64, 10u64), (2, 20)])
            .unwrap();
        w.push(7, SectionKind::Delta, &vec![(5u64, Some(50u64)), (6, None)])
            .unwrap();
        assert!(w.push(7, SectionKind::Delta, &()).is_err());
        w.finish()
    }

    #[test]
    fn sections_round_trip_through_the_index() {
        let bytes = object();
        let (payload, sections) = open("p", &bytes).unwrap();
        assert_eq!(sections.len(), 2);
        assert_eq!(
            (sections[0].group, sections[0].kind),
            (3, SectionKind::Base)
        );
        assert_eq!(
            (sections[1].group, sections[1].kind),
            (7, SectionKind::Delta)
        );
        let base: Vec<(u64, u64)> = decode_section("p", payload, &sections[0]).unwrap();
        assert_eq!(base, vec![(1, 10), (2, 20)]);
        let delta: Vec<(u64, Option<u64>)> = decode_section("p", payload, &sections[1]).unwrap();
        assert_eq!(delta, vec![(5, Some(50)), (6, None)]);
        // The whole-object CRC from the header equals a pass over the bytes.
        assert_eq!(codec::object_crc32(&bytes), codec::crc32(&bytes));
        let empty = PackWriter::new("e").finish();
        assert_eq!(open("e", &empty).unwrap().1, vec![]);
    }

    #[test]
    fn a_rebase_section_pushed_in_encoded_parts_reads_as_one_list() {
        let mut w = PackWriter::new("t");
        let first = bincode::serialize(&(1u64, Some(10u64))).unwrap();
        let later = bincode::serialize(&[(2u64, Some(20u64)), (1, None)]).unwrap();
        let count = 3u64.to_le_bytes();
        w.push_encoded(4, SectionKind::Rebase, &[&count, &first, &later])
            .unwrap();
        assert!(w.push_encoded(4, SectionKind::Rebase, &[]).is_err());
        let bytes = w.finish();
        let (payload, sections) = open("p", &bytes).unwrap();
        assert_eq!(sections[0].kind, SectionKind::Rebase);
        assert!(SectionKind::Rebase.is_base() && !SectionKind::Delta.is_base());
        let entries: Vec<(u64, Option<u64>)> = decode_section("p", payload, &sections[0]).unwrap();
        assert_eq!(entries, vec![(1, Some(10)), (2, Some(20)), (1, None)]);
    }

    #[test]
    fn damaged_indexes_are_errors_naming_the_object() {
        let bytes = object();
        let (payload, _) = open("p", &bytes).unwrap();
        // Forge payloads with a valid framing around a broken index.
        let reframe = |payload: &[u8]| codec::frame(PayloadKind::Packed, payload);
        let mut huge = payload.to_vec();
        let n = huge.len();
        huge[n - 4..].copy_from_slice(&u32::MAX.to_le_bytes());
        let mut outside = payload.to_vec();
        let first_len_at = n - 4 - 2 * ENTRY_LEN + 13;
        outside[first_len_at..first_len_at + 8].copy_from_slice(&u64::MAX.to_le_bytes());
        let mut unordered = payload.to_vec();
        let second_group_at = n - 4 - ENTRY_LEN;
        unordered[second_group_at..second_group_at + 4].copy_from_slice(&1u32.to_le_bytes());
        for forged in [huge, outside, unordered, vec![1, 2]] {
            let err = open("job/chk-1/op/w0-g0", &reframe(&forged)).unwrap_err();
            assert!(err.to_string().contains("job/chk-1/op/w0-g0"), "{err}");
        }
        let mut flipped = bytes.clone();
        flipped[HEADER_LEN + 1] ^= 1;
        assert!(open("p", &flipped).is_err());
    }
}
