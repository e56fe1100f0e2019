//! Semantic-convention attributes, names, status and redaction.

mod common;

use common::*;
use correlate::*;

const P: u32 = 50;

fn one(
    kind: SpanKind,
    r: Request<'static>,
    status: Response<'static>,
    cfg: Config,
) -> (Span, Counters) {
    let (local, remote, side_req, side_resp) = match kind {
        SpanKind::Server => (
            "10.0.0.5:8080",
            "192.0.2.1:41000",
            Side::Inbound,
            Side::Outbound,
        ),
        SpanKind::Client => (
            "10.0.0.5:41000",
            "198.51.100.7:9090",
            Side::Outbound,
            Side::Inbound,
        ),
    };
    let evs = vec![
        open(1, local, remote),
        m(1, side_req, P, P, 1, MS, None, MessageKind::Request(r)),
        m(
            1,
            side_resp,
            P,
            P,
            2,
            2 * MS,
            None,
            MessageKind::Response(status),
        ),
    ];
    let out = run(&evs, cfg);
    assert_eq!(out.spans.len(), 1);
    (out.spans[0].clone(), out.counters)
}

fn s(v: &str) -> AttrRef<'_> {
    AttrRef::Str(v)
}

fn i(v: i64) -> AttrRef<'static> {
    AttrRef::Int(v)
}

#[test]
fn server_span_attributes() {
    let r = req(
        "GET",
        "/users/123/profile?tab=posts&token=abc",
        &[
            ("Host", "shop.example:8443"),
            ("User-Agent", "curl/8.5.0"),
            ("X-Forwarded-For", "203.0.113.9, 10.0.0.1"),
        ],
    );
    let (span, _) = one(SpanKind::Server, r, resp(200, &[]), Config::default());
    assert_eq!(span.name(), "GET /users/{id}/profile");
    assert_eq!(span.kind, SpanKind::Server);
    assert_eq!(span.status, Status::Unset);
    let want: Vec<(&str, AttrRef)> = vec![
        ("http.request.method", s("GET")),
        ("url.path", s("/users/123/profile")),
        ("url.query", s("tab=REDACTED&token=REDACTED")),
        ("url.scheme", s("http")),
        ("network.protocol.version", s("1.1")),
        ("server.address", s("shop.example")),
        ("server.port", i(8443)),
        ("client.address", s("203.0.113.9")),
        ("network.peer.address", s("192.0.2.1")),
        ("network.peer.port", i(41000)),
        ("user_agent.original", s("curl/8.5.0")),
        ("http.response.status_code", i(200)),
    ];
    assert_eq!(span.attributes().collect::<Vec<_>>(), want);
}

#[test]
fn server_span_without_host_uses_the_local_address() {
    let (span, _) = one(
        SpanKind::Server,
        req("GET", "/", &[]),
        resp(204, &[]),
        Config::default(),
    );
    assert_eq!(span.attr_str("server.address"), Some("10.0.0.5"));
    assert_eq!(span.attr("server.port"), Some(i(8080)));
    assert_eq!(span.attr_str("client.address"), Some("192.0.2.1"));
    assert_eq!(span.name(), "GET /");
}

#[test]
fn client_span_attributes() {
    let r = req("POST", "/v1/orders?id=7", &[("Host", "orders.internal")]);
    let (span, _) = one(SpanKind::Client, r, resp(201, &[]), Config::default());
    assert_eq!(span.name(), "POST /v1/orders");
    assert_eq!(span.attr_str("server.address"), Some("orders.internal"));
    assert_eq!(span.attr("server.port"), Some(i(80)));
    assert_eq!(
        span.attr_str("url.full"),
        Some("http://orders.internal/v1/orders?id=REDACTED")
    );
    assert_eq!(span.attr_str("network.peer.address"), Some("198.51.100.7"));
    assert_eq!(span.attr("network.peer.port"), Some(i(9090)));
    assert!(span.attr("client.address").is_none());

    let (span, _) = one(
        SpanKind::Client,
        req("GET", "/x", &[]),
        resp(200, &[]),
        Config::default(),
    );
    assert_eq!(span.attr_str("server.address"), Some("198.51.100.7"));
    assert_eq!(span.attr("server.port"), Some(i(9090)));
    assert_eq!(
        span.attr_str("url.full"),
        Some("http://198.51.100.7:9090/x")
    );
}

#[test]
fn query_kept_raw_when_configured() {
    let cfg = Config {
        redact_query: false,
        ..Config::default()
    };
    let (span, _) = one(
        SpanKind::Server,
        req("GET", "/s?q=rust&page=2", &[]),
        resp(200, &[]),
        cfg,
    );
    assert_eq!(span.attr_str("url.query"), Some("q=rust&page=2"));
}

#[test]
fn secrets_never_reach_the_output() {
    let secrets = [
        "SECRET-AUTH",
        "SECRET-COOKIE",
        "SECRET-SETCOOKIE",
        "SECRET-QUERY",
        "SECRET-PROXY",
        "SECRET-USERINFO",
        "SECRET-APIKEY",
    ];
    let r = req(
        "GET",
        "http://user:SECRET-USERINFO@api.example/private?access_token=SECRET-QUERY",
        &[
            ("Authorization", "Bearer SECRET-AUTH"),
            ("Cookie", "session=SECRET-COOKIE"),
            ("Proxy-Authorization", "Basic SECRET-PROXY"),
            ("X-Api-Key", "SECRET-APIKEY"),
        ],
    );
    let rsp = resp(200, &[("Set-Cookie", "sid=SECRET-SETCOOKIE; HttpOnly")]);
    for kind in [SpanKind::Server, SpanKind::Client] {
        let (span, _) = one(kind, r.clone(), rsp.clone(), Config::default());
        let dump = format!("{span:?}");
        for secret in secrets {
            assert!(
                !dump.contains(secret),
                "{secret} leaked in {kind:?}: {dump}"
            );
        }
        assert_eq!(span.attr_str("server.address"), Some("api.example"));
        assert_eq!(span.attr_str("url.query"), Some("access_token=REDACTED"));
    }
}

#[test]
fn methods_are_normalized() {
    let cases = [
        ("GET", "GET", None, "GET /m"),
        ("PATCH", "PATCH", None, "PATCH /m"),
        ("get", "_OTHER", Some("get"), "HTTP /m"),
        ("PURGE", "_OTHER", Some("PURGE"), "HTTP /m"),
    ];
    for (method, norm, orig, name) in cases {
        let (span, _) = one(
            SpanKind::Server,
            req(method, "/m", &[]),
            resp(200, &[]),
            Config::default(),
        );
        assert_eq!(span.attr_str("http.request.method"), Some(norm), "{method}");
        assert_eq!(
            span.attr_str("http.request.method_original"),
            orig,
            "{method}"
        );
        assert_eq!(span.name(), name, "{method}");
    }
}

#[test]
fn names_template_identifiers() {
    let cases = [
        ("/users/42", "GET /users/{id}"),
        (
            "/orders/550e8400-e29b-41d4-a716-446655440000/items",
            "GET /orders/{id}/items",
        ),
        ("/objects/5f2b8c1e9a7d3f6011223344", "GET /objects/{id}"),
        ("/api/v2/health", "GET /api/v2/health"),
        ("/search?q=1", "GET /search"),
    ];
    for (target, name) in cases {
        let (span, _) = one(
            SpanKind::Server,
            req("GET", target, &[]),
            resp(200, &[]),
            Config::default(),
        );
        assert_eq!(span.name(), name);
    }
    let (span, _) = one(
        SpanKind::Client,
        req("CONNECT", "proxy.example:443", &[]),
        resp(200, &[]),
        Config::default(),
    );
    assert_eq!(span.name(), "CONNECT");
    assert_eq!(span.attr_str("server.address"), Some("proxy.example"));
    assert_eq!(span.attr("server.port"), Some(i(443)));
}

#[test]
fn status_table() {
    // (kind, status code, error?)
    let cases = [
        (SpanKind::Server, 200, false),
        (SpanKind::Server, 302, false),
        (SpanKind::Server, 404, false),
        (SpanKind::Server, 500, true),
        (SpanKind::Server, 503, true),
        (SpanKind::Client, 200, false),
        (SpanKind::Client, 404, true),
        (SpanKind::Client, 429, true),
        (SpanKind::Client, 502, true),
        (SpanKind::Server, 999, true),
        (SpanKind::Client, 42, true),
    ];
    for (kind, code, error) in cases {
        let (span, _) = one(
            kind,
            req("GET", "/", &[]),
            resp(code, &[]),
            Config::default(),
        );
        assert_eq!(span.status != Status::Unset, error, "{kind:?} {code}");
        assert_eq!(
            span.attr("http.response.status_code"),
            Some(i(i64::from(code)))
        );
        let et = span.attr_str("error.type").map(str::to_string);
        assert_eq!(et, error.then(|| code.to_string()), "{kind:?} {code}");
    }
}

#[test]
fn versions_and_scheme() {
    for (v, want) in [
        (HttpVersion::Http10, "1.0"),
        (HttpVersion::Http11, "1.1"),
        (HttpVersion::Http2, "2"),
    ] {
        let mut r = req("GET", "/", &[]);
        r.version = v;
        r.scheme = Scheme::Https;
        let (span, _) = one(SpanKind::Client, r, resp(200, &[]), Config::default());
        assert_eq!(span.attr_str("network.protocol.version"), Some(want));
        assert_eq!(span.attr_str("url.scheme"), Some("https"));
        assert_eq!(
            span.attr_str("url.full"),
            Some("https://198.51.100.7:9090/")
        );
    }
}

#[test]
fn grpc_calls() {
    let r = || {
        let mut r = req(
            "POST",
            "/helloworld.Greeter/SayHello",
            &[
                ("content-type", "application/grpc+proto"),
                (":authority", "greeter:50051"),
            ],
        );
        r.version = HttpVersion::Http2;
        r
    };
    // (kind, grpc-status, error?)
    let cases = [
        (SpanKind::Server, "0", false),
        (SpanKind::Server, "5", false),
        (SpanKind::Server, "14", true),
        (SpanKind::Client, "0", false),
        (SpanKind::Client, "5", true),
    ];
    for (kind, code, error) in cases {
        let rsp = Response {
            status: 200,
            version: HttpVersion::Http2,
            headers: vec![
                Header::owned("content-type", "application/grpc"),
                Header::owned("grpc-status", code),
            ]
            .into(),
            reset: false,
            grpc_messages: None,
            unknown: None,
        };
        let (span, _) = one(kind, r(), rsp, Config::default());
        assert_eq!(span.name(), "helloworld.Greeter/SayHello");
        assert_eq!(span.attr_str("rpc.system"), Some("grpc"));
        assert_eq!(span.attr_str("rpc.service"), Some("helloworld.Greeter"));
        assert_eq!(span.attr_str("rpc.method"), Some("SayHello"));
        assert_eq!(span.attr_str("server.address"), Some("greeter"));
        assert_eq!(span.attr("server.port"), Some(i(50051)));
        assert_eq!(
            span.attr("rpc.grpc.status_code"),
            Some(i(code.parse().unwrap()))
        );
        assert_eq!(span.status != Status::Unset, error, "{kind:?} {code}");
    }
    // Without grpc-status the HTTP status decides.
    let (span, _) = one(SpanKind::Server, r(), resp(503, &[]), Config::default());
    assert!(span.attr("rpc.grpc.status_code").is_none());
    assert_ne!(span.status, Status::Unset);
    // A stream reset before any grpc-status (a client's deadline or
    // cancel): the call failed for the client; the server's span says
    // nothing it did not see. With a status, the status decides.
    let reset = |status: u16, code: Option<&str>| {
        let mut h = vec![Header::owned("content-type", "application/grpc")];
        h.extend(code.map(|c| Header::owned("grpc-status", c)));
        Response {
            status,
            version: HttpVersion::Http2,
            headers: h.into(),
            reset: true,
            grpc_messages: None,
            unknown: None,
        }
    };
    for (kind, status, code, error) in [
        (SpanKind::Client, 0, None, true),
        (SpanKind::Client, 200, None, true),
        (SpanKind::Server, 0, None, false),
        (SpanKind::Client, 200, Some("0"), false),
        (SpanKind::Server, 200, Some("4"), true),
    ] {
        let (span, _) = one(kind, r(), reset(status, code), Config::default());
        assert_eq!(span.status != Status::Unset, error, "{kind:?} {code:?}");
        let et = span.attr_str("error.type");
        assert_eq!(
            et == Some("stream_reset"),
            error && code.is_none(),
            "{et:?}"
        );
    }
}

#[test]
fn grpc_message_counts_are_this_sides_and_losses_are_said() {
    let r = || {
        let mut r = req(
            "POST",
            "/calls.Calls/Bidi",
            &[("content-type", "application/grpc")],
        );
        r.version = HttpVersion::Http2;
        r
    };
    let rsp = |exact: bool, unknown: Option<&'static str>| {
        let mut h = vec![Header::owned("content-type", "application/grpc")];
        if unknown.is_none() {
            h.push(Header::owned("grpc-status", "0"));
        }
        Response {
            status: 200,
            version: HttpVersion::Http2,
            headers: h.into(),
            reset: false,
            grpc_messages: Some(GrpcMessages {
                by_client: 3,
                by_server: 7,
                exact,
            }),
            unknown,
        }
    };
    let (client, _) = one(SpanKind::Client, r(), rsp(true, None), Config::default());
    assert_eq!(client.attr("tracer.rpc.messages_sent"), Some(i(3)));
    assert_eq!(client.attr("tracer.rpc.messages_received"), Some(i(7)));
    assert_eq!(client.attr_str("tracer.rpc.messages_lower_bound"), None);
    assert_eq!(client.attr_str("tracer.response_headers_unknown"), None);
    let (server, _) = one(SpanKind::Server, r(), rsp(false, None), Config::default());
    assert_eq!(server.attr("tracer.rpc.messages_sent"), Some(i(7)));
    assert_eq!(server.attr("tracer.rpc.messages_received"), Some(i(3)));
    assert_eq!(
        server.attr_str("tracer.rpc.messages_lower_bound"),
        Some("true")
    );
    // Trailers lost: no status, no error guessed, and the span says why.
    for kind in [SpanKind::Client, SpanKind::Server] {
        let (s, _) = one(kind, r(), rsp(true, Some("sync_lost")), Config::default());
        assert_eq!(s.attr("rpc.grpc.status_code"), None);
        assert_eq!(s.status, Status::Unset);
        assert_eq!(
            s.attr_str("tracer.response_headers_unknown"),
            Some("sync_lost")
        );
    }
}

#[test]
fn an_http2_request_reset_before_any_response_failed_for_its_client() {
    let r = || {
        let mut r = req("GET", "/x", &[]);
        r.version = HttpVersion::Http2;
        r
    };
    let reset = Response {
        status: 0,
        version: HttpVersion::Http2,
        headers: Vec::new().into(),
        reset: true,
        grpc_messages: None,
        unknown: None,
    };
    let (c, _) = one(SpanKind::Client, r(), reset.clone(), Config::default());
    assert_eq!(c.attr_str("error.type"), Some("stream_reset"));
    assert_ne!(c.status, Status::Unset);
    // The server did not fail: its client gave up.
    let (s, _) = one(SpanKind::Server, r(), reset, Config::default());
    assert_eq!(s.attr_str("error.type"), None);
    assert_eq!(s.status, Status::Unset);
}

#[test]
fn long_values_are_clipped() {
    let ua = "é".repeat(2000);
    let path = format!("/{}", "a".repeat(5000));
    let (span, _) = one(
        SpanKind::Server,
        req("GET", &path, &[("User-Agent", &ua)]),
        resp(200, &[]),
        Config::default(),
    );
    assert!(span.attr_str("user_agent.original").unwrap().len() <= 1024);
    assert!(span.attr_str("url.path").unwrap().len() <= 1024);
    assert!(span.name().len() <= 256);
}

#[test]
fn forwarded_header_gives_client_address() {
    let r = req(
        "GET",
        "/",
        &[(
            "Forwarded",
            "for=\"[2001:db8::1]:4711\";proto=https, for=10.0.0.1",
        )],
    );
    let (span, _) = one(SpanKind::Server, r, resp(200, &[]), Config::default());
    assert_eq!(span.attr_str("client.address"), Some("2001:db8::1"));
}

#[test]
fn recycled_spans_leave_nothing_behind_in_the_next_ones() {
    // The same requests, one after the other on one connection, through a
    // correlator that gets every batch of spans back and one that does not:
    // the spans are the same (no attribute of an earlier span carried over).
    let targets = [
        (
            "GET",
            "/users/42?token=x&page=2",
            &[("user-agent", "curl/8")][..],
        ),
        ("POST", "/orders", &[][..]),
        (
            "PURGE",
            "/cache/a/b/c/d/e",
            &[("host", "example.com:8443")][..],
        ),
        ("GET", "/", &[][..]),
    ];
    let mut evs = vec![open(1, "10.0.0.5:8080", "192.0.2.1:41000")];
    for (i, (method, target, headers)) in targets.iter().cycle().take(40).enumerate() {
        let t = 10 * MS * (i as u64 + 1);
        let r = req(method, target, headers);
        let seq = 2 * i as u32 + 1;
        evs.push(m(
            1,
            Side::Inbound,
            P,
            P,
            seq,
            t,
            None,
            MessageKind::Request(r),
        ));
        let status = if i % 3 == 0 { 500 } else { 200 };
        let r = MessageKind::Response(resp(status, &[]));
        evs.push(m(1, Side::Outbound, P, P, seq + 1, t + MS, None, r));
    }
    let mut plain = Correlator::with_seed(Config::default(), 42);
    let mut recycling = Correlator::with_seed(Config::default(), 42);
    let (mut a, mut b) = (Vec::new(), Vec::new());
    for e in &evs {
        for (c, out, give_back) in [(&mut plain, &mut a, false), (&mut recycling, &mut b, true)] {
            e.apply(c);
            let spans = c.poll(e.time());
            out.extend(spans.iter().cloned());
            if give_back {
                c.recycle(spans);
            }
        }
    }
    let end = evs.last().map_or(0, Ev::time) + 1000 * MS;
    a.extend(plain.poll(end));
    let last = recycling.poll(end);
    b.extend(last.iter().cloned());
    assert_eq!(a.len(), 40);
    assert_eq!(a, b);
    recycling.recycle(last);
    assert!(
        recycling.span_bytes() > plain.span_bytes(),
        "the texts kept for reuse are counted with the records"
    );
}
