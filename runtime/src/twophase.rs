//! The two-phase commit contract between sinks and the checkpoint coordinator.
//!
//! ## Design
//!
//! A sink's worker side ([`TwoPhaseSink`]) writes each epoch's records into a pending
//! output and, when its input frontier passes the epoch, makes it durable and invisible
//! (pre-commit). The handle goes into the checkpoint; the coordinator makes it visible
//! through the sink's [`Committer`] once the checkpoint's manifest exists. Invariants
//! (DESIGN's 3 and 5):
//! - output of epoch `e` is visible only after checkpoint `e` (or a later one that carries
//!   it) is complete, and then exactly once: commit is idempotent;
//! - after a crash the restored checkpoint's handles are committed again and every other
//!   leftover of an earlier generation is aborted
//!   ([`weir_checkpoint::protocol::recover_sink`]);
//! - a process of an older generation commits nothing once a newer one has started (the
//!   coordinator checks the generation markers before each manifest).

use weir_checkpoint::SinkEntry;

use crate::error::Result;

/// Output made durable but not yet visible, as [`TwoPhaseSink::pre_commit`] returns it.
///
/// It is neither `Clone` nor open: the sink operator consumes it exactly once, either by
/// handing it to the checkpoint (exactly-once delivery; the coordinator commits it once
/// the checkpoint is complete) or by committing it at once (at-least-once and
/// at-most-once delivery). Dropping it would lose the output, hence `#[must_use]`.
#[must_use = "pre-committed output must be committed or handed to the checkpoint"]
#[derive(Debug, PartialEq, Eq)]
pub struct PreCommitted(SinkEntry);

impl PreCommitted {
    /// The pre-committed output `entry` (its sink, worker, epoch, generation and the
    /// sink's handle).
    pub fn new(entry: SinkEntry) -> Self {
        PreCommitted(entry)
    }

    /// The output it describes.
    pub fn entry(&self) -> &SinkEntry {
        &self.0
    }

    /// Hands the output to the checkpoint: the coordinator commits it once the checkpoint
    /// that covers it is complete.
    pub(crate) fn into_checkpoint(self) -> SinkEntry {
        self.0
    }

    /// Makes the output visible now, through the sink's committer.
    pub(crate) fn commit(self, committer: &dyn Committer) -> Result<()> {
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
    /// Every output of this sink that is pre-committed and not yet committed or aborted.
    fn staged(&self) -> Result<Vec<SinkEntry>>;
    /// Makes an output visible.
    fn commit(&self, entry: &SinkEntry) -> Result<()>;
    /// Discards an output.
    fn abort(&self, entry: &SinkEntry) -> Result<()>;
}

/// The writing side of a two-phase-commit sink, on one worker.
pub trait TwoPhaseSink: 'static {
    /// What the sink writes.
    type Record;
    /// Adds a record to `epoch`'s pending output.
    fn write(&mut self, epoch: u64, record: Self::Record) -> Result<()>;
    /// Makes `epoch`'s output durable and invisible; `None` if the epoch had no output.
    ///
    /// It is an error to write to an epoch after pre-committing it.
    fn pre_commit(&mut self, epoch: u64) -> Result<Option<PreCommitted>>;
}

/// The committer of a sink that never stages output: one that makes each epoch visible
/// when the epoch ends (at-least-once and at-most-once delivery to a destination without
/// transactions) and returns no [`PreCommitted`]. Nothing is ever staged, so there is
/// nothing to commit or abort.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoStaging;

impl Committer for NoStaging {
    fn staged(&self) -> Result<Vec<SinkEntry>> {
        Ok(Vec::new())
    }
    fn commit(&self, _entry: &SinkEntry) -> Result<()> {
        Ok(())
    }
    fn abort(&self, _entry: &SinkEntry) -> Result<()> {
        Ok(())
    }
}
