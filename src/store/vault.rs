//! HashiCorp Vault or OpenBao, KV version 2, through `vaultrs`.
//!
//! Every key of the layout in [the store module](super) lives under `{mount}` and `{prefix}`.
//! A certificate's KV data holds the secret half (`p12` in base64 and `password`); its facts
//! (name, fingerprint, subject, issuer, serial, validity, `updated_at`) are the KV v2 *custom
//! metadata* of the same key, so [`Store::certificate`] and [`Store::certificates`] never read
//! a secret. A certificate exists once its facts exist: a create writes the data first and the
//! facts second.
//!
//! Several replicas may share one Vault:
//! - names and mapping keys are claimed with check-and-set `cas = 0`; Vault accepts the first
//!   writer and answers every other one 400 "check-and-set parameter did not match the current
//!   version", which becomes [`StoreError::Conflict`];
//! - an id is the version number Vault returns for a write to `sequence`, which is atomic;
//! - every successful write ends with a write to `revision`, whose `current_version` is the
//!   store revision. Both counters keep one version ([`COUNTER_MAX_VERSIONS`]); Vault keeps
//!   counting after older versions are pruned.
//!
//! A write that spans several keys records how to undo each step and, when a later step
//! fails, undoes the earlier ones (best effort, newest first) before returning the error.
//!
//! The token needs this policy (for the default mount and prefix):
//!
//! ```hcl
//! path "secret/data/mtls-gateway/*" {
//!   capabilities = ["create", "read", "update", "delete"]
//! }
//! path "secret/metadata/mtls-gateway/*" {
//!   capabilities = ["create", "read", "update", "delete", "list"]
//! }
//! ```
//!
//! Limitation: a replica that dies between two steps of a write leaves its claims behind, and
//! that name or mapping key stays taken until an operator deletes the claim under `names/` or
//! `keys/`. Recovering claims whose holder is gone would need a grace period to tell a dead
//! writer from a slow one.
//!
//! Limitation: Vault caps custom metadata values at 512 bytes; a longer subject or issuer is
//! stored cut short, ending in '…'.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use futures::stream::{self, StreamExt};
use secrecy::{ExposeSecret, SecretString};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use time::OffsetDateTime;
use tracing::{info, warn};
use vaultrs::api::kv2::requests::{SetSecretMetadataRequest, SetSecretRequestOptions};
use vaultrs::api::kv2::responses::ReadSecretMetadataResponse;
use vaultrs::client::{VaultClient, VaultClientSettings};
use vaultrs::error::ClientError;
use vaultrs::kv2;

use super::{
    conflict, keep_readable, key_conflict, keys, not_found, now, users_of, CertificateChange,
    CertificateRecord, Claim, ConsumerSecret, Mapping, MappingSpec, NewCertificate, SecretHalf,
    Store, StoreError, StoredP12,
};
use crate::ids::{AccountId, CertificateId, MappingId};

/// The KV v2 mount of the dev server and of most installations.
pub const DEFAULT_MOUNT: &str = "secret";

/// Keeps the gateway's keys apart from everything else on the mount.
pub const DEFAULT_PREFIX: &str = "mtls-gateway";

/// The variable the Vault CLI reads, so a shell set up for `vault` or `bao` works as is.
pub const DEFAULT_TOKEN_ENV: &str = "VAULT_TOKEN";

/// Where `vault auth enable approle` mounts AppRole.
pub const DEFAULT_APPROLE_MOUNT: &str = "approle";

/// Long enough for a busy Vault behind a load balancer; short enough that an admin call fails
/// while a person still waits for it and the refresher retries soon.
pub const DEFAULT_REQUEST_TIMEOUT_SECONDS: u64 = 10;

/// Versions kept of `sequence` and `revision`: only the version number matters.
pub const COUNTER_MAX_VERSIONS: u64 = 1;

/// Entries read at once when a list reads each of them.
const LIST_CONCURRENCY: usize = 8;

/// Vault refuses longer custom metadata values (bytes).
const MAX_METADATA_VALUE: usize = 512;

/// What Vault (and OpenBao) answer, with status 400, to a write whose `cas` did not match.
const CAS_MISMATCH: &str = "check-and-set parameter did not match";

/// Longest Vault error text carried into a [`StoreError::Rejected`].
const MAX_ERROR_MESSAGE: usize = 300;

/// Where Vault is and how to log in; the `store` section with `kind: vault`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VaultConfig {
    /// `https://vault.example:8200`
    pub address: String,
    #[serde(default = "default_mount")]
    pub mount: String,
    #[serde(default = "default_prefix")]
    pub prefix: String,
    #[serde(default)]
    pub auth: VaultAuth,
    #[serde(default = "default_request_timeout")]
    pub request_timeout_seconds: u64,
    /// PEM bundle that signs Vault's own certificate; the system roots when absent.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
}

/// How the gateway gets its Vault token.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(tag = "method", rename_all = "snake_case", deny_unknown_fields)]
pub enum VaultAuth {
    /// A token from `token_file`, read again whenever the file changes, or else from the
    /// environment variable `token_env` (default `VAULT_TOKEN`), read once at start.
    Token {
        #[serde(default)]
        token_file: Option<PathBuf>,
        #[serde(default)]
        token_env: Option<String>,
    },
    /// AppRole: logs in at start, and again once when Vault refuses the token.
    Approle {
        #[serde(default = "default_approle_mount")]
        mount: String,
        role_id_file: PathBuf,
        secret_id_file: PathBuf,
    },
}

impl Default for VaultAuth {
    fn default() -> Self {
        Self::Token {
            token_file: None,
            token_env: None,
        }
    }
}

fn default_mount() -> String {
    DEFAULT_MOUNT.into()
}

fn default_prefix() -> String {
    DEFAULT_PREFIX.into()
}

fn default_approle_mount() -> String {
    DEFAULT_APPROLE_MOUNT.into()
}

fn default_request_timeout() -> u64 {
    DEFAULT_REQUEST_TIMEOUT_SECONDS
}

impl VaultConfig {
    /// A config for `address` with every default: token from `VAULT_TOKEN`.
    pub fn new(address: impl Into<String>) -> Self {
        Self {
            address: address.into(),
            mount: default_mount(),
            prefix: default_prefix(),
            auth: VaultAuth::default(),
            request_timeout_seconds: DEFAULT_REQUEST_TIMEOUT_SECONDS,
            ca_file: None,
        }
    }

    /// Every semantic problem, as (field path, sentence); files are checked for existence.
    pub fn problems(&self) -> Vec<(String, String)> {
        let mut problems = Vec::new();
        let mut report = |field: &str, sentence: String| problems.push((field.into(), sentence));

        match url::Url::parse(&self.address) {
            Ok(url) if matches!(url.scheme(), "http" | "https") && url.has_host() => {
                if url.scheme() == "http" && self.ca_file.is_some() {
                    report(
                        "ca_file",
                        "is used only with an https address; remove it or use https".into(),
                    );
                }
            }
            _ => report(
                "address",
                format!(
                    "{:?} is not an http(s) URL; write it like https://vault.example:8200",
                    self.address
                ),
            ),
        }
        if let Some(sentence) = kv_path_problem(&self.mount) {
            report("mount", sentence);
        }
        if let Some(sentence) = kv_path_problem(&self.prefix) {
            report("prefix", sentence);
        }
        if self.request_timeout_seconds == 0 {
            report("request_timeout_seconds", "must be at least 1".into());
        }
        if let Some(sentence) = self.ca_file.as_deref().and_then(file_problem) {
            report("ca_file", sentence);
        }
        match &self.auth {
            VaultAuth::Token {
                token_file: Some(_),
                token_env: Some(_),
            } => report("auth", "set token_file or token_env, not both".into()),
            VaultAuth::Token {
                token_file: Some(file),
                ..
            } => {
                if let Some(sentence) = file_problem(file) {
                    report("auth.token_file", sentence);
                }
            }
            VaultAuth::Token {
                token_env: Some(name),
                ..
            } if name.is_empty() || name.contains('=') => report(
                "auth.token_env",
                "must name an environment variable, such as VAULT_TOKEN".into(),
            ),
            VaultAuth::Token { .. } => {}
            VaultAuth::Approle {
                mount,
                role_id_file,
                secret_id_file,
            } => {
                if let Some(sentence) = kv_path_problem(mount) {
                    report("auth.mount", sentence);
                }
                if let Some(sentence) = file_problem(role_id_file) {
                    report("auth.role_id_file", sentence);
                }
                if let Some(sentence) = file_problem(secret_id_file) {
                    report("auth.secret_id_file", sentence);
                }
            }
        }
        problems
    }
}

fn kv_path_problem(value: &str) -> Option<String> {
    let bad = value.is_empty()
        || value
            .split('/')
            .any(|s| s.is_empty() || s == "." || s == "..");
    bad.then(|| {
        format!(
            "{value:?} is not a path such as \"secret\" or \"teams/gateway\": \
             no empty, '.' or '..' segments and no leading or trailing '/'"
        )
    })
}

fn file_problem(path: &Path) -> Option<String> {
    match std::fs::metadata(path) {
        Ok(metadata) if metadata.is_file() => None,
        Ok(_) => Some(format!("{} is not a file", path.display())),
        Err(error) => Some(format!("{} cannot be read: {error}", path.display())),
    }
}

/// Certificates and mappings in Vault KV v2; see the module doc for the layout and guarantees.
pub struct VaultStore {
    mount: String,
    prefix: String,
    session: Session,
}

impl fmt::Debug for VaultStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VaultStore")
            .field("address", &self.session.address)
            .field("mount", &self.mount)
            .field("prefix", &self.prefix)
            .field("auth", &self.session.credentials.method())
            .finish_non_exhaustive()
    }
}

/// One step of a multi-key write, undone when a later step fails.
enum Undo {
    /// Delete a key that the write created (a claim, or a new entry).
    Remove(String),
    /// Claim again a name or key that the write released.
    Reclaim { key: String, id: u64 },
    /// Put back a certificate's facts.
    RestoreFacts {
        key: String,
        facts: HashMap<String, String>,
    },
    /// Put back an entry's KV data (a mapping, or a certificate's secret half).
    RestoreData { key: String, data: Value },
}

impl VaultStore {
    /// Logs in, and sets how many versions the counters keep (which also checks write access).
    pub async fn open(config: &VaultConfig) -> Result<Self, StoreError> {
        if let Some((field, sentence)) = config.problems().into_iter().next() {
            return Err(StoreError::Misconfigured {
                reason: format!("{field} {sentence}"),
            });
        }

        let session = Session::open(config).await?;
        let store = Self {
            mount: config.mount.clone(),
            prefix: config.prefix.clone(),
            session,
        };

        for key in [keys::SEQUENCE, keys::REVISION] {
            store.set_max_versions(key, COUNTER_MAX_VERSIONS).await?;
        }
        info!(
            address = %store.session.address,
            mount = %store.mount,
            prefix = %store.prefix,
            auth = store.session.credentials.method(),
            "vault store opened"
        );
        Ok(store)
    }

    fn full_path(&self, key: &str) -> String {
        format!("{}/{key}", self.prefix)
    }

    /// The path as an operator finds it in Vault, for error messages.
    fn shown_path(&self, key: &str) -> String {
        format!("{}/{}/{key}", self.mount, self.prefix)
    }

    /// Runs one Vault call; when Vault refuses the token, renews it once and calls again.
    async fn call<T, F, Fut>(&self, key: &str, op: F) -> Result<T, CallError>
    where
        F: Fn(Arc<VaultClient>) -> Fut,
        Fut: Future<Output = Result<T, ClientError>>,
    {
        let client = self.session.client();
        match op(Arc::clone(&client)).await {
            Err(ClientError::APIError { code: 403, .. }) => {
                if !self.session.renew(&client).await? {
                    return Err(CallError::Failed(StoreError::PermissionDenied {
                        path: self.shown_path(key),
                    }));
                }
                op(self.session.client())
                    .await
                    .map_err(|e| classify(&self.session.address, &self.shown_path(key), e))
            }
            other => other.map_err(|e| classify(&self.session.address, &self.shown_path(key), e)),
        }
    }

    async fn read_metadata(
        &self,
        key: &str,
    ) -> Result<Option<ReadSecretMetadataResponse>, StoreError> {
        let (mount, path) = (self.mount.as_str(), self.full_path(key));
        let path = path.as_str();
        let result = self
            .call(key, |c| async move {
                kv2::read_metadata(&*c, mount, path).await
            })
            .await;
        found(result, || self.shown_path(key))
    }

    async fn read_data<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>, StoreError> {
        let (mount, path) = (self.mount.as_str(), self.full_path(key));
        let path = path.as_str();
        let result = self
            .call(key, |c| async move {
                kv2::read::<Value>(&*c, mount, path).await
            })
            .await;
        match found(result, || self.shown_path(key))? {
            None => Ok(None),
            // The serde error is left out: it may quote the value, and the value may be secret.
            Some(value) => {
                serde_json::from_value(value)
                    .map(Some)
                    .map_err(|_| StoreError::Malformed {
                        path: self.shown_path(key),
                        reason: "the value does not have the expected fields".into(),
                    })
            }
        }
    }

    /// Writes a new version of `key`; returns its version number.
    async fn write_data<T: Serialize + Sync>(
        &self,
        key: &str,
        data: &T,
    ) -> Result<u64, StoreError> {
        let (mount, path) = (self.mount.as_str(), self.full_path(key));
        let path = path.as_str();
        let result = self
            .call(
                key,
                |c| async move { kv2::set(&*c, mount, path, data).await },
            )
            .await;
        Ok(expect_ok(result, || self.shown_path(key))?.version)
    }

    /// Creates `key` holding `id` unless it exists; false when another writer holds it.
    async fn claim(&self, key: &str, id: u64) -> Result<bool, StoreError> {
        let (mount, path) = (self.mount.as_str(), self.full_path(key));
        let path = path.as_str();
        let claim = Claim { id };
        let result = self
            .call(key, |c| async move {
                let create_only = SetSecretRequestOptions { cas: 0 };
                kv2::set_with_options(&*c, mount, path, &claim, create_only).await
            })
            .await;
        match result {
            Ok(_) => Ok(true),
            Err(CallError::CasMismatch) => Ok(false),
            Err(other) => Err(other.into_store_error(self.shown_path(key))),
        }
    }

    async fn set_facts(
        &self,
        key: &str,
        facts: &HashMap<String, String>,
    ) -> Result<(), StoreError> {
        let (mount, path) = (self.mount.as_str(), self.full_path(key));
        let path = path.as_str();
        let result = self
            .call(key, |c| async move {
                let mut request = SetSecretMetadataRequest::builder();
                request.custom_metadata(facts.clone());
                kv2::set_metadata(&*c, mount, path, Some(&mut request)).await
            })
            .await;
        expect_ok(result, || self.shown_path(key))
    }

    async fn set_max_versions(&self, key: &str, max_versions: u64) -> Result<(), StoreError> {
        let (mount, path) = (self.mount.as_str(), self.full_path(key));
        let path = path.as_str();
        let result = self
            .call(key, |c| async move {
                let mut request = SetSecretMetadataRequest::builder();
                request.max_versions(max_versions);
                kv2::set_metadata(&*c, mount, path, Some(&mut request)).await
            })
            .await;
        expect_ok(result, || self.shown_path(key))
    }

    /// Deletes every version and the metadata of `key`; a missing key is not an error.
    async fn remove(&self, key: &str) -> Result<(), StoreError> {
        let (mount, path) = (self.mount.as_str(), self.full_path(key));
        let path = path.as_str();
        let result = self
            .call(key, |c| async move {
                kv2::delete_metadata(&*c, mount, path).await
            })
            .await;
        found(result, || self.shown_path(key)).map(drop)
    }

    /// The keys directly under `key`; folders end in '/'. Empty when there is nothing.
    async fn list(&self, key: &str) -> Result<Vec<String>, StoreError> {
        let (mount, path) = (self.mount.as_str(), self.full_path(key));
        let path = path.as_str();
        let result = self
            .call(key, |c| async move { kv2::list(&*c, mount, path).await })
            .await;
        Ok(found(result, || self.shown_path(key))?.unwrap_or_default())
    }

    async fn list_ids(&self, key: &str) -> Result<Vec<u64>, StoreError> {
        let mut ids: Vec<u64> = self
            .list(key)
            .await?
            .iter()
            .filter_map(|name| name.parse().ok())
            .collect();
        ids.sort_unstable();
        Ok(ids)
    }

    async fn next_id(&self) -> Result<u64, StoreError> {
        self.write_data(keys::SEQUENCE, &Stamp::now()).await
    }

    async fn bump_revision(&self) -> Result<(), StoreError> {
        self.write_data(keys::REVISION, &Stamp::now())
            .await
            .map(drop)
    }

    /// Claims `key` for `id`, or answers the conflict that `conflict` describes.
    async fn claim_or(
        &self,
        undo: &mut Vec<Undo>,
        key: String,
        id: u64,
        conflict: impl FnOnce() -> StoreError,
    ) -> Result<(), StoreError> {
        if !self.claim(&key, id).await? {
            return Err(conflict());
        }
        undo.push(Undo::Remove(key));
        Ok(())
    }

    async fn release(&self, undo: &mut Vec<Undo>, key: String, id: u64) -> Result<(), StoreError> {
        self.remove(&key).await?;
        undo.push(Undo::Reclaim { key, id });
        Ok(())
    }

    /// Undoes the recorded steps, newest first; a step that fails is logged and skipped.
    async fn roll_back(&self, undo: Vec<Undo>) {
        for step in undo.into_iter().rev() {
            // `Ok(false)`: another writer claimed the released name or key in the meantime.
            let (key, result) = match step {
                Undo::Remove(key) => {
                    let result = self.remove(&key).await.map(|()| true);
                    (key, result)
                }
                Undo::Reclaim { key, id } => {
                    let result = self.claim(&key, id).await;
                    (key, result)
                }
                Undo::RestoreFacts { key, facts } => {
                    let result = self.set_facts(&key, &facts).await.map(|()| true);
                    (key, result)
                }
                Undo::RestoreData { key, data } => {
                    let result = self.write_data(&key, &data).await.map(|_| true);
                    (key, result)
                }
            };
            match result {
                Ok(true) => {}
                Ok(false) => warn!(
                    path = %self.shown_path(&key),
                    "vault rollback could not reclaim a name another writer took meanwhile"
                ),
                Err(error) => warn!(
                    path = %self.shown_path(&key),
                    %error,
                    "vault rollback step failed; the key may need repair by hand"
                ),
            }
        }
    }

    /// Passes on the outcome of a multi-key write, first undoing its steps if it failed.
    async fn settle<T>(
        &self,
        undo: Vec<Undo>,
        result: Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        if result.is_err() {
            self.roll_back(undo).await;
        }
        result
    }

    /// `record` as a later read returns it: Vault may keep a fact cut short.
    fn as_kept(&self, record: &CertificateRecord) -> Result<CertificateRecord, StoreError> {
        record_from_facts(&record.account, record.id, &facts_of(record)).map_err(|reason| {
            StoreError::Malformed {
                path: self.shown_path(&keys::certificate(&record.account, record.id)),
                reason,
            }
        })
    }

    /// The certificate's record, or `None` when it does not exist or is still being written.
    async fn load_certificate(
        &self,
        account: &AccountId,
        id: CertificateId,
    ) -> Result<Option<CertificateRecord>, StoreError> {
        let key = keys::certificate(account, id);
        let Some(metadata) = self.read_metadata(&key).await? else {
            return Ok(None);
        };
        match metadata.custom_metadata {
            Some(facts) if facts.contains_key("name") => record_from_facts(account, id, &facts)
                .map(Some)
                .map_err(|reason| StoreError::Malformed {
                    path: self.shown_path(&key),
                    reason,
                }),
            _ => Ok(None),
        }
    }

    async fn load_mapping(
        &self,
        account: &AccountId,
        id: MappingId,
    ) -> Result<Option<Mapping>, StoreError> {
        let stored: Option<Mapping> = self.read_data(&keys::mapping(account, id)).await?;
        // The path is the truth for id and account, whatever the value says.
        Ok(stored.map(|mapping| Mapping {
            id,
            account: account.clone(),
            spec: mapping.spec,
        }))
    }

    async fn require_certificate(
        &self,
        account: &AccountId,
        id: CertificateId,
    ) -> Result<CertificateRecord, StoreError> {
        self.load_certificate(account, id)
            .await?
            .ok_or_else(|| not_found("certificate", account, id.0))
    }

    async fn create_certificate_steps(
        &self,
        undo: &mut Vec<Undo>,
        record: &CertificateRecord,
        secret: &SecretHalf,
    ) -> Result<(), StoreError> {
        let (account, id) = (&record.account, record.id);
        let name_key = keys::certificate_name(account, &record.name);
        self.claim_or(undo, name_key, id.0, || {
            conflict("certificate name", account, record.name.as_str())
        })
        .await?;

        let key = keys::certificate(account, id);
        undo.push(Undo::Remove(key.clone()));
        self.write_data(&key, secret).await?;
        self.set_facts(&key, &facts_of(record)).await?;

        self.bump_revision().await
    }

    async fn update_certificate_steps(
        &self,
        undo: &mut Vec<Undo>,
        old: &CertificateRecord,
        new: &CertificateRecord,
        secret: Option<&SecretHalf>,
    ) -> Result<(), StoreError> {
        let (account, id) = (&old.account, old.id);
        let key = keys::certificate(account, id);
        let renamed = old.name != new.name;
        if renamed {
            let name_key = keys::certificate_name(account, &new.name);
            self.claim_or(undo, name_key, id.0, || {
                conflict("certificate name", account, new.name.as_str())
            })
            .await?;
        }

        if let Some(secret) = secret {
            let previous = self.read_data::<Value>(&key).await?;
            if let Some(data) = previous {
                undo.push(Undo::RestoreData {
                    key: key.clone(),
                    data,
                });
            }
            self.write_data(&key, secret).await?;
        }
        undo.push(Undo::RestoreFacts {
            key: key.clone(),
            facts: facts_of(old),
        });
        self.set_facts(&key, &facts_of(new)).await?;

        if renamed {
            self.release(undo, keys::certificate_name(account, &old.name), id.0)
                .await?;
        }
        self.bump_revision().await
    }

    async fn delete_certificate_steps(
        &self,
        undo: &mut Vec<Undo>,
        old: &CertificateRecord,
    ) -> Result<(), StoreError> {
        let (account, id) = (&old.account, old.id);
        let key = keys::certificate(account, id);
        // Read only so that the delete can be undone if a later step fails.
        let secret = self.read_data::<Value>(&key).await?;

        self.remove(&key).await?;
        if let Some(data) = secret {
            undo.push(Undo::RestoreData {
                key: key.clone(),
                data,
            });
        }
        undo.push(Undo::RestoreFacts {
            key,
            facts: facts_of(old),
        });

        self.release(undo, keys::certificate_name(account, &old.name), id.0)
            .await?;
        self.bump_revision().await
    }

    async fn create_mapping_steps(
        &self,
        undo: &mut Vec<Undo>,
        mapping: &Mapping,
    ) -> Result<(), StoreError> {
        let (account, id, spec) = (&mapping.account, mapping.id.0, &mapping.spec);
        self.claim_or(undo, keys::mapping_name(account, &spec.name), id, || {
            conflict("mapping name", account, spec.name.as_str())
        })
        .await?;
        self.claim_or(undo, keys::mapping_key(account, spec), id, || {
            key_conflict(account, spec)
        })
        .await?;

        let key = keys::mapping(account, mapping.id);
        undo.push(Undo::Remove(key.clone()));
        self.write_data(&key, mapping).await?;

        self.bump_revision().await
    }

    async fn update_mapping_steps(
        &self,
        undo: &mut Vec<Undo>,
        old: &Mapping,
        new: &Mapping,
    ) -> Result<(), StoreError> {
        let (account, id) = (&old.account, old.id.0);
        let renamed = old.spec.name != new.spec.name;
        let rekeyed = old.spec.key_digest() != new.spec.key_digest();
        if renamed {
            self.claim_or(
                undo,
                keys::mapping_name(account, &new.spec.name),
                id,
                || conflict("mapping name", account, new.spec.name.as_str()),
            )
            .await?;
        }
        if rekeyed {
            self.claim_or(undo, keys::mapping_key(account, &new.spec), id, || {
                key_conflict(account, &new.spec)
            })
            .await?;
        }

        let key = keys::mapping(account, old.id);
        undo.push(Undo::RestoreData {
            key: key.clone(),
            data: to_value(old),
        });
        self.write_data(&key, new).await?;

        if renamed {
            self.release(undo, keys::mapping_name(account, &old.spec.name), id)
                .await?;
        }
        if rekeyed {
            self.release(undo, keys::mapping_key(account, &old.spec), id)
                .await?;
        }
        self.bump_revision().await
    }

    async fn delete_mapping_steps(
        &self,
        undo: &mut Vec<Undo>,
        old: &Mapping,
    ) -> Result<(), StoreError> {
        let (account, id) = (&old.account, old.id.0);
        let key = keys::mapping(account, old.id);
        self.remove(&key).await?;
        undo.push(Undo::RestoreData {
            key,
            data: to_value(old),
        });

        self.release(undo, keys::mapping_name(account, &old.spec.name), id)
            .await?;
        self.release(undo, keys::mapping_key(account, &old.spec), id)
            .await?;
        self.bump_revision().await
    }
}

#[async_trait]
impl Store for VaultStore {
    fn kind(&self) -> &'static str {
        "vault"
    }

    async fn create_certificate(
        &self,
        new: NewCertificate,
    ) -> Result<CertificateRecord, StoreError> {
        let id = CertificateId(self.next_id().await?);
        let record = CertificateRecord::new(new.account, id, new.name, new.p12.facts(), now());
        let record = self.as_kept(&record)?;
        let secret = SecretHalf::of(&new.p12);

        let mut undo = Vec::new();
        let result = self
            .create_certificate_steps(&mut undo, &record, &secret)
            .await;
        self.settle(undo, result).await?;
        Ok(record)
    }

    async fn update_certificate(
        &self,
        account: &AccountId,
        id: CertificateId,
        change: CertificateChange,
    ) -> Result<CertificateRecord, StoreError> {
        let old = self.require_certificate(account, id).await?;
        let new = self.as_kept(&old.changed(&change, now()))?;
        let secret = change.p12.as_ref().map(SecretHalf::of);

        let mut undo = Vec::new();
        let result = self
            .update_certificate_steps(&mut undo, &old, &new, secret.as_ref())
            .await;
        self.settle(undo, result).await?;
        Ok(new)
    }

    async fn certificate(
        &self,
        account: &AccountId,
        id: CertificateId,
    ) -> Result<CertificateRecord, StoreError> {
        self.require_certificate(account, id).await
    }

    async fn certificate_secret(
        &self,
        account: &AccountId,
        id: CertificateId,
    ) -> Result<StoredP12, StoreError> {
        let key = keys::certificate(account, id);
        let secret: SecretHalf = self
            .read_data(&key)
            .await?
            .ok_or_else(|| not_found("certificate", account, id.0))?;
        secret
            .into_stored()
            .map_err(|reason| StoreError::Malformed {
                path: self.shown_path(&key),
                reason: reason.into(),
            })
    }

    async fn certificates(
        &self,
        account: &AccountId,
    ) -> Result<Vec<CertificateRecord>, StoreError> {
        let ids = self.list_ids(&keys::certificates(account)).await?;
        let loaded: Vec<_> = stream::iter(ids)
            .map(|id| self.load_certificate(account, CertificateId(id)))
            .buffered(LIST_CONCURRENCY)
            .collect()
            .await;
        keep_readable(loaded)
    }

    async fn delete_certificate(
        &self,
        account: &AccountId,
        id: CertificateId,
        force: bool,
    ) -> Result<(), StoreError> {
        let old = self.require_certificate(account, id).await?;
        if !force {
            let users = users_of(&self.mappings(account).await?, id);
            if !users.is_empty() {
                return Err(StoreError::InUse {
                    account: account.clone(),
                    id,
                    mappings: users,
                });
            }
        }

        let mut undo = Vec::new();
        let result = self.delete_certificate_steps(&mut undo, &old).await;
        self.settle(undo, result).await
    }

    async fn create_mapping(
        &self,
        account: &AccountId,
        spec: MappingSpec,
    ) -> Result<Mapping, StoreError> {
        self.require_certificate(account, spec.certificate_id)
            .await?;
        let mapping = Mapping {
            id: MappingId(self.next_id().await?),
            account: account.clone(),
            spec,
        };

        let mut undo = Vec::new();
        let result = self.create_mapping_steps(&mut undo, &mapping).await;
        self.settle(undo, result).await?;
        Ok(mapping)
    }

    async fn update_mapping(
        &self,
        account: &AccountId,
        id: MappingId,
        spec: MappingSpec,
    ) -> Result<Mapping, StoreError> {
        let old = self.mapping(account, id).await?;
        if spec.certificate_id != old.spec.certificate_id {
            self.require_certificate(account, spec.certificate_id)
                .await?;
        }
        let new = Mapping {
            id,
            account: account.clone(),
            spec,
        };

        let mut undo = Vec::new();
        let result = self.update_mapping_steps(&mut undo, &old, &new).await;
        self.settle(undo, result).await?;
        Ok(new)
    }

    async fn mapping(&self, account: &AccountId, id: MappingId) -> Result<Mapping, StoreError> {
        self.load_mapping(account, id)
            .await?
            .ok_or_else(|| not_found("mapping", account, id.0))
    }

    async fn mappings(&self, account: &AccountId) -> Result<Vec<Mapping>, StoreError> {
        let ids = self.list_ids(&keys::mappings(account)).await?;
        let loaded: Vec<_> = stream::iter(ids)
            .map(|id| self.load_mapping(account, MappingId(id)))
            .buffered(LIST_CONCURRENCY)
            .collect()
            .await;
        keep_readable(loaded)
    }

    async fn delete_mapping(&self, account: &AccountId, id: MappingId) -> Result<(), StoreError> {
        let old = self.mapping(account, id).await?;

        let mut undo = Vec::new();
        let result = self.delete_mapping_steps(&mut undo, &old).await;
        self.settle(undo, result).await
    }

    async fn accounts(&self) -> Result<Vec<AccountId>, StoreError> {
        let mut accounts: Vec<AccountId> = self
            .list(keys::ACCOUNTS)
            .await?
            .iter()
            .filter_map(|name| name.strip_suffix('/'))
            .filter_map(keys::account_from_segment)
            .collect();
        accounts.sort();
        Ok(accounts)
    }

    async fn revision(&self) -> Result<u64, StoreError> {
        let metadata = self.read_metadata(keys::REVISION).await?;
        Ok(metadata.map_or(0, |m| m.current_version))
    }

    async fn consumer_secret(&self, key: &str) -> Result<Option<SecretString>, StoreError> {
        let secret: Option<ConsumerSecret> = self.read_data(&keys::consumer(key)).await?;
        Ok(secret.map(|s| SecretString::from(s.secret)))
    }
}

/// The outcome of one Vault call, before the caller decides what a missing key means.
enum CallError {
    NotFound,
    CasMismatch,
    Failed(StoreError),
}

impl From<StoreError> for CallError {
    fn from(error: StoreError) -> Self {
        Self::Failed(error)
    }
}

impl CallError {
    fn into_store_error(self, path: String) -> StoreError {
        match self {
            Self::Failed(error) => error,
            Self::NotFound => StoreError::Rejected {
                path,
                status: 404,
                message: "not found".into(),
            },
            Self::CasMismatch => StoreError::Rejected {
                path,
                status: 400,
                message: CAS_MISMATCH.into(),
            },
        }
    }
}

/// A read's result, with a missing key as `None`.
fn found<T>(
    result: Result<T, CallError>,
    path: impl FnOnce() -> String,
) -> Result<Option<T>, StoreError> {
    match result {
        Ok(value) => Ok(Some(value)),
        Err(CallError::NotFound) => Ok(None),
        Err(other) => Err(other.into_store_error(path())),
    }
}

fn expect_ok<T>(
    result: Result<T, CallError>,
    path: impl FnOnce() -> String,
) -> Result<T, StoreError> {
    result.map_err(|e| e.into_store_error(path()))
}

/// Sorts a vaultrs error by who is to blame. Vault's error texts never carry request data.
fn classify(address: &str, path: &str, error: ClientError) -> CallError {
    use rustify::errors::ClientError as Http;

    match error {
        ClientError::APIError { code: 404, .. } => CallError::NotFound,
        ClientError::APIError { code: 400, errors }
            if errors.iter().any(|e| e.contains(CAS_MISMATCH)) =>
        {
            CallError::CasMismatch
        }
        ClientError::APIError { code: 403, .. } => {
            CallError::Failed(StoreError::PermissionDenied { path: path.into() })
        }
        ClientError::APIError { code, errors } => CallError::Failed(StoreError::Rejected {
            path: path.into(),
            status: code,
            message: summary(&errors),
        }),
        ClientError::RestClientError {
            source: Http::RequestError { source, .. } | Http::ResponseError { source },
        } => CallError::Failed(StoreError::Unreachable {
            address: address.into(),
            source: source.into(),
        }),
        ClientError::RestClientError {
            source: Http::ServerResponseError { code, .. },
        } => CallError::Failed(StoreError::Rejected {
            path: path.into(),
            status: code,
            message: "the answer was not a vault error document".into(),
        }),
        ClientError::RestClientError { .. }
        | ClientError::JsonParseError { .. }
        | ClientError::ResponseEmptyError
        | ClientError::ResponseDataEmptyError => CallError::Failed(StoreError::Malformed {
            path: path.into(),
            reason: "vault's answer could not be parsed".into(),
        }),
        other => CallError::Failed(StoreError::Malformed {
            path: path.into(),
            reason: format!("the vault call failed: {other}"),
        }),
    }
}

fn summary(errors: &[String]) -> String {
    let joined = errors.join("; ");
    let joined = joined.trim();
    if joined.is_empty() {
        return "no reason given".into();
    }
    truncate(joined, MAX_ERROR_MESSAGE)
}

/// `value` cut to at most `max` bytes on a character boundary, ending in '…' when cut.
fn truncate(value: &str, max: usize) -> String {
    if value.len() <= max {
        return value.to_owned();
    }
    let mut end = max - '…'.len_utf8();
    while !value.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &value[..end])
}

fn to_value<T: Serialize>(value: &T) -> Value {
    serde_json::to_value(value).unwrap_or(Value::Null)
}

/// The custom metadata of a certificate: every fact except id and account (the path has
/// them). Vault refuses empty values, so empty facts are left out and read back as empty.
fn facts_of(record: &CertificateRecord) -> HashMap<String, String> {
    let Value::Object(fields) = to_value(record) else {
        return HashMap::new();
    };
    fields
        .into_iter()
        .filter(|(field, _)| field != "id" && field != "account")
        .filter_map(|(field, value)| match value {
            Value::String(text) if !text.is_empty() => {
                Some((field, truncate(&text, MAX_METADATA_VALUE)))
            }
            _ => None,
        })
        .collect()
}

fn record_from_facts(
    account: &AccountId,
    id: CertificateId,
    facts: &HashMap<String, String>,
) -> Result<CertificateRecord, String> {
    let mut fields = serde_json::Map::new();
    for optional in ["subject", "issuer", "serial"] {
        fields.insert(optional.into(), Value::String(String::new()));
    }
    for (field, value) in facts {
        fields.insert(field.clone(), Value::String(value.clone()));
    }
    fields.insert("id".into(), Value::from(id.0));
    fields.insert("account".into(), Value::String(account.as_str().into()));
    serde_json::from_value(Value::Object(fields)).map_err(|e| format!("the facts are invalid: {e}"))
}

/// What `sequence` and `revision` hold: only their version numbers matter.
#[derive(Serialize)]
struct Stamp {
    #[serde(with = "time::serde::rfc3339")]
    at: OffsetDateTime,
}

impl Stamp {
    fn now() -> Self {
        Self { at: now() }
    }
}

/// The client with the current token, and how to get a new token when Vault refuses it.
struct Session {
    /// Everything but the token; cloned with a token to build each client.
    settings: VaultClientSettings,
    address: String,
    credentials: Credentials,
    client: RwLock<Arc<VaultClient>>,
    /// One AppRole login at a time.
    login: tokio::sync::Mutex<()>,
}

enum Credentials {
    /// From the environment, read once.
    Environment,
    File {
        path: PathBuf,
        seen: Mutex<Option<FileStamp>>,
    },
    AppRole(AppRole),
}

struct AppRole {
    mount: String,
    role_id_file: PathBuf,
    secret_id_file: PathBuf,
}

impl Credentials {
    fn method(&self) -> &'static str {
        match self {
            Self::Environment => "token_env",
            Self::File { .. } => "token_file",
            Self::AppRole(_) => "approle",
        }
    }
}

/// Tells whether a token file changed since it was read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FileStamp {
    modified: Option<SystemTime>,
    len: u64,
}

impl FileStamp {
    fn of(path: &Path) -> std::io::Result<Self> {
        let metadata = std::fs::metadata(path)?;
        Ok(Self {
            modified: metadata.modified().ok(),
            len: metadata.len(),
        })
    }
}

impl Session {
    async fn open(config: &VaultConfig) -> Result<Self, StoreError> {
        let address = url::Url::parse(&config.address).map_err(|_| StoreError::Misconfigured {
            reason: format!("address {:?} is not a URL", config.address),
        })?;
        let settings = VaultClientSettings {
            address,
            ca_certs: config
                .ca_file
                .iter()
                .map(|p| p.display().to_string())
                .collect(),
            identity: None,
            timeout: Some(Duration::from_secs(config.request_timeout_seconds)),
            token: String::new(),
            verify: true,
            version: 1,
            wrapping: false,
            namespace: None,
            proxy: None,
        };

        let (credentials, token) = match &config.auth {
            VaultAuth::Token {
                token_file: Some(path),
                ..
            } => {
                let stamp = FileStamp::of(path).map_err(|e| unreadable(path, e))?;
                let token = read_secret_file(path)?;
                let seen = Mutex::new(Some(stamp));
                let path = path.clone();
                (Credentials::File { path, seen }, token)
            }
            VaultAuth::Token { token_env, .. } => {
                let name = token_env.as_deref().unwrap_or(DEFAULT_TOKEN_ENV);
                let token = std::env::var(name)
                    .ok()
                    .filter(|t| !t.trim().is_empty())
                    .ok_or_else(|| StoreError::Misconfigured {
                        reason: format!("the environment variable {name} holds no vault token"),
                    })?;
                (Credentials::Environment, SecretString::from(token.trim()))
            }
            VaultAuth::Approle {
                mount,
                role_id_file,
                secret_id_file,
            } => {
                let approle = AppRole {
                    mount: mount.clone(),
                    role_id_file: role_id_file.clone(),
                    secret_id_file: secret_id_file.clone(),
                };
                let token = approle.login(&settings, &config.address).await?;
                (Credentials::AppRole(approle), token)
            }
        };

        let client = client_with(&settings, &token)?;
        Ok(Self {
            settings,
            address: config.address.clone(),
            credentials,
            client: RwLock::new(Arc::new(client)),
            login: tokio::sync::Mutex::new(()),
        })
    }

    fn current(&self) -> Arc<VaultClient> {
        Arc::clone(&self.client.read().unwrap_or_else(PoisonError::into_inner))
    }

    fn replace(&self, client: VaultClient) {
        *self.client.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(client);
    }

    /// The client to use now; a token file that changed since the last call is read again.
    fn client(&self) -> Arc<VaultClient> {
        if let Credentials::File { path, seen } = &self.credentials {
            self.reload_token_file(path, seen, false);
        }
        self.current()
    }

    /// After Vault refused `used`'s token: gets a new token if there is one; true if so.
    async fn renew(&self, used: &Arc<VaultClient>) -> Result<bool, StoreError> {
        match &self.credentials {
            Credentials::Environment => Ok(false),
            Credentials::File { path, seen } => Ok(self.reload_token_file(path, seen, true)),
            Credentials::AppRole(approle) => {
                let _one_login = self.login.lock().await;
                if !Arc::ptr_eq(used, &self.current()) {
                    // Another call logged in while this one waited.
                    return Ok(true);
                }
                let token = approle.login(&self.settings, &self.address).await?;
                self.replace(client_with(&self.settings, &token)?);
                info!(approle_mount = %approle.mount, "logged in to vault again");
                Ok(true)
            }
        }
    }

    /// Reads the token file again if it changed (always, if `force`); true if the token did.
    /// A file that cannot be read keeps the current token: it may be mid-rotation.
    fn reload_token_file(&self, path: &Path, seen: &Mutex<Option<FileStamp>>, force: bool) -> bool {
        let stamp = match FileStamp::of(path) {
            Ok(stamp) => stamp,
            Err(error) => {
                warn!(path = %path.display(), %error, "vault token file unreadable; token kept");
                return false;
            }
        };
        let mut seen = seen.lock().unwrap_or_else(PoisonError::into_inner);
        if !force && *seen == Some(stamp) {
            return false;
        }

        let token = match read_secret_file(path) {
            Ok(token) => token,
            Err(error) => {
                warn!(path = %path.display(), %error, "vault token file unreadable; token kept");
                return false;
            }
        };
        *seen = Some(stamp);
        if token.expose_secret() == self.current().settings.token {
            return false;
        }
        match client_with(&self.settings, &token) {
            Ok(client) => {
                self.replace(client);
                info!(path = %path.display(), "vault token file changed; new token in use");
                true
            }
            Err(error) => {
                warn!(%error, "vault client could not be rebuilt; token kept");
                false
            }
        }
    }
}

fn client_with(
    settings: &VaultClientSettings,
    token: &SecretString,
) -> Result<VaultClient, StoreError> {
    let mut settings = settings.clone();
    settings.token = token.expose_secret().to_owned();
    VaultClient::new(settings).map_err(|error| StoreError::Misconfigured {
        reason: match error {
            ClientError::FileReadError { path, .. } => format!("the ca_file {path} is unreadable"),
            ClientError::ParseCertificateError { path, .. } => {
                format!("the ca_file {path} holds no PEM certificate")
            }
            other => format!("the vault client could not be built: {other}"),
        },
    })
}

impl AppRole {
    async fn login(
        &self,
        settings: &VaultClientSettings,
        address: &str,
    ) -> Result<SecretString, StoreError> {
        // Read at every login: the secret id may have been rotated since the last one.
        let role_id = read_secret_file(&self.role_id_file)?;
        let secret_id = read_secret_file(&self.secret_id_file)?;
        let client = client_with(settings, &SecretString::from(""))?;

        let path = format!("auth/{}/login", self.mount);
        let login = vaultrs::auth::approle::login(
            &client,
            &self.mount,
            role_id.expose_secret(),
            secret_id.expose_secret(),
        )
        .await;
        match login {
            Ok(auth) => Ok(SecretString::from(auth.client_token)),
            // Vault answers 400 "invalid role or secret ID" to a refused login.
            Err(ClientError::APIError {
                code: 400 | 403, ..
            }) => Err(StoreError::PermissionDenied { path }),
            Err(error) => Err(classify(address, &path, error).into_store_error(path)),
        }
    }
}

/// A token, role id or secret id from a file, without surrounding whitespace.
fn read_secret_file(path: &Path) -> Result<SecretString, StoreError> {
    let text = std::fs::read_to_string(path).map_err(|e| unreadable(path, e))?;
    let value = text.trim();
    if value.is_empty() {
        return Err(StoreError::Misconfigured {
            reason: format!("{} is empty", path.display()),
        });
    }
    Ok(SecretString::from(value))
}

fn unreadable(path: &Path, source: std::io::Error) -> StoreError {
    StoreError::CredentialsUnreadable {
        path: path.display().to_string(),
        source,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(yaml: &str) -> Result<VaultConfig, String> {
        serde_norway::from_str(yaml).map_err(|e| e.to_string())
    }

    #[test]
    fn reads_a_minimal_config_with_defaults() {
        let config = config("address: https://vault.example:8200\n").expect("valid");

        assert_eq!(config, VaultConfig::new("https://vault.example:8200"));
        assert!(config.problems().is_empty(), "{:?}", config.problems());
    }

    #[test]
    fn reads_an_approle_store_section() {
        let yaml = "kind: vault\naddress: https://vault.example\nauth:\n  method: approle\n  \
                    role_id_file: /run/role-id\n  secret_id_file: /run/secret-id\n";

        let parsed: super::super::StoreConfig = serde_norway::from_str(yaml).expect("valid");

        let mut expected = VaultConfig::new("https://vault.example");
        expected.auth = VaultAuth::Approle {
            mount: DEFAULT_APPROLE_MOUNT.into(),
            role_id_file: "/run/role-id".into(),
            secret_id_file: "/run/secret-id".into(),
        };
        assert_eq!(parsed, super::super::StoreConfig::Vault(expected));
    }

    #[test]
    fn refuses_unknown_keys_in_the_auth_section() {
        let error = config("address: http://x\nauth:\n  method: token\n  token: abc\n")
            .expect_err("unknown key");

        assert!(error.contains("token"), "{error}");
    }

    #[test]
    fn reports_every_unusable_setting() {
        let config = VaultConfig {
            address: "vault:8200".into(),
            mount: "/secret".into(),
            prefix: String::new(),
            auth: VaultAuth::Approle {
                mount: "approle".into(),
                role_id_file: "/nonexistent/role-id".into(),
                secret_id_file: "/nonexistent/secret-id".into(),
            },
            request_timeout_seconds: 0,
            ca_file: None,
        };

        let fields: Vec<String> = config.problems().into_iter().map(|(f, _)| f).collect();

        assert_eq!(
            fields,
            [
                "address",
                "mount",
                "prefix",
                "request_timeout_seconds",
                "auth.role_id_file",
                "auth.secret_id_file"
            ]
        );
    }

    #[test]
    fn refuses_two_token_sources() {
        let mut config = VaultConfig::new("https://vault.example");
        config.auth = VaultAuth::Token {
            token_file: Some("/dev/null".into()),
            token_env: Some("VAULT_TOKEN".into()),
        };

        assert_eq!(config.problems()[0].0, "auth");
    }

    #[test]
    fn cuts_long_metadata_values_on_a_character_boundary() {
        let subject = "é".repeat(400);

        let cut = truncate(&subject, MAX_METADATA_VALUE);

        assert!(cut.len() <= MAX_METADATA_VALUE);
        assert!(cut.ends_with('…'));
    }
}
