//! The PostgreSQL sink: exactly-once by two-phase commit, or effectively-once by
//! idempotent upsert.
//!
//! Records are serialized with serde to JSON objects whose fields name the table's
//! columns, and written in batches of up to 50 000 rows per statement
//! (`INSERT ... SELECT ... FROM jsonb_populate_recordset(...)`), never one statement per
//! record. In upsert mode, a key written several times in one epoch keeps its last row. The table must exist; weir creates only its own ledger table,
//! `weir_committed`.
//!
//! ## Delivery contract
//!
//! - [`PgMode::TwoPhase`] (exactly-once): at the end of each epoch a worker writes the
//!   epoch's rows and a row naming the transaction into `weir_committed`, then runs
//!   `PREPARE TRANSACTION` with the global id
//!   `weir:<job>:<sink>:e<epoch>:g<generation>:w<worker>`; the rows stay invisible.
//!   Once the checkpoint covering the epoch is complete, the coordinator runs
//!   `COMMIT PREPARED`. After a crash, this job's prepared transactions (found in
//!   `pg_prepared_xacts`) that the restored checkpoint covers are committed and the
//!   others rolled back. Committing a transaction that is no longer prepared succeeds if
//!   its `weir_committed` row is there (it was committed before) and is an error
//!   otherwise: output the checkpoint promised has been lost. A fresh start (no
//!   checkpoint to restore) rolls back the prepared transactions and forgets the ledger
//!   rows of earlier runs of the same job and sink. The server must allow
//!   prepared transactions (`max_prepared_transactions > 0`); the sink checks at start.
//! - [`PgMode::Upsert`] (at-least-once made effectively-once): each epoch's rows are
//!   upserted on the key columns (`INSERT ... ON CONFLICT (key) DO UPDATE`) and committed
//!   at once. A replay after a crash writes the same rows again, so the table ends the
//!   same, but readers may see a row's value go back to an earlier epoch's and forward
//!   again while the job catches up.

use std::sync::{Arc, Mutex};

use serde::Serialize;
use timely::dataflow::Stream;
use tokio_postgres::{Client, NoTls};
use weir_runtime::sink::{Committer, Output, OutputId, TwoPhaseSink};
use weir_runtime::{Job, JobContext, Result, RuntimeError};

use crate::error::ConnectorError;

/// The PostgreSQL client library the sink uses, for jobs and tests that query the
/// server themselves.
pub use tokio_postgres;

/// How the sink makes its writes exactly-once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PgMode {
    /// Two-phase commit: prepared transactions committed with the checkpoint.
    TwoPhase,
    /// Idempotent upsert on these key columns, committed at once.
    Upsert {
        /// The columns of the table's primary key or a unique constraint.
        key: Vec<String>,
    },
}

/// Where and how the sink writes.
#[derive(Debug, Clone)]
pub struct PostgresOptions {
    /// A libpq-style URL or key-value string (`postgres://user@host:port/db`).
    pub url: String,
    /// The table (optionally `schema.table`); it must exist.
    pub table: String,
    /// Two-phase commit or upsert.
    pub mode: PgMode,
}

/// PostgreSQL options are a sink: `flow.sink(name, opts)` writes into a table (see the
/// [module documentation](self) for the delivery contract).
///
/// # Examples
///
/// ```no_run
/// use weir_connectors::postgres::{PgMode, PostgresOptions};
///
/// #[derive(serde::Serialize, serde::Deserialize, Clone)]
/// struct Row { id: i64, amount: i64 }
///
/// weir_runtime::run(weir_runtime::JobConfig::thread("doc-pg"), |job| {
///     let opts = PostgresOptions {
///         url: "postgres://postgres@127.0.0.1:15432/weir_test".into(),
///         table: "ledger".into(),
///         mode: PgMode::TwoPhase,
///     };
///     job.source("rows", weir_runtime::testing::items(vec![Row { id: 1, amount: 10 }]))?
///         .sink("ledger", opts)
/// }).unwrap();
/// ```
impl<D: Serialize + timely::ExchangeData> weir_runtime::Sink<D> for PostgresOptions {
    fn build<'s>(self, job: &Job<'s>, name: &str, records: Stream<'s, u64, Vec<D>>) -> Result<()> {
        write_postgres(job, records, name, self)
    }
}

/// Writes `stream` into a PostgreSQL table as the sink named `name`: the timely-level
/// form of using [`PostgresOptions`] as a sink.
pub(crate) fn write_postgres<'s, D: Serialize + timely::ExchangeData>(
    job: &Job<'s>,
    stream: Stream<'s, u64, Vec<D>>,
    name: &str,
    opts: PostgresOptions,
) -> Result<()> {
    let ctx = job.ctx().clone();
    let target = Target::new(name, &opts)?;
    let client = target.connect(&ctx)?;
    let columns = ctx.block_on(target.prepare(&client))?;
    let insert = target.insert_sql(&columns)?;
    let committer = Arc::new(PgCommitter {
        target: target.clone(),
        ctx: ctx.clone(),
        job: ctx.config().job.clone(),
        client: Mutex::new(None),
    });
    let sink = PgSink {
        target,
        ctx: ctx.clone(),
        client,
        insert,
        job: ctx.config().job.clone(),
        pending: std::collections::BTreeMap::new(),
        _marker: std::marker::PhantomData,
    };
    weir_runtime::sink::sink(job, stream, name, sink, committer)
}

/// The sink's name, table and server, with the URL's password left out of messages.
#[derive(Clone)]
struct Target {
    sink: String,
    url: String,
    shown: String,
    table: String,
    mode: PgMode,
}

/// Quotes an identifier (`schema.table` quotes each part).
fn quote(ident: &str) -> String {
    ident
        .split('.')
        .map(|p| format!("\"{}\"", p.replace('"', "\"\"")))
        .collect::<Vec<_>>()
        .join(".")
}

/// Quotes a string literal.
fn literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

impl Target {
    fn new(sink: &str, opts: &PostgresOptions) -> Result<Self> {
        let config: tokio_postgres::Config = opts.url.parse().map_err(|e| {
            RuntimeError::config(
                "postgres url",
                format!("sink `{sink}`: cannot parse the PostgreSQL URL: {e}"),
            )
        })?;
        let hosts: Vec<String> = config
            .get_hosts()
            .iter()
            .map(|h| match h {
                tokio_postgres::config::Host::Tcp(h) => h.clone(),
                tokio_postgres::config::Host::Unix(p) => p.display().to_string(),
            })
            .collect();
        let ports: Vec<String> = config.get_ports().iter().map(u16::to_string).collect();
        let shown = format!(
            "{}@{}:{}/{}",
            config.get_user().unwrap_or("?"),
            hosts.join(","),
            if ports.is_empty() {
                "5432".to_string()
            } else {
                ports.join(",")
            },
            config.get_dbname().unwrap_or("?")
        );
        if opts.table.is_empty() {
            return Err(RuntimeError::config(
                "postgres table",
                format!("sink `{sink}`: no table given"),
            ));
        }
        if let PgMode::Upsert { key } = &opts.mode {
            if key.is_empty() {
                return Err(RuntimeError::config(
                    "postgres upsert key",
                    format!("sink `{sink}`: upsert needs the key columns of a unique constraint of `{}`", opts.table),
                ));
            }
        }
        Ok(Target {
            sink: sink.to_string(),
            url: opts.url.clone(),
            shown,
            table: opts.table.clone(),
            mode: opts.mode.clone(),
        })
    }

    fn error(&self, action: &'static str, e: &tokio_postgres::Error, hint: &str) -> RuntimeError {
        // Errors without an SQLSTATE are connection failures: a restart may cure them.
        let transient = e.as_db_error().is_none();
        let detail = match e.as_db_error() {
            Some(db) => format!("{} (SQLSTATE {})", db.message(), db.code().code()),
            None => {
                let mut s = e.to_string();
                let mut source = std::error::Error::source(e);
                while let Some(inner) = source {
                    s.push_str(&format!(": {inner}"));
                    source = inner.source();
                }
                s
            }
        };
        ConnectorError::Postgres {
            connector: self.sink.clone(),
            server: self.shown.clone(),
            action,
            detail,
            hint: hint.to_string(),
            transient,
        }
        .into()
    }

    fn connect(&self, ctx: &JobContext) -> Result<Client> {
        let (client, connection) =
            run(ctx, tokio_postgres::connect(&self.url, NoTls)).map_err(|e| {
                self.error(
                    "connect",
                    &e,
                    "; check that the server runs and the URL is right",
                )
            })?;
        let shown = self.shown.clone();
        ctx.runtime().spawn(async move {
            if let Err(e) = connection.await {
                tracing::warn!(server = %shown, error = %e, "PostgreSQL connection ended");
            }
        });
        Ok(client)
    }

    /// Checks the server and the table, creates the ledger table, and returns the
    /// table's columns.
    async fn prepare(&self, client: &Client) -> Result<Vec<String>> {
        if self.mode == PgMode::TwoPhase {
            let row = client
                .query_one("SHOW max_prepared_transactions", &[])
                .await
                .map_err(|e| self.error("read max_prepared_transactions", &e, ""))?;
            let max: String = row.get(0);
            if max.trim() == "0" {
                return Err(ConnectorError::Postgres {
                    connector: self.sink.clone(),
                    server: self.shown.clone(),
                    action: "use two-phase commit",
                    detail: "the server has max_prepared_transactions = 0, which disables PREPARE TRANSACTION".into(),
                    hint: "; set max_prepared_transactions to at least the number of workers times the checkpoints in flight (e.g. 64) in postgresql.conf and restart the server, or use the upsert mode".into(),
                    transient: false,
                }
                .into());
            }
        }
        let exists = client
            .query_one("SELECT to_regclass($1)::text", &[&self.table])
            .await
            .map_err(|e| self.error("look up the table", &e, ""))?;
        if exists.get::<_, Option<String>>(0).is_none() {
            return Err(ConnectorError::Postgres {
                connector: self.sink.clone(),
                server: self.shown.clone(),
                action: "find the table",
                detail: format!("table `{}` does not exist", self.table),
                hint: "; create it first (weir creates only its own ledger table)".into(),
                transient: false,
            }
            .into());
        }
        let columns: Vec<String> = client
            .query(
                "SELECT attname::text FROM pg_attribute WHERE attrelid = $1::text::regclass AND attnum > 0 AND NOT attisdropped ORDER BY attnum",
                &[&self.table],
            )
            .await
            .map_err(|e| self.error("list the table's columns", &e, ""))?
            .iter()
            .map(|r| r.get(0))
            .collect();
        // Concurrent workers create the ledger table one at a time.
        client
            .batch_execute(
                "BEGIN; SELECT pg_advisory_xact_lock(7306245); \
                 CREATE TABLE IF NOT EXISTS weir_committed (gid text PRIMARY KEY, committed_at timestamptz NOT NULL DEFAULT now()); \
                 COMMIT",
            )
            .await
            .map_err(|e| self.error("create the ledger table weir_committed", &e, ""))?;
        Ok(columns)
    }

    fn insert_sql(&self, columns: &[String]) -> Result<String> {
        let cols = columns
            .iter()
            .map(|c| quote(c))
            .collect::<Vec<_>>()
            .join(", ");
        let table = quote(&self.table);
        let mut sql = format!(
            "INSERT INTO {table} ({cols}) SELECT {cols} FROM jsonb_populate_recordset(NULL::{table}, $1::jsonb)"
        );
        if let PgMode::Upsert { key } = &self.mode {
            if let Some(missing) = key.iter().find(|k| !columns.contains(k)) {
                return Err(RuntimeError::config(
                    "postgres upsert key",
                    format!(
                        "sink `{}`: key column `{missing}` is not a column of `{}`",
                        self.sink, self.table
                    ),
                ));
            }
            let keys = key.iter().map(|k| quote(k)).collect::<Vec<_>>().join(", ");
            let updates: Vec<String> = columns
                .iter()
                .filter(|c| !key.contains(c))
                .map(|c| format!("{q} = EXCLUDED.{q}", q = quote(c)))
                .collect();
            if updates.is_empty() {
                sql.push_str(&format!(" ON CONFLICT ({keys}) DO NOTHING"));
            } else {
                sql.push_str(&format!(
                    " ON CONFLICT ({keys}) DO UPDATE SET {}",
                    updates.join(", ")
                ));
            }
        }
        Ok(sql)
    }

    /// The prepared transaction of output `id`: `weir:<job>:<sink>:<output name>`.
    fn gid(&self, job: &str, id: OutputId) -> String {
        format!("{}{}", self.gid_prefix(job), id.name())
    }

    /// What every transaction id of this sink starts with.
    fn gid_prefix(&self, job: &str) -> String {
        format!("weir:{job}:{}:", self.sink)
    }

    /// The output a transaction id of this sink names.
    fn parse_gid(&self, job: &str, gid: &str) -> Option<OutputId> {
        OutputId::parse(gid.strip_prefix(&self.gid_prefix(job))?)
    }
}

/// `text` as a `LIKE` pattern that matches only itself (job and sink names may hold `_`).
fn like_escape(text: &str) -> String {
    text.replace('\\', "\\\\")
        .replace('%', "\\%")
        .replace('_', "\\_")
}

/// Runs a future on the job's I/O runtime, from a worker thread or from inside it.
fn run<F: std::future::Future>(ctx: &JobContext, f: F) -> F::Output {
    if tokio::runtime::Handle::try_current().is_ok() {
        tokio::task::block_in_place(|| ctx.runtime().block_on(f))
    } else {
        ctx.block_on(f)
    }
}

struct PgSink<D> {
    target: Target,
    ctx: JobContext,
    client: Client,
    insert: String,
    job: String,
    pending: std::collections::BTreeMap<u64, Vec<serde_json::Value>>,
    _marker: std::marker::PhantomData<D>,
}

impl<D: Serialize + 'static> TwoPhaseSink for PgSink<D> {
    type Record = D;
    type Handle = ();

    fn write(&mut self, epoch: u64, record: D) -> Result<()> {
        let value = serde_json::to_value(&record).map_err(|e| RuntimeError::Io {
            operator: self.target.sink.clone(),
            reason: format!(
                "cannot encode a record for table `{}` as JSON: {e}",
                self.target.table
            ),
        })?;
        self.pending.entry(epoch).or_default().push(value);
        Ok(())
    }

    fn pre_commit(&mut self, epoch: u64) -> Result<Option<()>> {
        let Some(rows) = self.pending.remove(&epoch) else {
            return Ok(None);
        };
        let t = &self.target;
        match &t.mode {
            PgMode::Upsert { key } => {
                // One statement cannot update a row twice: keep each key's last row.
                let rows = last_per_key(rows, key);
                let client = &self.client;
                let insert = &self.insert;
                run(&self.ctx, async {
                    for chunk in chunks(rows) {
                        client.execute(insert.as_str(), &[&chunk]).await?;
                    }
                    Ok(())
                })
                .map_err(|e| t.error("upsert an epoch's rows", &e, ""))?;
                Ok(None)
            }
            PgMode::TwoPhase => {
                let gid = t.gid(&self.job, self.ctx.output(epoch));
                let client = &self.client;
                let insert = &self.insert;
                run(&self.ctx, async {
                    client.batch_execute("BEGIN").await?;
                    for chunk in chunks(rows) {
                        client.execute(insert.as_str(), &[&chunk]).await?;
                    }
                    client
                        .execute("INSERT INTO weir_committed (gid) VALUES ($1)", &[&gid])
                        .await?;
                    client
                        .batch_execute(&format!("PREPARE TRANSACTION {}", literal(&gid)))
                        .await
                })
                .map_err(|e| {
                    // Leave the session usable; a failed transaction is rolled back.
                    let _ = run(&self.ctx, self.client.batch_execute("ROLLBACK"));
                    t.error("prepare an epoch's transaction", &e, "")
                })?;
                Ok(Some(()))
            }
        }
    }
}

/// Rows per statement: keeps each statement's JSON array well under PostgreSQL's limit
/// for one `jsonb` value (256 MiB).
const ROWS_PER_STATEMENT: usize = 50_000;

/// An epoch's rows as JSON arrays of at most [`ROWS_PER_STATEMENT`] rows.
fn chunks(rows: Vec<serde_json::Value>) -> Vec<serde_json::Value> {
    let mut out = Vec::new();
    let mut rows = rows.into_iter().peekable();
    while rows.peek().is_some() {
        out.push(serde_json::Value::Array(
            rows.by_ref().take(ROWS_PER_STATEMENT).collect(),
        ));
    }
    out
}

/// The last row of each key, in the order of their last occurrence.
fn last_per_key(rows: Vec<serde_json::Value>, key: &[String]) -> Vec<serde_json::Value> {
    let key_of = |row: &serde_json::Value| -> String {
        key.iter()
            .map(|k| row.get(k).map_or("null".to_string(), |v| v.to_string()))
            .collect::<Vec<_>>()
            .join("\u{1f}")
    };
    let mut last: std::collections::HashMap<String, usize> = std::collections::HashMap::new();
    for (i, row) in rows.iter().enumerate() {
        last.insert(key_of(row), i);
    }
    rows.into_iter()
        .enumerate()
        .filter(|(i, row)| last.get(&key_of(row)) == Some(i))
        .map(|(_, row)| row)
        .collect()
}

/// Commits and rolls back prepared transactions for the coordinator.
struct PgCommitter {
    target: Target,
    ctx: JobContext,
    job: String,
    client: Mutex<Option<Client>>,
}

impl PgCommitter {
    /// Runs `f` with a connection, connecting (again) when needed.
    fn with_client<T>(
        &self,
        f: impl AsyncFnOnce(&Client) -> std::result::Result<T, tokio_postgres::Error>,
        action: &'static str,
    ) -> Result<T> {
        let mut guard = self.client.lock().expect("poisoned");
        if guard.as_ref().is_none_or(Client::is_closed) {
            *guard = Some(self.target.connect(&self.ctx)?);
        }
        let client = guard.as_ref().expect("connected");
        run(&self.ctx, f(client)).map_err(|e| self.target.error(action, &e, ""))
    }
}

impl PgCommitter {
    /// The prepared transactions of this sink.
    fn prepared(&self) -> Result<Vec<String>> {
        let prefix = format!("{}%", like_escape(&self.target.gid_prefix(&self.job)));
        self.with_client(
            async |c: &Client| {
                let rows = c
                    .query(
                        "SELECT gid FROM pg_prepared_xacts WHERE database = current_database() AND gid LIKE $1",
                        &[&prefix],
                    )
                    .await?;
                Ok(rows.iter().map(|r| r.get(0)).collect())
            },
            "list prepared transactions",
        )
    }
}

impl Committer for PgCommitter {
    type Handle = ();

    fn staged(&self) -> Result<Vec<Output<()>>> {
        if self.target.mode != PgMode::TwoPhase {
            return Ok(Vec::new());
        }
        Ok(self
            .prepared()?
            .iter()
            .filter_map(|g| self.target.parse_gid(&self.job, g))
            .map(|id| Output { id, handle: () })
            .collect())
    }

    /// A fresh start: the ledger rows of an earlier run of this job (whose checkpoints
    /// are gone) would make this run's transactions, whose ids may repeat the earlier
    /// run's, look committed; they are deleted, and the earlier run's prepared
    /// transactions, which no checkpoint covers, are rolled back.
    fn fresh_start(&self) -> Result<()> {
        if self.target.mode != PgMode::TwoPhase {
            return Ok(());
        }
        for gid in self.prepared()? {
            self.rollback(&gid)?;
        }
        let prefix = format!("{}%", like_escape(&self.target.gid_prefix(&self.job)));
        self.with_client(
            async |c: &Client| {
                c.execute("DELETE FROM weir_committed WHERE gid LIKE $1", &[&prefix])
                    .await
            },
            "clear what an earlier run of the job left",
        )?;
        Ok(())
    }

    fn commit(&self, output: &Output<()>) -> Result<()> {
        let gid = self.target.gid(&self.job, output.id);
        let (prepared, committed): (bool, bool) = self.with_client(
            async |c: &Client| {
                let prepared = c
                    .query_opt("SELECT 1 FROM pg_prepared_xacts WHERE gid = $1", &[&gid])
                    .await?
                    .is_some();
                if prepared {
                    c.batch_execute(&format!("COMMIT PREPARED {}", literal(&gid)))
                        .await?;
                    return Ok((true, true));
                }
                let committed = c
                    .query_opt("SELECT 1 FROM weir_committed WHERE gid = $1", &[&gid])
                    .await?
                    .is_some();
                Ok((false, committed))
            },
            "commit a prepared transaction",
        )?;
        if prepared || committed {
            return Ok(());
        }
        Err(ConnectorError::Postgres {
            connector: self.target.sink.clone(),
            server: self.target.shown.clone(),
            action: "commit a prepared transaction",
            detail: format!(
                "transaction `{gid}` (epoch {}) is neither prepared nor committed: its rows are lost (rolled back by hand, or another database?)",
                output.id.epoch
            ),
            hint: String::new(),
            transient: false,
        }
        .into())
    }

    fn abort(&self, output: &Output<()>) -> Result<()> {
        self.rollback(&self.target.gid(&self.job, output.id))
    }
}

impl PgCommitter {
    /// Rolls back the prepared transaction `gid`, if it is prepared.
    fn rollback(&self, gid: &str) -> Result<()> {
        let gid = gid.to_string();
        self.with_client(
            async |c: &Client| {
                if c.query_opt("SELECT 1 FROM pg_prepared_xacts WHERE gid = $1", &[&gid])
                    .await?
                    .is_some()
                {
                    c.batch_execute(&format!("ROLLBACK PREPARED {}", literal(&gid)))
                        .await?;
                }
                Ok(())
            },
            "roll back a prepared transaction",
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target() -> Target {
        Target::new(
            "ledger",
            &PostgresOptions {
                url: "postgres://alice:secret@db.example:6543/bank".into(),
                table: "public.ledger".into(),
                mode: PgMode::Upsert {
                    key: vec!["id".into()],
                },
            },
        )
        .unwrap()
    }

    #[test]
    fn the_password_never_shows_and_gids_round_trip() {
        let t = target();
        assert_eq!(t.shown, "alice@db.example:6543/bank");
        let id = OutputId {
            worker: weir_runtime::WorkerIndex(1),
            epoch: weir_runtime::Epoch(42),
            generation: weir_runtime::Generation(3),
        };
        let gid = t.gid("bank", id);
        assert_eq!(gid, "weir:bank:ledger:e00000000000000000042-g3-w1");
        let e = t.parse_gid("bank", &gid).unwrap();
        assert_eq!(e, id);
        assert_eq!((e.epoch.0, e.generation.0, e.worker.0), (42, 3, 1));
        assert!(t.parse_gid("other", &gid).is_none());
        assert!(t.parse_gid("bank", "weir:bank:ledger:e1:g0:w0").is_none());
    }

    #[test]
    fn upsert_sql_updates_the_non_key_columns_and_quotes_identifiers() {
        let t = target();
        let sql = t
            .insert_sql(&["id".into(), "end".into(), "amount".into()])
            .unwrap();
        assert!(
            sql.contains("INSERT INTO \"public\".\"ledger\" (\"id\", \"end\", \"amount\")"),
            "{sql}"
        );
        assert!(
            sql.ends_with("ON CONFLICT (\"id\") DO UPDATE SET \"end\" = EXCLUDED.\"end\", \"amount\" = EXCLUDED.\"amount\""),
            "{sql}"
        );
        let err = t.insert_sql(&["other".into()]).unwrap_err().to_string();
        assert!(err.contains("key column `id`"), "{err}");
        assert_eq!(literal("a'b"), "'a''b'");
    }

    #[test]
    fn upserts_keep_each_keys_last_row_and_statements_stay_small() {
        let rows = vec![
            serde_json::json!({"id": 1, "v": "a"}),
            serde_json::json!({"id": 2, "v": "b"}),
            serde_json::json!({"id": 1, "v": "c"}),
        ];
        let kept = last_per_key(rows, &["id".to_string()]);
        assert_eq!(
            kept,
            vec![
                serde_json::json!({"id": 2, "v": "b"}),
                serde_json::json!({"id": 1, "v": "c"})
            ]
        );
        let many: Vec<serde_json::Value> = (0..ROWS_PER_STATEMENT * 2 + 1)
            .map(|i| serde_json::json!({ "id": i }))
            .collect();
        let sizes: Vec<usize> = chunks(many)
            .iter()
            .map(|c| c.as_array().map_or(0, Vec::len))
            .collect();
        assert_eq!(sizes, vec![ROWS_PER_STATEMENT, ROWS_PER_STATEMENT, 1]);
    }
}
