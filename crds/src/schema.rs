//! Schema helpers that keep the generated CRDs structural.

use schemars::{Schema, SchemaGenerator, json_schema};

/// An object whose fields Kubernetes must keep as they are (for pass-through KEDA and build
/// settings). A bare `{}` schema would not be structural.
pub fn preserve_unknown_object(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "object",
        "nullable": true,
        "x-kubernetes-preserve-unknown-fields": true
    })
}

/// A list of objects whose fields Kubernetes must keep as they are. Used for recursive types
/// (trigger filters), which a structural schema cannot spell out.
pub fn preserve_unknown_array(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "array",
        "nullable": true,
        "items": { "type": "object", "x-kubernetes-preserve-unknown-fields": true }
    })
}
