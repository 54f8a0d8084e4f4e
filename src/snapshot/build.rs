//! Building a [`Snapshot`] from the store and the configuration's static mappings.
//!
//! Store failures abort the build (a partial view of the store must never replace a complete
//! one); a bad entry is skipped with its reason and the rest still load.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

use pingora::utils::tls::{parse_x509, CertKey, WrappedX509};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;
use sha2::{Digest, Sha256};
use time::OffsetDateTime;
use tracing::debug;
use x509_parser::prelude::{FromDer, X509Certificate};

use super::{Binding, Origin, PresentedCertificate, SkipReason, Skipped, Snapshot, Trust};
use crate::config::{CertificateSource, StaticMapping};
use crate::ids::{AccountId, CertificateId, Fingerprint};
use crate::p12::{self, ClientIdentity, Code, DiagnosisPolicy, Report};
use crate::store::{CertificateRecord, Mapping, Store, StoreError};

/// Entries kept in each content cache before it is emptied; far above any real configuration.
const CACHE_LIMIT: usize = 100_000;

/// SHA-256 over parts, each length-prefixed so that different splits never collide.
fn digest_of(parts: &[&[u8]]) -> [u8; 32] {
    let mut hasher = Sha256::new();
    for part in parts {
        hasher.update((part.len() as u64).to_be_bytes());
        hasher.update(part);
    }
    hasher.finalize().into()
}

/// A static mapping, as the builder takes it.
pub type StaticEntry = StaticMapping;

/// Why a whole build failed; the previous snapshot stays in place.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("the store could not be read")]
    Store(#[from] StoreError),
}

/// A decoded certificate, ready for pingora.
#[derive(Debug)]
struct Loaded {
    cert_key: Arc<CertKey>,
    presented: PresentedCertificate,
    leaf: Vec<u8>,
}

/// A stored certificate is decoded again only when its fingerprint or update time moved.
#[derive(Debug)]
struct Cached {
    updated_at: OffsetDateTime,
    fingerprint: Fingerprint,
    loaded: Arc<Loaded>,
}

enum EntryError {
    Store(StoreError),
    Skip(SkipReason, String),
}

impl From<StoreError> for EntryError {
    fn from(e: StoreError) -> Self {
        Self::Store(e)
    }
}

/// Builds snapshots; keeps decoded certificates between builds.
#[derive(Debug)]
pub struct Builder {
    store: Arc<dyn Store>,
    expires_soon_days: i64,
    cache: Mutex<HashMap<(AccountId, CertificateId), Cached>>,
    /// Identities from files, by digest of their bytes: mappings that name the same files share
    /// one decoded identity, and an unchanged file is not decoded again.
    files: Mutex<HashMap<[u8; 32], Arc<Loaded>>>,
    /// Trust anchors by digest of their PEM: one parsed bundle however many mappings use it.
    trusts: Mutex<HashMap<[u8; 32], Trust>>,
}

impl Builder {
    pub fn new(store: Arc<dyn Store>, expires_soon_days: i64) -> Self {
        Self {
            store,
            expires_soon_days,
            cache: Mutex::new(HashMap::new()),
            files: Mutex::new(HashMap::new()),
            trusts: Mutex::new(HashMap::new()),
        }
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    pub async fn build(&self, statics: &[StaticEntry]) -> Result<Snapshot, BuildError> {
        // Read first: a write racing with this build moves the revision again, so the next
        // poll rebuilds.
        let revision = self.store.revision().await?;
        let mut skipped = Vec::new();
        let mut bindings = Vec::new();

        for (index, entry) in statics.iter().enumerate() {
            match self.static_binding(index, entry).await {
                Ok(binding) => bindings.push(binding),
                Err(EntryError::Store(e)) => return Err(e.into()),
                Err(EntryError::Skip(reason, detail)) => {
                    skipped.push(skip(
                        &Origin::Config { index },
                        &entry.account,
                        reason,
                        detail,
                    ));
                }
            }
        }
        let mut live = Vec::new();
        for account in self.store.accounts().await? {
            let records: HashMap<CertificateId, CertificateRecord> = self
                .store
                .certificates(&account)
                .await?
                .into_iter()
                .map(|r| (r.id, r))
                .collect();
            for mapping in self.store.mappings(&account).await? {
                if !mapping.spec.enabled {
                    continue;
                }
                let origin = Origin::Store {
                    mapping_id: mapping.id,
                };
                match self.stored_binding(&mapping, &records).await {
                    Ok(binding) => bindings.push(binding),
                    Err(EntryError::Store(e)) => return Err(e.into()),
                    Err(EntryError::Skip(reason, detail)) => {
                        skipped.push(skip(&origin, &account, reason, detail));
                    }
                }
            }
            live.extend(records.into_keys().map(|id| (account.clone(), id)));
        }
        self.forget_all_but(&live);

        let mut snapshot = Snapshot::new(revision, Vec::new());
        for binding in bindings {
            let (origin, account) = (binding.origin.clone(), binding.account.clone());
            let key = format!(
                "{} {} {}",
                binding.service,
                binding.url_match_label(),
                binding.url
            );
            if !snapshot.insert(binding) {
                let detail = format!("another mapping already binds {key}");
                skipped.push(skip(&origin, &account, SkipReason::Duplicate, detail));
            }
        }
        snapshot.skipped = skipped;
        Ok(snapshot)
    }

    async fn stored_binding(
        &self,
        mapping: &Mapping,
        records: &HashMap<CertificateId, CertificateRecord>,
    ) -> Result<Binding, EntryError> {
        let spec = &mapping.spec;
        let Some(record) = records.get(&spec.certificate_id) else {
            let detail = format!("certificate {} does not exist", spec.certificate_id);
            return Err(EntryError::Skip(SkipReason::CertificateMissing, detail));
        };
        let loaded = self.stored_certificate(record).await?;
        let trust = match &spec.ca_pem {
            Some(pem) => self.trust(pem.as_bytes())?,
            None => Trust::system(),
        };
        Ok(binding(
            Origin::Store {
                mapping_id: mapping.id,
            },
            mapping.account.clone(),
            spec.service.clone(),
            spec.url.clone(),
            spec.url_match,
            &loaded,
            trust,
            spec.verify_server,
        ))
    }

    async fn stored_certificate(
        &self,
        record: &CertificateRecord,
    ) -> Result<Arc<Loaded>, EntryError> {
        let key = (record.account.clone(), record.id);
        if let Some(loaded) = self.cached(&key, record) {
            if loaded.presented.not_after < OffsetDateTime::now_utc() {
                let detail = format!("certificate {} has expired", record.id);
                return Err(EntryError::Skip(SkipReason::CertificateExpired, detail));
            }
            return Ok(loaded);
        }

        let secret = self
            .store
            .certificate_secret(&record.account, record.id)
            .await?;
        let diagnosis = p12::diagnose(secret.der, secret.password, &self.policy());
        let usable = diagnosis
            .into_usable()
            .map_err(|report| unusable(&report))?;
        let loaded = Arc::new(load(usable.identity(), Some(record.id))?);
        debug!(account = %record.account, certificate = %record.id, "certificate decoded");
        if let Ok(mut cache) = self.cache.lock() {
            let cached = Cached {
                updated_at: record.updated_at,
                fingerprint: record.fingerprint.clone(),
                loaded: Arc::clone(&loaded),
            };
            cache.insert(key, cached);
        }
        Ok(loaded)
    }

    fn cached(
        &self,
        key: &(AccountId, CertificateId),
        record: &CertificateRecord,
    ) -> Option<Arc<Loaded>> {
        let cache = self.cache.lock().ok()?;
        let cached = cache.get(key)?;
        let fresh =
            cached.updated_at == record.updated_at && cached.fingerprint == record.fingerprint;
        fresh.then(|| Arc::clone(&cached.loaded))
    }

    fn forget_all_but(&self, live: &[(AccountId, CertificateId)]) {
        if let Ok(mut cache) = self.cache.lock() {
            let live: std::collections::HashSet<_> = live.iter().collect();
            cache.retain(|key, _| live.contains(key));
        }
    }

    async fn static_binding(
        &self,
        index: usize,
        entry: &StaticEntry,
    ) -> Result<Binding, EntryError> {
        let loaded = match &entry.certificate {
            CertificateSource::Stored { name } => {
                let records = self.store.certificates(&entry.account).await?;
                let Some(record) = records.iter().find(|r| &r.name == name) else {
                    let detail = format!("no stored certificate is named {name:?}");
                    return Err(EntryError::Skip(SkipReason::CertificateMissing, detail));
                };
                self.stored_certificate(record).await?
            }
            CertificateSource::P12 {
                file,
                password_file,
            } => {
                let der = read(file)?;
                let password = read(password_file)?;
                let digest = digest_of(&[&der, &password]);
                match self.file_identity(&digest) {
                    Some(loaded) => loaded,
                    None => {
                        let password = String::from_utf8_lossy(&password);
                        let password = password.strip_suffix('\n').unwrap_or(&password);
                        let diagnosis = p12::diagnose(der, password.into(), &self.policy());
                        let usable = diagnosis
                            .into_usable()
                            .map_err(|report| unusable(&report))?;
                        self.remember_file_identity(digest, load(usable.identity(), None)?)
                    }
                }
            }
            CertificateSource::Pem {
                cert_file,
                key_file,
            } => {
                let (chain, key) = (read(cert_file)?, read(key_file)?);
                let digest = digest_of(&[&chain, &key]);
                match self.file_identity(&digest) {
                    Some(loaded) => loaded,
                    None => {
                        let (identity, _) = p12::diagnose_pem(&chain, &key, &self.policy())
                            .map_err(|report| unusable(&report))?;
                        self.remember_file_identity(digest, load(&identity, None)?)
                    }
                }
            }
        };
        self.static_binding_with(index, entry, loaded)
    }

    fn static_binding_with(
        &self,
        index: usize,
        entry: &StaticEntry,
        loaded: Arc<Loaded>,
    ) -> Result<Binding, EntryError> {
        let trust = match &entry.ca_file {
            Some(path) => self.trust(&read(path)?)?,
            None => Trust::system(),
        };
        Ok(binding(
            Origin::Config { index },
            entry.account.clone(),
            entry.service.clone(),
            entry.url.clone(),
            entry.url_match,
            &loaded,
            trust,
            entry.verify_server,
        ))
    }

    fn file_identity(&self, digest: &[u8; 32]) -> Option<Arc<Loaded>> {
        let cached = self.files.lock().ok()?.get(digest).cloned()?;
        // An expired file is decoded again, so the diagnosis reports it.
        (cached.presented.not_after >= OffsetDateTime::now_utc()).then_some(cached)
    }

    fn remember_file_identity(&self, digest: [u8; 32], loaded: Loaded) -> Arc<Loaded> {
        let loaded = Arc::new(loaded);
        if let Ok(mut files) = self.files.lock() {
            if files.len() >= CACHE_LIMIT {
                files.clear();
            }
            files.insert(digest, Arc::clone(&loaded));
        }
        loaded
    }

    fn trust(&self, pem: &[u8]) -> Result<Trust, EntryError> {
        let digest = digest_of(&[pem]);
        if let Some(trust) = self
            .trusts
            .lock()
            .ok()
            .and_then(|t| t.get(&digest).cloned())
        {
            return Ok(trust);
        }
        let trust = trust_from_pem(pem)?;
        if let Ok(mut trusts) = self.trusts.lock() {
            if trusts.len() >= CACHE_LIMIT {
                trusts.clear();
            }
            trusts.insert(digest, trust.clone());
        }
        Ok(trust)
    }

    fn policy(&self) -> DiagnosisPolicy {
        DiagnosisPolicy {
            expires_soon: time::Duration::days(self.expires_soon_days),
            ..DiagnosisPolicy::default()
        }
    }
}

impl Binding {
    fn url_match_label(&self) -> &'static str {
        match self.url_match {
            crate::store::UrlMatch::Exact => "exact",
            crate::store::UrlMatch::Prefix => "prefix",
        }
    }
}

#[allow(
    clippy::too_many_arguments,
    reason = "a constructor of the binding's parts"
)]
fn binding(
    origin: Origin,
    account: AccountId,
    service: crate::ids::ServiceName,
    url: String,
    url_match: crate::store::UrlMatch,
    loaded: &Loaded,
    trust: Trust,
    verify_server: bool,
) -> Binding {
    let group_key = pool_key(&loaded.leaf, &trust.id, &account);
    Binding {
        origin,
        account,
        service,
        url,
        url_match,
        certificate: loaded.presented.clone(),
        cert_key: Arc::clone(&loaded.cert_key),
        trust,
        verify_server,
        group_key,
    }
}

/// Pingora keys pooled connections by the client certificate's serial alone; two tenants'
/// certificates with equal serials would share connections. This key separates them by the
/// whole leaf, the trust anchors and the account.
fn pool_key(leaf: &[u8], trust_id: &str, account: &AccountId) -> u64 {
    let mut hasher = Sha256::new();
    hasher.update(Sha256::digest(leaf));
    hasher.update(trust_id.as_bytes());
    hasher.update([0]);
    hasher.update(account.as_str().as_bytes());
    let digest = hasher.finalize();
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    u64::from_be_bytes(first)
}

fn load(identity: &ClientIdentity, id: Option<CertificateId>) -> Result<Loaded, EntryError> {
    let chain: Vec<Vec<u8>> = identity.chain.iter().map(|c| c.to_vec()).collect();
    let leaf = chain[0].clone();
    let (_, parsed) = X509Certificate::from_der(&leaf).map_err(|e| {
        EntryError::Skip(
            SkipReason::CertificateUnusable,
            format!("leaf cannot be parsed: {e}"),
        )
    })?;
    let presented = PresentedCertificate {
        id,
        fingerprint: Fingerprint::of_der(&leaf),
        subject: parsed.subject().to_string(),
        not_after: parsed.validity().not_after.to_datetime(),
    };
    // Safe to construct: the diagnosis parsed every chain certificate and loaded the key
    // into rustls, the two things CertKey and pingora's connector would otherwise panic on.
    let cert_key = CertKey::new(chain, identity.key.secret_pkcs8_der().to_vec());
    Ok(Loaded {
        cert_key: Arc::new(cert_key),
        presented,
        leaf,
    })
}

/// Parses a PEM bundle of trust anchors; every certificate must parse.
fn trust_from_pem(pem: &[u8]) -> Result<Trust, EntryError> {
    let bad = |detail: String| EntryError::Skip(SkipReason::BadCaBundle, detail);
    let mut ders = Vec::new();
    for item in CertificateDer::pem_slice_iter(pem) {
        let der = item.map_err(|e| bad(format!("the CA bundle is not valid PEM: {e}")))?;
        X509Certificate::from_der(&der)
            .map_err(|e| bad(format!("a CA certificate cannot be parsed: {e}")))?;
        ders.push(der.to_vec());
    }
    if ders.is_empty() {
        return Err(bad("the CA bundle holds no certificate".into()));
    }
    let mut hasher = Sha256::new();
    for der in &ders {
        hasher.update(der);
    }
    let id = hex::encode(hasher.finalize());
    let wrapped: Vec<WrappedX509> = ders
        .into_iter()
        .map(|der| WrappedX509::new(der, parse_x509))
        .collect();
    Ok(Trust {
        ca: Some(Arc::from(wrapped)),
        id,
    })
}

fn read(path: &Path) -> Result<Vec<u8>, EntryError> {
    std::fs::read(path).map_err(|e| {
        EntryError::Skip(
            SkipReason::FileUnreadable,
            format!("{}: {e}", path.display()),
        )
    })
}

fn unusable(report: &Report) -> EntryError {
    let codes: Vec<&str> = report.problems.iter().map(|f| f.code.as_str()).collect();
    let reason = if report.problems.iter().any(|f| f.code == Code::Expired) {
        SkipReason::CertificateExpired
    } else {
        SkipReason::CertificateUnusable
    };
    EntryError::Skip(
        reason,
        format!("the certificate is unusable: {}", codes.join(", ")),
    )
}

fn skip(origin: &Origin, account: &AccountId, reason: SkipReason, detail: String) -> Skipped {
    Skipped {
        entry: origin.label(),
        account: account.to_string(),
        reason,
        detail,
    }
}
