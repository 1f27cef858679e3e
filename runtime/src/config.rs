//! Job configuration: one serde struct that command-line flags, environment variables
//! and an optional TOML file all map onto.
//!
//! Precedence, lowest first: defaults ([`JobConfig::default`]), the TOML file given with
//! `--config`, environment variables (`WEIR_*`), command-line flags.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use weir_checkpoint::RestoreTarget;

use crate::error::{Result, RuntimeError};

/// How a weir binary writes its log lines to stderr.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Default)]
pub enum LogFormat {
    /// One human-readable line per event.
    #[default]
    Text,
    /// One JSON object per line, for log collectors.
    Json,
}

/// The delivery guarantee of a job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Delivery {
    /// Sources replay from the checkpoint; sink output becomes visible only once the
    /// checkpoint that covers it is complete. After a crash: no loss, no duplicates.
    #[default]
    ExactlyOnce,
    /// Sources replay from the checkpoint; sinks publish each epoch as soon as it ends.
    /// After a crash: no loss; output of epochs after the checkpoint may repeat.
    AtLeastOnce,
    /// Sources never replay: a read position is made durable before its records are
    /// processed; sinks publish at once. After a crash: no duplicates; records in flight
    /// are lost.
    AtMostOnce,
}

impl std::fmt::Display for Delivery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Delivery::ExactlyOnce => "exactly-once",
            Delivery::AtLeastOnce => "at-least-once",
            Delivery::AtMostOnce => "at-most-once",
        })
    }
}

/// Everything a job needs to know to run, checkpoint and restore.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case", default)]
pub struct JobConfig {
    /// The job's name: checkpoints live under `<checkpoint-url>/<job>/`.
    pub job: String,
    /// The delivery guarantee.
    pub delivery: Delivery,
    /// Where checkpoints go: a path, `file:///path`, `memory://` or `s3://bucket/prefix`.
    pub checkpoint_url: String,
    /// Epoch length and checkpoint interval in milliseconds; 0 turns checkpointing off.
    pub checkpoint_interval_ms: u64,
    /// A snapshot upload slower than this fails its checkpoint.
    pub checkpoint_timeout_ms: u64,
    /// Minimum time between two checkpoint barriers; the effective interval is the larger
    /// of this and `checkpoint-interval-ms`.
    pub min_pause_ms: u64,
    /// How many checkpoints' snapshots may be in flight at once in a process: still
    /// being encoded off the barrier, or uploaded. While that many are, the next barrier
    /// waits (records keep flowing; the open epoch lasts longer), so that a slow store,
    /// or an operator whose state changed faster than it can encode, is not handed ever
    /// more checkpoints at once. A barrier that the sources had already sent before an
    /// operator began its snapshot is not held back: an operator that falls behind can
    /// still take two snapshots in a row. At least 1.
    pub max_concurrent_checkpoints: u32,
    /// How many complete checkpoints to keep (at least one).
    pub retain: usize,
    /// How many checkpoints in a row may fail before the job fails.
    pub tolerable_failed_checkpoints: u32,
    /// Restore from `latest` or a checkpoint epoch; `None` starts from the beginning.
    pub restore: Option<RestoreTarget>,
    /// The number of key groups keyed state is split into: the maximum parallelism.
    /// Fixed at the job's first start.
    pub key_groups: u32,
    /// Checkpoint keyed state incrementally: each checkpoint uploads only the entries
    /// changed since the previous one (plus a few key groups' new bases); `false` uploads
    /// every worker's whole state at every checkpoint in which it changed.
    pub incremental_checkpoints: bool,
    /// A key group gets a new base once the deltas written since its base exceed this
    /// fraction of the base's size: lower means more upload, higher means more to read
    /// at restore.
    pub compaction_ratio: f64,
    /// Worker threads per process.
    pub workers: usize,
    /// Processes in the cluster.
    pub processes: usize,
    /// This process's index in the cluster.
    pub process: usize,
    /// A file with one `host:port` line per process (the alternative to `peers`).
    pub hostfile: Option<PathBuf>,
    /// Every process's `host:port`, in process order; this process listens on its own
    /// entry's port. Needed when `processes` > 1, unless `hostfile` is given.
    pub peers: Vec<String>,
    /// A peer that sends no heartbeat for this long is taken for lost, and the process
    /// fails (a supervisor then restarts the cluster).
    pub peer_timeout_ms: u64,
    /// How long a process waits at start for every peer to be reachable.
    pub start_timeout_ms: u64,
    /// A job whose last this-many generations failed without completing a checkpoint
    /// is not started again (exit code 2); 0 never gives up.
    pub max_failed_generations: u32,
    /// Serve Prometheus metrics on `http://<this>/metrics` (`HOST:PORT`); off when
    /// `None`.
    pub metrics_addr: Option<String>,
    /// When the run ends, write its final metrics to this file as Prometheus text (for
    /// bounded jobs, and node_exporter's textfile collector); process `I` of a cluster
    /// writes `<file>.I`. Off when `None`.
    #[serde(default)]
    pub metrics_file: Option<std::path::PathBuf>,
    /// The oldest generation this run may take; `None` derives it from the store. The
    /// run claims a generation at least this new in the store (in a cluster, agreed
    /// with the peers).
    pub generation: Option<u64>,
}

impl Default for JobConfig {
    fn default() -> Self {
        JobConfig {
            job: "weir-job".into(),
            delivery: Delivery::ExactlyOnce,
            checkpoint_url: "./weir-checkpoints".into(),
            checkpoint_interval_ms: 1000,
            checkpoint_timeout_ms: 60_000,
            min_pause_ms: 0,
            max_concurrent_checkpoints: 2,
            retain: 3,
            tolerable_failed_checkpoints: 3,
            restore: None,
            key_groups: 128,
            incremental_checkpoints: true,
            compaction_ratio: 0.5,
            workers: 1,
            processes: 1,
            process: 0,
            hostfile: None,
            peers: Vec::new(),
            peer_timeout_ms: 10_000,
            start_timeout_ms: 60_000,
            metrics_addr: None,
            metrics_file: None,
            max_failed_generations: 10,
            generation: None,
        }
    }
}

impl JobConfig {
    /// The job `job` with checkpoints under `checkpoint_url` (a directory, `file://`,
    /// `s3://` or `memory://` URL) and the other settings at their defaults: one worker,
    /// exactly-once delivery, a checkpoint every second.
    pub fn new(job: &str, checkpoint_url: &str) -> Self {
        JobConfig {
            job: job.into(),
            checkpoint_url: checkpoint_url.into(),
            ..Default::default()
        }
    }

    /// With `workers` worker threads in this process.
    pub fn workers(self, workers: usize) -> Self {
        JobConfig { workers, ..self }
    }

    /// One worker thread, checkpoints in memory: the shortcut for tests and examples.
    pub fn thread(job: &str) -> Self {
        JobConfig {
            job: job.into(),
            checkpoint_url: "memory://".into(),
            checkpoint_interval_ms: 50,
            ..Default::default()
        }
    }

    /// Whether checkpoints are taken.
    pub fn checkpointing(&self) -> bool {
        self.checkpoint_interval_ms > 0
    }

    /// The effective epoch length.
    pub fn epoch_ms(&self) -> u64 {
        self.checkpoint_interval_ms.max(self.min_pause_ms)
    }

    /// Checks the settings against each other.
    pub fn validate(&self) -> Result<()> {
        if self.job.is_empty() || self.job.contains('/') || self.job.starts_with('.') {
            return Err(RuntimeError::config(
                "job",
                format!(
                    "`{}` must be non-empty, contain no `/` and not start with `.`",
                    self.job
                ),
            ));
        }
        if self.workers == 0 {
            return Err(RuntimeError::config("workers", "must be at least 1"));
        }
        if self.processes == 0 || self.process >= self.processes {
            return Err(RuntimeError::config(
                "process",
                format!("process {} is not in 0..{}", self.process, self.processes),
            ));
        }
        if self.processes > 1 && self.hostfile.is_none() && self.peers.is_empty() {
            return Err(RuntimeError::config(
                "peers",
                "a cluster of several processes needs --peers HOST:PORT,... (or --hostfile, or `weir launch`)",
            ));
        }
        if !self.peers.is_empty() && self.peers.len() != self.processes {
            return Err(RuntimeError::config(
                "peers",
                format!(
                    "{} peers are listed for {} processes; the process count is the length of the peer list",
                    self.peers.len(),
                    self.processes
                ),
            ));
        }
        if self.peer_timeout_ms < 100 {
            return Err(RuntimeError::config(
                "peer-timeout-ms",
                "must be at least 100 ms",
            ));
        }
        if self.key_groups == 0 || (self.key_groups as usize) < self.workers * self.processes {
            return Err(RuntimeError::config(
                "key-groups",
                format!(
                    "{} key groups cannot be spread over {} workers; raise --key-groups",
                    self.key_groups,
                    self.workers * self.processes
                ),
            ));
        }
        if self.max_concurrent_checkpoints == 0 {
            return Err(RuntimeError::config(
                "max-concurrent-checkpoints",
                "must be at least 1 (the checkpoint being uploaded)",
            ));
        }
        if !(self.compaction_ratio.is_finite() && self.compaction_ratio > 0.0) {
            return Err(RuntimeError::config(
                "compaction-ratio",
                format!(
                    "{} is not a positive number; 0.5 writes a key group's new base once its deltas reach half its size",
                    self.compaction_ratio
                ),
            ));
        }
        if self.restore.is_some() && !self.checkpointing() {
            return Err(RuntimeError::config(
                "restore",
                "restoring needs checkpointing: set --checkpoint-interval-ms above 0",
            ));
        }
        Ok(())
    }

    /// The timely worker settings.
    pub fn timely_worker(&self) -> timely::WorkerConfig {
        timely::WorkerConfig::default()
    }

    /// The timely configuration of a single process (a cluster is formed by
    /// `crate::cluster`).
    pub fn timely(&self) -> timely::Config {
        if self.workers == 1 {
            timely::Config::thread()
        } else {
            timely::Config::process(self.workers)
        }
    }

    /// Every process's `host:port`: the peer list, or the host file's lines.
    pub fn addresses(&self) -> Result<Vec<String>> {
        if !self.peers.is_empty() {
            return Ok(self.peers.clone());
        }
        let Some(hostfile) = self.hostfile.as_ref() else {
            return Err(RuntimeError::config(
                "peers",
                "a cluster of several processes needs --peers HOST:PORT,... (or --hostfile)",
            ));
        };
        let text = std::fs::read_to_string(hostfile).map_err(|e| {
            RuntimeError::config(
                "hostfile",
                format!("cannot read {}: {e}", hostfile.display()),
            )
        })?;
        let addresses: Vec<String> = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(String::from)
            .collect();
        if addresses.len() != self.processes {
            return Err(RuntimeError::config(
                "hostfile",
                format!(
                    "{} lists {} addresses for {} processes",
                    hostfile.display(),
                    addresses.len(),
                    self.processes
                ),
            ));
        }
        Ok(addresses)
    }
}

/// Command-line flags and environment variables of every weir job binary.
///
/// Flatten it into a job's own `clap::Parser` and call [`JobArgs::into_config`].
#[derive(Debug, Clone, Default, clap::Args)]
pub struct JobArgs {
    /// Log lines as text or as JSON objects, one per line (read before the other flags,
    /// by `weir::cli::main_with`).
    #[arg(long, env = "WEIR_LOG_FORMAT", value_enum)]
    pub log_format: Option<LogFormat>,
    /// A TOML file with job settings (keys as in `JobConfig`, kebab-case).
    #[arg(long, env = "WEIR_CONFIG")]
    pub config: Option<PathBuf>,
    /// The job's name.
    #[arg(long, env = "WEIR_JOB")]
    pub job: Option<String>,
    /// Delivery guarantee.
    #[arg(long, env = "WEIR_DELIVERY", value_enum)]
    pub delivery: Option<Delivery>,
    /// Checkpoint URL: a path, file:///path, memory:// or s3://bucket/prefix.
    #[arg(
        long = "checkpoint-dir",
        alias = "checkpoint-url",
        env = "WEIR_CHECKPOINT_URL"
    )]
    pub checkpoint_url: Option<String>,
    /// Checkpoint interval (epoch length) in ms; 0 turns checkpointing off.
    #[arg(long, env = "WEIR_CHECKPOINT_INTERVAL_MS")]
    pub checkpoint_interval_ms: Option<u64>,
    /// Checkpoint upload timeout in ms.
    #[arg(long, env = "WEIR_CHECKPOINT_TIMEOUT_MS")]
    pub checkpoint_timeout_ms: Option<u64>,
    /// Minimum pause between checkpoint barriers in ms.
    #[arg(long, env = "WEIR_MIN_PAUSE_MS")]
    pub min_pause_ms: Option<u64>,
    /// Checkpoints whose snapshots may be encoding or uploading at once; the next
    /// barrier waits for the oldest.
    #[arg(long, env = "WEIR_MAX_CONCURRENT_CHECKPOINTS")]
    pub max_concurrent_checkpoints: Option<u32>,
    /// Complete checkpoints to retain.
    #[arg(long, env = "WEIR_RETAIN")]
    pub retain: Option<usize>,
    /// Consecutive failed checkpoints tolerated before the job fails.
    #[arg(long, env = "WEIR_TOLERABLE_FAILED_CHECKPOINTS")]
    pub tolerable_failed_checkpoints: Option<u32>,
    /// Restore from `latest` or a checkpoint epoch.
    #[arg(long, env = "WEIR_RESTORE")]
    pub restore: Option<RestoreTarget>,
    /// Number of key groups (maximum parallelism), fixed at the job's first start.
    #[arg(long, env = "WEIR_KEY_GROUPS")]
    pub key_groups: Option<u32>,
    /// Checkpoint keyed state incrementally (true) or whole (false).
    #[arg(long, env = "WEIR_INCREMENTAL_CHECKPOINTS", action = clap::ArgAction::Set)]
    pub incremental_checkpoints: Option<bool>,
    /// A key group gets a new base once its deltas exceed this fraction of its base.
    #[arg(long, env = "WEIR_COMPACTION_RATIO")]
    pub compaction_ratio: Option<f64>,
    /// Worker threads per process.
    #[arg(long, short = 'w', env = "WEIR_WORKERS")]
    pub workers: Option<usize>,
    /// Processes in the cluster (set by `weir launch`).
    #[arg(long)]
    pub processes: Option<usize>,
    /// This process's index (set by `weir launch`).
    #[arg(long)]
    pub process: Option<usize>,
    /// Host file with one host:port per process (set by `weir launch`).
    #[arg(long)]
    pub hostfile: Option<PathBuf>,
    /// The oldest generation this run may take (not needed: without it, the processes
    /// claim one through the checkpoint store and agree on it in their handshake).
    #[arg(long)]
    pub generation: Option<u64>,
    /// Every process's host:port, in process order, comma-separated: the process count
    /// is the length of the list.
    #[arg(long, env = "WEIR_PEERS", value_delimiter = ',')]
    pub peers: Option<Vec<String>>,
    /// This process's index in --peers. Without it, the index is taken from a host name
    /// ending in `-N` (a Kubernetes StatefulSet pod, `$HOSTNAME`).
    #[arg(long, env = "WEIR_PROCESS_INDEX")]
    pub process_index: Option<usize>,
    /// A peer silent for this long (no heartbeat) ends every process with exit code 1.
    #[arg(long, env = "WEIR_PEER_TIMEOUT_MS")]
    pub peer_timeout_ms: Option<u64>,
    /// How long to wait at start for every peer to be reachable.
    #[arg(long, env = "WEIR_START_TIMEOUT_MS")]
    pub start_timeout_ms: Option<u64>,
    /// Give up (exit code 2) once this many generations in a row failed without
    /// completing a checkpoint; 0 never gives up.
    #[arg(long, env = "WEIR_MAX_FAILED_GENERATIONS")]
    pub max_failed_generations: Option<u32>,
    /// Serve Prometheus metrics on http://HOST:PORT/metrics.
    #[arg(long, env = "WEIR_METRICS_ADDR")]
    pub metrics_addr: Option<String>,
    /// When the run ends, write its final metrics to this file as Prometheus text
    /// (process I of a cluster writes FILE.I).
    #[arg(long, env = "WEIR_METRICS_FILE")]
    pub metrics_file: Option<std::path::PathBuf>,
}

impl JobArgs {
    /// Builds the configuration: defaults, then the TOML file, then these flags.
    pub fn into_config(self, default_job: &str) -> Result<JobConfig> {
        let mut c = match &self.config {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|e| {
                    RuntimeError::config("config", format!("cannot read {}: {e}", path.display()))
                })?;
                toml::from_str(&text).map_err(|e| {
                    RuntimeError::config("config", format!("{}: {e}", path.display()))
                })?
            }
            None => JobConfig {
                job: default_job.into(),
                ..Default::default()
            },
        };
        macro_rules! set {
            ($($f:ident),*) => { $( if let Some(v) = self.$f { c.$f = v; } )* };
        }
        set!(
            job,
            delivery,
            checkpoint_url,
            checkpoint_interval_ms,
            checkpoint_timeout_ms,
            min_pause_ms,
            max_concurrent_checkpoints,
            retain,
            tolerable_failed_checkpoints,
            key_groups,
            incremental_checkpoints,
            compaction_ratio,
            workers,
            processes,
            process,
            peer_timeout_ms,
            start_timeout_ms,
            max_failed_generations
        );
        if let Some(peers) = self.peers {
            let peers: Vec<String> = peers
                .iter()
                .map(|p| p.trim().to_string())
                .filter(|p| !p.is_empty())
                .collect();
            let index = match self.process_index {
                Some(i) => i,
                None => {
                    let host = std::env::var("HOSTNAME").unwrap_or_default();
                    crate::cluster::index_from_host_name(&host).ok_or_else(|| {
                        RuntimeError::config(
                            "process-index",
                            format!("--peers lists {} processes: give this process's index with --process-index (or WEIR_PROCESS_INDEX), or run it on a host whose name ends in -N (HOSTNAME is `{host}`)", peers.len()),
                        )
                    })?
                }
            };
            if index >= peers.len() {
                return Err(RuntimeError::config(
                    "process-index",
                    format!(
                        "process index {index} is outside the peer list of {} processes ({})",
                        peers.len(),
                        peers.join(",")
                    ),
                ));
            }
            c.processes = peers.len();
            c.process = index;
            c.peers = peers;
        } else if self.process_index.is_some() {
            return Err(RuntimeError::config(
                "process-index",
                "--process-index needs --peers (every process's host:port)",
            ));
        }
        if self.restore.is_some() {
            c.restore = self.restore;
        }
        if self.metrics_addr.is_some() {
            c.metrics_addr = self.metrics_addr;
        }
        if self.metrics_file.is_some() {
            c.metrics_file = self.metrics_file;
        }
        if self.hostfile.is_some() {
            c.hostfile = self.hostfile;
        }
        if self.generation.is_some() {
            c.generation = self.generation;
        }
        c.validate()?;
        Ok(c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn toml_file_and_flags_map_onto_one_struct() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("job.toml");
        std::fs::write(&file, "job = \"wc\"\ndelivery = \"at-least-once\"\ncheckpoint-interval-ms = 250\nrestore = \"latest\"\n").unwrap();
        let args = JobArgs {
            config: Some(file),
            workers: Some(2),
            ..Default::default()
        };
        let c = args.into_config("ignored").unwrap();
        assert_eq!(c.job, "wc");
        assert_eq!(c.delivery, Delivery::AtLeastOnce);
        assert_eq!(c.checkpoint_interval_ms, 250);
        assert_eq!(c.restore, Some(RestoreTarget::Latest));
        assert_eq!(c.workers, 2);
    }

    #[test]
    fn unknown_keys_in_the_file_are_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("job.toml");
        std::fs::write(&file, "checkpoint-intervall-ms = 5\n").unwrap();
        let err = JobArgs {
            config: Some(file),
            ..Default::default()
        }
        .into_config("j")
        .unwrap_err()
        .to_string();
        assert!(err.contains("checkpoint-intervall-ms"), "{err}");
    }

    #[test]
    fn a_cluster_without_hostfile_is_rejected() {
        let err = JobArgs {
            processes: Some(2),
            ..Default::default()
        }
        .into_config("j")
        .unwrap_err()
        .to_string();
        assert!(err.contains("hostfile"), "{err}");
    }

    #[test]
    fn restore_without_checkpointing_is_rejected() {
        let args = JobArgs {
            restore: Some(RestoreTarget::Latest),
            checkpoint_interval_ms: Some(0),
            ..Default::default()
        };
        assert!(args
            .into_config("j")
            .unwrap_err()
            .to_string()
            .contains("restore"));
    }

    #[test]
    fn checkpoints_in_flight_come_from_the_file_or_the_flag_and_zero_is_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("job.toml");
        std::fs::write(&file, "max-concurrent-checkpoints = 3\n").unwrap();
        let from_file = JobArgs {
            config: Some(file),
            ..Default::default()
        };
        assert_eq!(
            from_file
                .into_config("j")
                .unwrap()
                .max_concurrent_checkpoints,
            3
        );
        assert_eq!(JobConfig::default().max_concurrent_checkpoints, 2);
        let err = JobArgs {
            max_concurrent_checkpoints: Some(0),
            ..Default::default()
        }
        .into_config("j")
        .unwrap_err()
        .to_string();
        assert!(err.contains("max-concurrent-checkpoints"), "{err}");
    }
}
