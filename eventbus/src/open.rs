//! Resolving `eventBus` names to running buses: the one place an EventBus resource becomes a
//! backend's settings and an open bus.
//!
//! A name resolves as in OpenFunction: the namespaced EventBus, else the ClusterEventBus. A name
//! no loaded resource defines runs on the embedded bus. Every embedded bus of the process
//! shares one store (subjects keep them apart); each in-memory bus is its own, in this
//! process; each JetStream bus is one connection.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use crate::embedded::{EmbeddedBus, EmbeddedConfig, MemoryConfig};
#[cfg(feature = "jetstream")]
use crate::jetstream::{JetStreamBus, JetStreamConfig};
#[cfg(feature = "kafka")]
use crate::kafka::{KafkaBus, KafkaConfig, KafkaSasl};
use ofe_core::{BusError, EventBus};
use ofe_crds::EventBusSpec;
#[cfg(feature = "kafka")]
use ofe_crds::KafkaBusSpec;
use ofe_crds::manifest::{DEFAULT_NAMESPACE, Resource};
#[cfg(feature = "jetstream")]
use ofe_crds::{JetStreamBusSpec, NatsStreamingSpec};

/// Why a bus did not open.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// A field of the EventBus cannot be used as written.
    #[error("{path}: {message}")]
    Invalid {
        /// The field path, e.g. `spec.jetstream.maxAge`.
        path: String,
        /// What is wrong and the fix.
        message: String,
    },
    /// The backend refused or could not be reached.
    #[error("cannot open the {backend} bus at {at}")]
    Backend {
        /// `embedded`, `JetStream` or `Kafka`.
        backend: &'static str,
        /// Where: a directory, URLs or brokers, without credentials.
        at: String,
        /// The backend's error.
        #[source]
        source: BusError,
    },
}

/// Checks what only this build can: whether it has the backend `spec` asks for. Nothing is
/// connected.
pub fn check(spec: &EventBusSpec) -> Option<OpenError> {
    #[cfg(not(feature = "jetstream"))]
    if spec.jetstream.is_some() || spec.nats_streaming.is_some() {
        let field = if spec.jetstream.is_some() { "jetstream" } else { "natsStreaming" };
        return Some(left_out(field, "jetstream"));
    }
    #[cfg(not(feature = "kafka"))]
    if spec.kafka.is_some() {
        return Some(left_out("kafka", "kafka"));
    }
    let _ = spec;
    None
}

/// The error for a bus whose backend this build left out.
#[cfg(not(all(feature = "jetstream", feature = "kafka")))]
fn left_out(field: &str, feature: &str) -> OpenError {
    OpenError::Invalid {
        path: format!("spec.{field}"),
        message: format!(
            "this ofe was built without the `{feature}` feature; use a build with it (the default build has every bus)"
        ),
    }
}

/// Which bus a resource uses.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum BusKey {
    /// The process's embedded bus.
    Embedded,
    /// A namespaced EventBus.
    Namespaced(String, String),
    /// A ClusterEventBus.
    Cluster(String),
}

/// The buses the manifests define, and the running instances.
pub struct Buses {
    namespaced: BTreeMap<(String, String), EventBusSpec>,
    cluster: BTreeMap<String, EventBusSpec>,
    /// Per running bus: the digest of the spec it was opened with, and the bus.
    running: HashMap<BusKey, (String, Arc<dyn EventBus>)>,
    /// Buses replaced because their spec changed, to close once their users have stopped.
    retired: Vec<Arc<dyn EventBus>>,
    announced: HashSet<String>,
}

fn duration(path: &str, text: Option<&String>, default: Duration) -> Result<Duration, OpenError> {
    match text {
        None => Ok(default),
        Some(t) => ofe_crds::duration::parse(t).map_err(|message| OpenError::Invalid {
            path: path.into(),
            message: message.to_string(),
        }),
    }
}

#[cfg(feature = "jetstream")]
fn jetstream_config(spec: &JetStreamBusSpec) -> Result<JetStreamConfig, OpenError> {
    let mut c = JetStreamConfig::new(&spec.url);
    if let Some(stream) = &spec.stream {
        c.stream.clone_from(stream);
    }
    c.replicas = spec.replicas.and_then(|r| usize::try_from(r).ok()).unwrap_or(1);
    c.max_bytes = spec.max_bytes;
    c.max_age = duration("spec.jetstream.maxAge", spec.max_age.as_ref(), c.max_age)?;
    c.duplicate_window = duration(
        "spec.jetstream.duplicateWindow",
        spec.duplicate_window.as_ref(),
        c.duplicate_window,
    )?;
    c.ack_wait = duration("spec.jetstream.ackWait", spec.ack_wait.as_ref(), c.ack_wait)?;
    if let Some(n) = spec.max_deliver.and_then(|n| u32::try_from(n).ok()) {
        c.max_deliver = n;
    }
    if let Some(auth) = &spec.auth {
        c.auth = auth.into();
    }
    c.tls = spec.tls.as_ref().map(Into::into);
    c.structured_topics = spec.topic_mode.as_deref() == Some("structured");
    Ok(c)
}

#[cfg(feature = "kafka")]
/// This process's name among a bus's processes: the host name (a pod's name in Kubernetes)
/// and a digest of the data directory (two processes on one host have two), both stable
/// across restarts.
fn instance(data_dir: &Path) -> Option<String> {
    let host = ofe_core::host_name()?;
    let dir = std::fs::canonicalize(data_dir).unwrap_or_else(|_| data_dir.to_path_buf());
    // FNV-1a: the same digest from every build, so an upgrade keeps the name.
    let digest = dir
        .to_string_lossy()
        .bytes()
        .fold(0x811c_9dc5_u32, |h, b| (h ^ u32::from(b)).wrapping_mul(0x0100_0193));
    Some(format!("{host}-{digest:08x}"))
}

#[cfg(feature = "kafka")]
fn kafka_config(spec: &KafkaBusSpec, data_dir: &Path) -> KafkaConfig {
    let mut c = KafkaConfig::new(&spec.brokers);
    c.instance = instance(data_dir);
    if let Some(prefix) = &spec.topic_prefix {
        c.topic_prefix.clone_from(prefix);
    }
    c.partitions = spec.partitions.unwrap_or(c.partitions);
    c.replication = spec.replication.unwrap_or(c.replication);
    c.sasl = spec.sasl.as_ref().map(|s| KafkaSasl {
        mechanism: s.mechanism.clone().unwrap_or_else(|| "PLAIN".into()),
        username: s.username.clone(),
        password: s.password.clone(),
    });
    c.tls = spec.tls.as_ref().map(Into::into);
    c
}

fn memory_config(spec: &ofe_crds::MemoryBusSpec) -> Result<MemoryConfig, OpenError> {
    let mut c = MemoryConfig::default();
    if let Some(b) = spec.max_bytes.and_then(|b| u64::try_from(b).ok()) {
        c.max_bytes = b;
    }
    c.max_age = duration("spec.memory.maxAge", spec.max_age.as_ref(), c.max_age)?;
    Ok(c)
}

/// NATS Streaming settings mapped onto JetStream at the same URL.
#[cfg(feature = "jetstream")]
fn nats_streaming_config(spec: &NatsStreamingSpec) -> Result<JetStreamConfig, OpenError> {
    let mut c = JetStreamConfig::new(&spec.nats_url);
    c.ack_wait =
        duration("spec.natsStreaming.ackWaitTime", spec.ack_wait_time.as_ref(), c.ack_wait)?;
    Ok(c)
}

impl Buses {
    /// Indexes the EventBus and ClusterEventBus resources.
    pub fn new(resources: &[Resource]) -> Self {
        let mut buses = Self {
            namespaced: BTreeMap::new(),
            cluster: BTreeMap::new(),
            running: HashMap::new(),
            retired: Vec::new(),
            announced: HashSet::new(),
        };
        buses.set_specs(resources);
        buses
    }

    /// Indexes the EventBus and ClusterEventBus resources anew. A running bus whose spec
    /// changed is replaced at its next [`Buses::get`]; [`Buses::digest`] changes with it, so
    /// whoever includes it in their own digest restarts on the new bus.
    pub fn set_specs(&mut self, resources: &[Resource]) {
        let buses = self;
        buses.namespaced.clear();
        buses.cluster.clear();
        for r in resources {
            match r {
                Resource::EventBus(b) => {
                    let key = (
                        r.namespace().unwrap_or(DEFAULT_NAMESPACE).to_string(),
                        r.name().to_string(),
                    );
                    buses.namespaced.insert(key, b.spec.clone());
                }
                Resource::ClusterEventBus(b) => {
                    buses.cluster.insert(r.name().to_string(), b.spec.0.clone());
                }
                _ => {}
            }
        }
    }

    /// The key and spec `name` resolves to from `namespace`.
    fn resolve(&mut self, namespace: &str, name: Option<&str>) -> (BusKey, Option<EventBusSpec>) {
        let Some(name) = name.filter(|n| !n.is_empty()) else { return (BusKey::Embedded, None) };
        if let Some(spec) = self.namespaced.get(&(namespace.to_string(), name.to_string())) {
            return (BusKey::Namespaced(namespace.into(), name.into()), Some(spec.clone()));
        }
        if let Some(spec) = self.cluster.get(name) {
            return (BusKey::Cluster(name.into()), Some(spec.clone()));
        }
        if self.announced.insert(name.to_string()) {
            tracing::info!(bus = %name, "no loaded EventBus or ClusterEventBus defines this bus; using the embedded bus");
        }
        (BusKey::Embedded, None)
    }

    /// The durable consumer name of the router of the bus `name` seen from `namespace`. It is
    /// named after the EventBus resource, so the replicas of one deployment share it, while
    /// deployments using other buses on the same broker never take each other's events.
    pub fn router_consumer(&mut self, namespace: &str, name: Option<&str>) -> String {
        match self.resolve(namespace, name).0 {
            BusKey::Embedded => "router".into(),
            BusKey::Namespaced(ns, name) => format!("router.{ns}.{name}"),
            BusKey::Cluster(name) => format!("router.cluster.{name}"),
        }
    }

    /// What identifies the bus `name` resolves to from `namespace`, spec included: it changes
    /// when the bus does.
    pub fn digest(&mut self, namespace: &str, name: Option<&str>) -> String {
        let (key, spec) = self.resolve(namespace, name);
        format!("{key:?}={}", serde_json::to_string(&spec).unwrap_or_default())
    }

    /// Closes the buses replaced since the last call; call it once their users have stopped.
    pub async fn close_retired(&mut self) {
        for bus in std::mem::take(&mut self.retired) {
            if let Err(e) = bus.close().await {
                tracing::warn!(error = %ofe_core::Report(&e), "closing a replaced bus failed");
            }
        }
    }

    /// The running bus for `name` seen from `namespace`, opening it on first use, and again
    /// when its spec has changed.
    pub async fn get(
        &mut self,
        namespace: &str,
        name: Option<&str>,
        data_dir: &Path,
    ) -> Result<Arc<dyn EventBus>, OpenError> {
        let (mut key, spec) = self.resolve(namespace, name);
        let spec = spec.unwrap_or_default();
        // Built once per bus opened; its size does not matter (and which variant is largest
        // depends on the features built).
        #[allow(clippy::large_enum_variant)]
        enum Backend {
            Embedded,
            Memory(MemoryConfig),
            #[cfg(feature = "jetstream")]
            JetStream(JetStreamConfig),
            #[cfg(feature = "kafka")]
            Kafka(KafkaConfig),
        }
        let backend = match (&spec.jetstream, &spec.nats_streaming, &spec.kafka) {
            #[cfg(feature = "jetstream")]
            (Some(js), _, _) => Backend::JetStream(jetstream_config(js)?),
            #[cfg(feature = "jetstream")]
            (None, Some(stan), _) => {
                tracing::warn!(bus = ?key, url = %ofe_core::nats::url_without_credentials(&stan.nats_url), "NATS Streaming is end-of-life; serving this bus with JetStream at the same URL");
                Backend::JetStream(nats_streaming_config(stan)?)
            }
            #[cfg(not(feature = "jetstream"))]
            (Some(_), _, _) | (None, Some(_), _) => {
                let field = if spec.jetstream.is_some() { "jetstream" } else { "natsStreaming" };
                return Err(left_out(field, "jetstream"));
            }
            #[cfg(feature = "kafka")]
            (None, None, Some(kafka)) => Backend::Kafka(kafka_config(kafka, data_dir)),
            #[cfg(not(feature = "kafka"))]
            (None, None, Some(_)) => return Err(left_out("kafka", "kafka")),
            (None, None, None) => match &spec.memory {
                Some(memory) => Backend::Memory(memory_config(memory)?),
                None => Backend::Embedded,
            },
        };
        if matches!(backend, Backend::Embedded) {
            key = BusKey::Embedded;
        }
        // Every embedded bus shares one store, opened once: its settings apply at start.
        let digest = match backend {
            Backend::Embedded => String::new(),
            _ => serde_json::to_string(&spec).unwrap_or_default(),
        };
        match self.running.remove(&key) {
            Some((opened, bus)) if opened == digest => {
                self.running.insert(key, (opened, bus.clone()));
                return Ok(bus);
            }
            Some((_, old)) => {
                tracing::info!(bus = ?key, "the bus changed; opening it again");
                self.retired.push(old);
            }
            None => {}
        }
        let bus: Arc<dyn EventBus> = match backend {
            #[cfg(feature = "jetstream")]
            Backend::JetStream(config) => {
                let url = ofe_core::nats::url_without_credentials(&config.url);
                let bus = JetStreamBus::connect(config).await.map_err(|source| {
                    OpenError::Backend { backend: "JetStream", at: url.clone(), source }
                })?;
                tracing::info!(bus = ?key, %url, "JetStream bus connected");
                Arc::new(bus)
            }
            #[cfg(feature = "kafka")]
            Backend::Kafka(config) => {
                let brokers = config.brokers.clone();
                let bus = KafkaBus::connect(config).await.map_err(|source| OpenError::Backend {
                    backend: "Kafka",
                    at: brokers.clone(),
                    source,
                })?;
                tracing::info!(bus = ?key, %brokers, topic = %bus.topic(), "Kafka bus connected");
                Arc::new(bus)
            }
            Backend::Memory(config) => {
                tracing::info!(bus = ?key, "in-memory bus open: its events do not survive the process");
                Arc::new(EmbeddedBus::in_memory(config))
            }
            Backend::Embedded => {
                let mut config = EmbeddedConfig::new(data_dir.join("bus"));
                if let Some(e) = &spec.embedded {
                    if let Some(b) = e.max_bytes.and_then(|b| u64::try_from(b).ok()) {
                        config.max_bytes = b;
                    }
                    config.max_age =
                        duration("spec.embedded.maxAge", e.max_age.as_ref(), config.max_age)?;
                }
                let dir = config.dir.display().to_string();
                let failed =
                    |source| OpenError::Backend { backend: "embedded", at: dir.clone(), source };
                let bus = tokio::task::spawn_blocking(move || EmbeddedBus::open(config))
                    .await
                    .map_err(|e| failed(BusError::storage("opening the store stopped").because(e)))?
                    .map_err(failed)?;
                tracing::info!(%dir, last_sequence = bus.last_sequence(), "embedded bus open");
                Arc::new(bus)
            }
        };
        self.running.insert(key, (digest, bus.clone()));
        Ok(bus)
    }

    /// Closes every running bus.
    pub async fn close(&mut self) {
        self.close_retired().await;
        for (key, (_, bus)) in &self.running {
            if let Err(e) = bus.close().await {
                tracing::warn!(bus = ?key, error = %e, "closing the bus failed");
            }
        }
    }
}
