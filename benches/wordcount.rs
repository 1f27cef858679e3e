//! Word-count throughput: plain timely, weir with checkpointing off, and weir
//! exactly-once with 1 s checkpoints, side by side in one run.
//!
//! `cargo bench --bench wordcount` (set `WEIR_BENCH_WORDS` to change the 10M words).
//! Every variant generates the same words (100k distinct), exchanges them by key over
//! 2 workers, keeps a running count per word, and writes each epoch's changed counts as
//! JSON lines into a fresh directory. Reports the median of 5 runs (`WEIR_BENCH_RUNS`),
//! the variants interleaved run by run, and the ratios.

use std::collections::HashMap;
use std::io::Write;
use std::time::Instant;

use timely::dataflow::channels::pact::Exchange;
use timely::dataflow::operators::generic::Operator;
use timely::dataflow::operators::Probe;
use weir::prelude::*;

// Allocate as weir's binaries do.
weir::global_allocator!();

const DISTINCT: u64 = 100_000;
const WORKERS: usize = 2;

fn word(i: u64) -> String {
    format!("w{}", i.wrapping_mul(2_654_435_761) % DISTINCT)
}

fn plain_timely(words: u64, out: &std::path::Path) {
    let out = out.to_path_buf();
    timely::execute(timely::Config::process(WORKERS), move |worker| {
        let (index, peers) = (worker.index() as u64, worker.peers() as u64);
        let out = out.clone();
        let probe = timely::dataflow::ProbeHandle::new();
        worker.dataflow::<u64, _, _>(|scope| {
            timely::dataflow::operators::generic::operator::source(scope, "gen", move |cap, info| {
                let activator = scope.activator_for(info.address);
                let mut cap = Some(cap);
                let mut next = index;
                move |output| {
                    if let Some(c) = cap.as_ref() {
                        let mut session = output.session(c);
                        for _ in 0..4096 {
                            if next >= words {
                                break;
                            }
                            session.give((word(next), 1u64));
                            next += peers;
                        }
                    }
                    if next >= words {
                        cap = None;
                    } else {
                        activator.activate();
                    }
                }
            })
            .container::<Vec<(String, u64)>>()
            .unary_frontier(Exchange::new(|(w, _): &(String, u64)| weir::runtime::keygroup::stable_hash(w)), "count", move |_cap, info| {
                let mut counts: HashMap<String, u64> = HashMap::new();
                let path = out.join(format!("plain-{}.jsonl", info.global_id));
                let mut file = Some(std::io::BufWriter::new(std::fs::File::create(path).unwrap()));
                move |(input, frontier), _output: &mut timely::dataflow::operators::generic::OutputBuilderSession<'_, u64, timely::container::CapacityContainerBuilder<Vec<()>>>| {
                    input.for_each(|_cap, data| {
                        for (w, n) in data.drain(..) {
                            *counts.entry(w).or_insert(0) += n;
                        }
                    });
                    if frontier.is_empty() {
                        if let Some(mut f) = file.take() {
                            for (w, c) in &counts {
                                writeln!(f, "{{\"word\":\"{w}\",\"count\":{c},\"epoch\":0}}").unwrap();
                            }
                            f.flush().unwrap();
                        }
                    }
                }
            })
            .probe_with(&probe);
        });
    })
    .unwrap();
}

fn weir_job(words: u64, out: &std::path::Path, chk: &std::path::Path, interval_ms: u64) {
    let config = JobConfig {
        job: "bench".into(),
        checkpoint_url: chk.to_string_lossy().into_owned(),
        checkpoint_interval_ms: interval_ms,
        workers: WORKERS,
        ..Default::default()
    };
    let out = out.to_path_buf();
    weir::run(config, move |job| {
        job.source("gen", generator::items(words, |i| (word(i), 1u64)))?
            .reduce_by_key("count", |c, n| *c += n)?
            .sink("out", files::jsonl(&out))
    })
    .unwrap();
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn main() {
    let words: u64 = std::env::var("WEIR_BENCH_WORDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000_000);
    let runs: usize = std::env::var("WEIR_BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5);
    let mut results: Vec<(&str, Vec<f64>)> = vec![
        ("plain timely", vec![]),
        ("weir, checkpointing off", vec![]),
        ("weir exactly-once, 1 s checkpoints", vec![]),
    ];
    for _ in 0..runs {
        for (i, (_, times)) in results.iter_mut().enumerate() {
            let dir = tempfile::tempdir().unwrap();
            let out = dir.path().join("out");
            std::fs::create_dir_all(&out).unwrap();
            let start = Instant::now();
            match i {
                0 => plain_timely(words, &out),
                1 => weir_job(words, &out, &dir.path().join("chk"), 0),
                _ => weir_job(words, &out, &dir.path().join("chk"), 1000),
            }
            times.push(start.elapsed().as_secs_f64());
        }
    }
    println!(
        "word count, {words} words, {DISTINCT} distinct, {WORKERS} workers, median of {runs} runs"
    );
    let base: Vec<f64> = results.iter().map(|(_, t)| median(t.clone())).collect();
    for ((name, _), secs) in results.iter().zip(&base) {
        println!(
            "{name:<38} {secs:>7.2} s  {:>12.0} words/s",
            words as f64 / secs
        );
    }
    println!(
        "weir off / plain timely:           {:.3}",
        base[0] / base[1]
    );
    println!(
        "weir exactly-once / weir off:      {:.3}",
        base[1] / base[2]
    );
}
