//! The JetStream sink: write-ahead output published with deduplicating message ids.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::context::{GetStreamByNameErrorKind, PublishErrorKind};
use async_nats::jetstream::message::PublishMessage;
use serde::{Deserialize, Serialize};
use timely::dataflow::Stream;
use weir_runtime::{
    Committer, Delivery, Job, JobContext, OutputId, Result, RuntimeError, TwoPhaseSink,
};

use super::Server;
use crate::error::ConnectorError;
use crate::wal::{run, Publisher, Wal, WalCommitter, WalSink};

/// The header JetStream deduplicates on.
const MSG_ID: &str = "Nats-Msg-Id";
/// A duplicate window shorter than this draws a warning at start.
const SHORT_WINDOW: Duration = Duration::from_secs(60);
/// Publications in flight before their acknowledgements are awaited.
const IN_FLIGHT: usize = 1024;

/// One message to publish: a payload and headers (the sink adds `Nats-Msg-Id`).
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct NatsRecord {
    /// The message body.
    pub payload: Vec<u8>,
    /// Headers, in order; a `Nats-Msg-Id` among them is replaced by the sink's own.
    pub headers: Vec<(String, String)>,
}

impl NatsRecord {
    /// A record with this payload and no headers.
    ///
    /// ```
    /// let r = weir_connectors::nats::NatsRecord::new("hello").header("kind", "greeting");
    /// assert_eq!(r.payload, b"hello");
    /// assert_eq!(r.headers, vec![("kind".to_string(), "greeting".to_string())]);
    /// ```
    pub fn new(payload: impl Into<Vec<u8>>) -> Self {
        NatsRecord {
            payload: payload.into(),
            headers: Vec::new(),
        }
    }

    /// A record whose payload is `value` as JSON.
    ///
    /// ```
    /// let r = weir_connectors::nats::NatsRecord::json(&serde_json::json!({"n": 1}));
    /// assert_eq!(r.payload, br#"{"n":1}"#);
    /// ```
    pub fn json<T: Serialize + ?Sized>(value: &T) -> Self {
        NatsRecord::new(serde_json::to_vec(value).expect("a serde value serializes to JSON"))
    }

    /// Adds a header.
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }
}

/// Where the sink publishes.
#[derive(Debug, Clone)]
pub struct NatsSinkOptions {
    /// The server, `nats://[user:password@]host:port` (several separated by commas).
    pub url: String,
    /// The subject every record is published on (no wildcards).
    pub subject: String,
    /// The stream that must capture the subject; `None` accepts whichever does.
    pub stream: Option<String>,
}

/// The `Nats-Msg-Id` of the `seq`-th record (from 0) of a worker's output of an epoch:
/// `<job>:<sink>:g<generation>:w<worker>:e<epoch>:<seq>`.
///
/// A publication repeated after a crash carries the same ids, so the stream drops it
/// within its duplicate window.
///
/// ```
/// use weir_connectors::nats::message_id;
/// assert_eq!(message_id("orders", "out", 3, 1, 42, 7), "orders:out:g3:w1:e42:7");
/// ```
pub fn message_id(
    job: &str,
    sink: &str,
    generation: u64,
    worker: usize,
    epoch: u64,
    seq: usize,
) -> String {
    format!("{job}:{sink}:g{generation}:w{worker}:e{epoch}:{seq}")
}

/// NATS sink options are a sink: `flow.sink(name, opts)` publishes to a JetStream
/// subject, exactly once with exactly-once delivery (see the [module documentation](super) for the contract).
///
/// It is an error (exit code 2) if no stream captures `opts.subject`, if it is not the
/// stream `opts.stream` names, or if that stream does not acknowledge publications; a
/// server that cannot be reached is transient (exit code 1).
///
/// # Examples
///
/// ```no_run
/// use weir_connectors::nats::{NatsRecord, NatsSinkOptions};
///
/// // Needs a JetStream server with a stream capturing `orders.out`, e.g.
/// // `nats stream add ORDERS_OUT --subjects 'orders.out' --dupe-window 10m`.
/// let opts = NatsSinkOptions {
///     url: "nats://127.0.0.1:4222".into(),
///     subject: "orders.out".into(),
///     stream: Some("ORDERS_OUT".into()),
/// };
/// assert_eq!(opts.subject, "orders.out");
/// weir_runtime::run(weir_runtime::JobConfig::thread("doc-nats-sink"), move |job| {
///     job.source("letters", weir_runtime::testing::items(vec!['a', 'b']))?
///         .map(|c| NatsRecord::new(c.to_string()))
///         .sink("out", opts.clone())
/// })
/// .unwrap();
/// ```
impl weir_runtime::Sink<NatsRecord> for NatsSinkOptions {
    fn build<'s>(
        self,
        job: &Job<'s>,
        name: &str,
        records: Stream<'s, u64, Vec<NatsRecord>>,
    ) -> Result<()> {
        write_nats(job, records, name, self)
    }
}

/// Publishes `stream` to a JetStream subject as the sink named `name`: the timely-level
/// form of using [`NatsSinkOptions`] as a sink.
pub(crate) fn write_nats<'s>(
    job: &Job<'s>,
    stream: Stream<'s, u64, Vec<NatsRecord>>,
    name: &str,
    opts: NatsSinkOptions,
) -> Result<()> {
    let ctx = job.ctx().clone();
    let server = Server::new(name, &opts.url);
    if opts.subject.is_empty() || opts.subject.contains(['*', '>', ' ']) {
        return Err(RuntimeError::config(
            "nats subject",
            format!(
                "sink `{name}`: `{}` is not a subject to publish on (no wildcards, not empty)",
                opts.subject
            ),
        ));
    }
    let js = server.connect(ctx.runtime())?;
    let stream_name = run(ctx.runtime(), check_stream(&server, &js, &opts))?;
    let target = Target {
        server,
        js,
        subject: opts.subject,
        stream: stream_name,
        job: ctx.config().job.clone(),
        sink: name.to_string(),
        rt: ctx.runtime().clone(),
    };
    let delivery = ctx.delivery();
    match ctx.store() {
        Some(store) if delivery == Delivery::ExactlyOnce => {
            let wal = Wal::new(store, name);
            let committer = WalCommitter::new(wal.clone(), ctx.runtime().clone(), target);
            let sink = WalSink::<NatsRecord>::new(wal, ctx.clone());
            weir_runtime::sink::sink(job, stream, name, sink, Arc::new(committer))
        }
        store => {
            // Output an earlier exactly-once run of the job left in the write-ahead area
            // is recovered like any leftover, whatever this run's guarantee.
            let committer: Arc<dyn Committer<Handle = ()>> = match store {
                Some(store) => Arc::new(WalCommitter::new(
                    Wal::new(store, name),
                    ctx.runtime().clone(),
                    target.clone(),
                )),
                None => Arc::new(weir_runtime::NoStaging),
            };
            let sink = DirectSink {
                target,
                ctx: ctx.clone(),
                wait: delivery != Delivery::AtMostOnce,
                open: BTreeMap::new(),
            };
            weir_runtime::sink::sink(job, stream, name, sink, committer)
        }
    }
}

/// Finds the stream capturing the subject, checks it, and returns its name.
pub(super) async fn check_stream(
    server: &Server,
    js: &async_nats::jetstream::Context,
    opts: &NatsSinkOptions,
) -> Result<String, ConnectorError> {
    let subject = &opts.subject;
    let create = format!(
        "; create one, e.g. `nats stream add {} --subjects '{subject}' --dupe-window 10m`",
        opts.stream.as_deref().unwrap_or("OUT")
    );
    let name = match js.stream_by_subject(subject.as_str()).await {
        Ok(name) => name,
        Err(e) if e.kind() == GetStreamByNameErrorKind::NotFound => {
            return Err(server.error(
                "find the JetStream stream",
                format!("no stream captures subject `{subject}`"),
                create,
                false,
            ))
        }
        Err(e) => {
            let transient = !matches!(e.kind(), GetStreamByNameErrorKind::JetStream(_));
            return Err(server.error(
                "find the JetStream stream",
                format!("looking up the stream of subject `{subject}`: {e}"),
                "; check that JetStream is enabled on the server (`nats-server -js`)",
                transient,
            ));
        }
    };
    if let Some(expected) = &opts.stream {
        if *expected != name {
            return Err(server.error(
                "find the JetStream stream",
                format!("subject `{subject}` is captured by stream `{name}`, not by `{expected}`"),
                format!("; publish to a subject of `{expected}`, or name `{name}` as the stream"),
                false,
            ));
        }
    }
    let info = js
        .get_stream(&name)
        .await
        .map_err(|e| {
            server.error(
                "read the JetStream stream",
                format!("stream `{name}`: {e}"),
                "",
                super::is_transient(&e),
            )
        })?
        .get_info()
        .await
        .map_err(|e| {
            server.error(
                "read the JetStream stream",
                format!("stream `{name}`: {e}"),
                "",
                super::is_transient(&e),
            )
        })?;
    if info.config.no_ack {
        return Err(server.error(
            "use the JetStream stream",
            format!("stream `{name}` does not acknowledge publications (no_ack), so the sink cannot know what arrived"),
            format!("; recreate `{name}` without --no-ack"),
            false,
        ));
    }
    let window = info.config.duplicate_window;
    if window < SHORT_WINDOW {
        tracing::warn!(
            stream = %name,
            subject = %subject,
            window = ?window,
            "the stream's duplicate window is short: output published again by a recovery that takes longer is stored twice; widen it with `nats stream edit {name} --dupe-window 10m`"
        );
    }
    Ok(name)
}

/// Publishes for one sink.
#[derive(Clone)]
pub(super) struct Target {
    pub(super) server: Server,
    pub(super) js: async_nats::jetstream::Context,
    pub(super) subject: String,
    pub(super) stream: String,
    pub(super) job: String,
    pub(super) sink: String,
    pub(super) rt: tokio::runtime::Handle,
}

impl Target {
    fn error(&self, epoch: u64, e: impl std::fmt::Display, kind: PublishErrorKind) -> RuntimeError {
        let (hint, transient) = match kind {
            PublishErrorKind::StreamNotFound => (
                format!(
                    "; no stream captures subject `{}` any more (stream `{}` was deleted or changed); recreate it",
                    self.subject, self.stream
                ),
                false,
            ),
            PublishErrorKind::TimedOut
            | PublishErrorKind::BrokenPipe
            | PublishErrorKind::MaxAckPending => (String::new(), true),
            _ => (String::new(), false),
        };
        self.server
            .error(
                "publish",
                format!(
                    "output of epoch {epoch} to subject `{}` (stream `{}`): {e}",
                    self.subject, self.stream
                ),
                hint,
                transient,
            )
            .into()
    }

    /// Publishes a worker's output of an epoch with its message ids; with `wait`, awaits
    /// every acknowledgement. Returns how many the stream acknowledged as duplicates.
    pub(super) async fn send(
        &self,
        generation: u64,
        worker: usize,
        epoch: u64,
        records: Vec<NatsRecord>,
        wait: bool,
    ) -> Result<usize> {
        let mut duplicates = 0;
        let mut acks = Vec::with_capacity(IN_FLIGHT.min(records.len()));
        for (seq, record) in records.into_iter().enumerate() {
            let mut headers = async_nats::HeaderMap::new();
            for (k, v) in &record.headers {
                if !k.eq_ignore_ascii_case(MSG_ID) {
                    headers.append(k.as_str(), v.as_str());
                }
            }
            let id = message_id(&self.job, &self.sink, generation, worker, epoch, seq);
            let message = PublishMessage::build()
                .payload(record.payload.into())
                .headers(headers)
                .message_id(id);
            let ack = self
                .js
                .send_publish(self.subject.clone(), message)
                .await
                .map_err(|e| self.error(epoch, &e, e.kind()))?;
            if wait {
                acks.push(ack);
                if acks.len() >= IN_FLIGHT {
                    duplicates += self.await_acks(epoch, &mut acks).await?;
                }
            }
        }
        if wait {
            duplicates += self.await_acks(epoch, &mut acks).await?;
        } else {
            self.js.client().flush().await.map_err(|e| {
                RuntimeError::from(self.server.error(
                    "publish",
                    format!("output of epoch {epoch} to subject `{}`: {e}", self.subject),
                    "",
                    true,
                ))
            })?;
        }
        Ok(duplicates)
    }

    async fn await_acks(
        &self,
        epoch: u64,
        acks: &mut Vec<async_nats::jetstream::context::PublishAckFuture>,
    ) -> Result<usize> {
        let mut duplicates = 0;
        for ack in acks.drain(..) {
            let ack = ack.await.map_err(|e| self.error(epoch, &e, e.kind()))?;
            duplicates += usize::from(ack.duplicate);
        }
        Ok(duplicates)
    }
}

impl Publisher for Target {
    type Record = NatsRecord;

    fn publish(&self, _wal: &Wal, entry: &OutputId, records: Vec<NatsRecord>) -> Result<()> {
        let n = records.len();
        let duplicates = run(
            &self.rt,
            self.send(
                entry.generation.0,
                entry.worker.0,
                entry.epoch.0,
                records,
                true,
            ),
        )?;
        if duplicates > 0 {
            tracing::info!(
                sink = %self.sink,
                epoch = %entry.epoch,
                worker = %entry.worker,
                duplicates,
                of = n,
                "published output again after a restart; the stream dropped the messages it already had"
            );
        }
        Ok(())
    }
}

/// Publishes each epoch at its end (at-least-once: acknowledgements awaited;
/// at-most-once: not awaited).
struct DirectSink {
    target: Target,
    ctx: JobContext,
    wait: bool,
    open: BTreeMap<u64, Vec<NatsRecord>>,
}

impl TwoPhaseSink for DirectSink {
    type Record = NatsRecord;
    type Handle = ();

    fn write(&mut self, epoch: u64, record: NatsRecord) -> Result<()> {
        self.open.entry(epoch).or_default().push(record);
        Ok(())
    }

    fn pre_commit(&mut self, epoch: u64) -> Result<Option<()>> {
        if let Some(records) = self.open.remove(&epoch) {
            let (generation, worker) = (self.ctx.generation().0, self.ctx.worker());
            run(
                self.ctx.runtime(),
                self.target
                    .send(generation, worker, epoch, records, self.wait),
            )?;
        }
        Ok(None)
    }
}
