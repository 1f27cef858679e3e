//! The store under every event-time operator: records keyed by a key, watermark reports
//! from every sender, and the watermark up to which the operator has fired, which is
//! checkpointed with the state.
//!
//! ## Design
//!
//! The job's watermark is the least watermark over the senders that are not idle; it is
//! recomputed when epochs close, and only then do windows fire and state expire
//! ([`Logic::advance`]), so firing happens at epoch boundaries and its output belongs to
//! the epoch that closed. The logic keeps its state in a [`KeyedState`], checkpointed
//! incrementally. The watermark the operator last advanced to (`fired`) is stored in
//! every object it writes (and an object is written whenever it moved); after a restore
//! it is the largest stored value, so nothing that fired before the checkpoint fires
//! again, whatever the new number of workers.

use std::collections::HashMap;
use std::hash::Hash;
use std::rc::Rc;

use serde::de::DeserializeOwned;
use serde::Serialize;
use weir_runtime::{keygroup, Job, KeyedState, Part, Result, Sealing};

use crate::event_time::Timed;
use crate::keyed::{keyed, Emitted, Mark, Marks, Out, Outputs, Store};

/// What an event-time operator does with its records and the watermark.
pub(crate) trait Logic: 'static {
    type Key: timely::ExchangeData + Hash;
    type Value: timely::ExchangeData;
    type Out: timely::ExchangeData;
    /// What it emits on its side output: late records.
    type Side: timely::ExchangeData;
    /// The key of the checkpointed state.
    type StateKey: Hash + Eq + Clone + Serialize + DeserializeOwned;
    /// The value of the checkpointed state.
    type StateValue: Serialize + DeserializeOwned;

    /// Applies a record with event time `ts`, read when its split was at `split_wm`;
    /// the operator has fired up to `fired`.
    #[allow(clippy::too_many_arguments)]
    fn apply(
        &mut self,
        epoch: u64,
        key: Self::Key,
        ts: u64,
        split_wm: u64,
        fired: u64,
        value: Self::Value,
        out: &mut Emitted<Self::Out, Self::Side>,
    );
    /// Ends `epoch`, which saw records: changes the logic noted while applying them
    /// are reported to its state now, before any snapshot is taken.
    fn end_epoch(&mut self, _epoch: u64) {}
    /// The watermark has reached `wm`: fire and expire.
    fn advance(&mut self, wm: u64, out: &mut Emitted<Self::Out, Self::Side>);
    /// The checkpointed state, which the logic keeps itself and reports changes to.
    fn state(&mut self) -> &mut KeyedState<Self::StateKey, Self::StateValue, crate::FastHash>;
    /// Rebuilds what the logic derives from its state (timers, expiry order) once the
    /// state was restored.
    fn restored(&mut self);
}

/// A [`Store`] around a [`Logic`], whose records are keyed by `key`.
pub(crate) struct TimedStore<L, FK> {
    logic: L,
    key: Rc<FK>,
    senders: usize,
    marks: HashMap<usize, Mark>,
    fired: u64,
    processing_time: bool,
}

impl<L: Logic, FK: Fn(&L::Value) -> L::Key + 'static> TimedStore<L, FK> {
    /// A store with `senders` watermark senders around `logic`, whose state was restored
    /// (with [`KeyedState::restore`]) from the checkpoint this run started from, for
    /// records keyed by `key`.
    pub(crate) fn restore(senders: usize, mut logic: L, key: FK) -> Result<Self> {
        // Every object records `fired`; the newest (largest) one is where firing stopped.
        let fired = logic
            .state()
            .restored_meta::<u64>()?
            .into_iter()
            .max()
            .unwrap_or(0);
        logic.restored();
        Ok(TimedStore {
            logic,
            key: Rc::new(key),
            senders,
            marks: HashMap::new(),
            fired,
            processing_time: false,
        })
    }

    /// Advances on the wall clock (milliseconds since the Unix epoch) instead of
    /// watermark reports.
    pub(crate) fn on_processing_time(self) -> Self {
        TimedStore {
            processing_time: true,
            ..self
        }
    }

    /// Builds the operator `name` around the store: `records` go to the owner of their
    /// key, `marks` (the watermark reports, if the store follows them) to every worker.
    pub(crate) fn build<'s>(
        self,
        records: crate::Records<'s, Timed<L::Value>>,
        marks: Option<Marks<'s>>,
        job: &Job<'s>,
        name: &str,
    ) -> Result<Outputs<'s, L::Out, L::Side>> {
        let key = Rc::clone(&self.key);
        let group = move |t: &Timed<L::Value>, n| keygroup::key_group(&key(&t.data), n);
        keyed(records, marks, group, job, name, self)
    }
}

impl<L: Logic, FK: Fn(&L::Value) -> L::Key + 'static> Store for TimedStore<L, FK> {
    type Record = Timed<L::Value>;
    type Out = L::Out;
    type Side = L::Side;

    fn apply(&mut self, epoch: u64, t: Timed<L::Value>, out: &mut Out<Self>) {
        let k = (self.key)(&t.data);
        self.logic
            .apply(epoch, k, t.ts, t.split_wm, self.fired, t.data, out)
    }

    fn mark(&mut self, _epoch: u64, m: Mark) {
        let e = self.marks.entry(m.from).or_insert(m);
        // A sender's watermark never goes back (reports may cross on the way).
        e.wm = e.wm.max(m.wm);
        e.idle = m.idle;
    }

    fn end_epoch(&mut self, epoch: u64, _out: &mut Out<Self>) -> bool {
        self.logic.end_epoch(epoch);
        false
    }

    fn close(&mut self, _epoch: u64, _is_final: bool, out: &mut Out<Self>) -> bool {
        // At the end of the input the senders' final reports carry the largest
        // watermark; a job that stops for a savepoint sends none, and nothing fires.
        let wm = if self.processing_time {
            crate::keyed::now_ms()
        } else if self.marks.len() < self.senders {
            0
        } else {
            self.marks
                .values()
                .filter(|m| !m.idle)
                .map(|m| m.wm)
                .min()
                .unwrap_or(0)
        };
        if wm <= self.fired {
            return false;
        }
        self.fired = wm;
        self.logic.advance(wm, out);
        true
    }

    fn encode(&mut self, _name: &str, _key_groups: u32, full: bool) -> Result<Sealing> {
        let fired = self.fired;
        self.logic.state().seal_with_meta(full, &fired)
    }

    fn take_sealed(&mut self) -> Option<Result<Part>> {
        self.logic.state().take_sealed()
    }

    fn finish_sealed(&mut self) {
        self.logic.state().finish_sealed()
    }

    fn restored_parts_dropped(&mut self) {
        self.logic.state().restored_chain_dropped();
    }

    fn background(&mut self) -> bool {
        self.logic.state().background()
    }

    fn held_for(&mut self) -> Option<std::time::Duration> {
        self.logic.state().held_for()
    }
}
