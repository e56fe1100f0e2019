//! Steps 3 and 4 of the order: the program an interpreter or runtime
//! runs, read from its command line, and `argv[0]`'s file name.
use super::{clean, Source};
use crate::export::cmdline::is_sensitive;

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

/// The program an interpreter or runtime runs, from its command line.
pub(super) fn from_command_line(argv: &[String], cwd: Option<&str>) -> Option<(String, Source)> {
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
/// as their value (only those whose value could pass for an application:
/// a word or a dotted name, such as a file name).
const APP_SERVER_VALUE_OPTIONS: [&str; 49] = [
    "--access-logfile",
    "--error-logfile",
    "--log-file",
    "--log-syslog-to",
    "--access-logformat",
    "--pid",
    "-p",
    "--certfile",
    "--keyfile",
    "--ca-certs",
    "--ssl-certfile",
    "--ssl-keyfile",
    "--ssl-ca-certs",
    "--ssl-ciphers",
    "--ciphers",
    "--worker-tmp-dir",
    "--statsd-host",
    "--statsd-prefix",
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
    // A bare module right after an option this does not know may be that
    // option's value (`--access-logfile access.log`): one that is not wins.
    let mut bare = None;
    let mut bare_after_option = None;
    let mut i = 0;
    while let Some(a) = args.get(i) {
        i += 1;
        let after_option = follows_bare_option(args, i - 1);
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
            None if is_dotted_identifier(a) && after_option => bare_after_option = Some(a.as_str()),
            None if is_dotted_identifier(a) => bare = Some(a.as_str()),
            None => {}
        }
    }
    module_name(with_attr.or(bare).or(bare_after_option)?, dir, cwd)
}

/// Whether `args[i]` comes right after an option written without `=`
/// (`--flag VALUE`): it may be that option's value.
fn follows_bare_option(args: &[String], i: usize) -> bool {
    i.checked_sub(1)
        .and_then(|p| args.get(p))
        .is_some_and(|o| o.starts_with('-') && !o.contains('='))
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

/// Node options that take the next argument as their value (node's own;
/// V8's are written `--flag=value`).
const NODE_VALUE_OPTIONS: [&str; 43] = [
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
    "--inspect-port",
    "--debug-port",
    "--unhandled-rejections",
    "--max-http-header-size",
    "--dns-result-order",
    "--disable-proto",
    "--diagnostic-dir",
    "--report-dir",
    "--report-directory",
    "--report-filename",
    "--report-signal",
    "--heapsnapshot-signal",
    "--heapsnapshot-near-heap-limit",
    "--secure-heap",
    "--secure-heap-min",
    "--tls-cipher-list",
    "--tls-keylog",
    "--trace-event-categories",
    "--trace-event-file-pattern",
    "--cpu-prof-dir",
    "--cpu-prof-name",
    "--cpu-prof-interval",
    "--heap-prof-dir",
    "--heap-prof-name",
    "--heap-prof-interval",
    "--experimental-policy",
    "--policy-integrity",
    "--es-module-specifier-resolution",
    "--experimental-specifier-resolution",
];

/// A value of an option node does not list above, rather than a script: a
/// number (`--stack-trace-limit 50`), which no script is named.
fn is_option_value(arg: &str) -> bool {
    !arg.is_empty() && arg.bytes().all(|b| b.is_ascii_digit())
}

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
            a if is_option_value(a) && follows_bare_option(args, i) => i += 1,
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
            // Source-file mode: the file is compiled and run, its name is
            // the program's (a class named `java` it cannot be).
            source if source.ends_with(".java") => {
                return file_name(source, cwd, false).map(|n| (n, Source::JavaSourceFile));
            }
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
    const VALUE_OPTIONS: [&str; 7] = [
        "-I",
        "-r",
        "-C",
        "-E",
        "--encoding",
        "--external-encoding",
        "--internal-encoding",
    ];
    interpreter_script(args, cwd, &VALUE_OPTIONS, |a| a == "-e")
}

fn perl(args: &[String], cwd: Option<&str>) -> Option<String> {
    interpreter_script(args, cwd, &["-I", "-M", "-m"], |a| {
        a.starts_with("-e") || a.starts_with("-E")
    })
}

/// The script of an interpreter started as `INTERPRETER [OPTIONS] SCRIPT`:
/// options in `value_options` take the next argument; none when an option
/// says the program is on the command line (`evaluates`).
fn interpreter_script(
    args: &[String],
    cwd: Option<&str>,
    value_options: &[&str],
    evaluates: impl Fn(&str) -> bool,
) -> Option<String> {
    let mut i = 0;
    while let Some(a) = args.get(i) {
        if !a.starts_with('-') || a == "-" {
            break;
        }
        if a == "--" {
            i += 1;
            break;
        }
        if evaluates(a) {
            return None;
        }
        i += if takes_value(a, value_options) { 2 } else { 1 };
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
pub(super) fn argv0_name(argv0: &str, exe: Option<&str>, cwd: Option<&str>) -> Option<String> {
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
const PROGRAM_EXTENSIONS: [&str; 18] = [
    "py", "pyc", "pyz", "pyw", "js", "mjs", "cjs", "ts", "mts", "cts", "jar", "war", "dll", "rb",
    "pl", "php", "sh", "java",
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

pub(super) fn base_name(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

#[cfg(test)]
mod tests {
    use super::super::{resolve, tests::argv, Process, Rules};
    use super::*;

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
            // Options after the application, their values file names.
            ("/venv/bin/python /venv/bin/gunicorn --chdir /srv/payroll wsgi --access-logfile access.log", py, root, "payroll", PythonApp),
            ("/venv/bin/python /venv/bin/gunicorn --chdir /srv/payroll wsgi --some-new-option access.log", py, root, "payroll", PythonApp),
            ("/venv/bin/python /venv/bin/gunicorn --some-new-option x.conf billing.api:app", py, root, "billing.api", PythonApp),
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
            // Options whose value is the next argument.
            ("node --inspect-port 9231 /srv/wishlist/wishlist.js", node, root, "wishlist", NodeScript),
            ("node --unhandled-rejections strict cart.js", node, Some("/srv/x"), "cart", NodeScript),
            ("node --max-http-header-size 16384 cart.js", node, Some("/srv/x"), "cart", NodeScript),
            ("node --stack-trace-limit 50 /srv/orders.js", node, root, "orders", NodeScript),
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
            ("java Billing.java 8080", java, root, "Billing", JavaSourceFile),
            ("java -Xmx64m /srv/ledger/Main.java", java, root, "ledger", JavaSourceFile),
            ("java --source 17 -cp lib/x.jar src/Main.java", java, Some("/srv/orders"), "orders", JavaSourceFile),
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
}
