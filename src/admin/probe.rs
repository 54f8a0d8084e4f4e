//! Probes of a partner with a client identity: a real mTLS handshake, and optionally a real
//! HTTP/1.1 `GET`, reporting what the partner asked for and what it presented.
//!
//! The handshake records three things the gateway's own connections never show: whether the
//! partner asked for a client certificate, the CA names it said it accepts, and its whole
//! certificate chain. Nothing here logs or returns key material; errors carry rustls's and
//! hyper's descriptions, which never include it.

use std::fmt;
use std::io;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use http_body_util::Empty;
use hyper_util::rt::TokioIo;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{
    ClientSessionStore, ResolvesClientCert, Tls12ClientSessionValue, Tls13ClientSessionValue,
    WebPkiServerVerifier,
};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::sign::CertifiedKey;
use rustls::{
    AlertDescription, CertificateError, ClientConfig, DigitallySignedStruct, NamedGroup,
    ProtocolVersion, RootCertStore, SignatureScheme,
};
use serde::Serialize;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tokio::sync::Notify;
use tokio::time::timeout_at;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;
use tracing::debug;
use utoipa::ToSchema;
use x509_parser::prelude::{FromDer, X509Certificate};
use x509_parser::x509::X509Name;

use crate::p12::ClientIdentity;
use crate::proxy::Target;

/// After a TLS 1.3 handshake the client has finished before the partner has judged its
/// certificate; a refusal arrives as an alert right after. A partner that accepts sends a
/// session ticket at once; one that sends none is taken to accept after this long.
const VERDICT_WINDOW: Duration = Duration::from_millis(1000);

/// What the ALPN offer of a handshake-only probe holds: what the gateway offers by default.
const HANDSHAKE_ALPN: [&[u8]; 2] = [b"h2", b"http/1.1"];

/// `request` speaks HTTP/1.1 only.
const REQUEST_ALPN: [&[u8]; 1] = [b"http/1.1"];

/// The outcome of [`request`]: the partner answered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct ProbeResponse {
    pub status: u16,
    /// `HTTP/1.1`, as the partner answered.
    pub http_version: String,
    /// TCP connect and TLS handshake together, in milliseconds.
    pub handshake_ms: u64,
}

/// Why a probe failed: a stable code and a sentence a person can act on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct ProbeError {
    /// `invalid_url`, `invalid_ca_bundle`, `unusable_identity`, `dns_failed`,
    /// `connection_refused`, `connect_failed`, `connect_timeout`, `handshake_timeout`,
    /// `partner_certificate_untrusted`, `partner_certificate_expired`, `partner_name_mismatch`,
    /// `client_certificate_rejected`, `connection_closed`, `tls_handshake_failed`,
    /// `response_timeout` or `request_failed`.
    pub code: &'static str,
    pub message: String,
}

impl ProbeError {
    fn new(code: &'static str, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }
}

impl fmt::Display for ProbeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code, self.message)
    }
}

impl std::error::Error for ProbeError {}

/// One certificate of the partner's chain, leaf first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct PartnerCertificate {
    pub subject: String,
    pub issuer: String,
    /// RFC 3339.
    pub not_after: String,
}

/// What a handshake-only probe learnt about the partner.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct HandshakeReport {
    /// Whether the partner sent a CertificateRequest; `false` means mTLS did not happen.
    pub client_certificate_requested: bool,
    /// The CA distinguished names the partner said it accepts client certificates from.
    pub acceptable_ca_names: Vec<String>,
    /// Whether our certificate's issuer (or a CA in our chain) is among the acceptable names;
    /// absent without an identity, when no certificate was requested, or when the partner
    /// named no CA.
    pub ours_chains_to_acceptable: Option<bool>,
    /// Whether we presented a certificate.
    pub client_certificate_sent: bool,
    /// Whether the partner accepted the certificate we presented; absent when none was sent,
    /// or when the handshake ended before the partner could judge it.
    pub client_certificate_accepted: Option<bool>,
    /// The partner's chain as it presented it, leaf first.
    pub partner_chain: Vec<PartnerCertificate>,
    /// The partner leaf's notAfter, RFC 3339.
    pub partner_not_after: Option<String>,
    /// `TLSv1.2` or `TLSv1.3`; absent when the handshake did not complete.
    pub protocol_version: Option<String>,
    /// The ALPN protocol agreed, e.g. `h2`.
    pub alpn: Option<String>,
    /// TCP connect and TLS handshake together, in milliseconds.
    pub handshake_ms: u64,
    /// How the handshake failed, when the partner answered but the handshake did not succeed.
    pub error: Option<ProbeError>,
}

impl HandshakeReport {
    /// The handshake completed and the partner did not refuse our certificate.
    pub fn succeeded(&self) -> bool {
        self.error.is_none()
    }
}

/// Connects to `url` with `identity`, completes the mTLS handshake and sends `GET` for the
/// URL's path and query over HTTP/1.1; returns the partner's status.
///
/// `ca_pem` replaces the system roots for verifying the partner; `verify_server: false`
/// accepts any partner certificate. `timeout` bounds the whole call.
pub async fn request(
    identity: &ClientIdentity,
    url: &str,
    ca_pem: Option<&str>,
    verify_server: bool,
    timeout: Duration,
) -> Result<ProbeResponse, ProbeError> {
    let deadline = tokio::time::Instant::now() + timeout;
    let target = parse_target(url)?;
    let setup = Setup::new(Some(identity), ca_pem, verify_server, &REQUEST_ALPN)?;

    let connected = connect(&setup, &target, deadline).await;
    let (tls, handshake_ms) = match connected {
        Ok(connected) => connected,
        Err(failure) => return Err(failure.error),
    };
    let answer = get(tls, &target, deadline).await;

    match answer {
        Ok((status, version)) => Ok(ProbeResponse {
            status,
            http_version: version,
            handshake_ms,
        }),
        Err(error) => {
            debug!(host = %target.host, port = target.port, code = error.code, "probe failed");
            Err(error)
        }
    }
}

/// Connects to `url` and completes a TLS handshake, presenting `identity` if the partner asks
/// for a client certificate; sends no HTTP.
///
/// `Err` when the partner was never reached over TLS (bad URL, DNS, TCP, timeout before its
/// certificate arrived). Once the partner has answered, the report is returned even if the
/// handshake then failed, with [`HandshakeReport::error`] saying how: what the partner asked
/// for and presented is what a person needs to see then.
pub async fn handshake(
    identity: Option<&ClientIdentity>,
    url: &str,
    ca_pem: Option<&str>,
    verify_server: bool,
    timeout: Duration,
) -> Result<HandshakeReport, ProbeError> {
    let deadline = tokio::time::Instant::now() + timeout;
    let target = parse_target(url)?;
    let setup = Setup::new(identity, ca_pem, verify_server, &HANDSHAKE_ALPN)?;

    let connected = connect(&setup, &target, deadline).await;
    let (outcome, protocol_version, alpn, handshake_ms) = match connected {
        Ok((mut tls, handshake_ms)) => {
            let (_, connection) = tls.get_ref();
            let version = connection.protocol_version().map(version_label);
            let alpn = connection
                .alpn_protocol()
                .map(|p| String::from_utf8_lossy(p).into_owned());
            let verdict = await_verdict(&mut tls, &setup, deadline).await;
            (verdict, version, alpn, handshake_ms)
        }
        Err(failure) if failure.partner_answered => {
            let handshake_ms = failure.elapsed_ms;
            (Err(failure.error), None, None, handshake_ms)
        }
        Err(failure) => return Err(failure.error),
    };

    let report = setup.report(identity, outcome, protocol_version, alpn, handshake_ms);
    if let Some(error) = &report.error {
        let (host, port, code) = (&target.host, target.port, error.code);
        debug!(%host, port, code, "handshake probe failed");
    }
    Ok(report)
}

fn parse_target(url: &str) -> Result<Target, ProbeError> {
    Target::parse(url).map_err(|e| ProbeError::new("invalid_url", e.to_string()))
}

/// What the partner showed during one handshake.
#[derive(Debug, Clone, Default)]
struct Observed {
    requested: bool,
    /// DER-encoded distinguished names from the CertificateRequest.
    hints: Vec<Vec<u8>>,
    /// Whether a certificate went out in answer to the request.
    sent: bool,
    /// The partner's chain, leaf first.
    partner_chain: Vec<Vec<u8>>,
}

/// The recorders shared with rustls, and the config they sit in.
struct Setup {
    config: Arc<ClientConfig>,
    observed: Arc<Mutex<Observed>>,
    tickets: Arc<TicketSignal>,
}

impl Setup {
    fn new(
        identity: Option<&ClientIdentity>,
        ca_pem: Option<&str>,
        verify_server: bool,
        alpn: &[&[u8]],
    ) -> Result<Self, ProbeError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let observed = Arc::new(Mutex::new(Observed::default()));
        let tickets = Arc::new(TicketSignal::default());

        let certified = identity
            .map(|identity| certified_key(identity, &provider))
            .transpose()?;
        let roots = match ca_pem {
            Some(pem) => Arc::new(bundle_roots(pem)?),
            None => system_roots(),
        };
        let verifier = RecordingVerifier::new(roots, verify_server, &provider, &observed)?;
        let resolver = RecordingResolver {
            certified,
            observed: Arc::clone(&observed),
        };

        let mut config = ClientConfig::builder_with_provider(Arc::clone(&provider))
            .with_safe_default_protocol_versions()
            .map_err(|e| ProbeError::new("tls_handshake_failed", e.to_string()))?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(verifier))
            .with_client_cert_resolver(Arc::new(resolver));
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        config.resumption = rustls::client::Resumption::store(tickets.clone());
        Ok(Self {
            config: Arc::new(config),
            observed,
            tickets,
        })
    }

    /// A copy of what the partner showed so far.
    fn seen(&self) -> Observed {
        self.observed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn report(
        &self,
        identity: Option<&ClientIdentity>,
        outcome: Result<(), ProbeError>,
        protocol_version: Option<String>,
        alpn: Option<String>,
        handshake_ms: u64,
    ) -> HandshakeReport {
        let observed = self.seen();
        let ours_chains_to_acceptable = match identity {
            Some(identity) if observed.requested && !observed.hints.is_empty() => {
                Some(chains_to_any(identity, &observed.hints))
            }
            _ => None,
        };
        let partner_chain: Vec<PartnerCertificate> = observed
            .partner_chain
            .iter()
            .filter_map(|der| describe(der))
            .collect();
        let (accepted, error) = match outcome {
            Ok(()) => (observed.sent.then_some(true), None),
            Err(error) => {
                let refused = error.code == "client_certificate_rejected";
                (
                    observed.sent.then_some(false).filter(|_| refused),
                    Some(error),
                )
            }
        };
        HandshakeReport {
            client_certificate_requested: observed.requested,
            acceptable_ca_names: observed.hints.iter().map(|dn| dn_text(dn)).collect(),
            ours_chains_to_acceptable,
            client_certificate_sent: observed.sent,
            client_certificate_accepted: accepted,
            partner_not_after: partner_chain.first().map(|leaf| leaf.not_after.clone()),
            partner_chain,
            protocol_version,
            alpn,
            handshake_ms,
            error,
        }
    }
}

/// Why [`connect`] failed, and whether the partner had spoken TLS by then.
struct ConnectFailure {
    error: ProbeError,
    partner_answered: bool,
    elapsed_ms: u64,
}

/// DNS, TCP and the TLS handshake, each bounded by `deadline`.
async fn connect(
    setup: &Setup,
    target: &Target,
    deadline: tokio::time::Instant,
) -> Result<(TlsStream<TcpStream>, u64), ConnectFailure> {
    let unanswered = |error| ConnectFailure {
        error,
        partner_answered: false,
        elapsed_ms: 0,
    };
    let addresses = resolve(target, deadline).await.map_err(unanswered)?;
    let started = Instant::now();
    let tcp = tcp_connect(&addresses, target, deadline)
        .await
        .map_err(unanswered)?;
    let server_name = ServerName::try_from(target.sni.clone()).map_err(|_| {
        unanswered(ProbeError::new(
            "invalid_url",
            "the host is not a valid name",
        ))
    })?;

    let connector = TlsConnector::from(Arc::clone(&setup.config));
    let handshake = timeout_at(deadline, connector.connect(server_name, tcp)).await;
    let elapsed_ms = millis(started.elapsed());
    let error = match handshake {
        Ok(Ok(tls)) => return Ok((tls, elapsed_ms)),
        Ok(Err(e)) => from_io(&e, "the TLS handshake failed"),
        Err(_) => ProbeError::new(
            "handshake_timeout",
            format!(
                "the TLS handshake with {}:{} did not finish in time",
                target.host, target.port
            ),
        ),
    };
    let observed = setup.seen();
    Err(ConnectFailure {
        error,
        partner_answered: observed.requested || !observed.partner_chain.is_empty(),
        elapsed_ms,
    })
}

async fn resolve(
    target: &Target,
    deadline: tokio::time::Instant,
) -> Result<Vec<std::net::SocketAddr>, ProbeError> {
    let lookup = tokio::net::lookup_host((target.host.as_str(), target.port));
    let failed = |reason: String| {
        ProbeError::new(
            "dns_failed",
            format!(
                "the partner host {} could not be resolved ({reason}); check the URL",
                target.host
            ),
        )
    };
    match timeout_at(deadline, lookup).await {
        Ok(Ok(addresses)) => {
            let addresses: Vec<_> = addresses.collect();
            if addresses.is_empty() {
                Err(failed("no address".into()))
            } else {
                Ok(addresses)
            }
        }
        Ok(Err(e)) => Err(failed(e.to_string())),
        Err(_) => Err(failed("timed out".into())),
    }
}

/// Tries each address in turn; the last failure is the one reported.
async fn tcp_connect(
    addresses: &[std::net::SocketAddr],
    target: &Target,
    deadline: tokio::time::Instant,
) -> Result<TcpStream, ProbeError> {
    let mut last = None;
    for address in addresses {
        match timeout_at(deadline, TcpStream::connect(address)).await {
            Ok(Ok(tcp)) => return Ok(tcp),
            Ok(Err(e)) => last = Some(e),
            Err(_) => {
                return Err(ProbeError::new(
                    "connect_timeout",
                    format!(
                        "no TCP connection to {}:{} in time; check the port and any firewall",
                        target.host, target.port
                    ),
                ))
            }
        }
    }
    let (code, reason) = match last {
        Some(e) if e.kind() == io::ErrorKind::ConnectionRefused => (
            "connection_refused",
            "nothing listens on that port".to_owned(),
        ),
        Some(e) => ("connect_failed", e.to_string()),
        None => ("connect_failed", "no address to connect to".to_owned()),
    };
    Err(ProbeError::new(
        code,
        format!(
            "the TCP connection to {}:{} failed: {reason}",
            target.host, target.port
        ),
    ))
}

/// After the handshake, waits for the partner's verdict on our certificate: a TLS 1.3 session
/// ticket or unprompted data means accepted, an alert means refused. `Ok` also when no
/// certificate was sent, under TLS 1.2 (where the handshake itself carries the verdict), or
/// when the partner stays silent for [`VERDICT_WINDOW`].
async fn await_verdict(
    tls: &mut TlsStream<TcpStream>,
    setup: &Setup,
    deadline: tokio::time::Instant,
) -> Result<(), ProbeError> {
    let tls13 = tls.get_ref().1.protocol_version() == Some(ProtocolVersion::TLSv1_3);
    if !setup.seen().sent || !tls13 {
        return Ok(());
    }

    let window = (tokio::time::Instant::now() + VERDICT_WINDOW).min(deadline);
    let mut buffer = [0u8; 1];
    let verdict = async {
        tokio::select! {
            read = tls.read(&mut buffer) => match read {
                Ok(0) => Err(ProbeError::new(
                    "connection_closed",
                    "the partner closed the connection right after the handshake; it may \
                     have refused the client certificate without saying why",
                )),
                Ok(_) => Ok(()),
                Err(e) => Err(from_io(&e, "the partner ended the connection")),
            },
            () = setup.tickets.arrived.notified() => Ok(()),
        }
    };
    timeout_at(window, verdict).await.unwrap_or(Ok(()))
}

/// `GET path` over HTTP/1.1 on an established connection; the status and the version.
async fn get(
    tls: TlsStream<TcpStream>,
    target: &Target,
    deadline: tokio::time::Instant,
) -> Result<(u16, String), ProbeError> {
    let timed_out = || {
        ProbeError::new(
            "response_timeout",
            format!(
                "{}:{} accepted the connection but did not answer in time",
                target.host, target.port
            ),
        )
    };
    let handshake = hyper::client::conn::http1::handshake(TokioIo::new(tls));
    let (mut sender, connection) = match timeout_at(deadline, handshake).await {
        Ok(Ok(parts)) => parts,
        Ok(Err(e)) => return Err(from_hyper(&e)),
        Err(_) => return Err(timed_out()),
    };
    let request = http::Request::get(target.path_and_query.as_str())
        .header(http::header::HOST, target.authority.as_str())
        .header(http::header::USER_AGENT, "mtls-gateway-probe")
        .body(Empty::<bytes::Bytes>::new())
        .map_err(|e| ProbeError::new("invalid_url", e.to_string()))?;

    // The connection drives all I/O and holds the real cause of a failure (a TLS alert, say);
    // polled first, it reports that cause before the request sees a bare cancellation.
    let exchange = async {
        let response = sender.send_request(request);
        tokio::pin!(connection);
        tokio::select! {
            biased;
            ended = &mut connection => Err(match ended {
                Err(e) => from_hyper(&e),
                Ok(()) => closed_before_answer(),
            }),
            response = response => response.map_err(|e| from_hyper(&e)),
        }
    };
    match timeout_at(deadline, exchange).await {
        Ok(Ok(response)) => Ok((
            response.status().as_u16(),
            format!("{:?}", response.version()),
        )),
        Ok(Err(error)) => Err(error),
        Err(_) => Err(timed_out()),
    }
}

fn closed_before_answer() -> ProbeError {
    ProbeError::new(
        "connection_closed",
        "the partner closed the connection before answering",
    )
}

/// Classifies an I/O error from the TLS stream by the rustls error inside it, if any.
fn from_io(error: &io::Error, context: &str) -> ProbeError {
    let tls = error
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>());
    match tls {
        Some(tls) => from_tls(tls),
        None if error.kind() == io::ErrorKind::UnexpectedEof => closed_before_answer(),
        None => ProbeError::new("tls_handshake_failed", format!("{context}: {error}")),
    }
}

/// Classifies a hyper error by the first rustls or I/O error in its causes.
fn from_hyper(error: &hyper::Error) -> ProbeError {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(cause) = source {
        if let Some(tls) = cause.downcast_ref::<rustls::Error>() {
            return from_tls(tls);
        }
        if let Some(io) = cause.downcast_ref::<io::Error>() {
            return from_io(io, "the connection failed");
        }
        source = cause.source();
    }
    if error.is_incomplete_message() || error.is_canceled() {
        return closed_before_answer();
    }
    ProbeError::new(
        "request_failed",
        format!("the HTTP exchange failed: {error}"),
    )
}

/// Who is to blame for a TLS failure decides the code: the partner's certificate, ours, or
/// the handshake as a whole.
fn from_tls(error: &rustls::Error) -> ProbeError {
    use CertificateError as C;
    match error {
        rustls::Error::InvalidCertificate(C::Expired | C::ExpiredContext { .. }) => {
            ProbeError::new(
                "partner_certificate_expired",
                format!("the partner's certificate has expired ({error})"),
            )
        }
        rustls::Error::InvalidCertificate(
            C::NotValidForName | C::NotValidForNameContext { .. },
        ) => ProbeError::new(
            "partner_name_mismatch",
            format!("the partner's certificate is not valid for this host ({error})"),
        ),
        rustls::Error::InvalidCertificate(_) => ProbeError::new(
            "partner_certificate_untrusted",
            format!(
                "the partner's certificate is not trusted ({error}); supply the partner's CA \
                 bundle (ca_pem), or check the host"
            ),
        ),
        rustls::Error::AlertReceived(alert) if refuses_client_certificate(*alert) => {
            ProbeError::new(
                "client_certificate_rejected",
                format!(
                    "the partner refused the client certificate (alert {alert:?}); check that \
                     it was issued by a CA the partner accepts and has not expired"
                ),
            )
        }
        other => ProbeError::new(
            "tls_handshake_failed",
            format!("the TLS handshake failed: {other}"),
        ),
    }
}

fn refuses_client_certificate(alert: AlertDescription) -> bool {
    matches!(
        alert,
        AlertDescription::BadCertificate
            | AlertDescription::UnsupportedCertificate
            | AlertDescription::CertificateRevoked
            | AlertDescription::CertificateExpired
            | AlertDescription::CertificateUnknown
            | AlertDescription::UnknownCA
            | AlertDescription::AccessDenied
            | AlertDescription::CertificateRequired
    )
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

fn version_label(version: ProtocolVersion) -> String {
    match version {
        ProtocolVersion::TLSv1_2 => "TLSv1.2".into(),
        ProtocolVersion::TLSv1_3 => "TLSv1.3".into(),
        other => format!("{other:?}"),
    }
}

fn certified_key(
    identity: &ClientIdentity,
    provider: &CryptoProvider,
) -> Result<Arc<CertifiedKey>, ProbeError> {
    let key = PrivateKeyDer::Pkcs8(identity.key.clone_key());
    let signing = provider.key_provider.load_private_key(key).map_err(|_| {
        ProbeError::new(
            "unusable_identity",
            "the client identity's private key cannot be used for TLS",
        )
    })?;
    Ok(Arc::new(CertifiedKey::new(identity.chain.clone(), signing)))
}

fn bundle_roots(pem: &str) -> Result<RootCertStore, ProbeError> {
    let bad = |reason: String| {
        ProbeError::new(
            "invalid_ca_bundle",
            format!("the CA bundle cannot be used: {reason}; send PEM CA certificates"),
        )
    };
    let mut roots = RootCertStore::empty();
    for certificate in CertificateDer::pem_slice_iter(pem.as_bytes()) {
        let certificate = certificate.map_err(|e| bad(e.to_string()))?;
        roots.add(certificate).map_err(|e| bad(e.to_string()))?;
    }
    if roots.is_empty() {
        return Err(bad("it holds no certificate".into()));
    }
    Ok(roots)
}

/// The operating system's trust store, read once per process.
fn system_roots() -> Arc<RootCertStore> {
    static ROOTS: OnceLock<Arc<RootCertStore>> = OnceLock::new();
    Arc::clone(ROOTS.get_or_init(|| {
        let loaded = rustls_native_certs::load_native_certs();
        if !loaded.errors.is_empty() {
            debug!(
                errors = loaded.errors.len(),
                "some system roots could not be read"
            );
        }
        let mut roots = RootCertStore::empty();
        let (added, ignored) = roots.add_parsable_certificates(loaded.certs);
        debug!(added, ignored, "system roots loaded for probes");
        Arc::new(roots)
    }))
}

/// Whether a CA in `identity`'s chain (the leaf's issuer, or the subject of a CA certificate
/// the file carries) is among the partner's acceptable names.
fn chains_to_any(identity: &ClientIdentity, hints: &[Vec<u8>]) -> bool {
    let hint_texts: Vec<String> = hints.iter().map(|dn| dn_text(dn)).collect();
    let mut ours: Vec<(Vec<u8>, String)> = Vec::new();
    for (position, der) in identity.chain.iter().enumerate() {
        let Ok((_, certificate)) = X509Certificate::from_der(der) else {
            continue;
        };
        let issuer = certificate.issuer();
        ours.push((issuer.as_raw().to_vec(), issuer.to_string()));
        if position > 0 {
            let subject = certificate.subject();
            ours.push((subject.as_raw().to_vec(), subject.to_string()));
        }
    }
    ours.iter().any(|(raw, text)| {
        hints.iter().any(|hint| hint == raw) || hint_texts.iter().any(|hint| hint == text)
    })
}

/// A distinguished name as text (`CN=Client CA A`), or its hex when it does not parse.
fn dn_text(der: &[u8]) -> String {
    let parsed = |bytes: &[u8]| match X509Name::from_der(bytes) {
        Ok((rest, name)) if rest.is_empty() && name.iter().next().is_some() => {
            Some(name.to_string())
        }
        _ => None,
    };
    if let Some(text) = parsed(der) {
        return text;
    }
    // Some servers send the name without its outer SEQUENCE.
    let wrapped = u8::try_from(der.len())
        .ok()
        .filter(|len| *len < 0x80)
        .map(|len| [&[0x30, len][..], der].concat());
    wrapped
        .and_then(|wrapped| parsed(&wrapped))
        .unwrap_or_else(|| hex::encode(der))
}

fn describe(der: &[u8]) -> Option<PartnerCertificate> {
    let (_, certificate) = X509Certificate::from_der(der).ok()?;
    let not_after = certificate
        .validity()
        .not_after
        .to_datetime()
        .format(&time::format_description::well_known::Rfc3339)
        .ok()?;
    Some(PartnerCertificate {
        subject: certificate.subject().to_string(),
        issuer: certificate.issuer().to_string(),
        not_after,
    })
}

/// Presents the identity, if any, and records what the partner asked for.
#[derive(Debug)]
struct RecordingResolver {
    certified: Option<Arc<CertifiedKey>>,
    observed: Arc<Mutex<Observed>>,
}

impl ResolvesClientCert for RecordingResolver {
    fn resolve(
        &self,
        root_hint_subjects: &[&[u8]],
        _sigschemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        if let Ok(mut observed) = self.observed.lock() {
            observed.requested = true;
            observed.hints = root_hint_subjects.iter().map(|dn| dn.to_vec()).collect();
            observed.sent = self.certified.is_some();
        }
        self.certified.clone()
    }

    /// Always `true`: rustls then answers a request even without an identity, with an empty
    /// certificate list, and the probe still learns what was asked.
    fn has_certs(&self) -> bool {
        true
    }
}

/// Verifies the partner as the gateway would (or not at all, when told so) and records the
/// chain it presented.
#[derive(Debug)]
struct RecordingVerifier {
    inner: Option<Arc<WebPkiServerVerifier>>,
    algorithms: WebPkiSupportedAlgorithms,
    observed: Arc<Mutex<Observed>>,
}

impl RecordingVerifier {
    fn new(
        roots: Arc<RootCertStore>,
        verify_server: bool,
        provider: &Arc<CryptoProvider>,
        observed: &Arc<Mutex<Observed>>,
    ) -> Result<Self, ProbeError> {
        let inner = if verify_server {
            let built = WebPkiServerVerifier::builder_with_provider(roots, Arc::clone(provider))
                .build()
                .map_err(|e| {
                    ProbeError::new(
                        "invalid_ca_bundle",
                        format!("no trust anchors to verify the partner with: {e}"),
                    )
                })?;
            Some(built)
        } else {
            None
        };
        Ok(Self {
            inner,
            algorithms: provider.signature_verification_algorithms,
            observed: Arc::clone(observed),
        })
    }
}

impl ServerCertVerifier for RecordingVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if let Ok(mut observed) = self.observed.lock() {
            observed.partner_chain = std::iter::once(end_entity)
                .chain(intermediates)
                .map(|c| c.to_vec())
                .collect();
        }
        match &self.inner {
            Some(inner) => {
                inner.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
            }
            None => Ok(ServerCertVerified::assertion()),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// A session store that keeps nothing and notes that a TLS 1.3 ticket arrived: a partner
/// sends one only after it has accepted the client's Finished, client certificate included.
#[derive(Debug, Default)]
struct TicketSignal {
    arrived: Notify,
}

impl ClientSessionStore for TicketSignal {
    fn set_kx_hint(&self, _server_name: ServerName<'static>, _group: NamedGroup) {}

    fn kx_hint(&self, _server_name: &ServerName<'_>) -> Option<NamedGroup> {
        None
    }

    fn set_tls12_session(&self, _server_name: ServerName<'static>, _: Tls12ClientSessionValue) {}

    fn tls12_session(&self, _server_name: &ServerName<'_>) -> Option<Tls12ClientSessionValue> {
        None
    }

    fn remove_tls12_session(&self, _server_name: &ServerName<'static>) {}

    fn insert_tls13_ticket(&self, _server_name: ServerName<'static>, _: Tls13ClientSessionValue) {
        self.arrived.notify_one();
    }

    fn take_tls13_ticket(
        &self,
        _server_name: &ServerName<'static>,
    ) -> Option<Tls13ClientSessionValue> {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const QUICK: Duration = Duration::from_millis(500);

    #[tokio::test]
    async fn refuses_a_url_that_is_not_https_before_connecting() {
        let error = handshake(None, "http://127.0.0.1:1/", None, true, QUICK)
            .await
            .expect_err("refused");

        assert_eq!(error.code, "invalid_url");
    }

    #[tokio::test]
    async fn names_a_port_nobody_listens_on() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("address").port();
        drop(listener);

        let url = format!("https://127.0.0.1:{port}/");
        let error = handshake(None, &url, None, true, QUICK)
            .await
            .expect_err("refused");

        assert_eq!(error.code, "connection_refused");
        assert!(error.message.contains(&port.to_string()), "{error}");
    }

    #[tokio::test]
    async fn a_partner_that_never_answers_the_hello_is_a_handshake_timeout() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let url = format!(
            "https://127.0.0.1:{}/",
            listener.local_addr().expect("address").port()
        );
        let silent = tokio::spawn(async move {
            let accepted = listener.accept().await;
            tokio::time::sleep(Duration::from_secs(5)).await;
            drop(accepted);
        });

        let error = handshake(None, &url, None, true, Duration::from_millis(200))
            .await
            .expect_err("timed out");

        silent.abort();
        assert_eq!(error.code, "handshake_timeout");
    }

    #[tokio::test]
    async fn refuses_a_ca_bundle_without_certificates() {
        let error = handshake(None, "https://127.0.0.1:1/", Some("not pem"), true, QUICK)
            .await
            .expect_err("refused");

        assert_eq!(error.code, "invalid_ca_bundle");
    }

    #[test]
    fn distinguished_names_read_with_or_without_their_outer_sequence() {
        // SEQUENCE { SET { SEQUENCE { OID 2.5.4.3 (CN), UTF8String "CA" } } }
        let inner = [
            0x31, 0x0b, 0x30, 0x09, 0x06, 0x03, 0x55, 0x04, 0x03, 0x0c, 0x02, b'C', b'A',
        ];
        let mut whole = vec![0x30, inner.len() as u8];
        whole.extend_from_slice(&inner);

        assert_eq!(dn_text(&whole), "CN=CA");
        assert_eq!(dn_text(&inner), "CN=CA");
        assert_eq!(dn_text(&[0xff]), "ff");
    }

    #[test]
    fn alerts_about_our_certificate_blame_it_and_others_the_handshake() {
        let refused = from_tls(&rustls::Error::AlertReceived(AlertDescription::UnknownCA));
        let other = from_tls(&rustls::Error::AlertReceived(
            AlertDescription::ProtocolVersion,
        ));
        let expired = from_tls(&rustls::Error::InvalidCertificate(
            CertificateError::Expired,
        ));
        let name = from_tls(&rustls::Error::InvalidCertificate(
            CertificateError::NotValidForName,
        ));

        assert_eq!(
            [refused.code, other.code, expired.code, name.code],
            [
                "client_certificate_rejected",
                "tls_handshake_failed",
                "partner_certificate_expired",
                "partner_name_mismatch"
            ]
        );
    }
}
