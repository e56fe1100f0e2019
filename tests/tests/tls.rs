//! TLS plaintext through uprobes on OpenSSL and GnuTLS, against real
//! software: nginx over TLS (HTTP/1.1) with curl and Python's ssl as
//! clients, gnutls-serv with curl and wget, spans in a real OTLP receiver;
//! a server started after the agent, one in a mount namespace of its own
//! with its own libssl; a TLS library the
//! agent cannot probe (grpcio's BoringSSL, Java's JSSE) reported, its
//! ciphertext never a span. Certificates are made at test time with the openssl CLI.
use std::{process::Command, time::Duration};

use serde_json::Value;
use tracer_e2e::{
    free_port, py_script, python, require_tool, root_test, run_ok,
    span::{attr, f, res},
    tempdir::TempDir,
    tls::{
        assert_https_linked, bpftool_attached, bpftool_ids, bpftool_names, certificate, curl_ok,
        paths, wait_for_paths, wget_ok,
    },
    which, workspace, Agent, AgentOutput, Backend, Listening, Nginx, Otlp, Receiver,
};

const SETTLE: Duration = Duration::from_millis(1500);

/// nginx serving HTTPS (HTTP/1.1) with a 200 for every path.
fn tls_nginx(cert: &str, key: &str) -> Nginx {
    Nginx::start(&format!(
        "server {{ listen 127.0.0.1:{{port}} ssl; ssl_certificate {cert}; \
         ssl_certificate_key {key}; keepalive_requests 1000; \
         location / {{ return 200 \"tls ok\\n\"; }} }}"
    ))
}

/// nginx serving HTTPS over HTTP/2 (ALPN h2; HTTP/1.1 still offered).
fn tls_h2_nginx(cert: &str, key: &str) -> Nginx {
    Nginx::start(&format!(
        "server {{ listen 127.0.0.1:{{port}} ssl http2; ssl_certificate {cert}; \
         ssl_certificate_key {key}; \
         location / {{ return 200 \"h2 tls ok\\n\"; }} }}"
    ))
}

/// `tests/py/tls_backend.py` (Python's http.server over ssl) on a free
/// port, with `extra` arguments.
fn tls_backend(cert: &str, key: &str, extra: &[&str]) -> Listening {
    let port = free_port();
    Listening::start(
        Command::new(python())
            .arg(py_script("tls_backend.py"))
            .args([&port.to_string(), cert, key])
            .args(extra),
        port,
    )
}

fn py_client(args: &[&str]) {
    let out = run_ok(
        Command::new(python())
            .arg(py_script("tls_client.py"))
            .args(args),
    );
    assert!(out.contains("done"), "{out}");
}

#[test]
fn nginx_over_tls_with_curl_and_python_clients() {
    let Some(_g) = root_test("nginx_over_tls_with_curl_and_python_clients") else {
        return;
    };
    require_tool("curl");
    let dir = TempDir::new("tracer-tls");
    let (cert, key) = certificate(dir.path());
    // Running before the agent: found in /proc at start.
    let nginx = tls_nginx(&cert, &key);
    let base = format!("https://127.0.0.1:{}", nginx.port);
    let receiver = Receiver::start(Otlp::Grpc);
    let agent = Agent::start(&receiver.agent_args());

    let curl_paths = paths("/tls-curl-", 5);
    for p in &curl_paths {
        curl_ok(&format!("{base}{p}"), &[]);
    }
    // Secrets in the plaintext never leave the host.
    let code = run_ok(Command::new("curl").args([
        "-sk",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        "-H",
        "Authorization: Bearer tls-secret-token",
        "-H",
        "Cookie: session=tls-secret-cookie",
        &format!("{base}/tls-secret?key=tls-secret-query"),
    ]));
    assert_eq!(code.trim(), "200");
    let py_paths = paths("/tls-py-", 3);
    let mut args = vec!["urllib", base.as_str()];
    args.extend(py_paths.iter().map(String::as_str));
    py_client(&args);
    // Many requests on one keep-alive connection.
    let ka_paths = paths("/tls-ka-", 20);
    py_client(&["keepalive", &base, "/tls-ka-", "20"]);

    let all: Vec<&String> = curl_paths
        .iter()
        .chain(&py_paths)
        .chain(&ka_paths)
        .collect();
    let want = all.len() * 2 + 2;
    wait_for_paths(&receiver, "/tls-", want);
    let out = agent.stop(SETTLE);
    let spans = receiver.spans();
    for p in &curl_paths {
        assert_https_linked(&spans, p, ("curl", "nginx"), "1.1", &out.stderr);
    }
    for p in py_paths.iter().chain(&ka_paths) {
        assert_https_linked(&spans, p, ("tls_client", "nginx"), "1.1", &out.stderr);
    }
    assert_https_linked(&spans, "/tls-secret", ("curl", "nginx"), "1.1", &out.stderr);
    let raw = receiver.raw();
    for secret in ["tls-secret-token", "tls-secret-cookie", "tls-secret-query"] {
        assert!(!raw.contains(secret), "{secret} was exported");
    }
    assert!(
        out.counter("tls.calls").unwrap_or(0) >= want as u64,
        "{}",
        out.stderr
    );
    assert_eq!(
        out.counter("tls.calls_without_conn"),
        Some(0),
        "{}",
        out.stderr
    );
    assert_eq!(out.counter("kernel.drops{tls_slot_busy}"), Some(0));
    // The ciphertext itself never became a span, and was not copied
    // beyond its first packets.
    assert!(out.counter("connections.silenced_tls").unwrap_or(0) >= 2);
    let reported: Vec<&str> = out
        .stderr
        .lines()
        .filter(|l| l.contains("TLS not covered"))
        .collect();
    assert!(
        !reported
            .iter()
            .any(|l| l.contains("nginx") || l.contains("curl") || l.contains("python")),
        "OpenSSL users reported as not covered: {reported:#?}"
    );
}

#[test]
fn h2_over_tls_with_curl_and_python_clients() {
    let Some(_g) = root_test("h2_over_tls_with_curl_and_python_clients") else {
        return;
    };
    require_tool("curl");
    let dir = TempDir::new("tracer-tls");
    let (cert, key) = certificate(dir.path());
    let nginx = tls_h2_nginx(&cert, &key);
    let base = format!("https://127.0.0.1:{}", nginx.port);
    let receiver = Receiver::start(Otlp::Grpc);
    let agent = Agent::start(&receiver.agent_args());

    // curl picks h2 by ALPN: one connection (and preface) per run.
    let curl_paths = paths("/h2tls-curl-", 4);
    for p in &curl_paths {
        let out = run_ok(Command::new("curl").args([
            "-sk",
            "--http2",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code} %{http_version}",
            &format!("{base}{p}"),
        ]));
        assert_eq!(out.trim(), "200 2", "curl {p}");
    }
    // Python's h2 on ssl: many streams, one after another, on one
    // connection.
    let py_paths = paths("/h2tls-py-", 12);
    let port = nginx.port.to_string();
    let out = run_ok(
        Command::new(python())
            .arg(py_script("h2_tls_client.py"))
            .args(["127.0.0.1", &port, "/h2tls-py-", "12"]),
    );
    assert!(out.contains("done"), "{out}");

    let want = (curl_paths.len() + py_paths.len()) * 2;
    wait_for_paths(&receiver, "/h2tls-", want);
    let out = agent.stop(SETTLE);
    let spans = receiver.spans();
    // curl writes its preface and its HEADERS back to back: nginx (read
    // ahead on) reads both records with one receive and serves the second
    // from OpenSSL's buffer; the receive's length proves where it started
    // (before, such a server span stayed a root).
    for p in &curl_paths {
        assert_https_linked(&spans, p, ("curl", "nginx"), "2", &out.stderr);
    }
    eprintln!(
        "nginx h2: {} reads proven with others of their receive",
        out.counter("tls.calls_proven_together").unwrap_or(0)
    );
    for p in &py_paths {
        assert_https_linked(&spans, p, ("h2_tls_client", "nginx"), "2", &out.stderr);
    }
    assert_eq!(
        out.counter("tls.calls_without_conn"),
        Some(0),
        "{}",
        out.stderr
    );
}

/// `node tests/node/tls_proxy.js ARGS`.
fn node_tls(args: &[&str]) -> Command {
    require_tool("node");
    let mut cmd = Command::new("node");
    cmd.arg(workspace().join("tests/node/tls_proxy.js"))
        .args(args);
    cmd
}

/// The one span of `path` from `service` of `kind`.
fn one<'a>(spans: &'a [Value], path: &str, service: &str, kind: &str, stderr: &str) -> &'a Value {
    let v: Vec<&Value> = spans
        .iter()
        .filter(|s| {
            attr(s, "url.path") == path
                && f(s, "kind") == kind
                && res(s, "service.name").starts_with(service)
        })
        .collect();
    assert_eq!(
        v.len(),
        1,
        "one {kind} span of {service} for {path}: {:#?}\nagent:\n{stderr}",
        spans
            .iter()
            .filter(|s| attr(s, "url.path") == path)
            .collect::<Vec<_>>()
    );
    v[0]
}

#[test]
fn chain_through_node_https_with_memory_bios() {
    let Some(_g) = root_test("chain_through_node_https_with_memory_bios") else {
        return;
    };
    require_tool("curl");
    let dir = TempDir::new("tracer-tls");
    let (cert, key) = certificate(dir.path());
    // curl -> nginx (TLS) -> Node https (OpenSSL inside node, memory BIOs)
    // -> Python http.server over ssl; all running before the agent.
    let backend = tls_backend(&cert, &key, &[]);
    let backend_port = backend.port;
    let node_port = free_port();
    let _node = Listening::start(
        &mut node_tls(&[
            "serve",
            &node_port.to_string(),
            &cert,
            &key,
            &backend_port.to_string(),
        ]),
        node_port,
    );
    // Kept-alive upstream connections (a new one per request would be a
    // TLS 1.2 resumption whose first request rides with the handshake's
    // end: not stamped, see the design note). The client's Host passed on:
    // the hop is a forward (nginx's defaults, linked by its upstream hook:
    // `nginx_proxying_with_its_defaults_links_upstream_calls_under_tls`).
    let nginx = Nginx::start(&format!(
        "upstream node {{ server 127.0.0.1:{node_port}; keepalive 4; }} \
         server {{ listen 127.0.0.1:{{port}} ssl; ssl_certificate {cert}; \
         ssl_certificate_key {key}; \
         location / {{ proxy_pass https://node; proxy_ssl_verify off; \
         proxy_http_version 1.1; proxy_set_header Connection \"\"; \
         proxy_set_header Host $http_host; }} }}"
    ));
    let base = format!("https://127.0.0.1:{}", nginx.port);
    let receiver = Receiver::start(Otlp::Grpc);
    let agent = Agent::start(&receiver.agent_args());

    let chain = paths("/chain-tls-", 5);
    for p in &chain {
        curl_ok(&format!("{base}{p}"), &[]);
    }
    // A Node https client (one keep-alive connection) straight to nginx,
    // which forwards to Node's server as well.
    let from_node = paths("/node-client-", 5);
    let out = run_ok(&mut node_tls(&["get", &base, "/node-client-", "5"]));
    assert!(out.contains("done"), "{out}");

    let want = chain.len() * 6 + from_node.len() * 6;
    receiver.wait_for(Duration::from_secs(30), |s| {
        s.iter()
            .filter(|s| {
                let p = attr(s, "url.path");
                p.starts_with("/chain-tls-") || p.starts_with("/node-client-")
            })
            .count()
            >= want
    });
    let out = agent.stop(SETTLE);
    let spans = receiver.spans();
    let e = &out.stderr;
    for (p, first) in chain
        .iter()
        .map(|p| (p, "curl"))
        .chain(from_node.iter().map(|p| (p, "tls_proxy")))
    {
        // The first client: the one connected to nginx (Node's own client
        // span, to the backend, is a tls_proxy client span too, and names
        // nginx's Host, which it forwards).
        let nginx_port = nginx.port.to_string();
        let first: Vec<&Value> = spans
            .iter()
            .filter(|s| {
                attr(s, "url.path") == *p
                    && f(s, "kind") == "CLIENT"
                    && res(s, "service.name").starts_with(first)
                    && attr(s, "network.peer.port") == nginx_port
            })
            .collect();
        assert_eq!(first.len(), 1, "{p}: {first:#?}\nagent:\n{e}");
        let hops = [
            first[0],
            one(&spans, p, "nginx", "SERVER", e),
            one(&spans, p, "nginx", "CLIENT", e),
            one(&spans, p, "tls_proxy", "SERVER", e),
            // The Node client span is the one whose parent is Node's server
            // span (the first hop from Node is a client span too).
            spans
                .iter()
                .find(|s| {
                    attr(s, "url.path") == *p
                        && f(s, "kind") == "CLIENT"
                        && res(s, "service.name").starts_with("tls_proxy")
                        && !f(s, "parent_span_id").is_empty()
                        && attr(s, "network.peer.port") == backend_port.to_string()
                })
                .unwrap_or_else(|| panic!("Node's client span of {p}\nagent:\n{e}")),
            one(&spans, p, "tls_backend", "SERVER", e),
        ];
        let table: Vec<String> = hops
            .iter()
            .map(|s| {
                format!(
                    "{} {} {} status={} {} parent={} span={}",
                    f(s, "kind"),
                    res(s, "service.name"),
                    attr(s, "server.port"),
                    attr(s, "http.response.status_code"),
                    f(s, "status_message"),
                    f(s, "parent_span_id"),
                    f(s, "span_id")
                )
            })
            .collect();
        for s in hops {
            assert_eq!(attr(s, "url.scheme"), "https", "{s:#?}");
            assert_eq!(
                attr(s, "http.response.status_code"),
                "200",
                "{p}: {table:#?}\nagent:\n{e}"
            );
            assert_eq!(
                f(s, "trace_id"),
                f(hops[0], "trace_id"),
                "one trace for {p}: {table:#?}\nagent:\n{e}"
            );
        }
        assert_eq!(f(hops[0], "parent_span_id"), "", "{p} starts at its client");
        for w in hops.windows(2) {
            assert_eq!(
                f(w[1], "parent_span_id"),
                f(w[0], "span_id"),
                "{p}: parent of {:#?} is {:#?}\nagent:\n{e}",
                w[1],
                w[0]
            );
        }
    }
    assert_eq!(out.counter("tls.calls_without_conn"), Some(0), "{e}");
    assert!(
        out.counter("tls.calls_linked_outside").unwrap_or(0) >= want as u64 / 2,
        "{e}"
    );
    assert!(
        !e.lines()
            .any(|l| l.contains("TLS not covered") && l.contains("node")),
        "{e}"
    );
}

/// nginx as a TLS reverse proxy with its defaults: `proxy_pass https://`
/// (and `http://`) with no upstream keepalive, so a new upstream
/// connection per request, HTTP/1.0 and the upstream's address as Host:
/// no forwarding evidence, and the TLS upstream's request is written once
/// its handshake is done, long after the hooked call returned. curl's
/// requests come over TLS. nginx's upstream hook names sockets (the
/// request's, the upstream one it opens) while TLS requests and calls are
/// on their plaintext layers: every upstream call still links to the
/// request it serves.
#[test]
fn nginx_proxying_with_its_defaults_links_upstream_calls_under_tls() {
    let Some(_g) = root_test("nginx_proxying_with_its_defaults_links_upstream_calls_under_tls")
    else {
        return;
    };
    require_tool("curl");
    let dir = TempDir::new("tracer-tls");
    let (cert, key) = certificate(dir.path());
    let tls_up = tls_backend(&cert, &key, &[]);
    let plain_up = Backend::start("plain_up", None);
    let nginx = Nginx::start(&format!(
        "server {{ listen 127.0.0.1:{{port}} ssl; ssl_certificate {cert}; \
         ssl_certificate_key {key}; \
         location /plain/ {{ proxy_pass http://127.0.0.1:{}; }} \
         location / {{ proxy_pass https://127.0.0.1:{}; }} }}",
        plain_up.port, tls_up.port
    ));
    let base = format!("https://127.0.0.1:{}", nginx.port);
    let receiver = Receiver::start(Otlp::Grpc);
    let agent = Agent::start(&receiver.agent_args());

    let to_tls = paths("/tls-up-", 4);
    let to_plain = paths("/plain/up-", 4);
    for (a, b) in to_tls.iter().zip(&to_plain) {
        curl_ok(&format!("{base}{a}"), &[]);
        curl_ok(&format!("{base}{b}"), &[]);
    }
    let want = (to_tls.len() + to_plain.len()) * 4;
    receiver.wait_for(Duration::from_secs(30), |s| {
        s.iter()
            .filter(|s| {
                let p = attr(s, "url.path");
                p.starts_with("/tls-up-") || p.starts_with("/plain/up-")
            })
            .count()
            >= want
    });
    let out = agent.stop(SETTLE);
    let spans = receiver.spans();
    let e = &out.stderr;
    for (p, backend) in to_tls
        .iter()
        .map(|p| (p, "tls_backend"))
        .chain(to_plain.iter().map(|p| (p, "plain_up")))
    {
        let hops = [
            one(&spans, p, "curl", "CLIENT", e),
            one(&spans, p, "nginx", "SERVER", e),
            one(&spans, p, "nginx", "CLIENT", e),
            one(&spans, p, backend, "SERVER", e),
        ];
        assert_eq!(f(hops[0], "parent_span_id"), "", "{p} starts at curl");
        for w in hops.windows(2) {
            assert_eq!(
                f(w[1], "parent_span_id"),
                f(w[0], "span_id"),
                "{p}: parent of {:#?} is {:#?}\nagent:\n{e}",
                w[1],
                w[0]
            );
            assert_eq!(f(w[1], "trace_id"), f(hops[0], "trace_id"), "{p}");
        }
        let scheme = if backend == "tls_backend" {
            "https"
        } else {
            "http"
        };
        assert_eq!(attr(hops[2], "url.scheme"), scheme, "{p}");
    }
    // The upstream calls linked through the hook, not by another rule.
    assert!(
        out.counter("correlation.runtime_parent").unwrap_or(0) >= 8,
        "{e}"
    );
    assert_eq!(
        out.counter("correlation.runtime_no_request"),
        Some(0),
        "{e}"
    );
}

/// Python's asyncio TLS: `SSLObject` over two `MemoryBIO`s in the same
/// `libssl.so.3` that nginx and curl use with socket BIOs. An aiohttp
/// service serves HTTPS and calls nginx over HTTPS on one event loop:
/// curl -> aiohttp (TLS) -> nginx (TLS). Its TLS objects are marked at
/// `SSL_set_bio` and their plaintext takes the event loop's neighbouring
/// receive or send, so both hops link exactly, across processes.
#[test]
fn asyncio_tls_server_and_client_over_memory_bios() {
    let Some(_g) = root_test("asyncio_tls_server_and_client_over_memory_bios") else {
        return;
    };
    require_tool("curl");
    let dir = TempDir::new("tracer-tls");
    let (cert, key) = certificate(dir.path());
    let nginx = tls_nginx(&cert, &key);
    let receiver = Receiver::start(Otlp::Grpc);
    let agent = Agent::start(&receiver.agent_args());
    // Started after the agent: its TLS objects are made (and marked) while
    // the probes are on.
    let aio_port = free_port();
    let _aio = Listening::start(
        Command::new(python())
            .arg(py_script("aio_proxy.py"))
            .args([&aio_port.to_string(), &nginx.port.to_string()])
            .args(["--cert", &cert, "--key", &key, "--backend-tls"])
            .env("OTEL_SERVICE_NAME", "aio-tls"),
        aio_port,
    );
    let base = format!("https://127.0.0.1:{aio_port}");
    let chain = paths("/aio-tls-", 6);
    for p in &chain {
        curl_ok(&format!("{base}{p}"), &[]);
    }
    wait_for_paths(&receiver, "/aio-tls-", chain.len() * 4);
    let out = agent.stop(SETTLE);
    let spans = receiver.spans();
    let e = &out.stderr;
    for p in &chain {
        let hops = [
            one(&spans, p, "curl", "CLIENT", e),
            one(&spans, p, "aio-tls", "SERVER", e),
            one(&spans, p, "aio-tls", "CLIENT", e),
            one(&spans, p, "nginx", "SERVER", e),
        ];
        for s in hops {
            assert_eq!(attr(s, "url.scheme"), "https", "{s:#?}");
            assert_eq!(attr(s, "http.response.status_code"), "200", "{s:#?}");
        }
        // Across processes, by the TLS records' sequence numbers: exact.
        for (c, s) in [(hops[0], hops[1]), (hops[2], hops[3])] {
            assert_eq!(
                f(s, "parent_span_id"),
                f(c, "span_id"),
                "{p}: server {s:#?} under client {c:#?}\nagent:\n{e}"
            );
            assert_eq!(f(s, "trace_id"), f(c, "trace_id"));
        }
        // Inside the event loop: a forward (same method, target and Host,
        // one such request in flight).
        assert_eq!(
            f(hops[2], "parent_span_id"),
            f(hops[1], "span_id"),
            "{p}: parent of the asyncio client span {:#?}\nagent:\n{e}",
            hops[2]
        );
    }
    assert_eq!(out.counter("tls.calls_without_conn"), Some(0), "{e}");
    assert!(
        out.counter("kernel.tls_membio_objects").unwrap_or(0) >= 2,
        "{e}"
    );
    assert!(
        out.counter("tls.calls_linked_outside").unwrap_or(0) >= chain.len() as u64 * 2,
        "{e}"
    );
    assert!(
        !e.lines()
            .any(|l| l.contains("TLS not covered") && l.contains("python")),
        "{e}"
    );
}

/// The paths curl asks a server under test for: `h2` over HTTP/2, `h1`
/// over HTTP/1.1.
fn curl_paths(prefix: &str) -> (Vec<String>, Vec<String>) {
    (
        paths(&format!("{prefix}-h2-"), 4),
        paths(&format!("{prefix}-h1-"), 3),
    )
}

/// `dir`/www holding a file for each of [`curl_paths`] of `prefix`.
fn docroot(dir: &std::path::Path, prefix: &str) -> std::path::PathBuf {
    let www = dir.join("www");
    std::fs::create_dir(&www).unwrap();
    let (h2, h1) = curl_paths(prefix);
    for p in h2.iter().chain(&h1) {
        std::fs::write(www.join(&p[1..]), "tls ok\n").unwrap();
    }
    www
}

/// Runs the agent while curl GETs [`curl_paths`] of `prefix` from the
/// HTTPS server on `port`, and checks the curl client span and the
/// `service` server span of each: https, 200, GET, the version, and the
/// server's parent its own client span, h2 ones too (curl's preface and
/// HEADERS records often arrive in one receive, with the end of the
/// handshake or not: those reads are proven together), and that the
/// server's executable (`exe`) is never reported as not covered. Returns
/// the agent's output.
fn curl_both_versions(port: u16, prefix: &str, service: &str, exe: &str) -> AgentOutput {
    let (h2, h1) = curl_paths(prefix);
    let receiver = Receiver::start(Otlp::Grpc);
    let agent = Agent::start(&receiver.agent_args());
    let base = format!("https://127.0.0.1:{port}");
    for p in &h2 {
        curl_ok(&format!("{base}{p}"), &["--http2"]);
    }
    for p in &h1 {
        curl_ok(&format!("{base}{p}"), &["--http1.1"]);
    }
    // Every client span and the HTTP/1.1 server spans; the agent's stop
    // flushes the rest.
    wait_for_paths(&receiver, prefix, h2.len() + h1.len() * 2);
    let out = agent.stop(SETTLE);
    let spans = receiver.spans();
    let e = &out.stderr;
    for p in &h1 {
        assert_https_linked(&spans, p, ("curl", service), "1.1", e);
    }
    for p in &h2 {
        assert_https_linked(&spans, p, ("curl", service), "2", e);
    }
    eprintln!(
        "{service}: {} h2 server spans linked, {} reads proven with others of their receive",
        h2.len(),
        out.counter("tls.calls_proven_together").unwrap_or(0)
    );
    assert!(
        !e.lines()
            .any(|l| l.contains("TLS not covered") && l.contains(exe)),
        "{e}"
    );
    out
}

/// hypercorn (asyncio, Python's `h2`) over TLS: HTTP/1.1 and h2 by ALPN,
/// curl as the client. Every server span is linked to its own curl span,
/// h2 ones too: curl's HEADERS record often shares a receive with its
/// preface record (and with the end of the handshake), and the reads of
/// such a receive are proven together.
#[test]
fn hypercorn_h2_and_http1_over_tls() {
    let Some(_g) = root_test("hypercorn_h2_and_http1_over_tls") else {
        return;
    };
    require_tool("curl");
    let dir = TempDir::new("tracer-tls");
    let (cert, key) = certificate(dir.path());
    let port = free_port();
    let _server = Listening::start(
        Command::new(workspace().join("target/pyenv/bin/hypercorn"))
            .current_dir(py_script("asgi_hello.py").parent().unwrap())
            .args(["--bind", &format!("127.0.0.1:{port}")])
            .args(["--certfile", &cert, "--keyfile", &key, "asgi_hello:app"])
            .env("OTEL_SERVICE_NAME", "hyper-tls"),
        port,
    );
    // (Before the first SETTINGS of Python's h2, seven settings, was taken
    // for an HTTP/2 server's, every h2 server span was missing, uncounted.)
    curl_both_versions(port, "/up", "hyper-tls", "python");
}

/// h2o over TLS (HTTP/2 by ALPN, and HTTP/1.1): its own BIO, declared as
/// an fd BIO, buffers the ciphertext that its event loop reads and writes
/// outside the TLS calls. Seen at `SSL_set_bio` as not the library's own
/// BIO, its TLS objects get the memory-BIO rules: every server span linked
/// to its curl span, h2 ones too (curl's preface and HEADERS records read
/// from one receive are proven together; before, that request was lost).
#[test]
fn h2o_over_tls_with_its_own_bio() {
    let Some(_g) = root_test("h2o_over_tls_with_its_own_bio") else {
        return;
    };
    require_tool("curl");
    require_tool("h2o");
    let dir = TempDir::new("tracer-tls");
    let (cert, key) = certificate(dir.path());
    let www = docroot(dir.path(), "/h2o");
    let port = free_port();
    // As root, h2o drops to `user`: root keeps the temporary files readable.
    let conf = dir.path().join("h2o.conf");
    std::fs::write(
        &conf,
        format!(
            "user: root\nnum-threads: 1\nlisten:\n  port: {port}\n  host: 127.0.0.1\n  ssl:\n    \
             certificate-file: {cert}\n    key-file: {key}\nhosts:\n  default:\n    paths:\n      \
             /:\n        file.dir: {}\n",
            www.display()
        ),
    )
    .unwrap();
    let _h2o = Listening::start(
        Command::new("h2o")
            .arg("-c")
            .arg(&conf)
            .env("OTEL_SERVICE_NAME", "h2o-tls"),
        port,
    );
    let out = curl_both_versions(port, "/h2o", "h2o-tls", "h2o");
    assert!(
        out.counter("kernel.tls_membio_objects").unwrap_or(0) >= 7,
        "{}",
        out.stderr
    );
}

/// apache2's mod_ssl over TLS (h2 by ALPN through mod_http2, and
/// HTTP/1.1): its filter BIOs are application methods (not the library's
/// socket BIO), marked at `SSL_set_bio`. Its input BIO reads the socket
/// inside the TLS call, so most reads link as on a socket BIO; a request
/// read with the end of the handshake (curl writes it at once) is read
/// outside any probed call and now takes that receive, proven by its
/// length (before, such server spans were missing); reads served from
/// OpenSSL's buffer after a receive of several records are proven from it
/// (before, such h2 server spans could stay roots).
#[test]
fn apache2_over_tls_with_mod_ssl() {
    let Some(_g) = root_test("apache2_over_tls_with_mod_ssl") else {
        return;
    };
    require_tool("curl");
    require_tool("apache2");
    let dir = TempDir::new("tracer-tls");
    let (cert, key) = certificate(dir.path());
    let www = docroot(dir.path(), "/apache");
    // Its workers run as www-data: the documents must be readable to them
    // (the key is read before the switch).
    for d in [dir.path(), www.as_path()] {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let port = free_port();
    let root = dir.path().display();
    let modules = ["mpm_event", "authz_core", "mime", "ssl", "http2"]
        .map(|m| format!("LoadModule {m}_module /usr/lib/apache2/modules/mod_{m}.so\n"))
        .concat();
    let conf = dir.path().join("apache2.conf");
    std::fs::write(
        &conf,
        format!(
            "ServerRoot {root}\nListen 127.0.0.1:{port}\nPidFile {root}/apache2.pid\n\
             ErrorLog {root}/error.log\n{modules}TypesConfig /etc/mime.types\n\
             User www-data\nGroup www-data\nServerName localhost\nDocumentRoot {}\n\
             <Directory {}>\nRequire all granted\n</Directory>\nProtocols h2 http/1.1\n\
             SSLEngine on\nSSLCertificateFile {cert}\nSSLCertificateKeyFile {key}\n",
            www.display(),
            www.display()
        ),
    )
    .unwrap();
    let _apache = Listening::start(
        Command::new("apache2")
            .arg("-f")
            .arg(&conf)
            .arg("-DFOREGROUND")
            .env("OTEL_SERVICE_NAME", "apache-tls"),
        port,
    );
    curl_both_versions(port, "/apache", "apache-tls", "apache2");
}

#[test]
fn tls_server_started_after_the_agent() {
    let Some(_g) = root_test("tls_server_started_after_the_agent") else {
        return;
    };
    require_tool("curl");
    let dir = TempDir::new("tracer-tls");
    let (cert, key) = certificate(dir.path());
    let receiver = Receiver::start(Otlp::Grpc);
    let agent = Agent::start(&receiver.agent_args());
    let nginx = tls_nginx(&cert, &key);
    // The agent looks for new processes every half second.
    std::thread::sleep(Duration::from_millis(1200));
    let base = format!("https://127.0.0.1:{}", nginx.port);
    let later = paths("/tls-later-", 5);
    for p in &later {
        curl_ok(&format!("{base}{p}"), &[]);
    }
    wait_for_paths(&receiver, "/tls-later-", later.len() * 2);
    let out = agent.stop(SETTLE);
    let spans = receiver.spans();
    for p in &later {
        assert_https_linked(&spans, p, ("curl", "nginx"), "1.1", &out.stderr);
    }
    let server_pids: Vec<String> = spans
        .iter()
        .filter(|s| attr(s, "url.path").starts_with("/tls-later-") && f(s, "kind") == "SERVER")
        .map(|s| res(s, "process.pid"))
        .collect();
    let workers: Vec<String> = nginx.worker_pids().iter().map(u32::to_string).collect();
    assert!(
        server_pids.iter().all(|p| workers.contains(p)),
        "server spans from the nginx started after the agent: {server_pids:?} vs {workers:?}"
    );
}

/// The shared library OpenSSL's CLI maps (from `ldd`).
fn libssl_of_openssl() -> String {
    let ldd = run_ok(Command::new("ldd").arg(which("openssl")));
    ldd.lines()
        .filter(|l| l.contains("libssl.so"))
        .find_map(|l| l.split("=>").nth(1)?.split_whitespace().next())
        .map(String::from)
        .unwrap_or_else(|| panic!("openssl maps no libssl: {ldd}"))
}

/// A server started after the agent in a mount namespace of its own,
/// where its libssl is another file than the host's (a copy bound over the
/// same path, as a container's image brings its own): the agent reads the
/// library through the process's root, probes that file, links its spans,
/// and detaches it when the server is gone.
#[test]
fn tls_library_inside_another_mount_namespace_is_probed_there() {
    let Some(_g) = root_test("tls_library_inside_another_mount_namespace_is_probed_there") else {
        return;
    };
    for tool in ["curl", "openssl", "unshare", "ldd"] {
        require_tool(tool);
    }
    let dir = TempDir::new("tracer-tls-ns");
    let (cert, key) = certificate(dir.path());
    let host_lib = std::fs::canonicalize(libssl_of_openssl()).unwrap();
    let copy = dir.path().join("libssl-copy.so");
    std::fs::copy(&host_lib, &copy).unwrap();
    let receiver = Receiver::start(Otlp::Grpc);
    let agent = Agent::start(&receiver.agent_args());
    let port = free_port();
    let server = Listening::start(
        Command::new("unshare")
            .args(["-m", "--propagation", "private", "sh", "-c"])
            .arg(r#"mount --bind "$1" "$2" && shift 2 && exec "$@""#)
            .arg("sh")
            .arg(&copy)
            .arg(&host_lib)
            .args(["openssl", "s_server", "-quiet", "-www", "-accept"])
            .arg(port.to_string())
            .args(["-cert", &cert, "-key", &key]),
        port,
    );
    // unshare and sh exec: the server keeps the child's pid.
    let in_ns = format!("/proc/{}/root{}", server.pid(), host_lib.display());
    // Found by its exec, or by the half-second scan.
    std::thread::sleep(Duration::from_millis(1200));
    let base = format!("https://127.0.0.1:{port}");
    let ns_paths = paths("/in-ns-", 4);
    for p in &ns_paths {
        curl_ok(&format!("{base}{p}"), &["--http1.1"]);
    }
    wait_for_paths(&receiver, "/in-ns-", ns_paths.len() * 2);
    drop(server);
    std::thread::sleep(SETTLE);
    let out = agent.stop(SETTLE);
    let spans = receiver.spans();
    for p in &ns_paths {
        assert_https_linked(&spans, p, ("curl", "openssl"), "1.1", &out.stderr);
    }
    let logged = |what: &str| {
        out.stderr
            .lines()
            .any(|l| l.contains(what) && l.contains(&in_ns))
    };
    assert!(
        logged("TLS plaintext probes attached"),
        "{in_ns}\n{}",
        out.stderr
    );
    assert!(
        logged("probes detached: no process maps the file"),
        "{in_ns}\n{}",
        out.stderr
    );
}

/// A server whose first read shakes hands (Python's ssl accepting with
/// `do_handshake_on_connect=False`, as servers that put the TLS object in
/// accept state and go straight to `SSL_read` do): the read's receives
/// start with the ClientHello, and it sends the server's flight (and TLS
/// 1.3 session tickets) before the request's record comes. Under TLS 1.3
/// and 1.2, from curl and Python, every request's server span is linked
/// to its client span and starts after it.
#[test]
fn openssl_server_whose_first_read_shakes_hands_links_its_spans() {
    let Some(_g) = root_test("openssl_server_whose_first_read_shakes_hands_links_its_spans") else {
        return;
    };
    require_tool("curl");
    let dir = TempDir::new("tracer-tls");
    let (cert, key) = certificate(dir.path());
    let server = tls_backend(&cert, &key, &["lazy"]);
    let port = server.port;
    let receiver = Receiver::start(Otlp::Grpc);
    let agent = Agent::start(&receiver.agent_args());
    let base = format!("https://127.0.0.1:{port}");
    let (v13, v12, py) = (
        paths("/lazy-13-", 3),
        paths("/lazy-12-", 3),
        paths("/lazy-py-", 3),
    );
    for p in &v13 {
        curl_ok(&format!("{base}{p}"), &["--tlsv1.3"]);
    }
    for p in &v12 {
        curl_ok(&format!("{base}{p}"), &["--tlsv1.2", "--tls-max", "1.2"]);
    }
    let mut args = vec!["urllib", base.as_str()];
    args.extend(py.iter().map(String::as_str));
    py_client(&args);
    wait_for_paths(&receiver, "/lazy-", 2 * (v13.len() + v12.len() + py.len()));
    let out = agent.stop(SETTLE);
    let spans = receiver.spans();
    let curl = v13.iter().chain(&v12).map(|p| (p, "curl"));
    for (p, client) in curl.chain(py.iter().map(|p| (p, "tls_client"))) {
        assert_https_linked(&spans, p, (client, "tls_backend"), "1.1", &out.stderr);
        let at = |kind: &str| {
            let s = one(
                &spans,
                p,
                if kind == "CLIENT" {
                    client
                } else {
                    "tls_backend"
                },
                kind,
                &out.stderr,
            );
            s["start_time_unix_nano"].as_u64().expect("a start time")
        };
        assert!(
            at("SERVER") >= at("CLIENT"),
            "{p}: the server span starts after its client's\n{}",
            out.stderr
        );
    }
}

/// GnuTLS on both ends of real programs: gnutls-serv (its HTTP/1.0
/// answers have no length: the body ends when the connection closes)
/// serving curl (OpenSSL) and wget (GnuTLS). wget runs after the agent and
/// exits within milliseconds; the library is probed already, because
/// gnutls-serv maps it.
#[test]
fn gnutls_server_and_client_are_traced_like_openssl() {
    let Some(_g) = root_test("gnutls_server_and_client_are_traced_like_openssl") else {
        return;
    };
    for tool in ["gnutls-serv", "wget", "curl"] {
        require_tool(tool);
    }
    let dir = TempDir::new("tracer-tls");
    let (cert, key) = certificate(dir.path());
    let port = free_port();
    let _serv = Listening::start(
        Command::new("gnutls-serv").args([
            "--http",
            "--x509certfile",
            &cert,
            "--x509keyfile",
            &key,
            "-p",
            &port.to_string(),
        ]),
        port,
    );
    let base = format!("https://127.0.0.1:{port}");
    let receiver = Receiver::start(Otlp::Grpc);
    let agent = Agent::start(&receiver.agent_args());

    let curl_paths = paths("/gnutls-curl-", 3);
    for p in &curl_paths {
        curl_ok(&format!("{base}{p}"), &[]);
    }
    let wget_paths = paths("/gnutls-wget-", 3);
    for p in &wget_paths {
        wget_ok(&format!("{base}{p}"));
    }
    wait_for_paths(
        &receiver,
        "/gnutls-",
        2 * (curl_paths.len() + wget_paths.len()),
    );
    let out = agent.stop(SETTLE);
    let spans = receiver.spans();
    for p in &curl_paths {
        assert_https_linked(&spans, p, ("curl", "gnutls-serv"), "1.1", &out.stderr);
    }
    for p in &wget_paths {
        assert_https_linked(&spans, p, ("wget", "gnutls-serv"), "1.1", &out.stderr);
    }
    assert!(
        out.stderr.contains("libgnutls"),
        "GnuTLS probed: {}",
        out.stderr
    );
    let reported: Vec<&str> = out
        .stderr
        .lines()
        .filter(|l| l.contains("TLS not covered") && (l.contains("gnutls") || l.contains("wget")))
        .collect();
    assert!(reported.is_empty(), "{reported:#?}");
}

/// A client that lives a few milliseconds, whose TLS library no running
/// process maps (wget's GnuTLS beside an OpenSSL nginx): the host's TLS
/// libraries are probed from the agent's start, so its first call is seen,
/// though no /proc scan ever finds the process.
#[test]
fn short_lived_tls_clients_are_covered_from_their_first_call() {
    let Some(_g) = root_test("short_lived_tls_clients_are_covered_from_their_first_call") else {
        return;
    };
    require_tool("wget");
    let dir = TempDir::new("tracer-tls");
    let (cert, key) = certificate(dir.path());
    let nginx = tls_nginx(&cert, &key);
    let base = format!("https://127.0.0.1:{}", nginx.port);
    let receiver = Receiver::start(Otlp::Grpc);
    let agent = Agent::start(&receiver.agent_args());
    let wget_paths = paths("/tls-wget-", 3);
    for p in &wget_paths {
        wget_ok(&format!("{base}{p}"));
    }
    wait_for_paths(&receiver, "/tls-wget-", 2 * wget_paths.len());
    let out = agent.stop(SETTLE);
    let spans = receiver.spans();
    for p in &wget_paths {
        assert_https_linked(&spans, p, ("wget", "nginx"), "1.1", &out.stderr);
    }
    assert!(
        out.stderr.contains("host_libraries") && out.stderr.contains("libgnutls"),
        "{}",
        out.stderr
    );
}

/// A client whose TLS library is its own executable (Node links OpenSSL
/// statically), started after the agent with no other Node process
/// running, that makes one request 300 ms after it starts and exits: the
/// kernel's exec event gets it probed before that request (a /proc scan
/// every 500 ms alone misses some of them, nearly always).
#[test]
fn node_clients_started_later_are_probed_as_they_start() {
    let Some(_g) = root_test("node_clients_started_later_are_probed_as_they_start") else {
        return;
    };
    require_tool("node");
    let dir = TempDir::new("tracer-tls");
    let (cert, key) = certificate(dir.path());
    let nginx = tls_nginx(&cert, &key);
    let receiver = Receiver::start(Otlp::Grpc);
    let agent = Agent::start(&receiver.agent_args());
    let node_paths = paths("/tls-node-once-", 4);
    for p in &node_paths {
        let code = format!(
            "setTimeout(() => require('https').get({{host: '127.0.0.1', port: {}, path: '{p}', \
             rejectUnauthorized: false, agent: false}}, r => {{ r.resume(); \
             r.on('end', () => process.exit(r.statusCode === 200 ? 0 : 1)); }})\
             .on('error', e => {{ console.error(e); process.exit(1); }}), 300);",
            nginx.port
        );
        run_ok(Command::new("node").arg("-e").arg(code));
    }
    wait_for_paths(&receiver, "/tls-node-once-", 2 * node_paths.len());
    let out = agent.stop(SETTLE);
    let spans = receiver.spans();
    for p in &node_paths {
        assert_https_linked(&spans, p, ("node", "nginx"), "1.1", &out.stderr);
    }
    assert!(
        out.stderr
            .contains("as they start (the kernel's exec events"),
        "{}",
        out.stderr
    );
}

#[test]
fn uncovered_tls_library_is_reported_and_makes_no_span() {
    let Some(_g) = root_test("uncovered_tls_library_is_reported_and_makes_no_span") else {
        return;
    };
    let dir = TempDir::new("tracer-tls");
    let (cert, key) = certificate(dir.path());
    let agent = Agent::start(&["--print", "traces", "--output", "json"]);
    let out = run_ok(
        Command::new(python())
            .arg(py_script("grpc_tls.py"))
            .args([&cert, &key, "5"]),
    );
    assert!(out.contains("done"), "{out}");
    let out = agent.stop(SETTLE);
    let spans = out.json();
    let grpc: Vec<&Value> = spans
        .iter()
        .filter(|s| {
            let name = f(s, "name");
            name.contains("tlstest") || name.contains("Say")
        })
        .collect();
    assert!(grpc.is_empty(), "spans from ciphertext: {grpc:#?}");
    // Reported once for its executable, though it made several
    // connections (the host's other programs may be reported too).
    let reported: Vec<&str> = out
        .stderr
        .lines()
        .filter(|l| l.contains("TLS not covered") && l.contains("python"))
        .collect();
    assert_eq!(reported.len(), 1, "{}", out.stderr);
    assert!(out.counter("tls.not_covered").unwrap_or(0) >= 1);
    assert!(out.counter("connections.silenced_tls").unwrap_or(0) >= 1);
}

/// A short-lived client whose TLS the agent cannot probe (Java's own,
/// JSSE) makes its requests and exits before the agent's wait for its
/// connection's plaintext (2 s) ends: it is still reported as not covered,
/// once, by its executable; its ciphertext makes no span, and nginx's
/// server spans are there.
#[test]
fn short_lived_uncovered_tls_client_is_reported_after_it_exits() {
    let Some(_g) = root_test("short_lived_uncovered_tls_client_is_reported_after_it_exits") else {
        return;
    };
    require_tool("java");
    let dir = TempDir::new("tracer-tls");
    let (cert, key) = certificate(dir.path());
    let nginx = tls_nginx(&cert, &key);
    let agent = Agent::start(&["--print", "traces", "--output", "json"]);
    let java_paths = paths("/tls-java-once-", 2);
    let urls: Vec<String> = java_paths
        .iter()
        .map(|p| format!("https://127.0.0.1:{}{p}", nginx.port))
        .collect();
    let out = run_ok(
        Command::new("java")
            .arg(workspace().join("tests/fixtures/tls/HttpsGet.java"))
            .args(&urls),
    );
    assert!(out.contains("done"), "{out}");
    // Past the wait for plaintext, the client long gone.
    std::thread::sleep(Duration::from_secs(3));
    let out = agent.stop(SETTLE);
    let spans = out.json();
    for p in &java_paths {
        one(&spans, p, "nginx", "SERVER", &out.stderr);
    }
    let from_java: Vec<&Value> = spans
        .iter()
        .filter(|s| res(s, "service.name").contains("java") || f(s, "kind") == "CLIENT")
        .filter(|s| attr(s, "url.path").starts_with("/tls-java-once-"))
        .collect();
    assert!(
        from_java.is_empty(),
        "spans from ciphertext: {from_java:#?}"
    );
    let reported: Vec<&str> = out
        .stderr
        .lines()
        .filter(|l| l.contains("TLS not covered") && l.contains("/bin/java"))
        .collect();
    assert_eq!(reported.len(), 1, "{}", out.stderr);
}

#[test]
fn tls_probes_leave_nothing_attached_after_exit() {
    let Some(_g) = root_test("tls_probes_leave_nothing_attached_after_exit") else {
        return;
    };
    require_tool("bpftool");
    let dir = TempDir::new("tracer-tls");
    let (cert, key) = certificate(dir.path());
    // nginx maps libssl.so.3: its probes are attached while the agent runs.
    let _nginx = tls_nginx(&cert, &key);
    for signal in [libc::SIGINT, libc::SIGTERM] {
        let agent = Agent::start(&["--print", "none", "--profile-hz", "0"]);
        let ids: Vec<u64> = agent.program_ids.iter().map(|&i| u64::from(i)).collect();
        let names = bpftool_names(&ids);
        let tls_ids: Vec<u64> = ids
            .iter()
            .zip(&names)
            .filter(|(_, n)| n.starts_with("ssl_"))
            .map(|(i, _)| *i)
            .collect();
        assert_eq!(tls_ids.len(), 7, "the TLS programs are loaded: {names:?}");
        let attached = bpftool_attached();
        for id in &tls_ids {
            assert!(
                attached.contains(id),
                "TLS program {id} attached while running"
            );
        }
        // And nginx's runtime hook (entry and return).
        let hooks: Vec<u64> = ids
            .iter()
            .zip(&names)
            .filter(|(_, n)| n.starts_with("ngx_upstream"))
            .map(|(i, _)| *i)
            .collect();
        assert_eq!(hooks.len(), 2, "the nginx hook programs: {names:?}");
        for id in &hooks {
            assert!(
                attached.contains(id),
                "hook program {id} attached while running"
            );
        }
        // SAFETY: kill(2) on the agent we started.
        unsafe { libc::kill(agent.pid() as i32, signal) };
        let out = agent.stop(Duration::ZERO);
        assert_eq!(out.code, Some(0), "{}", out.stderr);
        let loaded = bpftool_ids("prog", "id");
        let attached = bpftool_attached();
        for id in &ids {
            assert!(!loaded.contains(id), "program {id} loaded after exit");
            assert!(!attached.contains(id), "program {id} attached after exit");
        }
    }
}

/// Once the agent knows a connection carries TLS it tells the kernel to
/// stop copying its ciphertext; calls reported just before that verdict
/// landed, their packets after (Node's server sends its session tickets in
/// a write of their own, as the verdict is on its way), were counted as
/// lost bytes (1-3 holes of ~160 bytes per 5 connections). They are bytes
/// not copied by request: 20 fresh connections to Node's https server
/// leave no hole and no byte without its call, and every request is
/// traced.
#[test]
fn ciphertext_after_its_verdict_is_never_counted_as_lost() {
    let Some(_g) = root_test("ciphertext_after_its_verdict_is_never_counted_as_lost") else {
        return;
    };
    require_tool("curl");
    require_tool("node");
    let dir = TempDir::new("tracer-tls");
    let (cert, key) = certificate(dir.path());
    let port = free_port();
    let server = format!(
        "const fs = require('fs'); require('https').createServer({{key: fs.readFileSync('{key}'), \
         cert: fs.readFileSync('{cert}')}}, (q, r) => r.end('hello ' + q.url + '\\n'))\
         .listen({port}, '127.0.0.1');"
    );
    let _node = Listening::start(Command::new("node").arg("-e").arg(server), port);
    let receiver = Receiver::start(Otlp::Grpc);
    let agent = Agent::start(&receiver.agent_args());
    let base = format!("https://127.0.0.1:{port}");
    let fresh = paths("/tls-fresh-", 20);
    for p in &fresh {
        curl_ok(&format!("{base}{p}"), &["--http1.1"]);
    }
    wait_for_paths(&receiver, "/tls-fresh-", 2 * fresh.len());
    let out = agent.stop(SETTLE);
    let spans = receiver.spans();
    for p in &fresh {
        assert_https_linked(&spans, p, ("curl", "node"), "1.1", &out.stderr);
    }
    assert!(
        out.counter("connections.silenced_tls").unwrap() >= 20,
        "{}",
        out.stderr
    );
    for c in ["bytes_hole", "chunks_with_holes", "bytes_unattributed"] {
        assert_eq!(
            out.counter(&format!("streams.{c}")),
            Some(0),
            "{c}\n{}",
            out.stderr
        );
    }
}
