//! The HTTP surface: webhook routes, and the operational endpoints /healthz, /readyz, /metrics.

use crate::app::App;
use crate::delivery::ingest;
use crate::delivery::ledger;
use crate::live::Live;
use crate::server::client_addr::{Peer, client_ip};
use crate::telemetry::metrics as m;
use crate::webhook::answer::{Answer, error_response};
use axum::Router;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use http::{HeaderMap, HeaderValue, StatusCode};
use serde_json::json;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// The public router: the webhooks of the generation in force (looked up by path on every
/// request, so a reload can add, move or remove them), plus the admin endpoints when
/// `with_admin`.
pub fn router(live: Arc<Live>, with_admin: bool) -> Router {
    let mut r = Router::new();
    if with_admin {
        r = r.merge(admin_routes());
    }
    r.fallback(webhook).with_state(live)
}

/// A request on any other path: a webhook's POST (or HEAD), or 404/405.
async fn webhook(State(live): State<Arc<Live>>, req: axum::extract::Request) -> Response {
    let app = live.current();
    let Some(i) = app.webhooks.iter().position(|w| w.path == req.uri().path()) else {
        return not_found().await;
    };
    let (parts, body) = req.into_parts();
    let client = client_of(&parts, &app);
    match parts.method {
        http::Method::POST => {
            let headers = parts.headers;
            let rid = request_id(&headers);
            let mut resp = ingest::receive(app, i, client, headers, body, rid.clone())
                .await
                .into_response();
            if let Ok(v) = HeaderValue::from_str(&rid) {
                resp.headers_mut().insert("x-request-id", v);
            }
            resp
        }
        // catalog360 checks a URL with HEAD; outside `allow_from` it gets the same 403 as a POST.
        http::Method::HEAD => match ingest::admit(&app.webhooks[i], client) {
            Ok(()) => StatusCode::OK.into_response(),
            Err(r) => Answer::Rejected(r).into_response(),
        },
        _ => method_not_allowed().await,
    }
}

/// The client's address: the TCP peer, or behind a trusted proxy the address it forwarded.
fn client_of(parts: &http::request::Parts, app: &App) -> Option<std::net::IpAddr> {
    parts
        .extensions
        .get::<Peer>()
        .map(|p| client_ip(p.0.ip(), &parts.headers, &app.trusted_proxies))
}

/// The admin router alone, for `server.admin_listen`.
pub fn admin_router(live: Arc<Live>) -> Router {
    admin_routes().fallback(not_found).with_state(live)
}

fn admin_routes() -> Router<Arc<Live>> {
    Router::new()
        .route(
            "/healthz",
            get(|| async { axum::Json(json!({"status": "ok"})) }),
        )
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
}

async fn readyz(State(live): State<Arc<Live>>) -> Response {
    let app = live.current();
    let sinks = app.readiness();
    let ready = sinks.iter().all(|(_, r)| r.ready) && !app.is_closing();
    let detail: serde_json::Map<String, serde_json::Value> = sinks
        .iter()
        .map(|(name, r)| {
            (
                name.to_string(),
                json!({"ready": r.ready, "detail": r.detail}),
            )
        })
        .collect();
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let mut body = json!({
        "ready": ready,
        "closing": app.is_closing(),
        "sinks": detail,
        "config_hash": app.config.hash(),
    });
    // The ledger never decides readiness: a degraded one only costs duplicates.
    ledger_detail(&app.ledger.health(), &mut body);
    (status, axum::Json(body)).into_response()
}

/// `"ledger": "memory" | "ok" | "degraded"`, plus `"ledger_error"` when degraded.
fn ledger_detail(health: &ledger::Health, body: &mut serde_json::Value) {
    let (state, error) = match health {
        ledger::Health::Memory => ("memory", None),
        ledger::Health::Ok => ("ok", None),
        ledger::Health::Degraded(why) => ("degraded", Some(why.as_str())),
    };
    body["ledger"] = json!(state);
    if let Some(why) = error {
        body["ledger_error"] = json!(why);
    }
}

async fn metrics(State(live): State<Arc<Live>>) -> Response {
    for (name, r) in live.current().readiness() {
        m::sink_ready(name, r.ready);
    }
    let h = m::handle();
    h.run_upkeep();
    (
        [(http::header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        h.render(),
    )
        .into_response()
}

async fn method_not_allowed() -> Response {
    error_response(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "use POST (or HEAD to check the URL)",
    )
}

async fn not_found() -> Response {
    error_response(
        StatusCode::NOT_FOUND,
        "not_found",
        "no webhook is configured on this path",
    )
}

/// The caller's `x-request-id` when it is short and printable, else a new one.
fn request_id(headers: &HeaderMap) -> String {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    headers
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .filter(|s| !s.is_empty() && s.len() <= 128)
        .map(str::to_owned)
        .unwrap_or_else(|| {
            format!(
                "c360-{:x}-{}",
                std::process::id(),
                NEXT.fetch_add(1, Ordering::Relaxed)
            )
        })
}
