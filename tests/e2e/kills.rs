//! Random SIGKILLs under `weir launch`, for each topology and delivery guarantee.

use std::time::Duration;

use crate::harness::checkpoints::complete_checkpoints;
use crate::harness::checks::{check_at_least_once, check_at_most_once, check_exactly_once};
use crate::harness::input::{self, InputSpec};
use crate::harness::job::{Delivery, JobArgs};
use crate::harness::launch::{launch, ChaosPlan, LaunchSpec};
use crate::harness::scenario::{self, Scenario};
use crate::harness::workspace::Workspace;

#[test]
fn exactly_once_survives_random_kills_with_one_process_of_one_worker() {
    let run = scenario::run(&Scenario::new("eo-1x1", 0x1_0001, 1, 1).kills(4));
    check_exactly_once(&run.corpus.oracle, &run.records);
}

#[test]
fn exactly_once_survives_random_kills_with_one_process_of_two_workers() {
    let run = scenario::run(&Scenario::new("eo-1x2", 0x1_0002, 1, 2).kills(4));
    check_exactly_once(&run.corpus.oracle, &run.records);
}

#[test]
fn exactly_once_survives_random_kills_with_two_processes_of_two_workers() {
    let run = scenario::run(&Scenario::new("eo-2x2", 0x1_0003, 2, 2).kills(4));
    check_exactly_once(&run.corpus.oracle, &run.records);
}

#[test]
fn at_least_once_loses_nothing_under_random_kills() {
    let run = scenario::run(
        &Scenario::new("alo-1x2", 0x1_0004, 1, 2)
            .delivery(Delivery::AtLeastOnce)
            .kills(3),
    );
    check_at_least_once(&run.corpus.oracle, &run.records);
}

#[test]
fn at_most_once_counts_nothing_twice_under_random_kills() {
    let run = scenario::run(
        &Scenario::new("amo-2x2", 0x1_0005, 2, 2)
            .delivery(Delivery::AtMostOnce)
            .kills(3),
    );
    check_at_most_once(&run.corpus.oracle, &run.records);
}

#[test]
fn a_launched_run_without_kills_commits_exactly_the_oracle() {
    let run = scenario::run(&Scenario::new("eo-2x2-nokill", 0x1_0006, 2, 2));
    assert_eq!(
        run.outcome.last_generation(),
        Some(0),
        "no restart expected\n{}",
        run.outcome.summary()
    );
    check_exactly_once(&run.corpus.oracle, &run.records);
    assert!(
        !complete_checkpoints(&run.ws.checkpoints, "wordcount").is_empty(),
        "a finished job should leave a complete checkpoint under {}/wordcount/chk-<epoch>/_MANIFEST",
        run.ws.checkpoints.display()
    );
}

#[test]
fn launch_gives_up_with_an_error_about_restarts_when_max_restarts_is_zero_and_a_process_dies() {
    let seed = scenario::seed(0x1_0007);
    let ws = Workspace::new("give-up");
    let corpus = input::generate(&ws.input, seed, &InputSpec::chaos());
    let job = JobArgs::new(&ws)
        .interval_ms(scenario::INTERVAL_MS)
        .delivery(Delivery::ExactlyOnce)
        .rate_limit(corpus.rate_limit_for(4, 10.0));
    let spec = LaunchSpec {
        processes: 2,
        workers: 2,
        max_restarts: 0,
        restart_delay_ms: 100,
        failpoint: None,
        job,
        binary: None,
    };
    let plan = ChaosPlan {
        kills: 1,
        first_generation: 0,
        min_delay: Duration::from_millis(300),
        max_delay: Duration::from_millis(800),
        seed,
    };
    let outcome = launch(&ws, &spec, Some(plan));
    assert_eq!(
        outcome.kills.len(),
        1,
        "the kill was not delivered\n{}",
        outcome.summary()
    );
    let code = outcome.status.code();
    assert!(
        code.is_some() && code != Some(0),
        "weir launch should exit non-zero after using up --max-restarts 0\n{}",
        outcome.summary()
    );
    assert!(
        outcome.stderr.contains("restarts"),
        "weir launch should say that it ran out of restarts\n{}",
        outcome.summary()
    );
    assert_eq!(
        outcome.last_generation(),
        Some(0),
        "no new generation may start with --max-restarts 0\n{}",
        outcome.summary()
    );
}
