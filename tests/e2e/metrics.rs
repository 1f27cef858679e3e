//! The Prometheus endpoint of every job process (`--metrics-addr`, given per process by
//! `weir launch --metrics-addr`): its values follow what the job did, and across a
//! SIGKILL the generation and the restart count go up.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use crate::harness::bins;
use crate::harness::checkpoints::complete_checkpoints;
use crate::harness::input::{self, InputSpec};
use crate::harness::job::JobArgs;
use crate::harness::launch::{parse_generations, spawn_launch};
use crate::harness::process::{await_value, free_ports, read_lossy, sigkill, tail};
use crate::harness::scenario;
use crate::harness::workspace::Workspace;

/// The labels of the records the source sends on (its port 1 carries its snapshot
/// reports).
const SOURCE_DATA: &[&str] = &["operator=\"source:lines\"", "port=\"0\""];

/// One scrape: `(name, labels, value)` per sample.
pub(crate) struct Scrape(Vec<(String, String, f64)>);

impl Scrape {
    /// The sum of every sample of `name`.
    pub(crate) fn sum(&self, name: &str) -> f64 {
        self.0
            .iter()
            .filter(|(n, _, _)| n == name)
            .map(|s| s.2)
            .sum()
    }

    /// The sum of the samples of `name` whose labels include each of `labels`
    /// (`key="value"`).
    fn sum_with(&self, name: &str, labels: &[&str]) -> f64 {
        self.0
            .iter()
            .filter(|(n, l, _)| n == name && labels.iter().all(|label| l.contains(label)))
            .map(|s| s.2)
            .sum()
    }

    /// The `id` label of the operator named `operator` in the dataflow series.
    fn operator_id(&self, operator: &str) -> String {
        let needle = format!("operator=\"{operator}\"");
        let (_, labels, _) = self
            .0
            .iter()
            .find(|(n, l, _)| n == "weir_dataflow_records_in_total" && l.contains(&needle))
            .unwrap_or_else(|| panic!("no dataflow series of {operator}"));
        let id = labels.split("id=\"").nth(1).expect("an id label");
        id[..id.find('"').unwrap()].to_string()
    }

    /// The one sample of `name` (the job-level metrics have no other labels).
    fn value(&self, name: &str) -> f64 {
        let samples: Vec<_> = self.0.iter().filter(|(n, _, _)| n == name).collect();
        assert_eq!(samples.len(), 1, "one sample of {name}");
        samples[0].2
    }
}

/// GETs `http://addr/metrics` of a wordcount process.
fn scrape(addr: &str) -> Option<Scrape> {
    scrape_job(addr, "wordcount")
}

/// GETs `http://addr/metrics` and parses the text exposition, checking that every sample
/// carries the labels of job `job`; `None` if nobody answers.
pub(crate) fn scrape_job(addr: &str, job: &str) -> Option<Scrape> {
    let mut stream = TcpStream::connect(addr).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(stream, "GET /metrics HTTP/1.0\r\nHost: {addr}\r\n\r\n").ok()?;
    let mut text = String::new();
    stream.read_to_string(&mut text).ok()?;
    let (head, body) = text.split_once("\r\n\r\n")?;
    assert!(
        head.starts_with("HTTP/1.0 200") || head.starts_with("HTTP/1.1 200"),
        "{head}"
    );
    Some(parse(body, job))
}

/// The samples of a text exposition, each checked to carry the labels of job `job`.
pub(crate) fn parse(body: &str, job: &str) -> Scrape {
    let mut samples = Vec::new();
    for line in body
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let (series, value) = line.rsplit_once(' ').expect("a sample line");
        let (name, labels) = match series.split_once('{') {
            Some((n, l)) => (n, l.trim_end_matches('}')),
            None => (series, ""),
        };
        for needed in [format!("job=\"{job}\""), "process=\"".to_string()] {
            assert!(labels.contains(&needed), "{line} lacks {needed}");
        }
        samples.push((
            name.to_string(),
            labels.to_string(),
            value.parse().expect("a number"),
        ));
    }
    Scrape(samples)
}

struct Launched {
    child: Child,
    stderr: std::path::PathBuf,
}

impl Launched {
    fn start(ws: &Workspace, args: &JobArgs, metrics_port: u16) -> Launched {
        let (child, stderr) = spawn_launch(
            ws,
            args,
            &["--metrics-addr".into(), format!("127.0.0.1:{metrics_port}")],
        );
        Launched { child, stderr }
    }

    /// Waits, until `deadline`, for a scrape of `addr` that satisfies `f`.
    fn await_scrape(
        &mut self,
        addr: &str,
        deadline: Instant,
        what: &str,
        f: impl Fn(&Scrape) -> bool,
    ) -> Scrape {
        let stderr = self.stderr.clone();
        let child = &mut self.child;
        await_value(
            deadline,
            &format!("a scrape of {addr} that shows {what}"),
            || tail(&read_lossy(&stderr), 20),
            || {
                if let Some(s) = scrape(addr).filter(|s| f(s)) {
                    return Some(s);
                }
                let ended = child.try_wait().expect("wait for weir launch");
                assert!(
                    ended.is_none(),
                    "weir launch ended first\n{}",
                    tail(&read_lossy(&stderr), 20)
                );
                None
            },
        )
    }
}

#[test]
fn the_metrics_endpoint_follows_the_job_and_counts_restarts() {
    let ws = Workspace::new("metrics");
    let corpus = input::generate(&ws.input, scenario::seed(0xD_0001), &InputSpec::small());
    let lines = corpus.lines as f64;
    let port = free_ports(2);
    let (p0, p1) = (
        format!("127.0.0.1:{port}"),
        format!("127.0.0.1:{}", port + 1),
    );
    let deadline = Instant::now() + Duration::from_secs(120);

    // A run without faults: every line is counted once by the sources, and the count
    // of completed checkpoints is the count of manifests in the store.
    let final_metrics = ws.root.join("final.prom");
    let args = JobArgs::new(&ws)
        .set("--log-format", "json")
        .set("--metrics-file", final_metrics.display())
        .interval_ms(300)
        .retain(10_000)
        .rate_limit(corpus.rate_limit_for(2, 5.0));
    let started = Instant::now();
    let mut run = Launched::start(&ws, &args, port);
    let read_all = run.await_scrape(&p1, deadline, "process 1 serving", |_| true);
    assert_eq!(read_all.value("weir_generation"), 0.0);
    loop {
        let a = run.await_scrape(&p0, deadline, "a checkpoint", |s| {
            s.value("weir_checkpoints_completed_total") >= 1.0
        });
        let stored = complete_checkpoints(&ws.checkpoints, "wordcount").len() as f64;
        let Some(b) = scrape(&p0) else { continue };
        let completed = a.value("weir_checkpoints_completed_total");
        // A manifest is in the store a moment before the counter counts it.
        assert!(
            stored >= completed && stored <= b.value("weir_checkpoints_completed_total") + 1.0,
            "{stored} manifests in the store, scrapes counted {completed} then {}",
            b.value("weir_checkpoints_completed_total")
        );
        if completed == b.value("weir_checkpoints_completed_total") && stored == completed {
            let newest = complete_checkpoints(&ws.checkpoints, "wordcount")
                .last()
                .unwrap()
                .epoch;
            assert_eq!(
                a.value("weir_checkpoint_last_completed_epoch"),
                newest as f64
            );
            assert!(a.value("weir_checkpoint_size_bytes") > 0.0);
            assert!(
                a.sum("weir_state_bytes") > 0.0,
                "no operator reported its state size"
            );
            assert!(
                a.sum("weir_operator_records_in_total") > 0.0,
                "the count counted no input"
            );
            assert!(a.value("weir_checkpoint_uploaded_bytes_total") > 0.0);
            assert!(a.value("weir_checkpoint_duration_seconds_count") >= completed);
            // Each completed checkpoint had its state copied at the barrier and uploaded.
            assert!(a.value("weir_checkpoint_sync_seconds_count") >= completed);
            assert!(a.value("weir_checkpoint_upload_seconds_count") >= 1.0);
            assert!(a.value("weir_checkpoint_seconds_since_last_completed") < 60.0);
            break;
        }
    }
    // While it runs, the sources have read some of the lines and never more, and the
    // bytes read and left add up to the input's size.
    let live = run.await_scrape(&p0, deadline, "records read", |s| {
        s.sum("weir_source_records_total") > 0.0
    });
    assert!(live.sum("weir_source_records_total") <= lines);
    // Every operator of the dataflow, from timely's log: the graph's edges, records in and
    // out, busy time. A source's batches reach the log at the end of its worker's step,
    // after its own counter counted them.
    let live = run.await_scrape(&p0, deadline, "the source's batches in the log", |s| {
        s.sum_with("weir_dataflow_records_out_total", SOURCE_DATA) > 0.0
    });
    let from_log = live.sum_with("weir_dataflow_records_out_total", SOURCE_DATA);
    assert!(
        from_log <= live.sum("weir_source_records_total"),
        "the log saw {from_log} records out of the source, its counter {}",
        live.sum("weir_source_records_total")
    );
    let (source, count) = (
        live.operator_id("source:lines"),
        live.operator_id("keyed:counts"),
    );
    let edges: Vec<&String> = live
        .0
        .iter()
        .filter(|(n, _, _)| n == "weir_dataflow_channel_records_total")
        .map(|(_, l, _)| l)
        .collect();
    assert!(
        edges
            .iter()
            .any(|l| l.contains(&format!("source=\"{source}\""))),
        "no channel out of the source (operator {source}): {edges:?}"
    );
    assert!(
        edges
            .iter()
            .any(|l| l.contains(&format!("target=\"{count}\""))),
        "no channel into the count (operator {count}): {edges:?}"
    );
    // Between the source and the count, the combiner merges the words of the batches
    // of lines it takes in into partial counts.
    let split = run.await_scrape(&p0, deadline, "partial counts out of the combiner", |s| {
        s.sum_with("weir_dataflow_records_in_total", &["operator=\"combine\""]) > 0.0
            && s.sum_with("weir_dataflow_records_out_total", &["operator=\"combine\""]) > 0.0
    });
    assert!(
        split.sum_with(
            "weir_dataflow_busy_seconds_total",
            &["operator=\"keyed:counts\""]
        ) > 0.0,
        "the count never ran"
    );
    let elapsed = started.elapsed().as_secs_f64();
    for series in [
        "weir_source_backpressured_seconds_total",
        "weir_worker_parked_seconds_total",
    ] {
        let per_worker: Vec<f64> = split
            .0
            .iter()
            .filter(|(n, _, _)| n == series)
            .map(|s| s.2)
            .collect();
        assert!(
            !per_worker.is_empty() && per_worker.iter().all(|&v| (0.0..=elapsed).contains(&v)),
            "{series}: {per_worker:?} against {elapsed} s of the run"
        );
    }
    let input_bytes: u64 = corpus
        .files
        .iter()
        .map(|f| std::fs::metadata(f).unwrap().len())
        .sum();
    if let (Some(a), Some(b)) = (scrape(&p0), scrape(&p1)) {
        let bytes = a.sum("weir_source_bytes_read")
            + a.sum("weir_source_bytes_left")
            + b.sum("weir_source_bytes_read")
            + b.sum("weir_source_bytes_left");
        assert_eq!(
            bytes, input_bytes as f64,
            "bytes read and left against the input"
        );
    }
    assert!(
        run.child.wait().unwrap().success(),
        "{}",
        read_lossy(&run.stderr)
    );
    // A process's endpoint ends with it, so the totals of the finished run come from
    // each process's last log line.
    let ended: Vec<serde_json::Value> = read_lossy(&run.stderr)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|e| {
            e["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("the run ended"))
        })
        .collect();
    assert_eq!(
        ended.len(),
        2,
        "one end per process\n{}",
        read_lossy(&run.stderr)
    );
    let read: f64 = ended
        .iter()
        .map(|e| e["records_read"].as_f64().unwrap())
        .sum();
    assert_eq!(
        read, lines,
        "records read by the sources against the input's lines"
    );
    // Each process wrote its final metrics when it ended: they hold every checkpoint of
    // the store and every line of the input.
    let finals: Vec<Scrape> = (0..2)
        .map(|i| {
            let path = format!("{}.{i}", final_metrics.display());
            parse(
                &std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}")),
                "wordcount",
            )
        })
        .collect();
    assert_eq!(
        finals[0].value("weir_checkpoints_completed_total"),
        complete_checkpoints(&ws.checkpoints, "wordcount").len() as f64,
        "the final checkpoint count of process 0 against the store's manifests"
    );
    assert_eq!(
        finals
            .iter()
            .map(|f| f.sum("weir_source_records_total"))
            .sum::<f64>(),
        lines,
        "the final records read against the input's lines"
    );
    // Its stderr is no terminal: no progress bar.
    assert!(
        !read_lossy(&run.stderr).contains("ETA"),
        "a progress bar on a pipe"
    );

    // A second run on the same store, with a SIGKILL: generation and restarts go up.
    let ws2 = Workspace::new("metrics-kill");
    input::generate(&ws2.input, scenario::seed(0xD_0002), &InputSpec::small());
    let args = JobArgs::new(&ws2)
        .interval_ms(100)
        .rate_limit(corpus.rate_limit_for(2, 6.0));
    let mut run = Launched::start(&ws2, &args, port);
    let before = run.await_scrape(&p0, deadline, "a checkpoint", |s| {
        s.value("weir_checkpoints_completed_total") >= 1.0
    });
    let gens = parse_generations(&read_lossy(&run.stderr));
    let victim = *gens
        .get(&0)
        .and_then(|g| g.get(&1))
        .expect("process 1's pid");
    assert!(sigkill(victim), "SIGKILL {victim}");
    let after = run.await_scrape(&p0, deadline, "a new generation", |s| {
        s.value("weir_generation") > before.value("weir_generation")
    });
    assert!(
        after.value("weir_restarts") > before.value("weir_restarts"),
        "restarts {} then {}",
        before.value("weir_restarts"),
        after.value("weir_restarts")
    );
    assert!(
        run.child.wait().unwrap().success(),
        "{}",
        read_lossy(&run.stderr)
    );
}

/// On a terminal (a pseudo-terminal made by `script`), `weir launch` shows a progress
/// bar of the bytes read, with its rate, ETA and the last checkpoint.
#[test]
fn weir_launch_shows_a_progress_bar_on_a_terminal() {
    let ws = Workspace::new("progress");
    let corpus = input::generate(&ws.input, scenario::seed(0xD_0003), &InputSpec::small());
    let args = JobArgs::new(&ws)
        .interval_ms(200)
        .rate_limit(corpus.rate_limit_for(2, 3.0));
    let mut line = vec![
        bins::weir().display().to_string(),
        "launch".into(),
        "--processes".into(),
        "2".into(),
        "--".into(),
        bins::wordcount().display().to_string(),
    ];
    line.extend(args.args().iter().cloned());
    let out = Command::new("script")
        .args(["-qfec", &line.join(" "), "/dev/null"])
        .env_remove("WEIR_FAILPOINT")
        .output()
        .expect("script (util-linux) runs the launch on a pseudo-terminal");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", tail(&text, 20));
    assert!(
        text.contains("ETA") && text.contains("checkpoint"),
        "no progress bar on the terminal:\n{}",
        tail(&text, 20)
    );
}
