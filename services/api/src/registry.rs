//! Registry endpoints: applications, API tokens, devices, attribute definitions, Losant
//! access keys and ThingsBoard device tokens. Secrets are returned once, at creation.

use actix_web::{HttpRequest, HttpResponse, web};
use fluxgate_model::{DeviceId, RegistryChange};
use fluxgate_store::{
    AccessKey, ApiScope, ApiToken, Application, AttributeDef, Device, DeviceKind, DeviceToken,
    KeyScope, PeripheralPolicy, hash_secret,
};
use serde::{Deserialize, Serialize};

use crate::auth::random_token;
use crate::error::ApiError;
use crate::{ApiState, now_ms};

pub(crate) fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/applications", web::post().to(create_application))
        .route("/applications/{app}", web::get().to(get_application))
        .route(
            "/applications/{app}/tokens",
            web::post().to(create_api_token),
        )
        .route(
            "/applications/{app}/tokens/{token}",
            web::delete().to(delete_api_token),
        )
        .route("/applications/{app}/devices", web::post().to(create_device))
        .route("/applications/{app}/devices", web::get().to(list_devices))
        .route(
            "/applications/{app}/devices/{id}",
            web::get().to(get_device),
        )
        .route(
            "/applications/{app}/devices/{id}",
            web::put().to(put_device),
        )
        .route(
            "/applications/{app}/devices/{id}",
            web::delete().to(delete_device),
        )
        .route(
            "/applications/{app}/devices/{id}/attributes",
            web::put().to(put_attribute_defs),
        )
        .route(
            "/applications/{app}/devices/{id}/attributes",
            web::get().to(get_attribute_defs),
        )
        .route(
            "/applications/{app}/devices/{id}/tokens",
            web::post().to(create_device_token),
        )
        .route("/applications/{app}/keys", web::post().to(create_key))
        .route("/applications/{app}/keys/{key}", web::patch().to(patch_key))
        .route("/applications/{app}/keys/{key}", web::get().to(get_key));
}

/// `POST /applications` body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ApplicationIn {
    id: String,
    name: Option<String>,
    ttl_secs: Option<u32>,
}

async fn create_application(
    st: web::Data<ApiState>,
    req: HttpRequest,
    body: web::Json<ApplicationIn>,
) -> Result<HttpResponse, ApiError> {
    st.caller(&req).await?.require_admin()?;
    let body = body.into_inner();
    let id = fluxgate_model::TenantId::new(body.id.as_str())
        .map_err(|e| ApiError::invalid("id", e.to_string()))?;
    if st.store.application(id.clone()).await?.is_some() {
        return Err(ApiError::conflict(format!("application {id} exists")));
    }
    let app = Application {
        name: body.name.unwrap_or_else(|| body.id.clone()),
        id,
        ttl_secs: body.ttl_secs,
        created_ms: now_ms(),
    };
    st.store.put_application(app.clone()).await?;
    Ok(HttpResponse::Created().json(app))
}

async fn get_application(
    st: web::Data<ApiState>,
    req: HttpRequest,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let app = st.authorize(&req, &path, ApiScope::Read).await?;
    let found = st
        .store
        .application(app.clone())
        .await?
        .ok_or_else(|| ApiError::not_found(format!("application {app}")))?;
    Ok(HttpResponse::Ok().json(found))
}

/// `POST /applications/{app}/tokens` body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenIn {
    name: String,
    scope: ApiScope,
}

/// A created secret: shown once.
#[derive(Debug, Serialize)]
struct Created<T: Serialize> {
    #[serde(flatten)]
    item: T,
    /// The secret itself; it is not stored and cannot be shown again.
    secret: String,
}

async fn create_api_token(
    st: web::Data<ApiState>,
    req: HttpRequest,
    path: web::Path<String>,
    body: web::Json<TokenIn>,
) -> Result<HttpResponse, ApiError> {
    let app = st.authorize(&req, &path, ApiScope::Admin).await?;
    existing_app(&st, &app).await?;
    let secret = format!("fgt_{}", random_token(32)?);
    let body = body.into_inner();
    let token = ApiToken {
        token_hash: hash_secret(&secret),
        tenant: app,
        scope: body.scope,
        name: body.name,
        created_ms: now_ms(),
    };
    st.store.put_api_token(token.clone()).await?;
    Ok(HttpResponse::Created().json(Created {
        item: token,
        secret,
    }))
}

async fn delete_api_token(
    st: web::Data<ApiState>,
    req: HttpRequest,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, ApiError> {
    let app = st.authorize(&req, &path.0, ApiScope::Admin).await?;
    let hash = &path.1;
    match st.store.api_token(hash.clone()).await? {
        Some(t) if t.tenant == app => {
            st.store.delete_api_token(hash.clone()).await?;
            Ok(HttpResponse::NoContent().finish())
        }
        _ => Err(ApiError::not_found("token")),
    }
}

async fn existing_app(st: &ApiState, app: &fluxgate_model::TenantId) -> Result<(), ApiError> {
    match st.store.application(app.clone()).await? {
        Some(_) => Ok(()),
        None => Err(ApiError::not_found(format!("application {app}"))),
    }
}

/// A device as the API takes it.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DeviceIn {
    /// Id (`POST`: generated when absent; `PUT`: from the path).
    id: Option<String>,
    name: Option<String>,
    #[serde(default = "standalone")]
    kind: DeviceKind,
    peripheral_policy: Option<PeripheralPolicy>,
    #[serde(default)]
    tags: Vec<String>,
    profile: Option<String>,
    /// Attribute definitions (Losant), replacing the current ones when given.
    attributes: Option<Vec<AttributeDef>>,
}

fn standalone() -> DeviceKind {
    DeviceKind::Standalone
}

async fn save_device(
    st: &ApiState,
    app: fluxgate_model::TenantId,
    id: DeviceId,
    body: DeviceIn,
    created_ms: i64,
) -> Result<Device, ApiError> {
    if body.kind == DeviceKind::Peripheral && body.peripheral_policy.is_none() {
        return Err(ApiError::invalid(
            "peripheral_policy",
            "a peripheral needs {\"policy\":\"any_gateway\"} or {\"policy\":\"specific_gateway\",\"gateway\":\"<id>\"}",
        ));
    }
    if body.kind != DeviceKind::Peripheral && body.peripheral_policy.is_some() {
        return Err(ApiError::invalid(
            "peripheral_policy",
            "only peripherals have a peripheral policy",
        ));
    }
    let device = Device {
        tenant: app.clone(),
        name: body.name.unwrap_or_else(|| id.to_string()),
        id: id.clone(),
        kind: body.kind,
        peripheral_policy: body.peripheral_policy,
        tags: body.tags,
        profile: body.profile,
        created_ms,
        updated_ms: now_ms(),
    };
    st.store.put_device(device.clone()).await?;
    if let Some(defs) = body.attributes {
        st.store
            .put_attribute_defs(app.clone(), id.clone(), defs)
            .await?;
        st.announce(RegistryChange::AttributeDefs {
            tenant: app.clone(),
            device: id.clone(),
        })
        .await;
    }
    st.announce(RegistryChange::Device {
        tenant: app,
        device: id,
    })
    .await;
    Ok(device)
}

async fn create_device(
    st: web::Data<ApiState>,
    req: HttpRequest,
    path: web::Path<String>,
    body: web::Json<DeviceIn>,
) -> Result<HttpResponse, ApiError> {
    let app = st.authorize(&req, &path, ApiScope::Admin).await?;
    existing_app(&st, &app).await?;
    let body = body.into_inner();
    let id = match &body.id {
        Some(id) => {
            DeviceId::new(id.as_str()).map_err(|e| ApiError::invalid("id", e.to_string()))?
        }
        None => DeviceId::new(random_token(12)?.replace(['-', '_'], "x"))
            .map_err(|e| ApiError::unavailable(e.to_string()))?,
    };
    if st.store.device(app.clone(), id.clone()).await?.is_some() {
        return Err(ApiError::conflict(format!("device {id} exists")));
    }
    let device = save_device(&st, app, id, body, now_ms()).await?;
    Ok(HttpResponse::Created().json(device))
}

async fn put_device(
    st: web::Data<ApiState>,
    req: HttpRequest,
    path: web::Path<(String, String)>,
    body: web::Json<DeviceIn>,
) -> Result<HttpResponse, ApiError> {
    let (app, id) = st
        .authorize_device(&req, &path.0, &path.1, ApiScope::Admin)
        .await?;
    existing_app(&st, &app).await?;
    let body = body.into_inner();
    if body.id.as_deref().is_some_and(|b| b != id.as_str()) {
        return Err(ApiError::invalid("id", "differs from the id in the path"));
    }
    let created = st
        .store
        .device(app.clone(), id.clone())
        .await?
        .map_or_else(now_ms, |d| d.created_ms);
    let device = save_device(&st, app, id, body, created).await?;
    Ok(HttpResponse::Ok().json(device))
}

async fn get_device(
    st: web::Data<ApiState>,
    req: HttpRequest,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, ApiError> {
    let (app, id) = st
        .authorize_device(&req, &path.0, &path.1, ApiScope::Read)
        .await?;
    Ok(HttpResponse::Ok().json(st.existing_device(&app, &id).await?))
}

/// `GET /applications/{app}/devices` query.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ListIn {
    after: Option<String>,
    limit: Option<u32>,
}

async fn list_devices(
    st: web::Data<ApiState>,
    req: HttpRequest,
    path: web::Path<String>,
    q: web::Query<ListIn>,
) -> Result<HttpResponse, ApiError> {
    let app = st.authorize(&req, &path, ApiScope::Read).await?;
    let after = q
        .after
        .as_deref()
        .map(|a| DeviceId::new(a).map_err(|e| ApiError::invalid("after", e.to_string())))
        .transpose()?;
    let limit = q.limit.unwrap_or(100).clamp(1, 1000);
    let devices = st.store.devices(app, after, limit).await?;
    Ok(HttpResponse::Ok().json(serde_json::json!({
        "items": devices,
        "next": (devices.len() == limit as usize).then(|| devices.last().map(|d| d.id.clone())).flatten(),
    })))
}

async fn delete_device(
    st: web::Data<ApiState>,
    req: HttpRequest,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, ApiError> {
    let (app, id) = st
        .authorize_device(&req, &path.0, &path.1, ApiScope::Admin)
        .await?;
    if !st.store.delete_device(app.clone(), id.clone()).await? {
        return Err(ApiError::not_found(format!("device {id}")));
    }
    st.announce(RegistryChange::Device {
        tenant: app,
        device: id,
    })
    .await;
    Ok(HttpResponse::NoContent().finish())
}

async fn put_attribute_defs(
    st: web::Data<ApiState>,
    req: HttpRequest,
    path: web::Path<(String, String)>,
    body: web::Json<Vec<AttributeDef>>,
) -> Result<HttpResponse, ApiError> {
    let (app, id) = st
        .authorize_device(&req, &path.0, &path.1, ApiScope::Admin)
        .await?;
    st.existing_device(&app, &id).await?;
    let defs = body.into_inner();
    if defs.len() > 256 {
        return Err(ApiError::invalid(
            "attributes",
            "at most 256 attributes per device",
        ));
    }
    st.store
        .put_attribute_defs(app.clone(), id.clone(), defs.clone())
        .await?;
    st.announce(RegistryChange::AttributeDefs {
        tenant: app,
        device: id,
    })
    .await;
    Ok(HttpResponse::Ok().json(defs))
}

async fn get_attribute_defs(
    st: web::Data<ApiState>,
    req: HttpRequest,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, ApiError> {
    let (app, id) = st
        .authorize_device(&req, &path.0, &path.1, ApiScope::Read)
        .await?;
    Ok(HttpResponse::Ok().json(st.store.attribute_defs(app, id).await?))
}

async fn create_device_token(
    st: web::Data<ApiState>,
    req: HttpRequest,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, ApiError> {
    let (app, id) = st
        .authorize_device(&req, &path.0, &path.1, ApiScope::Admin)
        .await?;
    st.existing_device(&app, &id).await?;
    let secret = random_token(15)?;
    let token = DeviceToken {
        token_hash: hash_secret(&secret),
        tenant: app,
        device: id,
    };
    st.store.put_device_token(token.clone()).await?;
    Ok(HttpResponse::Created().json(Created {
        item: token,
        secret,
    }))
}

/// `POST /applications/{app}/keys` body: opens all devices unless `devices` or `tags` is
/// given.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyIn {
    devices: Option<Vec<String>>,
    tags: Option<Vec<String>>,
    #[serde(default)]
    custom_topics: bool,
}

/// An access key as the API shows it (never the secret's hash).
#[derive(Debug, Serialize)]
struct KeyOut {
    key: String,
    application: fluxgate_model::TenantId,
    scope: KeyScope,
    custom_topics: bool,
    active: bool,
    created_ms: i64,
}

impl From<AccessKey> for KeyOut {
    fn from(k: AccessKey) -> Self {
        KeyOut {
            key: k.key,
            application: k.tenant,
            scope: k.scope,
            custom_topics: k.custom_topics,
            active: k.active,
            created_ms: k.created_ms,
        }
    }
}

async fn create_key(
    st: web::Data<ApiState>,
    req: HttpRequest,
    path: web::Path<String>,
    body: web::Json<KeyIn>,
) -> Result<HttpResponse, ApiError> {
    let app = st.authorize(&req, &path, ApiScope::Admin).await?;
    existing_app(&st, &app).await?;
    let body = body.into_inner();
    let scope = match (body.devices, body.tags) {
        (Some(_), Some(_)) => {
            return Err(ApiError::invalid("tags", "give devices or tags, not both"));
        }
        (Some(ds), None) => KeyScope::Devices(
            ds.iter()
                .map(|d| {
                    DeviceId::new(d.as_str())
                        .map_err(|e| ApiError::invalid("devices", e.to_string()))
                })
                .collect::<Result<_, _>>()?,
        ),
        (None, Some(tags)) => KeyScope::Tags(tags),
        (None, None) => KeyScope::AllDevices,
    };
    let secret = random_token(24)?;
    let key = AccessKey {
        key: format!("k{}", random_token(12)?.replace(['-', '_'], "x")),
        tenant: app,
        secret_hash: hash_secret(&secret),
        scope,
        custom_topics: body.custom_topics,
        active: true,
        created_ms: now_ms(),
    };
    st.store.put_access_key(key.clone()).await?;
    Ok(HttpResponse::Created().json(Created {
        item: KeyOut::from(key),
        secret,
    }))
}

async fn owned_key(
    st: &ApiState,
    app: &fluxgate_model::TenantId,
    key: &str,
) -> Result<AccessKey, ApiError> {
    match st.store.access_key(key.to_owned()).await? {
        Some(k) if &k.tenant == app => Ok(k),
        _ => Err(ApiError::not_found(format!("key {key}"))),
    }
}

async fn get_key(
    st: web::Data<ApiState>,
    req: HttpRequest,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, ApiError> {
    let app = st.authorize(&req, &path.0, ApiScope::Read).await?;
    Ok(HttpResponse::Ok().json(KeyOut::from(owned_key(&st, &app, &path.1).await?)))
}

/// `PATCH /applications/{app}/keys/{key}` body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyPatch {
    active: Option<bool>,
    custom_topics: Option<bool>,
}

async fn patch_key(
    st: web::Data<ApiState>,
    req: HttpRequest,
    path: web::Path<(String, String)>,
    body: web::Json<KeyPatch>,
) -> Result<HttpResponse, ApiError> {
    let app = st.authorize(&req, &path.0, ApiScope::Admin).await?;
    let mut key = owned_key(&st, &app, &path.1).await?;
    if let Some(a) = body.active {
        key.active = a;
    }
    if let Some(c) = body.custom_topics {
        key.custom_topics = c;
    }
    st.store.put_access_key(key.clone()).await?;
    st.announce(RegistryChange::AccessKey {
        key: key.key.clone(),
    })
    .await;
    Ok(HttpResponse::Ok().json(KeyOut::from(key)))
}
