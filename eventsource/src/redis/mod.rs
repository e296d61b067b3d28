//! The Redis EventSource: a stream read in a consumer group, or a pub/sub channel.
//!
//! **Streams** (`stream`) are at-least-once:
//! - The group `ofe-<namespace>-<eventsource>-<event>` (or `consumerGroup`) is created with
//!   the stream if missing, at `initialOffset` (`latest` by default). The consumer is named
//!   after the host, so a restarted process first takes back its own pending entries.
//! - Entries are read with `XREADGROUP` in batches, published to the bus, and acknowledged
//!   with `XACK` only after the bus has every event of the batch.
//! - Every `redeliverInterval` (default 60s) entries pending longer than `processingTimeout`
//!   (default 15s) at any consumer of the group, such as a replica that died, are claimed
//!   with `XAUTOCLAIM` and published.
//! - An entry maps to an event like this: fields `ce_<attribute>` make a binary-mode
//!   CloudEvent whose data is the `data` field and whose content type is the
//!   `datacontenttype` (or `content-type`) field; otherwise the `data` field, when present,
//!   is the payload (a structured CloudEvent in it is kept as sent); otherwise the payload is
//!   the entry's fields as a JSON object. Wrapped events have the stream as `subject`, the
//!   entry's time, and an id derived from stream and entry id, so a redelivery is a duplicate.
//!
//! **Pub/sub** (`channel`, a pattern when it holds `*`, `?` or `[`) is at-most-once by nature:
//! Redis keeps nothing for a subscriber that is not connected, so messages published while
//! ofe is down or reconnecting are lost. Use a stream when that matters. Each message's
//! payload becomes an event (a structured CloudEvent is kept), with the channel as `subject`.
//!
//! `enableTLS` connects over TLS (`rediss`), trusting `caCert` (an addition) or the system's
//! roots. Sentinel failover and Redis Cluster are refused with a clear message for now.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt as _;
use ofe_core::EventBus;
use ofe_crds::RedisSpec;
use ofe_crds::diagnostic::Diagnostic;
use redis::AsyncCommands as _;
use redis::aio::MultiplexedConnection;
use redis::streams::{StreamAutoClaimOptions, StreamId, StreamReadOptions, StreamReadReply};
use redis::{AsyncConnectionConfig, Client, IntoConnectionInfo as _};
use tokio_util::sync::CancellationToken;

use crate::SourceError;
use crate::ingest::{BATCH, Message, Origin, Publisher};
use crate::metrics::SourceMetrics;

/// The CloudEvents `type` of events made from plain Redis entries and messages.
pub const REDIS_EVENT_TYPE: &str = "io.openfunction.events.redis";

/// UUID namespace of derived ids.
const ID_NAMESPACE: uuid::Uuid = uuid::Uuid::from_u128(0x6f66_655f_7265_6469_8000_0000_0000_0001);

/// How long one blocking read waits for new entries.
const BLOCK: Duration = Duration::from_millis(1000);

#[derive(Clone, Debug)]
enum Input {
    Stream(String),
    Channel(String),
    Pattern(String),
}

/// One Redis event of one EventSource.
#[derive(Clone, Debug)]
pub struct RedisSource {
    pub(crate) origin: Origin,
    input: Input,
    client: Client,
    group: String,
    consumer: String,
    start: &'static str,
    claim_every: Duration,
    min_idle: Duration,
    config: AsyncConnectionConfig,
}

impl RedisSource {
    /// The source for event `event` of EventSource `eventsource` in `namespace`.
    pub fn new(
        namespace: &str,
        eventsource: &str,
        event: &str,
        spec: &RedisSpec,
    ) -> Result<Self, SourceError> {
        let field = format!("spec.redis.{event}");
        crate::source::checked(check(&field, spec))?;
        let invalid = |path: &str, message: String| SourceError::Invalid {
            path: if path.is_empty() { field.clone() } else { format!("{field}.{path}") },
            message,
        };
        let refuse = |path: &str, what: &str| {
            invalid(
                path,
                format!(
                    "{what} is not available in this version of ofe yet; remove the field to connect directly"
                ),
            )
        };
        if spec.failover == Some(true) {
            return Err(refuse("failover", "Sentinel failover"));
        }
        if spec.redis_type.as_deref().is_some_and(|t| t != "node") {
            return Err(refuse("redisType", "Redis Cluster"));
        }
        let input = match (&spec.stream, &spec.channel) {
            (Some(stream), None) => Input::Stream(stream.clone()),
            (None, Some(channel)) if channel.contains(['*', '?', '[']) => {
                Input::Pattern(channel.clone())
            }
            (None, Some(channel)) => Input::Channel(channel.clone()),
            _ => {
                return Err(invalid(
                    "",
                    "set exactly one of `stream: <name>` (at-least-once, consumer group) and \
                     `channel: <name or pattern>` (pub/sub, at-most-once)"
                        .into(),
                ));
            }
        };
        let duration = |path: &str, value: &Option<String>, default: Duration| {
            value.as_deref().map_or(Ok(default), |text| {
                ofe_crds::duration::parse(text).map_err(|e| invalid(path, e.to_string()))
            })
        };
        let claim_every =
            duration("redeliverInterval", &spec.redeliver_interval, Duration::from_secs(60))?;
        let min_idle =
            duration("processingTimeout", &spec.processing_timeout, Duration::from_secs(15))?;
        let dial = duration("dialTimeout", &spec.dial_timeout, Duration::from_secs(5))?;
        let read = duration("readTimeout", &spec.read_timeout, Duration::from_secs(3))?;
        let host = spec.redis_host.trim();
        let tls = spec.enable_tls == Some(true);
        let scheme = if tls { "rediss" } else { "redis" };
        let info = format!("{scheme}://{host}")
            .into_connection_info()
            .map_err(|e| invalid("redisHost", format!("`{host}` is not `host:port`: {e}")))?;
        let mut settings = info.redis_settings().clone().set_db(spec.redis_db.unwrap_or(0));
        if !spec.redis_password.is_empty() {
            settings = settings.set_password(&spec.redis_password);
        }
        let info = info.set_redis_settings(settings);
        let client = match (&spec.ca_cert, tls) {
            (Some(ca), true) => {
                let root_cert = Some(crate::ingest::pem(&format!("{field}.caCert"), ca)?);
                // The Redis client builds its TLS configuration from the process's default
                // rustls provider; make it ring, as for every other TLS connection of ofe.
                let _ = rustls::crypto::ring::default_provider().install_default();
                Client::build_with_tls(info, redis::TlsCertificates { client_tls: None, root_cert })
            }
            (Some(_), false) => {
                return Err(invalid("caCert", "applies with `enableTLS: true` only".into()));
            }
            (None, _) => {
                if tls {
                    let _ = rustls::crypto::ring::default_provider().install_default();
                }
                Client::open(info)
            }
        }
        .map_err(|e| invalid("redisHost", e.to_string()))?;
        let host_name = ofe_core::host_name().unwrap_or_else(|| "ofe".into());
        Ok(Self {
            origin: Origin::of(
                namespace,
                eventsource,
                "redis",
                event,
                REDIS_EVENT_TYPE,
                ID_NAMESPACE,
            )
            .with_schema(&format!("spec.redis.{event}"), spec.schema.as_ref())?,
            input,
            client,
            group: spec
                .consumer_group
                .clone()
                .unwrap_or_else(|| format!("ofe-{namespace}-{eventsource}-{event}")),
            consumer: host_name,
            start: if spec.initial_offset.as_deref() == Some("earliest") { "0" } else { "$" },
            claim_every,
            min_idle,
            config: AsyncConnectionConfig::new()
                .set_connection_timeout(Some(dial))
                .set_response_timeout(Some(read)),
        })
    }

    /// The stream consumer group.
    pub fn group(&self) -> &str {
        &self.group
    }

    /// This process's consumer name in the group.
    pub fn consumer(&self) -> &str {
        &self.consumer
    }

    /// Uses `consumer` as this process's consumer name (replicas need distinct ones; the host
    /// name is the default).
    pub fn with_consumer(mut self, consumer: impl Into<String>) -> Self {
        self.consumer = consumer.into();
        self
    }

    /// Runs until `shutdown`, reconnecting with backoff.
    pub async fn run(
        self,
        bus: Arc<dyn EventBus>,
        metrics: SourceMetrics,
        shutdown: CancellationToken,
    ) {
        let publisher = self.origin.publisher(&*bus, &metrics, &shutdown);
        let (this, publisher) = (&self, &publisher);
        let session = || async move {
            match &this.input {
                Input::Stream(stream) => this.read_stream(stream, publisher).await,
                Input::Channel(_) | Input::Pattern(_) => this.read_channel(publisher).await,
            }
        };
        let what = format!("the Redis connection of event `{}`", self.origin.labels.event);
        self.origin.reconnecting(&what, &shutdown, session).await;
    }

    /// Reads the stream until shutdown (`Ok`) or a connection error.
    async fn read_stream(&self, stream: &str, publisher: &Publisher<'_>) -> redis::RedisResult<()> {
        // Blocking reads get a connection of their own, without a response timeout shorter
        // than the block; acknowledgements and claims use the other.
        let mut reader = self
            .client
            .get_multiplexed_async_connection_with_config(
                &self.config.clone().set_response_timeout(Some(BLOCK + Duration::from_secs(5))),
            )
            .await?;
        let mut writer =
            self.client.get_multiplexed_async_connection_with_config(&self.config).await?;
        self.origin.connected();
        let created: redis::RedisResult<()> =
            writer.xgroup_create_mkstream(stream, &self.group, self.start).await;
        match created {
            Err(e) if e.code() != Some("BUSYGROUP") => return Err(e),
            _ => {}
        }
        tracing::info!(stream, group = %self.group, consumer = %self.consumer, "reading Redis stream");
        // First this consumer's own pending entries (read before a restart, never acked).
        let mut pending_after = Some("0".to_string());
        let mut next_claim = Instant::now();
        loop {
            if Instant::now() >= next_claim {
                self.claim(stream, &mut writer, publisher).await?;
                next_claim = Instant::now() + self.claim_every;
            }
            let mut options =
                StreamReadOptions::default().group(&self.group, &self.consumer).count(BATCH);
            let id = match &pending_after {
                Some(after) => after.clone(),
                None => {
                    options = options.block(BLOCK.as_millis() as usize);
                    ">".to_string()
                }
            };
            let (keys, ids) = ([stream], [id.as_str()]);
            let reply: Option<StreamReadReply> = tokio::select! {
                () = publisher.shutdown.cancelled() => return Ok(()),
                reply = reader.xread_options(&keys, &ids, &options) => reply?,
            };
            let entries: Vec<StreamId> =
                reply.into_iter().flat_map(|r| r.keys).flat_map(|k| k.ids).collect();
            if pending_after.is_some() {
                match entries.last() {
                    Some(last) => pending_after = Some(last.id.clone()),
                    None => {
                        pending_after = None;
                        continue;
                    }
                }
            }
            if !self.publish_and_ack(stream, &entries, &mut writer, publisher).await? {
                return Ok(());
            }
        }
    }

    /// Claims entries idle longer than `processingTimeout` anywhere in the group.
    async fn claim(
        &self,
        stream: &str,
        writer: &mut MultiplexedConnection,
        publisher: &Publisher<'_>,
    ) -> redis::RedisResult<()> {
        let mut start = "0-0".to_string();
        loop {
            let reply: redis::streams::StreamAutoClaimReply = writer
                .xautoclaim_options(
                    stream,
                    &self.group,
                    &self.consumer,
                    self.min_idle.as_millis() as u64,
                    &start,
                    StreamAutoClaimOptions::default().count(BATCH),
                )
                .await?;
            if !reply.claimed.is_empty() {
                tracing::info!(
                    stream,
                    claimed = reply.claimed.len(),
                    "claimed Redis entries another consumer left pending"
                );
                if !self.publish_and_ack(stream, &reply.claimed, writer, publisher).await? {
                    return Ok(());
                }
            }
            if reply.next_stream_id == "0-0" {
                return Ok(());
            }
            start = reply.next_stream_id;
        }
    }

    /// Publishes the entries' events and acknowledges them; `false` on shutdown.
    async fn publish_and_ack(
        &self,
        stream: &str,
        entries: &[StreamId],
        writer: &mut MultiplexedConnection,
        publisher: &Publisher<'_>,
    ) -> redis::RedisResult<bool> {
        if entries.is_empty() {
            return Ok(true);
        }
        publisher.received(entries.len());
        let events: Vec<_> = entries.iter().map(|entry| self.entry_event(stream, entry)).collect();
        if !publisher.all(&events).await {
            return Ok(false);
        }
        let ids: Vec<&str> = entries.iter().map(|e| e.id.as_str()).collect();
        let _: usize = writer.xack(stream, &self.group, &ids).await?;
        Ok(true)
    }

    /// The event for a stream entry (see the module documentation).
    pub fn entry_event(&self, stream: &str, entry: &StreamId) -> cloudevents::Event {
        let fields: BTreeMap<&str, Vec<u8>> = entry
            .map
            .iter()
            .filter_map(|(k, v)| {
                redis::from_redis_value_ref::<Vec<u8>>(v).ok().map(|v| (k.as_str(), v))
            })
            .collect();
        let text = |v: &[u8]| String::from_utf8_lossy(v).into_owned();
        let binary: Vec<(String, String)> = fields
            .iter()
            .filter_map(|(k, v)| {
                k.strip_prefix("ce_")
                    .or_else(|| k.strip_prefix("ce-"))
                    .map(|n| (n.to_string(), text(v)))
            })
            .collect();
        let content_type =
            fields.get("datacontenttype").or_else(|| fields.get("content-type")).map(|v| text(v));
        let payload = match fields.get("data") {
            Some(data) => data.clone(),
            None => {
                let object: serde_json::Map<String, serde_json::Value> = fields
                    .iter()
                    .map(|(k, v)| ((*k).to_string(), serde_json::Value::String(text(v))))
                    .collect();
                serde_json::to_vec(&object).unwrap_or_default()
            }
        };
        let millis = entry.id.split('-').next().and_then(|m| m.parse::<i64>().ok());
        self.origin.event(&Message {
            payload: &payload,
            content_type: content_type.as_deref(),
            binary: binary.iter().map(|(n, v)| (n.as_str(), v.as_str())).collect(),
            subject: stream,
            identity: Some(format!("{stream}/{}", entry.id).into_bytes()),
            time: millis.and_then(chrono::DateTime::<chrono::Utc>::from_timestamp_millis),
            extensions: Vec::new(),
        })
    }

    /// Reads the channel until shutdown (`Ok`) or a connection error.
    async fn read_channel(&self, publisher: &Publisher<'_>) -> redis::RedisResult<()> {
        let mut pubsub = self.client.get_async_pubsub().await?;
        self.origin.connected();
        match &self.input {
            Input::Pattern(pattern) => pubsub.psubscribe(pattern).await?,
            Input::Channel(channel) => pubsub.subscribe(channel).await?,
            Input::Stream(_) => return Ok(()),
        }
        tracing::info!(input = ?self.input, "subscribed to Redis pub/sub (at-most-once)");
        let mut messages = pubsub.into_on_message();
        loop {
            let message = tokio::select! {
                () = publisher.shutdown.cancelled() => return Ok(()),
                message = messages.next() => message,
            };
            let Some(message) = message else {
                return Err(redis::RedisError::from(std::io::Error::new(
                    std::io::ErrorKind::ConnectionReset,
                    "the pub/sub connection closed",
                )));
            };
            publisher.received(1);
            let event = self.origin.event(&Message {
                payload: message.get_payload_bytes(),
                subject: message.get_channel_name(),
                ..Message::default()
            });
            if !publisher.one(&event).await {
                return Ok(());
            }
        }
    }
}

/// The checks of one `spec.redis` event's fields on their own, each found at once (`ofe
/// validate` lists them all); `path` is the event's, e.g. `spec.redis.<event>`. Making the
/// source runs them first, then compiles what they let through.
pub(crate) fn check(path: &str, redis: &RedisSpec) -> Vec<Diagnostic> {
    let mut out = Vec::new();
    match (&redis.stream, &redis.channel) {
        // An OpenFunction manifest has neither (its Redis source could not read at all): it
        // still loads, and `ofe run` refuses just this event with the same advice.
        (None, None) => out.push(Diagnostic::warning(
            path,
            "says nothing to read; add `stream: <name>` (at-least-once, consumer group) or `channel: <name or pattern>` (pub/sub, at-most-once)",
        )),
        (Some(_), Some(_)) => out.push(Diagnostic::error(
            path,
            "sets both stream and channel; keep one (use two events to read both)",
        )),
        _ => {}
    }
    if redis.redis_host.trim().is_empty() {
        out.push(Diagnostic::error(format!("{path}.redisHost"), "is empty; write `host:port`"));
    }
    if let Some(o) = redis.initial_offset.as_deref()
        && !matches!(o, "earliest" | "latest")
    {
        out.push(Diagnostic::error(
            format!("{path}.initialOffset"),
            format!("`{o}` is not an offset; use earliest or latest"),
        ));
    }
    for (field, value) in [
        ("redeliverInterval", &redis.redeliver_interval),
        ("processingTimeout", &redis.processing_timeout),
        ("dialTimeout", &redis.dial_timeout),
        ("readTimeout", &redis.read_timeout),
        ("writeTimeout", &redis.write_timeout),
    ] {
        if let Some(text) = value
            && let Err(e) = ofe_crds::duration::parse(text)
        {
            out.push(Diagnostic::error(format!("{path}.{field}"), e.to_string()));
        }
    }
    out
}

crate::source::broker_kind!(redis, RedisSource, check);
