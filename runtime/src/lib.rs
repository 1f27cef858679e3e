//! weir's runtime: everything between the user's dataflow and checkpoint storage.
//!
//! It owns the job configuration ([`config`]), the epochs that cut streams into
//! checkpoints ([`context::EpochClock`]), key groups ([`keygroup`]), background snapshot
//! upload ([`context::Snapshotter`]), the checkpoint coordinator ([`coordinator`]), the
//! two-phase commit contract of sinks ([`sink`]), restore, running a job ([`run`]) and
//! supervising a cluster of processes ([`launch`]).
//!
//! It builds on `weir-checkpoint` for storage and protocol decisions; operators and
//! connectors build on it.
#![deny(missing_docs)]

pub mod config;
pub mod context;
pub mod coordinator;
pub mod error;
pub mod execute;
pub mod failpoint;
mod failure;
pub mod keygroup;
pub mod launch;
pub mod sink;
pub mod testing;

pub use config::{Delivery, JobArgs, JobConfig};
pub use context::{
    encode_groups, encode_keyed, EpochClock, EpochTracker, Job, JobContext, Snapshotter,
};
pub use error::{Result, Retry, RuntimeError};
pub use execute::run;
pub use sink::{Committer, PreCommitted, TwoPhaseSink};
/// The checkpoint crate, re-exported for operators and connectors.
pub use weir_checkpoint as checkpoint;
pub use weir_checkpoint::RestoreTarget;
