//! Every metric the gateway exports, registered once on the default Prometheus registry (which
//! the admin listener's `/metrics` gathers), each with help text and a closed label set.
//!
//! Labels are closed sets (`way_in`, `outcome` codes, handshake failure reasons, skip reasons,
//! store operations) or configured ids (account, service, stored certificate id). Raw URLs,
//! paths, header values and secrets never become labels.

use std::collections::BTreeSet;
use std::sync::{LazyLock, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use prometheus::core::Collector;
use prometheus::{
    Gauge, GaugeVec, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec,
    Opts,
};
use tracing::warn;

use crate::snapshot::{Origin, SkipReason, Snapshot};

const PREFIX: &str = "mtls_gateway";

/// Request durations span a cached-connection call (milliseconds) to a slow partner (tens of
/// seconds, the read timeout's range).
const REQUEST_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

/// Store calls: a local file read (sub-millisecond) to a slow Vault (seconds).
const STORE_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];

/// Why an upstream TLS connection could not be established; a closed label set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HandshakeFailure {
    /// The partner's certificate does not chain to the trusted CAs.
    PartnerCertificateUntrusted,
    PartnerCertificateExpired,
    /// The partner's certificate is not valid for the host name called.
    NameMismatch,
    /// The partner refused the client certificate (an alert, or a TLS 1.3 close).
    ClientCertificateRefused,
    Timeout,
    ConnectionRefused,
    Other,
}

impl HandshakeFailure {
    pub const ALL: [HandshakeFailure; 7] = [
        Self::PartnerCertificateUntrusted,
        Self::PartnerCertificateExpired,
        Self::NameMismatch,
        Self::ClientCertificateRefused,
        Self::Timeout,
        Self::ConnectionRefused,
        Self::Other,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::PartnerCertificateUntrusted => "partner_certificate_untrusted",
            Self::PartnerCertificateExpired => "partner_certificate_expired",
            Self::NameMismatch => "name_mismatch",
            Self::ClientCertificateRefused => "client_certificate_refused",
            Self::Timeout => "timeout",
            Self::ConnectionRefused => "connection_refused",
            Self::Other => "other",
        }
    }

    /// Classifies a TLS failure by the rustls error text in the error's cause chain: rustls
    /// errors reach pingora's error only as text.
    pub fn from_tls_text(text: &str) -> Self {
        let text = text.to_ascii_lowercase();
        const REFUSALS: [&str; 7] = [
            "certificaterequired",
            "badcertificate",
            "unknownca",
            "certificateunknown",
            "unsupportedcertificate",
            "certificaterevoked",
            "accessdenied",
        ];
        if let Some((_, alert)) = text.split_once("received fatal alert: ") {
            if REFUSALS.iter().any(|r| alert.starts_with(r)) {
                return Self::ClientCertificateRefused;
            }
            return Self::Other;
        }
        let Some((_, why)) = text.split_once("invalid peer certificate: ") else {
            return Self::Other;
        };
        if why.starts_with("unknownissuer") {
            Self::PartnerCertificateUntrusted
        } else if why.starts_with("expired") || why.starts_with("certificate expired") {
            Self::PartnerCertificateExpired
        } else if why.starts_with("notvalidforname") || why.starts_with("certificate not valid for")
        {
            Self::NameMismatch
        } else {
            Self::Other
        }
    }
}

/// The metrics; one process-wide instance, [`global`].
#[derive(Debug)]
pub struct Metrics {
    /// `way_in`, `account`, `service`, `outcome`.
    pub requests: IntCounterVec,
    /// `way_in`.
    pub request_duration: HistogramVec,
    /// `way_in`, `direction` (`in` | `out`).
    pub request_bytes: IntCounterVec,
    /// `reason`: [`HandshakeFailure::as_str`].
    pub handshake_failures: IntCounterVec,
    /// `reused` (`true` | `false`).
    pub upstream_connections: IntCounterVec,
    /// `account`, `certificate`.
    pub certificate_expiry: GaugeVec,
    pub snapshot_revision: IntGauge,
    pub snapshot_last_success: Gauge,
    pub snapshot_age: Gauge,
    pub snapshot_mappings: IntGauge,
    /// `reason`: [`SkipReason::as_str`].
    pub snapshot_skipped: IntGaugeVec,
    pub snapshot_refresh_failures: IntCounter,
    /// `backend`, `operation`, `result` (`ok` | `error`).
    pub store_calls: IntCounterVec,
    /// `backend`, `operation`.
    pub store_call_duration: HistogramVec,
    /// `listener` (`admin` | `proxy`).
    pub throttled: IntCounterVec,
    /// `reason`: `AuthFailure::as_str`.
    pub auth_failures: IntCounterVec,
    pub build_info: IntGaugeVec,
    /// The (account, certificate) label sets of the expiry gauge, to remove the ones that leave.
    expiry_series: Mutex<BTreeSet<(String, String)>>,
}

static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::register);

/// The process's metrics, registered on first use.
pub fn global() -> &'static Metrics {
    &METRICS
}

fn name(short: &str) -> String {
    format!("{PREFIX}_{short}")
}

/// Registers `collector` on the default registry. A failure (a name registered twice) leaves
/// the metric working but unexported, and is logged rather than taking the process down.
fn registered<C: Collector + Clone + 'static>(collector: C) -> C {
    if let Err(e) = prometheus::register(Box::new(collector.clone())) {
        warn!(error = %e, "metric could not be registered");
    }
    collector
}

fn counter_vec(short: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let vec = IntCounterVec::new(Opts::new(name(short), help), labels);
    registered(vec.unwrap_or_else(|e| unreachable_metric(short, &e)))
}

fn gauge_vec(short: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    let vec = IntGaugeVec::new(Opts::new(name(short), help), labels);
    registered(vec.unwrap_or_else(|e| unreachable_metric(short, &e)))
}

fn histogram_vec(short: &str, help: &str, labels: &[&str], buckets: &[f64]) -> HistogramVec {
    let opts = HistogramOpts::new(name(short), help).buckets(buckets.to_vec());
    let vec = HistogramVec::new(opts, labels);
    registered(vec.unwrap_or_else(|e| unreachable_metric(short, &e)))
}

/// Metric definitions are constants of this module; an invalid one is a programming error that
/// every test run would show at once.
fn unreachable_metric(short: &str, e: &prometheus::Error) -> ! {
    panic!("metric {short} is defined wrongly: {e}")
}

impl Metrics {
    fn register() -> Metrics {
        let expiry = GaugeVec::new(
            Opts::new(
                name("certificate_expiry_timestamp_seconds"),
                "notAfter of each client certificate in the current snapshot, in seconds since \
                 the epoch; certificate is the stored id or config:INDEX",
            ),
            &["account", "certificate"],
        );
        let gauge = |short: &str, help: &str| {
            let gauge = Gauge::new(name(short), help);
            registered(gauge.unwrap_or_else(|e| unreachable_metric(short, &e)))
        };
        let int_gauge = |short: &str, help: &str| {
            let gauge = IntGauge::new(name(short), help);
            registered(gauge.unwrap_or_else(|e| unreachable_metric(short, &e)))
        };
        let failures = IntCounter::new(
            name("snapshot_refresh_failures_total"),
            "Store opens, snapshot rebuilds and store revision polls that failed; the \
             previous snapshot kept serving",
        );
        let metrics = Metrics {
            requests: counter_vec(
                "requests_total",
                "Requests on the proxy listener by way in, mapped account and service (- when \
                 no mapping matched) and outcome (ok when the partner answered, else the \
                 gateway's error code)",
                &["way_in", "account", "service", "outcome"],
            ),
            request_duration: histogram_vec(
                "request_duration_seconds",
                "Time from a request's arrival on the proxy listener to its last byte sent",
                &["way_in"],
                REQUEST_BUCKETS,
            ),
            request_bytes: counter_vec(
                "request_bytes_total",
                "Body bytes on the proxy listener: in from callers, out to callers",
                &["way_in", "direction"],
            ),
            handshake_failures: counter_vec(
                "upstream_handshake_failures_total",
                "Connections to partners that failed before a request could be sent, by reason",
                &["reason"],
            ),
            upstream_connections: counter_vec(
                "upstream_connections_total",
                "Requests sent to partners, by whether a pooled connection was reused",
                &["reused"],
            ),
            certificate_expiry: registered(
                expiry.unwrap_or_else(|e| unreachable_metric("expiry", &e)),
            ),
            snapshot_revision: int_gauge(
                "snapshot_revision",
                "Store revision of the snapshot in use",
            ),
            snapshot_last_success: gauge(
                "snapshot_last_success_timestamp_seconds",
                "When the snapshot in use was loaded, in seconds since the epoch",
            ),
            snapshot_age: gauge(
                "snapshot_age_seconds",
                "Seconds since the snapshot in use was loaded, computed at scrape time",
            ),
            snapshot_mappings: int_gauge(
                "snapshot_mappings",
                "Mappings usable for forwarding in the snapshot in use",
            ),
            snapshot_skipped: gauge_vec(
                "snapshot_skipped",
                "Mappings left out of the snapshot in use, by reason",
                &["reason"],
            ),
            snapshot_refresh_failures: registered(
                failures.unwrap_or_else(|e| unreachable_metric("refresh_failures", &e)),
            ),
            store_calls: counter_vec(
                "store_calls_total",
                "Calls to the certificate store by backend, Store operation and result",
                &["backend", "operation", "result"],
            ),
            store_call_duration: histogram_vec(
                "store_call_duration_seconds",
                "Duration of calls to the certificate store",
                &["backend", "operation"],
                STORE_BUCKETS,
            ),
            throttled: counter_vec(
                "throttled_total",
                "Requests refused with 429 by per-client throttling, by listener",
                &["listener"],
            ),
            auth_failures: counter_vec(
                "auth_failures_total",
                "Requests refused by authentication on either listener, by reason",
                &["reason"],
            ),
            build_info: gauge_vec(
                "build_info",
                "Always 1; the version label names the running build",
                &["version"],
            ),
            expiry_series: Mutex::new(BTreeSet::new()),
        };
        metrics.initialise();
        metrics
    }

    /// Series of closed sets start at zero, so alerts on their rate see them from the start.
    fn initialise(&self) {
        self.build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);
        for reason in HandshakeFailure::ALL {
            self.handshake_failures
                .with_label_values(&[reason.as_str()]);
        }
        for listener in ["admin", "proxy"] {
            self.throttled.with_label_values(&[listener]);
        }
        for reused in ["true", "false"] {
            self.upstream_connections.with_label_values(&[reused]);
        }
        for reason in SkipReason::ALL {
            self.snapshot_skipped.with_label_values(&[reason.as_str()]);
        }
    }

    pub fn handshake_failed(&self, reason: HandshakeFailure) {
        self.handshake_failures
            .with_label_values(&[reason.as_str()])
            .inc();
    }

    pub fn upstream_connected(&self, reused: bool) {
        let reused = if reused { "true" } else { "false" };
        self.upstream_connections.with_label_values(&[reused]).inc();
    }

    /// `listener` is `admin` or `proxy`.
    pub fn throttled(&self, listener: &'static str) {
        self.throttled.with_label_values(&[listener]).inc();
    }

    pub fn auth_failed(&self, reason: &'static str) {
        self.auth_failures.with_label_values(&[reason]).inc();
    }

    /// Records a snapshot that has just been swapped in.
    pub fn snapshot_swapped(&self, snapshot: &Snapshot) {
        self.snapshot_revision
            .set(i64::try_from(snapshot.revision).unwrap_or(i64::MAX));
        self.snapshot_mappings
            .set(i64::try_from(snapshot.len()).unwrap_or(i64::MAX));
        let loaded = snapshot.built_at.unwrap_or_else(SystemTime::now);
        self.snapshot_last_success.set(epoch_seconds(loaded));
        for reason in SkipReason::ALL {
            let count = snapshot
                .skipped
                .iter()
                .filter(|s| s.reason == reason)
                .count();
            self.snapshot_skipped
                .with_label_values(&[reason.as_str()])
                .set(i64::try_from(count).unwrap_or(i64::MAX));
        }
        self.certificates_swapped(snapshot);
    }

    /// Sets the expiry of every certificate in `snapshot` and removes the series of those
    /// that left it.
    ///
    /// Limitation: a stored certificate that no enabled mapping uses is not in the snapshot,
    /// so it has no series; listing the store's certificate records at each swap would fix it.
    fn certificates_swapped(&self, snapshot: &Snapshot) {
        let mut current = BTreeSet::new();
        for binding in snapshot.bindings() {
            let certificate = match (&binding.certificate.id, &binding.origin) {
                (Some(id), _) => id.to_string(),
                (None, Origin::Config { index }) => format!("config:{index}"),
                (None, origin) => origin.label(),
            };
            let labels = (binding.account.to_string(), certificate);
            let not_after = binding.certificate.not_after.unix_timestamp() as f64;
            self.certificate_expiry
                .with_label_values(&[labels.0.as_str(), labels.1.as_str()])
                .set(not_after);
            current.insert(labels);
        }
        let Ok(mut previous) = self.expiry_series.lock() else {
            return;
        };
        for (account, certificate) in previous.difference(&current) {
            let _ = self
                .certificate_expiry
                .remove_label_values(&[account.as_str(), certificate.as_str()]);
        }
        *previous = current;
    }

    pub fn snapshot_refresh_failed(&self) {
        self.snapshot_refresh_failures.inc();
    }

    /// Updates the values computed at scrape time; the `/metrics` handler calls it first.
    pub fn before_scrape(&self) {
        let loaded = self.snapshot_last_success.get();
        if loaded > 0.0 {
            let age = epoch_seconds(SystemTime::now()) - loaded;
            self.snapshot_age.set(age.max(0.0));
        }
    }

    /// Records one store call.
    pub fn store_call(
        &self,
        backend: &'static str,
        operation: &'static str,
        ok: bool,
        took: Duration,
    ) {
        let result = if ok { "ok" } else { "error" };
        self.store_calls
            .with_label_values(&[backend, operation, result])
            .inc();
        self.store_call_duration
            .with_label_values(&[backend, operation])
            .observe(took.as_secs_f64());
    }
}

fn epoch_seconds(at: SystemTime) -> f64 {
    at.duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rustls_certificate_errors_map_to_their_reasons() {
        let cases = [
            (
                "TLSHandshakeFailure context: tls connect error cause: invalid peer \
                 certificate: UnknownIssuer",
                HandshakeFailure::PartnerCertificateUntrusted,
            ),
            (
                "invalid peer certificate: certificate expired: verification time 1 (UNIX)",
                HandshakeFailure::PartnerCertificateExpired,
            ),
            (
                "invalid peer certificate: Expired",
                HandshakeFailure::PartnerCertificateExpired,
            ),
            (
                "invalid peer certificate: certificate not valid for name \"localhost\"",
                HandshakeFailure::NameMismatch,
            ),
            (
                "invalid peer certificate: NotValidForName",
                HandshakeFailure::NameMismatch,
            ),
            (
                "received fatal alert: CertificateRequired",
                HandshakeFailure::ClientCertificateRefused,
            ),
            (
                "received fatal alert: UnknownCA",
                HandshakeFailure::ClientCertificateRefused,
            ),
            (
                "received fatal alert: HandshakeFailure",
                HandshakeFailure::Other,
            ),
            ("connection reset by peer", HandshakeFailure::Other),
        ];

        for (text, expected) in cases {
            assert_eq!(HandshakeFailure::from_tls_text(text), expected, "{text}");
        }
    }
}
