//! The sink client against real HTTP servers on loopback: what a sink receives, a redirect
//! followed with the event intact, a timeout, a reply, and a keep-alive connection reused.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::IntoResponse;
use cloudevents::{AttributesReader, EventBuilder, EventBuilderV10};
use ofe_core::EventBus;
use ofe_eventbus::embedded::{EmbeddedBus, EmbeddedConfig};
use ofe_trigger::delivery::{Deliverer, Destination};

type Log = Arc<Mutex<Vec<(String, HeaderMap, Bytes)>>>;

/// A sink that records every request (path, headers, body) and answers as `answer` says.
async fn sink(
    answer: impl Fn(&str) -> axum::response::Response + Clone + Send + Sync + 'static,
) -> (String, Log) {
    let log: Log = Arc::default();
    let app = axum::Router::new().fallback({
        let log = log.clone();
        move |uri: Uri, headers: HeaderMap, body: Bytes| {
            let (log, answer) = (log.clone(), answer.clone());
            async move {
                log.lock().expect("log").push((uri.path().to_string(), headers, body));
                answer(uri.path())
            }
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move { axum::serve(listener, app).await });
    (format!("http://{addr}"), log)
}

fn deliverer() -> (Deliverer, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("dir");
    let bus: Arc<dyn EventBus> =
        Arc::new(EmbeddedBus::open(EmbeddedConfig::new(dir.path())).expect("bus"));
    (Deliverer::new(bus).expect("client"), dir)
}

fn event() -> cloudevents::Event {
    let mut event = EventBuilderV10::new()
        .id("e-1")
        .source("/vehicles/7")
        .ty("telemetry.speed")
        .data("application/json", serde_json::json!({"speed": 131}))
        .build()
        .expect("event");
    event.set_extension("ofenamespace", "fleet");
    event
}

#[tokio::test]
async fn a_sink_gets_the_event_in_binary_mode_over_one_kept_alive_connection() {
    let (base, log) = sink(|_| StatusCode::ACCEPTED.into_response()).await;
    let (deliverer, _dir) = deliverer();
    let dest = Destination::http(&format!("{base}/fn")).expect("url");
    for _ in 0..3 {
        let reply = deliverer.send_once(&dest, &event(), Duration::from_secs(5)).await;
        assert!(matches!(reply, Ok(None)), "{reply:?}");
    }
    let log = log.lock().expect("log");
    assert_eq!(log.len(), 3);
    let (path, headers, body) = &log[0];
    assert_eq!(path, "/fn");
    assert_eq!(headers["ce-id"], "e-1");
    assert_eq!(headers["ce-type"], "telemetry.speed");
    assert_eq!(headers["ce-ofenamespace"], "fleet");
    assert_eq!(headers["content-type"], "application/json");
    assert!(headers["host"].to_str().expect("host").starts_with("127.0.0.1:"));
    assert_eq!(&body[..], br#"{"speed":131}"#);
}

#[tokio::test]
async fn a_307_redirect_is_followed_with_the_event_intact_and_a_302_is_a_failure() {
    let (base, log) = sink(|path| match path {
        "/old" => (StatusCode::TEMPORARY_REDIRECT, [("location", "/new")]).into_response(),
        "/moved" => (StatusCode::FOUND, [("location", "/new")]).into_response(),
        _ => StatusCode::OK.into_response(),
    })
    .await;
    let (deliverer, _dir) = deliverer();
    let dest = Destination::http(&format!("{base}/old")).expect("url");
    let reply = deliverer.send_once(&dest, &event(), Duration::from_secs(5)).await;
    assert!(matches!(reply, Ok(None)), "{reply:?}");
    {
        let log = log.lock().expect("log");
        let at_new: Vec<_> = log.iter().filter(|(p, _, _)| p == "/new").collect();
        assert_eq!(at_new.len(), 1, "the redirect's target got the event once");
        let (_, headers, body) = at_new[0];
        assert_eq!(headers["ce-id"], "e-1");
        assert_eq!(&body[..], br#"{"speed":131}"#);
    }

    // A 302 would be followed with a GET that carries no event: it is a failure instead,
    // which goes to the dead letter rather than counting as delivered.
    let dest = Destination::http(&format!("{base}/moved")).expect("url");
    let failure =
        deliverer.send_once(&dest, &event(), Duration::from_secs(5)).await.expect_err("302");
    assert_eq!(failure.code, Some(302));
    assert!(!failure.retryable);
}

#[tokio::test]
async fn a_sink_that_does_not_answer_in_time_is_a_retryable_failure() {
    let app = axum::Router::new().fallback(|| async {
        tokio::time::sleep(Duration::from_secs(30)).await;
        StatusCode::OK
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move { axum::serve(listener, app).await });
    let (deliverer, _dir) = deliverer();
    let dest = Destination::http(&format!("http://{addr}/slow")).expect("url");
    let failure = deliverer
        .send_once(&dest, &event(), Duration::from_millis(300))
        .await
        .expect_err("a timeout");
    assert!(failure.retryable);
    assert_eq!(failure.code, None);
    assert!(failure.reason.contains("no answer within 300ms"), "{}", failure.reason);
}

#[tokio::test]
async fn a_refused_connection_is_a_retryable_failure_with_its_cause() {
    let addr =
        std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr");
    let (deliverer, _dir) = deliverer();
    let dest = Destination::http(&format!("http://{addr}/gone")).expect("url");
    let failure =
        deliverer.send_once(&dest, &event(), Duration::from_secs(5)).await.expect_err("refused");
    assert!(failure.retryable);
    assert!(failure.reason.starts_with("request failed: "), "{}", failure.reason);
    assert!(failure.reason.to_lowercase().contains("refused"), "{}", failure.reason);
}

#[tokio::test]
async fn a_reply_and_a_failure_body_are_read() {
    let (base, _log) = sink(|path| {
        if path == "/reply" {
            (
                StatusCode::OK,
                [
                    ("ce-specversion", "1.0"),
                    ("ce-id", "r-1"),
                    ("ce-source", "/fn"),
                    ("ce-type", "telemetry.alert"),
                    ("content-type", "text/plain"),
                ],
                "slow down",
            )
                .into_response()
        } else {
            (StatusCode::SERVICE_UNAVAILABLE, [("retry-after", "7")], "overloaded").into_response()
        }
    })
    .await;
    let (deliverer, _dir) = deliverer();
    let reply = deliverer
        .send_once(
            &Destination::http(&format!("{base}/reply")).expect("url"),
            &event(),
            Duration::from_secs(5),
        )
        .await
        .expect("delivered")
        .expect("a reply");
    let reply = reply.as_ref().as_ref().expect("a valid CloudEvent");
    assert_eq!(reply.ty(), "telemetry.alert");
    let failure = deliverer
        .send_once(
            &Destination::http(&format!("{base}/busy")).expect("url"),
            &event(),
            Duration::from_secs(5),
        )
        .await
        .expect_err("503");
    assert_eq!(failure.code, Some(503));
    assert_eq!(failure.reason, "HTTP 503: overloaded");
    assert_eq!(failure.retry_after, Some(Duration::from_secs(7)));
}

#[tokio::test]
async fn credentials_in_the_url_are_sent_as_basic_authentication() {
    let (base, log) = sink(|_| StatusCode::OK.into_response()).await;
    let (deliverer, _dir) = deliverer();
    let url = base.replace("http://", "http://fn:s3cret@") + "/auth";
    let reply = deliverer
        .send_once(&Destination::http(&url).expect("url"), &event(), Duration::from_secs(5))
        .await;
    assert!(matches!(reply, Ok(None)), "{reply:?}");
    let log = log.lock().expect("log");
    let (path, headers, _) = &log[0];
    assert_eq!(path, "/auth");
    // base64("fn:s3cret")
    assert_eq!(headers["authorization"], "Basic Zm46czNjcmV0");
    assert!(!headers["host"].to_str().expect("host").contains('@'));
}
