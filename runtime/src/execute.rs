//! Running a job: start-up, the timely cluster, stopping every worker on the first
//! failure, and the wait for the last checkpoint to be committed.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::clock::EpochClock;
use crate::config::JobConfig;
use crate::context::Shared;
use crate::error::{Result, RuntimeError};
use crate::job::Job;
use crate::restore::RestoredParts;
use crate::startup::{local_workers, read_start};

/// Runs a job on this process's workers until its input is exhausted and its last
/// checkpoint is committed.
///
/// `build` is called once on every worker to construct the dataflow; it must build
/// the same graph on every worker.
///
/// Returns an error for failures found before the dataflow starts (settings, storage,
/// restore) and for the first failure inside the running dataflow (a sink, a source, a
/// snapshot, the coordinator): every worker of the process then stops its dataflow and
/// the error comes back here with where it happened. The coordinator stops before its
/// next manifest and its next commit; a later run with `--restore latest` resumes from
/// the last complete checkpoint (a checkpoint completed just before the failure is
/// whole, and its commits are idempotent). [`RuntimeError::retry`] tells whether that
/// can help. Library code never exits the process: binaries choose exit codes (see
/// `weir::cli::main_with`).
///
/// In a cluster of several processes, the workers of a process that failed stay parked
/// after this returns, holding their connections open: the other processes learn of the
/// failure when this process exits. A caller that runs a multi-process job must exit
/// after an `Err`, as `weir::cli::main_with` does.
///
/// A request to stop (`weir stop`, see `CheckpointStore::request_stop`) ends every
/// source's input at the next epoch; the job then completes its last checkpoint, copies
/// it to the requested savepoint and returns.
pub fn run<F>(config: JobConfig, build: F) -> Result<()>
where
    F: for<'s> Fn(&Job<'s>) -> Result<()> + Send + Sync + 'static,
{
    config.validate()?;
    let started = std::time::Instant::now();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("weir-io")
        .enable_all()
        .build()
        .map_err(|e| RuntimeError::Dataflow(format!("cannot start the I/O runtime: {e}")))?;
    let pre = read_start(&config, &rt)?;
    let metrics = Arc::new(crate::metrics::Metrics::new(&config.job, config.process));
    if let Some(addr) = &config.metrics_addr {
        crate::metrics::serve(Arc::clone(&metrics), addr, &rt)?;
    }
    let multi_process = config.processes > 1;
    // A cluster connects before anything else, and agrees on its generation.
    let mut formed = if multi_process {
        let addresses = config.addresses()?;
        let mut claim = |floor| claim_generation(pre.store.as_ref(), &rt, floor, config.process);
        Some(crate::cluster::form(
            &config.job,
            &addresses,
            config.process,
            pre.generation,
            &mut claim,
            pre.restored.as_ref().map(|m| m.epoch),
            Duration::from_millis(config.start_timeout_ms),
        )?)
    } else {
        None
    };
    // A single process claims its generation too, so that no two runs share one.
    let generation = match &formed {
        Some(f) => f.generation,
        None => claim_generation(pre.store.as_ref(), &rt, pre.generation, config.process)?,
    };
    crate::failpoint::set_generation(generation.0);
    metrics.generation.set(generation.0 as i64);
    metrics.restarts.set(pre.earlier_generations as i64);
    metrics.started();
    let (local, peers) = local_workers(&config);
    let local_count = local.len();
    let restored_bytes: u64 = pre.parts.iter().map(|p| p.bytes_read()).sum();
    let restored_parts = RestoredParts::new(pre.parts, local, config.key_groups, peers);
    let shared = Arc::new(Shared {
        clock: EpochClock::new(
            pre.epochs.first_epoch.0,
            if config.checkpointing() {
                config.epoch_ms()
            } else {
                0
            },
        )
        .with_max_in_flight(config.max_concurrent_checkpoints.into())
        .with_held_seconds(metrics.barrier_held.clone()),
        config,
        generation,
        store: pre.store,
        restored: pre.restored,
        seen: pre.seen,
        restored_parts,
        runtime: rt.handle().clone(),
        coordinator: Mutex::new(None),
        stop: std::sync::atomic::AtomicBool::new(false),
        failure: Default::default(),
        metrics,
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
    let lost: crate::cluster::OnLost = {
        let shared = Arc::clone(&shared);
        Arc::new(move |e| {
            shared.failure.record("", e);
        })
    };
    let (builders, others, watch) = match formed.take() {
        Some(mut formed) => {
            let links = formed.links(&lost);
            let watch = formed.watch(Duration::from_millis(shared.config.peer_timeout_ms), lost);
            let threads = shared.config.workers;
            let hooks = timely::communication::Hooks::default();
            let process_allocators =
                timely::communication::allocator::ProcessBuilder::new_typed_vector(
                    threads,
                    hooks.refill.clone(),
                    hooks.spill.clone(),
                );
            let (tcp, guard) =
                timely::communication::allocator::zero_copy::initialize::initialize_networking_from_sockets(
                    process_allocators,
                    links,
                    shared.config.process,
                    threads,
                    hooks,
                )
                .map_err(|e| RuntimeError::Dataflow(format!("cannot start the network threads: {e}")))?;
            let builders: Vec<timely::communication::AllocatorBuilder> = tcp
                .into_iter()
                .map(timely::communication::AllocatorBuilder::Tcp)
                .collect();
            let others: Box<dyn std::any::Any + Send> = Box::new(guard);
            (builders, others, Some(watch))
        }
        None => {
            let (builders, others) = shared
                .config
                .timely()
                .communication
                .try_build()
                .map_err(RuntimeError::Dataflow)?;
            (builders, others, None)
        }
    };
    let worker_config = shared.config.timely_worker();
    let guards = timely::execute::execute_from(builders, others, worker_config, move |worker| {
        let shared = Arc::clone(&worker_shared);
        // Counts this worker as stopped however it leaves, also by a panic.
        let _stopped = worker_stopped.guard(Arc::clone(&shared));
        if shared.config.metrics_addr.is_some() || shared.config.metrics_file.is_some() {
            crate::observe::Observer::register(worker, Arc::clone(&shared.metrics));
        }
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
        if shared.restored_parts.built() && !shared.failure.is_failed() {
            if let Some(m) = &shared.restored {
                tracing::info!(
                    epoch = %m.epoch,
                    seconds = started.elapsed().as_secs_f64(),
                    parts_bytes = restored_bytes,
                    "state restored: every worker of this process has read, checked and decoded its part of the checkpoint"
                );
            }
        }
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
        Some(e) => {
            if let Some(store) = &shared.store {
                // So that a later start can tell a job that keeps failing from one that
                // was interrupted (`--max-failed-generations`); best effort, bounded.
                let text = e.to_string();
                let record = store.record_failure(shared.generation, shared.config.process, &text);
                if let Ok(Err(err)) = rt
                    .block_on(async { tokio::time::timeout(Duration::from_secs(5), record).await })
                {
                    tracing::warn!(error = %err, "cannot record the failure in the checkpoint store");
                }
            }
            Err(e)
        }
        None => {
            if let Some(watch) = watch {
                watch.finish();
            }
            if let Some(path) = &shared.config.metrics_file {
                write_metrics_file(&shared.config, path, &shared.metrics)?;
            }
            let (read, written) = shared.metrics.totals();
            tracing::info!(
                generation = %shared.generation,
                records_read = read,
                records_written = written,
                "the run ended: every source's input is done"
            );
            Ok(())
        }
    }
}

/// Claims this process's index in the newest generation it may take (see
/// `weir_checkpoint::protocol::claim_target`). Without a checkpoint store there is
/// nothing to fence, and the generation is `floor`.
fn claim_generation(
    store: Option<&weir_checkpoint::CheckpointStore>,
    rt: &tokio::runtime::Runtime,
    floor: weir_checkpoint::Generation,
    process: usize,
) -> Result<weir_checkpoint::Generation> {
    let Some(store) = store else {
        return Ok(floor);
    };
    rt.block_on(async {
        let claims = store.claims().await?;
        let target = weir_checkpoint::protocol::claim_target(floor, &claims, process);
        if store.claim_generation(target, process).await? {
            tracing::debug!(generation = %target, process, "claimed");
            return Ok(target);
        }
        // An earlier incarnation of this index claimed nothing this process has not
        // seen: the claim was taken since, by a process that runs with the same index.
        Err(RuntimeError::config(
            "process-index",
            format!(
                "another process claimed index {process} in generation {target} first: two processes run with --process-index {process}; every index must be used exactly once"
            ),
        ))
    })
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

/// Writes the run's final metrics to `path` (`path.I` for process `I` of a cluster),
/// through a temporary file renamed into place, so a reader never sees half of it.
fn write_metrics_file(
    config: &JobConfig,
    path: &std::path::Path,
    metrics: &crate::metrics::Metrics,
) -> Result<()> {
    let path = if config.processes > 1 || config.peers.len() > 1 {
        let mut name = path.as_os_str().to_owned();
        name.push(format!(".{}", config.process));
        std::path::PathBuf::from(name)
    } else {
        path.to_path_buf()
    };
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let written =
        std::fs::write(&tmp, metrics.encode()).and_then(|()| std::fs::rename(&tmp, &path));
    written.map_err(|e| {
        RuntimeError::config(
            "metrics-file",
            format!(
                "cannot write the final metrics to {}: {e}; give a writable path",
                path.display()
            ),
        )
    })
}
