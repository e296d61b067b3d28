//! A small Kubernetes API server for tests: enough of the REST API for `ofe operator` (list,
//! watch, get, create, replace, merge patch, status subresource, delete), with
//! `resourceVersion` conflicts and `metadata.generation` kept as the real one keeps them. No
//! kube-apiserver can be installed on the build machines, so the operator's tests talk to this
//! over real HTTP, through the real kube client.

use std::collections::{BTreeMap, BTreeSet};
use std::convert::Infallible;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{Method, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use tokio::sync::broadcast;

/// A collection: API group/version and plural (`events.openfunction.io/v1alpha1/triggers`).
type Collection = String;

#[derive(Default)]
struct Store {
    version: u64,
    objects: BTreeMap<Collection, BTreeMap<(String, String), Value>>,
    /// Every change, to replay to a watch that starts from an older version.
    log: Vec<(u64, Collection, &'static str, Value)>,
    installed: BTreeSet<Collection>,
    requests: Vec<ApiCall>,
}

/// One request the server answered, as RBAC sees it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct ApiCall {
    /// `get`, `list`, `watch`, `create`, `update`, `patch` or `delete`.
    pub verb: String,
    /// The API group (`""` for the core group).
    pub group: String,
    /// The resource, with its subresource: `triggers/status`.
    pub resource: String,
    /// The namespace, `""` for a cluster-wide request.
    pub namespace: String,
}

/// The fake API server. Clones share it.
#[derive(Clone)]
pub struct FakeKube {
    store: Arc<Mutex<Store>>,
    changes: broadcast::Sender<(u64, Collection, &'static str, Value)>,
    /// The server's URL, e.g. `http://127.0.0.1:41234`.
    pub url: String,
}

/// The collections of the four ofe kinds, Leases, Events and Secrets.
pub const STANDARD: &[&str] = &[
    "events.openfunction.io/v1alpha1/eventsources",
    "events.openfunction.io/v1alpha1/eventbuses",
    "events.openfunction.io/v1alpha1/clustereventbuses",
    "events.openfunction.io/v1alpha1/triggers",
    "coordination.k8s.io/v1/leases",
    "events.k8s.io/v1/events",
    "v1/secrets",
];

/// An API error, answered as a `Status` object.
struct ApiError {
    code: u16,
    reason: &'static str,
    message: String,
}

fn status(code: u16, reason: &'static str, message: &str) -> ApiError {
    ApiError { code, reason, message: message.to_string() }
}

impl ApiError {
    fn response(self) -> Response {
        let body = json!({
            "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": self.message, "reason": self.reason, "code": self.code,
        });
        respond(StatusCode::from_u16(self.code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR), &body)
    }
}

fn respond(code: StatusCode, body: &Value) -> Response {
    let text = serde_json::to_vec(body).unwrap_or_default();
    (code, [("content-type", "application/json")], text).into_response()
}

/// RFC 7386 JSON merge patch.
fn merge(target: &mut Value, patch: &Value) {
    let Value::Object(fields) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = json!({});
    }
    if let Value::Object(t) = target {
        for (k, v) in fields {
            if v.is_null() {
                t.remove(k);
            } else {
                merge(t.entry(k.clone()).or_insert(Value::Null), v);
            }
        }
    }
}

/// The parts of a request path.
struct Target {
    collection: Collection,
    namespace: String,
    name: Option<String>,
    subresource: Option<String>,
}

fn parse(path: &str) -> Option<Target> {
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (group_version, rest) = match parts.as_slice() {
        ["api", "v1", rest @ ..] => ("v1".to_string(), rest),
        ["apis", g, v, rest @ ..] => (format!("{g}/{v}"), rest),
        _ => return None,
    };
    let (namespace, rest) = match rest {
        ["namespaces", ns, rest @ ..] if !rest.is_empty() => (ns.to_string(), rest),
        rest => (String::new(), rest),
    };
    let (plural, name, subresource) = match rest {
        [plural] => (plural, None, None),
        [plural, name] => (plural, Some(name.to_string()), None),
        [plural, name, sub] => (plural, Some(name.to_string()), Some(sub.to_string())),
        _ => return None,
    };
    Some(Target { collection: format!("{group_version}/{plural}"), namespace, name, subresource })
}

impl FakeKube {
    /// Serves on a free loopback port, with the [`STANDARD`] collections installed.
    pub async fn start() -> Self {
        let listener =
            tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind the fake API server");
        let url = format!("http://{}", listener.local_addr().expect("address"));
        let (changes, _) = broadcast::channel(4096);
        let kube = Self { store: Arc::default(), changes, url };
        for c in STANDARD {
            kube.install(c);
        }
        let app = axum::Router::new().fallback(handle).with_state(kube.clone());
        tokio::spawn(async move { axum::serve(listener, app).await });
        kube
    }

    /// Installs a collection, e.g. `serving.knative.dev/v1/services`; others answer 404.
    pub fn install(&self, collection: &str) {
        self.store.lock().expect("store").installed.insert(collection.to_string());
    }

    /// A kubeconfig file in `dir` pointing at this server.
    pub fn kubeconfig(&self, dir: &Path) -> PathBuf {
        let path = dir.join("kubeconfig");
        let text = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n    server: {}\n\
             contexts:\n- name: fake\n  context:\n    cluster: fake\n    user: fake\n\
             current-context: fake\nusers:\n- name: fake\n  user: {{}}\n",
            self.url
        );
        std::fs::write(&path, text).expect("write kubeconfig");
        path
    }

    /// The collection of an object's `apiVersion` and `kind`.
    fn collection_of(object: &Value) -> Collection {
        let api_version = object["apiVersion"].as_str().unwrap_or_default();
        let kind = object["kind"].as_str().unwrap_or_default().to_ascii_lowercase();
        let plural = if kind.ends_with('s') { format!("{kind}es") } else { format!("{kind}s") };
        format!("{api_version}/{plural}")
    }

    /// Creates or updates every document of `yaml`, as `kubectl apply` does (cluster-scoped
    /// kinds have no namespace; namespaced ones default to `default`).
    pub fn apply_yaml(&self, yaml: &str) {
        let docs: Vec<Value> = serde_saphyr::from_multiple(yaml).expect("YAML");
        for doc in docs.into_iter().filter(|d| !d.is_null()) {
            self.apply(doc);
        }
    }

    /// Creates or updates one object; its status stays as it is unless `object` has one.
    pub fn apply(&self, mut object: Value) {
        let collection = Self::collection_of(&object);
        let cluster_scoped = collection.ends_with("/clustereventbuses");
        let namespace = if cluster_scoped {
            String::new()
        } else {
            object["metadata"]["namespace"].as_str().unwrap_or("default").to_string()
        };
        if !cluster_scoped {
            object["metadata"]["namespace"] = json!(namespace);
        }
        let name = object["metadata"]["name"].as_str().expect("metadata.name").to_string();
        let mut store = self.store.lock().expect("store");
        let existing = store
            .objects
            .get(&collection)
            .and_then(|c| c.get(&(namespace.clone(), name.clone())))
            .cloned();
        match existing {
            None => {
                drop(store);
                let _ = self.create(&collection, &namespace, object);
            }
            Some(mut current) => {
                let status = current.get("status").cloned();
                let mut meta = current["metadata"].clone();
                merge(&mut meta, &object["metadata"]);
                object["metadata"] = meta;
                // Status is kept unless given (a test plays the controller of other kinds).
                if let (Some(s), None) = (status, object.get("status")) {
                    object["status"] = s;
                }
                bump_generation(&current, &mut object);
                current = object;
                store.commit(&self.changes, &collection, "MODIFIED", current);
            }
        }
    }

    /// Deletes an object; whether it existed.
    pub fn delete(&self, collection: &str, namespace: &str, name: &str) -> bool {
        let mut store = self.store.lock().expect("store");
        let removed = store
            .objects
            .get_mut(collection)
            .and_then(|c| c.remove(&(namespace.to_string(), name.to_string())));
        match removed {
            Some(object) => {
                store.version += 1;
                let v = store.version;
                store.log.push((v, collection.to_string(), "DELETED", object.clone()));
                let _ = self.changes.send((v, collection.to_string(), "DELETED", object));
                true
            }
            None => false,
        }
    }

    /// One object, as stored.
    pub fn get(&self, collection: &str, namespace: &str, name: &str) -> Option<Value> {
        let store = self.store.lock().expect("store");
        store.objects.get(collection)?.get(&(namespace.to_string(), name.to_string())).cloned()
    }

    /// Every distinct request answered so far.
    pub fn requests(&self) -> BTreeSet<ApiCall> {
        self.store.lock().expect("store").requests.iter().cloned().collect()
    }

    /// Every object of a collection.
    pub fn list(&self, collection: &str) -> Vec<Value> {
        let store = self.store.lock().expect("store");
        store.objects.get(collection).map(|c| c.values().cloned().collect()).unwrap_or_default()
    }

    fn create(
        &self,
        collection: &str,
        namespace: &str,
        mut object: Value,
    ) -> Result<Value, ApiError> {
        let mut store = self.store.lock().expect("store");
        if object["metadata"]["name"].as_str().is_none() {
            let prefix =
                object["metadata"]["generateName"].as_str().unwrap_or("object-").to_string();
            object["metadata"]["name"] = json!(format!("{prefix}{}", store.version + 1));
        }
        let name = object["metadata"]["name"].as_str().unwrap_or_default().to_string();
        if store
            .objects
            .get(collection)
            .is_some_and(|c| c.contains_key(&(namespace.to_string(), name.clone())))
        {
            return Err(status(409, "AlreadyExists", &format!("{name} already exists")));
        }
        if !namespace.is_empty() {
            object["metadata"]["namespace"] = json!(namespace);
        }
        object["metadata"]["uid"] = json!(format!("uid-{collection}-{namespace}-{name}"));
        object["metadata"]["generation"] = json!(1);
        object["metadata"]["creationTimestamp"] = json!("2026-01-01T00:00:00Z");
        Ok(store.commit(&self.changes, collection, "ADDED", object))
    }
}

/// Raises `metadata.generation` when anything but metadata and status changed, as the API
/// server does for custom resources.
fn bump_generation(old: &Value, new: &mut Value) {
    let body = |v: &Value| {
        let mut v = v.clone();
        if let Value::Object(m) = &mut v {
            m.remove("metadata");
            m.remove("status");
        }
        v
    };
    let generation = old["metadata"]["generation"].as_i64().unwrap_or(1);
    let next = if body(old) == body(new) { generation } else { generation + 1 };
    new["metadata"]["generation"] = json!(next);
}

impl Store {
    fn commit(
        &mut self,
        changes: &broadcast::Sender<(u64, Collection, &'static str, Value)>,
        collection: &str,
        kind: &'static str,
        mut object: Value,
    ) -> Value {
        self.version += 1;
        object["metadata"]["resourceVersion"] = json!(self.version.to_string());
        let namespace = object["metadata"]["namespace"].as_str().unwrap_or_default().to_string();
        let name = object["metadata"]["name"].as_str().unwrap_or_default().to_string();
        self.objects
            .entry(collection.to_string())
            .or_default()
            .insert((namespace, name), object.clone());
        self.log.push((self.version, collection.to_string(), kind, object.clone()));
        let _ = changes.send((self.version, collection.to_string(), kind, object.clone()));
        object
    }
}

fn query(request: &Request) -> BTreeMap<String, String> {
    request
        .uri()
        .query()
        .unwrap_or_default()
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

async fn handle(State(kube): State<FakeKube>, request: Request) -> Response {
    let Some(target) = parse(request.uri().path()) else {
        return status(404, "NotFound", "no such path").response();
    };
    if !kube.store.lock().expect("store").installed.contains(&target.collection) {
        return status(
            404,
            "NotFound",
            &format!("the server could not find the requested resource ({})", target.collection),
        )
        .response();
    }
    let query = query(&request);
    let method = request.method().clone();
    let verb = match (&method, &target.name) {
        (&Method::GET, None) if query.get("watch").is_some_and(|w| w == "true" || w == "1") => {
            "watch"
        }
        (&Method::GET, None) => "list",
        (&Method::GET, Some(_)) => "get",
        (&Method::POST, _) => "create",
        (&Method::PUT, _) => "update",
        (&Method::PATCH, _) => "patch",
        (&Method::DELETE, _) => "delete",
        _ => "other",
    };
    let mut segments: Vec<&str> = target.collection.split('/').collect();
    let plural = segments.pop().unwrap_or_default().to_string();
    let group = if segments.len() == 2 { segments[0].to_string() } else { String::new() };
    let resource = match &target.subresource {
        Some(sub) => format!("{plural}/{sub}"),
        None => plural,
    };
    kube.store.lock().expect("store").requests.push(ApiCall {
        verb: verb.into(),
        group,
        resource,
        namespace: target.namespace.clone(),
    });
    let body: Bytes = match axum::body::to_bytes(request.into_body(), 16 << 20).await {
        Ok(b) => b,
        Err(_) => return status(400, "BadRequest", "body too large").response(),
    };
    let parsed = || {
        serde_json::from_slice::<Value>(&body)
            .map_err(|e| status(400, "BadRequest", &e.to_string()))
    };
    let Target { collection, namespace, name, subresource } = target;
    let result: Result<Value, ApiError> = match (method, name) {
        (Method::GET, None) if query.get("watch").is_some_and(|w| w == "true" || w == "1") => {
            return watch(&kube, &collection, &namespace, &query);
        }
        (Method::GET, None) => {
            let store = kube.store.lock().expect("store");
            let items: Vec<Value> = store
                .objects
                .get(&collection)
                .map(|c| c.iter().filter(|((ns, _), _)| namespace.is_empty() || *ns == namespace).map(|(_, o)| o.clone()).collect())
                .unwrap_or_default();
            Ok(json!({"apiVersion": "v1", "kind": "List", "metadata": {"resourceVersion": store.version.to_string()}, "items": items}))
        }
        (Method::GET, Some(name)) => kube.get(&collection, &namespace, &name).ok_or_else(|| status(404, "NotFound", &format!("{name} not found"))),
        (Method::POST, None) => parsed().and_then(|o| kube.create(&collection, &namespace, o)),
        (Method::DELETE, Some(name)) => {
            let object = kube.get(&collection, &namespace, &name);
            match object {
                Some(o) if kube.delete(&collection, &namespace, &name) => Ok(o),
                _ => Err(status(404, "NotFound", &format!("{name} not found"))),
            }
        }
        (method @ (Method::PUT | Method::PATCH), Some(name)) => parsed().and_then(|patch| {
            let mut store = kube.store.lock().expect("store");
            let Some(current) = store.objects.get(&collection).and_then(|c| c.get(&(namespace.clone(), name.clone()))).cloned() else {
                return Err(status(404, "NotFound", &format!("{name} not found")));
            };
            let mut next = current.clone();
            if method == Method::PUT {
                let wanted = patch["metadata"]["resourceVersion"].as_str();
                if wanted.is_some_and(|v| Some(v) != current["metadata"]["resourceVersion"].as_str()) {
                    return Err(status(409, "Conflict", "the object has been modified; please apply your changes to the latest version and try again"));
                }
                next = patch;
            } else {
                merge(&mut next, &patch);
            }
            let status_only = subresource.as_deref() == Some("status");
            let has_status = collection.starts_with("events.openfunction.io/");
            if status_only {
                // The status subresource changes status and nothing else.
                let status = next.get("status").cloned();
                next = current.clone();
                if let Some(s) = status {
                    next["status"] = s;
                }
            } else if has_status {
                // With a status subresource, the main resource ignores status.
                match current.get("status") {
                    Some(s) => next["status"] = s.clone(),
                    None => {
                        if let Value::Object(m) = &mut next {
                            m.remove("status");
                        }
                    }
                }
            }
            for keep in ["uid", "creationTimestamp", "name", "namespace"] {
                next["metadata"][keep] = current["metadata"][keep].clone();
            }
            next["metadata"]["generation"] = current["metadata"]["generation"].clone();
            bump_generation(&current, &mut next);
            Ok(store.commit(&kube.changes, &collection, "MODIFIED", next))
        }),
        _ => Err(status(405, "MethodNotAllowed", "not supported by the fake API server")),
    };
    match result {
        Ok(v) => respond(StatusCode::OK, &v),
        Err(e) => e.response(),
    }
}

/// A watch: the changes after `resourceVersion`, then live ones, as JSON lines, until the
/// client's `timeoutSeconds`.
fn watch(
    kube: &FakeKube,
    collection: &str,
    namespace: &str,
    query: &BTreeMap<String, String>,
) -> Response {
    let from: u64 = query.get("resourceVersion").and_then(|v| v.parse().ok()).unwrap_or(0);
    let timeout: u64 =
        query.get("timeoutSeconds").and_then(|v| v.parse().ok()).unwrap_or(290).min(290);
    let mut live = kube.changes.subscribe();
    let backlog: Vec<(u64, Collection, &'static str, Value)> =
        kube.store.lock().expect("store").log.iter().filter(|e| e.0 > from).cloned().collect();
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(1024);
    let (collection, namespace) = (collection.to_string(), namespace.to_string());
    tokio::spawn(async move {
        let wanted = |(_, c, _, o): &(u64, Collection, &'static str, Value)| {
            *c == collection
                && (namespace.is_empty()
                    || o["metadata"]["namespace"].as_str() == Some(namespace.as_str()))
        };
        let line = |(_, _, kind, object): &(u64, Collection, &'static str, Value)| {
            let mut text =
                serde_json::to_vec(&json!({"type": kind, "object": object})).unwrap_or_default();
            text.push(b'\n');
            Bytes::from(text)
        };
        let mut last = from;
        for e in backlog.iter().filter(|e| wanted(e)) {
            last = e.0;
            if tx.send(line(e)).await.is_err() {
                return;
            }
        }
        let deadline = tokio::time::sleep(std::time::Duration::from_secs(timeout));
        tokio::pin!(deadline);
        loop {
            tokio::select! {
                () = &mut deadline => return,
                e = live.recv() => match e {
                    Ok(e) if e.0 > last && wanted(&e) => {
                        last = e.0;
                        if tx.send(line(&e)).await.is_err() { return }
                    }
                    Ok(_) => {}
                    Err(broadcast::error::RecvError::Lagged(_)) => return,
                    Err(broadcast::error::RecvError::Closed) => return,
                },
            }
        }
    });
    let stream = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|b| (Ok::<_, Infallible>(b), rx))
    });
    Response::builder()
        .header("content-type", "application/json")
        .body(Body::from_stream(stream))
        .unwrap_or_else(|_| status(500, "InternalError", "response").response())
}
