//! Bank transfers, exactly once: Kafka in, PostgreSQL and Kafka out.
//!
//! `bank_transfers generate` creates the topics and tables and writes transfers
//! `{id, from, to, amount}` over a number of accounts to a Kafka topic with several
//! partitions, some of them twice on purpose (same id), a few that would overdraw their
//! account, and a few lines that are not JSON at all.
//!
//! `bank_transfers run` (normally under `weir launch`) reads them back and:
//! - sends records that do not parse to the `bank_dead_letters` table, naming partition
//!   and offset;
//! - drops repeated transfer ids (keyed state per id);
//! - applies each transfer to the sender's account (keyed state per account): a transfer
//!   that would take the sender's cleared funds below zero is rejected, with the reason,
//!   to `bank_rejected`. Incoming transfers are credited to the receiver's balance but
//!   clear only at the end of the run, so they do not count as funds to send in it;
//! - writes every applied transfer to `bank_ledger` and every account's resulting
//!   balance after each movement to `bank_balances` (`bank_current_balances` is a view
//!   of the latest), through PostgreSQL two-phase commit. Balances are appended with a
//!   version per account rather than updated in place: a prepared transaction holds
//!   its row locks until the checkpoint commits it, so updating the same row in the
//!   next epoch would wait for that commit;
//! - publishes a summary of every applied transfer to a Kafka topic through the
//!   exactly-once Kafka sink.
//!
//! ```text
//! scripts/services.sh up && eval "$(scripts/services.sh env)"
//! cargo build --release --bins --examples
//! target/release/examples/bank_transfers generate --brokers $WEIR_TEST_KAFKA_BROKERS \
//!     --postgres $WEIR_TEST_POSTGRES_URL --one-record-per-batch --transfers 20000 --accounts 100
//! target/release/weir launch --processes 2 --workers 2 --checkpoint-dir s3://test/bank \
//!     -- target/release/examples/bank_transfers run --brokers $WEIR_TEST_KAFKA_BROKERS \
//!     --postgres $WEIR_TEST_POSTGRES_URL --one-record-per-batch
//! ```

use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use serde::{Deserialize, Serialize};
use weir::connectors::kafka::rdkafka;
use weir::connectors::kafka::{DeadLetter, KafkaRecord, KafkaSinkOptions, KafkaSourceOptions};
use weir::connectors::postgres::tokio_postgres;
use weir::connectors::postgres::{PgMode, PostgresOptions};
use weir::prelude::*;

weir::global_allocator!();

/// Every account's opening balance, in cents.
const OPENING: i64 = 1_000_000_000;

#[derive(Parser, Debug)]
#[command(about = "Bank transfers, exactly once: Kafka in, PostgreSQL and Kafka out")]
struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Creates the topics and tables and writes transfers to the input topic.
    Generate {
        #[command(flatten)]
        io: Io,
        /// Transfers to write (before duplicates and malformed records).
        #[arg(long, default_value_t = 20_000)]
        transfers: u64,
        /// Accounts the transfers move money between.
        #[arg(long, default_value_t = 100)]
        accounts: u32,
        /// Partitions of the input topic.
        #[arg(long, default_value_t = 4)]
        partitions: i32,
        /// Seed of the random transfers.
        #[arg(long, default_value_t = 1)]
        seed: u64,
    },
    /// Runs the job.
    Run {
        #[command(flatten)]
        io: Io,
        /// Read the input topic forever instead of up to its end.
        #[arg(long)]
        unbounded: bool,
        /// Transfers read per second per worker (to make runs last in tests).
        #[arg(long)]
        rate_limit: Option<u64>,
        /// Seconds the brokers may stay unreachable before the job fails and is
        /// restarted.
        #[arg(long, default_value_t = 30)]
        broker_timeout_secs: u64,
        #[command(flatten)]
        job: Box<JobArgs>,
    },
}

#[derive(clap::Args, Debug, Clone)]
struct Io {
    /// Kafka bootstrap servers.
    #[arg(long, env = "WEIR_KAFKA_BROKERS")]
    brokers: String,
    /// PostgreSQL URL.
    #[arg(long, env = "WEIR_POSTGRES_URL")]
    postgres: String,
    /// Input topic.
    #[arg(long, default_value = "bank-transfers")]
    input_topic: String,
    /// Output topic of the summaries.
    #[arg(long, default_value = "bank-summaries")]
    summary_topic: String,
    /// Prefix of the tables (`<prefix>_ledger`, `_balances`, `_rejected`, `_dead_letters`).
    #[arg(long, default_value = "bank")]
    tables: String,
    /// Produce every Kafka record in a batch of its own (`batch.num.messages=1`). The
    /// tansu broker (0.6) serves a fetch only from the first offset of a record batch,
    /// so resuming in the middle of a batch would wait forever there.
    #[arg(long)]
    one_record_per_batch: bool,
}

impl Io {
    /// Producer settings the broker needs.
    fn producer_settings(&self) -> Vec<(String, String)> {
        if self.one_record_per_batch {
            vec![
                ("batch.num.messages".into(), "1".into()),
                ("linger.ms".into(), "0".into()),
            ]
        } else {
            Vec::new()
        }
    }
}

/// A transfer as it arrives.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
struct Transfer {
    id: u64,
    from: u32,
    to: u32,
    amount: i64,
}

/// A row of the ledger table.
#[derive(Serialize, Deserialize, Clone, Debug)]
struct LedgerRow {
    id: i64,
    from_acct: i32,
    to_acct: i32,
    amount: i64,
}

/// A row of the balances table: an account's balance after its `version`-th movement.
#[derive(Serialize, Deserialize, Clone, Debug)]
struct BalanceRow {
    account: i32,
    version: i64,
    balance: i64,
}

/// An account's keyed state in the balances operator.
#[derive(Serialize, Deserialize, Clone, Debug, Default)]
struct Account {
    /// Money in minus money out.
    change: i64,
    /// Movements applied.
    movements: i64,
}

/// A row of the rejected-transfers table.
#[derive(Serialize, Deserialize, Clone, Debug)]
struct RejectedRow {
    id: i64,
    from_acct: i32,
    to_acct: i32,
    amount: i64,
    reason: String,
}

/// A row of the dead-letter table.
#[derive(Serialize, Deserialize, Clone, Debug)]
struct DeadLetterRow {
    source: String,
    topic: String,
    kafka_partition: i32,
    kafka_offset: i64,
    error: String,
    payload: String,
}

fn main() {
    weir::cli::main_with(|| match Args::parse().command {
        Command::Generate {
            io,
            transfers,
            accounts,
            partitions,
            seed,
        } => generate(&io, transfers, accounts, partitions, seed),
        Command::Run {
            io,
            unbounded,
            rate_limit,
            broker_timeout_secs,
            job,
        } => run(
            io,
            !unbounded,
            rate_limit,
            Duration::from_secs(broker_timeout_secs),
            job,
        ),
    })
}

fn run(
    io: Io,
    bounded: bool,
    rate_limit: Option<u64>,
    broker_timeout: Duration,
    job: Box<JobArgs>,
) -> anyhow::Result<()> {
    let config = job.into_config("bank-transfers")?;
    weir::run(config, move |job| {
        let mut source = KafkaSourceOptions::new(&io.brokers, &io.input_topic);
        source.bounded = bounded;
        source.source.rate_limit = rate_limit;
        source.broker_timeout = broker_timeout;
        let (transfers, dead) = job
            .source("transfers", kafka::json::<Transfer>(source))?
            .split(|r| r);

        // Drop repeated ids.
        let unique = transfers
            .key_by(|t| t.id)
            .stateful_map("dedup", |_id, seen: &mut bool, t| {
                (!std::mem::replace(seen, true)).then_some(t)
            })?;

        // Debit the sender, or reject the transfer.
        let decided =
            unique
                .key_by(|t| t.from)
                .stateful_map("debit", |_account, sent: &mut i64, t| {
                    if OPENING - *sent - t.amount < 0 {
                        Some(Err(RejectedRow {
                            id: t.id as i64,
                            from_acct: t.from as i32,
                            to_acct: t.to as i32,
                            amount: t.amount,
                            reason: format!(
                                "overdraft: account {} has {} cleared, the transfer needs {}",
                                t.from,
                                OPENING - *sent,
                                t.amount
                            ),
                        }))
                    } else {
                        *sent += t.amount;
                        Some(Ok(t))
                    }
                })?;
        let (applied, rejected) = decided.split(|r| r);

        // Every account's balance after this epoch's transfers.
        let balances = applied
            .clone()
            .flat_map(|t| [(t.from, -t.amount), (t.to, t.amount)])
            .stateful_map("balance-state", |account, state: &mut Account, delta| {
                state.change += delta;
                state.movements += 1;
                Some(BalanceRow {
                    account: *account as i32,
                    version: state.movements,
                    balance: OPENING + state.change,
                })
            })?;

        let pg = |table: &str, mode: PgMode| PostgresOptions {
            url: io.postgres.clone(),
            table: format!("{}_{table}", io.tables),
            mode,
        };
        let ledger = applied.clone().map(|t| LedgerRow {
            id: t.id as i64,
            from_acct: t.from as i32,
            to_acct: t.to as i32,
            amount: t.amount,
        });
        ledger.sink("ledger", pg("ledger", PgMode::TwoPhase))?;
        balances.sink("balances", pg("balances", PgMode::TwoPhase))?;
        rejected.sink("rejected", pg("rejected", PgMode::TwoPhase))?;
        let dead = dead.map(|d: DeadLetter| DeadLetterRow {
            source: d.source,
            topic: d.topic,
            kafka_partition: d.partition,
            kafka_offset: d.offset,
            error: d.error,
            payload: d.payload,
        });
        dead.sink("dead-letters", pg("dead_letters", PgMode::TwoPhase))?;

        let summaries = applied.map(|t| {
            KafkaRecord::json(
                Some(&t.from.to_string()),
                &serde_json::json!({"id": t.id, "from": t.from, "to": t.to, "amount": t.amount}),
            )
        });
        let mut sink = KafkaSinkOptions::new(&io.brokers, &io.summary_topic);
        sink.delivery_timeout = broker_timeout;
        sink.properties = io.producer_settings();
        summaries.sink("summaries", sink)
    })?;
    Ok(())
}

/// A small deterministic generator (SplitMix64).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn generate(
    io: &Io,
    transfers: u64,
    accounts: u32,
    partitions: i32,
    seed: u64,
) -> anyhow::Result<()> {
    anyhow::ensure!(accounts >= 2, "--accounts must be at least 2");
    // Ordinary transfers must never overdraw, whatever order they are applied in: only
    // the deliberate overdrafts are rejected.
    let most_sent = transfers * 100;
    anyhow::ensure!(
        (most_sent as i64) < OPENING,
        "--transfers {transfers} could overdraw an account with ordinary transfers; use at most {}",
        OPENING / 100 - 1
    );
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(create_tables(&io.postgres, &io.tables))?;
    create_topics(io, partitions)?;

    let mut config = rdkafka::ClientConfig::new();
    config
        .set("bootstrap.servers", &io.brokers)
        .set("acks", "all")
        .set("enable.idempotence", "true")
        .set("message.timeout.ms", "30000");
    for (k, v) in io.producer_settings() {
        config.set(k, v);
    }
    let producer: BaseProducer = config.create().context("creating a Kafka producer")?;
    let mut rng = Rng(seed);
    let mut sent = 0u64;
    let mut send = |key: &str, payload: &str| -> anyhow::Result<()> {
        let mut record = BaseRecord::to(&io.input_topic).key(key).payload(payload);
        loop {
            match producer.send(record) {
                Ok(()) => break,
                Err((e, back)) => {
                    if !matches!(
                        e,
                        rdkafka::error::KafkaError::MessageProduction(
                            rdkafka::types::RDKafkaErrorCode::QueueFull
                        )
                    ) {
                        anyhow::bail!("sending to topic `{}`: {e}", io.input_topic);
                    }
                    record = back;
                    producer.poll(Duration::from_millis(10));
                }
            }
        }
        producer.poll(Duration::ZERO);
        sent += 1;
        Ok(())
    };
    for id in 0..transfers {
        let from = rng.below(accounts as u64) as u32;
        let to = (from + 1 + rng.below(accounts as u64 - 1) as u32) % accounts;
        // One transfer in 200 would overdraw any account.
        let amount = if rng.below(200) == 0 {
            2 * OPENING
        } else {
            1 + rng.below(100) as i64
        };
        let t = serde_json::to_string(&Transfer {
            id,
            from,
            to,
            amount,
        })?;
        send(&from.to_string(), &t)?;
        // One in 50 is sent twice.
        if rng.below(50) == 0 {
            send(&from.to_string(), &t)?;
        }
        // One in 500 is followed by a line that is not JSON.
        if rng.below(500) == 0 {
            send(&from.to_string(), &format!("corrupt transfer after {id}"))?;
        }
    }
    producer
        .flush(Duration::from_secs(60))
        .context("waiting for the brokers to acknowledge the transfers")?;
    eprintln!(
        "generated {transfers} transfers ({sent} records) over {accounts} accounts into `{}`",
        io.input_topic
    );
    Ok(())
}

fn create_topics(io: &Io, partitions: i32) -> anyhow::Result<()> {
    let admin: AdminClient<DefaultClientContext> = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &io.brokers)
        .create()
        .context("creating a Kafka admin client")?;
    let topics = [
        NewTopic::new(&io.input_topic, partitions, TopicReplication::Fixed(1)),
        NewTopic::new(&io.summary_topic, partitions, TopicReplication::Fixed(1)),
    ];
    let rt = tokio::runtime::Runtime::new()?;
    let results = rt
        .block_on(admin.create_topics(&topics, &AdminOptions::new()))
        .with_context(|| format!("creating topics on {}", io.brokers))?;
    for r in results {
        match r {
            Ok(_) => {}
            Err((topic, rdkafka::types::RDKafkaErrorCode::TopicAlreadyExists)) => {
                eprintln!("topic `{topic}` exists already");
            }
            Err((topic, e)) => anyhow::bail!("creating topic `{topic}`: {e}"),
        }
    }
    Ok(())
}

async fn create_tables(url: &str, prefix: &str) -> anyhow::Result<()> {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .context("connecting to PostgreSQL")?;
    tokio::spawn(connection);
    client
        .batch_execute(&format!(
            "CREATE TABLE IF NOT EXISTS {prefix}_ledger (id bigint PRIMARY KEY, from_acct int NOT NULL, to_acct int NOT NULL, amount bigint NOT NULL);
             CREATE TABLE IF NOT EXISTS {prefix}_balances (account int NOT NULL, version bigint NOT NULL, balance bigint NOT NULL, PRIMARY KEY (account, version));
             CREATE OR REPLACE VIEW {prefix}_current_balances AS SELECT DISTINCT ON (account) account, balance FROM {prefix}_balances ORDER BY account, version DESC;
             CREATE TABLE IF NOT EXISTS {prefix}_rejected (id bigint PRIMARY KEY, from_acct int NOT NULL, to_acct int NOT NULL, amount bigint NOT NULL, reason text NOT NULL);
             CREATE TABLE IF NOT EXISTS {prefix}_dead_letters (source text NOT NULL, topic text NOT NULL, kafka_partition int NOT NULL, kafka_offset bigint NOT NULL, error text NOT NULL, payload text NOT NULL, PRIMARY KEY (topic, kafka_partition, kafka_offset));"
        ))
        .await
        .context("creating the tables")?;
    Ok(())
}
