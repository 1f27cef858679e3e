//! The COST baseline of the word-count benchmark (`benches/wordcount_cost.sh`): the
//! input generator, a hand-written single-threaded word count, and the check that a weir
//! run's committed output holds the same counts.
//!
//! ```text
//! wordcount_cost generate DIR [--lines N] [--files F] [--distinct D]
//! wordcount_cost count INPUT_DIR OUTPUT_FILE
//! wordcount_cost check BASELINE_FILE WEIR_OUTPUT_DIR
//! ```
//!
//! `generate` writes `N` lines (default 2M) of 1 to 6 words (7M words for 2M lines)
//! drawn from `D` distinct words (default 100k) with Zipf-like frequencies (exponent 1),
//! spread over `F` files (default 4); the same arguments always write the same files.
//!
//! `count` is what a programmer writes by hand without a dataflow system: read every
//! file line by line into one reused buffer, split on whitespace, count in a
//! `HashMap<String, u64>`, write `{"word": ..., "count": ...}` lines.
//!
//! `check` reads the baseline's counts and every committed `*.jsonl` file of a weir run
//! (`{"word", "count", "epoch"}` lines, several epochs per word), keeps each word's count
//! of its newest epoch, and exits 1 naming the first difference unless both agree.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize)]
struct Count {
    word: String,
    count: u64,
    #[serde(default)]
    epoch: u64,
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let flag = |name: &str, default: u64| -> anyhow::Result<u64> {
        match args.iter().position(|a| a == name) {
            Some(i) => Ok(args.get(i + 1).context("flag without value")?.parse()?),
            None => Ok(default),
        }
    };
    match args.first().map(String::as_str) {
        Some("generate") if args.len() >= 2 => generate(
            Path::new(&args[1]),
            flag("--lines", 2_000_000)?,
            flag("--files", 4)?,
            flag("--distinct", 100_000)?,
        ),
        Some("count") if args.len() == 3 => count(Path::new(&args[1]), Path::new(&args[2])),
        Some("check") if args.len() == 3 => check(Path::new(&args[1]), Path::new(&args[2])),
        _ => bail!(
            "usage: wordcount_cost generate DIR [--lines N] [--files F] [--distinct D] | \
             count INPUT_DIR OUTPUT_FILE | check BASELINE_FILE WEIR_OUTPUT_DIR"
        ),
    }
}

/// A small deterministic generator (splitmix64), so that the input never depends on a
/// library's version.
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    /// Uniform in `[0, 1)`.
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// The word of rank `r`: letters, 2 to 9 of them, unrelated to the rank's frequency.
fn word(r: u64) -> String {
    let mut x = r.wrapping_mul(0x2545_f491_4f6c_dd1d) ^ (r << 7);
    let len = 2 + (r % 8) as usize;
    let mut w = String::with_capacity(len + 8);
    for _ in 0..len {
        w.push((b'a' + (x % 26) as u8) as char);
        x /= 26;
    }
    // The rank in base 36 keeps every word distinct.
    let mut r = r;
    loop {
        w.push(char::from_digit((r % 36) as u32, 36).expect("digit"));
        r /= 36;
        if r == 0 {
            break;
        }
    }
    w
}

fn generate(dir: &Path, lines: u64, files: u64, distinct: u64) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)?;
    // Zipf with exponent 1: rank r (from 1) has weight 1/r.
    let mut cdf = Vec::with_capacity(distinct as usize);
    let mut total = 0.0;
    for r in 1..=distinct {
        total += 1.0 / r as f64;
        cdf.push(total);
    }
    let words: Vec<String> = (0..distinct).map(word).collect();
    let mut rng = SplitMix(42);
    let per_file = lines.div_ceil(files.max(1));
    let mut written = 0;
    for f in 0..files.max(1) {
        let path = dir.join(format!("part-{f}.txt"));
        let mut out = BufWriter::new(std::fs::File::create(&path)?);
        for _ in 0..per_file.min(lines - written) {
            let n = 1 + rng.next() % 6;
            for j in 0..n {
                let u = rng.unit() * total;
                let r = cdf.partition_point(|&c| c < u).min(distinct as usize - 1);
                if j > 0 {
                    out.write_all(b" ")?;
                }
                out.write_all(words[r].as_bytes())?;
            }
            out.write_all(b"\n")?;
            written += 1;
        }
        out.flush()?;
    }
    Ok(())
}

fn input_files(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("list {}", dir.display()))?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<_, _>>()?;
    files.retain(|p| p.is_file());
    files.sort();
    Ok(files)
}

fn count(input: &Path, output: &Path) -> anyhow::Result<()> {
    let mut counts: HashMap<String, u64> = HashMap::new();
    let mut line = String::new();
    for path in input_files(input)? {
        let mut reader = BufReader::with_capacity(1 << 16, std::fs::File::open(&path)?);
        loop {
            line.clear();
            if reader.read_line(&mut line)? == 0 {
                break;
            }
            for w in line.split_whitespace() {
                match counts.get_mut(w) {
                    Some(c) => *c += 1,
                    None => {
                        counts.insert(w.to_string(), 1);
                    }
                }
            }
        }
    }
    let mut out = BufWriter::with_capacity(1 << 16, std::fs::File::create(output)?);
    for (word, count) in counts {
        serde_json::to_writer(
            &mut out,
            &Count {
                word,
                count,
                epoch: 0,
            },
        )?;
        out.write_all(b"\n")?;
    }
    out.flush()?;
    Ok(())
}

fn check(baseline: &Path, weir: &Path) -> anyhow::Result<()> {
    let mut expected: HashMap<String, u64> = HashMap::new();
    for line in BufReader::new(std::fs::File::open(baseline)?).lines() {
        let c: Count = serde_json::from_str(&line?)?;
        expected.insert(c.word, c.count);
    }
    let mut got: HashMap<String, (u64, u64)> = HashMap::new();
    let mut files = 0;
    for path in input_files(weir)? {
        if path.extension().is_none_or(|x| x != "jsonl") {
            continue;
        }
        files += 1;
        for line in BufReader::new(std::fs::File::open(&path)?).lines() {
            let c: Count = serde_json::from_str(&line?)
                .with_context(|| format!("a line of {}", path.display()))?;
            match got.get_mut(&c.word) {
                Some((epoch, _)) if *epoch == c.epoch => {
                    bail!(
                        "{}: word {:?} reported twice for epoch {}",
                        path.display(),
                        c.word,
                        c.epoch
                    )
                }
                Some((epoch, count)) if *epoch < c.epoch => (*epoch, *count) = (c.epoch, c.count),
                Some(_) => {}
                None => {
                    got.insert(c.word, (c.epoch, c.count));
                }
            }
        }
    }
    if files == 0 {
        bail!("no committed *.jsonl file in {}", weir.display());
    }
    for (word, count) in &expected {
        match got.get(word) {
            Some((_, c)) if c == count => {}
            Some((_, c)) => bail!("word {word:?}: weir counted {c}, the baseline {count}"),
            None => bail!("word {word:?} (count {count}) is missing from weir's output"),
        }
    }
    if got.len() != expected.len() {
        bail!(
            "weir reported {} words, the baseline {}",
            got.len(),
            expected.len()
        );
    }
    println!("ok: {} words agree", expected.len());
    Ok(())
}
