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

#[test]
fn a_part_larger_than_one_upload_chunk_goes_up_in_chunks_and_reads_back_verified() {
    let url = s3_prefix("multipart");
    let store = weir::checkpoint::CheckpointStore::open(&url, "big").unwrap();
    // 40 MiB of varied bytes: above the 32 MiB from which parts go up in 16 MiB chunks,
    // and not a multiple of the chunk.
    let data: Vec<u64> = (0..5 * (1u64 << 20) + 7)
        .map(|i| i.wrapping_mul(0x9e37_79b9_7f4a_7c15))
        .collect();
    let bytes = weir::checkpoint::codec::encode("big", &data).unwrap();
    assert!(bytes.len() > 40 << 20);
    let path = store.layout().part(weir::Epoch(1), "op", "w0");
    let rt = tokio::runtime::Runtime::new().unwrap();
    let entry = rt
        .block_on(store.put_part(path, "op", weir::WorkerIndex(0), (0, 128), bytes))
        .unwrap();
    let part = rt.block_on(store.get_part(&entry)).unwrap();
    assert_eq!(part.decode::<Vec<u64>>().unwrap(), data);
    // S3 names a multipart object's ETag after its part count: three chunks.
    use object_store::ObjectStoreExt;
    let meta = rt
        .block_on(
            store
                .object_store()
                .head(&object_store::path::Path::from(entry.path.as_str())),
        )
        .unwrap();
    let etag = meta.e_tag.unwrap_or_default();
    assert!(
        etag.trim_matches('"').ends_with("-3"),
        "`{}` has ETag {etag}, not that of a 3-part multipart upload",
        entry.path
    );
}
