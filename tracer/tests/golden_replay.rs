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
