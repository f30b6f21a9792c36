//! The ScyllaDB/Cassandra adapter's registry: applications, devices, credentials, attribute definitions, claims.

use super::*;
use crate::RegistryStore;

impl RegistryStore for ScyllaStore {
    fn put_application(&self, app: Application) -> BoxFuture<'_, Result<()>> {
        Box::pin(async move {
            let ttl = app.ttl_secs.map(|t| i32::try_from(t).unwrap_or(i32::MAX));
            self.exec(
                &self.stmts.put_app,
                (app.id.as_str(), app.name.as_str(), ttl, app.created_ms),
            )
            .await?;
            Ok(())
        })
    }

    fn application(&self, tenant: TenantId) -> BoxFuture<'_, Result<Option<Application>>> {
        Box::pin(async move {
            let r: Vec<(String, String, Option<i32>, i64)> =
                rows(self.exec(&self.stmts.get_app, (tenant.as_str(),)).await?)?;
            r.into_iter()
                .next()
                .map(|(i, name, ttl, created_ms)| {
                    Ok(Application {
                        id: id(i, TenantId::new)?,
                        name,
                        ttl_secs: ttl.map(|t| t.max(0) as u32),
                        created_ms,
                    })
                })
                .transpose()
        })
    }

    fn put_device(&self, device: Device) -> BoxFuture<'_, Result<()>> {
        Box::pin(async move {
            self.insert_device(&device).await?;
            self.exec(
                &self.stmts.put_name,
                (
                    device.tenant.as_str(),
                    device.name.as_str(),
                    device.id.as_str(),
                ),
            )
            .await?;
            Ok(())
        })
    }

    fn device(&self, tenant: TenantId, device: DeviceId) -> BoxFuture<'_, Result<Option<Device>>> {
        Box::pin(async move { self.load_device(tenant.as_str(), device.as_str()).await })
    }

    fn delete_device(&self, tenant: TenantId, device: DeviceId) -> BoxFuture<'_, Result<bool>> {
        Box::pin(async move {
            let (t, d) = (tenant.as_str(), device.as_str());
            let Some(existing) = self.load_device(t, d).await? else {
                return Ok(false);
            };
            let named: Vec<(String,)> = rows(
                self.exec(&self.stmts.get_name, (t, existing.name.as_str()))
                    .await?,
            )?;
            if named.first().is_some_and(|(x,)| x == d) {
                self.exec(&self.stmts.del_name, (t, existing.name.as_str()))
                    .await?;
            }
            self.revoke_device_tokens(tenant.clone(), device.clone())
                .await?;
            self.exec(&self.stmts.del_defs, (t, d)).await?;
            self.purge_device_data(t, d).await?;
            // Last: a delete that fails part-way can be repeated, and finds the device.
            self.exec(&self.stmts.del_device, (t, d)).await?;
            Ok(true)
        })
    }

    fn devices(
        &self,
        tenant: TenantId,
        after: Option<DeviceId>,
        limit: u32,
    ) -> BoxFuture<'_, Result<Vec<Device>>> {
        Box::pin(async move {
            let after = after.as_ref().map_or("", DeviceId::as_str);
            let limit = i32::try_from(limit.max(1)).unwrap_or(i32::MAX);
            let r: Vec<DeviceRow> = rows(
                self.exec(&self.stmts.list_devices, (tenant.as_str(), after, limit))
                    .await?,
            )?;
            r.into_iter().map(codec::device).collect()
        })
    }

    fn device_named(
        &self,
        tenant: TenantId,
        name: DeviceName,
    ) -> BoxFuture<'_, Result<Option<Device>>> {
        Box::pin(async move {
            let t = tenant.as_str();
            let owner: Vec<(String,)> =
                rows(self.exec(&self.stmts.get_name, (t, name.as_str())).await?)?;
            match owner.into_iter().next() {
                Some((id,)) => self.load_device(t, &id).await,
                None => Ok(None),
            }
        })
    }

    fn device_by_name(
        &self,
        tenant: TenantId,
        name: DeviceName,
        how: AutoCreate,
    ) -> BoxFuture<'_, Result<NamedDevice>> {
        Box::pin(async move {
            let (t, n) = (tenant.as_str(), name.as_str());
            let fresh = new_device_id(how.now_ms, n)?;
            let r = self
                .exec(&self.stmts.claim_name, (t, n, fresh.as_str()))
                .await?;
            if applied(r)? {
                let device = how.device(tenant.clone(), fresh, n);
                self.insert_device(&device).await?;
                return Ok(NamedDevice {
                    device,
                    created: true,
                });
            }
            let owner: Vec<(String,)> = rows(self.exec(&self.stmts.get_name, (t, n)).await?)?;
            let did = owner.into_iter().next().map(|(d,)| d).ok_or_else(|| {
                StoreError::Unavailable(format!("name {n} claimed but not readable yet"))
            })?;
            // The winner may not have written its device row yet: wait briefly for it.
            for _ in 0..50 {
                if let Some(device) = self.load_device(t, &did).await? {
                    return Ok(NamedDevice {
                        device,
                        created: false,
                    });
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(StoreError::Unavailable(format!(
                "device {did} for name {n} not written yet; retry"
            )))
        })
    }

    fn put_access_key(&self, key: AccessKey) -> BoxFuture<'_, Result<()>> {
        Box::pin(async move {
            self.exec(
                &self.stmts.put_key,
                (
                    key.key.as_str(),
                    key.tenant.as_str(),
                    key.secret_hash.as_str(),
                    to_json(&key.scope),
                    key.custom_topics,
                    key.active,
                    key.created_ms,
                ),
            )
            .await?;
            Ok(())
        })
    }

    fn access_key(&self, key: String) -> BoxFuture<'_, Result<Option<AccessKey>>> {
        Box::pin(async move {
            let r: Vec<(String, String, String, String, bool, bool, i64)> =
                rows(self.exec(&self.stmts.get_key, (key.as_str(),)).await?)?;
            r.into_iter().next().map(codec::access_key).transpose()
        })
    }

    fn put_device_token(&self, token: DeviceToken) -> BoxFuture<'_, Result<()>> {
        Box::pin(async move {
            let (h, t, d) = (
                token.token_hash.as_str(),
                token.tenant.as_str(),
                token.device.as_str(),
            );
            self.exec(&self.stmts.put_token, (h, t, d)).await?;
            self.exec(&self.stmts.put_token_idx, (t, d, h)).await?;
            Ok(())
        })
    }

    fn device_token(&self, token_hash: String) -> BoxFuture<'_, Result<Option<DeviceToken>>> {
        Box::pin(async move {
            let r: Vec<(String, String, String)> = rows(
                self.exec(&self.stmts.get_token, (token_hash.as_str(),))
                    .await?,
            )?;
            r.into_iter().next().map(codec::device_token).transpose()
        })
    }

    fn revoke_device_tokens(
        &self,
        tenant: TenantId,
        device: DeviceId,
    ) -> BoxFuture<'_, Result<Vec<String>>> {
        Box::pin(async move {
            let (t, d) = (tenant.as_str(), device.as_str());
            let tokens: Vec<(String,)> = rows(self.exec(&self.stmts.tokens_of, (t, d)).await?)?;
            for (h,) in &tokens {
                self.exec(&self.stmts.del_token, (h.as_str(),)).await?;
            }
            self.exec(&self.stmts.del_token_idx, (t, d)).await?;
            Ok(tokens.into_iter().map(|(h,)| h).collect())
        })
    }

    fn put_api_token(&self, token: ApiToken) -> BoxFuture<'_, Result<()>> {
        Box::pin(async move {
            let row = (
                token.token_hash.as_str(),
                token.tenant.as_str(),
                token.scope.as_str(),
                token.name.as_str(),
                token.created_ms,
            );
            self.exec(&self.stmts.put_api_token, row).await?;
            Ok(())
        })
    }

    fn api_token(&self, token_hash: String) -> BoxFuture<'_, Result<Option<ApiToken>>> {
        Box::pin(async move {
            let r: Vec<crate::rows::ApiTokenRow> = rows(
                self.exec(&self.stmts.get_api_token, (token_hash.as_str(),))
                    .await?,
            )?;
            r.into_iter().next().map(codec::api_token).transpose()
        })
    }

    fn delete_api_token(&self, token_hash: String) -> BoxFuture<'_, Result<bool>> {
        Box::pin(async move {
            let found = self.api_token(token_hash.clone()).await?.is_some();
            if found {
                self.exec(&self.stmts.del_api_token, (token_hash.as_str(),))
                    .await?;
            }
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
            let (t, d) = (tenant.as_str(), device.as_str());
            self.exec(&self.stmts.del_defs, (t, d)).await?;
            for def in &defs {
                self.exec(
                    &self.stmts.put_def,
                    (t, d, def.name.as_str(), def.kind.as_str()),
                )
                .await?;
            }
            Ok(())
        })
    }

    fn attribute_defs(
        &self,
        tenant: TenantId,
        device: DeviceId,
    ) -> BoxFuture<'_, Result<Vec<AttributeDef>>> {
        Box::pin(async move {
            let r: Vec<(String, String)> = rows(
                self.exec(&self.stmts.get_defs, (tenant.as_str(), device.as_str()))
                    .await?,
            )?;
            r.into_iter()
                .map(|(name, kind)| {
                    Ok(AttributeDef {
                        name,
                        kind: AttributeType::parse(&kind)
                            .ok_or_else(|| StoreError::Corrupt(format!("attribute type {kind}")))?,
                    })
                })
                .collect()
        })
    }

    fn device_claim(
        &self,
        tenant: TenantId,
        device: DeviceId,
    ) -> BoxFuture<'_, Result<Option<DeviceClaim>>> {
        Box::pin(async move {
            type Row = (String, i64, Option<String>, Option<i64>);
            let r: Vec<Row> = rows(
                self.exec(&self.stmts.get_claim, (tenant.as_str(), device.as_str()))
                    .await?,
            )?;
            Ok(r.into_iter()
                .next()
                .map(
                    |(secret_hash, window_until_ms, owner, claimed_ms)| DeviceClaim {
                        tenant,
                        device,
                        secret_hash,
                        window_until_ms,
                        owner,
                        claimed_ms,
                    },
                ))
        })
    }

    fn open_claim_window(
        &self,
        tenant: TenantId,
        device: DeviceId,
        secret_hash: String,
        until_ms: i64,
    ) -> BoxFuture<'_, Result<()>> {
        Box::pin(async move {
            let (t, d) = (tenant.as_str(), device.as_str());
            self.exec(&self.stmts.open_claim, (secret_hash, until_ms, t, d))
                .await?;
            Ok(())
        })
    }

    fn set_claim_owner(
        &self,
        tenant: TenantId,
        device: DeviceId,
        seen_until_ms: i64,
        owner: String,
        at_ms: i64,
    ) -> BoxFuture<'_, Result<bool>> {
        Box::pin(async move {
            let (t, d) = (tenant.as_str(), device.as_str());
            // A lightweight transaction: of two racing claims one applies.
            let r = self
                .exec(
                    &self.stmts.set_claim_owner,
                    (owner, at_ms, t, d, seen_until_ms),
                )
                .await?;
            applied(r)
        })
    }

    fn clear_claim(&self, tenant: TenantId, device: DeviceId) -> BoxFuture<'_, Result<bool>> {
        Box::pin(async move {
            let owned = self
                .device_claim(tenant.clone(), device.clone())
                .await?
                .is_some_and(|c| c.owner.is_some());
            if owned {
                self.exec(&self.stmts.del_claim, (tenant.as_str(), device.as_str()))
                    .await?;
            }
            Ok(owned)
        })
    }
}
