//! Go's crypto/tls through uprobes on `(*Conn).Write`/`Read` and their RET
//! instructions, against real Go programs built at test time with the
//! host's Go (tests/go, GOPATH mode, standard library only): a net/http
//! HTTPS server with a Go client and with curl, spans linked client ->
//! server in a real OTLP receiver; a stripped Go program reported as not
//! covered, its ciphertext never a span; nothing attached after exit.
use std::{
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use serde_json::Value;
use tracer_e2e::{
    free_port, require_tool, root_test, run_ok,
    span::{attr, f, res},
    tempdir::TempDir,
    wait_port, workspace, Agent, Otlp, Receiver, Spawned,
};

const SETTLE: Duration = Duration::from_millis(1500);

/// A self-signed certificate for 127.0.0.1: (cert, key).
fn certificate(dir: &Path) -> (String, String) {
    require_tool("openssl");
    let cert = dir.join("cert.pem").display().to_string();
    let key = dir.join("key.pem").display().to_string();
    run_ok(Command::new("openssl").args([
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "1",
        "-subj",
        "/CN=localhost",
        "-addext",
        "subjectAltName=DNS:localhost,IP:127.0.0.1",
        "-keyout",
        &key,
        "-out",
        &cert,
    ]));
    (cert, key)
}

/// Builds tests/go/`name`.go into `dir` as `out`, with extra `go build`
/// arguments.
fn go_build(dir: &Path, name: &str, out: &str, extra: &[&str]) -> PathBuf {
    require_tool("go");
    let bin = dir.join(out);
    run_ok(
        Command::new("go")
            .arg("build")
            .args(extra)
            .arg("-o")
            .arg(&bin)
            .arg(workspace().join(format!("tests/go/{name}.go")))
            .env("GO111MODULE", "off")
            .env("GOPATH", dir.join("gopath"))
            .env("GOCACHE", dir.join("gocache"))
            .env("GOTOOLCHAIN", "local")
            .env("GOFLAGS", ""),
    );
    bin
}

/// The Go HTTPS server, listening (`h2`: net/http's default, h2 by ALPN;
/// else HTTP/1.1 only).
fn go_server(bin: &Path, cert: &str, key: &str, h2: bool) -> (Spawned, u16) {
    let port = free_port();
    let s = Spawned::ready(
        Command::new(bin)
            .arg(port.to_string())
            .args([cert, key])
            .env("TLS_H2", if h2 { "1" } else { "0" }),
    );
    wait_port(port, Duration::from_secs(10));
    (s, port)
}

fn curl(url: &str, extra: &[&str]) {
    let code = run_ok(
        Command::new("curl")
            .args(["-sk", "-o", "/dev/null", "-w", "%{http_code}"])
            .args(extra)
            .arg(url),
    );
    assert_eq!(code.trim(), "200", "curl {url}");
}

fn paths(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}{i}")).collect()
}

/// The (client, server) spans of `path`: both https, the server's parent
/// the client (same trace).
fn assert_linked(spans: &[Value], path: &str, client: &str, server: &str, stderr: &str) {
    let of_path: Vec<&Value> = spans
        .iter()
        .filter(|s| attr(s, "url.path") == path)
        .collect();
    let kind = |k: &str| {
        let v: Vec<&&Value> = of_path.iter().filter(|s| f(s, "kind") == k).collect();
        assert_eq!(
            v.len(),
            1,
            "one {k} span for {path}: {of_path:#?}\nagent:\n{stderr}"
        );
        *v[0]
    };
    let c = kind("CLIENT");
    let s = kind("SERVER");
    for span in [c, s] {
        assert_eq!(attr(span, "url.scheme"), "https", "{span:#?}");
        assert_eq!(attr(span, "http.response.status_code"), "200", "{span:#?}");
        assert_eq!(attr(span, "http.request.method"), "GET", "{span:#?}");
    }
    assert!(res(c, "service.name").starts_with(client), "{c:#?}");
    assert!(res(s, "service.name").starts_with(server), "{s:#?}");
    assert_eq!(
        f(s, "trace_id"),
        f(c, "trace_id"),
        "one trace: {c:#?} {s:#?}"
    );
    assert_eq!(
        f(s, "parent_span_id"),
        f(c, "span_id"),
        "server's parent is the client: {c:#?} {s:#?}"
    );
}

fn bpftool_ids(what: &str, field: &str) -> Vec<u64> {
    let out = run_ok(Command::new("bpftool").args(["-j", what, "show"]));
    let v: Value = serde_json::from_str(&out).unwrap_or(Value::Array(vec![]));
    v.as_array()
        .map(|a| a.iter().filter_map(|x| x[field].as_u64()).collect())
        .unwrap_or_default()
}

/// Ids of the loaded programs whose name starts with `prefix`.
fn bpftool_progs(prefix: &str) -> Vec<u64> {
    let out = run_ok(Command::new("bpftool").args(["-j", "prog", "show"]));
    let v: Value = serde_json::from_str(&out).unwrap_or(Value::Array(vec![]));
    v.as_array()
        .map(|a| {
            a.iter()
                .filter(|p| p["name"].as_str().is_some_and(|n| n.starts_with(prefix)))
                .filter_map(|p| p["id"].as_u64())
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn go_https_server_with_go_and_curl_clients() {
    let Some(_g) = root_test("go_https_server_with_go_and_curl_clients") else {
        return;
    };
    require_tool("curl");
    require_tool("bpftool");
    let dir = TempDir::new("tracer-gotls");
    let (cert, key) = certificate(dir.path());
    let server_bin = go_build(dir.path(), "tls_server", "tls_server", &[]);
    let client_bin = go_build(dir.path(), "tls_client", "tls_client", &[]);
    // Running before the agent: found in /proc at start.
    let (_server, port) = go_server(&server_bin, &cert, &key, false);
    let base = format!("https://127.0.0.1:{port}");
    let receiver = Receiver::start(Otlp::Grpc);
    let agent = Agent::start(&receiver.agent_args());

    // The Go programs' probes are attached while the agent runs.
    let go_ids: Vec<u64> = bpftool_progs("go_tls")
        .into_iter()
        .filter(|id| agent.program_ids.iter().any(|&a| u64::from(a) == *id))
        .collect();
    assert_eq!(go_ids.len(), 3, "{}", agent.stderr_so_far());
    let attached: Vec<u64> = bpftool_ids("link", "prog_id")
        .into_iter()
        .chain(bpftool_ids("perf", "prog_id"))
        .collect();
    for id in &go_ids {
        assert!(
            attached.contains(id),
            "Go TLS program {id} attached: {}",
            agent.stderr_so_far()
        );
    }

    // A Go client started after the agent: found by the /proc scan, then
    // told to go.
    let go_paths = paths("/go-tls-go-", 5);
    let mut client = Spawned::ready(Command::new(&client_bin).arg(&base).args(&go_paths));
    std::thread::sleep(Duration::from_millis(1200));
    client.send("go");
    assert_eq!(client.line(Duration::from_secs(30)), "done");
    client.finish();
    let curl_paths = paths("/go-tls-curl-", 5);
    for p in &curl_paths {
        curl(&format!("{base}{p}"), &["--http1.1"]);
    }
    let want = (go_paths.len() + curl_paths.len()) * 2;
    receiver.wait_for(Duration::from_secs(30), |s| {
        s.iter()
            .filter(|s| attr(s, "url.path").starts_with("/go-tls-"))
            .count()
            >= want
    });
    let out = agent.stop(SETTLE);
    let spans = receiver.spans();
    for p in &go_paths {
        assert_linked(&spans, p, "tls_client", "tls_server", &out.stderr);
    }
    for p in &curl_paths {
        assert_linked(&spans, p, "curl", "tls_server", &out.stderr);
    }
    assert!(
        out.stderr
            .contains("Go crypto/tls plaintext probes attached")
            && out.stderr.contains("go1."),
        "{}",
        out.stderr
    );
    assert_eq!(
        out.counter("kernel.drops{go_tls_no_socket}"),
        Some(0),
        "{}",
        out.stderr
    );
    assert_eq!(
        out.counter("tls.calls_without_conn"),
        Some(0),
        "{}",
        out.stderr
    );
    assert!(out.counter("connections.silenced_tls").unwrap_or(0) >= 2);
    // The Go client exited with its connection's reader parked in Read:
    // that call's entry was removed with the process.
    assert!(
        out.counter("tls.go_calls_forgotten").unwrap_or(0) >= 1,
        "{}",
        out.stderr
    );
    let reported: Vec<&str> = out
        .stderr
        .lines()
        .filter(|l| l.contains("TLS not covered") && l.contains("tls_"))
        .collect();
    assert!(reported.is_empty(), "{reported:#?}");
    // Nothing of the agent's is loaded or attached after it exited.
    let loaded = bpftool_ids("prog", "id");
    let attached: Vec<u64> = bpftool_ids("link", "prog_id")
        .into_iter()
        .chain(bpftool_ids("perf", "prog_id"))
        .collect();
    for id in agent_ids(&out) {
        assert!(!loaded.contains(&id), "program {id} loaded after exit");
        assert!(!attached.contains(&id), "program {id} attached after exit");
    }
}

#[test]
fn go_h2_by_alpn_with_go_and_curl_clients() {
    let Some(_g) = root_test("go_h2_by_alpn_with_go_and_curl_clients") else {
        return;
    };
    require_tool("curl");
    let dir = TempDir::new("tracer-gotls");
    let (cert, key) = certificate(dir.path());
    let server_bin = go_build(dir.path(), "tls_server", "tls_server", &[]);
    let client_bin = go_build(dir.path(), "tls_client", "tls_client", &[]);
    let (_server, port) = go_server(&server_bin, &cert, &key, true);
    let base = format!("https://127.0.0.1:{port}");
    let receiver = Receiver::start(Otlp::Grpc);
    let agent = Agent::start(&receiver.agent_args());
    let go_paths = paths("/go-h2-go-", 5);
    let mut client = Spawned::ready(
        Command::new(&client_bin)
            .arg(&base)
            .args(&go_paths)
            .env("TLS_H2", "1"),
    );
    std::thread::sleep(Duration::from_millis(1200));
    client.send("go");
    assert_eq!(client.line(Duration::from_secs(30)), "done");
    client.finish();
    let curl_paths = paths("/go-h2-curl-", 3);
    for p in &curl_paths {
        curl(&format!("{base}{p}"), &["--http2"]);
    }
    let want = (go_paths.len() + curl_paths.len()) * 2;
    receiver.wait_for(Duration::from_secs(30), |s| {
        s.iter()
            .filter(|s| attr(s, "url.path").starts_with("/go-h2-"))
            .count()
            >= want
    });
    let out = agent.stop(SETTLE);
    let spans = receiver.spans();
    for p in &go_paths {
        assert_linked(&spans, p, "tls_client", "tls_server", &out.stderr);
    }
    for p in &curl_paths {
        assert_linked(&spans, p, "curl", "tls_server", &out.stderr);
    }
    for s in spans
        .iter()
        .filter(|s| attr(s, "url.path").starts_with("/go-h2-"))
    {
        assert_eq!(attr(s, "network.protocol.version"), "2", "{s:#?}");
    }
}

#[test]
fn go_pie_without_dwarf_is_covered() {
    let Some(_g) = root_test("go_pie_without_dwarf_is_covered") else {
        return;
    };
    require_tool("curl");
    let dir = TempDir::new("tracer-gotls");
    let (cert, key) = certificate(dir.path());
    // Loaded at a random address, no DWARF: the probes add the load bias;
    // the offsets are Go's defaults (and the read-ahead table of go1.19).
    let bin = go_build(
        dir.path(),
        "tls_server",
        "tls_server_pie",
        &["-buildmode=pie", "-ldflags=-w"],
    );
    let (_server, port) = go_server(&bin, &cert, &key, false);
    let receiver = Receiver::start(Otlp::Grpc);
    let agent = Agent::start(&receiver.agent_args());
    let pie = paths("/go-pie-", 5);
    for p in &pie {
        curl(&format!("https://127.0.0.1:{port}{p}"), &["--http1.1"]);
    }
    receiver.wait_for(Duration::from_secs(30), |s| {
        s.iter()
            .filter(|s| attr(s, "url.path").starts_with("/go-pie-"))
            .count()
            >= pie.len() * 2
    });
    let out = agent.stop(SETTLE);
    let spans = receiver.spans();
    for p in &pie {
        assert_linked(&spans, p, "curl", "tls_server_pie", &out.stderr);
    }
    assert!(
        out.stderr.contains("Go 1.12+ defaults"),
        "offsets without DWARF: {}",
        out.stderr
    );
}

/// The program ids the agent logged at start.
fn agent_ids(out: &tracer_e2e::AgentOutput) -> Vec<u64> {
    out.stderr
        .lines()
        .find(|l| l.contains("attached: capturing"))
        .and_then(|l| l.split("programs=[").nth(1))
        .and_then(|s| s.split(']').next())
        .map(|s| s.split(',').filter_map(|x| x.trim().parse().ok()).collect())
        .unwrap_or_default()
}

#[test]
fn stripped_go_program_is_reported_and_makes_no_span() {
    let Some(_g) = root_test("stripped_go_program_is_reported_and_makes_no_span") else {
        return;
    };
    require_tool("curl");
    let dir = TempDir::new("tracer-gotls");
    let (cert, key) = certificate(dir.path());
    let bin = go_build(
        dir.path(),
        "tls_server",
        "tls_server_stripped",
        &["-ldflags=-s -w"],
    );
    let (_server, port) = go_server(&bin, &cert, &key, false);
    let agent = Agent::start(&["--print", "traces", "--output", "json"]);
    let stripped = paths("/go-stripped-", 3);
    for p in &stripped {
        curl(&format!("https://127.0.0.1:{port}{p}"), &[]);
    }
    let out = agent.stop(SETTLE);
    let spans = out.json();
    let server: Vec<&Value> = spans
        .iter()
        .filter(|s| f(s, "kind") == "SERVER" && attr(s, "url.path").starts_with("/go-stripped-"))
        .collect();
    assert!(server.is_empty(), "spans from ciphertext: {server:#?}");
    let reported: Vec<&str> = out
        .stderr
        .lines()
        .filter(|l| l.contains("TLS not covered") && l.contains("tls_server_stripped"))
        .collect();
    assert_eq!(reported.len(), 1, "{}", out.stderr);
    assert!(reported[0].contains("stripped"), "{}", reported[0]);
    assert!(out.counter("tls.not_covered").unwrap_or(0) >= 1);
    assert!(out.counter("connections.silenced_tls").unwrap_or(0) >= 1);
}
