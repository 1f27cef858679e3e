//! `weir checkpoints list|show|delete` on the checkpoints of a finished job.

use crate::harness::checkpoints::complete_checkpoints;
use crate::harness::input::{self, InputSpec};
use crate::harness::job::{run_standalone, run_weir, JobArgs};
use crate::harness::scenario;
use crate::harness::workspace::Workspace;

#[test]
fn checkpoints_can_be_listed_shown_and_deleted() {
    let ws = Workspace::new("cli");
    let corpus = input::generate(&ws.input, scenario::seed(0x6_0001), &InputSpec::small());
    let args = JobArgs::new(&ws)
        .workers(2)
        .interval_ms(50)
        .rate_limit(corpus.rate_limit_for(2, 1.0));
    run_standalone(&ws, "wordcount", &args).assert_success();
    let url = ws.checkpoint_url();
    let target = ["--checkpoint-dir", url.as_str(), "--job", "wordcount"];
    let newest = complete_checkpoints(&ws.checkpoints, "wordcount")
        .last()
        .expect("a complete checkpoint")
        .epoch;

    let list = run_weir(
        &ws,
        "list",
        &[&["checkpoints", "list"][..], &target].concat(),
    );
    list.assert_success();
    let listed = list
        .stdout
        .lines()
        .find(|l| l.split_whitespace().next() == Some(&newest.to_string()));
    let listed = listed.unwrap_or_else(|| {
        panic!(
            "`weir checkpoints list` should list checkpoint {newest}:\n{}",
            list.stdout
        )
    });
    assert!(listed.contains("complete"), "{listed}");

    let epoch = newest.to_string();
    let show = run_weir(
        &ws,
        "show",
        &[&["checkpoints", "show"][..], &target, &[epoch.as_str()]].concat(),
    );
    show.assert_success();
    let manifest: serde_json::Value =
        serde_json::from_str(&show.stdout).expect("show prints the manifest as JSON");
    assert_eq!(manifest["epoch"], serde_json::json!(newest));
    assert_eq!(manifest["job"], serde_json::json!("wordcount"));
    assert_eq!(manifest["workers"], serde_json::json!(2));

    let delete = run_weir(
        &ws,
        "delete",
        &[&["checkpoints", "delete"][..], &target, &[epoch.as_str()]].concat(),
    );
    delete.assert_success();
    assert!(
        complete_checkpoints(&ws.checkpoints, "wordcount")
            .iter()
            .all(|c| c.epoch != newest),
        "checkpoint {newest} should be gone after `weir checkpoints delete`"
    );

    let all = run_weir(
        &ws,
        "delete-all",
        &[&["checkpoints", "delete", "--all"][..], &target].concat(),
    );
    all.assert_success();
    assert!(
        complete_checkpoints(&ws.checkpoints, "wordcount").is_empty(),
        "--all should delete every checkpoint"
    );
    let missing = run_weir(
        &ws,
        "show-missing",
        &[&["checkpoints", "show"][..], &target, &[epoch.as_str()]].concat(),
    );
    missing.assert_clean_failure(&[&epoch, "does not exist"]);
}
