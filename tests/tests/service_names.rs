//! Service names users recognise, on real programs: Python scripts,
//! modules and ASGI/WSGI servers, Node, Java from a class directory and
//! from a jar, a process with its own OTEL_SERVICE_NAME, the user's
//! `--service-name` rules (command line, cgroup), and Debian's redis-server
//! (a symlink to redis-check-rdb). Each HTTP service answers one real
//! request and its name is read from the resource of its SERVER span in a
//! real OTLP receiver.
//!
//! redis does not speak HTTP, so it makes no span. The agent exports its
//! resource another way: the CPU profile of a busy redis-server goes to a
//! Pyroscope-compatible endpoint under the service name of its process,
//! taken from the same resource cache as spans. A Lua loop keeps redis busy
//! for about a second, and the profile is checked to come from the
//! redis-check-rdb binary yet be named `redis-server`.
use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use serde_json::Value;
use tracer_e2e::{
    curl_status, free_port, require_tool, root_test, run_ok,
    span::{attr, f, res},
    tempdir::TempDir,
    which, workspace, Agent, Listening, Otlp, Pyroscope, Receiver, Redis,
};

const SOURCE: &str = "tracer.service.name.source";
const CONTAINER_ID: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

fn fixture(name: &str) -> PathBuf {
    workspace().join("tests/fixtures/service_names").join(name)
}

/// Copies a fixture to `dir/name`, creating `dir`.
fn install(fixture_name: &str, dir: &Path, name: &str) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    let to = dir.join(name);
    std::fs::copy(fixture(fixture_name), &to).unwrap();
    to
}

/// One real request from curl to `path` of `service`.
fn get(service: &Listening, path: &str) {
    let code = curl_status(
        &format!("http://127.0.0.1:{}{path}", service.port),
        &[],
        &[],
    );
    assert!(matches!(code, 200 | 404), "{path}: HTTP {code}");
}

/// A cgroup v2 directory shaped like Docker's (`.../docker-ID.scope`),
/// removed on drop (once its processes are gone).
struct DockerLikeCgroup {
    outer: PathBuf,
    inner: PathBuf,
}

impl DockerLikeCgroup {
    fn create() -> DockerLikeCgroup {
        let mounts = std::fs::read_to_string("/proc/mounts").unwrap();
        let root = mounts
            .lines()
            .find_map(|l| {
                let mut it = l.split_whitespace();
                let (_, dir, kind) = (it.next()?, it.next()?, it.next()?);
                (kind == "cgroup2").then(|| PathBuf::from(dir))
            })
            .expect("a cgroup2 mount");
        let outer = root.join(format!("tracer-e2e-{}", std::process::id()));
        let inner = outer.join(format!("docker-{CONTAINER_ID}.scope"));
        std::fs::create_dir_all(&inner).unwrap();
        DockerLikeCgroup { outer, inner }
    }
}

impl Drop for DockerLikeCgroup {
    fn drop(&mut self) {
        let start = Instant::now();
        while std::fs::remove_dir(&self.inner).is_err() && start.elapsed() < Duration::from_secs(5)
        {
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = std::fs::remove_dir(&self.outer);
    }
}

/// What a service must be called, by which rule.
struct Expect {
    path: &'static str,
    name: &'static str,
    source: &'static str,
    pid: Option<u32>,
}

#[test]
fn http_services_get_the_names_users_know() {
    let Some(_g) = root_test("http_services_get_the_names_users_know") else {
        return;
    };
    for tool in ["curl", "node", "java", "javac", "jar", "/usr/bin/python3"] {
        require_tool(tool);
    }
    let venv_bin = workspace().join("target/pyenv/bin");
    for tool in ["uvicorn", "gunicorn"] {
        assert!(
            venv_bin.join(tool).exists(),
            "{tool} is not installed: run scripts/setup"
        );
    }
    let tmp = TempDir::new("tracer-names");
    let srv = tmp.path().join("srv");
    let py = "/usr/bin/python3";

    // The programs, laid out as they would be deployed.
    let billing = install("http_app.py", &srv.join("billing"), "app.py");
    let catalog = install("http_app.py", &srv.join("catalog"), "app.py");
    let legacy = install("http_app.py", &srv.join("legacy"), "app.py");
    install("asgi_main.py", &srv.join("inventory"), "main.py");
    install("wsgi.py", &srv.join("payments/payments"), "wsgi.py");
    std::fs::write(srv.join("payments/payments/__init__.py"), "").unwrap();
    install("server.js", &srv.join("web"), "server.js");
    // Run from source (`java Tickets.java`): the file names the program.
    let tickets = install("Main.java", &srv.join("tickets"), "Tickets.java");
    let classes = srv.join("ledger/classes");
    std::fs::create_dir_all(&classes).unwrap();
    run_ok(
        Command::new("javac")
            .arg("-d")
            .arg(&classes)
            .arg(fixture("Main.java")),
    );
    std::fs::create_dir_all(srv.join("reports")).unwrap();
    let jar = srv.join("reports/reports-1.4.2.jar");
    run_ok(
        Command::new("jar")
            .args(["--create", "--file"])
            .arg(&jar)
            .args(["--main-class", "Main", "-C"])
            .arg(&classes)
            .arg("."),
    );
    let cgroup = DockerLikeCgroup::create();

    let receiver = Receiver::start(Otlp::Grpc);
    let mut args = receiver.agent_args();
    args.extend(
        [
            "--profile-hz",
            "0",
            "--service-name",
            "cmd:*/srv/catalog/app.py *=product-catalog",
            // Two rules in one value, as in TRACER_SERVICE_NAMES.
            "--service-name",
            "exe:/nonexistent/*=never;cgroup:/tracer-e2e-*/docker-*.scope=legacy-in-docker",
        ]
        .map(String::from),
    );
    let agent = Agent::start(&args);

    let mut expect = Vec::new();
    let mut services = Vec::new();
    let mut serve = |path: &'static str,
                     name: &'static str,
                     source: &'static str,
                     check_pid: bool,
                     command: &dyn Fn(u16) -> Command| {
        let port = free_port();
        let s = Listening::start(&mut command(port), port);
        get(&s, path);
        expect.push(Expect {
            path,
            name,
            source,
            pid: check_pid.then(|| s.pid()),
        });
        services.push(s);
        port
    };
    // python3 /srv/billing/app.py: "app" is generic, so its directory.
    // Credentials on its command line must not leave the host.
    let billing_port = serve("/svc-billing", "billing", "python_script", true, &|port| {
        let mut c = Command::new(py);
        c.arg(&billing).arg(port.to_string()).args([
            "--password=hunter2",
            "-p",
            "s3cr3tvalue",
            "TOKEN=tok3nvalue",
        ]);
        c
    });
    // A restart (new pid, new port) keeps the name.
    serve(
        "/svc-billing-restarted",
        "billing",
        "python_script",
        true,
        &|port| {
            let mut c = Command::new(py);
            c.arg(&billing).arg(port.to_string());
            c
        },
    );
    serve(
        "/svc-http-server",
        "http.server",
        "python_module",
        true,
        &|port| {
            let mut c = Command::new(py);
            c.args([
                "-m",
                "http.server",
                "--bind",
                "127.0.0.1",
                &port.to_string(),
            ])
            .current_dir(tmp.path());
            c
        },
    );
    serve("/svc-uvicorn", "inventory", "python_app", true, &|port| {
        let mut c = Command::new(venv_bin.join("uvicorn"));
        c.args([
            "--host",
            "127.0.0.1",
            "--port",
            &port.to_string(),
            "main:app",
        ])
        .current_dir(srv.join("inventory"));
        c
    });
    // gunicorn's worker (a fork of the master, same command line) serves.
    serve("/svc-gunicorn", "payments", "python_app", false, &|port| {
        let mut c = Command::new(venv_bin.join("gunicorn"));
        c.args(["-w", "1", "-b", &format!("127.0.0.1:{port}")])
            .arg("payments.wsgi:application")
            .current_dir(srv.join("payments"));
        c
    });
    serve("/svc-node", "web", "node_script", true, &|port| {
        let mut c = Command::new("node");
        c.args(["server.js", &port.to_string()])
            .current_dir(srv.join("web"));
        c
    });
    serve("/svc-java-cp", "ledger", "java_main_class", true, &|port| {
        let mut c = Command::new("java");
        c.arg("-cp").arg(&classes).args(["Main", &port.to_string()]);
        c
    });
    serve(
        "/svc-java-src",
        "Tickets",
        "java_source_file",
        true,
        &|port| {
            let mut c = Command::new("java");
            c.arg(&tickets).arg(port.to_string());
            c
        },
    );
    serve("/svc-java-jar", "reports", "java_jar", true, &|port| {
        let mut c = Command::new("java");
        c.arg("-jar").arg(&jar).arg(port.to_string());
        c
    });
    serve(
        "/svc-otel-env",
        "checkout",
        "OTEL_SERVICE_NAME",
        true,
        &|port| {
            let mut c = Command::new(py);
            c.args([
                "-m",
                "http.server",
                "--bind",
                "127.0.0.1",
                &port.to_string(),
            ])
            .env("OTEL_SERVICE_NAME", "checkout")
            .current_dir(tmp.path());
            c
        },
    );
    serve(
        "/svc-cmd-rule",
        "product-catalog",
        "rule:cmd:*/srv/catalog/app.py *",
        true,
        &|port| {
            let mut c = Command::new(py);
            c.arg(&catalog).arg(port.to_string());
            c
        },
    );
    // In a Docker-shaped cgroup; its own OTEL_SERVICE_NAME loses to the rule.
    serve(
        "/svc-cgroup-rule",
        "legacy-in-docker",
        "rule:cgroup:/tracer-e2e-*/docker-*.scope",
        true,
        &|port| {
            let mut c = Command::new("sh");
            c.arg("-c")
                .arg(format!(
                    "echo $$ > {}/cgroup.procs && exec {py} {} {port}",
                    cgroup.inner.display(),
                    legacy.display()
                ))
                .env("OTEL_SERVICE_NAME", "ignored-by-rule");
            c
        },
    );

    let spans = receiver.wait_for(Duration::from_secs(30), |spans| {
        expect.iter().all(|e| server_span(spans, e.path).is_some())
    });
    let out = agent.stop(Duration::from_millis(500));
    drop(services);

    let mut seen: HashMap<&str, (String, String)> = HashMap::new();
    for e in &expect {
        let s = server_span(&spans, e.path).unwrap_or_else(|| {
            panic!(
                "no SERVER span for {}; agent stderr:\n{}",
                e.path, out.stderr
            )
        });
        seen.insert(e.path, (res(s, "service.name"), res(s, SOURCE)));
        assert_eq!(
            (res(s, "service.name").as_str(), res(s, SOURCE).as_str()),
            (e.name, e.source),
            "{}: resource {}",
            e.path,
            s["resource"]
        );
        if let Some(pid) = e.pid {
            assert_eq!(res(s, "process.pid"), pid.to_string(), "{}", e.path);
        }
    }
    println!("names: {seen:#?}");

    // process.* stay exact; credentials are redacted.
    let b = server_span(&spans, "/svc-billing").unwrap();
    assert_eq!(
        res(b, "process.executable.path"),
        std::fs::canonicalize(py).unwrap().display().to_string()
    );
    assert_eq!(
        res(b, "process.command_line"),
        format!(
            "{py} {} {billing_port} --password=REDACTED -p REDACTED TOKEN=REDACTED",
            billing.display()
        )
    );
    let raw = receiver.raw();
    for secret in ["hunter2", "s3cr3tvalue", "tok3nvalue"] {
        assert!(!raw.contains(secret), "{secret} reached the receiver");
    }
    // container.id from the cgroup path, only there.
    let legacy = server_span(&spans, "/svc-cgroup-rule").unwrap();
    assert_eq!(res(legacy, "container.id"), CONTAINER_ID);
    assert_eq!(res(b, "container.id"), "");
}

/// Makes one request to `/from-launcher` on port ARGV[1], then becomes
/// `python3 ARGV[2] PORT` (same pid, same binary, same kernel name).
const LAUNCHER: &str = r#"
import os, sys, urllib.request
urllib.request.urlopen("http://127.0.0.1:%s/from-launcher" % sys.argv[1]).read()
os.execv(sys.executable, [sys.executable, sys.argv[2], sys.argv[1]])
"#;

/// One request to `/from-checkout`, then alive a while: its first record
/// is read while it runs.
const CHECKOUT: &str = r#"
import sys, time, urllib.request
urllib.request.urlopen("http://127.0.0.1:%s/from-checkout" % sys.argv[1]).read()
time.sleep(0.5)
print("done")
"#;

/// A process that starts another program keeps its pid, its start time
/// and, when the program is the same binary (a launcher, a version
/// manager's shim, a JVM re-exec), its kernel name: only the kernel's exec
/// event says that its spans are now the new program's.
#[test]
fn a_program_started_by_exec_is_named_for_itself() {
    let Some(_g) = root_test("a_program_started_by_exec_is_named_for_itself") else {
        return;
    };
    let py = "/usr/bin/python3";
    require_tool(py);
    let tmp = TempDir::new("tracer-exec-names");
    let srv = tmp.path().join("srv");
    let app = install("http_app.py", &srv.join("billing"), "app.py");
    std::fs::write(srv.join("launcher.py"), LAUNCHER).unwrap();
    std::fs::write(srv.join("checkout.py"), CHECKOUT).unwrap();
    let port = free_port();
    let _server = Listening::start(Command::new(py).arg(&app).arg(port.to_string()), port);
    let receiver = Receiver::start(Otlp::Grpc);
    let mut args = receiver.agent_args();
    args.extend(["--profile-hz", "0"].map(String::from));
    let agent = Agent::start(&args);
    let out = run_ok(
        Command::new(py)
            .arg(srv.join("launcher.py"))
            .arg(port.to_string())
            .arg(srv.join("checkout.py")),
    );
    assert_eq!(out.trim(), "done");
    tracer_e2e::tls::wait_for_paths(&receiver, "/from-", 4);
    let out = agent.stop(Duration::from_millis(500));
    let spans = receiver.spans();
    let client = |path: &str| {
        spans
            .iter()
            .find(|s| f(s, "kind") == "CLIENT" && attr(s, "url.path") == path)
            .unwrap_or_else(|| panic!("no CLIENT span for {path}; agent:\n{}", out.stderr))
    };
    let (before, after) = (client("/from-launcher"), client("/from-checkout"));
    assert_eq!(res(before, "process.pid"), res(after, "process.pid"));
    assert_eq!(res(before, "service.name"), "launcher", "{before:#?}");
    assert_eq!(res(after, "service.name"), "checkout", "{after:#?}");
    assert_eq!(
        res(after, "process.command_line"),
        format!("{py} {} {port}", srv.join("checkout.py").display())
    );
    assert!(
        out.counter("export.execs").is_some_and(|n| n >= 1),
        "{}",
        out.stderr
    );
}

/// The SERVER span of the request to `path`.
fn server_span<'a>(spans: &'a [Value], path: &str) -> Option<&'a Value> {
    spans
        .iter()
        .find(|s| f(s, "kind") == "SERVER" && attr(s, "url.path") == path)
}

#[test]
fn redis_server_is_named_as_started_not_as_its_symlink_target() {
    let Some(_g) = root_test("redis_server_is_named_as_started_not_as_its_symlink_target") else {
        return;
    };
    for tool in ["redis-server", "redis-cli"] {
        require_tool(tool);
    }
    // The file the symlink points to: pprof mappings name it (`redis-check-rdb`).
    let target = std::fs::canonicalize(which("redis-server")).unwrap();
    let binary = target.file_name().unwrap().to_string_lossy().into_owned();
    assert_ne!(
        binary, "redis-server",
        "redis-server is no longer a symlink"
    );
    let pyroscope = Pyroscope::start();
    let agent = Agent::start(&pyroscope.agent_args());
    let redis = Redis::start();
    // About a second of CPU inside redis-server.
    let out = run_ok(Command::new("redis-cli").args([
        "-p",
        &redis.port().to_string(),
        "EVAL",
        "local i = 0 while i < 100000000 do i = i + 1 end return i",
        "0",
    ]));
    assert_eq!(out.trim(), "100000000");
    let start = Instant::now();
    let redis_profiles = loop {
        let profiles: Vec<Value> = pyroscope
            .profiles()
            .into_iter()
            .filter(|p| {
                p["mappings"]
                    .as_array()
                    .is_some_and(|m| m.iter().any(|f| f.as_str() == Some(binary.as_str())))
            })
            .collect();
        if !profiles.is_empty() || start.elapsed() > Duration::from_secs(15) {
            break profiles;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let out = agent.stop(Duration::from_millis(200));
    drop(redis);
    assert!(
        !redis_profiles.is_empty(),
        "no profile of {} reached the endpoint; agent stderr:\n{}",
        target.display(),
        out.stderr
    );
    for p in &redis_profiles {
        assert_eq!(p["app"], "redis-server", "{}", p["name"]);
    }
    let samples: u64 = redis_profiles
        .iter()
        .map(|p| p["samples"].as_u64().unwrap_or(0))
        .sum();
    println!(
        "redis-server ({}): {} profiles, {samples} samples; agent resources: described={:?} pid_reused={:?}",
        target.display(),
        redis_profiles.len(),
        out.counter("described"),
        out.counter("pid_reused"),
    );
}

#[test]
fn bad_service_name_rules_stop_the_agent_with_one_line() {
    // Needs no root: the flags are checked before anything is loaded.
    let out = Command::new(tracer_e2e::tracer_bin())
        .args(["run", "--service-name", "redis-*=cache"])
        .env("RUST_LOG", "off")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        "tracer: error: invalid option: --service-name \"redis-*=cache\": \
         the pattern must start with exe:, cmd:, cgroup: or name:\n"
    );
    let out = Command::new(tracer_e2e::tracer_bin())
        .arg("run")
        .env("TRACER_SERVICE_NAMES", "exe:redis-*=cache;cmd:[*=x")
        .env("RUST_LOG", "off")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.starts_with("tracer: error: invalid option: --service-name \"cmd:[*=x\": bad pattern"),
        "{err}"
    );
}
