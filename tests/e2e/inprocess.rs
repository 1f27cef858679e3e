//! In-process tests of the protocol (rung 2 of the test ladder): jobs run by
//! `weir::run` inside the test process, at several worker counts, with failures injected
//! in the job itself. A failure comes back from `weir::run` as an `Err`; a second run in
//! the same process restores and finishes exactly once.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use timely::dataflow::operators::vec::Map;
use weir::checkpoint::SinkEntry;
use weir::prelude::*;
use weir::runtime::sink::{sink, Committer, PreCommitted, TwoPhaseSink};
use weir::runtime::testing::{collect, Committed};
use weir::{Retry, RuntimeError};

use crate::harness::keyed::{check_keyed_exactly_once, Update};

/// Counts per word, as `(word, count, epoch)` updates.
type Counts = Committed<(String, u64, u64)>;

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
    out.records()
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
    fn write(&mut self, _epoch: u64, _record: Self::Record) -> weir::runtime::Result<()> {
        Ok(())
    }
    fn pre_commit(&mut self, epoch: u64) -> weir::runtime::Result<Option<PreCommitted>> {
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

impl Committer for Flaky {
    fn staged(&self) -> weir::runtime::Result<Vec<SinkEntry>> {
        Ok(Vec::new())
    }
    fn commit(&self, _entry: &SinkEntry) -> weir::runtime::Result<()> {
        Ok(())
    }
    fn abort(&self, _entry: &SinkEntry) -> weir::runtime::Result<()> {
        Ok(())
    }
}

/// Word count over generated lines into `out`, and through `flaky` when given.
fn run_wordcount(
    config: JobConfig,
    total: u64,
    rate: Option<u64>,
    out: &Counts,
    flaky: Option<Flaky>,
) -> weir::runtime::Result<()> {
    let out = out.clone();
    let (tx, rx) = std::sync::mpsc::channel();
    // The run is watched from here: a worker that did not stop would hang the test, so
    // it fails with a message instead.
    std::thread::spawn(move || {
        let result = weir::run(config, move |job| {
            let lines = generator::generate(
                job,
                "lines",
                total,
                SourceOptions { rate_limit: rate },
                line,
            )?;
            let words = lines.flat_map(|l| {
                l.split_whitespace()
                    .map(|w| (w.to_string(), 1u64))
                    .collect::<Vec<_>>()
            });
            let counts = words.reduce_by_key(job, "counts", |c: &mut u64, n: u64| *c += n)?;
            if let Some(flaky) = &flaky {
                sink(
                    job,
                    counts.clone(),
                    "flaky",
                    flaky.clone(),
                    Arc::new(flaky.clone()),
                )?;
            }
            collect(job, counts, "out", &out)
        });
        let _ = tx.send(result);
    });
    rx.recv_timeout(Duration::from_secs(120))
        .expect("weir::run did not return within 120 s: a worker did not stop")
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
            &out,
            None,
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

#[test]
fn a_failing_sink_makes_run_return_its_error_and_stops_every_worker() {
    let dir = tempfile::tempdir().unwrap();
    let out = Counts::new();
    let started = std::time::Instant::now();
    let err = run_wordcount(
        config("inproc-sink-fails", dir.path(), 4),
        2_000_000,
        Some(100_000),
        &out,
        Some(Flaky::new(5)),
    )
    .expect_err("the sink failed, so the run must fail");
    let text = err.to_string();
    assert!(
        text.contains("sink `flaky`") && text.contains("the disk is full at epoch"),
        "{text}"
    );
    assert_eq!(err.retry(), Retry::Permanent, "{text}");
    // The input would take 5 s at 4 x 100 000 lines/s: the run stopped early.
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "the run took {:?} to stop",
        started.elapsed()
    );
}

#[test]
fn a_store_that_fails_every_checkpoint_fails_the_run_with_a_retryable_error() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = config("inproc-store-fails", dir.path(), 2);
    config.tolerable_failed_checkpoints = 1;
    let job_dir = dir.path().join("inproc-store-fails");
    let out = Counts::new();
    let breaker = {
        let job_dir = job_dir.clone();
        std::thread::spawn(move || {
            // Once the first checkpoint is complete, the job's directory becomes a file:
            // every later upload and manifest write fails.
            let deadline = std::time::Instant::now() + Duration::from_secs(60);
            while !manifest_exists(&job_dir) {
                assert!(
                    std::time::Instant::now() < deadline,
                    "no checkpoint completed within 60 s"
                );
                std::thread::sleep(Duration::from_millis(5));
            }
            std::fs::rename(&job_dir, job_dir.with_extension("moved")).unwrap();
            std::fs::write(&job_dir, b"not a directory").unwrap();
        })
    };
    let err = run_wordcount(config, 2_000_000, Some(200_000), &out, None)
        .expect_err("the store failed, so the run must fail");
    breaker.join().unwrap();
    let text = err.to_string();
    assert!(
        text.contains("consecutive checkpoints failed (tolerated: 1)"),
        "{text}"
    );
    assert_eq!(err.retry(), Retry::Transient, "{text}");
}

fn manifest_exists(job_dir: &Path) -> bool {
    std::fs::read_dir(job_dir)
        .map(|entries| {
            entries
                .flatten()
                .any(|e| e.path().join("_MANIFEST").exists())
        })
        .unwrap_or(false)
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
        &out,
        Some(flaky.clone()),
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
    run_wordcount(again, total, None, &out, Some(flaky))
        .expect("the second run restores and finishes");
    check_keyed_exactly_once("restored run", &oracle(total), &updates(&out));
    assert!(
        out.records().len() > first,
        "the second run should have committed the rest"
    );
    assert_eq!(out.staged(), 0, "output left staged");
}

/// A sink whose every epoch has output, and whose committer panics: a bug in a user's
/// committer, which runs on the coordinator.
struct PanicsOnCommit;

impl TwoPhaseSink for PanicsOnCommit {
    type Record = (String, u64, u64);
    fn write(&mut self, _epoch: u64, _record: Self::Record) -> weir::runtime::Result<()> {
        Ok(())
    }
    fn pre_commit(&mut self, epoch: u64) -> weir::runtime::Result<Option<PreCommitted>> {
        Ok(Some(PreCommitted::new(SinkEntry {
            sink: "panics".into(),
            worker: weir::WorkerIndex(0),
            epoch: weir::Epoch(epoch),
            generation: weir::Generation(0),
            handle: format!("e{epoch}"),
        })))
    }
}

impl Committer for PanicsOnCommit {
    fn staged(&self) -> weir::runtime::Result<Vec<SinkEntry>> {
        Ok(Vec::new())
    }
    fn commit(&self, entry: &SinkEntry) -> weir::runtime::Result<()> {
        panic!("the committer of {} is broken", entry.handle)
    }
    fn abort(&self, _entry: &SinkEntry) -> weir::runtime::Result<()> {
        Ok(())
    }
}

#[test]
fn a_committer_that_panics_fails_the_run_instead_of_stalling_it() {
    let dir = tempfile::tempdir().unwrap();
    let config = config("inproc-commit-panics", dir.path(), 2);
    let (tx, rx) = std::sync::mpsc::channel();
    let started = std::time::Instant::now();
    std::thread::spawn(move || {
        let result = weir::run(config, move |job| {
            let lines = generator::generate(
                job,
                "lines",
                2_000_000,
                SourceOptions {
                    rate_limit: Some(200_000),
                },
                line,
            )?;
            let words = lines.flat_map(|l| {
                l.split_whitespace()
                    .map(|w| (w.to_string(), 1u64))
                    .collect::<Vec<_>>()
            });
            let counts = words.reduce_by_key(job, "counts", |c: &mut u64, n: u64| *c += n)?;
            sink(
                job,
                counts,
                "panics",
                PanicsOnCommit,
                Arc::new(PanicsOnCommit),
            )
        });
        let _ = tx.send(result);
    });
    let err = rx
        .recv_timeout(Duration::from_secs(120))
        .expect("weir::run did not return within 120 s: the coordinator's panic stalled the run")
        .expect_err("the committer panicked, so the run must fail");
    let text = err.to_string();
    assert!(
        text.contains("checkpoint coordinator") && text.contains("coordinator task ended"),
        "{text}"
    );
    assert_eq!(err.retry(), Retry::Transient, "{text}");
    // The input would take 5 s at 2 x 200 000 lines/s: the run stopped early.
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "the run took {:?} to stop",
        started.elapsed()
    );
}
