//! Start-up: what a run reads from the checkpoint store before its dataflow starts, and
//! the pure decisions it makes from that.
//!
//! ## Design
//!
//! `read_start` does the I/O: it probes the store, reads the generation markers and the
//! list of checkpoints, and (only when a restore is asked for) reads and verifies the
//! chosen checkpoint. Every decision is a pure function of what was read, tested without
//! any I/O:
//! - [`plan_start`]: this run's generation and what to restore;
//! - [`plan_epochs`]: whether the restored checkpoint fits the job, and the run's first
//!   epoch;
//! - [`abandoned`]: which newer checkpoints to abandon once the cluster is connected.
//!
//! Invariants:
//! - generations only grow: a run never reuses the number of an earlier run of the job,
//!   even when a supervisor starts counting at 0 again;
//! - a job that has complete checkpoints does not silently start from the beginning: it
//!   needs `--restore`, or the checkpoints deleted by hand;
//! - a run's epochs start after every epoch any earlier run used, so nothing of a
//!   crashed run is mistaken for this run's;
//! - complete checkpoints newer than the restored one are abandoned (their uncommitted
//!   output is about to be aborted), so a later `--restore latest` cannot pick them.

use weir_checkpoint::store::VerifiedPart;
use weir_checkpoint::{
    CheckpointError, CheckpointStore, Epoch, Generation, Manifest, PartEntry, RestoreTarget,
};

use crate::config::JobConfig;
use crate::error::{Result, RuntimeError};
use crate::restore::RestoredParts;

/// What a run knows before deciding how to start: its settings and what the store holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StartFacts {
    /// The job's name.
    pub job: String,
    /// The checkpoint URL, for messages.
    pub url: String,
    /// The generation a supervisor passed (`--generation`), if any.
    pub requested_generation: Option<Generation>,
    /// Processes in the cluster.
    pub processes: usize,
    /// Generations whose markers the store holds.
    pub markers: Vec<Generation>,
    /// Epochs of the complete checkpoints (those with a manifest), ascending.
    pub complete: Vec<Epoch>,
    /// Epochs of every checkpoint directory, complete or not.
    pub all: Vec<Epoch>,
    /// What the run is asked to restore.
    pub restore: Option<RestoreTarget>,
}

/// How a run starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StartPlan {
    /// This run's generation.
    pub generation: Generation,
    /// What to restore.
    pub restore: RestoreStep,
}

/// What a run restores.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RestoreStep {
    /// Nothing: the job starts from the beginning.
    Fresh,
    /// The checkpoint `target` resolves to. With `fresh_if_none`, a store without any
    /// complete checkpoint means a fresh start: a restarted generation whose predecessor
    /// died before its first checkpoint.
    Resolve {
        /// The requested checkpoint or savepoint.
        target: RestoreTarget,
        /// Whether finding no checkpoint at all starts the job from the beginning.
        fresh_if_none: bool,
    },
}

/// Decides the run's generation and what it restores.
///
/// The generation is the requested one, or one past the newest marker if that is not
/// larger (a second supervisor over the same store continues the numbering); without a
/// request, it is one past the newest marker. That is the oldest generation the run may
/// take: it then claims one in the store (`weir_checkpoint::protocol::claim_target`),
/// and in a cluster the processes agree on it when they connect (`crate::cluster`).
pub fn plan_start(facts: &StartFacts) -> Result<StartPlan> {
    let newest = facts.markers.iter().copied().max();
    let generation = match facts.requested_generation {
        None => newest.map_or(Generation(0), Generation::next),
        Some(g) => match newest {
            Some(n) if n >= g => {
                tracing::info!(
                    requested = %g,
                    generation = %n.next(),
                    "generation {g} already ran: continuing the numbering"
                );
                n.next()
            }
            _ => g,
        },
    };
    let restore = match &facts.restore {
        None if !facts.complete.is_empty() => {
            return Err(RuntimeError::config(
                "restore",
                format!(
                    "job `{}` already has {} complete checkpoint(s) under `{}`: pass --restore latest to resume, or delete them with `weir checkpoints delete --all`",
                    facts.job,
                    facts.complete.len(),
                    facts.url
                ),
            ));
        }
        None => RestoreStep::Fresh,
        Some(target) => RestoreStep::Resolve {
            target: target.clone(),
            // A process restarted by `weir launch` (an earlier generation announced
            // itself) whose predecessor committed no checkpoint, and a cluster without a
            // supervisor (whose processes are always started with `--restore latest`, the
            // first time too), start from the beginning when there is no committed
            // checkpoint yet (there may be manifests that were never committed: the
            // restore passes over them). What a predecessor restored explicitly is
            // restored again instead (`protocol::restore_again`).
            fresh_if_none: (facts.processes > 1
                || !facts.markers.is_empty()
                || facts
                    .requested_generation
                    .is_some_and(|g| g > Generation(0)))
                && *target == RestoreTarget::Latest,
        },
    };
    Ok(StartPlan {
        generation,
        restore,
    })
}

/// The generations newer than the newest complete checkpoint's generation that recorded
/// a failure, oldest first, each with its first recorded error: how many times in a row
/// the job failed without completing a checkpoint. A generation ended from outside
/// (every process killed) records nothing and is not counted.
pub fn failed_in_a_row(
    failures: &[(Generation, usize, String)],
    newest_checkpoint: Option<Generation>,
) -> Vec<(Generation, String)> {
    let mut out: Vec<(Generation, String)> = Vec::new();
    for (generation, _, error) in failures {
        if newest_checkpoint.is_some_and(|g| *generation <= g) {
            continue;
        }
        if out.last().is_none_or(|(g, _)| g != generation) {
            out.push((*generation, error.clone()));
        }
    }
    out
}

/// Refuses to start a job whose last `max` generations all failed without completing a
/// checkpoint (`max` 0 never refuses): restarting it again would only fail again.
pub fn check_failed_generations(failed: &[(Generation, String)], max: u32) -> Result<()> {
    if max == 0 || failed.len() < max as usize {
        return Ok(());
    }
    let (first, last) = (&failed[0], &failed[failed.len() - 1]);
    Err(RuntimeError::config(
        "max-failed-generations",
        format!(
            "{} generations in a row ({} to {}) failed without completing a checkpoint; the last failure: {}; fix its cause, then delete the failure records under `<checkpoint-dir>/<job>/failures/` (or raise --max-failed-generations) and start again",
            failed.len(),
            first.0,
            last.0,
            last.1.trim()
        ),
    ))
}

/// The checkpoint a run restores, as far as the epoch plan needs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RestoredCheckpoint {
    /// Its epoch.
    pub epoch: Epoch,
    /// The key groups it was written with.
    pub key_groups: u32,
}

/// Where a run's epochs start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EpochPlan {
    /// The run's first epoch.
    pub first_epoch: Epoch,
}

/// The checkpoints a new generation counts as seen when it takes its place in the job's
/// history (`CheckpointStore::seal`): every complete one listed at the start, except
/// those the restore found uncommitted. A link that commits one of those afterwards (an
/// older generation's coordinator still running) is then a newer checkpoint to restore,
/// never one to overwrite.
pub fn seen_checkpoints(complete: &[Epoch], uncommitted: &[Epoch]) -> Vec<Epoch> {
    complete
        .iter()
        .copied()
        .filter(|e| !uncommitted.contains(e))
        .collect()
}

/// The complete checkpoints a run abandons: every one newer than the checkpoint it
/// restored (`restored`, 0 on a fresh start). Their uncommitted output is about to be
/// aborted, so a later `--restore latest` must not pick them. The list is taken again
/// once the cluster is connected and this run's generation is announced, so that it also
/// covers a checkpoint an older generation completed in between.
pub fn abandoned(complete: &[Epoch], restored: Epoch) -> Vec<Epoch> {
    complete.iter().copied().filter(|e| *e > restored).collect()
}

/// Checks the restored checkpoint against the job (`key_groups` configured, `workers` in
/// the cluster) and plans the run's epochs.
pub fn plan_epochs(
    facts: &StartFacts,
    restored: Option<RestoredCheckpoint>,
    key_groups: u32,
    workers: usize,
) -> Result<EpochPlan> {
    if let Some(r) = restored {
        if r.key_groups != key_groups {
            return Err(RuntimeError::Mismatch {
                epoch: r.epoch,
                reason: format!("it was written with {} key groups and the job is configured with {key_groups}; key groups are fixed at the first start (set --key-groups {})", r.key_groups, r.key_groups),
            });
        }
        if workers as u32 > r.key_groups {
            return Err(RuntimeError::Mismatch {
                epoch: r.epoch,
                reason: format!(
                    "{workers} workers exceed its {} key groups (the maximum parallelism)",
                    r.key_groups
                ),
            });
        }
    }
    let first_epoch = facts
        .all
        .iter()
        .copied()
        .chain(restored.map(|r| r.epoch))
        .max()
        .map_or(Epoch(1), Epoch::next);
    Ok(EpochPlan { first_epoch })
}

/// What a run found out before starting the dataflow.
pub(crate) struct Start {
    pub(crate) store: Option<CheckpointStore>,
    pub(crate) restored: Option<Manifest>,
    /// The restored checkpoint's parts this process's workers read, verified.
    pub(crate) parts: Vec<VerifiedPart>,
    pub(crate) generation: Generation,
    pub(crate) epochs: EpochPlan,
    /// The complete checkpoints listed when the start was planned.
    pub(crate) seen: Vec<Epoch>,
    /// Generations of the job that announced themselves before this run.
    pub(crate) earlier_generations: usize,
}

/// Reads what the store holds and plans the run (see the module's documentation).
pub(crate) fn read_start(config: &JobConfig, rt: &tokio::runtime::Runtime) -> Result<Start> {
    if !config.checkpointing() {
        return Ok(Start {
            store: None,
            restored: None,
            parts: Vec::new(),
            generation: Generation(config.generation.unwrap_or(0)),
            epochs: EpochPlan {
                first_epoch: Epoch(1),
            },
            seen: Vec::new(),
            earlier_generations: 0,
        });
    }
    let store = CheckpointStore::open(&config.checkpoint_url, &config.job)?;
    rt.block_on(async {
        store.probe().await?;
        // Every process reads the same markers (the new generation is announced only once
        // the cluster is connected), so they all agree on the generation.
        let markers = store.generations().await?;
        let (complete, all) = store.list().await?;
        let facts = StartFacts {
            job: config.job.clone(),
            url: config.checkpoint_url.clone(),
            requested_generation: config.generation.map(Generation),
            processes: config.processes,
            markers,
            complete,
            all,
            restore: config.restore.clone(),
        };
        let mut plan = plan_start(&facts)?;
        // The newest committed checkpoint that reads (a damaged one is skipped, as
        // restore skips it), and the manifests newer than it that were never committed.
        let mut newest = None;
        let mut passed_over = Vec::new();
        for epoch in facts.complete.iter().rev() {
            if let Ok(m) = store.read_manifest(*epoch).await {
                if !matches!(store.is_committed(&m).await, Ok(true)) {
                    passed_over.push(*epoch);
                    continue;
                }
                newest = Some(m.generation);
                break;
            }
        }
        if config.max_failed_generations > 0 {
            let failed = failed_in_a_row(&store.failures().await?, newest);
            check_failed_generations(&failed, config.max_failed_generations)?;
        }
        // A restart after an explicit restore (a savepoint, a checkpoint by epoch) that
        // committed no checkpoint since restores the same again: the latest checkpoint,
        // if any, predates it.
        // (The uncommitted manifests passed over on the way are then not counted as seen.)
        let latest = matches!(
            &plan.restore,
            RestoreStep::Resolve {
                target: RestoreTarget::Latest,
                ..
            }
        );
        let again = match latest {
            true => store.newest_restore().await?,
            false => None,
        }
        .filter(|(by, _)| weir_checkpoint::protocol::restore_again(newest, Some(*by)));
        if let Some((by, target)) = again {
            tracing::warn!(
                restored_by = %by,
                "no checkpoint was committed since generation {by} restored `{target}`: restoring it again"
            );
            plan.restore = RestoreStep::Resolve {
                target,
                fresh_if_none: false,
            };
        } else {
            passed_over.clear();
        }
        // Every part of the chosen checkpoint is read and verified here, so that every
        // process agrees on it (and `latest` falls back past a damaged one); the parts
        // this process's workers restore from are kept, so that they are read only once.
        let (local, peers) = local_workers(config);
        let wanted =
            |e: &PartEntry| RestoredParts::wanted(e, local.clone(), config.key_groups, peers);
        let (restored, parts, uncommitted) = match plan.restore {
            RestoreStep::Fresh => (None, Vec::new(), Vec::new()),
            RestoreStep::Resolve {
                target,
                fresh_if_none,
            } => match store.resolve_restore_keeping(&target, &wanted).await {
                Ok(point) => {
                    let mut uncommitted = point.uncommitted;
                    uncommitted.extend(passed_over);
                    (Some(point.manifest), point.parts, uncommitted)
                }
                Err(CheckpointError::NoCheckpoint { uncommitted, .. }) if fresh_if_none => {
                    tracing::warn!(
                        generation = %plan.generation,
                        "no checkpoint yet: the restarted job starts from the beginning"
                    );
                    (None, Vec::new(), uncommitted)
                }
                Err(e) => return Err(e.into()),
            },
        };
        let workers = config.workers * config.processes;
        let epochs = plan_epochs(
            &facts,
            restored.as_ref().map(|m| RestoredCheckpoint {
                epoch: m.epoch,
                key_groups: m.key_groups,
            }),
            config.key_groups,
            workers,
        )?;
        if let Some(m) = &restored {
            tracing::info!(
                epoch = %m.epoch,
                written_by = m.workers,
                workers,
                generation = %plan.generation,
                "restoring"
            );
        }
        Ok(Start {
            store: Some(store),
            restored,
            parts,
            generation: plan.generation,
            epochs,
            seen: seen_checkpoints(&facts.complete, &uncommitted),
            earlier_generations: facts.markers.len(),
        })
    })
}

/// The global indexes of this process's workers, and the number of workers in the
/// cluster (timely numbers the workers of process `p` from `p * workers`).
pub(crate) fn local_workers(config: &JobConfig) -> (std::ops::Range<usize>, usize) {
    let first = config.process * config.workers;
    (
        first..first + config.workers,
        config.processes * config.workers,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts() -> StartFacts {
        StartFacts {
            job: "wc".into(),
            url: "/chk".into(),
            requested_generation: None,
            processes: 1,
            markers: vec![],
            complete: vec![],
            all: vec![],
            restore: None,
        }
    }

    #[test]
    fn a_first_start_is_generation_0_and_fresh_from_epoch_1() {
        let f = facts();
        let plan = plan_start(&f).unwrap();
        assert_eq!(plan.generation, Generation(0));
        assert_eq!(plan.restore, RestoreStep::Fresh);
        let epochs = plan_epochs(&f, None, 128, 1).unwrap();
        assert_eq!(
            epochs,
            EpochPlan {
                first_epoch: Epoch(1)
            }
        );
    }

    #[test]
    fn checkpoints_found_uncommitted_are_not_counted_as_seen() {
        let e = Epoch;
        assert_eq!(
            seen_checkpoints(&[e(1), e(2), e(3)], &[e(3)]),
            vec![e(1), e(2)]
        );
        assert_eq!(seen_checkpoints(&[e(1)], &[e(1)]), Vec::<Epoch>::new());
        assert_eq!(seen_checkpoints(&[e(1), e(2)], &[]), vec![e(1), e(2)]);
    }

    #[test]
    fn generations_only_grow_past_every_marker() {
        let f = StartFacts {
            markers: vec![Generation(0), Generation(1), Generation(4)],
            ..facts()
        };
        assert_eq!(plan_start(&f).unwrap().generation, Generation(5));
        // A supervisor that starts counting at 0 again continues the numbering.
        let f = StartFacts {
            requested_generation: Some(Generation(2)),
            processes: 2,
            ..f
        };
        assert_eq!(plan_start(&f).unwrap().generation, Generation(5));
        let f = StartFacts {
            requested_generation: Some(Generation(9)),
            ..f
        };
        assert_eq!(plan_start(&f).unwrap().generation, Generation(9));
    }

    #[test]
    fn a_cluster_without_a_generation_proposes_one_past_the_newest_marker() {
        let f = StartFacts {
            processes: 2,
            markers: vec![Generation(0), Generation(3)],
            restore: Some(RestoreTarget::Latest),
            ..facts()
        };
        let plan = plan_start(&f).unwrap();
        assert_eq!(plan.generation, Generation(4));
        // A restarted cluster whose predecessor completed no checkpoint starts afresh.
        assert_eq!(
            plan.restore,
            RestoreStep::Resolve {
                target: RestoreTarget::Latest,
                fresh_if_none: true
            }
        );
        let first = StartFacts {
            processes: 2,
            restore: Some(RestoreTarget::Latest),
            ..facts()
        };
        let plan = plan_start(&first).unwrap();
        assert_eq!(plan.generation, Generation(0));
        // Its first start too: every process of a cluster is started the same way.
        assert_eq!(
            plan.restore,
            RestoreStep::Resolve {
                target: RestoreTarget::Latest,
                fresh_if_none: true
            }
        );
    }

    #[test]
    fn only_generations_after_the_newest_checkpoint_count_as_failed_in_a_row() {
        let failures = vec![
            (Generation(1), 0, "old".to_string()),
            (Generation(3), 0, "peer lost".to_string()),
            (Generation(3), 1, "sink broken".to_string()),
            (Generation(4), 1, "sink broken".to_string()),
        ];
        let failed = failed_in_a_row(&failures, Some(Generation(2)));
        assert_eq!(
            failed,
            vec![
                (Generation(3), "peer lost".to_string()),
                (Generation(4), "sink broken".to_string())
            ]
        );
        assert_eq!(failed_in_a_row(&failures, None).len(), 3);
        assert!(failed_in_a_row(&failures, Some(Generation(4))).is_empty());
        assert!(check_failed_generations(&failed, 3).is_ok());
        assert!(check_failed_generations(&failed, 0).is_ok());
        let e = check_failed_generations(&failed, 2).unwrap_err();
        assert!(e.is_permanent(), "{e}");
        let text = e.to_string();
        assert!(
            text.contains("2 generations in a row (3 to 4)") && text.contains("sink broken"),
            "{text}"
        );
    }

    #[test]
    fn complete_checkpoints_without_restore_are_refused_with_the_fix() {
        let f = StartFacts {
            complete: vec![Epoch(3)],
            all: vec![Epoch(3), Epoch(4)],
            ..facts()
        };
        let e = plan_start(&f).unwrap_err().to_string();
        assert!(
            e.contains("--restore latest") && e.contains("weir checkpoints delete"),
            "{e}"
        );
    }

    #[test]
    fn only_a_restarted_generation_may_find_no_checkpoint_and_start_fresh() {
        let restore = Some(RestoreTarget::Latest);
        let first = StartFacts {
            restore: restore.clone(),
            ..facts()
        };
        assert_eq!(
            plan_start(&first).unwrap().restore,
            RestoreStep::Resolve {
                target: RestoreTarget::Latest,
                fresh_if_none: false
            }
        );
        let restarted = StartFacts {
            requested_generation: Some(Generation(1)),
            markers: vec![Generation(0)],
            ..first.clone()
        };
        // `weir launch` passes no generation: the marker of the generation before tells.
        let relaunched = StartFacts {
            markers: vec![Generation(0)],
            ..first.clone()
        };
        assert_eq!(
            plan_start(&relaunched).unwrap().restore,
            RestoreStep::Resolve {
                target: RestoreTarget::Latest,
                fresh_if_none: true
            }
        );
        assert_eq!(
            plan_start(&restarted).unwrap().restore,
            RestoreStep::Resolve {
                target: RestoreTarget::Latest,
                fresh_if_none: true
            }
        );
        // A restarted generation may also when the manifests it finds were never
        // committed (the restore tells: `NoCheckpoint` lists them).
        let left_uncommitted = StartFacts {
            complete: vec![Epoch(1)],
            all: vec![Epoch(1)],
            ..restarted.clone()
        };
        assert_eq!(
            plan_start(&left_uncommitted).unwrap().restore,
            RestoreStep::Resolve {
                target: RestoreTarget::Latest,
                fresh_if_none: true
            }
        );
        // An explicit epoch never falls back to a fresh start.
        let epoch = StartFacts {
            restore: Some(RestoreTarget::Epoch(Epoch(3))),
            ..restarted
        };
        assert_eq!(
            plan_start(&epoch).unwrap().restore,
            RestoreStep::Resolve {
                target: RestoreTarget::Epoch(Epoch(3)),
                fresh_if_none: false
            }
        );
    }

    #[test]
    fn newer_checkpoints_are_abandoned_and_epochs_start_after_every_used_one() {
        let f = StartFacts {
            complete: vec![Epoch(2), Epoch(5), Epoch(8)],
            all: vec![Epoch(2), Epoch(5), Epoch(8), Epoch(9)],
            restore: Some(RestoreTarget::Epoch(Epoch(5))),
            ..facts()
        };
        let plan = plan_epochs(
            &f,
            Some(RestoredCheckpoint {
                epoch: Epoch(5),
                key_groups: 128,
            }),
            128,
            4,
        )
        .unwrap();
        assert_eq!(
            plan,
            EpochPlan {
                first_epoch: Epoch(10)
            }
        );
        assert_eq!(abandoned(&f.complete, Epoch(5)), vec![Epoch(8)]);
        // A savepoint older than every checkpoint abandons them all.
        assert_eq!(abandoned(&f.complete, Epoch(1)), [2, 5, 8].map(Epoch));
        assert!(abandoned(&f.complete, Epoch(8)).is_empty());
    }

    #[test]
    fn a_restore_at_other_key_groups_or_more_workers_than_key_groups_is_a_mismatch() {
        let f = StartFacts {
            complete: vec![Epoch(3)],
            all: vec![Epoch(3)],
            restore: Some(RestoreTarget::Latest),
            ..facts()
        };
        let r = Some(RestoredCheckpoint {
            epoch: Epoch(3),
            key_groups: 64,
        });
        let e = plan_epochs(&f, r, 128, 2).unwrap_err().to_string();
        assert!(
            e.contains("64 key groups") && e.contains("--key-groups 64"),
            "{e}"
        );
        let e = plan_epochs(&f, r, 64, 65).unwrap_err().to_string();
        assert!(e.contains("65 workers exceed its 64 key groups"), "{e}");
        assert!(plan_epochs(&f, r, 64, 64).is_ok());
    }
}
