//! Keyed tumbling-window aggregate throughput: a hand-written single-threaded tumbling
//! window sum (the COST baseline), weir with checkpointing off and weir exactly-once with
//! 1 s checkpoints, side by side in one run.
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
//! The hand-written baseline computes the same events in one thread: a `HashMap` of
//! per-key sums per open window, a window fired (written as JSON lines, in a
//! `BufWriter`) once the largest event time seen, less the 100 units of disorder, has
//! passed its end, exactly as the watermark would.
//!
//! With checkpointing off the run is one epoch, and watermarks reach the window only when
//! an epoch closes: every window then fires when the input ends, so that variant holds
//! all the run's windows open at once, unlike the exactly-once one.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use weir::prelude::*;

// Allocate as weir's binaries do.
weir::global_allocator!();

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

/// One fired window of the hand-written baseline, as weir's sink writes it.
#[derive(serde::Serialize)]
struct Fired {
    key: u64,
    start: u64,
    end: u64,
    value: (u64, u64),
}

/// The hand-written single-threaded tumbling-window sum over the same events; returns
/// the events counted in fired windows and the windows fired.
fn hand_written(events: u64, out: &std::path::Path) -> (u64, u64) {
    use std::collections::{BTreeMap, HashMap};
    use std::io::Write;
    let mut file = std::io::BufWriter::with_capacity(
        1 << 16,
        std::fs::File::create(out.join("windows.jsonl")).unwrap(),
    );
    // Open windows by start, each with its sums and counts by key.
    let mut open: BTreeMap<u64, HashMap<u64, (u64, u64)>> = BTreeMap::new();
    let (mut counted, mut fired, mut max_time) = (0, 0, 0);
    let mut fire = |start: u64,
                    sums: HashMap<u64, (u64, u64)>,
                    file: &mut std::io::BufWriter<std::fs::File>| {
        for (key, value) in sums {
            counted += value.1;
            fired += 1;
            serde_json::to_writer(
                &mut *file,
                &Fired {
                    key,
                    start,
                    end: start + WINDOW,
                    value,
                },
            )
            .unwrap();
            file.write_all(b"\n").unwrap();
        }
    };
    for i in 0..events {
        let (index, key, time) = event(i);
        let start = time - time % WINDOW;
        let acc = open.entry(start).or_default().entry(key).or_default();
        acc.0 += index % 100;
        acc.1 += 1;
        if time > max_time {
            max_time = time;
            let watermark = max_time.saturating_sub(JITTER);
            while let Some(entry) = open.first_entry() {
                if entry.key() + WINDOW > watermark {
                    break;
                }
                let (start, sums) = entry.remove_entry();
                fire(start, sums, &mut file);
            }
        }
    }
    while let Some((start, sums)) = open.pop_first() {
        fire(start, sums, &mut file);
    }
    file.flush().unwrap();
    (counted, fired)
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
        ("hand-written, 1 thread", vec![]),
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
            let (counted, late, fired) = if i == 0 {
                let (counted, fired) = hand_written(events, &out);
                (counted, 0, fired)
            } else {
                let seen = weir_job(events, &out, &chk, if i == 1 { 0 } else { 1000 });
                let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
                (load(&seen.counted), load(&seen.late), load(&seen.windows))
            };
            let secs = start.elapsed().as_secs_f64();
            times.push(secs);
            if i > 0 {
                assert_eq!(
                    fired, windows,
                    "{name}: windows fired, against the hand-written count"
                );
            }
            windows = fired;
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
        base[1] / base[2]
    );
    println!(
        "weir exactly-once, {WORKERS} workers / hand-written (throughput): {:.3}   (target >= 1)",
        base[0] / base[2]
    );
}
