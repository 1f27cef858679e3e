//! Click sessions in event time, exactly once: out-of-order events, duplicates, late and
//! malformed records.
//!
//! ```text
//! sessions generate --input DIR [--splits 8] [--events-per-split 2000] [--users 50] [--seed 1]
//! sessions --input DIR --output DIR --checkpoint-dir URL [--rate-limit LINES_PER_S] [job flags]
//! ```
//!
//! `generate` writes click events as JSON lines, one file per split
//! (`clicks-NN.jsonl`): `{"id", "user", "ts", "split"}`. Within a split, event time runs
//! forward with out-of-order jitter of at most 50; some events are sent twice in a row
//! (the same id, as a retrying producer would), a few arrive far too late, and a few are
//! malformed (not JSON, or without `ts`).
//!
//! The job gives every event its time (watermarks per split, 60 of out-of-orderness),
//! drops repeated ids (`deduplicate`, 10 000 of event time), and closes each user's
//! session after 300 of inactivity (`window` with `Windows::session`). It commits, per
//! epoch, into `--output`:
//! - `sessions-*.jsonl`: `{"user", "start", "end", "clicks"}`, one line per session;
//! - `rejected-*.jsonl`: `{"line", "reason"}` for records without a timestamp;
//! - `late-*.jsonl`: `{"id", "ts", "reason"}` for records behind the watermark.
//!
//! With `--postgres URL`, the sessions also go into a PostgreSQL table
//! (`--postgres-table`, default `sessions`), by two-phase commit or by upsert
//! (`--postgres-mode`).

use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::{Parser, Subcommand};
use serde::{Deserialize, Serialize};
use weir::prelude::*;

weir::global_allocator!();

/// Out-of-order jitter of generated event times.
const JITTER: u64 = 50;
/// The watermark's allowed out-of-orderness.
const OUT_OF_ORDERNESS: u64 = 60;
/// Inactivity that ends a session.
const SESSION_GAP: u64 = 300;
/// How long repeated ids are remembered, in event time.
const DEDUP_WINDOW: u64 = 10_000;

#[derive(Parser, Debug)]
#[command(
    about = "Event-time click sessions, exactly once",
    args_conflicts_with_subcommands = true
)]
struct Args {
    #[command(subcommand)]
    command: Option<Command>,
    /// Directory of click files (`clicks-NN.jsonl`).
    #[arg(long)]
    input: Option<PathBuf>,
    /// Directory for the committed output.
    #[arg(long)]
    output: Option<PathBuf>,
    /// Lines per second per worker (for demos and chaos tests); unlimited by default.
    #[arg(long)]
    rate_limit: Option<u64>,
    /// Also write the sessions into this PostgreSQL database (URL).
    #[arg(long)]
    postgres: Option<String>,
    /// The table for `--postgres`: columns `user`, `start`, `end`, `clicks`, unique on
    /// (`user`, `start`).
    #[arg(long, default_value = "sessions")]
    postgres_table: String,
    /// `two-phase` (exactly-once by two-phase commit) or `upsert` (effectively-once).
    #[arg(long, default_value = "two-phase")]
    postgres_mode: String,
    #[command(flatten)]
    job: JobArgs,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Writes generated click events.
    Generate {
        /// Directory to write `clicks-NN.jsonl` into.
        #[arg(long)]
        input: PathBuf,
        /// Number of splits (files).
        #[arg(long, default_value_t = 8)]
        splits: u32,
        /// Events per split.
        #[arg(long, default_value_t = 2000)]
        events_per_split: u64,
        /// Number of users.
        #[arg(long, default_value_t = 50)]
        users: u32,
        /// Seeds the generator.
        #[arg(long, default_value_t = 1)]
        seed: u64,
    },
}

/// A click as written by `generate`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Click {
    id: u64,
    user: u32,
    ts: Option<u64>,
    split: u32,
}

/// An input line: its split (from the file name) and what parsing it gave.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Line {
    split: u32,
    click: Result<Click, String>,
    raw: String,
}

#[derive(Serialize, Deserialize, Clone, Debug)]
struct Session {
    user: u32,
    start: u64,
    end: u64,
    clicks: u64,
}

#[derive(Serialize, Deserialize, Clone, Debug)]
struct RejectedLine {
    line: String,
    reason: String,
}

#[derive(Serialize, Deserialize, Clone, Debug)]
struct LateClick {
    id: u64,
    ts: u64,
    reason: String,
}

fn main() {
    weir::cli::main_with(|| {
        let args = Args::parse();
        if let Some(Command::Generate {
            input,
            splits,
            events_per_split,
            users,
            seed,
        }) = args.command
        {
            return generate(&input, splits, events_per_split, users, seed);
        }
        let input = args.input.context("--input DIR is required")?;
        let output = args.output.context("--output DIR is required")?;
        let splits = list_splits(&input)?;
        let config = args.job.into_config("sessions")?;
        let opts = SourceOptions {
            rate_limit: args.rate_limit,
        };
        let postgres = match args.postgres {
            None => None,
            Some(url) => Some(weir::connectors::postgres::PostgresOptions {
                url,
                table: args.postgres_table,
                mode: match args.postgres_mode.as_str() {
                    "two-phase" => weir::connectors::postgres::PgMode::TwoPhase,
                    "upsert" => weir::connectors::postgres::PgMode::Upsert {
                        key: vec!["user".into(), "start".into()],
                    },
                    other => {
                        anyhow::bail!("--postgres-mode must be two-phase or upsert, not `{other}`")
                    }
                },
            }),
        };
        weir::run(config, move |job| {
            let (events, rejected) = job
                .source("clicks", files::lines(&input).options(opts))?
                .map(parse)
                .assign_event_time("event-time", |l| match &l.click {
                    Ok(Click { ts: Some(ts), .. }) => Ok(*ts),
                    Ok(_) => Err("the click has no `ts`".to_string()),
                    Err(e) => Err(e.clone()),
                })
                .splits(splits.clone(), |l| l.split)
                .bounded(OUT_OF_ORDERNESS)
                .build()?;
            let clicks = events.map(|l| l.click.expect("timestamped lines parsed"));
            let (unique, late_repeats) = clicks.deduplicate("dedup", |c| c.id, DEDUP_WINDOW)?;
            let (sessions, late) = unique
                .window("session-windows", Windows::session(SESSION_GAP))
                .key(|c| c.user)
                .fold(|n: &mut u64, _c| *n += 1)
                .merge(|n, m| *n += m)
                .build()?;
            let sessions = sessions.map(|f| Session {
                user: f.key,
                start: f.start,
                end: f.end,
                clicks: f.value,
            });
            if let Some(pg) = postgres.clone() {
                sessions.clone().sink("sessions-db", pg)?;
            }
            sessions.sink("sessions", files::jsonl(&output))?;
            rejected
                .map(|r| RejectedLine {
                    line: r.data.raw,
                    reason: r.reason,
                })
                .sink("rejected", files::jsonl(&output))?;
            late.concat(late_repeats)
                .map(|l| LateClick {
                    id: l.record.data.id,
                    ts: l.record.ts,
                    reason: l.reason,
                })
                .sink("late", files::jsonl(&output))
        })?;
        Ok(())
    })
}

fn parse(raw: String) -> Line {
    let click: Result<Click, String> =
        serde_json::from_str(&raw).map_err(|e| format!("not a click: {e}"));
    let split = click.as_ref().map_or(0, |c| c.split);
    Line { split, click, raw }
}

/// The split numbers of the `clicks-NN.jsonl` files in `dir`.
fn list_splits(dir: &Path) -> anyhow::Result<Vec<u32>> {
    let mut splits = Vec::new();
    for entry in std::fs::read_dir(dir)
        .with_context(|| format!("read the input directory {}", dir.display()))?
    {
        let name = entry?.file_name().to_string_lossy().into_owned();
        if let Some(n) = name
            .strip_prefix("clicks-")
            .and_then(|n| n.strip_suffix(".jsonl"))
        {
            splits.push(n.parse::<u32>().with_context(|| {
                format!("input file {name}: expected clicks-<split number>.jsonl")
            })?);
        }
    }
    anyhow::ensure!(
        !splits.is_empty(),
        "no clicks-NN.jsonl files in {}; write some with `sessions generate --input DIR`",
        dir.display()
    );
    splits.sort_unstable();
    Ok(splits)
}

/// A small deterministic generator (SplitMix64).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

fn generate(dir: &Path, splits: u32, per_split: u64, users: u32, seed: u64) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    for split in 0..splits {
        let mut rng = Rng(seed ^ (u64::from(split) + 1).wrapping_mul(0xA24B_AED4_963E_E407));
        let mut out = String::new();
        let mut t: u64 = 1_000;
        for i in 0..per_split {
            t += rng.below(40);
            let roll = rng.below(1000);
            let id = u64::from(split) * 1_000_000_000 + i;
            let user = rng.below(u64::from(users)) as u32;
            let line = if roll < 5 {
                "{\"id\": not json".to_string()
            } else if roll < 10 {
                serde_json::to_string(&Click {
                    id,
                    user,
                    ts: None,
                    split,
                })?
            } else {
                // Far behind the watermark when t is large enough; otherwise merely
                // out of order.
                let ts = if roll < 15 {
                    t.saturating_sub(1_000)
                } else {
                    t - rng.below(JITTER + 1)
                };
                serde_json::to_string(&Click {
                    id,
                    user,
                    ts: Some(ts),
                    split,
                })?
            };
            out.push_str(&line);
            out.push('\n');
            // Some events are sent twice in a row, as by a producer that retried.
            if roll >= 970 {
                out.push_str(&line);
                out.push('\n');
            }
        }
        let path = dir.join(format!("clicks-{split:02}.jsonl"));
        std::fs::write(&path, out).with_context(|| format!("write {}", path.display()))?;
    }
    Ok(())
}
