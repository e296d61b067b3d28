//! Input filters: the CloudEvents Subscriptions API dialects (`exact`, `prefix`, `suffix`,
//! `all`, `any`, `not`) plus `cel`, compiled once when the manifest loads.
//!
//! - Attribute dialects compare context attributes and extensions as strings; an attribute the
//!   event lacks does not match.
//! - `cel` sees every attribute and extension as a string variable (`type`, `source`,
//!   `subject`, `id`, `time`, `datacontenttype`, ...) and `data`: the payload parsed as JSON
//!   when it is JSON, else the payload as a string. A CEL error at evaluation (a missing field,
//!   a type mismatch such as comparing a string with a number) means "does not match": an
//!   event a filter cannot judge is not routed, and never stops the stream. The data is parsed
//!   at most once per event, however many `cel` filters look at it.

use std::borrow::Cow;
use std::cell::OnceCell;
use std::sync::Arc;

use cel::{Context, Program, Value};
use cloudevents::{AttributesReader as _, Event};
use jsonpath_rust::parser::model::JpQuery;
use ofe_crds::Filter;

use crate::condition::{ConditionError, caret};

/// A compiled filter.
#[derive(Debug)]
pub enum CompiledFilter {
    /// Every `(attribute, value)` equals.
    Exact(Vec<(String, String)>),
    /// Every attribute starts with its value.
    Prefix(Vec<(String, String)>),
    /// Every attribute ends with its value.
    Suffix(Vec<(String, String)>),
    /// Every filter passes.
    All(Vec<CompiledFilter>),
    /// At least one filter passes.
    Any(Vec<CompiledFilter>),
    /// The filter does not pass.
    Not(Box<CompiledFilter>),
    /// The CEL program evaluates to `true`; with the expression as written, for verdicts.
    Cel(Arc<Program>, Arc<str>),
    /// The JSONPath query selects at least one node of the event's JSON.
    JsonPath(Box<JpQuery>),
}

impl CompiledFilter {
    /// Whether it reads the event's data (a CEL expression naming `data`, any JSONPath
    /// query), and so cannot judge an event whose data does not parse.
    pub fn reads_data(&self) -> bool {
        match self {
            Self::Exact(_) | Self::Prefix(_) | Self::Suffix(_) => false,
            Self::All(filters) | Self::Any(filters) => filters.iter().any(Self::reads_data),
            Self::Not(filter) => filter.reads_data(),
            Self::Cel(program, _) => program.references().has_variable("data"),
            Self::JsonPath(_) => true,
        }
    }
}

/// A filter that cannot be used, with the field path inside the filter (e.g. `.cel`,
/// `.all[1].exact`) and the reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FilterError {
    /// Path below the filter, starting with `.`.
    pub path: String,
    /// What is wrong and how to fix it.
    pub message: String,
}

impl CompiledFilter {
    /// Compiles `filter`.
    pub fn compile(filter: &Filter) -> Result<Self, FilterError> {
        let pairs = |map: &std::collections::BTreeMap<String, String>, dialect: &str| {
            if map.is_empty() {
                return Err(FilterError {
                    path: format!(".{dialect}"),
                    message: "names no attribute; add `attribute: value`".into(),
                });
            }
            Ok(map.iter().map(|(k, v)| (k.to_ascii_lowercase(), v.clone())).collect())
        };
        let list = |filters: &[Filter], dialect: &str| {
            filters
                .iter()
                .enumerate()
                .map(|(i, f)| {
                    Self::compile(f).map_err(|e| FilterError {
                        path: format!(".{dialect}[{i}]{}", e.path),
                        message: e.message,
                    })
                })
                .collect::<Result<Vec<_>, _>>()
        };
        let Filter { exact, prefix, suffix, all, any, not, cel, jsonpath } = filter;
        if let (None, None, None, None, None, None, None, Some(path)) =
            (exact, prefix, suffix, all, any, not, cel, jsonpath)
        {
            return compile_jsonpath(path)
                .map(|q| Self::JsonPath(Box::new(q)))
                .map_err(|e| FilterError { path: ".jsonpath".into(), message: e.message });
        }
        let set = [
            jsonpath.is_some(),
            exact.is_some(),
            prefix.is_some(),
            suffix.is_some(),
            all.is_some(),
            any.is_some(),
            not.is_some(),
            cel.is_some(),
        ];
        if set.iter().filter(|s| **s).count() != 1 {
            return Err(FilterError {
                path: String::new(),
                message: "set exactly one of exact, prefix, suffix, all, any, not, cel or jsonpath"
                    .into(),
            });
        }
        Ok(match (exact, prefix, suffix, all, any, not, cel) {
            (Some(m), ..) => Self::Exact(pairs(m, "exact")?),
            (_, Some(m), ..) => Self::Prefix(pairs(m, "prefix")?),
            (_, _, Some(m), ..) => Self::Suffix(pairs(m, "suffix")?),
            (_, _, _, Some(f), ..) => Self::All(list(f, "all")?),
            (_, _, _, _, Some(f), ..) => Self::Any(list(f, "any")?),
            (_, _, _, _, _, Some(f), _) => Self::Not(Box::new(Self::compile(f).map_err(|e| {
                FilterError { path: format!(".not{}", e.path), message: e.message }
            })?)),
            (.., Some(text)) => Self::Cel(
                compile_cel(text)
                    .map_err(|e| FilterError { path: ".cel".into(), message: e.message })?,
                Arc::from(text.as_str()),
            ),
            // Ruled out by the count above.
            (None, None, None, None, None, None, None) => Self::All(Vec::new()),
        })
    }

    /// Whether the event of `data` passes. `data` caches the parsed payload, so however many
    /// filters look at one event, its data is converted once.
    pub fn matches(&self, data: &EventData<'_>) -> bool {
        let event = data.event();
        match self {
            Self::Exact(pairs) => {
                pairs.iter().all(|(k, v)| attribute(event, k).is_some_and(|a| a == v.as_str()))
            }
            Self::Prefix(pairs) => pairs
                .iter()
                .all(|(k, v)| attribute(event, k).is_some_and(|a| a.starts_with(v.as_str()))),
            Self::Suffix(pairs) => pairs
                .iter()
                .all(|(k, v)| attribute(event, k).is_some_and(|a| a.ends_with(v.as_str()))),
            Self::All(filters) => filters.iter().all(|f| f.matches(data)),
            Self::Any(filters) => filters.iter().any(|f| f.matches(data)),
            Self::Not(filter) => !filter.matches(data),
            Self::Cel(program, _) => {
                data.eval(program).is_some_and(|v| matches!(v, Value::Bool(true)))
            }
            Self::JsonPath(query) => data.select(query).is_some_and(|nodes| !nodes.is_empty()),
        }
    }

    /// An `(attribute, value)` pair every event passing this filter has, for the routing
    /// index: from `exact`, from `all` (its first member that has one), and from a `cel`
    /// expression whose top-level conjunction compares an attribute with a string literal
    /// (`type == 'com.example.x' && data.temp > 30`).
    pub fn index_key(&self) -> Option<(String, String)> {
        match self {
            Self::Exact(pairs) => pairs.first().cloned(),
            Self::All(filters) => filters.iter().find_map(Self::index_key),
            Self::Cel(program, _) => cel_index_key(program.expression()),
            _ => None,
        }
    }
}

impl CompiledFilter {
    /// Why the event of `data` does not pass, with what it holds: "`data.speed > 120.0` was
    /// false; data.speed = 97", "exact {type: a} was false; type = b". For the live flow and
    /// `ofe test`; call it only for a filter that did not pass.
    pub fn verdict(&self, data: &EventData<'_>) -> String {
        let event = data.event();
        let pairs = |dialect: &str, pairs: &[(String, String)]| {
            let wanted: Vec<String> = pairs.iter().map(|(k, v)| format!("{k}: {v}")).collect();
            let seen: Vec<String> = pairs
                .iter()
                .map(|(k, _)| match attribute(event, k) {
                    Some(value) => format!("{k} = {value}"),
                    None => format!("the event has no {k}"),
                })
                .collect();
            format!("{dialect} {{{}}} was false; {}", wanted.join(", "), seen.join(", "))
        };
        match self {
            Self::Exact(p) => pairs("exact", p),
            Self::Prefix(p) => pairs("prefix", p),
            Self::Suffix(p) => pairs("suffix", p),
            Self::All(filters) => match filters.iter().find(|f| !f.matches(data)) {
                Some(failed) => format!("all: {}", failed.verdict(data)),
                None => "all: every filter passed".into(),
            },
            Self::Any(filters) => {
                let each: Vec<String> = filters.iter().map(|f| f.verdict(data)).collect();
                format!("any: none passed ({})", each.join("; "))
            }
            Self::Not(_) => "not: the filter inside passed".into(),
            Self::Cel(program, text) => {
                let seen = cel_paths(program.expression())
                    .into_iter()
                    .map(|path| match data.lookup(&path) {
                        Some(value) => format!("{path} = {value}"),
                        None => format!("{path} is missing"),
                    })
                    .collect::<Vec<_>>()
                    .join(", ");
                let seen = if seen.is_empty() { String::new() } else { format!("; {seen}") };
                match data.try_eval(program) {
                    Ok(Value::Bool(_)) => format!("`{text}` was false{seen}"),
                    Ok(other) => format!("`{text}` gave {other:?}, not true{seen}"),
                    Err(e) => format!("`{text}` failed: {e}{seen}"),
                }
            }
            Self::JsonPath(_) => "the jsonpath query selected nothing".into(),
        }
    }
}

/// The variables and field paths a CEL expression reads (`data.speed`, `type`), each once,
/// in the order they appear.
fn cel_paths(expr: &cel::IdedExpr) -> Vec<String> {
    use cel::common::ast::Expr;
    fn path(expr: &cel::IdedExpr) -> Option<String> {
        match &expr.expr {
            Expr::Ident(name) => Some(name.clone()),
            Expr::Select(select) => Some(format!("{}.{}", path(&select.operand)?, select.field)),
            _ => None,
        }
    }
    fn walk(expr: &cel::IdedExpr, out: &mut Vec<String>) {
        if let Some(found) = path(expr) {
            if !out.contains(&found) {
                out.push(found);
            }
            return;
        }
        match &expr.expr {
            Expr::Call(call) => {
                call.target.iter().for_each(|t| walk(t, out));
                call.args.iter().for_each(|a| walk(a, out));
            }
            Expr::Select(select) => walk(&select.operand, out),
            Expr::List(list) => list.elements.iter().for_each(|e| walk(e, out)),
            _ => {}
        }
    }
    let mut out = Vec::new();
    walk(expr, &mut out);
    out
}

/// Finds `attribute == 'literal'` among the top-level `&&` operands of a CEL expression.
fn cel_index_key(expr: &cel::IdedExpr) -> Option<(String, String)> {
    use cel::common::ast::{Expr, LiteralValue};
    let Expr::Call(call) = &expr.expr else { return None };
    match (call.func_name.as_str(), call.args.as_slice()) {
        ("_&&_", [l, r]) => cel_index_key(l).or_else(|| cel_index_key(r)),
        ("_==_", [l, r]) => {
            let pair = |a: &cel::IdedExpr, b: &cel::IdedExpr| match (&a.expr, &b.expr) {
                (Expr::Ident(name), Expr::Literal(LiteralValue::String(value)))
                    if name != "data" && name != "time" =>
                {
                    Some((name.clone(), value.to_string()))
                }
                _ => None,
            };
            pair(l, r).or_else(|| pair(r, l))
        }
        _ => None,
    }
}

/// Parses a JSONPath query, with an error that points at the column.
pub(crate) fn compile_jsonpath(text: &str) -> Result<JpQuery, ConditionError> {
    if !text.trim_start().starts_with('$') {
        return Err(ConditionError {
            message: format!(
                "`{text}` is not a JSONPath query; start it at the event's root, e.g. `$.data.id`"
            ),
            column: Some(1),
        });
    }
    jsonpath_rust::parser::parse_json_path(text).map_err(|e| match &e {
        jsonpath_rust::parser::errors::JsonPathError::PestError(pest) => {
            let column = match pest.line_col {
                pest::error::LineColLocation::Pos((_, c))
                | pest::error::LineColLocation::Span((_, c), _) => c,
            };
            caret(text, column, "does not parse as JSONPath", "fix the query (RFC 9535 syntax)")
        }
        other => {
            ConditionError { message: format!("does not parse as JSONPath: {other}"), column: None }
        }
    })
}

/// Compiles a CEL expression over an event (`type`, `source`, extensions, `data`), with an
/// error that points at the column.
pub(crate) fn compile_cel(text: &str) -> Result<Arc<Program>, ConditionError> {
    if text.trim().is_empty() {
        return Err(ConditionError {
            message: "is empty; write a CEL expression such as `data.speed > 120.0`".into(),
            column: None,
        });
    }
    crate::condition::compile_program(text)
}

/// A CEL value's type for messages, with its article: `an int`, `a map`.
pub(crate) fn type_name(value: &Value) -> String {
    let name = format!("{:?}", value.type_of()).to_lowercase();
    let article = if name.starts_with(['a', 'e', 'i', 'o', 'u']) { "an" } else { "a" };
    format!("{article} {name}")
}

/// An attribute or extension of `event` as a string, borrowed where the event holds one.
pub(crate) fn attribute<'e>(event: &'e Event, name: &str) -> Option<Cow<'e, str>> {
    match name {
        "id" => Some(Cow::Borrowed(event.id())),
        "source" => Some(Cow::Owned(event.source().to_string())),
        "type" => Some(Cow::Borrowed(event.ty())),
        "specversion" => Some(Cow::Owned(event.specversion().to_string())),
        "subject" => event.subject().map(Cow::Borrowed),
        "datacontenttype" => event.datacontenttype().map(Cow::Borrowed),
        "dataschema" => event.dataschema().map(|s| Cow::Owned(s.to_string())),
        "time" => event.time().map(|t| Cow::Owned(t.to_rfc3339())),
        other => event.extension(other).map(|v| match v {
            cloudevents::event::ExtensionValue::String(s) => Cow::Borrowed(s.as_str()),
            other => Cow::Owned(other.to_string()),
        }),
    }
}

/// An event as `cel` filters, `jsonpath` filters and keys see it, built on first use and then
/// shared by every filter that looks at the event: its data is parsed at most once.
pub struct EventData<'a> {
    event: &'a Event,
    json: OnceCell<serde_json::Value>,
    context: OnceCell<Option<Context<'static, 'static>>>,
}

impl<'a> EventData<'a> {
    /// `event`, its data not converted yet.
    pub fn new(event: &'a Event) -> Self {
        Self { event, json: OnceCell::new(), context: OnceCell::new() }
    }

    /// The event.
    pub fn event(&self) -> &'a Event {
        self.event
    }

    /// Why the event's data cannot be read, if it says it is JSON (`datacontenttype`
    /// `application/json`, `text/json` or `…+json`) and does not parse: a filter over its
    /// data can then never judge it. Parses again; call it only for an event that failed.
    pub fn invalid_json(&self) -> Option<String> {
        let media = self.event.datacontenttype()?;
        let media = media.split(';').next().unwrap_or(media).trim().to_ascii_lowercase();
        if !(media == "application/json" || media == "text/json" || media.ends_with("+json")) {
            return None;
        }
        let error = match self.event.data()? {
            cloudevents::Data::Json(_) => return None,
            cloudevents::Data::String(s) => serde_json::from_str::<serde::de::IgnoredAny>(s).err(),
            cloudevents::Data::Binary(b) => {
                serde_json::from_slice::<serde::de::IgnoredAny>(b).err()
            }
        };
        error.map(|e| format!("the data is not the JSON its content type `{media}` says: {e}"))
    }

    /// The event as JSON: every attribute and extension as a string, and `data` parsed as
    /// JSON when it is JSON, else a string (null without data).
    fn json(&self) -> &serde_json::Value {
        self.json.get_or_init(|| {
            let data = match self.event.data() {
                None => serde_json::Value::Null,
                Some(cloudevents::Data::Json(v)) => v.clone(),
                Some(cloudevents::Data::String(s)) => {
                    serde_json::from_str(s).unwrap_or_else(|_| serde_json::Value::String(s.clone()))
                }
                Some(cloudevents::Data::Binary(b)) => {
                    serde_json::from_slice(b).unwrap_or_else(|_| {
                        serde_json::Value::String(String::from_utf8_lossy(b).into_owned())
                    })
                }
            };
            let mut object = serde_json::Map::new();
            for (name, value) in self.event.iter_attributes() {
                object.insert(name.to_string(), value.to_string().into());
            }
            for (name, value) in self.event.iter_extensions() {
                object.insert(name.to_string(), value.to_string().into());
            }
            object.insert("data".into(), data);
            serde_json::Value::Object(object)
        })
    }

    /// The CEL context of the event: every attribute and extension as a string variable, and
    /// `data`. `None` if the data cannot be represented in CEL.
    fn context(&self) -> Option<&Context<'static, 'static>> {
        self.context
            .get_or_init(|| {
                let json = self.json();
                let mut context = Context::with_env(crate::condition::env());
                for (name, value) in json.as_object()? {
                    match value {
                        serde_json::Value::String(s) if name != "data" => {
                            context.add_variable_from_value(name.clone(), s.clone());
                        }
                        _ => context
                            .add_variable_from_value(name.clone(), cel::to_value(value).ok()?),
                    }
                }
                Some(context)
            })
            .as_ref()
    }

    /// The value at `path` (`data.speed`, `type`) in the event as JSON, as JSON text.
    pub fn lookup(&self, path: &str) -> Option<String> {
        let mut value = self.json();
        for part in path.split('.') {
            value = value.get(part)?;
        }
        Some(match value {
            serde_json::Value::String(s) if !path.starts_with("data") => s.clone(),
            other => other.to_string(),
        })
    }

    /// Runs `program` over the event; `None` when it fails (a missing field, a type
    /// mismatch) or the data cannot be represented in CEL.
    pub fn eval(&self, program: &Program) -> Option<Value> {
        self.try_eval(program).ok()
    }

    /// Runs `program` over the event, or says why it could not: CEL's error (a missing
    /// field, a type mismatch), or data CEL cannot hold.
    pub fn try_eval(&self, program: &Program) -> Result<Value, String> {
        let context =
            self.context().ok_or_else(|| "the event's data cannot be read in CEL".to_string())?;
        program.execute(context).map_err(|e| e.to_string())
    }

    /// The nodes `query` selects in the event's JSON; `None` when the query fails.
    pub fn select(&self, query: &JpQuery) -> Option<Vec<&serde_json::Value>> {
        let nodes = jsonpath_rust::query::js_path_process(query, self.json()).ok()?;
        Some(nodes.into_iter().map(|n| n.val).collect())
    }

    /// Whether the event passes every filter of `filters`.
    pub fn passes(&self, filters: &[CompiledFilter]) -> bool {
        filters.iter().all(|f| f.matches(self))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cloudevents::{EventBuilder as _, EventBuilderV10};

    fn event(speed: f64) -> Event {
        let mut event = EventBuilderV10::new()
            .id("1")
            .source("/fleet")
            .ty("com.example.telemetry")
            .subject("fleet/v1")
            .extension("region", "north")
            .build()
            .expect("event");
        event.set_data(
            "application/json",
            format!("{{\"speed\":{speed},\"id\":\"v1\"}}").into_bytes(),
        );
        event
    }

    fn filter(yaml: &str) -> Result<CompiledFilter, FilterError> {
        let filter: Filter = serde_saphyr::from_str(yaml).expect("yaml");
        CompiledFilter::compile(&filter)
    }

    #[test]
    fn dialects() {
        let cases = [
            ("exact: { type: com.example.telemetry }", true),
            ("exact: { type: com.example.other }", false),
            ("exact: { region: north }", true),
            ("exact: { missing: x }", false),
            ("prefix: { subject: fleet/ }", true),
            ("suffix: { source: /fleet }", true),
            ("suffix: { source: /car }", false),
            ("all: [ { exact: { region: north } }, { prefix: { type: com. } } ]", true),
            ("all: [ { exact: { region: north } }, { prefix: { type: org. } } ]", false),
            ("any: [ { exact: { region: south } }, { prefix: { type: com. } } ]", true),
            ("not: { exact: { region: south } }", true),
            ("cel: data.speed > 120.0", true),
            ("cel: data.speed > 130.0", false),
            ("cel: type == 'com.example.telemetry' && region == 'north'", true),
            ("cel: data.nothing > 1.0", false),
            ("cel: data.id > 1", false),
            // A filter selector tests the children of what it follows: here, the root's.
            ("jsonpath: $[?@.speed > 120]", true),
            ("jsonpath: $[?@.speed > 130]", false),
            ("jsonpath: $.data.speed", true),
            ("jsonpath: $.region", true),
            ("jsonpath: $.data.missing", false),
        ];
        for (yaml, expected) in cases {
            let compiled = filter(yaml).unwrap_or_else(|e| panic!("{yaml}: {e:?}"));
            let event = event(121.5);
            assert_eq!(EventData::new(&event).passes(&[compiled]), expected, "{yaml}");
        }
    }

    #[test]
    fn numbers_compare_across_int_and_double() {
        // JSON `130` is an int to CEL and `130.5` a double; users write either literal.
        for (speed, yaml, expected) in [
            (130.0, "cel: data.speed > 120", true),
            (130.0, "cel: data.speed > 120.0", true),
            (110.5, "cel: data.speed > 120", false),
        ] {
            let compiled = filter(yaml).expect("compiles");
            let event = event(speed);
            assert_eq!(EventData::new(&event).passes(&[compiled]), expected, "{speed} {yaml}");
        }
    }

    #[test]
    fn errors_name_the_path_and_column() {
        let e =
            filter("all: [ { exact: { a: b } }, { cel: 'data.speed >' } ]").expect_err("bad cel");
        assert_eq!(e.path, ".all[1].cel");
        assert!(e.message.contains("column"), "{}", e.message);
        let e = filter("exact: { a: b }\nprefix: { a: b }").expect_err("two dialects");
        assert!(e.message.contains("exactly one"), "{}", e.message);
        let e = filter("exact: {}").expect_err("empty");
        assert_eq!(e.path, ".exact");
        let e = filter("jsonpath: \"$.data[?@.speed >]\"").expect_err("bad jsonpath");
        assert_eq!(e.path, ".jsonpath");
        assert!(e.message.contains("(column"), "{}", e.message);
        assert!(filter("jsonpath: data.speed").expect_err("no root").message.contains("start it"));
    }

    #[test]
    fn data_declared_json_that_does_not_parse_is_poison_to_filters_that_read_data() {
        let with = |content_type: &str, body: &str| {
            let mut e = event(1.0);
            e.set_data(content_type, body.as_bytes().to_vec());
            e
        };
        let garbled = with("application/json", "{not json");
        let reason = EventData::new(&garbled).invalid_json().expect("poison");
        assert!(reason.contains("application/json"), "{reason}");
        assert!(
            EventData::new(&with("application/cloudevents+json; charset=utf-8", "["))
                .invalid_json()
                .is_some()
        );
        // Not claimed to be JSON, or JSON indeed: nothing wrong with it.
        assert!(EventData::new(&with("text/plain", "{not json")).invalid_json().is_none());
        assert!(
            EventData::new(&with("application/json", "{\"speed\":1}")).invalid_json().is_none()
        );
        let compile =
            |cel: &str| CompiledFilter::Cel(compile_cel(cel).expect("cel"), Arc::from(cel));
        assert!(compile("data.speed > 120.0").reads_data());
        assert!(!compile("type == 'a' && subject == 'b'").reads_data());
        let exact = CompiledFilter::Exact(vec![("type".into(), "a".into())]);
        assert!(!exact.reads_data());
        assert!(CompiledFilter::Not(Box::new(compile("data.x == 1"))).reads_data());
    }

    #[test]
    fn a_false_filter_says_what_the_event_held() {
        let filter = |yaml: &str| {
            CompiledFilter::compile(&serde_saphyr::from_str::<Filter>(yaml).expect("filter"))
                .expect("compiles")
        };
        let slow = event(97.0);
        let data = EventData::new(&slow);
        assert_eq!(
            filter("cel: data.speed > 120.0 && type == 'com.example.telemetry'").verdict(&data),
            "`data.speed > 120.0 && type == 'com.example.telemetry'` was false; \
             data.speed = 97, type = com.example.telemetry"
        );
        assert_eq!(
            filter("cel: data.missing.depth > 1").verdict(&data),
            "`data.missing.depth > 1` failed: No such key: missing; data.missing.depth is missing"
        );
        assert_eq!(
            filter("exact: {type: a, region: north}").verdict(&data),
            "exact {region: north, type: a} was false; region = north, type = com.example.telemetry"
        );
        assert_eq!(
            filter("all: [{prefix: {subject: fleet/}}, {suffix: {subject: x}}]").verdict(&data),
            "all: suffix {subject: x} was false; subject = fleet/v1"
        );
    }
}
