//! Join state on the Kafka bus: a compacted topic `<prefix>.state` with one partition.
//!
//! Kafka has no conditional write, so compare-and-set is decided by the log itself: a write
//! record carries the revision it expects, every process reads the partition in the same
//! order, and a record takes effect only if the key is at that revision when it is read (its
//! revision is then its offset + 1). A writer waits until it reads its own record back, and so
//! learns, as every replica does, whether it won.
//!
//! Compaction keeps the latest record of each key, which could be a write that lost. So the
//! loser writes the winning value again, as a *repair* record that keeps the winner's revision,
//! before it reports the conflict: the latest record of a key then holds the winning value.
//! A repair applies when the key is at the revision it names, or has no value (a reader that
//! starts after compaction sees only the repair).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use ofe_core::kafka::Quiet;

use super::{refused, unavailable};
use rdkafka::Message as _;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::consumer::{BaseConsumer, Consumer as _};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{Offset, TopicPartitionList};
use tokio::sync::{oneshot, watch};

use super::KafkaConfig;
use ofe_core::BusError;
use ofe_core::state::{StateError, StateStore, Versioned};

/// How long a writer waits to read its own record back.
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);

/// `expected` of a record that applies whatever the key's revision.
const ANY: u64 = u64::MAX;

/// Bytes before the value in a record: kind (0 write, 1 repair), expected revision, nonce.
const HEADER: usize = 1 + 8 + 16;

/// What the reader shares with writers.
#[derive(Default)]
struct Shared {
    /// Every key's value, as of the reader's position.
    values: HashMap<String, Versioned>,
    /// Writers waiting for their record, by nonce: the revision it took, or `None` if it lost.
    waiting: HashMap<[u8; 16], oneshot::Sender<Option<u64>>>,
}

/// The Kafka bus's state store.
pub(crate) struct KafkaState {
    topic: String,
    producer: FutureProducer<Quiet>,
    shared: Arc<Mutex<Shared>>,
    stop: Arc<AtomicBool>,
}

impl Drop for KafkaState {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

impl KafkaState {
    /// Creates the topic when missing, starts reading it from the beginning, and returns once
    /// everything already in it has been read.
    pub(crate) async fn open(
        config: &KafkaConfig,
        producer: FutureProducer<Quiet>,
    ) -> Result<Self, BusError> {
        let topic = format!("{}.state", config.topic_prefix);
        let admin: AdminClient<Quiet> =
            config.client_config().create_with_context(Quiet).map_err(refused)?;
        let new_topic = NewTopic::new(&topic, 1, TopicReplication::Fixed(config.replication))
            .set("cleanup.policy", "compact");
        let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
        for result in admin
            .create_topics([&new_topic], &options)
            .await
            .map_err(unavailable("cannot create the state topic"))?
        {
            match result {
                Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((name, code)) => {
                    return Err(BusError::unavailable(format!("cannot create Kafka topic {name}"))
                        .because(code));
                }
            }
        }
        let consumer: BaseConsumer<Quiet> = config
            .client_config()
            .set("group.id", format!("ofe.state-reader.{}", uuid::Uuid::new_v4()))
            .set("enable.auto.commit", "false")
            .create_with_context(Quiet)
            .map_err(refused)?;
        let mut assignment = TopicPartitionList::new();
        assignment.add_partition_offset(&topic, 0, Offset::Beginning).map_err(refused)?;
        consumer.assign(&assignment).map_err(unavailable("cannot assign the state topic"))?;
        let shared = Arc::new(Mutex::new(Shared::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let (position, mut read) = watch::channel(-1i64);
        let (reader_shared, reader_stop, reader_topic) =
            (shared.clone(), stop.clone(), topic.clone());
        std::thread::Builder::new()
            .name("ofe-kafka-state".into())
            .spawn(move || {
                read_loop(&consumer, &reader_topic, &reader_shared, &reader_stop, &position)
            })
            .map_err(unavailable("cannot start the state reader's thread"))?;
        // Catch up with what is there before answering reads.
        let (watermark_producer, name) = (producer.clone(), topic.clone());
        let high = tokio::task::spawn_blocking(move || {
            use rdkafka::producer::Producer as _;
            watermark_producer.client().fetch_watermarks(&name, 0, Duration::from_secs(10))
        })
        .await
        .map_err(unavailable("reading the state topic's end stopped"))?
        .map_err(|e| BusError::unavailable(format!("cannot read the end of {topic}")).because(e))?
        .1;
        tokio::time::timeout(WRITE_TIMEOUT, read.wait_for(|p| *p + 1 >= high))
            .await
            .map_err(|_| {
                BusError::unavailable(format!("reading {topic} did not catch up in time"))
            })?
            .map_err(|_| BusError::unavailable("the state reader stopped"))?;
        Ok(Self { topic, producer, shared, stop })
    }

    /// Writes a record (a repair when `repair`) and waits to read it back: `Some(revision)` if
    /// it took effect.
    async fn write(
        &self,
        key: &str,
        expected: u64,
        value: Option<&[u8]>,
        repair: bool,
    ) -> Result<Option<u64>, BusError> {
        let nonce = *uuid::Uuid::new_v4().as_bytes();
        let (tx, rx) = oneshot::channel();
        self.shared.lock().map_err(|_| BusError::Closed)?.waiting.insert(nonce, tx);
        let payload = value.map(|value| {
            let mut record = Vec::with_capacity(HEADER + value.len());
            record.push(u8::from(repair));
            record.extend_from_slice(&expected.to_be_bytes());
            record.extend_from_slice(&nonce);
            record.extend_from_slice(value);
            record
        });
        let mut record = FutureRecord::<str, Vec<u8>>::to(&self.topic).key(key);
        if let Some(payload) = &payload {
            record = record.payload(payload);
        } else {
            // A tombstone has no payload to carry the nonce; it travels in a header.
            record = record.headers(
                rdkafka::message::OwnedHeaders::new()
                    .insert(rdkafka::message::Header { key: "ofe_nonce", value: Some(&nonce[..]) }),
            );
        }
        let sent = self.producer.send(record, Duration::from_secs(10)).await;
        if let Err((e, _)) = sent {
            if let Ok(mut shared) = self.shared.lock() {
                shared.waiting.remove(&nonce);
            }
            return Err(
                BusError::unavailable(format!("cannot write state to {}", self.topic)).because(e)
            );
        }
        tokio::time::timeout(WRITE_TIMEOUT, rx)
            .await
            .map_err(|_| {
                BusError::unavailable(format!(
                    "did not read state back from {} in time",
                    self.topic
                ))
            })?
            .map_err(|_| BusError::Closed)
    }
}

/// Reads the state topic for ever, applying records in log order and answering writers.
fn read_loop(
    consumer: &BaseConsumer<Quiet>,
    topic: &str,
    shared: &Mutex<Shared>,
    stop: &AtomicBool,
    position: &watch::Sender<i64>,
) {
    use rdkafka::message::Headers as _;
    while !stop.load(Ordering::Relaxed) {
        let Some(polled) = consumer.poll(Duration::from_millis(100)) else { continue };
        let message = match polled {
            Ok(m) => m,
            Err(e) => {
                tracing::debug!(error = %e, topic, "state reader");
                continue;
            }
        };
        let offset = message.offset();
        let revision = u64::try_from(offset).unwrap_or(0) + 1;
        let Some(key) = message.key().map(|k| String::from_utf8_lossy(k).into_owned()) else {
            continue;
        };
        let Ok(mut shared) = shared.lock() else { return };
        let (nonce, outcome) = match message.payload() {
            None => {
                shared.values.remove(&key);
                let nonce = message.headers().and_then(|h| {
                    h.iter()
                        .find(|h| h.key == "ofe_nonce")
                        .and_then(|h| h.value)
                        .map(<[u8]>::to_vec)
                });
                (nonce, Some(0))
            }
            Some(record) if record.len() >= HEADER => {
                let repair = record[0] == 1;
                let expected = u64::from_be_bytes(record[1..9].try_into().unwrap_or([0; 8]));
                let current = shared.values.get(&key).map_or(0, |v| v.revision);
                let applies = expected == ANY || expected == current || (repair && current == 0);
                // A repair restores the winner's value under the winner's revision.
                let revision = if repair { expected } else { revision };
                if applies {
                    let value = record[HEADER..].to_vec();
                    shared.values.insert(key, Versioned { value, revision });
                }
                (Some(record[9..HEADER].to_vec()), applies.then_some(revision))
            }
            Some(_) => (None, None),
        };
        if let Some(tx) =
            nonce.and_then(|n| <[u8; 16]>::try_from(n).ok()).and_then(|n| shared.waiting.remove(&n))
        {
            let _ = tx.send(outcome);
        }
        drop(shared);
        position.send_replace(offset);
    }
}

#[async_trait]
impl StateStore for KafkaState {
    async fn get(&self, key: &str) -> Result<Option<Versioned>, BusError> {
        Ok(self.shared.lock().map_err(|_| BusError::Closed)?.values.get(key).cloned())
    }

    async fn put(
        &self,
        key: &str,
        value: Vec<u8>,
        expected: Option<u64>,
    ) -> Result<u64, StateError> {
        if let Some(revision) = self.write(key, expected.unwrap_or(0), Some(&value), false).await? {
            return Ok(revision);
        }
        // Lost: make sure the key's latest record holds the winning value, so that compaction
        // keeps it.
        let winner = self.get(key).await?;
        if let Some(winner) = winner {
            let _ = self.write(key, winner.revision, Some(&winner.value), true).await?;
        }
        Err(StateError::Conflict)
    }

    async fn delete(&self, key: &str) -> Result<(), BusError> {
        self.write(key, ANY, None, false).await.map(|_| ())
    }
}
