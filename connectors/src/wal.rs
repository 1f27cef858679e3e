//! Write-ahead output for sinks whose destination has no transactions (Kafka without
//! broker transactions, NATS JetStream).
//!
//! At pre-commit, a worker's output of an epoch is written to checkpoint storage under
//! `<job>/sinks/<sink>/pending/<output name>` ([`OutputId::name`]), and the output goes
//! into the checkpoint. Only
//! once the checkpoint's manifest exists does the coordinator publish it (through a
//! [`Publisher`]), record that it did in a per-worker marker
//! (`<job>/sinks/<sink>/committed/w<worker>`, holding the newest `(generation, epoch)`
//! published), and delete the pending object. A commit repeated after a crash finds the
//! marker and does nothing, or finds the pending object and publishes it again; the
//! publisher makes that second publication idempotent (Kafka reads back what already
//! arrived, JetStream drops repeated message ids). An abort deletes the pending object:
//! nothing of it was published, since publication waits for the manifest.
//!
//! ## Design
//!
//! Invariants: an output is published only after the manifest of a checkpoint that lists
//! it exists; each output is published completely at most once per marker, and a
//! publication interrupted by a crash is finished by the next commit; an output missing
//! from both the pending area and the markers is an error, not a silent gap.

use std::marker::PhantomData;
use std::sync::Arc;

use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use weir_runtime::checkpoint::{codec, CheckpointStore};
use weir_runtime::{Committer, JobContext, Output, OutputId, Result, RuntimeError, TwoPhaseSink};

use crate::error::ConnectorError;

pub(crate) use crate::bridge::run;

/// A sink's write-ahead objects in checkpoint storage.
#[derive(Clone)]
pub(crate) struct Wal {
    store: CheckpointStore,
    sink: String,
}

impl Wal {
    /// The write-ahead area of sink `sink` in `store`.
    pub(crate) fn new(store: &CheckpointStore, sink: &str) -> Self {
        Wal {
            store: store.clone(),
            sink: sink.to_string(),
        }
    }

    fn pending(&self) -> Path {
        self.store.layout().sink_pending(&self.sink)
    }

    fn marker(&self, kind: &str, worker: weir_runtime::WorkerIndex) -> Path {
        self.store.layout().sink_marker(&self.sink, kind, worker)
    }

    fn object(&self) -> &Arc<dyn ObjectStore> {
        self.store.object_store()
    }

    fn error(&self, entry: &OutputId, object: &Path, detail: String) -> RuntimeError {
        ConnectorError::WriteAhead {
            connector: self.sink.clone(),
            object: format!("{}/{object}", self.store.url().trim_end_matches('/')),
            epoch: entry.epoch.0,
            detail,
        }
        .into()
    }

    /// Writes an epoch's output durably.
    pub(crate) async fn write<T: Serialize>(&self, id: OutputId, records: &[T]) -> Result<()> {
        let bytes = codec::encode("write-ahead output", records)?;
        self.store
            .put_object(&self.pending().join(id.name().as_str()), bytes)
            .await?;
        Ok(())
    }

    /// Reads an epoch's output back; `None` if it is not (or no longer) pending.
    pub(crate) async fn read<T: DeserializeOwned>(&self, entry: &OutputId) -> Result<Option<T>> {
        let path = self.pending().join(entry.name().as_str());
        match self.object().get(&path).await {
            Ok(got) => {
                let bytes = got
                    .bytes()
                    .await
                    .map_err(|e| self.error(entry, &path, format!("cannot read it: {e}")))?;
                codec::decode(path.as_ref(), &bytes).map(Some).map_err(|e| {
                    self.error(entry, &path, format!("it is corrupt ({e}); its output cannot be published, restore an earlier checkpoint"))
                })
            }
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(self.error(entry, &path, format!("cannot read it: {e}"))),
        }
    }

    /// Deletes an epoch's pending output (published or aborted).
    pub(crate) async fn delete(&self, entry: &OutputId) -> Result<()> {
        let path = self.pending().join(entry.name().as_str());
        match self.object().delete(&path).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(self.error(entry, &path, format!("cannot delete it: {e}"))),
        }
    }

    /// Every pending output.
    pub(crate) async fn list(&self) -> Result<Vec<OutputId>> {
        use futures::TryStreamExt;
        let objects: Vec<_> = self
            .object()
            .list(Some(&self.pending()))
            .try_collect()
            .await
            .map_err(|e| {
                RuntimeError::from(ConnectorError::WriteAhead {
                    connector: self.sink.clone(),
                    object: format!("{}/{}", self.store.url(), self.pending()),
                    epoch: 0,
                    detail: format!("cannot list pending output: {e}"),
                })
            })?;
        Ok(objects
            .iter()
            .filter_map(|o| o.location.filename().and_then(OutputId::parse))
            .collect())
    }

    /// Reads a per-worker marker.
    pub(crate) async fn marker_of<T: DeserializeOwned>(
        &self,
        kind: &str,
        entry: &OutputId,
    ) -> Result<Option<T>> {
        let path = self.marker(kind, entry.worker);
        match self.object().get(&path).await {
            Ok(got) => {
                let bytes = got
                    .bytes()
                    .await
                    .map_err(|e| self.error(entry, &path, format!("cannot read it: {e}")))?;
                Ok(Some(codec::decode(path.as_ref(), &bytes)?))
            }
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(self.error(entry, &path, format!("cannot read it: {e}"))),
        }
    }

    /// Writes a per-worker marker.
    pub(crate) async fn set_marker<T: Serialize>(
        &self,
        kind: &str,
        entry: &OutputId,
        value: &T,
    ) -> Result<()> {
        let bytes = codec::encode("sink marker", value)?;
        self.store
            .put_object(&self.marker(kind, entry.worker), bytes)
            .await?;
        Ok(())
    }
}

/// Publishes an epoch's output to the destination, idempotently.
pub(crate) trait Publisher: Send + Sync + 'static {
    /// What the sink writes.
    type Record: Serialize + DeserializeOwned + Send + 'static;
    /// Publishes `records`, the output of `entry`. May be called again for the same entry
    /// after a crash, possibly after part of it arrived: it must not publish a record
    /// twice.
    fn publish(&self, wal: &Wal, entry: &OutputId, records: Vec<Self::Record>) -> Result<()>;
}

/// `(generation, epoch)` of the newest output of a worker that was published.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
struct Published {
    generation: u64,
    epoch: u64,
}

/// Whether output `entry` was published, given the worker's marker. Commits of one
/// worker's outputs happen in `(generation, epoch)` order: the coordinator commits a
/// generation's outputs in epoch order, and a new generation commits its restored
/// checkpoint's outputs before any output of its own.
fn already_published(marker: Option<Published>, entry: &OutputId) -> bool {
    marker.is_some_and(|m| {
        m >= Published {
            generation: entry.generation.0,
            epoch: entry.epoch.0,
        }
    })
}

/// The committing side of a write-ahead sink.
pub(crate) struct WalCommitter<P: Publisher> {
    wal: Wal,
    rt: tokio::runtime::Handle,
    publisher: P,
}

impl<P: Publisher> WalCommitter<P> {
    pub(crate) fn new(wal: Wal, rt: tokio::runtime::Handle, publisher: P) -> Self {
        WalCommitter { wal, rt, publisher }
    }
}

impl<P: Publisher> Committer for WalCommitter<P> {
    type Handle = ();

    fn staged(&self) -> Result<Vec<Output<()>>> {
        let ids = run(&self.rt, self.wal.list())?;
        Ok(ids
            .into_iter()
            .map(|id| Output { id, handle: () })
            .collect())
    }

    fn commit(&self, output: &Output<()>) -> Result<()> {
        let entry = &output.id;
        let marker: Option<Published> = run(&self.rt, self.wal.marker_of("committed", entry))?;
        if already_published(marker, entry) {
            return run(&self.rt, self.wal.delete(entry));
        }
        let Some(records) = run(&self.rt, self.wal.read::<Vec<P::Record>>(entry))? else {
            return Err(ConnectorError::WriteAhead {
                connector: self.wal.sink.clone(),
                object: format!("{}/{}", self.wal.pending(), entry.name()),
                epoch: entry.epoch.0,
                detail: "it is neither pending nor published (the sink's published marker is older): it was deleted from checkpoint storage by hand; restore an earlier checkpoint".into(),
            }
            .into());
        };
        self.publisher.publish(&self.wal, entry, records)?;
        run(&self.rt, async {
            self.wal
                .set_marker(
                    "committed",
                    entry,
                    &Published {
                        generation: entry.generation.0,
                        epoch: entry.epoch.0,
                    },
                )
                .await?;
            self.wal.delete(entry).await
        })
    }

    fn abort(&self, output: &Output<()>) -> Result<()> {
        run(&self.rt, self.wal.delete(&output.id))
    }
}

/// The writing side of a write-ahead sink: buffers each epoch's records and writes them
/// to checkpoint storage at pre-commit.
pub(crate) struct WalSink<T> {
    wal: Wal,
    ctx: JobContext,
    open: std::collections::BTreeMap<u64, Vec<T>>,
    _marker: PhantomData<T>,
}

impl<T> WalSink<T> {
    pub(crate) fn new(wal: Wal, ctx: JobContext) -> Self {
        WalSink {
            wal,
            ctx,
            open: Default::default(),
            _marker: PhantomData,
        }
    }
}

impl<T: Serialize + 'static> TwoPhaseSink for WalSink<T> {
    type Record = T;
    type Handle = ();

    fn write(&mut self, epoch: u64, record: T) -> Result<()> {
        self.open.entry(epoch).or_default().push(record);
        Ok(())
    }

    fn pre_commit(&mut self, epoch: u64) -> Result<Option<()>> {
        let Some(records) = self.open.remove(&epoch) else {
            return Ok(None);
        };
        let id = self.ctx.output(epoch);
        run(self.ctx.runtime(), self.wal.write(id, &records))?;
        Ok(Some(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(generation: u64, epoch: u64) -> OutputId {
        OutputId {
            worker: weir_runtime::WorkerIndex(0),
            epoch: weir_runtime::Epoch(epoch),
            generation: weir_runtime::Generation(generation),
        }
    }

    fn output(generation: u64, epoch: u64) -> Output<()> {
        Output {
            id: entry(generation, epoch),
            handle: (),
        }
    }

    #[test]
    fn published_is_decided_by_generation_then_epoch() {
        let m = |generation, epoch| Some(Published { generation, epoch });
        assert!(!already_published(None, &entry(0, 1)));
        assert!(already_published(m(0, 5), &entry(0, 5)));
        assert!(already_published(m(0, 5), &entry(0, 4)));
        assert!(!already_published(m(0, 5), &entry(0, 6)));
        // A restored older checkpoint: the new generation's epochs are new output even
        // where an abandoned generation had published higher epochs.
        assert!(!already_published(m(1, 9), &entry(2, 3)));
        // A newer generation committed its own output only after the restored one's.
        assert!(already_published(m(2, 3), &entry(1, 9)));
    }

    struct Collect(std::sync::Mutex<Vec<u32>>);

    impl Publisher for Arc<Collect> {
        type Record = u32;
        fn publish(&self, _wal: &Wal, _entry: &OutputId, records: Vec<u32>) -> Result<()> {
            self.0.lock().unwrap().extend(records);
            Ok(())
        }
    }

    #[test]
    fn commit_publishes_once_and_abort_discards() {
        let rt = tokio::runtime::Runtime::new().unwrap();
        let store = CheckpointStore::open("memory://", "job").unwrap();
        let wal = Wal::new(&store, "out");
        let published = Arc::new(Collect(Default::default()));
        let committer = WalCommitter::new(wal.clone(), rt.handle().clone(), Arc::clone(&published));
        let (a, b) = (output(0, 1), output(0, 2));
        rt.block_on(wal.write(a.id, &[1u32, 2])).unwrap();
        rt.block_on(wal.write(b.id, &[3u32])).unwrap();
        let mut staged = committer.staged().unwrap();
        staged.sort();
        assert_eq!(staged, vec![a.clone(), b.clone()]);
        committer.commit(&a).unwrap();
        committer.commit(&a).unwrap();
        committer.abort(&b).unwrap();
        assert_eq!(*published.0.lock().unwrap(), vec![1, 2]);
        assert!(committer.staged().unwrap().is_empty());
        // Output that is neither pending nor published is a loss, and says so.
        let err = committer.commit(&output(0, 3)).unwrap_err().to_string();
        assert!(err.contains("neither pending nor published"), "{err}");
    }
}
