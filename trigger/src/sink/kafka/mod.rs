//! The Kafka sink (`sink.kafka`): each event is a record in the CloudEvents Kafka binding's
//! binary mode (`ce_` headers, `content-type`, the data as the value), produced with
//! `acks=all` and idempotence, and delivered once the brokers acknowledged it. One producer
//! per broker and settings, shared by every sink that uses them.

use std::sync::{Arc, LazyLock};
use std::time::Duration;

use async_trait::async_trait;
use cel::Program;
use cloudevents::Event;
use ofe_core::trace::{self, KeyValue};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{FutureProducer, FutureRecord};

use super::{Destination, Failure, Reply, Sink, SinkContext};
use crate::filter::{EventData, compile_cel};

/// The producers, per broker and settings.
static PRODUCERS: LazyLock<super::broker::Shared<FutureProducer<ofe_core::kafka::Quiet>>> =
    LazyLock::new(super::broker::Shared::new);

/// A Kafka topic.
pub struct KafkaSink {
    producer: Arc<FutureProducer<ofe_core::kafka::Quiet>>,
    brokers: String,
    topic: String,
    /// The record key's expression, when the sink sets one.
    key: Option<Arc<Program>>,
}

impl std::fmt::Debug for KafkaSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaSink")
            .field("brokers", &self.brokers)
            .field("topic", &self.topic)
            .finish()
    }
}

impl KafkaSink {
    /// The sink `spec` asks for; the error says which field is wrong.
    pub fn compile(spec: &ofe_crds::sinks::KafkaSinkSpec) -> Result<Destination, String> {
        let key = match &spec.key {
            Some(text) => Some(compile_cel(text).map_err(|e| format!("key: {}", e.message))?),
            None => None,
        };
        let mut config = rdkafka::ClientConfig::new();
        config
            .set("bootstrap.servers", &spec.brokers)
            .set("broker.address.family", "v4")
            .set("acks", "all")
            .set("enable.idempotence", "true")
            // Each record waits at most this long for the brokers; the attempt's own timeout
            // is usually shorter, and a record that outlives it is sent again by the retry.
            .set("message.timeout.ms", "60000")
            .set("linger.ms", "1");
        let sasl = spec.sasl_username.as_ref().zip(spec.sasl_password.as_ref());
        let protocol = match (sasl.is_some(), spec.tls.is_some()) {
            (false, false) => "plaintext",
            (false, true) => "ssl",
            (true, false) => "sasl_plaintext",
            (true, true) => "sasl_ssl",
        };
        config.set("security.protocol", protocol);
        if let Some((user, password)) = sasl {
            config
                .set("sasl.mechanisms", spec.sasl_mechanism.as_deref().unwrap_or("PLAIN"))
                .set("sasl.username", user)
                .set("sasl.password", password);
        }
        if let Some(tls) = &spec.tls {
            if let Some(ca) = &tls.ca_file {
                config.set("ssl.ca.location", ca);
            }
            if let (Some(cert), Some(key)) = (&tls.cert_file, &tls.key_file) {
                config.set("ssl.certificate.location", cert).set("ssl.key.location", key);
            }
        }
        let shared: String = {
            let mut pairs: Vec<String> =
                config.config_map().iter().map(|(k, v)| format!("{k}={v}")).collect();
            pairs.sort();
            pairs.join("\n")
        };
        let producer = PRODUCERS
            .get_or(&shared, || config.create_with_context(ofe_core::kafka::Quiet))
            .map_err(|e| format!("cannot make a Kafka producer: {e}"))?;
        Ok(Destination::new(Self {
            producer,
            brokers: spec.brokers.clone(),
            topic: spec.topic.clone(),
            key,
        }))
    }
}

#[async_trait]
impl Sink for KafkaSink {
    fn describe(&self) -> String {
        format!("kafka://{}/{}", self.brokers, self.topic)
    }

    fn span(&self, resend: Option<KeyValue>) -> trace::Span {
        super::broker::broker_span("kafka", &self.topic, resend)
    }

    async fn attempt(
        &self,
        event: &Event,
        context: &SinkContext<'_>,
    ) -> Result<Option<Box<Reply>>, Failure> {
        let key = match &self.key {
            Some(program) => {
                let value = EventData::new(event)
                    .try_eval(program)
                    .map_err(|e| Failure::permanent(format!("sink.kafka.key: {e}")))?;
                Some(
                    crate::sink::http::request::scalar(&value)
                        .map_err(|e| Failure::permanent(format!("sink.kafka.key: {e}")))?,
                )
            }
            None => event.extension("partitionkey").map(ToString::to_string),
        };
        let payload = ofe_core::event::data_bytes(event);
        let mut record = FutureRecord::to(&self.topic)
            .payload(&payload)
            .headers(ofe_core::kafka::headers(event));
        if let Some(key) = &key {
            record = record.key(key.as_bytes());
        }
        match self.producer.send(record, context.timeout.min(Duration::from_secs(60))).await {
            Ok(_) => Ok(None),
            Err((error, _)) => {
                let reason = format!("Kafka at {} refused the record: {error}", self.brokers);
                let permanent = matches!(
                    error,
                    KafkaError::MessageProduction(
                        RDKafkaErrorCode::MessageSizeTooLarge
                            | RDKafkaErrorCode::InvalidMessageSize
                            | RDKafkaErrorCode::TopicAuthorizationFailed
                            | RDKafkaErrorCode::InvalidRecord
                    )
                );
                Err(if permanent { Failure::permanent(reason) } else { Failure::transient(reason) })
            }
        }
    }
}
