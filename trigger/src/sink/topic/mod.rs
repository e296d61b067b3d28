//! The topic sink: a publish on a bus topic, where an async function or the next Trigger of a
//! chain reads it. Each pass counts a hop, so a loop of Triggers stops.

use std::sync::Arc;

use async_trait::async_trait;
use cloudevents::Event;
use ofe_core::Subject;
use ofe_core::trace::{self, KeyValue, SpanKind};

use super::{Failure, Reply, Sink, SinkContext};

/// Extension attribute counting how many times ofe has passed an event on to a topic or
/// published a reply derived from it, so that a loop of Triggers stops (as Knative's broker
/// TTL does).
pub const EXT_HOPS: &str = "ofehops";

/// The hop limit when none is configured.
pub const DEFAULT_MAX_HOPS: u32 = 16;

/// The hop count of `event` (0 when it has none).
pub fn hops(event: &Event) -> u32 {
    event.extension(EXT_HOPS).and_then(|v| v.to_string().parse().ok()).unwrap_or(0)
}

/// `event` with its hop count set to `n`.
pub fn with_hops(event: &Event, n: u32) -> Event {
    let mut out = event.clone();
    out.set_extension(EXT_HOPS, i64::from(n));
    out
}

/// A topic of the bus.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TopicSink {
    /// Topic name, as written in the manifest.
    pub name: String,
    /// Its subject.
    pub subject: Subject,
}

#[async_trait]
impl Sink for TopicSink {
    fn describe(&self) -> String {
        format!("topic:{}", self.name)
    }

    fn span(&self, resend: Option<KeyValue>) -> trace::Span {
        let mut attributes = trace::messaging("send", &self.subject);
        attributes.extend(resend);
        let name = format!("publish {}", self.subject);
        trace::Span::start(name, SpanKind::Producer, &trace::current(), attributes)
    }

    fn bus_subject(&self) -> Option<&Subject> {
        Some(&self.subject)
    }

    async fn attempt(
        &self,
        event: &Event,
        context: &SinkContext<'_>,
    ) -> Result<Option<Box<Reply>>, Failure> {
        let hops = hops(event) + 1;
        if hops > context.max_hops {
            return Err(Failure {
                reason: format!(
                    "hop limit {} reached: the event has passed through Triggers {} \
                     times; a loop of Triggers?",
                    context.max_hops,
                    hops - 1
                ),
                ..Failure::default()
            });
        }
        let mut next = with_hops(event, hops);
        context.span.stamp_hop(&mut next);
        context
            .bus
            .publish_shared(&self.subject, Arc::new(next))
            .await
            .map(|_| None)
            .map_err(|e| Failure::transient(format!("publish failed: {}", ofe_core::Report(&e))))
    }
}

/// The `topic` kind: `topic`, with `deadLetterTopic`, topics of the Trigger's namespace.
pub struct Kind;

impl super::SinkKind for Kind {
    fn route(
        &self,
        sub: &ofe_crds::trigger::Subscriber,
        at: &super::SinkSite<'_>,
    ) -> Option<Result<super::KindRoute, ofe_crds::diagnostic::Diagnostic>> {
        let to = |t: &String| super::Destination::topic(t.clone(), Subject::topic(at.namespace, t));
        let destination = to(sub.topic.as_ref()?);
        Some(Ok(super::KindRoute {
            destination,
            dead_letter: sub.dead_letter_topic.as_ref().map(to),
        }))
    }
}
