//! Every source of send/receive calls the running kernel offers
//! (tracepoint, fentry, kprobe: `tracer check` lists them) yields the same
//! records for the same traffic: the calls of each socket API with their
//! bytes and threads, and the calls of a connection opened before the agent
//! started, lined up with their bytes, and the calls of a silenced
//! protocol (Redis) counted in its sockets' totals. On the host (6.18) only the
//! tracepoint is offered; the kernel matrix (scripts/kernel-matrix) runs
//! this under 6.12, which offers all three.
use std::{process::Command, time::Duration};

use serde_json::Value;
use tracer_e2e::{
    ev, nginx_keepalive_client, py_script, python, require_tool, root_test, run_ok, tracer_bin,
    Agent, Redis,
};

const SETTLE: Duration = Duration::from_millis(1500);
const SOURCES: [&str; 3] = ["tracepoint", "fentry", "kprobe"];

/// The sources `tracer check` says this kernel offers.
fn offered() -> Vec<String> {
    let out = run_ok(Command::new(tracer_bin()).arg("check"));
    let list = out
        .split("sources of calls offered: ")
        .nth(1)
        .unwrap_or_else(|| panic!("tracer check names no sources: {out}"));
    list.trim().split(", ").map(str::to_owned).collect()
}

/// What one source recorded of the same traffic, as lines that hold no
/// value that changes between runs (ports, pids, random payloads): each is
/// compared with what the traffic did.
fn observe(source: &str) -> Vec<String> {
    let (nginx, mut client, tuple) = nginx_keepalive_client(Duration::from_secs(30));
    let agent = Agent::start(&[
        "--capture-source",
        source,
        "--print",
        "events",
        "--output",
        "json",
    ]);
    assert!(
        agent_log_names(&agent, source),
        "the start-up log names another source than {source}"
    );
    client.send("go");
    let done: Value = serde_json::from_str(&client.line(Duration::from_secs(30))).unwrap();
    assert_eq!(done["statuses"].as_array().unwrap().len(), 3);
    let client_pid = u64::from(client.child.id());
    client.finish();
    let out = run_ok(Command::new(python()).arg(py_script("sockapi.py")));
    let cases: Vec<Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let events = agent.stop(SETTLE).json();

    let mut seen = Vec::new();
    // The connection opened before the agent: its calls, each with the
    // bytes it moved (found by the kernel's sequence numbers).
    let local = tuple["local"].as_str().unwrap();
    for e in events
        .iter()
        .filter(|e| ev::n(e, "pid") == client_pid && ev::s(e, "local") == local)
    {
        let data = ev::s(e, "data");
        let line = data.lines().next().unwrap_or("");
        seen.push(format!("keep-alive {} {line}", ev::s(e, "dir")));
    }
    let worker = u64::from(nginx.worker_pids()[0]);
    let nginx_recvs = events
        .iter()
        .filter(|e| {
            ev::n(e, "pid") == worker && ev::s(e, "dir") == "recv" && ev::s(e, "remote") == local
        })
        .count();
    seen.push(format!("nginx recvs on it: {nginx_recvs}"));
    // Each socket API: one send and one receive carrying the payload, on
    // the thread that made the call, with its byte count.
    for case in &cases {
        let payload = case["payload"].as_str().unwrap();
        let pid = case["pid"].as_u64().unwrap();
        for (dir, api, tid) in [
            ("send", ev::s(case, "send"), &case["send_tid"]),
            ("recv", ev::s(case, "recv"), &case["recv_tid"]),
        ] {
            let calls: Vec<&Value> = events
                .iter()
                .filter(|e| {
                    ev::n(e, "pid") == pid && ev::s(e, "dir") == dir && ev::s(e, "data") == payload
                })
                .collect();
            let right_thread = calls
                .iter()
                .all(|e| ev::n(e, "tid") == tid.as_u64().unwrap());
            let right_len = calls
                .iter()
                .all(|e| ev::n(e, "len") == payload.len() as u64);
            seen.push(format!(
                "{api} {dir}: calls={} thread={right_thread} bytes={right_len}",
                calls.len()
            ));
        }
    }
    seen
}

/// Calls on sockets of a protocol the agent does not parse, made after the
/// agent silenced them (with `--print events` nothing is silenced, hence
/// an agent of its own): counted one by one in the kernel, and per socket
/// in the totals each socket reports at its close.
fn silenced(source: &str) -> String {
    let agent = Agent::start(&["--capture-source", source, "--print", "none"]);
    // A protocol the agent does not parse: its sockets are silenced once
    // detected; the calls made after that are counted, per socket, and
    // reported in its totals at its close.
    let redis = Redis::start();
    run_ok(Command::new("redis-benchmark").args([
        "-p",
        &redis.port().to_string(),
        "-t",
        "set",
        "-n",
        "5000",
        "-c",
        "2",
        "-q",
    ]));
    drop(redis);
    let stopped = agent.stop(SETTLE);
    let counter = |name: &str| {
        stopped
            .counter(name)
            .unwrap_or_else(|| panic!("no counter {name} in {}", stopped.stderr))
    };
    let (in_kernel, in_totals) = (
        counter("kernel.silenced_calls"),
        counter("connections.silenced_calls"),
    );
    println!(
        "{source}: silenced calls {in_kernel} in the kernel's stat, {in_totals} in the sockets' totals"
    );
    format!(
        "silenced calls counted: {}, all in the sockets' totals: {}",
        in_kernel > 0,
        in_kernel == in_totals
    )
}

fn agent_log_names(agent: &Agent, source: &str) -> bool {
    let want = match source {
        "tracepoint" => "calls=tp_btf ",
        "fentry" => "calls=fexit ",
        _ => "calls=kprobe+kretprobe ",
    };
    agent.stderr_so_far().contains(want)
}

/// What every source must record of that traffic.
fn expected() -> Vec<String> {
    let mut e = Vec::new();
    for i in 0..3 {
        e.push(format!("keep-alive send GET /after-{i} HTTP/1.1"));
        e.push("keep-alive recv HTTP/1.1 200 OK".to_owned());
    }
    e.push("nginx recvs on it: 3".to_owned());
    for (send, recv) in [
        ("write", "read"),
        ("writev", "readv"),
        ("sendmsg", "recvmsg"),
        ("sendto", "recvfrom"),
        ("send", "recv"),
    ] {
        e.push(format!("{send} send: calls=1 thread=true bytes=true"));
        e.push(format!("{recv} recv: calls=1 thread=true bytes=true"));
    }
    e.push("silenced calls counted: true, all in the sockets' totals: true".to_owned());
    e
}

#[test]
fn every_offered_source_records_the_same_calls() {
    let Some(_g) = root_test("every_offered_source_records_the_same_calls") else {
        return;
    };
    require_tool("redis-benchmark");
    let offered = offered();
    // Left to choose, the agent takes the cheapest offered source and says
    // so (tp_btf on 6.12 and 6.18, fexit on 6.1).
    let auto = Agent::start(&["--print", "none"]);
    assert!(
        agent_log_names(&auto, &offered[0]),
        "without --capture-source the agent should use {}: {}",
        offered[0],
        auto.stderr_so_far()
    );
    drop(auto.stop(Duration::ZERO));
    let mut ran = 0;
    for source in SOURCES {
        if !offered.iter().any(|s| s == source) {
            eprintln!("SKIP source {source}: this kernel does not offer it (offered: {offered:?})");
            continue;
        }
        let mut seen = observe(source);
        seen.push(silenced(source));
        assert_eq!(seen, expected(), "source {source}");
        ran += 1;
    }
    assert!(ran > 0, "no source of calls was tested");
}
