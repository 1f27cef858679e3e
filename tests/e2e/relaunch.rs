//! Starting a job again over the checkpoints of an earlier run: a new `weir launch`, and
//! an explicit restore of an older checkpoint.

use std::process::Command;
use std::time::Duration;

use crate::harness::bins;
use crate::harness::checkpoints::complete_checkpoints;
use crate::harness::checks::{check_at_least_once, check_exactly_once};
use crate::harness::input::{self, InputSpec};
use crate::harness::job::{run_standalone, wordcount_command, JobArgs};
use crate::harness::output::read_committed;
use crate::harness::process::{run_to_end, tail};
use crate::harness::scenario;
use crate::harness::workspace::Workspace;

fn launch(args: &JobArgs, extra: &[&str]) -> Command {
    let mut cmd = Command::new(bins::weir());
    cmd.args(["launch", "--processes", "1", "--workers", "2"])
        .args(extra)
        .arg("--")
        .arg(bins::wordcount())
        .args(args.args())
        .env_remove("WEIR_FAILPOINT");
    cmd
}

#[test]
fn a_new_launch_over_an_earlier_launchs_checkpoints_is_not_fenced_by_its_generations() {
    let ws = Workspace::new("relaunch");
    let corpus = input::generate(&ws.input, scenario::seed(0x7_0001), &InputSpec::small());
    let args = JobArgs::new(&ws)
        .interval_ms(50)
        .rate_limit(corpus.rate_limit_for(2, 2.0));
    // The first launch runs generations 0 (killed after a manifest) and 1 (finishes).
    let mut first = launch(&args, &["--max-restarts", "1"]);
    first.env("WEIR_FAILPOINT", "after-manifest@3");
    let done = run_to_end(
        first,
        ws.log_paths("first-launch"),
        Duration::from_secs(120),
    );
    done.assert_success();
    assert!(
        done.stderr.contains("after 1 restart(s)"),
        "the failpoint should have cost one restart\n{}",
        tail(&done.stderr, 30)
    );

    // A new launch counts its generations from 0 again; the job must continue the
    // numbering instead of being fenced by generation 1 of the earlier launch.
    let again = launch(&args.clone().restore("latest"), &["--max-restarts", "0"]);
    let finished = run_to_end(
        again,
        ws.log_paths("second-launch"),
        Duration::from_secs(120),
    );
    finished.assert_success();
    assert!(
        finished.stderr.contains("after 0 restart(s)"),
        "the second launch must not be fenced by the first one's generations\n{}",
        tail(&finished.stderr, 30)
    );
    check_exactly_once(&corpus.oracle, &read_committed(&ws.output));
}

/// Runs the job (generation 0) until it dies with checkpoint 4's manifest written and
/// its output still staged; returns the complete checkpoints' epochs, ascending.
fn killed_after_checkpoint_4(ws: &Workspace, args: &JobArgs) -> Vec<u64> {
    let mut first = wordcount_command(args);
    first.env("WEIR_FAILPOINT", "after-manifest@4");
    let killed = run_to_end(first, ws.log_paths("first"), Duration::from_secs(120));
    assert!(
        !killed.status.success(),
        "the failpoint should have killed the first run"
    );
    let epochs: Vec<u64> = complete_checkpoints(&ws.checkpoints, "wordcount")
        .iter()
        .map(|c| c.epoch)
        .collect();
    assert!(
        epochs.len() >= 3,
        "expected several complete checkpoints, found {epochs:?}"
    );
    epochs
}

#[test]
fn restoring_an_older_checkpoint_abandons_the_newer_ones_and_loses_nothing() {
    let ws = Workspace::new("restore-older");
    let corpus = input::generate(&ws.input, scenario::seed(0x7_0002), &InputSpec::small());
    let args = JobArgs::new(&ws)
        .workers(2)
        .interval_ms(50)
        .retain(10)
        .rate_limit(corpus.rate_limit_for(2, 2.0));
    let epochs = killed_after_checkpoint_4(&ws, &args);
    let older = epochs[epochs.len() - 2];
    let newest = epochs[epochs.len() - 1];

    let restored = run_standalone(&ws, "restore-older", &args.clone().restore(older));
    restored.assert_success();
    assert!(
        restored.stderr.contains(&format!(
            "checkpoint {newest} is newer than the restored one"
        )),
        "restoring {older} should say that {newest} is abandoned\n{}",
        tail(&restored.stderr, 30)
    );
    let now: Vec<u64> = complete_checkpoints(&ws.checkpoints, "wordcount")
        .iter()
        .map(|c| c.epoch)
        .collect();
    assert!(
        !now.contains(&newest),
        "checkpoint {newest} should no longer be restorable: {now:?}"
    );
    // Output committed after checkpoint `older` is produced again, but nothing is lost,
    // and a later restore of `latest` works.
    check_at_least_once(&corpus.oracle, &read_committed(&ws.output));
    let latest = run_standalone(&ws, "restore-latest", &args.restore("latest"));
    latest.assert_success();
}

#[test]
fn a_restart_after_restoring_an_older_checkpoint_restores_it_again() {
    let ws = Workspace::new("restore-older-again");
    let corpus = input::generate(&ws.input, scenario::seed(0x7_0003), &InputSpec::small());
    let args = JobArgs::new(&ws)
        .interval_ms(50)
        .retain(10)
        .rate_limit(corpus.rate_limit_for(2, 2.0));
    let epochs = killed_after_checkpoint_4(&ws, &args.clone().workers(2));
    let older = epochs[epochs.len() - 2];
    // A launch restores the older checkpoint; its first generation (1) dies before its
    // first manifest, and the restart, which asks for the latest checkpoint, restores the
    // older one again.
    let mut again = launch(&args.clone().restore(older), &["--max-restarts", "2"]);
    again.env("WEIR_FAILPOINT", "before-manifest:g1");
    let finished = run_to_end(again, ws.log_paths("launch"), Duration::from_secs(120));
    finished.assert_success();
    assert!(
        finished.stderr.contains("after 1 restart(s)")
            && finished
                .stderr
                .contains(&format!("restored `{older}`: restoring it again")),
        "the restart should have restored checkpoint {older} again\n{}",
        tail(&finished.stderr, 30)
    );
    // Output committed after checkpoint `older` is produced again, but nothing is lost.
    check_at_least_once(&corpus.oracle, &read_committed(&ws.output));
}

#[test]
fn the_word_count_switches_from_a_record_per_word_to_batches_of_lines_over_its_checkpoints() {
    let ws = Workspace::new("record-per-word-to-batches");
    let corpus = input::generate(&ws.input, scenario::seed(0x7_0004), &InputSpec::small());
    let args = JobArgs::new(&ws)
        .workers(2)
        .interval_ms(50)
        .rate_limit(corpus.rate_limit_for(2, 2.0));
    // `flat_map` + `reduce_by_key` over a `String` per line, killed with checkpoint 4
    // written and its output staged ...
    killed_after_checkpoint_4(&ws, &args.clone().flag("--record-per-word"));
    // ... then `flat_reduce_by_key` over batches of lines, at another number of workers,
    // restores its source positions and counts, and commits the staged output.
    let restored = run_standalone(&ws, "batches", &args.workers(3).restore("latest"));
    restored.assert_success();
    check_exactly_once(&corpus.oracle, &read_committed(&ws.output));
}
