//! MQTT over TLS (with a private CA) and over WebSocket, against a Mosquitto started for the
//! test. `OFE_TEST_MOSQUITTO_SERVER` names the `mosquitto` binary; unset, the test skips and
//! says so.

use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use cloudevents::AttributesReader;
use ofe_core::{EventBus, StartPosition, Subject, SubscribeOptions};
use ofe_crds::MqttSpec;
use ofe_eventbus::embedded::{EmbeddedBus, EmbeddedConfig};
use ofe_eventsource::SourceMetrics;
use ofe_eventsource::mqtt::MqttSource;
use ofe_testkit::{ChildGuard, free_port, wait_port};
use rumqttc::{AsyncClient, MqttOptions, QoS};
use tokio_util::sync::CancellationToken;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(ofe_test_mosquitto_server),
    ignore = "needs OFE_TEST_MOSQUITTO_SERVER (scripts/test.sh starts the services)"
)]
async fn tls_with_a_private_ca_and_websocket() {
    let binary = ofe_testkit::broker_var("OFE_TEST_MOSQUITTO_SERVER");
    let dir = tempfile::tempdir().expect("tempdir");
    ofe_testkit::certificates(dir.path());
    // Mosquitto started as root drops to its own user, which must be able to read the files.
    {
        use std::os::unix::fs::PermissionsExt as _;
        let readable = |p: &std::path::Path, mode| {
            std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).expect("chmod");
        };
        readable(dir.path(), 0o755);
        for name in ["ca.pem", "server.pem", "server.key"] {
            readable(&dir.path().join(name), 0o644);
        }
    }
    let (plain, tls, ws) = (free_port(), free_port(), free_port());
    let path = |name: &str| dir.path().join(name).display().to_string();
    let config = format!(
        "per_listener_settings false\nallow_anonymous true\npersistence false\n\
         listener {plain} 127.0.0.1\n\
         listener {tls} 127.0.0.1\ncafile {}\ncertfile {}\nkeyfile {}\n\
         listener {ws} 127.0.0.1\nprotocol websockets\n",
        path("ca.pem"),
        path("server.pem"),
        path("server.key"),
    );
    std::fs::write(dir.path().join("mosquitto.conf"), config).expect("config");
    let _broker = ChildGuard(
        Command::new(&binary)
            .arg("-c")
            .arg(dir.path().join("mosquitto.conf"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("OFE_TEST_MOSQUITTO_SERVER={binary}: {e}")),
    );
    for port in [plain, tls, ws] {
        wait_port(port, "mosquitto").await;
    }
    let store = tempfile::tempdir().expect("tempdir");
    let bus = EmbeddedBus::open(EmbeddedConfig::new(store.path())).expect("bus");
    let subjects = vec![Subject::event("ns", "tls", "t"), Subject::event("ns", "ws", "t")];
    let mut options = SubscribeOptions::new("test", subjects);
    options.start = StartPosition::All;
    let mut sub = bus.subscribe(options).await.expect("subscribe");
    let shutdown = CancellationToken::new();
    let shared: Arc<dyn EventBus> = Arc::new(bus.clone());
    let ca = std::fs::read_to_string(dir.path().join("ca.pem")).expect("ca");
    let sources = [
        // The CA as PEM text, the way OpenFunction manifests carry it.
        (
            "tls",
            MqttSpec {
                url: format!("ssl://127.0.0.1:{tls}"),
                ca_cert: Some(ca),
                ..Default::default()
            },
        ),
        ("ws", MqttSpec { url: format!("ws://127.0.0.1:{ws}"), ..Default::default() }),
    ];
    let mut tasks = Vec::new();
    for (name, mut spec) in sources {
        spec.topic = format!("transport/{name}");
        spec.qos = Some(1);
        spec.clean_session = Some(true);
        let source = MqttSource::new("ns", name, "t", &spec).expect("source");
        tasks.push(tokio::spawn(source.run(
            shared.clone(),
            SourceMetrics::default(),
            shutdown.clone(),
        )));
    }
    let (client, mut events) =
        AsyncClient::new(MqttOptions::new("publisher", "127.0.0.1", plain), 16);
    tokio::spawn(async move { while events.poll().await.is_ok() {} });
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..100 {
        for name in ["tls", "ws"] {
            client
                .publish(format!("transport/{name}"), QoS::AtLeastOnce, false, name)
                .await
                .expect("publish");
        }
        while let Ok(Ok(d)) = tokio::time::timeout(Duration::from_millis(200), sub.next()).await {
            let body = ofe_core::event::data_bytes(&d.event);
            assert_eq!(
                d.event.subject().map(|s| s.trim_start_matches("transport/").as_bytes().to_vec()),
                Some(body.clone())
            );
            seen.insert(String::from_utf8_lossy(&body).into_owned());
            d.ack().await.expect("ack");
        }
        if seen.len() == 2 {
            break;
        }
    }
    assert_eq!(seen.len(), 2, "messages arrive over TLS and WebSocket: {seen:?}");
    // Without the private CA, the TLS source cannot connect and says so at run time, while
    // a bad CA value is refused when the source is made.
    let spec = MqttSpec {
        url: format!("ssl://127.0.0.1:{tls}"),
        topic: "x".into(),
        ca_cert: Some("/nonexistent/ca.pem".into()),
        ..Default::default()
    };
    let error = MqttSource::new("ns", "tls", "t", &spec).expect_err("a missing CA file");
    assert!(error.to_string().contains("spec.mqtt.t.caCert"), "{error}");
    shutdown.cancel();
    for task in tasks {
        task.await.expect("source stops on shutdown");
    }
    bus.close().await.expect("close");
}
