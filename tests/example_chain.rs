//! The chain example, as the README runs it: HTTP orders → `ofe run` → the sync function
//! "front" → its CloudEvent replies through a bus topic → the async function "back", which is
//! down for 10 seconds partway through. Nothing may be lost. It needs no services.

use std::process::Command;

#[test]
fn the_chain_loses_nothing_while_back_is_down_for_ten_seconds() {
    let ofe = std::path::PathBuf::from(env!("CARGO_BIN_EXE_ofe"));
    // Cargo builds examples next to the binaries when it builds the tests.
    let example = ofe.parent().map(|dir| dir.join("examples/chain")).expect("target dir");
    assert!(
        example.exists(),
        "{} is missing; build it with `cargo build --example chain`",
        example.display()
    );
    let output = Command::new(&example)
        .args(["--orders", "100", "--rate", "20", "--outage-seconds", "10"])
        .arg("--ofe")
        .arg(&ofe)
        .output()
        .expect("run the example");
    let stdout = String::from_utf8_lossy(&output.stdout);
    println!("{stdout}");
    eprintln!("{}", String::from_utf8_lossy(&output.stderr));
    assert!(output.status.success(), "the example reported lost orders");
    let line = |label: &str| -> u64 {
        stdout
            .lines()
            .find_map(|l| l.trim().strip_prefix(label))
            .and_then(|rest| rest.trim().parse().ok())
            .unwrap_or_else(|| panic!("no `{label}` line in the summary"))
    };
    assert_eq!(line("orders sent"), 100);
    assert_eq!(line("orders at back"), 100, "every order reached back");
    assert!(line("front calls") >= 100);
    assert!(line("replies published") >= 100, "every front reply went to the bus");
    assert!(line("delivery retries") > 0, "back was down, so deliveries were retried");
    assert_eq!(line("dead-lettered"), 0);
    assert!(stdout.contains("back is DOWN for 10 s") && stdout.contains("back is UP again"));
}
