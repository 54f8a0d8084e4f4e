//! The native `/v1/` routes: JSON in and out, P12 files as base64, resources per account.
//!
//! Every handler carries its OpenAPI description (`#[utoipa::path]`) and every body type its
//! schema, so `GET /v1/openapi.json` is generated from this file and cannot drift from it.
//! Bodies are parsed here rather than by axum's `Json` extractor, so that every refusal is the
//! API's JSON error with a stable code.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::{Extensions, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json, Router};
use base64::Engine as _;
use secrecy::SecretString;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{OpenApi, ToSchema};
use utoipa_axum::router::{OpenApiRouter, UtoipaMethodRouter};
use utoipa_axum::routes;

use super::auth::RouteClass;
use super::error::ApiError;
use super::explain::{self, ExplainRequest, Explanation};
use super::probe::{self, ProbeError};
use super::{audit, guarded, principal_of, AdminState};
use crate::ids::{AccountId, CertificateId, EntryName, MappingId, ServiceName};
use crate::p12::{self, Report, UsableP12};
use crate::proxy::Target;
use crate::store::{
    CertificateChange, CertificateRecord, Mapping, MappingSpec, NewCertificate, StoreError,
    UrlMatch,
};

/// Where the generated OpenAPI document is served, without authentication.
pub const OPENAPI_PATH: &str = "/v1/openapi.json";

/// The P12 tester waits for the partner's answer at most this long after the handshake, even
/// when the upstream read timeout is longer: a person is waiting on the admin call.
const PROBE_READ_CAP: Duration = Duration::from_secs(15);

/// The whole native API, guarded, with `GET /v1/openapi.json` beside it.
pub fn routes(state: &AdminState) -> Router<AdminState> {
    let (router, document) = api(state).split_for_parts();
    let json = document
        .to_json()
        .unwrap_or_else(|_| String::from(r#"{"openapi":"3.1.0"}"#));
    router.layer(Extension(OpenApiJson(Arc::from(json))))
}

/// The OpenAPI document of the native routes, as served at [`OPENAPI_PATH`].
pub fn openapi(state: &AdminState) -> utoipa::openapi::OpenApi {
    api(state).into_openapi()
}

fn api(state: &AdminState) -> OpenApiRouter<AdminState> {
    use RouteClass::{NativeRead, NativeWrite, P12Test};
    let guard = |class, (schemas, paths, route): UtoipaMethodRouter<AdminState>| {
        (schemas, paths, guarded(state, class, route))
    };
    OpenApiRouter::with_openapi(NativeApi::openapi())
        .routes(routes!(openapi_document))
        .routes(guard(P12Test, routes!(test_p12)))
        .routes(guard(NativeRead, routes!(list_certificates)))
        .routes(guard(NativeWrite, routes!(create_certificate)))
        .routes(guard(NativeRead, routes!(get_certificate)))
        .routes(guard(
            NativeWrite,
            routes!(update_certificate, delete_certificate),
        ))
        .routes(guard(NativeRead, routes!(list_mappings)))
        .routes(guard(NativeWrite, routes!(create_mapping)))
        .routes(guard(NativeRead, routes!(get_mapping)))
        .routes(guard(NativeWrite, routes!(update_mapping, delete_mapping)))
        .routes(guard(NativeRead, routes!(explain_request)))
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "mtls-gateway native admin API",
        description = "Certificates (PKCS#12, base64 in JSON), mappings from account + service \
                       + URL to a certificate, the P12 tester and the explain call."
    ),
    modifiers(&BearerSecurity),
    tags(
        (name = "p12", description = "Diagnose a P12 file, optionally against a partner"),
        (name = "certificates", description = "Client certificates of an account"),
        (name = "mappings", description = "Which certificate a service presents to which URL"),
        (name = "explain", description = "Why a request would get the certificate it gets"),
        (name = "meta", description = "This document")
    )
)]
struct NativeApi;

struct BearerSecurity;

impl utoipa::Modify for BearerSecurity {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let scheme = HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build();
        openapi
            .components
            .get_or_insert_with(Default::default)
            .add_security_scheme("bearer", SecurityScheme::Http(scheme));
    }
}

#[derive(Clone)]
struct OpenApiJson(Arc<str>);

// ------------------------------------------------------------------------------------------
// Shapes.
// ------------------------------------------------------------------------------------------

/// The JSON body of every refusal.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    /// Stable and machine-readable: `invalid_json`, `unknown_field`, `invalid_field`,
    /// `invalid_base64`, `invalid_url`, `invalid_ca_pem`, `invalid_account`, `invalid_id`,
    /// `invalid_query`, `unusable_p12`, `not_found`, `conflict`, `certificate_in_use`,
    /// `unknown_certificate`, `unauthorized`, `forbidden`, `throttled`,
    /// `store_unavailable`...
    pub code: String,
    /// A sentence a person can act on.
    pub message: String,
    /// Extra detail: the diagnosis report, the mappings that block a delete.
    #[schema(value_type = Option<Object>)]
    pub detail: Option<serde_json::Value>,
}

/// How a mapping's URL is compared with a request's.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum UrlMatchView {
    /// The whole URL, query included.
    #[default]
    Exact,
    /// Every URL under this one at a path segment boundary; the longest prefix wins.
    Prefix,
}

impl From<UrlMatch> for UrlMatchView {
    fn from(value: UrlMatch) -> Self {
        match value {
            UrlMatch::Exact => Self::Exact,
            UrlMatch::Prefix => Self::Prefix,
        }
    }
}

impl From<UrlMatchView> for UrlMatch {
    fn from(value: UrlMatchView) -> Self {
        match value {
            UrlMatchView::Exact => Self::Exact,
            UrlMatchView::Prefix => Self::Prefix,
        }
    }
}

/// A P12 file to diagnose, and optionally a partner to try it against.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct P12TestRequest {
    /// The P12 file, standard base64.
    pub p12: String,
    #[schema(value_type = String)]
    pub password: SecretString,
    /// An `https://` URL: with it, a real mTLS handshake and `GET` are made with the file.
    pub target_url: Option<String>,
    /// PEM CA certificates to verify the partner with, instead of the system roots.
    pub ca_pem: Option<String>,
}

/// The diagnosis report's fields (`verdict`, `problems`, `warnings`, `encryption`, `facts`)
/// and, with `target_url`, the probe's outcome.
#[derive(Debug, Serialize, ToSchema)]
pub struct P12TestResponse {
    #[serde(flatten)]
    #[schema(value_type = Object)]
    pub report: Report,
    pub probe: Option<RequestProbe>,
}

/// What happened when the file was used against the partner.
#[derive(Debug, Serialize, ToSchema)]
pub struct RequestProbe {
    pub target_url: String,
    pub succeeded: bool,
    /// The partner's HTTP status.
    pub status: Option<u16>,
    pub http_version: Option<String>,
    pub handshake_ms: Option<u64>,
    pub error: Option<ProbeError>,
}

/// A certificate to store.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CertificateCreate {
    /// Unique within the account.
    pub name: String,
    /// The P12 file, standard base64.
    pub p12: String,
    #[schema(value_type = String)]
    pub password: SecretString,
}

/// A change to a stored certificate: a new name, a new file (with its password), or both.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CertificateUpdate {
    pub name: Option<String>,
    /// The replacement P12 file, standard base64; `password` must come with it.
    pub p12: Option<String>,
    #[schema(value_type = Option<String>)]
    pub password: Option<SecretString>,
}

/// The P12 file is as secret as its password: `Debug` shows only its length.
struct Redacted<'a>(&'a str);

impl std::fmt::Debug for Redacted<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "[{} base64 characters]", self.0.len())
    }
}

impl std::fmt::Debug for P12TestRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("P12TestRequest")
            .field("p12", &Redacted(&self.p12))
            .field("password", &"[redacted]")
            .field("target_url", &self.target_url)
            .finish_non_exhaustive()
    }
}

impl std::fmt::Debug for CertificateCreate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertificateCreate")
            .field("name", &self.name)
            .field("p12", &Redacted(&self.p12))
            .field("password", &"[redacted]")
            .finish()
    }
}

impl std::fmt::Debug for CertificateUpdate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertificateUpdate")
            .field("name", &self.name)
            .field("p12", &self.p12.as_deref().map(Redacted))
            .field("password", &self.password.as_ref().map(|_| "[redacted]"))
            .finish()
    }
}

/// A stored certificate, as reads return it; never its file or password.
#[derive(Debug, Serialize, ToSchema)]
pub struct CertificateView {
    pub id: u64,
    pub account: String,
    pub name: String,
    /// SHA-256 of the leaf certificate's DER, lowercase hex.
    pub fingerprint: String,
    pub subject: String,
    pub issuer: String,
    pub serial: String,
    /// RFC 3339.
    pub not_before: String,
    /// RFC 3339.
    pub not_after: String,
    /// `available`, `expired`, or `unavailable` (not valid yet).
    pub status: &'static str,
    /// RFC 3339.
    pub updated_at: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct CertificateList {
    pub certificates: Vec<CertificateView>,
}

/// A mapping from account + service + URL to a certificate, as written.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MappingBody {
    /// Unique within the account.
    pub name: String,
    /// The calling service, as the forward call's `LP-service-name` names it.
    pub service: String,
    /// The partner URL, `https://`.
    pub url: String,
    pub certificate_id: u64,
    /// Default `true`.
    pub enabled: Option<bool>,
    /// Default `exact`.
    pub url_match: Option<UrlMatchView>,
    /// PEM CA certificates that verify the partner; absent means the system roots.
    pub ca_pem: Option<String>,
    /// Default `true`; `false` accepts any partner certificate and is logged.
    pub verify_server: Option<bool>,
}

/// A stored mapping.
#[derive(Debug, Serialize, ToSchema)]
pub struct MappingView {
    pub id: u64,
    pub account: String,
    pub name: String,
    pub service: String,
    pub url: String,
    pub certificate_id: u64,
    pub enabled: bool,
    pub url_match: UrlMatchView,
    pub ca_pem: Option<String>,
    pub verify_server: bool,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct MappingList {
    pub mappings: Vec<MappingView>,
}

impl CertificateView {
    fn of(record: CertificateRecord) -> Self {
        let now = OffsetDateTime::now_utc();
        let status = if record.not_after <= now {
            "expired"
        } else if record.not_before > now {
            "unavailable"
        } else {
            "available"
        };
        Self {
            id: record.id.0,
            account: record.account.to_string(),
            name: record.name.to_string(),
            fingerprint: record.fingerprint.to_string(),
            subject: record.subject,
            issuer: record.issuer,
            serial: record.serial,
            not_before: rfc3339(record.not_before),
            not_after: rfc3339(record.not_after),
            status,
            updated_at: rfc3339(record.updated_at),
        }
    }
}

impl MappingView {
    fn of(mapping: Mapping) -> Self {
        let spec = mapping.spec;
        Self {
            id: mapping.id.0,
            account: mapping.account.to_string(),
            name: spec.name.to_string(),
            service: spec.service.to_string(),
            url: spec.url,
            certificate_id: spec.certificate_id.0,
            enabled: spec.enabled,
            url_match: spec.url_match.into(),
            ca_pem: spec.ca_pem,
            verify_server: spec.verify_server,
        }
    }
}

// ------------------------------------------------------------------------------------------
// The document itself.
// ------------------------------------------------------------------------------------------

/// The OpenAPI 3 document of these routes.
#[utoipa::path(
    get,
    path = "/v1/openapi.json",
    tag = "meta",
    responses((status = 200, description = "the OpenAPI document", body = Object))
)]
async fn openapi_document(Extension(document): Extension<OpenApiJson>) -> Response {
    let content_type = [("content-type", "application/json")];
    (content_type, document.0.to_string()).into_response()
}

// ------------------------------------------------------------------------------------------
// The P12 tester.
// ------------------------------------------------------------------------------------------

/// Diagnoses a P12 file; with `target_url`, also uses it for a real mTLS request. Stores
/// nothing.
#[utoipa::path(
    post,
    path = "/v1/p12/test",
    tag = "p12",
    request_body = P12TestRequest,
    responses(
        (status = 200, description = "usable (the probe may still have failed: see `probe`)",
         body = P12TestResponse),
        (status = 400, description = "bad JSON, base64, URL or CA bundle", body = ErrorBody),
        (status = 422, description = "the file cannot serve as a client identity",
         body = P12TestResponse),
    ),
    security(("bearer" = []))
)]
async fn test_p12(State(state): State<AdminState>, body: Bytes) -> Result<Response, ApiError> {
    let request: P12TestRequest = parse_body(&body)?;
    let der = decode_p12(&request.p12)?;
    if let Some(url) = &request.target_url {
        check_url(url)?;
    }
    if let Some(pem) = &request.ca_pem {
        check_ca_pem(pem)?;
    }

    let (report, usable) = diagnose(&state, der, request.password).await?;
    let Some(usable) = usable else {
        let body = P12TestResponse {
            report,
            probe: None,
        };
        return Ok((StatusCode::UNPROCESSABLE_ENTITY, Json(body)).into_response());
    };
    let probe = match request.target_url {
        Some(url) => Some(request_probe(&state, &usable, url, request.ca_pem.as_deref()).await),
        None => None,
    };

    Ok(Json(P12TestResponse { report, probe }).into_response())
}

async fn request_probe(
    state: &AdminState,
    usable: &UsableP12,
    url: String,
    ca_pem: Option<&str>,
) -> RequestProbe {
    let read = Duration::from_millis(state.upstream.read_timeout_ms).min(PROBE_READ_CAP);
    let timeout = Duration::from_millis(state.upstream.handshake_timeout_ms) + read;
    let outcome = probe::request(usable.identity(), &url, ca_pem, true, timeout).await;
    match outcome {
        Ok(answer) => RequestProbe {
            target_url: url,
            succeeded: true,
            status: Some(answer.status),
            http_version: Some(answer.http_version),
            handshake_ms: Some(answer.handshake_ms),
            error: None,
        },
        Err(error) => RequestProbe {
            target_url: url,
            succeeded: false,
            status: None,
            http_version: None,
            handshake_ms: None,
            error: Some(error),
        },
    }
}

// ------------------------------------------------------------------------------------------
// Certificates.
// ------------------------------------------------------------------------------------------

/// Lists the account's certificates.
#[utoipa::path(
    get,
    path = "/v1/accounts/{account}/certificates",
    tag = "certificates",
    params(("account" = String, Path, description = "the account (tenant) id")),
    responses(
        (status = 200, description = "the certificates", body = CertificateList),
        (status = 400, description = "a bad account id", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
async fn list_certificates(
    State(state): State<AdminState>,
    Path(account): Path<String>,
) -> Result<Json<CertificateList>, ApiError> {
    let account = account_id(account)?;
    let records = state.store()?.certificates(&account).await?;
    let certificates = records.into_iter().map(CertificateView::of).collect();
    Ok(Json(CertificateList { certificates }))
}

/// Stores a certificate; the file must pass the diagnosis.
#[utoipa::path(
    post,
    path = "/v1/accounts/{account}/certificates",
    tag = "certificates",
    params(("account" = String, Path, description = "the account (tenant) id")),
    request_body = CertificateCreate,
    responses(
        (status = 201, description = "stored", body = CertificateView),
        (status = 400, description = "bad JSON, base64 or name", body = ErrorBody),
        (status = 409, description = "the name is taken", body = ErrorBody),
        (status = 422, description = "`unusable_p12`; the report is in `detail`",
         body = ErrorBody),
    ),
    security(("bearer" = []))
)]
async fn create_certificate(
    State(state): State<AdminState>,
    Path(account): Path<String>,
    extensions: Extensions,
    body: Bytes,
) -> Result<Response, ApiError> {
    let account = account_id(account)?;
    let request: CertificateCreate = parse_body(&body)?;
    let name = entry_name(request.name)?;
    let der = decode_p12(&request.p12)?;
    let store = state.store()?;

    let p12 = usable_or_refuse(&state, der, request.password).await?;
    let new = NewCertificate {
        account: account.clone(),
        name,
        p12,
    };
    let record = store.create_certificate(new).await?;

    state.propagate().await;
    let result = format!("certificate {} created", record.id);
    audited(&extensions, "certificate.create", &account, &result);
    Ok((StatusCode::CREATED, Json(CertificateView::of(record))).into_response())
}

/// Reads one certificate's facts.
#[utoipa::path(
    get,
    path = "/v1/accounts/{account}/certificates/{id}",
    tag = "certificates",
    params(
        ("account" = String, Path, description = "the account (tenant) id"),
        ("id" = u64, Path, description = "the certificate id"),
    ),
    responses(
        (status = 200, description = "the certificate", body = CertificateView),
        (status = 404, description = "no such certificate", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
async fn get_certificate(
    State(state): State<AdminState>,
    Path((account, id)): Path<(String, String)>,
) -> Result<Json<CertificateView>, ApiError> {
    let (account, id) = (account_id(account)?, CertificateId(numeric_id(&id)?));
    let record = state.store()?.certificate(&account, id).await?;
    Ok(Json(CertificateView::of(record)))
}

/// Renames a certificate, replaces its file, or both.
#[utoipa::path(
    put,
    path = "/v1/accounts/{account}/certificates/{id}",
    tag = "certificates",
    params(
        ("account" = String, Path, description = "the account (tenant) id"),
        ("id" = u64, Path, description = "the certificate id"),
    ),
    request_body = CertificateUpdate,
    responses(
        (status = 200, description = "updated", body = CertificateView),
        (status = 400, description = "bad JSON, base64 or name", body = ErrorBody),
        (status = 404, description = "no such certificate", body = ErrorBody),
        (status = 409, description = "the new name is taken", body = ErrorBody),
        (status = 422, description = "`unusable_p12`; the report is in `detail`",
         body = ErrorBody),
    ),
    security(("bearer" = []))
)]
async fn update_certificate(
    State(state): State<AdminState>,
    Path((account, id)): Path<(String, String)>,
    extensions: Extensions,
    body: Bytes,
) -> Result<Json<CertificateView>, ApiError> {
    let (account, id) = (account_id(account)?, CertificateId(numeric_id(&id)?));
    let request: CertificateUpdate = parse_body(&body)?;
    let name = request.name.map(entry_name).transpose()?;
    let file = match (request.p12, request.password) {
        (Some(p12), Some(password)) => Some((decode_p12(&p12)?, password)),
        (None, None) if name.is_none() => {
            return Err(ApiError::bad_request(
                "invalid_field",
                "nothing to change: send a new name, a new p12 with its password, or both",
            ))
        }
        (None, None) => None,
        (Some(_), None) | (None, Some(_)) => {
            return Err(ApiError::bad_request(
                "invalid_field",
                "p12 and password go together: send both to replace the file, or neither",
            ))
        }
    };
    let store = state.store()?;

    let p12 = match file {
        Some((der, password)) => Some(usable_or_refuse(&state, der, password).await?),
        None => None,
    };
    let record = store
        .update_certificate(&account, id, CertificateChange { name, p12 })
        .await?;

    state.propagate().await;
    let result = format!("certificate {id} updated");
    audited(&extensions, "certificate.update", &account, &result);
    Ok(Json(CertificateView::of(record)))
}

/// Deletes a certificate; refused while mappings use it, unless `force=true`.
#[utoipa::path(
    delete,
    path = "/v1/accounts/{account}/certificates/{id}",
    tag = "certificates",
    params(
        ("account" = String, Path, description = "the account (tenant) id"),
        ("id" = u64, Path, description = "the certificate id"),
        ("force" = Option<bool>, Query,
         description = "delete even while mappings use it (they stop forwarding)"),
    ),
    responses(
        (status = 204, description = "deleted"),
        (status = 404, description = "no such certificate", body = ErrorBody),
        (status = 409, description = "`certificate_in_use`; the mappings are in `detail`",
         body = ErrorBody),
    ),
    security(("bearer" = []))
)]
async fn delete_certificate(
    State(state): State<AdminState>,
    Path((account, id)): Path<(String, String)>,
    RawQuery(query): RawQuery,
    extensions: Extensions,
) -> Result<StatusCode, ApiError> {
    let (account, id) = (account_id(account)?, CertificateId(numeric_id(&id)?));
    let force = force_flag(query.as_deref())?;
    let store = state.store()?;

    match store.delete_certificate(&account, id, force).await {
        Ok(()) => {}
        Err(StoreError::InUse { mappings, .. }) => {
            return Err(in_use(&state, &account, id, &mappings).await);
        }
        Err(other) => return Err(other.into()),
    }

    state.propagate().await;
    let result = format!(
        "certificate {id} deleted{}",
        if force { " (forced)" } else { "" }
    );
    audited(&extensions, "certificate.delete", &account, &result);
    Ok(StatusCode::NO_CONTENT)
}

/// 409 naming the mappings, by id and name, that still use the certificate.
async fn in_use(
    state: &AdminState,
    account: &AccountId,
    id: CertificateId,
    blocking: &[MappingId],
) -> ApiError {
    let stored = match state.store() {
        Ok(store) => store.mappings(account).await.unwrap_or_default(),
        Err(_) => Vec::new(),
    };
    let named: Vec<serde_json::Value> = blocking
        .iter()
        .map(|mapping_id| {
            let name = stored
                .iter()
                .find(|m| m.id == *mapping_id)
                .map(|m| m.spec.name.to_string());
            serde_json::json!({ "id": mapping_id.0, "name": name })
        })
        .collect();
    let listed: Vec<String> = named
        .iter()
        .map(|m| match m["name"].as_str() {
            Some(name) => format!("{} ({name})", m["id"]),
            None => m["id"].to_string(),
        })
        .collect();
    ApiError::new(
        StatusCode::CONFLICT,
        "certificate_in_use",
        format!(
            "certificate {id} is used by mappings {}; delete or re-point them first, or delete \
             with ?force=true",
            listed.join(", ")
        ),
    )
    .with_detail(serde_json::json!({ "mappings": named }))
}

// ------------------------------------------------------------------------------------------
// Mappings.
// ------------------------------------------------------------------------------------------

/// Lists the account's mappings.
#[utoipa::path(
    get,
    path = "/v1/accounts/{account}/mappings",
    tag = "mappings",
    params(("account" = String, Path, description = "the account (tenant) id")),
    responses(
        (status = 200, description = "the mappings", body = MappingList),
        (status = 400, description = "a bad account id", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
async fn list_mappings(
    State(state): State<AdminState>,
    Path(account): Path<String>,
) -> Result<Json<MappingList>, ApiError> {
    let account = account_id(account)?;
    let mappings = state.store()?.mappings(&account).await?;
    let mappings = mappings.into_iter().map(MappingView::of).collect();
    Ok(Json(MappingList { mappings }))
}

/// Maps a service and URL of the account to a certificate.
#[utoipa::path(
    post,
    path = "/v1/accounts/{account}/mappings",
    tag = "mappings",
    params(("account" = String, Path, description = "the account (tenant) id")),
    request_body = MappingBody,
    responses(
        (status = 201, description = "stored", body = MappingView),
        (status = 400, description = "bad JSON, name, URL or CA bundle", body = ErrorBody),
        (status = 409, description = "the name, or the service + URL, is taken",
         body = ErrorBody),
        (status = 422, description = "`unknown_certificate`", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
async fn create_mapping(
    State(state): State<AdminState>,
    Path(account): Path<String>,
    extensions: Extensions,
    body: Bytes,
) -> Result<Response, ApiError> {
    let account = account_id(account)?;
    let spec = mapping_spec(parse_body(&body)?)?;
    let store = state.store()?;

    let mapping = store
        .create_mapping(&account, spec)
        .await
        .map_err(mapping_refusal)?;

    state.propagate().await;
    let result = format!("mapping {} created", mapping.id);
    audited(&extensions, "mapping.create", &account, &result);
    Ok((StatusCode::CREATED, Json(MappingView::of(mapping))).into_response())
}

/// Reads one mapping.
#[utoipa::path(
    get,
    path = "/v1/accounts/{account}/mappings/{id}",
    tag = "mappings",
    params(
        ("account" = String, Path, description = "the account (tenant) id"),
        ("id" = u64, Path, description = "the mapping id"),
    ),
    responses(
        (status = 200, description = "the mapping", body = MappingView),
        (status = 404, description = "no such mapping", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
async fn get_mapping(
    State(state): State<AdminState>,
    Path((account, id)): Path<(String, String)>,
) -> Result<Json<MappingView>, ApiError> {
    let (account, id) = (account_id(account)?, MappingId(numeric_id(&id)?));
    let mapping = state.store()?.mapping(&account, id).await?;
    Ok(Json(MappingView::of(mapping)))
}

/// Replaces a mapping.
#[utoipa::path(
    put,
    path = "/v1/accounts/{account}/mappings/{id}",
    tag = "mappings",
    params(
        ("account" = String, Path, description = "the account (tenant) id"),
        ("id" = u64, Path, description = "the mapping id"),
    ),
    request_body = MappingBody,
    responses(
        (status = 200, description = "replaced", body = MappingView),
        (status = 400, description = "bad JSON, name, URL or CA bundle", body = ErrorBody),
        (status = 404, description = "no such mapping", body = ErrorBody),
        (status = 409, description = "the name, or the service + URL, is taken",
         body = ErrorBody),
        (status = 422, description = "`unknown_certificate`", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
async fn update_mapping(
    State(state): State<AdminState>,
    Path((account, id)): Path<(String, String)>,
    extensions: Extensions,
    body: Bytes,
) -> Result<Json<MappingView>, ApiError> {
    let (account, id) = (account_id(account)?, MappingId(numeric_id(&id)?));
    let spec = mapping_spec(parse_body(&body)?)?;
    let store = state.store()?;

    let mapping = store
        .update_mapping(&account, id, spec)
        .await
        .map_err(mapping_refusal)?;

    state.propagate().await;
    let result = format!("mapping {id} updated");
    audited(&extensions, "mapping.update", &account, &result);
    Ok(Json(MappingView::of(mapping)))
}

/// Deletes a mapping.
#[utoipa::path(
    delete,
    path = "/v1/accounts/{account}/mappings/{id}",
    tag = "mappings",
    params(
        ("account" = String, Path, description = "the account (tenant) id"),
        ("id" = u64, Path, description = "the mapping id"),
    ),
    responses(
        (status = 204, description = "deleted"),
        (status = 404, description = "no such mapping", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
async fn delete_mapping(
    State(state): State<AdminState>,
    Path((account, id)): Path<(String, String)>,
    extensions: Extensions,
) -> Result<StatusCode, ApiError> {
    let (account, id) = (account_id(account)?, MappingId(numeric_id(&id)?));
    state.store()?.delete_mapping(&account, id).await?;

    state.propagate().await;
    let result = format!("mapping {id} deleted");
    audited(&extensions, "mapping.delete", &account, &result);
    Ok(StatusCode::NO_CONTENT)
}

/// A certificate named by a mapping body that does not exist is the body's fault: 422, not
/// the 404 of a missing path resource.
fn mapping_refusal(error: StoreError) -> ApiError {
    match error {
        StoreError::NotFound {
            what: "certificate",
            id,
            account,
        } => ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "unknown_certificate",
            format!(
                "certificate {id} does not exist in account {account}; create it first or \
                 name another"
            ),
        ),
        other => other.into(),
    }
}

// ------------------------------------------------------------------------------------------
// Explain.
// ------------------------------------------------------------------------------------------

/// Which mapping, certificate and trust a forwarded request would get, and why; with
/// `probe: true`, a handshake-only probe of the partner with that certificate.
#[utoipa::path(
    post,
    path = "/v1/accounts/{account}/explain",
    tag = "explain",
    params(("account" = String, Path, description = "the account (tenant) id")),
    request_body = ExplainRequest,
    responses(
        (status = 200, description = "the explanation", body = Explanation),
        (status = 400, description = "bad JSON, account or service", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
async fn explain_request(
    State(state): State<AdminState>,
    Path(account): Path<String>,
    body: Bytes,
) -> Result<Json<Explanation>, ApiError> {
    let account = account_id(account)?;
    let request: ExplainRequest = parse_body(&body)?;
    Ok(Json(explain::explain(&state, &account, request).await?))
}

// ------------------------------------------------------------------------------------------
// Input checks shared by the handlers.
// ------------------------------------------------------------------------------------------

/// The audit line of a successful write, naming the principal that passed the guard.
fn audited(extensions: &Extensions, action: &str, account: &AccountId, result: &str) {
    audit(&principal_of(extensions), action, account.as_str(), result);
}

/// Parses a JSON body; the refusal names the field at fault.
fn parse_body<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    let mut deserializer = serde_json::Deserializer::from_slice(body);
    let value = serde_path_to_error::deserialize(&mut deserializer).map_err(|error| {
        let path = error.path().to_string();
        let inner = error.into_inner();
        let unknown = inner.to_string().starts_with("unknown field");
        match inner.classify() {
            serde_json::error::Category::Data if unknown => {
                ApiError::bad_request("unknown_field", format!("{inner}; remove it (at {path})"))
            }
            serde_json::error::Category::Data => {
                ApiError::bad_request("invalid_field", format!("{path}: {inner}"))
            }
            _ => not_json(&inner),
        }
    })?;
    deserializer.end().map_err(|e| not_json(&e))?;
    Ok(value)
}

fn not_json(error: &serde_json::Error) -> ApiError {
    ApiError::bad_request(
        "invalid_json",
        format!("the body is not valid JSON ({error}); send one JSON object"),
    )
}

/// Standard base64; line breaks and spaces, as `base64` wraps its output, are ignored.
fn decode_p12(text: &str) -> Result<Vec<u8>, ApiError> {
    let compact: String = text.chars().filter(|c| !c.is_ascii_whitespace()).collect();
    base64::engine::general_purpose::STANDARD
        .decode(compact.as_bytes())
        .map_err(|e| {
            ApiError::bad_request(
                "invalid_base64",
                format!("p12 is not standard base64 ({e}); encode the file with `base64 -w0`"),
            )
        })
}

fn account_id(account: String) -> Result<AccountId, ApiError> {
    AccountId::new(account).map_err(|e| ApiError::bad_request("invalid_account", e.to_string()))
}

fn entry_name(name: String) -> Result<EntryName, ApiError> {
    EntryName::new(name).map_err(|e| ApiError::bad_request("invalid_field", format!("name: {e}")))
}

fn numeric_id(id: &str) -> Result<u64, ApiError> {
    id.parse().map_err(|_| {
        ApiError::bad_request(
            "invalid_id",
            "ids are the whole numbers the create call returned",
        )
    })
}

fn force_flag(query: Option<&str>) -> Result<bool, ApiError> {
    let mut force = false;
    for (key, value) in url::form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
        match (key.as_ref(), value.as_ref()) {
            ("force", "true" | "1") => force = true,
            ("force", "false" | "0") => force = false,
            _ => {
                return Err(ApiError::bad_request(
                    "invalid_query",
                    "the only query parameter is force=true|false",
                ))
            }
        }
    }
    Ok(force)
}

fn check_url(url: &str) -> Result<(), ApiError> {
    Target::parse(url)
        .map(|_| ())
        .map_err(|e| ApiError::bad_request("invalid_url", e.to_string()))
}

fn check_ca_pem(pem: &str) -> Result<(), ApiError> {
    use rustls_pki_types::pem::PemObject;
    use x509_parser::prelude::{FromDer, X509Certificate};

    let bad = |reason: &str| {
        ApiError::bad_request(
            "invalid_ca_pem",
            format!("ca_pem {reason}; send the partner's CA certificates as PEM"),
        )
    };
    let mut count = 0;
    for certificate in rustls_pki_types::CertificateDer::pem_slice_iter(pem.as_bytes()) {
        let certificate = certificate.map_err(|_| bad("is not valid PEM"))?;
        X509Certificate::from_der(&certificate).map_err(|_| bad("holds a broken certificate"))?;
        count += 1;
    }
    if count == 0 {
        return Err(bad("holds no certificate"));
    }
    Ok(())
}

fn mapping_spec(body: MappingBody) -> Result<MappingSpec, ApiError> {
    let service = ServiceName::new(body.service)
        .map_err(|e| ApiError::bad_request("invalid_field", format!("service: {e}")))?;
    check_url(&body.url)?;
    if let Some(pem) = &body.ca_pem {
        check_ca_pem(pem)?;
    }
    Ok(MappingSpec {
        name: entry_name(body.name)?,
        service,
        url: body.url,
        certificate_id: CertificateId(body.certificate_id),
        enabled: body.enabled.unwrap_or(true),
        url_match: body.url_match.unwrap_or_default().into(),
        ca_pem: body.ca_pem,
        verify_server: body.verify_server.unwrap_or(true),
    })
}

/// Runs the diagnosis off the async threads (key derivation takes a moment); the report, and
/// the usable file when the verdict is `usable`.
async fn diagnose(
    state: &AdminState,
    der: Vec<u8>,
    password: SecretString,
) -> Result<(Report, Option<UsableP12>), ApiError> {
    let policy = state.p12_policy();
    tokio::task::spawn_blocking(move || {
        let diagnosis = p12::diagnose(der, password, &policy);
        let report = diagnosis.report.clone();
        (report, diagnosis.into_usable().ok())
    })
    .await
    .map_err(|_| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal_error",
            "the diagnosis stopped unexpectedly; retry, and report it if it persists",
        )
    })
}

/// The usable file, or 422 `unusable_p12` with the report.
async fn usable_or_refuse(
    state: &AdminState,
    der: Vec<u8>,
    password: SecretString,
) -> Result<UsableP12, ApiError> {
    match diagnose(state, der, password).await? {
        (_, Some(usable)) => Ok(usable),
        (report, None) => Err(ApiError::unusable_p12(&report)),
    }
}

fn rfc3339(at: OffsetDateTime) -> String {
    at.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| at.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refusal<T: DeserializeOwned + std::fmt::Debug>(body: &str) -> (StatusCode, &'static str) {
        let error = parse_body::<T>(body.as_bytes()).expect_err("a refusal");
        (error.status, error.code)
    }

    #[test]
    fn bodies_are_refused_with_a_code_for_each_kind_of_mistake() {
        let cases = [
            ("", "invalid_json"),
            ("{\"service\": ", "invalid_json"),
            (
                "{\"service\": \"IDP\", \"url\": \"https://p/\"} trailing",
                "invalid_json",
            ),
            (
                "{\"service\": \"IDP\", \"url\": \"https://p/\", \"colour\": 1}",
                "unknown_field",
            ),
            ("{\"service\": 7, \"url\": \"https://p/\"}", "invalid_field"),
            ("{\"url\": \"https://p/\"}", "invalid_field"),
        ];

        let refused: Vec<(StatusCode, &str)> = cases
            .iter()
            .map(|(body, _)| refusal::<ExplainRequest>(body))
            .collect();

        let expected: Vec<(StatusCode, &str)> = cases
            .iter()
            .map(|(_, code)| (StatusCode::BAD_REQUEST, *code))
            .collect();
        assert_eq!(refused, expected);
    }

    #[test]
    fn an_unknown_field_is_named_with_where_it_was() {
        let body = r#"{"name": "n", "p12": "", "password": "", "extra": true}"#;

        let error = parse_body::<CertificateCreate>(body.as_bytes()).expect_err("a refusal");

        assert!(error.message.contains("`extra`"), "{}", error.message);
    }

    #[test]
    fn base64_wrapped_by_line_is_accepted_and_garbage_refused() {
        let wrapped = "aGVs\nbG8g\r\nd29y bGQ=";

        assert_eq!(decode_p12(wrapped).expect("decodes"), b"hello world");
        assert_eq!(
            decode_p12("%%%").expect_err("refused").code,
            "invalid_base64"
        );
    }

    #[test]
    fn force_is_the_only_query_parameter_of_a_delete() {
        let flags = [None, Some("force=true"), Some("force=0")].map(|q| force_flag(q).ok());

        assert_eq!(flags, [Some(false), Some(true), Some(false)]);
        assert_eq!(
            force_flag(Some("forse=true")).expect_err("typo").code,
            "invalid_query"
        );
    }

    #[test]
    fn a_ca_bundle_must_hold_at_least_one_parsable_certificate() {
        let empty = check_ca_pem("").expect_err("empty");
        let garbage =
            check_ca_pem("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n");

        assert_eq!(empty.code, "invalid_ca_pem");
        assert_eq!(garbage.expect_err("broken").code, "invalid_ca_pem");
    }
}
