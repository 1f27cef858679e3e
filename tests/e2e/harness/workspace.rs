//! One test's private directories: input, committed output, checkpoints and logs.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use tempfile::TempDir;

/// A temporary directory tree owned by one test. It is deleted when the test passes
/// and kept (its path printed) when the test panics, for a post-mortem.
pub struct Workspace {
    tmp: Option<TempDir>,
    /// The tree's root.
    pub root: PathBuf,
    /// The job's input directory.
    pub input: PathBuf,
    /// The job's output directory.
    pub output: PathBuf,
    /// The checkpoint root (a local path, which is a valid checkpoint URL).
    pub checkpoints: PathBuf,
    /// Where stdout and stderr of every spawned process go.
    pub logs: PathBuf,
    next_log: AtomicUsize,
}

impl Workspace {
    /// A fresh tree; `name` prefixes the directory name to make it recognizable.
    pub fn new(name: &str) -> Self {
        let tmp = tempfile::Builder::new()
            .prefix(&format!("weir-e2e-{name}-"))
            .tempdir()
            .expect("create a temporary directory");
        let root = tmp.path().to_path_buf();
        let ws = Workspace {
            input: root.join("input"),
            output: root.join("output"),
            checkpoints: root.join("checkpoints"),
            logs: root.join("logs"),
            root,
            tmp: Some(tmp),
            next_log: AtomicUsize::new(0),
        };
        for d in [&ws.input, &ws.output, &ws.checkpoints, &ws.logs] {
            std::fs::create_dir_all(d).unwrap_or_else(|e| panic!("create {}: {e}", d.display()));
        }
        ws
    }

    /// The checkpoint directory as a string, the form the job's `--checkpoint-dir` takes.
    pub fn checkpoint_url(&self) -> String {
        path_str(&self.checkpoints)
    }

    /// Fresh paths for the stdout and stderr of the next process called `name`.
    pub fn log_paths(&self, name: &str) -> (PathBuf, PathBuf) {
        let n = self.next_log.fetch_add(1, Ordering::SeqCst);
        (
            self.logs.join(format!("{n:02}-{name}.stdout")),
            self.logs.join(format!("{n:02}-{name}.stderr")),
        )
    }
}

impl Drop for Workspace {
    fn drop(&mut self) {
        if std::thread::panicking() {
            if let Some(tmp) = self.tmp.take() {
                let kept = tmp.keep();
                eprintln!("test failed: its files are kept in {}", kept.display());
            }
        }
    }
}

/// A path as a UTF-8 string (temporary paths always are).
pub fn path_str(p: &Path) -> String {
    p.to_str()
        .unwrap_or_else(|| panic!("non UTF-8 path {}", p.display()))
        .to_string()
}
