//! The checkpoint protocol's decisions, as pure functions over facts already read.
//!
//! Nothing here touches storage. The coordinator and the restore path read manifests,
//! listings and reports, call these functions, and carry out what they return. Every
//! decision therefore has a unit test without I/O.
//!
//! ## Design
//!
//! * A checkpoint `e` is complete iff every registered (operator, worker) pair reported
//!   a part for `e`, or reported a *final* part (its input ended) with an epoch `<= e`.
//! * Sink outputs are facts that accumulate: an output reported for epoch `e` is owed to
//!   the first complete checkpoint `>= e`, so outputs of a skipped checkpoint are carried
//!   into the next one and never dropped.
//! * After a restore from checkpoint `c`, exactly the sink outputs listed in `c`'s
//!   manifest are committed (again: commit is idempotent), and every other staged output
//!   is aborted.
//! * A checkpoint directory is deleted only when a newer checkpoint is complete, it is
//!   not among the newest `retain` complete ones, and no retained manifest references it.
//! * **Invariant 5: a process of an older generation can neither complete a checkpoint
//!   nor commit.** A run announces its generation in storage before it recovers any sink
//!   output. Before every manifest, the coordinator reads the markers and stops if
//!   [`is_fenced`]; it commits only the outputs of a manifest it has just written, so a
//!   fenced coordinator commits nothing new. Whatever an older generation pre-committed
//!   and no restored manifest lists is aborted by the newer generation's
//!   [`recover_sink`], so it can never become visible later. The marker check alone is
//!   not atomic with the manifest write, so a checkpoint is committed only by a
//!   create-if-absent [`Link`] from the [`Node`] it follows, and a starting generation
//!   first links the node it restores from to its own restart: a coordinator paused
//!   between its check and its manifest finds that link taken, and its manifest never
//!   counts (see [`seal_step`] and [`is_committed`]).

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::ids::{Epoch, Generation, WorkerIndex};
use crate::manifest::{PartEntry, SinkEntry};

/// Which checkpoint a job restores from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RestoreTarget {
    /// The newest complete checkpoint that verifies; older ones are tried if it does not.
    Latest,
    /// Exactly this checkpoint.
    Epoch(Epoch),
    /// The savepoint of this name.
    Savepoint(String),
}

/// The target as `--restore` takes it: `latest`, an epoch, or `savepoint:NAME`.
impl std::fmt::Display for RestoreTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RestoreTarget::Latest => f.write_str("latest"),
            RestoreTarget::Epoch(e) => write!(f, "{e}"),
            RestoreTarget::Savepoint(name) => write!(f, "savepoint:{name}"),
        }
    }
}

impl std::str::FromStr for RestoreTarget {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if let Some(name) = s.strip_prefix("savepoint:") {
            return crate::layout::check_savepoint_name(name)
                .map(|_| RestoreTarget::Savepoint(name.to_string()));
        }
        match s {
            "latest" => Ok(RestoreTarget::Latest),
            other => other
                .trim_start_matches("chk-")
                .parse()
                .map(RestoreTarget::Epoch)
                .map_err(|_| format!("restore target `{s}` is neither `latest`, a checkpoint epoch, nor `savepoint:NAME`")),
        }
    }
}

/// The order in which checkpoints are tried for a restore.
///
/// `complete` are the epochs that have a manifest, in any order. An empty result means
/// there is nothing to restore from.
pub fn restore_candidates(target: &RestoreTarget, complete: &[Epoch]) -> Vec<Epoch> {
    match target {
        RestoreTarget::Latest => {
            let mut c = complete.to_vec();
            c.sort_unstable_by_key(|e| std::cmp::Reverse(*e));
            c.dedup();
            c
        }
        RestoreTarget::Savepoint(_) => Vec::new(),
        RestoreTarget::Epoch(e) => complete
            .iter()
            .copied()
            .filter(|c| *c == *e)
            .take(1)
            .collect(),
    }
}

/// What to do with one pre-committed sink output during recovery.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum SinkAction {
    /// The restored checkpoint covers it: make it visible (a no-op if it already is).
    Commit(SinkEntry),
    /// No restored checkpoint covers it: discard it.
    Abort(SinkEntry),
}

/// Decides the fate of a sink's leftovers after a restore.
///
/// `restored` are the sink's entries in the restored manifest (empty for a fresh start);
/// `staged` are the outputs the sink still finds pre-committed. Every restored entry is
/// committed, whether or not it is still staged (commit is idempotent and the crash may
/// have come anywhere between manifest and commit); every staged output of an earlier
/// generation that the manifest does not list is aborted. Outputs of `generation`
/// itself belong to the run that is starting and are left alone.
pub fn recover_sink(
    restored: &[SinkEntry],
    staged: &[SinkEntry],
    generation: Generation,
) -> Vec<SinkAction> {
    let keep: BTreeSet<_> = restored.iter().map(output_of).collect();
    let mut actions: Vec<SinkAction> = restored.iter().cloned().map(SinkAction::Commit).collect();
    actions.extend(
        staged
            .iter()
            .filter(|s| s.generation < generation && !keep.contains(&output_of(s)))
            .cloned()
            .map(SinkAction::Abort),
    );
    actions.sort();
    actions.dedup();
    actions
}

/// What identifies a sink's output: sink, worker, epoch and generation (the handle is
/// what the sink needs to commit it, not its identity).
fn output_of(e: &SinkEntry) -> (&str, WorkerIndex, Epoch, Generation) {
    (e.sink.as_str(), e.worker, e.epoch, e.generation)
}

/// Whether a process of `generation` has been superseded by a newer one.
///
/// `markers` are the generations that have announced themselves in storage. A fenced
/// process must neither complete a checkpoint nor commit.
pub fn is_fenced(generation: Generation, markers: &[Generation]) -> bool {
    markers.iter().any(|m| *m > generation)
}

/// The generation that process `index` claims when a cluster forms.
///
/// A generation is run by exactly one incarnation of each process: its claim on
/// (generation, index) is an object created if absent. The claim is the newest of
/// - `floor` (one past the newest announced generation, or what a peer showed),
/// - the newest generation any process claimed, so that a process that restarts while
///   its peers run (or form) a generation pulls them all to its own,
///
/// or one past that if this index claimed it already: an earlier incarnation of this
/// process took part in it, and a generation is never joined half-way.
///
/// ```
/// use weir_checkpoint::protocol::claim_target;
/// use weir_checkpoint::Generation;
/// let g = Generation;
/// // Processes 0 and 1 formed generation 4; process 1 restarts: it claims 5.
/// assert_eq!(claim_target(g(4), &[(g(4), 0), (g(4), 1)], 1), g(5));
/// // Process 0 then fails too and restarts: it joins 5.
/// assert_eq!(claim_target(g(4), &[(g(4), 0), (g(4), 1), (g(5), 1)], 0), g(5));
/// ```
pub fn claim_target(floor: Generation, claims: &[(Generation, usize)], index: usize) -> Generation {
    let newest = claims.iter().map(|(g, _)| *g).max().unwrap_or(floor);
    let target = floor.max(newest);
    if claims.contains(&(target, index)) {
        target.next()
    } else {
        target
    }
}

/// A point in a job's history that one successor may follow: a checkpoint, or a restart
/// of a generation from a checkpoint (epoch 0: from the beginning).
///
/// The successor is decided by one create-if-absent object per node, its [`Link`]: a
/// checkpoint is committed iff the link of the node its manifest names (`Manifest::link`)
/// names that checkpoint's generation and epoch. A generation that starts creates the
/// link of the node it restores from first; from then on no older generation can commit
/// a checkpoint after that node, even one paused between its fence check and its
/// manifest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Node {
    /// Checkpoint `epoch` (0: the job's beginning).
    Checkpoint(Epoch),
    /// `generation`'s restart from checkpoint `epoch`.
    Restart {
        /// The checkpoint restarted from (0: the beginning).
        epoch: Epoch,
        /// The generation that restarted.
        generation: Generation,
    },
}

impl Node {
    /// The node's name: `<epoch, 20 digits>` or `<epoch>@<generation, 10 digits>`.
    ///
    /// ```
    /// use weir_checkpoint::protocol::Node;
    /// use weir_checkpoint::{Epoch, Generation};
    /// let n = Node::Restart { epoch: Epoch(7), generation: Generation(2) };
    /// assert_eq!(n.name(), "00000000000000000007@0000000002");
    /// assert_eq!(Node::parse(&n.name()), Some(n));
    /// assert_eq!(Node::parse("7@x"), None);
    /// ```
    pub fn name(&self) -> String {
        match self {
            Node::Checkpoint(e) => format!("{:020}", e.0),
            Node::Restart { epoch, generation } => format!("{:020}@{:010}", epoch.0, generation.0),
        }
    }

    /// Parses [`Node::name`].
    pub fn parse(name: &str) -> Option<Node> {
        let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
        match name.split_once('@') {
            None if digits(name) => Some(Node::Checkpoint(Epoch(name.parse().ok()?))),
            Some((e, g)) if digits(e) && digits(g) => Some(Node::Restart {
                epoch: Epoch(e.parse().ok()?),
                generation: Generation(g.parse().ok()?),
            }),
            _ => None,
        }
    }

    /// The checkpoint this node is, or restarts from.
    pub fn epoch(&self) -> Epoch {
        match self {
            Node::Checkpoint(e) | Node::Restart { epoch: e, .. } => *e,
        }
    }
}

/// The successor of a [`Node`]: a generation's checkpoint, or (`epoch: None`) its
/// restart.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Link {
    /// The generation that created the link.
    pub generation: Generation,
    /// The checkpoint that follows; `None` when the generation restarted here.
    pub epoch: Option<Epoch>,
}

/// Whether a checkpoint of `generation` and `epoch` whose manifest names a node is
/// committed, given that node's link (`None`: absent).
///
/// ```
/// use weir_checkpoint::protocol::{is_committed, Link};
/// use weir_checkpoint::{Epoch, Generation};
/// let link = Link { generation: Generation(3), epoch: Some(Epoch(9)) };
/// assert!(is_committed(Generation(3), Epoch(9), Some(&link)));
/// // A zombie of generation 2 wrote manifest 9 after generation 3 linked its own.
/// assert!(!is_committed(Generation(2), Epoch(9), Some(&link)));
/// assert!(!is_committed(Generation(3), Epoch(9), None));
/// ```
pub fn is_committed(generation: Generation, epoch: Epoch, link: Option<&Link>) -> bool {
    link.is_some_and(|l| l.generation == generation && l.epoch == Some(epoch))
}

/// One step of a starting generation's walk to the node its first checkpoint follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SealStep {
    /// The node has no link: create one naming this generation's restart.
    Create,
    /// The node's link names this generation's restart: done.
    Sealed,
    /// Another generation restarted here and may still complete its first checkpoint:
    /// go on to its restart node, and seal that.
    Follow(Node),
    /// The link names a checkpoint that existed when this generation planned its start
    /// and that it does not restore (it did not verify, or an older one was asked for):
    /// overwrite the link, so that the checkpoint and its successors are abandoned.
    Overwrite,
    /// A checkpoint completed after this generation planned its start: restore that one
    /// instead (a transient failure; the next start picks it).
    Newer(Epoch),
}

/// Decides the step of a starting generation `own` at `node`, whose link is `link`;
/// `seen` are the complete checkpoints listed when the start was planned.
///
/// ```
/// use weir_checkpoint::protocol::{seal_step, Link, Node, SealStep};
/// use weir_checkpoint::{Epoch, Generation};
/// let (own, at) = (Generation(5), Node::Checkpoint(Epoch(8)));
/// assert_eq!(seal_step(own, &at, None, &[Epoch(8)]), SealStep::Create);
/// let restart = Link { generation: Generation(4), epoch: None };
/// assert_eq!(
///     seal_step(own, &at, Some(&restart), &[Epoch(8)]),
///     SealStep::Follow(Node::Restart { epoch: Epoch(8), generation: Generation(4) })
/// );
/// let later = Link { generation: Generation(4), epoch: Some(Epoch(9)) };
/// assert_eq!(seal_step(own, &at, Some(&later), &[Epoch(8)]), SealStep::Newer(Epoch(9)));
/// assert_eq!(seal_step(own, &at, Some(&later), &[Epoch(8), Epoch(9)]), SealStep::Overwrite);
/// ```
pub fn seal_step(own: Generation, node: &Node, link: Option<&Link>, seen: &[Epoch]) -> SealStep {
    match link {
        None => SealStep::Create,
        Some(l) if l.generation == own => SealStep::Sealed,
        Some(Link {
            generation,
            epoch: None,
        }) => SealStep::Follow(Node::Restart {
            epoch: node.epoch(),
            generation: *generation,
        }),
        Some(Link { epoch: Some(e), .. }) if seen.contains(e) => SealStep::Overwrite,
        Some(Link { epoch: Some(e), .. }) => SealStep::Newer(*e),
    }
}

/// Whether a restart asked for the latest checkpoint restores again what generation
/// `restored` restored explicitly (a savepoint, or a checkpoint by epoch): when no
/// committed checkpoint exists (`latest` is `None`), or the latest was written by a
/// generation older than `restored`. Such a checkpoint predates that restore, which
/// abandoned every checkpoint newer than what it restored; restoring it, or starting
/// from the beginning, would replay output that the restored state already accounts for.
/// A checkpoint of `restored` or a newer generation was taken after the restore and wins.
pub fn restore_again(latest: Option<Generation>, restored: Option<Generation>) -> bool {
    match (latest, restored) {
        (_, None) => false,
        (None, Some(_)) => true,
        (Some(latest), Some(restored)) => latest < restored,
    }
}

/// What retention removes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RetentionPlan {
    /// Checkpoint directories to delete whole.
    pub delete: Vec<Epoch>,
    /// Complete checkpoints beyond retention whose directories newer manifests still
    /// reference: only their manifests are deleted, so that they stop being checkpoints
    /// while their parts stay readable.
    pub demote: Vec<Epoch>,
}

/// Which checkpoint directories to delete.
///
/// `complete` lists every complete checkpoint with the epochs of the directories its
/// manifest references (its own and older ones whose parts it reuses; only the newest
/// `retain` need them); `dirs` are all checkpoint directories present. `retain` is
/// clamped to at least one. Nothing newer than the newest complete checkpoint is touched:
/// it may be in progress.
pub fn retention(
    complete: &[(Epoch, BTreeSet<Epoch>)],
    dirs: &[Epoch],
    retain: usize,
) -> RetentionPlan {
    let retain = retain.max(1);
    let mut sorted: Vec<&(Epoch, BTreeSet<Epoch>)> = complete.iter().collect();
    sorted.sort_by_key(|c| std::cmp::Reverse(c.0));
    let Some(newest) = sorted.first().map(|c| c.0) else {
        return RetentionPlan::default();
    };
    let mut keep = BTreeSet::new();
    for (epoch, refs) in sorted.iter().take(retain) {
        keep.insert(*epoch);
        keep.extend(refs.iter().copied());
    }
    let retained: BTreeSet<Epoch> = sorted.iter().take(retain).map(|c| c.0).collect();
    let mut delete: Vec<Epoch> = dirs
        .iter()
        .copied()
        .filter(|d| *d < newest && !keep.contains(d))
        .collect();
    delete.sort_unstable();
    delete.dedup();
    let mut demote: Vec<Epoch> = sorted
        .iter()
        .map(|c| c.0)
        .filter(|e| !retained.contains(e) && keep.contains(e))
        .collect();
    demote.sort_unstable();
    RetentionPlan { delete, demote }
}

/// What an operator or sink on one worker reports to the coordinator for one epoch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Report {
    /// The epoch the report is for.
    pub epoch: Epoch,
    /// The operator or sink name.
    pub operator: String,
    /// The reporting worker.
    pub worker: WorkerIndex,
    /// State or position objects (at most one for built-in operators).
    pub parts: Vec<PartEntry>,
    /// Outputs pre-committed for epochs `<= epoch` since the previous report.
    pub sinks: Vec<SinkEntry>,
    /// The operator's input has ended: this report holds for every later epoch too.
    pub is_final: bool,
    /// The snapshot or pre-commit failed; the checkpoint cannot complete.
    pub error: Option<String>,
}

/// The outcome of closing one epoch at the coordinator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Closed {
    /// Every part is there: write the manifest with these parts and sink outputs.
    Complete {
        /// The epoch.
        epoch: Epoch,
        /// Every part of the checkpoint, each object once
        /// ([`crate::manifest::merge_chains`]).
        parts: Vec<PartEntry>,
        /// Every sink output it commits.
        sinks: Vec<SinkEntry>,
    },
    /// Some pairs did not report for this epoch (their frontier skipped it); it is not
    /// a checkpoint, and that is not a failure.
    Skipped {
        /// The epoch.
        epoch: Epoch,
        /// The (operator, worker) pairs without a report.
        missing: Vec<(String, WorkerIndex)>,
    },
    /// A report carried an error: the checkpoint failed.
    Failed {
        /// The epoch.
        epoch: Epoch,
        /// The errors reported.
        errors: Vec<String>,
    },
}

/// Collects reports and decides, epoch by epoch, which checkpoints are complete.
#[derive(Debug, Default)]
pub struct Assembler {
    expected: BTreeSet<(String, WorkerIndex)>,
    by_epoch: BTreeMap<Epoch, BTreeMap<(String, WorkerIndex), Report>>,
    finals: BTreeMap<(String, WorkerIndex), Report>,
    pending_sinks: BTreeSet<SinkEntry>,
    labels: BTreeSet<Epoch>,
    last_complete: Option<Epoch>,
}

impl Assembler {
    /// An assembler expecting a report from every pair in `expected`.
    pub fn new(expected: impl IntoIterator<Item = (String, WorkerIndex)>) -> Self {
        Assembler {
            expected: expected.into_iter().collect(),
            ..Default::default()
        }
    }

    /// Records a report.
    pub fn add(&mut self, report: Report) {
        // Pre-committed output is owed to a later checkpoint even if the same report's
        // state upload failed.
        self.pending_sinks.extend(report.sinks.iter().cloned());
        self.labels.insert(report.epoch);
        let key = (report.operator.clone(), report.worker);
        if report.is_final && report.error.is_none() {
            self.finals.insert(key, report);
        } else {
            self.by_epoch
                .entry(report.epoch)
                .or_default()
                .insert(key, report);
        }
    }

    /// Closes every reported epoch below `frontier` (all of them if `None`), in order.
    pub fn advance(&mut self, frontier: Option<Epoch>) -> Vec<Closed> {
        let ready: Vec<Epoch> = self
            .labels
            .iter()
            .copied()
            .filter(|e| frontier.is_none_or(|f| *e < f))
            .collect();
        let mut out = Vec::new();
        for epoch in ready {
            self.labels.remove(&epoch);
            if self.last_complete.is_some_and(|c| epoch <= c) {
                self.by_epoch.remove(&epoch);
                continue;
            }
            out.push(self.close(epoch));
        }
        out
    }

    /// Marks `epoch`'s manifest as durably written: its sink outputs are no longer owed.
    pub fn completed(&mut self, epoch: Epoch) {
        self.pending_sinks.retain(|s| s.epoch > epoch);
        self.last_complete = Some(epoch);
    }

    fn close(&mut self, epoch: Epoch) -> Closed {
        let reports = self.by_epoch.remove(&epoch).unwrap_or_default();
        let errors: Vec<String> = reports
            .values()
            .filter_map(|r| {
                r.error
                    .as_ref()
                    .map(|e| format!("{} on worker {}: {e}", r.operator, r.worker))
            })
            .collect();
        if !errors.is_empty() {
            return Closed::Failed { epoch, errors };
        }
        let mut parts = Vec::new();
        let mut missing = Vec::new();
        for key in &self.expected {
            let report = reports
                .get(key)
                .or_else(|| self.finals.get(key).filter(|f| f.epoch <= epoch));
            match report {
                Some(r) => parts.extend(r.parts.iter().cloned()),
                None => missing.push(key.clone()),
            }
        }
        if !missing.is_empty() {
            return Closed::Skipped { epoch, missing };
        }
        let sinks = self
            .pending_sinks
            .iter()
            .filter(|s| s.epoch <= epoch)
            .cloned()
            .collect();
        Closed::Complete {
            epoch,
            parts: crate::manifest::merge_chains(parts),
            sinks,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn part(op: &str, w: usize, e: u64) -> PartEntry {
        PartEntry {
            operator: op.into(),
            worker: WorkerIndex(w),
            key_group_start: 0,
            key_group_end: 1,
            path: format!("j/chk-{e}/{op}/w{w}"),
            size: 1,
            crc32: 0,
            packed: None,
        }
    }

    fn sink(w: usize, e: u64) -> SinkEntry {
        SinkEntry {
            sink: "out".into(),
            worker: WorkerIndex(w),
            epoch: Epoch(e),
            generation: Generation(0),
            handle: format!("e{e}-w{w}"),
        }
    }

    fn report(op: &str, w: usize, e: u64) -> Report {
        Report {
            epoch: Epoch(e),
            operator: op.into(),
            worker: WorkerIndex(w),
            parts: vec![part(op, w, e)],
            sinks: vec![],
            is_final: false,
            error: None,
        }
    }

    #[test]
    fn latest_restore_tries_newest_first() {
        assert_eq!(
            restore_candidates(&RestoreTarget::Latest, &[Epoch(3), Epoch(9), Epoch(5)]),
            vec![Epoch(9), Epoch(5), Epoch(3)]
        );
        assert_eq!(
            restore_candidates(
                &RestoreTarget::Epoch(Epoch(5)),
                &[Epoch(3), Epoch(9), Epoch(5)]
            ),
            vec![Epoch(5)]
        );
        assert!(restore_candidates(
            &RestoreTarget::Epoch(Epoch(4)),
            &[Epoch(3), Epoch(9), Epoch(5)]
        )
        .is_empty());
        assert!(restore_candidates(&RestoreTarget::Latest, &[]).is_empty());
    }

    #[test]
    fn a_restart_restores_an_explicit_restore_again_until_a_checkpoint_follows_it() {
        let g = |n| Some(Generation(n));
        // Nothing restored explicitly: the latest checkpoint, or none.
        assert!(!restore_again(g(3), None));
        assert!(!restore_again(None, None));
        // Generation 4 restored a savepoint (or an epoch) and committed nothing yet.
        assert!(restore_again(None, g(4)));
        assert!(restore_again(g(3), g(4)));
        // A checkpoint of generation 4 or later follows the restore.
        assert!(!restore_again(g(4), g(4)));
        assert!(!restore_again(g(6), g(4)));
    }

    #[test]
    fn a_restore_target_prints_as_restore_takes_it() {
        for t in [
            RestoreTarget::Latest,
            RestoreTarget::Epoch(Epoch(42)),
            RestoreTarget::Savepoint("before-upgrade".into()),
        ] {
            assert_eq!(t.to_string().parse::<RestoreTarget>().unwrap(), t);
        }
    }

    #[test]
    fn restore_target_parses_latest_and_epochs() {
        assert_eq!(
            "latest".parse::<RestoreTarget>().unwrap(),
            RestoreTarget::Latest
        );
        assert_eq!(
            "12".parse::<RestoreTarget>().unwrap(),
            RestoreTarget::Epoch(Epoch(12))
        );
        assert_eq!(
            "chk-00000000000000000012".parse::<RestoreTarget>().unwrap(),
            RestoreTarget::Epoch(Epoch(12))
        );
        assert!("newest".parse::<RestoreTarget>().is_err());
        assert_eq!(
            "savepoint:before-upgrade".parse::<RestoreTarget>().unwrap(),
            RestoreTarget::Savepoint("before-upgrade".into())
        );
        assert!("savepoint:a/b".parse::<RestoreTarget>().is_err());
    }

    #[test]
    fn recovery_commits_restored_outputs_and_aborts_later_ones() {
        let restored = vec![sink(0, 4), sink(1, 4)];
        // Worker 0's output of epoch 4 was already committed (not staged anymore);
        // epoch 5 was pre-committed after the checkpoint.
        let staged = vec![sink(1, 4), sink(0, 5), sink(1, 5)];
        let actions = recover_sink(&restored, &staged, Generation(1));
        assert_eq!(
            actions,
            vec![
                SinkAction::Commit(sink(0, 4)),
                SinkAction::Commit(sink(1, 4)),
                SinkAction::Abort(sink(0, 5)),
                SinkAction::Abort(sink(1, 5)),
            ]
        );
    }

    #[test]
    fn fresh_start_aborts_every_leftover() {
        let actions = recover_sink(&[], &[sink(0, 1), sink(0, 2)], Generation(1));
        assert!(actions.iter().all(|a| matches!(a, SinkAction::Abort(_))));
        assert_eq!(actions.len(), 2);
    }

    #[test]
    fn recovery_leaves_the_new_generation_alone() {
        let mut current = sink(1, 7);
        current.generation = Generation(3);
        assert!(recover_sink(&[], &[current], Generation(3)).is_empty());
    }

    #[test]
    fn invariant_5_an_older_generation_can_neither_complete_a_checkpoint_nor_commit() {
        // Generation 1 restored checkpoint 4 and pre-committed epochs 5 and 6; it was
        // paused, and generation 2 started, restored checkpoint 4 and announced itself.
        let markers = [0, 1, 2].map(Generation);
        let restored = vec![sink(0, 4)];
        let mut zombie_staged = Vec::new();
        for e in [5, 6] {
            let mut s = sink(0, e);
            s.generation = Generation(1);
            zombie_staged.push(s);
        }
        // The zombie resumes: before writing the manifest of epoch 6 it finds itself
        // fenced, so it writes none and commits nothing.
        assert!(is_fenced(Generation(1), &markers));
        // The new generation is not fenced, and its recovery commits exactly the restored
        // output and aborts everything the zombie pre-committed.
        assert!(!is_fenced(Generation(2), &markers));
        let actions = recover_sink(&restored, &zombie_staged, Generation(2));
        assert_eq!(
            actions,
            vec![
                SinkAction::Commit(sink(0, 4)),
                SinkAction::Abort(zombie_staged[0].clone()),
                SinkAction::Abort(zombie_staged[1].clone()),
            ]
        );
        // The zombie's own recovery, had it run after generation 2's, would not abort
        // generation 2's output: outputs of newer generations are never its to touch.
        let mut newer = sink(0, 5);
        newer.generation = Generation(2);
        assert!(recover_sink(&restored, &[newer], Generation(1))
            .iter()
            .all(|a| matches!(a, SinkAction::Commit(_))));
    }

    #[test]
    fn every_incarnation_claims_a_generation_of_its_own() {
        let g = Generation;
        // A first start.
        assert_eq!(claim_target(g(0), &[], 0), g(0));
        // Every process restarts after generation 3 ran: all claim 4.
        let ran: Vec<_> = (0..3).map(|i| (g(3), i)).collect();
        for i in 0..3 {
            assert_eq!(claim_target(g(4), &ran, i), g(4));
        }
        // Generation 3 formed but was never announced (the floor is still 3): nobody
        // reuses it.
        for i in 0..3 {
            assert_eq!(claim_target(g(3), &ran, i), g(4));
        }
        // A rendezvous of 4 was cut short after process 0 claimed it: process 0's next
        // incarnation takes 5, and pulls the others, which would take 4, up with it
        // during the exchange.
        let mut cut = ran.clone();
        cut.push((g(4), 0));
        assert_eq!(claim_target(g(4), &cut, 0), g(5));
        assert_eq!(claim_target(g(4), &cut, 1), g(4));
        assert_eq!(claim_target(g(5), &cut, 1), g(5));
        // An announced generation newer than every claim wins.
        assert_eq!(claim_target(g(9), &cut, 2), g(9));
    }

    #[test]
    fn an_older_generation_is_fenced() {
        assert!(is_fenced(
            Generation(1),
            &[Generation(0), Generation(1), Generation(2)]
        ));
        assert!(!is_fenced(
            Generation(2),
            &[Generation(0), Generation(1), Generation(2)]
        ));
        assert!(!is_fenced(Generation(0), &[]));
    }

    #[test]
    fn retention_keeps_newest_and_referenced_directories() {
        let complete = vec![
            (Epoch(2), BTreeSet::from([Epoch(2)])),
            (Epoch(4), BTreeSet::from([Epoch(4), Epoch(1)])),
            (Epoch(6), BTreeSet::from([Epoch(6), Epoch(1)])),
        ];
        let dirs = [1, 2, 3, 4, 5, 6, 7].map(Epoch);
        // Keep 4 and 6, and 1 which both reference; 7 is newer than the newest complete.
        assert_eq!(
            retention(&complete, &dirs, 2),
            RetentionPlan {
                delete: vec![Epoch(2), Epoch(3), Epoch(5)],
                demote: vec![]
            }
        );
        assert_eq!(retention(&[], &dirs, 2), RetentionPlan::default());
        assert_eq!(
            retention(&complete, &dirs, 0),
            RetentionPlan {
                delete: vec![Epoch(2), Epoch(3), Epoch(4), Epoch(5)],
                demote: vec![]
            }
        );
    }

    #[test]
    fn a_referenced_checkpoint_beyond_retention_loses_only_its_manifest() {
        // Checkpoint 1 holds a source's final part that 3 and 4 still reuse.
        let complete = vec![
            (Epoch(1), BTreeSet::new()),
            (Epoch(2), BTreeSet::new()),
            (Epoch(3), BTreeSet::from([Epoch(3), Epoch(1)])),
            (Epoch(4), BTreeSet::from([Epoch(4), Epoch(1)])),
        ];
        let plan = retention(&complete, &[Epoch(1), Epoch(2), Epoch(3), Epoch(4)], 2);
        assert_eq!(
            plan,
            RetentionPlan {
                delete: vec![Epoch(2)],
                demote: vec![Epoch(1)]
            }
        );
    }

    #[test]
    fn checkpoint_completes_when_every_pair_reported() {
        let mut a = Assembler::new([
            ("count".to_string(), WorkerIndex(0)),
            ("count".to_string(), WorkerIndex(1)),
        ]);
        a.add(report("count", 0, 1));
        assert!(a.advance(Some(Epoch(1))).is_empty());
        a.add(report("count", 1, 1));
        match a.advance(Some(Epoch(2))).pop().unwrap() {
            Closed::Complete {
                epoch: Epoch(1),
                parts,
                ..
            } => assert_eq!(parts.len(), 2),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn an_object_reported_by_two_workers_is_listed_once() {
        let mut a = Assembler::new([
            ("count".to_string(), WorkerIndex(0)),
            ("count".to_string(), WorkerIndex(1)),
        ]);
        // Both took over the chain of one worker of an earlier, smaller cluster.
        let taken = part("count", 0, 1);
        for w in 0..2 {
            let mut r = report("count", w, 2);
            r.parts.insert(0, taken.clone());
            a.add(r);
        }
        match a.advance(None).pop().unwrap() {
            Closed::Complete { parts, .. } => {
                let paths: Vec<&str> = parts.iter().map(|p| p.path.as_str()).collect();
                assert_eq!(
                    paths,
                    ["j/chk-1/count/w0", "j/chk-2/count/w0", "j/chk-2/count/w1"]
                );
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_missing_pair_skips_the_epoch() {
        let mut a = Assembler::new([
            ("count".to_string(), WorkerIndex(0)),
            ("count".to_string(), WorkerIndex(1)),
        ]);
        a.add(report("count", 0, 1));
        assert_eq!(
            a.advance(Some(Epoch(2))),
            vec![Closed::Skipped {
                epoch: Epoch(1),
                missing: vec![("count".into(), WorkerIndex(1))]
            }]
        );
    }

    #[test]
    fn an_error_fails_the_checkpoint() {
        let mut a = Assembler::new([("count".to_string(), WorkerIndex(0))]);
        let mut r = report("count", 0, 1);
        r.error = Some("disk full".into());
        a.add(r);
        assert!(matches!(
            a.advance(None).as_slice(),
            [Closed::Failed {
                epoch: Epoch(1),
                ..
            }]
        ));
    }

    #[test]
    fn sink_outputs_of_a_skipped_epoch_are_carried_into_the_next_checkpoint() {
        let mut a = Assembler::new([
            ("count".to_string(), WorkerIndex(0)),
            ("out".to_string(), WorkerIndex(0)),
        ]);
        let mut s1 = report("out", 0, 1);
        s1.parts.clear();
        s1.sinks = vec![sink(0, 1)];
        a.add(s1);
        // "count" skipped epoch 1.
        assert!(matches!(
            a.advance(Some(Epoch(2))).as_slice(),
            [Closed::Skipped { .. }]
        ));
        let mut s2 = report("out", 0, 2);
        s2.parts.clear();
        s2.sinks = vec![sink(0, 2)];
        a.add(s2);
        a.add(report("count", 0, 2));
        match a.advance(Some(Epoch(3))).pop().unwrap() {
            Closed::Complete {
                epoch: Epoch(2),
                sinks,
                ..
            } => assert_eq!(sinks, vec![sink(0, 1), sink(0, 2)]),
            other => panic!("{other:?}"),
        }
        a.completed(Epoch(2));
        let mut s3 = report("out", 0, 3);
        s3.parts.clear();
        a.add(s3);
        a.add(report("count", 0, 3));
        match a.advance(None).pop().unwrap() {
            Closed::Complete {
                epoch: Epoch(3),
                sinks,
                ..
            } => assert!(sinks.is_empty()),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_final_report_covers_later_epochs() {
        let mut a = Assembler::new([
            ("src".to_string(), WorkerIndex(0)),
            ("src".to_string(), WorkerIndex(1)),
        ]);
        let mut done = report("src", 0, 2);
        done.is_final = true;
        a.add(done);
        a.add(report("src", 1, 3));
        match a.advance(None).pop().unwrap() {
            Closed::Complete {
                epoch: Epoch(3),
                parts,
                ..
            } => assert_eq!(parts.len(), 2),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_final_report_does_not_cover_earlier_epochs() {
        let mut a = Assembler::new([
            ("src".to_string(), WorkerIndex(0)),
            ("src".to_string(), WorkerIndex(1)),
        ]);
        let mut done = report("src", 0, 5);
        done.is_final = true;
        a.add(done);
        a.add(report("src", 1, 3));
        assert!(matches!(
            a.advance(Some(Epoch(4))).as_slice(),
            [Closed::Skipped {
                epoch: Epoch(3),
                ..
            }]
        ));
    }

    /// A model of a job's checkpoint storage for the retention property: the set of
    /// object paths (named by [`Layout`]) and the manifests written.
    mod retention_model {
        use super::*;
        use crate::layout::{self, Layout};
        use crate::manifest::Manifest;
        use crate::store::referenced_dirs;
        use proptest::prelude::*;
        use proptest::sample::Index;

        /// What happens to a job's storage.
        #[derive(Debug, Clone)]
        enum Op {
            /// A checkpoint uploads its own packed object and lists, before it, objects
            /// of the chain that its generation can see (in the checkpoint it continues
            /// from, the directories that one references, and its own uploads since);
            /// `complete`: its manifest is written, and a retention pass starts (unless
            /// one is running): it lists storage now and acts at [`Op::LatePass`].
            Checkpoint { complete: bool, reuse: Vec<Index> },
            /// The running pass deletes what its listing planned, maybe after later
            /// checkpoints (which may reuse objects) completed: the coordinator runs
            /// retention beside its loop, one pass at a time.
            LatePass,
            /// `weir checkpoints savepoint`: a complete checkpoint is copied to a savepoint.
            Savepoint(Index),
            /// `weir checkpoints delete --savepoint`.
            DeleteSavepoint(Index),
            /// A new generation restores a complete checkpoint and abandons the newer ones.
            Restore(Index),
            /// Retention runs with another `--retain` (`all_refs`: the facts list every
            /// complete checkpoint's references, not only the retained ones').
            Retention { retain: usize, all_refs: bool },
        }

        fn op() -> impl Strategy<Value = Op> {
            prop_oneof![
                8 => (prop::bool::weighted(0.75), prop::collection::vec(any::<Index>(), 0..4))
                    .prop_map(|(complete, reuse)| Op::Checkpoint { complete, reuse }),
                1 => any::<Index>().prop_map(Op::Savepoint),
                1 => any::<Index>().prop_map(Op::DeleteSavepoint),
                2 => any::<Index>().prop_map(Op::Restore),
                1 => (0usize..5, any::<bool>())
                    .prop_map(|(retain, all_refs)| Op::Retention { retain, all_refs }),
                2 => Just(Op::LatePass),
            ]
        }

        struct Model {
            layout: Layout,
            /// Every object in storage.
            objects: BTreeSet<String>,
            /// Every manifest ever written; a checkpoint is complete while its manifest
            /// object exists.
            manifests: BTreeMap<Epoch, Manifest>,
            savepoints: BTreeMap<String, Manifest>,
            /// The checkpoint the running generation continues from.
            base: Option<Epoch>,
            /// The running generation's checkpoints since `base` that did not complete.
            uploaded: BTreeSet<Epoch>,
            next_epoch: u64,
            next_savepoint: usize,
            generation: Generation,
            /// The job's `--retain`.
            retain: usize,
            /// What a retention pass of the running generation listed and has not yet
            /// acted on: the facts `apply_retention` reads, and the directories.
            listed: Option<Listed>,
        }

        /// The facts a retention pass listed (each checkpoint with the checkpoints it
        /// reaches) and the directories.
        type Listed = (Vec<(Epoch, BTreeSet<Epoch>)>, Vec<Epoch>);

        impl Model {
            fn new(retain: usize) -> Self {
                Model {
                    layout: Layout::new("job"),
                    objects: BTreeSet::new(),
                    manifests: BTreeMap::new(),
                    savepoints: BTreeMap::new(),
                    base: None,
                    uploaded: BTreeSet::new(),
                    next_epoch: 1,
                    next_savepoint: 0,
                    generation: Generation(0),
                    retain,
                    listed: None,
                }
            }

            /// Complete checkpoints, ascending.
            fn complete(&self) -> Vec<Epoch> {
                self.manifests
                    .keys()
                    .copied()
                    .filter(|e| self.objects.contains(self.layout.manifest(*e).as_ref()))
                    .collect()
            }

            /// Checkpoint directories holding objects, ascending.
            fn dirs(&self) -> Vec<Epoch> {
                let dirs: BTreeSet<Epoch> = self
                    .objects
                    .iter()
                    .filter_map(|o| layout::object_checkpoint_dir(o))
                    .collect();
                dirs.into_iter().collect()
            }

            /// A state part stored in checkpoint directory `dir`.
            fn part_in(&self, dir: Epoch) -> String {
                let prefix = format!("{}/", self.layout.checkpoint_dir(dir));
                self.objects
                    .iter()
                    .find(|o| o.starts_with(&prefix) && !o.ends_with(layout::MANIFEST))
                    .unwrap_or_else(|| panic!("checkpoint directory {dir} holds no part"))
                    .clone()
            }

            fn delete_prefix(&mut self, prefix: &str) {
                let prefix = format!("{prefix}/");
                self.objects.retain(|o| !o.starts_with(&prefix));
            }

            fn apply(&mut self, op: Op) {
                match op {
                    Op::Checkpoint { complete, reuse } => self.checkpoint(complete, &reuse),
                    Op::Savepoint(i) => {
                        let complete = self.complete();
                        if complete.is_empty() {
                            return;
                        }
                        let epoch = complete[i.index(complete.len())];
                        let name = format!("sp{}", self.next_savepoint);
                        self.next_savepoint += 1;
                        // As `CheckpointStore::create_savepoint` copies it.
                        let mut copy = self.manifests[&epoch].clone();
                        for part in &mut copy.parts {
                            assert!(
                                self.objects.contains(&part.path),
                                "savepoint of {epoch}: {} is gone",
                                part.path
                            );
                            let to = self.layout.savepoint_part(
                                &name,
                                &part.operator,
                                &layout::savepoint_copy_name(part.worker, &part.path),
                            );
                            part.path = to.to_string();
                            self.objects.insert(part.path.clone());
                        }
                        self.objects
                            .insert(self.layout.savepoint_manifest(&name).to_string());
                        let copies: BTreeSet<&str> =
                            copy.parts.iter().map(|p| p.path.as_str()).collect();
                        assert_eq!(copies.len(), copy.parts.len(), "two parts share a copy");
                        // A savepoint's parts are its own: it references no checkpoint
                        // directory, so it keeps none from retention.
                        assert!(copy
                            .parts
                            .iter()
                            .all(|p| layout::object_checkpoint_dir(&p.path).is_none()));
                        self.savepoints.insert(name, copy);
                    }
                    Op::DeleteSavepoint(i) => {
                        if self.savepoints.is_empty() {
                            return;
                        }
                        let name = self
                            .savepoints
                            .keys()
                            .nth(i.index(self.savepoints.len()))
                            .unwrap()
                            .clone();
                        self.delete_prefix(self.layout.savepoint_dir(&name).as_ref());
                        self.savepoints.remove(&name);
                    }
                    Op::Restore(i) => {
                        let complete = self.complete();
                        if complete.is_empty() {
                            return;
                        }
                        let restored = complete[i.index(complete.len())];
                        for part in &self.manifests[&restored].parts {
                            assert!(
                                self.objects.contains(&part.path),
                                "restore of {restored}: {} is gone",
                                part.path
                            );
                        }
                        // `startup::abandoned`, then `CheckpointStore::abandon`.
                        for e in complete.iter().filter(|e| **e > restored) {
                            self.objects.remove(self.layout.manifest(*e).as_ref());
                            self.objects
                                .insert(self.layout.abandoned_manifest(*e).to_string());
                        }
                        self.generation = self.generation.next();
                        // The old generation's pass ended with it (aborted when its
                        // coordinator stops, fenced at its next manifest).
                        self.listed = None;
                        self.base = Some(restored);
                        self.uploaded.clear();
                    }
                    Op::Retention { retain, all_refs } => self.retention(retain, all_refs),
                    Op::LatePass => {
                        let Some((facts, dirs)) = self.listed.take() else {
                            return;
                        };
                        let plan = retention(&facts, &dirs, self.retain);
                        for e in &plan.demote {
                            self.objects.remove(self.layout.manifest(*e).as_ref());
                        }
                        for e in &plan.delete {
                            self.delete_prefix(self.layout.checkpoint_dir(*e).as_ref());
                        }
                        // What the newest complete checkpoint restores is still there.
                        if let Some(newest) = self.complete().last() {
                            for part in &self.manifests[newest].parts {
                                assert!(
                                    self.objects.contains(&part.path),
                                    "a late retention pass deleted {} of checkpoint {newest}: {plan:?}",
                                    part.path
                                );
                            }
                        }
                    }
                }
            }

            fn checkpoint(&mut self, complete: bool, reuse: &[Index]) {
                let epoch = Epoch(self.next_epoch);
                self.next_epoch += 1;
                let mut visible: BTreeSet<Epoch> = self.uploaded.clone();
                if let Some(base) = self.base {
                    visible.extend(referenced_dirs(&self.manifests[&base]));
                }
                let visible: Vec<Epoch> = visible.into_iter().collect();
                let mut reused = BTreeSet::new();
                if !visible.is_empty() {
                    reused.extend(reuse.iter().map(|i| visible[i.index(visible.len())]));
                }
                let own = self.layout.part(
                    epoch,
                    "count",
                    &layout::part_name(WorkerIndex(0), self.generation),
                );
                self.objects.insert(own.to_string());
                let mut parts = vec![PartEntry {
                    operator: "count".into(),
                    worker: WorkerIndex(0),
                    key_group_start: 0,
                    key_group_end: 1,
                    path: own.to_string(),
                    size: 1,
                    crc32: 0,
                    packed: Some(vec![]),
                }];
                // The operator's chain: the objects it still needs from older
                // directories, all named like the worker's objects (`w0-g<generation>`).
                for dir in &reused {
                    let path = self.part_in(*dir);
                    parts.insert(
                        parts.len() - 1,
                        PartEntry {
                            path,
                            ..parts[0].clone()
                        },
                    );
                }
                if !complete {
                    self.uploaded.insert(epoch);
                    return;
                }
                let manifest = Manifest {
                    job: "job".into(),
                    epoch,
                    generation: self.generation,
                    workers: 1,
                    key_groups: 1,
                    created_ms: 0,
                    barrier_ms: None,
                    operators: parts.iter().map(|p| p.operator.clone()).collect(),
                    parts,
                    sinks: vec![],
                    link: None,
                };
                let mut expected = reused.clone();
                expected.insert(epoch);
                assert_eq!(referenced_dirs(&manifest), expected);
                self.objects.insert(self.layout.manifest(epoch).to_string());
                self.manifests.insert(epoch, manifest);
                self.base = Some(epoch);
                self.uploaded.clear();
                // The coordinator starts a retention pass, unless one is running: the
                // pass lists storage now and deletes at a later `LatePass`.
                if self.listed.is_none() {
                    self.listed = Some((self.facts(self.retain, false), self.dirs()));
                }
            }

            /// Runs [`retention`] on the facts `apply_retention` reads, checks the plan
            /// against its specification, and carries it out.
            /// The facts `apply_retention` reads: complete checkpoints, newest first,
            /// with the references of the newest `retain` (of all with `all_refs`).
            fn facts(&self, retain: usize, all_refs: bool) -> Vec<(Epoch, BTreeSet<Epoch>)> {
                let kept = retain.max(1);
                self.complete()
                    .iter()
                    .rev()
                    .enumerate()
                    .map(|(i, e)| {
                        let refs = if all_refs || i < kept {
                            referenced_dirs(&self.manifests[e])
                        } else {
                            BTreeSet::new()
                        };
                        (*e, refs)
                    })
                    .collect()
            }

            fn retention(&mut self, retain: usize, all_refs: bool) {
                let complete = self.complete();
                let dirs = self.dirs();
                let kept = retain.max(1);
                let facts = self.facts(retain, all_refs);
                let plan = retention(&facts, &dirs, retain);
                let Some(&newest) = complete.last() else {
                    assert_eq!(plan, RetentionPlan::default());
                    return;
                };
                let retained: BTreeSet<Epoch> = complete.iter().rev().take(kept).copied().collect();
                let referenced: BTreeSet<Epoch> = retained
                    .iter()
                    .flat_map(|e| referenced_dirs(&self.manifests[e]))
                    .collect();
                for d in plan.delete.iter().chain(&plan.demote) {
                    assert!(
                        *d < newest,
                        "{d} is not older than the newest complete checkpoint {newest}: {plan:?}"
                    );
                }
                for d in &plan.delete {
                    assert!(
                        !referenced.contains(d),
                        "{d} is referenced by a retained checkpoint: {plan:?}"
                    );
                }
                // Every unreferenced directory older than the newest complete checkpoint
                // goes (whatever savepoints exist); nothing else does.
                let unreferenced: Vec<Epoch> = dirs
                    .iter()
                    .copied()
                    .filter(|d| *d < newest && !referenced.contains(d))
                    .collect();
                assert_eq!(plan.delete, unreferenced);
                let demote: Vec<Epoch> = complete
                    .iter()
                    .copied()
                    .filter(|e| !retained.contains(e) && referenced.contains(e))
                    .collect();
                assert_eq!(plan.demote, demote);
                let newer_before: Vec<String> = self.objects_newer_than(newest);
                for e in &plan.demote {
                    self.objects.remove(self.layout.manifest(*e).as_ref());
                }
                for e in &plan.delete {
                    self.delete_prefix(self.layout.checkpoint_dir(*e).as_ref());
                }
                assert_eq!(
                    self.objects_newer_than(newest),
                    newer_before,
                    "retention touched a checkpoint newer than {newest}"
                );
                assert_eq!(
                    self.complete().into_iter().collect::<BTreeSet<_>>(),
                    retained
                );
            }

            /// The objects of checkpoint directories newer than `epoch`.
            fn objects_newer_than(&self, epoch: Epoch) -> Vec<String> {
                self.objects
                    .iter()
                    .filter(|o| layout::object_checkpoint_dir(o).is_some_and(|d| d > epoch))
                    .cloned()
                    .collect()
            }

            /// What holds after every step: every complete checkpoint and every savepoint
            /// can be restored (all their parts exist), and so can the running
            /// generation's uploads.
            fn check(&self) {
                for e in self.complete() {
                    for part in &self.manifests[&e].parts {
                        assert!(
                            self.objects.contains(&part.path),
                            "complete checkpoint {e} lost {}",
                            part.path
                        );
                    }
                }
                for (name, sp) in &self.savepoints {
                    for part in &sp.parts {
                        assert!(
                            self.objects.contains(&part.path),
                            "savepoint {name} lost {}",
                            part.path
                        );
                    }
                }
                for e in &self.uploaded {
                    assert!(
                        self.dirs().contains(e),
                        "the running generation's upload {e} is gone"
                    );
                }
            }
        }

        proptest! {
            /// Over random histories of checkpoints (reusing parts of older ones),
            /// savepoints, restores and retention runs, retention deletes exactly the
            /// directories older than the newest complete checkpoint that no retained
            /// checkpoint references, demotes exactly the complete checkpoints beyond
            /// retention that retained ones reference, never touches anything newer than
            /// the newest complete checkpoint, and leaves every complete checkpoint and
            /// every savepoint restorable.
            #[test]
            fn retention_deletes_only_what_no_retained_checkpoint_references(
                retain in 0usize..4,
                ops in prop::collection::vec(op(), 1..60),
            ) {
                let mut model = Model::new(retain);
                for op in ops {
                    model.apply(op);
                    model.check();
                }
            }
        }
    }
}
