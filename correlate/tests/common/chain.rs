//! The acceptance chain: curl → nginx (reverse proxy, one worker thread,
//! event loop) → backend A (thread per request, calls B from the handler
//! thread) → backend B. All on this host over loopback.

use std::collections::HashSet;

use correlate::*;

use super::{at, lbl, req, resp, warm_up, Ev, Label, Out, Seen, Sim, MS, US};

/// curl k runs as pid `CURL + k`.
pub const CURL: u32 = 1_000;
/// The nginx worker (pid = tid: one thread).
pub const NGINX: u32 = 200;
/// Backend A; request k is handled on thread `A_TID + k`.
pub const A: u32 = 300;
/// First handler thread of A.
pub const A_TID: u32 = 30_000;
/// Backend B; request k is handled on thread `B_TID + k`.
pub const B: u32 = 400;
/// First handler thread of B.
pub const B_TID: u32 = 40_000;

/// Scenario knobs.
#[derive(Clone, Debug)]
pub struct ChainOpts {
    /// Requests made.
    pub requests: usize,
    /// Requests in flight together (structured timing only).
    pub concurrency: usize,
    /// curl sends `x-request-id`; nginx and A forward it.
    pub request_id: bool,
    /// curl sends `traceparent`; nginx forwards it (A does not).
    pub traceparent: bool,
    /// nginx keeps one upstream connection to A (sequential only).
    pub keepalive_upstream: bool,
    /// Per-request timelines (12 increasing instants), overriding the
    /// structured timing.
    pub times: Option<Vec<[u64; 12]>>,
    /// nginx's upstream hook reports its extents (and connects).
    pub nginx_hook: bool,
}

impl Default for ChainOpts {
    fn default() -> Self {
        ChainOpts {
            requests: 30,
            concurrency: 1,
            request_id: false,
            traceparent: false,
            keepalive_upstream: false,
            times: None,
            nginx_hook: false,
        }
    }
}

/// The labels of one request's six spans.
#[derive(Clone, Debug)]
pub struct Hop {
    /// curl's client span.
    pub c0: Label,
    /// nginx's server span.
    pub s1: Label,
    /// nginx's upstream client span.
    pub c1: Label,
    /// A's server span.
    pub s2: Label,
    /// A's client span to B.
    pub c2: Label,
    /// B's server span.
    pub s3: Label,
    /// The propagated (trace id, parent span id), when curl sent one.
    pub header: Option<(String, String)>,
}

/// Generated scenario. Before the chain, A serves the [`warm_up`]
/// requests (from a client elsewhere): the correlator knows it serves one
/// request per thread, so rule 4 links its calls.
pub struct Chain {
    /// Events in the order they happened.
    pub events: Vec<Ev>,
    /// Per request.
    pub hops: Vec<Hop>,
}

/// Structured timing: batches of `conc` requests; inside a batch nginx reads
/// every request before it writes any upstream request.
pub fn structured_times(i: usize, conc: usize) -> [u64; 12] {
    let conc = conc.max(1) as u64;
    let i = i as u64;
    let (b, j) = (i / conc, i % conc);
    let base = MS + b * 10 * MS + j * 10 * US;
    let p2 = MS + b * 10 * MS + conc * 10 * US + 50 * US + j * 10 * US;
    [
        base,
        base + 3 * US,
        p2,
        p2 + 3 * US,
        p2 + 23 * US,
        p2 + 26 * US,
        p2 + 56 * US,
        p2 + 59 * US,
        p2 + 69 * US,
        p2 + 72 * US,
        p2 + 77 * US,
        p2 + 80 * US,
    ]
}

/// Random-ish timing from gaps: `start` and 11 gaps (each ≥ 1 µs); every
/// instant of request `i` is ≡ i (mod 1000) so that no two requests' events
/// share a nanosecond.
pub fn times_from_gaps(i: usize, start_us: u64, gaps_us: &[u64; 11]) -> [u64; 12] {
    let mut t = [0u64; 12];
    t[0] = MS + start_us * US + i as u64;
    for k in 1..12 {
        t[k] = t[k - 1] + gaps_us[k - 1].max(1) * US;
    }
    t
}

fn hexid(i: usize, salt: u64, bytes: usize) -> String {
    let v = (i as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ salt;
    let s = format!("{v:016x}{:016x}", v.rotate_left(17) | 1);
    s[..bytes * 2].to_string()
}

/// Build the scenario.
pub fn chain(o: &ChainOpts) -> Chain {
    let mut sim = Sim::new(7);
    let mut hops = Vec::new();
    let mut upstream = None;
    // Within the first half millisecond, before any request of the chain
    // (which starts at 1 ms).
    for (k, thread) in warm_up() {
        let t = 10 * US + k * 50 * US;
        let tid = A_TID - 1 - thread;
        let mut c = sim.connect("192.0.2.9", "127.0.0.1:8001", Seen::ServerOnly);
        let r = req("GET", &format!("/warm/{k}"), &[("Host", "a")]);
        sim.request(&mut c, at(t, 1, 1), at(t, A, tid), &r);
        sim.response(
            &mut c,
            at(t + 20 * US, A, tid),
            at(t + 20 * US, 1, 1),
            &resp(200, &[]),
        );
        sim.close(&c, t + 30 * US);
    }
    for i in 0..o.requests {
        let t = match &o.times {
            Some(ts) => ts[i],
            None => structured_times(i, o.concurrency),
        };
        let curl = CURL + i as u32;
        let (a_tid, b_tid) = (A_TID + i as u32, B_TID + i as u32);
        let path = format!("/api/{i}");
        let bpath = format!("/b/{i}");
        let rid = format!("rid-{i}");
        let header = o
            .traceparent
            .then(|| (hexid(i, 0xabcd, 16), hexid(i, 0x1234, 8)));
        let tp = header
            .as_ref()
            .map(|(t, p)| format!("00-{t}-{p}-01"))
            .unwrap_or_default();

        let mut h0 = vec![
            ("Host", "localhost:8080"),
            ("User-Agent", "curl/8.5.0"),
            ("Accept", "*/*"),
        ];
        // nginx passing the client's Host on (`proxy_set_header Host
        // $http_host`), as a reverse proxy whose hops link by forwarding.
        let mut h1 = vec![
            ("Host", "localhost:8080"),
            ("Connection", "close"),
            ("User-Agent", "curl/8.5.0"),
        ];
        let mut h2 = vec![
            ("Host", "127.0.0.1:8002"),
            ("User-Agent", "Python-urllib/3.12"),
        ];
        if o.request_id {
            h0.push(("X-Request-Id", &rid));
            h1.push(("X-Request-Id", &rid));
            h2.push(("X-Request-Id", &rid));
        }
        if o.traceparent {
            h0.push(("traceparent", &tp));
            h1.push(("traceparent", &tp));
        }
        let r0 = req("GET", &path, &h0);
        let r1 = req("GET", &path, &h1);
        let r2 = req("GET", &bpath, &h2);
        let ok = resp(200, &[("Content-Type", "application/json")]);

        let mut c0 = sim.connect("127.0.0.1", "127.0.0.1:8080", Seen::Both);
        sim.request(&mut c0, at(t[0], curl, curl), at(t[1], NGINX, NGINX), &r0);
        let mut c1 = if o.keepalive_upstream {
            upstream
                .get_or_insert_with(|| sim.connect("127.0.0.1", "127.0.0.1:8001", Seen::Both))
                .clone()
        } else {
            sim.connect("127.0.0.1", "127.0.0.1:8001", Seen::Both)
        };
        if o.nginx_hook {
            let (p, th) = (Pid(NGINX), Tid(NGINX));
            let enter = CauseEvent::Enter { conn: c0.server };
            sim.events.push(Ev::Cause(p, th, t[2] - 2 * US, enter));
            if o.keepalive_upstream {
                // The kept-alive connection is written inside the call.
                sim.events
                    .push(Ev::Cause(p, th, t[2] + US, CauseEvent::Leave));
            } else {
                // A new connection: connected inside, written once up.
                let connect = CauseEvent::Connect {
                    conn: c1.client,
                    cause: c0.server,
                    since: None,
                };
                sim.events.push(Ev::Cause(p, th, t[2] - US, connect));
                sim.events
                    .push(Ev::Cause(p, th, t[2] - US / 2, CauseEvent::Leave));
            }
        }
        sim.request(&mut c1, at(t[2], NGINX, NGINX), at(t[3], A, a_tid), &r1);
        let mut c2 = sim.connect("127.0.0.1", "127.0.0.1:8002", Seen::Both);
        sim.request(&mut c2, at(t[4], A, a_tid), at(t[5], B, b_tid), &r2);
        sim.response(&mut c2, at(t[6], B, b_tid), at(t[7], A, a_tid), &ok);
        sim.close(&c2, t[7] + 1);
        sim.response(&mut c1, at(t[8], A, a_tid), at(t[9], NGINX, NGINX), &ok);
        if o.keepalive_upstream {
            upstream = Some(c1);
        } else {
            sim.close(&c1, t[9] + 1);
        }
        sim.response(&mut c0, at(t[10], NGINX, NGINX), at(t[11], curl, curl), &ok);
        sim.close(&c0, t[11] + 1);

        hops.push(Hop {
            c0: lbl(curl, SpanKind::Client, &path),
            s1: lbl(NGINX, SpanKind::Server, &path),
            c1: lbl(NGINX, SpanKind::Client, &path),
            s2: lbl(A, SpanKind::Server, &path),
            c2: lbl(A, SpanKind::Client, &bpath),
            s3: lbl(B, SpanKind::Server, &bpath),
            header,
        });
    }
    Chain {
        events: sim.sorted(),
        hops,
    }
}

/// Every span's true parent label (None: a root or the header's span).
pub fn truth(hops: &[Hop]) -> Vec<(Label, Option<Label>)> {
    let mut v = Vec::new();
    for h in hops {
        v.push((h.c0.clone(), None));
        v.push((h.s1.clone(), Some(h.c0.clone())));
        v.push((h.c1.clone(), Some(h.s1.clone())));
        v.push((h.s2.clone(), Some(h.c1.clone())));
        v.push((h.c2.clone(), Some(h.s2.clone())));
        v.push((h.s3.clone(), Some(h.c2.clone())));
    }
    v
}

/// No span has a parent of ours other than its true parent; spans with a
/// parent of ours share its trace; header parents are the propagated ones.
pub fn assert_no_wrong_parent(out: &Out, hops: &[Hop]) {
    let truth = truth(hops);
    let headers: HashSet<String> = hops
        .iter()
        .filter_map(|h| h.header.as_ref().map(|(_, p)| p.clone()))
        .collect();
    for (l, want) in &truth {
        if !out.has(l) {
            continue;
        }
        let s = out.get(l);
        let Some(p) = s.parent_span_id else {
            continue;
        };
        match out.label_of(p) {
            Some(got) => {
                assert_eq!(
                    Some(&got),
                    want.as_ref(),
                    "wrong parent for {l:?} ({:?})",
                    s.parent_source
                );
                assert_eq!(s.trace_id, out.get(&got).trace_id, "trace of {l:?}");
            }
            None => assert!(
                headers.contains(&p.to_string()),
                "{l:?} has an unknown parent {p} ({:?})",
                s.parent_source
            ),
        }
    }
}

/// The full check: all spans present, every link that must be made is
/// made, none is wrong. `c1_linked`: whether nginx's upstream span must
/// have nginx's server span as parent.
pub fn assert_chain(out: &Out, ch: &Chain, c1_linked: bool) {
    let hops = &ch.hops;
    assert_eq!(
        out.spans.len(),
        hops.len() * 6 + warm_up().count(),
        "span count"
    );
    out.assert_unique_ids();
    assert_no_wrong_parent(out, hops);
    for h in hops {
        out.assert_parent(&h.s1, &h.c0);
        out.assert_parent(&h.s2, &h.c1);
        out.assert_parent(&h.c2, &h.s2);
        out.assert_parent(&h.s3, &h.c2);
        if c1_linked {
            out.assert_parent(&h.c1, &h.s1);
        }
        let c0 = out.get(&h.c0);
        match &h.header {
            Some((trace, parent)) => {
                assert_eq!(c0.trace_id.to_string(), *trace);
                assert_eq!(
                    c0.parent_span_id.map(|p| p.to_string()).as_ref(),
                    Some(parent)
                );
                for l in [&h.s1, &h.c1, &h.s2, &h.c2, &h.s3] {
                    assert_eq!(out.get(l).trace_id.to_string(), *trace, "{l:?}");
                }
            }
            None => assert_eq!(c0.parent_span_id, None),
        }
    }
}

/// Distinct trace ids among the spans of the chain (A's warm-up left out).
pub fn trace_count(out: &Out) -> usize {
    out.spans
        .iter()
        .filter(|s| {
            !s.attr_str("url.path")
                .is_some_and(|p| p.starts_with("/warm/"))
        })
        .map(|s| s.trace_id)
        .collect::<HashSet<_>>()
        .len()
}
