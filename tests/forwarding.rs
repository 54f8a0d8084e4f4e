//! Forwarding through the running gateway: the real binary, a real OpenBao (or the local
//! store), a real mTLS partner, and real HTTP requests through both ways in.
//!
//! Every test starts its own gateway on its own store (a fresh Vault prefix, or a local store
//! in the gateway's runtime directory), puts certificates and mappings in through the
//! library's store or the configuration file, and asserts what a caller and the partner see:
//! statuses, bodies, and which client certificate the partner received.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt;
use mtls_gateway::ids::{AccountId, CertificateId, EntryName, ServiceName};
use mtls_gateway::store::{
    CertificateChange, CertificateRecord, Mapping, MappingSpec, NewCertificate, Store, UrlMatch,
};
use reqwest::header::HeaderMap;
use reqwest::{Method, RequestBuilder, StatusCode};
use serde_json::Value;
use sha2::{Digest, Sha256};
use support::admin::TestVault;
use support::certs;
use support::gateway::{free_port, Gateway};
use support::openbao::OpenBao;
use support::partner::{download_sha256, Partner, PartnerOptions, SeenRequest};
use support::pki::{ClientCa, ClientCert, Pki};

/// A store change must reach forwarding within this time when the gateway polls every second.
const PROPAGATION_DEADLINE: Duration = Duration::from_secs(5);

/// A configuration file edit must take effect within this time (a file event, 200 ms settle).
const RELOAD_DEADLINE: Duration = Duration::from_secs(3);

/// Pause between two attempts while waiting for a change to arrive.
const RETRY_PAUSE: Duration = Duration::from_millis(100);

/// Longest any one request of these tests may take, 50 MB transfers included.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

/// The Bearer token callers present to the gateway: in `Authorization` on the forward call,
/// in `Proxy-Authorization` in HTTP proxy mode. Only its SHA-256 is in the configuration.
const GATEWAY_TOKEN: &str = "forwarding-tests-caller-token";

/// The account most tests use, and a second one.
const ACCOUNT: &str = "le1606809";
const OTHER_ACCOUNT: &str = "52653865";

const IDP: &str = "IDP";
const WEBHOOKS: &str = "WEBHOOKS";

/// The header names HTTP proxy mode reads by default.
const ACCOUNT_HEADER: &str = "x-mtls-account";
const SERVICE_HEADER: &str = "x-mtls-service";

// ------------------------------------------------------------------------------------------
// The world of one test: certificates, a partner, a store, a gateway.
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

    /// A fresh client identity under Client CA A.
    fn client(&self, cn: &str) -> ClientCert {
        self.pki.client(ClientCa::A, cn, None)
    }

    fn server_ca_file(&self) -> &Path {
        self.pki.server_ca_pem_path()
    }

    /// A partner with the trusted `localhost` certificate that demands a client certificate
    /// from `client_ca`, or none.
    fn partner(&self, client_ca: Option<ClientCa>) -> Partner {
        Partner::start(PartnerOptions {
            server: self.pki.server_cert(),
            client_ca: client_ca.map(|ca| self.pki.client_ca_pem(ca)),
        })
    }
}

/// Where the gateway keeps certificates and mappings.
#[derive(Debug, Clone)]
enum StoreSection {
    Vault {
        address: String,
        prefix: String,
    },
    /// A local store in the gateway's runtime directory.
    Local,
}

/// The parts of the gateway's configuration the tests vary.
#[derive(Debug, Clone)]
struct Settings {
    store: StoreSection,
    http2: bool,
    grace_period_seconds: u64,
    /// Chosen once, so that a rewritten file keeps it.
    admin_port: u16,
    mappings: Vec<FileMapping>,
    /// A top-level line that makes the file invalid, to test refused edits.
    poison: Option<&'static str>,
}

impl Settings {
    fn new(store: StoreSection) -> Settings {
        Settings {
            store,
            http2: true,
            grace_period_seconds: 1,
            admin_port: free_port(),
            mappings: Vec::new(),
            poison: None,
        }
    }

    fn render(&self, listen: SocketAddr, runtime_dir: &Path) -> String {
        let store = match &self.store {
            StoreSection::Vault { address, prefix } => format!(
                "store:\n  kind: vault\n  address: {}\n  prefix: {}\n",
                quoted(address),
                quoted(prefix)
            ),
            StoreSection::Local => format!(
                "store:\n  kind: local\n  path: {}\n",
                quoted_path(&runtime_dir.join("store"))
            ),
        };
        let mappings: String = self.mappings.iter().map(FileMapping::yaml).collect();
        // Authentication stays on, as deployed. The admin listener gets a port of its own so
        // that the gateways of parallel tests do not collide. Throttling is off: these tests
        // send bursts from one address on purpose.
        let mut text = format!(
            "{store}\
             auth:\n  tokens:\n    - id: forwarding-tests\n      sha256: {token}\n      \
             accounts: [\"*\"]\n      scopes: [forward]\n\
             admin:\n  listen: 127.0.0.1:{admin_port}\n\
             lifecycle:\n  grace_period_seconds: {grace}\n  shutdown_timeout_seconds: 1\n  \
             runtime_dir: {dir}\n  threads: 1\n\
             refresh:\n  poll_seconds: 1\n\
             proxy:\n  listen: {listen}\n  throttle:\n    per_second: 0\n\
             upstream:\n  http2: {http2}\n  connect_timeout_ms: 2000\n  \
             handshake_timeout_ms: 3000\n  read_timeout_ms: 10000\n\
             mappings:\n{mappings}",
            token = sha256_hex(GATEWAY_TOKEN.as_bytes()),
            admin_port = self.admin_port,
            grace = self.grace_period_seconds,
            dir = quoted_path(runtime_dir),
            http2 = self.http2,
        );
        if let Some(poison) = self.poison {
            text.push_str(poison);
        }
        text
    }

    /// Writes this configuration over the gateway's file in one step (write, then rename), as
    /// an operator's tooling or Kubernetes does.
    fn rewrite(&self, gateway: &Gateway) {
        let text = self.render(gateway.proxy_addr(), gateway.runtime_dir());
        let staging = gateway.runtime_dir().join("gateway.yaml.new");
        std::fs::write(&staging, text).expect("write the new configuration");
        std::fs::rename(&staging, gateway.config_path()).expect("replace the configuration");
    }
}

/// A JSON string, which YAML reads as the same string.
fn quoted(text: &str) -> String {
    serde_json::to_string(text).expect("a string serialises")
}

fn quoted_path(path: &Path) -> String {
    quoted(path.to_str().expect("test paths are UTF-8"))
}

/// One item of the configuration's `mappings` list: [`ACCOUNT`] and [`IDP`] unless changed.
#[derive(Debug, Clone)]
struct FileMapping {
    account: &'static str,
    service: &'static str,
    url: String,
    url_match: UrlMatch,
    /// The `certificate` block's fields, as YAML lines.
    certificate: String,
    ca_file: PathBuf,
}

impl FileMapping {
    /// A mapping of exactly `url` to a P12 file and its password file.
    fn p12_files(url: &str, file: &Path, password_file: &Path, ca_file: &Path) -> FileMapping {
        let certificate = format!(
            "      p12_file: {}\n      password_file: {}\n",
            quoted_path(file),
            quoted_path(password_file)
        );
        FileMapping::new(url, certificate, ca_file)
    }

    fn p12(url: &str, cert: &ClientCert, ca_file: &Path) -> FileMapping {
        FileMapping::p12_files(url, &cert.p12_path, &cert.password_path, ca_file)
    }

    /// A mapping of exactly `url` to a PEM chain and a PKCS#8 PEM key file.
    fn pem(url: &str, cert_file: &Path, key_file: &Path, ca_file: &Path) -> FileMapping {
        let certificate = format!(
            "      cert_file: {}\n      key_file: {}\n",
            quoted_path(cert_file),
            quoted_path(key_file)
        );
        FileMapping::new(url, certificate, ca_file)
    }

    fn new(url: &str, certificate: String, ca_file: &Path) -> FileMapping {
        FileMapping {
            account: ACCOUNT,
            service: IDP,
            url: url.to_owned(),
            url_match: UrlMatch::Exact,
            certificate,
            ca_file: ca_file.to_owned(),
        }
    }

    fn prefix(mut self) -> FileMapping {
        self.url_match = UrlMatch::Prefix;
        self
    }

    fn service(mut self, service: &'static str) -> FileMapping {
        self.service = service;
        self
    }

    fn yaml(&self) -> String {
        let url_match = match self.url_match {
            UrlMatch::Exact => "exact",
            UrlMatch::Prefix => "prefix",
        };
        format!(
            "  - account: {}\n    service: {}\n    url: {}\n    match: {url_match}\n    \
             certificate:\n{}    ca_file: {}\n",
            quoted(self.account),
            quoted(self.service),
            quoted(&self.url),
            self.certificate,
            quoted_path(&self.ca_file)
        )
    }
}

/// A fresh prefix on the shared OpenBao with a token that has only the documented policy, the
/// test's own handle on that store, and the partner CA its mappings trust.
struct Vault {
    address: String,
    prefix: String,
    token: String,
    store: Arc<dyn Store>,
    partner_ca: String,
    /// Holds the token file the test's store reads.
    _vault: TestVault,
}

impl Vault {
    async fn new(certs: &Certs) -> Vault {
        Vault::with(certs, TestVault::new("forwarding").await)
    }

    /// On a server of the test's own, which the test may stop.
    async fn on(certs: &Certs, bao: &OpenBao) -> Vault {
        Vault::with(certs, TestVault::on(bao, "forwarding").await)
    }

    fn with(certs: &Certs, vault: TestVault) -> Vault {
        let partner_ca = String::from_utf8(certs.pki.server_ca_pem()).expect("a PEM CA is text");
        Vault {
            address: vault.address.clone(),
            prefix: vault.prefix.clone(),
            token: vault.token.clone(),
            store: Arc::clone(&vault.store),
            partner_ca,
            _vault: vault,
        }
    }

    fn settings(&self) -> Settings {
        Settings::new(StoreSection::Vault {
            address: self.address.clone(),
            prefix: self.prefix.clone(),
        })
    }

    /// Starts a gateway on this store; the gateway reads its token from `VAULT_TOKEN`.
    fn start_gateway(&self, settings: Settings) -> Gateway {
        Gateway::builder()
            .env("VAULT_TOKEN", &self.token)
            .start(|listen, runtime_dir| settings.render(listen, runtime_dir))
    }

    async fn add_certificate(&self, account: &str, cert: &ClientCert) -> CertificateRecord {
        let new = NewCertificate {
            account: account_id(account),
            name: EntryName::new(format!("cert-{}", cert.subject_cn)).expect("a valid name"),
            p12: certs::usable(&cert.der, &cert.password),
        };
        self.store
            .create_certificate(new)
            .await
            .expect("create the certificate")
    }

    /// Maps `account` + `service` + `url` to a stored certificate, trusting the partner CA.
    async fn add_mapping(
        &self,
        (account, service, url): (&str, &str, &str),
        url_match: UrlMatch,
        certificate: CertificateId,
    ) -> Mapping {
        let spec = MappingSpec {
            name: EntryName::new(format!("{service} {url}")).expect("a valid name"),
            service: ServiceName::new(service).expect("a valid service"),
            url: url.to_owned(),
            certificate_id: certificate,
            enabled: true,
            url_match,
            ca_pem: Some(self.partner_ca.clone()),
            verify_server: true,
        };
        self.store
            .create_mapping(&account_id(account), spec)
            .await
            .expect("create the mapping")
    }

    /// Stores `cert` and maps `account` + `service` + exactly `url` to it.
    async fn map(&self, account: &str, service: &str, url: &str, cert: &ClientCert) -> Mapping {
        let record = self.add_certificate(account, cert).await;
        let key = (account, service, url);
        self.add_mapping(key, UrlMatch::Exact, record.id).await
    }
}

fn account_id(account: &str) -> AccountId {
    AccountId::new(account).expect("a valid account id")
}

// ------------------------------------------------------------------------------------------
// Requests.
// ------------------------------------------------------------------------------------------

/// A service calling one gateway, both ways in. Each client keeps its connections alive and
/// presents the caller's token.
struct Caller<'g> {
    gateway: &'g Gateway,
    direct: reqwest::Client,
    via_proxy: reqwest::Client,
}

impl<'g> Caller<'g> {
    fn new(gateway: &'g Gateway) -> Caller<'g> {
        let direct = reqwest::Client::builder()
            .no_proxy()
            .timeout(REQUEST_TIMEOUT)
            .build()
            .expect("a reqwest client");
        let credential = format!("Bearer {GATEWAY_TOKEN}")
            .parse()
            .expect("a header value");
        let proxy = reqwest::Proxy::http(gateway.base_url())
            .expect("a proxy URL")
            .custom_http_auth(credential);
        let via_proxy = reqwest::Client::builder()
            .proxy(proxy)
            .timeout(REQUEST_TIMEOUT)
            .build()
            .expect("a reqwest client");
        Caller {
            gateway,
            direct,
            via_proxy,
        }
    }

    /// `METHOD /mtls/account/{account}` with `LP-forward-url` and `LP-service-name`.
    fn forward(&self, method: Method, account: &str, service: &str, url: &str) -> RequestBuilder {
        let path = format!("{}/mtls/account/{account}", self.gateway.base_url());
        self.direct
            .request(method, path)
            .bearer_auth(GATEWAY_TOKEN)
            .header("LP-forward-url", url)
            .header("LP-service-name", service)
    }

    /// A `GET` forward call that must not fall back to plain TLS when nothing is mapped.
    fn mapped(&self, account: &str, service: &str, url: &str) -> RequestBuilder {
        self.forward(Method::GET, account, service, url)
            .header("LP-stop-if-certificate-not-found", "true")
    }

    /// `METHOD http://...` through the gateway as HTTP proxy, for the partner's `https://` URL:
    /// services send plain `http://` and the gateway upgrades it.
    fn proxied(&self, method: Method, account: &str, service: &str, url: &str) -> RequestBuilder {
        let plain = url.replacen("https://", "http://", 1);
        self.via_proxy
            .request(method, plain)
            .header(ACCOUNT_HEADER, account)
            .header(SERVICE_HEADER, service)
    }
}

/// What the partner saw, from its answer relayed by the gateway; panics unless it is a 200.
async fn seen(request: RequestBuilder) -> SeenRequest {
    let response = request.send().await.expect("the gateway answers");
    let status = response.status();
    let text = response.text().await.expect("read the answer");
    assert_eq!(status, StatusCode::OK, "answer: {text}");
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("not the partner's answer ({e}): {text}"))
}

/// An answer from the gateway itself: its status, its headers and its JSON body.
async fn refusal(request: RequestBuilder) -> (StatusCode, HeaderMap, Value) {
    let response = request.send().await.expect("the gateway answers");
    let (status, headers) = (response.status(), response.headers().clone());
    let text = response.text().await.expect("read the answer");
    let body = serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"));
    (status, headers, body)
}

/// The status alone, body drained.
async fn status_of(request: RequestBuilder) -> StatusCode {
    let response = request.send().await.expect("the gateway answers");
    let status = response.status();
    let _ = response.bytes().await;
    status
}

/// The fingerprint the partner received, or the gateway's status when it did not forward.
async fn presented(request: RequestBuilder) -> Result<String, StatusCode> {
    let response = request.send().await.expect("the gateway answers");
    let status = response.status();
    if status != StatusCode::OK {
        let _ = response.bytes().await;
        return Err(status);
    }
    let seen: SeenRequest = response.json().await.expect("the partner's answer");
    Ok(seen
        .fingerprint
        .expect("a mapped call presents a certificate"))
}

/// Calls `attempt` until it returns `Some`, pausing between calls; panics after `deadline`.
/// Returns the value and how long it took to arrive.
async fn eventually<T, F, Fut>(deadline: Duration, what: &str, mut attempt: F) -> (T, Duration)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let started = Instant::now();
    loop {
        if let Some(value) = attempt().await {
            return (value, started.elapsed());
        }
        assert!(
            started.elapsed() < deadline,
            "{what} did not happen within {deadline:?}"
        );
        tokio::time::sleep(RETRY_PAUSE).await;
    }
}

/// Waits until the partner has counted `n` failed handshakes. The partner's side of a failed
/// handshake may finish a moment after the gateway has already answered.
async fn failed_handshakes(partner: &Partner, n: u64) {
    let what = format!("{n} failed handshakes at the partner");
    eventually(Duration::from_secs(2), &what, || async {
        (partner.failed_handshakes() >= n).then_some(())
    })
    .await;
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

// ------------------------------------------------------------------------------------------
// The right certificate, both ways in.
// ------------------------------------------------------------------------------------------

#[tokio::test]
async fn presents_the_certificate_mapped_to_account_service_and_url_both_ways_in() {
    let certs = Certs::new();
    let partner = certs.partner(Some(ClientCa::A));
    let vault = Vault::new(&certs).await;
    let (pay, refund) = (partner.url("/pay"), partner.url("/refund"));
    let idp_pay = certs.client("idp-pay");
    let webhooks_pay = certs.client("webhooks-pay");
    let idp_refund = certs.client("idp-refund");
    let other_account_pay = certs.client("other-account-pay");
    vault.map(ACCOUNT, IDP, &pay, &idp_pay).await;
    vault.map(ACCOUNT, WEBHOOKS, &pay, &webhooks_pay).await;
    vault.map(ACCOUNT, IDP, &refund, &idp_refund).await;
    vault
        .map(OTHER_ACCOUNT, IDP, &pay, &other_account_pay)
        .await;
    let gateway = vault.start_gateway(vault.settings());
    let caller = Caller::new(&gateway);
    let body: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
    let cases = [
        (ACCOUNT, IDP, &pay, &idp_pay),
        (ACCOUNT, WEBHOOKS, &pay, &webhooks_pay),
        (ACCOUNT, IDP, &refund, &idp_refund),
        (OTHER_ACCOUNT, IDP, &pay, &other_account_pay),
    ];

    let mut answers = Vec::new();
    for (account, service, url, _) in cases {
        let forwarded = caller.forward(Method::POST, account, service, url);
        let forwarded = seen(forwarded.body(body.clone())).await;
        let proxied_get = seen(caller.proxied(Method::GET, account, service, url)).await;
        let proxied_post = caller.proxied(Method::POST, account, service, url);
        let proxied_post = seen(proxied_post.body(body.clone())).await;
        answers.push([
            ("forward POST", forwarded),
            ("proxy GET", proxied_get),
            ("proxy POST", proxied_post),
        ]);
    }

    for ((account, service, url, expected), answers) in cases.iter().zip(&answers) {
        let path = url.trim_start_matches(&partner.url(""));
        for (way, answer) in answers {
            let case = format!("{way} {account} {service} {path}");
            let sent: &[u8] = if answer.method == "GET" { &[] } else { &body };
            assert_eq!(
                answer.fingerprint,
                Some(expected.fingerprint.clone()),
                "{case}"
            );
            assert!(way.ends_with(&answer.method), "{case}: {}", answer.method);
            assert_eq!(answer.path, path, "{case}");
            assert_eq!(answer.body_length, sent.len() as u64, "{case}");
            assert_eq!(answer.body_sha256, sha256_hex(sent), "{case}");
        }
    }
    assert_ne!(idp_pay.fingerprint, webhooks_pay.fingerprint);
}

// ------------------------------------------------------------------------------------------
// Identities never mix on pooled connections.
// ------------------------------------------------------------------------------------------

/// Two accounts map the same partner URL to `cert_a` and `cert_b`. Sequential and concurrent
/// requests over one keep-alive client must each carry their own account's certificate, no
/// partner connection may carry both, and connections must have been reused (so the pool was
/// really exercised).
async fn assert_identities_never_mix(certs: &Certs, cert_a: &ClientCert, cert_b: &ClientCert) {
    let partner = certs.partner(Some(ClientCa::A));
    let vault = Vault::new(certs).await;
    let url = partner.url("/accounts");
    vault.map("tenant-a", IDP, &url, cert_a).await;
    vault.map("tenant-b", IDP, &url, cert_b).await;
    let gateway = vault.start_gateway(vault.settings());
    let caller = Caller::new(&gateway);
    let tenants = |n: usize| (0..n).map(|i| ["tenant-a", "tenant-b"][i % 2]);

    let mut answers = Vec::new();
    for account in tenants(30) {
        answers.push((account, seen(caller.mapped(account, IDP, &url)).await));
    }
    let concurrent = tenants(60).map(|account| {
        let call = caller.mapped(account, IDP, &url);
        async move { (account, seen(call).await) }
    });
    answers.extend(futures::future::join_all(concurrent).await);

    let mut connections: BTreeMap<&str, Vec<u64>> = BTreeMap::new();
    for (account, answer) in &answers {
        let expected = if *account == "tenant-a" {
            cert_a
        } else {
            cert_b
        };
        assert_eq!(
            answer.fingerprint.as_ref(),
            Some(&expected.fingerprint),
            "{account} went out with another identity on connection {}",
            answer.connection
        );
        connections
            .entry(account)
            .or_default()
            .push(answer.connection);
    }
    let distinct =
        |account: &str| -> BTreeSet<u64> { connections[account].iter().copied().collect() };
    let (a, b) = (distinct("tenant-a"), distinct("tenant-b"));
    assert!(
        a.is_disjoint(&b),
        "shared connections: {:?}",
        a.intersection(&b)
    );
    assert!(
        a.len() < connections["tenant-a"].len() && b.len() < connections["tenant-b"].len(),
        "connections were not reused: {connections:?}"
    );
}

#[tokio::test]
async fn two_accounts_on_one_partner_never_receive_each_others_certificate() {
    let certs = Certs::new();
    let (cert_a, cert_b) = (certs.client("tenant-a"), certs.client("tenant-b"));

    assert_identities_never_mix(&certs, &cert_a, &cert_b).await;
}

#[tokio::test]
async fn certificates_sharing_issuer_and_serial_never_share_a_connection() {
    let certs = Certs::new();
    let cert_a = certs.pki.client(ClientCa::A, "tenant", Some(4242));
    let cert_b = certs.pki.client(ClientCa::A, "tenant", Some(4242));
    let facts = |c: &ClientCert| {
        (
            c.subject_cn.clone(),
            c.issuer_cn.clone(),
            c.serial_hex.clone(),
        )
    };
    assert_eq!(facts(&cert_a), facts(&cert_b));
    assert_ne!(cert_a.fingerprint, cert_b.fingerprint);

    assert_identities_never_mix(&certs, &cert_a, &cert_b).await;
}

// ------------------------------------------------------------------------------------------
// Failed handshakes.
// ------------------------------------------------------------------------------------------

#[tokio::test]
async fn refuses_a_partner_whose_server_certificate_is_not_trusted() {
    let certs = Certs::new();
    let partner = Partner::start(PartnerOptions {
        server: certs.pki.other_server_cert(),
        client_ca: Some(certs.pki.client_ca_pem(ClientCa::A)),
    });
    let vault = Vault::new(&certs).await;
    let url = partner.url("/pay");
    vault.map(ACCOUNT, IDP, &url, &certs.client("idp")).await;
    let gateway = vault.start_gateway(vault.settings());
    let caller = Caller::new(&gateway);

    let forwarded = caller
        .forward(Method::POST, ACCOUNT, IDP, &url)
        .body("payment");
    let (forward_status, headers, forward_body) = refusal(forwarded).await;
    let proxied = caller.proxied(Method::GET, ACCOUNT, IDP, &url);
    let (proxy_status, _, proxy_body) = refusal(proxied).await;
    failed_handshakes(&partner, 2).await;

    assert_eq!(
        forward_status,
        StatusCode::FAILED_DEPENDENCY,
        "{forward_body}"
    );
    assert_eq!(headers["lp-error-from-transport"], "tls_handshake_failed");
    let message = headers["lp-message-from-transport"]
        .to_str()
        .expect("ASCII");
    assert!(!message.is_empty());
    assert_eq!(forward_body["code"], "tls_handshake_failed");
    assert_eq!(proxy_status, StatusCode::BAD_GATEWAY, "{proxy_body}");
    assert_eq!(proxy_body["code"], "tls_handshake_failed");
    assert!(partner.seen().is_empty(), "{:?}", partner.seen());
}

#[tokio::test]
async fn answers_424_when_the_partner_refuses_the_client_certificate() {
    let certs = Certs::new();
    let partner = certs.partner(Some(ClientCa::B));
    let vault = Vault::new(&certs).await;
    let url = partner.url("/pay");
    vault
        .map(ACCOUNT, IDP, &url, &certs.client("from-ca-a"))
        .await;
    let gateway = vault.start_gateway(vault.settings());

    let forwarded = Caller::new(&gateway).forward(Method::POST, ACCOUNT, IDP, &url);
    let (status, headers, body) = refusal(forwarded.body("payment")).await;
    failed_handshakes(&partner, 1).await;

    assert_eq!(status, StatusCode::FAILED_DEPENDENCY, "{body}");
    assert_eq!(
        headers["lp-error-from-transport"], "tls_handshake_failed",
        "{body}"
    );
    assert!(headers.contains_key("lp-message-from-transport"));
    assert!(partner.seen().is_empty(), "{:?}", partner.seen());
}

// ------------------------------------------------------------------------------------------
// No mapping.
// ------------------------------------------------------------------------------------------

#[tokio::test]
async fn without_a_mapping_the_forward_call_stops_or_goes_over_server_authenticated_tls() {
    let certs = Certs::new();
    let partner = certs.partner(None);
    let vault = Vault::new(&certs).await;
    let url = partner.url("/unmapped");
    // Without a mapping there is no mapping CA: the partner's CA stands in for system roots.
    let roots = certs.server_ca_file().to_str().expect("UTF-8");
    let gateway = Gateway::builder()
        .env("VAULT_TOKEN", &vault.token)
        .env("SSL_CERT_FILE", roots)
        .start(|listen, dir| vault.settings().render(listen, dir));
    let caller = Caller::new(&gateway);
    let call = || caller.forward(Method::POST, ACCOUNT, IDP, &url);

    let stop = call().header("LP-stop-if-certificate-not-found", "true");
    let (stop_status, _, stop_body) = refusal(stop).await;
    let nothing_sent = partner.seen().is_empty();
    let go_on = call().header("LP-stop-if-certificate-not-found", "false");
    let explicit = seen(go_on).await;
    let absent = seen(call()).await;

    assert_eq!(stop_status, StatusCode::BAD_REQUEST, "{stop_body}");
    assert_eq!(stop_body["code"], "certificate_not_found");
    assert_eq!(stop_body["account"], ACCOUNT);
    assert_eq!(stop_body["service"], IDP);
    assert_eq!(stop_body["url"], url.as_str());
    assert!(nothing_sent, "the partner saw a stopped request");
    for answer in [&explicit, &absent] {
        assert_eq!(answer.fingerprint, None, "a client certificate was sent");
        assert_eq!(answer.sni.as_deref(), Some("localhost"));
    }
}

#[tokio::test]
async fn http_proxy_mode_refuses_an_unmapped_target_with_403() {
    let certs = Certs::new();
    let partner = certs.partner(None);
    let vault = Vault::new(&certs).await;
    let url = partner.url("/unmapped?q=1");
    let gateway = vault.start_gateway(vault.settings());

    let proxied = Caller::new(&gateway).proxied(Method::GET, ACCOUNT, IDP, &url);
    let (status, _, body) = refusal(proxied).await;

    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert_eq!(body["code"], "no_mapping");
    assert_eq!(body["account"], ACCOUNT);
    assert_eq!(body["service"], IDP);
    assert_eq!(body["url"], url.as_str());
    assert!(partner.seen().is_empty());
}

// ------------------------------------------------------------------------------------------
// Store and configuration changes reach forwarding.
// ------------------------------------------------------------------------------------------

#[tokio::test]
async fn a_mapping_created_in_the_store_is_used_within_the_poll_interval() {
    let certs = Certs::new();
    let partner = certs.partner(Some(ClientCa::A));
    let vault = Vault::new(&certs).await;
    let url = partner.url("/new");
    let cert = certs.client("new");
    let gateway = vault.start_gateway(vault.settings());
    let caller = Caller::new(&gateway);
    let before = status_of(caller.mapped(ACCOUNT, IDP, &url)).await;

    vault.map(ACCOUNT, IDP, &url, &cert).await;
    let (fingerprint, took) = eventually(PROPAGATION_DEADLINE, "the new mapping", || async {
        presented(caller.mapped(ACCOUNT, IDP, &url)).await.ok()
    })
    .await;

    eprintln!("a stored mapping reached forwarding after {took:?}");
    assert_eq!(before, StatusCode::BAD_REQUEST);
    assert_eq!(fingerprint, cert.fingerprint);
}

#[tokio::test]
async fn config_file_edits_take_effect_and_invalid_ones_change_nothing() {
    let certs = Certs::new();
    let partner = certs.partner(Some(ClientCa::A));
    let vault = Vault::new(&certs).await;
    let (stored_url, file_url) = (partner.url("/stored"), partner.url("/from-file"));
    let (stored, from_file) = (certs.client("stored"), certs.client("from-file"));
    vault.map(ACCOUNT, IDP, &stored_url, &stored).await;
    let original = vault.settings();
    let gateway = vault.start_gateway(original.clone());
    let caller = Caller::new(&gateway);
    let before = status_of(caller.mapped(ACCOUNT, IDP, &file_url)).await;

    let mut edited = original.clone();
    edited.mappings = vec![FileMapping::p12(
        &file_url,
        &from_file,
        certs.server_ca_file(),
    )];
    edited.rewrite(&gateway);
    let (added, took) = eventually(RELOAD_DEADLINE, "the static mapping", || async {
        presented(caller.mapped(ACCOUNT, IDP, &file_url)).await.ok()
    })
    .await;
    eprintln!("a configuration edit reached forwarding after {took:?}");
    // An unknown section makes the file invalid; applied, it would drop the static mapping.
    let mark = gateway.log_mark();
    let mut invalid = original.clone();
    invalid.poison = Some("colour: blue\n");
    invalid.rewrite(&gateway);
    let refused = gateway.wait_for_log_since(mark, "configuration change refused", RELOAD_DEADLINE);
    // A rebuild would follow the decision within milliseconds; leave it time to show.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after_file = presented(caller.mapped(ACCOUNT, IDP, &file_url)).await;
    let after_stored = presented(caller.mapped(ACCOUNT, IDP, &stored_url)).await;

    assert_eq!(before, StatusCode::BAD_REQUEST);
    assert_eq!(added, from_file.fingerprint);
    assert!(refused.contains("colour"), "{refused}");
    assert_eq!(after_file, Ok(from_file.fingerprint));
    assert_eq!(after_stored, Ok(stored.fingerprint));
}

#[tokio::test]
async fn a_replaced_certificate_is_presented_within_the_poll_interval() {
    let certs = Certs::new();
    let partner = certs.partner(Some(ClientCa::A));
    let vault = Vault::new(&certs).await;
    let url = partner.url("/rotate");
    let (old, new) = (certs.client("old"), certs.client("new"));
    let record = vault.add_certificate(ACCOUNT, &old).await;
    vault
        .add_mapping((ACCOUNT, IDP, &url), UrlMatch::Exact, record.id)
        .await;
    let gateway = vault.start_gateway(vault.settings());
    let caller = Caller::new(&gateway);
    let first = presented(caller.mapped(ACCOUNT, IDP, &url)).await;

    let change = CertificateChange {
        name: None,
        p12: Some(certs::usable(&new.der, &new.password)),
    };
    let account = account_id(ACCOUNT);
    vault
        .store
        .update_certificate(&account, record.id, change)
        .await
        .expect("replace the P12");
    let (_, took) = eventually(PROPAGATION_DEADLINE, "the new certificate", || async {
        let fingerprint = presented(caller.mapped(ACCOUNT, IDP, &url)).await;
        (fingerprint == Ok(new.fingerprint.clone())).then_some(())
    })
    .await;
    let mut later = Vec::new();
    for _ in 0..5 {
        later.push(presented(caller.mapped(ACCOUNT, IDP, &url)).await);
    }

    eprintln!("a replaced certificate was presented after {took:?}");
    assert_eq!(first, Ok(old.fingerprint));
    assert!(
        later.iter().all(|f| f.as_ref() == Ok(&new.fingerprint)),
        "{later:?}"
    );
}

// ------------------------------------------------------------------------------------------
// Large bodies are streamed.
// ------------------------------------------------------------------------------------------

/// 50 MiB, in 64 KiB chunks.
const LARGE_BODY: u64 = 50 * 1024 * 1024;
const CHUNK: usize = 64 * 1024;

/// Peak RSS growth allowed while 50 MiB pass each way: far less than one body.
const MAX_RSS_GROWTH_KIB: u64 = 25 * 1024;

/// The upload's chunk; byte `i` is `(31 i + 7) mod 256`, unlike the download's pattern.
fn upload_chunk() -> Bytes {
    (0..CHUNK).map(|i| ((31 * i + 7) % 256) as u8).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_50_mb_each_way_without_holding_the_body() {
    let certs = Certs::new();
    let partner = certs.partner(Some(ClientCa::A));
    let vault = Vault::new(&certs).await;
    let record = vault.add_certificate(ACCOUNT, &certs.client("bulk")).await;
    let origin = partner.url("");
    vault
        .add_mapping((ACCOUNT, IDP, &origin), UrlMatch::Prefix, record.id)
        .await;
    let gateway = vault.start_gateway(vault.settings());
    let caller = Caller::new(&gateway);
    let call = |method: Method, path: &str| {
        caller
            .forward(method, ACCOUNT, IDP, &partner.url(path))
            .header("LP-stop-if-certificate-not-found", "true")
    };
    seen(call(Method::GET, "/warm-up")).await;
    let (chunk, chunks) = (upload_chunk(), LARGE_BODY / CHUNK as u64);
    let mut upload_digest = Sha256::new();
    for _ in 0..chunks {
        upload_digest.update(&chunk);
    }
    let peak_before = gateway.peak_rss_kib();

    let generated = (0..chunks).map(move |_| Ok::<_, std::io::Error>(chunk.clone()));
    let body = reqwest::Body::wrap_stream(futures::stream::iter(generated));
    let upload = seen(call(Method::POST, "/upload").body(body)).await;
    let download = call(Method::GET, &format!("/download?bytes={LARGE_BODY}"))
        .send()
        .await
        .expect("the gateway answers");
    let download_status = download.status();
    let (mut downloaded, mut download_digest) = (0u64, Sha256::new());
    let mut pieces = download.bytes_stream();
    while let Some(piece) = pieces.next().await {
        let piece = piece.expect("read the download");
        downloaded += piece.len() as u64;
        download_digest.update(&piece);
    }
    let peak_after = gateway.peak_rss_kib();

    let growth = peak_after.saturating_sub(peak_before);
    eprintln!("gateway peak RSS: {peak_before} KiB before, {peak_after} KiB after (+{growth} KiB)");
    assert_eq!(upload.body_length, LARGE_BODY);
    assert_eq!(upload.body_sha256, hex::encode(upload_digest.finalize()));
    assert_eq!(download_status, StatusCode::OK);
    assert_eq!(downloaded, LARGE_BODY);
    assert_eq!(
        hex::encode(download_digest.finalize()),
        download_sha256(LARGE_BODY)
    );
    assert!(growth < MAX_RSS_GROWTH_KIB, "peak RSS grew by {growth} KiB");
}

// ------------------------------------------------------------------------------------------
// Graceful shutdown.
// ------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_a_request_in_flight_finish_then_exits_cleanly() {
    let certs = Certs::new();
    let partner = certs.partner(Some(ClientCa::A));
    let vault = Vault::new(&certs).await;
    let url = partner.url("/slow?ms=2000");
    vault.map(ACCOUNT, IDP, &url, &certs.client("slow")).await;
    let mut settings = vault.settings();
    settings.grace_period_seconds = 5;
    let mut gateway = vault.start_gateway(settings);
    let in_flight = tokio::spawn(status_of(Caller::new(&gateway).mapped(ACCOUNT, IDP, &url)));
    let reached = || async { (!partner.seen().is_empty()).then_some(()) };
    eventually(Duration::from_secs(5), "the slow request", reached).await;

    let signalled = Instant::now();
    gateway.sigterm();
    let status = in_flight.await.expect("the request task");
    let answered = signalled.elapsed();
    // Grace period, then the runtimes' shutdown timeout, then a margin.
    let limit = Duration::from_secs(5 + 1 + 3);
    let (exit, gateway) = tokio::task::spawn_blocking(move || (gateway.wait_exit(limit), gateway))
        .await
        .expect("the waiting task");
    let exited = signalled.elapsed();

    eprintln!("after SIGTERM: answered in {answered:?}, exited in {exited:?}");
    assert_eq!(status, StatusCode::OK);
    let logs = gateway.logs().join("\n");
    let exit = exit.unwrap_or_else(|| panic!("still running {limit:?} after SIGTERM:\n{logs}"));
    assert!(exit.success(), "{exit}:\n{logs}");
}

// ------------------------------------------------------------------------------------------
// Headers.
// ------------------------------------------------------------------------------------------

#[tokio::test]
async fn gateway_headers_and_credentials_never_reach_the_partner() {
    let certs = Certs::new();
    let partner = certs.partner(Some(ClientCa::A));
    let vault = Vault::new(&certs).await;
    let url = partner.url("/headers");
    vault
        .map(ACCOUNT, IDP, &url, &certs.client("headers"))
        .await;
    let gateway = vault.start_gateway(vault.settings());
    let caller = Caller::new(&gateway);
    let gateway_only = |request: RequestBuilder| {
        request
            .header("LP-custom-trace", "gateway-only")
            .header(ACCOUNT_HEADER, ACCOUNT)
            .header(SERVICE_HEADER, IDP)
            .header("X-Partner-Visible", "kept")
    };

    // The forward call carries the caller's token for the gateway in `Authorization`.
    let overridden = caller
        .mapped(ACCOUNT, IDP, &url)
        .header("Proxy-Authorization", "Basic Z2F0ZXdheTpzZWNyZXQ=")
        .header("LP-authorization-override", "Bearer x");
    let overridden = seen(gateway_only(overridden)).await;
    let plain = caller
        .mapped(ACCOUNT, IDP, &url)
        .header("Proxy-Authorization", "Basic Z2F0ZXdheTpzZWNyZXQ=");
    let plain = seen(gateway_only(plain)).await;
    // In HTTP proxy mode the token is in `Proxy-Authorization`; `Authorization` is the
    // partner's.
    let proxied = caller
        .proxied(Method::GET, ACCOUNT, IDP, &url)
        .header("Authorization", "Bearer for-the-partner");
    let proxied = seen(gateway_only(proxied)).await;

    for (way, answer) in [
        ("forward with override", &overridden),
        ("forward", &plain),
        ("proxy", &proxied),
    ] {
        let leaked: Vec<(&String, &String)> = answer
            .headers
            .iter()
            .filter(|(name, value)| {
                name.starts_with("lp-")
                    || name.starts_with("x-mtls-")
                    || name.as_str() == "proxy-authorization"
                    || value.contains(GATEWAY_TOKEN)
            })
            .collect();
        assert!(leaked.is_empty(), "{way}: {leaked:?} reached the partner");
        assert_eq!(answer.headers["x-partner-visible"], "kept", "{way}");
        assert_eq!(answer.sni.as_deref(), Some("localhost"), "{way}");
    }
    let authorization = |answer: &SeenRequest| answer.headers.get("authorization").cloned();
    assert_eq!(authorization(&overridden).as_deref(), Some("Bearer x"));
    assert_eq!(
        authorization(&plain),
        None,
        "the caller's gateway token leaked"
    );
    assert_eq!(
        authorization(&proxied).as_deref(),
        Some("Bearer for-the-partner")
    );
}

// ------------------------------------------------------------------------------------------
// HTTP version towards the partner.
// ------------------------------------------------------------------------------------------

/// The HTTP version and ALPN protocol the partner saw with `upstream.http2` set to `http2`.
async fn partner_http_version(http2: bool) -> (String, Option<String>) {
    let certs = Certs::new();
    let partner = certs.partner(Some(ClientCa::A));
    let vault = Vault::new(&certs).await;
    let url = partner.url("/version");
    vault
        .map(ACCOUNT, IDP, &url, &certs.client("version"))
        .await;
    let mut settings = vault.settings();
    settings.http2 = http2;
    let gateway = vault.start_gateway(settings);

    let answer = seen(Caller::new(&gateway).mapped(ACCOUNT, IDP, &url)).await;

    (answer.http_version, answer.alpn)
}

#[tokio::test]
async fn speaks_http2_to_the_partner_when_enabled() {
    let (version, alpn) = partner_http_version(true).await;

    assert_eq!(
        (version.as_str(), alpn.as_deref()),
        ("HTTP/2.0", Some("h2"))
    );
}

#[tokio::test]
async fn speaks_http1_1_to_the_partner_when_http2_is_off() {
    let (version, alpn) = partner_http_version(false).await;

    assert_eq!(version, "HTTP/1.1");
    assert_ne!(alpn.as_deref(), Some("h2"));
}

// ------------------------------------------------------------------------------------------
// Static mappings with the local store.
// ------------------------------------------------------------------------------------------

/// Lays `cert` out as Kubernetes mounts a `kubernetes.io/tls` secret: `tls.crt` and `tls.key`
/// are symlinks through `..data` into a timestamped directory. Returns the two paths.
fn mount_tls_secret(dir: &Path, cert: &ClientCert) -> (PathBuf, PathBuf) {
    let version = "..2024_05_01_12_00_00.000000001";
    std::fs::create_dir_all(dir.join(version)).expect("create the secret's data directory");
    std::fs::copy(&cert.cert_pem_path, dir.join(version).join("tls.crt")).expect("copy tls.crt");
    std::fs::copy(&cert.key_pem_path, dir.join(version).join("tls.key")).expect("copy tls.key");
    for (target, name) in [
        (version, "..data"),
        ("..data/tls.crt", "tls.crt"),
        ("..data/tls.key", "tls.key"),
    ] {
        std::os::unix::fs::symlink(target, dir.join(name)).expect("link into the secret");
    }
    (dir.join("tls.crt"), dir.join("tls.key"))
}

#[tokio::test]
async fn static_mappings_load_p12_and_pem_files_and_skip_one_whose_file_is_missing() {
    let certs = Certs::new();
    let partner = certs.partner(Some(ClientCa::A));
    let (from_p12, from_pem) = (certs.client("from-p12"), certs.client("from-pem"));
    let secret = tempfile::tempdir().expect("a directory for the mounted secret");
    let (cert_file, key_file) = mount_tls_secret(secret.path(), &from_pem);
    let missing = secret.path().join("not-mounted.p12");
    let (p12_url, pem_url) = (partner.url("/p12"), partner.url("/pem"));
    let missing_url = partner.url("/missing");
    let ca_file = certs.server_ca_file();
    let mut settings = Settings::new(StoreSection::Local);
    settings.mappings = vec![
        FileMapping::p12(&p12_url, &from_p12, ca_file),
        FileMapping::pem(&pem_url, &cert_file, &key_file, ca_file),
        FileMapping::p12_files(&missing_url, &missing, &from_p12.password_path, ca_file),
    ];
    let gateway = Gateway::start(|listen, dir| settings.render(listen, dir));
    let caller = Caller::new(&gateway);

    let p12 = presented(caller.mapped(ACCOUNT, IDP, &p12_url)).await;
    let pem = presented(caller.mapped(ACCOUNT, IDP, &pem_url)).await;
    let (missing_status, _, missing_body) =
        refusal(caller.mapped(ACCOUNT, IDP, &missing_url)).await;
    let skipped = gateway.wait_for_log("mapping skipped", Duration::from_secs(5));

    assert_eq!(p12, Ok(from_p12.fingerprint));
    assert_eq!(pem, Ok(from_pem.fingerprint));
    assert_eq!(missing_status, StatusCode::BAD_REQUEST, "{missing_body}");
    assert_eq!(missing_body["code"], "certificate_not_found");
    for needle in ["config:2", "file_unreadable", "not-mounted.p12"] {
        assert!(skipped.contains(needle), "{needle} missing from: {skipped}");
    }
}

#[tokio::test]
async fn prefix_mappings_cover_paths_below_them_exact_wins_then_the_longest_prefix() {
    let certs = Certs::new();
    let partner = certs.partner(Some(ClientCa::A));
    let api = certs.client("prefix-api");
    let api_v1 = certs.client("prefix-api-v1");
    let exact = certs.client("exact-api-v1-pay");
    let ca_file = certs.server_ca_file();
    let mut settings = Settings::new(StoreSection::Local);
    settings.mappings = vec![
        FileMapping::p12(&partner.url("/api"), &api, ca_file).prefix(),
        FileMapping::p12(&partner.url("/api/v1/"), &api_v1, ca_file).prefix(),
        FileMapping::p12(&partner.url("/api/v1/pay"), &exact, ca_file),
    ];
    let gateway = Gateway::start(|listen, dir| settings.render(listen, dir));
    let caller = Caller::new(&gateway);
    let cases = [
        ("/api", Some(&api)),
        ("/api/", Some(&api)),
        ("/api/orders?page=2", Some(&api)),
        ("/api/v1", Some(&api_v1)),
        ("/api/v1/x", Some(&api_v1)),
        ("/api/v1/pay", Some(&exact)),
        ("/api/v1/pay?x=1", Some(&api_v1)),
        ("/api/v1/pay/refund", Some(&api_v1)),
        ("/apix", None),
        ("/api-v2/x", None),
        ("/", None),
    ];

    let mut outcomes = Vec::new();
    for (path, _) in cases {
        outcomes.push(presented(caller.mapped(ACCOUNT, IDP, &partner.url(path))).await);
    }

    for ((path, expected), outcome) in cases.iter().zip(outcomes) {
        // Unmapped: the stop header makes the gateway answer 400 itself.
        let expected = expected
            .map(|cert| cert.fingerprint.clone())
            .ok_or(StatusCode::BAD_REQUEST);
        assert_eq!(outcome, expected, "{path}");
    }
}

// ------------------------------------------------------------------------------------------
// The access log.
// ------------------------------------------------------------------------------------------

/// The value of `name=` in a text log line, without the quotes string values get.
fn log_field<'l>(line: &'l str, name: &str) -> Option<&'l str> {
    let start = line.find(&format!(" {name}="))? + name.len() + 2;
    let rest = &line[start..];
    match rest.strip_prefix('"') {
        Some(quoted) => quoted.split('"').next(),
        None => rest.split(' ').next(),
    }
}

#[tokio::test]
async fn the_access_log_names_account_service_mapping_and_certificate_but_no_secret() {
    let certs = Certs::new();
    let partner = certs.partner(Some(ClientCa::A));
    let vault = Vault::new(&certs).await;
    let (stored_url, file_url) = (partner.url("/logged"), partner.url("/logged-from-file"));
    let (stored, from_file) = (certs.client("logged"), certs.client("logged-from-file"));
    let mapping = vault.map(ACCOUNT, WEBHOOKS, &stored_url, &stored).await;
    let mut settings = vault.settings();
    settings.mappings =
        vec![FileMapping::p12(&file_url, &from_file, certs.server_ca_file()).service(WEBHOOKS)];
    // Debug logging everywhere but the Vault client, whose own debug lines are off by default.
    let gateway = Gateway::builder()
        .env("VAULT_TOKEN", &vault.token)
        .env("RUST_LOG", "debug,vaultrs=off,rustify=off")
        .start(|listen, dir| settings.render(listen, dir));
    let caller = Caller::new(&gateway);

    seen(caller.mapped(ACCOUNT, WEBHOOKS, &stored_url)).await;
    let stored_line = gateway.wait_for_log("mtls_gateway::access", Duration::from_secs(5));
    let mark = gateway.log_mark();
    seen(caller.mapped(ACCOUNT, WEBHOOKS, &file_url)).await;
    let file_line =
        gateway.wait_for_log_since(mark, "mtls_gateway::access", Duration::from_secs(5));

    let store_label = format!("store:{}", mapping.id);
    for (line, label, cert) in [
        (&stored_line, store_label.as_str(), &stored),
        (&file_line, "config:0", &from_file),
    ] {
        assert_eq!(log_field(line, "account"), Some(ACCOUNT), "{line}");
        assert_eq!(log_field(line, "service"), Some(WEBHOOKS), "{line}");
        assert_eq!(log_field(line, "mapping"), Some(label), "{line}");
        assert_eq!(
            log_field(line, "certificate"),
            Some(&cert.fingerprint[..16]),
            "{line}"
        );
    }
    let logs = gateway.logs();
    for secret in [stored.password.as_str(), &from_file.password, GATEWAY_TOKEN] {
        let leaks: Vec<&String> = logs.iter().filter(|l| l.contains(secret)).collect();
        assert!(leaks.is_empty(), "a secret was logged: {leaks:?}");
    }
}

// ------------------------------------------------------------------------------------------
// The store going away.
// ------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn a_vault_outage_keeps_the_last_snapshot_serving_and_readyz_reports_degraded() {
    let certs = Certs::new();
    let bao = OpenBao::start();
    let vault = Vault::on(&certs, &bao).await;
    let partner = certs.partner(Some(ClientCa::A));
    let client = certs.client("outage");
    let url = partner.url("/during-outage");
    vault.map("acme", "IDP", &url, &client).await;
    let settings = vault.settings();
    let readyz = format!("http://127.0.0.1:{}/readyz", settings.admin_port);
    let gateway = vault.start_gateway(settings);
    let caller = Caller::new(&gateway);
    let before = seen(caller.mapped("acme", "IDP", &url)).await;

    // The server stops: every poll from now on fails.
    let mark = gateway.log_mark();
    drop(bao);
    gateway.wait_for_log_since(mark, "store revision poll failed", Duration::from_secs(15));
    let during = seen(caller.mapped("acme", "IDP", &url)).await;
    let ready = reqwest::get(&readyz)
        .await
        .expect("the admin listener answers");
    let status = ready.status();
    let body: Value = ready.json().await.expect("JSON");

    assert_eq!(
        before.fingerprint.as_deref(),
        Some(client.fingerprint.as_str())
    );
    assert_eq!(
        during.fingerprint.as_deref(),
        Some(client.fingerprint.as_str())
    );
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["status"], "degraded", "{body}");
    assert!(
        body["last_error"].as_str().is_some_and(|e| !e.is_empty()),
        "{body}"
    );
}

// ------------------------------------------------------------------------------------------
// Binary upgrade.
// ------------------------------------------------------------------------------------------

/// Kills the upgraded process when the test ends, however it ends.
struct Upgraded(std::process::Child);

impl Drop for Upgraded {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn run_upgrade_takes_the_listener_over_without_a_failed_request() {
    let certs = Certs::new();
    let vault = Vault::new(&certs).await;
    let partner = certs.partner(Some(ClientCa::A));
    let client = certs.client("upgrade");
    let url = partner.url("/upgrade");
    vault.map("acme", "IDP", &url, &client).await;
    let mut old = vault.start_gateway(vault.settings());
    let caller = Caller::new(&old);
    seen(caller.mapped("acme", "IDP", &url)).await;

    // A request every 50 ms for 5 s, across the whole hand-over.
    let calls = {
        let requests: Vec<RequestBuilder> = (0..100)
            .map(|_| caller.mapped("acme", "IDP", &url))
            .collect();
        tokio::spawn(async move {
            let mut statuses = Vec::new();
            for request in requests {
                let status = request
                    .send()
                    .await
                    .map(|r| r.status().as_u16())
                    .unwrap_or(0);
                statuses.push(status);
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            statuses
        })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    let new = std::process::Command::new(env!("CARGO_BIN_EXE_mtls-gateway"))
        .args(["run", "--upgrade", "--config"])
        .arg(old.config_path())
        .env("VAULT_TOKEN", &vault.token)
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("the new binary starts");
    let new = Upgraded(new);
    // The new process waits on the upgrade socket; then the old one hands over and drains.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let quit = std::process::Command::new("kill")
        .args(["-QUIT", &old.pid().to_string()])
        .status()
        .expect("kill runs");
    let old_exit = old.wait_exit(Duration::from_secs(15));
    let statuses = calls.await.expect("the calls finish");
    // Same address, now served by the new process alone.
    let after = seen(Caller::new(&old).mapped("acme", "IDP", &url)).await;

    assert!(quit.success());
    assert!(
        old_exit.is_some_and(|s| s.success()),
        "the old process drains and exits"
    );
    let failed: Vec<&u16> = statuses.iter().filter(|s| **s != 200).collect();
    assert!(
        failed.is_empty(),
        "{} of {} calls failed: {failed:?}",
        failed.len(),
        statuses.len()
    );
    assert_eq!(
        after.fingerprint.as_deref(),
        Some(client.fingerprint.as_str())
    );
    drop(new);
}
