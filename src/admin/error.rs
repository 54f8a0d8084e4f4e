//! The admin API's one error type: a status, a stable code and a sentence, rendered as JSON.

use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;
use serde_json::Value;
use tracing::debug;

use crate::p12::Report;
use crate::store::{Blame, StoreError};

/// What a caller gets back when a request is refused or fails.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    /// Extra machine-readable detail: a diagnosis report, the mappings that block a delete.
    pub detail: Option<Value>,
    /// `WWW-Authenticate` for 401, `Retry-After` for 429.
    pub headers: Vec<(&'static str, String)>,
}

#[derive(Serialize)]
struct Body<'a> {
    code: &'a str,
    message: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    detail: Option<&'a Value>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            detail: None,
            headers: Vec::new(),
        }
    }

    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }

    pub fn with_detail(mut self, detail: Value) -> Self {
        self.detail = Some(detail);
        self
    }

    pub fn with_header(mut self, name: &'static str, value: impl Into<String>) -> Self {
        self.headers.push((name, value.into()));
        self
    }

    /// An unusable P12: 422 with the diagnosis's codes and sentences.
    pub fn unusable_p12(report: &Report) -> Self {
        let codes: Vec<&str> = report.problems.iter().map(|f| f.code.as_str()).collect();
        let sentences: Vec<&str> = report.problems.iter().map(|f| f.message.as_str()).collect();
        Self::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "unusable_p12",
            format!(
                "the P12 file cannot serve as a client identity ({}): {}",
                codes.join(", "),
                sentences.join("; ")
            ),
        )
        .with_detail(serde_json::to_value(report).unwrap_or(Value::Null))
    }

    pub fn store_not_ready() -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "store_unavailable",
            "the certificate store is not open yet; retry in a few seconds",
        )
        .with_header("retry-after", "2")
    }
}

impl From<StoreError> for ApiError {
    fn from(error: StoreError) -> Self {
        let (status, code) = match &error {
            StoreError::NotFound { .. } => (StatusCode::NOT_FOUND, "not_found"),
            StoreError::Conflict { .. } => (StatusCode::CONFLICT, "conflict"),
            StoreError::InUse { .. } => (StatusCode::CONFLICT, "certificate_in_use"),
            _ if error.blame() == Blame::Store => {
                (StatusCode::SERVICE_UNAVAILABLE, "store_unavailable")
            }
            _ => (StatusCode::INTERNAL_SERVER_ERROR, "internal_error"),
        };
        let mut api = Self::new(status, code, error.to_string());
        if let StoreError::InUse { mappings, .. } = &error {
            api = api.with_detail(serde_json::json!({ "mappings": mappings }));
        }
        api
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status.as_u16();
        debug!(target: "mtls_gateway::admin", status, code = self.code, "request refused");
        let body = Body {
            code: self.code,
            message: &self.message,
            detail: self.detail.as_ref(),
        };
        let mut response = (self.status, Json(body)).into_response();
        for (name, value) in self.headers {
            if let Ok(value) = HeaderValue::from_str(&value) {
                response.headers_mut().insert(name, value);
            }
        }
        response
    }
}
