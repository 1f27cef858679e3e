//! Restore at another parallelism: a checkpoint written by one number of workers is
//! restored by another, and the committed output is still exactly the oracle.

use std::os::unix::process::ExitStatusExt;
use std::time::Duration;

use crate::harness::checkpoints::{complete_checkpoints, epoch_of_object};
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
    // Every checkpoint is kept, so that the first one after the restore can be read.
    let base = JobArgs::new(&ws).interval_ms(50).retain(10_000);
    let first_args = base
        .clone()
        .workers(before)
        .rate_limit(corpus.rate_limit_for(before, 2.0));
    let mut first = wordcount_command(&first_args);
    first.env("WEIR_FAILPOINT", failpoint);
    run_to_end(first, ws.log_paths("first"), Duration::from_secs(120))
        .assert_killed(&format!("the failpoint {failpoint} at {before} workers"));
    let restored = complete_checkpoints(&ws.checkpoints, "wordcount")
        .pop()
        .expect("the first run completed a checkpoint");
    let restored_epoch = restored.epoch;
    let deltas = restored.manifest_json()["parts"]
        .as_array()
        .expect("parts")
        .iter()
        .filter(|p| p["packed"].as_array().is_some_and(|b| b.is_empty()))
        .count();
    assert!(
        deltas > 0,
        "checkpoint {restored_epoch} holds no object of deltas only, so this restores no chain of deltas: {}",
        restored.manifest_json()
    );
    let second_args = base
        .workers(after)
        .restore("latest")
        .rate_limit(corpus.rate_limit_for(after, 1.0));
    let restored = run_standalone(&ws, "restored", &second_args);
    restored.assert_success();
    check_exactly_once(&corpus.oracle, &read_committed(&ws.output));
    assert_key_groups_moved_with_their_chains(&ws, restored_epoch);
}

/// The first checkpoint after the restore of checkpoint `restored` lists objects of the
/// restored checkpoint's keyed state (the workers took over the chains), and the objects
/// it wrote hold deltas, not a new base of every key group of their writer.
fn assert_key_groups_moved_with_their_chains(ws: &Workspace, restored: u64) {
    let first = complete_checkpoints(&ws.checkpoints, "wordcount")
        .into_iter()
        .find(|c| c.epoch > restored)
        .expect("the restored run completed a checkpoint");
    let manifest = first.manifest_json();
    let keyed: Vec<&serde_json::Value> = manifest["parts"]
        .as_array()
        .expect("parts")
        .iter()
        .filter(|p| !p["packed"].is_null())
        .collect();
    let epoch = |p: &serde_json::Value| epoch_of_object(p["path"].as_str().expect("path"));
    let paths: Vec<&str> = keyed.iter().map(|p| p["path"].as_str().unwrap()).collect();
    assert!(
        keyed.iter().any(|p| epoch(p).is_some_and(|e| e <= restored)),
        "checkpoint {} lists no keyed object of checkpoint {restored} or older: the key groups were written anew instead of keeping their bases and deltas; its keyed parts: {paths:?}",
        first.epoch
    );
    let mut unique = paths.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(
        unique.len(),
        paths.len(),
        "an object is listed twice: {paths:?}"
    );
    for p in keyed.iter().filter(|p| epoch(p) == Some(first.epoch)) {
        let width = p["key_group_end"].as_u64().unwrap() - p["key_group_start"].as_u64().unwrap();
        let based: u64 = p["packed"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r[1].as_u64().unwrap() - r[0].as_u64().unwrap())
            .sum();
        assert!(
            based < width,
            "{} holds bases of all its {width} key groups, though the restored chains held them: {p}",
            p["path"]
        );
    }
}

#[test]
fn a_checkpoint_of_two_workers_restores_exactly_once_at_three_workers() {
    kill_then_restore_at("rescale-2-to-3", 0x5_0001, 2, 3, "after-manifest@4");
}

#[test]
fn a_chain_of_deltas_of_one_worker_restores_exactly_once_at_three_workers() {
    kill_then_restore_at("rescale-1-to-3", 0x5_0014, 1, 3, "after-manifest@5");
}

#[test]
fn a_checkpoint_of_three_workers_restores_exactly_once_at_one_worker() {
    kill_then_restore_at("rescale-3-to-1", 0x5_0002, 3, 1, "before-manifest@4");
}

/// Key groups move twice with their chains: two workers, killed after a manifest, are
/// restored at three, which are killed after a manifest of their own and restored at
/// one. The last restore reads chains that the three workers took over from the two and
/// extended, with objects that two of them listed.
#[test]
fn chains_taken_over_at_three_workers_are_taken_over_again_at_one() {
    let ws = Workspace::new("rescale-2-to-3-to-1");
    let corpus = input::generate(&ws.input, scenario::seed(0x5_0015), &InputSpec::small());
    let base = JobArgs::new(&ws).interval_ms(50).retain(10_000);
    let kill = |workers: usize, generation: u64, name: &str| {
        let restore = generation > 0;
        let mut args = base
            .clone()
            .workers(workers)
            .rate_limit(corpus.rate_limit_for(workers, 3.0));
        if restore {
            args = args.restore("latest");
        }
        let before = complete_checkpoints(&ws.checkpoints, "wordcount")
            .last()
            .map(|c| c.epoch);
        let mut run = wordcount_command(&args);
        run.env("WEIR_FAILPOINT", format!("after-manifest@4:g{generation}"));
        run_to_end(run, ws.log_paths(name), Duration::from_secs(120))
            .assert_killed(&format!("after-manifest@4 at {workers} workers"));
        before
    };
    kill(2, 0, "two");
    let restored_by_three =
        kill(3, 1, "three").expect("the run at two workers completed a checkpoint");
    assert_key_groups_moved_with_their_chains(&ws, restored_by_three);
    let restored_by_one = complete_checkpoints(&ws.checkpoints, "wordcount")
        .last()
        .expect("the run at three workers completed a checkpoint")
        .epoch;
    let last = run_standalone(
        &ws,
        "one",
        &base
            .workers(1)
            .restore("latest")
            .rate_limit(corpus.rate_limit_for(1, 1.0)),
    );
    last.assert_success();
    check_exactly_once(&corpus.oracle, &read_committed(&ws.output));
    assert_key_groups_moved_with_their_chains(&ws, restored_by_one);
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
