//! The error type of the checkpoint crate.

/// Result alias for checkpoint operations.
pub type Result<T, E = CheckpointError> = std::result::Result<T, E>;

/// Everything that can go wrong while reading or writing checkpoints.
///
/// Every variant names the object or setting at fault; [`CheckpointError::retry`] says
/// whether trying again can help.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    /// The checkpoint URL could not be understood.
    #[error("invalid checkpoint URL `{url}`: {reason} (use a path, file:///abs/path, memory://, or s3://bucket/prefix)")]
    InvalidUrl {
        /// The URL as given.
        url: String,
        /// Why it was rejected.
        reason: String,
    },
    /// The object store refused or failed an operation.
    #[error("checkpoint storage failed to {op} `{path}`: {source}")]
    Storage {
        /// What was attempted (put, get, list, delete).
        op: &'static str,
        /// The object or prefix.
        path: String,
        /// The underlying error.
        #[source]
        source: object_store::Error,
    },
    /// An object's bytes do not match their header or checksum.
    #[error("checkpoint object `{path}` is corrupted: {reason}")]
    Corrupt {
        /// The object.
        path: String,
        /// What check failed.
        reason: String,
    },
    /// An object was written by a format version this build cannot read.
    #[error("checkpoint object `{path}` has format version {found}; this build reads versions 1 to {supported}: read it with the weir version that wrote it")]
    VersionMismatch {
        /// The object.
        path: String,
        /// The version in its header.
        found: u16,
        /// The newest version this build reads.
        supported: u16,
    },
    /// A value could not be encoded.
    #[error("could not encode {what}: {reason}")]
    Encode {
        /// What was being encoded.
        what: String,
        /// The encoder's message.
        reason: String,
    },
    /// Another writer already created this checkpoint's manifest.
    #[error("manifest `{path}` already exists: another writer completed this checkpoint (is a second job with the same name writing to the same URL?)")]
    ManifestExists {
        /// The manifest object.
        path: String,
    },
    /// Restore was asked for but the job has no complete checkpoint.
    #[error("job `{job}` has no complete checkpoint under `{url}`{}; start without --restore to run from the beginning", uncommitted_note(.uncommitted))]
    NoCheckpoint {
        /// The job name.
        job: String,
        /// The checkpoint URL.
        url: String,
        /// Checkpoints whose manifests exist but were never committed: their generation
        /// stopped, or was fenced, before it linked them into the job's history.
        uncommitted: Vec<crate::Epoch>,
    },
    /// The requested checkpoint does not exist or is incomplete.
    #[error("checkpoint {epoch} of job `{job}` does not exist or is incomplete (no manifest); `weir checkpoints list` shows the complete ones")]
    CheckpointNotFound {
        /// The job name.
        job: String,
        /// The epoch asked for.
        epoch: crate::Epoch,
    },
    /// The requested savepoint does not exist.
    #[error("savepoint `{name}` of job `{job}` does not exist; `weir checkpoints list` shows the savepoints")]
    SavepointNotFound {
        /// The job name.
        job: String,
        /// The savepoint asked for.
        name: String,
    },
    /// Every candidate checkpoint failed verification.
    #[error("no readable checkpoint of job `{job}`: {}", .tried.iter().map(|(e, r)| format!("chk-{e}: {r}")).collect::<Vec<_>>().join("; "))]
    NoReadableCheckpoint {
        /// The job name.
        job: String,
        /// Each epoch tried, with why it was rejected.
        tried: Vec<(crate::Epoch, String)>,
    },
    /// A manifest exists but its checkpoint was never committed: a newer generation
    /// took the place in the job's history that it needed (see
    /// `protocol::Node`).
    #[error("checkpoint {epoch} (generation {generation}) was written by a generation that a newer one had already fenced, so it was never committed: {reason}")]
    Uncommitted {
        /// The checkpoint.
        epoch: crate::Epoch,
        /// The generation that wrote it.
        generation: crate::Generation,
        /// What its link says.
        reason: String,
    },
    /// A manifest belongs to another job.
    #[error("manifest `{path}` belongs to job `{found}`, not `{expected}`: check --job and --checkpoint-dir")]
    JobMismatch {
        /// The manifest object.
        path: String,
        /// The job name configured.
        expected: String,
        /// The job name in the manifest.
        found: String,
    },
}

/// Whether trying again can cure a failure: the one retry classification that every
/// error of weir's crates carries (`CheckpointError::retry`, `RuntimeError::retry`,
/// `ConnectorError::retry`).
///
/// Only a binary turns it into an exit code: a [`Retry::Transient`] failure exits 1,
/// which a supervisor (`weir launch`, Kubernetes) answers with a restart from the latest
/// checkpoint; a [`Retry::Permanent`] one exits 2 and is not restarted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Retry {
    /// The same step may succeed later: a server that is down or restarting, a lost
    /// connection, a timeout, a storage request that failed in transit.
    Transient,
    /// Trying again cannot help: settings, input, or stored data that do not fit the job.
    Permanent,
}

impl Retry {
    /// `Transient` if `transient`, `Permanent` otherwise.
    pub fn transient_if(transient: bool) -> Self {
        if transient {
            Retry::Transient
        } else {
            Retry::Permanent
        }
    }
}

impl CheckpointError {
    /// Whether retrying the same operation later may succeed: only a storage request
    /// that failed for another reason than the object's existence is transient.
    pub fn retry(&self) -> Retry {
        Retry::transient_if(matches!(self, CheckpointError::Storage { source, .. }
            if !matches!(source, object_store::Error::NotFound { .. }
                | object_store::Error::AlreadyExists { .. }
                | object_store::Error::Precondition { .. })))
    }

    pub(crate) fn storage(
        op: &'static str,
        path: impl ToString,
        source: object_store::Error,
    ) -> Self {
        CheckpointError::Storage {
            op,
            path: path.to_string(),
            source,
        }
    }
}

fn uncommitted_note(uncommitted: &[crate::Epoch]) -> String {
    if uncommitted.is_empty() {
        return String::new();
    }
    let list: Vec<String> = uncommitted.iter().map(|e| format!("chk-{e}")).collect();
    format!(
        " (the manifests of {} were written but never committed: their run stopped before linking them; `weir checkpoints delete --all` removes them)",
        list.join(", ")
    )
}
