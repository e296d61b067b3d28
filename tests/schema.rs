//! Schema validation at the source (`schema` on an EventSource event), against `ofe run`:
//! - a webhook whose schema is inline refuses data that does not satisfy it with 400 and the
//!   JSON path of the violation (nothing published), and takes the rest;
//! - a webhook whose schema comes from a ConfigMap among the manifests does the same;
//! - an MQTT source (a real broker) whose schema is a file publishes a violating message
//!   flagged `ofeinvalid` with the violation, which a Trigger routes, and nothing is lost;
//! - `ofe_eventsource_events_invalid_total` counts them; `ofe validate` names a schema that
//!   is not one, and warns of a ConfigMap it cannot see.

mod support;

use std::time::Duration;

use support::{Receiver, Running, manifests};

const SCHEMA: &str = "{ type: object, required: [vehicleId, speed], properties: { vehicleId: { type: string }, speed: { type: number, minimum: 0 } } }";

fn webhooks(ns: &str, base: &str) -> String {
    format!(
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {{ name: telemetry-schema, namespace: {ns} }}\n\
         data:\n  schema.json: '{{\"type\": \"object\", \"required\": [\"vehicleId\"]}}'\n---\n\
         apiVersion: events.openfunction.io/v1alpha1\nkind: EventSource\n\
         metadata: {{ name: fleet, namespace: {ns} }}\n\
         spec:\n  eventBus: default\n  webhook:\n    \
         inline: {{ schema: {{ jsonSchema: {SCHEMA} }} }}\n    \
         mapped: {{ schema: {{ configMapKeyRef: {{ name: telemetry-schema, key: schema.json }} }} }}\n"
    ) + &support::trigger(
        ns,
        "route",
        "    inline: { eventSource: fleet, event: inline }\n    mapped: { eventSource: fleet, event: mapped }",
        &format!("  - condition: inline || mapped\n    sink: {{ uri: \"{base}/fn\" }}"),
    )
}

async fn post(url: &str, id: &str, body: &str) -> (u16, String) {
    let response = support::http()
        .post(url)
        .header("ce-specversion", "1.0")
        .header("ce-id", id)
        .header("ce-source", "/cars")
        .header("ce-type", "com.example.telemetry")
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .expect("post");
    (response.status().as_u16(), response.text().await.unwrap_or_default())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_webhook_refuses_what_its_schema_refuses_with_the_json_path() {
    let ns = support::unique_namespace();
    let (receiver, base) = Receiver::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let folder = manifests(dir.path(), &webhooks(&ns, &base));
    let run = Running::start(&folder, &dir.path().join("data")).await;
    let inline = format!("http://{}/{ns}/fleet/inline", run.webhooks);
    let mapped = format!("http://{}/{ns}/fleet/mapped", run.webhooks);

    let (status, text) = post(&inline, "bad-1", r#"{"vehicleId":"v-7","speed":"fast"}"#).await;
    assert_eq!(status, 400, "{text}");
    assert!(
        text.contains(
            r#"the data does not satisfy the schema: $.speed: "fast" is not of type "number""#
        ),
        "{text}"
    );
    let (status, text) = post(&inline, "bad-2", r#"{"vehicleId":"v-7","speed":-3}"#).await;
    assert_eq!(status, 400, "{text}");
    assert!(text.contains("$.speed: -3 is less than the minimum of 0"), "{text}");
    let (status, text) = post(&mapped, "bad-3", r#"{"speed":3}"#).await;
    assert_eq!(status, 400, "{text}");
    assert!(text.contains(r#"$: "vehicleId" is a required property"#), "{text}");

    assert_eq!(post(&inline, "ok-1", r#"{"vehicleId":"v-7","speed":131.5}"#).await.0, 202);
    assert_eq!(post(&mapped, "ok-2", r#"{"vehicleId":"v-8"}"#).await.0, 202);
    receiver
        .wait_for(Duration::from_secs(20), "the two valid events", |r| r.on("/fn").len() == 2)
        .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let ids: Vec<String> = receiver.on("/fn").iter().map(|r| r.header("ce-id")).collect();
    assert!(ids.contains(&"ok-1".to_string()) && ids.contains(&"ok-2".to_string()), "{ids:?}");
    assert_eq!(ids.len(), 2, "nothing refused was published: {ids:?}");
    let metrics = support::get(&format!("http://{}/metrics", run.listen)).await;
    let invalid = |event: &str| {
        let prefix = format!(
            "ofe_eventsource_events_invalid_total{{namespace=\"{ns}\",eventsource=\"fleet\",event=\"{event}\""
        );
        support::counter(&metrics, &prefix)
    };
    assert_eq!((invalid("inline"), invalid("mapped")), (2, 1), "{metrics}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(ofe_test_mqtt),
    ignore = "needs OFE_TEST_MQTT (scripts/test.sh starts the services)"
)]
async fn a_broker_source_flags_what_its_schema_refuses_and_loses_nothing() {
    let url = support::broker_var("OFE_TEST_MQTT");
    let ns = support::unique_namespace();
    let topic = format!("schema/{ns}");
    let (receiver, base) = Receiver::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let schema = dir.path().join("telemetry.schema.yaml");
    std::fs::write(&schema, format!("{SCHEMA}\n")).expect("schema file");
    let address = url.trim_start_matches("mqtt://");
    let yaml = format!(
        "apiVersion: events.openfunction.io/v1alpha1\nkind: EventSource\n\
         metadata: {{ name: cars, namespace: {ns} }}\n\
         spec:\n  eventBus: default\n  mqtt:\n    telemetry:\n      url: \"tcp://{address}\"\n      \
         topic: \"{topic}\"\n      qos: 1\n      schema: {{ file: \"{}\" }}\n",
        schema.display()
    ) + &support::trigger(
        &ns,
        "route",
        "    telemetry: { eventSource: cars, event: telemetry }",
        &format!("  - condition: telemetry\n    sink: {{ uri: \"{base}/fn\" }}"),
    );
    let folder = manifests(dir.path(), &yaml);
    let run = Running::start(&folder, &dir.path().join("data")).await;
    let publisher = support::mqtt_publisher(&url, &format!("pub-{ns}"));
    // Subscribed by now: the source is ready once connected.
    tokio::time::sleep(Duration::from_millis(500)).await;
    for body in [r#"{"vehicleId":"v-1","speed":12}"#, r#"{"vehicleId":"v-2","speed":"fast"}"#] {
        publisher.publish(&topic, rumqttc::QoS::AtLeastOnce, false, body).await.expect("publish");
    }
    receiver.wait_for(Duration::from_secs(20), "both messages", |r| r.on("/fn").len() == 2).await;
    let seen = receiver.on("/fn");
    let flag = |speed: &str| {
        seen.iter()
            .find(|r| String::from_utf8_lossy(&r.body).contains(speed))
            .map(|r| r.header("ce-ofeinvalid"))
            .expect("delivered")
    };
    assert_eq!(flag("12"), "", "a valid message is not flagged");
    // Percent-encoded in the header, as the HTTP binding asks of `"`.
    assert_eq!(
        flag("fast").replace("%22", "\""),
        r#"schema: $.speed: "fast" is not of type "number""#
    );
    let metrics = support::get(&format!("http://{}/metrics", run.listen)).await;
    assert_eq!(support::counter(&metrics, "ofe_eventsource_events_invalid_total{"), 1);
}

#[test]
fn validate_names_a_schema_that_is_none_and_warns_of_an_unseen_config_map() {
    let dir = tempfile::tempdir().expect("tempdir");
    let yaml = "apiVersion: events.openfunction.io/v1alpha1\nkind: EventSource\n\
                metadata: { name: fleet }\nspec:\n  eventBus: default\n  webhook:\n    \
                a: { schema: { jsonSchema: { type: 12 } } }\n    \
                b: { schema: { configMapKeyRef: { name: elsewhere, key: s } } }\n    \
                c: { schema: { file: /nonexistent/s.json } }\n";
    let folder = manifests(dir.path(), yaml);
    let out = support::ofe().args(["validate", "-f"]).arg(&folder).output().expect("validate");
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{text}");
    for expected in [
        "spec.webhook.a.schema.jsonSchema: is not a JSON Schema",
        "spec.webhook.b.schema.configMapKeyRef: warning: ConfigMap default/elsewhere is not among the manifests",
        "spec.webhook.c.schema.file: cannot read /nonexistent/s.json",
    ] {
        assert!(text.contains(expected), "missing `{expected}` in:\n{text}");
    }
}
