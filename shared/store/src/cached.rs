//! [`CachedStore`]: registry reads cached in memory, for the roles that read the registry on
//! every message (the MQTT front at CONNECT and per peripheral publish, the validator per
//! record).
//!
//! Cached: devices, attribute definitions, ThingsBoard name → device, access keys, device
//! tokens, API tokens. Entries live `ttl` at most and are dropped early by
//! [`CachedStore::invalidate`] (fed from `fluxgate.registry.changes`) and by writes made
//! through this store. It wraps only the registry: the other aggregates are never cached.
//!
//! Misses are cached too (`None`), so a flood of unknown credentials does not reach the
//! store; a created device or key is visible after its registry change or the TTL.
//! Concurrent misses for one key make one store read (moka's `try_get_with`).

use std::sync::Arc;
use std::time::Duration;

use fluxgate_model::{DeviceId, DeviceName, RegistryChange, TenantId};
use moka::future::Cache;

use crate::types::*;
use crate::{BoxFuture, RegistryStore, Result, StoreError};

fn cache<K, V>(ttl: Duration, capacity: u64) -> Cache<K, V>
where
    K: std::hash::Hash + Eq + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
{
    Cache::builder()
        .max_capacity(capacity)
        .time_to_live(ttl)
        .build()
}

/// A [`RegistryStore`] whose reads are cached.
#[derive(Debug, Clone)]
pub struct CachedStore {
    inner: Arc<dyn RegistryStore>,
    devices: Cache<(TenantId, DeviceId), Option<Device>>,
    defs: Cache<(TenantId, DeviceId), Vec<AttributeDef>>,
    names: Cache<(TenantId, DeviceName), Device>,
    keys: Cache<String, Option<AccessKey>>,
    tokens: Cache<String, Option<DeviceToken>>,
    api_tokens: Cache<String, Option<ApiToken>>,
}

fn shared(e: Arc<StoreError>) -> StoreError {
    (*e).clone()
}

impl CachedStore {
    /// Caches `inner`'s registry reads for `ttl`, at most `capacity` entries per kind.
    pub fn new(inner: Arc<dyn RegistryStore>, ttl: Duration, capacity: u64) -> Self {
        CachedStore {
            inner,
            devices: cache(ttl, capacity),
            defs: cache(ttl, capacity),
            names: cache(ttl, capacity),
            keys: cache(ttl, capacity),
            tokens: cache(ttl, capacity),
            api_tokens: cache(ttl, capacity),
        }
    }

    /// Drops what `change` makes stale.
    pub async fn invalidate(&self, change: &RegistryChange) {
        match change {
            RegistryChange::Device { tenant, device } => {
                self.devices
                    .invalidate(&(tenant.clone(), device.clone()))
                    .await;
                // A renamed or deleted device: its name entries go too.
                let (t, d) = (tenant.clone(), device.clone());
                let _ = self
                    .names
                    .invalidate_entries_if(move |(nt, _), dev| nt == &t && dev.id == d);
            }
            RegistryChange::AttributeDefs { tenant, device } => {
                self.defs
                    .invalidate(&(tenant.clone(), device.clone()))
                    .await;
            }
            RegistryChange::AccessKey { key } => self.keys.invalidate(key).await,
            RegistryChange::DeviceToken { token_hash } => {
                self.tokens.invalidate(token_hash).await;
                self.api_tokens.invalidate(token_hash).await;
            }
            RegistryChange::Application { tenant } => {
                let t = tenant.clone();
                let _ = self
                    .devices
                    .invalidate_entries_if(move |(dt, _), _| dt == &t);
                let t = tenant.clone();
                let _ = self.defs.invalidate_entries_if(move |(dt, _), _| dt == &t);
            }
            // A kind of change this build does not know: drop everything, to be safe.
            _ => {
                self.devices.invalidate_all();
                self.defs.invalidate_all();
                self.names.invalidate_all();
                self.keys.invalidate_all();
                self.tokens.invalidate_all();
                self.api_tokens.invalidate_all();
            }
        }
    }
}

impl RegistryStore for CachedStore {
    fn put_application(&self, app: Application) -> BoxFuture<'_, Result<()>> {
        self.inner.put_application(app)
    }

    fn application(&self, id: TenantId) -> BoxFuture<'_, Result<Option<Application>>> {
        self.inner.application(id)
    }

    fn put_device(&self, device: Device) -> BoxFuture<'_, Result<()>> {
        Box::pin(async move {
            let change = RegistryChange::Device {
                tenant: device.tenant.clone(),
                device: device.id.clone(),
            };
            self.inner.put_device(device).await?;
            self.invalidate(&change).await;
            Ok(())
        })
    }

    fn device(&self, tenant: TenantId, id: DeviceId) -> BoxFuture<'_, Result<Option<Device>>> {
        Box::pin(async move {
            let load = self.inner.device(tenant.clone(), id.clone());
            self.devices
                .try_get_with((tenant, id), load)
                .await
                .map_err(shared)
        })
    }

    fn delete_device(&self, tenant: TenantId, id: DeviceId) -> BoxFuture<'_, Result<bool>> {
        Box::pin(async move {
            let change = RegistryChange::Device {
                tenant: tenant.clone(),
                device: id.clone(),
            };
            let found = self.inner.delete_device(tenant, id).await?;
            self.invalidate(&change).await;
            Ok(found)
        })
    }

    fn devices(
        &self,
        tenant: TenantId,
        after: Option<DeviceId>,
        limit: u32,
    ) -> BoxFuture<'_, Result<Vec<Device>>> {
        self.inner.devices(tenant, after, limit)
    }

    fn device_named(
        &self,
        tenant: TenantId,
        name: DeviceName,
    ) -> BoxFuture<'_, Result<Option<Device>>> {
        Box::pin(async move {
            if let Some(device) = self.names.get(&(tenant.clone(), name.clone())).await {
                return Ok(Some(device));
            }
            // Only what exists is cached: a name may be created any moment.
            let found = self
                .inner
                .device_named(tenant.clone(), name.clone())
                .await?;
            if let Some(d) = &found {
                self.names.insert((tenant, name), d.clone()).await;
            }
            Ok(found)
        })
    }

    fn device_by_name(
        &self,
        tenant: TenantId,
        name: DeviceName,
        how: AutoCreate,
    ) -> BoxFuture<'_, Result<NamedDevice>> {
        Box::pin(async move {
            if let Some(device) = self.names.get(&(tenant.clone(), name.clone())).await {
                return Ok(NamedDevice {
                    device,
                    created: false,
                });
            }
            let named = self
                .inner
                .device_by_name(tenant.clone(), name.clone(), how)
                .await?;
            self.names
                .insert((tenant, name), named.device.clone())
                .await;
            Ok(named)
        })
    }

    fn put_access_key(&self, key: AccessKey) -> BoxFuture<'_, Result<()>> {
        Box::pin(async move {
            let k = key.key.clone();
            self.inner.put_access_key(key).await?;
            self.keys.invalidate(&k).await;
            Ok(())
        })
    }

    fn access_key(&self, key: String) -> BoxFuture<'_, Result<Option<AccessKey>>> {
        Box::pin(async move {
            let load = self.inner.access_key(key.clone());
            self.keys.try_get_with(key, load).await.map_err(shared)
        })
    }

    fn put_device_token(&self, token: DeviceToken) -> BoxFuture<'_, Result<()>> {
        Box::pin(async move {
            let h = token.token_hash.clone();
            self.inner.put_device_token(token).await?;
            self.tokens.invalidate(&h).await;
            Ok(())
        })
    }

    fn device_token(&self, token_hash: String) -> BoxFuture<'_, Result<Option<DeviceToken>>> {
        Box::pin(async move {
            let load = self.inner.device_token(token_hash.clone());
            self.tokens
                .try_get_with(token_hash, load)
                .await
                .map_err(shared)
        })
    }

    fn revoke_device_tokens(
        &self,
        tenant: TenantId,
        device: DeviceId,
    ) -> BoxFuture<'_, Result<Vec<String>>> {
        Box::pin(async move {
            let revoked = self.inner.revoke_device_tokens(tenant, device).await?;
            for h in &revoked {
                self.tokens.invalidate(h).await;
            }
            Ok(revoked)
        })
    }

    fn put_api_token(&self, token: ApiToken) -> BoxFuture<'_, Result<()>> {
        Box::pin(async move {
            let h = token.token_hash.clone();
            self.inner.put_api_token(token).await?;
            self.api_tokens.invalidate(&h).await;
            Ok(())
        })
    }

    fn api_token(&self, token_hash: String) -> BoxFuture<'_, Result<Option<ApiToken>>> {
        Box::pin(async move {
            let load = self.inner.api_token(token_hash.clone());
            self.api_tokens
                .try_get_with(token_hash, load)
                .await
                .map_err(shared)
        })
    }

    fn delete_api_token(&self, token_hash: String) -> BoxFuture<'_, Result<bool>> {
        Box::pin(async move {
            let found = self.inner.delete_api_token(token_hash.clone()).await?;
            self.api_tokens.invalidate(&token_hash).await;
            Ok(found)
        })
    }

    fn put_attribute_defs(
        &self,
        tenant: TenantId,
        device: DeviceId,
        defs: Vec<AttributeDef>,
    ) -> BoxFuture<'_, Result<()>> {
        Box::pin(async move {
            let k = (tenant.clone(), device.clone());
            self.inner.put_attribute_defs(tenant, device, defs).await?;
            self.defs.invalidate(&k).await;
            Ok(())
        })
    }

    fn attribute_defs(
        &self,
        tenant: TenantId,
        device: DeviceId,
    ) -> BoxFuture<'_, Result<Vec<AttributeDef>>> {
        Box::pin(async move {
            let load = self.inner.attribute_defs(tenant.clone(), device.clone());
            self.defs
                .try_get_with((tenant, device), load)
                .await
                .map_err(shared)
        })
    }

    fn device_claim(
        &self,
        tenant: TenantId,
        device: DeviceId,
    ) -> BoxFuture<'_, Result<Option<DeviceClaim>>> {
        self.inner.device_claim(tenant, device)
    }

    fn open_claim_window(
        &self,
        tenant: TenantId,
        device: DeviceId,
        secret_hash: String,
        until_ms: i64,
    ) -> BoxFuture<'_, Result<()>> {
        self.inner
            .open_claim_window(tenant, device, secret_hash, until_ms)
    }

    fn set_claim_owner(
        &self,
        tenant: TenantId,
        device: DeviceId,
        seen_until_ms: i64,
        owner: String,
        at_ms: i64,
    ) -> BoxFuture<'_, Result<bool>> {
        self.inner
            .set_claim_owner(tenant, device, seen_until_ms, owner, at_ms)
    }

    fn clear_claim(&self, tenant: TenantId, device: DeviceId) -> BoxFuture<'_, Result<bool>> {
        self.inner.clear_claim(tenant, device)
    }
}
