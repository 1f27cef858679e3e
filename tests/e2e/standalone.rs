//! The wordcount binary run directly, without `weir launch`.

use crate::harness::checkpoints::complete_checkpoints;
use crate::harness::checks::check_exactly_once;
use crate::harness::input::{self, InputSpec};
use crate::harness::job::{run_standalone, Delivery, JobArgs};
use crate::harness::output::read_committed;
use crate::harness::scenario;
use crate::harness::workspace::Workspace;

#[test]
fn a_standalone_run_with_two_workers_commits_exactly_the_oracle() {
    let seed = scenario::seed(0x3_0001);
    let ws = Workspace::new("standalone-2w");
    let corpus = input::generate(&ws.input, seed, &InputSpec::chaos());
    // A file:// URL this time; the other tests use a plain path.
    let url = format!("file://{}", ws.checkpoint_url());
    let args = JobArgs::new(&ws)
        .set("--checkpoint-dir", &url)
        .workers(2)
        .interval_ms(100)
        .delivery(Delivery::ExactlyOnce);
    let run = run_standalone(&ws, "wordcount", &args);
    run.assert_success();
    check_exactly_once(&corpus.oracle, &read_committed(&ws.output));
    assert!(
        !complete_checkpoints(&ws.checkpoints, "wordcount").is_empty(),
        "a finished job should leave a complete checkpoint under {}/wordcount/chk-<epoch>/_MANIFEST",
        ws.checkpoints.display()
    );
}

#[test]
fn retain_keeps_at_most_that_many_complete_checkpoints() {
    let seed = scenario::seed(0x3_0002);
    let ws = Workspace::new("retain");
    let corpus = input::generate(&ws.input, seed, &InputSpec::small());
    let args = JobArgs::new(&ws)
        .workers(1)
        .interval_ms(50)
        .retain(2)
        .rate_limit(corpus.rate_limit_for(1, 1.5));
    let run = run_standalone(&ws, "wordcount", &args);
    run.assert_success();
    check_exactly_once(&corpus.oracle, &read_committed(&ws.output));
    let kept: Vec<u64> = complete_checkpoints(&ws.checkpoints, "wordcount")
        .iter()
        .map(|c| c.epoch)
        .collect();
    assert!(
        !kept.is_empty() && kept.len() <= 2,
        "--retain 2 should keep one or two complete checkpoints, found epochs {kept:?}"
    );
}
