//! The HTTP API (axum). Handlers only translate HTTP to library calls: bodies and query strings
//! are validated by [`crate::api`], rows come from [`crate::store`]. The route table
//! [`routes`] builds the router and the OpenAPI document alike.

pub mod client;
mod error;
mod handlers;
pub mod openapi;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::MethodRouter;
use metrics_exporter_prometheus::PrometheusHandle;

pub use self::error::ApiError;
use crate::api::Field;
use crate::config::Config;
use crate::error::{Error, Result};
use crate::store::Store;

/// What every handler can reach.
#[derive(Clone)]
pub struct AppState {
    /// The trading store.
    pub store: Arc<Store>,
    /// Most items in a batch.
    pub batch_items_max: u64,
    /// Rows per page by default.
    pub page_limit_default: u64,
    /// Largest page.
    pub page_limit_max: u64,
    /// Renders `/metrics`; `None` if another recorder owns the process.
    pub metrics: Option<PrometheusHandle>,
    /// The scheduled jobs, if any.
    pub jobs: Option<Arc<crate::jobs::Scheduler>>,
}

/// The request body a route takes.
#[derive(Debug, Clone, Copy)]
pub enum BodySpec {
    /// One object, or an array of them written all-or-nothing.
    OneOrBatch(&'static [Field]),
    /// Exactly one object.
    One(&'static [Field]),
}

/// One route: the table entry that both the router and the OpenAPI document are built from.
pub struct Route {
    /// `GET`, `POST`, `PATCH` or `PUT`.
    pub method: &'static str,
    /// Path template, `{name}` for parameters (the same syntax in axum and OpenAPI).
    pub path: &'static str,
    /// One line for the OpenAPI document.
    pub summary: &'static str,
    /// The body it takes.
    pub body: Option<BodySpec>,
    /// The query parameters it takes.
    pub query: &'static [Field],
    /// Its success status.
    pub ok: u16,
    /// Adds its handler to the method router of its path.
    pub add: fn(MethodRouter<AppState>) -> MethodRouter<AppState>,
}

/// Every route of the API.
pub fn routes() -> Vec<Route> {
    use crate::api::*;
    use handlers as h;
    let r = |method, path, summary, body, query, ok, add| Route {
        method,
        path,
        summary,
        body,
        query,
        ok,
        add,
    };
    vec![
        r(
            "GET",
            "/health/live",
            "The process is up.",
            None,
            &[],
            200,
            |m| m.get(h::live),
        ),
        r(
            "GET",
            "/health/ready",
            "The store is open and accepts writes (503 otherwise).",
            None,
            &[],
            200,
            |m| m.get(h::ready),
        ),
        r(
            "GET",
            "/metrics",
            "Prometheus metrics.",
            None,
            &[],
            200,
            |m| m.get(h::metrics),
        ),
        r(
            "GET",
            "/openapi.json",
            "This document.",
            None,
            &[],
            200,
            |m| m.get(h::openapi),
        ),
        r(
            "POST",
            "/v1/trades",
            "Store trades (fills) and update positions; idempotent on trade_id.",
            Some(BodySpec::OneOrBatch(TRADE_FIELDS)),
            &[],
            201,
            |m| m.post(h::create_trades),
        ),
        r(
            "GET",
            "/v1/trades",
            "List trades.",
            None,
            TRADE_QUERY,
            200,
            |m| m.get(h::list_trades),
        ),
        r(
            "GET",
            "/v1/trades/{trade_id}",
            "One trade.",
            None,
            MODE_QUERY,
            200,
            |m| m.get(h::get_trade),
        ),
        r(
            "POST",
            "/v1/orders",
            "Store orders; idempotent on client_order_id.",
            Some(BodySpec::OneOrBatch(ORDER_FIELDS)),
            &[],
            201,
            |m| m.post(h::create_orders),
        ),
        r(
            "GET",
            "/v1/orders",
            "List orders.",
            None,
            ORDER_QUERY,
            200,
            |m| m.get(h::list_orders),
        ),
        r(
            "GET",
            "/v1/orders/{client_order_id}",
            "One order.",
            None,
            MODE_QUERY,
            200,
            |m| m.get(h::get_order),
        ),
        r(
            "PATCH",
            "/v1/orders/{client_order_id}",
            "Change an order's status.",
            Some(BodySpec::One(ORDER_PATCH_FIELDS)),
            &[],
            200,
            |m| m.patch(h::patch_order),
        ),
        r(
            "GET",
            "/v1/positions",
            "Positions, one per symbol and mode, maintained from fills.",
            None,
            POSITION_QUERY,
            200,
            |m| m.get(h::list_positions),
        ),
        r(
            "GET",
            "/v1/positions/{symbol}",
            "One symbol's position.",
            None,
            MODE_QUERY,
            200,
            |m| m.get(h::get_position),
        ),
        r(
            "GET",
            "/v1/positions/{symbol}/history",
            "Every change of one symbol's position, with old and new values.",
            None,
            CHILD_QUERY,
            200,
            |m| m.get(h::position_history),
        ),
        r(
            "POST",
            "/v1/signals",
            "Store signals; idempotent on signal_id.",
            Some(BodySpec::OneOrBatch(SIGNAL_FIELDS)),
            &[],
            201,
            |m| m.post(h::create_signals),
        ),
        r(
            "GET",
            "/v1/signals",
            "List signals.",
            None,
            SIGNAL_QUERY,
            200,
            |m| m.get(h::list_signals),
        ),
        r(
            "GET",
            "/v1/signals/{signal_id}",
            "One signal.",
            None,
            MODE_QUERY,
            200,
            |m| m.get(h::get_signal),
        ),
        r(
            "GET",
            "/v1/signals/{signal_id}/trades",
            "The trades attributed to a signal.",
            None,
            CHILD_QUERY,
            200,
            |m| m.get(h::signal_trades),
        ),
        r(
            "POST",
            "/v1/logs",
            "Append log entries.",
            Some(BodySpec::OneOrBatch(LOG_FIELDS)),
            &[],
            201,
            |m| m.post(h::create_logs),
        ),
        r(
            "GET",
            "/v1/logs",
            "List log entries.",
            None,
            LOG_QUERY,
            200,
            |m| m.get(h::list_logs),
        ),
        r(
            "GET",
            "/v1/status",
            "Every bot status value.",
            None,
            MODE_QUERY,
            200,
            |m| m.get(h::list_status),
        ),
        r(
            "GET",
            "/v1/status/{key}",
            "One bot status value.",
            None,
            MODE_QUERY,
            200,
            |m| m.get(h::get_status),
        ),
        r(
            "PUT",
            "/v1/status/{key}",
            "Set one bot status value.",
            Some(BodySpec::One(STATUS_FIELDS)),
            &[],
            200,
            |m| m.put(h::put_status),
        ),
        r(
            "GET",
            "/v1/jobs",
            "Scheduled jobs (schedule, next run, last run) and the latest 50 runs.",
            None,
            &[],
            200,
            |m| m.get(h::list_jobs),
        ),
        r(
            "POST",
            "/v1/jobs/{name}/run",
            "Run a job now (409 if it is running); answers 202 with the run's id.",
            None,
            &[],
            202,
            |m| m.post(h::run_job),
        ),
        r(
            "POST",
            "/v1/admin/restore",
            "Put in a database `tradevault restore --in-place` staged: safety copy, one-transaction swap, check, automatic rollback.",
            Some(BodySpec::One(ADMIN_RESTORE_FIELDS)),
            &[],
            200,
            |m| m.post(h::admin_restore),
        ),
        r(
            "GET",
            "/v1/stats",
            "Row counts, file sizes, pages, integrity and schema version.",
            None,
            STATS_QUERY,
            200,
            |m| m.get(h::stats),
        ),
    ]
}

/// Builds the router over `state`.
pub fn router(state: AppState, body_bytes_max: u64, request_timeout: Duration) -> Router {
    let mut paths: Vec<(&'static str, MethodRouter<AppState>)> = Vec::new();
    for route in routes() {
        match paths.iter_mut().find(|(p, _)| *p == route.path) {
            Some((_, m)) => *m = (route.add)(std::mem::take(m)),
            None => paths.push((route.path, (route.add)(MethodRouter::new()))),
        }
    }
    let mut router = Router::new();
    for (path, method_router) in paths {
        router = router.route(path, method_router);
    }
    router
        .fallback(handlers::no_route)
        .method_not_allowed_fallback(handlers::method_not_allowed)
        .layer(DefaultBodyLimit::max(
            usize::try_from(body_bytes_max).unwrap_or(usize::MAX),
        ))
        .layer(middleware::from_fn_with_state(request_timeout, observe))
        .layer(tower_http::catch_panic::CatchPanicLayer::custom(
            handlers::panicked,
        ))
        .with_state(state)
}

/// Times out slow requests with a JSON 503 and records per-route metrics.
async fn observe(State(timeout): State<Duration>, req: Request, next: Next) -> Response {
    let started = Instant::now();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let method = req.method().as_str().to_owned();
    let response = match tokio::time::timeout(timeout, next.run(req)).await {
        Ok(r) => r,
        Err(_) => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "timeout",
            format!("no answer within {} s (server.request_timeout_seconds); a write may still commit: re-send it, it is idempotent", timeout.as_secs()),
        )
        .into_response(),
    };
    crate::metrics::http_request(
        &route,
        &method,
        response.status().as_u16(),
        started.elapsed(),
    );
    response
}

/// Serves the API on `listener` until `shutdown` resolves. The caller closes the store.
pub async fn serve(
    config: &Config,
    store: Arc<Store>,
    jobs: Option<Arc<crate::jobs::Scheduler>>,
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<()> {
    let addr: SocketAddr = listener
        .local_addr()
        .map_err(|e| Error::io("read listen address", "socket", e))?;
    let state = AppState {
        store,
        batch_items_max: config.api.batch_items_max,
        page_limit_default: config.api.page_limit_default,
        page_limit_max: config.api.page_limit_max,
        metrics: crate::metrics::install(),
        jobs,
    };
    let app = router(
        state,
        config.server.body_bytes_max,
        Duration::from_secs(config.server.request_timeout_seconds),
    );
    tracing::info!(addr = %addr, "listening");
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
        .map_err(|e| Error::io("serve http", addr.to_string(), e))?;
    tracing::info!("http server stopped");
    Ok(())
}

/// Serves `GET /metrics` (Prometheus text) and `GET /health/live` on `listener` until `shutdown`
/// resolves: for `tradevault replicate`, which has no store and no API.
pub async fn serve_metrics(
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<()> {
    let addr: SocketAddr = listener
        .local_addr()
        .map_err(|e| Error::io("read listen address", "socket", e))?;
    let handle = crate::metrics::install();
    let app = Router::new()
        .route(
            "/metrics",
            axum::routing::get(move || {
                let text = handle.as_ref().map(|h| h.render()).unwrap_or_default();
                async move {
                    (
                        [(
                            axum::http::header::CONTENT_TYPE,
                            "text/plain; version=0.0.4",
                        )],
                        text,
                    )
                }
            }),
        )
        .route(
            "/health/live",
            axum::routing::get(|| async { axum::Json(serde_json::json!({ "status": "ok" })) }),
        );
    tracing::info!(addr = %addr, "serving metrics");
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
        .map_err(|e| Error::io("serve metrics", addr.to_string(), e))
}
