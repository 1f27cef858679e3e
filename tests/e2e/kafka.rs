//! Kafka in, PostgreSQL and Kafka out: the bank-transfers job against a real
//! Kafka-protocol broker (tansu) and PostgreSQL, both started by
//! `scripts/services.sh up`, under SIGKILLs at random moments and at the protocol's
//! critical steps, and with faults: a missing topic, brokers that are down at start or
//! go down mid-run.

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::{Offset, TopicPartitionList};
use serde::Deserialize;
use weir::connectors::kafka::rdkafka;

use crate::harness::bins;
use crate::harness::job::JobArgs;
use crate::harness::keyed::{check_each_once, check_keyed_final, Update};
use crate::harness::launch::{launch, ChaosPlan, LaunchOutcome, LaunchSpec};
use crate::harness::process::{await_value, free_port};
use crate::harness::process::{run_to_end, Finished};
use crate::harness::scenario;
use crate::harness::workspace::Workspace;
use crate::metrics::scrape_job;
use crate::postgres::{psql, url as pg_url};

/// The opening balance of every account (as in the example).
const OPENING: i64 = 1_000_000_000;

fn env(k: &str) -> String {
    std::env::var(k).unwrap_or_else(|_| {
        panic!("{k} is not set: start the test servers with `scripts/services.sh up` and `eval \"$(scripts/services.sh env)\"` (scripts/test.sh does both)")
    })
}

fn brokers() -> String {
    env("WEIR_TEST_KAFKA_BROKERS")
}

/// Names unique to one test run: topics, tables and job.
struct Names {
    input: String,
    summaries: String,
    tables: String,
    job: String,
}

/// Whatever the test's outcome, the job's prepared transactions (left by a failed run)
/// must not fill the server's `max_prepared_transactions` for the tests that follow.
impl Drop for Names {
    fn drop(&mut self) {
        // Never panics: it also runs while a failed test unwinds.
        let sql = format!(
            "SELECT gid FROM pg_prepared_xacts WHERE gid LIKE 'weir:{}:%'",
            self.job
        );
        let Ok(out) = Command::new("psql")
            .args([&pg_url(), "-qtAX", "-c", &sql])
            .output()
        else {
            return;
        };
        for gid in String::from_utf8_lossy(&out.stdout).lines() {
            if !gid.is_empty() {
                let _ = Command::new("psql")
                    .args([
                        &pg_url(),
                        "-qtAX",
                        "-c",
                        &format!("ROLLBACK PREPARED '{gid}'"),
                    ])
                    .output();
            }
        }
    }
}

impl Names {
    fn new(test: &str) -> Self {
        let unique = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis()
            % 1_000_000_000;
        let base = format!("{test}_{}_{unique}", std::process::id());
        Names {
            input: format!("{base}-in"),
            summaries: format!("{base}-out"),
            tables: base.replace('-', "_"),
            job: base,
        }
    }

    fn io_args(&self, brokers: &str) -> Vec<String> {
        [
            "--brokers",
            brokers,
            "--postgres",
            &pg_url(),
            "--input-topic",
            &self.input,
            "--summary-topic",
            &self.summaries,
            "--tables",
            &self.tables,
            "--one-record-per-batch",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    }

    fn job_args(&self, ws: &Workspace) -> JobArgs {
        let mut args = JobArgs::subcommand("run", ws).job(&self.job);
        let io = self.io_args(&brokers());
        for pair in io[..io.len() - 1].chunks(2) {
            args = args.set(&pair[0], &pair[1]);
        }
        args.flag("--one-record-per-batch")
    }
}

/// Writes the input: `transfers` transfers over `accounts` accounts into a topic of
/// `partitions` partitions, and creates the output topic and the tables.
fn generate(ws: &Workspace, names: &Names, transfers: u64, partitions: i32, seed: u64) {
    let mut cmd = Command::new(bins::bank_transfers());
    cmd.arg("generate")
        .args(names.io_args(&brokers()))
        .args(["--transfers", &transfers.to_string()])
        .args(["--accounts", "40"])
        .args(["--partitions", &partitions.to_string()])
        .args(["--seed", &seed.to_string()]);
    run_to_end(cmd, ws.log_paths("generate"), Duration::from_secs(120)).assert_success();
}

/// A record of a topic: partition, offset, headers, value.
struct Read {
    partition: i32,
    offset: i64,
    headers: BTreeMap<String, String>,
    payload: Vec<u8>,
}

/// Every record of `topic`, read up to the end of every partition (as the broker's
/// fetches report it: end-of-partition events).
fn read_topic(topic: &str) -> Vec<Read> {
    let consumer: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .set("group.id", format!("e2e-reader-{topic}"))
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "true")
        .create()
        .expect("a consumer");
    let metadata = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .expect("topic metadata");
    let partitions: Vec<i32> = metadata.topics()[0]
        .partitions()
        .iter()
        .map(|p| p.id())
        .collect();
    assert!(!partitions.is_empty(), "topic `{topic}` has no partitions");
    let mut list = TopicPartitionList::new();
    let mut todo = BTreeSet::new();
    for &p in &partitions {
        list.add_partition_offset(topic, p, Offset::Beginning)
            .unwrap();
        todo.insert(p);
    }
    consumer.assign(&list).unwrap();
    let mut out = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !todo.is_empty() {
        assert!(
            Instant::now() < deadline,
            "reading `{topic}`: partitions {todo:?} not read to their end"
        );
        let Some(m) = consumer.poll(Duration::from_millis(200)) else {
            continue;
        };
        let m = match m {
            Ok(m) => m,
            Err(rdkafka::error::KafkaError::PartitionEOF(p)) => {
                todo.remove(&p);
                continue;
            }
            Err(e) => panic!("reading `{topic}`: {e}"),
        };
        let mut headers = BTreeMap::new();
        if let Some(h) = m.headers() {
            for header in h.iter() {
                headers.insert(
                    header.key.to_string(),
                    String::from_utf8_lossy(header.value.unwrap_or_default()).into_owned(),
                );
            }
        }
        out.push(Read {
            partition: m.partition(),
            offset: m.offset(),
            headers,
            payload: m.payload().unwrap_or_default().to_vec(),
        });
    }
    out
}

#[derive(Deserialize, Debug, Clone)]
struct Transfer {
    id: u64,
    from: u32,
    to: u32,
    amount: i64,
}

/// What the job must commit, computed from the input topic.
#[derive(Debug, Default)]
struct Oracle {
    applied: BTreeSet<u64>,
    rejected: BTreeSet<u64>,
    balances: BTreeMap<u32, i64>,
    dead: BTreeSet<(i32, i64)>,
}

fn oracle(input: &[Read]) -> Oracle {
    let mut o = Oracle::default();
    let mut seen = BTreeSet::new();
    let mut sent: BTreeMap<u32, i64> = BTreeMap::new();
    for r in input {
        let Ok(t) = serde_json::from_slice::<Transfer>(&r.payload) else {
            o.dead.insert((r.partition, r.offset));
            continue;
        };
        if !seen.insert(t.id) {
            continue;
        }
        let s = sent.entry(t.from).or_default();
        if OPENING - *s - t.amount < 0 {
            o.rejected.insert(t.id);
            continue;
        }
        *s += t.amount;
        o.applied.insert(t.id);
        *o.balances.entry(t.from).or_insert(OPENING) -= t.amount;
        *o.balances.entry(t.to).or_insert(OPENING) += t.amount;
    }
    o
}

fn ids(sql: &str) -> Vec<u64> {
    psql(sql)
        .lines()
        .filter(|l| !l.is_empty())
        .map(|l| l.parse().expect("an id"))
        .collect()
}

/// Checks everything the job committed against the oracle.
fn check(names: &Names) {
    let input = read_topic(&names.input);
    let o = oracle(&input);
    assert!(!o.rejected.is_empty() && !o.dead.is_empty() && o.applied.len() > 100);
    let t = &names.tables;

    // Every applied transfer is in the ledger exactly once.
    let ledger = ids(&format!("SELECT id FROM {t}_ledger ORDER BY id"));
    check_each_once("the ledger", &o.applied, ledger);

    let rejected: BTreeSet<u64> = ids(&format!("SELECT id FROM {t}_rejected"))
        .into_iter()
        .collect();
    assert_eq!(rejected, o.rejected, "rejected transfers differ");

    let dead: BTreeSet<(i32, i64)> = psql(&format!(
        "SELECT kafka_partition, kafka_offset FROM {t}_dead_letters"
    ))
    .lines()
    .filter(|l| !l.is_empty())
    .map(|l| {
        let (p, off) = l.split_once('|').unwrap();
        (p.parse().unwrap(), off.parse().unwrap())
    })
    .collect();
    assert_eq!(dead, o.dead, "dead letters differ");

    // Every balance equals the oracle's, no account has a version twice, and money is
    // conserved.
    let updates: Vec<Update<u32, i64>> = psql(&format!(
        "SELECT account, version, balance FROM {t}_balances"
    ))
    .lines()
    .filter(|l| !l.is_empty())
    .map(|l| {
        let mut f = l.split('|');
        let (a, v, b) = (f.next().unwrap(), f.next().unwrap(), f.next().unwrap());
        Update {
            key: a.parse().unwrap(),
            value: b.parse().unwrap(),
            epoch: v.parse().unwrap(),
            origin: format!("{t}_balances version {v}"),
        }
    })
    .collect();
    check_keyed_final("balances", &o.balances, &updates);
    let balances: BTreeMap<u32, i64> = psql(&format!(
        "SELECT account, balance FROM {t}_current_balances"
    ))
    .lines()
    .filter(|l| !l.is_empty())
    .map(|l| {
        let (a, b) = l.split_once('|').unwrap();
        (a.parse().unwrap(), b.parse().unwrap())
    })
    .collect();
    assert_eq!(
        balances, o.balances,
        "the current balances view differs from the oracle"
    );
    let total: i64 = balances.values().sum();
    assert_eq!(
        total,
        OPENING * balances.len() as i64,
        "money was created or lost"
    );

    // The summary topic holds each applied transfer exactly once.
    let mut summaries = Vec::new();
    for r in read_topic(&names.summaries) {
        let v: serde_json::Value = serde_json::from_slice(&r.payload).expect("a JSON summary");
        summaries.push(v["id"].as_u64().expect("an id"));
        assert_eq!(
            r.headers.get("weir-sink").map(String::as_str),
            Some(format!("{}/summaries", names.job).as_str()),
            "summary without the sink's headers"
        );
    }
    check_each_once("the summary topic", &o.applied, summaries);

    // No prepared transaction of the job is left behind.
    assert_eq!(
        psql(&format!(
            "SELECT count(*) FROM pg_prepared_xacts WHERE gid LIKE 'weir:{}:%'",
            names.job
        ))
        .trim(),
        "0"
    );
}

fn spec(
    job: JobArgs,
    processes: usize,
    workers: usize,
    failpoint: Option<&str>,
    kills: usize,
) -> LaunchSpec {
    LaunchSpec {
        processes,
        workers,
        max_restarts: kills as u32 + 3,
        restart_delay_ms: scenario::RESTART_DELAY_MS,
        failpoint: failpoint.map(String::from),
        job,
        binary: Some(bins::bank_transfers()),
    }
}

fn chaos(kills: usize, first_generation: u64, seed: u64) -> Option<ChaosPlan> {
    (kills > 0).then_some(ChaosPlan {
        kills,
        first_generation,
        min_delay: Duration::from_millis(400),
        max_delay: Duration::from_millis(1_500),
        seed,
    })
}

fn launched(outcome: &LaunchOutcome, kills: usize) {
    outcome.assert_success();
    assert_eq!(outcome.kills.len(), kills, "{}", outcome.summary());
}

#[test]
fn bank_transfers_at_two_by_two_with_s3_checkpoints_survive_random_kills() {
    let seed = scenario::seed(0xB_0001);
    let ws = Workspace::new("bank-2x2-s3");
    let names = Names::new("bank-s3");
    generate(&ws, &names, 4_000, 4, seed);
    let job = names
        .job_args(&ws)
        .set("--checkpoint-dir", crate::s3::s3_prefix("bank"))
        .interval_ms(1_000)
        .set("--rate-limit", 150);
    let outcome = launch(&ws, &spec(job, 2, 2, None, 3), chaos(3, 0, seed));
    launched(&outcome, 3);
    check(&names);
}

#[test]
fn bank_transfers_killed_between_manifest_and_publication_and_during_restore_publish_each_summary_once(
) {
    let seed = scenario::seed(0xB_0002);
    let ws = Workspace::new("bank-after-manifest");
    let names = Names::new("bank-am");
    // More workers than partitions.
    generate(&ws, &names, 3_000, 2, seed);
    let job = names
        .job_args(&ws)
        .interval_ms(300)
        .set("--rate-limit", 300);
    // Generation 0 dies between a manifest and the publication of its output; generation
    // 1 dies while its workers read the restored state; then one random kill.
    let outcome = launch(
        &ws,
        &spec(job, 1, 3, Some("after-manifest@2,restore@3:g1"), 1),
        chaos(1, 2, seed),
    );
    launched(&outcome, 1);
    for failpoint in ["after-manifest", "restore"] {
        assert!(
            outcome
                .stderr
                .contains(&format!("failpoint `{failpoint}` reached")),
            "{}",
            outcome.summary()
        );
    }
    check(&names);
}

#[test]
fn bank_transfers_killed_in_the_middle_of_a_publication_resume_it_without_duplicates() {
    let seed = scenario::seed(0xB_0003);
    let ws = Workspace::new("bank-mid-publish");
    let names = Names::new("bank-mp");
    // More partitions than workers; large epochs so that one is published in pieces.
    generate(&ws, &names, 4_000, 8, seed);
    let job = names
        .job_args(&ws)
        .interval_ms(1_000)
        .set("--rate-limit", 1_500);
    let outcome = launch(&ws, &spec(job, 1, 2, Some("kafka-publish@2"), 0), None);
    launched(&outcome, 0);
    assert!(
        outcome.stderr.contains("failpoint `kafka-publish` reached"),
        "{}",
        outcome.summary()
    );
    assert!(
        outcome
            .stderr
            .contains("resuming an interrupted publication"),
        "the restarted job did not resume the interrupted publication\n{}",
        outcome.summary()
    );
    check(&names);
}

#[test]
fn the_kafka_source_reports_its_lag_in_offsets_while_it_reads() {
    let ws = Workspace::new("kafka-lag");
    let names = Names::new("bank-lag");
    generate(&ws, &names, 1_500, 2, scenario::seed(0xB_0010));
    let records = read_topic(&names.input).len() as f64;
    let addr = format!("127.0.0.1:{}", free_port());
    let args = names
        .job_args(&ws)
        .set("--rate-limit", 150)
        .set("--metrics-addr", &addr)
        .interval_ms(500);
    let (stdout, stderr) = ws.log_paths("lag");
    let mut child = crate::harness::process::spawn_logged(
        Command::new(bins::bank_transfers()).args(args.args()),
        &stdout,
        &stderr,
    );
    let deadline = Instant::now() + Duration::from_secs(120);
    let log = || crate::harness::process::tail(&crate::harness::process::read_lossy(&stderr), 20);
    let mut lag = |what: &str, f: &dyn Fn(f64, f64) -> bool| {
        await_value(deadline, what, log, || {
            assert!(
                child.try_wait().unwrap().is_none(),
                "the job ended before: {}",
                log()
            );
            let s = scrape_job(&addr, &names.job)?;
            let (read, left) = (
                s.sum("weir_source_offsets_read"),
                s.sum("weir_source_offsets_left"),
            );
            f(read, left).then_some((read, left))
        })
    };
    // Offsets read and left add up to the topic's records (its oldest offsets are 0).
    let (_, first) = lag("a lag that adds up to the topic", &|read, left| {
        left > 0.0 && read + left == records
    });
    let (_, later) = lag("a smaller lag", &|read, left| {
        left < first && read + left == records
    });
    assert!(later < first);
    let ended = child.wait().unwrap();
    assert!(ended.success(), "{}", log());
    check(&names);
}

fn run_bank(ws: &Workspace, name: &str, args: &[String]) -> Finished {
    let mut cmd = Command::new(bins::bank_transfers());
    cmd.args(args);
    run_to_end(cmd, ws.log_paths(name), Duration::from_secs(120))
}

#[test]
fn a_missing_topic_stops_the_job_with_how_to_create_it() {
    let ws = Workspace::new("kafka-missing-topic");
    let names = Names::new("bank-missing");
    let mut args = vec![
        "run".to_string(),
        "--checkpoint-dir".into(),
        ws.checkpoint_url(),
    ];
    args.extend(names.io_args(&brokers()));
    let done = run_bank(&ws, "run", &args);
    assert_eq!(done.status.code(), Some(2), "{}", done.stderr);
    assert!(
        done.stderr
            .contains(&format!("topic `{}` does not exist", names.input))
            && done.stderr.contains("create it"),
        "{}",
        done.stderr
    );
}

#[test]
fn brokers_that_are_down_at_start_fail_the_job_with_a_retryable_error() {
    let ws = Workspace::new("kafka-down-at-start");
    let names = Names::new("bank-down");
    let port = free_port();
    let mut args = vec![
        "run".to_string(),
        "--checkpoint-dir".into(),
        ws.checkpoint_url(),
    ];
    args.extend(names.io_args(&format!("127.0.0.1:{port}")));
    args.extend(["--broker-timeout-secs".into(), "3".into()]);
    let done = run_bank(&ws, "run", &args);
    assert_eq!(done.status.code(), Some(1), "{}", done.stderr);
    assert!(
        done.stderr.contains(&format!("127.0.0.1:{port}"))
            && done.stderr.contains("reach the brokers"),
        "{}",
        done.stderr
    );
}

/// A broker of the test's own, which it can stop.
struct OwnBroker {
    child: std::process::Child,
    address: String,
}

impl OwnBroker {
    fn start(ws: &Workspace) -> Self {
        let bin = env("WEIR_TEST_TANSU_BIN");
        let port = free_port();
        let address = format!("127.0.0.1:{port}");
        let url = format!("tcp://{address}");
        let log = std::fs::File::create(ws.root.join("tansu.log")).unwrap();
        let child = Command::new(bin)
            .args([
                "broker",
                "--listener-url",
                &url,
                "--advertised-listener-url",
                &url,
            ])
            .args(["--storage-engine", "memory://tansu/"])
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start tansu");
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(&address).is_err() {
            assert!(
                Instant::now() < deadline,
                "tansu did not listen on {address}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        OwnBroker { child, address }
    }
}

impl Drop for OwnBroker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn brokers_that_go_down_mid_run_fail_the_job_with_a_retryable_error() {
    let ws = Workspace::new("kafka-down-mid-run");
    let names = Names::new("bank-mid");
    let mut broker = OwnBroker::start(&ws);
    let mut cmd = Command::new(bins::bank_transfers());
    cmd.arg("generate")
        .args(names.io_args(&broker.address))
        .args([
            "--transfers",
            "500",
            "--accounts",
            "10",
            "--partitions",
            "2",
        ]);
    run_to_end(cmd, ws.log_paths("generate"), Duration::from_secs(60)).assert_success();

    let mut args = vec![
        "run".to_string(),
        "--checkpoint-dir".into(),
        ws.checkpoint_url(),
    ];
    args.extend(names.io_args(&broker.address));
    args.extend(
        [
            "--unbounded",
            "--broker-timeout-secs",
            "3",
            "--job",
            &names.job,
        ]
        .iter()
        .map(|s| s.to_string()),
    );
    args.extend(["--checkpoint-interval-ms".into(), "300".into()]);
    let (out, err) = ws.log_paths("run");
    let mut child = crate::harness::process::spawn_logged(
        Command::new(bins::bank_transfers()).args(&args),
        &out,
        &err,
    );
    // Wait until the job has committed output, then stop the broker.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let n: u64 = psql(&format!("SELECT count(*) FROM {}_ledger", names.tables))
            .trim()
            .parse()
            .unwrap();
        if n > 0 {
            break;
        }
        assert!(
            child.try_wait().unwrap().is_none(),
            "the job ended early: {}",
            crate::harness::process::read_lossy(&err)
        );
        assert!(
            Instant::now() < deadline,
            "the job committed nothing in 60 s"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    broker.child.kill().unwrap();
    broker.child.wait().unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!(
                "the job did not fail within 60 s of its broker going down: {}",
                crate::harness::process::read_lossy(&err)
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let stderr = crate::harness::process::read_lossy(&err);
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(stderr.contains(&broker.address), "{stderr}");
}
