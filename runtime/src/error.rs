//! Why the data plane could not do what it was asked, by kind.

use ofe_core::BusError;

/// An error of the data plane. Its [`std::error::Error::source`] chain holds the cause;
/// [`chain`] renders the whole chain for a status message.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// The HTTP client for sinks could not be built (a certificate file).
    #[error("cannot build the HTTP client for sinks")]
    Client(#[source] ofe_trigger::sink::http::tls::ClientError),
    /// A bus could not be opened.
    #[error(transparent)]
    Bus(#[from] ofe_eventbus::OpenError),
    /// A consumer (a subscriber's, or a router's) could not be opened on its bus.
    #[error("cannot subscribe {what}")]
    Subscribe {
        /// Which consumer, e.g. `consumer trigger.ns.t.0`.
        what: String,
        /// The bus's error.
        #[source]
        source: BusError,
    },
    /// An EventSource cannot run as written.
    #[error("{at}")]
    Source {
        /// Where it was read, e.g. `sources.yaml:document 2`.
        at: String,
        /// The field and the fix.
        #[source]
        source: ofe_eventsource::SourceError,
    },
    /// A subscriber's stored pause could not be read from its bus.
    #[error("cannot read whether consumer {consumer} is paused")]
    Pause {
        /// The subscriber's consumer.
        consumer: String,
        /// Why.
        #[source]
        error: crate::pause::PauseError,
    },
    /// A resource cannot be planned; the message names the field.
    #[error("{0}")]
    Plan(String),
    /// The webhook listener could not listen.
    #[error("cannot listen on {address} (--webhook-listen)")]
    Listen {
        /// The address it was given.
        address: String,
        /// The system's error.
        #[source]
        source: std::io::Error,
    },
}

/// `error` and every cause under it, joined by `: `, as a status message shows them.
pub use ofe_core::chain;
