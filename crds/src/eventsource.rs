//! The `EventSource` kind: where events come from.

use std::collections::BTreeMap;

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::common::{Condition, ScaleOption, SinkSpec};
use crate::eventbus::{NatsAuthSpec, TlsSpec};

/// The desired state of an EventSource. Each source kind is a map keyed by **event name**; one
/// EventSource may hold several kinds and several events at once.
#[derive(CustomResource, Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "events.openfunction.io",
    version = "v1alpha1",
    kind = "EventSource",
    namespaced,
    status = "EventSourceStatus",
    shortname = "es",
    printcolumn(name = "EventBus", type_ = "string", json_path = ".spec.eventBus"),
    printcolumn(name = "Sink", type_ = "string", json_path = ".spec.sink.uri"),
    printcolumn(name = "Status", type_ = "string", json_path = ".status.conditions[-1].type")
)]
#[schemars(extend("x-kubernetes-validations" = [
    { "rule": "has(self.eventBus) || has(self.sink)", "message": "set eventBus to publish to a bus, sink to call a function, or both" }
]))]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct EventSourceSpec {
    /// Name of the EventBus (namespaced first, then ClusterEventBus) events are published to.
    /// A name that no loaded bus defines, such as `default`, means the embedded bus.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event_bus: Option<String>,
    /// Redis sources, keyed by event name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redis: Option<BTreeMap<String, RedisSpec>>,
    /// Kafka sources, keyed by event name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kafka: Option<BTreeMap<String, KafkaSpec>>,
    /// Cron sources, keyed by event name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cron: Option<BTreeMap<String, CronSpec>>,
    /// MQTT sources, keyed by event name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mqtt: Option<BTreeMap<String, MqttSpec>>,
    /// NATS subjects (ofe addition), keyed by event name: core NATS, or a JetStream stream
    /// read with a durable consumer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nats: Option<BTreeMap<String, NatsSourceSpec>>,
    /// AMQP 0-9-1 queues (ofe addition; RabbitMQ and compatible brokers), keyed by event name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub amqp: Option<BTreeMap<String, AmqpSpec>>,
    /// HTTP webhooks (ofe addition), keyed by event name. They accept CloudEvents over HTTP
    /// (binary, structured and batch modes) and wrap any other body as event data.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webhook: Option<BTreeMap<String, WebhookSpec>>,
    /// A function called with every event of this EventSource. With `eventBus` also set, both
    /// receive every event.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sink: Option<SinkSpec>,
    /// OpenFunction build settings. Accepted for compatibility; ofe does not build images.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "crate::schema::preserve_unknown_object")]
    pub build: Option<serde_json::Value>,
    /// Log verbosity, "1" (default) to "3". Maps onto ofe's log filter for this source.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_level: Option<String>,
    /// Namespaces whose Triggers may read this EventSource's events (ofe addition), besides
    /// its own; `*` allows every namespace. Without it, only Triggers of its own namespace
    /// may: a namespace's events are its own unless it shares them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allowed_namespaces: Option<Vec<String>>,
}

/// Whether `allowed` (an `allowedNamespaces` list) lets namespace `reader` in.
pub fn allows(allowed: Option<&Vec<String>>, reader: &str) -> bool {
    allowed.is_some_and(|list| list.iter().any(|ns| ns == "*" || ns == reader))
}

impl EventSourceSpec {
    /// Every event this EventSource defines, as `(kind, event name)` pairs in a stable order.
    pub fn events(&self) -> Vec<(SourceField, &str)> {
        fn names<T>(
            kind: SourceField,
            map: &Option<BTreeMap<String, T>>,
        ) -> Vec<(SourceField, &str)> {
            map.iter().flatten().map(|(name, _)| (kind, name.as_str())).collect()
        }
        let mut all = names(SourceField::Cron, &self.cron);
        all.extend(names(SourceField::Kafka, &self.kafka));
        all.extend(names(SourceField::Mqtt, &self.mqtt));
        all.extend(names(SourceField::Nats, &self.nats));
        all.extend(names(SourceField::Redis, &self.redis));
        all.extend(names(SourceField::Amqp, &self.amqp));
        all.extend(names(SourceField::Webhook, &self.webhook));
        all
    }

    /// Every event name, once each, in order. OpenFunction lets several kinds declare the
    /// same name ("multi sources in one EventSource"): they all publish to that one event, so
    /// a reader of the event (a Trigger input, the EventSource's `sink`) reads it once.
    pub fn event_names(&self) -> std::collections::BTreeSet<&str> {
        self.events().into_iter().map(|(_, name)| name).collect()
    }
}

/// The kinds of input an EventSource can hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SourceField {
    /// `spec.cron`
    Cron,
    /// `spec.kafka`
    Kafka,
    /// `spec.mqtt`
    Mqtt,
    /// `spec.nats`
    Nats,
    /// `spec.redis`
    Redis,
    /// `spec.amqp`
    Amqp,
    /// `spec.webhook`
    Webhook,
}

impl SourceField {
    /// The field name under `spec`.
    pub const fn field(self) -> &'static str {
        match self {
            Self::Cron => "cron",
            Self::Kafka => "kafka",
            Self::Mqtt => "mqtt",
            Self::Nats => "nats",
            Self::Redis => "redis",
            Self::Amqp => "amqp",
            Self::Webhook => "webhook",
        }
    }
}

/// The observed state of an EventSource.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct EventSourceStatus {
    /// Conditions of the EventSource.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}

/// A cron schedule that emits an event each time it fires.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct CronSpec {
    /// `@every 5s`, `@hourly`/`@daily`/`@weekly`/`@monthly`/`@yearly`, or a 5-field
    /// (`m h dom mon dow`) or 6-field (`s m h dom mon dow`) cron expression.
    pub schedule: String,
    /// IANA time zone the schedule is read in (ofe addition), e.g. `Europe/Berlin`. Default UTC.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timezone: Option<String>,
}

/// An HTTP endpoint that turns requests into events.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct WebhookSpec {
    /// URL path on ofe's webhook listener. Default `/<namespace>/<eventsource>/<event>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// Largest request body accepted, in bytes; larger ones get 413. Default 1 MiB.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_payload_size: Option<i64>,
    /// Requests must carry `Authorization: Bearer <token>`; others get 401.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bearer_token: Option<String>,
    /// Most requests accepted per second (ofe addition), with bursts of as many; requests
    /// beyond it get 429 with `Retry-After`, before any other work is done for them. No
    /// limit when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<u32>,
    /// Requests must carry an HMAC-SHA256 signature of the body; others get 401.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hmac: Option<HmacSpec>,
    /// Fields read from Kubernetes Secrets instead (ofe addition): field name → Secret key.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub secret_key_ref: crate::common::SecretKeyRefs,
    /// The JSON Schema the event's data must satisfy (ofe addition); see `SchemaSpec`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schema: Option<crate::common::SchemaSpec>,
}

/// An HMAC-SHA256 signature check, as GitHub and many webhook senders use.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct HmacSpec {
    /// The shared secret (or `secretKeyRef.secret`).
    #[serde(default)]
    pub secret: String,
    /// Header carrying `sha256=<hex>`. Default `X-Hub-Signature-256`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub header: Option<String>,
    /// Fields read from Kubernetes Secrets instead (ofe addition): field name → Secret key.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub secret_key_ref: crate::common::SecretKeyRefs,
}

/// A Kafka topic to consume.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct KafkaSpec {
    /// Comma-separated bootstrap brokers.
    pub brokers: String,
    /// Whether SASL authentication is used.
    pub auth_required: bool,
    /// Topic to consume.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topic: Option<String>,
    /// SASL user name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sasl_username: Option<String>,
    /// SASL password.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sasl_password: Option<String>,
    /// Largest message accepted, in bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_message_bytes: Option<i64>,
    /// SASL mechanism when `authRequired` (ofe addition): `PLAIN` (default), `SCRAM-SHA-256`
    /// or `SCRAM-SHA-512`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sasl_mechanism: Option<String>,
    /// Where a new consumer group starts (ofe addition): `latest` (default, as Knative's
    /// KafkaSource and Argo Events) or `earliest`. A group that has committed offsets always
    /// resumes from them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initial_offset: Option<String>,
    /// Consumer group (ofe addition). Default `ofe-<namespace>-<eventsource>-<event>`: unique
    /// per EventSource and event, shared by the replicas of one EventSource.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consumer_group: Option<String>,
    /// KEDA scaling options.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scale_option: Option<ScaleOption>,
    /// Fields read from Kubernetes Secrets instead (ofe addition): field name → Secret key.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub secret_key_ref: crate::common::SecretKeyRefs,
    /// The JSON Schema the event's data must satisfy (ofe addition); see `SchemaSpec`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schema: Option<crate::common::SchemaSpec>,
}

/// An MQTT topic to subscribe to.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct MqttSpec {
    /// Broker URL (`tcp://`, `ssl://`, `ws://`), optionally with credentials.
    pub url: String,
    /// Topic filter, wildcards allowed.
    pub topic: String,
    /// Client id. OpenFunction overrode it; by default ofe uses
    /// `ofe-<namespace>-<eventsource>-<event>-<8 hex of the topic>`, so that a changed topic
    /// starts a new persistent session instead of inheriting the old subscription.
    #[serde(default, rename = "consumerID", skip_serializing_if = "Option::is_none")]
    pub consumer_id: Option<String>,
    /// Subscription QoS (0, 1 or 2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub qos: Option<i64>,
    /// Whether retained messages (the broker's last value of a topic, sent on every
    /// subscribe) become events. Default false: a reconnect does not replay them as new events.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retain: Option<bool>,
    /// Clean session flag.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clean_session: Option<bool>,
    /// CA certificate for `ssl://`/`wss://`: PEM text, or the path of a PEM file. Default:
    /// the system's roots.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_cert: Option<String>,
    /// Client certificate for mutual TLS (with `clientKey`): PEM text or a file path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_cert: Option<String>,
    /// Client key (with `clientCert`): PEM text or a file path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_key: Option<String>,
    /// MQTT protocol version (ofe addition): `3.1.1` (default) or `5`. Version 5 carries
    /// binary-mode CloudEvents in user properties.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol_version: Option<String>,
    /// Shared subscription group (ofe addition): subscribes to `$share/<group>/<topic>`, so the
    /// replicas of this EventSource split the messages instead of each getting all of them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub share_group: Option<String>,
    /// Fields read from Kubernetes Secrets instead (ofe addition): field name → Secret key.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub secret_key_ref: crate::common::SecretKeyRefs,
    /// The JSON Schema the event's data must satisfy (ofe addition); see `SchemaSpec`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schema: Option<crate::common::SchemaSpec>,
}

/// A Redis input: OpenFunction's connection fields, plus what to read (`stream` or `channel`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RedisSpec {
    /// A stream to read in a consumer group (ofe addition): at-least-once, each entry
    /// acknowledged (`XACK`) after the bus has its event, and entries left pending by a dead
    /// consumer reclaimed (`XAUTOCLAIM`). Set exactly one of `stream` and `channel`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream: Option<String>,
    /// A pub/sub channel, or a pattern when it holds `*`, `?` or `[` (ofe addition). Pub/sub
    /// is at-most-once by nature: messages published while ofe is not subscribed are lost.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub channel: Option<String>,
    /// The stream consumer group (ofe addition). Default `ofe-<namespace>-<eventsource>-<event>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consumer_group: Option<String>,
    /// Where a new stream consumer group starts (ofe addition): `latest` (default) or `earliest`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initial_offset: Option<String>,
    /// CA certificate for `enableTLS` (ofe addition): PEM text, or the path of a PEM file.
    /// Default: the system's roots.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_cert: Option<String>,
    /// `host:port` of the Redis server.
    pub redis_host: String,
    /// Password; may be empty (or `secretKeyRef.redisPassword`).
    #[serde(default)]
    pub redis_password: String,
    /// Use TLS.
    #[serde(default, rename = "enableTLS", skip_serializing_if = "Option::is_none")]
    pub enable_tls: Option<bool>,
    /// Sentinel failover.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failover: Option<bool>,
    /// Sentinel master name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sentinel_master_name: Option<String>,
    /// Redelivery interval.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redeliver_interval: Option<String>,
    /// Processing timeout.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub processing_timeout: Option<String>,
    /// `node` or `cluster`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redis_type: Option<String>,
    /// Database number.
    #[serde(default, rename = "redisDB", skip_serializing_if = "Option::is_none")]
    pub redis_db: Option<i64>,
    /// Maximum retries.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redis_max_retries: Option<i64>,
    /// Minimum retry backoff.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redis_min_retry_interval: Option<String>,
    /// Maximum retry backoff.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redis_max_retry_interval: Option<String>,
    /// Dial timeout.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dial_timeout: Option<String>,
    /// Read timeout.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub read_timeout: Option<String>,
    /// Write timeout.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub write_timeout: Option<String>,
    /// Connection pool size.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pool_size: Option<i64>,
    /// Pool wait timeout.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pool_timeout: Option<String>,
    /// Maximum connection age.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_conn_age: Option<String>,
    /// Minimum idle connections.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_idle_conns: Option<i64>,
    /// Idle check frequency.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_check_frequency: Option<String>,
    /// Idle timeout.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_timeout: Option<String>,
    /// Fields read from Kubernetes Secrets instead (ofe addition): field name → Secret key.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub secret_key_ref: crate::common::SecretKeyRefs,
    /// The JSON Schema the event's data must satisfy (ofe addition); see `SchemaSpec`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schema: Option<crate::common::SchemaSpec>,
}

/// A NATS input (ofe addition).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct NatsSourceSpec {
    /// Server URL(s), comma-separated, e.g. `nats://127.0.0.1:4222`.
    pub url: String,
    /// Subject to read; wildcards (`*`, `>`) allowed.
    pub subject: String,
    /// Core NATS queue group, so replicas split the messages. Default
    /// `ofe-<namespace>-<eventsource>-<event>`. Core NATS is at-most-once: messages published
    /// while ofe is not subscribed are lost; use `jetstream` when that matters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue_group: Option<String>,
    /// Read through a JetStream durable consumer instead (at-least-once: each message is
    /// acknowledged after the bus has its event).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jetstream: Option<NatsJetStreamSourceSpec>,
    /// Credentials.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth: Option<NatsAuthSpec>,
    /// TLS to the server.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsSpec>,
    /// The JSON Schema the event's data must satisfy (ofe addition); see `SchemaSpec`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schema: Option<crate::common::SchemaSpec>,
}

/// How a NATS input reads JetStream.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct NatsJetStreamSourceSpec {
    /// The stream holding `subject`.
    pub stream: String,
    /// Durable consumer name, shared by replicas. Default
    /// `ofe-<namespace>-<eventsource>-<event>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub durable: Option<String>,
    /// Where a new consumer starts: `latest` (default) or `earliest`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initial_offset: Option<String>,
}

/// An AMQP 0-9-1 input (ofe addition): one queue of RabbitMQ or a compatible broker, read
/// with manual acknowledgements, each sent only after the bus has the event.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct AmqpSpec {
    /// Broker URL: `amqp://user:password@host:5672/vhost` (`%2f` is the default vhost `/`),
    /// or `amqps://` for TLS.
    pub url: String,
    /// The queue to consume. Replicas of the EventSource share it (competing consumers).
    pub queue: String,
    /// Declare the queue (durable) when it does not exist, and with `exchange`, the exchange
    /// too. Default `false`: the queue must exist, as most platform teams declare their
    /// topology themselves.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub declare: Option<bool>,
    /// Bind the queue to this exchange, with `routingKey`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exchange: Option<String>,
    /// The type of `exchange` when ofe declares it: `topic` (default), `direct`, `fanout` or
    /// `headers`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exchange_type: Option<String>,
    /// The binding's routing key; default `#` (everything, on a topic exchange).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub routing_key: Option<String>,
    /// Messages the broker sends ahead of acknowledgements (QoS prefetch); default 256.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefetch: Option<u16>,
    /// TLS to the broker (with `amqps://`): a CA file, and a client certificate and key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsSpec>,
    /// The JSON Schema the event's data must satisfy (ofe addition); see `SchemaSpec`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schema: Option<crate::common::SchemaSpec>,
}
