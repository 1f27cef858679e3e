//! Spawning processes with logs in files, waiting with a deadline, killing, liveness.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// How often a waiting loop looks again.
pub const POLL: Duration = Duration::from_millis(20);

/// A process that ran to its end.
#[derive(Debug)]
pub struct Finished {
    /// What the command line was, for messages.
    pub command: String,
    /// Its exit status.
    pub status: ExitStatus,
    /// Everything it printed to stdout.
    pub stdout: String,
    /// Everything it printed to stderr.
    pub stderr: String,
    /// Wall-clock time from spawn to exit.
    pub elapsed: Duration,
}

impl Finished {
    /// Panics, with the process's stderr, unless it exited 0.
    pub fn assert_success(&self) {
        assert!(
            self.status.success(),
            "`{}` failed with {} after {:.1?}\n--- stdout (tail) ---\n{}\n--- stderr (tail) ---\n{}",
            self.command,
            self.status,
            self.elapsed,
            tail(&self.stdout, 10),
            tail(&self.stderr, 60)
        );
    }

    /// Panics, with the process's stderr, unless a SIGKILL ended it: `why` says what
    /// should have killed it.
    pub fn assert_killed(&self, why: &str) {
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(
            self.status.signal(),
            Some(libc::SIGKILL),
            "{why} should have killed `{}`, which ended with {}\n--- stderr (tail) ---\n{}",
            self.command,
            self.status,
            tail(&self.stderr, 30)
        );
    }

    /// Panics unless the process failed the clean way: a non-zero exit code (not a
    /// signal, not a panic) and a stderr that contains every one of `needles`.
    pub fn assert_clean_failure(&self, needles: &[&str]) {
        let code = self.status.code();
        assert!(
            code.is_some() && code != Some(0),
            "`{}` should have exited with a non-zero code, but ended with {}\n--- stderr (tail) ---\n{}",
            self.command,
            self.status,
            tail(&self.stderr, 40)
        );
        assert!(
            !self.stderr.contains("panicked at"),
            "`{}` should fail with a clear error, not a panic\n--- stderr (tail) ---\n{}",
            self.command,
            tail(&self.stderr, 40)
        );
        for needle in needles {
            assert!(
                self.stderr.contains(needle),
                "stderr of `{}` should name `{needle}`\n--- stderr (tail) ---\n{}",
                self.command,
                tail(&self.stderr, 40)
            );
        }
    }
}

/// Describes a command for messages.
pub fn describe(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

/// Spawns `cmd` with stdin closed and stdout/stderr going to the given files.
pub fn spawn_logged(cmd: &mut Command, stdout: &Path, stderr: &Path) -> Child {
    let out = File::create(stdout).unwrap_or_else(|e| panic!("create {}: {e}", stdout.display()));
    let err = File::create(stderr).unwrap_or_else(|e| panic!("create {}: {e}", stderr.display()));
    cmd.stdin(Stdio::null()).stdout(out).stderr(err);
    cmd.spawn()
        .unwrap_or_else(|e| panic!("spawn `{}`: {e}", describe(cmd)))
}

/// Runs `cmd` to its end, logging to `logs`, and kills it (then panics) if it runs
/// past `deadline`.
pub fn run_to_end(mut cmd: Command, logs: (PathBuf, PathBuf), deadline: Duration) -> Finished {
    let command = describe(&cmd);
    let start = Instant::now();
    let mut child = spawn_logged(&mut cmd, &logs.0, &logs.1);
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for a child") {
            break status;
        }
        if start.elapsed() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "`{command}` did not finish within {deadline:?}; killed it\n--- stderr (tail) ---\n{}",
                tail(&read_lossy(&logs.1), 60)
            );
        }
        std::thread::sleep(POLL);
    };
    Finished {
        command,
        status,
        stdout: read_lossy(&logs.0),
        stderr: read_lossy(&logs.1),
        elapsed: start.elapsed(),
    }
}

/// A file's contents, lossily decoded; empty if it does not exist.
pub fn read_lossy(path: &Path) -> String {
    std::fs::read(path)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default()
}

/// The last `n` lines of `text`.
pub fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    let from = lines.len().saturating_sub(n);
    let mut s = String::new();
    if from > 0 {
        s.push_str(&format!("[... {from} earlier lines ...]\n"));
    }
    s.push_str(&lines[from..].join("\n"));
    s
}

/// Whether `pid` is a running process (neither gone nor a zombie).
pub fn is_alive(pid: u32) -> bool {
    state(pid).is_some_and(|s| s != "Z" && s != "X")
}

/// Whether `pid` is stopped (by `SIGSTOP`).
pub fn is_stopped(pid: u32) -> bool {
    state(pid).is_some_and(|s| s == "T" || s == "t")
}

/// The process state letter of `pid` in `/proc/<pid>/stat`, if it exists.
fn state(pid: u32) -> Option<String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The state is the first field after the command name, which is in parentheses
    // and may itself contain spaces or parentheses.
    stat.rfind(')')
        .and_then(|i| stat[i + 1..].split_whitespace().next())
        .map(str::to_string)
}

/// Sends `signal` to `pid`; true if it was delivered.
pub fn signal(pid: u32, signal: libc::c_int) -> bool {
    let pid = libc::pid_t::try_from(pid).expect("pid fits in pid_t");
    // SAFETY: kill(2) has no memory-safety preconditions.
    unsafe { libc::kill(pid, signal) == 0 }
}

/// Sends SIGKILL to `pid`; true if the signal was delivered.
pub fn sigkill(pid: u32) -> bool {
    signal(pid, libc::SIGKILL)
}

/// Looks at `check` every [`POLL`] until it returns a value, and returns it; panics with
/// `what` (and `context()`, read then) once `deadline` has passed. The one place where
/// a test waits for a condition.
pub fn await_value<T>(
    deadline: Instant,
    what: &str,
    context: impl Fn() -> String,
    mut check: impl FnMut() -> Option<T>,
) -> T {
    loop {
        if let Some(value) = check() {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}\n{}",
            context()
        );
        std::thread::sleep(POLL);
    }
}

/// A TCP port on 127.0.0.1 that was free a moment ago.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind a port on 127.0.0.1")
        .port()
}

/// The first of `n` consecutive ports on 127.0.0.1 that were free a moment ago.
pub fn free_ports(n: u16) -> u16 {
    loop {
        let first = free_port();
        let free = (1..n).all(|i| {
            first
                .checked_add(i)
                .is_some_and(|p| std::net::TcpListener::bind(("127.0.0.1", p)).is_ok())
        });
        if free {
            return first;
        }
    }
}
