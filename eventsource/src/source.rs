//! The extension point of EventSources: a [`SourceKind`] reads its field of an EventSource's
//! `spec` into [`Source`]s, one per event, and each runs with a [`SourceContext`].
//!
//! A new kind is one folder (its spec checks, its runtime, its `SourceKind`) and one line in
//! [`crate::kinds`]; see `docs/extending.md`.

use std::sync::Arc;

use async_trait::async_trait;
use ofe_core::EventBus;
use ofe_core::health::Reporter;
use ofe_crds::EventSource;
use ofe_crds::diagnostic::Diagnostic;
use tokio_util::sync::CancellationToken;

use crate::routes::HttpRoutes;
use crate::{SourceError, SourceMetrics};

/// What a running source is given.
pub struct SourceContext {
    /// Where its events go; it acknowledges upstream only after the bus has them.
    pub bus: Arc<dyn EventBus>,
    /// The counters of every source (`ofe_source_*`).
    pub metrics: SourceMetrics,
    /// Where it says whether its upstream connection works (the `SourceConnected`
    /// condition, and `Ready`).
    pub reporter: Reporter,
    /// Cancelled when the source is to stop.
    pub shutdown: CancellationToken,
    /// The process's HTTP listener, where a push source (the webhook) serves its path.
    pub routes: HttpRoutes,
}

/// One event of one EventSource, ready to run: its settings are checked and compiled, and
/// nothing is connected yet.
#[async_trait]
pub trait Source: Send + 'static {
    /// `<kind>.<event>`: what it reads, unique within its EventSource even when several kinds
    /// feed one event name (as OpenFunction allows).
    fn part(&self) -> String;

    /// Takes what must be held before anything is reported running, such as a push source's
    /// HTTP path, so that it is served as soon as [`crate::spawn`] returns. Called once, before
    /// [`Source::run`]; an error stops the whole EventSource from starting. The default takes
    /// nothing.
    fn bind(&mut self, context: &SourceContext) -> Result<(), SourceError> {
        let _ = context;
        Ok(())
    }

    /// Reads upstream and publishes to the bus until `context.shutdown`.
    async fn run(self: Box<Self>, context: SourceContext);
}

/// Where an EventSource is: the names every source of it stamps on its events.
#[derive(Clone, Copy, Debug)]
pub struct SourceName<'a> {
    /// Its namespace (`default` when it has none).
    pub namespace: &'a str,
    /// Its name.
    pub eventsource: &'a str,
}

/// A kind of input: one field of an EventSource's `spec` (a map from event name to
/// that kind's settings).
pub trait SourceKind: Send + Sync {
    /// The field under `spec`, e.g. `mqtt`.
    fn field(&self) -> &'static str;

    /// Every event of this kind in `es`: ready to run, or why not, naming the field.
    fn sources(
        &self,
        es: &EventSource,
        at: SourceName<'_>,
    ) -> Vec<Result<Box<dyn Source>, SourceError>>;

    /// Every problem of this kind's events in `es`, for `ofe validate` and the operator. The
    /// default is what [`SourceKind::sources`] refuses (one per event); a kind with field
    /// checks lists each of them, see [`check_per_event`].
    fn check(&self, es: &EventSource, at: SourceName<'_>) -> Vec<Diagnostic> {
        self.sources(es, at)
            .into_iter()
            .filter_map(Result::err)
            .map(SourceError::diagnostic)
            .collect()
    }
}

/// Every problem of one kind's events: the field checks `check(path, settings)` of each event,
/// all of them; and, for an event they find nothing in, what making its source with `new`
/// refuses (URLs, certificates read from their files, schedules), so that one problem is said
/// once.
pub(crate) fn check_per_event<S, T>(
    field: &str,
    events: Option<&std::collections::BTreeMap<String, S>>,
    at: SourceName<'_>,
    check: fn(&str, &S) -> Vec<Diagnostic>,
    new: impl Fn(&str, &str, &str, &S) -> Result<T, SourceError>,
) -> Vec<Diagnostic> {
    let mut out = Vec::new();
    for (event, spec) in events.into_iter().flatten() {
        let found = check(&format!("spec.{field}.{event}"), spec);
        if found.is_empty()
            && let Err(e) = new(at.namespace, at.eventsource, event, spec)
        {
            out.push(e.diagnostic());
        }
        out.extend(found);
    }
    out
}

/// The first error of a kind's field checks, as a source's constructor fails with it: the
/// constructor runs the checks first, so what they refuse is written only there.
pub(crate) fn checked(found: Vec<Diagnostic>) -> Result<(), SourceError> {
    match found.into_iter().find(Diagnostic::is_error) {
        Some(d) => Err(SourceError::Invalid { path: d.path, message: d.message }),
        None => Ok(()),
    }
}

/// Builds every event of one kind's map (`spec.<kind>`) with `new(namespace, eventsource,
/// event, settings)`.
pub(crate) fn per_event<S, T: Source>(
    events: Option<&std::collections::BTreeMap<String, S>>,
    at: SourceName<'_>,
    new: impl Fn(&str, &str, &str, &S) -> Result<T, SourceError>,
) -> Vec<Result<Box<dyn Source>, SourceError>> {
    events
        .into_iter()
        .flatten()
        .map(|(event, spec)| {
            new(at.namespace, at.eventsource, event, spec).map(|s| Box::new(s) as Box<dyn Source>)
        })
        .collect()
}

/// The `Kind` of a broker kind, and its `Source`: one source per event, built by
/// `$source::new(namespace, eventsource, event, spec)`, reporting through its `origin`, and
/// running with `$source::run(self, bus, metrics, shutdown)`. With `$check`, the kind's field
/// checks (`fn(path, spec) -> Vec<Diagnostic>`), which `new` runs first, list every problem of
/// an event for `ofe validate` (see [`check_per_event`]).
macro_rules! broker_kind {
    ($field:ident, $source:ident, $check:ident) => {
        crate::source::broker_kind!(@kind $field, $source,
            fn check(
                &self,
                es: &ofe_crds::EventSource,
                at: crate::SourceName<'_>,
            ) -> Vec<ofe_crds::diagnostic::Diagnostic> {
                crate::source::check_per_event(
                    stringify!($field), es.spec.$field.as_ref(), at, $check, $source::new)
            }
        );
    };
    ($field:ident, $source:ident) => {
        crate::source::broker_kind!(@kind $field, $source,);
    };
    (@kind $field:ident, $source:ident, $($check:item)?) => {
        #[doc = concat!("The `", stringify!($field), "` kind: `spec.", stringify!($field), "`, one [`", stringify!($source), "`] per event.")]
        pub struct Kind;

        impl crate::SourceKind for Kind {
            fn field(&self) -> &'static str {
                stringify!($field)
            }

            fn sources(
                &self,
                es: &ofe_crds::EventSource,
                at: crate::SourceName<'_>,
            ) -> Vec<Result<Box<dyn crate::Source>, crate::SourceError>> {
                crate::source::per_event(es.spec.$field.as_ref(), at, $source::new)
            }

            $($check)?
        }

        #[async_trait::async_trait]
        impl crate::Source for $source {
            fn part(&self) -> String {
                self.origin.labels.part()
            }

            async fn run(mut self: Box<Self>, context: crate::SourceContext) {
                self.origin.set_reporter(context.reporter);
                $source::run(*self, context.bus, context.metrics, context.shutdown).await;
            }
        }
    };
}
pub(crate) use broker_kind;
