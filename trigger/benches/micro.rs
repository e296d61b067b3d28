#![allow(missing_docs)] // criterion's macros generate undocumented functions

//! W6, the per-event costs under the hot path, with criterion:
//!
//! ```sh
//! cargo bench -p ofe-trigger --bench micro
//! ```
//!
//! - `cel_filter/evaluate`: a typical filter, `type == 's.1' && data.speed > 120`, on an
//!   event whose 1 KiB of JSON data is already parsed (the goal: ≤ 1 µs).
//! - `cel_filter/per_event`: the same with the data parsed for this event, as the router pays
//!   it once per event (shared by every filter that reads data).
//! - `json_lookup`: parsing 1 KiB of JSON data and reading one field (`$.data.speed`), as a JSONPath filter.
//! - `cloudevent_codec`: a 1 KiB CloudEvent encoded to and decoded from the bus format (the
//!   binary-mode attributes and the data), as every publish and delivery does.

use std::hint::black_box;

use cloudevents::{Event, EventBuilder as _, EventBuilderV10};
use criterion::{Criterion, criterion_group, criterion_main};
use ofe_crds::Filter;
use ofe_trigger::filter::{CompiledFilter, EventData};

fn event() -> Event {
    let mut data = br#"{"vehicle":"car-7","speed":131,"pad":""#.to_vec();
    data.resize(1022, b'x');
    data.extend_from_slice(b"\"}");
    EventBuilderV10::new()
        .id("e-1")
        .source("/bench")
        .ty("s.1")
        .data("application/json", data)
        .build()
        .expect("event")
}

fn filter(f: Filter) -> CompiledFilter {
    CompiledFilter::compile(&f).expect("compiles")
}

fn micro(c: &mut Criterion) {
    let event = event();
    let cel = filter(Filter {
        cel: Some("type == 's.1' && data.speed > 120".into()),
        ..Filter::default()
    });
    let data = EventData::new(&event);
    assert!(cel.matches(&data), "the filter matches the event");
    c.bench_function("cel_filter/evaluate", |b| {
        b.iter(|| black_box(cel.matches(black_box(&data))))
    });
    c.bench_function("cel_filter/per_event", |b| {
        b.iter(|| black_box(cel.matches(&EventData::new(black_box(&event)))))
    });
    let jsonpath = filter(Filter { jsonpath: Some("$.data.speed".into()), ..Filter::default() });
    assert!(jsonpath.matches(&EventData::new(&event)));
    c.bench_function("json_lookup", |b| {
        b.iter(|| black_box(jsonpath.matches(&EventData::new(black_box(&event)))))
    });
    c.bench_function("cloudevent_codec", |b| {
        b.iter(|| {
            let bytes = ofe_core::event::encode(black_box(&event)).expect("encode");
            black_box(ofe_core::event::decode(&bytes).expect("decode"))
        })
    });
}

criterion_group! {
    name = benches;
    config = Criterion::default();
    targets = micro
}
criterion_main!(benches);
