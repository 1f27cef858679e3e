//! What a job's operators see of the runtime: the per-process shared state, the
//! per-worker [`JobContext`], and the [`Job`] under construction.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::hash::Hash;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::de::DeserializeOwned;
use serde::Serialize;
use timely::dataflow::operators::Concatenate;
use timely::dataflow::{Scope, Stream};
use weir_checkpoint::store::VerifiedPart;
use weir_checkpoint::{codec, CheckpointStore, Manifest, PartEntry, Report};

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

/// The restored checkpoint's parts that this process's workers read, as verified when
/// the run chose its checkpoint, so that each is read and checked only once.
///
/// A part is handed to every local worker whose key groups it covers and dropped once the
/// last of them has taken it; whatever is left (parts no operator asked for) is dropped
/// when every local worker has built its dataflow. A worker that finds no kept part (it
/// asks for a part twice, or after the release) reads it from the store again.
pub(crate) struct RestoredParts {
    /// Verified parts by path, with the number of local workers yet to take each.
    parts: Mutex<HashMap<String, (VerifiedPart, usize)>>,
    /// Local workers that have not finished building their dataflow yet.
    building: AtomicUsize,
}

impl RestoredParts {
    /// No parts: a fresh start, or a run without checkpoints.
    pub(crate) fn none() -> Self {
        RestoredParts {
            parts: Mutex::new(HashMap::new()),
            building: AtomicUsize::new(0),
        }
    }

    /// Keeps `parts` for the local workers `local` of `peers` workers over `key_groups`.
    pub(crate) fn new(
        parts: Vec<VerifiedPart>,
        local: std::ops::Range<usize>,
        key_groups: u32,
        peers: usize,
    ) -> Self {
        let building = local.len();
        let parts = parts
            .into_iter()
            .filter_map(|part| {
                let takers = local
                    .clone()
                    .filter(|w| overlaps(part.entry(), keygroup::range(*w, key_groups, peers)))
                    .count();
                (takers > 0).then(|| (part.entry().path.clone(), (part, takers)))
            })
            .collect();
        RestoredParts {
            parts: Mutex::new(parts),
            building: AtomicUsize::new(building),
        }
    }

    /// Whether `entry`'s part needs reading, by one of the local workers `local`.
    pub(crate) fn wanted(
        entry: &PartEntry,
        local: std::ops::Range<usize>,
        key_groups: u32,
        peers: usize,
    ) -> bool {
        local
            .into_iter()
            .any(|w| overlaps(entry, keygroup::range(w, key_groups, peers)))
    }

    /// Takes the kept part for `entry`, if there is one; it is dropped once every local
    /// worker that needs it has taken it.
    fn take(&self, entry: &PartEntry) -> Option<VerifiedPart> {
        let mut parts = self.parts.lock().expect("poisoned");
        let (part, takers) = parts.get_mut(&entry.path)?;
        if part.entry() != entry {
            return None;
        }
        *takers -= 1;
        if *takers == 0 {
            parts.remove(&entry.path).map(|(part, _)| part)
        } else {
            Some(part.clone())
        }
    }

    /// Notes that a local worker has built its dataflow; the last one drops every part
    /// still kept.
    pub(crate) fn built(&self) {
        let before = self
            .building
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1));
        if before == Ok(1) {
            self.parts.lock().expect("poisoned").clear();
        }
    }

    /// Bytes still kept (for tests).
    #[cfg(test)]
    fn kept_bytes(&self) -> usize {
        let parts = self.parts.lock().expect("poisoned");
        parts.values().map(|(p, _)| p.bytes().len()).sum()
    }
}

/// Whether a part covers any of the key groups `[lo, hi)`.
fn overlaps(entry: &PartEntry, (lo, hi): (u32, u32)) -> bool {
    entry.key_group_end > lo && entry.key_group_start < hi
}

/// State shared by every worker of a process.
pub struct Shared {
    pub(crate) config: JobConfig,
    pub(crate) generation: u64,
    pub(crate) store: Option<CheckpointStore>,
    pub(crate) restored: Option<Manifest>,
    /// The restored checkpoint's verified parts, until the workers have read them.
    pub(crate) restored_parts: RestoredParts,
    pub(crate) clock: EpochClock,
    pub(crate) runtime: tokio::runtime::Handle,
    pub(crate) coordinator: Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// Set once a stop request has been seen (see [`JobContext::stop_requested`]).
    pub(crate) stop: std::sync::atomic::AtomicBool,
    /// The run's first fatal failure (see [`JobContext::fail`]).
    pub(crate) failure: crate::failure::FailureSlot,
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
            Err(e) => {
                // Neither answer is safe to act on: the run fails, and nothing it does
                // after this is committed.
                self.fail("reading the stop request", e.into());
                true
            }
        }
    }

    /// Records a failure that ends the run, with where it happened (`sink `out``,
    /// `snapshot of `count``). The first failure of the process is kept; every worker
    /// then stops its dataflow, and [`crate::run`] returns it.
    ///
    /// An operator that calls this must stop working: emit nothing more, report no
    /// snapshot. The coordinator writes no manifest and commits nothing after a failure.
    pub fn fail(&self, context: &str, error: RuntimeError) {
        self.shared.failure.record(context, error);
    }

    /// Whether the run has failed (on any worker of this process): operators stop
    /// working once it has.
    pub fn failed(&self) -> bool {
        self.shared.failure.is_failed()
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
        let groups = self.restore_groups::<Vec<(K, S)>>(name)?;
        let mut out = Vec::with_capacity(groups.iter().map(|(_, e)| e.len()).sum());
        for (_, entries) in groups {
            out.extend(entries);
        }
        Ok(out)
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
            if !overlaps(entry, (lo, hi)) {
                continue;
            }
            // Verified when the run chose the checkpoint; read again only if not kept.
            let part = match self.shared.restored_parts.take(entry) {
                Some(part) => part,
                None => self.block_on(store.get_part(entry))?,
            };
            let groups: Vec<(u32, T)> = part.decode()?;
            drop(part);
            crate::failpoint::hit("restore");
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
    /// The part's upload; `None` for the restored part (durable and verified already).
    ticket: Option<u64>,
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

    /// Starts from this worker's part of the restored checkpoint, so that while the
    /// operator's state is still the restored one, its snapshots report that part again
    /// instead of uploading the same state anew. Returns whether it did; the operator may
    /// then pass `None` to [`Self::snapshot`] until its state changes.
    ///
    /// Call it while building the operator, right after restoring its state from
    /// [`JobContext::restore_groups`] (or [`JobContext::restore_keyed`]) and only if that
    /// state is exactly what was restored. It succeeds only when the restored checkpoint
    /// was written by as many workers, this operator's only restored part that covers
    /// any of `key_groups` was written by this worker for exactly `key_groups` (so the
    /// restored state is that whole part), and the part lives in a checkpoint directory:
    /// retention keeps a directory as long as a retained manifest references one of its
    /// parts, whereas a savepoint can be deleted by hand at any time, so a part restored
    /// from a savepoint is never reused.
    pub fn reuse_restored(&mut self, key_groups: (u32, u32)) -> bool {
        let (Some(manifest), Some(store)) = (self.ctx.restored(), self.ctx.store()) else {
            return false;
        };
        let Some(entry) = reusable_part(
            manifest,
            store.layout().job(),
            &self.name,
            self.ctx.worker,
            self.ctx.peers,
            key_groups,
        ) else {
            return false;
        };
        tracing::debug!(operator = %self.name, worker = self.ctx.worker, path = %entry.path, "reusing the restored part until the state changes");
        self.last = Some(LastPart {
            entry: entry.clone(),
            bytes: bytes::Bytes::new(),
            ticket: None,
        });
        true
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
            .filter(|l| l.ticket.is_some_and(|t| self.failed.contains(&t)))
            .map(|l| l.bytes.clone());
        let mut ticket = self.last.as_ref().and_then(|l| l.ticket);
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
                ticket: Some(seq),
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
        let keep = self.last.as_ref().and_then(|l| l.ticket);
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
    // The same CRC as the checkpoint crate records for whole objects; for a framed part
    // it comes from the header, without another pass over the state.
    weir_checkpoint::codec::object_crc32(bytes)
}

/// The restored part that a [`Snapshotter`] of operator `name` on `worker` of `peers` may
/// report again while the state over `key_groups` is unchanged (see
/// [`Snapshotter::reuse_restored`]).
fn reusable_part<'m>(
    manifest: &'m Manifest,
    job: &str,
    name: &str,
    worker: usize,
    peers: usize,
    key_groups: (u32, u32),
) -> Option<&'m PartEntry> {
    if manifest.workers != peers {
        return None;
    }
    let mut covering = manifest
        .parts
        .iter()
        .filter(|p| p.operator == name && overlaps(p, key_groups));
    let entry = covering.next()?;
    if covering.next().is_some()
        || entry.worker != worker
        || (entry.key_group_start, entry.key_group_end) != key_groups
    {
        return None;
    }
    let mut segments = entry.path.split('/');
    let in_checkpoint = segments.next() == Some(job)
        && segments
            .next()
            .and_then(weir_checkpoint::layout::parse_checkpoint_dir)
            .is_some();
    in_checkpoint.then_some(entry)
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

#[cfg(test)]
mod tests {
    use super::*;

    fn part(op: &str, worker: usize, range: (u32, u32), path: &str) -> PartEntry {
        PartEntry {
            operator: op.into(),
            worker,
            key_group_start: range.0,
            key_group_end: range.1,
            path: path.into(),
            size: 0,
            crc32: 0,
        }
    }

    fn manifest(workers: usize, parts: Vec<PartEntry>) -> Manifest {
        Manifest {
            job: "job".into(),
            epoch: 7,
            generation: 0,
            workers,
            key_groups: 128,
            created_ms: 0,
            operators: vec!["op".into()],
            parts,
            sinks: vec![],
        }
    }

    #[test]
    fn the_restored_part_is_reused_only_at_the_same_ranges_from_a_checkpoint_directory() {
        let chk = |w: usize| format!("job/chk-00000000000000000007/op/w{w}-g0");
        let m = manifest(
            2,
            vec![
                part("op", 0, (0, 64), &chk(0)),
                part("op", 1, (64, 128), &chk(1)),
                part("src", 0, (0, 64), "job/chk-00000000000000000007/src/w0-g0"),
            ],
        );
        let reused = reusable_part(&m, "job", "op", 1, 2, (64, 128));
        assert_eq!(reused.map(|p| p.path.as_str()), Some(chk(1).as_str()));
        // Another number of workers, another range, another operator.
        assert!(reusable_part(&m, "job", "op", 0, 4, (0, 32)).is_none());
        assert!(reusable_part(&m, "job", "op", 0, 1, (0, 128)).is_none());
        assert!(reusable_part(&m, "job", "other", 0, 2, (0, 64)).is_none());
        // Written by as many workers, but not with this worker's range.
        let skewed = manifest(
            2,
            vec![
                part("op", 0, (0, 60), &chk(0)),
                part("op", 1, (60, 128), &chk(1)),
            ],
        );
        assert!(reusable_part(&skewed, "job", "op", 1, 2, (64, 128)).is_none());
        // A part reused from an older checkpoint directory is still in one.
        let older = manifest(
            2,
            vec![part(
                "op",
                0,
                (0, 64),
                "job/chk-00000000000000000003/op/w0-g0",
            )],
        );
        assert!(reusable_part(&older, "job", "op", 0, 2, (0, 64)).is_some());
        // A savepoint can be deleted by hand: its parts are never reused.
        let savepoint = manifest(
            2,
            vec![part("op", 0, (0, 64), "job/savepoints/sp/op/w0-w0-g0")],
        );
        assert!(reusable_part(&savepoint, "job", "op", 0, 2, (0, 64)).is_none());
    }

    fn verified(op: &str, range: (u32, u32), path: &str, value: u64) -> VerifiedPart {
        let bytes = codec::encode("t", &vec![(range.0, value)]).unwrap();
        let mut entry = part(op, 0, range, path);
        entry.size = bytes.len() as u64;
        entry.crc32 = codec::crc32(&bytes);
        VerifiedPart::verify(&entry, bytes.into()).unwrap()
    }

    #[test]
    fn restored_parts_go_once_every_local_worker_that_needs_them_took_them() {
        // Restoring 2 workers' parts on 4 workers, of which this process runs 0 and 1.
        let a = verified("op", (0, 64), "job/chk-1/op/a", 1);
        let b = verified("op", (64, 128), "job/chk-1/op/b", 2);
        let (ea, eb) = (a.entry().clone(), b.entry().clone());
        let parts = RestoredParts::new(vec![a, b], 0..2, 128, 4);
        // Part b is for workers 2 and 3, in another process: not kept.
        assert!(parts.take(&eb).is_none());
        let size = ea.size as usize;
        assert_eq!(parts.kept_bytes(), size);
        // Part a is for workers 0 and 1: it stays until both have taken it.
        let first = parts.take(&ea).unwrap();
        assert_eq!(first.decode::<Vec<(u32, u64)>>().unwrap(), vec![(0, 1)]);
        assert_eq!(parts.kept_bytes(), size);
        assert!(parts.take(&ea).is_some());
        assert_eq!(parts.kept_bytes(), 0);
        assert!(parts.take(&ea).is_none());
    }

    #[test]
    fn restored_parts_nobody_took_go_when_every_local_worker_has_built() {
        let a = verified("op", (0, 128), "job/chk-1/op/a", 1);
        let ea = a.entry().clone();
        let parts = RestoredParts::new(vec![a], 0..2, 128, 2);
        parts.built();
        assert_eq!(parts.kept_bytes(), ea.size as usize);
        parts.built();
        assert_eq!(parts.kept_bytes(), 0);
        parts.built();
        // A part with the same path but another entry is not handed out.
        let other = verified("op", (0, 128), "job/chk-1/op/a", 2);
        let parts = RestoredParts::new(vec![other], 0..1, 128, 1);
        assert!(parts.take(&ea).is_none());
    }
}
