//! Snapshots: encoding keyed state into checkpoint parts, and uploading them in the
//! background while records keep flowing.
//!
//! ## Design
//!
//! Invariants (DESIGN's 1 and 4):
//! - a snapshot holds the state as of exactly the closed epochs: it is taken at the
//!   barrier (keyed state seals it there and encodes its deltas copy-on-write after it,
//!   see `state`), and uploaded on the I/O runtime; processing waits only for the part
//!   taken at the barrier;
//! - an operator's report for epoch `e` leaves only once its part is durable, in epoch
//!   order, under a report capability at `e`: the coordinator cannot see `e` complete
//!   before every part of `e` is in storage;
//! - a failed upload fails every checkpoint that would reference the part, and the part is
//!   uploaded again for the next one.

use std::collections::{BTreeMap, BTreeSet};
use std::hash::Hash;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;
use weir_checkpoint::{codec, Manifest, PartEntry, Report};

use crate::context::JobContext;
use crate::error::Result;
use crate::keygroup;
use crate::restore::overlaps;
use weir_checkpoint::{Epoch, WorkerIndex};

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

/// A snapshot's object, as an operator hands it to [`Snapshotter::snapshot_part`].
#[derive(Debug, Clone)]
pub struct Part {
    /// The encoded object.
    pub bytes: Vec<u8>,
    /// `None` for a whole part, which replaces the operator's previous part; for a packed
    /// object (see `weir_checkpoint::pack`), the key group ranges it holds bases for: it
    /// is appended to the operator's chain.
    pub bases: Option<Vec<(u32, u32)>>,
    /// The size of the state it brings the checkpoint to, for the metrics.
    pub state_bytes: u64,
}

impl Part {
    /// A whole part.
    pub fn whole(bytes: Vec<u8>) -> Self {
        let state_bytes = bytes.len() as u64;
        Part {
            bytes,
            bases: None,
            state_bytes,
        }
    }
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
    /// The parts the operator's next report lists, oldest first: one whole part, or a
    /// chain of packed objects (see `weir_checkpoint::pack`).
    chain: Vec<LastPart>,
    /// Uploads known to have failed, by ticket.
    failed: BTreeSet<u64>,
    seq: u64,
    /// The size of this worker's newest snapshot of the operator, for the metrics.
    state_bytes: prometheus_client::metrics::gauge::Gauge,
}

struct LastPart {
    entry: weir_checkpoint::PartEntry,
    /// A whole part's bytes, to upload again if its upload fails; empty for a packed
    /// object, whose failed upload is replaced by new bases instead.
    bytes: bytes::Bytes,
    /// The part's upload; `None` for the restored part (durable and verified already).
    ticket: Option<u64>,
}

struct Pending {
    cap: timely::dataflow::operators::Capability<u64>,
    report: Report,
    /// The uploads this report's parts depend on (its own, or the ones it reuses).
    tickets: Vec<u64>,
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
            chain: Vec::new(),
            failed: BTreeSet::new(),
            seq: 0,
            state_bytes: ctx.metrics().state_bytes(worker.index(), name),
        }
    }

    /// Starts from this worker's part of the restored checkpoint, so that while the
    /// operator's state is still the restored one, its snapshots report that part again
    /// instead of uploading the same state anew. Returns whether it did; the operator may
    /// then pass `None` to [`Self::snapshot`] until its state changes.
    ///
    /// Call it while building the operator, right after restoring its state from
    /// [`JobContext::restore_groups`] (or [`JobContext::restore_keyed`]) and only if that
    /// state is exactly what was restored. It succeeds only when the operator's restored
    /// parts that cover any of `key_groups` live in checkpoint directories and form a
    /// chain: packed objects (see `weir_checkpoint::pack`), written by any workers, so
    /// that after a restore at another number of workers the key groups keep their
    /// bases and deltas; or a whole part written by this worker of as many workers for
    /// exactly `key_groups`, possibly followed by packed objects. Retention keeps a
    /// checkpoint directory as long as a retained manifest references one of its parts,
    /// whereas a savepoint can be deleted by hand at any time, so a part restored from a
    /// savepoint is never reused.
    pub fn reuse_restored(&mut self, key_groups: (u32, u32)) -> bool {
        let (Some(manifest), Some(store)) = (self.ctx.restored(), self.ctx.store()) else {
            return false;
        };
        let Some(chain) = reusable_chain(
            manifest,
            store.layout().job(),
            &self.name,
            self.ctx.worker(),
            self.ctx.peers(),
            key_groups,
        ) else {
            return false;
        };
        tracing::debug!(operator = %self.name, worker = self.ctx.worker(), parts = chain.len(), "reusing the restored parts until the state changes");
        self.chain = chain
            .into_iter()
            .map(|entry| LastPart {
                entry: entry.clone(),
                bytes: bytes::Bytes::new(),
                ticket: None,
            })
            .collect();
        true
    }

    /// Whether the next snapshot must write a base of every key group: an upload of the
    /// operator's chain failed, so the chain is broken.
    pub fn needs_base(&self) -> bool {
        self.chain
            .iter()
            .any(|l| l.entry.packed.is_some() && l.ticket.is_some_and(|t| self.failed.contains(&t)))
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
        self.snapshot_part(cap, key_groups, state.map(Part::whole), sinks, is_final)
    }

    /// [`Self::snapshot`] for any [`Part`]: a whole part replaces the operator's parts,
    /// a packed object joins its chain, and the parts that no key group needs any more
    /// (every group has a newer base) leave the chain.
    pub fn snapshot_part(
        &mut self,
        cap: timely::dataflow::operators::Capability<u64>,
        key_groups: (u32, u32),
        state: Option<Part>,
        sinks: Vec<weir_checkpoint::SinkEntry>,
        is_final: bool,
    ) {
        let epoch = *cap.time();
        if let Some(part) = &state {
            self.state_bytes.set(part.state_bytes as i64);
        }
        let mut report = Report {
            epoch: Epoch(epoch),
            operator: self.name.clone(),
            worker: WorkerIndex(self.ctx.worker()),
            parts: Vec::new(),
            sinks,
            is_final,
            error: None,
        };
        // A whole part whose upload failed is uploaded again under this epoch.
        let reupload = match self.chain.as_slice() {
            [last]
                if last.entry.packed.is_none()
                    && last.ticket.is_some_and(|t| self.failed.contains(&t)) =>
            {
                Some((last.bytes.clone(), None))
            }
            _ => None,
        };
        let upload = state
            .map(|p| (bytes::Bytes::from(p.bytes), p.bases))
            .or(reupload);
        if let (Some((bytes, bases)), Some(store)) = (upload, self.ctx.store()) {
            let path = store.layout().part(
                Epoch(epoch),
                &self.name,
                &weir_checkpoint::layout::part_name(
                    WorkerIndex(self.ctx.worker()),
                    self.ctx.generation(),
                ),
            );
            let entry = weir_checkpoint::PartEntry {
                operator: self.name.clone(),
                worker: WorkerIndex(self.ctx.worker()),
                key_group_start: key_groups.0,
                key_group_end: key_groups.1,
                path: path.to_string(),
                size: bytes.len() as u64,
                crc32: crc32(&bytes),
                packed: bases.clone(),
            };
            self.seq += 1;
            let seq = self.seq;
            let store = store.clone();
            let done = Arc::clone(&self.done);
            let activator = self.activator.clone();
            let timeout = Duration::from_millis(self.ctx.config().checkpoint_timeout_ms.max(1));
            let (name, worker) = (self.name.clone(), self.ctx.worker());
            let upload = bytes.clone();
            let upload_seconds = self.ctx.metrics().upload_seconds.clone();
            // New bases of some key groups but not all: a compaction.
            let compaction = bases
                .as_ref()
                .is_some_and(|b| !b.is_empty() && b.as_slice() != [key_groups]);
            // Counted by the clock until the upload ends, so that the barrier waits
            // while too many epochs are still uploading.
            let upload_running = self.ctx.clock().in_flight(epoch);
            self.ctx.runtime().spawn(async move {
                let _upload_running = upload_running;
                crate::failpoint::hit("upload");
                if compaction {
                    crate::failpoint::hit("compaction");
                }
                let started = std::time::Instant::now();
                let slow = crate::failpoint::delay("upload");
                let put = async {
                    if let Some(slow) = slow {
                        tokio::time::sleep(slow).await;
                    }
                    store
                        .put_part(path.clone(), &name, WorkerIndex(worker), key_groups, upload)
                        .await
                };
                let result = match tokio::time::timeout(timeout, put).await {
                    Ok(Ok(_)) => {
                        upload_seconds.observe(started.elapsed().as_secs_f64());
                        Ok(())
                    }
                    Ok(Err(e)) => Err(e.to_string()),
                    Err(_) => Err(format!(
                        "upload of `{path}` timed out after {timeout:?} (checkpoint-timeout-ms)"
                    )),
                };
                done.lock().expect("poisoned").insert(seq, result);
                let _ = activator.activate();
            });
            let link = LastPart {
                entry,
                // A packed object is never uploaded again: new bases replace it.
                bytes: if bases.is_some() {
                    bytes::Bytes::new()
                } else {
                    bytes
                },
                ticket: Some(seq),
            };
            // A packed object joins the chain (which may start with a whole part written
            // before packed objects existed); a whole part stands alone.
            if bases.is_some() {
                self.chain.push(link);
                let entries: Vec<&PartEntry> = self.chain.iter().map(|l| &l.entry).collect();
                let start = weir_checkpoint::manifest::chain_start(&entries, key_groups);
                self.chain.drain(..start);
            } else {
                self.chain = vec![link];
            }
        }
        report
            .parts
            .extend(self.chain.iter().map(|l| l.entry.clone()));
        let tickets = self.chain.iter().filter_map(|l| l.ticket).collect();
        self.queue.push_back(Pending {
            cap,
            report,
            tickets,
        });
    }

    /// Counts the snapshot of `epoch` as in flight until the returned value is dropped:
    /// an operator holds it while the snapshot is still being encoded off the barrier,
    /// and drops it once it has handed the object to [`Self::snapshot_part`], which
    /// counts the upload. While snapshots of `max-concurrent-checkpoints` epochs are in
    /// flight, the process's sources hold the next barrier.
    pub fn in_flight(&self, epoch: u64) -> crate::clock::InFlight {
        self.ctx.clock().in_flight(epoch)
    }

    /// Runs `encode`, what a snapshot does at a barrier (the copy and encoding of the
    /// operator's state, or sealing it), and counts its time in
    /// `weir_checkpoint_sync_seconds`: the part of a snapshot that holds up the
    /// operator's records. Each snapshot's time is also logged at debug level, with
    /// the operator and `epoch`, to find the barriers that took long.
    pub fn sync<T>(&self, epoch: u64, encode: impl FnOnce() -> T) -> T {
        let started = std::time::Instant::now();
        let out = encode();
        let seconds = started.elapsed().as_secs_f64();
        self.ctx.metrics().sync_seconds.observe(seconds);
        tracing::debug!(operator = %self.name, worker = self.ctx.worker(), epoch, seconds, "snapshot's synchronous part");
        out
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
            for ticket in &front.tickets {
                if self.failed.contains(ticket) {
                    front.report.error.get_or_insert_with(|| {
                        format!("it reuses a part whose upload failed (ticket {ticket})")
                    });
                    continue;
                }
                match self.done.lock().expect("poisoned").get(ticket) {
                    None => return,
                    Some(Ok(())) => {}
                    Some(Err(e)) => {
                        tracing::warn!(operator = %self.name, epoch = %front.report.epoch, error = %e, "snapshot upload failed");
                        self.failed.insert(*ticket);
                        front.report.error.get_or_insert_with(|| e.clone());
                    }
                }
            }
            let Pending { cap, report, .. } = self.queue.pop_front().expect("front exists");
            emit(&cap, report);
        }
        // Forget results nobody waits for anymore (the chain's stay for reuse).
        let waiting: BTreeSet<u64> = self
            .queue
            .iter()
            .flat_map(|p| p.tickets.iter().copied())
            .chain(self.chain.iter().filter_map(|l| l.ticket))
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

/// The restored parts that a [`Snapshotter`] of operator `name` on `worker` of `peers`
/// may report again while the state over `key_groups` is unchanged, and extend with
/// deltas (see [`Snapshotter::reuse_restored`]): every part of the operator that covers
/// any of `key_groups`, oldest first, if each lies in a checkpoint directory and they
/// form a chain:
/// - packed objects, written by any workers for any key groups: after a restore at
///   another number of workers, each worker takes over the objects that hold its groups'
///   bases and deltas, so that the key groups move between workers with their chains
///   instead of being written anew ([`weir_checkpoint::manifest::merge_chains`] lists an
///   object that two workers took over once);
/// - or one whole part, possibly followed by packed objects, all written by this worker
///   of as many workers for exactly `key_groups`: a whole part is never a delta over
///   anything, and one that covers other workers' groups is theirs to rewrite.
fn reusable_chain<'m>(
    manifest: &'m Manifest,
    job: &str,
    name: &str,
    worker: usize,
    peers: usize,
    key_groups: (u32, u32),
) -> Option<Vec<&'m PartEntry>> {
    let mut chain: Vec<&PartEntry> = manifest
        .parts
        .iter()
        .filter(|p| p.operator == name && overlaps(p, key_groups))
        .collect();
    let in_checkpoint = |entry: &PartEntry| {
        let mut segments = entry.path.split('/');
        segments.next() == Some(job)
            && segments
                .next()
                .and_then(weir_checkpoint::layout::parse_checkpoint_dir)
                .is_some()
    };
    let own = |entry: &PartEntry| {
        manifest.workers == peers
            && entry.worker == WorkerIndex(worker)
            && (entry.key_group_start, entry.key_group_end) == key_groups
    };
    let packed = chain.iter().all(|p| p.packed.is_some());
    let shaped = chain.iter().skip(1).all(|p| p.packed.is_some()) && chain.iter().all(|p| own(p));
    if chain.is_empty() || !chain.iter().all(|p| in_checkpoint(p)) || !(packed || shaped) {
        return None;
    }
    // The manifest lists them oldest first already; taken from several workers' chains,
    // oldest first is by checkpoint directory.
    chain.sort_by_key(|p| weir_checkpoint::layout::object_checkpoint_dir(&p.path));
    Some(chain)
}

#[cfg(test)]
mod tests {
    use weir_checkpoint::Generation;

    use super::*;
    use crate::restore::test_part as part;

    fn manifest(workers: usize, parts: Vec<PartEntry>) -> Manifest {
        Manifest {
            job: "job".into(),
            epoch: Epoch(7),
            generation: Generation(0),
            workers,
            key_groups: 128,
            created_ms: 0,
            barrier_ms: None,
            operators: vec!["op".into()],
            parts,
            sinks: vec![],
            link: None,
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
        let reused = reusable_chain(&m, "job", "op", 1, 2, (64, 128));
        assert_eq!(reused.map(|c| c[0].path.as_str()), Some(chk(1).as_str()));
        // Another number of workers, another range, another operator.
        assert!(reusable_chain(&m, "job", "op", 0, 4, (0, 32)).is_none());
        assert!(reusable_chain(&m, "job", "op", 0, 1, (0, 128)).is_none());
        assert!(reusable_chain(&m, "job", "other", 0, 2, (0, 64)).is_none());
        // Written by as many workers, but not with this worker's range.
        let skewed = manifest(
            2,
            vec![
                part("op", 0, (0, 60), &chk(0)),
                part("op", 1, (60, 128), &chk(1)),
            ],
        );
        assert!(reusable_chain(&skewed, "job", "op", 1, 2, (64, 128)).is_none());
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
        assert!(reusable_chain(&older, "job", "op", 0, 2, (0, 64)).is_some());
        // A savepoint can be deleted by hand: its parts are never reused.
        let savepoint = manifest(
            2,
            vec![part("op", 0, (0, 64), "job/savepoints/sp/op/w0-w0-g0")],
        );
        assert!(reusable_chain(&savepoint, "job", "op", 0, 2, (0, 64)).is_none());
        // A chain of packed objects is reused whole; two whole parts are no chain.
        let packed = |path: &str| PartEntry {
            packed: Some(vec![]),
            ..part("op", 0, (0, 64), path)
        };
        let chain = manifest(
            2,
            vec![
                packed("job/chk-00000000000000000003/op/w0-g0"),
                packed("job/chk-00000000000000000005/op/w0-g1"),
            ],
        );
        assert_eq!(
            reusable_chain(&chain, "job", "op", 0, 2, (0, 64)).map(|c| c.len()),
            Some(2)
        );
        let mut two = chain.clone();
        two.parts.iter_mut().for_each(|p| p.packed = None);
        assert!(reusable_chain(&two, "job", "op", 0, 2, (0, 64)).is_none());
        // A whole part written before packed objects existed may start a chain.
        let mut upgraded = chain.clone();
        upgraded.parts[0].packed = None;
        assert_eq!(
            reusable_chain(&upgraded, "job", "op", 0, 2, (0, 64)).map(|c| c.len()),
            Some(2)
        );
        // A whole part is reused only by the worker that wrote it for its range.
        let mut theirs = upgraded.clone();
        theirs.parts[0].worker = WorkerIndex(1);
        assert!(reusable_chain(&theirs, "job", "op", 0, 2, (0, 64)).is_none());
        assert!(reusable_chain(&upgraded, "job", "op", 0, 1, (0, 64)).is_none());
    }

    #[test]
    fn at_another_number_of_workers_each_takes_over_the_packed_objects_of_its_groups() {
        let packed = |w: usize, range: (u32, u32), epoch: u64| PartEntry {
            packed: Some(vec![range]),
            ..part("op", w, range, &format!("job/chk-{epoch:020}/op/w{w}-g0"))
        };
        // Two workers' chains, each a base then a delta; worker 1's base is the older.
        let m = manifest(
            2,
            vec![
                packed(0, (0, 64), 4),
                packed(0, (0, 64), 6),
                packed(1, (64, 128), 3),
                packed(1, (64, 128), 6),
            ],
        );
        let paths = |c: Option<Vec<&PartEntry>>| -> Vec<String> {
            c.expect("reusable")
                .iter()
                .map(|p| p.path.clone())
                .collect()
        };
        // At three workers, the middle one holds groups of both: it takes both chains,
        // oldest first.
        assert_eq!(
            paths(reusable_chain(&m, "job", "op", 1, 3, (43, 86))),
            [&m.parts[2], &m.parts[0], &m.parts[1], &m.parts[3]].map(|p| p.path.clone())
        );
        assert_eq!(
            paths(reusable_chain(&m, "job", "op", 0, 3, (0, 43))),
            [&m.parts[0], &m.parts[1]].map(|p| p.path.clone())
        );
        // At one worker, it takes everything.
        assert_eq!(
            reusable_chain(&m, "job", "op", 0, 1, (0, 128)).map(|c| c.len()),
            Some(4)
        );
        // Not from a savepoint, and not with a whole part among them.
        let mut saved = m.clone();
        saved.parts[3].path = "job/savepoints/sp/op/w1-e6-w1-g0".into();
        assert!(reusable_chain(&saved, "job", "op", 0, 1, (0, 128)).is_none());
        let mut whole = m;
        whole.parts[2].packed = None;
        assert!(reusable_chain(&whole, "job", "op", 0, 1, (0, 128)).is_none());
    }
}
