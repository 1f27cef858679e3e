//! What a job's operators see of the runtime: the per-process [`Shared`] state and the
//! per-worker [`JobContext`].
//!
//! ## Design
//!
//! One `Shared` per process holds what every worker reads: the configuration, the
//! generation, the store, the restored manifest and its kept parts, the epoch clock, the
//! I/O runtime, the stop request and the first failure. Invariants:
//! - it is built once, before the dataflow, from the start-up plan, and only the stop
//!   flag and the failure slot change afterwards;
//! - a worker's context adds its index and the number of workers; key-group ownership
//!   follows from those alone, so every worker agrees on who owns which key.

use std::hash::Hash;
use std::sync::{Arc, Mutex};

use serde::de::DeserializeOwned;
use weir_checkpoint::{CheckpointStore, Generation, Manifest, WorkerIndex};

use crate::clock::EpochClock;
use crate::config::JobConfig;
use crate::error::{Result, RuntimeError};
use crate::keygroup;
use crate::restore::{overlaps, RestoredParts};

/// State shared by every worker of a process.
pub struct Shared {
    pub(crate) config: JobConfig,
    pub(crate) generation: Generation,
    pub(crate) store: Option<CheckpointStore>,
    pub(crate) restored: Option<Manifest>,
    /// The complete checkpoints listed when the start was planned.
    pub(crate) seen: Vec<weir_checkpoint::Epoch>,
    /// The restored checkpoint's verified parts, until the workers have read them.
    pub(crate) restored_parts: RestoredParts,
    pub(crate) clock: EpochClock,
    pub(crate) runtime: tokio::runtime::Handle,
    pub(crate) coordinator: Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// Set once a stop request has been seen (see [`JobContext::stop_requested`]).
    pub(crate) stop: std::sync::atomic::AtomicBool,
    /// The run's first fatal failure (see [`JobContext::fail`]).
    pub(crate) failure: crate::failure::FailureSlot,
    /// The process's metrics.
    pub(crate) metrics: Arc<crate::metrics::Metrics>,
}

/// A worker's view of the running job.
#[derive(Clone)]
pub struct JobContext {
    pub(crate) shared: Arc<Shared>,
    worker: usize,
    peers: usize,
}

impl JobContext {
    /// The process's metrics, for connectors that count what they read and write.
    pub fn metrics(&self) -> &Arc<crate::metrics::Metrics> {
        &self.shared.metrics
    }

    pub(crate) fn new(shared: Arc<Shared>, worker: usize, peers: usize) -> Self {
        JobContext {
            shared,
            worker,
            peers,
        }
    }

    /// The job's configuration.
    pub fn config(&self) -> &JobConfig {
        &self.shared.config
    }
    /// This worker's index.
    pub fn worker(&self) -> usize {
        self.worker
    }
    /// This worker's index, as the protocol's reports and sink outputs carry it.
    pub fn worker_index(&self) -> WorkerIndex {
        WorkerIndex(self.worker)
    }
    /// The number of workers in the cluster.
    pub fn peers(&self) -> usize {
        self.peers
    }
    /// This run's generation.
    pub fn generation(&self) -> Generation {
        self.shared.generation
    }
    /// The name the runtime gives this worker's output of `epoch` in this run (see
    /// [`crate::OutputId`]).
    pub fn output(&self, epoch: u64) -> crate::twophase::OutputId {
        crate::twophase::OutputId {
            worker: self.worker_index(),
            epoch: weir_checkpoint::Epoch(epoch),
            generation: self.generation(),
        }
    }
    /// The epoch clock.
    pub fn clock(&self) -> &EpochClock {
        &self.shared.clock
    }
    /// The first epoch of this run (the restored epoch + 1 or later).
    pub fn first_epoch(&self) -> u64 {
        self.shared.clock.first
    }
    /// Whether checkpoints are taken.
    pub fn checkpointing(&self) -> bool {
        self.shared.config.checkpointing()
    }
    /// The delivery guarantee this run gives, which every source and sink follows: the
    /// configured one, or at-least-once when checkpoints are off (there is nothing to
    /// restore, so a restart replays all input).
    pub fn delivery(&self) -> crate::config::Delivery {
        if self.checkpointing() {
            self.shared.config.delivery
        } else {
            crate::config::Delivery::AtLeastOnce
        }
    }
    /// The checkpoint store, when checkpointing is on.
    pub fn store(&self) -> Option<&CheckpointStore> {
        self.shared.store.as_ref()
    }
    /// The manifest this run restored from.
    pub fn restored(&self) -> Option<&Manifest> {
        self.shared.restored.as_ref()
    }
    /// The number of key groups.
    pub fn key_groups(&self) -> u32 {
        self.shared.config.key_groups
    }
    /// The key groups this worker owns.
    pub fn key_group_range(&self) -> (u32, u32) {
        keygroup::range(self.worker, self.key_groups(), self.peers)
    }
    /// Whether this worker owns `key`.
    pub fn owns<K: Hash + ?Sized>(&self, key: &K) -> bool {
        keygroup::owner(
            keygroup::key_group(key, self.key_groups()),
            self.key_groups(),
            self.peers,
        ) == self.worker
    }
    /// Whether this process has seen a request to stop with a final savepoint
    /// (`weir stop`). Sources check it and end their input early; it is polled in the
    /// background, so it is cheap to call often.
    pub fn stop_requested(&self) -> bool {
        self.shared.stop.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Whether the job is stopping rather than at the end of its input, asked once the
    /// input has ended: reads the request from the checkpoint store, so that the answer
    /// agrees across processes. Operators that would flush on end of input (event-time
    /// windows) keep their state instead when the job is stopping.
    pub fn is_stopping(&self) -> bool {
        if self.stop_requested() {
            return true;
        }
        let Some(store) = self.store() else {
            return false;
        };
        match self.block_on(store.stop_request()) {
            Ok(request) => request.is_some(),
            Err(e) => {
                // Neither answer is safe to act on: the run fails, and nothing it does
                // after this is committed.
                self.fail("reading the stop request", e.into());
                true
            }
        }
    }

    /// Records a failure that ends the run, with where it happened (`sink `out``,
    /// `snapshot of `count``). The first failure of the process is kept; every worker
    /// then stops its dataflow, and [`crate::run`] returns it.
    ///
    /// An operator that calls this must stop working: emit nothing more, report no
    /// snapshot. The coordinator writes no manifest and commits nothing after a failure.
    pub fn fail(&self, context: &str, error: RuntimeError) {
        self.shared.failure.record(context, error);
    }

    /// Whether the run has failed (on any worker of this process): operators stop
    /// working once it has.
    pub fn failed(&self) -> bool {
        self.shared.failure.is_failed()
    }

    /// Runs a future to completion on the process's I/O runtime.
    pub fn block_on<F: std::future::Future>(&self, f: F) -> F::Output {
        self.shared.runtime.block_on(f)
    }
    /// The process's I/O runtime.
    pub fn runtime(&self) -> &tokio::runtime::Handle {
        &self.shared.runtime
    }

    /// Takes the restored part of `entry` that the run read and verified when it chose
    /// its checkpoint, if it is still kept (see `restore::RestoredParts`).
    pub(crate) fn take_restored_part(
        &self,
        entry: &weir_checkpoint::PartEntry,
    ) -> Option<weir_checkpoint::store::VerifiedPart> {
        self.shared.restored_parts.take(entry)
    }

    /// Reads the keyed state of operator `name` that this worker owns from the restored
    /// checkpoint, whatever the number of workers that wrote it.
    ///
    /// Returns an empty vector on a fresh start.
    pub fn restore_keyed<K, S>(&self, name: &str) -> Result<Vec<(K, S)>>
    where
        K: DeserializeOwned,
        S: DeserializeOwned,
    {
        let groups = self.restore_groups::<Vec<(K, S)>>(name)?;
        let mut out = Vec::with_capacity(groups.iter().map(|(_, e)| e.len()).sum());
        for (_, entries) in groups {
            out.extend(entries);
        }
        Ok(out)
    }

    /// Reads the key groups this worker owns of operator `name` from the restored
    /// checkpoint: one value per key group, as written by [`crate::encode_groups`].
    ///
    /// Returns an empty vector on a fresh start.
    pub fn restore_groups<T: DeserializeOwned>(&self, name: &str) -> Result<Vec<(u32, T)>> {
        let (Some(manifest), Some(store)) = (self.restored(), self.store()) else {
            return Ok(Vec::new());
        };
        let (lo, hi) = self.key_group_range();
        let mut out = Vec::new();
        for entry in manifest.parts_of(name) {
            if !overlaps(entry, (lo, hi)) {
                continue;
            }
            // Verified when the run chose the checkpoint; read again only if not kept.
            let part = match self.shared.restored_parts.take(entry) {
                Some(part) => part,
                None => self.block_on(store.get_part(entry))?,
            };
            let groups: Vec<(u32, T)> = part.decode()?;
            drop(part);
            crate::failpoint::hit("restore");
            out.extend(groups.into_iter().filter(|(g, _)| *g >= lo && *g < hi));
        }
        Ok(out)
    }
}
