//! The admin API from a test's side: a Vault store of the test's own, a gateway configured for
//! it with Bearer tokens, the admin listener's address from the gateway's log, and a small
//! HTTP client for JSON and multipart calls.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use mtls_gateway::ids::AccountId;
use mtls_gateway::store::{
    self, CertificateRecord, Mapping, Store, StoreConfig, VaultAuth, VaultConfig,
};
use reqwest::header::HeaderMap;
use reqwest::{Method, RequestBuilder, StatusCode};
use serde_json::Value;
use sha2::{Digest, Sha256};

use super::certs::random_hex;
use super::gateway::Gateway;
use super::openbao::{self, OpenBao};

/// Read, write and forward on every account.
pub const FULL_TOKEN: &str = "admin-tests-full-token";
/// Read only, on every account.
pub const READER_TOKEN: &str = "admin-tests-reader-token";
/// Everything, but only on [`NARROW_ACCOUNT`].
pub const NARROW_TOKEN: &str = "admin-tests-narrow-token";
pub const NARROW_ACCOUNT: &str = "narrow-account";

/// How long the admin listener may take to log its address once the proxy listens.
const ADMIN_START: Duration = Duration::from_secs(10);

/// Longest any admin call of a test may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// A fresh prefix on the shared OpenBao, a token holding only the documented policy for it,
/// and the test's own handle on that store.
pub struct TestVault {
    pub address: String,
    pub prefix: String,
    pub token: String,
    pub store: Arc<dyn Store>,
    /// Holds the token file the test's store reads.
    _dir: tempfile::TempDir,
}

/// Everything the store holds for one account, and the store revision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreContents {
    pub certificates: Vec<CertificateRecord>,
    pub mappings: Vec<Mapping>,
    pub revision: u64,
}

impl TestVault {
    pub async fn new(label: &str) -> TestVault {
        TestVault::on(OpenBao::shared(), label).await
    }

    /// The same on a server of the test's own, which the test may stop.
    pub async fn on(bao: &OpenBao, label: &str) -> TestVault {
        let prefix = format!("{label}-{}", random_hex(6));
        let token = bao
            .token_with_policy(&prefix, &openbao::store_policy("secret", &prefix))
            .await;
        let dir = tempfile::tempdir().expect("a directory for the token");
        let token_file = dir.path().join("token");
        std::fs::write(&token_file, &token).expect("write the token file");
        let mut config = VaultConfig::new(&bao.address);
        config.prefix.clone_from(&prefix);
        config.auth = VaultAuth::Token {
            token_file: Some(token_file),
            token_env: None,
        };
        let store = store::open(&StoreConfig::Vault(config))
            .await
            .expect("open the store");
        TestVault {
            address: bao.address.clone(),
            prefix,
            token,
            store,
            _dir: dir,
        }
    }

    /// Certificates and mappings of `account`, sorted by id, and the revision.
    pub async fn contents(&self, account: &str) -> StoreContents {
        let account = AccountId::new(account).expect("a valid account id");
        let mut certificates = self
            .store
            .certificates(&account)
            .await
            .expect("list certificates");
        certificates.sort_by_key(|record| record.id);
        let mut mappings = self.store.mappings(&account).await.expect("list mappings");
        mappings.sort_by_key(|mapping| mapping.id);
        let revision = self.store.revision().await.expect("read the revision");
        StoreContents {
            certificates,
            mappings,
            revision,
        }
    }

    /// Starts a gateway on this store with the test tokens. `trusted_ca` becomes the process's
    /// system trust store (`SSL_CERT_FILE`), which compatible mappings verify partners with.
    pub fn start_gateway(&self, trusted_ca: &Path) -> Gateway {
        let trusted_ca = trusted_ca
            .to_str()
            .expect("test paths are UTF-8")
            .to_owned();
        Gateway::builder()
            .env("VAULT_TOKEN", &self.token)
            .env("SSL_CERT_FILE", &trusted_ca)
            .start(|listen, runtime_dir| self.config(listen, runtime_dir))
    }

    /// Bearer tokens only, check mapping by Bearer too (OAuth1 is tested on its own), the
    /// admin listener on port 0, and no throttling: tests send bursts from one address.
    fn config(&self, listen: SocketAddr, runtime_dir: &Path) -> String {
        let token = |id: &str, value: &str, accounts: &str, scopes: &str| {
            format!(
                "    - id: {id}\n      sha256: {}\n      accounts: {accounts}\n      \
                 scopes: {scopes}\n",
                sha256_hex(value.as_bytes())
            )
        };
        format!(
            "store:\n  kind: vault\n  address: {address}\n  prefix: {prefix}\n\
             auth:\n  tokens:\n{full}{reader}{narrow}  \
             policy:\n    check_mapping: [bearer]\n    check_urls: [bearer]\n\
             admin:\n  listen: 127.0.0.1:0\n  throttle:\n    per_second: 0\n\
             lifecycle:\n  grace_period_seconds: 1\n  shutdown_timeout_seconds: 1\n  \
             runtime_dir: {dir}\n  threads: 1\n\
             refresh:\n  poll_seconds: 1\n\
             proxy:\n  listen: {listen}\n  throttle:\n    per_second: 0\n\
             upstream:\n  connect_timeout_ms: 2000\n  handshake_timeout_ms: 3000\n  \
             read_timeout_ms: 10000\n",
            address = quoted(&self.address),
            prefix = quoted(&self.prefix),
            full = token("test", FULL_TOKEN, "[\"*\"]", "[read, write, forward]"),
            reader = token("reader", READER_TOKEN, "[\"*\"]", "[read]"),
            narrow = token(
                "narrow",
                NARROW_TOKEN,
                &format!("[{NARROW_ACCOUNT}]"),
                "[read, write, forward]"
            ),
            dir = quoted(runtime_dir.to_str().expect("test paths are UTF-8")),
        )
    }
}

/// The admin listener's address, from its `admin listener started address=...` log line.
pub fn admin_addr(gateway: &Gateway) -> SocketAddr {
    let line = gateway.wait_for_log("admin listener started", ADMIN_START);
    let address = line
        .split_whitespace()
        .find_map(|field| field.strip_prefix("address="))
        .unwrap_or_else(|| panic!("no address= in {line:?}"));
    address
        .trim_matches('"')
        .parse()
        .unwrap_or_else(|e| panic!("{address:?} is not an address ({e}) in {line:?}"))
}

/// A client of one base URL, presenting a Bearer token (or none).
#[derive(Debug, Clone)]
pub struct Api {
    client: reqwest::Client,
    base: String,
    token: Option<String>,
}

/// What the gateway answered.
#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub text: String,
}

impl Answer {
    /// The body as JSON; panics with the text when it is not.
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.text)
            .unwrap_or_else(|e| panic!("not JSON ({e}), status {}: {}", self.status, self.text))
    }

    /// The `code` of a refusal.
    pub fn code(&self) -> String {
        self.json()["code"].as_str().unwrap_or_default().to_owned()
    }

    /// A header's value as text, or "".
    pub fn header(&self, name: &str) -> String {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    }
}

impl Api {
    /// `base` is `http://host:port` without a trailing slash; calls carry [`FULL_TOKEN`].
    pub fn new(base: String) -> Api {
        let client = reqwest::Client::builder()
            .no_proxy()
            .timeout(REQUEST_TIMEOUT)
            .build()
            .expect("a reqwest client");
        Api {
            client,
            base,
            token: Some(FULL_TOKEN.to_owned()),
        }
    }

    /// The same client presenting `token`, or no credentials.
    pub fn with_token(&self, token: Option<&str>) -> Api {
        Api {
            token: token.map(str::to_owned),
            ..self.clone()
        }
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    /// `METHOD base+path`, with the token.
    pub fn request(&self, method: Method, path: &str) -> RequestBuilder {
        let request = self.client.request(method, format!("{}{path}", self.base));
        match &self.token {
            Some(token) => request.bearer_auth(token),
            None => request,
        }
    }

    pub async fn get(&self, path: &str) -> Answer {
        send(self.request(Method::GET, path)).await
    }

    pub async fn delete(&self, path: &str) -> Answer {
        send(self.request(Method::DELETE, path)).await
    }

    pub async fn json(&self, method: Method, path: &str, body: &Value) -> Answer {
        send(self.request(method, path).json(body)).await
    }

    /// A body sent as it is, with `content_type`.
    pub async fn raw(
        &self,
        method: Method,
        path: &str,
        content_type: &str,
        body: Vec<u8>,
    ) -> Answer {
        send(
            self.request(method, path)
                .header("content-type", content_type)
                .body(body),
        )
        .await
    }

    /// `file` and the `certificate` JSON text, as the by-file routes take them.
    pub async fn by_file(
        &self,
        method: Method,
        account: &str,
        file: Vec<u8>,
        certificate: &Value,
    ) -> Answer {
        self.by_file_text(method, account, file, certificate.to_string())
            .await
    }

    /// [`Api::by_file`] with the `certificate` field's text as it is.
    pub async fn by_file_text(
        &self,
        method: Method,
        account: &str,
        file: Vec<u8>,
        certificate: String,
    ) -> Answer {
        let form = reqwest::multipart::Form::new()
            .part(
                "file",
                reqwest::multipart::Part::bytes(file).file_name("certificate.p12"),
            )
            .text("certificate", certificate);
        let path = format!("/mtls/account/{account}/certificates/by-file");
        send(self.request(method, &path).multipart(form)).await
    }

    /// `file` and `password`, as the P12 tester takes them.
    pub async fn test_p12(&self, account: &str, file: Vec<u8>, password: &str) -> Answer {
        let form = reqwest::multipart::Form::new()
            .part(
                "file",
                reqwest::multipart::Part::bytes(file).file_name("certificate.p12"),
            )
            .text("password", password.to_owned());
        let path = format!("/mtls/account/{account}/p12-test/multipart");
        send(self.request(Method::POST, &path).multipart(form)).await
    }
}

pub async fn send(request: RequestBuilder) -> Answer {
    let response = request.send().await.expect("the gateway answers");
    let (status, headers) = (response.status(), response.headers().clone());
    let text = response.text().await.expect("read the answer");
    Answer {
        status,
        headers,
        text,
    }
}

/// The keys of a JSON object.
pub fn keys(value: &Value) -> BTreeSet<String> {
    value
        .as_object()
        .unwrap_or_else(|| panic!("not an object: {value}"))
        .keys()
        .cloned()
        .collect()
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// A JSON string, which YAML reads as the same string.
fn quoted(text: &str) -> String {
    serde_json::to_string(text).expect("a string serialises")
}
