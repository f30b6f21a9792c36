//! Per-connection rate limits: how many publishes a connection, a Losant topic and a
//! device behind a ThingsBoard gateway may send per window ([`ConnLimits`]), as GCRA
//! quotas ([`quota`]). What happens when one is exceeded (close, block) is the
//! publish pipeline's and admission's business, not this module's. The limits run on
//! governor's monotonic clock; tests give them a fake one ([`ConnLimits::with_clock`]).

use std::num::NonZeroU32;
use std::time::Duration;

use fluxgate_model::Principal;
use governor::clock::{Clock, DefaultClock};
use governor::middleware::NoOpMiddleware;
use governor::state::keyed::HashMapStateStore;
use governor::state::{InMemoryState, NotKeyed};
use governor::{Quota, RateLimiter};
use ntex::util::ByteString;

use crate::config::{Rate, RateLimits};

/// Per-connection rate limiters (`None`: that limit is off), by dialect: a Losant
/// connection counts per topic and per connection; a ThingsBoard device counts its own
/// messages; a ThingsBoard gateway counts its publishes and, per device it names, the
/// messages about that device.
#[derive(Debug)]
pub(crate) struct ConnLimits<C: Clock = DefaultClock> {
    per_connection: Option<DirectLimiter<C>>,
    /// Keyed by topic (Losant) in a plain `HashMap` (empty until used): governor's default
    /// keyed store is a sharded `DashMap`, about 1 KiB per connection before the first
    /// publish.
    per_topic: Option<KeyedLimiter<C>>,
    /// Keyed by the device name a ThingsBoard gateway uses.
    per_device: Option<KeyedLimiter<C>>,
    /// What `per_connection` limits, as the metric label says it.
    connection_label: &'static str,
}

type DirectLimiter<C> =
    RateLimiter<NotKeyed, InMemoryState, C, NoOpMiddleware<<C as Clock>::Instant>>;
type KeyedLimiter<C> = RateLimiter<
    ByteString,
    HashMapStateStore<ByteString>,
    C,
    NoOpMiddleware<<C as Clock>::Instant>,
>;

/// `rate.messages` per `rate.window_secs`, as a burst-capable GCRA quota.
pub(crate) fn quota(rate: Rate) -> Option<Quota> {
    let n = NonZeroU32::new(rate.messages)?;
    let window = Duration::from_secs(u64::from(rate.window_secs.max(1)));
    Quota::with_period(window / rate.messages).map(|q| q.allow_burst(n))
}

/// Which limit a publish went over.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Over {
    /// A Losant topic's.
    Topic,
    /// The connection's (for a ThingsBoard device: the device's; for a gateway: the
    /// gateway's).
    Connection,
    /// The device behind a ThingsBoard gateway of this name.
    Device(String),
}

impl Over {
    /// The `limit` label of `fluxgate_mqtt_front_rate_limited_total`.
    pub(crate) fn label<C: Clock>(&self, limits: &ConnLimits<C>) -> &'static str {
        match self {
            Over::Topic => "topic",
            Over::Connection => limits.connection_label,
            Over::Device(_) => "device",
        }
    }
}

/// Counts `key` in `l`, keeping the map bounded for clients that use ever new keys.
fn check_keyed<C: Clock>(l: &KeyedLimiter<C>, key: &ByteString) -> bool {
    let ok = l.check_key(key).is_ok();
    if l.len() > 256 {
        l.retain_recent();
    }
    ok
}

impl ConnLimits {
    /// The limits of a connection of `principal`.
    pub(crate) fn new(principal: &Principal, rl: &RateLimits) -> Self {
        ConnLimits::with_clock(principal, rl, &DefaultClock::default())
    }
}

impl<C: Clock> ConnLimits<C> {
    /// The limits of a connection of `principal`, on `clock`.
    pub(crate) fn with_clock(principal: &Principal, rl: &RateLimits, clock: &C) -> Self
    where
        C: Clone,
    {
        let keyed = |r| quota(r).map(|q| RateLimiter::hashmap_with_clock(q, clock.clone()));
        let direct = |r| quota(r).map(|q| RateLimiter::direct_with_clock(q, clock.clone()));
        match principal {
            Principal::Losant { .. } => ConnLimits {
                per_connection: direct(rl.per_connection),
                per_topic: keyed(rl.per_topic),
                per_device: None,
                connection_label: "connection",
            },
            Principal::ThingsBoard { gateway: false, .. } => ConnLimits {
                per_connection: direct(rl.thingsboard_per_device),
                per_topic: None,
                per_device: None,
                connection_label: "device",
            },
            Principal::ThingsBoard { gateway: true, .. } => ConnLimits {
                per_connection: direct(rl.thingsboard_gateway),
                per_topic: None,
                per_device: keyed(rl.thingsboard_per_device),
                connection_label: "gateway",
            },
        }
    }

    /// Counts one publish to `topic`.
    pub(crate) fn check(&self, topic: &ByteString) -> Result<(), Over> {
        if let Some(l) = &self.per_topic
            && !check_keyed(l, topic)
        {
            return Err(Over::Topic);
        }
        if let Some(l) = &self.per_connection
            && l.check().is_err()
        {
            return Err(Over::Connection);
        }
        Ok(())
    }

    /// Counts one message about each of `devices` (named by a ThingsBoard gateway; a
    /// device named twice in one message counts once). Nothing to do for connections
    /// without a per-device limit.
    pub(crate) fn check_devices<'a>(
        &self,
        devices: impl IntoIterator<Item = &'a str>,
    ) -> Result<(), Over> {
        let Some(l) = &self.per_device else {
            return Ok(());
        };
        let mut devices: Vec<&str> = devices.into_iter().collect();
        devices.sort_unstable();
        devices.dedup();
        for d in devices {
            if !check_keyed(l, &ByteString::from(d)) {
                return Err(Over::Device(d.to_owned()));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use governor::clock::FakeRelativeClock;

    fn rates() -> RateLimits {
        let rate = |messages| Rate {
            messages,
            window_secs: 15,
        };
        RateLimits {
            per_connection: rate(5),
            per_topic: rate(3),
            thingsboard_per_device: rate(2),
            thingsboard_gateway: rate(4),
            ..RateLimits::default()
        }
    }

    fn limits(principal: &Principal) -> ConnLimits {
        ConnLimits::new(principal, &rates())
    }

    /// The windows on a fake clock: a quota of 3 per 15 s gives one publish back every
    /// 5 s, and the whole burst once a window passed with nothing sent.
    #[test]
    fn a_window_gives_back_one_publish_per_window_share_and_the_burst_after_a_window() {
        let clock = FakeRelativeClock::default();
        let d = fluxgate_model::DeviceId::new("d").unwrap();
        let principal = Principal::Losant {
            device: d,
            gateway: false,
        };
        let mut rl = rates();
        rl.per_connection.messages = 0; // only the topic's limit counts here
        let l = ConnLimits::with_clock(&principal, &rl, &clock);
        let a = ByteString::from("a");
        for _ in 0..3 {
            l.check(&a).unwrap();
        }
        assert_eq!(l.check(&a), Err(Over::Topic));
        clock.advance(Duration::from_millis(4_999));
        assert_eq!(l.check(&a), Err(Over::Topic), "not before 5 s");
        clock.advance(Duration::from_millis(1));
        l.check(&a).unwrap();
        assert_eq!(l.check(&a), Err(Over::Topic), "one back per 5 s, not two");
        clock.advance(Duration::from_secs(15));
        for i in 0..3 {
            assert_eq!(
                l.check(&a),
                Ok(()),
                "publish {i} of the burst after a window"
            );
        }
        assert_eq!(l.check(&a), Err(Over::Topic));
    }

    #[test]
    fn rate_limits_allow_a_window_then_refuse() {
        let d = fluxgate_model::DeviceId::new("d").unwrap();
        let l = limits(&Principal::Losant {
            device: d.clone(),
            gateway: false,
        });
        let (a, b) = (ByteString::from("a"), ByteString::from("b"));
        for _ in 0..3 {
            l.check(&a).unwrap();
        }
        assert_eq!(l.check(&a), Err(Over::Topic));
        // The connection has used 3 of 5 (the refused publish was stopped by the topic
        // limit before the connection limit counted it).
        l.check(&b).unwrap();
        l.check(&b).unwrap();
        assert_eq!(l.check(&b), Err(Over::Connection));

        // ThingsBoard: no topic limit; a gateway counts per device it names, and in all.
        let gw = limits(&Principal::ThingsBoard {
            device: d.clone(),
            gateway: true,
        });
        let t = ByteString::from("v1/gateway/telemetry");
        gw.check(&t).unwrap();
        gw.check_devices(["A", "B", "C"]).unwrap();
        gw.check(&t).unwrap();
        gw.check_devices(["A", "B", "C"]).unwrap();
        assert_eq!(gw.check_devices(["C"]), Err(Over::Device("C".into())));
        gw.check(&t).unwrap();
        gw.check(&t).unwrap();
        let over = gw.check(&t).unwrap_err();
        assert_eq!((over.label(&gw), over), ("gateway", Over::Connection));
        let dev = limits(&Principal::ThingsBoard {
            device: d,
            gateway: false,
        });
        let t = ByteString::from("v1/devices/me/telemetry");
        dev.check(&t).unwrap();
        dev.check(&t).unwrap();
        let over = dev.check(&t).unwrap_err();
        assert_eq!(over.label(&dev), "device");
    }
}
