//! Credentials out of command lines: `process.command_line` is exported,
//! and command lines carry secrets as a rule (`curl -u user:pw`,
//! `mysql -pSECRET`, `--password=...`, `TOKEN=... make`, URLs with a
//! password or a token in the query).
//!
//! What becomes `REDACTED`, the shape of the line staying readable:
//! - in a URL (`scheme://...`, alone or as an option's value): the
//!   userinfo and every query value;
//! - in an argument naming a credential ([`is_sensitive`]) with a `=` or
//!   `:`: everything after the first of them (`--password=REDACTED`,
//!   `DB_PASS=REDACTED`, `Authorization:REDACTED`);
//! - the argument after an option naming a credential (`--password PW`);
//! - the argument after `-p`, unless it is a port (`-p 8080`, `-p
//!   127.0.0.1:80:80/tcp`); `-pSECRET` of the MySQL/MariaDB clients;
//! - the password of `user:password` after `-u`, `--user`, `--proxy-user`;
//! - any other argument naming a credential, unless it is a path or a
//!   dotted name (`/run/secrets/token`, `auth.server`, which name a file or
//!   a module, not a secret);
//! - the whole of an argument that is code or a sentence naming a
//!   credential (`python3 -c "...headers={'Authorization': 'Bearer X'}"`,
//!   `node -e`, `sh -c`): where the secret is in it cannot be told;
//! - in a URL's fragment, every value (`#access_token=...`).
//!
//! `argv[0]` is kept as is.

/// Words (lower case) that mark an argument as carrying a credential.
const SENSITIVE: [&str; 16] = [
    "auth", // authorization, oauth, --auth, --masterauth
    "cookie",
    "token",
    "secret",
    "pass", // password, passwd, passphrase, --requirepass
    "pwd",
    "apikey",
    "api-key",
    "api_key",
    "cred", // credential(s)
    "private-key",
    "private_key",
    "privatekey",
    "access-key",
    "access_key",
    "accesskey",
];

/// Whether an argument names a credential (`--password`, `API_TOKEN=x`,
/// `Authorization: Bearer ...`).
pub fn is_sensitive(arg: &str) -> bool {
    let lower = arg.to_ascii_lowercase();
    SENSITIVE.iter().any(|k| lower.contains(k))
}

/// What the previous argument says about the next one.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Next {
    Plain,
    /// After `--password`.
    Secret,
    /// After `-p`: a port, or a password.
    PortOrSecret,
    /// After `-u`: `user:password`.
    UserPassword,
}

/// `args` as one line, credentials replaced by `REDACTED` (see the module
/// docs).
pub fn redact_args(args: &[String]) -> String {
    let program = args
        .first()
        .map(|a| a.rsplit('/').next().unwrap_or(a))
        .unwrap_or_default();
    let mysql_client = program.starts_with("mysql") || program.starts_with("mariadb");
    let mut out: Vec<String> = Vec::with_capacity(args.len());
    let mut next = Next::Plain;
    for (i, arg) in args.iter().enumerate() {
        match std::mem::replace(&mut next, Next::Plain) {
            Next::Secret => {
                out.push("REDACTED".into());
                continue;
            }
            Next::PortOrSecret if !is_port(arg) => {
                out.push("REDACTED".into());
                continue;
            }
            Next::UserPassword => {
                out.push(user_password(arg));
                continue;
            }
            _ => {}
        }
        if i == 0 {
            out.push(arg.clone());
            continue;
        }
        if is_code(arg) && is_sensitive(arg) {
            out.push("REDACTED".into());
            continue;
        }
        if arg.contains("://") {
            out.push(redact_url(arg));
            continue;
        }
        match arg.as_str() {
            "-p" => next = Next::PortOrSecret,
            "-u" | "--user" | "--proxy-user" => next = Next::UserPassword,
            _ => {}
        }
        if next != Next::Plain {
            out.push(arg.clone());
            continue;
        }
        if let Some(value) = arg
            .strip_prefix("--user=")
            .or_else(|| arg.strip_prefix("--proxy-user="))
        {
            let key = &arg[..arg.len() - value.len()];
            out.push(format!("{key}{}", user_password(value)));
            continue;
        }
        if mysql_client && arg.len() > 2 && arg.starts_with("-p") {
            out.push("-pREDACTED".into());
            continue;
        }
        if is_sensitive(arg) {
            match arg.find([':', '=']) {
                Some(pos) => out.push(format!("{}REDACTED", &arg[..=pos])),
                None if arg.starts_with('-') => {
                    out.push(arg.clone());
                    next = Next::Secret;
                }
                None if names_a_file_or_module(arg) => out.push(arg.clone()),
                None => out.push("REDACTED".into()),
            }
            continue;
        }
        out.push(arg.clone());
    }
    out.join(" ")
}

/// A URL with its userinfo and query values redacted (with whatever comes
/// before its scheme, e.g. `--dsn=`).
fn redact_url(arg: &str) -> String {
    let Some(scheme_end) = arg.find("://") else {
        return arg.to_string();
    };
    let (scheme, rest) = arg.split_at(scheme_end + 3);
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let rest = match rest[..authority_end].rfind('@') {
        Some(at) => format!("REDACTED{}", &rest[at..]),
        None => rest.to_string(),
    };
    let (rest, fragment) = match rest.split_once('#') {
        Some((r, f)) if f.contains('=') => (r, Some(correlate::redact_query(f))),
        Some((r, f)) => (r, Some(f.to_string())),
        None => (rest.as_str(), None),
    };
    let mut out = match rest.split_once('?') {
        Some((path, query)) => format!("{scheme}{path}?{}", correlate::redact_query(query)),
        None => format!("{scheme}{rest}"),
    };
    if let Some(f) = fragment {
        out.push('#');
        out.push_str(&f);
    }
    out
}

/// Code or a sentence rather than one value: spaces, quotes or brackets
/// in it. A header line (`Authorization: Bearer X`) is not: it keeps its
/// name.
fn is_code(arg: &str) -> bool {
    let header = arg.split_once(':').is_some_and(|(name, _)| {
        !name.is_empty()
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    });
    !header
        && arg
            .chars()
            .any(|c| c.is_whitespace() || matches!(c, '\'' | '"' | '(' | ')' | '{' | '}' | ';'))
}

/// `user:password` -> `user:REDACTED`; a bare user stays.
fn user_password(arg: &str) -> String {
    match arg.split_once(':') {
        Some((user, _)) => format!("{user}:REDACTED"),
        None => arg.to_string(),
    }
}

/// A port or a port mapping: `8080`, `127.0.0.1:8080:80/tcp`, `[::1]:80`.
fn is_port(arg: &str) -> bool {
    let a = arg
        .strip_suffix("/tcp")
        .or_else(|| arg.strip_suffix("/udp"))
        .unwrap_or(arg);
    a.bytes().any(|b| b.is_ascii_digit())
        && a.bytes()
            .all(|b| b.is_ascii_digit() || matches!(b, b'.' | b':' | b'[' | b']' | b'-'))
}

/// A path (`/run/secrets/db_password`) or a dotted name (`auth.server`):
/// one word that names a file or a module rather than holding a secret.
fn names_a_file_or_module(arg: &str) -> bool {
    if arg.chars().any(char::is_whitespace) {
        return false;
    }
    if arg.contains('/') {
        return true;
    }
    arg.contains('.')
        && arg.split('.').all(|part| {
            part.chars().next().is_some_and(|c| c.is_ascii_alphabetic())
                && part
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn redact(line: &[&str]) -> String {
        redact_args(&line.iter().map(|s| s.to_string()).collect::<Vec<_>>())
    }

    #[test]
    fn command_lines_lose_their_credentials() {
        let line = redact(&[
            "curl",
            "-H",
            "Authorization: Bearer AUTH",
            "-H",
            "Cookie: s=COOKIE",
            "https://user:PASS@example.com/x?token=TOK&page=2",
            "--password",
            "PW",
            "--api-key=KEY",
            "-v",
        ]);
        for secret in ["AUTH", "COOKIE", "PASS", "TOK", "PW", "KEY"] {
            assert!(!line.contains(secret), "{secret} in {line}");
        }
        assert_eq!(
            line,
            "curl -H Authorization:REDACTED -H Cookie:REDACTED https://REDACTED@example.com/x?token=REDACTED&page=REDACTED \
             --password REDACTED --api-key=REDACTED -v"
        );
    }

    /// (argv, exported line): interpreters and servers with secrets in
    /// their arguments.
    #[test]
    fn interpreter_arguments() {
        #[rustfmt::skip]
        let table: &[(&[&str], &str)] = &[
            (&["python3", "/srv/billing/app.py", "--password=HUNTER2", "-p", "S3CR3T", "TOKEN=ABC123"],
             "python3 /srv/billing/app.py --password=REDACTED -p REDACTED TOKEN=REDACTED"),
            (&["python3", "-m", "http.server", "-p", "8000"], "python3 -m http.server -p 8000"),
            (&["docker-proxy", "-p", "127.0.0.1:8080:80/tcp"], "docker-proxy -p 127.0.0.1:8080:80/tcp"),
            (&["node", "server.js", "--db", "postgres://app:PGPASS@db:5432/app?sslmode=require&password=QP"],
             "node server.js --db postgres://REDACTED@db:5432/app?sslmode=REDACTED&password=REDACTED"),
            (&["java", "-Dspring.datasource.password=JPW", "-Djavax.net.ssl.keyStorePassword=KSP", "-jar", "app.jar"],
             "java -Dspring.datasource.password=REDACTED -Djavax.net.ssl.keyStorePassword=REDACTED -jar app.jar"),
            (&["/venv/bin/python", "/venv/bin/gunicorn", "--env", "DATABASE_URL=mysql://u:MYPW@h/db", "app:app"],
             "/venv/bin/python /venv/bin/gunicorn --env DATABASE_URL=mysql://REDACTED@h/db app:app"),
            (&["redis-server", "*:6379", "--requirepass", "RPW", "--masterauth", "MAUTH"],
             "redis-server *:6379 --requirepass REDACTED --masterauth REDACTED"),
            (&["mysql", "-uroot", "-pMYSQLPW", "-h", "db"], "mysql -uroot -pREDACTED -h db"),
            (&["curl", "-u", "alice:CURLPW", "--proxy-user=bob:PROXYPW", "-u", "carol"],
             "curl -u alice:REDACTED --proxy-user=bob:REDACTED -u carol"),
            (&["env", "AWS_SECRET_ACCESS_KEY=AK", "GITHUB_TOKEN=GT", "DB_PASSWD=DP", "ruby", "x.rb"],
             "env AWS_SECRET_ACCESS_KEY=REDACTED GITHUB_TOKEN=REDACTED DB_PASSWD=REDACTED ruby x.rb"),
            (&["sh", "-c", "mysql --password HIDDEN db"], "sh -c REDACTED"),
            (&["perl", "/srv/mail/send.pl", "--smtp-auth", "SMTPPW"], "perl /srv/mail/send.pl --smtp-auth REDACTED"),
            // Files and modules that merely mention a credential stay.
            (&["python3", "-m", "auth.server", "/run/secrets/db_password"],
             "python3 -m auth.server /run/secrets/db_password"),
            (&["app", "mytoken123"], "app REDACTED"),
            (&["git", "clone", "https://x-access-token:GHTOK@github.example/org/repo.git"],
             "git clone https://REDACTED@github.example/org/repo.git"),
            (&["curl", "http://h/a@b"], "curl http://h/a@b"),
            // Code naming a credential: all of it, URLs in it or not.
            (&["python3", "-c", "import urllib.request as u; u.urlopen(u.Request('http://h/x', headers={'Authorization': 'Bearer PYC'}))"],
             "python3 -c REDACTED"),
            (&["node", "-e", "fetch('http://h/x',{headers:{authorization:'Bearer NODEE'}})"], "node -e REDACTED"),
            (&["python3", "-c", "print('the secret is PYSEC'); x=1"], "python3 -c REDACTED"),
            (&["python3", "-c", "from multiprocessing.spawn import spawn_main; spawn_main(tracker_fd=5)"],
             "python3 -c from multiprocessing.spawn import spawn_main; spawn_main(tracker_fd=5)"),
            (&["curl", "http://h/frag#access_token=FRAG&state=STATE"], "curl http://h/frag#access_token=REDACTED&state=REDACTED"),
            (&["curl", "http://h/doc#section-2"], "curl http://h/doc#section-2"),
        ];
        for (args, want) in table {
            assert_eq!(redact(args), *want);
        }
    }
}
