//! The agent's own metrics (`--metrics-addr`), scraped during real traffic
//! and parsed by the Prometheus client library's parser.
use std::{process::Command, time::Duration};

use serde_json::Value;
use tracer_e2e::*;

/// Scrapes `port` and returns {sample name: {labels: value}}.
fn scrape(port: u16) -> Value {
    let out = run_ok(
        Command::new(python())
            .arg(py_script("scrape_metrics.py"))
            .arg(format!("http://127.0.0.1:{port}/metrics")),
    );
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("scrape output ({e}): {out}"))
}

/// The unlabelled value of a sample (0 when absent).
fn value(m: &Value, sample: &str) -> f64 {
    m[sample][""].as_f64().unwrap_or(0.0)
}

/// One request; its status is not what these tests check.
fn curl(port: u16, path: &str) {
    curl_status(&format!("http://127.0.0.1:{port}{path}"), &[], &[]);
}

#[test]
fn counters_move_with_traffic_and_parse_as_prometheus_text() {
    let Some(_guard) = root_test("counters_move_with_traffic_and_parse_as_prometheus_text") else {
        return;
    };
    require_tool("curl");
    let nginx = Nginx::start("server { listen 127.0.0.1:{port}; root {root}; }");
    std::fs::write(nginx.root().join("m"), "metrics\n").unwrap();
    let receiver = Receiver::start(Otlp::Http);
    let mport = free_port();
    let mut args = receiver.agent_args();
    args.extend(["--metrics-addr".into(), mport.to_string()]);
    args.extend(["--profile-hz".into(), "0".into()]);
    let agent = Agent::start(&args);
    wait_port(mport, Duration::from_secs(10));

    let before = scrape(mport);
    for i in 0..20 {
        curl(nginx.port, &format!("/m?i={i}"));
    }
    receiver.wait_for(Duration::from_secs(10), |s| s.len() >= 40);
    // Spans are counted once the correlator settles them (a window later).
    std::thread::sleep(Duration::from_millis(500));
    let after = scrape(mport);

    for sample in [
        "tracer_reader_records_total",
        "tracer_http_messages_total",
        "tracer_correlation_spans_emitted_total",
        "tracer_streams_bytes_captured_total",
    ] {
        assert!(
            value(&after, sample) > value(&before, sample),
            "{sample} did not move: {} -> {}",
            value(&before, sample),
            value(&after, sample)
        );
    }
    assert!(value(&after, "tracer_correlation_spans_emitted_total") >= 40.0);
    // The export worker's counters, labelled with their destination.
    let exported = |m: &Value| {
        m["tracer_export_exported_total"]["destination=otlp"]
            .as_f64()
            .unwrap_or(0.0)
    };
    assert!(
        exported(&after) > exported(&before),
        "spans exported did not move: {} -> {}",
        exported(&before),
        exported(&after)
    );
    assert!(value(&after, "tracer_agent_resident_bytes") > 1e6);
    // Every thread (reader, export, metrics) runs at the default --nice:
    // preferred over the traced services, so it keeps up with the capture.
    let nices = thread_nices(agent.pid());
    assert!(nices.len() >= 2, "{nices:?}");
    assert!(nices.iter().all(|&(_, n)| n == -10), "{nices:?}");
    assert!(value(&after, "tracer_agent_cpu_seconds_total") > 0.0);
    // Drops are one family with a label per reason, all present.
    let drops = after["tracer_kernel_drops_total"]
        .as_object()
        .expect("kernel drops family");
    assert!(drops.contains_key("reason=ring_full_segment"), "{drops:?}");
    // Anything but GET /metrics is not found.
    assert_eq!(
        curl_status(&format!("http://127.0.0.1:{mport}/nope"), &[], &[]),
        404
    );
    let out = agent.stop(Duration::from_millis(300));
    assert!(
        out.stderr.contains("tracer: counters at exit"),
        "{}",
        out.stderr
    );
}

#[test]
fn a_forced_drop_shows_up_under_its_reason() {
    let Some(_guard) = root_test("a_forced_drop_shows_up_under_its_reason") else {
        return;
    };
    require_tool("curl");
    let nginx = Nginx::start("server { listen 127.0.0.1:{port}; root {root}; }");
    // 256 KiB responses into the smallest lanes while the agent is stopped
    // (SIGSTOP: what a stalled agent looks like to the kernel): the packet
    // records cannot all fit. No spans, so no body is skipped.
    std::fs::write(nginx.root().join("big"), vec![b'x'; 256 << 10]).unwrap();
    let mport = free_port();
    let agent = Agent::start(&[
        "--print",
        "none",
        "--no-spans",
        "--profile-hz",
        "0",
        "--snap-len",
        "4096",
        "--ring-buffer-size",
        "4096",
        "--metrics-addr",
        &mport.to_string(),
    ]);
    wait_port(mport, Duration::from_secs(10));
    let signal = |sig: &str| run_ok(Command::new("kill").args([sig, &agent.pid().to_string()]));
    signal("-STOP");
    for _ in 0..20 {
        curl(nginx.port, "/big");
    }
    signal("-CONT");
    let m = scrape(mport);
    let drops = &m["tracer_kernel_drops_total"];
    let segment = drops["reason=ring_full_segment"].as_f64().unwrap_or(0.0);
    assert!(segment > 0.0, "no ring_full_segment drop counted: {drops}");
    let out = agent.stop(Duration::ZERO);
    assert!(
        out.stderr.contains("kernel.drops{ring_full_segment}="),
        "the exit summary calls the drop out: {}",
        out.stderr
    );
}
