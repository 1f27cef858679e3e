//! weir's checkpoint storage.
//!
//! This crate owns everything that is written to or read from checkpoint storage: the
//! object layout ([`layout`]), the versioned, checksummed encoding of every object
//! ([`codec`]), manifests ([`manifest`]), the store on top of `object_store`
//! ([`store`]) and the pure decisions of the checkpoint protocol ([`protocol`]): which
//! checkpoint to restore, what a sink commits or aborts after a restore, which
//! checkpoint is complete, which directories retention may delete.
//!
//! It knows nothing about timely dataflow, so that the format and the protocol can be
//! tested, read and evolved on their own.
#![deny(missing_docs)]

pub mod codec;
pub mod error;
pub mod layout;
pub mod manifest;
pub mod protocol;
pub mod store;

pub use error::{CheckpointError, Result, Retry};
pub use layout::Layout;
pub use manifest::{Manifest, PartEntry, SinkEntry};
pub use protocol::{Assembler, Closed, Report, RestoreTarget, SinkAction};
pub use store::CheckpointStore;
