//! The object-store sink: JSON lines or Parquet in S3-compatible storage (or a local
//! directory, or memory), each epoch visible only once committed, exactly once.
//!
//! ## Delivery contract
//!
//! Each worker writes each epoch's records into one object in memory (JSON lines, or a
//! Parquet file encoded a row group at a time). When the epoch ends, pre-commit puts it
//! under a staging name, `<prefix>/_staging/<sink>-e<epoch>-g<generation>-w<worker>.<ext>`
//! (a multipart upload for large objects; on a local directory the file and its
//! directory are fsynced). The staged name is the handle that goes into the checkpoint.
//! Once the checkpoint covering the epoch is complete, the coordinator commits it:
//! the staged object is renamed to `<prefix>/<sink>-e<epoch>-w<worker>.<ext>` (on S3 a
//! server-side copy followed by a delete; on a local directory an atomic rename). The
//! committed object appears whole or not at all, so a reader that lists `<prefix>/`
//! and skips names starting with `_` (as Hive, Spark, DuckDB and most engines do) sees
//! whole epochs or nothing. Epochs are zero-padded to 20 digits, so names sort in epoch
//! order.
//!
//! - Commit is idempotent: if the staged object is gone and the committed one exists,
//!   it was committed before (a crash can come between the copy and the delete; the
//!   next commit copies again and deletes). If neither exists, the output the
//!   checkpoint promised is lost, and commit fails with [`ConnectorError::LostObject`]
//!   rather than go on silently.
//! - Abort deletes the staged object (a missing one is fine).
//! - After a crash, the restored checkpoint's handles are committed again, and every
//!   other staged object of this sink from an earlier generation is aborted (found by
//!   listing `<prefix>/_staging/`). A fresh start (nothing restored) deletes every staged
//!   object of the sink that an earlier run of the job left.
//! - The committed name has no generation: an epoch that is replayed after a crash
//!   (at-least-once delivery, or a restore of a checkpoint older than the newest)
//!   replaces the object of the same epoch and worker instead of adding a second one.
//!   Objects of epochs committed by a run that is abandoned (a restore of an older
//!   checkpoint at another number of workers) are not deleted.
//! - With at-least-once and at-most-once delivery each epoch is committed as soon as it
//!   ends.
//!
//! An epoch's output of one worker is held in memory until the epoch ends (Parquet
//! keeps at most one row group of values, 65 536 rows, unencoded). Epochs without
//! records write no object.
//!
//! ## Stores and credentials
//!
//! The URL is `s3://bucket/prefix` (credentials, region and endpoint from the usual
//! `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`, `AWS_REGION`,
//! `AWS_ENDPOINT` variables), `file:///dir` (or a plain path), or `memory://name/prefix`
//! (a store that lives as long as the process and is shared by every sink and
//! [`read_committed`] call of the process that names it). Credentials never appear in
//! messages: the values of the credential variables are removed from every error, and
//! a URL with `user:password@` is refused. A store that cannot be reached makes the
//! process exit with code 1 (so `weir launch` restarts it); refused credentials, a
//! record that does not fit the Parquet schema, or lost output stop the job (code 2).

#[cfg(feature = "parquet")]
mod parquet;
mod schema;
mod sink;
mod store;

use object_store::ObjectStoreExt;
use serde::Serialize;
use timely::dataflow::Stream;
use weir_runtime::{Job, Result};

use crate::ConnectorError;

pub use self::schema::{ParquetColumn, ParquetSchema, ParquetType};
use self::store::{store_error, Location, Names};

/// How an object sink encodes its records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ObjectFormat {
    /// One JSON object per line (`.jsonl`), serialized with serde.
    JsonLines,
    /// A Parquet file (`.parquet`, Snappy-compressed) of the declared flat schema; each
    /// record is serialized with serde to a JSON object whose fields are the columns.
    Parquet(ParquetSchema),
}

impl ObjectFormat {
    /// The file extension of the format's objects.
    ///
    /// # Examples
    ///
    /// ```
    /// use weir_connectors::objects::{ObjectFormat, ParquetSchema, ParquetType};
    /// assert_eq!(ObjectFormat::JsonLines.extension(), "jsonl");
    /// let schema = ParquetSchema::new(&[("n", ParquetType::Int64)]);
    /// assert_eq!(ObjectFormat::Parquet(schema).extension(), "parquet");
    /// ```
    pub fn extension(&self) -> &'static str {
        match self {
            ObjectFormat::JsonLines => "jsonl",
            ObjectFormat::Parquet(_) => "parquet",
        }
    }
}

/// Where and how an object sink writes.
#[derive(Debug, Clone)]
pub struct ObjectSinkOptions {
    /// `s3://bucket/prefix`, `file:///dir` (or a path), or `memory://name/prefix`.
    pub url: String,
    /// JSON lines or Parquet.
    pub format: ObjectFormat,
}

/// Object sink options are a sink: `flow.sink(name, opts)` writes objects under
/// `opts.url` through a two-phase commit (see the [module documentation](self) for the delivery contract).
///
/// The sink name becomes the first part of every object name; it must be non-empty and
/// free of `/`.
///
/// # Examples
///
/// JSON lines into a local directory:
///
/// ```
/// use weir_connectors::objects::{read_committed, ObjectFormat, ObjectSinkOptions};
///
/// let dir = tempfile::tempdir().unwrap();
/// let url = format!("file://{}", dir.path().display());
/// let opts = ObjectSinkOptions { url: url.clone(), format: ObjectFormat::JsonLines };
/// weir_runtime::run(weir_runtime::JobConfig::thread("doc-objects"), move |job| {
///     job.source("numbers-in", weir_runtime::testing::items(vec![1u64, 2, 3]))?
///         .sink("numbers", opts.clone())
/// }).unwrap();
/// let objects = read_committed(&url, "numbers").unwrap();
/// let mut values: Vec<u64> = objects.iter()
///     .flat_map(|o| o.rows.iter().map(|r| r.as_u64().unwrap()))
///     .collect();
/// values.sort();
/// assert_eq!(values, vec![1, 2, 3]);
/// assert!(objects.iter().all(|o| o.name.starts_with("numbers-e") && o.name.ends_with(".jsonl")));
/// ```
///
/// Parquet output (`ObjectFormat::Parquet`) needs the `parquet` feature; without it, such a
/// sink is refused when the job is built, with a message that names the feature.
impl<D: Serialize + timely::ExchangeData> weir_runtime::Sink<D> for ObjectSinkOptions {
    fn build<'s>(self, job: &Job<'s>, name: &str, records: Stream<'s, u64, Vec<D>>) -> Result<()> {
        write_objects(job, records, name, self)
    }
}

/// Writes `stream` as objects as the sink named `name`: the timely-level form of using
/// [`ObjectSinkOptions`] as a sink.
pub(crate) fn write_objects<'s, D: Serialize + timely::ExchangeData>(
    job: &Job<'s>,
    stream: Stream<'s, u64, Vec<D>>,
    name: &str,
    opts: ObjectSinkOptions,
) -> Result<()> {
    sink::install(job, stream, name, opts)
}

/// A committed object of a sink, decoded.
#[derive(Debug, Clone)]
pub struct CommittedObject {
    /// The object's name under the prefix (`<sink>-e<epoch>-w<worker>.<ext>`).
    pub name: String,
    /// The epoch whose output it holds.
    pub epoch: u64,
    /// The worker that wrote it.
    pub worker: usize,
    /// The object's bytes as stored.
    pub bytes: bytes::Bytes,
    /// Its records: one JSON value per line, or one JSON object per Parquet row
    /// (columns by name).
    pub rows: Vec<serde_json::Value>,
}

/// Reads every committed object of sink `name` under `url`, in name order (epoch, then
/// worker), the way a reader of the output sees it: staged objects are never read.
///
/// It runs its own I/O runtime on a helper thread, so it can be called from anywhere.
///
/// # Examples
///
/// ```
/// use weir_connectors::objects::{read_committed, ObjectFormat, ObjectSinkOptions};
///
/// let opts = ObjectSinkOptions { url: "memory://doc-read/p".into(), format: ObjectFormat::JsonLines };
/// weir_runtime::run(weir_runtime::JobConfig::thread("doc-read"), move |job| {
///     job.source("in", weir_runtime::testing::items(vec!['a', 'b']))?
///         .sink("letters", opts.clone())
/// }).unwrap();
/// let objects = read_committed("memory://doc-read/p", "letters").unwrap();
/// let rows: Vec<_> = objects.iter().flat_map(|o| o.rows.clone()).collect();
/// assert_eq!(rows.len(), 2);
/// assert!(rows.contains(&serde_json::json!("a")) && rows.contains(&serde_json::json!("b")));
/// assert!(read_committed("memory://doc-read/p", "other").unwrap().is_empty());
/// ```
pub fn read_committed(
    url: &str,
    name: &str,
) -> std::result::Result<Vec<CommittedObject>, ConnectorError> {
    let loc = Location::open(name, url)?;
    std::thread::scope(|s| {
        s.spawn(|| {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| ConnectorError::File {
                    connector: name.to_string(),
                    action: "start an I/O runtime to read",
                    path: url.into(),
                    source: e,
                    hint: "",
                })?;
            rt.block_on(read_all(&loc, name))
        })
        .join()
        .expect("the reader thread does not panic")
    })
}

async fn read_all(
    loc: &Location,
    sink: &str,
) -> std::result::Result<Vec<CommittedObject>, ConnectorError> {
    let root = loc.root();
    let shown_root = root.clone().unwrap_or_default();
    let listing = loc
        .store
        .list_with_delimiter(root.as_ref())
        .await
        .map_err(|e| store_error(sink, loc, "list", &shown_root, &e))?;
    let formats = [("jsonl", false), ("parquet", true)];
    let mut found = Vec::new();
    for meta in listing.objects {
        let Some(file) = meta.location.filename() else {
            continue;
        };
        for (ext, is_parquet) in formats {
            let names = Names {
                sink: sink.to_string(),
                ext,
            };
            if let Some((epoch, worker)) = names.parse_committed(file) {
                found.push((
                    file.to_string(),
                    epoch,
                    worker,
                    is_parquet,
                    meta.location.clone(),
                ));
            }
        }
    }
    found.sort();
    let mut out = Vec::new();
    for (name, epoch, worker, is_parquet, path) in found {
        let bytes = async { loc.store.get(&path).await?.bytes().await }
            .await
            .map_err(|e| store_error(sink, loc, "read", &path, &e))?;
        let bad = |detail: String| ConnectorError::Corrupt {
            connector: sink.to_string(),
            object: loc.url_of(&path),
            detail,
        };
        let rows = if is_parquet {
            #[cfg(feature = "parquet")]
            {
                self::parquet::decode(bytes.clone())
                    .map_err(|e| bad(format!("is not a readable Parquet file: {e}")))?
            }
            #[cfg(not(feature = "parquet"))]
            return Err(bad(
                "is a Parquet file, and this build of weir has no Parquet support: enable the `parquet` feature".into(),
            ));
        } else {
            let text =
                std::str::from_utf8(&bytes).map_err(|e| bad(format!("is not UTF-8: {e}")))?;
            if !text.is_empty() && !text.ends_with('\n') {
                return Err(bad("ends in a partial line".into()));
            }
            text.lines()
                .map(serde_json::from_str)
                .collect::<std::result::Result<Vec<_>, _>>()
                .map_err(|e| bad(format!("holds a line that is not JSON: {e}")))?
        };
        out.push(CommittedObject {
            name,
            epoch,
            worker,
            bytes,
            rows,
        });
    }
    Ok(out)
}
