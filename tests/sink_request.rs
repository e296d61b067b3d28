//! Request mapping on a sink, against `ofe run` and a real HTTP server: the method, headers on
//! every request and headers computed from the event, a URI whose path and query hold CEL
//! expressions (each value percent-encoded, so it cannot add a segment or a parameter), and
//! structured mode; an event the mapping cannot compute goes to the dead letter with the
//! reason; `ofe validate` names the field and column of what cannot run.

mod support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use support::{Running, manifests, trigger};

/// What the function saw of one request.
#[derive(Clone, Debug)]
struct Request {
    method: Method,
    uri: String,
    headers: HeaderMap,
    body: Bytes,
}

type Seen = Arc<Mutex<Vec<Request>>>;

async fn record(
    State(seen): State<Seen>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> StatusCode {
    let uri = uri.path_and_query().map(ToString::to_string).unwrap_or_default();
    seen.lock().expect("lock").push(Request { method, uri, headers, body });
    StatusCode::OK
}

/// A webhook `fleet` and a Trigger `put` whose sink maps the request.
fn pipeline(ns: &str, base: &str) -> String {
    support::webhook_source(ns, "fleet", "telemetry")
        + &trigger(
            ns,
            "put",
            "    all: { eventSource: fleet, event: telemetry }",
            &format!(
                "  - condition: all\n    delivery: {{ retry: 0 }}\n    sink:\n      \
             uri: \"{base}/vehicles/{{data.vehicleId}}?speed={{data.speed}}&by={{source}}\"\n      \
             method: PUT\n      \
             headers: {{ X-Fleet: north, Authorization: \"Bearer static\" }}\n      \
             dynamicHeaders: {{ X-Vehicle: data.vehicleId, X-Fast: \"data.speed > 120.0\" }}\n      \
             mode: structured"
            ),
        )
}

/// Posts telemetry event `id` with JSON `data` to the fleet's webhook.
async fn post(webhooks: std::net::SocketAddr, ns: &str, id: &str, data: serde_json::Value) {
    let url = format!("http://{webhooks}/{ns}/fleet/telemetry");
    let headers = [("ce-id", id), ("ce-source", "/cars/a b"), ("ce-type", "com.example.telemetry")];
    support::post_event(&url, &headers, data.to_string()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sink_gets_the_request_it_asks_for() {
    let seen: Seen = Arc::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let base = format!("http://{}", listener.local_addr().expect("addr"));
    let app = Router::new().fallback(record).with_state(seen.clone());
    tokio::spawn(async move { axum::serve(listener, app).await });

    let ns = support::unique_namespace();
    let dir = tempfile::tempdir().expect("tempdir");
    let folder = manifests(dir.path(), &pipeline(&ns, &base));
    let run = Running::start(&folder, &dir.path().join("data")).await;
    // A vehicle id that would add a path segment and a query parameter if it were not encoded.
    post(run.webhooks, &ns, "e-1", serde_json::json!({"vehicleId": "v/7?x=1", "speed": 131.5}))
        .await;
    // No vehicle id: the URI cannot be built.
    post(run.webhooks, &ns, "e-2", serde_json::json!({"speed": 90})).await;
    for _ in 0..300 {
        if !seen.lock().expect("lock").is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let requests = seen.lock().expect("lock").clone();
    assert_eq!(requests.len(), 1, "only e-1 could be sent: {requests:?}");
    let request = &requests[0];
    assert_eq!(request.method, Method::PUT);
    assert_eq!(request.uri, "/vehicles/v%2F7%3Fx%3D1?speed=131.5&by=%2Fcars%2Fa%20b");
    let header = |name: &str| request.headers.get(name).and_then(|v| v.to_str().ok());
    assert_eq!(header("x-fleet"), Some("north"));
    assert_eq!(header("authorization"), Some("Bearer static"));
    assert_eq!(header("x-vehicle"), Some("v/7?x=1"));
    assert_eq!(header("x-fast"), Some("true"));
    assert_eq!(header("content-type"), Some("application/cloudevents+json"));
    assert_eq!(header("ce-id"), None, "structured mode: no ce- headers");
    let event: serde_json::Value = serde_json::from_slice(&request.body).expect("JSON");
    assert_eq!(event["id"], "e-1");
    assert_eq!(event["specversion"], "1.0");
    assert_eq!(event["data"]["vehicleId"], "v/7?x=1");

    let listed = support::tool(run.listen, &["deadletters", "list", "-n", &ns, "--trigger", "put"]);
    assert!(listed.contains("id=e-2"), "{listed}");
    assert!(listed.contains("sink.uri `{data.vehicleId}`: No such key: vehicleId"), "{listed}");
}

#[test]
fn validate_names_the_field_and_column() {
    let dir = tempfile::tempdir().expect("tempdir");
    let yaml = pipeline("fleet", "http://127.0.0.1:9")
        .replace("{data.vehicleId}?", "{data.vehicleId +}?")
        .replace("X-Fast: ", "Bad Header: ")
        .replace("method: PUT", "method: GET");
    let file = dir.path().join("bad.yaml");
    std::fs::write(&file, yaml).expect("write");
    let output = support::ofe().args(["validate", "-f"]).arg(&file).output().expect("validate");
    let text = String::from_utf8_lossy(&output.stdout).into_owned()
        + &String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{text}");
    assert!(
        text.contains("unknown variant `GET`, expected one of `POST`, `PUT`, `PATCH`"),
        "{text}"
    );
    let yaml = pipeline("fleet", "http://127.0.0.1:9")
        .replace("{data.vehicleId}?", "{data.vehicleId +}?")
        .replace("X-Fast: ", "Bad Header: ");
    std::fs::write(&file, yaml).expect("write");
    let output = support::ofe().args(["validate", "-f"]).arg(&file).output().expect("validate");
    let text = String::from_utf8_lossy(&output.stdout).into_owned()
        + &String::from_utf8_lossy(&output.stderr);
    // The caret stands under the whole URI, at the column where the expression goes wrong.
    let uri_error = text
        .lines()
        .skip_while(|l| !l.contains("spec.subscribers[0].sink.uri: does not compile"))
        .take(3)
        .collect::<Vec<_>>();
    assert_eq!(uri_error.len(), 3, "{text}");
    let column = uri_error[2].find('^').expect("a caret") - uri_error[1].find("http").expect("uri");
    assert!(uri_error[1].trim()[column..].starts_with("}?speed="), "{text}");
    assert_eq!(
        text.matches("dynamicHeaders.Bad Header").count(),
        1,
        "one diagnostic per problem: {text}"
    );
}
