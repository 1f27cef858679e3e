//! Keyed tumbling-window aggregate throughput: weir with checkpointing off and weir
//! exactly-once with 1 s checkpoints, side by side in one run.
//!
//! `cargo bench --bench window_agg` (set `WEIR_BENCH_EVENTS` to change the 10M events,
//! `WEIR_BENCH_RUNS` to change the 5 runs). Every variant generates the same events
//! (100k keys, event time rising with the event's index, 10 events per unit of event
//! time, with up to 100 units of out-of-order jitter), gives them event time and
//! per-split watermarks (`assign_event_time`, 64 generator splits, 100 units of
//! out-of-orderness), sums and counts them per key in tumbling windows of 60 000 units
//! (`window`), and writes every fired window as a JSON line into a fresh directory, over
//! 2 workers. Reports the median of the runs, the variants interleaved run by run, and
//! the ratio; each run checks that every event was counted in exactly one fired window
//! and that none was late.
//!
//! With checkpointing off the run is one epoch, and watermarks reach the window only when
//! an epoch closes: every window then fires when the input ends, so that variant holds
//! all the run's windows open at once, unlike the exactly-once one.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use weir::prelude::*;

/// Distinct keys.
const KEYS: u64 = 100_000;
/// Worker threads.
const WORKERS: usize = 2;
/// The generator's splits: item `i` belongs to split `i % SPLITS`.
const SPLITS: u64 = 64;
/// Events per unit of event time.
const EVENTS_PER_UNIT: u64 = 10;
/// Largest out-of-order jitter of an event's time, and the watermark's bound.
const JITTER: u64 = 100;
/// Tumbling window length, in units of event time.
const WINDOW: u64 = 60_000;

/// An event: (index, key, event time).
type Event = (u64, u64, u64);

/// A cheap, deterministic scramble of `i`.
fn mix(i: u64) -> u64 {
    let mut z = i.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Event `i`: its key and its event time, which rises with `i` up to `JITTER` of disorder.
fn event(i: u64) -> Event {
    (
        i,
        i.wrapping_mul(2_654_435_761) % KEYS,
        i / EVENTS_PER_UNIT + mix(i) % JITTER,
    )
}

/// What a run saw: events counted in fired windows, fired windows, late records.
#[derive(Default)]
struct Seen {
    counted: AtomicU64,
    windows: AtomicU64,
    late: AtomicU64,
}

/// Runs the job once; `interval_ms` 0 turns checkpointing off.
fn weir_job(
    events: u64,
    out: &std::path::Path,
    chk: &std::path::Path,
    interval_ms: u64,
) -> Arc<Seen> {
    let config = JobConfig {
        job: "bench-window".into(),
        checkpoint_url: chk.to_string_lossy().into_owned(),
        checkpoint_interval_ms: interval_ms,
        workers: WORKERS,
        ..Default::default()
    };
    let out = out.to_path_buf();
    let seen = Arc::new(Seen::default());
    let seen_job = Arc::clone(&seen);
    weir::run(config, move |job| {
        let (timed, _rejected) = job
            .source("events", generator::items(events, event))?
            .assign_event_time("clock", |e| Ok(e.2))
            .splits((0..SPLITS as u32).collect(), |e| (e.0 % SPLITS) as u32)
            .bounded(JITTER)
            .build()?;
        let (fired, late) = timed
            .window("tumbling", Windows::tumbling(WINDOW))
            .key(|e| e.1)
            .fold(|acc: &mut (u64, u64), e| {
                acc.0 += e.0 % 100;
                acc.1 += 1;
            })
            .build()?;
        let s = Arc::clone(&seen_job);
        late.inspect(move |_| {
            s.late.fetch_add(1, Ordering::Relaxed);
        });
        let s = Arc::clone(&seen_job);
        let fired = fired.inspect(move |f| {
            s.windows.fetch_add(1, Ordering::Relaxed);
            s.counted.fetch_add(f.value.1, Ordering::Relaxed);
        });
        fired.sink("windows", files::jsonl(&out))
    })
    .unwrap();
    seen
}

/// The median of `v`.
fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn main() {
    let events: u64 = std::env::var("WEIR_BENCH_EVENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000_000);
    let runs: usize = std::env::var("WEIR_BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5);
    let mut results: Vec<(&str, Vec<f64>)> = vec![
        ("weir, checkpointing off", vec![]),
        ("weir exactly-once, 1 s checkpoints", vec![]),
    ];
    let mut windows = 0;
    for run in 0..runs {
        for (i, (name, times)) in results.iter_mut().enumerate() {
            let dir = tempfile::tempdir().unwrap();
            let out = dir.path().join("out");
            std::fs::create_dir_all(&out).unwrap();
            let chk = dir.path().join("chk");
            let start = Instant::now();
            let seen = weir_job(events, &out, &chk, if i == 0 { 0 } else { 1000 });
            let secs = start.elapsed().as_secs_f64();
            times.push(secs);
            let counted = seen.counted.load(Ordering::Relaxed);
            let late = seen.late.load(Ordering::Relaxed);
            windows = seen.windows.load(Ordering::Relaxed);
            assert_eq!(counted, events, "{name}: events counted in fired windows");
            assert_eq!(late, 0, "{name}: late records");
            eprintln!("run {run}: {name:<36} {secs:>7.2} s  ({windows} windows fired)");
        }
    }
    println!(
        "tumbling-window aggregate, {events} events, {KEYS} keys, windows of {WINDOW} \
         ({windows} fired), {WORKERS} workers, median of {runs} runs"
    );
    println!();
    println!("| variant | median | events/s |");
    println!("| --- | --- | --- |");
    let base: Vec<f64> = results.iter().map(|(_, t)| median(t.clone())).collect();
    for ((name, _), secs) in results.iter().zip(&base) {
        println!(
            "| {name} | {secs:.2} s | {:.2} M |",
            events as f64 / secs / 1e6
        );
    }
    println!();
    println!(
        "weir exactly-once / weir off (throughput): {:.3}   (target >= 0.85)",
        base[0] / base[1]
    );
}
