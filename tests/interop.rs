//! ofe against the software its users run on either side of it, built from their own sources
//! through the Go module proxy (`tests/peers/go`, `OFE_TEST_GO_PEERS`):
//!
//! - an OpenFunction sync function on OpenFunction's functions-framework-go receives ofe's
//!   deliveries;
//! - the official CloudEvents Go SDK sends to ofe's webhook in binary, structured and batch mode
//!   and receives ofe's deliveries, also when a subscriber's transform reshaped them and its
//!   sink sends them in structured mode;
//! - the SDK's Kafka binding reads ofe's Kafka bus records, and writes records ofe's Kafka source
//!   takes.
//!
//! Every attribute and extension that was sent must arrive unchanged, as the SDK decodes it.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::{Value, json};
use support::{KillOnDrop, free_addr, manifests, terminate, wait_ready};

/// A program of the Go peers.
fn peer(name: &str) -> PathBuf {
    Path::new(&support::broker_var("OFE_TEST_GO_PEERS")).join(name)
}

/// Events in the SDK's JSON format, with every kind of attribute and two extensions; ids and
/// data name `mode`.
fn events(mode: &str, n: usize) -> Vec<Value> {
    (0..n)
        .map(|i| {
            json!({
                "specversion": "1.0",
                "id": format!("sdk-{mode}-{i}"),
                "source": "/fleet/vehicle-42",
                "type": "com.example.telemetry",
                "subject": format!("trip-{i}"),
                "time": "2026-12-02T10:00:00Z",
                "dataschema": "https://example.com/schemas/telemetry.json",
                "datacontenttype": "application/json",
                "vehicleid": "42",
                "region": "eu-west",
                "data": {"speed": 131 + i, "mode": mode},
            })
        })
        .collect()
}

/// Writes `events` as a JSON array to a file in `dir`.
fn events_file(dir: &Path, name: &str, events: &[Value]) -> PathBuf {
    let path = dir.join(format!("{name}.json"));
    std::fs::write(&path, serde_json::to_vec(events).expect("JSON")).expect("write");
    path
}

/// Runs a Go peer to completion; panics with its output if it fails. Returns its stdout.
fn run(program: &Path, args: &[&str]) -> String {
    let out = Command::new(program).args(args).output().expect("a Go peer");
    assert!(
        out.status.success(),
        "{} {args:?} failed:\n{}",
        program.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The JSON lines of `path` (events recorded by a peer), once there are at least `n`.
async fn recorded(path: &Path, n: usize) -> Vec<Value> {
    let start = std::time::Instant::now();
    loop {
        let lines: Vec<Value> = std::fs::read_to_string(path)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect();
        if lines.len() >= n {
            return lines;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "{} of {n} events recorded in {}",
            lines.len(),
            path.display()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Every attribute, extension and the data of each sent event arrived unchanged (matched by
/// id). Attributes ofe adds are allowed; returns their names.
fn assert_round_trip(sent: &[Value], got: &[Value]) -> std::collections::BTreeSet<String> {
    let mut added = std::collections::BTreeSet::new();
    for event in sent {
        let id = &event["id"];
        let arrived = got
            .iter()
            .find(|g| g["id"] == *id)
            .unwrap_or_else(|| panic!("{id} did not arrive; got {got:?}"));
        for (key, value) in event.as_object().expect("an object") {
            assert_eq!(&arrived[key], value, "{key} of {id} changed: {arrived}");
        }
        for key in arrived.as_object().expect("an object").keys() {
            if event.get(key).is_none() {
                added.insert(key.clone());
            }
        }
    }
    added
}

/// `ofe run` with a webhook EventSource `gateway` (event `telemetry` at `/telemetry`) and,
/// when `sink` is given, a Trigger sending each event there; `bus` is extra YAML (an EventBus).
/// Returns the process, its webhook URL and the temporary directory it runs in.
async fn ofe_with_webhook(
    sink: Option<&str>,
    ns: &str,
    bus: &str,
) -> (KillOnDrop, String, tempfile::TempDir) {
    ofe_with_subscriber(sink, "", "", ns, bus).await
}

/// [`ofe_with_webhook`] whose sink also has `sink_fields` (e.g. `, mode: structured`) and
/// whose subscriber also has `more`: YAML lines at its fields' indent (four spaces), each
/// starting with a line break, e.g. a `transform`.
async fn ofe_with_subscriber(
    sink: Option<&str>,
    sink_fields: &str,
    more: &str,
    ns: &str,
    bus: &str,
) -> (KillOnDrop, String, tempfile::TempDir) {
    let sink = sink.map(|uri| format!("{{ uri: \"{uri}\"{sink_fields} }}"));
    ofe_with_sink(sink.as_deref(), more, ns, bus).await
}

/// [`ofe_with_webhook`] whose subscriber's `sink` is `sink` (a YAML flow mapping, e.g. a
/// broker's), with `more` as in [`ofe_with_subscriber`].
async fn ofe_with_sink(
    sink: Option<&str>,
    more: &str,
    ns: &str,
    bus: &str,
) -> (KillOnDrop, String, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut yaml = format!(
        "apiVersion: events.openfunction.io/v1alpha1\nkind: EventSource\n\
         metadata: {{ name: gateway, namespace: {ns} }}\n\
         spec:\n  eventBus: default\n  webhook:\n    telemetry: {{ path: /telemetry }}\n"
    );
    if let Some(sink) = sink {
        yaml += &support::trigger(
            ns,
            "route",
            "    telemetry: { eventSource: gateway, event: telemetry }",
            &format!("  - condition: telemetry\n    sink: {sink}{more}"),
        );
    }
    yaml += bus;
    let (listen, hooks) = (free_addr(), free_addr());
    let ofe = KillOnDrop(support::start_ofe_with_webhooks(
        &manifests(dir.path(), &yaml),
        &dir.path().join("data"),
        listen,
        hooks,
    ));
    wait_ready(listen).await;
    (ofe, format!("http://{hooks}/telemetry"), dir)
}

/// The CloudEvents Go SDK receiving on a free port (`ce-sdk receive` or `receive-batch`), each
/// event it decodes recorded in a file of `work`: the process, its URL and the file.
async fn sdk_receiver(work: &Path, command: &str) -> (KillOnDrop, String, PathBuf) {
    let record = work.join("received.jsonl");
    let port = ofe_testkit::free_port();
    let mut peer_command = Command::new(peer("ce-sdk"));
    peer_command.arg(command).arg(port.to_string()).arg(&record);
    let receiver = serve(peer_command, port).await;
    (receiver, format!("http://127.0.0.1:{port}/"), record)
}

/// Starts a Go peer that serves on `port`, and waits until it listens.
async fn serve(mut command: Command, port: u16) -> KillOnDrop {
    let child = command.stdout(Stdio::null()).stderr(Stdio::null()).spawn().expect("a Go peer");
    let child = KillOnDrop(child);
    ofe_testkit::wait_port(port, "the Go peer").await;
    child
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(ofe_test_go_peers),
    ignore = "needs OFE_TEST_GO_PEERS (scripts/test.sh starts the services)"
)]
async fn an_openfunction_function_on_functions_framework_go_receives_what_was_sent() {
    let work = tempfile::tempdir().expect("tempdir");
    let record = work.path().join("function.jsonl");
    let port = ofe_testkit::free_port();
    // What OpenFunction sets in a sync function's pod (the Knative runtime): the function's
    // context, and the pod's name and namespace, which the framework requires.
    let context = json!({
        "name": "record", "version": "v1", "port": port.to_string(),
        "runtime": "Knative", "inputs": {}, "outputs": {},
    });
    let mut command = Command::new(peer("of-function"));
    command
        .env("FUNC_CONTEXT", context.to_string())
        .env("POD_NAME", "record-0")
        .env("POD_NAMESPACE", "default")
        .env("OFE_RECORD", &record);
    let _function = serve(command, port).await;
    let ns = support::unique_namespace();
    let (mut ofe, webhook, _dir) =
        ofe_with_webhook(Some(&format!("http://127.0.0.1:{port}/")), &ns, "").await;
    let sent = events("binary", 3);
    run(
        &peer("ce-sdk"),
        &[
            "send",
            &webhook,
            "binary",
            &events_file(work.path(), "sent", &sent).display().to_string(),
        ],
    );
    let got = recorded(&record, sent.len()).await;
    let added = assert_round_trip(&sent, &got);
    println!("the function received {} events; ofe added {added:?}", got.len());
    assert!(terminate(&mut ofe.0).success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(ofe_test_go_peers),
    ignore = "needs OFE_TEST_GO_PEERS (scripts/test.sh starts the services)"
)]
async fn the_cloudevents_go_sdk_sends_in_every_mode_and_receives_every_attribute() {
    let work = tempfile::tempdir().expect("tempdir");
    let (_receiver, sink, record) = sdk_receiver(work.path(), "receive").await;
    let ns = support::unique_namespace();
    let (mut ofe, webhook, _dir) = ofe_with_webhook(Some(&sink), &ns, "").await;
    let mut sent = Vec::new();
    for mode in ["binary", "structured", "batch"] {
        let batch = events(mode, 3);
        let file = events_file(work.path(), mode, &batch);
        run(&peer("ce-sdk"), &["send", &webhook, mode, &file.display().to_string()]);
        sent.extend(batch);
    }
    let got = recorded(&record, sent.len()).await;
    let added = assert_round_trip(&sent, &got);
    println!("the SDK received {} events sent in three modes; ofe added {added:?}", got.len());
    assert!(terminate(&mut ofe.0).success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(all(ofe_test_go_peers, ofe_test_kafka)),
    ignore = "needs OFE_TEST_GO_PEERS, OFE_TEST_KAFKA (scripts/test.sh starts the services)"
)]
async fn the_sdks_kafka_binding_reads_ofes_bus_records_and_writes_what_the_kafka_source_takes() {
    let brokers = support::broker_var("OFE_TEST_KAFKA");
    let work = tempfile::tempdir().expect("tempdir");
    let sdk = peer("ce-sdk");

    // ofe's Kafka bus: each record is a CloudEvent in the Kafka binding's binary mode.
    let ns = support::unique_namespace();
    let (mut ofe, webhook, _dir) =
        ofe_with_webhook(None, &ns, &support::kafka_bus(&ns, &brokers)).await;
    let sent = events("kafka-bus", 3);
    run(
        &sdk,
        &[
            "send",
            &webhook,
            "binary",
            &events_file(work.path(), "bus", &sent).display().to_string(),
        ],
    );
    let read = run(&sdk, &["kafka-read", &brokers, &format!("ofe-{ns}.events"), "3"]);
    let got: Vec<Value> = read.lines().map(|l| serde_json::from_str(l).expect("JSON")).collect();
    let added = assert_round_trip(&sent, &got);
    println!("the SDK decoded {} bus records; ofe added {added:?}", got.len());
    assert!(terminate(&mut ofe.0).success());

    // The SDK writes records; ofe's Kafka source takes them, and a Trigger delivers them.
    let record = work.path().join("from-kafka.jsonl");
    let port = ofe_testkit::free_port();
    let mut command = Command::new(&sdk);
    command.arg("receive").arg(port.to_string()).arg(&record);
    let _receiver = serve(command, port).await;
    let ns = support::unique_namespace();
    let topic = format!("sdk-{ns}");
    let sent = events("kafka-source", 3);
    run(
        &sdk,
        &[
            "kafka-write",
            &brokers,
            &topic,
            &events_file(work.path(), "source", &sent).display().to_string(),
        ],
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let yaml =
        support::kafka_source_to_sink(&ns, &brokers, &topic, &format!("http://127.0.0.1:{port}/"));
    let listen = free_addr();
    let mut ofe = KillOnDrop(support::start_ofe(
        &manifests(dir.path(), &yaml),
        &dir.path().join("data"),
        listen,
    ));
    wait_ready(listen).await;
    let got = recorded(&record, sent.len()).await;
    let added = assert_round_trip(&sent, &got);
    println!("the Kafka source delivered {} SDK records; ofe added {added:?}", got.len());
    assert!(terminate(&mut ofe.0).success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(ofe_test_go_peers),
    ignore = "needs OFE_TEST_GO_PEERS (scripts/test.sh starts the services)"
)]
async fn the_cloudevents_go_sdk_receives_a_transformed_event_in_structured_mode() {
    let work = tempfile::tempdir().expect("tempdir");
    let (_receiver, sink, record) = sdk_receiver(work.path(), "receive").await;
    let ns = support::unique_namespace();
    // The sink takes the whole event as one `application/cloudevents+json` document, and the
    // subscriber reshapes it first.
    let more = "\n    transform:\n      \
        data: '{\"vehicle\": vehicleid, \"kmh\": data.speed}'\n      \
        attributes: { type: \"'com.example.overspeed'\", region: \"\" }";
    let (mut ofe, webhook, _dir) =
        ofe_with_subscriber(Some(&sink), ", mode: structured", more, &ns, "").await;
    let sent = events("structured-out", 3);
    let file = events_file(work.path(), "sent", &sent);
    run(&peer("ce-sdk"), &["send", &webhook, "binary", &file.display().to_string()]);
    let got = recorded(&record, sent.len()).await;
    for (i, event) in sent.iter().enumerate() {
        let id = &event["id"];
        let arrived = got.iter().find(|g| g["id"] == *id).expect("arrived");
        // As the SDK decodes it: reshaped, and every attribute not named kept.
        assert_eq!(arrived["type"], "com.example.overspeed", "{arrived}");
        assert_eq!(arrived["data"], json!({"vehicle": "42", "kmh": 131 + i}), "{arrived}");
        assert_eq!(arrived["datacontenttype"], "application/json", "{arrived}");
        assert!(arrived.get("region").is_none(), "the emptied extension is gone: {arrived}");
        for key in ["source", "subject", "time", "dataschema", "vehicleid", "specversion"] {
            assert_eq!(arrived[key], event[key], "{key} of {id} changed: {arrived}");
        }
    }
    assert!(terminate(&mut ofe.0).success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(ofe_test_go_peers),
    ignore = "needs OFE_TEST_GO_PEERS (scripts/test.sh starts the services)"
)]
async fn the_cloudevents_go_sdk_decodes_ofes_batches() {
    let work = tempfile::tempdir().expect("tempdir");
    let (_receiver, sink, record) = sdk_receiver(work.path(), "receive-batch").await;
    let ns = support::unique_namespace();
    let more = "\n    delivery: { batch: { maxSize: 5, maxWait: 500ms } }";
    let (mut ofe, webhook, _dir) = ofe_with_subscriber(Some(&sink), "", more, &ns, "").await;
    let sent = events("batch-out", 5);
    let file = events_file(work.path(), "sent", &sent);
    // One request: the five events reach ofe together, and leave in batches.
    run(&peer("ce-sdk"), &["send", &webhook, "batch", &file.display().to_string()]);
    let lines = recorded(&record, sent.len()).await;
    let got: Vec<Value> = lines.iter().map(|l| l["event"].clone()).collect();
    let added = assert_round_trip(&sent, &got);
    assert!(
        lines.iter().any(|l| l["batchsize"].as_u64().unwrap_or(0) > 1),
        "the SDK read a batch of several events: {lines:?}"
    );
    println!("the SDK decoded {} events from ofe's batches; ofe added {added:?}", got.len());
    assert!(terminate(&mut ofe.0).success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(all(ofe_test_go_peers, ofe_test_kafka)),
    ignore = "needs OFE_TEST_GO_PEERS and OFE_TEST_KAFKA (scripts/test.sh starts the services)"
)]
async fn the_sdks_kafka_binding_reads_what_a_kafka_sink_produces() {
    let brokers = support::broker_var("OFE_TEST_KAFKA");
    let work = tempfile::tempdir().expect("tempdir");
    let ns = support::unique_namespace();
    let topic = format!("sdk-sink-{ns}");
    let sink = format!("{{ kafka: {{ brokers: \"{brokers}\", topic: {topic} }} }}");
    let (mut ofe, webhook, _dir) = ofe_with_sink(Some(&sink), "", &ns, "").await;
    let sent = events("kafka-sink", 3);
    let file = events_file(work.path(), "sent", &sent);
    run(&peer("ce-sdk"), &["send", &webhook, "binary", &file.display().to_string()]);
    let read = run(&peer("ce-sdk"), &["kafka-read", &brokers, &topic, &sent.len().to_string()]);
    let got: Vec<Value> = read.lines().filter_map(|l| serde_json::from_str(l).ok()).collect();
    let added = assert_round_trip(&sent, &got);
    println!("the SDK's Kafka binding decoded {} sink records; ofe added {added:?}", got.len());
    assert!(terminate(&mut ofe.0).success());
}
