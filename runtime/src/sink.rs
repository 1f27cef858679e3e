//! The sink operator: runs a [`TwoPhaseSink`] on every worker under the two-phase commit
//! protocol (see [`crate::twophase`]).
//!
//! A sink writes each epoch's records into a pending output ([`TwoPhaseSink::write`]);
//! when the sink's input frontier passes the epoch it makes that output durable but
//! invisible ([`TwoPhaseSink::pre_commit`]), and the handle goes into the checkpoint.
//! Once the checkpoint's manifest is written, the coordinator makes it visible through
//! the sink's [`Committer`]. After a crash, the coordinator commits the restored
//! checkpoint's handles again and aborts every other leftover
//! ([`weir_checkpoint::protocol::recover_sink`]).
//!
//! With at-least-once and at-most-once delivery the sink commits each epoch's output
//! right after pre-committing it, without waiting for the checkpoint.

use std::collections::BTreeSet;
use std::sync::Arc;

use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::generic::builder_rc::OperatorBuilder;
use timely::dataflow::operators::generic::OutputBuilder;
use timely::dataflow::Stream;
use weir_checkpoint::{Report, SinkEntry};

use crate::config::Delivery;
use crate::error::{Result, RuntimeError};
use crate::job::Job;
use crate::snapshot::Snapshotter;
use crate::tracker::EpochTracker;
use crate::twophase::{entry_of, Commit, PreCommitted, Typed};
pub use crate::twophase::{Committer, NoStaging, Output, OutputId, TwoPhaseSink};

/// Writes `stream` through a two-phase-commit sink named `name`.
///
/// Records at epochs the restored checkpoint covers are dropped: they are what an earlier
/// run committed, replayed by operators that rebuild their output from restored state
/// (see `weir_operators::collection`).
pub fn sink<'scope, D, S, C>(
    job: &Job<'scope>,
    stream: Stream<'scope, u64, Vec<D>>,
    name: &str,
    mut sink: S,
    committer: Arc<C>,
) -> Result<()>
where
    D: timely::ExchangeData,
    S: TwoPhaseSink<Record = D>,
    C: Committer<Handle = S::Handle> + ?Sized,
{
    job.claim_name(name)?;
    let committer: Arc<dyn Commit> = Arc::new(Typed {
        sink: name.to_string(),
        committer,
    });
    job.register_committer(name, Arc::clone(&committer));
    let ctx = job.ctx().clone();
    let checkpointing = ctx.checkpointing();
    let exactly_once = ctx.delivery() == Delivery::ExactlyOnce;
    let mut builder = OperatorBuilder::new(format!("sink:{name}"), job.scope());
    let address = builder.operator_info().address;
    let mut input = builder.new_input(stream, Pipeline);
    let (output, reports) = builder.new_output::<Vec<Report>>();
    let mut output =
        OutputBuilder::<_, timely::container::CapacityContainerBuilder<Vec<Report>>>::from(output);
    let worker = job.scope().worker();
    let mut snapshotter = Snapshotter::new(&ctx, name, &address, worker);
    let name = name.to_string();
    let first_epoch = ctx.first_epoch();
    let restored = ctx.restored().map(|m| m.epoch.0);
    let written = ctx.metrics().sink_counter(ctx.worker(), &name);
    builder.build(move |mut caps| {
        let mut tracker = EpochTracker::new(caps.pop().expect("one output"), first_epoch);
        let mut open: BTreeSet<u64> = BTreeSet::new();
        let mut owed: Vec<SinkEntry> = Vec::new();
        move |frontiers| {
            if ctx.failed() {
                return;
            }
            let fail = |e: RuntimeError| ctx.fail(&format!("sink `{name}`"), e);
            let mut failure = None;
            input.for_each(|cap, data| {
                let Some(&epoch) = cap.least() else { return };
                if failure.is_some() || restored.is_some_and(|r| epoch <= r) {
                    // Output as of the restored checkpoint or earlier (operators that
                    // replay restored state emit it there) was committed by an earlier
                    // run.
                    data.clear();
                    return;
                }
                tracker.saw(epoch);
                open.insert(epoch);
                written.add(data.len());
                for record in data.drain(..) {
                    if let Err(e) = sink.write(epoch, record) {
                        failure = Some(e);
                        break;
                    }
                }
            });
            if let Some(e) = failure {
                return fail(e);
            }
            let frontier = &frontiers[0];
            let closed: Vec<u64> = open
                .iter()
                .copied()
                .filter(|e| !frontier.less_equal(e))
                .collect();
            for epoch in closed {
                open.remove(&epoch);
                let output = sink.pre_commit(epoch).and_then(|handle| {
                    handle
                        .map(|h| entry_of(&name, ctx.output(epoch), &h).map(PreCommitted::new))
                        .transpose()
                });
                match output {
                    Ok(Some(output)) => {
                        if exactly_once {
                            owed.push(output.into_checkpoint());
                        } else if let Err(e) = output.commit(committer.as_ref()) {
                            return fail(e);
                        }
                    }
                    Ok(None) => {}
                    Err(e) => return fail(e),
                }
            }
            if let Some(due) = tracker.advance(frontier) {
                if checkpointing {
                    snapshotter.snapshot(
                        due.cap,
                        (0, 0),
                        None,
                        std::mem::take(&mut owed),
                        due.is_final,
                    );
                }
            }
            let mut out = output.activate();
            snapshotter.poll(|cap, report| out.session(cap).give(report));
        }
    });
    if checkpointing {
        job.register_reports(reports);
    }
    Ok(())
}
