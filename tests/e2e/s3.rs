//! Checkpoints on S3-compatible object storage (SeaweedFS, started by
//! `scripts/services.sh up`).

use crate::harness::checks::check_exactly_once;
use crate::harness::scenario::{self, Scenario};

/// Points the AWS variables that weir reads at the test server, and returns a fresh
/// `s3://` prefix. Fails, never skips, when the server is not configured.
pub(crate) fn s3_prefix(name: &str) -> String {
    let var = |k: &str| {
        std::env::var(k).unwrap_or_else(|_| {
            panic!("{k} is not set: start the test servers with `scripts/services.sh up` and `eval \"$(scripts/services.sh env)\"` (scripts/test.sh does both)")
        })
    };
    let endpoint = var("WEIR_TEST_S3_ENDPOINT");
    let bucket = var("WEIR_TEST_S3_BUCKET");
    // Each test runs in its own process under nextest, so this touches no other test.
    std::env::set_var("AWS_ENDPOINT", &endpoint);
    std::env::set_var("AWS_ACCESS_KEY_ID", var("WEIR_TEST_S3_ACCESS_KEY_ID"));
    std::env::set_var(
        "AWS_SECRET_ACCESS_KEY",
        var("WEIR_TEST_S3_SECRET_ACCESS_KEY"),
    );
    std::env::set_var("AWS_REGION", "us-east-1");
    let unique = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("s3://{bucket}/e2e/{name}-{}-{unique}", std::process::id())
}

#[test]
fn exactly_once_survives_random_kills_with_checkpoints_on_s3() {
    let url = s3_prefix("eo-s3");
    let run = scenario::run(
        &Scenario::new("eo-s3-2x2", 0x9_0001, 2, 2)
            .kills(3)
            .checkpoint_url(url.clone()),
    );
    check_exactly_once(&run.corpus.oracle, &run.records);
    // The checkpoints really are on the server.
    let store = weir::checkpoint::CheckpointStore::open(&url, "wordcount").unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (complete, _) = rt.block_on(store.list()).unwrap();
    assert!(!complete.is_empty(), "no complete checkpoint under {url}");
}

#[test]
fn only_one_of_sixteen_concurrent_manifest_writers_wins_on_s3() {
    let url = s3_prefix("manifest-race");
    let store = weir::checkpoint::CheckpointStore::open(&url, "race").unwrap();
    let manifest = weir::checkpoint::Manifest {
        job: "race".into(),
        epoch: weir::Epoch(7),
        generation: weir::Generation(0),
        workers: 1,
        key_groups: 128,
        created_ms: 0,
        barrier_ms: None,
        operators: vec![],
        parts: vec![],
        sinks: vec![],
        link: None,
    };
    let rt = tokio::runtime::Runtime::new().unwrap();
    let wins: usize = rt.block_on(async {
        let tasks: Vec<_> = (0..16)
            .map(|_| {
                let (store, m) = (store.clone(), manifest.clone());
                tokio::spawn(async move { store.put_manifest(&m).await })
            })
            .collect();
        let mut wins = 0;
        for t in tasks {
            match t.await.unwrap() {
                Ok(()) => wins += 1,
                Err(weir::checkpoint::CheckpointError::ManifestExists { .. }) => {}
                Err(e) => panic!("a losing writer must see ManifestExists, got: {e}"),
            }
        }
        wins
    });
    assert_eq!(wins, 1, "exactly one concurrent manifest writer must win");
    assert_eq!(
        rt.block_on(store.read_manifest(weir::Epoch(7))).unwrap(),
        manifest
    );
}
