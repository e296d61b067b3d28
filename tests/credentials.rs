//! Credentials: `ofe run` reads `secretKeyRef`s from variables and files, and no credential
//! ever shows in the logs (at debug level, sources failing to connect with them), the metrics,
//! `/status`, `ofe status` or `ofe tail`.

mod support;

use std::io::Read as _;
use std::process::Stdio;
use std::time::Duration;

use hmac::{Hmac, Mac as _};
use sha2::Sha256;
use support::{KillOnDrop, Receiver, free_addr, manifests, ofe, wait_ready};

/// Every credential of the manifests below, each unique enough to be found anywhere.
const SECRETS: &[&str] = &[
    "bearer-from-env-5b1e",
    "hmac-from-file-77c2",
    "mqtt-url-pass-0a9d",
    "mqtt-field-pass-c3e1",
    "redis-pass-9f04",
    "kafka-sasl-pass-4d2b",
    "nats-url-pass-e8a7",
    "nats-token-1c6f",
    "sink-url-pass-2b8e",
    "sink-query-token-6a3d",
    "sink-bearer-from-env-7e21",
    "sink-basic-pass-3f90",
    "sink-api-key-81c4",
    "sink-oauth-secret-5d7e",
];

/// A webhook taking a bearer token (from a variable) and one taking an HMAC secret (from a
/// file); sources whose brokers are down, each with credentials written inline; a Trigger
/// whose sink URL carries a password and a token, and fails.
fn yaml(base: &str) -> String {
    let sink = base.replace("http://", "http://fn:sink-url-pass-2b8e@");
    format!(
        "apiVersion: events.openfunction.io/v1alpha1\nkind: EventSource\n\
         metadata: {{ name: creds, namespace: default }}\n\
         spec:\n  eventBus: default\n  webhook:\n\
         \x20   hook:\n      secretKeyRef: {{ bearerToken: {{ name: hook, key: token }} }}\n\
         \x20   signed:\n      hmac: {{ secretKeyRef: {{ secret: {{ name: hmac, key: secret }} }} }}\n\
         \x20 mqtt:\n\
         \x20   inurl: {{ url: \"tcp://mq:mqtt-url-pass-0a9d@127.0.0.1:1\", topic: \"t/#\" }}\n\
         \x20 redis:\n\
         \x20   r: {{ redisHost: \"127.0.0.1:1\", redisPassword: \"redis-pass-9f04\", stream: \"s\" }}\n\
         \x20 kafka:\n\
         \x20   k: {{ brokers: \"127.0.0.1:1\", topic: \"t\", authRequired: true, saslUsername: \"ku\", saslPassword: \"kafka-sasl-pass-4d2b\" }}\n\
         \x20 nats:\n\
         \x20   natsurl: {{ url: \"nats://nu:nats-url-pass-e8a7@127.0.0.1:1\", subject: \"x\" }}\n\
         \x20   natstoken: {{ url: \"nats://127.0.0.1:1\", subject: \"y\", auth: {{ token: \"nats-token-1c6f\" }} }}\n\
         ---\napiVersion: events.openfunction.io/v1alpha1\nkind: Trigger\n\
         metadata: {{ name: route, namespace: default }}\n\
         spec:\n  eventBus: default\n  inputs:\n    h: {{ eventSource: creds, event: hook }}\n\
         \x20   s: {{ eventSource: creds, event: signed }}\n\
         \x20 subscribers:\n  - condition: h || s\n    sink: {{ uri: \"{base}/fn\" }}\n\
         \x20 - condition: h\n    sink: {{ uri: \"{sink}/fail?token=sink-query-token-6a3d\" }}\n\
         \x20   delivery: {{ retry: 1, backoffPolicy: linear, backoffDelay: PT0.05S, deadLetterStore: false }}\n\
         \x20 - condition: h\n    sink:\n      uri: \"{base}/bearer\"\n      \
         auth: {{ secretKeyRef: {{ bearerToken: {{ name: fn-auth, key: token }} }} }}\n\
         \x20 - condition: h\n    sink:\n      uri: \"{base}/basic\"\n      \
         auth: {{ username: fn, password: sink-basic-pass-3f90 }}\n\
         \x20 - condition: h\n    sink:\n      uri: \"{base}/key\"\n      \
         auth: {{ apiKey: sink-api-key-81c4, apiKeyHeader: X-Fn-Key }}\n\
         \x20 - condition: h\n    delivery: {{ retry: 1, backoffDelay: PT0.05S, deadLetterStore: false }}\n    \
         sink:\n      uri: \"{base}/oauth\"\n      \
         auth: {{ oauth2: {{ tokenUrl: \"{base}/token\", clientId: fn, clientSecret: sink-oauth-secret-5d7e }} }}\n"
    )
}

fn leaks(what: &str, text: &str) {
    for secret in SECRETS {
        assert!(!text.contains(secret), "{what} shows the credential {secret}:\n{text}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_come_from_variables_and_files_and_never_show() {
    let (function, base) = Receiver::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let secrets = dir.path().join("secrets");
    std::fs::create_dir_all(secrets.join("hmac")).expect("mkdir");
    // `echo value > file` leaves a line break, which is not part of the value.
    std::fs::write(secrets.join("hmac").join("secret"), "hmac-from-file-77c2\n").expect("write");
    let log = dir.path().join("ofe.log");
    let (listen, webhooks) = (free_addr(), free_addr());
    let child =
        support::ofe_run(&manifests(dir.path(), &yaml(&base)), &dir.path().join("data"), listen)
            .arg("--secrets-dir")
            .arg(&secrets)
            .args(["--webhook-listen", &webhooks.to_string(), "--log-level", "debug"])
            .env("OFE_SECRET_HOOK_TOKEN", "bearer-from-env-5b1e")
            .env("OFE_SECRET_FN_AUTH_TOKEN", "sink-bearer-from-env-7e21")
            .stderr(std::fs::File::create(&log).expect("log file"))
            .spawn()
            .expect("spawn ofe run");
    let mut process = KillOnDrop(child);
    wait_ready(listen).await;

    let mut tail = ofe()
        .args(["tail", "--json", "--endpoint", &format!("http://{listen}")])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("ofe tail");
    let http = support::http();
    let hook = format!("http://{webhooks}/default/creds/hook");
    let wrong = http.post(&hook).bearer_auth("guess").body("{}").send().await.expect("post");
    assert_eq!(wrong.status().as_u16(), 401);
    leaks("a refusal", &wrong.text().await.expect("body"));
    let right = http
        .post(&hook)
        .bearer_auth("bearer-from-env-5b1e")
        .header("content-type", "application/json")
        .body(r#"{"n":1}"#)
        .send()
        .await
        .expect("post");
    assert_eq!(right.status().as_u16(), 202, "the token from the variable is the webhook's");
    let body = br#"{"n":2}"#;
    let mut mac = Hmac::<Sha256>::new_from_slice(b"hmac-from-file-77c2").expect("key");
    mac.update(body);
    let signature = format!("sha256={}", hex::encode(mac.finalize().into_bytes()));
    let signed = http
        .post(format!("http://{webhooks}/default/creds/signed"))
        .header("x-hub-signature-256", signature)
        .header("content-type", "application/json")
        .body(&body[..])
        .send()
        .await
        .expect("post");
    assert_eq!(signed.status().as_u16(), 202, "the secret from the file, without its line break");

    function.wait_for(Duration::from_secs(20), "both events", |r| r.on("/fn").len() == 2).await;
    // Each sink's credentials reach it (the bearer token from a variable, through its Secret).
    function
        .wait_for(Duration::from_secs(20), "the authenticated sinks", |r| {
            ["/bearer", "/basic", "/key", "/token"].iter().all(|p| !r.on(p).is_empty())
        })
        .await;
    // The OAuth2 client's secret went to the token endpoint (whose empty answer is no token,
    // so the sink itself gets nothing).
    assert!(function.on("/token")[0].header("authorization").starts_with("Basic "));
    assert!(function.on("/oauth").is_empty());
    let header = |path: &str, name: &str| function.on(path)[0].header(name);
    assert_eq!(header("/bearer", "authorization"), "Bearer sink-bearer-from-env-7e21");
    assert_eq!(header("/basic", "authorization"), "Basic Zm46c2luay1iYXNpYy1wYXNzLTNmOTA=");
    assert_eq!(header("/key", "x-fn-key"), "sink-api-key-81c4");
    function
        .wait_for(Duration::from_secs(20), "two failed attempts", |r| r.on("/fail").len() == 2)
        .await;
    // Sources keep failing to connect meanwhile, and logging it.
    tokio::time::sleep(Duration::from_secs(3)).await;

    let metrics = support::get(&format!("http://{listen}/metrics")).await;
    assert!(metrics.contains("ofe_trigger_events_dropped_total"), "{metrics}");
    leaks("/metrics", &metrics);
    let status = support::get(&format!("http://{listen}/status")).await;
    assert!(status.contains("BrokerUnreachable"), "sources report their brokers down: {status}");
    leaks("/status", &status);
    for json in [false, true] {
        let mut args = vec!["status", "--endpoint"];
        let endpoint = format!("http://{listen}");
        args.push(&endpoint);
        if json {
            args.push("--json");
        }
        let out = ofe().args(&args).output().expect("ofe status");
        leaks("ofe status", &String::from_utf8_lossy(&out.stdout));
    }
    let _ = tail.kill();
    let _ = tail.wait();
    let mut steps = String::new();
    tail.stdout.take().expect("stdout").read_to_string(&mut steps).expect("tail output");
    assert!(
        steps.contains("dropped") && steps.contains("***"),
        "the tail shows the failed sink: {steps}"
    );
    leaks("ofe tail", &steps);

    support::terminate(&mut process.0);
    let logs = std::fs::read_to_string(&log).expect("log");
    assert!(logs.contains("127.0.0.1:1"), "sources logged their failures: {logs}");
    leaks("the log", &logs);
}

/// A bus that cannot be opened stops `ofe run` with an error that names the bus, not its
/// password.
#[test]
fn a_bus_error_does_not_show_its_credentials() {
    let dir = tempfile::tempdir().expect("tempdir");
    let yaml = "apiVersion: events.openfunction.io/v1alpha1\nkind: EventBus\n\
                metadata: { name: default, namespace: default }\n\
                spec:\n  jetstream:\n    url: \"nats://u:nats-bus-pass-7d1a@127.0.0.1:1\"\n\
                ---\n"
        .to_string()
        + &support::clock("default", None);
    let out = ofe()
        .args(["run", "-f"])
        .arg(manifests(dir.path(), &yaml))
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .args(["--listen", "127.0.0.1:0", "--log-level", "debug"])
        .output()
        .expect("run");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains("127.0.0.1:1"), "the error names the bus: {stderr}");
    assert!(!stderr.contains("nats-bus-pass-7d1a"), "{stderr}");
}

/// Credentials in the URLs of brokers that take them, a JetStream bus and an MQTT source:
/// everything connects and flows, and at debug level (the clients log every connection) no
/// password shows in the log or `/status`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(all(ofe_test_mqtt, ofe_test_nats)),
    ignore = "needs OFE_TEST_MQTT, OFE_TEST_NATS (scripts/test.sh starts the services)"
)]
async fn connections_made_with_credentials_do_not_show_them() {
    let nats = support::broker_var("OFE_TEST_NATS");
    let mqtt = support::broker_var("OFE_TEST_MQTT");
    let with_password = |url: &str, scheme: &str, password: &str| {
        let host = url.split_once("://").map_or(url, |(_, rest)| rest);
        format!("{scheme}://ofe:{password}@{host}")
    };
    let ns = support::unique_namespace();
    let (function, base) = Receiver::start().await;
    let topic = format!("creds/{ns}");
    let mqtt_url = with_password(&mqtt, "tcp", "mqtt-connected-pass-31f0");
    let nats_url = with_password(&nats, "nats", "nats-connected-pass-8c2e");
    let yaml = support::mqtt_to_sink(&ns, "cars", &mqtt_url, &topic, &format!("{base}/fn"))
        + &support::jetstream_bus(&ns, &nats_url);
    let dir = tempfile::tempdir().expect("tempdir");
    let log = dir.path().join("ofe.log");
    let listen = free_addr();
    let mut process = KillOnDrop(
        support::ofe_run(&manifests(dir.path(), &yaml), &dir.path().join("data"), listen)
            .args(["--webhook-listen", "127.0.0.1:0", "--log-level", "debug"])
            .stderr(std::fs::File::create(&log).expect("log file"))
            .spawn()
            .expect("spawn ofe run"),
    );
    wait_ready(listen).await;
    support::wait_ready_status(listen, "EventSource", "cars", "True").await;
    let publisher = support::mqtt_publisher(&mqtt, &format!("pub-{ns}"));
    function
        .wait_for(Duration::from_secs(20), "a message through the bus", |r| {
            if r.on("/fn").is_empty() {
                let (p, t) = (publisher.clone(), topic.clone());
                tokio::spawn(async move {
                    let _ = p.publish(t, rumqttc::QoS::AtLeastOnce, false, "{}").await;
                });
            }
            !r.on("/fn").is_empty()
        })
        .await;
    let status = support::get(&format!("http://{listen}/status")).await;
    support::terminate(&mut process.0);
    let logs = std::fs::read_to_string(&log).expect("log");
    assert!(logs.contains("JetStream bus connected"), "the connections were logged: {logs}");
    for (what, text) in [("the log", &logs), ("/status", &status)] {
        for secret in ["mqtt-connected-pass-31f0", "nats-connected-pass-8c2e"] {
            assert!(!text.contains(secret), "{what} shows the credential {secret}:\n{text}");
        }
    }
}
