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
