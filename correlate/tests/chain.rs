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
    assert_chain(&out, &ch, true);
    assert_eq!(trace_count(&out), 30);
    let c = &out.counters;
    let warm = warm_up().count() as u64;
    assert_eq!(c.spans_emitted, 180 + warm);
    // curl's spans begin their traces (idle: curl serves nothing), and so
    // do A's warm-up requests from elsewhere.
    assert_eq!(c.roots, 30 + warm);
    assert_eq!(c.roots_idle, 30);
    assert_eq!(c.roots_entry, warm);
    assert_eq!(c.mirror_parent, 90);
    // nginx is one event-loop thread: its upstream requests link because
    // they repeat the request in flight, never by rule 4; A serves one
    // request per thread (a pool by then), so rule 4 links its calls.
    assert_eq!(c.forwarded_parent, 30);
    assert_eq!(c.thread_parent, 30);
    assert_eq!(c.thread_refused_unproven, 30);
    assert_eq!(c.processes_thread_per_request, 2, "A and B");
    assert_eq!(c.processes_multiplexing, 0);
    assert_eq!(c.linked_share(), Some(1.0));
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
    assert_chain(&out, &ch, true);
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
    // Several requests are in flight on nginx's event loop: rule 4 has
    // nothing to say there (before this issue the upstream spans were
    // roots, counted ambiguous), but each upstream request repeats exactly
    // one request in flight.
    assert_chain(&out, &ch, true);
    for h in &ch.hops {
        assert_eq!(out.get(&h.c1).parent_source, ParentSource::Forwarded);
    }
    assert_eq!(out.counters.ambiguous_parent, 0);
    assert_eq!(trace_count(&out), 32);
    // A's thread-per-request still links client to server.
    assert_eq!(out.counters.thread_parent, 32);
    assert!(out.counters.processes_multiplexing >= 1, "nginx");
}

/// Every client asks for the same path.
fn same_api_target(ch: &mut Chain) {
    for e in &mut ch.events {
        if let Ev::Msg(m) = e {
            if let MessageKind::Request(r) = &mut m.kind {
                if r.target.starts_with("/api/") {
                    r.target = "/api/same".into();
                }
            }
        }
    }
}

/// Times of `n` requests in batches of 8: nginx reads all of a batch,
/// forwards all, then answers all (every request in flight nests every
/// upstream call of its batch).
fn batches_of_8(n: u64) -> Vec<[u64; 12]> {
    (0..n)
        .map(|i| {
            let (b, j) = (i / 8, i % 8);
            let base = MS + b * 10 * MS;
            let t0 = base + j * 10 * US;
            let t2 = base + 100 * US + j * 10 * US;
            let t10 = base + 400 * US + j * 10 * US;
            let mut t = [t0, t0 + 3 * US, t2, 0, 0, 0, 0, 0, 0, 0, t10, t10 + 3 * US];
            for (k, gap) in [(3, 3), (4, 20), (5, 3), (6, 30), (7, 3), (8, 10), (9, 3)] {
                t[k] = t[k - 1] + gap * US;
            }
            t
        })
        .collect()
}

#[test]
fn identical_requests_in_flight_on_the_event_loop_are_not_guessed() {
    // Every client asks for the same path: nginx's upstream requests repeat
    // several requests in flight, so forwarding cannot tell them apart.
    // Batches of 8: nginx reads all, forwards all, then answers all (so
    // every request in flight also nests every upstream call).
    let times = batches_of_8(16);
    let mut ch = chain(&ChainOpts {
        requests: 16,
        times: Some(times),
        ..ChainOpts::default()
    });
    same_api_target(&mut ch);
    let out = run(&ch.events, cfg());
    let nginx_calls: Vec<&Span> = out
        .spans
        .iter()
        .filter(|s| s.pid == Pid(NGINX) && s.kind == SpanKind::Client)
        .collect();
    assert_eq!(nginx_calls.len(), 16);
    for s in &nginx_calls {
        assert_eq!(s.parent_span_id, None, "{s:?}");
        assert_eq!(s.parent_source, ParentSource::Root);
    }
    assert_eq!(out.counters.forward_ambiguous, 16);
    assert_eq!(out.counters.roots_ambiguous, 16);
}

/// The identical requests above, with nginx's upstream hook: every
/// upstream call links to the request it serves, over new connections and
/// over one kept-alive connection.
#[test]
fn identical_requests_in_flight_link_through_the_upstream_hook() {
    for keepalive_upstream in [false, true] {
        let times: Vec<[u64; 12]> = (0..16u64)
            .map(|i| {
                // Overlapping, one upstream call at a time when kept alive.
                let base = MS + i * 200 * US;
                let mut t = [0u64; 12];
                t[0] = base;
                t[1] = base + 3 * US;
                t[2] = base + 60 * US;
                for (k, gap) in [(3, 3), (4, 20), (5, 3), (6, 30), (7, 3), (8, 10), (9, 3)] {
                    t[k] = t[k - 1] + gap * US;
                }
                t[10] = base + 500 * US;
                t[11] = t[10] + 3 * US;
                t
            })
            .collect();
        let mut ch = chain(&ChainOpts {
            requests: 16,
            times: Some(times),
            keepalive_upstream,
            nginx_hook: true,
            ..ChainOpts::default()
        });
        same_api_target(&mut ch);
        let out = run(&ch.events, cfg());
        let calls: Vec<&Span> = out
            .spans
            .iter()
            .filter(|s| s.pid == Pid(NGINX) && s.kind == SpanKind::Client)
            .collect();
        assert_eq!(calls.len(), 16);
        for s in &calls {
            assert_eq!(s.parent_source, ParentSource::Runtime, "{s:?}");
        }
        assert_eq!(out.counters.runtime_parent, 16);
        assert_eq!(out.counters.roots_ambiguous, 0);
        // Which request each links to: the chain's truth (its curl span's
        // trace), since the paths are the same.
        for h in &ch.hops {
            let c0 = out
                .spans
                .iter()
                .find(|s| s.pid == Pid(h.c0.0) && s.kind == SpanKind::Client);
            let c0 = c0.expect("curl's span");
            let s1 = out
                .spans
                .iter()
                .find(|s| {
                    s.pid == Pid(NGINX)
                        && s.kind == SpanKind::Server
                        && s.parent_span_id == Some(c0.span_id)
                })
                .expect("nginx's server span");
            let c1 = calls
                .iter()
                .find(|s| s.parent_span_id == Some(s1.span_id))
                .expect("one upstream call under each request");
            assert_eq!(c1.trace_id, c0.trace_id);
        }
    }
}

/// The hooked chain over TLS: every request and call is on the plaintext
/// layer of its socket ([`ConnId::LAYER_BIT`]), while the hook names the
/// sockets themselves (the request's, and the upstream one it opens). The
/// calls link to their requests all the same.
#[test]
fn upstream_hook_links_calls_over_tls_layers() {
    for keepalive_upstream in [false, true] {
        let mut ch = chain(&ChainOpts {
            requests: 4,
            keepalive_upstream,
            nginx_hook: true,
            ..ChainOpts::default()
        });
        same_api_target(&mut ch);
        let layer = |c: ConnId| ConnId(c.0 | ConnId::LAYER_BIT);
        for e in &mut ch.events {
            match e {
                Ev::Open(info) => info.conn = layer(info.conn),
                Ev::Msg(m) => m.conn = layer(m.conn),
                Ev::Close(c, _) => *c = layer(*c),
                _ => {}
            }
        }
        let out = run(&ch.events, cfg());
        let calls: Vec<&Span> = out
            .spans
            .iter()
            .filter(|s| s.pid == Pid(NGINX) && s.kind == SpanKind::Client)
            .collect();
        assert_eq!(calls.len(), 4);
        for s in &calls {
            assert_eq!(s.parent_source, ParentSource::Runtime, "{s:?}");
        }
        assert_eq!(out.counters.runtime_parent, 4);
        assert_eq!(out.counters.runtime_no_request, 0);
    }
}

/// A call the hooked thread makes outside its extents (a timer, a retry)
/// gets nothing from the hook, even with one request in flight.
#[test]
fn calls_outside_the_hooks_extents_are_not_linked_by_them() {
    let mut ch = chain(&ChainOpts {
        requests: 1,
        nginx_hook: true,
        keepalive_upstream: true,
        ..ChainOpts::default()
    });
    // Move the extent away from the call: it ended before the call.
    for e in &mut ch.events {
        if let Ev::Cause(_, _, t, CauseEvent::Leave) = e {
            *t -= 3 * US;
        }
    }
    ch.events.sort_by_key(Ev::time);
    for e in &mut ch.events {
        if let Ev::Msg(m) = e {
            if let MessageKind::Request(r) = &mut m.kind {
                if m.pid == Pid(NGINX) && m.side == Side::Outbound {
                    // Not a forward either.
                    r.target = "/poll".into();
                }
            }
        }
    }
    let out = run(&ch.events, cfg());
    assert_eq!(out.counters.runtime_parent, 0);
    assert_eq!(out.counters.runtime_causes, 0);
    let call = out
        .spans
        .iter()
        .find(|s| s.pid == Pid(NGINX) && s.kind == SpanKind::Client)
        .expect("nginx's call");
    assert_eq!(call.parent_span_id, None);
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
    assert_chain(&out, &ch, true);
    for h in &ch.hops {
        assert_eq!(out.get(&h.c1).parent_source, ParentSource::RequestId);
        assert_eq!(out.get(&h.c2).parent_source, ParentSource::RequestId);
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
    assert_chain(&out, &ch, true);
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
    assert_chain(&out, &ch, true);
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
    assert_chain(&out, &ch, true);
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
    assert_chain(&out, &ch, true);
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
        e.apply(&mut c);
        early.extend(c.poll(last));
    }
    // Everything happened within 1 ms; nothing is settled before the
    // window has passed (A's warm-up requests, from elsewhere, wait for
    // nothing).
    early.retain(|s| !s.attr_str("url.path").unwrap_or("").starts_with("/warm/"));
    assert!(early.is_empty(), "{early:#?}");
    let spans = c.poll(last + W);
    assert_eq!(spans.len(), 6);
    let trace = spans[0].trace_id;
    assert!(spans.iter().all(|s| s.trace_id == trace));
}

#[test]
fn spans_taken_in_parts_are_the_spans_one_poll_returns() {
    // Two windows of traffic with no poll between: everything becomes due
    // at once.
    let ch = chain(&ChainOpts {
        requests: 20,
        ..ChainOpts::default()
    });
    let mut whole = Correlator::with_seed(cfg(), 7);
    let mut parts = Correlator::with_seed(cfg(), 7);
    let mut got = Vec::new();
    let mut last = 0;
    for e in &ch.events {
        last = last.max(e.time());
        e.apply(&mut whole);
        e.apply(&mut parts);
        got.extend(parts.take_ready());
    }
    assert_eq!(parts.ready_len(), 0);
    let mut calls = 0;
    loop {
        let part = parts.poll_at_most(last + W, 3);
        // One decision emits a span and the descendants waiting on it (a
        // chain is 6 spans deep).
        assert!(part.len() < 3 + 6, "{}", part.len());
        calls += 1;
        let n = part.len();
        got.extend(part);
        if n < 3 {
            break;
        }
    }
    let all = whole.poll(last + W);
    assert!(
        calls > all.len() / 5,
        "{calls} calls for {} spans",
        all.len()
    );
    let key = |s: &Span| {
        (
            s.span_id,
            s.parent_span_id,
            s.trace_id,
            s.start_ns,
            s.end_ns,
        )
    };
    let mut a: Vec<_> = all.iter().map(key).collect();
    let mut b: Vec<_> = got.iter().map(key).collect();
    a.sort();
    b.sort();
    assert_eq!(a, b);
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

// ------------------------------------------------ losses and uniqueness

/// Two identical requests in flight at nginx (batch timing of
/// `identical_requests_in_flight_on_the_event_loop_are_not_guessed`), the
/// second one lost on its way in: the agent never saw nginx read it. Returns
/// the chain without that message, and when nginx read it.
fn identical_pair_second_lost() -> (Chain, u64) {
    let times = batches_of_8(2);
    let mut ch = chain(&ChainOpts {
        requests: 2,
        times: Some(times),
        ..ChainOpts::default()
    });
    same_api_target(&mut ch);
    let read = |e: &Ev| match e {
        Ev::Msg(m) => {
            m.pid == Pid(NGINX)
                && m.side == Side::Inbound
                && matches!(m.kind, MessageKind::Request(_))
        }
        _ => false,
    };
    let lost = ch
        .events
        .iter()
        .filter(|e| read(e))
        .nth(1)
        .expect("read")
        .clone();
    let Ev::Msg(m) = &lost else { unreachable!() };
    let at = m.start_ns;
    ch.events.retain(|e| e.time() != lost.time() || !read(e));
    (ch, at)
}

/// nginx's upstream call of hop `i` (its request was read by A on thread
/// `A_TID + i`), and the parent it should have: nginx's server span of the
/// same hop, if the agent saw it.
fn hop_call(out: &Out, i: u32) -> (&Span, Option<SpanId>) {
    let s2 = out
        .spans
        .iter()
        .find(|s| s.pid == Pid(A) && s.kind == SpanKind::Server && s.tid == Tid(A_TID + i))
        .expect("A's server span");
    let c1 = out
        .spans
        .iter()
        .find(|s| Some(s.span_id) == s2.parent_span_id)
        .expect("nginx's call, parent of A's span");
    let c0 = out
        .spans
        .iter()
        .find(|s| s.pid == Pid(CURL + i) && s.kind == SpanKind::Client)
        .expect("curl's span");
    let s1 = out
        .spans
        .iter()
        .find(|s| s.pid == Pid(NGINX) && s.parent_span_id == Some(c0.span_id))
        .map(|s| s.span_id);
    (c1, s1)
}

/// Time passes (a close of a connection never seen): decisions fall due.
fn tick(t: u64) -> Ev {
    Ev::Close(ConnId(u64::MAX), t)
}

/// No nginx call has a parent other than its own request.
fn assert_calls_right(out: &Out) {
    for i in 0..2 {
        let (c1, want) = hop_call(out, i);
        if let Some(p) = c1.parent_span_id {
            assert_eq!(Some(p), want, "call of hop {i}: {c1:?}");
        }
    }
}

#[test]
fn a_request_lost_on_its_way_in_never_makes_the_one_left_look_unique() {
    let (ch, lost_at) = identical_pair_second_lost();
    // Unreported, the loss makes the first request the only one in flight
    // that the second call repeats: the hazard this guards against.
    let blind = run(&ch.events, cfg());
    let (c1, own) = hop_call(&blind, 1);
    assert_eq!(own, None, "the second request is lost");
    assert!(c1.parent_span_id.is_some(), "linked to the first request");

    // Reported when it happens, for nginx or for an unknown process.
    for pid in [Some(Pid(NGINX)), None] {
        let mut events = ch.events.clone();
        events.push(Ev::Lost(pid, lost_at));
        events.sort_by_key(Ev::time);
        let out = run(&events, cfg());
        assert_calls_right(&out);
        assert_eq!(hop_call(&out, 1).0.parent_span_id, None);
        assert!(out.counters.unique_refused_loss >= 1, "{:?}", out.counters);
        assert_eq!(out.counters.inbound_losses, 1);
    }

    // Reported late (after the calls' decisions were due), while the
    // driver's inputs were not known complete: the decisions wait for it.
    let mut events = vec![Ev::Complete(0)];
    events.extend(ch.events.iter().cloned());
    let last = events.iter().map(Ev::time).max().unwrap_or(0);
    events.push(tick(last + W + 10 * MS));
    events.push(Ev::Lost(Some(Pid(NGINX)), lost_at));
    events.push(Ev::Complete(last));
    let out = run(&events, cfg());
    assert_calls_right(&out);
    assert_eq!(hop_call(&out, 1).0.parent_span_id, None);
    assert!(out.counters.unique_waits >= 1, "{:?}", out.counters);
    assert!(out.counters.unique_refused_loss >= 1, "{:?}", out.counters);
}

/// A call with the method and target of the request in flight but another
/// Host is not a forward: it is what a poller's `GET /config` to a backend
/// looks like while a client's `GET /config` is in flight. It stays a root.
#[test]
fn a_call_repeating_the_target_to_another_host_is_not_a_forward() {
    let mut ch = chain(&ChainOpts::default());
    for e in &mut ch.events {
        if let Ev::Msg(m) = e {
            if let MessageKind::Request(r) = &mut m.kind {
                if m.pid == Pid(NGINX) && m.side == Side::Outbound {
                    for h in r.headers.to_mut().iter_mut() {
                        if h.name.eq_ignore_ascii_case(b"host") {
                            *h = Header::owned("Host", "127.0.0.1:8001");
                        }
                    }
                }
            }
        }
    }
    let out = run(&ch.events, cfg());
    assert_eq!(out.counters.forwarded_parent, 0, "{:?}", out.counters);
    let calls: Vec<_> = out
        .spans
        .iter()
        .filter(|s| s.pid == Pid(NGINX) && s.kind == SpanKind::Client)
        .collect();
    assert_eq!(calls.len(), 30);
    assert!(
        calls.iter().all(|s| s.parent_span_id.is_none()),
        "{calls:#?}"
    );
}

/// Inputs known complete a little behind the clock: forwarding links every
/// call once they are, and none if they never are.
#[test]
fn forwarding_waits_for_complete_inputs() {
    let ch = chain(&ChainOpts::default());
    let mut lagging = Vec::new();
    for e in &ch.events {
        lagging.push(e.clone());
        lagging.push(Ev::Complete(e.time().saturating_sub(2 * MS)));
    }
    let last = ch.events.iter().map(Ev::time).max().unwrap_or(0);
    lagging.push(tick(last + W + 10 * MS));
    lagging.push(Ev::Complete(last));
    let out = run(&lagging, cfg());
    assert_chain(&out, &ch, true);
    assert_eq!(out.counters.forwarded_parent, 30);
    assert!(out.counters.unique_waits > 0);
    assert_eq!(out.counters.unique_refused_unconfirmed, 0);

    let mut stuck = vec![Ev::Complete(0)];
    stuck.extend(ch.events.iter().cloned());
    let out = run(&stuck, cfg());
    assert_chain(&out, &ch, false);
    assert_eq!(out.counters.forwarded_parent, 0);
    assert_eq!(out.counters.unique_refused_unconfirmed, 30);
}
