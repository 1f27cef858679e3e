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
//! - with checkpointing off there is one epoch, which never ends;
//! - while snapshots of `max-concurrent-checkpoints` epochs are still being encoded or
//!   uploaded in the process, the clock holds the next barrier: records keep flowing in
//!   the open epoch, which lasts longer, and a slow store gets no more checkpoints to
//!   upload at once than that. Since every operator's frontier waits for every source, a process
//!   that holds its barrier holds the whole cluster's next checkpoint
//!   ([`held_epoch`] decides).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How many barrier instants the clock remembers, for [`EpochClock::ended_at`].
const REMEMBERED_BARRIERS: usize = 4096;

/// The clock that cuts every source's stream into epochs.
///
/// All sources of a process share it, so that they inject barriers together.
#[derive(Debug, Clone)]
pub struct EpochClock {
    start: Arc<std::sync::OnceLock<Instant>>,
    pub(crate) first: u64,
    epoch_ms: u64,
    /// Epochs whose snapshots may be encoded or uploaded at once before the barrier is
    /// held; 0: no limit.
    max_in_flight: u64,
    state: Arc<Mutex<Held>>,
    /// Counts the seconds the barrier was held.
    held_seconds: Option<crate::metrics::SecondsCounter>,
}

#[derive(Debug, Default)]
struct Held {
    /// The newest epoch handed out.
    newest: u64,
    /// Snapshots being encoded or uploaded, by epoch.
    in_flight: BTreeMap<u64, usize>,
    /// When the clock moved past epochs: at each instant, every epoch up to the key
    /// had ended.
    barriers: BTreeMap<u64, Instant>,
    /// Since when the barrier has been held, as last counted.
    held_since: Option<Instant>,
}

/// The epoch that records read now belong to: `by_time`, the epoch the clock's time
/// has reached, held at `oldest_in_flight + max_in_flight` while a snapshot of epoch
/// `oldest_in_flight` is in flight (`max_in_flight` 0: never held), and never below
/// `newest`, an epoch handed out already.
pub fn held_epoch(
    by_time: u64,
    newest: u64,
    oldest_in_flight: Option<u64>,
    max_in_flight: u64,
) -> u64 {
    let cap = match oldest_in_flight {
        Some(oldest) if max_in_flight > 0 => oldest.saturating_add(max_in_flight),
        _ => u64::MAX,
    };
    by_time.min(cap).max(newest)
}

/// A snapshot of one epoch that is still being encoded or uploaded, counted by the clock
/// until it is dropped.
#[derive(Debug)]
pub struct InFlight {
    state: Arc<Mutex<Held>>,
    epoch: u64,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        // Never panic in a destructor: a poisoned lock's counts are still sound.
        let mut held = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = held.in_flight.get_mut(&self.epoch) {
            *n -= 1;
            if *n == 0 {
                held.in_flight.remove(&self.epoch);
            }
        }
    }
}

impl EpochClock {
    /// A clock whose first epoch is `first` and whose epochs last `epoch_ms` (0: forever),
    /// with no limit on the snapshots in flight.
    ///
    /// The clock starts when it is first read, that is when the first source runs, after
    /// the cluster's processes have connected to each other; processes that started at
    /// different moments thus still number their epochs alike.
    pub fn new(first: u64, epoch_ms: u64) -> Self {
        EpochClock {
            start: Arc::new(std::sync::OnceLock::new()),
            first,
            epoch_ms,
            max_in_flight: 0,
            held_seconds: None,
            state: Arc::new(Mutex::new(Held {
                newest: first,
                ..Default::default()
            })),
        }
    }

    /// The same clock, holding its barrier while snapshots of `epochs` epochs are in
    /// flight (0: no limit).
    pub fn with_max_in_flight(self, epochs: u64) -> Self {
        EpochClock {
            max_in_flight: epochs,
            ..self
        }
    }

    /// The same clock, counting the seconds its barrier is held in `counter` (while
    /// sources read it).
    pub fn with_held_seconds(self, counter: crate::metrics::SecondsCounter) -> Self {
        EpochClock {
            held_seconds: Some(counter),
            ..self
        }
    }

    fn elapsed_ms(&self) -> u64 {
        self.start.get_or_init(Instant::now).elapsed().as_millis() as u64
    }

    fn by_time(&self) -> u64 {
        if self.epoch_ms == 0 {
            return self.first;
        }
        self.first + self.elapsed_ms() / self.epoch_ms
    }

    /// The epoch that records read now belong to.
    pub fn current(&self) -> u64 {
        let by_time = self.by_time();
        let mut held = self.state.lock().expect("poisoned");
        let oldest = held.in_flight.keys().next().copied();
        let now = held_epoch(by_time, held.newest, oldest, self.max_in_flight);
        let instant = Instant::now();
        if let (Some(since), Some(counter)) = (held.held_since, &self.held_seconds) {
            counter.inc_by(instant.saturating_duration_since(since).as_secs_f64());
        }
        held.held_since = (now < by_time).then_some(instant);
        if now > held.newest {
            held.newest = now;
            held.barriers.insert(now - 1, instant);
            if held.barriers.len() > REMEMBERED_BARRIERS {
                held.barriers.pop_first();
            }
        }
        now
    }

    /// Counts a snapshot of `epoch` as in flight (being encoded off the barrier, or
    /// uploaded) until the returned value is dropped: while snapshots of
    /// `max-concurrent-checkpoints` epochs are in flight, the barrier is held.
    pub fn in_flight(&self, epoch: u64) -> InFlight {
        *self
            .state
            .lock()
            .expect("poisoned")
            .in_flight
            .entry(epoch)
            .or_default() += 1;
        InFlight {
            state: Arc::clone(&self.state),
            epoch,
        }
    }

    /// When `epoch` ended (its barrier), if the clock has started and epochs end: when
    /// the clock moved past it. An epoch the clock has not moved past ended otherwise
    /// (the end of the input, a stop): at the latest when its time ran out, not before
    /// the clock last moved, and not after now.
    pub fn ended_at(&self, epoch: u64) -> Option<Instant> {
        let start = *self.start.get()?;
        if self.epoch_ms == 0 || epoch < self.first {
            return None;
        }
        let held = self.state.lock().expect("poisoned");
        if let Some((_, at)) = held.barriers.range(epoch..).next() {
            return Some(*at);
        }
        let by_time = start + Duration::from_millis((epoch - self.first + 1) * self.epoch_ms);
        let moved = held.barriers.last_key_value().map(|(_, at)| *at);
        Some(by_time.max(moved.unwrap_or(start)).min(Instant::now()))
    }

    /// Time until the next epoch may begin (`None` if epochs never end): while the
    /// barrier is held, a short wait, so that a source injects it soon after the
    /// snapshots finish.
    pub fn until_next(&self) -> Option<Duration> {
        if self.epoch_ms == 0 {
            return None;
        }
        let by_time = self.by_time();
        let newest = self.state.lock().expect("poisoned").newest;
        if by_time > newest {
            return Some(Duration::from_millis(self.epoch_ms.min(10)));
        }
        Some(Duration::from_millis(
            self.epoch_ms - self.elapsed_ms() % self.epoch_ms,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_barrier_is_held_while_uploads_of_enough_epochs_run() {
        // No upload: the time's epoch.
        assert_eq!(held_epoch(9, 4, None, 2), 9);
        // An upload of epoch 5 with at most 2 in flight: epoch 6 may close, 7 stays open.
        assert_eq!(held_epoch(9, 6, Some(5), 2), 7);
        assert_eq!(held_epoch(9, 6, Some(5), 1), 6);
        // Never below an epoch handed out already (an older operator's upload started
        // late), and never beyond the time's.
        assert_eq!(held_epoch(9, 8, Some(3), 1), 8);
        assert_eq!(held_epoch(6, 6, Some(5), 4), 6);
        // 0: no limit.
        assert_eq!(held_epoch(9, 6, Some(5), 0), 9);
        assert_eq!(held_epoch(u64::MAX, 6, Some(u64::MAX - 1), 3), u64::MAX);
    }

    #[test]
    fn a_clock_holds_its_barrier_until_the_uploads_end_and_remembers_when_it_moved() {
        // Started 5.5 epochs of 1 s ago: the time's epoch is 15.
        let held = crate::metrics::SecondsCounter::default();
        let clock = EpochClock::new(10, 1000)
            .with_max_in_flight(1)
            .with_held_seconds(held.clone());
        let started = Instant::now() - Duration::from_millis(5500);
        clock.start.set(started).unwrap();
        let upload = clock.in_flight(10);
        let second = clock.in_flight(10);
        // The barrier of 11 is held, and a source is told to look again soon.
        assert_eq!(clock.current(), 11);
        assert_eq!(clock.until_next(), Some(Duration::from_millis(10)));
        drop(upload);
        assert_eq!(clock.current(), 11, "one upload of epoch 10 still runs");
        let holding = Instant::now();
        while holding.elapsed() < Duration::from_millis(20) {
            assert_eq!(clock.current(), 11);
        }
        drop(second);
        let released = Instant::now();
        assert_eq!(clock.current(), 15, "the clock catches up with its time");
        // The held time is counted while sources read the clock, and no more after.
        let counted = held.get();
        assert!((0.02..1.0).contains(&counted), "{counted}");
        assert_eq!(clock.current(), 15);
        assert_eq!(held.get(), counted);
        let wait = clock.until_next().unwrap();
        assert!(wait > Duration::from_millis(400), "{wait:?}");
        // Epochs 11 to 14 ended when the clock moved on, not when their time ran out;
        // epoch 10 when it first moved.
        let ended = clock.ended_at(11).unwrap();
        assert!(ended >= released, "{ended:?} before {released:?}");
        assert_eq!(clock.ended_at(14), Some(ended));
        assert!(clock.ended_at(10).unwrap() < released);
        // The open epoch, ended by the end of the input: not before the clock last
        // moved, and not after now.
        let last = clock.ended_at(15).unwrap();
        assert!(last >= ended && last <= Instant::now());
        // Without a limit, uploads never hold it.
        let free = EpochClock::new(0, 1000);
        free.start.set(started).unwrap();
        let _upload = free.in_flight(0);
        assert_eq!(free.current(), 5);
    }
}
