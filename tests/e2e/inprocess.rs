//! In-process tests of the protocol (rung 2 of the test ladder): jobs run by
//! `weir::run` inside the test process, at several worker counts, with failures injected
//! in the job itself. A failure comes back from `weir::run` as an `Err`; a second run in
//! the same process restores and finishes exactly once.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::sync::Once;
use std::time::Duration;

use weir::prelude::*;
use weir::runtime::testing::Committed;
use weir::runtime::{two_phase, Committer, NoStaging, Output, TwoPhaseSink};
use weir::{Retry, RuntimeError};

use crate::harness::keyed::{check_keyed_exactly_once, Update};

/// Counts per word, as `(word, count, epoch)` updates.
type Counts = Committed<(String, u64, u64)>;

/// The flow of those updates in a job.
type CountStream<'s> = Flow<'s, (String, u64, u64)>;

fn line(i: u64) -> String {
    format!("w{} w{} w{}", i % 101, (i * 7) % 37, i % 5)
}

fn oracle(total: u64) -> BTreeMap<String, u64> {
    let mut counts = BTreeMap::new();
    for i in 0..total {
        for w in line(i).split_whitespace() {
            *counts.entry(w.to_string()).or_insert(0) += 1;
        }
    }
    counts
}

fn updates(out: &Counts) -> Vec<Update<String, u64>> {
    updates_of(out.records())
}

fn updates_of(records: Vec<(String, u64, u64)>) -> Vec<Update<String, u64>> {
    records
        .into_iter()
        .map(|(key, value, epoch)| Update {
            key,
            value,
            epoch,
            origin: format!("epoch {epoch}"),
        })
        .collect()
}

fn config(name: &str, dir: &Path, workers: usize) -> JobConfig {
    JobConfig {
        job: name.into(),
        checkpoint_url: dir.display().to_string(),
        checkpoint_interval_ms: 20,
        workers,
        ..Default::default()
    }
}

/// A sink that writes nothing and fails its `fail_at`-th pre-commit on any worker once
/// `armed`; it stands for a sink whose server refuses a write.
#[derive(Clone)]
struct Flaky {
    armed: Arc<AtomicBool>,
    pre_commits: Arc<AtomicU64>,
    fail_at: u64,
}

impl Flaky {
    fn new(fail_at: u64) -> Self {
        Flaky {
            armed: Arc::new(AtomicBool::new(true)),
            pre_commits: Arc::new(AtomicU64::new(0)),
            fail_at,
        }
    }
}

impl TwoPhaseSink for Flaky {
    type Record = (String, u64, u64);
    type Handle = ();
    fn write(&mut self, _epoch: u64, _record: Self::Record) -> weir::runtime::Result<()> {
        Ok(())
    }
    fn pre_commit(&mut self, epoch: u64) -> weir::runtime::Result<Option<()>> {
        let n = self.pre_commits.fetch_add(1, Ordering::SeqCst) + 1;
        if self.armed.load(Ordering::SeqCst) && n >= self.fail_at {
            return Err(RuntimeError::Io {
                operator: "flaky".into(),
                reason: format!("the disk is full at epoch {epoch}"),
            });
        }
        Ok(None)
    }
}

/// A sink with output in every epoch whose committer runs `on_commit`: a hook on the
/// coordinator, called right after a checkpoint's manifest is written. Its handle is the
/// epoch with a tag, which the checkpoint carries to the committer.
#[derive(Clone)]
struct OnCommit(Arc<Hook>);

/// What the hook sink's committer calls.
type Hook = dyn Fn(&Output<Tagged>) + Send + Sync;

/// The hook sink's handle: its epoch and a tag.
type Tagged = (u64, String);

impl TwoPhaseSink for OnCommit {
    type Record = (String, u64, u64);
    type Handle = Tagged;
    fn write(&mut self, _epoch: u64, _record: Self::Record) -> weir::runtime::Result<()> {
        Ok(())
    }
    fn pre_commit(&mut self, epoch: u64) -> weir::runtime::Result<Option<Tagged>> {
        Ok(Some((epoch, "hooked".into())))
    }
}

impl Committer for OnCommit {
    type Handle = Tagged;
    fn staged(&self) -> weir::runtime::Result<Vec<Output<Tagged>>> {
        Ok(Vec::new())
    }
    fn commit(&self, output: &Output<Tagged>) -> weir::runtime::Result<()> {
        assert_eq!(
            output.handle,
            (output.id.epoch.0, "hooked".to_string()),
            "the handle the sink returned at pre-commit, through the checkpoint"
        );
        (self.0)(output);
        Ok(())
    }
    fn abort(&self, _output: &Output<Tagged>) -> weir::runtime::Result<()> {
        Ok(())
    }
}

/// Word count over `total` generated lines (at `rate` lines per second per worker),
/// whose counts `sinks` writes; returns what `weir::run` returned.
fn run_wordcount<F>(
    config: JobConfig,
    total: u64,
    rate: Option<u64>,
    sinks: F,
) -> weir::runtime::Result<()>
where
    F: for<'s> Fn(CountStream<'s>) -> weir::runtime::Result<()> + Send + Sync + 'static,
{
    let (tx, rx) = std::sync::mpsc::channel();
    // The run is watched from here: a worker that did not stop would hang the test, so
    // it fails with a message instead.
    std::thread::spawn(move || {
        let result = weir::run(config, move |job| {
            let source = generator::items(total, line).options(SourceOptions { rate_limit: rate });
            let counts = job
                .source("lines", source)?
                .flat_map(|l| {
                    l.split_whitespace()
                        .map(|w| (w.to_string(), 1u64))
                        .collect::<Vec<_>>()
                })
                .reduce_by_key("counts", |c, n| *c += n)?;
            sinks(counts)
        });
        let _ = tx.send(result);
    });
    rx.recv_timeout(Duration::from_secs(120))
        .expect("weir::run did not return within 120 s: a worker did not stop")
}

/// The counts into `out`, and through `flaky` too when given.
fn into(
    out: &Counts,
    flaky: Option<Flaky>,
) -> impl for<'s> Fn(CountStream<'s>) -> weir::runtime::Result<()> + Send + Sync + 'static {
    let out = out.clone();
    move |counts| {
        if let Some(flaky) = &flaky {
            let flaky = flaky.clone();
            counts
                .clone()
                .sink("flaky", two_phase(|_| Ok(flaky), Arc::new(NoStaging)))?;
        }
        counts.sink("out", out.clone())
    }
}

#[test]
fn one_process_at_1_and_at_4_workers_commits_every_count_exactly_once() {
    let total = 20_000;
    let expected = oracle(total);
    for workers in [1, 4] {
        let dir = tempfile::tempdir().unwrap();
        let out = Counts::new();
        // About half a second of input, so that it spans many 20 ms checkpoints.
        let rate = total / workers as u64 * 2;
        run_wordcount(
            config("inproc-workers", dir.path(), workers),
            total,
            Some(rate),
            into(&out, None),
        )
        .unwrap_or_else(|e| panic!("{workers} workers: {e}"));
        let updates = updates(&out);
        check_keyed_exactly_once(&format!("{workers} workers"), &expected, &updates);
        let epochs: std::collections::BTreeSet<u64> = updates.iter().map(|u| u.epoch).collect();
        assert!(
            epochs.len() >= 3,
            "{workers} workers: the input should span several epochs, saw {epochs:?}"
        );
        assert_eq!(out.staged(), 0, "{workers} workers: output left staged");
    }
}

/// Fails when a run that was given 5 s of input took 4 s or more: it did not stop early.
fn assert_stopped_early(started: std::time::Instant) {
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "the run took {:?} to stop",
        started.elapsed()
    );
}

#[test]
fn a_failing_sink_makes_run_return_its_error_and_stops_every_worker() {
    let dir = tempfile::tempdir().unwrap();
    let out = Counts::new();
    let started = std::time::Instant::now();
    // 5 s of input at 4 x 100 000 lines/s.
    let err = run_wordcount(
        config("inproc-sink-fails", dir.path(), 4),
        2_000_000,
        Some(100_000),
        into(&out, Some(Flaky::new(5))),
    )
    .expect_err("the sink failed, so the run must fail");
    let text = err.to_string();
    assert!(
        text.contains("sink `flaky`") && text.contains("the disk is full at epoch"),
        "{text}"
    );
    assert_eq!(err.retry(), Retry::Permanent, "{text}");
    assert_stopped_early(started);
}

#[test]
fn a_store_that_fails_every_checkpoint_fails_the_run_with_a_retryable_error() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = config("inproc-store-fails", dir.path(), 2);
    config.tolerable_failed_checkpoints = 1;
    let job_dir = dir.path().join("inproc-store-fails");
    // Once the first checkpoint is complete (its manifest written, its output being
    // committed), the job's directory becomes a file: every later upload and manifest
    // write fails.
    let broken = Arc::new(Once::new());
    let breaker = OnCommit(Arc::new(move |_| {
        broken.call_once(|| {
            std::fs::rename(&job_dir, job_dir.with_extension("moved")).unwrap();
            std::fs::write(&job_dir, b"not a directory").unwrap();
        })
    }));
    let started = std::time::Instant::now();
    // 5 s of input at 2 x 200 000 lines/s.
    let err = run_wordcount(config, 2_000_000, Some(200_000), move |counts| {
        let breaker = breaker.clone();
        counts.sink(
            "hook",
            two_phase(|_| Ok(breaker.clone()), Arc::new(breaker.clone())),
        )
    })
    .expect_err("the store failed, so the run must fail");
    let text = err.to_string();
    assert!(
        text.contains("consecutive checkpoints failed (tolerated: 1)"),
        "{text}"
    );
    assert_eq!(err.retry(), Retry::Transient, "{text}");
    assert_stopped_early(started);
}

#[test]
fn a_second_run_in_the_same_process_restores_and_finishes_exactly_once() {
    let total = 40_000;
    let dir = tempfile::tempdir().unwrap();
    let out = Counts::new();
    let flaky = Flaky::new(12);
    let rate = total / 2; // two seconds of input at 2 workers
    let err = run_wordcount(
        config("inproc-restore", dir.path(), 2),
        total,
        Some(rate),
        into(&out, Some(flaky.clone())),
    )
    .expect_err("the first run fails in its sink");
    assert!(err.to_string().contains("sink `flaky`"), "{err}");
    let first = out.records().len();
    assert!(
        first > 0,
        "the first run should have committed some checkpoints before failing"
    );

    flaky.armed.store(false, Ordering::SeqCst);
    let mut again = config("inproc-restore", dir.path(), 3);
    again.restore = Some(RestoreTarget::Latest);
    run_wordcount(again, total, None, into(&out, Some(flaky)))
        .expect("the second run restores and finishes");
    check_keyed_exactly_once("restored run", &oracle(total), &updates(&out));
    assert!(
        out.records().len() > first,
        "the second run should have committed the rest"
    );
    assert_eq!(out.staged(), 0, "output left staged");
}

/// A job whose checkpoints are gone (a new store) starts afresh against a sink that
/// still holds an earlier run's commit markers: the runtime has the sink forget them
/// first, so this run's outputs, whose names repeat the earlier run's, are all committed.
#[test]
fn a_fresh_start_forgets_an_earlier_runs_commit_markers_and_commits_everything() {
    let total = 5_000;
    let out = Counts::new();
    let first = tempfile::tempdir().unwrap();
    run_wordcount(
        config("inproc-fresh", first.path(), 2),
        total,
        None,
        into(&out, None),
    )
    .expect("the first run finishes");
    let once = out.records();
    check_keyed_exactly_once("first run", &oracle(total), &updates(&out));
    // Same job name, same sink, an empty checkpoint store: generation 0 again.
    let second = tempfile::tempdir().unwrap();
    run_wordcount(
        config("inproc-fresh", second.path(), 2),
        total,
        None,
        into(&out, None),
    )
    .expect("the second run finishes");
    let all = out.records();
    assert_eq!(
        &all[..once.len()],
        &once[..],
        "the first run's output stays as it was"
    );
    // Without the fresh start, the second run's outputs, named like the first run's,
    // would be taken for them.
    check_keyed_exactly_once(
        "second run, after a fresh start",
        &oracle(total),
        &updates_of(all[once.len()..].to_vec()),
    );
    assert_eq!(out.staged(), 0, "output left staged");
}

#[test]
fn a_committer_that_panics_fails_the_run_instead_of_stalling_it() {
    let dir = tempfile::tempdir().unwrap();
    let panics = OnCommit(Arc::new(|output: &Output<Tagged>| {
        panic!("the committer of {} is broken", output.id)
    }));
    let started = std::time::Instant::now();
    // 5 s of input at 2 x 200 000 lines/s.
    let err = run_wordcount(
        config("inproc-commit-panics", dir.path(), 2),
        2_000_000,
        Some(200_000),
        move |counts| {
            let panics = panics.clone();
            counts.sink(
                "hook",
                two_phase(|_| Ok(panics.clone()), Arc::new(panics.clone())),
            )
        },
    )
    .expect_err("the committer panicked, so the run must fail");
    let text = err.to_string();
    assert!(
        text.contains("checkpoint coordinator") && text.contains("coordinator task ended"),
        "{text}"
    );
    assert_eq!(err.retry(), Retry::Transient, "{text}");
    assert_stopped_early(started);
}

/// A job that fails every time before completing a checkpoint is given up after
/// `max_failed_generations` generations, with the last failure in the message, instead
/// of being restarted forever; one that completes a checkpoint in between is not.
#[test]
fn a_job_failing_before_any_checkpoint_is_given_up_after_max_failed_generations() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = config("inproc-give-up", dir.path(), 2);
    config.max_failed_generations = 3;
    for attempt in 0..3 {
        let out = Counts::new();
        // Every pre-commit fails, so that no checkpoint ever completes.
        let err = run_wordcount(config.clone(), 2_000, None, into(&out, Some(Flaky::new(1))))
            .expect_err("the sink fails");
        assert!(
            err.to_string().contains("the disk is full"),
            "attempt {attempt}: {err}"
        );
        assert!(
            out.records().is_empty(),
            "attempt {attempt} committed output"
        );
    }
    let err = run_wordcount(config, 2_000, None, into(&Counts::new(), None))
        .expect_err("the fourth start is refused");
    assert!(err.is_permanent(), "{err}");
    let text = err.to_string();
    assert!(
        text.contains("3 generations in a row") && text.contains("the disk is full"),
        "{text}"
    );
}
