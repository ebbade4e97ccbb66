//! Config parsing and validation, driven by inline YAML through [`super::load`].
//!
//! Secrets come from a map, never from the process environment or the file system, so these tests
//! neither read nor change anything outside the process.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use http::{HeaderMap, HeaderName, HeaderValue, Method};

use super::validate::{path_has_prefix, Match};
use super::{load, ConfigError, Pins, Problem, SecretRef, SecretSource, Snapshot};

/// The folder relative file names are resolved against.
const BASE: &str = "/etc/switchyard";

/// Secret values by environment variable name or by file path.
#[derive(Default)]
struct Secrets(HashMap<String, String>);

impl Secrets {
    fn with(mut self, key: &str, value: &str) -> Self {
        self.0.insert(key.to_owned(), value.to_owned());
        self
    }
}

impl SecretSource for Secrets {
    fn read(&self, secret: &SecretRef) -> Result<String, String> {
        let key = match secret {
            SecretRef::Env(name) => name.clone(),
            SecretRef::File(path) => path.display().to_string(),
        };
        self.0
            .get(&key)
            .cloned()
            .ok_or_else(|| format!("{secret} is not set"))
    }
}

fn load_with(text: &str, secrets: &Secrets) -> Result<Snapshot, ConfigError> {
    load(text, Path::new(BASE), secrets)
}

fn valid_with(text: &str, secrets: &Secrets) -> Snapshot {
    match load_with(text, secrets) {
        Ok(snapshot) => snapshot,
        Err(e) => panic!("expected a valid config, got:\n{e}\n--- text ---\n{text}"),
    }
}

fn valid(text: &str) -> Snapshot {
    valid_with(text, &Secrets::default())
}

fn problems_with(text: &str, secrets: &Secrets) -> Vec<Problem> {
    match load_with(text, secrets) {
        Err(ConfigError::Invalid(problems)) => problems,
        Err(other) => panic!("expected validation problems, got: {other}\n--- text ---\n{text}"),
        Ok(snapshot) => {
            panic!("expected validation problems, got {snapshot:?}\n--- text ---\n{text}")
        }
    }
}

fn problems(text: &str) -> Vec<Problem> {
    problems_with(text, &Secrets::default())
}

/// The only problem of `text`; fails listing them all when there are more.
fn only_problem_with(text: &str, secrets: &Secrets) -> Problem {
    let mut all = problems_with(text, secrets);
    assert_eq!(
        all.len(),
        1,
        "expected exactly one problem, got {all:#?}\n--- text ---\n{text}"
    );
    all.remove(0)
}

fn only_problem(text: &str) -> Problem {
    only_problem_with(text, &Secrets::default())
}

/// The Display text of the parse (serde) error of `text`.
fn parse_error(text: &str) -> String {
    match load_with(text, &Secrets::default()) {
        Err(e @ ConfigError::Parse(_)) => e.to_string(),
        Err(other) => panic!("expected a parse error, got: {other}\n--- text ---\n{text}"),
        Ok(snapshot) => panic!("expected a parse error, got {snapshot:?}\n--- text ---\n{text}"),
    }
}

/// The 1-based line of the first line of `text` that contains `needle`.
fn line_of(text: &str, needle: &str) -> usize {
    match text.lines().position(|l| l.contains(needle)) {
        Some(i) => i + 1,
        None => panic!("{needle:?} is not in the text:\n{text}"),
    }
}

/// Asserts `p` is at `path`, on the line of `text` holding `needle`, with `phrase` in its message.
#[track_caller]
fn assert_problem(p: &Problem, path: &str, text: &str, needle: &str, phrase: &str) {
    assert_eq!(p.path, path, "{p:?}");
    assert_eq!(p.line, Some(line_of(text, needle)), "{p:?}");
    assert!(
        p.message.contains(phrase),
        "message of {p:?} lacks {phrase:?}"
    );
}

/// A valid config with one provider `psp` and one route `pay`, plus extra lines (each ending in a
/// newline, already indented) in the provider, in the route, and at the top level.
fn config(provider: &str, route: &str, top: &str) -> String {
    format!(
        "providers:
  psp:
    url: https://api.psp.example
{provider}routes:
  - name: pay
    match: {{}}
    targets:
      - provider: psp
{route}{top}"
    )
}

fn addr(text: &str) -> SocketAddr {
    match text.parse() {
        Ok(a) => a,
        Err(e) => panic!("{text}: {e}"),
    }
}

#[test]
fn shipped_routes_yaml_is_valid() {
    let s = valid(include_str!("../../routes.yaml"));

    assert_eq!(s.listen, addr("127.0.0.1:8080"));
    assert_eq!(s.admin.listen, addr("127.0.0.1:9901"));
    assert!(s.admin.token.is_none());
    assert_eq!(s.drain_timeout, Duration::from_secs(30));
    assert_eq!(s.max_header_bytes, 64 * 1024);

    let names: Vec<&str> = s.providers.keys().map(|k| &**k).collect();
    assert_eq!(names, ["psp-backup", "psp-primary"]);
    for (name, port) in [("psp-primary", 9101), ("psp-backup", 9102)] {
        let p = &s.providers[name];
        assert_eq!(&*p.name, name);
        assert_eq!(p.scheme, http::uri::Scheme::HTTP);
        assert_eq!(p.authority.as_str(), format!("127.0.0.1:{port}"));
        assert_eq!(p.base_path, "");
        assert!(p.auth.is_none());
        assert_eq!(p.connect_timeout, Duration::from_secs(1));
        assert_eq!(p.timeout, Duration::from_secs(10));
    }

    assert_eq!(s.routes.len(), 1);
    let r = &s.routes[0];
    assert_eq!(&*r.name, "payments");
    assert_eq!(r.matcher.path_prefix, "/v1/");
    assert_eq!(r.matcher.methods, Some(vec![Method::GET, Method::POST]));
    assert_eq!(r.matcher.host, None);
    assert!(r.matcher.headers.is_empty());
    assert_eq!(r.strip_prefix, None);
    let targets: Vec<(&str, u32, u32)> = r
        .targets
        .iter()
        .map(|t| (&*t.provider, t.priority, t.weight))
        .collect();
    assert_eq!(targets, [("psp-primary", 0, 100), ("psp-backup", 1, 100)]);
    assert_eq!(r.timeout, Duration::from_secs(30));
    assert_eq!(r.max_body, 1 << 20);

    let sandbox: Vec<(&str, SocketAddr)> = s
        .sandbox
        .iter()
        .map(|b| (b.name.as_str(), b.listen))
        .collect();
    assert_eq!(
        sandbox,
        [
            ("psp-primary", addr("127.0.0.1:9101")),
            ("psp-backup", addr("127.0.0.1:9102")),
        ]
    );
    assert!(s.secrets.is_empty());
}

#[test]
fn omitted_keys_take_their_defaults() {
    let s = valid(&config("", "", ""));

    assert_eq!(s.listen, addr("127.0.0.1:8080"));
    assert_eq!(s.admin.listen, addr("127.0.0.1:9901"));
    assert!(s.admin.token.is_none());
    assert_eq!(s.drain_timeout, Duration::from_secs(30));
    assert_eq!(s.max_header_bytes, 64 * 1024);
    assert!(s.sandbox.is_empty());
    assert!(s.secrets.is_empty());

    let p = &s.providers["psp"];
    assert_eq!(p.scheme, http::uri::Scheme::HTTPS);
    assert_eq!(p.authority.as_str(), "api.psp.example");
    assert_eq!(p.base_path, "");
    assert!(p.auth.is_none());
    assert_eq!(p.tls, super::validate::Tls::default());
    assert_eq!(p.connect_timeout, Duration::from_secs(1));
    assert_eq!(p.timeout, Duration::from_secs(10));
    assert_eq!(p.pool_idle_timeout, Duration::from_secs(90));
    assert_eq!(p.pool_max_idle, 32);

    let r = &s.routes[0];
    assert_eq!(r.matcher.path_prefix, "/");
    assert_eq!(r.matcher.methods, None);
    assert_eq!(r.matcher.host, None);
    assert!(r.matcher.headers.is_empty());
    assert_eq!(r.strip_prefix, None);
    assert_eq!(r.timeout, Duration::from_secs(30));
    assert_eq!(r.max_body, 1 << 20);
    assert_eq!(r.targets.len(), 1);
    assert_eq!(&*r.targets[0].provider, "psp");
    assert_eq!(r.targets[0].priority, 0);
    assert_eq!(r.targets[0].weight, 100);
}

#[test]
fn written_values_replace_the_defaults() {
    let text = config(
        "    connect_timeout: 250ms\n    timeout: 2s\n    pool_idle_timeout: 1m\n    pool_max_idle: 4\n",
        "    strip_prefix: /psp\n    timeout: 1m30s\n    max_body: 10MB\n",
        "listen: localhost:7000\nadmin: { listen: 127.0.0.1:7001 }\ndrain_timeout: 5s\nmax_header_bytes: 16KiB\n",
    );
    let s = valid(&text);
    assert_eq!(s.listen, addr("127.0.0.1:7000"));
    assert_eq!(s.admin.listen, addr("127.0.0.1:7001"));
    assert_eq!(s.drain_timeout, Duration::from_secs(5));
    assert_eq!(s.max_header_bytes, 16 * 1024);
    let p = &s.providers["psp"];
    assert_eq!(p.connect_timeout, Duration::from_millis(250));
    assert_eq!(p.timeout, Duration::from_secs(2));
    assert_eq!(p.pool_idle_timeout, Duration::from_secs(60));
    assert_eq!(p.pool_max_idle, 4);
    let r = &s.routes[0];
    assert_eq!(r.strip_prefix.as_deref(), Some("/psp"));
    assert_eq!(r.timeout, Duration::from_secs(90));
    assert_eq!(r.max_body, 10_000_000);
}

#[test]
fn malformed_yaml_is_a_parse_error_with_its_line() {
    // The flow mapping opened on line 1 is never closed; the parser notices on line 2.
    let text = "admin: { listen: 127.0.0.1:9901\nroutes: []\n";
    let e = parse_error(text);
    assert!(e.contains("line 2"), "{e}");
    assert!(e.contains("flow mapping"), "{e}");

    let text = "listen: 127.0.0.1:8080\nadmin:\n  listen: 127.0.0.1:9901\n    token_env: X\n";
    let e = parse_error(text);
    assert!(e.contains("line 4"), "{e}");
}

#[test]
fn unknown_keys_are_parse_errors_naming_path_and_line() {
    let cases = [
        // (text, path in the message (empty at the top level), line of the bogus key)
        (config("", "", "bogus: 1\n"), "", 9),
        (config("    bogus: 1\n", "", ""), "providers.psp: ", 4),
        (config("", "    bogus: 1\n", ""), "routes[0]: ", 9),
        (
            config("", "        bogus: 1\n", ""),
            "routes[0].targets[0]: ",
            9,
        ),
        (
            config("", "", "").replace("match: {}", "match: { bogus: 1 }"),
            "routes[0].match: ",
            6,
        ),
        (
            config("    tls: { bogus: x }\n", "", ""),
            "providers.psp.tls: ",
            4,
        ),
        (
            config("    auth:\n      bogus: x\n", "", ""),
            "providers.psp.auth: ",
            5,
        ),
        (config("", "", "admin:\n  bogus: x\n"), "admin: ", 10),
        (
            config(
                "",
                "",
                "sandbox:\n  - name: s\n    listen: 127.0.0.1:9101\n    bogus: x\n",
            ),
            "sandbox[0]: ",
            12,
        ),
    ];
    for (text, path, line) in cases {
        assert_eq!(line_of(&text, "bogus"), line, "the case itself is wrong");
        let e = parse_error(&text);
        assert!(
            e.starts_with(&format!("{path}unknown field `bogus`")),
            "{e}"
        );
        assert!(e.contains(&format!("line {line} ")), "{e}");
    }
}

#[test]
fn values_of_the_wrong_type_are_parse_errors_naming_path_and_line() {
    let text = config("", "        weight: heavy\n", "");
    let e = parse_error(&text);
    assert!(
        e.starts_with("routes[0].targets[0].weight: invalid type"),
        "{e}"
    );
    assert!(e.contains("line 9 "), "{e}");

    let text = config("", "", "").replace("    match: {}\n", "");
    let e = parse_error(&text);
    assert!(e.contains("routes[0]: missing field `match`"), "{e}");
}

#[test]
fn a_key_written_twice_at_the_top_is_a_parse_error() {
    let e = parse_error(&config(
        "",
        "",
        "listen: 127.0.0.1:1\nlisten: 127.0.0.1:2\n",
    ));
    assert!(e.contains("duplicate field `listen`"), "{e}");
}

#[test]
fn duplicate_route_names_are_rejected() {
    let text = config("", "", "").replace(
        "routes:\n",
        "routes:\n  - name: pay\n    match: {}\n    targets: [{ provider: psp }]\n",
    );
    let p = only_problem(&text);
    assert_eq!(p.path, "routes[1].name");
    assert_eq!(p.line, Some(8));
    assert!(p.message.contains("duplicate route name \"pay\""), "{p:?}");
}

#[test]
fn duplicate_provider_keys_are_rejected() {
    let text = config("  psp:\n    url: https://other.psp.example\n", "", "");
    let e = match load_with(&text, &Secrets::default()) {
        Ok(s) => panic!(
            "accepted; psp now points at {}",
            s.providers["psp"].authority
        ),
        Err(e) => e.to_string(),
    };
    assert!(e.contains("psp"), "{e}");
    assert!(e.contains("line"), "{e}");
}

#[test]
fn a_route_naming_an_unknown_provider_is_reported_at_the_target() {
    let text = "\
providers:
  psp-primary:
    url: https://api.primary.example
  psp-backup:
    url: https://api.backup.example
routes:
  - name: payments
    match: { path_prefix: /v1/ }
    targets:
      - { provider: psp-primary, priority: 0 }
      - { provider: psp-bakup, priority: 1 }
";
    let e = match load_with(text, &Secrets::default()) {
        Err(ConfigError::Invalid(problems)) => {
            assert_eq!(problems.len(), 1, "{problems:#?}");
            let p = &problems[0];
            assert_eq!(p.path, "routes[0].targets[1].provider");
            assert_eq!(p.line, Some(11));
            assert!(
                p.message.contains("unknown provider \"psp-bakup\""),
                "{p:?}"
            );
            // The message helps to spot the typo.
            assert!(p.message.contains("psp-backup, psp-primary"), "{p:?}");
            ConfigError::Invalid(problems).to_string()
        }
        other => panic!("expected a problem, got {other:?}"),
    };
    assert!(
        e.contains("routes[0].targets[1].provider (line 11): unknown provider \"psp-bakup\""),
        "{e}"
    );

    // In block style the line is the one of the `provider` key, not of the list item.
    let text = text.replace(
        "      - { provider: psp-bakup, priority: 1 }\n",
        "      - priority: 1\n        provider: psp-bakup\n",
    );
    let p = only_problem(&text);
    assert_eq!(p.path, "routes[0].targets[1].provider");
    assert_eq!(p.line, Some(12));
}

#[test]
fn bad_durations_are_rejected() {
    let cases = [
        (
            config("", "", "drain_timeout: 5\n"),
            "drain_timeout",
            "drain_timeout",
            "has no unit",
        ),
        (
            config("    timeout: fast\n", "", ""),
            "providers.psp.timeout",
            "fast",
            "is not a duration",
        ),
        (
            config("    connect_timeout: 0s\n", "", ""),
            "providers.psp.connect_timeout",
            "connect_timeout",
            "greater than zero",
        ),
        (
            config("", "    timeout: 0s\n", ""),
            "routes[0].timeout",
            "0s",
            "greater than zero",
        ),
        (
            config("    pool_idle_timeout: 5\n", "", ""),
            "providers.psp.pool_idle_timeout",
            "pool_idle_timeout",
            "\"5s\"",
        ),
    ];
    for (text, path, needle, phrase) in cases {
        assert_problem(&only_problem(&text), path, &text, needle, phrase);
    }
}

#[test]
fn bad_sizes_are_rejected() {
    let cases = [
        (
            config("", "    max_body: 1.5MiB\n", ""),
            "routes[0].max_body",
            "is not a size",
        ),
        (
            config("", "    max_body: 10PB\n", ""),
            "routes[0].max_body",
            "is not a size",
        ),
        (
            config("", "    max_body: 65MiB\n", ""),
            "routes[0].max_body",
            "must be between 0 and 67108864 bytes",
        ),
        (
            config("", "", "max_header_bytes: 4KiB\n"),
            "max_header_bytes",
            "must be between 8192 and",
        ),
        (
            config("", "", "max_header_bytes: 32MiB\n"),
            "max_header_bytes",
            "and 16777216 bytes",
        ),
    ];
    for (text, path, phrase) in cases {
        let key = path.rsplit('.').next().unwrap_or(path);
        assert_problem(&only_problem(&text), path, &text, key, phrase);
    }

    // The limits themselves are allowed.
    let s = valid(&config(
        "",
        "    max_body: 64MiB\n",
        "max_header_bytes: 8KiB\n",
    ));
    assert_eq!(s.routes[0].max_body, 64 << 20);
    assert_eq!(s.max_header_bytes, 8 << 10);
}

/// A config whose provider `psp` has `url` (quoted).
fn with_url(url: &str) -> String {
    config("", "", "").replace("url: https://api.psp.example", &format!("url: \"{url}\""))
}

#[test]
fn bad_provider_urls_are_rejected_at_the_url() {
    let cases = [
        ("not a url", "is not a URL"),
        ("ftp://files.psp.example", "must start with https://"),
        ("api.psp.example", "must start with https://"),
        ("https://", "\"https://\""),
        ("https:///v1", "\"https:///v1\""),
        ("https://api.psp.example/v1?mode=test", "no query"),
        (
            "https://user:pass@api.psp.example",
            "credentials in the URL",
        ),
        (
            "http://api.psp.example",
            "only allowed to a loopback address",
        ),
        (
            "http://localhost.psp.example",
            "only allowed to a loopback address",
        ),
        ("http://10.0.0.1:8080", "only allowed to a loopback address"),
    ];
    for (url, phrase) in cases {
        let text = with_url(url);
        let p = only_problem(&text);
        assert_problem(&p, "providers.psp.url", &text, "url:", phrase);
        // The credentials never reach the log.
        assert!(!p.message.contains("pass"), "{p:?}");
    }
}

#[test]
fn plain_http_is_allowed_to_loopback_only() {
    for (url, authority) in [
        ("http://127.0.0.1:9101", "127.0.0.1:9101"),
        ("http://localhost:9101", "localhost:9101"),
        ("http://[::1]:9101", "[::1]:9101"),
    ] {
        let s = valid(&with_url(url));
        let p = &s.providers["psp"];
        assert_eq!(p.scheme, http::uri::Scheme::HTTP, "{url}");
        assert_eq!(p.authority.as_str(), authority, "{url}");
    }
}

#[test]
fn an_https_url_keeps_its_base_path_without_the_trailing_slash() {
    let s = valid(&with_url("https://api.psp.example:8443/v2/"));
    let p = &s.providers["psp"];
    assert_eq!(p.scheme, http::uri::Scheme::HTTPS);
    assert_eq!(p.authority.as_str(), "api.psp.example:8443");
    assert_eq!(p.base_path, "/v2");

    let s = valid(&with_url("https://api.psp.example/a/b"));
    assert_eq!(s.providers["psp"].base_path, "/a/b");
}

#[test]
fn provider_auth_reads_its_value_from_the_environment() {
    let text = config(
        "    auth: { header: X-Api-Key, value_env: PSP_API_KEY }\n",
        "",
        "",
    );
    let s = valid_with(&text, &Secrets::default().with("PSP_API_KEY", "sk_live_1"));
    let auth = match &s.providers["psp"].auth {
        Some(a) => a,
        None => panic!("no auth"),
    };
    assert_eq!(auth.header, HeaderName::from_static("x-api-key"));
    assert_eq!(auth.value.header_value(), "sk_live_1");
    assert!(auth.value.header_value().is_sensitive());
    assert!(auth.value.matches(b"sk_live_1"));
    assert!(!auth.value.matches(b"sk_live_2"));
    assert!(!auth.value.matches(b"sk_live_12"));

    // `check` lists where each secret comes from.
    assert_eq!(s.secrets.len(), 1);
    assert_eq!(s.secrets[0].path, "providers.psp.auth.value_env");
    assert_eq!(
        s.secrets[0].source,
        SecretRef::Env("PSP_API_KEY".to_owned())
    );

    // Without a header name the credential goes into Authorization.
    let text = config("    auth: { value_env: PSP_API_KEY }\n", "", "");
    let s = valid_with(&text, &Secrets::default().with("PSP_API_KEY", "Bearer x"));
    let header = s.providers["psp"].auth.as_ref().map(|a| a.header.clone());
    assert_eq!(header, Some(http::header::AUTHORIZATION));
}

#[test]
fn a_missing_environment_variable_is_named() {
    let text = config("    auth:\n      value_env: PSP_API_KEY\n", "", "");
    let p = only_problem(&text);
    assert_problem(
        &p,
        "providers.psp.auth.value_env",
        &text,
        "value_env",
        "PSP_API_KEY",
    );

    let text = config("", "", "admin:\n  token_env: SWITCHYARD_ADMIN_TOKEN\n");
    let p = only_problem(&text);
    assert_problem(
        &p,
        "admin.token_env",
        &text,
        "token_env",
        "SWITCHYARD_ADMIN_TOKEN",
    );
}

#[test]
fn a_secret_comes_from_exactly_one_source() {
    let text = config(
        "    auth:\n      value_env: PSP_API_KEY\n      value_file: psp.key\n",
        "",
        "",
    );
    let secrets = Secrets::default()
        .with("PSP_API_KEY", "a")
        .with("/etc/switchyard/psp.key", "b");
    let p = only_problem_with(&text, &secrets);
    assert_eq!(p.path, "providers.psp.auth.value");
    assert_eq!(p.line, Some(line_of(&text, "auth:")));
    assert!(p.message.contains("not both"), "{p:?}");

    let text = config("    auth: { header: X-Api-Key }\n", "", "");
    assert_problem(
        &only_problem(&text),
        "providers.psp.auth",
        &text,
        "auth:",
        "set value_env or value_file",
    );

    let text = config(
        "",
        "",
        "admin:\n  token_env: A\n  token_file: admin.token\n",
    );
    let secrets = Secrets::default()
        .with("A", "a")
        .with("/etc/switchyard/admin.token", "b");
    let p = only_problem_with(&text, &secrets);
    assert_eq!(p.path, "admin.token");
    assert!(p.message.contains("not both"), "{p:?}");

    let text = config("    auth: { value_env: \"\" }\n", "", "");
    let p = only_problem(&text);
    assert_eq!(p.path, "providers.psp.auth.value");
    assert!(p.message.contains("empty"), "{p:?}");
}

#[test]
fn a_secret_that_cannot_be_a_header_value_is_rejected_without_showing_it() {
    let text = config("    auth: { value_env: PSP_API_KEY }\n", "", "");
    let secrets = Secrets::default().with("PSP_API_KEY", "sk_live\nX-Evil: 1");
    let p = only_problem_with(&text, &secrets);
    assert_problem(
        &p,
        "providers.psp.auth.value_env",
        &text,
        "value_env",
        "not allowed in an HTTP header",
    );
    assert!(p.message.contains("PSP_API_KEY"), "{p:?}");
    assert!(!p.message.contains("sk_live"), "{p:?}");
}

#[test]
fn a_file_secret_loses_its_trailing_newline_and_is_never_shown() {
    let text = config(
        "    auth: { value_file: secrets/psp.key }\n",
        "",
        "admin:\n  listen: 0.0.0.0:9901\n  token_file: /run/admin.token\n",
    );
    let secrets = Secrets::default()
        .with("/etc/switchyard/secrets/psp.key", "sk_live_file\n")
        .with("/run/admin.token", "adm1n-t0ken\r\n");
    let s = valid_with(&text, &secrets);

    let auth = match &s.providers["psp"].auth {
        Some(a) => a,
        None => panic!("no auth"),
    };
    assert_eq!(auth.value.header_value(), "sk_live_file");
    let token = match &s.admin.token {
        Some(t) => t,
        None => panic!("no admin token"),
    };
    assert!(token.matches(b"adm1n-t0ken"));

    let debug = format!("{s:?}");
    assert!(debug.contains("<redacted>"), "{debug}");
    assert!(!debug.contains("sk_live_file"), "{debug}");
    assert!(!debug.contains("adm1n-t0ken"), "{debug}");
    assert_eq!(format!("{:?}", auth.value), "Secret(<redacted>)");

    let uses: Vec<(&str, &SecretRef)> = s
        .secrets
        .iter()
        .map(|u| (u.path.as_str(), &u.source))
        .collect();
    assert_eq!(
        uses,
        [
            (
                "admin.token_file",
                &SecretRef::File(PathBuf::from("/run/admin.token"))
            ),
            (
                "providers.psp.auth.value_file",
                &SecretRef::File(PathBuf::from("/etc/switchyard/secrets/psp.key"))
            ),
        ]
    );
}

#[test]
fn an_auth_header_name_must_be_valid() {
    let text = config(
        "    auth: { header: \"Api Key\", value_env: PSP_API_KEY }\n",
        "",
        "",
    );
    let secrets = Secrets::default().with("PSP_API_KEY", "k");
    assert_problem(
        &only_problem_with(&text, &secrets),
        "providers.psp.auth.header",
        &text,
        "auth:",
        "\"Api Key\" is not a header name",
    );
}

#[test]
fn tls_client_cert_and_key_go_together() {
    let text = config("    tls:\n      client_cert_file: client.pem\n", "", "");
    assert_problem(
        &only_problem(&text),
        "providers.psp.tls",
        &text,
        "tls:",
        "client_cert_file and client_key_file go together",
    );

    let text = config("    tls: { client_key_file: client-key.pem }\n", "", "");
    assert_eq!(only_problem(&text).path, "providers.psp.tls");
}

#[test]
fn tls_needs_an_https_url() {
    let text = with_url("http://127.0.0.1:9101")
        .replace("routes:", "    tls: { server_name: psp.example }\nroutes:");
    assert_problem(
        &only_problem(&text),
        "providers.psp.tls",
        &text,
        "tls:",
        "use https://",
    );
}

#[test]
fn tls_files_are_resolved_against_the_config_folder() {
    let text = config(
        "    tls:\n      ca_file: ca.pem\n      client_cert_file: certs/client.pem\n      client_key_file: /keys/client-key.pem\n      server_name: api.psp.example\n",
        "",
        "",
    );
    let s = valid(&text);
    let tls = &s.providers["psp"].tls;
    assert_eq!(tls.ca_file, Some(PathBuf::from("/etc/switchyard/ca.pem")));
    assert_eq!(
        tls.client_cert,
        Some((
            PathBuf::from("/etc/switchyard/certs/client.pem"),
            PathBuf::from("/keys/client-key.pem"),
        ))
    );
    assert_eq!(tls.server_name.as_deref(), Some("api.psp.example"));
}

#[test]
fn the_admin_listener_is_never_the_shop_listener() {
    let text = config(
        "",
        "",
        "listen: 127.0.0.1:8080\nadmin:\n  listen: 127.0.0.1:8080\n",
    );
    assert_problem(
        &only_problem(&text),
        "admin.listen",
        &text,
        "  listen: 127.0.0.1:8080",
        "must differ from listen",
    );

    // The default admin address against an explicit shop listener on it.
    let text = config("", "", "listen: 127.0.0.1:9901\n");
    let p = only_problem(&text);
    assert_eq!(p.path, "admin.listen");
    assert_eq!(p.line, None);
}

#[test]
fn an_admin_listener_off_loopback_needs_a_token() {
    let text = config("", "", "admin:\n  listen: 0.0.0.0:9901\n");
    assert_problem(
        &only_problem(&text),
        "admin.listen",
        &text,
        "listen: 0.0.0.0",
        "needs a token",
    );

    let text = config(
        "",
        "",
        "admin:\n  listen: 0.0.0.0:9901\n  token_env: SWITCHYARD_ADMIN_TOKEN\n",
    );
    let secrets = Secrets::default().with("SWITCHYARD_ADMIN_TOKEN", "t0ken");
    let s = valid_with(&text, &secrets);
    assert_eq!(s.admin.listen, addr("0.0.0.0:9901"));
    assert!(s.admin.token.as_ref().is_some_and(|t| t.matches(b"t0ken")));
    assert_eq!(s.secrets.len(), 1);
    assert_eq!(s.secrets[0].path, "admin.token_env");
    assert_eq!(
        s.secrets[0].source,
        SecretRef::Env("SWITCHYARD_ADMIN_TOKEN".to_owned())
    );

    // A token that cannot be read is one problem, at the key that names it.
    let p = only_problem(&text);
    assert_eq!(p.path, "admin.token_env");
    let text = text.replace(
        "token_env: SWITCHYARD_ADMIN_TOKEN",
        "token_file: admin.token",
    );
    let p = only_problem(&text);
    assert_eq!(p.path, "admin.token_file");
    assert!(p.message.contains("/etc/switchyard/admin.token"), "{p:?}");
}

#[test]
fn listen_addresses_must_be_ip_and_port() {
    let text = config("", "", "listen: shop:8080\n");
    assert_problem(
        &only_problem(&text),
        "listen",
        &text,
        "listen:",
        "\"shop:8080\" is not an address",
    );
    let text = config("", "", "sandbox:\n  - { name: psp, listen: 127.0.0.1 }\n");
    assert_problem(
        &only_problem(&text),
        "sandbox[0].listen",
        &text,
        "name: psp",
        "is not an address",
    );
}

#[test]
fn sandbox_names_are_unique_and_plain() {
    let text = config(
        "",
        "",
        "sandbox:\n  - { name: psp, listen: 127.0.0.1:9101 }\n  - { name: psp, listen: 127.0.0.1:9102 }\n  - { name: my psp, listen: 127.0.0.1:9103 }\n",
    );
    let all = problems(&text);
    let found: Vec<(&str, Option<usize>)> = all.iter().map(|p| (p.path.as_str(), p.line)).collect();
    assert_eq!(
        found,
        [("sandbox[1].name", Some(11)), ("sandbox[2].name", Some(12))],
        "{all:#?}"
    );
    assert!(all[0].message.contains("duplicate sandbox name \"psp\""));
    assert!(all[1].message.contains("letters, digits"));
}

/// A webhook section with one webhook; `verify` and `extra` are lines indented for its keys.
fn webhook(verify: &str, extra: &str) -> String {
    config(
        "",
        "",
        &format!(
            "webhooks:
  - name: stripe-events
    path: /webhooks/stripe
    forward_to: http://127.0.0.1:3000/payments/webhook
    verify:
{verify}{extra}"
        ),
    )
}

#[test]
fn webhooks_parse_with_their_defaults() {
    use super::validate::{SignatureScheme, DEFAULT_DEDUPE_TTL, DEFAULT_WEBHOOK_TOLERANCE};
    let secrets = Secrets::default()
        .with("WHSEC", "whsec_new")
        .with("WHSEC_OLD", "whsec_old");
    let text = webhook(
        "      scheme: stripe\n      secrets_env: [WHSEC, WHSEC_OLD]\n",
        "",
    );
    let s = valid_with(&text, &secrets);
    assert_eq!(s.webhooks.len(), 1);
    let w = &s.webhooks[0];
    assert_eq!(&*w.name, "stripe-events");
    assert_eq!(w.path, "/webhooks/stripe");
    assert_eq!(w.listen, None);
    assert_eq!(w.forward_to, "http://127.0.0.1:3000/payments/webhook");
    assert_eq!(w.verify.scheme, SignatureScheme::Stripe);
    let keys: Vec<&[u8]> = w.verify.keys.iter().map(|k| k.as_bytes()).collect();
    assert_eq!(keys, [&b"whsec_new"[..], &b"whsec_old"[..]]);
    assert_eq!(w.verify.tolerance, DEFAULT_WEBHOOK_TOLERANCE);
    assert!(w.allow_from.is_none());
    assert_eq!(w.dedupe.ttl, DEFAULT_DEDUPE_TTL);
    assert!(w.sign_for_shop.is_none());
    assert_eq!(w.max_body, 1 << 20);
    assert_eq!(w.timeout, Duration::from_secs(10));
    // Secrets are listed by where they come from, never by value.
    let uses: Vec<&str> = s.secrets.iter().map(|u| u.path.as_str()).collect();
    assert_eq!(
        uses,
        [
            "webhooks[0].verify.secrets_env[0]",
            "webhooks[0].verify.secrets_env[1]"
        ]
    );
    assert!(!format!("{s:?}").contains("whsec_new"));
    assert!(s.audit.is_none());
}

#[test]
fn webhook_settings_are_kept_as_written() {
    use super::validate::{SignatureEncoding, SignatureScheme};
    let secrets = Secrets::default()
        .with("CKO", "cko-secret")
        .with("SHOP", "shop-secret")
        .with(
            "ADYEN",
            "44782DEF547AAA06C910C43932B1EB0C71FC68D9D0C057550C48EC2ACF6BA056",
        );
    let text = config(
        "",
        "",
        "webhooks:
  - name: cko
    path: /webhooks/cko
    listen: 0.0.0.0:8443
    forward_to: https://shop.example/hooks?source=cko
    verify: { scheme: hmac-sha256, header: Cko-Signature, encoding: base64, prefix: 'sha256=', timestamp_header: X-Ts, tolerance: 2m, secrets_env: [CKO] }
    allow_from: [3.18.12.63/32, 2600:1f18::/32, 10.1.2.3]
    dedupe: { ttl: 7d, max_entries: 10 }
    sign_for_shop: { secret_env: SHOP }
    max_body: 64KiB
    timeout: 3s
  - name: adyen
    path: /webhooks/adyen
    forward_to: http://localhost:3000/adyen
    verify: { scheme: adyen, secrets_env: [ADYEN] }
",
    );
    let s = valid_with(&text, &secrets);
    let w = &s.webhooks[0];
    assert_eq!(w.listen, Some(addr("0.0.0.0:8443")));
    let SignatureScheme::HmacSha256(g) = &w.verify.scheme else {
        panic!("{:?}", w.verify.scheme)
    };
    assert_eq!(g.header, "cko-signature");
    assert_eq!(g.encoding, SignatureEncoding::Base64);
    assert_eq!(g.prefix, "sha256=");
    assert_eq!(
        g.timestamp_header.as_ref().map(|h| h.as_str()),
        Some("x-ts")
    );
    assert_eq!(w.verify.tolerance, Duration::from_secs(120));
    let nets: Vec<String> = w
        .allow_from
        .iter()
        .flatten()
        .map(ToString::to_string)
        .collect();
    assert_eq!(nets, ["3.18.12.63/32", "2600:1f18::/32", "10.1.2.3/32"]);
    assert_eq!(w.dedupe.ttl, Duration::from_secs(7 * 24 * 3600));
    assert_eq!(w.dedupe.max_entries, 10);
    let shop = w.sign_for_shop.as_ref().unwrap();
    assert_eq!(shop.header, "x-switchyard-signature");
    assert_eq!(shop.key.as_bytes(), b"shop-secret");
    assert_eq!(w.max_body, 64 << 10);
    assert_eq!(w.timeout, Duration::from_secs(3));
    // An Adyen key is hexadecimal and used decoded.
    let a = &s.webhooks[1];
    assert_eq!(a.verify.scheme, SignatureScheme::Adyen);
    assert_eq!(a.verify.keys[0].as_bytes().len(), 32);
    assert_eq!(a.verify.keys[0].as_bytes()[0], 0x44);
}

#[test]
fn webhook_problems_name_their_path_and_line() {
    let stripe = "      scheme: stripe\n      secrets_env: [WHSEC]\n";
    let secrets = Secrets::default()
        .with("WHSEC", "whsec_x")
        .with("BAD", "not-hex!");
    let cases = [
        (
            webhook("      scheme: paypal\n      secrets_env: [WHSEC]\n", ""),
            "webhooks[0].verify.scheme",
            "scheme: paypal",
            "not one of stripe, adyen, hmac-sha256",
        ),
        (
            webhook("      scheme: stripe\n", ""),
            "webhooks[0].verify",
            "verify:",
            "set secrets_env or secrets_file",
        ),
        (
            webhook("      scheme: stripe\n      secrets_env: [MISSING]\n", ""),
            "webhooks[0].verify.secrets_env[0]",
            "secrets_env: [MISSING]",
            "MISSING is not set",
        ),
        (
            webhook("      scheme: adyen\n      secrets_env: [BAD]\n", ""),
            "webhooks[0].verify.secrets_env[0]",
            "secrets_env: [BAD]",
            "not an Adyen HMAC key",
        ),
        (
            webhook("      scheme: hmac-sha256\n      secrets_env: [WHSEC]\n", ""),
            "webhooks[0].verify.header",
            "verify:",
            "needs the header",
        ),
        (
            webhook(
                "      scheme: stripe\n      secrets_env: [WHSEC]\n      header: X-Sig\n",
                "",
            ),
            "webhooks[0].verify.header",
            "header: X-Sig",
            "hmac-sha256 only",
        ),
        (
            webhook(
                "      scheme: hmac-sha256\n      header: X-Sig\n      encoding: hexa\n      secrets_env: [WHSEC]\n",
                "",
            ),
            "webhooks[0].verify.encoding",
            "encoding: hexa",
            "not one of hex, base64",
        ),
        (
            webhook(
                "      scheme: adyen\n      secrets_env: [WHSEC]\n      tolerance: 5m\n",
                "",
            )
            .replace("whsec_x", ""),
            "webhooks[0].verify.tolerance",
            "tolerance: 5m",
            "signs no timestamp",
        ),
        (
            webhook(stripe, "    allow_from: [3.18.12.63/33]\n"),
            "webhooks[0].allow_from[0]",
            "allow_from:",
            "not an address or network",
        ),
        (
            webhook(stripe, "    allow_from: []\n"),
            "webhooks[0].allow_from",
            "allow_from:",
            "omit allow_from",
        ),
        (
            webhook(stripe, "    dedupe: { ttl: forever }\n"),
            "webhooks[0].dedupe.ttl",
            "dedupe:",
            "not a duration",
        ),
        (
            webhook(stripe, "    sign_for_shop: { header: X-Sig }\n"),
            "webhooks[0].sign_for_shop",
            "sign_for_shop:",
            "set secret_env or secret_file",
        ),
        (
            webhook(stripe, "    listen: 127.0.0.1:9901\n"),
            "webhooks[0].listen",
            "listen: 127.0.0.1:9901",
            "must differ from admin.listen",
        ),
        (
            webhook(stripe, "    listen: 127.0.0.1:8080\n"),
            "webhooks[0].listen",
            "listen: 127.0.0.1:8080",
            "omit listen",
        ),
        (
            webhook(stripe, "").replace("http://127.0.0.1:3000", "http://shop.example"),
            "webhooks[0].forward_to",
            "forward_to:",
            "only allowed to a loopback address",
        ),
        (
            webhook(stripe, "").replace("path: /webhooks/stripe", "path: webhooks"),
            "webhooks[0].path",
            "path: webhooks",
            "must start with '/'",
        ),
        (
            webhook(stripe, "").replace("name: stripe-events", "name: pay # clash"),
            "webhooks[0].name",
            "pay # clash",
            "also a route name",
        ),
    ];
    for (text, path, needle, phrase) in cases {
        // The Adyen-with-tolerance case has one more problem (its key is not hexadecimal): look for ours.
        let all = problems_with(&text, &secrets);
        let p = all
            .iter()
            .find(|p| p.path == path)
            .unwrap_or_else(|| panic!("no problem at {path}: {all:#?}\n{text}"));
        assert_problem(p, path, &text, needle, phrase);
    }
}

#[test]
fn two_webhooks_may_not_share_a_name_or_a_path_on_one_listener() {
    let secrets = Secrets::default().with("S", "s");
    let one = |name: &str, path: &str, listen: &str| {
        format!(
            "  - name: {name}\n    path: {path}\n{listen}    forward_to: http://127.0.0.1:3000/\n    verify: {{ scheme: stripe, secrets_env: [S] }}\n"
        )
    };
    let text = config(
        "",
        "",
        &format!(
            "webhooks:\n{}{}{}",
            one("a", "/h", ""),
            one("a", "/h", ""),
            one("b", "/h", "    listen: 127.0.0.1:7000\n"),
        ),
    );
    let all = problems_with(&text, &secrets);
    let found: Vec<(&str, bool)> = all
        .iter()
        .map(|p| (p.path.as_str(), p.message.contains("webhooks[0]")))
        .collect();
    assert_eq!(
        found,
        [("webhooks[1].name", false), ("webhooks[1].path", true)],
        "{all:#?}"
    );
}

#[test]
fn audit_parses_with_its_defaults_and_resolves_its_folder() {
    use super::validate::{AuditBodies, DEFAULT_AUDIT_RETENTION};
    let s = valid(&config("", "", "audit: { dir: audit }\n"));
    let a = s.audit.unwrap();
    assert_eq!(a.dir, Path::new(BASE).join("audit"));
    assert_eq!(a.retention, DEFAULT_AUDIT_RETENTION);
    assert_eq!(a.bodies, AuditBodies::None);
    assert_eq!(a.max_body, 64 << 10);
    assert_eq!(a.queue, 10_000);
    assert_eq!(a.max_bytes, 10 << 30);

    let s = valid(&config(
        "",
        "",
        "audit:\n  dir: /var/lib/switchyard/audit\n  retention: 180d\n  bodies: redacted\n  max_body: 16KiB\n  queue: 50\n  max_bytes: 512MiB\n",
    ));
    let a = s.audit.unwrap();
    assert_eq!(a.dir, PathBuf::from("/var/lib/switchyard/audit"));
    assert_eq!(a.retention, Duration::from_secs(180 * 24 * 3600));
    assert_eq!(a.bodies, AuditBodies::Redacted);
    assert_eq!(a.max_body, 16 << 10);
    assert_eq!(a.queue, 50);
    assert_eq!(a.max_bytes, 512 << 20);
}

#[test]
fn audit_problems_name_their_path_and_line() {
    let cases = [
        (
            "audit:\n  dir: a\n  bodies: full\n",
            "audit.bodies",
            "bodies: full",
            "not one of none, redacted",
        ),
        (
            "audit:\n  dir: a\n  retention: 12h\n",
            "audit.retention",
            "retention: 12h",
            "at least 1d",
        ),
        (
            "audit:\n  dir: a\n  queue: 0\n",
            "audit.queue",
            "queue: 0",
            "between 1 and",
        ),
        (
            "audit:\n  dir: ''\n",
            "audit.dir",
            "dir: ''",
            "must name a folder",
        ),
        (
            "audit:\n  dir: a\n  max_bytes: 64KiB\n",
            "audit.max_bytes",
            "max_bytes: 64KiB",
            "between 1048576 and",
        ),
        (
            "audit:\n  dir: a\n  max_bytes: lots\n",
            "audit.max_bytes",
            "max_bytes: lots",
            "not a size",
        ),
        (
            "audit:\n  dir: a\n  max_body: 2MiB\n",
            "audit.max_body",
            "max_body: 2MiB",
            "between 0 and",
        ),
    ];
    for (top, path, needle, phrase) in cases {
        let text = config("", "", top);
        assert_problem(&only_problem(&text), path, &text, needle, phrase);
    }
    // `dir` is required, and unknown keys are parse errors with their path.
    assert!(parse_error(&config("", "", "audit: { retention: 1d }\n")).contains("dir"));
    assert!(parse_error(&config("", "", "audit: { dir: a, file: x }\n")).contains("file"));
}

#[test]
fn route_checks() {
    let cases = [
        // (text, path, needle for the line, phrase)
        (
            config("", "", "")
                .replace("    targets:\n      - provider: psp\n", "    targets: []\n"),
            "routes[0].targets",
            "targets:",
            "at least one target",
        ),
        (
            config("", "        weight: 0\n", ""),
            "routes[0].targets[0].weight",
            "weight",
            "between 1 and 10000",
        ),
        (
            config("", "        weight: 10001\n", ""),
            "routes[0].targets[0].weight",
            "weight",
            "between 1 and 10000",
        ),
        (
            config("", "      - { provider: psp, priority: 1 }\n", ""),
            "routes[0].targets[1].provider",
            "priority: 1",
            "provider \"psp\" is already a target of this route",
        ),
        (
            config("", "", "").replace("match: {}", "match: { methods: [GET, post] }"),
            "routes[0].match.methods[1]",
            "match:",
            "\"post\" is not an HTTP method",
        ),
        (
            config("", "", "").replace("match: {}", "match:\n      path_prefix: v1/"),
            "routes[0].match.path_prefix",
            "path_prefix",
            "must start with '/'",
        ),
        (
            config("", "    strip_prefix: psp\n", ""),
            "routes[0].strip_prefix",
            "strip_prefix",
            "must start with '/'",
        ),
        (
            config("", "", "").replace(
                "match: {}",
                "match:\n      headers:\n        x-tenant: eu\n        \"x tenant\": eu",
            ),
            "routes[0].match.headers.x tenant",
            "\"x tenant\"",
            "\"x tenant\" is not a header name",
        ),
        (
            config("", "", "").replace("name: pay", "name: card payments"),
            "routes[0].name",
            "name:",
            "route names use letters",
        ),
        (
            config("", "", "")
                .replace("  psp:", "  psp one:")
                .replace("provider: psp", "provider: psp one"),
            "providers.psp one",
            "psp one:",
            "provider names use letters",
        ),
    ];
    for (text, path, needle, phrase) in cases {
        assert_problem(&only_problem(&text), path, &text, needle, phrase);
    }
}

#[test]
fn a_config_needs_a_route() {
    let text = "providers:\n  psp:\n    url: https://api.psp.example\nroutes: []\n";
    let p = only_problem(text);
    assert_eq!(p.path, "routes");
    assert_eq!(p.line, Some(4));
    assert!(p.message.contains("at least one route"), "{p:?}");

    let p = only_problem("listen: 127.0.0.1:8080\n");
    assert_eq!(p.path, "routes");
    assert_eq!(p.line, None);
}

#[test]
fn match_values_are_kept_as_configured() {
    let text = config("", "", "").replace(
        "match: {}",
        "match:\n      path_prefix: /v1\n      methods: [POST, PATCH]\n      host: Shop.Example\n      headers: { x-tenant: eu }",
    );
    let s = valid(&text);
    let m = &s.routes[0].matcher;
    assert_eq!(m.path_prefix, "/v1");
    assert_eq!(m.methods, Some(vec![Method::POST, Method::PATCH]));
    assert_eq!(m.host.as_deref(), Some("shop.example"));
    assert_eq!(
        m.headers,
        [(
            HeaderName::from_static("x-tenant"),
            HeaderValue::from_static("eu")
        )]
    );
    let headers = header_map(&[("x-tenant", "eu")]);
    assert!(m.matches(&Method::POST, "/v1/charges", Some("SHOP.example"), &headers));
    assert!(!m.matches(&Method::GET, "/v1/charges", Some("shop.example"), &headers));
}

#[test]
fn every_problem_of_a_file_is_reported() {
    let text = "\
listen: nowhere
drain_timeout: soon
providers:
  psp:
    url: ftp://api.psp.example
    slow_start: whenever
routes:
  - name: pay
    match: { methods: [post] }
    targets:
      - provider: nobody
";
    let all = problems(text);
    let found: Vec<(&str, Option<usize>)> = all.iter().map(|p| (p.path.as_str(), p.line)).collect();
    assert_eq!(
        found,
        [
            ("listen", Some(1)),
            ("drain_timeout", Some(2)),
            ("providers.psp.slow_start", Some(6)),
            ("providers.psp.url", Some(5)),
            ("routes[0].match.methods[0]", Some(9)),
            ("routes[0].targets[0].provider", Some(11)),
        ],
        "{all:#?}"
    );
    let shown = ConfigError::Invalid(all).to_string();
    assert_eq!(shown.lines().count(), 6, "{shown}");
    assert!(
        shown.starts_with("listen (line 1): \"nowhere\" is not an address"),
        "{shown}"
    );
}

#[test]
fn a_provider_with_a_bad_url_is_not_also_reported_as_unknown() {
    let text = with_url("ftp://api.psp.example");
    let all = problems(&text);
    assert_eq!(all.len(), 1, "{all:#?}");
    assert_eq!(all[0].path, "providers.psp.url");
}

fn header_map(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
    let mut map = HeaderMap::new();
    for (name, value) in pairs {
        map.append(*name, HeaderValue::from_static(value));
    }
    map
}

fn matcher(prefix: &str) -> Match {
    Match {
        path_prefix: prefix.to_owned(),
        methods: None,
        host: None,
        headers: Vec::new(),
    }
}

#[test]
fn path_prefixes_match_on_segment_boundaries() {
    let cases = [
        ("/v1", "/v1", true),
        ("/v1", "/v1/", true),
        ("/v1", "/v1/charges", true),
        ("/v1", "/v10", false),
        ("/v1", "/v1charges", false),
        ("/v1", "/v", false),
        ("/v1", "/V1", false),
        ("/v1/", "/v1/charges", true),
        ("/v1/", "/v1/", true),
        ("/v1/", "/v1", false),
        ("/v1/", "/v10/x", false),
        ("/", "/", true),
        ("/", "/anything/at/all", true),
    ];
    for (prefix, path, expected) in cases {
        assert_eq!(
            path_has_prefix(path, prefix),
            expected,
            "path {path:?} with prefix {prefix:?}"
        );
        let none = HeaderMap::new();
        assert_eq!(
            matcher(prefix).matches(&Method::GET, path, None, &none),
            expected,
            "matcher: path {path:?} with prefix {prefix:?}"
        );
    }
}

#[test]
fn a_matcher_checks_methods_host_and_headers() {
    let none = HeaderMap::new();

    let m = Match {
        methods: Some(vec![Method::GET, Method::POST]),
        ..matcher("/")
    };
    assert!(m.matches(&Method::GET, "/x", None, &none));
    assert!(m.matches(&Method::POST, "/x", None, &none));
    assert!(!m.matches(&Method::DELETE, "/x", None, &none));

    let m = Match {
        host: Some("shop.example".to_owned()),
        ..matcher("/")
    };
    assert!(m.matches(&Method::GET, "/", Some("shop.example"), &none));
    assert!(m.matches(&Method::GET, "/", Some("Shop.EXAMPLE"), &none));
    assert!(!m.matches(&Method::GET, "/", Some("other.example"), &none));
    assert!(!m.matches(&Method::GET, "/", Some("shop.example.evil"), &none));
    assert!(!m.matches(&Method::GET, "/", None, &none));

    let m = Match {
        headers: vec![(
            HeaderName::from_static("x-tenant"),
            HeaderValue::from_static("eu"),
        )],
        ..matcher("/")
    };
    assert!(m.matches(&Method::GET, "/", None, &header_map(&[("x-tenant", "eu")])));
    assert!(m.matches(
        &Method::GET,
        "/",
        None,
        &header_map(&[("x-tenant", "us"), ("x-tenant", "eu")])
    ));
    assert!(!m.matches(&Method::GET, "/", None, &header_map(&[("x-tenant", "EU")])));
    assert!(!m.matches(&Method::GET, "/", None, &header_map(&[("x-tenant", "eu2")])));
    assert!(!m.matches(&Method::GET, "/", None, &header_map(&[("x-other", "eu")])));
    assert!(!m.matches(&Method::GET, "/", None, &none));

    // All conditions must hold at once.
    let m = Match {
        path_prefix: "/v1".to_owned(),
        methods: Some(vec![Method::POST]),
        host: Some("shop.example".to_owned()),
        headers: vec![(
            HeaderName::from_static("x-tenant"),
            HeaderValue::from_static("eu"),
        )],
    };
    let eu = header_map(&[("x-tenant", "eu")]);
    assert!(m.matches(&Method::POST, "/v1/charges", Some("shop.example"), &eu));
    assert!(!m.matches(&Method::POST, "/v2/charges", Some("shop.example"), &eu));
    assert!(!m.matches(&Method::GET, "/v1/charges", Some("shop.example"), &eu));
    assert!(!m.matches(&Method::POST, "/v1/charges", Some("x.example"), &eu));
    assert!(!m.matches(&Method::POST, "/v1/charges", Some("shop.example"), &none));
}

#[test]
fn provider_health_settings_parse_with_defaults() {
    let text = config(
        "    breaker: { consecutive_failures: 3, failure_rate: 0.25, window: 30s, min_requests: 5, slow_call: 2s, open_for: 1s, max_open_for: 10s, half_open_probes: 1 }\n    health_check: { path: /ping, interval: 2s }\n    quota: { rps: 100, max_wait: 0s }\n    slow_start: 0s\n    max_throttle: 5s\n",
        "",
        "",
    );
    let s = load_with(&text, &Secrets::default()).unwrap();
    let p = &s.providers["psp"];
    assert_eq!(p.breaker.consecutive_failures, 3);
    assert_eq!(p.breaker.failure_rate, 0.25);
    assert_eq!(p.breaker.window, Duration::from_secs(30));
    assert_eq!(p.breaker.slow_call, Some(Duration::from_secs(2)));
    assert_eq!(p.breaker.slow_call_rate, 0.8, "default kept");
    assert_eq!(p.breaker.half_open_probes, 1);
    let hc = p.health_check.as_ref().unwrap();
    assert_eq!(hc.path, "/ping");
    assert_eq!(hc.interval, Duration::from_secs(2));
    assert_eq!(
        (hc.timeout, hc.unhealthy_after, hc.healthy_after),
        (Duration::from_secs(1), 3, 2)
    );
    let q = p.quota.unwrap();
    assert_eq!((q.rps, q.burst, q.max_wait), (100, 100, Duration::ZERO));
    assert_eq!(p.slow_start, Duration::ZERO);
    assert_eq!(p.max_throttle, Duration::from_secs(5));

    let plain = load_with(&config("", "", ""), &Secrets::default()).unwrap();
    let p = &plain.providers["psp"];
    assert_eq!(p.breaker, super::validate::BreakerConfig::default());
    assert!(p.health_check.is_none() && p.quota.is_none());
    assert_eq!(p.slow_start, Duration::from_secs(10));
    assert_eq!(plain.routes[0].overprovisioning, 1.4);
    assert!(plain.routes[0].rate_limit.is_none());
}

#[test]
fn provider_health_settings_are_checked() {
    let cases = [
        (
            "    breaker: { failure_rate: 1.5 }\n",
            "providers.psp.breaker.failure_rate",
            "between",
        ),
        (
            "    breaker: { failure_rate: 0 }\n",
            "providers.psp.breaker.failure_rate",
            "greater than 0",
        ),
        (
            "    breaker: { open_for: 10s, max_open_for: 1s }\n",
            "providers.psp.breaker.max_open_for",
            "at least open_for",
        ),
        (
            "    breaker: { half_open_probes: 0 }\n",
            "providers.psp.breaker.half_open_probes",
            "at least 1",
        ),
        (
            "    breaker: { jitter: 0.9 }\n",
            "providers.psp.breaker.jitter",
            "between",
        ),
        (
            "    health_check: { path: ping }\n",
            "providers.psp.health_check.path",
            "start with '/'",
        ),
        (
            "    health_check: { interval: 1s, timeout: 2s }\n",
            "providers.psp.health_check.timeout",
            "longer than interval",
        ),
        (
            "    quota: { rps: 0 }\n",
            "providers.psp.quota.rps",
            "at least 1",
        ),
        (
            "    slow_start: soon\n",
            "providers.psp.slow_start",
            "not a duration",
        ),
    ];
    for (line, path, phrase) in cases {
        let text = config(line, "", "");
        let all = problems(&text);
        assert!(
            all.iter()
                .any(|p| p.path == path && p.message.contains(phrase)),
            "{path}: {all:#?}"
        );
    }
}

#[test]
fn route_rate_limits_parse_and_are_checked() {
    use super::validate::RateLimitKey;
    let text = config("", "    rate_limit: { rps: 10, burst: 20, by: \"header:X-Shop-Id\" }\n    overprovisioning: 2.0\n", "");
    let s = load_with(&text, &Secrets::default()).unwrap();
    let r = &s.routes[0];
    let l = r.rate_limit.as_ref().unwrap();
    assert_eq!((l.rps, l.burst), (10, 20));
    assert_eq!(
        l.by,
        RateLimitKey::Header(http::HeaderName::from_static("x-shop-id"))
    );
    assert_eq!(r.overprovisioning, 2.0);
    let s = load_with(
        &config("", "    rate_limit: { rps: 5, by: client_ip }\n", ""),
        &Secrets::default(),
    )
    .unwrap();
    let l = s.routes[0].rate_limit.as_ref().unwrap();
    assert_eq!((l.burst, &l.by), (5, &RateLimitKey::ClientIp));
    for (line, path, phrase) in [
        (
            "    rate_limit: { rps: 5, by: tenant }\n",
            "routes[0].rate_limit.by",
            "not one of",
        ),
        (
            "    rate_limit: { rps: 5, by: \"header:bad header\" }\n",
            "routes[0].rate_limit.by",
            "not a header name",
        ),
        (
            "    rate_limit: { rps: 0 }\n",
            "routes[0].rate_limit.rps",
            "at least 1",
        ),
        (
            "    overprovisioning: 0.5\n",
            "routes[0].overprovisioning",
            "between 1.0 and 10.0",
        ),
    ] {
        let all = problems(&config("", line, ""));
        assert!(
            all.iter()
                .any(|p| p.path == path && p.message.contains(phrase)),
            "{path}: {all:#?}"
        );
    }
}

#[test]
fn pins_have_defaults_bounds_and_errors_naming_their_line() {
    assert_eq!(valid(&config("", "", "")).pins, Pins::default());
    let s = valid(&config("", "", "pins:\n  max_entries: 10000\n  ttl: 30d\n"));
    assert_eq!(s.pins.max_entries, 10_000);
    assert_eq!(s.pins.ttl, Duration::from_secs(30 * 24 * 3600));
    let text = config("", "", "pins:\n  max_entries: 0\n");
    assert_problem(
        &only_problem(&text),
        "pins.max_entries",
        &text,
        "max_entries",
        "at least 1",
    );
    let text = config("", "", "pins:\n  ttl: forever\n");
    assert_problem(&only_problem(&text), "pins.ttl", &text, "ttl", "duration");
    let text = config("", "", "pins:\n  max_entires: 5\n");
    assert!(
        parse_error(&text).contains("max_entires"),
        "{}",
        parse_error(&text)
    );
}

#[test]
fn pinned_wait_defaults_to_5s_and_0s_turns_it_off() {
    assert_eq!(
        valid(&config("", "", "")).routes[0].retry.pinned_wait,
        Duration::from_secs(5)
    );
    let s = valid(&config("", "    retry: { pinned_wait: 0s }\n", ""));
    assert_eq!(s.routes[0].retry.pinned_wait, Duration::ZERO);
    let text = config("", "    retry:\n      pinned_wait: soon\n", "");
    assert_problem(
        &only_problem(&text),
        "routes[0].retry.pinned_wait",
        &text,
        "pinned_wait",
        "duration",
    );
}
