//! Bad input and unusable storage: a non-zero exit and a message that names the culprit.

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::Path;

use crate::harness::input::{self, Corpus, InputSpec};
use crate::harness::job::{run_standalone, wordcount_command, JobArgs, STANDALONE_DEADLINE};
use crate::harness::output::read_committed;
use crate::harness::process::run_to_end;
use crate::harness::scenario;
use crate::harness::workspace::{path_str, Workspace};

/// The uid and gid of `nobody`, used when the tests run as root (root reads any file).
const NOBODY: u32 = 65534;

fn small_workspace(name: &str, seed: u64) -> (Workspace, Corpus) {
    let ws = Workspace::new(name);
    let corpus = input::generate(&ws.input, scenario::seed(seed), &InputSpec::small());
    (ws, corpus)
}

fn chmod(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .unwrap_or_else(|e| panic!("chmod {mode:o} {}: {e}", path.display()));
}

fn assert_nothing_committed(ws: &Workspace) {
    let records = read_committed(&ws.output);
    assert!(
        records.is_empty(),
        "a job that cannot start must commit nothing, found {} records",
        records.len()
    );
}

#[test]
fn a_missing_input_directory_is_an_error_that_names_it() {
    let ws = Workspace::new("missing-input");
    let missing = path_str(&ws.root.join("no-such-input-dir"));
    let run = run_standalone(
        &ws,
        "wordcount",
        &JobArgs::new(&ws).set("--input", &missing).workers(1),
    );
    run.assert_clean_failure(&[&missing]);
    assert_nothing_committed(&ws);
}

#[test]
fn an_unreadable_input_file_is_an_error_that_names_it() {
    let (ws, corpus) = small_workspace("unreadable-input", 0x4_0001);
    let bad = corpus.files[1].clone();
    chmod(&bad, 0o000);
    let args = JobArgs::new(&ws).workers(1).interval_ms(100);
    let mut cmd = wordcount_command(&args);
    // SAFETY: geteuid(2) has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        // Root ignores file modes: run the job as nobody, who can use every other
        // directory of the workspace but not the file.
        for dir in [&ws.root, &ws.input] {
            chmod(dir, 0o755);
        }
        for dir in [&ws.output, &ws.checkpoints] {
            chmod(dir, 0o777);
        }
        cmd.uid(NOBODY).gid(NOBODY);
    }
    let run = run_to_end(cmd, ws.log_paths("wordcount"), STANDALONE_DEADLINE);
    run.assert_clean_failure(&[&path_str(&bad)]);
}

#[test]
fn a_checkpoint_dir_below_a_regular_file_is_an_error_that_names_it() {
    let (ws, _) = small_workspace("chk-under-file", 0x4_0002);
    let file = ws.root.join("plain-file");
    std::fs::write(&file, b"not a directory").expect("write a plain file");
    let url = format!("{}/checkpoints", path_str(&file));
    let run = run_standalone(
        &ws,
        "wordcount",
        &JobArgs::new(&ws).set("--checkpoint-dir", &url).workers(1),
    );
    run.assert_clean_failure(&[&url]);
    assert_nothing_committed(&ws);
}

#[test]
fn a_checkpoint_dir_that_cannot_be_created_is_an_error_that_names_it() {
    let (ws, _) = small_workspace("chk-in-proc", 0x4_0003);
    let url = "/proc/weir-nope";
    let run = run_standalone(
        &ws,
        "wordcount",
        &JobArgs::new(&ws).set("--checkpoint-dir", url).workers(1),
    );
    run.assert_clean_failure(&[url]);
    assert_nothing_committed(&ws);
}

#[test]
fn an_unknown_checkpoint_url_scheme_is_an_error_that_names_the_url() {
    let (ws, _) = small_workspace("chk-ftp", 0x4_0004);
    let url = "ftp://x";
    let run = run_standalone(
        &ws,
        "wordcount",
        &JobArgs::new(&ws).set("--checkpoint-dir", url).workers(1),
    );
    run.assert_clean_failure(&[url]);
    assert_nothing_committed(&ws);
}

#[test]
fn restore_latest_without_any_checkpoint_says_there_is_none() {
    let (ws, _) = small_workspace("restore-nothing", 0x4_0005);
    let run = run_standalone(
        &ws,
        "wordcount",
        &JobArgs::new(&ws).workers(1).restore("latest"),
    );
    run.assert_clean_failure(&[]);
    let lower = run.stderr.to_lowercase();
    assert!(
        ["no checkpoint", "no complete checkpoint", "no checkpoints"]
            .iter()
            .any(|s| lower.contains(s)),
        "stderr should say that there is no checkpoint to restore\n--- stderr ---\n{}",
        run.stderr
    );
    assert_nothing_committed(&ws);
}
