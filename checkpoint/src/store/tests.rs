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
    }
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
        // computed over the corrupted bytes.
        let mut bad = bytes.clone();
        bad[pos.index(bytes.len())] ^= flip;
        let entry = part_entry(&bad);
        proptest::prop_assert!(VerifiedPart::verify(&entry, bad.into()).is_err());
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
