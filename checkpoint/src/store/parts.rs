//! State and position parts: written once, read back and verified (size, whole-object
//! CRC, header) before anything is decoded.

use futures::StreamExt;
use object_store::path::Path;
use object_store::{ObjectStoreExt, PutPayload};

use super::CheckpointStore;
use crate::codec;
use crate::error::{CheckpointError, Result};
use crate::ids::WorkerIndex;
use crate::manifest::{Manifest, PartEntry};

/// A checkpoint part once read back and verified: its size and whole-object CRC match
/// its manifest entry, and its header and payload CRC are sound.
#[derive(Debug, Clone)]
pub struct VerifiedPart {
    entry: PartEntry,
    bytes: bytes::Bytes,
    kind: codec::PayloadKind,
}

impl VerifiedPart {
    /// Checks `bytes`, read from `entry.path`, against `entry` and against their own
    /// header, computing each CRC once (see [`codec::checksums`]).
    pub fn verify(entry: &PartEntry, bytes: bytes::Bytes) -> Result<Self> {
        let sums = codec::checksums(&bytes);
        if bytes.len() as u64 != entry.size || sums.object != entry.crc32 {
            return Err(CheckpointError::Corrupt {
                path: entry.path.clone(),
                reason: format!(
                    "object has {} bytes with crc {:08x}; the manifest recorded {} bytes with crc {:08x}",
                    bytes.len(),
                    sums.object,
                    entry.size,
                    entry.crc32
                ),
            });
        }
        let (kind, _) = codec::unframe_with(&entry.path, &bytes, sums.payload)?;
        Ok(VerifiedPart {
            entry: entry.clone(),
            bytes,
            kind,
        })
    }

    /// The entry from the manifest.
    pub fn entry(&self) -> &PartEntry {
        &self.entry
    }

    /// The object's bytes as written (header included).
    pub fn bytes(&self) -> &bytes::Bytes {
        &self.bytes
    }

    /// The payload after the header.
    pub fn payload(&self) -> &[u8] {
        &self.bytes[codec::HEADER_LEN..]
    }

    /// Decodes the bincode payload (as [`codec::decode`] does, without checking the
    /// checksum a second time).
    pub fn decode<T: serde::de::DeserializeOwned>(&self) -> Result<T> {
        codec::decode_payload(&self.entry.path, self.kind, self.payload())
    }
}

/// How many parts a verification reads at once.
const VERIFY_CONCURRENCY: usize = 4;

impl CheckpointStore {
    /// Writes a framed object at `path` and returns its manifest entry.
    pub async fn put_part(
        &self,
        path: Path,
        operator: &str,
        worker: WorkerIndex,
        key_groups: (u32, u32),
        bytes: impl Into<bytes::Bytes>,
    ) -> Result<PartEntry> {
        let bytes: bytes::Bytes = bytes.into();
        let entry = PartEntry {
            operator: operator.to_string(),
            worker,
            key_group_start: key_groups.0,
            key_group_end: key_groups.1,
            path: path.to_string(),
            size: bytes.len() as u64,
            crc32: codec::object_crc32(&bytes),
        };
        self.store
            .put(&path, PutPayload::from(bytes))
            .await
            .map_err(|e| CheckpointError::storage("put", &path, e))?;
        Ok(entry)
    }

    /// Reads a part and checks it against its manifest entry and its own header.
    pub async fn get_part(&self, entry: &PartEntry) -> Result<VerifiedPart> {
        let path = Path::from(entry.path.as_str());
        let bytes = self.get(&path).await?;
        VerifiedPart::verify(entry, bytes)
    }

    /// Reads and verifies every part of `manifest`, a few at once; returns the verified
    /// parts for which `keep` is true, in manifest order, and drops the others once
    /// checked. The error is the first failing part's in manifest order.
    pub(super) async fn verify_parts(
        &self,
        manifest: &Manifest,
        keep: &(dyn Fn(&PartEntry) -> bool + Sync),
    ) -> Result<Vec<VerifiedPart>> {
        let mut waiting = manifest.parts.iter();
        let mut reads = futures::stream::FuturesOrdered::new();
        let mut kept = Vec::new();
        loop {
            while reads.len() < VERIFY_CONCURRENCY {
                let Some(part) = waiting.next() else { break };
                reads.push_back(self.get_part(part));
            }
            let Some(part) = reads.next().await else {
                return Ok(kept);
            };
            let part = part?;
            if keep(part.entry()) {
                kept.push(part);
            }
        }
    }
}
