//! weir's runtime: everything between the user's dataflow and checkpoint storage.
//!
//! It owns, each in a module of its own:
//! - the job's settings ([`config`]) and start-up ([`startup`]: the generation, what to
//!   restore, the first epoch, as pure decisions over what the store holds);
//! - the epoch clock that cuts streams into checkpoints ([`clock`]) and the tracker that
//!   says when an operator's snapshot is due ([`tracker`]);
//! - key groups ([`keygroup`]), the restored checkpoint's parts (`restore`) and snapshots
//!   uploaded in the background ([`snapshot`]), and keyed state that checkpoints
//!   incrementally ([`state`]);
//! - the job under construction ([`job`]), the stream API that carries it ([`flow`]:
//!   [`Flow`], [`Source`], [`Sink`]) and what its operators see at run time ([`context`]);
//! - the two-phase commit contract of sinks ([`twophase`]), the sink operator ([`sink`])
//!   and the checkpoint coordinator ([`coordinator`]);
//! - the process's Prometheus metrics ([`metrics`]) and what every operator does, read
//!   from timely's event log ([`observe`]);
//! - running a job ([`run`]), failures as values (`failure`), in-process test helpers
//!   ([`testing`]) and supervising a cluster of processes on one host ([`launch`]).
//!
//! It builds on `weir-checkpoint` for storage and protocol decisions; operators and
//! connectors build on it.
//!
//! ## Design
//!
//! Modules depend on each other one way (a test in the end-to-end suite checks that
//! there is no cycle): `clock`, `restore`, `failure` and `config` know nothing of the
//! others; `context` holds them; `snapshot` and `tracker` serve operators, `state` builds on `snapshot`; `job` builds
//! on `context` and `twophase`; `sink` and `coordinator` on those; `flow` on `job` and
//! `sink`; `execute` and
//! `startup` on everything. The invariants the runtime keeps are DESIGN's:
//! 1. no checkpoint is visible before all of its parts are durable (the manifest is
//!    written last, once the coordinator's frontier shows every part durable);
//! 2. restored state equals the state after exactly the records of epochs `<= e`;
//! 3. sink output of epoch `e` is visible only after checkpoint `e` is complete, and then
//!    exactly once;
//! 4. snapshot upload never blocks record processing beyond the copy of the state;
//! 5. a process of an older generation can neither complete a checkpoint nor commit
//!    (the coordinator checks the generation markers before each manifest, see
//!    `weir_checkpoint::protocol::is_fenced`);
//! 6. bad input and storage faults produce a clear error, returned by [`run`], never a
//!    silent loss, and library code never ends the process.
#![deny(missing_docs)]

pub mod clock;
pub mod cluster;
pub mod config;
pub mod context;
pub mod coordinator;
pub mod entries;
pub mod error;
pub mod execute;
pub mod failpoint;
mod failure;
pub mod flow;
pub mod job;
pub mod keygroup;
pub mod launch;
pub mod metrics;
pub mod observe;
mod restore;
pub mod sink;
pub mod snapshot;
pub mod startup;
pub mod state;
pub mod testing;
pub mod tracker;
pub mod twophase;

pub use clock::EpochClock;
pub use config::{Delivery, JobArgs, JobConfig, LogFormat};
pub use context::JobContext;
pub use error::{Result, Retry, RuntimeError};
pub use execute::run;
pub use flow::{two_phase, Flow, Sink, Source};
pub use job::Job;
pub use snapshot::{encode_groups, encode_keyed, Part, Snapshotter};
pub use state::{KeyedState, Sealing};
pub use tracker::{Due, EpochTracker};
pub use twophase::{Committer, NoStaging, Output, OutputId, PreCommitted, TwoPhaseSink};
/// The checkpoint crate, re-exported for operators and connectors.
pub use weir_checkpoint as checkpoint;
pub use weir_checkpoint::{Epoch, Generation, RestoreTarget, WorkerIndex};
