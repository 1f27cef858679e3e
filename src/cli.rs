//! Helpers for job binaries: logging set-up and the exit code contract with
//! `weir launch`.

use weir_checkpoint::CheckpointError;
use weir_connectors::ConnectorError;
use weir_runtime::error::{EXIT_PERMANENT, EXIT_RETRY};
use weir_runtime::{Retry, RuntimeError};

/// Sets up logging to stderr; `RUST_LOG` overrides the default level (`warn`).
pub fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
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
