//! The data plane: pingora's `ProxyHttp` for the two ways in, the forward call of the
//! compatible API and HTTP proxy mode. Both end in the same lookup and the same upstream peer.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use http::{HeaderName, HeaderValue, Method, StatusCode};
use pingora::http::ResponseHeader;
use pingora::prelude::{HttpPeer, RequestHeader};
use pingora::protocols::ALPN;
use pingora::proxy::{FailToProxy, ProxyHttp, Session};
use pingora::{Error, ErrorType, Result};
use serde_json::json;
use tracing::{debug, info};

use crate::admin::auth::{Authenticator, RouteClass, SignedRequest};
use crate::admin::throttle::{retry_after, Throttle};
use crate::config::{ProxyConfig, UpstreamConfig};
use crate::metrics::HandshakeFailure;
use crate::snapshot::{Binding, MatchKind, SnapshotHandle};

mod target;

pub use target::{Target, TargetError};

const FORWARD_PREFIX: &str = "/mtls/account/";

/// How long a resolved partner address is reused: long enough that lookups vanish from the
/// request path, short enough that a partner moving its address is followed within a minute.
const DNS_CACHE_TTL: Duration = Duration::from_secs(30);

/// Upper bound on cached names, so callers naming random hosts cannot grow the cache.
const DNS_CACHE_ENTRIES: usize = 10_000;
const FORWARD_URL: &str = "lp-forward-url";
const SERVICE_NAME: &str = "lp-service-name";
const AUTHORIZATION_OVERRIDE: &str = "lp-authorization-override";
const STOP_IF_NOT_FOUND: &str = "lp-stop-if-certificate-not-found";
const MESSAGE_FROM_TRANSPORT: &str = "lp-message-from-transport";
const ERROR_FROM_TRANSPORT: &str = "lp-error-from-transport";

/// How a request reached the gateway; a metric label and an access-log field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WayIn {
    /// `METHOD /mtls/account/{accountId}` with `LP-forward-url`.
    Forward,
    /// Absolute-form request from a service whose `HTTP_PROXY` points here.
    HttpProxy,
}

impl WayIn {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Forward => "forward",
            Self::HttpProxy => "http_proxy",
        }
    }
}

/// What one request learned on its way through; read by the access log.
#[derive(Debug)]
pub struct RequestCtx {
    started: Instant,
    way_in: Option<WayIn>,
    account: Option<String>,
    service: Option<String>,
    target: Option<Target>,
    binding: Option<Arc<Binding>>,
    match_kind: Option<MatchKind>,
    authorization: Option<HeaderValue>,
    upstream_started: Option<Instant>,
    reused: Option<bool>,
    error_code: Option<&'static str>,
    /// A compatible admin path, passed to the admin listener untouched.
    admin: bool,
    client: Option<std::net::IpAddr>,
}

/// A refusal answered by the gateway itself: status, stable code, a sentence, extra fields.
struct Refusal {
    status: StatusCode,
    code: &'static str,
    message: String,
    fields: serde_json::Map<String, serde_json::Value>,
    headers: Vec<(&'static str, String)>,
}

impl Refusal {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            fields: serde_json::Map::new(),
            headers: Vec::new(),
        }
    }

    fn with(mut self, key: &str, value: impl Into<serde_json::Value>) -> Self {
        self.fields.insert(key.to_owned(), value.into());
        self
    }
}

/// The pingora proxy application.
#[derive(Debug)]
pub struct Proxy {
    snapshot: Arc<SnapshotHandle>,
    config: ProxyConfig,
    upstream: UpstreamConfig,
    account_header: HeaderName,
    service_header: HeaderName,
    auth: Arc<Authenticator>,
    throttle: Throttle,
    /// Partner names resolved recently; a lookup per request costs more than the rest of the
    /// request path together.
    resolved: std::sync::RwLock<std::collections::HashMap<(String, u16), (SocketAddr, Instant)>>,
    /// Where compatible admin paths go when `serve_admin_routes` is on, once it is bound.
    admin: Arc<std::sync::OnceLock<SocketAddr>>,
}

impl Proxy {
    /// `config` has been validated: its header names parse.
    pub fn new(
        snapshot: Arc<SnapshotHandle>,
        config: ProxyConfig,
        upstream: UpstreamConfig,
        auth: Arc<Authenticator>,
        admin: Arc<std::sync::OnceLock<SocketAddr>>,
    ) -> Self {
        let header = |name: &str, fallback: &'static str| {
            HeaderName::from_bytes(name.as_bytes()).unwrap_or(HeaderName::from_static(fallback))
        };
        Self {
            account_header: header(
                &config.account_header,
                crate::config::DEFAULT_ACCOUNT_HEADER,
            ),
            service_header: header(
                &config.service_header,
                crate::config::DEFAULT_SERVICE_HEADER,
            ),
            throttle: Throttle::new(&config.throttle),
            resolved: std::sync::RwLock::default(),
            snapshot,
            config,
            upstream,
            auth,
            admin,
        }
    }

    /// The compatible admin routes, which clients with one base URL send to this listener.
    fn is_admin_path(&self, path: &str) -> bool {
        if !self.config.serve_admin_routes {
            return false;
        }
        let below_account = path
            .strip_prefix(FORWARD_PREFIX)
            .and_then(|rest| rest.split_once('/'))
            .is_some_and(|(account, more)| !account.is_empty() && !more.is_empty());
        below_account || path == "/mtls/mapping" || path.starts_with("/api/account/")
    }

    /// Checks the caller's credentials for the forward call. In HTTP proxy mode they come in
    /// `Proxy-Authorization`, since `Authorization` belongs to the partner.
    fn authenticate(
        &self,
        req: &RequestHeader,
        ctx: &RequestCtx,
    ) -> std::result::Result<(), Refusal> {
        if !self.auth.enabled() {
            return Ok(());
        }
        // Only proxy mode needs a changed copy: its credentials are in Proxy-Authorization.
        let headers = if ctx.way_in == Some(WayIn::HttpProxy) {
            let mut headers = req.headers.clone();
            headers.remove(http::header::AUTHORIZATION);
            if let Some(value) = req.headers.get(http::header::PROXY_AUTHORIZATION) {
                headers.insert(http::header::AUTHORIZATION, value.clone());
            }
            std::borrow::Cow::Owned(headers)
        } else {
            std::borrow::Cow::Borrowed(&req.headers)
        };
        let host = header_text(req, &http::header::HOST).unwrap_or_default();
        let path = req.uri.path_and_query().map_or("/", |p| p.as_str());
        let url = format!("http://{host}{path}");
        let signed = SignedRequest {
            method: &req.method,
            url: &url,
            headers: &headers,
            body: None,
        };
        let account = ctx.account.as_deref();
        match self.auth.authorize(RouteClass::Forward, account, &signed) {
            Ok(_) => Ok(()),
            Err((failure, error)) => {
                debug!(reason = failure.as_str(), "forward call refused");
                crate::metrics::global().auth_failed(failure.as_str());
                let mut refusal = Refusal::new(error.status, error.code, error.message);
                refusal.headers = error.headers;
                // A proxy asks for its own credentials with 407 and Proxy-Authenticate; a 401
                // with WWW-Authenticate would read as the partner's challenge.
                if ctx.way_in == Some(WayIn::HttpProxy) && error.status == StatusCode::UNAUTHORIZED
                {
                    refusal.status = StatusCode::PROXY_AUTHENTICATION_REQUIRED;
                    for (name, _) in &mut refusal.headers {
                        if name.eq_ignore_ascii_case("www-authenticate") {
                            *name = "proxy-authenticate";
                        }
                    }
                }
                Err(refusal)
            }
        }
    }

    /// Works out way in, account, service and target, and finds the binding.
    fn identify(
        &self,
        req: &RequestHeader,
        ctx: &mut RequestCtx,
    ) -> std::result::Result<(), Refusal> {
        if req.method == Method::CONNECT {
            return Err(Refusal::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "connect_not_supported",
                "CONNECT tunnels cannot carry an injected client certificate; send plain \
                 http:// requests through the proxy and the gateway speaks TLS to the partner",
            ));
        }
        let stop_if_not_found = match pingora::http::authority::raw_target_authority(req.raw_path())
        {
            pingora::http::authority::RawTargetAuthority::Absolute {
                scheme,
                authority,
                path_and_query,
            } => {
                self.identify_proxied(req, ctx, scheme, authority, path_and_query)?;
                self.config.refuse_unmapped
            }
            pingora::http::authority::RawTargetAuthority::AmbiguousAuthority => {
                return Err(Refusal::new(
                    StatusCode::BAD_REQUEST,
                    "ambiguous_target",
                    "the request target's authority is ambiguous; send a plain absolute URL",
                ));
            }
            pingora::http::authority::RawTargetAuthority::None => identify_forward(req, ctx)?,
        };

        self.authenticate(req, ctx)?;

        let snapshot = self.snapshot.load();
        let account = ctx.account.as_deref().unwrap_or_default();
        let service = ctx.service.as_deref().unwrap_or_default();
        let url = ctx
            .target
            .as_ref()
            .map(|t| t.url.as_str())
            .unwrap_or_default();
        match snapshot.lookup(account, service, url) {
            Some((binding, kind)) => {
                ctx.binding = Some(Arc::clone(binding));
                ctx.match_kind = Some(kind);
                Ok(())
            }
            None if stop_if_not_found => Err(no_mapping(ctx, account, service, url)),
            None => Ok(()),
        }
    }

    fn identify_proxied(
        &self,
        req: &RequestHeader,
        ctx: &mut RequestCtx,
        scheme: &[u8],
        authority: &[u8],
        path_and_query: &[u8],
    ) -> std::result::Result<(), Refusal> {
        ctx.way_in = Some(WayIn::HttpProxy);
        if !scheme.eq_ignore_ascii_case(b"http") && !scheme.eq_ignore_ascii_case(b"https") {
            return Err(Refusal::new(
                StatusCode::BAD_REQUEST,
                "unsupported_scheme",
                "only http:// targets can be proxied; the gateway upgrades them to https",
            ));
        }
        let path = if path_and_query.is_empty() {
            &b"/"[..]
        } else {
            path_and_query
        };
        let url = format!(
            "https://{}{}",
            String::from_utf8_lossy(authority),
            String::from_utf8_lossy(path)
        );
        ctx.target =
            Some(Target::parse(&url).map_err(|e| {
                Refusal::new(StatusCode::BAD_REQUEST, "invalid_target", e.to_string())
            })?);

        ctx.account = header_text(req, &self.account_header).or_else(|| {
            self.config
                .default_account
                .as_ref()
                .map(ToString::to_string)
        });
        ctx.service = header_text(req, &self.service_header).or_else(|| {
            self.config
                .default_service
                .as_ref()
                .map(ToString::to_string)
        });
        if ctx.account.is_none() {
            return Err(Refusal::new(
                StatusCode::BAD_REQUEST,
                "missing_account",
                format!(
                    "name the account in the {} header, or set proxy.default_account",
                    self.account_header
                ),
            ));
        }
        Ok(())
    }

    /// Per-client-IP throttling of this listener.
    fn admit(&self, session: &Session, ctx: &mut RequestCtx) -> std::result::Result<(), Refusal> {
        let Some(peer) = session
            .client_addr()
            .and_then(|a| a.as_inet())
            .map(|a| a.ip())
        else {
            return Ok(());
        };
        let client = self.throttle.client_ip(peer, &session.req_header().headers);
        ctx.client = Some(client);
        self.throttle.check(client).map_err(|wait| {
            crate::metrics::global().throttled("proxy");
            let seconds = retry_after(wait);
            let mut refusal = Refusal::new(
                StatusCode::TOO_MANY_REQUESTS,
                "throttled",
                format!("too many requests from {client}; retry in {seconds} s"),
            );
            refusal.headers.push(("retry-after", seconds.to_string()));
            refusal
        })
    }

    /// The partner's address: an IP literal as is, a name from the cache while it is younger
    /// than [`DNS_CACHE_TTL`], else from a lookup on tokio's blocking pool.
    ///
    /// Limitation: the record's own TTL is not known through getaddrinfo, so a name that moves
    /// is followed within [`DNS_CACHE_TTL`]; a resolver with TTLs would follow it exactly.
    async fn resolve(&self, host: &str, port: u16) -> Option<SocketAddr> {
        if let Ok(ip) = host.parse::<std::net::IpAddr>() {
            return Some(SocketAddr::new(ip, port));
        }
        let key = (host.to_owned(), port);
        let cached = self
            .resolved
            .read()
            .ok()
            .and_then(|cache| cache.get(&key).copied());
        if let Some((addr, at)) = cached {
            if at.elapsed() < DNS_CACHE_TTL {
                return Some(addr);
            }
        }
        let addr = match tokio::net::lookup_host((host, port)).await {
            Ok(mut addrs) => addrs.next(),
            Err(e) => {
                debug!(host, error = %e, "partner name did not resolve");
                None
            }
        }?;
        if let Ok(mut cache) = self.resolved.write() {
            // Bounded: names come from mappings or callers; forget them all past a limit.
            if cache.len() >= DNS_CACHE_ENTRIES {
                cache.clear();
            }
            cache.insert(key, (addr, Instant::now()));
        }
        Some(addr)
    }

    fn peer(&self, addr: SocketAddr, target: &Target, binding: Option<&Binding>) -> HttpPeer {
        let mut peer = HttpPeer::new(addr, true, target.sni.clone());
        let ms = Duration::from_millis;
        let options = &mut peer.options;
        options.connection_timeout = Some(ms(self.upstream.connect_timeout_ms));
        options.total_connection_timeout = Some(ms(self.upstream.handshake_timeout_ms));
        options.read_timeout = Some(ms(self.upstream.read_timeout_ms));
        options.write_timeout = Some(ms(self.upstream.write_timeout_ms));
        options.idle_timeout = Some(ms(self.upstream.idle_timeout_ms));
        options.alpn = if self.upstream.http2 {
            ALPN::H2H1
        } else {
            ALPN::H1
        };
        if let Some(binding) = binding {
            peer.client_cert_key = Some(Arc::clone(&binding.cert_key));
            peer.options.ca = binding.trust.ca.clone();
            peer.options.verify_cert = binding.verify_server;
            peer.options.verify_hostname = binding.verify_server;
            peer.group_key = binding.group_key;
        }
        peer
    }
}

fn identify_forward(
    req: &RequestHeader,
    ctx: &mut RequestCtx,
) -> std::result::Result<bool, Refusal> {
    let path = req.uri.path();
    let account = path
        .strip_prefix(FORWARD_PREFIX)
        .map(|rest| rest.trim_end_matches('/'))
        .filter(|account| !account.is_empty() && !account.contains('/'));
    let Some(account) = account else {
        return Err(Refusal::new(
            StatusCode::NOT_FOUND,
            "unknown_route",
            "this listener serves /mtls/account/{accountId} with LP-forward-url, and \
             absolute-form requests from services that use it as their HTTP proxy",
        ));
    };
    ctx.way_in = Some(WayIn::Forward);
    ctx.account = Some(account.to_owned());
    ctx.service = header_text(req, &HeaderName::from_static(SERVICE_NAME));
    ctx.authorization = req.headers.get(AUTHORIZATION_OVERRIDE).cloned();

    let Some(url) = header_text(req, &HeaderName::from_static(FORWARD_URL)) else {
        return Err(Refusal::new(
            StatusCode::BAD_REQUEST,
            "missing_forward_url",
            "the LP-forward-url header must name the partner's https:// URL",
        ));
    };
    ctx.target = Some(Target::parse(&url).map_err(|e| {
        Refusal::new(
            StatusCode::BAD_REQUEST,
            "invalid_forward_url",
            e.to_string(),
        )
    })?);
    let stop = header_text(req, &HeaderName::from_static(STOP_IF_NOT_FOUND))
        .is_some_and(|v| v.eq_ignore_ascii_case("true"));
    Ok(stop)
}

fn no_mapping(ctx: &RequestCtx, account: &str, service: &str, url: &str) -> Refusal {
    let (status, code) = match ctx.way_in {
        // One public client of the original treats 400 as "no mapping"; keep that.
        Some(WayIn::Forward) => (StatusCode::BAD_REQUEST, "certificate_not_found"),
        _ => (StatusCode::FORBIDDEN, "no_mapping"),
    };
    Refusal::new(
        status,
        code,
        format!(
            "no certificate is mapped for account {account:?}, service {service:?} and URL \
             {url:?}; map one, or check the three values"
        ),
    )
    .with("account", account)
    .with("service", service)
    .with("url", url)
}

fn header_text(req: &RequestHeader, name: &HeaderName) -> Option<String> {
    let value = req.headers.get(name)?.to_str().ok()?.trim();
    (!value.is_empty()).then(|| value.to_owned())
}

async fn respond_json(
    session: &mut Session,
    status: StatusCode,
    body: serde_json::Value,
    headers: &[(&'static str, String)],
) -> Result<()> {
    let body = Bytes::from(serde_json::to_vec(&body).unwrap_or_default());
    let mut response = ResponseHeader::build(status, Some(3 + headers.len()))?;
    response.insert_header(http::header::CONTENT_TYPE, "application/json")?;
    response.insert_header(http::header::CONTENT_LENGTH, body.len().to_string())?;
    for (name, value) in headers {
        // Transport messages come from error texts; keep only what a header can carry.
        let value: String = value
            .chars()
            .filter(|c| c.is_ascii() && !c.is_ascii_control())
            .collect();
        response.insert_header(*name, value)?;
    }
    session
        .write_response_header(Box::new(response), false)
        .await?;
    session.write_response_body(Some(body), true).await
}

/// An upstream failure, in a stable code and a sentence.
fn classify(error: &Error) -> (&'static str, String) {
    let code = match error.etype() {
        ErrorType::ConnectTimedout => "connect_timeout",
        ErrorType::ConnectRefused => "connection_refused",
        ErrorType::ConnectNoRoute => "no_route",
        ErrorType::TLSHandshakeTimedout => "tls_handshake_timeout",
        ErrorType::TLSHandshakeFailure | ErrorType::InvalidCert | ErrorType::HandshakeError => {
            "tls_handshake_failed"
        }
        ErrorType::ReadTimedout => "read_timeout",
        ErrorType::WriteTimedout => "write_timeout",
        ErrorType::ConnectionClosed => "connection_closed",
        ErrorType::Custom("dns_failed") => "dns_failed",
        _ => "upstream_error",
    };
    let detail = error.to_string();
    (
        code,
        format!("the partner could not be reached or refused the connection ({code}): {detail}"),
    )
}

/// A TLS 1.3 partner judges the client certificate after the client has finished its side of
/// the handshake, so a refusal shows only as a new connection closing before any answer.
///
/// Limitation: a partner that accepts the certificate and then drops a new connection before
/// answering is reported the same way; telling them apart needs the TLS alert, which pingora's
/// upstream session does not surface.
fn closed_after_handshake(error: &Error, ctx: &RequestCtx) -> bool {
    let closed = matches!(
        error.etype(),
        ErrorType::WriteError | ErrorType::ReadError | ErrorType::ConnectionClosed
    );
    closed && ctx.reused == Some(false) && ctx.binding.is_some()
}

/// Why a connection to a partner could not be established, when that is what `error` says.
fn handshake_failure(error: &Error, ctx: &RequestCtx) -> Option<HandshakeFailure> {
    if ctx.admin || error.esource() != &pingora::ErrorSource::Upstream {
        return None;
    }
    if closed_after_handshake(error, ctx) {
        return Some(HandshakeFailure::ClientCertificateRefused);
    }
    match error.etype() {
        ErrorType::ConnectTimedout | ErrorType::TLSHandshakeTimedout => {
            Some(HandshakeFailure::Timeout)
        }
        ErrorType::ConnectRefused => Some(HandshakeFailure::ConnectionRefused),
        ErrorType::TLSHandshakeFailure | ErrorType::InvalidCert | ErrorType::HandshakeError => {
            Some(HandshakeFailure::from_tls_text(&error.to_string()))
        }
        // A TLS 1.3 partner's alert arrives on the first read of a new connection.
        ErrorType::ReadError | ErrorType::WriteError if ctx.reused == Some(false) => {
            match HandshakeFailure::from_tls_text(&error.to_string()) {
                HandshakeFailure::Other => None,
                reason => Some(reason),
            }
        }
        _ => None,
    }
}

/// The request's labels and outcome in the request metrics. Account and service are the
/// matched mapping's configured ids, never the caller's raw path or header values.
fn record_request(session: &Session, ctx: &RequestCtx) {
    let metrics = crate::metrics::global();
    let way_in = if ctx.admin {
        "admin_passthrough"
    } else {
        ctx.way_in.map_or("unknown", WayIn::as_str)
    };
    let binding = ctx.binding.as_deref();
    let account = binding.map_or("-", |b| b.account.as_str());
    let service = binding.map_or("-", |b| b.service.as_str());
    let outcome = ctx.error_code.unwrap_or("ok");
    metrics
        .requests
        .with_label_values(&[way_in, account, service, outcome])
        .inc();
    metrics
        .request_duration
        .with_label_values(&[way_in])
        .observe(ctx.started.elapsed().as_secs_f64());
    let bytes = [
        ("in", session.body_bytes_read()),
        ("out", session.body_bytes_sent()),
    ];
    for (direction, count) in bytes {
        metrics
            .request_bytes
            .with_label_values(&[way_in, direction])
            .inc_by(count as u64);
    }
}

#[async_trait]
impl ProxyHttp for Proxy {
    type CTX = RequestCtx;

    fn new_ctx(&self) -> RequestCtx {
        RequestCtx {
            started: Instant::now(),
            way_in: None,
            account: None,
            service: None,
            target: None,
            binding: None,
            match_kind: None,
            authorization: None,
            upstream_started: None,
            reused: None,
            error_code: None,
            admin: false,
            client: None,
        }
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<bool> {
        let outcome = self.admit(session, ctx).and_then(|()| {
            if self.is_admin_path(session.req_header().uri.path()) {
                ctx.admin = true;
                return Ok(());
            }
            self.identify(session.req_header(), ctx)
        });
        let Err(refusal) = outcome else {
            return Ok(false);
        };
        ctx.error_code = Some(refusal.code);
        let mut body = refusal.fields;
        body.insert("code".into(), refusal.code.into());
        body.insert("message".into(), refusal.message.into());
        respond_json(session, refusal.status, body.into(), &refusal.headers).await?;
        Ok(true)
    }

    async fn upstream_peer(
        &self,
        _session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> Result<Box<HttpPeer>> {
        if ctx.admin {
            let Some(admin) = self.admin.get() else {
                return Error::e_explain(ErrorType::ConnectRefused, "admin listener is not up");
            };
            return Ok(Box::new(HttpPeer::new(*admin, false, String::new())));
        }
        let Some(target) = ctx.target.as_ref() else {
            return Error::e_explain(ErrorType::InternalError, "request has no target");
        };
        ctx.upstream_started = Some(Instant::now());
        let addr = self.resolve(&target.host, target.port).await;
        let Some(addr) = addr else {
            ctx.error_code = Some("dns_failed");
            let why = format!("the partner's host name {} does not resolve", target.host);
            return Error::e_explain(ErrorType::Custom("dns_failed"), why);
        };
        Ok(Box::new(self.peer(addr, target, ctx.binding.as_deref())))
    }

    async fn connected_to_upstream(
        &self,
        _session: &mut Session,
        reused: bool,
        _peer: &HttpPeer,
        _fd: std::os::unix::io::RawFd,
        _digest: Option<&pingora::protocols::Digest>,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        ctx.reused = Some(reused);
        if !ctx.admin {
            crate::metrics::global().upstream_connected(reused);
        }
        Ok(())
    }

    async fn upstream_request_filter(
        &self,
        _session: &mut Session,
        upstream: &mut RequestHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        if ctx.admin {
            // The admin listener trusts loopback to name the client, for its own throttling.
            if let Some(client) = ctx.client {
                upstream.insert_header("x-forwarded-for", client.to_string())?;
            }
            return Ok(());
        }
        let Some(target) = ctx.target.as_ref() else {
            return Error::e_explain(ErrorType::InternalError, "request has no target");
        };
        let uri = target.path_and_query.parse::<http::Uri>().or_else(|_| {
            Error::e_explain(ErrorType::InternalError, "target path does not parse")
        })?;
        upstream.set_uri(uri);
        upstream.insert_header(http::header::HOST, &target.authority)?;

        // The gateway's own headers and the caller's credentials for it stay here.
        let own: Vec<HeaderName> = upstream
            .headers
            .keys()
            .filter(|name| name.as_str().starts_with("lp-"))
            .cloned()
            .collect();
        for name in own {
            upstream.remove_header(&name);
        }
        upstream.remove_header(&self.account_header);
        upstream.remove_header(&self.service_header);
        upstream.remove_header(&http::header::PROXY_AUTHORIZATION);
        upstream.remove_header("proxy-connection");
        // On the forward call `Authorization` is the caller's credential for the gateway; the
        // partner's comes in LP-authorization-override.
        if ctx.way_in == Some(WayIn::Forward) {
            upstream.remove_header(&http::header::AUTHORIZATION);
        }
        if let Some(authorization) = ctx.authorization.take() {
            upstream.insert_header(http::header::AUTHORIZATION, authorization)?;
        }
        Ok(())
    }

    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        e: &Error,
        ctx: &mut RequestCtx,
    ) -> FailToProxy {
        let dead = matches!(
            e.etype(),
            ErrorType::WriteError | ErrorType::ReadError | ErrorType::ConnectionClosed
        ) && e.esource() == &pingora::ErrorSource::Downstream;
        if dead || session.response_written().is_some() {
            ctx.error_code.get_or_insert("aborted");
            return FailToProxy {
                error_code: 0,
                can_reuse_downstream: false,
            };
        }
        let (code, message) = match e.esource() {
            pingora::ErrorSource::Downstream => {
                ("bad_request", "the request could not be read".to_owned())
            }
            pingora::ErrorSource::Upstream if closed_after_handshake(e, ctx) => (
                "tls_handshake_failed",
                format!(
                    "the partner closed the new connection before answering, which is how a \
                     TLS 1.3 partner refuses a client certificate; check that it trusts the \
                     mapped certificate's issuer: {e}"
                ),
            ),
            pingora::ErrorSource::Upstream => classify(e),
            _ if matches!(e.etype(), ErrorType::Custom("dns_failed")) => classify(e),
            _ => (
                "internal_error",
                "the gateway failed to handle the request".to_owned(),
            ),
        };
        ctx.error_code = Some(code);
        if let Some(reason) = handshake_failure(e, ctx) {
            crate::metrics::global().handshake_failed(reason);
        }
        let status = match (e.esource(), ctx.way_in) {
            (pingora::ErrorSource::Downstream, _) => StatusCode::BAD_REQUEST,
            (_, Some(WayIn::Forward)) if code != "internal_error" => StatusCode::FAILED_DEPENDENCY,
            _ if code.ends_with("_timeout") => StatusCode::GATEWAY_TIMEOUT,
            _ if code == "internal_error" => StatusCode::INTERNAL_SERVER_ERROR,
            _ => StatusCode::BAD_GATEWAY,
        };
        let headers = if status == StatusCode::FAILED_DEPENDENCY {
            vec![
                (MESSAGE_FROM_TRANSPORT, message.clone()),
                (ERROR_FROM_TRANSPORT, code.to_owned()),
            ]
        } else {
            Vec::new()
        };
        let body = json!({ "code": code, "message": message });
        let _ = respond_json(session, status, body, &headers).await;
        FailToProxy {
            error_code: status.as_u16(),
            can_reuse_downstream: false,
        }
    }

    /// A classified failure is already in the access line with its code; pingora's own error
    /// line would only repeat it.
    fn suppress_error_log(&self, _session: &Session, ctx: &RequestCtx, _error: &Error) -> bool {
        ctx.error_code.is_some()
    }

    async fn logging(&self, session: &mut Session, _e: Option<&Error>, ctx: &mut RequestCtx) {
        record_request(session, ctx);
        let status = session.response_written().map_or(0, |r| r.status.as_u16());
        let binding = ctx.binding.as_deref();
        info!(
            target: "mtls_gateway::access",
            way_in = ctx.way_in.map_or("unknown", WayIn::as_str),
            account = ctx.account.as_deref().unwrap_or("-"),
            service = ctx.service.as_deref().unwrap_or("-"),
            host = ctx.target.as_ref().map_or("-", |t| t.host.as_str()),
            mapping = %binding.map_or_else(|| "-".to_owned(), |b| b.origin.label()),
            matched = ctx.match_kind.map_or("-", MatchKind::as_str),
            certificate = binding.map_or("-", |b| b.certificate.fingerprint.short()),
            status,
            bytes_in = session.body_bytes_read(),
            bytes_out = session.body_bytes_sent(),
            upstream_ms = ctx.upstream_started.map_or(0, |t| t.elapsed().as_millis() as u64),
            total_ms = ctx.started.elapsed().as_millis() as u64,
            reused = ctx.reused.map_or("-", |r| if r { "yes" } else { "no" }),
            error = ctx.error_code.unwrap_or("-"),
            "request"
        );
    }
}
