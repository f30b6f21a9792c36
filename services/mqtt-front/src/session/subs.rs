//! What a connection subscribed to: platform topics and custom filters.

use super::*;

/// What a connection subscribed to.
#[derive(Debug, Default)]
pub(crate) struct Subs {
    platform: Vec<(Subscription, QoS)>,
    custom: Vec<(String, TopicFilter, QoS)>,
}

impl Subs {
    pub(crate) fn add_platform(&mut self, s: Subscription, qos: QoS) {
        self.platform.retain(|(x, _)| *x != s);
        self.platform.push((s, qos));
    }

    pub(crate) fn add_custom(&mut self, filter: String, parsed: TopicFilter, qos: QoS) {
        self.custom.retain(|(f, _, _)| *f != filter);
        self.custom.push((filter, parsed, qos));
    }

    /// Removes whatever `filter` subscribed to (platform feed or custom filter).
    pub(crate) fn remove(&mut self, feed: Option<&Subscription>, filter: &str) {
        if let Some(f) = feed {
            self.platform.retain(|(x, _)| x != f);
        }
        self.custom.retain(|(f, _, _)| f != filter);
    }

    /// The QoS the client subscribed to `feed` with.
    pub(crate) fn feed(&self, feed: &Subscription) -> Option<QoS> {
        self.platform
            .iter()
            .find(|(s, _)| s == feed)
            .map(|(_, q)| *q)
    }

    /// The highest QoS of the custom filters matching `topic` (MQTT: one copy per client).
    pub(crate) fn custom(&self, topic: &str) -> Option<QoS> {
        self.custom
            .iter()
            .filter(|(_, f, _)| f.matches_topic(topic))
            .map(|(_, _, q)| *q)
            .max_by_key(|q| u8::from(*q))
    }

    pub(crate) fn has_custom(&self) -> bool {
        !self.custom.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn custom_filters_match_by_mqtt_rules() {
        let mut s = Subs::default();
        let f = |x: &str| x.parse::<TopicFilter>().unwrap();
        s.add_custom("a/+/c".into(), f("a/+/c"), QoS::AtMostOnce);
        s.add_custom("a/#".into(), f("a/#"), QoS::AtLeastOnce);
        assert_eq!(s.custom("a/b/c"), Some(QoS::AtLeastOnce));
        assert_eq!(s.custom("x/b/c"), None);
        s.remove(None, "a/#");
        assert_eq!(s.custom("a/b/c"), Some(QoS::AtMostOnce));
        assert_eq!(s.custom("a/b"), None);
    }
}
