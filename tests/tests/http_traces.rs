//! HTTP/1 spans stitched into traces, against real software: curl -> nginx
//! (reverse proxy) -> Python service A -> Python service B, exported to a
//! real OTLP receiver (or printed when there is none).
use std::{
    collections::{HashMap, HashSet},
    process::Command,
    time::Duration,
};

use serde_json::Value;
use tracer_e2e::{
    require_tool, root_test, run_ok,
    span::{attr, f, res},
    Agent, Backend, Nginx, Otlp, Receiver,
};

const SETTLE: Duration = Duration::from_millis(1500);

/// curl -> nginx -> A -> B, all on loopback.
struct Chain {
    nginx: Nginx,
    a: Backend,
    b: Backend,
}

impl Chain {
    fn start() -> Chain {
        require_tool("curl");
        let b = Backend::start("svc-b", None);
        let a = Backend::start("svc-a", Some(b.port));
        let nginx = Nginx::start(&format!(
            "server {{ listen 127.0.0.1:{{port}}; root {{root}}; \
             location /static/ {{ }} \
             location / {{ proxy_pass http://127.0.0.1:{}; }} }}",
            a.port
        ));
        std::fs::create_dir_all(nginx.root().join("static")).unwrap();
        Chain { nginx, a, b }
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.nginx.port)
    }

    /// One curl process, one request; returns the HTTP status.
    fn curl(&self, path: &str, headers: &[&str]) -> u16 {
        let mut cmd = Command::new("curl");
        cmd.args(["-s", "-o", "/dev/null", "-w", "%{http_code}"]);
        for h in headers {
            cmd.args(["-H", h]);
        }
        run_ok(cmd.arg(self.url(path))).trim().parse().unwrap()
    }
}

/// The six spans one request through the chain makes, by (service, kind).
const ROLES: [(&str, &str); 6] = [
    ("curl", "CLIENT"),
    ("nginx", "SERVER"),
    ("nginx", "CLIENT"),
    ("svc-a", "SERVER"),
    ("svc-a", "CLIENT"),
    ("svc-b", "SERVER"),
];

fn role_of(s: &Value) -> Option<usize> {
    ROLES
        .iter()
        .position(|(svc, kind)| res(s, "service.name") == *svc && f(s, "kind") == *kind)
}

/// Spans whose url.path starts with `prefix`, grouped by path.
fn by_path<'a>(spans: &'a [Value], prefix: &str) -> HashMap<String, Vec<&'a Value>> {
    let mut m: HashMap<String, Vec<&Value>> = HashMap::new();
    for s in spans {
        let p = attr(s, "url.path");
        if p.starts_with(prefix) {
            m.entry(p).or_default().push(s);
        }
    }
    m
}

/// Checks every parent link among `spans` (each request's spans under its
/// own path): returns (wrong parents, fully linked requests).
fn check_links(spans: &[Value], prefix: &str) -> (Vec<String>, usize) {
    let by_id: HashMap<&str, &Value> = spans.iter().map(|s| (f(s, "span_id"), s)).collect();
    let mut wrong = Vec::new();
    let mut linked = 0;
    for (path, group) in by_path(spans, prefix) {
        let mut full = group.len() == ROLES.len();
        for s in &group {
            let Some(role) = role_of(s) else {
                wrong.push(format!("{path}: unexpected span {s}"));
                continue;
            };
            let parent = f(s, "parent_span_id");
            if role == 0 {
                full &= parent.is_empty();
                continue;
            }
            if parent.is_empty() {
                if full && std::env::var_os("TRACE_DEBUG").is_some() {
                    eprintln!("{path}: {:?} has no parent", ROLES[role]);
                }
                full = false;
                continue;
            }
            match by_id.get(parent) {
                Some(p) if attr(p, "url.path") == path && role_of(p) == Some(role - 1) => {
                    full &= f(p, "trace_id") == f(s, "trace_id");
                }
                Some(p) => wrong.push(format!(
                    "{path}: {:?} has parent {:?} of {}",
                    ROLES[role],
                    role_of(p),
                    attr(p, "url.path")
                )),
                None => wrong.push(format!(
                    "{path}: {:?} has parent {parent} that was never exported",
                    ROLES[role]
                )),
            }
        }
        if full {
            linked += 1;
        }
    }
    (wrong, linked)
}

fn assert_chain_request(chain: &Chain, group: &[&Value], path: &str) {
    assert_eq!(group.len(), 6, "{path}: {group:#?}");
    let mut by_role: [Option<&Value>; 6] = [None; 6];
    for s in group {
        let r = role_of(s).unwrap_or_else(|| panic!("{path}: unexpected span {s}"));
        assert!(by_role[r].is_none(), "{path}: two spans for {:?}", ROLES[r]);
        by_role[r] = Some(s);
    }
    let spans: Vec<&Value> = by_role.iter().map(|s| s.unwrap()).collect();
    let trace = f(spans[0], "trace_id");
    assert!(
        f(spans[0], "parent_span_id").is_empty(),
        "curl's span is the root"
    );
    for i in 1..6 {
        assert_eq!(
            f(spans[i], "parent_span_id"),
            f(spans[i - 1], "span_id"),
            "{path}: parent of {:?}",
            ROLES[i]
        );
        assert_eq!(f(spans[i], "trace_id"), trace, "{path}: one trace");
    }
    for s in &spans {
        assert_eq!(attr(s, "http.request.method"), "GET");
        assert_eq!(attr(s, "url.path"), path);
        assert_eq!(attr(s, "http.response.status_code"), "200", "{s}");
        assert!(
            f(s, "name").starts_with("GET /"),
            "{path}: span name {}",
            f(s, "name")
        );
        assert!(s["end_time_unix_nano"].as_u64() >= s["start_time_unix_nano"].as_u64());
    }
    // The port of the server each hop names (its Host): A forwards to B
    // as a reverse proxy does, the Host nginx sent it kept.
    let ports = [
        chain.nginx.port,
        chain.nginx.port,
        chain.a.port,
        chain.a.port,
        chain.a.port,
        chain.a.port,
    ];
    for (s, port) in spans.iter().zip(ports) {
        assert_eq!(
            attr(s, "server.port"),
            port.to_string(),
            "{path}: server.port of {}",
            res(s, "service.name")
        );
    }
    assert_eq!(res(spans[3], "process.pid"), chain.a.pid().to_string());
    assert_eq!(res(spans[5], "process.pid"), chain.b.pid().to_string());
}

fn run_chain_sequential(kind: Otlp, n: usize) {
    let chain = Chain::start();
    let receiver = Receiver::start(kind);
    let proto = if kind == Otlp::Grpc { "grpc" } else { "http" };
    let agent = Agent::start(&receiver.agent_args());
    let prefix = format!("/seq-{proto}-");
    for i in 0..n {
        assert_eq!(chain.curl(&format!("{prefix}{i}"), &[]), 200);
    }
    receiver.wait_for(Duration::from_secs(30), |s| {
        by_path(s, &prefix).values().map(Vec::len).sum::<usize>() >= n * 6
    });
    let out = agent.stop(SETTLE);
    let spans = receiver.spans();
    let groups = by_path(&spans, &prefix);
    assert_eq!(
        groups.len(),
        n,
        "one group per request; counters: {}",
        out.stderr
    );
    for (path, group) in &groups {
        assert_chain_request(&chain, group, path);
    }
    let traces: HashSet<&str> = groups
        .values()
        .flatten()
        .map(|s| f(s, "trace_id"))
        .collect();
    assert_eq!(traces.len(), n, "exactly one trace per request");
    // The agent's own exports to this (local) receiver are not traced.
    let own: Vec<&Value> = spans
        .iter()
        .filter(|s| attr(s, "url.path") == "/v1/traces" || f(s, "name").contains("TraceService"))
        .collect();
    assert!(own.is_empty(), "the agent traced its own exports: {own:#?}");
}

#[test]
fn chain_of_sequential_requests_over_otlp_grpc() {
    let Some(_g) = root_test("chain_of_sequential_requests_over_otlp_grpc") else {
        return;
    };
    run_chain_sequential(Otlp::Grpc, 30);
}

#[test]
fn chain_of_sequential_requests_over_otlp_http() {
    let Some(_g) = root_test("chain_of_sequential_requests_over_otlp_http") else {
        return;
    };
    run_chain_sequential(Otlp::Http, 10);
}

/// 8 concurrent clients, `total` requests; returns (wrong parents, fully
/// linked share).
fn run_concurrent(total: usize, request_id: bool, tag: &str) -> (Vec<String>, f64) {
    let chain = Chain::start();
    let receiver = Receiver::start(Otlp::Grpc);
    let agent = Agent::start(&receiver.agent_args());
    let prefix = format!("/conc-{tag}-");
    std::thread::scope(|s| {
        for w in 0..8 {
            let chain = &chain;
            let prefix = &prefix;
            s.spawn(move || {
                for i in (w..total).step_by(8) {
                    let rid = format!("x-request-id: rid-{tag}-{i}");
                    let headers: Vec<&str> = if request_id {
                        vec![rid.as_str()]
                    } else {
                        vec![]
                    };
                    assert_eq!(chain.curl(&format!("{prefix}{i}"), &headers), 200);
                }
            });
        }
    });
    receiver.wait_for(Duration::from_secs(30), |s| {
        by_path(s, &prefix).values().map(Vec::len).sum::<usize>() >= total * 6
    });
    let out = agent.stop(SETTLE);
    let spans = receiver.spans();
    let (wrong, linked) = check_links(&spans, &prefix);
    let groups = by_path(&spans, &prefix);
    assert_eq!(
        groups.len(),
        total,
        "every request traced; counters: {}",
        out.stderr
    );
    let share = linked as f64 / total as f64;
    if std::env::var_os("TRACE_DEBUG").is_some() {
        eprintln!("{}", out.stderr);
    }
    println!(
        "{tag}: {linked}/{total} traces fully linked ({:.1} %)",
        share * 100.0
    );
    (wrong, share)
}

#[test]
fn concurrent_chain_never_gets_a_wrong_parent() {
    let Some(_g) = root_test("concurrent_chain_never_gets_a_wrong_parent") else {
        return;
    };
    let (wrong, share) = run_concurrent(200, false, "plain");
    assert!(wrong.is_empty(), "wrong parents: {wrong:#?}");
    // nginx's event loop never links by its thread (several requests in
    // flight, no proof), but each upstream request repeats exactly one
    // request in flight (unique paths): forwarding links it. A serves one
    // request per thread and forwards the same path too. (Before issue 9
    // only the hops where nginx happened to have one request in flight
    // linked, about a fifth of the traces.)
    assert!(
        share >= 0.95,
        "forwarded hops link ({:.1} %)",
        share * 100.0
    );
}

#[test]
fn request_ids_link_hops_an_event_loop_cannot() {
    let Some(_g) = root_test("request_ids_link_hops_an_event_loop_cannot") else {
        return;
    };
    let (wrong, share) = run_concurrent(200, true, "rid");
    assert!(wrong.is_empty(), "wrong parents: {wrong:#?}");
    assert!(
        share > 0.99,
        "with x-request-id every trace links ({:.1} %)",
        share * 100.0
    );
}

#[test]
fn propagated_traceparent_wins() {
    let Some(_g) = root_test("propagated_traceparent_wins") else {
        return;
    };
    let chain = Chain::start();
    let receiver = Receiver::start(Otlp::Grpc);
    let agent = Agent::start(&receiver.agent_args());
    let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let parent = "00f067aa0ba902b7";
    let tp = format!("traceparent: 00-{trace}-{parent}-01");
    assert_eq!(chain.curl("/tp-1", &[&tp]), 200);
    // An invalid one (all-zero trace id) is ignored.
    assert_eq!(
        chain.curl(
            "/tp-bad",
            &["traceparent: 00-00000000000000000000000000000000-00f067aa0ba902b7-01"]
        ),
        200
    );
    let spans = receiver.wait_for(Duration::from_secs(20), |s| {
        by_path(s, "/tp-").values().map(Vec::len).sum::<usize>() >= 12
    });
    agent.stop(SETTLE);
    let groups = by_path(&spans, "/tp-");
    let good = &groups["/tp-1"];
    assert_eq!(good.len(), 6);
    for s in good {
        assert_eq!(
            f(s, "trace_id"),
            trace,
            "every span joins the propagated trace"
        );
    }
    let curl_span = good.iter().find(|s| role_of(s) == Some(0)).unwrap();
    assert_eq!(
        f(curl_span, "parent_span_id"),
        parent,
        "the sender's span is the parent"
    );
    let bad = &groups["/tp-bad"];
    assert_eq!(bad.len(), 6);
    for s in bad {
        assert_ne!(f(s, "trace_id"), "00000000000000000000000000000000");
    }
    let root = bad.iter().find(|s| role_of(s) == Some(0)).unwrap();
    assert!(
        f(root, "parent_span_id").is_empty(),
        "invalid header ignored"
    );
}

#[test]
fn keepalive_pipelining_chunked_large_and_error_responses() {
    let Some(_g) = root_test("keepalive_pipelining_chunked_large_and_error_responses") else {
        return;
    };
    let chain = Chain::start();
    for i in 0..10 {
        std::fs::write(
            chain.nginx.root().join(format!("static/k{i}")),
            format!("static {i}\n"),
        )
        .unwrap();
    }
    for name in ["p0", "p2"] {
        std::fs::write(
            chain.nginx.root().join(format!("static/{name}")),
            "pipelined\n",
        )
        .unwrap();
    }
    let receiver = Receiver::start(Otlp::Grpc);
    let agent = Agent::start(&receiver.agent_args());
    // Keep-alive: one curl, ten requests on one connection.
    let urls: Vec<String> = (0..10)
        .map(|i| chain.url(&format!("/static/k{i}")))
        .collect();
    run_ok(
        Command::new("curl")
            .args(["-s", "-o", "/dev/null"])
            .args(&urls),
    );
    // Pipelining: three requests in one write.
    let pipelined = format!(
        "import socket\ns=socket.create_connection(('127.0.0.1',{}))\n\
         s.sendall(b'GET /static/p0 HTTP/1.1\\r\\nHost: x\\r\\n\\r\\nGET /static/nope HTTP/1.1\\r\\nHost: x\\r\\n\\r\\n\
         GET /static/p2 HTTP/1.1\\r\\nHost: x\\r\\nConnection: close\\r\\n\\r\\n')\n\
         d=b''\nwhile True:\n  c=s.recv(65536)\n  if not c: break\n  d+=c\nassert d.count(b'HTTP/1.1 ')==3, d\n",
        chain.nginx.port
    );
    run_ok(Command::new(tracer_e2e::python()).arg("-c").arg(&pipelined));
    // Straight to B: chunked and larger than the capture size, each followed
    // by a second request on the same connection (framing was followed).
    let b = |p: &str| format!("http://127.0.0.1:{}{p}", chain.b.port);
    run_ok(Command::new("curl").args(["-s", "-o", "/dev/null"]).args([
        b("/direct-chunked?chunked=1&size=20000"),
        b("/direct-after-chunked"),
    ]));
    run_ok(
        Command::new("curl")
            .args(["-s", "-o", "/dev/null"])
            .args([b("/direct-large?size=300000"), b("/direct-after-large")]),
    );
    // 404 from nginx, 500 from B through the chain.
    assert_eq!(chain.curl("/static/missing-file", &[]), 404);
    assert_eq!(chain.curl("/fail?status=500", &[]), 500);

    let spans = receiver.wait_for(Duration::from_secs(20), |s| {
        s.iter().filter(|s| attr(s, "url.path") == "/fail").count() >= 6
            && s.iter()
                .filter(|s| attr(s, "url.path").starts_with("/direct-after"))
                .count()
                >= 4
    });
    agent.stop(SETTLE);
    let path_is = |p: &'static str| move |s: &&Value| attr(s, "url.path") == p;
    let server = |s: &&&Value| f(s, "kind") == "SERVER";
    let client = |s: &&&Value| f(s, "kind") == "CLIENT";

    let ka: Vec<&Value> = spans
        .iter()
        .filter(|s| attr(s, "url.path").starts_with("/static/k"))
        .collect();
    assert_eq!(
        ka.iter().filter(server).count(),
        10,
        "keep-alive server spans"
    );
    assert_eq!(
        ka.iter().filter(client).count(),
        10,
        "keep-alive client spans"
    );
    let peer_ports: HashSet<String> = ka
        .iter()
        .filter(server)
        .map(|s| attr(s, "network.peer.port"))
        .collect();
    assert_eq!(peer_ports.len(), 1, "one connection");
    for s in ka.iter().filter(server) {
        let parent = f(s, "parent_span_id");
        let p = ka
            .iter()
            .find(|c| f(c, "span_id") == parent)
            .expect("server span's parent is curl's span");
        assert_eq!(attr(p, "url.path"), attr(s, "url.path"), "paired in order");
        assert_eq!(attr(s, "http.response.status_code"), "200");
    }

    for (path, status) in [
        ("/static/p0", "200"),
        ("/static/nope", "404"),
        ("/static/p2", "200"),
    ] {
        let both: Vec<&Value> = spans.iter().filter(path_is(path)).collect();
        assert_eq!(both.len(), 2, "{path}: client and server span: {both:#?}");
        for s in &both {
            assert_eq!(
                attr(s, "http.response.status_code"),
                status,
                "pipelined {path} paired in order"
            );
        }
        assert_eq!(f(both[0], "trace_id"), f(both[1], "trace_id"));
    }

    for path in [
        "/direct-chunked",
        "/direct-after-chunked",
        "/direct-large",
        "/direct-after-large",
    ] {
        let both: Vec<&Value> = spans
            .iter()
            .filter(|s| attr(s, "url.path") == path)
            .collect();
        assert_eq!(both.len(), 2, "{path}: client and server span: {both:#?}");
        for s in &both {
            assert_eq!(attr(s, "http.response.status_code"), "200", "{path}");
        }
    }
    let missing: Vec<&Value> = spans
        .iter()
        .filter(path_is("/static/missing-file"))
        .collect();
    let nginx_404 = missing.iter().find(server).unwrap();
    assert_eq!(attr(nginx_404, "http.response.status_code"), "404");
    assert_eq!(
        f(nginx_404, "status_code"),
        "UNSET",
        "a 404 is not a server error"
    );
    assert_eq!(
        f(missing.iter().find(client).unwrap(), "status_code"),
        "ERROR",
        "but a client error"
    );
    let fail: Vec<&Value> = spans.iter().filter(path_is("/fail")).collect();
    assert_eq!(fail.len(), 6);
    for s in &fail {
        assert_eq!(attr(s, "http.response.status_code"), "500");
        assert_eq!(f(s, "status_code"), "ERROR", "{s}");
    }
}

#[test]
fn export_outage_is_survived_and_counted() {
    let Some(_g) = root_test("export_outage_is_survived_and_counted") else {
        return;
    };
    let chain = Chain::start();
    let receiver = Receiver::start(Otlp::Grpc);
    std::fs::write(&receiver.fail_file, "down").unwrap();
    let mut args = receiver.agent_args();
    args.extend(["--export-interval-ms".into(), "200".into()]);
    let agent = Agent::start(&args);
    for i in 0..10 {
        assert_eq!(chain.curl(&format!("/outage-during-{i}"), &[]), 200);
    }
    std::thread::sleep(Duration::from_secs(10));
    assert!(receiver.spans().is_empty(), "the backend was down");
    std::fs::remove_file(&receiver.fail_file).unwrap();
    for i in 0..10 {
        assert_eq!(chain.curl(&format!("/outage-after-{i}"), &[]), 200);
    }
    receiver.wait_for(Duration::from_secs(30), |s| {
        by_path(s, "/outage-after-")
            .values()
            .map(Vec::len)
            .sum::<usize>()
            >= 60
    });
    let out = agent.stop(SETTLE);
    let spans = receiver.spans();
    let after = by_path(&spans, "/outage-after-");
    assert_eq!(after.len(), 10, "exporting resumed after the outage");
    assert!(after.values().all(|g| g.len() == 6));
    let during: usize = by_path(&spans, "/outage-during-")
        .values()
        .map(Vec::len)
        .sum();
    let dropped = out.spans_dropped_at_export();
    let retries = out.counter("export.retries{otlp}").unwrap_or(0);
    println!(
        "outage: {during} spans delivered late, {dropped} dropped and counted, {retries} retries"
    );
    assert!(
        retries > 0 || dropped > 0,
        "the outage shows in the counters: {}",
        out.stderr
    );
    assert_eq!(
        during as u64 + dropped,
        60,
        "every span of the outage is delivered or counted: {}",
        out.stderr
    );
}

#[test]
fn secrets_never_leave_the_host() {
    let Some(_g) = root_test("secrets_never_leave_the_host") else {
        return;
    };
    let chain = Chain::start();
    let receiver = Receiver::start(Otlp::Http);
    let agent = Agent::start(&receiver.agent_args());
    assert_eq!(
        chain.curl(
            "/secret?token=TOKEN-7f3a9&page=2",
            &[
                "Authorization: Bearer AUTH-91c2d",
                "Cookie: session=COOKIE-55e1b"
            ]
        ),
        200
    );
    let spans = receiver.wait_for(Duration::from_secs(20), |s| {
        by_path(s, "/secret").values().map(Vec::len).sum::<usize>() >= 6
    });
    agent.stop(SETTLE);
    assert_eq!(
        spans
            .iter()
            .filter(|s| attr(s, "url.path") == "/secret")
            .count(),
        6
    );
    let raw = receiver.raw();
    for secret in ["TOKEN-7f3a9", "AUTH-91c2d", "COOKIE-55e1b"] {
        let leak: Vec<&str> = raw.lines().filter(|l| l.contains(secret)).collect();
        assert!(leak.is_empty(), "{secret} was exported: {leak:#?}");
    }
    let s = spans
        .iter()
        .find(|s| attr(s, "url.path") == "/secret")
        .unwrap();
    assert_eq!(attr(s, "url.query"), "token=REDACTED&page=REDACTED");
}

#[test]
fn without_a_backend_traces_are_printed() {
    let Some(_g) = root_test("without_a_backend_traces_are_printed") else {
        return;
    };
    let chain = Chain::start();
    let agent = Agent::start::<&str>(&[]);
    assert_eq!(chain.curl("/tree-1", &[]), 200);
    let out = agent.stop(SETTLE);
    let lines: Vec<&String> = out.lines.iter().filter(|l| l.contains("/tree-1")).collect();
    let depth = |svc: &str, kind: &str| -> usize {
        let l = lines
            .iter()
            .find(|l| l.contains(&format!("{svc}  GET /tree-1  {kind}")))
            .unwrap_or_else(|| panic!("no {svc} {kind} line in:\n{}", out.lines.join("\n")));
        l.find(svc).unwrap()
    };
    let depths: Vec<usize> = ROLES
        .iter()
        .map(|(svc, kind)| depth(svc, &kind.to_lowercase()))
        .collect();
    assert!(
        depths.windows(2).all(|w| w[1] > w[0]),
        "each hop indented under its parent: {depths:?}\n{}",
        out.lines.join("\n")
    );
    assert_eq!(lines.len(), 6);

    let agent = Agent::start(&["--output", "json"]);
    assert_eq!(chain.curl("/json-1", &[]), 200);
    let out = agent.stop(SETTLE);
    let spans: Vec<Value> = out
        .json()
        .into_iter()
        .filter(|s| s.to_string().contains("/json-1"))
        .collect();
    assert_eq!(spans.len(), 6, "one JSON object per span");
    for s in &spans {
        assert!(s["trace_id"].as_str().is_some_and(|t| t.len() == 32));
        assert!(s["span_id"].as_str().is_some_and(|t| t.len() == 16));
    }
}

#[test]
fn ipv6_loopback_is_traced_and_linked() {
    let Some(_g) = root_test("ipv6_loopback_is_traced_and_linked") else {
        return;
    };
    require_tool("curl");
    let port = tracer_e2e::free_port();
    let mut server = std::process::Command::new(tracer_e2e::python())
        .args(["-m", "http.server", &port.to_string(), "--bind", "::1"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(800));
    let agent = Agent::start(&["--output", "json"]);
    let url = format!("http://[::1]:{port}/v6-path");
    run_ok(Command::new("curl").args(["-sg", "-o", "/dev/null", &url]));
    let out = agent.stop(SETTLE);
    let _ = server.kill();
    let _ = server.wait();
    let spans: Vec<Value> = out
        .json()
        .into_iter()
        .filter(|s| s.to_string().contains("/v6-path"))
        .collect();
    assert_eq!(spans.len(), 2, "{spans:#?}");
    let client = spans.iter().find(|s| s["kind"] == "CLIENT").unwrap();
    let server_span = spans.iter().find(|s| s["kind"] == "SERVER").unwrap();
    assert_eq!(
        server_span["parent_span_id"], client["span_id"],
        "linked over IPv6"
    );
    assert_eq!(server_span["attributes"]["network.peer.address"], "::1");
}

/// A single-threaded server (Python's `HTTPServer`) busy with a slow
/// request reads the next client's request half a second after it
/// arrived, as any server with a backlog does: that request keeps its
/// server span, linked to its client's, and the client's span lasts the
/// wait. (Bytes unread past the hole timeout used to be given up as read
/// by no call: the server span was lost.)
#[test]
fn a_request_read_long_after_it_arrived_keeps_its_span() {
    let Some(_g) = root_test("a_request_read_long_after_it_arrived_keeps_its_span") else {
        return;
    };
    require_tool("curl");
    const SERVER: &str = r#"
import sys, time
from http.server import HTTPServer, BaseHTTPRequestHandler
class H(BaseHTTPRequestHandler):
    def do_GET(self):
        if self.path.startswith("/slow"):
            time.sleep(0.6)
        self.send_response(200)
        self.send_header("Content-Length", "3")
        self.end_headers()
        self.wfile.write(b"ok\n")
    def log_message(self, *a):
        pass
HTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
"#;
    let port = tracer_e2e::free_port();
    let _server = tracer_e2e::Listening::start(
        Command::new(tracer_e2e::python())
            .args(["-c", SERVER, &port.to_string()])
            .env("OTEL_SERVICE_NAME", "one-at-a-time"),
        port,
    );
    let agent = Agent::start(&["--output", "json"]);
    let get = |path: String| {
        let url = format!("http://127.0.0.1:{port}{path}");
        run_ok(Command::new("curl").args(["-sf", "-o", "/dev/null", &url]));
    };
    for i in 0..3 {
        std::thread::scope(|s| {
            s.spawn(|| get(format!("/slow-{i}")));
            std::thread::sleep(Duration::from_millis(100));
            get(format!("/queued-{i}"));
        });
    }
    let out = agent.stop(SETTLE);
    let spans = out.json();
    let find = |kind: &str, path: &str| {
        spans
            .iter()
            .find(|s| f(s, "kind") == kind && attr(s, "url.path") == path)
            .unwrap_or_else(|| panic!("no {kind} span of {path}: {}", out.stderr))
    };
    for i in 0..3 {
        for path in [format!("/slow-{i}"), format!("/queued-{i}")] {
            let (client, server) = (find("CLIENT", &path), find("SERVER", &path));
            assert_eq!(server["parent_span_id"], client["span_id"], "{path}");
            assert_eq!(server["attributes"]["http.response.status_code"], 200);
        }
        let queued = find("CLIENT", &format!("/queued-{i}"));
        let waited = queued["duration_ns"].as_u64().unwrap();
        assert!(
            waited > 300_000_000,
            "the queued request waited for the slow one: {waited} ns"
        );
    }
    assert!(
        out.counter("correlation.unread_holds").unwrap_or(0) >= 3,
        "{}",
        out.stderr
    );
}
