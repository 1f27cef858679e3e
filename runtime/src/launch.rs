//! Cluster launch and supervision: `weir launch`.
//!
//! ## Design
//!
//! Timely cannot lose a process and go on, so recovery is a whole-job restart. The
//! supervisor starts `P` processes of the job binary on 127.0.0.1, each with `W` worker
//! threads, exactly as Kubernetes or a shell loop would start them on several hosts:
//! the same arguments plus `--peers` (fresh ports) and `--process-index`. The processes
//! form the cluster and agree on its generation themselves, through the checkpoint
//! store (see `crate::cluster`), so one code path serves both. When one process dies,
//! the supervisor kills the rest, waits until every one is gone, and starts them all
//! again with `--restore latest`. A process that exits with [`EXIT_PERMANENT`] failed
//! on its configuration or input: restarting cannot help, so the supervisor stops.
//! After `max_restarts` restarts it gives up.

use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus};
use std::time::{Duration, Instant};

use crate::error::EXIT_PERMANENT;

/// What `weir launch` is asked to do.
#[derive(Debug, Clone)]
pub struct LaunchOptions {
    /// Processes in the cluster.
    pub processes: usize,
    /// Worker threads per process.
    pub workers: usize,
    /// Restarts allowed before giving up.
    pub max_restarts: u32,
    /// Delay before the first restart.
    pub restart_delay: Duration,
    /// Upper bound of the exponentially growing delay between restarts.
    pub max_restart_delay: Duration,
    /// The job binary.
    pub binary: PathBuf,
    /// The job's own arguments.
    pub args: Vec<String>,
    /// Metrics endpoints: process `i` serves Prometheus metrics on this host and the
    /// port plus `i`.
    pub metrics: Option<(String, u16)>,
}

/// How a supervised job ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Every process of the last generation exited 0.
    Finished {
        /// Restarts it took.
        restarts: u32,
    },
    /// A process failed permanently (bad settings or input); not restarted.
    Permanent {
        /// The process and how it ended.
        reason: String,
    },
    /// It kept failing.
    GaveUp {
        /// Restarts attempted.
        restarts: u32,
        /// The last failure.
        reason: String,
    },
}

/// Removes `--restore X` / `--restore=X` and the cluster flags from a job's arguments.
fn strip_managed(args: &[String]) -> (Vec<String>, Option<String>) {
    let mut out = Vec::new();
    let mut restore = None;
    let mut i = 0;
    while i < args.len() {
        let a = &args[i];
        let managed = [
            "--restore",
            "--processes",
            "--process",
            "--hostfile",
            "--generation",
            "--peers",
            "--process-index",
            "--metrics-addr",
            "--workers",
            "-w",
        ];
        if let Some((flag, value)) = a.split_once('=') {
            if managed.contains(&flag) {
                if flag == "--restore" {
                    restore = Some(value.to_string());
                }
                i += 1;
                continue;
            }
        }
        if managed.contains(&a.as_str()) {
            if a == "--restore" {
                restore = args.get(i + 1).cloned();
            }
            i += 2;
            continue;
        }
        out.push(a.clone());
        i += 1;
    }
    (out, restore)
}

fn free_ports(n: usize) -> std::io::Result<Vec<u16>> {
    // Hold every listener until all ports are chosen, so that they differ.
    let listeners: Vec<_> = (0..n)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0"))
        .collect::<Result<_, _>>()?;
    listeners
        .iter()
        .map(|l| l.local_addr().map(|a| a.port()))
        .collect()
}

fn describe(process: usize, status: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("process {process} exited with code {code}"),
        (None, Some(sig)) => format!("process {process} was killed by signal {sig}"),
        _ => format!("process {process} ended with {status}"),
    }
}

fn spawn(
    opts: &LaunchOptions,
    run: u64,
    peers: &str,
    args: &[String],
    restore: Option<&str>,
) -> std::io::Result<Vec<Child>> {
    let mut children = Vec::new();
    for process in 0..opts.processes {
        let mut cmd = Command::new(&opts.binary);
        cmd.args(args)
            .arg("--workers")
            .arg(opts.workers.to_string());
        if opts.processes > 1 {
            cmd.arg("--peers")
                .arg(peers)
                .arg("--process-index")
                .arg(process.to_string());
        }
        if let Some(r) = restore {
            cmd.arg("--restore").arg(r);
        }
        if let Some(addr) = metrics_addr(opts, process) {
            cmd.arg("--metrics-addr").arg(addr);
        }
        // Children die with the supervisor, so that no orphan of an old generation lives on.
        // SAFETY: prctl is async-signal-safe and touches no memory of the parent.
        unsafe {
            use std::os::unix::process::CommandExt;
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let child = match cmd.spawn() {
            Ok(c) => c,
            Err(e) => {
                kill_all(&mut children);
                return Err(e);
            }
        };
        eprintln!(
            "weir launch: run {run} process {process} pid {}",
            child.id()
        );
        children.push(child);
    }
    Ok(children)
}

/// The metrics address of process `process`, if metrics are asked for.
fn metrics_addr(opts: &LaunchOptions, process: usize) -> Option<String> {
    let (host, port) = opts.metrics.as_ref()?;
    let port = port.checked_add(u16::try_from(process).ok()?)?;
    Some(format!("{host}:{port}"))
}

fn kill_all(children: &mut [Child]) {
    for c in children.iter_mut() {
        let _ = c.kill();
    }
    for c in children.iter_mut() {
        let _ = c.wait();
    }
}

/// Runs the job under supervision until it finishes, fails permanently, or runs out of
/// restarts.
pub fn launch(opts: &LaunchOptions) -> std::io::Result<Outcome> {
    let (args, first_restore) = strip_managed(&opts.args);
    for process in 0..opts.processes {
        if let Some(addr) = metrics_addr(opts, process) {
            eprintln!("weir launch: process {process} metrics at http://{addr}/metrics");
        }
    }
    let mut restarts = 0u32;
    let mut delay = opts.restart_delay;
    let mut run = 0u64;
    let outcome = loop {
        let peers = free_ports(opts.processes)?
            .iter()
            .map(|p| format!("127.0.0.1:{p}"))
            .collect::<Vec<_>>()
            .join(",");
        let restore = if run == 0 {
            first_restore.clone()
        } else {
            Some("latest".to_string())
        };
        let mut children = spawn(opts, run, &peers, &args, restore.as_deref())?;
        let started = Instant::now();
        let mut finished = vec![false; children.len()];
        let failure = loop {
            let mut failure = None;
            for (i, c) in children.iter_mut().enumerate() {
                if finished[i] {
                    continue;
                }
                if let Some(status) = c.try_wait()? {
                    finished[i] = true;
                    if !status.success() {
                        failure =
                            Some((describe(i, status), status.code() == Some(EXIT_PERMANENT)));
                        break;
                    }
                }
            }
            if failure.is_some() || finished.iter().all(|f| *f) {
                break failure;
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        kill_all(&mut children);
        let Some((reason, permanent)) = failure else {
            break Outcome::Finished { restarts };
        };
        eprintln!(
            "weir launch: run {run} failed after {:.1}s: {reason}",
            started.elapsed().as_secs_f64()
        );
        if permanent {
            break Outcome::Permanent { reason };
        }
        if restarts >= opts.max_restarts {
            break Outcome::GaveUp { restarts, reason };
        }
        restarts += 1;
        run += 1;
        eprintln!(
            "weir launch: restart {restarts} of at most {} in {} ms, from the latest checkpoint",
            opts.max_restarts,
            delay.as_millis()
        );
        std::thread::sleep(delay);
        delay = (delay * 2).min(opts.max_restart_delay.max(opts.restart_delay));
    };
    Ok(outcome)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn managed_flags_are_replaced_and_restore_is_kept_for_the_first_generation() {
        let (args, restore) = strip_managed(&s(&[
            "--input",
            "in",
            "--restore",
            "7",
            "--workers=3",
            "--hostfile",
            "h",
            "--peers=a:1,b:1",
            "--process-index",
            "1",
            "--output",
            "o",
        ]));
        assert_eq!(args, s(&["--input", "in", "--output", "o"]));
        assert_eq!(restore.as_deref(), Some("7"));
    }

    #[test]
    fn free_ports_are_distinct() {
        let ports = free_ports(4).unwrap();
        let set: std::collections::BTreeSet<_> = ports.iter().collect();
        assert_eq!(set.len(), 4);
    }
}
