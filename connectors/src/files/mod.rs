//! Files, the embedded default: a replayable line source over a directory and a
//! transactional JSON-lines sink.

mod sink;
mod source;

pub use sink::{jsonl, FileCommitter, Jsonl};
pub use source::{lines, Lines};
