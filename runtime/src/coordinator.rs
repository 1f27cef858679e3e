//! The checkpoint coordinator: collects reports on worker 0, writes manifests, commits
//! sink output, applies retention, and recovers sinks at start.
//!
//! ## Design
//!
//! Every checkpointed operator sends its reports, timestamped with their epoch, to
//! worker 0. The coordinator's input frontier passes epoch `e` only when every
//! operator on every worker has released its report capability for `e`, that is, when
//! every part of `e` is durable. The pure [`Assembler`] then decides whether `e` is a
//! complete checkpoint. Manifest writes, commits and retention run in order on one
//! background task, so that record processing never waits for storage. Before writing a
//! manifest, the task checks that no newer generation has started (fencing).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use timely::dataflow::channels::pact::Exchange;
use timely::dataflow::operators::generic::Operator;
use timely::dataflow::Stream;
use weir_checkpoint::protocol::{self, SinkAction};
use weir_checkpoint::{Assembler, Closed, Manifest, Report};

use crate::context::JobContext;
use crate::error::{Result, RuntimeError};
use crate::sink::Committer;

/// Commits the restored checkpoint's sink output and aborts every other leftover.
pub(crate) fn recover_sinks(
    ctx: &JobContext,
    committers: &BTreeMap<String, Arc<dyn Committer>>,
) -> Result<()> {
    for (name, committer) in committers {
        let restored: Vec<_> = ctx
            .restored()
            .map(|m| m.sinks_of(name).cloned().collect())
            .unwrap_or_default();
        let staged = committer.staged()?;
        for action in protocol::recover_sink(&restored, &staged, ctx.generation()) {
            match action {
                SinkAction::Commit(entry) => {
                    tracing::info!(sink = %name, epoch = entry.epoch, handle = %entry.handle, "recovery: committing output of the restored checkpoint");
                    committer.commit(&entry)?;
                }
                SinkAction::Abort(entry) => {
                    tracing::info!(sink = %name, epoch = entry.epoch, handle = %entry.handle, "recovery: aborting output no checkpoint covers");
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
    committers: BTreeMap<String, Arc<dyn Committer>>,
) {
    let is_coordinator = ctx.worker() == 0;
    let expected: Vec<(String, usize)> = names
        .iter()
        .flat_map(|n| (0..ctx.peers()).map(move |w| (n.clone(), w)))
        .collect();
    let mut assembler = Assembler::new(expected);
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<Closed>();
    let completed = Arc::new(std::sync::Mutex::new(Vec::<u64>::new()));
    if is_coordinator {
        let task = ctx.runtime().spawn(run(
            ctx.clone(),
            names.into_iter().collect(),
            committers,
            rx,
            Arc::clone(&completed),
        ));
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
            let front = frontier.frontier().iter().min().copied();
            if let Some(sender) = &tx {
                for closed in assembler.advance(front) {
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
    committers: BTreeMap<String, Arc<dyn Committer>>,
    mut rx: tokio::sync::mpsc::UnboundedReceiver<Closed>,
    completed: Arc<std::sync::Mutex<Vec<u64>>>,
) {
    let store = ctx.store().expect("checkpointing is on").clone();
    let config = ctx.config().clone();
    let failed = std::sync::atomic::AtomicU32::new(0);
    let fail = |reason: String| {
        failed.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        tracing::warn!(failed = failed.load(std::sync::atomic::Ordering::Relaxed), reason = %reason, "checkpoint failed");
        if failed.load(std::sync::atomic::Ordering::Relaxed) > config.tolerable_failed_checkpoints {
            let e = RuntimeError::TooManyFailedCheckpoints {
                failed: failed.load(std::sync::atomic::Ordering::Relaxed),
                tolerated: config.tolerable_failed_checkpoints,
                last: reason,
            };
            crate::execute::die("checkpoint coordinator", &e);
        }
    };
    // Whether the newest epoch closed so far ended committed; at the end of the input it
    // must, or the job's last output would never become visible.
    let mut last_committed: Option<(u64, bool)> = None;
    while let Some(closed) = rx.recv().await {
        let (epoch, parts, sinks) = match closed {
            Closed::Complete {
                epoch,
                parts,
                sinks,
            } => (epoch, parts, sinks),
            Closed::Skipped { epoch, missing } => {
                last_committed = Some((epoch, false));
                tracing::debug!(
                    epoch,
                    ?missing,
                    "epoch is not a checkpoint: some operators skipped it"
                );
                continue;
            }
            Closed::Failed { epoch, errors } => {
                last_committed = Some((epoch, false));
                fail(format!("checkpoint {epoch}: {}", errors.join("; ")));
                continue;
            }
        };
        match store.generations().await {
            Ok(gens) if protocol::is_fenced(ctx.generation(), &gens) => {
                let newer = gens.iter().copied().max().unwrap_or_default();
                crate::execute::die(
                    "checkpoint coordinator",
                    &RuntimeError::Fenced {
                        generation: ctx.generation(),
                        newer,
                    },
                );
            }
            Ok(_) => {}
            Err(e) => {
                fail(format!(
                    "checkpoint {epoch}: cannot read generation markers: {e}"
                ));
                continue;
            }
        }
        crate::failpoint::hit("before-manifest");
        let manifest = Manifest {
            job: config.job.clone(),
            epoch,
            generation: ctx.generation(),
            workers: ctx.peers(),
            key_groups: config.key_groups,
            created_ms: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_millis() as u64)
                .unwrap_or(0),
            operators: operators.clone(),
            parts,
            sinks,
        };
        if let Err(e) = store.put_manifest(&manifest).await {
            last_committed = Some((epoch, false));
            fail(format!("checkpoint {epoch}: {e}"));
            continue;
        }
        failed.store(0, std::sync::atomic::Ordering::Relaxed);
        tracing::info!(
            epoch,
            parts = manifest.parts.len(),
            bytes = manifest.total_bytes(),
            outputs = manifest.sinks.len(),
            "checkpoint complete"
        );
        completed.lock().expect("poisoned").push(epoch);
        crate::failpoint::hit("after-manifest");
        for (i, entry) in manifest.sinks.iter().enumerate() {
            if i == 1 {
                crate::failpoint::hit("mid-commit");
            }
            let Some(committer) = committers.get(&entry.sink) else {
                crate::execute::die(
                    "checkpoint coordinator",
                    &RuntimeError::config(
                        "sink",
                        format!("no committer for sink `{}`", entry.sink),
                    ),
                );
            };
            if let Err(e) = committer.commit(entry) {
                crate::execute::die(
                    &format!("commit of sink `{}` epoch {}", entry.sink, entry.epoch),
                    &e,
                );
            }
        }
        last_committed = Some((epoch, true));
        match store.apply_retention(config.retain).await {
            Ok(deleted) if !deleted.is_empty() => {
                tracing::debug!(?deleted, "retention deleted old checkpoints")
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "retention failed; old checkpoints are kept"),
        }
    }
    match last_committed {
        Some((epoch, false)) => {
            let e = RuntimeError::Dataflow(format!(
                "the final checkpoint {epoch} did not complete, so the job's last output is not committed; a restart from the latest checkpoint finishes it"
            ));
            crate::execute::die("checkpoint coordinator", &e);
        }
        Some((epoch, true)) => finish_stop(&store, epoch).await,
        None => {}
    }
}

/// If the job was asked to stop, copies its final checkpoint `epoch` to the requested
/// savepoint and clears the request.
async fn finish_stop(store: &weir_checkpoint::CheckpointStore, epoch: u64) {
    let fail = |e: weir_checkpoint::CheckpointError| -> ! {
        crate::execute::die("final savepoint", &RuntimeError::from(e))
    };
    let Some(name) = store.stop_request().await.unwrap_or_else(|e| fail(e)) else {
        return;
    };
    match store.create_savepoint(&name, Some(epoch)).await {
        Ok(_) => tracing::info!(savepoint = %name, epoch, "stopped with a final savepoint"),
        // Taken by an earlier run that died before clearing the request.
        Err(weir_checkpoint::CheckpointError::ManifestExists { .. }) => {
            tracing::warn!(savepoint = %name, "the savepoint exists already; keeping it")
        }
        Err(e) => fail(e),
    }
    store.clear_stop_request().await.unwrap_or_else(|e| fail(e));
}
