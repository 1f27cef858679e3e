//! What every operator of a worker does, read from timely's event log: the operator
//! graph, the records on each channel, and each operator's busy time.
//!
//! Registered only when the process serves metrics (`--metrics-addr`): timely then logs
//! one event per batch sent or received and two per operator run, and [`Observer`] turns
//! them into the `weir_dataflow_*` series (see [`crate::metrics`]). Every operator is
//! covered, timely's own (`Map`, `Filter`, `Exchange`, ...) as well as weir's, with no
//! code in the operators.
//!
//! ## Design
//!
//! Timely names an operator by its address (the path of scope indices from the root)
//! and a channel by its scope's address and the operator indices at its two ends; index
//! 0 inside a scope is the scope itself. [`endpoint`] resolves such an end to an address,
//! a pure function with its own test. Channels are announced before the operator they
//! feed (an input is connected before its operator is built), so a channel's ends are
//! resolved at its first batch, when the whole graph exists.
//!
//! - Records in: the records received on every input of the operator on this worker.
//! - Records out: the records sent on each of the operator's output ports; a port that
//!   feeds several channels is counted on the first one only.
//! - Busy: the time between an operator's start and stop events. A scope's time includes
//!   that of the operators inside it.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use timely::logging::{StartStop, TimelyEvent};

use crate::metrics::{ChannelLabels, DataflowLabels, Metrics, OutputLabels, SecondsCounter};

/// The address of the operator at the end of a channel: `index` in the scope at
/// `scope`, where index 0 is the scope itself (its inputs and outputs).
///
/// ```
/// use weir_runtime::observe::endpoint;
/// assert_eq!(endpoint(&[0], 3), vec![0, 3]);
/// assert_eq!(endpoint(&[0, 4], 0), vec![0, 4]);
/// ```
pub fn endpoint(scope: &[usize], index: usize) -> Vec<usize> {
    let mut addr = scope.to_vec();
    if index != 0 {
        addr.push(index);
    }
    addr
}

struct Operator {
    labels: DataflowLabels,
    records_in: Counter,
    busy: SecondsCounter,
    started: Option<Duration>,
}

struct Channel {
    source: Vec<usize>,
    source_port: usize,
    target: Vec<usize>,
    resolved: Option<Resolved>,
}

struct Resolved {
    records: Counter,
    /// The source operator's output port's counter, when this channel is the first of
    /// that port.
    out_of: Option<Counter>,
    into: Option<usize>,
}

/// Turns one worker's timely events into its `weir_dataflow_*` metrics.
pub struct Observer {
    worker: usize,
    metrics: Arc<Metrics>,
    ids: HashMap<Vec<usize>, usize>,
    names: HashMap<usize, String>,
    operators: HashMap<usize, Operator>,
    channels: HashMap<usize, Channel>,
    /// The first channel of each output port, by (source address, port).
    first_of_port: HashMap<(Vec<usize>, usize), usize>,
    parked: SecondsCounter,
    parked_at: Option<Duration>,
}

impl Observer {
    /// The observer of global worker `worker`, counting into `metrics`.
    pub fn new(worker: usize, metrics: Arc<Metrics>) -> Self {
        let parked = metrics.worker_parked(worker);
        Observer {
            worker,
            metrics,
            ids: HashMap::new(),
            names: HashMap::new(),
            operators: HashMap::new(),
            channels: HashMap::new(),
            first_of_port: HashMap::new(),
            parked,
            parked_at: None,
        }
    }

    /// Accounts for one event logged at `time` (since the worker's log started).
    pub fn observe(&mut self, time: Duration, event: &TimelyEvent) {
        match event {
            TimelyEvent::Operates(op) => {
                let labels = DataflowLabels {
                    worker: self.worker as u64,
                    id: op.id as u64,
                    operator: op.name.clone(),
                    address: address_label(&op.addr),
                };
                let m = &self.metrics;
                self.operators.insert(
                    op.id,
                    Operator {
                        records_in: m.dataflow_records_in.get_or_create(&labels).clone(),
                        busy: m.dataflow_busy.get_or_create(&labels).clone(),
                        labels,
                        started: None,
                    },
                );
                self.ids.insert(op.addr.clone(), op.id);
                self.names.insert(op.id, op.name.clone());
            }
            TimelyEvent::Channels(ch) => {
                let source = endpoint(&ch.scope_addr, ch.source.0);
                self.first_of_port
                    .entry((source.clone(), ch.source.1))
                    .or_insert(ch.id);
                self.channels.insert(
                    ch.id,
                    Channel {
                        source,
                        source_port: ch.source.1,
                        target: endpoint(&ch.scope_addr, ch.target.0),
                        resolved: None,
                    },
                );
            }
            TimelyEvent::Messages(m) => {
                let n = m.record_count.max(0) as u64;
                let Some(channel) = self.resolve(m.channel) else {
                    return;
                };
                if m.is_send {
                    channel.records.inc_by(n);
                    if let Some(out) = &channel.out_of {
                        out.inc_by(n);
                    }
                } else if let Some(op) = channel.into.and_then(|id| self.operators.get(&id)) {
                    op.records_in.inc_by(n);
                }
            }
            TimelyEvent::Schedule(s) => {
                if let Some(op) = self.operators.get_mut(&s.id) {
                    match s.start_stop {
                        StartStop::Start => op.started = Some(time),
                        StartStop::Stop => {
                            if let Some(start) = op.started.take() {
                                op.busy.inc_by(time.saturating_sub(start).as_secs_f64());
                            }
                        }
                    }
                }
            }
            TimelyEvent::Park(timely::logging::ParkEvent::Park(_)) => {
                self.parked_at = Some(time);
            }
            TimelyEvent::Park(timely::logging::ParkEvent::Unpark) => {
                if let Some(at) = self.parked_at.take() {
                    self.parked.inc_by(time.saturating_sub(at).as_secs_f64());
                }
            }
            _ => {}
        }
    }

    /// The counters of channel `id`, its ends resolved at its first batch.
    fn resolve(&mut self, id: usize) -> Option<&Resolved> {
        let channel = self.channels.get_mut(&id)?;
        if channel.resolved.is_none() {
            let source = self.ids.get(&channel.source).copied();
            let target = self.ids.get(&channel.target).copied();
            let first = self
                .first_of_port
                .get(&(channel.source.clone(), channel.source_port))
                == Some(&id);
            let id_label = |o: Option<usize>| o.map_or_else(|| "?".to_string(), |i| i.to_string());
            let labels = ChannelLabels {
                worker: self.worker as u64,
                channel: id as u64,
                source: id_label(source),
                target: id_label(target),
            };
            let out_of = source
                .filter(|_| first)
                .and_then(|id| self.operators.get(&id))
                .map(|op| {
                    let l = &op.labels;
                    self.metrics
                        .dataflow_records_out
                        .get_or_create(&OutputLabels {
                            worker: l.worker,
                            id: l.id,
                            operator: l.operator.clone(),
                            address: l.address.clone(),
                            port: channel.source_port as u64,
                        })
                        .clone()
                });
            channel.resolved = Some(Resolved {
                records: self
                    .metrics
                    .dataflow_channel_records
                    .get_or_create(&labels)
                    .clone(),
                out_of,
                into: target,
            });
        }
        channel.resolved.as_ref()
    }

    /// Registers an observer of `worker`'s events in its timely log.
    pub fn register(worker: &mut timely::worker::Worker, metrics: Arc<Metrics>) {
        let index = worker.index();
        let Some(mut registry) = worker.log_register() else {
            return;
        };
        let mut observer = Observer::new(index, metrics);
        registry.insert::<timely::logging::TimelyEventBuilder, _>(
            "timely",
            move |_time, events: &mut Option<Vec<(Duration, TimelyEvent)>>| {
                if let Some(events) = events {
                    for (time, event) in events.iter() {
                        observer.observe(*time, event);
                    }
                }
            },
        );
    }
}

fn address_label(addr: &[usize]) -> String {
    addr.iter()
        .map(usize::to_string)
        .collect::<Vec<_>>()
        .join(".")
}

#[cfg(test)]
mod tests {
    use super::*;
    use timely::logging::{ChannelsEvent, MessagesEvent, OperatesEvent, ScheduleEvent};

    fn operates(id: usize, addr: &[usize], name: &str) -> TimelyEvent {
        TimelyEvent::Operates(OperatesEvent {
            id,
            addr: addr.to_vec(),
            name: name.into(),
        })
    }

    fn channel(id: usize, source: (usize, usize), target: (usize, usize)) -> TimelyEvent {
        TimelyEvent::Channels(ChannelsEvent {
            id,
            scope_addr: vec![0],
            source,
            target,
            typ: String::new(),
        })
    }

    fn message(channel: usize, is_send: bool, n: i64) -> TimelyEvent {
        TimelyEvent::Messages(MessagesEvent {
            is_send,
            channel,
            source: 0,
            target: 0,
            seq_no: 0,
            record_count: n,
        })
    }

    fn sample(text: &str, series: &str) -> f64 {
        let line = text
            .lines()
            .find(|l| l.starts_with(series))
            .unwrap_or_else(|| panic!("no {series} in\n{text}"));
        line.rsplit_once(' ').unwrap().1.parse().unwrap()
    }

    #[test]
    fn records_busy_time_and_edges_follow_the_events() {
        let metrics = Arc::new(Metrics::new("wc", 0));
        let mut o = Observer::new(1, Arc::clone(&metrics));
        let t = Duration::from_millis;
        // The input is connected before the operator it feeds exists.
        o.observe(t(0), &operates(1, &[0], "Dataflow"));
        o.observe(t(0), &operates(2, &[0, 1], "source:lines"));
        o.observe(t(0), &channel(3, (1, 0), (2, 0)));
        o.observe(t(0), &channel(4, (1, 0), (3, 0)));
        o.observe(t(0), &operates(5, &[0, 2], "Map"));
        o.observe(t(0), &operates(6, &[0, 3], "Filter"));
        for _ in 0..2 {
            o.observe(t(0), &message(3, true, 100));
            o.observe(t(0), &message(4, true, 100));
            o.observe(t(0), &message(3, false, 100));
        }
        o.observe(t(10), &TimelyEvent::Schedule(ScheduleEvent::start(5)));
        o.observe(t(260), &TimelyEvent::Schedule(ScheduleEvent::stop(5)));
        let text = metrics.encode();
        let series = |name: &str, id: usize, op: &str, addr: &str| {
            format!(
                r#"{name}{{job="wc",process="0",worker="1",id="{id}",operator="{op}",address="{addr}""#
            )
        };
        // One output feeding two channels counts once.
        assert_eq!(
            sample(
                &text,
                &(series("weir_dataflow_records_out_total", 2, "source:lines", "0.1")
                    + r#",port="0"}"#)
            ),
            200.0
        );
        assert_eq!(
            sample(
                &text,
                &series("weir_dataflow_records_in_total", 5, "Map", "0.2")
            ),
            200.0
        );
        assert_eq!(
            sample(
                &text,
                &series("weir_dataflow_records_in_total", 6, "Filter", "0.3")
            ),
            0.0
        );
        assert_eq!(
            sample(
                &text,
                &series("weir_dataflow_busy_seconds_total", 5, "Map", "0.2")
            ),
            0.25
        );
        assert_eq!(
            sample(
                &text,
                r#"weir_dataflow_channel_records_total{job="wc",process="0",worker="1",channel="4",source="2",target="6"}"#
            ),
            200.0
        );
    }
}
