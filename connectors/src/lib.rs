//! weir's sources and sinks.
//!
//! Every connector states its delivery contract in its module documentation: what a
//! restore replays, what a crash can leave behind, and how that is cleaned up. The
//! embedded defaults are [`files`] (a replayable line source and a transactional
//! JSON-lines sink) and [`generator`] (a deterministic source for tests and benchmarks);
//! [`postgres`] writes into PostgreSQL exactly once; [`objects`] writes JSON-lines or
//! Parquet objects into S3-compatible storage (or `file://`, `memory://`) exactly once;
//! [`nats`] reads and writes NATS JetStream streams, exactly once by message-id
//! deduplication.
//!
//! ## Features
//!
//! The default build has the files, generator and object-store (local directory and
//! memory) connectors, which need no client library. The others are cargo features, so
//! that a job compiles only the clients it uses:
//!
//! | feature | adds |
//! | --- | --- |
//! | `kafka` | [`kafka`] (librdkafka, built from C) |
//! | `postgres` | [`postgres`] (tokio-postgres) |
//! | `nats` | [`nats`] (async-nats) |
//! | `parquet` | Parquet output of the [`objects`] sink |
//! | `s3` | `s3://` URLs for checkpoints and the [`objects`] sink (object_store's AWS client) |
//!
//! ## Design
//!
//! Sources share one skeleton (positions per split, checkpointed per key group, replayed
//! on restore, a ledger for at-most-once); sinks implement the runtime's two-phase
//! contract ([`weir_runtime::TwoPhaseSink`], [`weir_runtime::Committer`]). Invariants:
//! - a source resumes exactly after the positions of the restored checkpoint (or, with
//!   at-most-once, after everything it ever read), and a position it can no longer read
//!   stops the job rather than skip data;
//! - a sink's output of an epoch becomes visible only through its committer, whose commit
//!   is idempotent and whose lost output is an error, never a silent gap;
//! - credentials never appear in messages.
#![deny(missing_docs)]

mod bridge;
pub mod error;
pub mod files;
pub mod generator;
#[cfg(feature = "kafka")]
pub mod kafka;
#[cfg(feature = "nats")]
pub mod nats;
pub mod objects;
#[cfg(feature = "postgres")]
pub mod postgres;
pub mod source;
#[cfg(any(feature = "kafka", feature = "nats"))]
mod wal;

pub use error::ConnectorError;
pub use source::SourceOptions;
