//! Structural checks of what is not any one adapter's: which fields must go together, names,
//! sinks, references between resources, Trigger inputs and EventBuses. Each EventSource kind's
//! fields are checked in that kind's folder of the eventsource crate, and the CEL checks beside
//! the CEL engine in the trigger crate; `ofe validate` and the operator compose all three.

use std::collections::{BTreeMap, BTreeSet};

use crate::common::SinkSpec;
use crate::diagnostic::Diagnostic;
use crate::duration;
use crate::manifest::{DEFAULT_NAMESPACE, Manifest, Resource};
use crate::{EventBusSpec, EventSource, Trigger};

/// CEL's reserved words, which cannot name an input.
const CEL_RESERVED: &[&str] = &[
    "true",
    "false",
    "null",
    "in",
    "as",
    "break",
    "const",
    "continue",
    "else",
    "for",
    "function",
    "if",
    "import",
    "let",
    "loop",
    "package",
    "namespace",
    "return",
    "var",
    "void",
    "while",
];

/// Whether `name` can be used as a CEL variable: `[_a-zA-Z][_a-zA-Z0-9]*` and not reserved.
pub fn is_cel_identifier(name: &str) -> bool {
    let mut chars = name.chars();
    let first_ok = chars.next().is_some_and(|c| c == '_' || c.is_ascii_alphabetic());
    first_ok
        && chars.all(|c| c == '_' || c.is_ascii_alphanumeric())
        && !CEL_RESERVED.contains(&name)
}

/// Whether an event name is usable: non-empty, letters, digits, `-`, `_` and `.` only.
pub fn is_event_name(name: &str) -> bool {
    !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
}

/// The fields a `secretKeyRef` may set: the ones that take a credential or a certificate.
pub const SECRET_FIELDS: &[&str] = &[
    "apiKey",
    "bearerToken",
    "clientId",
    "clientSecret",
    "secret",
    "saslUsername",
    "saslPassword",
    "caCert",
    "clientCert",
    "clientKey",
    "redisPassword",
    "user",
    "username",
    "password",
    "token",
    "credentialsFile",
    "caFile",
    "certFile",
    "keyFile",
];

/// Fields of [`SECRET_FIELDS`] that take the path of a file: the operator writes the Secret's
/// value to a file and sets its path.
pub const SECRET_FILE_FIELDS: &[&str] = &["credentialsFile", "caFile", "certFile", "keyFile"];

/// One `secretKeyRef` entry of a resource: where it is, and what it names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SecretRef {
    /// Path of the object holding it, e.g. `spec.kafka.orders`.
    pub object: String,
    /// The field it sets, e.g. `saslPassword`.
    pub field: String,
    /// The Secret's name.
    pub name: String,
    /// The key in the Secret.
    pub key: String,
    /// The Secret's namespace, when given.
    pub namespace: Option<String>,
}

/// Every `secretKeyRef` entry under `spec` (the resource's spec as JSON).
pub fn secret_refs(spec: &serde_json::Value) -> Vec<SecretRef> {
    fn walk(value: &serde_json::Value, path: &str, out: &mut Vec<SecretRef>) {
        match value {
            serde_json::Value::Object(map) => {
                if let Some(serde_json::Value::Object(refs)) = map.get("secretKeyRef") {
                    for (field, selector) in refs {
                        let text = |k: &str| selector.get(k).and_then(|v| v.as_str());
                        out.push(SecretRef {
                            object: path.to_string(),
                            field: field.clone(),
                            name: text("name").unwrap_or_default().to_string(),
                            key: text("key").unwrap_or_default().to_string(),
                            namespace: text("namespace").map(str::to_string),
                        });
                    }
                }
                for (k, v) in map.iter().filter(|(k, _)| *k != "secretKeyRef") {
                    walk(v, &format!("{path}.{k}"), out);
                }
            }
            serde_json::Value::Array(items) => {
                for (i, v) in items.iter().enumerate() {
                    walk(v, &format!("{path}[{i}]"), out);
                }
            }
            _ => {}
        }
    }
    let mut out = Vec::new();
    walk(spec, "spec", &mut out);
    out
}

/// The `secretKeyRef` entries of a resource, checked: each sets a credential field and names a
/// Secret and key; a ClusterEventBus names the namespace too.
fn check_secret_refs(resource: &Resource) -> Vec<Diagnostic> {
    let value = resource.to_value().unwrap_or_default();
    let mut out = Vec::new();
    for r in secret_refs(&value["spec"]) {
        let path = format!("{}.secretKeyRef.{}", r.object, r.field);
        if !SECRET_FIELDS.contains(&r.field.as_str()) {
            out.push(Diagnostic::error(
                path.clone(),
                format!(
                    "`{}` is not a credential field; a Secret can set {}",
                    r.field,
                    SECRET_FIELDS.join(", ")
                ),
            ));
        }
        if r.name.is_empty() || r.key.is_empty() {
            out.push(Diagnostic::error(path.clone(), "set both `name` and `key` of the Secret"));
        }
        if matches!(resource, Resource::ClusterEventBus(_)) && r.namespace.is_none() {
            out.push(Diagnostic::error(
                path,
                "a ClusterEventBus has no namespace of its own; set the Secret's `namespace`",
            ));
        }
    }
    out
}

/// Checks one resource on its own.
pub fn check_resource(resource: &Resource) -> Vec<Diagnostic> {
    let mut out = match resource {
        Resource::EventSource(es) => check_event_source(es),
        Resource::Trigger(t) => check_trigger(t),
        Resource::EventBus(b) => check_bus(&b.spec),
        Resource::ClusterEventBus(b) => check_bus(&b.spec.0),
    };
    out.extend(check_secret_refs(resource));
    out
}

fn check_event_source(es: &EventSource) -> Vec<Diagnostic> {
    let spec = &es.spec;
    let mut out = Vec::new();
    let has_bus = spec.event_bus.as_deref().is_some_and(|b| !b.is_empty());
    if !has_bus && spec.sink.is_none() {
        out.push(Diagnostic::error(
            "spec",
            "neither eventBus nor sink is set; set spec.eventBus to publish to a bus, \
             spec.sink to call a function, or both",
        ));
    }
    if let Some(sink) = &spec.sink {
        out.extend(check_sink("spec.sink", sink));
    }
    let events = spec.events();
    if events.is_empty() {
        // OpenFunction accepts it (and runs nothing); so does ofe, with a word.
        out.push(Diagnostic::warning(
            "spec",
            "defines no events, so it does nothing; add one under spec.amqp, spec.cron, spec.kafka, spec.mqtt, spec.nats, spec.redis or spec.webhook",
        ));
    }
    // One name under several kinds is allowed, as in OpenFunction: every kind feeds that event.
    for (kind, name) in events {
        let path = format!("spec.{}.{name}", kind.field());
        if !is_event_name(name) {
            out.push(Diagnostic::error(
                path.clone(),
                "event names may use only letters, digits, `-`, `_` and `.`; rename the event",
            ));
        }
    }
    out
}

/// Why a sink's URI cannot be used: what is wrong, with the fix.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct UriError(String);

/// `uri` as an absolute http(s) URL, parsed; the error says what is wrong and the fix. The
/// check `ofe validate` makes and the parse delivery uses are this one function.
pub fn http_url(uri: &str) -> Result<url::Url, UriError> {
    let fix = "write the full URL, e.g. http://host:8080/path";
    match url::Url::parse(uri) {
        Ok(url) if matches!(url.scheme(), "http" | "https") && url.has_host() => Ok(url),
        Ok(_) => {
            Err(UriError(format!("`{uri}` is not an absolute http:// or https:// URL; {fix}")))
        }
        Err(e) => Err(UriError(format!("`{uri}` is not a valid URL ({e}); {fix}"))),
    }
}

/// One part of a sink URI (ofe addition): text, or a CEL expression in braces, with the
/// 1-based column where the expression starts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum UriPart {
    /// Text, sent as it is.
    Text(String),
    /// An expression whose value is percent-encoded into the URI.
    Expression {
        /// The expression, without its braces.
        text: String,
        /// Where it starts in the URI.
        column: usize,
    },
}

/// Splits a sink URI into text and `{expression}` parts. Braces inside an expression nest
/// (a CEL map) and quotes are skipped. Expressions may stand only in the path, query or
/// fragment: what they give is percent-encoded, which a host or scheme cannot take.
pub fn uri_template(uri: &str) -> Result<Vec<UriPart>, UriError> {
    let mut parts = Vec::new();
    let mut text = String::new();
    let mut chars = uri.char_indices().peekable();
    while let Some((at, c)) = chars.next() {
        if c == '}' {
            return Err(UriError(format!(
                "`{uri}` has a `}}` at column {} that closes nothing; expressions are written                  `{{data.vehicleId}}`",
                at + 1
            )));
        }
        if c != '{' {
            text.push(c);
            continue;
        }
        let (mut depth, mut quote, mut expression) = (1, None, String::new());
        for (_, c) in chars.by_ref() {
            match (quote, c) {
                (Some(q), c) if c == q => quote = None,
                (Some(_), _) => {}
                (None, '\'' | '"') => quote = Some(c),
                (None, '{') => depth += 1,
                (None, '}') => {
                    depth -= 1;
                    if depth == 0 {
                        break;
                    }
                }
                _ => {}
            }
            expression.push(c);
        }
        if depth != 0 {
            return Err(UriError(format!(
                "`{uri}` opens an expression at column {} and does not close it; end it with `}}`",
                at + 1
            )));
        }
        if expression.trim().is_empty() {
            return Err(UriError(format!(
                "`{uri}` has an empty expression at column {}; write one, e.g. `{{data.id}}`",
                at + 1
            )));
        }
        let authority_done =
            text.find("://").is_some_and(|i| text[i + 3..].contains(['/', '?', '#']));
        if parts.is_empty() && !authority_done {
            return Err(UriError(format!(
                "`{uri}` has an expression at column {} before its path; an expression may stand                  only in the path, query or fragment, e.g. `http://host/items/{{data.id}}`",
                at + 1
            )));
        }
        parts.push(UriPart::Text(std::mem::take(&mut text)));
        parts.push(UriPart::Expression { text: expression, column: at + 2 });
    }
    if !text.is_empty() {
        parts.push(UriPart::Text(text));
    }
    Ok(parts)
}

/// The URL of a sink URI with each expression as `x`: what [`http_url`] checks, and what
/// names the sink in logs.
pub fn uri_shape(parts: &[UriPart]) -> String {
    parts
        .iter()
        .map(|p| match p {
            UriPart::Text(t) => t.as_str(),
            UriPart::Expression { .. } => "x",
        })
        .collect()
}

/// A sink's `uri` as the URL that names it (each expression as `x`), checked as [`http_url`]
/// checks it: what `ofe validate` and the sink's plan both read.
pub fn sink_url(uri: &str) -> Result<url::Url, UriError> {
    uri_template(uri).and_then(|parts| http_url(&uri_shape(&parts)))
}

/// Why a header name cannot be set on a sink, if it cannot.
fn header_problem(name: &str) -> Option<String> {
    let token = !name.is_empty()
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
    let lower = name.to_ascii_lowercase();
    if !token {
        Some(format!("`{name}` is not an HTTP header name; use letters, digits and `-`"))
    } else if lower.starts_with("ce-") || lower == "content-type" {
        Some(format!(
            "`{name}` belongs to the CloudEvents binding, which ofe writes; set the event's \
             attribute instead (a subscriber's `transform.attributes`)"
        ))
    } else {
        None
    }
}

/// Checks a sink's `auth`: at most one scheme, whole (a field counts when it is set or read
/// from a Secret), an API key header ofe may set, a token endpoint that is a URL, and a
/// client certificate with its key; at least a scheme or a certificate.
fn check_sink_auth(path: &str, auth: &crate::SinkAuth) -> Vec<Diagnostic> {
    let has = |value: &Option<String>, field: &str| {
        value.is_some() || auth.secret_key_ref.contains_key(field)
    };
    let schemes = [
        ("bearerToken", has(&auth.bearer_token, "bearerToken")),
        (
            "username and password",
            has(&auth.username, "username") || has(&auth.password, "password"),
        ),
        ("apiKey", has(&auth.api_key, "apiKey")),
        ("oauth2", auth.oauth2.is_some()),
    ];
    let set: Vec<&str> = schemes.iter().filter(|(_, on)| *on).map(|(name, _)| *name).collect();
    let mut out = Vec::new();
    match set.as_slice() {
        [] if auth.tls.is_none() => out.push(Diagnostic::error(
            path,
            "names no credential; set `bearerToken`, `username` and `password`, `apiKey` \
             (each, or its `secretKeyRef`), `oauth2`, or a client certificate in `tls`",
        )),
        [] | [_] => {}
        many => out.push(Diagnostic::error(
            path,
            format!("sets {}; keep one way to authenticate", many.join(" and ")),
        )),
    }
    if has(&auth.username, "username") != has(&auth.password, "password") {
        out.push(Diagnostic::error(
            path,
            "basic authentication needs both `username` and `password`; set the other one",
        ));
    }
    if let Some(header) = &auth.api_key_header {
        if let Some(problem) = header_problem(header) {
            out.push(Diagnostic::error(format!("{path}.apiKeyHeader"), problem));
        }
        if !has(&auth.api_key, "apiKey") {
            out.push(Diagnostic::error(
                format!("{path}.apiKeyHeader"),
                "is set without `apiKey`; set the key (or its `secretKeyRef`)",
            ));
        }
    }
    if let Some(oauth2) = &auth.oauth2 {
        let at = format!("{path}.oauth2");
        if let Err(e) = http_url(&oauth2.token_url) {
            out.push(Diagnostic::error(format!("{at}.tokenUrl"), e.to_string()));
        }
        for field in ["clientId", "clientSecret"] {
            let value = if field == "clientId" { &oauth2.client_id } else { &oauth2.client_secret };
            if value.is_none() && !oauth2.secret_key_ref.contains_key(field) {
                out.push(Diagnostic::error(
                    &at,
                    format!("the client credentials grant needs `{field}`; set it (or its `secretKeyRef`)"),
                ));
            }
        }
        for name in oauth2.endpoint_params.keys() {
            if matches!(name.as_str(), "grant_type" | "scope" | "client_id" | "client_secret") {
                out.push(Diagnostic::error(
                    format!("{at}.endpointParams.{name}"),
                    "is a parameter ofe sets itself; use `scopes`, `clientId` or `clientSecret`",
                ));
            }
        }
    }
    if let Some(tls) = &auth.tls {
        let file = |value: &Option<String>, field: &str| {
            value.is_some() || tls.secret_key_ref.contains_key(field)
        };
        let (cert, key) = (file(&tls.cert_file, "certFile"), file(&tls.key_file, "keyFile"));
        if cert != key || !(cert || file(&tls.ca_file, "caFile")) {
            out.push(Diagnostic::error(
                format!("{path}.tls"),
                "a client certificate needs both `certFile` and `keyFile` (each, or its \
                 `secretKeyRef`); set the other one",
            ));
        }
    }
    out
}

/// Checks a sink: `uri` or `ref` must be set, a `uri` must be an absolute HTTP(S) URL (its
/// expressions aside), and header names must be headers ofe may set.
pub fn check_sink(path: &str, sink: &SinkSpec) -> Vec<Diagnostic> {
    let mut out = Vec::new();
    for (field, headers) in [("headers", &sink.headers), ("dynamicHeaders", &sink.dynamic_headers)]
    {
        for name in headers.iter().flatten().map(|(name, _)| name) {
            if let Some(problem) = header_problem(name) {
                out.push(Diagnostic::error(format!("{path}.{field}.{name}"), problem));
            }
        }
    }
    for (name, value) in sink.headers.iter().flatten() {
        if value.bytes().any(|b| b.is_ascii_control() && b != b'\t') {
            out.push(Diagnostic::error(
                format!("{path}.headers.{name}"),
                "holds a control character (a line break?); a header value is one line",
            ));
        }
    }
    if let Some(auth) = &sink.auth {
        out.extend(check_sink_auth(&format!("{path}.auth"), auth));
    }
    let brokers = sink.brokers();
    if !brokers.is_empty() {
        out.extend(check_broker_sink(path, sink, &brokers));
        return out;
    }
    match (&sink.uri, &sink.r#ref) {
        (None, None) => out.push(Diagnostic::error(
            path,
            "neither uri nor ref is set; add `uri: http://...` or a `ref` to a Knative Service or Function",
        )),
        (Some(uri), _) => {
            if let Err(message) = sink_url(uri) {
                out.push(Diagnostic::error(format!("{path}.uri"), message.to_string()));
            }
        }
        (None, Some(r)) => {
            let supported = matches!(
                (r.api_version.as_str(), r.kind.as_str()),
                ("serving.knative.dev/v1", "Service")
                    | ("core.openfunction.io/v1beta1" | "core.openfunction.io/v1beta2", "Function")
            );
            if supported {
                out.push(Diagnostic::warning(
                    format!("{path}.ref"),
                    format!(
                        "{} `{}` is resolved in Kubernetes mode; standalone, `ofe run` needs \
                         --ref-url-template (e.g. `http://{{name}}.{{namespace}}.svc.cluster.local`) \
                         or a `uri`",
                        r.kind, r.name
                    ),
                ));
            } else {
                out.push(Diagnostic::error(
                    format!("{path}.ref"),
                    format!(
                        "{} {} cannot be resolved to an address; reference a serving.knative.dev/v1 \
                         Service or a core.openfunction.io/v1beta1 or v1beta2 Function, or use uri",
                        r.api_version, r.kind
                    ),
                ));
            }
        }
    }
    out
}

/// Checks a sink that is a broker: one broker, no HTTP fields beside it, and the broker's
/// own fields.
fn check_broker_sink(path: &str, sink: &SinkSpec, brokers: &[&str]) -> Vec<Diagnostic> {
    let mut out = Vec::new();
    if let [_, _, ..] = brokers {
        out.push(Diagnostic::error(
            path,
            format!("names {}; a sink publishes to one broker", brokers.join(" and ")),
        ));
    }
    let http = [
        ("uri", sink.uri.is_some()),
        ("ref", sink.r#ref.is_some()),
        ("method", sink.method.is_some()),
        ("headers", sink.headers.is_some()),
        ("dynamicHeaders", sink.dynamic_headers.is_some()),
        ("mode", sink.mode.is_some()),
        ("auth", sink.auth.is_some()),
    ];
    for (field, _) in http.iter().filter(|(_, set)| *set) {
        out.push(Diagnostic::error(
            format!("{path}.{field}"),
            format!(
                "is an HTTP sink's field, but this sink publishes to {}; remove it (the \
                 broker's own fields say how to connect)",
                brokers[0]
            ),
        ));
    }
    let mut error = |field: String, message: &str| {
        out.push(Diagnostic::error(format!("{path}.{field}"), message.to_string()));
    };
    let wildcard = |s: &str| s.contains(['*', '>', '+', '#']);
    if let Some(k) = &sink.kafka {
        if k.brokers.trim().is_empty() {
            error(
                "kafka.brokers".into(),
                "is empty; list the bootstrap brokers, e.g. `kafka:9092`",
            );
        }
        if k.topic.is_empty() {
            error("kafka.topic".into(), "is empty; name the topic");
        }
        let has = |v: &Option<String>, f: &str| v.is_some() || k.secret_key_ref.contains_key(f);
        if has(&k.sasl_username, "saslUsername") != has(&k.sasl_password, "saslPassword") {
            error(
                "kafka".into(),
                "SASL needs both `saslUsername` and `saslPassword`; set the other one",
            );
        }
        if let Some(m) = &k.sasl_mechanism
            && !matches!(m.as_str(), "PLAIN" | "SCRAM-SHA-256" | "SCRAM-SHA-512")
        {
            error("kafka.saslMechanism".into(), "use PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512");
        }
    }
    if let Some(n) = &sink.nats {
        if n.url.trim().is_empty() {
            error("nats.url".into(), "is empty; give the server, e.g. `nats://nats:4222`");
        }
        if n.subject.is_empty() || wildcard(&n.subject) || n.subject.contains(' ') {
            error("nats.subject".into(), "must be one subject, without wildcards or spaces");
        }
    }
    if let Some(m) = &sink.mqtt {
        let scheme = m.url.split("://").next().unwrap_or_default();
        if !m.url.contains("://") || !matches!(scheme, "tcp" | "mqtt" | "ssl" | "mqtts") {
            error(
                "mqtt.url".into(),
                "use tcp://host:1883 or ssl://host:8883 (also mqtt://, mqtts://)",
            );
        }
        if m.topic.is_empty() || wildcard(&m.topic) {
            error("mqtt.topic".into(), "must be one topic, without the wildcards `+` and `#`");
        }
        if let Some(qos) = m.qos
            && !matches!(qos, 1 | 2)
        {
            error(
                "mqtt.qos".into(),
                "use 1 or 2: ofe counts an event delivered when the broker acknowledges it, and \
                 QoS 0 has no acknowledgement",
            );
        }
    }
    if let Some(r) = &sink.redis {
        if r.redis_host.trim().is_empty() {
            error("redis.redisHost".into(), "is empty; give `host:port`");
        }
        if r.stream.is_empty() {
            error("redis.stream".into(), "is empty; name the stream");
        }
    }
    if let Some(a) = &sink.amqp {
        let scheme = a.url.split("://").next().unwrap_or_default();
        if !a.url.contains("://") || !matches!(scheme, "amqp" | "amqps") {
            error("amqp.url".into(), "use amqp://user:password@host:5672/vhost or amqps://");
        }
    }
    out
}

fn check_trigger(t: &Trigger) -> Vec<Diagnostic> {
    let spec = &t.spec;
    let mut out = Vec::new();
    if spec.event_bus.is_empty() {
        out.push(Diagnostic::error("spec.eventBus", "is empty; name an EventBus, e.g. `default`"));
    }
    if spec.inputs.is_empty() {
        out.push(Diagnostic::error("spec.inputs", "is empty; add at least one input"));
    }
    for (name, input) in &spec.inputs {
        let path = format!("spec.inputs.{name}");
        if !is_cel_identifier(name) {
            out.push(Diagnostic::error(
                path.clone(),
                format!(
                    "`{name}` is not a valid CEL identifier, so conditions cannot refer to it; \
                     use letters, digits and `_`, not starting with a digit (e.g. `{}`)",
                    suggest_identifier(name)
                ),
            ));
        }
        match (&input.topic, &input.event_source, &input.event) {
            (Some(_), None, None) => {}
            (Some(_), _, _) => out.push(Diagnostic::error(
                path,
                "sets topic together with eventSource/event; an input reads either a topic or an event",
            )),
            (None, Some(_), Some(_)) => {}
            (None, None, _) => out.push(Diagnostic::error(
                path,
                "required field `eventSource` is missing; add it (or `topic` to read a bus topic)",
            )),
            (None, Some(_), None) => out.push(Diagnostic::error(
                path,
                "required field `event` is missing; add the event name defined by the EventSource",
            )),
        }
    }
    if spec.subscribers.is_empty() {
        out.push(Diagnostic::error("spec.subscribers", "is empty; add at least one subscriber"));
    }
    for (i, sub) in spec.subscribers.iter().enumerate() {
        let path = format!("spec.subscribers[{i}]");
        if sub.sink.is_none() && sub.topic.is_none() {
            out.push(Diagnostic::error(
                path.clone(),
                "has neither sink nor topic; add `sink: {uri: ...}` or `topic: <name>`",
            ));
        }
        let knative_dead_letter = sub.delivery.as_ref().and_then(|d| d.dead_letter_sink.clone());
        for (field, sink) in [
            ("sink", &sub.sink),
            ("deadLetterSink", &sub.dead_letter_sink),
            ("delivery.deadLetterSink", &knative_dead_letter),
        ] {
            if let Some(sink) = sink {
                out.extend(check_sink(&format!("{path}.{field}"), sink));
            }
        }
        for (field, topic) in [
            ("topic", &sub.topic),
            ("deadLetterTopic", &sub.dead_letter_topic),
            ("replyTopic", &sub.reply_topic),
        ] {
            if topic.as_deref().is_some_and(|t| !is_event_name(t)) {
                out.push(Diagnostic::error(
                    format!("{path}.{field}"),
                    "topic names may use only letters, digits, `-`, `_` and `.`; rename it",
                ));
            }
        }
        if sub.dead_letter_sink.is_some() && sub.sink.is_none() {
            out.push(Diagnostic::warning(
                format!("{path}.deadLetterSink"),
                "has no effect without sink; it receives events whose sink delivery failed",
            ));
        }
        if sub.dead_letter_topic.is_some() && sub.topic.is_none() {
            out.push(Diagnostic::warning(
                format!("{path}.deadLetterTopic"),
                "has no effect without topic; it receives events whose topic publish failed",
            ));
        }
    }
    if let Some(Err(e)) = spec.window.as_deref().map(duration::parse) {
        out.push(Diagnostic::error("spec.window", e.to_string()));
    }
    out
}

fn suggest_identifier(name: &str) -> String {
    let mut s: String =
        name.chars().map(|c| if c.is_ascii_alphanumeric() { c } else { '_' }).collect();
    if s.chars().next().is_none_or(|c| c.is_ascii_digit()) {
        s.insert(0, '_');
    }
    // A reserved word (`in`, `true`, `null`, ...) is made valid the same way: `in_`.
    if !is_cel_identifier(&s) {
        s.push('_');
    }
    s
}

fn check_bus(spec: &EventBusSpec) -> Vec<Diagnostic> {
    let mut out = Vec::new();
    let backends = spec.backends();
    if backends.len() > 1 {
        let names: Vec<&str> = backends.iter().map(|(_, n)| *n).collect();
        out.push(Diagnostic::error(
            "spec",
            format!("sets several backends ({}); keep exactly one", names.join(", ")),
        ));
    }
    if spec.nats_streaming.is_some() {
        out.push(Diagnostic::warning(
            "spec.natsStreaming",
            "NATS Streaming is end-of-life; ofe serves this bus with NATS JetStream at natsURL \
             (enable JetStream on that server, or switch to spec.jetstream)",
        ));
    }
    let ages = [
        ("spec.embedded.maxAge", spec.embedded.as_ref().and_then(|e| e.max_age.as_deref())),
        ("spec.memory.maxAge", spec.memory.as_ref().and_then(|m| m.max_age.as_deref())),
    ];
    for (field, age) in ages {
        if let Some(Err(e)) = age.map(duration::parse) {
            out.push(Diagnostic::error(field, e.to_string()));
        }
    }
    if let Some(js) = &spec.jetstream {
        for (field, value) in [
            ("maxAge", &js.max_age),
            ("duplicateWindow", &js.duplicate_window),
            ("ackWait", &js.ack_wait),
        ] {
            if let Some(Err(e)) = value.as_deref().map(duration::parse) {
                out.push(Diagnostic::error(format!("spec.jetstream.{field}"), e.to_string()));
            }
        }
        if js.max_deliver.is_some_and(|n| n < 1) {
            out.push(Diagnostic::error("spec.jetstream.maxDeliver", "must be at least 1"));
        }
        if let Some(mode) =
            js.topic_mode.as_deref().filter(|m| !["binary", "structured"].contains(m))
        {
            out.push(Diagnostic::error(
                "spec.jetstream.topicMode",
                format!("is `{mode}`; use `binary` or `structured`"),
            ));
        }
        if let Some(auth) = &js.auth {
            let ways = [
                auth.user.is_some() || auth.password.is_some(),
                auth.token.is_some(),
                auth.credentials_file.is_some(),
            ];
            if ways.iter().filter(|w| **w).count() > 1 {
                out.push(Diagnostic::error(
                    "spec.jetstream.auth",
                    "sets more than one way to authenticate; keep user/password, token or credentialsFile",
                ));
            }
            if auth.user.is_some() != auth.password.is_some() {
                out.push(Diagnostic::error(
                    "spec.jetstream.auth",
                    "user and password go together; set both",
                ));
            }
        }
        if let Some(tls) = &js.tls
            && tls.cert_file.is_some() != tls.key_file.is_some()
        {
            out.push(Diagnostic::error(
                "spec.jetstream.tls",
                "certFile and keyFile go together; set both",
            ));
        }
    }
    if let Some(kafka) = &spec.kafka {
        if let Some(m) = kafka.sasl.as_ref().and_then(|s| s.mechanism.as_deref())
            && !matches!(m, "PLAIN" | "SCRAM-SHA-256" | "SCRAM-SHA-512")
        {
            out.push(Diagnostic::error(
                "spec.kafka.sasl.mechanism",
                format!("`{m}` is not supported; use PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512"),
            ));
        }
        if kafka.partitions.is_some_and(|p| p < 1) {
            out.push(Diagnostic::error("spec.kafka.partitions", "must be at least 1"));
        }
        if let Some(tls) = &kafka.tls
            && tls.cert_file.is_some() != tls.key_file.is_some()
        {
            out.push(Diagnostic::error(
                "spec.kafka.tls",
                "certFile and keyFile go together; set both",
            ));
        }
    }
    let sizes = [
        ("spec.embedded.maxBytes", spec.embedded.as_ref().and_then(|e| e.max_bytes)),
        ("spec.memory.maxBytes", spec.memory.as_ref().and_then(|m| m.max_bytes)),
    ];
    for (field, size) in sizes {
        if size.is_some_and(|b| b < 1 << 20) {
            out.push(Diagnostic::error(field, "must be at least 1048576 (1 MiB)"));
        }
    }
    out
}

/// Checks that span resources: duplicates, Trigger inputs naming events no EventSource in
/// the set defines (a warning, since the EventSource may be applied separately), and inputs
/// reading another namespace's events or topics without its leave (an error).
pub fn check_set(manifests: &[Manifest]) -> Vec<Diagnostic> {
    let mut out = check_namespaces(manifests);
    let mut seen = BTreeMap::new();
    let mut events = BTreeSet::new();
    for m in manifests {
        let key = (m.resource.kind(), m.resource.namespace(), m.resource.name());
        if let Some(first) = seen.insert(key, &m.origin) {
            out.push(
                Diagnostic::error(
                    "metadata.name",
                    format!(
                        "{} `{}` is defined twice (first at {first}); rename or remove one",
                        m.resource.kind(),
                        m.resource.name()
                    ),
                )
                .at(&m.origin),
            );
        }
        if let Resource::EventSource(es) = &m.resource {
            for event in es.spec.event_names() {
                events.insert((
                    m.resource.namespace().unwrap_or(DEFAULT_NAMESPACE),
                    m.resource.name(),
                    event,
                ));
            }
        }
    }
    for m in manifests {
        let Resource::Trigger(t) = &m.resource else { continue };
        let own_ns = m.resource.namespace().unwrap_or(DEFAULT_NAMESPACE);
        for (name, input) in &t.spec.inputs {
            let (Some(es), Some(event)) = (&input.event_source, &input.event) else { continue };
            let ns = input.namespace.as_deref().unwrap_or(own_ns);
            if !events.contains(&(ns, es.as_str(), event.as_str())) {
                out.push(
                    Diagnostic::warning(
                        format!("spec.inputs.{name}"),
                        format!(
                            "no EventSource `{ns}/{es}` with event `{event}` is defined in these files; \
                             check the names, or make sure it is applied separately"
                        ),
                    )
                    .at(&m.origin),
                );
            }
        }
    }
    out
}

/// An input may read another namespace's events only when the EventSource lists its
/// Trigger's namespace in `allowedNamespaces`, and another namespace's topic only when a
/// Trigger publishing it there does. Buses and topics do not keep namespaces apart by
/// themselves (any consumer could read any subject), so this is where tenancy is kept.
fn check_namespaces(manifests: &[Manifest]) -> Vec<Diagnostic> {
    let ns_of = |m: &Manifest| m.resource.namespace().unwrap_or(DEFAULT_NAMESPACE).to_string();
    // Per (namespace, EventSource): who may read it. Per (namespace, topic): who may read it,
    // as the union over the Triggers that publish it.
    let mut sources: BTreeMap<(String, &str), Option<&Vec<String>>> = BTreeMap::new();
    let mut topics: BTreeMap<(String, String), Vec<Option<&Vec<String>>>> = BTreeMap::new();
    for m in manifests {
        match &m.resource {
            Resource::EventSource(es) => {
                sources.insert((ns_of(m), m.resource.name()), es.spec.allowed_namespaces.as_ref());
            }
            Resource::Trigger(t) => {
                // Replies go to `<trigger>-replies` unless the subscriber names a topic.
                let replies = format!("{}-replies", m.resource.name());
                let written = t.spec.subscribers.iter().flat_map(|s| {
                    [
                        s.topic.clone(),
                        s.dead_letter_topic.clone(),
                        Some(s.reply_topic.clone().unwrap_or_else(|| replies.clone())),
                    ]
                });
                for topic in written.flatten() {
                    topics
                        .entry((ns_of(m), topic))
                        .or_default()
                        .push(t.spec.allowed_namespaces.as_ref());
                }
            }
            Resource::EventBus(_) | Resource::ClusterEventBus(_) => {}
        }
    }
    let mut out = Vec::new();
    for m in manifests {
        let Resource::Trigger(t) = &m.resource else { continue };
        let own = ns_of(m);
        for (name, input) in &t.spec.inputs {
            let Some(ns) = input.namespace.as_deref().filter(|ns| *ns != own) else { continue };
            let problem = if let Some(es) = &input.event_source {
                match sources.get(&(ns.to_string(), es.as_str())) {
                    Some(allowed) if crate::eventsource::allows(*allowed, &own) => None,
                    Some(_) => Some(format!(
                        "reads EventSource `{ns}/{es}`, which does not share its events with \
                         namespace `{own}`; add `{own}` to its spec.allowedNamespaces"
                    )),
                    None => Some(format!(
                        "reads EventSource `{ns}/{es}` of another namespace, which is not among \
                         these resources, so nothing shows it shares its events with namespace \
                         `{own}`; apply it with them, listing `{own}` in its spec.allowedNamespaces"
                    )),
                }
            } else if let Some(topic) = &input.topic {
                let writers = topics.get(&(ns.to_string(), topic.clone()));
                let allowed =
                    writers.is_some_and(|w| w.iter().any(|a| crate::eventsource::allows(*a, &own)));
                (!allowed).then(|| {
                    format!(
                        "reads topic `{topic}` of namespace `{ns}`, and no Trigger publishing it \
                         there shares it with namespace `{own}`; add `{own}` to that Trigger's \
                         spec.allowedNamespaces"
                    )
                })
            } else {
                None
            };
            if let Some(problem) = problem {
                let path = format!("spec.inputs.{name}.namespace");
                out.push(Diagnostic::error(path, problem).at(&m.origin));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cel_identifiers() {
        assert!(is_cel_identifier("eventA"));
        assert!(is_cel_identifier("_x1"));
        assert!(!is_cel_identifier("event-a"));
        assert!(!is_cel_identifier("1a"));
        assert!(!is_cel_identifier("in"));
        assert!(!is_cel_identifier(""));
        assert_eq!(suggest_identifier("event-a"), "event_a");
        assert_eq!(suggest_identifier("1a"), "_1a");
        assert_eq!(suggest_identifier("in"), "in_", "a reserved word is not a suggestion");
        assert!(is_cel_identifier(&suggest_identifier("true")));
    }
}

#[cfg(test)]
mod sink_tests {
    use super::*;

    fn sink(yaml: &str) -> Vec<String> {
        let spec: SinkSpec = serde_saphyr::from_str(yaml).expect("yaml");
        check_sink("spec.sink", &spec)
            .into_iter()
            .map(|d| format!("{}: {}", d.path, d.message))
            .collect()
    }

    #[test]
    fn a_sink_authenticates_one_way_and_whole() {
        assert!(
            sink("uri: http://fn\nauth: { secretKeyRef: { bearerToken: { name: a, key: b } } }")
                .is_empty()
        );
        assert!(sink("uri: http://fn\nauth: { username: u, password: p }").is_empty());
        let both = sink("uri: http://fn\nauth: { bearerToken: t, apiKey: k }");
        assert_eq!(
            both,
            ["spec.sink.auth: sets bearerToken and apiKey; keep one way to authenticate"]
        );
        let half = sink("uri: http://fn\nauth: { username: u }");
        assert_eq!(
            half,
            [
                "spec.sink.auth: basic authentication needs both `username` and `password`; set the other one"
            ]
        );
        let header = sink("uri: http://fn\nauth: { apiKey: k, apiKeyHeader: ce-key }");
        assert!(
            header[0].starts_with(
                "spec.sink.auth.apiKeyHeader: `ce-key` belongs to the CloudEvents binding"
            ),
            "{header:?}"
        );
    }

    #[test]
    fn oauth2_and_a_client_certificate_are_checked_whole() {
        let ok = "uri: http://fn\nauth:\n  oauth2:\n    tokenUrl: https://idp/token\n    \
                  clientId: app\n    secretKeyRef: { clientSecret: { name: idp, key: s } }\n  \
                  tls: { certFile: /c.pem, keyFile: /k.pem }";
        assert_eq!(sink(ok), Vec::<String>::new());
        assert!(sink("uri: http://fn\nauth: { tls: { caFile: /ca.pem } }").is_empty());
        let bad = sink(
            "uri: http://fn\nauth:\n  bearerToken: t\n  oauth2:\n    tokenUrl: idp/token\n    \
             clientId: app\n    endpointParams: { scope: x }",
        );
        assert_eq!(
            bad[0],
            "spec.sink.auth: sets bearerToken and oauth2; keep one way to authenticate"
        );
        assert!(bad[1].starts_with("spec.sink.auth.oauth2.tokenUrl: "), "{bad:?}");
        assert_eq!(
            bad[2],
            "spec.sink.auth.oauth2: the client credentials grant needs `clientSecret`; set it (or its `secretKeyRef`)"
        );
        assert!(
            bad[3]
                .starts_with("spec.sink.auth.oauth2.endpointParams.scope: is a parameter ofe sets"),
            "{bad:?}"
        );
        let half = sink("uri: http://fn\nauth: { tls: { certFile: /c.pem } }");
        assert!(
            half[0].starts_with("spec.sink.auth.tls: a client certificate needs both"),
            "{half:?}"
        );
    }

    #[test]
    fn a_broker_sink_is_one_broker_without_http_fields() {
        assert!(sink("kafka: { brokers: k:9092, topic: t, key: data.id }").is_empty());
        assert!(sink("nats: { url: \"nats://n:4222\", subject: a.b, jetstream: true }").is_empty());
        let two = sink(
            "uri: http://fn\nnats: { url: \"nats://n\", subject: a }\nredis: { redisHost: r:6379, stream: s }",
        );
        assert_eq!(two[0], "spec.sink: names nats and redis; a sink publishes to one broker");
        assert!(two[1].starts_with("spec.sink.uri: is an HTTP sink's field"), "{two:?}");
        let bad = sink("mqtt: { url: \"tcp://m:1883\", topic: \"a/#\", qos: 0 }");
        assert_eq!(
            bad[0],
            "spec.sink.mqtt.topic: must be one topic, without the wildcards `+` and `#`"
        );
        assert!(bad[1].starts_with("spec.sink.mqtt.qos: use 1 or 2"), "{bad:?}");
        let amqp = sink("amqp: { url: \"http://rabbit\", exchange: x }");
        assert!(amqp[0].starts_with("spec.sink.amqp.url: use amqp://"), "{amqp:?}");
    }

    #[test]
    fn expressions_stand_only_in_the_path_and_close() {
        assert!(sink("uri: \"http://fn/v/{data.id}?at={time}\"").is_empty());
        let host = sink("uri: \"http://{data.host}/v\"");
        assert!(host[0].contains("before its path"), "{host:?}");
        let open = sink("uri: \"http://fn/v/{data.id\"");
        assert!(open[0].contains("does not close it"), "{open:?}");
        let header = sink("uri: http://fn\nheaders: { Content-Type: text/plain }");
        assert!(
            header[0].starts_with("spec.sink.headers.Content-Type: `Content-Type` belongs"),
            "{header:?}"
        );
    }
}
