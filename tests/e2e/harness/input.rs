//! Seeded random input files and the oracle computed from them.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};

use rand::distributions::{Distribution, WeightedIndex};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Word -> number of occurrences in the whole input.
pub type Oracle = BTreeMap<String, u64>;

/// The shape of a generated input.
#[derive(Debug, Clone)]
pub struct InputSpec {
    /// Number of files.
    pub files: usize,
    /// Fewest lines in one file.
    pub min_lines: usize,
    /// Most lines in one file.
    pub max_lines: usize,
    /// Number of distinct words to draw from.
    pub vocabulary: usize,
}

impl InputSpec {
    /// The default for runs that get killed: 8 files, about 24,000 lines, 300 words.
    pub fn chaos() -> Self {
        InputSpec {
            files: 8,
            min_lines: 2_200,
            max_lines: 3_800,
            vocabulary: 300,
        }
    }

    /// A smaller input for runs that only need a few checkpoints.
    pub fn small() -> Self {
        InputSpec {
            files: 5,
            min_lines: 800,
            max_lines: 1_600,
            vocabulary: 200,
        }
    }
}

/// A generated input directory.
#[derive(Debug)]
pub struct Corpus {
    /// The files written, in name order.
    pub files: Vec<PathBuf>,
    /// Number of lines over all files (blank ones included).
    pub lines: usize,
    /// Number of words over all files.
    pub words: u64,
    /// Word counts computed from the files on disk.
    pub oracle: Oracle,
}

impl Corpus {
    /// The `--rate-limit` (lines per second per worker) under which reading the whole
    /// input takes about `seconds` with `workers` workers in total.
    pub fn rate_limit_for(&self, workers: usize, seconds: f64) -> u64 {
        let per_worker = self.lines as f64 / workers as f64;
        ((per_worker / seconds).ceil() as u64).max(1)
    }
}

/// Words that exercise JSON escaping and UTF-8 in the sink.
const ODD_WORDS: &[&str] = &[
    "naïve",
    "straße",
    "日本語",
    "don't",
    "say\"hi\"",
    r"C:\temp",
    "emoji🦀",
    "x",
];

const SYLLABLES: &[&str] = &[
    "ka", "ri", "to", "mel", "an", "zu", "qu", "ex", "or", "lin", "dra", "ey", "po", "sut", "ne",
    "vi", "wa", "bo", "ch", "ith", "um", "gre", "fa", "ol",
];

fn vocabulary(rng: &mut StdRng, n: usize) -> Vec<String> {
    let mut seen = HashSet::new();
    let mut words = Vec::with_capacity(n);
    while words.len() + ODD_WORDS.len() < n {
        let syllables = rng.gen_range(1..=4);
        let mut w = String::new();
        for _ in 0..syllables {
            w.push_str(SYLLABLES[rng.gen_range(0..SYLLABLES.len())]);
        }
        if rng.gen_bool(0.1) {
            w = format!("{w}{}", rng.gen_range(0..100));
        }
        if rng.gen_bool(0.05) {
            w = w.to_uppercase();
        }
        if seen.insert(w.clone()) {
            words.push(w);
        }
    }
    // Spread the odd words over mid ranks so that each occurs a fair number of times.
    for (i, odd) in ODD_WORDS.iter().enumerate() {
        let at = (10 + i * 7).min(words.len());
        words.insert(at, odd.to_string());
    }
    words
}

fn separator(rng: &mut StdRng) -> &'static str {
    match rng.gen_range(0..100) {
        0..=89 => " ",
        90..=94 => "  ",
        95..=97 => "\t",
        _ => " \t ",
    }
}

/// Writes `spec.files` files of seeded random text into `dir`: words drawn from a
/// Zipf-like distribution, separated by spaces and tabs, with blank lines, leading and
/// trailing whitespace, and one file without a final newline. About one line in twenty
/// also carries a word of its own (`once<file>x<line>`) that occurs nowhere else, so
/// that every epoch's output contains words whose only line is in that epoch. Returns the corpus with
/// its oracle, computed by reading the files back.
pub fn generate(dir: &Path, seed: u64, spec: &InputSpec) -> Corpus {
    std::fs::create_dir_all(dir).expect("create the input directory");
    let mut rng = StdRng::seed_from_u64(seed);
    let vocab = vocabulary(&mut rng, spec.vocabulary);
    let weights: Vec<f64> = (0..vocab.len())
        .map(|rank| 1.0 / ((rank + 1) as f64).powf(1.1))
        .collect();
    let zipf = WeightedIndex::new(&weights).expect("valid weights");
    for f in 0..spec.files {
        let n_lines = rng.gen_range(spec.min_lines..=spec.max_lines);
        let mut text = String::new();
        for l in 0..n_lines {
            let n_words = if rng.gen_bool(0.04) {
                0
            } else {
                rng.gen_range(1..=12)
            };
            if rng.gen_bool(0.05) {
                text.push_str(separator(&mut rng));
            }
            for w in 0..n_words {
                if w > 0 {
                    text.push_str(separator(&mut rng));
                }
                text.push_str(&vocab[zipf.sample(&mut rng)]);
            }
            if rng.gen_bool(0.05) {
                // A word that occurs exactly once in the whole input: losing or
                // duplicating the output of the epoch that reads it shows in its count.
                if n_words > 0 {
                    text.push_str(separator(&mut rng));
                }
                text.push_str(&format!("once{f}x{l}"));
            }
            if rng.gen_bool(0.03) {
                text.push_str(separator(&mut rng));
            }
            let last_line_of_first_file = f == 0 && l + 1 == n_lines;
            if !last_line_of_first_file {
                text.push('\n');
            }
        }
        let path = dir.join(format!("part-{f:02}.txt"));
        std::fs::write(&path, text).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    }
    corpus_of(dir)
}

/// Reads every file in `dir` and counts its words (the oracle).
pub fn corpus_of(dir: &Path) -> Corpus {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("list {}: {e}", dir.display()))
        .map(|e| e.expect("read a directory entry").path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    let mut oracle = Oracle::new();
    let mut lines = 0;
    let mut words = 0;
    for f in &files {
        let text =
            std::fs::read_to_string(f).unwrap_or_else(|e| panic!("read {}: {e}", f.display()));
        for line in text.lines() {
            lines += 1;
            for w in line.split_whitespace() {
                words += 1;
                *oracle.entry(w.to_string()).or_insert(0) += 1;
            }
        }
    }
    Corpus {
        files,
        lines,
        words,
        oracle,
    }
}
