//! The SQLite adapter's registry: applications, devices, credentials, attribute definitions, claims.

use super::*;
use crate::RegistryStore;

impl RegistryStore for SqliteStore {
    fn put_application(&self, app: Application) -> BoxFuture<'_, Result<()>> {
        self.run(move |c, _| {
            c.execute(
                "INSERT OR REPLACE INTO applications (id, name, ttl_secs, created_ms) VALUES (?1, ?2, ?3, ?4)",
                params![app.id.as_str(), app.name, app.ttl_secs, app.created_ms],
            )
            .map_err(sql_err)?;
            Ok(())
        })
    }

    fn application(&self, tenant: TenantId) -> BoxFuture<'_, Result<Option<Application>>> {
        self.run(move |c, _| {
            let row: Option<(String, String, Option<u32>, i64)> = c
                .query_row(
                    "SELECT id, name, ttl_secs, created_ms FROM applications WHERE id = ?1",
                    [tenant.as_str()],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
                )
                .optional()
                .map_err(sql_err)?;
            row.map(|(i, name, ttl_secs, created_ms)| {
                Ok(Application {
                    id: id(i, TenantId::new)?,
                    name,
                    ttl_secs,
                    created_ms,
                })
            })
            .transpose()
        })
    }

    fn put_device(&self, device: Device) -> BoxFuture<'_, Result<()>> {
        self.run(move |c, _| {
            let tx = c.transaction().map_err(sql_err)?;
            insert_device(&tx, &device)?;
            tx.execute(
                "INSERT OR REPLACE INTO device_names (tenant, name, device) VALUES (?1, ?2, ?3)",
                params![device.tenant.as_str(), device.name, device.id.as_str()],
            )
            .map_err(sql_err)?;
            tx.commit().map_err(sql_err)
        })
    }

    fn device(&self, tenant: TenantId, device: DeviceId) -> BoxFuture<'_, Result<Option<Device>>> {
        self.run(move |c, _| load_device(c, tenant.as_str(), device.as_str()))
    }

    fn delete_device(&self, tenant: TenantId, device: DeviceId) -> BoxFuture<'_, Result<bool>> {
        self.run(move |c, _| {
            let tx = c.transaction().map_err(sql_err)?;
            let (t, d) = (tenant.as_str(), device.as_str());
            // The `series` ids stay: they are only names for (tenant, device, key), cached
            // by writers, and a device made again reuses them.
            let n = tx
                .execute("DELETE FROM devices WHERE tenant = ?1 AND id = ?2", [t, d])
                .map_err(sql_err)?;
            for sql in [
                "DELETE FROM device_names WHERE tenant = ?1 AND device = ?2",
                "DELETE FROM device_tokens WHERE tenant = ?1 AND device = ?2",
                "DELETE FROM attribute_defs WHERE tenant = ?1 AND device = ?2",
                "DELETE FROM attributes WHERE tenant = ?1 AND device = ?2",
                "DELETE FROM ts_kv WHERE series IN \
                   (SELECT id FROM series WHERE tenant = ?1 AND device = ?2)",
                "DELETE FROM ts_latest WHERE series IN \
                   (SELECT id FROM series WHERE tenant = ?1 AND device = ?2)",
                "DELETE FROM command_history WHERE id IN \
                   (SELECT id FROM commands WHERE tenant = ?1 AND device = ?2)",
                "DELETE FROM commands WHERE tenant = ?1 AND device = ?2",
                "DELETE FROM connection_log WHERE tenant = ?1 AND device = ?2",
                "DELETE FROM device_claims WHERE tenant = ?1 AND device = ?2",
                "DELETE FROM client_rpcs WHERE tenant = ?1 AND device = ?2",
            ] {
                tx.execute(sql, [t, d]).map_err(sql_err)?;
            }
            tx.commit().map_err(sql_err)?;
            Ok(n > 0)
        })
    }

    fn devices(
        &self,
        tenant: TenantId,
        after: Option<DeviceId>,
        limit: u32,
    ) -> BoxFuture<'_, Result<Vec<Device>>> {
        self.run(move |c, _| {
            let after = after.as_ref().map_or("", DeviceId::as_str).to_owned();
            let mut s = c
                .prepare_cached(&format!(
                    "SELECT {DEVICE_COLS} FROM devices WHERE tenant = ?1 AND id > ?2 ORDER BY id LIMIT ?3"
                ))
                .map_err(sql_err)?;
            let rows = s
                .query_map(params![tenant.as_str(), after, limit], read_device)
                .map_err(sql_err)?;
            rows.map(|r| r.map_err(sql_err).and_then(rows::device)).collect()
        })
    }

    fn device_named(
        &self,
        tenant: TenantId,
        name: DeviceName,
    ) -> BoxFuture<'_, Result<Option<Device>>> {
        self.run(move |c, _| {
            let id: Option<String> = c
                .prepare_cached("SELECT device FROM device_names WHERE tenant = ?1 AND name = ?2")
                .and_then(|mut s| {
                    s.query_row([tenant.as_str(), name.as_str()], |r| r.get(0))
                        .optional()
                })
                .map_err(sql_err)?;
            match id {
                Some(id) => load_device(c, tenant.as_str(), &id),
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
        self.run(move |c, _| {
            let tx = c
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(sql_err)?;
            let fresh = new_device_id(how.now_ms, name.as_str())?;
            // First writer of the name wins; everyone reads the winner.
            let created = tx
                .execute(
                    "INSERT OR IGNORE INTO device_names (tenant, name, device) VALUES (?1, ?2, ?3)",
                    params![tenant.as_str(), name.as_str(), fresh.as_str()],
                )
                .map_err(sql_err)?
                == 1;
            if created {
                insert_device(&tx, &how.device(tenant.clone(), fresh, name.as_str()))?;
            }
            let did: String = tx
                .query_row(
                    "SELECT device FROM device_names WHERE tenant = ?1 AND name = ?2",
                    [tenant.as_str(), name.as_str()],
                    |r| r.get(0),
                )
                .map_err(sql_err)?;
            let device = load_device(&tx, tenant.as_str(), &did)?.ok_or_else(|| {
                StoreError::Corrupt(format!("name {name} maps to missing device {did}"))
            })?;
            tx.commit().map_err(sql_err)?;
            Ok(NamedDevice { device, created })
        })
    }

    fn put_access_key(&self, key: AccessKey) -> BoxFuture<'_, Result<()>> {
        self.run(move |c, _| {
            c.execute(
                "INSERT OR REPLACE INTO access_keys (key, tenant, secret_hash, scope, custom_topics, active, created_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                params![
                    key.key,
                    key.tenant.as_str(),
                    key.secret_hash,
                    to_json(&key.scope),
                    key.custom_topics,
                    key.active,
                    key.created_ms
                ],
            )
            .map_err(sql_err)?;
            Ok(())
        })
    }

    fn access_key(&self, key: String) -> BoxFuture<'_, Result<Option<AccessKey>>> {
        self.run(move |c, _| {
            let row: Option<(String, String, String, String, bool, bool, i64)> = c
                .prepare_cached(
                    "SELECT key, tenant, secret_hash, scope, custom_topics, active, created_ms FROM access_keys WHERE key = ?1",
                )
                .and_then(|mut s| {
                    s.query_row([&key], |r| {
                        Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?, r.get(6)?))
                    })
                    .optional()
                })
                .map_err(sql_err)?;
            row.map(rows::access_key)
            .transpose()
        })
    }

    fn put_device_token(&self, token: DeviceToken) -> BoxFuture<'_, Result<()>> {
        self.run(move |c, _| {
            c.execute(
                "INSERT OR REPLACE INTO device_tokens (token_hash, tenant, device) VALUES (?1, ?2, ?3)",
                params![token.token_hash, token.tenant.as_str(), token.device.as_str()],
            )
            .map_err(sql_err)?;
            Ok(())
        })
    }

    fn device_token(&self, token_hash: String) -> BoxFuture<'_, Result<Option<DeviceToken>>> {
        self.run(move |c, _| {
            let row: Option<(String, String, String)> = c
                .prepare_cached(
                    "SELECT token_hash, tenant, device FROM device_tokens WHERE token_hash = ?1",
                )
                .and_then(|mut s| {
                    s.query_row([&token_hash], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
                        .optional()
                })
                .map_err(sql_err)?;
            row.map(rows::device_token).transpose()
        })
    }

    fn revoke_device_tokens(
        &self,
        tenant: TenantId,
        device: DeviceId,
    ) -> BoxFuture<'_, Result<Vec<String>>> {
        self.run(move |c, _| {
            let tx = c.transaction().map_err(sql_err)?;
            let (t, d) = (tenant.as_str(), device.as_str());
            let hashes = tx
                .prepare("SELECT token_hash FROM device_tokens WHERE tenant = ?1 AND device = ?2")
                .and_then(|mut s| {
                    s.query_map([t, d], |r| r.get::<_, String>(0))?
                        .collect::<rusqlite::Result<Vec<String>>>()
                })
                .map_err(sql_err)?;
            tx.execute(
                "DELETE FROM device_tokens WHERE tenant = ?1 AND device = ?2",
                [t, d],
            )
            .map_err(sql_err)?;
            tx.commit().map_err(sql_err)?;
            Ok(hashes)
        })
    }

    fn put_api_token(&self, token: ApiToken) -> BoxFuture<'_, Result<()>> {
        self.run(move |c, _| {
            c.execute(
                "INSERT OR REPLACE INTO api_tokens (token_hash, tenant, scope, name, created_ms) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![
                    token.token_hash,
                    token.tenant.as_str(),
                    token.scope.as_str(),
                    token.name,
                    token.created_ms
                ],
            )
            .map_err(sql_err)?;
            Ok(())
        })
    }

    fn api_token(&self, token_hash: String) -> BoxFuture<'_, Result<Option<ApiToken>>> {
        self.run(move |c, _| {
            let row: Option<rows::ApiTokenRow> = c
                .prepare_cached(
                    "SELECT token_hash, tenant, scope, name, created_ms FROM api_tokens WHERE token_hash = ?1",
                )
                .and_then(|mut s| {
                    s.query_row([&token_hash], |r| {
                        Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
                    })
                    .optional()
                })
                .map_err(sql_err)?;
            row.map(rows::api_token).transpose()
        })
    }

    fn delete_api_token(&self, token_hash: String) -> BoxFuture<'_, Result<bool>> {
        self.run(move |c, _| {
            let n = c
                .execute(
                    "DELETE FROM api_tokens WHERE token_hash = ?1",
                    [&token_hash],
                )
                .map_err(sql_err)?;
            Ok(n > 0)
        })
    }

    fn put_attribute_defs(
        &self,
        tenant: TenantId,
        device: DeviceId,
        defs: Vec<AttributeDef>,
    ) -> BoxFuture<'_, Result<()>> {
        self.run(move |c, _| {
            let tx = c.transaction().map_err(sql_err)?;
            tx.execute(
                "DELETE FROM attribute_defs WHERE tenant = ?1 AND device = ?2",
                [tenant.as_str(), device.as_str()],
            )
            .map_err(sql_err)?;
            for d in &defs {
                tx.execute(
                    "INSERT OR REPLACE INTO attribute_defs (tenant, device, name, kind) VALUES (?1, ?2, ?3, ?4)",
                    params![tenant.as_str(), device.as_str(), d.name, d.kind.as_str()],
                )
                .map_err(sql_err)?;
            }
            tx.commit().map_err(sql_err)
        })
    }

    fn attribute_defs(
        &self,
        tenant: TenantId,
        device: DeviceId,
    ) -> BoxFuture<'_, Result<Vec<AttributeDef>>> {
        self.run(move |c, _| {
            let mut s = c
                .prepare_cached("SELECT name, kind FROM attribute_defs WHERE tenant = ?1 AND device = ?2 ORDER BY name")
                .map_err(sql_err)?;
            let rows = s
                .query_map([tenant.as_str(), device.as_str()], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))
                .map_err(sql_err)?;
            rows.map(|r| {
                let (name, kind) = r.map_err(sql_err)?;
                Ok(AttributeDef {
                    name,
                    kind: AttributeType::parse(&kind).ok_or_else(|| StoreError::Corrupt(format!("attribute type {kind}")))?,
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
        self.run(move |c, _| {
            c.query_row(
                "SELECT secret_hash, window_until_ms, owner, claimed_ms FROM device_claims
                 WHERE tenant = ?1 AND device = ?2",
                [tenant.as_str(), device.as_str()],
                |r| {
                    Ok(DeviceClaim {
                        tenant: tenant.clone(),
                        device: device.clone(),
                        secret_hash: r.get(0)?,
                        window_until_ms: r.get(1)?,
                        owner: r.get(2)?,
                        claimed_ms: r.get(3)?,
                    })
                },
            )
            .optional()
            .map_err(sql_err)
        })
    }

    fn open_claim_window(
        &self,
        tenant: TenantId,
        device: DeviceId,
        secret_hash: String,
        until_ms: i64,
    ) -> BoxFuture<'_, Result<()>> {
        self.run(move |c, _| {
            c.execute(
                "INSERT INTO device_claims (tenant, device, secret_hash, window_until_ms)
                 VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (tenant, device) DO UPDATE
                 SET secret_hash = excluded.secret_hash, window_until_ms = excluded.window_until_ms",
                params![tenant.as_str(), device.as_str(), secret_hash, until_ms],
            )
            .map_err(sql_err)?;
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
        self.run(move |c, _| {
            let n = c
                .execute(
                    "UPDATE device_claims SET owner = ?4, claimed_ms = ?5, window_until_ms = 0
                     WHERE tenant = ?1 AND device = ?2 AND window_until_ms = ?3 AND owner IS NULL",
                    params![
                        tenant.as_str(),
                        device.as_str(),
                        seen_until_ms,
                        owner,
                        at_ms
                    ],
                )
                .map_err(sql_err)?;
            Ok(n == 1)
        })
    }

    fn clear_claim(&self, tenant: TenantId, device: DeviceId) -> BoxFuture<'_, Result<bool>> {
        self.run(move |c, _| {
            let n = c
                .execute(
                    "DELETE FROM device_claims WHERE tenant = ?1 AND device = ?2 AND owner IS NOT NULL",
                    [tenant.as_str(), device.as_str()],
                )
                .map_err(sql_err)?;
            Ok(n == 1)
        })
    }
}
