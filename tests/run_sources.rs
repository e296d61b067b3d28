//! `ofe run` with every kind of EventSource at once: a CloudEvent put in over each transport
//! (HTTP webhook, Kafka, MQTT 5, Redis stream, NATS) in binary mode reaches the function with
//! the same id, source, type and extensions. Needs `OFE_TEST_KAFKA`, `OFE_TEST_MQTT`,
//! `OFE_TEST_REDIS` and `OFE_TEST_NATS`; skips and says so when one is unset.

mod support;

use std::collections::BTreeSet;
use std::time::Duration;

use rdkafka::message::{Header, OwnedHeaders};
use redis::AsyncCommands as _;
use support::{KillOnDrop, Receiver, free_addr, manifests, start_ofe_with_webhooks, wait_ready};

const TRACEPARENT: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";

/// The binary-mode attributes of the event sent as `kind`.
fn attributes(kind: &str) -> Vec<(&'static str, String)> {
    vec![
        ("specversion", "1.0".into()),
        ("id", format!("{kind}-1")),
        ("source", "/e2e/fleet".into()),
        ("type", "com.example.e2e".into()),
        ("traceparent", TRACEPARENT.into()),
        ("fleet", "north".into()),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(all(ofe_test_kafka, ofe_test_mqtt, ofe_test_nats, ofe_test_redis)),
    ignore = "needs OFE_TEST_KAFKA, OFE_TEST_MQTT, OFE_TEST_NATS, OFE_TEST_REDIS (scripts/test.sh starts the services)"
)]
async fn a_binary_cloudevent_keeps_its_attributes_over_every_transport() {
    let (kafka, mqtt, redis_url, nats) = (
        support::broker_var("OFE_TEST_KAFKA"),
        support::broker_var("OFE_TEST_MQTT"),
        support::broker_var("OFE_TEST_REDIS"),
        support::broker_var("OFE_TEST_NATS"),
    );
    let ns = support::unique_namespace();
    let (receiver, base) = Receiver::start().await;
    let topic = format!("ofe-e2e-{ns}");
    let stream = format!("ofe-e2e-{ns}");
    let redis_host = redis_url.trim_start_matches("redis://").trim_end_matches('/');
    let mqtt_url = mqtt.replace("mqtt://", "tcp://");
    let yaml = format!(
        "apiVersion: events.openfunction.io/v1alpha1\nkind: EventSource\n\
         metadata: {{ name: ingest, namespace: {ns} }}\n\
         spec:\n  eventBus: default\n\
         \x20 webhook:\n    hook: {{}}\n\
         \x20 kafka:\n    kafka: {{ brokers: \"{kafka}\", topic: \"{topic}\", authRequired: false, initialOffset: earliest }}\n\
         \x20 mqtt:\n    mqtt: {{ url: \"{mqtt_url}\", topic: \"e2e/{ns}/#\", qos: 1, protocolVersion: \"5\", cleanSession: true }}\n\
         \x20 redis:\n    redis: {{ redisHost: \"{redis_host}\", redisPassword: \"\", stream: \"{stream}\", initialOffset: earliest }}\n\
         \x20 nats:\n    nats: {{ url: \"{nats}\", subject: \"e2e.{ns}.>\" }}\n"
    ) + &support::trigger(
        &ns,
        "route",
        "    hook: { eventSource: ingest, event: hook }\n    kafka: { eventSource: ingest, event: kafka }\n    \
         mqtt: { eventSource: ingest, event: mqtt }\n    redis: { eventSource: ingest, event: redis }\n    \
         nats: { eventSource: ingest, event: nats }",
        &format!(
            "  - condition: hook || kafka || mqtt || redis || nats\n    sink: {{ uri: \"{base}/fn\" }}"
        ),
    );
    let mut client = rdkafka::ClientConfig::new();
    client.set("bootstrap.servers", &kafka).set("broker.address.family", "v4");
    let admin: rdkafka::admin::AdminClient<rdkafka::client::DefaultClientContext> =
        client.create().expect("admin");
    admin
        .create_topics(
            [&rdkafka::admin::NewTopic::new(&topic, 1, rdkafka::admin::TopicReplication::Fixed(1))],
            &rdkafka::admin::AdminOptions::new().operation_timeout(Some(Duration::from_secs(10))),
        )
        .await
        .expect("Kafka must be reachable at OFE_TEST_KAFKA");
    let dir = tempfile::tempdir().expect("tempdir");
    let folder = manifests(dir.path(), &yaml);
    let (listen, webhooks) = (free_addr(), free_addr());
    let _ofe =
        KillOnDrop(start_ofe_with_webhooks(&folder, &dir.path().join("data"), listen, webhooks));
    wait_ready(listen).await;
    let payload = br#"{"vehicleId":"v1","speed":88}"#;

    // HTTP: curl-style binary mode.
    let mut request = support::http()
        .post(format!("http://{webhooks}/{ns}/ingest/hook"))
        .header("content-type", "application/json")
        .body(payload.to_vec());
    for (name, value) in attributes("http") {
        request = request.header(format!("ce-{name}"), value);
    }
    let answer = request.send().await.expect("webhook");
    assert_eq!(answer.status().as_u16(), 202, "the webhook takes the event");

    // Kafka: ce_ headers.
    let producer: rdkafka::producer::FutureProducer = client.create().expect("producer");
    let kafka_attributes = attributes("kafka");
    let mut headers = OwnedHeaders::new()
        .insert(Header { key: "content-type", value: Some("application/json".as_bytes()) });
    let names: Vec<String> = kafka_attributes.iter().map(|(n, _)| format!("ce_{n}")).collect();
    for ((_, value), key) in kafka_attributes.iter().zip(&names) {
        headers = headers.insert(Header { key, value: Some(value.as_bytes()) });
    }
    producer
        .send(
            rdkafka::producer::FutureRecord::<str, [u8]>::to(&topic)
                .payload(&payload[..])
                .headers(headers),
            Duration::from_secs(10),
        )
        .await
        .expect("produce");

    // Redis: ce_ fields, data and datacontenttype (as `redis-cli XADD` would write them).
    let mut redis = redis::Client::open(redis_url.as_str())
        .expect("redis url")
        .get_multiplexed_async_connection()
        .await
        .expect("redis");
    let mut fields: Vec<(String, String)> =
        attributes("redis").into_iter().map(|(n, v)| (format!("ce_{n}"), v)).collect();
    fields.push(("datacontenttype".into(), "application/json".into()));
    fields.push(("data".into(), String::from_utf8_lossy(payload).into_owned()));
    let _: String = redis.xadd(&stream, "*", &fields).await.expect("xadd");

    // MQTT 5 (user properties) and core NATS (ce- headers) keep nothing for a subscriber
    // that is not there yet: send until the function has the event. The bus drops the
    // repeats, as they have the same source and id.
    let mqtt_broker = ofe_eventsource::mqtt::parse_url(&mqtt_url).expect("url");
    let (mqtt_client, mut mqtt_events) = rumqttc::v5::AsyncClient::new(
        rumqttc::v5::MqttOptions::new(format!("e2e-{ns}"), mqtt_broker.host, mqtt_broker.port),
        16,
    );
    tokio::spawn(async move { while mqtt_events.poll().await.is_ok() {} });
    let nats_client = async_nats::connect(&nats).await.expect("nats");
    let ids = |r: &Receiver| -> BTreeSet<String> {
        r.on("/fn").iter().map(|x| x.header("ce-id")).collect()
    };
    for _ in 0..100 {
        let seen = ids(&receiver);
        if !seen.contains("mqtt-1") {
            let properties = rumqttc::v5::mqttbytes::v5::PublishProperties {
                content_type: Some("application/json".into()),
                user_properties: attributes("mqtt")
                    .into_iter()
                    .map(|(n, v)| (n.to_string(), v))
                    .collect(),
                ..Default::default()
            };
            mqtt_client
                .publish_with_properties(
                    format!("e2e/{ns}/v1"),
                    rumqttc::v5::mqttbytes::QoS::AtLeastOnce,
                    false,
                    payload.to_vec(),
                    properties,
                )
                .await
                .expect("mqtt publish");
        }
        if !seen.contains("nats-1") {
            let mut headers = async_nats::HeaderMap::new();
            headers.insert("content-type", "application/json");
            for (name, value) in attributes("nats") {
                headers.insert(format!("ce-{name}").as_str(), value.as_str());
            }
            nats_client
                .publish_with_headers(format!("e2e.{ns}.v1"), headers, payload.to_vec().into())
                .await
                .expect("nats publish");
        }
        if seen.len() >= 5 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let wanted: BTreeSet<String> =
        ["http", "kafka", "mqtt", "redis", "nats"].iter().map(|k| format!("{k}-1")).collect();
    receiver
        .wait_for(Duration::from_secs(30), "an event from every transport", |r| {
            wanted.is_subset(&ids(r))
        })
        .await;
    for got in receiver.on("/fn") {
        let id = got.header("ce-id");
        assert_eq!(got.header("ce-source"), "/e2e/fleet", "{id}: source kept");
        assert_eq!(got.header("ce-type"), "com.example.e2e", "{id}: type kept");
        assert_eq!(got.header("ce-traceparent"), TRACEPARENT, "{id}: traceparent kept");
        assert_eq!(got.header("ce-fleet"), "north", "{id}: extension kept");
        assert_eq!(got.header("content-type"), "application/json", "{id}: content type kept");
        assert_eq!(&got.body[..], payload, "{id}: data unchanged");
    }
    let deliveries = receiver.on("/fn").len();
    assert_eq!(deliveries, 5, "one delivery per event: repeats were dropped as duplicates");
}

/// OpenFunction's "multi sources in one EventSource": one event name under two kinds (here
/// cron and a Redis stream). Both feed the one event, so the Trigger input and the
/// EventSource's own sink receive the events of both kinds, each once; the metrics count
/// the kinds apart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(ofe_test_redis),
    ignore = "needs OFE_TEST_REDIS (scripts/test.sh starts the services)"
)]
async fn two_kinds_under_one_event_name_feed_that_event() {
    let redis_url = support::broker_var("OFE_TEST_REDIS");
    let ns = support::unique_namespace();
    let (receiver, base) = Receiver::start().await;
    let stream = format!("ofe-readings-{ns}");
    let redis_host = redis_url.trim_start_matches("redis://").trim_end_matches('/');
    let yaml = format!(
        "apiVersion: events.openfunction.io/v1alpha1\nkind: EventSource\n\
         metadata: {{ name: plant, namespace: {ns} }}\n\
         spec:\n  eventBus: default\n\
         \x20 redis:\n    readings: {{ redisHost: \"{redis_host}\", redisPassword: \"\", stream: \"{stream}\", initialOffset: earliest }}\n\
         \x20 cron:\n    readings: {{ schedule: \"@every 1s\" }}\n\
         \x20 sink: {{ uri: \"{base}/es\" }}\n"
    ) + &support::trigger(
        &ns,
        "route",
        "    readings: { eventSource: plant, event: readings }",
        &format!("  - condition: readings\n    sink: {{ uri: \"{base}/fn\" }}"),
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let folder = manifests(dir.path(), &yaml);
    let check =
        support::ofe().args(["validate", "-f"]).arg(&folder).output().expect("ofe validate");
    assert!(check.status.success(), "{}", String::from_utf8_lossy(&check.stdout));
    let listen = free_addr();
    let _ofe = KillOnDrop(support::start_ofe(&folder, &dir.path().join("data"), listen));
    wait_ready(listen).await;
    let mut redis = redis::Client::open(redis_url.as_str())
        .expect("redis url")
        .get_multiplexed_async_connection()
        .await
        .expect("redis");
    for n in 0..3 {
        let fields = [("data", format!("{{\"reading\":{n}}}"))];
        let _: String = redis.xadd(&stream, "*", &fields).await.expect("xadd");
    }
    let kinds = |r: &Receiver, path: &str| -> (usize, usize) {
        let got = r.on(path);
        let cron = got.iter().filter(|x| x.header("ce-type") == "io.openfunction.events.cron");
        let redis = got.iter().filter(|x| x.header("ce-type") == "io.openfunction.events.redis");
        (cron.count(), redis.count())
    };
    receiver
        .wait_for(Duration::from_secs(30), "cron ticks and 3 Redis entries at both sinks", |r| {
            let (fc, fr) = kinds(r, "/fn");
            let (ec, er) = kinds(r, "/es");
            fc >= 2 && fr == 3 && ec >= 2 && er == 3
        })
        .await;
    for path in ["/fn", "/es"] {
        let got = receiver.on(path);
        for x in &got {
            assert_eq!(x.header("ce-ofeevent"), "readings", "{path}: the one event");
        }
        let ids: BTreeSet<String> = got.iter().map(|x| x.header("ce-id")).collect();
        assert_eq!(ids.len(), got.len(), "{path}: each event once, not once per kind");
    }
    let metrics = support::get(&format!("http://{listen}/metrics")).await;
    for kind in ["cron", "redis"] {
        let prefix = format!(
            "ofe_eventsource_events_published_total{{namespace=\"{ns}\",eventsource=\"plant\",event=\"readings\",kind=\"{kind}\"}}"
        );
        assert!(support::counter(&metrics, &prefix) >= 2, "{kind} counted apart:\n{metrics}");
    }
}
