//! The YAML configuration file: typed, validated as a whole, unknown keys refused.
//!
//! Validation never stops at the first mistake: every section is read on its own, so one run of
//! `mtls-gateway check` lists every problem with its path in the file.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_norway::{Mapping, Value};

use crate::admin::auth::AuthConfig;
use crate::admin::throttle::ThrottleConfig;
use crate::admin::AdminConfig;
use crate::ids::{AccountId, EntryName, ServiceName};
use crate::p12::DEFAULT_EXPIRES_SOON_DAYS;
use crate::store::{StoreConfig, UrlMatch};

/// Time for in-flight requests to finish after SIGTERM. Pingora's own default (300 s) is far
/// longer than a Kubernetes pod's default termination grace (30 s), so the pod would be killed
/// mid-drain; a few seconds covers ordinary partner calls.
pub const DEFAULT_GRACE_PERIOD_SECONDS: u64 = 5;

/// Time for the runtimes to stop once the grace period is over.
pub const DEFAULT_SHUTDOWN_TIMEOUT_SECONDS: u64 = 5;

/// How often the store's revision is polled; a change reaches forwarding within this time on
/// replicas that did not make it. Cheap: one metadata read per poll.
pub const DEFAULT_POLL_SECONDS: u64 = 2;

/// A full resync catches anything a revision poll could miss, such as a store restored from
/// backup with an older revision. Five minutes keeps the cost small even with many replicas.
pub const DEFAULT_RESYNC_SECONDS: u64 = 300;

/// The proxy listener binds to loopback unless told otherwise: callers are not authenticated
/// on it yet, so it must not be reachable from the network by accident.
pub const DEFAULT_PROXY_LISTEN: &str = "127.0.0.1:8080";

/// Header names that carry the account and service in HTTP proxy mode.
pub const DEFAULT_ACCOUNT_HEADER: &str = "x-mtls-account";
pub const DEFAULT_SERVICE_HEADER: &str = "x-mtls-service";

/// Upstream timeouts. Partners of this kind (banks, identity providers) answer in seconds;
/// a minute of silence means the call is lost.
pub const DEFAULT_CONNECT_TIMEOUT_MS: u64 = 5_000;
pub const DEFAULT_HANDSHAKE_TIMEOUT_MS: u64 = 10_000;
pub const DEFAULT_READ_TIMEOUT_MS: u64 = 60_000;
pub const DEFAULT_WRITE_TIMEOUT_MS: u64 = 60_000;
/// Pooled connections older than this idle time are closed.
pub const DEFAULT_IDLE_TIMEOUT_MS: u64 = 60_000;

/// vaultrs and rustify log every refused Vault call (a 404 read, a check-and-set conflict) at
/// error level; the store reports the failures that matter itself.
pub const DEFAULT_LOG_LEVEL: &str = "info,vaultrs=off,rustify=off";

/// Where pingora keeps its pid file and the socket used by `run --upgrade`.
pub const DEFAULT_RUNTIME_DIR: &str = "/tmp/mtls-gateway";

/// The whole file.
#[derive(Debug, Clone)]
pub struct Config {
    pub store: StoreConfig,
    pub log: LogConfig,
    pub lifecycle: LifecycleConfig,
    pub p12: P12Config,
    pub refresh: RefreshConfig,
    pub proxy: ProxyConfig,
    pub upstream: UpstreamConfig,
    pub mappings: Vec<StaticMapping>,
    pub admin: AdminConfig,
    pub auth: AuthConfig,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// Logging; `RUST_LOG` in the environment overrides `level`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    pub format: LogFormat,
    /// A `tracing` filter: `info`, `mtls_gateway=debug,warn`, ...
    pub level: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            format: LogFormat::Text,
            level: DEFAULT_LOG_LEVEL.into(),
        }
    }
}

/// Start-up and shutdown of the pingora server.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LifecycleConfig {
    pub grace_period_seconds: u64,
    pub shutdown_timeout_seconds: u64,
    pub runtime_dir: String,
    /// Worker threads per service.
    pub threads: usize,
}

impl Default for LifecycleConfig {
    fn default() -> Self {
        Self {
            grace_period_seconds: DEFAULT_GRACE_PERIOD_SECONDS,
            shutdown_timeout_seconds: DEFAULT_SHUTDOWN_TIMEOUT_SECONDS,
            runtime_dir: DEFAULT_RUNTIME_DIR.into(),
            threads: 1,
        }
    }
}

/// The P12 diagnosis.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct P12Config {
    /// Warn (`expires_soon`) when a certificate expires within this many days.
    pub expires_soon_days: i64,
}

impl Default for P12Config {
    fn default() -> Self {
        Self {
            expires_soon_days: DEFAULT_EXPIRES_SOON_DAYS,
        }
    }
}

/// How the gateway follows changes in the store.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RefreshConfig {
    pub poll_seconds: u64,
    pub resync_seconds: u64,
    /// Reload the static mappings when this file changes.
    pub watch_config: bool,
}

impl Default for RefreshConfig {
    fn default() -> Self {
        Self {
            poll_seconds: DEFAULT_POLL_SECONDS,
            resync_seconds: DEFAULT_RESYNC_SECONDS,
            watch_config: true,
        }
    }
}

/// The proxy listener, where services send their requests.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProxyConfig {
    pub listen: SocketAddr,
    /// HTTP proxy mode: the request header naming the account.
    pub account_header: String,
    /// HTTP proxy mode: the request header naming the service.
    pub service_header: String,
    /// HTTP proxy mode: used when the request names no account (a sidecar serving one tenant).
    pub default_account: Option<AccountId>,
    pub default_service: Option<ServiceName>,
    /// HTTP proxy mode without a mapping: refuse (default), or call the partner over plain,
    /// server-authenticated TLS.
    pub refuse_unmapped: bool,
    /// Clients configured with one base URL reach the compatible admin routes through this
    /// listener too; they are passed to the admin listener.
    pub serve_admin_routes: bool,
    pub throttle: ThrottleConfig,
}

impl Default for ProxyConfig {
    fn default() -> Self {
        Self {
            listen: DEFAULT_PROXY_LISTEN
                .parse()
                .unwrap_or(([127, 0, 0, 1], 8080).into()),
            account_header: DEFAULT_ACCOUNT_HEADER.into(),
            service_header: DEFAULT_SERVICE_HEADER.into(),
            default_account: None,
            default_service: None,
            refuse_unmapped: true,
            serve_admin_routes: true,
            throttle: ThrottleConfig::default(),
        }
    }
}

/// Connections to partners.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UpstreamConfig {
    pub connect_timeout_ms: u64,
    /// TCP connect and TLS handshake together.
    pub handshake_timeout_ms: u64,
    pub read_timeout_ms: u64,
    pub write_timeout_ms: u64,
    pub idle_timeout_ms: u64,
    /// Offer HTTP/2 by ALPN; HTTP/1.1 is always offered.
    pub http2: bool,
}

impl Default for UpstreamConfig {
    fn default() -> Self {
        Self {
            connect_timeout_ms: DEFAULT_CONNECT_TIMEOUT_MS,
            handshake_timeout_ms: DEFAULT_HANDSHAKE_TIMEOUT_MS,
            read_timeout_ms: DEFAULT_READ_TIMEOUT_MS,
            write_timeout_ms: DEFAULT_WRITE_TIMEOUT_MS,
            idle_timeout_ms: DEFAULT_IDLE_TIMEOUT_MS,
            http2: true,
        }
    }
}

/// A mapping written in the configuration file rather than stored through the admin API.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StaticMapping {
    pub account: AccountId,
    pub service: ServiceName,
    pub url: String,
    #[serde(default, rename = "match")]
    pub url_match: UrlMatch,
    pub certificate: CertificateSource,
    /// PEM bundle of the partner's trust anchors; the system roots when absent.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    #[serde(default = "yes")]
    pub verify_server: bool,
}

fn yes() -> bool {
    true
}

/// Where a static mapping's certificate comes from.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "CertificateFields")]
pub enum CertificateSource {
    /// A certificate in the store, by its name in the mapping's account.
    Stored { name: EntryName },
    /// A P12 file and its password file, as a mounted Kubernetes secret provides them.
    P12 {
        file: PathBuf,
        password_file: PathBuf,
    },
    /// PEM certificate chain (leaf first) and PKCS#8 PEM key files.
    Pem {
        cert_file: PathBuf,
        key_file: PathBuf,
    },
}

/// The YAML shape of [`CertificateSource`]: exactly one of three field groups.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CertificateFields {
    name: Option<EntryName>,
    p12_file: Option<PathBuf>,
    password_file: Option<PathBuf>,
    cert_file: Option<PathBuf>,
    key_file: Option<PathBuf>,
}

impl TryFrom<CertificateFields> for CertificateSource {
    type Error = &'static str;

    fn try_from(f: CertificateFields) -> Result<Self, Self::Error> {
        match (f.name, f.p12_file, f.password_file, f.cert_file, f.key_file) {
            (Some(name), None, None, None, None) => Ok(Self::Stored { name }),
            (None, Some(file), Some(password_file), None, None) => Ok(Self::P12 {
                file,
                password_file,
            }),
            (None, None, None, Some(cert_file), Some(key_file)) => Ok(Self::Pem {
                cert_file,
                key_file,
            }),
            _ => Err(
                "give exactly one of: `name` (a stored certificate), `p12_file` with \
                      `password_file`, or `cert_file` with `key_file`",
            ),
        }
    }
}

/// One thing wrong with the file, at a path such as `store.address` or `log`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub path: String,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

/// Every problem found in one file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct Problems(pub Vec<Problem>);

impl fmt::Display for Problems {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, problem) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{problem}")?;
        }
        Ok(())
    }
}

const SECTIONS: &[&str] = &[
    "admin",
    "auth",
    "store",
    "log",
    "lifecycle",
    "p12",
    "refresh",
    "proxy",
    "upstream",
    "mappings",
];

impl Config {
    pub fn load(path: &Path) -> Result<Self, Problems> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            Problems(vec![Problem {
                path: path.display().to_string(),
                message: format!("cannot read the file: {e}"),
            }])
        })?;
        Self::parse(&text)
    }

    pub fn parse(text: &str) -> Result<Self, Problems> {
        let mut problems = Vec::new();
        let root: Value = serde_norway::from_str(text).map_err(|e| {
            Problems(vec![Problem {
                path: "(file)".into(),
                message: e.to_string(),
            }])
        })?;
        let root = match root {
            Value::Mapping(map) => map,
            Value::Null => Mapping::new(),
            _ => {
                return Err(Problems(vec![Problem {
                    path: "(file)".into(),
                    message: "the top level must be a mapping of sections".into(),
                }]))
            }
        };

        for key in root.keys() {
            let name = key.as_str().unwrap_or("(non-string key)");
            if !SECTIONS.contains(&name) {
                problems.push(Problem {
                    path: name.to_owned(),
                    message: format!("unknown section; known ones are {}", SECTIONS.join(", ")),
                });
            }
        }
        let store = required_section::<StoreConfig>(&root, "store", &mut problems);
        let log = section::<LogConfig>(&root, "log", &mut problems);
        let lifecycle = section::<LifecycleConfig>(&root, "lifecycle", &mut problems);
        let p12 = section::<P12Config>(&root, "p12", &mut problems);
        let refresh = section::<RefreshConfig>(&root, "refresh", &mut problems);
        let proxy = section::<ProxyConfig>(&root, "proxy", &mut problems);
        let upstream = section::<UpstreamConfig>(&root, "upstream", &mut problems);
        let mappings = static_mappings(&root, &mut problems);
        let admin = section::<AdminConfig>(&root, "admin", &mut problems);
        let auth = section::<AuthConfig>(&root, "auth", &mut problems);
        if let Some(auth) = &auth {
            problems.extend(auth.problems().into_iter().map(|(path, message)| Problem {
                path: format!("auth.{path}"),
                message,
            }));
        }
        if let (Some(auth), Some(admin), Some(proxy)) = (&auth, &admin, &proxy) {
            problems.extend(open_listeners(auth, admin, proxy));
        }

        if let Some(store) = &store {
            problems.extend(store.problems().into_iter().map(|(path, message)| Problem {
                path: format!("store.{path}"),
                message,
            }));
        }
        if let Some(log) = &log {
            if let Err(e) = tracing_subscriber::EnvFilter::try_new(&log.level) {
                problems.push(Problem {
                    path: "log.level".into(),
                    message: format!("not a valid filter ({e}); try `info` or `debug`"),
                });
            }
        }
        if let Some(lifecycle) = &lifecycle {
            if lifecycle.threads == 0 {
                problems.push(Problem {
                    path: "lifecycle.threads".into(),
                    message: "must be at least 1".into(),
                });
            }
        }
        if let Some(p12) = &p12 {
            if p12.expires_soon_days < 0 {
                problems.push(Problem {
                    path: "p12.expires_soon_days".into(),
                    message: "must be zero or more days".into(),
                });
            }
        }
        if let Some(refresh) = &refresh {
            for (name, value) in [
                ("poll_seconds", refresh.poll_seconds),
                ("resync_seconds", refresh.resync_seconds),
            ] {
                if value == 0 {
                    problems.push(Problem {
                        path: format!("refresh.{name}"),
                        message: "must be at least 1 second".into(),
                    });
                }
            }
        }
        if let Some(proxy) = &proxy {
            for (name, header) in [
                ("account_header", &proxy.account_header),
                ("service_header", &proxy.service_header),
            ] {
                if http::HeaderName::from_bytes(header.as_bytes()).is_err() {
                    problems.push(Problem {
                        path: format!("proxy.{name}"),
                        message: format!("{header:?} is not a valid HTTP header name"),
                    });
                }
            }
        }
        if let Some(upstream) = &upstream {
            problems.extend(upstream.problems());
        }
        for (i, mapping) in mappings.iter().enumerate() {
            if let Some(mapping) = mapping {
                problems.extend(mapping.problems(i));
            }
        }

        let all_mappings: Option<Vec<StaticMapping>> = mappings.into_iter().collect();
        let listeners = admin.zip(auth);
        let sections = (
            store,
            log,
            lifecycle,
            p12,
            refresh,
            proxy,
            upstream,
            all_mappings,
        );
        match (sections, listeners) {
            (
                (
                    Some(store),
                    Some(log),
                    Some(lifecycle),
                    Some(p12),
                    Some(refresh),
                    Some(proxy),
                    Some(upstream),
                    Some(mappings),
                ),
                Some((admin, auth)),
            ) if problems.is_empty() => Ok(Self {
                store,
                log,
                lifecycle,
                p12,
                refresh,
                proxy,
                upstream,
                mappings,
                admin,
                auth,
            }),
            _ => Err(Problems(problems)),
        }
    }
}

/// Authentication may be off only while every listener is bound to loopback.
fn open_listeners(auth: &AuthConfig, admin: &AdminConfig, proxy: &ProxyConfig) -> Vec<Problem> {
    if auth.enabled {
        return Vec::new();
    }
    [
        ("admin.listen", admin.listen),
        ("proxy.listen", proxy.listen),
    ]
    .into_iter()
    .filter(|(_, address)| !address.ip().is_loopback())
    .map(|(path, address)| Problem {
        path: path.to_owned(),
        message: format!(
            "{address} is reachable from the network while auth.enabled is false; bind it \
                 to 127.0.0.1 or turn authentication on"
        ),
    })
    .collect()
}

impl UpstreamConfig {
    fn problems(&self) -> Vec<Problem> {
        let timeouts = [
            ("connect_timeout_ms", self.connect_timeout_ms),
            ("handshake_timeout_ms", self.handshake_timeout_ms),
            ("read_timeout_ms", self.read_timeout_ms),
            ("write_timeout_ms", self.write_timeout_ms),
            ("idle_timeout_ms", self.idle_timeout_ms),
        ];
        timeouts
            .into_iter()
            .filter(|(_, value)| *value == 0)
            .map(|(name, _)| Problem {
                path: format!("upstream.{name}"),
                message: "must be at least 1 millisecond".into(),
            })
            .collect()
    }
}

impl StaticMapping {
    fn problems(&self, index: usize) -> Vec<Problem> {
        let mut problems = Vec::new();
        let at = |field: &str| format!("mappings[{index}].{field}");
        if !self.url.starts_with("https://") || self.url.len() <= "https://".len() {
            problems.push(Problem {
                path: at("url"),
                message: format!("{:?} must be a full https:// URL", self.url),
            });
        }
        if self.url_match == UrlMatch::Prefix && self.url.contains(['?', '#']) {
            problems.push(Problem {
                path: at("url"),
                message: "a prefix mapping cannot carry a query or fragment".into(),
            });
        }
        problems
    }
}

/// Each list item is read on its own, so one broken mapping does not hide the others' problems.
fn static_mappings(root: &Mapping, problems: &mut Vec<Problem>) -> Vec<Option<StaticMapping>> {
    match root.get("mappings") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Sequence(items)) => items
            .iter()
            .enumerate()
            .map(|(i, item)| typed(item, &format!("mappings[{i}]"), problems))
            .collect(),
        Some(_) => {
            problems.push(Problem {
                path: "mappings".into(),
                message: "must be a list of mappings".into(),
            });
            vec![None]
        }
    }
}

fn required_section<T: DeserializeOwned>(
    root: &Mapping,
    name: &str,
    problems: &mut Vec<Problem>,
) -> Option<T> {
    match root.get(name) {
        Some(value) => typed(value, name, problems),
        None => {
            problems.push(Problem {
                path: name.to_owned(),
                message: "this section is required".into(),
            });
            None
        }
    }
}

fn section<T: DeserializeOwned + Default>(
    root: &Mapping,
    name: &str,
    problems: &mut Vec<Problem>,
) -> Option<T> {
    match root.get(name) {
        Some(Value::Null) | None => Some(T::default()),
        Some(value) => typed(value, name, problems),
    }
}

fn typed<T: DeserializeOwned>(value: &Value, name: &str, problems: &mut Vec<Problem>) -> Option<T> {
    match serde_path_to_error::deserialize(value.clone()) {
        Ok(typed) => Some(typed),
        Err(e) => {
            let inner = e.path().to_string();
            let path = if inner == "." {
                name.to_owned()
            } else {
                format!("{name}.{inner}")
            };
            problems.push(Problem {
                path,
                message: e.into_inner().to_string(),
            });
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_every_broken_section_at_once() {
        let text = "store:\n  kind: local\n  path: /tmp/x\n  colour: blue\n\
                    log:\n  format: xml\nlifecycle:\n  threads: 0\nextra: 1\n";

        let problems = Config::parse(text).expect_err("the file is invalid").0;

        let paths: Vec<&str> = problems.iter().map(|p| p.path.as_str()).collect();
        assert_eq!(paths, ["extra", "store", "log.format", "lifecycle.threads"]);
        assert!(
            problems[1].message.contains("colour"),
            "{}",
            problems[1].message
        );
    }

    #[test]
    fn missing_store_is_reported_with_its_path() {
        let problems = Config::parse("log:\n  level: info\n")
            .expect_err("no store")
            .0;

        assert_eq!(problems[0].path, "store");
    }

    #[test]
    fn defaults_fill_optional_sections() {
        let config = Config::parse("store:\n  kind: local\n  path: /tmp/x\n").expect("valid");

        assert_eq!(
            config.lifecycle.grace_period_seconds,
            DEFAULT_GRACE_PERIOD_SECONDS
        );
        assert_eq!(config.p12.expires_soon_days, DEFAULT_EXPIRES_SOON_DAYS);
        assert_eq!(config.log.format, LogFormat::Text);
    }
}
