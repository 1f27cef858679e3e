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
//!
//! fn main() -> anyhow::Result<()> {
//!     weir::run(JobConfig::new("wordcount", "/tmp/weir-chk"), |job| {
//!         job.source("input", files::lines("input"))?
//!             .flat_map(|line| Vec::from_iter(line.split_whitespace().map(|w| (w.to_string(), 1))))
//!             .reduce_by_key("count", |count, n| *count += n)?
//!             .sink("counts", files::jsonl("output"))
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
    run, testing, Delivery, Epoch, Flow, Generation, Job, JobArgs, JobConfig, RestoreTarget, Retry,
    RuntimeError, Sink, Source, WorkerIndex,
};

pub mod cli;
pub mod dashboard;
pub mod progress;

/// What most jobs import: the job and its flows, every connector this build has, every
/// operator, and timely's operators for the timely-level streams a flow wraps.
pub mod prelude {
    /// Timely's operators, for the streams under a flow ([`Flow::apply`]).
    pub use timely::dataflow::operators::{vec::Filter, vec::Map, Concat, Inspect, ToStream};
    #[cfg(feature = "kafka")]
    pub use weir_connectors::kafka;
    #[cfg(feature = "nats")]
    pub use weir_connectors::nats;
    #[cfg(feature = "postgres")]
    pub use weir_connectors::postgres;
    pub use weir_connectors::{files, generator, objects, source, SourceOptions};
    pub use weir_operators::collection::{DurableCollection, ToCollection};
    pub use weir_operators::{
        AssignEventTime, Combiner, CountByKey, Deduplicate, DeduplicateProcessingTime, EventStream,
        Fired, FlatReduceByKey, IntervalJoin, JoinTtl, Late, ReduceByKey, Rejected, Side,
        StatefulMap, Timed, Ttl, WatermarkStrategy, Window, Windows,
    };
    pub use weir_runtime::{
        testing, Delivery, Flow, Job, JobArgs, JobConfig, RestoreTarget, Sink, Source,
    };
}

/// The README's code, compiled as doc tests so that it stays true.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;

#[cfg(feature = "jemalloc")]
#[doc(hidden)]
pub use tikv_jemallocator as __jemalloc;

/// Makes jemalloc the allocator of the binary that calls it at its top level, with the
/// `jemalloc` feature (on by default); without it, the system's allocator stays.
///
/// A job allocates and frees small records at a high rate: on the word count over files,
/// jemalloc makes weir about 1.8× faster than glibc's malloc (BENCHMARKS.md). weir's own
/// binaries and examples call it; a job's binary can too.
///
/// It also sets jemalloc's option `metadata_thp:auto`: once jemalloc's own bookkeeping
/// grows large (a restore of millions of keys), it lives on transparent huge pages, where
/// page faults and the TLB shootdowns they cost the other worker threads are rare
/// (BENCHMARKS.md, "Restore: jemalloc's bookkeeping on huge pages, and bases decoded
/// into presized maps"). A small job's bookkeeping stays on ordinary pages.
/// `_RJEM_MALLOC_CONF` in the environment overrides it, option by option.
///
/// ```
/// weir::global_allocator!();
///
/// fn main() {
///     let words: Vec<String> = "a b c".split(' ').map(String::from).collect();
///     assert_eq!(words.len(), 3);
/// }
/// ```
#[cfg(feature = "jemalloc")]
#[macro_export]
macro_rules! global_allocator {
    () => {
        #[global_allocator]
        static WEIR_GLOBAL_ALLOCATOR: $crate::__jemalloc::Jemalloc = $crate::__jemalloc::Jemalloc;
        /// jemalloc's options, read by jemalloc itself when it starts (its `malloc_conf`).
        #[allow(non_upper_case_globals)]
        #[used]
        #[unsafe(no_mangle)]
        static _rjem_malloc_conf: &[u8; 18] = b"metadata_thp:auto\0";
    };
}

/// Without the `jemalloc` feature: leaves the system's allocator in place.
#[cfg(not(feature = "jemalloc"))]
#[macro_export]
macro_rules! global_allocator {
    () => {};
}
