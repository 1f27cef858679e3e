//! The Kafka sink.

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::{Offset, TopicPartitionList};
use serde::{Deserialize, Serialize};
use timely::dataflow::Stream;
use weir_runtime::{Committer, Delivery, Job, OutputId, Result, RuntimeError, TwoPhaseSink};

use super::client::{self, Health};
use crate::wal::{run, Publisher, Wal, WalCommitter, WalSink};

/// The headers an exactly-once Kafka sink puts on every record, in this order:
/// `<job>/<sink>`, the generation, worker and epoch that produced it, and its sequence
/// number within that worker's output of the epoch.
pub const HEADERS: [&str; 5] = [
    "weir-sink",
    "weir-generation",
    "weir-worker",
    "weir-epoch",
    "weir-seq",
];

/// A record to write to Kafka.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KafkaRecord {
    /// The key (records with a key go to the partition the key hashes to).
    pub key: Option<Vec<u8>>,
    /// The value.
    pub payload: Vec<u8>,
}

impl KafkaRecord {
    /// A record whose value is `value` as JSON.
    ///
    /// ```
    /// let r = weir_connectors::kafka::KafkaRecord::json(Some("acct-1"), &serde_json::json!({"n": 1}));
    /// assert_eq!(r.key.as_deref(), Some(&b"acct-1"[..]));
    /// assert_eq!(r.payload, br#"{"n":1}"#.to_vec());
    /// ```
    pub fn json<T: Serialize>(key: Option<&str>, value: &T) -> Self {
        KafkaRecord {
            key: key.map(|k| k.as_bytes().to_vec()),
            payload: serde_json::to_vec(value).expect("a value serializable as JSON"),
        }
    }
}

/// Settings of a Kafka sink.
#[derive(Debug, Clone)]
pub struct KafkaSinkOptions {
    /// Bootstrap servers, `host:port[,host:port...]`.
    pub brokers: String,
    /// The topic, which must exist.
    pub topic: String,
    /// Producer settings by their librdkafka names (`acks`, `retries`,
    /// `retry.backoff.ms`, `enable.idempotence`, `linger.ms`, ...); they override the
    /// defaults of the job's delivery guarantee.
    pub properties: Vec<(String, String)>,
    /// How long a record may wait for the broker's acknowledgement before the job fails
    /// and is restarted (`message.timeout.ms`).
    pub delivery_timeout: Duration,
}

impl KafkaSinkOptions {
    /// Writes to `topic` with the defaults of the job's delivery guarantee and a
    /// 30-second delivery timeout.
    ///
    /// ```
    /// let opts = weir_connectors::kafka::KafkaSinkOptions::new("127.0.0.1:9092", "summaries");
    /// assert!(opts.properties.is_empty());
    /// ```
    pub fn new(brokers: &str, topic: &str) -> Self {
        KafkaSinkOptions {
            brokers: brokers.to_string(),
            topic: topic.to_string(),
            properties: Vec::new(),
            delivery_timeout: Duration::from_secs(30),
        }
    }
}

/// The producer settings of a delivery guarantee, or why the user's settings contradict
/// it.
fn producer_defaults(
    delivery: Delivery,
    user: &[(String, String)],
    timeout: Duration,
) -> std::result::Result<Vec<(&'static str, String)>, String> {
    let mut d: Vec<(&'static str, String)> = match delivery {
        Delivery::ExactlyOnce => vec![
            ("acks", "all".into()),
            ("enable.idempotence", "true".into()),
        ],
        Delivery::AtLeastOnce => vec![
            ("acks", "all".into()),
            ("retries", "2147483647".into()),
            ("retry.backoff.ms", "100".into()),
        ],
        Delivery::AtMostOnce => vec![
            ("acks", "0".into()),
            ("retries", "0".into()),
            ("enable.idempotence", "false".into()),
        ],
    };
    d.push(("message.timeout.ms", timeout.as_millis().to_string()));
    let acks = client::setting(user, "acks").or(client::setting(user, "request.required.acks"));
    if delivery != Delivery::AtMostOnce && matches!(acks, Some("0") | Some("1")) {
        return Err(format!(
            "acks={} can lose acknowledged records when a broker fails, which breaks {delivery:?} delivery; use acks=all, or run the job with --delivery at-most-once",
            acks.unwrap_or_default()
        ));
    }
    if delivery == Delivery::AtMostOnce {
        if let Some(r) = client::setting(user, "retries").filter(|r| *r != "0") {
            return Err(format!(
                "retries={r} can publish a record twice, which breaks at-most-once delivery; use retries=0"
            ));
        }
    }
    if client::setting(user, "transactional.id").is_some() {
        return Err("transactional.id: weir's Kafka sink is exactly-once without Kafka transactions and does not offer a transactional mode; remove the setting".into());
    }
    Ok(d)
}

/// A Kafka topic's sink options are its sink: `flow.sink(name, opts)` writes to the
/// topic with the job's delivery guarantee (see the [module](super) docs).
///
/// # Examples
///
/// ```no_run
/// use weir_connectors::kafka::{KafkaRecord, KafkaSinkOptions};
/// weir_runtime::run(weir_runtime::JobConfig::thread("doc-kafka-sink"), |job| {
///     job.source("numbers", weir_connectors::generator::items(3, |i| i))?
///         .map(|i| KafkaRecord::json(None, &i))
///         .sink("out", KafkaSinkOptions::new("127.0.0.1:19092", "numbers"))
/// }).unwrap();
/// ```
impl weir_runtime::Sink<KafkaRecord> for KafkaSinkOptions {
    fn build<'s>(
        self,
        job: &Job<'s>,
        name: &str,
        records: Stream<'s, u64, Vec<KafkaRecord>>,
    ) -> Result<()> {
        write_kafka(job, records, name, self)
    }
}

/// Writes `stream` to a Kafka topic as the sink named `name`: the timely-level form of
/// using [`KafkaSinkOptions`] as a sink.
pub(crate) fn write_kafka<'s>(
    job: &Job<'s>,
    stream: Stream<'s, u64, Vec<KafkaRecord>>,
    name: &str,
    opts: KafkaSinkOptions,
) -> Result<()> {
    let ctx = job.ctx().clone();
    let delivery = ctx.delivery();
    let defaults = producer_defaults(delivery, &opts.properties, opts.delivery_timeout)
        .map_err(|e| client::error(name, &opts.brokers, "configure the producer", e, "", false))?;
    client::partitions(
        name,
        &opts.brokers,
        &opts.topic,
        &opts.properties,
        opts.delivery_timeout,
    )?;
    let target = Target {
        sink: name.to_string(),
        id: format!("{}/{}", ctx.config().job, name),
        opts: opts.clone(),
        defaults,
    };
    match (delivery, ctx.store()) {
        (Delivery::ExactlyOnce, Some(store)) => {
            let wal = Wal::new(store, name);
            let publisher = KafkaPublisher {
                target,
                rt: ctx.runtime().clone(),
                producer: OnceLock::new(),
            };
            let committer = Arc::new(WalCommitter::new(
                wal.clone(),
                ctx.runtime().clone(),
                publisher,
            ));
            weir_runtime::sink::sink(job, stream, name, WalSink::new(wal, ctx), committer)
        }
        (_, store) => {
            let producer = target.producer()?;
            let sink = DirectSink {
                target,
                producer,
                wait: delivery != Delivery::AtMostOnce,
            };
            let committer: Arc<dyn Committer<Handle = ()>> = match store {
                // Output an earlier exactly-once run of the job left behind.
                Some(store) => Arc::new(WalCommitter::new(
                    Wal::new(store, name),
                    ctx.runtime().clone(),
                    KafkaPublisher {
                        target: sink.target.clone(),
                        rt: ctx.runtime().clone(),
                        producer: OnceLock::new(),
                    },
                )),
                None => Arc::new(weir_runtime::NoStaging),
            };
            weir_runtime::sink::sink(job, stream, name, sink, committer)
        }
    }
}

#[derive(Clone)]
struct Target {
    sink: String,
    /// `<job>/<sink>`, the `weir-sink` header.
    id: String,
    opts: KafkaSinkOptions,
    defaults: Vec<(&'static str, String)>,
}

impl Target {
    fn error(&self, action: &'static str, detail: String, transient: bool) -> RuntimeError {
        client::error(
            &self.sink,
            &self.opts.brokers,
            action,
            detail,
            "",
            transient,
        )
        .into()
    }

    fn producer(&self) -> Result<BaseProducer<Health>> {
        client::config(&self.opts.brokers, &self.defaults, &self.opts.properties)
            .create_with_context(Health::default())
            .map_err(|e| self.error("create a producer", e.to_string(), false))
    }

    /// Sends one record, waiting while the producer's queue is full.
    fn send(
        &self,
        producer: &BaseProducer<Health>,
        record: &KafkaRecord,
        headers: Option<OwnedHeaders>,
    ) -> Result<()> {
        let mut r: BaseRecord<'_, [u8], [u8]> =
            BaseRecord::to(&self.opts.topic).payload(&record.payload[..]);
        if let Some(k) = &record.key {
            r = r.key(&k[..]);
        }
        if let Some(h) = headers {
            r = r.headers(h);
        }
        let started = Instant::now();
        loop {
            match producer.send(r) {
                Ok(()) => return Ok(()),
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                    if started.elapsed() > self.opts.delivery_timeout {
                        return Err(self.error(
                            "send",
                            format!(
                                "topic `{}`: the producer's queue stayed full for {:?}",
                                self.opts.topic, self.opts.delivery_timeout
                            ),
                            true,
                        ));
                    }
                    r = back;
                    producer.poll(Duration::from_millis(5));
                }
                Err((e, _)) => {
                    return Err(self.error(
                        "send",
                        format!("topic `{}`: {e}", self.opts.topic),
                        true,
                    ))
                }
            }
        }
    }

    /// Waits for every acknowledgement; fails if a record was not delivered.
    fn flush(&self, producer: &BaseProducer<Health>, what: &str) -> Result<()> {
        producer
            .flush(self.opts.delivery_timeout + Duration::from_secs(5))
            .map_err(|e| {
                self.error(
                    "deliver",
                    format!("topic `{}`, {what}: {e}", self.opts.topic),
                    true,
                )
            })?;
        let failed = producer.context().take_failures();
        if !failed.is_empty() {
            return Err(self.error(
                "deliver",
                format!(
                    "topic `{}`, {what}: {} record(s) were not delivered: {}",
                    self.opts.topic,
                    failed.len(),
                    failed.join("; ")
                ),
                true,
            ));
        }
        Ok(())
    }
}

/// At-least-once and at-most-once: records are sent as they come.
struct DirectSink {
    target: Target,
    producer: BaseProducer<Health>,
    /// At-least-once: wait for the acknowledgements of an epoch before it ends.
    wait: bool,
}

impl TwoPhaseSink for DirectSink {
    type Record = KafkaRecord;
    type Handle = ();

    fn write(&mut self, _epoch: u64, record: KafkaRecord) -> Result<()> {
        self.target.send(&self.producer, &record, None)?;
        self.producer.poll(Duration::ZERO);
        Ok(())
    }

    fn pre_commit(&mut self, epoch: u64) -> Result<Option<()>> {
        if self.wait {
            self.target
                .flush(&self.producer, &format!("epoch {epoch}"))?;
        } else {
            self.producer.poll(Duration::ZERO);
            let failed = self.producer.context().take_failures();
            if !failed.is_empty() {
                tracing::warn!(sink = %self.target.sink, epoch, lost = failed.len(), first = %failed[0], "at-most-once: records were not delivered");
            }
        }
        Ok(None)
    }
}

/// Where a publication started: the topic's end offsets just before it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Started {
    generation: u64,
    epoch: u64,
    ends: BTreeMap<i32, i64>,
}

/// Publishes write-ahead output, resuming interrupted publications.
struct KafkaPublisher {
    target: Target,
    rt: tokio::runtime::Handle,
    producer: OnceLock<BaseProducer<Health>>,
}

impl KafkaPublisher {
    fn producer(&self) -> Result<&BaseProducer<Health>> {
        if let Some(p) = self.producer.get() {
            return Ok(p);
        }
        let p = self.target.producer()?;
        Ok(self.producer.get_or_init(|| p))
    }

    fn consumer(&self) -> Result<BaseConsumer<Health>> {
        client::config(
            &self.target.opts.brokers,
            &[
                ("group.id", format!("weir-readback-{}", self.target.id)),
                ("enable.auto.commit", "false".into()),
                ("isolation.level", "read_uncommitted".into()),
                ("fetch.wait.max.ms", "50".into()),
                ("enable.partition.eof", "true".into()),
            ],
            &[],
        )
        .create_with_context(Health::default())
        .map_err(|e| self.target.error("create a consumer", e.to_string(), false))
    }

    /// The end offset of every partition of the topic.
    fn ends(&self, consumer: &BaseConsumer<Health>) -> Result<BTreeMap<i32, i64>> {
        let t = &self.target;
        let partitions = client::partitions(
            &t.sink,
            &t.opts.brokers,
            &t.opts.topic,
            &[],
            t.opts.delivery_timeout,
        )?;
        let mut ends = BTreeMap::new();
        for p in partitions {
            let (_, high) = consumer
                .fetch_watermarks(&t.opts.topic, p, t.opts.delivery_timeout)
                .map_err(|e| {
                    t.error(
                        "read a partition's offsets",
                        format!("topic `{}` partition {p}: {e}", t.opts.topic),
                        true,
                    )
                })?;
            ends.insert(p, high);
        }
        Ok(ends)
    }

    /// The sequence numbers of `entry`'s records that reached the topic after `from`,
    /// read up to the end of every partition (the end the broker's fetches report).
    fn arrived(&self, entry: &OutputId, from: &BTreeMap<i32, i64>) -> Result<HashSet<u64>> {
        let t = &self.target;
        let consumer = self.consumer()?;
        let partitions = client::partitions(
            &t.sink,
            &t.opts.brokers,
            &t.opts.topic,
            &[],
            t.opts.delivery_timeout,
        )?;
        let mut list = TopicPartitionList::new();
        let mut todo: HashSet<i32> = HashSet::new();
        for p in partitions {
            let start = from.get(&p).copied().unwrap_or(0);
            list.add_partition_offset(&t.opts.topic, p, Offset::Offset(start))
                .map_err(|e| t.error("read back", e.to_string(), false))?;
            todo.insert(p);
        }
        consumer
            .assign(&list)
            .map_err(|e| t.error("read back", e.to_string(), true))?;
        let want = [
            t.id.clone(),
            entry.generation.to_string(),
            entry.worker.to_string(),
            entry.epoch.to_string(),
        ];
        let mut seqs = HashSet::new();
        let deadline = Instant::now() + t.opts.delivery_timeout;
        while !todo.is_empty() {
            if Instant::now() > deadline {
                return Err(t.error(
                    "read back what an interrupted publication delivered",
                    format!(
                        "topic `{}`: partitions {:?} not read up to their end within {:?}",
                        t.opts.topic, todo, t.opts.delivery_timeout
                    ),
                    true,
                ));
            }
            let Some(polled) = consumer.poll(Duration::from_millis(100)) else {
                continue;
            };
            let m = match polled {
                Ok(m) => m,
                Err(KafkaError::PartitionEOF(p)) => {
                    todo.remove(&p);
                    continue;
                }
                Err(e) => {
                    return Err(t.error(
                        "read back what an interrupted publication delivered",
                        format!("topic `{}`: {e}", t.opts.topic),
                        true,
                    ))
                }
            };
            if let Some(h) = m.headers() {
                let mut got: [Option<&[u8]>; 5] = [None; 5];
                for header in h.iter() {
                    if let Some(i) = HEADERS.iter().position(|k| *k == header.key) {
                        got[i] = header.value;
                    }
                }
                let matches = want
                    .iter()
                    .zip(&got)
                    .all(|(w, g)| g.is_some_and(|g| g == w.as_bytes()));
                if matches {
                    if let Some(seq) = got[4]
                        .and_then(|s| std::str::from_utf8(s).ok())
                        .and_then(|s| s.parse().ok())
                    {
                        seqs.insert(seq);
                    }
                }
            }
        }
        Ok(seqs)
    }
}

impl Publisher for KafkaPublisher {
    type Record = KafkaRecord;

    fn publish(&self, wal: &Wal, entry: &OutputId, records: Vec<KafkaRecord>) -> Result<()> {
        let t = &self.target;
        let started: Option<Started> = run(&self.rt, wal.marker_of("publishing", entry))?;
        let skip = match started {
            Some(s) if s.generation == entry.generation.0 && s.epoch == entry.epoch.0 => {
                let arrived = self.arrived(entry, &s.ends)?;
                tracing::warn!(sink = %t.sink, epoch = %entry.epoch, worker = %entry.worker, arrived = arrived.len(), of = records.len(), "resuming an interrupted publication");
                arrived
            }
            _ => {
                let consumer = self.consumer()?;
                let ends = self.ends(&consumer)?;
                let s = Started {
                    generation: entry.generation.0,
                    epoch: entry.epoch.0,
                    ends,
                };
                run(&self.rt, wal.set_marker("publishing", entry, &s))?;
                HashSet::new()
            }
        };
        let producer = self.producer()?;
        let (generation, worker, epoch) = (
            entry.generation.to_string(),
            entry.worker.to_string(),
            entry.epoch.to_string(),
        );
        for (i, record) in records.iter().enumerate() {
            if skip.contains(&(i as u64)) {
                continue;
            }
            let seq = i.to_string();
            let values = [&t.id, &generation, &worker, &epoch, &seq];
            let mut headers = OwnedHeaders::new_with_capacity(HEADERS.len());
            for (key, value) in HEADERS.iter().zip(values) {
                headers = headers.insert(Header {
                    key,
                    value: Some(value.as_str()),
                });
            }
            t.send(producer, record, Some(headers))?;
            producer.poll(Duration::ZERO);
            if (i + 1) % 64 == 0 && weir_runtime::failpoint::armed_for("kafka-publish") {
                // Make "part of the epoch arrived" certain before the test's kill.
                t.flush(producer, "a test's failpoint")?;
                weir_runtime::failpoint::hit("kafka-publish");
            }
        }
        t.flush(
            producer,
            &format!("epoch {} of worker {}", entry.epoch, entry.worker),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(kv: &[(&str, &str)]) -> Vec<(String, String)> {
        kv.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn each_guarantee_has_its_producer_settings() {
        let t = Duration::from_secs(30);
        let eo = producer_defaults(Delivery::ExactlyOnce, &[], t).unwrap();
        assert!(eo.contains(&("acks", "all".into())));
        assert!(eo.contains(&("enable.idempotence", "true".into())));
        let amo = producer_defaults(Delivery::AtMostOnce, &[], t).unwrap();
        assert!(amo.contains(&("acks", "0".into())));
        assert!(amo.contains(&("retries", "0".into())));
        let alo = producer_defaults(Delivery::AtLeastOnce, &[], t).unwrap();
        assert!(alo.contains(&("acks", "all".into())));
        assert!(alo.contains(&("message.timeout.ms", "30000".into())));
    }

    #[test]
    fn settings_that_break_the_guarantee_are_refused() {
        let t = Duration::from_secs(30);
        let e = producer_defaults(Delivery::ExactlyOnce, &user(&[("acks", "0")]), t).unwrap_err();
        assert!(e.contains("acks=0") && e.contains("acks=all"), "{e}");
        let e = producer_defaults(Delivery::AtMostOnce, &user(&[("retries", "3")]), t).unwrap_err();
        assert!(e.contains("retries=3"), "{e}");
        let e = producer_defaults(
            Delivery::ExactlyOnce,
            &user(&[("transactional.id", "x")]),
            t,
        )
        .unwrap_err();
        assert!(e.contains("transactional.id"), "{e}");
        assert!(producer_defaults(Delivery::AtLeastOnce, &user(&[("linger.ms", "5")]), t).is_ok());
    }
}
