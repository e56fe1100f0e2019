//! Export capacity: the spans of a replay of recorded traffic, paced at
//! `--rate` spans/s (default 150,000) for `--seconds` (default 3), through
//! the agent's OTLP exporter to a discarding OTLP/HTTP endpoint (nginx
//! answering 200 to every POST). Prints the CPU of the submitting thread
//! (encoding) and of the export thread (sending), and fails if a span was
//! dropped.
//!
//!     cargo bench -p tracer --bench export [-- --rate=N --seconds=N]
use std::{
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use tracer::{
    clock::Clock,
    export::{
        config::{ExportConfig, Protocol},
        otlp::Exporter,
    },
};

mod common;
use common::{arg, spans_with_resources, thread_cpu_ns, Counting};

#[global_allocator]
static GLOBAL: Counting = Counting;

/// nginx answering 200 to every request (it reads and drops the body).
struct NginxSink {
    child: Child,
    port: u16,
    dir: std::path::PathBuf,
}

impl NginxSink {
    fn start() -> NginxSink {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let dir = std::env::temp_dir().join(format!("tracer-bench-export-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("a temporary directory");
        let conf = dir.join("nginx.conf");
        std::fs::write(
            &conf,
            format!(
                "worker_processes 1; daemon off; pid {d}/nginx.pid; error_log {d}/error.log;\n\
                 events {{ worker_connections 64; }}\n\
                 http {{ access_log off; client_body_temp_path {d}; client_max_body_size 64m;\n\
                   server {{ listen 127.0.0.1:{port}; location / {{ return 200 \"\"; }} }} }}\n",
                d = dir.display()
            ),
        )
        .expect("writing nginx.conf");
        let child = Command::new("nginx")
            .arg("-p")
            .arg(&dir)
            .arg("-c")
            .arg(&conf)
            .stderr(Stdio::null())
            .spawn()
            .expect("starting nginx (scripts/setup installs it)");
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "nginx did not listen");
            std::thread::sleep(Duration::from_millis(20));
        }
        NginxSink { child, port, dir }
    }
}

impl Drop for NginxSink {
    fn drop(&mut self) {
        // SIGTERM, not SIGKILL: the master then stops its worker too.
        // SAFETY: signals our own child process.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// CPU seconds of this process's threads named `name`.
fn threads_cpu(name: &str) -> f64 {
    let tick = 100.0; // USER_HZ on Linux
    let mut total = 0.0;
    for t in std::fs::read_dir("/proc/self/task")
        .into_iter()
        .flatten()
        .flatten()
    {
        let comm = std::fs::read_to_string(t.path().join("comm")).unwrap_or_default();
        if comm.trim() != name {
            continue;
        }
        let stat = std::fs::read_to_string(t.path().join("stat")).unwrap_or_default();
        // utime and stime, the 12th and 13th fields after the command.
        let fields: Vec<f64> = stat
            .rsplit_once(')')
            .map(|(_, r)| {
                r.split_whitespace()
                    .map(|v| v.parse().unwrap_or(0.0))
                    .collect()
            })
            .unwrap_or_default();
        total += (fields.get(11).unwrap_or(&0.0) + fields.get(12).unwrap_or(&0.0)) / tick;
    }
    total
}

fn main() {
    let rate = arg("rate", 150_000).max(100);
    let seconds = arg("seconds", 3);
    let (spans, res, _) = spans_with_resources();
    let sink = NginxSink::start();
    let cfg = ExportConfig::new(
        format!("http://127.0.0.1:{}/v1/traces", sink.port),
        Protocol::HttpProtobuf,
    );
    let mut e = Exporter::start(cfg, Clock::new()).expect("starting the exporter");
    let total = rate * seconds;
    let step = rate / 100; // every 10 ms
    let start = Instant::now();
    let export0 = threads_cpu("tracer-export");
    let mut sent = 0u64;
    let mut encode_ns = 0;
    while sent < total {
        let due = start + Duration::from_millis(sent / step * 10);
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        let cpu0 = thread_cpu_ns();
        for _ in 0..step {
            let i = (sent % spans.len() as u64) as usize;
            e.submit(&spans[i], &res[i]);
            sent += 1;
        }
        e.tick();
        encode_ns += thread_cpu_ns() - cpu0;
    }
    let pushing = start.elapsed();
    // Read while the thread lives (the last request is sent at shutdown).
    let export_cpu = threads_cpu("tracer-export") - export0;
    let c = e.shutdown(Duration::from_secs(10));
    println!(
        "capacity: {sent} spans at {rate}/s in {:.2} s; encoding {:.3} s CPU ({} ns/span) \
         on the submitting thread, sending {export_cpu:.2} s CPU on the export thread; {c:?}",
        pushing.as_secs_f64(),
        encode_ns as f64 / 1e9,
        encode_ns / sent.max(1),
    );
    assert_eq!(c.worker.exported, sent, "every span exported: {c:?}");
    assert_eq!(c.worker.dropped(), 0, "no span dropped: {c:?}");
}
