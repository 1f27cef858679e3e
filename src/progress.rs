//! The progress bar of `weir launch`: input read out of the total, rate, ETA and the last
//! checkpoint, from the launched processes' metrics.
//!
//! Shown only when stderr is a terminal, and only for sources that know their input's
//! size: files in bytes (`weir_source_bytes_read` against `weir_source_bytes_read +
//! weir_source_bytes_left` over every process), else Kafka in records
//! (`weir_source_offsets_read` and `weir_source_offsets_left`).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};

use crate::dashboard::{fetch, parse_exposition};

/// What one look at the processes' metrics says.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Progress {
    /// Read so far, over every source and worker that reports it.
    pub done: u64,
    /// In all.
    pub total: u64,
    /// Whether `done` and `total` count records (Kafka offsets) rather than bytes.
    pub records: bool,
    /// The newest completed checkpoint any process reports.
    pub checkpoint: Option<u64>,
}

/// Sums the progress in the scraped expositions of every process.
///
/// ```
/// let p = weir::progress::progress_of(&[
///     "weir_source_bytes_read{worker=\"0\"} 10\nweir_source_bytes_left{worker=\"0\"} 30\n\
///      weir_checkpoint_last_completed_epoch 4\n".to_string(),
///     "weir_source_bytes_read{worker=\"1\"} 5\nweir_source_bytes_left{worker=\"1\"} 5\n".to_string(),
/// ]);
/// assert_eq!((p.done, p.total, p.checkpoint), (15, 50, Some(4)));
/// assert!(!p.records);
/// // Kafka counts its input in offsets.
/// let p = weir::progress::progress_of(&[
///     "weir_source_offsets_read{worker=\"0\"} 700\nweir_source_offsets_left{worker=\"0\"} 300\n".to_string(),
/// ]);
/// assert_eq!((p.done, p.total, p.records), (700, 1000, true));
/// ```
pub fn progress_of(expositions: &[String]) -> Progress {
    let mut p = Progress::default();
    let (mut done, mut left) = (0.0, 0.0);
    let (mut offsets_done, mut offsets_left) = (0.0, 0.0);
    for text in expositions {
        for (name, _, value) in parse_exposition(text) {
            match name.as_str() {
                "weir_source_bytes_read" => done += value,
                "weir_source_bytes_left" => left += value,
                "weir_source_offsets_read" => offsets_done += value,
                "weir_source_offsets_left" => offsets_left += value,
                "weir_checkpoint_last_completed_epoch" if value > 0.0 => {
                    p.checkpoint = Some(p.checkpoint.unwrap_or(0).max(value as u64));
                }
                _ => {}
            }
        }
    }
    if done + left == 0.0 && offsets_done + offsets_left > 0.0 {
        (done, left) = (offsets_done, offsets_left);
        p.records = true;
    }
    p.done = done as u64;
    p.total = (done + left) as u64;
    p
}

/// A bar on stderr, until [`Shown::finish`].
pub struct Shown {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<()>,
}

impl Shown {
    /// Clears the bar.
    pub fn finish(self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.thread.join();
    }
}

/// Shows the bar on stderr, scraping `metrics` twice a second.
pub fn show(metrics: Vec<String>) -> std::io::Result<Shown> {
    let done = Arc::new(AtomicBool::new(false));
    let stop = Arc::clone(&done);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let thread = std::thread::Builder::new()
        .name("weir-progress".into())
        .spawn(move || {
            let bar = ProgressBar::hidden();
            let style = |template: &str| {
                ProgressStyle::with_template(template)
                    .unwrap_or_else(|_| ProgressStyle::default_bar())
            };
            let mut shown = false;
            while !stop.load(Ordering::Relaxed) {
                let texts: Vec<String> = rt.block_on(async {
                    let mut out = Vec::new();
                    for url in &metrics {
                        if let Ok(t) = fetch(url).await {
                            out.push(t);
                        }
                    }
                    out
                });
                let p = progress_of(&texts);
                if p.total > 0 {
                    if !shown {
                        bar.set_style(if p.records {
                            style("{bar:40.cyan/blue} {human_pos}/{human_len} records {per_sec} ETA {eta} {msg}")
                        } else {
                            style("{bar:40.cyan/blue} {bytes}/{total_bytes} {bytes_per_sec} ETA {eta} {msg}")
                        });
                        bar.set_draw_target(indicatif::ProgressDrawTarget::stderr());
                        shown = true;
                    }
                    bar.set_length(p.total);
                    bar.set_position(p.done);
                    bar.set_message(match p.checkpoint {
                        Some(e) => format!("checkpoint {e}"),
                        None => "no checkpoint yet".to_string(),
                    });
                }
                // The scrape interval.
                std::thread::sleep(Duration::from_millis(500));
            }
            bar.finish_and_clear();
        })?;
    Ok(Shown { stop: done, thread })
}
