//! The engine under every keyed operator: state partitioned into key groups, records
//! applied in epoch order, a snapshot whenever the input frontier passes an epoch.
//!
//! ## Design
//!
//! Records are routed to the worker that owns their key's key group, computed from the
//! record itself in the exchange, so no operator before the engine has to pair records
//! with their keys. An event-time operator's watermark reports come on a second input,
//! each to the worker it names; the operator's frontier is the least of both inputs'.
//! Records and reports of the oldest open epoch (the frontier is exactly that epoch) are
//! applied at once; those of later epochs wait in a buffer until every earlier epoch has
//! closed, so that state always moves through epochs in order. When the frontier passes
//! epochs, their buffered records and reports are applied epoch by epoch, each epoch
//! that saw records is ended ([`Store::end_epoch`]), the store is told how far the
//! input has closed ([`Store::close`]: windows fire, expired state goes), and one
//! snapshot (as of the newest closed epoch) is taken: encoded synchronously, uploaded in
//! the background. If nothing changed since the previous snapshot, the previous part is
//! reported again and nothing is uploaded.
//!
//! A store emits on two outputs ([`Emitted`]): its records, and on the side what a job
//! reads apart from them (late or rejected records, the assigner's watermark reports).
//! Records never pass through a split after the engine; only the assigner's side output,
//! rejected records and reports, both rare, is split in two after it.
//!
//! Invariant: the snapshot for epoch `e` holds exactly the effect of the records of
//! epochs `<= e`, and every output a store emitted while closing epochs `<= e` carries a
//! timestamp `<= e`; so after a restore from `e`, nothing emitted at `<= e` is emitted
//! again and nothing emitted later is lost.

use std::collections::{BTreeMap, BTreeSet};
use std::hash::Hash;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use timely::container::CapacityContainerBuilder;
use timely::dataflow::channels::pact::Exchange;
use timely::dataflow::operators::generic::builder_rc::OperatorBuilder;
use timely::dataflow::operators::generic::OutputBuilder;
use timely::dataflow::Stream;
use weir_runtime::checkpoint::Report;
use weir_runtime::keygroup;
use weir_runtime::{EpochTracker, Job, JobContext, KeyedState, Part, Result, Sealing, Snapshotter};

/// A watermark report: sender `from` has reached event time `wm`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mark {
    /// The reporting instance (a worker of an event-time assigner).
    pub from: usize,
    /// Its watermark.
    pub wm: u64,
    /// It has only idle splits and is left out of the job's watermark.
    pub idle: bool,
}

/// What a store emits while it applies records or closes epochs: records for the
/// operator's output, and others (late or rejected records, watermark reports) for its
/// side output, so that no operator after it has to sort records from the rest.
pub(crate) struct Emitted<O, L> {
    /// For the output.
    pub(crate) main: Vec<O>,
    /// For the side output.
    pub(crate) side: Vec<L>,
}

impl<O, L> Emitted<O, L> {
    /// Emits `o` on the output.
    pub(crate) fn push(&mut self, o: O) {
        self.main.push(o);
    }

    /// Emits `l` on the side output.
    pub(crate) fn side(&mut self, l: L) {
        self.side.push(l);
    }
}

/// What a store of type `S` emits.
pub(crate) type Out<S> = Emitted<<S as Store>::Out, <S as Store>::Side>;

/// The state of one keyed operator on one worker.
pub(crate) trait Store: 'static {
    /// What arrives: a record, routed by the key group [`keyed`] is given for it.
    type Record: timely::ExchangeData;
    /// What the operator emits.
    type Out: timely::ExchangeData;
    /// What the operator emits on its side output.
    type Side: timely::ExchangeData;

    /// Applies one record of `epoch`.
    fn apply(&mut self, epoch: u64, record: Self::Record, out: &mut Out<Self>);
    /// Applies one watermark report of `epoch` from the operator's second input. Reports
    /// change nothing that is checkpointed: what they move is stored by
    /// [`Store::close`], which says whether the state changed.
    fn mark(&mut self, _epoch: u64, _mark: Mark) {}
    /// Ends `epoch`; called in epoch order for every epoch that saw records, and possibly
    /// for one that saw only watermark reports (a store then finds nothing to end).
    /// Returns whether it has more to emit: it is then called again for the same epoch
    /// once `out` was sent on, so that a store with much to emit at an epoch's end does
    /// it in bounded pieces.
    fn end_epoch(&mut self, _epoch: u64, _out: &mut Out<Self>) -> bool {
        false
    }
    /// The input has closed every epoch `<= epoch` (`is_final`: the input has ended).
    /// Returns whether the state changed.
    fn close(&mut self, _epoch: u64, _is_final: bool, _out: &mut Out<Self>) -> bool {
        false
    }
    /// Encodes the state as a checkpoint part at a barrier: a whole part, or a packed
    /// object of a chain (see [`weir_runtime::state`]), `None` if there is nothing to
    /// write; or seals it, to be encoded off the barrier and returned by
    /// [`Store::take_sealed`]. `full` asks a chain for a base of every key group (an
    /// upload of the chain failed).
    fn encode(&mut self, name: &str, key_groups: u32, full: bool) -> Result<Sealing>;
    /// The oldest sealed snapshot, once it is encoded.
    fn take_sealed(&mut self) -> Option<Result<Part>> {
        None
    }
    /// Encodes every sealed snapshot now.
    fn finish_sealed(&mut self) {}
    /// The snapshotter could not take over the restored parts (a savepoint, a whole part
    /// of another worker): a chain's next snapshot must write the base of every key
    /// group.
    fn restored_parts_dropped(&mut self) {}
    /// Does a step of the work a snapshot left to do off the barrier (the deltas of
    /// sealed snapshots, new bases of key groups); returns whether more is left, and the
    /// operator then runs again.
    fn background(&mut self) -> bool {
        false
    }
    /// How long the work left off the barrier waits before [`Store::background`] can
    /// go on with it (only under a test's slow-encoder failpoint, `encode=delay:MS`):
    /// the operator runs again after that wait instead of at once.
    fn held_for(&mut self) -> Option<std::time::Duration> {
        None
    }
    /// Output to emit once, before anything else, at the given epoch (which may be
    /// earlier than this run's first epoch): a replay of restored state.
    fn replay(&mut self) -> Option<(u64, Vec<Self::Out>)> {
        None
    }
}

/// A snapshot taken at a barrier, until its object is encoded and handed to the
/// snapshotter.
struct Taken {
    cap: timely::dataflow::operators::Capability<u64>,
    /// The input ended.
    is_final: bool,
    /// It writes a base of every key group (after a failed upload).
    full: bool,
    /// The object, `None` if nothing changed; `None` itself while the snapshot is sealed.
    part: Option<Option<Part>>,
    /// While the snapshot is sealed: counts it as in flight, so that the sources hold
    /// the next barrier while too many snapshots are still encoding.
    _in_flight: Option<weir_runtime::clock::InFlight>,
}

/// Records and watermark reports of one epoch, waiting for earlier epochs to close. The
/// records are kept in the batches they arrived in: appending them to one vector would
/// copy every record again each time it grows.
struct Waiting<R> {
    records: Vec<Vec<R>>,
    marks: Vec<Mark>,
}

impl<R> Default for Waiting<R> {
    fn default() -> Self {
        Waiting {
            records: Vec::new(),
            marks: Vec::new(),
        }
    }
}

/// A keyed operator's output and side output.
pub(crate) type Outputs<'s, O, L> = (Stream<'s, u64, Vec<O>>, Stream<'s, u64, Vec<L>>);

/// Watermark reports for every worker: `(worker, report)`, each routed to its worker.
pub(crate) type Marks<'s> = crate::Records<'s, (usize, Mark)>;

/// Builds a keyed operator around `store` (already restored by the caller): `stream`'s
/// records go to the owner of the key group `group(record, key_groups)` names, and
/// `marks` (if any) to the worker each names, on a second input. Both inputs close epochs
/// together: the operator's frontier is the least of theirs.
pub(crate) fn keyed<'s, S: Store>(
    stream: crate::Records<'s, S::Record>,
    marks: Option<Marks<'s>>,
    group: impl Fn(&S::Record, u32) -> u32 + 'static,
    job: &Job<'s>,
    name: &str,
    mut store: S,
) -> Result<Outputs<'s, S::Out, S::Side>> {
    job.claim_name(name)?;
    let ctx = job.ctx().clone();
    let (n, peers) = (ctx.key_groups(), ctx.peers());
    let range = ctx.key_group_range();
    let checkpointing = ctx.checkpointing();
    let first_epoch = ctx.first_epoch();

    let mut builder = OperatorBuilder::new(format!("keyed:{name}"), job.scope());
    let address = builder.operator_info().address;
    let mut input = builder.new_input(
        stream,
        Exchange::new(move |r: &S::Record| keygroup::owner(group(r, n), n, peers) as u64),
    );
    let mut marks_input =
        marks.map(|m| builder.new_input(m, Exchange::new(|m: &(usize, Mark)| m.0 as u64)));
    let (data_out, data) = builder.new_output::<Vec<S::Out>>();
    let (side_out, side) = builder.new_output::<Vec<S::Side>>();
    let (report_out, reports) = builder.new_output::<Vec<Report>>();
    let mut data_out = OutputBuilder::<_, CapacityContainerBuilder<Vec<S::Out>>>::from(data_out);
    let mut side_out = OutputBuilder::<_, CapacityContainerBuilder<Vec<S::Side>>>::from(side_out);
    let mut report_out =
        OutputBuilder::<_, CapacityContainerBuilder<Vec<Report>>>::from(report_out);
    let mut snapshotter = Snapshotter::new(&ctx, name, &address, job.scope().worker());
    let activator = job.scope().activator_for(address.clone());
    // The store holds exactly the restored state: while it is unchanged, snapshots report
    // the restored part again instead of uploading the same state anew.
    let restored_unchanged = checkpointing && snapshotter.reuse_restored(range);
    if !restored_unchanged {
        store.restored_parts_dropped();
    }
    let (records_in, records_out) = ctx.metrics().operator_records(ctx.worker(), name);
    let name = name.to_string();

    builder.build(move |mut caps| {
        let report_cap = caps.pop().expect("report output");
        // The data capabilities (output, side output) follow the input frontier, so that
        // inputs from plain timely sources (at epoch 0) are accepted too.
        let side_cap = caps.pop().expect("side output");
        let mut data_cap = caps.pop().map(|c| (c, side_cap));
        let mut tracker = EpochTracker::new(report_cap, first_epoch);
        let mut buffered: BTreeMap<u64, Waiting<S::Record>> = BTreeMap::new();
        // Epochs that saw records and have not ended yet.
        let mut seen: BTreeSet<u64> = BTreeSet::new();
        let mut changed = !restored_unchanged;
        let mut out: Out<S> = Emitted {
            main: Vec::new(),
            side: Vec::new(),
        };
        let mut replayed = false;
        // Snapshots taken at barriers, in epoch order, until their objects are encoded
        // and handed to the snapshotter.
        let mut snapshots: std::collections::VecDeque<Taken> = Default::default();

        move |frontiers| {
            if ctx.failed() {
                return;
            }
            // The oldest epoch still open in any input; `None` once all have ended.
            let oldest = frontiers
                .iter()
                .filter_map(|f| f.frontier().iter().min().copied())
                .min();
            let open = |e: &u64| oldest.is_some_and(|o| o <= *e);
            let mut session_out = data_out.activate();
            let mut session_side = side_out.activate();
            // Sends what the store emitted at `epoch` on.
            let mut send = |out: &mut Out<S>, epoch: u64| {
                if out.main.is_empty() && out.side.is_empty() {
                    return;
                }
                let (main, side) = data_cap
                    .as_ref()
                    .expect("an epoch that emits is still open");
                if !out.main.is_empty() {
                    records_out.inc_by(out.main.len() as u64);
                    session_out
                        .session(&main.delayed(&epoch))
                        .give_iterator(out.main.drain(..));
                }
                if !out.side.is_empty() {
                    records_out.inc_by(out.side.len() as u64);
                    session_side
                        .session(&side.delayed(&epoch))
                        .give_iterator(out.side.drain(..));
                }
            };
            if !std::mem::replace(&mut replayed, true) {
                if let (Some((epoch, replay)), Some(_)) = (store.replay(), data_cap.as_ref()) {
                    // The data capability is still at its initial time, below any epoch.
                    out.main = replay;
                    send(&mut out, epoch);
                }
            }
            // Close every epoch the frontier has passed, in order, before any record of a
            // later epoch is applied.
            let closing: BTreeSet<u64> = buffered
                .keys()
                .chain(seen.iter())
                .copied()
                .filter(|e| !open(e))
                .collect();
            for epoch in closing {
                let waiting = buffered.remove(&epoch).unwrap_or_default();
                for r in waiting.records.into_iter().flatten() {
                    changed = true;
                    store.apply(epoch, r, &mut out);
                }
                for m in waiting.marks {
                    store.mark(epoch, m);
                }
                seen.remove(&epoch);
                loop {
                    let more = store.end_epoch(epoch, &mut out);
                    send(&mut out, epoch);
                    if !more {
                        break;
                    }
                }
            }
            // The snapshot covers exactly the closed epochs: take it before records of
            // the oldest open epoch are applied below.
            if let Some(due) = tracker.advance_to(oldest) {
                if data_cap.is_some() {
                    if store.close(due.epoch, due.is_final, &mut out) {
                        changed = true;
                    }
                    send(&mut out, due.epoch);
                }
                if checkpointing {
                    // After a failed upload, one base of everything; not again while
                    // that one waits behind snapshots still encoding.
                    let full = snapshotter.needs_base() && !snapshots.iter().any(|t| t.full);
                    let sealed = if std::mem::take(&mut changed) || full {
                        match snapshotter.sync(due.epoch, || store.encode(&name, n, full)) {
                            Ok(sealed) => sealed,
                            Err(e) => return ctx.fail(&format!("snapshot of `{name}`"), e),
                        }
                    } else {
                        Sealing::Now(None)
                    };
                    let (part, in_flight) = match sealed {
                        Sealing::Now(part) => (Some(part), None),
                        Sealing::Later => (None, Some(snapshotter.in_flight(due.epoch))),
                    };
                    snapshots.push_back(Taken {
                        cap: due.cap,
                        is_final: due.is_final,
                        full,
                        part,
                        _in_flight: in_flight,
                    });
                    if due.is_final {
                        store.finish_sealed();
                    }
                }
            }
            // Records that arrived before their epoch became the oldest open one came
            // before everything now in the input: apply them first, to keep arrival order.
            if let Some(epoch) = oldest {
                if let Some(waiting) = buffered.remove(&epoch) {
                    for m in waiting.marks {
                        store.mark(epoch, m);
                    }
                    if !waiting.records.is_empty() {
                        changed = true;
                        seen.insert(epoch);
                        for r in waiting.records.into_iter().flatten() {
                            store.apply(epoch, r, &mut out);
                        }
                    }
                    send(&mut out, epoch);
                }
            }
            if let Some(marks) = marks_input.as_mut() {
                marks.for_each(|cap, batch| {
                    let Some(&epoch) = cap.least() else { return };
                    tracker.saw(epoch);
                    if Some(epoch) == oldest {
                        for (_, m) in batch.drain(..) {
                            store.mark(epoch, m);
                        }
                    } else {
                        let waiting = buffered.entry(epoch).or_default();
                        waiting.marks.extend(batch.drain(..).map(|(_, m)| m));
                    }
                });
            }
            input.for_each(|cap, batch| {
                let Some(&epoch) = cap.least() else { return };
                records_in.inc_by(batch.len() as u64);
                tracker.saw(epoch);
                if Some(epoch) == oldest {
                    changed = true;
                    seen.insert(epoch);
                    for r in batch.drain(..) {
                        store.apply(epoch, r, &mut out);
                    }
                    send(&mut out, epoch);
                } else {
                    let batch = std::mem::take(batch);
                    buffered.entry(epoch).or_default().records.push(batch);
                }
            });
            drop((session_out, session_side));
            match (oldest, data_cap.as_mut()) {
                (Some(f), Some((c, s))) if *c.time() < f => {
                    c.downgrade(&f);
                    s.downgrade(&f);
                }
                (None, _) => data_cap = None,
                _ => {}
            }
            let more = checkpointing && store.background();
            // Snapshots go to the snapshotter in epoch order, each once it is encoded.
            while let Some(front) = snapshots.front_mut() {
                if front.part.is_none() {
                    match store.take_sealed() {
                        None => break,
                        Some(Ok(p)) => front.part = Some(Some(p)),
                        Some(Err(e)) => return ctx.fail(&format!("snapshot of `{name}`"), e),
                    }
                }
                let t = snapshots.pop_front().expect("the front");
                let part = t.part.expect("encoded");
                snapshotter.snapshot_part(t.cap, range, part, Vec::new(), t.is_final);
            }
            let mut reports = report_out.activate();
            snapshotter.poll(|cap, report| reports.session(cap).give(report));
            drop(reports);
            if more {
                match store.held_for() {
                    Some(wait) => activator.activate_after(wait),
                    None => activator.activate(),
                }
            }
        }
    });
    if checkpointing {
        job.register_reports(reports);
    }
    Ok((data, side))
}

/// How long per-key state lives after its key was last updated.
///
/// Expiry is checked when epochs close; an expired key's state is dropped and the key
/// starts again from its default state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ttl {
    /// State never expires.
    Never,
    /// State expires this many milliseconds (wall clock) after its key's last update.
    /// Which records see expired state then depends on timing; the restored state keeps
    /// its update times, so expiry resumes where it was.
    ProcessingTime(u64),
    /// State expires once this many epochs have closed without an update of its key:
    /// deterministic, since epochs are what checkpoints are cut at.
    Epochs(u64),
}

/// A key's state and when it was last updated. Its encoding and decoding are written
/// out only to write and read the state through [`weir_runtime::entries::FastRef`] and
/// [`weir_runtime::entries::Fast`] (a `Vec<u8>` state in one copy); they write and read
/// what a derived encoding would, the three fields in order.
pub(crate) struct Entry<S> {
    pub(crate) state: S,
    /// Wall-clock milliseconds of the last update.
    pub(crate) updated_ms: u64,
    /// Epoch of the last update.
    pub(crate) updated_epoch: u64,
}

impl<S: Serialize + 'static> Serialize for Entry<S> {
    fn serialize<Z: serde::Serializer>(&self, s: Z) -> Result<Z::Ok, Z::Error> {
        use serde::ser::SerializeStruct;
        let mut fields = s.serialize_struct("Entry", 3)?;
        fields.serialize_field("state", &weir_runtime::entries::FastRef(&self.state))?;
        fields.serialize_field("updated_ms", &self.updated_ms)?;
        fields.serialize_field("updated_epoch", &self.updated_epoch)?;
        fields.end()
    }
}

impl<'de, S: DeserializeOwned + 'static> serde::Deserialize<'de> for Entry<S> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::{Error, SeqAccess, Visitor};
        struct Fields<S>(std::marker::PhantomData<S>);
        impl<'de, S: DeserializeOwned + 'static> Visitor<'de> for Fields<S> {
            type Value = Entry<S>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a key's state and when it was last updated")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Entry<S>, A::Error> {
                let missing = |i| A::Error::invalid_length(i, &"3 fields");
                let weir_runtime::entries::Fast(state) =
                    seq.next_element()?.ok_or_else(|| missing(0))?;
                let updated_ms = seq.next_element()?.ok_or_else(|| missing(1))?;
                let updated_epoch = seq.next_element()?.ok_or_else(|| missing(2))?;
                Ok(Entry {
                    state,
                    updated_ms,
                    updated_epoch,
                })
            }
        }
        const FIELDS: &[&str] = &["state", "updated_ms", "updated_epoch"];
        d.deserialize_struct("Entry", FIELDS, Fields(std::marker::PhantomData))
    }
}

/// Milliseconds since the Unix epoch.
pub(crate) fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Keys whose output [`PerKey`] emits in one piece when an epoch ends: the output of an
/// epoch that changed many keys goes on in pieces of whole key groups, each piece closed
/// once it holds at least this many keys, instead of being held in memory whole.
pub(crate) const END_EPOCH_CHUNK: usize = 4096;

/// The plain per-key store: one state per key, `on_record` per record, `on_epoch` per
/// key changed in an epoch, optional expiry; checkpointed incrementally through
/// [`KeyedState`].
///
/// The keys an epoch changed are found when the epoch ends, as the entries last updated
/// in that epoch, so the operator keeps no list of changed keys of its own. It looks
/// among the keys the state keeps for its next snapshot ([`KeyedState::changed_keys`]),
/// or, in a state that keeps none, among all its entries: with checkpointing off there is
/// one epoch, ended once when the input ends, and with incremental checkpoints off every
/// snapshot encodes the whole state anyway. When several epochs end before one snapshot
/// (an operator that fell behind), ending each looks through the keys of all of them
/// that came before it.
pub(crate) struct PerKey<K, V, S, O, R, E> {
    state: KeyedState<K, Entry<S>, crate::FastHash>,
    /// The epoch being ended and the index of the next group to look through.
    ending: Option<(u64, usize)>,
    on_record: R,
    on_epoch: E,
    ttl: Ttl,
    _marker: std::marker::PhantomData<fn(V) -> O>,
}

impl<K, V, S, O, R, E> PerKey<K, V, S, O, R, E>
where
    K: timely::ExchangeData + Hash + Eq + Clone,
    S: Default + Serialize + DeserializeOwned + 'static,
{
    /// A store holding what `name` had in the restored checkpoint.
    pub(crate) fn restore(
        ctx: &JobContext,
        name: &str,
        ttl: Ttl,
        on_record: R,
        on_epoch: E,
    ) -> Result<Self> {
        Ok(PerKey {
            state: KeyedState::restore(ctx, name)?,
            ending: None,
            on_record,
            on_epoch,
            ttl,
            _marker: std::marker::PhantomData,
        })
    }
}

impl<K, V, S, O, R, E> Store for PerKey<K, V, S, O, R, E>
where
    K: timely::ExchangeData + Hash + Eq + Clone,
    V: timely::ExchangeData,
    S: Default + Serialize + DeserializeOwned + 'static,
    O: timely::ExchangeData,
    R: FnMut(&K, &mut S, V, &mut Vec<O>) + 'static,
    E: FnMut(&K, &S, u64, &mut Vec<O>) + 'static,
{
    type Record = (K, V);
    type Out = O;
    type Side = ();

    fn apply(&mut self, epoch: u64, (k, v): (K, V), out: &mut Out<Self>) {
        let group = self.state.group_of(&k);
        let map = self.state.group_mut(group, &k);
        // Look up before inserting, so that a known key is not cloned.
        let entry = match map.get_mut(&k) {
            Some(entry) => entry,
            None => map.entry(k.clone()).or_insert_with(|| Entry {
                state: S::default(),
                updated_ms: 0,
                updated_epoch: u64::MAX,
            }),
        };
        (self.on_record)(&k, &mut entry.state, v, &mut out.main);
        if self.ttl != Ttl::Never {
            entry.updated_ms = now_ms();
        }
        if entry.updated_epoch != epoch {
            entry.updated_epoch = epoch;
            // The key goes into the next snapshot's delta.
            self.state.changed(group, k);
        }
    }

    fn end_epoch(&mut self, epoch: u64, out: &mut Out<Self>) -> bool {
        let PerKey {
            state,
            ending,
            on_epoch,
            ..
        } = self;
        if ending.map(|(e, _)| e) != Some(epoch) {
            *ending = Some((epoch, 0));
        }
        let (_, next) = ending.as_mut().expect("set above");
        let mut emitted = 0;
        while *next < state.group_count() && emitted < END_EPOCH_CHUNK {
            let map = state.group(*next);
            let mut report = |k: &K, entry: &Entry<S>| {
                if entry.updated_epoch == epoch {
                    on_epoch(k, &entry.state, epoch, &mut out.main);
                    emitted += 1;
                }
            };
            if state.tracks_changes() {
                // Keys changed in an earlier epoch since the last snapshot, and removed
                // ones, are listed too.
                for k in state.changed_keys(*next) {
                    if let Some(entry) = map.get(k) {
                        report(k, entry);
                    }
                }
            } else {
                for (k, entry) in map {
                    report(k, entry);
                }
            }
            *next += 1;
        }
        let more = *next < state.group_count();
        if !more {
            *ending = None;
        }
        more
    }

    fn close(&mut self, epoch: u64, _is_final: bool, _out: &mut Out<Self>) -> bool {
        let removed = match self.ttl {
            Ttl::Never => 0,
            Ttl::ProcessingTime(ms) => {
                let now = now_ms();
                self.state
                    .retain(|_, e| e.updated_ms.saturating_add(ms) > now)
            }
            Ttl::Epochs(n) => self
                .state
                .retain(|_, e| e.updated_epoch.saturating_add(n) > epoch),
        };
        removed > 0
    }

    fn encode(&mut self, _name: &str, _key_groups: u32, full: bool) -> Result<Sealing> {
        self.state.seal(full)
    }

    fn take_sealed(&mut self) -> Option<Result<Part>> {
        self.state.take_sealed()
    }

    fn finish_sealed(&mut self) {
        self.state.finish_sealed()
    }

    fn restored_parts_dropped(&mut self) {
        self.state.restored_chain_dropped();
    }

    fn background(&mut self) -> bool {
        self.state.background()
    }

    fn held_for(&mut self) -> Option<std::time::Duration> {
        self.state.held_for()
    }
}

/// The key group of a record `(key, value)`.
pub(crate) fn by_key<K: Hash, V>((k, _): &(K, V), key_groups: u32) -> u32 {
    keygroup::key_group(k, key_groups)
}

/// Builds a plain per-key operator (see [`PerKey`]).
pub(crate) fn per_key<'s, K, V, S, O, R, E>(
    stream: Stream<'s, u64, Vec<(K, V)>>,
    job: &Job<'s>,
    name: &str,
    ttl: Ttl,
    on_record: R,
    on_epoch: E,
) -> Result<Stream<'s, u64, Vec<O>>>
where
    K: timely::ExchangeData + Hash + Eq + Clone,
    V: timely::ExchangeData,
    S: Default + Serialize + DeserializeOwned + 'static,
    O: timely::ExchangeData,
    R: FnMut(&K, &mut S, V, &mut Vec<O>) + 'static,
    E: FnMut(&K, &S, u64, &mut Vec<O>) + 'static,
{
    let store = PerKey::restore(job.ctx(), name, ttl, on_record, on_epoch)?;
    Ok(keyed(stream, None, by_key, job, name, store)?.0)
}

#[cfg(test)]
mod tests {
    use super::{Emitted, Entry, PerKey, Store, Ttl};
    use weir_runtime::KeyedState;

    /// A running sum per key that reports `(key, sum, epoch)` for every key an epoch
    /// changed, over 8 of 8 key groups, its state keeping the changed keys (`tracked`, as
    /// with incremental checkpoints) or not (then every entry is looked through).
    #[allow(clippy::type_complexity)]
    fn sums(
        tracked: bool,
    ) -> PerKey<
        u64,
        u64,
        u64,
        (u64, u64, u64),
        impl FnMut(&u64, &mut u64, u64, &mut Vec<(u64, u64, u64)>),
        impl FnMut(&u64, &u64, u64, &mut Vec<(u64, u64, u64)>),
    > {
        PerKey {
            state: KeyedState::empty("sums", 8, (0, 8), tracked, 1.0),
            ending: None,
            on_record: |_k: &u64, sum: &mut u64, v: u64, _out: &mut Vec<(u64, u64, u64)>| *sum += v,
            on_epoch: |k: &u64, sum: &u64, epoch: u64, out: &mut Vec<(u64, u64, u64)>| {
                out.push((*k, *sum, epoch))
            },
            ttl: Ttl::Never,
            _marker: std::marker::PhantomData,
        }
    }

    /// Ends `epoch` in as many pieces as it takes; returns its reports, sorted.
    fn end<S: Store<Out = (u64, u64, u64), Side = ()>>(
        store: &mut S,
        epoch: u64,
    ) -> Vec<(u64, u64, u64)> {
        let mut out = Emitted {
            main: Vec::new(),
            side: Vec::new(),
        };
        while store.end_epoch(epoch, &mut out) {}
        out.main.sort();
        out.main
    }

    #[test]
    fn each_epoch_reports_exactly_the_keys_it_changed_whether_or_not_the_state_lists_them() {
        for tracked in [true, false] {
            let mut store = sums(tracked);
            let mut out = Emitted {
                main: Vec::new(),
                side: Vec::new(),
            };
            // Epochs 1 and 2 close before one snapshot, as when the frontier passes both
            // at once: key 1 changes in both, key 2 in epoch 1 only, key 3 in epoch 2.
            for (k, v) in [(1, 1), (2, 10), (1, 1)] {
                store.apply(1, (k, v), &mut out);
            }
            assert_eq!(end(&mut store, 1), vec![(1, 2, 1), (2, 10, 1)], "{tracked}");
            for (k, v) in [(3, 100), (1, 1)] {
                store.apply(2, (k, v), &mut out);
            }
            assert_eq!(
                end(&mut store, 2),
                vec![(1, 3, 2), (3, 100, 2)],
                "{tracked}"
            );
            // The snapshot's delta holds every key changed since the last one.
            if tracked {
                let mut changed: Vec<u64> = (0..store.state.group_count())
                    .flat_map(|g| store.state.changed_keys(g).copied().collect::<Vec<_>>())
                    .collect();
                changed.sort();
                assert_eq!(changed, vec![1, 2, 3]);
            }
            store.encode("sums", 8, false).unwrap();
            store.finish_sealed();
            // After it, an epoch reports only its own keys, and a removed key is listed
            // among the changed ones but not reported.
            store.state.remove(&2);
            store.apply(3, (3, 1), &mut out);
            if tracked {
                assert!((0..8).any(|g| store.state.changed_keys(g).any(|k| *k == 2)));
            }
            assert_eq!(end(&mut store, 3), vec![(3, 101, 3)], "{tracked}");
            // An epoch that changed nothing reports nothing.
            assert_eq!(end(&mut store, 4), vec![], "{tracked}");
            assert!(out.main.is_empty() && store.ending.is_none());
        }
    }

    #[test]
    fn an_entry_reads_what_its_encoding_wrote_with_byte_strings_in_one_copy() {
        fn entry<S>(state: S) -> Entry<S> {
            Entry {
                state,
                updated_ms: 1_700_000_000_000,
                updated_epoch: 42,
            }
        }
        let bytes = bincode::serialize(&entry(vec![7u8; 300])).unwrap();
        // The bytes a derived encoding writes: the fields in order.
        assert_eq!(
            bytes,
            bincode::serialize(&(vec![7u8; 300], 1_700_000_000_000u64, 42u64)).unwrap()
        );
        let back: Entry<Vec<u8>> = bincode::deserialize(&bytes).unwrap();
        assert_eq!(
            (back.state, back.updated_ms, back.updated_epoch),
            (vec![7u8; 300], 1_700_000_000_000, 42)
        );
        // Any other state as serde reads it.
        let bytes = bincode::serialize(&entry(("x".to_string(), vec![1u8, 2]))).unwrap();
        let back: Entry<(String, Vec<u8>)> = bincode::deserialize(&bytes).unwrap();
        assert_eq!(back.state, ("x".to_string(), vec![1, 2]));
        // Cut short: an error, not a default.
        assert!(
            bincode::deserialize::<Entry<(String, Vec<u8>)>>(&bytes[..bytes.len() - 1]).is_err()
        );
    }
}
