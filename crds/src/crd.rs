//! The four CustomResourceDefinitions as YAML, as `ofe crds` prints them and `crds/generated/`
//! holds them.

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::CustomResourceExt;

use crate::{ClusterEventBus, EventBus, EventSource, Trigger};

/// The CRDs, each with the file name it is committed under.
pub fn all() -> Vec<(&'static str, CustomResourceDefinition)> {
    vec![
        ("events.openfunction.io_eventsources.yaml", EventSource::crd()),
        ("events.openfunction.io_eventbus.yaml", EventBus::crd()),
        ("events.openfunction.io_clustereventbus.yaml", ClusterEventBus::crd()),
        ("events.openfunction.io_triggers.yaml", Trigger::crd()),
    ]
}

/// One CRD as a YAML document (without the `---` separator).
pub fn to_yaml(crd: &CustomResourceDefinition) -> Result<String, serde_saphyr::SerializeError> {
    serde_saphyr::to_string(crd)
}

/// All CRDs as one multi-document YAML stream.
pub fn all_yaml() -> Result<String, serde_saphyr::SerializeError> {
    let mut out = String::new();
    for (_, crd) in all() {
        out.push_str("---\n");
        out.push_str(&to_yaml(&crd)?);
    }
    Ok(out)
}
