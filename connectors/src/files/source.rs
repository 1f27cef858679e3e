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

use serde::{Deserialize, Serialize};

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

/// Every file of `dir`, like [`lines`], but many lines at a time: each [`LineBatch`]
/// holds up to 4 096 lines in one buffer, so the source allocates per batch, not per
/// line. Positions, delivery, the rate limit (in lines) and errors are those of
/// [`lines`]; a batch holds whole lines of one epoch only.
///
/// # Examples
///
/// ```
/// use weir_runtime::{testing, JobConfig};
/// use weir_connectors::files;
///
/// let dir = tempfile::tempdir().unwrap();
/// std::fs::write(dir.path().join("a.txt"), "one two\r\nthree\n\nfour").unwrap();
/// let input = dir.path().to_path_buf();
/// let batches = testing::run_collect(JobConfig::thread("doc-batches"), 1, move |job| {
///     job.source("input", files::line_batches(&input))
/// })
/// .unwrap();
/// let lines: Vec<&str> = batches.iter().flat_map(|b| b.lines()).collect();
/// assert_eq!(lines, ["one two", "three", "", "four"]);
/// ```
pub fn line_batches(dir: impl AsRef<Path>) -> LineBatches {
    LineBatches {
        dir: dir.as_ref().to_path_buf(),
        opts: SourceOptions::default(),
    }
}

/// The source [`line_batches`] returns.
#[derive(Debug, Clone)]
pub struct LineBatches {
    dir: PathBuf,
    opts: SourceOptions,
}

impl LineBatches {
    /// Reads with `opts` (a rate limit, in lines).
    pub fn options(self, opts: SourceOptions) -> Self {
        LineBatches { opts, ..self }
    }
}

impl weir_runtime::Source for LineBatches {
    type Item = LineBatch;
    fn build<'s>(self, job: &Job<'s>, name: &str) -> Result<Stream<'s, u64, Vec<LineBatch>>> {
        read_files(job, name, &self.dir, self.opts, Batches)
    }
}

/// Lines in one buffer, as [`line_batches`] emits them: the text of every line
/// (without its line end) back to back, and where each ends.
///
/// A batch read back from bytes is checked: line ends that do not fall, in order, on
/// character boundaries of the text are an error, never a panic later.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "RawLineBatch")]
pub struct LineBatch {
    text: String,
    ends: Vec<usize>,
}

/// A [`LineBatch`] as stored, before its line ends are checked.
#[derive(Deserialize)]
struct RawLineBatch {
    text: String,
    ends: Vec<usize>,
}

impl TryFrom<RawLineBatch> for LineBatch {
    type Error = String;
    fn try_from(raw: RawLineBatch) -> std::result::Result<Self, String> {
        let mut start = 0;
        for &end in &raw.ends {
            if end < start || !raw.text.is_char_boundary(end) {
                return Err(format!(
                    "a line batch of {} bytes has a line end at {end} after one at {start}, \
                     or inside a character",
                    raw.text.len()
                ));
            }
            start = end;
        }
        if start != raw.text.len() {
            return Err(format!(
                "a line batch of {} bytes has text after its last line end ({start})",
                raw.text.len()
            ));
        }
        Ok(LineBatch {
            text: raw.text,
            ends: raw.ends,
        })
    }
}

impl LineBatch {
    /// An empty batch.
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends `line` (which should hold no line end of its own).
    pub fn push(&mut self, line: &str) {
        self.text.push_str(line);
        self.ends.push(self.text.len());
    }

    /// The lines, in the order they were read.
    pub fn lines(&self) -> impl ExactSizeIterator<Item = &str> + '_ {
        let mut start = 0;
        self.ends.iter().map(move |&end| {
            let line = &self.text[start..end];
            start = end;
            line
        })
    }

    /// How many lines it holds.
    pub fn len(&self) -> usize {
        self.ends.len()
    }

    /// Whether it holds no line.
    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }
}

impl<'a> FromIterator<&'a str> for LineBatch {
    fn from_iter<I: IntoIterator<Item = &'a str>>(lines: I) -> Self {
        let mut batch = LineBatch::new();
        for line in lines {
            batch.push(line);
        }
        batch
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
        read_files(job, name, &self.dir, self.opts, EachLine::default())
    }
}

/// Reads every file of `dir` as the source named `name`, collecting lines with `collect`:
/// the timely-level form of [`lines`] and [`line_batches`].
fn read_files<'s, C: Collect>(
    job: &Job<'s>,
    name: &str,
    dir: &Path,
    opts: SourceOptions,
    collect: C,
) -> Result<Stream<'s, u64, Vec<C::Item>>> {
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
        collect,
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

/// How a [`LineReader`] turns lines into items: one `String` each, or batches.
trait Collect: 'static {
    /// What the source emits.
    type Item: timely::ExchangeData;
    /// Called once at the start of every read, before any line.
    fn start(&mut self, out: &mut Vec<Self::Item>);
    /// Reads the next line of `reader` into `out`, without its line end; returns the
    /// bytes consumed (0 at the end of the file, when nothing is added).
    fn line(
        &mut self,
        reader: &mut BufReader<std::fs::File>,
        out: &mut Vec<Self::Item>,
    ) -> std::io::Result<usize>;
    /// Called once at the end of every read that did not fail.
    fn finish(&mut self, out: &mut Vec<Self::Item>);
    /// The lines `item` holds.
    fn records(item: &Self::Item) -> usize;
}

/// One `String` per line, read through a reused buffer.
#[derive(Default)]
struct EachLine {
    line: String,
}

impl Collect for EachLine {
    type Item = String;
    fn start(&mut self, _out: &mut Vec<String>) {}
    fn line(
        &mut self,
        reader: &mut BufReader<std::fs::File>,
        out: &mut Vec<String>,
    ) -> std::io::Result<usize> {
        self.line.clear();
        let read = reader.read_line(&mut self.line)?;
        if read > 0 {
            out.push(self.line.trim_end_matches(['\n', '\r']).to_string());
        }
        Ok(read)
    }
    fn finish(&mut self, _out: &mut Vec<String>) {}
    fn records(_item: &String) -> usize {
        1
    }
}

/// One [`LineBatch`] per read: every line is read straight into the batch's buffer.
struct Batches;

impl Collect for Batches {
    type Item = LineBatch;
    fn start(&mut self, out: &mut Vec<LineBatch>) {
        out.push(LineBatch::new());
    }
    fn line(
        &mut self,
        reader: &mut BufReader<std::fs::File>,
        out: &mut Vec<LineBatch>,
    ) -> std::io::Result<usize> {
        let batch = out.last_mut().expect("a batch started");
        // `read_line` appends. On an error the batch may end in part of a line (std keeps
        // what it read of it if that was valid UTF-8): the read fails, and the source
        // fails the run without emitting the batch.
        let read = reader.read_line(&mut batch.text)?;
        if read > 0 {
            let end = batch.text.trim_end_matches(['\n', '\r']).len();
            batch.text.truncate(end);
            batch.ends.push(end);
        }
        Ok(read)
    }
    fn finish(&mut self, out: &mut Vec<LineBatch>) {
        if out.last().is_some_and(LineBatch::is_empty) {
            out.pop();
        }
    }
    fn records(item: &LineBatch) -> usize {
        item.len()
    }
}

struct LineReader<C> {
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
    collect: C,
}

impl<C: Collect> Reader for LineReader<C> {
    type Split = String;
    type Item = C::Item;

    fn records(item: &C::Item) -> usize {
        C::records(item)
    }

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
        out: &mut Vec<C::Item>,
    ) -> Result<bool> {
        self.collect.start(out);
        let more = self.read_lines(positions, max, out)?;
        self.collect.finish(out);
        Ok(more)
    }
}

impl<C: Collect> LineReader<C> {
    /// [`Reader::read`] between the collector's start and finish.
    fn read_lines(
        &mut self,
        positions: &mut BTreeMap<String, u64>,
        max: usize,
        out: &mut Vec<C::Item>,
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
                let read = match self.collect.line(reader, out) {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn reader<C: Collect>(dir: &Path, collect: C) -> LineReader<C> {
        let files = list_files("test", dir).unwrap();
        let sizes = files
            .iter()
            .map(|(n, p)| (n.clone(), std::fs::metadata(p).unwrap().len()))
            .collect();
        LineReader {
            name: "test".into(),
            sizes,
            files,
            open: Vec::new(),
            turn: 0,
            in_turn: 0,
            collect,
        }
    }

    #[test]
    fn a_batch_holds_at_most_max_lines_and_the_position_follows_its_last_line() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a.txt"), "one\r\ntwo\n\nthree four\nfive").unwrap();
        let mut batches = reader(dir.path(), Batches);
        let mut positions = BTreeMap::new();
        let mut out = Vec::new();
        assert!(batches.read(&mut positions, 3, &mut out).unwrap());
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].lines().collect::<Vec<_>>(), ["one", "two", ""]);
        assert_eq!(LineReader::<Batches>::records(&out[0]), 3);
        // After "one\r\n" (5 bytes), "two\n" (4) and "\n" (1).
        assert_eq!(positions["a.txt"], 10);

        // The same file read line by line stops at the same place.
        let mut each = reader(dir.path(), EachLine::default());
        let (mut at, mut lines) = (BTreeMap::new(), Vec::new());
        each.read(&mut at, 3, &mut lines).unwrap();
        assert_eq!(lines, ["one", "two", ""]);
        assert_eq!(at, positions);

        // A restarted reader resumes from the position; the last line has no line end.
        let mut resumed = reader(dir.path(), Batches);
        let mut rest = Vec::new();
        while resumed.read(&mut positions, 100, &mut rest).unwrap() {}
        let lines: Vec<&str> = rest.iter().flat_map(LineBatch::lines).collect();
        assert_eq!(lines, ["three four", "five"]);
        assert_eq!(positions["a.txt"], 25);
        // A read that finds nothing left adds no empty batch.
        assert!(rest.iter().all(|b| !b.is_empty()));
    }

    #[test]
    fn a_line_batch_whose_line_ends_do_not_fit_its_text_is_refused() {
        let good: LineBatch = serde_json::from_str(r#"{"text":"héllo","ends":[3,6]}"#).unwrap();
        assert_eq!(good.lines().collect::<Vec<_>>(), ["hé", "llo"]);
        for (bad, why) in [
            (r#"{"text":"héllo","ends":[2,6]}"#, "inside a character"),
            (r#"{"text":"ab","ends":[2,1]}"#, "after one at 2"),
            (
                r#"{"text":"ab","ends":[1]}"#,
                "text after its last line end",
            ),
            (r#"{"text":"ab","ends":[3]}"#, "line end at 3"),
        ] {
            let err = serde_json::from_str::<LineBatch>(bad)
                .unwrap_err()
                .to_string();
            assert!(err.contains(why), "{bad}: {err}");
        }
        let built: LineBatch = ["a", "", "bc"].into_iter().collect();
        let json = serde_json::to_string(&built).unwrap();
        assert_eq!(serde_json::from_str::<LineBatch>(&json).unwrap(), built);
        assert_eq!(built.len(), 3);
    }
}
