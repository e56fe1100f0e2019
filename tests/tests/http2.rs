//! HTTP/2 and gRPC spans against real software, exported to a real OTLP
//! receiver: nginx serving h2c (prior knowledge) to curl and h2load, and a
//! Python grpcio server and client (helloworld.proto compiled at test time);
//! the large messages also between a tonic server and client.
//!
//! What a loss may cost is a header reported as unknown (the span then says
//! why in `tracer.headers_unknown`), never a wrong one: every attribute a
//! span carries is checked against what the test sent.
use std::{process::Command, time::Duration};

use serde_json::Value;
use tracer_e2e::{
    free_port, grpc_py, grpc_side, grpc_tonic, py_script, reply, require_tool, root, root_test,
    run_ok,
    span::{attr, f, res},
    Agent, AgentOutput, Nginx, Otlp, Receiver, Spawned,
};

const SETTLE: Duration = Duration::from_millis(1500);
/// Every call of a test here is of method SayHello, told apart by a name
/// in its request.
const METHOD: &str = "SayHello";

/// The gRPC implementation on both ends of a test.
#[derive(Clone, Copy, Debug)]
enum Greeter {
    /// grpcio, helloworld.proto (tests/py/grpc_hello.py).
    Grpcio,
    /// tonic, raw bytes (tests/src/bin/tonic_peer.rs), SayHello of
    /// calls.Calls.
    Tonic,
}

impl Greeter {
    /// The service its calls name.
    fn service(self) -> &'static str {
        match self {
            Greeter::Grpcio => "helloworld.Greeter",
            Greeter::Tonic => "calls.Calls",
        }
    }

    /// Its server on a fresh port.
    fn server(self) -> (Spawned, u16) {
        let port = free_port();
        (self.start("server", port), port)
    }

    /// Its `role`, named grpc-`role`; a client has one channel to `port`.
    fn start(self, role: &str, port: u16) -> Spawned {
        let svc = format!("grpc-{role}");
        match self {
            Greeter::Grpcio => grpc_py("grpc_hello.py", role, port, &svc),
            Greeter::Tonic => grpc_tonic!(role, port, &svc),
        }
    }

    /// One call named `name` on the client's channel, with a request of
    /// `req_bytes` more and a reply of `reply_bytes` more; returns its gRPC
    /// status name.
    fn call(self, c: &mut Spawned, name: &str, req_bytes: usize, reply_bytes: usize) -> String {
        match self {
            Greeter::Grpcio => c.send(&format!("call {name} {req_bytes} {reply_bytes}")),
            Greeter::Tonic => c.send(&format!(
                "unary {METHOD} 0,1,{reply_bytes},{name}{}",
                "x".repeat(req_bytes)
            )),
        }
        reply(c)
    }
}

/// The server of `peer`, a receiver, an agent exporting to it and a
/// client, started in that order.
fn start_grpc(peer: Greeter) -> (Spawned, Receiver, Agent, Spawned) {
    let (server, port) = peer.server();
    let receiver = Receiver::start(Otlp::Grpc);
    let agent = Agent::start(&receiver.agent_args());
    let client = peer.start("client", port);
    (server, receiver, agent, client)
}

fn grpc_spans<'a>(spans: &'a [Value], kind: &str) -> Vec<&'a Value> {
    grpc_side(spans, kind, "grpc-client", "grpc-server")
}

/// How many of the client and server spans of OK calls of `service` were
/// decoded whole.
fn whole_ok(service: &str, clients: &[&Value], servers: &[&Value]) -> usize {
    clients
        .iter()
        .chain(servers)
        .filter(|s| check_grpc_span(s, service, &["0"]))
        .count()
}

/// Every attribute a gRPC span of SayHello of `service` carries is right;
/// returns whether the call was decoded whole (method and status known).
fn check_grpc_span(s: &Value, service: &str, statuses: &[&str]) -> bool {
    let unknown = attr(s, "tracer.headers_unknown");
    let name = f(s, "name");
    let full = format!("{service}/{METHOD}");
    let path = format!("/{full}");
    if unknown.is_empty() {
        assert_eq!(name, full, "{s}");
        assert_eq!(attr(s, "url.path"), path, "{s}");
        assert_eq!(attr(s, "http.request.method"), "POST", "{s}");
    } else {
        // The method or path was not decoded: absent, never another one.
        // A path sent as a literal (tonic) decodes when the fields that
        // say gRPC do not: the span is then named as an HTTP one.
        assert!(
            name == full || name == format!("POST {path}") || name == "POST" || name == "HTTP",
            "{s}"
        );
        for (k, want) in [
            ("url.path", path.as_str()),
            ("http.request.method", "POST"),
            ("rpc.method", METHOD),
        ] {
            let v = attr(s, k);
            assert!(v.is_empty() || v == want, "{k}={v}: {s}");
        }
    }
    for (k, want) in [
        ("rpc.system", "grpc"),
        ("rpc.service", service),
        ("rpc.method", METHOD),
        ("network.protocol.version", "2"),
        ("http.response.status_code", "200"),
    ] {
        let v = attr(s, k);
        assert!(v.is_empty() || v == want, "{k}={v}: {s}");
    }
    let code = attr(s, "rpc.grpc.status_code");
    assert!(
        code.is_empty() || statuses.contains(&code.as_str()),
        "status {code}: {s}"
    );
    unknown.is_empty() && !code.is_empty() && attr(s, "rpc.system") == "grpc"
}

/// Spans by kind and resource (what a count that is off was made of).
fn sides(spans: &[Value]) -> String {
    let mut n = std::collections::BTreeMap::<String, usize>::new();
    for s in spans {
        let key = format!("{} {}", f(s, "kind"), s["resource"]);
        *n.entry(key).or_default() += 1;
    }
    format!("spans seen: {n:?}")
}

/// Server spans whose parent is a client span of `clients` (rule 3).
fn linked(servers: &[&Value], clients: &[&Value]) -> usize {
    servers
        .iter()
        .filter(|s| {
            clients.iter().any(|c| {
                f(c, "span_id") == f(s, "parent_span_id") && f(c, "trace_id") == f(s, "trace_id")
            })
        })
        .count()
}

fn lost(out: &AgentOutput) -> u64 {
    [
        "hpack_lost_attach",
        "hpack_lost_hole",
        "hpack_lost_truncated",
        "hpack_lost_sync",
        "hpack_lost_too_large",
        "hpack_lost_corrupt",
        "h2_sync_lost",
    ]
    .iter()
    .map(|n| out.counter(&format!("http.{n}")).unwrap_or(0))
    .sum()
}

#[test]
fn grpc_unary_calls_on_one_channel_are_linked_with_rpc_attributes() {
    let Some(_g) = root_test("grpc_unary_calls_on_one_channel_are_linked_with_rpc_attributes")
    else {
        return;
    };
    let peer = Greeter::Grpcio;
    let (_server, receiver, agent, mut client) = start_grpc(peer);
    // grpcio indexes :path and content-type in HPACK's dynamic table on the
    // first call: every later call names its method by a one-byte index.
    let n = 40;
    for i in 0..n {
        assert_eq!(peer.call(&mut client, &format!("u{i}"), 0, 0), "OK");
    }
    assert_eq!(peer.call(&mut client, "notfound", 0, 0), "NOT_FOUND");
    client.send("quit");
    let _ = client.finish();
    receiver.wait_for(Duration::from_secs(30), |s| {
        grpc_spans(s, "SERVER").len() > n && grpc_spans(s, "CLIENT").len() > n
    });
    let out = agent.stop(SETTLE);
    let spans = receiver.spans();
    let (clients, servers) = (grpc_spans(&spans, "CLIENT"), grpc_spans(&spans, "SERVER"));
    let seen = sides(&spans);
    assert_eq!(clients.len(), n + 1, "{seen}; counters: {}", out.stderr);
    assert_eq!(servers.len(), n + 1, "{seen}; counters: {}", out.stderr);
    for s in clients.iter().chain(&servers) {
        assert!(
            check_grpc_span(s, peer.service(), &["0", "5"]),
            "not decoded whole: {s}"
        );
    }
    // NOT_FOUND: an error for the client, not for the server (semantic
    // conventions' lists).
    let nf = |v: &[&Value]| -> Vec<String> {
        v.iter()
            .filter(|s| attr(s, "rpc.grpc.status_code") == "5")
            .map(|s| f(s, "status_code").to_string())
            .collect()
    };
    assert_eq!(nf(&clients), ["ERROR"]);
    assert_ne!(nf(&servers), ["ERROR"]);
    assert_eq!(nf(&servers).len(), 1);
    assert_eq!(
        linked(&servers, &clients),
        n + 1,
        "every server span's parent is its client span"
    );
}

/// 1 MiB request and reply messages between `peer`'s client and server,
/// with calls before and after them on the same channel.
fn one_mib_messages_never_give_a_wrong_header(peer: Greeter) {
    let (_server, receiver, agent, mut client) = start_grpc(peer);
    for i in 0..3 {
        assert_eq!(peer.call(&mut client, &format!("before{i}"), 0, 0), "OK");
    }
    assert_eq!(peer.call(&mut client, "big", 1 << 20, 1 << 20), "OK");
    let after = 10;
    for i in 0..after {
        assert_eq!(peer.call(&mut client, &format!("after{i}"), 0, 0), "OK");
    }
    client.send("quit");
    let _ = client.finish();
    receiver.wait_for(Duration::from_secs(30), |s| {
        grpc_spans(s, "SERVER").len() >= 4 + after
    });
    let out = agent.stop(SETTLE);
    let spans = receiver.spans();
    let (clients, servers) = (grpc_spans(&spans, "CLIENT"), grpc_spans(&spans, "SERVER"));
    let whole = whole_ok(peer.service(), &clients, &servers);
    let all = clients.len() + servers.len();
    eprintln!(
        "{peer:?} 1 MiB messages: {} client and {} server spans of {} calls, {whole} of {all} decoded whole, {} linked; losses counted: {}",
        clients.len(),
        servers.len(),
        4 + after,
        linked(&servers, &clients),
        lost(&out)
    );
    // The kernel walks the frames of HTTP/2 connections and copies every
    // header block, also those behind large DATA frames in a 64 KiB packet:
    // every call, before and after the large one, is decoded whole.
    let seen = sides(&spans);
    assert_eq!(clients.len(), 4 + after, "{seen}; counters: {}", out.stderr);
    assert_eq!(servers.len(), 4 + after, "{seen}; counters: {}", out.stderr);
    assert_eq!(whole, all, "counters: {}", out.stderr);
    assert_eq!(linked(&servers, &clients), 4 + after);
    // Nothing was lost on the way (the OTLP receiver's end of the agent's
    // exports, which reads bytes the kernel never copies, is silenced).
    assert_eq!(lost(&out), 0, "counters: {}", out.stderr);
    assert_eq!(out.counter("streams.bytes_hole"), Some(0), "{}", out.stderr);
}

root!(
    grpc_one_mib_messages_never_give_a_wrong_header,
    one_mib_messages_never_give_a_wrong_header(Greeter::Grpcio)
);
root!(
    tonic_one_mib_messages_never_give_a_wrong_header,
    one_mib_messages_never_give_a_wrong_header(Greeter::Tonic)
);

#[test]
fn grpc_channel_open_before_the_agent_is_never_wrong() {
    let Some(_g) = root_test("grpc_channel_open_before_the_agent_is_never_wrong") else {
        return;
    };
    let peer = Greeter::Grpcio;
    let (_server, port) = peer.server();
    let mut client = peer.start("client", port);
    for i in 0..5 {
        assert_eq!(peer.call(&mut client, &format!("early{i}"), 0, 0), "OK");
    }
    let receiver = Receiver::start(Otlp::Grpc);
    let agent = Agent::start(&receiver.agent_args());
    let n = 30;
    for i in 0..n {
        assert_eq!(peer.call(&mut client, &format!("late{i}"), 0, 0), "OK");
    }
    client.send("quit");
    let _ = client.finish();
    std::thread::sleep(Duration::from_secs(2));
    let out = agent.stop(SETTLE);
    let spans = receiver.spans();
    let (clients, servers) = (grpc_spans(&spans, "CLIENT"), grpc_spans(&spans, "SERVER"));
    let whole = whole_ok(peer.service(), &clients, &servers);
    eprintln!(
        "mid-connection: {} client and {} server spans of {n} calls; method and status recovered in {whole} ({:.0} %)",
        clients.len(),
        servers.len(),
        100.0 * whole as f64 / (2 * n) as f64
    );
    assert!(clients.len() <= n && servers.len() <= n);
    assert!(!clients.is_empty() || !servers.is_empty(), "{}", out.stderr);
    // The tables before the attach are unknown: counted as such.
    assert!(
        out.counter("http.hpack_lost_attach").unwrap_or(0) > 0,
        "{}",
        out.stderr
    );
}

#[test]
fn h2c_nginx_with_curl_and_h2load() {
    let Some(_g) = root_test("h2c_nginx_with_curl_and_h2load") else {
        return;
    };
    require_tool("curl");
    require_tool("h2load");
    let nginx = Nginx::start("server { listen 127.0.0.1:{port} http2; root {root}; }");
    std::fs::write(nginx.root().join("file.txt"), "hello over h2c\n").unwrap();
    let receiver = Receiver::start(Otlp::Grpc);
    let agent = Agent::start(&receiver.agent_args());
    let base = format!("http://127.0.0.1:{}", nginx.port);
    // curl names the server (`:authority`), h2load an address: the spans'
    // server.address must say which.
    let named = format!("http://files.test:{}", nginx.port);
    let resolve = format!("files.test:{}:127.0.0.1", nginx.port);
    let body = run_ok(Command::new("curl").args([
        "-s",
        "--resolve",
        &resolve,
        "--http2-prior-knowledge",
        &format!("{named}/file.txt"),
    ]));
    assert_eq!(body, "hello over h2c\n");
    let missing = run_ok(Command::new("curl").args([
        "-s",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        "--resolve",
        &resolve,
        "--http2-prior-knowledge",
        &format!("{named}/missing.txt"),
    ]));
    assert_eq!(missing, "404");
    let n = 60;
    run_ok(Command::new("h2load").args([
        "-n",
        &n.to_string(),
        "-c",
        "2",
        "-m",
        "4",
        &format!("{base}/file.txt?load"),
    ]));
    let nginx_spans = |s: &[Value]| -> usize {
        s.iter()
            .filter(|s| res(s, "service.name") == "nginx" && f(s, "kind") == "SERVER")
            .count()
    };
    receiver.wait_for(Duration::from_secs(30), |s| nginx_spans(s) >= n + 2);
    let out = agent.stop(SETTLE);
    let spans = receiver.spans();
    let of = |svc: &str, kind: &str| -> Vec<&Value> {
        spans
            .iter()
            .filter(|s| res(s, "service.name") == svc && f(s, "kind") == kind)
            .collect()
    };
    let (curl, server, load) = (
        of("curl", "CLIENT"),
        of("nginx", "SERVER"),
        of("h2load", "CLIENT"),
    );
    assert_eq!(curl.len(), 2, "{}", out.stderr);
    assert_eq!(server.len(), n + 2, "{}", out.stderr);
    assert_eq!(load.len(), n, "{}", out.stderr);
    for s in curl.iter().chain(&server).chain(&load) {
        assert_eq!(attr(s, "network.protocol.version"), "2", "{s}");
        assert_eq!(attr(s, "http.request.method"), "GET", "{s}");
        assert_eq!(attr(s, "tracer.headers_unknown"), "", "{s}");
        let (path, status) = (attr(s, "url.path"), attr(s, "http.response.status_code"));
        match path.as_str() {
            "/file.txt" => assert_eq!(status, "200", "{s}"),
            "/missing.txt" => assert_eq!(status, "404", "{s}"),
            p => panic!("path {p}: {s}"),
        }
        assert!(f(s, "name").starts_with("GET /"), "{s}");
        let by_curl = attr(s, "user_agent.original").starts_with("curl/");
        let host = if by_curl { "files.test" } else { "127.0.0.1" };
        assert_eq!(attr(s, "server.address"), host, "{s}");
        assert_eq!(attr(s, "server.port"), nginx.port.to_string(), "{s}");
        if f(s, "kind") == "CLIENT" {
            let full = format!("http://{host}:{}{path}", nginx.port);
            assert!(attr(s, "url.full").starts_with(&full), "{s}");
        }
    }
    // curl's two calls and h2load's (multiplexed, 4 streams at a time on
    // each connection) are each the parent of nginx's span of them.
    let clients: Vec<&Value> = curl.iter().chain(&load).copied().collect();
    assert_eq!(linked(&server, &clients), n + 2, "{}", out.stderr);
}

/// More frames in one packet than the kernel's walk follows: h2load opens
/// 1,000 streams at once, so one write carries 1,000 HEADERS frames (and
/// nginx's answers as many HEADERS and DATA). The walk gives up on that
/// packet and says so (kernel.h2_sync_lost), the bytes past the packet's
/// first record reach user space as missing, which the HTTP/2 reader
/// counts as a loss, and the walk finds sync again at a later packet
/// start. Spans never carry a wrong attribute.
#[test]
fn h2_frame_walk_over_budget_loses_sync_and_counts_it() {
    let Some(_g) = root_test("h2_frame_walk_over_budget_loses_sync_and_counts_it") else {
        return;
    };
    require_tool("h2load");
    let nginx = Nginx::start(
        "server { listen 127.0.0.1:{port} http2; http2_max_concurrent_streams 1000; root {root}; }",
    );
    std::fs::write(nginx.root().join("file.txt"), "hello over h2c\n").unwrap();
    let receiver = Receiver::start(Otlp::Grpc);
    let agent = Agent::start(&receiver.agent_args());
    let n = 4000;
    run_ok(Command::new("h2load").args([
        "-n",
        &n.to_string(),
        "-c",
        "1",
        "-m",
        "1000",
        &format!("http://127.0.0.1:{}/file.txt", nginx.port),
    ]));
    std::thread::sleep(Duration::from_secs(2));
    let out = agent.stop(SETTLE);
    let spans = receiver.spans();
    let of = |svc: &str, kind: &str| -> Vec<&Value> {
        spans
            .iter()
            .filter(|s| res(s, "service.name") == svc && f(s, "kind") == kind)
            .collect()
    };
    let (server, load) = (of("nginx", "SERVER"), of("h2load", "CLIENT"));
    let known = |v: &[&Value]| {
        v.iter()
            .filter(|s| attr(s, "tracer.headers_unknown").is_empty())
            .count()
    };
    let walk_lost = out.counter("kernel.h2_sync_lost").unwrap_or(0);
    eprintln!(
        "1,000 streams at once: walk lost sync {walk_lost} times, found it {} times; {} of {} nginx and {} of {} h2load spans decoded whole; losses counted in user space: {}",
        out.counter("kernel.h2_synced").unwrap_or(0),
        known(&server),
        server.len(),
        known(&load),
        load.len(),
        lost(&out)
    );
    assert!(walk_lost > 0, "{}", out.stderr);
    assert!(
        lost(&out) > 0,
        "a loss user space did not count: {}",
        out.stderr
    );
    assert!(server.len() <= n && load.len() <= n);
    // Sync found again: calls after the losses are decoded.
    assert!(known(&server) > 0 && known(&load) > 0, "{}", out.stderr);
    for s in server.iter().chain(&load) {
        for (k, want) in [
            ("url.path", "/file.txt"),
            ("http.request.method", "GET"),
            ("http.response.status_code", "200"),
            ("network.protocol.version", "2"),
        ] {
            let v = attr(s, k);
            assert!(v.is_empty() || v == want, "{k}={v}: {s}");
        }
        // A span without a status says why: its response was not seen
        // (response_not_observed, connection_closed...), or not decoded.
        if attr(s, "http.response.status_code").is_empty() {
            assert!(
                !attr(s, "error.type").is_empty()
                    || !attr(s, "tracer.response_headers_unknown").is_empty(),
                "{s}"
            );
        }
    }
}

#[test]
fn h2c_upgrade_with_hypercorn_curl_and_nghttp() {
    let Some(_g) = root_test("h2c_upgrade_with_hypercorn_curl_and_nghttp") else {
        return;
    };
    require_tool("curl");
    require_tool("nghttp");
    let port = free_port();
    let hypercorn = tracer_e2e::workspace().join("target/pyenv/bin/hypercorn");
    let _server = tracer_e2e::Listening::start(
        Command::new(hypercorn)
            .current_dir(py_script("asgi_hello.py").parent().unwrap())
            .args(["--bind", &format!("127.0.0.1:{port}"), "asgi_hello:app"])
            .env("OTEL_SERVICE_NAME", "h2c-server"),
        port,
    );
    let receiver = Receiver::start(Otlp::Grpc);
    let agent = Agent::start(&receiver.agent_args());
    let url = format!("http://127.0.0.1:{port}/up.txt");
    // curl --http2 and nghttp -u on http:// ask for `Upgrade: h2c` in an
    // HTTP/1.1 GET; the answer comes as HTTP/2 on stream 1 after the 101.
    let body = run_ok(Command::new("curl").args(["-s", "--http2", &url]));
    assert_eq!(body, "upgraded\n");
    run_ok(Command::new("nghttp").args(["-u", &url]));
    // And HTTP/2 from the preface on.
    run_ok(Command::new("nghttp").arg(format!("http://127.0.0.1:{port}/nothing")));
    let server = |s: &[Value]| -> usize {
        s.iter()
            .filter(|s| res(s, "service.name") == "h2c-server" && f(s, "kind") == "SERVER")
            .count()
    };
    receiver.wait_for(Duration::from_secs(30), |s| server(s) >= 3);
    let out = agent.stop(SETTLE);
    let spans = receiver.spans();
    let of = |svc: &str| -> Vec<&Value> {
        spans
            .iter()
            .filter(|s| res(s, "service.name") == svc)
            .collect()
    };
    let (curl, nghttp, hyper) = (of("curl"), of("nghttp"), of("h2c-server"));
    assert_eq!(curl.len(), 1, "{}", out.stderr);
    assert_eq!(nghttp.len(), 2, "{}", out.stderr);
    assert_eq!(hyper.len(), 3, "{}", out.stderr);
    for s in curl.iter().chain(&nghttp).chain(&hyper) {
        assert_eq!(attr(s, "http.request.method"), "GET", "{s}");
        assert_eq!(attr(s, "tracer.headers_unknown"), "", "{s}");
        let want = match attr(s, "url.path").as_str() {
            "/up.txt" => "200",
            "/nothing" => "404",
            p => panic!("path {p}: {s}"),
        };
        assert_eq!(attr(s, "http.response.status_code"), want, "{s}");
    }
    // Both upgraded requests were HTTP/1.1 on the wire; the other one
    // HTTP/2.
    let versions: Vec<String> = hyper
        .iter()
        .map(|s| attr(s, "network.protocol.version"))
        .collect();
    assert_eq!(
        versions.iter().filter(|v| *v == "1.1").count(),
        2,
        "{versions:?}"
    );
    assert_eq!(
        versions.iter().filter(|v| *v == "2").count(),
        1,
        "{versions:?}"
    );
    let clients: Vec<&Value> = curl.iter().chain(&nghttp).copied().collect();
    assert_eq!(linked(&hyper, &clients), 3, "{}", out.stderr);
    assert!(
        out.counter("http.h2c_upgrades").unwrap_or(0) >= 4,
        "{}",
        out.stderr
    );
}
