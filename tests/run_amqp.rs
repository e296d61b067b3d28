//! `ofe run` with an AMQP EventSource against a real RabbitMQ (`OFE_TEST_AMQP`): the example
//! `examples/amqp-to-function` (exchange, binding, CEL condition on the data) delivers the
//! matching orders to the function, and kill -9 during a stream loses nothing the broker
//! handed over. Unset, the tests skip and say so.

mod support;

use std::time::Duration;

use lapin::options::ExchangeDeclareOptions;
use lapin::types::FieldTable;
use lapin::{BasicProperties, Connection, ConnectionProperties, ExchangeKind};
use support::{KillOnDrop, Receiver, free_addr, manifests, start_ofe, wait_ready};

/// A publisher on the broker at `url`, publishing to `exchange` (declared durable, topic).
async fn publisher(url: &str, exchange: &str) -> (Connection, lapin::Channel) {
    let connection = Connection::connect(url, ConnectionProperties::default())
        .await
        .unwrap_or_else(|e| panic!("RabbitMQ must be reachable at OFE_TEST_AMQP: {e}"));
    let channel = connection.create_channel().await.expect("channel");
    let durable = ExchangeDeclareOptions { durable: true, ..Default::default() };
    channel
        .exchange_declare(exchange.into(), ExchangeKind::Topic, durable, FieldTable::default())
        .await
        .expect("exchange");
    (connection, channel)
}

async fn publish(channel: &lapin::Channel, exchange: &str, key: &str, id: &str, body: &[u8]) {
    let properties = BasicProperties::default()
        .with_message_id(id.into())
        .with_content_type("application/json".into())
        .with_delivery_mode(2);
    ofe_testkit::amqp_publish(channel, exchange, key, body, properties).await;
}

/// The example's manifests, in namespace `ns`, on the broker at `url`, with queue and exchange
/// names of this run, calling `sink`.
fn example(ns: &str, url: &str, sink: &str) -> String {
    let text = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("examples/amqp-to-function/manifests.yaml"),
    )
    .expect("example");
    text.replace("amqp://guest:guest@127.0.0.1:5672/%2f", url)
        .replace("queue: orders", &format!("queue: orders-{ns}"))
        .replace("exchange: shop", &format!("exchange: shop-{ns}"))
        .replace("http://127.0.0.1:8081/", sink)
        .replace("metadata:\n  name: shop", &format!("metadata:\n  name: shop\n  namespace: {ns}"))
        .replace(
            "metadata:\n  name: large-orders",
            &format!("metadata:\n  name: large-orders\n  namespace: {ns}"),
        )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(ofe_test_amqp),
    ignore = "needs OFE_TEST_AMQP (scripts/test.sh starts the services)"
)]
async fn the_example_delivers_the_large_orders_to_the_function() {
    let url = support::broker_var("OFE_TEST_AMQP");
    let ns = support::unique_namespace();
    let (receiver, base) = Receiver::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let folder = manifests(dir.path(), &example(&ns, &url, &format!("{base}/fn")));
    let listen = free_addr();
    let _ofe = KillOnDrop(start_ofe(&folder, &dir.path().join("data"), listen));
    wait_ready(listen).await;
    let exchange = format!("shop-{ns}");
    let (_connection, channel) = publisher(&url, &exchange).await;
    // The source binds its queue as it connects, and until then the exchange drops what it
    // gets: send warm-up orders until one arrives (later ones are told apart by `warm`).
    for i in 0..100 {
        if !receiver.on("/fn").is_empty() {
            break;
        }
        publish(
            &channel,
            &exchange,
            "order.created",
            &format!("warm-{i}"),
            br#"{"total":500,"warm":true}"#,
        )
        .await;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    receiver
        .wait_for(Duration::from_secs(10), "the warm-up order", |r| !r.on("/fn").is_empty())
        .await;
    let before = receiver.on("/fn").len();
    publish(&channel, &exchange, "order.created", "o-1", br#"{"total":250}"#).await;
    publish(&channel, &exchange, "order.created", "o-2", br#"{"total":20}"#).await;
    publish(&channel, &exchange, "order.paid", "o-3", br#"{"total":120}"#).await;
    publish(&channel, &exchange, "invoice.sent", "o-4", br#"{"total":999}"#).await;
    let totals = |r: &Receiver| -> Vec<u64> {
        r.on("/fn")[before..]
            .iter()
            .filter_map(|x| serde_json::from_slice::<serde_json::Value>(&x.body).ok())
            .filter(|v| v["warm"].is_null())
            .filter_map(|v| v["total"].as_u64())
            .collect()
    };
    receiver.wait_for(Duration::from_secs(15), "both large orders", |r| totals(r).len() >= 2).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    // A subscriber delivers several events at once (no `orderKey`), so they may arrive in
    // either order.
    let mut got = totals(&receiver);
    got.sort_unstable();
    assert_eq!(got, vec![120, 250], "only `order.*` with total >= 100, each once");
    let created = receiver.on("/fn")[before..]
        .iter()
        .find(|x| {
            serde_json::from_slice::<serde_json::Value>(&x.body)
                .is_ok_and(|v| v["total"] == 250 && v["warm"].is_null())
        })
        .cloned()
        .expect("the order of 250");
    assert_eq!(created.header("ce-type"), "io.openfunction.events.amqp");
    assert_eq!(created.header("ce-subject"), "order.created", "the routing key");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(ofe_test_amqp),
    ignore = "needs OFE_TEST_AMQP (scripts/test.sh starts the services)"
)]
async fn kill_9_during_an_amqp_stream_loses_nothing() {
    let url = support::broker_var("OFE_TEST_AMQP");
    let ns = support::unique_namespace();
    let (receiver, base) = Receiver::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let (queue, exchange) = (format!("telemetry-{ns}"), format!("fleet-{ns}"));
    let yaml = format!(
        "apiVersion: events.openfunction.io/v1alpha1\nkind: EventSource\n\
         metadata: {{ name: fleet, namespace: {ns} }}\n\
         spec:\n  eventBus: default\n  amqp:\n    telemetry: {{ url: \"{url}\", queue: \"{queue}\", declare: true, exchange: \"{exchange}\", routingKey: \"#\" }}\n"
    ) + &support::trigger(
        &ns,
        "route",
        "    telemetry: { eventSource: fleet, event: telemetry }",
        &format!("  - condition: telemetry\n    sink: {{ uri: \"{base}/slow\" }}"),
    );
    let folder = manifests(dir.path(), &yaml);
    let (_connection, channel) = publisher(&url, &exchange).await;
    let sent = std::sync::atomic::AtomicU64::new(0);
    let total = 30;
    let deliveries = support::kill_9_during_stream(&folder, &receiver, total, |payload| {
        let id = format!("m-{}", sent.fetch_add(1, std::sync::atomic::Ordering::Relaxed));
        let (channel, exchange) = (channel.clone(), exchange.clone());
        async move { publish(&channel, &exchange, "vehicle.7", &id, payload.as_bytes()).await }
    })
    .await;
    println!(
        "kill -9 during AMQP: {total} published, all {total} delivered ({deliveries} deliveries, {} duplicates)",
        deliveries - total as usize
    );
}
