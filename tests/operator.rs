//! `ofe operator` against an API server: resources applied with the API become running
//! sources and Triggers, their `.status` says what the data plane sees (a broken bus turns
//! them not Ready with the reason, and fixing it recovers them), deleting them stops them,
//! `sink.ref`s follow the address of what they name, and replicas share the work while one of
//! them fires each cron tick.
//!
//! They run against a real kube-apiserver (`OFE_TEST_KUBECONFIG`, started by
//! `scripts/services.sh`), with `deploy/`'s CRDs and RBAC installed. The operator signs in as
//! the ServiceAccount that `deploy/02-rbac.yaml` binds, so the server's RBAC decides what it may
//! do, and the audit log shows what it did. Tests share the server: each watches only its own
//! namespace and elects its leader with a Lease of its own.

mod support;

use std::net::SocketAddr;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde_json::{Value, json};
use support::cluster::Cluster;
use support::{KillOnDrop, Receiver, free_addr, get, wait_ready};

const EVENT_SOURCES: &str = "events.openfunction.io/v1alpha1/eventsources";
const TRIGGERS: &str = "events.openfunction.io/v1alpha1/triggers";
const EVENTS: &str = "events.k8s.io/v1/events";

/// An operator replica: the process, its `/metrics` address and its webhook address.
struct Replica {
    process: KillOnDrop,
    listen: SocketAddr,
    webhooks: SocketAddr,
}

/// Starts a replica watching namespace `ns`, electing its leader with a Lease of that test's.
async fn start_operator(kube: &Cluster, dir: &Path, ns: &str, identity: &str) -> Replica {
    let (listen, webhooks) = (free_addr(), free_addr());
    let child = support::ofe()
        .arg("operator")
        .env("KUBECONFIG", kube.kubeconfig(dir).await)
        .args(["--watch-namespace", ns, "--lease-name", &format!("ofe-leader-{ns}")])
        .arg("--data-dir")
        .arg(dir.join(format!("data-{identity}")))
        .args(["--listen", &listen.to_string(), "--webhook-listen", &webhooks.to_string()])
        .args(["--identity", identity, "--lease-namespace", "ofe-system"])
        .args(["--lease-duration", "3s", "--lease-renew", "500ms"])
        .arg("--log-level")
        .arg(std::env::var("OFE_TEST_LOG").unwrap_or_else(|_| "error".into()))
        .stdout(Stdio::null())
        .spawn()
        .expect("spawn ofe operator");
    Replica { process: KillOnDrop(child), listen, webhooks }
}

/// The sum of a counter's series on `listen`'s `/metrics` whose labels contain `label`.
async fn metric(listen: SocketAddr, name: &str, label: &str) -> u64 {
    let metrics = get(&format!("http://{listen}/metrics")).await;
    metrics
        .lines()
        .filter(|l| l.starts_with(name) && l.contains(label))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

/// The conditions in an object's `.status`.
fn conditions(object: &Value) -> Vec<Value> {
    object["status"]["conditions"].as_array().cloned().unwrap_or_default()
}

/// Waits until the stored object's `Ready` has `status` (and `reason`, when given); returns
/// the object.
async fn wait_ready_in_status(
    kube: &Cluster,
    collection: &str,
    namespace: &str,
    name: &str,
    status: &str,
    reason: Option<&str>,
) -> Value {
    let start = Instant::now();
    loop {
        let object = kube.get(collection, namespace, name).await;
        let ready =
            object.as_ref().and_then(|o| conditions(o).into_iter().find(|c| c["type"] == "Ready"));
        if let (Some(object), Some(ready)) = (&object, &ready) {
            let conditions = conditions(object);
            assert!(conditions.len() <= 6, "one condition per type: {conditions:?}");
            assert_eq!(conditions.last(), Some(ready), "Ready is the last condition");
            if ready["status"] == status && reason.is_none_or(|r| ready["reason"] == r) {
                return object.clone();
            }
        }
        assert!(
            start.elapsed() < Duration::from_secs(40),
            "{name} never became Ready={status} {reason:?}; last: {ready:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The condition of `kind` in `object`'s status.
fn condition(object: &Value, kind: &str) -> Value {
    conditions(object)
        .into_iter()
        .find(|c| c["type"] == kind)
        .unwrap_or_else(|| panic!("no {kind} condition in {}", object["status"]))
}

/// Every call the operator made is allowed by `deploy/02-rbac.yaml` (the API server refused
/// none), and every permission granted there was used: the rules are exactly what the operator
/// needs.
async fn assert_rbac_is_exact(kube: &Cluster) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/02-rbac.yaml");
    let docs: Vec<Value> =
        serde_saphyr::from_multiple(&std::fs::read_to_string(path).expect("rbac")).expect("YAML");
    // (namespace the rule holds in, or None for a ClusterRole; group; resource; verb)
    let mut granted = std::collections::BTreeSet::new();
    for doc in &docs {
        let scope = match doc["kind"].as_str() {
            Some("ClusterRole") => None,
            Some("Role") => {
                Some(doc["metadata"]["namespace"].as_str().unwrap_or_default().to_string())
            }
            _ => continue,
        };
        for rule in doc["rules"].as_array().into_iter().flatten() {
            let strings = |field: &str| -> Vec<String> {
                rule[field]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|v| v.as_str().map(str::to_string))
                    .collect()
            };
            for group in strings("apiGroups") {
                for resource in strings("resources") {
                    for verb in strings("verbs") {
                        granted.insert((scope.clone(), group.clone(), resource.clone(), verb));
                    }
                }
            }
        }
    }
    let mut used = std::collections::BTreeSet::new();
    for call in kube.requests().await {
        let rule = granted.iter().find(|(scope, group, resource, verb)| {
            scope.as_ref().is_none_or(|ns| *ns == call.namespace)
                && *group == call.group
                && *resource == call.resource
                && *verb == call.verb
        });
        let rule = rule.unwrap_or_else(|| panic!("deploy/02-rbac.yaml does not allow {call:?}"));
        used.insert(rule.clone());
    }
    let unused: Vec<_> = granted.difference(&used).collect();
    assert!(unused.is_empty(), "granted but never used: {unused:?}");
}

fn flagship(ns: &str, mqtt: &str, base: &str) -> String {
    let yaml = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/vehicle-telemetry/manifests.yaml"),
    )
    .expect("the flagship example's manifests");
    yaml.replace("namespace: telemetry", &format!("namespace: {ns}"))
        .replace("tcp://127.0.0.1:1884", mqtt)
        .replace("fleet/+/telemetry", &format!("{ns}/+/telemetry"))
        .replace("http://127.0.0.1:8091/", &format!("{base}/alert"))
        .replace("http://127.0.0.1:8092/", &format!("{base}/metrics"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(all(ofe_test_mqtt, ofe_test_nats, ofe_test_kubeconfig)),
    ignore = "needs OFE_TEST_MQTT, OFE_TEST_NATS, OFE_TEST_KUBECONFIG (scripts/test.sh starts the services)"
)]
async fn the_flagship_example_runs_from_the_api_server_and_its_status_tells_the_truth() {
    let nats = support::broker_var("OFE_TEST_NATS");
    let mqtt = support::broker_var("OFE_TEST_MQTT");
    let mqtt = mqtt.replace("mqtt://", "tcp://");
    let ns = support::unique_namespace();
    let (receiver, base) = Receiver::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let kube = Cluster::connect().await;
    let bus = support::jetstream_bus(&ns, &nats);
    kube.apply_yaml(&(flagship(&ns, &mqtt, &base) + &bus)).await;
    let operator = start_operator(&kube, dir.path(), &ns, "replica-a").await;
    wait_ready(operator.listen).await;

    // Applied: every resource becomes Ready, with a condition per part.
    let fleet = wait_ready_in_status(&kube, EVENT_SOURCES, &ns, "fleet", "True", None).await;
    for kind in ["Valid", "BusConnected", "SourceConnected"] {
        assert_eq!(condition(&fleet, kind)["status"], "True", "{kind} of fleet");
    }
    let ready = condition(&fleet, "Ready");
    assert_eq!(ready["observedGeneration"], fleet["metadata"]["generation"]);
    assert!(ready["lastTransitionTime"].is_string());
    for name in ["fleet-router", "metrics-feed"] {
        let t = wait_ready_in_status(&kube, TRIGGERS, &ns, name, "True", None).await;
        for kind in ["Valid", "BusConnected", "SinkResolved", "Subscribed"] {
            assert_eq!(condition(&t, kind)["status"], "True", "{kind} of {name}");
        }
    }

    // The data plane runs them: telemetry over MQTT reaches both functions.
    let client = support::mqtt_publisher(&mqtt, &format!("pub-{ns}"));
    let publish = |car: &str, speed: u32| {
        let (client, topic) = (client.clone(), format!("{ns}/{car}/telemetry"));
        // The fleet's telemetry, as the example's simulator sends it.
        let payload = format!(r#"{{"vehicleId":"{car}","speed":{speed}}}"#);
        async move {
            client
                .publish(topic, rumqttc::QoS::AtLeastOnce, false, payload)
                .await
                .expect("publish");
        }
    };
    publish("car-1", 130).await;
    publish("car-2", 80).await;
    receiver
        .wait_for(Duration::from_secs(20), "an overspeed alert and both metrics", |r| {
            !r.on("/alert").is_empty() && r.on("/metrics").len() >= 2
        })
        .await;
    // The alert function gets what the example's transform shapes.
    let alert: Value = serde_json::from_slice(&receiver.on("/alert")[0].body).expect("JSON");
    assert_eq!(alert["vehicle"], "car-1", "{alert}");
    assert_eq!(alert["kmh"], 130, "{alert}");

    // The web console on the operator shows the mesh it runs from the API server, live, with
    // the Ready the leader writes into status, and says this replica leads.
    let graph: Value =
        serde_json::from_str(&get(&format!("http://{}/console/graph", operator.listen)).await)
            .expect("the graph");
    let ids: Vec<&str> =
        graph["nodes"].as_array().expect("nodes").iter().filter_map(|n| n["id"].as_str()).collect();
    for id in [
        format!("event:{ns}/fleet/telemetry"),
        format!("sub:{ns}/fleet-router/0"),
        format!("sub:{ns}/metrics-feed/0"),
        format!("topic:{ns}/vehicle-telemetry"),
    ] {
        assert!(ids.contains(&id.as_str()), "{id} in {ids:?}");
    }
    // A frame a second: the first may be from before the operator's first apply.
    let frame = support::console_frame(operator.listen, |f| {
        !f["ready"].as_array().is_none_or(Vec::is_empty)
    })
    .await;
    assert_eq!(frame["role"]["mode"], "leader", "{frame}");
    assert_eq!(frame["role"]["identity"], "replica-a", "{frame}");
    assert!(frame["nodes"][format!("sub:{ns}/fleet-router/0")]["rate"].is_number(), "{frame}");
    let ready = frame["ready"].as_array().expect("ready");
    assert!(
        ready.iter().any(|r| r["name"] == "fleet-router"
            && r["namespace"] == json!(ns)
            && r["status"] == "True"),
        "{frame}"
    );
    let page = support::http()
        .get(format!("http://{}/console", operator.listen))
        .send()
        .await
        .expect("the console");
    assert_eq!(page.status().as_u16(), 200);

    // A broken bus URL: every resource on the bus turns not Ready, saying why.
    kube.apply_yaml(&support::jetstream_bus(&ns, "nats://127.0.0.1:9")).await;
    let broken =
        wait_ready_in_status(&kube, EVENT_SOURCES, &ns, "fleet", "False", Some("BusUnreachable"))
            .await;
    let message = condition(&broken, "Ready")["message"].as_str().unwrap_or_default().to_string();
    assert!(message.contains("127.0.0.1:9"), "the reason names the bus: {message}");
    assert_eq!(condition(&broken, "Ready")["observedGeneration"], broken["metadata"]["generation"]);
    for name in ["fleet-router", "metrics-feed"] {
        wait_ready_in_status(&kube, TRIGGERS, &ns, name, "False", Some("BusUnreachable")).await;
    }
    let warnings: Vec<Value> = kube
        .list(EVENTS)
        .await
        .into_iter()
        .filter(|e| e["regarding"]["name"] == "fleet" && e["type"] == "Warning")
        .collect();
    assert!(
        warnings.iter().any(|e| e["reason"] == "BusUnreachable"),
        "an Event tells of the transition: {warnings:?}"
    );

    // Fixed: they recover, and events flow again.
    kube.apply_yaml(&bus).await;
    wait_ready_in_status(&kube, EVENT_SOURCES, &ns, "fleet", "True", None).await;
    for name in ["fleet-router", "metrics-feed"] {
        wait_ready_in_status(&kube, TRIGGERS, &ns, name, "True", None).await;
    }
    let alerts = receiver.on("/alert").len();
    publish("car-3", 150).await;
    receiver
        .wait_for(Duration::from_secs(20), "an alert after recovery", |r| {
            r.on("/alert").len() > alerts
        })
        .await;

    // Deleted: the sources and Triggers stop, and leave the process's status.
    kube.delete(EVENT_SOURCES, &ns, "fleet").await;
    kube.delete(TRIGGERS, &ns, "fleet-router").await;
    kube.delete(TRIGGERS, &ns, "metrics-feed").await;
    let start = Instant::now();
    loop {
        let status: Value =
            serde_json::from_str(&get(&format!("http://{}/status", operator.listen)).await)
                .unwrap_or(Value::Null);
        let listed = status["resources"]
            .as_array()
            .is_some_and(|rs| rs.iter().any(|r| r["namespace"] == json!(ns)));
        if !listed {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(20), "deleted resources still run: {status}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (alerts, metrics) = (receiver.on("/alert").len(), receiver.on("/metrics").len());
    publish("car-4", 170).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        (receiver.on("/alert").len(), receiver.on("/metrics").len()),
        (alerts, metrics),
        "nothing is delivered once the resources are deleted"
    );
    let mut process = operator.process;
    assert!(support::terminate(&mut process.0).success(), "the operator stops cleanly");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(ofe_test_kubeconfig),
    ignore = "needs OFE_TEST_KUBECONFIG (scripts/test.sh starts the services)"
)]
async fn a_sink_ref_takes_the_address_of_what_it_names_and_follows_it() {
    let ns = support::unique_namespace();
    let (receiver, base) = Receiver::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let kube = Cluster::connect().await;
    kube.install("knative-service-crd.yaml");
    kube.install("openfunction-function-crd.yaml");
    let service = |path: &str| {
        json!({
            "apiVersion": "serving.knative.dev/v1", "kind": "Service",
            "metadata": {"name": "hello", "namespace": ns},
            "status": {"url": format!("{base}/{path}")},
        })
    };
    kube.apply(service("knative-v1")).await;
    kube.apply(json!({
        "apiVersion": "core.openfunction.io/v1beta2", "kind": "Function",
        "metadata": {"name": "fn", "namespace": ns},
        "status": {"addresses": [
            {"type": "External", "value": "http://example.invalid/"},
            {"type": "Internal", "value": format!("{base}/function")},
        ]},
    }))
    .await;
    let refs = "  - condition: tick\n    sink:\n      ref: { apiVersion: serving.knative.dev/v1, kind: Service, name: hello }\n\
                \x20 - condition: tick\n    sink:\n      ref: { apiVersion: core.openfunction.io/v1beta2, kind: Function, name: fn }";
    let missing = "  - condition: tick\n    sink:\n      ref: { apiVersion: serving.knative.dev/v1, kind: Service, name: missing }";
    let tick = "    tick: { eventSource: clock, event: tick }";
    kube.apply_yaml(
        &(support::clock(&ns, None)
            + &support::trigger(&ns, "route", tick, refs)
            + &support::trigger(&ns, "orphan", tick, missing)),
    )
    .await;
    let operator = start_operator(&kube, dir.path(), &ns, "replica-a").await;
    wait_ready(operator.listen).await;

    let route = wait_ready_in_status(&kube, TRIGGERS, &ns, "route", "True", None).await;
    assert_eq!(condition(&route, "SinkResolved")["status"], "True");
    receiver
        .wait_for(Duration::from_secs(20), "ticks at the Service and the Function", |r| {
            !r.on("/knative-v1").is_empty() && !r.on("/function").is_empty()
        })
        .await;
    let orphan =
        wait_ready_in_status(&kube, TRIGGERS, &ns, "orphan", "False", Some("SinkNotFound")).await;
    let message = condition(&orphan, "Ready")["message"].as_str().unwrap_or_default().to_string();
    assert!(
        message.contains("spec.subscribers[0].sink.ref") && message.contains("missing"),
        "{message}"
    );

    // The Service gets a new address: deliveries follow it.
    kube.apply(service("knative-v2")).await;
    receiver
        .wait_for(Duration::from_secs(20), "ticks at the Service's new address", |r| {
            !r.on("/knative-v2").is_empty()
        })
        .await;
    // The missing Service appears: the orphan becomes ready.
    kube.apply(json!({
        "apiVersion": "serving.knative.dev/v1", "kind": "Service",
        "metadata": {"name": "missing", "namespace": ns},
        "status": {"url": format!("{base}/found")},
    }))
    .await;
    wait_ready_in_status(&kube, TRIGGERS, &ns, "orphan", "True", None).await;
    receiver
        .wait_for(Duration::from_secs(20), "ticks at the found Service", |r| {
            !r.on("/found").is_empty()
        })
        .await;

    // A webhook's HMAC secret read from a Secret: signed requests pass, others do not.
    kube.apply(json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": "hook", "namespace": ns},
        "data": {"key": base64::engine::general_purpose::STANDARD.encode("s3cret")},
    }))
    .await;
    kube.apply_yaml(&format!(
        "apiVersion: events.openfunction.io/v1alpha1\nkind: EventSource\n\
         metadata: {{ name: signed, namespace: {ns} }}\nspec:\n  eventBus: default\n  webhook:\n    \
         hook:\n      hmac: {{ secretKeyRef: {{ secret: {{ name: hook, key: key }} }} }}\n"
    ))
    .await;
    let signed = wait_ready_in_status(&kube, EVENT_SOURCES, &ns, "signed", "True", None).await;
    assert_eq!(condition(&signed, "SecretsResolved")["status"], "True");
    let body = br#"{"order":1}"#;
    let mut mac = <hmac::Hmac<sha2::Sha256> as hmac::Mac>::new_from_slice(b"s3cret").expect("key");
    hmac::Mac::update(&mut mac, body);
    let signature = format!("sha256={}", hex::encode(hmac::Mac::finalize(mac).into_bytes()));
    let url = format!("http://{}/{ns}/signed/hook", operator.webhooks);
    let post = |signature: &'static str| {
        let (url, signature) = (url.clone(), signature);
        async move {
            let request = support::http().post(&url).header("content-type", "application/json");
            let request = if signature.is_empty() {
                request
            } else {
                request.header("X-Hub-Signature-256", signature)
            };
            request.body(&body[..]).send().await.expect("webhook").status().as_u16()
        }
    };
    let signature: &'static str = Box::leak(signature.into_boxed_str());
    assert_eq!(post(signature).await, 202, "signed with the Secret's value");
    assert_eq!(post("").await, 401, "unsigned");
    // A Secret that does not exist: the EventSource is not run, and says which.
    kube.apply_yaml(&format!(
        "apiVersion: events.openfunction.io/v1alpha1\nkind: EventSource\n\
         metadata: {{ name: unsigned, namespace: {ns} }}\nspec:\n  eventBus: default\n  webhook:\n    \
         hook:\n      hmac: {{ secretKeyRef: {{ secret: {{ name: absent, key: key }} }} }}\n"
    ))
    .await;
    let unsigned = wait_ready_in_status(
        &kube,
        EVENT_SOURCES,
        &ns,
        "unsigned",
        "False",
        Some("SecretUnresolved"),
    )
    .await;
    let message = condition(&unsigned, "Ready")["message"].as_str().unwrap_or_default().to_string();
    assert!(message.contains(&format!("Secret {ns}/absent does not exist")), "{message}");

    // A webhook's schema read from a ConfigMap: what it refuses gets 400 with the JSON path.
    kube.apply(json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "order-schema", "namespace": ns},
        "data": {"schema.yaml": "type: object\nrequired: [order]\nproperties: { order: { type: integer } }\n"},
    }))
    .await;
    kube.apply_yaml(&format!(
        "apiVersion: events.openfunction.io/v1alpha1\nkind: EventSource\n\
         metadata: {{ name: checked, namespace: {ns} }}\nspec:\n  eventBus: default\n  webhook:\n    \
         hook: {{ schema: {{ configMapKeyRef: {{ name: order-schema, key: schema.yaml }} }} }}\n"
    ))
    .await;
    wait_ready_in_status(&kube, EVENT_SOURCES, &ns, "checked", "True", None).await;
    let url = format!("http://{}/{ns}/checked/hook", operator.webhooks);
    let send = |body: &'static str| {
        let url = url.clone();
        async move {
            let response = support::http()
                .post(&url)
                .header("content-type", "application/json")
                .body(body)
                .send()
                .await
                .expect("webhook");
            (response.status().as_u16(), response.text().await.unwrap_or_default())
        }
    };
    assert_eq!(send(r#"{"order":1}"#).await.0, 202, "satisfies the ConfigMap's schema");
    let (status, text) = send(r#"{"order":"one"}"#).await;
    assert_eq!(status, 400, "{text}");
    assert!(text.contains(r#"$.order: "one" is not of type "integer""#), "{text}");
    // A ConfigMap that does not exist: the EventSource is not run, and says which.
    kube.apply_yaml(&format!(
        "apiVersion: events.openfunction.io/v1alpha1\nkind: EventSource\n\
         metadata: {{ name: unchecked, namespace: {ns} }}\nspec:\n  eventBus: default\n  webhook:\n    \
         hook: {{ schema: {{ configMapKeyRef: {{ name: absent-schema, key: s }} }} }}\n"
    ))
    .await;
    let unchecked =
        wait_ready_in_status(&kube, EVENT_SOURCES, &ns, "unchecked", "False", Some("InvalidSpec"))
            .await;
    let message =
        condition(&unchecked, "Valid")["message"].as_str().unwrap_or_default().to_string();
    assert!(message.contains("the schema in ConfigMap `absent-schema`"), "{message}");

    // A Trigger whose condition does not compile is refused with the column, not run.
    kube.apply_yaml(&support::trigger(
        &ns,
        "broken",
        tick,
        "  - condition: tick &&\n    sink: { uri: \"http://127.0.0.1:9/\" }",
    ))
    .await;
    let broken =
        wait_ready_in_status(&kube, TRIGGERS, &ns, "broken", "False", Some("InvalidSpec")).await;
    let message = condition(&broken, "Valid")["message"].as_str().unwrap_or_default().to_string();
    assert!(message.contains("spec.subscribers[0].condition"), "{message}");
    assert!(message.contains("column"), "a CEL error points at its column: {message}");

    // The Lease is renewed (an update) within a second; then every call is accounted for.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_rbac_is_exact(&kube).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(all(ofe_test_nats, ofe_test_kubeconfig)),
    ignore = "needs OFE_TEST_NATS, OFE_TEST_KUBECONFIG (scripts/test.sh starts the services)"
)]
async fn two_replicas_share_a_trigger_and_fire_each_cron_tick_once() {
    let nats = support::broker_var("OFE_TEST_NATS");
    let ns = support::unique_namespace();
    let (receiver, base) = Receiver::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let kube = Cluster::connect().await;
    let yaml = support::jetstream_bus(&ns, &nats)
        + "---\n"
        + &support::clock(&ns, None)
        + &format!(
            "---\napiVersion: events.openfunction.io/v1alpha1\nkind: EventSource\n\
             metadata: {{ name: ingest, namespace: {ns} }}\n\
             spec:\n  eventBus: default\n  webhook:\n    hook: {{}}\n"
        )
        + &support::trigger(
            &ns,
            "route",
            "    tick: { eventSource: clock, event: tick }\n    hook: { eventSource: ingest, event: hook }",
            &format!(
                "  - condition: tick\n    sink: {{ uri: \"{base}/tick\" }}\n\
                 \x20 - condition: hook\n    sink: {{ uri: \"{base}/slow\" }}\n    delivery: {{ maxConcurrency: 2 }}"
            ),
        );
    kube.apply_yaml(&yaml).await;
    let a = start_operator(&kube, dir.path(), &ns, "replica-a").await;
    let b = start_operator(&kube, dir.path(), &ns, "replica-b").await;
    wait_ready(a.listen).await;
    wait_ready(b.listen).await;
    wait_ready_in_status(&kube, TRIGGERS, &ns, "route", "True", None).await;

    // Load: 20 webhook events into one replica; the slow sink takes 1.5 s each, and both
    // replicas' subscribers pull from the shared consumer.
    let client = support::http();
    let total = 20;
    for i in 0..total {
        let answer = client
            .post(format!("http://{}/{ns}/ingest/hook", a.webhooks))
            .header("content-type", "application/json")
            .body(format!(r#"{{"n":{i}}}"#))
            .send()
            .await
            .expect("webhook");
        assert_eq!(answer.status().as_u16(), 202);
    }
    receiver
        .wait_for(Duration::from_secs(60), "every webhook event at the sink", |r| {
            let ids: std::collections::BTreeSet<String> =
                r.on("/slow").iter().map(|x| x.header("ce-id")).collect();
            ids.len() >= total
        })
        .await;
    // The sink has seen every request; the counters follow as the responses come back.
    let start = Instant::now();
    let (by_a, by_b) = loop {
        let delivered = "ofe_trigger_events_delivered_total";
        let (by_a, by_b) = (
            metric(a.listen, delivered, "subscriber=\"1\"").await,
            metric(b.listen, delivered, "subscriber=\"1\"").await,
        );
        if by_a + by_b >= total as u64 {
            break (by_a, by_b);
        }
        assert!(start.elapsed() < Duration::from_secs(10), "deliveries counted: {by_a} + {by_b}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    println!("the Trigger's deliveries: replica a {by_a}, replica b {by_b}");
    assert!(by_a > 0 && by_b > 0, "both replicas deliver: a {by_a}, b {by_b}");

    // Cron: one replica leads and fires; each tick reaches the sink once.
    let published =
        |listen| metric(listen, "ofe_eventsource_events_published_total", "event=\"tick\"");
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (fired_a, fired_b) = (published(a.listen).await, published(b.listen).await);
    println!("cron ticks published: replica a {fired_a}, replica b {fired_b}");
    assert!(
        (fired_a == 0) != (fired_b == 0),
        "exactly one replica fires the schedule: a {fired_a}, b {fired_b}"
    );
    // The leader goes away: the other takes over, and the ticks go on, each once.
    let (mut leader, follower) = if fired_a > 0 { (a, b) } else { (b, a) };
    // Each replica's console says which one it is.
    let role = |f: &Value| f["role"]["mode"] != "standalone";
    assert_eq!(support::console_frame(leader.listen, role).await["role"]["mode"], "leader");
    assert_eq!(support::console_frame(follower.listen, role).await["role"]["mode"], "follower");
    let before = receiver.on("/tick").len();
    assert!(support::terminate(&mut leader.process.0).success());
    let start = Instant::now();
    while published(follower.listen).await == 0 {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "the other replica never took over cron"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    receiver
        .wait_for(Duration::from_secs(10), "ticks after the failover", |r| {
            r.on("/tick").len() >= before + 3
        })
        .await;
    let ticks = receiver.on("/tick");
    let ids: std::collections::BTreeSet<String> = ticks.iter().map(|t| t.header("ce-id")).collect();
    let seconds: std::collections::BTreeSet<String> =
        ticks.iter().map(|t| t.header("ce-time")).collect();
    println!(
        "{} tick deliveries, {} distinct ids, {} distinct tick times",
        ticks.len(),
        ids.len(),
        seconds.len()
    );
    assert_eq!(ids.len(), seconds.len(), "one id per tick");
    assert_eq!(ticks.len(), ids.len(), "each tick is delivered once");
}

/// `spec.paused` and `spec.replays` through the API server: a paused Trigger holds its events
/// until the spec lifts it; a replay the spec asks for re-delivers the past events once, with
/// its progress in `.status.replays`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(ofe_test_kubeconfig),
    ignore = "needs OFE_TEST_KUBECONFIG (scripts/test.sh starts the services)"
)]
async fn spec_paused_and_spec_replays_take_effect_from_the_api_server() {
    let ns = support::unique_namespace();
    let (receiver, base) = Receiver::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let kube = Cluster::connect().await;
    let yaml = |extra: &str| {
        support::orders_pipeline(&ns, &format!("{base}/fn"), "", "")
            .replace("  subscribers:\n", &format!("{extra}  subscribers:\n"))
    };
    kube.apply_yaml(&yaml("  paused: true\n")).await;
    let operator = start_operator(&kube, dir.path(), &ns, "replica-a").await;
    wait_ready(operator.listen).await;
    wait_ready_in_status(&kube, TRIGGERS, &ns, "orders", "True", None).await;
    for n in 0..5 {
        support::post_order(operator.webhooks, &ns, n).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(receiver.on("/fn").is_empty(), "nothing is delivered while spec.paused holds");
    kube.apply_yaml(&yaml("")).await;
    receiver.wait_for(Duration::from_secs(30), "the held five", |r| r.on("/fn").len() >= 5).await;

    kube.apply_yaml(&yaml("  replays:\n  - { name: again, fromStart: true }\n")).await;
    let start = Instant::now();
    let replays = loop {
        let object = kube.get(TRIGGERS, &ns, "orders").await.expect("the Trigger");
        let replays = object["status"]["replays"].clone();
        if replays[0]["state"] == "done" {
            break replays;
        }
        assert!(start.elapsed() < Duration::from_secs(40), "no done replay in {replays}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(replays[0]["name"], "again", "{replays}");
    assert_eq!(replays[0]["delivered"], 5, "{replays}");
    let replayed: Vec<String> = receiver
        .on("/fn")
        .iter()
        .filter(|r| r.header("ce-ofereplay") == "spec-again")
        .map(|r| r.header("ce-id"))
        .collect();
    assert_eq!(replayed, (0..5).map(|n| format!("order-{n}")).collect::<Vec<_>>());
    // Once per name: the next resync does not run it again.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let again =
        receiver.on("/fn").iter().filter(|r| r.header("ce-ofereplay") == "spec-again").count();
    assert_eq!(again, 5, "the replay ran once");
}
