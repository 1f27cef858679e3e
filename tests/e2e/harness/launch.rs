//! Running a job under `weir launch`, with a chaos thread that SIGKILLs processes.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::bins;
use super::job::JobArgs;
use super::process::{describe, is_alive, read_lossy, sigkill, spawn_logged, tail, POLL};
use super::workspace::Workspace;

/// How long a launched job may take before everything is killed and the test fails.
pub const LAUNCH_DEADLINE: Duration = Duration::from_secs(180);

/// How long the processes of a launch get to disappear once `weir launch` has exited
/// (it stops them before it exits, so they should be gone at once).
const REAP_DEADLINE: Duration = Duration::from_secs(2);

/// generation -> process index -> pid, as printed by `weir launch`.
pub type Generations = BTreeMap<u64, BTreeMap<usize, u32>>;

/// How to run `weir launch`.
#[derive(Debug, Clone)]
pub struct LaunchSpec {
    /// `--processes`
    pub processes: usize,
    /// `--workers` (per process)
    pub workers: usize,
    /// `--max-restarts`
    pub max_restarts: u32,
    /// `--restart-delay-ms`
    pub restart_delay_ms: u64,
    /// `WEIR_FAILPOINT` for the job processes, if any.
    pub failpoint: Option<String>,
    /// The job's own arguments (no cluster flags, no `--workers`).
    pub job: JobArgs,
    /// The job binary (the wordcount example unless set).
    pub binary: Option<PathBuf>,
}

/// When and how often the chaos thread kills.
#[derive(Debug, Clone)]
pub struct ChaosPlan {
    /// Number of SIGKILLs to deliver, each to a random process of a different
    /// generation.
    pub kills: usize,
    /// The first generation that may be killed (1 lets a failpoint fire in 0 first).
    pub first_generation: u64,
    /// Shortest wait, after all processes of a generation are started, before a kill.
    pub min_delay: Duration,
    /// Longest such wait.
    pub max_delay: Duration,
    /// Seeds the delays and the choice of victims.
    pub seed: u64,
}

/// One delivered SIGKILL.
#[derive(Debug, Clone)]
pub struct Kill {
    /// The victim's generation.
    pub generation: u64,
    /// The victim's process index.
    pub process: usize,
    /// The victim's pid.
    pub pid: u32,
    /// When, from the launch.
    pub at: Duration,
}

/// What a launch did.
#[derive(Debug)]
pub struct LaunchOutcome {
    /// The command line, for messages.
    pub command: String,
    /// The exit status of `weir launch`.
    pub status: ExitStatus,
    /// Its stderr (the job processes' stderr is interleaved here).
    pub stderr: String,
    /// Every process it reported starting.
    pub generations: Generations,
    /// Every SIGKILL the chaos thread delivered.
    pub kills: Vec<Kill>,
    /// Wall-clock time of the launch.
    pub elapsed: Duration,
}

impl LaunchOutcome {
    /// The newest generation started, if any.
    pub fn last_generation(&self) -> Option<u64> {
        self.generations.keys().next_back().copied()
    }

    /// A summary of generations and kills, for messages.
    pub fn summary(&self) -> String {
        let gens: Vec<String> = self
            .generations
            .iter()
            .map(|(g, ps)| format!("gen {g}: {:?}", ps.values().collect::<Vec<_>>()))
            .collect();
        let kills: Vec<String> = self
            .kills
            .iter()
            .map(|k| {
                format!(
                    "gen {} process {} pid {} at {:.2?}",
                    k.generation, k.process, k.pid, k.at
                )
            })
            .collect();
        format!(
            "`{}` ended with {} after {:.1?}\nstarted: [{}]\nkills: [{}]\n--- stderr (tail) ---\n{}",
            self.command,
            self.status,
            self.elapsed,
            gens.join("; "),
            kills.join("; "),
            tail(&self.stderr, 60)
        )
    }

    /// Panics with the summary unless `weir launch` exited 0.
    pub fn assert_success(&self) {
        assert!(
            self.status.success(),
            "the launched job failed\n{}",
            self.summary()
        );
    }
}

/// Parses the `weir launch: run G process I pid PID` lines.
pub fn parse_generations(stderr: &str) -> Generations {
    const MARK: &str = "weir launch: run ";
    let mut gens = Generations::new();
    for line in stderr.lines() {
        let Some(i) = line.find(MARK) else { continue };
        let t: Vec<&str> = line[i + MARK.len()..].split_whitespace().collect();
        if t.len() >= 5 && t[1] == "process" && t[3] == "pid" {
            if let (Ok(g), Ok(p), Ok(pid)) = (t[0].parse(), t[2].parse(), t[4].parse()) {
                gens.entry(g).or_default().insert(p, pid);
            }
        }
    }
    gens
}

fn all_pids(gens: &Generations) -> Vec<u32> {
    gens.values().flat_map(|ps| ps.values().copied()).collect()
}

/// Sleeps until `until`, returning false early if `done` is set.
fn sleep_until(until: Instant, done: &AtomicBool) -> bool {
    while Instant::now() < until {
        if done.load(Ordering::SeqCst) {
            return false;
        }
        std::thread::sleep(POLL.min(until.saturating_duration_since(Instant::now())));
    }
    !done.load(Ordering::SeqCst)
}

struct ChaosContext {
    plan: ChaosPlan,
    stderr: PathBuf,
    processes: usize,
    launcher: u32,
    start: Instant,
    done: Arc<AtomicBool>,
}

/// Kills one random process of each of `plan.kills` successive generations, each at a
/// random moment after all processes of that generation have been started.
fn chaos(ctx: ChaosContext) -> Vec<Kill> {
    let mut rng = StdRng::seed_from_u64(ctx.plan.seed);
    let mut kills = Vec::new();
    let mut eligible = ctx.plan.first_generation;
    while kills.len() < ctx.plan.kills {
        // Wait for a complete generation that has not been hit yet.
        let (generation, pids) = loop {
            if ctx.done.load(Ordering::SeqCst) {
                return kills;
            }
            let gens = parse_generations(&read_lossy(&ctx.stderr));
            if let Some((&g, ps)) = gens.iter().next_back() {
                if g >= eligible && ps.len() >= ctx.processes {
                    break (g, ps.clone());
                }
            }
            std::thread::sleep(POLL);
        };
        let delay = rng.gen_range(ctx.plan.min_delay..=ctx.plan.max_delay);
        let first = rng.gen_range(0..pids.len());
        if !sleep_until(Instant::now() + delay, &ctx.done) || !is_alive(ctx.launcher) {
            return kills;
        }
        // The chosen victim, or the next one still alive.
        let victims: Vec<(usize, u32)> = pids.iter().map(|(&p, &pid)| (p, pid)).collect();
        let n = victims.len();
        let alive = (0..n)
            .map(|k| victims[(first + k) % n])
            .find(|&(_, pid)| is_alive(pid));
        if let Some((process, pid)) = alive {
            if sigkill(pid) {
                kills.push(Kill {
                    generation,
                    process,
                    pid,
                    at: ctx.start.elapsed(),
                });
            }
        }
        eligible = generation + 1;
    }
    kills
}

fn kill_all(launcher: u32, pids: &[u32]) {
    sigkill(launcher);
    for &pid in pids {
        if is_alive(pid) {
            sigkill(pid);
        }
    }
}

/// Runs `weir launch` with `spec`, SIGKILLs processes as `chaos` says, and waits for
/// the launcher to exit (killing everything and panicking past [`LAUNCH_DEADLINE`]).
/// Panics also if a process it started is still alive after it exited.
pub fn launch(ws: &Workspace, spec: &LaunchSpec, chaos_plan: Option<ChaosPlan>) -> LaunchOutcome {
    let mut cmd = Command::new(bins::weir());
    cmd.arg("launch")
        .arg("--processes")
        .arg(spec.processes.to_string())
        .arg("--workers")
        .arg(spec.workers.to_string())
        .arg("--max-restarts")
        .arg(spec.max_restarts.to_string())
        .arg("--restart-delay-ms")
        .arg(spec.restart_delay_ms.to_string())
        .arg("--")
        .arg(spec.binary.clone().unwrap_or_else(bins::wordcount))
        .args(spec.job.args());
    match &spec.failpoint {
        Some(fp) => cmd.env("WEIR_FAILPOINT", fp),
        None => cmd.env_remove("WEIR_FAILPOINT"),
    };
    let command = match &spec.failpoint {
        Some(fp) => format!("WEIR_FAILPOINT={fp} {}", describe(&cmd)),
        None => describe(&cmd),
    };
    let (out_path, err_path) = ws.log_paths("launch");
    let start = Instant::now();
    let mut child = spawn_logged(&mut cmd, &out_path, &err_path);
    let done = Arc::new(AtomicBool::new(false));
    let chaos_thread = chaos_plan.map(|plan| {
        let ctx = ChaosContext {
            plan,
            stderr: err_path.clone(),
            processes: spec.processes,
            launcher: child.id(),
            start,
            done: done.clone(),
        };
        std::thread::spawn(move || chaos(ctx))
    });
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for weir launch") {
            break Some(status);
        }
        if start.elapsed() > LAUNCH_DEADLINE {
            break None;
        }
        std::thread::sleep(POLL);
    };
    done.store(true, Ordering::SeqCst);
    let kills = chaos_thread
        .map(|t| t.join().expect("the chaos thread panicked"))
        .unwrap_or_default();
    let stderr = read_lossy(&err_path);
    let generations = parse_generations(&stderr);
    let Some(status) = status else {
        kill_all(child.id(), &all_pids(&generations));
        let _ = child.wait();
        panic!(
            "`{command}` did not finish within {LAUNCH_DEADLINE:?}; killed it and its processes\nkills: {kills:?}\n--- stderr (tail) ---\n{}",
            tail(&stderr, 80)
        );
    };
    let outcome = LaunchOutcome {
        command,
        status,
        stderr,
        generations,
        kills,
        elapsed: start.elapsed(),
    };
    assert_no_survivors(&outcome);
    outcome
}

/// Panics if a process `weir launch` started is still running after it exited.
fn assert_no_survivors(outcome: &LaunchOutcome) {
    let pids = all_pids(&outcome.generations);
    let until = Instant::now() + REAP_DEADLINE;
    let mut survivors: Vec<u32> = pids.clone();
    while Instant::now() < until {
        survivors.retain(|&pid| is_alive(pid));
        if survivors.is_empty() {
            return;
        }
        std::thread::sleep(POLL);
    }
    for &pid in &survivors {
        sigkill(pid);
    }
    panic!(
        "weir launch exited but left processes running {REAP_DEADLINE:?} later (now killed): {survivors:?}\n{}",
        outcome.summary()
    );
}

/// Starts `weir launch --processes 2 --workers 1 <extra>` over the wordcount binary with
/// `args`, in the background, logging to the workspace (the runtime's `info` lines
/// included); returns the launcher and its stderr's path.
pub fn spawn_launch(ws: &Workspace, args: &JobArgs, extra: &[String]) -> (Child, PathBuf) {
    let mut cmd = Command::new(bins::weir());
    cmd.args([
        "launch",
        "--processes",
        "2",
        "--workers",
        "1",
        "--restart-delay-ms",
        "50",
    ])
    .args(extra)
    .arg("--")
    .arg(bins::wordcount())
    .args(args.args())
    .env_remove("WEIR_FAILPOINT")
    .env("RUST_LOG", "weir_runtime=info");
    let (out, err) = ws.log_paths("launch");
    (spawn_logged(&mut cmd, &out, &err), err)
}
