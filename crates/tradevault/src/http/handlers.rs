//! Handlers: parse the request with [`crate::api`], call the store, shape the answer.

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde_json::{Value, json};

use super::{AppState, error::ApiError};
use crate::api::{self, Field, Parsed};
use crate::error::Error;
use crate::store::query;

type Answer = Result<Response, ApiError>;
type Q = Result<Query<Vec<(String, String)>>, QueryRejection>;
type P = Result<Path<String>, PathRejection>;

fn json_body(body: Result<Bytes, BytesRejection>) -> Result<Value, ApiError> {
    let bytes = body.map_err(|r| {
        if r.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "body_too_large",
                "the request body exceeds server.body_bytes_max",
            )
        } else {
            ApiError::new(StatusCode::BAD_REQUEST, "unreadable_body", r.body_text())
        }
    })?;
    Ok(api::spec::parse_json(&bytes)?)
}

fn query_of(q: Q, spec: &[Field]) -> Result<Parsed, ApiError> {
    let Query(pairs) =
        q.map_err(|r| ApiError::new(StatusCode::BAD_REQUEST, "invalid_query", r.body_text()))?;
    Ok(api::spec::parse_query(&pairs, spec)?)
}

fn path_of(p: P) -> Result<String, ApiError> {
    p.map(|Path(s)| s)
        .map_err(|r| ApiError::new(StatusCode::BAD_REQUEST, "invalid_path", r.body_text()))
}

/// 201 when anything was created, 200 when every item was an identical re-send; the body has the
/// shape of the request: one object, or an array.
fn written<T: Serialize>(rows: Vec<(T, bool)>, batch: bool) -> Answer {
    let status = if rows.iter().any(|(_, created)| *created) {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    let items: Vec<T> = rows.into_iter().map(|(t, _)| t).collect();
    Ok(if batch {
        (status, Json(items)).into_response()
    } else {
        match items.into_iter().next() {
            Some(one) => (status, Json(one)).into_response(),
            None => (status, Json(Value::Array(Vec::new()))).into_response(),
        }
    })
}

fn found<T: Serialize>(row: Option<T>, what: impl FnOnce() -> String) -> Answer {
    match row {
        Some(r) => Ok(Json(r).into_response()),
        None => Err(Error::NotFound { what: what() }.into()),
    }
}

fn page_of(p: &mut Parsed, s: &AppState) -> Result<query::PageRequest, ApiError> {
    Ok(api::page(p, s.page_limit_default, s.page_limit_max)?)
}

pub(super) async fn live() -> Json<Value> {
    Json(json!({ "status": "live" }))
}

pub(super) async fn ready(State(s): State<AppState>) -> Response {
    match s.store.unavailable() {
        None => Json(json!({ "status": "ready" })).into_response(),
        Some(cause) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({ "status": "not_ready", "reason": cause })),
        )
            .into_response(),
    }
}

pub(super) async fn metrics(State(s): State<AppState>) -> Response {
    let size = |p: &std::path::Path| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);
    let db = s.store.path();
    crate::metrics::file_sizes(size(db), size(&crate::store::wal_path(db)));
    let text = s.metrics.as_ref().map(|h| h.render()).unwrap_or_default();
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response()
}

pub(super) async fn openapi() -> Json<Value> {
    Json(super::openapi::document())
}

pub(super) async fn create_trades(
    State(s): State<AppState>,
    body: Result<Bytes, BytesRejection>,
) -> Answer {
    let body = json_body(body)?;
    let (items, batch) = api::body_items(&body, s.batch_items_max)?;
    let trades = api::parse_items(
        &items,
        batch,
        api::TRADE_FIELDS,
        Some("trade_id"),
        api::new_trade,
    )?;
    written(s.store.insert_trades(trades, batch).await?, batch)
}

pub(super) async fn list_trades(State(s): State<AppState>, q: Q) -> Answer {
    let mut p = query_of(q, api::TRADE_QUERY)?;
    let (filter, page) = (api::filter(&mut p), page_of(&mut p, &s)?);
    Ok(Json(
        s.store
            .read(move |c| query::trades(c, &filter, page))
            .await?,
    )
    .into_response())
}

pub(super) async fn get_trade(State(s): State<AppState>, id: P, q: Q) -> Answer {
    let (id, mode) = (
        path_of(id)?,
        api::test_mode(&mut query_of(q, api::MODE_QUERY)?),
    );
    let key = id.clone();
    found(
        s.store.read(move |c| query::trade(c, &key, mode)).await?,
        || format!("trade {id:?}"),
    )
}

pub(super) async fn create_orders(
    State(s): State<AppState>,
    body: Result<Bytes, BytesRejection>,
) -> Answer {
    let body = json_body(body)?;
    let (items, batch) = api::body_items(&body, s.batch_items_max)?;
    let orders = api::parse_items(
        &items,
        batch,
        api::ORDER_FIELDS,
        Some("client_order_id"),
        api::new_order,
    )?;
    written(s.store.insert_orders(orders, batch).await?, batch)
}

pub(super) async fn list_orders(State(s): State<AppState>, q: Q) -> Answer {
    let mut p = query_of(q, api::ORDER_QUERY)?;
    let (filter, page) = (api::filter(&mut p), page_of(&mut p, &s)?);
    Ok(Json(
        s.store
            .read(move |c| query::orders(c, &filter, page))
            .await?,
    )
    .into_response())
}

pub(super) async fn get_order(State(s): State<AppState>, id: P, q: Q) -> Answer {
    let (id, mode) = (
        path_of(id)?,
        api::test_mode(&mut query_of(q, api::MODE_QUERY)?),
    );
    let key = id.clone();
    found(
        s.store.read(move |c| query::order(c, &key, mode)).await?,
        || format!("order {id:?}"),
    )
}

pub(super) async fn patch_order(
    State(s): State<AppState>,
    id: P,
    body: Result<Bytes, BytesRejection>,
) -> Answer {
    let id = path_of(id)?;
    let body = json_body(body)?;
    let mut p = api::spec::parse_object(&body, api::ORDER_PATCH_FIELDS, "")?;
    let status = p.required_text("status")?;
    let (order, _changed) = s.store.update_order_status(id, status).await?;
    Ok(Json(order).into_response())
}

pub(super) async fn list_positions(State(s): State<AppState>, q: Q) -> Answer {
    let mut p = query_of(q, api::POSITION_QUERY)?;
    let (mode, symbol) = (api::test_mode(&mut p), p.text("symbol"));
    let items = s
        .store
        .read(move |c| query::positions(c, mode, symbol.as_deref()))
        .await?;
    Ok(Json(json!({ "items": items })).into_response())
}

pub(super) async fn get_position(State(s): State<AppState>, symbol: P, q: Q) -> Answer {
    let (symbol, mode) = (
        path_of(symbol)?,
        api::test_mode(&mut query_of(q, api::MODE_QUERY)?),
    );
    let key = symbol.clone();
    let rows = s
        .store
        .read(move |c| query::positions(c, mode, Some(&key)))
        .await?;
    found(rows.into_iter().next(), || format!("position {symbol:?}"))
}

pub(super) async fn position_history(State(s): State<AppState>, symbol: P, q: Q) -> Answer {
    let symbol = path_of(symbol)?;
    let mut p = query_of(q, api::CHILD_QUERY)?;
    let (mode, page) = (api::test_mode(&mut p), page_of(&mut p, &s)?);
    Ok(Json(
        s.store
            .read(move |c| query::position_history(c, &symbol, mode, page))
            .await?,
    )
    .into_response())
}

pub(super) async fn create_signals(
    State(s): State<AppState>,
    body: Result<Bytes, BytesRejection>,
) -> Answer {
    let body = json_body(body)?;
    let (items, batch) = api::body_items(&body, s.batch_items_max)?;
    let signals = api::parse_items(
        &items,
        batch,
        api::SIGNAL_FIELDS,
        Some("signal_id"),
        api::new_signal,
    )?;
    written(s.store.insert_signals(signals, batch).await?, batch)
}

pub(super) async fn list_signals(State(s): State<AppState>, q: Q) -> Answer {
    let mut p = query_of(q, api::SIGNAL_QUERY)?;
    let (filter, page) = (api::filter(&mut p), page_of(&mut p, &s)?);
    Ok(Json(
        s.store
            .read(move |c| query::signals(c, &filter, page))
            .await?,
    )
    .into_response())
}

pub(super) async fn get_signal(State(s): State<AppState>, id: P, q: Q) -> Answer {
    let (id, mode) = (
        path_of(id)?,
        api::test_mode(&mut query_of(q, api::MODE_QUERY)?),
    );
    let key = id.clone();
    found(
        s.store.read(move |c| query::signal(c, &key, mode)).await?,
        || format!("signal {id:?}"),
    )
}

pub(super) async fn signal_trades(State(s): State<AppState>, id: P, q: Q) -> Answer {
    let id = path_of(id)?;
    let mut p = query_of(q, api::CHILD_QUERY)?;
    let (mode, page) = (api::test_mode(&mut p), page_of(&mut p, &s)?);
    let key = id.clone();
    let result = s
        .store
        .read(move |c| {
            if query::signal(c, &key, mode)?.is_none() {
                return Ok(None);
            }
            let filter = query::Filter {
                signal_id: Some(key),
                test_mode: mode,
                ..Default::default()
            };
            query::trades(c, &filter, page).map(Some)
        })
        .await?;
    found(result, || format!("signal {id:?}"))
}

pub(super) async fn create_logs(
    State(s): State<AppState>,
    body: Result<Bytes, BytesRejection>,
) -> Answer {
    let body = json_body(body)?;
    let (items, batch) = api::body_items(&body, s.batch_items_max)?;
    let logs = api::parse_items(&items, batch, api::LOG_FIELDS, None, api::new_log)?;
    let stored = s.store.insert_logs(logs).await?;
    written(stored.into_iter().map(|l| (l, true)).collect(), batch)
}

pub(super) async fn list_logs(State(s): State<AppState>, q: Q) -> Answer {
    let mut p = query_of(q, api::LOG_QUERY)?;
    let (filter, page) = (api::filter(&mut p), page_of(&mut p, &s)?);
    Ok(Json(s.store.read(move |c| query::logs(c, &filter, page)).await?).into_response())
}

pub(super) async fn list_status(State(s): State<AppState>, q: Q) -> Answer {
    let mode = api::test_mode(&mut query_of(q, api::MODE_QUERY)?);
    let items = s.store.read(move |c| query::statuses(c, mode)).await?;
    Ok(Json(json!({ "items": items })).into_response())
}

pub(super) async fn get_status(State(s): State<AppState>, key: P, q: Q) -> Answer {
    let (key, mode) = (
        path_of(key)?,
        api::test_mode(&mut query_of(q, api::MODE_QUERY)?),
    );
    let k = key.clone();
    found(
        s.store.read(move |c| query::status(c, &k, mode)).await?,
        || format!("status {key:?}"),
    )
}

pub(super) async fn put_status(
    State(s): State<AppState>,
    key: P,
    body: Result<Bytes, BytesRejection>,
) -> Answer {
    let key = path_of(key)?;
    api::spec::check_id("key", &key)?;
    let body = json_body(body)?;
    let mut p = api::spec::parse_object(&body, api::STATUS_FIELDS, "")?;
    let value = p.json("value").unwrap_or(Value::Null);
    let (test_mode, bot_version) = (p.bool("test_mode").unwrap_or(false), p.text("bot_version"));
    Ok(Json(
        s.store
            .put_status(key, value, test_mode, bot_version)
            .await?,
    )
    .into_response())
}

pub(super) async fn stats(State(s): State<AppState>, q: Q) -> Answer {
    let check = query_of(q, api::STATS_QUERY)?
        .bool("check")
        .unwrap_or(false);
    let stats = s.store.stats(check).await?;
    crate::metrics::file_sizes(stats.database_file_size_bytes, stats.wal_file_size_bytes);
    Ok(Json(stats).into_response())
}

pub(super) async fn list_jobs(State(s): State<AppState>) -> Answer {
    let jobs = match &s.jobs {
        Some(jobs) => jobs.jobs().await?,
        None => Vec::new(),
    };
    let runs = s.store.read(|c| crate::jobs::history(c, None, 50)).await?;
    Ok(Json(json!({ "jobs": jobs, "runs": runs })).into_response())
}

pub(super) async fn run_job(State(s): State<AppState>, name: P) -> Answer {
    let name = path_of(name)?;
    let Some(jobs) = &s.jobs else {
        return Err(Error::NotFound {
            what: format!("job {name:?}"),
        }
        .into());
    };
    let id = jobs.trigger(&name).await?;
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({ "job": name, "run_id": id, "status": "running" })),
    )
        .into_response())
}

/// Replaces the store's content with a file `tradevault restore --in-place` verified and staged:
/// the writer pauses (an exclusive moment) while a safety copy is taken, the pages are replaced in
/// one transaction and the result is checked; any failure puts the safety copy back.
pub(super) async fn admin_restore(
    State(s): State<AppState>,
    body: Result<Bytes, BytesRejection>,
) -> Answer {
    let body = json_body(body)?;
    let mut p = api::spec::parse_object(&body, api::ADMIN_RESTORE_FIELDS, "")?;
    let (staging, safety) = (p.required_text("staging")?, p.required_text("safety")?);
    let db = s.store.path().to_owned();
    let allowed = crate::restore::inplace::work_dir(&db);
    let canonical = std::fs::canonicalize(&allowed).ok();
    let inside = |field: &'static str, path: &str| {
        let path = std::path::PathBuf::from(path);
        let parent = path.parent().and_then(|p| std::fs::canonicalize(p).ok());
        if canonical.is_some() && parent == canonical && path.file_name().is_some() {
            Ok(path)
        } else {
            Err(Error::invalid(
                "bad_path",
                Some(field.into()),
                format!("{field} must be a file directly in {}", allowed.display()),
            ))
        }
    };
    let (staging, safety) = (inside("staging", &staging)?, inside("safety", &safety)?);
    let store = s.store.clone();
    let replaced = tokio::task::spawn_blocking(move || {
        store.exclusive_blocking(move |conn| {
            crate::restore::inplace::replace(conn, &db, &staging, &safety)
        })
    })
    .await
    .map_err(|_| Error::Internal {
        message: "the restore panicked; see the server log".into(),
    })??;
    // An empty commit tells the replication engine (a commit listener) to ship what changed.
    if let Err(e) = s.store.write(|_| Ok(())).await {
        tracing::warn!(error = %e, "could not announce the restored content to replication");
    }
    tracing::info!(safety = %replaced.safety.display(), "store content replaced by an in-place restore");
    Ok(Json(replaced).into_response())
}

pub(super) async fn no_route(method: Method, uri: Uri) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "not_found",
        format!("no route for {method} {}; see /openapi.json", uri.path()),
    )
}

pub(super) async fn method_not_allowed(method: Method, uri: Uri) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        format!("{method} is not allowed on {}", uri.path()),
    )
}

pub(super) fn panicked(_: Box<dyn std::any::Any + Send + 'static>) -> Response {
    tracing::error!("a request handler panicked");
    ApiError::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        "internal",
        "the server failed; see its log",
    )
    .into_response()
}
