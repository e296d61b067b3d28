//! The NATS JetStream backend, for clusters.
//!
//! - One stream holds every event and topic of a bus, under subjects of its own, so that
//!   several buses (two teams, two installations) share one server: the default stream `OFE`
//!   holds `ofe.>`, any other stream `S` holds `ofe-S.>`. ofe creates the stream when missing
//!   and attaches to it when it exists; a stream an older ofe created with `ofe.>` keeps
//!   them (see [`subject_prefix`]).
//! - Each consumer name is a durable pull consumer, filtered to its subjects, with explicit
//!   acks; its replicas share it. Durable names contain only `[A-Za-z0-9_-]`: NATS 2.9 builds
//!   ack subjects with Go's `%` formatting and mangles any name containing `%`. A consumer
//!   under the older, percent-escaped name is carried over at its acknowledged position.
//! - NATS before 2.10 cannot filter a consumer by several subjects; there, a consumer of
//!   several subjects reads the stream's and keeps its own (warned once). A nack asks the server to redeliver after its delay; a
//!   dropped delivery is nacked at once; a long delivery is kept alive with progress acks, so
//!   `ack_wait` bounds crash detection, not delivery time.
//! - Events travel in CloudEvents binary mode: attributes as `ce-*` headers, data as payload.
//! - `Nats-Msg-Id` is derived from the subject, `source` and `id` (a UUIDv5), so the stream's
//!   duplicate window drops a republished event, while the same event placed on a topic by a
//!   Trigger is not mistaken for a duplicate of itself.
//! - Publish waits for the PubAck. The client reconnects with backoff on its own; the
//!   connection log is one line when it drops and one when it is back, and an ERROR with what
//!   the client saw when it drops more than [`RECONNECTS_PER_MINUTE`] times in a minute.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, AckKind, consumer, stream};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use cloudevents::Event;
use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt};
use tokio::sync::oneshot;

use ofe_core::Connection;
use ofe_core::nats::{self, NatsAuth, connect_watched};
use ofe_core::state::{StateError, StateStore, Versioned};
use ofe_core::{
    Acker, BusError, Delivery, EventBus, Published, StartPosition, SubscribeOptions, Subscription,
    TlsFiles,
};
use ofe_core::{Subject, event};
use tokio::sync::watch;

mod state;
mod subscription;

use state::*;
use subscription::*;

/// Settings of the JetStream backend.
#[derive(Clone, Debug)]
pub struct JetStreamConfig {
    /// Server URL(s), comma-separated.
    pub url: String,
    /// Stream name.
    pub stream: String,
    /// Replicas when the stream is created.
    pub replicas: usize,
    /// Size limit when the stream is created; `None` for unlimited.
    pub max_bytes: Option<i64>,
    /// Age limit when the stream is created.
    pub max_age: Duration,
    /// The stream's duplicate window.
    pub duplicate_window: Duration,
    /// Redelivery timeout of an unacknowledged (and not kept alive) delivery.
    pub ack_wait: Duration,
    /// Deliveries per message before it is dead-lettered, when the subscriber sets none.
    pub max_deliver: u32,
    /// Credentials.
    pub auth: NatsAuth,
    /// TLS, when set.
    pub tls: Option<TlsFiles>,
    /// Topic events are written in structured mode (the CloudEvent as JSON in the payload),
    /// for clients that read only the payload, such as Dapr's JetStream pub/sub component.
    pub structured_topics: bool,
}

impl JetStreamConfig {
    /// Defaults for a server at `url`.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            stream: "OFE".into(),
            replicas: 1,
            max_bytes: None,
            max_age: Duration::from_secs(7 * 24 * 3600),
            duplicate_window: Duration::from_secs(120),
            ack_wait: Duration::from_secs(30),
            max_deliver: 20,
            auth: NatsAuth::None,
            tls: None,
            structured_topics: false,
        }
    }
}

/// A publish the server did not take. "No stream found" is also what a clustered stream
/// answers while its servers elect a new leader, so the message says both.
fn publish_error(subject: &str, e: async_nats::jetstream::context::PublishError) -> BusError {
    use async_nats::jetstream::context::PublishErrorKind;
    match e.kind() {
        PublishErrorKind::StreamNotFound => BusError::unavailable(format!(
            "no stream answered for {subject}: the stream is missing, or its servers are \
             electing a new leader"
        )),
        _ => BusError::unavailable(format!("cannot publish to {subject}")).because(e),
    }
}

/// The server failed while the bus was doing `what`; its error is the cause.
fn unavailable<E: Into<ofe_core::Cause>>(what: &'static str) -> impl FnOnce(E) -> BusError {
    move |e| BusError::unavailable(what).because(e)
}

/// The first token of every subject as [`Subject`] renders it, and of the default stream's
/// subjects on the wire.
const DEFAULT_PREFIX: &str = "ofe";

/// The stream whose subjects keep [`DEFAULT_PREFIX`].
pub const DEFAULT_STREAM: &str = "OFE";

/// The first subject token of the events of stream `stream`: `ofe` for the default stream
/// `OFE` (so existing single-bus setups keep their subjects), `ofe-<stream>` for any other.
/// Each stream then owns `<prefix>.>`, and the streams of several buses on one server never
/// overlap (`ofe.>` does not match `ofe-TEAM.x`).
pub fn subject_prefix(stream: &str) -> String {
    if stream == DEFAULT_STREAM { DEFAULT_PREFIX.to_string() } else { format!("ofe-{stream}") }
}

/// `subject` as it travels in the stream with subject prefix `prefix`.
fn to_wire(prefix: &str, subject: &Subject) -> String {
    let text = subject.to_string();
    match text.strip_prefix(DEFAULT_PREFIX) {
        Some(rest) if prefix != DEFAULT_PREFIX => format!("{prefix}{rest}"),
        _ => text,
    }
}

/// The subject of a message of the stream with subject prefix `prefix`.
fn from_wire(prefix: &str, wire: &str) -> Option<Subject> {
    if prefix == DEFAULT_PREFIX {
        return Subject::parse(wire);
    }
    let rest = wire.strip_prefix(prefix)?;
    rest.starts_with('.').then(|| Subject::parse(&format!("{DEFAULT_PREFIX}{rest}")))?
}

/// NATS 2.10 added consumers filtered by several subjects (`filter_subjects`). An older
/// server ignores the field and delivers the whole stream.
const MULTI_FILTER_VERSION: (u64, u64) = (2, 10);

/// `(major, minor)` of a server version such as `2.9.10` or `2.11.0-RC.1`.
fn major_minor(version: &str) -> Option<(u64, u64)> {
    let mut parts = version.trim_start_matches('v').split('.');
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.split(|c: char| !c.is_ascii_digit()).next()?.parse().ok()?;
    Some((major, minor))
}

/// The JetStream bus. Cheap to clone.
#[derive(Clone)]
pub struct JetStreamBus {
    client: async_nats::Client,
    js: jetstream::Context,
    stream: Arc<tokio::sync::Mutex<stream::Stream>>,
    config: Arc<JetStreamConfig>,
    state: Arc<watch::Sender<Connection>>,
    /// The first subject token of this bus's stream (see [`subject_prefix`]).
    prefix: Arc<str>,
    /// Whether the server filters a consumer by several subjects (2.10 and later).
    multi_filter: bool,
    /// Whether the fallback for older servers was already explained in the log.
    warned_filters: Arc<std::sync::atomic::AtomicBool>,
}

impl JetStreamBus {
    /// Connects, then creates the stream or attaches to it.
    pub async fn connect(config: JetStreamConfig) -> Result<Self, BusError> {
        let state = Arc::new(watch::channel(Connection::Up).0);
        let client =
            connect_watched(&config.url, &config.auth, config.tls.as_ref(), Some(state.clone()))
                .await?;
        let version = client.server_info().version;
        let multi_filter = major_minor(&version).is_none_or(|v| v >= MULTI_FILTER_VERSION);
        tracing::debug!(%version, multi_filter, "NATS server");
        let js = jetstream::new(client.clone());
        let (stream, prefix) = Self::ensure_stream(&js, &config).await?;
        Ok(Self {
            client,
            js,
            stream: Arc::new(tokio::sync::Mutex::new(stream)),
            config: Arc::new(config),
            state,
            prefix: prefix.into(),
            multi_filter,
            warned_filters: Arc::default(),
        })
    }

    /// The stream, and the subject prefix its events use. An existing stream that holds
    /// `ofe.>` (created by an ofe before subject prefixes) keeps them, so its consumers and
    /// events carry on; any other stream must hold its own prefix.
    async fn ensure_stream(
        js: &jetstream::Context,
        config: &JetStreamConfig,
    ) -> Result<(stream::Stream, String), BusError> {
        let own = subject_prefix(&config.stream);
        let own_subjects = format!("{own}.>");
        let legacy_subjects = format!("{DEFAULT_PREFIX}.>");
        let stream = match js.get_stream(&config.stream).await {
            Ok(stream) => Some(stream),
            Err(e)
                if matches!(
                    e.kind(),
                    jetstream::context::GetStreamErrorKind::JetStream(ref err)
                        if err.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND
                ) =>
            {
                None
            }
            Err(e) => {
                return Err(BusError::unavailable(format!(
                    "JetStream does not answer at {} (is the server running with -js?)",
                    config.url
                ))
                .because(e));
            }
        };
        if let Some(mut existing) = stream {
            let subjects = existing
                .info()
                .await
                .map_err(unavailable("cannot read the stream"))?
                .config
                .subjects
                .clone();
            let holds = |wanted: &str| subjects.iter().any(|s| s == wanted || s == ">");
            let prefix = if holds(&legacy_subjects) {
                if own != DEFAULT_PREFIX {
                    tracing::warn!(
                        stream = %config.stream,
                        "stream `{}` holds `{legacy_subjects}`, as streams made by older ofe \
                         versions do; it keeps them, but no second bus on this server can use \
                         them. To share the server, move this bus to a new stream name (it \
                         gets `ofe-<stream>.>`) once its consumers have caught up",
                        config.stream
                    );
                }
                DEFAULT_PREFIX.to_string()
            } else if holds(&own_subjects) {
                own
            } else {
                return Err(BusError::config(format!(
                    "stream `{}` exists but does not hold subjects `{own_subjects}` (it has {:?}); \
                     add them, or name another stream in spec.jetstream.stream",
                    config.stream, subjects
                )));
            };
            tracing::info!(stream = %config.stream, %prefix, "attached to existing JetStream stream");
            return Ok((existing, prefix));
        }
        let created = js
            .create_stream(stream::Config {
                name: config.stream.clone(),
                subjects: vec![own_subjects.clone()],
                storage: stream::StorageType::File,
                num_replicas: config.replicas,
                max_bytes: config.max_bytes.unwrap_or(-1),
                max_age: config.max_age,
                duplicate_window: config.duplicate_window,
                ..Default::default()
            })
            .await
            .map_err(|e| {
                let overlap = matches!(
                    e.kind(),
                    async_nats::jetstream::context::CreateStreamErrorKind::JetStream(ref js)
                        if js.error_code() == async_nats::jetstream::ErrorCode::STREAM_SUBJECT_OVERLAP
                );
                let hint = if overlap {
                    "; another stream on this server already holds these subjects (or `>`): \
                     remove them from that stream, or name another stream in \
                     spec.jetstream.stream"
                } else {
                    ""
                };
                BusError::unavailable(format!(
                    "cannot create stream `{}` for subjects `{own_subjects}`{hint}",
                    config.stream
                ))
                .because(e)
            })?;
        tracing::info!(stream = %config.stream, subjects = %own_subjects, "created JetStream stream");
        Ok((created, own))
    }

    /// The NATS client, for tests and tools.
    pub fn client(&self) -> &async_nats::Client {
        &self.client
    }
}

/// A durable consumer name every NATS version takes as it is: `[A-Za-z0-9-]` as is, any other
/// byte as `_XX` (so `trigger.ns.t.0` is `trigger_2Ens_2Et_2E0`, and no two consumers share a
/// name). No `%`: NATS 2.9 formats ack subjects with the consumer name as a Go format string,
/// and a `%` in it garbles every ack subject, which the client cannot parse.
/// `at` as the client's time type.
fn offset_time(at: chrono::DateTime<chrono::Utc>) -> Result<time::OffsetDateTime, BusError> {
    let nanos = at.timestamp_nanos_opt().ok_or_else(|| {
        BusError::config(format!("{at} is out of the range a JetStream start time can take"))
    })?;
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(nanos)).map_err(|e| {
        BusError::config(format!("{at} is not a time JetStream can start at")).because(e)
    })
}

fn durable_name(consumer: &str) -> String {
    use std::fmt::Write as _;
    let mut name = String::with_capacity(consumer.len() + 16);
    for byte in consumer.bytes() {
        if byte.is_ascii_alphanumeric() || byte == b'-' {
            name.push(char::from(byte));
        } else {
            let _ = write!(name, "_{byte:02X}");
        }
    }
    name
}

/// The durable name ofe gave `consumer` before [`durable_name`]: percent-escaped like subject
/// tokens. A consumer still under it is carried over to the new name.
fn legacy_durable_name(consumer: &str) -> String {
    Subject::topic("x", consumer).to_string().trim_start_matches("ofe.topic.x.").to_string()
}

/// `Nats-Msg-Id`: stable for one event on one subject.
fn msg_id(subject: &str, event: &Event) -> String {
    const NS: uuid::Uuid = uuid::Uuid::from_u128(0x6f66_655f_6e61_7473_8000_0000_0000_0001);
    uuid::Uuid::new_v5(&NS, event::dedup_key(subject, event).as_bytes()).to_string()
}

#[async_trait]
impl EventBus for JetStreamBus {
    fn backend(&self) -> &'static str {
        "jetstream"
    }

    async fn publish(&self, subject: &Subject, event: &Event) -> Result<Published, BusError> {
        let structured = self.config.structured_topics && matches!(subject, Subject::Topic { .. });
        let subject = to_wire(&self.prefix, subject);
        let mode = if structured { nats::Mode::Structured } else { nats::Mode::Binary };
        let (mut headers, payload) = nats::encode(event, mode)?;
        headers.insert("Nats-Msg-Id", msg_id(&subject, event).as_str());
        let ack = self
            .js
            .publish_with_headers(subject.clone(), headers, payload.into())
            .await
            .map_err(|e| publish_error(&subject, e))?
            .await
            .map_err(|e| publish_error(&subject, e))?;
        Ok(Published { sequence: ack.sequence, duplicate: ack.duplicate })
    }

    async fn subscribe(
        &self,
        options: SubscribeOptions,
    ) -> Result<Box<dyn Subscription>, BusError> {
        options.check()?;
        let name = durable_name(&options.consumer);
        let mut filters: Vec<String> =
            options.subjects.iter().map(|s| to_wire(&self.prefix, s)).collect();
        filters.sort();
        filters.dedup();
        // What the server filters by, and what the subscription must still drop itself.
        let (server_filters, keep_only) = if filters.len() == 1 || self.multi_filter {
            (filters.clone(), None)
        } else {
            if !self.warned_filters.swap(true, std::sync::atomic::Ordering::Relaxed) {
                tracing::warn!(
                    version = %self.client.server_info().version,
                    "this NATS server predates 2.10, which filters a consumer by several \
                     subjects; a consumer of several subjects (a Trigger with several inputs) \
                     reads every event of the stream and drops the others itself, which costs \
                     traffic and makes its lag count the whole stream. Upgrade NATS to 2.10 or \
                     later to filter on the server"
                );
            }
            (vec![format!("{}.>", self.prefix)], Some(filters.iter().cloned().collect()))
        };
        let max_ack_pending = i64::try_from(options.max_in_flight).unwrap_or(i64::MAX);
        let config = |deliver_policy| {
            // One subject goes in `filter_subject`, which every server version knows.
            let (filter_subject, filter_subjects) = match server_filters.as_slice() {
                [one] => (one.clone(), Vec::new()),
                many => (String::new(), many.to_vec()),
            };
            consumer::pull::Config {
                durable_name: Some(name.clone()),
                deliver_policy,
                ack_policy: consumer::AckPolicy::Explicit,
                ack_wait: self.config.ack_wait,
                max_deliver: i64::from(options.max_deliver.unwrap_or(self.config.max_deliver)) + 1,
                filter_subject,
                filter_subjects,
                max_ack_pending,
                ..Default::default()
            }
        };
        let stream = self.stream.lock().await;
        let consumer: consumer::PullConsumer = match stream.get_consumer(&name).await {
            Ok(mut existing) => {
                let info =
                    existing.info().await.map_err(unavailable("cannot read the consumer"))?.clone();
                let mut current = info.config.filter_subjects.clone();
                if !info.config.filter_subject.is_empty() {
                    current.push(info.config.filter_subject.clone());
                }
                current.sort();
                if current == server_filters && info.config.max_ack_pending == max_ack_pending {
                    existing
                } else {
                    // The Trigger changed: keep the consumer's position, update what it reads.
                    stream.update_consumer(config(info.config.deliver_policy)).await.map_err(
                        |e| {
                            BusError::unavailable(format!("cannot update consumer `{name}`"))
                                .because(e)
                        },
                    )?
                }
            }
            Err(_) => {
                // A consumer under the name older versions gave it carries on from where it
                // was acknowledged, then goes: nothing it had not settled is skipped.
                let legacy = legacy_durable_name(&options.consumer);
                let carried = match stream.consumer_info(&legacy).await {
                    Ok(info) => Some(info.ack_floor.stream_sequence),
                    Err(_) => None,
                };
                let start = match (carried, options.start) {
                    (Some(floor), _) => {
                        consumer::DeliverPolicy::ByStartSequence { start_sequence: floor + 1 }
                    }
                    (None, StartPosition::New) => consumer::DeliverPolicy::New,
                    (None, StartPosition::All) => consumer::DeliverPolicy::All,
                    (None, StartPosition::Time(at)) => {
                        consumer::DeliverPolicy::ByStartTime { start_time: offset_time(at)? }
                    }
                };
                let created = stream.create_consumer(config(start)).await.map_err(|e| {
                    BusError::unavailable(format!("cannot create consumer `{name}`")).because(e)
                })?;
                if let Some(floor) = carried {
                    tracing::info!(consumer = %name, from = %legacy, after = floor, "renamed the JetStream consumer (older name contained `%`)");
                    if let Err(e) = stream.delete_consumer(&legacy).await {
                        tracing::debug!(error = %e, consumer = %legacy, "old consumer already gone");
                    }
                }
                created
            }
        };
        drop(stream);
        Ok(Box::new(JetStreamSubscription {
            prefix: self.prefix.clone(),
            keep_only,
            consumer,
            messages: None,
            batch: options.max_in_flight.min(256),
            ack_wait: self.config.ack_wait,
            backoff: Duration::from_millis(100),
            failing: false,
            last_read: None,
            held: Default::default(),
            outstanding: Default::default(),
            resume_at: None,
        }))
    }

    fn connection(&self) -> watch::Receiver<Connection> {
        self.state.subscribe()
    }

    async fn retained(&self, _subjects: &[Subject]) -> Result<ofe_core::Retained, BusError> {
        let mut stream = self.stream.lock().await.clone();
        let info = stream.info().await.map_err(|e| {
            BusError::unavailable(format!("cannot read stream `{}`", self.config.stream)).because(e)
        })?;
        let state = &info.state;
        let oldest = (state.messages > 0)
            .then(|| {
                let at = state.first_timestamp;
                chrono::DateTime::from_timestamp(at.unix_timestamp(), at.nanosecond())
            })
            .flatten();
        // The stream's sequences start at 1: one that begins later lost its front to
        // retention (limits, age or purge).
        Ok(ofe_core::Retained { oldest, trimmed: state.first_sequence > 1 })
    }

    async fn remove_consumer(&self, consumer: &str) -> Result<(), BusError> {
        let stream = self.stream.lock().await.clone();
        if let Err(e) = stream.delete_consumer(&durable_name(consumer)).await {
            // Gone already is what was asked for.
            if stream.consumer_info(durable_name(consumer)).await.is_ok() {
                return Err(BusError::unavailable(format!("cannot delete consumer `{consumer}`"))
                    .because(e));
            }
        }
        Ok(())
    }

    async fn lag(&self, consumer: &str) -> Result<Option<u64>, BusError> {
        use async_nats::jetstream::context::ConsumerInfoErrorKind;
        let stream = self.stream.lock().await.clone();
        match stream.consumer_info(durable_name(consumer)).await {
            // The server counts both: messages of its filters not yet delivered, and
            // delivered ones not yet acknowledged.
            Ok(info) => Ok(Some(info.num_pending + info.num_ack_pending as u64)),
            Err(e) if matches!(e.kind(), ConsumerInfoErrorKind::NotFound) => Ok(None),
            Err(e) => {
                match e.kind() {
                    ConsumerInfoErrorKind::JetStream(inner)
                        if inner.error_code() == jetstream::ErrorCode::CONSUMER_NOT_FOUND =>
                    {
                        Ok(None)
                    }
                    _ => Err(BusError::unavailable(format!("cannot read consumer `{consumer}`"))
                        .because(e)),
                }
            }
        }
    }

    async fn state_store(&self) -> Result<Option<Arc<dyn StateStore>>, BusError> {
        let bucket: String = format!("{}_state", self.config.stream)
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() || c == '-' { c } else { '_' })
            .collect();
        let store = match self.js.get_key_value(&bucket).await {
            Ok(store) => store,
            Err(_) => {
                // The bucket's stream, as the client's `create_key_value` makes it. That
                // function first reads the account's limits, whose answer NATS 2.9 words in a
                // way the client cannot parse; the bucket itself is the same on every version.
                self.js
                    .get_or_create_stream(stream::Config {
                        name: format!("KV_{bucket}"),
                        description: Some("ofe Trigger join state".into()),
                        subjects: vec![format!("$KV.{bucket}.>")],
                        max_messages_per_subject: 1,
                        max_age: STATE_MAX_AGE,
                        storage: stream::StorageType::File,
                        allow_rollup: true,
                        deny_delete: true,
                        allow_direct: true,
                        num_replicas: self.config.replicas,
                        discard: stream::DiscardPolicy::New,
                        ..Default::default()
                    })
                    .await
                    .map_err(|e| {
                        BusError::unavailable(format!("cannot create key-value bucket `{bucket}`"))
                            .because(e)
                    })?;
                self.js.get_key_value(&bucket).await.map_err(|e| {
                    BusError::unavailable(format!("cannot open key-value bucket `{bucket}`"))
                        .because(e)
                })?
            }
        };
        Ok(Some(Arc::new(KvState(store))))
    }

    async fn close(&self) -> Result<(), BusError> {
        // Drain: pending publishes and acks go out, then the connection closes, which also ends
        // the keep-alive of every delivery still held, so the server redelivers those.
        self.client.drain().await.map_err(unavailable("cannot drain the connection"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durable_names_have_no_percent_and_do_not_collide() {
        let a = durable_name("trigger.ns.my.router.0");
        assert_eq!(a, "trigger_2Ens_2Emy_2Erouter_2E0");
        assert!(!a.contains('%'));
        assert_ne!(durable_name("a_b"), durable_name("a.b"));
        assert_ne!(durable_name("a_2Eb"), durable_name("a.b"));
        assert_eq!(legacy_durable_name("trigger.ns.t.0"), "trigger%2Ens%2Et%2E0");
    }

    #[test]
    fn each_stream_owns_its_subjects() {
        let subject = Subject::event("ns", "es", "e");
        assert_eq!(subject_prefix("OFE"), "ofe");
        assert_eq!(to_wire("ofe", &subject), "ofe.event.ns.es.e");
        let team = subject_prefix("TEAM_B");
        assert_eq!(to_wire(&team, &subject), "ofe-TEAM_B.event.ns.es.e");
        assert_eq!(from_wire(&team, "ofe-TEAM_B.event.ns.es.e"), Some(subject.clone()));
        assert_eq!(from_wire("ofe", "ofe.event.ns.es.e"), Some(subject));
        assert_eq!(from_wire(&team, "ofe-TEAM_BX.event.ns.es.e"), None);
    }

    #[test]
    fn server_versions() {
        assert_eq!(major_minor("2.9.10"), Some((2, 9)));
        assert_eq!(major_minor("v2.11.0-RC.1"), Some((2, 11)));
        assert!(major_minor("2.9.10").is_some_and(|v| v < MULTI_FILTER_VERSION));
        assert!(major_minor("2.10.0").is_some_and(|v| v >= MULTI_FILTER_VERSION));
        assert_eq!(major_minor("dev"), None);
    }
}
