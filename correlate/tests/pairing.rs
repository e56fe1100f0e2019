//! Rule 1 (pairing), connection lifecycle, the waiting window and bounds.

mod common;

use common::*;
use correlate::*;

const CLIENT: u32 = 10;
const SERVER: u32 = 20;

fn status(s: &Span) -> i64 {
    s.attr("http.response.status_code")
        .and_then(AttrRef::as_int)
        .unwrap_or(-1)
}

#[test]
fn pipelined_requests_pair_in_order() {
    let mut sim = Sim::new(3);
    let mut c = sim.connect("127.0.0.1", "127.0.0.1:80", Seen::Both);
    let codes = [200u16, 404, 503];
    for (i, _) in codes.iter().enumerate() {
        let t = MS + i as u64 * 10 * US;
        sim.request(
            &mut c,
            at(t, CLIENT, CLIENT),
            at(t + US, SERVER, SERVER),
            &req("GET", &format!("/p/{i}"), &[]),
        );
    }
    for (i, code) in codes.iter().enumerate() {
        let t = 2 * MS + i as u64 * 10 * US;
        sim.response(
            &mut c,
            at(t, SERVER, SERVER),
            at(t + US, CLIENT, CLIENT),
            &resp(*code, &[]),
        );
    }
    let out = run(&sim.sorted(), Config::default());
    assert_eq!(out.spans.len(), 6);
    for (i, code) in codes.iter().enumerate() {
        let path = format!("/p/{i}");
        let cl = lbl(CLIENT, SpanKind::Client, &path);
        let sv = lbl(SERVER, SpanKind::Server, &path);
        out.assert_parent(&sv, &cl);
        assert_eq!(status(out.get(&cl)), i64::from(*code));
        assert_eq!(status(out.get(&sv)), i64::from(*code));
    }
    // Client: error on 404 and 503; server: only on 503.
    assert_eq!(
        out.get(&lbl(CLIENT, SpanKind::Client, "/p/1")).status,
        Status::Error(String::new())
    );
    assert_eq!(
        out.get(&lbl(SERVER, SpanKind::Server, "/p/1")).status,
        Status::Unset
    );
    assert_eq!(
        out.get(&lbl(SERVER, SpanKind::Server, "/p/2")).status,
        Status::Error(String::new())
    );
}

#[test]
fn keep_alive_many_requests_on_one_connection() {
    let mut sim = Sim::new(5);
    let mut c = sim.connect("127.0.0.1", "127.0.0.1:80", Seen::Both);
    for i in 0..50u64 {
        let t = MS + i * 100 * US;
        let path = format!("/k/{i}");
        sim.request(
            &mut c,
            at(t, CLIENT, CLIENT),
            at(t + US, SERVER, SERVER),
            &req("POST", &path, &[]),
        );
        sim.response(
            &mut c,
            at(t + 20 * US, SERVER, SERVER),
            at(t + 21 * US, CLIENT, CLIENT),
            &resp(201, &[]),
        );
    }
    let out = run(&sim.sorted(), Config::default());
    assert_eq!(out.spans.len(), 100);
    for i in 0..50u64 {
        let path = format!("/k/{i}");
        let cl = lbl(CLIENT, SpanKind::Client, &path);
        let sv = lbl(SERVER, SpanKind::Server, &path);
        out.assert_parent(&sv, &cl);
        let s = out.get(&sv);
        assert_eq!(
            (s.start_ns, s.end_ns),
            (MS + i * 100 * US + US, MS + i * 100 * US + 20 * US + 100)
        );
        let cs = out.get(&cl);
        assert_eq!(
            (cs.start_ns, cs.end_ns),
            (MS + i * 100 * US, MS + i * 100 * US + 21 * US + 100)
        );
    }
    assert_eq!(out.counters.mirror_parent, 50);
}

#[test]
fn http2_pairs_by_stream_id() {
    let evs = vec![
        open(1, "127.0.0.1:5000", "127.0.0.1:443"),
        m(
            1,
            Side::Outbound,
            CLIENT,
            CLIENT,
            100,
            MS,
            Some(1),
            rq("GET", "/a", &[]),
        ),
        m(
            1,
            Side::Outbound,
            CLIENT,
            CLIENT,
            200,
            MS + US,
            Some(3),
            rq("GET", "/b", &[]),
        ),
        m(
            1,
            Side::Outbound,
            CLIENT,
            CLIENT,
            300,
            MS + 2 * US,
            Some(5),
            rq("GET", "/c", &[]),
        ),
        m(
            1,
            Side::Inbound,
            CLIENT,
            CLIENT,
            900,
            MS + 10 * US,
            Some(5),
            rs(500, &[]),
        ),
        m(
            1,
            Side::Inbound,
            CLIENT,
            CLIENT,
            950,
            MS + 11 * US,
            Some(1),
            rs(200, &[]),
        ),
        m(
            1,
            Side::Inbound,
            CLIENT,
            CLIENT,
            990,
            MS + 12 * US,
            Some(7),
            rs(200, &[]),
        ),
        m(
            1,
            Side::Inbound,
            CLIENT,
            CLIENT,
            999,
            MS + 13 * US,
            Some(3),
            rs(404, &[]),
        ),
    ];
    let out = run(&evs, Config::default());
    assert_eq!(out.spans.len(), 3);
    assert_eq!(status(out.get(&lbl(CLIENT, SpanKind::Client, "/a"))), 200);
    assert_eq!(status(out.get(&lbl(CLIENT, SpanKind::Client, "/b"))), 404);
    assert_eq!(status(out.get(&lbl(CLIENT, SpanKind::Client, "/c"))), 500);
    assert_eq!(
        out.get(&lbl(CLIENT, SpanKind::Client, "/c")).end_ns,
        MS + 10 * US + 100
    );
    assert_eq!(out.counters.unmatched_response, 1);
}

#[test]
fn unmatched_responses_are_counted_and_dropped() {
    let evs = vec![
        open(1, "127.0.0.1:5000", "10.0.0.9:80"),
        // A response before any request, and one read on the side that has
        // no outstanding request written.
        m(1, Side::Inbound, CLIENT, CLIENT, 1, MS, None, rs(200, &[])),
        m(
            1,
            Side::Outbound,
            CLIENT,
            CLIENT,
            2,
            MS + US,
            None,
            rq("GET", "/x", &[]),
        ),
        m(
            1,
            Side::Outbound,
            CLIENT,
            CLIENT,
            3,
            MS + 2 * US,
            None,
            rs(200, &[]),
        ),
        m(
            1,
            Side::Inbound,
            CLIENT,
            CLIENT,
            4,
            MS + 3 * US,
            None,
            rs(204, &[]),
        ),
        m(
            1,
            Side::Inbound,
            CLIENT,
            CLIENT,
            5,
            MS + 4 * US,
            None,
            rs(200, &[]),
        ),
    ];
    let out = run(&evs, Config::default());
    assert_eq!(out.spans.len(), 1);
    assert_eq!(status(&out.spans[0]), 204);
    assert_eq!(out.counters.unmatched_response, 3);
}

#[test]
fn close_with_outstanding_requests_ends_them_as_errors() {
    let mut sim = Sim::new(9);
    let mut c = sim.connect("127.0.0.1", "127.0.0.1:80", Seen::Both);
    sim.request(
        &mut c,
        at(MS, CLIENT, CLIENT),
        at(MS + US, SERVER, SERVER),
        &req("GET", "/slow", &[]),
    );
    sim.close(&c, 5 * MS);
    let out = run(&sim.sorted(), Config::default());
    assert_eq!(out.spans.len(), 2);
    for s in &out.spans {
        assert_eq!(
            s.status,
            Status::Error("connection closed before response".into())
        );
        assert_eq!(s.end_ns, 5 * MS);
        assert_eq!(s.attr_str("error.type"), Some("connection_closed"));
        assert!(s.attr("http.response.status_code").is_none());
    }
    out.assert_parent(
        &lbl(SERVER, SpanKind::Server, "/slow"),
        &lbl(CLIENT, SpanKind::Client, "/slow"),
    );
    assert_eq!(out.counters.closed_before_response, 2);
}

#[test]
fn close_reported_before_the_last_response_still_pairs() {
    let mut sim = Sim::new(9);
    let mut c = sim.connect("127.0.0.1", "127.0.0.1:80", Seen::Both);
    sim.request(
        &mut c,
        at(MS, CLIENT, CLIENT),
        at(MS + US, SERVER, SERVER),
        &req("GET", "/x", &[]),
    );
    sim.response(
        &mut c,
        at(2 * MS, SERVER, SERVER),
        at(2 * MS + US, CLIENT, CLIENT),
        &resp(200, &[]),
    );
    sim.close(&c, 2 * MS + 2 * US);
    // The response messages arrive 100 ms after the close.
    let evs = sim.sorted();
    let delays: Vec<u64> = evs
        .iter()
        .map(|e| match e {
            Ev::Msg(m) if matches!(m.kind, MessageKind::Response(_)) => 100 * MS,
            _ => 0,
        })
        .collect();
    let out = run_delayed(&evs, Config::default(), &delays);
    assert_eq!(out.spans.len(), 2);
    assert!(out
        .spans
        .iter()
        .all(|s| s.status == Status::Unset && status(s) == 200));
    assert_eq!(out.counters.closed_before_response, 0);
    assert_eq!(out.counters.unknown_connection, 0);
}

#[test]
fn local_peer_without_client_span_waits_the_window_then_is_a_counted_root() {
    // The client process is on this host but not reported (e.g. not captured).
    let mut sim = Sim::new(2);
    let mut c = sim.connect("127.0.0.1", "127.0.0.1:80", Seen::ServerOnly);
    sim.request(
        &mut c,
        at(MS, CLIENT, CLIENT),
        at(MS + US, SERVER, SERVER),
        &req("GET", "/lonely", &[]),
    );
    sim.response(
        &mut c,
        at(2 * MS, SERVER, SERVER),
        at(2 * MS + US, CLIENT, CLIENT),
        &resp(200, &[]),
    );
    let mut corr = Correlator::with_seed(Config::default(), 1);
    for e in sim.sorted() {
        e.apply(&mut corr);
    }
    assert!(
        corr.poll(2 * MS + W / 2).is_empty(),
        "held while the window is open"
    );
    let spans = corr.poll(2 * MS + W + US);
    assert_eq!(spans.len(), 1);
    assert_eq!(spans[0].parent_span_id, None);
    assert_eq!(spans[0].parent_source, ParentSource::Root);
    assert_eq!(corr.counters().mirror_expired, 1);
    assert_eq!(corr.counters().roots, 1);
}

#[test]
fn remote_peer_is_not_held() {
    let mut corr = Correlator::with_seed(Config::default(), 1);
    let evs = vec![
        open(1, "10.0.0.5:80", "192.0.2.7:5555"),
        m(
            1,
            Side::Inbound,
            SERVER,
            SERVER,
            1,
            MS,
            None,
            rq("GET", "/x", &[]),
        ),
        m(
            1,
            Side::Outbound,
            SERVER,
            SERVER,
            2,
            MS + US,
            None,
            rs(200, &[]),
        ),
    ];
    for e in evs {
        match e {
            Ev::Open(i) => corr.conn_open(i),
            Ev::Msg(m) => corr.message(m),
            Ev::Close(..) | Ev::Cause(..) | Ev::Lost(..) | Ev::Complete(..) => {}
        }
    }
    let spans = corr.poll(MS + 2 * US);
    assert_eq!(spans.len(), 1, "emitted at once");
    assert_eq!(spans[0].parent_source, ParentSource::Root);
}

#[test]
fn host_addresses_given_by_the_agent_count_as_local() {
    let mut sim = Sim::new(4);
    let mut c = sim.connect("10.1.2.3", "10.1.2.4:8080", Seen::Both);
    sim.request(
        &mut c,
        at(MS, CLIENT, CLIENT),
        at(MS + US, SERVER, SERVER),
        &req("GET", "/pod", &[]),
    );
    sim.response(
        &mut c,
        at(2 * MS, SERVER, SERVER),
        at(2 * MS + US, CLIENT, CLIENT),
        &resp(200, &[]),
    );
    // Server side reported first, client side 50 ms later.
    let evs = sim.sorted();
    let delays: Vec<u64> = evs
        .iter()
        .map(|e| match e {
            Ev::Msg(m) if m.pid == Pid(CLIENT) => 50 * MS,
            _ => 0,
        })
        .collect();
    // Without the addresses, the server span does not wait: a root.
    let out = run_delayed(&evs, Config::default(), &delays);
    assert_eq!(
        out.get(&lbl(SERVER, SpanKind::Server, "/pod"))
            .parent_source,
        ParentSource::Root
    );

    // With them, it waits and links.
    let mut corr = Correlator::with_seed(Config::default(), 1);
    corr.set_local_addrs(["10.1.2.3".parse().unwrap(), "10.1.2.4".parse().unwrap()]);
    assert!(corr.is_local("::ffff:10.1.2.3".parse().unwrap()));
    assert!(corr.is_local("::1".parse().unwrap()));
    assert!(!corr.is_local("10.1.2.5".parse().unwrap()));
    let mut order: Vec<(u64, &Ev)> = evs
        .iter()
        .zip(&delays)
        .map(|(e, d)| (e.time() + d, e))
        .collect();
    order.sort_by_key(|(t, _)| *t);
    let mut spans = Vec::new();
    for (t, e) in order {
        spans.extend(corr.poll(t));
        e.apply(&mut corr);
    }
    spans.extend(corr.poll(10 * W));
    let out = Out {
        spans,
        counters: corr.counters().clone(),
    };
    out.assert_parent(
        &lbl(SERVER, SpanKind::Server, "/pod"),
        &lbl(CLIENT, SpanKind::Client, "/pod"),
    );
}

#[test]
fn unknown_connection_still_makes_spans() {
    let evs = vec![
        m(
            77,
            Side::Inbound,
            SERVER,
            SERVER,
            1,
            MS,
            None,
            rq("GET", "/u", &[("Host", "svc")]),
        ),
        m(
            77,
            Side::Outbound,
            SERVER,
            SERVER,
            2,
            MS + US,
            None,
            rs(200, &[]),
        ),
    ];
    let out = run(&evs, Config::default());
    assert_eq!(out.spans.len(), 1);
    let s = &out.spans[0];
    assert_eq!(s.attr_str("server.address"), Some("svc"));
    assert!(s.attr("network.peer.address").is_none());
    assert_eq!(out.counters.unknown_connection, 1);
}

#[test]
fn response_ending_before_its_request_is_clamped() {
    let evs = vec![
        open(1, "10.0.0.5:80", "192.0.2.7:5555"),
        m(
            1,
            Side::Inbound,
            SERVER,
            SERVER,
            1,
            5 * MS,
            None,
            rq("GET", "/t", &[]),
        ),
        m(1, Side::Outbound, SERVER, SERVER, 2, MS, None, rs(200, &[])),
    ];
    let out = run(&evs, Config::default());
    assert_eq!(out.spans[0].start_ns, 5 * MS);
    assert_eq!(out.spans[0].end_ns, 5 * MS);
    assert_eq!(out.counters.clock_anomaly, 1);
}

#[test]
fn connection_bound_evicts_the_oldest() {
    let cfg = Config {
        max_connections: 4,
        ..Config::default()
    };
    let mut evs = Vec::new();
    for i in 0..10u64 {
        evs.push(open(
            i + 1,
            "10.0.0.5:80",
            &format!("192.0.2.7:{}", 5000 + i),
        ));
        evs.push(m(
            i + 1,
            Side::Inbound,
            SERVER,
            SERVER,
            1,
            MS + i * US,
            None,
            rq("GET", &format!("/c/{i}"), &[]),
        ));
    }
    let mut corr = Correlator::with_seed(cfg, 1);
    let mut spans = Vec::new();
    for e in &evs {
        match e {
            Ev::Open(i) => corr.conn_open(*i),
            Ev::Msg(m) => corr.message(m.clone()),
            Ev::Close(..) | Ev::Cause(..) | Ev::Lost(..) | Ev::Complete(..) => {}
        }
        assert!(corr.connections() <= 4);
        spans.extend(corr.poll(MS + 20 * US));
    }
    assert_eq!(corr.counters().connection_overflow, 6);
    assert_eq!(spans.len(), 6);
    assert!(spans
        .iter()
        .all(|s| s.status == Status::Error("connection evicted".into())));
}

#[test]
fn outstanding_bound_ends_the_oldest() {
    let cfg = Config {
        max_outstanding_per_conn: 3,
        ..Config::default()
    };
    let mut evs = vec![open(1, "10.0.0.5:80", "192.0.2.7:5000")];
    for i in 0..5u64 {
        evs.push(m(
            1,
            Side::Inbound,
            SERVER,
            SERVER,
            i as u32,
            MS + i * US,
            None,
            rq("GET", &format!("/o/{i}"), &[]),
        ));
    }
    for i in 0..3u64 {
        evs.push(m(
            1,
            Side::Outbound,
            SERVER,
            SERVER,
            100 + i as u32,
            2 * MS + i * US,
            None,
            rs(200, &[]),
        ));
    }
    let out = run(&evs, cfg);
    assert_eq!(out.counters.outstanding_overflow, 2);
    for i in 0..2 {
        let s = out.get(&lbl(SERVER, SpanKind::Server, &format!("/o/{i}")));
        assert_eq!(s.status, Status::Error("response not observed".into()));
    }
    for i in 2..5 {
        assert_eq!(
            status(out.get(&lbl(SERVER, SpanKind::Server, &format!("/o/{i}")))),
            200
        );
    }
}

/// Thousands of spans held at once (the record slab grown past its first
/// sizes), then as many again in the slots they freed: each is emitted
/// once, with its own request's attributes.
#[test]
fn thousands_of_spans_held_at_once_keep_their_own_records() {
    let mut corr = Correlator::with_seed(Config::default(), 1);
    corr.conn_open(ConnInfo {
        conn: ConnId(1),
        local: "127.0.0.1:5000".parse().unwrap(),
        remote: "10.9.9.9:80".parse().unwrap(),
    });
    const N: u64 = 2_600;
    let mut spans = Vec::new();
    for wave in 0..2u64 {
        let t0 = MS + wave * 10 * W;
        for i in 0..N {
            let t = t0 + i * 100;
            let n = wave * N + i;
            for (side, at, kind) in [
                (Side::Outbound, t, rq("GET", &format!("/held/{n}"), &[])),
                (Side::Inbound, t + 50, rs(200, &[])),
            ] {
                if let Ev::Msg(m) = m(1, side, CLIENT, CLIENT, n as u32, at, None, kind) {
                    corr.message(m);
                }
            }
        }
        assert!(
            corr.live_spans() >= N as usize,
            "{} held",
            corr.live_spans()
        );
        spans.extend(corr.poll(t0 + 5 * W));
    }
    assert_eq!(spans.len(), 2 * N as usize);
    let mut paths: Vec<String> = spans
        .iter()
        .map(|s| s.attr_str("url.path").unwrap().to_owned())
        .collect();
    paths.sort();
    paths.dedup();
    assert_eq!(
        paths.len(),
        2 * N as usize,
        "every request's own path, once"
    );
    let mut ids: Vec<_> = spans.iter().map(|s| s.span_id).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 2 * N as usize);
}

/// 100 calls to a remote peer, 10 µs apart, under a bound of 16 span
/// records, checked after every message; `between` runs after each call.
fn calls_under_a_span_bound(between: impl Fn(&mut Correlator, u64) -> Vec<Span>) -> Counters {
    let cfg = Config {
        max_spans: 16,
        ..Config::default()
    };
    let mut corr = Correlator::with_seed(cfg, 1);
    corr.conn_open(ConnInfo {
        conn: ConnId(1),
        local: "127.0.0.1:5000".parse().unwrap(),
        remote: "10.9.9.9:80".parse().unwrap(),
    });
    let mut spans = Vec::new();
    for i in 0..100u64 {
        let t = MS + i * 10 * US;
        let seq = i as u32;
        let path = format!("/s/{i}");
        for e in [
            m(
                1,
                Side::Outbound,
                CLIENT,
                CLIENT,
                seq,
                t,
                None,
                rq("GET", &path, &[]),
            ),
            m(
                1,
                Side::Inbound,
                CLIENT,
                CLIENT,
                seq,
                t + US,
                None,
                rs(200, &[]),
            ),
        ] {
            if let Ev::Msg(m) = e {
                corr.message(m);
            }
            assert!(corr.live_spans() <= 16, "{} records", corr.live_spans());
        }
        spans.extend(between(&mut corr, t + 2 * US));
    }
    spans.extend(corr.poll(10 * W));
    assert_eq!(spans.len(), 100, "every span still emitted once");
    let mut ids: Vec<_> = spans.iter().map(|s| s.span_id).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 100);
    corr.counters().clone()
}

#[test]
fn span_bound_holds_and_is_counted() {
    // Client spans each wait a window for rule 4; 100 of them in 1 ms.
    let c = calls_under_a_span_bound(|corr, t| corr.poll(t));
    assert!(c.span_overflow + c.retained_evicted >= 84, "{c:?}");
}

/// Emitted client spans are forgotten at the next poll; until then they
/// hold records, and a burst of calls before that poll (here: each one
/// settled by `flush`) must not pass the span bound.
#[test]
fn span_bound_holds_for_emitted_clients_between_polls() {
    let c = calls_under_a_span_bound(|corr, _| corr.flush());
    assert!(c.retained_evicted >= 84, "{c:?}");
}

#[test]
fn retained_spans_are_forgotten_after_retention() {
    let ch_events = {
        let mut sim = Sim::new(1);
        let mut c = sim.connect("10.0.0.1", "10.0.0.2:80", Seen::ServerOnly);
        sim.request(
            &mut c,
            at(MS, CLIENT, CLIENT),
            at(MS, SERVER, SERVER),
            &req("GET", "/r", &[]),
        );
        sim.response(
            &mut c,
            at(2 * MS, SERVER, SERVER),
            at(2 * MS, CLIENT, CLIENT),
            &resp(200, &[]),
        );
        sim.sorted()
    };
    let cfg = Config::default();
    let (retention, samples) = (cfg.retention_ns, cfg.sample_window_ns);
    let mut corr = Correlator::with_seed(cfg, 1);
    for e in ch_events {
        match e {
            Ev::Open(i) => corr.conn_open(i),
            Ev::Msg(m) => corr.message(m),
            Ev::Close(..) | Ev::Cause(..) | Ev::Lost(..) | Ev::Complete(..) => {}
        }
    }
    assert_eq!(corr.poll(3 * MS).len(), 1);
    assert_eq!(corr.live_spans(), 1);
    assert!(corr
        .server_span_at(Pid(SERVER), Tid(SERVER), MS + 500 * US)
        .is_some());
    corr.poll(3 * MS + retention + 1);
    assert_eq!(corr.live_spans(), 0);
    // The record is gone; CPU samples of its time still find it.
    corr.poll(3 * MS + 2 * retention + W);
    assert!(corr
        .server_span_at(Pid(SERVER), Tid(SERVER), MS + 500 * US)
        .is_some());
    corr.poll(3 * MS + samples + 2 * W);
    assert_eq!(
        corr.server_span_at(Pid(SERVER), Tid(SERVER), MS + 500 * US),
        None
    );
}

#[test]
fn flush_settles_everything_finished() {
    let mut sim = Sim::new(2);
    let mut c = sim.connect("127.0.0.1", "127.0.0.1:80", Seen::Both);
    sim.request(
        &mut c,
        at(MS, CLIENT, CLIENT),
        at(MS + US, SERVER, SERVER),
        &req("GET", "/f", &[]),
    );
    sim.response(
        &mut c,
        at(2 * MS, SERVER, SERVER),
        at(2 * MS + US, CLIENT, CLIENT),
        &resp(200, &[]),
    );
    sim.request(
        &mut c,
        at(3 * MS, CLIENT, CLIENT),
        at(3 * MS + US, SERVER, SERVER),
        &req("GET", "/open", &[]),
    );
    let mut corr = Correlator::with_seed(Config::default(), 1);
    for e in sim.sorted() {
        match e {
            Ev::Open(i) => corr.conn_open(i),
            Ev::Msg(m) => corr.message(m),
            Ev::Close(..) | Ev::Cause(..) | Ev::Lost(..) | Ev::Complete(..) => {}
        }
    }
    let spans = corr.flush();
    assert_eq!(spans.len(), 2);
    let out = Out {
        spans,
        counters: corr.counters().clone(),
    };
    out.assert_parent(
        &lbl(SERVER, SpanKind::Server, "/f"),
        &lbl(CLIENT, SpanKind::Client, "/f"),
    );
}

#[test]
fn reset_after_a_stream_gap_ends_outstanding_requests() {
    let evs = vec![
        open(1, "10.0.0.5:80", "192.0.2.7:5000"),
        m(
            1,
            Side::Inbound,
            SERVER,
            SERVER,
            1,
            MS,
            None,
            rq("GET", "/before", &[]),
        ),
    ];
    let mut corr = Correlator::with_seed(Config::default(), 1);
    for e in evs {
        match e {
            Ev::Open(i) => corr.conn_open(i),
            Ev::Msg(m) => corr.message(m),
            Ev::Close(..) | Ev::Cause(..) | Ev::Lost(..) | Ev::Complete(..) => {}
        }
    }
    corr.conn_reset(ConnId(1), 2 * MS);
    // After the gap: a new request and its response pair with each other.
    corr.message(Message {
        conn: ConnId(1),
        side: Side::Inbound,
        pid: Pid(SERVER),
        tid: Tid(SERVER),
        seq: 500,
        start_ns: 3 * MS,
        end_ns: 3 * MS,
        stream_id: None,
        kind: rq("GET", "/after", &[]),
    });
    corr.message(Message {
        conn: ConnId(1),
        side: Side::Outbound,
        pid: Pid(SERVER),
        tid: Tid(SERVER),
        seq: 900,
        start_ns: 4 * MS,
        end_ns: 4 * MS,
        stream_id: None,
        kind: rs(200, &[]),
    });
    let spans = corr.poll(5 * MS);
    let out = Out {
        spans,
        counters: corr.counters().clone(),
    };
    let before = out.get(&lbl(SERVER, SpanKind::Server, "/before"));
    assert_eq!(before.status, Status::Error("stream data lost".into()));
    assert_eq!(before.end_ns, 2 * MS);
    assert_eq!(
        status(out.get(&lbl(SERVER, SpanKind::Server, "/after"))),
        200
    );
    assert_eq!(out.counters.reset_outstanding, 1);
}

/// A client's response lost in bytes it read at 2 ms (a read the agent
/// did not see): the request written before then ends as lost, at that
/// time; the request written after keeps its place and pairs with the
/// next response, which would otherwise have gone to the first.
#[test]
fn responses_lost_end_only_the_requests_written_before_them() {
    let evs = vec![
        open(1, "192.0.2.7:5000", "10.0.0.5:80"),
        m(
            1,
            Side::Outbound,
            CLIENT,
            CLIENT,
            1,
            MS,
            None,
            rq("GET", "/first", &[]),
        ),
        m(
            1,
            Side::Outbound,
            CLIENT,
            CLIENT,
            200,
            3 * MS,
            None,
            rq("GET", "/second", &[]),
        ),
    ];
    let mut corr = Correlator::with_seed(Config::default(), 1);
    for e in evs {
        match e {
            Ev::Open(i) => corr.conn_open(i),
            Ev::Msg(m) => corr.message(m),
            Ev::Close(..) | Ev::Cause(..) | Ev::Lost(..) | Ev::Complete(..) => {}
        }
    }
    corr.responses_lost(ConnId(1), Side::Inbound, 2 * MS, 4 * MS);
    corr.message(Message {
        conn: ConnId(1),
        side: Side::Inbound,
        pid: Pid(CLIENT),
        tid: Tid(CLIENT),
        seq: 900,
        start_ns: 4 * MS,
        end_ns: 4 * MS,
        stream_id: None,
        kind: rs(200, &[]),
    });
    let out = Out {
        spans: corr.flush(),
        counters: corr.counters().clone(),
    };
    let first = out.get(&lbl(CLIENT, SpanKind::Client, "/first"));
    assert_eq!(first.status, Status::Error("stream data lost".into()));
    assert_eq!(first.end_ns, 2 * MS);
    let second = out.get(&lbl(CLIENT, SpanKind::Client, "/second"));
    assert_eq!(status(second), 200);
    assert_eq!(second.end_ns, 4 * MS);
    assert_eq!(out.counters.reset_outstanding, 1);
    assert_eq!(out.counters.unmatched_response, 0);
}

#[test]
fn span_memory_stays_under_its_byte_bound() {
    let cfg = Config {
        max_span_bytes: 64 << 10,
        ..Config::default()
    };
    let bound = cfg.max_span_bytes;
    let mut corr = Correlator::with_seed(cfg, 3);
    let mut sim = Sim::new(5);
    let mut c = sim.connect("127.0.0.1", "127.0.0.1:80", Seen::ServerOnly);
    // Requests with long targets and no response: they wait and hold texts.
    let target = format!("/{}", "x".repeat(900));
    for i in 0..200u64 {
        sim.request(
            &mut c,
            at(MS + i * US, CLIENT, CLIENT),
            at(MS + i * US, SERVER, SERVER),
            &req("GET", &target, &[("user-agent", &"u".repeat(500))]),
        );
    }
    let mut peak = 0;
    for e in sim.sorted() {
        match e {
            Ev::Open(i) => corr.conn_open(i),
            Ev::Msg(m) => corr.message(m),
            Ev::Close(..) | Ev::Cause(..) | Ev::Lost(..) | Ev::Complete(..) => {}
        }
        peak = peak.max(corr.span_bytes());
    }
    assert!(peak <= bound, "{peak} bytes held, bound {bound}");
    let c = corr.counters().clone();
    assert!(c.span_overflow > 0, "{c:?}");
    // What was forced out is still a span (an error: no response seen).
    assert!(c.spans_emitted > 0, "{c:?}");
    corr.flush();
    assert!(corr.span_bytes() <= bound);
}

/// A request of `path` at `t` on `c`, answered 2 ms later unless `answered`
/// is false.
fn exchange(sim: &mut Sim, c: &mut Conn, t: u64, path: &str, answered: bool) {
    sim.request(
        c,
        at(t, CLIENT, CLIENT),
        at(t + US, SERVER, SERVER),
        &req("GET", path, &[]),
    );
    if answered {
        sim.response(
            c,
            at(t + 2 * MS, SERVER, SERVER),
            at(t + 2 * MS + US, CLIENT, CLIENT),
            &resp(200, &[]),
        );
    }
}

#[test]
fn the_window_follows_how_late_messages_arrive() {
    // Server spans whose local client is not reported wait one window each.
    let mut sim = Sim::new(2);
    // Busy enough for a shorter window to pay: 25k exchanges a second over
    // 64 connections, for 1.2 s.
    let mut busy: Vec<Conn> = (0..64)
        .map(|i| {
            sim.connect(
                "127.0.0.1",
                &format!("127.0.0.1:{}", 1000 + i),
                Seen::ServerOnly,
            )
        })
        .collect();
    let mut c2 = sim.connect("127.0.0.1", "127.0.0.1:81", Seen::ServerOnly);
    let mut c3 = sim.connect("127.0.0.1", "127.0.0.1:82", Seen::ServerOnly);
    for i in 0..30_000u64 {
        let c = &mut busy[(i % 64) as usize];
        exchange(&mut sim, c, MS + i * 40 * US, "/calm", true);
    }
    let cfg = Config::default();
    let (floor, ceiling) = (cfg.min_window_ns, cfg.window_ns);
    let mut corr = Correlator::with_seed(cfg, 1);
    assert_eq!(corr.window_ns(), ceiling, "starts at the configured window");
    let mut last = 0;
    for e in sim.sorted() {
        // Every message is delivered at its own time: never late.
        last = e.time();
        e.apply(&mut corr);
        corr.poll(last);
    }
    assert_eq!(corr.window_ns(), floor, "a calm busy second shrinks it");
    // A lonely server span is now settled one floor after its arrival.
    let t = last + 10 * MS;
    exchange(&mut sim, &mut c2, t, "/after", true);
    for e in sim.sorted().into_iter().filter(|e| e.time() >= t) {
        e.apply(&mut corr);
    }
    let path = |s: &Span| s.attr("url.path").and_then(AttrRef::as_str) == Some("/after");
    assert!(!corr.poll(t + 2 * MS + floor / 2).iter().any(path));
    let spans = corr.poll(t + 2 * MS + floor + US);
    let after: Vec<_> = spans.iter().filter(|s| path(s)).collect();
    assert_eq!(after.len(), 1, "settled one shrunk window after it ended");
    assert_eq!(after[0].parent_source, ParentSource::Root);
    // A message that reaches the correlator 100 ms after its time widens
    // the window at once (twice that, within the ceiling).
    let late = 100 * MS;
    let t3 = t + 20 * MS;
    exchange(&mut sim, &mut c3, t3, "/late", false);
    corr.poll(t3 + late);
    for e in sim.sorted().into_iter().filter(|e| e.time() >= t3) {
        e.apply(&mut corr);
    }
    assert_eq!(corr.window_ns(), (2 * late).min(ceiling));
}

#[test]
fn sparse_traffic_keeps_the_configured_window() {
    // 200 messages a second, never late: too few for a shorter window to
    // pay, so a stall after them still finds the whole window.
    let mut sim = Sim::new(2);
    let mut c = sim.connect("127.0.0.1", "127.0.0.1:80", Seen::ServerOnly);
    for i in 0..300u64 {
        exchange(&mut sim, &mut c, MS + i * 10 * MS, "/sparse", true);
    }
    let cfg = Config::default();
    let ceiling = cfg.window_ns;
    let mut corr = Correlator::with_seed(cfg, 1);
    let mut last = 0;
    let mut settled = 0;
    for e in sim.sorted() {
        last = e.time();
        e.apply(&mut corr);
        settled += corr.poll(last).len();
    }
    assert_eq!(corr.window_ns(), ceiling);
    // The last lonely server spans wait the configured window (the floor
    // would have settled them all half a window after the last).
    settled += corr.poll(last + ceiling / 2).len();
    assert!(settled < 300, "{settled}");
    settled += corr.poll(last + ceiling + MS).len();
    assert_eq!(settled, 300);
}
