//! The SQLite adapter's commands and client-side RPCs, with their status history.

use super::*;
use crate::CommandStore;

impl CommandStore for SqliteStore {
    fn put_command(&self, r: CommandRecord) -> BoxFuture<'_, Result<()>> {
        self.run(move |c, _| {
            let tx = c.transaction().map_err(sql_err)?;
            let cid = r.id.to_string();
            tx.execute(
                &format!("INSERT OR REPLACE INTO commands ({COMMAND_COLS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)"),
                params![
                    cid,
                    r.tenant.as_str(),
                    r.device.as_str(),
                    to_json(&r.command),
                    r.status.as_str(),
                    r.created_ms,
                    r.updated_ms,
                    r.reply.as_ref().map(to_json)
                ],
            )
            .map_err(sql_err)?;
            tx.execute("DELETE FROM command_history WHERE id = ?1", [&cid]).map_err(sql_err)?;
            tx.execute(
                "INSERT INTO command_history (id, seq, status, at_ms, detail) VALUES (?1, 0, ?2, ?3, NULL)",
                params![cid, r.status.as_str(), r.created_ms],
            )
            .map_err(sql_err)?;
            tx.commit().map_err(sql_err)
        })
    }

    fn command(&self, cid: MessageId) -> BoxFuture<'_, Result<Option<CommandRecord>>> {
        self.run(move |c, _| load_command(c, &cid.to_string()))
    }

    fn set_command_status(
        &self,
        cid: MessageId,
        to: CommandStatus,
        at_ms: i64,
        detail: Option<String>,
        reply: Option<serde_json::Value>,
    ) -> BoxFuture<'_, Result<CommandRecord>> {
        self.run(move |c, _| {
            let tx = c
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(sql_err)?;
            let key = cid.to_string();
            let current = load_command(&tx, &key)?.ok_or_else(|| StoreError::NotFound(format!("command {cid}")))?;
            if !current.status.can_become(to) {
                return Err(StoreError::InvalidTransition {
                    id: cid,
                    from: current.status.as_str(),
                    to: to.as_str(),
                });
            }
            let reply_json = reply.as_ref().map(to_json);
            // Conditional on the status read (the immediate transaction already holds the
            // write lock; the condition keeps the rule in the statement, as on Cassandra).
            let changed = tx
                .execute(
                    "UPDATE commands SET status = ?2, updated_ms = ?3, reply = coalesce(?4, reply)
                     WHERE id = ?1 AND status = ?5",
                    params![key, to.as_str(), at_ms, reply_json, current.status.as_str()],
                )
                .map_err(sql_err)?;
            if changed != 1 {
                return Err(StoreError::InvalidTransition {
                    id: cid,
                    from: current.status.as_str(),
                    to: to.as_str(),
                });
            }
            let seq = next_seq(&tx, "SELECT max(seq) FROM command_history WHERE id = ?1", &[&key])?;
            tx.execute(
                "INSERT INTO command_history (id, seq, status, at_ms, detail) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![key, seq, to.as_str(), at_ms, detail],
            )
            .map_err(sql_err)?;
            let updated = load_command(&tx, &key)?.ok_or_else(|| StoreError::NotFound(format!("command {cid}")))?;
            tx.commit().map_err(sql_err)?;
            Ok(updated)
        })
    }

    fn command_history(&self, cid: MessageId) -> BoxFuture<'_, Result<Vec<StatusChange>>> {
        self.run(move |c, _| {
            let mut s = c
                .prepare_cached(
                    "SELECT status, at_ms, detail FROM command_history WHERE id = ?1 ORDER BY seq",
                )
                .map_err(sql_err)?;
            let rows = s
                .query_map([cid.to_string()], |r| {
                    Ok((r.get::<_, String>(0)?, r.get(1)?, r.get(2)?))
                })
                .map_err(sql_err)?;
            rows.map(|r| {
                let (status, at_ms, detail) = r.map_err(sql_err)?;
                Ok(StatusChange {
                    status: rows::status(&status)?,
                    at_ms,
                    detail,
                })
            })
            .collect()
        })
    }

    fn commands(
        &self,
        tenant: TenantId,
        device: DeviceId,
        status: Option<CommandStatus>,
        limit: u32,
    ) -> BoxFuture<'_, Result<Vec<CommandRecord>>> {
        self.run(move |c, _| {
            let mut s = c
                .prepare_cached(&format!(
                    "SELECT {COMMAND_COLS} FROM commands WHERE tenant = ?1 AND device = ?2 AND (?3 IS NULL OR status = ?3)
                     ORDER BY created_ms DESC, id DESC LIMIT ?4"
                ))
                .map_err(sql_err)?;
            let rows = s
                .query_map(
                    params![tenant.as_str(), device.as_str(), status.map(CommandStatus::as_str), limit],
                    command_from_row,
                )
                .map_err(sql_err)?;
            rows.map(|r| r.map_err(sql_err).and_then(rows::command)).collect()
        })
    }

    fn in_flight_commands(&self, limit: u32) -> BoxFuture<'_, Result<Vec<CommandRecord>>> {
        self.run(move |c, _| {
            let mut s = c
                .prepare_cached(&format!(
                    "SELECT {COMMAND_COLS} FROM commands
                     WHERE status = 'sent'
                        OR (status = 'delivered' AND json_extract(command, '$.two_way') = 1)
                     ORDER BY updated_ms LIMIT ?1"
                ))
                .map_err(sql_err)?;
            let rows = s
                .query_map(params![limit], command_from_row)
                .map_err(sql_err)?;
            rows.map(|r| r.map_err(sql_err).and_then(rows::command))
                .collect()
        })
    }

    fn put_client_rpc(&self, rpc: ClientRpc) -> BoxFuture<'_, Result<bool>> {
        self.run(move |c, _| {
            let n = c
                .execute(
                    &format!(
                        "INSERT OR IGNORE INTO client_rpcs ({CLIENT_RPC_COLS})
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)"
                    ),
                    params![
                        rpc.id.to_string(),
                        rpc.tenant.as_str(),
                        rpc.device.as_str(),
                        to_json(&rpc.request_id),
                        rpc.method,
                        to_json(&rpc.params),
                        rpc.status.as_str(),
                        rpc.created_ms,
                        rpc.deadline_ms,
                        rpc.updated_ms,
                        rpc.answer.as_ref().map(to_json),
                    ],
                )
                .map_err(sql_err)?;
            Ok(n == 1)
        })
    }

    fn client_rpc(
        &self,
        tenant: TenantId,
        device: DeviceId,
        rid: MessageId,
    ) -> BoxFuture<'_, Result<Option<ClientRpc>>> {
        self.run(move |c, _| load_client_rpc(c, tenant.as_str(), device.as_str(), &rid.to_string()))
    }

    fn client_rpcs(
        &self,
        tenant: TenantId,
        device: DeviceId,
        status: Option<ClientRpcStatus>,
        limit: u32,
    ) -> BoxFuture<'_, Result<Vec<ClientRpc>>> {
        self.run(move |c, _| {
            let mut s = c
                .prepare_cached(&format!(
                    "SELECT {CLIENT_RPC_COLS} FROM client_rpcs
                     WHERE tenant = ?1 AND device = ?2 AND (?3 IS NULL OR status = ?3)
                     ORDER BY id DESC LIMIT ?4"
                ))
                .map_err(sql_err)?;
            let st = status.map(ClientRpcStatus::as_str);
            let rows = s
                .query_map(
                    params![tenant.as_str(), device.as_str(), st, limit.min(1000)],
                    client_rpc_from_row,
                )
                .map_err(sql_err)?;
            rows.map(|r| r.map_err(sql_err).and_then(rows::client_rpc))
                .collect()
        })
    }

    fn end_client_rpc(
        &self,
        tenant: TenantId,
        device: DeviceId,
        rid: MessageId,
        to: ClientRpcStatus,
        answer: Option<serde_json::Value>,
        at_ms: i64,
    ) -> BoxFuture<'_, Result<Option<ClientRpc>>> {
        self.run(move |c, _| {
            let (t, d, key) = (tenant.as_str(), device.as_str(), rid.to_string());
            let n = c
                .execute(
                    "UPDATE client_rpcs SET status = ?4, answer = ?5, updated_ms = ?6
                     WHERE tenant = ?1 AND device = ?2 AND id = ?3 AND status = 'pending'",
                    params![t, d, key, to.as_str(), answer.as_ref().map(to_json), at_ms],
                )
                .map_err(sql_err)?;
            if n == 1 {
                load_client_rpc(c, t, d, &key)
            } else {
                Ok(None)
            }
        })
    }

    fn pending_client_rpcs(&self, limit: u32) -> BoxFuture<'_, Result<Vec<ClientRpc>>> {
        self.run(move |c, _| {
            let mut s = c
                .prepare_cached(&format!(
                    "SELECT {CLIENT_RPC_COLS} FROM client_rpcs WHERE status = 'pending'
                     ORDER BY created_ms LIMIT ?1"
                ))
                .map_err(sql_err)?;
            let rows = s.query_map([limit], client_rpc_from_row).map_err(sql_err)?;
            rows.map(|r| r.map_err(sql_err).and_then(rows::client_rpc))
                .collect()
        })
    }
}
