//! Config parsing and validation of a whole file, driven by inline YAML through [`super::load`], and
//! the helpers every section's tests (beside their section, in `validate/`) share.
//!
//! Secrets come from a map, never from the process environment or the file system, so these tests
//! neither read nor change anything outside the process.

pub(crate) use std::net::SocketAddr;
pub(crate) use std::path::{Path, PathBuf};
pub(crate) use std::time::Duration;

pub(crate) use http::{HeaderMap, HeaderName, HeaderValue, Method};

pub(crate) use super::{
    load, ConfigError, MapSecrets as Secrets, Pins, Problem, SecretRef, Snapshot,
};

/// The folder relative file names are resolved against.
pub(crate) const BASE: &str = "/etc/switchyard";

pub(crate) fn load_with(text: &str, secrets: &Secrets) -> Result<Snapshot, ConfigError> {
    load(text, Path::new(BASE), secrets)
}

pub(crate) fn valid_with(text: &str, secrets: &Secrets) -> Snapshot {
    match load_with(text, secrets) {
        Ok(snapshot) => snapshot,
        Err(e) => panic!("expected a valid config, got:\n{e}\n--- text ---\n{text}"),
    }
}

pub(crate) fn valid(text: &str) -> Snapshot {
    valid_with(text, &Secrets::default())
}

pub(crate) fn problems_with(text: &str, secrets: &Secrets) -> Vec<Problem> {
    match load_with(text, secrets) {
        Err(ConfigError::Invalid(problems)) => problems,
        Err(other) => panic!("expected validation problems, got: {other}\n--- text ---\n{text}"),
        Ok(snapshot) => {
            panic!("expected validation problems, got {snapshot:?}\n--- text ---\n{text}")
        }
    }
}

pub(crate) fn problems(text: &str) -> Vec<Problem> {
    problems_with(text, &Secrets::default())
}

/// The only problem of `text`; fails listing them all when there are more.
pub(crate) fn only_problem_with(text: &str, secrets: &Secrets) -> Problem {
    let mut all = problems_with(text, secrets);
    assert_eq!(
        all.len(),
        1,
        "expected exactly one problem, got {all:#?}\n--- text ---\n{text}"
    );
    all.remove(0)
}

pub(crate) fn only_problem(text: &str) -> Problem {
    only_problem_with(text, &Secrets::default())
}

/// The Display text of the parse (serde) error of `text`.
pub(crate) fn parse_error(text: &str) -> String {
    match load_with(text, &Secrets::default()) {
        Err(e @ ConfigError::Parse(_)) => e.to_string(),
        Err(other) => panic!("expected a parse error, got: {other}\n--- text ---\n{text}"),
        Ok(snapshot) => panic!("expected a parse error, got {snapshot:?}\n--- text ---\n{text}"),
    }
}

/// The 1-based line of the first line of `text` that contains `needle`.
pub(crate) fn line_of(text: &str, needle: &str) -> usize {
    match text.lines().position(|l| l.contains(needle)) {
        Some(i) => i + 1,
        None => panic!("{needle:?} is not in the text:\n{text}"),
    }
}

/// Asserts `p` is at `path`, on the line of `text` holding `needle`, with `phrase` in its message.
#[track_caller]
pub(crate) fn assert_problem(p: &Problem, path: &str, text: &str, needle: &str, phrase: &str) {
    assert_eq!(p.path, path, "{p:?}");
    assert_eq!(p.line, Some(line_of(text, needle)), "{p:?}");
    assert!(
        p.message.contains(phrase),
        "message of {p:?} lacks {phrase:?}"
    );
}

/// A valid config with one provider `psp` and one route `pay`, plus extra lines (each ending in a
/// newline, already indented) in the provider, in the route, and at the top level.
pub(crate) fn config(provider: &str, route: &str, top: &str) -> String {
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

pub(crate) fn addr(text: &str) -> SocketAddr {
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
    assert_eq!(s.state.backend, super::StateBackend::Local);
    assert_eq!(s.state.dir, Path::new(BASE).join("state"));
    assert!(s.state.redis.is_none());
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
    assert_eq!(p.tls, super::model::Tls::default());
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

    let text = config("", "", "").replace("    targets:\n      - provider: psp\n", "");
    let e = parse_error(&text);
    assert!(e.contains("routes[0]: missing field `targets`"), "{e}");
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

/// `depth` nested flow lists under a top-level key.
fn nested(depth: usize) -> String {
    format!("listen: {}{}\n", "[".repeat(depth), "]".repeat(depth))
}

#[test]
fn nesting_deeper_than_the_limit_is_refused_naming_the_limit() {
    for depth in [super::MAX_NESTING, 100_000] {
        match load_with(&nested(depth), &Secrets::default()) {
            Err(ConfigError::TooDeep { line, limit }) => {
                assert_eq!((line, limit), (1, super::MAX_NESTING));
            }
            other => panic!("depth {depth}: expected TooDeep, got {other:?}"),
        }
    }
    let message = match load_with(&nested(100_000), &Secrets::default()) {
        Err(e) => e.to_string(),
        Ok(_) => panic!("accepted"),
    };
    assert!(
        message.contains("line 1") && message.contains("deeper than the limit of 64 levels"),
        "{message}"
    );
    // At the limit the text gets as far as the schema, which has its own say.
    let at_limit = nested(super::MAX_NESTING - 1);
    assert!(
        matches!(
            load_with(&at_limit, &Secrets::default()),
            Err(ConfigError::Parse(_))
        ),
        "{at_limit}"
    );
    // Block style counts the same way.
    let mut block = String::from("providers:\n");
    for level in 0..70 {
        block.push_str(&format!("{}k{level}:\n", "  ".repeat(level + 1)));
    }
    block.push_str(&format!("{}x: 1\n", "  ".repeat(71)));
    assert!(
        matches!(
            load_with(&block, &Secrets::default()),
            Err(ConfigError::TooDeep { limit: 64, .. })
        ),
        "{block}"
    );
}

#[test]
fn a_text_larger_than_the_limit_is_refused_naming_the_limit() {
    let mut text = config("", "", "");
    let filler = "# padding padding padding padding padding padding padding padding\n";
    while text.len() <= super::MAX_CONFIG_BYTES {
        text.push_str(filler);
    }
    match load_with(&text, &Secrets::default()) {
        Err(e @ ConfigError::TooLarge { .. }) => {
            let message = e.to_string();
            assert!(
                message.contains(&format!("limit of {} bytes", super::MAX_CONFIG_BYTES)),
                "{message}"
            );
        }
        other => panic!("expected TooLarge, got {other:?}"),
    }
}

#[test]
fn a_file_larger_than_the_limit_is_refused_before_it_is_read_whole() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("routes.yaml");
    std::fs::write(&path, vec![b'#'; super::MAX_CONFIG_BYTES + 10]).unwrap();
    match super::load_file(&path, &Secrets::default()) {
        Err(ConfigError::TooLarge { size, limit }) => {
            assert_eq!(size, super::MAX_CONFIG_BYTES as u64 + 10);
            assert_eq!(limit, super::MAX_CONFIG_BYTES);
        }
        other => panic!("expected TooLarge, got {other:?}"),
    }
    // A file at the limit is read.
    std::fs::write(&path, vec![b'#'; super::MAX_CONFIG_BYTES]).unwrap();
    assert!(super::read_file(&path).is_ok());
}

#[test]
fn a_file_that_is_not_utf8_is_refused_naming_the_line() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("routes.yaml");
    let mut bytes = config("", "", "").into_bytes();
    let line = 1 + bytes.iter().filter(|&&b| b == b'\n').count();
    bytes.extend_from_slice(b"# caf\xe9 latin-1\n");
    std::fs::write(&path, &bytes).unwrap();
    match super::load_file(&path, &Secrets::default()) {
        Err(e @ ConfigError::NotUtf8 { .. }) => {
            let message = e.to_string();
            assert!(
                message.starts_with(&format!("line {line}: not UTF-8")),
                "{message}"
            );
        }
        other => panic!("expected NotUtf8, got {other:?}"),
    }
}
