//! Loading OpenFunction event manifests from multi-document YAML files and folders.
//!
//! Every problem becomes a [`Diagnostic`] naming the file, the document and the field path,
//! rather than the first serde error aborting the whole load.

use std::fs;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::diagnostic::{Diagnostic, Location};
use crate::{ClusterEventBus, EventBus, EventSource, Trigger};

/// The API group and version of every ofe resource.
pub const API_VERSION: &str = "events.openfunction.io/v1alpha1";

/// The namespace of a namespaced resource that does not name one, as kubectl does.
pub const DEFAULT_NAMESPACE: &str = "default";

/// The namespace of a namespaced object: `metadata.namespace`, else [`DEFAULT_NAMESPACE`]. The
/// one place that rule is written.
pub fn namespace_of(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> &str {
    meta.namespace.as_deref().unwrap_or(DEFAULT_NAMESPACE)
}

/// One resource of any of the four kinds.
#[derive(Clone, Debug)]
pub enum Resource {
    /// An EventSource.
    EventSource(EventSource),
    /// A namespaced EventBus.
    EventBus(EventBus),
    /// A cluster-scoped EventBus.
    ClusterEventBus(ClusterEventBus),
    /// A Trigger.
    Trigger(Trigger),
}

impl Resource {
    /// The kind, as written in manifests.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::EventSource(_) => "EventSource",
            Self::EventBus(_) => "EventBus",
            Self::ClusterEventBus(_) => "ClusterEventBus",
            Self::Trigger(_) => "Trigger",
        }
    }

    fn meta(&self) -> &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
        match self {
            Self::EventSource(r) => &r.metadata,
            Self::EventBus(r) => &r.metadata,
            Self::ClusterEventBus(r) => &r.metadata,
            Self::Trigger(r) => &r.metadata,
        }
    }

    /// The resource as JSON.
    pub fn to_value(&self) -> serde_json::Result<Value> {
        match self {
            Self::EventSource(r) => serde_json::to_value(r),
            Self::EventBus(r) => serde_json::to_value(r),
            Self::ClusterEventBus(r) => serde_json::to_value(r),
            Self::Trigger(r) => serde_json::to_value(r),
        }
    }

    /// A resource of the same kind, read from `value`.
    pub fn same_kind_from(&self, value: Value) -> serde_json::Result<Self> {
        Ok(match self {
            Self::EventSource(_) => Self::EventSource(serde_json::from_value(value)?),
            Self::EventBus(_) => Self::EventBus(serde_json::from_value(value)?),
            Self::ClusterEventBus(_) => Self::ClusterEventBus(serde_json::from_value(value)?),
            Self::Trigger(_) => Self::Trigger(serde_json::from_value(value)?),
        })
    }

    /// `metadata.name` (validated to be present when loaded).
    pub fn name(&self) -> &str {
        self.meta().name.as_deref().unwrap_or_default()
    }

    /// Its key on the health board: kind, namespace (`default` when unset; empty for a
    /// cluster-scoped kind) and name.
    pub fn key(&self) -> ofe_core::health::ResourceKey {
        ofe_core::health::ResourceKey::new(
            self.kind(),
            self.namespace().unwrap_or_default(),
            self.name(),
        )
    }

    /// The namespace: `metadata.namespace`, else `default`; `None` for cluster-scoped kinds.
    pub fn namespace(&self) -> Option<&str> {
        match self {
            Self::ClusterEventBus(_) => None,
            _ => Some(namespace_of(self.meta())),
        }
    }
}

/// A resource and where it was read.
#[derive(Clone, Debug)]
pub struct Manifest {
    /// File and document.
    pub origin: Location,
    /// The parsed resource.
    pub resource: Resource,
}

/// Everything read from a set of paths: the resources that parsed, and what did not.
#[derive(Debug, Default)]
pub struct ManifestSet {
    /// Resources that parsed, in file and document order.
    pub manifests: Vec<Manifest>,
    /// Problems found while reading and parsing.
    pub diagnostics: Vec<Diagnostic>,
    /// The ConfigMaps (`v1`) among the documents, which `configMapKeyRef`s read standalone.
    pub config_maps: Vec<ConfigMap>,
}

/// A ConfigMap document: its namespace (`default` unless given), name and `data`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ConfigMap {
    /// Its namespace.
    pub namespace: String,
    /// Its name.
    pub name: String,
    /// Its `data`.
    pub data: std::collections::BTreeMap<String, String>,
}

/// What one non-empty document is.
enum Doc {
    /// Boxed: a resource is kilobytes, and most documents of a large file are resources.
    Resource(Box<Resource>),
    ConfigMap(ConfigMap),
    /// Another API's object, skipped.
    Other,
}

/// Replaces each `schema.configMapKeyRef` of `m` (an EventSource) by the `jsonSchema` it names
/// in `lookup` (namespace, name, key → the value, JSON or YAML, or why there is none). Without
/// the ConfigMap, `strict` makes that an error (`ofe run`, `ofe operator`); otherwise
/// (`ofe validate`, whose manifests may be meant for a cluster) a warning, and the schema is
/// taken as one that allows everything, so the rest is still checked.
pub fn resolve_schema_refs(
    m: &mut Manifest,
    lookup: &dyn Fn(&str, &str, &str) -> Result<String, String>,
    strict: bool,
) -> Vec<Diagnostic> {
    let Resource::EventSource(_) = &m.resource else { return Vec::new() };
    let Ok(mut value) = m.resource.to_value() else { return Vec::new() };
    let namespace = m.resource.namespace().unwrap_or(DEFAULT_NAMESPACE).to_string();
    let mut out = Vec::new();
    let mut changed = false;
    if let Some(spec) = value.get_mut("spec") {
        each_object(spec, "spec", &mut |map, path| {
            if !path.ends_with(".schema") {
                return;
            }
            let Some(reference) = map.remove("configMapKeyRef") else { return };
            changed = true;
            let text = |k: &str| reference.get(k).and_then(Value::as_str).unwrap_or_default();
            let (name, key) = (text("name"), text("key"));
            let at = format!("{path}.configMapKeyRef");
            let schema = lookup(&namespace, name, key).and_then(|text| {
                serde_json::from_str::<Value>(&text)
                    .or_else(|_| serde_saphyr::from_str::<Value>(&text))
                    .map_err(|e| {
                        format!("key `{key}` of ConfigMap {namespace}/{name} is neither JSON nor YAML: {e}")
                    })
            });
            match schema {
                Ok(schema) => drop(map.insert("jsonSchema".into(), schema)),
                Err(e) if strict => out.push(Diagnostic::error(at, e)),
                Err(e) => {
                    out.push(Diagnostic::warning(
                        at,
                        format!("{e}; `ofe operator` reads it from the cluster, so it is not checked here"),
                    ));
                    map.insert("jsonSchema".into(), Value::Object(serde_json::Map::new()));
                }
            }
        });
    }
    if changed && let Ok(resource) = m.resource.same_kind_from(value) {
        m.resource = resource;
    }
    out.into_iter().map(|d| d.at(&m.origin)).collect()
}

/// The value of `key` of ConfigMap `namespace/name` among `maps`, or why there is none.
pub fn config_map_value(
    maps: &[ConfigMap],
    namespace: &str,
    name: &str,
    key: &str,
) -> Result<String, String> {
    let map = maps.iter().find(|m| m.namespace == namespace && m.name == name).ok_or_else(|| {
        format!("ConfigMap {namespace}/{name} is not among the manifests; add it (apiVersion: v1, kind: ConfigMap)")
    })?;
    map.data.get(key).cloned().ok_or_else(|| {
        format!(
            "ConfigMap {namespace}/{name} has no key `{key}` in its data; add it, or correct `key`"
        )
    })
}

/// The ConfigMap `doc` is, if it is one.
fn config_map(doc: &Value) -> Option<ConfigMap> {
    (doc.get("apiVersion")?.as_str()? == "v1" && doc.get("kind")?.as_str()? == "ConfigMap")
        .then_some(())?;
    let metadata = doc.get("metadata")?;
    let text = |v: &Value| v.as_str().map(str::to_string);
    Some(ConfigMap {
        namespace: metadata
            .get("namespace")
            .and_then(text)
            .unwrap_or_else(|| DEFAULT_NAMESPACE.into()),
        name: metadata.get("name").and_then(text)?,
        data: doc
            .get("data")
            .and_then(Value::as_object)
            .map(|data| data.iter().filter_map(|(k, v)| Some((k.clone(), text(v)?))).collect())
            .unwrap_or_default(),
    })
}

/// Reads every `.yaml`/`.yml` file named, or found (recursively, in name order) under a folder
/// named, and parses each document.
pub fn load(paths: &[PathBuf]) -> ManifestSet {
    let mut set = ManifestSet::default();
    let mut files = Vec::new();
    for path in paths {
        if let Err(e) = collect_files(path, &mut files) {
            set.diagnostics.push(Diagnostic::error(
                "",
                format!("{}: cannot read: {e}; check the path", path.display()),
            ));
        }
    }
    if files.is_empty() && set.diagnostics.is_empty() {
        let names: Vec<String> = paths.iter().map(|p| p.display().to_string()).collect();
        set.diagnostics.push(Diagnostic::error(
            "",
            format!("no .yaml or .yml files found in {}", names.join(", ")),
        ));
    }
    for file in files {
        match fs::read_to_string(&file) {
            Ok(text) => parse_file(&file, &text, &mut set),
            Err(e) => set
                .diagnostics
                .push(Diagnostic::error("", format!("{}: cannot read: {e}", file.display()))),
        }
    }
    set
}

fn collect_files(path: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    if path.is_dir() {
        let mut entries: Vec<PathBuf> =
            fs::read_dir(path)?.map(|e| e.map(|e| e.path())).collect::<Result<_, _>>()?;
        entries.sort();
        for entry in entries {
            let is_yaml = entry.extension().is_some_and(|x| x == "yaml" || x == "yml");
            if entry.is_dir() || is_yaml {
                collect_files(&entry, out)?;
            }
        }
    } else {
        fs::metadata(path)?;
        out.push(path.to_path_buf());
    }
    Ok(())
}

/// Documents one manifest file may hold. The YAML parser's default (1,024) guards against
/// separator storms, but a fleet's file of 10,000 Triggers is a real manifest: the limits that
/// stop a YAML bomb (aliases and anchors, nesting, input size) keep their defaults.
const MAX_DOCUMENTS: usize = 1_000_000;

/// Parses the documents of one file's text into `set`.
///
/// A large file is split at its document markers and its documents are parsed on every core:
/// a file of 10,000 Triggers took most of `ofe run`'s start-up on one. The split is exact,
/// since YAML lets a line that starts with `---` at column 0 only begin a document; a file
/// with directives (`%YAML`), whose lines belong to the document after them, is read whole.
/// Should any part not be valid YAML, the whole file is read again, one document after the
/// other, so that the error names the line in the file as it always did.
pub fn parse_file(file: &Path, text: &str, set: &mut ManifestSet) {
    let parts = split_documents(text);
    let threads = std::thread::available_parallelism().map_or(1, usize::from).min(parts.len());
    let parsed = if parts.len() < PARALLEL_FROM || threads < 2 {
        None
    } else {
        let per_thread = parts.len().div_ceil(threads);
        std::thread::scope(|scope| {
            let workers: Vec<_> = parts
                .chunks(per_thread)
                .map(|group| scope.spawn(move || parse_parts(group)))
                .collect();
            // A worker that panicked (it has no reason to) leaves the file to the one-thread
            // path below, which reports whatever it finds.
            let results: Option<Vec<Vec<Read>>> =
                workers.into_iter().map(|w| w.join().ok().flatten()).collect();
            results
        })
    };
    let documents = match parsed {
        Some(groups) => groups.into_iter().flatten().collect(),
        None => match serde_saphyr::from_multiple_with_options::<Value>(text, options()) {
            Ok(docs) => docs.into_iter().map(read).collect(),
            Err(e) => {
                set.diagnostics.push(Diagnostic::error(
                    "",
                    format!("{}: not valid YAML: {e}", file.display()),
                ));
                return;
            }
        },
    };
    add_documents(file, documents, set);
}

/// Files with fewer documents than this are read on one thread: starting threads would cost
/// more than it saves.
const PARALLEL_FROM: usize = 64;

/// serde-saphyr's options for a manifest file.
fn options() -> serde_saphyr::Options {
    serde_saphyr::options! {
        budget: serde_saphyr::budget! {
            max_documents: MAX_DOCUMENTS,
            // Nodes and parser events grow with the documents; their defaults (250,000 and
            // 1,000,000) would refuse a few thousand Triggers.
            max_nodes: 50 * MAX_DOCUMENTS,
            max_events: 200 * MAX_DOCUMENTS,
        },
    }
}

/// One document of a file, read: `None` when it is empty (skipped, but counted), else what
/// [`parse_document`] made of it.
type Read = Option<Result<Doc, Vec<Diagnostic>>>;

/// Reads one document's value (the part of the work that each thread does too).
fn read(doc: Value) -> Read {
    if doc.is_null() {
        return None;
    }
    if let Some(config_map) = config_map(&doc) {
        return Some(Ok(Doc::ConfigMap(config_map)));
    }
    Some(parse_document(doc).map(|r| r.map_or(Doc::Other, |r| Doc::Resource(Box::new(r)))))
}

/// The documents of `parts`, in order, read; `None` if any part is not valid YAML.
fn parse_parts(parts: &[&str]) -> Option<Vec<Read>> {
    let mut documents = Vec::with_capacity(parts.len());
    for part in parts {
        let docs: Vec<Value> = serde_saphyr::from_multiple_with_options(part, options()).ok()?;
        documents.extend(docs.into_iter().map(read));
    }
    Some(documents)
}

/// `text` cut before each line that starts a document (`---` at column 0, then a space, a tab
/// or the line's end), so that each part holds the documents the whole text does, in order.
/// A text with a directive line is one part.
fn split_documents(text: &str) -> Vec<&str> {
    let mut parts = Vec::new();
    let mut part_start = 0;
    let mut line_start = 0;
    for line in text.split_inclusive('\n') {
        if line.starts_with('%') {
            return vec![text];
        }
        let marker = line
            .strip_prefix("---")
            .is_some_and(|rest| rest.is_empty() || rest.starts_with([' ', '\t', '\n', '\r']));
        if marker && line_start > part_start {
            parts.push(&text[part_start..line_start]);
            part_start = line_start;
        }
        line_start += line.len();
    }
    parts.push(&text[part_start..]);
    parts
}

/// Adds the resources of a file's `documents` to `set`, each numbered by its place in the file.
fn add_documents(file: &Path, documents: Vec<Read>, set: &mut ManifestSet) {
    for (index, doc) in documents.into_iter().enumerate() {
        let origin = Location { file: file.to_path_buf(), document: index + 1 };
        let Some(doc) = doc else { continue };
        match doc {
            Ok(Doc::Resource(resource)) => {
                set.manifests.push(Manifest { origin, resource: *resource });
            }
            Ok(Doc::ConfigMap(config_map)) => set.config_maps.push(config_map),
            Ok(Doc::Other) => {}
            Err(diags) => set.diagnostics.extend(diags.into_iter().map(|d| d.at(&origin))),
        }
    }
}

/// Parses one document. `Ok(None)` means it is some other API's object, which is skipped.
pub fn parse_document(doc: Value) -> Result<Option<Resource>, Vec<Diagnostic>> {
    let Value::Object(map) = &doc else {
        return Err(vec![Diagnostic::error("", "a manifest must be a YAML mapping")]);
    };
    let api_version = map.get("apiVersion").and_then(Value::as_str);
    let kind = map.get("kind").and_then(Value::as_str);
    let (Some(api_version), Some(kind)) = (api_version, kind) else {
        return Err(vec![Diagnostic::error(
            "",
            "missing apiVersion or kind; add `apiVersion: events.openfunction.io/v1alpha1` and a kind",
        )]);
    };
    if api_version != API_VERSION {
        if api_version.starts_with("events.openfunction.io/") {
            return Err(vec![Diagnostic::error(
                "apiVersion",
                format!("`{api_version}` is not served; use `{API_VERSION}`"),
            )]);
        }
        return Ok(None);
    }
    let mut errors = Vec::new();
    for key in map.keys() {
        if !matches!(key.as_str(), "apiVersion" | "kind" | "metadata" | "spec" | "status") {
            errors.push(Diagnostic::error(key.clone(), "unknown field; remove it"));
        }
    }
    let name = map.get("metadata").and_then(|m| m.get("name")).and_then(Value::as_str);
    if name.is_none_or(str::is_empty) {
        errors.push(Diagnostic::error("metadata.name", "missing; every resource needs a name"));
    }
    let resource = match kind {
        "EventSource" => typed(doc).map(Resource::EventSource),
        "EventBus" => typed(doc).map(Resource::EventBus),
        "ClusterEventBus" => typed(doc).map(Resource::ClusterEventBus),
        "Trigger" => typed(doc).map(Resource::Trigger),
        other => Err(Diagnostic::error(
            "kind",
            format!(
                "unknown kind `{other}`; expected EventSource, EventBus, ClusterEventBus or Trigger"
            ),
        )),
    };
    match resource {
        Ok(resource) if errors.is_empty() => Ok(Some(resource)),
        Ok(_) => Err(errors),
        Err(e) => {
            errors.push(e);
            Err(errors)
        }
    }
}

/// Deserializes with the failing field's path, and turns serde's wording into a fix.
fn typed<T: DeserializeOwned>(doc: Value) -> Result<T, Diagnostic> {
    serde_path_to_error::deserialize(doc).map_err(|e| {
        let path = e.path().to_string();
        let path = if path == "." { String::new() } else { path };
        Diagnostic::error(path, explain_serde_error(&e.into_inner().to_string()))
    })
}

fn explain_serde_error(message: &str) -> String {
    if let Some(rest) = message.strip_prefix("unknown field ") {
        return format!("unknown field {rest}; remove it or fix its spelling");
    }
    if let Some(rest) = message.strip_prefix("missing field ") {
        return format!("required field {rest} is missing; add it");
    }
    if message.starts_with("invalid type: boolean") && message.contains("expected a string") {
        // YAML reads bare y/n/yes/no/on/off/true/false as booleans.
        return format!(
            "{message}; YAML reads a bare y, n, yes, no, on or off as a boolean: quote it"
        );
    }
    if message.starts_with("invalid type") || message.starts_with("invalid value") {
        return format!("{message}; change the value to that type");
    }
    message.to_string()
}

/// Calls `visit` on every JSON object under `value` (`value` first), with its field path.
pub fn each_object(
    value: &mut serde_json::Value,
    path: &str,
    visit: &mut dyn FnMut(&mut serde_json::Map<String, serde_json::Value>, &str),
) {
    match value {
        serde_json::Value::Object(map) => {
            visit(map, path);
            for (field, child) in map.iter_mut() {
                each_object(child, &format!("{path}.{field}"), visit);
            }
        }
        serde_json::Value::Array(items) => {
            for (i, child) in items.iter_mut().enumerate() {
                each_object(child, &format!("{path}[{i}]"), visit);
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> ManifestSet {
        let mut set = ManifestSet::default();
        parse_file(Path::new("t.yaml"), text, &mut set);
        set
    }

    #[test]
    fn unknown_field_names_its_path() {
        let set = parse(
            "apiVersion: events.openfunction.io/v1alpha1\nkind: Trigger\nmetadata: {name: t}\n\
             spec:\n  eventBus: default\n  inputs: {a: {eventSource: s, event: e}}\n  \
             subscribers:\n  - condition: a\n    sink: {uri: 'http://x'}\n  - condition: a\n    sink: {urii: 'http://x'}\n",
        );
        assert_eq!(set.manifests.len(), 0);
        let text = set.diagnostics[0].to_string();
        assert!(text.starts_with("t.yaml:document 1: spec.subscribers[1].sink"), "{text}");
        assert!(text.contains("unknown field `urii`"), "{text}");
        assert!(text.contains("fix its spelling"), "{text}");
    }

    #[test]
    fn missing_field_names_its_path() {
        let set = parse(
            "apiVersion: events.openfunction.io/v1alpha1\nkind: Trigger\nmetadata: {name: t}\n\
             spec:\n  inputs: {a: {eventSource: s, event: e}}\n  subscribers: []\n",
        );
        let text = set.diagnostics[0].to_string();
        assert!(text.contains("spec: required field `eventBus` is missing; add it"), "{text}");
    }

    #[test]
    fn a_file_of_ten_thousand_triggers_is_read() {
        // A fleet keeps its Triggers in one generated file; the YAML parser's default budget
        // refused one of over 1,024 documents.
        let trigger = |k: usize| {
            format!(
                "apiVersion: events.openfunction.io/v1alpha1\nkind: Trigger\nmetadata: {{name: t{k}}}\n\
                 spec:\n  eventBus: default\n  inputs:\n    a:\n      eventSource: s\n      event: e\n      \
                 filters:\n        - exact: {{ type: s.{k} }}\n  subscribers:\n    - condition: a\n      \
                 sink: {{ uri: 'http://sink/{k}' }}\n"
            )
        };
        let text: Vec<String> = (0..10_000).map(trigger).collect();
        let set = parse(&text.join("---\n"));
        assert!(set.diagnostics.is_empty(), "{}", set.diagnostics[0]);
        assert_eq!(set.manifests.len(), 10_000);
        assert_eq!(set.manifests[9_999].origin.document, 10_000);
    }

    /// Every document of `text`, read whole.
    fn whole(text: &str) -> Vec<Value> {
        serde_saphyr::from_multiple_with_options(text, options()).expect("valid YAML")
    }

    #[test]
    fn the_split_at_document_markers_keeps_every_document_in_order() {
        // The parallel read must see exactly the documents a reader of the whole file sees.
        let texts = [
            "# a comment before the first marker\n---\na: 1\n---\nb: 2\n",
            "a: 1\n---\n---\nb: 2\n",
            "--- {a: 1}\n--- [1, 2]\n---\t\nc: 3\n",
            "a: 1\n...\n---\nb: 2\n...\n",
            "a: |\n  ---\n  not a marker, indented\nb: \"---x\"\n---x: 1\n---\nc: 3\n",
            "a: 1\r\n---\r\nb: 2\r\n",
            "%YAML 1.2\n---\na: 1\n---\nb: 2\n",
            "",
            "---\n",
        ];
        for text in texts {
            let parts = split_documents(text);
            let split: Vec<Value> = parts.iter().flat_map(|p| whole(p)).collect();
            assert_eq!(split, whole(text), "{text:?} split as {parts:?}");
        }
        assert_eq!(split_documents("%YAML 1.2\n---\na: 1\n---\nb: 2\n").len(), 1);
        assert_eq!(split_documents("a: 1\n---\n---\nb: 2\n").len(), 3);
    }

    /// `count` Triggers, one document each, with `bad` (1-based) replaced by `with`.
    fn triggers_with(count: usize, bad: usize, with: &str) -> String {
        let docs: Vec<String> = (1..=count)
            .map(|k| {
                if k == bad {
                    return with.to_string();
                }
                format!(
                    "apiVersion: events.openfunction.io/v1alpha1\nkind: Trigger\nmetadata: {{name: t{k}}}\n\
                     spec:\n  eventBus: default\n  inputs: {{a: {{eventSource: s, event: e}}}}\n  \
                     subscribers:\n    - condition: a\n      sink: {{ uri: 'http://sink/{k}' }}\n"
                )
            })
            .collect();
        docs.join("---\n")
    }

    #[test]
    fn a_large_file_read_in_parallel_names_the_document_of_each_problem() {
        let bad = "apiVersion: events.openfunction.io/v1alpha1\nkind: Trigger\nmetadata: {name: bad}\n\
                   spec: {eventBus: default, inputs: {}, subscribers: [], colour: red}\n";
        let set = parse(&triggers_with(500, 437, bad));
        assert_eq!(set.manifests.len(), 499);
        let text = set.diagnostics[0].to_string();
        assert!(text.starts_with("t.yaml:document 437: spec"), "{text}");
        assert_eq!(set.manifests[436].origin.document, 438);
    }

    #[test]
    fn a_syntax_error_in_a_large_file_names_its_line_in_the_file() {
        // Each document of triggers_with is 9 lines and a marker: document 300 starts on line
        // 299 * 10 + 1.
        let set = parse(&triggers_with(500, 300, "a: [unclosed\n"));
        assert!(set.manifests.is_empty());
        let text = set.diagnostics[0].to_string();
        assert!(text.contains("t.yaml: not valid YAML"), "{text}");
        assert!(text.contains("line 2991 column 4: unclosed bracket"), "{text}");
    }

    #[test]
    fn documents_are_numbered_and_foreign_kinds_skipped() {
        let set = parse(
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: c}\n---\n\
             apiVersion: events.openfunction.io/v1alpha1\nkind: EventBus\nmetadata: {name: default}\nspec: {}\n---\n\
             apiVersion: events.openfunction.io/v1alpha1\nkind: Nope\nmetadata: {name: x}\n",
        );
        assert_eq!(set.manifests.len(), 1);
        assert_eq!(set.manifests[0].origin.document, 2);
        assert_eq!(set.manifests[0].resource.namespace(), Some("default"));
        assert_eq!(set.diagnostics.len(), 1);
        assert!(
            set.diagnostics[0].to_string().starts_with("t.yaml:document 3: kind: unknown kind")
        );
    }

    #[test]
    fn yaml_syntax_error_is_reported_with_the_file() {
        let set = parse("kind: [unclosed\n");
        assert!(set.diagnostics[0].to_string().starts_with("t.yaml: not valid YAML"));
    }
}
