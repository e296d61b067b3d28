//! The Kafka EventSource.
//!
//! - Consumes `topic` in the consumer group `ofe-<namespace>-<eventsource>-<event>` (or
//!   `consumerGroup`): unique per EventSource and event, so two EventSources on one topic each
//!   get every message, while replicas of one EventSource split the partitions.
//! - A new group starts at `initialOffset` (`latest` by default); a known group resumes from its
//!   committed offsets.
//! - Offsets are committed only after the bus has acknowledged every event up to them: a crash
//!   means redelivery, never loss. A redelivered plain message gets the same id (derived from
//!   topic, partition and offset), so the bus drops it as a duplicate.
//! - The CloudEvents Kafka binding is understood: binary mode (`ce_` headers, `content-type`)
//!   and structured mode (`content-type: application/cloudevents+json`). Any other message
//!   becomes the data of a new event with the topic as `subject`, the message timestamp as
//!   `time` and its key, when it has one, as `partitionkey`.
//! - Messages are taken in batches of up to [`BATCH`](crate::ingest::BATCH) already fetched ones, published
//!   together (in order) and committed together, so a slow bus round trip is paid once per
//!   batch, not per message.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt as _;
use ofe_core::EventBus;
use ofe_core::kafka::Quiet;
use ofe_crds::KafkaSpec;
use ofe_crds::diagnostic::Diagnostic;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::message::{BorrowedMessage, Message as _};
use rdkafka::{Offset, TopicPartitionList};
use tokio_util::sync::CancellationToken;

use crate::SourceError;
use crate::ingest::{BATCH, Message, Origin};
use crate::metrics::SourceMetrics;

/// The CloudEvents `type` of events made from plain Kafka messages.
pub const KAFKA_EVENT_TYPE: &str = "io.openfunction.events.kafka";

/// UUID namespace of derived ids.
const ID_NAMESPACE: uuid::Uuid = uuid::Uuid::from_u128(0x6f66_655f_6b61_666b_8000_0000_0000_0001);

/// One Kafka event of one EventSource.
#[derive(Clone, Debug)]
pub struct KafkaSource {
    pub(crate) origin: Origin,
    topic: String,
    group: String,
    config: ClientConfig,
}

impl KafkaSource {
    /// The source for event `event` of EventSource `eventsource` in `namespace`.
    pub fn new(
        namespace: &str,
        eventsource: &str,
        event: &str,
        spec: &KafkaSpec,
    ) -> Result<Self, SourceError> {
        crate::source::checked(check(&format!("spec.kafka.{event}"), spec))?;
        // `check` refused a missing topic, and SASL without both credentials, above.
        let topic = spec.topic.clone().unwrap_or_default();
        let group = spec
            .consumer_group
            .clone()
            .unwrap_or_else(|| format!("ofe-{namespace}-{eventsource}-{event}"));
        let mut config = ClientConfig::new();
        config
            .set("bootstrap.servers", &spec.brokers)
            .set("broker.address.family", "v4")
            .set("group.id", &group)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", spec.initial_offset.as_deref().unwrap_or("latest"))
            .set("session.timeout.ms", "10000")
            .set("enable.partition.eof", "false");
        // Static membership (KIP-345): a restarted process with the same instance id takes its
        // partitions back at once instead of waiting out the dead member's session. The host
        // name is stable for a standalone process and unique per pod.
        if let Some(host) = ofe_core::host_name() {
            config.set("group.instance.id", format!("{group}-{host}"));
        }
        if let Some(max) = spec.max_message_bytes {
            let max = max.max(1).to_string();
            config.set("fetch.message.max.bytes", &max).set("message.max.bytes", &max);
        }
        if spec.auth_required
            && let (Some(user), Some(password)) = (&spec.sasl_username, &spec.sasl_password)
        {
            config
                .set("security.protocol", "sasl_plaintext")
                .set("sasl.mechanisms", spec.sasl_mechanism.as_deref().unwrap_or("PLAIN"))
                .set("sasl.username", user)
                .set("sasl.password", password);
        }
        Ok(Self {
            origin: Origin::of(
                namespace,
                eventsource,
                "kafka",
                event,
                KAFKA_EVENT_TYPE,
                ID_NAMESPACE,
            )
            .with_schema(&format!("spec.kafka.{event}"), spec.schema.as_ref())?,
            topic,
            group,
            config,
        })
    }

    /// The consumer group.
    pub fn group(&self) -> &str {
        &self.group
    }

    /// Asks the brokers for the topic's metadata, which says whether they can be reached (a
    /// consumer alone connects lazily, and would say nothing until a message or an error).
    async fn report_reachability(&self) {
        if self.origin.reporter().is_none() {
            return;
        }
        let config = self.config.clone();
        let topic = self.topic.clone();
        let checked = tokio::task::spawn_blocking(move || {
            let probe: rdkafka::consumer::BaseConsumer<Quiet> =
                config.create_with_context(Quiet)?;
            probe.fetch_metadata(Some(&topic), Duration::from_secs(5)).map(|_| ())
        })
        .await;
        match checked {
            Ok(Ok(())) => self.origin.connected(),
            Ok(Err(error)) => self.origin.unreachable(format!("{}: {error}", self.topic)),
            Err(error) => self.origin.unreachable(error),
        }
    }

    /// Runs until `shutdown`. librdkafka reconnects by itself; a consumer that cannot even be
    /// created (bad configuration) is retried with backoff and logged.
    pub async fn run(
        self,
        bus: Arc<dyn EventBus>,
        metrics: SourceMetrics,
        shutdown: CancellationToken,
    ) {
        let mut backoff = crate::ingest::Backoff::default();
        let consumer: StreamConsumer<Quiet> = loop {
            let created =
                self.config.create_with_context::<_, StreamConsumer<Quiet>>(Quiet).and_then(|c| {
                    c.subscribe(&[&self.topic])?;
                    Ok(c)
                });
            match created {
                Ok(consumer) => break consumer,
                Err(error) => {
                    self.origin.unreachable(&error);
                    tracing::warn!(%error, topic = %self.topic, "cannot start the Kafka consumer; retrying");
                    if !backoff.wait(&shutdown).await {
                        return;
                    }
                }
            }
        };
        let publisher = self.origin.publisher(&*bus, &metrics, &shutdown);
        self.report_reachability().await;
        let mut failing = false;
        // Next offset per partition, for everything the bus has.
        let mut done: BTreeMap<i32, i64> = BTreeMap::new();
        'consume: loop {
            let first = tokio::select! {
                () = shutdown.cancelled() => break,
                received = consumer.recv() => received,
            };
            let mut batch = Vec::new();
            match first {
                Ok(message) => batch.push(message),
                Err(error) => {
                    self.origin.unreachable(&error);
                    if !failing {
                        tracing::warn!(%error, topic = %self.topic, "Kafka consume failed; librdkafka retries");
                        failing = true;
                    }
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                }
            }
            if failing {
                tracing::info!(topic = %self.topic, "Kafka consumption recovered");
                self.origin.connected();
                failing = false;
            }
            // Take what is already fetched, without waiting for more.
            while batch.len() < BATCH {
                match consumer.recv().now_or_never() {
                    Some(Ok(message)) => batch.push(message),
                    _ => break,
                }
            }
            let events: Vec<_> = batch.iter().map(|m| self.to_event(m)).collect();
            publisher.received(events.len());
            if !publisher.all(&events).await {
                // Shutdown or a closed bus: commit nothing of this batch, it comes again.
                break 'consume;
            }
            for message in &batch {
                let slot = done.entry(message.partition()).or_default();
                *slot = (*slot).max(message.offset() + 1);
            }
            commit(&consumer, &self.topic, &done, CommitMode::Async);
        }
        // Asynchronous commits may still be in flight: make sure the last one lands.
        commit(&consumer, &self.topic, &done, CommitMode::Sync);
    }

    /// The event for a message (see [`crate::ingest`]).
    pub fn to_event(&self, message: &BorrowedMessage<'_>) -> cloudevents::Event {
        let parts = ofe_core::kafka::parts(message);
        let identity = format!("{}/{}/{}", message.topic(), message.partition(), message.offset())
            .into_bytes();
        let time = message
            .timestamp()
            .to_millis()
            .and_then(chrono::DateTime::<chrono::Utc>::from_timestamp_millis);
        let extensions = message
            .key()
            .map(|k| vec![("partitionkey", String::from_utf8_lossy(k).into_owned())])
            .unwrap_or_default();
        self.origin.event(&Message {
            payload: message.payload().unwrap_or_default(),
            content_type: parts.content_type.as_deref(),
            binary: parts.pairs(),
            subject: message.topic(),
            identity: Some(identity),
            time,
            extensions,
        })
    }
}

/// Commits `next` (the offset to resume from, per partition).
fn commit(
    consumer: &StreamConsumer<Quiet>,
    topic: &str,
    next: &BTreeMap<i32, i64>,
    mode: CommitMode,
) {
    if next.is_empty() {
        return;
    }
    let mut list = TopicPartitionList::new();
    for (partition, offset) in next {
        if list.add_partition_offset(topic, *partition, Offset::Offset(*offset)).is_err() {
            return;
        }
    }
    if let Err(error) = consumer.commit(&list, mode) {
        // A later commit covers these offsets; until then a crash redelivers them, which ids
        // derived from the offsets make harmless.
        tracing::debug!(%error, "Kafka offset commit failed");
    }
}

/// The checks of one `spec.kafka` event's fields on their own, each found at once (`ofe
/// validate` lists them all); `path` is the event's, e.g. `spec.kafka.<event>`. Making the
/// source runs them first, then compiles what they let through.
pub(crate) fn check(path: &str, kafka: &KafkaSpec) -> Vec<Diagnostic> {
    let mut out = Vec::new();
    if kafka.topic.as_deref().is_none_or(str::is_empty) {
        out.push(Diagnostic::error(
            format!("{path}.topic"),
            "is required; name the topic to consume",
        ));
    }
    if kafka.brokers.trim().is_empty() {
        out.push(Diagnostic::error(
            format!("{path}.brokers"),
            "is empty; list `host:port` bootstrap brokers, comma-separated",
        ));
    }
    if kafka.auth_required && (kafka.sasl_username.is_none() || kafka.sasl_password.is_none()) {
        out.push(Diagnostic::error(
            path,
            "authRequired is true but saslUsername or saslPassword is missing; set both",
        ));
    }
    if let Some(m) = kafka.sasl_mechanism.as_deref()
        && !matches!(m, "PLAIN" | "SCRAM-SHA-256" | "SCRAM-SHA-512")
    {
        out.push(Diagnostic::error(
            format!("{path}.saslMechanism"),
            format!("`{m}` is not supported; use PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512"),
        ));
    }
    if let Some(o) = kafka.initial_offset.as_deref()
        && !matches!(o, "earliest" | "latest")
    {
        out.push(Diagnostic::error(
            format!("{path}.initialOffset"),
            format!("`{o}` is not an offset; use earliest or latest"),
        ));
    }
    if kafka.max_message_bytes.is_some_and(|n| n < 1) {
        out.push(Diagnostic::error(format!("{path}.maxMessageBytes"), "must be at least 1 byte"));
    }
    out
}

crate::source::broker_kind!(kafka, KafkaSource, check);
