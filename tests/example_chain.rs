//! The chain example, as the README runs it: HTTP orders → `ofe run` → the sync function
//! "front" → its CloudEvent replies through a bus topic → the async function "back", which is
//! down for 10 seconds partway through. Nothing may be lost. It needs no services.

mod support;

#[test]
fn the_chain_loses_nothing_while_back_is_down_for_ten_seconds() {
    let stdout = support::run_example(
        "chain",
        &["--orders", "100", "--rate", "20", "--outage-seconds", "10"],
    );
    let line = |label: &str| support::summary(&stdout, label);
    assert_eq!(line("orders sent"), 100);
    assert_eq!(line("orders at back"), 100, "every order reached back");
    assert!(line("front calls") >= 100);
    assert!(line("replies published") >= 100, "every front reply went to the bus");
    assert!(line("delivery retries") > 0, "back was down, so deliveries were retried");
    assert_eq!(line("dead-lettered"), 0);
    assert!(stdout.contains("back is DOWN for 10 s") && stdout.contains("back is UP again"));
}
