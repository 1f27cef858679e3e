//! The job's checkpoint history as the store holds it: one [`CheckpointInfo`] per
//! checkpoint directory and savepoint, for `weir checkpoints list` and the dashboard.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::CheckpointStore;
use crate::codec;
use crate::error::{CheckpointError, Result};
use crate::ids::{Epoch, Generation};
use crate::manifest::Manifest;

/// What state a checkpoint directory or savepoint is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Status {
    /// Committed: a restore may use it.
    Complete,
    /// Its manifest was written by a generation that a newer one had fenced: it never
    /// counts.
    Uncommitted,
    /// Set aside by a restore of an older checkpoint.
    Abandoned,
    /// No manifest: in progress, or its run failed before completing it.
    Incomplete,
    /// Its manifest cannot be read or decoded (see `error`).
    Unreadable,
    /// A savepoint (see `name`).
    Savepoint,
}

impl Status {
    /// The status as `weir checkpoints list` prints it.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Complete => "complete",
            Status::Uncommitted => "uncommitted",
            Status::Abandoned => "abandoned",
            Status::Incomplete => "incomplete",
            Status::Unreadable => "unreadable",
            Status::Savepoint => "savepoint",
        }
    }
}

/// One entry of the history. The fields after `status` are known only when a manifest
/// was read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckpointInfo {
    /// The checkpoint's epoch.
    pub epoch: Epoch,
    /// Its state.
    pub status: Status,
    /// The savepoint's name, for a savepoint.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The generation that wrote it.
    pub generation: Option<Generation>,
    /// The number of workers that wrote it.
    pub workers: Option<usize>,
    /// When its manifest was written, in milliseconds since the Unix epoch.
    pub created_ms: Option<u64>,
    /// From its barrier to its manifest, in milliseconds, when the manifest records
    /// its barrier.
    pub duration_ms: Option<u64>,
    /// The size of its parts in bytes.
    pub bytes: Option<u64>,
    /// The number of its parts.
    pub parts: Option<usize>,
    /// The sink outputs it commits, per sink: what the sinks had pending.
    pub outputs: BTreeMap<String, usize>,
    /// Why it could not be read.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl CheckpointInfo {
    fn bare(epoch: Epoch, status: Status) -> Self {
        CheckpointInfo {
            epoch,
            status,
            name: None,
            generation: None,
            workers: None,
            created_ms: None,
            duration_ms: None,
            bytes: None,
            parts: None,
            outputs: BTreeMap::new(),
            error: None,
        }
    }

    fn of(manifest: &Manifest, status: Status) -> Self {
        let mut outputs = BTreeMap::new();
        for s in &manifest.sinks {
            *outputs.entry(s.sink.clone()).or_insert(0) += 1;
        }
        CheckpointInfo {
            generation: Some(manifest.generation),
            workers: Some(manifest.workers),
            created_ms: Some(manifest.created_ms),
            duration_ms: manifest
                .barrier_ms
                .map(|b| manifest.created_ms.saturating_sub(b)),
            bytes: Some(manifest.total_bytes()),
            parts: Some(manifest.parts.len()),
            outputs,
            ..CheckpointInfo::bare(manifest.epoch, status)
        }
    }

    fn unreadable(epoch: Epoch, error: &CheckpointError) -> Self {
        CheckpointInfo {
            error: Some(error.to_string()),
            ..CheckpointInfo::bare(epoch, Status::Unreadable)
        }
    }
}

impl CheckpointStore {
    /// Every checkpoint directory of the job, oldest first, then every savepoint.
    pub async fn history(&self) -> Result<Vec<CheckpointInfo>> {
        let mut out = Vec::new();
        for (epoch, objects) in self.checkpoint_dirs().await? {
            let has = |path: &object_store::path::Path| objects.iter().any(|o| &o.location == path);
            let info = if has(&self.layout.manifest(epoch)) {
                match self.read_manifest(epoch).await {
                    Ok(m) => match self.is_committed(&m).await {
                        Ok(true) => CheckpointInfo::of(&m, Status::Complete),
                        Ok(false) => CheckpointInfo::of(&m, Status::Uncommitted),
                        Err(e) => CheckpointInfo::unreadable(epoch, &e),
                    },
                    Err(e) => CheckpointInfo::unreadable(epoch, &e),
                }
            } else if has(&self.layout.abandoned_manifest(epoch)) {
                let path = self.layout.abandoned_manifest(epoch);
                let read = async {
                    let bytes = self.get(&path).await?;
                    codec::decode_json::<Manifest>(path.as_ref(), &bytes)
                };
                match read.await {
                    Ok(m) => CheckpointInfo::of(&m, Status::Abandoned),
                    Err(_) => CheckpointInfo::bare(epoch, Status::Abandoned),
                }
            } else {
                CheckpointInfo::bare(epoch, Status::Incomplete)
            };
            out.push(info);
        }
        for name in self.list_savepoints().await? {
            let info = match self.read_savepoint(&name).await {
                Ok(m) => CheckpointInfo::of(&m, Status::Savepoint),
                Err(e) => CheckpointInfo {
                    status: Status::Savepoint,
                    ..CheckpointInfo::unreadable(Epoch(0), &e)
                },
            };
            out.push(CheckpointInfo {
                name: Some(name),
                ..info
            });
        }
        Ok(out)
    }
}
