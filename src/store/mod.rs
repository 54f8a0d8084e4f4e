//! Where certificates and mappings live: the [`Store`] trait and its two backends.
//!
//! - [`vault`]: HashiCorp Vault or OpenBao, KV version 2. Several gateway replicas may share it;
//!   uniqueness of names and mapping keys holds across them through create-only writes.
//! - [`local`]: a directory in the same layout, for a single instance (the embedded default).
//!
//! Layout, under the backend's prefix:
//!
//! ```text
//! accounts/{account}/certificates/{id}        P12 (base64) + password; facts in metadata
//! accounts/{account}/mappings/{id}            the mapping
//! accounts/{account}/names/certificate/{name} create-only claim holding the certificate id
//! accounts/{account}/names/mapping/{name}     create-only claim holding the mapping id
//! accounts/{account}/keys/{digest}            create-only claim of service + URL -> mapping id
//! sequence                                    each write's version is a fresh id
//! revision                                    each write's version is the store revision
//! ```
//!
//! Accounts and names are percent-encoded into one path segment each (`partner/prod` becomes
//! `partner%2Fprod`), so no value can split a path or climb out of it.
//!
//! Only P12 files that the diagnosis found usable can be stored: [`NewCertificate`] takes a
//! [`UsableP12`], which nothing else can construct.

use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use base64::Engine as _;
use percent_encoding::{percent_decode_str, utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use time::OffsetDateTime;
use tracing::warn;

use crate::ids::{AccountId, CertificateId, EntryName, Fingerprint, MappingId, ServiceName};
use crate::p12::{CertificateFacts, UsableP12};

mod instrumented;
pub mod local;
pub mod vault;

pub use instrumented::InstrumentedStore;

pub use local::{LocalConfig, LocalStore};
pub use vault::{VaultAuth, VaultConfig, VaultStore};

/// Which backend holds certificates and mappings, and how to reach it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum StoreConfig {
    Local(LocalConfig),
    Vault(VaultConfig),
}

impl StoreConfig {
    /// Every semantic problem, as (path within the store section, sentence).
    pub fn problems(&self) -> Vec<(String, String)> {
        match self {
            Self::Local(config) => config.problems(),
            Self::Vault(config) => config.problems(),
        }
    }
}

/// Opens the configured backend; a Vault backend logs in and checks that it can write. Every
/// call on the returned store is counted and timed in the store metrics.
pub async fn open(config: &StoreConfig) -> Result<Arc<dyn Store>, StoreError> {
    let backend: Arc<dyn Store> = match config {
        StoreConfig::Local(config) => Arc::new(LocalStore::open(config).await?),
        StoreConfig::Vault(config) => Arc::new(VaultStore::open(config).await?),
    };
    Ok(Arc::new(InstrumentedStore::new(backend)))
}

/// The non-secret facts about a stored certificate: what lists and reads return.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CertificateRecord {
    pub id: CertificateId,
    pub account: AccountId,
    pub name: EntryName,
    pub fingerprint: Fingerprint,
    pub subject: String,
    pub issuer: String,
    pub serial: String,
    #[serde(with = "time::serde::rfc3339")]
    pub not_before: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub not_after: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub updated_at: OffsetDateTime,
}

/// The secret half of a stored certificate, read only to build the forwarding snapshot.
pub struct StoredP12 {
    pub der: Vec<u8>,
    pub password: SecretString,
}

impl fmt::Debug for StoredP12 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StoredP12")
            .field("der", &format_args!("[{} bytes]", self.der.len()))
            .field("password", &"[redacted]")
            .finish()
    }
}

/// A certificate to create: its name and a P12 that the diagnosis found usable.
#[derive(Debug)]
pub struct NewCertificate {
    pub account: AccountId,
    pub name: EntryName,
    pub p12: UsableP12,
}

/// A change to a stored certificate; `None` leaves that part as it is.
#[derive(Debug, Default)]
pub struct CertificateChange {
    pub name: Option<EntryName>,
    pub p12: Option<UsableP12>,
}

/// How a mapping's URL is compared with a request's URL.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UrlMatch {
    /// The whole URL, query string included, as the compatible contract requires.
    #[default]
    Exact,
    /// Every URL under this one, at a path segment boundary.
    Prefix,
}

/// What a caller sets on a mapping; the store adds the id and account.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MappingSpec {
    pub name: EntryName,
    pub service: ServiceName,
    pub url: String,
    pub certificate_id: CertificateId,
    #[serde(default = "enabled_by_default")]
    pub enabled: bool,
    #[serde(default)]
    pub url_match: UrlMatch,
    /// PEM bundle of the partner's trust anchors; `None` means the system roots.
    #[serde(default)]
    pub ca_pem: Option<String>,
    /// Off only by an explicit choice, which the gateway logs at every snapshot load.
    #[serde(default = "enabled_by_default")]
    pub verify_server: bool,
}

fn enabled_by_default() -> bool {
    true
}

/// A stored mapping: account + service + URL to one certificate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mapping {
    pub id: MappingId,
    pub account: AccountId,
    #[serde(flatten)]
    pub spec: MappingSpec,
}

impl MappingSpec {
    /// The digest that makes service + URL unique within an account.
    pub fn key_digest(&self) -> String {
        let mut hasher = Sha256::new();
        hasher.update(self.service.as_str().as_bytes());
        hasher.update([0]);
        hasher.update(self.url.as_bytes());
        hex::encode(hasher.finalize())
    }
}

/// Who is to blame when a store call fails; decides the HTTP status and the metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Blame {
    /// The request conflicts with what is stored, or names something that is not there.
    Caller,
    /// The secret store could not be reached or refused us.
    Store,
}

/// Why a store call failed. Never carries a secret.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    #[error("{what} {id} does not exist in account {account}")]
    NotFound {
        what: &'static str,
        account: AccountId,
        id: u64,
    },
    #[error("{what} {value:?} already exists in account {account}; choose another or update it")]
    Conflict {
        what: &'static str,
        account: AccountId,
        value: String,
    },
    #[error(
        "certificate {id} is used by mappings {mappings:?} in account {account}; \
         delete or re-point them first, or force the delete"
    )]
    InUse {
        account: AccountId,
        id: CertificateId,
        mappings: Vec<MappingId>,
    },
    #[error("the secret store at {address} could not be reached")]
    Unreachable {
        address: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("the secret store refused access to {path}; check the token's policy")]
    PermissionDenied { path: String },
    #[error("the secret store answered {status} for {path}: {message}")]
    Rejected {
        path: String,
        status: u16,
        message: String,
    },
    #[error("stored data at {path} is malformed: {reason}")]
    Malformed { path: String, reason: String },
    #[error("local store i/o failed at {path}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("could not read the secret store credentials from {path}")]
    CredentialsUnreadable {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the store settings cannot be used: {reason}")]
    Misconfigured { reason: String },
}

impl StoreError {
    pub fn blame(&self) -> Blame {
        match self {
            Self::NotFound { .. } | Self::Conflict { .. } | Self::InUse { .. } => Blame::Caller,
            _ => Blame::Store,
        }
    }
}

/// Certificates, mappings and a revision that changes on every write.
///
/// Reads of certificates return [`CertificateRecord`]s, never secrets; only
/// [`Store::certificate_secret`] returns the P12, for building the forwarding snapshot.
#[async_trait]
pub trait Store: Send + Sync + fmt::Debug {
    /// A short name for logs and metrics: `vault` or `local`.
    fn kind(&self) -> &'static str;

    async fn create_certificate(
        &self,
        new: NewCertificate,
    ) -> Result<CertificateRecord, StoreError>;

    async fn update_certificate(
        &self,
        account: &AccountId,
        id: CertificateId,
        change: CertificateChange,
    ) -> Result<CertificateRecord, StoreError>;

    async fn certificate(
        &self,
        account: &AccountId,
        id: CertificateId,
    ) -> Result<CertificateRecord, StoreError>;

    async fn certificate_secret(
        &self,
        account: &AccountId,
        id: CertificateId,
    ) -> Result<StoredP12, StoreError>;

    async fn certificates(&self, account: &AccountId)
        -> Result<Vec<CertificateRecord>, StoreError>;

    /// Refused with [`StoreError::InUse`] while mappings point at it, unless `force`.
    async fn delete_certificate(
        &self,
        account: &AccountId,
        id: CertificateId,
        force: bool,
    ) -> Result<(), StoreError>;

    /// The certificate must exist in the same account; name and key must be free.
    async fn create_mapping(
        &self,
        account: &AccountId,
        spec: MappingSpec,
    ) -> Result<Mapping, StoreError>;

    async fn update_mapping(
        &self,
        account: &AccountId,
        id: MappingId,
        spec: MappingSpec,
    ) -> Result<Mapping, StoreError>;

    async fn mapping(&self, account: &AccountId, id: MappingId) -> Result<Mapping, StoreError>;

    async fn mappings(&self, account: &AccountId) -> Result<Vec<Mapping>, StoreError>;

    async fn delete_mapping(&self, account: &AccountId, id: MappingId) -> Result<(), StoreError>;

    /// Every account that holds at least one certificate or mapping.
    async fn accounts(&self) -> Result<Vec<AccountId>, StoreError>;

    /// Changes on every write, by this instance or another sharing the backend.
    async fn revision(&self) -> Result<u64, StoreError>;

    /// The secret of an OAuth 1.0a consumer kept in the store at `oauth1/consumers/{key}`
    /// (field `secret`), written there by an operator; `None` when there is none.
    async fn consumer_secret(&self, key: &str) -> Result<Option<SecretString>, StoreError>;
}

impl CertificateRecord {
    fn new(
        account: AccountId,
        id: CertificateId,
        name: EntryName,
        facts: &CertificateFacts,
        updated_at: OffsetDateTime,
    ) -> Self {
        Self {
            id,
            account,
            name,
            fingerprint: facts.fingerprint.clone(),
            subject: facts.subject.clone(),
            issuer: facts.issuer.clone(),
            serial: facts.serial.clone(),
            not_before: facts.not_before,
            not_after: facts.not_after,
            updated_at,
        }
    }

    /// This record after `change`: its new name, the new P12's facts, `updated_at`.
    fn changed(&self, change: &CertificateChange, updated_at: OffsetDateTime) -> Self {
        let name = change.name.clone().unwrap_or_else(|| self.name.clone());
        match &change.p12 {
            Some(p12) => Self::new(self.account.clone(), self.id, name, p12.facts(), updated_at),
            None => Self {
                name,
                updated_at,
                ..self.clone()
            },
        }
    }
}

/// The secret half of a certificate as both backends serialise it.
#[derive(Clone, Serialize, Deserialize)]
struct SecretHalf {
    /// The P12 file as uploaded, standard base64.
    p12: String,
    password: String,
}

impl SecretHalf {
    fn of(p12: &UsableP12) -> Self {
        Self {
            p12: base64::engine::general_purpose::STANDARD.encode(p12.der()),
            password: p12.password().expose_secret().to_owned(),
        }
    }

    /// The stored P12, or why the stored value is not one (the reason holds no secret).
    fn into_stored(self) -> Result<StoredP12, &'static str> {
        let der = base64::engine::general_purpose::STANDARD
            .decode(self.p12.as_bytes())
            .map_err(|_| "the p12 field is not base64")?;
        Ok(StoredP12 {
            der,
            password: SecretString::from(self.password),
        })
    }
}

impl fmt::Debug for SecretHalf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretHalf([redacted])")
    }
}

/// An OAuth 1.0a consumer's secret as both backends keep it.
#[derive(Deserialize)]
struct ConsumerSecret {
    secret: String,
}

/// The create-only claim that makes a name or a mapping key unique: it records its holder.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
struct Claim {
    id: u64,
}

fn now() -> OffsetDateTime {
    OffsetDateTime::now_utc()
}

fn not_found(what: &'static str, account: &AccountId, id: u64) -> StoreError {
    StoreError::NotFound {
        what,
        account: account.clone(),
        id,
    }
}

fn conflict(what: &'static str, account: &AccountId, value: &str) -> StoreError {
    StoreError::Conflict {
        what,
        account: account.clone(),
        value: value.into(),
    }
}

fn key_conflict(account: &AccountId, spec: &MappingSpec) -> StoreError {
    conflict(
        "mapping for service and url",
        account,
        &format!("{} {}", spec.service, spec.url),
    )
}

fn users_of(mappings: &[Mapping], id: CertificateId) -> Vec<MappingId> {
    mappings
        .iter()
        .filter(|m| m.spec.certificate_id == id)
        .map(|m| m.id)
        .collect()
}

/// The entries of a list that could be read; malformed ones are logged and left out, so that
/// one damaged entry does not hide a whole account from the forwarding snapshot.
fn keep_readable<T>(loaded: Vec<Result<Option<T>, StoreError>>) -> Result<Vec<T>, StoreError> {
    let mut kept = Vec::with_capacity(loaded.len());
    for entry in loaded {
        match entry {
            Ok(Some(value)) => kept.push(value),
            Ok(None) => {}
            Err(StoreError::Malformed { path, reason }) => {
                warn!(%path, %reason, "malformed store entry left out of a list");
            }
            Err(other) => return Err(other),
        }
    }
    Ok(kept)
}

/// Where each entry lives relative to a backend's root, as laid out in the module doc.
mod keys {
    use super::*;

    pub(super) const ACCOUNTS: &str = "accounts";
    pub(super) const SEQUENCE: &str = "sequence";
    pub(super) const REVISION: &str = "revision";

    /// Where an OAuth 1.0a consumer's secret lives.
    pub(super) fn consumer(key: &str) -> String {
        format!("oauth1/consumers/{}", segment(key))
    }

    /// Encoded path segments keep letters, digits, '-', '_' and '.'; everything else,
    /// '/' and '%' included, is percent-encoded, so a segment never splits or escapes a path.
    const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'_').remove(b'.');

    /// Longest encoded name kept readable; longer ones become a digest so that any name fits
    /// in a file name (255 bytes) with room for an extension.
    const MAX_READABLE_SEGMENT: usize = 200;

    /// A reversible path segment: percent-encoded, and never `.` or `..`. Account ids stay
    /// reversible because lists decode them; an account id of more than about 80 non-ASCII
    /// characters is then too long for a file name in the local store.
    fn segment(value: &str) -> String {
        let encoded = utf8_percent_encode(value, SEGMENT).to_string();
        if encoded.chars().all(|c| c == '.') {
            encoded.replace('.', "%2E")
        } else {
            encoded
        }
    }

    pub(super) fn account_from_segment(segment: &str) -> Option<AccountId> {
        let decoded = percent_decode_str(segment).decode_utf8().ok()?;
        AccountId::new(decoded.into_owned()).ok()
    }

    /// A name's segment: readable when short, else a digest. '~' never appears in an encoded
    /// segment, so a digest cannot collide with a readable name.
    fn name_segment(name: &EntryName) -> String {
        let encoded = segment(name.as_str());
        if encoded.len() <= MAX_READABLE_SEGMENT {
            encoded
        } else {
            format!(
                "~sha256-{}",
                hex::encode(Sha256::digest(name.as_str().as_bytes()))
            )
        }
    }

    pub(super) fn account(account: &AccountId) -> String {
        format!("{ACCOUNTS}/{}", segment(account.as_str()))
    }

    pub(super) fn certificates(account: &AccountId) -> String {
        format!("{}/certificates", self::account(account))
    }

    pub(super) fn certificate(account: &AccountId, id: CertificateId) -> String {
        format!("{}/{id}", certificates(account))
    }

    pub(super) fn mappings(account: &AccountId) -> String {
        format!("{}/mappings", self::account(account))
    }

    pub(super) fn mapping(account: &AccountId, id: MappingId) -> String {
        format!("{}/{id}", mappings(account))
    }

    pub(super) fn certificate_name(account: &AccountId, name: &EntryName) -> String {
        format!(
            "{}/names/certificate/{}",
            self::account(account),
            name_segment(name)
        )
    }

    pub(super) fn mapping_name(account: &AccountId, name: &EntryName) -> String {
        format!(
            "{}/names/mapping/{}",
            self::account(account),
            name_segment(name)
        )
    }

    pub(super) fn mapping_key(account: &AccountId, spec: &MappingSpec) -> String {
        format!("{}/keys/{}", self::account(account), spec.key_digest())
    }
}
