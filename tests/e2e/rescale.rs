//! Restore at another parallelism: a checkpoint written by one number of workers is
//! restored by another, and the committed output is still exactly the oracle.

use std::os::unix::process::ExitStatusExt;
use std::time::Duration;

use crate::harness::checks::check_exactly_once;
use crate::harness::input::{self, InputSpec};
use crate::harness::job::{run_standalone, wordcount_command, JobArgs};
use crate::harness::output::read_committed;
use crate::harness::process::{run_to_end, tail};
use crate::harness::scenario;
use crate::harness::workspace::Workspace;

/// Runs `before` workers until the failpoint kills the process after the manifest of
/// its `nth` checkpoint, then restores the latest checkpoint with `after` workers and runs
/// to the end.
fn kill_then_restore_at(name: &str, seed: u64, before: usize, after: usize, failpoint: &str) {
    let ws = Workspace::new(name);
    let corpus = input::generate(&ws.input, scenario::seed(seed), &InputSpec::small());
    let base = JobArgs::new(&ws).interval_ms(50);
    let first_args = base
        .clone()
        .workers(before)
        .rate_limit(corpus.rate_limit_for(before, 2.0));
    let mut first = wordcount_command(&first_args);
    first.env("WEIR_FAILPOINT", failpoint);
    let killed = run_to_end(first, ws.log_paths("first"), Duration::from_secs(120));
    assert_eq!(
        killed.status.signal(),
        Some(libc::SIGKILL),
        "the failpoint {failpoint} should have killed the first run, which ended with {}\n{}",
        killed.status,
        tail(&killed.stderr, 30)
    );
    let second_args = base
        .workers(after)
        .restore("latest")
        .rate_limit(corpus.rate_limit_for(after, 1.0));
    let restored = run_standalone(&ws, "restored", &second_args);
    restored.assert_success();
    check_exactly_once(&corpus.oracle, &read_committed(&ws.output));
}

#[test]
fn a_checkpoint_of_two_workers_restores_exactly_once_at_three_workers() {
    kill_then_restore_at("rescale-2-to-3", 0x5_0001, 2, 3, "after-manifest@4");
}

#[test]
fn a_checkpoint_of_three_workers_restores_exactly_once_at_one_worker() {
    kill_then_restore_at("rescale-3-to-1", 0x5_0002, 3, 1, "before-manifest@4");
}

#[test]
fn key_groups_are_fixed_at_the_first_start_and_bound_the_worker_count() {
    let ws = Workspace::new("key-groups");
    let corpus = input::generate(&ws.input, scenario::seed(0x5_0003), &InputSpec::small());
    let base = JobArgs::new(&ws).interval_ms(50).set("--key-groups", 4);
    let mut first = wordcount_command(
        &base
            .clone()
            .workers(2)
            .rate_limit(corpus.rate_limit_for(2, 2.0)),
    );
    first.env("WEIR_FAILPOINT", "after-manifest@3");
    let killed = run_to_end(first, ws.log_paths("first"), Duration::from_secs(120));
    assert_eq!(
        killed.status.signal(),
        Some(libc::SIGKILL),
        "{}",
        tail(&killed.stderr, 20)
    );

    let changed = run_standalone(
        &ws,
        "changed",
        &JobArgs::new(&ws)
            .interval_ms(50)
            .set("--key-groups", 8)
            .restore("latest"),
    );
    changed.assert_clean_failure(&["written with 4 key groups", "--key-groups 4"]);
    let too_many = run_standalone(&ws, "too-many", &base.clone().workers(5).restore("latest"));
    too_many.assert_clean_failure(&["4 key groups", "5 workers"]);
    let within = run_standalone(&ws, "within", &base.workers(4).restore("latest"));
    within.assert_success();
    check_exactly_once(&corpus.oracle, &read_committed(&ws.output));
}
