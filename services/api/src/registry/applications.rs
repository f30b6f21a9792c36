//! Applications and their API tokens.

use super::*;

/// `POST /applications` body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ApplicationIn {
    id: String,
    name: Option<String>,
    ttl_secs: Option<u32>,
}

pub(super) async fn create_application(
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

pub(super) async fn get_application(
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
pub(super) struct TokenIn {
    name: String,
    scope: ApiScope,
}

pub(super) async fn create_api_token(
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

pub(super) async fn delete_api_token(
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
