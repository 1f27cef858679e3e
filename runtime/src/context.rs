//! What a job's operators see of the runtime: the per-process shared state, the
//! per-worker [`JobContext`], and the [`Job`] under construction.

use std::collections::{BTreeMap, BTreeSet};
use std::hash::Hash;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::de::DeserializeOwned;
use serde::Serialize;
use timely::dataflow::operators::Concatenate;
use timely::dataflow::{Scope, Stream};
use weir_checkpoint::{codec, CheckpointStore, Manifest, Report};

use crate::config::JobConfig;
use crate::error::{Result, RuntimeError};
use crate::keygroup;
use crate::sink::Committer;

/// The clock that cuts every source's stream into epochs.
///
/// All sources of a process share it, so that they inject barriers together.
#[derive(Debug, Clone)]
pub struct EpochClock {
    start: Arc<std::sync::OnceLock<Instant>>,
    first: u64,
    epoch_ms: u64,
}

impl EpochClock {
    /// A clock whose first epoch is `first` and whose epochs last `epoch_ms` (0: forever).
    ///
    /// The clock starts when it is first read, that is when the first source runs, after
    /// the cluster's processes have connected to each other; processes that started at
    /// different moments thus still number their epochs alike.
    pub fn new(first: u64, epoch_ms: u64) -> Self {
        EpochClock {
            start: Arc::new(std::sync::OnceLock::new()),
            first,
            epoch_ms,
        }
    }

    fn elapsed_ms(&self) -> u64 {
        self.start.get_or_init(Instant::now).elapsed().as_millis() as u64
    }

    /// The epoch that records read now belong to.
    pub fn current(&self) -> u64 {
        if self.epoch_ms == 0 {
            return self.first;
        }
        self.first + self.elapsed_ms() / self.epoch_ms
    }

    /// Time until the next epoch begins (`None` if epochs never end).
    pub fn until_next(&self) -> Option<Duration> {
        if self.epoch_ms == 0 {
            return None;
        }
        Some(Duration::from_millis(
            self.epoch_ms - self.elapsed_ms() % self.epoch_ms,
        ))
    }
}

/// State shared by every worker of a process.
pub struct Shared {
    pub(crate) config: JobConfig,
    pub(crate) generation: u64,
    pub(crate) store: Option<CheckpointStore>,
    pub(crate) restored: Option<Manifest>,
    pub(crate) clock: EpochClock,
    pub(crate) runtime: tokio::runtime::Handle,
    pub(crate) coordinator: Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// Set once a stop request has been seen (see [`JobContext::stop_requested`]).
    pub(crate) stop: std::sync::atomic::AtomicBool,
}

/// A worker's view of the running job.
#[derive(Clone)]
pub struct JobContext {
    pub(crate) shared: Arc<Shared>,
    worker: usize,
    peers: usize,
}

impl JobContext {
    /// The job's configuration.
    pub fn config(&self) -> &JobConfig {
        &self.shared.config
    }
    /// This worker's index.
    pub fn worker(&self) -> usize {
        self.worker
    }
    /// The number of workers in the cluster.
    pub fn peers(&self) -> usize {
        self.peers
    }
    /// This run's generation.
    pub fn generation(&self) -> u64 {
        self.shared.generation
    }
    /// The epoch clock.
    pub fn clock(&self) -> &EpochClock {
        &self.shared.clock
    }
    /// The first epoch of this run (the restored epoch + 1 or later).
    pub fn first_epoch(&self) -> u64 {
        self.shared.clock.first
    }
    /// Whether checkpoints are taken.
    pub fn checkpointing(&self) -> bool {
        self.shared.config.checkpointing()
    }
    /// The checkpoint store, when checkpointing is on.
    pub fn store(&self) -> Option<&CheckpointStore> {
        self.shared.store.as_ref()
    }
    /// The manifest this run restored from.
    pub fn restored(&self) -> Option<&Manifest> {
        self.shared.restored.as_ref()
    }
    /// The number of key groups.
    pub fn key_groups(&self) -> u32 {
        self.shared.config.key_groups
    }
    /// The key groups this worker owns.
    pub fn key_group_range(&self) -> (u32, u32) {
        keygroup::range(self.worker, self.key_groups(), self.peers)
    }
    /// Whether this worker owns `key`.
    pub fn owns<K: Hash + ?Sized>(&self, key: &K) -> bool {
        keygroup::owner(
            keygroup::key_group(key, self.key_groups()),
            self.key_groups(),
            self.peers,
        ) == self.worker
    }
    /// Whether this process has seen a request to stop with a final savepoint
    /// (`weir stop`). Sources check it and end their input early; it is polled in the
    /// background, so it is cheap to call often.
    pub fn stop_requested(&self) -> bool {
        self.shared.stop.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Whether the job is stopping rather than at the end of its input, asked once the
    /// input has ended: reads the request from the checkpoint store, so that the answer
    /// agrees across processes. Operators that would flush on end of input (event-time
    /// windows) keep their state instead when the job is stopping.
    pub fn is_stopping(&self) -> bool {
        if self.stop_requested() {
            return true;
        }
        let Some(store) = self.store() else {
            return false;
        };
        match self.block_on(store.stop_request()) {
            Ok(request) => request.is_some(),
            Err(e) => crate::execute::die("reading the stop request", &RuntimeError::from(e)),
        }
    }

    /// Runs a future to completion on the process's I/O runtime.
    pub fn block_on<F: std::future::Future>(&self, f: F) -> F::Output {
        self.shared.runtime.block_on(f)
    }
    /// The process's I/O runtime.
    pub fn runtime(&self) -> &tokio::runtime::Handle {
        &self.shared.runtime
    }

    /// Reads the keyed state of operator `name` that this worker owns from the restored
    /// checkpoint, whatever the number of workers that wrote it.
    ///
    /// Returns an empty vector on a fresh start.
    pub fn restore_keyed<K, S>(&self, name: &str) -> Result<Vec<(K, S)>>
    where
        K: DeserializeOwned,
        S: DeserializeOwned,
    {
        Ok(self
            .restore_groups::<Vec<(K, S)>>(name)?
            .into_iter()
            .flat_map(|(_, entries)| entries)
            .collect())
    }

    /// Reads the key groups this worker owns of operator `name` from the restored
    /// checkpoint: one value per key group, as written by [`encode_groups`].
    ///
    /// Returns an empty vector on a fresh start.
    pub fn restore_groups<T: DeserializeOwned>(&self, name: &str) -> Result<Vec<(u32, T)>> {
        let (Some(manifest), Some(store)) = (self.restored(), self.store()) else {
            return Ok(Vec::new());
        };
        let (lo, hi) = self.key_group_range();
        let mut out = Vec::new();
        for entry in manifest.parts_of(name) {
            if entry.key_group_end <= lo || entry.key_group_start >= hi {
                continue;
            }
            let part = self.block_on(store.get_part(entry))?;
            let groups: Vec<(u32, T)> = codec::decode(&entry.path, &part.bytes)?;
            out.extend(groups.into_iter().filter(|(g, _)| *g >= lo && *g < hi));
        }
        Ok(out)
    }
}

/// Encodes keyed state as a checkpoint part: entries grouped by key group.
pub fn encode_keyed<'a, K, S, I>(name: &str, key_groups: u32, entries: I) -> Result<Vec<u8>>
where
    K: Serialize + Hash + 'a,
    S: Serialize + 'a,
    I: IntoIterator<Item = (&'a K, &'a S)>,
{
    let mut groups: BTreeMap<u32, Vec<(&K, &S)>> = BTreeMap::new();
    for (k, s) in entries {
        groups
            .entry(keygroup::key_group(k, key_groups))
            .or_default()
            .push((k, s));
    }
    encode_groups(name, groups)
}

/// Encodes a checkpoint part made of one value per key group, for operators whose state
/// is not a plain map from key to value; [`JobContext::restore_groups`] reads it back.
pub fn encode_groups<T: Serialize>(
    name: &str,
    groups: impl IntoIterator<Item = (u32, T)>,
) -> Result<Vec<u8>> {
    let groups: Vec<(u32, T)> = groups.into_iter().collect();
    Ok(codec::encode(name, &groups)?)
}

/// A job under construction on one worker: its scope, its context, and the report
/// streams and committers its checkpointed operators register.
pub struct Job<'scope> {
    scope: Scope<'scope, u64>,
    ctx: JobContext,
    names: BTreeSet<String>,
    reports: Vec<Stream<'scope, u64, Vec<Report>>>,
    committers: BTreeMap<String, Arc<dyn Committer>>,
}

impl<'scope> Job<'scope> {
    pub(crate) fn new(scope: Scope<'scope, u64>, shared: Arc<Shared>) -> Self {
        let ctx = JobContext {
            shared,
            worker: scope.index(),
            peers: scope.peers(),
        };
        Job {
            scope,
            ctx,
            names: BTreeSet::new(),
            reports: Vec::new(),
            committers: BTreeMap::new(),
        }
    }

    /// The dataflow scope; timestamps are epochs.
    pub fn scope(&self) -> Scope<'scope, u64> {
        self.scope
    }

    /// The worker's context.
    pub fn ctx(&self) -> &JobContext {
        &self.ctx
    }

    /// Claims a unique operator name; checkpointed state is stored under it.
    pub fn claim_name(&mut self, name: &str) -> Result<()> {
        if name.is_empty() || name.contains('/') || name.starts_with('_') {
            return Err(RuntimeError::config(
                "operator name",
                format!("`{name}` must be non-empty, contain no `/` and not start with `_`"),
            ));
        }
        if !self.names.insert(name.to_string()) {
            return Err(RuntimeError::config(
                "operator name",
                format!("`{name}` is used twice in the job; names must be unique"),
            ));
        }
        Ok(())
    }

    /// Registers the report stream of a checkpointed operator (see [`Snapshotter`]).
    ///
    /// Every registered operator must report for an epoch (or have reported a final
    /// part) before that epoch's checkpoint can complete.
    pub fn register_reports(&mut self, reports: Stream<'scope, u64, Vec<Report>>) {
        self.reports.push(reports);
    }

    /// Registers how the coordinator commits and aborts a sink's pre-committed output.
    pub fn register_committer(&mut self, name: &str, committer: Arc<dyn Committer>) {
        self.committers.insert(name.to_string(), committer);
    }

    /// Finishes construction: recovers sinks and installs the checkpoint coordinator.
    pub(crate) fn finish(self) -> Result<()> {
        let Job {
            scope,
            ctx,
            names,
            reports,
            committers,
        } = self;
        if ctx.worker == 0 {
            if let Some(m) = ctx.restored() {
                check_graph(m, &names)?;
            }
            if let Some(store) = ctx.store() {
                // Every process has read the markers and chosen its checkpoint by now: the
                // cluster is connected. Announce this generation, so that older ones are
                // fenced, and abandon checkpoints newer than the restored one, whose
                // uncommitted output recovery is about to abort.
                ctx.block_on(store.announce_generation(ctx.generation()))?;
                let restored = ctx.restored().map_or(0, |m| m.epoch);
                for epoch in ctx.block_on(store.abandon_newer_than(restored))? {
                    tracing::warn!(
                        epoch,
                        restored,
                        "checkpoint {epoch} is newer than the restored one and is abandoned"
                    );
                }
            }
            crate::coordinator::recover_sinks(&ctx, &committers)?;
        }
        if !ctx.checkpointing() || reports.is_empty() {
            return Ok(());
        }
        let reports = scope.concatenate(reports);
        crate::coordinator::install(reports, ctx, names, committers);
        Ok(())
    }
}

fn check_graph(manifest: &Manifest, names: &BTreeSet<String>) -> Result<()> {
    let recorded: BTreeSet<String> = manifest.operators.iter().cloned().collect();
    if recorded != *names {
        let missing: Vec<_> = recorded.difference(names).collect();
        let added: Vec<_> = names.difference(&recorded).collect();
        return Err(RuntimeError::Mismatch {
            epoch: manifest.epoch,
            reason: format!(
                "the job's checkpointed operators changed: in the checkpoint but not in the job: {missing:?}; in the job but not in the checkpoint: {added:?}"
            ),
        });
    }
    Ok(())
}

/// Uploads an operator's snapshots in the background and reports them, in epoch order,
/// once they are durable.
///
/// ## Design
///
/// The operator hands over the encoded bytes (the synchronous copy) together with a
/// capability for the report output at the snapshot's epoch; the upload runs on the
/// process's I/O runtime and wakes the operator when done. Reports leave strictly in
/// epoch order, so a report that reuses an earlier part (state unchanged) never
/// overtakes the upload of that part. Holding the report capability is what keeps the
/// coordinator's frontier from passing the epoch before the part is durable.
pub struct Snapshotter {
    ctx: JobContext,
    name: String,
    activator: timely::scheduling::SyncActivator,
    queue: std::collections::VecDeque<Pending>,
    done: Arc<Mutex<BTreeMap<u64, std::result::Result<(), String>>>>,
    /// The newest part, its bytes (to upload again if its upload fails) and its upload.
    last: Option<LastPart>,
    /// Uploads known to have failed, by ticket.
    failed: BTreeSet<u64>,
    seq: u64,
}

struct LastPart {
    entry: weir_checkpoint::PartEntry,
    bytes: bytes::Bytes,
    ticket: u64,
}

struct Pending {
    cap: timely::dataflow::operators::Capability<u64>,
    report: Report,
    /// The upload this report's part depends on (its own, or the one it reuses).
    ticket: Option<u64>,
}

impl Snapshotter {
    /// A snapshotter for operator `name`, waking the operator at `address`.
    pub fn new(
        ctx: &JobContext,
        name: &str,
        address: &[usize],
        worker: &timely::worker::Worker,
    ) -> Self {
        Snapshotter {
            ctx: ctx.clone(),
            name: name.to_string(),
            activator: worker.sync_activator_for(address.to_vec()),
            queue: Default::default(),
            done: Default::default(),
            last: None,
            failed: BTreeSet::new(),
            seq: 0,
        }
    }

    /// Takes a snapshot for `cap`'s epoch.
    ///
    /// `state`: `Some(bytes)` to upload a new part covering `key_groups`, `None` if the
    /// operator keeps no state or its state is unchanged since the last snapshot (the last
    /// part is then reported again, or uploaded again under this epoch if its upload
    /// failed). `sinks`: outputs pre-committed since the last report. `is_final`: the
    /// operator's input has ended.
    pub fn snapshot(
        &mut self,
        cap: timely::dataflow::operators::Capability<u64>,
        key_groups: (u32, u32),
        state: Option<Vec<u8>>,
        sinks: Vec<weir_checkpoint::SinkEntry>,
        is_final: bool,
    ) {
        let epoch = *cap.time();
        let mut report = Report {
            epoch,
            operator: self.name.clone(),
            worker: self.ctx.worker,
            parts: Vec::new(),
            sinks,
            is_final,
            error: None,
        };
        let reupload = self
            .last
            .as_ref()
            .filter(|l| self.failed.contains(&l.ticket))
            .map(|l| l.bytes.clone());
        let mut ticket = self.last.as_ref().map(|l| l.ticket);
        if let (Some(bytes), Some(store)) =
            (state.map(bytes::Bytes::from).or(reupload), self.ctx.store())
        {
            let path = store.layout().part(
                epoch,
                &self.name,
                &format!("w{}-g{}", self.ctx.worker, self.ctx.generation()),
            );
            let entry = weir_checkpoint::PartEntry {
                operator: self.name.clone(),
                worker: self.ctx.worker,
                key_group_start: key_groups.0,
                key_group_end: key_groups.1,
                path: path.to_string(),
                size: bytes.len() as u64,
                crc32: crc32(&bytes),
            };
            self.seq += 1;
            let seq = self.seq;
            ticket = Some(seq);
            let store = store.clone();
            let done = Arc::clone(&self.done);
            let activator = self.activator.clone();
            let timeout = Duration::from_millis(self.ctx.config().checkpoint_timeout_ms.max(1));
            let (name, worker) = (self.name.clone(), self.ctx.worker);
            let upload = bytes.clone();
            self.ctx.runtime().spawn(async move {
                crate::failpoint::hit("upload");
                let put = store.put_part(path.clone(), &name, worker, key_groups, upload);
                let result = match tokio::time::timeout(timeout, put).await {
                    Ok(Ok(_)) => Ok(()),
                    Ok(Err(e)) => Err(e.to_string()),
                    Err(_) => Err(format!(
                        "upload of `{path}` timed out after {timeout:?} (checkpoint-timeout-ms)"
                    )),
                };
                done.lock().expect("poisoned").insert(seq, result);
                let _ = activator.activate();
            });
            self.last = Some(LastPart {
                entry,
                bytes,
                ticket: seq,
            });
        }
        report
            .parts
            .extend(self.last.as_ref().map(|l| l.entry.clone()));
        self.queue.push_back(Pending {
            cap,
            report,
            ticket,
        });
    }

    /// Emits every report whose parts are durable, in order. Call on every activation.
    ///
    /// A report whose part failed to upload (its own, or the earlier one it reuses)
    /// carries the error, so that its checkpoint fails instead of referencing a missing
    /// object; the next snapshot then uploads the state again.
    pub fn poll<F: FnMut(&timely::dataflow::operators::Capability<u64>, Report)>(
        &mut self,
        mut emit: F,
    ) {
        while let Some(front) = self.queue.front_mut() {
            if let Some(ticket) = front.ticket {
                if !self.failed.contains(&ticket) {
                    match self.done.lock().expect("poisoned").get(&ticket) {
                        None => return,
                        Some(Ok(())) => {}
                        Some(Err(e)) => {
                            tracing::warn!(operator = %self.name, epoch = front.report.epoch, error = %e, "snapshot upload failed");
                            self.failed.insert(ticket);
                            front.report.error = Some(e.clone());
                        }
                    }
                } else {
                    front.report.error = Some(format!(
                        "it reuses a part whose upload failed (ticket {ticket})"
                    ));
                }
            }
            let Pending { cap, report, .. } = self.queue.pop_front().expect("front exists");
            emit(&cap, report);
        }
        // Forget results nobody waits for anymore (the newest part's stays for reuse).
        let keep = self.last.as_ref().map(|l| l.ticket);
        let waiting: BTreeSet<u64> = self
            .queue
            .iter()
            .filter_map(|p| p.ticket)
            .chain(keep)
            .collect();
        self.done
            .lock()
            .expect("poisoned")
            .retain(|t, _| waiting.contains(t));
        self.failed.retain(|t| waiting.contains(t));
    }

    /// Whether every snapshot has been reported.
    pub fn is_idle(&self) -> bool {
        self.queue.is_empty()
    }
}

fn crc32(bytes: &[u8]) -> u32 {
    // The same CRC as the checkpoint crate uses for whole objects.
    weir_checkpoint::codec::crc32(bytes)
}

/// Tracks which epochs an operator's input frontier has closed, and hands out the
/// report capability for each snapshot.
///
/// ## Design
///
/// The tracker holds a report capability at the oldest open epoch. When the input
/// frontier moves from `f` to `f' > f`, epochs `f..f'` are closed and one snapshot is
/// due, labelled `f' - 1` (the state then covers every record of epochs `<= f' - 1`).
/// When the frontier empties, a final snapshot is due, labelled with the largest epoch
/// the operator has seen, and the capability is released.
pub struct EpochTracker {
    cap: Option<timely::dataflow::operators::Capability<u64>>,
    max_seen: u64,
}

/// A snapshot the tracker says is due.
pub struct Due {
    /// Report capability at the snapshot's epoch.
    pub cap: timely::dataflow::operators::Capability<u64>,
    /// The snapshot's epoch.
    pub epoch: u64,
    /// The input has ended.
    pub is_final: bool,
}

impl EpochTracker {
    /// A tracker starting at the run's first epoch.
    pub fn new(mut cap: timely::dataflow::operators::Capability<u64>, first_epoch: u64) -> Self {
        cap.downgrade(&first_epoch);
        EpochTracker {
            cap: Some(cap),
            max_seen: first_epoch,
        }
    }

    /// Notes an epoch seen in the input.
    pub fn saw(&mut self, epoch: u64) {
        self.max_seen = self.max_seen.max(epoch);
    }

    /// Checks the input frontier; returns the snapshot that is due, if any.
    pub fn advance(
        &mut self,
        frontier: &timely::progress::frontier::MutableAntichain<u64>,
    ) -> Option<Due> {
        let cap = self.cap.as_mut()?;
        match frontier.frontier().iter().min() {
            None => {
                let epoch = self.max_seen.max(*cap.time());
                let due = cap.delayed(&epoch);
                self.cap = None;
                Some(Due {
                    cap: due,
                    epoch,
                    is_final: true,
                })
            }
            Some(f) if *f > *cap.time() => {
                let epoch = f - 1;
                let due = cap.delayed(&epoch);
                cap.downgrade(f);
                Some(Due {
                    cap: due,
                    epoch,
                    is_final: false,
                })
            }
            Some(_) => None,
        }
    }

    /// Whether the input has ended and the final snapshot was handed out.
    pub fn is_done(&self) -> bool {
        self.cap.is_none()
    }
}
