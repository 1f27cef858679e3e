//! Memory of `deduplicate` per remembered key, with large keys.
//!
//! `cargo bench --bench dedup_memory` (set `WEIR_BENCH_KEYS` to a comma-separated list of
//! key counts, default `1000000,1835009,2000000,4000000`; `WEIR_BENCH_RUNS` to change
//! the 3 runs per count). A counting global allocator tracks the bytes the process has
//! allocated. For each key count `n`, two jobs run on one worker with checkpointing off,
//! on the same input: `n` records with distinct 64-byte string keys, given event time by
//! `assign_event_time`, then either `deduplicate` (with a window far longer than the
//! run, so that no key is forgotten) or nothing. An `inspect` at the end of each pipeline
//! reads the allocator's counter when the `n`-th record passes, that is once every key
//! has been remembered; the difference between the two jobs, divided by `n`, is what the
//! deduplication state costs per key. The peak over the whole run (which includes the
//! moment the hash set grows and holds its old and new tables at once) is reported the
//! same way. Medians of the runs, the two jobs interleaved run by run.
//!
//! Analytically, a key is an 8-byte hash in a `HashSet<u64>` (hashbrown: 8 bytes per
//! bucket plus 1 control byte, buckets a power of two, at most 7/8 full): between
//! 9 × 8/7 = 10.3 bytes per key (table just full) and 9 × 16/7 = 20.6 bytes per key
//! (just after the table doubled). 1 835 009 = 7/8 × 2²¹ + 1 keys is such a worst case.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use weir::prelude::*;

/// The system allocator, counting the bytes currently allocated and their peak.
struct Counting;

/// Bytes currently allocated.
static CURRENT: AtomicUsize = AtomicUsize::new(0);
/// The largest value `CURRENT` has had since the last [`reset_peak`].
static PEAK: AtomicUsize = AtomicUsize::new(0);

fn grew(bytes: usize) {
    let now = CURRENT.fetch_add(bytes, Ordering::Relaxed) + bytes;
    PEAK.fetch_max(now, Ordering::Relaxed);
}

fn shrank(bytes: usize) {
    CURRENT.fetch_sub(bytes, Ordering::Relaxed);
}

fn reset_peak() {
    PEAK.store(CURRENT.load(Ordering::Relaxed), Ordering::Relaxed);
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = System.alloc(layout);
        if !p.is_null() {
            grew(layout.size());
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let p = System.alloc_zeroed(layout);
        if !p.is_null() {
            grew(layout.size());
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout);
        shrank(layout.size());
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let p = System.realloc(ptr, layout, new_size);
        if !p.is_null() {
            if new_size >= layout.size() {
                grew(new_size - layout.size());
            } else {
                shrank(layout.size() - new_size);
            }
        }
        p
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Deduplication window: far longer than the run's event time, so nothing is forgotten.
const WINDOW: u64 = 1 << 40;

/// Record `i`: its index (also its event time) and a distinct 64-byte key.
fn record(i: u64) -> (u64, String) {
    (i, format!("user-{i:059}"))
}

/// What one job measured, in bytes above the allocation level before it started.
struct Measured {
    /// When the last record passed the end of the pipeline.
    at_last: usize,
    /// The peak over the whole run.
    peak: usize,
}

/// Runs the pipeline on `n` records, with `deduplicate` or without.
fn job(n: u64, dedup: bool) -> Measured {
    let config = JobConfig {
        checkpoint_interval_ms: 0,
        ..JobConfig::thread("bench-dedup")
    };
    let at_last = Arc::new(AtomicUsize::new(0));
    let seen = Arc::new(AtomicUsize::new(0));
    let (at_last_job, seen_job) = (Arc::clone(&at_last), Arc::clone(&seen));
    let before = CURRENT.load(Ordering::Relaxed);
    reset_peak();
    weir::run(config, move |job| {
        let (timed, _rejected) = job
            .source("records", generator::items(n, record))?
            .assign_event_time("clock", |r| Ok(r.0))
            .splits((0..64u32).collect(), |r| (r.0 % 64) as u32)
            .build()?;
        let out = if dedup {
            let (unique, _late) = timed.deduplicate("dedup", |r| r.1.clone(), WINDOW)?;
            unique.into_flow()
        } else {
            timed.into_flow()
        };
        let (at_last, seen) = (Arc::clone(&at_last_job), Arc::clone(&seen_job));
        out.inspect(move |_| {
            if seen.fetch_add(1, Ordering::Relaxed) + 1 == n as usize {
                at_last.store(CURRENT.load(Ordering::Relaxed), Ordering::Relaxed);
            }
        });
        Ok(())
    })
    .unwrap();
    assert_eq!(
        seen.load(Ordering::Relaxed),
        n as usize,
        "every key is distinct, so every record is forwarded"
    );
    Measured {
        at_last: at_last.load(Ordering::Relaxed).saturating_sub(before),
        peak: PEAK.load(Ordering::Relaxed).saturating_sub(before),
    }
}

/// The median of `v`.
fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn main() {
    let counts: Vec<u64> = std::env::var("WEIR_BENCH_KEYS")
        .unwrap_or_else(|_| "1000000,1835009,2000000,4000000".into())
        .split(',')
        .map(|s| {
            s.trim()
                .parse()
                .expect("WEIR_BENCH_KEYS: comma-separated numbers")
        })
        .collect();
    let runs: usize = std::env::var("WEIR_BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    let mut rows = Vec::new();
    for &n in &counts {
        let (mut end, mut peak) = (Vec::new(), Vec::new());
        let (mut with_end, mut base_end) = (Vec::new(), Vec::new());
        for run in 0..runs {
            let with = job(n, true);
            let base = job(n, false);
            eprintln!(
                "n {n} run {run}: with dedup {} B at the last record ({} B peak), without {} B ({} B peak)",
                with.at_last, with.peak, base.at_last, base.peak
            );
            with_end.push(with.at_last as f64);
            base_end.push(base.at_last as f64);
            end.push((with.at_last as f64 - base.at_last as f64) / n as f64);
            peak.push((with.peak as f64 - base.peak as f64) / n as f64);
        }
        rows.push((
            n,
            median(with_end),
            median(base_end),
            median(end),
            median(peak),
        ));
    }
    println!(
        "deduplicate, 64-byte string keys, 1 worker, checkpointing off, median of {runs} runs"
    );
    println!();
    println!("| keys | heap growth with dedup | without dedup | dedup bytes/key at the last record | dedup bytes/key, peak |");
    println!("| --- | --- | --- | --- | --- |");
    for (n, with, base, end, peak) in &rows {
        println!(
            "| {n} | {:.1} MB | {:.1} MB | {end:.1} | {peak:.1} |",
            with / 1e6,
            base / 1e6
        );
    }
    let max_end = rows.iter().map(|r| r.3).fold(f64::MIN, f64::max);
    let max_peak = rows.iter().map(|r| r.4).fold(f64::MIN, f64::max);
    println!();
    println!("max bytes/key at the last record: {max_end:.1}   (target <= 32)");
    println!("max bytes/key at the peak:        {max_peak:.1}");
    println!(
        "analytic: 8-byte hash + 1 control byte per bucket, load <= 7/8: 10.3 to 20.6 bytes/key"
    );
}
