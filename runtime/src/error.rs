//! The error type of the runtime.

use weir_checkpoint::CheckpointError;
pub use weir_checkpoint::Retry;

/// Result alias for runtime operations.
pub type Result<T, E = RuntimeError> = std::result::Result<T, E>;

/// What can stop a job.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// A setting is missing, malformed or inconsistent.
    #[error("invalid setting `{setting}`: {reason}")]
    Config {
        /// The setting's name (flag or config key).
        setting: String,
        /// What is wrong and how to fix it.
        reason: String,
    },
    /// Checkpoint storage failed or holds something unusable.
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    /// A source or sink failed on its input or output.
    #[error("{operator}: {reason}")]
    Io {
        /// The operator at fault.
        operator: String,
        /// What failed, with the object and offset.
        reason: String,
    },
    /// A restore does not match the job as built now.
    #[error("checkpoint {epoch} does not match this job: {reason}")]
    Mismatch {
        /// The checkpoint.
        epoch: weir_checkpoint::Epoch,
        /// What differs.
        reason: String,
    },
    /// Checkpoints keep failing.
    #[error(
        "{failed} consecutive checkpoints failed (tolerated: {tolerated}); last error: {last}"
    )]
    TooManyFailedCheckpoints {
        /// How many failed in a row.
        failed: u32,
        /// The configured tolerance.
        tolerated: u32,
        /// The last failure.
        last: String,
    },
    /// A newer generation of this job has started; this process must stop.
    #[error("generation {generation} was superseded by generation {newer}: this process stops without committing")]
    Fenced {
        /// This process's generation.
        generation: weir_checkpoint::Generation,
        /// The newer generation seen.
        newer: weir_checkpoint::Generation,
    },
    /// A source or sink failed on its settings or data (the connector's own error, with
    /// its context); restarting does not help.
    #[error(transparent)]
    Connector(Box<dyn std::error::Error + Send + Sync + 'static>),
    /// An external system a source or sink talks to failed in a way a restart may cure
    /// (connection refused or lost, a server restarting).
    #[error(transparent)]
    Unavailable(Box<dyn std::error::Error + Send + Sync + 'static>),
    /// A peer process of the cluster was lost, went silent, restarted, or could not be
    /// reached at start: the cluster must reform, so a restart helps.
    #[error("process {process} at {address} {reason}")]
    Peer {
        /// The peer's process index.
        process: usize,
        /// The peer's `host:port`.
        address: String,
        /// What happened.
        reason: String,
    },
    /// The timely cluster could not start or a worker failed.
    #[error("dataflow failed: {0}")]
    Dataflow(String),
    /// A failure with where it happened (`sink `counts``, `snapshot of `count``, ...).
    #[error("{context}: {error}")]
    Context {
        /// The operator, step or object the failure happened in.
        context: String,
        /// The failure.
        error: Box<RuntimeError>,
    },
}

impl RuntimeError {
    /// Whether restarting the job can cure the failure.
    ///
    /// Settings, input, a checkpoint that does not fit the job and a connector's
    /// permanent errors are [`Retry::Permanent`]; storage and servers that may come back,
    /// failed checkpoints, fencing and a failed dataflow are [`Retry::Transient`].
    pub fn retry(&self) -> Retry {
        match self {
            RuntimeError::Config { .. } | RuntimeError::Mismatch { .. } => Retry::Permanent,
            RuntimeError::Checkpoint(e) => e.retry(),
            RuntimeError::Io { .. } | RuntimeError::Connector(_) => Retry::Permanent,
            RuntimeError::Context { error, .. } => error.retry(),
            RuntimeError::TooManyFailedCheckpoints { .. }
            | RuntimeError::Fenced { .. }
            | RuntimeError::Unavailable(_)
            | RuntimeError::Peer { .. }
            | RuntimeError::Dataflow(_) => Retry::Transient,
        }
    }

    /// Whether restarting the job cannot help (`self.retry() == Retry::Permanent`): the
    /// supervisor then stops instead of restarting.
    pub fn is_permanent(&self) -> bool {
        self.retry() == Retry::Permanent
    }

    /// The error with where it happened in front of it; its [`Retry`] stays the same.
    pub fn context(self, context: impl Into<String>) -> Self {
        RuntimeError::Context {
            context: context.into(),
            error: Box::new(self),
        }
    }

    /// A configuration error.
    pub fn config(setting: impl Into<String>, reason: impl Into<String>) -> Self {
        RuntimeError::Config {
            setting: setting.into(),
            reason: reason.into(),
        }
    }
}

/// The process exit code for a permanent failure: `weir launch` does not restart it.
///
/// Library code never exits; binaries map [`Retry::Permanent`] to this code.
pub const EXIT_PERMANENT: i32 = 2;
/// The process exit code for a failure that a restart may cure ([`Retry::Transient`]).
pub const EXIT_RETRY: i32 = 1;
