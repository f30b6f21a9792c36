//! What the front does with a connection, independent of the MQTT version; `server` maps
//! the outcomes to v3 and v5 packets. [`Front`] holds what every connection of one front
//! shares; each job is its own module:
//!
//! - `admission`: whether a CONNECT may become a session (draining, blocks, new-connection
//!   limits, failed-login delay);
//! - `presence`: registering a session, takeover, the devices a gateway reaches, the end
//!   of a session — and announcing each on the bus;
//! - `publish`: the publish pipeline, from PUBLISH to its verdict;
//! - `acl`: the one access check of a topic, for publish and subscribe;
//! - `subscribe`: SUBSCRIBE and UNSUBSCRIBE;
//! - `link`: the session task, the one owner of a connection's state and the one writer
//!   to its client;
//! - `deliver`: rendering and writing what is routed to a connection;
//! - `thingsboard`: what the front answers ThingsBoard clients itself;
//! - `side`: the bounded queue of best-effort records (rejected log, outcomes of
//!   deliveries no session took).

mod acl;
mod admission;
mod deliver;
mod link;
mod presence;
mod publish;
mod side;
mod subscribe;
mod thingsboard;

use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use fluxgate_bus::{OutRecord, Producer, Topic, TopicsConfig};
use fluxgate_model::{MessageId, TenantId};

use crate::auth::Registry;
use crate::config::{FrontConfig, RateLimits};
use crate::metrics::FrontMetrics;
use crate::session::SessionMap;
pub(crate) use admission::Refusal;
pub(crate) use deliver::{route_custom, route_delivery};
pub(crate) use fluxgate_bus::now_ms;
pub(crate) use publish::Verdict;
pub(crate) use subscribe::SubscribeRefused;

/// Header carrying the MQTT topic of a custom-topic record on `fluxgate.mqtt.custom`.
pub(crate) const CUSTOM_TOPIC_HEADER: &str = "mqtt-topic";

struct Names {
    raw: String,
    events: String,
    rejected: String,
    custom: String,
}

/// State shared by every connection of one front.
pub(crate) struct Front {
    pub(crate) cfg: FrontConfig,
    pub(crate) registry: Registry,
    pub(crate) admission: admission::Admission,
    pub(crate) producer: Arc<dyn Producer>,
    names: Names,
    pub(crate) sessions: SessionMap,
    pub(crate) metrics: FrontMetrics,
    side: side::SideChannel,
    next_conn: AtomicU64,
}

impl std::fmt::Debug for Front {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Front")
            .field("instance", &self.cfg.instance_id)
            .field("sessions", &self.sessions.len())
            .finish_non_exhaustive()
    }
}

fn new_id() -> MessageId {
    MessageId::from_parts(now_ms().max(0) as u64, fastrand::u128(..))
}

/// `rec` with the current span's trace context in its headers (none with telemetry off).
fn traced(mut rec: OutRecord) -> OutRecord {
    fluxgate_observability::telemetry::inject(&mut rec.headers);
    rec
}

impl Front {
    pub(crate) fn new(
        cfg: FrontConfig,
        registry: Registry,
        producer: Arc<dyn Producer>,
        topics: &TopicsConfig,
        metrics: FrontMetrics,
    ) -> Self {
        Front {
            admission: admission::Admission::new(&cfg, metrics.sockets.clone()),
            names: Names {
                raw: topics.name(Topic::IngestRaw),
                events: topics.name(Topic::DeviceEvents),
                rejected: topics.name(Topic::IngestRejected),
                custom: topics.name(Topic::MqttCustom),
            },
            registry,
            producer,
            sessions: SessionMap::default(),
            side: side::SideChannel::new(metrics.side_dropped.clone()),
            metrics,
            next_conn: AtomicU64::new(1),
            cfg,
        }
    }

    /// Produces the queued best-effort records until `stop` resolves, then the rest.
    pub(crate) async fn run_side_channel(&self, stop: impl Future<Output = ()>) {
        self.side.run(self.producer.clone(), stop).await;
    }

    /// The rate limits of an application: its own, or the front's.
    fn rate_limits(&self, tenant: &TenantId) -> &RateLimits {
        self.cfg
            .application_rate_limits
            .get(tenant.as_str())
            .unwrap_or(&self.cfg.rate_limits)
    }

    async fn send_all(
        &self,
        recs: Vec<OutRecord>,
    ) -> Result<Vec<fluxgate_bus::AckFuture>, Verdict> {
        let mut acks = Vec::with_capacity(recs.len());
        for rec in recs {
            match self.producer.send(rec).await {
                Ok(a) => acks.push(a),
                Err(e) => return Err(Verdict::Failed(e.to_string())),
            }
        }
        Ok(acks)
    }
}
