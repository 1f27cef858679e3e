//! The checks behind weir's fuzz targets: one function per target, over arbitrary bytes
//! as they might come back from checkpoint storage.
//!
//! A target in `fuzz_targets/` only hands libFuzzer's input to one of these functions,
//! so that the same checks also run as plain tests over the committed seeds
//! (`cargo test`, see `tests/seeds.rs`, which also writes them).
//!
//! ## Design
//!
//! Every check asserts the same invariant for every decoder it reaches: arbitrary bytes
//! decode to `Ok` or to an error (which names the object), never a panic and never an
//! allocation of a size the input claims (libFuzzer's `-malloc_limit_mb` and
//! `-rss_limit_mb` catch those). A value that decodes is encoded again with weir's own
//! encoder and must decode to the same value.
//!
//! libFuzzer cannot forge a CRC-32, so each check runs twice: on the bytes as an object
//! (exercising the header and checksum checks) and on the bytes as the payload of an
//! object with a valid header (exercising bincode and JSON decoding behind them).

#![deny(missing_docs)]

use std::fmt::Debug;
use std::hash::Hash;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use weir_checkpoint::codec::{self, PayloadKind};
use weir_checkpoint::layout::{self, Layout};
use weir_checkpoint::pack::{self, PackWriter, Section, SectionKind};
use weir_checkpoint::protocol::{self, Link, Node};
use weir_checkpoint::store::{referenced_dirs, VerifiedPart};
use weir_checkpoint::{Epoch, Manifest, PartEntry, WorkerIndex};
use weir_runtime::{KeyedState, OutputId};

/// The path that decode errors must name.
pub const PATH: &str = "job/chk-00000000000000000007/counts/w0-g1";

/// The shapes of the bincode objects and sections weir writes to storage, as the
/// operators and connectors declare them.
pub mod shapes {
    use std::collections::BTreeMap;

    /// A whole part of a source's positions (`encode_keyed`, `restore_keyed::<S, u64>`):
    /// per key group, split and offset; event-time clocks have the same shape.
    pub type Positions = Vec<(u32, Vec<(String, u64)>)>;
    /// A whole part of `reduce_by_key`'s state as format version 1 wrote it, which a
    /// restore reads as bases: per key group, key and `Entry { state, updated_ms,
    /// updated_epoch }` (bincode encodes a struct as the tuple of its fields, a map as a
    /// list of pairs).
    pub type KeyedCounts = Vec<(u32, Vec<(String, Counter)>)>;
    /// A whole part whose values are bytes.
    pub type Blobs = Vec<(u32, Vec<(u64, Vec<u8>)>)>;
    /// A whole part of `to_collection`'s counts as version 1 wrote it: per key group,
    /// record and multiplicity.
    pub type Collection = Vec<(u32, Vec<(String, isize)>)>;
    /// An at-most-once ledger entry: split and position.
    pub type Ledger = Vec<(String, u64)>;
    /// A write-ahead sink's pending output of string records.
    pub type Pending = Vec<String>;
    /// A write-ahead sink's progress marker, `Published { generation, epoch }`.
    pub type Marker = (u64, u64);
    /// `reduce_by_key`'s value: state, wall-clock and epoch of the last update.
    pub type Counter = (u64, u64, u64);
    /// A window operator's value per key: window start to (end, accumulator).
    pub type Open = BTreeMap<u64, (u64, u64)>;
}

/// The hasher of the key groups' maps in the fuzz targets and seeds: deterministic, so
/// that the seeds are the same bytes at every run.
pub type Fixed = std::hash::BuildHasherDefault<std::collections::hash_map::DefaultHasher>;

/// The number of key groups of the states the targets restore.
pub const KEY_GROUPS: u32 = 8;

/// A stop request as `CheckpointStore::request_stop` writes it (the store's own type is
/// private; the fields are the same).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StopRequest {
    /// The name of the final savepoint.
    pub savepoint: String,
}

/// A sink handle of the kind a two-phase sink of a user declares (`(epoch, tag)`).
pub type TaggedHandle = (u64, String);

/// Asserts that `error` names the object it is about.
fn assert_names(error: &weir_checkpoint::CheckpointError, path: &str) {
    let text = error.to_string();
    assert!(
        text.contains(path),
        "the error does not name {path}: {text}"
    );
}

/// Decodes `object` as a framed bincode `T`; a value that decodes must survive
/// [`codec::encode`] and decode to itself.
fn bincode_round_trip<T>(object: &[u8]) -> Option<T>
where
    T: Serialize + DeserializeOwned + PartialEq + Debug,
{
    match codec::decode::<T>(PATH, object) {
        Ok(value) => {
            let again = codec::encode("fuzzed value", &value).expect("a decoded value encodes");
            let back: T = codec::decode(PATH, &again).expect("an encoded value decodes");
            assert_eq!(back, value);
            Some(value)
        }
        Err(e) => {
            assert_names(&e, PATH);
            None
        }
    }
}

/// Decodes `object` as a framed JSON `T`; a value that decodes must survive
/// [`codec::encode_json`] and decode to itself.
fn json_round_trip<T>(object: &[u8]) -> Option<T>
where
    T: Serialize + DeserializeOwned + PartialEq + Debug,
{
    match codec::decode_json::<T>(PATH, object) {
        Ok(value) => {
            let again =
                codec::encode_json("fuzzed value", &value).expect("a decoded value encodes");
            let back: T = codec::decode_json(PATH, &again).expect("an encoded value decodes");
            assert_eq!(back, value);
            Some(value)
        }
        Err(e) => {
            assert_names(&e, PATH);
            None
        }
    }
}

/// The manifest entry a store would hold for `object` with this size and CRC.
fn entry(size: u64, crc32: u32) -> PartEntry {
    PartEntry {
        operator: "counts".into(),
        worker: WorkerIndex(0),
        key_group_start: 0,
        key_group_end: KEY_GROUPS,
        path: PATH.into(),
        size,
        crc32,
        packed: None,
    }
}

/// Verifies `object` against an entry and decodes it as `T` through the verified part;
/// the result must agree with [`codec::decode`] of the same bytes.
fn verified_decode<T>(part: &VerifiedPart, object: &[u8])
where
    T: DeserializeOwned + PartialEq + Debug,
{
    match (part.decode::<T>(), codec::decode::<T>(PATH, object)) {
        (Ok(a), Ok(b)) => assert_eq!(a, b),
        (Err(a), Err(_)) => assert_names(&a, PATH),
        (a, b) => panic!("a verified part decodes to {a:?}, the object to {b:?}"),
    }
}

/// The verification path of a restore ([`VerifiedPart::verify`]) on `object`: with the
/// entry a writer records (`codec::object_crc32`, as `put_part` does) and with the
/// object's true CRC it succeeds exactly when the object's header and checksum are
/// sound; with an entry whose size or CRC differs it fails, naming the object.
fn verify(object: &[u8]) {
    let sound = codec::unframe(PATH, object).is_ok();
    let size = object.len() as u64;
    for crc in [codec::object_crc32(object), codec::crc32(object)] {
        let verified =
            VerifiedPart::verify(&entry(size, crc), bytes::Bytes::copy_from_slice(object));
        match verified {
            Ok(part) => {
                assert!(sound, "a part with an unsound header verified");
                assert_eq!(part.whole().unwrap().as_ref(), object);
                assert_eq!(part.payload().unwrap(), &object[codec::HEADER_LEN..]);
                verified_decode::<shapes::Positions>(&part, object);
                verified_decode::<shapes::KeyedCounts>(&part, object);
                verified_decode::<shapes::Blobs>(&part, object);
            }
            Err(e) => {
                assert!(!sound, "a sound part failed verification: {e}");
                assert_names(&e, PATH);
            }
        }
    }
    let crc = codec::crc32(object);
    for wrong in [
        entry(size + 1, crc),
        entry(size, crc ^ 1),
        entry(size.saturating_sub(1), crc),
    ] {
        if wrong.size == size && wrong.crc32 == crc {
            continue;
        }
        let e = VerifiedPart::verify(&wrong, bytes::Bytes::copy_from_slice(object))
            .expect_err("a part that does not match its entry verified");
        assert_names(&e, PATH);
    }
}

/// Every framed bincode decoder of a stored object, on `object`.
fn part_object(object: &[u8]) {
    bincode_round_trip::<shapes::Positions>(object);
    bincode_round_trip::<shapes::KeyedCounts>(object);
    bincode_round_trip::<shapes::Blobs>(object);
    bincode_round_trip::<shapes::Collection>(object);
    bincode_round_trip::<shapes::Ledger>(object);
    bincode_round_trip::<shapes::Pending>(object);
    bincode_round_trip::<shapes::Marker>(object);
    verify(object);
}

/// The `part` target: `data` as a state part, ledger entry or write-ahead object (framed
/// bincode), and as the payload of such an object.
pub fn part(data: &[u8]) {
    part_object(data);
    part_object(&codec::frame(PayloadKind::Bincode, data));
    // A JSON object is never decoded as a part.
    let json = codec::frame(PayloadKind::Json, data);
    assert!(codec::decode::<shapes::Positions>(PATH, &json).is_err());
}

/// What a reader does with a manifest it decoded: the directories it references, its
/// parts and sinks, and the node its link names.
/// `Manifest::total_bytes`, which `weir checkpoints list` and the dashboard call on
/// manifests they read, saturates whatever sizes a manifest claims.
fn use_manifest(manifest: &Manifest) {
    assert!(manifest.total_bytes() >= manifest.parts.iter().map(|p| p.size).max().unwrap_or(0));
    let dirs = referenced_dirs(manifest);
    assert!(dirs.contains(&manifest.epoch));
    for part in &manifest.parts {
        assert!(manifest.parts_of(&part.operator).count() >= 1);
    }
    for sink in &manifest.sinks {
        assert!(manifest.sinks_of(&sink.sink).count() >= 1);
    }
    if let Some(node) = manifest.link.as_deref().and_then(Node::parse) {
        assert_eq!(Node::parse(&node.name()), Some(node));
    }
}

/// The JSON objects of one framing of `object`.
fn json_object(object: &[u8]) {
    if let Some(manifest) = json_round_trip::<Manifest>(object) {
        use_manifest(&manifest);
    }
    if let Some(link) = json_round_trip::<Link>(object) {
        let own = link.generation.next();
        let at = Node::Checkpoint(link.epoch.unwrap_or(Epoch(0)));
        assert_eq!(
            protocol::seal_step(link.generation, &at, Some(&link), &[]),
            protocol::SealStep::Sealed
        );
        let _ = protocol::seal_step(own, &at, Some(&link), &[]);
        if let Some(epoch) = link.epoch {
            assert!(protocol::is_committed(link.generation, epoch, Some(&link)));
        }
    }
    json_round_trip::<StopRequest>(object);
}

/// The names of objects that a listing returns and the store parses: node names of
/// links, checkpoint directories, generation markers, rendezvous claims and failure
/// records. A name that parses must be the name of what it parses to.
fn names(name: &str) {
    let layout = Layout::new("job");
    if let Some(node) = Node::parse(name) {
        assert_eq!(Node::parse(&node.name()), Some(node));
    }
    if let Some(epoch) = layout::parse_checkpoint_dir(name) {
        assert_eq!(
            layout::parse_checkpoint_dir(&layout::checkpoint_dir_name(epoch)),
            Some(epoch)
        );
    }
    if let Some(generation) = layout::parse_generation_marker(name) {
        let marker = layout.generation_marker(generation);
        assert_eq!(
            marker.filename().and_then(layout::parse_generation_marker),
            Some(generation)
        );
    }
    if let Some((generation, process)) = layout::parse_failure(name) {
        for path in [
            layout.failure(generation, process),
            layout.claim(generation, process),
        ] {
            assert_eq!(
                path.filename().and_then(layout::parse_failure),
                Some((generation, process))
            );
        }
    }
}

/// The `manifest` target: `data` as a manifest, a link or a stop request (framed JSON),
/// as the JSON payload of such an object, and as the name of a stored object.
pub fn manifest(data: &[u8]) {
    json_object(data);
    json_object(&codec::frame(PayloadKind::Json, data));
    // A bincode object is never decoded as a manifest.
    let bincode = codec::frame(PayloadKind::Bincode, data);
    assert!(codec::decode_json::<Manifest>(PATH, &bincode).is_err());
    names(&String::from_utf8_lossy(data));
}

/// Decodes a sink handle as the runtime does when it commits or aborts a checkpoint's
/// output (`serde_json::from_str` of `SinkEntry::handle` into the sink's handle type);
/// a handle that decodes is encoded again as the runtime stores it and must decode to
/// itself.
fn handle<H>(text: &str)
where
    H: Serialize + DeserializeOwned + PartialEq + Debug,
{
    if let Ok(handle) = serde_json::from_str::<H>(text) {
        let stored = serde_json::to_string(&handle).expect("a decoded handle encodes");
        let back: H = serde_json::from_str(&stored).expect("an encoded handle decodes");
        assert_eq!(back, handle);
    }
}

/// The `sink_handle` target: `data` as a sink's handle in a manifest and as the name of a
/// staged output ([`OutputId::parse`], which every connector uses to read back what it
/// staged: file names, object names, transaction ids).
pub fn sink_handle(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    if let Some(id) = OutputId::parse(&text) {
        assert_eq!(OutputId::parse(&id.name()), Some(id));
        assert_eq!(id.to_string(), id.name());
    }
    handle::<()>(&text);
    handle::<TaggedHandle>(&text);
    handle::<String>(&text);
    handle::<Vec<u64>>(&text);
}

/// Decodes every section of a packed payload as base, delta or rebase of `K`, `V` (by the kind
/// its index gives); the sections that decode are packed again by [`PackWriter`] and
/// must read back as the same sections with the same values.
fn sections_round_trip<K, V>(payload: &[u8], sections: &[Section])
where
    K: Serialize + DeserializeOwned + PartialEq + Debug,
    V: Serialize + DeserializeOwned + PartialEq + Debug,
{
    let mut writer = PackWriter::new("fuzzed object");
    let mut kept = Vec::new();
    for section in sections {
        let pushed = match section.kind {
            SectionKind::Base => pack::decode_section::<Vec<(K, V)>>(PATH, payload, section)
                .map(|base| writer.push(section.group, section.kind, &base)),
            SectionKind::Delta | SectionKind::Rebase => {
                pack::decode_section::<Vec<(K, Option<V>)>>(PATH, payload, section)
                    .map(|delta| writer.push(section.group, section.kind, &delta))
            }
        };
        match pushed {
            Ok(written) => {
                written.expect("a decoded section encodes");
                kept.push(section);
            }
            Err(e) => assert_names(&e, PATH),
        }
    }
    let again = writer.finish();
    let (payload2, sections2) = pack::open(PATH, &again).expect("a packed object opens");
    assert_eq!(sections2.len(), kept.len());
    for (a, b) in kept.iter().zip(&sections2) {
        assert_eq!((a.group, a.kind), (b.group, b.kind));
        match a.kind {
            SectionKind::Base => assert_eq!(
                pack::decode_section::<Vec<(K, V)>>(PATH, payload, a).unwrap(),
                pack::decode_section::<Vec<(K, V)>>(PATH, payload2, b).unwrap()
            ),
            SectionKind::Delta | SectionKind::Rebase => assert_eq!(
                pack::decode_section::<Vec<(K, Option<V>)>>(PATH, payload, a).unwrap(),
                pack::decode_section::<Vec<(K, Option<V>)>>(PATH, payload2, b).unwrap()
            ),
        }
    }
}

/// Every entry of a state, sorted.
fn entries<K, V>(state: &KeyedState<K, V, Fixed>) -> Vec<(K, V)>
where
    K: Hash + Eq + Ord + Clone + Serialize + DeserializeOwned + 'static,
    V: Ord + Clone + Serialize + DeserializeOwned + 'static,
{
    let mut all: Vec<(K, V)> = state.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    all.sort();
    all
}

/// A restore of keyed state from `part` (`KeyedState::replay`, as a worker owning every
/// key group does it): `Ok` or an error naming the object. A state that restores is
/// snapshotted again, and that snapshot restores to the same entries and operator value.
fn replay<K, V>(part: &VerifiedPart)
where
    K: Hash + Eq + Ord + Clone + Serialize + DeserializeOwned + Debug + 'static,
    V: Ord + Clone + Serialize + DeserializeOwned + Debug + 'static,
{
    let fresh =
        || KeyedState::<K, V, Fixed>::empty("counts", KEY_GROUPS, (0, KEY_GROUPS), true, 0.5);
    let mut state = fresh();
    if let Err(e) = state.replay(part) {
        let text = e.to_string();
        assert!(
            text.contains(PATH),
            "the error does not name {PATH}: {text}"
        );
        return;
    }
    assert_eq!(state.len(), state.iter().count());
    // Every restored key sits in its own key group's map.
    for (k, _) in state.iter() {
        state.group_of(k);
        assert!(state.get(k).is_some());
    }
    assert_eq!(state.is_empty(), state.iter().next().is_none());
    let meta = state
        .restored_meta::<u64>()
        .ok()
        .and_then(|m| m.last().copied());
    let snapshot = match meta {
        Some(meta) => state.encode_with_meta(true, &meta),
        None => state.encode(true),
    }
    .expect("a restored state snapshots");
    let Some(snapshot) = snapshot else {
        assert!(state.is_empty());
        return;
    };
    let entry = PartEntry {
        packed: Some(
            snapshot
                .bases
                .clone()
                .expect("a packed snapshot names its bases"),
        ),
        ..entry(
            snapshot.bytes.len() as u64,
            codec::object_crc32(&snapshot.bytes),
        )
    };
    let part = VerifiedPart::verify(&entry, bytes::Bytes::from(snapshot.bytes))
        .expect("a snapshot verifies");
    let mut again = fresh();
    again.replay(&part).expect("a snapshot restores");
    assert_eq!(entries(&again), entries(&state));
    if let Some(meta) = meta {
        assert_eq!(again.restored_meta::<u64>().unwrap(), vec![meta]);
    }
}

/// One framing of a packed object: its index (ascending key groups, sections inside the
/// payload and apart) and sections, and a restore of keyed state from it, as a packed
/// part of a chain and as a whole part written before packed objects.
fn packed_object(object: &[u8]) {
    match pack::open(PATH, object) {
        Ok((payload, sections)) => {
            for s in &sections {
                assert!(s.range.start <= s.range.end && s.range.end <= payload.len());
            }
            for w in sections.windows(2) {
                assert!(w[0].group < w[1].group && w[0].range.end <= w[1].range.start);
            }
            sections_round_trip::<String, shapes::Counter>(payload, &sections);
            sections_round_trip::<u64, u64>(payload, &sections);
            sections_round_trip::<String, shapes::Open>(payload, &sections);
            sections_round_trip::<Vec<u8>, Vec<u8>>(payload, &sections);
        }
        Err(e) => assert_names(&e, PATH),
    }
    sections_read_alone(object);
    let crc = codec::object_crc32(object);
    for packed in [Some(vec![(0, KEY_GROUPS)]), Some(vec![]), None] {
        let entry = PartEntry {
            packed,
            ..entry(object.len() as u64, crc)
        };
        let Ok(part) = VerifiedPart::verify(&entry, bytes::Bytes::copy_from_slice(object)) else {
            continue;
        };
        match (part.sections(), pack::open(PATH, object)) {
            (Ok(a), Ok((_, b))) => assert_eq!(a, b),
            (Err(a), Err(_)) => assert_names(&a, PATH),
            (a, b) => panic!("the verified part's sections are {a:?}, the object's {b:?}"),
        }
        replay::<String, shapes::Counter>(&part);
        replay::<u64, u64>(&part);
        replay::<String, shapes::Open>(&part);
        // Byte strings, which a restore reads in one copy (`weir_runtime::entries`).
        replay::<Vec<u8>, Vec<u8>>(&part);
    }
}

/// The object read as a restore reads the sections it needs: its header, then its
/// tail (first a short one, then as long as the index asks), then the index checked
/// against the header's CRC and each section against its own. Whatever this accepts,
/// a whole read accepts too, with the same index and bytes.
fn sections_read_alone(object: &[u8]) {
    let Ok(header) = codec::read_header(PATH, object) else {
        return;
    };
    let payload = &object[codec::HEADER_LEN..];
    if header.kind != PayloadKind::Packed || header.len != payload.len() as u64 {
        return;
    }
    let tail_of = |n: usize| &payload[payload.len() - n.min(payload.len())..];
    let mut tail = tail_of(64);
    let mut parsed = pack::index_from_tail(PATH, header.version, payload.len(), tail);
    if let Ok(pack::Tail::Needs(n)) = parsed {
        assert!(
            n > tail.len() && n <= payload.len(),
            "needs {n} of {}",
            payload.len()
        );
        tail = tail_of(n);
        parsed = pack::index_from_tail(PATH, header.version, payload.len(), tail);
    }
    let sections = match parsed {
        Ok(pack::Tail::Index(sections)) => sections,
        Ok(pack::Tail::Needs(n)) => panic!("the whole index of {n} bytes was given"),
        Err(e) => return assert_names(&e, PATH),
    };
    let index_len = sections.len() * pack::entry_len(header.version) + 4;
    if let Err(e) = pack::check_index(PATH, header.crc, &sections, &tail[tail.len() - index_len..])
    {
        return assert_names(&e, PATH);
    }
    for s in &sections {
        if let Err(e) = pack::check_section(PATH, s, &payload[s.range.clone()]) {
            return assert_names(&e, PATH);
        }
    }
    let (whole, again) =
        pack::open(PATH, object).expect("an object whose sections check opens whole");
    assert_eq!(again, sections);
    assert_eq!(whole, payload);
    let _ = pack::plan_reads(&sections, |s| s.group % 2 == 0, 1 << 10);
}

/// The `packed` target: `data` as a packed object (see `weir_checkpoint::pack`), and as
/// the payload of one with a valid header.
pub fn packed(data: &[u8]) {
    packed_object(data);
    packed_object(&codec::frame(PayloadKind::Packed, data));
    // The index alone, as `pack::open` reads it after the header.
    if let Ok(sections) = pack::index(PATH, codec::FORMAT_VERSION, data) {
        assert_eq!(
            pack::open(PATH, &codec::frame(PayloadKind::Packed, data))
                .unwrap()
                .1,
            sections
        );
    }
}
