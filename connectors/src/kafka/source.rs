//! The Kafka source.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use timely::dataflow::Stream;
use weir_runtime::{Job, Result};

use super::client::{self, Health};
use crate::source::{source, Backlog, BacklogUnit, Reader, SourceOptions};

/// Where a partition without a checkpointed offset starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum StartOffset {
    /// At the oldest record the broker holds.
    #[default]
    Earliest,
    /// After the last record present when the partition is first read.
    Latest,
}

/// Settings of a Kafka source.
#[derive(Debug, Clone)]
pub struct KafkaSourceOptions {
    /// Bootstrap servers, `host:port[,host:port...]`.
    pub brokers: String,
    /// The topic; every partition is read.
    pub topic: String,
    /// Where partitions without a checkpointed offset start.
    pub start: StartOffset,
    /// End once every partition has been read up to its end (for batch jobs and tests);
    /// otherwise read forever.
    pub bounded: bool,
    /// How long the brokers may stay unreachable before the job fails (and is
    /// restarted by `weir launch`).
    pub broker_timeout: Duration,
    /// Further librdkafka consumer settings, by their librdkafka names.
    pub properties: Vec<(String, String)>,
    /// Rate limit and other settings every source takes.
    pub source: SourceOptions,
}

impl KafkaSourceOptions {
    /// Reads every partition of `topic` from its earliest offset, unbounded, with a
    /// 30-second broker timeout.
    ///
    /// ```
    /// let opts = weir_connectors::kafka::KafkaSourceOptions::new("127.0.0.1:9092", "transfers");
    /// assert_eq!(opts.topic, "transfers");
    /// assert!(!opts.bounded);
    /// ```
    pub fn new(brokers: &str, topic: &str) -> Self {
        KafkaSourceOptions {
            brokers: brokers.to_string(),
            topic: topic.to_string(),
            start: StartOffset::Earliest,
            bounded: false,
            broker_timeout: Duration::from_secs(30),
            properties: Vec::new(),
            source: SourceOptions::default(),
        }
    }
}

/// A record read from Kafka.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KafkaMessage {
    /// Its partition.
    pub partition: i32,
    /// Its offset in the partition.
    pub offset: i64,
    /// Its key, if any.
    pub key: Option<Vec<u8>>,
    /// Its value (`None` for a tombstone).
    pub payload: Option<Vec<u8>>,
}

/// A record that could not be parsed, with where it is and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeadLetter {
    /// The source's name.
    pub source: String,
    /// The record's topic.
    pub topic: String,
    /// Its partition.
    pub partition: i32,
    /// Its offset.
    pub offset: i64,
    /// Why it was rejected.
    pub error: String,
    /// Its value, as text (invalid UTF-8 replaced).
    pub payload: String,
}

/// A Kafka topic's options are its source: `job.source(name, opts)` reads every
/// partition of the topic, replayably (see the [module](super) docs).
///
/// # Examples
///
/// ```no_run
/// use weir_connectors::kafka::KafkaSourceOptions;
/// weir_runtime::run(weir_runtime::JobConfig::thread("doc-kafka"), |job| {
///     let mut opts = KafkaSourceOptions::new("127.0.0.1:19092", "events");
///     opts.bounded = true;
///     job.source("events", opts)?
///         .inspect(|m| assert!(m.offset >= 0))
///         .sink("out", weir_connectors::files::jsonl("out"))
/// }).unwrap();
/// ```
impl weir_runtime::Source for KafkaSourceOptions {
    type Item = KafkaMessage;
    fn build<'s>(self, job: &Job<'s>, name: &str) -> Result<Stream<'s, u64, Vec<KafkaMessage>>> {
        read_kafka(job, name, self)
    }
}

/// A Kafka topic of JSON values as a source of `Ok(value)`s, and `Err`s for the
/// records that do not parse, naming partition, offset and the parse error (a
/// dead-letter output; [`weir_runtime::Flow::split`] separates the two).
///
/// # Examples
///
/// ```no_run
/// use weir_connectors::{files, kafka::{self, KafkaSourceOptions}};
/// #[derive(serde::Deserialize, serde::Serialize, Clone, Debug)]
/// struct Transfer { id: u64, amount: i64 }
/// weir_runtime::run(weir_runtime::JobConfig::thread("doc-kafka-json"), |job| {
///     let opts = KafkaSourceOptions::new("127.0.0.1:19092", "transfers");
///     let (transfers, dead) = job.source("transfers", kafka::json::<Transfer>(opts))?.split(|r| r);
///     dead.sink("dead-letters", files::jsonl("dead"))?;
///     transfers.filter(|t| t.amount >= 0).sink("transfers-out", files::jsonl("out"))
/// }).unwrap();
/// ```
pub fn json<T>(opts: KafkaSourceOptions) -> Json<T> {
    Json {
        opts,
        _marker: std::marker::PhantomData,
    }
}

/// The source [`json`] returns.
pub struct Json<T> {
    opts: KafkaSourceOptions,
    _marker: std::marker::PhantomData<fn() -> T>,
}

impl<T: DeserializeOwned + timely::ExchangeData> weir_runtime::Source for Json<T> {
    type Item = std::result::Result<T, DeadLetter>;
    fn build<'s>(self, job: &Job<'s>, name: &str) -> Result<Stream<'s, u64, Vec<Self::Item>>> {
        use timely::dataflow::operators::vec::Map;
        let topic = self.opts.topic.clone();
        let source_name = name.to_string();
        let messages = read_kafka(job, name, self.opts)?;
        Ok(messages.map(move |m| parse(&source_name, &topic, m)))
    }
}

/// Reads every partition of a Kafka topic as the source named `name`: the timely-level
/// form of using [`KafkaSourceOptions`] as a source.
pub(crate) fn read_kafka<'s>(
    job: &Job<'s>,
    name: &str,
    opts: KafkaSourceOptions,
) -> Result<Stream<'s, u64, Vec<KafkaMessage>>> {
    let all = client::partitions(
        name,
        &opts.brokers,
        &opts.topic,
        &opts.properties,
        opts.broker_timeout,
    )?;
    let owned: Vec<i32> = all
        .into_iter()
        .filter(|p| job.ctx().owns(&(opts.topic.clone(), *p)))
        .collect();
    let group = format!("weir-{}-{}", job.ctx().config().job, name);
    let consumer = if owned.is_empty() {
        None
    } else {
        let c: BaseConsumer<Health> = client::config(
            &opts.brokers,
            &[
                ("group.id", group),
                ("enable.auto.commit", "false".into()),
                ("enable.auto.offset.store", "false".into()),
                ("auto.offset.reset", "error".into()),
                ("fetch.wait.max.ms", "100".into()),
                ("allow.auto.create.topics", "false".into()),
                ("enable.partition.eof", "true".into()),
                // Each partition's end offset for the lag, reported once a second.
                ("statistics.interval.ms", "1000".into()),
            ],
            &opts.properties,
        )
        .create_with_context(Health::default())
        .map_err(|e| {
            client::error(
                name,
                &opts.brokers,
                "create a consumer",
                e.to_string(),
                "; check the consumer settings",
                false,
            )
        })?;
        Some(c)
    };
    let reader = KafkaReader {
        name: name.to_string(),
        opts: opts.clone(),
        owned,
        consumer,
        assigned: false,
        open: Default::default(),
        resumed_at: BTreeMap::new(),
        last_check: Instant::now(),
        idle: false,
    };
    source(job, name, reader, opts.source)
}

/// Parses a message as JSON, or says where it is and why it does not parse.
fn parse<T: DeserializeOwned>(
    source: &str,
    topic: &str,
    m: KafkaMessage,
) -> std::result::Result<T, DeadLetter> {
    let letter = |error: String, payload: &[u8]| DeadLetter {
        source: source.to_string(),
        topic: topic.to_string(),
        partition: m.partition,
        offset: m.offset,
        error,
        payload: String::from_utf8_lossy(payload).into_owned(),
    };
    match &m.payload {
        None => Err(letter("the record has no value (a tombstone)".into(), b"")),
        Some(p) => serde_json::from_slice(p).map_err(|e| letter(format!("not valid JSON: {e}"), p)),
    }
}

struct KafkaReader {
    name: String,
    opts: KafkaSourceOptions,
    /// The partitions this worker reads.
    owned: Vec<i32>,
    consumer: Option<BaseConsumer<Health>>,
    assigned: bool,
    /// Bounded: the partitions that have not reached their end yet.
    open: std::collections::BTreeSet<i32>,
    /// The offset each partition resumed at, until its first record arrives.
    resumed_at: BTreeMap<i32, u64>,
    last_check: Instant,
    idle: bool,
}

impl KafkaReader {
    fn error(
        &self,
        action: &'static str,
        detail: String,
        transient: bool,
    ) -> weir_runtime::RuntimeError {
        client::error(
            &self.name,
            &self.opts.brokers,
            action,
            detail,
            "",
            transient,
        )
        .into()
    }

    /// Assigns the owned partitions at their positions, resolving missing positions to
    /// numbers.
    fn assign(&mut self, positions: &mut BTreeMap<(String, i32), u64>) -> Result<()> {
        let consumer = self.consumer.as_ref().expect("partitions to read");
        let topic = self.opts.topic.clone();
        let mut list = TopicPartitionList::new();
        for &p in &self.owned {
            let (low, high) = consumer
                .fetch_watermarks(&topic, p, self.opts.broker_timeout)
                .map_err(|e| {
                    self.error(
                        "read a partition's offsets",
                        format!("topic `{topic}` partition {p}: {e}"),
                        true,
                    )
                })?;
            let key = (topic.clone(), p);
            let at = match positions.get(&key) {
                Some(&at) => {
                    if (at as i64) < low {
                        return Err(self.error(
                            "resume a partition",
                            format!("topic `{topic}` partition {p}: the checkpoint resumes at offset {at}, but the broker's oldest offset is now {low}: records {at}..{low} were deleted (retention?), and skipping them would lose data; restore a newer checkpoint or start the job afresh"),
                            false,
                        ));
                    }
                    at
                }
                None => {
                    let at = match self.opts.start {
                        StartOffset::Earliest => low,
                        StartOffset::Latest => high,
                    } as u64;
                    positions.insert(key, at);
                    at
                }
            };
            tracing::debug!(source = %self.name, topic = %topic, partition = p, low, high, at, "kafka: assigning partition");
            self.open.insert(p);
            self.resumed_at.insert(p, at);
            list.add_partition_offset(&topic, p, Offset::Offset(at as i64))
                .map_err(|e| self.error("assign a partition", e.to_string(), false))?;
        }
        consumer
            .assign(&list)
            .map_err(|e| self.error("assign partitions", e.to_string(), true))?;
        self.assigned = true;
        Ok(())
    }

    /// Fails once the brokers have been unreachable for longer than the timeout.
    fn check_health(&mut self) -> Result<()> {
        let consumer = self.consumer.as_ref().expect("partitions to read");
        if self.last_check.elapsed() >= Duration::from_secs(2) {
            self.last_check = Instant::now();
            let p = self.owned[0];
            match consumer.fetch_watermarks(&self.opts.topic, p, Duration::from_secs(2)) {
                Ok(_) => consumer.context().up(),
                Err(e) => consumer.context().down(e.to_string()),
            }
        }
        if let Some((down, why)) = consumer.context().outage() {
            if down >= self.opts.broker_timeout {
                return Err(self.error(
                    "reach the brokers",
                    format!(
                        "no broker answered for {down:.0?} (broker timeout {:?}): {why}",
                        self.opts.broker_timeout
                    ),
                    true,
                ));
            }
        }
        Ok(())
    }
}

impl Reader for KafkaReader {
    type Split = (String, i32);
    type Item = KafkaMessage;

    fn read(
        &mut self,
        positions: &mut BTreeMap<(String, i32), u64>,
        max: usize,
        out: &mut Vec<KafkaMessage>,
    ) -> Result<bool> {
        if self.consumer.is_none() {
            // No partition falls to this worker.
            return Ok(!self.opts.bounded);
        }
        if !self.assigned {
            self.assign(positions)?;
        }
        let topic = self.opts.topic.clone();
        let wait = if self.idle {
            Duration::from_millis(5)
        } else {
            Duration::ZERO
        };
        let mut n = 0;
        while n < max {
            let consumer = self.consumer.as_ref().expect("partitions to read");
            let polled = consumer.poll(if n == 0 { wait } else { Duration::ZERO });
            let Some(polled) = polled else { break };
            match polled {
                Ok(m) => {
                    consumer.context().up();
                    let p = m.partition();
                    if self.opts.bounded && !self.open.contains(&p) {
                        // Past the end this bounded source stopped at.
                        continue;
                    }
                    let offset = m.offset();
                    if let Some(at) = self.resumed_at.remove(&p) {
                        if offset as u64 > at {
                            tracing::warn!(source = %self.name, topic = %topic, partition = p, resumed_at = at, first = offset, "kafka: the first record served is past the offset resumed at (a compacted or transactional topic, or a broker that serves fetches only from record-batch boundaries)");
                        }
                    }
                    out.push(KafkaMessage {
                        partition: p,
                        offset,
                        key: m.key().map(<[u8]>::to_vec),
                        payload: m.payload().map(<[u8]>::to_vec),
                    });
                    positions.insert((topic.clone(), p), offset as u64 + 1);
                    n += 1;
                }
                Err(KafkaError::PartitionEOF(p)) => {
                    consumer.context().up();
                    if self.opts.bounded {
                        self.open.remove(&p);
                        if self.open.is_empty() {
                            break;
                        }
                    }
                }
                Err(KafkaError::MessageConsumption(code))
                    if matches!(
                        code,
                        RDKafkaErrorCode::AutoOffsetReset | RDKafkaErrorCode::OffsetOutOfRange
                    ) =>
                {
                    return Err(self.error(
                        "read",
                        format!("topic `{topic}`: {code} (positions {positions:?}): the broker no longer holds the offset to resume at; restore a newer checkpoint or start the job afresh"),
                        false,
                    ));
                }
                Err(e) => {
                    consumer.context().down(e.to_string());
                    tracing::warn!(source = %self.name, error = %e, "kafka consume");
                    break;
                }
            }
        }
        self.idle = n == 0;
        if self.idle {
            self.check_health()?;
        }
        Ok(!(self.opts.bounded && self.open.is_empty()))
    }

    /// The offsets read and the offsets there are, from each partition's oldest retained
    /// record to its end as the client's statistics last reported it: the end minus the
    /// position is the lag. `None` until every partition's end is known.
    fn backlog(&self, positions: &BTreeMap<(String, i32), u64>) -> Option<Backlog> {
        let consumer = self.consumer.as_ref().filter(|_| self.assigned)?;
        let (mut done, mut total) = (0u64, 0u64);
        for ((topic, p), &at) in positions {
            if *topic != self.opts.topic || !self.owned.contains(p) {
                continue;
            }
            let (low, high) = consumer.context().offsets(topic, *p)?;
            done += at.saturating_sub(low);
            total += high.max(at).saturating_sub(low);
        }
        Some(Backlog {
            done,
            total,
            unit: BacklogUnit::Offsets,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unparsable_records_become_dead_letters_naming_their_offset() {
        let m = |payload: &[u8]| KafkaMessage {
            partition: 2,
            offset: 17,
            key: None,
            payload: Some(payload.to_vec()),
        };
        let ok: std::result::Result<u32, _> = parse("in", "t", m(b"5"));
        assert_eq!(ok.unwrap(), 5);
        let bad: std::result::Result<u32, _> = parse("in", "t", m(b"{oops"));
        let bad = bad.unwrap_err();
        assert_eq!((bad.partition, bad.offset), (2, 17));
        assert!(bad.error.contains("not valid JSON"), "{}", bad.error);
        assert_eq!(bad.payload, "{oops");
        let tomb: std::result::Result<u32, _> = parse(
            "in",
            "t",
            KafkaMessage {
                payload: None,
                ..m(b"")
            },
        );
        assert!(tomb.unwrap_err().error.contains("tombstone"));
    }
}
