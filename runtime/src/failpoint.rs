//! Failpoints: named places where a test can make a process kill itself with SIGKILL.
//!
//! `WEIR_FAILPOINT=<name>[@N]` kills the process the N-th time (default: the first) it
//! reaches `<name>`, in generation 0 only, so that the restarted job runs through. The
//! kill is a real `SIGKILL`: no destructor, flush or unwinding runs. Names in use:
//!
//! | name | where |
//! | --- | --- |
//! | `upload` | a state snapshot is being uploaded |
//! | `before-manifest` | every part of a checkpoint is durable, the manifest is not written |
//! | `after-manifest` | the manifest is written, sink output is not committed |
//! | `mid-commit` | some but not all sink outputs of a checkpoint are committed |
//! | `kafka-publish` | an exactly-once Kafka sink has published (and flushed) another 64 records of an epoch, not all of them |

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

static GENERATION: AtomicU64 = AtomicU64::new(u64::MAX);
static HITS: AtomicU64 = AtomicU64::new(0);

fn armed() -> Option<&'static (String, u64)> {
    static SPEC: OnceLock<Option<(String, u64)>> = OnceLock::new();
    SPEC.get_or_init(|| {
        let spec = std::env::var("WEIR_FAILPOINT").ok()?;
        let (name, n) = match spec.split_once('@') {
            Some((name, n)) => (name.to_string(), n.parse().unwrap_or(1)),
            None => (spec, 1),
        };
        Some((name, n.max(1)))
    })
    .as_ref()
}

/// Tells the failpoints which generation this process belongs to.
pub fn set_generation(generation: u64) {
    GENERATION.store(generation, Ordering::SeqCst);
}

/// Whether the failpoint `name` is armed in this process (tests use it to make a kill
/// land at a well-defined point, e.g. after a flush).
pub fn armed_for(name: &str) -> bool {
    armed().is_some_and(|(n, _)| n == name) && GENERATION.load(Ordering::SeqCst) == 0
}

/// Kills the process if the failpoint `name` is armed and due.
pub fn hit(name: &str) {
    let Some((armed_name, n)) = armed() else {
        return;
    };
    if armed_name != name || GENERATION.load(Ordering::SeqCst) != 0 {
        return;
    }
    if HITS.fetch_add(1, Ordering::SeqCst) + 1 == *n {
        eprintln!(
            "weir: failpoint `{name}` reached: killing process {} with SIGKILL",
            std::process::id()
        );
        // SAFETY: getpid and kill have no memory-safety preconditions.
        unsafe {
            libc::kill(libc::getpid(), libc::SIGKILL);
        }
    }
}
