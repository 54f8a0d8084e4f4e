//! The native `/v1/` admin API through the running gateway: the real binary on a real OpenBao,
//! real P12 files made with openssl, a real mTLS partner, and a real HTTP client.
//!
//! Every test starts its own gateway on a fresh Vault prefix. The admin listener binds port 0;
//! its address is read from the gateway's log. The store is polled only every 30 seconds, so a
//! change that forwarding uses at once came through the write path, not the poll.

mod support;

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use base64::Engine as _;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use support::admin::{admin_addr, sha256_hex, Answer, Api, TestVault, FULL_TOKEN};
use support::gateway::Gateway;
use support::partner::{Partner, PartnerOptions, SeenRequest};
use support::pki::{ClientCa, ClientCert, Pki};

const ACCOUNT: &str = "le1606809";
const IDP: &str = "IDP";
const WEBHOOKS: &str = "WEBHOOKS";

/// How long a change written through `/v1` may take to reach forwarding.
const PROPAGATION_DEADLINE: Duration = Duration::from_secs(1);

/// Every native path the OpenAPI document must list.
const NATIVE_PATHS: [&str; 7] = [
    "/v1/p12/test",
    "/v1/accounts/{account}/certificates",
    "/v1/accounts/{account}/certificates/{id}",
    "/v1/accounts/{account}/mappings",
    "/v1/accounts/{account}/mappings/{id}",
    "/v1/accounts/{account}/explain",
    "/v1/openapi.json",
];

// ------------------------------------------------------------------------------------------
// The world of one test.
// ------------------------------------------------------------------------------------------

/// A PKI in a directory of its own.
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

    fn client(&self, ca: ClientCa, cn: &str) -> ClientCert {
        self.pki.client(ca, cn, None)
    }

    fn server_ca(&self) -> String {
        String::from_utf8(self.pki.server_ca_pem()).expect("a PEM CA is text")
    }

    /// A partner with the trusted `localhost` certificate demanding a certificate from `ca`.
    fn partner(&self, ca: ClientCa) -> Partner {
        Partner::start(PartnerOptions {
            server: self.pki.server_cert(),
            client_ca: Some(self.pki.client_ca_pem(ca)),
        })
    }
}

/// A gateway on a fresh Vault prefix, the admin API's address, and a handle on the same store.
struct World {
    gateway: Gateway,
    admin: Admin,
    vault: TestVault,
}

impl World {
    async fn start() -> World {
        let vault = TestVault::new("admin-native").await;
        let gateway = Gateway::builder()
            .env("VAULT_TOKEN", &vault.token)
            .start(|listen, runtime_dir| render_config(&vault, listen, runtime_dir));
        let admin = Admin {
            api: Api::new(format!("http://{}", admin_addr(&gateway))),
        };
        World {
            gateway,
            admin,
            vault,
        }
    }

    /// The store's revision: it moves on every write, so an unchanged revision proves that a
    /// refused request wrote nothing.
    async fn revision(&self) -> u64 {
        self.vault.contents(ACCOUNT).await.revision
    }

    /// The forward call on the proxy listener, refusing a fall-back to plain TLS.
    async fn forward(&self, service: &str, url: &str) -> reqwest::Response {
        let path = format!("/mtls/account/{ACCOUNT}");
        Api::new(self.gateway.base_url())
            .request(Method::GET, &path)
            .header("LP-forward-url", url)
            .header("LP-service-name", service)
            .header("LP-stop-if-certificate-not-found", "true")
            .send()
            .await
            .expect("the gateway answers")
    }
}

/// The configuration of `support::admin`, with one difference: the store is polled only every
/// 30 seconds, so that a change forwarding uses at once can only have come through the write.
fn render_config(vault: &TestVault, listen: SocketAddr, runtime_dir: &Path) -> String {
    let runtime_dir = runtime_dir.to_str().expect("test paths are UTF-8");
    // Throttling is off: these tests send bursts from one address on purpose.
    format!(
        "store:\n  kind: vault\n  address: {address}\n  prefix: {prefix}\n\
         auth:\n  tokens:\n    - id: t\n      sha256: {digest}\n      accounts: [\"*\"]\n      \
         scopes: [read, write, forward]\n\
         admin:\n  listen: 127.0.0.1:0\n  throttle:\n    per_second: 0\n\
         lifecycle:\n  grace_period_seconds: 1\n  shutdown_timeout_seconds: 1\n  \
         runtime_dir: {runtime_dir}\n  threads: 1\n\
         refresh:\n  poll_seconds: 30\n\
         proxy:\n  listen: {listen}\n  throttle:\n    per_second: 0\n\
         upstream:\n  connect_timeout_ms: 2000\n  handshake_timeout_ms: 3000\n  \
         read_timeout_ms: 10000\n",
        address = json!(vault.address),
        prefix = json!(vault.prefix),
        runtime_dir = json!(runtime_dir),
        digest = sha256_hex(FULL_TOKEN.as_bytes()),
    )
}

/// JSON calls of the native API, with the full token.
struct Admin {
    api: Api,
}

/// An answer: the status, the body as JSON (`Null` when empty), and the raw text.
#[derive(Debug)]
struct Reply {
    status: StatusCode,
    body: Value,
    text: String,
}

fn reply(answer: Answer) -> Reply {
    let body = if answer.text.is_empty() {
        Value::Null
    } else {
        answer.json()
    };
    Reply {
        status: answer.status,
        body,
        text: answer.text,
    }
}

impl Admin {
    async fn get(&self, path: &str) -> Reply {
        reply(self.api.get(path).await)
    }

    async fn post(&self, path: &str, body: &Value) -> Reply {
        reply(self.api.json(Method::POST, path, body).await)
    }

    async fn post_raw(&self, path: &str, body: &str) -> Reply {
        let body = body.as_bytes().to_vec();
        reply(
            self.api
                .raw(Method::POST, path, "application/json", body)
                .await,
        )
    }

    async fn put(&self, path: &str, body: &Value) -> Reply {
        reply(self.api.json(Method::PUT, path, body).await)
    }

    async fn delete(&self, path: &str) -> Reply {
        reply(self.api.delete(path).await)
    }

    /// Stores `cert` under `name`; panics unless the API answers 201.
    async fn add_certificate(&self, name: &str, cert: &ClientCert) -> Value {
        let created = self
            .post(&certificates_path(), &certificate_body(name, cert))
            .await;
        assert_eq!(created.status, StatusCode::CREATED, "{}", created.text);
        created.body
    }

    /// Stores a mapping; panics unless the API answers 201.
    async fn add_mapping(&self, body: &Value) -> Value {
        let created = self.post(&mappings_path(), body).await;
        assert_eq!(created.status, StatusCode::CREATED, "{}", created.text);
        created.body
    }
}

fn certificates_path() -> String {
    format!("/v1/accounts/{ACCOUNT}/certificates")
}

fn mappings_path() -> String {
    format!("/v1/accounts/{ACCOUNT}/mappings")
}

fn base64_of(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn certificate_body(name: &str, cert: &ClientCert) -> Value {
    json!({ "name": name, "p12": base64_of(&cert.der), "password": cert.password })
}

fn mapping_body(name: &str, service: &str, url: &str, certificate_id: &Value, ca: &str) -> Value {
    json!({
        "name": name,
        "service": service,
        "url": url,
        "certificate_id": certificate_id,
        "ca_pem": ca,
    })
}

/// Asserts that `text` holds neither the password nor the P12 (as base64) of `cert`.
fn assert_no_secret(text: &str, cert: &ClientCert, what: &str) {
    assert!(!text.contains(&cert.password), "{what} holds the password");
    assert!(
        !text.contains(&base64_of(&cert.der)),
        "{what} holds the P12"
    );
    let some_of_the_file = &base64_of(&cert.der)[40..80];
    assert!(
        !text.contains(some_of_the_file),
        "{what} holds part of the P12"
    );
}

fn codes(findings: &Value) -> Vec<&str> {
    findings
        .as_array()
        .expect("a list of findings")
        .iter()
        .map(|f| f["code"].as_str().expect("a code"))
        .collect()
}

// ------------------------------------------------------------------------------------------
// The P12 tester.
// ------------------------------------------------------------------------------------------

#[tokio::test]
async fn p12_test_reports_a_usable_file_and_the_codes_of_an_unusable_one() {
    let certs = Certs::new();
    let cert = certs.client(ClientCa::A, "tester-usable");
    let world = World::start().await;
    let revision = world.revision().await;

    let usable = world
        .admin
        .post(
            "/v1/p12/test",
            &json!({ "p12": base64_of(&cert.der), "password": cert.password }),
        )
        .await;
    let wrong_password = world
        .admin
        .post(
            "/v1/p12/test",
            &json!({ "p12": base64_of(&cert.der), "password": "nope" }),
        )
        .await;
    let not_p12 = world
        .admin
        .post(
            "/v1/p12/test",
            &json!({ "p12": base64_of(b"hello"), "password": "x" }),
        )
        .await;

    assert_eq!(usable.status, StatusCode::OK, "{}", usable.text);
    assert_eq!(usable.body["verdict"], "usable");
    assert_eq!(usable.body["facts"]["subject"], "CN=tester-usable");
    assert_eq!(
        usable.body["facts"]["fingerprint"],
        cert.fingerprint.as_str()
    );
    assert_eq!(usable.body["probe"], Value::Null);
    assert_no_secret(&usable.text, &cert, "the report");
    assert_eq!(wrong_password.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(wrong_password.body["verdict"], "unusable");
    assert_eq!(codes(&wrong_password.body["problems"]), ["wrong_password"]);
    assert_eq!(not_p12.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(codes(&not_p12.body["problems"]), ["not_pkcs12"]);
    assert_eq!(
        world.revision().await,
        revision,
        "the tester stored something"
    );
}

#[tokio::test]
async fn p12_test_with_a_target_url_makes_a_real_mtls_request_and_names_failures() {
    let certs = Certs::new();
    let cert = certs.client(ClientCa::A, "tester-probe");
    let accepting = certs.partner(ClientCa::A);
    let demanding_other_ca = certs.partner(ClientCa::B);
    let world = World::start().await;
    let revision = world.revision().await;
    let test = |url: String, ca: Option<String>| {
        json!({
            "p12": base64_of(&cert.der),
            "password": cert.password,
            "target_url": url,
            "ca_pem": ca,
        })
    };

    let served = world
        .admin
        .post(
            "/v1/p12/test",
            &test(accepting.url("/hello?x=1"), Some(certs.server_ca())),
        )
        .await;
    let refused = world
        .admin
        .post(
            "/v1/p12/test",
            &test(demanding_other_ca.url("/"), Some(certs.server_ca())),
        )
        .await;
    let untrusted = world
        .admin
        .post("/v1/p12/test", &test(accepting.url("/"), None))
        .await;

    assert_eq!(served.status, StatusCode::OK, "{}", served.text);
    assert_eq!(served.body["probe"]["succeeded"], true, "{}", served.text);
    assert_eq!(served.body["probe"]["status"], 200);
    assert_eq!(served.body["probe"]["http_version"], "HTTP/1.1");
    let seen: Vec<SeenRequest> = accepting.seen();
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert_eq!(seen[0].path, "/hello?x=1");
    assert_eq!(
        seen[0].fingerprint.as_deref(),
        Some(cert.fingerprint.as_str())
    );
    assert_eq!(
        refused.status,
        StatusCode::OK,
        "a probe failure is reported, not refused"
    );
    assert_eq!(refused.body["probe"]["succeeded"], false);
    assert_eq!(
        refused.body["probe"]["error"]["code"], "client_certificate_rejected",
        "{}",
        refused.text
    );
    assert_eq!(
        untrusted.body["probe"]["error"]["code"], "partner_certificate_untrusted",
        "{}",
        untrusted.text
    );
    assert_eq!(
        world.revision().await,
        revision,
        "the tester stored something"
    );
}

// ------------------------------------------------------------------------------------------
// Certificates.
// ------------------------------------------------------------------------------------------

#[tokio::test]
async fn certificates_are_created_read_updated_and_deleted_without_exposing_the_file() {
    let certs = Certs::new();
    let (first, second) = (
        certs.client(ClientCa::A, "crud-first"),
        certs.client(ClientCa::A, "crud-second"),
    );
    let world = World::start().await;

    let created = world.admin.add_certificate("partner-prod", &first).await;
    let id = created["id"].as_u64().expect("a numeric id");
    let path = format!("{}/{id}", certificates_path());
    let listed = world.admin.get(&certificates_path()).await;
    let read = world.admin.get(&path).await;
    let renamed = world
        .admin
        .put(&path, &json!({ "name": "partner-live" }))
        .await;
    let replaced = world
        .admin
        .put(
            &path,
            &json!({ "p12": base64_of(&second.der), "password": second.password }),
        )
        .await;
    let deleted = world.admin.delete(&path).await;
    let gone = world.admin.get(&path).await;

    let expected_keys = [
        "account",
        "fingerprint",
        "id",
        "issuer",
        "name",
        "not_after",
        "not_before",
        "serial",
        "status",
        "subject",
        "updated_at",
    ];
    let mut keys: Vec<&str> = created
        .as_object()
        .expect("an object")
        .keys()
        .map(String::as_str)
        .collect();
    keys.sort_unstable();
    assert_eq!(keys, expected_keys);
    assert_eq!(created["name"], "partner-prod");
    assert_eq!(created["fingerprint"], first.fingerprint.as_str());
    assert_eq!(created["subject"], "CN=crud-first");
    assert_eq!(created["issuer"], "CN=Client CA A");
    let serial = created["serial"].as_str().unwrap_or("").replace(':', "");
    assert_eq!(serial.trim_start_matches('0'), first.serial_hex);
    assert_eq!(created["status"], "available");
    assert_eq!(listed.status, StatusCode::OK);
    assert_eq!(listed.body["certificates"], json!([created.clone()]));
    assert_eq!(read.body, created);
    assert_eq!(renamed.status, StatusCode::OK, "{}", renamed.text);
    assert_eq!(renamed.body["name"], "partner-live");
    assert_eq!(renamed.body["fingerprint"], first.fingerprint.as_str());
    assert_eq!(replaced.status, StatusCode::OK, "{}", replaced.text);
    assert_eq!(replaced.body["name"], "partner-live");
    assert_eq!(replaced.body["fingerprint"], second.fingerprint.as_str());
    assert_eq!(deleted.status, StatusCode::NO_CONTENT);
    assert_eq!(gone.status, StatusCode::NOT_FOUND);
    assert_eq!(gone.body["code"], "not_found");
    for (what, text) in [
        ("the create answer", created.to_string()),
        ("the list", listed.text),
        ("the read", read.text),
        ("the update answer", replaced.text),
    ] {
        assert_no_secret(text.as_str(), &first, what);
        assert_no_secret(text.as_str(), &second, what);
    }
}

#[tokio::test]
async fn certificate_writes_refuse_bad_input_and_leave_the_store_unchanged() {
    let certs = Certs::new();
    let cert = certs.client(ClientCa::A, "refusals");
    let world = World::start().await;
    let kept = world.admin.add_certificate("taken", &cert).await;
    let revision = world.revision().await;
    let path = certificates_path();
    let body = certificate_body("other", &cert);
    let mut wrong_password = body.clone();
    wrong_password["password"] = json!("not-the-password");
    let mut unknown_field = body.clone();
    unknown_field["colour"] = json!("blue");
    let mut bad_base64 = body.clone();
    bad_base64["p12"] = json!("%%% not base64 %%%");

    let refusals = [
        ("unusable", world.admin.post(&path, &wrong_password).await),
        (
            "duplicate",
            world
                .admin
                .post(&path, &certificate_body("taken", &cert))
                .await,
        ),
        ("bad json", world.admin.post_raw(&path, "{\"name\": ").await),
        (
            "unknown field",
            world.admin.post(&path, &unknown_field).await,
        ),
        ("bad base64", world.admin.post(&path, &bad_base64).await),
        (
            "no name",
            world
                .admin
                .post(&path, &json!({ "p12": "", "password": "" }))
                .await,
        ),
    ];

    let outcomes: Vec<(&str, u16, &str)> = refusals
        .iter()
        .map(|(what, a)| {
            (
                *what,
                a.status.as_u16(),
                a.body["code"].as_str().unwrap_or(""),
            )
        })
        .collect();
    assert_eq!(
        outcomes,
        [
            ("unusable", 422, "unusable_p12"),
            ("duplicate", 409, "conflict"),
            ("bad json", 400, "invalid_json"),
            ("unknown field", 400, "unknown_field"),
            ("bad base64", 400, "invalid_base64"),
            ("no name", 400, "invalid_field"),
        ]
    );
    let unusable = &refusals[0].1.body;
    assert_eq!(codes(&unusable["detail"]["problems"]), ["wrong_password"]);
    for (what, answer) in &refusals {
        let message = answer.body["message"].as_str().unwrap_or("");
        assert!(message.len() > 10, "{what}: no sentence in {}", answer.text);
        assert_no_secret(&answer.text, &cert, what);
    }
    assert_eq!(
        world.revision().await,
        revision,
        "a refused write changed the store"
    );
    let listed = world.admin.get(&path).await;
    assert_eq!(listed.body["certificates"], json!([kept]));
}

// ------------------------------------------------------------------------------------------
// Mappings.
// ------------------------------------------------------------------------------------------

#[tokio::test]
async fn mappings_are_created_read_replaced_and_deleted_and_bad_ones_refused() {
    let certs = Certs::new();
    let cert = certs.client(ClientCa::A, "mapping-crud");
    let ca = certs.server_ca();
    let world = World::start().await;
    let certificate = world.admin.add_certificate("mapped", &cert).await;
    let certificate_id = &certificate["id"];
    let url = "https://localhost:9/pay";
    let created = world
        .admin
        .add_mapping(&mapping_body("pay", IDP, url, certificate_id, &ca))
        .await;
    let path = format!("{}/{}", mappings_path(), created["id"]);
    let revision = world.revision().await;

    let same_key = mapping_body("pay-again", IDP, url, certificate_id, &ca);
    let unknown_certificate = mapping_body("ghost", IDP, "https://p.example/", &json!(999), &ca);
    let plain_http = mapping_body("plain", IDP, "http://p.example/", certificate_id, &ca);
    let bad_ca = mapping_body("bad-ca", IDP, "https://p.example/", certificate_id, "nope");
    let refusals = [
        (
            "same service and url",
            world.admin.post(&mappings_path(), &same_key).await,
        ),
        (
            "unknown certificate",
            world
                .admin
                .post(&mappings_path(), &unknown_certificate)
                .await,
        ),
        (
            "plain http",
            world.admin.post(&mappings_path(), &plain_http).await,
        ),
        ("bad ca", world.admin.post(&mappings_path(), &bad_ca).await),
        (
            "certificate in use",
            world
                .admin
                .delete(&format!("{}/{certificate_id}", certificates_path()))
                .await,
        ),
    ];
    let unchanged = world.revision().await;
    let read = world.admin.get(&path).await;
    let mut replacement = mapping_body("pay", WEBHOOKS, url, certificate_id, &ca);
    replacement["url_match"] = json!("prefix");
    replacement["enabled"] = json!(false);
    let replaced = world.admin.put(&path, &replacement).await;
    let listed = world.admin.get(&mappings_path()).await;
    let deleted = world.admin.delete(&path).await;
    let gone = world.admin.get(&path).await;

    assert_eq!(
        created,
        json!({
            "id": created["id"],
            "account": ACCOUNT,
            "name": "pay",
            "service": IDP,
            "url": url,
            "certificate_id": certificate_id,
            "enabled": true,
            "url_match": "exact",
            "ca_pem": ca,
            "verify_server": true,
        })
    );
    let outcomes: Vec<(&str, u16, &str)> = refusals
        .iter()
        .map(|(what, a)| {
            (
                *what,
                a.status.as_u16(),
                a.body["code"].as_str().unwrap_or(""),
            )
        })
        .collect();
    assert_eq!(
        outcomes,
        [
            ("same service and url", 409, "conflict"),
            ("unknown certificate", 422, "unknown_certificate"),
            ("plain http", 400, "invalid_url"),
            ("bad ca", 400, "invalid_ca_pem"),
            ("certificate in use", 409, "certificate_in_use"),
        ]
    );
    let in_use = &refusals[4].1;
    assert_eq!(
        in_use.body["detail"]["mappings"],
        json!([{ "id": created["id"], "name": "pay" }])
    );
    assert!(
        in_use.body["message"]
            .as_str()
            .unwrap_or("")
            .contains("(pay)"),
        "{}",
        in_use.text
    );
    assert_eq!(unchanged, revision, "a refused write changed the store");
    assert_eq!(read.body, created);
    assert_eq!(replaced.status, StatusCode::OK, "{}", replaced.text);
    assert_eq!(
        (
            &replaced.body["service"],
            &replaced.body["url_match"],
            &replaced.body["enabled"]
        ),
        (&json!(WEBHOOKS), &json!("prefix"), &json!(false))
    );
    assert_eq!(listed.body["mappings"], json!([replaced.body]));
    assert_eq!(deleted.status, StatusCode::NO_CONTENT);
    assert_eq!(gone.status, StatusCode::NOT_FOUND);
    let forced = world
        .admin
        .delete(&format!(
            "{}/{certificate_id}?force=true",
            certificates_path()
        ))
        .await;
    assert_eq!(forced.status, StatusCode::NO_CONTENT, "{}", forced.text);
}

#[tokio::test]
async fn a_mapping_written_through_v1_is_forwarded_within_one_second() {
    let certs = Certs::new();
    let cert = certs.client(ClientCa::A, "propagation");
    let partner = certs.partner(ClientCa::A);
    let world = World::start().await;
    let url = partner.url("/pay");
    let before = world.forward(IDP, &url).await.status();
    let certificate = world.admin.add_certificate("fast", &cert).await;

    let written = Instant::now();
    world
        .admin
        .add_mapping(&mapping_body(
            "fast",
            IDP,
            &url,
            &certificate["id"],
            &certs.server_ca(),
        ))
        .await;
    let mut answer = world.forward(IDP, &url).await;
    while answer.status() != StatusCode::OK && written.elapsed() < PROPAGATION_DEADLINE {
        tokio::time::sleep(Duration::from_millis(50)).await;
        answer = world.forward(IDP, &url).await;
    }

    assert_ne!(
        before,
        StatusCode::OK,
        "forwarded before the mapping existed"
    );
    assert_eq!(
        answer.status(),
        StatusCode::OK,
        "not forwarded within {PROPAGATION_DEADLINE:?}"
    );
    let seen: SeenRequest = answer.json().await.expect("the partner's answer");
    assert_eq!(seen.fingerprint.as_deref(), Some(cert.fingerprint.as_str()));
}

// ------------------------------------------------------------------------------------------
// Explain.
// ------------------------------------------------------------------------------------------

#[tokio::test]
async fn explain_tells_an_exact_match_a_prefix_match_and_no_match_apart() {
    let certs = Certs::new();
    let (exact_cert, prefix_cert) = (
        certs.client(ClientCa::A, "explain-exact"),
        certs.client(ClientCa::A, "explain-prefix"),
    );
    let ca = certs.server_ca();
    let world = World::start().await;
    let exact_id = world.admin.add_certificate("exact", &exact_cert).await["id"].clone();
    let prefix_id = world.admin.add_certificate("prefix", &prefix_cert).await["id"].clone();
    let exact_url = "https://p.example/api/pay?x=1";
    world
        .admin
        .add_mapping(&mapping_body("exact", IDP, exact_url, &exact_id, &ca))
        .await;
    let mut prefix = mapping_body("prefix", IDP, "https://p.example/api/", &prefix_id, &ca);
    prefix["url_match"] = json!("prefix");
    world.admin.add_mapping(&prefix).await;
    let path = format!("/v1/accounts/{ACCOUNT}/explain");
    let explain = |url: &str| json!({ "service": IDP, "url": url });

    let exact = world.admin.post(&path, &explain(exact_url)).await;
    let under_prefix = world
        .admin
        .post(&path, &explain("https://p.example/api/refund/7"))
        .await;
    let beside_prefix = world
        .admin
        .post(&path, &explain("https://p.example/apiary"))
        .await;
    let other_service = world
        .admin
        .post(&path, &json!({ "service": WEBHOOKS, "url": exact_url }))
        .await;

    assert_eq!(exact.status, StatusCode::OK, "{}", exact.text);
    assert_eq!(exact.body["matched"], true);
    assert_eq!(exact.body["mapping"]["kind"], "exact");
    assert_eq!(
        exact.body["mapping"]["reason"],
        "exact match on the whole URL, query included"
    );
    assert_eq!(exact.body["mapping"]["name"], "exact");
    assert_eq!(
        exact.body["certificate"]["fingerprint"],
        exact_cert.fingerprint.as_str()
    );
    assert_eq!(exact.body["certificate"]["subject"], "CN=explain-exact");
    assert!(
        exact.body["certificate"]["expires_in_days"]
            .as_i64()
            .unwrap_or(0)
            > 300
    );
    assert_eq!(exact.body["server_verification"]["verify_server"], true);
    assert_eq!(exact.body["server_verification"]["trust"], "bundle");
    assert_eq!(under_prefix.body["mapping"]["kind"], "prefix");
    assert_eq!(
        under_prefix.body["mapping"]["reason"],
        "longest prefix https://p.example/api at a path segment boundary"
    );
    assert_eq!(
        under_prefix.body["certificate"]["fingerprint"],
        prefix_cert.fingerprint.as_str()
    );
    assert_eq!(beside_prefix.body["matched"], false);
    let candidates = &beside_prefix.body["no_match"]["candidates"];
    let names: Vec<&str> = candidates
        .as_array()
        .expect("candidates")
        .iter()
        .map(|c| c["name"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(names.len(), 2, "{}", beside_prefix.text);
    assert!(
        names.contains(&"exact") && names.contains(&"prefix"),
        "{names:?}"
    );
    let prefix_candidate = candidates
        .as_array()
        .and_then(|all| all.iter().find(|c| c["name"] == "prefix"))
        .expect("the prefix mapping is a candidate");
    assert_eq!(
        prefix_candidate["why_not"],
        "the URL is not under the prefix https://p.example/api at a path segment boundary"
    );
    assert_eq!(other_service.body["matched"], false);
    assert_eq!(
        other_service.body["no_match"]["candidates"][0]["why_not"],
        format!("mapped for service {IDP}, not {WEBHOOKS}")
    );
    for (cert, answer) in [(&exact_cert, &exact), (&prefix_cert, &under_prefix)] {
        assert_no_secret(&answer.text, cert, "an explanation");
    }
}

#[tokio::test]
async fn explain_probe_reports_what_the_partner_asks_for_and_whether_ours_qualifies() {
    let certs = Certs::new();
    let (right, wrong) = (
        certs.client(ClientCa::A, "probe-right"),
        certs.client(ClientCa::B, "probe-wrong"),
    );
    let partner = certs.partner(ClientCa::A);
    let ca = certs.server_ca();
    let world = World::start().await;
    let right_id = world.admin.add_certificate("right", &right).await["id"].clone();
    let wrong_id = world.admin.add_certificate("wrong", &wrong).await["id"].clone();
    let (right_url, wrong_url) = (partner.url("/right"), partner.url("/wrong"));
    world
        .admin
        .add_mapping(&mapping_body("right", IDP, &right_url, &right_id, &ca))
        .await;
    world
        .admin
        .add_mapping(&mapping_body("wrong", IDP, &wrong_url, &wrong_id, &ca))
        .await;
    let path = format!("/v1/accounts/{ACCOUNT}/explain");
    let probe = |url: &str| json!({ "service": IDP, "url": url, "probe": true });

    let accepted = world.admin.post(&path, &probe(&right_url)).await;
    let refused = world.admin.post(&path, &probe(&wrong_url)).await;

    assert_eq!(accepted.status, StatusCode::OK, "{}", accepted.text);
    let handshake = &accepted.body["probe"]["handshake"];
    assert_eq!(
        accepted.body["probe"]["succeeded"], true,
        "{}",
        accepted.text
    );
    assert_eq!(handshake["client_certificate_requested"], true);
    assert_eq!(handshake["acceptable_ca_names"], json!(["CN=Client CA A"]));
    assert_eq!(handshake["ours_chains_to_acceptable"], true);
    assert_eq!(handshake["client_certificate_accepted"], true);
    assert_eq!(handshake["partner_chain"][0]["subject"], "CN=localhost");
    assert_eq!(
        handshake["partner_chain"][0]["issuer"],
        "CN=Partner Server CA"
    );
    let not_after = handshake["partner_not_after"].as_str().expect("an expiry");
    assert_eq!(handshake["partner_chain"][0]["not_after"], not_after);
    let expiry =
        time::OffsetDateTime::parse(not_after, &time::format_description::well_known::Rfc3339)
            .expect("RFC 3339");
    let days = (expiry - time::OffsetDateTime::now_utc()).whole_days();
    assert!(
        (360..=366).contains(&days),
        "the partner certificate expires in {days} days"
    );
    assert_eq!(
        partner.seen().len(),
        0,
        "a handshake-only probe sent a request"
    );
    let refused_handshake = &refused.body["probe"]["handshake"];
    assert_eq!(
        refused.body["probe"]["succeeded"], false,
        "{}",
        refused.text
    );
    assert_eq!(refused_handshake["client_certificate_requested"], true);
    assert_eq!(
        refused_handshake["acceptable_ca_names"],
        json!(["CN=Client CA A"])
    );
    assert_eq!(refused_handshake["ours_chains_to_acceptable"], false);
    assert_eq!(refused_handshake["client_certificate_accepted"], false);
    assert_eq!(
        refused.body["probe"]["error"]["code"],
        "client_certificate_rejected"
    );
}

// ------------------------------------------------------------------------------------------
// The document and authentication.
// ------------------------------------------------------------------------------------------

#[tokio::test]
async fn openapi_document_is_served_without_auth_and_lists_every_native_path() {
    let world = World::start().await;
    let anonymous = world.admin.api.with_token(None);

    let document = reply(anonymous.get("/v1/openapi.json").await);
    let unauthenticated = reply(anonymous.get(&certificates_path()).await);

    assert_eq!(document.status, StatusCode::OK, "{}", document.text);
    let version = document.body["openapi"]
        .as_str()
        .expect("an openapi version");
    assert!(version.starts_with("3."), "{version}");
    let paths = document.body["paths"].as_object().expect("paths");
    for path in NATIVE_PATHS {
        assert!(
            paths.contains_key(path),
            "{path} missing from {:?}",
            paths.keys()
        );
    }
    let certificate = &paths["/v1/accounts/{account}/certificates/{id}"];
    for method in ["get", "put", "delete"] {
        assert!(
            certificate.get(method).is_some(),
            "no {method} on a certificate"
        );
    }
    let schemas = document.body["components"]["schemas"]
        .as_object()
        .expect("schemas");
    for schema in [
        "CertificateView",
        "MappingBody",
        "HandshakeReport",
        "Explanation",
    ] {
        assert!(schemas.contains_key(schema), "no {schema} schema");
    }
    assert_eq!(
        unauthenticated.status,
        StatusCode::UNAUTHORIZED,
        "{}",
        unauthenticated.text
    );
}
