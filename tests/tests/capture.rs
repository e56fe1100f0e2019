//! Kernel capture against real software: nginx, curl and Python's socket API.
use std::{
    collections::{HashMap, HashSet},
    process::Command,
    time::Duration,
};

use serde_json::Value;
use tracer_e2e::{
    ev, free_port, nginx_keepalive_client, py_script, python, require_tool, root_test, run_ok,
    tempdir::TempDir, Agent, Listening, Nginx, Spawned,
};

const SETTLE: Duration = Duration::from_millis(800);

fn events_of(events: &[Value], pid: u32) -> Vec<&Value> {
    events
        .iter()
        .filter(|e| ev::n(e, "pid") == pid as u64)
        .collect()
}

#[test]
fn nginx_and_curl_fifty_paths() {
    let Some(_g) = root_test("nginx_and_curl_fifty_paths") else {
        return;
    };
    require_tool("curl");
    let nginx = Nginx::start("server { listen 127.0.0.1:{port}; root {root}; }");
    for i in 0..50 {
        std::fs::write(
            nginx.root().join(format!("path-{i}")),
            format!("body of {i}\n"),
        )
        .unwrap();
    }
    let port = nginx.port.to_string();
    let agent = Agent::start(&["--print", "events", "--output", "json", "--port", &port]);
    let mut curls = Vec::new();
    for i in 0..50 {
        let url = format!("http://127.0.0.1:{}/path-{i}", nginx.port);
        let child = Command::new("curl")
            .args(["-sf", "-o", "/dev/null", &url])
            .spawn()
            .unwrap();
        let pid = child.id();
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "curl {url} failed");
        curls.push(pid);
    }
    let out = agent.stop(SETTLE);
    let events = out.json();
    let workers = nginx.worker_pids();
    assert_eq!(workers.len(), 1, "one nginx worker");
    let worker = workers[0];

    let nginx_ev = events_of(&events, worker);
    let mut nginx_recv_port: HashMap<String, u16> = HashMap::new();
    let mut nginx_sends_200 = 0;
    for e in &nginx_ev {
        assert_eq!(ev::n(e, "tid"), worker as u64, "nginx is single-threaded");
        assert_eq!(ev::port(e, "local"), nginx.port);
        match ev::s(e, "dir") {
            "recv" => {
                let first = ev::s(e, "first_line");
                let path = first
                    .strip_prefix("GET /")
                    .and_then(|r| r.strip_suffix(" HTTP/1.1"));
                let path = path.unwrap_or_else(|| panic!("nginx received {first:?}"));
                assert!(ev::s(e, "data").starts_with(&format!("GET /{path} HTTP/1.1\r\n")));
                nginx_recv_port.insert(path.to_owned(), ev::port(e, "remote"));
            }
            "send" if ev::s(e, "data").starts_with("HTTP/1.1 200") => nginx_sends_200 += 1,
            _ => {}
        }
    }
    assert_eq!(
        nginx_recv_port.len(),
        50,
        "nginx receives of distinct paths"
    );
    assert_eq!(nginx_sends_200, 50, "nginx sends starting HTTP/1.1 200");

    for (i, pid) in curls.iter().enumerate() {
        let mine = events_of(&events, *pid);
        let path = format!("path-{i}");
        let sends: Vec<_> = mine.iter().filter(|e| ev::s(e, "dir") == "send").collect();
        let recvs: Vec<_> = mine.iter().filter(|e| ev::s(e, "dir") == "recv").collect();
        assert_eq!(sends.len(), 1, "curl {i} sends: {mine:?}");
        assert!(ev::s(sends[0], "data").starts_with(&format!("GET /{path} HTTP/1.1\r\n")));
        assert!(!recvs.is_empty() && ev::s(recvs[0], "data").starts_with("HTTP/1.1 200"));
        for e in &mine {
            assert_eq!(
                ev::n(e, "tid"),
                *pid as u64,
                "curl's calls run on its main thread"
            );
            assert_eq!(ev::s(e, "comm"), "curl");
            assert_eq!(ev::port(e, "remote"), nginx.port);
        }
        // The two ends of each connection agree on the 4-tuple.
        assert_eq!(
            nginx_recv_port[&path],
            ev::port(sends[0], "local"),
            "ports of {path}"
        );
    }
    assert_eq!(out.code, Some(0), "agent exit: {}", out.stderr);
}

#[test]
fn sendfile_body_is_counted_as_truncated_not_lost() {
    let Some(_g) = root_test("sendfile_body_is_counted_as_truncated_not_lost") else {
        return;
    };
    require_tool("curl");
    let nginx = Nginx::start("sendfile on; server { listen 127.0.0.1:{port}; root {root}; }");
    let size = 1 << 20;
    let body: Vec<u8> = (0..size).map(|i| (i % 251) as u8).collect();
    std::fs::write(nginx.root().join("big.bin"), &body).unwrap();
    let port = nginx.port.to_string();
    let agent = Agent::start(&["--print", "events", "--output", "json", "--port", &port]);
    let headers = nginx.dir.path().join("headers.txt");
    let url = format!("http://127.0.0.1:{}/big.bin", nginx.port);
    let saved = nginx.dir.path().join("got.bin");
    run_ok(
        Command::new("curl")
            .args(["-sf", "-D"])
            .arg(&headers)
            .arg("-o")
            .arg(&saved)
            .arg(&url),
    );
    assert_eq!(std::fs::read(&saved).unwrap(), body);
    let header_len = std::fs::read(&headers).unwrap().len() as u64;
    let out = agent.stop(SETTLE);
    let events = out.json();
    let worker = nginx.worker_pids()[0];
    let sends: Vec<_> = events_of(&events, worker)
        .into_iter()
        .filter(|e| ev::s(e, "dir") == "send")
        .collect();
    assert!(
        ev::s(sends[0], "first_line").starts_with("HTTP/1.1 200"),
        "{:?}",
        sends[0]
    );
    let total: u64 = sends.iter().map(|e| ev::n(e, "len")).sum();
    assert_eq!(
        total,
        header_len + size as u64,
        "stream bytes = headers + file"
    );
    let captured: u64 = sends.iter().map(|e| ev::n(e, "captured")).sum();
    let truncated: u64 = sends.iter().map(|e| ev::n(e, "truncated")).sum();
    let holes: u64 = sends.iter().map(|e| ev::n(e, "hole")).sum();
    assert_eq!(holes, 0, "no bytes lost");
    assert_eq!(captured + truncated, total);
    assert!(
        truncated > size as u64 / 2,
        "the body beyond the capture size is counted as truncated"
    );
    assert!(out.counter("bytes_truncated").unwrap() >= truncated);
    // curl's side sees the same byte count.
    let curl_recv: u64 = events
        .iter()
        .filter(|e| ev::s(e, "comm") == "curl" && ev::s(e, "dir") == "recv")
        .map(|e| ev::n(e, "len"))
        .sum();
    assert_eq!(curl_recv, header_len + size as u64);
}

/// nghttpx opens an upstream connection per request, many at once, to
/// Python's http.server (a listen backlog of 5, one connection per
/// request): its accept queue overflows, and a request sent before the
/// server accepted is read only after its retransmission, 200 ms on. Its
/// loopback packet waited for the server's socket meanwhile; the read is
/// still the call of those bytes, none delivered without it.
#[test]
fn requests_read_after_an_accept_queue_overflow_keep_their_calls() {
    let Some(_g) = root_test("requests_read_after_an_accept_queue_overflow_keep_their_calls")
    else {
        return;
    };
    require_tool("nghttpx");
    require_tool("h2load");
    let root = TempDir::new("tracer-overflow");
    std::fs::write(root.path().join("q"), "ok\n").unwrap();
    let backend_port = free_port();
    let _backend = Listening::start(
        Command::new(python())
            .args(["-m", "http.server", "--bind", "127.0.0.1"])
            .arg(backend_port.to_string())
            .current_dir(root.path()),
        backend_port,
    );
    let port = free_port();
    let _proxy = Listening::start(
        Command::new("nghttpx").args([
            format!("--frontend=127.0.0.1,{port};no-tls"),
            format!("--backend=127.0.0.1,{backend_port}"),
            "--workers=1".into(),
            "--conf=/dev/null".into(),
            "--errorlog-file=/dev/null".into(),
        ]),
        port,
    );
    let agent = Agent::start(&["--print", "none"]);
    let url = format!("http://127.0.0.1:{port}/q");
    run_ok(Command::new("h2load").args(["-n", "200", "-c", "4", "-m", "4", &url]));
    let out = agent.stop(SETTLE);
    println!(
        "loopback packets parked: {:?}, calls stale: {:?}",
        out.counter("connections.loopback_parked"),
        out.counter("streams.ops_stale")
    );
    assert_eq!(out.counter("streams.ops_stale"), Some(0), "{}", out.stderr);
    assert_eq!(
        out.counter("http.messages_without_call"),
        Some(0),
        "{}",
        out.stderr
    );
    // 200 requests, each a client and a server span at both hops.
    assert_eq!(
        out.counter("correlation.spans_emitted"),
        Some(800),
        "{}",
        out.stderr
    );
}

#[test]
fn connection_opened_before_the_agent_is_picked_up() {
    let Some(_g) = root_test("connection_opened_before_the_agent_is_picked_up") else {
        return;
    };
    let (nginx, mut client, tuple) = nginx_keepalive_client(Duration::from_secs(10));
    let port = nginx.port.to_string();
    let agent = Agent::start(&["--print", "events", "--output", "json", "--port", &port]);
    client.send("go");
    let done: Value = serde_json::from_str(&client.line(Duration::from_secs(10))).unwrap();
    assert_eq!(done["statuses"].as_array().unwrap().len(), 3);
    let pid = client.child.id();
    client.finish();
    let out = agent.stop(SETTLE);
    let events = out.json();
    let mine = events_of(&events, pid);
    let sent: Vec<_> = mine.iter().filter(|e| ev::s(e, "dir") == "send").collect();
    assert_eq!(sent.len(), 3, "{mine:?}");
    for (i, e) in sent.iter().enumerate() {
        assert!(
            ev::s(e, "data").starts_with(&format!("GET /after-{i} HTTP/1.1")),
            "{e}"
        );
        assert_eq!(ev::s(e, "local"), tuple["local"].as_str().unwrap());
        assert_eq!(ev::s(e, "remote"), tuple["remote"].as_str().unwrap());
    }
    let recvs = mine.iter().filter(|e| ev::s(e, "dir") == "recv").count();
    assert!(recvs >= 3);
    // nginx's side of the same connection, seen from the other end.
    let worker = nginx.worker_pids()[0];
    let nginx_side: Vec<_> = events_of(&events, worker)
        .into_iter()
        .filter(|e| ev::s(e, "dir") == "recv")
        .collect();
    assert_eq!(nginx_side.len(), 3);
    for e in nginx_side {
        assert_eq!(ev::s(e, "remote"), tuple["local"].as_str().unwrap());
    }
}

#[test]
fn every_socket_call_family_is_captured_with_bytes_and_thread() {
    let Some(_g) = root_test("every_socket_call_family_is_captured_with_bytes_and_thread") else {
        return;
    };
    let agent = Agent::start(&[
        "--print", "events", "--output", "json", "--comm", "python3", "--comm", "python",
    ]);
    let out = run_ok(Command::new(python()).arg(py_script("sockapi.py")));
    let cases: Vec<Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(cases.len(), 5);
    let agent_out = agent.stop(SETTLE);
    let events = agent_out.json();
    for case in &cases {
        let payload = case["payload"].as_str().unwrap();
        let pid = case["pid"].as_u64().unwrap();
        let find = |dir: &str| -> Vec<&Value> {
            events
                .iter()
                .filter(|e| {
                    ev::n(e, "pid") == pid && ev::s(e, "dir") == dir && ev::s(e, "data") == payload
                })
                .collect()
        };
        let sends = find("send");
        let recvs = find("recv");
        assert_eq!(sends.len(), 1, "{} of {payload}", case["send"]);
        assert_eq!(recvs.len(), 1, "{} of {payload}", case["recv"]);
        assert_eq!(
            ev::n(sends[0], "tid"),
            case["send_tid"].as_u64().unwrap(),
            "sender thread"
        );
        assert_eq!(
            ev::n(recvs[0], "tid"),
            case["recv_tid"].as_u64().unwrap(),
            "receiver thread"
        );
        assert_eq!(ev::n(sends[0], "len"), payload.len() as u64);
        assert_eq!(
            ev::port(sends[0], "local"),
            case["client_port"].as_u64().unwrap() as u16
        );
        assert_eq!(
            ev::port(recvs[0], "local"),
            case["server_port"].as_u64().unwrap() as u16
        );
    }
}

#[test]
fn file_and_pipe_io_produce_no_events() {
    let Some(_g) = root_test("file_and_pipe_io_produce_no_events") else {
        return;
    };
    let agent = Agent::start(&["--print", "events", "--output", "json"]);
    let p = Spawned::new(Command::new(python()).arg(py_script("fileio.py")));
    let pid: u64 = p.line(Duration::from_secs(10)).trim().parse().unwrap();
    assert_eq!(p.line(Duration::from_secs(120)), "done");
    p.finish();
    let out = agent.stop(SETTLE);
    let mine: Vec<_> = out
        .json()
        .into_iter()
        .filter(|e| ev::n(e, "pid") == pid)
        .collect();
    assert!(mine.is_empty(), "file/pipe I/O produced events: {mine:?}");
    assert_eq!(out.code, Some(0));
}

fn prog_ids_loaded() -> HashSet<u32> {
    let out = run_ok(Command::new("bpftool").args(["-j", "prog", "show"]));
    let v: Value = serde_json::from_str(&out).unwrap();
    v.as_array()
        .unwrap()
        .iter()
        .filter_map(|p| p["id"].as_u64())
        .map(|i| i as u32)
        .collect()
}

fn prog_types(ids: &[u32]) -> Vec<String> {
    let out = run_ok(Command::new("bpftool").args(["-j", "prog", "show"]));
    let v: Value = serde_json::from_str(&out).unwrap();
    v.as_array()
        .unwrap()
        .iter()
        .filter(|p| {
            p["id"]
                .as_u64()
                .is_some_and(|id| ids.contains(&(id as u32)))
        })
        .map(|p| p["type"].as_str().unwrap_or("").to_string())
        .collect()
}

fn link_prog_ids() -> HashSet<u32> {
    let out = run_ok(Command::new("bpftool").args(["-j", "link", "show"]));
    let v: Value = serde_json::from_str(&out).unwrap_or(Value::Array(vec![]));
    v.as_array()
        .unwrap()
        .iter()
        .filter_map(|l| l["prog_id"].as_u64())
        .map(|i| i as u32)
        .collect()
}

#[test]
fn nothing_stays_attached_after_exit() {
    let Some(_g) = root_test("nothing_stays_attached_after_exit") else {
        return;
    };
    require_tool("bpftool");
    // How many programs the send/receive calls take depends on the source
    // the kernel offers (tp_btf on 6.18, fexit on 6.1): only the sampling
    // program's presence is fixed.
    let mut loaded_per_run = Vec::new();
    for (signal, profile_hz) in [(libc::SIGINT, "99"), (libc::SIGTERM, "0")] {
        // TLS probes and runtime hooks are attached per file as processes
        // need them (see tls.rs for their exit check): off here, so every
        // program loaded is attached.
        let agent = Agent::start(&[
            "--print",
            "none",
            "--profile-hz",
            profile_hz,
            "--tls-snap-len",
            "0",
            "--no-runtime-hooks",
        ]);
        let ids = agent.program_ids.clone();
        loaded_per_run.push(ids.len());
        let perf_event_progs = prog_types(&ids)
            .iter()
            .filter(|t| *t == "perf_event")
            .count();
        assert_eq!(
            perf_event_progs,
            usize::from(profile_hz != "0"),
            "a sampling program only when profiling"
        );
        let loaded = prog_ids_loaded();
        let links = link_prog_ids();
        for id in &ids {
            assert!(loaded.contains(id), "program {id} loaded while running");
            assert!(
                links.contains(id),
                "program {id} attached by a link while running"
            );
        }
        // SAFETY: kill(2) on the agent we started.
        unsafe { libc::kill(agent.pid() as i32, signal) };
        let out = agent.stop(Duration::ZERO);
        assert_eq!(out.code, Some(0), "{}", out.stderr);
        assert!(
            out.stderr.contains("tracer: counters at exit") && out.stderr.contains("anomalies:"),
            "counters on exit: {}",
            out.stderr
        );
        // The verifier refuses a program past its limit of instructions
        // walked (the agent's line names both), and how far it walks moves
        // with the kernel: half of the limit is the room a program must
        // keep (the packet programs once went past it on a new 6.18 kernel
        // while they had passed an earlier one).
        let (walked, limit): (u64, u64) = out
            .stderr
            .split("verifier: the largest program, ")
            .nth(1)
            .and_then(|l| l.split(", took ").nth(1))
            .and_then(|l| {
                let mut words = l.split(' ');
                let walked = words.next()?.parse().ok()?;
                let limit = words.nth(2)?.parse().ok()?;
                Some((walked, limit))
            })
            .unwrap_or_else(|| panic!("no verifier line: {}", out.stderr));
        println!(
            "verifier: the largest program took {walked} of {limit} instructions (profile-hz {profile_hz})"
        );
        assert!(
            walked < limit / 2,
            "the verifier walked {walked} instructions of a program, past half its limit"
        );
        let loaded = prog_ids_loaded();
        let links = link_prog_ids();
        for id in &ids {
            assert!(!loaded.contains(id), "program {id} still loaded after exit");
            assert!(
                !links.contains(id),
                "a link of program {id} remains after exit"
            );
        }
    }
    assert_eq!(
        loaded_per_run,
        [loaded_per_run[1] + 1, loaded_per_run[1]],
        "programs loaded with and without profiling"
    );
    assert!(
        loaded_per_run[1] >= 5,
        "calls, connections and packets: {loaded_per_run:?}"
    );
}

#[test]
fn bad_configuration_is_one_clear_error() {
    let Some(_g) = root_test("bad_configuration_is_one_clear_error") else {
        return;
    };
    let bin = tracer_e2e::tracer_bin();
    let out = Command::new(&bin)
        .args(["run", "--snap-len", "100000"])
        .output()
        .unwrap();
    assert_ne!(out.status.code(), Some(0));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--snap-len") && !err.contains("panicked"),
        "{err}"
    );

    // Not root: one line saying so, no panic.
    let out = Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--inh-caps=-all",
        ])
        .arg(&bin)
        .arg("run")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("needs root") && !err.contains("panicked"),
        "{err}"
    );
    assert_eq!(
        err.lines().filter(|l| l.contains("error")).count(),
        1,
        "{err}"
    );

    let help = run_ok(Command::new(&bin).args(["run", "--help"]));
    for flag in [
        "--snap-len",
        "--pid",
        "--comm",
        "--port",
        "--print",
        "--output",
        "--ring-buffer-size",
    ] {
        assert!(help.contains(flag), "--help explains {flag}");
    }
}
