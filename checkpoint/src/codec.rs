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
/// The format version this build writes and reads.
pub const FORMAT_VERSION: u16 = 1;
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
}

impl PayloadKind {
    fn from_u16(v: u16) -> Option<Self> {
        match v {
            1 => Some(PayloadKind::Bincode),
            2 => Some(PayloadKind::Json),
            _ => None,
        }
    }
}

/// CRC-32 (IEEE) of `bytes`, as recorded in headers and manifests.
pub fn crc32(bytes: &[u8]) -> u32 {
    crc32fast::hash(bytes)
}

/// Wraps an already encoded payload in a header.
pub fn frame(kind: PayloadKind, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN + payload.len());
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    out.extend_from_slice(&(kind as u16).to_le_bytes());
    out.extend_from_slice(&(payload.len() as u64).to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(payload).to_le_bytes());
    out.extend_from_slice(payload);
    out
}

/// Checks an object's header and checksum and returns its payload.
///
/// `path` names the object in errors.
pub fn unframe<'a>(path: &str, bytes: &'a [u8]) -> Result<(PayloadKind, &'a [u8])> {
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
    if bytes[0..4] != MAGIC {
        return Err(corrupt(
            "missing WEIR magic bytes: not a weir checkpoint object".into(),
        ));
    }
    let version = u16::from_le_bytes([bytes[4], bytes[5]]);
    if version != FORMAT_VERSION {
        return Err(CheckpointError::VersionMismatch {
            path: path.to_string(),
            found: version,
            supported: FORMAT_VERSION,
        });
    }
    let kind = u16::from_le_bytes([bytes[6], bytes[7]]);
    let kind = PayloadKind::from_u16(kind)
        .ok_or_else(|| corrupt(format!("unknown payload kind {kind}")))?;
    let len = u64::from_le_bytes(bytes[8..16].try_into().expect("8 bytes"));
    let crc = u32::from_le_bytes(bytes[16..20].try_into().expect("4 bytes"));
    let payload = &bytes[HEADER_LEN..];
    if payload.len() as u64 != len {
        return Err(corrupt(format!(
            "header says {len} payload bytes, object has {} (truncated?)",
            payload.len()
        )));
    }
    let actual = crc32fast::hash(payload);
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
    fn truncation_is_detected() {
        let bytes = encode("test", &vec![7u64; 100]).unwrap();
        for cut in [0, 5, HEADER_LEN, bytes.len() - 1] {
            let err = decode::<Vec<u64>>("obj", &bytes[..cut]).unwrap_err();
            assert!(err.to_string().contains("truncated"), "cut {cut}: {err}");
        }
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

    proptest! {
        #[test]
        fn any_single_byte_corruption_is_detected(data in proptest::collection::vec(any::<u8>(), 1..200), pos in any::<prop::sample::Index>(), flip in 1u8..=255) {
            let bytes = encode("p", &data).unwrap();
            let mut bad = bytes.clone();
            let i = pos.index(bad.len());
            bad[i] ^= flip;
            let decoded = decode::<Vec<u8>>("p", &bad);
            prop_assert!(decoded.is_err());
        }
    }
}
