//! `ofe run` with its bus in memory (`spec.memory`): the example's flow reaches the function,
//! nothing is written to the data directory, and the status says whose bus it is.

mod support;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn example_runs_on_the_memory_bus() {
    support::example_flow_on_bus(support::memory_bus, async |listen| {
        let (bus, _) = support::condition(listen, "Trigger", "route", "BusConnected")
            .await
            .expect("the Trigger has a BusConnected condition");
        assert_eq!(bus["reason"], "MemoryBus", "the status says the bus is this process's own");
    })
    .await;
}
