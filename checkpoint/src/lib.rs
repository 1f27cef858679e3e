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
//!
//! ## Design
//!
//! Invariants every change keeps:
//! - a checkpoint is complete iff its manifest exists; the manifest is written last, with
//!   a create-if-absent put, so two writers can never both complete one checkpoint;
//! - every object carries a versioned, checksummed header, and nothing is decoded before
//!   its size, CRC and header are checked: damage is an error that names the object;
//! - one path builder ([`Layout`]) names every object, and stored records are facts that
//!   are written once and read idempotently;
//! - every decision (what to restore, what a sink commits or aborts, which checkpoint is
//!   complete, what retention deletes, whether a generation is fenced) is a pure function
//!   in [`protocol`], tested without I/O.
#![deny(missing_docs)]

pub mod codec;
pub mod error;
pub mod ids;
pub mod layout;
pub mod manifest;
pub mod pack;
pub mod protocol;
pub mod store;

pub use error::{CheckpointError, Result, Retry};
pub use ids::{Epoch, Generation, WorkerIndex};
pub use layout::Layout;
pub use manifest::{Manifest, PartEntry, SinkEntry};
pub use protocol::{Assembler, Closed, Report, RestoreTarget, SinkAction};
pub use store::CheckpointStore;
