//! The one bridge from a worker thread (or the coordinator's task) to the job's async
//! I/O runtime, shared by every connector whose client is async.

/// Runs a future on the job's I/O runtime, from a worker thread or from inside it (the
/// coordinator commits from a task on that runtime).
pub(crate) fn run<F: std::future::Future>(rt: &tokio::runtime::Handle, f: F) -> F::Output {
    if tokio::runtime::Handle::try_current().is_ok() {
        tokio::task::block_in_place(|| rt.block_on(f))
    } else {
        rt.block_on(f)
    }
}
