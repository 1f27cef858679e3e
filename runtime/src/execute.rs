//! Running a job: pre-flight checks, restore, the timely cluster, and the wait for the
//! last checkpoint to be committed.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use weir_checkpoint::store::VerifiedPart;
use weir_checkpoint::{CheckpointError, CheckpointStore, Manifest, PartEntry, RestoreTarget};

use crate::config::JobConfig;
use crate::context::{EpochClock, Job, RestoredParts, Shared};
use crate::error::{Result, RuntimeError};

/// What a run found out before starting the dataflow.
struct Preflight {
    store: Option<CheckpointStore>,
    restored: Option<Manifest>,
    /// The restored checkpoint's parts this process's workers read, verified.
    parts: Vec<VerifiedPart>,
    generation: u64,
    first_epoch: u64,
}

fn preflight(config: &JobConfig, rt: &tokio::runtime::Runtime) -> Result<Preflight> {
    if !config.checkpointing() {
        return Ok(Preflight {
            store: None,
            restored: None,
            parts: Vec::new(),
            generation: config.generation.unwrap_or(0),
            first_epoch: 1,
        });
    }
    let store = CheckpointStore::open(&config.checkpoint_url, &config.job)?;
    rt.block_on(async {
        store.probe().await?;
        // Generations only grow: a run never reuses the number of an earlier run of the
        // job, even when a new `weir launch` starts counting at 0 again. Every process
        // reads the same markers (the new generation is announced only once the cluster
        // is connected), so they all agree.
        let markers = store.generations().await?;
        let generation = match config.generation {
            None if config.processes > 1 => {
                return Err(RuntimeError::config("generation", "a multi-process job needs --generation (weir launch sets it)"));
            }
            None => markers.last().map_or(0, |g| g + 1),
            Some(g) => match markers.last() {
                Some(newest) if *newest >= g => {
                    tracing::info!(requested = g, generation = newest + 1, "generation {g} already ran: continuing the numbering");
                    newest + 1
                }
                _ => g,
            },
        };
        let (complete, all) = store.list().await?;
        // Every part of the chosen checkpoint is read and verified here, so that every
        // process agrees on it (and `latest` falls back past a damaged one); the parts
        // this process's workers restore from are kept, so that they are read only once.
        let (local, peers) = local_workers(config);
        let wanted =
            |e: &PartEntry| RestoredParts::wanted(e, local.clone(), config.key_groups, peers);
        let mut parts = Vec::new();
        let restored = match &config.restore {
            None if !complete.is_empty() => {
                return Err(RuntimeError::config(
                    "restore",
                    format!(
                        "job `{}` already has {} complete checkpoint(s) under `{}`: pass --restore latest to resume, or delete them with `weir checkpoints delete --all`",
                        config.job,
                        complete.len(),
                        config.checkpoint_url
                    ),
                ));
            }
            None => None,
            Some(target) => match store.resolve_restore_keeping(target, &wanted).await {
                Ok(point) => {
                    parts = point.parts;
                    Some(point.manifest)
                }
                // A restarted generation whose predecessor died before its first
                // checkpoint starts from the beginning; leftovers are aborted.
                Err(CheckpointError::NoCheckpoint { .. }) if config.generation.is_some_and(|g| g > 0) && *target == RestoreTarget::Latest && complete.is_empty() => {
                    tracing::warn!(generation, "no checkpoint yet: the restarted job starts from the beginning");
                    None
                }
                Err(e) => return Err(e.into()),
            },
        };
        if let Some(m) = &restored {
            if m.key_groups != config.key_groups {
                return Err(RuntimeError::Mismatch {
                    epoch: m.epoch,
                    reason: format!("it was written with {} key groups and the job is configured with {}; key groups are fixed at the first start (set --key-groups {})", m.key_groups, config.key_groups, m.key_groups),
                });
            }
            let workers = config.workers * config.processes;
            if workers as u32 > m.key_groups {
                return Err(RuntimeError::Mismatch {
                    epoch: m.epoch,
                    reason: format!("{workers} workers exceed its {} key groups (the maximum parallelism)", m.key_groups),
                });
            }
            tracing::info!(epoch = m.epoch, written_by = m.workers, workers, generation, "restoring");
        }
        // New epochs start after every epoch any earlier run used, so that nothing of a
        // crashed run can be mistaken for this run's.
        let first_epoch = all.iter().copied().chain(restored.as_ref().map(|m| m.epoch)).max().map_or(1, |e| e + 1);
        Ok(Preflight { store: Some(store), restored, parts, generation, first_epoch })
    })
}

/// The global indexes of this process's workers, and the number of workers in the
/// cluster (timely numbers the workers of process `p` from `p * workers`).
fn local_workers(config: &JobConfig) -> (std::ops::Range<usize>, usize) {
    let first = config.process * config.workers;
    (
        first..first + config.workers,
        config.processes * config.workers,
    )
}

/// Runs a job on this process's workers until its input is exhausted and its last
/// checkpoint is committed.
///
/// `build` is called once on every worker to construct the dataflow; it must build
/// the same graph on every worker.
///
/// Returns an error for failures found before the dataflow starts (settings, storage,
/// restore) and for the first failure inside the running dataflow (a sink, a source, a
/// snapshot, the coordinator): every worker of the process then stops its dataflow and
/// the error comes back here with where it happened. Nothing is committed after a
/// failure; a later run with `--restore latest` resumes from the last complete
/// checkpoint. [`RuntimeError::retry`] tells whether that can help. Library code never
/// exits the process: binaries choose exit codes (see `weir::cli::main_with`).
///
/// A request to stop (`weir stop`, see `CheckpointStore::request_stop`) ends every
/// source's input at the next epoch; the job then completes its last checkpoint, copies
/// it to the requested savepoint and returns.
pub fn run<F>(config: JobConfig, build: F) -> Result<()>
where
    F: for<'s> Fn(&mut Job<'s>) -> Result<()> + Send + Sync + 'static,
{
    config.validate()?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("weir-io")
        .enable_all()
        .build()
        .map_err(|e| RuntimeError::Dataflow(format!("cannot start the I/O runtime: {e}")))?;
    let pre = preflight(&config, &rt)?;
    crate::failpoint::set_generation(pre.generation);
    let timely_config = config.timely()?;
    let (local, peers) = local_workers(&config);
    let local_count = local.len();
    let multi_process = config.processes > 1;
    let restored_parts = if pre.parts.is_empty() {
        RestoredParts::none()
    } else {
        RestoredParts::new(pre.parts, local, config.key_groups, peers)
    };
    let shared = Arc::new(Shared {
        clock: EpochClock::new(
            pre.first_epoch,
            if config.checkpointing() {
                config.epoch_ms()
            } else {
                0
            },
        ),
        config,
        generation: pre.generation,
        store: pre.store,
        restored: pre.restored,
        restored_parts,
        runtime: rt.handle().clone(),
        coordinator: Mutex::new(None),
        stop: std::sync::atomic::AtomicBool::new(false),
        failure: Default::default(),
    });
    if let Some(store) = shared.store.clone() {
        rt.spawn(poll_stop_request(
            store,
            Arc::clone(&shared),
            Duration::from_millis(shared.config.epoch_ms().clamp(100, 1_000)),
        ));
    }
    let stopped = Arc::new(Stopped::default());
    let worker_shared = Arc::clone(&shared);
    let worker_stopped = Arc::clone(&stopped);
    let guards = timely::execute(timely_config, move |worker| {
        let shared = Arc::clone(&worker_shared);
        // Counts this worker as stopped however it leaves, also by a panic.
        let _stopped = worker_stopped.guard(Arc::clone(&shared));
        let built = worker.dataflow::<u64, _, _>(|scope| {
            let mut job = Job::new(scope, Arc::clone(&shared));
            build(&mut job)?;
            job.finish()
        });
        if let Err(e) = built {
            shared.failure.record("building the job", e);
        }
        // Every operator of this worker has restored its state: the last worker to get
        // here releases the restored parts nobody took.
        shared.restored_parts.built();
        while !shared.failure.is_failed() && worker.step_or_park(Some(Duration::from_millis(100))) {
        }
        if shared.failure.is_failed() {
            for dataflow in worker.installed_dataflows() {
                worker.drop_dataflow(dataflow);
            }
            if multi_process {
                // A worker that returns closes its connections to the other processes
                // cleanly, and they would wait for its progress forever. Parked, it
                // keeps them open until this process exits; the other processes then
                // see the connections break and fail too.
                drop(_stopped);
                loop {
                    std::thread::park();
                }
            }
        }
    })
    .map_err(RuntimeError::Dataflow)?;
    stopped.wait_for(local_count);
    if shared.failure.is_failed() && multi_process {
        // The parked workers and timely's network threads end with the process.
        std::mem::forget(guards);
    } else {
        for result in guards.join() {
            if let Err(panic) = result {
                shared.failure.record("", RuntimeError::Dataflow(panic));
            }
        }
    }
    let task = shared.coordinator.lock().expect("poisoned").take();
    if let Some(task) = task {
        if let Err(e) = rt.block_on(task) {
            shared.failure.record(
                "",
                RuntimeError::Dataflow(format!("checkpoint coordinator failed: {e}")),
            );
        }
    }
    match shared.failure.take() {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// Counts the workers of this process that have left their step loop.
#[derive(Default)]
struct Stopped {
    count: Mutex<usize>,
    changed: std::sync::Condvar,
}

impl Stopped {
    fn guard(self: &Arc<Self>, shared: Arc<Shared>) -> StoppedGuard {
        StoppedGuard(Arc::clone(self), shared)
    }

    fn wait_for(&self, workers: usize) {
        let mut count = self.count.lock().unwrap_or_else(|p| p.into_inner());
        while *count < workers {
            count = self.changed.wait(count).unwrap_or_else(|p| p.into_inner());
        }
    }
}

/// Counts one worker as stopped when dropped; a worker that panicked fails the run, so
/// that the other workers stop too.
struct StoppedGuard(Arc<Stopped>, Arc<Shared>);

impl Drop for StoppedGuard {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.1.failure.record(
                "",
                RuntimeError::Dataflow(format!(
                    "worker thread `{}` panicked (its message is printed above)",
                    std::thread::current().name().unwrap_or("?")
                )),
            );
        }
        *self.0.count.lock().unwrap_or_else(|p| p.into_inner()) += 1;
        self.0.changed.notify_all();
    }
}

/// Polls the checkpoint store for a stop request until one appears.
async fn poll_stop_request(
    store: weir_checkpoint::CheckpointStore,
    shared: Arc<Shared>,
    every: Duration,
) {
    loop {
        match store.stop_request().await {
            Ok(Some(savepoint)) => {
                tracing::info!(
                    savepoint,
                    "stop requested: ending the input and taking a final savepoint"
                );
                shared
                    .stop
                    .store(true, std::sync::atomic::Ordering::Relaxed);
                return;
            }
            Ok(None) => {}
            Err(e) => tracing::warn!(error = %e, "cannot read the stop request"),
        }
        tokio::time::sleep(every).await;
    }
}
