//! Losant access keys and ThingsBoard device tokens: their secrets are shown once.

use super::*;

pub(super) async fn create_device_token(
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

/// `DELETE /applications/{app}/devices/{id}/tokens`: revokes every ThingsBoard token of
/// the device. Its live sessions end on every front (they check their credential again on
/// the registry change), and the tokens open nothing from now on.
pub(super) async fn revoke_device_tokens(
    st: web::Data<ApiState>,
    req: HttpRequest,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, ApiError> {
    let (app, id) = st
        .authorize_device(&req, &path.0, &path.1, ApiScope::Admin)
        .await?;
    st.existing_device(&app, &id).await?;
    for token_hash in st.store.revoke_device_tokens(app, id).await? {
        st.announce(RegistryChange::DeviceToken { token_hash })
            .await;
    }
    Ok(HttpResponse::NoContent().finish())
}

/// `POST /applications/{app}/keys` body: opens all devices unless `devices` or `tags` is
/// given.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct KeyIn {
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

pub(super) async fn create_key(
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

pub(super) async fn get_key(
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
pub(super) struct KeyPatch {
    active: Option<bool>,
    custom_topics: Option<bool>,
}

pub(super) async fn patch_key(
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
