//! Step 1 of the order: the user's `--service-name PATTERN=NAME` rules.
use globset::{GlobBuilder, GlobMatcher};

use super::{runtimes::base_name, Process};
use crate::export::container::cgroup_paths;

/// Longest name a user rule may give, in bytes.
const MAX_RULE_NAME: usize = 255;

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

/// A `--service-name` rule that cannot be used, named as given.
#[derive(Debug, thiserror::Error)]
#[error("--service-name {spec:?}")]
pub struct RulesError {
    /// The rule as given.
    pub spec: String,
    /// What is wrong with it.
    #[source]
    pub source: RuleError,
}

/// What is wrong with a `PATTERN=NAME` rule.
#[derive(Debug, thiserror::Error)]
pub enum RuleError {
    /// No `=`.
    #[error("expected PATTERN=NAME, e.g. exe:redis-*=cache")]
    NoName,
    /// No `KIND:` before the glob.
    #[error("the pattern must start with exe:, cmd:, cgroup: or name:")]
    NoKind,
    /// A kind other than exe, cmd, cgroup, name.
    #[error("unknown pattern kind {kind:?} (use exe:, cmd:, cgroup: or name:)")]
    Kind {
        /// The kind given.
        kind: String,
    },
    /// Nothing after `KIND:`.
    #[error("the pattern is empty")]
    EmptyPattern,
    /// A glob that does not parse.
    #[error("bad pattern")]
    Glob(#[source] globset::Error),
    /// Nothing after `=`.
    #[error("the service name is empty")]
    EmptyName,
    /// A name too long or with control characters.
    #[error(
        "the service name must be at most {} bytes without control characters",
        MAX_RULE_NAME
    )]
    BadName,
}

/// One `PATTERN=NAME` rule.
#[derive(Clone, Debug)]
pub(super) struct Rule {
    /// The pattern as written (`cmd:*billing*`).
    pub(super) pattern: String,
    field: Field,
    /// `exe:` with a `/` in the glob: the whole path must match.
    full_path: bool,
    glob: GlobMatcher,
    /// The service name it gives.
    pub(super) name: String,
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
    pub fn parse<S: AsRef<str>>(specs: &[S]) -> Result<Rules, RulesError> {
        let rules = specs
            .iter()
            .map(|s| {
                Rule::parse(s.as_ref()).map_err(|source| RulesError {
                    spec: s.as_ref().to_string(),
                    source,
                })
            })
            .collect::<Result<_, _>>()?;
        Ok(Rules { rules })
    }

    /// No rules.
    #[cfg(test)]
    pub(crate) fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    pub(super) fn find(&self, p: &Process<'_>, auto_name: &str) -> Option<&Rule> {
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
            Field::Cgroup => p
                .cgroup
                .is_some_and(|c| cgroup_paths(c).any(|path| r.glob.is_match(path))),
            Field::Name => r.glob.is_match(auto_name),
        })
    }
}

impl Rule {
    fn parse(spec: &str) -> Result<Rule, RuleError> {
        let (pattern, name) = spec.rsplit_once('=').ok_or(RuleError::NoName)?;
        let (kind, glob) = pattern.split_once(':').ok_or(RuleError::NoKind)?;
        let field = match kind {
            "exe" => Field::Exe,
            "cmd" => Field::Cmd,
            "cgroup" => Field::Cgroup,
            "name" => Field::Name,
            other => {
                return Err(RuleError::Kind {
                    kind: other.to_string(),
                })
            }
        };
        if glob.is_empty() {
            return Err(RuleError::EmptyPattern);
        }
        let matcher = GlobBuilder::new(glob)
            .literal_separator(false)
            .build()
            .map_err(RuleError::Glob)?
            .compile_matcher();
        let name = name.trim();
        if name.is_empty() {
            return Err(RuleError::EmptyName);
        }
        if name.len() > MAX_RULE_NAME || name.chars().any(char::is_control) {
            return Err(RuleError::BadName);
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
    use super::super::{resolve, tests::argv};
    use super::*;

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
            let err = crate::error::chain(&Rules::parse(&[spec]).unwrap_err());
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
