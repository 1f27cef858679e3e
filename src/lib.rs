//! weir: exactly-once checkpointing dataflow on timely.
//!
//! A job is a timely dataflow over epochs: sources cut their input into epochs on the
//! checkpoint interval, stateful operators snapshot their keyed state when their input
//! frontier passes an epoch, sinks pre-commit each epoch's output, and a coordinator
//! completes the checkpoint by writing its manifest last and then commits the sinks.
//! Kill any process at any moment, restart with `--restore latest` (or run under
//! `weir launch`, which does that for you), and the committed output is what a run
//! without failures produces.
//!
//! This crate is the facade: it re-exports the parts a job needs, and holds the `weir`
//! command-line tool.
//!
//! Connectors to external systems are cargo features, so that the default build compiles
//! no client library a job does not use: `kafka`, `postgres`, `nats`, `parquet` (Parquet
//! output of the object-store sink), `s3` (`s3://` checkpoints and object output), and
//! `full` for all of them.
//!
//! ```no_run
//! use weir::prelude::*;
//! use timely::dataflow::operators::vec::Map;
//!
//! fn main() -> anyhow::Result<()> {
//!     let config = JobConfig { job: "wordcount".into(), checkpoint_url: "/tmp/weir-chk".into(), ..Default::default() };
//!     weir::run(config, |job| {
//!         let lines = files::read_lines(job, "input", std::path::Path::new("input"), SourceOptions::default())?;
//!         let words = lines.flat_map(|l: String| l.split_whitespace().map(|w| (w.to_string(), 1u64)).collect::<Vec<_>>());
//!         let counts = words.reduce_by_key(job, "count", |c: &mut u64, n: u64| *c += n)?;
//!         files::write_jsonl(job, counts, "counts", std::path::Path::new("output"))
//!     })?;
//!     Ok(())
//! }
//! ```
//!
//! ## Design
//!
//! The crate adds no behaviour of its own to a running job: it re-exports the lower
//! crates (`checkpoint` <- `runtime` <- `operators`, `connectors`), holds the prelude, and
//! [`cli`], the only place besides the `weir` binary that turns a failure into an exit
//! code.
#![deny(missing_docs)]

pub use weir_checkpoint as checkpoint;
pub use weir_connectors as connectors;
pub use weir_operators as operators;
pub use weir_runtime as runtime;
pub use weir_runtime::{
    run, Delivery, Epoch, Generation, Job, JobArgs, JobConfig, RestoreTarget, Retry, RuntimeError,
    WorkerIndex,
};

pub mod cli;

/// What most jobs import.
pub mod prelude {
    #[cfg(feature = "kafka")]
    pub use weir_connectors::kafka;
    #[cfg(feature = "nats")]
    pub use weir_connectors::nats;
    #[cfg(feature = "postgres")]
    pub use weir_connectors::postgres;
    pub use weir_connectors::{files, generator, objects, SourceOptions};
    pub use weir_operators::{
        AssignEventTime, CountByKey, Deduplicate, DeduplicateProcessingTime, EventStream,
        IntervalJoin, JoinTtl, Late, ReduceByKey, StatefulMap, Timed, Ttl, WatermarkStrategy,
        Window, Windows,
    };
    pub use weir_runtime::{Delivery, Job, JobArgs, JobConfig, RestoreTarget};
}
