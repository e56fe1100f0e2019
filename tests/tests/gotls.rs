//! Go's crypto/tls through uprobes on `(*Conn).Write`/`Read` and their RET
//! instructions, against real Go programs built at test time with the
//! host's Go (tests/go, GOPATH mode, standard library only): a net/http
//! HTTPS server with a Go client and with curl, spans linked client ->
//! server in a real OTLP receiver; stripped Go programs (no symbols, no
//! DWARF) covered the same way; nothing attached after exit; clients that
//! live a moment named as they were started; calls that grow their
//! goroutine's stack seen once.
use std::{path::Path, process::Command, time::Duration};

use serde_json::Value;

use tracer_e2e::{
    free_port, go_build, require_tool, root_test,
    span::{attr, f, res},
    tempdir::TempDir,
    tls::{
        assert_https_linked, bpftool_attached, bpftool_ids, bpftool_names, certificate, curl_ok,
        paths, wait_for_paths,
    },
    wait_port, Agent, AgentOutput, Otlp, Receiver, Spawned,
};

const SETTLE: Duration = Duration::from_millis(1500);

/// The Go HTTPS server, listening (`h2`: net/http's default, h2 by ALPN;
/// else HTTP/1.1 only).
fn go_server(bin: &Path, cert: &str, key: &str, h2: bool) -> (Spawned, u16) {
    go_server_with(bin, cert, key, h2, false)
}

/// [`go_server`], its connections wrapped twice before TLS when `wrap`
/// (as a proxy's are).
fn go_server_with(bin: &Path, cert: &str, key: &str, h2: bool, wrap: bool) -> (Spawned, u16) {
    let port = free_port();
    let s = Spawned::ready(
        Command::new(bin)
            .arg(port.to_string())
            .args([cert, key])
            .env("TLS_H2", if h2 { "1" } else { "0" })
            .env("TLS_WRAP", if wrap { "1" } else { "0" }),
    );
    wait_port(port, Duration::from_secs(10));
    (s, port)
}

/// The Go client: started, told to go after `pause` (the agent finds it
/// meanwhile), GETs `paths` from `base` and exits.
fn go_client(bin: &Path, base: &str, paths: &[String], h2: bool, pause: Duration) {
    let mut client = Spawned::ready(
        Command::new(bin)
            .arg(base)
            .args(paths)
            .env("TLS_H2", if h2 { "1" } else { "0" }),
    );
    std::thread::sleep(pause);
    client.send("go");
    assert_eq!(client.line(Duration::from_secs(30)), "done");
    // The transport's read loop goes back to a Read once the last response
    // is consumed; the client exits when its stdin closes, with that Read
    // parked (`tls.go_calls_forgotten`), however slow the CPU.
    std::thread::sleep(Duration::from_millis(300));
    client.finish();
}

/// The agent restarted while a Go client keeps its connection to a Go
/// server: net/http's read loops (the client's, and the server's for the
/// next request) wait in Reads the new agent's probes never saw begin,
/// which return the first request and response after the start unseen.
/// The goroutines' next Reads say so (`tls.reads_lost`): that request's
/// client span ends as lost, and every later response pairs with its own
/// request, none with the one before it (which would end each client span
/// at the next request's response, for as long as the connection lives).
#[test]
fn go_client_connected_before_the_agent_pairs_each_response_with_its_request() {
    let Some(_g) =
        root_test("go_client_connected_before_the_agent_pairs_each_response_with_its_request")
    else {
        return;
    };
    let dir = TempDir::new("tracer-gotls-early");
    let (cert, key) = certificate(dir.path());
    let server_bin = go_build(dir.path(), "tls_server", "tls_server", &[]);
    let client_bin = go_build(dir.path(), "tls_client", "tls_client", &[]);
    let (_server, port) = go_server(&server_bin, &cert, &key, false);
    let base = format!("https://127.0.0.1:{port}");
    let early = paths("/early-", 6);
    // The first agent sees the connection made: its socket has its
    // cookie, the one the client's first request is stamped with.
    let first = Agent::start(&[] as &[&str]);
    let mut client = Spawned::ready(
        Command::new(&client_bin)
            .arg(&base)
            .args(&early)
            .env("TLS_H2", "0")
            .env("TLS_WARM", "/warm"),
    );
    first.stop(Duration::ZERO);
    let receiver = Receiver::start(Otlp::Grpc);
    let agent = Agent::start(&receiver.agent_args());
    // Found by the agent's scan of running processes meanwhile.
    std::thread::sleep(Duration::from_millis(1200));
    client.send("go");
    assert_eq!(client.line(Duration::from_secs(30)), "done");
    client.finish();
    wait_for_paths(&receiver, "/early-", 2 * (early.len() - 1));
    let out = agent.stop(SETTLE);
    let spans = receiver.spans();
    let e = &out.stderr;
    let client_span = |p: &str| {
        spans
            .iter()
            .find(|s| attr(s, "url.path") == p && f(s, "kind") == "CLIENT")
    };
    // The first request's response went unseen: never another's.
    if let Some(c) = client_span(&early[0]) {
        assert_eq!(
            f(c, "status_message"),
            "stream data lost",
            "{c:#?}\nagent:\n{e}"
        );
    }
    for w in early[1..].windows(2) {
        assert_https_linked(&spans, &w[0], ("tls_client", "tls_server"), "1.1", e);
        let (this, next) = (client_span(&w[0]).unwrap(), client_span(&w[1]).unwrap());
        let t = |s: &Value, k: &str| s[k].as_u64().unwrap_or(0);
        assert!(
            t(this, "end_time_unix_nano") <= t(next, "start_time_unix_nano"),
            "{} ends after {} starts: it took the next response\n{this:#?}\n{next:#?}\nagent:\n{e}",
            w[0],
            w[1]
        );
    }
    assert_https_linked(&spans, &early[5], ("tls_client", "tls_server"), "1.1", e);
    assert!(out.counter("tls.reads_lost").unwrap_or(0) >= 1, "{e}");
}

/// Requests, one path each, from a Go client started after the agent
/// (found by the /proc scan, then told to go) and from curl, to the Go
/// server at `base`, over HTTP/1.1 or h2 (ALPN): every request's client and
/// server spans https and linked. The agent's output.
fn go_and_curl_linked(
    receiver: &Receiver,
    agent: Agent,
    client_bin: &Path,
    base: &str,
    prefix: &str,
    h2: bool,
) -> AgentOutput {
    let go_paths = paths(&format!("{prefix}go-"), 5);
    go_client(client_bin, base, &go_paths, h2, Duration::from_millis(1200));
    let curl_paths = paths(&format!("{prefix}curl-"), 5);
    for p in &curl_paths {
        curl_ok(
            &format!("{base}{p}"),
            &[if h2 { "--http2" } else { "--http1.1" }],
        );
    }
    let want = (go_paths.len() + curl_paths.len()) * 2;
    wait_for_paths(receiver, prefix, want);
    let out = agent.stop(SETTLE);
    let spans = receiver.spans();
    let version = if h2 { "2" } else { "1.1" };
    for (paths, client) in [(&go_paths, "tls_client"), (&curl_paths, "curl")] {
        for p in paths {
            assert_https_linked(&spans, p, (client, "tls_server"), version, &out.stderr);
        }
    }
    out
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
    let ids: Vec<u64> = agent.program_ids.iter().map(|&i| u64::from(i)).collect();
    let go_ids: Vec<u64> = ids
        .iter()
        .zip(bpftool_names(&ids))
        // The RET program serves Go programs whose Read's copy is not found.
        .filter(|(_, n)| n.starts_with("go_tls") && n != "go_tls_ret")
        .map(|(i, _)| *i)
        .collect();
    assert_eq!(go_ids.len(), 3, "{}", agent.stderr_so_far());
    let attached = bpftool_attached();
    for id in &go_ids {
        assert!(
            attached.contains(id),
            "Go TLS program {id} attached: {}",
            agent.stderr_so_far()
        );
    }

    let out = go_and_curl_linked(&receiver, agent, &client_bin, &base, "/go-tls-", false);
    assert!(
        out.stderr
            .contains("Go crypto/tls plaintext probes attached")
            && out.stderr.contains("go1."),
        "{}",
        out.stderr
    );
    // Read's end probed on its call to memmove (one trap), not on its RETs.
    assert!(
        out.stderr.contains(r#"read_end="memmove call""#),
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
    let attached = bpftool_attached();
    for id in &ids {
        assert!(!loaded.contains(id), "program {id} loaded after exit");
        assert!(!attached.contains(id), "program {id} attached after exit");
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
    go_and_curl_linked(&receiver, agent, &client_bin, &base, "/go-h2-", true);
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
    // the offsets come from the type descriptors.
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
        curl_ok(&format!("https://127.0.0.1:{port}{p}"), &["--http1.1"]);
    }
    wait_for_paths(&receiver, "/go-pie-", pie.len() * 2);
    let out = agent.stop(SETTLE);
    let spans = receiver.spans();
    for p in &pie {
        assert_https_linked(&spans, p, ("curl", "tls_server_pie"), "1.1", &out.stderr);
    }
    // Offsets from the type descriptors, whose pointers the loader
    // fills in (read from the relocations).
    let attached = out
        .stderr
        .lines()
        .find(|l| l.contains("plaintext probes attached") && l.contains("tls_server_pie"))
        .unwrap_or_default();
    assert!(
        attached.contains("type descriptors") && attached.contains("read_ahead=true"),
        "offsets without DWARF: {}",
        out.stderr
    );
}

#[test]
fn stripped_go_program_is_covered_through_its_function_table() {
    let Some(_g) = root_test("stripped_go_program_is_covered_through_its_function_table") else {
        return;
    };
    require_tool("curl");
    let dir = TempDir::new("tracer-gotls");
    let (cert, key) = certificate(dir.path());
    // No symbol table and no DWARF, how most Go releases ship: the
    // functions come from the runtime's own table, the itab by its methods,
    // the struct offsets from the runtime's type descriptors.
    // The server wraps its connections as proxies do: followed down to the
    // TCP connection.
    let bin = go_build(
        dir.path(),
        "tls_server",
        "tls_server_s",
        &["-ldflags=-s -w"],
    );
    let client_bin = go_build(
        dir.path(),
        "tls_client",
        "tls_client_s",
        &["-ldflags=-s -w"],
    );
    let (_server, port) = go_server_with(&bin, &cert, &key, false, true);
    let receiver = Receiver::start(Otlp::Grpc);
    let agent = Agent::start(&receiver.agent_args());
    let stripped = paths("/go-stripped-", 3);
    let base = format!("https://127.0.0.1:{port}");
    go_client(
        &client_bin,
        &base,
        &stripped,
        false,
        Duration::from_millis(1200),
    );
    wait_for_paths(&receiver, "/go-stripped-", stripped.len() * 2);
    let out = agent.stop(SETTLE);
    let spans = receiver.spans();
    for p in &stripped {
        assert_https_linked(
            &spans,
            p,
            ("tls_client_s", "tls_server_s"),
            "1.1",
            &out.stderr,
        );
    }
    let attached: Vec<&str> = out
        .stderr
        .lines()
        .filter(|l| {
            l.contains("Go crypto/tls plaintext probes attached")
                && (l.contains("tls_server_s") || l.contains("tls_client_s"))
        })
        .collect();
    assert_eq!(attached.len(), 2, "{}", out.stderr);
    // Offsets, read-ahead buffers included, from the type descriptors.
    assert!(
        attached
            .iter()
            .all(|l| l.contains("Go function table (stripped)")
                && l.contains("type descriptors")
                && l.contains("read_ahead=true")
                && l.contains(r#"read_end="memmove call""#)),
        "{attached:#?}"
    );
    let uncovered = out
        .stderr
        .lines()
        .any(|l| l.contains("TLS not covered") && l.contains("tls_"));
    assert!(!uncovered, "{}", out.stderr);
    assert_eq!(
        out.counter("kernel.drops{go_tls_no_socket}"),
        Some(0),
        "{}",
        out.stderr
    );
}

#[test]
fn short_lived_clients_are_named_as_started() {
    let Some(_g) = root_test("short_lived_clients_are_named_as_started") else {
        return;
    };
    let dir = TempDir::new("tracer-gotls");
    let (cert, key) = certificate(dir.path());
    let server_bin = go_build(dir.path(), "tls_server", "tls_server", &[]);
    // Longer than the kernel's 15-byte task name: the name it was started
    // with is only in /proc, and only while it runs.
    let name = "go_client_with_a_long_name";
    let client_bin = go_build(dir.path(), "tls_client", name, &["-ldflags=-s -w"]);
    let (_server, port) = go_server(&server_bin, &cert, &key, false);
    let base = format!("https://127.0.0.1:{port}");
    let receiver = Receiver::start(Otlp::Grpc);
    let agent = Agent::start(&receiver.agent_args());
    // Started after the agent; each handshakes, asks and exits within a
    // few milliseconds, well inside the ring's drain period, after a pause.
    let runs = 6;
    for run in 0..runs {
        let pause = Duration::from_millis(if run % 2 == 0 { 100 } else { 400 });
        go_client(&client_bin, &base, &[format!("/short-{run}")], false, pause);
    }
    wait_for_paths(&receiver, "/short-", runs * 2);
    let out = agent.stop(SETTLE);
    let spans = receiver.spans();
    let clients: Vec<(String, String)> = spans
        .iter()
        .filter(|s| attr(s, "url.path").starts_with("/short-") && f(s, "kind") == "CLIENT")
        .map(|s| (res(s, "service.name"), res(s, "tracer.service.name.source")))
        .collect();
    assert_eq!(clients.len(), runs, "{}", out.stderr);
    assert!(
        clients.iter().all(|(n, s)| n == name && s == "argv0"),
        "{clients:?}\n{}",
        out.stderr
    );
    assert!(
        out.counter("tls.exec_described").unwrap_or(0) >= runs as u64,
        "{}",
        out.stderr
    );
}

/// Python's ssl client for the `tls_deep` server: `n` connections in turn,
/// one GET each, the body (the request line echoed) checked. With a third
/// argument, connection i is made in turn with TLS 1.3, then TLS 1.2 with
/// AES-GCM, ChaCha20-Poly1305 and AES-CBC (records laid out three ways).
const DEEP_CLIENT: &str = r#"
import http.client, socket, ssl, sys
port, n = int(sys.argv[1]), int(sys.argv[2])
opts = sys.argv[3:]
suites = [None, "ECDHE+AESGCM", "ECDHE+CHACHA20", "ECDHE+AES+SHA1"] if "suites" in opts else [None]
for i in range(n):
    ctx = ssl._create_unverified_context()
    suite = suites[i % len(suites)]
    if suite:
        ctx.minimum_version = ctx.maximum_version = ssl.TLSVersion.TLSv1_2
        ctx.set_ciphers(suite)
    c = http.client.HTTPSConnection("127.0.0.1", port, context=ctx)
    c.request("GET", "/deep-%d" % i)
    if "halfclose" in opts:
        # The TCP socket's own shutdown: the TLS session stays, for the response.
        socket.socket.shutdown(c.sock, socket.SHUT_WR)
    r = c.getresponse()
    body = r.read().decode()
    assert r.status == 200 and ("GET /deep-%d HTTP" % i) in body, (i, r.status, body)
    assert suite is None or c.sock is None or c.sock.version() == "TLSv1.2"
    c.close()
print("done")
"#;

/// Runs `tls_deep` (with `server_args` after its port, certificate and
/// key) under the agent, sends it `n` requests from [`DEEP_CLIENT`] (with
/// `client_args`), and checks that every request has one client and one
/// server span, https, 200, linked, and that no response was left
/// without its request. Returns the agent's output.
fn deep_requests_linked(
    name: &str,
    server_args: &[&str],
    n: usize,
    client_args: &[&str],
) -> Option<AgentOutput> {
    let _g = root_test(name)?;
    require_tool("python3");
    let dir = TempDir::new("tracer-gotls-deep");
    let (cert, key) = certificate(dir.path());
    let bin = go_build(dir.path(), "tls_deep", "tls_deep", &[]);
    let port = free_port();
    let _server = Spawned::ready(
        Command::new(&bin)
            .arg(port.to_string())
            .args([&cert, &key])
            .args(server_args),
    );
    wait_port(port, Duration::from_secs(10));
    let receiver = Receiver::start(Otlp::Grpc);
    let agent = Agent::start(&receiver.agent_args());
    let out = tracer_e2e::run_ok(
        Command::new("python3")
            .args(["-c", DEEP_CLIENT])
            .args([port.to_string(), n.to_string()])
            .args(client_args),
    );
    assert_eq!(out.trim(), "done");
    wait_for_paths(&receiver, "/deep-", 2 * n);
    let out = agent.stop(SETTLE);
    let spans = receiver.spans();
    for i in 0..n {
        let path = format!("/deep-{i}");
        assert_https_linked(&spans, &path, ("python3", "tls_deep"), "1.1", &out.stderr);
    }
    assert_eq!(
        out.counter("correlation.unmatched_response"),
        Some(0),
        "{}",
        out.stderr
    );
    Some(out)
}

/// A client that half-closes after its request (its FIN sent with it):
/// the server's Read takes the request's record and the FIN in one
/// receive, after which the socket's `copied_seq` counts the FIN. The
/// record's sequence number is where its data starts all the same, under
/// TLS 1.3 and 1.2, so each server span links to its client span.
#[test]
fn go_server_reading_a_request_with_its_fin_links_its_spans() {
    deep_requests_linked(
        "go_server_reading_a_request_with_its_fin_links_its_spans",
        &["late"],
        40,
        &["suites", "halfclose"],
    );
}

/// An entry probe sits on the stack check's branch, which a call whose
/// prologue grows the goroutine's stack passes twice (morestack restarts
/// it): a server whose Read and Write run at a depth that changes with
/// every connection, so that some of them grow the stack on entry. Every
/// request's server span is there once, with its response (a Write seen
/// twice would repeat the response: a response without its request).
#[test]
fn go_calls_that_grow_the_stack_are_seen_once() {
    // Depths 0-199 frames, each way (the stack starts at 2 KiB and
    // doubles: the checks are crossed at several depths).
    deep_requests_linked("go_calls_that_grow_the_stack_are_seen_once", &[], 400, &[]);
}

/// A server that never calls `Handshake` (a plain `tls.Listen` server):
/// each connection's first Read shakes hands before it decrypts the
/// request, so the request's record is not the next in the stream at the
/// Read's entry. Its sequence number, found at the Read's return, is the
/// client's, under TLS 1.3 and under TLS 1.2 with each record layout (an
/// explicit nonce of 0, 8 and 16 bytes); the first Read of a connection
/// also meets its `Conn`'s buffers before Go ever wrote them.
#[test]
fn go_server_whose_first_read_shakes_hands_links_its_spans() {
    let Some(out) = deep_requests_linked(
        "go_server_whose_first_read_shakes_hands_links_its_spans",
        &["implicit"],
        120,
        &["suites"],
    ) else {
        return;
    };
    assert_eq!(
        out.counter("kernel.go_tls_record_not_found"),
        Some(0),
        "{}",
        out.stderr
    );
}
