//! The acceptance chain curl → nginx → A → B, sequential and concurrent,
//! with and without propagated context, delivered in order and out of order.

mod common;

use common::chain::*;
use common::*;
use correlate::*;

fn cfg() -> Config {
    Config::default()
}

#[test]
fn sequential_30_requests_make_30_complete_traces() {
    let ch = chain(&ChainOpts::default());
    let out = run(&ch.events, cfg());
    assert_chain(&out, &ch.hops, true);
    assert_eq!(trace_count(&out), 30);
    let c = &out.counters;
    assert_eq!(c.spans_emitted, 180);
    assert_eq!(c.roots, 30);
    assert_eq!(c.mirror_parent, 90);
    assert_eq!(c.thread_parent, 60);
    assert_eq!(c.ambiguous_parent, 0);
    assert_eq!(c.unmatched_response, 0);
    assert_eq!(c.closed_before_response, 0);
    assert_eq!(c.mirror_expired, 0);
}

#[test]
fn sequential_with_keepalive_upstream() {
    let ch = chain(&ChainOpts {
        keepalive_upstream: true,
        ..ChainOpts::default()
    });
    let out = run(&ch.events, cfg());
    assert_chain(&out, &ch.hops, true);
    assert_eq!(trace_count(&out), 30);
}

#[test]
fn concurrent_8_clients_never_guess_on_the_event_loop() {
    let ch = chain(&ChainOpts {
        requests: 32,
        concurrency: 8,
        ..ChainOpts::default()
    });
    let out = run(&ch.events, cfg());
    // nginx's upstream spans cannot be tied to their server span: they are
    // roots of a second trace per request; everything else links.
    assert_chain(&out, &ch.hops, false);
    for h in &ch.hops {
        out.assert_no_local_parent(&h.c1);
        assert_eq!(out.get(&h.c1).parent_source, ParentSource::Root);
    }
    assert_eq!(out.counters.ambiguous_parent, 32);
    assert_eq!(trace_count(&out), 64);
    // A's thread-per-request still links client to server.
    assert_eq!(out.counters.thread_parent, 32);
}

#[test]
fn concurrent_with_request_id_links_through_the_event_loop() {
    let ch = chain(&ChainOpts {
        requests: 32,
        concurrency: 8,
        request_id: true,
        ..ChainOpts::default()
    });
    let out = run(&ch.events, cfg());
    assert_chain(&out, &ch.hops, true);
    for h in &ch.hops {
        assert_eq!(out.get(&h.c1).parent_source, ParentSource::RequestId);
    }
    assert_eq!(trace_count(&out), 32);
    assert_eq!(out.counters.ambiguous_parent, 0);
}

#[test]
fn concurrent_with_traceparent_links_through_the_event_loop() {
    let ch = chain(&ChainOpts {
        requests: 32,
        concurrency: 8,
        traceparent: true,
        ..ChainOpts::default()
    });
    let out = run(&ch.events, cfg());
    assert_chain(&out, &ch.hops, true);
    for h in &ch.hops {
        assert_eq!(out.get(&h.c1).parent_source, ParentSource::ThreadContext);
        assert_eq!(out.get(&h.c0).parent_source, ParentSource::Header);
    }
    assert_eq!(trace_count(&out), 32);
}

#[test]
fn sequential_with_traceparent_puts_everything_in_the_propagated_trace() {
    let ch = chain(&ChainOpts {
        traceparent: true,
        ..ChainOpts::default()
    });
    let out = run(&ch.events, cfg());
    assert_chain(&out, &ch.hops, true);
    assert_eq!(trace_count(&out), 30);
    assert_eq!(out.counters.header_parent, 30);
    assert_eq!(out.counters.context_conflict, 0);
}

#[test]
fn out_of_order_delivery_within_the_window_changes_nothing() {
    let ch = chain(&ChainOpts {
        requests: 16,
        ..ChainOpts::default()
    });
    // Reverse-ish delays: later events of a request arrive first.
    let n = ch.events.len();
    let delays: Vec<u64> = (0..n)
        .map(|i| ((n - i) as u64 * 7_919 * US) % (W / 2))
        .collect();
    let out = run_delayed(&ch.events, cfg(), &delays);
    assert_chain(&out, &ch.hops, true);
    assert_eq!(trace_count(&out), 16);
}

#[test]
fn server_side_first_then_client_side() {
    // Every client-side message arrives 100 ms late: the server spans wait.
    let ch = chain(&ChainOpts {
        requests: 5,
        ..ChainOpts::default()
    });
    let delays: Vec<u64> = ch
        .events
        .iter()
        .map(|e| match e {
            Ev::Msg(m) if m.side == Side::Outbound && matches!(m.kind, MessageKind::Request(_)) => {
                100 * MS
            }
            _ => 0,
        })
        .collect();
    let out = run_delayed(&ch.events, cfg(), &delays);
    assert_chain(&out, &ch.hops, true);
}

#[test]
fn spans_are_not_emitted_before_their_trace_is_known() {
    let ch = chain(&ChainOpts {
        requests: 1,
        ..ChainOpts::default()
    });
    let mut c = Correlator::with_seed(cfg(), 1);
    let mut early = Vec::new();
    let mut last = 0;
    for e in &ch.events {
        last = last.max(e.time());
        match e {
            Ev::Open(i) => c.conn_open(*i),
            Ev::Msg(m) => c.message(m.clone()),
            Ev::Close(id, t) => c.conn_close(*id, *t),
        }
        early.extend(c.poll(last));
    }
    // Everything happened within 1 ms; nothing is settled before the
    // window has passed.
    assert!(early.is_empty(), "{early:#?}");
    let spans = c.poll(last + W);
    assert_eq!(spans.len(), 6);
    let trace = spans[0].trace_id;
    assert!(spans.iter().all(|s| s.trace_id == trace));
}

#[test]
fn client_message_later_than_the_window_makes_a_root_and_is_counted() {
    let ch = chain(&ChainOpts {
        requests: 1,
        ..ChainOpts::default()
    });
    // nginx's upstream request is reported 2 windows late (connections
    // stay open, so its addresses are still known then).
    let events: Vec<Ev> = ch
        .events
        .into_iter()
        .filter(|e| !matches!(e, Ev::Close(..)))
        .collect();
    let delays: Vec<u64> = events
        .iter()
        .map(|e| match e {
            Ev::Msg(m)
                if m.pid == Pid(NGINX)
                    && m.side == Side::Outbound
                    && matches!(m.kind, MessageKind::Request(_)) =>
            {
                2 * W
            }
            _ => 0,
        })
        .collect();
    let out = run_delayed(&events, cfg(), &delays);
    let h = &ch.hops[0];
    assert_no_wrong_parent(&out, &ch.hops);
    out.assert_no_local_parent(&h.s2);
    assert_eq!(out.get(&h.s2).parent_source, ParentSource::Root);
    assert_eq!(out.counters.mirror_expired, 1);
    assert_eq!(out.counters.late_mirror, 1);
    // The rest of the chain still links.
    out.assert_parent(&h.s1, &h.c0);
    out.assert_parent(&h.c2, &h.s2);
    out.assert_parent(&h.s3, &h.c2);
}
