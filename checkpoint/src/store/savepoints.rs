//! Savepoints: named copies of a checkpoint that retention never deletes.

use object_store::path::Path;
use object_store::ObjectStoreExt;

use super::parts::Reads;
use super::{CheckpointStore, RestorePoint};
use crate::error::{CheckpointError, Result};
use crate::ids::Epoch;
use crate::layout;
use crate::manifest::{Manifest, PartEntry};
use crate::protocol::RestoreTarget;

impl CheckpointStore {
    /// Copies checkpoint `epoch` (the newest verified one if `None`) to savepoint `name`,
    /// which retention never deletes. Fails if the savepoint exists.
    pub async fn create_savepoint(&self, name: &str, epoch: Option<Epoch>) -> Result<Manifest> {
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
            let to = self.layout.savepoint_part(
                name,
                &part.operator,
                &layout::savepoint_copy_name(part.worker, &part.path),
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

    /// Reads and verifies savepoint `name`.
    pub async fn read_savepoint(&self, name: &str) -> Result<Manifest> {
        Ok(self
            .read_savepoint_keeping(name, &|_| false, Reads::Whole)
            .await?
            .manifest)
    }

    /// [`Self::read_savepoint`], keeping the verified parts for which `keep` is true,
    /// reading what `reads` says of each.
    pub(super) async fn read_savepoint_keeping(
        &self,
        name: &str,
        keep: &(dyn Fn(&PartEntry) -> bool + Sync),
        reads: Reads,
    ) -> Result<RestorePoint> {
        let manifest = self
            .read_manifest_at(&self.layout.savepoint_manifest(name))
            .await?
            .ok_or_else(|| CheckpointError::SavepointNotFound {
                job: self.layout.job().to_string(),
                name: name.to_string(),
            })?;
        let parts = self.verify_parts(&manifest, keep, reads).await?;
        Ok(RestorePoint {
            manifest,
            parts,
            uncommitted: Vec::new(),
        })
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
}
