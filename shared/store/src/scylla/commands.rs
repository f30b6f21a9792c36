//! The ScyllaDB/Cassandra adapter's commands and client-side RPCs, with their status history.

use super::*;
use crate::CommandStore;

impl CommandStore for ScyllaStore {
    fn put_command(&self, r: CommandRecord) -> BoxFuture<'_, Result<()>> {
        Box::pin(async move {
            let cid = r.id.to_string();
            self.exec(
                &self.stmts.put_cmd,
                (
                    cid.as_str(),
                    r.tenant.as_str(),
                    r.device.as_str(),
                    to_json(&r.command),
                    r.status.as_str(),
                    r.created_ms,
                    r.updated_ms,
                    r.reply.as_ref().map(to_json),
                ),
            )
            .await?;
            self.exec(
                &self.stmts.put_cmd_idx,
                (
                    r.tenant.as_str(),
                    r.device.as_str(),
                    r.created_ms,
                    cid.as_str(),
                    r.status.as_str(),
                ),
            )
            .await?;
            self.exec(&self.stmts.del_hist, (cid.as_str(),)).await?;
            self.exec(
                &self.stmts.put_hist,
                (
                    cid.as_str(),
                    0i32,
                    r.status.as_str(),
                    r.created_ms,
                    None::<String>,
                ),
            )
            .await?;
            Ok(())
        })
    }

    fn command(&self, cid: MessageId) -> BoxFuture<'_, Result<Option<CommandRecord>>> {
        Box::pin(async move { self.load_command(&cid.to_string()).await })
    }

    fn set_command_status(
        &self,
        cid: MessageId,
        to: CommandStatus,
        at_ms: i64,
        detail: Option<String>,
        reply: Option<serde_json::Value>,
    ) -> BoxFuture<'_, Result<CommandRecord>> {
        Box::pin(async move {
            let key = cid.to_string();
            // One lightweight transaction per change, conditional on the status and the
            // history seq read just before: of two racing changes one applies, and the
            // other reads again and is judged against what applied.
            let mut attempts = 0;
            let (current, seq) = loop {
                attempts += 1;
                if attempts > 16 {
                    return Err(StoreError::Unavailable(format!(
                        "command {cid}: its status kept changing under 16 attempts"
                    )));
                }
                // The command and its history seq, in one read: the condition below is on
                // the pair as it was.
                let (current, seen) = self
                    .load_command_seq(&key)
                    .await?
                    .ok_or_else(|| StoreError::NotFound(format!("command {cid}")))?;
                if !current.status.can_become(to) {
                    return Err(StoreError::InvalidTransition {
                        id: cid,
                        from: current.status.as_str(),
                        to: to.as_str(),
                    });
                }
                let next = seen.map_or(1, |s| s + 1);
                let reply_json = reply
                    .as_ref()
                    .map(to_json)
                    .or_else(|| current.reply.as_ref().map(to_json));
                let r = self
                    .exec(
                        &self.stmts.set_cmd,
                        (
                            to.as_str(),
                            at_ms,
                            reply_json,
                            next,
                            key.as_str(),
                            current.status.as_str(),
                            seen,
                        ),
                    )
                    .await?;
                if applied(r)? {
                    break (current, next);
                }
            };
            self.exec(
                &self.stmts.put_cmd_idx,
                (
                    current.tenant.as_str(),
                    current.device.as_str(),
                    current.created_ms,
                    key.as_str(),
                    to.as_str(),
                ),
            )
            .await?;
            let stmt = if in_flight(&current.command, to) {
                &self.stmts.put_awaiting
            } else {
                &self.stmts.del_awaiting
            };
            self.exec(stmt, (key.as_str(),)).await?;
            self.exec(
                &self.stmts.put_hist,
                (key.as_str(), seq, to.as_str(), at_ms, detail),
            )
            .await?;
            self.load_command(&key)
                .await?
                .ok_or_else(|| StoreError::NotFound(format!("command {cid}")))
        })
    }

    fn command_history(&self, cid: MessageId) -> BoxFuture<'_, Result<Vec<StatusChange>>> {
        Box::pin(async move {
            let r: Vec<(i32, String, i64, Option<String>)> =
                rows(self.exec(&self.stmts.get_hist, (cid.to_string(),)).await?)?;
            r.into_iter()
                .map(|(_, status, at_ms, detail)| {
                    Ok(StatusChange {
                        status: codec::status(&status)?,
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
        Box::pin(async move {
            let idx: Vec<(String, String)> = rows(
                self.exec(&self.stmts.cmds_of, (tenant.as_str(), device.as_str()))
                    .await?,
            )?;
            let mut out = Vec::new();
            for (cid, st) in idx {
                if out.len() >= limit as usize {
                    break;
                }
                if status.is_some_and(|s| s.as_str() != st) {
                    continue;
                }
                if let Some(c) = self.load_command(&cid).await? {
                    out.push(c);
                }
            }
            Ok(out)
        })
    }

    fn in_flight_commands(&self, limit: u32) -> BoxFuture<'_, Result<Vec<CommandRecord>>> {
        Box::pin(async move {
            let limit = i32::try_from(limit).unwrap_or(i32::MAX);
            let ids: Vec<(String,)> = rows(self.exec(&self.stmts.get_awaiting, (limit,)).await?)?;
            let mut out = Vec::new();
            for (cid,) in ids {
                if let Some(c) = self.load_command(&cid).await?
                    && in_flight(&c.command, c.status)
                {
                    out.push(c);
                }
            }
            out.sort_by_key(|c| c.updated_ms);
            Ok(out)
        })
    }

    fn put_client_rpc(&self, rpc: ClientRpc) -> BoxFuture<'_, Result<bool>> {
        Box::pin(async move {
            let key = rpc.id.to_string();
            let (t, d) = (rpc.tenant.as_str(), rpc.device.as_str());
            // The index first: an index entry without its request is dropped when read, a
            // request without its entry would never time out after a restart.
            self.exec(&self.stmts.put_crpc_pending, (key.as_str(), t, d))
                .await?;
            let r = self
                .exec(
                    &self.stmts.put_crpc,
                    (
                        key.as_str(),
                        t,
                        d,
                        to_json(&rpc.request_id),
                        rpc.method.as_str(),
                        to_json(&rpc.params),
                        rpc.status.as_str(),
                        rpc.created_ms,
                        rpc.deadline_ms,
                        rpc.updated_ms,
                        rpc.answer.as_ref().map(to_json),
                    ),
                )
                .await?;
            applied(r)
        })
    }

    fn client_rpc(
        &self,
        tenant: TenantId,
        device: DeviceId,
        rid: MessageId,
    ) -> BoxFuture<'_, Result<Option<ClientRpc>>> {
        Box::pin(async move {
            self.load_client_rpc(tenant.as_str(), device.as_str(), &rid.to_string())
                .await
        })
    }

    fn client_rpcs(
        &self,
        tenant: TenantId,
        device: DeviceId,
        status: Option<ClientRpcStatus>,
        limit: u32,
    ) -> BoxFuture<'_, Result<Vec<ClientRpc>>> {
        Box::pin(async move {
            let r: Vec<ClientRpcRow> = rows(
                self.exec(&self.stmts.crpcs_of, (tenant.as_str(), device.as_str()))
                    .await?,
            )?;
            let mut out = Vec::new();
            for row in r {
                let rpc = codec::client_rpc(row)?;
                if status.is_none_or(|s| s == rpc.status) {
                    out.push(rpc);
                }
                if out.len() >= limit as usize {
                    break;
                }
            }
            Ok(out)
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
        Box::pin(async move {
            let (t, d, key) = (tenant.as_str(), device.as_str(), rid.to_string());
            // A lightweight transaction: of an answer and a timeout, one applies.
            let r = self
                .exec(
                    &self.stmts.end_crpc,
                    (
                        to.as_str(),
                        answer.as_ref().map(to_json),
                        at_ms,
                        t,
                        d,
                        key.as_str(),
                        ClientRpcStatus::Pending.as_str(),
                    ),
                )
                .await?;
            if !applied(r)? {
                return Ok(None);
            }
            self.exec(&self.stmts.del_crpc_pending, (key.as_str(),))
                .await?;
            self.load_client_rpc(t, d, &key).await
        })
    }

    fn pending_client_rpcs(&self, limit: u32) -> BoxFuture<'_, Result<Vec<ClientRpc>>> {
        Box::pin(async move {
            let limit = i32::try_from(limit).unwrap_or(i32::MAX);
            let ids: Vec<(String, String, String)> =
                rows(self.exec(&self.stmts.get_crpc_pending, (limit,)).await?)?;
            let mut out = Vec::new();
            for (key, t, d) in ids {
                match self.load_client_rpc(&t, &d, &key).await? {
                    Some(rpc) if rpc.status == ClientRpcStatus::Pending => out.push(rpc),
                    // Ended (or deleted) since: the entry is stale.
                    _ => {
                        self.exec(&self.stmts.del_crpc_pending, (key.as_str(),))
                            .await?;
                    }
                }
            }
            out.sort_by_key(|r| r.created_ms);
            Ok(out)
        })
    }
}
