//! Sink credentials that need more than a header, against `ofe run` and real servers:
//! - OAuth2 client credentials: a token endpoint served here issues short-lived tokens; ofe
//!   fetches one for many deliveries, a new one shortly before it expires, and another when
//!   the sink refuses the one it sent (401); an endpoint that takes only the form's
//!   credentials is served too; one that refuses the client dead-letters with the reason.
//! - A client certificate of one sink's own (`auth.tls`): a function that asks for a client
//!   certificate gets the sink's, and a sink without one is refused by the same function.

mod support;

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use support::{KillOnDrop, free_addr, manifests, wait_ready};

const CLIENT_ID: &str = "fleet-app";
const SECRET: &str = "oauth-secret-55a1";

/// A token endpoint and the function it guards.
#[derive(Clone, Default)]
struct Idp {
    /// Tokens issued, in order, with the endpoint that issued them.
    issued: Arc<Mutex<Vec<(String, String)>>>,
    /// Tokens the function refuses from now on.
    revoked: Arc<Mutex<HashSet<String>>>,
    /// (path, `Authorization`, `ce-id`) of every request the function took.
    delivered: Arc<Mutex<Vec<(String, String, String)>>>,
    /// Requests the function refused with 401.
    refused: Arc<Mutex<Vec<String>>>,
    /// Dead letters: (`ce-id`, `ofeerrorreason`).
    dead: Arc<Mutex<Vec<(String, String)>>>,
}

/// The fields of a form-encoded body.
fn form(body: &[u8]) -> Vec<(String, String)> {
    let url = format!("http://form/?{}", String::from_utf8_lossy(body));
    let url = reqwest::Url::parse(&url).expect("a form");
    url.query_pairs().map(|(k, v)| (k.into_owned(), v.into_owned())).collect()
}

impl Idp {
    /// `/token` takes basic authentication only and issues tokens for 2 s; `/token-form`
    /// takes the credentials in the form only (refusing basic), and its tokens last an hour,
    /// given as a string as some endpoints do.
    async fn token(&self, path: &str, headers: &HeaderMap, body: &[u8]) -> Response {
        use base64::Engine as _;
        let fields = form(body);
        let field = |name: &str| fields.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str());
        let basic = headers.get("authorization").and_then(|v| v.to_str().ok()).map(str::to_string);
        let good_basic = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("{CLIENT_ID}:{SECRET}"))
        );
        let accepted = match path {
            "/token" => basic.as_deref() == Some(good_basic.as_str()),
            _ => {
                basic.is_none()
                    && field("client_id") == Some(CLIENT_ID)
                    && field("client_secret") == Some(SECRET)
            }
        };
        if !accepted {
            return (StatusCode::UNAUTHORIZED, r#"{"error":"invalid_client"}"#).into_response();
        }
        assert_eq!(field("grant_type"), Some("client_credentials"), "{fields:?}");
        let mut issued = self.issued.lock().expect("lock");
        let token = format!("issued-token-{}-7c0d", issued.len() + 1);
        issued.push((path.to_string(), token.clone()));
        let body = if path == "/token" {
            assert_eq!(field("scope"), Some("events.write fleet.read"), "{fields:?}");
            assert_eq!(field("audience"), Some("fleet"), "{fields:?}");
            serde_json::json!({"access_token": token, "token_type": "Bearer", "expires_in": 2})
        } else {
            serde_json::json!({"access_token": token, "token_type": "bearer", "expires_in": "3600"})
        };
        ([("content-type", "application/json")], body.to_string()).into_response()
    }

    fn issued(&self) -> Vec<(String, String)> {
        self.issued.lock().expect("lock").clone()
    }

    fn delivered(&self, path: &str) -> Vec<(String, String)> {
        let all = self.delivered.lock().expect("lock");
        all.iter().filter(|(p, ..)| p == path).map(|(_, a, id)| (a.clone(), id.clone())).collect()
    }
}

async fn serve_idp(State(idp): State<Idp>, uri: Uri, headers: HeaderMap, body: Bytes) -> Response {
    let path = uri.path().to_string();
    let header = |name: &str| {
        headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or_default().to_string()
    };
    if path.starts_with("/token") {
        return idp.token(&path, &headers, &body).await;
    }
    if path == "/dlq" {
        idp.dead.lock().expect("lock").push((header("ce-id"), header("ce-ofeerrorreason")));
        return StatusCode::OK.into_response();
    }
    let authorization = header("authorization");
    let token = authorization.strip_prefix("Bearer ").unwrap_or_default().to_string();
    let known = idp.issued.lock().expect("lock").iter().any(|(_, t)| *t == token);
    if !known || idp.revoked.lock().expect("lock").contains(&token) {
        idp.refused.lock().expect("lock").push(token);
        return StatusCode::UNAUTHORIZED.into_response();
    }
    idp.delivered.lock().expect("lock").push((path, authorization, header("ce-id")));
    StatusCode::OK.into_response()
}

async fn wait(limit: Duration, what: &str, done: impl Fn() -> bool) {
    let start = std::time::Instant::now();
    while !done() {
        assert!(start.elapsed() < limit, "timed out after {limit:?} waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn oauth_pipeline(ns: &str, base: &str) -> String {
    let delivery = "delivery: { retry: 3, backoffPolicy: linear, backoffDelay: PT0.05S }";
    support::webhook_source(ns, "fleet", "telemetry")
        + "---\n"
        + &support::webhook_source(ns, "yard", "telemetry")
        + &support::trigger(
            ns,
            "guarded",
            "    fleet: { eventSource: fleet, event: telemetry }\n    \
             yard: { eventSource: yard, event: telemetry }",
            &format!(
                "  - condition: fleet\n    {delivery}\n    sink:\n      uri: \"{base}/fn\"\n      \
                 auth:\n        oauth2:\n          tokenUrl: \"{base}/token\"\n          \
                 clientId: {CLIENT_ID}\n          scopes: [events.write, fleet.read]\n          \
                 endpointParams: {{ audience: fleet }}\n          \
                 secretKeyRef: {{ clientSecret: {{ name: idp, key: secret }} }}\n\
                 \x20 - condition: yard\n    {delivery}\n    sink:\n      uri: \"{base}/fn-form\"\n      \
                 auth:\n        oauth2: {{ tokenUrl: \"{base}/token-form\", clientId: {CLIENT_ID}, \
                 clientSecret: {SECRET} }}\n\
                 \x20 - condition: yard\n    {delivery}\n    deadLetterSink: {{ uri: \"{base}/dlq\" }}\n    \
                 sink:\n      uri: \"{base}/fn-wrong\"\n      \
                 auth:\n        oauth2: {{ tokenUrl: \"{base}/token\", clientId: {CLIENT_ID}, \
                 clientSecret: not-the-secret }}"
            ),
        )
}

async fn post(webhooks: std::net::SocketAddr, ns: &str, source: &str, id: &str) {
    let url = format!("http://{webhooks}/{ns}/{source}/telemetry");
    let headers = [("ce-id", id), ("ce-source", "/cars"), ("ce-type", "com.example.telemetry")];
    support::post_event(&url, &headers, r#"{"speed":1}"#.into()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oauth2_tokens_are_fetched_once_refreshed_before_expiry_and_after_a_refusal() {
    let idp = Idp::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let base = format!("http://{}", listener.local_addr().expect("addr"));
    let app = Router::new().fallback(serve_idp).with_state(idp.clone());
    tokio::spawn(async move { axum::serve(listener, app).await });

    let ns = support::unique_namespace();
    let dir = tempfile::tempdir().expect("tempdir");
    let folder = manifests(dir.path(), &oauth_pipeline(&ns, &base));
    let log = dir.path().join("ofe.log");
    let (listen, webhooks) = (free_addr(), free_addr());
    let child = support::ofe_run(&folder, &dir.path().join("data"), listen)
        .env("OFE_SECRET_IDP_SECRET", SECRET)
        .args(["--log-level", "debug", "--webhook-listen", &webhooks.to_string()])
        .stderr(std::fs::File::create(&log).expect("log"))
        .spawn()
        .expect("spawn ofe run");
    let _ofe = KillOnDrop(child);
    wait_ready(listen).await;

    // Five events at once: one token serves them all.
    let ids: Vec<String> = (0..5).map(|i| format!("a-{i}")).collect();
    futures::future::join_all(ids.iter().map(|id| post(webhooks, &ns, "fleet", id))).await;
    wait(Duration::from_secs(20), "five deliveries", || idp.delivered("/fn").len() == 5).await;
    let issued = idp.issued();
    assert_eq!(issued.len(), 1, "one token for five deliveries: {issued:?}");
    let first = format!("Bearer {}", issued[0].1);
    assert!(idp.delivered("/fn").iter().all(|(a, _)| *a == first));

    // The token lives 2 s and is refreshed a tenth of that before: after 2.5 s, a new one.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    post(webhooks, &ns, "fleet", "b-1").await;
    wait(Duration::from_secs(20), "a delivery after expiry", || idp.delivered("/fn").len() == 6)
        .await;
    let issued = idp.issued();
    assert_eq!(issued.len(), 2, "a new token once the first expired: {issued:?}");
    assert_eq!(idp.delivered("/fn")[5], (format!("Bearer {}", issued[1].1), "b-1".into()));

    // The function revokes the token: the refused attempt drops it, the retry gets another.
    idp.revoked.lock().expect("lock").insert(issued[1].1.clone());
    post(webhooks, &ns, "fleet", "c-1").await;
    wait(Duration::from_secs(20), "a delivery after a 401", || idp.delivered("/fn").len() == 7)
        .await;
    let issued = idp.issued();
    assert_eq!(issued.len(), 3, "{issued:?}");
    assert_eq!(idp.delivered("/fn")[6], (format!("Bearer {}", issued[2].1), "c-1".into()));
    assert!(idp.refused.lock().expect("lock").contains(&issued[1].1), "the 401 came first");

    // A token endpoint that takes the credentials in the form only; and a client the token
    // endpoint refuses, whose event is dead-lettered with the reason and never sent.
    post(webhooks, &ns, "yard", "d-1").await;
    wait(Duration::from_secs(20), "the form-only endpoint's delivery", || {
        idp.delivered("/fn-form").len() == 1
    })
    .await;
    let form_token = idp.issued().into_iter().find(|(p, _)| p == "/token-form").expect("issued");
    assert_eq!(idp.delivered("/fn-form")[0].0, format!("Bearer {}", form_token.1));
    wait(Duration::from_secs(20), "the refused client's dead letter", || {
        !idp.dead.lock().expect("lock").is_empty()
    })
    .await;
    let (id, reason) = idp.dead.lock().expect("lock")[0].clone();
    assert_eq!(id, "d-1");
    assert!(
        reason.contains(&format!("the OAuth2 token endpoint {base}/token answered HTTP 401")),
        "{reason}"
    );
    assert!(idp.delivered("/fn-wrong").is_empty(), "no request without a token");

    // Neither the secret nor any token shows in the logs, metrics or status.
    let metrics = support::get(&format!("http://{listen}/metrics")).await;
    let status = support::get(&format!("http://{listen}/status")).await;
    let logs = std::fs::read_to_string(&log).expect("log");
    assert!(logs.contains("fetched an OAuth2 token"), "the debug log was read");
    for (what, text) in [("logs", &logs), ("metrics", &metrics), ("status", &status)] {
        assert!(!text.contains(SECRET), "{what} show the client secret");
        for (_, token) in idp.issued() {
            assert!(!text.contains(&token), "{what} show token {token}");
        }
    }
}
