//! Devices and their attribute definitions.

use super::*;

/// A device as the API takes it.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct DeviceIn {
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

/// The most attribute definitions a device has (Losant's limit).
const MAX_ATTRIBUTE_DEFS: usize = 256;

fn check_attribute_count(defs: &[AttributeDef]) -> Result<(), ApiError> {
    if defs.len() > MAX_ATTRIBUTE_DEFS {
        return Err(ApiError::invalid(
            "attributes",
            format!("at most {MAX_ATTRIBUTE_DEFS} attributes per device"),
        ));
    }
    Ok(())
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
    if let Some(defs) = &body.attributes {
        check_attribute_count(defs)?;
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

pub(super) async fn create_device(
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

pub(super) async fn put_device(
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

pub(super) async fn get_device(
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
pub(super) struct ListIn {
    after: Option<String>,
    limit: Option<u32>,
}

pub(super) async fn list_devices(
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

pub(super) async fn delete_device(
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

pub(super) async fn put_attribute_defs(
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
    check_attribute_count(&defs)?;
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

pub(super) async fn get_attribute_defs(
    st: web::Data<ApiState>,
    req: HttpRequest,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, ApiError> {
    let (app, id) = st
        .authorize_device(&req, &path.0, &path.1, ApiScope::Read)
        .await?;
    st.existing_device(&app, &id).await?;
    Ok(HttpResponse::Ok().json(st.store.attribute_defs(app, id).await?))
}
