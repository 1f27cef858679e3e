//! The on-storage encoding of every checkpoint object.
//!
//! ## Design
//!
//! An object is a fixed 20-byte header followed by the payload:
//!
//! | bytes | field |
//! | --- | --- |
//! | 0..4 | magic `WEIR` |
//! | 4..6 | format version, little endian ([`FORMAT_VERSION`]) |
//! | 6..8 | payload kind ([`PayloadKind`]) |
//! | 8..16 | payload length in bytes, little endian |
//! | 16..20 | CRC-32 (IEEE) of the payload, little endian |
//!
//! State parts carry bincode 1.3 payloads; manifests carry JSON so that people can read
//! them. A reader checks magic, version, length and checksum before it decodes anything,
//! so a truncated or bit-flipped object is an error that names the object, never a
//! silently wrong state. A new format gets a new version number, and readers keep a
//! decoding path for every version they have ever written.

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::error::{CheckpointError, Result};

/// The four bytes every weir checkpoint object starts with.
pub const MAGIC: [u8; 4] = *b"WEIR";
/// The format version this build writes.
///
/// - 1: whole parts (bincode lists of key groups) and JSON manifests.
/// - 2: adds packed objects ([`PayloadKind::Packed`], written by the `pack` module) and the
///   manifest's `packed` part field; event-time operators' state moved into them.
/// - 3: adds the rebase section of packed objects (a base written over several steps,
///   followed by the changes made meanwhile).
/// - 4: each index entry of a packed object carries its section's CRC-32, and the
///   sections lie end to end, so that a restore reads and checks only the sections it
///   needs (see the `pack` module).
pub const FORMAT_VERSION: u16 = 4;
/// The oldest format version this build reads: every older object has the same header
/// and payload encodings, so it is read as it is.
pub const OLDEST_READABLE_VERSION: u16 = 1;
/// Length of the header in bytes.
pub const HEADER_LEN: usize = 20;

/// How the payload after the header is encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u16)]
pub enum PayloadKind {
    /// bincode 1.3, default options (little endian, fixed-width integers).
    Bincode = 1,
    /// UTF-8 JSON.
    Json = 2,
    /// Sections behind an index, as the `pack` module writes them.
    Packed = 3,
}

impl PayloadKind {
    fn from_u16(v: u16) -> Option<Self> {
        match v {
            1 => Some(PayloadKind::Bincode),
            2 => Some(PayloadKind::Json),
            3 => Some(PayloadKind::Packed),
            _ => None,
        }
    }
}

/// CRC-32 (IEEE) of `bytes`, as recorded in headers and manifests.
pub fn crc32(bytes: &[u8]) -> u32 {
    crc32fast::hash(bytes)
}

/// The header of an object whose payload of `len` bytes has CRC `crc`.
pub fn header(kind: PayloadKind, len: u64, crc: u32) -> [u8; HEADER_LEN] {
    let mut out = [0u8; HEADER_LEN];
    out[0..4].copy_from_slice(&MAGIC);
    out[4..6].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
    out[6..8].copy_from_slice(&(kind as u16).to_le_bytes());
    out[8..16].copy_from_slice(&len.to_le_bytes());
    out[16..20].copy_from_slice(&crc.to_le_bytes());
    out
}

/// Wraps an already encoded payload in a header.
pub fn frame(kind: PayloadKind, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN + payload.len());
    out.extend_from_slice(&header(
        kind,
        payload.len() as u64,
        crc32fast::hash(payload),
    ));
    out.extend_from_slice(payload);
    out
}

/// The CRC-32s of one object, computed in a single pass over its bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Checksums {
    /// CRC-32 of the whole object, header included: what manifests record.
    pub object: u32,
    /// CRC-32 of the bytes after the header, what the header records; `None` when the
    /// object is shorter than a header.
    pub payload: Option<u32>,
}

/// Both CRC-32s of an object in one pass: the payload's is computed over the bytes after
/// the header, and the whole object's is derived from it and the header's bytes
/// (`crc32(header ++ payload)` from `crc32(header)`, `crc32(payload)` and the payload's
/// length), so that it equals [`crc32`] of the whole object bit for bit.
pub fn checksums(bytes: &[u8]) -> Checksums {
    if bytes.len() < HEADER_LEN {
        return Checksums {
            object: crc32(bytes),
            payload: None,
        };
    }
    let (header, payload) = bytes.split_at(HEADER_LEN);
    let payload_crc = crc32fast::hash(payload);
    Checksums {
        object: append_crc(header, payload_crc, payload.len()),
        payload: Some(payload_crc),
    }
}

/// The CRC-32 of `head ++ tail` from `head`'s bytes and `tail`'s CRC and length.
fn append_crc(head: &[u8], tail_crc: u32, tail_len: usize) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(head);
    hasher.combine(&crc32fast::Hasher::new_with_initial_len(
        tail_crc,
        tail_len as u64,
    ));
    hasher.finalize()
}

/// The CRC-32 of a whole object as written, for its manifest entry.
///
/// For an object made by [`frame`] (or [`encode`], [`encode_json`]) it is derived from
/// the header, which already holds the payload's CRC, without reading the payload
/// again; for other bytes it is [`crc32`]. Either way it equals [`crc32`] of the bytes
/// whenever the header's CRC is the payload's, which [`frame`] guarantees; an object
/// whose header does not match its payload fails verification when it is read.
pub fn object_crc32(bytes: &[u8]) -> u32 {
    match parse_header(bytes) {
        Some(header) if bytes.len() - HEADER_LEN == header.len as usize => {
            append_crc(&bytes[..HEADER_LEN], header.crc, bytes.len() - HEADER_LEN)
        }
        _ => crc32(bytes),
    }
}

/// The header's fields, if `bytes` are long enough and start with the magic bytes.
struct Header {
    version: u16,
    kind: u16,
    len: u64,
    crc: u32,
}

fn parse_header(bytes: &[u8]) -> Option<Header> {
    if bytes.len() < HEADER_LEN || bytes[0..4] != MAGIC {
        return None;
    }
    Some(Header {
        version: u16::from_le_bytes([bytes[4], bytes[5]]),
        kind: u16::from_le_bytes([bytes[6], bytes[7]]),
        len: u64::from_le_bytes(bytes[8..16].try_into().expect("8 bytes")),
        crc: u32::from_le_bytes(bytes[16..20].try_into().expect("4 bytes")),
    })
}

/// The format version in an object's header, if it has one.
pub fn version(bytes: &[u8]) -> Option<u16> {
    parse_header(bytes).map(|h| h.version)
}

/// An object's header, read and checked on its own, before its payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    /// The format version the object was written with.
    pub version: u16,
    /// How its payload is encoded.
    pub kind: PayloadKind,
    /// Its payload's length in bytes.
    pub len: u64,
    /// Its payload's CRC-32.
    pub crc: u32,
    /// The CRC-32 of the whole object, derived from the header's bytes and the payload's
    /// CRC and length: what its manifest entry records, if the header is the object's.
    pub object_crc: u32,
}

/// Checks the header at the start of `bytes` (magic, readable version, known kind) and
/// returns its fields. `path` names the object in errors.
pub fn read_header(path: &str, bytes: &[u8]) -> Result<FrameHeader> {
    let corrupt = |reason: String| CheckpointError::Corrupt {
        path: path.to_string(),
        reason,
    };
    if bytes.len() < HEADER_LEN {
        return Err(corrupt(format!(
            "{} bytes is shorter than the {HEADER_LEN}-byte header (truncated?)",
            bytes.len()
        )));
    }
    let Some(header) = parse_header(bytes) else {
        return Err(corrupt(
            "missing WEIR magic bytes: not a weir checkpoint object".into(),
        ));
    };
    if !(OLDEST_READABLE_VERSION..=FORMAT_VERSION).contains(&header.version) {
        return Err(CheckpointError::VersionMismatch {
            path: path.to_string(),
            found: header.version,
            supported: FORMAT_VERSION,
        });
    }
    let kind = PayloadKind::from_u16(header.kind)
        .ok_or_else(|| corrupt(format!("unknown payload kind {}", header.kind)))?;
    if header.len > u64::MAX - HEADER_LEN as u64 {
        return Err(corrupt(format!(
            "header says {} payload bytes, more than any object holds",
            header.len
        )));
    }
    Ok(FrameHeader {
        version: header.version,
        kind,
        len: header.len,
        crc: header.crc,
        object_crc: append_crc(&bytes[..HEADER_LEN], header.crc, header.len as usize),
    })
}

/// Checks an object's header and checksum and returns its payload.
///
/// `path` names the object in errors.
pub fn unframe<'a>(path: &str, bytes: &'a [u8]) -> Result<(PayloadKind, &'a [u8])> {
    unframe_with(path, bytes, None)
}

/// [`unframe`], with the payload's CRC already computed by [`checksums`] over the same
/// bytes (`None`: compute it here).
pub(crate) fn unframe_with<'a>(
    path: &str,
    bytes: &'a [u8],
    payload_crc: Option<u32>,
) -> Result<(PayloadKind, &'a [u8])> {
    let corrupt = |reason: String| CheckpointError::Corrupt {
        path: path.to_string(),
        reason,
    };
    let header = read_header(path, bytes)?;
    let (kind, len, crc) = (header.kind, header.len, header.crc);
    let payload = &bytes[HEADER_LEN..];
    if payload.len() as u64 != len {
        return Err(corrupt(format!(
            "header says {len} payload bytes, object has {} (truncated?)",
            payload.len()
        )));
    }
    let actual = payload_crc.unwrap_or_else(|| crc32fast::hash(payload));
    if actual != crc {
        return Err(corrupt(format!(
            "checksum mismatch: header {crc:08x}, payload {actual:08x}"
        )));
    }
    Ok((kind, payload))
}

/// Encodes a value as a framed bincode object.
pub fn encode<T: Serialize + ?Sized>(what: &str, value: &T) -> Result<Vec<u8>> {
    let payload = bincode::serialize(value).map_err(|e| CheckpointError::Encode {
        what: what.to_string(),
        reason: e.to_string(),
    })?;
    Ok(frame(PayloadKind::Bincode, &payload))
}

/// Decodes a framed bincode object written by [`encode`].
pub fn decode<T: DeserializeOwned>(path: &str, bytes: &[u8]) -> Result<T> {
    let (kind, payload) = unframe(path, bytes)?;
    decode_payload(path, kind, payload)
}

/// Decodes the payload of an object whose header and checksum were checked already.
pub(crate) fn decode_payload<T: DeserializeOwned>(
    path: &str,
    kind: PayloadKind,
    payload: &[u8],
) -> Result<T> {
    if kind != PayloadKind::Bincode {
        return Err(CheckpointError::Corrupt {
            path: path.to_string(),
            reason: format!("expected a bincode payload, found {kind:?}"),
        });
    }
    bincode::deserialize(payload).map_err(|e| CheckpointError::Corrupt {
        path: path.to_string(),
        reason: format!("payload does not decode: {e}"),
    })
}

/// Encodes a value as a framed JSON object.
pub fn encode_json<T: Serialize + ?Sized>(what: &str, value: &T) -> Result<Vec<u8>> {
    let payload = serde_json::to_vec_pretty(value).map_err(|e| CheckpointError::Encode {
        what: what.to_string(),
        reason: e.to_string(),
    })?;
    Ok(frame(PayloadKind::Json, &payload))
}

/// Decodes a framed JSON object written by [`encode_json`].
pub fn decode_json<T: DeserializeOwned>(path: &str, bytes: &[u8]) -> Result<T> {
    let (kind, payload) = unframe(path, bytes)?;
    if kind != PayloadKind::Json {
        return Err(CheckpointError::Corrupt {
            path: path.to_string(),
            reason: format!("expected a JSON payload, found {kind:?}"),
        });
    }
    serde_json::from_slice(payload).map_err(|e| CheckpointError::Corrupt {
        path: path.to_string(),
        reason: format!("payload does not decode: {e}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn round_trip_preserves_the_value() {
        let value: Vec<(String, u64)> = vec![("a".into(), 1), ("b".into(), 2)];
        let bytes = encode("test", &value).unwrap();
        let back: Vec<(String, u64)> = decode("obj", &bytes).unwrap();
        assert_eq!(back, value);
    }

    #[test]
    fn json_round_trip_preserves_the_value() {
        let value = vec![1u32, 2, 3];
        let bytes = encode_json("test", &value).unwrap();
        assert_eq!(decode_json::<Vec<u32>>("obj", &bytes).unwrap(), value);
    }

    #[test]
    fn checksum_rejects_a_flipped_bit_and_names_the_object() {
        let mut bytes = encode("test", &vec![7u64; 100]).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 0x10;
        let err = decode::<Vec<u64>>("job/chk-3/op/w0", &bytes).unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, CheckpointError::Corrupt { .. }), "{msg}");
        assert!(
            msg.contains("job/chk-3/op/w0") && msg.contains("checksum"),
            "{msg}"
        );
    }

    #[test]
    fn a_header_claiming_more_bytes_than_any_object_holds_is_named() {
        let mut bytes = frame(PayloadKind::Packed, b"x");
        bytes[8..16].copy_from_slice(&u64::MAX.to_le_bytes());
        let e = read_header("job/chk-1/op/w0", &bytes)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("job/chk-1/op/w0") && e.contains("more than any object holds"),
            "{e}"
        );
        assert!(unframe("p", &bytes).is_err());
        bytes[8..16].copy_from_slice(&(u64::MAX - HEADER_LEN as u64).to_le_bytes());
        assert!(read_header("p", &bytes).is_ok());
        assert!(unframe("p", &bytes).is_err());
    }

    #[test]
    fn truncation_is_detected() {
        let bytes = encode("test", &vec![7u64; 100]).unwrap();
        for cut in [0, 5, HEADER_LEN, bytes.len() - 1] {
            let err = decode::<Vec<u64>>("obj", &bytes[..cut]).unwrap_err();
            assert!(err.to_string().contains("truncated"), "cut {cut}: {err}");
        }
    }

    #[test]
    fn objects_of_the_previous_version_are_read() {
        let mut bytes = encode("test", &vec![3u32; 4]).unwrap();
        assert_eq!(bytes[4..6], FORMAT_VERSION.to_le_bytes());
        bytes[4..6].copy_from_slice(&1u16.to_le_bytes());
        assert_eq!(decode::<Vec<u32>>("obj", &bytes).unwrap(), vec![3u32; 4]);
    }

    #[test]
    fn version_mismatch_is_an_error() {
        let mut bytes = encode("test", &1u8).unwrap();
        bytes[4..6].copy_from_slice(&99u16.to_le_bytes());
        match decode::<u8>("obj", &bytes) {
            Err(CheckpointError::VersionMismatch {
                found: 99,
                supported: FORMAT_VERSION,
                ..
            }) => {}
            other => panic!("expected a version mismatch, got {other:?}"),
        }
    }

    #[test]
    fn foreign_bytes_are_rejected() {
        let err = decode::<u8>("obj", b"hello world, this is not weir").unwrap_err();
        assert!(err.to_string().contains("magic"), "{err}");
    }

    #[test]
    fn unframe_with_a_precomputed_crc_agrees_with_unframe() {
        let bytes = encode("test", &vec![3u32; 50]).unwrap();
        let sums = checksums(&bytes);
        assert_eq!(
            unframe_with("obj", &bytes, sums.payload).unwrap(),
            unframe("obj", &bytes).unwrap()
        );
        let mut bad = bytes.clone();
        bad[HEADER_LEN + 3] ^= 1;
        let sums = checksums(&bad);
        let err = unframe_with("job/chk-1/op/w0", &bad, sums.payload).unwrap_err();
        assert!(
            err.to_string().contains("job/chk-1/op/w0") && err.to_string().contains("checksum"),
            "{err}"
        );
    }

    proptest! {
        #[test]
        fn checksums_equal_the_plain_crcs(data in proptest::collection::vec(any::<u8>(), 0..300)) {
            let sums = checksums(&data);
            prop_assert_eq!(sums.object, crc32(&data));
            prop_assert_eq!(sums.payload, data.get(HEADER_LEN..).map(crc32));
            let framed = encode("p", &data).unwrap();
            let sums = checksums(&framed);
            prop_assert_eq!(sums.object, crc32(&framed));
            prop_assert_eq!(sums.payload, Some(crc32(&framed[HEADER_LEN..])));
        }

        #[test]
        fn the_object_crc_of_a_framed_object_is_its_crc(data in proptest::collection::vec(any::<u8>(), 0..300)) {
            let framed = encode("p", &data).unwrap();
            prop_assert_eq!(object_crc32(&framed), crc32(&framed));
            let json = encode_json("p", &data).unwrap();
            prop_assert_eq!(object_crc32(&json), crc32(&json));
            // Bytes that are not a whole framed object are hashed as they are.
            prop_assert_eq!(object_crc32(&data), crc32(&data));
            prop_assert_eq!(object_crc32(&framed[..framed.len() - 1]), crc32(&framed[..framed.len() - 1]));
        }

        /// Bytes that pass the checksum but were never written by this version (another
        /// writer, a bug, a forged checksum) decode to an error naming the object: no
        /// panic, no allocation of the sizes they claim.
        #[test]
        fn a_payload_under_a_valid_checksum_decodes_or_fails_naming_the_object(payload in proptest::collection::vec(any::<u8>(), 0..400)) {
            let path = "job/chk-00000000000000000007/counts/w0";
            let bincode = frame(PayloadKind::Bincode, &payload);
            match decode::<Vec<(u32, Vec<(String, Vec<u8>, u64)>)>>(path, &bincode) {
                Ok(_) => {}
                Err(e) => prop_assert!(e.to_string().contains(path), "{}", e),
            }
            let json = frame(PayloadKind::Json, &payload);
            match decode_json::<crate::Manifest>(path, &json) {
                Ok(_) => {}
                Err(e) => prop_assert!(e.to_string().contains(path), "{}", e),
            }
            // A huge length prefix claims more than the payload holds.
            let mut claim = u64::MAX.to_le_bytes().to_vec();
            claim.extend_from_slice(&payload);
            let claimed = frame(PayloadKind::Bincode, &claim);
            prop_assert!(decode::<Vec<u64>>(path, &claimed).is_err());
        }

        #[test]
        fn any_single_byte_corruption_is_detected(data in proptest::collection::vec(any::<u8>(), 1..200), pos in any::<prop::sample::Index>(), flip in 1u8..=255) {
            let bytes = encode("p", &data).unwrap();
            let mut bad = bytes.clone();
            let i = pos.index(bad.len());
            bad[i] ^= flip;
            // A version field that still names a readable version reads as the same
            // value: every readable version encodes a bincode payload the same way.
            match decode::<Vec<u8>>("p", &bad) {
                Err(_) => {}
                Ok(value) => {
                    prop_assert!((4..6).contains(&i), "byte {} changed unnoticed", i);
                    prop_assert_eq!(value, data);
                }
            }
        }
    }
}
