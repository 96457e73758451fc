//! The one error contract every endpoint speaks (DESIGN.md §4).
//!
//! An [`ApiError`] carries what the client may see (status, code, message,
//! hint, retry advice) and, separately, the internal cause, which is logged
//! with the `error_id` and never rendered.

use http::StatusCode;
use serde::Serialize;

/// How a client should react to an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RetryStrategy {
    /// Retrying the same request cannot succeed.
    None,
    /// A transient conflict; retrying now is fine.
    Immediate,
    /// Something on our side is struggling; back off exponentially.
    ExponentialBackoff,
    /// Wait for the number of seconds in `Retry-After`.
    AfterRetryAfter,
}

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    pub hint: String,
    pub retry_strategy: RetryStrategy,
    /// Seconds, sent as `Retry-After` when set.
    pub retry_after: Option<u64>,
    /// Internal cause: logged with the error id, never shown to the client.
    pub cause: Option<anyhow::Error>,
}

/// The JSON body of every error response.
#[derive(Debug, Serialize)]
pub struct ErrorBody<'a> {
    pub error_code: &'a str,
    pub message: &'a str,
    pub error_hint: &'a str,
    pub retryable: bool,
    pub retry_strategy: RetryStrategy,
    pub error_id: &'a str,
    pub request_id: &'a str,
}

impl ApiError {
    pub fn new(
        status: StatusCode,
        code: &'static str,
        message: impl Into<String>,
        hint: impl Into<String>,
    ) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
            hint: hint.into(),
            retry_strategy: RetryStrategy::None,
            retry_after: None,
            cause: None,
        }
    }

    pub fn retry(mut self, strategy: RetryStrategy) -> Self {
        self.retry_strategy = strategy;
        self
    }

    pub fn with_cause(mut self, cause: impl Into<anyhow::Error>) -> Self {
        self.cause = Some(cause.into());
        self
    }

    pub fn retryable(&self) -> bool {
        self.retry_strategy != RetryStrategy::None
    }

    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            code,
            message,
            "Fix the request as described in the message and send it again.",
        )
    }

    /// A list's `after` that no previous page could have returned.
    pub fn invalid_cursor() -> Self {
        Self::bad_request(
            "invalid_cursor",
            "'after' must be a cursor from a previous page",
        )
    }

    /// This error as an anyhow error for command-line and benchmark use:
    /// the internal cause kept, with the message as its context.
    pub fn into_anyhow(self) -> anyhow::Error {
        match self.cause {
            Some(c) => c.context(self.message),
            None => anyhow::anyhow!("{}: {}", self.code, self.message),
        }
    }

    pub fn validation(message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
            message,
            "Correct the named field and send the request again.",
        )
    }

    pub fn not_found(what: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("{what} not found"),
            "Check the id; it may belong to another organisation or never have existed.",
        )
    }

    pub fn conflict(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::CONFLICT,
            code,
            message,
            "The resource already exists or is in a state that does not allow this.",
        )
    }

    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            message,
            "Send a valid, unrevoked API key as 'Authorization: Bearer <key>'.",
        )
    }

    pub fn forbidden(code: &'static str, message: impl Into<String>, hint: &str) -> Self {
        Self::new(StatusCode::FORBIDDEN, code, message, hint)
    }

    pub fn payload_too_large(limit: usize) -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!("request body exceeds the limit of {limit} bytes"),
            "Send a smaller body.",
        )
    }

    pub fn rate_limited(retry_after: u64) -> Self {
        let mut e = Self::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limited",
            "rate limit exceeded",
            "Wait for the number of seconds in the Retry-After header, then retry.",
        )
        .retry(RetryStrategy::AfterRetryAfter);
        e.retry_after = Some(retry_after.max(1));
        e
    }

    /// An unexpected failure on our side. The cause is logged, not shown.
    pub fn internal(cause: impl Into<anyhow::Error>) -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal_error",
            "an unexpected error occurred",
            "Retry with exponential backoff; if it persists, contact support with the error_id.",
        )
        .retry(RetryStrategy::ExponentialBackoff)
        .with_cause(cause)
    }

    /// A dependency (database, blob store, queue) is unavailable.
    pub fn unavailable(cause: impl Into<anyhow::Error>) -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "service_unavailable",
            "a backing service is temporarily unavailable",
            "Retry with exponential backoff.",
        )
        .retry(RetryStrategy::ExponentialBackoff)
        .with_cause(cause)
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {}: {}",
            self.status.as_u16(),
            self.code,
            self.message
        )
    }
}

/// A fresh, unique error id (`err_` + 128 random bits in hex).
pub fn new_error_id() -> String {
    format!("err_{}", uuid::Uuid::new_v4().simple())
}

impl From<tokio_postgres::Error> for ApiError {
    fn from(e: tokio_postgres::Error) -> Self {
        // A closed connection or an I/O failure is the database being away,
        // which a retry may fix; anything else is our bug.
        if e.is_closed() || e.as_db_error().is_none() {
            ApiError::unavailable(e)
        } else {
            ApiError::internal(e)
        }
    }
}

impl From<deadpool_postgres::PoolError> for ApiError {
    fn from(e: deadpool_postgres::PoolError) -> Self {
        ApiError::unavailable(e)
    }
}

impl From<anyhow::Error> for ApiError {
    fn from(e: anyhow::Error) -> Self {
        ApiError::internal(e)
    }
}

pub type ApiResult<T> = Result<T, ApiError>;
