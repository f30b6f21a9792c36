//! Device claiming, as ThingsBoard does it: the device opens a claiming window with a
//! secret (`v1/devices/me/claim`, `v1/gateway/claim`; the dispatcher stores it); within
//! it, an application claims the device by presenting the secret, which records an owner.

use actix_web::{HttpRequest, HttpResponse, web};
use fluxgate_model::{DeviceId, DeviceName, TenantId};
use fluxgate_store::{ApiScope, ClaimOutcome, DeviceClaim, claim_device};
use serde::Deserialize;

use crate::auth::Caller;
use crate::device::{AppQuery, rpc_app};
use crate::error::ApiError;
use crate::{ApiState, now_ms};

pub(crate) fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route(
        "/applications/{app}/devices/{id}/claim",
        web::post().to(post_claim),
    )
    .route(
        "/applications/{app}/devices/{id}/claim",
        web::get().to(get_claim),
    )
    .route(
        "/applications/{app}/devices/{id}/claim",
        web::delete().to(delete_claim),
    )
    .route(
        "/api/customer/device/{deviceName}/claim",
        web::post().to(tb_claim),
    )
    .route(
        "/api/customer/device/{deviceName}/claim",
        web::delete().to(tb_unclaim),
    );
}

/// A claim: the secret the device set (ThingsBoard's `secretKey`; empty when the device
/// set none) and, optionally, who the owner is (the caller's token name by default).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct ClaimIn {
    #[serde(default)]
    secret_key: String,
    owner: Option<String>,
}

fn claim_json(c: &DeviceClaim, response: &str) -> serde_json::Value {
    serde_json::json!({
        "deviceId": c.device,
        "owner": c.owner,
        "claimedMs": c.claimed_ms,
        // ThingsBoard's answer: SUCCESS, or CLAIMED when the caller already owns it.
        "response": response,
    })
}

async fn claim(
    st: &ApiState,
    caller: &Caller,
    app: TenantId,
    device: DeviceId,
    body: ClaimIn,
) -> Result<HttpResponse, ApiError> {
    st.existing_device(&app, &device).await?;
    let owner = match body.owner {
        Some(o) if o.trim().is_empty() || o.len() > 256 => {
            return Err(ApiError::invalid("owner", "1 to 256 bytes, not blank"));
        }
        Some(o) => o,
        None => caller.who(),
    };
    let outcome = claim_device(
        st.store.as_ref(),
        app,
        device.clone(),
        &body.secret_key,
        owner,
        now_ms(),
    )
    .await?;
    st.metrics
        .claims
        .with_label_values(&[outcome_label(&outcome)])
        .inc();
    match outcome {
        ClaimOutcome::Claimed(c) => Ok(HttpResponse::Ok().json(claim_json(&c, "SUCCESS"))),
        ClaimOutcome::AlreadyYours(c) => Ok(HttpResponse::Ok().json(claim_json(&c, "CLAIMED"))),
        ClaimOutcome::Owned => Err(ApiError::refused(
            409,
            "claimed_by_another",
            format!("device {device} is claimed by another owner"),
        )),
        ClaimOutcome::NoWindow => Err(ApiError::refused(
            409,
            "claim_window_closed",
            format!(
                "device {device} has no open claiming window: it must send a claim message first, and claim within its duration"
            ),
        )),
        ClaimOutcome::WrongSecret => Err(ApiError::refused(
            403,
            "claim_secret_mismatch",
            "the secret key is not the one the device set",
        )),
    }
}

fn outcome_label(o: &ClaimOutcome) -> &'static str {
    match o {
        ClaimOutcome::Claimed(_) => "claimed",
        ClaimOutcome::AlreadyYours(_) => "already_yours",
        ClaimOutcome::Owned => "owned",
        ClaimOutcome::NoWindow => "no_window",
        ClaimOutcome::WrongSecret => "wrong_secret",
    }
}

async fn unclaim(st: &ApiState, app: TenantId, device: DeviceId) -> Result<HttpResponse, ApiError> {
    st.existing_device(&app, &device).await?;
    if st.store.clear_claim(app, device.clone()).await? {
        Ok(HttpResponse::Ok().json(serde_json::json!({ "deviceId": device, "claimed": false })))
    } else {
        Err(ApiError::not_found(format!("a claim of device {device}")))
    }
}

async fn post_claim(
    st: web::Data<ApiState>,
    req: HttpRequest,
    path: web::Path<(String, String)>,
    body: web::Json<ClaimIn>,
) -> Result<HttpResponse, ApiError> {
    let caller = st.caller(&req).await?;
    let app = crate::app_id(&path.0)?;
    caller.require(&app, ApiScope::Write)?;
    let device = crate::device_id(&path.1)?;
    claim(&st, &caller, app, device, body.into_inner()).await
}

async fn get_claim(
    st: web::Data<ApiState>,
    req: HttpRequest,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, ApiError> {
    let (app, device) = st
        .authorize_device(&req, &path.0, &path.1, ApiScope::Read)
        .await?;
    st.existing_device(&app, &device).await?;
    let c = st.store.device_claim(app, device.clone()).await?;
    let now = now_ms();
    let window = c.as_ref().map_or(0, |c| c.window_until_ms);
    Ok(HttpResponse::Ok().json(serde_json::json!({
        "deviceId": device,
        "claimed": c.as_ref().is_some_and(|c| c.owner.is_some()),
        "owner": c.as_ref().and_then(|c| c.owner.clone()),
        "claimedMs": c.as_ref().and_then(|c| c.claimed_ms),
        "windowOpen": window > now,
        "windowUntilMs": (window > now).then_some(window),
    })))
}

async fn delete_claim(
    st: web::Data<ApiState>,
    req: HttpRequest,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, ApiError> {
    let (app, device) = st
        .authorize_device(&req, &path.0, &path.1, ApiScope::Write)
        .await?;
    unclaim(&st, app, device).await
}

/// The application of a ThingsBoard path (as for its RPC routes), and the device its
/// name names.
async fn tb_device(
    st: &ApiState,
    req: &HttpRequest,
    q: &AppQuery,
    name: &str,
) -> Result<(TenantId, DeviceId), ApiError> {
    let app = rpc_app(st, req, q).await?;
    let name = DeviceName::new(name).map_err(|e| ApiError::invalid("deviceName", e.to_string()))?;
    let device = st
        .store
        .device_named(app.clone(), name.clone())
        .await?
        .ok_or_else(|| ApiError::not_found(format!("device named {name}")))?;
    Ok((app, device.id))
}

async fn tb_claim(
    st: web::Data<ApiState>,
    req: HttpRequest,
    path: web::Path<String>,
    q: web::Query<AppQuery>,
    body: web::Json<ClaimIn>,
) -> Result<HttpResponse, ApiError> {
    let caller = st.caller(&req).await?;
    let (app, device) = tb_device(&st, &req, &q, &path).await?;
    claim(&st, &caller, app, device, body.into_inner()).await
}

async fn tb_unclaim(
    st: web::Data<ApiState>,
    req: HttpRequest,
    path: web::Path<String>,
    q: web::Query<AppQuery>,
) -> Result<HttpResponse, ApiError> {
    let (app, device) = tb_device(&st, &req, &q, &path).await?;
    unclaim(&st, app, device).await
}
