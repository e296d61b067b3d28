//! ofe's own OpenTelemetry spans, as an OTLP collector receives them from the `ofe` binary:
//! one event's trace shows every hop (ingest, the bus publish, the filter, the delivery and
//! each HTTP attempt), continues the sender's trace, and is continued by the function. The
//! collector here is a test exporter: an OTLP/HTTP endpoint that decodes what it gets.

mod support;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::routing::post;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use prost::Message as _;
use support::{KillOnDrop, Receiver, free_addr, manifests, ofe, wait_ready};

/// One span as the collector received it.
#[derive(Clone, Debug)]
struct Span {
    service: String,
    name: String,
    trace: String,
    id: String,
    parent: String,
    kind: i32,
    attributes: HashMap<String, String>,
    error: Option<String>,
    events: Vec<String>,
}

/// OTLP span kinds.
const INTERNAL: i32 = 1;
const SERVER: i32 = 2;
const CLIENT: i32 = 3;
const PRODUCER: i32 = 4;
const CONSUMER: i32 = 5;

/// An OTLP/HTTP collector on a free loopback port, keeping every span it is sent.
#[derive(Clone, Default)]
struct Collector {
    spans: Arc<Mutex<Vec<Span>>>,
}

impl Collector {
    async fn start() -> (Self, String) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let collector = Self::default();
        let app = Router::new().route("/v1/traces", post(receive)).with_state(collector.clone());
        tokio::spawn(async move { axum::serve(listener, app).await });
        (collector, format!("http://{addr}"))
    }

    /// The spans of trace `trace`, once `count` of them have come (panics after 30 s).
    async fn trace(&self, trace: &str, count: usize) -> Vec<Span> {
        let start = Instant::now();
        loop {
            let spans: Vec<Span> = self
                .spans
                .lock()
                .expect("lock")
                .iter()
                .filter(|s| s.trace == trace)
                .cloned()
                .collect();
            if spans.len() >= count {
                return spans;
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "{} of {count} spans of trace {trace} came: {spans:#?}",
                spans.len()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

async fn receive(State(c): State<Collector>, body: Bytes) -> &'static str {
    let request = ExportTraceServiceRequest::decode(body).expect("OTLP protobuf");
    let text = |v: &Option<opentelemetry_proto::tonic::common::v1::AnyValue>| match v
        .as_ref()
        .and_then(|v| v.value.as_ref())
    {
        Some(Value::StringValue(s)) => s.clone(),
        Some(Value::IntValue(i)) => i.to_string(),
        Some(Value::BoolValue(b)) => b.to_string(),
        other => format!("{other:?}"),
    };
    let mut spans = c.spans.lock().expect("lock");
    for resource in request.resource_spans {
        let service = resource
            .resource
            .iter()
            .flat_map(|r| &r.attributes)
            .find(|a| a.key == "service.name")
            .map(|a| text(&a.value))
            .unwrap_or_default();
        for span in resource.scope_spans.into_iter().flat_map(|s| s.spans) {
            spans.push(Span {
                service: service.clone(),
                name: span.name,
                trace: hex::encode(&span.trace_id),
                id: hex::encode(&span.span_id),
                parent: hex::encode(&span.parent_span_id),
                kind: span.kind,
                attributes: span
                    .attributes
                    .iter()
                    .map(|a| (a.key.clone(), text(&a.value)))
                    .collect(),
                error: span.status.filter(|s| s.code == 2).map(|s| s.message),
                events: span.events.into_iter().map(|e| e.name).collect(),
            });
        }
    }
    ""
}

/// A webhook `orders` feeding Trigger `route`: orders over 100 go to `BASE/fn`; Trigger
/// `audit` sends every order to `BASE/fail`, which always fails, twice retried and then
/// dead-lettered to `BASE/dlq`.
fn yaml(base: &str) -> String {
    format!(
        "apiVersion: events.openfunction.io/v1alpha1\nkind: EventSource\n\
         metadata: {{ name: shop, namespace: default }}\n\
         spec:\n  eventBus: default\n  webhook:\n    orders: {{}}\n\
         ---\napiVersion: events.openfunction.io/v1alpha1\nkind: Trigger\n\
         metadata: {{ name: route, namespace: default }}\n\
         spec:\n  eventBus: default\n  inputs:\n    big:\n      eventSource: shop\n      event: orders\n\
         \x20     filters:\n        - cel: \"data.total > 100\"\n\
         \x20 subscribers:\n  - condition: big\n    sink: {{ uri: \"{base}/fn\" }}\n\
         ---\napiVersion: events.openfunction.io/v1alpha1\nkind: Trigger\n\
         metadata: {{ name: audit, namespace: default }}\n\
         spec:\n  eventBus: default\n  inputs:\n    all: {{ eventSource: shop, event: orders }}\n\
         \x20 subscribers:\n  - condition: all\n    sink: {{ uri: \"{base}/fail\" }}\n\
         \x20   deadLetterSink: {{ uri: \"{base}/dlq\" }}\n\
         \x20   delivery: {{ retry: 2, backoffPolicy: linear, backoffDelay: PT0.05S }}\n"
    )
}

/// `ofe run` on `yaml`, with `env` set; its endpoint and webhook addresses.
async fn start(
    dir: &std::path::Path,
    yaml: &str,
    env: &[(&str, &str)],
) -> (KillOnDrop, SocketAddr, SocketAddr) {
    let (listen, webhooks) = (free_addr(), free_addr());
    let mut command = support::ofe_run(&manifests(dir, yaml), &dir.join("data"), listen);
    command.args(["--webhook-listen", &webhooks.to_string(), "--log-level", "error"]);
    for name in ["OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_TRACES_EXPORTER", "OTEL_SDK_DISABLED"] {
        command.env_remove(name);
    }
    command.envs(env.iter().copied());
    let process = KillOnDrop(command.spawn().expect("spawn ofe run"));
    wait_ready(listen).await;
    (process, listen, webhooks)
}

/// Posts an order of `total` to the webhook, with `traceparent` as the W3C header if given.
async fn order(webhooks: SocketAddr, id: &str, total: u32, traceparent: Option<&str>) {
    let mut request = support::http()
        .post(format!("http://{webhooks}/default/shop/orders"))
        .header("ce-id", id)
        .header("ce-type", "shop.order")
        .header("ce-source", "/test/shop")
        .header("ce-specversion", "1.0")
        .header("content-type", "application/json")
        .body(format!("{{\"total\":{total}}}"));
    if let Some(parent) = traceparent {
        request = request.header("traceparent", parent);
    }
    let answer = request.send().await.expect("webhook");
    assert_eq!(answer.status().as_u16(), 202, "the webhook takes the order");
}

fn one<'a>(spans: &'a [Span], what: &str, found: impl Fn(&Span) -> bool) -> &'a Span {
    let matching: Vec<&Span> = spans.iter().filter(|s| found(s)).collect();
    assert_eq!(matching.len(), 1, "one {what} span expected in {spans:#?}");
    matching[0]
}

fn children<'a>(spans: &'a [Span], parent: &Span, name: &str) -> Vec<&'a Span> {
    spans.iter().filter(|s| s.parent == parent.id && s.name == name).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_events_trace_shows_every_hop_in_the_collector() {
    let (collector, endpoint) = Collector::start().await;
    let (function, base) = Receiver::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let env =
        [("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()), ("OTEL_BSP_SCHEDULE_DELAY", "100")];
    let (_ofe, _, webhooks) = start(dir.path(), &yaml(&base), &env).await;

    // The sender traces: its span is the parent of ofe's first.
    let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let sender = "00f067aa0ba902b7";
    let sent = format!("00-{trace}-{sender}-01");
    order(webhooks, "order-1", 250, Some(&sent)).await;
    function
        .wait_for(Duration::from_secs(20), "the order at the function", |r| !r.on("/fn").is_empty())
        .await;
    function
        .wait_for(Duration::from_secs(20), "the dead letter", |r| !r.on("/dlq").is_empty())
        .await;

    // ingest, publish, filter; route: deliver + POST; audit: deliver + 3 POSTs + the dead
    // letter's POST.
    let spans = collector.trace(trace, 10).await;
    assert!(spans.iter().all(|s| s.service == "ofe"), "service.name is ofe: {spans:#?}");
    let ingest = one(&spans, "ingest", |s| s.name == "ingest shop/orders");
    assert_eq!(
        (ingest.parent.as_str(), ingest.kind),
        (sender, SERVER),
        "ingest continues the sender"
    );
    assert_eq!(ingest.attributes["cloudevents.event_id"], "order-1");
    assert_eq!(ingest.attributes["ofe.eventsource"], "shop");
    let publish = one(&spans, "publish", |s| s.parent == ingest.id);
    assert_eq!(
        (publish.name.as_str(), publish.kind),
        ("publish ofe.event.default.shop.orders", PRODUCER),
        "{publish:#?}"
    );
    let filter = one(&spans, "filter", |s| s.name == "filter");
    assert_eq!(
        (filter.parent.as_str(), filter.kind),
        (publish.id.as_str(), CONSUMER),
        "the filter consumes what was published"
    );
    assert_eq!(
        filter.events.iter().filter(|e| *e == "fired").count(),
        2,
        "both Triggers fired: {filter:#?}"
    );

    let route = one(&spans, "deliver to route", |s| s.name == "deliver route/0");
    assert_eq!((route.parent.as_str(), route.kind), (filter.id.as_str(), INTERNAL));
    assert_eq!(route.attributes["ofe.attempts"], "1");
    assert!(route.error.is_none(), "{route:#?}");
    let post = children(&spans, route, "POST");
    assert_eq!(post.len(), 1, "{spans:#?}");
    assert_eq!(post[0].kind, CLIENT);
    assert_eq!(post[0].attributes["http.response.status_code"], "200");
    assert_eq!(post[0].attributes["url.full"], format!("{base}/fn"));

    // The function continues the attempt's span; the event keeps its origin.
    let delivered = &function.on("/fn")[0];
    assert_eq!(delivered.header("traceparent"), format!("00-{trace}-{}-01", post[0].id));
    assert_eq!(delivered.header("ce-traceparent"), sent, "the tracing extension is the sender's");
    assert_eq!(delivered.header("ce-ofetraceparent"), "", "ofe's hop context stays inside ofe");

    // The failing subscriber: every attempt is a failed POST span, then the dead letter.
    let audit = one(&spans, "deliver to audit", |s| s.name == "deliver audit/0");
    assert_eq!(audit.parent, filter.id);
    assert!(audit.error.as_deref().is_some_and(|e| e.contains("HTTP 500")), "{audit:#?}");
    assert!(audit.events.contains(&"dead-lettered".to_string()), "{audit:#?}");
    let attempts = children(&spans, audit, "POST");
    assert_eq!(attempts.len(), 4, "3 attempts and the dead letter: {attempts:#?}");
    let failed: Vec<_> =
        attempts.iter().filter(|s| s.attributes["url.full"].ends_with("/fail")).collect();
    assert_eq!(failed.len(), 3);
    assert!(
        failed
            .iter()
            .all(|s| s.error.is_some() && s.attributes["http.response.status_code"] == "500")
    );
    let mut resends: Vec<&str> = failed
        .iter()
        .map(|s| s.attributes.get("http.request.resend_count").map_or("0", String::as_str))
        .collect();
    resends.sort_unstable();
    assert_eq!(resends, ["0", "1", "2"]);
    let dead = attempts
        .iter()
        .find(|s| s.attributes["url.full"].ends_with("/dlq"))
        .expect("dead letter POST");
    assert_eq!(dead.attributes["http.response.status_code"], "200");

    // An event without a trace: ofe starts one at ingest and records it in the event.
    order(webhooks, "order-2", 500, None).await;
    function
        .wait_for(Duration::from_secs(20), "the second order", |r| r.on("/fn").len() == 2)
        .await;
    let second = &function.on("/fn")[1];
    let origin = second.header("ce-traceparent");
    let parts: Vec<&str> = origin.split('-').collect();
    assert_eq!(parts.len(), 4, "ofe set the tracing extension: {origin:?}");
    let spans = collector.trace(parts[1], 5).await;
    let ingest = one(&spans, "ingest", |s| s.name == "ingest shop/orders");
    assert_eq!(ingest.parent, "", "the trace starts at ingest");
    assert_eq!(ingest.id, parts[2], "the extension names the ingest span");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tracing_is_off_by_default_and_a_setting_ofe_cannot_honour_is_refused() {
    let (function, base) = Receiver::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let (_ofe, _, webhooks) = start(dir.path(), &yaml(&base), &[]).await;
    let sent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    order(webhooks, "order-1", 250, Some(sent)).await;
    function.wait_for(Duration::from_secs(20), "the order", |r| !r.on("/fn").is_empty()).await;
    // No span of ofe's own: the function continues the sender's span itself.
    assert_eq!(function.on("/fn")[0].header("traceparent"), sent);

    let grpc = ofe()
        .args(["run", "-f"])
        .arg(manifests(&dir.path().join("grpc"), &yaml(&base)))
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4317")
        .env("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")
        .output()
        .expect("run ofe");
    let stderr = String::from_utf8_lossy(&grpc.stderr);
    assert!(!grpc.status.success());
    assert!(
        stderr.contains("OTEL_EXPORTER_OTLP_PROTOCOL=http/protobuf") && stderr.contains("4318"),
        "the error says what to set: {stderr}"
    );
}
