//! Clusters without a supervisor: wordcount processes started by hand with
//! `--process-index I --peers A,B,C` and no `--generation`, each under its own restart
//! loop with Kubernetes' OnFailure semantics (restart on a non-zero exit, stop on 0), the
//! way a StatefulSet or systemd would run them. Peers on loopback ports here.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};

use crate::harness::bins;
use crate::harness::checks::check_exactly_once;
use crate::harness::input::{self, InputSpec};
use crate::harness::job::JobArgs;
use crate::harness::output::read_committed;
use crate::harness::process::{
    await_value, is_alive, is_stopped, read_lossy, sigkill, signal, spawn_logged, tail, POLL,
};
use crate::harness::scenario;
use crate::harness::workspace::Workspace;

/// The peer timeout of these tests.
const PEER_TIMEOUT_MS: u64 = 2_000;
/// How long a whole cluster test may take.
const DEADLINE: Duration = Duration::from_secs(240);

/// `n` loopback addresses with ports that were free a moment ago.
fn peers(n: usize) -> Vec<String> {
    let listeners: Vec<TcpListener> = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0").expect("a free port"))
        .collect();
    listeners
        .iter()
        .map(|l| format!("127.0.0.1:{}", l.local_addr().unwrap().port()))
        .collect()
}

fn command(args: &JobArgs, peers: &[String], index: usize) -> Command {
    command_in(None, args, peers, index)
}

/// The command of process `index`, run inside network namespace `netns` when given.
fn command_in(netns: Option<&str>, args: &JobArgs, peers: &[String], index: usize) -> Command {
    command_with_peer_timeout(netns, args, peers, index, PEER_TIMEOUT_MS)
}

/// As [`command_in`], with a peer timeout of `peer_timeout_ms`.
fn command_with_peer_timeout(
    netns: Option<&str>,
    args: &JobArgs,
    peers: &[String],
    index: usize,
    peer_timeout_ms: u64,
) -> Command {
    let mut cmd = match netns {
        Some(ns) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", ns]).arg(bins::wordcount());
            c
        }
        None => Command::new(bins::wordcount()),
    };
    cmd.args(args.args())
        .arg("--peers")
        .arg(peers.join(","))
        .arg("--process-index")
        .arg(index.to_string())
        .arg("--peer-timeout-ms")
        .arg(peer_timeout_ms.to_string())
        .arg("--restore")
        .arg("latest");
    cmd
}

/// One "host": a restart loop around one process.
struct Host {
    index: usize,
    /// The process running now (0 while none runs).
    pid: Arc<AtomicU32>,
    /// Exit codes of every run, in order (`None`: killed by a signal).
    exits: Arc<Mutex<Vec<Option<i32>>>>,
    done: Arc<AtomicBool>,
    logs: PathBuf,
}

impl Host {
    fn start(ws: &Workspace, args: &JobArgs, peers: &[String], index: usize) -> Host {
        Host::start_in(None, ws, args, peers, index)
    }

    fn start_in(
        netns: Option<String>,
        ws: &Workspace,
        args: &JobArgs,
        peers: &[String],
        index: usize,
    ) -> Host {
        let host = Host {
            index,
            pid: Arc::new(AtomicU32::new(0)),
            exits: Arc::new(Mutex::new(Vec::new())),
            done: Arc::new(AtomicBool::new(false)),
            logs: ws.root.join(format!("host-{index}")),
        };
        std::fs::create_dir_all(&host.logs).unwrap();
        let (pid, exits, done, logs) = (
            Arc::clone(&host.pid),
            Arc::clone(&host.exits),
            Arc::clone(&host.done),
            host.logs.clone(),
        );
        let (args, peers) = (args.clone(), peers.to_vec());
        std::thread::spawn(move || {
            for run in 0.. {
                let mut cmd = command_in(netns.as_deref(), &args, &peers, index);
                let (out, err) = (
                    logs.join(format!("run-{run}.out")),
                    logs.join(format!("run-{run}.err")),
                );
                let mut child: Child = spawn_logged(&mut cmd, &out, &err);
                pid.store(child.id(), Ordering::SeqCst);
                let status = child.wait().expect("wait for the process");
                pid.store(0, Ordering::SeqCst);
                exits.lock().unwrap().push(status.code());
                if status.success() || run > 60 {
                    break;
                }
            }
            done.store(true, Ordering::SeqCst);
        });
        host
    }

    fn stderr_of_runs(&self) -> Vec<String> {
        let runs = self.exits.lock().unwrap().len();
        (0..runs)
            .map(|r| read_lossy(&self.logs.join(format!("run-{r}.err"))))
            .collect()
    }

    fn describe(&self) -> String {
        let exits = self.exits.lock().unwrap().clone();
        let last = self.stderr_of_runs().pop().unwrap_or_default();
        format!(
            "host {}: exits {exits:?}\n--- stderr of its last run (tail) ---\n{}",
            self.index,
            tail(&last, 15)
        )
    }
}

/// Waits until `f` holds, failing the test with `what` and the hosts' state at `deadline`.
fn await_until(hosts: &[Host], deadline: Instant, what: &str, mut f: impl FnMut() -> bool) {
    await_value(
        deadline,
        what,
        || {
            let state: Vec<String> = hosts.iter().map(Host::describe).collect();
            state.join("\n")
        },
        || f().then_some(()),
    );
}

/// The newest complete checkpoint's epoch in the workspace (0 if none): it grows as
/// the job makes progress, whatever retention deletes.
fn complete(ws: &Workspace) -> u64 {
    complete_at(&ws.checkpoint_url())
}

/// The newest complete checkpoint's epoch under a checkpoint URL (a local directory or
/// `s3://`), 0 if none.
fn complete_at(url: &str) -> u64 {
    let store = weir::checkpoint::CheckpointStore::open(url, "wordcount").unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(store.list())
        .ok()
        .and_then(|(c, _)| c.iter().map(|e| e.0).max())
        .unwrap_or(0)
}

/// Waits until every host's restart loop has ended, and checks that each ended with a
/// run that exited 0.
fn await_all_finished(hosts: &[Host], deadline: Instant) {
    await_until(
        hosts,
        deadline,
        "every host to finish with exit code 0",
        || hosts.iter().all(|h| h.done.load(Ordering::SeqCst)),
    );
    for host in hosts {
        assert_eq!(
            host.exits.lock().unwrap().last().copied().flatten(),
            Some(0),
            "{}",
            host.describe()
        );
    }
}

/// No run of any host panicked, and every failed run ended with one clear error line.
fn assert_clean_exits(hosts: &[Host]) {
    for host in hosts {
        for (run, stderr) in host.stderr_of_runs().iter().enumerate() {
            assert!(
                !stderr.contains("panicked at") && !stderr.contains("RUST_BACKTRACE"),
                "host {} run {run} panicked:\n{}",
                host.index,
                tail(stderr, 30)
            );
        }
    }
}

fn workspace(
    name: &str,
    seed: u64,
    processes: usize,
) -> (Workspace, crate::harness::input::Corpus, JobArgs) {
    let ws = Workspace::new(name);
    let corpus = input::generate(&ws.input, seed, &InputSpec::chaos());
    let args = JobArgs::new(&ws)
        .workers(2)
        .interval_ms(scenario::INTERVAL_MS)
        .rate_limit(corpus.rate_limit_for(2 * processes, scenario::RUN_SECS));
    (ws, corpus, args)
}

/// Runs three processes under restart loops with checkpoints under `url` (input for
/// `secs` seconds at full pace), kills them
/// (one, process 0, all, all but one, and a process again in the middle of its
/// rendezvous) after checkpoints complete, and checks that the cluster reformed by itself
/// and committed exactly the oracle. Returns the number of kills that landed.
fn kill_rounds(name: &str, seed: u64, url: Option<String>, rounds: usize, secs: f64) -> usize {
    let seed = scenario::seed(seed);
    let ws = Workspace::new(name);
    let corpus = input::generate(&ws.input, seed, &InputSpec::chaos());
    let url = url.unwrap_or_else(|| ws.checkpoint_url());
    let args = JobArgs::new(&ws)
        .set("--checkpoint-dir", &url)
        .workers(2)
        .interval_ms(scenario::INTERVAL_MS)
        .rate_limit(corpus.rate_limit_for(6, secs));
    let peers = peers(3);
    let hosts: Vec<Host> = (0..3).map(|i| Host::start(&ws, &args, &peers, i)).collect();
    let deadline = Instant::now() + DEADLINE;
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let all_done = |hosts: &[Host]| hosts.iter().all(|h| h.done.load(Ordering::SeqCst));
    let mut kills = 0;
    for round in 0..rounds {
        if all_done(&hosts) {
            break;
        }
        // A new checkpoint completes between kills, so that the cluster makes progress.
        let before = complete_at(&url);
        await_until(&hosts, deadline, "a new complete checkpoint", || {
            complete_at(&url) > before || all_done(&hosts)
        });
        let victims: Vec<usize> = match round % 5 {
            0 => vec![rng.gen_range(1..3)],
            1 => vec![0],
            2 => vec![0, 1, 2],
            3 => vec![1, 2],
            _ => vec![rng.gen_range(0..3)],
        };
        for &v in &victims {
            let pid = hosts[v].pid.load(Ordering::SeqCst);
            if pid != 0 && sigkill(pid) {
                kills += 1;
            }
        }
        if round % 5 == 4 {
            // The victim again, as soon as its restart loop has started it: a kill in
            // the middle of the rendezvous.
            let v = victims[0];
            let runs = hosts[v].exits.lock().unwrap().len();
            await_until(&hosts, deadline, "the victim to be restarted", || {
                (hosts[v].exits.lock().unwrap().len() > runs
                    && hosts[v].pid.load(Ordering::SeqCst) != 0)
                    || all_done(&hosts)
            });
            let pid = hosts[v].pid.load(Ordering::SeqCst);
            if pid != 0 && sigkill(pid) {
                kills += 1;
            }
        }
    }
    await_all_finished(&hosts, deadline);
    assert_clean_exits(&hosts);
    check_exactly_once(&corpus.oracle, &read_committed(&ws.output));
    kills
}

/// Three processes started by hand reform after any kill, rendezvous included.
#[test]
fn processes_started_by_hand_reform_after_any_kill_and_stay_exactly_once() {
    let kills = kill_rounds(
        "cluster-kills",
        0xC_0001,
        None,
        10,
        6.0 * scenario::RUN_SECS,
    );
    assert!(
        kills >= 10,
        "only {kills} kills landed: the input ran out too early"
    );
}

/// The same with checkpoints on the S3 server.
#[test]
fn processes_started_by_hand_reform_with_checkpoints_on_s3() {
    let url = crate::s3::s3_prefix("cluster-s3");
    let kills = kill_rounds(
        "cluster-s3",
        0xC_0005,
        Some(url),
        5,
        2.0 * scenario::RUN_SECS,
    );
    assert!(
        kills >= 4,
        "only {kills} kills landed: the input ran out too early"
    );
}

/// A killed peer ends every other process promptly with exit code 1 and one line naming
/// it; a stopped one within the peer timeout; a pause shorter than the timeout does
/// nothing; the stopped process, resumed, commits nothing.
#[test]
fn a_lost_or_silent_peer_ends_the_others_and_a_short_pause_does_not() {
    let seed = scenario::seed(0xC_0002);
    let (ws, corpus, args) = workspace("cluster-silent", seed, 2);
    let peers = peers(2);
    let hosts: Vec<Host> = (0..2).map(|i| Host::start(&ws, &args, &peers, i)).collect();
    let deadline = Instant::now() + DEADLINE;
    let running = |h: &Host| h.pid.load(Ordering::SeqCst);

    // A pause shorter than the timeout: nobody restarts.
    await_until(&hosts, deadline, "a first complete checkpoint", || {
        complete(&ws) > 0
    });
    let (p0, p1) = (running(&hosts[0]), running(&hosts[1]));
    assert!(p0 != 0 && p1 != 0, "both processes run");
    assert!(signal(p1, libc::SIGSTOP), "SIGSTOP {p1}");
    let paused = Instant::now();
    while paused.elapsed() < Duration::from_millis(PEER_TIMEOUT_MS / 3) {
        assert!(
            is_alive(p0),
            "process 0 died during a short pause of process 1"
        );
        std::thread::sleep(POLL);
    }
    assert!(signal(p1, libc::SIGCONT), "SIGCONT {p1}");
    let before = complete(&ws);
    await_until(
        &hosts,
        deadline,
        "a checkpoint after the short pause",
        || complete(&ws) > before,
    );
    assert_eq!(running(&hosts[0]), p0, "a short pause restarted process 0");
    assert_eq!(running(&hosts[1]), p1, "a short pause restarted process 1");

    // A stop longer than the timeout: process 0 ends with exit 1, naming process 1.
    assert!(signal(p1, libc::SIGSTOP), "SIGSTOP {p1}");
    let stopped = Instant::now();
    await_until(
        &hosts,
        deadline,
        "process 0 to notice the stopped peer",
        || running(&hosts[0]) != p0,
    );
    let noticed = stopped.elapsed();
    assert!(
        noticed < Duration::from_millis(PEER_TIMEOUT_MS * 3),
        "process 0 took {noticed:?} to notice a peer silent for {PEER_TIMEOUT_MS} ms"
    );
    let first = hosts[0].stderr_of_runs()[0].clone();
    assert_eq!(
        hosts[0].exits.lock().unwrap()[0],
        Some(1),
        "{}",
        hosts[0].describe()
    );
    assert!(
        first.contains(&format!("process 1 at {}", peers[1]))
            && first.contains("sent no heartbeat"),
        "process 0 should name the silent peer\n{}",
        tail(&first, 10)
    );
    // The zombie, resumed, must not commit: its output files stay as they are until it
    // has exited.
    let committed_before: Vec<PathBuf> = committed_files(&ws.output);
    assert!(signal(p1, libc::SIGCONT), "SIGCONT {p1}");
    await_until(&hosts, deadline, "the resumed process to exit", || {
        running(&hosts[1]) != p1
    });
    assert_ne!(
        hosts[1].exits.lock().unwrap()[0],
        Some(0),
        "{}",
        hosts[1].describe()
    );
    assert_no_new_commits_of_generation_0(&ws.output, &committed_before);

    // The restarted cluster finishes exactly once.
    await_all_finished(&hosts, deadline);
    assert_clean_exits(&hosts);
    check_exactly_once(&corpus.oracle, &read_committed(&ws.output));
}

/// Panics if a resumed zombie of generation 0 committed an output file that was not
/// there before it was resumed.
fn assert_no_new_commits_of_generation_0(output: &Path, before: &[PathBuf]) {
    let zombie_commits: Vec<PathBuf> = committed_files(output)
        .into_iter()
        .filter(|f| !before.contains(f) && f.to_string_lossy().contains("-g0-"))
        .collect();
    assert!(
        zombie_commits.is_empty(),
        "the resumed process of generation 0 committed {zombie_commits:?}"
    );
}

fn committed_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|d| d.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default();
    files.retain(|p| p.extension().is_some_and(|x| x == "jsonl"));
    files.sort();
    files
}

/// Misconfigured clusters are refused with exit code 2 and a message that says why.
#[test]
fn an_index_outside_the_peers_or_different_peer_lists_are_refused() {
    let ws = Workspace::new("cluster-bad");
    input::generate(&ws.input, 1, &InputSpec::small());
    let args = JobArgs::new(&ws).workers(1);
    let peers = peers(2);
    let out = command(&args, &peers, 5).output().expect("run wordcount");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("process index 5 is outside the peer list of 2"),
        "{stderr}"
    );

    // A peer that is not there: retried until the start timeout, then exit code 1.
    let started = Instant::now();
    let out = command(&args, &peers, 1)
        .args(["--start-timeout-ms", "1500"])
        .output()
        .expect("run wordcount");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!("process 0 at {}", peers[0])) && stderr.contains("start timeout"),
        "{stderr}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "it waited {:?}",
        started.elapsed()
    );

    // Process 1 lists a third peer that process 0 does not know.
    let mut other = peers.clone();
    other.push("127.0.0.1:9".into());
    let spawn = |peers: &[String], index: usize| {
        command(&args, peers, index)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("run wordcount")
    };
    let (p0, p1) = (spawn(&peers, 0), spawn(&other, 1));
    let (a, b) = (
        p0.wait_with_output().unwrap(),
        p1.wait_with_output().unwrap(),
    );
    for out in [&a, &b] {
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{stderr}");
        assert!(stderr.contains("same --peers"), "{stderr}");
    }

    // Two processes that both say they are process 1 of three. On one host the second
    // cannot listen on the first one's port; on two hosts process 0 refuses the second
    // handshake. Either way it is exit code 2 with the reason.
    let peers = self::peers(3);
    let spawn = |peers: &[String], index: usize| {
        command(&args, peers, index)
            .args(["--start-timeout-ms", "3000"])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("run wordcount")
    };
    let (p0, p1, p1b) = (spawn(&peers, 0), spawn(&peers, 1), spawn(&peers, 1));
    let outs: Vec<_> = [p0, p1, p1b]
        .into_iter()
        .map(|p| p.wait_with_output().unwrap())
        .collect();
    let refused = outs.iter().any(|o| {
        o.status.code() == Some(2)
            && [
                "two processes say they are process 1",
                "cannot listen on",
                "two processes run with --process-index 1",
            ]
            .iter()
            .any(|m| String::from_utf8_lossy(&o.stderr).contains(m))
    });
    let texts: Vec<String> = outs
        .iter()
        .map(|o| {
            format!(
                "{:?}: {}",
                o.status.code(),
                String::from_utf8_lossy(&o.stderr)
            )
        })
        .collect();
    assert!(
        refused,
        "a repeated index must be refused with exit code 2:\n{}",
        texts.join("\n")
    );
}

/// Hosts simulated with network namespaces: one namespace per process, each with a veth
/// pair into a bridge of its own, on addresses of a private subnet. Removed on drop.
struct Net {
    bridge: String,
    namespaces: Vec<String>,
    /// The root-side end of each host's veth pair: setting it down cuts the host off.
    links: Vec<String>,
    /// Each host's end of its veth pair, inside its namespace.
    inners: Vec<String>,
    addresses: Vec<String>,
}

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("run ip");
    assert!(
        out.status.success(),
        "ip {} failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Net {
    fn new(hosts: usize) -> Net {
        // Short names (interface names have at most 15 bytes), unique per test process.
        let tag = format!("{:x}", std::process::id() % 0xfffff);
        let subnet = 100 + (std::process::id() % 100);
        let bridge = format!("wbr{tag}");
        ip(&["link", "add", &bridge, "type", "bridge"]);
        ip(&["link", "set", &bridge, "up"]);
        let mut net = Net {
            bridge,
            namespaces: Vec::new(),
            links: Vec::new(),
            inners: Vec::new(),
            addresses: Vec::new(),
        };
        for h in 0..hosts {
            let ns = format!("weir{tag}h{h}");
            let (outer, inner) = (format!("wv{tag}o{h}"), format!("wv{tag}i{h}"));
            let address = format!("10.{subnet}.0.{}", h + 1);
            ip(&["netns", "add", &ns]);
            net.namespaces.push(ns.clone());
            ip(&[
                "link", "add", &outer, "type", "veth", "peer", "name", &inner,
            ]);
            ip(&["link", "set", &inner, "netns", &ns]);
            ip(&["link", "set", &outer, "master", &net.bridge]);
            ip(&["link", "set", &outer, "up"]);
            ip(&[
                "-n",
                &ns,
                "addr",
                "add",
                &format!("{address}/24"),
                "dev",
                &inner,
            ]);
            ip(&["-n", &ns, "link", "set", &inner, "up"]);
            ip(&["-n", &ns, "link", "set", "lo", "up"]);
            net.links.push(outer);
            net.inners.push(inner);
            net.addresses.push(address);
        }
        net
    }

    fn peers(&self, port: u16) -> Vec<String> {
        self.addresses
            .iter()
            .map(|a| format!("{a}:{port}"))
            .collect()
    }

    fn set_link(&self, host: usize, up: bool) {
        ip(&[
            "link",
            "set",
            &self.links[host],
            if up { "up" } else { "down" },
        ]);
    }
}

impl Net {
    /// Host `from` is cut off and host `to` takes over its address, as a replacement
    /// machine would: the other hosts forget the old hardware address.
    fn move_address(&self, from: usize, to: usize) {
        self.set_link(from, false);
        ip(&[
            "-n",
            &self.namespaces[to],
            "addr",
            "add",
            &format!("{}/24", self.addresses[from]),
            "dev",
            &self.inners[to],
        ]);
        for (h, ns) in self.namespaces.iter().enumerate() {
            if h != from && h != to {
                ip(&["-n", ns, "neigh", "flush", "all"]);
            }
        }
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        for ns in &self.namespaces {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
        for link in &self.links {
            let _ = Command::new("ip").args(["link", "del", link]).status();
        }
        let _ = Command::new("ip")
            .args(["link", "del", &self.bridge])
            .status();
    }
}

/// Three hosts in network namespaces, each process under its own restart loop: random
/// kills and a host cut off from the network for longer than the peer timeout; the
/// cluster reforms by itself and commits exactly the oracle.
#[test]
fn three_hosts_in_network_namespaces_reform_after_kills_and_a_cut_link() {
    let seed = scenario::seed(0xC_0004);
    let (ws, corpus, args) = workspace("cluster-netns", seed, 3);
    let net = Net::new(3);
    let peers = net.peers(7411);
    let hosts: Vec<Host> = (0..3)
        .map(|i| Host::start_in(Some(net.namespaces[i].clone()), &ws, &args, &peers, i))
        .collect();
    let deadline = Instant::now() + DEADLINE;
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut kills = 0;
    for round in 0..4 {
        if hosts.iter().all(|h| h.done.load(Ordering::SeqCst)) {
            break;
        }
        let before = complete(&ws);
        await_until(&hosts, deadline, "a new complete checkpoint", || {
            complete(&ws) > before || hosts.iter().all(|h| h.done.load(Ordering::SeqCst))
        });
        if round == 2 {
            // Host 2 loses its link until every host has noticed: hosts 0 and 1 miss its
            // heartbeats, and host 2 misses theirs.
            let runs: Vec<usize> = hosts
                .iter()
                .map(|h| h.exits.lock().unwrap().len())
                .collect();
            net.set_link(2, false);
            await_until(&hosts, deadline, "every host to notice the cut", || {
                hosts
                    .iter()
                    .zip(&runs)
                    .all(|(h, before)| h.exits.lock().unwrap().len() > *before)
                    || hosts.iter().all(|h| h.done.load(Ordering::SeqCst))
            });
            net.set_link(2, true);
            continue;
        }
        let victim = rng.gen_range(0..3);
        let pid = hosts[victim].pid.load(Ordering::SeqCst);
        if pid != 0 && sigkill(pid) {
            kills += 1;
        }
    }
    await_all_finished(&hosts, deadline);
    assert!(
        kills >= 2,
        "only {kills} kills landed: the input ran out too early"
    );
    let silent: usize = hosts
        .iter()
        .flat_map(|h| h.stderr_of_runs())
        .filter(|e| {
            e.contains("sent no heartbeat")
                || e.contains("closed its connection")
                || e.contains("broke its connection")
        })
        .count();
    assert!(silent > 0, "no process reported the cut or killed peer");
    assert_clean_exits(&hosts);
    check_exactly_once(&corpus.oracle, &read_committed(&ws.output));
    drop(net);
}

/// A zombie across hosts: process 0, the coordinator, stops itself between its fence
/// check and its manifest; its host is cut off, and a replacement process 0 starts on
/// another host with the same address, as Kubernetes reschedules a pod from a lost
/// node. Once the new generation has completed a checkpoint, the zombie resumes: its
/// manifest is never committed, it commits no output, and the job stays exactly once.
#[test]
fn a_coordinator_paused_before_its_manifest_and_replaced_on_another_host_commits_nothing() {
    let seed = scenario::seed(0xC_0005);
    let (ws, corpus, args) = workspace("cluster-zombie", seed, 3);
    let net = Net::new(4);
    let peers: Vec<String> = net.peers(7421).into_iter().take(3).collect();
    // The zombie's own failure detector would also end it once it resumes (its peers
    // fell silent while it was stopped), racing the fence this test is about: under
    // load it won, and the zombie exited before reaching its manifest. Its peer
    // timeout is set beyond the test's deadline, so that the fence is what stops it.
    let mut zombie_cmd = command_with_peer_timeout(
        Some(&net.namespaces[0]),
        &args,
        &peers,
        0,
        2 * DEADLINE.as_millis() as u64,
    );
    zombie_cmd.env("WEIR_FAILPOINT", "before-manifest@3=stop");
    let zombie_logs = (ws.root.join("zombie.out"), ws.root.join("zombie.err"));
    let mut zombie = spawn_logged(&mut zombie_cmd, &zombie_logs.0, &zombie_logs.1);
    let zombie_pid = zombie.id();
    let mut hosts: Vec<Host> = (1..3)
        .map(|i| Host::start_in(Some(net.namespaces[i].clone()), &ws, &args, &peers, i))
        .collect();
    let deadline = Instant::now() + DEADLINE;
    await_until(
        &hosts,
        deadline,
        "process 0 to stop at its failpoint",
        || is_stopped(zombie_pid),
    );
    let before = complete(&ws);

    net.move_address(0, 3);
    hosts.push(Host::start_in(
        Some(net.namespaces[3].clone()),
        &ws,
        &args,
        &peers,
        0,
    ));
    await_until(
        &hosts,
        deadline,
        "a checkpoint of the replacement's generation",
        || complete(&ws) > before,
    );

    let committed_before = committed_files(&ws.output);
    assert!(signal(zombie_pid, libc::SIGCONT), "SIGCONT {zombie_pid}");
    let status = await_value(
        deadline,
        "the resumed zombie to exit",
        || tail(&read_lossy(&zombie_logs.1), 20),
        || zombie.try_wait().expect("wait for the zombie"),
    );
    let stderr = read_lossy(&zombie_logs.1);
    assert_eq!(status.code(), Some(1), "{}", tail(&stderr, 20));
    assert!(
        stderr.contains("generation 0 was superseded by generation"),
        "the zombie should find its checkpoint's place taken\n{}",
        tail(&stderr, 20)
    );
    assert_no_new_commits_of_generation_0(&ws.output, &committed_before);

    await_all_finished(&hosts, deadline);
    assert_clean_exits(&hosts);
    check_exactly_once(&corpus.oracle, &read_committed(&ws.output));
    drop(net);
}
