//! Registry endpoints: applications, API tokens, devices, attribute definitions, Losant
//! access keys and ThingsBoard device tokens. Secrets are returned once, at creation.
//!
//! - `applications`: applications and their API tokens.
//! - `devices`: devices and their attribute definitions.
//! - `credentials`: Losant access keys and ThingsBoard device tokens.

mod applications;
mod credentials;
mod devices;

use applications::{create_api_token, create_application, delete_api_token, get_application};
use credentials::{create_device_token, create_key, get_key, patch_key, revoke_device_tokens};
use devices::{
    create_device, delete_device, get_attribute_defs, get_device, list_devices, put_attribute_defs,
    put_device,
};

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
        .route(
            "/applications/{app}/devices/{id}/tokens",
            web::delete().to(revoke_device_tokens),
        )
        .route("/applications/{app}/keys", web::post().to(create_key))
        .route("/applications/{app}/keys/{key}", web::patch().to(patch_key))
        .route("/applications/{app}/keys/{key}", web::get().to(get_key));
}

/// A created secret: shown once.
#[derive(Debug, Serialize)]
struct Created<T: Serialize> {
    #[serde(flatten)]
    item: T,
    /// The secret itself; it is not stored and cannot be shown again.
    secret: String,
}

async fn existing_app(st: &ApiState, app: &fluxgate_model::TenantId) -> Result<(), ApiError> {
    match st.store.application(app.clone()).await? {
        Some(_) => Ok(()),
        None => Err(ApiError::not_found(format!("application {app}"))),
    }
}
