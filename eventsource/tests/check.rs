//! `check`: every problem of an EventSource's events, each said once, from the kind's own
//! folder.

use ofe_crds::diagnostic::Diagnostic;

fn check(spec: serde_json::Value) -> Vec<Diagnostic> {
    let es: ofe_crds::EventSource = serde_json::from_value(serde_json::json!({
        "apiVersion": "events.openfunction.io/v1alpha1", "kind": "EventSource",
        "metadata": { "name": "es", "namespace": "ns" },
        "spec": spec,
    }))
    .expect("an EventSource");
    ofe_eventsource::check(&es)
}

fn paths(found: &[Diagnostic]) -> Vec<(&str, bool)> {
    let mut paths: Vec<_> = found.iter().map(|d| (d.path.as_str(), d.is_error())).collect();
    paths.sort();
    paths
}

#[test]
fn field_checks_list_every_problem_once() {
    let found = check(serde_json::json!({
        "eventBus": "default",
        "kafka": { "k": { "brokers": "127.0.0.1:9092", "authRequired": false, "saslMechanism": "MD5", "initialOffset": "oldest" } },
        "nats": { "n": { "url": "nats://127.0.0.1:4222", "subject": "a b", "queueGroup": "q",
                         "jetstream": { "stream": "" } } },
        "webhook": { "w": { "rateLimit": 0, "bearerToken": "" } },
    }));
    assert_eq!(
        paths(&found),
        [
            ("spec.kafka.k.initialOffset", true),
            ("spec.kafka.k.saslMechanism", true),
            ("spec.kafka.k.topic", true),
            ("spec.nats.n.jetstream.stream", true),
            ("spec.nats.n.queueGroup", true),
            ("spec.nats.n.subject", true),
            ("spec.webhook.w.bearerToken", true),
            ("spec.webhook.w.rateLimit", true),
        ],
        "{found:#?}"
    );
}

#[test]
fn what_the_field_checks_let_through_is_compiled_and_refused_once() {
    // The fields are fine on their own; the URL and the schedule are refused when compiled.
    let found = check(serde_json::json!({
        "eventBus": "default",
        "mqtt": { "m": { "url": "tcp://", "topic": "t" } },
        "cron": { "c": { "schedule": "every day" } },
    }));
    assert_eq!(paths(&found), [("spec.cron.c.schedule", true), ("spec.mqtt.m.url", true)]);
    assert!(found.iter().any(|d| d.message.contains("names no host")), "{found:#?}");
}

#[test]
fn an_openfunction_redis_event_with_nothing_to_read_is_a_warning_only() {
    // OpenFunction's Redis source had no stream or channel: the manifest still validates.
    let found = check(serde_json::json!({
        "eventBus": "default",
        "redis": { "r": { "redisHost": "127.0.0.1:6379", "redisPassword": "" } },
    }));
    assert_eq!(paths(&found), [("spec.redis.r", false)], "{found:#?}");
}
