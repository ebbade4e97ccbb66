//! `state:` — which store holds payment state, and how the shared one is reached.
//!
//! A Redis URL may carry a password, so one written in the file with a password is refused (it would
//! sit in version control and in every copy of the config): such a URL comes from `url_env` or
//! `url_file`. No message here ever repeats a URL, wherever it came from.

use super::Validator;
use crate::config::model::{
    OnUnavailable, RedisConfig, RedisUrl, StateBackend, StateConfig, DEFAULT_QUOTA_SHARE,
    DEFAULT_REDIS_TIMEOUT, DEFAULT_STATE_DIR, MAX_REDIS_TIMEOUT,
};
use crate::config::schema;
use crate::config::secrets::SecretRef;

impl Validator<'_> {
    pub(super) fn state(&mut self, raw: Option<schema::RawState>) -> StateConfig {
        let raw = raw.unwrap_or(schema::RawState {
            backend: None,
            dir: None,
            redis: None,
        });
        let backend = match raw.backend.as_deref() {
            None | Some("local") => StateBackend::Local,
            Some("redis") => StateBackend::Redis,
            Some("memory") => StateBackend::Memory,
            Some(other) => {
                self.problem(
                    "state.backend",
                    format!("\"{other}\" is not one of local, redis, memory"),
                );
                StateBackend::Local
            }
        };
        let dir = raw.dir.as_deref().unwrap_or(DEFAULT_STATE_DIR);
        if dir.trim().is_empty() {
            self.problem("state.dir", "must name a folder");
        }
        let dir = self.file(dir);
        let redis = match (backend, raw.redis) {
            (StateBackend::Redis, Some(r)) => self.redis(r),
            (StateBackend::Redis, None) => {
                self.problem(
                    "state.backend",
                    "backend: redis needs a state.redis section with url, url_env or url_file",
                );
                None
            }
            (_, Some(_)) if raw.backend.is_some() && backend != StateBackend::Redis => {
                self.problem(
                    "state.redis",
                    format!(
                        "is used only with backend: redis (backend is {}); remove it or set state.backend: redis",
                        backend.as_str()
                    ),
                );
                None
            }
            (_, Some(_)) => {
                self.problem(
                    "state.redis",
                    "is used only with backend: redis (the default backend is local); set state.backend: redis",
                );
                None
            }
            (_, None) => None,
        };
        StateConfig {
            backend,
            dir,
            redis,
        }
    }

    fn redis(&mut self, r: schema::RawRedis) -> Option<RedisConfig> {
        let timeout = self.duration(
            "state.redis.timeout",
            r.timeout.as_deref(),
            DEFAULT_REDIS_TIMEOUT,
        );
        if timeout > MAX_REDIS_TIMEOUT {
            self.problem(
                "state.redis.timeout",
                "must be at most 10s: every keyed payment waits for the store",
            );
        }
        let on_unavailable = match r.on_unavailable.as_deref() {
            None | Some("fail_closed") => OnUnavailable::FailClosed,
            Some("primary_only") => OnUnavailable::PrimaryOnly,
            Some(other) => {
                self.problem(
                    "state.redis.on_unavailable",
                    format!("\"{other}\" is not one of fail_closed, primary_only"),
                );
                OnUnavailable::FailClosed
            }
        };
        let quota_share = r.quota_share.unwrap_or(DEFAULT_QUOTA_SHARE);
        if quota_share.is_nan() || quota_share <= 0.0 || quota_share > 1.0 {
            self.problem(
                "state.redis.quota_share",
                "must be greater than 0.0 and at most 1.0",
            );
        }
        let url = self.redis_url_source(r.url, r.url_env, r.url_file);
        Some(RedisConfig {
            url: url?,
            timeout,
            on_unavailable,
            quota_share,
        })
    }

    /// The URL from exactly one of `url`, `url_env`, `url_file`, checked; problems at the key used.
    fn redis_url_source(
        &mut self,
        url: Option<String>,
        env: Option<String>,
        file: Option<String>,
    ) -> Option<RedisUrl> {
        let given = [url.is_some(), env.is_some(), file.is_some()];
        match given.iter().filter(|g| **g).count() {
            0 => {
                self.problem("state.redis", "set url, url_env or url_file");
                return None;
            }
            1 => {}
            _ => {
                self.problem(
                    "state.redis",
                    "give the Redis URL in one of url, url_env or url_file, not several",
                );
                return None;
            }
        }
        if let Some(text) = url {
            return self.redis_url("state.redis.url", text, false);
        }
        let (key_path, source) = match (env, file) {
            (Some(name), _) if !name.is_empty() => ("state.redis.url_env", SecretRef::Env(name)),
            (_, Some(f)) if !f.is_empty() => {
                ("state.redis.url_file", SecretRef::File(self.file(&f)))
            }
            (Some(_), _) => {
                self.problem(
                    "state.redis.url_env",
                    "the name of the Redis URL's source is empty",
                );
                return None;
            }
            _ => {
                self.problem(
                    "state.redis.url_file",
                    "the name of the Redis URL's source is empty",
                );
                return None;
            }
        };
        let value = self.read_secret(key_path.to_owned(), source)?;
        self.redis_url(key_path, value.trim().to_owned(), true)
    }

    /// Checks a Redis URL; `secret`: it came from the environment or a file, so it may hold a password.
    fn redis_url(&mut self, path: &str, text: String, secret: bool) -> Option<RedisUrl> {
        match parse_redis_url(&text) {
            Err(why) => {
                self.problem(path, why);
                None
            }
            Ok(Some(_)) if !secret => {
                self.problem(
                    path,
                    "holds a password: a Redis URL with a password is never written in the file; give it with url_env or url_file",
                );
                None
            }
            Ok(password) => Some(RedisUrl::new(text, password)),
        }
    }
}

/// Checks `redis://[user[:password]@]host[:port][/db][?options]` (or `rediss://`) and returns the byte
/// range of the password, if there is one. The error never repeats the URL.
fn parse_redis_url(text: &str) -> Result<Option<(usize, usize)>, String> {
    if text.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err("holds spaces or control characters; it is not a URL".to_owned());
    }
    let Some((scheme, rest)) = text.split_once("://") else {
        return Err("is not a URL; write redis://HOST:PORT/DB or rediss://HOST:PORT/DB".to_owned());
    };
    if scheme != "redis" && scheme != "rediss" {
        let shown: String = scheme.chars().take(16).collect();
        return Err(format!(
            "scheme \"{shown}\" is not allowed: use redis:// or rediss:// (TLS)"
        ));
    }
    let start = scheme.len() + 3;
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    let (password, host_port) = match authority.rfind('@') {
        Some(at) => {
            let userinfo = &authority[..at];
            let password = userinfo
                .find(':')
                .filter(|colon| colon + 1 < at)
                .map(|colon| (start + colon + 1, start + at));
            (password, &authority[at + 1..])
        }
        None => (None, authority),
    };
    let (host, port) = if let Some(v6) = host_port.strip_prefix('[') {
        match v6.split_once(']') {
            Some((host, "")) => (host, None),
            Some((host, port)) => match port.strip_prefix(':') {
                Some(port) => (host, Some(port)),
                None => return Err("has a malformed [IPv6] host".to_owned()),
            },
            None => return Err("has a malformed [IPv6] host".to_owned()),
        }
    } else {
        match host_port.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (host_port, None),
        }
    };
    if host.is_empty() {
        return Err("names no host".to_owned());
    }
    if let Some(port) = port {
        if !port.parse::<u16>().is_ok_and(|p| p != 0) {
            return Err("has a port that is not a number from 1 to 65535".to_owned());
        }
    }
    if tail.contains('#') {
        return Err("has a #fragment; remove it".to_owned());
    }
    let db = tail.split('?').next().unwrap_or("");
    let db = db.strip_prefix('/').unwrap_or(db);
    if !db.is_empty() && db.parse::<u32>().is_err() {
        return Err("has a path that is not a database number (/0, /1, ...)".to_owned());
    }
    Ok(password)
}

#[cfg(test)]
mod tests {
    use crate::config::model::{
        OnUnavailable, StateBackend, DEFAULT_QUOTA_SHARE, DEFAULT_REDIS_TIMEOUT,
    };
    use crate::config::tests::*;

    fn state(section: &str) -> String {
        config("", "", &format!("state:\n{section}"))
    }

    #[test]
    fn without_a_state_section_the_store_is_local_in_the_state_folder_beside_the_config() {
        let s = valid(&config("", "", ""));
        assert_eq!(s.state.backend, StateBackend::Local);
        assert_eq!(s.state.dir, Path::new(BASE).join("state"));
        assert!(s.state.redis.is_none());
    }

    #[test]
    fn backends_and_folders_parse() {
        let table: &[(&str, StateBackend, &str)] = &[
            (
                "  backend: local\n",
                StateBackend::Local,
                "/etc/switchyard/state",
            ),
            (
                "  backend: memory\n",
                StateBackend::Memory,
                "/etc/switchyard/state",
            ),
            (
                "  dir: data/state\n",
                StateBackend::Local,
                "/etc/switchyard/data/state",
            ),
            (
                "  backend: local\n  dir: /var/lib/switchyard\n",
                StateBackend::Local,
                "/var/lib/switchyard",
            ),
        ];
        for (section, backend, dir) in table {
            let s = valid(&state(section));
            assert_eq!(s.state.backend, *backend, "{section}");
            assert_eq!(s.state.dir, PathBuf::from(dir), "{section}");
            assert!(s.state.redis.is_none(), "{section}");
        }
    }

    #[test]
    fn redis_has_defaults_and_every_key_parses() {
        let s = valid(&state(
            "  backend: redis\n  redis:\n    url: redis://127.0.0.1:6379/0\n",
        ));
        assert_eq!(s.state.backend, StateBackend::Redis);
        let r = s.state.redis.as_ref().unwrap();
        assert_eq!(r.url.expose(), "redis://127.0.0.1:6379/0");
        assert!(!r.url.is_tls());
        assert_eq!(r.timeout, DEFAULT_REDIS_TIMEOUT);
        assert_eq!(r.on_unavailable, OnUnavailable::FailClosed);
        assert_eq!(r.quota_share, DEFAULT_QUOTA_SHARE);

        let s = valid(&state(
            "  backend: redis\n  redis:\n    url: rediss://redis.internal:6380\n    timeout: 250ms\n    on_unavailable: primary_only\n    quota_share: 0.25\n",
        ));
        let r = s.state.redis.as_ref().unwrap();
        assert!(r.url.is_tls());
        assert_eq!(r.timeout, Duration::from_millis(250));
        assert_eq!(r.on_unavailable, OnUnavailable::PrimaryOnly);
        assert_eq!(r.quota_share, 0.25);
        assert!(s.secrets.is_empty(), "{:?}", s.secrets);
    }

    #[test]
    fn urls_that_are_accepted() {
        for url in [
            "redis://127.0.0.1",
            "redis://localhost:6379",
            "redis://[::1]:6379/3",
            "redis://[::1]",
            "rediss://cache.example:6380/0",
            "redis://user@10.0.0.5:6379/0",
            "redis://:@10.0.0.5:6379/",
            "redis://10.0.0.5:6379/0?protocol=resp3",
        ] {
            let text = state(&format!("  backend: redis\n  redis:\n    url: \"{url}\"\n"));
            let s = valid(&text);
            assert_eq!(s.state.redis.unwrap().url.expose(), url);
        }
    }

    #[test]
    fn every_rule_is_a_problem_at_its_key_and_line() {
        let redis = |extra: &str| {
            state(&format!(
                "  backend: redis\n  redis:\n    url: redis://127.0.0.1:6379/0\n{extra}"
            ))
        };
        let table: Vec<(String, &str, &str, &str)> = vec![
            (state("  backend: etcd\n"), "state.backend", "backend: etcd", "not one of local, redis, memory"),
            (state("  dir: \"\"\n"), "state.dir", "dir:", "must name a folder"),
            (state("  backend: redis\n"), "state.backend", "backend: redis", "needs a state.redis section"),
            (
                state("  backend: local\n  redis:\n    url: redis://127.0.0.1\n"),
                "state.redis",
                "redis:",
                "used only with backend: redis",
            ),
            (
                state("  redis:\n    url: redis://127.0.0.1\n"),
                "state.redis",
                "redis:",
                "used only with backend: redis",
            ),
            (
                state("  backend: redis\n  redis:\n    timeout: 1s\n"),
                "state.redis",
                "redis:",
                "set url, url_env or url_file",
            ),
            (
                state("  backend: redis\n  redis:\n    url: redis://127.0.0.1\n    url_env: REDIS_URL\n"),
                "state.redis",
                "redis:",
                "not several",
            ),
            (
                state("  backend: redis\n  redis:\n    url_env: \"\"\n"),
                "state.redis.url_env",
                "url_env",
                "empty",
            ),
            (redis("    timeout: 0ms\n"), "state.redis.timeout", "timeout", "greater than zero"),
            (redis("    timeout: 11s\n"), "state.redis.timeout", "timeout", "at most 10s"),
            (redis("    timeout: 100\n"), "state.redis.timeout", "timeout", "no unit"),
            (
                redis("    on_unavailable: fail_open\n"),
                "state.redis.on_unavailable",
                "on_unavailable",
                "not one of fail_closed, primary_only",
            ),
            (redis("    quota_share: 0\n"), "state.redis.quota_share", "quota_share", "greater than 0.0"),
            (redis("    quota_share: 1.5\n"), "state.redis.quota_share", "quota_share", "at most 1.0"),
            (redis("    quota_share: -0.1\n"), "state.redis.quota_share", "quota_share", "greater than 0.0"),
            (redis("    quota_share: .nan\n"), "state.redis.quota_share", "quota_share", "greater than 0.0"),
        ];
        for (text, path, needle, phrase) in &table {
            assert_problem(&only_problem(text), path, text, needle, phrase);
        }
    }

    #[test]
    fn bad_urls_are_refused_without_being_repeated() {
        let table: &[(&str, &str)] = &[
            ("http://127.0.0.1:6379", "scheme \"http\" is not allowed"),
            ("unix:///run/redis.sock", "scheme \"unix\" is not allowed"),
            ("redis+unix:///run/redis.sock", "is not allowed"),
            ("127.0.0.1:6379", "is not a URL"),
            ("redis://", "names no host"),
            ("redis://:6379", "names no host"),
            ("redis://host:0", "port"),
            ("redis://host:70000", "port"),
            ("redis://host:port", "port"),
            ("redis://[::1", "IPv6"),
            ("redis://[::1]6379", "IPv6"),
            ("redis://host/db1", "database number"),
            ("redis://host/0#x", "fragment"),
        ];
        for (url, phrase) in table {
            let text = state(&format!("  backend: redis\n  redis:\n    url: \"{url}\"\n"));
            let p = only_problem(&text);
            assert_problem(&p, "state.redis.url", &text, url, phrase);
            if url.len() > 10 {
                assert!(!p.message.contains(url), "{p:?}");
            }
        }
    }

    #[test]
    fn a_password_in_the_file_is_refused_without_being_shown() {
        for url in [
            "redis://:hunter2@127.0.0.1:6379/0",
            "redis://app:hunter2@127.0.0.1:6379/0",
            "rediss://app:hunter2@cache.example/0",
        ] {
            let text = state(&format!("  backend: redis\n  redis:\n    url: {url}\n"));
            let p = only_problem(&text);
            assert_problem(&p, "state.redis.url", &text, url, "url_env or url_file");
            assert!(!p.message.contains("hunter2"), "{p:?}");
            assert!(!format!("{p}").contains("hunter2"), "{p}");
        }
    }

    #[test]
    fn a_url_with_a_password_from_env_or_file_is_kept_and_never_shown() {
        let text = state("  backend: redis\n  redis:\n    url_env: SWITCHYARD_REDIS_URL\n");
        let secrets = Secrets::default().with(
            "SWITCHYARD_REDIS_URL",
            "redis://app:hunter2@10.0.0.5:6379/0\n",
        );
        let s = valid_with(&text, &secrets);
        let r = s.state.redis.as_ref().unwrap();
        assert_eq!(r.url.expose(), "redis://app:hunter2@10.0.0.5:6379/0");
        assert_eq!(r.url.redacted(), "redis://app:***@10.0.0.5:6379/0");
        assert_eq!(format!("{:?}", r.url), "RedisUrl(<redacted>)");
        let debug = format!("{s:?}");
        assert!(!debug.contains("hunter2"), "{debug}");
        assert!(!debug.contains("10.0.0.5"), "{debug}");
        assert_eq!(s.secrets.len(), 1);
        assert_eq!(s.secrets[0].path, "state.redis.url_env");
        assert_eq!(
            s.secrets[0].source,
            SecretRef::Env("SWITCHYARD_REDIS_URL".to_owned())
        );

        let text = state("  backend: redis\n  redis:\n    url_file: secrets/redis.url\n");
        let secrets = Secrets::default().with(
            "/etc/switchyard/secrets/redis.url",
            "rediss://:hunter2@cache.example:6380\n",
        );
        let s = valid_with(&text, &secrets);
        let r = s.state.redis.as_ref().unwrap();
        assert_eq!(r.url.expose(), "rediss://:hunter2@cache.example:6380");
        assert_eq!(r.url.redacted(), "rediss://:***@cache.example:6380");
        assert!(r.url.is_tls());
        assert_eq!(
            s.secrets[0].source,
            SecretRef::File(PathBuf::from("/etc/switchyard/secrets/redis.url"))
        );

        // A URL without a password shows whole when redacted.
        let s = valid(&state(
            "  backend: redis\n  redis:\n    url: redis://127.0.0.1:6379/0\n",
        ));
        assert_eq!(
            s.state.redis.unwrap().url.redacted(),
            "redis://127.0.0.1:6379/0"
        );
    }

    #[test]
    fn a_bad_url_from_env_or_file_is_a_problem_at_that_key_without_its_value() {
        let text = state("  backend: redis\n  redis:\n    url_env: SWITCHYARD_REDIS_URL\n");
        let secrets = Secrets::default().with("SWITCHYARD_REDIS_URL", "http://u:hunter2@h:1");
        let p = only_problem_with(&text, &secrets);
        assert_problem(
            &p,
            "state.redis.url_env",
            &text,
            "url_env",
            "is not allowed",
        );
        assert!(!p.message.contains("hunter2"), "{p:?}");

        // Missing, and empty.
        let p = only_problem(&text);
        assert_problem(
            &p,
            "state.redis.url_env",
            &text,
            "url_env",
            "SWITCHYARD_REDIS_URL",
        );
        let p = only_problem_with(
            &text,
            &Secrets::default().with("SWITCHYARD_REDIS_URL", "\n"),
        );
        assert_problem(&p, "state.redis.url_env", &text, "url_env", "is empty");

        let text = state("  backend: redis\n  redis:\n    url_file: redis.url\n");
        let p = only_problem(&text);
        assert_problem(
            &p,
            "state.redis.url_file",
            &text,
            "url_file",
            "/etc/switchyard/redis.url",
        );
    }

    #[test]
    fn unknown_keys_are_refused() {
        for (section, key) in [
            ("  backend: local\n  path: state\n", "path"),
            (
                "  backend: redis\n  redis:\n    url: redis://h\n    password: x\n",
                "password",
            ),
        ] {
            let e = parse_error(&state(section));
            assert!(e.contains(key), "{e}");
        }
    }
}
