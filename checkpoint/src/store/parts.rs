//! State and position parts: written once, read back and verified (size, whole-object
//! CRC, header) before anything is decoded.

use std::collections::BTreeSet;

use futures::{StreamExt, TryStreamExt};
use object_store::path::Path;
use object_store::{ObjectStoreExt, PutPayload};

use super::{CheckpointStore, Multipart};
use crate::codec;
use crate::error::{CheckpointError, Result};
use crate::ids::WorkerIndex;
use crate::manifest::{Manifest, PartEntry};
use crate::pack::{self, Section};

/// A checkpoint part once read back and verified: its size and whole-object CRC match
/// its manifest entry, and its header and payload CRC are sound.
///
/// A part read for a restore may hold only the sections of a packed object that the
/// restore needs ([`CheckpointStore::get_part_needed`]), each checked against the CRC
/// its index records, the index against the header and the header against the manifest.
#[derive(Debug, Clone)]
pub struct VerifiedPart {
    entry: PartEntry,
    data: Data,
    kind: codec::PayloadKind,
    version: u16,
}

/// The bytes a [`VerifiedPart`] holds.
#[derive(Debug, Clone)]
enum Data {
    /// The whole object, header included.
    Whole(bytes::Bytes),
    /// Some sections of a packed object.
    Sections {
        /// The object's whole index.
        sections: Vec<Section>,
        /// The payload ranges read, ascending: (payload offset, bytes).
        chunks: Vec<(usize, bytes::Bytes)>,
        /// Every byte read: header, tail and ranges.
        read: u64,
    },
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
        let version = codec::version(&bytes).unwrap_or(codec::FORMAT_VERSION);
        Ok(VerifiedPart {
            entry: entry.clone(),
            data: Data::Whole(bytes),
            kind,
            version,
        })
    }

    /// A packed part of which only the `chunks` (payload offset, bytes) were read, with
    /// the index `sections` already checked against `header` ([`pack::check_index`]):
    /// checks each section for which `needed` holds against its CRC. `read` counts every
    /// byte read.
    fn from_sections(
        entry: &PartEntry,
        header: &codec::FrameHeader,
        sections: Vec<Section>,
        chunks: Vec<(usize, bytes::Bytes)>,
        read: u64,
        needed: impl Fn(&Section) -> bool,
    ) -> Result<Self> {
        let part = VerifiedPart {
            entry: entry.clone(),
            data: Data::Sections {
                sections,
                chunks,
                read,
            },
            kind: header.kind,
            version: header.version,
        };
        if let Data::Sections { sections, .. } = &part.data {
            for section in sections.iter().filter(|s| needed(s)) {
                pack::check_section(&entry.path, section, part.section_bytes(section)?)?;
            }
        }
        Ok(part)
    }

    /// The entry from the manifest.
    pub fn entry(&self) -> &PartEntry {
        &self.entry
    }

    /// The object's bytes as written (header included), if it was read whole.
    pub fn whole(&self) -> Option<&bytes::Bytes> {
        match &self.data {
            Data::Whole(bytes) => Some(bytes),
            Data::Sections { .. } => None,
        }
    }

    /// How many of the object's bytes were read: all of them, or the header, the index
    /// and the sections a restore needed.
    pub fn bytes_read(&self) -> u64 {
        match &self.data {
            Data::Whole(bytes) => bytes.len() as u64,
            Data::Sections { read, .. } => *read,
        }
    }

    /// The payload after the header; an error for a part of which only some sections
    /// were read.
    pub fn payload(&self) -> Result<&[u8]> {
        match &self.data {
            Data::Whole(bytes) => Ok(&bytes[codec::HEADER_LEN..]),
            Data::Sections { .. } => Err(CheckpointError::Corrupt {
                path: self.entry.path.clone(),
                reason: "only some sections of this packed object were read, not its whole payload"
                    .into(),
            }),
        }
    }

    /// Decodes the bincode payload (as [`codec::decode`] does, without checking the
    /// checksum a second time).
    pub fn decode<T: serde::de::DeserializeOwned>(&self) -> Result<T> {
        codec::decode_payload(&self.entry.path, self.kind, self.payload()?)
    }

    /// The sections of a packed object (see [`crate::pack`]), from its index.
    pub fn sections(&self) -> Result<Vec<Section>> {
        if self.kind != codec::PayloadKind::Packed {
            return Err(CheckpointError::Corrupt {
                path: self.entry.path.clone(),
                reason: format!("expected a packed object, found {:?}", self.kind),
            });
        }
        match &self.data {
            Data::Whole(_) => pack::index(&self.entry.path, self.version, self.payload()?),
            Data::Sections { sections, .. } => Ok(sections.clone()),
        }
    }

    /// The bytes of one section of a packed object; an error for a section that was not
    /// read.
    pub fn section_bytes(&self, section: &Section) -> Result<&[u8]> {
        let found = match &self.data {
            Data::Whole(bytes) => bytes[codec::HEADER_LEN..].get(section.range.clone()),
            Data::Sections { chunks, .. } => {
                let at = chunks.partition_point(|(start, _)| *start <= section.range.start);
                at.checked_sub(1).and_then(|i| {
                    let (start, bytes) = &chunks[i];
                    bytes.get(section.range.start - start..section.range.end - start)
                })
            }
        };
        found.ok_or_else(|| CheckpointError::Corrupt {
            path: self.entry.path.clone(),
            reason: format!(
                "section of key group {} at {}+{} was not read (or lies outside the object)",
                section.group,
                section.range.start,
                section.range.len()
            ),
        })
    }

    /// Decodes one section of a packed object.
    pub fn decode_section<T: serde::de::DeserializeOwned>(&self, section: &Section) -> Result<T> {
        pack::decode_section_bytes(&self.entry.path, section, self.section_bytes(section)?)
    }

    /// Decodes one section of a packed object through a serde `seed` (see
    /// [`pack::decode_section_seed`]).
    pub fn decode_section_seed<'de, S: serde::de::DeserializeSeed<'de>>(
        &'de self,
        section: &Section,
        seed: S,
    ) -> Result<S::Value> {
        pack::decode_section_seed(
            &self.entry.path,
            section,
            self.section_bytes(section)?,
            seed,
        )
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

/// An object of `found` bytes where the manifest recorded `recorded`: corrupt, named
/// with both sizes.
fn wrong_size(path: &Path, recorded: u64, found: u64) -> CheckpointError {
    CheckpointError::Corrupt {
        path: path.to_string(),
        reason: format!("object has {found} bytes; the manifest recorded {recorded} bytes"),
    }
}

/// An I/O error reading the local file of `path`, as the object store would report it:
/// a missing file is `NotFound`.
fn local_read_error(path: &Path, e: std::io::Error) -> CheckpointError {
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
    CheckpointError::storage("get", path, e)
}

/// The result of a blocking read of the local file of `path`: a panic in it is resumed
/// here, a task that did not run is an error naming `path`.
async fn local_joined<T>(path: &Path, read: tokio::task::JoinHandle<Result<T>>) -> Result<T> {
    match read.await {
        Ok(result) => result,
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Err(e) => Err(CheckpointError::storage(
            "get",
            path,
            object_store::Error::Generic {
                store: "LocalFileSystem",
                source: Box::new(e),
            },
        )),
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

/// Packed parts in an object store this large are read section by section when a
/// restore needs only some of their sections; a smaller one costs fewer requests read
/// whole. In a local directory every such part is read section by section.
const SECTIONS_FROM: u64 = 1 << 20;
/// The tail of a packed part read first, in the hope that it holds the whole index.
const TAIL_GUESS: usize = 64 << 10;
/// Needed sections of a local file closer than this are mapped as one range.
const LOCAL_GAP: usize = 64 << 10;
/// Needed sections in an object store closer than this are read in one request.
const REMOTE_GAP: usize = 1 << 20;

/// Where [`CheckpointStore::get_part_needed`] reads from.
enum Source {
    /// A file of a local directory.
    Local(std::path::PathBuf),
    /// An object store; the version (ETag) of the object that the first read returned.
    Remote(std::sync::Mutex<Option<String>>),
}

/// The bytes `range` of `file`, mapped read-only (see [`map_file`] for why that is sound),
/// or read where the file system cannot map files.
fn map_range(file: &std::fs::File, range: std::ops::Range<u64>) -> std::io::Result<bytes::Bytes> {
    let len = (range.end - range.start) as usize;
    if len == 0 {
        return Ok(bytes::Bytes::new());
    }
    // SAFETY: as in `map_file`: a read-only mapping of a checkpoint object, which weir
    // never writes once it exists.
    match unsafe {
        memmap2::MmapOptions::new()
            .offset(range.start)
            .len(len)
            .populate()
            .map(file)
    } {
        Ok(map) => Ok(bytes::Bytes::from_owner(map)),
        Err(_) => {
            use std::os::unix::fs::FileExt;
            let mut out = vec![0; len];
            file.read_exact_at(&mut out, range.start)?;
            Ok(out.into())
        }
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
            let bytes = map_file(&file).map_err(|e| local_read_error(&name, e))?;
            VerifiedPart::verify(&entry, bytes)
        });
        local_joined(&path, read).await
    }

    /// Reads the sections of a packed part that a restore needs: every section but those
    /// of the key groups in `skip`, which later parts of the chain replace with a newer
    /// base ([`crate::manifest::superseded_groups`]).
    ///
    /// It reads the header and the index, checks the header against the manifest's size
    /// and CRC and the index against the header ([`pack::check_index`]), reads the needed
    /// sections in ranged reads, several at once from an object store, and checks each
    /// against its CRC. An object of a format before section CRCs, of which a restore
    /// needs nearly every byte, or small and in an object store, is read whole
    /// ([`Self::get_part`]).
    pub async fn get_part_needed(
        &self,
        entry: &PartEntry,
        skip: &BTreeSet<u32>,
    ) -> Result<VerifiedPart> {
        let remote = self.local_files.is_none();
        if entry.packed.is_none() || skip.is_empty() || (remote && entry.size < SECTIONS_FROM) {
            return self.get_part(entry).await;
        }
        let path = Path::from(entry.path.as_str());
        let source = match &self.local_files {
            Some(files) => Source::Local(
                files
                    .path_to_filesystem(&path)
                    .map_err(|e| CheckpointError::storage("get", &path, e))?,
            ),
            None => Source::Remote(std::sync::Mutex::new(None)),
        };
        let read = |range: std::ops::Range<u64>| self.read_range(&source, &path, entry.size, range);
        // A store that cannot serve a range still serves the object whole.
        let Ok(head) = read(0..codec::HEADER_LEN as u64).await else {
            return self.get_part(entry).await;
        };
        let header = codec::read_header(&entry.path, &head)?;
        if header.version < pack::SECTION_CRCS_SINCE || header.kind != codec::PayloadKind::Packed {
            return self.get_part(entry).await;
        }
        if header.len + codec::HEADER_LEN as u64 != entry.size || header.object_crc != entry.crc32 {
            return Err(CheckpointError::Corrupt {
                path: entry.path.clone(),
                reason: format!(
                    "header claims {} bytes with crc {:08x}; the manifest recorded {} bytes with crc {:08x}",
                    header.len + codec::HEADER_LEN as u64,
                    header.object_crc,
                    entry.size,
                    entry.crc32
                ),
            });
        }
        let payload_len = header.len as usize;
        let tail_of = |n: usize| (entry.size - n as u64)..entry.size;
        let mut tail = read(tail_of(TAIL_GUESS.min(payload_len))).await?;
        let mut bytes_read = (head.len() + tail.len()) as u64;
        let mut parsed = pack::index_from_tail(&entry.path, header.version, payload_len, &tail)?;
        if let pack::Tail::Needs(n) = parsed {
            tail = read(tail_of(n)).await?;
            bytes_read += tail.len() as u64;
            parsed = pack::index_from_tail(&entry.path, header.version, payload_len, &tail)?;
        }
        let pack::Tail::Index(sections) = parsed else {
            return Err(CheckpointError::Corrupt {
                path: entry.path.clone(),
                reason: "the index is longer than the bytes read for it".into(),
            });
        };
        let index_len = sections.len() * pack::entry_len(header.version) + 4;
        pack::check_index(
            &entry.path,
            header.crc,
            &sections,
            &tail[tail.len() - index_len..],
        )?;
        let needed = |s: &Section| !skip.contains(&s.group);
        let (gap, chunk) = match source {
            Source::Local(_) => (LOCAL_GAP, usize::MAX),
            Source::Remote(_) => (REMOTE_GAP, RANGE_BYTES as usize),
        };
        let pack::ReadPlan::Ranges(ranges) = pack::plan_reads(&sections, needed, gap) else {
            return self.get_part(entry).await;
        };
        // Each planned range in requests of at most `chunk` bytes, several in flight.
        let base = codec::HEADER_LEN as u64;
        let pieces: Vec<(usize, std::ops::Range<u64>)> = ranges
            .iter()
            .enumerate()
            .flat_map(|(i, r)| {
                (r.start..r.end).step_by(chunk).map(move |at| {
                    (
                        i,
                        base + at as u64..base + at.saturating_add(chunk).min(r.end) as u64,
                    )
                })
            })
            .collect();
        let mut reads = futures::stream::iter(pieces)
            .map(|(i, r)| async move { Ok::<_, CheckpointError>((i, read(r).await?)) })
            .buffered(RANGES_IN_FLIGHT);
        let mut chunks: Vec<(usize, Vec<bytes::Bytes>)> =
            ranges.iter().map(|r| (r.start, Vec::new())).collect();
        while let Some(piece) = reads.next().await {
            let (i, bytes) = piece?;
            bytes_read += bytes.len() as u64;
            chunks[i].1.push(bytes);
        }
        let chunks = chunks
            .into_iter()
            .map(|(start, mut pieces)| match pieces.len() {
                1 => (start, pieces.pop().expect("one piece")),
                _ => (start, pieces.concat().into()),
            })
            .collect();
        VerifiedPart::from_sections(entry, &header, sections, chunks, bytes_read, needed)
    }

    /// Reads `range` of the object at `path`, whose manifest records `size` bytes: a
    /// read-only mapping of a local file's pages, or a ranged read from an object store
    /// that must come from the same version of the object as the reads before it.
    async fn read_range(
        &self,
        source: &Source,
        path: &Path,
        size: u64,
        range: std::ops::Range<u64>,
    ) -> Result<bytes::Bytes> {
        let len = range.end - range.start;
        match source {
            Source::Local(file) => {
                let file = file.clone();
                let (name, recorded) = (path.clone(), size);
                let read = tokio::task::spawn_blocking(move || {
                    let error = |e| local_read_error(&name, e);
                    let f = std::fs::File::open(&file).map_err(error)?;
                    let found = f.metadata().map_err(error)?.len();
                    if found != recorded {
                        return Err(wrong_size(&name, recorded, found));
                    }
                    map_range(&f, range).map_err(error)
                });
                local_joined(path, read).await
            }
            Source::Remote(version) => {
                let if_match = version.lock().expect("poisoned").clone();
                let opts = object_store::GetOptions {
                    range: Some(object_store::GetRange::Bounded(range)),
                    if_match,
                    ..Default::default()
                };
                let storage = |e| CheckpointError::storage("get", path, e);
                let got = self.store.get_opts(path, opts).await.map_err(storage)?;
                if got.meta.size != size {
                    return Err(wrong_size(path, size, got.meta.size));
                }
                let e_tag = got.meta.e_tag.clone();
                let bytes = got.bytes().await.map_err(storage)?;
                if bytes.len() as u64 != len {
                    return Err(CheckpointError::Corrupt {
                        path: path.to_string(),
                        reason: format!("a ranged read of {len} bytes returned {}", bytes.len()),
                    });
                }
                // Later ranges must come from the same object: one replaced meanwhile
                // fails its precondition instead of mixing two objects' bytes.
                let mut version = version.lock().expect("poisoned");
                if version.is_none() {
                    *version = e_tag;
                }
                Ok(bytes)
            }
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
    ///
    /// With `Reads::Needed`, a packed part is read only for the sections a restore
    /// decodes ([`Self::get_part_needed`]); with `Reads::Whole`, every byte is read and
    /// checked.
    pub(super) async fn verify_parts(
        &self,
        manifest: &Manifest,
        keep: &(dyn Fn(&PartEntry) -> bool + Sync),
        reads: Reads,
    ) -> Result<Vec<VerifiedPart>> {
        let skip = match reads {
            Reads::Needed => crate::manifest::superseded_groups(&manifest.parts),
            Reads::Whole => vec![BTreeSet::new(); manifest.parts.len()],
        };
        let mut waiting = manifest.parts.iter().zip(&skip);
        let mut reads = futures::stream::FuturesOrdered::new();
        let mut kept = Vec::new();
        loop {
            while reads.len() < VERIFY_CONCURRENCY {
                let Some((part, skip)) = waiting.next() else {
                    break;
                };
                reads.push_back(self.get_part_needed(part, skip));
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

/// What [`CheckpointStore::verify_parts`] reads of each part.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Reads {
    /// Every byte.
    Whole,
    /// What a restore decodes.
    Needed,
}
