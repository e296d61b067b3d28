// Shared by the build scripts of the packages whose tests use real services (`include!`d).
//
// A test that needs a broker runs only when its `OFE_TEST_*` variable is set: each set
// variable becomes a cfg (`OFE_TEST_NATS` → `ofe_test_nats`), and such a test carries
// `#[cfg_attr(not(ofe_test_nats), ignore = "needs OFE_TEST_NATS ...")]`. So the runner shows
// it as ignored (cargo test) or skipped (nextest), with the reason, instead of counting a
// test that returned early as passed. A variable that is set but names a broker that does
// not answer still runs the test, which fails.

/// Every service variable the tests read.
const SERVICES: &[&str] = &[
    "OFE_TEST_NATS",
    "OFE_TEST_NATS_2_9",
    "OFE_TEST_NATS_SERVER",
    "OFE_TEST_KAFKA",
    "OFE_TEST_KAFKA_SERVER",
    "OFE_TEST_MQTT",
    "OFE_TEST_MOSQUITTO_SERVER",
    "OFE_TEST_REDIS",
    "OFE_TEST_REDIS_SERVER",
    "OFE_TEST_KUBECONFIG",
    "OFE_TEST_KUBECTL",
    "OFE_TEST_KUBE_AUDIT_LOG",
    "OFE_TEST_PODMAN",
    "OFE_TEST_GO_PEERS",
    "OFE_TEST_NATS_CLUSTER",
    "OFE_TEST_NATS_CLUSTER_DIR",
    "OFE_TEST_DAPRD",
    "OFE_TEST_AMQP",
    "OFE_TEST_AMQP_SERVER",
    "OFE_TEST_CHROMIUM",
    "OFE_TEST_PLAYWRIGHT",
];

fn main() {
    // `ofe_test_root`: the tests run as root, so a test may mount a filesystem of its own
    // (a small tmpfs to fill). CI runs as root.
    println!("cargo::rustc-check-cfg=cfg(ofe_test_root)");
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let uid = status.lines().find_map(|l| l.strip_prefix("Uid:")).and_then(|l| l.split_whitespace().next());
    if uid == Some("0") {
        println!("cargo::rustc-cfg=ofe_test_root");
    }
    for name in SERVICES {
        let cfg = name.to_ascii_lowercase();
        println!("cargo::rustc-check-cfg=cfg({cfg})");
        println!("cargo::rerun-if-env-changed={name}");
        if std::env::var(name).is_ok_and(|v| !v.trim().is_empty()) {
            println!("cargo::rustc-cfg={cfg}");
        }
    }
}
