//! Bus subjects that name namespace, EventSource and event unambiguously.
//!
//! OpenFunction joined names with `-` (`<ns>-<es>-<event>`), so namespace `a-b` with source `c`
//! and namespace `a` with source `b-c` collided. Here every name is one token, tokens are joined
//! with `.`, and any character outside `[A-Za-z0-9_-]` inside a token is percent-escaped, so a
//! token never contains the separator and two different names never render the same.

use std::fmt;

/// Where an event lives on the bus.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Subject {
    /// An event of an EventSource: `ofe.event.<namespace>.<eventsource>.<event>`.
    Event {
        /// Namespace of the EventSource.
        namespace: String,
        /// Name of the EventSource.
        source: String,
        /// Name of the event within the EventSource.
        event: String,
    },
    /// A topic that Trigger subscribers publish to: `ofe.topic.<namespace>.<topic>`.
    Topic {
        /// Namespace of the Trigger that publishes.
        namespace: String,
        /// Topic name.
        topic: String,
    },
    /// The queue of one Trigger subscriber, where the router puts the events that fire it:
    /// `ofe.queue.<namespace>.<trigger>.<subscriber>`.
    Queue {
        /// Namespace of the Trigger.
        namespace: String,
        /// Trigger name.
        trigger: String,
        /// The subscriber's index in the Trigger.
        subscriber: String,
    },
}

impl Subject {
    /// The subject of an EventSource's event.
    pub fn event(namespace: &str, source: &str, event: &str) -> Self {
        Self::Event { namespace: namespace.into(), source: source.into(), event: event.into() }
    }

    /// The subject of a topic in a namespace.
    pub fn topic(namespace: &str, topic: &str) -> Self {
        Self::Topic { namespace: namespace.into(), topic: topic.into() }
    }

    /// The queue of subscriber `subscriber` of Trigger `trigger`.
    pub fn queue(namespace: &str, trigger: &str, subscriber: &str) -> Self {
        Self::Queue {
            namespace: namespace.into(),
            trigger: trigger.into(),
            subscriber: subscriber.into(),
        }
    }

    /// The namespace of the resource the subject belongs to.
    pub fn namespace(&self) -> &str {
        match self {
            Self::Event { namespace, .. }
            | Self::Topic { namespace, .. }
            | Self::Queue { namespace, .. } => namespace,
        }
    }

    /// Parses the rendered form back; `None` if it is not one.
    pub fn parse(text: &str) -> Option<Self> {
        let parts: Vec<&str> = text.split('.').collect();
        match parts.as_slice() {
            ["ofe", "event", ns, es, ev] => Some(Self::Event {
                namespace: unescape(ns)?,
                source: unescape(es)?,
                event: unescape(ev)?,
            }),
            ["ofe", "topic", ns, t] => {
                Some(Self::Topic { namespace: unescape(ns)?, topic: unescape(t)? })
            }
            ["ofe", "queue", ns, t, s] => Some(Self::Queue {
                namespace: unescape(ns)?,
                trigger: unescape(t)?,
                subscriber: unescape(s)?,
            }),
            _ => None,
        }
    }
}

impl fmt::Display for Subject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Written token by token into the formatter: a subject is rendered on every publish,
        // so it builds no string of its own.
        match self {
            Self::Event { namespace, source, event } => {
                write!(f, "ofe.event.{}.{}.{}", Escaped(namespace), Escaped(source), Escaped(event))
            }
            Self::Topic { namespace, topic } => {
                write!(f, "ofe.topic.{}.{}", Escaped(namespace), Escaped(topic))
            }
            Self::Queue { namespace, trigger, subscriber } => write!(
                f,
                "ofe.queue.{}.{}.{}",
                Escaped(namespace),
                Escaped(trigger),
                Escaped(subscriber)
            ),
        }
    }
}

/// A token as it appears in a subject: `[A-Za-z0-9_-]` as is, any other byte as `%XX`.
struct Escaped<'a>(&'a str);

impl fmt::Display for Escaped<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Bytes, not chars: a multi-byte character is escaped byte by byte.
        let mut rest = self.0.as_bytes();
        while !rest.is_empty() {
            // The longest run that needs no escaping goes out in one write; it is ASCII.
            let safe = rest
                .iter()
                .position(|&b| !(b.is_ascii_alphanumeric() || b == b'_' || b == b'-'))
                .unwrap_or(rest.len());
            f.write_str(std::str::from_utf8(&rest[..safe]).unwrap_or_default())?;
            let Some((&byte, after)) = rest[safe..].split_first() else { break };
            write!(f, "%{byte:02X}")?;
            rest = after;
        }
        Ok(())
    }
}

pub(crate) fn escape(token: &str) -> String {
    Escaped(token).to_string()
}

fn unescape(token: &str) -> Option<String> {
    let bytes = token.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = token.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_that_collided_in_openfunction_do_not_collide() {
        let a = Subject::event("a-b", "c", "e").to_string();
        let b = Subject::event("a", "b-c", "e").to_string();
        assert_ne!(a, b);
        assert_eq!(a, "ofe.event.a-b.c.e");
    }

    #[test]
    fn multibyte_characters_are_escaped_byte_by_byte_and_round_trip() {
        let s = Subject::event("ns", "fahrzeug-ö", "a b");
        let text = s.to_string();
        assert_eq!(text, "ofe.event.ns.fahrzeug-%C3%B6.a%20b");
        assert_eq!(Subject::parse(&text), Some(s));
        assert_eq!(escape("ö"), "%C3%B6");
    }

    #[test]
    fn dots_and_wildcards_are_escaped_and_round_trip() {
        let s = Subject::event("ns", "my.source", "evt*>%");
        let text = s.to_string();
        assert_eq!(text, "ofe.event.ns.my%2Esource.evt%2A%3E%25");
        assert_eq!(Subject::parse(&text), Some(s));
        let t = Subject::topic("ns", "metrics");
        assert_eq!(Subject::parse(&t.to_string()), Some(t));
        let q = Subject::queue("ns", "my.trigger", "0");
        assert_eq!(q.to_string(), "ofe.queue.ns.my%2Etrigger.0");
        assert_eq!(Subject::parse(&q.to_string()), Some(q));
        assert_eq!(Subject::parse("ofe.event.a.b"), None);
    }
}
