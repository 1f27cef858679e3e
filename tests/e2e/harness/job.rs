//! The wordcount job's command line, and running it standalone.

use std::process::Command;
use std::time::Duration;

use super::bins;
use super::process::{run_to_end, Finished};
use super::workspace::{path_str, Workspace};

/// How long a standalone run may take before it is killed and the test fails.
pub const STANDALONE_DEADLINE: Duration = Duration::from_secs(120);

/// A delivery guarantee, as `--delivery` spells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[allow(clippy::enum_variant_names)] // the names mirror the flag values
pub enum Delivery {
    /// `exactly-once`
    ExactlyOnce,
    /// `at-least-once`
    AtLeastOnce,
    /// `at-most-once`
    AtMostOnce,
}

impl Delivery {
    /// The flag value.
    pub fn flag(self) -> &'static str {
        match self {
            Delivery::ExactlyOnce => "exactly-once",
            Delivery::AtLeastOnce => "at-least-once",
            Delivery::AtMostOnce => "at-most-once",
        }
    }
}

/// The arguments of one wordcount run.
#[derive(Debug, Clone)]
pub struct JobArgs {
    args: Vec<String>,
}

impl JobArgs {
    /// `--input`, `--output` and `--checkpoint-dir` of the workspace.
    pub fn new(ws: &Workspace) -> Self {
        JobArgs {
            args: vec![
                "--input".into(),
                path_str(&ws.input),
                "--output".into(),
                path_str(&ws.output),
                "--checkpoint-dir".into(),
                ws.checkpoint_url(),
            ],
        }
    }

    /// Only `--checkpoint-dir` of the workspace.
    pub fn checkpoints_only(ws: &Workspace) -> Self {
        JobArgs {
            args: vec!["--checkpoint-dir".into(), ws.checkpoint_url()],
        }
    }

    /// A job with a subcommand (`run`) and only `--checkpoint-dir` of the workspace.
    pub fn subcommand(name: &str, ws: &Workspace) -> Self {
        JobArgs {
            args: vec![
                name.to_string(),
                "--checkpoint-dir".into(),
                ws.checkpoint_url(),
            ],
        }
    }

    /// Replaces (or adds) `flag value`.
    pub fn set(mut self, flag: &str, value: impl ToString) -> Self {
        if let Some(i) = self.args.iter().position(|a| a == flag) {
            self.args[i + 1] = value.to_string();
        } else {
            self.args.push(flag.to_string());
            self.args.push(value.to_string());
        }
        self
    }

    /// Adds a flag without a value.
    pub fn flag(mut self, flag: &str) -> Self {
        self.args.push(flag.to_string());
        self
    }

    /// `--checkpoint-interval-ms`
    pub fn interval_ms(self, ms: u64) -> Self {
        self.set("--checkpoint-interval-ms", ms)
    }

    /// `--delivery`
    pub fn delivery(self, d: Delivery) -> Self {
        self.set("--delivery", d.flag())
    }

    /// `--workers` (standalone runs only: `weir launch` passes its own).
    pub fn workers(self, w: usize) -> Self {
        self.set("--workers", w)
    }

    /// `--restore latest` or `--restore <epoch>`.
    pub fn restore(self, what: impl ToString) -> Self {
        self.set("--restore", what)
    }

    /// `--job`
    pub fn job(self, name: &str) -> Self {
        self.set("--job", name)
    }

    /// `--retain`
    pub fn retain(self, n: u32) -> Self {
        self.set("--retain", n)
    }

    /// `--rate-limit` in lines per second per worker.
    pub fn rate_limit(self, lines_per_sec: u64) -> Self {
        self.set("--rate-limit", lines_per_sec)
    }

    /// The arguments.
    pub fn args(&self) -> &[String] {
        &self.args
    }
}

/// A `Command` for the wordcount binary with `args`, without any failpoint.
pub fn wordcount_command(args: &JobArgs) -> Command {
    let mut cmd = Command::new(bins::wordcount());
    cmd.args(args.args()).env_remove("WEIR_FAILPOINT");
    cmd
}

/// Runs the wordcount binary directly (no `weir launch`) to its end.
pub fn run_standalone(ws: &Workspace, name: &str, args: &JobArgs) -> Finished {
    run_to_end(
        wordcount_command(args),
        ws.log_paths(name),
        STANDALONE_DEADLINE,
    )
}

/// Runs the `weir` command-line tool with `args` to its end.
pub fn run_weir(ws: &Workspace, name: &str, args: &[&str]) -> Finished {
    let mut cmd = Command::new(bins::weir());
    cmd.args(args);
    run_to_end(cmd, ws.log_paths(name), Duration::from_secs(30))
}
