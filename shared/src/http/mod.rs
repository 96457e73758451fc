//! Transport-neutral request and response types. The local server and the
//! Lambda adapter both translate into these and call the same pipeline.

pub mod pipeline;

use crate::auth::Principal;
use crate::error::{ApiError, ApiResult};
use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, StatusCode};
use serde::de::DeserializeOwned;
use serde::Serialize;
use uuid::Uuid;

/// JSON bodies are limited to 100 KB (DESIGN.md §4).
pub const JSON_BODY_LIMIT: usize = 100 * 1024;

pub const REQUEST_ID_HEADER: &str = "x-request-id";

#[derive(Debug, Clone)]
pub struct ApiRequest {
    pub method: Method,
    pub path: String,
    pub query: Option<String>,
    pub headers: HeaderMap,
    pub body: Bytes,
    /// Set by a transport that stopped reading because the body was over the
    /// route's limit; the pipeline answers 413.
    pub body_too_large: bool,
    /// API Gateway's own request id, used when the client sent none.
    pub gateway_request_id: Option<String>,
}

impl ApiRequest {
    pub fn new(method: Method, path: impl Into<String>) -> Self {
        ApiRequest {
            method,
            path: path.into(),
            query: None,
            headers: HeaderMap::new(),
            body: Bytes::new(),
            body_too_large: false,
            gateway_request_id: None,
        }
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

#[derive(Debug, Clone)]
pub struct ApiResponse {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl ApiResponse {
    pub fn json<T: Serialize + ?Sized>(status: StatusCode, value: &T) -> ApiResponse {
        let body = serde_json::to_vec(value).unwrap_or_else(|_| b"{}".to_vec());
        let mut headers = HeaderMap::new();
        headers.insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        ApiResponse {
            status,
            headers,
            body: Bytes::from(body),
        }
    }

    pub fn ok<T: Serialize + ?Sized>(value: &T) -> ApiResponse {
        Self::json(StatusCode::OK, value)
    }

    /// 200 with one page of a cursor list: `data`, `has_more`, and
    /// `next_cursor` (the cursor of the page's last item, present exactly
    /// when there is more).
    pub fn page<T: Serialize + ?Sized>(
        data: &T,
        next_cursor: Option<impl Serialize>,
    ) -> ApiResponse {
        Self::ok(&serde_json::json!({
            "data": data,
            "has_more": next_cursor.is_some(),
            "next_cursor": next_cursor,
        }))
    }

    pub fn created<T: Serialize + ?Sized>(value: &T) -> ApiResponse {
        Self::json(StatusCode::CREATED, value)
    }

    pub fn with_header(mut self, name: &'static str, value: &str) -> ApiResponse {
        if let Ok(v) = HeaderValue::from_str(value) {
            self.headers.insert(name, v);
        }
        self
    }
}

/// What a handler receives: the request, its path parameters, the verified
/// caller and the request id.
#[derive(Debug)]
pub struct Call {
    pub req: ApiRequest,
    pub params: Vec<(String, String)>,
    pub principal: Option<Principal>,
    pub request_id: String,
}

impl Call {
    /// The caller; only absent on routes that need no key.
    pub fn principal(&self) -> ApiResult<&Principal> {
        self.principal
            .as_ref()
            .ok_or_else(|| ApiError::unauthorized("missing API key"))
    }

    pub fn param(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// A path parameter that must be a UUID; anything else is a 400 that names it.
    pub fn param_uuid(&self, name: &str) -> ApiResult<Uuid> {
        let raw = self.param(name).unwrap_or_default();
        Uuid::try_parse(raw).map_err(|_| {
            ApiError::bad_request(
                "invalid_id",
                format!("path parameter '{name}' must be a UUID"),
            )
        })
    }

    /// A query-string parameter, percent-decoded.
    pub fn query(&self, name: &str) -> Option<String> {
        query_param(self.req.query.as_deref()?, name)
    }

    /// Parses the JSON body. Syntax errors are 400 `invalid_json`; well-formed
    /// JSON of the wrong shape is 422 `validation_failed`, naming the problem.
    pub fn json<T: DeserializeOwned>(&self) -> ApiResult<T> {
        let ct = self.req.header("content-type").unwrap_or("");
        if !ct.is_empty() && !ct.to_ascii_lowercase().starts_with("application/json") {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "the body must be JSON",
                "Send 'Content-Type: application/json'.",
            ));
        }
        let body: &[u8] = if self.req.body.is_empty() {
            b"{}"
        } else {
            &self.req.body
        };
        serde_json::from_slice(body).map_err(|e| {
            use serde_json::error::Category;
            match e.classify() {
                Category::Data => ApiError::validation(format!("invalid request body: {e}")),
                _ => ApiError::bad_request("invalid_json", format!("malformed JSON: {e}")),
            }
        })
    }
}

/// Cursor pagination parameters shared by list endpoints.
pub struct Page {
    pub limit: i64,
    pub after: Option<String>,
}

impl Page {
    /// `after` parsed as the list's cursor type; 400 `invalid_cursor` when
    /// it does not parse.
    pub fn after_as<T: std::str::FromStr>(&self) -> ApiResult<Option<T>> {
        self.after
            .as_deref()
            .map(|a| a.parse::<T>().map_err(|_| ApiError::invalid_cursor()))
            .transpose()
    }
}

impl Call {
    pub fn page(&self, default: i64, max: i64) -> ApiResult<Page> {
        let limit = match self.query("limit") {
            None => default,
            Some(v) => v
                .parse::<i64>()
                .ok()
                .filter(|n| (1..=max).contains(n))
                .ok_or_else(|| {
                    ApiError::bad_request(
                        "invalid_limit",
                        format!("'limit' must be a whole number from 1 to {max}"),
                    )
                })?,
        };
        Ok(Page {
            limit,
            after: self.query("after").filter(|s| !s.is_empty()),
        })
    }
}

fn query_param(query: &str, name: &str) -> Option<String> {
    query.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (percent_decode(k) == name).then(|| percent_decode(v))
    })
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = |c: u8| (c as char).to_digit(16);
                match (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                    (Some(h), Some(l)) => {
                        out.push((h * 16 + l) as u8);
                        i += 2;
                    }
                    _ => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Keeps a client's request id when it is short and printable; otherwise
/// returns None and the caller makes one.
pub fn valid_request_id(v: &str) -> bool {
    !v.is_empty()
        && v.len() <= 128
        && v.bytes().all(|b| {
            b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':' | b'/' | b'+' | b'=')
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_are_validated() {
        assert!(valid_request_id("abc-123_x.y:z"));
        assert!(!valid_request_id(""));
        assert!(!valid_request_id("has space"));
        assert!(!valid_request_id("new\nline"));
        assert!(!valid_request_id(&"a".repeat(129)));
    }

    #[test]
    fn query_params_decode() {
        assert_eq!(query_param("a=1&b=x%20y", "b").as_deref(), Some("x y"));
        assert_eq!(query_param("a=1&b=x+y", "b").as_deref(), Some("x y"));
        assert_eq!(query_param("a", "a").as_deref(), Some(""));
        assert_eq!(query_param("a=%zz", "a").as_deref(), Some("%zz"));
        assert_eq!(query_param("a=%4", "a").as_deref(), Some("%4"));
        assert_eq!(query_param("a=1", "c"), None);
    }
}
