//! The admin listener's `/metrics` after real traffic: the real binary on a real OpenBao, real
//! mTLS partners (some made to fail the handshake in each documented way), real callers.
//!
//! Each test starts its own gateway on its own Vault prefix, drives traffic, scrapes
//! `/metrics` and asserts the series an operator's alerts read.

mod support;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use mtls_gateway::ids::{AccountId, CertificateId, EntryName, ServiceName};
use mtls_gateway::store::UrlMatch;
use mtls_gateway::store::{CertificateChange, CertificateRecord, MappingSpec, NewCertificate};
use reqwest::{Method, StatusCode};
use serde_json::json;
use support::admin::{admin_addr, sha256_hex, Api, TestVault, FULL_TOKEN};
use support::certs;
use support::gateway::{free_port, Gateway};
use support::partner::{Partner, PartnerOptions};
use support::pki::{ClientCa, ClientCert, Pki, ServerCert};

const ACCOUNT: &str = "le1606809";
const IDP: &str = "IDP";

/// A store change reaches forwarding, and so the metrics, within this time (poll every 1 s).
const PROPAGATION_DEADLINE: Duration = Duration::from_secs(10);

const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// How long the idle measurement watches the store calls of a gateway that polls every second.
const IDLE_WINDOW: Duration = Duration::from_secs(10);

// ------------------------------------------------------------------------------------------
// The world of one test.
// ------------------------------------------------------------------------------------------

/// A PKI in a directory of its own, removed with it.
struct Certs {
    pki: Pki,
    _dir: tempfile::TempDir,
}

impl Certs {
    fn new() -> Certs {
        let dir = tempfile::tempdir().expect("a directory for the PKI");
        Certs {
            pki: Pki::new(dir.path()),
            _dir: dir,
        }
    }

    fn client(&self, cn: &str) -> ClientCert {
        self.pki.client(ClientCa::A, cn, None)
    }

    fn partner(&self, server: ServerCert, client_ca: Option<ClientCa>) -> Partner {
        Partner::start(PartnerOptions {
            server,
            client_ca: client_ca.map(|ca| self.pki.client_ca_pem(ca)),
        })
    }

    fn server_ca(&self) -> String {
        String::from_utf8(self.pki.server_ca_pem()).expect("a PEM CA is text")
    }
}

/// The configuration knobs these tests vary.
struct Knobs {
    handshake_timeout_ms: u64,
    /// Requests per second and burst on both listeners; 0 turns throttling off.
    throttle: u32,
}

impl Default for Knobs {
    fn default() -> Knobs {
        Knobs {
            handshake_timeout_ms: 3000,
            throttle: 0,
        }
    }
}

/// Starts a gateway on `vault` with [`FULL_TOKEN`] allowed to read, write and forward.
fn start_gateway(vault: &TestVault, knobs: &Knobs) -> Gateway {
    let config = |listen: SocketAddr, runtime_dir: &std::path::Path| {
        let throttle = format!(
            "  throttle:\n    per_second: {0}\n    burst: {0}\n",
            knobs.throttle
        );
        format!(
            "store:\n  kind: vault\n  address: {address}\n  prefix: {prefix}\n\
             auth:\n  tokens:\n    - id: test\n      sha256: {token}\n      \
             accounts: [\"*\"]\n      scopes: [read, write, forward]\n\
             admin:\n  listen: 127.0.0.1:0\n{throttle}\
             lifecycle:\n  grace_period_seconds: 1\n  shutdown_timeout_seconds: 1\n  \
             runtime_dir: {dir}\n  threads: 1\n\
             refresh:\n  poll_seconds: 1\n\
             proxy:\n  listen: {listen}\n{throttle}\
             upstream:\n  connect_timeout_ms: 1000\n  handshake_timeout_ms: {handshake}\n  \
             read_timeout_ms: 10000\n",
            address = quoted(&vault.address),
            prefix = quoted(&vault.prefix),
            token = sha256_hex(FULL_TOKEN.as_bytes()),
            dir = quoted(runtime_dir.to_str().expect("test paths are UTF-8")),
            handshake = knobs.handshake_timeout_ms,
        )
    };
    Gateway::builder()
        .env("VAULT_TOKEN", &vault.token)
        .start(config)
}

fn quoted(text: &str) -> String {
    serde_json::to_string(text).expect("a string serialises")
}

fn account_id() -> AccountId {
    AccountId::new(ACCOUNT).expect("a valid account id")
}

async fn add_certificate(vault: &TestVault, cert: &ClientCert) -> CertificateRecord {
    let new = NewCertificate {
        account: account_id(),
        name: EntryName::new(format!("cert-{}", cert.subject_cn)).expect("a valid name"),
        p12: certs::usable(&cert.der, &cert.password),
    };
    vault
        .store
        .create_certificate(new)
        .await
        .expect("create the certificate")
}

/// Maps [`ACCOUNT`] + [`IDP`] + exactly `url` to `certificate`, trusting `ca_pem`.
async fn add_mapping(vault: &TestVault, url: &str, certificate: CertificateId, ca_pem: &str) {
    let spec = MappingSpec {
        name: EntryName::new(format!("{IDP} {url}")).expect("a valid name"),
        service: ServiceName::new(IDP).expect("a valid service"),
        url: url.to_owned(),
        certificate_id: certificate,
        enabled: true,
        url_match: UrlMatch::Exact,
        ca_pem: Some(ca_pem.to_owned()),
        verify_server: true,
    };
    vault
        .store
        .create_mapping(&account_id(), spec)
        .await
        .expect("create the mapping");
}

/// Stores `cert` and maps `url` to it.
async fn map(vault: &TestVault, url: &str, cert: &ClientCert, ca_pem: &str) -> CertificateRecord {
    let record = add_certificate(vault, cert).await;
    add_mapping(vault, url, record.id, ca_pem).await;
    record
}

/// The notAfter of a DER certificate, in seconds since the epoch.
fn not_after_epoch(der: &[u8]) -> f64 {
    let (_, certificate) = x509_parser::parse_x509_certificate(der).expect("a DER certificate");
    certificate.validity().not_after.timestamp() as f64
}

// ------------------------------------------------------------------------------------------
// Requests and scrapes.
// ------------------------------------------------------------------------------------------

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(REQUEST_TIMEOUT)
        .build()
        .expect("a reqwest client")
}

/// A forward call to `url` as [`ACCOUNT`] / [`IDP`], presenting `token`; returns the status.
async fn forward(gateway: &Gateway, url: &str, token: &str) -> StatusCode {
    client()
        .get(format!("{}/mtls/account/{ACCOUNT}", gateway.base_url()))
        .bearer_auth(token)
        .header("LP-forward-url", url)
        .header("LP-service-name", IDP)
        .header("LP-stop-if-certificate-not-found", "true")
        .send()
        .await
        .expect("the gateway answers")
        .status()
}

/// One scrape of `/metrics`, parsed.
#[derive(Debug)]
struct Scrape {
    text: String,
}

impl Scrape {
    async fn of(gateway: &Gateway) -> Scrape {
        let url = format!("http://{}/metrics", admin_addr(gateway));
        let response = client().get(url).send().await.expect("/metrics answers");
        assert_eq!(response.status(), StatusCode::OK);
        Scrape {
            text: response.text().await.expect("read /metrics"),
        }
    }

    /// Every sample of `name` whose labels include `labels`, with all its labels.
    fn samples(&self, name: &str, labels: &[(&str, &str)]) -> Vec<(BTreeMap<String, String>, f64)> {
        self.text
            .lines()
            .filter(|line| !line.starts_with('#'))
            .filter_map(parse_sample)
            .filter(|(sample, _, _)| sample == name)
            .filter(|(_, found, _)| {
                labels
                    .iter()
                    .all(|(k, v)| found.get(*k).is_some_and(|f| f == v))
            })
            .map(|(_, found, value)| (found, value))
            .collect()
    }

    /// The sum of the matching samples; `None` when no series matches.
    fn value(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let samples = self.samples(name, labels);
        (!samples.is_empty()).then(|| samples.iter().map(|(_, v)| v).sum())
    }

    /// [`Scrape::value`], 0 when no series matches.
    fn sum(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.value(name, labels).unwrap_or(0.0)
    }

    fn has_help(&self, name: &str) -> bool {
        self.text.contains(&format!("# HELP {name} "))
    }
}

/// `name{a="b",c="d"} value`, without escapes in label values (none of ours has any).
fn parse_sample(line: &str) -> Option<(String, BTreeMap<String, String>, f64)> {
    let (series, value) = line.rsplit_once(' ')?;
    let value = value.parse().ok()?;
    let Some((name, labels)) = series.split_once('{') else {
        return Some((series.to_owned(), BTreeMap::new(), value));
    };
    let labels = labels
        .trim_end_matches('}')
        .split("\",")
        .filter(|pair| !pair.is_empty())
        .filter_map(|pair| {
            let (k, v) = pair.split_once('=')?;
            Some((k.to_owned(), v.trim_matches('"').to_owned()))
        })
        .collect();
    Some((name.to_owned(), labels, value))
}

/// Scrapes until `done` holds, or panics with the last scrape after `deadline`.
async fn scrape_until(gateway: &Gateway, deadline: Duration, done: impl Fn(&Scrape) -> bool) {
    let started = Instant::now();
    loop {
        let scrape = Scrape::of(gateway).await;
        if done(&scrape) {
            return;
        }
        if started.elapsed() > deadline {
            panic!("metrics did not reach the expected state:\n{}", scrape.text);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// No line the gateway wrote holds a password, a token or a private key.
fn assert_no_secrets_logged(gateway: &Gateway, secrets: &[&str]) {
    let logs = gateway.logs().join("\n");
    for secret in secrets {
        assert!(!logs.contains(secret), "a secret reached the gateway's log");
    }
    assert!(
        !logs.contains("PRIVATE KEY"),
        "a private key reached the log"
    );
}

const REQUESTS: &str = "mtls_gateway_requests_total";
const EXPIRY: &str = "mtls_gateway_certificate_expiry_timestamp_seconds";
const HANDSHAKE_FAILURES: &str = "mtls_gateway_upstream_handshake_failures_total";
const STORE_CALLS: &str = "mtls_gateway_store_calls_total";

// ------------------------------------------------------------------------------------------
// Tests.
// ------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_describe_forwarding_snapshot_and_store_after_a_happy_flow() {
    // Arrange: three certificates mapped to three paths of one partner.
    let certs = Certs::new();
    let partner = certs.partner(certs.pki.server_cert(), Some(ClientCa::A));
    let vault = TestVault::new("metrics").await;
    let ca = certs.server_ca();
    let (one, two, three) = (
        certs.client("one"),
        certs.client("two"),
        certs.client("three"),
    );
    let first = map(&vault, &partner.url("/one"), &one, &ca).await;
    let second = map(&vault, &partner.url("/two"), &two, &ca).await;
    let third = map(&vault, &partner.url("/three"), &three, &ca).await;
    let gateway = start_gateway(&vault, &Knobs::default());

    // Act: three calls on one mapping, one on another.
    for _ in 0..3 {
        assert_eq!(
            forward(&gateway, &partner.url("/one"), FULL_TOKEN).await,
            StatusCode::OK
        );
    }
    assert_eq!(
        forward(&gateway, &partner.url("/two"), FULL_TOKEN).await,
        StatusCode::OK
    );
    let scrape = Scrape::of(&gateway).await;

    // Assert: requests, connections, bytes, durations.
    let ok = [
        ("way_in", "forward"),
        ("account", ACCOUNT),
        ("service", IDP),
        ("outcome", "ok"),
    ];
    assert_eq!(scrape.value(REQUESTS, &ok), Some(4.0));
    let reused = "mtls_gateway_upstream_connections_total";
    assert!(scrape.sum(reused, &[("reused", "true")]) >= 1.0);
    assert!(scrape.sum(reused, &[("reused", "false")]) >= 1.0);
    let durations = "mtls_gateway_request_duration_seconds_count";
    assert_eq!(scrape.value(durations, &[("way_in", "forward")]), Some(4.0));
    assert!(scrape.value("mtls_gateway_request_bytes_total", &[("direction", "out")]) > Some(0.0));
    let version = env!("CARGO_PKG_VERSION");
    assert_eq!(
        scrape.value("mtls_gateway_build_info", &[("version", version)]),
        Some(1.0)
    );
    assert!(scrape.has_help(REQUESTS) && scrape.has_help(EXPIRY));

    // Assert: certificate expiry, by stored id.
    for (record, cert) in [(&first, &one), (&second, &two), (&third, &three)] {
        let id = record.id.to_string();
        let labels = [("account", ACCOUNT), ("certificate", id.as_str())];
        assert_eq!(
            scrape.value(EXPIRY, &labels),
            Some(not_after_epoch(&cert.leaf_der))
        );
    }

    // Assert: the snapshot and the store.
    let revision = vault.store.revision().await.expect("read the revision") as f64;
    assert_eq!(
        scrape.value("mtls_gateway_snapshot_mappings", &[]),
        Some(3.0)
    );
    assert_eq!(
        scrape.value("mtls_gateway_snapshot_revision", &[]),
        Some(revision)
    );
    let loaded = scrape.value("mtls_gateway_snapshot_last_success_timestamp_seconds", &[]);
    assert!(loaded > Some(1.7e9));
    let age = scrape.value("mtls_gateway_snapshot_age_seconds", &[]);
    assert!(age >= Some(0.0) && age < Some(60.0), "{age:?}");
    let skipped = "mtls_gateway_snapshot_skipped";
    assert_eq!(scrape.sum(skipped, &[]), 0.0);
    let vault_ok = [("backend", "vault"), ("result", "ok")];
    let secrets = [
        vault_ok[0],
        vault_ok[1],
        ("operation", "certificate_secret"),
    ];
    assert!(scrape.sum(STORE_CALLS, &secrets) >= 3.0);
    let revisions = [vault_ok[0], vault_ok[1], ("operation", "revision")];
    assert!(scrape.sum(STORE_CALLS, &revisions) >= 1.0);
    let timed = "mtls_gateway_store_call_duration_seconds_count";
    assert!(scrape.sum(timed, &[("operation", "revision")]) >= 1.0);

    // Act: delete the second certificate (and its mapping with it), replace the third.
    vault
        .store
        .delete_certificate(&account_id(), second.id, true)
        .await
        .expect("delete the certificate");
    let replacement = certs.client("three-renewed");
    let change = CertificateChange {
        name: None,
        p12: Some(certs::usable(&replacement.der, &replacement.password)),
    };
    vault
        .store
        .update_certificate(&account_id(), third.id, change)
        .await
        .expect("replace the certificate");

    // Assert: the deleted certificate's series is gone, the replaced one has the new date.
    let (second_id, third_id) = (second.id.to_string(), third.id.to_string());
    let renewed = not_after_epoch(&replacement.leaf_der);
    scrape_until(&gateway, PROPAGATION_DEADLINE, |scrape| {
        let deleted = [("certificate", second_id.as_str())];
        let replaced = [("certificate", third_id.as_str())];
        scrape.value(EXPIRY, &deleted).is_none()
            && scrape.value(EXPIRY, &replaced) == Some(renewed)
            && scrape.value("mtls_gateway_snapshot_mappings", &[]) == Some(2.0)
    })
    .await;
    let scrape = Scrape::of(&gateway).await;
    let id = first.id.to_string();
    let kept = [("account", ACCOUNT), ("certificate", id.as_str())];
    assert_eq!(scrape.samples(EXPIRY, &[]).len(), 2);
    assert_eq!(
        scrape.value(EXPIRY, &kept),
        Some(not_after_epoch(&one.leaf_der))
    );

    let passwords = [&one, &two, &three, &replacement].map(|c| c.password.as_str());
    let mut secrets = passwords.to_vec();
    secrets.extend([FULL_TOKEN, vault.token.as_str()]);
    assert_no_secrets_logged(&gateway, &secrets);
}

/// A raw TCP listener that accepts connections and never says a word.
struct Silent {
    port: u16,
    _listener: std::thread::JoinHandle<()>,
}

impl Silent {
    fn start() -> Silent {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind the listener");
        let port = listener.local_addr().expect("its address").port();
        let thread = std::thread::spawn(move || {
            let mut held = Vec::new();
            for stream in listener.incoming().flatten() {
                held.push(stream);
            }
        });
        Silent {
            port,
            _listener: thread,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_upstream_handshake_failure_is_counted_under_its_reason() {
    // Arrange: one partner per way to fail, each mapped with a Client CA A certificate.
    let certs = Certs::new();
    let pki = &certs.pki;
    let untrusted = certs.partner(pki.other_server_cert(), None);
    let expired = certs.partner(pki.server_cert_expired(), None);
    let misnamed = certs.partner(pki.server_cert_for("other.example"), None);
    let demanding_b = certs.partner(pki.server_cert(), Some(ClientCa::B));
    let silent = Silent::start();
    let closed_port = free_port();
    let cases = [
        (untrusted.url("/"), "partner_certificate_untrusted"),
        (expired.url("/"), "partner_certificate_expired"),
        (misnamed.url("/"), "name_mismatch"),
        (demanding_b.url("/"), "client_certificate_refused"),
        (format!("https://127.0.0.1:{}/", silent.port), "timeout"),
        (
            format!("https://127.0.0.1:{closed_port}/"),
            "connection_refused",
        ),
    ];
    let vault = TestVault::new("metrics-handshake").await;
    let ca = certs.server_ca();
    let cert = certs.client("handshakes");
    let record = add_certificate(&vault, &cert).await;
    for (url, _) in &cases {
        add_mapping(&vault, url, record.id, &ca).await;
    }
    let knobs = Knobs {
        handshake_timeout_ms: 500,
        ..Knobs::default()
    };
    let gateway = start_gateway(&vault, &knobs);

    for (url, reason) in &cases {
        // Act: one call that fails this way.
        let before = Scrape::of(&gateway).await;
        let status = forward(&gateway, url, FULL_TOKEN).await;

        // Assert: refused as a failed dependency, and counted once, under this reason only.
        assert_eq!(status, StatusCode::FAILED_DEPENDENCY, "{reason}");
        let after = Scrape::of(&gateway).await;
        for (_, other) in &cases {
            let labels = [("reason", *other)];
            let moved =
                after.sum(HANDSHAKE_FAILURES, &labels) - before.sum(HANDSHAKE_FAILURES, &labels);
            let expected = if other == reason { 1.0 } else { 0.0 };
            assert_eq!(
                moved, expected,
                "calling for {reason}, {other} moved by {moved}"
            );
        }
        let outcome = [("way_in", "forward"), ("outcome", "ok")];
        assert_eq!(after.sum(REQUESTS, &outcome), 0.0, "{reason}");
    }
    let scrape = Scrape::of(&gateway).await;
    assert_eq!(
        scrape.value(HANDSHAKE_FAILURES, &[("reason", "other")]),
        Some(0.0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throttled_and_unauthenticated_calls_are_counted_on_both_listeners() {
    // Arrange: one request per second on both listeners.
    let vault = TestVault::new("metrics-throttle").await;
    let knobs = Knobs {
        throttle: 1,
        ..Knobs::default()
    };
    let gateway = start_gateway(&vault, &knobs);
    let admin = Api::new(format!("http://{}", admin_addr(&gateway)));
    let path = format!("/mtls/account/{ACCOUNT}/certificates");

    // Act: a wrong token on each listener, then bursts.
    let refused = forward(&gateway, "https://partner.example/", "not-a-token").await;
    let mut admin_statuses = vec![
        admin
            .with_token(Some("not-a-token"))
            .get(&path)
            .await
            .status,
    ];
    let mut proxy_statuses = Vec::new();
    for _ in 0..5 {
        proxy_statuses.push(forward(&gateway, "https://partner.example/", FULL_TOKEN).await);
        admin_statuses.push(admin.get(&path).await.status);
    }

    // Assert
    assert_eq!(refused, StatusCode::UNAUTHORIZED);
    assert_eq!(admin_statuses[0], StatusCode::UNAUTHORIZED);
    assert!(proxy_statuses.contains(&StatusCode::TOO_MANY_REQUESTS));
    assert!(admin_statuses.contains(&StatusCode::TOO_MANY_REQUESTS));
    let scrape = Scrape::of(&gateway).await;
    let throttled = "mtls_gateway_throttled_total";
    assert!(scrape.sum(throttled, &[("listener", "proxy")]) >= 1.0);
    assert!(scrape.sum(throttled, &[("listener", "admin")]) >= 1.0);
    let unknown = [("reason", "unknown_token")];
    assert_eq!(
        scrape.value("mtls_gateway_auth_failures_total", &unknown),
        Some(2.0)
    );
    let refused_labels = [("account", "-"), ("service", "-"), ("outcome", "throttled")];
    assert!(scrape.sum(REQUESTS, &refused_labels) >= 1.0);
    let unauthorized = [
        ("way_in", "forward"),
        ("account", "-"),
        ("service", "-"),
        ("outcome", "unauthorized"),
    ];
    assert_eq!(scrape.value(REQUESTS, &unauthorized), Some(1.0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_calls_of_an_idle_gateway_and_of_an_admin_write_are_measured() {
    // Arrange: one mapped certificate, a gateway polling every second.
    let certs = Certs::new();
    let vault = TestVault::new("metrics-idle").await;
    let mapped = certs.client("idle");
    map(
        &vault,
        "https://partner.example/",
        &mapped,
        &certs.server_ca(),
    )
    .await;
    let gateway = start_gateway(&vault, &Knobs::default());
    let admin = Api::new(format!("http://{}", admin_addr(&gateway)));
    tokio::time::sleep(Duration::from_secs(2)).await;

    // Act: watch the idle gateway.
    let before = Scrape::of(&gateway).await;
    let started = Instant::now();
    tokio::time::sleep(IDLE_WINDOW).await;
    let after = Scrape::of(&gateway).await;
    let idle_seconds = started.elapsed().as_secs_f64();
    let idle_calls = after.sum(STORE_CALLS, &[]) - before.sum(STORE_CALLS, &[]);
    let per_second = idle_calls / idle_seconds;

    // Act: one admin write, which the gateway applies before answering.
    let uploaded = certs.client("uploaded");
    let certificate = json!({ "name": "uploaded", "password": uploaded.password });
    let write_started = Instant::now();
    let answer = admin
        .by_file(Method::POST, ACCOUNT, uploaded.der.clone(), &certificate)
        .await;
    let write_seconds = write_started.elapsed().as_secs_f64();
    let written = Scrape::of(&gateway).await;
    let write_calls = written.sum(STORE_CALLS, &[]) - after.sum(STORE_CALLS, &[]);
    let by_operation: BTreeMap<String, f64> = written
        .samples(STORE_CALLS, &[])
        .into_iter()
        .map(|(labels, value)| {
            let operation = labels.get("operation").cloned().unwrap_or_default();
            let earlier = after.sum(STORE_CALLS, &[("operation", operation.as_str())]);
            (operation, value - earlier)
        })
        .filter(|(_, moved)| *moved > 0.0)
        .fold(BTreeMap::new(), |mut all, (operation, moved)| {
            *all.entry(operation).or_default() += moved;
            all
        });
    eprintln!(
        "store calls, idle Vault gateway (poll 1 s, one mapping): {idle_calls} in \
         {idle_seconds:.1} s = {per_second:.2}/s"
    );
    eprintln!(
        "store calls for one admin write (certificate upload by file, applied before the \
         answer): {write_calls} in {write_seconds:.2} s, idle share about \
         {:.1}; by operation: {by_operation:?}",
        per_second * write_seconds
    );

    // Assert: polling costs about one revision read a second, and the write was counted.
    assert_eq!(answer.status, StatusCode::CREATED, "{}", answer.text);
    assert!((0.5..=3.0).contains(&per_second), "{per_second} calls/s");
    let created = [("operation", "create_certificate"), ("result", "ok")];
    assert_eq!(written.value(STORE_CALLS, &created), Some(1.0));
    assert_no_secrets_logged(
        &gateway,
        &[
            &mapped.password,
            &uploaded.password,
            FULL_TOKEN,
            &vault.token,
        ],
    );
}
