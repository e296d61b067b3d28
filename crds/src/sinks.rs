//! Sinks that are brokers (ofe additions on `sink`): an event is published to a Kafka topic,
//! a NATS subject (core or JetStream), an MQTT topic, a Redis stream or an AMQP exchange, in
//! that protocol's CloudEvents binding, and counts as delivered once the broker acknowledged
//! it. The subscriber's `delivery` (retries, backoff, dead letter) applies as to any sink.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::eventbus::{NatsAuthSpec, TlsSpec};

/// A Kafka topic: each event is a record in the Kafka binding's binary mode (`ce_` headers).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct KafkaSinkSpec {
    /// Comma-separated bootstrap brokers.
    pub brokers: String,
    /// The topic.
    pub topic: String,
    /// The record key: a CEL expression over the event, e.g. `data.vehicleId`. Default: the
    /// event's `partitionkey` extension (the CloudEvents Partitioning extension), else none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// SASL user name (PLAIN, or `saslMechanism`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sasl_username: Option<String>,
    /// SASL password.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sasl_password: Option<String>,
    /// `PLAIN` (default), `SCRAM-SHA-256` or `SCRAM-SHA-512`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sasl_mechanism: Option<String>,
    /// TLS to the brokers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsSpec>,
    /// Fields read from Secrets: `saslUsername`, `saslPassword`.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub secret_key_ref: crate::common::SecretKeyRefs,
}

/// A NATS subject: each event is a message in the NATS binding's binary mode (`ce-` headers).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct NatsSinkSpec {
    /// Server URL(s), comma-separated.
    pub url: String,
    /// The subject (no wildcards).
    pub subject: String,
    /// Publish to JetStream and wait for the stream's acknowledgement (the event's `id` as
    /// `Nats-Msg-Id`, so the stream drops a retry's copy). Default `false`: core NATS, where
    /// the server's answer to a flush is the acknowledgement.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jetstream: Option<bool>,
    /// Credentials.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth: Option<NatsAuthSpec>,
    /// TLS to the server.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsSpec>,
}

/// An MQTT topic: each event is a message in the MQTT 3.1.1 binding's structured mode.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct MqttSinkSpec {
    /// Broker URL: `tcp://` or `ssl://` (also `mqtt://`, `mqtts://`), with credentials if any.
    pub url: String,
    /// The topic (no wildcards).
    pub topic: String,
    /// QoS 1 (default: delivered at the broker's PUBACK) or 2 (at its PUBCOMP). QoS 0 has no
    /// acknowledgement, so nothing could count as delivered: it is refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub qos: Option<u8>,
    /// Publish as the topic's retained message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retain: Option<bool>,
    /// TLS (`ssl://`): a CA file, and a client certificate and key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsSpec>,
}

/// A Redis stream: each event is an entry (`XADD`), its attributes as `ce_<name>` fields, its
/// data as `data` and its media type as `datacontenttype`, as the Redis source reads them.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RedisSinkSpec {
    /// `host:port` of the Redis server.
    pub redis_host: String,
    /// Password; may be empty (or `secretKeyRef.redisPassword`).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub redis_password: String,
    /// Use TLS.
    #[serde(default, rename = "enableTLS", skip_serializing_if = "Option::is_none")]
    pub enable_tls: Option<bool>,
    /// Database number.
    #[serde(default, rename = "redisDB", skip_serializing_if = "Option::is_none")]
    pub redis_db: Option<i64>,
    /// The stream.
    pub stream: String,
    /// Trim the stream to about this many entries (`MAXLEN ~`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_len: Option<u64>,
    /// Fields read from Secrets: `redisPassword`.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub secret_key_ref: crate::common::SecretKeyRefs,
}

/// An AMQP 0-9-1 exchange (RabbitMQ): each event is a persistent message in the AMQP binding's
/// binary mode (`cloudEvents_` headers), confirmed by the broker (publisher confirms).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct AmqpSinkSpec {
    /// Broker URL: `amqp://user:password@host:5672/vhost`, or `amqps://` for TLS.
    pub url: String,
    /// The exchange; `""` is the default exchange, which routes to the queue named by the
    /// routing key.
    #[serde(default)]
    pub exchange: String,
    /// The routing key. Default `""`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub routing_key: Option<String>,
    /// TLS to the broker (with `amqps://`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsSpec>,
}
