//! The PostgreSQL sink against a real server (`scripts/services.sh up` starts one on
//! 127.0.0.1:15432 with prepared transactions on): exactly-once by two-phase commit and
//! effectively-once by upsert under kills, and clear errors for a server that refuses.

use std::process::Command;

use crate::harness::job::JobArgs;
use crate::harness::process::Finished;
use crate::harness::scenario;
use crate::harness::workspace::Workspace;

/// The test server's URL; the tests fail, never skip, without it.
pub(crate) fn url() -> String {
    std::env::var("WEIR_TEST_POSTGRES_URL").unwrap_or_else(|_| {
        panic!(
            "WEIR_TEST_POSTGRES_URL is not set: start the test servers with `scripts/services.sh up` and `eval \"$(scripts/services.sh env)\"` (scripts/test.sh does both)"
        )
    })
}

pub(crate) fn psql(sql: &str) -> String {
    let out = Command::new("psql")
        .args([&url(), "-qtAX", "-v", "ON_ERROR_STOP=1", "-c", sql])
        .output()
        .expect("run psql");
    assert!(
        out.status.success(),
        "psql `{sql}` failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A fresh sessions table named `name`.
fn create_table(name: &str) {
    psql(&format!(
        "DROP TABLE IF EXISTS {name}; CREATE TABLE {name} (\"user\" integer NOT NULL, start bigint NOT NULL, \"end\" bigint NOT NULL, clicks bigint NOT NULL, PRIMARY KEY (\"user\", start))"
    ));
}

/// Every row as (user, start, end, clicks), sorted.
fn rows(table: &str) -> Vec<(u32, u64, u64, u64)> {
    let mut rows: Vec<(u32, u64, u64, u64)> = psql(&format!(
        "SELECT \"user\", start, \"end\", clicks FROM {table}"
    ))
    .lines()
    .filter(|l| !l.is_empty())
    .map(|l| {
        let f: Vec<u64> = l.split('|').map(|x| x.parse().expect("a number")).collect();
        (f[0] as u32, f[1], f[2], f[3])
    })
    .collect();
    rows.sort_unstable();
    rows
}

fn prepared_left(job: &str) -> String {
    psql(&format!(
        "SELECT gid FROM pg_prepared_xacts WHERE gid LIKE 'weir:{job}:%'"
    ))
}

fn sessions_job(ws: &Workspace, job: &str, table: &str, mode: &str) -> JobArgs {
    JobArgs::new(ws)
        .interval_ms(scenario::INTERVAL_MS)
        .job(job)
        .set("--postgres", url())
        .set("--postgres-table", table)
        .set("--postgres-mode", mode)
}

fn under_kills(
    name: &'static str,
    seed: u64,
    mode: &str,
    processes: usize,
    workers: usize,
    kills: usize,
) {
    let seed = scenario::seed(seed);
    let ws = Workspace::new(name);
    let expected = crate::sessions::generate(&ws, seed);
    let table = name.replace('-', "_");
    create_table(&table);
    let job = sessions_job(&ws, &table, &table, mode)
        .rate_limit(crate::sessions::rate_for(processes * workers, 5.0));
    crate::sessions::launch_under_kills(&ws, job, processes, workers, kills, seed);
    assert_eq!(
        rows(&table),
        expected.sessions,
        "the table `{table}` should hold exactly the oracle's sessions"
    );
    assert_eq!(
        prepared_left(&table),
        "",
        "no prepared transaction of the job may be left"
    );
}

#[test]
fn two_phase_commit_writes_every_session_exactly_once_under_kills_at_two_by_two() {
    under_kills("pg-2pc-kills", 0x8_0001, "two-phase", 2, 2, 3);
}

#[test]
fn upsert_ends_with_every_session_once_under_kills() {
    under_kills("pg-upsert-kills", 0x8_0002, "upsert", 1, 2, 3);
}

#[test]
fn prepared_transactions_left_by_a_kill_after_the_manifest_are_committed_on_restore() {
    let seed = scenario::seed(0x8_0003);
    let ws = Workspace::new("pg-after-manifest");
    let expected = crate::sessions::generate(&ws, seed);
    let table = "pg_after_manifest";
    create_table(table);
    let args = sessions_job(&ws, table, table, "two-phase")
        .workers(2)
        .rate_limit(crate::sessions::rate_for(2, 3.0));
    let run = |failpoint: Option<&str>, args: &JobArgs, name: &str| -> Finished {
        crate::sessions::run_sessions(&ws, args, failpoint, name)
    };
    let killed = run(Some("after-manifest@15"), &args, "killed");
    assert!(
        !killed.status.success(),
        "the failpoint should have killed the run"
    );
    assert_ne!(
        prepared_left(table),
        "",
        "a kill between manifest and commit should leave prepared transactions"
    );
    assert!(
        rows(table).len() < expected.sessions.len(),
        "the killed run should not have written everything"
    );
    run(None, &args.clone().restore("latest"), "restored").assert_success();
    assert_eq!(rows(table), expected.sessions);
    assert_eq!(prepared_left(table), "");
}

#[test]
fn a_missing_table_and_an_unreachable_server_are_clear_errors() {
    let ws = Workspace::new("pg-errors");
    crate::sessions::generate(&ws, scenario::seed(0x8_0004));
    let run = |args: &JobArgs, name: &str| -> Finished {
        crate::sessions::run_sessions(&ws, args, None, name)
    };
    let missing = run(
        &sessions_job(&ws, "pg-missing", "no_such_table", "two-phase"),
        "missing",
    );
    missing.assert_clean_failure(&["no_such_table", "does not exist", "create it first"]);
    assert_eq!(
        missing.status.code(),
        Some(2),
        "a missing table is permanent"
    );

    let unreachable = run(
        &sessions_job(&ws, "pg-down", "sessions", "two-phase").set(
            "--postgres",
            "postgres://postgres:hunter2@127.0.0.1:1/weir_test",
        ),
        "unreachable",
    );
    unreachable.assert_clean_failure(&["127.0.0.1:1", "connect"]);
    assert!(
        !unreachable.stderr.contains("hunter2"),
        "the password must never be printed:\n{}",
        unreachable.stderr
    );
    assert_eq!(
        unreachable.status.code(),
        Some(1),
        "an unreachable server may come back: weir launch should retry"
    );
}

#[test]
fn a_server_without_prepared_transactions_is_refused_at_start_with_the_fix() {
    let no_2pc = std::env::var("WEIR_TEST_POSTGRES_NO_2PC_URL").unwrap_or_else(|_| {
        panic!("WEIR_TEST_POSTGRES_NO_2PC_URL is not set: run `scripts/services.sh up` and eval `scripts/services.sh env`")
    });
    let ws = Workspace::new("pg-no-2pc");
    crate::sessions::generate(&ws, scenario::seed(0x8_0005));
    let args = sessions_job(&ws, "pg-no-2pc", "sessions", "two-phase").set("--postgres", &no_2pc);
    let failed = crate::sessions::run_sessions(&ws, &args, None, "no-2pc");
    failed.assert_clean_failure(&["max_prepared_transactions = 0", "postgresql.conf", "upsert"]);
    assert_eq!(failed.status.code(), Some(2));
}
