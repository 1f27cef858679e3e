//! The first fatal failure of a running job, shared by every worker of the process.
//!
//! ## Design
//!
//! A timely cluster cannot lose a worker and go on, so a failure that one operator cannot
//! handle (a sink that cannot write, a source that cannot read, a snapshot that cannot
//! be encoded, a coordinator that is fenced or cannot commit) ends the whole run. The
//! operator records it here and stops doing work; every worker checks the slot between
//! steps, drops its dataflow and returns, and [`crate::run`] hands the failure to its
//! caller as an `Err`. Only a binary turns it into an exit code.
//!
//! Invariants:
//! - only the first failure is kept: later ones are usually consequences of it (a peer
//!   worker's channel closing, a coordinator that lost its input) and are logged only;
//! - once a failure is recorded, the coordinator writes no manifest and commits no sink
//!   output, so that a failed run cannot complete a checkpoint it did not finish.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use crate::error::RuntimeError;

/// Where the first fatal failure of a run is recorded.
#[derive(Debug, Default)]
pub(crate) struct FailureSlot {
    failed: AtomicBool,
    first: Mutex<Option<RuntimeError>>,
}

impl FailureSlot {
    /// Records `error`, which happened in `context`; returns whether it was the first.
    pub(crate) fn record(&self, context: &str, error: RuntimeError) -> bool {
        let error = if context.is_empty() {
            error
        } else {
            error.context(context)
        };
        let mut first = self.first.lock().unwrap_or_else(|p| p.into_inner());
        if first.is_some() {
            tracing::debug!(error = %error, "a further failure after the first one");
            return false;
        }
        tracing::error!(error = %error, "the job failed; every worker stops");
        *first = Some(error);
        self.failed.store(true, Ordering::SeqCst);
        true
    }

    /// Whether a failure has been recorded. Cheap: workers call it between steps.
    pub(crate) fn is_failed(&self) -> bool {
        self.failed.load(Ordering::Relaxed)
    }

    /// Takes the first failure, if any.
    pub(crate) fn take(&self) -> Option<RuntimeError> {
        self.first.lock().unwrap_or_else(|p| p.into_inner()).take()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_first_failure_is_kept_with_its_context_and_retry_class() {
        let slot = FailureSlot::default();
        assert!(!slot.is_failed());
        assert!(slot.record("sink `out`", RuntimeError::config("x", "bad")));
        assert!(!slot.record("coordinator", RuntimeError::Dataflow("later".into())));
        assert!(slot.is_failed());
        let e = slot.take().expect("recorded");
        assert_eq!(e.to_string(), "sink `out`: invalid setting `x`: bad");
        assert!(e.is_permanent());
        assert!(slot.take().is_none());
    }
}
