//! MQTT front settings.

use std::path::PathBuf;

use fluxgate_model::Limits;
use serde::{Deserialize, Serialize};

/// What to do on MQTT 3.1.1, which has no negative PUBACK, when a publish is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum V3Refusal {
    /// Close the connection (ThingsBoard's behaviour; the client learns something is wrong).
    Close,
    /// Acknowledge and drop the message (it is counted and logged as rejected).
    Drop,
}

/// What becomes of a QoS 0 message for a client that does not read what it is sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum SlowClient {
    /// Drop the message (counted as `fluxgate_mqtt_front_deliveries_total{outcome=
    /// "dropped_slow_client"}`; a command's status says why).
    Drop,
    /// Close the session (MQTT 5: DISCONNECT 0x97 quota exceeded).
    Close,
}

/// TLS certificate and key, PEM files.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TlsFiles {
    /// Certificate chain, PEM.
    pub cert_path: PathBuf,
    /// Private key, PEM (PKCS#8, PKCS#1 or SEC1).
    pub key_path: PathBuf,
    /// How often new handshakes check the files for a renewed certificate, in seconds
    /// (0: at every handshake). A renewed pair is used without a restart; a broken one is
    /// logged and the previous pair kept.
    #[serde(default = "default_reload_secs")]
    pub reload_check_secs: u64,
}

fn default_reload_secs() -> u64 {
    30
}

/// One rate: `messages` per `window_secs`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Rate {
    /// How many in one window (0 turns the limit off).
    pub messages: u32,
    /// The window, in seconds.
    pub window_secs: u32,
}

/// Rate limits. `per_topic` and `per_connection` are Losant's (its published figures are
/// the defaults) and apply to Losant connections; ThingsBoard connections have their own,
/// per device, since one gateway topic carries all of a gateway's devices.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct RateLimits {
    /// Losant: publishes per topic per connection.
    pub per_topic: Rate,
    /// Losant: publishes per connection.
    pub per_connection: Rate,
    /// ThingsBoard: messages per device, on its own connection or through a gateway (a
    /// gateway message counts once for each device it names).
    pub thingsboard_per_device: Rate,
    /// ThingsBoard: publishes of one gateway connection, its own and its devices'.
    pub thingsboard_gateway: Rate,
    /// New connections per application, per front.
    pub new_connections_per_application: Rate,
    /// How long a client that went over a limit is refused, in seconds (doubles for each
    /// repeat offence within an hour, up to `block_max_secs`).
    pub block_secs: u64,
    /// Longest block, in seconds.
    pub block_max_secs: u64,
}

impl Default for RateLimits {
    fn default() -> Self {
        RateLimits {
            per_topic: Rate {
                messages: 30,
                window_secs: 15,
            },
            per_connection: Rate {
                messages: 300,
                window_secs: 15,
            },
            thingsboard_per_device: Rate {
                messages: 300,
                window_secs: 15,
            },
            thingsboard_gateway: Rate {
                messages: 3_000,
                window_secs: 15,
            },
            new_connections_per_application: Rate {
                messages: 300,
                window_secs: 15,
            },
            block_secs: 30,
            block_max_secs: 960,
        }
    }
}

/// A listener address: `""` switches it off, as leaving it out cannot when its default is
/// on (`tcp_addr`).
fn empty_is_off<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    let addr = Option::<String>::deserialize(d)?;
    Ok(addr.filter(|a| !a.is_empty()))
}

/// MQTT front settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct FrontConfig {
    /// This instance's id, reported in presence events (defaults to the host name).
    pub instance_id: String,
    /// Plain MQTT listener (`""`: off).
    #[serde(deserialize_with = "empty_is_off")]
    pub tcp_addr: Option<String>,
    /// MQTT over TLS listener (empty or unset: off; needs `tls`).
    #[serde(deserialize_with = "empty_is_off")]
    pub tls_addr: Option<String>,
    /// MQTT over WebSocket listener, at `ws_paths` (empty or unset: off).
    #[serde(deserialize_with = "empty_is_off")]
    pub ws_addr: Option<String>,
    /// MQTT over secure WebSocket listener, at `ws_paths` (empty or unset: off; needs `tls`).
    #[serde(deserialize_with = "empty_is_off")]
    pub wss_addr: Option<String>,
    /// The paths the WebSocket listeners upgrade; any other gets HTTP 404. MQTT.js and
    /// Losant's docs use `/` (`ws://host:port`), most brokers `/mqtt`.
    pub ws_paths: Vec<String>,
    /// Certificate and key of the TLS listeners.
    pub tls: Option<TlsFiles>,
    /// `/metrics`, `/healthz`, `/readyz` listener of the `front` role (`""`: off). Not
    /// used by `standalone`, whose API serves every role's.
    #[serde(deserialize_with = "empty_is_off")]
    pub http_addr: Option<String>,
    /// Worker threads of the MQTT listeners.
    pub workers: usize,
    /// Most sessions (connections past CONNECT) this front holds; a CONNECT beyond is
    /// refused at once (MQTT 5 CONNACK 0x97 quota exceeded, 3.1.1 CONNACK 3 server
    /// unavailable), so the client tries another front.
    pub max_connections: usize,
    /// Most sockets open at once that have not become a session (no CONNECT yet, or being
    /// authenticated), counted apart from `max_connections`; more are closed as soon as
    /// they are accepted. Each has `connect_timeout_secs` to send CONNECT.
    pub max_pending_connections: usize,
    /// Time a client has to send CONNECT after opening the socket, in seconds.
    pub connect_timeout_secs: u16,
    /// Longest keep-alive a client may use, in seconds: a CONNECT asking for none (0) or
    /// a longer one gets this one (MQTT 5: told in the CONNACK's Server Keep Alive), and
    /// a session silent for 1.5 times its keep-alive is closed. So no session stays
    /// forever without a sign of life.
    pub max_keepalive_secs: u16,
    /// MQTT 3.1.1: QoS 1 publishes of one connection being produced at once; when all
    /// wait for the bus, the front stops reading that socket. (Also the
    /// `maxInflightMessages` a ThingsBoard SDK is told.)
    pub max_in_flight: u16,
    /// Bytes of unacknowledged publishes one connection may hold; above it the front stops
    /// reading that socket until acks free room. MQTT 5 clients are told Receive Maximum
    /// 65535, since clients in the field (MQTT.js, paho 2) do not keep to a lower one and
    /// the MQTT 5 answer to that is to drop the connection with what was in flight.
    pub max_in_flight_bytes: usize,
    /// Deliveries waiting for one connection; more are reported as not delivered.
    pub max_pending_deliveries: usize,
    /// A client that does not read what it is sent — its socket's send buffer and the
    /// front's 4 KiB write buffer are full, or all its QoS 1 messages in flight are
    /// unacknowledged — gets no more QoS 0 messages (commands, custom-topic messages):
    /// `drop` them, or `close` the session. QoS 1 messages wait for the client instead,
    /// `max_pending_deliveries` at most. So what one connection holds stays bounded.
    pub slow_client: SlowClient,
    /// v3 publish to a topic the client may not use.
    pub v3_on_denied: V3Refusal,
    /// v3 publish whose payload is malformed.
    pub v3_on_malformed: V3Refusal,
    /// How long registry reads (credentials, devices) are cached, in seconds.
    pub auth_cache_ttl_secs: u64,
    /// Delay added to the answer of the n-th failed CONNECT from one address: this many
    /// milliseconds times 2^(n-1), capped by `auth_failure_delay_max_ms`; the first failure
    /// is answered at once.
    pub auth_failure_delay_ms: u64,
    /// Longest delay of a failed CONNECT, in milliseconds.
    pub auth_failure_delay_max_ms: u64,
    /// Rate limits.
    pub rate_limits: RateLimits,
    /// Rate limits of particular applications (by application id), instead of
    /// `rate_limits`.
    pub application_rate_limits: std::collections::BTreeMap<String, RateLimits>,
    /// Payload and value limits (`limits.max_payload_bytes` also bounds MQTT packets: a
    /// larger one closes the connection, v5 with "packet too large").
    pub limits: Limits,
    /// Time to finish in-flight acks when shutting down, in seconds.
    pub drain_grace_secs: u64,
    /// Sessions closed per second when shutting down (0: all at once), so the clients of
    /// a large front reconnect to the others spread out, not in one storm. Whatever is
    /// still open when `drain_grace_secs` is nearly over is closed at once.
    pub drain_closes_per_sec: u32,
}

impl FrontConfig {
    /// The keep-alive the front imposes on a client that asked for `asked` seconds, if it
    /// imposes one: `max_keepalive_secs` when `asked` is 0 (none) or longer.
    pub(crate) fn imposed_keepalive(&self, asked: u16) -> Option<u16> {
        (asked == 0 || asked > self.max_keepalive_secs).then_some(self.max_keepalive_secs)
    }
}

impl Default for FrontConfig {
    fn default() -> Self {
        FrontConfig {
            instance_id: std::env::var("HOSTNAME").unwrap_or_else(|_| "front-0".into()),
            tcp_addr: Some("0.0.0.0:1883".into()),
            tls_addr: None,
            ws_addr: None,
            wss_addr: None,
            ws_paths: vec!["/".into(), "/mqtt".into()],
            tls: None,
            http_addr: Some("0.0.0.0:9101".into()),
            workers: 2,
            max_connections: 100_000,
            max_pending_connections: 10_000,
            connect_timeout_secs: 10,
            max_keepalive_secs: 1_200,
            max_in_flight: 16,
            max_in_flight_bytes: 64 * 1024,
            max_pending_deliveries: 64,
            slow_client: SlowClient::Drop,
            v3_on_denied: V3Refusal::Close,
            v3_on_malformed: V3Refusal::Close,
            auth_cache_ttl_secs: 60,
            auth_failure_delay_ms: 250,
            auth_failure_delay_max_ms: 5_000,
            rate_limits: RateLimits::default(),
            application_rate_limits: Default::default(),
            limits: Limits::default(),
            drain_grace_secs: 10,
            drain_closes_per_sec: 2_000,
        }
    }
}

/// A setting the front cannot start with.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("mqtt_front.{field}: {problem}")]
pub struct ConfigError {
    /// The setting, as named in the config file.
    pub field: &'static str,
    /// What is wrong with it.
    pub problem: String,
}

impl FrontConfig {
    /// Checks what serde cannot: names the field that is wrong.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |field, problem: &str| {
            Err(ConfigError {
                field,
                problem: problem.into(),
            })
        };
        let listeners = [
            &self.tcp_addr,
            &self.tls_addr,
            &self.ws_addr,
            &self.wss_addr,
        ];
        if listeners.iter().all(|l| l.is_none()) {
            return bad("tcp_addr", "no listener is configured");
        }
        if (self.tls_addr.is_some() || self.wss_addr.is_some()) && self.tls.is_none() {
            return bad("tls", "tls_addr or wss_addr needs cert_path and key_path");
        }
        if (self.ws_addr.is_some() || self.wss_addr.is_some()) && self.ws_paths.is_empty() {
            return bad("ws_paths", "ws_addr or wss_addr needs at least one path");
        }
        if let Some(p) = self.ws_paths.iter().find(|p| !p.starts_with('/')) {
            return Err(ConfigError {
                field: "ws_paths",
                problem: format!("{p:?} does not start with /"),
            });
        }
        if self.workers == 0 {
            return bad("workers", "must be at least 1");
        }
        if self.max_connections == 0 {
            return bad("max_connections", "must be at least 1");
        }
        if self.max_keepalive_secs == 0 {
            return bad("max_keepalive_secs", "must be at least 1");
        }
        if self.max_pending_connections == 0 {
            return bad("max_pending_connections", "must be at least 1");
        }
        if self.max_in_flight == 0 {
            return bad("max_in_flight", "must be at least 1");
        }
        if self.max_in_flight_bytes == 0 {
            return bad("max_in_flight_bytes", "must be at least 1");
        }
        if self.limits.max_payload_bytes == 0 {
            return bad("limits.max_payload_bytes", "must be at least 1");
        }
        let all = std::iter::once(("rate_limits".to_owned(), &self.rate_limits)).chain(
            self.application_rate_limits
                .iter()
                .map(|(app, r)| (format!("application_rate_limits.{app}"), r)),
        );
        for (name, r) in all {
            for (field, rate) in [
                ("per_topic", r.per_topic),
                ("per_connection", r.per_connection),
                ("thingsboard_per_device", r.thingsboard_per_device),
                ("thingsboard_gateway", r.thingsboard_gateway),
                (
                    "new_connections_per_application",
                    r.new_connections_per_application,
                ),
            ] {
                if rate.messages > 0 && rate.window_secs == 0 {
                    return Err(ConfigError {
                        field: "rate_limits",
                        problem: format!("{name}.{field}: window_secs must be at least 1"),
                    });
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_errors_name_the_field() {
        FrontConfig::default().validate().unwrap();
        let mut c = FrontConfig {
            tls_addr: Some("127.0.0.1:0".into()),
            ..FrontConfig::default()
        };
        assert_eq!(c.validate().unwrap_err().field, "tls");
        c.tls_addr = None;
        c.rate_limits.per_topic.window_secs = 0;
        let e = c.validate().unwrap_err();
        assert_eq!(
            e.to_string(),
            "mqtt_front.rate_limits: rate_limits.per_topic: window_secs must be at least 1"
        );
        c.rate_limits.per_topic.window_secs = 15;
        let mut app = RateLimits::default();
        app.per_connection.window_secs = 0;
        c.application_rate_limits.insert("app7".into(), app);
        assert!(
            c.validate()
                .unwrap_err()
                .problem
                .starts_with("application_rate_limits.app7.per_connection")
        );
        let unknown: Result<FrontConfig, _> = serde_json::from_str(r#"{"tcp_adr":"x"}"#);
        assert!(unknown.unwrap_err().to_string().contains("tcp_adr"));
    }

    #[test]
    fn an_empty_listener_address_switches_it_off() {
        let ws_only: FrontConfig =
            serde_json::from_str(r#"{"tcp_addr":"","ws_addr":"0.0.0.0:8083","http_addr":""}"#)
                .unwrap();
        assert_eq!(ws_only.tcp_addr, None);
        assert_eq!(ws_only.http_addr, None);
        assert_eq!(ws_only.ws_addr.as_deref(), Some("0.0.0.0:8083"));
        ws_only.validate().unwrap();
        let none: FrontConfig = serde_json::from_str(r#"{"tcp_addr":""}"#).unwrap();
        assert_eq!(none.validate().unwrap_err().field, "tcp_addr");
        // Left out, the plain listener keeps its default.
        let default: FrontConfig = serde_json::from_str("{}").unwrap();
        assert_eq!(default.tcp_addr.as_deref(), Some("0.0.0.0:1883"));
    }
}
