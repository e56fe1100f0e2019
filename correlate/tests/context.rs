//! Rules 4 and 5: parents inside a process, propagated context, request ids.

mod common;

use common::*;
use correlate::*;

const P: u32 = 50; // the process under test
const T1: u32 = 51;
const T2: u32 = 52;
type Headers = Vec<(&'static str, &'static str)>;

const TP: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const PARENT: &str = "00f067aa0ba902b7";

/// An incoming request from a remote client to P (read on `tid` at `t`,
/// answered at `end`), and the events to make it.
fn incoming(
    conn: u64,
    tid: u32,
    t: u64,
    end: u64,
    path: &str,
    headers: &[(&str, &str)],
) -> Vec<Ev> {
    vec![
        open(conn, "10.0.0.5:80", &format!("192.0.2.1:{}", 1000 + conn)),
        m(
            conn,
            Side::Inbound,
            P,
            tid,
            1,
            t,
            None,
            rq("GET", path, headers),
        ),
        m(conn, Side::Outbound, P, tid, 2, end, None, rs(200, &[])),
    ]
}

/// An outgoing request from P to a remote server (written on `tid` at `t`).
fn outgoing(
    conn: u64,
    tid: u32,
    t: u64,
    end: u64,
    path: &str,
    headers: &[(&str, &str)],
) -> Vec<Ev> {
    vec![
        open(
            conn,
            &format!("10.0.0.5:{}", 30000 + conn),
            "198.51.100.1:8080",
        ),
        m(
            conn,
            Side::Outbound,
            P,
            tid,
            1,
            t,
            None,
            rq("GET", path, headers),
        ),
        m(conn, Side::Inbound, P, tid, 2, end, None, rs(200, &[])),
    ]
}

/// P's [`warm_up`], from elsewhere on two other threads, in the first half
/// millisecond.
fn pool() -> Vec<Ev> {
    let mut evs = Vec::new();
    for (k, thread) in warm_up() {
        let t = 10 * US + k * 50 * US;
        let tid = 60 + thread;
        evs.extend(incoming(
            100 + k,
            tid,
            t,
            t + 20 * US,
            &format!("/warm/{k}"),
            &[],
        ));
    }
    evs
}

fn sorted(mut evs: Vec<Ev>) -> Vec<Ev> {
    evs.sort_by_key(Ev::time);
    evs
}

fn server(path: &str) -> Label {
    lbl(P, SpanKind::Server, path)
}

fn client(path: &str) -> Label {
    lbl(P, SpanKind::Client, path)
}

#[test]
fn traceparent_on_an_incoming_request() {
    let evs = incoming(
        1,
        T1,
        MS,
        2 * MS,
        "/in",
        &[("traceparent", TP), ("tracestate", "rojo=00f067aa0ba902b7")],
    );
    let out = run(&sorted(evs), Config::default());
    let s = out.get(&server("/in"));
    assert_eq!(s.trace_id.to_string(), TRACE);
    assert_eq!(s.parent_span_id.unwrap().to_string(), PARENT);
    assert_eq!(s.parent_source, ParentSource::Header);
    assert_eq!(s.trace_state.as_deref(), Some("rojo=00f067aa0ba902b7"));
    assert_eq!(s.trace_flags, 1);
}

#[test]
fn propagated_trace_flows_to_children_with_tracestate_and_flags() {
    let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00";
    let mut evs = incoming(
        1,
        T1,
        MS,
        5 * MS,
        "/in",
        &[("traceparent", tp), ("tracestate", "a=b")],
    );
    evs.extend(pool());
    evs.extend(outgoing(2, T1, 2 * MS, 3 * MS, "/out", &[]));
    let out = run(&sorted(evs), Config::default());
    out.assert_parent(&client("/out"), &server("/in"));
    let c = out.get(&client("/out"));
    assert_eq!(c.trace_id.to_string(), TRACE);
    assert_eq!(c.trace_state.as_deref(), Some("a=b"));
    assert_eq!(c.trace_flags, 0);
}

#[test]
fn b3_headers_table() {
    // (headers, trace, parent)
    let cases: Vec<(Headers, &str, &str)> = vec![
        (
            vec![(
                "b3",
                "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1-05e3ac9a4f6e3b90",
            )],
            "80f198ee56343ba864fe8b2a57d3eff7",
            "e457b5a2e4d86bd1",
        ),
        (
            vec![
                ("X-B3-TraceId", "64fe8b2a57d3eff7"),
                ("X-B3-SpanId", "e457b5a2e4d86bd1"),
                ("X-B3-Sampled", "1"),
            ],
            "000000000000000064fe8b2a57d3eff7",
            "e457b5a2e4d86bd1",
        ),
        (
            vec![
                ("X-B3-TraceId", "463ac35c9f6413ad48485a3953bb6124"),
                ("X-B3-SpanId", "a2fb4a1d1a96d312"),
                ("X-B3-ParentSpanId", "0020000000000001"),
            ],
            "463ac35c9f6413ad48485a3953bb6124",
            "a2fb4a1d1a96d312",
        ),
    ];
    for (headers, trace, parent) in cases {
        let out = run(
            &sorted(incoming(1, T1, MS, 2 * MS, "/b3", &headers)),
            Config::default(),
        );
        let s = out.get(&server("/b3"));
        assert_eq!(s.trace_id.to_string(), trace, "{headers:?}");
        assert_eq!(s.parent_span_id.unwrap().to_string(), parent, "{headers:?}");
        assert_eq!(s.parent_source, ParentSource::Header);
    }
}

#[test]
fn invalid_headers_are_ignored_and_counted() {
    // (headers, invalid_traceparent, invalid_b3)
    let cases: Vec<(Headers, u64, u64)> = vec![
        (
            vec![(
                "traceparent",
                "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            )],
            1,
            0,
        ),
        (
            vec![(
                "traceparent",
                "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            )],
            1,
            0,
        ),
        (
            vec![(
                "traceparent",
                "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            )],
            1,
            0,
        ),
        (
            vec![(
                "traceparent",
                "00-4bf92f3577b34da6a3ce929d0e0e47-00f067aa0ba902b7-01",
            )],
            1,
            0,
        ),
        (
            vec![(
                "traceparent",
                "00-4bf92f3577b34da6a3ce929d0e0e473g-00f067aa0ba902b7-01",
            )],
            1,
            0,
        ),
        (vec![("traceparent", "hello")], 1, 0),
        (vec![("b3", "nonsense")], 0, 1),
        (
            vec![("b3", "00000000000000000000000000000000-e457b5a2e4d86bd1")],
            0,
            1,
        ),
        (
            vec![("X-B3-TraceId", "463ac35c9f6413ad48485a3953bb6124")],
            0,
            1,
        ),
        (vec![("traceparent", "junk"), ("b3", "junk")], 1, 1),
    ];
    for (headers, tp, b3) in cases {
        let out = run(
            &sorted(incoming(1, T1, MS, 2 * MS, "/bad", &headers)),
            Config::default(),
        );
        let s = out.get(&server("/bad"));
        assert_eq!(s.parent_span_id, None, "{headers:?}");
        assert_eq!(s.parent_source, ParentSource::Root, "{headers:?}");
        assert!(s.trace_id.is_valid());
        assert_eq!(out.counters.invalid_traceparent, tp, "{headers:?}");
        assert_eq!(out.counters.invalid_b3, b3, "{headers:?}");
    }
}

#[test]
fn one_request_in_flight_on_a_thread_is_no_proof() {
    // Before this issue, rule 4 linked "/out" to "/in": the only request
    // in progress on its thread. That is no proof where the thread may be
    // an event loop (a timer's call looks the same): P has shown nothing
    // of how it serves, so the call is a root, and the refusal counted.
    let mut evs = incoming(1, T1, MS, 5 * MS, "/in", &[]);
    evs.extend(outgoing(2, T1, 2 * MS, 3 * MS, "/out", &[]));
    let out = run(&sorted(evs), Config::default());
    let c = out.get(&client("/out"));
    assert_eq!(c.parent_span_id, None);
    assert_eq!(out.counters.thread_refused_unproven, 1);
    assert_eq!(out.counters.roots_unproven, 1);
    assert_eq!(out.counters.ambiguous_parent, 0);
}

#[test]
fn a_call_that_outlives_the_request_is_not_its_child() {
    // On the request's own thread: answering while a call is outstanding
    // shows the thread does not block in its calls.
    let mut evs = pool();
    evs.extend(incoming(1, T1, MS, 3 * MS, "/in", &[]));
    evs.extend(outgoing(2, T1, 2 * MS, 4 * MS, "/out", &[]));
    let out = run(&sorted(evs), Config::default());
    assert_eq!(out.get(&client("/out")).parent_span_id, None);
    assert_eq!(out.counters.thread_refused_multiplexing, 1);
    // Through a request id, from another thread: the id matches, the time
    // does not.
    let rid = [("x-request-id", "r1")];
    let mut evs = incoming(1, T1, MS, 3 * MS, "/in", &rid);
    evs.extend(outgoing(2, T2, 2 * MS, 4 * MS, "/out", &rid));
    let out = run(&sorted(evs), Config::default());
    assert_eq!(out.get(&client("/out")).parent_span_id, None);
    assert_eq!(out.counters.not_nested, 1);
}

#[test]
fn a_long_call_waits_for_its_end_to_be_judged() {
    // The call lasts longer than the window: whether it nests is known
    // only when its response comes.
    for (call_end, linked) in [(4 * W, true), (6 * W, false)] {
        let mut evs = pool();
        evs.extend(incoming(1, T1, MS, 5 * W, "/in", &[]));
        evs.extend(outgoing(2, T1, 2 * MS, call_end, "/out", &[]));
        let out = run(&sorted(evs), Config::default());
        let c = out.get(&client("/out"));
        assert_eq!(
            c.parent_span_id.is_some(),
            linked,
            "call ending at {call_end}"
        );
    }
}

#[test]
fn client_span_on_the_server_thread_of_a_pool_is_its_child() {
    let mut evs = pool();
    evs.extend(incoming(1, T1, MS, 5 * MS, "/in", &[]));
    evs.extend(outgoing(2, T1, 2 * MS, 3 * MS, "/out", &[]));
    // A call on another thread with no server span is not a child.
    evs.extend(outgoing(3, T2, 2 * MS, 3 * MS, "/other", &[]));
    // A call on the thread after the server span ended is not a child.
    evs.extend(outgoing(4, T1, 6 * MS, 7 * MS, "/after", &[]));
    let out = run(&sorted(evs), Config::default());
    out.assert_parent(&client("/out"), &server("/in"));
    assert_eq!(out.get(&client("/out")).parent_source, ParentSource::Thread);
    for p in ["/other", "/after"] {
        assert_eq!(out.get(&client(p)).parent_span_id, None, "{p}");
    }
    assert_eq!(out.counters.ambiguous_parent, 0);
    // "/after" is a call outside any request on a thread that serves:
    // P runs work not driven by requests there, so from then on rule 4
    // no longer trusts it.
    assert_eq!(out.counters.processes_multiplexing, 1);
}

#[test]
fn several_server_spans_on_a_thread_without_evidence_make_a_root() {
    let mut evs = incoming(1, T1, MS, 5 * MS, "/a", &[]);
    evs.extend(incoming(2, T1, MS + 10 * US, 5 * MS, "/b", &[]));
    evs.extend(outgoing(3, T1, 2 * MS, 3 * MS, "/out", &[]));
    let out = run(&sorted(evs), Config::default());
    let c = out.get(&client("/out"));
    assert_eq!(c.parent_span_id, None);
    assert_eq!(c.parent_source, ParentSource::Root);
    assert_eq!(out.counters.ambiguous_parent, 1);
}

#[test]
fn ambiguous_thread_with_a_header_uses_the_header_parent() {
    let mut evs = incoming(1, T1, MS, 5 * MS, "/a", &[]);
    evs.extend(incoming(2, T1, MS + 10 * US, 5 * MS, "/b", &[]));
    evs.extend(outgoing(
        3,
        T1,
        2 * MS,
        3 * MS,
        "/out",
        &[("traceparent", TP)],
    ));
    let out = run(&sorted(evs), Config::default());
    let c = out.get(&client("/out"));
    assert_eq!(c.parent_span_id.unwrap().to_string(), PARENT);
    assert_eq!(c.trace_id.to_string(), TRACE);
    assert_eq!(c.parent_source, ParentSource::Header);
    assert_eq!(out.counters.ambiguous_parent, 1);
}

#[test]
fn request_id_picks_the_server_span_on_an_event_loop() {
    let mut evs = incoming(1, T1, MS, 5 * MS, "/a", &[("x-request-id", "r-a")]);
    evs.extend(incoming(
        2,
        T1,
        MS + 10 * US,
        5 * MS,
        "/b",
        &[("X-Request-ID", "r-b")],
    ));
    evs.extend(outgoing(
        3,
        T1,
        2 * MS,
        3 * MS,
        "/up-b",
        &[("x-request-id", "r-b")],
    ));
    evs.extend(outgoing(
        4,
        T1,
        2 * MS + US,
        3 * MS,
        "/up-a",
        &[("x-request-id", "r-a")],
    ));
    evs.extend(outgoing(
        5,
        T1,
        2 * MS + 2 * US,
        3 * MS,
        "/up-x",
        &[("x-request-id", "r-x")],
    ));
    let out = run(&sorted(evs), Config::default());
    out.assert_parent(&client("/up-a"), &server("/a"));
    out.assert_parent(&client("/up-b"), &server("/b"));
    assert_eq!(
        out.get(&client("/up-a")).parent_source,
        ParentSource::RequestId
    );
    assert_eq!(out.get(&client("/up-x")).parent_span_id, None);
    assert_eq!(out.counters.ambiguous_parent, 1);
}

#[test]
fn configured_request_id_headers() {
    let cfg = Config {
        request_id_headers: vec!["x-correlation-id".into()],
        ..Config::default()
    };
    let mut evs = incoming(
        1,
        T1,
        MS,
        5 * MS,
        "/a",
        &[("x-correlation-id", "c-a"), ("x-request-id", "same")],
    );
    evs.extend(incoming(
        2,
        T1,
        MS + 10 * US,
        5 * MS,
        "/b",
        &[("x-correlation-id", "c-b"), ("x-request-id", "same")],
    ));
    evs.extend(outgoing(
        3,
        T1,
        2 * MS,
        3 * MS,
        "/up",
        &[("x-correlation-id", "c-b"), ("x-request-id", "same")],
    ));
    let out = run(&sorted(evs), cfg);
    out.assert_parent(&client("/up"), &server("/b"));
}

#[test]
fn request_id_joins_work_handed_to_another_thread() {
    // The request is read on T1 and the outgoing call made on worker T2.
    let mut evs = incoming(1, T1, MS, 5 * MS, "/in", &[("x-request-id", "abc")]);
    evs.extend(outgoing(
        2,
        T2,
        2 * MS,
        3 * MS,
        "/out",
        &[("x-request-id", "abc")],
    ));
    let out = run(&sorted(evs), Config::default());
    out.assert_parent(&client("/out"), &server("/in"));
    assert_eq!(
        out.get(&client("/out")).parent_source,
        ParentSource::RequestId
    );
}

#[test]
fn request_id_shared_by_two_server_spans_in_progress_is_ambiguous() {
    let mut evs = incoming(1, T1, MS, 5 * MS, "/in1", &[("x-request-id", "abc")]);
    evs.extend(incoming(
        2,
        T2,
        MS,
        5 * MS,
        "/in2",
        &[("x-request-id", "abc")],
    ));
    evs.extend(outgoing(
        3,
        53,
        2 * MS,
        3 * MS,
        "/out",
        &[("x-request-id", "abc")],
    ));
    let out = run(&sorted(evs), Config::default());
    assert_eq!(out.get(&client("/out")).parent_span_id, None);
    assert_eq!(out.counters.ambiguous_parent, 1);
}

#[test]
fn request_id_of_another_process_is_not_a_thread_parent() {
    let mut evs = incoming(1, T1, MS, 5 * MS, "/in", &[("x-request-id", "abc")]);
    evs.push(open(2, "10.0.0.5:31000", "198.51.100.1:8080"));
    evs.push(m(
        2,
        Side::Outbound,
        99,
        99,
        1,
        2 * MS,
        None,
        rq("GET", "/out", &[("x-request-id", "abc")]),
    ));
    evs.push(m(2, Side::Inbound, 99, 99, 2, 3 * MS, None, rs(200, &[])));
    let out = run(&sorted(evs), Config::default());
    assert_eq!(
        out.get(&lbl(99, SpanKind::Client, "/out")).parent_span_id,
        None
    );
}

#[test]
fn a_trace_made_up_here_gives_way_to_the_one_the_process_propagates() {
    // The server span has no context: the agent makes a trace up. The
    // app's SDK starts its own and sends it on the call made for the
    // request: nothing of the made-up trace was exported, so the request's
    // spans are all in the app's trace, and the call keeps its parent.
    let mut evs = pool();
    evs.extend(incoming(1, T1, MS, 5 * MS, "/in", &[]));
    evs.extend(outgoing(
        2,
        T1,
        2 * MS,
        3 * MS,
        "/out",
        &[("traceparent", TP)],
    ));
    let out = run(&sorted(evs), Config::default());
    out.assert_parent(&client("/out"), &server("/in"));
    assert_eq!(out.get(&client("/out")).trace_id.to_string(), TRACE);
    assert_eq!(out.get(&server("/in")).trace_id.to_string(), TRACE);
    assert_eq!(out.get(&server("/in")).parent_span_id, None);
    assert_eq!(out.counters.context_adopted, 1);
    assert_eq!(out.counters.context_conflict, 0);
}

#[test]
fn header_trace_wins_when_the_made_up_trace_was_exported_already() {
    // A first call of the request was exported in the made-up trace before
    // the call carrying the app's trace: that trace cannot be replaced any
    // more, so the header wins for its call (a wrong trace for the first
    // call's span would be worse than a split).
    let mut evs = pool();
    evs.extend(incoming(1, T1, MS, 400 * MS, "/in", &[]));
    evs.extend(outgoing(2, T1, 2 * MS, 3 * MS, "/first", &[]));
    evs.extend(outgoing(
        3,
        T1,
        300 * MS,
        301 * MS,
        "/out",
        &[("traceparent", TP)],
    ));
    let out = run(&sorted(evs), Config::default());
    out.assert_parent(&client("/first"), &server("/in"));
    let c = out.get(&client("/out"));
    assert_eq!(c.trace_id.to_string(), TRACE);
    assert_eq!(c.parent_span_id.unwrap().to_string(), PARENT);
    let made_up = out.get(&server("/in")).trace_id;
    assert_ne!(made_up.to_string(), TRACE);
    assert_eq!(out.get(&client("/first")).trace_id, made_up);
    assert_eq!(out.counters.context_conflict, 1);
    assert_eq!(out.counters.context_adopted, 0);
}

/// curl (pid 10) -> a proxy (pid 20, one event-loop thread) that starts a
/// trace and forwards the request with it -> a backend (pid 30). The
/// proxy answers, and curl reads the answer, before the proxy's call is
/// decided (that waits a window after the call's end).
fn edge_proxy() -> Sim {
    let (curl, proxy, backend) = (10, 20, 30);
    let mut sim = Sim::new(7);
    let mut front = sim.connect("127.0.0.1", "127.0.0.1:8080", Seen::Both);
    let mut back = sim.connect("127.0.0.1", "127.0.0.1:9000", Seen::Both);
    let r = req("GET", "/edge", &[("Host", "shop")]);
    let fwd = req("GET", "/edge", &[("Host", "shop"), ("traceparent", TP)]);
    sim.request(
        &mut front,
        at(MS, curl, curl),
        at(MS + 50 * US, proxy, proxy),
        &r,
    );
    sim.request(
        &mut back,
        at(2 * MS, proxy, proxy),
        at(2 * MS + 50 * US, backend, backend),
        &fwd,
    );
    let ok = resp(200, &[]);
    sim.response(
        &mut back,
        at(4 * MS, backend, backend),
        at(4 * MS + 50 * US, proxy, proxy),
        &ok,
    );
    sim.response(
        &mut front,
        at(5 * MS, proxy, proxy),
        at(5 * MS + 50 * US, curl, curl),
        &ok,
    );
    sim
}

#[test]
fn an_edge_proxys_trace_takes_in_the_spans_before_it() {
    let out = run(&edge_proxy().sorted(), Config::default());
    assert_eq!(out.spans.len(), 4, "{:#?}", out.spans);
    for s in &out.spans {
        assert_eq!(s.trace_id.to_string(), TRACE, "{s:#?}");
    }
    let curl = lbl(10, SpanKind::Client, "/edge");
    let inbound = lbl(20, SpanKind::Server, "/edge");
    let call = lbl(20, SpanKind::Client, "/edge");
    let backend = lbl(30, SpanKind::Server, "/edge");
    out.assert_parent(&inbound, &curl);
    out.assert_parent(&call, &inbound);
    out.assert_parent(&backend, &call);
    assert_eq!(out.get(&curl).parent_span_id, None);
    assert_eq!(out.counters.context_adopted, 1);
    assert!(out.counters.adoption_holds >= 2, "{:?}", out.counters);
    assert_eq!(out.counters.adoption_holds_cut, 0);
}

#[test]
fn concurrent_requests_through_an_edge_proxy_each_take_their_own_trace() {
    let (curl, proxy, backend) = (10, 20, 30);
    let tps = [
        "00-11111111111111111111111111111111-1111111111111111-01",
        "00-22222222222222222222222222222222-2222222222222222-01",
    ];
    let mut sim = Sim::new(9);
    let mut fronts: Vec<_> = (0..2)
        .map(|_| sim.connect("127.0.0.1", "127.0.0.1:8080", Seen::Both))
        .collect();
    let mut backs: Vec<_> = (0..2)
        .map(|_| sim.connect("127.0.0.1", "127.0.0.1:9000", Seen::Both))
        .collect();
    let paths = ["/a", "/b"];
    // Interleaved on the proxy's one thread: both in flight at once.
    for i in 0..2 {
        let t = MS + i as u64 * 100 * US;
        let r = req("GET", paths[i], &[("Host", "shop")]);
        sim.request(
            &mut fronts[i],
            at(t, curl + i as u32, curl + i as u32),
            at(t + 50 * US, proxy, proxy),
            &r,
        );
    }
    for i in 0..2 {
        let t = 2 * MS + i as u64 * 100 * US;
        let fwd = req(
            "GET",
            paths[i],
            &[("Host", "shop"), ("traceparent", tps[i])],
        );
        sim.request(
            &mut backs[i],
            at(t, proxy, proxy),
            at(t + 50 * US, backend, backend),
            &fwd,
        );
    }
    let ok = resp(200, &[]);
    for i in [1, 0] {
        let t = 4 * MS + (1 - i) as u64 * 200 * US;
        sim.response(
            &mut backs[i],
            at(t, backend, backend),
            at(t + 50 * US, proxy, proxy),
            &ok,
        );
        sim.response(
            &mut fronts[i],
            at(t + 100 * US, proxy, proxy),
            at(t + 150 * US, curl + i as u32, curl + i as u32),
            &ok,
        );
    }
    let out = run(&sim.sorted(), Config::default());
    assert_eq!(out.spans.len(), 8, "{:#?}", out.spans);
    for (i, path) in paths.iter().enumerate() {
        let want = &tps[i][3..35];
        let chain = [
            lbl(10 + i as u32, SpanKind::Client, path),
            lbl(proxy, SpanKind::Server, path),
            lbl(proxy, SpanKind::Client, path),
            lbl(backend, SpanKind::Server, path),
        ];
        for l in &chain {
            assert_eq!(out.get(l).trace_id.to_string(), want, "{l:?}");
        }
        for w in chain.windows(2) {
            out.assert_parent(&w[1], &w[0]);
        }
    }
    assert_eq!(out.counters.context_adopted, 2);
    assert_eq!(out.counters.adoption_holds_cut, 0);
}

#[test]
fn spans_held_longer_than_the_retention_go_in_their_own_trace() {
    // Two identical requests in flight at the proxy when it forwards one:
    // its call's decision waits for the call's end (a second), and the
    // first request, answered at once, waited for it. After a retention
    // it goes, counted, in the trace made up for it; nothing is lost.
    let (proxy, backend) = (20, 30);
    let mut sim = Sim::new(5);
    let mut fronts: Vec<_> = (0..2)
        .map(|_| sim.connect("127.0.0.1", "127.0.0.1:8080", Seen::Both))
        .collect();
    let mut back = sim.connect("127.0.0.1", "127.0.0.1:9000", Seen::Both);
    let r = req("GET", "/same", &[("Host", "shop")]);
    let fwd = req("GET", "/same", &[("Host", "shop"), ("traceparent", TP)]);
    for (i, front) in fronts.iter_mut().enumerate() {
        let (t, curl) = (MS + i as u64 * 100 * US, 10 + i as u32);
        sim.request(front, at(t, curl, curl), at(t + 50 * US, proxy, proxy), &r);
    }
    sim.request(
        &mut back,
        at(2 * MS, proxy, proxy),
        at(2 * MS + 50 * US, backend, backend),
        &fwd,
    );
    let ok = resp(200, &[]);
    sim.response(
        &mut fronts[0],
        at(3 * MS, proxy, proxy),
        at(3 * MS + 50 * US, 10, 10),
        &ok,
    );
    sim.response(
        &mut back,
        at(1000 * MS, backend, backend),
        at(1000 * MS + 50 * US, proxy, proxy),
        &ok,
    );
    sim.response(
        &mut fronts[1],
        at(1001 * MS, proxy, proxy),
        at(1001 * MS + 50 * US, 11, 11),
        &ok,
    );
    // The agent polls often.
    for t in (0..1100).step_by(10) {
        sim.events.push(Ev::Close(ConnId(u64::MAX), t * MS));
    }
    let out = run(&sim.sorted(), Config::default());
    assert_eq!(out.spans.len(), 6, "{:#?}", out.spans);
    let answered = out.get(&lbl(10, SpanKind::Client, "/same"));
    let inbound = out
        .spans
        .iter()
        .find(|s| s.pid == Pid(proxy) && s.parent_span_id == Some(answered.span_id))
        .expect("the first request's server span");
    assert_eq!(inbound.trace_id, answered.trace_id);
    assert_ne!(inbound.trace_id.to_string(), TRACE);
    assert!(out.counters.adoption_holds_cut >= 2, "{:?}", out.counters);
}

#[test]
fn spans_held_for_an_adoption_go_at_a_flush() {
    let mut c = Correlator::with_seed(Config::default(), 42);
    let mut spans = Vec::new();
    for e in edge_proxy().sorted() {
        e.apply(&mut c);
        spans.extend(c.poll(e.time()));
    }
    spans.extend(c.flush());
    assert_eq!(spans.len(), 4, "{spans:#?}");
    let mut ids: Vec<_> = spans.iter().map(|s| s.span_id).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 4);
    assert!(c.counters().adoption_holds >= 2, "{:?}", c.counters());
}

#[test]
fn header_trace_agreeing_with_the_thread_parent_keeps_it() {
    let mut evs = incoming(1, T1, MS, 5 * MS, "/in", &[("traceparent", TP)]);
    let tp2 = "00-4bf92f3577b34da6a3ce929d0e0e4736-1111111111111111-01";
    evs.extend(outgoing(
        2,
        T1,
        2 * MS,
        3 * MS,
        "/out",
        &[("traceparent", tp2)],
    ));
    let out = run(&sorted(evs), Config::default());
    out.assert_parent(&client("/out"), &server("/in"));
    assert_eq!(out.counters.context_conflict, 0);
}

#[test]
fn pipelined_requests_on_one_thread_make_calls_ambiguous() {
    let mut sim = Sim::new(1);
    let mut c = sim.connect("192.0.2.1", "10.0.0.5:80", Seen::ServerOnly);
    sim.request(&mut c, at(MS, 1, 1), at(MS, P, T1), &req("GET", "/p1", &[]));
    sim.request(
        &mut c,
        at(MS, 1, 1),
        at(MS + 1, P, T1),
        &req("GET", "/p2", &[]),
    );
    sim.response(&mut c, at(4 * MS, P, T1), at(4 * MS, 1, 1), &resp(200, &[]));
    sim.response(
        &mut c,
        at(4 * MS + 1, P, T1),
        at(4 * MS, 1, 1),
        &resp(200, &[]),
    );
    let mut evs = sim.sorted();
    evs.extend(outgoing(99, T1, 2 * MS, 3 * MS, "/out", &[]));
    let out = run(&sorted(evs), Config::default());
    assert_eq!(out.get(&client("/out")).parent_span_id, None);
    assert_eq!(out.counters.ambiguous_parent, 1);
}

#[test]
fn server_span_at_answers_cpu_sample_queries() {
    let mut corr = Correlator::with_seed(Config::default(), 1);
    let mut evs = incoming(1, T1, MS, 5 * MS, "/a", &[]);
    evs.extend(incoming(2, T2, 2 * MS, 3 * MS, "/b", &[]));
    evs.extend(incoming(3, T2, 2 * MS + 500 * US, 4 * MS, "/c", &[]));
    let mut spans = Vec::new();
    for e in sorted(evs) {
        match e {
            Ev::Open(i) => corr.conn_open(i),
            Ev::Msg(m) => corr.message(m),
            Ev::Close(..) | Ev::Cause(..) | Ev::Lost(..) | Ev::Complete(..) => {}
        }
        spans.extend(corr.poll(0));
    }
    spans.extend(corr.poll(6 * MS));
    let id = |p: &str| {
        spans
            .iter()
            .find(|s| s.attr_str("url.path") == Some(p))
            .unwrap()
            .span_id
    };
    let (pid, t1, t2) = (Pid(P), Tid(T1), Tid(T2));
    assert_eq!(corr.server_span_at(pid, t1, MS - 1), None);
    assert_eq!(corr.server_span_at(pid, t1, MS), Some(id("/a")));
    assert_eq!(corr.server_span_at(pid, t1, 4 * MS), Some(id("/a")));
    assert_eq!(corr.server_span_at(pid, t1, 5 * MS + 100), None);
    assert_eq!(
        corr.server_span_at(pid, t2, 2 * MS + 100 * US),
        Some(id("/b"))
    );
    assert_eq!(
        corr.server_span_at(pid, t2, 2 * MS + 600 * US),
        None,
        "two in progress"
    );
    assert_eq!(
        corr.server_span_at(pid, t2, 3 * MS + 500 * US),
        Some(id("/c"))
    );
    assert_eq!(corr.server_span_at(Pid(P + 1), t1, 2 * MS), None);
}

#[test]
fn nat_translated_connection_links_by_sequence_number() {
    // Client 10.0.0.7 calls a service VIP 10.96.0.10:80; the server pod
    // 10.0.0.8:8080 sees the client's pod address. Same host.
    let mut evs = vec![
        open(1, "10.0.0.7:40000", "10.96.0.10:80"),
        open(2, "10.0.0.8:8080", "10.0.0.7:40000"),
        m(
            1,
            Side::Outbound,
            70,
            70,
            12345,
            MS,
            None,
            rq("GET", "/svc", &[]),
        ),
        m(
            2,
            Side::Inbound,
            80,
            80,
            12345,
            MS + 50 * US,
            None,
            rq("GET", "/svc", &[]),
        ),
        m(2, Side::Outbound, 80, 80, 999, 2 * MS, None, rs(200, &[])),
        m(
            1,
            Side::Inbound,
            70,
            70,
            999,
            2 * MS + 50 * US,
            None,
            rs(200, &[]),
        ),
    ];
    let run_with = |evs: &[Ev], nat: bool| {
        let mut corr = Correlator::with_seed(
            Config {
                nat_matching: nat,
                ..Config::default()
            },
            1,
        );
        corr.set_local_addrs(["10.0.0.7".parse().unwrap(), "10.0.0.8".parse().unwrap()]);
        let mut spans = Vec::new();
        for e in evs {
            match e {
                Ev::Open(i) => corr.conn_open(*i),
                Ev::Msg(m) => corr.message(m.clone()),
                Ev::Close(..) | Ev::Cause(..) | Ev::Lost(..) | Ev::Complete(..) => {}
            }
        }
        spans.extend(corr.poll(10 * W));
        Out {
            spans,
            counters: corr.counters().clone(),
        }
    };
    let out = run_with(&evs, true);
    out.assert_parent(
        &lbl(80, SpanKind::Server, "/svc"),
        &lbl(70, SpanKind::Client, "/svc"),
    );
    assert_eq!(
        out.get(&lbl(80, SpanKind::Server, "/svc")).parent_source,
        ParentSource::Nat
    );
    assert_eq!(out.counters.nat_parent, 1);
    let off = run_with(&evs, false);
    assert_eq!(
        off.get(&lbl(80, SpanKind::Server, "/svc")).parent_span_id,
        None
    );
    // Server first, client later: same result.
    evs.swap(2, 3);
    let out = run_with(&evs, true);
    out.assert_parent(
        &lbl(80, SpanKind::Server, "/svc"),
        &lbl(70, SpanKind::Client, "/svc"),
    );
    // A different target with the same sequence number is not the same request.
    let mut evs2 = evs.clone();
    evs2[2] = m(
        2,
        Side::Inbound,
        80,
        80,
        12345,
        MS + 50 * US,
        None,
        rq("GET", "/other", &[]),
    );
    let out = run_with(&evs2, true);
    assert_eq!(
        out.get(&lbl(80, SpanKind::Server, "/other")).parent_span_id,
        None
    );
}

#[test]
fn b3_trace_ids_single_out_the_server_span_on_an_event_loop() {
    let b3a = "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1";
    let b3b = "463ac35c9f6413ad48485a3953bb6124-a2fb4a1d1a96d312-1";
    let mut evs = incoming(1, T1, MS, 5 * MS, "/a", &[("b3", b3a)]);
    evs.extend(incoming(
        2,
        T1,
        MS + 10 * US,
        5 * MS,
        "/b",
        &[
            ("X-B3-TraceId", "463ac35c9f6413ad48485a3953bb6124"),
            ("X-B3-SpanId", "a2fb4a1d1a96d312"),
        ],
    ));
    // The proxy forwards the caller's b3 header unchanged.
    evs.extend(outgoing(3, T1, 2 * MS, 3 * MS, "/up-b", &[("b3", b3b)]));
    let out = run(&sorted(evs), Config::default());
    out.assert_parent(&client("/up-b"), &server("/b"));
    let c = out.get(&client("/up-b"));
    assert_eq!(c.parent_source, ParentSource::ThreadContext);
    assert_eq!(c.trace_id.to_string(), "463ac35c9f6413ad48485a3953bb6124");
}

/// A request whose response returns `id` (a proxy's own request id, echoed
/// downstream), read on `tid` at `t` and answered at `end`.
fn incoming_echo(conn: u64, tid: u32, t: u64, end: u64, path: &str, id: &'static str) -> Vec<Ev> {
    vec![
        open(conn, "10.0.0.5:80", &format!("192.0.2.1:{}", 1000 + conn)),
        m(
            conn,
            Side::Inbound,
            P,
            tid,
            1,
            t,
            None,
            rq("GET", path, &[]),
        ),
        m(
            conn,
            Side::Outbound,
            P,
            tid,
            2,
            end,
            None,
            rs(200, &[("x-request-id", id)]),
        ),
    ]
}

#[test]
fn an_id_the_proxy_returns_in_its_response_links_the_hop() {
    // An event loop with two identical requests in flight: forwarding
    // cannot tell them apart, but each upstream request carries the id
    // the proxy generated, which its response returns downstream.
    let mut evs = incoming_echo(1, T1, MS, 5 * MS, "/same", "gen-a");
    evs.extend(incoming_echo(2, T1, MS + 10 * US, 6 * MS, "/same", "gen-b"));
    evs.extend(outgoing(
        3,
        T1,
        2 * MS,
        3 * MS,
        "/same",
        &[("x-request-id", "gen-b")],
    ));
    evs.extend(outgoing(
        4,
        T1,
        2 * MS + US,
        4 * MS,
        "/same",
        &[("x-request-id", "gen-a")],
    ));
    let out = run(&sorted(evs), Config::default());
    let by_start = |t: u64, kind: SpanKind| {
        out.spans
            .iter()
            .find(|s| s.start_ns == t && s.kind == kind)
            .unwrap()
    };
    let (a, b) = (
        by_start(MS, SpanKind::Server),
        by_start(MS + 10 * US, SpanKind::Server),
    );
    let (cb, ca) = (
        by_start(2 * MS, SpanKind::Client),
        by_start(2 * MS + US, SpanKind::Client),
    );
    assert_eq!(cb.parent_span_id, Some(b.span_id));
    assert_eq!(ca.parent_span_id, Some(a.span_id));
    assert_eq!(ca.parent_source, ParentSource::RequestId);
    assert_eq!(out.counters.forward_ambiguous, 2);
    assert_eq!(
        out.counters.response_id_waits, 0,
        "the responses came in time"
    );
}

#[test]
fn a_decision_waits_a_window_for_a_response_that_may_return_the_id() {
    // The proxy answers long after its call: the call's decision waits one
    // more window for the response, and gives up after it (counted).
    for (answer, linked) in [(W + W / 2, true), (3 * W, false)] {
        let mut evs = incoming_echo(1, T1, MS, answer, "/in", "gen-a");
        evs.extend(outgoing(
            2,
            T1,
            2 * MS,
            3 * MS,
            "/up",
            &[("x-request-id", "gen-a")],
        ));
        // The agent polls every few milliseconds: time passes between
        // messages too.
        evs.extend((1..100).map(|i| Ev::Close(ConnId(999), i * 5 * MS)));
        let out = run(&sorted(evs), Config::default());
        let c = out.get(&client("/up"));
        assert_eq!(c.parent_span_id.is_some(), linked, "answered at {answer}");
        assert_eq!(out.counters.response_id_waits, 1);
        assert_eq!(out.counters.response_id_wait_expired, u64::from(!linked));
    }
}
