//! When an operator's snapshot is due: the epochs its input frontier has closed.

/// Tracks which epochs an operator's input frontier has closed, and hands out the
/// report capability for each snapshot.
///
/// ## Design
///
/// The tracker holds a report capability at the oldest open epoch. When the input
/// frontier moves from `f` to `f' > f`, epochs `f..f'` are closed and one snapshot is
/// due, labelled `f' - 1` (the state then covers every record of epochs `<= f' - 1`).
/// When the frontier empties, a final snapshot is due, labelled with the largest epoch
/// the operator has seen, and the capability is released.
pub struct EpochTracker {
    cap: Option<timely::dataflow::operators::Capability<u64>>,
    max_seen: u64,
}

/// A snapshot the tracker says is due.
pub struct Due {
    /// Report capability at the snapshot's epoch.
    pub cap: timely::dataflow::operators::Capability<u64>,
    /// The snapshot's epoch.
    pub epoch: u64,
    /// The input has ended.
    pub is_final: bool,
}

impl EpochTracker {
    /// A tracker starting at the run's first epoch.
    pub fn new(mut cap: timely::dataflow::operators::Capability<u64>, first_epoch: u64) -> Self {
        cap.downgrade(&first_epoch);
        EpochTracker {
            cap: Some(cap),
            max_seen: first_epoch,
        }
    }

    /// Notes an epoch seen in the input.
    pub fn saw(&mut self, epoch: u64) {
        self.max_seen = self.max_seen.max(epoch);
    }

    /// Checks the input frontier; returns the snapshot that is due, if any.
    pub fn advance(
        &mut self,
        frontier: &timely::progress::frontier::MutableAntichain<u64>,
    ) -> Option<Due> {
        self.advance_to(frontier.frontier().iter().min().copied())
    }

    /// Checks the oldest epoch still open in the input (`None`: the input has ended),
    /// for an operator that meets several inputs' frontiers itself; returns the snapshot
    /// that is due, if any.
    pub fn advance_to(&mut self, oldest: Option<u64>) -> Option<Due> {
        let cap = self.cap.as_mut()?;
        match oldest.as_ref() {
            None => {
                let epoch = self.max_seen.max(*cap.time());
                let due = cap.delayed(&epoch);
                self.cap = None;
                Some(Due {
                    cap: due,
                    epoch,
                    is_final: true,
                })
            }
            Some(f) if *f > *cap.time() => {
                let epoch = f - 1;
                let due = cap.delayed(&epoch);
                cap.downgrade(f);
                Some(Due {
                    cap: due,
                    epoch,
                    is_final: false,
                })
            }
            Some(_) => None,
        }
    }

    /// Whether the input has ended and the final snapshot was handed out.
    pub fn is_done(&self) -> bool {
        self.cap.is_none()
    }
}
