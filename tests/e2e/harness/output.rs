//! Reading the committed output of a wordcount job.

use std::path::Path;

use serde::Deserialize;

/// One committed line: a word's running count as of the end of an epoch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// The word.
    pub word: String,
    /// Its count after the epoch.
    pub count: u64,
    /// The epoch in which its count changed.
    pub epoch: u64,
    /// `file:line` the record was read from, for messages.
    pub origin: String,
}

#[derive(Deserialize)]
struct Line {
    word: String,
    count: u64,
    epoch: u64,
}

/// Every record in the committed files `dir/*.jsonl` (names not starting with `.`),
/// in file name order. Staging (`dir/.staging/`) and other hidden files are never
/// read. Panics on a line that is not a complete `{"word","count","epoch"}` object.
pub fn read_committed(dir: &Path) -> Vec<Record> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("list the output directory {}: {e}", dir.display()))
        .map(|e| e.expect("read a directory entry").path())
        .filter(|p| {
            let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
            !name.starts_with('.') && name.ends_with(".jsonl") && p.is_file()
        })
        .collect();
    files.sort();
    let mut records = Vec::new();
    for f in files {
        let bytes = std::fs::read(&f)
            .unwrap_or_else(|e| panic!("read committed output {}: {e}", f.display()));
        let text = String::from_utf8(bytes)
            .unwrap_or_else(|e| panic!("committed output {} is not valid UTF-8: {e}", f.display()));
        let name = f
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("?")
            .to_string();
        for (i, line) in text.lines().enumerate() {
            let origin = format!("{name}:{}", i + 1);
            let parsed: Line = serde_json::from_str(line).unwrap_or_else(|e| {
                panic!("committed line {origin} is not a {{\"word\",\"count\",\"epoch\"}} object ({e}): {line:?}")
            });
            records.push(Record {
                word: parsed.word,
                count: parsed.count,
                epoch: parsed.epoch,
                origin,
            });
        }
        assert!(
            text.is_empty() || text.ends_with('\n'),
            "committed output {} ends in a partial line (no final newline)",
            f.display()
        );
    }
    records
}
