//! The event-time job `examples/sessions.rs` under kills and restores at another
//! parallelism: its committed sessions, late and rejected records must equal an oracle
//! computed from the input files.

use std::collections::BTreeMap;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use serde::Deserialize;

use crate::harness::bins;
use crate::harness::job::JobArgs;
use crate::harness::keyed::check_same_multiset;
use crate::harness::launch::{launch, ChaosPlan, LaunchSpec};
use crate::harness::process::{run_to_end, tail, Finished};
use crate::harness::scenario;
use crate::harness::workspace::{path_str, Workspace};

/// The example's settings (see the module doc of `examples/sessions.rs`).
const OUT_OF_ORDERNESS: u64 = 60;
const SESSION_GAP: u64 = 300;
const SPLITS: u32 = 8;
const EVENTS_PER_SPLIT: u64 = 1_500;

#[derive(Deserialize)]
struct Click {
    id: u64,
    user: u32,
    ts: Option<u64>,
    split: u32,
}

/// What the job must commit, computed from the input files alone.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Expected {
    /// (user, start, end, clicks), sorted.
    pub(crate) sessions: Vec<(u32, u64, u64, u64)>,
    /// Ids of late clicks, sorted.
    late: Vec<u64>,
    /// Rejected lines, sorted.
    rejected: Vec<String>,
}

/// The oracle: per split in file order, a click is late when its event time is at or
/// behind the split's watermark (largest earlier event time minus the out-of-orderness);
/// repeated ids count once; a user's remaining clicks form sessions broken by gaps
/// larger than the session gap.
fn oracle(input: &Path) -> Expected {
    let mut expected = Expected::default();
    let mut seen_ids = std::collections::BTreeSet::new();
    let mut per_user: BTreeMap<u32, Vec<u64>> = BTreeMap::new();
    for split in 0..SPLITS {
        let path = input.join(format!("clicks-{split:02}.jsonl"));
        let text = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("read input {}: {e}", path.display()));
        let mut max_ts: Option<u64> = None;
        for line in text.lines() {
            let Some(click) = serde_json::from_str::<Click>(line).ok() else {
                expected.rejected.push(line.to_string());
                continue;
            };
            assert_eq!(
                click.split, split,
                "generator wrote a click of another split"
            );
            let Some(ts) = click.ts else {
                expected.rejected.push(line.to_string());
                continue;
            };
            let wm = max_ts.map_or(0, |m| m.saturating_sub(OUT_OF_ORDERNESS));
            max_ts = Some(max_ts.map_or(ts, |m| m.max(ts)));
            if !seen_ids.insert(click.id) {
                continue; // a repeat: dropped before windowing
            }
            if ts <= wm {
                expected.late.push(click.id);
                continue;
            }
            per_user.entry(click.user).or_default().push(ts);
        }
    }
    for (user, mut times) in per_user {
        times.sort_unstable();
        let (mut start, mut last, mut n) = (times[0], times[0], 0u64);
        for ts in times {
            if ts - last > SESSION_GAP {
                expected.sessions.push((user, start, last + SESSION_GAP, n));
                start = ts;
                n = 0;
            }
            last = ts;
            n += 1;
        }
        expected.sessions.push((user, start, last + SESSION_GAP, n));
    }
    expected.sessions.sort_unstable();
    expected.late.sort_unstable();
    expected.rejected.sort_unstable();
    expected
}

#[derive(Deserialize)]
struct SessionLine {
    user: u32,
    start: u64,
    end: u64,
    clicks: u64,
}
#[derive(Deserialize)]
struct LateLine {
    id: u64,
}
#[derive(Deserialize)]
struct RejectedLine {
    line: String,
}

/// Every committed line of the sink whose files start with `prefix-`.
fn committed<T: for<'de> Deserialize<'de>>(dir: &Path, prefix: &str) -> Vec<T> {
    let mut out = Vec::new();
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("list {}: {e}", dir.display()))
        .map(|e| e.expect("directory entry").path())
        .filter(|p| {
            let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
            name.starts_with(&format!("{prefix}-")) && name.ends_with(".jsonl")
        })
        .collect();
    files.sort();
    for f in files {
        let text = std::fs::read_to_string(&f).expect("read committed output");
        for (i, line) in text.lines().enumerate() {
            out.push(serde_json::from_str(line).unwrap_or_else(|e| {
                panic!(
                    "{}:{} is not a {prefix} record ({e}): {line}",
                    f.display(),
                    i + 1
                )
            }));
        }
    }
    out
}

fn actual(output: &Path) -> Expected {
    let mut a = Expected {
        sessions: committed::<SessionLine>(output, "sessions")
            .into_iter()
            .map(|s| (s.user, s.start, s.end, s.clicks))
            .collect(),
        late: committed::<LateLine>(output, "late")
            .into_iter()
            .map(|l| l.id)
            .collect(),
        rejected: committed::<RejectedLine>(output, "rejected")
            .into_iter()
            .map(|r| r.line)
            .collect(),
    };
    a.sessions.sort_unstable();
    a.late.sort_unstable();
    a.rejected.sort_unstable();
    a
}

/// Compares with the oracle, naming the first differences.
fn check(expected: &Expected, actual: &Expected) {
    check_same_multiset("sessions", &expected.sessions, &actual.sessions);
    check_same_multiset("late clicks", &expected.late, &actual.late);
    check_same_multiset("rejected lines", &expected.rejected, &actual.rejected);
}

/// Writes the input with the example's own generator and returns the oracle.
pub(crate) fn generate(ws: &Workspace, seed: u64) -> Expected {
    let mut cmd = Command::new(bins::sessions());
    cmd.args(["generate", "--input", &path_str(&ws.input)])
        .args(["--splits", &SPLITS.to_string()])
        .args(["--events-per-split", &EVENTS_PER_SPLIT.to_string()])
        .args(["--seed", &seed.to_string()]);
    run_to_end(cmd, ws.log_paths("generate"), Duration::from_secs(30)).assert_success();
    let expected = oracle(&ws.input);
    assert!(
        !expected.late.is_empty() && !expected.rejected.is_empty() && expected.sessions.len() > 100,
        "the generated input should exercise late, rejected and many sessions: {} sessions, {} late, {} rejected",
        expected.sessions.len(),
        expected.late.len(),
        expected.rejected.len()
    );
    expected
}

/// Lines per second per worker so that `workers` read the input in about `secs`.
pub(crate) fn rate_for(workers: usize, secs: f64) -> u64 {
    let lines = (u64::from(SPLITS) * EVENTS_PER_SPLIT) as f64 * 1.03;
    ((lines / workers as f64 / secs).ceil() as u64).max(1)
}

/// Runs the sessions binary with `args` to its end, with `failpoint` if given.
pub(crate) fn run_sessions(
    ws: &Workspace,
    args: &JobArgs,
    failpoint: Option<&str>,
    name: &str,
) -> Finished {
    let mut cmd = Command::new(bins::sessions());
    cmd.args(args.args());
    match failpoint {
        Some(fp) => cmd.env("WEIR_FAILPOINT", fp),
        None => cmd.env_remove("WEIR_FAILPOINT"),
    };
    run_to_end(cmd, ws.log_paths(name), Duration::from_secs(120))
}

/// Runs the sessions job under `weir launch` with `kills` random SIGKILLs, and checks
/// that it finished and every kill was delivered.
pub(crate) fn launch_under_kills(
    ws: &Workspace,
    job: JobArgs,
    processes: usize,
    workers: usize,
    kills: usize,
    seed: u64,
) {
    let outcome = launch(
        ws,
        &launch_spec(job, processes, workers, kills),
        Some(chaos(kills, seed)),
    );
    outcome.assert_success();
    assert_eq!(outcome.kills.len(), kills, "{}", outcome.summary());
}

fn launch_spec(job: JobArgs, processes: usize, workers: usize, kills: usize) -> LaunchSpec {
    LaunchSpec {
        processes,
        workers,
        max_restarts: kills as u32 + 3,
        restart_delay_ms: scenario::RESTART_DELAY_MS,
        failpoint: None,
        job,
        binary: Some(bins::sessions()),
    }
}

fn chaos(kills: usize, seed: u64) -> ChaosPlan {
    ChaosPlan {
        kills,
        first_generation: 0,
        min_delay: Duration::from_millis(300),
        max_delay: Duration::from_millis(1_000),
        seed,
    }
}

#[test]
fn sessions_under_kills_at_one_process_of_two_workers_equal_the_oracle() {
    let seed = scenario::seed(0x7_0001);
    let ws = Workspace::new("sessions-1x2");
    let expected = generate(&ws, seed);
    let job = JobArgs::new(&ws)
        .interval_ms(scenario::INTERVAL_MS)
        .rate_limit(rate_for(2, 5.0));
    launch_under_kills(&ws, job, 1, 2, 3, seed);
    check(&expected, &actual(&ws.output));
}

#[test]
fn sessions_checkpointed_at_one_by_two_restore_at_two_by_two_under_kills() {
    let seed = scenario::seed(0x7_0002);
    let ws = Workspace::new("sessions-rescale");
    let expected = generate(&ws, seed);
    // 1 process x 2 workers, killed right after the manifest of its 5th checkpoint.
    let first = JobArgs::new(&ws)
        .interval_ms(scenario::INTERVAL_MS)
        .workers(2)
        .rate_limit(rate_for(2, 4.0));
    let killed = run_sessions(&ws, &first, Some("after-manifest@5"), "first");
    assert_eq!(
        killed.status.signal(),
        Some(libc::SIGKILL),
        "the failpoint should have killed the first run, which ended with {}\n{}",
        killed.status,
        tail(&killed.stderr, 30)
    );
    // Restored at 2 processes x 2 workers, with kills.
    let job = JobArgs::new(&ws)
        .interval_ms(scenario::INTERVAL_MS)
        .restore("latest")
        .rate_limit(rate_for(4, 3.0));
    launch_under_kills(&ws, job, 2, 2, 2, seed);
    check(&expected, &actual(&ws.output));
}

/// Runs the sessions job at 2 workers and stops it with `weir stop --savepoint paused`
/// once it has completed a few checkpoints, well before its input ends.
fn run_and_stop_with_a_savepoint(ws: &Workspace, expected: &Expected) {
    let first = JobArgs::new(ws)
        .interval_ms(scenario::INTERVAL_MS)
        .workers(2)
        .rate_limit(rate_for(2, 8.0));
    let mut cmd = Command::new(bins::sessions());
    cmd.args(first.args()).env_remove("WEIR_FAILPOINT");
    let logs = ws.log_paths("first");
    let running = std::thread::spawn(move || run_to_end(cmd, logs, Duration::from_secs(120)));
    // Stop once the job has completed a few checkpoints, well before its input ends.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while crate::harness::checkpoints::complete_checkpoints(&ws.checkpoints, "sessions").len() < 3 {
        assert!(
            std::time::Instant::now() < deadline && !running.is_finished(),
            "the job should have completed 3 checkpoints before ending"
        );
        std::thread::sleep(crate::harness::process::POLL);
    }
    let url = ws.checkpoint_url();
    let stop = crate::harness::job::run_weir(
        ws,
        "stop",
        &[
            "stop",
            "--checkpoint-dir",
            &url,
            "--job",
            "sessions",
            "--savepoint",
            "paused",
        ],
    );
    stop.assert_success();
    let stopped = running.join().expect("the job thread panicked");
    stopped.assert_success();
    let partial = actual(&ws.output);
    assert!(
        partial.sessions.len() < expected.sessions.len() / 2,
        "the job should have stopped early, yet it committed {} of {} sessions",
        partial.sessions.len(),
        expected.sessions.len()
    );
}

#[test]
fn a_job_stopped_with_a_final_savepoint_resumes_from_it_at_three_workers_exactly_once() {
    let seed = scenario::seed(0x7_0003);
    let ws = Workspace::new("sessions-stop");
    let expected = generate(&ws, seed);
    run_and_stop_with_a_savepoint(&ws, &expected);
    let url = ws.checkpoint_url();
    // The savepoint name is taken now.
    let again = crate::harness::job::run_weir(
        &ws,
        "stop-again",
        &[
            "stop",
            "--checkpoint-dir",
            &url,
            "--job",
            "sessions",
            "--savepoint",
            "paused",
        ],
    );
    again.assert_clean_failure(&["savepoint `paused`", "exists already"]);
    // Resume from the savepoint with three workers.
    let resumed = JobArgs::new(&ws)
        .interval_ms(scenario::INTERVAL_MS)
        .workers(3)
        .restore("savepoint:paused");
    run_sessions(&ws, &resumed, None, "resumed").assert_success();
    check(&expected, &actual(&ws.output));
}

#[test]
fn a_restart_after_a_savepoint_restore_that_committed_nothing_restores_the_savepoint_again() {
    let seed = scenario::seed(0x7_0005);
    let ws = Workspace::new("sessions-savepoint-restart");
    let expected = generate(&ws, seed);
    run_and_stop_with_a_savepoint(&ws, &expected);
    // The checkpoints are deleted by hand; the savepoint is kept.
    let url = ws.checkpoint_url();
    for c in crate::harness::checkpoints::complete_checkpoints(&ws.checkpoints, "sessions") {
        let epoch = c.epoch.to_string();
        crate::harness::job::run_weir(
            &ws,
            &format!("delete-{epoch}"),
            &[
                "checkpoints",
                "delete",
                "--checkpoint-dir",
                &url,
                "--job",
                "sessions",
                &epoch,
            ],
        )
        .assert_success();
    }
    assert!(
        crate::harness::checkpoints::complete_checkpoints(&ws.checkpoints, "sessions").is_empty()
    );
    // Resumed from the savepoint under `weir launch`; the first generation of the launch
    // (generation 1: the stopped run was 0) is killed before its first manifest, so the
    // restart, which asks for the latest checkpoint, finds none and must restore the
    // savepoint again rather than start from the beginning.
    let job = JobArgs::new(&ws)
        .interval_ms(scenario::INTERVAL_MS)
        .restore("savepoint:paused")
        .rate_limit(rate_for(2, 3.0));
    let spec = LaunchSpec {
        failpoint: Some("before-manifest:g1".into()),
        ..launch_spec(job, 1, 2, 1)
    };
    let outcome = launch(&ws, &spec, None);
    outcome.assert_success();
    assert!(
        outcome.generations.contains_key(&1),
        "the failpoint should have cost one restart\n{}",
        outcome.summary()
    );
    assert!(
        outcome.stderr.contains("restoring it again"),
        "the restart should have restored the savepoint again\n{}",
        outcome.summary()
    );
    check(&expected, &actual(&ws.output));
}

#[test]
fn restoring_a_checkpoint_into_a_job_with_other_operators_is_an_error_naming_them() {
    let seed = scenario::seed(0x7_0004);
    let ws = Workspace::new("sessions-graph");
    generate(&ws, seed);
    let first = JobArgs::new(&ws)
        .interval_ms(scenario::INTERVAL_MS)
        .job("shared");
    run_sessions(&ws, &first, None, "sessions").assert_success();
    // The word count job under the same name cannot take over the sessions' checkpoint.
    let other = JobArgs::new(&ws)
        .interval_ms(scenario::INTERVAL_MS)
        .job("shared")
        .restore("latest")
        .set("--output", path_str(&ws.root.join("other-output")));
    let failed = crate::harness::job::run_standalone(&ws, "wordcount", &other);
    failed.assert_clean_failure(&["operators changed", "session-windows", "counts"]);
    assert_eq!(
        failed.status.code(),
        Some(2),
        "a changed job is a permanent failure"
    );
}
