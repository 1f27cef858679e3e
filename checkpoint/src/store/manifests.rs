//! Manifests: written last with a create-if-absent put (a checkpoint is complete iff its
//! manifest exists), listed, and resolved into the checkpoint a restore reads.

use futures::{StreamExt, TryStreamExt};
use object_store::path::Path;
use object_store::{PutMode, PutOptions, PutPayload};

use super::parts::Reads;
use super::{CheckpointStore, RestorePoint};
use crate::codec;
use crate::error::{CheckpointError, Result, Retry};
use crate::ids::Epoch;
use crate::layout;
use crate::manifest::{Manifest, PartEntry};
use crate::protocol::{self, RestoreTarget};

/// Listings of checkpoint directories in flight at once.
const LISTINGS_IN_FLIGHT: usize = 16;

impl CheckpointStore {
    /// Writes a manifest, failing if one already exists for its epoch.
    ///
    /// This is the commit point of a checkpoint: it is complete once this returns `Ok`.
    pub async fn put_manifest(&self, manifest: &Manifest) -> Result<()> {
        self.create_manifest_at(&self.layout.manifest(manifest.epoch), manifest)
            .await
    }

    /// Writes a manifest at `path` unless one exists there (atomic create-if-absent).
    pub(super) async fn create_manifest_at(&self, path: &Path, manifest: &Manifest) -> Result<()> {
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
    pub(super) async fn read_manifest_at(&self, path: &Path) -> Result<Option<Manifest>> {
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

    /// Reads and verifies the manifest of `epoch`.
    pub async fn read_manifest(&self, epoch: Epoch) -> Result<Manifest> {
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

    /// The job's checkpoint directories that hold objects, ascending, each with its
    /// objects. Some stores (local directories, filer-backed S3 servers) keep empty
    /// directories after their objects are deleted: they are not checkpoints.
    pub(super) async fn checkpoint_dirs(
        &self,
    ) -> Result<Vec<(Epoch, Vec<object_store::ObjectMeta>)>> {
        let root = self.layout.job_root();
        let listing = self
            .store
            .list_with_delimiter(Some(&root))
            .await
            .map_err(|e| CheckpointError::storage("list", &root, e))?;
        let mut dirs: Vec<Epoch> = listing
            .common_prefixes
            .iter()
            .filter_map(|p| p.filename().and_then(layout::parse_checkpoint_dir))
            .collect();
        dirs.sort_unstable();
        // One listing per directory, several in flight: a job with incremental
        // checkpoints keeps tens of directories that delta chains still reference, and
        // on an object store their listings one after the other add up to the round
        // trips of all of them.
        let paths: Vec<Path> = dirs
            .iter()
            .map(|e| self.layout.checkpoint_dir(*e))
            .collect();
        let listings: Vec<Vec<object_store::ObjectMeta>> = futures::stream::iter(paths)
            .map(|dir| async move { self.list_objects(&dir).await })
            .buffered(LISTINGS_IN_FLIGHT)
            .try_collect()
            .await?;
        Ok(dirs
            .into_iter()
            .zip(listings)
            .filter(|(_, objects)| !objects.is_empty())
            .collect())
    }

    /// Lists the job's checkpoint directories: `(complete, all)` epochs, ascending.
    pub async fn list(&self) -> Result<(Vec<Epoch>, Vec<Epoch>)> {
        let mut all = Vec::new();
        let mut complete = Vec::new();
        for (epoch, objects) in self.checkpoint_dirs().await? {
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
            .resolve_restore_reading(target, &|_| false, Reads::Whole)
            .await?
            .manifest)
    }

    /// [`Self::resolve_restore`], also returning the verified bytes of the chosen
    /// checkpoint's parts for which `keep` is true, so that a restore need not read them
    /// again. Every part is read and verified exactly once: of a packed part, the
    /// sections that no newer base replaces ([`CheckpointStore::get_part_needed`]).
    pub async fn resolve_restore_keeping(
        &self,
        target: &RestoreTarget,
        keep: &(dyn Fn(&PartEntry) -> bool + Sync),
    ) -> Result<RestorePoint> {
        self.resolve_restore_reading(target, keep, Reads::Needed)
            .await
    }

    /// [`Self::resolve_restore_keeping`], reading what `reads` says of each part.
    async fn resolve_restore_reading(
        &self,
        target: &RestoreTarget,
        keep: &(dyn Fn(&PartEntry) -> bool + Sync),
        reads: Reads,
    ) -> Result<RestorePoint> {
        if let RestoreTarget::Savepoint(name) = target {
            return self.read_savepoint_keeping(name, keep, reads).await;
        }
        let (complete, _) = self.list().await?;
        let candidates = protocol::restore_candidates(target, &complete);
        if candidates.is_empty() {
            return Err(match target {
                RestoreTarget::Latest => CheckpointError::NoCheckpoint {
                    job: self.layout.job().to_string(),
                    url: self.url.clone(),
                    uncommitted: Vec::new(),
                },
                RestoreTarget::Savepoint(_) => unreachable!("handled above"),
                RestoreTarget::Epoch(epoch) => CheckpointError::CheckpointNotFound {
                    job: self.layout.job().to_string(),
                    epoch: *epoch,
                },
            });
        }
        let mut tried = Vec::new();
        let mut uncommitted = Vec::new();
        for epoch in candidates {
            match self.verify_keeping(epoch, keep, reads).await {
                Ok(mut point) => {
                    if !tried.is_empty() {
                        tracing::warn!(epoch = %epoch, skipped = ?tried, "restoring from an older checkpoint because newer ones failed verification");
                    }
                    point.uncommitted = uncommitted;
                    return Ok(point);
                }
                Err(e @ CheckpointError::JobMismatch { .. }) => return Err(e),
                // A manifest whose link was never created is no checkpoint: its run
                // stopped (or was fenced) between the two writes, and no sink committed
                // its output. It is passed over, not counted as damaged.
                // Asked for by epoch, it is refused naming why.
                Err(e @ CheckpointError::Uncommitted { .. }) => {
                    if *target != RestoreTarget::Latest {
                        return Err(e);
                    }
                    tracing::warn!(epoch = %epoch, reason = %e, "passing over a checkpoint that was never committed");
                    uncommitted.push(epoch);
                }
                Err(e @ CheckpointError::Storage { .. }) if e.retry() == Retry::Transient => {
                    return Err(e)
                }
                Err(e) => {
                    tracing::error!(epoch = %epoch, error = %e, "checkpoint failed verification");
                    tried.push((epoch, e.to_string()));
                }
            }
        }
        if tried.is_empty() {
            // Every manifest found was uncommitted: the job has no checkpoint yet.
            return Err(CheckpointError::NoCheckpoint {
                job: self.layout.job().to_string(),
                url: self.url.clone(),
                uncommitted,
            });
        }
        Err(CheckpointError::NoReadableCheckpoint {
            job: self.layout.job().to_string(),
            tried,
        })
    }

    /// Reads checkpoint `epoch`'s manifest and checks every part's size and checksum.
    pub async fn verify(&self, epoch: Epoch) -> Result<Manifest> {
        Ok(self
            .verify_keeping(epoch, &|_| false, Reads::Whole)
            .await?
            .manifest)
    }

    /// [`Self::verify`], keeping the verified parts for which `keep` is true, reading
    /// what `reads` says of each.
    pub(super) async fn verify_keeping(
        &self,
        epoch: Epoch,
        keep: &(dyn Fn(&PartEntry) -> bool + Sync),
        reads: Reads,
    ) -> Result<RestorePoint> {
        let manifest = self.read_manifest(epoch).await?;
        self.check_committed(&manifest).await?;
        let parts = self.verify_parts(&manifest, keep, reads).await?;
        Ok(RestorePoint {
            manifest,
            parts,
            uncommitted: Vec::new(),
        })
    }
}
