//! Types shared by several kinds: sinks, references, Secret keys, status conditions and KEDA
//! scale options.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Where events are delivered synchronously: an HTTP endpoint given as a URI, or a reference to a
/// Kubernetes object (a Knative Service or an OpenFunction Function) that resolves to one.
///
/// When both are set, `uri` wins, as in OpenFunction.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[schemars(extend("x-kubernetes-validations" = [
    { "rule": "has(self.uri) || has(self.ref) || has(self.kafka) || has(self.nats) || has(self.mqtt) || has(self.redis) || has(self.amqp)", "message": "set uri, ref to a Knative Service or an OpenFunction Function, or a broker (kafka, nats, mqtt, redis, amqp)" }
]))]
#[serde(deny_unknown_fields)]
pub struct SinkSpec {
    /// A reference to a Knative Service (`serving.knative.dev/v1`) or an OpenFunction Function
    /// (`core.openfunction.io/v1beta1` or `v1beta2`) whose address is used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub r#ref: Option<Reference>,
    /// The absolute HTTP(S) URL events are POSTed to. It wins over `ref`. (ofe addition:)
    /// its path and query may hold CEL expressions over the event in braces, each value
    /// percent-encoded, e.g. `http://fleet/vehicles/{data.vehicleId}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uri: Option<String>,
    /// The request's method (ofe addition): `POST` (the default), `PUT` or `PATCH`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<HttpMethod>,
    /// Headers sent with every request (ofe addition): name → value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub headers: Option<BTreeMap<String, String>>,
    /// Headers computed for each event (ofe addition): name → a CEL expression over the
    /// event, e.g. `X-Vehicle: data.vehicleId`. An event it cannot evaluate is dead-lettered.
    #[serde(default, rename = "dynamicHeaders", skip_serializing_if = "Option::is_none")]
    pub dynamic_headers: Option<BTreeMap<String, String>>,
    /// How the CloudEvent is sent (ofe addition): `binary` (the default: attributes as `ce-`
    /// headers, the data as the body) or `structured` (one `application/cloudevents+json`
    /// document).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<ContentMode>,
    /// How ofe authenticates to the sink (ofe addition); its values are best read from a
    /// Secret with `secretKeyRef`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth: Option<SinkAuth>,
    /// Publish to a Kafka topic instead of an HTTP request (ofe addition).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kafka: Option<Box<crate::sinks::KafkaSinkSpec>>,
    /// Publish to a NATS subject, core or JetStream (ofe addition).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nats: Option<Box<crate::sinks::NatsSinkSpec>>,
    /// Publish to an MQTT topic (ofe addition).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mqtt: Option<Box<crate::sinks::MqttSinkSpec>>,
    /// Add to a Redis stream (ofe addition).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redis: Option<Box<crate::sinks::RedisSinkSpec>>,
    /// Publish to an AMQP 0-9-1 exchange (ofe addition).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub amqp: Option<Box<crate::sinks::AmqpSinkSpec>>,
}

impl SinkSpec {
    /// The broker this sink publishes to (`kafka`, `nats`, …), if it is one; every broker it
    /// names, so that a check can refuse more than one.
    pub fn brokers(&self) -> Vec<&'static str> {
        let set = [
            ("kafka", self.kafka.is_some()),
            ("nats", self.nats.is_some()),
            ("mqtt", self.mqtt.is_some()),
            ("redis", self.redis.is_some()),
            ("amqp", self.amqp.is_some()),
        ];
        set.iter().filter(|(_, on)| *on).map(|(name, _)| *name).collect()
    }
}

/// A sink's credentials (ofe addition): one of a bearer token, a user name and password
/// (basic), an API key in a header, or OAuth2 client credentials; and, alone or beside one of
/// those, a client certificate (`tls`). Credentials never show in logs, metrics, status or
/// `ofe tail`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct SinkAuth {
    /// Sent as `Authorization: Bearer <token>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bearer_token: Option<String>,
    /// With `password`: HTTP basic authentication.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    /// The basic-authentication password.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<String>,
    /// An API key, sent in `apiKeyHeader`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_key: Option<String>,
    /// The header the API key goes in. Default `X-API-Key`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_key_header: Option<String>,
    /// OAuth2 client credentials: a token is fetched from the token endpoint, sent as
    /// `Authorization: Bearer <token>`, and kept until shortly before it expires.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oauth2: Option<OAuth2Spec>,
    /// A client certificate for this sink (mutual TLS), and a CA to trust for it; instead of
    /// `ofe run --sink-cert-file`/`--sink-key-file`, which every other sink keeps using.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<crate::TlsSpec>,
    /// Fields read from Secrets, e.g. `secretKeyRef: { bearerToken: { name: fn, key: token } }`.
    #[serde(default, rename = "secretKeyRef", skip_serializing_if = "BTreeMap::is_empty")]
    pub secret_key_ref: SecretKeyRefs,
}

/// OAuth2's client-credentials grant (RFC 6749, section 4.4), as Go's
/// `golang.org/x/oauth2/clientcredentials` makes it: the client authenticates with HTTP basic
/// authentication, or, if the token endpoint refuses that, with the credentials in the form.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct OAuth2Spec {
    /// The token endpoint, an absolute http(s) URL.
    pub token_url: String,
    /// The client's id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,
    /// The client's secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_secret: Option<String>,
    /// The scopes asked for, sent space-separated as `scope`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub scopes: Vec<String>,
    /// More parameters of the token request, e.g. `audience` for Auth0.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub endpoint_params: BTreeMap<String, String>,
    /// Fields read from Secrets: `clientId`, `clientSecret`.
    #[serde(default, rename = "secretKeyRef", skip_serializing_if = "BTreeMap::is_empty")]
    pub secret_key_ref: SecretKeyRefs,
}

/// An HTTP sink's method.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum HttpMethod {
    /// `POST`, as Knative and OpenFunction deliver.
    #[default]
    #[serde(rename = "POST")]
    Post,
    /// `PUT`.
    #[serde(rename = "PUT")]
    Put,
    /// `PATCH`.
    #[serde(rename = "PATCH")]
    Patch,
}

/// The CloudEvents HTTP content mode of a request.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum ContentMode {
    /// Attributes as `ce-` headers, the data as the body.
    #[default]
    Binary,
    /// The whole event as one JSON document (`application/cloudevents+json`).
    Structured,
}

/// The JSON Schema an EventSource event's data must satisfy (ofe addition): exactly one of an
/// inline schema, a ConfigMap key holding it, or a file. Compiled once, when the EventSource
/// starts. A webhook answers 400 with the JSON path of the first violation; a broker source
/// publishes the event flagged `ofeinvalid` with the violation, as it does a malformed
/// CloudEvent, so that nothing is lost and a Trigger can route it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct SchemaSpec {
    /// The schema itself (JSON Schema 2020-12 unless its `$schema` names another draft).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "crate::schema::preserve_unknown_object")]
    pub json_schema: Option<serde_json::Value>,
    /// A key of a ConfigMap in the EventSource's namespace whose value is the schema (JSON or
    /// YAML). `ofe operator` reads the ConfigMap; `ofe run` reads it from a ConfigMap document
    /// in its manifests.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_map_key_ref: Option<ConfigMapKeySelector>,
    /// The path of a file holding the schema (JSON or YAML).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
}

/// A key of a ConfigMap.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ConfigMapKeySelector {
    /// The ConfigMap's name.
    pub name: String,
    /// The key in its `data`.
    pub key: String,
}

/// A reference to a Kubernetes object that exposes an address.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Reference {
    /// Kind of the referent, e.g. `Service` or `Function`.
    pub kind: String,
    /// Namespace of the referent. Defaults to the namespace of the referring object.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// Name of the referent.
    pub name: String,
    /// API version of the referent, e.g. `serving.knative.dev/v1`.
    pub api_version: String,
}

/// A key of a Kubernetes Secret whose value a field takes (ofe addition).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SecretKeySelector {
    /// The Secret's name.
    pub name: String,
    /// The key in the Secret's `data`.
    pub key: String,
    /// The Secret's namespace. Default: the resource's own; a ClusterEventBus must give one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
}

/// Fields of an object read from Kubernetes Secrets (ofe addition): field name → Secret key,
/// e.g. `secretKeyRef: { saslPassword: { name: kafka, key: password } }`. `ofe operator` reads
/// the Secrets and sets the fields (a field that takes a file path gets a file holding the
/// value); `ofe run` reads them from variables and files (`OFE_SECRET_<NAME>_<KEY>`,
/// `--secrets-dir`). See
/// [`crate::validate::SECRET_FIELDS`] for the fields that may be read so.
pub type SecretKeyRefs = BTreeMap<String, SecretKeySelector>;

pub use ofe_core::health::Condition;

/// KEDA scaling options shared by the Kafka source and the NATS Streaming bus.
///
/// ofe accepts these fields so that OpenFunction manifests load unchanged; how they map onto
/// autoscaling in ofe is described in the docs.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ScaleOption {
    /// Older OpenFunction releases carried the workload type here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workload_type: Option<String>,
    /// KEDA polling interval in seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub polling_interval: Option<i32>,
    /// KEDA cooldown period in seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cooldown_period: Option<i32>,
    /// Minimum replica count.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_replica_count: Option<i32>,
    /// Maximum replica count.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_replica_count: Option<i32>,
    /// KEDA `AdvancedConfig`, passed through unchanged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "crate::schema::preserve_unknown_object")]
    pub advanced: Option<serde_json::Value>,
    /// KEDA trigger metadata.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<BTreeMap<String, String>>,
    /// KEDA `ScaledObjectAuthRef`, passed through unchanged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "crate::schema::preserve_unknown_object")]
    pub auth_ref: Option<serde_json::Value>,
    /// Kafka consumer group (Kafka scale option). OpenFunction ignored it; so does ofe.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consumer_group: Option<String>,
    /// Kafka topic (Kafka scale option).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topic: Option<String>,
    /// Lag that triggers scaling, as a string (Kafka and NATS Streaming scale options).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lag_threshold: Option<String>,
    /// NATS monitoring endpoint (NATS Streaming scale option).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nats_server_monitoring_endpoint: Option<String>,
    /// NATS Streaming queue group (ignored, as in OpenFunction).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue_group: Option<String>,
    /// NATS Streaming durable name (ignored, as in OpenFunction).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub durable_name: Option<String>,
    /// NATS Streaming subject (ignored, as in OpenFunction).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
}
