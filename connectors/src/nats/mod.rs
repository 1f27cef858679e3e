//! NATS JetStream: an exactly-once sink by broker-side deduplication, and a replayable
//! source with explicit acks.
//!
//! ## The sink: [`NatsSinkOptions`]
//!
//! Every record becomes one JetStream message on the sink's subject, carrying the header
//! `Nats-Msg-Id: <job>:<sink>:g<generation>:w<worker>:e<epoch>:<seq>` ([`message_id`]):
//! the run's generation, the worker, the epoch and the record's place in that worker's
//! output of the epoch. The stream drops a message whose id it has seen within its
//! duplicate window (`duplicate_window`, two minutes unless configured otherwise).
//!
//! Delivery contract, with exactly-once delivery (and checkpointing on):
//!
//! - At the end of an epoch each worker writes its output of the epoch to checkpoint
//!   storage (write-ahead, `<job>/sinks/<sink>/pending/...`); nothing is published yet.
//! - Once the checkpoint covering the epoch is complete (its manifest exists), the
//!   coordinator publishes the output, awaits every publish acknowledgement, records
//!   that it did so, and deletes the write-ahead object.
//! - A crash between the manifest and the end of that publication leaves part of an
//!   epoch published. The restored run publishes the restored checkpoint's output again
//!   with the same message ids: the stream acknowledges the repeats as duplicates and
//!   stores nothing twice. **This holds only if the recovery publishes again within the
//!   stream's duplicate window**; after a longer outage the repeated part of that one
//!   epoch is stored twice. The sink reads the window at start and warns when it is
//!   shorter than a minute; set it with `nats stream edit <stream> --dupe-window 10m`.
//! - Output of epochs after the restored checkpoint was never published (publication
//!   waits for the manifest): the restore deletes it from checkpoint storage.
//!
//! With at-least-once delivery (or checkpointing off) each epoch is published at its end
//! and every acknowledgement awaited; a restore publishes again what came after the
//! checkpoint, under new ids (the generation differs), so it is repeated. With
//! at-most-once delivery each epoch is published at its end without waiting for
//! acknowledgements: a crash can lose what was in flight.
//!
//! At start the sink checks that a stream captures the subject (and that it is the
//! stream named in [`NatsSinkOptions::stream`], if any), and that the stream
//! acknowledges publications.
//!
//! ## The source: [`NatsSourceOptions`]
//!
//! The source reads one stream through pull consumers with explicit acks
//! (`AckPolicy::Explicit`), one consumer per split: the whole stream, or one split per
//! filter subject of [`NatsSourceOptions::subjects`] (the filters must not overlap, or a
//! message is read once per filter). Splits are spread over the workers by key group.
//! Each consumer is durable, named `weir-<job>-<source>-<n>`, and replaced at every start,
//! so that a crashed run never leaves one behind that still claims the messages.
//!
//! A split's position is the stream sequence of the last message it emitted; it is
//! checkpointed like any source position. Delivery contract:
//!
//! - A restore creates each consumer with `DeliverPolicy::ByStartSequence` at the
//!   position after the restored one (on a `WorkQueue` stream, which allows only
//!   `DeliverPolicy::All`, after purging the split's messages up to that position): the
//!   messages the checkpoint covers are not read again, every later one is. Redeliveries (a message not acknowledged within the
//!   acknowledgement wait) are recognised by their sequence and dropped.
//! - With exactly-once and at-least-once delivery a message is acknowledged only once a
//!   complete checkpoint covers it (the source polls checkpoint storage for manifests).
//!   On a `WorkQueue` stream an acknowledgement deletes the message, so an earlier one
//!   could lose a message that a restore must replay. On a `Limits` stream it deletes
//!   nothing; it moves the consumer's acknowledged floor, which is what monitoring shows.
//! - A crash (or the end of a bounded run) can leave messages that a complete checkpoint
//!   covers unacknowledged. On a `WorkQueue` stream the next restore removes them: it
//!   purges the split's messages below its restored position. A fresh start (no
//!   checkpoint) reads whatever the stream holds.
//! - With at-most-once delivery a message is acknowledged as soon as it is read.
//! - `Interest` retention is refused: replacing the consumer at a restart would let the
//!   stream drop messages that no consumer is interested in meanwhile.
//! - A restored position below the stream's first sequence means that the stream's
//!   limits deleted messages the job never read: the source logs a warning naming them
//!   and goes on from the first message the stream still holds.
//!
//! With [`NatsSourceOptions::bounded`], each split ends at the stream's last sequence as
//! of the job's start, so a job over a stream ends; otherwise the source waits for new
//! messages forever.
//!
//! ## Errors
//!
//! A server that cannot be reached makes the process exit with code 1, so that
//! `weir launch` restarts it; a missing stream, a subject no stream captures, or a
//! refused configuration exits with code 2. Messages name the server (without
//! credentials), the stream and subject, and how to fix them.

mod sink;
mod source;
#[cfg(test)]
mod tests;

pub use async_nats;
pub use sink::{message_id, NatsRecord, NatsSinkOptions};
pub use source::{NatsMessage, NatsSourceOptions};

use std::time::Duration;

use crate::error::ConnectorError;

/// How long connecting and every request may take.
const TIMEOUT: Duration = Duration::from_secs(10);

/// A NATS URL with any user, password or token removed, for messages.
fn shown(url: &str) -> String {
    url.split(',')
        .map(|u| {
            let u = u.trim();
            let (scheme, rest) = match u.split_once("://") {
                Some((s, r)) => (Some(s), r),
                None => (None, u),
            };
            let rest = rest.rsplit_once('@').map_or(rest, |(_, host)| host);
            match scheme {
                Some(s) => format!("{s}://{rest}"),
                None => rest.to_string(),
            }
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// A connector's server, for errors.
#[derive(Clone)]
struct Server {
    connector: String,
    url: String,
    shown: String,
}

impl Server {
    fn new(connector: &str, url: &str) -> Self {
        Server {
            connector: connector.to_string(),
            url: url.to_string(),
            shown: shown(url),
        }
    }

    fn error(
        &self,
        action: &'static str,
        detail: impl std::fmt::Display,
        hint: impl Into<String>,
        transient: bool,
    ) -> ConnectorError {
        ConnectorError::Nats {
            connector: self.connector.clone(),
            server: self.shown.clone(),
            action,
            detail: detail.to_string(),
            hint: hint.into(),
            transient,
        }
    }

    /// Connects on the job's I/O runtime; an unreachable server is transient.
    fn connect(
        &self,
        rt: &tokio::runtime::Handle,
    ) -> Result<async_nats::jetstream::Context, ConnectorError> {
        crate::wal::run(rt, async {
            let client = async_nats::ConnectOptions::new()
                .connection_timeout(TIMEOUT)
                .request_timeout(Some(TIMEOUT))
                .connect(self.url.as_str())
                .await
                .map_err(|e| {
                    self.error(
                        "connect",
                        e,
                        "; check that the server runs and listens there (a restart retries)",
                        true,
                    )
                })?;
            // The context starts timers: it is made on the job's I/O runtime.
            let mut js = async_nats::jetstream::new(client);
            js.set_timeout(TIMEOUT);
            Ok(js)
        })
    }
}

/// Whether a JetStream request failed for want of a server (a restart may cure it)
/// rather than because the server refused it.
fn is_transient(e: &(dyn std::error::Error + 'static)) -> bool {
    let text = e.to_string().to_lowercase();
    [
        "timed out",
        "timeout",
        "disconnected",
        "connection",
        "broken pipe",
        "request error",
        "request failed",
    ]
    .iter()
    .any(|m| text.contains(m))
}

#[cfg(test)]
pub(crate) mod testing {
    /// The test server's URL: tests fail, never skip, without it.
    pub(crate) fn url() -> String {
        std::env::var("WEIR_TEST_NATS_URL").unwrap_or_else(|_| {
            panic!(
                "WEIR_TEST_NATS_URL is not set: start the test servers with `scripts/services.sh up` and `eval \"$(scripts/services.sh env)\"` (scripts/test.sh does both)"
            )
        })
    }

    /// A stream name no other test uses.
    pub(crate) fn unique(prefix: &str) -> String {
        use std::sync::atomic::{AtomicU64, Ordering};
        static N: AtomicU64 = AtomicU64::new(0);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        format!(
            "{prefix}_{}_{nanos}_{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        )
    }
}
