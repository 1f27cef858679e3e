//! A tour of weir's stateful operators, one per run, over events read from JSON lines.
//!
//! ```text
//! operators --operator OP --input DIR --output DIR --checkpoint-dir URL [job flags]
//! ```
//!
//! Input: files `events-NN.jsonl` (NN is the split) of
//! `{"id": u64, "split": u32, "key": u32, "ts": u64, "value": i64, "side": "L"|"R"}`.
//! Event time is `ts`, with watermarks per split allowing `--out-of-orderness` (default
//! 20). Output (`--output`, files `out-*.jsonl`), one JSON array per line, `[tag, [numbers]]`:
//!
//! | `--operator` | what it computes | output lines |
//! | --- | --- | --- |
//! | `tumbling` | sum of `value` per key in tumbling windows of 100 | `["window", [key, start, end, sum]]`, `["late", [id]]` |
//! | `sliding` | count per key in windows of 100 sliding by 25 | `["window", [key, start, end, count]]`, `["late", [id]]` |
//! | `session` | count per key in sessions with a gap of 50 | `["window", [key, start, end, count]]`, `["late", [id]]` |
//! | `dedup` | first event of each key (window longer than any input) | `["first", [key]]` |
//! | `interval-join` | left and right events of a key with `0 <= r.ts - l.ts <= 30` | `["pair", [left id, right id]]`, `["late", [id]]` |
//! | `join` | every left and right event of a key (no event time) | `["pair", [left id, right id]]` |
//! | `stateful-map` | each event with the running maximum of its key | `["max", [id, max]]` |
//! | `bytes-map` | the same, with byte-string keys and a byte-string state per key (the maximum's 8 bytes, then a byte per event of the key) | `["max", [id, max, events of the key so far]]` |
//! | `reduce` | the sum per key, as of every epoch that changed it | `["sum", [key, sum, epoch]]` |
//! | `flat-reduce` | the same sums, with `flat_reduce_by_key` over batches of lines | `["sum", [key, sum, epoch]]` |
//! | `differential` | differential dataflow on a checkpointed collection of `(key, id, value, side)`: `count` per key, `distinct` keys, `reduce` (largest value per key) and `join` of left and right events by key | changes `["dd-count", [key, n, diff]]`, `["dd-distinct", [key, diff]]`, `["dd-max", [key, max, diff]]`, `["dd-pair", [left id, right id, diff]]` |

use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use serde::{Deserialize, Serialize};
use weir::prelude::*;

weir::global_allocator!();

#[derive(Parser, Debug)]
#[command(about = "Runs one of weir's stateful operators over JSON-lines events")]
struct Args {
    /// The operator to run (see the module documentation).
    #[arg(long)]
    operator: String,
    /// Directory of `events-NN.jsonl` files.
    #[arg(long)]
    input: PathBuf,
    /// Directory for the committed output.
    #[arg(long)]
    output: PathBuf,
    /// Allowed out-of-orderness of event time within a split.
    #[arg(long, default_value_t = 20)]
    out_of_orderness: u64,
    /// Lines per second per worker; unlimited by default.
    #[arg(long)]
    rate_limit: Option<u64>,
    #[command(flatten)]
    job: JobArgs,
}

/// One input event.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Event {
    id: u64,
    split: u32,
    key: u32,
    ts: u64,
    value: i64,
    side: String,
}

/// One output line: a tag and numbers, written as `["tag", [n, ...]]`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Line(String, Vec<i64>);

type Out = Line;

fn main() {
    weir::cli::main_with(|| {
        let args = Args::parse();
        let config = args.job.into_config("operators")?;
        let splits = splits_of(&args.input)?;
        let op = args.operator.clone();
        anyhow::ensure!(
            [
                "tumbling",
                "sliding",
                "session",
                "dedup",
                "interval-join",
                "join",
                "stateful-map",
                "bytes-map",
                "reduce",
                "flat-reduce",
                "differential"
            ]
            .contains(&op.as_str()),
            "unknown --operator `{op}`; see `operators --help`"
        );
        let (input, output) = (args.input, args.output);
        let opts = SourceOptions {
            rate_limit: args.rate_limit,
        };
        let bound = args.out_of_orderness;
        weir::run(config, move |job| {
            if op == "flat-reduce" {
                // Each batch of lines is parsed and summed where it is read.
                return job
                    .source("events", files::line_batches(&input).options(opts))?
                    .flat_reduce_by_key(
                        "sum",
                        |lines: &files::LineBatch, sums: &mut Combiner<u32, i64>| {
                            for e in lines.lines().map(parse) {
                                sums.emit(&e.key, e.value);
                            }
                        },
                        |s, v| *s += v,
                    )?
                    .map(|(k, s, epoch)| Line("sum".to_string(), vec![k as i64, s, epoch as i64]))
                    .sink("out", files::jsonl(&output));
            }
            let events = job
                .source("events", files::lines(&input).options(opts))?
                .map(|l| parse(&l));
            let out = match op.as_str() {
                "join" => {
                    let left = events
                        .clone()
                        .flat_map(|e| (e.side == "L").then_some((e.key, e.id)));
                    let right = events.flat_map(|e| (e.side == "R").then_some((e.key, e.id)));
                    left.join_ttl("join", right, Ttl::Never)?
                        .map(|(_, l, r)| Line("pair".to_string(), vec![l as i64, r as i64]))
                }
                "stateful-map" => {
                    events
                        .key_by(|e| e.key)
                        .stateful_map("max", |_k, max: &mut i64, e| {
                            *max = (*max).max(e.value);
                            Some(Line("max".to_string(), vec![e.id as i64, *max]))
                        })?
                }
                // `Vec<u8>` keys and states, which checkpoints write and restores read
                // as byte strings.
                "bytes-map" => events
                    .key_by(|e| e.key.to_le_bytes().to_vec())
                    .stateful_map("max-bytes", |_k, state: &mut Vec<u8>, e| {
                        let max = match state.get(..8) {
                            Some(b) => i64::from_le_bytes(b.try_into().expect("8 bytes")),
                            None => 0,
                        }
                        .max(e.value);
                        state.resize(state.len().max(8), 0);
                        state[..8].copy_from_slice(&max.to_le_bytes());
                        state.push(e.id as u8);
                        let seen = (state.len() - 8) as i64;
                        Some(Line("max".to_string(), vec![e.id as i64, max, seen]))
                    })?,
                "reduce" => events
                    .map(|e| (e.key, e.value))
                    .reduce_by_key("sum", |s, v| *s += v)?
                    .map(|(k, s, epoch)| Line("sum".to_string(), vec![k as i64, s, epoch as i64])),
                "differential" => differential(events)?,
                _ => event_time(&op, events, splits.clone(), bound)?,
            };
            out.sink("out", files::jsonl(&output))
        })?;
        Ok(())
    })
}

/// One input line as an event; the input is the test's own, so a bad line is a bug.
fn parse(line: &str) -> Event {
    serde_json::from_str(line).unwrap_or_else(|e| panic!("bad event {line}: {e}"))
}

/// Differential dataflow operators on a checkpointed collection.
fn differential(events: Flow<'_, Event>) -> weir::runtime::Result<Flow<'_, Out>> {
    let all = events
        .map(|e| ((e.key, e.id, e.value, e.side == "L"), 1isize))
        .to_collection("events-collection")?;
    let keys = all.collection().clone().map(|(k, _, _, _)| k);
    let counts = all
        .derived(keys.clone().count())
        .changes()
        .map(|((k, n), _, d)| Line("dd-count".into(), vec![k as i64, n as i64, d as i64]));
    let distinct = all
        .derived(keys.distinct())
        .changes()
        .map(|(k, _, d)| Line("dd-distinct".into(), vec![k as i64, d as i64]));
    let max = all.collection().clone().map(|(k, _, v, _)| (k, v)).reduce(
        |_k, input: &[(&i64, isize)], output: &mut Vec<(i64, isize)>| {
            output.push((*input[input.len() - 1].0, 1))
        },
    );
    let max = all
        .derived(max)
        .changes()
        .map(|((k, m), _, d)| Line("dd-max".into(), vec![k as i64, m, d as i64]));
    let left = all
        .collection()
        .clone()
        .flat_map(|(k, id, _, left)| left.then_some((k, id)));
    let right = all
        .collection()
        .clone()
        .flat_map(|(k, id, _, left)| (!left).then_some((k, id)));
    let pairs = all
        .derived(left.join(right))
        .changes()
        .map(|((_, (l, r)), _, d)| Line("dd-pair".into(), vec![l as i64, r as i64, d as i64]));
    Ok(counts.concat(distinct).concat(max).concat(pairs))
}

/// The event-time operators.
fn event_time<'s>(
    op: &str,
    events: Flow<'s, Event>,
    splits: Vec<u32>,
    bound: u64,
) -> weir::runtime::Result<Flow<'s, Out>> {
    let (events, _rejected) = events
        .assign_event_time("clock", |e| Ok(e.ts))
        .splits(splits, |e| e.split)
        .bounded(bound)
        .build()?;
    let late = |l: Late<Event>| Line("late".to_string(), vec![l.record.data.id as i64]);
    let fired = |f: Fired<u32, i64>| {
        Line(
            "window".to_string(),
            vec![f.key as i64, f.start as i64, f.end as i64, f.value],
        )
    };
    Ok(match op {
        "tumbling" | "sliding" | "session" => {
            let (windows, count): (Windows, bool) = match op {
                "tumbling" => (Windows::tumbling(100), false),
                "sliding" => (Windows::sliding(100, 25), true),
                _ => (Windows::session(50), true),
            };
            let (w, l) = events
                .window("windows", windows)
                .key(|e| e.key)
                .fold(move |acc: &mut i64, e| *acc += if count { 1 } else { e.value })
                .merge(|acc, other| *acc += other)
                .build()?;
            w.map(fired).concat(l.map(late))
        }
        "dedup" => {
            let (first, l) = events.deduplicate("dedup", |e| e.key, u64::MAX / 4)?;
            first
                .into_flow()
                .map(|e| Line("first".to_string(), vec![e.key as i64]))
                .concat(l.map(late))
        }
        _ => {
            let left = events.clone().filter(|e| e.side == "L");
            let right = events.filter(|e| e.side == "R");
            let (pairs, l) = left
                .interval_join("interval-join", right)
                .on(|e| e.key, |e| e.key)
                .within(0, 30)
                .build()?;
            pairs
                .map(|(_, l, r)| Line("pair".to_string(), vec![l.data.id as i64, r.data.id as i64]))
                .concat(l.map(|l| {
                    let id = match l.record.data {
                        Side::Left(e) | Side::Right(e) => e.id,
                    };
                    Line("late".to_string(), vec![id as i64])
                }))
        }
    })
}

/// The split numbers of the `events-NN.jsonl` files in `dir`.
fn splits_of(dir: &std::path::Path) -> anyhow::Result<Vec<u32>> {
    let mut splits = Vec::new();
    for entry in
        std::fs::read_dir(dir).with_context(|| format!("read input directory {}", dir.display()))?
    {
        let name = entry?.file_name().to_string_lossy().into_owned();
        if let Some(n) = name
            .strip_prefix("events-")
            .and_then(|n| n.strip_suffix(".jsonl"))
        {
            splits
                .push(n.parse().with_context(|| {
                    format!("input file {name}: expected events-<split>.jsonl")
                })?);
        }
    }
    splits.sort_unstable();
    Ok(splits)
}
