//! Filters and conditions against arbitrary events: the first line is a CEL expression, the
//! second a condition over inputs `a` and `b`, the rest an event in structured JSON (or, when
//! it is not one, the data of an event). Compiling may fail with an error; evaluating never
//! fails the process, whatever the event's data is.
#![no_main]

use std::collections::BTreeSet;

use cloudevents::{EventBuilder as _, EventBuilderV10};
use libfuzzer_sys::fuzz_target;
use ofe_crds::trigger::Filter;
use ofe_trigger::condition::Condition;
use ofe_trigger::filter::{CompiledFilter, EventData};

/// Filters every event meets: CEL over attributes and data, JSONPath, and the attribute
/// dialects.
const FIXED: &[&str] = &[
    r#"{"cel": "type == 's.1' && data.speed > 120.0"}"#,
    r#"{"cel": "has(data.vehicle) && data.vehicle.id.startsWith('v')"}"#,
    r#"{"cel": "size(data) > 2 || subject == 'x'"}"#,
    r#"{"exact": {"type": "s.1"}}"#,
    r#"{"prefix": {"source": "/fleet"}}"#,
    r#"{"suffix": {"subject": "telemetry"}}"#,
    r#"{"any": [{"exact": {"type": "a"}}, {"not": {"exact": {"type": "b"}}}]}"#,
];

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let mut lines = text.splitn(3, '\n');
    let (cel, condition, rest) = (lines.next(), lines.next(), lines.next().unwrap_or_default());
    let mut filters: Vec<CompiledFilter> = FIXED
        .iter()
        .map(|f| {
            let spec: Filter = serde_json::from_str(f).expect("a fixed filter parses");
            CompiledFilter::compile(&spec).expect("a fixed filter compiles")
        })
        .collect();
    if let Some(cel) = cel {
        let spec = Filter { cel: Some(cel.to_string()), ..Filter::default() };
        if let Ok(compiled) = CompiledFilter::compile(&spec) {
            filters.push(compiled);
        }
    }
    let event = serde_json::from_str::<cloudevents::Event>(rest).unwrap_or_else(|_| {
        let data = serde_json::from_str::<serde_json::Value>(rest)
            .unwrap_or_else(|_| serde_json::Value::String(rest.to_string()));
        EventBuilderV10::new()
            .id("1")
            .ty("s.1")
            .source("/fleet/v1")
            .data("application/json", data)
            .build()
            .expect("a fixed event builds")
    });
    let view = EventData::new(&event);
    for filter in &filters {
        let _ = filter.matches(&view);
    }
    let _ = view.passes(&filters);
    if let Some(condition) = condition {
        let inputs: BTreeSet<String> = ["a".to_string(), "b".to_string()].into();
        if let Ok(compiled) = Condition::compile(condition, &inputs) {
            for bits in 0..4 {
                let _ = compiled.evaluate_bits(bits);
            }
        }
    }
});
