//! The compatible routes of the hosted service this gateway replaces, as
//! `reference/compat-api.md` describes them: same methods, paths, field names (misspellings
//! included), multipart field names, response shapes and statuses.
//!
//! | # | route | answer |
//! |---|---|---|
//! | 1 | `POST /mtls/account/{accountId}/certificates` | 201 saved / failed lists |
//! | 2 | `POST /mtls/account/{accountId}/certificates/by-file` | 201 saved / failed lists |
//! | 3 | `PUT /mtls/account/{accountId}/certificates` | 200 saved / failed lists |
//! | 4 | `PUT /mtls/account/{accountId}/certificates/by-file` | 200 saved / failed lists |
//! | 5 | `GET /mtls/account/{accountId}/certificates` | 200 array of Certificate |
//! | 6 | `GET /mtls/account/{accountId}/certificates/{certificateId}` | 200 Certificate |
//! | 7 | `DELETE /mtls/account/{accountId}/certificates/{certificateId}[?force=true]` | 200 |
//! | 8 | `POST /mtls/account/{accountId}/p12-test/multipart` | 200 report, or 422 |
//! | 9 | `POST /mtls/account/{accountId}/certificates/activate/{certificateId}` | 201 Mapping |
//! | 10 | `POST, GET, PUT /api/account/{accountId}/configuration/ac-common/mtls` | Mappings |
//! | 10 | `GET, PUT, DELETE .../ac-common/mtls/{mappingId}` | Mapping |
//! | 11 | `POST /mtls/mapping?v=1\|2` | 200 check results |
//! | 12 | `POST /api/account/{accountId}/checks/serviceUrlMappings` | 200 check results |
//!
//! Decisions where the contract is silent:
//!
//! - **Bodies** are read from the bytes the guard buffered, with the documented fields only:
//!   a field the original never had is refused with 400 `unknown_field`. The read-only fields a
//!   client may echo back (`deleted`, `displayName`, `status`, `expirationDate` on
//!   certificates; `deleted` on mappings) are accepted and ignored, except that `deleted: true`
//!   is refused on a mapping write (use DELETE); a `siteId` must name the path's account.
//!   Malformed JSON is 400 `invalid_json`, a wrong type or value 400 `invalid_field`, a missing
//!   field 400 `missing_field`, a bad multipart body 400 `invalid_multipart`.
//! - **Certificate batches** (#1, #3): problems with the request as a whole (not JSON, not an
//!   array, empty, a field missing or malformed in any entry, the same name or id twice) refuse
//!   the whole request with 400 and store nothing. Each entry is then judged and written on its
//!   own: an entry whose P12 is unusable (`unusable_p12`), whose name is taken (`conflict`),
//!   whose id does not exist (`not_found`) or whose write the store refused goes to
//!   `failedSaveToVaultCertificates` as `{name, id?, code, message, detail?}`, and the others
//!   are saved. When at least one entry was saved the answer is 201 (create) or 200 (update)
//!   with both lists; when none was, the answer is the first entry's refusal (its status,
//!   code and sentence) with every failed entry in `detail.failedSaveToVaultCertificates`.
//! - **By-file** (#2, #4) carries one certificate, so it is saved or refused: 201 / 200 with
//!   the same two lists, or the refusal itself (422 `unusable_p12` with the diagnosis report
//!   as `detail`, 409 `conflict`, 404 `not_found`).
//! - **Updates** (#3, #4) replace the name and, when `p12` and `password` are given (by-file:
//!   always), the P12. JSON updates without both keep the stored P12.
//! - **Certificate status**: `Expired` once the leaf's notAfter has passed, `UnAvailable`
//!   before its notBefore, `Available` otherwise. `expirationDate` is the leaf's notAfter in
//!   RFC 3339 (UTC).
//! - **Delete** (#7) answers 200 with the Certificate as it was, `deleted: true`. While mappings
//!   use it, 409 `certificate_in_use` names them (id, name, service, URL) unless `force=true`;
//!   a forced delete leaves those mappings in place, unused by forwarding until they are
//!   re-pointed or deleted.
//! - **Activate** (#9): `isValidateUrlEnabled` defaults to `true`. Validation is a real
//!   mTLS `GET` of the URL with the certificate, verifying the partner against the system
//!   roots; any HTTP answer counts as success (an API root often answers 404 or 405 to a bare
//!   `GET`), a transport failure is 424 with the probe's code as the body code and the
//!   `LP-error-from-transport` / `LP-message-from-transport` headers, and nothing is stored.
//!   The mapping is named `{serviceName}:{url}`; past 200 characters it is cut and ends in
//!   `~` and 16 hex digits of the SHA-256 of the whole text, so names stay unique per key.
//!   A key that is already mapped is 409 `conflict`: re-point it with a mapping update.
//! - **Mappings** (#10): `?v=` may be absent, `3` or `3.0`. POST takes an array of Mappings without
//!   `id` (`certificationId`, `serviceId` and `url` required; `name` defaults as for activate,
//!   `enable` to true); PUT on the collection takes an array with `id`s, PUT on
//!   `/{mappingId}` one object; fields left out of an update keep their stored value, as do the
//!   mapping's native-only settings (CA bundle, URL match, server verification). A batch is
//!   all or nothing: when one entry fails, the ones already written are undone, and the answer
//!   is that entry's refusal. `certificationId` and `serviceId` may come as strings or numbers.
//!   Mappings made here verify the partner against the system roots.
//! - **Check mapping** (#11, #12) answers from the forwarding snapshot, so `true` means a
//!   forward call with those values would present a certificate now. `?v=` defaults to 1.
//!
//! Every write is applied to forwarding ([`AdminState::propagate`]) before it is answered, and
//! audited with its outcome: `ok`, or the refusal's code.

use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::multipart::MultipartRejection;
use axum::extract::{Multipart, Path, RawQuery, State};
use axum::http::{Extensions, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use secrecy::SecretString;
use serde::de::{DeserializeOwned, MapAccess, Visitor};
use serde::ser::SerializeMap;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;
use tracing::debug;

use super::auth::RouteClass;
use super::error::ApiError;
use super::{audit, guarded, principal_of, too_large, AdminState};
use crate::ids::{AccountId, CertificateId, EntryName, MappingId, ServiceName, MAX_ID_LEN};
use crate::p12::{diagnose, Diagnosis, UsableP12};
use crate::proxy::Target;
use crate::store::{
    CertificateChange, CertificateRecord, Mapping, MappingSpec, NewCertificate, Store, StoreError,
    UrlMatch,
};

const CERTIFICATES: &str = "/mtls/account/{accountId}/certificates";
const CERTIFICATES_BY_FILE: &str = "/mtls/account/{accountId}/certificates/by-file";
const CERTIFICATE: &str = "/mtls/account/{accountId}/certificates/{certificateId}";
const P12_TEST: &str = "/mtls/account/{accountId}/p12-test/multipart";
const ACTIVATE: &str = "/mtls/account/{accountId}/certificates/activate/{certificateId}";
const MAPPINGS: &str = "/api/account/{accountId}/configuration/ac-common/mtls";
const MAPPING: &str = "/api/account/{accountId}/configuration/ac-common/mtls/{mappingId}";
const CHECK_MAPPING: &str = "/mtls/mapping";
const CHECK_URLS: &str = "/api/account/{accountId}/checks/serviceUrlMappings";

/// The response fields of certificate writes, spelled as the original spells them.
const SAVED: &str = "successfulySavedCertificates";
const FAILED: &str = "failedSaveToVaultCertificates";

/// Activation's wait for the partner's HTTP answer once the handshake is done. A partner of
/// this kind answers a bare `GET` in well under a second; five leaves room for a slow one.
const VALIDATION_RESPONSE_WAIT: Duration = Duration::from_secs(5);

/// The mapping API version the original's clients send.
const MAPPINGS_VERSION: &str = "3.0";

pub fn routes(state: &AdminState) -> Router<AdminState> {
    use RouteClass::{
        Activate, CertificatesByFile, CertificatesJson, CertificatesRead, CheckMapping, CheckUrls,
        Mappings, P12Test,
    };
    let certificates = guarded(
        state,
        CertificatesJson,
        post(create_certificates).put(update_certificates),
    )
    .merge(guarded(state, CertificatesRead, get(list_certificates)));
    let certificate = guarded(state, CertificatesRead, get(read_certificate)).merge(guarded(
        state,
        CertificatesJson,
        delete(delete_certificate),
    ));
    let by_file = guarded(
        state,
        CertificatesByFile,
        post(create_certificate_by_file).put(update_certificate_by_file),
    );
    let mappings = guarded(
        state,
        Mappings,
        post(create_mappings)
            .get(list_mappings)
            .put(update_mappings),
    );
    let mapping = guarded(
        state,
        Mappings,
        get(read_mapping).put(update_mapping).delete(delete_mapping),
    );

    Router::new()
        .route(CERTIFICATES, certificates)
        .route(CERTIFICATES_BY_FILE, by_file)
        .route(CERTIFICATE, certificate)
        .route(P12_TEST, guarded(state, P12Test, post(test_p12)))
        .route(ACTIVATE, guarded(state, Activate, post(activate)))
        .route(MAPPINGS, mappings)
        .route(MAPPING, mapping)
        .route(
            CHECK_MAPPING,
            guarded(state, CheckMapping, post(check_mapping)),
        )
        .route(CHECK_URLS, guarded(state, CheckUrls, post(check_urls)))
}

// ------------------------------------------------------------------------------------------
// What reads return.
// ------------------------------------------------------------------------------------------

/// A certificate as the compatible routes show it; never its P12 or password.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct CertificateView {
    id: u64,
    deleted: bool,
    name: String,
    display_name: String,
    site_id: String,
    status: CertificateStatus,
    expiration_date: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
enum CertificateStatus {
    Available,
    Expired,
    UnAvailable,
}

impl CertificateView {
    fn of(record: &CertificateRecord) -> Self {
        let now = OffsetDateTime::now_utc();
        let status = if now > record.not_after {
            CertificateStatus::Expired
        } else if now < record.not_before {
            CertificateStatus::UnAvailable
        } else {
            CertificateStatus::Available
        };
        Self {
            id: record.id.0,
            deleted: false,
            name: record.name.to_string(),
            display_name: record.name.to_string(),
            site_id: record.account.to_string(),
            status,
            expiration_date: record.not_after.format(&Rfc3339).ok(),
        }
    }
}

/// A mapping as the compatible routes show it.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct MappingView {
    id: u64,
    certification_id: String,
    service_id: String,
    enable: bool,
    url: String,
    site_id: String,
    name: String,
    deleted: bool,
}

impl MappingView {
    fn of(state: &AdminState, mapping: &Mapping) -> Self {
        Self {
            id: mapping.id.0,
            certification_id: mapping.spec.certificate_id.to_string(),
            service_id: state.config.service_id(mapping.spec.service.as_str()),
            enable: mapping.spec.enabled,
            url: mapping.spec.url.clone(),
            site_id: mapping.account.to_string(),
            name: mapping.spec.name.to_string(),
            deleted: false,
        }
    }
}

// ------------------------------------------------------------------------------------------
// Certificates: create and update by JSON (#1, #3) and by file (#2, #4).
// ------------------------------------------------------------------------------------------

/// One certificate of a JSON create or update body.
#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct CertificateEntry {
    id: Option<u64>,
    name: Option<String>,
    /// The P12 file's bytes, as JSON numbers: 0..255, or -128..127 as Java's signed bytes.
    p12: Option<Vec<i64>>,
    password: Option<SecretString>,
    site_id: Option<String>,
    // Read-only fields a client may send back as it read them; ignored.
    #[serde(rename = "deleted")]
    _deleted: Option<bool>,
    #[serde(rename = "displayName")]
    _display_name: Option<String>,
    #[serde(rename = "status")]
    _status: Option<String>,
    #[serde(rename = "expirationDate")]
    _expiration_date: Option<Value>,
}

/// The `certificate` field of a by-file upload.
#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct FileCertificateEntry {
    id: Option<u64>,
    name: Option<String>,
    password: Option<SecretString>,
    site_id: Option<String>,
    #[serde(rename = "deleted")]
    _deleted: Option<bool>,
    #[serde(rename = "displayName")]
    _display_name: Option<String>,
}

/// Create or update: which route, and what the entries must carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Write {
    Create,
    Update,
}

impl Write {
    fn certificate_action(self) -> &'static str {
        match self {
            Self::Create => "certificate.create",
            Self::Update => "certificate.update",
        }
    }

    fn success(self) -> StatusCode {
        match self {
            Self::Create => StatusCode::CREATED,
            Self::Update => StatusCode::OK,
        }
    }
}

/// A checked entry, ready to be diagnosed and written.
struct Upload {
    id: Option<CertificateId>,
    name: EntryName,
    /// The file and its password; `None` keeps the stored P12 (JSON updates only).
    file: Option<(Vec<u8>, SecretString)>,
}

/// One entry the store did not take, as `failedSaveToVaultCertificates` lists it.
#[derive(Debug, Serialize)]
struct FailedEntry {
    name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<u64>,
    code: &'static str,
    message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    detail: Option<Value>,
}

async fn create_certificates(
    State(state): State<AdminState>,
    Path(account): Path<String>,
    extensions: Extensions,
    body: Bytes,
) -> Response {
    save_json(&state, &extensions, &account, Write::Create, &body).await
}

async fn update_certificates(
    State(state): State<AdminState>,
    Path(account): Path<String>,
    extensions: Extensions,
    body: Bytes,
) -> Response {
    save_json(&state, &extensions, &account, Write::Update, &body).await
}

async fn save_json(
    state: &AdminState,
    extensions: &Extensions,
    account: &str,
    write: Write,
    body: &[u8],
) -> Response {
    let who = principal_of(extensions);
    let action = write.certificate_action();
    let checked = account_id(account).and_then(|account| {
        let entries: Vec<CertificateEntry> = parse_json(body, "an array of certificates")?;
        let uploads = check_entries(&account, write, entries)?;
        Ok((account, uploads))
    });
    let (account_id, uploads) = match checked {
        Ok(checked) => checked,
        Err(error) => return refused(&who, action, account, error),
    };
    let store = match state.store() {
        Ok(store) => store,
        Err(error) => return refused(&who, action, account, error),
    };

    let mut saved = Vec::new();
    let mut failed = Vec::new();
    for upload in uploads {
        let (name, id) = (upload.name.to_string(), upload.id.map(|id| id.0));
        match save_one(state, store.as_ref(), &account_id, upload).await {
            Ok(record) => {
                audit(&who, action, account, "ok");
                saved.push(CertificateView::of(&record));
            }
            Err(error) => {
                audit(&who, action, account, error.code);
                failed.push((error.status, failed_entry(name, id, error)));
            }
        }
    }
    if !saved.is_empty() {
        state.propagate().await;
    }
    batch_answer(write, saved, failed)
}

/// The answer to a certificate batch, by the rule in the module documentation.
fn batch_answer(
    write: Write,
    saved: Vec<CertificateView>,
    failed: Vec<(StatusCode, FailedEntry)>,
) -> Response {
    let first = failed
        .first()
        .map(|(status, entry)| (*status, entry.code, entry.message.clone()));
    let failed: Vec<FailedEntry> = failed.into_iter().map(|(_, entry)| entry).collect();
    match first {
        Some((status, code, message)) if saved.is_empty() => ApiError::new(status, code, message)
            .with_detail(json!({ FAILED: failed }))
            .into_response(),
        _ => {
            let body = json!({ SAVED: saved, FAILED: failed });
            (write.success(), Json(body)).into_response()
        }
    }
}

fn failed_entry(name: String, id: Option<u64>, error: ApiError) -> FailedEntry {
    FailedEntry {
        name,
        id,
        code: error.code,
        message: error.message,
        detail: error.detail,
    }
}

/// Checks a JSON batch as a whole: every entry complete and well formed, no name or id twice.
fn check_entries(
    account: &AccountId,
    write: Write,
    entries: Vec<CertificateEntry>,
) -> Result<Vec<Upload>, ApiError> {
    if entries.is_empty() {
        return Err(ApiError::bad_request(
            "empty_request",
            "the array holds no certificate; send at least one",
        ));
    }
    let mut names = BTreeSet::new();
    let mut ids = BTreeSet::new();
    let mut uploads = Vec::with_capacity(entries.len());
    for (index, entry) in entries.into_iter().enumerate() {
        let at = format!("[{index}]");
        check_site(account, entry.site_id.as_deref(), &at)?;
        let id = entry_id(write, entry.id, &at)?;
        let name = entry_name(entry.name, &at)?;
        let file = match (entry.p12, entry.password) {
            (Some(numbers), Some(password)) => Some((p12_bytes(&numbers, &at)?, password)),
            (None, None) if write == Write::Update => None,
            (None, _) => return Err(missing(&format!("{at}.p12"), "the P12 file's bytes")),
            (Some(_), None) => return Err(missing(&format!("{at}.password"), "its password")),
        };
        if !names.insert(name.clone()) {
            return Err(twice(&format!("the name {name:?}")));
        }
        if let Some(id) = id {
            if !ids.insert(id) {
                return Err(twice(&format!("certificate id {id}")));
            }
        }
        uploads.push(Upload { id, name, file });
    }
    Ok(uploads)
}

/// The id an entry must (update) or must not (create) carry.
fn entry_id(write: Write, id: Option<u64>, at: &str) -> Result<Option<CertificateId>, ApiError> {
    match (write, id) {
        (Write::Create, None) => Ok(None),
        (Write::Create, Some(_)) => Err(ApiError::bad_request(
            "invalid_field",
            format!("{at}.id is assigned by the gateway; leave it out, or use PUT to update"),
        )),
        (Write::Update, Some(id)) => Ok(Some(CertificateId(id))),
        (Write::Update, None) => Err(missing(
            &format!("{at}.id"),
            "the id of the certificate to update",
        )),
    }
}

fn entry_name(name: Option<String>, at: &str) -> Result<EntryName, ApiError> {
    let name = name.ok_or_else(|| missing(&format!("{at}.name"), "the certificate's name"))?;
    EntryName::new(name)
        .map_err(|e| ApiError::bad_request("invalid_field", format!("{at}.name: {e}")))
}

/// Bytes from JSON numbers; Java clients send signed bytes (-128..127).
fn p12_bytes(numbers: &[i64], at: &str) -> Result<Vec<u8>, ApiError> {
    numbers
        .iter()
        .enumerate()
        .map(|(i, &n)| {
            if (-128..=255).contains(&n) {
                u8::try_from(n.rem_euclid(256)).map_err(|_| bad_byte(at, i, n))
            } else {
                Err(bad_byte(at, i, n))
            }
        })
        .collect()
}

fn bad_byte(at: &str, index: usize, value: i64) -> ApiError {
    ApiError::bad_request(
        "invalid_field",
        format!("{at}.p12[{index}] is {value}; each byte must be a number from -128 to 255"),
    )
}

/// Diagnoses an entry's P12 (when it has one) and creates or updates the certificate.
async fn save_one(
    state: &AdminState,
    store: &dyn Store,
    account: &AccountId,
    upload: Upload,
) -> Result<CertificateRecord, ApiError> {
    let p12 = match upload.file {
        Some((der, password)) => Some(usable_p12(state, der, password).await?),
        None => None,
    };
    let record = match (upload.id, p12) {
        (Some(id), p12) => {
            let change = CertificateChange {
                name: Some(upload.name),
                p12,
            };
            store.update_certificate(account, id, change).await?
        }
        (None, Some(p12)) => {
            let new = NewCertificate {
                account: account.clone(),
                name: upload.name,
                p12,
            };
            store.create_certificate(new).await?
        }
        (None, None) => return Err(missing("p12", "the P12 file")),
    };
    Ok(record)
}

async fn diagnosed(
    state: &AdminState,
    der: Vec<u8>,
    password: SecretString,
) -> Result<Diagnosis, ApiError> {
    let policy = state.p12_policy();
    // Key derivation with a high iteration count takes a while; keep it off the runtime.
    tokio::task::spawn_blocking(move || diagnose(der, password, &policy))
        .await
        .map_err(|_| internal("the P12 diagnosis stopped before it finished"))
}

async fn usable_p12(
    state: &AdminState,
    der: Vec<u8>,
    password: SecretString,
) -> Result<UsableP12, ApiError> {
    diagnosed(state, der, password)
        .await?
        .into_usable()
        .map_err(|report| ApiError::unusable_p12(&report))
}

async fn create_certificate_by_file(
    State(state): State<AdminState>,
    Path(account): Path<String>,
    extensions: Extensions,
    multipart: Result<Multipart, MultipartRejection>,
) -> Response {
    save_file(&state, &extensions, &account, Write::Create, multipart).await
}

async fn update_certificate_by_file(
    State(state): State<AdminState>,
    Path(account): Path<String>,
    extensions: Extensions,
    multipart: Result<Multipart, MultipartRejection>,
) -> Response {
    save_file(&state, &extensions, &account, Write::Update, multipart).await
}

async fn save_file(
    state: &AdminState,
    extensions: &Extensions,
    account: &str,
    write: Write,
    multipart: Result<Multipart, MultipartRejection>,
) -> Response {
    let who = principal_of(extensions);
    let action = write.certificate_action();
    let outcome = async {
        let account = account_id(account)?;
        let mut form = read_form(state, multipart, &["file", "certificate"]).await?;
        let file = form
            .remove("file")
            .ok_or_else(|| missing("file", "the .p12 or .pfx file"))?;
        let text = form.remove("certificate").ok_or_else(|| {
            missing(
                "certificate",
                "the JSON text {\"name\",\"password\"} describing the file",
            )
        })?;
        let entry: FileCertificateEntry = parse_json(&text, "the certificate's JSON text")?;
        check_site(&account, entry.site_id.as_deref(), "certificate")?;
        let id = entry_id(write, entry.id, "certificate")?;
        let name = entry_name(entry.name, "certificate")?;
        let password = entry
            .password
            .ok_or_else(|| missing("certificate.password", "the file's password"))?;
        let upload = Upload {
            id,
            name,
            file: Some((file.to_vec(), password)),
        };
        let store = state.store()?;
        save_one(state, store.as_ref(), &account, upload).await
    }
    .await;

    match outcome {
        Ok(record) => {
            state.propagate().await;
            audit(&who, action, account, "ok");
            let saved = vec![CertificateView::of(&record)];
            batch_answer(write, saved, Vec::new())
        }
        Err(error) => refused(&who, action, account, error),
    }
}

// ------------------------------------------------------------------------------------------
// Certificates: list, read, delete (#5, #6, #7).
// ------------------------------------------------------------------------------------------

async fn list_certificates(
    State(state): State<AdminState>,
    Path(account): Path<String>,
) -> Result<Json<Vec<CertificateView>>, ApiError> {
    let account = account_id(&account)?;
    let mut records = state.store()?.certificates(&account).await?;
    records.sort_by_key(|record| record.id);
    Ok(Json(records.iter().map(CertificateView::of).collect()))
}

async fn read_certificate(
    State(state): State<AdminState>,
    Path((account, id)): Path<(String, String)>,
) -> Result<Json<CertificateView>, ApiError> {
    let account = account_id(&account)?;
    let id = CertificateId(numeric_id("certificateId", &id)?);
    let record = state.store()?.certificate(&account, id).await?;
    Ok(Json(CertificateView::of(&record)))
}

async fn delete_certificate(
    State(state): State<AdminState>,
    Path((account, id)): Path<(String, String)>,
    RawQuery(query): RawQuery,
    extensions: Extensions,
) -> Response {
    let who = principal_of(&extensions);
    let action = "certificate.delete";
    let outcome = async {
        let account = account_id(&account)?;
        let id = CertificateId(numeric_id("certificateId", &id)?);
        let force = flag(query.as_deref(), "force", false)?;
        let store = state.store()?;
        let record = store.certificate(&account, id).await?;
        match store.delete_certificate(&account, id, force).await {
            Ok(()) => Ok(record),
            Err(StoreError::InUse { mappings, .. }) => {
                Err(in_use(&state, store.as_ref(), &account, id, &mappings).await)
            }
            Err(other) => Err(other.into()),
        }
    }
    .await;

    match outcome {
        Ok(record) => {
            state.propagate().await;
            audit(&who, action, &account, "ok");
            let mut view = CertificateView::of(&record);
            view.deleted = true;
            Json(view).into_response()
        }
        Err(error) => refused(&who, action, &account, error),
    }
}

/// 409 naming each mapping that still uses the certificate.
async fn in_use(
    state: &AdminState,
    store: &dyn Store,
    account: &AccountId,
    id: CertificateId,
    users: &[MappingId],
) -> ApiError {
    let mappings = store.mappings(account).await.unwrap_or_default();
    let users: Vec<MappingView> = mappings
        .iter()
        .filter(|mapping| users.contains(&mapping.id))
        .map(|mapping| MappingView::of(state, mapping))
        .collect();
    let named: Vec<String> = users
        .iter()
        .map(|m| format!("{} ({:?}: {} {})", m.id, m.name, m.service_id, m.url))
        .collect();
    ApiError::new(
        StatusCode::CONFLICT,
        "certificate_in_use",
        format!(
            "certificate {id} is used by mappings {}; delete or re-point them first, or \
             delete with force=true",
            named.join(", ")
        ),
    )
    .with_detail(json!({ "mappings": users }))
}

// ------------------------------------------------------------------------------------------
// The P12 tester (#8).
// ------------------------------------------------------------------------------------------

async fn test_p12(
    State(state): State<AdminState>,
    Path(account): Path<String>,
    multipart: Result<Multipart, MultipartRejection>,
) -> Result<Response, ApiError> {
    account_id(&account)?;
    let mut form = read_form(&state, multipart, &["file", "password"]).await?;
    let file = form
        .remove("file")
        .ok_or_else(|| missing("file", "the .p12 or .pfx file"))?;
    let password = form
        .remove("password")
        .ok_or_else(|| missing("password", "the file's password"))?;
    let password = String::from_utf8(password.to_vec()).map_err(|_| {
        ApiError::bad_request("invalid_field", "the password field must be UTF-8 text")
    })?;

    let diagnosis = diagnosed(&state, file.to_vec(), SecretString::from(password)).await?;
    let report = diagnosis.report.clone();
    match diagnosis.into_usable() {
        Ok(_) => Ok(Json(report).into_response()),
        Err(report) => Err(ApiError::unusable_p12(&report)),
    }
}

// ------------------------------------------------------------------------------------------
// Activate (#9).
// ------------------------------------------------------------------------------------------

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Activation {
    service_name: String,
    url: String,
}

async fn activate(
    State(state): State<AdminState>,
    Path((account, id)): Path<(String, String)>,
    RawQuery(query): RawQuery,
    extensions: Extensions,
    body: Bytes,
) -> Response {
    let who = principal_of(&extensions);
    let action = "mapping.activate";
    let outcome = async {
        let account = account_id(&account)?;
        let id = CertificateId(numeric_id("certificateId", &id)?);
        let validate = flag(query.as_deref(), "isValidateUrlEnabled", true)?;
        let activation: Activation = parse_json(&body, "{\"serviceName\",\"url\"}")?;
        let service = service_name(&activation.service_name, "serviceName")?;
        let url = target_url(activation.url, "url")?;
        let store = state.store()?;
        store.certificate(&account, id).await?;

        if validate {
            validate_url(&state, store.as_ref(), &account, id, &url).await?;
        }
        let spec = MappingSpec {
            name: derived_name(&service, &url)?,
            service,
            url,
            certificate_id: id,
            enabled: true,
            url_match: UrlMatch::Exact,
            ca_pem: None,
            verify_server: true,
        };
        Ok(store.create_mapping(&account, spec).await?)
    }
    .await;

    match outcome {
        Ok(mapping) => {
            state.propagate().await;
            audit(&who, action, &account, "ok");
            let view = MappingView::of(&state, &mapping);
            (StatusCode::CREATED, Json(view)).into_response()
        }
        Err(error) => refused(&who, action, &account, error),
    }
}

/// A real mTLS request to `url` with the stored certificate; 424 when it fails.
async fn validate_url(
    state: &AdminState,
    store: &dyn Store,
    account: &AccountId,
    id: CertificateId,
    url: &str,
) -> Result<(), ApiError> {
    let stored = store.certificate_secret(account, id).await?;
    let p12 = usable_p12(state, stored.der, stored.password).await?;
    let timeout =
        Duration::from_millis(state.upstream.handshake_timeout_ms) + VALIDATION_RESPONSE_WAIT;
    match super::probe::request(p12.identity(), url, None, true, timeout).await {
        Ok(response) => {
            debug!(account = %account, certificate = %id, status = response.status,
                "activation url validated");
            Ok(())
        }
        Err(error) => Err(ApiError::new(
            StatusCode::FAILED_DEPENDENCY,
            error.code,
            format!(
                "the mTLS request to {url} with certificate {id} failed, so no mapping was \
                 made: {}",
                error.message
            ),
        )
        .with_header("lp-error-from-transport", error.code)
        .with_header("lp-message-from-transport", header_text(&error.message))
        .with_detail(json!({ "url": url, "certificationId": id.to_string() }))),
    }
}

/// A header value from free text: visible ASCII and spaces only.
fn header_text(text: &str) -> String {
    text.chars()
        .map(|c| if c.is_ascii_graphic() { c } else { ' ' })
        .collect()
}

/// `{service}:{url}`, or its first characters and a digest of the whole past the name limit.
fn derived_name(service: &ServiceName, url: &str) -> Result<EntryName, ApiError> {
    let full = format!("{service}:{url}");
    let name = if full.len() <= MAX_ID_LEN {
        full
    } else {
        let digest = hex::encode(&Sha256::digest(full.as_bytes())[..8]);
        let mut cut = MAX_ID_LEN - digest.len() - 1;
        while !full.is_char_boundary(cut) {
            cut -= 1;
        }
        format!("{}~{digest}", &full[..cut])
    };
    EntryName::new(name).map_err(|e| ApiError::bad_request("invalid_field", format!("name: {e}")))
}

// ------------------------------------------------------------------------------------------
// Mapping CRUD (#10).
// ------------------------------------------------------------------------------------------

/// One mapping of a create or update body.
#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct MappingEntry {
    id: Option<u64>,
    certification_id: Option<TextOrNumber>,
    service_id: Option<TextOrNumber>,
    enable: Option<bool>,
    url: Option<String>,
    site_id: Option<String>,
    name: Option<String>,
    deleted: Option<bool>,
}

/// An id the original types as a string, which some clients send as a number.
#[derive(Deserialize)]
#[serde(untagged)]
enum TextOrNumber {
    Text(String),
    Number(u64),
}

impl fmt::Display for TextOrNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Text(text) => f.write_str(text),
            Self::Number(number) => write!(f, "{number}"),
        }
    }
}

async fn list_mappings(
    State(state): State<AdminState>,
    Path(account): Path<String>,
    RawQuery(query): RawQuery,
) -> Result<Json<Vec<MappingView>>, ApiError> {
    check_version(query.as_deref())?;
    let account = account_id(&account)?;
    let mut mappings = state.store()?.mappings(&account).await?;
    mappings.sort_by_key(|mapping| mapping.id);
    let views = mappings
        .iter()
        .map(|m| MappingView::of(&state, m))
        .collect();
    Ok(Json(views))
}

async fn read_mapping(
    State(state): State<AdminState>,
    Path((account, id)): Path<(String, String)>,
    RawQuery(query): RawQuery,
) -> Result<Json<MappingView>, ApiError> {
    check_version(query.as_deref())?;
    let account = account_id(&account)?;
    let id = MappingId(numeric_id("mappingId", &id)?);
    let mapping = state.store()?.mapping(&account, id).await?;
    Ok(Json(MappingView::of(&state, &mapping)))
}

async fn create_mappings(
    State(state): State<AdminState>,
    Path(account): Path<String>,
    RawQuery(query): RawQuery,
    extensions: Extensions,
    body: Bytes,
) -> Response {
    let who = principal_of(&extensions);
    let action = "mapping.create";
    let outcome = async {
        check_version(query.as_deref())?;
        let account = account_id(&account)?;
        let entries: Vec<MappingEntry> = parse_json(&body, "an array of mappings")?;
        let specs = entries
            .into_iter()
            .enumerate()
            .map(|(index, entry)| new_spec(&state, &account, entry, &format!("[{index}]")))
            .collect::<Result<Vec<_>, _>>()?;
        check_batch(specs.iter().map(|spec| (spec, None)))?;
        let store = state.store()?;
        create_all(store.as_ref(), &account, specs).await
    }
    .await;
    mappings_answer(&state, &who, action, &account, StatusCode::CREATED, outcome).await
}

async fn update_mappings(
    State(state): State<AdminState>,
    Path(account): Path<String>,
    RawQuery(query): RawQuery,
    extensions: Extensions,
    body: Bytes,
) -> Response {
    let who = principal_of(&extensions);
    let outcome = async {
        check_version(query.as_deref())?;
        let account = account_id(&account)?;
        let entries: Vec<MappingEntry> = parse_json(&body, "an array of mappings with ids")?;
        let store = state.store()?;
        let mut changes = Vec::with_capacity(entries.len());
        for (index, entry) in entries.into_iter().enumerate() {
            let at = format!("[{index}]");
            let id = entry
                .id
                .ok_or_else(|| missing(&format!("{at}.id"), "the mapping's id"))?;
            changes.push((MappingId(id), entry, at));
        }
        update_all(&state, store.as_ref(), &account, changes).await
    }
    .await;
    mappings_answer(
        &state,
        &who,
        "mapping.update",
        &account,
        StatusCode::OK,
        outcome,
    )
    .await
}

async fn update_mapping(
    State(state): State<AdminState>,
    Path((account, id)): Path<(String, String)>,
    RawQuery(query): RawQuery,
    extensions: Extensions,
    body: Bytes,
) -> Response {
    let who = principal_of(&extensions);
    let outcome = async {
        check_version(query.as_deref())?;
        let account = account_id(&account)?;
        let id = MappingId(numeric_id("mappingId", &id)?);
        let entry: MappingEntry = parse_json(&body, "a mapping")?;
        if entry.id.is_some_and(|given| given != id.0) {
            return Err(ApiError::bad_request(
                "invalid_field",
                format!(
                    "id is {:?} but the path names mapping {id}",
                    entry.id.unwrap_or(0)
                ),
            ));
        }
        let store = state.store()?;
        let changes = vec![(id, entry, String::from("mapping"))];
        update_all(&state, store.as_ref(), &account, changes).await
    }
    .await;
    match outcome {
        Ok(mut mappings) if mappings.len() == 1 => {
            state.propagate().await;
            audit(&who, "mapping.update", &account, "ok");
            let mapping = mappings.remove(0);
            Json(MappingView::of(&state, &mapping)).into_response()
        }
        Ok(_) => refused(
            &who,
            "mapping.update",
            &account,
            internal("one mapping expected"),
        ),
        Err(error) => refused(&who, "mapping.update", &account, error),
    }
}

async fn delete_mapping(
    State(state): State<AdminState>,
    Path((account, id)): Path<(String, String)>,
    RawQuery(query): RawQuery,
    extensions: Extensions,
) -> Response {
    let who = principal_of(&extensions);
    let action = "mapping.delete";
    let outcome = async {
        check_version(query.as_deref())?;
        let account = account_id(&account)?;
        let id = MappingId(numeric_id("mappingId", &id)?);
        let store = state.store()?;
        let mapping = store.mapping(&account, id).await?;
        store.delete_mapping(&account, id).await?;
        Ok(mapping)
    }
    .await;
    match outcome {
        Ok(mapping) => {
            state.propagate().await;
            audit(&who, action, &account, "ok");
            let mut view = MappingView::of(&state, &mapping);
            view.deleted = true;
            Json(view).into_response()
        }
        Err(error) => refused(&who, action, &account, error),
    }
}

/// The answer to a mapping batch: every mapping written, or the refusal.
async fn mappings_answer(
    state: &AdminState,
    who: &str,
    action: &str,
    account: &str,
    status: StatusCode,
    outcome: Result<Vec<Mapping>, ApiError>,
) -> Response {
    match outcome {
        Ok(mappings) => {
            state.propagate().await;
            for _ in &mappings {
                audit(who, action, account, "ok");
            }
            let views: Vec<MappingView> =
                mappings.iter().map(|m| MappingView::of(state, m)).collect();
            (status, Json(views)).into_response()
        }
        Err(error) => refused(who, action, account, error),
    }
}

/// The spec of a new mapping from a create entry.
fn new_spec(
    state: &AdminState,
    account: &AccountId,
    entry: MappingEntry,
    at: &str,
) -> Result<MappingSpec, ApiError> {
    if entry.id.is_some() {
        return Err(ApiError::bad_request(
            "invalid_field",
            format!("{at}.id is assigned by the gateway; leave it out, or use PUT to update"),
        ));
    }
    check_mapping_entry(account, &entry, at)?;
    let certificate = entry.certification_id.ok_or_else(|| {
        missing(
            &format!("{at}.certificationId"),
            "the id of the certificate to use",
        )
    })?;
    let service = entry
        .service_id
        .ok_or_else(|| missing(&format!("{at}.serviceId"), "the calling service's id"))?;
    let url = entry
        .url
        .ok_or_else(|| missing(&format!("{at}.url"), "the partner's full https:// URL"))?;

    let certificate_id = certificate_id(&certificate, &format!("{at}.certificationId"))?;
    let service = service_name(
        &state.config.service_name(&service.to_string()),
        &format!("{at}.serviceId"),
    )?;
    let url = target_url(url, &format!("{at}.url"))?;
    let name = match entry.name {
        Some(name) => EntryName::new(name)
            .map_err(|e| ApiError::bad_request("invalid_field", format!("{at}.name: {e}")))?,
        None => derived_name(&service, &url)?,
    };
    Ok(MappingSpec {
        name,
        service,
        url,
        certificate_id,
        enabled: entry.enable.unwrap_or(true),
        url_match: UrlMatch::Exact,
        ca_pem: None,
        verify_server: true,
    })
}

/// `spec` with the compatible fields an update entry sets; the others keep their value.
fn changed_spec(
    state: &AdminState,
    account: &AccountId,
    old: &MappingSpec,
    entry: MappingEntry,
    at: &str,
) -> Result<MappingSpec, ApiError> {
    check_mapping_entry(account, &entry, at)?;
    let mut spec = old.clone();
    if let Some(certificate) = entry.certification_id {
        spec.certificate_id = certificate_id(&certificate, &format!("{at}.certificationId"))?;
    }
    if let Some(service) = entry.service_id {
        spec.service = service_name(
            &state.config.service_name(&service.to_string()),
            &format!("{at}.serviceId"),
        )?;
    }
    if let Some(url) = entry.url {
        spec.url = target_url(url, &format!("{at}.url"))?;
    }
    if let Some(name) = entry.name {
        spec.name = EntryName::new(name)
            .map_err(|e| ApiError::bad_request("invalid_field", format!("{at}.name: {e}")))?;
    }
    if let Some(enable) = entry.enable {
        spec.enabled = enable;
    }
    Ok(spec)
}

fn check_mapping_entry(
    account: &AccountId,
    entry: &MappingEntry,
    at: &str,
) -> Result<(), ApiError> {
    check_site(account, entry.site_id.as_deref(), at)?;
    if entry.deleted == Some(true) {
        return Err(ApiError::bad_request(
            "invalid_field",
            format!("{at}.deleted is true; delete a mapping with DELETE on its id instead"),
        ));
    }
    Ok(())
}

/// Refuses a batch that names one mapping, name or key twice.
fn check_batch<'a>(
    specs: impl Iterator<Item = (&'a MappingSpec, Option<MappingId>)>,
) -> Result<(), ApiError> {
    let (mut names, mut keys, mut ids) = (BTreeSet::new(), BTreeSet::new(), BTreeSet::new());
    let mut empty = true;
    for (spec, id) in specs {
        empty = false;
        if !names.insert(spec.name.clone()) {
            return Err(twice(&format!("the name {:?}", spec.name.as_str())));
        }
        if !keys.insert(spec.key_digest()) {
            return Err(twice(&format!(
                "service {} with URL {}",
                spec.service, spec.url
            )));
        }
        if let Some(id) = id {
            if !ids.insert(id) {
                return Err(twice(&format!("mapping id {id}")));
            }
        }
    }
    if empty {
        return Err(ApiError::bad_request(
            "empty_request",
            "the array holds no mapping; send at least one",
        ));
    }
    Ok(())
}

/// Creates every mapping, or none: a failure undoes the ones already created.
async fn create_all(
    store: &dyn Store,
    account: &AccountId,
    specs: Vec<MappingSpec>,
) -> Result<Vec<Mapping>, ApiError> {
    let mut created: Vec<Mapping> = Vec::with_capacity(specs.len());
    for spec in specs {
        match store.create_mapping(account, spec).await {
            Ok(mapping) => created.push(mapping),
            Err(error) => {
                for mapping in created.iter().rev() {
                    if let Err(undo) = store.delete_mapping(account, mapping.id).await {
                        tracing::error!(account = %account, mapping = %mapping.id,
                            error = %undo, "a mapping of a refused batch could not be undone");
                    }
                }
                return Err(error.into());
            }
        }
    }
    Ok(created)
}

/// Updates every mapping, or none: a failure restores the ones already updated.
async fn update_all(
    state: &AdminState,
    store: &dyn Store,
    account: &AccountId,
    changes: Vec<(MappingId, MappingEntry, String)>,
) -> Result<Vec<Mapping>, ApiError> {
    let mut planned = Vec::with_capacity(changes.len());
    for (id, entry, at) in changes {
        let old = store.mapping(account, id).await?;
        let spec = changed_spec(state, account, &old.spec, entry, &at)?;
        planned.push((old, spec));
    }
    check_batch(planned.iter().map(|(old, spec)| (spec, Some(old.id))))?;

    let mut updated: Vec<(Mapping, Mapping)> = Vec::with_capacity(planned.len());
    for (old, spec) in planned {
        match store.update_mapping(account, old.id, spec).await {
            Ok(new) => updated.push((old, new)),
            Err(error) => {
                for (old, _) in updated.iter().rev() {
                    let restored = store.update_mapping(account, old.id, old.spec.clone());
                    if let Err(undo) = restored.await {
                        tracing::error!(account = %account, mapping = %old.id,
                            error = %undo, "a mapping of a refused batch could not be restored");
                    }
                }
                return Err(error.into());
            }
        }
    }
    Ok(updated.into_iter().map(|(_, new)| new).collect())
}

fn check_version(query: Option<&str>) -> Result<(), ApiError> {
    match query_value(query, "v").as_deref() {
        None | Some(MAPPINGS_VERSION) | Some("3") => Ok(()),
        Some(other) => Err(ApiError::bad_request(
            "unsupported_version",
            format!("version {other:?} is not served here; use v={MAPPINGS_VERSION}"),
        )),
    }
}

fn certificate_id(value: &TextOrNumber, at: &str) -> Result<CertificateId, ApiError> {
    Ok(CertificateId(numeric_id(at, &value.to_string())?))
}

// ------------------------------------------------------------------------------------------
// Check mapping (#11, #12).
// ------------------------------------------------------------------------------------------

/// One entry of `POST /mtls/mapping`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct MappingQuestion {
    service_name: String,
    account_id: String,
    url: String,
    #[serde(rename = "doExist")]
    _do_exist: Option<Value>,
}

/// One entry of `POST /api/account/{accountId}/checks/serviceUrlMappings`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct UrlQuestion {
    service_name: String,
    url: String,
    #[serde(rename = "exist")]
    _exist: Option<Value>,
}

/// A JSON object that keeps its fields in the order they came, so an answer can echo it.
struct OrderedObject(Vec<(String, Value)>);

impl OrderedObject {
    /// Sets `key` to `value`, last, replacing a value the caller sent for it.
    fn answer(mut self, key: &str, value: bool) -> Self {
        self.0.retain(|(k, _)| k != key);
        self.0.push((key.to_owned(), Value::Bool(value)));
        self
    }
}

impl<'de> Deserialize<'de> for OrderedObject {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Fields;

        impl<'de> Visitor<'de> for Fields {
            type Value = OrderedObject;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<OrderedObject, A::Error> {
                let mut fields = Vec::new();
                while let Some(field) = map.next_entry::<String, Value>()? {
                    fields.push(field);
                }
                Ok(OrderedObject(fields))
            }
        }

        deserializer.deserialize_map(Fields)
    }
}

impl Serialize for OrderedObject {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(self.0.len()))?;
        for (key, value) in &self.0 {
            map.serialize_entry(key, value)?;
        }
        map.end()
    }
}

async fn check_mapping(
    State(state): State<AdminState>,
    RawQuery(query): RawQuery,
    extensions: Extensions,
    body: Bytes,
) -> Result<Response, ApiError> {
    let version = query_value(query.as_deref(), "v");
    let what = "an array of {\"serviceName\",\"accountId\",\"url\"}";
    let questions: Vec<MappingQuestion> = parse_json(&body, what)?;
    // The accounts are in the body, so the guard could not check them against the caller's
    // scope; a caller limited to some accounts must not learn about others.
    if let Some(principal) = extensions.get::<crate::admin::auth::Principal>() {
        let outside = questions
            .iter()
            .find(|q| !state.auth.covers_account(principal, &q.account_id));
        if let Some(q) = outside {
            return Err(ApiError::new(
                axum::http::StatusCode::FORBIDDEN,
                "forbidden",
                format!(
                    "{} may not act on account {}",
                    principal.label(),
                    q.account_id
                ),
            ));
        }
    }
    let snapshot = state.snapshot.load();
    let exists = |q: &MappingQuestion| {
        snapshot
            .lookup(&q.account_id, &q.service_name, &q.url)
            .is_some()
    };

    match version.as_deref() {
        None | Some("1") => {
            let answers: serde_json::Map<String, Value> = questions
                .iter()
                .map(|q| {
                    let key = format!(
                        "CertificateMappingParamters{{serviceName='{}', accountId='{}', \
                         url='{}'}}",
                        q.service_name, q.account_id, q.url
                    );
                    (key, Value::Bool(exists(q)))
                })
                .collect();
            Ok(Json(Value::Object(answers)).into_response())
        }
        Some("2") => {
            let echoed: Vec<OrderedObject> = parse_json(&body, what)?;
            let answers: Vec<OrderedObject> = echoed
                .into_iter()
                .zip(&questions)
                .map(|(object, q)| object.answer("doExist", exists(q)))
                .collect();
            Ok(Json(answers).into_response())
        }
        Some(other) => Err(ApiError::bad_request(
            "unsupported_version",
            format!("check mapping version {other:?} does not exist; use v=1 or v=2"),
        )),
    }
}

async fn check_urls(
    State(state): State<AdminState>,
    Path(account): Path<String>,
    body: Bytes,
) -> Result<Json<Vec<OrderedObject>>, ApiError> {
    let account = account_id(&account)?;
    let what = "an array of {\"serviceName\",\"url\"}";
    let questions: Vec<UrlQuestion> = parse_json(&body, what)?;
    let echoed: Vec<OrderedObject> = parse_json(&body, what)?;
    let snapshot = state.snapshot.load();
    let answers = echoed
        .into_iter()
        .zip(&questions)
        .map(|(object, q)| {
            let exists = snapshot
                .lookup(account.as_str(), &q.service_name, &q.url)
                .is_some();
            object.answer("exist", exists)
        })
        .collect();
    Ok(Json(answers))
}

// ------------------------------------------------------------------------------------------
// Reading requests.
// ------------------------------------------------------------------------------------------

/// `body` as `T`, with a stable code and a sentence naming the field when it is not.
fn parse_json<T: DeserializeOwned>(body: &[u8], what: &str) -> Result<T, ApiError> {
    let mut deserializer = serde_json::Deserializer::from_slice(body);
    let value: T = serde_path_to_error::deserialize(&mut deserializer).map_err(|error| {
        let path = error.path().to_string();
        let inner = error.into_inner();
        json_error(&path, &inner, what)
    })?;
    deserializer
        .end()
        .map_err(|error| json_error(".", &error, what))?;
    Ok(value)
}

fn json_error(path: &str, error: &serde_json::Error, what: &str) -> ApiError {
    use serde_json::error::Category;

    let at = if path == "." {
        String::from("the body")
    } else {
        path.to_owned()
    };
    match error.classify() {
        Category::Syntax | Category::Eof | Category::Io => ApiError::bad_request(
            "invalid_json",
            format!("the body is not valid JSON ({error}); send {what}"),
        ),
        Category::Data => {
            let text = error.to_string();
            let code = if text.starts_with("unknown field") {
                "unknown_field"
            } else if text.starts_with("missing field") {
                "missing_field"
            } else {
                "invalid_field"
            };
            ApiError::bad_request(code, format!("{at}: {text}; send {what}"))
        }
    }
}

/// The fields of a multipart body, each at most once and each within the upload limit.
async fn read_form(
    state: &AdminState,
    multipart: Result<Multipart, MultipartRejection>,
    known: &[&'static str],
) -> Result<HashMap<&'static str, Bytes>, ApiError> {
    let fields = known.join(", ");
    let invalid = |reason: String| {
        ApiError::bad_request(
            "invalid_multipart",
            format!(
                "the multipart/form-data body cannot be read ({reason}); send the fields \
                     {fields}"
            ),
        )
    };
    let mut multipart = multipart.map_err(|e| invalid(e.body_text()))?;
    let limit = state.config.max_upload_bytes;
    let mut form = HashMap::new();
    while let Some(field) = multipart
        .next_field()
        .await
        .map_err(|e| invalid(e.body_text()))?
    {
        let name = field.name().unwrap_or_default().to_owned();
        let Some(known_name) = known.iter().find(|known| **known == name) else {
            return Err(ApiError::bad_request(
                "unknown_field",
                format!("the multipart field {name:?} is not known; send the fields {fields}"),
            ));
        };
        let bytes = field.bytes().await.map_err(|e| invalid(e.body_text()))?;
        if bytes.len() > limit {
            return Err(too_large(limit));
        }
        if form.insert(*known_name, bytes).is_some() {
            return Err(invalid(format!("the field {name:?} appears twice")));
        }
    }
    Ok(form)
}

/// The first value of `name` in a query string.
fn query_value(query: Option<&str>, name: &str) -> Option<String> {
    url::form_urlencoded::parse(query?.as_bytes())
        .find(|(key, _)| key == name)
        .map(|(_, value)| value.into_owned())
}

/// A `true` / `false` query parameter.
fn flag(query: Option<&str>, name: &str, default: bool) -> Result<bool, ApiError> {
    match query_value(query, name) {
        None => Ok(default),
        Some(value) if value.eq_ignore_ascii_case("true") => Ok(true),
        Some(value) if value.eq_ignore_ascii_case("false") => Ok(false),
        Some(value) => Err(ApiError::bad_request(
            "invalid_query",
            format!("{name} is {value:?}; use true or false"),
        )),
    }
}

fn account_id(account: &str) -> Result<AccountId, ApiError> {
    AccountId::new(account)
        .map_err(|e| ApiError::bad_request("invalid_account", format!("accountId: {e}")))
}

fn numeric_id(what: &str, value: &str) -> Result<u64, ApiError> {
    value.trim().parse().map_err(|_| {
        ApiError::bad_request(
            "invalid_field",
            format!("{what} is {value:?}; ids are whole numbers, as the lists show them"),
        )
    })
}

fn service_name(name: &str, at: &str) -> Result<ServiceName, ApiError> {
    ServiceName::new(name).map_err(|e| ApiError::bad_request("invalid_field", format!("{at}: {e}")))
}

/// A partner URL as forwarding will compare and call it.
fn target_url(url: String, at: &str) -> Result<String, ApiError> {
    Target::parse(&url)
        .map(|_| url)
        .map_err(|e| ApiError::bad_request("invalid_url", format!("{at}: {e}")))
}

fn check_site(account: &AccountId, site: Option<&str>, at: &str) -> Result<(), ApiError> {
    match site {
        Some(site) if site != account.as_str() => Err(ApiError::bad_request(
            "account_mismatch",
            format!(
                "{at}.siteId is {site:?} but the path names account {account}; send both the \
                 same, or leave siteId out"
            ),
        )),
        _ => Ok(()),
    }
}

fn missing(field: &str, what: &str) -> ApiError {
    ApiError::bad_request("missing_field", format!("{field} is missing; send {what}"))
}

fn twice(what: &str) -> ApiError {
    ApiError::bad_request(
        "duplicate_in_request",
        format!("{what} appears twice in the request; send each once"),
    )
}

fn internal(reason: &str) -> ApiError {
    ApiError::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        "internal_error",
        format!("the gateway failed unexpectedly: {reason}"),
    )
}

/// Audits a refused write with its code and answers the refusal.
fn refused(who: &str, action: &str, account: &str, error: ApiError) -> Response {
    audit(who, action, account, error.code);
    error.into_response()
}
