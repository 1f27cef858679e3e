//! weir's stateful operators.
//!
//! Every operator here keeps its state per key, partitioned into key groups, takes a
//! snapshot when its input frontier passes an epoch, and restores it after a crash,
//! also at another number of workers. One extension trait per file, named for its verb.
//!
//! - Keyed state: [`StatefulMap`], [`ReduceByKey`], [`FlatReduceByKey`], [`CountByKey`],
//!   with optional expiry ([`Ttl`]).
//! - Event time: [`AssignEventTime`] gives records event time and watermarks tracked per
//!   source split; [`Window`] (tumbling, sliding, session), [`Deduplicate`] and
//!   [`IntervalJoin`] run on the resulting [`EventStream`].
//! - [`DeduplicateProcessingTime`] and [`JoinTtl`] work on plain keyed streams.
//! - [`collection::ToCollection`] runs differential dataflow operators on collections
//!   whose results survive restore.
//!
//! ## Design
//!
//! Every operator is a `keyed`-engine store: records are routed by key group, applied in
//! epoch order (later epochs wait), and the state is snapshotted as of exactly the closed
//! epochs before any record of a later epoch is applied. Invariants:
//! - restored state equals the state after exactly the records of epochs `<= e`, whatever
//!   the number of workers that wrote or reads it;
//! - an operator's output for an epoch depends only on its input up to that epoch, never
//!   on timing, kills or restores (event-time lateness is judged against the record's own
//!   split's watermark when it was read);
//! - a late or unparsable record goes to a side output with a reason, never silently
//!   away.
#![deny(missing_docs)]

pub mod collection;
mod combine;
pub mod count;
pub mod dedup;
pub mod event_time;
pub mod flat_reduce;
pub mod join;
mod keyed;
pub mod reduce;
pub mod stateful_map;
mod timed;
pub mod window;

/// The hasher of per-key maps that never leave the process: foldhash, seeded per map.
///
/// It is several times cheaper than std's SipHash on short keys, but it only resists
/// simple collision attacks: an attacker who controls the keys and can observe timing
/// may, unlike with SipHash, find keys that collide. (Key groups, and with them every
/// checkpoint's layout, use the stable hash of `weir_runtime::keygroup`, not this one.)
pub(crate) type FastHash = foldhash::fast::RandomState;

/// A stream of records, timestamped with epochs.
pub type Records<'s, D> = timely::dataflow::Stream<'s, u64, Vec<D>>;

pub use collection::{DurableCollection, ToCollection};
pub use count::CountByKey;
pub use dedup::{Deduplicate, DeduplicateProcessingTime};
/// The differential dataflow crate weir's collections are built on, at the version weir
/// uses.
pub use differential_dataflow;
pub use event_time::{
    AssignEventTime, EventStream, EventTime, Mark, OneSplit, Rejected, Timed, WatermarkStrategy,
};
pub use flat_reduce::{Combiner, FlatReduceByKey};
pub use join::{IntervalJoin, IntervalJoinBuilder, JoinTtl, Side};
pub use keyed::Ttl;
pub use reduce::{Changes, ReduceByKey};
pub use stateful_map::StatefulMap;
pub use window::{Fired, Late, Window, WindowBuilder, WindowKind, Windows};
