//! Deleting checkpoints: retention of the newest complete ones (keeping every directory
//! a retained manifest still references), deletion by hand, and abandoning checkpoints
//! newer than a restored one.

use std::collections::BTreeSet;

use object_store::ObjectStoreExt;

use super::CheckpointStore;
use crate::error::{CheckpointError, Result};
use crate::ids::Epoch;
use crate::layout;
use crate::manifest::Manifest;
use crate::protocol;

impl CheckpointStore {
    /// Deletes every object of checkpoint `epoch`.
    pub async fn delete_checkpoint(&self, epoch: Epoch) -> Result<()> {
        let dir = self.layout.checkpoint_dir(epoch);
        self.delete_prefix(&dir).await
    }

    /// Applies the retention policy: keeps the newest `retain` complete checkpoints and
    /// everything they reference, deletes older directories. Returns the deleted epochs.
    pub async fn apply_retention(&self, retain: usize) -> Result<Vec<Epoch>> {
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

    /// Takes the complete checkpoints `epochs` out of the restorable history: each
    /// manifest is renamed to `_ABANDONED_MANIFEST` (kept for inspection), the parts are
    /// left for retention. Used when a job restores an older checkpoint, whose recovery
    /// aborts the newer checkpoints' uncommitted output. A manifest that is gone already
    /// is fine.
    pub async fn abandon(&self, epochs: &[Epoch]) -> Result<()> {
        for e in epochs {
            let from = self.layout.manifest(*e);
            let to = self.layout.abandoned_manifest(*e);
            match self.store.rename(&from, &to).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                Err(err) => return Err(CheckpointError::storage("rename", &from, err)),
            }
        }
        Ok(())
    }
}

/// The checkpoint directories a manifest's parts live in.
pub fn referenced_dirs(manifest: &Manifest) -> BTreeSet<Epoch> {
    let mut dirs: BTreeSet<Epoch> = manifest
        .parts
        .iter()
        .filter_map(|p| p.path.split('/').find_map(layout::parse_checkpoint_dir))
        .collect();
    dirs.insert(manifest.epoch);
    dirs
}
