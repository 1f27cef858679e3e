//! A whole chaos run: input, `weir launch` with kills, and the committed output.

use std::time::Duration;

use super::input::{self, Corpus, InputSpec};
use super::job::{Delivery, JobArgs};
use super::launch::{launch, ChaosPlan, LaunchOutcome, LaunchSpec};
use super::output::{read_committed, Record};
use super::workspace::Workspace;

/// Seconds it takes, under the rate limit, to read the whole input once.
pub const RUN_SECS: f64 = 6.0;
/// `--checkpoint-interval-ms` of chaos runs.
pub const INTERVAL_MS: u64 = 100;
/// `--restart-delay-ms` of chaos runs.
pub const RESTART_DELAY_MS: u64 = 100;

/// The seed a test uses: its own, mixed with `WEIR_E2E_SEED` when that is set (to
/// explore other schedules). Printed so that a failure can be replayed.
pub fn seed(own: u64) -> u64 {
    let extra = std::env::var("WEIR_E2E_SEED")
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
        .unwrap_or(0);
    let seed = own ^ extra.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    eprintln!("seed {seed} (own {own}, WEIR_E2E_SEED {extra})");
    seed
}

/// One chaos scenario.
#[derive(Debug, Clone)]
pub struct Scenario {
    /// Names the temporary directory.
    pub name: &'static str,
    /// The test's own seed.
    pub seed: u64,
    /// Processes in the cluster.
    pub processes: usize,
    /// Workers per process.
    pub workers: usize,
    /// The job's delivery guarantee.
    pub delivery: Delivery,
    /// Random SIGKILLs, each in its own generation.
    pub kills: usize,
    /// `WEIR_FAILPOINT`, which fires in generation 0; random kills then start in 1.
    pub failpoint: Option<&'static str>,
    /// A checkpoint URL other than the workspace's local directory (e.g. `s3://...`).
    pub checkpoint_url: Option<String>,
}

impl Scenario {
    /// An exactly-once scenario without kills or failpoints.
    pub fn new(name: &'static str, seed: u64, processes: usize, workers: usize) -> Self {
        Scenario {
            name,
            seed,
            processes,
            workers,
            delivery: Delivery::ExactlyOnce,
            kills: 0,
            failpoint: None,
            checkpoint_url: None,
        }
    }

    /// Checkpoints to `url` instead of the workspace's local directory.
    pub fn checkpoint_url(mut self, url: String) -> Self {
        self.checkpoint_url = Some(url);
        self
    }

    /// With `kills` random SIGKILLs.
    pub fn kills(mut self, kills: usize) -> Self {
        self.kills = kills;
        self
    }

    /// With a delivery guarantee.
    pub fn delivery(mut self, d: Delivery) -> Self {
        self.delivery = d;
        self
    }

    /// With a failpoint.
    pub fn failpoint(mut self, fp: &'static str) -> Self {
        self.failpoint = Some(fp);
        self
    }
}

/// A finished scenario.
pub struct ScenarioRun {
    /// Its directories (kept if the test fails).
    pub ws: Workspace,
    /// The input and its oracle.
    pub corpus: Corpus,
    /// What `weir launch` did.
    pub outcome: LaunchOutcome,
    /// The committed output.
    pub records: Vec<Record>,
}

/// Runs a scenario to its successful end and checks that every kill was delivered to
/// a live process and caused exactly one restart (a failpoint one more).
pub fn run(s: &Scenario) -> ScenarioRun {
    let seed = seed(s.seed);
    let ws = Workspace::new(s.name);
    let corpus = input::generate(&ws.input, seed, &InputSpec::chaos());
    let rate = corpus.rate_limit_for(s.processes * s.workers, RUN_SECS);
    let mut job = JobArgs::new(&ws)
        .interval_ms(INTERVAL_MS)
        .delivery(s.delivery)
        .rate_limit(rate);
    if let Some(url) = &s.checkpoint_url {
        job = job.set("--checkpoint-dir", url);
    }
    let failpoint_restarts = usize::from(s.failpoint.is_some());
    let spec = LaunchSpec {
        processes: s.processes,
        workers: s.workers,
        max_restarts: (s.kills + failpoint_restarts + 3) as u32,
        restart_delay_ms: RESTART_DELAY_MS,
        failpoint: s.failpoint.map(str::to_string),
        job,
        binary: None,
    };
    let chaos = (s.kills > 0).then(|| ChaosPlan {
        kills: s.kills,
        first_generation: failpoint_restarts as u64,
        min_delay: Duration::from_millis(300),
        max_delay: Duration::from_millis(1_100),
        seed: seed ^ 0xC4A0_5EED,
    });
    let outcome = launch(&ws, &spec, chaos);
    outcome.assert_success();
    if let Some(fp) = s.failpoint {
        assert!(
            outcome.generations.contains_key(&1),
            "failpoint {fp} did not fire: weir launch never started generation 1\n{}",
            outcome.summary()
        );
    }
    assert_eq!(
        outcome.kills.len(),
        s.kills,
        "only {} of {} kills were delivered before the job finished: a run should last long enough \
         to be killed (is --rate-limit {rate} honoured?)\n{}",
        outcome.kills.len(),
        s.kills,
        outcome.summary()
    );
    let expected_last = (s.kills + failpoint_restarts) as u64;
    assert_eq!(
        outcome.last_generation(),
        Some(expected_last),
        "expected exactly one restart per kill (generations 0..={expected_last})\n{}",
        outcome.summary()
    );
    let records = read_committed(&ws.output);
    eprintln!(
        "{}: {} lines, {} words, {} distinct; {} committed records",
        s.name,
        corpus.lines,
        corpus.words,
        corpus.oracle.len(),
        records.len()
    );
    eprintln!("{}", outcome.summary());
    ScenarioRun {
        ws,
        corpus,
        outcome,
        records,
    }
}
