//! The NATS JetStream source and exactly-once sink under kills (`examples/nats_pipe.rs`
//! against the server `scripts/services.sh up` starts on 127.0.0.1:14222): every input
//! event must arrive in the output stream exactly once, under unique message ids.

use std::process::Command;
use std::time::Duration;

use serde::Deserialize;

use crate::harness::bins;
use crate::harness::job::JobArgs;
use crate::harness::keyed::check_each_once;
use crate::harness::launch::{launch, ChaosPlan, LaunchSpec};
use crate::harness::process::run_to_end;
use crate::harness::scenario;
use crate::harness::workspace::Workspace;

/// Input events per test.
const EVENTS: u64 = 3_000;
/// Input subjects, one source split each.
const SPLITS: u32 = 4;

/// The test server's URL; the tests fail, never skip, without it.
fn url() -> String {
    std::env::var("WEIR_TEST_NATS_URL").unwrap_or_else(|_| {
        panic!(
            "WEIR_TEST_NATS_URL is not set: start the test servers with `scripts/services.sh up` and `eval \"$(scripts/services.sh env)\"` (scripts/test.sh does both)"
        )
    })
}

/// A stream name no other test or run uses.
fn unique(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_nanos();
    format!("{prefix}_{}_{nanos}", std::process::id())
}

/// Creates the streams and publishes the input events.
fn publish(ws: &Workspace, input: &str, output: &str) {
    let mut cmd = Command::new(bins::nats_pipe());
    cmd.args([
        "publish",
        "--nats",
        &url(),
        "--input",
        input,
        "--output",
        output,
    ])
    .args([
        "--count",
        &EVENTS.to_string(),
        "--splits",
        &SPLITS.to_string(),
    ]);
    run_to_end(cmd, ws.log_paths("publish"), Duration::from_secs(30)).assert_success();
}

#[derive(Deserialize)]
struct Dumped {
    msg_id: Option<String>,
    payload: String,
}

#[derive(Deserialize, Debug, PartialEq, Eq, PartialOrd, Ord, Clone)]
struct Enriched {
    id: u64,
    key: String,
    seq: u64,
}

/// Every message of the output stream: (message id, record).
fn dump_output(ws: &Workspace, stream: &str) -> Vec<(String, Enriched)> {
    let mut cmd = Command::new(bins::nats_pipe());
    cmd.args(["dump", "--nats", &url(), "--stream", stream]);
    let done = run_to_end(cmd, ws.log_paths("dump"), Duration::from_secs(30));
    done.assert_success();
    done.stdout
        .lines()
        .map(|l| {
            let d: Dumped = serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}"));
            let record: Enriched = serde_json::from_str(&d.payload)
                .unwrap_or_else(|e| panic!("not an enriched event ({e}): {l}"));
            (
                d.msg_id.unwrap_or_else(|| panic!("no Nats-Msg-Id: {l}")),
                record,
            )
        })
        .collect()
}

/// Every input event exactly once, with its key, each under its own message id.
fn check_exactly_once(got: &[(String, Enriched)]) {
    check_each_once(
        "the output stream",
        &(0..EVENTS).collect(),
        got.iter().map(|(_, e)| e.id),
    );
    for (_, e) in got {
        assert_eq!(e.key, format!("k{}", e.id % 7), "event {}", e.id);
    }
    check_each_once(
        "the output's message ids",
        &got.iter().map(|(m, _)| m.as_str()).collect(),
        got.iter().map(|(m, _)| m.as_str()),
    );
}

/// Runs the pipe under `weir launch` with a failpoint in generation 0 and `kills`
/// random SIGKILLs in later generations, then checks the output stream.
fn pipe_under_kills(
    name: &str,
    processes: usize,
    workers: usize,
    failpoint: &str,
    kills: usize,
    seed: u64,
) {
    let seed = scenario::seed(seed);
    let ws = Workspace::new(name);
    let input = unique(&format!("{}_IN", name.to_uppercase().replace('-', "_")));
    let output = unique(&format!("{}_OUT", name.to_uppercase().replace('-', "_")));
    publish(&ws, &input, &output);
    // Read in about 4 s even if one worker owns every split.
    let job = JobArgs::new(&ws)
        .set("--input", &input)
        .set("--output", &output)
        .set("--nats", url())
        .set("--splits", SPLITS)
        .interval_ms(scenario::INTERVAL_MS)
        .rate_limit(EVENTS / 4);
    let spec = LaunchSpec {
        processes,
        workers,
        max_restarts: kills as u32 + 3,
        restart_delay_ms: scenario::RESTART_DELAY_MS,
        failpoint: Some(failpoint.to_string()),
        job,
        binary: Some(bins::nats_pipe()),
    };
    let chaos = ChaosPlan {
        kills,
        first_generation: 1,
        min_delay: Duration::from_millis(300),
        max_delay: Duration::from_millis(900),
        seed,
    };
    let outcome = launch(&ws, &spec, Some(chaos));
    outcome.assert_success();
    let point = failpoint.split('@').next().expect("a name");
    assert!(
        outcome
            .stderr
            .contains(&format!("failpoint `{point}` reached")),
        "the failpoint never fired\n{}",
        outcome.summary()
    );
    assert_eq!(outcome.kills.len(), kills, "{}", outcome.summary());
    check_exactly_once(&dump_output(&ws, &output));
}

#[test]
fn nats_pipe_publishes_every_event_once_when_killed_between_manifest_and_commit() {
    pipe_under_kills("nats-after-manifest", 1, 2, "after-manifest@3", 2, 0xA_0001);
}

#[test]
fn nats_pipe_publishes_every_event_once_when_killed_in_the_middle_of_a_commit() {
    pipe_under_kills("nats-mid-commit", 2, 2, "mid-commit@2", 1, 0xA_0002);
}
