//! Correlation and order keys: an expression over an event whose value keys a join
//! (`spec.inputs.<name>.key`) or an order (`delivery.orderKey`), compiled once.

use crate::filter::EventData;

/// A compiled expression over an event whose value keys a join or an order: CEL, or a
/// JSONPath query when it starts with `$`.
#[derive(Debug)]
pub struct KeyExpr {
    text: String,
    compiled: KeyProgram,
}

#[derive(Debug)]
enum KeyProgram {
    Cel(std::sync::Arc<cel::Program>),
    JsonPath(Box<jsonpath_rust::parser::model::JpQuery>),
}

impl KeyExpr {
    /// Compiles `text`; the error points at the column.
    pub fn compile(text: &str) -> Result<Self, crate::ConditionError> {
        let compiled = if text.trim_start().starts_with('$') {
            KeyProgram::JsonPath(Box::new(crate::filter::compile_jsonpath(text)?))
        } else {
            KeyProgram::Cel(crate::filter::compile_cel(text)?)
        };
        Ok(Self { text: text.to_string(), compiled })
    }

    /// The expression as written.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// The key of an event: the value as text, if it is a string, number or bool (for a
    /// JSONPath query, the first node it selects).
    pub fn key(&self, data: &EventData<'_>) -> Option<String> {
        use cel::Value;
        match &self.compiled {
            KeyProgram::Cel(program) => match data.eval(program)? {
                Value::String(s) => Some(s.to_string()),
                Value::Int(i) => Some(i.to_string()),
                Value::UInt(u) => Some(u.to_string()),
                Value::Float(f) => Some(f.to_string()),
                Value::Bool(b) => Some(b.to_string()),
                _ => None,
            },
            KeyProgram::JsonPath(query) => match data.select(query)?.first()? {
                serde_json::Value::String(s) => Some(s.clone()),
                v @ (serde_json::Value::Number(_) | serde_json::Value::Bool(_)) => {
                    Some(v.to_string())
                }
                _ => None,
            },
        }
    }
}
