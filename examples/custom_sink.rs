//! A sink written outside weir's crates: word counts into Redis, exactly once.
//!
//! ```text
//! custom_sink --input DIR --redis URL [--prefix P] --checkpoint-dir URL [job flags]
//! ```
//!
//! Everything Redis-specific lives in this file, on top of weir's public two-phase
//! contract (`weir::runtime::TwoPhaseSink` on every worker, `weir::runtime::Committer` on
//! the coordinator). The job counts the words of the files in `--input` and keeps, under
//! the key prefix `P`:
//! - `P:counts`, a hash from each word to its count;
//! - `P:updates`, a list with one `word<TAB>count<TAB>epoch` entry for every committed
//!   change of a count, so that a reader can check that no update arrived twice.
//!
//! How it stays exactly once:
//! - **pre-commit** (a worker, when its input passes an epoch): the epoch's changed
//!   counts go into a staging hash `P:staged:<handle>` and the handle into the set
//!   `P:staged`, in one Lua script (atomic in Redis): kept by the server (as durably as
//!   its persistence settings keep anything), invisible to readers of `P:counts`. The
//!   handle is weir's name of the output (`OutputId::name`: epoch, generation, worker);
//!   one that is already marked committed is refused;
//! - **commit** (the coordinator, once the checkpoint that covers the epoch is complete):
//!   one Lua script, which Redis runs atomically. If the handle is in the marker set
//!   `P:committed`, it does nothing (a commit repeated after a crash); otherwise it
//!   applies the staged counts to `P:counts`, appends them to `P:updates`, adds the
//!   marker and removes the staging. A handle that is neither staged nor marked was lost,
//!   and the commit fails rather than skip it;
//! - **abort** (recovery of output no checkpoint covers): the staging is deleted;
//! - **recovery**: weir asks `staged()` for every handle in `P:staged` and commits or
//!   aborts each one, so a crash anywhere leaves nothing behind. On a fresh start (no
//!   checkpoint to restore) weir first calls `fresh_start()`, which forgets the markers
//!   of an earlier run under the same prefix, so that this run's outputs, whose names
//!   may repeat that run's, are not taken for committed ones.
//!
//! A Redis server that cannot be reached, restarts or fails over is a transient failure
//! (exit code 1, so a supervisor restarts the job); a call that gets no answer within
//! 30 s fails the same way. Like weir's own sinks, this one relies on weir's fencing of
//! older generations, which is checked before each manifest rather than atomically with
//! the commit (see the README's known limits).

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use clap::Parser;
use weir::prelude::*;
use weir::runtime::{
    two_phase, Committer, JobContext, Output, OutputId, Result, RuntimeError, TwoPhaseSink,
};

weir::global_allocator!();

#[derive(Parser, Debug)]
#[command(about = "Counts words into Redis, exactly once, through a sink of its own")]
struct Args {
    /// Directory of input text files.
    #[arg(long)]
    input: PathBuf,
    /// The Redis server, `redis://host:port/`.
    #[arg(long, env = "WEIR_REDIS_URL")]
    redis: String,
    /// Prefix of every key the sink writes.
    #[arg(long, default_value = "wordcount")]
    prefix: String,
    /// Lines per second per worker (for demos and chaos tests); unlimited by default.
    #[arg(long)]
    rate_limit: Option<u64>,
    #[command(flatten)]
    job: JobArgs,
}

fn main() {
    weir::cli::main_with(|| {
        let args = Args::parse();
        let config = args.job.into_config("custom-sink")?;
        let (input, redis, prefix) = (args.input, args.redis, args.prefix);
        let opts = SourceOptions {
            rate_limit: args.rate_limit,
        };
        weir::run(config, move |job| {
            let store = Redis::connect(&redis, &prefix)?;
            let writer = |ctx: &JobContext| {
                Ok(RedisWriter {
                    redis: store.clone(),
                    ctx: ctx.clone(),
                    pending: Default::default(),
                })
            };
            job.source("lines", files::lines(&input).options(opts))?
                .flat_map(|line| {
                    line.split_whitespace()
                        .map(|w| (w.to_string(), 1u64))
                        .collect::<Vec<_>>()
                })
                .reduce_by_key("counts", |count, n| *count += n)?
                .sink("redis", two_phase(writer, Arc::new(store.clone())))
        })?;
        Ok(())
    })
}

/// A connection to the server and the key prefix; shared by a worker's writer and the
/// coordinator's committer.
#[derive(Clone)]
struct Redis {
    url: String,
    prefix: String,
    connection: Arc<Mutex<redis::Connection>>,
}

impl Redis {
    /// Connects and checks that the server answers.
    fn connect(url: &str, prefix: &str) -> Result<Self> {
        let unavailable = |e: redis::RedisError| {
            RuntimeError::Unavailable(format!("Redis at {url}: cannot connect: {e}").into())
        };
        let client = redis::Client::open(url).map_err(|e| {
            RuntimeError::config("--redis", format!("`{url}` is not a Redis URL: {e}"))
        })?;
        let timeout = std::time::Duration::from_secs(30);
        let mut connection = client
            .get_connection_with_timeout(std::time::Duration::from_secs(5))
            .map_err(unavailable)?;
        // A server that stops answering fails the call (and the run) instead of hanging
        // the worker or the coordinator.
        connection
            .set_read_timeout(Some(timeout))
            .and_then(|()| connection.set_write_timeout(Some(timeout)))
            .map_err(unavailable)?;
        redis::cmd("PING")
            .query::<String>(&mut connection)
            .map_err(unavailable)?;
        Ok(Redis {
            url: url.to_string(),
            prefix: prefix.to_string(),
            connection: Arc::new(Mutex::new(connection)),
        })
    }

    fn key(&self, name: &str) -> String {
        format!("{}:{name}", self.prefix)
    }

    /// Runs `f` on the connection; a failure names the server and what was being done.
    fn with<T>(
        &self,
        action: &str,
        f: impl FnOnce(&mut redis::Connection) -> redis::RedisResult<T>,
    ) -> Result<T> {
        let mut connection = self.connection.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut connection).map_err(|e| {
            let reason = format!("Redis at {}: cannot {action}: {e}", self.url);
            if is_transient(&e) {
                RuntimeError::Unavailable(reason.into())
            } else {
                RuntimeError::Io {
                    operator: "redis".into(),
                    reason,
                }
            }
        })
    }
}

/// Whether a restart can cure a Redis failure: the server is unreachable or restarting,
/// or a failover is under way.
fn is_transient(e: &redis::RedisError) -> bool {
    use redis::{ErrorKind, ServerErrorKind};
    e.is_io_error()
        || e.is_timeout()
        || e.is_connection_dropped()
        || matches!(
            e.kind(),
            ErrorKind::Server(
                ServerErrorKind::BusyLoading
                    | ServerErrorKind::TryAgain
                    | ServerErrorKind::ClusterDown
                    | ServerErrorKind::MasterDown
                    | ServerErrorKind::ReadOnly
            )
        )
}

/// The writing side, on every worker: one epoch's changed counts until pre-commit.
struct RedisWriter {
    redis: Redis,
    ctx: JobContext,
    pending: std::collections::BTreeMap<u64, Vec<(String, u64)>>,
}

impl TwoPhaseSink for RedisWriter {
    type Record = (String, u64, u64);
    /// weir's name of the output (`OutputId::name`) says everything a commit needs.
    type Handle = ();

    fn write(&mut self, epoch: u64, (word, count, _): (String, u64, u64)) -> Result<()> {
        self.pending.entry(epoch).or_default().push((word, count));
        Ok(())
    }

    fn pre_commit(&mut self, epoch: u64) -> Result<Option<()>> {
        let Some(counts) = self.pending.remove(&epoch) else {
            return Ok(None);
        };
        let handle = self.ctx.output(epoch).name();
        let staged: i64 = self.redis.with("stage an epoch's counts", |c| {
            let script = redis::Script::new(STAGE);
            let mut stage = script.prepare_invoke();
            stage
                .key(self.redis.key("committed"))
                .key(self.redis.key(&format!("staged:{handle}")))
                .key(self.redis.key("staged"))
                .arg(&handle);
            for (word, count) in &counts {
                stage.arg(word).arg(count);
            }
            stage.invoke(c)
        })?;
        if staged < 0 {
            return Err(RuntimeError::config(
                "--prefix",
                format!(
                    "output {handle} was committed to Redis by an earlier run of this job under the prefix `{}`, whose checkpoints are gone: use another --prefix, or delete the keys `{}:*`",
                    self.redis.prefix, self.redis.prefix
                ),
            ));
        }
        Ok(Some(()))
    }
}

/// Stages an epoch's counts and its handle in one atomic step: 1, or -1 if the handle was
/// committed before (an earlier run of the job under the same prefix, whose checkpoints
/// were deleted, used it already: staging it again would lose this run's output).
const STAGE: &str = r#"
local committed, staged, index = KEYS[1], KEYS[2], KEYS[3]
local handle = ARGV[1]
if redis.call('SISMEMBER', committed, handle) == 1 then return -1 end
redis.call('DEL', staged)
for i = 2, #ARGV, 2 do
  redis.call('HSET', staged, ARGV[i], ARGV[i + 1])
end
redis.call('SADD', index, handle)
return 1
"#;

/// Applies a staged epoch, with its marker, in one atomic step: 0 if it was committed
/// before, 1 if it is now, -1 if it is neither staged nor committed.
const COMMIT: &str = r#"
local committed, staged, index, counts, updates = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local handle, epoch = ARGV[1], ARGV[2]
if redis.call('SISMEMBER', committed, handle) == 1 then return 0 end
if redis.call('EXISTS', staged) == 0 then return -1 end
local fields = redis.call('HGETALL', staged)
for i = 1, #fields, 2 do
  redis.call('HSET', counts, fields[i], fields[i + 1])
  redis.call('RPUSH', updates, fields[i] .. '\t' .. fields[i + 1] .. '\t' .. epoch)
end
redis.call('SADD', committed, handle)
redis.call('DEL', staged)
redis.call('SREM', index, handle)
return 1
"#;

impl Committer for Redis {
    type Handle = ();

    fn staged(&self) -> Result<Vec<Output<()>>> {
        let handles: Vec<String> = self.with("list staged output", |c| {
            redis::cmd("SMEMBERS").arg(self.key("staged")).query(c)
        })?;
        Ok(handles
            .iter()
            .filter_map(|h| OutputId::parse(h))
            .map(|id| Output { id, handle: () })
            .collect())
    }

    fn commit(&self, output: &Output<()>) -> Result<()> {
        let (handle, epoch) = (output.id.name(), output.id.epoch);
        let outcome: i64 = self.with("commit staged output", |c| {
            redis::Script::new(COMMIT)
                .key(self.key("committed"))
                .key(self.key(&format!("staged:{handle}")))
                .key(self.key("staged"))
                .key(self.key("counts"))
                .key(self.key("updates"))
                .arg(&handle)
                .arg(epoch.0)
                .invoke(c)
        })?;
        if outcome < 0 {
            return Err(RuntimeError::Io {
                operator: "redis".into(),
                reason: format!(
                    "output {handle} of epoch {epoch} is neither staged under {} nor committed: it was deleted from Redis",
                    self.key(&format!("staged:{handle}"))
                ),
            });
        }
        Ok(())
    }

    fn abort(&self, output: &Output<()>) -> Result<()> {
        let handle = output.id.name();
        self.with("abort staged output", |c| {
            redis::pipe()
                .atomic()
                .del(self.key(&format!("staged:{handle}")))
                .ignore()
                .srem(self.key("staged"), &handle)
                .ignore()
                .query::<()>(c)
        })
    }

    /// A fresh start: an earlier run of the job under this prefix, whose checkpoints are
    /// gone, may have committed outputs with the names this run will use; its markers
    /// are forgotten (its counts stay), and what it staged is discarded.
    fn fresh_start(&self) -> Result<()> {
        for output in self.staged()? {
            self.abort(&output)?;
        }
        self.with("forget an earlier run's commit markers", |c| {
            redis::cmd("DEL").arg(self.key("committed")).query::<()>(c)
        })
    }
}
