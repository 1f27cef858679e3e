//! Kills at the protocol's critical moments (`WEIR_FAILPOINT`, generation 0), followed
//! by one random kill in a later generation.

use crate::harness::checks::check_exactly_once;
use crate::harness::scenario::{self, Scenario};

#[test]
fn exactly_once_holds_when_a_process_dies_while_uploading_a_snapshot() {
    let run = scenario::run(
        &Scenario::new("fp-upload-1x1", 0x2_0001, 1, 1)
            .failpoint("upload@3")
            .kills(1),
    );
    check_exactly_once(&run.corpus.oracle, &run.records);
}

#[test]
fn exactly_once_holds_when_a_process_dies_before_the_manifest_is_written() {
    let run = scenario::run(
        &Scenario::new("fp-before-manifest-2x2", 0x2_0002, 2, 2)
            .failpoint("before-manifest@2")
            .kills(1),
    );
    check_exactly_once(&run.corpus.oracle, &run.records);
}

#[test]
fn a_first_checkpoint_whose_link_was_never_written_is_no_checkpoint_and_the_restart_starts_fresh() {
    let run = scenario::run(
        &Scenario::new("fp-before-first-link-2x1", 0x2_0005, 2, 1)
            .failpoint("before-link@1")
            .kills(1),
    );
    check_exactly_once(&run.corpus.oracle, &run.records);
}

#[test]
fn a_single_process_killed_before_its_first_checkpoint_is_restarted_from_the_beginning() {
    let run = scenario::run(
        &Scenario::new("fp-before-first-manifest-1x2", 0x2_0007, 1, 2)
            .failpoint("before-manifest@1")
            .kills(1),
    );
    check_exactly_once(&run.corpus.oracle, &run.records);
}

#[test]
fn exactly_once_holds_when_a_process_dies_between_the_manifest_and_its_link() {
    let run = scenario::run(
        &Scenario::new("fp-before-link-1x2", 0x2_0006, 1, 2)
            .failpoint("before-link@3")
            .kills(1),
    );
    check_exactly_once(&run.corpus.oracle, &run.records);
}

#[test]
fn exactly_once_holds_when_a_process_dies_after_the_manifest_before_the_sink_commits() {
    let run = scenario::run(
        &Scenario::new("fp-after-manifest-1x2", 0x2_0003, 1, 2)
            .failpoint("after-manifest@2")
            .kills(1),
    );
    check_exactly_once(&run.corpus.oracle, &run.records);
}

#[test]
fn exactly_once_holds_when_a_process_dies_in_the_middle_of_a_sink_commit() {
    let run = scenario::run(
        &Scenario::new("fp-mid-commit-2x2", 0x2_0004, 2, 2)
            .failpoint("mid-commit@2")
            .kills(1),
    );
    check_exactly_once(&run.corpus.oracle, &run.records);
}
