//! Kafka: a replayable source and a sink that is exactly-once without broker
//! transactions.
//!
//! # Source ([`KafkaSourceOptions`], [`json`])
//!
//! Every partition of the topic is a split: partitions are spread over the workers by
//! key group, so a worker may read several partitions or none. The next offset of each
//! partition is stored in the checkpoint, never taken from a consumer group, and a
//! restore (at any parallelism) resumes every partition at exactly that offset. A
//! partition without a stored offset starts at its earliest or latest offset
//! ([`StartOffset`]), resolved to a number when first read so that the first checkpoint
//! pins it. An offset that the broker no longer holds (deleted by retention) stops the
//! job with an error naming the partition and offset: a restore never skips data.
//! A bounded source ([`KafkaSourceOptions::bounded`]) ends each partition once it has
//! caught up with it (the broker's fetch reports the partition's end), so it reads what
//! was written before it caught up; records written later are left for the next run.
//!
//! # Sink ([`KafkaSinkOptions`])
//!
//! The delivery guarantee is the job's (`--delivery`):
//! - **exactly-once** (the default), without Kafka transactions. At pre-commit each
//!   worker's output of the epoch is written to checkpoint storage (write-ahead). Only
//!   after the checkpoint's manifest exists does the coordinator publish it, every
//!   record carrying headers `weir-sink` (`<job>/<sink>`), `weir-generation`,
//!   `weir-worker`, `weir-epoch` and `weir-seq`. Before publishing an epoch the sink
//!   records the topic's end offsets in checkpoint storage; a publication interrupted
//!   by a crash is resumed on restore by reading the topic back from those offsets and
//!   publishing only the records that did not arrive. Any consumer, even one reading
//!   uncommitted data, then sees every record exactly once. Producer defaults:
//!   `acks=all`, `enable.idempotence=true`.
//! - **at-least-once**: records are sent as they come with `acks=all` and retries; each
//!   epoch waits for every acknowledgement before its checkpoint can complete, so a
//!   restore replays (and may publish again) only what the checkpoint does not cover.
//! - **at-most-once**: `acks=0`, no retries; records are sent and never sent again.
//!
//! Producer settings are passed under their librdkafka names
//! ([`KafkaSinkOptions::properties`]: `acks`, `retries`, `retry.backoff.ms`,
//! `enable.idempotence`, ...); settings that contradict the guarantee are refused at
//! start. A Kafka-transactions mode (`transactional.id` with `read_committed`
//! consumers) is not offered: the broker weir is tested against has no transaction
//! commit, and an untested mode would be a promise weir cannot keep.
//!
//! Limits of the exactly-once sink: a record the broker received from a process that
//! was killed, but had not yet appended when the restarted job read the topic back, is
//! published again (the window is the broker's append latency). Restoring a checkpoint
//! older than output already published publishes that output again, as for any sink
//! whose output cannot be taken back.
//!
//! # Faults
//!
//! A topic that does not exist stops the job at start (exit code 2) and says how to
//! create it. Brokers that are down at start, or stop answering for longer than
//! [`KafkaSourceOptions::broker_timeout`] or the sink's delivery timeout, fail the job
//! with a retryable error (exit code 1): `weir launch` restarts it from the latest
//! checkpoint under its restart strategy.

mod client;
mod sink;
mod source;

/// The Kafka client library the connectors use, for jobs and tests that talk to the
/// brokers themselves (creating topics, producing input, reading output back).
pub use rdkafka;

pub use sink::{KafkaRecord, KafkaSinkOptions, HEADERS};
pub use source::{json, DeadLetter, Json, KafkaMessage, KafkaSourceOptions, StartOffset};
