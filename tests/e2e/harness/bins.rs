//! Where the binaries under test live.

use std::path::PathBuf;

/// The Cargo target directory: `CARGO_TARGET_DIR` at run time, then at build time,
/// then `<workspace>/target`.
pub fn target_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("CARGO_TARGET_DIR").filter(|d| !d.is_empty()) {
        return absolute(PathBuf::from(dir));
    }
    if let Some(dir) = option_env!("CARGO_TARGET_DIR").filter(|d| !d.is_empty()) {
        return absolute(PathBuf::from(dir));
    }
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target")
}

fn absolute(p: PathBuf) -> PathBuf {
    if p.is_absolute() {
        p
    } else {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(p)
    }
}

fn release_binary(relative: &str) -> PathBuf {
    let path = target_dir().join("release").join(relative);
    if !path.is_file() {
        panic!(
            "the end-to-end tests need the release binary {} but it does not exist; \
             build it first with `cargo build --release --all-features --bins --examples` \
             (the tests never skip)",
            path.display()
        );
    }
    path
}

/// `target/release/weir`, the CLI with `weir launch`.
pub fn weir() -> PathBuf {
    release_binary("weir")
}

/// `target/release/examples/wordcount`, the job under test.
pub fn wordcount() -> PathBuf {
    release_binary("examples/wordcount")
}

/// `target/release/examples/sessions`, the event-time job under test.
pub fn sessions() -> PathBuf {
    release_binary("examples/sessions")
}

/// `target/release/examples/operators`, the tour of stateful operators.
pub fn operators() -> PathBuf {
    release_binary("examples/operators")
}

/// `target/release/examples/bank_transfers`, the flagship Kafka-to-PostgreSQL job.
pub fn bank_transfers() -> PathBuf {
    release_binary("examples/bank_transfers")
}

/// `target/release/examples/custom_sink`, word counts into Redis through a sink of its own.
pub fn custom_sink() -> PathBuf {
    release_binary("examples/custom_sink")
}

/// `target/release/examples/nats_pipe`, the NATS JetStream pipeline.
pub fn nats_pipe() -> PathBuf {
    release_binary("examples/nats_pipe")
}
