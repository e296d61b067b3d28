//! The AMQP sink (`sink.amqp`): each event is a persistent message published to an exchange
//! of RabbitMQ (or another AMQP 0-9-1 broker) in the CloudEvents AMQP binding's binary mode:
//! attributes as `cloudEvents_<name>` headers, the data's media type as `content-type`, the
//! data as the body. Published `mandatory` on a channel in confirm mode: delivered once the
//! broker confirmed it and routed it to a queue (a message no queue takes comes back, and is
//! a failure worth retrying: a queue may be bound later). One connection and channel per
//! broker, shared by every sink that uses it, made when first needed and again after an error.

use std::sync::{Arc, LazyLock};

use async_trait::async_trait;
use cloudevents::{AttributesReader as _, Event};
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};
use ofe_core::trace::{self, KeyValue};

use super::{Destination, Failure, Reply, Sink, SinkContext};

/// A broker's connection and confirming channel.
struct Broker {
    url: String,
    tls: lapin::tcp::OwnedTLSConfig,
    open: tokio::sync::Mutex<Option<(Connection, Channel)>>,
}

impl Broker {
    async fn channel(&self, shown: &str) -> Result<Channel, Failure> {
        let mut open = self.open.lock().await;
        if let Some((connection, channel)) = open.as_ref()
            && connection.status().connected()
            && channel.status().connected()
        {
            return Ok(channel.clone());
        }
        let failed =
            |what: &str, e: lapin::Error| Failure::transient(format!("{what} ({shown}): {e}"));
        let runtime = lapin::runtime::default_runtime().map_err(|e| failed("no runtime", e))?;
        let connection = Connection::connect_with_config(
            &self.url,
            ConnectionProperties::default(),
            self.tls.clone(),
            runtime,
        )
        .await
        .map_err(|e| failed("cannot connect to the AMQP broker", e))?;
        let channel =
            connection.create_channel().await.map_err(|e| failed("cannot open a channel", e))?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .map_err(|e| failed("the broker refused publisher confirms", e))?;
        *open = Some((connection, channel.clone()));
        Ok(channel)
    }
}

/// The brokers, per URL and TLS settings.
static BROKERS: LazyLock<super::broker::Shared<Broker>> = LazyLock::new(super::broker::Shared::new);

/// An exchange of an AMQP broker.
pub struct AmqpSink {
    broker: Arc<Broker>,
    /// The URL without its password, as logs show it.
    shown: String,
    exchange: String,
    routing_key: String,
}

impl std::fmt::Debug for AmqpSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AmqpSink")
            .field("url", &self.shown)
            .field("exchange", &self.exchange)
            .finish()
    }
}

impl AmqpSink {
    /// The sink `spec` asks for; the error names the field.
    pub fn compile(spec: &ofe_crds::sinks::AmqpSinkSpec) -> Result<Destination, String> {
        let tls = match &spec.tls {
            Some(tls) => tls_config(tls)?,
            None => lapin::tcp::OwnedTLSConfig::default(),
        };
        let key = format!("{}\n{:?}", spec.url, spec.tls);
        let broker = BROKERS.get_or(&key, || {
            Ok::<_, String>(Broker {
                url: spec.url.clone(),
                tls,
                open: tokio::sync::Mutex::new(None),
            })
        })?;
        let shown = match url::Url::parse(&spec.url) {
            Ok(mut url) => {
                if url.password().is_some() {
                    let _ = url.set_password(Some("***"));
                }
                url.to_string()
            }
            Err(e) => return Err(format!("url: {e}")),
        };
        Ok(Destination::new(Self {
            broker,
            shown,
            exchange: spec.exchange.clone(),
            routing_key: spec.routing_key.clone().unwrap_or_default(),
        }))
    }
}

/// The TLS settings of `tls`: its files read now, so a missing one is an error at load.
fn tls_config(tls: &ofe_crds::TlsSpec) -> Result<lapin::tcp::OwnedTLSConfig, String> {
    let read = |field: &str, file: &str| {
        std::fs::read_to_string(file).map_err(|e| format!("tls.{field}: cannot read {file}: {e}"))
    };
    let cert_chain = tls.ca_file.as_deref().map(|f| read("caFile", f)).transpose()?;
    let identity = match (&tls.cert_file, &tls.key_file) {
        (Some(cert), Some(key)) => Some(lapin::tcp::OwnedIdentity::PKCS8 {
            pem: read("certFile", cert)?.into_bytes(),
            key: read("keyFile", key)?.into_bytes(),
        }),
        (None, None) => None,
        _ => return Err("tls: set both certFile and keyFile for a client certificate".into()),
    };
    Ok(lapin::tcp::OwnedTLSConfig { identity, cert_chain })
}

#[async_trait]
impl Sink for AmqpSink {
    fn describe(&self) -> String {
        format!("{}#{}/{}", self.shown, self.exchange, self.routing_key)
    }

    fn span(&self, resend: Option<KeyValue>) -> trace::Span {
        super::broker::broker_span("rabbitmq", &self.exchange, resend)
    }

    async fn attempt(
        &self,
        event: &Event,
        context: &SinkContext<'_>,
    ) -> Result<Option<Box<Reply>>, Failure> {
        let mut headers = FieldTable::default();
        for (name, value) in ofe_core::event::binary_attributes(event) {
            let name = format!("{}{name}", ofe_core::amqp::PREFIXES[0]);
            headers.insert(name.into(), AMQPValue::LongString(value.as_ref().into()));
        }
        let mut properties = BasicProperties::default()
            .with_headers(headers)
            .with_message_id(event.id().into())
            .with_delivery_mode(2);
        if let Some(content_type) = event.datacontenttype() {
            properties = properties.with_content_type(content_type.into());
        }
        let body = ofe_core::event::data_bytes(event);
        let sent = async {
            let channel = self.broker.channel(&self.shown).await?;
            let failed = |what: &str, e: lapin::Error| {
                Failure::transient(format!("{what} ({}): {e}", self.shown))
            };
            let options = BasicPublishOptions { mandatory: true, ..Default::default() };
            let confirm = channel
                .basic_publish(
                    self.exchange.as_str().into(),
                    self.routing_key.as_str().into(),
                    options,
                    &body,
                    properties,
                )
                .await
                .map_err(|e| failed("publish failed", e))?
                .await
                .map_err(|e| failed("no confirm from the broker", e))?;
            let acked = confirm.is_ack();
            if confirm.take_message().is_some() {
                return Err(Failure::transient(format!(
                    "exchange `{}` routed the message to no queue (routing key `{}`); bind a \
                     queue to it",
                    self.exchange, self.routing_key
                )));
            }
            if acked {
                Ok(None)
            } else {
                Err(Failure::transient(format!("the broker refused the message ({})", self.shown)))
            }
        };
        match tokio::time::timeout(context.timeout, sent).await {
            Ok(result) => result,
            Err(_) => Err(Failure::transient(format!(
                "{}: no confirm within {:?}",
                self.shown, context.timeout
            ))),
        }
    }
}
