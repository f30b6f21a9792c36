//! Authentication at CONNECT and the registry reads the ACL needs, cached.
//!
//! - Losant: client id = device id, username = access key, password = access secret. The
//!   key must exist, be active, and open the device (all devices, listed devices, or a tag
//!   the device carries): `fluxgate_store::check_access_key`, the check the API's
//!   `/auth/device` makes too.
//! - ThingsBoard: username = device access token, password empty.
//!
//! A CONNECT with a non-empty password is taken as Losant, one without as ThingsBoard.
//!
//! Secrets are compared as SHA-256 hashes in constant time, and a secret is hashed even when
//! its key does not exist, so timing tells nothing about which keys exist. Registry reads
//! go through `fluxgate_store::CachedStore`: cached for `auth_cache_ttl_secs` and dropped
//! early on `fluxgate.registry.changes` ([`Registry::invalidate`]). What a failed attempt
//! costs the client is admission's business (`front::admission`).

use std::sync::Arc;
use std::time::Duration;

use fluxgate_model::{DeviceId, Principal, RegistryChange, TenantId};
use fluxgate_store::{
    CachedStore, Device, DeviceKind, DeviceToken, KeyRefusal, RegistryStore, StoreError,
    check_access_key, hash_secret,
};
use subtle::ConstantTimeEq;

/// Why a CONNECT is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// Unknown key or token, or wrong secret (v3 code 4, v5 0x86).
    #[error("bad user name or password")]
    BadCredentials,
    /// The credentials are valid but do not open this device (v3 5, v5 0x87).
    #[error("not authorized: {0}")]
    NotAuthorized(&'static str),
    /// The registry could not be read (v3 3, v5 0x88); the client should retry.
    #[error("registry unavailable: {0}")]
    Unavailable(String),
}

impl AuthError {
    /// A bounded label for metrics.
    pub fn label(&self) -> &'static str {
        match self {
            AuthError::BadCredentials => "bad_credentials",
            AuthError::NotAuthorized(_) => "not_authorized",
            AuthError::Unavailable(_) => "unavailable",
        }
    }
}

impl From<StoreError> for AuthError {
    fn from(e: StoreError) -> Self {
        AuthError::Unavailable(e.to_string())
    }
}

/// Who connected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The application.
    pub tenant: TenantId,
    /// The device and its dialect.
    pub principal: Principal,
    /// Whether the credentials allow custom (non-platform) topics.
    pub custom_topics: bool,
    /// What it authenticated with, checked again when the registry changes.
    pub credential: Credential,
}

/// The credential a session authenticated with: enough to check it again
/// ([`Registry::recheck`]) without keeping the secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Credential {
    /// A Losant access key, and the hash of the secret the client gave.
    AccessKey {
        /// The key (public half).
        key: Arc<str>,
        /// SHA-256 of the secret, hex.
        secret_hash: Arc<str>,
    },
    /// A ThingsBoard device token, as its SHA-256 hash.
    Token {
        /// SHA-256 of the token, hex.
        hash: Arc<str>,
    },
}

impl Credential {
    /// Whether a registry change may have made this credential invalid for a session of
    /// `tenant`'s `device` (the caller checks the session again).
    pub fn touched_by(
        &self,
        change: &RegistryChange,
        tenant: &TenantId,
        device: &DeviceId,
    ) -> bool {
        match change {
            RegistryChange::AccessKey { key } => {
                matches!(self, Credential::AccessKey { key: k, .. } if key.as_str() == &**k)
            }
            RegistryChange::DeviceToken { token_hash } => {
                matches!(self, Credential::Token { hash } if token_hash.as_str() == &**hash)
            }
            RegistryChange::Device {
                tenant: t,
                device: d,
            } => t == tenant && d == device,
            RegistryChange::Application { tenant: t } => t == tenant,
            RegistryChange::AttributeDefs { .. } => false,
            // A kind of change this build does not know: check again, to be safe.
            _ => true,
        }
    }
}

/// The credentials of a CONNECT.
#[derive(Debug, Clone, Copy)]
pub struct Credentials<'a> {
    /// MQTT client id.
    pub client_id: &'a str,
    /// MQTT user name.
    pub username: Option<&'a str>,
    /// MQTT password.
    pub password: Option<&'a [u8]>,
}

/// Cached registry reads ([`CachedStore`]) and the checks made with them.
#[derive(Debug, Clone)]
pub struct Registry {
    store: CachedStore,
}

impl Registry {
    /// A registry over `store`, caching reads for `ttl`.
    pub fn new(store: Arc<dyn RegistryStore>, ttl: Duration) -> Self {
        Registry {
            store: CachedStore::new(store, ttl, 100_000),
        }
    }

    async fn device_token(&self, hash: String) -> Result<Option<DeviceToken>, AuthError> {
        Ok(self.store.device_token(hash).await?)
    }

    /// A device, from the cache or the store.
    pub async fn device(
        &self,
        tenant: &TenantId,
        id: &DeviceId,
    ) -> Result<Option<Device>, StoreError> {
        self.store.device(tenant.clone(), id.clone()).await
    }

    /// Whether `gateway` may act for `peripheral` (Losant peripheral policy).
    pub async fn peripheral_allows(
        &self,
        tenant: &TenantId,
        peripheral: &DeviceId,
        gateway: &DeviceId,
    ) -> Result<bool, StoreError> {
        Ok(self
            .device(tenant, peripheral)
            .await?
            .is_some_and(|d| d.accepts_gateway(gateway)))
    }

    /// Drops the cache entries a registry change makes stale.
    pub async fn invalidate(&self, change: &RegistryChange) {
        self.store.invalidate(change).await;
    }

    /// Checks the credentials of a CONNECT.
    pub async fn authenticate(&self, c: Credentials<'_>) -> Result<Identity, AuthError> {
        match c.password.filter(|p| !p.is_empty()) {
            Some(secret) => self.losant(c.client_id, c.username, secret).await,
            None => self.thingsboard(c.username).await,
        }
    }

    async fn losant(
        &self,
        client_id: &str,
        username: Option<&str>,
        secret: &[u8],
    ) -> Result<Identity, AuthError> {
        let secret = String::from_utf8_lossy(secret);
        let checked =
            check_access_key(&self.store, username.unwrap_or(""), &secret, client_id).await;
        let (key, device) = checked.map_err(|refusal| match refusal {
            KeyRefusal::BadCredentials => AuthError::BadCredentials,
            KeyRefusal::Deactivated => AuthError::NotAuthorized("access key is deactivated"),
            KeyRefusal::NotADeviceId => AuthError::NotAuthorized("client id is not a device id"),
            KeyRefusal::NoSuchDevice => {
                AuthError::NotAuthorized("no such device in the key's application")
            }
            KeyRefusal::NotOpened => {
                AuthError::NotAuthorized("the access key does not open this device")
            }
            KeyRefusal::Store(e) => e.into(),
        })?;
        Ok(Identity {
            tenant: key.tenant,
            principal: Principal::Losant {
                device: device.id,
                gateway: device.kind == DeviceKind::Gateway,
            },
            custom_topics: key.custom_topics,
            credential: Credential::AccessKey {
                key: key.key.into(),
                secret_hash: key.secret_hash.into(),
            },
        })
    }

    async fn thingsboard(&self, username: Option<&str>) -> Result<Identity, AuthError> {
        let Some(token) = username.filter(|t| !t.is_empty()) else {
            return Err(AuthError::BadCredentials);
        };
        let hash = hash_secret(token);
        let t = self
            .device_token(hash.clone())
            .await?
            .ok_or(AuthError::BadCredentials)?;
        // The lookup is by hash; compare it anyway so that a store returning a near match
        // (a prefix index, a collation) cannot let a wrong token in.
        if !bool::from(t.token_hash.as_bytes().ct_eq(hash.as_bytes())) {
            return Err(AuthError::BadCredentials);
        }
        let device = self
            .device(&t.tenant, &t.device)
            .await?
            .ok_or(AuthError::NotAuthorized("the token's device was deleted"))?;
        Ok(Identity {
            tenant: t.tenant,
            principal: Principal::ThingsBoard {
                device: t.device,
                gateway: device.kind == DeviceKind::Gateway,
            },
            custom_topics: false,
            credential: Credential::Token { hash: hash.into() },
        })
    }

    /// Checks the credential of a connected session of `tenant`'s `device` again, as the
    /// registry holds it now: the key still exists with the same secret, is active and
    /// opens the device; the token still exists for the same device; the device still
    /// exists. `Unavailable` when the registry cannot be read (the session is then left
    /// alone).
    pub async fn recheck(
        &self,
        tenant: &TenantId,
        device: &DeviceId,
        credential: &Credential,
    ) -> Result<(), AuthError> {
        match credential {
            Credential::AccessKey { key, secret_hash } => {
                let k = self
                    .store
                    .access_key(key.to_string())
                    .await?
                    .ok_or(AuthError::NotAuthorized("the access key was deleted"))?;
                if &k.tenant != tenant
                    || !bool::from(k.secret_hash.as_bytes().ct_eq(secret_hash.as_bytes()))
                {
                    return Err(AuthError::NotAuthorized("the access key's secret changed"));
                }
                if !k.active {
                    return Err(AuthError::NotAuthorized("access key is deactivated"));
                }
                let d = self
                    .device(tenant, device)
                    .await?
                    .ok_or(AuthError::NotAuthorized("the device was deleted"))?;
                if !k.opens(&d) {
                    return Err(AuthError::NotAuthorized(
                        "the access key does not open this device",
                    ));
                }
            }
            Credential::Token { hash } => {
                let t = self
                    .device_token(hash.to_string())
                    .await?
                    .ok_or(AuthError::NotAuthorized("the device token was revoked"))?;
                if &t.tenant != tenant || &t.device != device {
                    return Err(AuthError::NotAuthorized("the device token was revoked"));
                }
                self.device(tenant, device)
                    .await?
                    .ok_or(AuthError::NotAuthorized("the device was deleted"))?;
            }
        }
        Ok(())
    }
}
