//! Looking at and damaging checkpoints on disk.

use std::path::{Path, PathBuf};

/// A complete checkpoint: a `chk-<epoch>` directory with a `_MANIFEST`.
#[derive(Debug, Clone)]
pub struct Checkpoint {
    /// Its epoch.
    pub epoch: u64,
    /// `<root>/<job>/chk-<epoch:020>`
    pub dir: PathBuf,
}

impl Checkpoint {
    /// The manifest file.
    pub fn manifest(&self) -> PathBuf {
        self.dir.join("_MANIFEST")
    }

    /// The manifest as JSON. A manifest is JSON after a fixed binary header (magic,
    /// version, length, crc).
    pub fn manifest_json(&self) -> serde_json::Value {
        let path = self.manifest();
        let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
        let start = if bytes.get(HEADER_LEN) == Some(&b'{') {
            HEADER_LEN
        } else {
            bytes
                .iter()
                .position(|&b| b == b'{')
                .unwrap_or_else(|| panic!("{} holds no JSON", path.display()))
        };
        serde_json::from_slice(&bytes[start..]).unwrap_or_else(|e| {
            panic!(
                "{} is not a JSON manifest after its header: {e}",
                path.display()
            )
        })
    }

    /// The object names (relative to the checkpoint root) of every part its manifest
    /// lists; parts may live in the directories of older checkpoints.
    pub fn manifest_parts(&self) -> Vec<String> {
        let path = self.manifest();
        self.manifest_json()["parts"]
            .as_array()
            .unwrap_or_else(|| panic!("manifest {} has no `parts` list", path.display()))
            .iter()
            .map(|p| {
                p["path"]
                    .as_str()
                    .unwrap_or_else(|| panic!("a part of {} has no `path`", path.display()))
                    .to_string()
            })
            .collect()
    }
}

/// Length of the binary header in front of every checkpoint object.
const HEADER_LEN: usize = 20;

/// The epoch of the `chk-<epoch>` directory an object name lies in.
pub fn epoch_of_object(name: &str) -> Option<u64> {
    name.split('/')
        .find_map(|c| c.strip_prefix("chk-"))
        .and_then(|d| d.parse().ok())
}

/// The complete checkpoints of `job` under the local checkpoint root, oldest first.
/// Panics on a `chk-` directory whose epoch is not zero-padded to 20 digits.
pub fn complete_checkpoints(root: &Path, job: &str) -> Vec<Checkpoint> {
    let job_dir = root.join(job);
    let Ok(entries) = std::fs::read_dir(&job_dir) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for e in entries {
        let p = e.expect("read a directory entry").path();
        let name = p
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("")
            .to_string();
        let Some(digits) = name.strip_prefix("chk-") else {
            continue;
        };
        assert!(
            digits.len() == 20 && digits.bytes().all(|b| b.is_ascii_digit()),
            "checkpoint directory {} is not named chk-<epoch zero-padded to 20 digits>",
            p.display()
        );
        if p.join("_MANIFEST").is_file() {
            out.push(Checkpoint {
                epoch: digits.parse().expect("digits"),
                dir: p,
            });
        }
    }
    out.sort_by_key(|c| c.epoch);
    out
}

/// `path` relative to `root`, with `/` separators: the object's name in the store.
pub fn object_name(root: &Path, path: &Path) -> String {
    let rel = path
        .strip_prefix(root)
        .unwrap_or_else(|_| panic!("{} is not under {}", path.display(), root.display()));
    rel.components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join("/")
}

/// Inverts every bit of the byte in the middle of the file.
pub fn flip_middle_byte(path: &Path) {
    let mut bytes = std::fs::read(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    assert!(!bytes.is_empty(), "{} is empty", path.display());
    let i = bytes.len() / 2;
    bytes[i] ^= 0xff;
    std::fs::write(path, bytes).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
}

/// Cuts the file to half its length.
pub fn truncate_to_half(path: &Path) {
    let len = std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("stat {}: {e}", path.display()))
        .len();
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    f.set_len(len / 2)
        .unwrap_or_else(|e| panic!("truncate {}: {e}", path.display()));
}

/// Copies the directory tree `from` to `to` (which must not exist).
pub fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap_or_else(|e| panic!("create {}: {e}", to.display()));
    for e in std::fs::read_dir(from).unwrap_or_else(|e| panic!("list {}: {e}", from.display())) {
        let e = e.expect("read a directory entry");
        let target = to.join(e.file_name());
        if e.path().is_dir() {
            copy_tree(&e.path(), &target);
        } else {
            std::fs::copy(e.path(), &target)
                .unwrap_or_else(|err| panic!("copy {}: {err}", e.path().display()));
        }
    }
}
