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
#![deny(missing_docs)]

pub mod error;
pub mod files;
pub mod generator;
pub mod kafka;
pub mod nats;
pub mod objects;
pub mod postgres;
mod source;
mod wal;

pub use error::ConnectorError;
pub use source::SourceOptions;
