//! Harness for the end-to-end tests: starts the real agent binary and real
//! servers and clients (nginx, curl, Python), and reads what the agent printed.
//!
//! These tests need root. They skip only when not root AND not in CI
//! (`CI=true`); in CI a missing privilege or tool is a failure.
use std::{
    io::{BufRead, BufReader, Read},
    net::TcpListener,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{mpsc, Mutex, MutexGuard, OnceLock},
    time::{Duration, Instant},
};

use serde_json::Value;

/// One root test at a time per test binary: agents and servers share the
/// host, and timing assertions need a quiet machine.
static SERIAL: Mutex<()> = Mutex::new(());

/// Returns a guard to hold for the test, or None when the test must skip
/// (not root and not in CI). Panics in CI without root.
pub fn root_test(name: &str) -> Option<MutexGuard<'static, ()>> {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    if !root {
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!("{name}: end-to-end tests must run as root in CI");
        }
        eprintln!("SKIP {name}: needs root (and not in CI)");
        return None;
    }
    Some(SERIAL.lock().unwrap_or_else(|e| e.into_inner()))
}

/// Workspace root.
pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// The agent binary: `TRACER_BIN` (scripts/test sets it to the shipped
/// build, `target/dist/tracer`), else the one of the same build profile as
/// this test binary.
pub fn tracer_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("TRACER_BIN").filter(|p| !p.is_empty()) {
        let p = PathBuf::from(p);
        assert!(p.exists(), "TRACER_BIN={} does not exist", p.display());
        return p;
    }
    // target/<profile>/deps/<test> -> target/<profile>/tracer
    let exe = std::env::current_exe().unwrap();
    let bin = exe.parent().unwrap().parent().unwrap().join("tracer");
    assert!(
        bin.exists(),
        "{} is missing: build the agent first (`cargo build --release -p tracer`, which scripts/test does)",
        bin.display()
    );
    bin
}

/// The Python with the test packages (grpcio, opentelemetry-proto), made by
/// scripts/setup; falls back to the system python3.
pub fn python() -> PathBuf {
    let venv = workspace().join("target/pyenv/bin/python");
    if venv.exists() {
        venv
    } else {
        PathBuf::from("/usr/bin/python3")
    }
}

/// A script under tests/py/.
pub fn py_script(name: &str) -> PathBuf {
    workspace().join("tests/py").join(name)
}

/// Checks that an external program exists, with a hint to run setup.
pub fn require_tool(tool: &str) {
    let ok = Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {tool}"))
        .stdout(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    assert!(ok, "{tool} is not installed: run scripts/setup");
}

/// The path of a program on PATH.
pub fn which(tool: &str) -> PathBuf {
    let out = run_ok(
        Command::new("sh")
            .arg("-c")
            .arg(format!("command -v {tool}")),
    );
    PathBuf::from(out.trim())
}

/// A TCP port nobody listens on right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Waits until something accepts on 127.0.0.1:port.
pub fn wait_port(port: u16, timeout: Duration) {
    let start = Instant::now();
    while start.elapsed() < timeout {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("nothing listens on port {port} after {timeout:?}");
}

/// One curl process, one request to `url` with `headers` (`Name: value`)
/// and `extra` curl arguments; returns the HTTP status.
pub fn curl_status(url: &str, headers: &[&str], extra: &[&str]) -> u16 {
    let mut cmd = Command::new("curl");
    cmd.args(["-s", "-o", "/dev/null", "-w", "%{http_code}"]);
    for h in headers {
        cmd.args(["-H", h]);
    }
    cmd.args(extra).arg(url);
    let code = run_ok(&mut cmd);
    code.trim()
        .parse()
        .unwrap_or_else(|e| panic!("curl {url} printed no status ({e}): {code}"))
}

/// A server started from a command that prints nothing useful, ready once
/// something accepts on its port; killed on drop with every process it
/// forked (hypercorn's and gunicorn's workers would otherwise outlive it and
/// hold the test's output pipe open).
pub struct Listening {
    child: Child,
    /// Its port.
    pub port: u16,
}

impl Listening {
    /// Spawns `cmd` (which must listen on `port`) and waits until it does.
    pub fn start(cmd: &mut Command, port: u16) -> Listening {
        use std::os::unix::process::CommandExt;
        let child = cmd
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {cmd:?}: {e}"));
        // Built before the wait, so that a server that never listens is
        // killed when the wait panics.
        let l = Listening { child, port };
        wait_port(port, Duration::from_secs(30));
        l
    }

    /// Its pid.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Listening {
    fn drop(&mut self) {
        // The child leads its own process group (see `start`).
        // SAFETY: killpg has no memory effects; a stale group id fails harmlessly.
        unsafe { libc::killpg(self.child.id() as libc::pid_t, libc::SIGKILL) };
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A real redis-server on loopback, persisting nothing (its directory a
/// temp dir); killed on drop.
pub struct Redis {
    server: Listening,
    _dir: tempdir::TempDir,
}

impl Redis {
    /// Starts it and waits until it listens.
    pub fn start() -> Redis {
        require_tool("redis-server");
        let dir = tempdir::TempDir::new("tracer-redis");
        let port = free_port();
        let server = Listening::start(
            Command::new("redis-server")
                .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
                .args(["--save", "", "--appendonly", "no", "--dir"])
                .arg(dir.path()),
            port,
        );
        Redis { server, _dir: dir }
    }

    /// Its port.
    pub fn port(&self) -> u16 {
        self.server.port
    }
}

/// A running agent.
pub struct Agent {
    child: Child,
    stdout: mpsc::Receiver<String>,
    stderr: std::sync::Arc<Mutex<String>>,
    /// Ids of the programs the agent loaded (from its start-up log).
    pub program_ids: Vec<u32>,
}

/// What the agent printed once it exited.
pub struct AgentOutput {
    /// stdout lines.
    pub lines: Vec<String>,
    /// All of stderr.
    pub stderr: String,
    /// Exit status code.
    pub code: Option<i32>,
}

impl AgentOutput {
    /// stdout lines parsed as JSON (panics on a line that is not JSON).
    pub fn json(&self) -> Vec<Value> {
        self.lines
            .iter()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
            .collect()
    }

    /// The value of a counter in the exit summary (the agents these tests
    /// start print it in full: every counter, zero or not). `name` is
    /// `stage.name` (e.g. `kernel.silenced_calls`, `export.dropped_failed{otlp}`),
    /// or a bare name for the first stage that has it.
    pub fn counter(&self, name: &str) -> Option<u64> {
        let start = self.stderr.find("tracer: counters")?;
        let (stage, name) = match name.split_once('.') {
            Some((stage, name)) => (Some(stage), name),
            None => (None, name),
        };
        self.stderr[start..]
            .lines()
            .skip(1)
            .take_while(|l| l.starts_with("  ") && !l.trim_start().starts_with("anomalies:"))
            .filter(|l| stage.is_none_or(|s| l.split_whitespace().next() == Some(s)))
            .flat_map(|l| l.split_whitespace().skip(1))
            .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('=')?.parse().ok())
    }

    /// Spans the agent dropped at export, counted (failed exports and a
    /// full queue).
    pub fn spans_dropped_at_export(&self) -> u64 {
        self.counter("export.dropped_failed{otlp}").unwrap_or(0)
            + self.counter("export.dropped_queue_full{otlp}").unwrap_or(0)
    }
}

/// Whether the tests run in the kernel matrix's emulated guest (one vCPU,
/// CPU-bound work ~10x slower, starved whenever the host is busy).
pub fn emulated() -> bool {
    std::env::var_os("TRACER_TEST_EMULATED").is_some()
}

impl Agent {
    /// Starts `tracer run ARGS` and waits until it reports it is attached.
    pub fn start<S: AsRef<std::ffi::OsStr>>(args: &[S]) -> Agent {
        let mut child = Command::new(tracer_bin())
            .arg("run")
            .args(["--summary", "full"])
            .args(args)
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
            .env_remove("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
            .env_remove("OTEL_EXPORTER_OTLP_PROTOCOL")
            // Under emulation the test receiver, a Python process, has been
            // seen to take more than the default 10 s to answer an export.
            .envs(emulated().then_some(("OTEL_EXPORTER_OTLP_TIMEOUT", "30000")))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting the agent");
        let (tx, rx) = mpsc::channel();
        let out = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let stderr = std::sync::Arc::new(Mutex::new(String::new()));
        let (ready_tx, ready_rx) = mpsc::channel();
        let err = child.stderr.take().unwrap();
        let sink = stderr.clone();
        std::thread::spawn(move || {
            let mut reader = BufReader::new(err);
            let mut line = String::new();
            while reader.read_line(&mut line).map(|n| n > 0).unwrap_or(false) {
                if line.contains("attached: capturing") {
                    let _ = ready_tx.send(line.clone());
                }
                sink.lock().unwrap().push_str(&line);
                line.clear();
            }
            let _ = ready_tx.send(String::new());
        });
        let ready = ready_rx
            .recv_timeout(Duration::from_secs(60))
            .unwrap_or_default();
        if ready.is_empty() {
            let _ = child.kill();
            let _ = child.wait();
            std::thread::sleep(Duration::from_millis(100));
            panic!("agent did not attach; stderr:\n{}", stderr.lock().unwrap());
        }
        let program_ids = ready
            .split("programs=[")
            .nth(1)
            .and_then(|s| s.split(']').next())
            .map(|s| s.split(',').filter_map(|x| x.trim().parse().ok()).collect())
            .unwrap_or_default();
        Agent {
            child,
            stdout: rx,
            stderr,
            program_ids,
        }
    }

    /// The agent's pid.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// What the agent logged so far (its start-up log once started).
    pub fn stderr_so_far(&self) -> String {
        self.stderr
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Whether the agent logs `what` within `within`.
    pub fn logged(&self, what: &str, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        while !self.stderr_so_far().contains(what) {
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        true
    }

    /// Lines printed so far (non-blocking).
    pub fn lines_so_far(&self) -> Vec<String> {
        self.stdout.try_iter().collect()
    }

    /// Sends SIGINT, waits for the exit and returns everything printed.
    /// `settle` lets the last records drain first.
    pub fn stop(mut self, settle: Duration) -> AgentOutput {
        std::thread::sleep(settle);
        // SAFETY: plain kill(2) on our child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGINT) };
        let start = Instant::now();
        let status = loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                break s;
            }
            if start.elapsed() > Duration::from_secs(30) {
                let _ = self.child.kill();
                panic!("agent did not exit within 30 s of SIGINT");
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let mut lines = Vec::new();
        while let Ok(l) = self.stdout.recv_timeout(Duration::from_secs(2)) {
            lines.push(l);
        }
        std::thread::sleep(Duration::from_millis(50));
        let stderr = self.stderr.lock().unwrap().clone();
        AgentOutput {
            lines,
            stderr,
            code: status.code(),
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A real nginx with its own prefix directory, killed on drop.
pub struct Nginx {
    master: Child,
    /// Its directory (config, logs, document root at `root/`).
    pub dir: tempdir::TempDir,
    /// Listening port.
    pub port: u16,
}

/// Minimal temp-dir handling, removed on drop.
pub mod tls;

/// Builds tests/go/`name`.go into `dir` as `out` with the host's Go (GOPATH
/// mode, with Debian's Go packages under /usr/share/gocode), with extra `go
/// build` arguments. The build cache is kept in target/ so that each test
/// does not rebuild the standard library.
pub fn go_build(dir: &Path, name: &str, out: &str, extra: &[&str]) -> PathBuf {
    require_tool("go");
    let bin = dir.join(out);
    run_ok(
        Command::new("go")
            .arg("build")
            .args(extra)
            .arg("-o")
            .arg(&bin)
            .arg(workspace().join(format!("tests/go/{name}.go")))
            .env("GO111MODULE", "off")
            .env(
                "GOPATH",
                format!("{}:/usr/share/gocode", dir.join("gopath").display()),
            )
            .env("GOCACHE", workspace().join("target/go-cache"))
            .env("GOTOOLCHAIN", "local")
            .env("GOFLAGS", ""),
    );
    bin
}

pub mod tempdir {
    use std::path::{Path, PathBuf};

    /// A directory removed on drop.
    pub struct TempDir(PathBuf);

    impl TempDir {
        /// Creates a fresh directory under the system temp dir.
        pub fn new(prefix: &str) -> TempDir {
            let base = std::env::temp_dir();
            for i in 0..1000u32 {
                let p = base.join(format!("{prefix}-{}-{i}", std::process::id()));
                if std::fs::create_dir(&p).is_ok() {
                    return TempDir(p);
                }
            }
            panic!("cannot create a temp dir under {}", base.display());
        }

        /// Its path.
        pub fn path(&self) -> &Path {
            &self.0
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

impl Nginx {
    /// Starts nginx (one worker, master in the foreground) with `http_body`
    /// inside its `http {}` block; `{port}` and `{root}` are substituted.
    pub fn start(http_body: &str) -> Nginx {
        require_tool("nginx");
        let dir = tempdir::TempDir::new("tracer-nginx");
        let port = free_port();
        let root = dir.path().join("root");
        std::fs::create_dir_all(&root).unwrap();
        std::fs::create_dir_all(dir.path().join("logs")).unwrap();
        let body = http_body
            .replace("{port}", &port.to_string())
            .replace("{root}", &root.display().to_string());
        let conf = format!(
            "worker_processes 1;\nerror_log {d}/logs/error.log;\npid {d}/nginx.pid;\ndaemon off;\nuser root;\n\
             events {{ worker_connections 1024; }}\n\
             http {{\n access_log off;\n client_body_temp_path {d}/body;\n proxy_temp_path {d}/proxy;\n \
             fastcgi_temp_path {d}/fcgi;\n uwsgi_temp_path {d}/uwsgi;\n scgi_temp_path {d}/scgi;\n\
             default_type application/octet-stream;\n{body}\n}}\n",
            d = dir.path().display()
        );
        let conf_path = dir.path().join("nginx.conf");
        std::fs::write(&conf_path, conf).unwrap();
        let master = Command::new("nginx")
            .arg("-p")
            .arg(dir.path())
            .arg("-c")
            .arg(&conf_path)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting nginx");
        let n = Nginx { master, dir, port };
        wait_port(port, Duration::from_secs(10));
        n
    }

    /// Document root.
    pub fn root(&self) -> PathBuf {
        self.dir.path().join("root")
    }

    /// Pid of the master.
    pub fn master_pid(&self) -> u32 {
        self.master.id()
    }

    /// Pids of the worker processes.
    pub fn worker_pids(&self) -> Vec<u32> {
        children_of(self.master.id())
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // SAFETY: kill(2) on our child; SIGQUIT is nginx's graceful stop.
        unsafe { libc::kill(self.master.id() as i32, libc::SIGTERM) };
        let _ = self.master.wait();
    }
}

/// Direct children of a process (from /proc).
pub fn children_of(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(p) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{p}/stat")) else {
            continue;
        };
        // pid (comm) state ppid ...
        let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else {
            continue;
        };
        let ppid: Option<u32> = rest.split_whitespace().nth(1).and_then(|s| s.parse().ok());
        if ppid == Some(pid) {
            out.push(p);
        }
    }
    out
}

/// Runs a command to completion, returning stdout; panics with stderr on failure.
pub fn run_ok(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A spawned child with stdout read line by line.
pub struct Spawned {
    /// The child.
    pub child: Child,
    lines: mpsc::Receiver<String>,
}

impl Spawned {
    /// Spawns with piped stdin/stdout.
    pub fn new(cmd: &mut Command) -> Spawned {
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("spawning {cmd:?}: {e}"));
        let out = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for l in BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(l).is_err() {
                    break;
                }
            }
        });
        Spawned { child, lines: rx }
    }

    /// Spawns `cmd` and waits (up to 30 s) for its first line, "ready".
    pub fn ready(cmd: &mut Command) -> Spawned {
        let s = Spawned::new(cmd);
        assert_eq!(
            s.line(Duration::from_secs(30)),
            "ready",
            "{cmd:?} did not start"
        );
        s
    }

    /// Next stdout line, waiting up to `timeout`.
    pub fn line(&self, timeout: Duration) -> String {
        self.lines
            .recv_timeout(timeout)
            .expect("child printed nothing in time")
    }

    /// Writes a line to the child's stdin.
    pub fn send(&mut self, line: &str) {
        use std::io::Write;
        let stdin = self.child.stdin.as_mut().unwrap();
        writeln!(stdin, "{line}").unwrap();
        stdin.flush().unwrap();
    }

    /// Waits for the exit and returns the remaining stdout lines.
    pub fn finish(mut self) -> Vec<String> {
        drop(self.child.stdin.take());
        let status = self.child.wait().unwrap();
        assert!(status.success(), "child failed: {status}");
        self.lines.try_iter().collect()
    }
}

/// One side of a line-driven Python gRPC script (tests/py/`script`):
/// `role` is "server" or "client", `port` the server's port, `service` its
/// OTEL_SERVICE_NAME. Waits for "ready".
pub fn grpc_py(script: &str, role: &str, port: u16, service: &str) -> Spawned {
    grpc_peer(
        Command::new(python()).arg(py_script(script)),
        role,
        port,
        service,
    )
}

/// One side of a line-driven gRPC peer program `cmd` taking `role PORT`
/// (as [`grpc_py`]). Waits for "ready".
pub fn grpc_peer(cmd: &mut Command, role: &str, port: u16, service: &str) -> Spawned {
    Spawned::ready(
        cmd.args([role, &port.to_string()])
            .env("OTEL_SERVICE_NAME", service),
    )
}

/// One side of the grpc-go peer (tests/go/grpc_peer.go, which speaks
/// tests/py/grpc_calls.py's protocol), as [`grpc_py`]. Built once per test
/// binary with Debian's golang-google-grpc-dev. `tls`: a directory with
/// cert.pem and key.pem to speak TLS with.
pub fn grpc_go(role: &str, port: u16, service: &str, tls: Option<&Path>) -> Spawned {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    let bin = BIN.get_or_init(|| {
        assert!(
            Path::new("/usr/share/gocode/src/google.golang.org/grpc").exists(),
            "golang-google-grpc-dev is not installed: run scripts/setup"
        );
        let dir = workspace().join("target/go-grpc-peer");
        std::fs::create_dir_all(&dir).unwrap();
        go_build(&dir, "grpc_peer", "grpc_peer", &[])
    });
    let mut cmd = Command::new(bin);
    if let Some(dir) = tls {
        cmd.env("GRPC_TLS_DIR", dir);
    }
    grpc_peer(&mut cmd, role, port, service)
}

/// One side of the grpc-js peer (tests/node/grpc_peer.js, which speaks
/// tests/py/grpc_calls.py's protocol), as [`grpc_py`]. grpc-js has no
/// catch-all handler: a server serves the unary `methods` (and the
/// streaming ones of the protocol). `tls`: a directory with cert.pem and
/// key.pem to speak TLS with.
pub fn grpc_js(
    role: &str,
    port: u16,
    service: &str,
    methods: &[&str],
    tls: Option<&Path>,
) -> Spawned {
    require_tool("node");
    let modules = workspace().join("target/node-grpc/node_modules");
    assert!(
        modules.join("@grpc/grpc-js").exists(),
        "@grpc/grpc-js is not installed in {}: run scripts/setup",
        modules.display()
    );
    let mut cmd = Command::new("node");
    cmd.arg(workspace().join("tests/node/grpc_peer.js"))
        .args([role, &port.to_string()]);
    if role == "server" {
        cmd.arg(methods.join(","));
    }
    if let Some(dir) = tls {
        cmd.env("GRPC_TLS_DIR", dir);
    }
    Spawned::ready(
        cmd.env("NODE_PATH", modules)
            .env("OTEL_SERVICE_NAME", service),
    )
}

/// One side of the tonic peer (src/bin/tonic_peer.rs, which speaks
/// tests/py/grpc_calls.py's protocol), as [`grpc_py`]: `grpc_tonic!(role,
/// port, service)`. A macro because only an integration test knows the
/// binary's path (`CARGO_BIN_EXE_tonic_peer`; cargo builds it for them).
#[macro_export]
macro_rules! grpc_tonic {
    ($role:expr, $port:expr, $service:expr) => {
        $crate::grpc_peer(
            &mut ::std::process::Command::new(env!("CARGO_BIN_EXE_tonic_peer")),
            $role,
            $port,
            $service,
        )
    };
}

/// A test `$name` that runs `$body` as root (see [`root_test`]: skipped
/// when not root and not in CI).
#[macro_export]
macro_rules! root {
    ($name:ident, $body:expr) => {
        #[test]
        fn $name() {
            let Some(_g) = $crate::root_test(stringify!($name)) else {
                return;
            };
            $body
        }
    };
}

/// The next reply of a line-driven client, without its "ok " prefix
/// (waits up to 60 s).
pub fn reply(c: &Spawned) -> String {
    let l = c.line(Duration::from_secs(60));
    l.strip_prefix("ok ").unwrap_or(&l).to_string()
}

/// The spans of one side (`kind` "CLIENT" or "SERVER") of a gRPC pair of
/// processes: the client's service is `client`, the server's `server`.
pub fn grpc_side<'a>(spans: &'a [Value], kind: &str, client: &str, server: &str) -> Vec<&'a Value> {
    let svc = if kind == "CLIENT" { client } else { server };
    spans
        .iter()
        .filter(|s| span::f(s, "kind") == kind && span::res(s, "service.name") == svc)
        .collect()
}

/// An nginx answering "ok" on every path and tests/py/keepalive_client.py
/// (argument 3) with one connection open to it; returns them with the
/// client's first line, the connection's tuple (waited for up to
/// `timeout`).
pub fn nginx_keepalive_client(timeout: Duration) -> (Nginx, Spawned, Value) {
    let nginx = Nginx::start(
        "server { listen 127.0.0.1:{port}; root {root}; location / { return 200 \"ok\\n\"; } }",
    );
    let client = Spawned::new(
        Command::new(python())
            .arg(py_script("keepalive_client.py"))
            .arg(nginx.port.to_string())
            .arg("3"),
    );
    let tuple: Value = serde_json::from_str(&client.line(timeout)).unwrap();
    (nginx, client, tuple)
}

impl Drop for Spawned {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Reads a whole file as a string (empty when missing).
pub fn read_to_string(p: impl AsRef<Path>) -> String {
    let mut s = String::new();
    if let Ok(mut f) = std::fs::File::open(p) {
        let _ = f.read_to_string(&mut s);
    }
    s
}

/// JSON helpers for event lines.
pub mod ev {
    use serde_json::Value;

    /// String field.
    pub fn s<'a>(v: &'a Value, k: &str) -> &'a str {
        v.get(k).and_then(Value::as_str).unwrap_or("")
    }

    /// Number field.
    pub fn n(v: &Value, k: &str) -> u64 {
        v.get(k).and_then(Value::as_u64).unwrap_or(0)
    }

    /// Port of an "addr:port" field.
    pub fn port(v: &Value, k: &str) -> u16 {
        s(v, k)
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .unwrap_or(0)
    }
}

/// A real OTLP receiver (tests/py/otlp_receiver.py) writing one JSON line
/// per received span.
pub struct Receiver {
    child: Child,
    /// Its port.
    pub port: u16,
    /// While this file exists the receiver answers UNAVAILABLE/503.
    pub fail_file: PathBuf,
    kind: Otlp,
    out: PathBuf,
    _dir: tempdir::TempDir,
}

/// OTLP transport of a [`Receiver`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Otlp {
    /// OTLP/gRPC.
    Grpc,
    /// OTLP/HTTP protobuf.
    Http,
}

impl Receiver {
    /// Starts a receiver and waits until it listens.
    pub fn start(kind: Otlp) -> Receiver {
        let dir = tempdir::TempDir::new("tracer-otlp");
        let port = free_port();
        let out = dir.path().join("spans.jsonl");
        let fail_file = dir.path().join("fail");
        let flag = if kind == Otlp::Grpc {
            "--grpc-port"
        } else {
            "--http-port"
        };
        let mut child = Command::new(python())
            .arg(py_script("otlp_receiver.py"))
            .arg(flag)
            .arg(port.to_string())
            .arg("--out")
            .arg(&out)
            .arg("--fail-until-file")
            .arg(&fail_file)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("starting the OTLP receiver (run scripts/setup for its Python packages)");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(line.trim(), "ready", "OTLP receiver did not start");
        Receiver {
            child,
            port,
            fail_file,
            kind,
            out,
            _dir: dir,
        }
    }

    /// The endpoint to give the agent.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The agent flags that export to this receiver.
    pub fn agent_args(&self) -> Vec<String> {
        let proto = if self.kind == Otlp::Grpc {
            "grpc"
        } else {
            "http/protobuf"
        };
        vec![
            "--otlp-endpoint".into(),
            self.endpoint(),
            "--otlp-protocol".into(),
            proto.into(),
        ]
    }

    /// Every span received so far. A last line the receiver is still
    /// writing (no newline yet) is not one yet.
    pub fn spans(&self) -> Vec<Value> {
        let text = read_to_string(&self.out);
        let whole = text.rfind('\n').map_or("", |end| &text[..end]);
        whole
            .lines()
            .map(|l| {
                serde_json::from_str(l)
                    .unwrap_or_else(|e| panic!("receiver wrote bad JSON ({e}): {l}"))
            })
            .collect()
    }

    /// The raw received text (to search for leaked secrets).
    pub fn raw(&self) -> String {
        read_to_string(&self.out)
    }

    /// Waits until `done(spans)` holds, or the timeout; returns the spans.
    pub fn wait_for(&self, timeout: Duration, done: impl Fn(&[Value]) -> bool) -> Vec<Value> {
        let start = Instant::now();
        loop {
            let spans = self.spans();
            if done(&spans) || start.elapsed() > timeout {
                return spans;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A Python threaded HTTP backend (tests/py/chain_backend.py) with its own
/// OTEL_SERVICE_NAME, optionally calling a downstream service.
pub struct Backend {
    child: Child,
    /// Its port.
    pub port: u16,
}

impl Backend {
    /// Starts it and waits for "ready".
    pub fn start(service: &str, downstream: Option<u16>) -> Backend {
        let port = free_port();
        let mut cmd = Command::new(python());
        cmd.arg(py_script("chain_backend.py")).arg(port.to_string());
        if let Some(d) = downstream {
            cmd.arg(format!("http://127.0.0.1:{d}"));
        }
        let mut child = cmd
            .env("OTEL_SERVICE_NAME", service)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("starting a Python backend");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(line.trim(), "ready");
        Backend { child, port }
    }

    /// Its pid.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Span JSON (receiver format) helpers.
pub mod span {
    use serde_json::Value;

    /// A span attribute as text (numbers printed).
    pub fn attr(s: &Value, k: &str) -> String {
        match &s["attributes"][k] {
            Value::String(v) => v.clone(),
            Value::Null => String::new(),
            v => v.to_string(),
        }
    }

    /// A resource attribute as text.
    pub fn res(s: &Value, k: &str) -> String {
        match &s["resource"][k] {
            Value::String(v) => v.clone(),
            Value::Null => String::new(),
            v => v.to_string(),
        }
    }

    /// A string field.
    pub fn f<'a>(s: &'a Value, k: &str) -> &'a str {
        s[k].as_str().unwrap_or("")
    }
}

/// A Pyroscope-compatible ingest endpoint (tests/py/pyroscope_receiver.py)
/// writing one JSON line per decoded profile.
pub struct Pyroscope {
    child: Child,
    /// Its port.
    pub port: u16,
    out: PathBuf,
    _dir: tempdir::TempDir,
}

impl Pyroscope {
    /// Starts it and waits until it listens.
    pub fn start() -> Pyroscope {
        let dir = tempdir::TempDir::new("tracer-pyroscope");
        let port = free_port();
        let out = dir.path().join("profiles.jsonl");
        let mut child = Command::new(python())
            .arg(py_script("pyroscope_receiver.py"))
            .args(["--port", &port.to_string(), "--out"])
            .arg(&out)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("starting the Pyroscope receiver");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(line.trim(), "ready", "Pyroscope receiver did not start");
        Pyroscope {
            child,
            port,
            out,
            _dir: dir,
        }
    }

    /// Its base URL.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The agent's arguments to send it profiles every second, printing
    /// no traces.
    pub fn agent_args(&self) -> Vec<String> {
        ["--print", "none", "--pyroscope-url", &self.url()]
            .into_iter()
            .chain(["--profile-interval-ms", "1000"])
            .map(String::from)
            .collect()
    }

    /// Profiles received so far.
    pub fn profiles(&self) -> Vec<Value> {
        read_to_string(&self.out)
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }
}

impl Drop for Pyroscope {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// (thread name, nice value) of every thread of a process.
pub fn thread_nices(pid: u32) -> Vec<(String, i64)> {
    let mut out = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let stat = std::fs::read_to_string(task.unwrap().path().join("stat")).unwrap();
        // "tid (comm) state ppid ...": nice is the 17th field after comm.
        let (comm, rest) = stat.rsplit_once(") ").unwrap();
        let nice = rest.split(' ').nth(16).unwrap().parse().unwrap();
        out.push((comm.split_once(" (").unwrap().1.to_string(), nice));
    }
    out
}
