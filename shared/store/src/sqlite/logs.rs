//! The SQLite adapter's connection and rejected logs.

use super::*;
use crate::LogStore;

impl LogStore for SqliteStore {
    fn log_connection(&self, e: ConnectionEvent) -> BoxFuture<'_, Result<()>> {
        self.run(move |c, now| {
            let exp = ttl_expiry(c, &e.tenant, now)?;
            let seq = next_seq(
                c,
                "SELECT max(seq) FROM connection_log WHERE tenant = ?1 AND device = ?2 AND at_ms = ?3",
                &[&e.tenant.as_str(), &e.device.as_str(), &e.at_ms],
            )?;
            c.execute(
                "INSERT INTO connection_log (tenant, device, at_ms, seq, connected, front, remote_addr, reason, via, expires_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
                params![
                    e.tenant.as_str(),
                    e.device.as_str(),
                    e.at_ms,
                    seq,
                    e.connected,
                    e.front,
                    e.remote_addr,
                    e.reason,
                    e.via.as_ref().map(DeviceId::as_str),
                    exp
                ],
            )
            .map_err(sql_err)?;
            Ok(())
        })
    }

    fn connection_log(
        &self,
        tenant: TenantId,
        device: DeviceId,
        limit: u32,
    ) -> BoxFuture<'_, Result<Vec<ConnectionEvent>>> {
        self.run(move |c, now| {
            let mut s = c
                .prepare_cached(
                    "SELECT at_ms, connected, front, remote_addr, reason, via FROM connection_log
                     WHERE tenant = ?1 AND device = ?2 AND (expires_at IS NULL OR expires_at > ?3)
                     ORDER BY at_ms DESC, seq DESC LIMIT ?4",
                )
                .map_err(sql_err)?;
            let rows = s
                .query_map(params![tenant.as_str(), device.as_str(), now, limit], |r| {
                    Ok((
                        r.get::<_, i64>(0)?,
                        r.get::<_, bool>(1)?,
                        r.get::<_, Option<String>>(2)?,
                        r.get::<_, Option<String>>(3)?,
                        r.get::<_, Option<String>>(4)?,
                        r.get::<_, Option<String>>(5)?,
                    ))
                })
                .map_err(sql_err)?;
            rows.map(|r| {
                let (at_ms, connected, front, remote_addr, reason, via) = r.map_err(sql_err)?;
                Ok(ConnectionEvent {
                    tenant: tenant.clone(),
                    device: device.clone(),
                    at_ms,
                    connected,
                    front,
                    remote_addr,
                    reason,
                    via: via.map(|v| id(v, DeviceId::new)).transpose()?,
                })
            })
            .collect()
        })
    }

    fn log_rejected(&self, e: RejectedEntry) -> BoxFuture<'_, Result<()>> {
        self.run(move |c, now| {
            let exp = ttl_expiry(c, &e.tenant, now)?;
            let seq = next_seq(
                c,
                "SELECT max(seq) FROM rejected_log WHERE tenant = ?1 AND at_ms = ?2",
                &[&e.tenant.as_str(), &e.at_ms],
            )?;
            c.execute(
                "INSERT INTO rejected_log (tenant, device, at_ms, seq, code, message, excerpt, expires_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                params![e.tenant.as_str(), e.device, e.at_ms, seq, e.code.as_str(), e.message, e.excerpt, exp],
            )
            .map_err(sql_err)?;
            Ok(())
        })
    }

    fn rejected_log(
        &self,
        tenant: TenantId,
        device: Option<String>,
        limit: u32,
    ) -> BoxFuture<'_, Result<Vec<RejectedEntry>>> {
        self.run(move |c, now| {
            let mut s = c
                .prepare_cached(
                    "SELECT device, at_ms, code, message, excerpt FROM rejected_log
                     WHERE tenant = ?1 AND (?2 IS NULL OR device = ?2) AND (expires_at IS NULL OR expires_at > ?3)
                     ORDER BY at_ms DESC, seq DESC LIMIT ?4",
                )
                .map_err(sql_err)?;
            let rows = s
                .query_map(params![tenant.as_str(), device, now, limit], |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        r.get::<_, i64>(1)?,
                        r.get::<_, String>(2)?,
                        r.get::<_, String>(3)?,
                        r.get::<_, String>(4)?,
                    ))
                })
                .map_err(sql_err)?;
            rows.map(|r| {
                let (device, at_ms, code, message, excerpt) = r.map_err(sql_err)?;
                Ok(RejectedEntry {
                    tenant: tenant.clone(),
                    device,
                    at_ms,
                    code: rows::reason(&code)?,
                    message,
                    excerpt,
                })
            })
            .collect()
        })
    }
}
