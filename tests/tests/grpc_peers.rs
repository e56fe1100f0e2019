//! gRPC implementations other than grpcio, which differ in how they use
//! HPACK: grpc-go (tests/go/grpc_peer.go, Debian's golang-google-grpc-dev)
//! indexes `:path` on its first use and names the method by a one-byte index
//! afterwards; grpc-js (tests/node/grpc_peer.js, @grpc/grpc-js from npm)
//! sends it as a literal every time, as does tonic (tests/src/bin/
//! tonic_peer.rs, Rust on `h2`). Each is tested against itself and against
//! grpcio (tests/py/grpc_calls.py), tonic also against grpc-go, all speaking
//! the same raw-bytes `calls.Calls` service, exported to a real OTLP
//! receiver; grpc-js and grpc-go also over TLS (OpenSSL in Node, Go's
//! crypto/tls), with each other too.
//!
//! Many sequential unary calls on ONE channel cycle over a few methods, so
//! that repeated methods are sent by index: every span's method is compared
//! with the call the test made at its place in time order, and every server
//! span's parent must be its own call's client span.
use std::{path::Path, time::Duration};

use serde_json::Value;
use tracer_e2e::{
    free_port, grpc_go, grpc_js, grpc_py, grpc_side, grpc_tonic, reply, root,
    span::{attr, f},
    tempdir::TempDir,
    tls::certificate,
    Agent, AgentOutput, Otlp, Receiver, Spawned,
};

const SETTLE: Duration = Duration::from_millis(1500);
const SERVICE: &str = "calls.Calls";
/// The methods the calls cycle over (every server knows them; grpc-js
/// serves only the methods it is told).
const METHODS: [&str; 4] = ["Alpha", "Beta", "Gamma", "Delta"];
/// Methods first called after the agent attached in the mid-connection
/// test.
const LATE: [&str; 3] = ["Late0", "Late1", "Late2"];
const NOT_FOUND: &str = "NotFoundX";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Peer {
    /// grpc-go.
    Go,
    /// @grpc/grpc-js on Node.
    Js,
    /// grpcio (gRPC C-core).
    Py,
    /// tonic (Rust, on h2).
    Tonic,
}

impl Peer {
    fn name(self) -> &'static str {
        match self {
            Peer::Go => "go",
            Peer::Js => "js",
            Peer::Py => "py",
            Peer::Tonic => "tonic",
        }
    }

    /// Its OTEL_SERVICE_NAME as `role` ("client" or "server").
    fn service(self, role: &str) -> String {
        format!("{}-{role}", self.name())
    }

    /// Starts it as `role` against/on `port`; waits for "ready". `tls`: a
    /// directory with cert.pem and key.pem to speak TLS with (grpc-js and
    /// grpc-go only).
    fn start(self, role: &str, port: u16, tls: Option<&Path>) -> Spawned {
        assert!(
            tls.is_none() || matches!(self, Peer::Js | Peer::Go),
            "TLS only with grpc-js and grpc-go"
        );
        let svc = self.service(role);
        match self {
            Peer::Py => grpc_py("grpc_calls.py", role, port, &svc),
            Peer::Go => grpc_go(role, port, &svc, tls),
            Peer::Tonic => grpc_tonic!(role, port, &svc),
            Peer::Js => {
                let methods: Vec<&str> = METHODS
                    .iter()
                    .chain(&LATE)
                    .chain(&[NOT_FOUND])
                    .copied()
                    .collect();
                grpc_js(role, port, &svc, &methods, tls)
            }
        }
    }

    /// One unary call of `method` with request content unique to call `i`
    /// (grpcio's client takes no content: its request is fixed); returns
    /// the status name.
    fn call(self, c: &mut Spawned, method: &str, i: usize) -> String {
        if self == Peer::Py {
            c.send(&format!("unary {method}"));
        } else {
            c.send(&format!("unary {method} 0,1,0,{}-call-{i}", self.name()));
        }
        reply(c)
    }
}

/// The method of call `i` of a run: the methods cycle in an irregular
/// order, so that each is sent again after others (by index for grpc-go
/// and grpcio).
fn method_of(i: usize) -> &'static str {
    METHODS[(i * i + i / 3) % METHODS.len()]
}

/// Spans of one side of the pair, in time order.
fn side<'a>(spans: &'a [Value], kind: &str, client: Peer, server: Peer) -> Vec<&'a Value> {
    let mut v: Vec<&Value> = grpc_side(
        spans,
        kind,
        &client.service("client"),
        &server.service("server"),
    )
    .into_iter()
    .collect();
    v.sort_by_key(|s| s["start_time_unix_nano"].as_u64().unwrap_or(0));
    v
}

/// Every attribute of a span decoded whole is that of `method` with
/// status `code`.
fn check_whole(s: &Value, method: &str, code: &str) {
    for (k, want) in [
        ("rpc.system", "grpc"),
        ("rpc.service", SERVICE),
        ("rpc.method", method),
        ("url.path", &format!("/{SERVICE}/{method}")),
        ("http.request.method", "POST"),
        ("network.protocol.version", "2"),
        ("rpc.grpc.status_code", code),
        ("tracer.headers_unknown", ""),
    ] {
        assert_eq!(attr(s, k), want, "{k} of {s}");
    }
    assert_eq!(f(s, "name"), format!("{SERVICE}/{method}"), "{s}");
}

/// Whether a span of a call of `method` is not decoded whole (a header
/// reported unknown, with the reason); panics on a method, path, service
/// or status present but not the call's, and on a span that lacks an
/// attribute without saying a header was unknown.
fn unknown_or_right(s: &Value, method: &str, code: &str) -> bool {
    let unknown = attr(s, "tracer.headers_unknown");
    if unknown.is_empty() {
        check_whole(s, method, code);
        return false;
    }
    for (k, want) in [
        ("rpc.method", method.to_string()),
        ("url.path", format!("/{SERVICE}/{method}")),
        ("rpc.service", SERVICE.to_string()),
        ("http.request.method", "POST".to_string()),
        ("rpc.grpc.status_code", code.to_string()),
    ] {
        let v = attr(s, k);
        assert!(v.is_empty() || v == want, "{k}={v}, call {method}: {s}");
    }
    // Named by the method, by the HTTP method and path when gRPC was not
    // recognised, or by the HTTP method alone.
    let name = f(s, "name");
    assert!(
        name == format!("{SERVICE}/{method}")
            || name == format!("POST /{SERVICE}/{method}")
            || !name.contains('/'),
        "name {name}, call {method}: {s}"
    );
    true
}

fn status_of(method: &str) -> &'static str {
    if method == NOT_FOUND {
        "5"
    } else {
        "0"
    }
}

/// `client` calling `server` on one channel: `n` calls cycling over
/// [`METHODS`], then one NOT_FOUND. Every call gives exactly one client and
/// one server span, decoded whole, in the order called, each server span
/// the child of its own client span.
fn unary_calls(client: Peer, server: Peer) {
    unary_calls_over(client, server, false)
}

/// [`unary_calls`], over TLS when `tls` (url.scheme https on every span).
fn unary_calls_over(client: Peer, server: Peer, tls: bool) {
    unary_calls_after(client, server, tls, Duration::ZERO);
}

/// As [`unary_calls_over`], the calls made `pause` after the client is
/// ready (its channel made).
fn unary_calls_after(client: Peer, server: Peer, tls: bool, pause: Duration) {
    let dir = TempDir::new("tracer-grpc-peers");
    let tls = tls.then(|| {
        certificate(dir.path());
        dir.path()
    });
    let port = free_port();
    let _server = server.start("server", port, tls);
    let receiver = Receiver::start(Otlp::Grpc);
    let agent = Agent::start(&receiver.agent_args());
    let mut c = client.start("client", port, tls);
    std::thread::sleep(pause);
    let n = 30;
    let mut sent: Vec<&str> = (0..n).map(method_of).collect();
    sent.push(NOT_FOUND);
    for (i, m) in sent.iter().enumerate() {
        let want = if *m == NOT_FOUND { "NOT_FOUND" } else { "OK" };
        assert_eq!(client.call(&mut c, m, i), want, "call {i} {m}");
    }
    let done = |s: &[Value]| {
        side(s, "CLIENT", client, server).len() >= sent.len()
            && side(s, "SERVER", client, server).len() >= sent.len()
    };
    receiver.wait_for(Duration::from_secs(30), done);
    // The client quits once its spans are out: the agent describes a
    // process (its OTEL_SERVICE_NAME) while it is alive.
    c.send("quit");
    let _ = c.finish();
    let out = agent.stop(SETTLE);
    let spans = receiver.spans();
    let (cs, ss) = (
        side(&spans, "CLIENT", client, server),
        side(&spans, "SERVER", client, server),
    );
    let got = |v: &[&Value]| -> Vec<String> { v.iter().map(|s| attr(s, "rpc.method")).collect() };
    assert_eq!(got(&cs), sent, "client spans in time order; {}", out.stderr);
    assert_eq!(got(&ss), sent, "server spans in time order; {}", out.stderr);
    let scheme = if tls.is_some() { "https" } else { "http" };
    for (i, m) in sent.iter().enumerate() {
        check_whole(cs[i], m, status_of(m));
        check_whole(ss[i], m, status_of(m));
        assert_eq!(attr(cs[i], "url.scheme"), scheme, "{}", cs[i]);
        assert_eq!(attr(ss[i], "url.scheme"), scheme, "{}", ss[i]);
        assert_eq!(f(ss[i], "trace_id"), f(cs[i], "trace_id"), "call {i} {m}");
        assert_eq!(
            f(ss[i], "parent_span_id"),
            f(cs[i], "span_id"),
            "call {i} {m}: the server span's parent is its own client span"
        );
    }
    // NOT_FOUND is an error for the client only (semantic conventions).
    let last = sent.len() - 1;
    assert_eq!(f(cs[last], "status_code"), "ERROR", "{}", cs[last]);
    assert_ne!(f(ss[last], "status_code"), "ERROR", "{}", ss[last]);
    eprintln!(
        "{} client -> {} server: {} calls, all decoded whole and linked",
        client.name(),
        server.name(),
        sent.len()
    );
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

/// A channel of `peer` to its own server, used before the agent starts
/// (so its HPACK tables hold entries the agent never saw): the calls made
/// after the attach, to methods called before it and to new ones, are each
/// decoded right or reported unknown with a reason, never with another
/// call's method. Prints the share recovered.
fn channel_open_before_the_agent(peer: Peer) {
    let port = free_port();
    let _server = peer.start("server", port, None);
    let mut c = peer.start("client", port, None);
    for (i, m) in METHODS.iter().enumerate() {
        assert_eq!(peer.call(&mut c, m, i), "OK");
    }
    let receiver = Receiver::start(Otlp::Grpc);
    let agent = Agent::start(&receiver.agent_args());
    // Known-before and new methods interleaved, each repeated.
    let sent: Vec<&str> = (0..30)
        .map(|i| {
            if i % 2 == 0 {
                method_of(i)
            } else {
                LATE[(i / 2) % LATE.len()]
            }
        })
        .collect();
    for (i, m) in sent.iter().enumerate() {
        assert_eq!(peer.call(&mut c, m, 100 + i), "OK", "call {i} {m}");
    }
    // The first call after the attach may go by while the agent finds the
    // frames of the connection: the rest are waited for. The client quits
    // once its spans are out (the agent describes a live process).
    receiver.wait_for(Duration::from_secs(20), |s| {
        side(s, "CLIENT", peer, peer).len() + 1 >= sent.len()
            && side(s, "SERVER", peer, peer).len() + 1 >= sent.len()
    });
    std::thread::sleep(SETTLE);
    c.send("quit");
    let _ = c.finish();
    let out = agent.stop(SETTLE);
    let spans = receiver.spans();
    // (spans, decoded whole, path known) per side.
    let mut tally = Vec::new();
    for kind in ["CLIENT", "SERVER"] {
        let v = side(&spans, kind, peer, peer);
        assert!(v.len() <= sent.len(), "{kind}: more spans than calls");
        let mut whole = 0;
        let mut with_path = 0;
        if v.len() == sent.len() {
            // One span per call: each is compared with its own call.
            for (s, m) in v.iter().zip(&sent) {
                whole += usize::from(!unknown_or_right(s, m, "0"));
                with_path += usize::from(!attr(s, "url.path").is_empty());
            }
        } else {
            // Some calls gave no span: each span whose path was decoded
            // must be a later call's than the span before it.
            let mut rest = sent.iter();
            for s in &v {
                let path = attr(s, "url.path");
                if path.is_empty() {
                    assert!(!attr(s, "tracer.headers_unknown").is_empty(), "{s}");
                    assert_eq!(attr(s, "rpc.method"), "", "{s}");
                    continue;
                }
                let m = rest
                    .find(|m| path == format!("/{SERVICE}/{m}"))
                    .unwrap_or_else(|| panic!("{path} was not called next: {s}"));
                whole += usize::from(!unknown_or_right(s, m, "0"));
                with_path += 1;
            }
        }
        tally.push((v.len(), whole, with_path));
    }
    let reasons: std::collections::BTreeSet<String> = spans
        .iter()
        .map(|s| attr(s, "tracer.headers_unknown"))
        .filter(|u| !u.is_empty())
        .collect();
    let n = 2 * sent.len();
    let (whole, with_path) = (tally[0].1 + tally[1].1, tally[0].2 + tally[1].2);
    eprintln!(
        "{} channel open before the agent: {} client and {} server spans of {} calls; \
         decoded whole {whole} of {n} ({:.0} %), path known {with_path} of {n} ({:.0} %); \
         unknown reasons {reasons:?}; losses counted {}",
        peer.name(),
        tally[0].0,
        tally[1].0,
        sent.len(),
        100.0 * whole as f64 / n as f64,
        100.0 * with_path as f64 / n as f64,
        lost(&out),
    );
    assert!(tally[0].0 + tally[1].0 > 0, "{}", out.stderr);
    // Fields the attach did not hide decode: the Late methods' paths
    // (literals for grpc-js; for grpc-go, entries added after the attach).
    assert!(with_path > 0, "no path decoded: {}", out.stderr);
    // The tables from before the attach are unknown, and counted so.
    assert!(
        out.counter("http.hpack_lost_attach").unwrap_or(0) > 0,
        "{}",
        out.stderr
    );
}

root!(
    grpc_go_client_to_grpc_go_server,
    unary_calls(Peer::Go, Peer::Go)
);
root!(
    grpcio_client_to_grpc_go_server,
    unary_calls(Peer::Py, Peer::Go)
);
root!(
    grpc_go_client_to_grpcio_server,
    unary_calls(Peer::Go, Peer::Py)
);
root!(
    grpc_js_client_to_grpc_js_server,
    unary_calls(Peer::Js, Peer::Js)
);
root!(
    grpc_js_over_tls_is_linked_like_cleartext,
    unary_calls_over(Peer::Js, Peer::Js, true)
);
root!(
    grpc_go_over_tls_is_linked_like_cleartext,
    unary_calls_over(Peer::Go, Peer::Go, true)
);
// The grpc-go client starts after the agent, and no running process maps
// its executable: it connects as its channel is made, and its preface and
// SETTINGS go out before its probes are attached (its program is read 20
// ms after its exec). Its plaintext then begins later in the connection,
// at a call: read from there as HTTP/2 (it was taken for something else,
// and none of its calls made a span). The calls come once its probes are
// there (read at the latest by the 500 ms scan when its exec event is
// missed), so every one is decoded whole.
root!(
    grpc_go_client_started_after_the_agent_to_grpc_js_server_over_tls,
    unary_calls_after(Peer::Go, Peer::Js, true, Duration::from_millis(1500))
);
root!(
    grpcio_client_to_grpc_js_server,
    unary_calls(Peer::Py, Peer::Js)
);
root!(
    grpc_js_client_to_grpcio_server,
    unary_calls(Peer::Js, Peer::Py)
);
root!(
    grpc_go_channel_open_before_the_agent_is_never_wrong,
    channel_open_before_the_agent(Peer::Go)
);
root!(
    grpc_js_channel_open_before_the_agent_is_never_wrong,
    channel_open_before_the_agent(Peer::Js)
);
root!(
    tonic_client_to_tonic_server,
    unary_calls(Peer::Tonic, Peer::Tonic)
);
root!(
    tonic_client_to_grpcio_server,
    unary_calls(Peer::Tonic, Peer::Py)
);
root!(
    grpcio_client_to_tonic_server,
    unary_calls(Peer::Py, Peer::Tonic)
);
root!(
    tonic_client_to_grpc_go_server,
    unary_calls(Peer::Tonic, Peer::Go)
);
root!(
    grpc_go_client_to_tonic_server,
    unary_calls(Peer::Go, Peer::Tonic)
);
root!(
    tonic_channel_open_before_the_agent_is_never_wrong,
    channel_open_before_the_agent(Peer::Tonic)
);
