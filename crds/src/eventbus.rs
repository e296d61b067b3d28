//! The `EventBus` and `ClusterEventBus` kinds: where events are kept between sources and triggers.

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::common::ScaleOption;

/// The desired state of an EventBus. Exactly one backend should be set; none at all means the
/// embedded bus.
#[derive(CustomResource, Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "events.openfunction.io",
    version = "v1alpha1",
    kind = "EventBus",
    namespaced,
    shortname = "eb"
)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct EventBusSpec {
    /// Name of the message channel. OpenFunction never used it; ofe accepts and ignores it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topic: Option<String>,
    /// NATS Streaming (end-of-life). ofe serves it with JetStream on the same `natsURL`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nats_streaming: Option<NatsStreamingSpec>,
    /// The embedded durable bus (ofe addition): one process, data on local disk.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub embedded: Option<EmbeddedBusSpec>,
    /// An in-memory bus (ofe addition), like Knative's in-memory channel: the fastest, and it
    /// loses its events when the process stops. For development, tests and data that may be
    /// lost.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<MemoryBusSpec>,
    /// NATS JetStream (ofe addition).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jetstream: Option<JetStreamBusSpec>,
    /// Kafka (ofe addition).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kafka: Option<KafkaBusSpec>,
}

/// The desired state of a ClusterEventBus: the same fields as an EventBus, cluster-scoped. A
/// namespaced EventBus of the same name wins over it.
#[derive(CustomResource, Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "events.openfunction.io",
    version = "v1alpha1",
    kind = "ClusterEventBus",
    shortname = "ceb"
)]
#[serde(transparent)]
pub struct ClusterEventBusSpec(pub EventBusSpec);

/// Settings of the embedded bus.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct EmbeddedBusSpec {
    /// Retention by size: the oldest events are dropped once the log exceeds this many bytes.
    /// Events a running consumer has not settled are never dropped for size: when they fill
    /// 80% of it, new events from sources are refused until the consumers catch up (a
    /// webhook answers 503, broker sources wait). Default 1 GiB.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_bytes: Option<i64>,
    /// Retention by age, as a duration such as `72h`. Default `168h` (7 days).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_age: Option<String>,
}

/// Settings of the in-memory bus.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct MemoryBusSpec {
    /// Most bytes of events kept (their data plus 256 bytes each). Events every consumer has
    /// settled make room first; when the rest is still wanted, new events from sources are
    /// refused until the consumers catch up (a webhook answers 503). Default 64 MiB.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_bytes: Option<i64>,
    /// Retention by age, as a duration such as `10m`. Default `1h`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_age: Option<String>,
}

/// A NATS JetStream bus.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct JetStreamBusSpec {
    /// Server URL(s), comma-separated, e.g. `nats://nats:4222`.
    pub url: String,
    /// Stream holding the events. Created when missing (subjects `ofe.>`), attached to when it
    /// exists. Default `OFE`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream: Option<String>,
    /// Stream replicas when ofe creates the stream. Default 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replicas: Option<i64>,
    /// Stream retention by size, in bytes, when ofe creates the stream. Default unlimited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_bytes: Option<i64>,
    /// Stream retention by age, e.g. `168h`, when ofe creates the stream. Default 7 days.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_age: Option<String>,
    /// Window in which a republished event (same subject, source and id) is dropped. Default
    /// `2m`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duplicate_window: Option<String>,
    /// How long a delivery may stay unacknowledged before the server redelivers it; ofe keeps
    /// long deliveries alive with progress acks. Default `30s`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ack_wait: Option<String>,
    /// How often a message is delivered at most; after that it goes to the dead-letter
    /// subject. Default 20.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_deliver: Option<i64>,
    /// Credentials.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth: Option<NatsAuthSpec>,
    /// TLS to the server.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsSpec>,
    /// How events published to topics (a subscriber's `topic`) are written (ofe addition):
    /// `binary` (default; the CloudEvents NATS binding, attributes in headers) or `structured`
    /// (the whole CloudEvent as JSON in the payload), which clients that read only the payload
    /// understand, such as Dapr's JetStream pub/sub component (OpenFunction's async functions).
    /// The subject of topic `T` in namespace `N` is `ofe.topic.N.T` (`ofe-<stream>.topic.N.T`
    /// on a stream other than `OFE`). ofe reads both modes, and payloads without headers that
    /// hold a structured CloudEvent, as Dapr publishes them.
    #[schemars(extend("enum" = ["binary", "structured"]))]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topic_mode: Option<String>,
}

/// NATS credentials: one of user/password, token, or a credentials file.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct NatsAuthSpec {
    /// User name (with `password`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// Password (with `user`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<String>,
    /// Token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    /// Path of a `.creds` file (JWT and NKey seed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials_file: Option<String>,
    /// Fields read from Kubernetes Secrets instead (ofe addition): field name → Secret key.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub secret_key_ref: crate::common::SecretKeyRefs,
}

/// TLS settings for a connection to a broker.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct TlsSpec {
    /// PEM file of the CA that signed the server's certificate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<String>,
    /// PEM client certificate, for mutual TLS (with `keyFile`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert_file: Option<String>,
    /// PEM client key (with `certFile`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_file: Option<String>,
    /// Fields read from Kubernetes Secrets instead (ofe addition): field name → Secret key.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub secret_key_ref: crate::common::SecretKeyRefs,
}

/// A Kafka bus. All its events share one topic, `<topicPrefix>.events`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct KafkaBusSpec {
    /// Comma-separated bootstrap brokers.
    pub brokers: String,
    /// Prefix of the topic ofe uses (`<prefix>.events`). Default `ofe`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topic_prefix: Option<String>,
    /// Partitions when ofe creates the topic. Default 3.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partitions: Option<i32>,
    /// Replication factor when ofe creates the topic. Default 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replication: Option<i32>,
    /// SASL credentials.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sasl: Option<SaslSpec>,
    /// TLS to the brokers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsSpec>,
}

/// SASL credentials for Kafka.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct SaslSpec {
    /// `PLAIN` (default), `SCRAM-SHA-256` or `SCRAM-SHA-512`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mechanism: Option<String>,
    /// User name (or `secretKeyRef.username`).
    #[serde(default)]
    pub username: String,
    /// Password (or `secretKeyRef.password`).
    #[serde(default)]
    pub password: String,
    /// Fields read from Kubernetes Secrets instead (ofe addition): field name → Secret key.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub secret_key_ref: crate::common::SecretKeyRefs,
}

/// OpenFunction's NATS Streaming settings.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct NatsStreamingSpec {
    /// Server URL, e.g. `nats://nats.default:4222`.
    #[serde(rename = "natsURL")]
    pub nats_url: String,
    /// NATS Streaming cluster id (unused by JetStream).
    #[serde(rename = "natsStreamingClusterID")]
    pub nats_streaming_cluster_id: String,
    /// `topic` or `queue`.
    pub subscription_type: String,
    /// Durable subscription name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub durable_subscription_name: Option<String>,
    /// Ack wait time, e.g. `60s`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ack_wait_time: Option<String>,
    /// Maximum unacknowledged messages.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_in_flight: Option<i64>,
    /// Start with new messages only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deliver_new: Option<bool>,
    /// Start at a sequence number.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_at_sequence: Option<i64>,
    /// Start with the last received message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_with_last_received: Option<bool>,
    /// Deliver all available messages.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deliver_all: Option<bool>,
    /// Start at a time delta, e.g. `10m`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_at_time_delta: Option<String>,
    /// Start at a time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_at_time: Option<String>,
    /// Format of `startAtTime`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_at_time_format: Option<String>,
    /// Consumer id. OpenFunction overrode it; ofe ignores it.
    #[serde(default, rename = "consumerID", skip_serializing_if = "Option::is_none")]
    pub consumer_id: Option<String>,
    /// KEDA scaling options for Triggers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scale_option: Option<ScaleOption>,
}

/// The backend an EventBus spec selects.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BusBackend {
    /// The embedded bus.
    Embedded,
    /// The in-memory bus.
    Memory,
    /// NATS JetStream (also for `natsStreaming`).
    JetStream,
    /// Kafka.
    Kafka,
}

impl EventBusSpec {
    /// The backends this spec sets, in field order. More than one is a configuration error.
    pub fn backends(&self) -> Vec<(BusBackend, &'static str)> {
        let mut set = Vec::new();
        if self.nats_streaming.is_some() {
            set.push((BusBackend::JetStream, "natsStreaming"));
        }
        if self.embedded.is_some() {
            set.push((BusBackend::Embedded, "embedded"));
        }
        if self.memory.is_some() {
            set.push((BusBackend::Memory, "memory"));
        }
        if self.jetstream.is_some() {
            set.push((BusBackend::JetStream, "jetstream"));
        }
        if self.kafka.is_some() {
            set.push((BusBackend::Kafka, "kafka"));
        }
        set
    }
}

/// The API's TLS fields as the core's connection settings: the one place they are mapped.
impl From<&TlsSpec> for ofe_core::TlsFiles {
    fn from(tls: &TlsSpec) -> Self {
        Self {
            ca_file: tls.ca_file.as_ref().map(Into::into),
            client: tls
                .cert_file
                .as_ref()
                .zip(tls.key_file.as_ref())
                .map(|(c, k)| (c.into(), k.into())),
        }
    }
}

#[cfg(feature = "nats")]
/// The API's NATS credentials as the core's connection settings.
impl From<&NatsAuthSpec> for ofe_core::nats::NatsAuth {
    fn from(auth: &NatsAuthSpec) -> Self {
        match (&auth.user, &auth.password, &auth.token, &auth.credentials_file) {
            (Some(user), Some(password), _, _) => {
                Self::UserPassword { user: user.clone(), password: password.clone() }
            }
            (_, _, Some(token), _) => Self::Token(token.clone()),
            (_, _, _, Some(file)) => Self::CredentialsFile(std::path::PathBuf::from(file)),
            _ => Self::None,
        }
    }
}
