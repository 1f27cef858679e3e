//! A slow checkpoint store: the barrier waits for uploads instead of piling up
//! checkpoints.

use crate::harness::checkpoints::{complete_checkpoints, epoch_of_object};
use crate::harness::checks::check_exactly_once;
use crate::harness::input::{self, InputSpec};
use crate::harness::job::{wordcount_command, JobArgs, STANDALONE_DEADLINE};
use crate::harness::output::read_committed;
use crate::harness::process::run_to_end;
use crate::harness::scenario::{self, Scenario};
use crate::harness::workspace::Workspace;

/// Every upload takes this much longer than the store needs.
const SLOW_MS: u64 = 300;

#[test]
fn with_one_checkpoint_in_flight_the_next_barrier_waits_for_the_slow_uploads() {
    let ws = Workspace::new("slow-store");
    let corpus = input::generate(&ws.input, scenario::seed(0x7_0001), &InputSpec::small());
    let args = JobArgs::new(&ws)
        .workers(2)
        .interval_ms(20)
        .retain(100_000)
        .set("--max-concurrent-checkpoints", 1)
        .set("--metrics-file", ws.root.join("metrics.txt").display())
        .rate_limit(corpus.rate_limit_for(2, 3.0));
    let mut cmd = wordcount_command(&args);
    cmd.env("WEIR_FAILPOINT", format!("upload=delay:{SLOW_MS}"));
    let run = run_to_end(cmd, ws.log_paths("slow"), STANDALONE_DEADLINE);
    run.assert_success();
    check_exactly_once(&corpus.oracle, &read_committed(&ws.output));
    // A checkpoint that uploaded parts of its own holds the next barrier until they are
    // durable, which takes at least SLOW_MS: barriers 20 ms apart would otherwise have
    // piled up a checkpoint per 20 ms behind the slow uploads.
    let chks = complete_checkpoints(&ws.checkpoints, "wordcount");
    let barrier = |c: &crate::harness::checkpoints::Checkpoint| {
        c.manifest_json()["barrier_ms"]
            .as_u64()
            .unwrap_or_else(|| panic!("manifest of {} has no barrier time", c.epoch))
    };
    // The last checkpoint's barrier is the end of the input, which waits for nothing.
    let by_clock = &chks[..chks.len().saturating_sub(1)];
    let mut held = 0;
    for pair in by_clock.windows(2) {
        let uploaded = pair[0]
            .manifest_parts()
            .iter()
            .any(|p| epoch_of_object(p) == Some(pair[0].epoch));
        if !uploaded {
            continue;
        }
        let gap = barrier(&pair[1]).saturating_sub(barrier(&pair[0]));
        assert!(
            gap >= SLOW_MS * 9 / 10,
            "checkpoint {} came {gap} ms after checkpoint {}, whose {SLOW_MS} ms uploads it should have waited for",
            pair[1].epoch,
            pair[0].epoch
        );
        held += 1;
    }
    // The metrics count the time the barrier waited: about SLOW_MS per checkpoint.
    let path = ws.root.join("metrics.txt");
    let metrics = crate::metrics::parse(
        &std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display())),
        "wordcount",
    );
    let waited = metrics.sum("weir_checkpoint_barrier_held_seconds_total");
    let least = (held as f64) * (SLOW_MS as f64) / 2000.0;
    assert!(
        waited >= least,
        "the barrier waited {waited} s by the metrics, less than {least} s over {held} held checkpoints"
    );
    assert!(
        held >= 3,
        "only {held} checkpoints with uploads of their own were followed by another: {:?}",
        chks.iter().map(|c| c.epoch).collect::<Vec<_>>()
    );
}

#[test]
fn exactly_once_holds_when_a_process_dies_while_its_barrier_waits_for_slow_uploads() {
    // Every upload of generation 0 takes 200 ms longer, several epochs, so the barrier
    // is held (at most 2 checkpoints uploading); the 6th upload kills the process
    // mid-way, and a random kill follows in the restarted generation.
    let run = scenario::run(
        &Scenario::new("slow-store-kill-2x1", 0x7_0002, 2, 1)
            .failpoint("upload=delay:200,upload@6")
            .kills(1),
    );
    check_exactly_once(&run.corpus.oracle, &run.records);
}
