//! Kafka → job → Kafka for each delivery guarantee, side by side in one run: the seeds'
//! trade-off table measured rather than claimed.
//!
//! Needs the test broker: `scripts/services.sh up`, then
//! `eval "$(scripts/services.sh env)"` (sets `WEIR_TEST_KAFKA_BROKERS`), then
//! `cargo bench --bench kafka_delivery` (`WEIR_BENCH_RECORDS` changes the 200 000
//! records, `WEIR_BENCH_RUNS` the 3 runs). Fails, never skips, without the broker.
//!
//! The input topic (4 partitions) is written once. Every run reads all of it with a
//! bounded Kafka source on 2 workers, stamps each record with the wall-clock time it was
//! read, and writes it with the Kafka sink to a fresh output topic, with checkpoints every
//! second into a fresh local directory and the guarantee under test (at-most-once,
//! at-least-once, exactly-once). Throughput is records over the wall time until the job
//! returns. Latency is, per record, the output record's producer timestamp minus the
//! time it was read: what the guarantee adds between reading and publishing. Each run
//! checks the output: exactly the input's records for exactly-once, all of them for
//! at-least-once, none twice for at-most-once. Reports medians over the runs, the
//! guarantees interleaved run by run.

use std::collections::BTreeMap;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Message, Timestamp};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::{Offset, TopicPartitionList};
use weir::connectors::kafka::rdkafka;
use weir::connectors::kafka::{KafkaRecord, KafkaSinkOptions, KafkaSourceOptions};
use weir::prelude::*;

const WORKERS: usize = 2;
const PARTITIONS: i32 = 4;

fn brokers() -> String {
    std::env::var("WEIR_TEST_KAFKA_BROKERS").unwrap_or_else(|_| {
        eprintln!("kafka_delivery: WEIR_TEST_KAFKA_BROKERS is not set: start the broker with `scripts/services.sh up` and `eval \"$(scripts/services.sh env)\"`");
        std::process::exit(2)
    })
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

fn create_topic(topic: &str) {
    let admin: AdminClient<DefaultClientContext> = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .create()
        .unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let topics = [NewTopic::new(topic, PARTITIONS, TopicReplication::Fixed(1))];
    for r in rt
        .block_on(admin.create_topics(&topics, &AdminOptions::new()))
        .unwrap()
    {
        r.unwrap();
    }
}

fn write_input(topic: &str, records: u64) {
    create_topic(topic);
    let producer: BaseProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .set("acks", "all")
        .set("batch.num.messages", "1")
        .create()
        .unwrap();
    for i in 0..records {
        let payload = i.to_string();
        let key = (i % 64).to_string();
        let mut r = BaseRecord::to(topic).key(&key).payload(&payload);
        loop {
            match producer.send(r) {
                Ok(()) => break,
                Err((_, back)) => {
                    r = back;
                    producer.poll(Duration::from_millis(5));
                }
            }
        }
        producer.poll(Duration::ZERO);
    }
    producer.flush(Duration::from_secs(120)).unwrap();
}

/// Every output record: (input number, latency in ms).
fn read_output(topic: &str) -> Vec<(u64, i64)> {
    let consumer: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .set("group.id", format!("bench-{topic}"))
        .set("enable.partition.eof", "true")
        .create()
        .unwrap();
    let mut list = TopicPartitionList::new();
    for p in 0..PARTITIONS {
        list.add_partition_offset(topic, p, Offset::Beginning)
            .unwrap();
    }
    consumer.assign(&list).unwrap();
    let mut open = PARTITIONS;
    let mut out = Vec::new();
    while open > 0 {
        match consumer.poll(Duration::from_secs(10)) {
            None => panic!("reading {topic}: no end of partition within 10 s"),
            Some(Err(rdkafka::error::KafkaError::PartitionEOF(_))) => open -= 1,
            Some(Err(e)) => panic!("reading {topic}: {e}"),
            Some(Ok(m)) => {
                let v: serde_json::Value = serde_json::from_slice(m.payload().unwrap()).unwrap();
                let published = match m.timestamp() {
                    Timestamp::CreateTime(t) | Timestamp::LogAppendTime(t) => t,
                    Timestamp::NotAvailable => panic!("no timestamp"),
                };
                out.push((
                    v["n"].as_u64().unwrap(),
                    published - v["read_ms"].as_i64().unwrap(),
                ));
            }
        }
    }
    out
}

fn run(input: &str, output: &str, delivery: Delivery) -> Duration {
    let chk = tempfile::tempdir().unwrap();
    let config = JobConfig {
        job: format!("bench-kafka-{output}"),
        checkpoint_url: chk.path().to_string_lossy().into_owned(),
        checkpoint_interval_ms: 1000,
        workers: WORKERS,
        delivery,
        ..Default::default()
    };
    let (input, output) = (input.to_string(), output.to_string());
    let started = Instant::now();
    weir::run(config, move |job| {
        let mut source = KafkaSourceOptions::new(&brokers(), &input);
        source.bounded = true;
        job.source("in", source)?
            .map(|m| {
                let n: u64 = std::str::from_utf8(m.payload.as_deref().unwrap_or_default())
                    .unwrap()
                    .parse()
                    .unwrap();
                KafkaRecord::json(None, &serde_json::json!({"n": n, "read_ms": now_ms()}))
            })
            .sink("out", KafkaSinkOptions::new(&brokers(), &output))
    })
    .unwrap();
    started.elapsed()
}

fn median<T: PartialOrd + Copy>(v: &mut [T]) -> T {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn main() {
    let records: u64 = std::env::var("WEIR_BENCH_RECORDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200_000);
    let runs: usize = std::env::var("WEIR_BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    let tag = now_ms();
    let input = format!("bench-kafka-in-{tag}");
    write_input(&input, records);
    let guarantees = [
        ("at-most-once", Delivery::AtMostOnce),
        ("at-least-once", Delivery::AtLeastOnce),
        ("exactly-once", Delivery::ExactlyOnce),
    ];
    let mut rates: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
    let mut p50: BTreeMap<&str, Vec<i64>> = BTreeMap::new();
    let mut p99: BTreeMap<&str, Vec<i64>> = BTreeMap::new();
    for r in 0..runs {
        for (name, delivery) in guarantees {
            let output = format!("bench-kafka-out-{tag}-{r}-{name}");
            create_topic(&output);
            let took = run(&input, &output, delivery);
            let out = read_output(&output);
            let mut seen = vec![0u32; records as usize];
            for (n, _) in &out {
                seen[*n as usize] += 1;
            }
            let missing = seen.iter().filter(|c| **c == 0).count();
            let twice = seen.iter().filter(|c| **c > 1).count();
            match delivery {
                Delivery::ExactlyOnce => assert!(
                    missing == 0 && twice == 0,
                    "{name}: {missing} missing, {twice} twice"
                ),
                Delivery::AtLeastOnce => assert_eq!(missing, 0, "{name}: records missing"),
                Delivery::AtMostOnce => assert_eq!(twice, 0, "{name}: records twice"),
            }
            let mut lat: Vec<i64> = out.iter().map(|(_, l)| *l).collect();
            lat.sort_unstable();
            let rate = records as f64 / took.as_secs_f64();
            eprintln!(
                "run {r} {name:>13}: {rate:>9.0} records/s, latency p50 {} ms p99 {} ms, {missing} missing",
                lat[lat.len() / 2],
                lat[lat.len() * 99 / 100]
            );
            rates.entry(name).or_default().push(rate);
            p50.entry(name).or_default().push(lat[lat.len() / 2]);
            p99.entry(name).or_default().push(lat[lat.len() * 99 / 100]);
        }
    }
    let base = median(rates.get_mut("at-most-once").unwrap());
    println!("| guarantee | records/s (median) | vs at-most-once | latency p50 | latency p99 |");
    println!("| --- | --- | --- | --- | --- |");
    for (name, _) in guarantees {
        let rate = median(rates.get_mut(name).unwrap());
        println!(
            "| {name} | {rate:.0} | {:.2} | {} ms | {} ms |",
            rate / base,
            median(p50.get_mut(name).unwrap()),
            median(p99.get_mut(name).unwrap())
        );
    }
}
