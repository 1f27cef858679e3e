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

    /// Deletes checkpoint `epoch` by hand (`weir checkpoints delete`). Its directory goes
    /// only when no other complete checkpoint's manifest references it; otherwise only
    /// its manifest is deleted, so that it stops being a checkpoint while the checkpoints
    /// that reuse its parts (delta chains, unchanged parts) stay readable, and retention
    /// deletes the rest once nothing references it.
    pub async fn remove_checkpoint(&self, epoch: Epoch) -> Result<Removed> {
        let (complete, _) = self.list().await?;
        let mut referenced_by = Vec::new();
        for other in complete.iter().filter(|e| **e != epoch) {
            // A manifest that does not read restores nothing, and keeps nothing.
            let Ok(manifest) = self.read_manifest(*other).await else {
                continue;
            };
            if referenced_dirs(&manifest).contains(&epoch) {
                referenced_by.push(*other);
            }
        }
        if referenced_by.is_empty() {
            self.delete_checkpoint(epoch).await?;
            return Ok(Removed::Deleted);
        }
        let path = self.layout.manifest(epoch);
        match self.store.delete(&path).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
            Err(e) => return Err(CheckpointError::storage("delete", &path, e)),
        }
        Ok(Removed::ManifestOnly { referenced_by })
    }

    /// Applies the retention policy: keeps the newest `retain` complete checkpoints and
    /// everything they reference, deletes older directories. Returns the deleted epochs.
    pub async fn apply_retention(&self, retain: usize) -> Result<Vec<Epoch>> {
        let (complete, all) = self.list().await?;
        let mut facts = Vec::new();
        // Only the newest `retain` committed manifests need reading: older ones are not
        // kept. A manifest that was never committed (a fenced generation's) is no
        // checkpoint: its directory goes once it is older than the retained ones.
        let mut kept = 0;
        // The oldest node a retained manifest's link hangs from: older links are needed
        // by no check any more.
        let mut oldest_link: Option<Epoch> = None;
        for epoch in complete.iter().rev() {
            let refs = if kept < retain.max(1) {
                let manifest = self.read_manifest(*epoch).await?;
                if !self.is_committed(&manifest).await? {
                    continue;
                }
                kept += 1;
                if let Some(node) = manifest.link.as_deref().and_then(protocol::Node::parse) {
                    oldest_link = Some(oldest_link.map_or(node.epoch(), |o| o.min(node.epoch())));
                }
                referenced_dirs(&manifest)
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
        // Links become unneeded only when checkpoints go: no listing otherwise.
        let removed = !(plan.delete.is_empty() && plan.demote.is_empty());
        if let (Some(oldest), true) = (oldest_link, removed) {
            self.prune_links(oldest).await?;
        }
        Ok(plan.delete)
    }

    /// Deletes the links of nodes older than checkpoint `oldest`.
    async fn prune_links(&self, oldest: Epoch) -> Result<()> {
        for o in self.list_objects(&self.layout.links()).await? {
            let old = o
                .location
                .filename()
                .and_then(protocol::Node::parse)
                .is_some_and(|n| n.epoch() < oldest);
            if old {
                match self.store.delete(&o.location).await {
                    Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                    Err(e) => return Err(CheckpointError::storage("delete", &o.location, e)),
                }
            }
        }
        Ok(())
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

/// What [`CheckpointStore::remove_checkpoint`] deleted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Removed {
    /// The checkpoint's whole directory.
    Deleted,
    /// Only its manifest: these newer checkpoints still reference parts in its directory.
    ManifestOnly {
        /// The complete checkpoints that reference it.
        referenced_by: Vec<Epoch>,
    },
}

/// The checkpoint directories a manifest's parts live in.
pub fn referenced_dirs(manifest: &Manifest) -> BTreeSet<Epoch> {
    let mut dirs: BTreeSet<Epoch> = manifest
        .parts
        .iter()
        .filter_map(|p| layout::object_checkpoint_dir(&p.path))
        .collect();
    dirs.insert(manifest.epoch);
    dirs
}
