//! Files, the embedded default: a replayable line source over a directory (a `String`
//! per line, or lines in batches) and a transactional JSON-lines sink.

mod sink;
mod source;

pub use sink::{jsonl, FileCommitter, Jsonl};
pub use source::{line_batches, lines, LineBatch, LineBatches, Lines};
