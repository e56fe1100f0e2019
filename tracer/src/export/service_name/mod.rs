//! The `service.name` of a traced process: the name its users know it by,
//! chosen from what /proc says about it by a fixed order of rules.
//!
//! Every Python service is `python3.11` and every Java service `java` when
//! a process is named after its executable, and Debian's `redis-server` is
//! `redis-check-rdb` (the file its symlink points to). So, first rule that
//! gives a name wins:
//!
//! 1. a user rule (`--service-name PATTERN=NAME`, see [`Rules`]): the
//!    operator has the last word;
//! 2. the process's own `OTEL_SERVICE_NAME`, then `service.name` in its
//!    `OTEL_RESOURCE_ATTRIBUTES` (what an OpenTelemetry SDK would report);
//! 3. the program an interpreter or runtime runs, from its command line:
//!    Python's script or `-m` module, or the ASGI/WSGI application of
//!    uvicorn, gunicorn or hypercorn; Node's main script; `java -jar`'s jar
//!    or Java's main class; Ruby's and Perl's script; the `.dll` of
//!    `dotnet`; the pool of a PHP-FPM worker;
//! 4. `argv[0]`'s file name, so a multi-call binary or a symlink keeps the
//!    name it was started as; a title the process wrote over its arguments
//!    (`nginx: worker process`) is cut at the first `:` or space;
//! 5. the executable's file name, then the kernel's `comm` (a process
//!    already gone from /proc has only that).
//!
//! Names from a command line are file and module names, never option
//! values: they hold no pid, port, time or secret, so a restarted service
//! keeps its name. A name that says what kind of file it is rather than
//! which service (`app.py`, `main.py`, `server.js`, `index.js`,
//! `manage.py`, `app.jar`, class `Main`: [`GENERIC_STEMS`]) is replaced by
//! the nearest meaningful directory around it: `/srv/billing/app.py` is
//! `billing`, `/srv/billing/src/main.py` too (directories such as `src`,
//! `bin`, `srv` or `classes` are skipped: [`GENERIC_DIRS`]); then the
//! working directory's; else the file's own name stays. A version at the
//! end of a jar name is dropped (`billing-2.3.1.jar` is `billing`), so an
//! upgrade keeps the name too.
//!
//! [`resolve`] is pure (what /proc said in, name and rule out) and
//! table-tested; the resource cache reads /proc and calls it once per
//! process. `rules.rs` holds the user rules (step 1), `runtimes.rs` the
//! command lines of interpreters and `argv[0]` (steps 3 and 4).
use std::fmt;

mod rules;
mod runtimes;

pub use rules::{RuleError, Rules, RulesError};
use runtimes::{argv0_name, base_name, from_command_line};
pub use runtimes::{GENERIC_DIRS, GENERIC_STEMS};

/// Whether a command line is a worker Python's `multiprocessing` started
/// (`python -c "from multiprocessing.spawn import spawn_main; ..."
/// --multiprocessing-fork`, the forkserver and its children): it serves
/// the program that started it (hypercorn's and uvicorn's workers with the
/// spawn start method), so it takes that program's name.
pub fn is_multiprocessing_worker(argv: &[String]) -> bool {
    argv.iter().any(|a| a.starts_with("from multiprocessing."))
}

/// Longest name taken from a command line, in bytes.
const MAX_NAME: usize = 128;

/// What /proc says about a process (any part may be missing: a process
/// seen only after it exited has only `comm`).
#[derive(Clone, Copy, Debug, Default)]
pub struct Process<'a> {
    /// The command line (`/proc/PID/cmdline`, unredacted: it is only read
    /// here, never exported as is).
    pub argv: &'a [String],
    /// Its `OTEL_SERVICE_NAME`.
    pub otel_service_name: Option<&'a str>,
    /// `service.name` in its `OTEL_RESOURCE_ATTRIBUTES`.
    pub otel_resource_service_name: Option<&'a str>,
    /// The resolved executable (`/proc/PID/exe`).
    pub exe: Option<&'a str>,
    /// Its working directory (`/proc/PID/cwd`).
    pub cwd: Option<&'a str>,
    /// `/proc/PID/cgroup` as read.
    pub cgroup: Option<&'a str>,
    /// The kernel's name of the process (`comm`).
    pub comm: Option<&'a str>,
}

/// The rule that chose a name (exported as `tracer.service.name.source`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Source {
    /// A `--service-name` rule, with its pattern.
    Rule(String),
    /// The process's `OTEL_SERVICE_NAME`.
    OtelServiceName,
    /// `service.name` in the process's `OTEL_RESOURCE_ATTRIBUTES`.
    OtelResourceAttributes,
    /// A Python script.
    PythonScript,
    /// `python -m MODULE`.
    PythonModule,
    /// The ASGI/WSGI application of uvicorn, gunicorn or hypercorn.
    PythonApp,
    /// Node's main script.
    NodeScript,
    /// `java -jar`.
    JavaJar,
    /// Java's main class (or module).
    JavaMainClass,
    /// A Java source file run as a program (`java Billing.java`).
    JavaSourceFile,
    /// A Ruby script.
    RubyScript,
    /// A Perl script.
    PerlScript,
    /// `dotnet APP.dll`.
    DotnetDll,
    /// A PHP-FPM worker's pool.
    PhpFpmPool,
    /// `argv[0]`'s file name.
    Argv0,
    /// The executable's file name.
    Exe,
    /// The kernel's `comm`.
    Comm,
    /// Nothing known: `unknown_service`.
    Unknown,
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = match self {
            Source::Rule(pattern) => return write!(f, "rule:{pattern}"),
            Source::OtelServiceName => "OTEL_SERVICE_NAME",
            Source::OtelResourceAttributes => "OTEL_RESOURCE_ATTRIBUTES",
            Source::PythonScript => "python_script",
            Source::PythonModule => "python_module",
            Source::PythonApp => "python_app",
            Source::NodeScript => "node_script",
            Source::JavaJar => "java_jar",
            Source::JavaMainClass => "java_main_class",
            Source::JavaSourceFile => "java_source_file",
            Source::RubyScript => "ruby_script",
            Source::PerlScript => "perl_script",
            Source::DotnetDll => "dotnet_dll",
            Source::PhpFpmPool => "php_fpm_pool",
            Source::Argv0 => "argv0",
            Source::Exe => "exe",
            Source::Comm => "comm",
            Source::Unknown => "unknown",
        };
        f.write_str(s)
    }
}

/// A service name and the rule that chose it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Named {
    /// The name.
    pub name: String,
    /// The rule.
    pub source: Source,
}

/// The service name of `p`: the first of `rules` that matches, else the
/// first rule of the module's order that gives a name.
pub fn resolve(p: &Process<'_>, rules: &Rules) -> Named {
    let auto = automatic(p);
    match rules.find(p, &auto.name) {
        Some(rule) => Named {
            name: rule.name.clone(),
            source: Source::Rule(rule.pattern.clone()),
        },
        None => auto,
    }
}

fn automatic(p: &Process<'_>) -> Named {
    let named = |name: String, source| Named { name, source };
    let env = |v: Option<&str>| v.map(str::trim).filter(|v| !v.is_empty()).map(String::from);
    if let Some(n) = env(p.otel_service_name) {
        return named(n, Source::OtelServiceName);
    }
    if let Some(n) = env(p.otel_resource_service_name) {
        return named(n, Source::OtelResourceAttributes);
    }
    if let Some((n, source)) = from_command_line(p.argv, p.cwd) {
        return named(n, source);
    }
    if let Some(n) = p.argv.first().and_then(|a| argv0_name(a, p.exe, p.cwd)) {
        return named(n, Source::Argv0);
    }
    if let Some(n) = p.exe.and_then(|e| clean(base_name(e))) {
        return named(n, Source::Exe);
    }
    if let Some(n) = env(p.comm) {
        return named(n, Source::Comm);
    }
    named("unknown_service".into(), Source::Unknown)
}

/// A name taken from a command line, or nothing if it does not look like
/// a name: one word, no separators of values (`=`, `:`, `@`, `/`, `?`,
/// `&`), at least one letter or digit; cut at [`MAX_NAME`] bytes.
fn clean(s: &str) -> Option<String> {
    let s = s.trim();
    let bad = |c: char| {
        c.is_whitespace()
            || c.is_control()
            || matches!(c, '=' | ':' | '@' | '/' | '\\' | '?' | '&' | '"' | '\'')
    };
    if s.is_empty() || s.chars().any(bad) || !s.chars().any(char::is_alphanumeric) {
        return None;
    }
    Some(s[..s.floor_char_boundary(MAX_NAME)].to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Arguments split at spaces; a line starting with `=` is one argument:
    /// a title the process wrote over its command line.
    pub(super) fn argv(line: &str) -> Vec<String> {
        match line.strip_prefix('=') {
            Some(title) => vec![title.to_string()],
            None => line.split(' ').map(String::from).collect(),
        }
    }

    #[test]
    fn environment_first_then_exe_then_comm() {
        let args = argv("python3 /srv/billing/app.py");
        let full = Process {
            argv: &args,
            otel_service_name: Some(" checkout "),
            otel_resource_service_name: Some("from-attrs"),
            exe: Some("/usr/bin/python3.11"),
            cwd: Some("/"),
            cgroup: None,
            comm: Some("python3"),
        };
        let rules = Rules::default();
        let name = |p: &Process<'_>| {
            let n = resolve(p, &rules);
            (n.name, n.source.to_string())
        };
        assert_eq!(name(&full), ("checkout".into(), "OTEL_SERVICE_NAME".into()));
        let p = Process {
            otel_service_name: Some("  "),
            ..full
        };
        assert_eq!(
            name(&p),
            ("from-attrs".into(), "OTEL_RESOURCE_ATTRIBUTES".into())
        );
        // argv unreadable (or empty, as for kernel threads).
        let p = Process {
            argv: &[],
            otel_service_name: None,
            otel_resource_service_name: None,
            ..full
        };
        assert_eq!(name(&p), ("python3.11".into(), "exe".into()));
        let p = Process { exe: None, ..p };
        assert_eq!(name(&p), ("python3".into(), "comm".into()));
        let p = Process {
            comm: Some("Web Content"),
            ..p
        };
        assert_eq!(name(&p), ("Web Content".into(), "comm".into()));
        assert_eq!(
            name(&Process::default()),
            ("unknown_service".into(), "unknown".into())
        );
    }

    /// Restarts change pids, ports and arguments; the name stays, and no
    /// argument value ever becomes the name.
    #[test]
    fn names_are_stable_and_never_option_values() {
        let py = Some("/usr/bin/python3.11");
        for (a, b) in [
            (
                "python3 /srv/billing/app.py --port 8001 --pid-file /run/b.1234.pid",
                "python3 /srv/billing/app.py --port 9002 --pid-file /run/b.99.pid",
            ),
            (
                "/venv/bin/python /venv/bin/uvicorn main:app --port 1",
                "/venv/bin/python /venv/bin/uvicorn --port 2 main:app",
            ),
            ("redis-server 127.0.0.1:6379", "redis-server 127.0.0.1:7000"),
        ] {
            let (a, b) = (argv(a), argv(b));
            let name = |args: &[String]| {
                resolve(
                    &Process {
                        argv: args,
                        exe: py,
                        cwd: Some("/srv/inventory"),
                        ..Process::default()
                    },
                    &Rules::default(),
                )
                .name
            };
            assert_eq!(name(&a), name(&b));
        }
        for line in [
            "python3 -W hunter2 /",
            "python3 -X s3cr3t",
            "node --require s3cr3t",
            "node --title s3cr3t",
            "java -cp s3cr3t",
            "java -jar",
            "python3 -m uvicorn --ssl-keyfile-password=s3cr3t",
            "/venv/bin/python /venv/bin/gunicorn --env TOKEN=s3cr3t",
            "ruby -e s3cr3t",
            "/venv/bin/python /venv/bin/gunicorn billing --db-password s3cr3t",
            "node --some-token s3cr3t",
            "ruby --api-token s3cr3t",
            "perl -I s3cr3t",
        ] {
            let args = argv(line);
            let n = resolve(
                &Process {
                    argv: &args,
                    exe: py,
                    cwd: Some("/"),
                    ..Process::default()
                },
                &Rules::default(),
            );
            assert!(!n.name.contains("s3cr3t"), "{line}: {n:?}");
            assert!(!n.name.contains("hunter2"), "{line}: {n:?}");
        }
        // A name never carries separators of values.
        assert_eq!(clean("a=b"), None);
        assert_eq!(clean("user:pw"), None);
        assert_eq!(clean("u@h"), None);
        assert_eq!(clean("---"), None);
        assert_eq!(clean(&"x".repeat(300)).map(|s| s.len()), Some(MAX_NAME));
    }
}
