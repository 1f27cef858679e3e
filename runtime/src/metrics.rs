//! Prometheus metrics of a job process, served as text exposition on `--metrics-addr`.
//!
//! Every metric carries the labels `job` and `process`; per-worker ones add `worker` and
//! the source's or sink's name. Counters are counted per batch, never per record: an
//! operator adds a batch's length with one atomic add.
//!
//! ## Design
//!
//! One [`Metrics`] per process, created with the run and shared through the job's
//! context. The coordinator records checkpoint figures as it completes or fails them;
//! sources and sinks take their counter handles once, when they are built. A scrape
//! encodes the registry; the seconds since the last completed checkpoint are computed at
//! scrape time.

use std::borrow::Cow;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use prometheus_client::encoding::EncodeLabelSet;
pub use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
pub use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use crate::error::{Result, RuntimeError};

/// The labels of a per-worker operator metric.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OperatorLabels {
    /// The worker's global index.
    pub worker: u64,
    /// The source's, sink's or operator's name.
    pub operator: String,
}

/// The labels of an operator of the dataflow, as timely's event log names it (the runtime's
/// `observe` module reads that log).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DataflowLabels {
    /// The worker's global index.
    pub worker: u64,
    /// The operator's identifier on its worker (the same on every worker).
    pub id: u64,
    /// The operator's name, such as `Map`, `Exchange`, `source:lines` or `keyed:counts`.
    pub operator: String,
    /// The operator's address: scope indices from the root, joined by dots.
    pub address: String,
}

/// The labels of an output port of an operator of the dataflow.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutputLabels {
    /// The worker's global index.
    pub worker: u64,
    /// The operator's identifier on its worker.
    pub id: u64,
    /// The operator's name.
    pub operator: String,
    /// The operator's address.
    pub address: String,
    /// The output port: weir's sources and keyed operators send their records on port
    /// 0 and their snapshot reports to the coordinator on port 1.
    pub port: u64,
}

/// The labels of a channel between two operators of the dataflow.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ChannelLabels {
    /// The worker's global index.
    pub worker: u64,
    /// The channel's identifier on its worker.
    pub channel: u64,
    /// The `id` of the operator the channel leaves (`?` if unknown).
    pub source: String,
    /// The `id` of the operator the channel feeds (`?` if unknown).
    pub target: String,
}

/// The labels of a per-worker metric.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WorkerLabels {
    /// The worker's global index.
    pub worker: u64,
}

/// A counter of seconds.
pub type SecondsCounter = Counter<f64, AtomicU64>;

/// Counts the records of one operator on one worker, one add per batch.
#[derive(Clone)]
pub struct RecordCounter {
    counter: Counter,
    total: Arc<AtomicU64>,
}

impl RecordCounter {
    /// Counts a batch of `n` records.
    pub fn add(&self, n: usize) {
        self.counter.inc_by(n as u64);
        self.total.fetch_add(n as u64, Ordering::Relaxed);
    }
}

/// The metrics of one job process.
pub struct Metrics {
    registry: Registry,
    /// Records read per source and worker.
    pub source_records: Family<OperatorLabels, Counter>,
    /// Records written per sink and worker.
    pub sink_records: Family<OperatorLabels, Counter>,
    /// Bytes of input read per source and worker (sources that know their input's size).
    pub source_bytes_read: Family<OperatorLabels, Gauge>,
    /// Bytes of input left per source and worker: the source's lag.
    pub source_bytes_left: Family<OperatorLabels, Gauge>,
    /// Records not read yet per source and worker, for sources that count their input in
    /// offsets (Kafka: the end offset minus the position, summed over partitions).
    pub source_offsets_left: Family<OperatorLabels, Gauge>,
    /// Offsets read per source and worker, from the start of the partitions' retained
    /// records (Kafka).
    pub source_offsets_read: Family<OperatorLabels, Gauge>,
    /// Seconds a source had input ready but waited for its worker to run the operators
    /// downstream of it: the time it was held back by backpressure.
    pub source_backpressured: Family<OperatorLabels, SecondsCounter>,
    /// Records into every operator of the dataflow (timely's and weir's), per worker;
    /// only while metrics are served.
    pub dataflow_records_in: Family<DataflowLabels, Counter>,
    /// Records out of every output port of every operator of the dataflow, per worker.
    pub dataflow_records_out: Family<OutputLabels, Counter>,
    /// Seconds each operator of the dataflow ran, per worker.
    pub dataflow_busy: Family<DataflowLabels, SecondsCounter>,
    /// Records sent on each channel between two operators, per sending worker.
    pub dataflow_channel_records: Family<ChannelLabels, Counter>,
    /// Seconds each worker was parked with nothing to do.
    pub worker_parked: Family<WorkerLabels, SecondsCounter>,
    /// The size of the newest snapshot of each operator's state on each worker.
    pub state_bytes: Family<OperatorLabels, Gauge>,
    /// Records into each keyed operator, per worker.
    pub operator_records_in: Family<OperatorLabels, Counter>,
    /// Records out of each keyed operator, per worker.
    pub operator_records_out: Family<OperatorLabels, Counter>,
    /// Checkpoints completed (committed) by this process's coordinator.
    pub checkpoints_completed: Counter,
    /// Checkpoints that failed (a part, the manifest or its link could not be written).
    pub checkpoints_failed: Counter,
    /// The epoch of the last completed checkpoint.
    pub last_completed_epoch: Gauge,
    /// Time from an epoch's close (every part reported) to its manifest committed.
    pub checkpoint_seconds: Histogram,
    /// Time to write the manifest and its link.
    pub manifest_seconds: Histogram,
    /// Time from an epoch's barrier to its last part reported (snapshot and upload).
    pub snapshot_seconds: Histogram,
    /// Time an operator spent copying and encoding its state at an epoch's barrier (the
    /// synchronous part of a snapshot, which holds up its records), per snapshot.
    pub sync_seconds: Histogram,
    /// Time to upload one part of a snapshot (in the background), per part.
    pub upload_seconds: Histogram,
    /// The size of the last completed checkpoint's parts.
    pub checkpoint_bytes: Gauge,
    /// Bytes of parts written for completed checkpoints (parts reused from older
    /// checkpoints are not counted again).
    pub uploaded_bytes: Counter,
    /// Seconds the next checkpoint barrier waited for the snapshots of earlier
    /// checkpoints (`max-concurrent-checkpoints` of them were still being encoded or
    /// uploaded).
    pub barrier_held: SecondsCounter,
    /// Time to commit one checkpoint's sink outputs.
    pub commit_seconds: Histogram,
    /// Sink outputs waiting for their checkpoint to commit them.
    pub pending_outputs: Gauge,
    /// This run's generation.
    pub generation: Gauge,
    /// Generations of this job that started before this one: restarts so far.
    pub restarts: Gauge,
    last_completed_ms: Arc<AtomicU64>,
    since_last: Gauge<f64, AtomicU64>,
    read_total: Arc<AtomicU64>,
    written_total: Arc<AtomicU64>,
}

impl Metrics {
    /// The metrics of process `process` of job `job`.
    pub fn new(job: &str, process: usize) -> Self {
        let labels = [
            (Cow::Borrowed("job"), Cow::Owned(job.to_string())),
            (Cow::Borrowed("process"), Cow::Owned(process.to_string())),
        ];
        let mut registry = Registry::with_prefix_and_labels("weir", labels.into_iter());
        let m = Metrics {
            source_records: Family::default(),
            sink_records: Family::default(),
            source_bytes_read: Family::default(),
            source_bytes_left: Family::default(),
            state_bytes: Family::default(),
            source_offsets_left: Family::default(),
            source_offsets_read: Family::default(),
            source_backpressured: Family::default(),
            dataflow_records_in: Family::default(),
            dataflow_records_out: Family::default(),
            dataflow_busy: Family::default(),
            dataflow_channel_records: Family::default(),
            worker_parked: Family::default(),
            operator_records_in: Family::default(),
            operator_records_out: Family::default(),
            checkpoints_completed: Counter::default(),
            checkpoints_failed: Counter::default(),
            last_completed_epoch: Gauge::default(),
            checkpoint_seconds: Histogram::new(exponential_buckets(0.005, 2.0, 14)),
            manifest_seconds: Histogram::new(exponential_buckets(0.001, 2.0, 14)),
            snapshot_seconds: Histogram::new(exponential_buckets(0.005, 2.0, 14)),
            sync_seconds: Histogram::new(exponential_buckets(0.0001, 2.0, 16)),
            upload_seconds: Histogram::new(exponential_buckets(0.001, 2.0, 14)),
            checkpoint_bytes: Gauge::default(),
            uploaded_bytes: Counter::default(),
            barrier_held: SecondsCounter::default(),
            commit_seconds: Histogram::new(exponential_buckets(0.001, 2.0, 14)),
            pending_outputs: Gauge::default(),
            generation: Gauge::default(),
            restarts: Gauge::default(),
            last_completed_ms: Arc::new(AtomicU64::new(0)),
            since_last: Gauge::default(),
            read_total: Arc::default(),
            written_total: Arc::default(),
            registry: Registry::default(),
        };
        registry.register(
            "source_records",
            "Records read, per source and worker",
            m.source_records.clone(),
        );
        registry.register(
            "sink_records",
            "Records written, per sink and worker",
            m.sink_records.clone(),
        );
        registry.register(
            "source_bytes_read",
            "Bytes of input read, per source and worker (sources that know their size)",
            m.source_bytes_read.clone(),
        );
        registry.register(
            "source_bytes_left",
            "Bytes of input left to read, per source and worker: the source's lag",
            m.source_bytes_left.clone(),
        );
        registry.register(
            "source_offsets_read",
            "Offsets read, per source and worker, from the partitions' oldest retained record (Kafka)",
            m.source_offsets_read.clone(),
        );
        registry.register(
            "source_offsets_left",
            "Records left to read, per source and worker: the end offset minus the position, summed over partitions (Kafka's lag)",
            m.source_offsets_left.clone(),
        );
        registry.register(
            "source_backpressured_seconds",
            "Seconds a source had input ready but waited for its worker to run the operators downstream",
            m.source_backpressured.clone(),
        );
        registry.register(
            "dataflow_records_in",
            "Records into every operator of the dataflow, per worker (served metrics only)",
            m.dataflow_records_in.clone(),
        );
        registry.register(
            "dataflow_records_out",
            "Records out of every output port of every operator of the dataflow, per worker (served metrics only)",
            m.dataflow_records_out.clone(),
        );
        registry.register(
            "dataflow_busy_seconds",
            "Seconds each operator of the dataflow ran, per worker; a scope includes its operators (served metrics only)",
            m.dataflow_busy.clone(),
        );
        registry.register(
            "dataflow_channel_records",
            "Records sent on each channel between two operators, per sending worker (served metrics only)",
            m.dataflow_channel_records.clone(),
        );
        registry.register(
            "worker_parked_seconds",
            "Seconds each worker was parked with nothing to do (served metrics only)",
            m.worker_parked.clone(),
        );
        registry.register(
            "operator_records_in",
            "Records into each keyed operator, per worker",
            m.operator_records_in.clone(),
        );
        registry.register(
            "operator_records_out",
            "Records out of each keyed operator, per worker",
            m.operator_records_out.clone(),
        );
        registry.register(
            "state_bytes",
            "The size of the newest snapshot of the state, per operator and worker",
            m.state_bytes.clone(),
        );
        registry.register(
            "checkpoints_completed",
            "Checkpoints completed and committed",
            m.checkpoints_completed.clone(),
        );
        registry.register(
            "checkpoints_failed",
            "Checkpoints that failed",
            m.checkpoints_failed.clone(),
        );
        registry.register(
            "checkpoint_last_completed_epoch",
            "The epoch of the last completed checkpoint",
            m.last_completed_epoch.clone(),
        );
        registry.register(
            "checkpoint_seconds_since_last_completed",
            "Seconds since the last checkpoint completed (since the start before the first)",
            m.since_last.clone(),
        );
        registry.register(
            "checkpoint_duration_seconds",
            "From an epoch's last part reported to its manifest committed",
            m.checkpoint_seconds.clone(),
        );
        registry.register(
            "checkpoint_manifest_seconds",
            "Writing a checkpoint's manifest and its link",
            m.manifest_seconds.clone(),
        );
        registry.register(
            "checkpoint_snapshot_seconds",
            "From an epoch's barrier to its last part reported: snapshot and upload",
            m.snapshot_seconds.clone(),
        );
        registry.register(
            "checkpoint_sync_seconds",
            "An operator's copy and encoding of its state at an epoch's barrier, per snapshot (it holds up the operator's records)",
            m.sync_seconds.clone(),
        );
        registry.register(
            "checkpoint_upload_seconds",
            "Uploading one part of a snapshot, in the background",
            m.upload_seconds.clone(),
        );
        registry.register(
            "checkpoint_size_bytes",
            "The size of the last completed checkpoint's parts",
            m.checkpoint_bytes.clone(),
        );
        registry.register(
            "checkpoint_uploaded_bytes",
            "Bytes of parts written for completed checkpoints",
            m.uploaded_bytes.clone(),
        );
        registry.register(
            "checkpoint_barrier_held_seconds",
            "Seconds the next checkpoint barrier waited for the snapshots (encoding or uploads) of earlier checkpoints (max-concurrent-checkpoints)",
            m.barrier_held.clone(),
        );
        registry.register(
            "sink_commit_seconds",
            "Committing one checkpoint's sink outputs",
            m.commit_seconds.clone(),
        );
        registry.register(
            "sink_pending_outputs",
            "Sink outputs waiting for their checkpoint to commit them",
            m.pending_outputs.clone(),
        );
        registry.register("generation", "This run's generation", m.generation.clone());
        registry.register(
            "restarts",
            "Generations of this job that started before this one",
            m.restarts.clone(),
        );
        Metrics { registry, ..m }
    }

    /// The counter of the records that source `name` reads on `worker`.
    pub fn source_counter(&self, worker: usize, name: &str) -> RecordCounter {
        record_counter(&self.source_records, &self.read_total, worker, name)
    }

    /// The counter of the records that sink `name` writes on `worker`.
    pub fn sink_counter(&self, worker: usize, name: &str) -> RecordCounter {
        record_counter(&self.sink_records, &self.written_total, worker, name)
    }

    /// The gauges of the bytes that source `name` has read on `worker`, and has left
    /// (its lag, for a source whose input has a known end).
    pub fn source_bytes(&self, worker: usize, name: &str) -> (Gauge, Gauge) {
        (
            self.source_bytes_read
                .get_or_create(&labels(worker, name))
                .clone(),
            self.source_bytes_left
                .get_or_create(&labels(worker, name))
                .clone(),
        )
    }

    /// The gauges of the offsets that source `name` has read on `worker`, and has left
    /// (its lag, for a source that counts its input in offsets).
    pub fn source_offsets(&self, worker: usize, name: &str) -> (Gauge, Gauge) {
        (
            self.source_offsets_read
                .get_or_create(&labels(worker, name))
                .clone(),
            self.source_offsets_left
                .get_or_create(&labels(worker, name))
                .clone(),
        )
    }

    /// The counter of the seconds source `name` on `worker` was held back by
    /// backpressure.
    pub fn source_backpressure(&self, worker: usize, name: &str) -> SecondsCounter {
        self.source_backpressured
            .get_or_create(&labels(worker, name))
            .clone()
    }

    /// The counter of the seconds `worker` was parked.
    pub fn worker_parked(&self, worker: usize) -> SecondsCounter {
        self.worker_parked
            .get_or_create(&WorkerLabels {
                worker: worker as u64,
            })
            .clone()
    }

    /// The counters of the records into and out of keyed operator `name` on `worker`
    /// (counted per batch).
    pub fn operator_records(&self, worker: usize, name: &str) -> (Counter, Counter) {
        (
            self.operator_records_in
                .get_or_create(&labels(worker, name))
                .clone(),
            self.operator_records_out
                .get_or_create(&labels(worker, name))
                .clone(),
        )
    }

    /// The gauge of the size of `name`'s newest state snapshot on `worker`.
    pub fn state_bytes(&self, worker: usize, name: &str) -> Gauge {
        self.state_bytes
            .get_or_create(&labels(worker, name))
            .clone()
    }

    /// Records read by every source of this process, and written by every sink.
    pub fn totals(&self) -> (u64, u64) {
        (
            self.read_total.load(Ordering::Relaxed),
            self.written_total.load(Ordering::Relaxed),
        )
    }

    /// Records that a checkpoint of `epoch` completed now.
    pub fn completed(&self, epoch: u64) {
        self.checkpoints_completed.inc();
        self.last_completed_epoch.set(epoch as i64);
        self.last_completed_ms.store(now_ms(), Ordering::Relaxed);
    }

    /// Starts the clock of "seconds since the last completed checkpoint".
    pub fn started(&self) {
        self.last_completed_ms.store(now_ms(), Ordering::Relaxed);
    }

    /// The text exposition of every metric.
    pub fn encode(&self) -> String {
        let last = self.last_completed_ms.load(Ordering::Relaxed);
        self.since_last
            .set(Duration::from_millis(now_ms().saturating_sub(last)).as_secs_f64());
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

fn record_counter(
    family: &Family<OperatorLabels, Counter>,
    total: &Arc<AtomicU64>,
    worker: usize,
    name: &str,
) -> RecordCounter {
    RecordCounter {
        counter: family.get_or_create(&labels(worker, name)).clone(),
        total: Arc::clone(total),
    }
}

fn labels(worker: usize, name: &str) -> OperatorLabels {
    OperatorLabels {
        worker: worker as u64,
        operator: name.to_string(),
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Serves `metrics` as Prometheus text on `http://<addr>/metrics` from the I/O runtime,
/// until the process exits.
pub(crate) fn serve(
    metrics: Arc<Metrics>,
    addr: &str,
    runtime: &tokio::runtime::Runtime,
) -> Result<SocketAddr> {
    let listener = runtime
        .block_on(tokio::net::TcpListener::bind(addr))
        .map_err(|e| {
            RuntimeError::config(
                "metrics-addr",
                format!("cannot listen on {addr} for metrics: {e}; choose a free HOST:PORT"),
            )
        })?;
    let bound = listener.local_addr().map_err(|e| {
        RuntimeError::config(
            "metrics-addr",
            format!("cannot read the bound address: {e}"),
        )
    })?;
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let metrics = Arc::clone(&metrics);
            async move {
                (
                    [(
                        axum::http::header::CONTENT_TYPE,
                        "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    )],
                    metrics.encode(),
                )
            }
        }),
    );
    runtime.spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::warn!(error = %e, "the metrics endpoint stopped");
        }
    });
    tracing::info!(address = %bound, "serving metrics at http://{bound}/metrics");
    Ok(bound)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_exposition_carries_the_job_and_process_and_counts_per_batch() {
        let m = Metrics::new("wc", 2);
        let records = m.source_counter(3, "input");
        records.add(4096);
        records.add(10);
        assert_eq!(m.totals(), (4106, 0));
        m.completed(7);
        m.generation.set(4);
        let text = m.encode();
        assert!(
            text.contains(
                r#"weir_source_records_total{job="wc",process="2",worker="3",operator="input"} 4106"#
            ),
            "{text}"
        );
        assert!(
            text.contains(r#"weir_checkpoint_last_completed_epoch{job="wc",process="2"} 7"#),
            "{text}"
        );
        assert!(
            text.contains(r#"weir_checkpoints_completed_total{job="wc",process="2"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(r#"weir_generation{job="wc",process="2"} 4"#),
            "{text}"
        );
    }
}
