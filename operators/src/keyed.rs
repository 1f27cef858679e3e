//! The engine under every keyed operator: per-key state in key groups, applied in epoch
//! order, snapshotted when the frontier passes an epoch.
//!
//! ## Design
//!
//! Records are routed to the worker that owns their key's key group. Records of the
//! oldest open epoch (the input frontier is exactly that epoch) are applied at once;
//! records of later epochs wait in a buffer until every earlier epoch has closed, so
//! that state always moves through epochs in order. When the frontier passes epochs,
//! their buffered records are applied epoch by epoch, each closed epoch's changed keys
//! are handed to `on_epoch`, and one snapshot (as of the newest closed epoch) is taken:
//! encoded synchronously, uploaded in the background. If no record arrived since the
//! previous snapshot, the previous part is reported again and nothing is uploaded.
//!
//! Invariant: the snapshot for epoch `e` holds exactly the effect of the records of
//! epochs `<= e`.

use std::collections::{BTreeMap, HashMap};
use std::hash::Hash;

use serde::de::DeserializeOwned;
use serde::Serialize;
use timely::container::CapacityContainerBuilder;
use timely::dataflow::channels::pact::Exchange;
use timely::dataflow::operators::generic::builder_rc::OperatorBuilder;
use timely::dataflow::operators::generic::OutputBuilder;
use timely::dataflow::Stream;
use weir_runtime::checkpoint::Report;
use weir_runtime::keygroup;
use weir_runtime::{encode_keyed, EpochTracker, Job, Result, Snapshotter};

/// Builds a keyed operator.
///
/// `on_record(key, state, value, out)` applies one record; `on_epoch(key, state, epoch, out)`
/// is called once per key changed in an epoch, when that epoch closes.
pub(crate) fn keyed<'s, K, V, S, O, R, E>(
    stream: Stream<'s, u64, Vec<(K, V)>>,
    job: &mut Job<'s>,
    name: &str,
    mut on_record: R,
    mut on_epoch: E,
) -> Result<Stream<'s, u64, Vec<O>>>
where
    K: timely::ExchangeData + Hash + Eq + Clone,
    V: timely::ExchangeData,
    S: Default + Serialize + DeserializeOwned + 'static,
    O: timely::ExchangeData,
    R: FnMut(&K, &mut S, V, &mut Vec<O>) + 'static,
    E: FnMut(&K, &S, u64, &mut Vec<O>) + 'static,
{
    job.claim_name(name)?;
    let ctx = job.ctx().clone();
    let restored: Vec<(K, S)> = ctx.restore_keyed(name)?;
    let (n, peers) = (ctx.key_groups(), ctx.peers());
    let range = ctx.key_group_range();
    let checkpointing = ctx.checkpointing();
    let first_epoch = ctx.first_epoch();

    let mut builder = OperatorBuilder::new(format!("keyed:{name}"), job.scope());
    let address = builder.operator_info().address;
    let mut input = builder.new_input(
        stream,
        Exchange::new(move |(k, _): &(K, V)| {
            keygroup::owner(keygroup::key_group(k, n), n, peers) as u64
        }),
    );
    let (data_out, data) = builder.new_output::<Vec<O>>();
    let (report_out, reports) = builder.new_output::<Vec<Report>>();
    let mut data_out = OutputBuilder::<_, CapacityContainerBuilder<Vec<O>>>::from(data_out);
    let mut report_out =
        OutputBuilder::<_, CapacityContainerBuilder<Vec<Report>>>::from(report_out);
    let mut snapshotter = Snapshotter::new(&ctx, name, &address, job.scope().worker());
    let name = name.to_string();

    builder.build(move |mut caps| {
        let report_cap = caps.pop().expect("report output");
        // The data capability follows the input frontier, so that inputs from plain timely
        // sources (at epoch 0) are accepted too.
        let mut data_cap = caps.pop();
        let mut tracker = EpochTracker::new(report_cap, first_epoch);
        // State: value and the last epoch in which the key changed (`u64::MAX`: none yet).
        let mut state: HashMap<K, (S, u64)> = restored
            .into_iter()
            .map(|(k, s)| (k, (s, u64::MAX)))
            .collect();
        let mut buffered: BTreeMap<u64, Vec<(K, V)>> = BTreeMap::new();
        let mut dirty: BTreeMap<u64, Vec<K>> = BTreeMap::new();
        let mut changed = true;
        let mut out: Vec<O> = Vec::new();

        let mut apply = move |state: &mut HashMap<K, (S, u64)>,
                              dirty: &mut BTreeMap<u64, Vec<K>>,
                              epoch: u64,
                              k: K,
                              v: V,
                              out: &mut Vec<O>| {
            // Look up before inserting, so that a known key is not cloned.
            let entry = match state.get_mut(&k) {
                Some(entry) => entry,
                None => state
                    .entry(k.clone())
                    .or_insert_with(|| (S::default(), u64::MAX)),
            };
            on_record(&k, &mut entry.0, v, out);
            if entry.1 != epoch {
                entry.1 = epoch;
                dirty.entry(epoch).or_default().push(k);
            }
        };

        move |frontiers| {
            let frontier = &frontiers[0];
            let oldest = frontier.frontier().iter().min().copied();
            let mut session_out = data_out.activate();
            // Close every epoch the frontier has passed, in order, before any record of a
            // later epoch is applied.
            let mut closing: Vec<u64> = buffered
                .keys()
                .chain(dirty.keys())
                .copied()
                .filter(|e| !frontier.less_equal(e))
                .collect();
            closing.sort_unstable();
            closing.dedup();
            for epoch in closing {
                let c = data_cap
                    .as_ref()
                    .expect("epochs still open")
                    .delayed(&epoch);
                for (k, v) in buffered.remove(&epoch).unwrap_or_default() {
                    changed = true;
                    apply(&mut state, &mut dirty, epoch, k, v, &mut out);
                }
                for k in dirty.remove(&epoch).unwrap_or_default() {
                    let (s, _) = &state[&k];
                    on_epoch(&k, s, epoch, &mut out);
                }
                if !out.is_empty() {
                    session_out.session(&c).give_iterator(out.drain(..));
                }
            }
            // The snapshot covers exactly the closed epochs: take it before records of
            // the oldest open epoch are applied below.
            if let Some(due) = tracker.advance(frontier) {
                if checkpointing {
                    let bytes = if changed {
                        changed = false;
                        match encode_keyed(&name, n, state.iter().map(|(k, (s, _))| (k, s))) {
                            Ok(b) => Some(b),
                            Err(e) => {
                                weir_runtime::execute::die(&format!("snapshot of `{name}`"), &e)
                            }
                        }
                    } else {
                        None
                    };
                    snapshotter.snapshot(due.cap, range, bytes, Vec::new(), due.is_final);
                }
            }
            input.for_each(|cap, batch| {
                let Some(&epoch) = cap.least() else { return };
                tracker.saw(epoch);
                if Some(epoch) == oldest {
                    changed = true;
                    for (k, v) in batch.drain(..) {
                        apply(&mut state, &mut dirty, epoch, k, v, &mut out);
                    }
                    if !out.is_empty() {
                        let c = data_cap.as_ref().expect("open epoch").delayed(&epoch);
                        session_out.session(&c).give_iterator(out.drain(..));
                    }
                } else {
                    buffered.entry(epoch).or_default().append(batch);
                }
            });
            drop(session_out);
            match (oldest, data_cap.as_mut()) {
                (Some(f), Some(c)) if *c.time() < f => c.downgrade(&f),
                (None, _) => data_cap = None,
                _ => {}
            }
            let mut reports = report_out.activate();
            snapshotter.poll(|cap, report| reports.session(cap).give(report));
        }
    });
    if checkpointing {
        job.register_reports(reports);
    }
    Ok(data)
}
