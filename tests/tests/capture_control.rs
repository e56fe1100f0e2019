//! What the kernel copies, against real software (issue 13): whole heads
//! across a 16 KiB window (large cookies and tokens before the trace
//! context), large response heads, a head over the window, bulk non-HTTP
//! traffic next to HTTP (silenced after detection), and 100 MB bodies
//! (skipped, not copied).
use std::{
    collections::HashMap,
    process::{Command, Stdio},
    time::Duration,
};

use serde_json::Value;
use tracer_e2e::{
    curl_status, free_port, py_script, python, require_tool, root_test,
    span::{attr, f, res},
    wait_port, Agent, AgentOutput, Backend, Nginx, Otlp, Receiver, Redis, Spawned,
};

const SETTLE: Duration = Duration::from_millis(1500);

/// tests/py/heads_backend.py with its own service name.
fn heads_backend(service: &str) -> (Spawned, u16) {
    let port = free_port();
    let mut cmd = Command::new(python());
    cmd.arg(py_script("heads_backend.py"))
        .arg(port.to_string())
        .env("OTEL_SERVICE_NAME", service)
        .stderr(Stdio::inherit());
    (Spawned::ready(&mut cmd), port)
}

/// The agent exporting to `receiver`, without CPU sampling.
fn agent(receiver: &Receiver) -> Agent {
    let mut args = receiver.agent_args();
    args.extend(["--profile-hz".into(), "0".into()]);
    Agent::start(&args)
}

/// Spans whose url.path is exactly `path`.
fn spans_of<'a>(spans: &'a [Value], path: &str) -> Vec<&'a Value> {
    spans
        .iter()
        .filter(|s| attr(s, "url.path") == path)
        .collect()
}

/// (service, kind) of a span.
fn who(s: &Value) -> (String, String) {
    (res(s, "service.name"), f(s, "kind").to_owned())
}

fn counter(out: &AgentOutput, name: &str) -> u64 {
    out.counter(name)
        .unwrap_or_else(|| panic!("no counter {name} in {}", out.stderr))
}

/// `kb` KiB of cookie and bearer-token headers, in lines nginx accepts
/// (its default limit is 8 KiB a line); every value says SECRET.
fn bulky_headers(kb: usize) -> Vec<String> {
    let mut left = kb * 1024;
    let mut out = Vec::new();
    let token = format!("Authorization: Bearer SECRETTOKEN{}", "t".repeat(700));
    left -= token.len();
    out.push(token);
    let mut i = 0;
    while left > 64 {
        let n = left.min(3000);
        out.push(format!(
            "Cookie: c{i}=SECRETCOOKIE{}",
            "c".repeat(n.saturating_sub(24))
        ));
        left -= n.min(left);
        i += 1;
    }
    out
}

/// Owned header lines as curl_status takes them.
fn refs(headers: &[String]) -> Vec<&str> {
    headers.iter().map(String::as_str).collect()
}

#[test]
fn heads_of_1_4_and_12_kib_before_traceparent_join_the_trace() {
    let Some(_g) = root_test("heads_of_1_4_and_12_kib_before_traceparent_join_the_trace") else {
        return;
    };
    require_tool("curl");
    let (_py, py_port) = heads_backend("svc-heads");
    let nginx = Nginx::start(&format!(
        "server {{ listen 127.0.0.1:{{port}}; large_client_header_buffers 8 8k; \
         location / {{ proxy_pass http://127.0.0.1:{py_port}; }} }}"
    ));
    let receiver = Receiver::start(Otlp::Grpc);
    let agent = agent(&receiver);
    let mut traces = HashMap::new();
    for kb in [1, 4, 12] {
        let trace = format!("4bf92f3577b34da6a3ce9{kb:011x}");
        let mut headers = bulky_headers(kb);
        headers.push(format!("traceparent: 00-{trace}-00f067aa0ba902b7-01"));
        headers.push(format!("x-request-id: req-{kb}"));
        let url = format!("http://127.0.0.1:{}/heads-{kb}", nginx.port);
        assert_eq!(
            curl_status(&url, &refs(&headers), &[]),
            200,
            "{kb} KiB of headers"
        );
        traces.insert(format!("/heads-{kb}"), trace);
    }
    let spans = receiver.wait_for(Duration::from_secs(20), |s| {
        traces.keys().all(|p| spans_of(s, p).len() >= 4)
    });
    let out = agent.stop(SETTLE);
    for (path, trace) in &traces {
        let group = spans_of(&spans, path);
        let kinds: Vec<(String, String)> = group.iter().map(|s| who(s)).collect();
        for expected in [
            ("curl", "CLIENT"),
            ("nginx", "SERVER"),
            ("nginx", "CLIENT"),
            ("svc-heads", "SERVER"),
        ] {
            assert!(
                kinds.contains(&(expected.0.into(), expected.1.into())),
                "{path}: no {expected:?} span in {kinds:?}"
            );
        }
        for s in &group {
            assert_eq!(
                f(s, "trace_id"),
                trace,
                "{path}: {:?} joins the propagated trace",
                who(s)
            );
        }
    }
    let raw = receiver.raw();
    assert!(!raw.contains("SECRETCOOKIE"), "a cookie value was exported");
    assert!(!raw.contains("SECRETTOKEN"), "a token was exported");
    assert_eq!(counter(&out, "heads_cut"), 0, "no head was cut");
    assert!(counter(&out, "head_starts") >= 12, "head starts counted");
}

#[test]
fn six_kib_of_set_cookie_leave_the_status_right() {
    let Some(_g) = root_test("six_kib_of_set_cookie_leave_the_status_right") else {
        return;
    };
    require_tool("curl");
    let (_py, py_port) = heads_backend("svc-cookies");
    let receiver = Receiver::start(Otlp::Grpc);
    let agent = agent(&receiver);
    let url = format!("http://127.0.0.1:{py_port}/setcookie?kb=6");
    assert_eq!(curl_status(&url, &["x-request-id: cookie-run"], &[]), 201);
    let spans = receiver.wait_for(Duration::from_secs(20), |s| {
        spans_of(s, "/setcookie").len() >= 2
    });
    let out = agent.stop(SETTLE);
    let group = spans_of(&spans, "/setcookie");
    assert_eq!(group.len(), 2, "a client and a server span: {group:?}");
    for s in &group {
        assert_eq!(attr(s, "http.response.status_code"), "201", "{:?}", who(s));
    }
    assert_eq!(
        f(group[0], "trace_id"),
        f(group[1], "trace_id"),
        "one trace"
    );
    assert!(
        !receiver.raw().contains("sessionsecret"),
        "a Set-Cookie value was exported"
    );
    assert_eq!(counter(&out, "heads_cut"), 0, "the 6 KiB head was whole");
}

#[test]
fn head_over_the_window_makes_a_span_counts_the_cut_and_invents_nothing() {
    let Some(_g) =
        root_test("head_over_the_window_makes_a_span_counts_the_cut_and_invents_nothing")
    else {
        return;
    };
    require_tool("curl");
    let (_py, py_port) = heads_backend("svc-limit");
    let receiver = Receiver::start(Otlp::Grpc);
    let agent = agent(&receiver);
    // 20 KiB of cookies, then the trace context: past the 16 KiB window.
    let trace = "0af7651916cd43dd8448eb211c80319c";
    let mut headers = bulky_headers(20);
    headers.push(format!("traceparent: 00-{trace}-b7ad6b7169203331-01"));
    let url = format!("http://127.0.0.1:{py_port}/over-limit");
    assert_eq!(curl_status(&url, &refs(&headers), &[]), 200);
    let spans = receiver.wait_for(Duration::from_secs(20), |s| {
        spans_of(s, "/over-limit").len() >= 2
    });
    let out = agent.stop(SETTLE);
    let group = spans_of(&spans, "/over-limit");
    assert_eq!(group.len(), 2, "spans are made from the head's first lines");
    for s in &group {
        assert_ne!(
            f(s, "trace_id"),
            trace,
            "a header past the cut was not seen, so not honoured"
        );
        assert_eq!(attr(s, "http.request.method"), "GET");
    }
    assert!(!receiver.raw().contains("SECRETCOOKIE"));
    assert!(counter(&out, "heads_cut") >= 2, "both ends' heads were cut");
    assert!(
        counter(&out, "head_window_full") >= 1,
        "the kernel counted it"
    );
}

/// The "bytes" of `iperf3 -J` output's end summary.
fn iperf_bytes(json: &str) -> u64 {
    let v: Value = serde_json::from_str(json).expect("iperf3 -J output");
    v["end"]["sum_sent"]["bytes"].as_u64().unwrap_or(0)
}

#[test]
fn bulk_tcp_next_to_http_is_silenced_and_http_spans_stay() {
    let Some(_g) = root_test("bulk_tcp_next_to_http_is_silenced_and_http_spans_stay") else {
        return;
    };
    for tool in ["curl", "iperf3", "redis-server", "redis-benchmark"] {
        require_tool(tool);
    }
    let backend = Backend::start("svc-bulk", None);
    let nginx = Nginx::start(&format!(
        "server {{ listen 127.0.0.1:{{port}}; \
         location / {{ proxy_pass http://127.0.0.1:{}; }} }}",
        backend.port
    ));
    let redis = Redis::start();
    let iperf_port = free_port();
    let mut iperf_server = Command::new("iperf3")
        .args(["-s", "-p", &iperf_port.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("iperf3 -s");
    wait_port(iperf_port, Duration::from_secs(10));
    let receiver = Receiver::start(Otlp::Grpc);
    let agent = agent(&receiver);

    let iperf = Command::new("iperf3")
        .args([
            "-c",
            "127.0.0.1",
            "-p",
            &iperf_port.to_string(),
            "-t",
            "3",
            "-J",
        ])
        .stdout(Stdio::piped())
        .spawn()
        .expect("iperf3 -c");
    let bench = Command::new("redis-benchmark")
        .args([
            "-p",
            &redis.port().to_string(),
            "-t",
            "set,get",
            "-n",
            "20000",
            "-q",
        ])
        .stdout(Stdio::null())
        .spawn()
        .expect("redis-benchmark");
    let n = 20;
    for i in 0..n {
        let url = format!("http://127.0.0.1:{}/bulk-{i}", nginx.port);
        assert_eq!(curl_status(&url, &[], &[]), 200);
        std::thread::sleep(Duration::from_millis(100));
    }
    let iperf_out = iperf.wait_with_output().unwrap();
    assert!(iperf_out.status.success(), "iperf3 failed");
    let moved = iperf_bytes(&String::from_utf8_lossy(&iperf_out.stdout));
    assert!(bench.wait_with_output().unwrap().status.success());
    let spans = receiver.wait_for(Duration::from_secs(20), |s| {
        (0..n).all(|i| spans_of(s, &format!("/bulk-{i}")).len() >= 4)
    });
    let _ = iperf_server.kill();
    let _ = iperf_server.wait();
    drop(redis);
    let out = agent.stop(SETTLE);

    for i in 0..n {
        let group = spans_of(&spans, &format!("/bulk-{i}"));
        assert_eq!(
            group.len(),
            4,
            "/bulk-{i}: {:?}",
            group.iter().map(|s| who(s)).collect::<Vec<_>>()
        );
        let trace = f(group[0], "trace_id");
        assert!(
            group.iter().all(|s| f(s, "trace_id") == trace),
            "/bulk-{i}: one trace"
        );
    }
    assert!(moved > 100 << 20, "iperf3 moved {moved} bytes");
    // iperf3's control and data connections and redis-benchmark's 50 per
    // test (set, get), both ends of each.
    let silenced = counter(&out, "silenced_not_parsed") + counter(&out, "silenced_tls");
    assert!(
        silenced >= 100,
        "{silenced} bulk sockets silenced: {}",
        out.stderr.lines().last().unwrap_or("")
    );
    assert!(counter(&out, "silenced_calls") > 0);
    assert!(counter(&out, "silenced_packets") > 0);
    // What the kernel did not copy (reported at each socket's close) is
    // most of what iperf3 moved: the copies stopped once detected.
    let uncopied = counter(&out, "uncopied_bytes");
    assert!(
        uncopied > moved / 2,
        "kernel skipped {uncopied} of iperf3's {moved} bytes"
    );
    let captured = counter(&out, "bytes_captured");
    assert!(
        captured < moved / 20,
        "{captured} bytes captured for iperf3's {moved}"
    );
}

#[test]
fn hundred_megabyte_download_and_upload_are_skipped_not_copied() {
    let Some(_g) = root_test("hundred_megabyte_download_and_upload_are_skipped_not_copied") else {
        return;
    };
    require_tool("curl");
    let (_py, py_port) = heads_backend("svc-upload");
    let nginx = Nginx::start("server { listen 127.0.0.1:{port}; root {root}; }");
    let size = 100 << 20;
    let body: Vec<u8> = (0..size).map(|i| (i % 251) as u8).collect();
    std::fs::write(nginx.root().join("big.bin"), &body).unwrap();
    let upload = nginx.root().join("upload.bin");
    std::fs::write(&upload, &body).unwrap();
    drop(body);
    let receiver = Receiver::start(Otlp::Grpc);
    let agent = agent(&receiver);
    let down = format!("http://127.0.0.1:{}/big.bin", nginx.port);
    assert_eq!(curl_status(&down, &[], &[]), 200);
    let up = format!("http://127.0.0.1:{py_port}/upload");
    let file = upload.display().to_string();
    assert_eq!(
        curl_status(
            &up,
            &[],
            &["-X", "POST", "--data-binary", &format!("@{file}")]
        ),
        200
    );
    let spans = receiver.wait_for(Duration::from_secs(20), |s| {
        spans_of(s, "/big.bin").len() >= 2 && spans_of(s, "/upload").len() >= 2
    });
    let out = agent.stop(SETTLE);
    let down_spans = spans_of(&spans, "/big.bin");
    let up_spans = spans_of(&spans, "/upload");
    assert_eq!(down_spans.len(), 2, "one client and one server span");
    assert_eq!(up_spans.len(), 2, "one client and one server span");
    for s in down_spans.iter().chain(&up_spans) {
        assert_eq!(attr(s, "http.response.status_code"), "200");
    }
    // Both bodies: most of their bytes were never copied by the kernel
    // (the first ones went by before the parser's request landed), and the
    // streams count them as skipped, not as holes.
    let skipped = counter(&out, "skipped_bytes");
    assert!(
        skipped > size,
        "kernel skipped {skipped} of 2 x {size} bytes"
    );
    assert!(counter(&out, "bytes_skipped") > size);
    // No hole in the bodies. (The agent's own export connection shows a few:
    // the kernel does not report the agent's sends, the receiver's reads of
    // them are reported.)
    let holes = counter(&out, "bytes_hole");
    assert!(holes < 64 << 10, "{holes} bytes of holes");
    assert!(counter(&out, "bytes_captured") < size / 10);
}
