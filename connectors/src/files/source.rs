//! The file source: every file of a directory, line by line, replayable from
//! `(file, byte offset)` positions stored in the checkpoint.
//!
//! Delivery contract: files are spread over workers by the key group of their name; a
//! worker reads up to 16 of its files at once, a run of lines from each in turn.
//! With exactly-once and at-least-once delivery, a restore resumes every file right
//! after the last line covered by the restored checkpoint. With at-most-once, it
//! resumes after the last line ever read (a ledger written before lines are emitted).
//! Files must not change while the job runs: appending is not detected.
//!
//! ## Design
//!
//! Positions are `(file, byte offset)` after the last whole line emitted; a restore seeks
//! there, so a line is emitted in exactly one epoch of the committed history.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use timely::dataflow::Stream;
use weir_runtime::{Job, Result};

use crate::error::ConnectorError;

use crate::source::{source, Backlog, BacklogUnit, Reader, SourceOptions};

/// Every file of `dir` (names not starting with `.`), one `String` per line (without its
/// line end), at the epoch in which it was read.
///
/// It is an error if `dir` does not exist or a file cannot be opened; a line that is
/// not UTF-8 stops the job with an error naming the file and byte offset.
///
/// # Examples
///
/// ```
/// use weir_runtime::{testing, JobConfig};
/// use weir_connectors::files;
///
/// let dir = tempfile::tempdir().unwrap();
/// std::fs::write(dir.path().join("a.txt"), "one\ntwo\n").unwrap();
/// let input = dir.path().to_path_buf();
/// let lines = testing::run_collect(JobConfig::thread("doc-files"), 1, move |job| {
///     job.source("input", files::lines(&input))
/// })
/// .unwrap();
/// assert_eq!(lines, vec!["one", "two"]);
/// ```
pub fn lines(dir: impl AsRef<Path>) -> Lines {
    Lines {
        dir: dir.as_ref().to_path_buf(),
        opts: SourceOptions::default(),
    }
}

/// The source [`lines`] returns.
#[derive(Debug, Clone)]
pub struct Lines {
    dir: PathBuf,
    opts: SourceOptions,
}

impl Lines {
    /// Reads with `opts` (a rate limit).
    pub fn options(self, opts: SourceOptions) -> Self {
        Lines { opts, ..self }
    }
}

impl weir_runtime::Source for Lines {
    type Item = String;
    fn build<'s>(self, job: &Job<'s>, name: &str) -> Result<Stream<'s, u64, Vec<String>>> {
        read_lines(job, name, &self.dir, self.opts)
    }
}

/// Reads every file of `dir` as the source named `name`: the timely-level form of
/// [`lines`].
pub(crate) fn read_lines<'s>(
    job: &Job<'s>,
    name: &str,
    dir: &Path,
    opts: SourceOptions,
) -> Result<Stream<'s, u64, Vec<String>>> {
    let files = list_files(name, dir)?;
    let ctx = job.ctx();
    let owned: Vec<(String, PathBuf)> = files.into_iter().filter(|(n, _)| ctx.owns(n)).collect();
    for (_, path) in &owned {
        std::fs::File::open(path).map_err(|source| ConnectorError::File {
            connector: name.to_string(),
            action: "open input file",
            path: path.clone(),
            source,
            hint: "; check that it exists and is readable",
        })?;
    }
    let mut sizes = BTreeMap::new();
    for (file_name, path) in &owned {
        let meta = std::fs::metadata(path)
            .map_err(|e| ConnectorError::file(name, "read input file", path, e))?;
        sizes.insert(file_name.clone(), meta.len());
    }
    let reader = LineReader {
        name: name.to_string(),
        sizes,
        files: owned,
        open: Vec::new(),
        turn: 0,
        in_turn: 0,
        line: String::new(),
    };
    source(job, name, reader, opts)
}

/// The regular files of `dir`, by name, sorted.
fn list_files(
    name: &str,
    dir: &Path,
) -> std::result::Result<Vec<(String, PathBuf)>, ConnectorError> {
    let entries = std::fs::read_dir(dir).map_err(|source| ConnectorError::File {
        connector: name.to_string(),
        action: "read input directory",
        path: dir.to_path_buf(),
        source,
        hint: "; pass an existing directory with --input",
    })?;
    let mut files = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| ConnectorError::file(name, "list", dir, e))?;
        let file_name = entry.file_name().to_string_lossy().into_owned();
        if file_name.starts_with('.') {
            continue;
        }
        let path = entry.path();
        let meta = std::fs::metadata(&path)
            .map_err(|e| ConnectorError::file(name, "read input file", &path, e))?;
        if !meta.is_file() {
            return Err(ConnectorError::NotAFile {
                connector: name.to_string(),
                path,
            });
        }
        files.push((file_name, path));
    }
    files.sort();
    Ok(files)
}

/// Files read at once, a run of lines from each in turn, so that event time advances
/// in all of them together (watermarks are held back by the file that lags most).
const OPEN_AT_ONCE: usize = 16;
/// Lines read from one file before turning to the next.
const RUN: usize = 64;

struct LineReader {
    name: String,
    /// The size of every file this worker reads, as listed at start.
    sizes: BTreeMap<String, u64>,
    /// Files not finished yet, in name order.
    files: Vec<(String, PathBuf)>,
    /// Readers of the first `OPEN_AT_ONCE` files, opened on first use.
    open: Vec<Option<BufReader<std::fs::File>>>,
    /// The file (among the open ones) to read from next.
    turn: usize,
    /// Lines read from it in this turn (turns span calls).
    in_turn: usize,
    line: String,
}

impl Reader for LineReader {
    type Split = String;
    type Item = String;

    fn backlog(&self, positions: &BTreeMap<String, u64>) -> Option<Backlog> {
        let total: u64 = self.sizes.values().sum();
        let done = self
            .sizes
            .iter()
            .map(|(f, size)| positions.get(f).copied().unwrap_or(0).min(*size))
            .sum();
        Some(Backlog {
            done,
            total,
            unit: BacklogUnit::Bytes,
        })
    }

    fn read(
        &mut self,
        positions: &mut BTreeMap<String, u64>,
        max: usize,
        out: &mut Vec<String>,
    ) -> Result<bool> {
        let mut n = 0;
        while n < max {
            let active = self.files.len().min(OPEN_AT_ONCE);
            if active == 0 {
                return Ok(false);
            }
            self.open.resize_with(active, || None);
            let i = self.turn % active;
            let (file_name, path) = &self.files[i];
            let mut finished = false;
            // The file's position is read once per run and stored once after it, not per
            // line: the split's name is not cloned for every line.
            let start = positions.get(file_name).copied().unwrap_or(0);
            let mut offset = start;
            let io = |offset: u64, source: std::io::Error| ConnectorError::Read {
                connector: self.name.clone(),
                path: path.clone(),
                offset,
                source,
            };
            while self.in_turn < RUN && n < max {
                if self.open[i].is_none() {
                    let mut file = std::fs::File::open(path).map_err(|e| io(offset, e))?;
                    file.seek(SeekFrom::Start(offset))
                        .map_err(|e| io(offset, e))?;
                    self.open[i] = Some(BufReader::with_capacity(1 << 16, file));
                }
                let reader = self.open[i].as_mut().expect("opened");
                self.line.clear();
                let read = match reader.read_line(&mut self.line) {
                    Ok(read) => read,
                    Err(e) => {
                        if offset != start {
                            positions.insert(file_name.clone(), offset);
                        }
                        return Err(io(offset, e).into());
                    }
                };
                if read == 0 {
                    finished = true;
                    break;
                }
                offset += read as u64;
                out.push(self.line.trim_end_matches(['\n', '\r']).to_string());
                n += 1;
                self.in_turn += 1;
            }
            if offset != start {
                positions.insert(file_name.clone(), offset);
            }
            if finished {
                self.files.remove(i);
                self.open.remove(i);
                self.in_turn = 0;
            } else if self.in_turn == RUN {
                self.turn = i + 1;
                self.in_turn = 0;
            }
        }
        Ok(true)
    }
}
