//! Schema validation at the source (`schema` on an EventSource event): the event's data must
//! satisfy a JSON Schema, compiled once when the source is made.
//!
//! What happens to an event that does not is the source's to say: a webhook refuses the request
//! with 400 and the JSON path of the first violation (the sender can fix it and send again);
//! a broker source cannot refuse a message it already took, so it publishes the event flagged
//! with `ofeinvalid` holding the violation, as it does a malformed CloudEvent (nothing is lost,
//! and a Trigger can route it, e.g. with a filter `exact: { ofeinvalid: ... }` or a CEL term).

use std::sync::Arc;

use cloudevents::{AttributesReader as _, Event};
use ofe_crds::SchemaSpec;

use crate::SourceError;

/// A compiled schema.
pub struct Schema {
    validator: jsonschema::Validator,
}

impl std::fmt::Debug for Schema {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Schema")
    }
}

impl Schema {
    /// The schema `spec` (at `field`, e.g. `spec.webhook.orders.schema`) gives, compiled; the
    /// error names the field and says what is wrong. A `configMapKeyRef` must have been
    /// resolved into `jsonSchema` by then (by the operator, or `ofe run` from its manifests).
    pub fn compile(field: &str, spec: &SchemaSpec) -> Result<Arc<Self>, SourceError> {
        let invalid = |path: &str, message: String| SourceError::Invalid {
            path: if path.is_empty() { field.to_string() } else { format!("{field}.{path}") },
            message,
        };
        let (value, at) = match (&spec.json_schema, &spec.file, &spec.config_map_key_ref) {
            (Some(value), None, None) => (value.clone(), "jsonSchema"),
            (None, Some(file), None) => {
                let text = std::fs::read_to_string(file)
                    .map_err(|e| invalid("file", format!("cannot read {file}: {e}")))?;
                (parse(&text).map_err(|e| invalid("file", format!("{file}: {e}")))?, "file")
            }
            (None, None, Some(r)) => {
                return Err(invalid(
                    "configMapKeyRef",
                    format!(
                        "the schema in ConfigMap `{}` (key `{}`) could not be read: it is \
                         missing, lacks the key, or holds neither JSON nor YAML (`ofe run` reads \
                         ConfigMap documents among its manifests; `ofe operator` reads the \
                         cluster's and logs which it is)",
                        r.name, r.key
                    ),
                ));
            }
            _ => {
                return Err(invalid(
                    "",
                    "set exactly one of `jsonSchema`, `configMapKeyRef` and `file`".into(),
                ));
            }
        };
        let validator = jsonschema::validator_for(&value)
            .map_err(|e| invalid(at, format!("is not a JSON Schema: {e}")))?;
        Ok(Arc::new(Self { validator }))
    }

    /// Whether `event`'s data satisfies the schema; else the first violation, as
    /// `<JSON path>: <what is wrong>` (`$.speed: "fast" is not of type "number"`).
    pub fn check(&self, event: &Event) -> Result<(), String> {
        // Borrowed where the event holds JSON already: no copy of the data per event.
        let data: std::borrow::Cow<'_, serde_json::Value> = match event.data() {
            None => std::borrow::Cow::Owned(serde_json::Value::Null),
            Some(cloudevents::Data::Json(value)) => std::borrow::Cow::Borrowed(value),
            Some(cloudevents::Data::String(text)) => std::borrow::Cow::Owned(
                serde_json::from_str(text)
                    .unwrap_or_else(|_| serde_json::Value::String(text.clone())),
            ),
            Some(cloudevents::Data::Binary(bytes)) => {
                std::borrow::Cow::Owned(serde_json::from_slice(bytes).map_err(|e| {
                    let kind = event.datacontenttype().unwrap_or("no content type");
                    format!("$: the data ({kind}) is not JSON, which the schema needs: {e}")
                })?)
            }
        };
        match self.validator.iter_errors(&data).next() {
            None => Ok(()),
            Some(error) => {
                Err(format!("{}: {error}", json_path(&error.instance_path().to_string())))
            }
        }
    }
}

/// A schema's text: JSON, or YAML (which holds JSON).
fn parse(text: &str) -> Result<serde_json::Value, String> {
    serde_json::from_str(text)
        .or_else(|_| serde_saphyr::from_str(text))
        .map_err(|e| format!("neither JSON nor YAML: {e}"))
}

/// The JSON path (RFC 9535, normalized) of a JSON pointer: `/items/0/price` →
/// `$.items[0].price`; member names that are not plain identifiers in brackets.
pub fn json_path(pointer: &str) -> String {
    let mut out = String::from("$");
    if pointer.is_empty() {
        return out;
    }
    for token in pointer.trim_start_matches('/').split('/') {
        let token = token.replace("~1", "/").replace("~0", "~");
        let plain = token.chars().next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && token.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !token.is_empty() && token.chars().all(|c| c.is_ascii_digit()) {
            out.push_str(&format!("[{token}]"));
        } else if plain {
            out.push('.');
            out.push_str(&token);
        } else {
            out.push_str(&format!("['{}']", token.replace('\\', "\\\\").replace('\'', "\\'")));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schema(yaml: &str) -> Arc<Schema> {
        let spec: SchemaSpec = serde_saphyr::from_str(yaml).expect("spec");
        Schema::compile("spec.webhook.t.schema", &spec).expect("compiles")
    }

    fn event(data: serde_json::Value) -> Event {
        use cloudevents::EventBuilder as _;
        cloudevents::EventBuilderV10::new()
            .id("1")
            .source("/s")
            .ty("t")
            .data("application/json", data)
            .build()
            .expect("event")
    }

    #[test]
    fn the_first_violation_is_named_by_its_json_path() {
        let s = schema(
            "jsonSchema:\n  type: object\n  required: [vehicleId, speed]\n  properties:\n    \
             speed: { type: number }\n    stops: { type: array, items: { type: object, \
             properties: { at: { type: string } } } }",
        );
        assert_eq!(s.check(&event(serde_json::json!({"vehicleId": "v", "speed": 1}))), Ok(()));
        let wrong = s.check(&event(serde_json::json!({"vehicleId": "v", "speed": "fast"})));
        assert_eq!(wrong, Err(r#"$.speed: "fast" is not of type "number""#.into()));
        let deep = s.check(&event(
            serde_json::json!({"vehicleId": "v", "speed": 1, "stops": [{"at": "x"}, {"at": 3}]}),
        ));
        assert!(deep.as_ref().is_err_and(|e| e.starts_with("$.stops[1].at: ")), "{deep:?}");
        let missing = s.check(&event(serde_json::json!({"speed": 1})));
        assert!(missing.as_ref().is_err_and(|e| e.starts_with("$: ")), "{missing:?}");
    }

    #[test]
    fn a_schema_that_is_none_is_refused_with_its_field() {
        let spec: SchemaSpec = serde_saphyr::from_str("jsonSchema: { type: 12 }").expect("spec");
        let error = Schema::compile("spec.kafka.k.schema", &spec).expect_err("not a schema");
        assert!(
            error.to_string().starts_with("spec.kafka.k.schema.jsonSchema: is not a JSON Schema"),
            "{error}"
        );
        let both: SchemaSpec =
            serde_saphyr::from_str("jsonSchema: {}\nfile: /x.json").expect("spec");
        let error = Schema::compile("spec.kafka.k.schema", &both).expect_err("two");
        assert!(error.to_string().contains("set exactly one of"), "{error}");
    }

    #[test]
    fn pointers_become_json_paths() {
        assert_eq!(json_path(""), "$");
        assert_eq!(json_path("/a/0/b c/d~1e"), "$.a[0]['b c']['d/e']");
    }
}
