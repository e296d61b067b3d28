//! The MQTT sink (`sink.mqtt`): each event is a message in the CloudEvents MQTT 3.1.1
//! binding's structured mode (the whole event as JSON: MQTT 3.1.1 has no headers for binary
//! mode), published with QoS 1 (delivered at the broker's PUBACK) or 2 (at its PUBCOMP).
//!
//! One connection per broker and credentials, shared by every sink that uses it. The client
//! (rumqttc) reports acknowledgements by packet id only, and gives a publish its id when its
//! event loop sends it, in the order publishes were asked for; so each publish queues a
//! waiter first, the event loop hands it the id it sent, and the broker's acknowledgement of
//! that id completes it. A connection that fails fails every waiter (the deliveries retry) and
//! is not reused: a new one is made for the next event, so that publishes the old client
//! would resend after a reconnect cannot be mistaken for new ones.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use cloudevents::Event;
use ofe_core::trace::{self, KeyValue};
use rumqttc::{AsyncClient, Event as MqttEvent, MqttOptions, Outgoing, Packet, QoS, Transport};
use tokio::sync::oneshot;

use super::{Destination, Failure, Reply, Sink, SinkContext};

/// Requests the client queues before its event loop takes them.
const REQUESTS: usize = 1024;

type Waiter = oneshot::Sender<Result<(), String>>;

/// Publishes waiting for the broker: first for their packet id, then for its acknowledgement.
#[derive(Default)]
struct Waiting {
    unsent: VecDeque<Waiter>,
    sent: HashMap<u16, Waiter>,
    /// Set when the connection failed: later publishes fail at once.
    failed: Option<String>,
}

impl Waiting {
    fn fail_all(&mut self, reason: &str) {
        self.failed = Some(reason.to_string());
        for waiter in self.unsent.drain(..).chain(self.sent.drain().map(|(_, w)| w)) {
            let _ = waiter.send(Err(reason.to_string()));
        }
    }
}

/// One connection and its event loop.
struct Session {
    client: AsyncClient,
    waiting: Arc<Mutex<Waiting>>,
    /// Held while a waiter is queued and its publish asked for, so both keep one order.
    order: tokio::sync::Mutex<()>,
}

fn lock(waiting: &Mutex<Waiting>) -> std::sync::MutexGuard<'_, Waiting> {
    waiting.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A broker, and its live session when there is one.
struct Broker {
    options: MqttOptions,
    shown: String,
    session: tokio::sync::Mutex<Option<Arc<Session>>>,
}

/// Numbers the sessions, for distinct client ids.
static SESSIONS: AtomicU64 = AtomicU64::new(0);

impl Broker {
    async fn session(&self) -> Arc<Session> {
        let mut current = self.session.lock().await;
        if let Some(session) = current.as_ref()
            && lock(&session.waiting).failed.is_none()
        {
            return session.clone();
        }
        let mut options = self.options.clone();
        let n = SESSIONS.fetch_add(1, Ordering::Relaxed);
        options.set_client_id(format!("ofe-sink-{}-{n}", std::process::id()));
        let (client, mut events) = AsyncClient::new(options, REQUESTS);
        let waiting = Arc::new(Mutex::new(Waiting::default()));
        let session = Arc::new(Session {
            client,
            waiting: waiting.clone(),
            order: tokio::sync::Mutex::new(()),
        });
        let shown = self.shown.clone();
        tokio::spawn(async move {
            loop {
                match events.poll().await {
                    Ok(MqttEvent::Outgoing(Outgoing::Publish(pkid))) => {
                        let mut waiting = lock(&waiting);
                        if let Some(waiter) = waiting.unsent.pop_front() {
                            waiting.sent.insert(pkid, waiter);
                        }
                    }
                    Ok(MqttEvent::Incoming(Packet::PubAck(ack))) => {
                        if let Some(waiter) = lock(&waiting).sent.remove(&ack.pkid) {
                            let _ = waiter.send(Ok(()));
                        }
                    }
                    Ok(MqttEvent::Incoming(Packet::PubComp(done))) => {
                        if let Some(waiter) = lock(&waiting).sent.remove(&done.pkid) {
                            let _ = waiter.send(Ok(()));
                        }
                    }
                    Ok(_) => {}
                    Err(error) => {
                        let reason = format!("MQTT broker {shown}: {error}");
                        tracing::debug!(%reason, "MQTT sink connection failed");
                        lock(&waiting).fail_all(&reason);
                        return;
                    }
                }
            }
        });
        *current = Some(session.clone());
        session
    }
}

/// The brokers, per URL and settings.
static BROKERS: LazyLock<super::broker::Shared<Broker>> = LazyLock::new(super::broker::Shared::new);

/// An MQTT topic.
pub struct MqttSink {
    broker: Arc<Broker>,
    topic: String,
    qos: QoS,
    retain: bool,
}

impl std::fmt::Debug for MqttSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MqttSink")
            .field("url", &self.broker.shown)
            .field("topic", &self.topic)
            .finish()
    }
}

impl MqttSink {
    /// The sink `spec` asks for; the error names the field.
    pub fn compile(spec: &ofe_crds::sinks::MqttSinkSpec) -> Result<Destination, String> {
        let url = url::Url::parse(&spec.url).map_err(|e| format!("url: {e}"))?;
        let tls = matches!(url.scheme(), "ssl" | "mqtts");
        let host = url.host_str().ok_or("url: names no host")?.to_string();
        let port = url.port().unwrap_or(if tls { 8883 } else { 1883 });
        let mut options = MqttOptions::new("ofe-sink", host.clone(), port);
        options.set_keep_alive(Duration::from_secs(30));
        options.set_clean_session(true);
        options.set_max_packet_size(16 << 20, 16 << 20);
        if !url.username().is_empty() {
            let decode =
                |s: &str| percent_encoding::percent_decode_str(s).decode_utf8_lossy().into_owned();
            options.set_credentials(decode(url.username()), decode(url.password().unwrap_or("")));
        }
        if tls || spec.tls.is_some() {
            let files = spec.tls.clone().unwrap_or_default();
            let settings = crate::sink::http::tls::SinkTls {
                ca_file: files.ca_file.map(Into::into),
                client: files.cert_file.zip(files.key_file).map(|(c, k)| (c.into(), k.into())),
            };
            let names = crate::sink::http::tls::TlsNames {
                ca: "tls.caFile",
                cert: "tls.certFile",
                key: "tls.keyFile",
            };
            let mut config = crate::sink::http::tls::rustls_config(&settings, &names)
                .map_err(|e| e.to_string())?;
            config.alpn_protocols.clear();
            options.set_transport(Transport::tls_with_config(rumqttc::TlsConfiguration::Rustls(
                Arc::new(config),
            )));
        }
        let shown = format!("{}://{host}:{port}", url.scheme());
        let key = format!("{}\n{:?}", spec.url, spec.tls);
        let broker = BROKERS.get_or(&key, || {
            Ok::<_, String>(Broker { options, shown, session: tokio::sync::Mutex::new(None) })
        })?;
        Ok(Destination::new(Self {
            broker,
            topic: spec.topic.clone(),
            qos: if spec.qos == Some(2) { QoS::ExactlyOnce } else { QoS::AtLeastOnce },
            retain: spec.retain.unwrap_or(false),
        }))
    }
}

#[async_trait]
impl Sink for MqttSink {
    fn describe(&self) -> String {
        format!("{}/{}", self.broker.shown, self.topic)
    }

    fn span(&self, resend: Option<KeyValue>) -> trace::Span {
        super::broker::broker_span("mqtt", &self.topic, resend)
    }

    async fn attempt(
        &self,
        event: &Event,
        context: &SinkContext<'_>,
    ) -> Result<Option<Box<Reply>>, Failure> {
        let payload = ofe_core::event::to_structured(event)
            .map_err(|e| Failure::permanent(ofe_core::chain(&e)))?;
        let session = self.broker.session().await;
        let (tx, rx) = oneshot::channel();
        {
            let _order = session.order.lock().await;
            {
                let mut waiting = lock(&session.waiting);
                if let Some(reason) = &waiting.failed {
                    return Err(Failure::transient(reason.clone()));
                }
                waiting.unsent.push_back(tx);
            }
            if let Err(error) =
                session.client.publish(&self.topic, self.qos, self.retain, payload).await
            {
                // Still last: nothing else was queued while `order` was held.
                lock(&session.waiting).unsent.pop_back();
                return Err(Failure::transient(format!(
                    "MQTT broker {}: {error}",
                    self.broker.shown
                )));
            }
        }
        match tokio::time::timeout(context.timeout, rx).await {
            Ok(Ok(Ok(()))) => Ok(None),
            Ok(Ok(Err(reason))) => Err(Failure::transient(reason)),
            Ok(Err(_)) => Err(Failure::transient(format!(
                "MQTT broker {}: the connection ended before the acknowledgement",
                self.broker.shown
            ))),
            Err(_) => Err(Failure::transient(format!(
                "MQTT broker {}: no acknowledgement within {:?}",
                self.broker.shown, context.timeout
            ))),
        }
    }
}
