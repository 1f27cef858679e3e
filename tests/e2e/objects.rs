//! The object-store sink on a real S3 server (SeaweedFS, started by
//! `scripts/services.sh up`): word counts written as JSON lines and as Parquet under
//! SIGKILLs, every committed object read back and checked against the oracle.

use std::time::Duration;

use weir::connectors::objects::read_committed;

use crate::harness::checks::check_exactly_once;
use crate::harness::input::{self, InputSpec};
use crate::harness::job::{wordcount_command, JobArgs};
use crate::harness::launch::{launch, ChaosPlan, LaunchSpec};
use crate::harness::output::{read_committed as read_local, Record};
use crate::harness::process::run_to_end;
use crate::harness::scenario;
use crate::harness::workspace::Workspace;

use crate::s3::s3_prefix;

/// Runs wordcount under `weir launch` with `kills` SIGKILLs, its counts going to S3 in
/// `format` as well as to the local output, and checks the objects: exactly once
/// against the oracle, and the same records as the local transactional sink.
fn objects_under_kills(
    name: &'static str,
    own_seed: u64,
    format: &str,
    processes: usize,
    workers: usize,
    kills: usize,
) {
    let seed = scenario::seed(own_seed);
    let url = s3_prefix(name);
    let ws = Workspace::new(name);
    let corpus = input::generate(&ws.input, seed, &InputSpec::chaos());
    let rate = corpus.rate_limit_for(processes * workers, 5.0);
    let job = JobArgs::new(&ws)
        .interval_ms(scenario::INTERVAL_MS)
        .rate_limit(rate)
        .set("--output-url", &url)
        .set("--output-format", format);
    let spec = LaunchSpec {
        processes,
        workers,
        max_restarts: kills as u32 + 3,
        restart_delay_ms: scenario::RESTART_DELAY_MS,
        failpoint: None,
        job,
        binary: None,
    };
    let chaos = ChaosPlan {
        kills,
        first_generation: 0,
        min_delay: Duration::from_millis(300),
        max_delay: Duration::from_millis(1_000),
        seed: seed ^ 0x0B1E_C750,
    };
    let outcome = launch(&ws, &spec, Some(chaos));
    outcome.assert_success();
    assert_eq!(outcome.kills.len(), kills, "{}", outcome.summary());

    let objects = read_committed(&url, "objects")
        .unwrap_or_else(|e| panic!("read the committed objects under {url}: {e}"));
    assert!(!objects.is_empty(), "no committed object under {url}");
    let ext = if format == "parquet" {
        ".parquet"
    } else {
        ".jsonl"
    };
    let mut records = Vec::new();
    for object in &objects {
        assert!(
            object.name.ends_with(ext),
            "object {} under {url} is not {format}",
            object.name
        );
        assert!(!object.rows.is_empty(), "object {} is empty", object.name);
        for (i, row) in object.rows.iter().enumerate() {
            let origin = format!("{}#{}", object.name, i + 1);
            let field = |k: &str| {
                row.get(k)
                    .unwrap_or_else(|| panic!("row {origin} has no `{k}`: {row}"))
            };
            let record = Record {
                word: field("word")
                    .as_str()
                    .expect("word is a string")
                    .to_string(),
                count: field("count").as_u64().expect("count is a number"),
                epoch: field("epoch").as_u64().expect("epoch is a number"),
                origin,
            };
            assert_eq!(
                record.epoch, object.epoch,
                "row {} holds epoch {} but its object is named for epoch {}",
                record.origin, record.epoch, object.epoch
            );
            records.push(record);
        }
    }
    eprintln!(
        "{name}: {} objects, {} records, {} distinct words\n{}",
        objects.len(),
        records.len(),
        corpus.oracle.len(),
        outcome.summary()
    );
    check_exactly_once(&corpus.oracle, &records);

    let key = |r: &Record| (r.word.clone(), r.count, r.epoch);
    let mut remote: Vec<_> = records.iter().map(key).collect();
    let mut local: Vec<_> = read_local(&ws.output).iter().map(key).collect();
    remote.sort();
    local.sort();
    assert!(
        remote == local,
        "the objects under {url} hold {} records and the local output {}: both sinks commit the same epochs",
        remote.len(),
        local.len()
    );
}

#[test]
fn json_lines_objects_on_s3_are_exactly_once_under_kills() {
    objects_under_kills("objects-jsonl", 0xB_0001, "jsonl", 2, 1, 2);
}

#[test]
fn parquet_objects_on_s3_are_exactly_once_under_kills() {
    objects_under_kills("objects-parquet", 0xB_0002, "parquet", 1, 2, 2);
}

#[test]
fn refused_credentials_stop_the_job_with_code_2_and_are_never_shown() {
    let url = s3_prefix("objects-refused");
    let ws = Workspace::new("objects-refused");
    input::generate(&ws.input, scenario::seed(0xB_0003), &InputSpec::small());
    let key_id = "WEIRWRONGKEYID0000042";
    let secret = "weir-wrong-secret-9f3c2a71";
    let args = JobArgs::new(&ws).set("--output-url", &url);
    let mut cmd = wordcount_command(&args);
    cmd.env("AWS_ACCESS_KEY_ID", key_id)
        .env("AWS_SECRET_ACCESS_KEY", secret);
    let run = run_to_end(
        cmd,
        ws.log_paths("refused"),
        std::time::Duration::from_secs(60),
    );
    assert_eq!(
        run.status.code(),
        Some(2),
        "refused credentials must stop the job for good (exit code 2)\n{}",
        run.stderr
    );
    assert!(
        run.stderr.contains("objects") && run.stderr.contains("AWS_SECRET_ACCESS_KEY"),
        "the error must name the sink and how to fix it:\n{}",
        run.stderr
    );
    for shown in [key_id, secret] {
        assert!(
            !run.stderr.contains(shown) && !run.stdout.contains(shown),
            "a credential appears in the job's output:\n{}",
            run.stderr
        );
    }
}
