//! Device-facing REST, Losant- and ThingsBoard-compatible: device tokens, state ingest,
//! commands, RPC and shared attributes.

use std::time::Duration;

use actix_web::{HttpRequest, HttpResponse, web};
use fluxgate_bus::OutRecord;
use fluxgate_model::{
    Body, Channel, Command, DeviceId, DeviceRef, Dialect, ENVELOPE_VERSION, Envelope, MessageId,
    TenantId, Values,
};
use fluxgate_store::{ApiScope, AttributeScope, CommandStatus, KeyRefusal, check_access_key};
use serde::Deserialize;

use crate::auth::{Caller, device_may_post};
use crate::error::ApiError;
use crate::{ApiState, app_id, device_id, now_ms};

pub(crate) fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/auth/device", web::post().to(auth_device))
        .route(
            "/applications/{app}/devices/{id}/state",
            web::post().to(post_state),
        )
        .route(
            "/applications/{app}/devices/{id}/command",
            web::post().to(post_command),
        )
        .route(
            "/applications/{app}/devices/{id}/attributes/shared",
            web::post().to(post_shared_attributes),
        )
        .route("/api/rpc/oneway/{id}", web::post().to(rpc_one_way))
        .route("/api/rpc/twoway/{id}", web::post().to(rpc_two_way))
        .route(
            "/api/plugins/telemetry/DEVICE/{id}/SHARED_SCOPE",
            web::post().to(tb_shared_attributes),
        );
}

pub(crate) fn new_id() -> MessageId {
    use ring::rand::SecureRandom;
    let mut b = [0u8; 16];
    // Ids need uniqueness, not secrecy; the clock part keeps them unique if this fails.
    let _ = ring::rand::SystemRandom::new().fill(&mut b);
    MessageId::from_parts(now_ms().max(0) as u64, u128::from_le_bytes(b))
}

pub(crate) fn envelope(
    id: MessageId,
    part: u32,
    tenant: &TenantId,
    device: &DeviceId,
    via: Option<DeviceId>,
    dialect: Dialect,
    body: Body,
) -> Envelope {
    Envelope {
        v: ENVELOPE_VERSION,
        id,
        part,
        tenant: tenant.clone(),
        device: DeviceRef::Id(device.clone()),
        via,
        dialect,
        channel: Channel::Http,
        received_ms: now_ms(),
        body,
    }
}

/// `POST /auth/device` body (Losant's field names).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct AuthIn {
    device_id: String,
    key: String,
    secret: String,
}

/// Losant's device authentication. A refusal is answered later each time the same device id
/// and key fail again from the same address (as a failed MQTT CONNECT is), so guessing a
/// secret over REST is as slow as over MQTT.
async fn auth_device(
    st: web::Data<ApiState>,
    req: HttpRequest,
    body: web::Json<AuthIn>,
) -> Result<HttpResponse, ApiError> {
    let body = body.into_inner();
    let checked =
        check_access_key(st.store.as_ref(), &body.key, &body.secret, &body.device_id).await;
    let (key, device) = match checked {
        Ok(found) => found,
        Err(refusal) => {
            let e = match refusal {
                KeyRefusal::NotOpened => ApiError::forbidden(refusal.to_string()),
                KeyRefusal::Deactivated => ApiError::unauthorized(refusal.to_string()),
                KeyRefusal::Store(e) => return Err(e.into()),
                // Which part was wrong is not told.
                KeyRefusal::BadCredentials
                | KeyRefusal::NotADeviceId
                | KeyRefusal::NoSuchDevice => {
                    ApiError::unauthorized(KeyRefusal::BadCredentials.to_string())
                }
            };
            if let Some(ip) = req.peer_addr().map(|a| a.ip()) {
                let wait = st
                    .failures
                    .failed(ip, &body.device_id, Some(&body.key))
                    .await;
                if !wait.is_zero() {
                    tokio::time::sleep(wait).await;
                }
            }
            return Err(e);
        }
    };
    let id = device.id.clone();
    let (token, expires_ms) = st.tokens.issue(&key.tenant, &id, &key.key, now_ms());
    Ok(HttpResponse::Ok().json(serde_json::json!({
        "applicationId": key.tenant,
        "deviceId": id,
        "deviceClass": device.kind,
        "token": token,
        "expiresMs": expires_ms,
    })))
}

/// Produces envelopes and waits for the bus to acknowledge every one.
pub(crate) async fn produce_all(
    st: &ApiState,
    topic: &str,
    envs: &[Envelope],
) -> Result<(), ApiError> {
    let mut acks = Vec::with_capacity(envs.len());
    for e in envs {
        // The request's trace goes on with the record (to the dispatcher, the validator).
        let mut rec = OutRecord::of(topic, &e);
        fluxgate_observability::telemetry::inject(&mut rec.headers);
        acks.push(st.producer.send(rec).await?);
    }
    for a in acks {
        a.await?;
    }
    Ok(())
}

async fn post_state(
    st: web::Data<ApiState>,
    req: HttpRequest,
    path: web::Path<(String, String)>,
    body: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    let (app, target) = (app_id(&path.0)?, device_id(&path.1)?);
    let via = match st.caller(&req).await? {
        Caller::Device { tenant, device } => {
            if tenant != app {
                return Err(ApiError::forbidden(
                    "this token belongs to another application",
                ));
            }
            if !device_may_post(st.store.as_ref(), &app, &device, &target).await? {
                return Err(ApiError::forbidden(format!(
                    "device {device} may not post state for {target}"
                )));
            }
            (device != target).then_some(device)
        }
        other => {
            other.require(&app, ApiScope::Write)?;
            None
        }
    };
    let states = fluxgate_model::losant::parse_states(&body, now_ms(), &st.limits)
        .map_err(|r| ApiError::from_reject(&r))?;
    let id = new_id();
    let envs: Vec<Envelope> = states
        .into_iter()
        .enumerate()
        .map(|(i, s)| {
            envelope(
                id,
                i as u32,
                &app,
                &target,
                via.clone(),
                Dialect::Losant,
                Body::Telemetry {
                    samples: vec![s.sample],
                    flow_version: s.flow_version,
                },
            )
        })
        .collect();
    produce_all(&st, &st.names.raw, &envs).await?;
    Ok(HttpResponse::Ok().json(serde_json::json!({ "success": true })))
}

/// A command time: epoch ms, an ISO-8601 string, or `{"$date": "<ISO-8601>"}`.
fn command_time(v: &serde_json::Value) -> Result<i64, ApiError> {
    let bad = || {
        ApiError::invalid(
            "time",
            "epoch milliseconds, ISO-8601, or {\"$date\": ISO-8601}",
        )
    };
    match v {
        serde_json::Value::Number(n) => n.as_i64().ok_or_else(bad),
        serde_json::Value::String(s) => {
            fluxgate_model::timestamp::parse_iso8601_ms(s).ok_or_else(bad)
        }
        serde_json::Value::Object(o) => o
            .get("$date")
            .and_then(|d| d.as_str())
            .and_then(fluxgate_model::timestamp::parse_iso8601_ms)
            .ok_or_else(bad),
        _ => Err(bad()),
    }
}

/// `POST .../command` body (Losant).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CommandIn {
    name: String,
    #[serde(default)]
    payload: serde_json::Value,
    time: Option<serde_json::Value>,
}

async fn send_command(
    st: &ApiState,
    app: &TenantId,
    device: &DeviceId,
    id: MessageId,
    command: Command,
) -> Result<MessageId, ApiError> {
    // The dispatcher, the front and the device must all read the payload back.
    st.limits
        .check_json(&command.payload)
        .map_err(|r| ApiError::from_reject(&r))?;
    st.existing_device(app, device).await?;
    // The dispatcher renders it in the dialect the device is connected with.
    let env = envelope(
        id,
        0,
        app,
        device,
        None,
        Dialect::Losant,
        Body::Command(command),
    );
    produce_all(st, &st.names.control, &[env]).await?;
    Ok(id)
}

async fn post_command(
    st: web::Data<ApiState>,
    req: HttpRequest,
    path: web::Path<(String, String)>,
    body: web::Json<CommandIn>,
) -> Result<HttpResponse, ApiError> {
    let (app, device) = st
        .authorize_device(&req, &path.0, &path.1, ApiScope::Write)
        .await?;
    let body = body.into_inner();
    if body.name.is_empty() {
        return Err(ApiError::invalid("name", "a command needs a name"));
    }
    let time_ms = body.time.as_ref().map(command_time).transpose()?;
    let id = send_command(
        &st,
        &app,
        &device,
        new_id(),
        Command {
            name: body.name,
            payload: body.payload,
            time_ms,
            two_way: false,
            persistent: false,
            expires_ms: None,
        },
    )
    .await?;
    Ok(HttpResponse::Ok().json(serde_json::json!({ "success": true, "commandId": id })))
}

/// ThingsBoard RPC body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RpcIn {
    method: String,
    #[serde(default)]
    params: serde_json::Value,
    /// Milliseconds to wait for the reply (two-way).
    timeout: Option<u64>,
    /// Kept until delivered (or expired) when the device is offline.
    #[serde(default)]
    persistent: bool,
    /// Epoch ms after which a persistent RPC is dropped.
    expiration_time: Option<i64>,
    /// Accepted from ThingsBoard clients; not used.
    #[serde(default)]
    #[allow(dead_code)]
    retries: Option<u32>,
    /// Accepted from ThingsBoard clients; not used.
    #[serde(default)]
    #[allow(dead_code)]
    additional_info: Option<serde_json::Value>,
}

/// `?application=` for the admin token (ThingsBoard's RPC paths carry no application).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct AppQuery {
    application: Option<String>,
}

pub(crate) async fn rpc_app(
    st: &ApiState,
    req: &HttpRequest,
    q: &AppQuery,
) -> Result<TenantId, ApiError> {
    let caller = st.caller(req).await?;
    let app = match (&caller, &q.application) {
        (_, Some(a)) => app_id(a)?,
        (Caller::App { tenant, .. }, None) => tenant.clone(),
        _ => {
            return Err(ApiError::invalid(
                "application",
                "the admin token must name the application (?application=)",
            ));
        }
    };
    caller.require(&app, ApiScope::Write)?;
    Ok(app)
}

async fn rpc(
    st: &ApiState,
    req: &HttpRequest,
    q: &AppQuery,
    id: &str,
    body: RpcIn,
    two_way: bool,
) -> Result<HttpResponse, ApiError> {
    let app = rpc_app(st, req, q).await?;
    let device = device_id(id)?;
    let timeout_ms = body
        .timeout
        .unwrap_or(st.cfg.rpc_timeout_ms)
        .min(st.cfg.rpc_timeout_max_ms);
    let expires_ms = if body.persistent {
        Some(body.expiration_time.unwrap_or(now_ms() + 86_400_000))
    } else if two_way {
        Some(now_ms() + timeout_ms as i64)
    } else {
        None
    };
    let id = new_id();
    // Registered before the command is sent, so its end cannot be announced in between.
    let waiter = st.outcomes.wait_for(id);
    send_command(
        st,
        &app,
        &device,
        id,
        Command {
            name: body.method,
            payload: body.params,
            time_ms: None,
            two_way,
            persistent: body.persistent,
            expires_ms,
        },
    )
    .await?;
    if !two_way || body.persistent {
        return Ok(HttpResponse::Ok().json(serde_json::json!({ "rpcId": id })));
    }
    // Woken by the announcement of its end, then answered from the store; the store is
    // read every second anyway (an announcement can be missed while the API's consumer
    // joins).
    let deadline = tokio::time::Instant::now() + Duration::from_millis(timeout_ms);
    loop {
        if let Some(c) = st.store.command(id).await? {
            match c.status {
                CommandStatus::Replied => {
                    return Ok(HttpResponse::Ok().json(c.reply.unwrap_or_default()));
                }
                CommandStatus::Failed | CommandStatus::TimedOut | CommandStatus::Expired => {
                    let why = st
                        .store
                        .command_history(id)
                        .await?
                        .last()
                        .and_then(|h| h.detail.clone())
                        .unwrap_or_else(|| c.status.as_str().to_owned());
                    return Err(ApiError::timeout(format!("no reply to RPC {id}: {why}")));
                }
                _ => {}
            }
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(ApiError::timeout(format!(
                "no reply to RPC {id} within {timeout_ms} ms"
            )));
        }
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        waiter.woken(left.min(Duration::from_secs(1))).await;
    }
}

/// ThingsBoard's one-way RPC: answered with the request's id once it is on the bus.
async fn rpc_one_way(
    st: web::Data<ApiState>,
    req: HttpRequest,
    id: web::Path<String>,
    q: web::Query<AppQuery>,
    body: web::Json<RpcIn>,
) -> Result<HttpResponse, ApiError> {
    rpc(&st, &req, &q, &id, body.into_inner(), false).await
}

/// ThingsBoard's two-way RPC: answered with the device's reply, or 504 at its timeout
/// (a persistent one is answered with its id at once).
async fn rpc_two_way(
    st: web::Data<ApiState>,
    req: HttpRequest,
    id: web::Path<String>,
    q: web::Query<AppQuery>,
    body: web::Json<RpcIn>,
) -> Result<HttpResponse, ApiError> {
    rpc(&st, &req, &q, &id, body.into_inner(), true).await
}

async fn shared_attributes(
    st: &ApiState,
    app: &TenantId,
    device: &DeviceId,
    body: serde_json::Value,
) -> Result<HttpResponse, ApiError> {
    let serde_json::Value::Object(map) = body else {
        return Err(ApiError::bad_body("shared attributes are a JSON object"));
    };
    st.existing_device(app, device).await?;
    let mut values = Values::default();
    for (k, v) in map {
        st.limits
            .check_key(&k)
            .map_err(|r| ApiError::invalid(k.clone(), r.message()))?;
        values.insert(k, fluxgate_model::Value::from_json(v));
    }
    st.limits
        .check_values(&values)
        .map_err(|r| ApiError::from_reject(&r))?;
    st.store
        .put_attributes(
            app.clone(),
            device.clone(),
            AttributeScope::Shared,
            values.clone(),
            now_ms(),
        )
        .await?;
    // The dispatcher pushes the change to the device (or its gateway) if it is online;
    // an offline one gets it when it subscribes to its attribute updates again.
    let env = envelope(
        new_id(),
        0,
        app,
        device,
        None,
        Dialect::ThingsBoard,
        Body::Attributes { values },
    );
    produce_all(st, &st.names.control, &[env]).await?;
    Ok(HttpResponse::Ok().json(serde_json::json!({ "success": true })))
}

async fn post_shared_attributes(
    st: web::Data<ApiState>,
    req: HttpRequest,
    path: web::Path<(String, String)>,
    body: web::Json<serde_json::Value>,
) -> Result<HttpResponse, ApiError> {
    let (app, device) = st
        .authorize_device(&req, &path.0, &path.1, ApiScope::Write)
        .await?;
    shared_attributes(&st, &app, &device, body.into_inner()).await
}

async fn tb_shared_attributes(
    st: web::Data<ApiState>,
    req: HttpRequest,
    path: web::Path<String>,
    q: web::Query<AppQuery>,
    body: web::Json<serde_json::Value>,
) -> Result<HttpResponse, ApiError> {
    let app = rpc_app(&st, &req, &q).await?;
    let device = device_id(&path)?;
    shared_attributes(&st, &app, &device, body.into_inner()).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_times_in_every_losant_form() {
        assert_eq!(
            command_time(&serde_json::json!(1_700_000_000_000i64)).unwrap(),
            1_700_000_000_000
        );
        assert_eq!(
            command_time(&serde_json::json!("2023-11-14T22:13:20Z")).unwrap(),
            1_700_000_000_000
        );
        assert_eq!(
            command_time(&serde_json::json!({"$date": "2023-11-14T22:13:20.000Z"})).unwrap(),
            1_700_000_000_000
        );
        assert_eq!(
            command_time(&serde_json::json!(true))
                .unwrap_err()
                .field
                .as_deref(),
            Some("time")
        );
    }
}
