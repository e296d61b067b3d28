//! The OCI image: `scripts/image.sh` builds it with buildah from the binary under test, writes
//! an OCI archive that `podman load` takes, and podman runs it (as the non-root user, on a
//! read-only root filesystem as `deploy/` runs it): `ofe --help`, `ofe validate` of a mounted
//! example, and `ofe run` of the cron example delivering to a function on the host network.
//! Needs `OFE_TEST_PODMAN` (scripts/services.sh installs buildah, podman, skopeo and runc).

mod support;

use std::process::Command;
use std::time::Duration;

use support::Receiver;

/// `podman run` with the flags these machines need (runc; no conmon cgroup; limits root may
/// set), on the host network, as `deploy/` runs ofe: a read-only root filesystem, and a data
/// volume (`data`, given to the image's user as Kubernetes' `fsGroup` does an `emptyDir`).
fn podman_run(podman: &str, name: &str, data: &std::path::Path) -> Command {
    let mut command = Command::new(podman);
    command
        .args(["run", "--rm", "--name", name, "--network", "host", "--runtime", "runc"])
        .args(["--cgroups=no-conmon", "--cgroup-parent=ofe-test"])
        .args(["--ulimit", "nofile=20000:20000", "--ulimit", "nproc=20000:20000"])
        .arg("--read-only")
        .arg("-v")
        .arg(format!("{}:/var/lib/ofe", data.display()));
    command
}

fn output(command: &mut Command) -> String {
    let out = command.output().expect("podman");
    let text =
        format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{command:?} failed:\n{text}");
    text
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(ofe_test_podman),
    ignore = "needs OFE_TEST_PODMAN (scripts/test.sh starts the services)"
)]
async fn the_image_builds_loads_and_runs_the_cron_example() {
    let podman = support::broker_var("OFE_TEST_PODMAN");
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let dir = tempfile::tempdir().expect("tempdir");
    let tag = format!("localhost/ofe:test-{}", uuid::Uuid::new_v4().simple());
    let archive = dir.path().join("ofe.oci.tar");
    let built = Command::new(root.join("scripts/image.sh"))
        .args(["--binary", env!("CARGO_BIN_EXE_ofe"), "--tag", &tag, "--out"])
        .arg(&archive)
        .output()
        .expect("scripts/image.sh");
    assert!(
        built.status.success(),
        "scripts/image.sh failed:\n{}",
        String::from_utf8_lossy(&built.stderr)
    );
    // The archive is what a user loads; remove the built image first so the run uses it.
    output(Command::new(&podman).args(["rmi", &tag]));
    let loaded = output(Command::new(&podman).arg("load").arg("-i").arg(&archive));
    assert!(loaded.contains(&tag), "podman load names the image: {loaded}");
    let user = output(Command::new(&podman).args([
        "image",
        "inspect",
        "--format",
        "{{.Config.User}}",
        &tag,
    ]));
    assert_eq!(user.trim(), "65532:65532", "the image runs as non-root");

    let name = |what: &str| format!("ofe-test-{what}-{}", uuid::Uuid::new_v4().simple());
    let data = dir.path().join("data");
    std::fs::create_dir(&data).expect("mkdir");
    std::os::unix::fs::chown(&data, Some(65532), Some(65532)).expect("chown the data volume");
    let help = output(podman_run(&podman, &name("help"), &data).arg(&tag).arg("--help"));
    assert!(help.contains("Usage: ofe <COMMAND>"), "{help}");

    let examples = root.join("examples/cron-to-function");
    let validated = output(
        podman_run(&podman, &name("validate"), &data)
            .arg("-v")
            .arg(format!("{}:/manifests:ro", examples.display()))
            .args([&tag, "validate", "-f", "/manifests"]),
    );
    assert!(validated.contains("0 errors"), "{validated}");

    // The cron example, with its function on this host.
    let (receiver, base) = Receiver::start().await;
    let manifests = dir.path().join("manifests");
    std::fs::create_dir(&manifests).expect("mkdir");
    for file in ["eventsource.yaml", "trigger.yaml"] {
        let text = std::fs::read_to_string(examples.join(file)).expect("read");
        std::fs::write(manifests.join(file), text.replace("http://127.0.0.1:8081", &base))
            .expect("write");
    }
    let listen = support::free_addr();
    let container = name("run");
    let mut run = support::KillOnDrop(
        podman_run(&podman, &container, &data)
            .arg("-v")
            .arg(format!("{}:/manifests:ro", manifests.display()))
            .args([&tag, "run", "-f", "/manifests", "--listen", &listen.to_string()])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("podman run"),
    );
    receiver
        .wait_for(Duration::from_secs(60), "ticks from the container at the function", |r| {
            r.on("/").len() >= 2
        })
        .await;
    let tick = &receiver.on("/")[0];
    assert_eq!(tick.header("ce-type"), "io.openfunction.events.cron");
    output(Command::new(&podman).args(["stop", "-t", "10", &container]));
    let _ = run.0.wait();
    output(Command::new(&podman).args(["rmi", &tag]));
}
