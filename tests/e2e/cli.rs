//! `weir checkpoints list|show|delete` on the checkpoints of a finished job.

use crate::harness::checkpoints::complete_checkpoints;
use crate::harness::input::{self, InputSpec};
use crate::harness::job::{run_standalone, run_weir, JobArgs};
use crate::harness::scenario;
use crate::harness::workspace::Workspace;

#[test]
fn checkpoints_can_be_listed_shown_and_deleted() {
    let ws = Workspace::new("cli");
    let corpus = input::generate(&ws.input, scenario::seed(0x6_0001), &InputSpec::small());
    let args = JobArgs::new(&ws)
        .workers(2)
        .interval_ms(50)
        .rate_limit(corpus.rate_limit_for(2, 1.0));
    run_standalone(&ws, "wordcount", &args).assert_success();
    let url = ws.checkpoint_url();
    let target = ["--checkpoint-dir", url.as_str(), "--job", "wordcount"];
    let newest = complete_checkpoints(&ws.checkpoints, "wordcount")
        .last()
        .expect("a complete checkpoint")
        .epoch;

    let list = run_weir(
        &ws,
        "list",
        &[&["checkpoints", "list"][..], &target].concat(),
    );
    list.assert_success();
    let listed = list
        .stdout
        .lines()
        .find(|l| l.split_whitespace().next() == Some(&newest.to_string()));
    let listed = listed.unwrap_or_else(|| {
        panic!(
            "`weir checkpoints list` should list checkpoint {newest}:\n{}",
            list.stdout
        )
    });
    assert!(listed.contains("complete"), "{listed}");

    let epoch = newest.to_string();
    let show = run_weir(
        &ws,
        "show",
        &[&["checkpoints", "show"][..], &target, &[epoch.as_str()]].concat(),
    );
    show.assert_success();
    let manifest: serde_json::Value =
        serde_json::from_str(&show.stdout).expect("show prints the manifest as JSON");
    assert_eq!(manifest["epoch"], serde_json::json!(newest));
    assert_eq!(manifest["job"], serde_json::json!("wordcount"));
    assert_eq!(manifest["workers"], serde_json::json!(2));

    let delete = run_weir(
        &ws,
        "delete",
        &[&["checkpoints", "delete"][..], &target, &[epoch.as_str()]].concat(),
    );
    delete.assert_success();
    assert!(
        complete_checkpoints(&ws.checkpoints, "wordcount")
            .iter()
            .all(|c| c.epoch != newest),
        "checkpoint {newest} should be gone after `weir checkpoints delete`"
    );

    let all = run_weir(
        &ws,
        "delete-all",
        &[&["checkpoints", "delete", "--all"][..], &target].concat(),
    );
    all.assert_success();
    assert!(
        complete_checkpoints(&ws.checkpoints, "wordcount").is_empty(),
        "--all should delete every checkpoint"
    );
    let missing = run_weir(
        &ws,
        "show-missing",
        &[&["checkpoints", "show"][..], &target, &[epoch.as_str()]].concat(),
    );
    missing.assert_clean_failure(&[&epoch, "does not exist"]);
}

/// `--log-format json` makes every log line a JSON object; `weir checkpoints list --json`
/// and `show --json` describe exactly the checkpoints the store holds; the S3 secret key
/// appears in none of them, even at the debug log level.
#[test]
fn logs_and_checkpoint_listings_are_json_and_never_show_the_s3_keys() {
    let url = crate::s3::s3_prefix("cli-json");
    let key_id = std::env::var("AWS_ACCESS_KEY_ID").unwrap();
    let secret = std::env::var("AWS_SECRET_ACCESS_KEY").unwrap();
    let ws = Workspace::new("cli-json");
    let corpus = input::generate(&ws.input, scenario::seed(0x6_0002), &InputSpec::small());
    let args = JobArgs::new(&ws)
        .set("--checkpoint-dir", &url)
        .set("--log-format", "json")
        .workers(2)
        .interval_ms(50)
        .rate_limit(corpus.rate_limit_for(2, 1.0));
    let mut cmd = crate::harness::job::wordcount_command(&args);
    cmd.env("RUST_LOG", "debug");
    let run = crate::harness::process::run_to_end(
        cmd,
        ws.log_paths("job"),
        std::time::Duration::from_secs(120),
    );
    run.assert_success();
    let mut lines = 0;
    for line in run.stderr.lines().filter(|l| !l.trim().is_empty()) {
        let event: serde_json::Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("a log line that is not JSON ({e}): {line}"));
        assert!(
            event["level"].is_string() && event["timestamp"].is_string(),
            "{line}"
        );
        lines += 1;
    }
    assert!(lines > 0, "the job logged nothing at the debug level");

    let target = ["--checkpoint-dir", url.as_str(), "--job", "wordcount"];
    let list = run_weir(
        &ws,
        "list-json",
        &[&["checkpoints", "list", "--json"][..], &target].concat(),
    );
    list.assert_success();
    let listed: Vec<serde_json::Value> =
        serde_json::from_str(&list.stdout).expect("list --json prints a JSON array");
    let store = weir::checkpoint::CheckpointStore::open(&url, "wordcount").unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (complete, _) = rt.block_on(store.list()).unwrap();
    let listed_complete: Vec<u64> = listed
        .iter()
        .filter(|c| c["status"] == "complete")
        .map(|c| c["epoch"].as_u64().expect("an epoch"))
        .collect();
    let stored: Vec<u64> = complete.iter().map(|e| e.0).collect();
    assert!(!stored.is_empty(), "the job completed no checkpoint");
    assert_eq!(listed_complete, stored, "{}", list.stdout);
    for c in listed.iter().filter(|c| c["status"] == "complete") {
        assert!(
            c["generation"].is_u64() && c["bytes"].as_u64().is_some_and(|b| b > 0),
            "{c}"
        );
    }

    let newest = stored.last().unwrap().to_string();
    let show = run_weir(
        &ws,
        "show-json",
        &[
            &["checkpoints", "show", "--json"][..],
            &target,
            &[newest.as_str()],
        ]
        .concat(),
    );
    show.assert_success();
    let shown: serde_json::Value = serde_json::from_str(&show.stdout).expect("one JSON object");
    assert_eq!(shown["status"], "complete", "{shown}");
    assert_eq!(shown["manifest"]["epoch"].to_string(), newest, "{shown}");
    assert_eq!(shown["manifest"]["job"], "wordcount", "{shown}");

    for (what, text) in [
        ("the job's log", &run.stderr),
        ("list --json", &list.stdout),
        ("show --json", &show.stdout),
    ] {
        // The key id is no secret (and the test server's is a common word), but it must
        // not show as a request's credential either.
        assert!(
            !text.contains(secret.as_str()),
            "{what} shows the S3 secret key"
        );
        assert!(
            !text.contains(&format!("Credential={key_id}")),
            "{what} shows a signed request's credential"
        );
    }
}

/// weir's binaries start jemalloc with its bookkeeping on huge pages once it grows
/// (`metadata_thp:auto`, set by `weir::global_allocator!`), and `_RJEM_MALLOC_CONF` in the
/// environment still overrides it.
#[cfg(feature = "jemalloc")]
#[test]
fn binaries_start_jemalloc_with_metadata_thp_auto_unless_the_environment_overrides_it() {
    let option = |conf: &str| {
        let out = std::process::Command::new(crate::harness::bins::weir())
            .arg("--version")
            .env("_RJEM_MALLOC_CONF", conf)
            .output()
            .expect("run weir --version");
        assert!(out.status.success(), "weir --version failed: {out:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        stderr
            .lines()
            .find_map(|l| l.trim().strip_prefix("opt.metadata_thp: "))
            .unwrap_or_else(|| panic!("jemalloc printed no opt.metadata_thp:\n{stderr}"))
            .to_string()
    };
    assert_eq!(option("stats_print:true"), "\"auto\"");
    assert_eq!(
        option("metadata_thp:disabled,stats_print:true"),
        "\"disabled\""
    );
}
