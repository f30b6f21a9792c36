//! Client-side RPC (ThingsBoard `v1/devices/me/rpc/request/{id}`): the dispatcher keeps a
//! device's request; an application lists and answers it here, and the answer goes to the
//! device on `v1/devices/me/rpc/response/{id}`. Unanswered by its timeout, the request
//! ends `timed_out` and the device gets an error reply instead.

use actix_web::{HttpRequest, HttpResponse, web};
use fluxgate_model::{Body, Dialect, MessageId};
use fluxgate_store::{ApiScope, ClientRpcStatus};
use serde::Deserialize;

use crate::device::{envelope, new_id, produce_all};
use crate::error::ApiError;
use crate::{ApiState, now_ms};

pub(crate) fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route(
        "/applications/{app}/devices/{id}/rpc/requests",
        web::get().to(list),
    )
    .route(
        "/applications/{app}/devices/{id}/rpc/requests/{rpc}",
        web::get().to(get),
    )
    .route(
        "/applications/{app}/devices/{id}/rpc/requests/{rpc}/answer",
        web::post().to(answer),
    );
}

/// `GET .../rpc/requests` query.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ListIn {
    status: Option<String>,
    limit: Option<u32>,
}

fn rpc_id(s: &str) -> Result<MessageId, ApiError> {
    s.parse()
        .map_err(|_| ApiError::invalid("rpc", "a client-side RPC id"))
}

async fn list(
    st: web::Data<ApiState>,
    req: HttpRequest,
    path: web::Path<(String, String)>,
    q: web::Query<ListIn>,
) -> Result<HttpResponse, ApiError> {
    let (app, device) = st
        .authorize_device(&req, &path.0, &path.1, ApiScope::Read)
        .await?;
    let status = q
        .status
        .as_deref()
        .map(|s| {
            ClientRpcStatus::parse(s)
                .ok_or_else(|| ApiError::invalid("status", "pending, answered or timed_out"))
        })
        .transpose()?;
    let limit = q.limit.unwrap_or(50).clamp(1, 1000);
    let items = st.store.client_rpcs(app, device, status, limit).await?;
    Ok(HttpResponse::Ok().json(serde_json::json!({ "items": items })))
}

async fn get(
    st: web::Data<ApiState>,
    req: HttpRequest,
    path: web::Path<(String, String, String)>,
) -> Result<HttpResponse, ApiError> {
    let (app, device) = st
        .authorize_device(&req, &path.0, &path.1, ApiScope::Read)
        .await?;
    let id = rpc_id(&path.2)?;
    match st.store.client_rpc(app, device, id).await? {
        Some(rpc) => Ok(HttpResponse::Ok().json(rpc)),
        None => Err(ApiError::not_found(format!("client-side RPC {id}"))),
    }
}

/// Answers a pending request with the JSON body: ends it (one conditional write, so a
/// timeout at the same instant leaves one of the two), then hands the answer to the
/// dispatcher, after the device's earlier events on its key.
async fn answer(
    st: web::Data<ApiState>,
    req: HttpRequest,
    path: web::Path<(String, String, String)>,
    body: web::Json<serde_json::Value>,
) -> Result<HttpResponse, ApiError> {
    let (app, device) = st
        .authorize_device(&req, &path.0, &path.1, ApiScope::Write)
        .await?;
    let id = rpc_id(&path.2)?;
    let data = body.into_inner();
    let ended = st
        .store
        .end_client_rpc(
            app.clone(),
            device.clone(),
            id,
            ClientRpcStatus::Answered,
            Some(data.clone()),
            now_ms(),
        )
        .await?;
    let Some(rpc) = ended else {
        return match st.store.client_rpc(app, device, id).await? {
            Some(rpc) => Err(ApiError::conflict(format!(
                "client-side RPC {id} is {}, not pending",
                rpc.status.as_str()
            ))),
            None => Err(ApiError::not_found(format!("client-side RPC {id}"))),
        };
    };
    let body = Body::RpcAnswer {
        request: rpc.id,
        request_id: rpc.request_id.clone(),
        data,
    };
    let env = envelope(new_id(), 0, &app, &device, None, Dialect::ThingsBoard, body);
    produce_all(&st, &st.names.control, &[env]).await?;
    Ok(HttpResponse::Ok().json(rpc))
}
