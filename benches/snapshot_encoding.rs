//! Snapshot encoding: bincode 1.3 (weir's format) against abomonation, on 1M keyed
//! entries `(String, u64)`. Prints the median of 5 runs of encode and decode.
//!
//! `cargo bench --bench snapshot_encoding`

use std::time::Instant;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn time<F: FnMut()>(mut f: F) -> f64 {
    let mut v = Vec::new();
    for _ in 0..5 {
        let s = Instant::now();
        f();
        v.push(s.elapsed().as_secs_f64() * 1e3);
    }
    median(v)
}

fn main() {
    let entries: Vec<(String, u64)> = (0..1_000_000u64)
        .map(|i| (format!("word-{i}"), i))
        .collect();
    let mut bin = Vec::new();
    let enc_bin = time(|| bin = bincode::serialize(&entries).unwrap());
    let dec_bin = time(|| {
        let back: Vec<(String, u64)> = bincode::deserialize(&bin).unwrap();
        assert_eq!(back.len(), entries.len());
    });
    let mut abo = Vec::new();
    let enc_abo = time(|| {
        abo.clear();
        // SAFETY: encoding only reads the value.
        unsafe { abomonation::encode(&entries, &mut abo).unwrap() };
    });
    let dec_abo = time(|| {
        let mut copy = abo.clone();
        // SAFETY: the bytes were produced by `encode` above in this process; abomonation
        // cannot check bytes read back from storage, which is why weir does not use it there.
        let (back, _) = unsafe { abomonation::decode::<Vec<(String, u64)>>(&mut copy).unwrap() };
        assert_eq!(back.len(), entries.len());
    });
    println!("1M (String, u64) entries, median of 5 runs (ms)");
    println!(
        "bincode 1.3   encode {enc_bin:>8.1}  decode {dec_bin:>8.1}  bytes {}",
        bin.len()
    );
    println!("abomonation   encode {enc_abo:>8.1}  decode {dec_abo:>8.1}  bytes {}  (decode includes copying the buffer)", abo.len());
}
