//! Golden replay: the spans decoded from recorded real traffic
//! (`tests/data/*.rec.gz`) must stay the same through every change of the
//! user-space pipeline. Spans are compared as stable JSON: ids are replaced
//! by the index of the span they name (so a change in the order ids are
//! drawn does not show), and spans are sorted by what they are.
//!
//! `GOLDEN_UPDATE=1 cargo test -p tracer --test golden_replay` rewrites the
//! golden files; say why in the commit.
use std::{collections::HashMap, io::Read, path::PathBuf};

use serde_json::{json, Value};
use tracer::replay::{records, Replay};

fn data(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/data")
        .join(name)
}

fn replay(recording: &str) -> Vec<correlate::Span> {
    let mut buf = Vec::new();
    flate2::read::GzDecoder::new(std::fs::File::open(data(recording)).expect(recording))
        .read_to_end(&mut buf)
        .expect("decompressing the recording");
    let mut spans = Vec::new();
    let mut r = Replay::new();
    for rec in records(&buf) {
        r.record(rec, &mut |s| spans.push(s));
    }
    r.finish(&mut |s| spans.push(s));
    spans
}

fn attr_json(v: correlate::AttrRef<'_>) -> Value {
    match v {
        correlate::AttrRef::Str(s) => json!(s),
        correlate::AttrRef::Int(i) => json!(i),
    }
}

/// The spans as stable JSON: sorted, ids replaced by span indexes (parent)
/// and trace indexes (the index of the first span of each trace).
fn stable(mut spans: Vec<correlate::Span>) -> Value {
    spans.sort_by(|a, b| {
        (
            a.start_ns,
            a.end_ns,
            a.pid,
            a.tid,
            a.kind == correlate::SpanKind::Server,
        )
            .cmp(&(
                b.start_ns,
                b.end_ns,
                b.pid,
                b.tid,
                b.kind == correlate::SpanKind::Server,
            ))
    });
    let index: HashMap<correlate::SpanId, usize> = spans
        .iter()
        .enumerate()
        .map(|(i, s)| (s.span_id, i))
        .collect();
    let mut traces: HashMap<correlate::TraceId, usize> = HashMap::new();
    let out: Vec<Value> = spans
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let trace = *traces.entry(s.trace_id).or_insert(i);
            let parent = match s.parent_span_id {
                None => Value::Null,
                Some(p) => match index.get(&p) {
                    Some(ix) => json!(ix),
                    None => json!(format!("external:{p}")),
                },
            };
            let mut attrs: Vec<(String, Value)> = s
                .attributes()
                .map(|(k, v)| (k.to_string(), attr_json(v)))
                .collect();
            attrs.sort_by(|a, b| a.0.cmp(&b.0));
            json!({
                "i": i,
                "trace": trace,
                "parent": parent,
                "source": format!("{:?}", s.parent_source),
                "kind": format!("{:?}", s.kind),
                "name": s.name(),
                "start_ns": s.start_ns,
                "end_ns": s.end_ns,
                "pid": s.pid.0,
                "tid": s.tid.0,
                "flags": s.trace_flags,
                "state": s.trace_state,
                "status": format!("{:?}", s.status),
                "attributes": attrs.into_iter().map(|(k, v)| json!([k, v])).collect::<Vec<_>>(),
            })
        })
        .collect();
    Value::Array(out)
}

fn check(recording: &str, golden: &str) {
    let got = stable(replay(recording));
    let path = data(golden);
    // One span per line: a diff shows which spans changed.
    let text: String = got
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.to_string() + "\n")
        .collect();
    if std::env::var("GOLDEN_UPDATE").as_deref() == Ok("1") {
        std::fs::write(&path, &text).unwrap();
        return;
    }
    let want = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (GOLDEN_UPDATE=1 writes it)", path.display()));
    if want != text {
        let w: Vec<Value> = want
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        let g = got.as_array().unwrap();
        let first = w.iter().zip(g).position(|(a, b)| a != b);
        panic!(
            "{recording}: spans differ from {golden}: {} golden, {} now; first difference at {:?}:\n golden: {}\n now:    {}",
            w.len(),
            g.len(),
            first,
            first.map(|i| w[i].to_string()).unwrap_or_default(),
            first.map(|i| g[i].to_string()).unwrap_or_default(),
        );
    }
}

#[test]
fn chain_recording_decodes_to_the_golden_spans() {
    check("chain.rec.gz", "chain.golden.jsonl");
}

/// HTTP/2 and gRPC (bench/record_grpc.sh): a grpcio client's 300 unary calls
/// on one channel (grpcio indexes `:path`: one byte per call after the
/// first), h2load multiplexing 8 streams per connection and curl against
/// nginx's h2c.
#[test]
fn grpc_recording_decodes_to_the_golden_spans() {
    check("grpc.rec.gz", "grpc.golden.jsonl");
}

#[test]
fn grpc_recording_spans_are_whole_and_linked() {
    let spans = replay("grpc.rec.gz");
    let attr = |s: &correlate::Span, k: &str| {
        s.attributes()
            .find(|(n, _)| *n == k)
            .map(|(_, v)| attr_json(v).to_string().trim_matches('"').to_string())
    };
    let grpc: Vec<&correlate::Span> = spans
        .iter()
        .filter(|s| attr(s, "rpc.system").as_deref() == Some("grpc"))
        .collect();
    let kind = |k| grpc.iter().filter(move |s| s.kind == k);
    assert_eq!(kind(correlate::SpanKind::Client).count(), 300);
    assert_eq!(kind(correlate::SpanKind::Server).count(), 300);
    for s in &grpc {
        assert_eq!(s.name(), "helloworld.Greeter/SayHello");
        assert_eq!(attr(s, "rpc.method").as_deref(), Some("SayHello"));
        assert_eq!(attr(s, "network.protocol.version").as_deref(), Some("2"));
        assert_eq!(attr(s, "tracer.headers_unknown"), None);
    }
    let not_found = grpc
        .iter()
        .filter(|s| attr(s, "rpc.grpc.status_code").as_deref() == Some("5"))
        .count();
    assert_eq!(not_found, 2, "the NOT_FOUND call, on both sides");
    // Every server span, gRPC and nginx's multiplexed h2c ones, is the
    // child of its client span at the other end (rule 3, per stream).
    let ids: HashMap<correlate::SpanId, &correlate::Span> =
        spans.iter().map(|s| (s.span_id, s)).collect();
    let servers: Vec<&correlate::Span> = spans
        .iter()
        .filter(|s| s.kind == correlate::SpanKind::Server)
        .collect();
    assert_eq!(servers.len(), 300 + 202);
    for s in servers {
        let p = s.parent_span_id.and_then(|p| ids.get(&p));
        let p = p.unwrap_or_else(|| panic!("server span without its client: {}", s.name()));
        assert_eq!(p.kind, correlate::SpanKind::Client);
        assert_eq!(p.trace_id, s.trace_id);
        assert_eq!(attr(p, "url.path"), attr(s, "url.path"));
    }
}
