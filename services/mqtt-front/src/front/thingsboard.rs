//! What the front answers itself for ThingsBoard clients: `getSessionLimits`, the
//! client-side RPC its SDK sends right after connecting, answered with the limits this
//! front enforces, in ThingsBoard's format.

use fluxgate_model::{CorrelationId, Delivery, ENVELOPE_VERSION, Outbound};

use super::{Front, new_id};
use crate::session::{Conn, Subs};

impl Front {
    /// ThingsBoard's SDK asks for the limits right after connecting; the answer is the
    /// limits this front enforces, in ThingsBoard's format.
    pub(super) async fn answer_session_limits(
        &self,
        conn: &Conn,
        subs: &Subs,
        request_id: CorrelationId,
    ) {
        let rl = self.rate_limits(&conn.identity.tenant);
        let rate = |r: crate::config::Rate| {
            if r.messages == 0 {
                String::new()
            } else {
                format!("{}:{}", r.messages, r.window_secs)
            }
        };
        // In ThingsBoard's format: `rateLimits` are the connected device's own (for a
        // gateway: the gateway as a device), `gatewayRateLimits` those of the devices
        // behind a gateway, which its SDK applies to them all together: the gateway's.
        let own = rate(rl.thingsboard_per_device);
        let mut data = serde_json::json!({
            "maxPayloadSize": self.cfg.limits.max_payload_bytes,
            "maxInflightMessages": self.cfg.max_in_flight,
            "rateLimits": {
                "messages": own,
                "telemetryMessages": own,
                "telemetryDataPoints": "",
            },
        });
        if conn.identity.principal.is_gateway() {
            let gw = rate(rl.thingsboard_gateway);
            data["gatewayRateLimits"] = serde_json::json!({
                "messages": gw,
                "telemetryMessages": gw,
                "telemetryDataPoints": "",
            });
        }
        let d = Delivery {
            v: ENVELOPE_VERSION,
            id: new_id(),
            tenant: conn.identity.tenant.clone(),
            device: conn.identity.principal.device().clone(),
            device_name: None,
            via: None,
            dialect: conn.identity.principal.dialect(),
            body: Outbound::RpcResponse { request_id, data },
        };
        if let Ok(r) = d.render() {
            let _ = self.write(conn, subs.feed(&r.feed), &r).await;
        }
    }
}
