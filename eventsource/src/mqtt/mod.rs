//! The MQTT EventSource: MQTT 3.1.1 and 5, over TCP, TLS, WebSocket and secure WebSocket.
//!
//! - Subscribes to `topic` (wildcards allowed) at the manifest's `qos` (default 1), again after
//!   every reconnect; with `shareGroup`, to `$share/<group>/<topic>`, so the replicas of an
//!   EventSource split a fleet's traffic.
//! - At QoS 1 and 2 a message is acknowledged to the broker only after the bus has the event
//!   durably (manual acks), so a crash before that makes the broker deliver it again. The
//!   session is persistent unless `cleanSession: true` (in MQTT 5, a one-day session expiry).
//! - CloudEvents MQTT binding: in MQTT 5, binary mode (attributes as user properties, the
//!   content type as the message's content type) and structured mode
//!   (`application/cloudevents+json`) keep the event as sent; in 3.1.1, a JSON payload with
//!   `specversion` is a structured CloudEvent. Any other payload becomes the data of a new
//!   event: type `io.openfunction.events.mqtt`, the EventSource's `source`, the MQTT topic as
//!   `subject`, and at QoS 1 and 2 an id derived from client id, topic, packet id and payload,
//!   so a redelivery after a crash is a detectable duplicate.
//! - Retained messages, which the broker replays on every subscribe, are skipped unless
//!   `retain: true`.
//! - Connection failures are retried with backoff, logged once when they start and once when
//!   they end.

use std::sync::Arc;
use std::time::Duration;

use cloudevents::Event;
use ofe_core::EventBus;
use ofe_crds::MqttSpec;
use ofe_crds::diagnostic::Diagnostic;
use rumqttc::v5::mqttbytes::v5::Publish as PublishV5;
use rumqttc::{Publish, QoS, TlsConfiguration, Transport};
use tokio_util::sync::CancellationToken;

use crate::SourceError;
use crate::ingest::{BATCH, Message, Origin};
use crate::metrics::SourceMetrics;

/// The CloudEvents `type` of events made from plain MQTT payloads.
pub const MQTT_EVENT_TYPE: &str = "io.openfunction.events.mqtt";

/// UUID namespace of derived ids.
const ID_NAMESPACE: uuid::Uuid = uuid::Uuid::from_u128(0x6f66_655f_6d71_7474_8000_0000_0000_0001);

/// Largest packet accepted.
const MAX_PACKET: usize = 8 << 20;

/// How the broker is reached.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scheme {
    /// `tcp://` or `mqtt://`.
    Tcp,
    /// `ssl://`, `tls://` or `mqtts://`.
    Tls,
    /// `ws://`.
    Ws,
    /// `wss://`.
    Wss,
}

/// A broker address from an MQTT URL.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BrokerUrl {
    /// How the broker is reached.
    pub scheme: Scheme,
    /// Host name or address.
    pub host: String,
    /// Port (default 1883, 8883 for TLS, 80/443 for WebSocket).
    pub port: u16,
    /// Path, for WebSocket URLs (default `/mqtt`).
    pub path: String,
    /// User and password from the URL, if any.
    pub credentials: Option<(String, String)>,
}

impl BrokerUrl {
    /// The WebSocket URL without credentials.
    fn ws_url(&self) -> String {
        let scheme = if self.scheme == Scheme::Wss { "wss" } else { "ws" };
        format!("{scheme}://{}:{}{}", self.host, self.port, self.path)
    }
}

/// Why an MQTT broker URL cannot be used. The messages never repeat the URL, which may hold a
/// password; they read after the field's path (`spec.mqtt.<event>.url: names no host; …`).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum UrlError {
    /// No `scheme://`.
    #[error("is not an MQTT URL; write tcp://[user:password@]host[:port]")]
    NoScheme,
    /// A scheme MQTT is not spoken over.
    #[error("has the scheme `{0}://`, which is not MQTT's; use tcp://, ssl://, ws:// or wss://")]
    Scheme(String),
    /// A port that is not a number up to 65535.
    #[error("has an invalid port `{0}`; write a number from 1 to 65535")]
    Port(String),
    /// Nothing between `://` and the port or path.
    #[error("names no host; write tcp://host:port")]
    NoHost,
}

/// Parses `scheme://[user:password@]host[:port][/path]`, where the scheme is `tcp`/`mqtt`,
/// `ssl`/`tls`/`mqtts`, `ws` or `wss`.
pub fn parse_url(url: &str) -> Result<BrokerUrl, UrlError> {
    let (scheme_text, rest) = url.split_once("://").ok_or(UrlError::NoScheme)?;
    let (scheme, default_port) = match scheme_text.to_ascii_lowercase().as_str() {
        "tcp" | "mqtt" => (Scheme::Tcp, 1883),
        "ssl" | "tls" | "mqtts" => (Scheme::Tls, 8883),
        "ws" => (Scheme::Ws, 80),
        "wss" => (Scheme::Wss, 443),
        _ => return Err(UrlError::Scheme(scheme_text.into())),
    };
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, ""),
    };
    let path = match (scheme, path) {
        (Scheme::Ws | Scheme::Wss, "" | "/") => "/mqtt".to_string(),
        (Scheme::Ws | Scheme::Wss, p) => p.to_string(),
        _ => String::new(),
    };
    let (credentials, address) = match authority.rsplit_once('@') {
        Some((creds, address)) => {
            let (user, password) = creds.split_once(':').unwrap_or((creds, ""));
            (Some((user.to_string(), password.to_string())), address)
        }
        None => (None, authority),
    };
    let (host, port) = match address.rsplit_once(':') {
        Some((host, port)) => (host, port.parse::<u16>().map_err(|_| UrlError::Port(port.into()))?),
        None => (address, default_port),
    };
    if host.is_empty() {
        return Err(UrlError::NoHost);
    }
    Ok(BrokerUrl { scheme, host: host.to_string(), port, path, credentials })
}

/// A rustls client configuration (ring provider) from the manifest's certificates.
fn tls_config(field: &str, spec: &MqttSpec) -> Result<TlsConfiguration, SourceError> {
    use rustls::pki_types::pem::PemObject as _;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let invalid = |path: &str, message: String| SourceError::Invalid {
        path: format!("{field}.{path}"),
        message,
    };
    let mut roots = rustls::RootCertStore::empty();
    match &spec.ca_cert {
        Some(ca) => {
            let bytes = crate::ingest::pem(&format!("{field}.caCert"), ca)?;
            for cert in CertificateDer::pem_slice_iter(&bytes) {
                let cert = cert.map_err(|e| invalid("caCert", format!("is not PEM: {e}")))?;
                roots.add(cert).map_err(|e| invalid("caCert", e.to_string()))?;
            }
            if roots.is_empty() {
                return Err(invalid("caCert", "holds no certificate".into()));
            }
        }
        None => {
            for cert in rustls_native_certs::load_native_certs().certs {
                let _ = roots.add(cert);
            }
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| invalid("url", e.to_string()))?
        .with_root_certificates(roots);
    let config = match (&spec.client_cert, &spec.client_key) {
        (Some(cert), Some(key)) => {
            let certs = CertificateDer::pem_slice_iter(&crate::ingest::pem(
                &format!("{field}.clientCert"),
                cert,
            )?)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| invalid("clientCert", format!("is not PEM: {e}")))?;
            let key = PrivateKeyDer::from_pem_slice(&crate::ingest::pem(
                &format!("{field}.clientKey"),
                key,
            )?)
            .map_err(|e| invalid("clientKey", format!("is not a PEM private key: {e}")))?;
            builder
                .with_client_auth_cert(certs, key)
                .map_err(|e| invalid("clientCert", e.to_string()))?
        }
        _ => builder.with_no_client_auth(),
    };
    Ok(TlsConfiguration::Rustls(Arc::new(config)))
}

/// One MQTT event of one EventSource.
#[derive(Clone)]
pub struct MqttSource {
    pub(crate) origin: Origin,
    broker: BrokerUrl,
    transport: Transport,
    filter: String,
    qos: QoS,
    client_id: String,
    clean_session: bool,
    v5: bool,
    retain: bool,
}

impl std::fmt::Debug for MqttSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MqttSource")
            .field("broker", &self.broker)
            .field("filter", &self.filter)
            .field("client_id", &self.client_id)
            .field("v5", &self.v5)
            .finish_non_exhaustive()
    }
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
        crate::source::checked(check(&field, spec))?;
        let broker = parse_url(&spec.url).map_err(|e| SourceError::Invalid {
            path: format!("{field}.url"),
            message: e.to_string(),
        })?;
        // `check` refused any other QoS and version above.
        let qos = match spec.qos.unwrap_or(1) {
            0 => QoS::AtMostOnce,
            2 => QoS::ExactlyOnce,
            _ => QoS::AtLeastOnce,
        };
        let v5 = spec.protocol_version.as_deref() == Some("5");
        let transport = match broker.scheme {
            Scheme::Tcp => Transport::Tcp,
            Scheme::Tls => Transport::Tls(tls_config(&field, spec)?),
            Scheme::Ws => Transport::Ws,
            Scheme::Wss => Transport::Wss(tls_config(&field, spec)?),
        };
        // Unique per EventSource and event (OpenFunction's `<ns>-esc-mqtt-<event>` omitted
        // the EventSource, so two EventSources could steal each other's session), and per
        // topic filter: a persistent session keeps its subscriptions, so after the manifest's
        // topic changes, the old session would go on delivering the old topic. Replicas in a
        // share group need one each, so the host name is added there.
        let topic_tag =
            &uuid::Uuid::new_v5(&ID_NAMESPACE, spec.topic.as_bytes()).simple().to_string()[..8];
        let mut client_id = spec
            .consumer_id
            .clone()
            .unwrap_or_else(|| format!("ofe-{namespace}-{eventsource}-{event}-{topic_tag}"));
        let filter = match &spec.share_group {
            Some(group) => {
                if spec.consumer_id.is_none()
                    && let Some(host) = ofe_core::host_name()
                {
                    client_id = format!("{client_id}-{host}");
                }
                format!("$share/{group}/{}", spec.topic)
            }
            None => spec.topic.clone(),
        };
        Ok(Self {
            origin: Origin::of(
                namespace,
                eventsource,
                "mqtt",
                event,
                MQTT_EVENT_TYPE,
                ID_NAMESPACE,
            )
            .with_schema(&format!("spec.mqtt.{event}"), spec.schema.as_ref())?,
            broker,
            transport,
            filter,
            qos,
            client_id,
            clean_session: spec.clean_session.unwrap_or(false),
            v5,
            retain: spec.retain.unwrap_or(false),
        })
    }

    /// Uses `client_id` (replicas sharing a group need distinct ones).
    pub fn with_client_id(mut self, client_id: impl Into<String>) -> Self {
        self.client_id = client_id.into();
        self
    }

    /// Runs until `shutdown`.
    pub async fn run(
        self,
        bus: Arc<dyn EventBus>,
        metrics: SourceMetrics,
        shutdown: CancellationToken,
    ) {
        let (client, events) = self.connect();
        // The event loop is polled by a task of its own. Acks and subscriptions are requests
        // that only a poll sends; awaited in the polling task, they deadlock as soon as the
        // request queue fills under load. A bounded channel in between keeps backpressure:
        // when it is full, the poller stops reading from the broker.
        let (tx, mut rx) = tokio::sync::mpsc::channel(BATCH);
        let poller = tokio::spawn(poll(
            events,
            tx,
            self.broker.host.clone(),
            self.origin.clone(),
            shutdown.clone(),
        ));
        let publisher = self.origin.publisher(&*bus, &metrics, &shutdown);
        'run: loop {
            let first = tokio::select! {
                () = shutdown.cancelled() => break,
                first = rx.recv() => first,
            };
            let Some(first) = first else { break };
            let mut received = vec![first];
            while received.len() < BATCH {
                match rx.try_recv() {
                    Ok(polled) => received.push(polled),
                    Err(_) => break,
                }
            }
            let mut batch = Vec::new();
            let mut connected = false;
            // Messages of a connection that has since been replaced are published but not
            // acknowledged: their packet ids belong to the old connection (the broker sends
            // them again in a persistent session, and the bus drops the repeats).
            let mut ack_from = 0;
            for polled in received {
                match polled {
                    Polled::Connected => {
                        connected = true;
                        ack_from = batch.len();
                    }
                    Polled::Message(message) => batch.push(message),
                    Polled::Other | Polled::Failed(_) => {}
                }
            }
            if connected && let Err(error) = client.subscribe(&self.filter, self.qos).await {
                tracing::warn!(%error, topic = %self.filter, "MQTT subscribe failed");
            }
            let taken: Vec<&Incoming> =
                batch.iter().filter(|m| self.retain || !m.retain()).collect();
            if taken.len() < batch.len() {
                tracing::debug!(
                    skipped = batch.len() - taken.len(),
                    "skipping retained messages (retain: false)"
                );
            }
            publisher.received(taken.len());
            let events: Vec<Event> = taken.iter().map(|m| self.to_event(m)).collect();
            // A batch is what arrived while the last one was being stored.
            if !publisher.all(&events).await {
                break 'run;
            }
            // Only now does the broker learn the messages are taken care of.
            for message in &batch[ack_from..] {
                if let Err(error) = client.ack(message).await {
                    tracing::warn!(%error, "MQTT ack failed; the broker will deliver the message again");
                }
            }
        }
        client.disconnect().await;
        poller.abort();
    }

    fn connect(&self) -> (Client, Events) {
        let host = match self.broker.scheme {
            Scheme::Ws | Scheme::Wss => self.broker.ws_url(),
            Scheme::Tcp | Scheme::Tls => self.broker.host.clone(),
        };
        let keep_alive = Duration::from_secs(30);
        if self.v5 {
            use rumqttc::v5::{AsyncClient, MqttOptions};
            let mut options = MqttOptions::new(&self.client_id, host, self.broker.port);
            options.set_keep_alive(keep_alive);
            options.set_clean_start(self.clean_session);
            if !self.clean_session {
                // MQTT 5 ends a session at disconnect unless it has an expiry.
                options.set_session_expiry_interval(Some(24 * 3600));
            }
            options.set_manual_acks(true);
            options.set_max_packet_size(u32::try_from(MAX_PACKET).ok());
            options.set_transport(self.transport.clone());
            if let Some((user, password)) = &self.broker.credentials {
                options.set_credentials(user, password);
            }
            let (client, events) = AsyncClient::new(options, REQUESTS);
            (Client::V5(client), Events::V5(Box::new(events)))
        } else {
            use rumqttc::{AsyncClient, MqttOptions};
            let mut options = MqttOptions::new(&self.client_id, host, self.broker.port);
            options.set_keep_alive(keep_alive);
            options.set_clean_session(self.clean_session);
            options.set_manual_acks(true);
            options.set_max_packet_size(MAX_PACKET, MAX_PACKET);
            options.set_transport(self.transport.clone());
            if let Some((user, password)) = &self.broker.credentials {
                options.set_credentials(user, password);
            }
            let (client, events) = AsyncClient::new(options, REQUESTS);
            (Client::V4(client), Events::V4(Box::new(events)))
        }
    }

    /// The event for a message: the CloudEvent it carries, or a new one around its payload
    /// (see [`crate::ingest`]).
    fn to_event(&self, message: &Incoming) -> Event {
        let topic = message.topic();
        let (payload, pkid) = match message {
            Incoming::V4(p) => (&p.payload[..], p.pkid),
            Incoming::V5(p) => (&p.payload[..], p.pkid),
        };
        let identity = (pkid != 0).then(|| {
            let mut key = format!("{}/{topic}/{pkid}/", self.client_id).into_bytes();
            key.extend_from_slice(payload);
            key
        });
        let properties = match message {
            Incoming::V5(p) => p.properties.as_ref(),
            Incoming::V4(_) => None,
        };
        self.origin.event(&Message {
            payload,
            content_type: properties.and_then(|p| p.content_type.as_deref()),
            binary: properties
                .map(|p| p.user_properties.iter().map(|(n, v)| (n.as_str(), v.as_str())).collect())
                .unwrap_or_default(),
            subject: &topic,
            identity,
            ..Message::default()
        })
    }
}

/// A message received in either protocol version.
enum Incoming {
    V4(Publish),
    V5(PublishV5),
}

impl Incoming {
    fn topic(&self) -> String {
        match self {
            Self::V4(p) => p.topic.clone(),
            Self::V5(p) => String::from_utf8_lossy(&p.topic).into_owned(),
        }
    }

    fn retain(&self) -> bool {
        match self {
            Self::V4(p) => p.retain,
            Self::V5(p) => p.retain,
        }
    }
}

/// Polls the event loop until `shutdown` or until nobody listens, forwarding connections and
/// messages; connection failures are logged once when they start and once when they end, and
/// retried with backoff.
async fn poll(
    mut events: Events,
    tx: tokio::sync::mpsc::Sender<Polled>,
    broker: String,
    origin: crate::ingest::Origin,
    shutdown: CancellationToken,
) {
    let mut failing = false;
    let mut backoff = crate::ingest::Backoff::default();
    loop {
        let polled = tokio::select! {
            () = shutdown.cancelled() => return,
            polled = events.poll() => polled,
        };
        match polled {
            Polled::Failed(error) => {
                origin.unreachable(format!("{broker}: {error}"));
                if !failing {
                    tracing::warn!(%error, %broker, "MQTT connection failed; reconnecting with backoff");
                    failing = true;
                }
                if !backoff.wait(&shutdown).await {
                    return;
                }
                continue;
            }
            Polled::Connected => {
                origin.connected();
                if failing {
                    tracing::info!(%broker, "MQTT connection recovered");
                    failing = false;
                }
                backoff.reset();
            }
            Polled::Other => continue,
            Polled::Message(_) => {}
        }
        if tx.send(polled).await.is_err() {
            return;
        }
    }
}

/// Room in the client's request queue: as many requests as MQTT has packet ids, plus a batch.
/// Acks are requests, and only a poll sends them; the poller in turn waits while a batch is
/// stored. With a smaller queue, a burst (a broker handing over a resumed session's backlog
/// at once, say) fills both, each side waits for the other, and the connection dies of
/// silence. A broker cannot have more QoS 1/2 messages unacknowledged than there are packet
/// ids, so acks never wait for room. The queue allocates only what it holds.
const REQUESTS: usize = u16::MAX as usize + BATCH + 16;

/// What one poll of the connection produced.
enum Polled {
    Connected,
    Message(Incoming),
    Other,
    Failed(String),
}

/// An event loop, in either protocol version.
enum Events {
    V4(Box<rumqttc::EventLoop>),
    V5(Box<rumqttc::v5::EventLoop>),
}

impl Events {
    async fn poll(&mut self) -> Polled {
        match self {
            Self::V4(events) => match events.poll().await {
                Ok(rumqttc::Event::Incoming(rumqttc::Packet::ConnAck(_))) => Polled::Connected,
                Ok(rumqttc::Event::Incoming(rumqttc::Packet::Publish(p))) => {
                    Polled::Message(Incoming::V4(p))
                }
                Ok(_) => Polled::Other,
                Err(e) => Polled::Failed(e.to_string()),
            },
            Self::V5(events) => {
                use rumqttc::v5::mqttbytes::v5::Packet;
                match events.poll().await {
                    Ok(rumqttc::v5::Event::Incoming(Packet::ConnAck(_))) => Polled::Connected,
                    Ok(rumqttc::v5::Event::Incoming(Packet::Publish(p))) => {
                        Polled::Message(Incoming::V5(p))
                    }
                    Ok(_) => Polled::Other,
                    Err(e) => Polled::Failed(e.to_string()),
                }
            }
        }
    }
}

/// A client handle, in either protocol version.
enum Client {
    V4(rumqttc::AsyncClient),
    V5(rumqttc::v5::AsyncClient),
}

impl Client {
    async fn subscribe(&self, filter: &str, qos: QoS) -> Result<(), String> {
        match self {
            Self::V4(client) => client.subscribe(filter, qos).await.map_err(|e| e.to_string()),
            Self::V5(client) => {
                let qos = match qos {
                    QoS::AtMostOnce => rumqttc::v5::mqttbytes::QoS::AtMostOnce,
                    QoS::AtLeastOnce => rumqttc::v5::mqttbytes::QoS::AtLeastOnce,
                    QoS::ExactlyOnce => rumqttc::v5::mqttbytes::QoS::ExactlyOnce,
                };
                client.subscribe(filter, qos).await.map_err(|e| e.to_string())
            }
        }
    }

    async fn ack(&self, message: &Incoming) -> Result<(), String> {
        match (self, message) {
            (Self::V4(client), Incoming::V4(p)) => client.ack(p).await.map_err(|e| e.to_string()),
            (Self::V5(client), Incoming::V5(p)) => client.ack(p).await.map_err(|e| e.to_string()),
            _ => Ok(()),
        }
    }

    async fn disconnect(&self) {
        let result = match self {
            Self::V4(client) => client.disconnect().await.map_err(|e| e.to_string()),
            Self::V5(client) => client.disconnect().await.map_err(|e| e.to_string()),
        };
        if let Err(error) = result {
            tracing::debug!(%error, "MQTT disconnect failed");
        }
    }
}

/// The checks of one `spec.mqtt` event's fields on their own, each found at once (`ofe
/// validate` lists them all); `path` is the event's, e.g. `spec.mqtt.<event>`. Making the
/// source runs them first, then compiles what they let through.
pub(crate) fn check(path: &str, mqtt: &MqttSpec) -> Vec<Diagnostic> {
    let mut out = Vec::new();
    if let Some(v) = mqtt.protocol_version.as_deref()
        && !matches!(v, "3.1.1" | "5")
    {
        out.push(Diagnostic::error(
            format!("{path}.protocolVersion"),
            format!("`{v}` is not supported; use \"3.1.1\" or \"5\""),
        ));
    }
    if mqtt.qos.is_some_and(|q| !(0..=2).contains(&q)) {
        out.push(Diagnostic::error(format!("{path}.qos"), "must be 0, 1 or 2"));
    }
    if mqtt.client_cert.is_some() != mqtt.client_key.is_some() {
        out.push(Diagnostic::error(
            path,
            "clientCert and clientKey go together; set both or neither",
        ));
    }
    if mqtt.share_group.as_deref().is_some_and(|g| g.is_empty() || g.contains(['/', '+', '#'])) {
        out.push(Diagnostic::error(
            format!("{path}.shareGroup"),
            "must be a non-empty name without `/`, `+` or `#`",
        ));
    }
    out
}

crate::source::broker_kind!(mqtt, MqttSource, check);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_ids_follow_the_eventsource_event_and_topic() {
        let spec = |topic: &str| MqttSpec {
            url: "tcp://127.0.0.1".into(),
            topic: topic.into(),
            ..Default::default()
        };
        let id = |es: &str, topic: &str| {
            MqttSource::new("ns", es, "t", &spec(topic)).expect("source").client_id
        };
        assert_eq!(id("a", "fleet/#"), id("a", "fleet/#"), "stable across restarts");
        assert!(id("a", "fleet/#").starts_with("ofe-ns-a-t-"));
        assert_ne!(id("a", "fleet/#"), id("b", "fleet/#"), "one session per EventSource");
        assert_ne!(id("a", "fleet/#"), id("a", "cars/#"), "a new topic is a new session");
    }

    #[test]
    fn urls() {
        let u = parse_url("tcp://admin:public@emqx:1884").expect("url");
        assert_eq!((u.host.as_str(), u.port), ("emqx", 1884));
        assert_eq!(u.credentials, Some(("admin".into(), "public".into())));
        assert_eq!(parse_url("mqtt://127.0.0.1").expect("url").port, 1883);
        let tls = parse_url("ssl://x").expect("url");
        assert_eq!((tls.scheme, tls.port), (Scheme::Tls, 8883));
        let ws = parse_url("ws://u:p@broker:9001").expect("url");
        assert_eq!(ws.ws_url(), "ws://broker:9001/mqtt", "credentials stay out of the URL");
        assert_eq!(ws.credentials, Some(("u".into(), "p".into())));
        assert_eq!(parse_url("wss://b/ws").expect("url").ws_url(), "wss://b:443/ws");
        assert_eq!(parse_url("http://x"), Err(UrlError::Scheme("http".into())));
        assert_eq!(parse_url("tcp://u:s3cret@x:port"), Err(UrlError::Port("port".into())));
        assert_eq!(parse_url("tcp://u:s3cret@:1883"), Err(UrlError::NoHost));
        assert_eq!(parse_url("localhost:1883"), Err(UrlError::NoScheme));
    }
}
