//! What the Kafka source and sink share: client settings, broker health, topic metadata.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{DeliveryResult, ProducerContext};
use rdkafka::statistics::Statistics;
use rdkafka::ClientContext;

use crate::error::ConnectorError;

/// Per partition of a topic: its oldest and its end offset.
type PartitionOffsets = HashMap<i32, (i64, i64)>;

/// A client context that remembers since when the brokers have been unreachable, what
/// failed deliveries reported, and each partition's offsets from the client's statistics.
#[derive(Default)]
pub(crate) struct Health {
    down_since: Mutex<Option<(Instant, String)>>,
    failed: Mutex<Vec<String>>,
    offsets: Mutex<HashMap<String, PartitionOffsets>>,
}

impl Health {
    /// The brokers answered.
    pub(crate) fn up(&self) {
        *self.down_since.lock().expect("poisoned") = None;
    }

    /// The brokers did not answer.
    pub(crate) fn down(&self, why: String) {
        let mut d = self.down_since.lock().expect("poisoned");
        if d.is_none() {
            *d = Some((Instant::now(), why));
        }
    }

    /// How long the brokers have been unreachable, and the first error.
    pub(crate) fn outage(&self) -> Option<(Duration, String)> {
        self.down_since
            .lock()
            .expect("poisoned")
            .as_ref()
            .map(|(t, why)| (t.elapsed(), why.clone()))
    }

    /// Partition `p` of `topic`'s oldest and end offsets, as of the client's last
    /// statistics (`statistics.interval.ms`); `None` before they report it.
    pub(crate) fn offsets(&self, topic: &str, p: i32) -> Option<(u64, u64)> {
        let offsets = self.offsets.lock().expect("poisoned");
        let &(low, high) = offsets.get(topic)?.get(&p)?;
        Some((u64::try_from(low).ok()?, u64::try_from(high).ok()?))
    }

    /// Takes the delivery failures reported since the last call.
    pub(crate) fn take_failures(&self) -> Vec<String> {
        std::mem::take(&mut *self.failed.lock().expect("poisoned"))
    }
}

impl ClientContext for Health {
    fn stats(&self, statistics: Statistics) {
        let mut offsets = self.offsets.lock().expect("poisoned");
        for (name, topic) in statistics.topics {
            let known = offsets.entry(name).or_default();
            for (p, s) in topic.partitions {
                // Partition -1 is the client's own; offsets below 0 are not known yet.
                if p >= 0 && s.lo_offset >= 0 && s.hi_offset >= 0 {
                    known.insert(p, (s.lo_offset, s.hi_offset));
                }
            }
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        let code = error.rdkafka_error_code();
        if code == Some(RDKafkaErrorCode::PartitionEOF) {
            // Reaching the end of a partition is news, not a fault.
            return;
        }
        if matches!(
            code,
            Some(RDKafkaErrorCode::AllBrokersDown)
                | Some(RDKafkaErrorCode::BrokerTransportFailure)
                | Some(RDKafkaErrorCode::Resolve)
                | Some(RDKafkaErrorCode::OperationTimedOut)
        ) {
            self.down(format!("{error}: {reason}"));
        }
        tracing::warn!(error = %error, reason, "kafka client");
    }
}

impl ConsumerContext for Health {}

impl ProducerContext for Health {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        match result {
            Ok(_) => self.up(),
            Err((e, _)) => {
                let mut failed = self.failed.lock().expect("poisoned");
                if failed.len() < 16 {
                    failed.push(e.to_string());
                }
            }
        }
    }
}

/// Client settings: the bootstrap servers, weir's defaults, then the user's settings
/// (which win).
pub(crate) fn config(
    brokers: &str,
    defaults: &[(&str, String)],
    user: &[(String, String)],
) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", brokers);
    for (k, v) in defaults {
        c.set(*k, v);
    }
    for (k, v) in user {
        c.set(k, v);
    }
    c
}

/// The error for a failed client operation.
pub(crate) fn error(
    connector: &str,
    brokers: &str,
    action: &'static str,
    detail: String,
    hint: &str,
    transient: bool,
) -> ConnectorError {
    ConnectorError::Kafka {
        connector: connector.to_string(),
        brokers: brokers.to_string(),
        action,
        detail,
        hint: hint.to_string(),
        transient,
    }
}

/// The partitions of `topic`, retried with backoff for up to `timeout` while the brokers
/// do not answer. A topic that does not exist is a permanent error; brokers that stay
/// down are a transient one (the job is restarted).
pub(crate) fn partitions(
    connector: &str,
    brokers: &str,
    topic: &str,
    user: &[(String, String)],
    timeout: Duration,
) -> Result<Vec<i32>, ConnectorError> {
    let consumer: BaseConsumer<Health> = config(
        brokers,
        &[("allow.auto.create.topics", "false".into())],
        user,
    )
    .create_with_context(Health::default())
    .map_err(|e| {
        error(
            connector,
            brokers,
            "create a client",
            e.to_string(),
            "; check the client settings",
            false,
        )
    })?;
    let started = Instant::now();
    let mut backoff = Duration::from_millis(200);
    loop {
        let left = timeout.saturating_sub(started.elapsed());
        let attempt = consumer.fetch_metadata(Some(topic), left.min(Duration::from_secs(5)));
        match attempt {
            Ok(metadata) => {
                let Some(t) = metadata.topics().iter().find(|t| t.name() == topic) else {
                    return Err(missing(connector, brokers, topic));
                };
                if let Some(e) = t.error() {
                    let code = RDKafkaErrorCode::from(e);
                    if code == RDKafkaErrorCode::UnknownTopicOrPartition
                        || code == RDKafkaErrorCode::UnknownTopic
                    {
                        return Err(missing(connector, brokers, topic));
                    }
                    if started.elapsed() >= timeout {
                        return Err(error(
                            connector,
                            brokers,
                            "read the topic's metadata",
                            format!("topic `{topic}`: {code}"),
                            "",
                            true,
                        ));
                    }
                } else if t.partitions().is_empty() {
                    return Err(missing(connector, brokers, topic));
                } else {
                    let mut ps: Vec<i32> = t.partitions().iter().map(|p| p.id()).collect();
                    ps.sort_unstable();
                    return Ok(ps);
                }
            }
            Err(e) if started.elapsed() >= timeout => {
                return Err(error(
                    connector,
                    brokers,
                    "reach the brokers",
                    format!("no answer for {:.0?} ({e})", started.elapsed()),
                    "; check that the brokers run and that the address is right",
                    true,
                ));
            }
            Err(e) => tracing::warn!(connector, error = %e, "kafka metadata; retrying"),
        }
        std::thread::sleep(backoff.min(timeout.saturating_sub(started.elapsed())));
        backoff = (backoff * 2).min(Duration::from_secs(2));
    }
}

fn missing(connector: &str, brokers: &str, topic: &str) -> ConnectorError {
    error(
        connector,
        brokers,
        "find the topic",
        format!("topic `{topic}` does not exist"),
        &format!("; create it first (for example `kafka-topics.sh --bootstrap-server {brokers} --create --topic {topic} --partitions N`), or fix the topic name"),
        false,
    )
}

/// The value of a setting in `user`, if set.
pub(crate) fn setting<'a>(user: &'a [(String, String)], key: &str) -> Option<&'a str> {
    user.iter()
        .rev()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
}
