//! fluxgate's topics: names (with a configurable prefix) and how each is created.

use serde::{Deserialize, Serialize};

/// Every topic fluxgate uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Topic {
    /// Normalized inbound messages, not yet validated (front, API -> validator).
    IngestRaw,
    /// Validated telemetry and attributes (validator -> ts-writer).
    IngestValid,
    /// Refused messages with their reason (validator, front -> ts-writer, metrics).
    IngestRejected,
    /// Everything about one device's presence and control, on one key (`tenant/device`)
    /// so that its order holds: connects and disconnects (front, validator for devices
    /// behind a gateway), commands, RPC and shared-attribute pushes (API), RPC replies,
    /// attribute requests and delivery outcomes (front, validator) -> dispatcher.
    DeviceEvents,
    /// Messages for devices (dispatcher -> every front; broadcast).
    Deliveries,
    /// A command reached its end (replied, failed, timed out, expired): its id, keyed by
    /// it (dispatcher -> every API instance; broadcast). Wakes the HTTP request waiting
    /// on a two-way RPC, whichever API replica holds it.
    CommandOutcomes,
    /// Custom-topic MQTT messages between fronts (broadcast).
    MqttCustom,
    /// Registry changes (API -> caches in fronts and validators); compacted.
    RegistryChanges,
    /// Records a role could not decode, kept whole with where they came from and why
    /// (every consuming role -> operators). See [`crate::dead_letter`].
    DeadLetter,
}

impl Topic {
    /// Every topic.
    pub const ALL: [Topic; 9] = [
        Topic::IngestRaw,
        Topic::IngestValid,
        Topic::IngestRejected,
        Topic::DeviceEvents,
        Topic::Deliveries,
        Topic::CommandOutcomes,
        Topic::MqttCustom,
        Topic::RegistryChanges,
        Topic::DeadLetter,
    ];

    /// A short name for metrics labels and logs (`registry_changes`).
    pub fn label(self) -> &'static str {
        match self {
            Topic::IngestRaw => "ingest_raw",
            Topic::IngestValid => "ingest_valid",
            Topic::IngestRejected => "ingest_rejected",
            Topic::DeviceEvents => "device_events",
            Topic::Deliveries => "deliveries",
            Topic::CommandOutcomes => "command_outcomes",
            Topic::MqttCustom => "mqtt_custom",
            Topic::RegistryChanges => "registry_changes",
            Topic::DeadLetter => "dead_letter",
        }
    }

    /// The name after the prefix.
    pub fn suffix(self) -> &'static str {
        match self {
            Topic::IngestRaw => "ingest.raw",
            Topic::IngestValid => "ingest.valid",
            Topic::IngestRejected => "ingest.rejected",
            Topic::DeviceEvents => "device.events",
            Topic::Deliveries => "deliveries",
            Topic::CommandOutcomes => "command.outcomes",
            Topic::MqttCustom => "mqtt.custom",
            Topic::RegistryChanges => "registry.changes",
            Topic::DeadLetter => "dead-letter",
        }
    }
}

/// How topics are named and created.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct TopicsConfig {
    /// Prepended to every topic name (`fluxgate.` gives `fluxgate.ingest.raw`).
    pub prefix: String,
    /// Partitions of each topic created by bootstrap.
    pub partitions: i32,
    /// Replication factor of each topic created by bootstrap.
    pub replication_factor: i32,
    /// Retention of the data topics, in milliseconds.
    pub retention_ms: i64,
}

impl Default for TopicsConfig {
    fn default() -> Self {
        TopicsConfig {
            prefix: "fluxgate.".into(),
            partitions: 12,
            replication_factor: 3,
            retention_ms: 7 * 86_400_000,
        }
    }
}

impl TopicsConfig {
    /// The full name of `topic`.
    pub fn name(&self, topic: Topic) -> String {
        format!("{}{}", self.prefix, topic.suffix())
    }

    /// Which of fluxgate's topics the full name `name` is: where a consumed record's topic
    /// becomes a [`Topic`], so that actors match on topics, never on their names.
    pub fn topic_of(&self, name: &str) -> Option<Topic> {
        let suffix = name.strip_prefix(self.prefix.as_str())?;
        Topic::ALL.into_iter().find(|t| t.suffix() == suffix)
    }

    /// What bootstrap creates: every topic with the configured partitions and
    /// replication; data topics with the retention, the registry changes compacted (it is
    /// a changelog: the latest entry per key is what matters).
    pub fn specs(&self) -> Vec<TopicSpec> {
        Topic::ALL
            .iter()
            .map(|&t| TopicSpec {
                name: self.name(t),
                partitions: self.partitions,
                replication_factor: self.replication_factor,
                retention_ms: (t != Topic::RegistryChanges).then_some(self.retention_ms),
                compacted: t == Topic::RegistryChanges,
            })
            .collect()
    }
}

/// One topic to create.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicSpec {
    /// Full name.
    pub name: String,
    /// Partitions.
    pub partitions: i32,
    /// Replication factor.
    pub replication_factor: i32,
    /// `retention.ms`, when set.
    pub retention_ms: Option<i64>,
    /// `cleanup.policy=compact`.
    pub compacted: bool,
}

impl TopicSpec {
    /// A topic with `partitions` partitions, replication 1, broker-default retention.
    pub fn new(name: impl Into<String>, partitions: i32) -> Self {
        TopicSpec {
            name: name.into(),
            partitions,
            replication_factor: 1,
            retention_ms: None,
            compacted: false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_specs() {
        let c = TopicsConfig {
            prefix: "test.".into(),
            ..TopicsConfig::default()
        };
        assert_eq!(c.name(Topic::IngestRaw), "test.ingest.raw");
        let specs = c.specs();
        assert!(
            specs
                .iter()
                .any(|s| s.name == "test.dead-letter" && !s.compacted)
        );
        assert_eq!(specs.len(), 9);
        let reg = specs
            .iter()
            .find(|s| s.name == "test.registry.changes")
            .unwrap();
        assert!(reg.compacted && reg.retention_ms.is_none());
        let raw = specs.iter().find(|s| s.name == "test.ingest.raw").unwrap();
        assert!(!raw.compacted && raw.retention_ms == Some(7 * 86_400_000));
    }

    #[test]
    fn every_name_maps_back_to_its_topic() {
        let c = TopicsConfig {
            prefix: "test.".into(),
            ..TopicsConfig::default()
        };
        for t in Topic::ALL {
            assert_eq!(c.topic_of(&c.name(t)), Some(t));
        }
        assert_eq!(c.topic_of("test.ingest"), None);
        assert_eq!(c.topic_of("fluxgate.ingest.raw"), None, "another prefix");
        let labels: std::collections::HashSet<_> = Topic::ALL.iter().map(|t| t.label()).collect();
        assert_eq!(labels.len(), Topic::ALL.len());
    }
}
