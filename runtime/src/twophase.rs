//! The two-phase commit contract between sinks and the checkpoint coordinator.
//!
//! ## Design
//!
//! A sink's worker side ([`TwoPhaseSink`]) writes each epoch's records into a pending
//! output and, when its input frontier passes the epoch, makes it durable and invisible
//! (pre-commit). The runtime names every such output: an [`OutputId`] (worker, epoch,
//! generation) whose text form ([`OutputId::name`], [`OutputId::parse`]) a sink uses in
//! the names of what it stages, and a sink's own [`TwoPhaseSink::Handle`], a serde value
//! (often `()`) that the runtime stores in the checkpoint. The coordinator makes an
//! output visible through the sink's [`Committer`] once the checkpoint's manifest
//! exists. Invariants (DESIGN's 3 and 5):
//! - output of epoch `e` is visible only after checkpoint `e` (or a later one that carries
//!   it) is complete, and then exactly once: commit is idempotent;
//! - after a crash the restored checkpoint's outputs are committed again and every other
//!   leftover of an earlier generation is aborted
//!   ([`weir_checkpoint::protocol::recover_sink`]); on a fresh start the sink first
//!   forgets what an earlier run of the job committed ([`Committer::fresh_start`]), so
//!   that a new output is never mistaken for an old one;
//! - a process of an older generation commits nothing once a newer one has started (the
//!   coordinator checks the generation markers before each manifest);
//! - only the runtime decides the delivery guarantee: with exactly-once it hands each
//!   pre-committed output to the checkpoint, with at-least-once and at-most-once it
//!   commits it at once.

use std::fmt;
use std::sync::Arc;

use serde::de::DeserializeOwned;
use serde::Serialize;
use weir_checkpoint::{Epoch, Generation, SinkEntry, WorkerIndex};

use crate::error::{Result, RuntimeError};

/// Which output of a sink: one worker's output of one epoch in one generation. The
/// runtime names outputs; a sink puts [`OutputId::name`] into what it stages (a file
/// name, a transaction id, a key) and reads it back with [`OutputId::parse`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct OutputId {
    /// The worker that wrote it.
    pub worker: WorkerIndex,
    /// The epoch whose records it holds.
    pub epoch: Epoch,
    /// The generation (run) that wrote it.
    pub generation: Generation,
}

impl OutputId {
    /// The output's name: `e<epoch, 20 digits>-g<generation>-w<worker>`. Names sort by
    /// epoch.
    ///
    /// ```
    /// use weir_runtime::{Epoch, Generation, OutputId, WorkerIndex};
    /// let id = OutputId { worker: WorkerIndex(1), epoch: Epoch(42), generation: Generation(3) };
    /// assert_eq!(id.name(), "e00000000000000000042-g3-w1");
    /// assert_eq!(OutputId::parse(&id.name()), Some(id));
    /// ```
    pub fn name(&self) -> String {
        format!(
            "e{:020}-g{}-w{}",
            self.epoch.0, self.generation.0, self.worker.0
        )
    }

    /// The output a [`name`](OutputId::name) names; `None` for any other text.
    pub fn parse(name: &str) -> Option<OutputId> {
        let mut parts = name.strip_prefix('e')?.split('-');
        let epoch = parts.next()?;
        let generation = parts.next()?.strip_prefix('g')?;
        let worker = parts.next()?.strip_prefix('w')?;
        let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
        if parts.next().is_some() || epoch.len() != 20 || !digits(epoch) {
            return None;
        }
        if !digits(generation) || !digits(worker) {
            return None;
        }
        Some(OutputId {
            worker: WorkerIndex(worker.parse().ok()?),
            epoch: Epoch(epoch.parse().ok()?),
            generation: Generation(generation.parse().ok()?),
        })
    }
}

impl fmt::Display for OutputId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name())
    }
}

/// A pre-committed output as its committer sees it: which output, and the sink's handle.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Output<H> {
    /// Which output.
    pub id: OutputId,
    /// What the sink's pre-commit returned for it.
    pub handle: H,
}

/// Output made durable but not yet visible: what the sink operator makes of a
/// [`TwoPhaseSink::pre_commit`].
///
/// It is neither `Clone` nor open: the sink operator consumes it exactly once, either by
/// handing it to the checkpoint (exactly-once delivery; the coordinator commits it once
/// the checkpoint is complete) or by committing it at once (at-least-once and
/// at-most-once delivery). Dropping it would lose the output, hence `#[must_use]`.
#[must_use = "pre-committed output must be committed or handed to the checkpoint"]
#[derive(Debug, PartialEq, Eq)]
pub struct PreCommitted(SinkEntry);

impl PreCommitted {
    pub(crate) fn new(entry: SinkEntry) -> Self {
        PreCommitted(entry)
    }

    /// The output it describes, as the checkpoint stores it.
    pub fn entry(&self) -> &SinkEntry {
        &self.0
    }

    /// Hands the output to the checkpoint: the coordinator commits it once the checkpoint
    /// that covers it is complete.
    pub(crate) fn into_checkpoint(self) -> SinkEntry {
        self.0
    }

    /// Makes the output visible now, through the sink's committer.
    pub(crate) fn commit(self, committer: &dyn Commit) -> Result<()> {
        committer.commit(&self.0)
    }
}

/// Makes pre-committed output visible, or discards it. Runs on the coordinator.
///
/// Contract: `commit` is idempotent (committing twice, or committing output that a
/// previous generation already committed, succeeds and changes nothing); `abort` of
/// output that no longer exists succeeds. Committing output that was neither committed
/// nor is still pre-committed is an error: it would be a silent loss.
pub trait Committer: Send + Sync + 'static {
    /// The sink's handle ([`TwoPhaseSink::Handle`]).
    type Handle: Serialize + DeserializeOwned + Send + 'static;
    /// Every output of this sink that is pre-committed and not yet committed or aborted.
    fn staged(&self) -> Result<Vec<Output<Self::Handle>>>;
    /// Makes an output visible.
    fn commit(&self, output: &Output<Self::Handle>) -> Result<()>;
    /// Discards an output.
    fn abort(&self, output: &Output<Self::Handle>) -> Result<()>;
    /// Called once, before recovery, when the job starts without a checkpoint: forget
    /// what an earlier run of the job under the same name committed (commit markers, a
    /// ledger), so that this run's outputs, whose generations may repeat the earlier
    /// run's, are never taken for committed ones. Committed output itself stays.
    fn fresh_start(&self) -> Result<()> {
        Ok(())
    }
}

/// The writing side of a two-phase-commit sink, on one worker.
pub trait TwoPhaseSink: 'static {
    /// What the sink writes.
    type Record;
    /// What the sink needs, besides the [`OutputId`], to commit or abort an output
    /// (`()` when the id says it all). The runtime stores it in the checkpoint.
    type Handle: Serialize + DeserializeOwned + Send + 'static;
    /// Adds a record to `epoch`'s pending output.
    fn write(&mut self, epoch: u64, record: Self::Record) -> Result<()>;
    /// Makes `epoch`'s output durable and invisible; `None` if the epoch had no output.
    /// The output is `ctx.output(epoch)` ([`crate::JobContext::output`]).
    ///
    /// It is an error to write to an epoch after pre-committing it.
    fn pre_commit(&mut self, epoch: u64) -> Result<Option<Self::Handle>>;
}

/// The committer of a sink that never stages output: one that makes each epoch visible
/// when the epoch ends (at-least-once and at-most-once delivery to a destination without
/// transactions) and pre-commits nothing. Nothing is ever staged, so there is nothing
/// to commit or abort.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoStaging;

impl Committer for NoStaging {
    type Handle = ();
    fn staged(&self) -> Result<Vec<Output<()>>> {
        Ok(Vec::new())
    }
    fn commit(&self, _output: &Output<()>) -> Result<()> {
        Ok(())
    }
    fn abort(&self, _output: &Output<()>) -> Result<()> {
        Ok(())
    }
}

/// A committer as the coordinator drives it: on the checkpoint's sink entries, whatever
/// the sink's handle type.
pub(crate) trait Commit: Send + Sync {
    fn staged(&self) -> Result<Vec<SinkEntry>>;
    fn commit(&self, entry: &SinkEntry) -> Result<()>;
    fn abort(&self, entry: &SinkEntry) -> Result<()>;
    fn fresh_start(&self) -> Result<()>;
}

/// A typed committer of the sink `sink`, driven on sink entries.
pub(crate) struct Typed<C: ?Sized> {
    pub(crate) sink: String,
    pub(crate) committer: Arc<C>,
}

impl<C: Committer + ?Sized> Typed<C> {
    fn output(&self, entry: &SinkEntry) -> Result<Output<C::Handle>> {
        let handle = serde_json::from_str(&entry.handle).map_err(|e| RuntimeError::Io {
            operator: self.sink.clone(),
            reason: format!(
                "the checkpoint's handle `{}` of output {} is not this sink's: {e}; was the checkpoint written by another version of the job?",
                entry.handle,
                id_of(entry)
            ),
        })?;
        Ok(Output {
            id: id_of(entry),
            handle,
        })
    }
}

/// The output a sink entry describes.
pub(crate) fn id_of(entry: &SinkEntry) -> OutputId {
    OutputId {
        worker: entry.worker,
        epoch: entry.epoch,
        generation: entry.generation,
    }
}

/// The sink entry of `sink`'s output `id` with `handle`.
pub(crate) fn entry_of<H: Serialize>(sink: &str, id: OutputId, handle: &H) -> Result<SinkEntry> {
    let handle = serde_json::to_string(handle).map_err(|e| RuntimeError::Io {
        operator: sink.to_string(),
        reason: format!("cannot encode the handle of output {id}: {e}"),
    })?;
    Ok(SinkEntry {
        sink: sink.to_string(),
        worker: id.worker,
        epoch: id.epoch,
        generation: id.generation,
        handle,
    })
}

impl<C: Committer + ?Sized> Commit for Typed<C> {
    fn staged(&self) -> Result<Vec<SinkEntry>> {
        self.committer
            .staged()?
            .iter()
            .map(|o| entry_of(&self.sink, o.id, &o.handle))
            .collect()
    }
    fn commit(&self, entry: &SinkEntry) -> Result<()> {
        self.committer.commit(&self.output(entry)?)
    }
    fn abort(&self, entry: &SinkEntry) -> Result<()> {
        self.committer.abort(&self.output(entry)?)
    }
    fn fresh_start(&self) -> Result<()> {
        self.committer.fresh_start()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_names_round_trip_and_reject_other_text() {
        let id = OutputId {
            worker: WorkerIndex(7),
            epoch: Epoch(u64::MAX),
            generation: Generation(12),
        };
        assert_eq!(OutputId::parse(&id.name()), Some(id));
        for bad in [
            "",
            "e1-g0-w0",
            "e00000000000000000001-g0",
            "e00000000000000000001-g0-w0-x",
            "e00000000000000000001-gx-w0",
            "e00000000000000000001-g0-w",
            "x00000000000000000001-g0-w0",
            "e0000000000000000000a-g0-w0",
        ] {
            assert_eq!(OutputId::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn names_sort_by_epoch() {
        let a = OutputId {
            worker: WorkerIndex(9),
            epoch: Epoch(9),
            generation: Generation(9),
        };
        let b = OutputId {
            epoch: Epoch(10),
            ..a
        };
        assert!(a.name() < b.name());
    }
}
