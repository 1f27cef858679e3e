//! Opening an object store from a checkpoint URL: a path, `file://`, `memory://` or
//! `s3://` (with the `s3` feature).

use std::sync::Arc;

use object_store::local::LocalFileSystem;
use object_store::memory::InMemory;
use object_store::ObjectStore;

use crate::error::{CheckpointError, Result};

/// Opens an object store from a checkpoint URL.
///
/// Accepted forms: a plain path (`/var/weir`, `./chk`), `file:///abs/path`, `memory://`
/// (lives as long as the process, for tests), and `s3://bucket/prefix`. S3 credentials
/// and endpoint come from the usual `AWS_*` environment variables
/// (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_REGION`, `AWS_ENDPOINT`); they are
/// never logged.
pub fn open_url(url: &str) -> Result<Arc<dyn ObjectStore>> {
    let invalid = |reason: String| CheckpointError::InvalidUrl {
        url: url.to_string(),
        reason,
    };
    if url.is_empty() {
        return Err(invalid("it is empty".into()));
    }
    if url.starts_with("memory://") {
        return Ok(Arc::new(InMemory::new()));
    }
    if let Some(rest) = url.strip_prefix("s3://") {
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            return Err(invalid("no bucket name after s3://".into()));
        }
        return open_s3(bucket, prefix).map_err(invalid);
    }
    let path = if let Some(p) = url.strip_prefix("file://") {
        std::path::PathBuf::from(p)
    } else if url.contains("://") {
        return Err(invalid("unknown scheme".into()));
    } else {
        std::path::PathBuf::from(url)
    };
    Ok(open_local(url, &path)?)
}

/// The local directory `path` of checkpoint URL `url` as an object store, created if
/// missing.
pub(crate) fn open_local(url: &str, path: &std::path::Path) -> Result<Arc<LocalFileSystem>> {
    let invalid = |reason: String| CheckpointError::InvalidUrl {
        url: url.to_string(),
        reason,
    };
    std::fs::create_dir_all(path)
        .map_err(|e| invalid(format!("cannot create directory {}: {e}", path.display())))?;
    let fs = LocalFileSystem::new_with_prefix(path).map_err(|e| invalid(e.to_string()))?;
    Ok(Arc::new(fs))
}

/// An S3 (or S3-compatible) store of `bucket`, under `prefix` if not empty.
#[cfg(feature = "s3")]
fn open_s3(bucket: &str, prefix: &str) -> std::result::Result<Arc<dyn ObjectStore>, String> {
    let mut b = object_store::aws::AmazonS3Builder::from_env()
        .with_bucket_name(bucket)
        .with_conditional_put(object_store::aws::S3ConditionalPut::ETagMatch);
    if let Ok(endpoint) =
        std::env::var("AWS_ENDPOINT").or_else(|_| std::env::var("AWS_ENDPOINT_URL"))
    {
        b = b
            .with_endpoint(&endpoint)
            .with_allow_http(endpoint.starts_with("http://"))
            .with_virtual_hosted_style_request(false);
    }
    if std::env::var("AWS_REGION").is_err() && std::env::var("AWS_DEFAULT_REGION").is_err() {
        b = b.with_region("us-east-1");
    }
    let s3 = b.build().map_err(|e| e.to_string())?;
    Ok(if prefix.is_empty() {
        Arc::new(s3)
    } else {
        Arc::new(object_store::prefix::PrefixStore::new(
            s3,
            prefix.trim_end_matches('/'),
        ))
    })
}

/// Without the `s3` feature, an `s3://` URL is refused with how to get support for it.
#[cfg(not(feature = "s3"))]
fn open_s3(_bucket: &str, _prefix: &str) -> std::result::Result<Arc<dyn ObjectStore>, String> {
    Err("this build of weir has no S3 support: enable the `s3` feature of `weir` (or `weir-checkpoint`)".into())
}
