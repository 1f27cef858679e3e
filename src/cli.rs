//! Helpers for job binaries: logging set-up and the exit code contract with
//! `weir launch`.

use weir_checkpoint::CheckpointError;
use weir_connectors::ConnectorError;
use weir_runtime::error::{EXIT_PERMANENT, EXIT_RETRY};
use weir_runtime::{LogFormat, Retry, RuntimeError};

/// Sets up logging to stderr in the format that the command line (`--log-format`) or
/// `WEIR_LOG_FORMAT` asks for; `RUST_LOG` overrides the default level (`warn`).
pub fn init_logging() {
    let args: Vec<String> = std::env::args().collect();
    let env = std::env::var("WEIR_LOG_FORMAT").ok();
    init_logging_as(log_format_of(&args, env.as_deref()));
}

/// Sets up logging to stderr in `format`; `RUST_LOG` overrides the default level
/// (`warn`). JSON lines carry the thread's id (`threadId`), so that one worker's lines
/// can be told from another's.
pub fn init_logging_as(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_thread_ids(true)
            .with_current_span(false)
            .try_init(),
    };
}

/// The log format named by `--log-format F` or `--log-format=F` in `args` (the last
/// one wins), else by `env` (`WEIR_LOG_FORMAT`), else text. Logging starts before the
/// flags are parsed, so that parse errors are logged too; a value that names no format
/// is left for the flag parser to reject.
///
/// ```
/// use weir::cli::log_format_of;
/// use weir_runtime::LogFormat;
/// let args = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
/// assert_eq!(log_format_of(&args(&["job", "--log-format", "json"]), None), LogFormat::Json);
/// assert_eq!(log_format_of(&args(&["job", "--log-format=text"]), Some("json")), LogFormat::Text);
/// assert_eq!(log_format_of(&args(&["job"]), Some("json")), LogFormat::Json);
/// assert_eq!(log_format_of(&args(&["job"]), None), LogFormat::Text);
/// ```
pub fn log_format_of(args: &[String], env: Option<&str>) -> LogFormat {
    let mut named = env.map(str::to_string);
    // Only the job's own flags: what follows `--` belongs to another program.
    let own = args.iter().position(|a| a == "--").unwrap_or(args.len());
    let mut i = 0;
    while i < own {
        if let Some(v) = args[i].strip_prefix("--log-format=") {
            named = Some(v.to_string());
        } else if args[i] == "--log-format" {
            named = args.get(i + 1).cloned();
            i += 1;
        }
        i += 1;
    }
    match named.as_deref() {
        Some("json") => LogFormat::Json,
        _ => LogFormat::Text,
    }
}

/// Runs a job's main function and turns its error into a message and an exit code:
/// 0 on success, 2 when restarting cannot help (settings, input), 1 otherwise.
///
/// This is where a weir job's failures become exit codes: library code returns them as
/// values, and [`retry_of`] reads their one retry classification.
pub fn main_with<F: FnOnce() -> anyhow::Result<()>>(f: F) -> ! {
    init_logging();
    match f() {
        Ok(()) => std::process::exit(0),
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::exit(exit_code(retry_of(&e)))
        }
    }
}

/// The process exit code for a failure: [`EXIT_RETRY`] (1) when a restart from the latest
/// checkpoint may help, [`EXIT_PERMANENT`] (2) when it cannot.
pub fn exit_code(retry: Retry) -> i32 {
    match retry {
        Retry::Transient => EXIT_RETRY,
        Retry::Permanent => EXIT_PERMANENT,
    }
}

/// The retry classification of an error from a job's main function: that of the first
/// weir error in its chain, and [`Retry::Permanent`] for any other error (arguments,
/// the job's own input handling).
pub fn retry_of(e: &anyhow::Error) -> Retry {
    for cause in e.chain() {
        if let Some(r) = cause.downcast_ref::<RuntimeError>() {
            return r.retry();
        }
        if let Some(c) = cause.downcast_ref::<CheckpointError>() {
            return c.retry();
        }
        if let Some(c) = cause.downcast_ref::<ConnectorError>() {
            return c.retry();
        }
    }
    Retry::Permanent
}
