//! gRPC call kinds against a real grpcio server and client (raw-bytes
//! messages, tests/py/grpc_calls.py), exported to a real OTLP receiver:
//! unary, server-, client- and bidi-streaming calls, NOT_FOUND and
//! DEADLINE_EXCEEDED, 50 calls multiplexed on one connection, and a
//! `traceparent` sent as gRPC metadata.
use std::time::Duration;

use serde_json::Value;
use tracer_e2e::{
    free_port, grpc_py, grpc_side, reply, root_test,
    span::{attr, f},
    Agent, AgentOutput, Otlp, Receiver, Spawned,
};

const SETTLE: Duration = Duration::from_millis(1500);
const SERVICE: &str = "calls.Calls";

/// The grpcio server of tests/py/grpc_calls.py on a fresh port.
fn server() -> (Spawned, u16) {
    let port = free_port();
    (
        grpc_py("grpc_calls.py", "server", port, "calls-server"),
        port,
    )
}

/// Its client, with one channel to `port`.
fn client(port: u16) -> Spawned {
    grpc_py("grpc_calls.py", "client", port, "calls-client")
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

/// The server, a receiver, an agent exporting to it and a client, started
/// in that order.
fn start() -> (Spawned, Receiver, Agent, Spawned) {
    let (server, port) = server();
    let receiver = Receiver::start(Otlp::Grpc);
    let agent = Agent::start(&receiver.agent_args());
    let c = client(port);
    (server, receiver, agent, c)
}

/// Whether both sides of `method` have exactly one span.
fn both(s: &[Value], method: &str) -> bool {
    of(s, "SERVER", method).len() == 1 && of(s, "CLIENT", method).len() == 1
}

/// Ends the client, waits (up to `timeout`) until `done`, then stops the
/// agent and returns its output and the spans received.
fn finish(
    mut c: Spawned,
    receiver: &Receiver,
    agent: Agent,
    timeout: Duration,
    done: impl Fn(&[Value]) -> bool,
) -> (AgentOutput, Vec<Value>) {
    c.send("quit");
    let _ = c.finish();
    receiver.wait_for(timeout, done);
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
    assert_eq!((c.len(), s.len()), (1, 1), "{method}: {c:?} {s:?}");
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

#[test]
fn grpc_call_kinds_and_error_statuses_on_both_sides() {
    let Some(_g) = root_test("grpc_call_kinds_and_error_statuses_on_both_sides") else {
        return;
    };
    let (_server, receiver, agent, mut c) = start();
    assert_eq!(run(&mut c, "unary Hello"), "OK");
    assert_eq!(run(&mut c, "sstream 5"), "OK");
    assert_eq!(run(&mut c, "cstream 4"), "OK");
    assert_eq!(run(&mut c, "bidi 3"), "OK");
    assert_eq!(run(&mut c, "unary NotFoundX"), "NOT_FOUND");
    assert_eq!(run(&mut c, "unary Sleep 200 1000"), "DEADLINE_EXCEEDED");
    // One more call after the cancelled one: the connection still decodes.
    assert_eq!(run(&mut c, "unary After"), "OK");
    let (_out, spans) = finish(c, &receiver, agent, Duration::from_secs(30), |s| {
        both(s, "After")
    });
    for m in ["Hello", "ServerStream", "ClientStream", "Bidi", "After"] {
        let (c, s) = pair(&spans, m, "0", "0");
        assert_ne!(status(c), "ERROR", "{c}");
        assert_ne!(status(s), "ERROR", "{s}");
    }
    // NOT_FOUND is an error for the client only; DEADLINE_EXCEEDED for
    // both (semantic conventions, rpc/grpc status lists).
    let (c, s) = pair(&spans, "NotFoundX", "5", "5");
    assert_eq!((status(c), status(s)), ("ERROR", "UNSET"));
    // The deadline: both grpcio ends time the call out at once (the
    // server from `grpc-timeout`). The server sends trailers grpc-status
    // 4; the client resets the stream (RST_STREAM CANCEL) on its own
    // timer; which of the two each end reads first is a race. A client
    // that read no status made its DEADLINE_EXCEEDED inside the library,
    // not on the wire: its span carries no status code, not a guessed
    // one, and is an error because the stream was reset without one. A
    // server whose stream the client reset first has no status either,
    // and a cancel by the client is not the server's error.
    let (c, s) = pair(&spans, "Sleep", "4|", "4|");
    assert_eq!(status(c), "ERROR");
    let why = attr(c, "error.type");
    assert!(why == "4" || why == "stream_reset", "{c}");
    let server_code = attr(s, "rpc.grpc.status_code");
    let want = if server_code == "4" { "ERROR" } else { "UNSET" };
    assert_eq!(status(s), want, "{s}");
    eprintln!("deadline: client status code {why:?}, server {server_code:?}");
}

#[test]
fn grpc_fifty_concurrent_calls_on_one_connection_are_each_linked_right() {
    let Some(_g) = root_test("grpc_fifty_concurrent_calls_on_one_connection_are_each_linked_right")
    else {
        return;
    };
    let (_server, receiver, agent, mut c) = start();
    // A first call opens the connection, so the 50 share it.
    assert_eq!(run(&mut c, "unary Warm"), "OK");
    let n = 50;
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
    // The 50 HEADERS frames leave in a few large segments: until the
    // kernel walks HTTP/2 frames (issue 10 item 2) the capture's prefix
    // per packet misses some, and their calls are lost, counted, never
    // crossed. Every call is required once nothing was lost.
    let holes = out.counter("streams.bytes_hole").unwrap_or(0);
    eprintln!("{whole} of {n} concurrent calls decoded on both sides; bytes_hole={holes}");
    if holes == 0 {
        assert_eq!(whole, n, "{}", out.stderr);
    } else {
        let lost: u64 = ["h2_sync_lost", "hpack_lost_hole", "hpack_lost_truncated"]
            .iter()
            .map(|c| out.counter(&format!("http.{c}")).unwrap_or(0))
            .sum();
        assert!(lost > 0 || whole == n, "a lost call is counted");
    }
    assert_eq!(conns.len(), 1, "all calls on one connection: {conns:?}");
}

#[test]
fn grpc_traceparent_metadata_is_honoured() {
    let Some(_g) = root_test("grpc_traceparent_metadata_is_honoured") else {
        return;
    };
    let (_server, receiver, agent, mut c) = start();
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
