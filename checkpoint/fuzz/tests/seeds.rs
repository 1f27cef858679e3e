//! The seed corpora of the fuzz targets, made by weir's own encoders: a few valid objects
//! per target, so that the fuzzer starts from what weir writes.
//!
//! `WEIR_FUZZ_WRITE_SEEDS=1 cargo test --test seeds` writes them to `seeds/<target>/`;
//! without the variable the test fails if the committed seeds are not what the encoders
//! produce now (a format change needs new seeds), and runs every target's checks on them.

use std::collections::BTreeMap;
use std::path::PathBuf;

use weir_checkpoint::codec::{self, HEADER_LEN};
use weir_checkpoint::protocol::{Link, Node};
use weir_checkpoint::{
    CheckpointStore, Epoch, Generation, Manifest, PartEntry, SinkEntry, WorkerIndex,
};
use weir_fuzz::{shapes, Fixed, KEY_GROUPS};
use weir_runtime::{encode_groups, encode_keyed, KeyedState, OutputId};

/// One seed: target, file name, bytes.
type Seed = (&'static str, String, Vec<u8>);

/// A framed object and its payload alone (the targets also frame their input).
fn object_and_payload(target: &'static str, name: &str, object: Vec<u8>) -> Vec<Seed> {
    vec![
        (
            target,
            format!("{name}.payload"),
            object[HEADER_LEN..].to_vec(),
        ),
        (target, format!("{name}.object"), object),
    ]
}

fn part_seeds() -> Vec<Seed> {
    let mut seeds = Vec::new();
    let positions: BTreeMap<String, u64> = [("input/a.txt", 120), ("input/b.txt", 0)]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
    let object = encode_keyed("input", 128, positions.iter()).unwrap();
    seeds.extend(object_and_payload("part", "positions", object));
    let counts: BTreeMap<String, (u64, u64, u64)> = [("the", 17), ("weir", 3), ("", 1)]
        .into_iter()
        .map(|(k, n)| (k.to_string(), (n, 1_700_000_000_000, 9)))
        .collect();
    let object = encode_keyed("count", 128, counts.iter()).unwrap();
    seeds.extend(object_and_payload("part", "keyed-counts", object));
    let blobs: shapes::Blobs = vec![
        (3, vec![(42, b"state".to_vec()), (43, vec![])]),
        (9, vec![]),
    ];
    let object = encode_groups("blobs", blobs).unwrap();
    seeds.extend(object_and_payload("part", "blobs", object));
    let collection: shapes::Collection = vec![(2, vec![("a".into(), 2), ("b".into(), -1)])];
    let object = encode_groups("collection", collection).unwrap();
    seeds.extend(object_and_payload("part", "collection", object));
    let ledger: shapes::Ledger = vec![("input/a.txt".into(), 4096)];
    let object = codec::encode("ledger", &ledger).unwrap();
    seeds.extend(object_and_payload("part", "ledger", object));
    let pending: shapes::Pending = vec!["{\"word\":\"weir\",\"count\":3}".into()];
    let object = codec::encode("write-ahead output", &pending).unwrap();
    seeds.extend(object_and_payload("part", "pending", object));
    let marker: shapes::Marker = (2, 7);
    let object = codec::encode("sink marker", &marker).unwrap();
    seeds.extend(object_and_payload("part", "marker", object));
    seeds
}

fn manifest_value() -> Manifest {
    Manifest {
        job: "job".into(),
        epoch: Epoch(7),
        generation: Generation(1),
        workers: 2,
        key_groups: 128,
        created_ms: 1_700_000_000_500,
        barrier_ms: Some(1_700_000_000_000),
        operators: vec!["input".into(), "count".into(), "out".into()],
        parts: vec![
            PartEntry {
                operator: "count".into(),
                worker: WorkerIndex(0),
                key_group_start: 0,
                key_group_end: 64,
                path: "job/chk-00000000000000000007/count/w0-g1".into(),
                size: 180,
                crc32: 0x1234_5678,
                packed: None,
            },
            PartEntry {
                operator: "input".into(),
                worker: WorkerIndex(1),
                key_group_start: 64,
                key_group_end: 128,
                path: "job/chk-00000000000000000003/input/w1-g1".into(),
                size: 96,
                crc32: 0x9abc_def0,
                packed: Some(vec![(64, 96), (100, 128)]),
            },
        ],
        sinks: vec![SinkEntry {
            sink: "out".into(),
            worker: WorkerIndex(1),
            epoch: Epoch(6),
            generation: Generation(1),
            handle: "null".into(),
        }],
        link: Some(Node::Checkpoint(Epoch(5)).name()),
    }
}

/// The JSON objects as a store writes them: manifest, link and stop request.
fn manifest_seeds() -> Vec<Seed> {
    let store = CheckpointStore::open("memory://", "job").unwrap();
    let layout = store.layout().clone();
    let manifest = manifest_value();
    let links = [
        (
            Node::Checkpoint(Epoch(5)),
            Link {
                generation: Generation(1),
                epoch: Some(Epoch(7)),
            },
        ),
        (
            Node::Checkpoint(Epoch(7)),
            Link {
                generation: Generation(2),
                epoch: None,
            },
        ),
    ];
    let stored = futures::executor::block_on(async {
        store.put_manifest(&manifest).await.unwrap();
        let mut old = manifest.clone();
        old.epoch = Epoch(3);
        old.link = None;
        old.barrier_ms = None;
        old.sinks.clear();
        store.put_manifest(&old).await.unwrap();
        for (node, link) in links {
            store.create_link(&node, link).await.unwrap();
        }
        store.request_stop("before-upgrade").await.unwrap();
        store.read_prefix(&layout.job_root()).await.unwrap()
    });
    let name_of = |path: &str| -> Option<&'static str> {
        Some(match path {
            p if p == layout.manifest(Epoch(7)).as_ref() => "manifest",
            p if p == layout.manifest(Epoch(3)).as_ref() => "manifest-without-link",
            p if p == layout.link(&links[0].0.name()).as_ref() => "link-checkpoint",
            p if p == layout.link(&links[1].0.name()).as_ref() => "link-restart",
            p if p == layout.stop_request().as_ref() => "stop-request",
            _ => return None,
        })
    };
    let mut seeds = Vec::new();
    for (path, bytes) in stored {
        let name = name_of(&path).unwrap_or_else(|| panic!("unexpected object {path}"));
        seeds.extend(object_and_payload("manifest", name, bytes.to_vec()));
    }
    let names = [
        ("node-checkpoint", Node::Checkpoint(Epoch(7)).name()),
        (
            "node-restart",
            Node::Restart {
                epoch: Epoch(7),
                generation: Generation(2),
            }
            .name(),
        ),
        (
            "checkpoint-dir",
            weir_checkpoint::layout::checkpoint_dir_name(Epoch(7)),
        ),
        (
            "generation-marker",
            layout
                .generation_marker(Generation(3))
                .filename()
                .unwrap()
                .to_string(),
        ),
        (
            "claim",
            layout
                .claim(Generation(3), 1)
                .filename()
                .unwrap()
                .to_string(),
        ),
    ];
    for (name, text) in names {
        seeds.push(("manifest", format!("{name}.name"), text.into_bytes()));
    }
    seeds
}

fn sink_handle_seeds() -> Vec<Seed> {
    let id = OutputId {
        worker: WorkerIndex(1),
        epoch: Epoch(42),
        generation: Generation(3),
    };
    let handles: [(&str, String); 4] = [
        ("unit", serde_json::to_string(&()).unwrap()),
        ("tagged", serde_json::to_string(&(42u64, "hooked")).unwrap()),
        ("string", serde_json::to_string("staged/part-0001").unwrap()),
        ("numbers", serde_json::to_string(&[1u64, 2, 3]).unwrap()),
    ];
    let mut seeds = vec![(
        "sink_handle",
        "output-name".to_string(),
        id.name().into_bytes(),
    )];
    for (name, text) in handles {
        seeds.push(("sink_handle", format!("{name}.handle"), text.into_bytes()));
    }
    seeds
}

/// Packed objects as `KeyedState` writes them: a first snapshot (bases), a second one
/// (deltas with a tombstone), and a window operator's with its watermark.
fn packed_seeds() -> Vec<Seed> {
    let mut counts = KeyedState::<String, shapes::Counter, Fixed>::empty(
        "count",
        KEY_GROUPS,
        (0, KEY_GROUPS),
        true,
        0.5,
    );
    for (word, n) in [("the", 17u64), ("weir", 3), ("state", 1)] {
        let group = counts.group_of(&word.to_string());
        counts
            .group_mut(group, &word.to_string())
            .insert(word.into(), (n, 1_700_000_000_000, 4));
        counts.changed(group, word.into());
    }
    let first = counts.encode(false).unwrap().unwrap();
    let group = counts.group_of(&"the".to_string());
    counts
        .group_mut(group, &"the".to_string())
        .insert("the".into(), (18, 1_700_000_000_500, 5));
    counts.changed(group, "the".into());
    counts.remove(&"state".to_string());
    let second = counts.encode(false).unwrap().unwrap();
    let mut windows = KeyedState::<String, shapes::Open, Fixed>::empty(
        "sessions",
        KEY_GROUPS,
        (0, KEY_GROUPS),
        true,
        0.5,
    );
    let key = "user-1".to_string();
    let group = windows.group_of(&key);
    windows
        .group_mut(group, &key)
        .insert(key.clone(), [(0, (30_000, 4))].into_iter().collect());
    windows.changed(group, key);
    let third = windows
        .encode_with_meta(false, &29_999u64)
        .unwrap()
        .unwrap();
    // A rebase: a new base encoded off the barrier, then the changes made meanwhile.
    let mut rebased = KeyedState::<String, shapes::Counter, Fixed>::empty(
        "count",
        KEY_GROUPS,
        (0, KEY_GROUPS),
        true,
        0.0001,
    );
    let mut put = |state: &mut KeyedState<String, shapes::Counter, Fixed>, word: &str, n| {
        let group = state.group_of(&word.to_string());
        state
            .group_mut(group, &word.to_string())
            .insert(word.into(), (n, 1_700_000_000_000, n));
        state.changed(group, word.into());
    };
    for (word, n) in [("the", 1u64), ("weir", 1), ("state", 1)] {
        put(&mut rebased, word, n);
    }
    let mut fourth = None;
    for n in 2..6 {
        put(&mut rebased, "the", n);
        while rebased.background() {}
        rebased.remove(&"state".to_string());
        let part = rebased.encode(false).unwrap();
        if let Some(part) = part.filter(|p| p.bases.as_ref().is_some_and(|b| !b.is_empty())) {
            if n > 2 {
                fourth = Some(part);
                break;
            }
        }
    }
    let fourth = fourth.expect("a snapshot takes a rebase over");
    // Byte strings as keys and values, a base and then deltas with a tombstone.
    let mut blobs = KeyedState::<Vec<u8>, Vec<u8>, Fixed>::empty(
        "blobs",
        KEY_GROUPS,
        (0, KEY_GROUPS),
        true,
        0.5,
    );
    let mut put_blob =
        |state: &mut KeyedState<Vec<u8>, Vec<u8>, Fixed>, key: &[u8], value: &[u8]| {
            let group = state.group_of(&key.to_vec());
            state
                .group_mut(group, &key.to_vec())
                .insert(key.to_vec(), value.to_vec());
            state.changed(group, key.to_vec());
        };
    put_blob(&mut blobs, b"k1", &[0, 1, 2, 255]);
    put_blob(&mut blobs, b"", b"");
    let fifth = blobs.encode(true).unwrap().unwrap();
    put_blob(&mut blobs, b"k1", &[7; 40]);
    blobs.remove(&b"".to_vec());
    let sixth = blobs.encode(false).unwrap().unwrap();
    let mut seeds = Vec::new();
    for (name, part) in [
        ("counts-bases", first),
        ("counts-deltas", second),
        ("windows-watermark", third),
        ("counts-rebase", fourth),
        ("blobs-bases", fifth),
        ("blobs-deltas", sixth),
    ] {
        seeds.extend(object_and_payload("packed", name, part.bytes));
    }
    seeds
}

fn seeds() -> Vec<Seed> {
    let mut all = part_seeds();
    all.extend(packed_seeds());
    all.extend(manifest_seeds());
    all.extend(sink_handle_seeds());
    all
}

fn seed_dir(target: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("seeds")
        .join(target)
}

#[test]
fn seeds_are_what_the_encoders_write_and_pass_the_checks() {
    let write = std::env::var_os("WEIR_FUZZ_WRITE_SEEDS").is_some();
    for (target, name, bytes) in seeds() {
        let path = seed_dir(target).join(&name);
        if write {
            std::fs::create_dir_all(seed_dir(target)).unwrap();
            std::fs::write(&path, &bytes).unwrap();
        } else {
            let committed = std::fs::read(&path).unwrap_or_else(|e| {
                panic!(
                    "{}: {e} (WEIR_FUZZ_WRITE_SEEDS=1 writes it)",
                    path.display()
                )
            });
            assert_eq!(
                committed,
                bytes,
                "{} is not what the encoder writes now",
                path.display()
            );
        }
        match target {
            "part" => weir_fuzz::part(&bytes),
            "manifest" => weir_fuzz::manifest(&bytes),
            "sink_handle" => weir_fuzz::sink_handle(&bytes),
            "packed" => weir_fuzz::packed(&bytes),
            other => panic!("no target {other}"),
        }
    }
}

/// The seeds decode: the checks above would also pass on seeds that every decoder
/// rejects, which would teach the fuzzer nothing.
#[test]
fn seed_objects_decode() {
    for (_, name, bytes) in seeds() {
        if name.starts_with("manifest") && name.ends_with(".object") {
            codec::decode_json::<Manifest>("seed", &bytes).unwrap();
        } else if name.starts_with("link") && name.ends_with(".object") {
            codec::decode_json::<Link>("seed", &bytes).unwrap();
        } else if name == "stop-request.object" {
            codec::decode_json::<weir_fuzz::StopRequest>("seed", &bytes).unwrap();
        } else if name == "positions.object" {
            codec::decode::<shapes::Positions>("seed", &bytes).unwrap();
        } else if name == "keyed-counts.object" {
            codec::decode::<shapes::KeyedCounts>("seed", &bytes).unwrap();
        } else if name.ends_with(".object") && name.starts_with("counts-") {
            assert!(!weir_checkpoint::pack::open("seed", &bytes)
                .unwrap()
                .1
                .is_empty());
        } else if name == "output-name" {
            OutputId::parse(std::str::from_utf8(&bytes).unwrap()).unwrap();
        }
    }
}
