//! Helpers for job binaries: logging set-up and the exit code contract with
//! `weir launch`.

use weir_runtime::error::{EXIT_PERMANENT, EXIT_RETRY};
use weir_runtime::RuntimeError;

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
pub fn main_with<F: FnOnce() -> anyhow::Result<()>>(f: F) -> ! {
    init_logging();
    match f() {
        Ok(()) => std::process::exit(0),
        Err(e) => {
            eprintln!("error: {e:#}");
            let permanent = e
                .downcast_ref::<RuntimeError>()
                .is_none_or(|r| r.is_permanent());
            std::process::exit(if permanent {
                EXIT_PERMANENT
            } else {
                EXIT_RETRY
            })
        }
    }
}
