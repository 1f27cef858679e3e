//! Savepoints: a named copy of a checkpoint that retention never deletes, restorable at
//! another number of workers.

use std::time::Duration;

use crate::harness::checkpoints::complete_checkpoints;
use crate::harness::checks::check_exactly_once;
use crate::harness::input::{self, InputSpec};
use crate::harness::job::{run_standalone, run_weir, wordcount_command, JobArgs};
use crate::harness::output::read_committed;
use crate::harness::process::{run_to_end, tail};
use crate::harness::scenario;
use crate::harness::workspace::Workspace;

#[test]
fn a_savepoint_restores_exactly_once_at_another_worker_count_after_its_checkpoints_are_gone() {
    let ws = Workspace::new("savepoint");
    let corpus = input::generate(&ws.input, scenario::seed(0x8_0001), &InputSpec::small());
    let args = JobArgs::new(&ws).interval_ms(50).retain(1);
    // Killed with checkpoint 4 complete and its output still staged.
    let mut first = wordcount_command(
        &args
            .clone()
            .workers(2)
            .rate_limit(corpus.rate_limit_for(2, 2.0)),
    );
    first.env("WEIR_FAILPOINT", "after-manifest@4");
    let killed = run_to_end(first, ws.log_paths("first"), Duration::from_secs(120));
    assert!(
        !killed.status.success(),
        "the failpoint should have killed the first run\n{}",
        tail(&killed.stderr, 20)
    );

    let url = ws.checkpoint_url();
    let target = ["--checkpoint-dir", url.as_str(), "--job", "wordcount"];
    let saved = run_weir(
        &ws,
        "savepoint",
        &[&["checkpoints", "savepoint", "--name", "mid"][..], &target].concat(),
    );
    saved.assert_success();
    // The checkpoints themselves disappear (as retention would make them).
    for chk in complete_checkpoints(&ws.checkpoints, "wordcount") {
        std::fs::remove_dir_all(&chk.dir).unwrap();
    }
    assert!(complete_checkpoints(&ws.checkpoints, "wordcount").is_empty());

    let restored = run_standalone(
        &ws,
        "restored",
        &args
            .workers(3)
            .restore("savepoint:mid")
            .rate_limit(corpus.rate_limit_for(3, 1.0)),
    );
    restored.assert_success();
    check_exactly_once(&corpus.oracle, &read_committed(&ws.output));

    let list = run_weir(
        &ws,
        "list",
        &[&["checkpoints", "list"][..], &target].concat(),
    );
    list.assert_success();
    assert!(
        list.stdout.contains("savepoint mid: epoch"),
        "retention must keep the savepoint:\n{}",
        list.stdout
    );
    let missing = run_standalone(&ws, "missing", &JobArgs::new(&ws).restore("savepoint:nope"));
    missing.assert_clean_failure(&["savepoint `nope`", "does not exist"]);
}
