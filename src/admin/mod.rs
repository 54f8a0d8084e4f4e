//! The admin API: certificates, mappings, the P12 tester, check mapping and explain, on its own
//! listener (axum, run as a pingora background service), with authentication, throttling and
//! health.
//!
//! Two route families drive the same store: the compatible routes of the hosted service this
//! gateway replaces ([`compat`]), and the native `/v1/` routes ([`native`]).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use axum::body::Body;
use axum::extract::{ConnectInfo, RawPathParams, Request, State};
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, MethodRouter};
use axum::{Json, Router};
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use serde::Deserialize;
use serde_json::json;
use tracing::{error, info, warn};

use crate::config::UpstreamConfig;
use crate::snapshot::SnapshotHandle;
use crate::store::Store;

pub mod auth;
pub mod compat;
pub mod error;
pub mod explain;
pub mod native;
pub mod probe;
pub mod throttle;

use auth::{Authenticator, Principal, RouteClass, SignedRequest};
use error::ApiError;
use throttle::{retry_after, Throttle, ThrottleConfig};

/// The admin listener binds to loopback unless told otherwise.
pub const DEFAULT_ADMIN_LISTEN: &str = "127.0.0.1:9090";

/// Uploads above this are refused with 413: a P12 with a long chain is a few KiB; a MiB is
/// generous and keeps a burst of uploads from exhausting memory.
pub const DEFAULT_MAX_UPLOAD_BYTES: usize = 1 << 20;

/// How stale the snapshot may grow while the store is unreachable before `/readyz` fails.
pub const DEFAULT_STALENESS_LIMIT_SECONDS: u64 = 600;

/// Multipart framing and JSON field names on top of the file itself.
const BODY_OVERHEAD_BYTES: usize = 64 * 1024;

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    pub listen: SocketAddr,
    pub max_upload_bytes: usize,
    pub staleness_limit_seconds: u64,
    /// Admin callers are local by default, so loopback is trusted to forward client addresses
    /// (the proxy listener forwards compatible admin paths here).
    #[serde(deserialize_with = "ThrottleConfig::deserialize_trusting_loopback")]
    pub throttle: ThrottleConfig,
    /// The URL scheme and authority clients use, for OAuth signatures, when a TLS-terminating
    /// proxy sits in front: `https://gateway.example`. By default, `http://` + the Host header.
    pub public_base_url: Option<String>,
    /// Service names and the numeric ids the compatible mapping routes use for them
    /// (`serviceId`). Mappings store the name; an id not listed here is used as the name.
    pub services: std::collections::BTreeMap<String, String>,
}

impl AdminConfig {
    /// The service name for a compatible `serviceId`.
    pub fn service_name(&self, id: &str) -> String {
        self.services
            .iter()
            .find(|(_, known)| known.as_str() == id)
            .map_or_else(|| id.to_owned(), |(name, _)| name.clone())
    }

    /// The compatible `serviceId` for a service name.
    pub fn service_id(&self, name: &str) -> String {
        self.services
            .get(name)
            .cloned()
            .unwrap_or_else(|| name.to_owned())
    }
}

impl Default for AdminConfig {
    fn default() -> Self {
        Self {
            listen: DEFAULT_ADMIN_LISTEN
                .parse()
                .unwrap_or(([127, 0, 0, 1], 9090).into()),
            max_upload_bytes: DEFAULT_MAX_UPLOAD_BYTES,
            staleness_limit_seconds: DEFAULT_STALENESS_LIMIT_SECONDS,
            throttle: ThrottleConfig::trusting_loopback(),
            public_base_url: None,
            services: [("TEST_SERVICE", "0"), ("IDP", "1"), ("WEBHOOKS", "2")]
                .into_iter()
                .map(|(name, id)| (name.to_owned(), id.to_owned()))
                .collect(),
        }
    }
}

/// What every admin handler can reach.
#[derive(Debug, Clone)]
pub struct AdminState {
    pub snapshot: Arc<SnapshotHandle>,
    pub auth: Arc<Authenticator>,
    pub throttle: Arc<Throttle>,
    pub config: Arc<AdminConfig>,
    pub upstream: Arc<UpstreamConfig>,
    pub expires_soon_days: i64,
    /// The address the admin listener bound (port 0 in the config picks a free one); the proxy
    /// listener passes compatible admin paths there.
    pub bound: Arc<std::sync::OnceLock<SocketAddr>>,
}

impl AdminState {
    /// The store, or 503 while the refresher has not opened it yet.
    pub fn store(&self) -> Result<Arc<dyn Store>, ApiError> {
        self.snapshot.store().ok_or_else(ApiError::store_not_ready)
    }

    /// Applies a write to forwarding on this instance before answering: a change is usable
    /// as soon as the caller sees its response.
    pub async fn propagate(&self) {
        if tokio::time::timeout(Duration::from_secs(5), self.snapshot.rebuild_now())
            .await
            .is_err()
        {
            warn!("snapshot rebuild after a write took over 5 s; it continues in the background");
        }
    }

    pub fn p12_policy(&self) -> crate::p12::DiagnosisPolicy {
        crate::p12::DiagnosisPolicy {
            expires_soon: time::Duration::days(self.expires_soon_days),
            ..Default::default()
        }
    }
}

/// A route guarded by throttling and authentication for `class`.
pub fn guarded(
    state: &AdminState,
    class: RouteClass,
    route: MethodRouter<AdminState>,
) -> MethodRouter<AdminState> {
    route.route_layer(middleware::from_fn_with_state(
        (state.clone(), class),
        guard,
    ))
}

async fn guard(
    State((state, class)): State<(AdminState, RouteClass)>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    params: RawPathParams,
    request: Request,
    next: Next,
) -> Response {
    let client = state.throttle.client_ip(peer.ip(), request.headers());
    if let Err(wait) = state.throttle.check(client) {
        crate::metrics::global().throttled("admin");
        let seconds = retry_after(wait);
        return ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "throttled",
            format!("too many requests from {client}; retry in {seconds} s"),
        )
        .with_header("retry-after", seconds.to_string())
        .into_response();
    }

    let (parts, body) = request.into_parts();
    let limit = state.config.max_upload_bytes + BODY_OVERHEAD_BYTES;
    let Ok(body) = axum::body::to_bytes(body, limit).await else {
        return too_large(state.config.max_upload_bytes).into_response();
    };
    let account = params
        .iter()
        .find(|(name, _)| *name == "accountId" || *name == "account")
        .map(|(_, value)| value.to_owned());
    let url = request_url(&state.config, &parts);
    let signed = SignedRequest {
        method: &parts.method,
        url: &url,
        headers: &parts.headers,
        body: Some(&body),
    };

    match state.auth.authorize(class, account.as_deref(), &signed) {
        Ok(principal) => {
            let mut request = Request::from_parts(parts, Body::from(body));
            request.extensions_mut().insert(principal);
            next.run(request).await
        }
        Err((failure, error)) => {
            crate::metrics::global().auth_failed(failure.as_str());
            warn!(
                target: "mtls_gateway::admin",
                client = %client,
                route = ?class,
                reason = failure.as_str(),
                "authentication refused"
            );
            error.into_response()
        }
    }
}

/// The URL as the client addressed it, for OAuth signature checks.
fn request_url(config: &AdminConfig, parts: &axum::http::request::Parts) -> String {
    let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    match &config.public_base_url {
        Some(base) => format!("{}{path}", base.trim_end_matches('/')),
        None => {
            let host = parts
                .headers
                .get(axum::http::header::HOST)
                .and_then(|h| h.to_str().ok())
                .unwrap_or("localhost");
            format!("http://{host}{path}")
        }
    }
}

pub fn too_large(limit: usize) -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "payload_too_large",
        format!("the request body is over the {limit}-byte limit; a P12 file is a few KiB"),
    )
}

/// The principal that passed [`guard`]; every write's audit line names it.
pub fn principal_of(extensions: &axum::http::Extensions) -> String {
    extensions
        .get::<Principal>()
        .map_or_else(|| "anonymous".to_owned(), Principal::label)
}

/// One audit line per admin write: who, what, which account, and the result.
pub fn audit(who: &str, action: &str, account: &str, result: &str) {
    info!(target: "mtls_gateway::audit", who, action, account, result, "admin write");
}

/// The whole admin application.
pub fn router(state: AdminState) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .merge(compat::routes(&state))
        .merge(native::routes(&state))
        .fallback(|| async {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "unknown_route",
                "no admin route has this path",
            )
        })
        .with_state(state)
}

async fn healthz() -> Json<serde_json::Value> {
    Json(json!({ "status": "alive" }))
}

/// Ready once the first snapshot is loaded; still ready, but degraded, while the store is
/// unreachable and the snapshot is younger than the staleness limit.
async fn readyz(State(state): State<AdminState>) -> Response {
    let snapshot = state.snapshot.load();
    let Some(built_at) = snapshot.built_at else {
        let body =
            json!({ "status": "starting", "message": "the first snapshot is not loaded yet" });
        return (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response();
    };
    let age = SystemTime::now()
        .duration_since(built_at)
        .unwrap_or_default()
        .as_secs();
    let error = state.snapshot.last_error();
    let limit = state.config.staleness_limit_seconds;
    let (status, word) = match &error {
        None => (StatusCode::OK, "ready"),
        Some(_) if age <= limit => (StatusCode::OK, "degraded"),
        Some(_) => (StatusCode::SERVICE_UNAVAILABLE, "stale"),
    };
    let body = json!({
        "status": word,
        "revision": snapshot.revision,
        "mappings": snapshot.len(),
        "skipped": snapshot.skipped.len(),
        "snapshot_age_seconds": age,
        "last_error": error,
    });
    (status, Json(body)).into_response()
}

async fn metrics() -> Response {
    crate::metrics::global().before_scrape();
    let families = prometheus::gather();
    let mut text = String::new();
    match prometheus::TextEncoder::new().encode_utf8(&families, &mut text) {
        Ok(()) => ([("content-type", "text/plain; version=0.0.4")], text).into_response(),
        Err(e) => ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal_error",
            e.to_string(),
        )
        .into_response(),
    }
}

/// Runs the admin application inside the pingora server, stopping with it.
#[derive(Debug)]
pub struct AdminService {
    pub state: AdminState,
}

#[async_trait]
impl BackgroundService for AdminService {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        tokio::spawn(follow_consumer_secrets(
            self.state.clone(),
            shutdown.clone(),
        ));
        let listen = self.state.config.listen;
        // During `run --upgrade` the old process holds the address until it has drained, so
        // binding is retried rather than given up.
        let mut attempts = 0;
        let listener = loop {
            match tokio::net::TcpListener::bind(listen).await {
                Ok(listener) => break listener,
                Err(e) => {
                    attempts += 1;
                    if attempts == 1 {
                        let address = listen;
                        warn!(%address, error = %e, "admin listener cannot bind yet; retrying");
                    }
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                        _ = shutdown.changed() => return,
                    }
                }
            }
        };
        let address = listener.local_addr().unwrap_or(listen);
        let _ = self.state.bound.set(address);
        info!(address = %address, "admin listener started");
        let app = router(self.state.clone()).into_make_service_with_connect_info::<SocketAddr>();
        let stopped = async move {
            let _ = shutdown.changed().await;
        };
        if let Err(e) = axum::serve(listener, app)
            .with_graceful_shutdown(stopped)
            .await
        {
            error!(error = %e, "admin listener failed");
        }
    }
}

/// Keeps the OAuth 1.0a consumer secrets kept in the store current: read once the store is
/// open, then every [`auth::STORE_SECRET_REFRESH`]. A failed read keeps the last secret.
async fn follow_consumer_secrets(state: AdminState, mut shutdown: ShutdownWatch) {
    let keys = state.auth.consumers_in_store();
    if keys.is_empty() {
        return;
    }
    loop {
        let pause = match state.snapshot.store() {
            None => Duration::from_millis(250),
            Some(store) => {
                for key in &keys {
                    match store.consumer_secret(key).await {
                        Ok(secret) => {
                            if secret.is_none() {
                                let consumer = key;
                                warn!(%consumer, "OAuth1 consumer has no secret in the store");
                            }
                            state.auth.set_secret_from_store(key, secret);
                        }
                        Err(error) => warn!(
                            consumer = %key,
                            %error,
                            "OAuth1 consumer secret could not be read; keeping the last one"
                        ),
                    }
                }
                auth::STORE_SECRET_REFRESH
            }
        };
        tokio::select! {
            _ = tokio::time::sleep(pause) => {}
            _ = shutdown.changed() => return,
        }
    }
}
