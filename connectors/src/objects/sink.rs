//! The writing side (one per worker) and the committer (used by the coordinator) of the
//! object-store sink.

use std::collections::BTreeMap;
use std::sync::Arc;

use futures::TryStreamExt;
use object_store::path::Path;
use object_store::{ObjectStoreExt, PutPayload, WriteMultipart};
use serde::Serialize;
use timely::dataflow::Stream;
use weir_runtime::{Committer, Job, Output, OutputId, Result, RuntimeError, TwoPhaseSink};

#[cfg(feature = "parquet")]
use super::parquet::ParquetFile;
use super::store::{run, store_error, Location, Names, STAGING};
use super::{ObjectFormat, ObjectSinkOptions};
use crate::error::ConnectorError;

/// Objects larger than this are uploaded in parts.
const MULTIPART_THRESHOLD: usize = 16 << 20;
/// The size of each part of a multipart upload.
const PART_SIZE: usize = 8 << 20;

pub(super) fn install<'s, D: Serialize + timely::ExchangeData>(
    job: &Job<'s>,
    stream: Stream<'s, u64, Vec<D>>,
    name: &str,
    opts: ObjectSinkOptions,
) -> Result<()> {
    if name.is_empty() || name.contains('/') || name.starts_with('_') {
        return Err(RuntimeError::config(
            "object sink name",
            format!("sink name `{name}` must be non-empty, contain no `/` and not start with `_`"),
        ));
    }
    if let ObjectFormat::Parquet(schema) = &opts.format {
        schema.check().map_err(|detail| {
            RuntimeError::from(ConnectorError::Parquet {
                connector: name.to_string(),
                at: String::new(),
                detail,
            })
        })?;
        if !cfg!(feature = "parquet") {
            return Err(RuntimeError::config(
                "object sink format",
                format!("sink `{name}` writes Parquet, and this build of weir has no Parquet support: enable the `parquet` feature of `weir` (or `weir-connectors`)"),
            ));
        }
    }
    let ctx = job.ctx().clone();
    let committer = Arc::new(ObjectCommitter::new(name, &opts, ctx.runtime().clone())?);
    if ctx.worker() == 0 {
        committer.probe()?;
    }
    let sink = ObjectSink {
        committer: Arc::clone(&committer),
        format: opts.format,
        worker: ctx.worker_index(),
        generation: ctx.generation(),
        open: BTreeMap::new(),
        _marker: std::marker::PhantomData,
    };
    weir_runtime::sink::sink(job, stream, name, sink, committer)
}

/// Makes staged objects visible, or deletes them.
pub(crate) struct ObjectCommitter {
    names: Names,
    loc: Location,
    rt: tokio::runtime::Handle,
}

impl ObjectCommitter {
    pub(crate) fn new(
        name: &str,
        opts: &ObjectSinkOptions,
        rt: tokio::runtime::Handle,
    ) -> Result<Self> {
        Ok(ObjectCommitter {
            names: Names {
                sink: name.to_string(),
                ext: opts.format.extension(),
            },
            loc: Location::open(name, &opts.url)?,
            rt,
        })
    }

    fn staged_path(&self, id: OutputId) -> Path {
        self.loc
            .path(&format!("{STAGING}/{}", self.names.staged(id)))
    }

    fn error(&self, action: &'static str, path: &Path, e: &object_store::Error) -> RuntimeError {
        store_error(&self.names.sink, &self.loc, action, path, e).into()
    }

    /// Writes and deletes a probe object, so that an unreachable store or refused
    /// credentials are reported at start, not at the first epoch.
    fn probe(&self) -> Result<()> {
        let path = self.loc.path(&format!(
            "{STAGING}/_probe-{}-{}",
            self.names.sink,
            std::process::id()
        ));
        run(&self.rt, async {
            self.loc
                .store
                .put(&path, PutPayload::from_static(b"weir"))
                .await
                .map_err(|e| self.error("write a probe object", &path, &e))?;
            match self.loc.store.delete(&path).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
                Err(e) => Err(self.error("delete a probe object", &path, &e)),
            }
        })
    }

    /// Puts `bytes` at `path`, in parts when they are large.
    async fn put(&self, path: &Path, bytes: Vec<u8>) -> Result<()> {
        let store = &self.loc.store;
        if bytes.len() <= MULTIPART_THRESHOLD {
            store
                .put(path, PutPayload::from(bytes))
                .await
                .map_err(|e| self.error("put staged output", path, &e))?;
            return Ok(());
        }
        let upload = store
            .put_multipart(path)
            .await
            .map_err(|e| self.error("start a multipart upload of staged output", path, &e))?;
        let mut writer = WriteMultipart::new_with_chunk_size(upload, PART_SIZE);
        for chunk in bytes.chunks(PART_SIZE) {
            writer
                .wait_for_capacity(4)
                .await
                .map_err(|e| self.error("upload a part of staged output", path, &e))?;
            writer.write(chunk);
        }
        writer
            .finish()
            .await
            .map_err(|e| self.error("complete the multipart upload of staged output", path, &e))?;
        Ok(())
    }

    async fn exists(&self, path: &Path) -> Result<bool> {
        match self.loc.store.head(path).await {
            Ok(_) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(self.error("look up", path, &e)),
        }
    }
}

impl Committer for ObjectCommitter {
    type Handle = ();

    fn staged(&self) -> Result<Vec<Output<()>>> {
        let dir = self.loc.path(STAGING);
        let metas: Vec<object_store::ObjectMeta> = run(&self.rt, async {
            match self.loc.store.list(Some(&dir)).try_collect().await {
                Ok(m) => Ok(m),
                Err(object_store::Error::NotFound { .. }) => Ok(Vec::new()),
                Err(e) => Err(self.error("list staged output under", &dir, &e)),
            }
        })?;
        let mut ids: Vec<OutputId> = metas
            .iter()
            .filter_map(|m| self.names.parse_staged(m.location.filename()?))
            .collect();
        ids.sort();
        Ok(ids
            .into_iter()
            .map(|id| Output { id, handle: () })
            .collect())
    }

    fn commit(&self, output: &Output<()>) -> Result<()> {
        let from = self.staged_path(output.id);
        let to = self.loc.path(&self.names.committed(output.id));
        run(&self.rt, async {
            let renamed = self.loc.store.rename(&from, &to).await;
            let Err(e) = renamed else {
                return self.loc.sync_local(&to).map_err(|e| {
                    self.error(
                        "sync",
                        &to,
                        &object_store::Error::Generic {
                            store: "local",
                            source: Box::new(e),
                        },
                    )
                });
            };
            // Tell an output committed before (the staged object is gone, the committed
            // one is there) from a lost one and from a failed rename.
            let staged = self.exists(&from).await?;
            let committed = self.exists(&to).await?;
            match (staged, committed) {
                (false, true) => Ok(()),
                (false, false) => Err(ConnectorError::LostObject {
                    connector: self.names.sink.clone(),
                    epoch: output.id.epoch.0,
                    staged: self.loc.url_of(&from),
                    committed: self.loc.url_of(&to),
                }
                .into()),
                _ => Err(self.error("commit (rename the staged object to)", &to, &e)),
            }
        })
    }

    fn abort(&self, output: &Output<()>) -> Result<()> {
        let path = self.staged_path(output.id);
        run(&self.rt, async {
            match self.loc.store.delete(&path).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
                Err(e) => Err(self.error("delete staged output", &path, &e)),
            }
        })
    }

    /// A fresh start: everything staged is an earlier run's, which no checkpoint covers
    /// (also what that run staged under the generation this run reuses).
    fn fresh_start(&self) -> Result<()> {
        for output in self.staged()? {
            self.abort(&output)?;
        }
        Ok(())
    }
}

/// One epoch's output of one worker, until pre-commit.
enum Pending {
    Json(Vec<u8>),
    #[cfg(feature = "parquet")]
    Parquet(Box<ParquetFile>),
}

struct ObjectSink<D> {
    committer: Arc<ObjectCommitter>,
    format: ObjectFormat,
    worker: weir_runtime::WorkerIndex,
    generation: weir_runtime::Generation,
    open: BTreeMap<u64, Pending>,
    _marker: std::marker::PhantomData<D>,
}

impl<D> ObjectSink<D> {
    /// This worker's output of `epoch` (what the runtime names it: [`weir_runtime::JobContext::output`]).
    fn id(&self, epoch: u64) -> OutputId {
        OutputId {
            worker: self.worker,
            epoch: weir_runtime::Epoch(epoch),
            generation: self.generation,
        }
    }

    fn parquet_error(&self, epoch: u64, detail: String) -> RuntimeError {
        let path = self.committer.staged_path(self.id(epoch));
        ConnectorError::Parquet {
            connector: self.committer.names.sink.clone(),
            at: format!(
                " of epoch {epoch}, object {}",
                self.committer.loc.url_of(&path)
            ),
            detail,
        }
        .into()
    }
}

impl<D: Serialize + 'static> TwoPhaseSink for ObjectSink<D> {
    type Record = D;
    type Handle = ();

    fn write(&mut self, epoch: u64, record: D) -> Result<()> {
        if !self.open.contains_key(&epoch) {
            let pending = match &self.format {
                ObjectFormat::JsonLines => Pending::Json(Vec::new()),
                #[cfg(feature = "parquet")]
                ObjectFormat::Parquet(schema) => Pending::Parquet(Box::new(
                    ParquetFile::new(schema)
                        .map_err(|e| self.parquet_error(epoch, e.to_string()))?,
                )),
                // `install` refuses Parquet output without the feature already.
                #[cfg(not(feature = "parquet"))]
                ObjectFormat::Parquet(_) => {
                    return Err(
                        self.parquet_error(epoch, "this build has no Parquet support".into())
                    )
                }
            };
            self.open.insert(epoch, pending);
        }
        let result = match self.open.get_mut(&epoch).expect("opened") {
            Pending::Json(buf) => serde_json::to_writer(&mut *buf, &record)
                .map(|()| buf.push(b'\n'))
                .map_err(|e| e.to_string()),
            #[cfg(feature = "parquet")]
            Pending::Parquet(file) => serde_json::to_value(&record)
                .map_err(|e| format!("cannot serialize a record: {e}"))
                .and_then(|row| file.push(&row))
                .and_then(|()| {
                    if file.is_full() {
                        file.flush().map_err(|e| e.to_string())
                    } else {
                        Ok(())
                    }
                }),
        };
        result.map_err(|detail| match self.format {
            ObjectFormat::Parquet(_) => self.parquet_error(epoch, detail),
            ObjectFormat::JsonLines => RuntimeError::Io {
                operator: self.committer.names.sink.clone(),
                reason: format!("cannot encode a record of epoch {epoch} as JSON: {detail}"),
            },
        })
    }

    fn pre_commit(&mut self, epoch: u64) -> Result<Option<()>> {
        let Some(pending) = self.open.remove(&epoch) else {
            return Ok(None);
        };
        // Without the `parquet` feature, JSON lines are the only kind of pending output.
        #[allow(clippy::infallible_destructuring_match)]
        let bytes = match pending {
            Pending::Json(buf) => buf,
            #[cfg(feature = "parquet")]
            Pending::Parquet(file) => file
                .finish()
                .map_err(|e| self.parquet_error(epoch, e.to_string()))?,
        };
        let c = &self.committer;
        let path = c.staged_path(self.id(epoch));
        run(&c.rt, c.put(&path, bytes))?;
        c.loc.sync_local(&path).map_err(|e| {
            c.error(
                "sync staged output",
                &path,
                &object_store::Error::Generic {
                    store: "local",
                    source: Box::new(e),
                },
            )
        })?;
        Ok(Some(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::objects::read_committed;
    #[cfg(feature = "parquet")]
    use crate::objects::{ParquetSchema, ParquetType};
    use weir_runtime::checkpoint::protocol::{recover_sink, SinkAction};
    use weir_runtime::checkpoint::SinkEntry;
    use weir_runtime::{Epoch, Generation, WorkerIndex};

    fn id(epoch: u64, generation: u64, worker: usize) -> OutputId {
        OutputId {
            worker: WorkerIndex(worker),
            epoch: Epoch(epoch),
            generation: Generation(generation),
        }
    }

    fn entry(o: &Output<()>) -> SinkEntry {
        SinkEntry {
            sink: "out".into(),
            worker: o.id.worker,
            epoch: o.id.epoch,
            generation: o.id.generation,
            handle: "null".into(),
        }
    }

    fn output(e: &SinkEntry) -> Output<()> {
        Output {
            id: id(e.epoch.0, e.generation.0, e.worker.0),
            handle: (),
        }
    }

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap()
    }

    fn sink(
        rt: &tokio::runtime::Runtime,
        url: &str,
        format: ObjectFormat,
        generation: u64,
        worker: usize,
    ) -> ObjectSink<serde_json::Value> {
        let opts = ObjectSinkOptions {
            url: url.into(),
            format: format.clone(),
        };
        ObjectSink {
            committer: Arc::new(ObjectCommitter::new("out", &opts, rt.handle().clone()).unwrap()),
            format,
            worker: WorkerIndex(worker),
            generation: Generation(generation),
            open: BTreeMap::new(),
            _marker: std::marker::PhantomData,
        }
    }

    fn stage(s: &mut ObjectSink<serde_json::Value>, epoch: u64, rows: &[i64]) -> Output<()> {
        for r in rows {
            s.write(epoch, serde_json::json!({ "n": r })).unwrap();
        }
        s.pre_commit(epoch).unwrap().expect("output");
        Output {
            id: s.id(epoch),
            handle: (),
        }
    }

    fn visible(url: &str) -> Vec<(u64, usize, Vec<serde_json::Value>)> {
        read_committed(url, "out")
            .unwrap()
            .into_iter()
            .map(|o| (o.epoch, o.worker, o.rows))
            .collect()
    }

    fn n(rows: &[i64]) -> Vec<serde_json::Value> {
        rows.iter().map(|r| serde_json::json!({ "n": r })).collect()
    }

    #[test]
    fn staged_output_is_invisible_until_committed_and_commit_is_idempotent() {
        let rt = runtime();
        let url = "memory://unit-commit/p";
        let mut s = sink(&rt, url, ObjectFormat::JsonLines, 0, 1);
        let entry = stage(&mut s, 3, &[1, 2]);
        assert_eq!(
            s.committer.names.staged(entry.id),
            "out-e00000000000000000003-g0-w1.jsonl"
        );
        assert!(visible(url).is_empty(), "staged output must not be visible");
        let c = &s.committer;
        assert_eq!(c.staged().unwrap(), vec![entry.clone()]);
        c.commit(&entry).unwrap();
        c.commit(&entry).unwrap();
        assert_eq!(visible(url), vec![(3, 1, n(&[1, 2]))]);
        assert!(c.staged().unwrap().is_empty());
    }

    #[test]
    fn committing_output_that_vanished_is_an_error_naming_both_objects() {
        let rt = runtime();
        let url = "memory://unit-lost/p";
        let s = sink(&rt, url, ObjectFormat::JsonLines, 0, 0);
        let lost = Output {
            id: id(9, 0, 0),
            handle: (),
        };
        let err = s.committer.commit(&lost).unwrap_err().to_string();
        assert!(err.contains("epoch 9"), "{err}");
        assert!(
            err.contains("memory://unit-lost/p/_staging/out-e00000000000000000009-g0-w0.jsonl"),
            "{err}"
        );
        assert!(
            err.contains("memory://unit-lost/p/out-e00000000000000000009-w0.jsonl"),
            "{err}"
        );
        // Aborting what is not there is fine.
        s.committer.abort(&lost).unwrap();
    }

    #[test]
    fn abort_deletes_the_staged_object_and_nothing_becomes_visible() {
        let rt = runtime();
        let url = "memory://unit-abort/p";
        let mut s = sink(&rt, url, ObjectFormat::JsonLines, 0, 0);
        let entry = stage(&mut s, 1, &[7]);
        s.committer.abort(&entry).unwrap();
        s.committer.abort(&entry).unwrap();
        assert!(s.committer.staged().unwrap().is_empty());
        assert!(visible(url).is_empty());
        assert!(
            s.pre_commit(2).unwrap().is_none(),
            "an empty epoch writes nothing"
        );
    }

    #[test]
    fn staged_lists_only_this_sinks_staged_objects() {
        let rt = runtime();
        let url = "memory://unit-staged/p";
        let mut a = sink(&rt, url, ObjectFormat::JsonLines, 2, 0);
        let mut b = sink(&rt, url, ObjectFormat::JsonLines, 2, 1);
        let e1 = stage(&mut a, 5, &[1]);
        let e2 = stage(&mut b, 5, &[2]);
        let e3 = stage(&mut a, 6, &[3]);
        // Another sink in the same prefix, and another prefix of the same store.
        let other_opts = ObjectSinkOptions {
            url: url.into(),
            format: ObjectFormat::JsonLines,
        };
        let other = ObjectCommitter::new("outer", &other_opts, rt.handle().clone()).unwrap();
        rt.block_on(other.put(&other.staged_path(id(5, 2, 0)), b"1\n".to_vec()))
            .unwrap();
        let mut elsewhere = sink(&rt, "memory://unit-staged/q", ObjectFormat::JsonLines, 2, 0);
        stage(&mut elsewhere, 5, &[4]);
        let mut expected = vec![e1, e2, e3];
        expected.sort();
        assert_eq!(a.committer.staged().unwrap(), expected);
        assert_eq!(other.staged().unwrap().len(), 1);
    }

    /// A crash after checkpoint 2's manifest, before its commit, with epoch 3 staged:
    /// the next generation commits 2, aborts 3, and replays 3 under its own name.
    #[test]
    fn restore_commits_the_restored_checkpoint_and_aborts_later_output() {
        let rt = runtime();
        let url = "memory://unit-restore/p";
        let mut g0 = sink(&rt, url, ObjectFormat::JsonLines, 0, 0);
        let e1 = stage(&mut g0, 1, &[1]);
        g0.committer.commit(&e1).unwrap();
        let e2 = stage(&mut g0, 2, &[2]);
        let e3 = stage(&mut g0, 3, &[3, 30]);
        // Generation 1 restores checkpoint 2, whose manifest holds e2.
        let g1 = sink(&rt, url, ObjectFormat::JsonLines, 1, 0);
        let staged = g1.committer.staged().unwrap();
        assert_eq!(staged, vec![e2.clone(), e3.clone()]);
        let staged: Vec<SinkEntry> = staged.iter().map(entry).collect();
        for action in recover_sink(&[entry(&e2)], &staged, Generation(1)) {
            match action {
                SinkAction::Commit(e) => g1.committer.commit(&output(&e)).unwrap(),
                SinkAction::Abort(e) => g1.committer.abort(&output(&e)).unwrap(),
            }
        }
        assert!(g1.committer.staged().unwrap().is_empty());
        assert_eq!(visible(url), vec![(1, 0, n(&[1])), (2, 0, n(&[2]))]);
        // The replayed epoch 3 (with other records, say) is committed once.
        let mut g1 = g1;
        let e3b = stage(&mut g1, 3, &[3]);
        g1.committer.commit(&e3b).unwrap();
        // Recovery runs again after another crash: still no duplicate.
        g1.committer.commit(&e2).unwrap();
        assert_eq!(
            visible(url),
            vec![(1, 0, n(&[1])), (2, 0, n(&[2])), (3, 0, n(&[3]))]
        );
    }

    #[cfg(feature = "parquet")]
    #[test]
    fn parquet_epochs_round_trip_and_bad_records_name_the_epoch_and_object() {
        let rt = runtime();
        let url = "memory://unit-parquet/p";
        let schema = ParquetSchema::new(&[("n", ParquetType::Int64)]);
        let mut s = sink(&rt, url, ObjectFormat::Parquet(schema), 0, 0);
        let e = stage(&mut s, 4, &[5, 6]);
        assert!(s.committer.names.staged(e.id).ends_with(".parquet"));
        s.committer.commit(&e).unwrap();
        assert_eq!(visible(url), vec![(4, 0, n(&[5, 6]))]);
        let err = s
            .write(5, serde_json::json!({ "n": "five" }))
            .unwrap_err()
            .to_string();
        assert!(err.contains("epoch 5"), "{err}");
        assert!(
            err.contains(
                "memory://unit-parquet/p/_staging/out-e00000000000000000005-g0-w0.parquet"
            ),
            "{err}"
        );
        assert!(err.contains("column `n`"), "{err}");
    }

    #[test]
    fn large_objects_are_uploaded_in_parts() {
        let rt = runtime();
        let url = "memory://unit-multipart/p";
        let s = sink(&rt, url, ObjectFormat::JsonLines, 0, 0);
        let c = &s.committer;
        let line = format!("\"{}\"\n", "x".repeat(1023));
        let body: Vec<u8> = line.repeat(MULTIPART_THRESHOLD / 1024 + 100).into_bytes();
        rt.block_on(c.put(&c.staged_path(id(1, 0, 0)), body.clone()))
            .unwrap();
        let staged = c.staged().unwrap();
        assert_eq!(staged.len(), 1);
        c.commit(&staged[0]).unwrap();
        let objects = read_committed(url, "out").unwrap();
        assert_eq!(objects[0].bytes.len(), body.len());
        assert_eq!(objects[0].rows.len(), MULTIPART_THRESHOLD / 1024 + 100);
    }

    #[test]
    fn a_local_directory_gets_the_same_contract() {
        let rt = runtime();
        let dir = tempfile::tempdir().unwrap();
        let url = format!("file://{}", dir.path().display());
        let mut s = sink(&rt, &url, ObjectFormat::JsonLines, 0, 0);
        let entry = stage(&mut s, 1, &[1]);
        assert!(dir
            .path()
            .join("_staging")
            .join(s.committer.names.staged(entry.id))
            .is_file());
        assert!(visible(&url).is_empty());
        s.committer.commit(&entry).unwrap();
        s.committer.commit(&entry).unwrap();
        assert_eq!(visible(&url), vec![(1, 0, n(&[1]))]);
        assert!(s.committer.staged().unwrap().is_empty());
    }
}
