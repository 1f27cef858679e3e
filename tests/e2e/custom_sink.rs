//! A sink written outside weir's crates (`examples/custom_sink.rs`, word counts into
//! Redis) under real SIGKILLs, against the Redis server `scripts/services.sh up` starts on
//! 127.0.0.1:16379: every count committed exactly once, and nothing left staged.

use std::collections::BTreeMap;
use std::process::Command;
use std::time::Duration;

use crate::harness::bins;
use crate::harness::input::{self, InputSpec};
use crate::harness::job::JobArgs;
use crate::harness::keyed::{check_keyed_exactly_once, Update};
use crate::harness::launch::{launch, ChaosPlan, LaunchSpec};
use crate::harness::scenario::{self, INTERVAL_MS, RESTART_DELAY_MS, RUN_SECS};
use crate::harness::workspace::{path_str, Workspace};

/// The test server: tests fail, never skip, without it.
fn url() -> String {
    std::env::var("WEIR_TEST_REDIS_URL").unwrap_or_else(|_| {
        panic!(
            "WEIR_TEST_REDIS_URL is not set: start the test servers with `scripts/services.sh up` and `eval \"$(scripts/services.sh env)\"` (scripts/test.sh does both)"
        )
    })
}

/// Runs `redis-cli` against the test server and returns its output lines.
fn redis_cli(args: &[&str]) -> Vec<String> {
    let url = url();
    let out = Command::new("redis-cli")
        .args(["-u", &url, "--raw"])
        .args(args)
        .output()
        .expect("run redis-cli (installed with the server by scripts/services.sh)");
    assert!(
        out.status.success(),
        "redis-cli {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .expect("UTF-8 from redis-cli")
        .lines()
        .map(str::to_string)
        .collect()
}

/// Counts the corpus into Redis under `kills` random SIGKILLs (after a failpoint in
/// generation 0, if given), then checks the committed counts and updates.
fn counts_under_kills(
    name: &str,
    processes: usize,
    workers: usize,
    failpoint: Option<&str>,
    kills: usize,
    own_seed: u64,
) {
    let seed = scenario::seed(own_seed);
    let ws = Workspace::new(name);
    let corpus = input::generate(&ws.input, seed, &InputSpec::chaos());
    let prefix = format!("weir-e2e:{name}:{seed:x}:{}", std::process::id());
    let job = JobArgs::checkpoints_only(&ws)
        .set("--input", path_str(&ws.input))
        .set("--redis", url())
        .set("--prefix", &prefix)
        .interval_ms(INTERVAL_MS)
        .rate_limit(corpus.rate_limit_for(processes * workers, RUN_SECS));
    let restarts = usize::from(failpoint.is_some());
    let spec = LaunchSpec {
        processes,
        workers,
        max_restarts: (kills + restarts + 3) as u32,
        restart_delay_ms: RESTART_DELAY_MS,
        failpoint: failpoint.map(str::to_string),
        job,
        binary: Some(bins::custom_sink()),
    };
    let chaos = (kills > 0).then(|| ChaosPlan {
        kills,
        first_generation: restarts as u64,
        min_delay: Duration::from_millis(300),
        max_delay: Duration::from_millis(1_100),
        seed: seed ^ 0xC4A0_5EED,
    });
    let outcome = launch(&ws, &spec, chaos);
    outcome.assert_success();
    assert_eq!(
        outcome.kills.len(),
        kills,
        "not every kill was delivered\n{}",
        outcome.summary()
    );
    if let Some(fp) = failpoint {
        assert!(
            outcome.generations.contains_key(&1),
            "failpoint {fp} did not fire\n{}",
            outcome.summary()
        );
    }

    let updates: Vec<Update<String, u64>> =
        redis_cli(&["LRANGE", &format!("{prefix}:updates"), "0", "-1"])
            .iter()
            .enumerate()
            .map(|(i, line)| {
                let mut f = line.split('\t');
                let (word, count, epoch) =
                    (f.next().unwrap(), f.next().unwrap(), f.next().unwrap());
                Update {
                    key: word.to_string(),
                    value: count.parse().expect("a count"),
                    epoch: epoch.parse().expect("an epoch"),
                    origin: format!("{prefix}:updates[{i}]"),
                }
            })
            .collect();
    check_keyed_exactly_once("Redis updates", &corpus.oracle, &updates);
    let pairs = redis_cli(&["HGETALL", &format!("{prefix}:counts")]);
    let counts: BTreeMap<String, u64> = pairs
        .chunks(2)
        .map(|p| (p[0].clone(), p[1].parse().expect("a count")))
        .collect();
    assert_eq!(
        counts, corpus.oracle,
        "the counts hash differs from the oracle"
    );
    assert_eq!(
        redis_cli(&["SCARD", &format!("{prefix}:staged")]),
        vec!["0"],
        "output left staged"
    );
}

#[test]
fn a_sink_written_outside_weir_commits_exactly_once_under_random_kills() {
    counts_under_kills("redis-kills", 2, 2, None, 3, 0x7_0001);
}

#[test]
fn a_sink_written_outside_weir_finishes_a_commit_interrupted_by_a_kill() {
    counts_under_kills("redis-mid-commit", 1, 2, Some("mid-commit@3"), 2, 0x7_0002);
}
