//! Restore cost of a differential collection: processing its input from scratch,
//! against restoring the job's final checkpoint, which replays the consolidated input
//! through the differential operators downstream.
//!
//! `cargo bench --bench collection_restore` (set `WEIR_BENCH_RECORDS` to change the 2M
//! input records, `WEIR_BENCH_RUNS` to change the 5 runs). The job, on 2 workers, with
//! checkpoints into a temporary directory: weir's generator makes record `i` = (key
//! `i % 100000`, value `i`), all distinct; each becomes the update `(record, +1)` of a
//! collection made with `to_collection`; a differential `count()` of the keys and a
//! `reduce` keeping each key's largest value run on it, and their changes (`changes`)
//! go to two transactional JSON-lines sinks. Then, run by run, the variants interleaved:
//!
//! - initial run, checkpointing off: the job from scratch as one epoch, which processes
//!   every record once (the reference for "processing that many records once");
//! - initial run, exactly once with 1 s checkpoints, in a fresh directory, until its
//!   input has ended and its final checkpoint (which holds the whole consolidated input)
//!   is complete;
//! - restore run: the same job with `restore: Latest` from that checkpoint. Its generator
//!   is exhausted, so all its work is reading the consolidated input, replaying it at the
//!   restored epoch through `count()` and `reduce`, whose results `changes` drops (they
//!   were committed by the initial run), and a final checkpoint of its own;
//! - empty restore: the same restore of a job over 1000 records, for the fixed start-up
//!   and shut-down of a restore run.
//!
//! Times run from the call to `weir::run`. Also measured, from the same start: until the
//! first worker starts building the job (before that the run starts its I/O runtime,
//! lists the checkpoints and verifies the restored one's parts), until every worker has
//! built its collection (its part of the consolidated input is read and decoded), and
//! until the output frontiers of `count()` and `reduce` have passed the restored epoch
//! on every worker (the recomputation is complete; for an initial run, until they are
//! empty). Every initial run checks that its committed output, consolidated, is exactly
//! each key's count and largest value, and every restore run that it added no line.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::generic::Operator;
use timely::dataflow::Stream;
use weir::checkpoint::CheckpointStore;
use weir::prelude::*;

/// Worker threads.
const WORKERS: usize = 2;
/// Distinct keys.
const KEYS: u64 = 100_000;
/// Records of the job whose restore is the fixed cost.
const TINY: u64 = 1000;
/// The collection's name, under which its consolidated input is checkpointed.
const INPUT: &str = "input";

/// When, in seconds since the run started, each worker started building the job and
/// had built its collection, and when the output frontiers of its differential
/// operators passed the restored epoch (or became empty, if nothing was restored).
#[derive(Default)]
struct Marks {
    started: Vec<f64>,
    built: Vec<f64>,
    recomputed: Vec<f64>,
}

/// What one run took, in seconds since the call to `weir::run`.
#[derive(Clone, Copy)]
struct Times {
    /// Until the first worker started building the job.
    started: f64,
    /// Until every worker had built its collection.
    built: f64,
    /// Until every worker's `count()` and `reduce` had recomputed.
    recomputed: f64,
    /// The whole run.
    total: f64,
}

/// Records in `marks` when the frontier of `stream` has passed `past` (or is empty).
fn watch<'s, D: 'static>(
    stream: Stream<'s, u64, Vec<D>>,
    past: Option<u64>,
    start: Instant,
    marks: Arc<Mutex<Marks>>,
) {
    let mut done = false;
    stream.sink(Pipeline, "watch", move |(input, frontier)| {
        input.for_each(|_, _| {});
        let passed = match past {
            Some(e) => !frontier.less_equal(&e),
            None => frontier.is_empty(),
        };
        if passed && !std::mem::replace(&mut done, true) {
            let t = start.elapsed().as_secs_f64();
            marks.lock().unwrap().recomputed.push(t);
        }
    });
}

/// Runs the job over `records` records, restoring the latest checkpoint when `restore`;
/// `interval_ms` 0 turns checkpointing off.
fn run_job(records: u64, chk: &Path, out: &Path, restore: bool, interval_ms: u64) -> Times {
    let config = JobConfig {
        job: "bench-collection".into(),
        checkpoint_url: chk.to_string_lossy().into_owned(),
        checkpoint_interval_ms: interval_ms,
        workers: WORKERS,
        restore: restore.then_some(RestoreTarget::Latest),
        ..Default::default()
    };
    let out = out.to_path_buf();
    let marks = Arc::new(Mutex::new(Marks::default()));
    let marks_job = Arc::clone(&marks);
    let start = Instant::now();
    weir::run(config, move |job| {
        let started = start.elapsed().as_secs_f64();
        marks_job.lock().unwrap().started.push(started);
        let input = job
            .source(
                "records",
                generator::items(records, |i| ((i % KEYS, i), 1isize)),
            )?
            .to_collection(INPUT)?;
        marks_job
            .lock()
            .unwrap()
            .built
            .push(start.elapsed().as_secs_f64());
        let past = job.ctx().restored().map(|m| m.epoch.0);
        let counts = input.collection().clone().map(|(k, _)| k).count();
        let max = input.collection().clone().reduce(
            |_k, values: &[(&u64, isize)], output: &mut Vec<(u64, isize)>| {
                output.push((*values[values.len() - 1].0, 1))
            },
        );
        watch(counts.inner.clone(), past, start, Arc::clone(&marks_job));
        watch(max.inner.clone(), past, start, Arc::clone(&marks_job));
        input
            .derived(counts)
            .changes()
            .sink("counts", files::jsonl(&out))?;
        input.derived(max).changes().sink("max", files::jsonl(&out))
    })
    .unwrap();
    let total = start.elapsed().as_secs_f64();
    let marks = marks.lock().unwrap();
    assert_eq!(marks.built.len(), WORKERS);
    assert_eq!(marks.recomputed.len(), 2 * WORKERS);
    let last = |v: &[f64]| v.iter().copied().fold(0.0, f64::max);
    Times {
        started: marks.started.iter().copied().fold(f64::MAX, f64::min),
        built: last(&marks.built),
        recomputed: last(&marks.recomputed),
        total,
    }
}

/// Checks that the committed output in `out`, consolidated, is each key's count and
/// largest value over `records` records; returns its number of lines.
fn check(out: &Path, records: u64) -> usize {
    let mut counts: HashMap<(u64, isize), isize> = HashMap::new();
    let mut max: HashMap<(u64, u64), isize> = HashMap::new();
    let mut lines = 0;
    for entry in std::fs::read_dir(out).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|x| x != "jsonl") {
            continue;
        }
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let text = std::fs::read_to_string(&path).unwrap();
        for line in text.lines() {
            lines += 1;
            if name.starts_with("counts-") {
                let (d, _, r): ((u64, isize), u64, isize) = serde_json::from_str(line).unwrap();
                *counts.entry(d).or_default() += r;
            } else {
                let (d, _, r): ((u64, u64), u64, isize) = serde_json::from_str(line).unwrap();
                *max.entry(d).or_default() += r;
            }
        }
    }
    counts.retain(|_, r| *r != 0);
    max.retain(|_, r| *r != 0);
    let keys = KEYS.min(records);
    assert_eq!(counts.len() as u64, keys, "keys counted");
    assert_eq!(max.len() as u64, keys, "keys with a largest value");
    for k in 0..keys {
        // Records `k`, `k + KEYS`, ... below `records`.
        let n = (records - k).div_ceil(KEYS);
        assert_eq!(counts.get(&(k, n as isize)), Some(&1), "count of key {k}");
        assert_eq!(
            max.get(&(k, k + (n - 1) * KEYS)),
            Some(&1),
            "largest value of key {k}"
        );
    }
    lines
}

/// The newest complete checkpoint under `chk`: its epoch, and the bytes of the
/// collection's parts.
fn latest(chk: &Path) -> (u64, u64) {
    let store = CheckpointStore::open(&chk.to_string_lossy(), "bench-collection").unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (complete, _) = rt.block_on(store.list()).unwrap();
    let manifest = rt
        .block_on(store.read_manifest(*complete.last().unwrap()))
        .unwrap();
    let bytes = manifest.parts_of(INPUT).map(|p| p.size).sum();
    (manifest.epoch.0, bytes)
}

/// The median of `v`.
fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn main() {
    let records: u64 = std::env::var("WEIR_BENCH_RECORDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2_000_000);
    let runs: usize = std::env::var("WEIR_BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5);

    let tiny = tempfile::tempdir().unwrap();
    let (tiny_chk, tiny_out) = (tiny.path().join("chk"), tiny.path().join("out"));
    std::fs::create_dir_all(&tiny_out).unwrap();
    run_job(TINY, &tiny_chk, &tiny_out, false, 1000);

    let (mut offs, mut initials, mut restores, mut empties) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut bytes = 0;
    for run in 0..runs {
        let dir = tempfile::tempdir().unwrap();
        let (off_chk, off_out) = (dir.path().join("chk-off"), dir.path().join("out-off"));
        let (chk, out) = (dir.path().join("chk"), dir.path().join("out"));
        std::fs::create_dir_all(&off_out).unwrap();
        std::fs::create_dir_all(&out).unwrap();
        let off = run_job(records, &off_chk, &off_out, false, 0);
        check(&off_out, records);
        let initial = run_job(records, &chk, &out, false, 1000);
        let epoch;
        (epoch, bytes) = latest(&chk);
        let lines = check(&out, records);
        let restore = run_job(records, &chk, &out, true, 1000);
        assert_eq!(
            check(&out, records),
            lines,
            "output lines after the restore"
        );
        let empty = run_job(TINY, &tiny_chk, &tiny_out, true, 1000);
        eprintln!(
            "run {run}: off {:.2} s; exactly-once {:.2} s (final checkpoint at epoch {epoch}, \
             {lines} output lines); restore {:.2} s (workers start {:.2} s, built {:.2} s, \
             recomputed {:.2} s); empty restore {:.3} s",
            off.total,
            initial.total,
            restore.total,
            restore.started,
            restore.built,
            restore.recomputed,
            empty.total,
        );
        offs.push(off);
        initials.push(initial);
        restores.push(restore);
        empties.push(empty);
    }
    let med = |v: &[Times], f: fn(&Times) -> f64| median(v.iter().map(f).collect());
    let off = med(&offs, |t| t.total);
    let initial = med(&initials, |t| t.total);
    let restore = med(&restores, |t| t.total);
    let started = med(&restores, |t| t.started);
    let built = med(&restores, |t| t.built);
    let recomputed = med(&restores, |t| t.recomputed);
    let replay = med(&restores, |t| t.recomputed - t.built);
    let empty = med(&empties, |t| t.total);
    let rate = |secs: f64| format!("{:.2} M", records as f64 / secs / 1e6);
    let mib = bytes as f64 / (1u64 << 20) as f64;
    println!(
        "differential collection of {records} records ({KEYS} keys; count and largest value \
         per key), {WORKERS} workers, local checkpoint directory ({mib:.0} MiB of collection \
         parts in the final checkpoint), median of {runs} runs"
    );
    println!();
    println!("| what | median | records/s |");
    println!("| --- | --- | --- |");
    println!(
        "| initial run, checkpointing off (one epoch) | {off:.2} s | {} |",
        rate(off)
    );
    println!(
        "| initial run, exactly once, 1 s checkpoints | {initial:.2} s | {} |",
        rate(initial)
    );
    println!(
        "| restore run: restore, replay, recompute, final checkpoint | {restore:.2} s | {} |",
        rate(restore)
    );
    println!(
        "| of which until the first worker starts (I/O runtime, listing, verifying the parts) \
         | {started:.2} s | |"
    );
    println!(
        "| of which until every worker's collection is restored (read, decoded) | {built:.2} s | {} |",
        rate(built)
    );
    println!(
        "| of which until `count()` and `reduce` have recomputed on every worker | {recomputed:.2} s | |"
    );
    println!(
        "| replay and recompute alone (recomputed - restored) | {replay:.2} s | {} |",
        rate(replay)
    );
    println!("| restore run of a {TINY}-record collection (fixed cost) | {empty:.3} s | |");
    println!();
    println!(
        "restore / initial (exactly once):       {:.3}",
        restore / initial
    );
    println!(
        "restore / initial (checkpointing off):  {:.3}",
        restore / off
    );
    println!(
        "(restore - empty restore) / initial off: {:.3}",
        (restore - empty) / off
    );
    println!(
        "replay and recompute / initial off:     {:.3}",
        replay / off
    );
}
