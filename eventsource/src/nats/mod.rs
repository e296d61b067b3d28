//! The NATS EventSource (an ofe addition): core subjects, or a JetStream stream.
//!
//! - **Core NATS** subscribes to `subject` in the queue group
//!   `ofe-<namespace>-<eventsource>-<event>` (or `queueGroup`), so replicas split the
//!   messages. Core NATS is at-most-once by nature: what is published while ofe is not
//!   subscribed is lost. A message's `Nats-Msg-Id` header, when present, makes its id, so a
//!   republished message is a detectable duplicate.
//! - **JetStream** (`jetstream.stream`) reads through the durable pull consumer
//!   `ofe-<namespace>-<eventsource>-<event>` (or `jetstream.durable`), shared by replicas and
//!   filtered to `subject`. Each message is acknowledged only after the bus has its event, so
//!   a crash means redelivery, never loss; the id derives from stream and sequence, so the
//!   redelivery is dropped as a duplicate.
//! - The CloudEvents NATS binding is understood: binary mode (`ce-` headers, `content-type`)
//!   and structured mode. Other payloads become the data of a new event with the NATS subject
//!   as `subject`.

use std::sync::Arc;

use async_nats::jetstream::{self, consumer};
use futures::StreamExt as _;
use ofe_core::nats::{NatsAuth, connect_client};
use ofe_core::{EventBus, TlsFiles};
use ofe_crds::NatsSourceSpec;
use ofe_crds::diagnostic::Diagnostic;
use tokio_util::sync::CancellationToken;

use crate::SourceError;
use crate::ingest::{BATCH, Message, Next, Origin, Publisher};
use crate::metrics::SourceMetrics;

/// The CloudEvents `type` of events made from plain NATS messages.
pub const NATS_EVENT_TYPE: &str = "io.openfunction.events.nats";

/// UUID namespace of derived ids.
const ID_NAMESPACE: uuid::Uuid = uuid::Uuid::from_u128(0x6f66_655f_6e61_7473_8000_0000_0000_0001);

#[derive(Clone, Debug)]
struct JetStreamInput {
    stream: String,
    durable: String,
    deliver: consumer::DeliverPolicy,
}

/// One NATS event of one EventSource.
#[derive(Clone, Debug)]
pub struct NatsSource {
    pub(crate) origin: Origin,
    url: String,
    subject: String,
    queue_group: String,
    jetstream: Option<JetStreamInput>,
    auth: NatsAuth,
    tls: Option<TlsFiles>,
}

impl NatsSource {
    /// The source for event `event` of EventSource `eventsource` in `namespace`.
    pub fn new(
        namespace: &str,
        eventsource: &str,
        event: &str,
        spec: &NatsSourceSpec,
    ) -> Result<Self, SourceError> {
        let default_name = format!("ofe-{namespace}-{eventsource}-{event}");
        crate::source::checked(check(&format!("spec.nats.{event}"), spec))?;
        Ok(Self {
            origin: Origin::of(
                namespace,
                eventsource,
                "nats",
                event,
                NATS_EVENT_TYPE,
                ID_NAMESPACE,
            )
            .with_schema(&format!("spec.nats.{event}"), spec.schema.as_ref())?,
            url: spec.url.clone(),
            subject: spec.subject.clone(),
            queue_group: spec.queue_group.clone().unwrap_or_else(|| default_name.clone()),
            jetstream: spec.jetstream.as_ref().map(|js| JetStreamInput {
                stream: js.stream.clone(),
                // Durable names may not contain `.`, `*`, `>` or spaces.
                durable: js
                    .durable
                    .clone()
                    .unwrap_or_else(|| default_name.clone())
                    .replace(['.', '*', '>', ' '], "_"),
                deliver: match js.initial_offset.as_deref() {
                    Some("earliest") => consumer::DeliverPolicy::All,
                    _ => consumer::DeliverPolicy::New,
                },
            }),
            auth: spec.auth.as_ref().map(Into::into).unwrap_or(NatsAuth::None),
            tls: spec.tls.as_ref().map(Into::into),
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
        let what = format!("the NATS source of subject `{}`", self.subject);
        let session = || self.session(&publisher);
        self.origin.reconnecting(&what, &shutdown, session).await;
    }

    /// One connection: reads until shutdown (`Ok`) or a failure. The session watches
    /// `shutdown` itself, so that it can close its connection cleanly: a connection left
    /// behind would keep a pull request open at the server, which could take a message the
    /// next session then waits an ack-wait for.
    async fn session(&self, publisher: &Publisher<'_>) -> Result<(), String> {
        let client = connect_client(&self.url, &self.auth, self.tls.as_ref())
            .await
            .map_err(|e| e.to_string())?;
        self.origin.connected();
        let result = match &self.jetstream {
            None => self.read_core(&client, publisher).await,
            Some(js) => self.read_jetstream(&client, js, publisher).await,
        };
        if result.is_ok() {
            let _ = client.drain().await;
        }
        result
    }

    /// Core NATS: at-most-once, in the queue group.
    async fn read_core(
        &self,
        client: &async_nats::Client,
        publisher: &Publisher<'_>,
    ) -> Result<(), String> {
        let mut sub = client
            .queue_subscribe(self.subject.clone(), self.queue_group.clone())
            .await
            .map_err(|e| e.to_string())?;
        tracing::info!(subject = %self.subject, queue = %self.queue_group, "subscribed to NATS (core, at-most-once)");
        loop {
            let message = tokio::select! {
                () = publisher.shutdown.cancelled() => break,
                message = sub.next() => message,
            };
            let Some(message) = message else {
                return Err("the NATS subscription ended".into());
            };
            publisher.received(1);
            let event =
                self.to_event(&message.subject, message.headers.as_ref(), &message.payload, None);
            if !publisher.one(&event).await {
                break;
            }
        }
        let _ = sub.unsubscribe().await;
        Ok(())
    }

    /// JetStream: a durable consumer, acknowledged after the bus has each batch.
    async fn read_jetstream(
        &self,
        client: &async_nats::Client,
        js: &JetStreamInput,
        publisher: &Publisher<'_>,
    ) -> Result<(), String> {
        let stream = jetstream::new(client.clone())
            .get_stream(&js.stream)
            .await
            .map_err(|e| format!("JetStream stream `{}`: {e}", js.stream))?;
        let consumer: consumer::PullConsumer = stream
            .get_or_create_consumer(
                &js.durable,
                consumer::pull::Config {
                    durable_name: Some(js.durable.clone()),
                    filter_subject: self.subject.clone(),
                    deliver_policy: js.deliver,
                    ack_policy: consumer::AckPolicy::Explicit,
                    // Acks follow the bus publish within milliseconds; a message lost with a
                    // dead connection comes back soon. A redelivery is dropped by its id.
                    ack_wait: std::time::Duration::from_secs(10),
                    max_ack_pending: i64::try_from(BATCH * 4).unwrap_or(1024),
                    ..Default::default()
                },
            )
            .await
            .map_err(|e| format!("JetStream consumer `{}`: {e}", js.durable))?;
        tracing::info!(stream = %js.stream, durable = %js.durable, subject = %self.subject, "reading JetStream");
        let mut messages = consumer
            .stream()
            .max_messages_per_batch(BATCH)
            .messages()
            .await
            .map_err(|e| e.to_string())?;
        loop {
            let (batch, failed) =
                match crate::ingest::next_batch(&mut messages, BATCH, publisher.shutdown).await {
                    Next::Batch(batch, failed) => (batch, failed),
                    Next::Failed(e) => return Err(e.to_string()),
                    Next::Stopped => return Ok(()),
                    Next::Ended => return Err("the JetStream consumer ended".into()),
                };
            publisher.received(batch.len());
            let events: Vec<_> = batch
                .iter()
                .map(|m| {
                    let identity = m.info().ok().map(|info| {
                        format!("{}/{}", info.stream, info.stream_sequence).into_bytes()
                    });
                    self.to_event(&m.subject, m.headers.as_ref(), &m.payload, identity)
                })
                .collect();
            if !publisher.all(&events).await {
                // Shutdown: unacknowledged messages come again after the ack wait.
                return Ok(());
            }
            for message in &batch {
                if let Err(error) = message.ack().await {
                    tracing::debug!(%error, "JetStream ack failed; the message comes again and is dropped as a duplicate");
                }
            }
            if let Some(e) = failed {
                return Err(e.to_string());
            }
        }
    }

    /// The event for a message (see [`crate::ingest`]).
    fn to_event(
        &self,
        nats_subject: &str,
        headers: Option<&async_nats::HeaderMap>,
        payload: &[u8],
        identity: Option<Vec<u8>>,
    ) -> cloudevents::Event {
        let parts = ofe_core::nats::parts(headers);
        let identity =
            identity.or_else(|| parts.msg_id.map(|id| format!("{nats_subject}/{id}").into_bytes()));
        self.origin.event(&Message {
            payload,
            content_type: parts.content_type,
            binary: parts.attributes,
            subject: nats_subject,
            identity,
            ..Message::default()
        })
    }
}

/// The checks of one `spec.nats` event's fields on their own, each found at once (`ofe
/// validate` lists them all); `path` is the event's, e.g. `spec.nats.<event>`. Making the
/// source runs them first, then compiles what they let through.
pub(crate) fn check(path: &str, nats: &NatsSourceSpec) -> Vec<Diagnostic> {
    let mut out = Vec::new();
    if nats.url.trim().is_empty() {
        out.push(Diagnostic::error(format!("{path}.url"), "is empty; write nats://host:port"));
    }
    if nats.subject.trim().is_empty() || nats.subject.contains(char::is_whitespace) {
        out.push(Diagnostic::error(
            format!("{path}.subject"),
            "must be a NATS subject such as `fleet.>` (no spaces)",
        ));
    }
    if let Some(js) = &nats.jetstream {
        if js.stream.trim().is_empty() {
            out.push(Diagnostic::error(
                format!("{path}.jetstream.stream"),
                "is empty; name the stream",
            ));
        }
        if let Some(o) = js.initial_offset.as_deref()
            && !matches!(o, "earliest" | "latest")
        {
            out.push(Diagnostic::error(
                format!("{path}.jetstream.initialOffset"),
                format!("`{o}` is not an offset; use earliest or latest"),
            ));
        }
        if nats.queue_group.is_some() {
            out.push(Diagnostic::error(
                format!("{path}.queueGroup"),
                "applies to core NATS only; with jetstream, replicas share the durable consumer",
            ));
        }
    }
    out
}

crate::source::broker_kind!(nats, NatsSource, check);
