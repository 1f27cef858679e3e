//! The harness: binaries, workspaces, input and oracle, processes, `weir launch` with
//! chaos, committed output, checkpoints on disk, and the delivery checks.

pub mod bins;
pub mod checkpoints;
pub mod checks;
pub mod input;
pub mod job;
pub mod keyed;
pub mod launch;
pub mod output;
pub mod process;
pub mod scenario;
pub mod workspace;
