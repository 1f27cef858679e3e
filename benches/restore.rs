//! Time to restore keyed state from a local checkpoint directory, against reading the
//! same bytes with `cat`.
//!
//! `cargo bench --bench restore` (set `WEIR_BENCH_STATE_MB` to change the 1024 MiB of
//! encoded state, `WEIR_BENCH_RUNS` to change the 5 runs). A job on 2 workers, exactly
//! once, checkpoints into a temporary directory, keeps a 1000-byte `String` per key in
//! `stateful_map` for as many keys as make the state's checkpoint parts total the
//! requested size, and ends; its final checkpoint holds the whole state (the first run
//! uses 10-minute epochs, so that this is its only checkpoint). Then, run by run:
//!
//! - `cat` of every part file the latest checkpoint's manifest lists, to `/dev/null`;
//! - a restore: the same job graph started with `restore: Latest`. Its generator is
//!   already exhausted at the restored positions, so the run only restores and then
//!   takes its own final checkpoint.
//!
//! The page cache is not dropped (that would disturb the other tenants of a shared
//! machine), so both read warm data: the part files are read once with `cat` before the
//! first timed run, and every run reads them again. A restore run's state is unchanged,
//! so its final checkpoint reports the restored state parts again instead of writing new
//! ones: every run restores the state parts the first run wrote (the benchmark checks
//! this; only the small source positions are written anew).
//!
//! The restore time is measured from the call to `weir::run` until every worker has
//! built its `stateful_map`, which returns only once its key groups are read, verified,
//! decoded and in the operator's hash map; it includes the run's fixed start-up (the
//! I/O runtime, listing the checkpoints, reading and verifying the manifest's parts,
//! starting the workers). The same is measured on a job whose checkpoint holds no keys,
//! to show that fixed part. The whole restore run (which also takes a final checkpoint)
//! is reported too, and so are the steps of a restore timed one by one on this thread
//! (plain read, `get_part`, decode, hash map), to show where the time goes.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use weir::checkpoint::{codec, layout, CheckpointStore, Manifest};
use weir::prelude::*;

/// Worker threads.
const WORKERS: usize = 2;
/// Bytes of each key's state.
const VALUE_BYTES: usize = 1000;
/// Bytes a key takes in a checkpoint part: the key, the `String` (length + bytes) and
/// the entry's two update stamps.
const ENCODED_BYTES: u64 = 8 + 8 + VALUE_BYTES as u64 + 16;

/// The state of key `i`: `VALUE_BYTES` of printable characters.
fn value(i: u64) -> String {
    let mut x = i.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..VALUE_BYTES)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (b'!' + (x % 90) as u8) as char
        })
        .collect()
}

/// When each worker started building the job and when its state was restored, in
/// seconds since the run started.
type Marks = Arc<Mutex<Vec<(f64, f64)>>>;

/// Runs the job over `keys` keys, restoring the latest checkpoint when `restore`.
/// Returns (time until the first worker starts building the job, time until every
/// worker's state is restored, whole run time) in seconds.
fn run_job(keys: u64, chk: &Path, restore: bool, interval_ms: u64) -> (f64, f64, f64) {
    let config = JobConfig {
        job: "bench-restore".into(),
        checkpoint_url: chk.to_string_lossy().into_owned(),
        checkpoint_interval_ms: interval_ms,
        workers: WORKERS,
        restore: restore.then_some(RestoreTarget::Latest),
        ..Default::default()
    };
    let marks: Marks = Arc::new(Mutex::new(Vec::new()));
    let marks_job = Arc::clone(&marks);
    let start = Instant::now();
    weir::run(config, move |job| {
        let built = start.elapsed().as_secs_f64();
        job.source("items", generator::items(keys, |i| (i, value(i))))?
            .stateful_map("state", |_k, s: &mut String, v| {
                *s = v;
                None::<u64>
            })?;
        let restored = start.elapsed().as_secs_f64();
        marks_job.lock().unwrap().push((built, restored));
        Ok(())
    })
    .unwrap();
    let total = start.elapsed().as_secs_f64();
    let marks = marks.lock().unwrap();
    assert_eq!(marks.len(), WORKERS);
    let started = marks.iter().map(|m| m.0).fold(f64::MAX, f64::min);
    let restored = marks.iter().map(|m| m.1).fold(0.0, f64::max);
    (started, restored, total)
}

/// The part files of the newest complete checkpoint under `chk`, and their total size.
fn latest_parts(chk: &Path) -> (Vec<PathBuf>, u64) {
    let job_dir = chk.join("bench-restore");
    let newest = std::fs::read_dir(&job_dir)
        .unwrap()
        .filter_map(|e| {
            let name = e.unwrap().file_name().to_string_lossy().into_owned();
            layout::parse_checkpoint_dir(&name)
        })
        .filter(|epoch| {
            job_dir
                .join(layout::checkpoint_dir_name(*epoch))
                .join(layout::MANIFEST)
                .exists()
        })
        .max()
        .expect("a complete checkpoint");
    let path = job_dir
        .join(layout::checkpoint_dir_name(newest))
        .join(layout::MANIFEST);
    let bytes = std::fs::read(&path).unwrap();
    let manifest: Manifest = codec::decode_json(&path.to_string_lossy(), &bytes).unwrap();
    let files = manifest.parts.iter().map(|p| chk.join(&p.path)).collect();
    (files, manifest.total_bytes())
}

/// Reads `files` with `cat` into `/dev/null`; returns the time in seconds.
fn cat(files: &[PathBuf]) -> f64 {
    let start = Instant::now();
    let status = std::process::Command::new("cat")
        .args(files)
        .stdout(std::process::Stdio::null())
        .status()
        .expect("cat runs");
    assert!(status.success(), "cat failed");
    start.elapsed().as_secs_f64()
}

/// A key's entry in a `stateful_map` part: (state, updated ms, updated epoch), laid out
/// as the operator's own entry type is in bincode.
type Entry = (String, u64, u64);

/// A `stateful_map` part: the entries of each key group (a whole part, or the base
/// sections of a packed one).
type Part = Vec<(u32, Vec<(u64, Entry)>)>;

/// One restore's steps, timed one after the other on this thread over every part of
/// the latest checkpoint: (plain `std::fs::read`, `get_part` through the checkpoint
/// store, which reads and checks size, CRC and header, decoding the verified parts,
/// building the hash map of the decoded entries), in seconds.
fn breakdown(chk: &Path) -> (f64, f64, f64, f64) {
    let store = CheckpointStore::open(&chk.to_string_lossy(), "bench-restore").unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (complete, _) = rt.block_on(store.list()).unwrap();
    let manifest = rt
        .block_on(store.read_manifest(*complete.last().unwrap()))
        .unwrap();
    let (mut read, mut get, mut decode, mut map) = (0.0, 0.0, 0.0, 0.0);
    for part in manifest.parts_of("state") {
        let start = Instant::now();
        drop(std::fs::read(chk.join(&part.path)).unwrap());
        read += start.elapsed().as_secs_f64();
        let start = Instant::now();
        let verified = rt.block_on(store.get_part(part)).unwrap();
        get += start.elapsed().as_secs_f64();
        let start = Instant::now();
        let groups: Part = if part.packed.is_some() {
            // One section per key group; the first checkpoint holds only bases.
            let sections = verified.sections().unwrap();
            sections
                .iter()
                .map(|s| (s.group, verified.decode_section(s).unwrap()))
                .collect()
        } else {
            verified.decode().unwrap()
        };
        drop(verified);
        decode += start.elapsed().as_secs_f64();
        let start = Instant::now();
        let state: HashMap<u64, Entry> = groups.into_iter().flat_map(|(_, e)| e).collect();
        map += start.elapsed().as_secs_f64();
        drop(state);
    }
    (read, get, decode, map)
}

/// The median of `v`.
fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn main() {
    let state_mb: u64 = std::env::var("WEIR_BENCH_STATE_MB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1024);
    let runs: usize = std::env::var("WEIR_BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5);
    let keys = (state_mb << 20) / ENCODED_BYTES;
    let dir = tempfile::tempdir().unwrap();
    let chk = dir.path().join("chk");
    let empty = dir.path().join("chk-empty");

    let start = Instant::now();
    run_job(keys, &chk, false, 600_000);
    eprintln!(
        "state of {keys} keys written in {:.1} s",
        start.elapsed().as_secs_f64()
    );
    run_job(0, &empty, false, 600_000);
    let (files, bytes) = latest_parts(&chk);
    cat(&files);

    let (mut cats, mut preflights, mut restores, mut totals, mut empties) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut steps: [Vec<f64>; 4] = Default::default();
    for run in 0..runs {
        let (files, bytes) = latest_parts(&chk);
        let c = cat(&files);
        let (p, r, t) = run_job(keys, &chk, true, 1000);
        let state_parts = |files: &[PathBuf]| -> Vec<PathBuf> {
            files
                .iter()
                .filter(|f| f.parent().and_then(Path::file_name) == Some("state".as_ref()))
                .cloned()
                .collect()
        };
        assert_eq!(
            state_parts(&latest_parts(&chk).0),
            state_parts(&files),
            "the restore run's checkpoint reports the restored state parts again"
        );
        let (_, e, _) = run_job(0, &empty, true, 1000);
        eprintln!(
            "run {run}: cat {c:.3} s, restore {r:.3} s ({p:.3} s before the workers start; whole run {t:.3} s), empty restore {e:.3} s, {bytes} bytes"
        );
        preflights.push(p);
        let b = breakdown(&chk);
        eprintln!(
            "run {run}: one thread: read {:.3} s, get_part {:.3} s, decode {:.3} s, hash map {:.3} s",
            b.0, b.1, b.2, b.3
        );
        for (v, x) in steps.iter_mut().zip([b.0, b.1, b.2, b.3]) {
            v.push(x);
        }
        cats.push(c);
        restores.push(r);
        totals.push(t);
        empties.push(e);
    }
    let (c, p, r, t, e) = (
        median(cats),
        median(preflights),
        median(restores),
        median(totals),
        median(empties),
    );
    let mib = bytes as f64 / (1u64 << 20) as f64;
    println!(
        "restore of {keys} keys ({mib:.0} MiB of checkpoint parts), {WORKERS} workers, local directory, \
         warm page cache, median of {runs} runs"
    );
    println!();
    println!("| what | median | MiB/s |");
    println!("| --- | --- | --- |");
    println!(
        "| `cat` of the part files to /dev/null | {c:.3} s | {:.0} |",
        mib / c
    );
    println!(
        "| restore: start of the run until every worker's state is restored | {r:.3} s | {:.0} |",
        mib / r
    );
    println!(
        "| of which before the workers start (I/O runtime, listing, verifying every part) | {p:.3} s | |"
    );
    println!("| restore of a checkpoint without keys (fixed start-up) | {e:.3} s | |");
    println!(
        "| whole restore run (restore, then a final checkpoint of the unchanged state) | {t:.3} s | |"
    );
    println!();
    println!("The steps of a restore, one after the other on one thread, over every part:");
    println!();
    println!("| step | median | MiB/s |");
    println!("| --- | --- | --- |");
    let names = [
        "`std::fs::read` of the parts into fresh memory",
        "`get_part` (read, check size, CRC and header: one CRC pass)",
        "`VerifiedPart::decode` (bincode, no second CRC pass)",
        "decoded entries into a `HashMap`",
    ];
    let steps: Vec<f64> = steps.into_iter().map(median).collect();
    for (name, m) in names.iter().zip(&steps) {
        println!("| {name} | {m:.3} s | {:.0} |", mib / m);
    }
    println!();
    println!(
        "cat / restore:                   {:.3}   (target >= 0.5)",
        c / r
    );
    println!(
        "cat / (restore - empty restore): {:.3}",
        c / (r - e).max(1e-9)
    );
    println!("cat / std::fs::read:             {:.3}", c / steps[0]);
}
