//! Failpoints: named places where a test can make a process kill itself with SIGKILL.
//!
//! `WEIR_FAILPOINT=<name>[@N][:gG][=stop|=delay:MS]` kills the process the N-th time
//! (default: the first) it reaches `<name>`, in generation G only (default 0), so that
//! the restarted job runs through; several failpoints are separated by commas. The kill
//! is a real `SIGKILL`: no destructor, flush or unwinding runs. With `=stop` the process
//! stops itself with `SIGSTOP` instead, at exactly that point, and goes on where it
//! stopped when it gets `SIGCONT`: a zombie for fencing tests. With `=delay:MS` every hit
//! from the N-th on waits MS milliseconds, where the place supports it ([`delay`]; `upload`
//! and `encode` do): a slow store, a slow encoder. Names in use:
//!
//! | name | where |
//! | --- | --- |
//! | `upload` | a state snapshot is being uploaded |
//! | `encode` | keyed state encodes the deltas of a snapshot off its barrier; with `=delay:MS` it starts MS after the barrier (keys written meanwhile are encoded before the write, as always), so that snapshots are still encoding at the next barriers |
//! | `compaction` | a packed object with new bases of some of a worker's key groups (a compaction) is being uploaded |
//! | `before-manifest` | every part of a checkpoint is durable, the manifest is not written |
//! | `before-link` | the manifest is written, the link that commits it is not |
//! | `after-manifest` | the manifest is written, sink output is not committed |
//! | `mid-commit` | some but not all sink outputs of a checkpoint are committed |
//! | `restore` | a worker has read and decoded a part of the restored checkpoint's state |
//! | `kafka-publish` | an exactly-once Kafka sink has published (and flushed) another 64 records of an epoch, not all of them |

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

static GENERATION: AtomicU64 = AtomicU64::new(u64::MAX);

/// One armed failpoint: its name, the hit that kills, the generation it fires in, and
/// the hits so far.
struct Armed {
    name: String,
    nth: u64,
    generation: u64,
    /// `SIGSTOP` instead of `SIGKILL`.
    stop: bool,
    /// Wait this long at every hit from the `nth` on, instead of a signal.
    delay: Option<std::time::Duration>,
    hits: AtomicU64,
}

/// Parses `name[@N][:gG][=stop|=delay:MS]`, comma-separated.
fn parse(spec: &str) -> Vec<Armed> {
    spec.split(',')
        .filter(|s| !s.is_empty())
        .filter_map(|one| {
            let (one, stop, delay) = match one.split_once('=') {
                Some((one, action)) => {
                    let delay = action
                        .strip_prefix("delay:")
                        .and_then(|ms| ms.parse().ok())
                        .map(std::time::Duration::from_millis);
                    if action != "stop" && delay.is_none() {
                        eprintln!("weir: failpoint `{one}={action}` is not armed: the action is `stop` or `delay:MS` (whole milliseconds)");
                        return None;
                    }
                    (one, action == "stop", delay)
                }
                None => (one, false, None),
            };
            let (rest, generation) = match one.split_once(":g") {
                Some((rest, g)) => (rest, g.parse().unwrap_or(0)),
                None => (one, 0),
            };
            let (name, nth) = match rest.split_once('@') {
                Some((name, n)) => (name, n.parse().unwrap_or(1)),
                None => (rest, 1),
            };
            Some(Armed {
                name: name.to_string(),
                nth: nth.max(1),
                generation,
                stop,
                delay,
                hits: AtomicU64::new(0),
            })
        })
        .collect()
}

fn armed() -> &'static [Armed] {
    static SPEC: OnceLock<Vec<Armed>> = OnceLock::new();
    SPEC.get_or_init(|| {
        std::env::var("WEIR_FAILPOINT")
            .map(|s| parse(&s))
            .unwrap_or_default()
    })
}

/// Tells the failpoints which generation this process belongs to.
pub fn set_generation(generation: u64) {
    GENERATION.store(generation, Ordering::SeqCst);
}

fn find(name: &str, delays: bool) -> Option<&'static Armed> {
    let generation = GENERATION.load(Ordering::SeqCst);
    armed()
        .iter()
        .find(|a| a.name == name && a.generation == generation && a.delay.is_some() == delays)
}

/// Whether the failpoint `name` is armed in this process (tests use it to make a kill
/// land at a well-defined point, e.g. after a flush).
pub fn armed_for(name: &str) -> bool {
    find(name, false).is_some()
}

/// How long to wait here if the failpoint `name` is armed with `=delay:MS` and due; the
/// caller waits (asynchronously, where it runs on the I/O runtime).
pub fn delay(name: &str) -> Option<std::time::Duration> {
    let a = find(name, true)?;
    (a.hits.fetch_add(1, Ordering::SeqCst) + 1 >= a.nth)
        .then_some(a.delay)
        .flatten()
}

/// Kills the process if the failpoint `name` is armed and due.
pub fn hit(name: &str) {
    let Some(a) = find(name, false) else {
        return;
    };
    if a.hits.fetch_add(1, Ordering::SeqCst) + 1 == a.nth {
        let signal = if a.stop { "SIGSTOP" } else { "SIGKILL" };
        eprintln!(
            "weir: failpoint `{name}` reached: signalling process {} with {signal}",
            std::process::id()
        );
        // SAFETY: getpid and kill have no memory-safety preconditions.
        unsafe {
            libc::kill(
                libc::getpid(),
                if a.stop { libc::SIGSTOP } else { libc::SIGKILL },
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_name_the_hit_and_the_generation() {
        let a = parse(
            "after-manifest@3,restore:g1,upload,before-manifest@2:g0=stop,upload@2=delay:250,upload=delay:1.5,upload=sleep",
        );
        let got: Vec<(&str, u64, u64, bool, Option<u64>)> = a
            .iter()
            .map(|a| {
                let delay = a.delay.map(|d| d.as_millis() as u64);
                (a.name.as_str(), a.nth, a.generation, a.stop, delay)
            })
            .collect();
        assert_eq!(
            got,
            vec![
                ("after-manifest", 3, 0, false, None),
                ("restore", 1, 1, false, None),
                ("upload", 1, 0, false, None),
                ("before-manifest", 2, 0, true, None),
                ("upload", 2, 0, false, Some(250))
            ]
        );
    }
}
