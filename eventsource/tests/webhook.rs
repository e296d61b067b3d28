//! The webhook source over real HTTP, publishing to the embedded bus.

use std::sync::Arc;
use std::time::Duration;

use cloudevents::AttributesReader;
use hmac::{Hmac, Mac};
use ofe_core::{EventBus, StartPosition, Subject, SubscribeOptions, Subscription};
use ofe_crds::manifest::{Resource, parse_document};
use ofe_eventbus::embedded::{EmbeddedBus, EmbeddedConfig};
use ofe_eventsource::SourceHost;

struct Fixture {
    base: String,
    bus: EmbeddedBus,
    sub: Box<dyn Subscription>,
    http: reqwest::Client,
    _stop: tokio_util::sync::DropGuard,
    _dir: tempfile::TempDir,
}

/// EventSource `name` in namespace `ns` with the webhooks `spec` (indented YAML).
fn event_source(name: &str, spec: &str) -> ofe_crds::EventSource {
    let yaml = format!(
        "apiVersion: events.openfunction.io/v1alpha1\nkind: EventSource\nmetadata: {{ name: {name}, namespace: ns }}\n\
         spec:\n  eventBus: default\n  webhook:\n{spec}"
    );
    let doc = serde_saphyr::from_str::<serde_json::Value>(&yaml).expect("yaml");
    let Some(Resource::EventSource(es)) = parse_document(doc).expect("parses") else {
        panic!("eventsource")
    };
    es
}

async fn fixture(spec: &str) -> Fixture {
    let es = event_source("hooks", spec);
    let dir = tempfile::tempdir().expect("tempdir");
    let bus = EmbeddedBus::open(EmbeddedConfig::new(dir.path())).expect("bus");
    let shared: Arc<dyn EventBus> = Arc::new(bus.clone());
    let events: Vec<Subject> =
        es.spec.events().into_iter().map(|(_, e)| Subject::event("ns", "hooks", e)).collect();
    let mut options = SubscribeOptions::new("test", events);
    options.start = StartPosition::All;
    let sub = bus.subscribe(options).await.expect("subscribe");
    let host = SourceHost::default();
    let stop = tokio_util::sync::CancellationToken::new();
    // The tasks hold each webhook's claim on its path, until `stop`.
    ofe_eventsource::spawn(&es, shared, &host, &stop).expect("webhooks start");
    let router = host.routes.router();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let base = format!("http://{}", listener.local_addr().expect("addr"));
    tokio::spawn(async move { axum::serve(listener, router).await });
    Fixture {
        base,
        bus,
        sub,
        http: {
            ofe_core::install_crypto_provider();
            reqwest::Client::new()
        },
        _dir: dir,
        _stop: stop.drop_guard(),
    }
}

async fn next(sub: &mut Box<dyn Subscription>) -> ofe_core::Delivery {
    tokio::time::timeout(Duration::from_secs(5), sub.next())
        .await
        .expect("an event on the bus")
        .expect("delivery")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_mode_keeps_every_attribute() {
    let mut f = fixture("    push: {}\n").await;
    let response = f
        .http
        .post(format!("{}/ns/hooks/push", f.base))
        .header("ce-specversion", "1.0")
        .header("ce-id", "abc-1")
        .header("ce-source", "/vehicles/42")
        .header("ce-type", "com.example.telemetry")
        .header("ce-subject", "vehicle-42")
        .header("ce-time", "2026-11-22T01:02:03Z")
        .header("ce-traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
        .header("ce-partitionkey", "vehicle-42")
        .header("content-type", "application/json")
        .body(r#"{"speed":131}"#)
        .send()
        .await
        .expect("request");
    assert_eq!(response.status(), 202);
    let d = next(&mut f.sub).await;
    let e = &d.event;
    assert_eq!(e.id(), "abc-1");
    assert_eq!(e.source().to_string(), "/vehicles/42");
    assert_eq!(e.ty(), "com.example.telemetry");
    assert_eq!(e.subject(), Some("vehicle-42"));
    assert_eq!(e.time().map(|t| t.to_rfc3339()), Some("2026-11-22T01:02:03+00:00".into()));
    let ext = |n: &str| e.extension(n).map(ToString::to_string);
    assert_eq!(
        ext("traceparent").as_deref(),
        Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
    );
    assert_eq!(ext("partitionkey").as_deref(), Some("vehicle-42"));
    assert_eq!(ext("ofeeventsource").as_deref(), Some("hooks"));
    assert_eq!(ofe_core::event::data_bytes(e), br#"{"speed":131}"#);
    f.bus.close().await.expect("close");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn structured_and_batch_modes() {
    let mut f = fixture("    push: {}\n").await;
    let url = format!("{}/ns/hooks/push", f.base);
    let one = r#"{"specversion":"1.0","id":"s-1","source":"/s","type":"t","traceparent":"00-aa-bb-01","data":{"a":1}}"#;
    let r = f
        .http
        .post(&url)
        .header("content-type", "application/cloudevents+json")
        .body(one)
        .send()
        .await
        .expect("post");
    assert_eq!(r.status(), 202);
    let batch = r#"[{"specversion":"1.0","id":"b-1","source":"/s","type":"t"},{"specversion":"1.0","id":"b-2","source":"/s","type":"t"}]"#;
    let r = f
        .http
        .post(&url)
        .header("content-type", "application/cloudevents-batch+json")
        .body(batch)
        .send()
        .await
        .expect("post");
    assert_eq!(r.status(), 202);
    assert_eq!(r.text().await.expect("body").trim(), r#"{"accepted":2}"#);
    let ids: Vec<String> = [next(&mut f.sub).await, next(&mut f.sub).await, next(&mut f.sub).await]
        .iter()
        .map(|d| d.event.id().to_string())
        .collect();
    assert_eq!(ids, ["s-1", "b-1", "b-2"]);
    f.bus.close().await.expect("close");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_bodies_become_event_data_and_redeliveries_are_duplicates() {
    let mut f = fixture("    push: {}\n").await;
    let url = format!("{}/ns/hooks/push", f.base);
    for _ in 0..2 {
        let r = f
            .http
            .post(&url)
            .header("content-type", "application/json")
            .header("x-github-delivery", "delivery-7")
            .body(r#"{"ref":"main"}"#)
            .send()
            .await
            .expect("post");
        assert_eq!(r.status(), 202);
    }
    let d = next(&mut f.sub).await;
    assert_eq!(d.event.ty(), "io.openfunction.events.webhook");
    assert_eq!(
        d.event.source().to_string(),
        "/apis/events.openfunction.io/v1alpha1/namespaces/ns/eventsources/hooks"
    );
    assert_eq!(d.event.subject(), Some("push"));
    assert_eq!(d.event.datacontenttype(), Some("application/json"));
    assert_eq!(ofe_core::event::data_bytes(&d.event), br#"{"ref":"main"}"#);
    d.ack().await.expect("ack");
    // The sender's retry of delivery-7 carries the same id, so the bus keeps one.
    ofe_testkit::assert_quiet(&mut f.sub, Duration::from_millis(300)).await;
    f.bus.close().await.expect("close");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_say_why() {
    let f = fixture(
        "    open: { path: /open, maxPayloadSize: 10 }\n    token: { path: /token, bearerToken: s3cret }\n    signed: { path: /signed, hmac: { secret: k3y } }\n",
    )
    .await;
    let post = |path: &str| f.http.post(format!("{}{path}", f.base));
    let check = |r: reqwest::Response, status: u16, needle: &'static str| async move {
        assert_eq!(r.status(), status);
        let text = r.text().await.expect("body");
        assert!(text.contains(needle), "{status}: {text}");
    };
    check(post("/open").body("0123456789abc").send().await.expect("post"), 413, "at most 10").await;
    check(post("/nowhere").body("x").send().await.expect("post"), 404, "no webhook").await;
    check(f.http.get(format!("{}/open", f.base)).send().await.expect("get"), 405, "POST only")
        .await;
    check(post("/token").body("x").send().await.expect("post"), 401, "missing").await;
    check(
        post("/token").bearer_auth("wrong").body("x").send().await.expect("post"),
        401,
        "not accepted",
    )
    .await;
    assert_eq!(
        post("/token").bearer_auth("s3cret").body("x").send().await.expect("post").status(),
        202
    );
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(b"k3y").expect("key");
    mac.update(b"payload");
    let good = format!("sha256={}", hex::encode(mac.finalize().into_bytes()));
    check(
        post("/signed")
            .header("x-hub-signature-256", "sha256=00")
            .body("payload")
            .send()
            .await
            .expect("post"),
        401,
        "does not match",
    )
    .await;
    assert_eq!(
        post("/signed")
            .header("x-hub-signature-256", good)
            .body("payload")
            .send()
            .await
            .expect("post")
            .status(),
        202
    );
    let broken = post("/open")
        .header("ce-specversion", "1.0")
        .header("ce-id", "x")
        .body("{}")
        .send()
        .await
        .expect("post");
    check(broken, 400, "malformed binary-mode CloudEvent").await;
    check(
        post("/open")
            .header("content-type", "application/cloudevents+json")
            .body("{")
            .send()
            .await
            .expect("post"),
        400,
        "malformed structured CloudEvent",
    )
    .await;
    f.bus.close().await.expect("close");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bus_down_answers_503_with_retry_after() {
    let f = fixture("    push: {}\n").await;
    f.bus.close().await.expect("close");
    let r = f.http.post(format!("{}/ns/hooks/push", f.base)).body("x").send().await.expect("post");
    assert_eq!(r.status(), 503);
    assert_eq!(r.headers().get("retry-after").and_then(|v| v.to_str().ok()), Some("1"));
}

/// `rateLimit` refuses requests beyond the rate with 429 and `Retry-After` before doing
/// anything else for them (not even checking the token), and takes them again once the
/// bucket refills; what it took reaches the bus.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limit_answers_429_beyond_the_rate() {
    let mut f = fixture("    limited: { rateLimit: 5, bearerToken: s3cret }\n").await;
    let url = format!("{}/ns/hooks/limited", f.base);
    let post = |id: String| {
        f.http
            .post(&url)
            .bearer_auth("s3cret")
            .header("ce-specversion", "1.0")
            .header("ce-id", id)
            .header("ce-source", "/limited")
            .header("ce-type", "t")
            .body("{}")
            .send()
    };
    let mut statuses = Vec::new();
    for i in 0..8 {
        statuses.push(post(format!("a-{i}")).await.expect("answer"));
    }
    let accepted = statuses.iter().filter(|r| r.status() == 202).count();
    let limited: Vec<_> = statuses.iter().filter(|r| r.status() == 429).collect();
    assert_eq!(accepted + limited.len(), 8);
    assert!((5..=6).contains(&accepted), "a burst of the rate is taken: {accepted}");
    assert!(!limited.is_empty(), "requests beyond the rate are refused");
    assert_eq!(limited[0].headers()["retry-after"], "1");
    // A flood without the token is refused as cheaply: 429 before 401.
    let anonymous = f.http.post(&url).body("{}").send().await.expect("answer");
    assert_eq!(anonymous.status(), 429);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(post("b-0".into()).await.expect("answer").status(), 202, "the bucket refilled");
    for _ in 0..accepted + 1 {
        let d = next(&mut f.sub).await;
        assert!(d.event.id().starts_with("a-") || d.event.id() == "b-0");
        d.ack().await.expect("ack");
    }
    let _ = f.bus.close().await;
}

/// A sender tracing with W3C Trace Context headers (and no CloudEvents tracing extension)
/// has its trace context carried on the event, so functions continue its trace; an event
/// that has the extension keeps its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn w3c_trace_headers_become_the_tracing_extension() {
    let mut f = fixture("    traced: {}\n").await;
    let parent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    let response = f
        .http
        .post(format!("{}/ns/hooks/traced", f.base))
        .header("traceparent", parent)
        .header("tracestate", "rojo=00f067aa0ba902b7")
        .header("content-type", "application/json")
        .body(r#"{"speed":1}"#)
        .send()
        .await
        .expect("post");
    assert_eq!(response.status(), 202);
    let d = next(&mut f.sub).await;
    let ext = |name: &str| d.event.extension(name).map(ToString::to_string);
    assert_eq!(ext("traceparent").as_deref(), Some(parent));
    assert_eq!(ext("tracestate").as_deref(), Some("rojo=00f067aa0ba902b7"));
    d.ack().await.expect("ack");
    let own = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let response = f
        .http
        .post(format!("{}/ns/hooks/traced", f.base))
        .header("traceparent", parent)
        .header("ce-specversion", "1.0")
        .header("ce-id", "x")
        .header("ce-source", "/x")
        .header("ce-type", "t")
        .header("ce-traceparent", own)
        .body("{}")
        .send()
        .await
        .expect("post");
    assert_eq!(response.status(), 202);
    let d = next(&mut f.sub).await;
    assert_eq!(d.event.extension("traceparent").map(ToString::to_string).as_deref(), Some(own));
    let _ = f.bus.close().await;
}

/// One listener serves every EventSource's webhooks: a path is one EventSource's until that
/// one stops, a second claim is refused naming the first, and stopping gives the path back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_path_belongs_to_one_eventsource_until_it_stops() {
    let bus: Arc<dyn EventBus> =
        Arc::new(ofe_eventbus::embedded::EmbeddedBus::in_memory(Default::default()));
    let host = SourceHost::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let base = format!("http://{}", listener.local_addr().expect("addr"));
    tokio::spawn(axum::serve(listener, host.routes.router()).into_future());
    ofe_core::install_crypto_provider();
    let http = reqwest::Client::new();
    let post = || http.post(format!("{base}/shared")).body("x").send();

    let first = event_source("first", "    push: { path: /shared }\n");
    let stop_first = tokio_util::sync::CancellationToken::new();
    let tasks = ofe_eventsource::spawn(&first, bus.clone(), &host, &stop_first).expect("first");
    assert_eq!(host.routes.paths(), ["/shared"]);
    assert_eq!(post().await.expect("post").status(), 202);

    // The second EventSource, also asking for /shared, starts nothing and says who has it.
    let second =
        event_source("second", "    other: { path: /other }\n    push: { path: /shared }\n");
    let stop_second = tokio_util::sync::CancellationToken::new();
    let refused = ofe_eventsource::spawn(&second, bus.clone(), &host, &stop_second)
        .expect_err("the path is taken");
    let text = refused.to_string();
    assert!(
        text.starts_with("spec.webhook.push.path: `/shared` is already served for EventSource `ns/first` event `push`"),
        "{text}"
    );
    assert_eq!(host.routes.paths(), ["/shared"], "the refused EventSource holds no path");

    stop_first.cancel();
    for task in tasks {
        task.await.expect("stops");
    }
    assert!(host.routes.paths().is_empty());
    assert_eq!(post().await.expect("post").status(), 404);
    let _tasks = ofe_eventsource::spawn(&second, bus, &host, &stop_second).expect("now free");
    assert_eq!(host.routes.paths(), ["/other", "/shared"]);
    assert_eq!(post().await.expect("post").status(), 202);
}
