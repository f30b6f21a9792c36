//! The ScyllaDB/Cassandra adapter's connection and rejected logs.

use super::*;
use crate::LogStore;

impl LogStore for ScyllaStore {
    fn log_connection(&self, e: ConnectionEvent) -> BoxFuture<'_, Result<()>> {
        Box::pin(async move {
            let ttl = self.ttl_secs(&e.tenant).await?;
            self.exec(
                &self.stmts.put_conn,
                (
                    e.tenant.as_str(),
                    e.device.as_str(),
                    e.at_ms,
                    uid(),
                    e.connected,
                    e.front.clone(),
                    e.remote_addr.clone(),
                    e.reason.clone(),
                    e.via.as_ref().map(|v| v.as_str().to_owned()),
                    ttl,
                ),
            )
            .await?;
            Ok(())
        })
    }

    fn connection_log(
        &self,
        tenant: TenantId,
        device: DeviceId,
        limit: u32,
    ) -> BoxFuture<'_, Result<Vec<ConnectionEvent>>> {
        Box::pin(async move {
            type Row = (
                i64,
                bool,
                Option<String>,
                Option<String>,
                Option<String>,
                Option<String>,
            );
            let limit = i32::try_from(limit.max(1)).unwrap_or(i32::MAX);
            let r: Vec<Row> = rows(
                self.exec(
                    &self.stmts.get_conn,
                    (tenant.as_str(), device.as_str(), limit),
                )
                .await?,
            )?;
            r.into_iter()
                .map(|(at_ms, connected, front, remote_addr, reason, via)| {
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
        Box::pin(async move {
            let ttl = self.ttl_secs(&e.tenant).await?;
            let day = e.at_ms.div_euclid(86_400_000);
            self.exec(
                &self.stmts.put_rej,
                (
                    e.tenant.as_str(),
                    day,
                    e.at_ms,
                    uid(),
                    e.device.as_str(),
                    e.code.as_str(),
                    e.message.as_str(),
                    e.excerpt.as_str(),
                    ttl,
                ),
            )
            .await?;
            self.exec(&self.stmts.put_rej_day, (e.tenant.as_str(), day, ttl))
                .await?;
            Ok(())
        })
    }

    fn rejected_log(
        &self,
        tenant: TenantId,
        device: Option<String>,
        limit: u32,
    ) -> BoxFuture<'_, Result<Vec<RejectedEntry>>> {
        Box::pin(async move {
            let days: Vec<(i64,)> =
                rows(self.exec(&self.stmts.rej_days, (tenant.as_str(),)).await?)?;
            let mut out = Vec::new();
            for (day,) in days {
                let r: Vec<(String, i64, String, String, String)> = rows(
                    self.exec(&self.stmts.get_rej, (tenant.as_str(), day))
                        .await?,
                )?;
                for (dev, at_ms, code, message, excerpt) in r {
                    if device.as_ref().is_some_and(|d| d != &dev) {
                        continue;
                    }
                    out.push(RejectedEntry {
                        tenant: tenant.clone(),
                        device: dev,
                        at_ms,
                        code: codec::reason(&code)?,
                        message,
                        excerpt,
                    });
                    if out.len() >= limit as usize {
                        return Ok(out);
                    }
                }
            }
            Ok(out)
        })
    }
}
