//! Triggers run offline against fixture events, for `ofe test`: which subscribers each event
//! fires and, when one does not, the first reason (a filter that is false, with what it saw;
//! an input without its correlation key; the condition, with each input's value); what the
//! transform makes of the event, and the request its sink would get. Joins follow the order
//! the events are given in. Nothing is sent: no bus, broker or sink is touched, and no
//! destination is even made (a Kafka producer, say, would connect at once).

use std::sync::Arc;

use chrono::{DateTime, Utc};
use cloudevents::{AttributesReader as _, Event};
use ofe_core::Subject;
use ofe_crds::diagnostic::Diagnostic;
use ofe_crds::trigger::Trigger;
use serde::Serialize;

use crate::filter::EventData;
use crate::metrics::TriggerMetrics;
use crate::router::{EXT_POISON, Router, Routing};
use crate::transform::Transform;

/// What one subscriber made of one event.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Verdict {
    /// The Trigger, as `<namespace>/<name>`.
    pub trigger: String,
    /// The subscriber's index.
    pub subscriber: usize,
    /// Whether it fired and the event would be delivered.
    pub fired: bool,
    /// Why it did not fire, or why what fired would go to the dead letter instead.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub why_not: Option<String>,
    /// The event as delivered (after the transform), in structured JSON.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub event: Option<serde_json::Value>,
    /// The request its `sink` would get.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request: Option<Request>,
    /// The bus topic its `topic` would get the event on.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub topic: Option<String>,
}

/// A request as a sink would get it. Credentials show as `***`.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Request {
    /// `POST`, `PUT`, `PATCH`, or for a broker, what it does (`publish`).
    pub method: String,
    /// The URL, or the broker's destination.
    pub url: String,
    /// Headers (for a broker, the binding's attributes), in order.
    pub headers: Vec<(String, String)>,
    /// The body, as text (lossy for binary data).
    pub body: String,
}

/// One Trigger, loaded for offline runs.
struct Loaded {
    trigger: Trigger,
    router: Router,
    transforms: Vec<Option<Arc<Transform>>>,
    /// Per subscriber, its sink's expressions, compiled once.
    sinks: Vec<Option<SinkPreview>>,
}

/// What a sink computes per event, compiled once: its request mapping (an HTTP sink), or a
/// Kafka record's key.
struct SinkPreview {
    map: Option<crate::sink::http::request::RequestMap>,
    kafka_key: Option<Arc<cel::Program>>,
}

impl SinkPreview {
    /// The expressions of subscriber `i`'s `sink`; what cannot compile is a diagnostic, as
    /// `ofe validate` reports it.
    fn compile(i: usize, sink: &ofe_crds::SinkSpec) -> Result<Self, Vec<Diagnostic>> {
        let path = format!("spec.subscribers[{i}].sink");
        let map = crate::sink::http::request::RequestMap::compile(&path, sink)?;
        let kafka_key = match sink.kafka.as_ref().and_then(|k| k.key.as_deref()) {
            Some(key) => Some(
                crate::filter::compile_cel(key)
                    .map_err(|e| vec![Diagnostic::error(format!("{path}.kafka.key"), e.message)])?,
            ),
            None => None,
        };
        Ok(Self { map, kafka_key })
    }
}

/// Triggers run offline.
pub struct Offline {
    triggers: Vec<Loaded>,
}

impl Offline {
    /// `triggers`, compiled as `ofe run` compiles them; the diagnostics of every field that
    /// cannot run, otherwise.
    pub fn new(triggers: &[Trigger]) -> Result<Self, Vec<Diagnostic>> {
        let mut loaded = Vec::new();
        let mut errors = Vec::new();
        for trigger in triggers {
            match crate::offline_plan(trigger) {
                Ok(subscribers) => {
                    let (routings, transforms): (Vec<_>, Vec<_>) = subscribers.into_iter().unzip();
                    let mut sinks = Vec::new();
                    for (i, sub) in trigger.spec.subscribers.iter().enumerate() {
                        match sub.sink.as_ref().map(|sink| SinkPreview::compile(i, sink)) {
                            Some(Err(e)) => errors.extend(e),
                            compiled => sinks.push(compiled.and_then(Result::ok)),
                        }
                    }
                    loaded.push(Loaded {
                        trigger: trigger.clone(),
                        router: Router::new(routings, TriggerMetrics::default()),
                        transforms,
                        sinks,
                    });
                }
                Err(e) => errors.extend(e),
            }
        }
        if errors.is_empty() { Ok(Self { triggers: loaded }) } else { Err(errors) }
    }

    /// Routes `event`, an event of `subject` at `at`, through every Trigger: a verdict per
    /// subscriber that reads `subject`, in Trigger and subscriber order.
    pub fn run(&mut self, subject: &Subject, event: &Event, at: DateTime<Utc>) -> Vec<Verdict> {
        let shared = Arc::new(event.clone());
        let mut out = Vec::new();
        for loaded in &mut self.triggers {
            let fired = loaded.router.route(subject, &shared, at);
            let namespace = ofe_crds::manifest::namespace_of(&loaded.trigger.metadata).to_string();
            let name = loaded.trigger.metadata.name.clone().unwrap_or_default();
            for (i, routing) in loaded.router.routings().iter().enumerate() {
                if !routing.inputs.iter().any(|input| input.subject == *subject) {
                    continue;
                }
                let mut verdict = Verdict {
                    trigger: format!("{namespace}/{name}"),
                    subscriber: i,
                    fired: false,
                    why_not: None,
                    event: None,
                    request: None,
                    topic: None,
                };
                let Some(fired) = fired.iter().find(|f| f.routing == i) else {
                    verdict.why_not = Some(why_not(&loaded.router, i, routing, subject, event, at));
                    out.push(verdict);
                    continue;
                };
                if let Some(reason) = fired.event.extension(EXT_POISON) {
                    verdict.why_not =
                        Some(format!("poison: {reason} (it goes to the dead letter, unattempted)"));
                    out.push(verdict);
                    continue;
                }
                let transformed =
                    match loaded.transforms[i].as_deref().map(|t| t.apply(&fired.event)) {
                        None => Event::clone(&fired.event),
                        Some(Ok(event)) => event,
                        Some(Err(e)) => {
                            verdict.why_not = Some(format!(
                                "the transform fails: {e} (it goes to the dead letter)"
                            ));
                            out.push(verdict);
                            continue;
                        }
                    };
                verdict.fired = true;
                let sub = &loaded.trigger.spec.subscribers[i];
                verdict.event = serde_json::to_value(&transformed).ok();
                verdict.topic = sub.topic.as_ref().map(|t| format!("{namespace}/{t}"));
                let preview = loaded.sinks.get(i).and_then(Option::as_ref);
                if let (Some(sink), Some(preview)) = (&sub.sink, preview) {
                    match request(sink, preview, &transformed) {
                        Ok(mut request) => {
                            if sink.brokers().is_empty() {
                                // As the subscriber's every attempt of this event carries it.
                                let consumer = format!("trigger.{namespace}.{name}.{i}");
                                let key = crate::delivery::idempotency_key(&consumer, &transformed);
                                request.headers.push(("idempotency-key".into(), key));
                            }
                            verdict.request = Some(request);
                        }
                        Err(e) => {
                            verdict.fired = false;
                            verdict.why_not = Some(format!(
                                "the request cannot be made: {e} (it goes to the dead letter)"
                            ));
                        }
                    }
                }
                out.push(verdict);
            }
        }
        out
    }
}

/// Why subscriber `r` (`routing`) did not fire on `event`: the first filter that is false,
/// with what it saw; an input without its correlation key; or the condition, with the value of
/// each input.
fn why_not(
    router: &Router,
    r: usize,
    routing: &Routing,
    subject: &Subject,
    event: &Event,
    at: DateTime<Utc>,
) -> String {
    let data = EventData::new(event);
    let mut reasons = Vec::new();
    let mut key = None;
    for input in routing.inputs.iter().filter(|input| input.subject == *subject) {
        let failed = input.filters.iter().enumerate().find(|(_, f)| !f.matches(&data));
        if let Some((n, filter)) = failed {
            reasons.push(format!("input `{}`: filter [{n}] {}", input.name, filter.verdict(&data)));
            continue;
        }
        match &input.key {
            Some(expr) => match expr.key(&data) {
                Some(found) => key = key.or(Some(found)),
                None => reasons.push(format!(
                    "input `{}`: the event has no correlation key (`{}` gives nothing)",
                    input.name,
                    expr.text()
                )),
            },
            None => key = key.or(Some(String::new())),
        }
    }
    let Some(key) = key else { return reasons.join("; ") };
    if !routing.joins() {
        return routing.condition_verdict(|_| true);
    }
    let values = router.inputs_true(r, &key, at);
    routing.condition_verdict(|i| values.get(i).is_some_and(|(_, on)| *on))
}

/// The request `sink` (at `path`) would get for `event`, credentials as `***`.
fn request(
    sink: &ofe_crds::SinkSpec,
    preview: &SinkPreview,
    event: &Event,
) -> Result<Request, String> {
    let auth = sink.auth.as_ref();
    let api_key = auth
        .filter(|a| a.api_key.is_some() || a.secret_key_ref.contains_key("apiKey"))
        .map(|a| a.api_key_header.clone().unwrap_or_else(|| "X-API-Key".into()));
    let hidden = |name: &str| {
        name.eq_ignore_ascii_case("authorization")
            || api_key.as_deref().is_some_and(|h| h.eq_ignore_ascii_case(name))
    };
    let text = |bytes: &[u8]| String::from_utf8_lossy(bytes).into_owned();
    if let Some(broker) = sink.brokers().first() {
        let (url, body, headers) = broker_request(sink, preview, event)?;
        return Ok(Request { method: format!("publish ({broker})"), url, headers, body });
    }
    let map = preview.map.as_ref();
    let view = EventData::new(event);
    let url = match map.map(|m| m.url(&view)).transpose()?.flatten() {
        Some(url) => url.to_string(),
        None => match (&sink.uri, &sink.r#ref) {
            (Some(uri), _) => uri.clone(),
            (None, Some(r)) => format!(
                "{} {}/{} (its address in the cluster)",
                r.kind,
                r.namespace.clone().unwrap_or_default(),
                r.name
            ),
            (None, None) => String::new(),
        },
    };
    let mut headers = Vec::new();
    let structured = map.is_some_and(|m| m.structured);
    let body = if structured {
        headers.push(("content-type".into(), "application/cloudevents+json".into()));
        ofe_core::event::to_structured(event).map(|b| text(&b)).map_err(|e| ofe_core::chain(&e))?
    } else {
        let (binary, body) = crate::sink::http::binary_mode(event);
        for (name, value) in &binary {
            headers.push((name.to_string(), text(value.as_bytes())));
        }
        text(&body)
    };
    if let Some(map) = map {
        let mut mapped = reqwest::header::HeaderMap::new();
        map.headers(&view, &mut mapped)?;
        for (name, value) in &mapped {
            let shown =
                if hidden(name.as_str()) { "***".to_string() } else { text(value.as_bytes()) };
            headers.push((name.to_string(), shown));
        }
    }
    if sink.auth.as_ref().is_some_and(|a| a.oauth2.is_some()) {
        headers.push(("authorization".into(), "Bearer *** (OAuth2)".into()));
    }
    let method = map.map_or("POST".to_string(), |m| m.method.to_string());
    Ok(Request { method, url, headers, body })
}

/// Where a broker sink publishes, the body, and the binding's attributes.
type BrokerRequest = (String, String, Vec<(String, String)>);

/// Where a broker sink publishes `event`, the body, and the binding's attributes.
fn broker_request(
    sink: &ofe_crds::SinkSpec,
    preview: &SinkPreview,
    event: &Event,
) -> Result<BrokerRequest, String> {
    let text = |bytes: &[u8]| String::from_utf8_lossy(bytes).into_owned();
    let attributes = |prefix: &str| -> Vec<(String, String)> {
        ofe_core::event::binary_attributes(event)
            .into_iter()
            .map(|(name, value)| (format!("{prefix}{name}"), value.to_string()))
            .chain(event.datacontenttype().map(|c| ("content-type".to_string(), c.to_string())))
            .collect()
    };
    let data = text(&ofe_core::event::data_bytes(event));
    if let Some(k) = &sink.kafka {
        let mut headers = attributes("ce_");
        let key = match &preview.kafka_key {
            Some(program) => {
                let value = EventData::new(event).try_eval(program)?;
                Some(crate::sink::http::request::scalar(&value)?)
            }
            None => event.extension("partitionkey").map(ToString::to_string),
        };
        if let Some(key) = key {
            headers.insert(0, ("key".into(), key));
        }
        return Ok((format!("kafka://{}/{}", k.brokers, k.topic), data, headers));
    }
    if let Some(n) = &sink.nats {
        // Credentials in the URL are not shown.
        let url: Vec<String> = n
            .url
            .split(',')
            .map(|u| match url::Url::parse(u.trim()) {
                Ok(mut parsed) if !parsed.username().is_empty() => {
                    let _ = parsed.set_username("");
                    let _ = parsed.set_password(None);
                    parsed.to_string()
                }
                _ => u.trim().to_string(),
            })
            .collect();
        let url = url.join(",");
        return Ok((format!("{url} {}", n.subject), data, attributes("ce-")));
    }
    if let Some(m) = &sink.mqtt {
        let body = ofe_core::event::to_structured(event)
            .map(|b| text(&b))
            .map_err(|e| ofe_core::chain(&e))?;
        return Ok((format!("mqtt {} (QoS {})", m.topic, m.qos.unwrap_or(1)), body, Vec::new()));
    }
    if let Some(r) = &sink.redis {
        return Ok((
            format!("redis://{}/{} (XADD)", r.redis_host, r.stream),
            data,
            attributes("ce_"),
        ));
    }
    if let Some(a) = &sink.amqp {
        let key = a.routing_key.clone().unwrap_or_default();
        return Ok((
            format!("amqp exchange `{}` routing key `{key}`", a.exchange),
            data,
            attributes("cloudEvents_"),
        ));
    }
    Err("no broker".into())
}
