//! Where a sink's objects live: the store opened from the output URL, and the one path
//! builder that names every object the sink writes.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};

use object_store::memory::InMemory;
use object_store::path::Path;
use object_store::ObjectStore;
use weir_runtime::OutputId;

use crate::error::ConnectorError;

/// The directory, under the output prefix, that holds staged (invisible) objects.
/// Readers of the prefix skip names that start with `_`, as Hive, Spark and most
/// query engines do.
pub(crate) const STAGING: &str = "_staging";

/// The environment variables whose values must never appear in a message.
const SECRETS: [&str; 3] = [
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
];

/// The process's `memory://` stores, by name: every sink and reader of the process that
/// names the same store shares it.
fn memory_store(name: &str) -> Arc<dyn ObjectStore> {
    static STORES: OnceLock<Mutex<HashMap<String, Arc<InMemory>>>> = OnceLock::new();
    let mut stores = STORES
        .get_or_init(Default::default)
        .lock()
        .expect("poisoned");
    let store: Arc<InMemory> = Arc::clone(stores.entry(name.to_string()).or_default());
    store
}

/// An opened output location: a store and the prefix inside it.
#[derive(Debug, Clone)]
pub(crate) struct Location {
    pub(crate) store: Arc<dyn ObjectStore>,
    /// The URL of the store's root, which object paths are relative to.
    base: String,
    /// The prefix inside the store ("" for the root).
    prefix: String,
    /// The root directory when the store is the local file system (for fsync).
    local_root: Option<PathBuf>,
}

/// The URL without any `user:password@` part.
fn shown_url(url: &str) -> String {
    match url.split_once("://") {
        Some((scheme, rest)) => {
            let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
            let authority = match authority.rsplit_once('@') {
                Some((_, host)) => format!("***@{host}"),
                None => authority.to_string(),
            };
            if rest.contains('/') {
                format!("{scheme}://{authority}/{path}")
            } else {
                format!("{scheme}://{authority}")
            }
        }
        None => url.to_string(),
    }
}

impl Location {
    /// Opens `url`: `s3://bucket/prefix` (credentials and endpoint from the `AWS_*`
    /// environment variables), `file:///dir` or a plain path, or `memory://name/prefix`.
    pub(crate) fn open(sink: &str, url: &str) -> Result<Self, ConnectorError> {
        let shown = shown_url(url);
        let invalid = |reason: String| {
            ConnectorError::Settings {
            connector: sink.to_string(),
            setting: "object sink url",
            reason: format!("output URL `{shown}` {reason} (use s3://bucket/prefix, file:///dir or memory://name/prefix)"),
        }
        };
        if url.is_empty() {
            return Err(invalid("is empty".into()));
        }
        let split = |rest: &str| -> (String, String) {
            let (first, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            (first.to_string(), prefix.trim_matches('/').to_string())
        };
        if let Some(rest) = url.strip_prefix("memory://") {
            let (name, prefix) = split(rest);
            return Ok(Location {
                store: memory_store(&name),
                base: format!("memory://{name}"),
                prefix,
                local_root: None,
            });
        }
        if let Some(rest) = url.strip_prefix("s3://") {
            let (bucket, prefix) = split(rest);
            if bucket.is_empty() {
                return Err(invalid("has no bucket name after s3://".into()));
            }
            if bucket.contains('@') {
                return Err(invalid(
                    "carries credentials; set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY instead"
                        .into(),
                ));
            }
            let store = weir_runtime::checkpoint::store::open_url(&format!("s3://{bucket}"))
                .map_err(|e| invalid(format!("cannot be opened: {}", redact(&e.to_string()))))?;
            return Ok(Location {
                store,
                base: format!("s3://{bucket}"),
                prefix,
                local_root: None,
            });
        }
        let dir = match url.strip_prefix("file://") {
            Some(p) => PathBuf::from(p),
            None if url.contains("://") => return Err(invalid("has an unknown scheme".into())),
            None => PathBuf::from(url),
        };
        let store = weir_runtime::checkpoint::store::open_url(&dir.display().to_string())
            .map_err(|e| invalid(format!("cannot be opened: {e}")))?;
        Ok(Location {
            store,
            base: format!("file://{}", dir.display()),
            prefix: String::new(),
            local_root: Some(dir),
        })
    }

    /// The path of `name` under the prefix.
    pub(crate) fn path(&self, name: &str) -> Path {
        if self.prefix.is_empty() {
            Path::from(name)
        } else {
            Path::from(format!("{}/{name}", self.prefix))
        }
    }

    /// The URL of the object at `path`, for messages.
    pub(crate) fn url_of(&self, path: &Path) -> String {
        format!("{}/{path}", self.base.trim_end_matches('/'))
    }

    /// The prefix itself, for listing (`None` for the root).
    pub(crate) fn root(&self) -> Option<Path> {
        (!self.prefix.is_empty()).then(|| Path::from(self.prefix.as_str()))
    }

    /// Makes `path` and its directory durable when the store is a local file system
    /// (the object store writes files without fsync).
    pub(crate) fn sync_local(&self, path: &Path) -> std::io::Result<()> {
        let Some(root) = &self.local_root else {
            return Ok(());
        };
        let file = root.join(path.as_ref());
        std::fs::File::open(&file)?.sync_all()?;
        if let Some(dir) = file.parent() {
            std::fs::File::open(dir)?.sync_all()?;
        }
        Ok(())
    }
}

/// `message` with the values of the AWS credential variables replaced by `***`.
pub(crate) fn redact(message: &str) -> String {
    let secrets: Vec<String> = SECRETS
        .iter()
        .filter_map(|k| std::env::var(k).ok())
        .collect();
    redact_with(message, &secrets)
}

fn redact_with(message: &str, secrets: &[String]) -> String {
    let mut out = message.to_string();
    for s in secrets.iter().filter(|s| s.len() >= 4) {
        out = out.replace(s.as_str(), "***");
    }
    out
}

/// Whether a restart may cure an object-store failure.
fn is_transient(e: &object_store::Error) -> bool {
    match e {
        object_store::Error::Generic { .. } => true,
        object_store::Error::NotFound { .. }
        | object_store::Error::AlreadyExists { .. }
        | object_store::Error::Precondition { .. }
        | object_store::Error::NotModified { .. }
        | object_store::Error::PermissionDenied { .. }
        | object_store::Error::Unauthenticated { .. }
        | object_store::Error::InvalidPath { .. }
        | object_store::Error::NotSupported { .. }
        | object_store::Error::NotImplemented { .. } => false,
        _ => true,
    }
}

/// A store failure of sink `sink` as a runtime error, transient or permanent (see
/// [`ConnectorError::retry`]).
pub(crate) fn store_error(
    sink: &str,
    loc: &Location,
    action: &'static str,
    object: &Path,
    e: &object_store::Error,
) -> ConnectorError {
    let transient = is_transient(e);
    let hint = match e {
        object_store::Error::PermissionDenied { .. }
        | object_store::Error::Unauthenticated { .. } => {
            "; check AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY and the bucket's policy"
        }
        _ if transient => "; check that the server runs and AWS_ENDPOINT points to it",
        _ => "",
    };
    let mut detail = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(inner) = source {
        let s = inner.to_string();
        if !detail.contains(&s) {
            detail.push_str(&format!(": {s}"));
        }
        source = inner.source();
    }
    ConnectorError::ObjectStore {
        connector: sink.to_string(),
        action,
        object: loc.url_of(object),
        detail: redact(&detail),
        hint,
        transient,
    }
}

/// The names of one sink's objects.
///
/// Staged: `_staging/<sink>-e<epoch>-g<generation>-w<worker>.<ext>`; committed:
/// `<sink>-e<epoch>-w<worker>.<ext>`, the epoch zero-padded to 20 digits so that names
/// sort in epoch order. A sink's handle is its staged name without `_staging/`.
#[derive(Debug, Clone)]
pub(crate) struct Names {
    pub(crate) sink: String,
    pub(crate) ext: &'static str,
}

impl Names {
    /// The staged name of output `id` (under `_staging/`): `<sink>-<output name>.<ext>`.
    pub(crate) fn staged(&self, id: OutputId) -> String {
        format!("{}-{}.{}", self.sink, id.name(), self.ext)
    }

    /// The committed name of output `id`: without the generation, so that readers see
    /// one object per epoch and worker.
    pub(crate) fn committed(&self, id: OutputId) -> String {
        format!(
            "{}-e{:020}-w{}.{}",
            self.sink, id.epoch, id.worker, self.ext
        )
    }

    /// Parses a staged name (without `_staging/`).
    pub(crate) fn parse_staged(&self, file: &str) -> Option<OutputId> {
        let id = file
            .strip_prefix(self.sink.as_str())?
            .strip_prefix('-')?
            .strip_suffix(self.ext)?
            .strip_suffix('.')?;
        OutputId::parse(id)
    }

    /// Whether `file` is a committed object of this sink; returns its epoch and worker.
    pub(crate) fn parse_committed(&self, file: &str) -> Option<(u64, usize)> {
        let rest = file
            .strip_prefix(&format!("{}-e", self.sink))?
            .strip_suffix(&format!(".{}", self.ext))?;
        let (epoch, worker) = rest.split_once("-w")?;
        Some((epoch.parse().ok()?, worker.parse().ok()?))
    }
}

pub(crate) use crate::bridge::run;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_other_sinks_do_not_parse() {
        let n = Names {
            sink: "out".into(),
            ext: "parquet",
        };
        let id = OutputId {
            worker: weir_runtime::WorkerIndex(1),
            epoch: weir_runtime::Epoch(42),
            generation: weir_runtime::Generation(3),
        };
        let staged = n.staged(id);
        assert_eq!(staged, "out-e00000000000000000042-g3-w1.parquet");
        assert_eq!(n.parse_staged(&staged), Some(id));
        assert_eq!(n.committed(id), "out-e00000000000000000042-w1.parquet");
        assert_eq!(n.parse_committed(&n.committed(id)), Some((42, 1)));
        assert!(n
            .parse_staged("out-e00000000000000000042-g3-w1.jsonl")
            .is_none());
        assert!(n
            .parse_staged("other-e00000000000000000042-g3-w1.parquet")
            .is_none());
        assert!(n
            .parse_staged("outer-e00000000000000000042-g3-w1.parquet")
            .is_none());
        assert!(n.parse_committed(&staged).is_none());
    }

    #[test]
    fn credentials_never_show_in_messages_or_urls() {
        let secrets = vec!["AKIASECRETKEYID".to_string(), "x".to_string()];
        assert_eq!(
            redact_with("denied for AKIASECRETKEYID at x", &secrets),
            "denied for *** at x"
        );
        assert_eq!(shown_url("s3://user:pw@bucket/a/b"), "s3://***@bucket/a/b");
        assert_eq!(shown_url("s3://bucket/a"), "s3://bucket/a");
        let err = Location::open("out", "s3://user:pw@bucket/p")
            .unwrap_err()
            .to_string();
        assert!(!err.contains("pw"), "{err}");
    }
}
