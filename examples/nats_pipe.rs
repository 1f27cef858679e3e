//! A NATS JetStream pipeline, exactly once: events in from one stream, enriched events
//! out to another, published with deduplicating message ids.
//!
//! ```text
//! nats_pipe publish --nats URL --input STREAM --output STREAM [--count 3000] [--splits 4]
//! nats_pipe dump --nats URL --stream STREAM
//! nats_pipe --nats URL --input STREAM --output STREAM [--splits 4] [--rate-limit N] [job flags]
//! ```
//!
//! `publish` creates the two streams afresh (`<input>` capturing `<input>.>`, `<output>`
//! capturing `<output>.>`, ten-minute duplicate window) and publishes `--count` events
//! `{"id": i, "key": "k<i % 7>"}`, event `i` on subject `<input>.<i % splits>`.
//!
//! The job reads the input stream up to its last message as of the start (one split per
//! subject `<input>.<n>`), spreads the events over the workers by id, and publishes
//! `{"id", "key", "seq"}` (with `seq` the input's stream sequence) on `<output>.events`.
//! It exits 0 when every event is published.
//!
//! `dump` prints every message of a stream as a JSON line
//! `{"seq", "subject", "msg_id", "payload"}`.

use anyhow::Context;
use clap::{Parser, Subcommand};
use serde::{Deserialize, Serialize};
use weir::connectors::nats::{async_nats, NatsRecord, NatsSinkOptions, NatsSourceOptions};
use weir::prelude::*;

weir::global_allocator!();

#[derive(Parser, Debug)]
#[command(
    about = "A NATS JetStream pipeline, exactly once",
    args_conflicts_with_subcommands = true
)]
struct Args {
    #[command(subcommand)]
    command: Option<Command>,
    /// The NATS server.
    #[arg(long, default_value = "nats://127.0.0.1:4222")]
    nats: String,
    /// The input stream.
    #[arg(long)]
    input: Option<String>,
    /// The output stream.
    #[arg(long)]
    output: Option<String>,
    /// Input subjects `<input>.0` .. `<input>.<splits - 1>`, one split each.
    #[arg(long, default_value_t = 4)]
    splits: u32,
    /// Messages per second per worker (for demos and chaos tests); unlimited by default.
    #[arg(long)]
    rate_limit: Option<u64>,
    #[command(flatten)]
    job: JobArgs,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Creates the streams and publishes events.
    Publish {
        /// The NATS server.
        #[arg(long, default_value = "nats://127.0.0.1:4222")]
        nats: String,
        /// The input stream to create and fill.
        #[arg(long)]
        input: String,
        /// The output stream to create empty.
        #[arg(long)]
        output: String,
        /// Events to publish.
        #[arg(long, default_value_t = 3000)]
        count: u64,
        /// Input subjects to spread them over.
        #[arg(long, default_value_t = 4)]
        splits: u32,
    },
    /// Prints every message of a stream as a JSON line.
    Dump {
        /// The NATS server.
        #[arg(long, default_value = "nats://127.0.0.1:4222")]
        nats: String,
        /// The stream.
        #[arg(long)]
        stream: String,
    },
}

#[derive(Serialize, Deserialize, Clone, Debug)]
struct Event {
    id: u64,
    key: String,
}

#[derive(Serialize, Deserialize, Clone, Debug)]
struct Enriched {
    id: u64,
    key: String,
    seq: u64,
}

fn main() {
    weir::cli::main_with(|| {
        let args = Args::parse();
        match args.command {
            Some(Command::Publish {
                nats,
                input,
                output,
                count,
                splits,
            }) => publish(&nats, &input, &output, count, splits),
            Some(Command::Dump { nats, stream }) => dump(&nats, &stream),
            None => pipe(args),
        }
    })
}

fn pipe(args: Args) -> anyhow::Result<()> {
    let input = args.input.context("--input STREAM is required")?;
    let output = args.output.context("--output STREAM is required")?;
    let config = args.job.into_config("nats_pipe")?;
    let source = NatsSourceOptions {
        url: args.nats.clone(),
        stream: input.clone(),
        subjects: (0..args.splits).map(|n| format!("{input}.{n}")).collect(),
        bounded: true,
        rate_limit: args.rate_limit,
    };
    let sink = NatsSinkOptions {
        url: args.nats,
        subject: format!("{output}.events"),
        stream: Some(output),
    };
    weir::run(config, move |job| {
        job.source("events", source.clone())?
            .map(|m| {
                let event: Event = serde_json::from_slice(&m.payload).unwrap_or_else(|e| {
                    panic!("message {} is not an event: {e}", m.stream_sequence)
                });
                Enriched {
                    id: event.id,
                    key: event.key,
                    seq: m.stream_sequence,
                }
            })
            .exchange(|e| e.id)
            .map(|e| NatsRecord::json(&e).header("key", e.key.as_str()))
            .sink("enriched", sink.clone())
    })?;
    Ok(())
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?)
}

fn publish(url: &str, input: &str, output: &str, count: u64, splits: u32) -> anyhow::Result<()> {
    use async_nats::jetstream::stream::Config;
    runtime()?.block_on(async {
        let client = async_nats::connect(url)
            .await
            .with_context(|| format!("connect to {url}"))?;
        let js = async_nats::jetstream::new(client);
        for name in [input, output] {
            let _ = js.delete_stream(name).await;
            js.create_stream(Config {
                name: name.to_string(),
                subjects: vec![format!("{name}.>")],
                duplicate_window: std::time::Duration::from_secs(600),
                ..Default::default()
            })
            .await
            .with_context(|| format!("create stream {name}"))?;
        }
        let mut acks = Vec::new();
        for id in 0..count {
            let event = Event {
                id,
                key: format!("k{}", id % 7),
            };
            let subject = format!("{input}.{}", id % u64::from(splits.max(1)));
            acks.push(
                js.publish(subject, serde_json::to_vec(&event)?.into())
                    .await?,
            );
            if acks.len() >= 512 {
                for ack in acks.drain(..) {
                    ack.await?;
                }
            }
        }
        for ack in acks {
            ack.await?;
        }
        Ok(())
    })
}

fn dump(url: &str, stream: &str) -> anyhow::Result<()> {
    runtime()?.block_on(async {
        let client = async_nats::connect(url)
            .await
            .with_context(|| format!("connect to {url}"))?;
        let js = async_nats::jetstream::new(client);
        let stream_handle = js
            .get_stream(stream)
            .await
            .with_context(|| format!("stream {stream}"))?;
        let info = stream_handle.get_info().await?;
        let mut out = std::io::BufWriter::new(std::io::stdout().lock());
        for seq in info.state.first_sequence..=info.state.last_sequence {
            if info.state.messages == 0 {
                break;
            }
            let m = stream_handle
                .get_raw_message(seq)
                .await
                .with_context(|| format!("message {seq} of {stream}"))?;
            let msg_id = m.headers.get("Nats-Msg-Id").map(|v| v.as_str().to_string());
            let line = serde_json::json!({
                "seq": m.sequence,
                "subject": m.subject.to_string(),
                "msg_id": msg_id,
                "payload": String::from_utf8_lossy(&m.payload),
            });
            use std::io::Write;
            writeln!(out, "{line}")?;
        }
        Ok(())
    })
}
