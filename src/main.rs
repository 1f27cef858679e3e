//! The `weir` command-line tool: launch and supervise a job cluster, inspect and delete
//! checkpoints.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use weir_checkpoint::store::Status;
use weir_checkpoint::{CheckpointStore, Epoch};
use weir_runtime::launch::{launch, LaunchOptions, Outcome};
use weir_runtime::LogFormat;

weir::global_allocator!();

#[derive(Parser, Debug)]
#[command(
    name = "weir",
    version,
    about = "Exactly-once checkpointing dataflow: launch jobs, inspect checkpoints"
)]
struct Cli {
    /// Log lines as text or as JSON objects, one per line.
    #[arg(long, global = true, env = "WEIR_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Starts a job as a cluster of processes and restarts it from its latest checkpoint
    /// whenever a process dies.
    Launch {
        /// Processes in the cluster.
        #[arg(long, default_value_t = 1)]
        processes: usize,
        /// Worker threads per process.
        #[arg(long, default_value_t = 1)]
        workers: usize,
        /// Restarts before giving up.
        #[arg(long, default_value_t = 10)]
        max_restarts: u32,
        /// Delay before the first restart in ms; it doubles on each restart.
        #[arg(long, default_value_t = 100)]
        restart_delay_ms: u64,
        /// Upper bound of the restart delay in ms.
        #[arg(long, default_value_t = 10_000)]
        max_restart_delay_ms: u64,
        /// Serve each process's Prometheus metrics: process I on HOST and PORT + I.
        #[arg(long, value_name = "HOST:PORT")]
        metrics_addr: Option<String>,
        /// Serve the job's dashboard (see `weir dashboard`) here while it runs; the
        /// processes then serve metrics, on free ports unless --metrics-addr is given.
        #[arg(long, value_name = "HOST:PORT")]
        dashboard: Option<String>,
        /// The job binary and its arguments, after `--`.
        #[arg(last = true, required = true, value_name = "BINARY [ARGS]")]
        command: Vec<String>,
    },
    /// Stops a running job with a final savepoint: its sources stop reading, its last
    /// checkpoint completes and is copied to the savepoint, and the job exits 0. Restore
    /// it later with `--restore savepoint:NAME`, at any number of workers.
    Stop {
        #[command(flatten)]
        target: Target,
        /// The final savepoint's name; it must not exist yet.
        #[arg(long)]
        savepoint: String,
        /// Return once the request is written, without waiting for the savepoint.
        #[arg(long)]
        no_wait: bool,
        /// How long to wait for the savepoint, in seconds.
        #[arg(long, default_value_t = 300)]
        timeout_secs: u64,
    },
    /// Serves a page and a JSON API over a job's checkpoint history and its processes'
    /// metrics: `/`, `/api/job`, `/api/checkpoints`, `/api/metrics`.
    Dashboard {
        #[command(flatten)]
        target: Target,
        /// Where to serve the page.
        #[arg(long, default_value = "127.0.0.1:8080")]
        addr: String,
        /// The metrics endpoints of the job's processes (`http://host:port/metrics`),
        /// comma-separated.
        #[arg(long, value_delimiter = ',')]
        metrics: Vec<String>,
    },
    /// Lists, shows and deletes checkpoints.
    Checkpoints {
        #[command(subcommand)]
        command: Checkpoints,
    },
}

#[derive(clap::Args, Debug)]
struct Target {
    /// Checkpoint URL (path, file://, memory://, s3://bucket/prefix).
    #[arg(
        long = "checkpoint-dir",
        alias = "checkpoint-url",
        env = "WEIR_CHECKPOINT_URL"
    )]
    url: String,
    /// The job's name.
    #[arg(long, env = "WEIR_JOB")]
    job: String,
}

#[derive(Subcommand, Debug)]
enum Checkpoints {
    /// Lists the job's checkpoints and savepoints: epoch, status (complete,
    /// uncommitted, abandoned, incomplete, unreadable), workers, generation, bytes and
    /// sink outputs.
    List {
        #[command(flatten)]
        target: Target,
        /// Print a JSON array, one object per checkpoint or savepoint.
        #[arg(long)]
        json: bool,
    },
    /// Shows one checkpoint's manifest (as JSON).
    Show {
        #[command(flatten)]
        target: Target,
        /// The checkpoint's epoch.
        epoch: u64,
        /// Print one JSON object: the checkpoint's entry in `list --json`, with its
        /// manifest under `manifest`.
        #[arg(long)]
        json: bool,
    },
    /// Deletes one checkpoint, a savepoint, or all of the job's state with --all.
    Delete {
        #[command(flatten)]
        target: Target,
        /// The checkpoint's epoch.
        epoch: Option<u64>,
        /// Delete this savepoint instead of a checkpoint.
        #[arg(long, conflicts_with = "epoch")]
        savepoint: Option<String>,
        /// Delete every checkpoint, savepoint, generation marker and ledger of the job.
        #[arg(long)]
        all: bool,
    },
    /// Copies a complete checkpoint to a named savepoint, which retention never deletes;
    /// restore it with `--restore savepoint:NAME`, at any number of workers.
    Savepoint {
        #[command(flatten)]
        target: Target,
        /// The savepoint's name.
        #[arg(long)]
        name: String,
        /// The checkpoint to copy (default: the newest that verifies).
        #[arg(long)]
        epoch: Option<u64>,
    },
}

fn checkpoints(cmd: Checkpoints) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        match cmd {
            Checkpoints::List { target, json } => {
                let store = CheckpointStore::open(&target.url, &target.job)?;
                let history = store.history().await?;
                if json {
                    println!("{}", serde_json::to_string_pretty(&history)?);
                    return Ok(());
                }
                println!(
                    "{:>8}  {:>11}  {:>7}  {:>5}  {:>12}  {:>7}",
                    "epoch", "status", "workers", "gen", "bytes", "outputs"
                );
                let shown = |v: Option<String>| v.unwrap_or_else(|| "-".into());
                for c in history.iter().filter(|c| c.status != Status::Savepoint) {
                    println!(
                        "{:>8}  {:>11}  {:>7}  {:>5}  {:>12}  {:>7}{}",
                        c.epoch,
                        c.status.as_str(),
                        shown(c.workers.map(|w| w.to_string())),
                        shown(c.generation.map(|g| g.to_string())),
                        shown(c.bytes.map(|b| b.to_string())),
                        c.outputs.values().sum::<usize>(),
                        c.error.as_deref().map(|e| format!("  {e}")).unwrap_or_default()
                    );
                }
                for c in history.iter().filter(|c| c.status == Status::Savepoint) {
                    let name = c.name.as_deref().unwrap_or("?");
                    match &c.error {
                        None => println!(
                            "savepoint {name}: epoch {}, {} workers, generation {}, {} bytes, {} outputs",
                            c.epoch,
                            shown(c.workers.map(|w| w.to_string())),
                            shown(c.generation.map(|g| g.to_string())),
                            shown(c.bytes.map(|b| b.to_string())),
                            c.outputs.values().sum::<usize>()
                        ),
                        Some(e) => println!("savepoint {name}: unreadable: {e}"),
                    }
                }
            }
            Checkpoints::Show { target, epoch, json } => {
                let store = CheckpointStore::open(&target.url, &target.job)?;
                let m = store.read_manifest(Epoch(epoch)).await?;
                if json {
                    let info = store
                        .history()
                        .await?
                        .into_iter()
                        .find(|c| c.epoch == m.epoch && c.status != Status::Savepoint);
                    let mut value = serde_json::to_value(&info)?;
                    if let Some(object) = value.as_object_mut() {
                        object.insert("manifest".into(), serde_json::to_value(&m)?);
                    }
                    println!("{}", serde_json::to_string(&value)?);
                } else {
                    println!("{}", serde_json::to_string_pretty(&m)?);
                }
            }
            Checkpoints::Delete { target, epoch, savepoint, all } => {
                let store = CheckpointStore::open(&target.url, &target.job)?;
                match (epoch, savepoint, all) {
                    (_, _, true) => store.delete_job().await?,
                    (Some(e), None, false) => match store.remove_checkpoint(Epoch(e)).await? {
                        weir_checkpoint::store::Removed::Deleted => {}
                        weir_checkpoint::store::Removed::ManifestOnly { referenced_by } => {
                            let by: Vec<String> = referenced_by.iter().map(|e| e.to_string()).collect();
                            println!(
                                "checkpoint {e} is no longer a checkpoint; its parts stay while checkpoints {} reuse them (retention deletes them after)",
                                by.join(", ")
                            );
                        }
                    },
                    (None, Some(name), false) => store.delete_savepoint(&name).await?,
                    _ => anyhow::bail!("name a checkpoint epoch or a --savepoint to delete, or pass --all"),
                }
            }
            Checkpoints::Savepoint { target, name, epoch } => {
                let store = CheckpointStore::open(&target.url, &target.job)?;
                let m = store.create_savepoint(&name, epoch.map(Epoch)).await?;
                println!("savepoint {name}: copy of checkpoint {} ({} parts, {} bytes)", m.epoch, m.parts.len(), m.total_bytes());
            }
        }
        Ok(())
    })
}

fn stop(target: Target, savepoint: String, wait: bool, timeout: Duration) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let store = CheckpointStore::open(&target.url, &target.job)?;
        match store.read_savepoint(&savepoint).await {
            Err(weir_checkpoint::CheckpointError::SavepointNotFound { .. }) => {}
            Ok(m) => anyhow::bail!(
                "savepoint `{savepoint}` of job `{}` exists already (epoch {}); choose another name or delete it with `weir checkpoints delete --savepoint {savepoint}`",
                target.job,
                m.epoch
            ),
            Err(e) => return Err(e.into()),
        }
        store.request_stop(&savepoint).await?;
        eprintln!("weir stop: asked job `{}` to stop with savepoint `{savepoint}`", target.job);
        if !wait {
            return Ok(());
        }
        let deadline = std::time::Instant::now() + timeout;
        loop {
            if store.stop_request().await?.is_none() {
                let m = store.read_savepoint(&savepoint).await.with_context(|| {
                    format!("the stop request was cleared but savepoint `{savepoint}` cannot be read")
                })?;
                println!("savepoint {savepoint}: epoch {}, {} workers, {} bytes", m.epoch, m.workers, m.total_bytes());
                return Ok(());
            }
            anyhow::ensure!(
                std::time::Instant::now() < deadline,
                "job `{}` did not stop within {timeout:?}; is it running with --checkpoint-dir {}? The request stays in place (it is carried out when the job next runs); remove it with `weir checkpoints delete --all` only if you mean to drop the job",
                target.job,
                target.url
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
}

fn dashboard(target: Target, addr: String, metrics: Vec<String>) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let options = weir::dashboard::Options {
        checkpoint_url: target.url,
        job: target.job,
        metrics,
    };
    rt.block_on(async {
        // Problems are reported here and on the page, which shows them until they clear.
        for problem in weir::dashboard::check(&options).await {
            eprintln!("weir dashboard: {problem}");
        }
        let listener = tokio::net::TcpListener::bind(&addr)
            .await
            .with_context(|| format!("cannot listen on {addr} (--addr)"))?;
        eprintln!(
            "weir dashboard: job `{}` at http://{}/",
            options.job,
            listener.local_addr()?
        );
        axum::serve(listener, weir::dashboard::router(options)).await?;
        Ok(())
    })
}

/// The first of `n` consecutive ports that are free now on 127.0.0.1.
fn free_port_run(n: usize) -> anyhow::Result<u16> {
    for _ in 0..100 {
        let first = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let free = (1..n).all(|i| {
            (first as usize + i) <= u16::MAX as usize
                && std::net::TcpListener::bind(("127.0.0.1", first + i as u16)).is_ok()
        });
        if free {
            return Ok(first);
        }
    }
    anyhow::bail!("found no {n} consecutive free ports for the metrics; give --metrics-addr")
}

/// Serves the dashboard of the launched job from a thread of its own.
fn serve_dashboard_in_background(
    addr: &str,
    binary: &str,
    args: &[String],
    metrics: Vec<String>,
) -> anyhow::Result<()> {
    let (checkpoint_url, job) =
        weir::dashboard::job_target(args, binary, |k| std::env::var(k).ok()).ok_or_else(|| {
            anyhow::anyhow!(
                "weir launch --dashboard needs the job's --checkpoint-dir (or WEIR_CHECKPOINT_URL)"
            )
        })?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    let listener = rt
        .block_on(tokio::net::TcpListener::bind(addr))
        .with_context(|| format!("cannot listen on {addr} (--dashboard)"))?;
    eprintln!(
        "weir launch: dashboard of job `{job}` at http://{}/",
        listener.local_addr()?
    );
    let options = weir::dashboard::Options {
        checkpoint_url,
        job,
        metrics,
    };
    std::thread::Builder::new()
        .name("weir-dashboard".into())
        .spawn(move || {
            rt.block_on(async move {
                if let Err(e) = axum::serve(listener, weir::dashboard::router(options)).await {
                    eprintln!("weir launch: the dashboard stopped: {e}");
                }
            })
        })?;
    Ok(())
}

fn main() {
    weir::cli::main_with(|| {
        let cli = Cli::parse();
        match cli.command {
            Command::Launch {
                processes,
                workers,
                max_restarts,
                restart_delay_ms,
                max_restart_delay_ms,
                metrics_addr,
                dashboard,
                command,
            } => {
                // The dashboard and the progress bar (shown only on a terminal) read the
                // processes' metrics.
                let terminal = std::io::IsTerminal::is_terminal(&std::io::stderr());
                let metrics_addr = match (&metrics_addr, dashboard.is_some() || terminal) {
                    (None, true) => Some(format!("127.0.0.1:{}", free_port_run(processes)?)),
                    _ => metrics_addr,
                };
                let metrics = match metrics_addr {
                    Some(addr) => {
                        let (host, port) = addr.rsplit_once(':').ok_or_else(|| {
                            anyhow::anyhow!("--metrics-addr `{addr}` is not HOST:PORT")
                        })?;
                        let port: u16 = port.parse().with_context(|| {
                            format!("--metrics-addr `{addr}`: the port is not a number")
                        })?;
                        Some((host.to_string(), port))
                    }
                    None => None,
                };
                let binary = PathBuf::from(&command[0]);
                let args = command[1..].to_vec();
                anyhow::ensure!(
                    processes >= 1 && workers >= 1,
                    "--processes and --workers must be at least 1"
                );
                let urls: Vec<String> = match &metrics {
                    Some((host, port)) => (0..processes)
                        .map(|i| format!("http://{host}:{}/metrics", *port as usize + i))
                        .collect(),
                    None => Vec::new(),
                };
                if let Some(addr) = dashboard {
                    serve_dashboard_in_background(&addr, &command[0], &command[1..], urls.clone())?;
                }
                let progress = if terminal {
                    Some(weir::progress::show(urls)?)
                } else {
                    None
                };
                let opts = LaunchOptions {
                    processes,
                    workers,
                    max_restarts,
                    restart_delay: Duration::from_millis(restart_delay_ms),
                    max_restart_delay: Duration::from_millis(max_restart_delay_ms),
                    binary: binary.clone(),
                    args,
                    metrics,
                };
                let outcome = launch(&opts);
                if let Some(p) = progress {
                    p.finish();
                }
                match outcome.with_context(|| format!("cannot launch {}", binary.display()))? {
                    Outcome::Finished { restarts } => {
                        eprintln!("weir launch: job finished after {restarts} restart(s)");
                        Ok(())
                    }
                    Outcome::Permanent { reason } => {
                        eprintln!("weir launch: {reason}; the failure is in the job's settings or input, so it is not restarted");
                        std::process::exit(2)
                    }
                    Outcome::GaveUp { restarts, reason } => {
                        anyhow::bail!("gave up after {restarts} restarts (--max-restarts {max_restarts}); last failure: {reason}")
                    }
                }
            }
            Command::Stop {
                target,
                savepoint,
                no_wait,
                timeout_secs,
            } => stop(
                target,
                savepoint,
                !no_wait,
                Duration::from_secs(timeout_secs),
            ),
            Command::Checkpoints { command } => checkpoints(command),
            Command::Dashboard {
                target,
                addr,
                metrics,
            } => dashboard(target, addr, metrics),
        }
    })
}
