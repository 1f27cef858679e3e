//! The checkpoint coordinator: collects reports on worker 0, writes manifests, commits
//! sink output, applies retention, and recovers sinks at start.
//!
//! ## Design
//!
//! Every checkpointed operator sends its reports, timestamped with their epoch, to
//! worker 0. The coordinator's input frontier passes epoch `e` only when every
//! operator on every worker has released its report capability for `e`, that is, when
//! every part of `e` is durable. The pure [`Assembler`] then decides whether `e` is a
//! complete checkpoint. Manifest writes and commits run in order on one background
//! task, so that record processing never waits for storage; retention runs beside it,
//! one pass at a time, so that the next manifest does not wait for old checkpoints'
//! deletion either. Before writing a manifest, the task checks that no newer generation
//! has started (fencing).
//! Each of the task's storage steps runs within the checkpoint timeout: a store that
//! does not answer fails that checkpoint (counted against
//! `tolerable-failed-checkpoints`) instead of stalling every later one.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use timely::dataflow::channels::pact::Exchange;
use timely::dataflow::operators::generic::Operator;
use timely::dataflow::Stream;
use weir_checkpoint::protocol::{self, Node, SinkAction};
use weir_checkpoint::store::Committed;
use weir_checkpoint::{Assembler, Closed, Epoch, Manifest, Report, WorkerIndex};

use crate::context::JobContext;
use crate::error::{Result, RuntimeError};
use crate::twophase::Commit;

/// Commits the restored checkpoint's sink output and aborts every other leftover.
pub(crate) fn recover_sinks(
    ctx: &JobContext,
    committers: &BTreeMap<String, Arc<dyn Commit>>,
) -> Result<()> {
    for (name, committer) in committers {
        let restored: Vec<_> = match ctx.restored() {
            Some(m) => m.sinks_of(name).cloned().collect(),
            None => {
                // A fresh start: what an earlier run of this job committed must not be
                // mistaken for this run's output.
                committer.fresh_start()?;
                Vec::new()
            }
        };
        let staged = committer.staged()?;
        for action in protocol::recover_sink(&restored, &staged, ctx.generation()) {
            match action {
                SinkAction::Commit(entry) => {
                    tracing::info!(sink = %name, epoch = %entry.epoch, handle = %entry.handle, "recovery: committing output of the restored checkpoint");
                    committer.commit(&entry)?;
                }
                SinkAction::Abort(entry) => {
                    tracing::info!(sink = %name, epoch = %entry.epoch, handle = %entry.handle, "recovery: aborting output no checkpoint covers");
                    committer.abort(&entry)?;
                }
            }
        }
    }
    Ok(())
}

/// Installs the coordinator on the merged report stream.
pub(crate) fn install(
    reports: Stream<'_, u64, Vec<Report>>,
    ctx: JobContext,
    names: BTreeSet<String>,
    committers: BTreeMap<String, Arc<dyn Commit>>,
    follows: Option<Node>,
) {
    let is_coordinator = ctx.worker() == 0;
    let expected: Vec<(String, WorkerIndex)> = names
        .iter()
        .flat_map(|n| (0..ctx.peers()).map(move |w| (n.clone(), WorkerIndex(w))))
        .collect();
    let mut assembler = Assembler::new(expected);
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<Closed>();
    let completed = Arc::new(std::sync::Mutex::new(Vec::<Epoch>::new()));
    if is_coordinator {
        let operators = names.into_iter().collect();
        let follows = follows.expect("the coordinator's worker sealed the start");
        let inner = ctx.runtime().spawn(run(
            ctx.clone(),
            operators,
            committers,
            rx,
            Arc::clone(&completed),
            follows,
        ));
        // The coordinator's error, or its panic (a committer that panics), fails the run:
        // without a coordinator no checkpoint would ever complete again.
        let task = ctx.runtime().spawn({
            let ctx = ctx.clone();
            async move {
                match inner.await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => ctx.fail("checkpoint coordinator", e),
                    Err(e) => ctx.fail(
                        "checkpoint coordinator",
                        RuntimeError::Dataflow(format!("the coordinator task ended: {e}")),
                    ),
                }
            }
        });
        *ctx.shared.coordinator.lock().expect("poisoned") = Some(task);
    }
    let mut tx = Some(tx);
    reports.sink(
        Exchange::new(|_: &Report| 0),
        "weir-coordinator",
        move |(input, frontier)| {
            input.for_each(|_, data| {
                for report in data.drain(..) {
                    assembler.add(report);
                }
            });
            if !is_coordinator {
                return;
            }
            for epoch in completed.lock().expect("poisoned").drain(..) {
                assembler.completed(epoch);
            }
            let front = frontier.frontier().iter().min().copied().map(Epoch);
            if let Some(sender) = &tx {
                for closed in assembler.advance(front) {
                    // A send fails only once the coordinator task has ended, and its end
                    // (an error or a panic) is recorded as the run's failure.
                    let _ = sender.send(closed);
                }
            }
            if front.is_none() {
                tx = None;
            }
        },
    );
}

async fn run(
    ctx: JobContext,
    operators: Vec<String>,
    committers: BTreeMap<String, Arc<dyn Commit>>,
    mut rx: tokio::sync::mpsc::UnboundedReceiver<Closed>,
    completed: Arc<std::sync::Mutex<Vec<Epoch>>>,
    mut follows: Node,
) -> Result<()> {
    let store = ctx.store().expect("checkpointing is on").clone();
    let config = ctx.config().clone();
    let timeout = Duration::from_millis(config.checkpoint_timeout_ms.max(1));
    let metrics = Arc::clone(ctx.metrics());
    let mut failures = FailedCheckpoints::new(config.tolerable_failed_checkpoints);
    failures.counter = Some(metrics.checkpoints_failed.clone());
    // Whether the newest epoch closed so far ended committed; at the end of the input it
    // must, or the job's last output would never become visible.
    let mut last_committed: Option<(Epoch, bool)> = None;
    let mut retention = Retention::default();
    while let Some(closed) = rx.recv().await {
        if ctx.failed() {
            // A failed run completes no checkpoint: what it did after the failure is
            // not known to be whole.
            return Ok(());
        }
        let (epoch, parts, sinks) = match closed {
            Closed::Complete {
                epoch,
                parts,
                sinks,
            } => (epoch, parts, sinks),
            Closed::Skipped { epoch, missing } => {
                last_committed = Some((epoch, false));
                tracing::debug!(
                    epoch = %epoch,
                    ?missing,
                    "epoch is not a checkpoint: some operators skipped it"
                );
                continue;
            }
            Closed::Failed { epoch, errors } => {
                last_committed = Some((epoch, false));
                failures.fail(format!("checkpoint {epoch}: {}", errors.join("; ")))?;
                continue;
            }
        };
        let closed_at = std::time::Instant::now();
        if let Some(barrier) = ctx.clock().ended_at(epoch.0) {
            metrics
                .snapshot_seconds
                .observe(closed_at.saturating_duration_since(barrier).as_secs_f64());
        }
        match within(timeout, store.generations()).await {
            Ok(gens) if protocol::is_fenced(ctx.generation(), &gens) => {
                let newer = gens.iter().copied().max().unwrap_or_default();
                return Err(RuntimeError::Fenced {
                    generation: ctx.generation(),
                    newer,
                });
            }
            Ok(_) => {}
            Err(e) => {
                last_committed = Some((epoch, false));
                failures.fail(format!(
                    "checkpoint {epoch}: cannot read generation markers: {e}"
                ))?;
                continue;
            }
        }
        crate::failpoint::hit("before-manifest");
        if ctx.failed() {
            return Ok(());
        }
        let created_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        // The barrier's wall-clock time, from how long ago the epoch ended.
        let barrier_ms = ctx
            .clock()
            .ended_at(epoch.0)
            .map(|b| created_ms.saturating_sub(b.elapsed().as_millis() as u64));
        let manifest = Manifest {
            job: config.job.clone(),
            epoch,
            generation: ctx.generation(),
            workers: ctx.peers(),
            key_groups: config.key_groups,
            created_ms,
            barrier_ms,
            operators: operators.clone(),
            parts,
            sinks,
            link: Some(follows.name()),
        };
        // A manifest or link write that times out may still have reached the store: the
        // checkpoint is then committed although it counts as failed here. That is safe:
        // its sink outputs stay owed and are committed with the next committed
        // checkpoint, and a restore from it commits them too (commits are idempotent).
        let writing = std::time::Instant::now();
        let commit = async {
            store.write_manifest(&manifest).await?;
            crate::failpoint::hit("before-link");
            store.link_manifest(&manifest, follows).await
        };
        match within(timeout, commit).await {
            Ok(Committed::Yes { next }) => follows = next,
            Ok(Committed::Fenced { by }) => {
                return Err(RuntimeError::Fenced {
                    generation: ctx.generation(),
                    newer: by,
                });
            }
            Ok(Committed::Earlier { epoch: earlier }) => {
                follows = Node::Checkpoint(earlier);
                last_committed = Some((epoch, false));
                failures.fail(format!(
                    "checkpoint {epoch}: checkpoint {earlier}, which looked failed, was committed; the next checkpoint follows it"
                ))?;
                continue;
            }
            Err(e) => {
                last_committed = Some((epoch, false));
                failures.fail(format!("checkpoint {epoch}: {e}"))?;
                continue;
            }
        }
        failures.succeeded();
        metrics
            .manifest_seconds
            .observe(writing.elapsed().as_secs_f64());
        metrics
            .checkpoint_seconds
            .observe(closed_at.elapsed().as_secs_f64());
        metrics.completed(epoch.0);
        metrics.checkpoint_bytes.set(manifest.total_bytes() as i64);
        let uploaded: u64 = manifest
            .parts
            .iter()
            .filter(|p| weir_checkpoint::layout::object_checkpoint_dir(&p.path) == Some(epoch))
            .map(|p| p.size)
            .sum();
        metrics.uploaded_bytes.inc_by(uploaded);
        metrics.pending_outputs.set(manifest.sinks.len() as i64);
        let committing = std::time::Instant::now();
        tracing::info!(
            epoch = %epoch,
            parts = manifest.parts.len(),
            bytes = manifest.total_bytes(),
            uploaded,
            barrier_to_manifest_ms = manifest.barrier_ms.map(|b| manifest.created_ms.saturating_sub(b)),
            outputs = manifest.sinks.len(),
            "checkpoint complete"
        );
        completed.lock().expect("poisoned").push(epoch);
        crate::failpoint::hit("after-manifest");
        for (i, entry) in manifest.sinks.iter().enumerate() {
            if i == 1 {
                crate::failpoint::hit("mid-commit");
            }
            if ctx.failed() {
                // The rest is committed by the restart's recovery, from this manifest.
                return Ok(());
            }
            let Some(committer) = committers.get(&entry.sink) else {
                return Err(RuntimeError::config(
                    "sink",
                    format!("no committer for sink `{}`", entry.sink),
                ));
            };
            committer.commit(entry).map_err(|e| {
                e.context(format!(
                    "commit of sink `{}` epoch {}",
                    entry.sink, entry.epoch
                ))
            })?;
        }
        metrics
            .commit_seconds
            .observe(committing.elapsed().as_secs_f64());
        metrics.pending_outputs.set(0);
        last_committed = Some((epoch, true));
        retention.start(&store, config.retain, timeout).await;
    }
    if ctx.failed() {
        // The input ended because the dataflow was dropped, not because it was done.
        return Ok(());
    }
    // The job's checkpoints are as retention leaves them once the job has ended.
    retention.finish().await;
    match last_committed {
        Some((epoch, false)) => Err(RuntimeError::Dataflow(format!(
            "the final checkpoint {epoch} did not complete, so the job's last output is not committed; a restart from the latest checkpoint finishes it"
        ))),
        Some((epoch, true)) => finish_stop(&store, epoch).await,
        None => Ok(()),
    }
}

/// Counts consecutive failed checkpoints against `tolerable-failed-checkpoints`.
///
/// A complete checkpoint resets the count; an epoch that is not a checkpoint (some
/// operator skipped it) leaves it as it is.
#[derive(Debug)]
struct FailedCheckpoints {
    failed: u32,
    tolerated: u32,
    /// Counts every failed checkpoint for the metrics.
    counter: Option<prometheus_client::metrics::counter::Counter>,
}

impl FailedCheckpoints {
    fn new(tolerated: u32) -> Self {
        FailedCheckpoints {
            failed: 0,
            tolerated,
            counter: None,
        }
    }

    /// Counts one more failed checkpoint: how many failed in a row, or the error that
    /// fails the job once more than the tolerated number have.
    fn count(&mut self, reason: String) -> Result<u32> {
        self.failed = self.failed.saturating_add(1);
        if self.failed > self.tolerated {
            return Err(RuntimeError::TooManyFailedCheckpoints {
                failed: self.failed,
                tolerated: self.tolerated,
                last: reason,
            });
        }
        Ok(self.failed)
    }

    /// Logs a failed checkpoint; an error (retryable) once too many failed in a row.
    fn fail(&mut self, reason: String) -> Result<()> {
        if let Some(c) = &self.counter {
            c.inc();
        }
        tracing::warn!(failed = self.failed + 1, tolerated = self.tolerated, reason = %reason, "checkpoint failed");
        self.count(reason).map(|_| ())
    }

    /// A checkpoint completed.
    fn succeeded(&mut self) {
        self.failed = 0;
    }
}

/// Retention of old checkpoints, run beside the coordinator's loop rather than in it: on
/// an object store it lists every checkpoint directory and reads the retained manifests,
/// which would otherwise delay the next checkpoint's manifest by as many round trips.
/// One pass runs at a time; a checkpoint that completes while one runs starts none, and
/// the pass after it deletes what it would have. When the job ends, a pass owed is run
/// (unless the pass before it failed), so that an ended job's checkpoints are those
/// retention keeps. A pass left running
/// when the coordinator returns early (fenced, failed) is aborted: only the current
/// generation deletes.
#[derive(Default)]
struct Retention {
    running: Option<tokio::task::JoinHandle<bool>>,
    /// A checkpoint completed while a pass was running.
    owed: Option<(weir_checkpoint::CheckpointStore, usize, Duration)>,
}

impl Retention {
    /// Starts a pass that keeps the newest `retain` checkpoints, unless one is running.
    async fn start(
        &mut self,
        store: &weir_checkpoint::CheckpointStore,
        retain: usize,
        timeout: Duration,
    ) {
        if self.running.as_ref().is_some_and(|h| !h.is_finished()) {
            self.owed = Some((store.clone(), retain, timeout));
            return;
        }
        if let Some(done) = self.running.take() {
            // Finished, so this does not wait: it passes on a panic of the pass.
            resume_panic(done.await);
        }
        self.owed = None;
        self.running = Some(tokio::spawn(retain_newest(store.clone(), retain, timeout)));
    }

    /// Waits for the running pass, then runs the pass owed, if any, unless the running
    /// one failed (a store that stopped answering would hold the end for another
    /// timeout; the next run's retention deletes what it would have).
    async fn finish(&mut self) {
        let succeeded = match self.running.take() {
            Some(h) => resume_panic(h.await),
            None => true,
        };
        if let (Some((store, retain, timeout)), true) = (self.owed.take(), succeeded) {
            retain_newest(store, retain, timeout).await;
        }
    }
}

/// Whether a retention pass succeeded; passes on its panic, as if it had run on the
/// coordinator.
fn resume_panic(done: std::result::Result<bool, tokio::task::JoinError>) -> bool {
    match done {
        Ok(succeeded) => succeeded,
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Err(_) => false,
    }
}

impl Drop for Retention {
    fn drop(&mut self) {
        if let Some(h) = &self.running {
            h.abort();
        }
    }
}

/// One pass of retention, and whether it succeeded; a failure keeps the old
/// checkpoints and is logged.
async fn retain_newest(
    store: weir_checkpoint::CheckpointStore,
    retain: usize,
    timeout: Duration,
) -> bool {
    match within(timeout, store.apply_retention(retain)).await {
        Ok(deleted) => {
            if !deleted.is_empty() {
                tracing::debug!(?deleted, "retention deleted old checkpoints");
            }
            true
        }
        Err(e) => {
            tracing::warn!(error = %e, "retention failed; old checkpoints are kept");
            false
        }
    }
}

/// Runs one storage step of a checkpoint within the checkpoint timeout. A store that
/// does not answer (against a server that is down, the S3 client retries for minutes)
/// then fails this checkpoint instead of holding up every later one and the count of
/// failed checkpoints.
async fn within<T>(
    timeout: Duration,
    step: impl std::future::Future<Output = weir_checkpoint::Result<T>>,
) -> std::result::Result<T, String> {
    match tokio::time::timeout(timeout, step).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!(
            "the checkpoint store did not answer within {timeout:?} (checkpoint-timeout-ms)"
        )),
    }
}

/// If the job was asked to stop, copies its final checkpoint `epoch` to the requested
/// savepoint and clears the request.
async fn finish_stop(store: &weir_checkpoint::CheckpointStore, epoch: Epoch) -> Result<()> {
    let fail =
        |e: weir_checkpoint::CheckpointError| RuntimeError::from(e).context("final savepoint");
    let Some(name) = store.stop_request().await.map_err(fail)? else {
        return Ok(());
    };
    match store.create_savepoint(&name, Some(epoch)).await {
        Ok(_) => {
            tracing::info!(savepoint = %name, epoch = %epoch, "stopped with a final savepoint")
        }
        // Taken by an earlier run that died before clearing the request.
        Err(weir_checkpoint::CheckpointError::ManifestExists { .. }) => {
            tracing::warn!(savepoint = %name, "the savepoint exists already; keeping it")
        }
        Err(e) => return Err(fail(e)),
    }
    store.clear_stop_request().await.map_err(fail)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A complete checkpoint of `epoch` in `store`: one part and its manifest.
    async fn checkpoint(store: &weir_checkpoint::CheckpointStore, epoch: u64) {
        let path = store.layout().part(Epoch(epoch), "op", "w0");
        let part = store
            .put_part(path, "op", WorkerIndex(0), (0, 128), vec![1, 2, 3])
            .await
            .unwrap();
        let manifest = Manifest {
            job: "job".into(),
            epoch: Epoch(epoch),
            generation: weir_checkpoint::Generation(0),
            workers: 1,
            key_groups: 128,
            created_ms: 0,
            barrier_ms: None,
            operators: vec!["op".into()],
            parts: vec![part],
            sinks: Vec::new(),
            link: None,
        };
        store.put_manifest(&manifest).await.unwrap();
    }

    #[tokio::test]
    async fn a_retention_pass_owed_while_one_ran_is_run_before_the_job_ends() {
        let store = weir_checkpoint::CheckpointStore::open("memory://", "job").unwrap();
        for e in 1..=6 {
            checkpoint(&store, e).await;
        }
        let timeout = Duration::from_secs(10);
        let mut retention = Retention::default();
        // On this single-threaded runtime the first pass cannot run before this task
        // yields, so the second start finds it running and is owed.
        retention.start(&store, 5, timeout).await;
        retention.start(&store, 2, timeout).await;
        assert!(retention.owed.is_some());
        retention.finish().await;
        let (complete, _) = store.list().await.unwrap();
        assert_eq!(complete, vec![Epoch(5), Epoch(6)]);
    }

    #[test]
    fn the_job_fails_only_after_more_consecutive_failed_checkpoints_than_tolerated() {
        let mut f = FailedCheckpoints::new(2);
        assert_eq!(f.count("a".into()).unwrap(), 1);
        assert_eq!(f.count("b".into()).unwrap(), 2);
        match f.count("c".into()) {
            Err(RuntimeError::TooManyFailedCheckpoints {
                failed: 3,
                tolerated: 2,
                last,
            }) => assert_eq!(last, "c"),
            other => panic!("expected TooManyFailedCheckpoints, got {other:?}"),
        }
    }

    #[test]
    fn a_complete_checkpoint_resets_the_count_of_failed_ones() {
        let mut f = FailedCheckpoints::new(1);
        assert!(f.count("a".into()).is_ok());
        f.succeeded();
        assert!(f.count("b".into()).is_ok());
        assert!(f.count("c".into()).is_err());
        // Zero tolerated: the first failure fails the job.
        assert!(FailedCheckpoints::new(0).count("d".into()).is_err());
    }

    #[test]
    fn too_many_failed_checkpoints_is_retryable_and_names_the_counts() {
        let e = FailedCheckpoints::new(0)
            .count("checkpoint 9: down".into())
            .unwrap_err();
        assert!(!e.is_permanent());
        assert_eq!(
            e.to_string(),
            "1 consecutive checkpoints failed (tolerated: 0); last error: checkpoint 9: down"
        );
    }

    #[tokio::test]
    async fn a_storage_step_that_does_not_answer_fails_within_the_timeout() {
        let never = std::future::pending::<weir_checkpoint::Result<()>>();
        let err = within(Duration::from_millis(10), never).await.unwrap_err();
        assert!(err.contains("checkpoint-timeout-ms"), "{err}");
        assert_eq!(
            within(Duration::from_millis(10), async { Ok(7) }).await,
            Ok(7)
        );
    }
}
