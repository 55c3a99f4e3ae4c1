//! What the bridge answers: 200 `{"accepted": N}` or a rejection with `{"error", "message"}`.

use crate::webhook::envelope::EnvelopeError;
use crate::webhook::signature::SignatureError;
use axum::Json;
use axum::response::{IntoResponse, Response};
use http::StatusCode;
use http::header::RETRY_AFTER;
use serde_json::json;
use std::time::Duration;

/// Seconds catalog360 is asked to wait before resending after a 503.
pub const RETRY_AFTER_SECS: u64 = 5;

/// The outcome of one POST.
#[derive(Debug)]
pub enum Answer {
    Accepted(usize),
    Rejected(Rejection),
}

/// Every reason a batch is not accepted.
#[derive(Debug, thiserror::Error)]
pub enum Rejection {
    #[error("{0}")]
    Signature(#[from] SignatureError),
    #[error("signed with the test key, but a test ping has no events")]
    TestKeyWithEvents,
    #[error("body larger than {0} bytes")]
    TooLarge(usize),
    #[error("the body did not arrive before the answer deadline")]
    BodyTimeout,
    #[error("{0}")]
    Envelope(#[from] EnvelopeError),
    #[error("{failed} message(s) not confirmed by the broker: {first}")]
    Unconfirmed {
        failed: usize,
        /// The answer's `error` code: `broker_unconfirmed`, or a topic's own problem
        /// (`unknown_topic`, `topic_authorization`).
        reason: &'static str,
        first: String,
    },
    #[error("brokers did not confirm every event within {0:?}")]
    DeadlineExceeded(Duration),
    #[error("too many batches in flight")]
    Overloaded,
    #[error("client address {0} is not allowed to post to this webhook")]
    ForbiddenSource(String),
    #[error("shutting down")]
    ShuttingDown,
}

impl Rejection {
    pub fn status(&self) -> StatusCode {
        match self {
            Rejection::Signature(_) | Rejection::TestKeyWithEvents => StatusCode::UNAUTHORIZED,
            Rejection::ForbiddenSource(_) => StatusCode::FORBIDDEN,
            Rejection::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Rejection::BodyTimeout => StatusCode::REQUEST_TIMEOUT,
            Rejection::Envelope(_) => StatusCode::BAD_REQUEST,
            Rejection::Unconfirmed { .. }
            | Rejection::DeadlineExceeded(_)
            | Rejection::Overloaded
            | Rejection::ShuttingDown => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    pub fn code(&self) -> &'static str {
        match self {
            Rejection::Signature(e) => e.code(),
            Rejection::TestKeyWithEvents => "test_key_with_events",
            Rejection::ForbiddenSource(_) => "forbidden_source",
            Rejection::TooLarge(_) => "body_too_large",
            Rejection::BodyTimeout => "body_timeout",
            Rejection::Envelope(e) => e.code(),
            Rejection::Unconfirmed { reason, .. } => reason,
            Rejection::DeadlineExceeded(_) => "broker_timeout",
            Rejection::Overloaded => "overloaded",
            Rejection::ShuttingDown => "shutting_down",
        }
    }
}

impl Answer {
    pub fn status(&self) -> StatusCode {
        match self {
            Answer::Accepted(_) => StatusCode::OK,
            Answer::Rejected(r) => r.status(),
        }
    }

    /// `accepted`, or the rejection's error code (the `reason` of `c360_requests_total`).
    pub fn code(&self) -> &'static str {
        match self {
            Answer::Accepted(_) => "accepted",
            Answer::Rejected(r) => r.code(),
        }
    }
}

/// A JSON error body, with `Retry-After` on 503.
pub fn error_response(status: StatusCode, code: &str, message: &str) -> Response {
    let body = Json(json!({ "error": code, "message": message }));
    if status == StatusCode::SERVICE_UNAVAILABLE {
        (status, [(RETRY_AFTER, RETRY_AFTER_SECS.to_string())], body).into_response()
    } else {
        (status, body).into_response()
    }
}

impl IntoResponse for Answer {
    fn into_response(self) -> Response {
        match self {
            Answer::Accepted(n) => (StatusCode::OK, Json(json!({ "accepted": n }))).into_response(),
            Answer::Rejected(r) => error_response(r.status(), r.code(), &r.to_string()),
        }
    }
}
