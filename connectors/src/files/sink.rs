//! The transactional file sink: JSON lines, visible only once committed.
//!
//! Delivery contract. Each worker writes each epoch's records to its own staged file,
//! `DIR/.staging/<sink>-e<epoch>-g<generation>-w<worker>.jsonl`. Pre-commit flushes
//! and fsyncs it. Commit renames it atomically to `DIR/<same name>` and fsyncs the
//! directory; a reader of `DIR/*.jsonl` therefore sees whole epochs or nothing. With
//! exactly-once delivery the commit happens only after the checkpoint that covers the
//! epoch is complete; restore commits staged files of the restored checkpoint and
//! deletes every other staged file of an earlier generation. With at-least-once and
//! at-most-once delivery each epoch is committed as soon as it ends.
//!
//! ## Design
//!
//! Invariants: a file under `DIR/` is always a whole epoch of one worker (renames are
//! atomic and the directory is fsynced); commit is idempotent (a file already renamed is
//! committed); a staged file that is neither staged nor committed when its commit comes
//! is [`crate::ConnectorError::LostOutput`].

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Serialize;
use timely::dataflow::Stream;
use weir_runtime::{
    Committer, Job, JobContext, Output, OutputId, Result, RuntimeError, TwoPhaseSink,
};

use crate::error::ConnectorError;

/// A sink that writes records as JSON lines into `dir` through a two-phase commit: each
/// worker's output of an epoch is one file, visible once the checkpoint that covers it is
/// complete.
///
/// # Examples
///
/// ```
/// use timely::dataflow::operators::ToStream;
/// use weir_connectors::files;
///
/// let out = tempfile::tempdir().unwrap();
/// let dir = out.path().to_path_buf();
/// weir_runtime::run(weir_runtime::JobConfig::thread("doc-sink"), move |job| {
///     job.flow(vec![1u64, 2, 3].to_stream(job.scope())).sink("out", files::jsonl(&dir))
/// }).unwrap();
/// let mut lines: Vec<String> = std::fs::read_dir(out.path()).unwrap()
///     .map(|e| e.unwrap().path())
///     .filter(|p| p.extension().is_some_and(|x| x == "jsonl"))
///     .flat_map(|p| std::fs::read_to_string(p).unwrap().lines().map(String::from).collect::<Vec<_>>())
///     .collect();
/// lines.sort();
/// assert_eq!(lines, vec!["1", "2", "3"]);
/// ```
pub fn jsonl(dir: impl AsRef<Path>) -> Jsonl {
    Jsonl {
        dir: dir.as_ref().to_path_buf(),
    }
}

/// The sink [`jsonl`] returns.
#[derive(Debug, Clone)]
pub struct Jsonl {
    dir: PathBuf,
}

impl<D: Serialize + timely::ExchangeData> weir_runtime::Sink<D> for Jsonl {
    fn build<'s>(self, job: &Job<'s>, name: &str, records: Stream<'s, u64, Vec<D>>) -> Result<()> {
        write_jsonl(job, records, name, &self.dir)
    }
}

/// Writes `stream` as JSON lines into `dir` as the sink named `name`: the timely-level
/// form of [`jsonl`].
pub(crate) fn write_jsonl<'s, D: Serialize + timely::ExchangeData>(
    job: &Job<'s>,
    stream: Stream<'s, u64, Vec<D>>,
    name: &str,
    dir: &Path,
) -> Result<()> {
    let committer = Arc::new(FileCommitter::new(name, dir)?);
    let sink = FileSink {
        committer: Arc::clone(&committer),
        ctx: job.ctx().clone(),
        open: BTreeMap::new(),
        _marker: std::marker::PhantomData,
    };
    weir_runtime::sink::sink(job, stream, name, sink, committer)
}

/// Makes staged files visible, or deletes them.
pub struct FileCommitter {
    name: String,
    dir: PathBuf,
    staging: PathBuf,
}

impl FileCommitter {
    /// The committer of sink `name` writing into `dir`; creates `dir/.staging`.
    pub fn new(name: &str, dir: &Path) -> std::result::Result<Self, ConnectorError> {
        let staging = dir.join(".staging");
        std::fs::create_dir_all(&staging)
            .map_err(|e| ConnectorError::file(name, "create output directory", &staging, e))?;
        Ok(FileCommitter {
            name: name.to_string(),
            dir: dir.to_path_buf(),
            staging,
        })
    }

    /// The file of output `id`: `<sink>-<output name>.jsonl`.
    fn file_name(&self, id: OutputId) -> String {
        format!("{}-{}.jsonl", self.name, id.name())
    }

    /// The output a file of this sink holds.
    fn parse(&self, file: &str) -> Option<OutputId> {
        let id = file
            .strip_prefix(self.name.as_str())?
            .strip_prefix('-')?
            .strip_suffix(".jsonl")?;
        OutputId::parse(id)
    }

    fn io(&self, action: &'static str, path: &Path, e: std::io::Error) -> RuntimeError {
        ConnectorError::file(&self.name, action, path, e).into()
    }
}

fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

impl Committer for FileCommitter {
    type Handle = ();

    fn staged(&self) -> Result<Vec<Output<()>>> {
        let entries =
            std::fs::read_dir(&self.staging).map_err(|e| self.io("list", &self.staging, e))?;
        let mut out = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|e| self.io("list", &self.staging, e))?;
            if let Some(id) = self.parse(&entry.file_name().to_string_lossy()) {
                out.push(Output { id, handle: () });
            }
        }
        Ok(out)
    }

    fn commit(&self, output: &Output<()>) -> Result<()> {
        let file = self.file_name(output.id);
        let from = self.staging.join(&file);
        let to = self.dir.join(&file);
        match std::fs::rename(&from, &to) {
            Ok(()) => sync_dir(&self.dir).map_err(|e| self.io("sync", &self.dir, e)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                if to.exists() {
                    Ok(())
                } else {
                    Err(ConnectorError::LostOutput {
                        connector: self.name.clone(),
                        epoch: output.id.epoch.0,
                        staged: from,
                        committed: to,
                    }
                    .into())
                }
            }
            Err(e) => Err(self.io("commit (rename into the output directory)", &from, e)),
        }
    }

    fn abort(&self, output: &Output<()>) -> Result<()> {
        let path = self.staging.join(self.file_name(output.id));
        match std::fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(self.io("delete staged output", &path, e)),
        }
    }
}

struct FileSink<D> {
    committer: Arc<FileCommitter>,
    ctx: JobContext,
    open: BTreeMap<u64, (String, BufWriter<File>)>,
    _marker: std::marker::PhantomData<D>,
}

impl<D: Serialize + 'static> TwoPhaseSink for FileSink<D> {
    type Record = D;
    type Handle = ();

    fn write(&mut self, epoch: u64, record: D) -> Result<()> {
        if !self.open.contains_key(&epoch) {
            let name = self.committer.file_name(self.ctx.output(epoch));
            let path = self.committer.staging.join(&name);
            let file = File::create(&path).map_err(|e| self.committer.io("create", &path, e))?;
            self.open
                .insert(epoch, (name, BufWriter::with_capacity(1 << 16, file)));
        }
        let (name, w) = self.open.get_mut(&epoch).expect("opened");
        serde_json::to_writer(&mut *w, &record)
            .map_err(std::io::Error::other)
            .and_then(|_| w.write_all(b"\n"))
            .map_err(|e| {
                self.committer
                    .io("write", &self.committer.staging.join(name.as_str()), e)
            })
    }

    fn pre_commit(&mut self, epoch: u64) -> Result<Option<()>> {
        let Some((name, w)) = self.open.remove(&epoch) else {
            return Ok(None);
        };
        let path = self.committer.staging.join(&name);
        let file = w
            .into_inner()
            .map_err(|e| self.committer.io("flush", &path, e.into_error()))?;
        file.sync_all()
            .map_err(|e| self.committer.io("sync", &path, e))?;
        Ok(Some(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use weir_runtime::{Epoch, Generation, WorkerIndex};

    fn output(epoch: u64, generation: u64, worker: usize) -> Output<()> {
        Output {
            id: OutputId {
                worker: WorkerIndex(worker),
                epoch: Epoch(epoch),
                generation: Generation(generation),
            },
            handle: (),
        }
    }

    #[test]
    fn staged_names_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let c = FileCommitter::new("out", dir.path()).unwrap();
        let o = output(42, 3, 1);
        let name = c.file_name(o.id);
        assert_eq!(name, "out-e00000000000000000042-g3-w1.jsonl");
        assert_eq!(c.parse(&name), Some(o.id));
        assert!(c.parse("other-e00000000000000000001-g0-w0.jsonl").is_none());
        assert!(c.parse("outer-e00000000000000000001-g0-w0.jsonl").is_none());
    }

    #[test]
    fn commit_is_idempotent_and_a_lost_output_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let c = FileCommitter::new("out", dir.path()).unwrap();
        let o = output(1, 0, 0);
        let name = c.file_name(o.id);
        std::fs::write(c.staging.join(&name), "x\n").unwrap();
        assert_eq!(c.staged().unwrap(), vec![o.clone()]);
        c.commit(&o).unwrap();
        c.commit(&o).unwrap();
        assert_eq!(
            std::fs::read_to_string(dir.path().join(&name)).unwrap(),
            "x\n"
        );
        let lost = output(2, 0, 0);
        let err = c.commit(&lost).unwrap_err().to_string();
        assert!(err.contains("epoch 2"), "{err}");
        c.abort(&lost).unwrap();
    }
}
