//! PostgreSQL sink throughput: two-phase commit against upsert, side by side in one run.
//!
//! Needs the test server: `scripts/services.sh up`, then
//! `eval "$(scripts/services.sh env)"` (sets `WEIR_TEST_POSTGRES_URL`), then
//! `cargo bench --bench postgres_sink` (set `WEIR_BENCH_ROWS` to change the 1M rows,
//! `WEIR_BENCH_RUNS` to change the 5 runs). Fails, never skips, without the URL.
//!
//! Every variant runs the same exactly-once job over 2 workers with 1 s checkpoints to a
//! fresh local directory: weir's generator emits `{id, account, amount}` rows (`id` runs
//! through `0..rows`), and the PostgreSQL sink writes them into a table created afresh before
//! each run (`id bigint PRIMARY KEY, account bigint, amount bigint`), either with
//! [`PgMode::TwoPhase`] (one prepared transaction per epoch and worker, committed with the
//! checkpoint) or with [`PgMode::Upsert`] on `id` (`INSERT ... ON CONFLICT (id) DO UPDATE`,
//! committed at once). A run's time is the wall time until the job returns, when every
//! row is committed. Reports the median of the runs, the variants interleaved run by run,
//! and the ratio; each run checks that the table holds exactly `rows` rows with the
//! expected sums and that no prepared transaction of the job is left, and counts the
//! transactions that wrote rows (by `xmin`) and the rows of the largest (with two-phase
//! commit, checked against the ledger table `weir_committed`).

use std::process::Command;
use std::time::Instant;

use weir::connectors::postgres::{PgMode, PostgresOptions};
use weir::prelude::*;

/// Worker threads.
const WORKERS: usize = 2;
/// The table every run writes into (dropped and created again before each run).
const TABLE: &str = "bench_postgres_sink";
/// The job's name; the two-phase transactions' ids start with `weir:<JOB>:<SINK>:`.
const JOB: &str = "bench-postgres-sink";
/// The sink's name.
const SINK: &str = "rows";
/// Distinct accounts.
const ACCOUNTS: i64 = 10_000;

/// A row of the table.
#[derive(serde::Serialize, serde::Deserialize, Clone)]
struct Row {
    id: i64,
    account: i64,
    amount: i64,
}

/// Row `i`.
fn row(i: u64) -> Row {
    let id = i as i64;
    Row {
        id,
        account: id.wrapping_mul(2_654_435_761) % ACCOUNTS,
        amount: id % 1_000,
    }
}

/// The server's URL, from `WEIR_TEST_POSTGRES_URL`.
fn url() -> String {
    std::env::var("WEIR_TEST_POSTGRES_URL").unwrap_or_else(|_| {
        eprintln!(
            "postgres_sink: WEIR_TEST_POSTGRES_URL is not set: start the test server with \
             `scripts/services.sh up` and `eval \"$(scripts/services.sh env)\"`"
        );
        std::process::exit(2)
    })
}

/// Runs `sql` with `psql` and returns its unaligned, tuples-only output.
fn psql(url: &str, sql: &str) -> String {
    let out = Command::new("psql")
        .args([url, "-qtAX", "-v", "ON_ERROR_STOP=1", "-c", sql])
        .output()
        .unwrap_or_else(|e| panic!("cannot run psql (is it installed?): {e}"));
    assert!(
        out.status.success(),
        "psql `{sql}` failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Drops and creates the table.
fn fresh_table(url: &str) {
    psql(
        url,
        &format!(
            "DROP TABLE IF EXISTS {TABLE}; \
             CREATE TABLE {TABLE} (id bigint PRIMARY KEY, account bigint, amount bigint)"
        ),
    );
}

/// Runs the job once, writing `rows` rows with `mode`.
fn weir_job(url: &str, rows: u64, chk: &std::path::Path, mode: PgMode) {
    let config = JobConfig {
        job: JOB.into(),
        checkpoint_url: chk.to_string_lossy().into_owned(),
        checkpoint_interval_ms: 1000,
        workers: WORKERS,
        ..Default::default()
    };
    let opts = PostgresOptions {
        url: url.to_string(),
        table: TABLE.into(),
        mode,
    };
    weir::run(config, move |job| {
        job.source("generator", generator::items(rows, row))?
            .sink(SINK, opts.clone())
    })
    .unwrap();
}

/// What a run committed: transactions that wrote rows, and the rows of the largest.
#[derive(Clone, Copy)]
struct Written {
    transactions: u64,
    largest: u64,
}

/// Checks the table after a run and returns what the run's transactions wrote (rows
/// grouped by the transaction that wrote them, `xmin`).
fn check(url: &str, name: &str, rows: u64, mode: &PgMode) -> Written {
    let n = rows as i64;
    let got = psql(
        url,
        &format!("SELECT count(*), coalesce(sum(id), 0), coalesce(sum(amount), 0) FROM {TABLE}"),
    );
    let want = format!(
        "{n}|{}|{}",
        n * (n - 1) / 2,
        (0..n).map(|i| i % 1_000).sum::<i64>()
    );
    assert_eq!(got, want, "{name}: count(*)|sum(id)|sum(amount) of {TABLE}");
    let prefix = format!("weir:{JOB}:{SINK}:%");
    let left = psql(
        url,
        &format!("SELECT count(*) FROM pg_prepared_xacts WHERE gid LIKE '{prefix}'"),
    );
    assert_eq!(left, "0", "{name}: prepared transactions left");
    let by_xact = psql(
        url,
        &format!(
            "SELECT count(*), max(c) FROM (SELECT count(*) AS c FROM {TABLE} GROUP BY xmin::text) s"
        ),
    );
    let (transactions, largest) = by_xact.split_once('|').expect("two columns");
    let written = Written {
        transactions: transactions.parse().expect("a count"),
        largest: largest.parse().expect("a count"),
    };
    if *mode == PgMode::TwoPhase {
        let ledger: u64 = psql(
            url,
            &format!("SELECT count(*) FROM weir_committed WHERE gid LIKE '{prefix}'"),
        )
        .parse()
        .expect("a count");
        assert_eq!(
            ledger, written.transactions,
            "{name}: ledger rows against transactions that wrote rows"
        );
    }
    written
}

/// The median of `v`.
fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn main() {
    let url = url();
    let rows: u64 = std::env::var("WEIR_BENCH_ROWS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let runs: usize = std::env::var("WEIR_BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5);
    assert!(
        rows > 0 && runs > 0,
        "WEIR_BENCH_ROWS and WEIR_BENCH_RUNS must be > 0"
    );
    let modes = [
        ("two-phase commit", PgMode::TwoPhase),
        (
            "upsert on id",
            PgMode::Upsert {
                key: vec!["id".into()],
            },
        ),
    ];
    let mut times: Vec<Vec<f64>> = vec![vec![]; modes.len()];
    let mut written: Vec<Vec<Written>> = vec![vec![]; modes.len()];
    for run in 0..runs {
        for (i, (name, mode)) in modes.iter().enumerate() {
            fresh_table(&url);
            let dir = tempfile::tempdir().unwrap();
            let chk = dir.path().join("chk");
            let start = Instant::now();
            weir_job(&url, rows, &chk, mode.clone());
            let secs = start.elapsed().as_secs_f64();
            times[i].push(secs);
            let w = check(&url, name, rows, mode);
            written[i].push(w);
            eprintln!(
                "run {run}: {name:<18} {secs:>7.2} s  {:>6.3} M rows/s  ({} transactions, \
                 largest {} rows)",
                rows as f64 / secs / 1e6,
                w.transactions,
                w.largest
            );
        }
    }
    psql(&url, &format!("DROP TABLE IF EXISTS {TABLE}"));
    println!(
        "PostgreSQL sink, {rows} rows {{id, account, amount}}, exactly-once, 1 s checkpoints, \
         {WORKERS} workers, median of {runs} runs"
    );
    println!();
    println!("| variant | median | rows/s | transactions per run | largest transaction |");
    println!("| --- | --- | --- | --- | --- |");
    let med: Vec<f64> = times.iter().map(|t| median(t.clone())).collect();
    for (((name, _), secs), w) in modes.iter().zip(&med).zip(&written) {
        let range = |f: fn(&Written) -> u64| {
            let lo = w.iter().map(f).min().unwrap_or(0);
            let hi = w.iter().map(f).max().unwrap_or(0);
            if lo == hi {
                lo.to_string()
            } else {
                format!("{lo} to {hi}")
            }
        };
        println!(
            "| {name} | {secs:.2} s | {:.3} M | {} | {} rows |",
            rows as f64 / secs / 1e6,
            range(|w| w.transactions),
            range(|w| w.largest)
        );
    }
    println!();
    println!(
        "upsert / two-phase commit (throughput): {:.3}",
        med[0] / med[1]
    );
}
