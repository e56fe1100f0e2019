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
//! process.
use std::fmt;

use globset::{GlobBuilder, GlobMatcher};

use super::cmdline::is_sensitive;

/// Longest name taken from a command line, in bytes.
const MAX_NAME: usize = 128;
/// Longest name a user rule may give, in bytes.
const MAX_RULE_NAME: usize = 255;

/// File names (without extension, compared in lower case) that say what
/// kind of file a program is, not which service it is.
pub const GENERIC_STEMS: [&str; 17] = [
    "app",
    "application",
    "main",
    "__main__",
    "server",
    "index",
    "run",
    "manage",
    "wsgi",
    "asgi",
    "start",
    "serve",
    "rails",
    "rackup",
    "puma",
    "unicorn",
    "bundle",
];

/// Directory names (lower case) that say nothing about the service in
/// them: skipped when a generic file name is replaced by its directory.
pub const GENERIC_DIRS: [&str; 36] = [
    "src",
    "lib",
    "lib64",
    "libexec",
    "bin",
    "sbin",
    "app",
    "apps",
    "dist",
    "build",
    "out",
    "target",
    "classes",
    "current",
    "release",
    "releases",
    "srv",
    "opt",
    "usr",
    "local",
    "home",
    "var",
    "www",
    "html",
    "public",
    "code",
    "scripts",
    "tmp",
    "root",
    "share",
    "node_modules",
    "venv",
    "env",
    "site-packages",
    "dist-packages",
    "workspace",
];

/// Trailing parts of a Python module name that name its entry point, not
/// the service: `payments.wsgi` is `payments`, `main` alone is generic.
const ENTRY_MODULES: [&str; 6] = ["__main__", "main", "app", "application", "wsgi", "asgi"];

/// Leading Java package names (`com.acme.billing.Main` is `billing`).
const JAVA_PACKAGE_ROOTS: [&str; 6] = ["com", "org", "net", "io", "edu", "gov"];

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

/// The program an interpreter or runtime runs, from its command line.
fn from_command_line(argv: &[String], cwd: Option<&str>) -> Option<(String, Source)> {
    let argv0 = argv.first()?;
    // Titles written over the arguments by the process itself.
    if let Some(pool) = argv0
        .strip_prefix("php-fpm")
        .and_then(|t| t.split_once(": pool "))
        .map(|(_, pool)| pool.trim())
    {
        // `www` is the pool every PHP-FPM ships with: it names nothing.
        return (pool != "www")
            .then(|| clean(pool))
            .flatten()
            .map(|n| (n, Source::PhpFpmPool));
    }
    if let Some(title) = argv0.strip_prefix("gunicorn: ") {
        // `gunicorn: worker [billing.api:app]` (with setproctitle).
        let spec = title.split_once('[')?.1.split(']').next()?;
        let module = spec.split(':').next()?;
        return module_name(module, None, cwd).map(|n| (n, Source::PythonApp));
    }
    let program = base_name(argv0);
    let args = &argv[1..];
    if versioned(program, "python") || versioned(program, "pypy") {
        python(args, cwd)
    } else if program == "node" || program == "nodejs" {
        node(args, cwd).map(|n| (n, Source::NodeScript))
    } else if program == "java" {
        java(args, cwd)
    } else if versioned(program, "ruby") {
        ruby(args, cwd).map(|n| (n, Source::RubyScript))
    } else if versioned(program, "perl") {
        perl(args, cwd).map(|n| (n, Source::PerlScript))
    } else if program == "dotnet" {
        let dll = args
            .iter()
            .find(|a| a.to_ascii_lowercase().ends_with(".dll"))?;
        file_name(dll, cwd, false).map(|n| (n, Source::DotnetDll))
    } else {
        None
    }
}

/// `name` is `prefix` with an optional version (`python3.11`, `ruby3.1`).
fn versioned(name: &str, prefix: &str) -> bool {
    name.strip_prefix(prefix)
        .is_some_and(|v| v.bytes().all(|b| b.is_ascii_digit() || b == b'.'))
}

fn python(args: &[String], cwd: Option<&str>) -> Option<(String, Source)> {
    let mut i = 0;
    while let Some(a) = args.get(i) {
        if !a.starts_with('-') || a == "-" {
            break;
        }
        if a.starts_with("--") {
            i += if a == "--check-hash-based-pycs" { 2 } else { 1 };
            continue;
        }
        // One-letter options, possibly grouped: -u, -OO, -Wignore, -X dev,
        // -m module, -c command.
        let letters = &a[1..];
        for (pos, c) in letters.char_indices() {
            let rest = &letters[pos + c.len_utf8()..];
            match c {
                'c' => return None,
                'm' => {
                    let (module, after) = if rest.is_empty() {
                        (args.get(i + 1)?.as_str(), i + 2)
                    } else {
                        (rest, i + 1)
                    };
                    let after = args.get(after..).unwrap_or_default();
                    return if is_app_server(module) {
                        python_app(after, cwd).map(|n| (n, Source::PythonApp))
                    } else {
                        module_name(module, None, cwd).map(|n| (n, Source::PythonModule))
                    };
                }
                'W' | 'X' => {
                    if rest.is_empty() {
                        i += 1;
                    }
                    break;
                }
                _ => {}
            }
        }
        i += 1;
    }
    let script = args.get(i)?;
    if script == "-" {
        return None;
    }
    // Console scripts of the servers run as `python /venv/bin/uvicorn ...`.
    if is_app_server(strip_extension(base_name(script))) {
        return python_app(&args[i + 1..], cwd).map(|n| (n, Source::PythonApp));
    }
    file_name(script, cwd, false).map(|n| (n, Source::PythonScript))
}

fn is_app_server(name: &str) -> bool {
    matches!(name, "uvicorn" | "gunicorn" | "hypercorn")
}

/// Options of uvicorn, gunicorn and hypercorn that take the next argument
/// as their value (only those whose value could pass for an application).
const APP_SERVER_VALUE_OPTIONS: [&str; 31] = [
    "-b",
    "--bind",
    "-c",
    "--config",
    "-k",
    "--worker-class",
    "-w",
    "--workers",
    "--host",
    "--port",
    "--uds",
    "--fd",
    "--loop",
    "--http",
    "--ws",
    "--lifespan",
    "--interface",
    "--log-level",
    "--log-config",
    "--env-file",
    "--root-path",
    "--paste",
    "--pythonpath",
    "-n",
    "--name",
    "-u",
    "--user",
    "-g",
    "--group",
    "-e",
    "--env",
];

/// The application of uvicorn, gunicorn or hypercorn (`MODULE:ATTR`, or
/// gunicorn's bare `MODULE`), named by its module.
fn python_app(args: &[String], cwd: Option<&str>) -> Option<String> {
    let mut dir = None;
    let mut with_attr = None;
    let mut bare = None;
    let mut i = 0;
    while let Some(a) = args.get(i) {
        i += 1;
        if a.starts_with('-') {
            if let Some((key, value)) = a.split_once('=') {
                if key == "--chdir" || key == "--app-dir" {
                    dir = Some(value);
                }
            } else if a == "--chdir" || a == "--app-dir" {
                dir = args.get(i).map(String::as_str);
                i += 1;
            } else if takes_value(a, &APP_SERVER_VALUE_OPTIONS) {
                i += 1;
            }
            continue;
        }
        match a.split_once(':') {
            Some((module, attr)) => {
                let attr_ok = attr
                    .chars()
                    .next()
                    .is_some_and(|c| c.is_ascii_alphabetic() || c == '_');
                if with_attr.is_none() && attr_ok && is_dotted_identifier(module) {
                    with_attr = Some(module);
                }
            }
            None if is_dotted_identifier(a) => bare = Some(a.as_str()),
            None => {}
        }
    }
    module_name(with_attr.or(bare)?, dir, cwd)
}

/// Whether option `opt` takes the next argument as its value: it is one of
/// `known`, or it names a credential (`--db-password PW`), whose value
/// must never be mistaken for a program.
fn takes_value(opt: &str, known: &[&str]) -> bool {
    known.contains(&opt) || (!opt.contains('=') && is_sensitive(opt))
}

fn is_dotted_identifier(s: &str) -> bool {
    !s.is_empty()
        && s.split('.').all(|part| {
            let mut chars = part.chars();
            chars
                .next()
                .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
                && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        })
}

/// A Python module as a service name: whole (`http.server`), without
/// trailing entry-point parts (`payments.wsgi` is `payments`); a module
/// that is only an entry point (`main`) takes the nearest meaningful
/// directory of `dir` (relative to `cwd`), then of `cwd`.
fn module_name(module: &str, dir: Option<&str>, cwd: Option<&str>) -> Option<String> {
    if !is_dotted_identifier(module) {
        return None;
    }
    let parts: Vec<&str> = module.split('.').collect();
    let mut keep = parts.len();
    while keep > 0 && ENTRY_MODULES.contains(&parts[keep - 1]) {
        keep -= 1;
    }
    if keep > 0 {
        return clean(&parts[..keep].join("."));
    }
    let dir = dir.map(|d| absolute(d, cwd));
    project_dir(dir.as_deref(), cwd).or_else(|| clean(module))
}

/// Node options that take the next argument as their value.
const NODE_VALUE_OPTIONS: [&str; 14] = [
    "-r",
    "--require",
    "--import",
    "--loader",
    "--experimental-loader",
    "-C",
    "--conditions",
    "--title",
    "--input-type",
    "--env-file",
    "--openssl-config",
    "--icu-data-dir",
    "--redirect-warnings",
    "--watch-path",
];

fn node(args: &[String], cwd: Option<&str>) -> Option<String> {
    let mut i = 0;
    while let Some(a) = args.get(i) {
        match a.as_str() {
            "--" => {
                i += 1;
                break;
            }
            "-e" | "--eval" | "-p" | "--print" | "-i" | "--interactive" | "-c" | "--check"
            | "--test" => return None,
            a if takes_value(a, &NODE_VALUE_OPTIONS) => i += 2,
            a if a.starts_with('-') => i += 1,
            _ => break,
        }
    }
    let script = absolute(args.get(i)?, cwd);
    // A tool run from a project's node_modules serves that project.
    let parts = normalized(&script);
    if let Some(pos) = parts.iter().position(|p| *p == "node_modules") {
        return last_meaningful(&parts[..pos])
            .or_else(|| project_dir(None, cwd))
            .or_else(|| file_name(&script, cwd, false));
    }
    file_name(&script, cwd, false)
}

/// Java options that take the next argument as their value.
const JAVA_VALUE_OPTIONS: [&str; 11] = [
    "-p",
    "--module-path",
    "--upgrade-module-path",
    "--add-modules",
    "--add-opens",
    "--add-exports",
    "--add-reads",
    "--patch-module",
    "--limit-modules",
    "--source",
    "--enable-native-access",
];

fn java(args: &[String], cwd: Option<&str>) -> Option<(String, Source)> {
    let mut class_path = None;
    let mut i = 0;
    while let Some(a) = args.get(i) {
        match a.as_str() {
            "-jar" => {
                let jar = args.get(i + 1)?;
                return file_name(jar, cwd, true).map(|n| (n, Source::JavaJar));
            }
            "-cp" | "-classpath" | "--class-path" => {
                class_path = args.get(i + 1).map(String::as_str);
                i += 2;
            }
            "-m" | "--module" => {
                let module = args.get(i + 1)?;
                return java_module(module, class_path, cwd);
            }
            a if a.starts_with("--module=") => {
                return java_module(&a["--module=".len()..], class_path, cwd);
            }
            a if takes_value(a, &JAVA_VALUE_OPTIONS) => i += 2,
            a if a.starts_with('-') || a.starts_with('@') => i += 1,
            class => return java_class(class, class_path, cwd).map(|n| (n, Source::JavaMainClass)),
        }
    }
    None
}

/// `MODULE/CLASS` or `MODULE`.
fn java_module(
    spec: &str,
    class_path: Option<&str>,
    cwd: Option<&str>,
) -> Option<(String, Source)> {
    let class = spec.rsplit('/').next().unwrap_or(spec);
    java_class(class, class_path, cwd).map(|n| (n, Source::JavaMainClass))
}

/// The simple name of a main class (`com.acme.Billing` is `Billing`); a
/// generic one (`Main`) takes the nearest meaningful package name
/// (`com.acme.billing.Main` is `billing`), else the first class-path
/// entry's name, else the working directory's.
fn java_class(class: &str, class_path: Option<&str>, cwd: Option<&str>) -> Option<String> {
    if !is_dotted_identifier(class) {
        return None;
    }
    let parts: Vec<&str> = class.split('.').collect();
    let meaningful = parts.iter().rev().find(|p| {
        let lower = p.to_ascii_lowercase();
        !is_generic_stem(&lower) && !JAVA_PACKAGE_ROOTS.contains(&lower.as_str())
    });
    if let Some(name) = meaningful {
        return clean(name);
    }
    let entry = class_path
        .and_then(|cp| cp.split(':').find(|e| !e.is_empty()))
        .filter(|e| !e.contains('*'));
    let from_class_path = entry.and_then(|e| {
        if e.to_ascii_lowercase().ends_with(".jar") {
            file_name(e, cwd, true)
        } else {
            project_dir(Some(&absolute(e, cwd)), None)
        }
    });
    from_class_path
        .or_else(|| project_dir(None, cwd))
        .or_else(|| clean(parts.last()?))
}

fn ruby(args: &[String], cwd: Option<&str>) -> Option<String> {
    let mut i = 0;
    while let Some(a) = args.get(i) {
        if !a.starts_with('-') || a == "-" {
            break;
        }
        if a == "--" {
            i += 1;
            break;
        }
        i += match a.as_str() {
            "-e" => return None,
            "-I"
            | "-r"
            | "-C"
            | "-E"
            | "--encoding"
            | "--external-encoding"
            | "--internal-encoding" => 2,
            a if takes_value(a, &[]) => 2,
            _ => 1,
        };
    }
    script_arg(args.get(i)?, cwd)
}

fn perl(args: &[String], cwd: Option<&str>) -> Option<String> {
    let mut i = 0;
    while let Some(a) = args.get(i) {
        if !a.starts_with('-') || a == "-" {
            break;
        }
        if a == "--" {
            i += 1;
            break;
        }
        if a.starts_with("-e") || a.starts_with("-E") {
            return None;
        }
        i += if takes_value(a, &["-I", "-M", "-m"]) {
            2
        } else {
            1
        };
    }
    script_arg(args.get(i)?, cwd)
}

fn script_arg(script: &str, cwd: Option<&str>) -> Option<String> {
    (script != "-")
        .then(|| file_name(script, cwd, false))
        .flatten()
}

/// `argv[0]`'s file name. A title the process wrote over its arguments
/// (`nginx: worker process`, `postgres: checkpointer`) is cut at the first
/// `:` or space; a login shell's leading `-` is dropped.
fn argv0_name(argv0: &str, exe: Option<&str>, cwd: Option<&str>) -> Option<String> {
    let a = argv0.strip_prefix('-').unwrap_or(argv0);
    let is_exe = exe.is_some_and(|e| e == a || base_name(e) == base_name(a));
    let a = if is_exe {
        a
    } else {
        a.split([':', ' ', '\t']).next().unwrap_or(a)
    };
    // A generic binary name (`./server`) looks around its own directory.
    let path = match exe {
        Some(e) if !a.contains('/') && base_name(e) == a => e,
        _ => a,
    };
    file_name(path, cwd, false)
}

/// The file name of a script, jar, dll or binary without its extension; a
/// generic one takes the nearest meaningful directory around the file,
/// then around `cwd`. `strip_version`: also drop a trailing version
/// (`billing-2.3.1-SNAPSHOT` is `billing`).
fn file_name(path: &str, cwd: Option<&str>, strip_version: bool) -> Option<String> {
    let path = absolute(path, cwd);
    let parts = normalized(&path);
    let (file, dirs) = parts.split_last()?;
    let mut stem = strip_extension(file);
    if strip_version {
        stem = strip_version_suffix(stem);
    }
    if !is_generic_stem(&stem.to_ascii_lowercase()) {
        return clean(stem);
    }
    last_meaningful(dirs)
        .or_else(|| project_dir(None, cwd))
        .or_else(|| clean(stem))
}

fn is_generic_stem(lower: &str) -> bool {
    GENERIC_STEMS.contains(&lower)
}

/// Extensions of programs dropped from a file name.
const PROGRAM_EXTENSIONS: [&str; 17] = [
    "py", "pyc", "pyz", "pyw", "js", "mjs", "cjs", "ts", "mts", "cts", "jar", "war", "dll", "rb",
    "pl", "php", "sh",
];

fn strip_extension(file: &str) -> &str {
    match file.rsplit_once('.') {
        Some((stem, ext))
            if !stem.is_empty()
                && PROGRAM_EXTENSIONS.contains(&ext.to_ascii_lowercase().as_str()) =>
        {
            stem
        }
        _ => file,
    }
}

/// `billing-2.3.1` and `billing-2.3.1-SNAPSHOT` are `billing`.
fn strip_version_suffix(stem: &str) -> &str {
    let b = stem.as_bytes();
    for i in 1..b.len() {
        if b[i - 1] == b'-' && b[i].is_ascii_digit() && i > 1 {
            return &stem[..i - 1];
        }
    }
    stem
}

/// The nearest meaningful directory name in `dir`, then in `cwd`.
fn project_dir(dir: Option<&str>, cwd: Option<&str>) -> Option<String> {
    dir.and_then(|d| last_meaningful(&normalized(d)))
        .or_else(|| cwd.and_then(|c| last_meaningful(&normalized(c))))
}

/// The last of these path components that names something.
fn last_meaningful(parts: &[&str]) -> Option<String> {
    parts
        .iter()
        .rev()
        .find(|p| is_meaningful_dir(p))
        .and_then(|p| clean(p))
}

/// Whether a directory name can name a service: not generic, not hidden,
/// not a version, date or hash (`v2`, `20261130`, `3f9a2c1d...`).
fn is_meaningful_dir(name: &str) -> bool {
    let lower = name.to_ascii_lowercase();
    let starts_with_digit = lower.bytes().next().is_some_and(|b| b.is_ascii_digit());
    let version = lower.strip_prefix('v').is_some_and(|v| {
        v.bytes().next().is_some_and(|b| b.is_ascii_digit())
            && v.bytes().all(|b| b.is_ascii_digit() || b == b'.')
    });
    let hash = lower.len() >= 8
        && lower.bytes().all(|b| b.is_ascii_hexdigit())
        && lower.bytes().any(|b| b.is_ascii_digit());
    !name.starts_with('.')
        && name.chars().any(|c| c.is_alphabetic())
        && !starts_with_digit
        && !version
        && !hash
        && !GENERIC_DIRS.contains(&lower.as_str())
        && !is_generic_stem(&lower)
}

/// A relative `path` taken from `cwd` (when known).
fn absolute(path: &str, cwd: Option<&str>) -> String {
    match cwd {
        Some(cwd) if !path.starts_with('/') => format!("{}/{path}", cwd.trim_end_matches('/')),
        _ => path.to_string(),
    }
}

/// The components of a path, `.` and `..` resolved lexically.
fn normalized(path: &str) -> Vec<&str> {
    let mut out = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                out.pop();
            }
            p => out.push(p),
        }
    }
    out
}

fn base_name(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
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
    let mut end = s.len().min(MAX_NAME);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    Some(s[..end].to_string())
}

/// What a user rule's pattern is matched against.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Field {
    /// The executable's path (the glob has a `/`) or file name.
    Exe,
    /// The whole command line, arguments joined by spaces.
    Cmd,
    /// Any of the process's cgroup paths.
    Cgroup,
    /// The name the agent would choose without rules.
    Name,
}

#[derive(Clone, Debug)]
struct Rule {
    /// The pattern as written (`cmd:*billing*`).
    pattern: String,
    field: Field,
    /// `exe:` with a `/` in the glob: the whole path must match.
    full_path: bool,
    glob: GlobMatcher,
    name: String,
}

/// The user's `--service-name PATTERN=NAME` rules, in the order given;
/// the first that matches a process names it.
///
/// `PATTERN` is `KIND:GLOB`; the glob (`*`, `?`, `[abc]`, `{a,b}`; `*`
/// also matches `/`) must match the whole of:
/// - `exe:GLOB`: the executable's path (`/proc/PID/exe`) when the glob has
///   a `/` (`exe:/opt/billing/*`), else its file name (`exe:redis-*`);
/// - `cmd:GLOB`: the command line, arguments joined by single spaces
///   (`cmd:*manage.py runserver*`);
/// - `cgroup:GLOB`: any of the process's cgroup paths, as in
///   `/proc/PID/cgroup` (`cgroup:/system.slice/billing.service`);
/// - `name:GLOB`: the name the agent would choose without rules
///   (`name:http.server`).
///
/// The last `=` separates `NAME`, so a glob may contain `=` but a name
/// may not.
#[derive(Clone, Debug, Default)]
pub struct Rules {
    rules: Vec<Rule>,
}

impl Rules {
    /// Parses rules; the error names the bad rule and what is wrong with it,
    /// in one line.
    pub fn parse<S: AsRef<str>>(specs: &[S]) -> Result<Rules, String> {
        let rules = specs
            .iter()
            .map(|s| {
                Rule::parse(s.as_ref()).map_err(|e| format!("--service-name {:?}: {e}", s.as_ref()))
            })
            .collect::<Result<_, _>>()?;
        Ok(Rules { rules })
    }

    /// No rules.
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    fn find(&self, p: &Process<'_>, auto_name: &str) -> Option<&Rule> {
        if self.rules.is_empty() {
            return None;
        }
        let cmd = p.argv.join(" ");
        self.rules.iter().find(|r| match r.field {
            Field::Exe => p.exe.is_some_and(|e| {
                if r.full_path {
                    r.glob.is_match(e)
                } else {
                    r.glob.is_match(base_name(e))
                }
            }),
            Field::Cmd => !p.argv.is_empty() && r.glob.is_match(&cmd),
            Field::Cgroup => p.cgroup.is_some_and(|c| {
                c.lines()
                    .filter_map(|l| l.splitn(3, ':').nth(2))
                    .any(|path| r.glob.is_match(path))
            }),
            Field::Name => r.glob.is_match(auto_name),
        })
    }
}

impl Rule {
    fn parse(spec: &str) -> Result<Rule, String> {
        let (pattern, name) = spec
            .rsplit_once('=')
            .ok_or("expected PATTERN=NAME, e.g. exe:redis-*=cache")?;
        let (kind, glob) = pattern
            .split_once(':')
            .ok_or("the pattern must start with exe:, cmd:, cgroup: or name:")?;
        let field = match kind {
            "exe" => Field::Exe,
            "cmd" => Field::Cmd,
            "cgroup" => Field::Cgroup,
            "name" => Field::Name,
            other => {
                return Err(format!(
                    "unknown pattern kind {other:?} (use exe:, cmd:, cgroup: or name:)"
                ))
            }
        };
        if glob.is_empty() {
            return Err("the pattern is empty".into());
        }
        let matcher = GlobBuilder::new(glob)
            .literal_separator(false)
            .build()
            .map_err(|e| format!("bad pattern: {}", e.kind()))?
            .compile_matcher();
        let name = name.trim();
        if name.is_empty() {
            return Err("the service name is empty".into());
        }
        if name.len() > MAX_RULE_NAME || name.chars().any(char::is_control) {
            return Err(format!(
                "the service name must be at most {MAX_RULE_NAME} bytes without control characters"
            ));
        }
        Ok(Rule {
            pattern: pattern.to_string(),
            field,
            full_path: glob.contains('/'),
            glob: matcher,
            name: name.to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Arguments split at spaces; a line starting with `=` is one argument:
    /// a title the process wrote over its command line.
    fn argv(line: &str) -> Vec<String> {
        match line.strip_prefix('=') {
            Some(title) => vec![title.to_string()],
            None => line.split(' ').map(String::from).collect(),
        }
    }

    /// Command line, exe, cwd; name and source.
    type CommandLineCase = (
        &'static str,
        Option<&'static str>,
        Option<&'static str>,
        &'static str,
        Source,
    );

    #[test]
    fn names_from_command_lines() {
        use Source::*;
        let py = Some("/usr/bin/python3.11");
        let node = Some("/usr/bin/node");
        let java = Some("/usr/lib/jvm/java-17-openjdk-amd64/bin/java");
        let root = Some("/");
        #[rustfmt::skip]
        let table: &[CommandLineCase] = &[
            // Python scripts: the stem, or the directory when it is generic.
            ("python3 /srv/billing/app.py", py, root, "billing", PythonScript),
            ("python3 /srv/billing/src/main.py --port 8080", py, root, "billing", PythonScript),
            ("python3 app.py", py, Some("/srv/billing"), "billing", PythonScript),
            ("python3 ./app.py", py, Some("/srv/billing/"), "billing", PythonScript),
            ("python3 ../app.py", py, Some("/srv/billing/sub"), "billing", PythonScript),
            ("/usr/bin/python3 -u /opt/reports/report_worker.py", py, root, "report_worker", PythonScript),
            ("python3.11 -X dev -W ignore /srv/x/worker.py", py, root, "worker", PythonScript),
            ("python3 -Wignore -OO -B /srv/x/worker.py", py, root, "worker", PythonScript),
            ("python /app/main.py", py, root, "main", PythonScript),
            ("/srv/shop/venv/bin/python /srv/shop/manage.py runserver 0.0.0.0:8000", py, root, "shop", PythonScript),
            ("python3 /srv/billing/releases/20261130/app.py", py, root, "billing", PythonScript),
            ("python3 /srv/billing/v2/app.py", py, root, "billing", PythonScript),
            ("python3 /srv/billing/.venv/app.py", py, root, "billing", PythonScript),
            ("python3 /srv/auth/app.py --password=hunter2", py, root, "auth", PythonScript),
            // -m modules.
            ("python3 -m http.server 8000", py, root, "http.server", PythonModule),
            ("python3 -mhttp.server", py, root, "http.server", PythonModule),
            ("python3 -u -m billing.main", py, root, "billing", PythonModule),
            ("python3 -m main", py, Some("/srv/orders"), "orders", PythonModule),
            ("python3 -m main", py, root, "main", PythonModule),
            ("pypy3 -m celery.__main__ worker", Some("/usr/bin/pypy3"), root, "celery", PythonModule),
            // ASGI/WSGI servers: the application's module.
            ("/venv/bin/python3 /venv/bin/uvicorn orders.api:app --port 8000", py, root, "orders.api", PythonApp),
            ("/venv/bin/python3 /venv/bin/uvicorn --host 127.0.0.1 --port 8000 main:app", py, Some("/srv/inventory"), "inventory", PythonApp),
            ("python3 -m uvicorn --app-dir /srv/inventory main:app", py, root, "inventory", PythonApp),
            ("python3 -m uvicorn --factory billing.app:create_app", py, root, "billing", PythonApp),
            ("/venv/bin/python /venv/bin/gunicorn -w 2 -b 127.0.0.1:8000 payments.wsgi:application", py, root, "payments", PythonApp),
            ("/venv/bin/python /venv/bin/gunicorn -k uvicorn.workers.UvicornWorker -c python:conf.gunicorn shop.asgi:app", py, root, "shop", PythonApp),
            ("/venv/bin/python /venv/bin/gunicorn --chdir /srv/ledger wsgi", py, root, "ledger", PythonApp),
            ("/venv/bin/python /venv/bin/gunicorn --log-level debug ledger", py, root, "ledger", PythonApp),
            ("/venv/bin/python /venv/bin/hypercorn --bind localhost:8000 chat.server:app", py, root, "chat.server", PythonApp),
            ("=gunicorn: worker [payments.wsgi:application]", py, root, "payments", PythonApp),
            // No program to name: the interpreter's argv[0].
            ("python3 -c import time", py, root, "python3", Argv0),
            ("python3", py, root, "python3", Argv0),
            ("python3 -", py, root, "python3", Argv0),
            // Node.
            ("node server.js", node, Some("/srv/web"), "web", NodeScript),
            ("node /srv/web/dist/index.js", node, root, "web", NodeScript),
            ("node --max-old-space-size=512 -r dotenv/config /srv/chat/chat-gateway.mjs", node, root, "chat-gateway", NodeScript),
            ("node --inspect=9229 --require ./tracing.js worker.js", node, Some("/srv/x"), "worker", NodeScript),
            ("node .", node, Some("/srv/storefront"), "storefront", NodeScript),
            ("node /srv/shop/node_modules/.bin/next start", node, root, "shop", NodeScript),
            ("node /usr/lib/node_modules/npm/bin/npm-cli.js start", node, Some("/srv/shop"), "shop", NodeScript),
            ("node -e console.log(1)", node, root, "node", Argv0),
            // Java.
            ("java -jar /srv/reports/reports-1.4.2.jar", java, root, "reports", JavaJar),
            ("java -Xmx512m -Dspring.profiles.active=prod -jar /srv/billing/app-0.0.1-SNAPSHOT.jar", java, root, "billing", JavaJar),
            ("java -jar app.jar", java, Some("/srv/reports"), "reports", JavaJar),
            ("java -cp /srv/ledger/classes Main", java, root, "ledger", JavaMainClass),
            ("java -cp classes:lib/* Main", java, Some("/srv/ledger"), "ledger", JavaMainClass),
            ("java -cp /srv/x/billing-2.0.jar com.acme.Main", java, root, "acme", JavaMainClass),
            ("java -cp /srv/x/billing-2.0.jar com.Main", java, root, "billing", JavaMainClass),
            ("java -server -cp /opt/kafka/libs/* kafka.Kafka config/server.properties", java, root, "Kafka", JavaMainClass),
            ("java --add-opens java.base/java.lang=ALL-UNNAMED -m billing.app/com.acme.billing.Main", java, root, "billing", JavaMainClass),
            ("java --module=com.acme.billing/com.acme.billing.BillingApp", java, root, "BillingApp", JavaMainClass),
            ("java -version", java, root, "java", Argv0),
            // Ruby, Perl, dotnet, PHP-FPM.
            ("ruby /srv/blog/bin/rails server -p 3000", Some("/usr/bin/ruby3.1"), root, "blog", RubyScript),
            ("ruby -I lib -rbundler/setup /srv/jobs/worker.rb", Some("/usr/bin/ruby3.1"), root, "worker", RubyScript),
            ("ruby -e puts", Some("/usr/bin/ruby3.1"), root, "ruby", Argv0),
            ("perl -I /srv/lib /srv/mail/mailer.pl", Some("/usr/bin/perl"), root, "mailer", PerlScript),
            ("perl -e print", Some("/usr/bin/perl"), root, "perl", Argv0),
            ("dotnet /srv/billing/Billing.Api.dll --urls http://0.0.0.0:5000", Some("/usr/share/dotnet/dotnet"), root, "Billing.Api", DotnetDll),
            ("dotnet run", Some("/usr/share/dotnet/dotnet"), root, "dotnet", Argv0),
            ("=php-fpm: pool billing", Some("/usr/sbin/php-fpm8.2"), root, "billing", PhpFpmPool),
            ("=php-fpm: pool www", Some("/usr/sbin/php-fpm8.2"), root, "php-fpm", Argv0),
            ("=php-fpm: master process (/etc/php/8.2/fpm/php-fpm.conf)", Some("/usr/sbin/php-fpm8.2"), root, "php-fpm", Argv0),
            // argv[0]: symlinks and multi-call binaries keep their name.
            ("/usr/bin/redis-server *:6379", Some("/usr/bin/redis-check-rdb"), root, "redis-server", Argv0),
            ("redis-server 127.0.0.1:6380", Some("/usr/bin/redis-check-rdb"), root, "redis-server", Argv0),
            ("=nginx: worker process", Some("/usr/sbin/nginx"), root, "nginx", Argv0),
            ("=nginx: master process /usr/sbin/nginx -g daemon on;", Some("/usr/sbin/nginx"), root, "nginx", Argv0),
            ("=postgres: 15/main: checkpointer", Some("/usr/lib/postgresql/15/bin/postgres"), root, "postgres", Argv0),
            ("-bash", Some("/usr/bin/bash"), root, "bash", Argv0),
            ("/srv/billing/server --port 80", Some("/srv/billing/server"), root, "billing", Argv0),
            ("./main", Some("/srv/orders/main"), Some("/srv/orders"), "orders", Argv0),
            ("server", Some("/srv/api-gw/bin/server"), root, "api-gw", Argv0),
            ("/usr/local/bin/server", Some("/usr/local/bin/server"), root, "server", Argv0),
            ("curl -s http://x/", Some("/usr/bin/curl"), root, "curl", Argv0),
        ];
        for (line, exe, cwd, name, source) in table {
            let args = argv(line);
            let p = Process {
                argv: &args,
                exe: *exe,
                cwd: *cwd,
                comm: Some("comm"),
                ..Process::default()
            };
            let got = resolve(&p, &Rules::default());
            assert_eq!(
                (got.name.as_str(), &got.source),
                (*name, source),
                "{line:?} in {cwd:?}"
            );
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

    /// Command line, exe, cgroup, OTEL_SERVICE_NAME; name and source.
    type RuleCase = (
        &'static str,
        &'static str,
        Option<&'static str>,
        Option<&'static str>,
        &'static str,
        &'static str,
    );

    #[test]
    fn user_rules() {
        let rules = Rules::parse(&[
            "exe:redis-*=cache",
            "exe:/opt/billing/*=billing",
            "cmd:*--env=staging*=staging-api",
            "cgroup:/system.slice/orders.service=orders",
            "name:http.server=static-files",
            "cgroup:*/docker-*.scope=in-docker",
        ])
        .unwrap();
        let cgroup_v1 = "12:memory:/system.slice/orders.service\n0::/system.slice/orders.service\n";
        #[rustfmt::skip]
        let table: &[RuleCase] = &[
            ("redis-server *:6379", "/usr/bin/redis-check-rdb", None, None, "cache", "rule:exe:redis-*"),
            ("/opt/billing/bin/run", "/opt/billing/bin/run", None, None, "billing", "rule:exe:/opt/billing/*"),
            ("/usr/bin/billing", "/usr/bin/billing", None, None, "billing", "argv0"),
            ("python3 /srv/api/api.py --env=staging", "/usr/bin/python3", None, None, "staging-api", "rule:cmd:*--env=staging*"),
            ("python3 /srv/api/api.py --env=prod", "/usr/bin/python3", None, None, "api", "python_script"),
            ("python3 /srv/o/o.py", "/usr/bin/python3", Some(cgroup_v1), None, "orders", "rule:cgroup:/system.slice/orders.service"),
            ("python3 -m http.server", "/usr/bin/python3", None, None, "static-files", "rule:name:http.server"),
            // A rule wins over the process's own OTEL_SERVICE_NAME.
            ("redis-server", "/usr/bin/redis-check-rdb", None, Some("own"), "cache", "rule:exe:redis-*"),
            ("python3 /srv/api/api.py", "/usr/bin/python3", None, Some("own"), "own", "OTEL_SERVICE_NAME"),
            ("x", "/usr/bin/x", Some("0::/system.slice/docker-0123abcd.scope\n"), None, "in-docker", "rule:cgroup:*/docker-*.scope"),
        ];
        for (line, exe, cgroup, env, name, source) in table {
            let args = argv(line);
            let p = Process {
                argv: &args,
                exe: Some(exe),
                cgroup: *cgroup,
                otel_service_name: *env,
                cwd: Some("/"),
                ..Process::default()
            };
            let n = resolve(&p, &rules);
            assert_eq!(
                (n.name.as_str(), n.source.to_string().as_str()),
                (*name, *source),
                "{line}"
            );
        }
        // First match wins.
        let rules = Rules::parse(&["name:*=first", "name:*=second"]).unwrap();
        assert_eq!(resolve(&Process::default(), &rules).name, "first");
    }

    #[test]
    fn bad_rules_are_one_clear_line() {
        for (spec, want) in [
            ("billing", "expected PATTERN=NAME"),
            (
                "redis-*=cache",
                "must start with exe:, cmd:, cgroup: or name:",
            ),
            ("path:/x=y", "unknown pattern kind \"path\""),
            ("exe:=x", "the pattern is empty"),
            ("exe:[a=x", "bad pattern"),
            ("exe:{a,b=x", "bad pattern"),
            ("exe:x=", "the service name is empty"),
            ("exe:x= ", "the service name is empty"),
        ] {
            let err = Rules::parse(&[spec]).unwrap_err();
            assert!(err.contains(want), "{spec}: {err}");
            assert!(
                err.starts_with(&format!("--service-name {spec:?}: ")),
                "{err}"
            );
            assert!(!err.contains('\n'), "{err}");
        }
        assert!(Rules::parse(&["exe:x=a\u{1}b"]).is_err());
        assert!(Rules::parse::<&str>(&[]).unwrap().is_empty());
    }
}
