//! Property tests of every stateful operator (`examples/operators.rs`): on random input,
//! a run killed at a random checkpoint, before or after its manifest, restored at another
//! number of workers, killed again and restored at the first number, commits the same
//! output as a run without failure, and both equal a direct oracle computed from the
//! input.

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use proptest::prelude::*;
use serde::Deserialize;

use crate::harness::bins;
use crate::harness::job::JobArgs;
use crate::harness::keyed::check_same_multiset;
use crate::harness::process::{run_to_end, tail};
use crate::harness::workspace::{path_str, Workspace};

/// The example's allowed out-of-orderness, which the generated input respects except
/// for the events generated late on purpose.
const BOUND: u64 = 20;

#[derive(Debug, Clone)]
struct Ev {
    id: u64,
    split: u32,
    key: u32,
    ts: u64,
    value: i64,
    left: bool,
}

/// Raw draws for one event: (time step, jitter, late?, key, value, left?).
type Draw = (u64, u64, bool, u32, i64, bool);

fn draws() -> impl Strategy<Value = Vec<Vec<Draw>>> {
    let event = (
        0u64..15,
        0u64..=BOUND,
        prop::bool::weighted(0.04),
        0u32..6,
        -50i64..50,
        any::<bool>(),
    );
    prop::collection::vec(prop::collection::vec(event, 20..150), 1..=4)
}

/// Events from draws; with `local_keys`, every key belongs to one split only.
fn events(draws: &[Vec<Draw>], local_keys: bool) -> Vec<Vec<Ev>> {
    let mut id = 0;
    draws
        .iter()
        .enumerate()
        .map(|(split, ds)| {
            let mut t = 1_000u64;
            ds.iter()
                .map(|&(dt, jitter, late, key, value, left)| {
                    t += dt;
                    id += 1;
                    Ev {
                        id,
                        split: split as u32,
                        key: if local_keys {
                            split as u32 * 100 + key
                        } else {
                            key
                        },
                        ts: if late { t - 400 } else { t - jitter },
                        value,
                        left,
                    }
                })
                .collect()
        })
        .collect()
}

fn write_input(dir: &Path, splits: &[Vec<Ev>]) {
    for (n, evs) in splits.iter().enumerate() {
        let mut text = String::new();
        for e in evs {
            text.push_str(
                &serde_json::json!({
                    "id": e.id, "split": e.split, "key": e.key, "ts": e.ts, "value": e.value,
                    "side": if e.left { "L" } else { "R" }
                })
                .to_string(),
            );
            text.push('\n');
        }
        std::fs::write(dir.join(format!("events-{n:02}.jsonl")), text).expect("write input");
    }
}

/// Each event with its split's watermark just before it was read.
fn with_watermarks(splits: &[Vec<Ev>]) -> Vec<(Ev, u64)> {
    let mut out = Vec::new();
    for evs in splits {
        let mut max: Option<u64> = None;
        for e in evs {
            out.push((e.clone(), max.map_or(0, |m| m.saturating_sub(BOUND))));
            max = Some(max.map_or(e.ts, |m| m.max(e.ts)));
        }
    }
    out
}

type Lines = Vec<(String, Vec<i64>)>;

/// The oracle of each operator, as the example documents it.
fn oracle(op: &str, splits: &[Vec<Ev>]) -> Lines {
    let mut out: Lines = Vec::new();
    let evs = with_watermarks(splits);
    let all = || splits.iter().flatten();
    match op {
        "tumbling" | "sliding" => {
            let (size, slide) = if op == "tumbling" {
                (100, 100)
            } else {
                (100, 25)
            };
            let mut windows: BTreeMap<(u32, u64), i64> = BTreeMap::new();
            for (e, wm) in &evs {
                let open: Vec<u64> = (0..=e.ts / slide)
                    .map(|k| k * slide)
                    .filter(|s| *s + size > e.ts && *s + size > *wm)
                    .collect();
                if open.is_empty() {
                    out.push(("late".into(), vec![e.id as i64]));
                }
                for s in open {
                    *windows.entry((e.key, s)).or_default() +=
                        if op == "tumbling" { e.value } else { 1 };
                }
            }
            for ((k, s), v) in windows {
                out.push((
                    "window".into(),
                    vec![k as i64, s as i64, (s + size) as i64, v],
                ));
            }
        }
        "session" => {
            let mut per_key: BTreeMap<u32, Vec<u64>> = BTreeMap::new();
            for (e, wm) in &evs {
                if e.ts <= *wm {
                    out.push(("late".into(), vec![e.id as i64]));
                } else {
                    per_key.entry(e.key).or_default().push(e.ts);
                }
            }
            for (k, mut ts) in per_key {
                ts.sort_unstable();
                let (mut start, mut last, mut n) = (ts[0], ts[0], 0);
                for t in ts {
                    if t - last > 50 {
                        out.push((
                            "window".into(),
                            vec![k as i64, start as i64, (last + 50) as i64, n],
                        ));
                        (start, n) = (t, 0);
                    }
                    last = t;
                    n += 1;
                }
                out.push((
                    "window".into(),
                    vec![k as i64, start as i64, (last + 50) as i64, n],
                ));
            }
        }
        "dedup" => {
            let keys: BTreeSet<u32> = all().map(|e| e.key).collect();
            out.extend(keys.into_iter().map(|k| ("first".into(), vec![k as i64])));
        }
        "interval-join" => {
            let mut ok = Vec::new();
            for (e, wm) in &evs {
                if e.ts < *wm {
                    out.push(("late".into(), vec![e.id as i64]));
                } else {
                    ok.push(e);
                }
            }
            for l in ok.iter().filter(|e| e.left) {
                for r in ok.iter().filter(|e| !e.left && e.key == l.key) {
                    if r.ts >= l.ts && r.ts - l.ts <= 30 {
                        out.push(("pair".into(), vec![l.id as i64, r.id as i64]));
                    }
                }
            }
        }
        "join" => {
            for l in all().filter(|e| e.left) {
                for r in all().filter(|e| !e.left && e.key == l.key) {
                    out.push(("pair".into(), vec![l.id as i64, r.id as i64]));
                }
            }
        }
        "stateful-map" => {
            let mut max: BTreeMap<u32, i64> = BTreeMap::new();
            for e in all() {
                let m = max.entry(e.key).or_insert(0);
                *m = (*m).max(e.value);
                out.push(("max".into(), vec![e.id as i64, *m]));
            }
        }
        "bytes-map" => {
            let mut seen: BTreeMap<u32, (i64, i64)> = BTreeMap::new();
            for e in all() {
                let (m, n) = seen.entry(e.key).or_insert((0, 0));
                *m = (*m).max(e.value);
                *n += 1;
                out.push(("max".into(), vec![e.id as i64, *m, *n]));
            }
        }
        "reduce" | "flat-reduce" => {
            let mut sums: BTreeMap<u32, i64> = BTreeMap::new();
            for e in all() {
                *sums.entry(e.key).or_default() += e.value;
            }
            out.extend(
                sums.into_iter()
                    .map(|(k, s)| ("sum".into(), vec![k as i64, s])),
            );
        }
        "differential" => {
            let mut counts: BTreeMap<u32, i64> = BTreeMap::new();
            let mut max: BTreeMap<u32, i64> = BTreeMap::new();
            for e in all() {
                *counts.entry(e.key).or_default() += 1;
                let m = max.entry(e.key).or_insert(e.value);
                *m = (*m).max(e.value);
            }
            for (k, n) in &counts {
                out.push(("dd-count".into(), vec![*k as i64, *n, 1]));
                out.push(("dd-distinct".into(), vec![*k as i64, 1]));
            }
            for (k, m) in max {
                out.push(("dd-max".into(), vec![k as i64, m, 1]));
            }
            for l in all().filter(|e| e.left) {
                for r in all().filter(|e| !e.left && e.key == l.key) {
                    out.push(("dd-pair".into(), vec![l.id as i64, r.id as i64, 1]));
                }
            }
        }
        other => panic!("no oracle for {other}"),
    }
    out.sort();
    out
}

#[derive(Deserialize)]
struct Line(String, Vec<i64>);

/// The committed output, sorted; for `reduce` and `flat-reduce`, each key's last sum.
fn committed(op: &str, dir: &Path) -> Lines {
    let mut lines: Lines = Vec::new();
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .expect("list output")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "jsonl"))
        .collect();
    files.sort();
    for f in files {
        for l in std::fs::read_to_string(&f).expect("read output").lines() {
            let Line(tag, nums) = serde_json::from_str(l)
                .unwrap_or_else(|e| panic!("{}: not an output line ({e}): {l}", f.display()));
            lines.push((tag, nums));
        }
    }
    if matches!(op, "reduce" | "flat-reduce") {
        // key -> (epoch, sum); a key changes at most once per epoch.
        let mut last: BTreeMap<i64, (i64, i64)> = BTreeMap::new();
        for (_, n) in &lines {
            let (k, s, epoch) = (n[0], n[1], n[2]);
            let e = last.entry(k).or_insert((epoch, s));
            assert!(
                e.0 != epoch || e.1 == s,
                "key {k} has two sums committed for epoch {epoch}"
            );
            if epoch >= e.0 {
                *e = (epoch, s);
            }
        }
        lines = last
            .into_iter()
            .map(|(k, (_, s))| ("sum".to_string(), vec![k, s]))
            .collect();
    }
    if op == "differential" {
        // Changes accumulate to the final collections: (record, net diff).
        let mut net: BTreeMap<(String, Vec<i64>), i64> = BTreeMap::new();
        for (tag, mut n) in lines.drain(..) {
            let diff = n.pop().expect("a change ends with its diff");
            *net.entry((tag, n)).or_default() += diff;
        }
        lines = net
            .into_iter()
            .filter(|(_, d)| *d != 0)
            .map(|((tag, mut n), d)| {
                n.push(d);
                (tag, n)
            })
            .collect();
    }
    lines.sort();
    lines
}

fn job(ws: &Workspace, op: &str, output: &Path, checkpoints: &Path) -> JobArgs {
    JobArgs::new(ws)
        .set("--output", path_str(output))
        .set("--checkpoint-dir", path_str(checkpoints))
        .set("--operator", op)
        .set("--compaction-ratio", "0.01")
        .interval_ms(50)
}

fn run(
    args: &JobArgs,
    ws: &Workspace,
    name: &str,
    failpoint: Option<&str>,
) -> crate::harness::process::Finished {
    let mut cmd = Command::new(bins::operators());
    cmd.args(args.args());
    match failpoint {
        Some(fp) => cmd.env("WEIR_FAILPOINT", fp),
        None => cmd.env_remove("WEIR_FAILPOINT"),
    };
    // The keyed state's debug line at each barrier says how many older snapshots are
    // still encoding.
    cmd.env("RUST_LOG", "warn,weir_runtime::state=debug");
    run_to_end(cmd, ws.log_paths(name), Duration::from_secs(120))
}

/// One case: the oracle, a run without failure, and a run killed by `failpoint` at
/// `before` workers, restored at `after` workers, killed after its second manifest and
/// restored at `before` workers again must all agree. `incremental` says
/// whether the killed run and the restored run checkpoint incrementally (deltas and
/// staggered new bases) or write every key group whole at each checkpoint
/// (`--incremental-checkpoints false`); a run killed during a compaction is incremental.
/// With `slow_encoder`, the killed and the restored run hold each snapshot's deltas for
/// [`SLOW_ENCODER_MS`] after its barrier (the `encode` failpoint), so that the next
/// barriers come while snapshots are still encoding, and keys written meanwhile are
/// encoded just before the write. Returns the most snapshots that one barrier of those
/// two runs found still encoding (0 without a slow encoder).
fn check_operator(
    op: &'static str,
    draws: &[Vec<Draw>],
    failpoint: &str,
    (before, after): (usize, usize),
    incremental: (bool, bool),
    slow_encoder: bool,
) -> usize {
    let slow = |fp: &str, generation: &str| {
        if slow_encoder {
            format!("{fp},encode{generation}=delay:{SLOW_ENCODER_MS}")
        } else {
            fp.to_string()
        }
    };
    let splits = events(draws, matches!(op, "stateful-map" | "bytes-map"));
    let ws = Workspace::new(&format!("prop-{op}"));
    write_input(&ws.input, &splits);
    let expected = oracle(op, &splits);

    let (base_out, base_chk) = (ws.root.join("base-out"), ws.root.join("base-chk"));
    std::fs::create_dir_all(&base_out).expect("create base output");
    run(
        &job(&ws, op, &base_out, &base_chk).workers(1),
        &ws,
        "base",
        None,
    )
    .assert_success();
    let base = committed(op, &base_out);

    let lines: usize = splits.iter().map(Vec::len).sum();
    // Slow enough that the run is still going at the failpoint (~20 checkpoints).
    let rate = (lines as f64 / before as f64 / 1.0).ceil() as u64;
    let compaction = failpoint.starts_with("compaction");
    let mut first = job(&ws, op, &ws.output, &ws.checkpoints)
        .workers(before)
        .rate_limit(rate.max(1))
        .set("--incremental-checkpoints", incremental.0 || compaction);
    if compaction {
        // Any change to a key group after its first base makes it due for a new one, so
        // every checkpoint after the first that changes the state carries a compaction
        // (at most 1 in 32 of a worker's groups, the rest as deltas).
        first = first.set("--compaction-ratio", COMPACT_ALWAYS);
    }
    if slow_encoder {
        first = first.set("--log-format", "json");
    }
    let killed = run(&first, &ws, "killed", Some(&slow(failpoint, "")));
    assert_eq!(
        killed.status.signal(),
        Some(libc::SIGKILL),
        "{failpoint} should have killed the run at {before} workers (incremental: {}); it ended with {}\n{}",
        incremental.0 || compaction,
        killed.status,
        tail(&killed.stderr, 20)
    );
    // The restored run takes over the chains at its number of workers and is killed
    // again after its second manifest; the last run restores what it wrote at the first
    // number of workers, so key groups move twice with their bases and deltas.
    let mut restored = job(&ws, op, &ws.output, &ws.checkpoints)
        .workers(after)
        .rate_limit(((lines as f64 / after as f64).ceil() as u64).max(1))
        .set("--incremental-checkpoints", incremental.1)
        .restore("latest");
    if slow_encoder {
        restored = restored.set("--log-format", "json");
    }
    let second = run(
        &restored,
        &ws,
        "restored",
        Some(&slow("after-manifest@2:g1", ":g1")),
    );
    second.assert_killed(&format!("after-manifest@2:g1 at {after} workers"));
    let last = job(&ws, op, &ws.output, &ws.checkpoints)
        .workers(before)
        .set("--incremental-checkpoints", incremental.1)
        .restore("latest");
    run(&last, &ws, "last", None).assert_success();
    let chaos = committed(op, &ws.output);

    check_same_multiset(
        &format!("{op}: a run without failure against the oracle"),
        &expected,
        &base,
    );
    check_same_multiset(
        &format!(
            "{op}: killed by {failpoint} at {before} workers, restored at {after}, killed after \
             its second manifest and restored at {before} (incremental before and after: \
             {incremental:?}), against a run without failure"
        ),
        &base,
        &chaos,
    );
    still_encoding(&killed.stderr).max(still_encoding(&second.stderr))
}

fn cases() -> ProptestConfig {
    ProptestConfig {
        cases: std::env::var("WEIR_PROPTEST_CASES")
            .ok()
            .and_then(|c| c.parse().ok())
            .unwrap_or(3),
        max_shrink_iters: 8,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// A compaction ratio so small that any change to a key group makes it due for a new base.
const COMPACT_ALWAYS: &str = "0.000001";

/// How long a slow encoder holds each snapshot's deltas after its barrier: three
/// checkpoint intervals.
const SLOW_ENCODER_MS: u64 = 150;

/// The most snapshots that the keyed state's debug lines in `stderr` (JSON) found still
/// encoding when a barrier sealed the next one.
fn still_encoding(stderr: &str) -> usize {
    stderr
        .split("\"still_encoding\":")
        .skip(1)
        .filter_map(|rest| {
            let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
            digits.parse().ok()
        })
        .max()
        .unwrap_or(0)
}

/// Where the first run of `op` is killed: before or after a manifest, or while a
/// compaction (new bases of some of a worker's key groups) is uploaded. With
/// `--compaction-ratio 0.01` most checkpoints carry one, so a kill before the manifest
/// also falls between a compaction's upload and the manifest that adopts it.
///
/// A kill during the first or second compaction needs state that changes in at least two
/// checkpoints after the first. Every operator's state changes with each record it
/// applies, except `deduplicate`'s: it changes only when a key is first seen, and the
/// input has only six keys, which may all arrive before the first checkpoint. So
/// `deduplicate` is killed only before or after a manifest.
fn failpoints(op: &str) -> impl Strategy<Value = String> {
    let mut kinds = vec!["before-manifest", "after-manifest"];
    if op != "dedup" {
        kinds.push("compaction");
    }
    (prop::sample::select(kinds), 2u32..6).prop_map(|(fp, n)| match fp {
        "compaction" => format!("{fp}@{}", 1 + n % 2),
        _ => format!("{fp}@{n}"),
    })
}

/// Worker counts before and after the restore, always different.
fn parallelism() -> impl Strategy<Value = (usize, usize)> {
    (1usize..=3, 1usize..=2).prop_map(|(b, d)| (b, (b + d - 1) % 3 + 1))
}

macro_rules! operator_property {
    ($name:ident, $op:literal) => {
        proptest! {
            #![proptest_config(cases())]
            #[test]
            fn $name(
                d in draws(),
                fp in failpoints($op),
                workers in parallelism(),
                incremental in (prop::bool::weighted(0.75), prop::bool::weighted(0.75)),
            ) {
                check_operator($op, &d, &fp, workers, incremental, false);
            }
        }
    };
}

operator_property!(tumbling_windows_survive_kills_and_rescaling, "tumbling");
operator_property!(sliding_windows_survive_kills_and_rescaling, "sliding");
operator_property!(session_windows_survive_kills_and_rescaling, "session");
operator_property!(deduplicate_survives_kills_and_rescaling, "dedup");
operator_property!(interval_join_survives_kills_and_rescaling, "interval-join");
operator_property!(join_with_ttl_survives_kills_and_rescaling, "join");
operator_property!(stateful_map_survives_kills_and_rescaling, "stateful-map");
operator_property!(
    byte_string_keys_and_state_survive_kills_and_rescaling,
    "bytes-map"
);
operator_property!(reduce_survives_kills_and_rescaling, "reduce");
operator_property!(flat_reduce_survives_kills_and_rescaling, "flat-reduce");
operator_property!(
    differential_collections_survive_kills_and_rescaling,
    "differential"
);

/// Every keyed operator whose state changes with each record, with snapshots whose
/// deltas are encoded after the next barriers: values written after a barrier never leak
/// into its snapshot, under kills and rescaling. Whether a barrier comes while an older
/// snapshot still has keys to encode depends on which keys the next records write (a
/// key written is encoded before the write), so the test asserts that it happened in at
/// least one of its cases, and every case's output against the oracle.
#[test]
fn snapshots_still_encoding_at_the_next_barriers_survive_kills_and_rescaling() {
    // Every operator of the example but `dedup`, whose state changes only when a key is
    // first seen.
    let ops = vec![
        "tumbling",
        "sliding",
        "session",
        "interval-join",
        "join",
        "stateful-map",
        "bytes-map",
        "reduce",
        "flat-reduce",
        "differential",
    ];
    let config = cases();
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig {
        cases: config.cases.max(6),
        ..config
    });
    let seen = std::sync::atomic::AtomicUsize::new(0);
    let strategy = (prop::sample::select(ops), draws(), 4u32..8, parallelism());
    if let Err(e) = runner.run(&strategy, |(op, d, n, workers)| {
        let found = check_operator(
            op,
            &d,
            &format!("before-manifest@{n}"),
            workers,
            (true, true),
            true,
        );
        seen.fetch_max(found, std::sync::atomic::Ordering::Relaxed);
        Ok(())
    }) {
        panic!("{e}");
    }
    assert!(
        seen.into_inner() > 0,
        "with a slow encoder, no barrier of any case came while an older snapshot was still encoding"
    );
}
