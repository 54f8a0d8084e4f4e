//! The explain call: for an account, a service and a URL, which mapping the gateway would use
//! and why, which certificate it would present, how it would verify the partner, and, on
//! request, what a handshake-only probe of the partner shows.
//!
//! The answer comes from the snapshot forwarding uses, so it cannot disagree with what a
//! forwarded request would get; the store only adds names and the mappings that did not match.

use std::time::Duration;

use base64::Engine as _;
use rustls_pki_types::PrivatePkcs8KeyDer;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use utoipa::ToSchema;

use super::error::ApiError;
use super::native::UrlMatchView;
use super::probe::{self, HandshakeReport, ProbeError};
use super::AdminState;
use crate::ids::{AccountId, ServiceName};
use crate::p12::ClientIdentity;
use crate::snapshot::{Binding, MatchKind, Origin, Snapshot};
use crate::store::{Mapping, UrlMatch};

/// At most this many near misses are listed when nothing matched.
const MAX_CANDIDATES: usize = 10;

/// The verdict window of a TLS 1.3 probe comes on top of the handshake timeout.
const PROBE_EXTRA: Duration = Duration::from_secs(1);

/// What to explain.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ExplainRequest {
    pub service: String,
    /// The partner URL exactly as a forwarded request would name it.
    pub url: String,
    /// Also run a handshake-only probe of the partner with the certificate that would be
    /// presented (no HTTP request is sent).
    #[serde(default)]
    pub probe: bool,
}

/// The answer.
#[derive(Debug, Serialize, ToSchema)]
pub struct Explanation {
    pub account: String,
    pub service: String,
    pub url: String,
    pub matched: bool,
    /// The mapping used, when one matched.
    pub mapping: Option<MatchedMapping>,
    /// The certificate presented, when a mapping matched.
    pub certificate: Option<PresentedCertificate>,
    /// How the partner's certificate is checked, when a mapping matched.
    pub server_verification: Option<ServerVerification>,
    /// Why nothing matched, and the mappings that came closest.
    pub no_match: Option<NoMatch>,
    /// The handshake-only probe, when asked for.
    pub probe: Option<ExplainProbe>,
}

/// Which mapping matched, and why that one.
#[derive(Debug, Serialize, ToSchema)]
pub struct MatchedMapping {
    pub kind: UrlMatchView,
    /// A sentence: `exact match on the whole URL, query included`, or
    /// `longest prefix https://p.example/api at a path segment boundary`.
    pub reason: String,
    /// `store` or `config`.
    pub source: &'static str,
    /// The stored mapping's id (source `store`).
    pub mapping_id: Option<u64>,
    /// The mapping's position in the configuration file (source `config`).
    pub config_index: Option<usize>,
    /// The stored mapping's name, when the store could be read.
    pub name: Option<String>,
    /// The mapping's URL.
    pub url: String,
    pub url_match: UrlMatchView,
}

/// The client certificate a matching request presents.
#[derive(Debug, Serialize, ToSchema)]
pub struct PresentedCertificate {
    /// The stored certificate's id; absent for one read from a file.
    pub id: Option<u64>,
    /// SHA-256 of the leaf, lowercase hex.
    pub fingerprint: String,
    pub subject: String,
    /// RFC 3339.
    pub not_after: String,
    /// Whole days until `not_after`; negative once expired.
    pub expires_in_days: i64,
}

/// How the partner is verified.
#[derive(Debug, Serialize, ToSchema)]
pub struct ServerVerification {
    pub verify_server: bool,
    /// `system` (the operating system's roots) or `bundle` (the mapping's CA bundle).
    pub trust: &'static str,
    /// `system`, or the SHA-256 over the bundle's certificates.
    pub trust_id: String,
    /// A warning when verification is off.
    pub note: Option<String>,
}

/// Why nothing matched.
#[derive(Debug, Serialize, ToSchema)]
pub struct NoMatch {
    pub reason: String,
    /// Mappings of the same account for this service, and for this URL under other services,
    /// closest first.
    pub candidates: Vec<Candidate>,
}

/// A mapping that did not match, and why not.
#[derive(Debug, Serialize, ToSchema)]
pub struct Candidate {
    /// `store` or `config`.
    pub source: &'static str,
    pub mapping_id: Option<u64>,
    pub config_index: Option<usize>,
    pub name: Option<String>,
    pub service: String,
    pub url: String,
    pub url_match: UrlMatchView,
    pub enabled: bool,
    pub why_not: String,
}

/// The probe's outcome.
#[derive(Debug, Serialize, ToSchema)]
pub struct ExplainProbe {
    /// The handshake completed and the partner did not refuse our certificate.
    pub succeeded: bool,
    /// Why it did not succeed.
    pub error: Option<ProbeError>,
    /// What the partner asked for and presented; absent when it could not be reached.
    pub handshake: Option<HandshakeReport>,
}

/// Explains how a request for `account`, `service` and `url` would be forwarded.
pub async fn explain(
    state: &AdminState,
    account: &AccountId,
    request: ExplainRequest,
) -> Result<Explanation, ApiError> {
    let service = ServiceName::new(request.service.clone())
        .map_err(|e| ApiError::bad_request("invalid_field", format!("service: {e}")))?;
    let snapshot = state.snapshot.load();
    let stored = stored_mappings(state, account).await;
    let timeout = Duration::from_millis(state.upstream.handshake_timeout_ms) + PROBE_EXTRA;

    let found = snapshot.lookup(account.as_str(), service.as_str(), &request.url);
    let mut explanation = Explanation {
        account: account.to_string(),
        service: service.to_string(),
        url: request.url.clone(),
        matched: found.is_some(),
        mapping: None,
        certificate: None,
        server_verification: None,
        no_match: None,
        probe: None,
    };
    match found {
        Some((binding, kind)) => {
            explanation.mapping = Some(matched(binding, kind, &stored));
            explanation.certificate = Some(presented(binding));
            explanation.server_verification = Some(verification(binding));
            if request.probe {
                explanation.probe = Some(probe_binding(binding, &request.url, timeout).await);
            }
        }
        None => {
            explanation.no_match = Some(no_match(
                &snapshot,
                account,
                &service,
                &request.url,
                &stored,
            ));
            if request.probe {
                explanation.probe = Some(probe_without_identity(&request.url, timeout).await);
            }
        }
    }
    Ok(explanation)
}

/// The account's stored mappings, or none when the store cannot be read: the explanation
/// then rests on the snapshot alone.
async fn stored_mappings(state: &AdminState, account: &AccountId) -> Vec<Mapping> {
    let Ok(store) = state.store() else {
        return Vec::new();
    };
    store.mappings(account).await.unwrap_or_default()
}

fn matched(binding: &Binding, kind: MatchKind, stored: &[Mapping]) -> MatchedMapping {
    let reason = match kind {
        MatchKind::Exact => "exact match on the whole URL, query included".to_owned(),
        MatchKind::Prefix => format!(
            "longest prefix {} at a path segment boundary",
            prefix_of(&binding.url)
        ),
    };
    let (source, mapping_id, config_index) = origin_parts(&binding.origin);
    let name = mapping_id.and_then(|id| {
        stored
            .iter()
            .find(|m| m.id.0 == id)
            .map(|m| m.spec.name.to_string())
    });
    MatchedMapping {
        kind: match kind {
            MatchKind::Exact => UrlMatchView::Exact,
            MatchKind::Prefix => UrlMatchView::Prefix,
        },
        reason,
        source,
        mapping_id,
        config_index,
        name,
        url: binding.url.clone(),
        url_match: binding.url_match.into(),
    }
}

fn origin_parts(origin: &Origin) -> (&'static str, Option<u64>, Option<usize>) {
    match origin {
        Origin::Store { mapping_id } => ("store", Some(mapping_id.0), None),
        Origin::Config { index } => ("config", None, Some(*index)),
    }
}

/// A prefix as the snapshot compares it: no query, no trailing slash.
fn prefix_of(url: &str) -> &str {
    let end = url.find(['?', '#']).unwrap_or(url.len());
    url[..end].trim_end_matches('/')
}

fn presented(binding: &Binding) -> PresentedCertificate {
    let certificate = &binding.certificate;
    PresentedCertificate {
        id: certificate.id.map(|id| id.0),
        fingerprint: certificate.fingerprint.to_string(),
        subject: certificate.subject.clone(),
        not_after: rfc3339(certificate.not_after),
        expires_in_days: (certificate.not_after - OffsetDateTime::now_utc()).whole_days(),
    }
}

fn verification(binding: &Binding) -> ServerVerification {
    let trust = if binding.trust.ca.is_some() {
        "bundle"
    } else {
        "system"
    };
    let note = (!binding.verify_server).then(|| {
        "server verification is off for this mapping: any certificate the partner presents is \
         accepted"
            .to_owned()
    });
    ServerVerification {
        verify_server: binding.verify_server,
        trust,
        trust_id: binding.trust.id.clone(),
        note,
    }
}

fn no_match(
    snapshot: &Snapshot,
    account: &AccountId,
    service: &ServiceName,
    url: &str,
    stored: &[Mapping],
) -> NoMatch {
    let mut candidates: Vec<(bool, usize, Candidate)> = Vec::new();
    for mapping in stored {
        let same_service = mapping.spec.service == *service;
        if !same_service && mapping.spec.url != url {
            continue;
        }
        let why_not = why_stored_missed(snapshot, mapping, service, url);
        let candidate = Candidate {
            source: "store",
            mapping_id: Some(mapping.id.0),
            config_index: None,
            name: Some(mapping.spec.name.to_string()),
            service: mapping.spec.service.to_string(),
            url: mapping.spec.url.clone(),
            url_match: mapping.spec.url_match.into(),
            enabled: mapping.spec.enabled,
            why_not,
        };
        candidates.push((
            same_service,
            common_prefix(url, &mapping.spec.url),
            candidate,
        ));
    }
    for binding in snapshot.bindings() {
        let Origin::Config { index } = binding.origin else {
            continue;
        };
        let same_service = binding.service == *service;
        if binding.account != *account || (!same_service && binding.url != url) {
            continue;
        }
        let candidate = Candidate {
            source: "config",
            mapping_id: None,
            config_index: Some(index),
            name: None,
            service: binding.service.to_string(),
            url: binding.url.clone(),
            url_match: binding.url_match.into(),
            enabled: true,
            why_not: why_url_missed(binding.url_match, &binding.url, service, &binding.service),
        };
        candidates.push((same_service, common_prefix(url, &binding.url), candidate));
    }
    candidates.sort_by(|a, b| b.0.cmp(&a.0).then(b.1.cmp(&a.1)));

    let reason = format!(
        "no enabled, loaded mapping of account {account} and service {service} matches this \
         URL exactly or as a prefix at a path segment boundary"
    );
    NoMatch {
        reason,
        candidates: candidates
            .into_iter()
            .take(MAX_CANDIDATES)
            .map(|(_, _, c)| c)
            .collect(),
    }
}

fn why_stored_missed(
    snapshot: &Snapshot,
    mapping: &Mapping,
    service: &ServiceName,
    url: &str,
) -> String {
    if !mapping.spec.enabled {
        return "the mapping is disabled".into();
    }
    let label = Origin::Store {
        mapping_id: mapping.id,
    }
    .label();
    if let Some(skipped) = snapshot.skipped.iter().find(|s| s.entry == label) {
        return format!(
            "the mapping is not loaded for forwarding ({}): {}",
            skipped.reason.as_str(),
            skipped.detail
        );
    }
    if mapping.spec.service == *service && mapping.spec.url == url {
        return "the mapping was written after the snapshot forwarding uses; retry in a moment"
            .into();
    }
    why_url_missed(
        mapping.spec.url_match,
        &mapping.spec.url,
        service,
        &mapping.spec.service,
    )
}

fn why_url_missed(
    url_match: UrlMatch,
    mapped_url: &str,
    service: &ServiceName,
    mapped_service: &ServiceName,
) -> String {
    if mapped_service != service {
        return format!("mapped for service {mapped_service}, not {service}");
    }
    match url_match {
        UrlMatch::Exact => {
            "an exact mapping of another URL (exact mappings compare the whole URL, query \
             included)"
                .into()
        }
        UrlMatch::Prefix => format!(
            "the URL is not under the prefix {} at a path segment boundary",
            prefix_of(mapped_url)
        ),
    }
}

/// Length in bytes of the longest common prefix of two URLs: a rough closeness.
fn common_prefix(a: &str, b: &str) -> usize {
    a.bytes().zip(b.bytes()).take_while(|(x, y)| x == y).count()
}

async fn probe_binding(binding: &Binding, url: &str, timeout: Duration) -> ExplainProbe {
    let identity = identity_of(binding);
    let ca_pem = binding.trust.ca.as_deref().map(bundle_pem);
    let outcome = probe::handshake(
        Some(&identity),
        url,
        ca_pem.as_deref(),
        binding.verify_server,
        timeout,
    )
    .await;
    probe_view(outcome)
}

/// Without a mapping there is no identity to present; the probe still shows whether the
/// partner asks for a certificate and from which CAs. It verifies against the system roots.
async fn probe_without_identity(url: &str, timeout: Duration) -> ExplainProbe {
    probe_view(probe::handshake(None, url, None, true, timeout).await)
}

fn probe_view(outcome: Result<HandshakeReport, ProbeError>) -> ExplainProbe {
    match outcome {
        Ok(report) => ExplainProbe {
            succeeded: report.succeeded(),
            error: report.error.clone(),
            handshake: Some(report),
        },
        Err(error) => ExplainProbe {
            succeeded: false,
            error: Some(error),
            handshake: None,
        },
    }
}

/// The identity the binding presents, exactly as forwarding loaded it.
fn identity_of(binding: &Binding) -> ClientIdentity {
    let cert_key = &binding.cert_key;
    let chain = std::iter::once(cert_key.leaf())
        .chain(cert_key.intermediates())
        .map(|c| c.borrow_raw_cert().clone().into())
        .collect();
    ClientIdentity {
        chain,
        key: PrivatePkcs8KeyDer::from(cert_key.key().clone()),
    }
}

/// The binding's trust anchors as PEM, as the probe takes them.
fn bundle_pem(certificates: &[pingora::utils::tls::WrappedX509]) -> String {
    let mut pem = String::new();
    for certificate in certificates {
        let encoded =
            base64::engine::general_purpose::STANDARD.encode(certificate.borrow_raw_cert());
        pem.push_str("-----BEGIN CERTIFICATE-----\n");
        for line in encoded.as_bytes().chunks(64) {
            pem.push_str(&String::from_utf8_lossy(line));
            pem.push('\n');
        }
        pem.push_str("-----END CERTIFICATE-----\n");
    }
    pem
}

fn rfc3339(at: OffsetDateTime) -> String {
    at.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| at.to_string())
}
