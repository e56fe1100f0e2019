//! Property tests: random timings and delivery orders of the acceptance
//! chain never produce a wrong parent; random garbage never panics and
//! stays within bounds.

mod common;

use std::collections::HashMap;

use common::chain::*;
use common::*;
use correlate::*;
use proptest::prelude::*;

fn chain_inputs() -> impl Strategy<Value = (Vec<u64>, Vec<[u64; 11]>, bool, bool, Vec<u64>)> {
    (1usize..10).prop_flat_map(|n| {
        (
            proptest::collection::vec(0u64..3_000, n),
            proptest::collection::vec(proptest::array::uniform11(1u64..300), n),
            any::<bool>(),
            any::<bool>(),
            proptest::collection::vec(0u64..W / 2, 200),
        )
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// Random request timings (so nginx's event loop has 1..n requests in
    /// flight at random) and random delivery delays below half the window:
    /// every span is emitted, every link the rules can prove is made, and
    /// no span ever gets a wrong parent.
    #[test]
    fn random_interleavings_never_produce_a_wrong_parent(
        (starts, gaps, request_id, traceparent, delays) in chain_inputs()
    ) {
        let n = starts.len();
        let times: Vec<[u64; 12]> = (0..n).map(|i| times_from_gaps(i, starts[i], &gaps[i])).collect();
        let ch = chain(&ChainOpts {
            requests: n,
            request_id,
            traceparent,
            times: Some(times),
            ..ChainOpts::default()
        });
        let delays: Vec<u64> = (0..ch.events.len()).map(|i| delays[i % delays.len()]).collect();
        let out = run_delayed(&ch.events, Config::default(), &delays);
        assert_chain(&out, &ch, true);
        prop_assert_eq!(out.counters.mirror_expired, 0);
        prop_assert_eq!(out.counters.late_mirror, 0);
    }

    /// Same, delivered strictly in order.
    #[test]
    fn random_timings_in_order(
        (starts, gaps, request_id, traceparent, _delays) in chain_inputs()
    ) {
        let n = starts.len();
        let times: Vec<[u64; 12]> = (0..n).map(|i| times_from_gaps(i, starts[i], &gaps[i])).collect();
        let ch = chain(&ChainOpts { requests: n, request_id, traceparent, times: Some(times), ..ChainOpts::default() });
        let out = run(&ch.events, Config::default());
        assert_chain(&out, &ch, true);
        // Sequential-enough requests (nothing else in flight on nginx)
        // link through the thread rule too: count what linked.
        let linked = ch.hops.iter().filter(|h| out.get(&h.c1).parent_span_id == Some(out.get(&h.s1).span_id)).count();
        prop_assert!(linked >= usize::from(n == 1));
    }
}

// ------------------------------------------------------------- garbage

#[derive(Clone, Debug)]
enum Op {
    Open(u64, usize, usize),
    Close(u64, u64),
    Msg(Message<'static>),
    Poll(u64),
    Flush,
}

const ADDRS: [&str; 5] = [
    "127.0.0.1:80",
    "127.0.0.1:5000",
    "10.0.0.1:80",
    "[::1]:80",
    "[::ffff:127.0.0.1]:5000",
];
const HEADERS: [(&str, &str); 12] = [
    (
        "traceparent",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
    ),
    (
        "traceparent",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0",
    ),
    (
        "traceparent",
        "ff-00000000000000000000000000000000-0000000000000000-00",
    ),
    ("tracestate", "a=b,,c"),
    ("b3", "64fe8b2a57d3eff7-e457b5a2e4d86bd1-1"),
    ("b3", "-"),
    ("X-B3-TraceId", "463ac35c9f6413ad48485a3953bb6124"),
    ("X-B3-SpanId", "a2fb4a1d1a96d312"),
    ("x-request-id", "r1"),
    ("x-request-id", "r2"),
    ("Host", "[::1"),
    ("content-type", "application/grpc"),
];
const TARGETS: [&str; 7] = [
    "/",
    "/a/1?x=1",
    "*",
    "http://u@h:99/p?q",
    "h:1",
    "",
    "/pkg.S/M",
];

fn op() -> impl Strategy<Value = Op> {
    let msg = (
        0u64..6,
        any::<bool>(),
        0u32..3,
        0u32..4,
        0u32..4,
        0u64..5_000,
        0u64..5_000,
        proptest::option::of(0u32..3),
        any::<bool>(),
        0usize..TARGETS.len(),
        proptest::collection::vec(0usize..HEADERS.len(), 0..4),
        prop_oneof![
            Just(100u16),
            Just(200),
            Just(404),
            Just(500),
            Just(0),
            Just(999)
        ],
    )
        .prop_map(
            |(conn, inbound, pid, tid, seq, start, end, stream, is_req, target, hs, status)| {
                let headers: Vec<Header> = hs
                    .iter()
                    .map(|i| Header::new(HEADERS[*i].0, HEADERS[*i].1))
                    .collect();
                let kind = if is_req {
                    MessageKind::Request(Request {
                        method: if seq % 2 == 0 {
                            "GET".into()
                        } else {
                            "weird".into()
                        },
                        target: TARGETS[target].into(),
                        version: HttpVersion::Http11,
                        scheme: Scheme::Http,
                        headers: headers.clone().into(),
                        unknown: None,
                    })
                } else {
                    MessageKind::Response(Response {
                        status,
                        version: HttpVersion::Http2,
                        headers: headers.into(),
                        reset: false,
                        grpc_messages: None,
                        unknown: None,
                    })
                };
                Op::Msg(Message {
                    conn: ConnId(conn),
                    side: if inbound {
                        Side::Inbound
                    } else {
                        Side::Outbound
                    },
                    pid: Pid(pid),
                    tid: Tid(tid),
                    seq,
                    start_ns: start,
                    end_ns: end,
                    stream_id: stream,
                    kind,
                })
            },
        );
    prop_oneof![
        4 => msg,
        1 => (0u64..6, 0usize..ADDRS.len(), 0usize..ADDRS.len()).prop_map(|(c, l, r)| Op::Open(c, l, r)),
        1 => (0u64..6, 0u64..5_000).prop_map(|(c, t)| Op::Close(c, t)),
        1 => (0u64..20_000).prop_map(Op::Poll),
        1 => Just(Op::Flush),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn garbage_never_panics_and_stays_bounded(ops in proptest::collection::vec(op(), 0..120)) {
        let cfg = Config {
            window_ns: 1_000,
            retention_ns: 3_000,
            max_connections: 4,
            max_outstanding_per_conn: 3,
            max_spans: 12,
            max_threads: 3,
            max_server_spans_per_thread: 2,
            ..Config::default()
        };
        let mut c = Correlator::with_seed(cfg, 9);
        let mut spans = Vec::new();
        for op in ops {
            match op {
                Op::Open(conn, l, r) => c.conn_open(ConnInfo {
                    conn: ConnId(conn),
                    local: ADDRS[l].parse().unwrap(),
                    remote: ADDRS[r].parse().unwrap(),
                }),
                Op::Close(conn, t) => c.conn_close(ConnId(conn), t),
                Op::Msg(m) => c.message(m),
                Op::Poll(t) => spans.extend(c.poll(t)),
                Op::Flush => spans.extend(c.flush()),
            }
            prop_assert!(c.live_spans() <= 12);
            prop_assert!(c.connections() <= 4);
        }
        spans.extend(c.poll(u64::MAX));
        spans.extend(c.flush());
        let mut seen = HashMap::new();
        for s in &spans {
            prop_assert!(s.trace_id.is_valid());
            prop_assert!(s.span_id.is_valid());
            prop_assert!(s.end_ns >= s.start_ns);
            prop_assert!(seen.insert(s.span_id, s.clone()).is_none(), "span emitted twice");
        }
        // Parent links among our spans point back in time and stay in trace.
        for s in &spans {
            if let Some(p) = s.parent_span_id.and_then(|p| seen.get(&p)) {
                prop_assert!(p.start_ns <= s.start_ns);
                prop_assert_eq!(p.trace_id, s.trace_id);
            }
        }
        let k = c.counters();
        prop_assert_eq!(k.spans_emitted, spans.len() as u64);
    }
}
