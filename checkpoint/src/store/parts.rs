//! State and position parts: written once, read back and verified (size, whole-object
//! CRC, header) before anything is decoded.

use futures::{StreamExt, TryStreamExt};
use object_store::path::Path;
use object_store::{ObjectStoreExt, PutPayload};

use super::{CheckpointStore, Multipart};
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

    /// The sections of a packed object (see [`crate::pack`]), from its index.
    pub fn sections(&self) -> Result<Vec<crate::pack::Section>> {
        if self.kind != codec::PayloadKind::Packed {
            return Err(CheckpointError::Corrupt {
                path: self.entry.path.clone(),
                reason: format!("expected a packed object, found {:?}", self.kind),
            });
        }
        crate::pack::index(&self.entry.path, self.payload())
    }

    /// Decodes one section of a packed object.
    pub fn decode_section<T: serde::de::DeserializeOwned>(
        &self,
        section: &crate::pack::Section,
    ) -> Result<T> {
        crate::pack::decode_section(&self.entry.path, self.payload(), section)
    }
}

/// A multipart upload that is aborted, on the runtime it ran on, if dropped before it
/// was taken out: its future was dropped (timed out) half-way.
struct AbortUnlessDone(Option<Box<dyn object_store::MultipartUpload>>);

impl Drop for AbortUnlessDone {
    fn drop(&mut self) {
        let Some(mut upload) = self.0.take() else {
            return;
        };
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                if let Err(e) = upload.abort().await {
                    tracing::warn!(error = %e, "could not abort a multipart upload that was given up; the server may keep its parts until its own clean-up");
                }
            });
        }
    }
}

/// The bytes of a part's file in a local directory, mapped read-only where the file
/// system allows it, read into memory where it does not.
///
/// Checkpoint objects are immutable: weir writes each one once (the local store writes
/// a temporary file and renames it into place, so even a rewrite of the same name is a
/// new file) and never modifies or truncates it; deleting it (retention) leaves a
/// mapping intact. Every byte is then checked against the manifest's size and CRC
/// before anything is decoded, as for a part read from an object store.
fn map_file(file: &std::path::Path) -> std::io::Result<bytes::Bytes> {
    let f = std::fs::File::open(file)?;
    let meta = f.metadata()?;
    if meta.is_dir() {
        // As the local store reports it: there is no object of that name.
        return Err(std::io::Error::new(
            std::io::ErrorKind::NotFound,
            format!("{} is a directory", file.display()),
        ));
    }
    if meta.len() == 0 {
        return Ok(bytes::Bytes::new());
    }
    // SAFETY: the mapping is read-only, and the file is a checkpoint object that weir
    // never writes once it exists (above). The mapping is shared with the file, so
    // another program that rewrote the file while it is mapped would change the bytes
    // after their check, and one that truncated it would make a read of the lost pages
    // fault (SIGBUS); the README says that nothing else may change a checkpoint
    // directory's files. Mapped bytes are dropped once the workers have restored.
    match unsafe { memmap2::MmapOptions::new().populate().map(&f) } {
        Ok(map) => Ok(bytes::Bytes::from_owner(map)),
        // A file system that cannot map files (some FUSE mounts): read it instead.
        Err(_) => std::fs::read(file).map(bytes::Bytes::from),
    }
}

/// Parts from an object store this large are read in ranges, several at once.
pub(super) const RANGED_FROM: u64 = 32 << 20;
/// The size of each ranged read.
const RANGE_BYTES: u64 = 8 << 20;
/// Ranged reads of one part in flight at once.
const RANGES_IN_FLIGHT: usize = 8;

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
            packed: None,
        };
        match self.multipart {
            Some(multipart) if bytes.len() >= multipart.from => {
                self.put_in_chunks(&path, bytes, multipart).await?
            }
            _ => {
                self.store
                    .put(&path, PutPayload::from(bytes))
                    .await
                    .map_err(|e| CheckpointError::storage("put", &path, e))?;
            }
        }
        Ok(entry)
    }

    /// Uploads `bytes` to `path` as a multipart upload of `multipart.chunk`-byte parts,
    /// a few at once, so that no single request carries a large object (and runs into
    /// the client's per-request timeout). A failed upload, and one dropped before it
    /// ended (the caller's checkpoint timeout), is aborted, so that the server drops the
    /// parts it holds; the object then does not exist.
    async fn put_in_chunks(
        &self,
        path: &Path,
        bytes: bytes::Bytes,
        multipart: Multipart,
    ) -> Result<()> {
        let storage = |e| CheckpointError::storage("put (multipart)", path, e);
        let upload = self.store.put_multipart(path).await.map_err(storage)?;
        let mut upload = AbortUnlessDone(Some(upload));
        let live = upload.0.as_mut().expect("not done yet");
        let chunks: Vec<_> = (0..bytes.len())
            .step_by(multipart.chunk)
            .map(|at| {
                let end = (at + multipart.chunk).min(bytes.len());
                live.put_part(PutPayload::from(bytes.slice(at..end)))
            })
            .collect();
        let sent: object_store::Result<Vec<()>> = futures::stream::iter(chunks)
            .buffer_unordered(multipart.concurrency)
            .try_collect()
            .await;
        let done = match sent {
            Ok(_) => live.complete().await.map(|_| ()),
            Err(e) => Err(e),
        };
        let mut live = upload.0.take().expect("not done yet");
        if let Err(e) = done {
            if let Err(abort) = live.abort().await {
                tracing::warn!(path = %path, error = %abort, "could not abort a failed multipart upload; the server may keep its parts until its own clean-up");
            }
            return Err(storage(e));
        }
        Ok(())
    }

    /// Reads a part and checks it against its manifest entry and its own header.
    ///
    /// In a local directory the part's file is mapped into memory instead of read into a
    /// fresh buffer, and checked on a blocking thread: a restore then costs about a pass
    /// over the page cache rather than a copy into newly faulted memory, which is what
    /// bounded it (see BENCHMARKS.md, "Restoring 1 GiB of keyed state").
    pub async fn get_part(&self, entry: &PartEntry) -> Result<VerifiedPart> {
        let path = Path::from(entry.path.as_str());
        let Some(files) = &self.local_files else {
            let bytes = match entry.size >= RANGED_FROM {
                true => self.get_in_ranges(&path, entry.size).await?,
                false => self.get(&path).await?,
            };
            return VerifiedPart::verify(entry, bytes);
        };
        let file = files
            .path_to_filesystem(&path)
            .map_err(|e| CheckpointError::storage("get", &path, e))?;
        let entry = entry.clone();
        let name = path.clone();
        let read = tokio::task::spawn_blocking(move || {
            let bytes = map_file(&file).map_err(|e| {
                let source = Box::new(e);
                let e = match source.kind() {
                    std::io::ErrorKind::NotFound => object_store::Error::NotFound {
                        path: path.to_string(),
                        source,
                    },
                    _ => object_store::Error::Generic {
                        store: "LocalFileSystem",
                        source,
                    },
                };
                CheckpointError::storage("get", &path, e)
            })?;
            VerifiedPart::verify(&entry, bytes)
        });
        match read.await {
            Ok(part) => part,
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Err(e) => Err(CheckpointError::storage(
                "get",
                &name,
                object_store::Error::Generic {
                    store: "LocalFileSystem",
                    source: Box::new(e),
                },
            )),
        }
    }

    /// Reads a large object of `size` bytes (its manifest's size) as ranged reads of
    /// [`RANGE_BYTES`], [`RANGES_IN_FLIGHT`] at once: one request streams one
    /// connection's worth, many fill the link to an object store. The first range also
    /// tells the object's real size; an object of another size is corrupt, named with
    /// both sizes.
    async fn get_in_ranges(&self, path: &Path, size: u64) -> Result<bytes::Bytes> {
        let range = |start: u64| start..(start + RANGE_BYTES).min(size);
        let get = |range: std::ops::Range<u64>, if_match: Option<String>| async move {
            let opts = object_store::GetOptions {
                range: Some(object_store::GetRange::Bounded(range)),
                if_match,
                ..Default::default()
            };
            let got = self.store.get_opts(path, opts).await?;
            let (total, version) = (got.meta.size, got.meta.e_tag.clone());
            Ok::<_, object_store::Error>((total, version, got.bytes().await?))
        };
        let (total, version, first) = match get(range(0), None).await {
            Ok(first) => first,
            Err(e @ object_store::Error::NotFound { .. }) => {
                return Err(CheckpointError::storage("get", path, e))
            }
            // An empty object, or a server that does not serve ranges: read it whole,
            // and let the check against the manifest judge it.
            Err(_) => return self.get(path).await,
        };
        if total != size {
            return Err(CheckpointError::Corrupt {
                path: path.to_string(),
                reason: format!("object has {total} bytes; the manifest recorded {size} bytes"),
            });
        }
        let mut out = Vec::with_capacity(size as usize);
        out.extend_from_slice(&first);
        // The later ranges must come from the same object: one replaced meanwhile fails
        // its precondition instead of mixing two objects' bytes.
        let mut reads = futures::stream::iter((RANGE_BYTES..size).step_by(RANGE_BYTES as usize))
            .map(|start| get(range(start), version.clone()))
            .buffered(RANGES_IN_FLIGHT);
        while let Some(read) = reads.next().await {
            let (_, _, bytes) = read.map_err(|e| CheckpointError::storage("get", path, e))?;
            out.extend_from_slice(&bytes);
        }
        if out.len() as u64 != size {
            return Err(CheckpointError::Corrupt {
                path: path.to_string(),
                reason: format!(
                    "ranged reads returned {} bytes; the manifest recorded {size} bytes",
                    out.len()
                ),
            });
        }
        Ok(out.into())
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
