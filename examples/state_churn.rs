//! Keyed state that changes a little per checkpoint: the workload of
//! `benches/incremental_state.sh`.
//!
//! The job loads `--keys` keys with values of `--value-bytes` bytes into a keyed fold,
//! then rewrites `--churn` of the keys per second (1% by default) for `--seconds`
//! seconds, and ends. Its checkpoints show what a checkpoint costs when little of a
//! large state changed: bytes uploaded per checkpoint, the barrier's copy, barrier to
//! manifest, and the restore of the whole state.
//!
//! ```sh
//! cargo run --release --example state_churn -- --keys 100000 --seconds 5 \
//!     --output /tmp/churn/out --checkpoint-dir /tmp/churn/chk --checkpoint-interval-ms 1000
//! ```

use clap::Parser;
use weir::prelude::*;

weir::global_allocator!();

#[derive(Parser, Debug)]
#[command(about = "Keyed state of which a small share changes per second")]
struct Args {
    /// Keys in the state.
    #[arg(long, default_value_t = 4_000_000)]
    keys: u64,
    /// Bytes of each key's value.
    #[arg(long, default_value_t = 240)]
    value_bytes: usize,
    /// The share of the keys rewritten per second, after the load.
    #[arg(long, default_value_t = 0.01)]
    churn: f64,
    /// Seconds of rewrites after the load.
    #[arg(long, default_value_t = 60)]
    seconds: u64,
    /// Keep each value as `bytes::Bytes` instead of `Vec<u8>`. The checkpoints encode
    /// the same bytes either way, but serde sees a `Vec<u8>` as a sequence, which
    /// bincode decodes one byte at a time, and `Bytes` as one byte string, which it
    /// copies at once: this shows what that costs a restore.
    #[arg(long)]
    bytes_values: bool,
    /// Directory of the job's sink (it writes nothing: the changes are dropped).
    #[arg(long)]
    output: std::path::PathBuf,
    #[command(flatten)]
    job: JobArgs,
}

/// The value of the `n`th write: `bytes` bytes derived from `n`.
fn value(n: u64, bytes: usize) -> Vec<u8> {
    let seed = n.wrapping_mul(0x9E37_79B9_7F4A_7C15).to_le_bytes();
    (0..bytes).map(|i| seed[i % 8] ^ i as u8).collect()
}

fn main() {
    weir::cli::main_with(|| {
        let args = Args::parse();
        match args.bytes_values {
            true => run::<bytes::Bytes>(args),
            false => run::<Vec<u8>>(args),
        }
    })
}

/// Runs the job with values of type `V`, built from the bytes of each write.
fn run<V>(args: Args) -> anyhow::Result<()>
where
    V: From<Vec<u8>> + AsRef<[u8]> + Default + Clone + timely::ExchangeData,
    V: serde::Serialize + serde::de::DeserializeOwned,
{
    let config = args.job.into_config("state_churn")?;
    let workers = (config.workers.max(1) * config.peers.len().max(1)) as f64;
    let (keys, bytes, output) = (args.keys, args.value_bytes, args.output);
    let per_second = (keys as f64 * args.churn).max(1.0);
    let rewrites = (per_second * args.seconds as f64) as u64;
    let churn_opts = SourceOptions {
        rate_limit: Some((per_second / workers).ceil().max(1.0) as u64),
    };
    weir::run(config, move |job| {
        let load = job.source(
            "load",
            generator::items(keys, move |k| (k, V::from(value(k, bytes)))),
        )?;
        let churn = job.source(
            "churn",
            generator::items(rewrites, move |i| {
                let n = keys + i;
                (
                    n.wrapping_mul(0x2545_F491_4F6C_DD1D) % keys,
                    V::from(value(n, bytes)),
                )
            })
            .options(churn_opts),
        )?;
        load.concat(churn)
            .fold_by_key("state", |state: &mut V, v: V| *state = v)?
            // The state is what this job measures; its changes are not written.
            .filter(|_| false)
            .map(|(k, v, epoch): (u64, V, u64)| (k, v.as_ref().len(), epoch))
            .sink("none", files::jsonl(&output))
    })?;
    Ok(())
}
