//! Queries: time series, latest state, attributes, connection status and log, commands,
//! rejected log.

use actix_web::{HttpRequest, HttpResponse, web};
use fluxgate_model::MessageId;
use fluxgate_store::{ApiScope, AttributeScope, CommandStatus, Order, RangeQuery};
use serde::Deserialize;

use crate::error::ApiError;
use crate::{ApiState, now_ms};

pub(crate) fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route(
        "/applications/{app}/devices/{id}/data",
        web::get().to(time_series),
    )
    .route(
        "/applications/{app}/devices/{id}/state",
        web::get().to(latest),
    )
    .route(
        "/applications/{app}/devices/{id}/attributes/shared",
        web::get().to(shared_attributes),
    )
    .route(
        "/applications/{app}/devices/{id}/attributes/{scope}",
        web::get().to(attributes),
    )
    .route(
        "/applications/{app}/devices/{id}/connection",
        web::get().to(connection),
    )
    .route(
        "/applications/{app}/devices/{id}/commands",
        web::get().to(commands),
    )
    .route(
        "/applications/{app}/commands/{command}",
        web::get().to(command),
    )
    .route("/applications/{app}/rejected", web::get().to(rejected));
}

fn keys(s: &Option<String>) -> Option<Vec<String>> {
    s.as_ref().map(|k| {
        k.split(',')
            .map(str::trim)
            .filter(|k| !k.is_empty())
            .map(str::to_owned)
            .collect()
    })
}

/// `GET .../data` query.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SeriesIn {
    /// Comma-separated keys (all when absent).
    keys: Option<String>,
    /// Window start, epoch ms, inclusive (default: 24 h before `to`).
    from: Option<i64>,
    /// Window end, epoch ms, exclusive (default: now).
    to: Option<i64>,
    /// Points per page (default 1000, at most 10000).
    limit: Option<u32>,
    /// `asc` (default) or `desc`.
    order: Option<String>,
    /// Page token from the previous page's `next`.
    page: Option<String>,
}

async fn time_series(
    st: web::Data<ApiState>,
    req: HttpRequest,
    path: web::Path<(String, String)>,
    q: web::Query<SeriesIn>,
) -> Result<HttpResponse, ApiError> {
    let (app, device) = st
        .authorize_device(&req, &path.0, &path.1, ApiScope::Read)
        .await?;
    let to = q.to.unwrap_or_else(now_ms);
    let from = q.from.unwrap_or(to.saturating_sub(86_400_000));
    if from > to {
        return Err(ApiError::invalid("from", "from is after to"));
    }
    let order = match q.order.as_deref() {
        None | Some("asc") => Order::Asc,
        Some("desc") => Order::Desc,
        Some(_) => return Err(ApiError::invalid("order", "asc or desc")),
    };
    let page = st
        .store
        .query(RangeQuery {
            tenant: app,
            device,
            keys: keys(&q.keys).unwrap_or_default(),
            from_ms: from,
            to_ms: to,
            limit: q.limit.unwrap_or(1000).clamp(1, 10_000),
            order,
            page_token: q.page.clone(),
        })
        .await?;
    Ok(HttpResponse::Ok().json(serde_json::json!({
        "points": page.points,
        "next": page.next,
    })))
}

/// `GET .../state` and `.../attributes/{scope}` query.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct KeysIn {
    keys: Option<String>,
}

async fn latest(
    st: web::Data<ApiState>,
    req: HttpRequest,
    path: web::Path<(String, String)>,
    q: web::Query<KeysIn>,
) -> Result<HttpResponse, ApiError> {
    let (app, device) = st
        .authorize_device(&req, &path.0, &path.1, ApiScope::Read)
        .await?;
    let points = st.store.latest(app, device, keys(&q.keys)).await?;
    Ok(HttpResponse::Ok().json(serde_json::json!({ "points": points })))
}

/// `GET .../attributes/{scope}`: client attributes (and shared ones, though
/// `.../attributes/shared` has a route of its own, beside its `POST`).
async fn attributes(
    st: web::Data<ApiState>,
    req: HttpRequest,
    path: web::Path<(String, String, String)>,
    q: web::Query<KeysIn>,
) -> Result<HttpResponse, ApiError> {
    let scope = match path.2.as_str() {
        "client" => AttributeScope::Client,
        "shared" => AttributeScope::Shared,
        _ => return Err(ApiError::invalid("scope", "client or shared")),
    };
    attribute_values(&st, &req, &path.0, &path.1, scope, &q).await
}

/// `GET .../attributes/shared`.
async fn shared_attributes(
    st: web::Data<ApiState>,
    req: HttpRequest,
    path: web::Path<(String, String)>,
    q: web::Query<KeysIn>,
) -> Result<HttpResponse, ApiError> {
    attribute_values(&st, &req, &path.0, &path.1, AttributeScope::Shared, &q).await
}

async fn attribute_values(
    st: &ApiState,
    req: &HttpRequest,
    app: &str,
    device: &str,
    scope: AttributeScope,
    q: &KeysIn,
) -> Result<HttpResponse, ApiError> {
    let (app, device) = st
        .authorize_device(req, app, device, ApiScope::Read)
        .await?;
    let values = st
        .store
        .attributes(app, device, scope, keys(&q.keys))
        .await?;
    Ok(HttpResponse::Ok().json(values))
}

/// `limit` query.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct LimitIn {
    limit: Option<u32>,
}

async fn connection(
    st: web::Data<ApiState>,
    req: HttpRequest,
    path: web::Path<(String, String)>,
    q: web::Query<LimitIn>,
) -> Result<HttpResponse, ApiError> {
    let (app, device) = st
        .authorize_device(&req, &path.0, &path.1, ApiScope::Read)
        .await?;
    let log = st
        .store
        .connection_log(app, device, q.limit.unwrap_or(20).clamp(1, 1000))
        .await?;
    let last = log.first();
    Ok(HttpResponse::Ok().json(serde_json::json!({
        "connected": last.is_some_and(|e| e.connected),
        "since_ms": last.map(|e| e.at_ms),
        "log": log,
    })))
}

/// `GET .../commands` query.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CommandsIn {
    status: Option<String>,
    limit: Option<u32>,
}

async fn commands(
    st: web::Data<ApiState>,
    req: HttpRequest,
    path: web::Path<(String, String)>,
    q: web::Query<CommandsIn>,
) -> Result<HttpResponse, ApiError> {
    let (app, device) = st
        .authorize_device(&req, &path.0, &path.1, ApiScope::Read)
        .await?;
    let status = q
        .status
        .as_deref()
        .map(|s| {
            CommandStatus::ALL
                .into_iter()
                .find(|c| c.as_str() == s)
                .ok_or_else(|| ApiError::invalid("status", "a command status"))
        })
        .transpose()?;
    let list = st
        .store
        .commands(app, device, status, q.limit.unwrap_or(50).clamp(1, 1000))
        .await?;
    Ok(HttpResponse::Ok().json(serde_json::json!({ "items": list })))
}

async fn command(
    st: web::Data<ApiState>,
    req: HttpRequest,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, ApiError> {
    let app = st.authorize(&req, &path.0, ApiScope::Read).await?;
    let id: MessageId = serde_json::from_value(serde_json::Value::String(path.1.clone()))
        .map_err(|_| ApiError::invalid("command", "a command id"))?;
    let c = match st.store.command(id).await? {
        Some(c) if c.tenant == app => c,
        _ => return Err(ApiError::not_found(format!("command {id}"))),
    };
    let history = st.store.command_history(id).await?;
    Ok(HttpResponse::Ok().json(serde_json::json!({ "command": c, "history": history })))
}

/// `GET .../rejected` query.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RejectedIn {
    device: Option<String>,
    limit: Option<u32>,
}

async fn rejected(
    st: web::Data<ApiState>,
    req: HttpRequest,
    path: web::Path<String>,
    q: web::Query<RejectedIn>,
) -> Result<HttpResponse, ApiError> {
    let app = st.authorize(&req, &path, ApiScope::Read).await?;
    let log = st
        .store
        .rejected_log(app, q.device.clone(), q.limit.unwrap_or(50).clamp(1, 1000))
        .await?;
    Ok(HttpResponse::Ok().json(serde_json::json!({ "items": log })))
}
