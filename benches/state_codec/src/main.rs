//! Decoding keyed state as weir restores it: bincode 1.3 (weir's format) against rkyv 0.8.
//!
//! A restore reads one encoded blob per key group and turns it back into the group's
//! `HashMap`. This benchmark builds one such blob of `N` entries, each a `u64` key and a
//! value of 192 to 208 (200 on average) pseudo-random bytes, encoded as a sequence of
//! `(key, value)` pairs (`N = 4_000_000` gives about 0.86 GB), and times decoding it:
//!
//! | variant | what is timed |
//! | --- | --- |
//! | `a1` | `bincode::deserialize` into `Vec<(u64, Vec<u8>)>` (weir decodes delta sections into such a `Vec`, values in an `Option`) |
//! | `a2` | `bincode::deserialize` into `Vec<(u64, serde_bytes::ByteBuf)>` |
//! | `f0` | `bincode::deserialize` into `HashMap<u64, Vec<u8>>` through serde's own map impl, which pre-sizes to at most 1 MiB of entries and grows from there: weir's base-section path today |
//! | `f1` | bincode into `HashMap<u64, Vec<u8>>` created `with_capacity` of the encoded length |
//! | `f2` | as `f1`, values as `ByteBuf` |
//! | `r1` | `rkyv::access` (bytecheck validation) of the archived `Vec<(u64, Vec<u8>)>`, then one pass summing every value's length: zero-copy, value bytes are not read |
//! | `h2` | `rkyv::access` (validated), then an owned `HashMap<u64, Vec<u8>>` built with `to_vec` of each archived value |
//! | `bare` | `vec![0; len]` then `copy_from_slice` of the bincode blob: reading the blob into fresh memory, page faults included |
//! | `bare-warm` | `copy_from_slice` of the bincode blob into memory already faulted in (before timing): the `memcpy` floor |
//!
//! The blobs are built before any timing, the bincode one in a `Vec<u8>` and the rkyv one
//! in rkyv's `AlignedVec`, and the source entries are dropped before the first timed run.
//! Every run decodes afresh. Each variant runs 5 times, interleaved round-robin with the
//! others (round `r` starts at the `r`-th variant) because the machine is shared and noisy;
//! the table gives the median, its throughput in GB/s (10^9 bytes of the variant's own
//! encoded blob per second) and that throughput over bare's. Only the decode is timed:
//! checking the result and dropping it are not. After every run the decoded result is
//! checked against the source entries by an order-independent digest of every key and
//! value byte, and the run panics on a mismatch.
//!
//! Page faults are counted for every variant, as they are for `bare`: before each run the
//! allocator's free memory goes back to the kernel (`malloc_trim(0)`, glibc), so a
//! decoder's values land in fresh pages as in a process restoring after a restart,
//! rather than in pages the previous run faulted in and freed. On a virtual machine
//! without transparent huge pages those faults can cost more than the copy itself. Pass
//! `warm` as a second argument to skip the trim and let runs reuse freed pages.
//!
//! Before timing, the program also shows what rkyv's validation does with damaged bytes:
//! it flips the byte in the middle of the rkyv blob (a value's payload, which structural
//! validation does not cover) and the high byte of the middle entry's value length
//! (which it must reject with an error rather than read out of bounds).
//!
//! Run it from weir's root with the entry count as the first argument (default 4000000):
//!
//! ```text
//! cargo run --release --manifest-path benches/state_codec/Cargo.toml -- 4000000
//! cargo run --release --manifest-path benches/state_codec/Cargo.toml -- 4000000 warm
//! ```
//!
//! The crate is standalone (its own `[workspace]` and `Cargo.lock`), so building it does
//! not touch weir's workspace. It uses the system allocator; weir's binaries use jemalloc,
//! which changes the figures of the variants that allocate one buffer per value.

use std::collections::HashMap;
use std::fmt;
use std::hint::black_box;
use std::marker::PhantomData;
use std::time::Instant;

use rkyv::rancor;
use rkyv::rend::u64_le;
use rkyv::tuple::ArchivedTuple2;
use rkyv::util::AlignedVec;
use rkyv::vec::ArchivedVec;
use serde::de::{Deserialize, Deserializer, SeqAccess, Visitor};
use serde_bytes::ByteBuf;

/// Entry count when none is given on the command line.
const DEFAULT_ENTRIES: usize = 4_000_000;

/// Timed runs of every variant; the median is reported.
const ROUNDS: usize = 5;

/// The state as it is before encoding: one key group's entries.
type Entries = Vec<(u64, Vec<u8>)>;

/// The archived form of [`Entries`] (`rkyv::Archived<Entries>`), spelled out.
type ArchivedEntries = ArchivedVec<ArchivedTuple2<u64_le, ArchivedVec<u8>>>;

// `ArchivedEntries` is exactly what rkyv archives `Entries` as.
const _: fn(&rkyv::Archived<Entries>) -> &ArchivedEntries = |a| a;

/// The encoded inputs and what decoding them must give back.
struct Inputs {
    /// `bincode::serialize(&entries)`: a `u64` count, then per entry the key and the
    /// value as a `u64` length and its bytes. Base and delta sections are laid out so.
    bincode: Vec<u8>,
    /// `rkyv::to_bytes(&entries)`.
    rkyv: AlignedVec,
    /// Digest of the source entries.
    expected: Digest,
}

/// An order-independent digest of a set of entries: equal digests mean, short of a hash
/// collision, the same keys with the same values.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Digest {
    entries: u64,
    value_bytes: u64,
    sum: u64,
}

impl Digest {
    fn of<'a>(entries: impl Iterator<Item = (u64, &'a [u8])>) -> Self {
        let mut d = Digest::default();
        for (key, value) in entries {
            d.entries += 1;
            d.value_bytes += value.len() as u64;
            d.sum = d
                .sum
                .wrapping_add(mix(key ^ mix(hash_bytes(value)).rotate_left(17)));
        }
        d
    }
}

/// splitmix64's finalizer: a bijection of `u64` that spreads every input bit.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// A fast 64-bit hash of a byte string, length included.
fn hash_bytes(bytes: &[u8]) -> u64 {
    let mut h = 0x9e37_79b9_7f4a_7c15 ^ bytes.len() as u64;
    let mut chunks = bytes.chunks_exact(8);
    for c in &mut chunks {
        let w = u64::from_le_bytes(c.try_into().expect("8 bytes"));
        h = (h ^ w).wrapping_mul(0x0000_0100_0000_01b3).rotate_left(29);
    }
    let mut tail = [0u8; 8];
    tail[..chunks.remainder().len()].copy_from_slice(chunks.remainder());
    mix(h ^ u64::from_le_bytes(tail))
}

/// `n` entries with distinct keys and values of 192..=208 pseudo-random bytes.
fn make_entries(n: usize) -> Entries {
    let mut state = 0x5eed_u64;
    let mut next = move || {
        state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        mix(state)
    };
    (0..n as u64)
        .map(|i| {
            let len = 192 + (next() % 17) as usize;
            let mut value = Vec::with_capacity(len);
            while value.len() < len {
                let word = next().to_le_bytes();
                let take = (len - value.len()).min(8);
                value.extend_from_slice(&word[..take]);
            }
            // `mix` is a bijection, so the keys are distinct and in no particular order.
            (mix(i), value)
        })
        .collect()
}

/// Deserializes a sequence of `(u64, V)` pairs into a `HashMap` created with the
/// capacity of the encoded length, which bincode knows exactly before the first entry.
struct PresizedMap<V>(HashMap<u64, V>);

impl<'de, V: Deserialize<'de>> Deserialize<'de> for PresizedMap<V> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Pairs<V>(PhantomData<V>);

        impl<'de, V: Deserialize<'de>> Visitor<'de> for Pairs<V> {
            type Value = PresizedMap<V>;

            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a sequence of (key, value) pairs")
            }

            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                let mut map = HashMap::with_capacity(seq.size_hint().unwrap_or(0));
                while let Some((key, value)) = seq.next_element::<(u64, V)>()? {
                    map.insert(key, value);
                }
                Ok(PresizedMap(map))
            }
        }

        deserializer.deserialize_seq(Pairs(PhantomData))
    }
}

/// Seconds elapsed since `start`, after making `value` observable to the optimizer.
fn stop<T>(start: Instant, value: &T) -> f64 {
    black_box(value);
    start.elapsed().as_secs_f64()
}

/// Checks a decoded result against the source entries.
fn check(variant: &str, got: Digest, inputs: &Inputs) {
    assert_eq!(
        got, inputs.expected,
        "{variant}: decoded entries differ from the source entries"
    );
}

/// Times decoding the bincode blob into `T`, then checks the result's `digest` (variant
/// `name`).
fn bincode_decode<T: serde::de::DeserializeOwned>(
    name: &str,
    inputs: &Inputs,
    digest: impl Fn(&T) -> Digest,
) -> f64 {
    let start = Instant::now();
    let decoded: T = bincode::deserialize(&inputs.bincode)
        .unwrap_or_else(|e| panic!("{name}: the blob does not decode: {e}"));
    let secs = stop(start, &decoded);
    check(name, digest(&decoded), inputs);
    secs
}

/// The digest of decoded entries held in a list.
fn digest_list<V: AsRef<[u8]>>(entries: &[(u64, V)]) -> Digest {
    Digest::of(entries.iter().map(|(k, v)| (*k, v.as_ref())))
}

/// The digest of decoded entries held in a map.
fn digest_map<V: AsRef<[u8]>>(entries: &HashMap<u64, V>) -> Digest {
    Digest::of(entries.iter().map(|(k, v)| (*k, v.as_ref())))
}

/// a1: bincode into `Vec<(u64, Vec<u8>)>`.
fn a1_bincode_vec(inputs: &Inputs) -> f64 {
    bincode_decode("a1", inputs, |d: &Vec<(u64, Vec<u8>)>| digest_list(d))
}

/// a2: bincode into `Vec<(u64, ByteBuf)>`.
fn a2_bincode_vec_bytebuf(inputs: &Inputs) -> f64 {
    bincode_decode("a2", inputs, |d: &Vec<(u64, ByteBuf)>| digest_list(d))
}

/// f0: bincode into `HashMap<u64, Vec<u8>>` through serde's `HashMap` impl.
fn f0_bincode_map_serde(inputs: &Inputs) -> f64 {
    bincode_decode("f0", inputs, digest_map::<Vec<u8>>)
}

/// f1: bincode into a pre-sized `HashMap<u64, Vec<u8>>`.
fn f1_bincode_map(inputs: &Inputs) -> f64 {
    bincode_decode("f1", inputs, |d: &PresizedMap<Vec<u8>>| digest_map(&d.0))
}

/// f2: bincode into a pre-sized `HashMap<u64, ByteBuf>`.
fn f2_bincode_map_bytebuf(inputs: &Inputs) -> f64 {
    bincode_decode("f2", inputs, |d: &PresizedMap<ByteBuf>| digest_map(&d.0))
}

/// r1: validated rkyv access, then a pass over every entry summing the value lengths.
fn r1_rkyv_access(inputs: &Inputs) -> f64 {
    let start = Instant::now();
    let archived =
        rkyv::access::<ArchivedEntries, rancor::Error>(&inputs.rkyv).expect("r1 validates");
    let value_bytes: u64 = archived.iter().map(|e| e.1.len() as u64).sum();
    let secs = stop(start, &value_bytes);
    assert_eq!(
        value_bytes, inputs.expected.value_bytes,
        "r1: value lengths differ"
    );
    let digest = Digest::of(archived.iter().map(|e| (e.0.to_native(), e.1.as_slice())));
    check("r1", digest, inputs);
    secs
}

/// h2: validated rkyv access, then an owned `HashMap<u64, Vec<u8>>` of the entries.
fn h2_rkyv_to_map(inputs: &Inputs) -> f64 {
    let start = Instant::now();
    let archived =
        rkyv::access::<ArchivedEntries, rancor::Error>(&inputs.rkyv).expect("h2 validates");
    let mut decoded: HashMap<u64, Vec<u8>> = HashMap::with_capacity(archived.len());
    for entry in archived.iter() {
        decoded.insert(entry.0.to_native(), entry.1.as_slice().to_vec());
    }
    let secs = stop(start, &decoded);
    check("h2", digest_map(&decoded), inputs);
    secs
}

/// bare: the bincode blob copied into freshly allocated memory.
fn bare_copy(inputs: &Inputs) -> f64 {
    let start = Instant::now();
    let mut fresh = vec![0u8; inputs.bincode.len()];
    fresh.copy_from_slice(&inputs.bincode);
    let secs = stop(start, &fresh);
    assert!(
        fresh == inputs.bincode,
        "bare: the copy differs from the blob"
    );
    secs
}

/// bare-warm: the bincode blob copied into memory faulted in before timing.
fn bare_warm_copy(inputs: &Inputs) -> f64 {
    let mut warm = vec![0u8; inputs.bincode.len()];
    warm.fill(1);
    black_box(&mut warm);
    let start = Instant::now();
    warm.copy_from_slice(&inputs.bincode);
    let secs = stop(start, &warm);
    assert!(
        warm == inputs.bincode,
        "bare-warm: the copy differs from the blob"
    );
    secs
}

/// Hands the allocator's free memory back to the kernel, so that the next run faults
/// its pages in afresh.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn release_free_memory() {
    extern "C" {
        fn malloc_trim(pad: usize) -> std::ffi::c_int;
    }
    // SAFETY: glibc's `malloc_trim` only returns unused memory of the allocator's arenas
    // to the kernel; it takes a plain integer and touches no memory of the caller's.
    unsafe {
        malloc_trim(0);
    }
}

/// Hands the allocator's free memory back to the kernel (a no-op off glibc).
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn release_free_memory() {}

/// One measured variant.
struct Variant {
    name: &'static str,
    what: &'static str,
    /// Size of the blob it decodes, for its throughput.
    encoded_bytes: fn(&Inputs) -> usize,
    run: fn(&Inputs) -> f64,
}

fn bincode_len(inputs: &Inputs) -> usize {
    inputs.bincode.len()
}

fn rkyv_len(inputs: &Inputs) -> usize {
    inputs.rkyv.len()
}

const VARIANTS: &[Variant] = &[
    Variant {
        name: "a1",
        what: "bincode → `Vec<(u64, Vec<u8>)>`",
        encoded_bytes: bincode_len,
        run: a1_bincode_vec,
    },
    Variant {
        name: "a2",
        what: "bincode → `Vec<(u64, ByteBuf)>`",
        encoded_bytes: bincode_len,
        run: a2_bincode_vec_bytebuf,
    },
    Variant {
        name: "f0",
        what: "bincode → `HashMap<u64, Vec<u8>>`, serde's impl (weir today)",
        encoded_bytes: bincode_len,
        run: f0_bincode_map_serde,
    },
    Variant {
        name: "f1",
        what: "bincode → `HashMap<u64, Vec<u8>>`, `with_capacity`",
        encoded_bytes: bincode_len,
        run: f1_bincode_map,
    },
    Variant {
        name: "f2",
        what: "bincode → `HashMap<u64, ByteBuf>`, `with_capacity`",
        encoded_bytes: bincode_len,
        run: f2_bincode_map_bytebuf,
    },
    Variant {
        name: "r1",
        what: "rkyv validated access + sum of value lengths (zero-copy)",
        encoded_bytes: rkyv_len,
        run: r1_rkyv_access,
    },
    Variant {
        name: "h2",
        what: "rkyv validated access → `HashMap<u64, Vec<u8>>`",
        encoded_bytes: rkyv_len,
        run: h2_rkyv_to_map,
    },
    Variant {
        name: "bare",
        what: "bincode blob copied into fresh memory",
        encoded_bytes: bincode_len,
        run: bare_copy,
    },
    Variant {
        name: "bare-warm",
        what: "bincode blob copied into memory already faulted in",
        encoded_bytes: bincode_len,
        run: bare_warm_copy,
    },
];

/// What validated access makes of a (possibly damaged) rkyv blob: `Ok` with the digest
/// of the entries it reads, or `Err` with the validator's message. The check runs with
/// `rancor::Error`, the error type the timed variants use, and again with
/// `rancor::BoxedError`, whose message says what failed (`rancor::Error` only keeps it in
/// debug builds).
fn access_outcome(bytes: &[u8]) -> Result<Digest, String> {
    let plain = rkyv::access::<ArchivedEntries, rancor::Error>(bytes);
    let boxed = rkyv::access::<ArchivedEntries, rancor::BoxedError>(bytes);
    assert_eq!(
        plain.is_ok(),
        boxed.is_ok(),
        "both error types validate alike"
    );
    match boxed {
        Ok(archived) => Ok(Digest::of(
            archived.iter().map(|e| (e.0.to_native(), e.1.as_slice())),
        )),
        Err(e) => Err(e.to_string()),
    }
}

/// Flips single bytes of the rkyv blob, shows what validated access makes of each, and
/// puts the blob back as it was.
fn show_damage(inputs: &mut Inputs) {
    println!("## rkyv validation on damaged bytes\n");
    let total = inputs.rkyv.len();

    // 1. The byte in the middle of the blob, which lies in a value's payload: validation
    // checks structure (offsets, lengths, bounds), not content.
    let middle = total / 2;
    inputs.rkyv[middle] ^= 0xff;
    let outcome = match access_outcome(&inputs.rkyv) {
        Ok(digest) if digest == inputs.expected => "Ok, entries unchanged".to_string(),
        Ok(_) => "Ok, but the entries' digest changed: a value's payload byte, which \
                  structural validation does not cover; only a checksum over the blob \
                  catches this"
            .to_string(),
        Err(e) => format!("Err: {e}"),
    };
    println!("- byte {middle} of {total} (middle of the blob) flipped: access returns {outcome}");
    inputs.rkyv[middle] ^= 0xff;

    // 2. The high byte of the middle entry's value length. `ArchivedVec` is
    // `#[repr(C)] { ptr: RelPtr<T>, len: ArchivedUsize }`, little-endian, so its last byte
    // is the high byte of the length; flipping it points the value far past the blob.
    let entry = inputs.expected.entries as usize / 2;
    let (len_field, len) = {
        let archived = rkyv::access::<ArchivedEntries, rancor::Error>(&inputs.rkyv)
            .expect("the undamaged blob validates");
        let value = &archived[entry].1;
        let at = value as *const ArchivedVec<u8> as usize - inputs.rkyv.as_ptr() as usize;
        (at + std::mem::size_of::<ArchivedVec<u8>>() - 4, value.len())
    };
    let field: [u8; 4] = inputs.rkyv[len_field..len_field + 4]
        .try_into()
        .expect("4 bytes");
    assert_eq!(
        u32::from_le_bytes(field) as usize,
        len,
        "the length of an archived value is where expected"
    );
    let high = len_field + 3;
    inputs.rkyv[high] ^= 0xff;
    let outcome = access_outcome(&inputs.rkyv);
    match &outcome {
        Ok(_) => println!("- byte {high} (high byte of entry {entry}'s value length {len}) flipped: access returns Ok"),
        Err(e) => println!(
            "- byte {high} (high byte of entry {entry}'s value length {len}) flipped: access returns Err: {e}"
        ),
    }
    assert!(
        outcome.is_err(),
        "validated access must reject an out-of-bounds value"
    );
    inputs.rkyv[high] ^= 0xff;

    assert_eq!(
        access_outcome(&inputs.rkyv),
        Ok(inputs.expected),
        "the restored blob validates and decodes to the source entries"
    );
    println!();
}

fn median(mut runs: Vec<f64>) -> f64 {
    runs.sort_by(f64::total_cmp);
    runs[runs.len() / 2]
}

/// The value of the first line of `path` that starts with `key`.
fn proc_field(path: &str, key: &str) -> String {
    std::fs::read_to_string(path)
        .ok()
        .and_then(|text| {
            text.lines()
                .find(|l| l.starts_with(key))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_else(|| "unknown".to_string())
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".to_string())
}

fn main() {
    let n: usize = match std::env::args().nth(1) {
        Some(arg) => arg
            .replace('_', "")
            .parse()
            .unwrap_or_else(|_| panic!("the entry count must be a number, got {arg:?}")),
        None => DEFAULT_ENTRIES,
    };
    assert!(n > 0, "the entry count must be positive");
    let warm = match std::env::args().nth(2).as_deref() {
        None => false,
        Some("warm") => true,
        Some(other) => panic!("the second argument can only be `warm`, got {other:?}"),
    };

    println!("# state_codec: decoding keyed state, bincode 1.3 against rkyv 0.8\n");
    println!(
        "- command: `{}`",
        std::env::args().collect::<Vec<_>>().join(" ")
    );
    println!(
        "- from weir's root: `cargo run --release --manifest-path benches/state_codec/Cargo.toml -- {n}{}`",
        if warm { " warm" } else { "" }
    );
    println!(
        "- memory: {}",
        if warm {
            "warm: runs may reuse pages that earlier runs faulted in and freed"
        } else {
            "cold: free memory handed back to the kernel before every run (malloc_trim), \
             so every variant pays its page faults"
        }
    );
    println!(
        "- machine: nproc {}, model name `{}`, MemTotal {}",
        std::thread::available_parallelism().map_or(0, |p| p.get()),
        proc_field("/proc/cpuinfo", "model name"),
        proc_field("/proc/meminfo", "MemTotal"),
    );
    if cfg!(debug_assertions) {
        println!("- WARNING: debug build; figures are meaningless without --release");
    }
    println!("- load average at start: {}", load_average());

    let setup = Instant::now();
    let entries = make_entries(n);
    let expected = Digest::of(entries.iter().map(|(k, v)| (*k, v.as_slice())));
    let bincode = bincode::serialize(&entries).expect("bincode encodes");
    let rkyv = rkyv::to_bytes::<rancor::Error>(&entries).expect("rkyv encodes");
    drop(entries);
    let mut inputs = Inputs {
        bincode,
        rkyv,
        expected,
    };
    println!(
        "- state: {n} entries, u64 keys, values of 192..=208 bytes ({} value bytes in all); \
         bincode blob {} bytes, rkyv blob {} bytes; built in {:.1} s\n",
        expected.value_bytes,
        inputs.bincode.len(),
        inputs.rkyv.len(),
        setup.elapsed().as_secs_f64()
    );

    show_damage(&mut inputs);

    let mut runs: Vec<Vec<f64>> = vec![Vec::with_capacity(ROUNDS); VARIANTS.len()];
    for round in 0..ROUNDS {
        for i in 0..VARIANTS.len() {
            let v = (round + i) % VARIANTS.len();
            if !warm {
                release_free_memory();
            }
            runs[v].push((VARIANTS[v].run)(&inputs));
        }
        eprintln!("round {}/{ROUNDS} done", round + 1);
    }

    let rate = |v: usize, secs: f64| (VARIANTS[v].encoded_bytes)(&inputs) as f64 / secs / 1e9;
    let bare = VARIANTS
        .iter()
        .position(|v| v.name == "bare")
        .expect("bare is a variant");
    let bare_rate = rate(bare, median(runs[bare].clone()));

    println!("## Decode, median of {ROUNDS} interleaved runs\n");
    println!("| variant | median s | GB/s | ratio to bare |");
    println!("| --- | --- | --- | --- |");
    for (v, variant) in VARIANTS.iter().enumerate() {
        let secs = median(runs[v].clone());
        println!(
            "| {}: {} | {:.3} | {:.2} | {:.3} |",
            variant.name,
            variant.what,
            secs,
            rate(v, secs),
            rate(v, secs) / bare_rate
        );
    }
    println!(
        "\nGB/s: 10^9 bytes of the variant's own encoded blob per second. Ratio to bare: \
         that throughput over bare's (1 = as fast as copying the blob into fresh memory). \
         Every decoded result matched the source entries' digest.\n"
    );
    println!("All runs (s), in the order they ran:\n");
    for (variant, times) in VARIANTS.iter().zip(&runs) {
        let list: Vec<String> = times.iter().map(|t| format!("{t:.3}")).collect();
        println!("- {}: {}", variant.name, list.join(", "));
    }
    println!("\n- load average at end: {}", load_average());
    println!(
        "- peak RSS (VmHWM): {}",
        proc_field("/proc/self/status", "VmHWM")
    );
}
