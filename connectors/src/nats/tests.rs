//! The NATS connectors against a real JetStream server (`scripts/services.sh up`).

use std::time::{Duration, Instant};

use async_nats::jetstream::stream::{Config, RetentionPolicy};
use timely::dataflow::operators::capture::Extract;
use timely::dataflow::operators::{Capture, ToStream};
use weir_runtime::{Delivery, JobConfig};

use super::sink::write_nats;
use super::source::read_nats;
use super::testing::{unique, url};
use super::*;

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Runtime::new().unwrap()
}

async fn js() -> async_nats::jetstream::Context {
    let client = async_nats::connect(url()).await.unwrap_or_else(|e| {
        panic!(
            "cannot connect to the test NATS server at {}: {e}; start it with `scripts/services.sh up`",
            url()
        )
    });
    async_nats::jetstream::new(client)
}

/// A fresh stream capturing `<name>.>`.
async fn create(js: &async_nats::jetstream::Context, name: &str, retention: RetentionPolicy) {
    js.create_stream(Config {
        name: name.to_string(),
        subjects: vec![format!("{name}.>")],
        retention,
        ..Default::default()
    })
    .await
    .unwrap();
}

/// Every message of a stream: (sequence, subject, payload, Nats-Msg-Id).
async fn dump(
    js: &async_nats::jetstream::Context,
    name: &str,
) -> Vec<(u64, String, String, String)> {
    let stream = js.get_stream(name).await.unwrap();
    let last = stream.get_info().await.unwrap().state.last_sequence;
    let mut out = Vec::new();
    for seq in 1..=last {
        let m = stream.get_raw_message(seq).await.unwrap();
        let id = m
            .headers
            .get("Nats-Msg-Id")
            .map(|v| v.as_str().to_string())
            .unwrap_or_default();
        out.push((
            m.sequence,
            m.subject.to_string(),
            String::from_utf8(m.payload.to_vec()).unwrap(),
            id,
        ));
    }
    out
}

fn read_all(config: JobConfig, opts: NatsSourceOptions) -> Vec<NatsMessage> {
    let (send, recv) = std::sync::mpsc::channel();
    let send = std::sync::Mutex::new(send);
    weir_runtime::run(config, move |job| {
        read_nats(job, "in", opts.clone())?.capture_into(send.lock().unwrap().clone());
        Ok(())
    })
    .unwrap();
    recv.extract().into_iter().flat_map(|(_, v)| v).collect()
}

#[test]
fn exactly_once_sink_publishes_each_record_once_under_its_message_id_and_repeats_are_dropped() {
    let rt = rt();
    let js = rt.block_on(js());
    let name = unique("SINK_EO");
    rt.block_on(create(&js, &name, RetentionPolicy::Limits));
    let subject = format!("{name}.out");
    let opts = NatsSinkOptions {
        url: url(),
        subject: subject.clone(),
        stream: Some(name.clone()),
    };
    let config = JobConfig::thread(&name.to_lowercase());
    weir_runtime::run(config, move |job| {
        let records = (0..100)
            .map(|i| NatsRecord::new(format!("r{i}")).header("n", i.to_string()))
            .to_stream(job.scope());
        write_nats(job, records, "out", opts.clone())
    })
    .unwrap();
    let got = rt.block_on(dump(&js, &name));
    let mut payloads: Vec<String> = got.iter().map(|m| m.2.clone()).collect();
    payloads.sort();
    let mut expected: Vec<String> = (0..100).map(|i| format!("r{i}")).collect();
    expected.sort();
    assert_eq!(payloads, expected);
    let job = name.to_lowercase();
    for (_, subj, _, id) in &got {
        assert_eq!(subj, &subject);
        assert!(id.starts_with(&format!("{job}:out:g0:w0:e")), "{id}");
    }
    // The same output published again (a commit repeated after a crash) is dropped.
    let epoch: u64 = got[0]
        .3
        .split(":e")
        .nth(1)
        .unwrap()
        .split(':')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let server = Server::new("out", &url());
    let target = sink::Target {
        server,
        js: js.clone(),
        subject: subject.clone(),
        stream: name.clone(),
        job: job.clone(),
        sink: "out".into(),
        rt: rt.handle().clone(),
    };
    let epoch_records: Vec<NatsRecord> = got
        .iter()
        .filter(|m| m.3.contains(&format!(":e{epoch}:")))
        .map(|m| NatsRecord::new(m.2.clone()))
        .collect();
    let n = epoch_records.len();
    let duplicates = rt
        .block_on(target.send(0, 0, epoch, epoch_records, true))
        .unwrap();
    assert_eq!(duplicates, n);
    assert_eq!(rt.block_on(dump(&js, &name)).len(), 100);
}

#[test]
fn at_least_once_sink_publishes_at_the_end_of_each_epoch() {
    let rt = rt();
    let js = rt.block_on(js());
    let name = unique("SINK_ALO");
    rt.block_on(create(&js, &name, RetentionPolicy::Limits));
    let opts = NatsSinkOptions {
        url: url(),
        subject: format!("{name}.out"),
        stream: None,
    };
    let config = JobConfig {
        delivery: Delivery::AtLeastOnce,
        ..JobConfig::thread(&name.to_lowercase())
    };
    weir_runtime::run(config, move |job| {
        let records = (0..10).map(|i| NatsRecord::json(&i)).to_stream(job.scope());
        write_nats(job, records, "out", opts.clone())
    })
    .unwrap();
    let mut got: Vec<u32> = rt
        .block_on(dump(&js, &name))
        .iter()
        .map(|m| m.2.parse().unwrap())
        .collect();
    got.sort_unstable();
    assert_eq!(got, (0..10).collect::<Vec<u32>>());
}

#[test]
fn a_subject_no_stream_captures_is_a_permanent_error_that_says_how_to_create_one() {
    let rt = rt();
    let js = rt.block_on(js());
    let subject = format!("{}.nowhere", unique("NO_STREAM"));
    let opts = NatsSinkOptions {
        url: url(),
        subject: subject.clone(),
        stream: None,
    };
    let server = Server::new("out", &url());
    let err = weir_runtime::RuntimeError::from(
        rt.block_on(sink::check_stream(&server, &js, &opts))
            .unwrap_err(),
    );
    let text = err.to_string();
    assert!(err.is_permanent(), "{text}");
    for needle in [
        subject.as_str(),
        "127.0.0.1:14222",
        "nats stream add",
        "no stream captures",
    ] {
        assert!(text.contains(needle), "`{needle}` missing from: {text}");
    }
}

#[test]
fn an_unreachable_server_is_transient_and_its_password_is_never_shown() {
    let rt = rt();
    let server = Server::new("out", "nats://bob:hunter2@127.0.0.1:1");
    let err = weir_runtime::RuntimeError::from(server.connect(rt.handle()).unwrap_err());
    let text = err.to_string();
    assert!(!err.is_permanent(), "{text}");
    assert!(
        text.contains("nats://127.0.0.1:1") && text.contains("connect"),
        "{text}"
    );
    assert!(!text.contains("hunter2"), "{text}");
}

#[test]
fn bounded_source_reads_every_message_once_per_split_and_ends() {
    let rt = rt();
    let js = rt.block_on(js());
    let name = unique("SRC");
    rt.block_on(async {
        create(&js, &name, RetentionPolicy::Limits).await;
        for i in 0..60 {
            let subject = format!("{name}.{}", if i % 3 == 0 { "a" } else { "b" });
            js.publish(subject, format!("{i}").into())
                .await
                .unwrap()
                .await
                .unwrap();
        }
    });
    // Two splits, over two workers.
    let opts = NatsSourceOptions {
        url: url(),
        stream: name.clone(),
        subjects: vec![format!("{name}.a"), format!("{name}.b")],
        bounded: true,
        rate_limit: None,
    };
    let config = JobConfig {
        workers: 2,
        ..JobConfig::thread(&name.to_lowercase())
    };
    let mut got: Vec<(u64, String)> = read_all(config, opts)
        .into_iter()
        .map(|m| (m.stream_sequence, String::from_utf8(m.payload).unwrap()))
        .collect();
    got.sort();
    let expected: Vec<(u64, String)> = (0..60).map(|i| (i as u64 + 1, i.to_string())).collect();
    assert_eq!(got, expected);
    // The whole stream as one split, from a job that has nothing to restore.
    let whole = NatsSourceOptions {
        url: url(),
        stream: name.clone(),
        bounded: true,
        ..Default::default()
    };
    let got = read_all(
        JobConfig::thread(&format!("{}-whole", name.to_lowercase())),
        whole,
    );
    let sequences: Vec<u64> = got.iter().map(|m| m.stream_sequence).collect();
    assert_eq!(sequences, (1..=60).collect::<Vec<u64>>());
}

#[test]
fn at_most_once_source_acknowledges_at_once_so_a_work_queue_empties() {
    let rt = rt();
    let js = rt.block_on(js());
    let name = unique("WQ");
    rt.block_on(async {
        create(&js, &name, RetentionPolicy::WorkQueue).await;
        for i in 0..20 {
            js.publish(format!("{name}.x"), format!("{i}").into())
                .await
                .unwrap()
                .await
                .unwrap();
        }
    });
    let opts = NatsSourceOptions {
        url: url(),
        stream: name.clone(),
        bounded: true,
        ..Default::default()
    };
    let config = JobConfig {
        delivery: Delivery::AtMostOnce,
        ..JobConfig::thread(&name.to_lowercase())
    };
    assert_eq!(read_all(config, opts).len(), 20);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let left = rt.block_on(async {
            js.get_stream(&name)
                .await
                .unwrap()
                .get_info()
                .await
                .unwrap()
                .state
                .messages
        });
        if left == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{left} messages still in the work queue"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn interest_retention_is_refused_with_the_reason() {
    let rt = rt();
    let js = rt.block_on(js());
    let name = unique("INTEREST");
    rt.block_on(create(&js, &name, RetentionPolicy::Interest));
    let server = Server::new("in", &url());
    let err = weir_runtime::RuntimeError::from(
        rt.block_on(source::open_stream(&server, &js, &name))
            .unwrap_err(),
    );
    let text = err.to_string();
    assert!(err.is_permanent(), "{text}");
    assert!(
        text.contains(&name) && text.contains("interest retention"),
        "{text}"
    );
}

#[test]
fn a_missing_stream_is_a_permanent_error_naming_it() {
    let rt = rt();
    let js = rt.block_on(js());
    let name = unique("ABSENT");
    let server = Server::new("in", &url());
    let err = weir_runtime::RuntimeError::from(
        rt.block_on(source::open_stream(&server, &js, &name))
            .unwrap_err(),
    );
    let text = err.to_string();
    assert!(err.is_permanent(), "{text}");
    assert!(
        text.contains(&name) && text.contains("nats stream add"),
        "{text}"
    );
}

#[test]
fn credentials_never_appear_in_the_shown_url() {
    assert_eq!(shown("nats://alice:secret@host:4222"), "nats://host:4222");
    assert_eq!(
        shown("nats://tok@h1:1, nats://h2:2"),
        "nats://h1:1,nats://h2:2"
    );
    assert_eq!(shown("127.0.0.1:4222"), "127.0.0.1:4222");
}
