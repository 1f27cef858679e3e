//! The one place that names every checkpoint object.
//!
//! ```text
//! <root>/<job>/chk-<epoch:020>/<operator>/<part>   state and source positions
//! <root>/<job>/chk-<epoch:020>/_MANIFEST           written last; committed by the link it names
//! <root>/<job>/links/<node>                         the successor of a checkpoint (see `protocol::Node`)
//! <root>/<job>/rendezvous/<generation:010>-p<i>     process i's claim on a generation
//! <root>/<job>/_STOP                                a request to stop with a final savepoint
//! <root>/<job>/savepoints/<name>/...                named copies of a checkpoint, kept until deleted by hand
//! <root>/<job>/chk-<epoch:020>/_ABANDONED_MANIFEST a checkpoint newer than a restored one, set aside
//! <root>/<job>/generations/<generation:010>         fencing markers, one per started generation
//! <root>/<job>/ledger/<source>/w<worker>-g<gen>    at-most-once read positions
//! <root>/<job>/sinks/<sink>/pending/<handle>        a write-ahead sink's output until published
//! <root>/<job>/sinks/<sink>/<marker>/w<worker>      a write-ahead sink's progress markers
//! <root>/<job>/_probe-<tag>                         written and deleted at start to test access
//! ```
//!
//! Parts are named `w<worker>-g<generation>` by the worker and generation that wrote them
//! ([`part_name`]); a savepoint's copy of a part is `w<worker>-<original name>`.
//!
//! Epochs are zero-padded so that a lexical listing is also an epoch order.

use object_store::path::Path;

use crate::ids::{Epoch, Generation, WorkerIndex};

/// Name of the manifest object inside a checkpoint directory.
pub const MANIFEST: &str = "_MANIFEST";
/// Name a set-aside manifest gets (see [`Layout::abandoned_manifest`]).
pub const ABANDONED_MANIFEST: &str = "_ABANDONED_MANIFEST";

/// Builds the object paths of one job under a root prefix.
#[derive(Debug, Clone)]
pub struct Layout {
    job: String,
}

impl Layout {
    /// The layout of job `job`; paths are relative to the store's root.
    pub fn new(job: &str) -> Self {
        Layout {
            job: job.to_string(),
        }
    }

    /// The job's name.
    pub fn job(&self) -> &str {
        &self.job
    }

    /// The job's top-level prefix.
    pub fn job_root(&self) -> Path {
        Path::from(self.job.as_str())
    }

    /// The directory of checkpoint `epoch`.
    pub fn checkpoint_dir(&self, epoch: Epoch) -> Path {
        Path::from(format!("{}/{}", self.job, checkpoint_dir_name(epoch)))
    }

    /// A state or position part of checkpoint `epoch`.
    pub fn part(&self, epoch: Epoch, operator: &str, part: &str) -> Path {
        Path::from(format!(
            "{}/{}/{}/{}",
            self.job,
            checkpoint_dir_name(epoch),
            operator,
            part
        ))
    }

    /// The manifest of checkpoint `epoch`.
    pub fn manifest(&self, epoch: Epoch) -> Path {
        Path::from(format!(
            "{}/{}/{}",
            self.job,
            checkpoint_dir_name(epoch),
            MANIFEST
        ))
    }

    /// Where the manifest of checkpoint `epoch` goes when a restore of an older checkpoint
    /// abandons it: kept for inspection, no longer a complete checkpoint.
    pub fn abandoned_manifest(&self, epoch: Epoch) -> Path {
        Path::from(format!(
            "{}/{}/{ABANDONED_MANIFEST}",
            self.job,
            checkpoint_dir_name(epoch)
        ))
    }

    /// A probe object, written and deleted to check that the store can be written.
    pub fn probe(&self, tag: &str) -> Path {
        Path::from(format!("{}/_probe-{tag}", self.job))
    }

    /// The prefix of a write-ahead sink's objects.
    pub fn sink_root(&self, sink: &str) -> Path {
        Path::from(format!("{}/sinks/{sink}", self.job))
    }

    /// The prefix of a write-ahead sink's pending (not yet published) outputs.
    pub fn sink_pending(&self, sink: &str) -> Path {
        Path::from(format!("{}/sinks/{sink}/pending", self.job))
    }

    /// A write-ahead sink's marker of kind `kind` (`committed`, ...) for one worker.
    pub fn sink_marker(&self, sink: &str, kind: &str, worker: WorkerIndex) -> Path {
        Path::from(format!("{}/sinks/{sink}/{kind}/w{worker}", self.job))
    }

    /// The at-most-once ledger entry of a source, written by one worker of a generation.
    pub fn ledger_entry(&self, source: &str, worker: WorkerIndex, generation: Generation) -> Path {
        self.ledger(source, &part_name(worker, generation))
    }

    /// The object a stop request is written to (see `CheckpointStore::request_stop`).
    pub fn stop_request(&self) -> Path {
        Path::from(format!("{}/_STOP", self.job))
    }

    /// The prefix that holds generation markers.
    pub fn generations(&self) -> Path {
        Path::from(format!("{}/generations", self.job))
    }

    /// The marker object of `generation`.
    pub fn generation_marker(&self, generation: Generation) -> Path {
        Path::from(format!("{}/generations/{:010}", self.job, generation.0))
    }

    /// The prefix holding the records of explicit restores (a savepoint or an epoch).
    pub fn restores(&self) -> Path {
        Path::from(format!("{}/restores", self.job))
    }

    /// The record that `generation` restored an explicitly named checkpoint or savepoint.
    pub fn restore_record(&self, generation: Generation) -> Path {
        Path::from(format!("{}/restores/{:010}", self.job, generation.0))
    }

    /// The prefix holding the links between checkpoints (see `protocol::Node`).
    pub fn links(&self) -> Path {
        Path::from(format!("{}/links", self.job))
    }

    /// The link object of the node named `node` (`Node::name` in the protocol module):
    /// `links/<node>`.
    pub fn link(&self, node: &str) -> Path {
        Path::from(format!("{}/links/{node}", self.job))
    }

    /// The prefix holding the rendezvous claims of every generation (see
    /// [`Layout::claim`]).
    pub fn claims(&self) -> Path {
        Path::from(format!("{}/rendezvous", self.job))
    }

    /// The claim of process `process` on `generation`, created if absent by the one
    /// process incarnation that takes that index in that generation:
    /// `rendezvous/<generation, 10 digits>-p<process>`.
    pub fn claim(&self, generation: Generation, process: usize) -> Path {
        Path::from(format!(
            "{}/rendezvous/{:010}-p{process}",
            self.job, generation.0
        ))
    }

    /// The prefix holding the failure records of generations (see
    /// [`Layout::failure`]).
    pub fn failures(&self) -> Path {
        Path::from(format!("{}/failures", self.job))
    }

    /// The record of why process `process` of `generation` failed:
    /// `failures/<generation, 10 digits>-p<process>`.
    pub fn failure(&self, generation: Generation, process: usize) -> Path {
        Path::from(format!(
            "{}/failures/{:010}-p{process}",
            self.job, generation.0
        ))
    }

    /// The prefix holding every savepoint.
    pub fn savepoints(&self) -> Path {
        Path::from(format!("{}/savepoints", self.job))
    }

    /// The directory of savepoint `name`.
    pub fn savepoint_dir(&self, name: &str) -> Path {
        Path::from(format!("{}/savepoints/{name}", self.job))
    }

    /// A part of savepoint `name`.
    pub fn savepoint_part(&self, name: &str, operator: &str, part: &str) -> Path {
        Path::from(format!("{}/savepoints/{name}/{operator}/{part}", self.job))
    }

    /// The manifest of savepoint `name`.
    pub fn savepoint_manifest(&self, name: &str) -> Path {
        Path::from(format!("{}/savepoints/{name}/{MANIFEST}", self.job))
    }

    /// The at-most-once read-position ledger of one split of a source.
    pub fn ledger(&self, source: &str, split: &str) -> Path {
        Path::from(format!("{}/ledger/{source}/{split}", self.job))
    }

    /// The prefix holding every ledger entry of a source.
    pub fn ledger_root(&self, source: &str) -> Path {
        Path::from(format!("{}/ledger/{source}", self.job))
    }
}

/// The name of a part written by `worker` in `generation`: `w<worker>-g<generation>`.
pub fn part_name(worker: WorkerIndex, generation: Generation) -> String {
    format!("w{worker}-g{generation}")
}

/// The name of a savepoint's copy of a part named `file` written by `worker`.
pub fn savepoint_part_name(worker: WorkerIndex, file: &str) -> String {
    format!("w{worker}-{file}")
}

/// The name a savepoint gives its copy of the object at `path`, a part that `worker`
/// wrote: the object's file name after the epoch of the checkpoint directory it lies in,
/// as [`savepoint_part_name`] names it. The objects of a delta chain share their file
/// name across checkpoint directories, so the epoch keeps their copies apart.
pub fn savepoint_copy_name(worker: WorkerIndex, path: &str) -> String {
    let file = path.rsplit('/').next().unwrap_or(path);
    match object_checkpoint_dir(path) {
        Some(dir) => savepoint_part_name(worker, &format!("e{}-{file}", dir.0)),
        None => savepoint_part_name(worker, file),
    }
}

/// Checks that a savepoint name is usable as one path segment.
pub fn check_savepoint_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
    if ok {
        Ok(())
    } else {
        Err(format!("savepoint name `{name}` must be non-empty, not start with `.`, and use only letters, digits, `-`, `_` and `.`"))
    }
}

/// `chk-<epoch>`, zero-padded to 20 digits.
pub fn checkpoint_dir_name(epoch: Epoch) -> String {
    format!("chk-{:020}", epoch.0)
}

/// The epoch of a `chk-<epoch>` directory name, if it is one.
pub fn parse_checkpoint_dir(name: &str) -> Option<Epoch> {
    name.strip_prefix("chk-").and_then(|d| d.parse().ok())
}

/// The checkpoint directory an object of the store lies in: `<job>/chk-<epoch>/...`, the
/// segment right after the job's name, so that a job or operator named like a checkpoint
/// directory is never taken for one. `None` for objects outside checkpoint directories
/// (savepoints, links, markers).
pub fn object_checkpoint_dir(path: &str) -> Option<Epoch> {
    path.split('/').nth(1).and_then(parse_checkpoint_dir)
}

/// The generation of a generation marker's file name, if it is one.
pub fn parse_generation_marker(name: &str) -> Option<Generation> {
    name.parse().ok()
}

/// The generation and process of a failure record's name (see [`Layout::failure`]),
/// or of a rendezvous claim's (see [`Layout::claim`]), which have the same form.
pub fn parse_failure(name: &str) -> Option<(Generation, usize)> {
    let (generation, process) = name.split_once("-p")?;
    Some((Generation(generation.parse().ok()?), process.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checkpoint_names_sort_by_epoch() {
        let mut names: Vec<String> = [10u64, 9, 100, 1]
            .iter()
            .map(|e| checkpoint_dir_name(Epoch(*e)))
            .collect();
        names.sort();
        let epochs: Vec<Epoch> = names
            .iter()
            .map(|n| parse_checkpoint_dir(n).unwrap())
            .collect();
        assert_eq!(epochs, [1, 9, 10, 100].map(Epoch));
    }

    #[test]
    fn an_objects_checkpoint_directory_is_the_segment_after_the_job() {
        // A job and an operator named like checkpoint directories.
        let l = Layout::new("chk-1");
        let part = l.part(Epoch(7), "chk-2", "w0-g0");
        assert_eq!(object_checkpoint_dir(part.as_ref()), Some(Epoch(7)));
        let saved = l.savepoint_part("sp", "chk-2", "w0-e7-w0-g0");
        assert_eq!(object_checkpoint_dir(saved.as_ref()), None);
        assert_eq!(object_checkpoint_dir("chk-1"), None);
    }

    #[test]
    fn paths_nest_under_the_job() {
        let l = Layout::new("wc");
        assert_eq!(
            l.manifest(Epoch(3)).as_ref(),
            "wc/chk-00000000000000000003/_MANIFEST"
        );
        assert_eq!(
            l.part(Epoch(3), "count", "w1").as_ref(),
            "wc/chk-00000000000000000003/count/w1"
        );
        assert_eq!(parse_checkpoint_dir("_MANIFEST"), None);
        assert_eq!(
            l.abandoned_manifest(Epoch(3)).as_ref(),
            "wc/chk-00000000000000000003/_ABANDONED_MANIFEST"
        );
        assert_eq!(
            l.ledger_entry("in", WorkerIndex(2), Generation(5)).as_ref(),
            "wc/ledger/in/w2-g5"
        );
        assert_eq!(
            l.sink_marker("out", "committed", WorkerIndex(1)).as_ref(),
            "wc/sinks/out/committed/w1"
        );
        assert_eq!(l.sink_pending("out").as_ref(), "wc/sinks/out/pending");
        assert_eq!(l.probe("7").as_ref(), "wc/_probe-7");
        assert_eq!(part_name(WorkerIndex(1), Generation(4)), "w1-g4");
        assert_eq!(savepoint_part_name(WorkerIndex(1), "w1-g4"), "w1-w1-g4");
        assert_eq!(
            savepoint_copy_name(WorkerIndex(1), "wc/chk-7/counts/w1-g4"),
            "w1-e7-w1-g4"
        );
        // A job named like a checkpoint directory is not taken for one.
        assert_eq!(
            savepoint_copy_name(WorkerIndex(0), "chk-3/savepoints/s/counts/w0-x"),
            "w0-w0-x"
        );
    }
}
