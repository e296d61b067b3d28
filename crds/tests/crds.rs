//! The committed CRDs match the Rust types, and they are structural as apiextensions.k8s.io/v1
//! requires.

use std::path::PathBuf;

use ofe_crds::crd;
use serde_json::Value;

fn generated_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("generated")
}

/// Fails when `crds/generated/` drifts from the types. `OFE_BLESS=1` rewrites the files.
#[test]
fn committed_crds_match_the_types() {
    let bless = std::env::var_os("OFE_BLESS").is_some();
    for (file, crd) in crd::all() {
        let yaml = crd::to_yaml(&crd).expect("CRD serialises");
        let path = generated_dir().join(file);
        if bless {
            std::fs::write(&path, &yaml).expect("write CRD");
            continue;
        }
        let committed = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            committed == yaml,
            "{} differs from the Rust types; regenerate with `cargo run -- crds --out crds/generated` \
             (or OFE_BLESS=1 cargo test -p ofe-crds)",
            path.display()
        );
    }
}

/// Walks a schema node and collects the reasons it is not structural.
fn non_structural(path: &str, node: &Value, out: &mut Vec<String>) {
    let Some(obj) = node.as_object() else {
        out.push(format!("{path}: schema node is not an object"));
        return;
    };
    for banned in ["$ref", "definitions", "$defs", "oneOf", "anyOf", "allOf"] {
        if obj.contains_key(banned) {
            out.push(format!("{path}: uses `{banned}`"));
        }
    }
    let preserves = obj.get("x-kubernetes-preserve-unknown-fields") == Some(&Value::Bool(true));
    let int_or_string = obj.get("x-kubernetes-int-or-string") == Some(&Value::Bool(true));
    if !obj.contains_key("type") && !preserves && !int_or_string {
        out.push(format!("{path}: no `type`"));
    }
    if let Some(props) = obj.get("properties").and_then(Value::as_object) {
        for (name, child) in props {
            non_structural(&format!("{path}.{name}"), child, out);
        }
    }
    if let Some(items) = obj.get("items") {
        non_structural(&format!("{path}[]"), items, out);
    }
    if let Some(extra) = obj.get("additionalProperties").filter(|v| v.is_object()) {
        non_structural(&format!("{path}{{}}"), extra, out);
    }
}

#[test]
fn crds_are_structural_v1_with_the_original_names() {
    let expected = [
        ("EventSource", "Namespaced", Some("es"), 3),
        ("EventBus", "Namespaced", Some("eb"), 0),
        ("ClusterEventBus", "Cluster", Some("ceb"), 0),
        ("Trigger", "Namespaced", None, 2),
    ];
    for ((_, crd), (kind, scope, short, columns)) in crd::all().into_iter().zip(expected) {
        let v = serde_json::to_value(&crd).expect("to json");
        assert_eq!(v["apiVersion"], "apiextensions.k8s.io/v1");
        assert_eq!(v["spec"]["group"], "events.openfunction.io");
        assert_eq!(v["spec"]["names"]["kind"], kind);
        assert_eq!(v["spec"]["scope"], scope);
        let shorts = v["spec"]["names"]["shortNames"].as_array().cloned().unwrap_or_default();
        assert_eq!(shorts.first().and_then(Value::as_str), short, "{kind} shortNames");
        let version = &v["spec"]["versions"][0];
        assert_eq!(version["name"], "v1alpha1");
        assert_eq!(version["served"], true);
        assert_eq!(version["storage"], true);
        let cols = version["additionalPrinterColumns"].as_array().map_or(0, Vec::len);
        assert_eq!(cols, columns, "{kind} printer columns");
        let mut problems = Vec::new();
        non_structural(kind, &version["schema"]["openAPIV3Schema"], &mut problems);
        assert!(problems.is_empty(), "{kind} is not structural: {problems:#?}");
    }
}

#[test]
fn printer_columns_match_openfunction() {
    let v = serde_json::to_value(ofe_crds::crd::all()[0].1.clone()).expect("json");
    let cols = &v["spec"]["versions"][0]["additionalPrinterColumns"];
    assert_eq!(cols[0]["jsonPath"], ".spec.eventBus");
    assert_eq!(cols[1]["jsonPath"], ".spec.sink.uri");
    assert_eq!(cols[2]["jsonPath"], ".status.conditions[-1].type");
}

#[test]
fn every_openfunction_sample_parses_unchanged() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/openfunction");
    let set = ofe_crds::manifest::load(&[dir]);
    let mut errors: Vec<String> = set.diagnostics.iter().map(ToString::to_string).collect();
    for m in &set.manifests {
        for d in ofe_crds::validate::check_resource(&m.resource) {
            if d.is_error() {
                errors.push(d.at(&m.origin).to_string());
            }
        }
    }
    assert!(errors.is_empty(), "{errors:#?}");
    assert!(set.manifests.len() >= 9, "only {} resources loaded", set.manifests.len());
}

/// The messages of the `x-kubernetes-validations` rules of `schema` (and of the schemas below
/// it) that `value` breaks. The rules run here with the same CEL the API server uses for them.
fn broken_rules(schema: &Value, value: &Value, path: &str, out: &mut Vec<String>) {
    for rule in schema["x-kubernetes-validations"].as_array().into_iter().flatten() {
        let text = rule["rule"].as_str().expect("rule text");
        let program = cel::Program::compile(text).unwrap_or_else(|e| panic!("{text}: {e}"));
        let mut context = cel::Context::default();
        context.add_variable_from_value("self", cel::to_value(value).expect("CEL value"));
        if program.execute(&context) != Ok(cel::Value::Bool(true)) {
            out.push(format!("{path}: {}", rule["message"].as_str().unwrap_or(text)));
        }
    }
    match value {
        Value::Object(fields) => {
            for (name, field) in fields {
                let below = schema["properties"]
                    .get(name)
                    .or_else(|| schema.get("additionalProperties").filter(|s| s.is_object()));
                if let Some(below) = below {
                    broken_rules(below, field, &format!("{path}.{name}"), out);
                }
            }
        }
        Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                broken_rules(&schema["items"], item, &format!("{path}[{i}]"), out);
            }
        }
        _ => {}
    }
}

/// What the API server's validation rules say of a manifest document.
fn admission(yaml: &str) -> Vec<String> {
    let doc: Value = serde_saphyr::from_str(yaml).expect("yaml");
    let kind = doc["kind"].as_str().expect("kind").to_string();
    let crd = crd::all().into_iter().find(|(_, c)| c.spec.names.kind == kind).expect("a CRD");
    let crd = serde_json::to_value(crd.1).expect("json");
    let schema = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"];
    let mut out = Vec::new();
    broken_rules(schema, &doc, "", &mut out);
    out
}

/// The CRDs' validation rules admit every OpenFunction sample and every example, and refuse
/// what `ofe validate` refuses for the same reason, before anything is stored.
#[test]
fn validation_rules_admit_the_samples_and_refuse_broken_resources() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut files: Vec<PathBuf> = ["tests/fixtures/openfunction", "examples/cron-to-function"]
        .iter()
        .flat_map(|d| {
            std::fs::read_dir(root.join(d)).expect("dir").map(|e| e.expect("entry").path())
        })
        // The manifests, not the examples' other files (their `ofe test` fixtures).
        .filter(|path| path.extension().is_some_and(|x| x == "yaml" || x == "yml"))
        .chain(
            ["examples/vehicle-telemetry/manifests.yaml", "examples/chain/manifests.yaml"]
                .map(|f| root.join(f)),
        )
        .collect();
    files.sort();
    let mut checked = 0;
    for file in files {
        let text = std::fs::read_to_string(&file).expect("read");
        for doc in text.split("\n---").filter(|d| d.contains("kind:")) {
            let broken = admission(doc);
            assert!(broken.is_empty(), "{}: {broken:?}", file.display());
            checked += 1;
        }
    }
    assert!(checked >= 12, "only {checked} documents checked");
    let head = "apiVersion: events.openfunction.io/v1alpha1\nkind: Trigger\nmetadata: { name: t }\nspec:\n";
    let cases = [
        (
            format!("{head}  eventBus: default\n  inputs: {{ a: {{ topic: x, eventSource: s }} }}\n  subscribers: [ {{ condition: a, topic: out }} ]\n"),
            ".spec.inputs.a: an input reads either a topic, or an eventSource and its event",
        ),
        (
            format!("{head}  eventBus: default\n  inputs: {{ a: {{ eventSource: s, event: e }} }}\n  subscribers: [ {{ condition: a }} ]\n"),
            ".spec.subscribers[0]: a subscriber needs a sink, a topic, or both",
        ),
        (
            format!("{head}  eventBus: default\n  inputs: {{ a: {{ eventSource: s, event: e }} }}\n  subscribers: [ {{ condition: a, sink: {{}} }} ]\n"),
            ".spec.subscribers[0].sink: set uri, ref to a Knative Service or an OpenFunction Function, or a broker",
        ),
        (
            format!("{head}  eventBus: default\n  inputs: {{ a: {{ eventSource: s, event: e }} }}\n  subscribers: [ {{ condition: a, topic: o, delivery: {{ retry: -1, maxConcurrency: 0 }} }} ]\n"),
            ".spec.subscribers[0].delivery: retry must be 0 or more",
        ),
        (
            format!("{head}  eventBus: default\n  inputs: {{}}\n  subscribers: []\n"),
            ".spec: inputs is empty",
        ),
        (
            "apiVersion: events.openfunction.io/v1alpha1\nkind: EventSource\nmetadata: { name: s }\nspec:\n  cron: { tick: { schedule: '@every 1s' } }\n".to_string(),
            ".spec: set eventBus to publish to a bus, sink to call a function, or both",
        ),
    ];
    for (yaml, want) in cases {
        let broken = admission(&yaml);
        assert!(broken.iter().any(|b| b.starts_with(want)), "want `{want}` in {broken:?}");
    }
    let both = admission(&format!(
        "{head}  eventBus: default\n  inputs: {{ a: {{ eventSource: s, event: e }} }}\n  subscribers: [ {{ condition: a, topic: o, delivery: {{ retry: -1, maxConcurrency: 0 }} }} ]\n"
    ));
    assert_eq!(both.len(), 2, "each broken rule is reported: {both:?}");
}
