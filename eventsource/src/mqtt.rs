//! The MQTT EventSource (MQTT 3.1.1 over plain TCP in this version).
//!
//! - Subscribes to `topic` (wildcards allowed) at the manifest's `qos` (default 1), again after
//!   every reconnect.
//! - At QoS 1 and 2 a message is acknowledged to the broker only after the bus has the event
//!   durably (manual acks), so a crash before that makes the broker deliver it again.
//! - A payload that is a structured-mode CloudEvent (JSON with `specversion`) keeps its
//!   attributes as sent. Any other payload becomes the data of a new event: type
//!   `io.openfunction.events.mqtt`, the EventSource's `source`, the MQTT topic as `subject`,
//!   `application/json` when the payload is JSON (else `application/octet-stream`), and at QoS
//!   1 and 2 an id derived from topic, packet id and payload, so a redelivery after a crash is
//!   a detectable duplicate.
//! - Connection failures are retried with backoff, logged once when they start and once when
//!   they end.

use std::sync::Arc;
use std::time::Duration;

use cloudevents::Event;
use ofe_crds::MqttSpec;
use ofe_eventbus::{EventBus, Subject};
use rumqttc::{AsyncClient, Event as MqttEvent, MqttOptions, Packet, Publish, QoS};
use tokio_util::sync::CancellationToken;

use crate::SourceError;
use crate::cron::publish_with_retry;
use crate::ingest::{Message, Origin};
use crate::metrics::{EventLabels, SourceMetrics};

/// The CloudEvents `type` of events made from plain MQTT payloads.
pub const MQTT_EVENT_TYPE: &str = "io.openfunction.events.mqtt";

/// UUID namespace of derived ids.
const ID_NAMESPACE: uuid::Uuid = uuid::Uuid::from_u128(0x6f66_655f_6d71_7474_8000_0000_0000_0001);

/// A broker address from an MQTT URL.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BrokerUrl {
    /// Host name or address.
    pub host: String,
    /// Port (default 1883).
    pub port: u16,
    /// User and password from the URL, if any.
    pub credentials: Option<(String, String)>,
}

/// Parses `tcp://[user:password@]host[:port]` (also `mqtt://`).
pub fn parse_url(url: &str) -> Result<BrokerUrl, String> {
    let rest = url
        .strip_prefix("tcp://")
        .or_else(|| url.strip_prefix("mqtt://"))
        .ok_or_else(|| {
            if url.starts_with("ssl://") || url.starts_with("mqtts://") || url.starts_with("ws") {
                format!("`{url}`: TLS and WebSocket MQTT are not available in this version yet; use tcp://")
            } else {
                format!("`{url}` is not an MQTT URL; write tcp://[user:password@]host[:port]")
            }
        })?;
    let rest = rest.trim_end_matches('/');
    let (credentials, address) = match rest.rsplit_once('@') {
        Some((creds, address)) => {
            let (user, password) = creds.split_once(':').unwrap_or((creds, ""));
            (Some((user.to_string(), password.to_string())), address)
        }
        None => (None, rest),
    };
    let (host, port) = match address.rsplit_once(':') {
        Some((host, port)) => (
            host,
            port.parse::<u16>().map_err(|_| format!("`{url}` has an invalid port `{port}`"))?,
        ),
        None => (address, 1883),
    };
    if host.is_empty() {
        return Err(format!("`{url}` names no host"));
    }
    Ok(BrokerUrl { host: host.to_string(), port, credentials })
}

/// One MQTT event of one EventSource.
#[derive(Clone, Debug)]
pub struct MqttSource {
    origin: Origin,
    broker: BrokerUrl,
    topic: String,
    qos: QoS,
    client_id: String,
    clean_session: bool,
}

impl MqttSource {
    /// The source for event `event` of EventSource `eventsource` in `namespace`.
    pub fn new(
        namespace: &str,
        eventsource: &str,
        event: &str,
        spec: &MqttSpec,
    ) -> Result<Self, SourceError> {
        let field = format!("spec.mqtt.{event}");
        let broker = parse_url(&spec.url)
            .map_err(|message| SourceError::Invalid { path: format!("{field}.url"), message })?;
        let qos = match spec.qos.unwrap_or(1) {
            0 => QoS::AtMostOnce,
            1 => QoS::AtLeastOnce,
            2 => QoS::ExactlyOnce,
            other => {
                return Err(SourceError::Invalid {
                    path: format!("{field}.qos"),
                    message: format!("{other} is not an MQTT QoS; use 0, 1 or 2"),
                });
            }
        };
        Ok(Self {
            origin: Origin::new(
                EventLabels {
                    namespace: namespace.into(),
                    eventsource: eventsource.into(),
                    event: event.into(),
                },
                MQTT_EVENT_TYPE,
                ID_NAMESPACE,
            ),
            broker,
            topic: spec.topic.clone(),
            qos,
            // Unique per EventSource and event (OpenFunction's `<ns>-esc-mqtt-<event>` omitted
            // the EventSource, so two EventSources could steal each other's session).
            client_id: spec
                .consumer_id
                .clone()
                .unwrap_or_else(|| format!("ofe-{namespace}-{eventsource}-{event}")),
            clean_session: spec.clean_session.unwrap_or(false),
        })
    }

    /// Runs until `shutdown`.
    pub async fn run(
        self,
        bus: Arc<dyn EventBus>,
        metrics: SourceMetrics,
        shutdown: CancellationToken,
    ) {
        let mut options = MqttOptions::new(&self.client_id, &self.broker.host, self.broker.port);
        options.set_keep_alive(Duration::from_secs(30));
        options.set_clean_session(self.clean_session);
        options.set_manual_acks(true);
        options.set_max_packet_size(8 << 20, 8 << 20);
        if let Some((user, password)) = &self.broker.credentials {
            options.set_credentials(user, password);
        }
        let (client, mut events) = AsyncClient::new(options, 64);
        let subject = Subject::event(
            &self.origin.labels.namespace,
            &self.origin.labels.eventsource,
            &self.origin.labels.event,
        );
        let mut failing = false;
        let mut backoff = Duration::from_millis(100);
        loop {
            let polled = tokio::select! {
                () = shutdown.cancelled() => break,
                polled = events.poll() => polled,
            };
            match polled {
                Ok(MqttEvent::Incoming(Packet::ConnAck(_))) => {
                    if failing {
                        tracing::info!(broker = %self.broker.host, topic = %self.topic, "MQTT connection recovered");
                        failing = false;
                    }
                    backoff = Duration::from_millis(100);
                    if let Err(error) = client.subscribe(&self.topic, self.qos).await {
                        tracing::warn!(%error, topic = %self.topic, "MQTT subscribe failed");
                    }
                }
                Ok(MqttEvent::Incoming(Packet::Publish(message))) => {
                    metrics.received.get_or_create(&self.origin.labels).inc();
                    let event = self.to_event(&message);
                    if !publish_with_retry(
                        &*bus,
                        &subject,
                        &event,
                        &self.origin.labels,
                        &metrics,
                        &shutdown,
                    )
                    .await
                    {
                        break;
                    }
                    // Only now does the broker learn the message is taken care of.
                    if let Err(error) = client.ack(&message).await {
                        tracing::warn!(%error, "MQTT ack failed; the broker will deliver the message again");
                    }
                }
                Ok(_) => {}
                Err(error) => {
                    if !failing {
                        tracing::warn!(%error, broker = %self.broker.host, "MQTT connection failed; reconnecting with backoff");
                        failing = true;
                    }
                    tokio::select! {
                        () = shutdown.cancelled() => break,
                        () = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
        let _ = client.disconnect().await;
    }

    /// The event for a message: the CloudEvent it carries, or a new one around its payload
    /// (see [`crate::ingest`]). At QoS 1 and 2 the id derives from client id, topic, packet id
    /// and payload, so the broker's redelivery after a crash is a detectable duplicate.
    pub fn to_event(&self, message: &Publish) -> Event {
        let topic = &message.topic;
        let identity = (message.pkid != 0).then(|| {
            let mut key = format!("{}/{topic}/{}/", self.client_id, message.pkid).into_bytes();
            key.extend_from_slice(&message.payload);
            key
        });
        self.origin.event(&Message {
            payload: &message.payload,
            subject: topic,
            identity,
            ..Message::default()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let u = parse_url("tcp://admin:public@emqx:1884").expect("url");
        assert_eq!((u.host.as_str(), u.port), ("emqx", 1884));
        assert_eq!(u.credentials, Some(("admin".into(), "public".into())));
        assert_eq!(parse_url("mqtt://127.0.0.1").expect("url").port, 1883);
        assert!(parse_url("ssl://x:8883").unwrap_err().contains("not available"));
        assert!(parse_url("http://x").unwrap_err().contains("not an MQTT URL"));
        assert!(parse_url("tcp://x:port").unwrap_err().contains("invalid port"));
    }
}
