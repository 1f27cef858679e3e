//! Restoring from damaged or foreign checkpoints.

use crate::harness::checkpoints::{
    complete_checkpoints, copy_tree, epoch_of_object, flip_middle_byte, object_name,
    truncate_to_half, Checkpoint,
};
use crate::harness::checks::{check_at_least_once, check_exactly_once};
use crate::harness::input::{self, Corpus, InputSpec};
use crate::harness::job::{run_standalone, wordcount_command, JobArgs, STANDALONE_DEADLINE};
use crate::harness::output::read_committed;
use crate::harness::process::{run_to_end, tail};
use crate::harness::scenario;
use crate::harness::workspace::Workspace;

const WORKERS: usize = 2;
const RETAIN: u32 = 3;

fn args(ws: &Workspace) -> JobArgs {
    JobArgs::new(ws)
        .workers(WORKERS)
        .interval_ms(50)
        .retain(RETAIN)
}

/// A job run to completion with several epochs, keeping its newest checkpoints.
fn completed_job(name: &str, seed: u64) -> (Workspace, Corpus, Vec<Checkpoint>) {
    let ws = Workspace::new(name);
    let corpus = input::generate(&ws.input, scenario::seed(seed), &InputSpec::small());
    let run = run_standalone(
        &ws,
        "first-run",
        &args(&ws).rate_limit(corpus.rate_limit_for(WORKERS, 1.5)),
    );
    run.assert_success();
    check_exactly_once(&corpus.oracle, &read_committed(&ws.output));
    let chks = complete_checkpoints(&ws.checkpoints, "wordcount");
    assert!(
        chks.len() >= 2,
        "a run of several epochs with --retain {RETAIN} should leave at least 2 complete checkpoints, found {:?}",
        chks.iter().map(|c| c.epoch).collect::<Vec<_>>()
    );
    (ws, corpus, chks)
}

/// Damages the largest part that the checkpoint wrote itself (not one it shares with
/// an older checkpoint) and returns its object name.
fn corrupt_own_part(ws: &Workspace, chk: &Checkpoint) -> String {
    let object = chk
        .manifest_parts()
        .into_iter()
        .filter(|name| epoch_of_object(name) == Some(chk.epoch))
        .max_by_key(|name| {
            std::fs::metadata(ws.checkpoints.join(name))
                .map(|m| m.len())
                .unwrap_or(0)
        })
        .unwrap_or_else(|| panic!("checkpoint {} lists no part of its own", chk.dir.display()));
    flip_middle_byte(&ws.checkpoints.join(&object));
    object
}

fn assert_mentions(stderr: &str, what: &str, object: &str) {
    assert!(
        stderr.contains(object),
        "stderr should name the {what} `{object}`\n--- stderr (tail) ---\n{}",
        tail(stderr, 40)
    );
}

#[test]
fn restore_latest_skips_a_checkpoint_with_a_corrupted_part_and_names_the_object() {
    let (ws, corpus, chks) = completed_job("corrupt-part-latest", 0x5_0001);
    let object = corrupt_own_part(&ws, chks.last().expect("a checkpoint"));
    // At info level, to see which checkpoint the state was restored from.
    let mut cmd = wordcount_command(&args(&ws).restore("latest"));
    cmd.env("RUST_LOG", "info");
    let run = run_to_end(cmd, ws.log_paths("restore"), STANDALONE_DEADLINE);
    run.assert_success();
    assert_mentions(&run.stderr, "corrupted object", &object);
    let older = chks[chks.len() - 2].epoch;
    let restored = run
        .stderr
        .lines()
        .find(|l| l.contains("state restored"))
        .unwrap_or_else(|| {
            panic!(
                "a restore logs when the state is restored\n--- stderr (tail) ---\n{}",
                tail(&run.stderr, 40)
            )
        });
    // The log may be coloured: `epoch`, `=` and the value each in their own escapes.
    let mut plain = String::new();
    let mut escape = false;
    for c in restored.chars() {
        match (escape, c) {
            (false, '\u{1b}') => escape = true,
            (true, 'm') => escape = false,
            (false, c) => plain.push(c),
            (true, _) => {}
        }
    }
    assert!(
        plain.contains(&format!("epoch={older} ")),
        "the state should come from checkpoint {older}, the newest that verifies: {plain}"
    );
    check_at_least_once(&corpus.oracle, &read_committed(&ws.output));
}

#[test]
fn restoring_the_epoch_of_a_corrupted_part_fails_and_names_the_object() {
    let (ws, _corpus, chks) = completed_job("corrupt-part-epoch", 0x5_0002);
    let newest = chks.last().expect("a checkpoint");
    let object = corrupt_own_part(&ws, newest);
    let run = run_standalone(&ws, "restore", &args(&ws).restore(newest.epoch));
    run.assert_clean_failure(&[&object]);
}

#[test]
fn restore_latest_skips_a_checkpoint_with_a_truncated_manifest_and_names_it() {
    let (ws, corpus, chks) = completed_job("truncated-manifest-latest", 0x5_0003);
    let manifest = chks.last().expect("a checkpoint").manifest();
    truncate_to_half(&manifest);
    let object = object_name(&ws.checkpoints, &manifest);
    let run = run_standalone(&ws, "restore", &args(&ws).restore("latest"));
    run.assert_success();
    assert_mentions(&run.stderr, "truncated manifest", &object);
    check_at_least_once(&corpus.oracle, &read_committed(&ws.output));
}

#[test]
fn restoring_the_epoch_of_a_truncated_manifest_fails_and_names_it() {
    let (ws, _corpus, chks) = completed_job("truncated-manifest-epoch", 0x5_0004);
    let newest = chks.last().expect("a checkpoint");
    truncate_to_half(&newest.manifest());
    let object = object_name(&ws.checkpoints, &newest.manifest());
    let run = run_standalone(&ws, "restore", &args(&ws).restore(newest.epoch));
    run.assert_clean_failure(&[&object]);
}

#[test]
fn restoring_another_jobs_checkpoints_under_a_different_job_name_reports_the_mismatch() {
    let (ws, _corpus, _chks) = completed_job("job-mismatch", 0x5_0005);
    copy_tree(
        &ws.checkpoints.join("wordcount"),
        &ws.checkpoints.join("other"),
    );
    let run = run_standalone(&ws, "restore", &args(&ws).job("other").restore("latest"));
    run.assert_clean_failure(&["wordcount", "other"]);
    let lower = run.stderr.to_lowercase();
    assert!(
        lower.contains("match") || lower.contains("belong"),
        "stderr should say that the checkpoint belongs to another job\n--- stderr (tail) ---\n{}",
        tail(&run.stderr, 40)
    );
}
