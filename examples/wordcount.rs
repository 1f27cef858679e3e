//! Word count, exactly once: the contract that weir's tests and benchmarks use.
//!
//! ```text
//! wordcount --input DIR --output DIR --checkpoint-dir URL [--checkpoint-interval-ms N]
//!           [--delivery MODE] [--workers W] [--restore latest] [--rate-limit LINES_PER_S]
//!           [--output-url URL [--output-format jsonl|parquet]] [--record-per-word]
//! ```
//!
//! Reads every file in DIR (lines of whitespace-separated words), keeps a running
//! count per word, and for every epoch commits one JSON line per word whose count
//! changed in it: `{"word": "...", "count": N, "epoch": E}`. Exits 0 when all input is
//! processed and committed.
//!
//! With `--output-url` (`s3://bucket/prefix`, `file:///dir`), the same records also go
//! through the object-store sink `objects`, as JSON lines or as Parquet files with the
//! columns `word` (utf8), `count` and `epoch` (int64).

use std::path::PathBuf;

use clap::Parser;
use serde::Serialize;
use weir::connectors::objects::{ObjectFormat, ObjectSinkOptions, ParquetSchema, ParquetType};
use weir::prelude::*;

weir::global_allocator!();

#[derive(Parser, Debug)]
#[command(about = "Counts words exactly once")]
struct Args {
    /// Directory of input text files.
    #[arg(long)]
    input: PathBuf,
    /// Directory for the committed output (`*.jsonl`).
    #[arg(long)]
    output: PathBuf,
    /// Lines per second per worker (for demos and chaos tests); unlimited by default.
    #[arg(long)]
    rate_limit: Option<u64>,
    /// Also write the counts as objects under this URL (`s3://bucket/prefix`,
    /// `file:///dir`), exactly once.
    #[arg(long)]
    output_url: Option<String>,
    /// Read a `String` per line and count with `flat_map` into one `(word, 1)` record
    /// per word and `reduce_by_key`, instead of batches of lines and
    /// `flat_reduce_by_key`: the same output and checkpoints, for comparing the two.
    #[arg(long)]
    record_per_word: bool,
    /// The format of the objects under `--output-url`.
    #[arg(long, value_enum, default_value = "jsonl", requires = "output_url")]
    output_format: Format,
    #[command(flatten)]
    job: JobArgs,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug)]
enum Format {
    Jsonl,
    Parquet,
}

#[derive(Serialize, serde::Deserialize, Clone, Debug)]
struct Count {
    word: String,
    count: u64,
    epoch: u64,
}

fn main() {
    weir::cli::main_with(|| {
        let args = Args::parse();
        let config = args.job.into_config("wordcount")?;
        let (input, output) = (args.input, args.output);
        let record_per_word = args.record_per_word;
        let objects = args.output_url.map(|url| ObjectSinkOptions {
            url,
            format: match args.output_format {
                Format::Jsonl => ObjectFormat::JsonLines,
                Format::Parquet => ObjectFormat::Parquet(ParquetSchema::new(&[
                    ("word", ParquetType::Utf8),
                    ("count", ParquetType::Int64),
                    ("epoch", ParquetType::Int64),
                ])),
            },
        });
        let opts = SourceOptions {
            rate_limit: args.rate_limit,
        };
        weir::run(config, move |job| {
            let counts = if record_per_word {
                job.source("lines", files::lines(&input).options(opts))?
                    .flat_map(|line| {
                        line.split_whitespace()
                            .map(|w| (w.to_string(), 1))
                            .collect::<Vec<_>>()
                    })
                    .reduce_by_key("counts", |count, n| *count += n)?
            } else {
                // Lines come in batches, and each word is merged into its count of the
                // epoch where it is read: a word is copied only when an epoch first
                // sees it.
                job.source("lines", files::line_batches(&input).options(opts))?
                    .flat_reduce_by_key(
                        "counts",
                        |lines: &files::LineBatch, words: &mut Combiner<String, u64>| {
                            for word in lines.lines().flat_map(str::split_whitespace) {
                                words.emit(word, 1);
                            }
                        },
                        |count, n| *count += n,
                    )?
            }
            .map(|(word, count, epoch)| Count { word, count, epoch });
            if let Some(opts) = objects.clone() {
                counts.clone().sink("objects", opts)?;
            }
            counts.sink("output", files::jsonl(&output))
        })?;
        Ok(())
    })
}
