//! Checkpoint storage on `object_store`.
//!
//! ## What weir needs from storage
//!
//! * read-after-write for single objects (every `object_store` backend gives it);
//! * an atomic create-if-absent (`PutMode::Create`) for manifests, so that two writers
//!   can never both complete the same checkpoint. The local file system, the memory
//!   store and S3 servers with conditional writes provide it;
//! * listing by prefix, for restore and retention.
//!
//! ## Design
//!
//! One [`CheckpointStore`] per job; its methods are grouped by concern, one file each:
//! `url` (opening a store), `parts` (state and positions), `manifests` (completing and
//! resolving checkpoints), `retention` (deleting and abandoning), `savepoints`, and
//! `control` (stop requests and generation markers). Every object name comes from the
//! job's [`Layout`]. Invariants:
//! - a checkpoint is complete iff its manifest exists, and a manifest is written once;
//! - nothing is decoded before its size, CRC and header are checked, and a damaged object
//!   is an error naming it;
//! - retention never deletes a directory that a retained manifest references.

use std::sync::Arc;

use futures::TryStreamExt;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};

use crate::error::{CheckpointError, Result};
use crate::layout::{self, Layout};
use crate::manifest::Manifest;

mod control;
mod history;
mod links;
mod manifests;
mod parts;
mod retention;
mod savepoints;
mod url;

pub use history::{CheckpointInfo, Status};
pub use links::Committed;
pub use parts::VerifiedPart;
pub use retention::{referenced_dirs, Removed};
pub use url::open_url;

/// A job's checkpoints in one object store.
#[derive(Debug, Clone)]
pub struct CheckpointStore {
    store: Arc<dyn ObjectStore>,
    url: String,
    layout: Layout,
    /// The root directory when the store is a local file system, whose empty
    /// directories are removed after deletes (object stores have no directories).
    local_root: Option<std::path::PathBuf>,
    /// The same local file system, for the file names of its objects: parts are read
    /// by mapping their files (see [`CheckpointStore::get_part`]).
    local_files: Option<Arc<object_store::local::LocalFileSystem>>,
    /// How parts this large are uploaded in chunks; `None` (a local directory) writes
    /// every part with one put.
    multipart: Option<Multipart>,
}

/// How large parts are uploaded: in chunks of a multipart upload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Multipart {
    /// Parts of at least this many bytes are uploaded in chunks.
    pub(crate) from: usize,
    /// The size of each chunk but the last (S3 wants at least 5 MiB).
    pub(crate) chunk: usize,
    /// Chunks uploaded at once.
    pub(crate) concurrency: usize,
}

impl Multipart {
    /// For object stores: a part of 32 MiB or more goes up in 16 MiB chunks, four at
    /// once. Under the S3 client's 30 s request timeout, four chunks in flight fail only
    /// below about 2.2 MB/s in all, where a 500 MB part in one request fails below
    /// 17 MB/s. The checkpoint timeout still bounds the whole part.
    pub(crate) const OBJECT_STORE: Multipart = Multipart {
        from: 32 << 20,
        chunk: 16 << 20,
        concurrency: 4,
    };
}

/// The local directory a checkpoint URL points to, if it is one.
fn local_root(url: &str) -> Option<std::path::PathBuf> {
    if let Some(p) = url.strip_prefix("file://") {
        Some(p.into())
    } else if url.contains("://") || url.is_empty() {
        None
    } else {
        Some(url.into())
    }
}

/// A checkpoint chosen for a restore, with the verified parts the caller asked to keep.
#[derive(Debug, Clone)]
pub struct RestorePoint {
    /// The checkpoint's manifest.
    pub manifest: Manifest,
    /// The parts kept, in manifest order, read and verified once.
    pub parts: Vec<VerifiedPart>,
    /// Newer checkpoints passed over because they were never committed (their
    /// generation was fenced, or died, between writing the manifest and its link).
    /// They are no part of the job's history: a new generation must not treat them as
    /// checkpoints it saw (see [`CheckpointStore::seal`]).
    pub uncommitted: Vec<crate::Epoch>,
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
        let local_root = local_root(url);
        // A local directory is one store, used through `object_store` and for the
        // file names of its parts.
        let local_files = match &local_root {
            Some(root) => Some(url::open_local(url, root)?),
            None => None,
        };
        let store: Arc<dyn ObjectStore> = match &local_files {
            Some(files) => files.clone(),
            None => open_url(url)?,
        };
        Ok(CheckpointStore {
            store,
            url: url.to_string(),
            layout: Layout::new(job),
            multipart: local_root.is_none().then_some(Multipart::OBJECT_STORE),
            local_root,
            local_files,
        })
    }

    /// Uses an already built object store (for tests and embedders).
    pub fn with_store(store: Arc<dyn ObjectStore>, url: &str, job: &str) -> Self {
        CheckpointStore {
            store,
            url: url.to_string(),
            layout: Layout::new(job),
            local_root: None,
            local_files: None,
            multipart: Some(Multipart::OBJECT_STORE),
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
        let path = self.layout.probe(&std::process::id().to_string());
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

    pub(super) async fn get(&self, path: &Path) -> Result<bytes::Bytes> {
        let r = self
            .store
            .get(path)
            .await
            .map_err(|e| CheckpointError::storage("get", path, e))?;
        r.bytes()
            .await
            .map_err(|e| CheckpointError::storage("read", path, e))
    }

    /// Every object under `prefix`, recursively.
    pub(super) async fn list_objects(
        &self,
        prefix: &Path,
    ) -> Result<Vec<object_store::ObjectMeta>> {
        self.store
            .list(Some(prefix))
            .try_collect()
            .await
            .map_err(|e| CheckpointError::storage("list", prefix, e))
    }

    pub(super) async fn delete_prefix(&self, dir: &Path) -> Result<()> {
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

#[cfg(test)]
mod tests;
