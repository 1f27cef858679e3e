//! The wordcount binary run directly, without `weir launch`.

use std::collections::BTreeSet;

use crate::harness::checkpoints::{complete_checkpoints, epoch_of_object};
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
fn retain_keeps_the_newest_checkpoints_and_only_older_ones_they_still_reference() {
    const RETAIN: usize = 2;
    let seed = scenario::seed(0x3_0002);
    let ws = Workspace::new("retain");
    let corpus = input::generate(&ws.input, seed, &InputSpec::small());
    let args = JobArgs::new(&ws)
        .workers(2)
        .interval_ms(50)
        .retain(RETAIN as u32)
        .rate_limit(corpus.rate_limit_for(2, 1.5));
    let run = run_standalone(&ws, "wordcount", &args);
    run.assert_success();
    check_exactly_once(&corpus.oracle, &read_committed(&ws.output));
    let chks = complete_checkpoints(&ws.checkpoints, "wordcount");
    let epochs: Vec<u64> = chks.iter().map(|c| c.epoch).collect();
    assert!(epochs.len() >= RETAIN, "--retain {RETAIN} after many epochs should keep {RETAIN} complete checkpoints, found {epochs:?}");
    let newest = &chks[chks.len() - RETAIN..];
    let referenced: BTreeSet<u64> = newest
        .iter()
        .flat_map(|c| c.manifest_parts())
        .filter_map(|p| epoch_of_object(&p))
        .collect();
    let stale: Vec<u64> = chks[..chks.len() - RETAIN]
        .iter()
        .map(|c| c.epoch)
        .filter(|e| !referenced.contains(e))
        .collect();
    assert!(
        stale.is_empty(),
        "--retain {RETAIN} kept complete checkpoints {stale:?} that no retained manifest references \
         (complete: {epochs:?}, referenced by the newest {RETAIN}: {referenced:?})"
    );
}
