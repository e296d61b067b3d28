//! The AMQP 0-9-1 EventSource (RabbitMQ and compatible brokers).
//!
//! - Consumes one queue with manual acknowledgements: a batch of messages is acknowledged
//!   (`basic.ack` with `multiple`) only after the bus has every event of it durably, so a crash
//!   before that makes the broker deliver them again. `prefetch` (QoS, default 256) bounds how
//!   many the broker sends ahead.
//! - With `declare: true`, the queue is declared durable if missing, and `exchange` too (of
//!   `exchangeType`, default `topic`). With `exchange`, the queue is bound to it with
//!   `routingKey` (default `#`). Without `declare`, the queue must exist: the first session
//!   fails with the broker's reason and is retried.
//! - CloudEvents AMQP binding (see `ofe_core::amqp`): binary mode (`cloudEvents_`/`cloudEvents:`
//!   headers and the `content-type` property) and structured mode keep the event as sent. Any
//!   other message becomes the data of a new event: type `io.openfunction.events.amqp`, the
//!   EventSource's `source`, the routing key as `subject`, the message's `timestamp` as `time`.
//! - The id of a wrapped event is derived from the message's `message-id`, so a redelivery is a
//!   detectable duplicate. A message without one gets a new id: two messages identical in
//!   every byte are then still two events, and a redelivery after a crash may be delivered
//!   twice (at-least-once). Publishers that set `message-id` get exactly-once ingestion.
//! - Connection failures are retried with backoff (100 ms doubling to 5 s), reported on the
//!   EventSource's `SourceConnected` condition, and logged with the URL without its password.

use std::sync::Arc;

use lapin::message::Delivery;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicQosOptions, ExchangeDeclareOptions,
    QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Connection, ConnectionProperties, ExchangeKind};
use ofe_core::EventBus;
use ofe_crds::AmqpSpec;
use tokio_util::sync::CancellationToken;

use crate::SourceError;
use crate::ingest::{BATCH, Message, Next, Origin, Publisher};
use crate::metrics::SourceMetrics;

/// The CloudEvents `type` of events made from plain AMQP messages.
pub const AMQP_EVENT_TYPE: &str = "io.openfunction.events.amqp";

/// UUID namespace of derived ids.
const ID_NAMESPACE: uuid::Uuid = uuid::Uuid::from_u128(0x6f66_655f_616d_7170_8000_0000_0000_0001);

/// Messages the broker sends ahead of acknowledgements, unless `prefetch` says otherwise.
pub const DEFAULT_PREFETCH: u16 = 256;

/// One AMQP event of one EventSource.
#[derive(Clone, Debug)]
pub struct AmqpSource {
    pub(crate) origin: Origin,
    /// The URL with its credentials, for connecting only.
    url: String,
    /// The URL as logs and conditions show it.
    shown_url: String,
    queue: String,
    declare: bool,
    exchange: Option<(String, ExchangeKind)>,
    routing_key: String,
    prefetch: u16,
    tls: Option<lapin::tcp::OwnedTLSConfig>,
    consumer_tag: String,
}

impl AmqpSource {
    /// The source for event `event` of EventSource `eventsource` in `namespace`: every field
    /// of `spec` checked, the TLS files read; nothing connected.
    pub fn new(
        namespace: &str,
        eventsource: &str,
        event: &str,
        spec: &AmqpSpec,
    ) -> Result<Self, SourceError> {
        let field = format!("spec.amqp.{event}");
        let invalid = |name: &str, message: String| SourceError::Invalid {
            path: format!("{field}.{name}"),
            message,
        };
        let uri: lapin::uri::AMQPUri = spec.url.parse().map_err(|e| {
            invalid(
                "url",
                format!(
                    "`{}` is not an AMQP URL ({e}); write amqp://user:password@host:5672/vhost",
                    shown(&spec.url)
                ),
            )
        })?;
        let secure = uri.scheme == lapin::uri::AMQPScheme::AMQPS;
        if spec.queue.trim().is_empty() {
            return Err(invalid("queue", "is empty; name the queue to consume".into()));
        }
        let exchange_kind = match spec.exchange_type.as_deref() {
            None | Some("topic") => ExchangeKind::Topic,
            Some("direct") => ExchangeKind::Direct,
            Some("fanout") => ExchangeKind::Fanout,
            Some("headers") => ExchangeKind::Headers,
            Some(other) => {
                return Err(invalid(
                    "exchangeType",
                    format!("is `{other}`; use topic, direct, fanout or headers"),
                ));
            }
        };
        if spec.exchange.is_none() && (spec.routing_key.is_some() || spec.exchange_type.is_some()) {
            let name = if spec.routing_key.is_some() { "routingKey" } else { "exchangeType" };
            return Err(invalid(name, "applies to a binding; set `exchange` too".into()));
        }
        let prefetch = match spec.prefetch {
            Some(0) => return Err(invalid("prefetch", "is 0; allow at least 1".into())),
            Some(n) => n,
            None => DEFAULT_PREFETCH,
        };
        let tls = match &spec.tls {
            Some(tls) if !secure => {
                let _ = tls;
                return Err(invalid("tls", "needs an amqps:// URL; change the scheme".into()));
            }
            Some(tls) => Some(tls_config(&field, tls)?),
            None => None,
        };
        let host = ofe_core::host_name().unwrap_or_else(|| "ofe".into());
        Ok(Self {
            origin: Origin::of(
                namespace,
                eventsource,
                "amqp",
                event,
                AMQP_EVENT_TYPE,
                ID_NAMESPACE,
            )
            .with_schema(&format!("spec.amqp.{event}"), spec.schema.as_ref())?,
            url: spec.url.clone(),
            shown_url: shown(&spec.url),
            queue: spec.queue.clone(),
            declare: spec.declare.unwrap_or(false),
            exchange: spec.exchange.clone().map(|name| (name, exchange_kind)),
            routing_key: spec.routing_key.clone().unwrap_or_else(|| "#".into()),
            prefetch,
            tls,
            consumer_tag: format!("ofe.{namespace}.{eventsource}.{event}.{host}"),
        })
    }

    /// Runs until `shutdown`, reconnecting with backoff.
    pub async fn run(
        self,
        bus: Arc<dyn EventBus>,
        metrics: SourceMetrics,
        shutdown: CancellationToken,
    ) {
        let publisher = self.origin.publisher(&*bus, &metrics, &shutdown);
        let what = format!("the AMQP source of queue `{}` at {}", self.queue, self.shown_url);
        let session = || self.session(&publisher);
        self.origin.reconnecting(&what, &shutdown, session).await;
    }

    /// One connection: consumes until shutdown (`Ok`, the connection closed cleanly so the
    /// broker requeues what was not acknowledged at once) or a failure.
    async fn session(&self, publisher: &Publisher<'_>) -> Result<(), String> {
        let at = |what: &str, e: lapin::Error| format!("{what} ({}): {e}", self.shown_url);
        let runtime = lapin::runtime::default_runtime().map_err(|e| e.to_string())?;
        let connection = Connection::connect_with_config(
            &self.url,
            ConnectionProperties::default(),
            self.tls.clone().unwrap_or_default(),
            runtime,
        )
        .await
        .map_err(|e| at("cannot connect to the AMQP broker", e))?;
        let result = self.consume(&connection, publisher).await;
        let _ = connection.close(200, "ofe is stopping this source".into()).await;
        result
    }

    async fn consume(
        &self,
        connection: &Connection,
        publisher: &Publisher<'_>,
    ) -> Result<(), String> {
        let at = |what: String, e: lapin::Error| format!("{what}: {e}");
        let channel =
            connection.create_channel().await.map_err(|e| at("cannot open a channel".into(), e))?;
        channel
            .basic_qos(self.prefetch, BasicQosOptions::default())
            .await
            .map_err(|e| at(format!("cannot set prefetch {}", self.prefetch), e))?;
        let queue = self.queue.as_str();
        if self.declare {
            let options = QueueDeclareOptions { durable: true, ..Default::default() };
            channel
                .queue_declare(queue.into(), options, FieldTable::default())
                .await
                .map_err(|e| at(format!("cannot declare queue `{queue}`"), e))?;
        }
        if let Some((exchange, kind)) = &self.exchange {
            if self.declare {
                let options = ExchangeDeclareOptions { durable: true, ..Default::default() };
                channel
                    .exchange_declare(
                        exchange.as_str().into(),
                        kind.clone(),
                        options,
                        FieldTable::default(),
                    )
                    .await
                    .map_err(|e| at(format!("cannot declare exchange `{exchange}`"), e))?;
            }
            channel
                .queue_bind(
                    queue.into(),
                    exchange.as_str().into(),
                    self.routing_key.as_str().into(),
                    QueueBindOptions::default(),
                    FieldTable::default(),
                )
                .await
                .map_err(|e| {
                    at(format!("cannot bind queue `{queue}` to exchange `{exchange}`"), e)
                })?;
        }
        let mut consumer = channel
            .basic_consume(
                queue.into(),
                self.consumer_tag.as_str().into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(|e| {
                let hint = if self.declare { "" } else { " (set `declare: true` to create it)" };
                at(format!("cannot consume queue `{queue}`{hint}"), e)
            })?;
        tracing::info!(url = %self.shown_url, queue, prefetch = self.prefetch, "consuming AMQP queue");
        self.origin.connected();
        loop {
            let (batch, failed) =
                match crate::ingest::next_batch(&mut consumer, BATCH, publisher.shutdown).await {
                    Next::Batch(batch, failed) => (batch, failed),
                    Next::Failed(e) => return Err(e.to_string()),
                    Next::Stopped => return Ok(()),
                    Next::Ended => {
                        return Err(format!(
                            "the broker cancelled the consumer of queue `{queue}`"
                        ));
                    }
                };
            publisher.received(batch.len());
            let events: Vec<_> = batch.iter().map(|d| self.to_event(d)).collect();
            if !publisher.all(&events).await {
                // Shutdown: the broker requeues what this connection did not acknowledge.
                return Ok(());
            }
            // Deliveries on one channel are acknowledged in order: the last one's tag with
            // `multiple` settles the whole batch in one frame.
            if let Some(last) = batch.last() {
                last.acker
                    .ack(BasicAckOptions { multiple: true })
                    .await
                    .map_err(|e| at("cannot acknowledge to the broker; the batch comes again and is dropped as a duplicate where it has ids".into(), e))?;
            }
            if let Some(e) = failed {
                return Err(e.to_string());
            }
        }
    }

    /// The event for a delivery (see [`crate::ingest`]).
    pub fn to_event(&self, delivery: &Delivery) -> cloudevents::Event {
        let properties = &delivery.properties;
        let headers: Vec<(String, String)> = properties
            .headers()
            .as_ref()
            .map(|table| {
                table
                    .inner()
                    .iter()
                    .filter_map(|(name, value)| text(value).map(|v| (name.to_string(), v)))
                    .collect()
            })
            .unwrap_or_default();
        let binary =
            ofe_core::amqp::attributes(headers.iter().map(|(n, v)| (n.as_str(), v.as_str())));
        let identity = properties
            .message_id()
            .as_ref()
            .map(|id| format!("{}/{}", self.queue, id.as_str()).into_bytes());
        let time = properties
            .timestamp()
            .and_then(|t| i64::try_from(t).ok())
            .and_then(|t| chrono::DateTime::<chrono::Utc>::from_timestamp(t, 0));
        self.origin.event(&Message {
            payload: &delivery.data,
            content_type: properties.content_type().as_ref().map(|c| c.as_str()),
            binary,
            subject: delivery.routing_key.as_str(),
            identity,
            time,
            extensions: Vec::new(),
        })
    }
}

/// A header value as the text the binding carries; `None` for tables and arrays, which no
/// attribute is.
fn text(value: &AMQPValue) -> Option<String> {
    Some(match value {
        AMQPValue::LongString(s) => String::from_utf8_lossy(s.as_bytes()).into_owned(),
        AMQPValue::ShortString(s) => s.to_string(),
        AMQPValue::Boolean(b) => b.to_string(),
        AMQPValue::ShortShortInt(n) => n.to_string(),
        AMQPValue::ShortShortUInt(n) => n.to_string(),
        AMQPValue::ShortInt(n) => n.to_string(),
        AMQPValue::ShortUInt(n) => n.to_string(),
        AMQPValue::LongInt(n) => n.to_string(),
        AMQPValue::LongUInt(n) => n.to_string(),
        AMQPValue::LongLongInt(n) => n.to_string(),
        AMQPValue::Timestamp(t) => t.to_string(),
        AMQPValue::ByteArray(b) => String::from_utf8_lossy(b.as_slice()).into_owned(),
        _ => return None,
    })
}

/// `url` without its password, as logs and errors show it.
fn shown(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let userinfo = &url[scheme + 3..at];
            let user = userinfo.split(':').next().unwrap_or_default();
            format!("{}{user}:***{}", &url[..scheme + 3], &url[at..])
        }
        _ => url.to_string(),
    }
}

/// The TLS settings of `tls` (files read now, so a missing file is a validation error).
fn tls_config(
    field: &str,
    tls: &ofe_crds::TlsSpec,
) -> Result<lapin::tcp::OwnedTLSConfig, SourceError> {
    let read = |name: &str, file: &str| {
        crate::ingest::pem(&format!("{field}.tls.{name}"), file)
            .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
    };
    let cert_chain = tls.ca_file.as_deref().map(|f| read("caFile", f)).transpose()?;
    let identity = match (&tls.cert_file, &tls.key_file) {
        (Some(cert), Some(key)) => Some(lapin::tcp::OwnedIdentity::PKCS8 {
            pem: read("certFile", cert)?.into_bytes(),
            key: read("keyFile", key)?.into_bytes(),
        }),
        (None, None) => None,
        _ => {
            return Err(SourceError::Invalid {
                path: format!("{field}.tls"),
                message: "sets one of certFile and keyFile; set both for a client certificate"
                    .into(),
            });
        }
    };
    Ok(lapin::tcp::OwnedTLSConfig { identity, cert_chain })
}

crate::source::broker_kind!(amqp, AmqpSource);

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(url: &str) -> AmqpSpec {
        AmqpSpec { url: url.into(), queue: "orders".into(), ..AmqpSpec::default() }
    }

    #[test]
    fn passwords_never_show() {
        assert_eq!(
            shown("amqp://ofe:s3cret@127.0.0.1:5672/%2f"),
            "amqp://ofe:***@127.0.0.1:5672/%2f"
        );
        assert_eq!(shown("amqp://127.0.0.1"), "amqp://127.0.0.1");
        let error =
            AmqpSource::new("ns", "es", "e", &spec("http://ofe:s3cret@x")).expect_err("not AMQP");
        assert!(!error.to_string().contains("s3cret"), "{error}");
    }

    #[test]
    fn every_field_is_checked_with_its_path() {
        let path = |spec: AmqpSpec| match AmqpSource::new("ns", "es", "e", &spec) {
            Err(SourceError::Invalid { path, .. }) => path,
            Ok(_) => "accepted".into(),
        };
        assert_eq!(path(AmqpSpec { queue: " ".into(), ..spec("amqp://h") }), "spec.amqp.e.queue");
        assert_eq!(path(spec("amqp://h:notaport")), "spec.amqp.e.url");
        let kind = AmqpSpec {
            exchange: Some("x".into()),
            exchange_type: Some("fan".into()),
            ..spec("amqp://h")
        };
        assert_eq!(path(kind), "spec.amqp.e.exchangeType");
        let unbound = AmqpSpec { routing_key: Some("a.#".into()), ..spec("amqp://h") };
        assert_eq!(path(unbound), "spec.amqp.e.routingKey");
        assert_eq!(
            path(AmqpSpec { prefetch: Some(0), ..spec("amqp://h") }),
            "spec.amqp.e.prefetch"
        );
        let plain_tls = AmqpSpec { tls: Some(ofe_crds::TlsSpec::default()), ..spec("amqp://h") };
        assert_eq!(path(plain_tls), "spec.amqp.e.tls");
        let missing_ca = AmqpSpec {
            tls: Some(ofe_crds::TlsSpec {
                ca_file: Some("/nonexistent/ca.pem".into()),
                ..Default::default()
            }),
            ..spec("amqps://h")
        };
        assert_eq!(path(missing_ca), "spec.amqp.e.tls.caFile");
        assert_eq!(path(spec("amqp://guest:guest@127.0.0.1:5672/%2f")), "accepted");
    }
}
