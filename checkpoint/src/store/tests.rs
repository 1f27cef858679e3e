//! Tests of the checkpoint store against the memory store and a local directory.

use object_store::memory::InMemory;

use super::*;
use crate::codec;
use crate::ids::{Epoch, Generation, WorkerIndex};
use crate::manifest::{PartEntry, SinkEntry};
use crate::protocol::{Node, RestoreTarget};
use crate::store::Committed;

fn manifest(job: &str, epoch: u64, parts: Vec<PartEntry>) -> Manifest {
    Manifest {
        job: job.into(),
        epoch: Epoch(epoch),
        generation: Generation(0),
        workers: 1,
        key_groups: 128,
        created_ms: 0,
        barrier_ms: None,
        operators: vec!["op".into()],
        parts,
        sinks: vec![SinkEntry {
            sink: "s".into(),
            worker: WorkerIndex(0),
            epoch: Epoch(epoch),
            generation: Generation(0),
            handle: "h".into(),
        }],
        link: None,
    }
}

/// Writes the one part of a checkpoint of `epoch`, named `name`.
async fn write_part(store: &CheckpointStore, epoch: u64, name: &str) -> PartEntry {
    let path = store.layout().part(Epoch(epoch), "op", name);
    store
        .put_part(
            path,
            "op",
            WorkerIndex(0),
            (0, 128),
            codec::encode("t", &vec![epoch; 10]).unwrap(),
        )
        .await
        .unwrap()
}

async fn checkpoint(store: &CheckpointStore, epoch: u64) -> Manifest {
    let part = write_part(store, epoch, "w0").await;
    let m = manifest("job", epoch, vec![part]);
    store.put_manifest(&m).await.unwrap();
    m
}

#[tokio::test]
async fn manifest_is_written_once() {
    let store = CheckpointStore::open("memory://", "job").unwrap();
    let m = checkpoint(&store, 1).await;
    assert!(matches!(
        store.put_manifest(&m).await,
        Err(CheckpointError::ManifestExists { .. })
    ));
    assert_eq!(store.read_manifest(Epoch(1)).await.unwrap(), m);
}

#[tokio::test]
async fn concurrent_manifest_writers_have_one_winner_on_the_local_file_system() {
    let dir = tempfile::tempdir().unwrap();
    let store = CheckpointStore::open(dir.path().to_str().unwrap(), "job").unwrap();
    let m = manifest("job", 7, vec![]);
    let tasks: Vec<_> = (0..16)
        .map(|_| {
            let (s, m) = (store.clone(), m.clone());
            tokio::spawn(async move { s.put_manifest(&m).await.is_ok() })
        })
        .collect();
    let mut winners = 0;
    for t in tasks {
        winners += t.await.unwrap() as usize;
    }
    assert_eq!(winners, 1);
}

#[tokio::test]
async fn latest_falls_back_past_a_corrupted_part() {
    let dir = tempfile::tempdir().unwrap();
    let store = CheckpointStore::open(dir.path().to_str().unwrap(), "job").unwrap();
    checkpoint(&store, 1).await;
    let m2 = checkpoint(&store, 2).await;
    // Flip a byte of checkpoint 2's part.
    let file = dir.path().join(&m2.parts[0].path);
    let mut bytes = std::fs::read(&file).unwrap();
    let n = bytes.len();
    bytes[n - 1] ^= 1;
    std::fs::write(&file, bytes).unwrap();
    assert_eq!(
        store
            .resolve_restore(&RestoreTarget::Latest)
            .await
            .unwrap()
            .epoch,
        Epoch(1)
    );
    let err = store
        .resolve_restore(&RestoreTarget::Epoch(Epoch(2)))
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains(&m2.parts[0].path), "{err}");
}

#[tokio::test]
async fn a_part_missing_or_cut_short_in_a_local_directory_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let store = CheckpointStore::open(dir.path().to_str().unwrap(), "job").unwrap();
    let m = checkpoint(&store, 1).await;
    let entry = &m.parts[0];
    let file = dir.path().join(&entry.path);
    // Read back whole, by mapping its file, it verifies and decodes.
    let part = store.get_part(entry).await.unwrap();
    assert_eq!(part.decode::<Vec<u64>>().unwrap(), vec![1; 10]);
    drop(part);
    // Cut short, and empty: the size check names the object.
    let bytes = std::fs::read(&file).unwrap();
    for len in [bytes.len() - 1, 0] {
        std::fs::write(&file, &bytes[..len]).unwrap();
        let err = store.get_part(entry).await.unwrap_err();
        assert!(matches!(err, CheckpointError::Corrupt { .. }), "{err}");
        assert!(err.to_string().contains(&entry.path), "{err}");
    }
    // Gone: a storage error that names it, as the object store would report.
    std::fs::remove_file(&file).unwrap();
    let err = store.get_part(entry).await.unwrap_err();
    assert!(
        matches!(
            &err,
            CheckpointError::Storage {
                source: object_store::Error::NotFound { .. },
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains(&entry.path), "{err}");
}

#[tokio::test]
async fn a_large_part_in_an_object_store_is_read_in_ranges_and_checked_whole() {
    let store = CheckpointStore::with_store(Arc::new(InMemory::new()), "memory://", "job");
    // Over 40 MB: read back as ranged reads, several at once.
    let values: Vec<u64> = (0..5_500_000).collect();
    let path = store.layout().part(Epoch(1), "op", "w0");
    let entry = store
        .put_part(
            path.clone(),
            "op",
            WorkerIndex(0),
            (0, 128),
            codec::encode("t", &values).unwrap(),
        )
        .await
        .unwrap();
    assert!(entry.size >= super::parts::RANGED_FROM, "{}", entry.size);
    let part = store.get_part(&entry).await.unwrap();
    assert_eq!(part.decode::<Vec<u64>>().unwrap(), values);
    // An object of another size is corrupt, named with both sizes; so is one of the
    // same size with other bytes (its checksum).
    let whole = part.whole().unwrap().clone();
    for (bytes, says) in [
        (
            whole.slice(..whole.len() - 3),
            format!("{} bytes", entry.size - 3),
        ),
        (whole.slice(..100), "100 bytes".to_string()),
        // Empty: no range of it can be read, so it is read whole and checked.
        (bytes::Bytes::new(), "0 bytes".to_string()),
        (
            {
                let mut b = whole.to_vec();
                b[whole.len() / 2] ^= 1;
                bytes::Bytes::from(b)
            },
            "crc".to_string(),
        ),
    ] {
        store.object_store().put(&path, bytes.into()).await.unwrap();
        let err = store.get_part(&entry).await.unwrap_err();
        assert!(matches!(err, CheckpointError::Corrupt { .. }), "{err}");
        let text = err.to_string();
        assert!(text.contains(&entry.path) && text.contains(&says), "{text}");
    }
}

#[tokio::test]
async fn restore_keeps_the_verified_parts_of_the_checkpoint_it_chose() {
    let dir = tempfile::tempdir().unwrap();
    let store = CheckpointStore::open(dir.path().to_str().unwrap(), "job").unwrap();
    let m1 = checkpoint(&store, 1).await;
    let m2 = checkpoint(&store, 2).await;
    let file = dir.path().join(&m2.parts[0].path);
    let mut bytes = std::fs::read(&file).unwrap();
    bytes[codec::HEADER_LEN] ^= 4;
    std::fs::write(&file, bytes).unwrap();
    let point = store
        .resolve_restore_keeping(&RestoreTarget::Latest, &|_| true)
        .await
        .unwrap();
    assert_eq!(point.manifest, m1);
    assert_eq!(point.parts.len(), 1);
    assert_eq!(point.parts[0].entry(), &m1.parts[0]);
    assert_eq!(point.parts[0].decode::<Vec<u64>>().unwrap(), vec![1u64; 10]);
    let none = store
        .resolve_restore_keeping(&RestoreTarget::Epoch(Epoch(1)), &|_| false)
        .await
        .unwrap();
    assert!(none.parts.is_empty());
}

fn part_entry(bytes: &[u8]) -> PartEntry {
    PartEntry {
        operator: "op".into(),
        worker: WorkerIndex(0),
        key_group_start: 0,
        key_group_end: 128,
        path: "job/chk-00000000000000000001/op/w0".into(),
        size: bytes.len() as u64,
        crc32: codec::crc32(bytes),
        packed: None,
    }
}

#[test]
fn a_header_naming_another_readable_version_or_known_kind_never_reads_a_different_value() {
    let data = vec![0u8; 111];
    let bytes = codec::encode("p", &data).unwrap();
    assert_eq!(
        codec::FORMAT_VERSION ^ 7,
        3,
        "this case flips version 4 to 3"
    );
    let mut older = bytes.clone();
    older[4] ^= 7;
    let part = VerifiedPart::verify(&part_entry(&older), older.into()).unwrap();
    assert_eq!(part.decode::<Vec<u8>>().unwrap(), data);
    // A kind field naming another known kind is refused when decoded.
    let mut packed = bytes.clone();
    packed[6] ^= 2;
    let entry = part_entry(&packed);
    let part = VerifiedPart::verify(&entry, packed.into()).unwrap();
    let err = part.decode::<Vec<u8>>().unwrap_err().to_string();
    assert!(err.contains(&entry.path), "{err}");
    // A version outside the readable range is refused, naming the object.
    let mut newer = bytes;
    newer[4] ^= 4;
    let entry = part_entry(&newer);
    let err = VerifiedPart::verify(&entry, newer.into())
        .unwrap_err()
        .to_string();
    assert!(err.contains(&entry.path), "{err}");
}

#[test]
fn a_verified_part_decodes_without_a_second_check() {
    let bytes = codec::encode("t", &vec![5u16; 40]).unwrap();
    let entry = part_entry(&bytes);
    let part = VerifiedPart::verify(&entry, bytes.into()).unwrap();
    assert_eq!(part.decode::<Vec<u16>>().unwrap(), vec![5u16; 40]);
    let json = codec::encode_json("t", &1u8).unwrap();
    let part = VerifiedPart::verify(&part_entry(&json), json.into()).unwrap();
    let err = part.decode::<u8>().unwrap_err().to_string();
    assert!(err.contains("expected a bincode payload"), "{err}");
}

proptest::proptest! {
    #[test]
    fn any_single_byte_corruption_of_a_part_is_rejected_and_named(
        data in proptest::collection::vec(proptest::prelude::any::<u8>(), 1..200),
        pos in proptest::prelude::any::<proptest::sample::Index>(),
        flip in 1u8..=255,
    ) {
        let bytes = codec::encode("p", &data).unwrap();
        let entry = part_entry(&bytes);
        proptest::prop_assert!(VerifiedPart::verify(&entry, bytes.clone().into()).is_ok());
        let mut bad = bytes.clone();
        bad[pos.index(bytes.len())] ^= flip;
        let err = VerifiedPart::verify(&entry, bad.into()).unwrap_err().to_string();
        proptest::prop_assert!(err.contains(&entry.path), "{}", err);
        // The header and its CRC are checked even when the manifest's entry was
        // computed over the corrupted bytes. What they cannot see is a version or kind
        // field that still names a readable version or a known kind. Such an object
        // reads back as the same value (every readable version encodes a bincode
        // payload the same way) or is refused when decoded (another kind), naming the
        // object: never a different value.
        let mut bad = bytes.clone();
        let at = pos.index(bytes.len());
        bad[at] ^= flip;
        let entry = part_entry(&bad);
        if let Ok(part) = VerifiedPart::verify(&entry, bad.into()) {
            proptest::prop_assert!((4..8).contains(&at), "byte {} changed unnoticed", at);
            match part.decode::<Vec<u8>>() {
                Ok(value) => proptest::prop_assert_eq!(value, data),
                Err(err) => {
                    let err = err.to_string();
                    proptest::prop_assert!(err.contains(&entry.path), "{}", err);
                }
            }
        }
    }

    #[test]
    fn a_truncated_part_is_rejected(
        data in proptest::collection::vec(proptest::prelude::any::<u8>(), 1..200),
        cut in proptest::prelude::any::<proptest::sample::Index>(),
    ) {
        let bytes = codec::encode("p", &data).unwrap();
        let entry = part_entry(&bytes);
        let short = bytes[..cut.index(bytes.len())].to_vec();
        let err = VerifiedPart::verify(&entry, short.clone().into()).unwrap_err().to_string();
        proptest::prop_assert!(err.contains(&entry.path), "{}", err);
        let entry = part_entry(&short);
        let err = VerifiedPart::verify(&entry, short.into()).unwrap_err().to_string();
        proptest::prop_assert!(err.contains("truncated"), "{}", err);
    }
}

#[tokio::test]
async fn a_truncated_manifest_is_named_in_the_error() {
    let dir = tempfile::tempdir().unwrap();
    let store = CheckpointStore::open(dir.path().to_str().unwrap(), "job").unwrap();
    checkpoint(&store, 1).await;
    let file = dir.path().join(store.layout().manifest(Epoch(1)).as_ref());
    let bytes = std::fs::read(&file).unwrap();
    std::fs::write(&file, &bytes[..bytes.len() / 2]).unwrap();
    let err = store
        .resolve_restore(&RestoreTarget::Latest)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("_MANIFEST") && err.contains("truncated"),
        "{err}"
    );
}

#[tokio::test]
async fn restore_without_checkpoint_is_a_clear_error() {
    let store = CheckpointStore::open("memory://", "job").unwrap();
    let err = store
        .resolve_restore(&RestoreTarget::Latest)
        .await
        .unwrap_err();
    assert!(matches!(err, CheckpointError::NoCheckpoint { .. }), "{err}");
    assert!(err.to_string().contains("without --restore"));
}

#[tokio::test]
async fn job_name_mismatch_is_an_error() {
    let inner: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
    let store = CheckpointStore::with_store(inner.clone(), "memory://", "job");
    let m = manifest("other", 1, vec![]);
    // A manifest of job `other` under job `job`'s prefix.
    let bytes = codec::encode_json("m", &m).unwrap();
    inner
        .put(&store.layout().manifest(Epoch(1)), PutPayload::from(bytes))
        .await
        .unwrap();
    let err = store
        .resolve_restore(&RestoreTarget::Latest)
        .await
        .unwrap_err();
    assert!(matches!(err, CheckpointError::JobMismatch { .. }), "{err}");
}

#[tokio::test]
async fn retention_deletes_old_checkpoints_only_after_a_newer_one_is_complete() {
    let store = CheckpointStore::open("memory://", "job").unwrap();
    for e in 1..=4 {
        checkpoint(&store, e).await;
    }
    // An incomplete, newer checkpoint in progress.
    let p = store.layout().part(Epoch(5), "op", "w0");
    store
        .put_part(p, "op", WorkerIndex(0), (0, 128), vec![1])
        .await
        .unwrap();
    assert_eq!(
        store.apply_retention(2).await.unwrap(),
        vec![Epoch(1), Epoch(2)]
    );
    let (complete, all) = store.list().await.unwrap();
    assert_eq!(complete, vec![Epoch(3), Epoch(4)]);
    assert_eq!(all, vec![Epoch(3), Epoch(4), Epoch(5)]);
}

#[tokio::test]
async fn retention_keeps_a_restored_part_that_a_later_checkpoint_reports_again() {
    let store = CheckpointStore::open("memory://", "job").unwrap();
    let restored = checkpoint(&store, 1).await;
    for e in 2..=3 {
        checkpoint(&store, e).await;
    }
    // The job restores checkpoint 1 (abandoning 2 and 3); its operator's state is
    // unchanged, so checkpoints 4 and 5 report checkpoint 1's part again.
    store.abandon(&[Epoch(2), Epoch(3)]).await.unwrap();
    for e in 4..=5 {
        store
            .put_manifest(&manifest("job", e, restored.parts.clone()))
            .await
            .unwrap();
    }
    assert_eq!(
        store.apply_retention(1).await.unwrap(),
        vec![Epoch(2), Epoch(3), Epoch(4)]
    );
    // Checkpoint 1 is no longer restorable, but its part is still readable.
    assert_eq!(store.list().await.unwrap().0, vec![Epoch(5)]);
    let m = store.resolve_restore(&RestoreTarget::Latest).await.unwrap();
    assert_eq!(m.epoch, Epoch(5));
    assert!(store.get_part(&m.parts[0]).await.is_ok());
}

#[tokio::test]
async fn deleting_a_local_checkpoint_leaves_no_empty_directory() {
    let dir = tempfile::tempdir().unwrap();
    let store = CheckpointStore::open(dir.path().to_str().unwrap(), "job").unwrap();
    checkpoint(&store, 1).await;
    checkpoint(&store, 2).await;
    store.delete_checkpoint(Epoch(1)).await.unwrap();
    assert!(!dir
        .path()
        .join(store.layout().checkpoint_dir(Epoch(1)).as_ref())
        .exists());
    assert_eq!(
        store.list().await.unwrap(),
        (vec![Epoch(2)], vec![Epoch(2)])
    );
}

#[tokio::test]
async fn deleting_a_checkpoint_whose_parts_a_newer_one_reuses_deletes_only_its_manifest() {
    let dir = tempfile::tempdir().unwrap();
    let store = CheckpointStore::open(dir.path().to_str().unwrap(), "job").unwrap();
    let first = checkpoint(&store, 1).await;
    // Checkpoint 2 reuses checkpoint 1's part (an unchanged part, or a chain's base).
    let own = write_part(&store, 2, "w1").await;
    let mut second = manifest("job", 2, vec![first.parts[0].clone(), own]);
    second.parts[1].worker = WorkerIndex(1);
    store.put_manifest(&second).await.unwrap();

    assert_eq!(
        store.remove_checkpoint(Epoch(1)).await.unwrap(),
        Removed::ManifestOnly {
            referenced_by: vec![Epoch(2)]
        }
    );
    assert_eq!(
        store.list().await.unwrap(),
        (vec![Epoch(2)], vec![Epoch(1), Epoch(2)])
    );
    // Checkpoint 2 still restores, its reused part included.
    let back = store
        .resolve_restore_keeping(&RestoreTarget::Latest, &|_| true)
        .await
        .unwrap();
    assert_eq!(back.manifest.epoch, Epoch(2));
    assert_eq!(back.parts.len(), 2);
    // Once nothing references it, it goes whole.
    assert_eq!(
        store.remove_checkpoint(Epoch(2)).await.unwrap(),
        Removed::Deleted
    );
    assert_eq!(
        store.remove_checkpoint(Epoch(1)).await.unwrap(),
        Removed::Deleted
    );
    assert_eq!(store.list().await.unwrap(), (vec![], vec![]));
}

#[tokio::test]
async fn the_newest_explicit_restore_is_read_back_and_a_damaged_record_is_named() {
    let store = CheckpointStore::open("memory://", "job").unwrap();
    assert_eq!(store.newest_restore().await.unwrap(), None);
    store
        .record_restore(Generation(2), &RestoreTarget::Savepoint("sp".into()))
        .await
        .unwrap();
    store
        .record_restore(Generation(10), &RestoreTarget::Epoch(Epoch(7)))
        .await
        .unwrap();
    assert_eq!(
        store.newest_restore().await.unwrap(),
        Some((Generation(10), RestoreTarget::Epoch(Epoch(7))))
    );
    let path = store.layout().restore_record(Generation(11));
    store
        .object_store()
        .put(&path, b"{not json".to_vec().into())
        .await
        .unwrap();
    let e = store.newest_restore().await.unwrap_err().to_string();
    assert!(e.contains(path.as_ref()), "{e}");
}

#[tokio::test]
async fn restoring_an_older_checkpoint_abandons_the_newer_ones() {
    let store = CheckpointStore::open("memory://", "job").unwrap();
    for e in 1..=3 {
        checkpoint(&store, e).await;
    }
    store.abandon(&[Epoch(2), Epoch(3)]).await.unwrap();
    assert_eq!(store.list().await.unwrap().0, vec![Epoch(1)]);
    // Abandoning again, or a checkpoint that is gone, is fine.
    store.abandon(&[Epoch(2), Epoch(3)]).await.unwrap();
    assert_eq!(store.list().await.unwrap().0, vec![Epoch(1)]);
    assert!(store
        .object_store()
        .head(&store.layout().abandoned_manifest(Epoch(2)))
        .await
        .is_ok());
}

#[tokio::test]
async fn a_savepoint_outlives_its_checkpoint_and_restores() {
    let dir = tempfile::tempdir().unwrap();
    let store = CheckpointStore::open(dir.path().to_str().unwrap(), "job").unwrap();
    checkpoint(&store, 1).await;
    checkpoint(&store, 2).await;
    let sp = store
        .create_savepoint("before-upgrade", None)
        .await
        .unwrap();
    assert_eq!(sp.epoch, Epoch(2));
    assert!(sp
        .parts
        .iter()
        .all(|p| p.path.starts_with("job/savepoints/before-upgrade/")));
    assert!(matches!(
        store
            .create_savepoint("before-upgrade", Some(Epoch(1)))
            .await,
        Err(CheckpointError::ManifestExists { .. })
    ));
    store.delete_checkpoint(Epoch(2)).await.unwrap();
    store.delete_checkpoint(Epoch(1)).await.unwrap();
    let back = store
        .resolve_restore(&RestoreTarget::Savepoint("before-upgrade".into()))
        .await
        .unwrap();
    assert_eq!(back, sp);
    assert_eq!(
        store.list_savepoints().await.unwrap(),
        vec!["before-upgrade".to_string()]
    );
    store.delete_savepoint("before-upgrade").await.unwrap();
    let err = store
        .resolve_restore(&RestoreTarget::Savepoint("before-upgrade".into()))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("before-upgrade"), "{err}");
}

#[tokio::test]
async fn generations_are_listed_in_order() {
    let store = CheckpointStore::open("memory://", "job").unwrap();
    store.announce_generation(Generation(2)).await.unwrap();
    assert_eq!(
        store.announce_generation(Generation(10)).await.unwrap(),
        vec![Generation(2), Generation(10)]
    );
}

#[test]
fn unknown_schemes_are_rejected() {
    let err = CheckpointStore::open("ftp://x", "job")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("ftp://x") && err.contains("unknown scheme"),
        "{err}"
    );
}

#[tokio::test]
async fn a_generation_is_claimed_once_per_index() {
    let dir = tempfile::tempdir().unwrap();
    let store = CheckpointStore::open(dir.path().to_str().unwrap(), "job").unwrap();
    assert!(store.claim_generation(Generation(3), 0).await.unwrap());
    assert!(store.claim_generation(Generation(3), 1).await.unwrap());
    assert!(!store.claim_generation(Generation(3), 0).await.unwrap());
    assert!(store.claim_generation(Generation(4), 0).await.unwrap());
    assert_eq!(
        store.claims().await.unwrap(),
        vec![(Generation(3), 0), (Generation(3), 1), (Generation(4), 0)]
    );
    store.prune_claims(Generation(4)).await.unwrap();
    assert_eq!(store.claims().await.unwrap(), vec![(Generation(4), 0)]);
}

/// A checkpoint of `generation` following `follows`, written with its link.
async fn linked(store: &CheckpointStore, epoch: u64, generation: u64, follows: Node) -> Committed {
    let part = write_part(store, epoch, &format!("w0-g{generation}")).await;
    let mut m = manifest("job", epoch, vec![part]);
    m.generation = Generation(generation);
    m.link = Some(follows.name());
    store.commit_manifest(&m, follows).await.unwrap()
}

async fn latest(store: &CheckpointStore) -> Epoch {
    store
        .resolve_restore(&RestoreTarget::Latest)
        .await
        .unwrap()
        .epoch
}

#[tokio::test]
async fn a_manifest_whose_link_was_never_written_is_passed_over_not_a_damaged_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let store = CheckpointStore::open(dir.path().to_str().unwrap(), "job").unwrap();
    let g = Generation;
    // Generation 0 starts fresh and writes the manifest of its first checkpoint, then is
    // killed before the link that commits it.
    let start = store.seal(g(0), None, &[]).await.unwrap().unwrap();
    let part = write_part(&store, 1, "w0-g0").await;
    let mut first = manifest("job", 1, vec![part]);
    first.link = Some(start.name());
    store.put_manifest(&first).await.unwrap();

    // A restart finds no checkpoint, and is told which manifest it passed over.
    let err = store
        .resolve_restore(&RestoreTarget::Latest)
        .await
        .unwrap_err();
    let CheckpointError::NoCheckpoint { uncommitted, .. } = &err else {
        panic!("{err}")
    };
    assert_eq!(uncommitted, &vec![Epoch(1)]);
    assert!(err.to_string().contains("chk-1"), "{err}");
    // Asked for by epoch, it is refused naming why.
    let err = store
        .resolve_restore(&RestoreTarget::Epoch(Epoch(1)))
        .await
        .unwrap_err();
    assert!(matches!(err, CheckpointError::Uncommitted { .. }), "{err}");

    // Behind a committed checkpoint, it is passed over too, and reported.
    let dir2 = tempfile::tempdir().unwrap();
    let older = CheckpointStore::open(dir2.path().to_str().unwrap(), "job").unwrap();
    let start2 = older.seal(g(0), None, &[]).await.unwrap().unwrap();
    let Committed::Yes { next } = linked(&older, 1, 0, start2).await else {
        panic!()
    };
    let part = write_part(&older, 2, "w0-g0").await;
    let mut second = manifest("job", 2, vec![part]);
    second.link = Some(next.name());
    older.put_manifest(&second).await.unwrap();
    let point = older
        .resolve_restore_keeping(&RestoreTarget::Latest, &|_| false)
        .await
        .unwrap();
    assert_eq!(point.manifest.epoch, Epoch(1));
    assert_eq!(point.uncommitted, vec![Epoch(2)]);

    // The dead generation's coordinator was in fact only paused: it commits the
    // checkpoint after the restart resolved its start but before the restart sealed.
    // Since the restart does not count the uncommitted checkpoint as seen, sealing
    // tells it to restore that checkpoint instead of overwriting its link.
    assert!(matches!(
        store.commit_manifest(&first, start).await.unwrap(),
        Committed::Yes { .. }
    ));
    assert_eq!(store.seal(g(1), None, &[]).await.unwrap(), Err(Epoch(1)));
    assert_eq!(latest(&store).await, Epoch(1));
}

#[tokio::test]
async fn a_zombie_of_an_older_generation_can_never_commit_a_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let store = CheckpointStore::open(dir.path().to_str().unwrap(), "job").unwrap();
    let g = Generation;
    // Generation 0 starts fresh and commits checkpoints 1 and 2.
    let start = store.seal(g(0), None, &[]).await.unwrap().unwrap();
    assert_eq!(
        start,
        Node::Restart {
            epoch: Epoch(0),
            generation: g(0)
        }
    );
    let Committed::Yes { next } = linked(&store, 1, 0, start).await else {
        panic!()
    };
    let Committed::Yes { next } = linked(&store, 2, 0, next).await else {
        panic!()
    };
    assert_eq!(next, Node::Checkpoint(Epoch(2)));

    // Generation 1 restores 2 while a coordinator of 0 is paused before its manifest 3.
    let g1 = store
        .seal(g(1), Some(Epoch(2)), &[Epoch(1), Epoch(2)])
        .await
        .unwrap()
        .unwrap();
    // The zombie resumes: its manifest lands, but it is not committed.
    assert_eq!(
        linked(&store, 3, 0, next).await,
        Committed::Fenced { by: g(1) }
    );
    assert_eq!(latest(&store).await, Epoch(2));
    let zombie = store.read_manifest(Epoch(3)).await.unwrap();
    let e = store
        .check_committed(&zombie)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("checkpoint 3 (generation 0)") && e.contains("generation 1"),
        "{e}"
    );
    // Retention does not count it as a checkpoint either.
    store.apply_retention(1).await.unwrap();
    assert_eq!(latest(&store).await, Epoch(2));

    // Generation 1 reaches epoch 3: the zombie's manifest is moved aside.
    let Committed::Yes { next } = linked(&store, 3, 1, g1).await else {
        panic!()
    };
    assert_eq!(latest(&store).await, Epoch(3));

    // Generation 2 restores 3 and fails before its first checkpoint; generation 3
    // restores 3 again and fences generation 2's first checkpoint too.
    let seen = [Epoch(2), Epoch(3)];
    let g2 = store
        .seal(g(2), Some(Epoch(3)), &seen)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        g2,
        Node::Restart {
            epoch: Epoch(3),
            generation: g(2)
        }
    );
    let g3 = store
        .seal(g(3), Some(Epoch(3)), &seen)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        g3,
        Node::Restart {
            epoch: Epoch(3),
            generation: g(3)
        }
    );
    assert_eq!(
        linked(&store, 4, 2, g2).await,
        Committed::Fenced { by: g(3) }
    );
    assert_eq!(latest(&store).await, Epoch(3));
    let _ = next;

    // Generation 3 commits 4 (moving 2's manifest aside) after generation 4 planned its
    // start: generation 4 must restore 4 instead.
    assert!(matches!(
        linked(&store, 4, 3, g3).await,
        Committed::Yes { .. }
    ));
    assert_eq!(
        store.seal(g(4), Some(Epoch(3)), &seen).await.unwrap(),
        Err(Epoch(4))
    );
    // Asked to go back to 3 with 4 listed, generation 5 abandons 4.
    let g5 = store
        .seal(g(5), Some(Epoch(3)), &[Epoch(3), Epoch(4)])
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        g5,
        Node::Restart {
            epoch: Epoch(3),
            generation: g(5)
        }
    );
    assert_eq!(latest(&store).await, Epoch(3));
}

#[tokio::test]
async fn retention_keeps_only_the_links_that_retained_checkpoints_hang_from() {
    let store = CheckpointStore::open("memory://", "job").unwrap();
    let mut follows = store.seal(Generation(0), None, &[]).await.unwrap().unwrap();
    for epoch in 1..=6 {
        let Committed::Yes { next } = linked(&store, epoch, 0, follows).await else {
            panic!()
        };
        follows = next;
        store.apply_retention(2).await.unwrap();
    }
    let links: Vec<String> = store
        .list_objects(&store.layout().links())
        .await
        .unwrap()
        .iter()
        .filter_map(|o| o.location.filename().map(str::to_string))
        .collect();
    // Checkpoints 5 and 6 are retained; 6 hangs from 5's link, 5 from 4's.
    assert_eq!(
        links,
        vec![
            Node::Checkpoint(Epoch(4)).name(),
            Node::Checkpoint(Epoch(5)).name()
        ]
    );
    assert_eq!(latest(&store).await, Epoch(6));
    assert!(store.verify(Epoch(5)).await.is_ok());
}

/// A packed object of a chain (see `crate::pack`) written for `epoch`, holding bases for
/// `bases`, all named like the objects of one worker and generation.
async fn write_link(store: &CheckpointStore, epoch: u64, bases: Vec<(u32, u32)>) -> PartEntry {
    let mut w = crate::pack::PackWriter::new("t");
    w.push(
        0,
        crate::pack::SectionKind::Delta,
        &vec![(epoch, Some(epoch))],
    )
    .unwrap();
    let path = store.layout().part(Epoch(epoch), "op", "w0-g0");
    let mut entry = store
        .put_part(path, "op", WorkerIndex(0), (0, 128), w.finish())
        .await
        .unwrap();
    entry.packed = Some(bases);
    entry
}

#[tokio::test]
async fn a_chain_across_directories_is_retained_whole_and_copied_whole_by_a_savepoint() {
    let dir = tempfile::tempdir().unwrap();
    let store = CheckpointStore::open(dir.path().to_str().unwrap(), "job").unwrap();
    // Checkpoint e lists the chain of objects written at 1, 3, ..., e (a base at 1).
    let mut chain = Vec::new();
    for e in 1..=4 {
        let link = write_link(&store, e, if e == 1 { vec![(0, 128)] } else { vec![] }).await;
        if e % 2 == 1 {
            chain.push(link);
        }
        store
            .put_manifest(&manifest("job", e, chain.clone()))
            .await
            .unwrap();
    }
    // Retaining the newest checkpoint keeps every directory its chain lists.
    assert_eq!(store.apply_retention(1).await.unwrap(), vec![Epoch(2)]);
    for link in &chain {
        store.get_part(link).await.unwrap();
    }
    let sp = store.create_savepoint("chain", None).await.unwrap();
    let paths: std::collections::BTreeSet<&str> =
        sp.parts.iter().map(|p| p.path.as_str()).collect();
    assert_eq!(paths.len(), 2, "every link gets its own copy: {paths:?}");
    for e in [1, 3, 4] {
        store.delete_checkpoint(Epoch(e)).await.unwrap();
    }
    let back = store
        .resolve_restore_keeping(&RestoreTarget::Savepoint("chain".into()), &|_| true)
        .await
        .unwrap();
    let epochs: Vec<Vec<(u64, Option<u64>)>> = back
        .parts
        .iter()
        .map(|p| {
            let sections = p.sections().unwrap();
            p.decode_section(&sections[0]).unwrap()
        })
        .collect();
    assert_eq!(epochs, vec![vec![(1, Some(1))], vec![(3, Some(3))]]);
}

/// An object store that counts the multipart uploads started on the store it wraps,
/// and can make one chunk of each fail or never finish.
#[derive(Debug, Default)]
struct CountingMultipart {
    inner: Option<Arc<dyn object_store::ObjectStore>>,
    multipart: std::sync::atomic::AtomicUsize,
    /// The chunk (counted from 0) that fails, or never finishes.
    fault: Option<(usize, ChunkFault)>,
    /// Aborted uploads, announced on `aborted`.
    aborts: Arc<std::sync::atomic::AtomicUsize>,
    aborted: Arc<tokio::sync::Notify>,
}

#[derive(Debug, Clone, Copy)]
enum ChunkFault {
    Fails,
    Hangs,
}

/// A multipart upload of [`CountingMultipart`].
#[derive(Debug)]
struct FaultyUpload {
    inner: Box<dyn object_store::MultipartUpload>,
    chunks: usize,
    fault: Option<(usize, ChunkFault)>,
    aborts: Arc<std::sync::atomic::AtomicUsize>,
    aborted: Arc<tokio::sync::Notify>,
}

#[async_trait::async_trait]
impl object_store::MultipartUpload for FaultyUpload {
    fn put_part(&mut self, data: object_store::PutPayload) -> object_store::UploadPart {
        let chunk = self.chunks;
        self.chunks += 1;
        match self.fault {
            Some((at, ChunkFault::Fails)) if at == chunk => Box::pin(async {
                Err(object_store::Error::Generic {
                    store: "test",
                    source: "the server refused the chunk".into(),
                })
            }),
            Some((at, ChunkFault::Hangs)) if at == chunk => Box::pin(std::future::pending()),
            _ => self.inner.put_part(data),
        }
    }

    async fn complete(&mut self) -> object_store::Result<object_store::PutResult> {
        self.inner.complete().await
    }

    async fn abort(&mut self) -> object_store::Result<()> {
        self.aborts
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        self.aborted.notify_one();
        self.inner.abort().await
    }
}

impl CountingMultipart {
    fn inner(&self) -> &Arc<dyn object_store::ObjectStore> {
        self.inner.as_ref().expect("a wrapped store")
    }
}

impl std::fmt::Display for CountingMultipart {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "counting({})", self.inner())
    }
}

#[async_trait::async_trait]
impl object_store::ObjectStore for CountingMultipart {
    async fn put_opts(
        &self,
        location: &Path,
        payload: object_store::PutPayload,
        opts: object_store::PutOptions,
    ) -> object_store::Result<object_store::PutResult> {
        self.inner().put_opts(location, payload, opts).await
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: object_store::PutMultipartOptions,
    ) -> object_store::Result<Box<dyn object_store::MultipartUpload>> {
        self.multipart
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Ok(Box::new(FaultyUpload {
            inner: self.inner().put_multipart_opts(location, opts).await?,
            chunks: 0,
            fault: self.fault,
            aborts: Arc::clone(&self.aborts),
            aborted: Arc::clone(&self.aborted),
        }))
    }

    async fn get_opts(
        &self,
        location: &Path,
        options: object_store::GetOptions,
    ) -> object_store::Result<object_store::GetResult> {
        self.inner().get_opts(location, options).await
    }

    fn delete_stream(
        &self,
        locations: futures::stream::BoxStream<'static, object_store::Result<Path>>,
    ) -> futures::stream::BoxStream<'static, object_store::Result<Path>> {
        self.inner().delete_stream(locations)
    }

    fn list(
        &self,
        prefix: Option<&Path>,
    ) -> futures::stream::BoxStream<'static, object_store::Result<object_store::ObjectMeta>> {
        self.inner().list(prefix)
    }

    async fn list_with_delimiter(
        &self,
        prefix: Option<&Path>,
    ) -> object_store::Result<object_store::ListResult> {
        self.inner().list_with_delimiter(prefix).await
    }

    async fn copy_opts(
        &self,
        from: &Path,
        to: &Path,
        options: object_store::CopyOptions,
    ) -> object_store::Result<()> {
        self.inner().copy_opts(from, to, options).await
    }
}

#[tokio::test]
async fn large_parts_go_up_in_chunks_and_read_back_whole() {
    let dir = tempfile::tempdir().unwrap();
    let local: Arc<dyn object_store::ObjectStore> =
        Arc::new(object_store::local::LocalFileSystem::new_with_prefix(dir.path()).unwrap());
    let memory: Arc<dyn object_store::ObjectStore> = Arc::new(InMemory::new());
    for inner in [memory, local] {
        let counting = Arc::new(CountingMultipart {
            inner: Some(inner),
            ..Default::default()
        });
        let mut store = CheckpointStore::with_store(counting.clone(), "test://", "job");
        store.multipart = Some(Multipart {
            from: 64,
            chunk: 16,
            concurrency: 2,
        });
        // Below the threshold (38 bytes framed): one put. At it (64 bytes, four whole
        // chunks) and above it: chunks, ending on a chunk boundary (128) or not (72, 228).
        for (len, multipart) in [(10usize, 0usize), (36, 1), (44, 2), (100, 3), (200, 4)] {
            let bytes = codec::encode("t", &vec![len as u8; len]).unwrap();
            let framed = bytes.len();
            let path = store.layout().part(Epoch(len as u64), "op", "w0");
            let entry = store
                .put_part(path, "op", WorkerIndex(0), (0, 128), bytes.clone())
                .await
                .unwrap();
            assert_eq!(
                counting.multipart.load(std::sync::atomic::Ordering::SeqCst),
                multipart,
                "a part of {framed} bytes"
            );
            let part = store.get_part(&entry).await.unwrap();
            assert_eq!(part.whole().unwrap().as_ref(), bytes.as_slice());
            assert_eq!(part.decode::<Vec<u8>>().unwrap(), vec![len as u8; len]);
        }
    }
    // Object stores get chunked uploads; local directories write every part at once.
    assert_eq!(
        CheckpointStore::open("memory://", "job").unwrap().multipart,
        Some(Multipart::OBJECT_STORE)
    );
    let local = CheckpointStore::open(dir.path().to_str().unwrap(), "job").unwrap();
    assert_eq!(local.multipart, None);
}

#[tokio::test]
async fn a_chunked_upload_that_fails_or_is_given_up_is_aborted_and_leaves_no_object() {
    let small = Multipart {
        from: 64,
        chunk: 16,
        concurrency: 2,
    };
    let bytes = codec::encode("t", &vec![7u8; 100]).unwrap();
    // A chunk the server refuses: the upload fails naming the object, and is aborted.
    let failing = Arc::new(CountingMultipart {
        inner: Some(Arc::new(InMemory::new())),
        fault: Some((2, ChunkFault::Fails)),
        ..Default::default()
    });
    let mut store = CheckpointStore::with_store(failing.clone(), "test://", "job");
    store.multipart = Some(small);
    let path = store.layout().part(Epoch(1), "op", "w0");
    let err = store
        .put_part(path.clone(), "op", WorkerIndex(0), (0, 128), bytes.clone())
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains(path.as_ref()) && err.contains("refused"),
        "{err}"
    );
    assert_eq!(failing.aborts.load(std::sync::atomic::Ordering::SeqCst), 1);
    assert!(failing.inner().head(&path).await.is_err(), "no object");
    // A chunk that never finishes, given up by the caller's timeout: aborted too, on
    // the runtime, once the upload's future is dropped.
    let hanging = Arc::new(CountingMultipart {
        inner: Some(Arc::new(InMemory::new())),
        fault: Some((1, ChunkFault::Hangs)),
        ..Default::default()
    });
    let mut store = CheckpointStore::with_store(hanging.clone(), "test://", "job");
    store.multipart = Some(small);
    let aborted = hanging.aborted.notified();
    let put = store.put_part(path.clone(), "op", WorkerIndex(0), (0, 128), bytes);
    assert!(
        tokio::time::timeout(std::time::Duration::from_millis(50), put)
            .await
            .is_err(),
        "a hanging chunk cannot finish the upload"
    );
    tokio::time::timeout(std::time::Duration::from_secs(10), aborted)
        .await
        .expect("the given-up upload is aborted");
    assert_eq!(hanging.aborts.load(std::sync::atomic::Ordering::SeqCst), 1);
    assert!(hanging.inner().head(&path).await.is_err(), "no object");
}

/// Writes a packed part of checkpoint `epoch` with a base of 16384 `u64`s (128 KiB) for
/// each key group of `groups`, the group's number plus `epoch` times a million.
async fn write_packed(
    store: &CheckpointStore,
    epoch: u64,
    groups: std::ops::Range<u32>,
) -> PartEntry {
    let mut w = crate::pack::PackWriter::new("t");
    for g in groups.clone() {
        let values = vec![g as u64 + epoch * 1_000_000; 16384];
        w.push(g, crate::pack::SectionKind::Base, &values).unwrap();
    }
    let path = store.layout().part(Epoch(epoch), "op", "w0");
    let entry = store
        .put_part(path, "op", WorkerIndex(0), (0, 16), w.finish())
        .await
        .unwrap();
    PartEntry {
        packed: Some(vec![(groups.start, groups.end)]),
        ..entry
    }
}

#[tokio::test]
async fn a_restore_reads_and_checks_only_the_sections_it_needs() {
    let dir = tempfile::tempdir().unwrap();
    let stores = [
        CheckpointStore::with_store(Arc::new(InMemory::new()), "memory://", "job"),
        CheckpointStore::open(dir.path().to_str().unwrap(), "job").unwrap(),
    ];
    for store in stores {
        // Bases of groups 0..16, then newer bases of 0..12: of the first part, a restore
        // needs groups 12..16 only.
        let old = write_packed(&store, 1, 0..16).await;
        let new = write_packed(&store, 2, 0..12).await;
        let m = manifest("job", 2, vec![old.clone(), new.clone()]);
        store.put_manifest(&m).await.unwrap();
        let point = store
            .resolve_restore_keeping(&RestoreTarget::Latest, &|_| true)
            .await
            .unwrap();
        let (first, second) = (&point.parts[0], &point.parts[1]);
        // Four sections of sixteen, the header and the index.
        assert!(first.whole().is_none());
        assert!(
            first.bytes_read() < old.size / 3,
            "read {} of {}",
            first.bytes_read(),
            old.size
        );
        assert_eq!(second.whole().map(|b| b.len() as u64), Some(new.size));
        let sections = first.sections().unwrap();
        assert_eq!(sections.len(), 16);
        for s in &sections {
            let values = first.decode_section::<Vec<u64>>(s);
            if s.group >= 12 {
                assert_eq!(values.unwrap(), vec![s.group as u64 + 1_000_000; 16384]);
            } else {
                let e = values.unwrap_err().to_string();
                assert!(e.contains("was not read") && e.contains(&old.path), "{e}");
            }
        }
        // Verifying a checkpoint still reads every byte.
        assert!(store.verify(Epoch(2)).await.is_ok());

        let skip: std::collections::BTreeSet<u32> = (0..12).collect();
        let bytes = store.get_part(&old).await.unwrap().whole().unwrap().clone();
        let path = object_store::path::Path::from(old.path.as_str());
        let damaged = |at: usize| {
            let mut b = bytes.to_vec();
            b[at] ^= 1;
            bytes::Bytes::from(b)
        };
        let section_at = |g: usize| codec::HEADER_LEN + sections[g].range.start + 100;
        // A byte flipped in a section the restore does not need is not read.
        store
            .object_store()
            .put(&path, damaged(section_at(3)).into())
            .await
            .unwrap();
        store.get_part_needed(&old, &skip).await.unwrap();
        assert!(store.get_part(&old).await.is_err());
        // A byte flipped in a needed section, in the index or in the header: an error
        // naming the object and what is wrong.
        for (at, says) in [
            (section_at(14), "key group 14".to_string()),
            (bytes.len() - 30, "checksum mismatch".to_string()),
            (17, "the manifest recorded".to_string()),
        ] {
            store
                .object_store()
                .put(&path, damaged(at).into())
                .await
                .unwrap();
            let e = store.get_part_needed(&old, &skip).await.unwrap_err();
            assert!(matches!(e, CheckpointError::Corrupt { .. }), "{e}");
            let text = e.to_string();
            assert!(text.contains(&old.path) && text.contains(&says), "{text}");
        }
        // Cut short: named with both sizes.
        store
            .object_store()
            .put(&path, bytes.slice(..bytes.len() - 1).into())
            .await
            .unwrap();
        let e = store
            .get_part_needed(&old, &skip)
            .await
            .unwrap_err()
            .to_string();
        assert!(e.contains(&format!("{} bytes", old.size - 1)), "{e}");
    }
}
