//! The Kafka backend passes the backend suite against a real Kafka-protocol broker.
//!
//! `OFE_TEST_KAFKA` names the bootstrap broker (e.g. `127.0.0.1:9092`); unset, every test skips
//! and says so. Each test uses a topic of its own.

use std::sync::Arc;

use ofe_eventbus::EventBus;
use ofe_eventbus::kafka::{KafkaBus, KafkaConfig};
use ofe_eventbus::testing;

fn brokers() -> Option<String> {
    match std::env::var("OFE_TEST_KAFKA") {
        Ok(brokers) => Some(brokers),
        Err(_) => {
            eprintln!("skipped: OFE_TEST_KAFKA is not set (run `eval \"$(scripts/services.sh)\"`)");
            None
        }
    }
}

fn config(brokers: &str, test: &str) -> KafkaConfig {
    let mut config = KafkaConfig::new(brokers);
    config.topic_prefix = format!("ofe-test-{test}-{}", uuid::Uuid::new_v4().simple());
    config
}

async fn connect(config: KafkaConfig) -> KafkaBus {
    let brokers = config.brokers.clone();
    KafkaBus::connect(config)
        .await
        .unwrap_or_else(|e| panic!("OFE_TEST_KAFKA={brokers} is set but: {e}"))
}

async fn bus(test: &str) -> Option<Arc<dyn EventBus>> {
    let brokers = brokers()?;
    Some(Arc::new(connect(config(&brokers, test)).await))
}

// Consumer groups need a few seconds to form; tansu mishandles a rebalance mid-stream.
ofe_eventbus::conformance_suite!(connect: bus("suite").await, settle: std::time::Duration::from_secs(5));

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_resumes_after_the_last_ack() {
    let Some(brokers) = brokers() else { return };
    let config = config(&brokers, "restart");
    let reopen: testing::Reopen = Box::new(move || {
        let config = config.clone();
        Box::pin(async move { Arc::new(connect(config).await) as Arc<dyn EventBus> })
    });
    testing::restart_resumes_after_the_last_ack(reopen, "restart").await;
}
