//! `weir dashboard`: its JSON API against the checkpoint store and the processes'
//! metrics, and its page in a real headless browser (Debian's chromium, driven through
//! chromedriver's WebDriver protocol), across a SIGKILL of a process.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;
use serde_json::{json, Value};

use crate::harness::bins;
use crate::harness::checkpoints::complete_checkpoints;
use crate::harness::input::{self, InputSpec};
use crate::harness::job::JobArgs;
use crate::harness::launch::{parse_generations, spawn_launch};
use crate::harness::process::{
    await_value, free_port, free_ports, read_lossy, sigkill, spawn_logged, tail,
};
use crate::harness::scenario;
use crate::harness::workspace::Workspace;

/// One HTTP/1.1 exchange (`Connection: close`): status and body.
fn http(addr: &str, method: &str, path: &str, body: Option<&Value>) -> Option<(u16, String)> {
    let mut stream = TcpStream::connect(addr).ok()?;
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .ok()?;
    let payload = body.map(|b| b.to_string()).unwrap_or_default();
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{payload}",
        payload.len()
    )
    .ok()?;
    // Read the head, then exactly Content-Length bytes: some servers keep the
    // connection open despite `Connection: close`.
    let mut raw = Vec::new();
    let mut buf = [0u8; 8192];
    let head_end = loop {
        if let Some(i) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
            break i;
        }
        let n = stream.read(&mut buf).ok()?;
        if n == 0 {
            return None;
        }
        raw.extend_from_slice(&buf[..n]);
    };
    let head = String::from_utf8_lossy(&raw[..head_end]).into_owned();
    let status = head.split_whitespace().nth(1)?.parse().ok()?;
    let length = head.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim()
            .eq_ignore_ascii_case("content-length")
            .then(|| v.trim().parse::<usize>().ok())?
    });
    let mut body = raw[head_end + 4..].to_vec();
    match length {
        Some(n) => {
            while body.len() < n {
                let read = stream.read(&mut buf).ok()?;
                if read == 0 {
                    break;
                }
                body.extend_from_slice(&buf[..read]);
            }
        }
        None => {
            stream.read_to_end(&mut body).ok()?;
        }
    }
    let body = String::from_utf8_lossy(&body).into_owned();
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        unchunk(&body)
    } else {
        body
    };
    Some((status, body))
}

fn unchunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        body = rest[n..].trim_start_matches("\r\n");
    }
    out
}

fn get_json(addr: &str, path: &str) -> (u16, Value) {
    let (status, body) =
        http(addr, "GET", path, None).unwrap_or_else(|| panic!("GET {path} from {addr}"));
    let value = serde_json::from_str(&body).unwrap_or_else(|e| panic!("{path}: {e}: {body}"));
    (status, value)
}

/// A process that is killed when the test ends.
struct Owned(Child);

impl Drop for Owned {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_dashboard(
    ws: &Workspace,
    url: &str,
    metrics: &[String],
) -> (Owned, String, std::path::PathBuf) {
    let addr = format!("127.0.0.1:{}", free_port());
    let mut cmd = Command::new(bins::weir());
    cmd.args([
        "dashboard",
        "--checkpoint-dir",
        url,
        "--job",
        "wordcount",
        "--addr",
        &addr,
    ]);
    if !metrics.is_empty() {
        cmd.arg("--metrics").arg(metrics.join(","));
    }
    let (out, err) = ws.log_paths("dashboard");
    let child = Owned(spawn_logged(&mut cmd, &out, &err));
    await_value(
        Instant::now() + Duration::from_secs(30),
        "the dashboard to answer",
        || read_lossy(&err),
        || http(&addr, "GET", "/", None),
    );
    (child, addr, err)
}

/// A WebDriver session of headless chromium.
struct Browser {
    driver: Owned,
    addr: String,
    session: String,
}

impl Browser {
    fn start() -> Browser {
        let port = free_port();
        let driver = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver (Debian's chromium-driver) is installed by scripts/test.sh");
        let driver = Owned(driver);
        let addr = format!("127.0.0.1:{port}");
        await_value(
            Instant::now() + Duration::from_secs(30),
            "chromedriver to get ready",
            String::new,
            || {
                http(&addr, "GET", "/status", None)
                    .filter(|(status, body)| *status == 200 && body.contains("\"ready\":true"))
            },
        );
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": "/usr/bin/chromium",
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                         "--disable-dev-shm-usage", "--window-size=1280,1500"]
            }
        }}});
        let (status, body) = http(&addr, "POST", "/session", Some(&caps)).expect("new session");
        assert_eq!(status, 200, "{body}");
        let v: Value = serde_json::from_str(&body).unwrap();
        let session = v["value"]["sessionId"]
            .as_str()
            .expect("a session id")
            .to_string();
        Browser {
            driver,
            addr,
            session,
        }
    }

    fn command(&self, method: &str, what: &str, body: Option<Value>) -> Value {
        let path = format!("/session/{}/{what}", self.session);
        let (status, text) = http(&self.addr, method, &path, body.as_ref()).expect("webdriver");
        assert_eq!(status, 200, "{what}: {text}");
        serde_json::from_str::<Value>(&text).unwrap()["value"].clone()
    }

    fn open(&self, url: &str) {
        self.command("POST", "url", Some(json!({"url": url})));
    }

    fn eval(&self, script: &str) -> Value {
        self.command(
            "POST",
            "execute/sync",
            Some(json!({"script": script, "args": []})),
        )
    }

    /// Evaluates `script` until `done` holds for its value, or fails at `deadline`.
    fn await_value(
        &self,
        script: &str,
        deadline: Instant,
        what: &str,
        done: impl Fn(&Value) -> bool,
    ) -> Value {
        let last = std::cell::RefCell::new(Value::Null);
        await_value(
            deadline,
            &format!("the page to show {what}"),
            || format!("last: {}", last.borrow()),
            || {
                let v = self.eval(script);
                let shown = done(&v).then(|| v.clone());
                *last.borrow_mut() = v;
                shown
            },
        )
    }

    fn screenshot(&self, path: &std::path::Path) {
        let data = self.command("GET", "screenshot", None);
        let png = base64::engine::general_purpose::STANDARD
            .decode(data.as_str().expect("base64"))
            .expect("a PNG");
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, png).unwrap();
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = http(
            &self.addr,
            "DELETE",
            &format!("/session/{}", self.session),
            None,
        );
        let _ = &self.driver;
    }
}

fn complete_epochs(ws: &Workspace) -> Vec<u64> {
    complete_checkpoints(&ws.checkpoints, "wordcount")
        .iter()
        .map(|c| c.epoch)
        .collect()
}

#[test]
fn the_dashboard_shows_the_stores_checkpoints_live_throughput_and_a_restart() {
    let ws = Workspace::new("dashboard");
    let corpus = input::generate(&ws.input, scenario::seed(0xD_0101), &InputSpec::small());
    let metrics_port = free_ports(2);
    let metrics = vec![
        format!("http://127.0.0.1:{metrics_port}/metrics"),
        format!("http://127.0.0.1:{}/metrics", metrics_port + 1),
    ];
    let args = JobArgs::new(&ws)
        .interval_ms(300)
        .retain(10_000)
        .rate_limit(corpus.rate_limit_for(2, 14.0));
    // The browser looks at the dashboard `weir launch` serves; the API is checked on a
    // `weir dashboard` started after the job.
    let launch_dashboard = format!("127.0.0.1:{}", free_port());
    let (launch, launch_err) = spawn_launch(
        &ws,
        &args,
        &[
            "--metrics-addr".into(),
            format!("127.0.0.1:{metrics_port}"),
            "--dashboard".into(),
            launch_dashboard.clone(),
        ],
    );
    let mut launch = Owned(launch);
    let (_dashboard, addr, _) = start_dashboard(&ws, &ws.checkpoint_url(), &metrics);
    let deadline = Instant::now() + Duration::from_secs(120);

    // The JSON API: every complete checkpoint of the store is listed, with its fields.
    await_value(
        deadline,
        "a complete checkpoint in the API",
        || tail(&read_lossy(&launch_err), 20),
        || {
            let stored = complete_epochs(&ws);
            let (status, api) = get_json(&addr, "/api/checkpoints");
            assert_eq!(status, 200, "{api}");
            let listed: Vec<u64> = api
                .as_array()
                .expect("a list")
                .iter()
                .filter(|c| c["status"] == "complete")
                .map(|c| c["epoch"].as_u64().unwrap())
                .collect();
            for c in api.as_array().unwrap() {
                for field in ["epoch", "status", "generation", "bytes"] {
                    assert!(c.get(field).is_some(), "{field} missing from {c}");
                }
                if c["status"] == "complete" {
                    // Barrier to manifest: a checkpoint takes no longer than the test.
                    assert!(
                        c["duration_ms"].as_u64().is_some_and(|d| d < 120_000),
                        "a complete checkpoint without its duration: {c}"
                    );
                }
            }
            assert!(
                stored.iter().all(|e| listed.contains(e)),
                "store {stored:?}, API {listed:?}"
            );
            (!listed.is_empty()).then_some(())
        },
    );
    let (status, job) = get_json(&addr, "/api/job");
    assert_eq!(status, 200, "{job}");
    assert_eq!(job["job"], "wordcount");
    assert_eq!(job["generations"], json!([0]));
    assert_eq!(job["restarts"], 0);
    let (_, scraped) = get_json(&addr, "/api/metrics");
    let endpoints = scraped["endpoints"].as_array().unwrap();
    assert_eq!(endpoints.len(), 2, "{scraped}");
    assert!(endpoints.iter().all(|e| e["ok"] == true), "{scraped}");

    // The page, in a browser.
    assert!(
        read_lossy(&launch_err).contains(&format!(
            "dashboard of job `wordcount` at http://{launch_dashboard}/"
        )),
        "{}",
        read_lossy(&launch_err)
    );
    let browser = Browser::start();
    browser.open(&format!("http://{launch_dashboard}/"));
    let stored = complete_epochs(&ws);
    browser.await_value(
        "return Array.from(document.querySelectorAll('#checkpoints tbody tr[data-status=complete]')).map(r => Number(r.dataset.epoch))",
        deadline,
        &format!("the complete checkpoints {stored:?}"),
        |v| {
            let shown: Vec<u64> = v.as_array().unwrap().iter().filter_map(Value::as_u64).collect();
            stored.iter().all(|e| shown.contains(e))
        },
    );
    browser.await_value(
        "return Number(document.getElementById('throughput').getAttribute('data-points'))",
        deadline,
        "three points of the throughput chart",
        |v| v.as_u64().is_some_and(|n| n >= 3),
    );
    assert_eq!(
        browser.eval("return document.getElementById('restarts').textContent"),
        json!("0")
    );
    // The operator graph: the source, the count and the sink, joined by channels, with
    // their rates; and the source's lag in bytes.
    browser.await_value(
        "const g = document.getElementById('graph'); \
         return {edges: Number(g.dataset.edges), \
                 names: Array.from(g.querySelectorAll('g.node')).map(n => n.dataset.name), \
                 rate: Math.max(0, ...Array.from(g.querySelectorAll('g.node')).map(n => Number(n.dataset.inRate)))}",
        deadline,
        "the operator graph with the source, the count and the sink",
        |v| {
            let names: Vec<&str> = v["names"]
                .as_array()
                .map(|a| a.iter().filter_map(Value::as_str).collect())
                .unwrap_or_default();
            ["source:lines", "keyed:counts", "sink:output"]
                .iter()
                .all(|n| names.contains(n))
                && v["edges"].as_u64().is_some_and(|e| e >= 3)
                && v["rate"].as_f64().is_some_and(|r| r > 0.0)
        },
    );
    browser.await_value(
        "const c = document.querySelector('#operators tr[data-kind=source] td.lag'); return c ? c.textContent : ''",
        deadline,
        "the source's lag in bytes",
        |v| v.as_str().is_some_and(|t| t.ends_with(" bytes")),
    );

    // A SIGKILL: the restart appears.
    let gens = parse_generations(&read_lossy(&launch_err));
    let victim = *gens
        .get(&0)
        .and_then(|g| g.get(&1))
        .expect("process 1's pid");
    assert!(sigkill(victim), "SIGKILL {victim}");
    browser.await_value(
        "return Number(document.getElementById('restarts').textContent)",
        deadline,
        "a restart",
        |v| v.as_u64().is_some_and(|n| n >= 1),
    );
    browser.await_value(
        "return document.querySelectorAll('#generations tbody tr').length",
        deadline,
        "a second generation",
        |v| v.as_u64().is_some_and(|n| n >= 2),
    );
    let shot = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/dashboard.png");
    browser.screenshot(&shot);
    assert!(
        std::fs::metadata(&shot).unwrap().len() > 1000,
        "an empty screenshot"
    );

    // A dashboard of a store that cannot be opened, and of a process that is not
    // there: the page says so, and so does the command line.
    let closed = format!("http://127.0.0.1:{}/metrics", free_port());
    let (_bad, bad_addr, bad_err) =
        start_dashboard(&ws, "gopher://nowhere/x", std::slice::from_ref(&closed));
    let (status, job) = get_json(&bad_addr, "/api/job");
    assert_eq!(status, 503, "{job}");
    assert!(
        job["error"]
            .as_str()
            .unwrap()
            .contains("gopher://nowhere/x"),
        "{job}"
    );
    let (_, scraped) = get_json(&bad_addr, "/api/metrics");
    assert_eq!(scraped["endpoints"][0]["ok"], false, "{scraped}");
    let stderr = read_lossy(&bad_err);
    assert!(
        stderr.contains("gopher://nowhere/x") && stderr.contains(&closed),
        "{stderr}"
    );
    browser.open(&format!("http://{bad_addr}/"));
    browser.await_value(
        "const e = document.getElementById('error'); return e.style.display === 'block' ? e.textContent : ''",
        deadline,
        "the store's error",
        |v| v.as_str().is_some_and(|t| t.contains("gopher://nowhere/x")),
    );
    drop(browser);

    let status = await_value(
        deadline,
        "the job to finish",
        || tail(&read_lossy(&launch_err), 20),
        || launch.0.try_wait().unwrap(),
    );
    assert!(status.success(), "{}", tail(&read_lossy(&launch_err), 20));
}
