//! The epoch clock: when sources inject barriers.
//!
//! ## Design
//!
//! Every record's timestamp is its epoch. Sources read the process's one clock and, when
//! it has moved past their current epoch, record their read positions for the closing
//! epoch and downgrade their capabilities: that is the barrier. Invariants:
//! - epochs only grow, and the first is the run's first epoch (after every epoch an
//!   earlier run of the job used);
//! - all sources of a process share the clock, so they cut their streams together;
//! - with checkpointing off there is one epoch, which never ends.

use std::sync::Arc;
use std::time::{Duration, Instant};

/// The clock that cuts every source's stream into epochs.
///
/// All sources of a process share it, so that they inject barriers together.
#[derive(Debug, Clone)]
pub struct EpochClock {
    start: Arc<std::sync::OnceLock<Instant>>,
    pub(crate) first: u64,
    epoch_ms: u64,
}

impl EpochClock {
    /// A clock whose first epoch is `first` and whose epochs last `epoch_ms` (0: forever).
    ///
    /// The clock starts when it is first read, that is when the first source runs, after
    /// the cluster's processes have connected to each other; processes that started at
    /// different moments thus still number their epochs alike.
    pub fn new(first: u64, epoch_ms: u64) -> Self {
        EpochClock {
            start: Arc::new(std::sync::OnceLock::new()),
            first,
            epoch_ms,
        }
    }

    fn elapsed_ms(&self) -> u64 {
        self.start.get_or_init(Instant::now).elapsed().as_millis() as u64
    }

    /// The epoch that records read now belong to.
    pub fn current(&self) -> u64 {
        if self.epoch_ms == 0 {
            return self.first;
        }
        self.first + self.elapsed_ms() / self.epoch_ms
    }

    /// When `epoch` ended (its barrier), if the clock has started and epochs end.
    pub fn ended_at(&self, epoch: u64) -> Option<Instant> {
        let start = *self.start.get()?;
        if self.epoch_ms == 0 || epoch < self.first {
            return None;
        }
        Some(start + Duration::from_millis((epoch - self.first + 1) * self.epoch_ms))
    }

    /// Time until the next epoch begins (`None` if epochs never end).
    pub fn until_next(&self) -> Option<Duration> {
        if self.epoch_ms == 0 {
            return None;
        }
        Some(Duration::from_millis(
            self.epoch_ms - self.elapsed_ms() % self.epoch_ms,
        ))
    }
}
