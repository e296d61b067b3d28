//! The Kafka backend, for clusters.
//!
//! Topic layout: one topic per bus, `<prefix>.events` (default `ofe.events`), holding every
//! event and topic of that bus; the subject travels in the `ofe_subject` header. Every consumer
//! group reads the topic and keeps the subjects it subscribed to. This is the layout of
//! Knative's Kafka broker and Argo Events' Kafka bus, and it keeps the topic count independent
//! of the number of EventSources.
//!
//! - Records use the CloudEvents Kafka binding in binary mode: `ce_*` headers, `content-type`,
//!   data as the value. The key is the `partitionkey` extension, else the subject, so
//!   everything with one key (by default, one subject) stays in one partition, in order.
//! - The producer is idempotent with `acks=all`; publish returns when the broker acknowledged.
//! - Each consumer name is a consumer group. Offsets are committed only up to the lowest
//!   unsettled message of each partition, so a crash redelivers what was in flight, never
//!   skips it. Kafka has no per-message nack: a nack keeps the message in the subscription and
//!   delivers it again after the delay, holding back that partition's commit meanwhile.
//! - Trigger join state is kept in a compacted topic `<prefix>.state` (see `state.rs`).
//! - Kafka has no duplicate window: each subscription drops a message whose subject, `source`
//!   and `id` it saw within the window (2 minutes), and `publish` never reports duplicates.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use cloudevents::Event;
use futures::FutureExt;
use futures::future::BoxFuture;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance};
use rdkafka::message::{BorrowedMessage, Header, Headers, Message};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer, ThreadedProducer};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use tokio::sync::mpsc;

use ofe_core::kafka::Quiet;
use ofe_core::{
    Acker, BusError, Delivery, EventBus, Published, StartPosition, SubscribeOptions, Subscription,
    TlsFiles,
};
use ofe_core::{Subject, event};

mod consumer;
mod state;

use consumer::*;

/// SASL settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KafkaSasl {
    /// `PLAIN`, `SCRAM-SHA-256` or `SCRAM-SHA-512`.
    pub mechanism: String,
    /// User name.
    pub username: String,
    /// Password.
    pub password: String,
}

/// Settings of the Kafka backend.
#[derive(Clone, Debug)]
pub struct KafkaConfig {
    /// Comma-separated bootstrap brokers.
    pub brokers: String,
    /// Topic prefix; the topic is `<prefix>.events`.
    pub topic_prefix: String,
    /// Partitions when ofe creates the topic.
    pub partitions: i32,
    /// Replication factor when ofe creates the topic.
    pub replication: i32,
    /// SASL, when set.
    pub sasl: Option<KafkaSasl>,
    /// TLS, when set.
    pub tls: Option<TlsFiles>,
    /// Window in which a subscription drops repeated events.
    pub dedup_window: Duration,
    /// A name for this process that is unique among the bus's processes and survives its
    /// restarts (the runtime uses the host name and the data directory). When set, consumer
    /// groups use static membership (KIP-345): a restarted process takes its partitions back
    /// at once, instead of the group stalling until the dead member's session (10 s) ends,
    /// and a clean stop hands them over only when that session ends. `None`: dynamic members.
    pub instance: Option<String>,
}

impl KafkaConfig {
    /// Defaults for `brokers`.
    pub fn new(brokers: impl Into<String>) -> Self {
        Self {
            brokers: brokers.into(),
            topic_prefix: "ofe".into(),
            partitions: 3,
            replication: 1,
            sasl: None,
            tls: None,
            dedup_window: Duration::from_secs(120),
            instance: None,
        }
    }

    fn topic(&self) -> String {
        format!("{}.events", self.topic_prefix)
    }

    pub(crate) fn client_config(&self) -> ClientConfig {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &self.brokers);
        // Resolve `localhost` and friends to IPv4 first, as the brokers here listen there.
        c.set("broker.address.family", "v4");
        let protocol = match (&self.sasl, &self.tls) {
            (None, None) => "plaintext",
            (None, Some(_)) => "ssl",
            (Some(_), None) => "sasl_plaintext",
            (Some(_), Some(_)) => "sasl_ssl",
        };
        c.set("security.protocol", protocol);
        if let Some(sasl) = &self.sasl {
            c.set("sasl.mechanisms", &sasl.mechanism);
            c.set("sasl.username", &sasl.username);
            c.set("sasl.password", &sasl.password);
        }
        if let Some(tls) = &self.tls {
            if let Some(ca) = &tls.ca_file {
                c.set("ssl.ca.location", ca.display().to_string());
            }
            if let Some((cert, key)) = &tls.client {
                c.set("ssl.certificate.location", cert.display().to_string());
                c.set("ssl.key.location", key.display().to_string());
            }
        }
        c
    }
}

/// Kafka failed while the bus was doing `what`; librdkafka's error is the cause.
pub(super) fn unavailable<E: Into<ofe_core::Cause>>(
    what: &'static str,
) -> impl FnOnce(E) -> BusError {
    move |e| BusError::unavailable(what).because(e)
}

/// librdkafka refused a client setting; its error is the cause.
pub(super) fn refused<E: Into<ofe_core::Cause>>(e: E) -> BusError {
    BusError::config("librdkafka refused the client configuration (spec.kafka)").because(e)
}

/// Header carrying the bus subject.
const SUBJECT_HEADER: &str = "ofe_subject";
/// Largest record accepted, so 1 MiB events with their headers fit.
const MAX_MESSAGE_BYTES: &str = "8388608";

/// The Kafka bus. Cheap to clone.
#[derive(Clone)]
pub struct KafkaBus {
    config: Arc<KafkaConfig>,
    topic: Arc<str>,
    producer: FutureProducer<Quiet>,
    partitions: i32,
    /// The join state store, opened on first use.
    state: Arc<tokio::sync::OnceCell<Arc<state::KafkaState>>>,
    /// Whether the brokers answer, as the probe last found.
    connection: Arc<tokio::sync::watch::Sender<ofe_core::Connection>>,
    /// Per consumer group, a client that reads its committed offsets for [`EventBus::lag`].
    lag_readers: Arc<Mutex<HashMap<String, Arc<BaseConsumer<Quiet>>>>>,
}

/// How often the connection probe asks the brokers for metadata.
const PROBE_INTERVAL: Duration = Duration::from_secs(3);

/// Follows whether the brokers answer: every [`PROBE_INTERVAL`], a metadata request for the
/// topic. librdkafka reconnects by itself and reports no return, and with sparse connections
/// an idle client may hold no connection at all, so asking is the one reliable signal. The
/// probe stops once the bus is dropped.
fn probe(
    producer: FutureProducer<Quiet>,
    topic: String,
    brokers: String,
    state: std::sync::Weak<tokio::sync::watch::Sender<ofe_core::Connection>>,
) {
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(PROBE_INTERVAL).await;
            let Some(state) = state.upgrade() else { return };
            let (producer, name) = (producer.clone(), topic.clone());
            let answer = tokio::task::spawn_blocking(move || {
                producer.client().fetch_metadata(Some(&name), Duration::from_secs(5)).map(|_| ())
            })
            .await;
            let now = match answer {
                Ok(Ok(())) => ofe_core::Connection::Up,
                Ok(Err(e)) => {
                    ofe_core::Connection::Lost(format!("Kafka at {brokers} does not answer: {e}"))
                }
                Err(_) => return,
            };
            state.send_if_modified(|was| {
                let changed = *was != now;
                if changed {
                    match &now {
                        ofe_core::Connection::Up => {
                            tracing::info!(%brokers, "Kafka bus reachable again")
                        }
                        ofe_core::Connection::Lost(why)
                        | ofe_core::Connection::Storage { message: why, .. } => {
                            tracing::warn!(%brokers, error = %why, "Kafka bus unreachable")
                        }
                    }
                    *was = now.clone();
                }
                changed
            });
        }
    });
}

impl KafkaBus {
    /// Connects, and creates the topic when it is missing. Credentials or certificates the
    /// brokers refuse fail at once, with the reason, rather than as a timeout.
    pub async fn connect(config: KafkaConfig) -> Result<Self, BusError> {
        let topic = config.topic();
        let watch = AuthWatch::default();
        // librdkafka reports a refused login or TLS handshake on a client's main queue, which
        // rust-rdkafka's admin client never serves (it polls only its results). A producer's
        // own thread serves that queue, so one watches a connection of its own, made by asking
        // for metadata, while the admin client creates the topic.
        let watcher: Arc<ThreadedProducer<AuthWatch>> =
            Arc::new(config.client_config().create_with_context(watch.clone()).map_err(refused)?);
        {
            let watcher = watcher.clone();
            tokio::task::spawn_blocking(move || {
                let _ = watcher.client().fetch_metadata(None, Duration::from_secs(10));
            });
        }
        let admin: AdminClient<Quiet> =
            config.client_config().create_with_context(Quiet).map_err(refused)?;
        let new_topic =
            NewTopic::new(&topic, config.partitions, TopicReplication::Fixed(config.replication))
                .set("max.message.bytes", MAX_MESSAGE_BYTES);
        let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
        let login_refused = async {
            loop {
                if let Some(reason) = watch.refused() {
                    return reason;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        };
        let created = tokio::select! {
            created = admin.create_topics([&new_topic], &options) => created.map_err(|e| {
                BusError::unavailable(format!("cannot reach Kafka at {}", config.brokers)).because(e)
            })?,
            reason = login_refused => {
                return Err(BusError::config(format!(
                    "Kafka at {} refused the connection: {reason}; check spec.kafka.sasl and spec.kafka.tls",
                    config.brokers
                )));
            }
        };
        for result in created {
            match result {
                Ok(_) => tracing::info!(%topic, "created Kafka topic"),
                Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((name, code)) => {
                    return Err(BusError::unavailable(format!("cannot create Kafka topic {name}"))
                        .because(code));
                }
            }
        }
        let producer: FutureProducer<Quiet> = config
            .client_config()
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("message.max.bytes", MAX_MESSAGE_BYTES)
            .set("linger.ms", "1")
            .create_with_context(Quiet)
            .map_err(refused)?;
        let partitions = {
            let (producer, name) = (producer.clone(), topic.clone());
            tokio::task::spawn_blocking(move || {
                producer
                    .client()
                    .fetch_metadata(Some(&name), Duration::from_secs(10))
                    .map(|m| m.topics().first().map_or(0, |t| t.partitions().len()))
            })
            .await
            .map_err(unavailable("reading the topic's metadata stopped"))?
            .map_err(|e| {
                BusError::unavailable(format!("cannot read metadata of {topic}")).because(e)
            })?
        };
        let connection = Arc::new(tokio::sync::watch::channel(ofe_core::Connection::Up).0);
        probe(producer.clone(), topic.clone(), config.brokers.clone(), Arc::downgrade(&connection));
        Ok(Self {
            config: Arc::new(config),
            topic: topic.into(),
            producer,
            partitions: i32::try_from(partitions).unwrap_or(0),
            state: Arc::default(),
            connection,
            lag_readers: Arc::default(),
        })
    }

    /// The topic this bus uses.
    pub fn topic(&self) -> &str {
        &self.topic
    }
}

/// Remembers an authentication or TLS failure librdkafka reports, which it would otherwise
/// retry quietly until a request times out.
#[derive(Clone, Default)]
struct AuthWatch {
    refused: Arc<Mutex<Option<String>>>,
}

impl AuthWatch {
    fn refused(&self) -> Option<String> {
        self.refused.lock().ok().and_then(|r| r.clone())
    }

    /// Keeps the first refusal's reason.
    fn refuse(&self, reason: &str) {
        if let Ok(mut slot) = self.refused.lock() {
            slot.get_or_insert_with(|| reason.to_string());
        }
    }
}

/// Whether librdkafka's `reason` says the broker refused the client's credentials or the
/// TLS handshake failed: a settings problem that retrying cannot fix.
fn is_refusal(reason: &str) -> bool {
    reason.contains("SASL authentication") || reason.contains("SSL handshake")
}

impl ClientContext for AuthWatch {
    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, fac: &str, log_message: &str) {
        // A failed TLS handshake reaches only the log (facility FAIL), never the error
        // callback, as librdkafka treats it as one broker's transport failure.
        if fac == "FAIL" && is_refusal(log_message) {
            self.refuse(log_message);
        }
        ofe_core::kafka::librdkafka_log(level, fac, log_message);
    }

    fn error(&self, error: rdkafka::error::KafkaError, reason: &str) {
        let code = error.rdkafka_error_code();
        if matches!(code, Some(RDKafkaErrorCode::Authentication | RDKafkaErrorCode::SSL))
            || is_refusal(reason)
        {
            self.refuse(reason);
        } else {
            ofe_core::kafka::librdkafka_error(&error, reason);
        }
    }
}

/// The watcher sends nothing, so it has no deliveries to report.
impl rdkafka::producer::ProducerContext for AuthWatch {
    type DeliveryOpaque = ();

    fn delivery(&self, _: &rdkafka::message::DeliveryResult<'_>, _: Self::DeliveryOpaque) {}
}

/// The consumer group of `consumer` on the bus with topic prefix `prefix`: `<prefix>.<name>`,
/// so that two buses on one cluster (two `topicPrefix`es) never share a group. With the
/// default prefix `ofe` it is the group older versions used.
fn group_id(prefix: &str, consumer: &str) -> String {
    let safe: String = consumer
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || "._-".contains(c) { c } else { '_' })
        .collect();
    format!("{prefix}.{safe}")
}

/// The group ofe used for `consumer` before groups carried the bus's prefix.
fn legacy_group_id(consumer: &str) -> String {
    group_id("ofe", consumer)
}

#[async_trait]
impl EventBus for KafkaBus {
    fn backend(&self) -> &'static str {
        "kafka"
    }

    async fn publish(&self, subject: &Subject, event: &Event) -> Result<Published, BusError> {
        let subject = subject.to_string();
        let headers = ofe_core::kafka::headers(event)
            .insert(Header { key: SUBJECT_HEADER, value: Some(subject.as_str()) });
        let key = match event.extension("partitionkey") {
            Some(k) => k.to_string(),
            None => subject.clone(),
        };
        let payload = event::data_bytes(event);
        let record = FutureRecord::to(&self.topic).key(&key).payload(&payload).headers(headers);
        let delivered =
            self.producer.send(record, Duration::from_secs(30)).await.map_err(|(e, _)| {
                BusError::unavailable("Kafka did not acknowledge the event").because(e)
            })?;
        Ok(Published { sequence: u64::try_from(delivered.offset).unwrap_or(0), duplicate: false })
    }

    async fn subscribe(
        &self,
        options: SubscribeOptions,
    ) -> Result<Box<dyn Subscription>, BusError> {
        options.check()?;
        let group = group_id(&self.config.topic_prefix, &options.consumer);
        let legacy = legacy_group_id(&options.consumer);
        let shared = Arc::new(Shared::default());
        let mut client = self.config.client_config();
        if let Some(instance) = &self.config.instance {
            client.set("group.instance.id", format!("{group}-{instance}"));
        }
        let consumer: BaseConsumer<Rebalancing> = client
            .set("group.id", &group)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest")
            .set("fetch.message.max.bytes", MAX_MESSAGE_BYTES)
            .set("queued.max.messages.kbytes", "16384")
            .set("session.timeout.ms", "10000")
            .create_with_context(Rebalancing { shared: shared.clone() })
            .map_err(refused)?;
        let consumer = Arc::new(consumer);
        {
            let (consumer, topic, partitions) =
                (consumer.clone(), self.topic.clone(), self.partitions);
            // A group renamed by the prefix carries on from the old group's offsets.
            let legacy = (legacy != group).then(|| {
                self.config.client_config().set("group.id", &legacy).create_with_context(Quiet)
            });
            let legacy = match legacy {
                Some(Ok(reader)) => Some(reader),
                Some(Err(e)) => return Err(refused(e)),
                None => None,
            };
            let start = options.start;
            tokio::task::spawn_blocking(move || {
                start_if_new(&consumer, legacy.as_ref(), &topic, partitions, start)
            })
            .await
            .map_err(unavailable("finding where the consumer starts stopped"))??;
        }
        consumer.subscribe(&[&self.topic]).map_err(unavailable("cannot subscribe to the topic"))?;
        let filter: BTreeSet<String> = options.subjects.iter().map(ToString::to_string).collect();
        // A read-ahead buffer, not the bound on what is unsettled (the poller counts that): a
        // consumer with room for many waiting deliveries (delayed ones) does not fill memory
        // with events it has not asked for yet.
        let (tx, rx) = mpsc::channel(options.max_in_flight.min(256));
        let stop = Arc::new(AtomicBool::new(false));
        let poller = Poller {
            consumer: consumer.clone(),
            shared: shared.clone(),
            filter,
            tx,
            stop: stop.clone(),
            max_in_flight: options.max_in_flight,
            topic: self.topic.clone(),
        };
        std::thread::Builder::new()
            .name(format!("ofe-kafka-{group}"))
            .spawn(move || poller.run())
            .map_err(unavailable("cannot start the consumer's thread"))?;
        Ok(Box::new(KafkaSubscription {
            rx,
            shared,
            stop,
            recent: Recent::new(self.config.dedup_window),
        }))
    }

    async fn state_store(&self) -> Result<Option<Arc<dyn ofe_core::StateStore>>, BusError> {
        let state = self
            .state
            .get_or_try_init(|| async {
                state::KafkaState::open(&self.config, self.producer.clone()).await.map(Arc::new)
            })
            .await?;
        Ok(Some(state.clone()))
    }

    fn connection(&self) -> tokio::sync::watch::Receiver<ofe_core::Connection> {
        self.connection.subscribe()
    }

    async fn retained(&self, _subjects: &[Subject]) -> Result<ofe_core::Retained, BusError> {
        // A client that joins no group: it reads the first records by assignment and commits
        // nothing.
        let probe: BaseConsumer<Quiet> = self
            .config
            .client_config()
            .set("group.id", group_id(&self.config.topic_prefix, "retained-probe"))
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .create_with_context(Quiet)
            .map_err(refused)?;
        let (topic, partitions) = (self.topic.clone(), self.partitions);
        tokio::task::spawn_blocking(move || retained(&probe, &topic, partitions))
            .await
            .map_err(unavailable("reading what the topic holds stopped"))?
    }

    async fn remove_consumer(&self, consumer: &str) -> Result<(), BusError> {
        let group = group_id(&self.config.topic_prefix, consumer);
        self.lag_readers.lock().map_err(|_| BusError::Closed)?.remove(&group);
        let admin: AdminClient<Quiet> =
            self.config.client_config().create_with_context(Quiet).map_err(refused)?;
        let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
        // A subscription dropped just now leaves the group from its own thread, a moment
        // later (at the latest when its session times out, 10 s): until then the group is
        // not empty and cannot be deleted.
        let until = Instant::now() + Duration::from_secs(15);
        loop {
            let results = admin.delete_groups(&[&group], &options).await.map_err(|e| {
                BusError::unavailable(format!("cannot delete consumer group `{group}`")).because(e)
            })?;
            let code = results.into_iter().find_map(|r| match r {
                Ok(_) | Err((_, RDKafkaErrorCode::GroupIdNotFound)) => None,
                Err((_, code)) => Some(code),
            });
            match code {
                None => return Ok(()),
                Some(RDKafkaErrorCode::NonEmptyGroup) if Instant::now() < until => {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Some(code) => {
                    return Err(BusError::unavailable(format!(
                        "cannot delete consumer group `{group}`: {code}"
                    )));
                }
            }
        }
    }

    async fn lag(&self, consumer: &str) -> Result<Option<u64>, BusError> {
        let group = group_id(&self.config.topic_prefix, consumer);
        let reader = {
            let mut readers = self.lag_readers.lock().map_err(|_| BusError::Closed)?;
            match readers.get(&group) {
                Some(reader) => reader.clone(),
                None => {
                    // A client of the group that never joins it: it only asks the group's
                    // committed offsets, so it takes no partitions from the real members.
                    let reader: BaseConsumer<Quiet> = self
                        .config
                        .client_config()
                        .set("group.id", &group)
                        .set("enable.auto.commit", "false")
                        .create_with_context(Quiet)
                        .map_err(refused)?;
                    let reader = Arc::new(reader);
                    readers.insert(group.clone(), reader.clone());
                    reader
                }
            }
        };
        let (topic, partitions) = (self.topic.clone(), self.partitions);
        tokio::task::spawn_blocking(move || group_lag(&reader, &topic, partitions))
            .await
            .map_err(unavailable("reading the lag stopped"))?
    }

    async fn close(&self) -> Result<(), BusError> {
        let producer = self.producer.clone();
        tokio::task::spawn_blocking(move || producer.flush(Duration::from_secs(10)))
            .await
            .map_err(unavailable("flushing the producer stopped"))?
            .map_err(unavailable("cannot flush the producer"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_belong_to_their_bus() {
        assert_eq!(group_id("ofe", "trigger.ns.t.0"), "ofe.trigger.ns.t.0", "default: unchanged");
        assert_eq!(legacy_group_id("trigger.ns.t.0"), group_id("ofe", "trigger.ns.t.0"));
        assert_ne!(group_id("team-a", "trigger.ns.t.0"), group_id("team-b", "trigger.ns.t.0"));
    }
}
