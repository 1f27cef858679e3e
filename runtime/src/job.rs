//! The job under construction on one worker: unique operator names, the report streams
//! of checkpointed operators, the sinks' committers, and the last steps before the
//! dataflow runs (checking a restored graph, announcing the generation, recovering the
//! sinks, installing the coordinator).
//!
//! ## Design
//!
//! Invariants:
//! - every checkpointed operator, source and sink has a name unique in the job; its state
//!   is stored under that name, and a restore into a job whose names differ fails;
//! - the generation is announced, newer checkpoints than the restored one are abandoned
//!   and sinks are recovered on worker 0 before any record flows, so that nothing of an
//!   earlier run is mistaken for this run's.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::rc::Rc;
use std::sync::Arc;

use timely::dataflow::operators::Concatenate;
use timely::dataflow::{Scope, Stream};
use weir_checkpoint::{Manifest, Report};

use crate::context::{JobContext, Shared};
use crate::error::{Result, RuntimeError};
use crate::twophase::Commit;
use weir_checkpoint::Epoch;

/// A job under construction on one worker: its scope, its context, and the report
/// streams and committers its checkpointed operators register.
///
/// It is a cheap handle: clones share one job, so that every [`crate::Flow`] built from
/// it carries the job along and the user never passes it around.
#[derive(Clone)]
pub struct Job<'scope> {
    scope: Scope<'scope, u64>,
    ctx: JobContext,
    build: Rc<RefCell<Build<'scope>>>,
}

/// What the job's operators registered so far.
#[derive(Default)]
struct Build<'scope> {
    names: BTreeSet<String>,
    reports: Vec<Stream<'scope, u64, Vec<Report>>>,
    committers: BTreeMap<String, Arc<dyn Commit>>,
}

impl<'scope> Job<'scope> {
    pub(crate) fn new(scope: Scope<'scope, u64>, shared: Arc<Shared>) -> Self {
        let ctx = JobContext::new(shared, scope.index(), scope.peers());
        Job {
            scope,
            ctx,
            build: Rc::new(RefCell::new(Build {
                names: BTreeSet::new(),
                reports: Vec::new(),
                committers: BTreeMap::new(),
            })),
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
    pub fn claim_name(&self, name: &str) -> Result<()> {
        if name.is_empty() || name.contains('/') || name.starts_with('_') {
            return Err(RuntimeError::config(
                "operator name",
                format!("`{name}` must be non-empty, contain no `/` and not start with `_`"),
            ));
        }
        if !self.build.borrow_mut().names.insert(name.to_string()) {
            return Err(RuntimeError::config(
                "operator name",
                format!("`{name}` is used twice in the job; names must be unique"),
            ));
        }
        Ok(())
    }

    /// Registers the report stream of a checkpointed operator (see [`crate::Snapshotter`]).
    ///
    /// Every registered operator must report for an epoch (or have reported a final
    /// part) before that epoch's checkpoint can complete.
    pub fn register_reports(&self, reports: Stream<'scope, u64, Vec<Report>>) {
        self.build.borrow_mut().reports.push(reports);
    }

    /// Registers how the coordinator commits and aborts a sink's pre-committed output.
    pub(crate) fn register_committer(&self, name: &str, committer: Arc<dyn Commit>) {
        self.build
            .borrow_mut()
            .committers
            .insert(name.to_string(), committer);
    }

    /// Finishes construction: recovers sinks and installs the checkpoint coordinator.
    pub(crate) fn finish(self) -> Result<()> {
        let Job { scope, ctx, build } = self;
        let Build {
            names,
            reports,
            committers,
        } = std::mem::take(&mut *build.borrow_mut());
        if ctx.failed() {
            // Another worker failed to build: this run recovers nothing and stops.
            return Ok(());
        }
        let mut follows = None;
        if ctx.worker() == 0 {
            if let Some(m) = ctx.restored() {
                check_graph(m, &names)?;
            }
            if let Some(store) = ctx.store() {
                // Every process has read the markers and chosen its checkpoint by now: the
                // cluster is connected. Announce this generation, so that older ones are
                // fenced, and abandon checkpoints newer than the restored one, whose
                // uncommitted output recovery is about to abort.
                // An explicit restore (a savepoint, or a checkpoint by epoch) is recorded
                // first: from the abandonment below until this generation commits a
                // checkpoint, a restart must restore the same again, not what is left of
                // the older checkpoints.
                match &ctx.config().restore {
                    Some(
                        target @ (weir_checkpoint::RestoreTarget::Savepoint(_)
                        | weir_checkpoint::RestoreTarget::Epoch(_)),
                    ) => ctx.block_on(store.record_restore(ctx.generation(), target))?,
                    Some(weir_checkpoint::RestoreTarget::Latest) | None => {}
                }
                ctx.block_on(store.announce_generation(ctx.generation()))?;
                // Then take this generation's place in the job's history, so that no
                // older generation can commit a checkpoint after the restored one.
                let restored = ctx.restored().map(|m| m.epoch);
                match ctx.block_on(store.seal(ctx.generation(), restored, &ctx.shared.seen))? {
                    Ok(node) => follows = Some(node),
                    Err(newer) => {
                        return Err(RuntimeError::Dataflow(format!(
                            "checkpoint {newer} was committed after this run planned its start (by a process of an older generation); a restart restores it"
                        )))
                    }
                }
                // Claims of older generations are read by no rendezvous any more.
                if let Err(e) = ctx.block_on(store.prune_claims(ctx.generation())) {
                    tracing::warn!(error = %e, "cannot delete old rendezvous claims");
                }
                let restored = ctx.restored().map_or(Epoch(0), |m| m.epoch);
                let (complete, _) = ctx.block_on(store.list())?;
                let abandon = crate::startup::abandoned(&complete, restored);
                for epoch in &abandon {
                    tracing::warn!(
                        epoch = %epoch,
                        restored = %restored,
                        "checkpoint {epoch} is newer than the restored one and is abandoned"
                    );
                }
                ctx.block_on(store.abandon(&abandon))?;
            }
            crate::coordinator::recover_sinks(&ctx, &committers)?;
        }
        if !ctx.checkpointing() || reports.is_empty() {
            return Ok(());
        }
        let reports = scope.concatenate(reports);
        crate::coordinator::install(reports, ctx, names, committers, follows);
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
