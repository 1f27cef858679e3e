//! The error type of the connectors.

use std::path::PathBuf;

use weir_runtime::{Retry, RuntimeError};

/// Result alias for connector operations.
pub type Result<T, E = ConnectorError> = std::result::Result<T, E>;

/// What can go wrong in a source or sink. Every variant names the connector and the
/// file or server at fault. They are permanent for the job (restarting does not fix a
/// missing directory or table, or a deleted output), so they stop `weir launch` from
/// retrying, except for a server that cannot be reached, which a restart may cure.
#[derive(Debug, thiserror::Error)]
pub enum ConnectorError {
    /// A file or directory operation failed.
    #[error("{connector}: cannot {action} {}: {source}{hint}", .path.display())]
    File {
        /// The source or sink name.
        connector: String,
        /// What was attempted ("open input file", "create", "sync", ...).
        action: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
        /// How to fix it, if there is an obvious way ("" otherwise).
        hint: &'static str,
    },
    /// A line of input could not be read.
    #[error("{connector}: cannot read {} at byte offset {offset}: {source} (input must be readable UTF-8 text)", .path.display())]
    Read {
        /// The source name.
        connector: String,
        /// The input file.
        path: PathBuf,
        /// Where in the file.
        offset: u64,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
    /// The input directory holds something that is not a regular file.
    #[error("{connector}: input {} is not a regular file; the input directory must hold only files", .path.display())]
    NotAFile {
        /// The source name.
        connector: String,
        /// The entry.
        path: PathBuf,
    },
    /// Output that a checkpoint covers has vanished before it was committed.
    #[error("{connector}: output of epoch {epoch} is neither staged at {} nor committed at {}: it was deleted by hand or the output directory changed", .staged.display(), .committed.display())]
    LostOutput {
        /// The sink name.
        connector: String,
        /// The epoch of the output.
        epoch: u64,
        /// Where it was staged.
        staged: PathBuf,
        /// Where it should be committed.
        committed: PathBuf,
    },
    /// A PostgreSQL operation failed.
    #[error("{connector}: PostgreSQL {server}: cannot {action}: {detail}{hint}")]
    Postgres {
        /// The sink name.
        connector: String,
        /// `user@host:port/database` (never the password).
        server: String,
        /// What was attempted.
        action: &'static str,
        /// The server's message and SQLSTATE, or the connection error.
        detail: String,
        /// How to fix it ("" otherwise).
        hint: String,
        /// A connection failure a restart may cure.
        transient: bool,
    },
    /// A Kafka operation failed.
    #[error("{connector}: Kafka {brokers}: cannot {action}: {detail}{hint}")]
    Kafka {
        /// The source or sink name.
        connector: String,
        /// The bootstrap servers.
        brokers: String,
        /// What was attempted.
        action: &'static str,
        /// The client's message, with the topic, partition or offset concerned.
        detail: String,
        /// How to fix it ("" otherwise).
        hint: String,
        /// A broker failure a restart may cure.
        transient: bool,
    },
    /// A NATS operation failed.
    #[error("{connector}: NATS {server}: cannot {action}: {detail}{hint}")]
    Nats {
        /// The source or sink name.
        connector: String,
        /// The server address (never credentials).
        server: String,
        /// What was attempted.
        action: &'static str,
        /// The client's message, with the stream or subject concerned.
        detail: String,
        /// How to fix it ("" otherwise).
        hint: String,
        /// A server failure a restart may cure.
        transient: bool,
    },
    /// A sink's write-ahead output is missing or unreadable.
    #[error("{connector}: write-ahead output {object} of epoch {epoch}: {detail}")]
    WriteAhead {
        /// The sink name.
        connector: String,
        /// The object in checkpoint storage.
        object: String,
        /// The epoch it holds.
        epoch: u64,
        /// What is wrong with it.
        detail: String,
    },
    /// An object-store operation of a sink failed.
    #[error("{connector}: cannot {action} {object}: {detail}{hint}")]
    ObjectStore {
        /// The sink name.
        connector: String,
        /// What was attempted ("put staged output", "commit (rename the staged object to)", ...).
        action: &'static str,
        /// The object's URL (`s3://bucket/prefix/name`; never credentials).
        object: String,
        /// The store's message, with credentials removed.
        detail: String,
        /// How to fix it ("" otherwise).
        hint: &'static str,
        /// A failure a restart may cure (the server could not be reached, a timeout).
        transient: bool,
    },
    /// Object output that a checkpoint covers has vanished before it was committed.
    #[error("{connector}: output of epoch {epoch} is neither staged at {staged} nor committed at {committed}: it was deleted by hand, by a lifecycle rule, or the output URL changed")]
    LostObject {
        /// The sink name.
        connector: String,
        /// The epoch of the output.
        epoch: u64,
        /// The URL of the staged object.
        staged: String,
        /// The URL it should be committed at.
        committed: String,
    },
    /// A connector's setting is wrong (an output URL, a name).
    #[error("{connector}: invalid setting `{setting}`: {reason}")]
    Settings {
        /// The source or sink name.
        connector: String,
        /// The setting.
        setting: &'static str,
        /// What is wrong and how to fix it.
        reason: String,
    },
    /// Committed output cannot be read back as what the sink wrote.
    #[error("{connector}: committed object {object}: {detail}")]
    Corrupt {
        /// The sink name.
        connector: String,
        /// The object's URL.
        object: String,
        /// What is wrong with it.
        detail: String,
    },
    /// A record does not fit a sink's Parquet schema, or the schema is unusable.
    #[error("{connector}: Parquet output{at}: {detail}; make the record's fields match the declared ParquetSchema (names, types, nullability)")]
    Parquet {
        /// The sink name.
        connector: String,
        /// The epoch and object concerned (" of epoch 7, object `x`"), or "".
        at: String,
        /// What is wrong.
        detail: String,
    },
}

impl From<ConnectorError> for RuntimeError {
    fn from(e: ConnectorError) -> Self {
        match e.retry() {
            Retry::Transient => RuntimeError::Unavailable(Box::new(e)),
            Retry::Permanent => RuntimeError::Connector(Box::new(e)),
        }
    }
}

impl ConnectorError {
    /// Whether restarting the job can cure the failure: a server that cannot be reached
    /// or a lost connection is [`Retry::Transient`]; settings, input, missing streams,
    /// topics or tables, refused credentials and lost output are [`Retry::Permanent`].
    pub fn retry(&self) -> Retry {
        match self {
            ConnectorError::Postgres { transient, .. }
            | ConnectorError::Kafka { transient, .. }
            | ConnectorError::Nats { transient, .. }
            | ConnectorError::ObjectStore { transient, .. } => Retry::transient_if(*transient),
            ConnectorError::File { .. }
            | ConnectorError::Read { .. }
            | ConnectorError::NotAFile { .. }
            | ConnectorError::LostOutput { .. }
            | ConnectorError::WriteAhead { .. }
            | ConnectorError::LostObject { .. }
            | ConnectorError::Settings { .. }
            | ConnectorError::Corrupt { .. }
            | ConnectorError::Parquet { .. } => Retry::Permanent,
        }
    }

    pub(crate) fn file(
        connector: &str,
        action: &'static str,
        path: impl Into<PathBuf>,
        source: std::io::Error,
    ) -> Self {
        ConnectorError::File {
            connector: connector.to_string(),
            action,
            path: path.into(),
            source,
            hint: "",
        }
    }
}
