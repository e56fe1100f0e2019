//! What the TLS tests share: certificates made with the openssl CLI, the
//! check that a request's client and server spans are https and linked,
//! and what bpftool says is loaded and attached.
use std::{path::Path, process::Command};

use serde_json::Value;

use crate::{
    require_tool, run_ok,
    span::{attr, f, res},
    Receiver,
};

/// A self-signed certificate for localhost / 127.0.0.1 in `dir`: (cert,
/// key).
pub fn certificate(dir: &Path) -> (String, String) {
    require_tool("openssl");
    let cert = dir.join("cert.pem").display().to_string();
    let key = dir.join("key.pem").display().to_string();
    run_ok(Command::new("openssl").args([
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "1",
        "-subj",
        "/CN=localhost",
        "-addext",
        "subjectAltName=DNS:localhost,IP:127.0.0.1",
        "-keyout",
        &key,
        "-out",
        &cert,
    ]));
    (cert, key)
}

/// curl (certificate not checked) with `extra` flags; the answer must be 200.
pub fn curl_ok(url: &str, extra: &[&str]) {
    let code = run_ok(
        Command::new("curl")
            .args(["-sk", "-o", "/dev/null", "-w", "%{http_code}"])
            .args(extra)
            .arg(url),
    );
    assert_eq!(code.trim(), "200", "curl {url}");
}

/// wget (GnuTLS; certificate not checked), one process per URL; it exits
/// non-zero unless the answer is a success.
pub fn wget_ok(url: &str) {
    run_ok(Command::new("wget").args(["-q", "--no-check-certificate", "-O", "/dev/null", url]));
}

/// `prefix0` .. `prefix{n-1}`: one distinct path per request.
pub fn paths(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}{i}")).collect()
}

/// Waits (up to 30 s) until the receiver holds `n` spans whose path starts
/// with `prefix`.
pub fn wait_for_paths(receiver: &Receiver, prefix: &str, n: usize) {
    receiver.wait_for(std::time::Duration::from_secs(30), |s| {
        s.iter()
            .filter(|s| attr(s, "url.path").starts_with(prefix))
            .count()
            >= n
    });
}

/// The one span of `kind` among `spans` for `path`.
fn one_of<'a>(spans: &'a [Value], path: &str, kind: &str, stderr: &str) -> &'a Value {
    let v: Vec<&Value> = spans
        .iter()
        .filter(|s| attr(s, "url.path") == path && f(s, "kind") == kind)
        .collect();
    assert_eq!(
        v.len(),
        1,
        "one {kind} span for {path}: {v:#?}\nagent:\n{stderr}"
    );
    v[0]
}

/// The (client, server) spans of a GET of `path`, both https with status
/// 200 and HTTP `version`, of the services `client` and `server` (name
/// prefixes): checked, and returned.
fn https_pair<'a>(
    spans: &'a [Value],
    path: &str,
    (client, server): (&str, &str),
    version: &str,
    stderr: &str,
) -> (&'a Value, &'a Value) {
    let c = one_of(spans, path, "CLIENT", stderr);
    let s = one_of(spans, path, "SERVER", stderr);
    for span in [c, s] {
        assert_eq!(attr(span, "url.scheme"), "https", "{span:#?}");
        assert_eq!(attr(span, "http.response.status_code"), "200", "{span:#?}");
        assert_eq!(attr(span, "http.request.method"), "GET", "{span:#?}");
        assert_eq!(attr(span, "network.protocol.version"), version, "{span:#?}");
    }
    assert!(res(c, "service.name").starts_with(client), "{c:#?}");
    assert!(res(s, "service.name").starts_with(server), "{s:#?}");
    (c, s)
}

/// A GET of `path` from `client` to `server` over HTTP `version`: both
/// spans https, in one trace, the server's parent the client.
pub fn assert_https_linked(
    spans: &[Value],
    path: &str,
    peers: (&str, &str),
    version: &str,
    stderr: &str,
) {
    let (c, s) = https_pair(spans, path, peers, version, stderr);
    assert_eq!(
        f(s, "trace_id"),
        f(c, "trace_id"),
        "one trace: {c:#?} {s:#?}\nagent:\n{stderr}"
    );
    assert_eq!(
        f(s, "parent_span_id"),
        f(c, "span_id"),
        "server's parent is the client: {c:#?} {s:#?}\nagent:\n{stderr}"
    );
}

/// `field` of every object `bpftool -j WHAT show` lists.
pub fn bpftool_ids(what: &str, field: &str) -> Vec<u64> {
    bpftool_list(what)
        .iter()
        .filter_map(|x| x[field].as_u64())
        .collect()
}

fn bpftool_list(what: &str) -> Vec<Value> {
    let out = run_ok(Command::new("bpftool").args(["-j", what, "show"]));
    let v: Value = serde_json::from_str(&out).unwrap_or(Value::Array(vec![]));
    v.as_array().cloned().unwrap_or_default()
}

/// Ids of the programs attached through a link or a perf event (uprobes).
pub fn bpftool_attached() -> Vec<u64> {
    bpftool_ids("link", "prog_id")
        .into_iter()
        .chain(bpftool_ids("perf", "prog_id"))
        .collect()
}

/// Names of the programs `ids`, in their order ("" for one not loaded).
pub fn bpftool_names(ids: &[u64]) -> Vec<String> {
    let all = bpftool_list("prog");
    ids.iter()
        .map(|id| {
            all.iter()
                .find(|p| p["id"].as_u64() == Some(*id))
                .and_then(|p| p["name"].as_str())
                .unwrap_or("")
                .to_string()
        })
        .collect()
}
