//! gRPC call kinds between a real server and client of one implementation
//! (raw-bytes messages): grpcio (tests/py/grpc_calls.py), and tonic
//! (tests/src/bin/tonic_peer.rs), grpc-go (tests/go/grpc_peer.go) and
//! grpc-js (tests/node/grpc_peer.js), which speak its protocol, exported to
//! a real OTLP receiver: unary, server-, client- and bidi-streaming calls,
//! NOT_FOUND and an expired deadline, 50 calls multiplexed on one
//! connection, and a `traceparent` sent as gRPC metadata.
use std::time::Duration;

use serde_json::Value;
use tracer_e2e::{
    free_port, grpc_go, grpc_js, grpc_py, grpc_side, grpc_tonic, reply, root,
    span::{attr, f, res},
    Agent, AgentOutput, Otlp, Receiver, Spawned,
};

const SETTLE: Duration = Duration::from_millis(1500);
const SERVICE: &str = "calls.Calls";
/// How many calls the concurrent test multiplexes.
const CONCURRENT: usize = 50;
/// The unary methods the tests call, besides M0..M(CONCURRENT-1) (a grpc-js
/// server serves only the methods it is told).
const UNARY: [&str; 6] = ["Hello", "NotFoundX", "Sleep", "After", "Warm", "Traced"];

/// The implementation on both ends of a test.
#[derive(Clone, Copy, Debug)]
enum Peer {
    /// grpcio (gRPC C-core).
    Grpcio,
    /// tonic (Rust, on h2).
    Tonic,
    /// grpc-go (Debian's golang-google-grpc-dev).
    GrpcGo,
    /// @grpc/grpc-js on Node.
    GrpcJs,
}

impl Peer {
    /// Its `role` ("server" or "client", the client with one channel to
    /// `port`), named calls-`role`.
    fn start(self, role: &str, port: u16) -> Spawned {
        let svc = format!("calls-{role}");
        match self {
            Peer::Grpcio => grpc_py("grpc_calls.py", role, port, &svc),
            Peer::Tonic => grpc_tonic!(role, port, &svc),
            Peer::GrpcGo => grpc_go(role, port, &svc, None),
            Peer::GrpcJs => {
                let many: Vec<String> = (0..CONCURRENT).map(|i| format!("M{i}")).collect();
                let methods: Vec<&str> = UNARY
                    .iter()
                    .copied()
                    .chain(many.iter().map(String::as_str))
                    .collect();
                grpc_js(role, port, &svc, &methods, None)
            }
        }
    }

    /// The status its client prints for a call whose deadline expired, and
    /// the gRPC code its server sends then. tonic times the call out as
    /// CANCELLED on both ends (its `GrpcTimeout` layer); grpcio, grpc-go
    /// (its handler returns the expired context's status) and grpc-js (its
    /// server's own deadline timer) as DEADLINE_EXCEEDED.
    fn deadline_status(self) -> (&'static str, &'static str) {
        match self {
            Peer::Grpcio | Peer::GrpcGo | Peer::GrpcJs => ("DEADLINE_EXCEEDED", "4"),
            Peer::Tonic => ("CANCELLED", "1"),
        }
    }
}

/// Run one client command; returns the status names it printed.
fn run(c: &mut Spawned, cmd: &str) -> String {
    c.send(cmd);
    reply(c)
}

/// The spans of one side (`CLIENT` or `SERVER`) of method `method`.
fn of<'a>(spans: &'a [Value], kind: &str, method: &str) -> Vec<&'a Value> {
    grpc_side(spans, kind, "calls-client", "calls-server")
        .into_iter()
        .filter(|s| f(s, "name") == format!("{SERVICE}/{method}"))
        .collect()
}

/// The server of `peer`, a receiver, an agent exporting to it and its
/// client, started in that order.
fn start(peer: Peer) -> (Spawned, Receiver, Agent, Spawned) {
    let port = free_port();
    let server = peer.start("server", port);
    let receiver = Receiver::start(Otlp::Grpc);
    let agent = Agent::start(&receiver.agent_args());
    let c = peer.start("client", port);
    (server, receiver, agent, c)
}

/// Whether both sides of `method` have exactly one span.
fn both(s: &[Value], method: &str) -> bool {
    of(s, "SERVER", method).len() == 1 && of(s, "CLIENT", method).len() == 1
}

/// Waits (up to `timeout`) until `done`, ends the client, then stops the
/// agent and returns its output and the spans received. The client quits
/// once its spans are out: the agent describes a process (its
/// OTEL_SERVICE_NAME) while it is alive, and the tonic client exits at
/// once.
fn finish(
    mut c: Spawned,
    receiver: &Receiver,
    agent: Agent,
    timeout: Duration,
    done: impl Fn(&[Value]) -> bool,
) -> (AgentOutput, Vec<Value>) {
    receiver.wait_for(timeout, done);
    c.send("quit");
    let _ = c.finish();
    let out = agent.stop(SETTLE);
    eprintln!("agent: {}", out.stderr);
    (out, receiver.spans())
}

/// Both sides of one call: exactly one client and one server span, with
/// the gRPC attributes of `method` and status `code`, the server's parent
/// the client span. Returns (client, server).
/// A code may list alternatives (`"4|"`); "" means absent.
fn pair<'a>(
    spans: &'a [Value],
    method: &str,
    client_code: &str,
    server_code: &str,
) -> (&'a Value, &'a Value) {
    let (c, s) = (of(spans, "CLIENT", method), of(spans, "SERVER", method));
    if (c.len(), s.len()) != (1, 1) {
        // Whatever else carries the method says where a missing side went
        // (another name, another process, another kind).
        let named = format!("/{method}");
        let elsewhere: Vec<String> = spans
            .iter()
            .filter(|x| attr(x, "rpc.method") == method || f(x, "name").ends_with(&named))
            .map(|x| {
                format!(
                    "{} {} of {:?} pid {}",
                    f(x, "kind"),
                    f(x, "name"),
                    res(x, "service.name"),
                    res(x, "process.pid")
                )
            })
            .collect();
        panic!("{method}: {c:?} {s:?}; spans naming it: {elsewhere:?}");
    }
    for (sp, code) in [(c[0], client_code), (s[0], server_code)] {
        for (k, want) in [
            ("rpc.system", "grpc"),
            ("rpc.service", SERVICE),
            ("rpc.method", method),
            ("network.protocol.version", "2"),
            ("url.path", &format!("/{SERVICE}/{method}")),
            ("http.request.method", "POST"),
        ] {
            assert_eq!(attr(sp, k), want, "{k} of {sp}");
        }
        let got = attr(sp, "rpc.grpc.status_code");
        assert!(code.split('|').any(|c| c == got), "status {got}: {sp}");
        assert_eq!(attr(sp, "tracer.headers_unknown"), "", "{sp}");
        assert_eq!(attr(sp, "tracer.response_headers_unknown"), "", "{sp}");
    }
    assert_eq!(f(s[0], "trace_id"), f(c[0], "trace_id"), "{method}");
    assert_eq!(
        f(s[0], "parent_span_id"),
        f(c[0], "span_id"),
        "{method}: the server span's parent is its client span"
    );
    (c[0], s[0])
}

fn status(s: &Value) -> &str {
    f(s, "status_code")
}

fn call_kinds_and_error_statuses_on_both_sides(peer: Peer) {
    let (_server, receiver, agent, mut c) = start(peer);
    let (deadline, deadline_code) = peer.deadline_status();
    assert_eq!(run(&mut c, "unary Hello"), "OK");
    assert_eq!(run(&mut c, "sstream 5"), "OK");
    assert_eq!(run(&mut c, "cstream 4"), "OK");
    assert_eq!(run(&mut c, "bidi 3"), "OK");
    assert_eq!(run(&mut c, "unary NotFoundX"), "NOT_FOUND");
    assert_eq!(run(&mut c, "unary Sleep 200 1000"), deadline);
    // One more call after the cancelled one: the connection still decodes.
    assert_eq!(run(&mut c, "unary After"), "OK");
    let (_out, spans) = finish(c, &receiver, agent, Duration::from_secs(30), |s| {
        both(s, "After")
    });
    // (method, messages the client sent, messages the server sent)
    for (m, by_client, by_server) in [
        ("Hello", 1, 1),
        ("ServerStream", 1, 5),
        ("ClientStream", 4, 1),
        ("Bidi", 3, 3),
        ("After", 1, 1),
    ] {
        let (c, s) = pair(&spans, m, "0", "0");
        assert_ne!(status(c), "ERROR", "{c}");
        assert_ne!(status(s), "ERROR", "{s}");
        // Each side counts what it sent and what it received.
        for (sp, sent, received) in [(c, by_client, by_server), (s, by_server, by_client)] {
            assert_eq!(
                attr(sp, "tracer.rpc.messages_sent"),
                sent.to_string(),
                "{sp}"
            );
            assert_eq!(
                attr(sp, "tracer.rpc.messages_received"),
                received.to_string(),
                "{sp}"
            );
            assert_eq!(attr(sp, "tracer.rpc.messages_lower_bound"), "", "{sp}");
        }
    }
    // NOT_FOUND is an error for the client only; DEADLINE_EXCEEDED for
    // both, CANCELLED for the client only (semantic conventions, rpc/grpc
    // status lists).
    let (c, s) = pair(&spans, "NotFoundX", "5", "5");
    assert_eq!((status(c), status(s)), ("ERROR", "UNSET"));
    // The request, and no reply.
    assert_eq!(attr(c, "tracer.rpc.messages_sent"), "1", "{c}");
    assert_eq!(attr(c, "tracer.rpc.messages_received"), "0", "{c}");
    // The deadline: both ends time the call out at once (the server from
    // `grpc-timeout`). The server sends trailers with its code (grpcio 4,
    // tonic 1); the client resets the stream (RST_STREAM CANCEL) on its
    // own timer; which of the two each end reads first is a race. A
    // client that read no status made its status inside the library, not
    // on the wire: its span carries no status code, not a guessed one,
    // and is an error because the stream was reset without one. A server
    // whose stream the client reset first has no status either, and a
    // cancel by the client is not the server's error.
    let code = format!("{deadline_code}|");
    let (c, s) = pair(&spans, "Sleep", &code, &code);
    assert_eq!(status(c), "ERROR");
    let why = attr(c, "error.type");
    assert!(why == deadline_code || why == "stream_reset", "{c}");
    let server_code = attr(s, "rpc.grpc.status_code");
    let want = if server_code == "4" { "ERROR" } else { "UNSET" };
    assert_eq!(status(s), want, "{s}");
    eprintln!("{peer:?} deadline: client status code {why:?}, server {server_code:?}");
}

fn fifty_concurrent_calls_on_one_connection_are_each_linked_right(peer: Peer) {
    let (_server, receiver, agent, mut c) = start(peer);
    // A first call opens the connection, so the 50 share it.
    assert_eq!(run(&mut c, "unary Warm"), "OK");
    let n = CONCURRENT;
    let codes = run(&mut c, &format!("many {n}"));
    assert_eq!(
        codes.split(' ').filter(|c| *c == "OK").count(),
        n,
        "{codes}"
    );
    let done = |s: &[Value]| (0..n).all(|i| both(s, &format!("M{i}")));
    let (out, spans) = finish(c, &receiver, agent, Duration::from_secs(15), done);
    // Each method name is unique: a span of M{i} whose parent is not the
    // client span of M{i} is a crossed pair, and fails in `pair`.
    let mut conns = std::collections::HashSet::new();
    let mut whole = 0;
    for i in 0..n {
        let m = format!("M{i}");
        if of(&spans, "CLIENT", &m).is_empty() && of(&spans, "SERVER", &m).is_empty() {
            continue;
        }
        let (c, s) = pair(&spans, &m, "0", "0");
        conns.insert(attr(c, "network.peer.port") + &attr(s, "network.peer.port"));
        whole += 1;
    }
    // No span may name a method the test did not call.
    for s in &spans {
        let name = f(s, "name");
        if let Some(m) = name.strip_prefix("calls.Calls/") {
            assert!(
                m == "Warm" || m.strip_prefix('M').and_then(|i| i.parse::<usize>().ok()) < Some(n),
                "{s}"
            );
        }
    }
    // The 50 HEADERS frames (and tonic's 150 answer frames) share a few
    // packets: the kernel's frame walk copies every header block, and the
    // OTLP receiver's end of the agent's exports, which reads bytes the
    // kernel never copies, is silenced. Nothing is missing.
    let holes = out.counter("streams.bytes_hole").unwrap_or(0);
    eprintln!(
        "{peer:?}: {whole} of {n} concurrent calls decoded on both sides; bytes_hole={holes}"
    );
    assert_eq!(holes, 0, "{}", out.stderr);
    assert!(
        out.counter("silenced_agent_peer").unwrap_or(0) >= 1,
        "the receiver's end of the exports: {}",
        out.stderr
    );
    assert_eq!(whole, n, "{}", out.stderr);
    assert_eq!(conns.len(), 1, "all calls on one connection: {conns:?}");
}

fn traceparent_metadata_is_honoured(peer: Peer) {
    let (_server, receiver, agent, mut c) = start(peer);
    let (trace, parent) = ("4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7");
    assert_eq!(run(&mut c, &format!("traced 00-{trace}-{parent}-01")), "OK");
    let (_out, spans) = finish(c, &receiver, agent, Duration::from_secs(30), |s| {
        both(s, "Traced")
    });
    let (c, s) = pair(&spans, "Traced", "0", "0");
    // The client span joins the trace its process propagated, as a child
    // of the span that sent it; the server span stays the client span's
    // child.
    assert_eq!(f(c, "trace_id"), trace, "{c}");
    assert_eq!(f(c, "parent_span_id"), parent, "{c}");
    assert_eq!(f(s, "trace_id"), trace, "{s}");
}

root!(
    grpc_call_kinds_and_error_statuses_on_both_sides,
    call_kinds_and_error_statuses_on_both_sides(Peer::Grpcio)
);
root!(
    tonic_call_kinds_and_error_statuses_on_both_sides,
    call_kinds_and_error_statuses_on_both_sides(Peer::Tonic)
);
root!(
    grpc_fifty_concurrent_calls_on_one_connection_are_each_linked_right,
    fifty_concurrent_calls_on_one_connection_are_each_linked_right(Peer::Grpcio)
);
root!(
    tonic_fifty_concurrent_calls_on_one_connection_are_each_linked_right,
    fifty_concurrent_calls_on_one_connection_are_each_linked_right(Peer::Tonic)
);
root!(
    grpc_traceparent_metadata_is_honoured,
    traceparent_metadata_is_honoured(Peer::Grpcio)
);
root!(
    tonic_traceparent_metadata_is_honoured,
    traceparent_metadata_is_honoured(Peer::Tonic)
);
root!(
    grpc_go_call_kinds_and_error_statuses_on_both_sides,
    call_kinds_and_error_statuses_on_both_sides(Peer::GrpcGo)
);
root!(
    grpc_js_call_kinds_and_error_statuses_on_both_sides,
    call_kinds_and_error_statuses_on_both_sides(Peer::GrpcJs)
);
root!(
    grpc_go_fifty_concurrent_calls_on_one_connection_are_each_linked_right,
    fifty_concurrent_calls_on_one_connection_are_each_linked_right(Peer::GrpcGo)
);
root!(
    grpc_js_fifty_concurrent_calls_on_one_connection_are_each_linked_right,
    fifty_concurrent_calls_on_one_connection_are_each_linked_right(Peer::GrpcJs)
);
root!(
    grpc_go_traceparent_metadata_is_honoured,
    traceparent_metadata_is_honoured(Peer::GrpcGo)
);
root!(
    grpc_js_traceparent_metadata_is_honoured,
    traceparent_metadata_is_honoured(Peer::GrpcJs)
);
