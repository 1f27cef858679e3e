//! End-to-end tests of weir: real processes, real SIGKILLs, real files.
//!
//! They run the release binaries `target/release/weir` and the examples (build them
//! with `cargo build --release --all-features --bins --examples`; the suite needs the
//! `full` feature, as `scripts/test.sh` gives it) on seeded random input, compare the
//! committed output with an oracle computed from the input, and check the promised
//! delivery guarantee. Set `WEIR_E2E_SEED` to explore other inputs and kill schedules;
//! the seed in use is printed by every test.

mod harness;

mod bad_input;
mod cli;
mod cluster;
mod custom_sink;
mod dashboard;
mod failpoints;
mod inprocess;
mod kafka;
mod kills;
mod layering;
mod metrics;
mod nats;
mod objects;
mod operators;
mod postgres;
mod relaunch;
mod rescale;
mod restore;
mod s3;
mod s3_faults;
mod savepoints;
mod sessions;
mod slow_store;
mod standalone;
