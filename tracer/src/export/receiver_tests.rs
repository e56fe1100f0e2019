//! The exporter against a real OTLP receiver (tests/py/otlp_receiver.py,
//! grpcio + opentelemetry-proto in target/pyenv). Skipped with a SKIP line
//! when that venv is missing, unless CI=true.
use std::{
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::Arc,
    time::{Duration, Instant},
};

use correlate::{ParentSource, SpanKind, Status};
use serde_json::Value;

use super::config::{Compression, ExportConfig, Protocol};
use super::console::tests::{res, span};
use super::otlp::Exporter;
use super::resource::tests::TempDir;
use crate::clock::Clock;

struct Receiver {
    child: Child,
    port: u16,
    out: PathBuf,
}

impl Drop for Receiver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Starts the receiver, or returns None (after printing SKIP) when the
/// venv is missing outside CI.
fn receiver(protocol: Protocol, dir: &Path, fail_file: Option<&Path>) -> Option<Receiver> {
    receiver_on(protocol, dir, fail_file, free_port(), &[])
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .unwrap()
        .port()
}

fn have_python() -> bool {
    let python = root().join("target/pyenv/bin/python");
    if python.exists() {
        return true;
    }
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("{} is missing (scripts/setup creates it)", python.display());
    }
    eprintln!(
        "SKIP: {} is missing (scripts/setup creates it)",
        python.display()
    );
    false
}

fn receiver_on(
    protocol: Protocol,
    dir: &Path,
    fail_file: Option<&Path>,
    port: u16,
    extra: &[&str],
) -> Option<Receiver> {
    if !have_python() {
        return None;
    }
    let python = root().join("target/pyenv/bin/python");
    let out = dir.join(format!("spans-{port}.jsonl"));
    let mut cmd = Command::new(python);
    cmd.arg(root().join("tests/py/otlp_receiver.py"))
        .arg(match protocol {
            Protocol::Grpc => "--grpc-port",
            Protocol::HttpProtobuf => "--http-port",
        })
        .arg(port.to_string())
        .arg("--out")
        .arg(&out)
        .stdout(Stdio::piped());
    if let Some(f) = fail_file {
        cmd.arg("--fail-until-file").arg(f);
    }
    cmd.args(extra);
    let mut child = cmd.spawn().expect("starting the receiver");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line.trim(), "ready", "the receiver did not start");
    Some(Receiver { child, port, out })
}

fn endpoint(protocol: Protocol, port: u16) -> String {
    match protocol {
        Protocol::Grpc => format!("http://127.0.0.1:{port}"),
        Protocol::HttpProtobuf => format!("http://127.0.0.1:{port}/v1/traces"),
    }
}

fn received(r: &Receiver) -> Vec<Value> {
    std::fs::read_to_string(&r.out)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn wait_until(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let t = Instant::now();
    while !f() {
        assert!(t.elapsed() < timeout, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn exports_a_trace(protocol: Protocol, compression: Compression) {
    let dir = TempDir::new("recv");
    let Some(r) = receiver(protocol, &dir.0, None) else {
        return;
    };
    let clock = Clock::new();
    let mut cfg = ExportConfig::new(endpoint(protocol, r.port), protocol);
    cfg.headers = vec![("x-tenant".into(), "t1".into())];
    cfg.compression = compression;
    let mut e = Exporter::start(cfg, clock).unwrap();
    let (fe, users) = (Arc::new(res("frontend")), Arc::new(res("users")));
    let root = span(7, 1, None, 100, 112);
    let mut client = span(7, 2, Some(1), 101, 111);
    client.kind = SpanKind::Client;
    client.parent_source = ParentSource::Thread;
    client.trace_state = Some("vendor=x".into());
    let mut server = span(7, 3, Some(2), 102, 110);
    server.status = Status::Error("boom".into());
    server.push_str("url.path", "/users/42");
    e.submit(&root, &fe);
    e.submit(&client, &fe);
    e.submit(&server, &users);
    let c = e.shutdown(Duration::from_secs(10));
    let w = c.worker;
    assert_eq!(w.exported, 3, "{c:?}");
    assert_eq!(w.requests, 1, "one request, both resources in it: {c:?}");
    assert_eq!(w.errors, 0, "{c:?}");
    wait_until(
        "3 spans in the receiver's file",
        Duration::from_secs(5),
        || received(&r).len() == 3,
    );
    let spans = received(&r);
    let by_id = |id: &str| spans.iter().find(|s| s["span_id"] == id).unwrap();
    let root = by_id("0101010101010101");
    let client = by_id("0202020202020202");
    let server = by_id("0303030303030303");
    assert_eq!(root["trace_id"], "07".repeat(16));
    assert_eq!(root["parent_span_id"], "");
    assert_eq!(root["kind"], "SERVER");
    assert_eq!(root["name"], "GET /s1");
    assert_eq!(root["start_time_unix_nano"], clock.unix_ns(100_000_000));
    assert_eq!(root["end_time_unix_nano"], clock.unix_ns(112_000_000));
    assert_eq!(root["status_code"], "UNSET");
    assert_eq!(root["attributes"]["http.response.status_code"], 200);
    assert_eq!(root["resource"]["service.name"], "frontend");
    assert_eq!(root["resource"]["process.pid"], 7);
    assert_eq!(root["scope"], "tracer");
    assert_eq!(client["parent_span_id"], "0101010101010101");
    assert_eq!(client["kind"], "CLIENT");
    assert_eq!(client["trace_state"], "vendor=x");
    // OTLP span flags: bit 8 "is-remote known", bit 9 "is remote", low byte
    // the W3C trace flags.
    assert_eq!(client["flags"], 0x101, "same-process parent");
    assert_eq!(server["flags"], 0x301, "parent in another process");
    assert_eq!(server["parent_span_id"], "0202020202020202");
    assert_eq!(server["status_code"], "ERROR");
    assert_eq!(server["status_message"], "boom");
    assert_eq!(server["attributes"]["url.path"], "/users/42");
    assert_eq!(server["resource"]["service.name"], "users");
    assert_eq!(server["headers"]["x-tenant"], "t1");
    if protocol == Protocol::HttpProtobuf {
        let gzip = compression == Compression::Gzip;
        assert_eq!(server["compressed"], gzip, "{server}");
    }
}

/// A TCP relay in front of the receiver counting the bytes sent to it.
struct Relay {
    port: u16,
    upstream_bytes: Arc<std::sync::atomic::AtomicU64>,
}

impl Relay {
    fn start(to: u16) -> Relay {
        use std::sync::atomic::Ordering;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let upstream_bytes = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let counted = upstream_bytes.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut down) = conn else { return };
                let Ok(mut up) = std::net::TcpStream::connect(("127.0.0.1", to)) else {
                    return;
                };
                let (mut down2, mut up2) = (down.try_clone().unwrap(), up.try_clone().unwrap());
                let counted = counted.clone();
                std::thread::spawn(move || {
                    let n = std::io::copy(&mut down2, &mut up2).unwrap_or(0);
                    counted.fetch_add(n, Ordering::Relaxed);
                    let _ = up2.shutdown(std::net::Shutdown::Write);
                });
                std::thread::spawn(move || {
                    let _ = std::io::copy(&mut up, &mut down);
                    let _ = down.shutdown(std::net::Shutdown::Write);
                });
            }
        });
        Relay {
            port,
            upstream_bytes,
        }
    }
}

/// The same 300 spans with and without gzip: compressed, far fewer bytes
/// reach the receiver, and every span still arrives.
fn gzip_shrinks_what_is_sent(protocol: Protocol) {
    use std::sync::atomic::Ordering;
    let dir = TempDir::new("recv");
    let Some(r) = receiver(protocol, &dir.0, None) else {
        return;
    };
    let mut sent = Vec::new();
    for compression in [Compression::None, Compression::Gzip] {
        let relay = Relay::start(r.port);
        let mut cfg = ExportConfig::new(endpoint(protocol, relay.port), protocol);
        cfg.compression = compression;
        let mut e = Exporter::start(cfg, Clock::new()).unwrap();
        let a = Arc::new(res("a"));
        for i in 0..300u32 {
            let mut s = span(8, 1, None, 0, 1);
            s.span_id = correlate::SpanId(u64::from(i + 1).to_be_bytes());
            s.push_str(
                "user_agent.original",
                "Mozilla/5.0 (X11; Linux x86_64) tracer-test",
            );
            e.submit(&s, &a);
        }
        let c = e.shutdown(Duration::from_secs(10));
        assert_eq!(c.worker.exported, 300, "{c:?}");
        wait_until("the relay to count", Duration::from_secs(5), || {
            relay.upstream_bytes.load(Ordering::Relaxed) > 0
        });
        sent.push(relay.upstream_bytes.load(Ordering::Relaxed));
    }
    assert!(
        sent[1] * 3 < sent[0],
        "{protocol:?}: bytes sent plain/gzip: {sent:?}"
    );
    assert_eq!(received(&r).len(), 600);
}

#[test]
fn gzip_shrinks_what_is_sent_over_grpc() {
    gzip_shrinks_what_is_sent(Protocol::Grpc);
}

#[test]
fn gzip_shrinks_what_is_sent_over_http() {
    gzip_shrinks_what_is_sent(Protocol::HttpProtobuf);
}

#[test]
fn exports_a_trace_over_grpc() {
    exports_a_trace(Protocol::Grpc, Compression::None);
}

#[test]
fn exports_a_trace_over_http() {
    exports_a_trace(Protocol::HttpProtobuf, Compression::None);
}

#[test]
fn exports_gzip_over_grpc() {
    exports_a_trace(Protocol::Grpc, Compression::Gzip);
}

#[test]
fn exports_gzip_over_http() {
    exports_a_trace(Protocol::HttpProtobuf, Compression::Gzip);
}

/// The receiver refuses some spans in a partial success: they are counted
/// as rejected, the others as exported.
fn partial_success_is_counted(protocol: Protocol) {
    let dir = TempDir::new("recv");
    let Some(r) = receiver_on(
        protocol,
        &dir.0,
        None,
        free_port(),
        &["--reject-prefix", "GET /reject"],
    ) else {
        return;
    };
    let mut e = Exporter::start(
        ExportConfig::new(endpoint(protocol, r.port), protocol),
        Clock::new(),
    )
    .unwrap();
    let a = Arc::new(res("a"));
    for i in 1..=5u8 {
        let mut s = span(4, i, None, 0, 1);
        if i % 2 == 0 {
            s.set_name("GET /reject-me");
        }
        e.submit(&s, &a);
    }
    let c = e.shutdown(Duration::from_secs(10));
    let w = c.worker;
    assert_eq!((w.exported, w.rejected, w.requests), (3, 2, 1), "{c:?}");
    assert_eq!(w.dropped(), 0, "{c:?}");
    assert_eq!(received(&r).len(), 3);
}

#[test]
fn partial_success_is_counted_over_grpc() {
    partial_success_is_counted(Protocol::Grpc);
}

#[test]
fn partial_success_is_counted_over_http() {
    partial_success_is_counted(Protocol::HttpProtobuf);
}

/// During an outage the receiver asks for 1 s between attempts (gRPC
/// RetryInfo, HTTP Retry-After): the exporter waits that long, not its
/// own 10 ms backoff.
fn honours_the_servers_delay(protocol: Protocol) {
    let dir = TempDir::new("recv");
    let fail = dir.0.join("down");
    std::fs::write(&fail, "").unwrap();
    let Some(r) = receiver_on(
        protocol,
        &dir.0,
        Some(&fail),
        free_port(),
        &["--retry-after", "1"],
    ) else {
        return;
    };
    let mut cfg = ExportConfig::new(endpoint(protocol, r.port), protocol);
    cfg.retry.initial = Duration::from_millis(10);
    cfg.retry.max_delay = Duration::from_millis(10);
    cfg.retry.max_attempts = 1000;
    let mut e = Exporter::start(cfg, Clock::new()).unwrap();
    e.submit(&span(6, 1, None, 0, 1), &Arc::new(res("a")));
    e.flush();
    wait_until("a first failure", Duration::from_secs(10), || {
        e.counters().worker.errors >= 1
    });
    std::thread::sleep(Duration::from_millis(2500));
    let errors = e.counters().worker.errors;
    assert!((2..=4).contains(&errors), "{errors} attempts in 2.5 s");
    std::fs::remove_file(&fail).unwrap();
    wait_until("the export", Duration::from_secs(10), || {
        e.counters().worker.exported == 1
    });
    e.shutdown(Duration::from_secs(1));
    assert_eq!(received(&r).len(), 1);
}

#[test]
fn honours_the_servers_delay_over_grpc() {
    honours_the_servers_delay(Protocol::Grpc);
}

#[test]
fn honours_the_servers_delay_over_http() {
    honours_the_servers_delay(Protocol::HttpProtobuf);
}

#[test]
fn retries_through_an_outage() {
    let dir = TempDir::new("recv");
    let fail = dir.0.join("down");
    std::fs::write(&fail, "").unwrap();
    let Some(r) = receiver(Protocol::Grpc, &dir.0, Some(&fail)) else {
        return;
    };
    let mut cfg = ExportConfig::new(endpoint(Protocol::Grpc, r.port), Protocol::Grpc);
    cfg.interval = Duration::from_millis(50);
    cfg.retry.initial = Duration::from_millis(50);
    cfg.retry.max_delay = Duration::from_millis(200);
    cfg.retry.max_attempts = 1000;
    cfg.retry.max_elapsed = Duration::from_secs(60);
    let mut e = Exporter::start(cfg, Clock::new()).unwrap();
    let a = Arc::new(res("a"));
    for i in 1..=5 {
        e.submit(&span(9, i, None, 0, 1), &a);
    }
    e.flush();
    wait_until("retries", Duration::from_secs(10), || {
        e.counters().worker.retries >= 3
    });
    assert_eq!(e.counters().worker.exported, 0);
    assert!(
        received(&r).is_empty(),
        "nothing recorded during the outage"
    );
    // More spans queue while the first batch is retried.
    e.submit(&span(9, 6, None, 0, 1), &a);
    e.flush();
    std::fs::remove_file(&fail).unwrap();
    wait_until("export after the outage", Duration::from_secs(10), || {
        e.counters().worker.exported == 6
    });
    let c = e.shutdown(Duration::from_secs(5));
    assert_eq!(c.worker.dropped_failed, 0, "{c:?}");
    assert!(c.worker.errors >= 3, "{c:?}");
    assert_eq!(received(&r).len(), 6);
}

#[test]
fn gives_up_after_the_retry_budget() {
    let dir = TempDir::new("recv");
    let fail = dir.0.join("down");
    std::fs::write(&fail, "").unwrap();
    let Some(r) = receiver(Protocol::HttpProtobuf, &dir.0, Some(&fail)) else {
        return;
    };
    let mut cfg = ExportConfig::new(
        endpoint(Protocol::HttpProtobuf, r.port),
        Protocol::HttpProtobuf,
    );
    cfg.interval = Duration::from_millis(20);
    cfg.retry.initial = Duration::from_millis(20);
    cfg.retry.max_attempts = 3;
    let mut e = Exporter::start(cfg, Clock::new()).unwrap();
    let a = Arc::new(res("a"));
    e.submit(&span(9, 1, None, 0, 1), &a);
    e.submit(&span(9, 2, None, 0, 1), &a);
    e.flush();
    wait_until("the batch to be dropped", Duration::from_secs(10), || {
        e.counters().worker.dropped_failed == 2
    });
    let c = e.shutdown(Duration::from_secs(2));
    let w = c.worker;
    assert_eq!(w.errors, 3, "{c:?}");
    assert_eq!(w.retries, 2, "{c:?}");
    assert_eq!(w.exported, 0, "{c:?}");
    assert_eq!(w.queued, 0, "{c:?}");
    assert!(received(&r).is_empty());
}

/// The backend is not running at all (connection refused), then starts:
/// the batch being retried and the spans queued meanwhile get through.
fn survives_a_backend_that_starts_late(protocol: Protocol) {
    if !have_python() {
        return;
    }
    let dir = TempDir::new("recv");
    let port = free_port();
    let mut cfg = ExportConfig::new(endpoint(protocol, port), protocol);
    cfg.interval = Duration::from_millis(50);
    cfg.batch_spans = 2;
    cfg.retry.initial = Duration::from_millis(50);
    cfg.retry.max_delay = Duration::from_millis(200);
    cfg.retry.max_attempts = 1000;
    cfg.retry.max_elapsed = Duration::from_secs(60);
    let mut e = Exporter::start(cfg, Clock::new()).unwrap();
    let a = Arc::new(res("a"));
    for i in 1..=3 {
        e.submit(&span(5, i, None, 0, 1), &a);
    }
    e.flush();
    wait_until("retries", Duration::from_secs(10), || {
        e.counters().worker.retries >= 2
    });
    let r = receiver_on(protocol, &dir.0, None, port, &[]).unwrap();
    wait_until(
        "export after the backend started",
        Duration::from_secs(15),
        || e.counters().worker.exported == 3,
    );
    let c = e.shutdown(Duration::from_secs(5));
    assert_eq!(c.worker.dropped_failed, 0, "{c:?}");
    assert_eq!(received(&r).len(), 3);
}

#[test]
fn survives_a_grpc_backend_that_starts_late() {
    survives_a_backend_that_starts_late(Protocol::Grpc);
}

#[test]
fn survives_an_http_backend_that_starts_late() {
    survives_a_backend_that_starts_late(Protocol::HttpProtobuf);
}
