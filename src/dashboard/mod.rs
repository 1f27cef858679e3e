//! `weir dashboard`: one page and a JSON API over a job's checkpoint store and the
//! metrics endpoints of its processes.
//!
//! The history comes from the store (generation markers, failure records, checkpoint
//! manifests), so it survives every restart of the job and is there for a dashboard
//! started after the job. Live figures come from scraping the processes' `/metrics`.
//!
//! | route | what |
//! | --- | --- |
//! | `/` | the page (embedded; no build step) |
//! | `/api/job` | the job: generations, restarts, failures, the newest checkpoint, or the store's error |
//! | `/api/checkpoints` | the checkpoint history: [`weir_checkpoint::store::CheckpointInfo`] per checkpoint and savepoint |
//! | `/api/metrics` | one scrape of every metrics URL: its samples, or why it failed |

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use weir_checkpoint::CheckpointStore;

const PAGE: &str = include_str!("index.html");

/// What the dashboard shows.
#[derive(Debug, Clone)]
pub struct Options {
    /// The job's checkpoint URL.
    pub checkpoint_url: String,
    /// The job's name.
    pub job: String,
    /// The metrics endpoints of the job's processes (`http://host:port/metrics`).
    pub metrics: Vec<String>,
}

struct Dashboard {
    options: Options,
    store: Result<CheckpointStore, String>,
}

/// The dashboard's routes (see the module documentation).
pub fn router(options: Options) -> Router {
    let store = CheckpointStore::open(&options.checkpoint_url, &options.job).map_err(|e| {
        format!(
            "cannot open the checkpoint store `{}`: {e}",
            options.checkpoint_url
        )
    });
    let state = Arc::new(Dashboard { options, store });
    Router::new()
        .route("/", get(|| async { Html(PAGE) }))
        .route("/api/job", get(job))
        .route("/api/checkpoints", get(checkpoints))
        .route("/api/metrics", get(metrics))
        .with_state(state)
}

/// Checks what the dashboard will show, for the command line: the store's error, and
/// every metrics URL that does not answer.
pub async fn check(options: &Options) -> Vec<String> {
    let mut problems = Vec::new();
    match CheckpointStore::open(&options.checkpoint_url, &options.job) {
        Ok(store) => {
            if let Err(e) = store.list().await {
                problems.push(format!(
                    "cannot read the checkpoint store `{}`: {e}",
                    options.checkpoint_url
                ));
            }
        }
        Err(e) => problems.push(format!(
            "cannot open the checkpoint store `{}`: {e}",
            options.checkpoint_url
        )),
    }
    for url in &options.metrics {
        if let Err(e) = fetch(url).await {
            problems.push(format!("metrics {url}: {e}"));
        }
    }
    problems
}

fn unavailable(error: String) -> Response {
    (
        StatusCode::SERVICE_UNAVAILABLE,
        Json(serde_json::json!({ "error": error })),
    )
        .into_response()
}

#[derive(Serialize)]
struct Failure {
    generation: u64,
    process: usize,
    error: String,
}

async fn job(State(d): State<Arc<Dashboard>>) -> Response {
    let store = match &d.store {
        Ok(s) => s,
        Err(e) => return unavailable(e.clone()),
    };
    let read = async {
        let generations = store.generations().await?;
        let failures = store.failures().await?;
        let history = store.history().await?;
        Ok::<_, weir_checkpoint::CheckpointError>((generations, failures, history))
    };
    match read.await {
        Ok((generations, failures, history)) => {
            let latest = history
                .iter()
                .rev()
                .find(|c| c.status == weir_checkpoint::store::Status::Complete)
                .cloned();
            let gens: Vec<u64> = generations.iter().map(|g| g.0).collect();
            Json(serde_json::json!({
                "job": d.options.job,
                "checkpoint_dir": d.options.checkpoint_url,
                "generations": gens,
                "current_generation": gens.last(),
                "restarts": gens.len().saturating_sub(1),
                "failures": failures
                    .into_iter()
                    .map(|(g, process, error)| Failure { generation: g.0, process, error })
                    .collect::<Vec<_>>(),
                "latest_checkpoint": latest,
                "metrics": d.options.metrics,
            }))
            .into_response()
        }
        Err(e) => unavailable(format!(
            "cannot read the checkpoint store `{}`: {e}",
            d.options.checkpoint_url
        )),
    }
}

async fn checkpoints(State(d): State<Arc<Dashboard>>) -> Response {
    let store = match &d.store {
        Ok(s) => s,
        Err(e) => return unavailable(e.clone()),
    };
    match store.history().await {
        Ok(history) => Json(history).into_response(),
        Err(e) => unavailable(format!(
            "cannot read the checkpoint store `{}`: {e}",
            d.options.checkpoint_url
        )),
    }
}

#[derive(Serialize)]
struct Endpoint {
    url: String,
    ok: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
    /// `[name, labels, value]` per sample.
    samples: Vec<(String, BTreeMap<String, String>, f64)>,
}

async fn metrics(State(d): State<Arc<Dashboard>>) -> Json<serde_json::Value> {
    let mut endpoints = Vec::new();
    for url in &d.options.metrics {
        endpoints.push(match fetch(url).await {
            Ok(text) => Endpoint {
                url: url.clone(),
                ok: true,
                error: None,
                samples: parse_exposition(&text),
            },
            Err(e) => Endpoint {
                url: url.clone(),
                ok: false,
                error: Some(e),
                samples: Vec::new(),
            },
        });
    }
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    Json(serde_json::json!({ "time_ms": now, "endpoints": endpoints }))
}

/// GETs a weir metrics endpoint (`http://host:port/path`, HTTP/1.0, no TLS: the job
/// processes serve nothing else), within two seconds.
pub(crate) async fn fetch(url: &str) -> Result<String, String> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| "only http:// URLs are scraped".to_string())?;
    let (host, path) = match rest.split_once('/') {
        Some((h, p)) => (h, format!("/{p}")),
        None => (rest, "/metrics".to_string()),
    };
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(host).await?;
        stream
            .write_all(format!("GET {path} HTTP/1.0\r\nHost: {host}\r\n\r\n").as_bytes())
            .await?;
        let mut text = String::new();
        stream.read_to_string(&mut text).await?;
        Ok::<_, std::io::Error>(text)
    };
    let text = tokio::time::timeout(Duration::from_secs(2), exchange)
        .await
        .map_err(|_| "no answer within 2 s: is the process running?".to_string())?
        .map_err(|e| format!("unreachable ({e}): is the process running with --metrics-addr?"))?;
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| "not an HTTP answer".to_string())?;
    let status = head.lines().next().unwrap_or_default();
    if !status.contains(" 200") {
        return Err(format!("answered `{status}`"));
    }
    Ok(body.to_string())
}

/// Parses Prometheus text exposition into `(name, labels, value)` samples.
///
/// ```
/// let s = weir::dashboard::parse_exposition(
///     "# TYPE x counter\nx_total{job=\"wc\",worker=\"1\"} 42\ny 1.5\n# EOF\n",
/// );
/// assert_eq!(s.len(), 2);
/// assert_eq!(s[0].0, "x_total");
/// assert_eq!(s[0].1["worker"], "1");
/// assert_eq!(s[0].2, 42.0);
/// assert_eq!(s[1].2, 1.5);
/// ```
pub fn parse_exposition(text: &str) -> Vec<(String, BTreeMap<String, String>, f64)> {
    let mut out = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let Ok(value) = value.parse::<f64>() else {
            continue;
        };
        let (name, labels) = match series.split_once('{') {
            Some((n, l)) => (n, l.trim_end_matches('}')),
            None => (series, ""),
        };
        let mut map = BTreeMap::new();
        for pair in labels.split("\",").filter(|p| !p.is_empty()) {
            if let Some((k, v)) = pair.split_once("=\"") {
                map.insert(
                    k.trim_start_matches(',').to_string(),
                    v.trim_end_matches('"').to_string(),
                );
            }
        }
        out.push((name.to_string(), map, value));
    }
    out
}

/// The checkpoint URL and job name of a job command line, as `weir launch --dashboard`
/// reads them: `--checkpoint-dir` (or `--checkpoint-url`) and `--job`, with `=` or a
/// space, else `WEIR_CHECKPOINT_URL` and `WEIR_JOB` from `env`; the job name defaults
/// to the binary's file name (weir's examples name their jobs after themselves).
///
/// ```
/// use weir::dashboard::job_target;
/// let args: Vec<String> = ["--input", "in", "--checkpoint-dir=/tmp/c"].iter().map(|s| s.to_string()).collect();
/// assert_eq!(
///     job_target(&args, "target/release/examples/wordcount", |_| None),
///     Some(("/tmp/c".to_string(), "wordcount".to_string()))
/// );
/// let args: Vec<String> = ["--job", "bank"].iter().map(|s| s.to_string()).collect();
/// let env = |k: &str| (k == "WEIR_CHECKPOINT_URL").then(|| "s3://b/c".to_string());
/// assert_eq!(job_target(&args, "x", env), Some(("s3://b/c".to_string(), "bank".to_string())));
/// assert_eq!(job_target(&[], "x", |_| None), None);
/// ```
pub fn job_target(
    args: &[String],
    binary: &str,
    env: impl Fn(&str) -> Option<String>,
) -> Option<(String, String)> {
    let flag = |names: &[&str]| {
        let mut found = None;
        let mut i = 0;
        while i < args.len() {
            for name in names {
                if let Some(v) = args[i].strip_prefix(&format!("{name}=")) {
                    found = Some(v.to_string());
                } else if args[i] == *name {
                    found = args.get(i + 1).cloned();
                }
            }
            i += 1;
        }
        found
    };
    let url =
        flag(&["--checkpoint-dir", "--checkpoint-url"]).or_else(|| env("WEIR_CHECKPOINT_URL"))?;
    let job = flag(&["--job"])
        .or_else(|| env("WEIR_JOB"))
        .unwrap_or_else(|| {
            std::path::Path::new(binary)
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default()
        });
    Some((url, job))
}
