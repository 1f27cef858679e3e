//! The manifest: the last object of a checkpoint, and the only proof that it is complete.

use serde::{Deserialize, Serialize};

use crate::ids::{Epoch, Generation, WorkerIndex};

/// One object written for a checkpoint: an operator's state or a source's positions,
/// written by one worker, covering a range of key groups.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PartEntry {
    /// The operator's name, unique in the job.
    pub operator: String,
    /// The worker that wrote the part.
    pub worker: WorkerIndex,
    /// First key group in the part.
    pub key_group_start: u32,
    /// One past the last key group in the part.
    pub key_group_end: u32,
    /// The object's path relative to the store root.
    pub path: String,
    /// The object's size in bytes.
    pub size: u64,
    /// CRC-32 of the whole object, header included.
    pub crc32: u32,
}

/// A sink's pre-committed output that the checkpoint covers and that must be committed
/// once the checkpoint is complete.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SinkEntry {
    /// The sink's name, unique in the job.
    pub sink: String,
    /// The worker that pre-committed it.
    pub worker: WorkerIndex,
    /// The epoch whose output it holds.
    pub epoch: Epoch,
    /// The generation that wrote it.
    pub generation: Generation,
    /// The sink's own description of what to commit (a staged file name, a transaction id).
    pub handle: String,
}

/// Everything a restore needs to know about a complete checkpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// The job's name.
    pub job: String,
    /// The checkpoint's epoch: the state covers exactly the records of epochs <= this.
    pub epoch: Epoch,
    /// The generation (restart count) that wrote it.
    pub generation: Generation,
    /// The number of workers that wrote it.
    pub workers: usize,
    /// The number of key groups keyed state is split into (fixed for the job's life).
    pub key_groups: u32,
    /// Wall-clock milliseconds since the Unix epoch when the manifest was written.
    pub created_ms: u64,
    /// Wall-clock milliseconds since the Unix epoch of the epoch's barrier, when known:
    /// `created_ms - barrier_ms` is the checkpoint's duration.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub barrier_ms: Option<u64>,
    /// The names of the job's checkpointed operators, sources and sinks, so that a
    /// restore into a changed job graph is detected.
    pub operators: Vec<String>,
    /// Every state and position part.
    pub parts: Vec<PartEntry>,
    /// Every pre-committed sink output that this checkpoint commits.
    pub sinks: Vec<SinkEntry>,
    /// The name of the node whose link commits this checkpoint (see
    /// `protocol::Node`); absent in manifests written before links existed,
    /// which are committed by existing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub link: Option<String>,
}

impl Manifest {
    /// Total size of the checkpoint's parts in bytes.
    pub fn total_bytes(&self) -> u64 {
        self.parts.iter().map(|p| p.size).sum()
    }

    /// The parts of one operator.
    pub fn parts_of<'a>(&'a self, operator: &'a str) -> impl Iterator<Item = &'a PartEntry> + 'a {
        self.parts.iter().filter(move |p| p.operator == operator)
    }

    /// The pending outputs of one sink.
    pub fn sinks_of<'a>(&'a self, sink: &'a str) -> impl Iterator<Item = &'a SinkEntry> + 'a {
        self.sinks.iter().filter(move |s| s.sink == sink)
    }
}
