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
//! index entry (25 bytes): group u32 LE | kind u8 (0 base, 1 delta, 2 rebase) | offset u64 LE | len u64 LE | crc u32 LE
//! ```
//!
//! A section is bincode 1.3 of the section's value; offsets are relative to the start of
//! the payload. The index sits at the end so that a writer encodes every section
//! straight into the object's buffer, without a second copy, and fills in the header
//! (length and CRC) last. A reader checks the header and CRC first (one pass over the
//! bytes), then that every index entry lies inside the section area, in ascending key
//! group order with at most one section per group, before it decodes anything: a damaged
//! object is an error that names it, never a panic or an allocation of a size it claims.
//!
//! ## Reading some sections only (format version 4)
//!
//! Since version 4 ([`SECTION_CRCS_SINCE`]) each index entry carries its section's CRC-32,
//! and the sections lie end to end from the payload's start up to the index. The writer
//! computes each section's CRC as it ends it and combines them with the index's into the
//! payload's CRC, so that writing costs no second pass. A restore that needs only some
//! sections (the others have newer bases in later objects) reads the header and the tail
//! ([`index_from_tail`]), checks that the section CRCs and the tail combine into the
//! header's payload CRC ([`check_index`]) and the header into the manifest's object CRC,
//! plans ranged reads of the sections it needs ([`plan_reads`]), and checks each section
//! it read against its CRC ([`check_section`]). Every byte it uses is then tied to the
//! manifest's CRC as firmly as a whole read. Objects of versions 2 and 3 have 21-byte
//! entries without CRCs and are read whole.

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::codec::{self, PayloadKind, HEADER_LEN};
use crate::error::{CheckpointError, Result};

/// The first format version whose index entries carry their section's CRC-32.
pub const SECTION_CRCS_SINCE: u16 = 4;

/// Length of one index entry in bytes, in objects of format `version`.
pub fn entry_len(version: u16) -> usize {
    if version >= SECTION_CRCS_SINCE {
        4 + 1 + 8 + 8 + 4
    } else {
        4 + 1 + 8 + 8
    }
}

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
    /// The CRC-32 of its bytes, in objects of format version 4 and later.
    pub crc32: Option<u32>,
}

/// Writes a packed object section by section, in ascending key group order.
#[derive(Debug)]
pub struct PackWriter {
    what: String,
    buf: Vec<u8>,
    index: Vec<(u32, SectionKind, u64, u64, u32)>,
    /// The CRC of the sections written so far.
    crc: crc32fast::Hasher,
}

impl PackWriter {
    /// A writer for an object described as `what` in errors.
    pub fn new(what: &str) -> Self {
        PackWriter {
            what: what.to_string(),
            buf: vec![0; HEADER_LEN],
            index: Vec::new(),
            crc: crc32fast::Hasher::new(),
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

    /// Records the section that starts at `start`, with its CRC: the one pass over its
    /// bytes that the object's CRC is then combined from.
    fn end_section(&mut self, group: u32, kind: SectionKind, start: usize) {
        let offset = (start - HEADER_LEN) as u64;
        let len = (self.buf.len() - start) as u64;
        let crc = codec::crc32(&self.buf[start..]);
        self.crc
            .combine(&crc32fast::Hasher::new_with_initial_len(crc, len));
        self.index.push((group, kind, offset, len, crc));
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
        let tail_at = self.buf.len();
        for (group, kind, offset, len, crc) in &self.index {
            self.buf.extend_from_slice(&group.to_le_bytes());
            self.buf.push(kind.byte());
            self.buf.extend_from_slice(&offset.to_le_bytes());
            self.buf.extend_from_slice(&len.to_le_bytes());
            self.buf.extend_from_slice(&crc.to_le_bytes());
        }
        self.buf
            .extend_from_slice(&(self.index.len() as u32).to_le_bytes());
        self.crc.update(&self.buf[tail_at..]);
        let payload_len = (self.buf.len() - HEADER_LEN) as u64;
        let header = codec::header(PayloadKind::Packed, payload_len, self.crc.finalize());
        self.buf[..HEADER_LEN].copy_from_slice(&header);
        self.buf
    }
}

/// What the last bytes of a packed payload tell about its index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Tail {
    /// The index, read from tail bytes that held all of it.
    Index(Vec<Section>),
    /// The tail given was shorter than the index and its count: read this many bytes
    /// from the payload's end and ask again.
    Needs(usize),
}

/// Reads the index of a packed payload of format `version` and `payload_len` bytes from
/// `tail`, its last bytes (at least 4: the section count). `path` names the object in
/// errors. Every entry is checked to lie inside the section area, in ascending key group
/// order; since version 4 the sections must also lie end to end from the payload's
/// start to the index.
pub fn index_from_tail(path: &str, version: u16, payload_len: usize, tail: &[u8]) -> Result<Tail> {
    let corrupt = |reason: String| CheckpointError::Corrupt {
        path: path.to_string(),
        reason,
    };
    if payload_len < 4 || tail.len() < 4 || tail.len() > payload_len {
        return Err(corrupt(format!(
            "a packed object's payload of {payload_len} bytes is too short for its index"
        )));
    }
    let count_at = payload_len - 4;
    let count = u32::from_le_bytes(tail[tail.len() - 4..].try_into().expect("4 bytes")) as usize;
    let entry_len = entry_len(version);
    let index_len = count
        .checked_mul(entry_len)
        .filter(|l| *l <= count_at)
        .ok_or_else(|| {
            corrupt(format!(
                "index claims {count} sections, more than the payload of {payload_len} bytes holds"
            ))
        })?;
    if tail.len() < index_len + 4 {
        return Ok(Tail::Needs(index_len + 4));
    }
    let data_end = count_at - index_len;
    let entries = &tail[tail.len() - 4 - index_len..tail.len() - 4];
    let with_crcs = version >= SECTION_CRCS_SINCE;
    let mut sections = Vec::with_capacity(count);
    let mut next = 0usize;
    for entry in entries.chunks_exact(entry_len) {
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
        let crc32 =
            with_crcs.then(|| u32::from_le_bytes(entry[21..25].try_into().expect("4 bytes")));
        let end = offset
            .checked_add(len)
            .filter(|e| *e <= data_end as u64)
            .ok_or_else(|| {
                corrupt(format!(
                    "section of key group {group} at {offset}+{len} lies outside the {data_end} section bytes"
                ))
            })?;
        if let Some(last) = sections.last().filter(|s: &&Section| s.group >= group) {
            return Err(corrupt(format!(
                "key group {group} follows key group {} in the index",
                last.group
            )));
        }
        if (offset as usize) < next || (with_crcs && offset as usize != next) {
            return Err(corrupt(format!(
                "section of key group {group} at {offset} does not start where the one before it ends ({next})"
            )));
        }
        next = end as usize;
        sections.push(Section {
            group,
            kind,
            range: offset as usize..end as usize,
            crc32,
        });
    }
    if with_crcs && next != data_end {
        return Err(corrupt(format!(
            "the sections end at {next}, not where the index starts ({data_end})"
        )));
    }
    Ok(Tail::Index(sections))
}

/// Reads the index of a whole packed payload of format `version` (the bytes after the
/// header, whose checksum was checked already). `path` names the object in errors.
pub fn index(path: &str, version: u16, payload: &[u8]) -> Result<Vec<Section>> {
    match index_from_tail(path, version, payload.len(), payload)? {
        Tail::Index(sections) => Ok(sections),
        Tail::Needs(n) => Err(CheckpointError::Corrupt {
            path: path.to_string(),
            reason: format!(
                "index needs {n} bytes, more than the payload of {} bytes holds",
                payload.len()
            ),
        }),
    }
}

/// Checks that the sections' CRCs (from a version 4 index) and the CRC of `tail`, the
/// payload's last bytes from the index on, combine into `payload_crc`, the header's: the
/// index is then the one the object was written with, and each section's bytes can be
/// checked alone ([`check_section`]).
pub fn check_index(path: &str, payload_crc: u32, sections: &[Section], tail: &[u8]) -> Result<()> {
    let mut crc = crc32fast::Hasher::new();
    for s in sections {
        let Some(section_crc) = s.crc32 else {
            return Err(CheckpointError::Corrupt {
                path: path.to_string(),
                reason: format!("section of key group {} has no CRC in its index", s.group),
            });
        };
        crc.combine(&crc32fast::Hasher::new_with_initial_len(
            section_crc,
            s.range.len() as u64,
        ));
    }
    crc.update(tail);
    let combined = crc.finalize();
    if combined != payload_crc {
        return Err(CheckpointError::Corrupt {
            path: path.to_string(),
            reason: format!(
                "checksum mismatch: header {payload_crc:08x}, sections and index {combined:08x}"
            ),
        });
    }
    Ok(())
}

/// Checks the bytes read for `section` against the CRC its index records.
pub fn check_section(path: &str, section: &Section, bytes: &[u8]) -> Result<()> {
    let actual = codec::crc32(bytes);
    if bytes.len() != section.range.len() || section.crc32 != Some(actual) {
        return Err(CheckpointError::Corrupt {
            path: path.to_string(),
            reason: format!(
                "section of key group {} at {}+{}: read {} bytes with crc {actual:08x}, the index records {:08x?}",
                section.group,
                section.range.start,
                section.range.len(),
                bytes.len(),
                section.crc32
            ),
        });
    }
    Ok(())
}

/// How to read the sections a restore needs from a packed object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReadPlan {
    /// Read the whole object: it needs (almost) all of it.
    Whole,
    /// Read these payload byte ranges, ascending and disjoint; each needed section lies
    /// inside one of them.
    Ranges(Vec<std::ops::Range<usize>>),
}

/// Plans the reads of the `sections` for which `needed` holds: ranges that cover them,
/// merging neighbours less than `gap` bytes apart (a read of the gap costs less than
/// another request), or the whole object once that would read 7/8 of the sections'
/// bytes or more.
pub fn plan_reads(sections: &[Section], needed: impl Fn(&Section) -> bool, gap: usize) -> ReadPlan {
    let total: usize = sections.iter().map(|s| s.range.len()).sum();
    let mut ranges: Vec<std::ops::Range<usize>> = Vec::new();
    for s in sections.iter().filter(|s| needed(s)) {
        match ranges.last_mut() {
            Some(last) if s.range.start.saturating_sub(last.end) < gap => {
                last.end = last.end.max(s.range.end)
            }
            _ => ranges.push(s.range.clone()),
        }
    }
    let read: usize = ranges.iter().map(|r| r.len()).sum();
    if total > 0 && read >= total - total / 8 {
        return ReadPlan::Whole;
    }
    ReadPlan::Ranges(ranges)
}

/// Decodes one section from its bytes. `path` names the object in errors.
pub fn decode_section_bytes<T: DeserializeOwned>(
    path: &str,
    section: &Section,
    bytes: &[u8],
) -> Result<T> {
    decode_section_seed(path, section, bytes, std::marker::PhantomData::<T>)
}

/// [`decode_section_bytes`] through a serde `seed`, which decodes into what it holds (a
/// key group's map, say) or with what it knows (how much room the bytes can fill).
pub fn decode_section_seed<'de, S: serde::de::DeserializeSeed<'de>>(
    path: &str,
    section: &Section,
    bytes: &'de [u8],
    seed: S,
) -> Result<S::Value> {
    use bincode::Options;
    // The options of `bincode::deserialize`.
    let options = bincode::DefaultOptions::new()
        .with_fixint_encoding()
        .allow_trailing_bytes();
    options
        .deserialize_seed(seed, bytes)
        .map_err(|e| CheckpointError::Corrupt {
            path: path.to_string(),
            reason: format!(
                "section of key group {} does not decode: {e}",
                section.group
            ),
        })
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
    decode_section_bytes(path, section, bytes)
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
    let version = codec::version(bytes).unwrap_or(codec::FORMAT_VERSION);
    Ok((payload, index(path, version, payload)?))
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
        let entry = entry_len(codec::FORMAT_VERSION);
        // Forge payloads with a valid framing around a broken index.
        let reframe = |payload: &[u8]| codec::frame(PayloadKind::Packed, payload);
        let mut huge = payload.to_vec();
        let n = huge.len();
        huge[n - 4..].copy_from_slice(&u32::MAX.to_le_bytes());
        let mut outside = payload.to_vec();
        let first_len_at = n - 4 - 2 * entry + 13;
        outside[first_len_at..first_len_at + 8].copy_from_slice(&u64::MAX.to_le_bytes());
        let mut unordered = payload.to_vec();
        let second_group_at = n - 4 - entry;
        unordered[second_group_at..second_group_at + 4].copy_from_slice(&1u32.to_le_bytes());
        // Since version 4, sections lie end to end: a gap between them is damage.
        let mut gap = payload.to_vec();
        let second_offset_at = n - 4 - entry + 5;
        gap[second_offset_at] += 1;
        for forged in [huge, outside, unordered, gap, vec![1, 2]] {
            let err = open("job/chk-1/op/w0-g0", &reframe(&forged)).unwrap_err();
            assert!(err.to_string().contains("job/chk-1/op/w0-g0"), "{err}");
        }
        let mut flipped = bytes.clone();
        flipped[HEADER_LEN + 1] ^= 1;
        assert!(open("p", &flipped).is_err());
    }

    /// A packed object as versions 2 and 3 wrote it: 21-byte entries without CRCs.
    fn version_3_object(sections: &[(u32, SectionKind, Vec<u8>)]) -> Vec<u8> {
        let mut payload = Vec::new();
        let mut index = Vec::new();
        for (group, kind, bytes) in sections {
            index.extend_from_slice(&group.to_le_bytes());
            index.push(kind.byte());
            index.extend_from_slice(&(payload.len() as u64).to_le_bytes());
            index.extend_from_slice(&(bytes.len() as u64).to_le_bytes());
            payload.extend_from_slice(bytes);
        }
        payload.extend_from_slice(&index);
        payload.extend_from_slice(&(sections.len() as u32).to_le_bytes());
        let mut out = codec::frame(PayloadKind::Packed, &payload);
        out[4..6].copy_from_slice(&3u16.to_le_bytes());
        out
    }

    #[test]
    fn objects_of_version_3_are_read_whole_without_section_crcs() {
        let base = bincode::serialize(&vec![(1u64, 10u64)]).unwrap();
        let bytes = version_3_object(&[(2, SectionKind::Base, base)]);
        assert_eq!(codec::version(&bytes), Some(3));
        let (payload, sections) = open("old", &bytes).unwrap();
        assert_eq!(sections[0].crc32, None);
        let map: Vec<(u64, u64)> = decode_section("old", payload, &sections[0]).unwrap();
        assert_eq!(map, vec![(1, 10)]);
        // Its sections cannot be checked alone.
        assert!(check_index("old", 0, &sections, &[]).is_err());
        assert!(check_section("old", &sections[0], &payload[sections[0].range.clone()]).is_err());
    }

    #[test]
    fn sections_read_alone_are_tied_to_the_header_crc() {
        let bytes = object();
        let payload = &bytes[HEADER_LEN..];
        let version = codec::version(&bytes).unwrap();
        let header_crc = u32::from_le_bytes(bytes[16..20].try_into().unwrap());
        // A tail too short for the index asks for the bytes it needs.
        let needs =
            match index_from_tail("p", version, payload.len(), &payload[payload.len() - 4..]) {
                Ok(Tail::Needs(n)) => n,
                other => panic!("{other:?}"),
            };
        assert_eq!(needs, 2 * entry_len(version) + 4);
        let tail = &payload[payload.len() - needs..];
        let Tail::Index(sections) = index_from_tail("p", version, payload.len(), tail).unwrap()
        else {
            panic!("the whole index was given")
        };
        assert_eq!(sections, open("p", &bytes).unwrap().1);
        check_index("p", header_crc, &sections, tail).unwrap();
        for s in &sections {
            check_section("p", s, &payload[s.range.clone()]).unwrap();
        }
        // A damaged tail, a wrong header CRC, a damaged section: errors naming the object.
        let mut bad_tail = tail.to_vec();
        bad_tail[5] ^= 1;
        let e = check_index("p/x", header_crc, &sections, &bad_tail).unwrap_err();
        assert!(e.to_string().contains("p/x"), "{e}");
        assert!(check_index("p", header_crc ^ 1, &sections, tail).is_err());
        let mut section = payload[sections[1].range.clone()].to_vec();
        section[0] ^= 1;
        let e = check_section("p/x", &sections[1], &section).unwrap_err();
        assert!(e.to_string().contains("key group 7"), "{e}");
        assert!(check_section("p", &sections[1], &section[1..]).is_err());
    }

    fn section(group: u32, range: std::ops::Range<usize>) -> Section {
        Section {
            group,
            kind: SectionKind::Delta,
            range,
            crc32: Some(0),
        }
    }

    #[test]
    fn plans_merge_close_sections_and_read_whole_past_seven_eighths() {
        let sections: Vec<Section> = (0..16)
            .map(|g| section(g, g as usize * 100..(g as usize + 1) * 100))
            .collect();
        // Every other section, gaps of 100 bytes: separate ranges under a small gap,
        // merged under a larger one.
        let even = |s: &Section| s.group % 2 == 0 && s.group < 8;
        assert_eq!(
            plan_reads(&sections, even, 50),
            ReadPlan::Ranges(vec![0..100, 200..300, 400..500, 600..700])
        );
        assert_eq!(
            plan_reads(&sections, even, 101),
            ReadPlan::Ranges(std::iter::once(0..700).collect())
        );
        assert_eq!(
            plan_reads(&sections, |_| false, 0),
            ReadPlan::Ranges(vec![])
        );
        // 14 of 16 sections: 7/8 of the bytes, read whole.
        assert_eq!(plan_reads(&sections, |s| s.group < 14, 0), ReadPlan::Whole);
        assert!(matches!(
            plan_reads(&sections, |s| s.group < 13, 0),
            ReadPlan::Ranges(_)
        ));
        assert_eq!(plan_reads(&[], |_| true, 0), ReadPlan::Ranges(vec![]));
    }
}
