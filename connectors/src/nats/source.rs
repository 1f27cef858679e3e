//! The JetStream source: pull consumers with explicit acks, replayed by stream sequence.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream::consumer::{pull, AckPolicy, DeliverPolicy};
use async_nats::jetstream::stream::RetentionPolicy;
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use timely::dataflow::Stream;
use weir_runtime::{Delivery, Job, JobContext, Result, RuntimeError};

use super::Server;
use crate::source::{source, Reader, SourceOptions};
use crate::wal::run;

/// How long a message may stay unacknowledged before the server delivers it again
/// (the source drops such repeats by their sequence).
const ACK_WAIT: Duration = Duration::from_secs(600);
/// Unacknowledged messages a consumer may have out (acks wait for checkpoints).
const MAX_ACK_PENDING: i64 = 1_000_000;
/// Messages fetched ahead of the dataflow, per worker.
const PREFETCH: usize = 8192;
/// The longest a read waits for a message when none is there.
const IDLE_WAIT: Duration = Duration::from_millis(5);

/// One message read from a stream.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct NatsMessage {
    /// Its sequence number in the stream.
    pub stream_sequence: u64,
    /// The subject it was published on.
    pub subject: String,
    /// Its headers, in order.
    pub headers: Vec<(String, String)>,
    /// Its body.
    pub payload: Vec<u8>,
}

/// What the source reads.
#[derive(Debug, Clone, Default)]
pub struct NatsSourceOptions {
    /// The server, `nats://[user:password@]host:port` (several separated by commas).
    pub url: String,
    /// The stream to read.
    pub stream: String,
    /// Filter subjects, one split each (they must not overlap); empty reads the whole
    /// stream as one split.
    pub subjects: Vec<String>,
    /// End each split at the stream's last sequence as of the job's start.
    pub bounded: bool,
    /// Messages per second per worker; `None` reads as fast as possible.
    pub rate_limit: Option<u64>,
}

/// NATS source options are a source: `job.source(name, opts)` reads the JetStream stream
/// `opts.stream`, emitting every message at the epoch in which it was read (see the
/// [module documentation](super) for the delivery contract).
///
/// It is an error (exit code 2) if the stream does not exist or has `Interest`
/// retention; a server that cannot be reached is transient (exit code 1).
///
/// # Examples
///
/// ```no_run
/// use weir_connectors::nats::NatsSourceOptions;
/// use weir_runtime::{testing, JobConfig};
///
/// // Needs a JetStream server with a stream `ORDERS` holding two messages.
/// let sequences = testing::run_collect(JobConfig::thread("doc-nats-source"), 1, |job| {
///     let opts = NatsSourceOptions {
///         url: "nats://127.0.0.1:4222".into(),
///         stream: "ORDERS".into(),
///         bounded: true,
///         ..Default::default()
///     };
///     Ok(job.source("orders", opts)?.map(|m| m.stream_sequence))
/// })
/// .unwrap();
/// assert_eq!(sequences, vec![1, 2]);
/// ```
impl weir_runtime::Source for NatsSourceOptions {
    type Item = NatsMessage;
    fn build<'s>(self, job: &Job<'s>, name: &str) -> Result<Stream<'s, u64, Vec<NatsMessage>>> {
        read_nats(job, name, self)
    }
}

/// Reads the JetStream stream `opts.stream` as the source named `name`: the
/// timely-level form of using [`NatsSourceOptions`] as a source.
pub(crate) fn read_nats<'s>(
    job: &Job<'s>,
    name: &str,
    opts: NatsSourceOptions,
) -> Result<Stream<'s, u64, Vec<NatsMessage>>> {
    let ctx = job.ctx().clone();
    let server = Server::new(name, &opts.url);
    if opts.stream.is_empty() {
        return Err(RuntimeError::config(
            "nats stream",
            format!("source `{name}`: no stream given"),
        ));
    }
    let js = server.connect(ctx.runtime())?;
    let (stream, info) = run(ctx.runtime(), open_stream(&server, &js, &opts.stream))?;
    let splits: Vec<String> = if opts.subjects.is_empty() {
        vec![String::new()]
    } else {
        opts.subjects.clone()
    };
    let owned: Vec<(usize, String)> = splits
        .into_iter()
        .enumerate()
        .filter(|(_, s)| ctx.owns(s))
        .collect();
    let checkpointing = ctx.checkpointing();
    let deferred = checkpointing && ctx.delivery() != Delivery::AtMostOnce;
    let (tx, rx) = tokio::sync::mpsc::channel(PREFETCH);
    let acks = Acks::new(&ctx, js.client(), deferred, &server);
    let reader = NatsReader {
        server,
        ctx: ctx.clone(),
        stream,
        work_queue: info.config.retention == RetentionPolicy::WorkQueue,
        first_sequence: info.state.first_sequence,
        end: opts.bounded.then_some(info.state.last_sequence),
        consumer_prefix: format!(
            "weir-{}-{}",
            consumer_safe(&ctx.config().job),
            consumer_safe(name)
        ),
        splits: owned
            .into_iter()
            .map(|(index, subject)| Split {
                index,
                subject,
                done: false,
                task: None,
            })
            .collect(),
        started: false,
        tx,
        rx,
        acks,
        deferred,
    };
    source(
        job,
        name,
        reader,
        SourceOptions {
            rate_limit: opts.rate_limit,
        },
    )
}

/// The stream to read and its state, if it exists and its retention suits the source.
pub(super) async fn open_stream(
    server: &Server,
    js: &async_nats::jetstream::Context,
    name: &str,
) -> std::result::Result<
    (
        async_nats::jetstream::stream::Stream,
        async_nats::jetstream::stream::Info,
    ),
    crate::error::ConnectorError,
> {
    let stream = js.get_stream(name).await.map_err(|e| {
        let missing = e.to_string().contains("not found");
        server.error(
            "read the JetStream stream",
            format!("stream `{name}`: {e}"),
            if missing {
                format!(
                    "; create it, e.g. `nats stream add {name} --subjects '...'`, or name an existing stream"
                )
            } else {
                String::new()
            },
            !missing && super::is_transient(&e),
        )
    })?;
    let info = stream.cached_info().clone();
    if info.config.retention == RetentionPolicy::Interest {
        return Err(server.error(
            "read the JetStream stream",
            format!("stream `{name}` has interest retention"),
            "; weir replaces its consumer at every restart, which lets such a stream drop messages meanwhile: use limits or work-queue retention",
            false,
        ));
    }
    Ok((stream, info))
}

/// A name part a consumer name may hold.
fn consumer_safe(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

struct Split {
    /// Its place among all splits of the source (names the consumer).
    index: usize,
    /// The filter subject; empty for the whole stream.
    subject: String,
    done: bool,
    task: Option<tokio::task::JoinHandle<()>>,
}

type Delivered = (
    usize,
    std::result::Result<async_nats::jetstream::Message, String>,
);

struct NatsReader {
    server: Server,
    ctx: JobContext,
    stream: async_nats::jetstream::stream::Stream,
    work_queue: bool,
    first_sequence: u64,
    /// The last sequence to read, when bounded.
    end: Option<u64>,
    consumer_prefix: String,
    splits: Vec<Split>,
    started: bool,
    tx: tokio::sync::mpsc::Sender<Delivered>,
    rx: tokio::sync::mpsc::Receiver<Delivered>,
    acks: Acks,
    deferred: bool,
}

impl NatsReader {
    fn error(&self, action: &'static str, split: &str, e: impl std::fmt::Display) -> RuntimeError {
        let what = if split.is_empty() {
            format!("stream `{}`", self.stream.cached_info().config.name)
        } else {
            format!(
                "stream `{}`, subject `{split}`",
                self.stream.cached_info().config.name
            )
        };
        self.server
            .error(action, format!("{what}: {e}"), "", true)
            .into()
    }

    /// Replaces each split's consumer with one that starts after its position.
    fn start(&mut self, positions: &BTreeMap<String, u64>) -> Result<()> {
        for i in 0..self.splits.len() {
            let (index, subject) = (self.splits[i].index, self.splits[i].subject.clone());
            let position = positions.get(&subject).copied().unwrap_or(0);
            if self
                .end
                .is_some_and(|end| subject.is_empty() && position >= end)
            {
                self.splits[i].done = true;
                continue;
            }
            if subject.is_empty() && position > 0 && position + 1 < self.first_sequence {
                tracing::warn!(
                    stream = %self.stream.cached_info().config.name,
                    from = position + 1,
                    to = self.first_sequence - 1,
                    "the stream's limits deleted messages the job had not read yet; reading on from its first message"
                );
            }
            let name = format!("{}-{index}", self.consumer_prefix);
            let stream = self.stream.clone();
            let work_queue = self.work_queue;
            let created = run(self.ctx.runtime(), async {
                if work_queue && position > 0 {
                    // The restored checkpoint covers these: acknowledge what a crash
                    // left unacknowledged.
                    let purge = stream.purge().sequence(position + 1);
                    if subject.is_empty() {
                        purge.await
                    } else {
                        purge.filter(subject.as_str()).await
                    }
                    .map_err(|e| {
                        format!("cannot purge below the restored position {position}: {e}")
                    })?;
                }
                let _ = stream.delete_consumer(&name).await;
                stream
                    .create_consumer(pull::Config {
                        durable_name: Some(name.clone()),
                        description: Some("weir source; replaced at every start".into()),
                        // A work queue holds nothing below the position any more
                        // (purged above), and allows only this policy.
                        deliver_policy: if work_queue {
                            DeliverPolicy::All
                        } else {
                            DeliverPolicy::ByStartSequence {
                                start_sequence: position + 1,
                            }
                        },
                        ack_policy: AckPolicy::Explicit,
                        ack_wait: ACK_WAIT,
                        max_ack_pending: MAX_ACK_PENDING,
                        filter_subject: subject.clone(),
                        ..Default::default()
                    })
                    .await
                    .map_err(|e| format!("cannot create consumer `{name}`: {e}"))
            })
            .map_err(|e| self.error("start reading", &subject, e))?;
            if self.end.is_some() && created.cached_info().num_pending == 0 {
                self.splits[i].done = true;
                continue;
            }
            let tx = self.tx.clone();
            self.splits[i].task = Some(self.ctx.runtime().spawn(async move {
                let mut messages = match created.messages().await {
                    Ok(m) => m,
                    Err(e) => {
                        let _ = tx.send((i, Err(e.to_string()))).await;
                        return;
                    }
                };
                while let Some(m) = messages.next().await {
                    let m = m.map_err(|e| e.to_string());
                    let fatal = m.is_err();
                    if tx.send((i, m)).await.is_err() || fatal {
                        return;
                    }
                }
                let _ = tx
                    .send((i, Err("the consumer's message stream ended".into())))
                    .await;
            }));
        }
        Ok(())
    }

    fn finish(&mut self, i: usize) {
        self.splits[i].done = true;
        if let Some(task) = self.splits[i].task.take() {
            task.abort();
        }
    }
}

impl Reader for NatsReader {
    type Split = String;
    type Item = NatsMessage;

    fn read(
        &mut self,
        positions: &mut BTreeMap<String, u64>,
        max: usize,
        out: &mut Vec<NatsMessage>,
    ) -> Result<bool> {
        if !self.started {
            self.started = true;
            self.start(positions)?;
        }
        let epoch = self.ctx.clock().current();
        let mut replies = Vec::new();
        let mut n = 0;
        while n < max && self.splits.iter().any(|s| !s.done) {
            let next = match self.rx.try_recv() {
                Ok(d) => Some(d),
                Err(tokio::sync::mpsc::error::TryRecvError::Empty) if n == 0 => {
                    let wait = self
                        .ctx
                        .clock()
                        .until_next()
                        .map_or(IDLE_WAIT, |w| w.min(IDLE_WAIT));
                    let rx = &mut self.rx;
                    run(self.ctx.runtime(), async {
                        tokio::time::timeout(wait, rx.recv()).await.ok().flatten()
                    })
                }
                Err(_) => None,
            };
            let Some((i, delivered)) = next else { break };
            if self.splits[i].done {
                continue;
            }
            let subject = self.splits[i].subject.clone();
            let message = delivered.map_err(|e| self.error("read", &subject, e))?;
            let (sequence, pending) = match message.info() {
                Ok(info) => (info.stream_sequence, info.pending),
                Err(e) => return Err(self.error("read", &subject, e)),
            };
            let position = positions.get(&subject).copied().unwrap_or(0);
            if sequence <= position {
                continue; // delivered again: it is emitted already
            }
            if self.end.is_some_and(|end| sequence > end) {
                self.finish(i);
                continue;
            }
            positions.insert(subject, sequence);
            let headers = message
                .headers
                .iter()
                .flat_map(|h| {
                    h.iter().flat_map(|(k, vs)| {
                        vs.iter()
                            .map(move |v| (k.to_string(), v.as_str().to_string()))
                    })
                })
                .collect();
            if let Some(reply) = message.reply.clone() {
                replies.push(reply);
            }
            out.push(NatsMessage {
                stream_sequence: sequence,
                subject: message.subject.to_string(),
                headers,
                payload: message.payload.to_vec(),
            });
            n += 1;
            if self.end.is_some_and(|end| sequence >= end || pending == 0) {
                self.finish(i);
            }
        }
        if !replies.is_empty() {
            if self.deferred {
                self.acks.after_checkpoint(epoch, replies);
            } else {
                self.acks.now(replies);
            }
        }
        Ok(self.splits.iter().any(|s| !s.done))
    }
}

impl Drop for NatsReader {
    fn drop(&mut self) {
        for s in &mut self.splits {
            if let Some(t) = s.task.take() {
                t.abort();
            }
        }
        self.acks.stop.store(true, Ordering::Relaxed);
    }
}

/// Acknowledgements, sent at once or once a complete checkpoint covers the epoch in
/// which the message was read.
struct Acks {
    client: async_nats::Client,
    rt: tokio::runtime::Handle,
    /// epoch -> reply subjects of the messages read in it.
    waiting: Arc<Mutex<BTreeMap<u64, Vec<async_nats::Subject>>>>,
    stop: Arc<AtomicBool>,
}

impl Acks {
    fn new(ctx: &JobContext, client: async_nats::Client, deferred: bool, server: &Server) -> Self {
        let acks = Acks {
            client,
            rt: ctx.runtime().clone(),
            waiting: Default::default(),
            stop: Default::default(),
        };
        if let (true, Some(store)) = (deferred, ctx.store().cloned()) {
            let every = Duration::from_millis(ctx.config().epoch_ms().clamp(100, 2_000));
            let (waiting, stop, client) = (
                Arc::clone(&acks.waiting),
                Arc::clone(&acks.stop),
                acks.client.clone(),
            );
            let connector = server.connector.clone();
            ctx.runtime().spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    tokio::time::sleep(every).await;
                    let oldest = waiting.lock().expect("poisoned").keys().next().copied();
                    let Some(oldest) = oldest else { continue };
                    let complete = match store.list().await {
                        Ok((complete, _)) => complete.last().copied(),
                        Err(e) => {
                            tracing::warn!(source = %connector, error = %e, "cannot list checkpoints; acknowledgements wait");
                            continue;
                        }
                    };
                    let Some(complete) = complete.map(|c| c.0).filter(|c| *c >= oldest) else {
                        continue;
                    };
                    let due: Vec<async_nats::Subject> = {
                        let mut waiting = waiting.lock().expect("poisoned");
                        let later = waiting.split_off(&(complete + 1));
                        std::mem::replace(&mut *waiting, later)
                            .into_values()
                            .flatten()
                            .collect()
                    };
                    send(&client, due, &connector).await;
                }
            });
        }
        acks
    }

    fn after_checkpoint(&self, epoch: u64, replies: Vec<async_nats::Subject>) {
        self.waiting
            .lock()
            .expect("poisoned")
            .entry(epoch)
            .or_default()
            .extend(replies);
    }

    fn now(&self, replies: Vec<async_nats::Subject>) {
        let client = self.client.clone();
        self.rt
            .spawn(async move { send(&client, replies, "nats source").await });
    }
}

/// Acknowledges messages by their reply subjects. A failure is logged: the message is
/// delivered again to the consumer (and dropped as a repeat), and on a work-queue stream
/// removed at the next restore.
async fn send(client: &async_nats::Client, replies: Vec<async_nats::Subject>, connector: &str) {
    for reply in replies {
        if let Err(e) = client.publish(reply, "+ACK".into()).await {
            tracing::warn!(source = %connector, error = %e, "cannot acknowledge a message");
            return;
        }
    }
    if let Err(e) = client.flush().await {
        tracing::warn!(source = %connector, error = %e, "cannot acknowledge messages");
    }
}
