//! weir's stateful operators.
//!
//! Every operator here keeps its state per key, partitioned into key groups, takes a
//! snapshot when its input frontier passes an epoch, and restores it after a crash,
//! also at another number of workers. One extension trait per file, named for its verb.
#![deny(missing_docs)]

pub mod count;
mod keyed;
pub mod reduce;
pub mod stateful_map;

pub use count::CountByKey;
pub use reduce::ReduceByKey;
pub use stateful_map::StatefulMap;
