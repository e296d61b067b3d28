//! The operator's console on the process's endpoint: `POST /send` publishes a test CloudEvent
//! as an EventSource's event or on a topic, and `GET /tail` streams every step of the events'
//! paths (published, routed, filtered, delivered, retrying, dead-lettered, dropped) as JSON
//! lines; `/pause` and `/resume` hold back and release subscribers, and `/deadletters/...`
//! reads and works on their dead-letter stores. `ofe send`, `ofe tail`, `ofe pause`, `ofe
//! resume` and `ofe deadletters` are their clients.
//!
//! Both inject or reveal events, so they answer only on a loopback endpoint, or to a request
//! bearing the token of `--console-token`; on any other endpoint without a token they answer
//! 403 and say how to enable them. `/healthz`, `/metrics` and `/status` stay open to scrapers.

use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use cloudevents::AttributesReader as _;
use ofe_core::tap::{Stage, Step, Tap};
use ofe_core::{Event, Subject};
use ofe_eventsource::SourceMetrics;
use serde::Deserialize;
use tokio::sync::broadcast;

/// Where events can be sent: per subject, the buses that carry it (a topic read by Triggers
/// on two buses is on both). The data plane rewrites it at every apply.
pub use ofe_runtime::SendTargets as Targets;

/// How often `/tail` writes an empty line while nothing happens, so that a client that left
/// is noticed and stops costing the data plane anything.
const HEARTBEAT: Duration = Duration::from_secs(5);

/// What the console needs of the process.
#[derive(Clone)]
pub struct Console {
    /// The data plane's tap.
    pub tap: Tap,
    /// Where events can be sent.
    pub targets: Targets,
    /// Counts what `/send` publishes as the EventSource's own.
    pub metrics: SourceMetrics,
    /// The bearer token `/send` and `/tail` require, if set.
    pub token: Option<Arc<str>>,
    /// Whether the endpoint listens on loopback only, where no token is needed.
    pub loopback: bool,
    /// The subscribers' pauses, for `/pause`, `/resume` and `/pauses`.
    pub pauses: ofe_runtime::Pauses,
    /// The subscribers' dead-letter stores, for `/deadletters`.
    pub dead_letters: ofe_runtime::DeadLetters,
    /// The subscribers' replays, for `/replay` and `/replays`.
    pub replays: ofe_runtime::Replays,
    /// The mesh the data plane runs, for the web console.
    pub topology: ofe_runtime::Topology,
    /// The console's figures, live and for the last 15 minutes.
    pub history: super::history::History,
    /// Recent steps of every event, while a console is open.
    pub trail: super::trail::Trail,
}

impl Console {
    /// `None` when the request may use the console; else the answer refusing it.
    pub(crate) fn refuse(&self, headers: &HeaderMap) -> Option<Response> {
        let presented = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        match (&self.token, presented) {
            (Some(token), Some(given)) if same(token.as_bytes(), given.as_bytes()) => None,
            (Some(_), _) => Some(text(
                StatusCode::UNAUTHORIZED,
                "this endpoint needs the console token: pass --token (or set OFE_CONSOLE_TOKEN)",
            )),
            (None, _) if self.loopback => None,
            (None, _) => Some(text(
                StatusCode::FORBIDDEN,
                "/send, /tail, /pause, /resume, /deadletters and /replay are off on an endpoint outside loopback; \
                 start ofe with \
                 --console-token (or OFE_CONSOLE_TOKEN) to enable them",
            )),
        }
    }
}

/// Compares in time independent of where the texts differ, so the token cannot be guessed
/// byte by byte.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn text(status: StatusCode, message: impl Into<String>) -> Response {
    (status, [(header::CONTENT_TYPE, "text/plain; charset=utf-8")], message.into() + "\n")
        .into_response()
}

/// Where `/send` publishes.
#[derive(Debug, Deserialize)]
pub struct SendTo {
    /// Namespace of the EventSource or topic; `default` when absent.
    #[serde(default)]
    namespace: Option<String>,
    /// An EventSource, to publish as one of its events.
    #[serde(default)]
    eventsource: Option<String>,
    /// The EventSource's event; may be left out when it has only one.
    #[serde(default)]
    event: Option<String>,
    /// A topic, as Trigger inputs and sinks name it.
    #[serde(default)]
    topic: Option<String>,
}

/// `POST /send`: publishes the CloudEvent in the body (structured JSON) to what the query
/// names, and answers with where it was stored.
pub async fn send(
    State(console): State<Console>,
    Query(to): Query<SendTo>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Some(refusal) = console.refuse(&headers) {
        return refusal;
    }
    let mut event: Event = match serde_json::from_slice(&body) {
        Ok(event) => event,
        Err(e) => {
            return text(
                StatusCode::BAD_REQUEST,
                format!("the body is not a CloudEvent in JSON (structured mode): {e}"),
            );
        }
    };
    let namespace = to.namespace.as_deref().unwrap_or(ofe_crds::manifest::DEFAULT_NAMESPACE);
    let subject = match resolve(&console.targets, namespace, &to) {
        Ok(subject) => subject,
        Err((status, message)) => return text(status, message),
    };
    let buses = console.targets.read().ok().and_then(|t| t.get(&subject).cloned());
    let Some(buses) = buses else {
        return text(StatusCode::NOT_FOUND, format!("nothing runs `{subject}` any more"));
    };
    let labels = match &subject {
        Subject::Event { namespace, source, event: name } => {
            // `/send` keeps the event's own id: none is derived, so any id namespace does.
            let id_namespace = uuid::Uuid::nil();
            let origin = ofe_eventsource::ingest::Origin::of(
                namespace,
                source,
                "send",
                name,
                "",
                id_namespace,
            );
            // As the EventSource's own events are: its name on every event.
            origin.stamp(&mut event);
            Some(origin.labels)
        }
        _ => None,
    };
    let event = Arc::new(event);
    let mut stored = Vec::new();
    for bus in buses {
        match bus.publish_shared(&subject, event.clone()).await {
            Ok(published) => {
                if let Some(labels) = &labels {
                    console.metrics.published(labels, published.duplicate, || event.clone());
                }
                stored.push(serde_json::json!({
                    "subject": subject.to_string(),
                    "bus": bus.backend(),
                    "sequence": published.sequence,
                    "duplicate": published.duplicate,
                }));
            }
            Err(e) => {
                return text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("the bus did not take the event ({}); try again", ofe_core::Report(&e)),
                );
            }
        }
    }
    let body = serde_json::json!({ "id": event.id(), "published": stored });
    (StatusCode::ACCEPTED, [(header::CONTENT_TYPE, "application/json")], body.to_string() + "\n")
        .into_response()
}

/// The subject `to` names in `namespace`, or the answer explaining what is wrong and what
/// could be meant.
fn resolve(
    targets: &Targets,
    namespace: &str,
    to: &SendTo,
) -> Result<Subject, (StatusCode, String)> {
    let known: Vec<Subject> = targets
        .read()
        .map(|t| t.keys().filter(|s| s.namespace() == namespace).cloned().collect())
        .unwrap_or_default();
    let listing = || {
        let names: Vec<String> = known.iter().map(describe).collect();
        if names.is_empty() {
            format!("nothing in namespace `{namespace}` takes events")
        } else {
            format!("in namespace `{namespace}`: {}", names.join(", "))
        }
    };
    let not_found = |what: String| (StatusCode::NOT_FOUND, format!("{what}; {}", listing()));
    match (&to.eventsource, &to.topic) {
        (Some(_), Some(_)) | (None, None) => Err((
            StatusCode::BAD_REQUEST,
            "name either an EventSource (`eventsource`, and `event` when it has several) or a \
             `topic`"
                .into(),
        )),
        (None, Some(topic)) => {
            let subject = Subject::topic(namespace, topic);
            if known.contains(&subject) {
                Ok(subject)
            } else {
                Err(not_found(format!("no Trigger reads or writes topic `{topic}`")))
            }
        }
        (Some(source), None) => {
            let events: Vec<&Subject> = known
                .iter()
                .filter(|s| matches!(s, Subject::Event { source: es, .. } if es == source))
                .collect();
            match (&to.event, events.as_slice()) {
                (_, []) => Err(not_found(format!("no EventSource `{source}` runs here"))),
                (None, [only]) => Ok((*only).clone()),
                (None, _) => Err((
                    StatusCode::BAD_REQUEST,
                    format!(
                        "EventSource `{source}` has several events; name one with `event`: {}",
                        events.iter().map(|s| describe(s)).collect::<Vec<_>>().join(", ")
                    ),
                )),
                (Some(event), _) => {
                    let subject = Subject::event(namespace, source, event);
                    if events.contains(&&subject) {
                        Ok(subject)
                    } else {
                        Err(not_found(format!("EventSource `{source}` has no event `{event}`")))
                    }
                }
            }
        }
    }
}

/// A subject as a user names it.
fn describe(subject: &Subject) -> String {
    match subject {
        Subject::Event { source, event, .. } => format!("eventsource {source} event {event}"),
        Subject::Topic { topic, .. } => format!("topic {topic}"),
        Subject::Queue { .. } => subject.to_string(),
    }
}

/// Which steps `/tail` streams.
#[derive(Debug, Default, Deserialize)]
pub struct TailFilter {
    /// Only this namespace.
    #[serde(default)]
    namespace: Option<String>,
    /// Only this EventSource's steps (its events, and its own sink).
    #[serde(default)]
    source: Option<String>,
    /// Only this Trigger's steps.
    #[serde(default)]
    trigger: Option<String>,
    /// Only these stages, comma-separated, e.g. `delivered,dead-lettered`.
    #[serde(default)]
    stage: Option<String>,
}

impl TailFilter {
    /// The stages `stage` names (all when absent), or which name is unknown and what is known.
    fn stages(&self) -> Result<Vec<Stage>, String> {
        let Some(names) = &self.stage else { return Ok(Stage::ALL.to_vec()) };
        names
            .split(',')
            .map(|name| {
                Stage::from_name(name.trim()).ok_or_else(|| {
                    let known: Vec<&str> = Stage::ALL.iter().map(|s| s.name()).collect();
                    format!("unknown stage `{name}`; use {}", known.join(", "))
                })
            })
            .collect()
    }

    fn wants(&self, stages: &[Stage], step: &Step) -> bool {
        let o = &step.origin;
        stages.contains(&step.stage)
            && self.namespace.as_deref().is_none_or(|ns| ns == o.namespace)
            && self.source.as_deref().is_none_or(|s| o.kind == "EventSource" && s == o.name)
            && self.trigger.as_deref().is_none_or(|t| o.kind == "Trigger" && t == o.name)
    }
}

/// `GET /tail`: every step from now on that passes the filter, one JSON object per line;
/// `{"skipped":N}` when the reader fell behind and N steps were lost to it.
pub async fn tail(
    State(console): State<Console>,
    Query(filter): Query<TailFilter>,
    headers: HeaderMap,
) -> Response {
    if let Some(refusal) = console.refuse(&headers) {
        return refusal;
    }
    let stages = match filter.stages() {
        Ok(stages) => stages,
        Err(e) => return text(StatusCode::BAD_REQUEST, e),
    };
    let rx = console.tap.listen();
    let state = (rx, filter, stages);
    let lines = futures::stream::unfold(state, |(mut rx, filter, stages)| async move {
        loop {
            let line = match tokio::time::timeout(HEARTBEAT, rx.recv()).await {
                Err(_) => "\n".to_string(),
                Ok(Ok(step)) if filter.wants(&stages, &step) => match serde_json::to_string(&*step)
                {
                    Ok(json) => json + "\n",
                    Err(_) => continue,
                },
                Ok(Ok(_)) => continue,
                Ok(Err(broadcast::error::RecvError::Lagged(n))) => format!("{{\"skipped\":{n}}}\n"),
                Ok(Err(broadcast::error::RecvError::Closed)) => return None,
            };
            return Some((Ok::<_, std::convert::Infallible>(line), (rx, filter, stages)));
        }
    });
    (
        [(header::CONTENT_TYPE, "application/x-ndjson"), (header::CACHE_CONTROL, "no-cache")],
        Body::from_stream(lines),
    )
        .into_response()
}

/// `POST /pause?namespace=NS&trigger=NAME[&subscriber=I]`: pauses the Trigger's subscribers
/// (stored on their bus first), and answers with their states as JSON.
pub async fn pause(
    State(console): State<Console>,
    headers: HeaderMap,
    Query(target): Query<ofe_runtime::PauseTarget>,
) -> Response {
    set_paused(&console, &headers, &target, true).await
}

/// `POST /resume?...`: resumes what `/pause` paused (not what `spec.paused` pauses).
pub async fn resume(
    State(console): State<Console>,
    headers: HeaderMap,
    Query(target): Query<ofe_runtime::PauseTarget>,
) -> Response {
    set_paused(&console, &headers, &target, false).await
}

/// `GET /pauses`: every subscriber's pause, as JSON.
pub async fn pauses(State(console): State<Console>, headers: HeaderMap) -> Response {
    if let Some(refused) = console.refuse(&headers) {
        return refused;
    }
    json(&serde_json::json!({ "subscribers": console.pauses.list() }))
}

async fn set_paused(
    console: &Console,
    headers: &HeaderMap,
    target: &ofe_runtime::PauseTarget,
    paused: bool,
) -> Response {
    if let Some(refused) = console.refuse(headers) {
        return refused;
    }
    match console.pauses.set(target, paused).await {
        Ok(states) => json(&serde_json::json!({ "subscribers": states })),
        Err(error @ ofe_runtime::PauseError::NotFound(_)) => {
            text(StatusCode::NOT_FOUND, error.to_string())
        }
        Err(error) => text(StatusCode::SERVICE_UNAVAILABLE, ofe_core::chain(&error)),
    }
}

/// What `/deadletters` routes are asked: which subscribers, and which letters.
#[derive(Debug, Deserialize)]
pub struct LetterQuery {
    /// The Trigger's namespace.
    namespace: String,
    /// The Trigger.
    trigger: String,
    /// One subscriber (its index); every subscriber of the Trigger when absent.
    #[serde(default)]
    subscriber: Option<String>,
    /// One event id (`show`, `redrive`, `purge`).
    #[serde(default)]
    id: Option<String>,
    /// Every letter (`redrive`, `purge`).
    #[serde(default)]
    all: bool,
}

/// What `/deadletters/...` does.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LetterAction {
    /// The letters' summaries.
    List,
    /// Letters of one id, whole.
    Show,
    /// Deliver again, then remove.
    Redrive,
    /// Remove.
    Purge,
}

/// `GET /deadletters/{list|show}?namespace=NS&trigger=NAME[&subscriber=I][&id=ID]` and
/// `POST /deadletters/{redrive|purge}?...&(id=ID|all=true)`: the dead-letter stores of the
/// Trigger's subscribers. Answers JSON with one entry per subscriber.
pub async fn dead_letters(
    State(console): State<Console>,
    headers: HeaderMap,
    axum::extract::Path(action): axum::extract::Path<LetterAction>,
    method: axum::http::Method,
    Query(query): Query<LetterQuery>,
) -> Response {
    use ofe_trigger::deadletters::Selection;
    if let Some(refused) = console.refuse(&headers) {
        return refused;
    }
    let changes = matches!(action, LetterAction::Redrive | LetterAction::Purge);
    if changes != (method == axum::http::Method::POST) {
        let want = if changes { "POST" } else { "GET" };
        return text(StatusCode::METHOD_NOT_ALLOWED, format!("use {want} for this action"));
    }
    let selection = match (&query.id, query.all) {
        (Some(_), true) => {
            return text(StatusCode::BAD_REQUEST, "give either id or all=true, not both");
        }
        (Some(id), false) => Some(Selection::Ids(vec![id.clone()])),
        (None, true) => Some(Selection::All),
        (None, false) => None,
    };
    // Not a flattened `PauseTarget`: a flattened query reads `all=true` as text, not a bool.
    let target = ofe_runtime::PauseTarget {
        namespace: query.namespace.clone(),
        trigger: query.trigger.clone(),
        subscriber: query.subscriber.clone(),
    };
    let stores = match console.dead_letters.find(&target) {
        Ok(stores) => stores,
        Err(message) => return text(StatusCode::NOT_FOUND, message),
    };
    let mut answers = Vec::new();
    for (labels, lazy) in stores {
        let store = match lazy.store().await {
            Ok(store) => store,
            Err(error) => return text(StatusCode::SERVICE_UNAVAILABLE, ofe_core::chain(&error)),
        };
        let answer = match (action, &selection) {
            (LetterAction::List, _) => store.list().await.map(|l| serde_json::json!(l)),
            (LetterAction::Show, Some(Selection::Ids(ids))) => {
                store.show(&ids[0]).await.map(|events| serde_json::json!(events))
            }
            (LetterAction::Redrive, Some(selection)) => {
                store.redrive(selection.clone()).await.map(|r| serde_json::json!(r))
            }
            (LetterAction::Purge, Some(selection)) => {
                store.purge(selection.clone()).await.map(|ids| serde_json::json!(ids))
            }
            (LetterAction::Show, _) => {
                return text(StatusCode::BAD_REQUEST, "show needs the id of the event");
            }
            (_, None) => {
                return text(
                    StatusCode::BAD_REQUEST,
                    "say which letters: the id of one event, or all=true for every one",
                );
            }
        };
        match answer {
            Ok(value) => answers.push(serde_json::json!({
                "namespace": labels.namespace,
                "trigger": labels.trigger,
                "subscriber": labels.subscriber,
                "result": value,
            })),
            Err(error) => return text(StatusCode::SERVICE_UNAVAILABLE, ofe_core::chain(&error)),
        }
    }
    json(&serde_json::json!({ "subscribers": answers }))
}

/// `POST /replay?namespace=NS&trigger=NAME[&subscriber=I](&from=RFC3339|&from_start=true)
/// [&to=RFC3339]`: starts a replay of the Trigger's subscribers; answers their progress.
pub async fn replay(
    State(console): State<Console>,
    headers: HeaderMap,
    Query(request): Query<ofe_runtime::ReplayRequest>,
) -> Response {
    if let Some(refused) = console.refuse(&headers) {
        return refused;
    }
    replies(console.replays.start(&request).await)
}

/// What `/replay/cancel` is asked.
#[derive(Debug, Deserialize)]
pub struct ReplayId {
    /// The replay's id.
    id: String,
}

/// `POST /replay/cancel?id=ID`: cancels a replay; answers its progress.
pub async fn cancel_replay(
    State(console): State<Console>,
    headers: HeaderMap,
    Query(replay): Query<ReplayId>,
) -> Response {
    if let Some(refused) = console.refuse(&headers) {
        return refused;
    }
    replies(console.replays.cancel(&replay.id))
}

/// `GET /replays`: every replay's progress, oldest first.
pub async fn replays(State(console): State<Console>, headers: HeaderMap) -> Response {
    if let Some(refused) = console.refuse(&headers) {
        return refused;
    }
    replies(Ok(console.replays.list()))
}

fn replies(
    result: Result<Vec<ofe_trigger::replay::Progress>, ofe_runtime::ReplayError>,
) -> Response {
    use ofe_runtime::ReplayError;
    match result {
        Ok(progress) => json(&serde_json::json!({ "replays": progress })),
        Err(e @ ReplayError::NotFound(_)) => text(StatusCode::NOT_FOUND, e.to_string()),
        Err(e @ ReplayError::Invalid(_)) => text(StatusCode::BAD_REQUEST, e.to_string()),
        Err(e @ ReplayError::Refused(_)) => text(StatusCode::CONFLICT, e.to_string()),
    }
}

fn json(value: &serde_json::Value) -> Response {
    (StatusCode::OK, [(header::CONTENT_TYPE, "application/json")], value.to_string())
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_token_must_match_exactly() {
        assert!(same(b"secret", b"secret"));
        assert!(!same(b"secret", b"secreT"));
        assert!(!same(b"secret", b"secret2"));
        assert!(!same(b"", b"x"));
    }

    #[test]
    fn a_filter_names_known_stages_only() {
        let filter =
            TailFilter { stage: Some("delivered, dead-lettered".into()), ..Default::default() };
        assert_eq!(filter.stages(), Ok(vec![Stage::Delivered, Stage::DeadLettered]));
        let filter = TailFilter { stage: Some("delivred".into()), ..Default::default() };
        let error = filter.stages().expect_err("a typo is refused");
        assert!(error.contains("delivred") && error.contains("dead-lettered"), "{error}");
    }
}
