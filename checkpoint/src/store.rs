//! Checkpoint storage on `object_store`.
//!
//! ## What weir needs from storage
//!
//! * read-after-write for single objects (every `object_store` backend gives it);
//! * an atomic create-if-absent (`PutMode::Create`) for manifests, so that two writers
//!   can never both complete the same checkpoint. The local file system, the memory
//!   store and S3 servers with conditional writes provide it;
//! * listing by prefix, for restore and retention.

use std::collections::BTreeSet;
use std::sync::Arc;

use futures::{StreamExt, TryStreamExt};
use object_store::local::LocalFileSystem;
use object_store::memory::InMemory;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload};

use crate::codec;
use crate::error::{CheckpointError, Result, Retry};
use crate::layout::{self, Layout};
use crate::manifest::{Manifest, PartEntry};
use crate::protocol::{self, RestoreTarget};

/// A job's checkpoints in one object store.
#[derive(Debug, Clone)]
pub struct CheckpointStore {
    store: Arc<dyn ObjectStore>,
    url: String,
    layout: Layout,
    /// The root directory when the store is a local file system, whose empty
    /// directories are removed after deletes (object stores have no directories).
    local_root: Option<std::path::PathBuf>,
}

/// The local directory a checkpoint URL points to, if it is one.
fn local_root(url: &str) -> Option<std::path::PathBuf> {
    if let Some(p) = url.strip_prefix("file://") {
        Some(p.into())
    } else if url.contains("://") {
        None
    } else {
        Some(url.into())
    }
}

/// Opens an object store from a checkpoint URL.
///
/// Accepted forms: a plain path (`/var/weir`, `./chk`), `file:///abs/path`, `memory://`
/// (lives as long as the process, for tests), and `s3://bucket/prefix`. S3 credentials
/// and endpoint come from the usual `AWS_*` environment variables
/// (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_REGION`, `AWS_ENDPOINT`); they are
/// never logged.
pub fn open_url(url: &str) -> Result<Arc<dyn ObjectStore>> {
    let invalid = |reason: String| CheckpointError::InvalidUrl {
        url: url.to_string(),
        reason,
    };
    if url.is_empty() {
        return Err(invalid("it is empty".into()));
    }
    if url.starts_with("memory://") {
        return Ok(Arc::new(InMemory::new()));
    }
    if let Some(rest) = url.strip_prefix("s3://") {
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            return Err(invalid("no bucket name after s3://".into()));
        }
        return open_s3(bucket, prefix).map_err(invalid);
    }
    let path = if let Some(p) = url.strip_prefix("file://") {
        std::path::PathBuf::from(p)
    } else if url.contains("://") {
        return Err(invalid("unknown scheme".into()));
    } else {
        std::path::PathBuf::from(url)
    };
    std::fs::create_dir_all(&path)
        .map_err(|e| invalid(format!("cannot create directory {}: {e}", path.display())))?;
    let fs = LocalFileSystem::new_with_prefix(&path).map_err(|e| invalid(e.to_string()))?;
    Ok(Arc::new(fs))
}

/// An S3 (or S3-compatible) store of `bucket`, under `prefix` if not empty.
#[cfg(feature = "s3")]
fn open_s3(bucket: &str, prefix: &str) -> std::result::Result<Arc<dyn ObjectStore>, String> {
    let mut b = object_store::aws::AmazonS3Builder::from_env()
        .with_bucket_name(bucket)
        .with_conditional_put(object_store::aws::S3ConditionalPut::ETagMatch);
    if let Ok(endpoint) =
        std::env::var("AWS_ENDPOINT").or_else(|_| std::env::var("AWS_ENDPOINT_URL"))
    {
        b = b
            .with_endpoint(&endpoint)
            .with_allow_http(endpoint.starts_with("http://"))
            .with_virtual_hosted_style_request(false);
    }
    if std::env::var("AWS_REGION").is_err() && std::env::var("AWS_DEFAULT_REGION").is_err() {
        b = b.with_region("us-east-1");
    }
    let s3 = b.build().map_err(|e| e.to_string())?;
    Ok(if prefix.is_empty() {
        Arc::new(s3)
    } else {
        Arc::new(object_store::prefix::PrefixStore::new(
            s3,
            prefix.trim_end_matches('/'),
        ))
    })
}

/// Without the `s3` feature, an `s3://` URL is refused with how to get support for it.
#[cfg(not(feature = "s3"))]
fn open_s3(_bucket: &str, _prefix: &str) -> std::result::Result<Arc<dyn ObjectStore>, String> {
    Err("this build of weir has no S3 support: enable the `s3` feature of `weir` (or `weir-checkpoint`)".into())
}

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

/// A checkpoint chosen for a restore, with the verified parts the caller asked to keep.
#[derive(Debug, Clone)]
pub struct RestorePoint {
    /// The checkpoint's manifest.
    pub manifest: Manifest,
    /// The parts kept, in manifest order, read and verified once.
    pub parts: Vec<VerifiedPart>,
}

impl CheckpointStore {
    /// Opens the checkpoints of `job` under `url`.
    pub fn open(url: &str, job: &str) -> Result<Self> {
        if job.is_empty() || job.contains('/') {
            return Err(CheckpointError::InvalidUrl {
                url: url.to_string(),
                reason: format!("job name `{job}` must be non-empty and contain no `/`"),
            });
        }
        Ok(CheckpointStore {
            store: open_url(url)?,
            url: url.to_string(),
            layout: Layout::new(job),
            local_root: local_root(url),
        })
    }

    /// Uses an already built object store (for tests and embedders).
    pub fn with_store(store: Arc<dyn ObjectStore>, url: &str, job: &str) -> Self {
        CheckpointStore {
            store,
            url: url.to_string(),
            layout: Layout::new(job),
            local_root: None,
        }
    }

    /// The path builder.
    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    /// The URL the store was opened from.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The underlying object store.
    pub fn object_store(&self) -> &Arc<dyn ObjectStore> {
        &self.store
    }

    /// Writes and deletes a probe object, so that an unreachable or read-only store is
    /// reported at start, not at the first checkpoint.
    pub async fn probe(&self) -> Result<()> {
        let path = Path::from(format!(
            "{}/_probe-{}",
            self.layout.job(),
            std::process::id()
        ));
        self.store
            .put(&path, PutPayload::from_static(b"weir"))
            .await
            .map_err(|e| {
                CheckpointError::storage(
                    "write a probe object to",
                    format!("{}/{}", self.url, path),
                    e,
                )
            })?;
        match self.store.delete(&path).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(CheckpointError::storage("delete", &path, e)),
        }
    }

    /// Writes a framed object at `path` and returns its manifest entry.
    pub async fn put_part(
        &self,
        path: Path,
        operator: &str,
        worker: usize,
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
    async fn verify_parts(
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

    async fn get(&self, path: &Path) -> Result<bytes::Bytes> {
        let r = self
            .store
            .get(path)
            .await
            .map_err(|e| CheckpointError::storage("get", path, e))?;
        r.bytes()
            .await
            .map_err(|e| CheckpointError::storage("read", path, e))
    }

    /// Writes a manifest, failing if one already exists for its epoch.
    ///
    /// This is the commit point of a checkpoint: it is complete once this returns `Ok`.
    pub async fn put_manifest(&self, manifest: &Manifest) -> Result<()> {
        self.create_manifest_at(&self.layout.manifest(manifest.epoch), manifest)
            .await
    }

    /// Writes a manifest at `path` unless one exists there (atomic create-if-absent).
    async fn create_manifest_at(&self, path: &Path, manifest: &Manifest) -> Result<()> {
        let bytes = codec::encode_json("manifest", manifest)?;
        let opts = PutOptions {
            mode: PutMode::Create,
            ..Default::default()
        };
        match self
            .store
            .put_opts(path, PutPayload::from(bytes), opts)
            .await
        {
            Ok(_) => Ok(()),
            Err(object_store::Error::AlreadyExists { .. })
            | Err(object_store::Error::Precondition { .. }) => {
                Err(CheckpointError::ManifestExists {
                    path: path.to_string(),
                })
            }
            Err(e) => Err(CheckpointError::storage("put", path, e)),
        }
    }

    /// Reads the manifest at `path` and checks that it belongs to this job; `None` if
    /// there is none.
    async fn read_manifest_at(&self, path: &Path) -> Result<Option<Manifest>> {
        let bytes = match self.get(path).await {
            Err(CheckpointError::Storage {
                source: object_store::Error::NotFound { .. },
                ..
            }) => return Ok(None),
            other => other?,
        };
        let manifest: Manifest = codec::decode_json(path.as_ref(), &bytes)?;
        if manifest.job != self.layout.job() {
            return Err(CheckpointError::JobMismatch {
                path: path.to_string(),
                expected: self.layout.job().to_string(),
                found: manifest.job,
            });
        }
        Ok(Some(manifest))
    }

    /// Every object under `prefix`, recursively.
    async fn list_objects(&self, prefix: &Path) -> Result<Vec<object_store::ObjectMeta>> {
        self.store
            .list(Some(prefix))
            .try_collect()
            .await
            .map_err(|e| CheckpointError::storage("list", prefix, e))
    }

    /// Reads and verifies the manifest of `epoch`.
    pub async fn read_manifest(&self, epoch: u64) -> Result<Manifest> {
        let path = self.layout.manifest(epoch);
        let manifest = self.read_manifest_at(&path).await?.ok_or_else(|| {
            CheckpointError::CheckpointNotFound {
                job: self.layout.job().to_string(),
                epoch,
            }
        })?;
        if manifest.epoch != epoch {
            return Err(CheckpointError::Corrupt {
                path: path.to_string(),
                reason: format!(
                    "manifest says epoch {}, its directory says {epoch}",
                    manifest.epoch
                ),
            });
        }
        Ok(manifest)
    }

    /// Lists the job's checkpoint directories: `(complete, all)` epochs, ascending.
    pub async fn list(&self) -> Result<(Vec<u64>, Vec<u64>)> {
        let root = self.layout.job_root();
        let listing = self
            .store
            .list_with_delimiter(Some(&root))
            .await
            .map_err(|e| CheckpointError::storage("list", &root, e))?;
        let mut dirs: Vec<u64> = listing
            .common_prefixes
            .iter()
            .filter_map(|p| p.filename().and_then(layout::parse_checkpoint_dir))
            .collect();
        dirs.sort_unstable();
        let mut all = Vec::new();
        let mut complete = Vec::new();
        for epoch in dirs {
            let dir = self.layout.checkpoint_dir(epoch);
            let objects = self.list_objects(&dir).await?;
            // Some stores (local directories, filer-backed S3 servers) keep empty
            // directories after their objects are deleted: they are not checkpoints.
            if objects.is_empty() {
                continue;
            }
            all.push(epoch);
            let manifest = self.layout.manifest(epoch);
            if objects.iter().any(|o| o.location == manifest) {
                complete.push(epoch);
            }
        }
        Ok((complete, all))
    }

    /// Finds and verifies the checkpoint to restore from.
    ///
    /// With [`RestoreTarget::Latest`], a checkpoint whose manifest or parts fail
    /// verification is logged and skipped in favour of the previous complete one; the
    /// error lists every checkpoint tried when none verifies. A job name mismatch is
    /// never skipped.
    pub async fn resolve_restore(&self, target: &RestoreTarget) -> Result<Manifest> {
        Ok(self
            .resolve_restore_keeping(target, &|_| false)
            .await?
            .manifest)
    }

    /// [`Self::resolve_restore`], also returning the verified bytes of the chosen
    /// checkpoint's parts for which `keep` is true, so that a restore need not read them
    /// again. Every part is read and verified exactly once.
    pub async fn resolve_restore_keeping(
        &self,
        target: &RestoreTarget,
        keep: &(dyn Fn(&PartEntry) -> bool + Sync),
    ) -> Result<RestorePoint> {
        if let RestoreTarget::Savepoint(name) = target {
            return self.read_savepoint_keeping(name, keep).await;
        }
        let (complete, _) = self.list().await?;
        let candidates = protocol::restore_candidates(target, &complete);
        if candidates.is_empty() {
            return Err(match target {
                RestoreTarget::Latest => CheckpointError::NoCheckpoint {
                    job: self.layout.job().to_string(),
                    url: self.url.clone(),
                },
                RestoreTarget::Savepoint(_) => unreachable!("handled above"),
                RestoreTarget::Epoch(epoch) => CheckpointError::CheckpointNotFound {
                    job: self.layout.job().to_string(),
                    epoch: *epoch,
                },
            });
        }
        let mut tried = Vec::new();
        for epoch in candidates {
            match self.verify_keeping(epoch, keep).await {
                Ok(point) => {
                    if !tried.is_empty() {
                        tracing::warn!(epoch, skipped = ?tried, "restoring from an older checkpoint because newer ones failed verification");
                    }
                    return Ok(point);
                }
                Err(e @ CheckpointError::JobMismatch { .. }) => return Err(e),
                Err(e @ CheckpointError::Storage { .. }) if e.retry() == Retry::Transient => {
                    return Err(e)
                }
                Err(e) => {
                    tracing::error!(epoch, error = %e, "checkpoint failed verification");
                    tried.push((epoch, e.to_string()));
                }
            }
        }
        Err(CheckpointError::NoReadableCheckpoint {
            job: self.layout.job().to_string(),
            tried,
        })
    }

    /// Reads checkpoint `epoch`'s manifest and checks every part's size and checksum.
    pub async fn verify(&self, epoch: u64) -> Result<Manifest> {
        Ok(self.verify_keeping(epoch, &|_| false).await?.manifest)
    }

    /// [`Self::verify`], keeping the verified parts for which `keep` is true.
    async fn verify_keeping(
        &self,
        epoch: u64,
        keep: &(dyn Fn(&PartEntry) -> bool + Sync),
    ) -> Result<RestorePoint> {
        let manifest = self.read_manifest(epoch).await?;
        let parts = self.verify_parts(&manifest, keep).await?;
        Ok(RestorePoint { manifest, parts })
    }

    /// Deletes every object of checkpoint `epoch`.
    pub async fn delete_checkpoint(&self, epoch: u64) -> Result<()> {
        let dir = self.layout.checkpoint_dir(epoch);
        self.delete_prefix(&dir).await
    }

    async fn delete_prefix(&self, dir: &Path) -> Result<()> {
        let objects = self.list_objects(dir).await?;
        // The manifest goes first, so that a half-deleted checkpoint is never complete.
        let (manifests, rest): (Vec<_>, Vec<_>) = objects
            .into_iter()
            .partition(|o| o.location.filename() == Some(layout::MANIFEST));
        for o in manifests.into_iter().chain(rest) {
            match self.store.delete(&o.location).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(CheckpointError::storage("delete", &o.location, e)),
            }
        }
        if let Some(root) = &self.local_root {
            remove_empty_dirs(&root.join(dir.as_ref()));
        }
        Ok(())
    }

    /// Applies the retention policy: keeps the newest `retain` complete checkpoints and
    /// everything they reference, deletes older directories. Returns the deleted epochs.
    pub async fn apply_retention(&self, retain: usize) -> Result<Vec<u64>> {
        let (complete, all) = self.list().await?;
        let mut facts = Vec::new();
        // Only the newest `retain` manifests need reading: older ones are not kept.
        for (i, epoch) in complete.iter().rev().enumerate() {
            let refs = if i < retain.max(1) {
                referenced_dirs(&self.read_manifest(*epoch).await?)
            } else {
                BTreeSet::new()
            };
            facts.push((*epoch, refs));
        }
        let plan = protocol::retention(&facts, &all, retain);
        for epoch in &plan.demote {
            let path = self.layout.manifest(*epoch);
            match self.store.delete(&path).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(CheckpointError::storage("delete", &path, e)),
            }
        }
        for epoch in &plan.delete {
            self.delete_checkpoint(*epoch).await?;
        }
        Ok(plan.delete)
    }

    /// Takes every complete checkpoint newer than `epoch` out of the restorable history:
    /// its manifest is renamed to `_ABANDONED_MANIFEST` (kept for inspection), its parts
    /// are left for retention. Used when a job restores an older checkpoint, whose
    /// recovery aborts the newer checkpoints' uncommitted output. Returns their epochs.
    pub async fn abandon_newer_than(&self, epoch: u64) -> Result<Vec<u64>> {
        let (complete, _) = self.list().await?;
        let newer: Vec<u64> = complete.into_iter().filter(|e| *e > epoch).collect();
        for e in &newer {
            let from = self.layout.manifest(*e);
            let to = Path::from(format!(
                "{}/_ABANDONED_MANIFEST",
                self.layout.checkpoint_dir(*e)
            ));
            match self.store.rename(&from, &to).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                Err(err) => return Err(CheckpointError::storage("rename", &from, err)),
            }
        }
        Ok(newer)
    }

    /// Copies checkpoint `epoch` (the newest verified one if `None`) to savepoint `name`,
    /// which retention never deletes. Fails if the savepoint exists.
    pub async fn create_savepoint(&self, name: &str, epoch: Option<u64>) -> Result<Manifest> {
        layout::check_savepoint_name(name).map_err(|reason| CheckpointError::InvalidUrl {
            url: self.url.clone(),
            reason,
        })?;
        let path = self.layout.savepoint_manifest(name);
        match self.store.head(&path).await {
            Ok(_) => {
                return Err(CheckpointError::ManifestExists {
                    path: path.to_string(),
                })
            }
            Err(object_store::Error::NotFound { .. }) => {}
            Err(e) => return Err(CheckpointError::storage("head", &path, e)),
        }
        let target = epoch.map_or(RestoreTarget::Latest, RestoreTarget::Epoch);
        let mut manifest = self.resolve_restore(&target).await?;
        for part in &mut manifest.parts {
            let from = Path::from(part.path.as_str());
            let file = from.filename().unwrap_or("part").to_string();
            let to = self.layout.savepoint_part(
                name,
                &part.operator,
                &format!("w{}-{file}", part.worker),
            );
            self.store
                .copy(&from, &to)
                .await
                .map_err(|e| CheckpointError::storage("copy", &from, e))?;
            part.path = to.to_string();
        }
        self.create_manifest_at(&path, &manifest).await?;
        Ok(manifest)
    }

    /// Asks the running job to stop with a final savepoint `name`: its sources stop
    /// reading, its last checkpoint completes and is copied to the savepoint, and the job
    /// exits. Overwrites an earlier request.
    pub async fn request_stop(&self, savepoint: &str) -> Result<()> {
        layout::check_savepoint_name(savepoint).map_err(|reason| CheckpointError::InvalidUrl {
            url: self.url.clone(),
            reason,
        })?;
        let bytes = codec::encode_json(
            "stop request",
            &StopRequest {
                savepoint: savepoint.to_string(),
            },
        )?;
        self.put_object(&self.layout.stop_request(), bytes).await
    }

    /// The savepoint name of a pending stop request, if there is one.
    pub async fn stop_request(&self) -> Result<Option<String>> {
        let path = self.layout.stop_request();
        match self.store.get(&path).await {
            Ok(r) => {
                let bytes = r
                    .bytes()
                    .await
                    .map_err(|e| CheckpointError::storage("read", &path, e))?;
                let req: StopRequest = codec::decode_json(path.as_ref(), &bytes)?;
                Ok(Some(req.savepoint))
            }
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(CheckpointError::storage("get", &path, e)),
        }
    }

    /// Removes a stop request once it has been carried out.
    pub async fn clear_stop_request(&self) -> Result<()> {
        let path = self.layout.stop_request();
        match self.store.delete(&path).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(CheckpointError::storage("delete", &path, e)),
        }
    }

    /// Reads and verifies savepoint `name`.
    pub async fn read_savepoint(&self, name: &str) -> Result<Manifest> {
        Ok(self
            .read_savepoint_keeping(name, &|_| false)
            .await?
            .manifest)
    }

    /// [`Self::read_savepoint`], keeping the verified parts for which `keep` is true.
    async fn read_savepoint_keeping(
        &self,
        name: &str,
        keep: &(dyn Fn(&PartEntry) -> bool + Sync),
    ) -> Result<RestorePoint> {
        let manifest = self
            .read_manifest_at(&self.layout.savepoint_manifest(name))
            .await?
            .ok_or_else(|| CheckpointError::SavepointNotFound {
                job: self.layout.job().to_string(),
                name: name.to_string(),
            })?;
        let parts = self.verify_parts(&manifest, keep).await?;
        Ok(RestorePoint { manifest, parts })
    }

    /// The names of the job's savepoints, sorted.
    pub async fn list_savepoints(&self) -> Result<Vec<String>> {
        let root = self.layout.savepoints();
        let listing = self
            .store
            .list_with_delimiter(Some(&root))
            .await
            .map_err(|e| CheckpointError::storage("list", &root, e))?;
        let mut names: Vec<String> = listing
            .common_prefixes
            .iter()
            .filter_map(|p| p.filename().map(String::from))
            .collect();
        names.sort();
        Ok(names)
    }

    /// Deletes savepoint `name`.
    pub async fn delete_savepoint(&self, name: &str) -> Result<()> {
        layout::check_savepoint_name(name).map_err(|reason| CheckpointError::InvalidUrl {
            url: self.url.clone(),
            reason,
        })?;
        self.delete_prefix(&self.layout.savepoint_dir(name)).await
    }

    /// Announces a generation, returning every generation announced so far (this one included).
    pub async fn announce_generation(&self, generation: u64) -> Result<Vec<u64>> {
        let path = self.layout.generation_marker(generation);
        self.store
            .put(&path, PutPayload::from_static(b""))
            .await
            .map_err(|e| CheckpointError::storage("put", &path, e))?;
        self.generations().await
    }

    /// Every generation announced so far.
    pub async fn generations(&self) -> Result<Vec<u64>> {
        let root = self.layout.generations();
        let objects = self.list_objects(&root).await?;
        let mut gens: Vec<u64> = objects
            .iter()
            .filter_map(|o| {
                o.location
                    .filename()
                    .and_then(layout::parse_generation_marker)
            })
            .collect();
        gens.sort_unstable();
        Ok(gens)
    }

    /// Deletes everything the job has stored (checkpoints, markers, ledgers).
    pub async fn delete_job(&self) -> Result<()> {
        self.delete_prefix(&self.layout.job_root()).await
    }

    /// Writes a small framed object (ledger entries and the like), overwriting it.
    pub async fn put_object(&self, path: &Path, bytes: Vec<u8>) -> Result<()> {
        self.store
            .put(path, PutPayload::from(bytes))
            .await
            .map_err(|e| CheckpointError::storage("put", path, e))?;
        Ok(())
    }

    /// Reads every object under a prefix, verified, as `(path, payload bytes)`.
    pub async fn read_prefix(&self, prefix: &Path) -> Result<Vec<(String, bytes::Bytes)>> {
        let objects = self.list_objects(prefix).await?;
        let mut out = Vec::new();
        for o in objects {
            let bytes = self.get(&o.location).await?;
            out.push((o.location.to_string(), bytes));
        }
        Ok(out)
    }
}

/// Removes `dir` and every directory under it that is empty, deepest first.
fn remove_empty_dirs(dir: &std::path::Path) {
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                remove_empty_dirs(&entry.path());
            }
        }
    }
    // Fails, as it should, when the directory is not empty.
    let _ = std::fs::remove_dir(dir);
}

/// The checkpoint directories a manifest's parts live in.
pub fn referenced_dirs(manifest: &Manifest) -> BTreeSet<u64> {
    let mut dirs: BTreeSet<u64> = manifest
        .parts
        .iter()
        .filter_map(|p| p.path.split('/').find_map(layout::parse_checkpoint_dir))
        .collect();
    dirs.insert(manifest.epoch);
    dirs
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::SinkEntry;

    fn manifest(job: &str, epoch: u64, parts: Vec<PartEntry>) -> Manifest {
        Manifest {
            job: job.into(),
            epoch,
            generation: 0,
            workers: 1,
            key_groups: 128,
            created_ms: 0,
            operators: vec!["op".into()],
            parts,
            sinks: vec![SinkEntry {
                sink: "s".into(),
                worker: 0,
                epoch,
                generation: 0,
                handle: "h".into(),
            }],
        }
    }

    async fn checkpoint(store: &CheckpointStore, epoch: u64) -> Manifest {
        let path = store.layout().part(epoch, "op", "w0");
        let part = store
            .put_part(
                path,
                "op",
                0,
                (0, 128),
                codec::encode("t", &vec![epoch; 10]).unwrap(),
            )
            .await
            .unwrap();
        let m = manifest("job", epoch, vec![part]);
        store.put_manifest(&m).await.unwrap();
        m
    }

    #[tokio::test]
    async fn manifest_is_written_once() {
        let store = CheckpointStore::open("memory://", "job").unwrap();
        let m = checkpoint(&store, 1).await;
        assert!(matches!(
            store.put_manifest(&m).await,
            Err(CheckpointError::ManifestExists { .. })
        ));
        assert_eq!(store.read_manifest(1).await.unwrap(), m);
    }

    #[tokio::test]
    async fn concurrent_manifest_writers_have_one_winner_on_the_local_file_system() {
        let dir = tempfile::tempdir().unwrap();
        let store = CheckpointStore::open(dir.path().to_str().unwrap(), "job").unwrap();
        let m = manifest("job", 7, vec![]);
        let tasks: Vec<_> = (0..16)
            .map(|_| {
                let (s, m) = (store.clone(), m.clone());
                tokio::spawn(async move { s.put_manifest(&m).await.is_ok() })
            })
            .collect();
        let mut winners = 0;
        for t in tasks {
            winners += t.await.unwrap() as usize;
        }
        assert_eq!(winners, 1);
    }

    #[tokio::test]
    async fn latest_falls_back_past_a_corrupted_part() {
        let dir = tempfile::tempdir().unwrap();
        let store = CheckpointStore::open(dir.path().to_str().unwrap(), "job").unwrap();
        checkpoint(&store, 1).await;
        let m2 = checkpoint(&store, 2).await;
        // Flip a byte of checkpoint 2's part.
        let file = dir.path().join(&m2.parts[0].path);
        let mut bytes = std::fs::read(&file).unwrap();
        let n = bytes.len();
        bytes[n - 1] ^= 1;
        std::fs::write(&file, bytes).unwrap();
        assert_eq!(
            store
                .resolve_restore(&RestoreTarget::Latest)
                .await
                .unwrap()
                .epoch,
            1
        );
        let err = store
            .resolve_restore(&RestoreTarget::Epoch(2))
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains(&m2.parts[0].path), "{err}");
    }

    #[tokio::test]
    async fn restore_keeps_the_verified_parts_of_the_checkpoint_it_chose() {
        let dir = tempfile::tempdir().unwrap();
        let store = CheckpointStore::open(dir.path().to_str().unwrap(), "job").unwrap();
        let m1 = checkpoint(&store, 1).await;
        let m2 = checkpoint(&store, 2).await;
        let file = dir.path().join(&m2.parts[0].path);
        let mut bytes = std::fs::read(&file).unwrap();
        bytes[codec::HEADER_LEN] ^= 4;
        std::fs::write(&file, bytes).unwrap();
        let point = store
            .resolve_restore_keeping(&RestoreTarget::Latest, &|_| true)
            .await
            .unwrap();
        assert_eq!(point.manifest, m1);
        assert_eq!(point.parts.len(), 1);
        assert_eq!(point.parts[0].entry(), &m1.parts[0]);
        assert_eq!(point.parts[0].decode::<Vec<u64>>().unwrap(), vec![1u64; 10]);
        let none = store
            .resolve_restore_keeping(&RestoreTarget::Epoch(1), &|_| false)
            .await
            .unwrap();
        assert!(none.parts.is_empty());
    }

    fn part_entry(bytes: &[u8]) -> PartEntry {
        PartEntry {
            operator: "op".into(),
            worker: 0,
            key_group_start: 0,
            key_group_end: 128,
            path: "job/chk-00000000000000000001/op/w0".into(),
            size: bytes.len() as u64,
            crc32: codec::crc32(bytes),
        }
    }

    #[test]
    fn a_verified_part_decodes_without_a_second_check() {
        let bytes = codec::encode("t", &vec![5u16; 40]).unwrap();
        let entry = part_entry(&bytes);
        let part = VerifiedPart::verify(&entry, bytes.into()).unwrap();
        assert_eq!(part.decode::<Vec<u16>>().unwrap(), vec![5u16; 40]);
        let json = codec::encode_json("t", &1u8).unwrap();
        let part = VerifiedPart::verify(&part_entry(&json), json.into()).unwrap();
        let err = part.decode::<u8>().unwrap_err().to_string();
        assert!(err.contains("expected a bincode payload"), "{err}");
    }

    proptest::proptest! {
        #[test]
        fn any_single_byte_corruption_of_a_part_is_rejected_and_named(
            data in proptest::collection::vec(proptest::prelude::any::<u8>(), 1..200),
            pos in proptest::prelude::any::<proptest::sample::Index>(),
            flip in 1u8..=255,
        ) {
            let bytes = codec::encode("p", &data).unwrap();
            let entry = part_entry(&bytes);
            proptest::prop_assert!(VerifiedPart::verify(&entry, bytes.clone().into()).is_ok());
            let mut bad = bytes.clone();
            bad[pos.index(bytes.len())] ^= flip;
            let err = VerifiedPart::verify(&entry, bad.into()).unwrap_err().to_string();
            proptest::prop_assert!(err.contains(&entry.path), "{}", err);
            // The header and its CRC are checked even when the manifest's entry was
            // computed over the corrupted bytes.
            let mut bad = bytes.clone();
            bad[pos.index(bytes.len())] ^= flip;
            let entry = part_entry(&bad);
            proptest::prop_assert!(VerifiedPart::verify(&entry, bad.into()).is_err());
        }

        #[test]
        fn a_truncated_part_is_rejected(
            data in proptest::collection::vec(proptest::prelude::any::<u8>(), 1..200),
            cut in proptest::prelude::any::<proptest::sample::Index>(),
        ) {
            let bytes = codec::encode("p", &data).unwrap();
            let entry = part_entry(&bytes);
            let short = bytes[..cut.index(bytes.len())].to_vec();
            let err = VerifiedPart::verify(&entry, short.clone().into()).unwrap_err().to_string();
            proptest::prop_assert!(err.contains(&entry.path), "{}", err);
            let entry = part_entry(&short);
            let err = VerifiedPart::verify(&entry, short.into()).unwrap_err().to_string();
            proptest::prop_assert!(err.contains("truncated"), "{}", err);
        }
    }

    #[tokio::test]
    async fn a_truncated_manifest_is_named_in_the_error() {
        let dir = tempfile::tempdir().unwrap();
        let store = CheckpointStore::open(dir.path().to_str().unwrap(), "job").unwrap();
        checkpoint(&store, 1).await;
        let file = dir.path().join(store.layout().manifest(1).as_ref());
        let bytes = std::fs::read(&file).unwrap();
        std::fs::write(&file, &bytes[..bytes.len() / 2]).unwrap();
        let err = store
            .resolve_restore(&RestoreTarget::Latest)
            .await
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("_MANIFEST") && err.contains("truncated"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn restore_without_checkpoint_is_a_clear_error() {
        let store = CheckpointStore::open("memory://", "job").unwrap();
        let err = store
            .resolve_restore(&RestoreTarget::Latest)
            .await
            .unwrap_err();
        assert!(matches!(err, CheckpointError::NoCheckpoint { .. }), "{err}");
        assert!(err.to_string().contains("without --restore"));
    }

    #[tokio::test]
    async fn job_name_mismatch_is_an_error() {
        let inner: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
        let store = CheckpointStore::with_store(inner.clone(), "memory://", "job");
        let m = manifest("other", 1, vec![]);
        // A manifest of job `other` under job `job`'s prefix.
        let bytes = codec::encode_json("m", &m).unwrap();
        inner
            .put(&store.layout().manifest(1), PutPayload::from(bytes))
            .await
            .unwrap();
        let err = store
            .resolve_restore(&RestoreTarget::Latest)
            .await
            .unwrap_err();
        assert!(matches!(err, CheckpointError::JobMismatch { .. }), "{err}");
    }

    #[tokio::test]
    async fn retention_deletes_old_checkpoints_only_after_a_newer_one_is_complete() {
        let store = CheckpointStore::open("memory://", "job").unwrap();
        for e in 1..=4 {
            checkpoint(&store, e).await;
        }
        // An incomplete, newer checkpoint in progress.
        let p = store.layout().part(5, "op", "w0");
        store.put_part(p, "op", 0, (0, 128), vec![1]).await.unwrap();
        assert_eq!(store.apply_retention(2).await.unwrap(), vec![1, 2]);
        let (complete, all) = store.list().await.unwrap();
        assert_eq!(complete, vec![3, 4]);
        assert_eq!(all, vec![3, 4, 5]);
    }

    #[tokio::test]
    async fn retention_keeps_a_restored_part_that_a_later_checkpoint_reports_again() {
        let store = CheckpointStore::open("memory://", "job").unwrap();
        let restored = checkpoint(&store, 1).await;
        for e in 2..=3 {
            checkpoint(&store, e).await;
        }
        // The job restores checkpoint 1 (abandoning 2 and 3); its operator's state is
        // unchanged, so checkpoints 4 and 5 report checkpoint 1's part again.
        store.abandon_newer_than(1).await.unwrap();
        for e in 4..=5 {
            store
                .put_manifest(&manifest("job", e, restored.parts.clone()))
                .await
                .unwrap();
        }
        assert_eq!(store.apply_retention(1).await.unwrap(), vec![2, 3, 4]);
        // Checkpoint 1 is no longer restorable, but its part is still readable.
        assert_eq!(store.list().await.unwrap().0, vec![5]);
        let m = store.resolve_restore(&RestoreTarget::Latest).await.unwrap();
        assert_eq!(m.epoch, 5);
        assert!(store.get_part(&m.parts[0]).await.is_ok());
    }

    #[tokio::test]
    async fn deleting_a_local_checkpoint_leaves_no_empty_directory() {
        let dir = tempfile::tempdir().unwrap();
        let store = CheckpointStore::open(dir.path().to_str().unwrap(), "job").unwrap();
        checkpoint(&store, 1).await;
        checkpoint(&store, 2).await;
        store.delete_checkpoint(1).await.unwrap();
        assert!(!dir
            .path()
            .join(store.layout().checkpoint_dir(1).as_ref())
            .exists());
        assert_eq!(store.list().await.unwrap(), (vec![2], vec![2]));
    }

    #[tokio::test]
    async fn restoring_an_older_checkpoint_abandons_the_newer_ones() {
        let store = CheckpointStore::open("memory://", "job").unwrap();
        for e in 1..=3 {
            checkpoint(&store, e).await;
        }
        assert_eq!(store.abandon_newer_than(1).await.unwrap(), vec![2, 3]);
        assert_eq!(store.list().await.unwrap().0, vec![1]);
        assert!(store.abandon_newer_than(1).await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn a_savepoint_outlives_its_checkpoint_and_restores() {
        let dir = tempfile::tempdir().unwrap();
        let store = CheckpointStore::open(dir.path().to_str().unwrap(), "job").unwrap();
        checkpoint(&store, 1).await;
        checkpoint(&store, 2).await;
        let sp = store
            .create_savepoint("before-upgrade", None)
            .await
            .unwrap();
        assert_eq!(sp.epoch, 2);
        assert!(sp
            .parts
            .iter()
            .all(|p| p.path.starts_with("job/savepoints/before-upgrade/")));
        assert!(matches!(
            store.create_savepoint("before-upgrade", Some(1)).await,
            Err(CheckpointError::ManifestExists { .. })
        ));
        store.delete_checkpoint(2).await.unwrap();
        store.delete_checkpoint(1).await.unwrap();
        let back = store
            .resolve_restore(&RestoreTarget::Savepoint("before-upgrade".into()))
            .await
            .unwrap();
        assert_eq!(back, sp);
        assert_eq!(
            store.list_savepoints().await.unwrap(),
            vec!["before-upgrade".to_string()]
        );
        store.delete_savepoint("before-upgrade").await.unwrap();
        let err = store
            .resolve_restore(&RestoreTarget::Savepoint("before-upgrade".into()))
            .await
            .unwrap_err();
        assert!(err.to_string().contains("before-upgrade"), "{err}");
    }

    #[tokio::test]
    async fn generations_are_listed_in_order() {
        let store = CheckpointStore::open("memory://", "job").unwrap();
        store.announce_generation(2).await.unwrap();
        assert_eq!(store.announce_generation(10).await.unwrap(), vec![2, 10]);
    }

    #[test]
    fn unknown_schemes_are_rejected() {
        let err = CheckpointStore::open("ftp://x", "job")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("ftp://x") && err.contains("unknown scheme"),
            "{err}"
        );
    }
}

/// A request to stop a running job with a final savepoint.
#[derive(serde::Serialize, serde::Deserialize)]
struct StopRequest {
    savepoint: String,
}
