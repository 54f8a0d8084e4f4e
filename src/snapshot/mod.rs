//! The forwarding snapshot: an immutable index from account + service + URL to a ready-to-use
//! client identity, rebuilt off the request path and swapped in atomically.
//!
//! The proxy reads the current snapshot without a lock ([`SnapshotHandle::load`]); a rebuild
//! that fails keeps the previous snapshot in place.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::SystemTime;

use arc_swap::ArcSwap;
use pingora::utils::tls::{CertKey, WrappedX509};
use serde::Serialize;
use time::OffsetDateTime;
use tokio::sync::{watch, Notify};

use crate::ids::{AccountId, CertificateId, Fingerprint, MappingId, ServiceName};
use crate::store::UrlMatch;

mod build;
mod refresh;

pub use build::{BuildError, Builder, StaticEntry};
pub use refresh::Refresher;

/// Where a binding came from: the store (with its mapping id) or the configuration file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "source", rename_all = "snake_case")]
pub enum Origin {
    Store { mapping_id: MappingId },
    Config { index: usize },
}

impl Origin {
    /// A short label for logs: `store:12` or `config:0`.
    pub fn label(&self) -> String {
        match self {
            Self::Store { mapping_id } => format!("store:{mapping_id}"),
            Self::Config { index } => format!("config:{index}"),
        }
    }
}

/// The certificate a binding presents, as logs and the explain call describe it.
#[derive(Debug, Clone, Serialize)]
pub struct PresentedCertificate {
    pub id: Option<CertificateId>,
    pub fingerprint: Fingerprint,
    pub subject: String,
    #[serde(with = "time::serde::rfc3339")]
    pub not_after: OffsetDateTime,
}

/// The partner's trust anchors: the system roots, or a bundle from the mapping.
#[derive(Clone)]
pub struct Trust {
    /// `None` means the system roots.
    pub ca: Option<Arc<[WrappedX509]>>,
    /// SHA-256 over the bundle's DER certificates, or `system`; part of the pool key.
    pub id: String,
}

impl std::fmt::Debug for Trust {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Trust").field("id", &self.id).finish()
    }
}

impl Trust {
    pub fn system() -> Self {
        Self {
            ca: None,
            id: "system".into(),
        }
    }
}

/// One usable mapping: everything the proxy needs to build the upstream peer.
#[derive(Debug)]
pub struct Binding {
    pub origin: Origin,
    pub account: AccountId,
    pub service: ServiceName,
    pub url: String,
    pub url_match: UrlMatch,
    pub certificate: PresentedCertificate,
    /// Parsed and checked once, when the snapshot was built.
    pub cert_key: Arc<CertKey>,
    pub trust: Trust,
    pub verify_server: bool,
    /// Connections made for this binding are pooled apart from every other identity.
    pub group_key: u64,
}

/// Why an entry was left out of the snapshot; the others still load.
#[derive(Debug, Clone, Serialize)]
pub struct Skipped {
    pub entry: String,
    pub account: String,
    pub reason: SkipReason,
    pub detail: String,
}

/// A closed set, usable as a metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SkipReason {
    CertificateMissing,
    CertificateUnusable,
    CertificateExpired,
    FileUnreadable,
    BadCaBundle,
    Duplicate,
}

impl SkipReason {
    pub const ALL: [SkipReason; 6] = [
        Self::CertificateMissing,
        Self::CertificateUnusable,
        Self::CertificateExpired,
        Self::FileUnreadable,
        Self::BadCaBundle,
        Self::Duplicate,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::CertificateMissing => "certificate_missing",
            Self::CertificateUnusable => "certificate_unusable",
            Self::CertificateExpired => "certificate_expired",
            Self::FileUnreadable => "file_unreadable",
            Self::BadCaBundle => "bad_ca_bundle",
            Self::Duplicate => "duplicate",
        }
    }
}

/// How a request URL matched.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum MatchKind {
    Exact,
    /// The mapping's URL is a prefix of the request's at a path segment boundary.
    Prefix,
}

impl MatchKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Exact => "exact",
            Self::Prefix => "prefix",
        }
    }
}

#[derive(Debug, Default)]
struct UrlIndex {
    exact: HashMap<String, Arc<Binding>>,
    /// Keyed by the prefix without a trailing '/'.
    prefix: HashMap<String, Arc<Binding>>,
}

/// The immutable lookup structure.
#[derive(Debug, Default)]
pub struct Snapshot {
    pub revision: u64,
    pub built_at: Option<SystemTime>,
    pub skipped: Vec<Skipped>,
    bindings: usize,
    /// account -> service -> URLs. Nested maps let a lookup borrow the request's strings.
    index: HashMap<String, HashMap<String, UrlIndex>>,
}

impl Snapshot {
    pub fn new(revision: u64, skipped: Vec<Skipped>) -> Self {
        Self {
            revision,
            built_at: Some(SystemTime::now()),
            skipped,
            bindings: 0,
            index: HashMap::new(),
        }
    }

    /// Adds a binding; `false` when its key is already taken (the first one stays).
    pub fn insert(&mut self, binding: Binding) -> bool {
        let urls = self
            .index
            .entry(binding.account.as_str().to_owned())
            .or_default()
            .entry(binding.service.as_str().to_owned())
            .or_default();
        let (map, key) = match binding.url_match {
            UrlMatch::Exact => (&mut urls.exact, binding.url.clone()),
            UrlMatch::Prefix => (&mut urls.prefix, prefix_key(&binding.url).to_owned()),
        };
        if map.contains_key(&key) {
            return false;
        }
        map.insert(key, Arc::new(binding));
        self.bindings += 1;
        true
    }

    /// Number of usable bindings.
    pub fn len(&self) -> usize {
        self.bindings
    }

    pub fn is_empty(&self) -> bool {
        self.bindings == 0
    }

    /// Every binding, for reports; not for the request path.
    pub fn bindings(&self) -> impl Iterator<Item = &Arc<Binding>> {
        self.index
            .values()
            .flat_map(|services| services.values())
            .flat_map(|urls| urls.exact.values().chain(urls.prefix.values()))
    }

    /// The binding for a request: an exact URL match first, then the longest prefix. The cost
    /// depends on the URL's number of path segments, never on the number of mappings.
    pub fn lookup(
        &self,
        account: &str,
        service: &str,
        url: &str,
    ) -> Option<(&Arc<Binding>, MatchKind)> {
        let urls = self.index.get(account)?.get(service)?;
        if let Some(binding) = urls.exact.get(url) {
            return Some((binding, MatchKind::Exact));
        }
        if urls.prefix.is_empty() {
            return None;
        }
        prefix_candidates(url)
            .find_map(|candidate| urls.prefix.get(candidate))
            .map(|binding| (binding, MatchKind::Prefix))
    }
}

/// A prefix mapping's key: its URL without the query and without trailing slashes.
fn prefix_key(url: &str) -> &str {
    let end = url.find(['?', '#']).unwrap_or(url.len());
    url[..end].trim_end_matches('/')
}

/// The request URL cut at each path segment boundary, longest first, down to the bare origin.
fn prefix_candidates(url: &str) -> impl Iterator<Item = &str> {
    let base = prefix_key(url);
    let origin_end = base
        .find("://")
        .map(|scheme_end| scheme_end + 3)
        .and_then(|host_start| base[host_start..].find('/').map(|i| host_start + i))
        .unwrap_or(base.len());
    let cuts = base[origin_end..]
        .rmatch_indices('/')
        .map(move |(i, _)| &base[..origin_end + i]);
    std::iter::once(base)
        .chain(cuts)
        .map(|c| c.trim_end_matches('/'))
}

/// What the proxy and the admin API share: the current snapshot and a way to ask for a new one.
#[derive(Debug)]
pub struct SnapshotHandle {
    current: ArcSwap<Snapshot>,
    /// Wakes the refresher for an immediate rebuild.
    wake: Notify,
    /// Counts finished rebuild attempts, successful or not; lets a caller wait for the next.
    attempts: watch::Sender<u64>,
    /// The last rebuild's failure, if the last attempt failed.
    last_error: std::sync::Mutex<Option<String>>,
    /// The store, once the refresher has opened it; the admin API writes through it.
    store: std::sync::OnceLock<Arc<dyn crate::store::Store>>,
}

impl Default for SnapshotHandle {
    fn default() -> Self {
        Self {
            current: ArcSwap::from_pointee(Snapshot::default()),
            wake: Notify::new(),
            attempts: watch::channel(0).0,
            last_error: std::sync::Mutex::new(None),
            store: std::sync::OnceLock::new(),
        }
    }
}

impl SnapshotHandle {
    /// The current snapshot; lock-free.
    pub fn load(&self) -> Arc<Snapshot> {
        self.current.load_full()
    }

    /// Asks for a rebuild now and waits until one has finished (or the refresher is gone).
    pub async fn rebuild_now(&self) {
        let mut attempts = self.attempts.subscribe();
        attempts.mark_unchanged();
        self.wake.notify_one();
        let _ = attempts.changed().await;
    }

    /// The store, once opened.
    pub fn store(&self) -> Option<Arc<dyn crate::store::Store>> {
        self.store.get().cloned()
    }

    pub(crate) fn set_store(&self, store: Arc<dyn crate::store::Store>) {
        let _ = self.store.set(store);
    }

    /// The last rebuild's error, when the last attempt failed.
    pub fn last_error(&self) -> Option<String> {
        self.last_error
            .lock()
            .map(|e| e.clone())
            .unwrap_or_default()
    }

    pub(crate) fn publish(&self, outcome: Result<Snapshot, String>) {
        let error = match outcome {
            Ok(snapshot) => {
                crate::metrics::global().snapshot_swapped(&snapshot);
                self.current.store(Arc::new(snapshot));
                None
            }
            Err(error) => {
                crate::metrics::global().snapshot_refresh_failed();
                Some(error)
            }
        };
        if let Ok(mut last) = self.last_error.lock() {
            *last = error;
        }
        self.attempts.send_modify(|n| *n += 1);
    }

    pub(crate) async fn woken(&self) {
        self.wake.notified().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_candidates_stop_at_segment_boundaries_and_the_origin() {
        let all: Vec<&str> = prefix_candidates("https://p.example/api/v1/pay?x=1").collect();

        assert_eq!(
            all,
            [
                "https://p.example/api/v1/pay",
                "https://p.example/api/v1",
                "https://p.example/api",
                "https://p.example"
            ]
        );
    }

    #[test]
    fn prefix_key_ignores_trailing_slashes_and_queries() {
        assert_eq!(
            prefix_key("https://p.example/api/"),
            "https://p.example/api"
        );
        assert_eq!(prefix_key("https://p.example/?a"), "https://p.example");
    }

    #[test]
    fn a_bare_origin_yields_itself() {
        let all: Vec<&str> = prefix_candidates("https://p.example").collect();

        assert_eq!(all, ["https://p.example"]);
    }
}
