//! Per-subscriber transforms (`spec.subscribers[].transform`, an ofe addition): the event a
//! subscriber's sink or topic gets, reshaped by CEL, as Knative's EventTransform and
//! EventBridge's input transformers do.
//!
//! - `data`: an expression whose value becomes the new data. A map, list, number or bool
//!   becomes JSON (`application/json`), a string stays text (`text/plain; charset=utf-8`),
//!   bytes become `application/octet-stream`, and `null` removes the data.
//! - `attributes`: attribute or extension name → expression. An empty expression (`""`)
//!   removes the extension, as does a value of `null`. `id`, `source` and `type` take
//!   non-empty strings, `time` a timestamp or an RFC 3339 string, extensions a string, an
//!   integer or a bool.
//!
//! Every expression sees the event as it arrived (the same variables as a `cel` filter:
//! each attribute and extension, and `data`), and is compiled once when the manifest loads.
//! An event that an expression cannot evaluate is dead-lettered with the reason: it is never
//! sent half-built.

use std::sync::Arc;

use cel::{Program, Value};
use cloudevents::Event;
use cloudevents::event::{AttributesWriter as _, ExtensionValue};
use ofe_crds::TransformSpec;
use ofe_crds::diagnostic::Diagnostic;

use crate::filter::{EventData, compile_cel, type_name};

/// Attributes a transform may not set: the spec version is the SDK's to write, and data is
/// what `transform.data` is for.
const FIXED: [&str; 3] = ["specversion", "data", "data_base64"];

/// Attributes every CloudEvent has, which a transform may change but not remove.
const REQUIRED: [&str; 3] = ["id", "source", "type"];

/// A compiled transform.
#[derive(Debug, Default)]
pub struct Transform {
    data: Option<Arc<Program>>,
    /// Per attribute or extension name, sorted: its expression, or `None` to remove it.
    attributes: Vec<(String, Option<Arc<Program>>)>,
}

/// Why an event could not be transformed: the field and what went wrong, for its dead letter.
#[derive(Debug, thiserror::Error)]
#[error("transform.{field}: {reason}")]
pub struct TransformError {
    /// `data`, or `attributes.<name>`.
    pub field: String,
    /// What the expression did.
    pub reason: String,
}

impl Transform {
    /// Compiles `spec`, found at `path` (e.g. `spec.subscribers[0].transform`); every
    /// expression that cannot run is a diagnostic naming its field and column.
    pub fn compile(spec: &TransformSpec, path: &str) -> Result<Self, Vec<Diagnostic>> {
        let mut errors = Vec::new();
        let data = spec.data.as_deref().and_then(|text| {
            compile_cel(text)
                .map_err(|e| errors.push(Diagnostic::error(format!("{path}.data"), e.message)))
                .ok()
        });
        let mut attributes = Vec::new();
        for (name, text) in spec.attributes.iter().flatten() {
            let at = format!("{path}.attributes.{name}");
            if let Some(problem) = name_problem(name) {
                errors.push(Diagnostic::error(at, problem));
                continue;
            }
            if text.trim().is_empty() {
                if REQUIRED.contains(&name.as_str()) {
                    errors.push(Diagnostic::error(
                        at,
                        format!(
                            "is empty, which would remove `{name}`, and every CloudEvent has \
                             one; give an expression, e.g. `{name}: \"'new-{name}'\"`"
                        ),
                    ));
                }
                attributes.push((name.clone(), None));
                continue;
            }
            match compile_cel(text) {
                Ok(program) => attributes.push((name.clone(), Some(program))),
                Err(e) => errors.push(Diagnostic::error(at, e.message)),
            }
        }
        if errors.is_empty() { Ok(Self { data, attributes }) } else { Err(errors) }
    }

    /// Whether there is nothing to do.
    pub fn is_empty(&self) -> bool {
        self.data.is_none() && self.attributes.is_empty()
    }

    /// `event` reshaped: every expression evaluated over the event as it came, then applied.
    pub fn apply(&self, event: &Event) -> Result<Event, TransformError> {
        let view = EventData::new(event);
        let eval = |field: &str, program: &Program| {
            view.try_eval(program)
                .map_err(|reason| TransformError { field: field.to_string(), reason })
        };
        let data = match &self.data {
            Some(program) => Some(eval("data", program)?),
            None => None,
        };
        let mut values = Vec::with_capacity(self.attributes.len());
        for (name, program) in &self.attributes {
            let field = format!("attributes.{name}");
            let value = match program {
                Some(program) => eval(&field, program)?,
                None => Value::Null,
            };
            values.push((name.as_str(), (field, value)));
        }
        let mut out = event.clone();
        if let Some(value) = data {
            set_data(&mut out, value)
                .map_err(|reason| TransformError { field: "data".into(), reason })?;
        }
        for (name, (field, value)) in values {
            set_attribute(&mut out, name, value)
                .map_err(|reason| TransformError { field, reason })?;
        }
        Ok(out)
    }
}

/// Why `name` cannot be set by a transform, if it cannot.
fn name_problem(name: &str) -> Option<String> {
    if FIXED.contains(&name) {
        return Some(format!(
            "`{name}` cannot be set here; {}",
            if name == "specversion" {
                "ofe writes CloudEvents 1.0"
            } else {
                "set the data with `transform.data`"
            }
        ));
    }
    let valid = !name.is_empty()
        && name.len() <= 20
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
    (!valid).then(|| {
        format!(
            "`{name}` is not a CloudEvents attribute name: use 1 to 20 lower-case letters or \
             digits, e.g. `vehicle`"
        )
    })
}

/// Replaces the data of `event` with `value`, its content type following the value's kind.
fn set_data(event: &mut Event, value: Value) -> Result<(), String> {
    match value {
        Value::Null => {
            event.take_data();
        }
        Value::String(text) => {
            event.set_data("text/plain; charset=utf-8", text.as_str().to_string());
        }
        Value::Bytes(bytes) => {
            event.set_data("application/octet-stream", bytes.as_slice().to_vec());
        }
        other => {
            let json = other.json().map_err(|e| format!("gave a value JSON cannot hold: {e}"))?;
            event.set_data("application/json", json);
        }
    }
    Ok(())
}

/// Sets (or, for `null`, removes) attribute or extension `name` of `event`.
fn set_attribute(event: &mut Event, name: &str, value: Value) -> Result<(), String> {
    let text = |value: &Value| match value {
        Value::String(s) => Ok(s.as_str().to_string()),
        other => Err(format!("gave {}, not a string", type_name(other))),
    };
    let nonempty = |value: &Value| {
        let s = text(value)?;
        if s.is_empty() { Err("gave an empty string".to_string()) } else { Ok(s) }
    };
    match name {
        "id" => {
            event.set_id(nonempty(&value)?);
        }
        "type" => {
            event.set_type(nonempty(&value)?);
        }
        "source" => {
            event.set_source(nonempty(&value)?);
        }
        "subject" => {
            let subject = if matches!(value, Value::Null) { None } else { Some(text(&value)?) };
            event.set_subject(subject);
        }
        "datacontenttype" => {
            let media = if matches!(value, Value::Null) { None } else { Some(text(&value)?) };
            event.set_datacontenttype(media);
        }
        "dataschema" => {
            let url = match value {
                Value::Null => None,
                value => {
                    let s = text(&value)?;
                    Some(url::Url::parse(&s).map_err(|e| format!("gave `{s}`, not a URL: {e}"))?)
                }
            };
            event.set_dataschema(url);
        }
        "time" => {
            let time = match value {
                Value::Null => None,
                Value::Timestamp(t) => Some(t.with_timezone(&chrono::Utc)),
                Value::String(s) => Some(
                    chrono::DateTime::parse_from_rfc3339(s.as_str())
                        .map_err(|e| format!("gave `{s}`, not an RFC 3339 time: {e}"))?
                        .with_timezone(&chrono::Utc),
                ),
                other => return Err(format!("gave {}, not a timestamp", type_name(&other))),
            };
            event.set_time(time);
        }
        extension => match value {
            Value::Null => {
                event.remove_extension(extension);
            }
            Value::String(s) => event.set_extension(extension, s.as_str().to_string()),
            Value::Int(n) => event.set_extension(extension, n),
            Value::UInt(n) => event.set_extension(
                extension,
                i64::try_from(n).map_err(|_| format!("gave {n}, too large for an extension"))?,
            ),
            Value::Bool(b) => event.set_extension(extension, ExtensionValue::Boolean(b)),
            other => {
                return Err(format!(
                    "gave {}; an extension holds a string, an integer or a bool (wrap it in \
                     string() to keep it as text)",
                    type_name(&other)
                ));
            }
        },
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use cloudevents::{AttributesReader as _, EventBuilder as _, EventBuilderV10};

    fn telemetry() -> Event {
        let mut event = EventBuilderV10::new()
            .id("e-1")
            .source("/fleet")
            .ty("com.example.telemetry")
            .time("2026-12-03T10:00:00Z")
            .extension("region", "north")
            .extension("trace", "t-1")
            .build()
            .expect("event");
        event.set_data(
            "application/json",
            serde_json::json!({"vehicleId": "v-7", "speed": 131.5, "battery": 80}),
        );
        event
    }

    fn transform(yaml: &str) -> Result<Transform, Vec<Diagnostic>> {
        let spec: TransformSpec = serde_saphyr::from_str(yaml).expect("yaml");
        Transform::compile(&spec, "spec.subscribers[0].transform")
    }

    fn data_json(event: &Event) -> serde_json::Value {
        match event.data() {
            Some(cloudevents::Data::Json(v)) => v.clone(),
            other => panic!("not JSON data: {other:?}"),
        }
    }

    #[test]
    fn reshapes_the_data_and_the_attributes() {
        let t = transform(
            r#"
data: '{"vehicle": data.vehicleId, "kmh": data.speed, "at": time}'
attributes:
  type: "'com.example.overspeed'"
  subject: data.vehicleId
  trace: ""
  limit: "120"
  urgent: "data.speed > 130.0"
"#,
        )
        .expect("compiles");
        let out = t.apply(&telemetry()).expect("applies");
        assert_eq!(
            data_json(&out),
            serde_json::json!({"vehicle": "v-7", "kmh": 131.5, "at": "2026-12-03T10:00:00+00:00"})
        );
        assert_eq!(out.datacontenttype(), Some("application/json"));
        assert_eq!(out.ty(), "com.example.overspeed");
        assert_eq!(out.subject(), Some("v-7"));
        assert_eq!(out.id(), "e-1", "what the transform does not name stays");
        assert!(out.extension("trace").is_none(), "an empty expression removes an extension");
        assert_eq!(out.extension("region"), Some(&ExtensionValue::from("north")));
        assert_eq!(out.extension("limit"), Some(&ExtensionValue::Integer(120)));
        assert_eq!(out.extension("urgent"), Some(&ExtensionValue::Boolean(true)));
    }

    #[test]
    fn a_string_stays_text_and_null_removes_the_data() {
        let out = transform("data: \"'vehicle ' + data.vehicleId\"")
            .expect("compiles")
            .apply(&telemetry())
            .expect("applies");
        assert_eq!(out.data(), Some(&cloudevents::Data::String("vehicle v-7".into())));
        assert_eq!(out.datacontenttype(), Some("text/plain; charset=utf-8"));
        let out = transform("data: 'null'").expect("compiles").apply(&telemetry()).expect("ok");
        assert!(out.data().is_none());
    }

    #[test]
    fn an_event_it_cannot_evaluate_is_an_error_naming_the_field() {
        let t = transform("data: '{\"v\": data.vehicle.model}'\nattributes:\n  id: data.speed")
            .expect("compiles");
        let error = t.apply(&telemetry()).expect_err("no such field");
        assert_eq!(error.field, "data");
        let t = transform("attributes:\n  id: data.speed").expect("compiles");
        let error = t.apply(&telemetry()).expect_err("a number is not an id");
        assert_eq!(error.to_string(), "transform.attributes.id: gave a float, not a string");
        let t = transform("attributes:\n  time: \"'yesterday'\"").expect("compiles");
        let error = t.apply(&telemetry()).expect_err("not a time");
        assert!(error.to_string().contains("not an RFC 3339 time"), "{error}");
    }

    #[test]
    fn what_cannot_run_is_refused_at_load_with_its_path() {
        let errors = transform("data: '{\"v\": data.speed +}'").expect_err("syntax");
        assert_eq!(errors[0].path, "spec.subscribers[0].transform.data");
        assert!(errors[0].message.contains("column"), "{}", errors[0].message);
        let errors = transform(
            "attributes:\n  id: \"\"\n  specversion: \"'2.0'\"\n  Vehicle: data.vehicleId",
        )
        .expect_err("three problems");
        let paths: Vec<&str> = errors.iter().map(|d| d.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "spec.subscribers[0].transform.attributes.Vehicle",
                "spec.subscribers[0].transform.attributes.id",
                "spec.subscribers[0].transform.attributes.specversion",
            ]
        );
        assert!(errors[0].message.contains("lower-case"), "{}", errors[0].message);
        assert!(errors[1].message.contains("every CloudEvent has one"), "{}", errors[1].message);
    }
}
