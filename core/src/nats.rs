//! NATS as every part of ofe speaks it: connecting (credentials out of URLs, TLS, a connection
//! log that tells an outage from a reconnect loop) and the CloudEvents NATS protocol binding.
//! The JetStream bus and the NATS source both use this module; neither has its own copy.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use async_nats::{ConnectOptions, HeaderMap};
use cloudevents::{AttributesReader as _, Event};
use tokio::sync::watch;

use crate::{BusError, Connection, TlsFiles, event};

/// How a client authenticates to NATS. Its `Debug` shows no secret.
#[derive(Clone, Default, PartialEq, Eq)]
pub enum NatsAuth {
    /// No credentials.
    #[default]
    None,
    /// User and password.
    UserPassword {
        /// User name.
        user: String,
        /// Password.
        password: String,
    },
    /// A token.
    Token(String),
    /// A `.creds` file with a JWT and NKey seed.
    CredentialsFile(PathBuf),
}

impl std::fmt::Debug for NatsAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::None => f.write_str("None"),
            Self::UserPassword { user, .. } => write!(f, "UserPassword({user}, ***)"),
            Self::Token(_) => f.write_str("Token(***)"),
            Self::CredentialsFile(path) => write!(f, "CredentialsFile({})", path.display()),
        }
    }
}

/// Connects a NATS client to `url` (comma-separated servers) with `auth` and `tls`. The first
/// connection is retried while the server cannot be reached (it may still be starting), but
/// refused credentials or certificates fail at once, with the server's reason: retrying
/// cannot fix them. Later disconnections are logged and reconnected by the client.
pub async fn connect_client(
    url: &str,
    auth: &NatsAuth,
    tls: Option<&TlsFiles>,
) -> Result<async_nats::Client, BusError> {
    connect_watched(url, auth, tls, None).await
}

/// [`connect_client`], telling `state` when the connection drops and when it is back.
pub async fn connect_watched(
    url: &str,
    auth: &NatsAuth,
    tls: Option<&TlsFiles>,
    state: Option<Arc<watch::Sender<Connection>>>,
) -> Result<async_nats::Client, BusError> {
    // Credentials in a URL are taken out of it and given as options, so that no URL the
    // client logs (it logs every attempt at debug level) carries them.
    let mut from_url = None;
    let servers: Vec<String> = url
        .split(',')
        .map(|u| {
            let (server, credentials) = without_credentials(u.trim());
            from_url = from_url.take().or(credentials);
            server
        })
        .collect();
    let url = servers.join(",");
    let auth = match (auth, &from_url) {
        (NatsAuth::None, Some(credentials)) => credentials,
        _ => auth,
    };
    let mut attempt = 0;
    loop {
        match connect_options(auth, tls, state.clone()).await?.connect(servers.as_slice()).await {
            Ok(client) => return Ok(client),
            Err(e) => {
                use async_nats::ConnectErrorKind as Kind;
                let transient = matches!(e.kind(), Kind::Io | Kind::TimedOut | Kind::Dns);
                if !transient || attempt >= 10 {
                    return Err(BusError::unavailable(format!("cannot connect to NATS at {url}"))
                        .because(e));
                }
                attempt += 1;
                tracing::debug!(error = %e, attempt, "NATS not reachable yet; retrying");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }
}

/// `url` (comma-separated servers) without any credentials, as logs and errors may show it.
pub fn url_without_credentials(url: &str) -> String {
    url.split(',').map(|u| without_credentials(u.trim()).0).collect::<Vec<_>>().join(",")
}

/// `server` without the credentials of its URL (`nats://user:password@host` or
/// `nats://token@host`), and those credentials.
fn without_credentials(server: &str) -> (String, Option<NatsAuth>) {
    let (scheme, rest) = match server.split_once("://") {
        Some((scheme, rest)) => (Some(scheme), rest),
        None => (None, server),
    };
    let authority = &rest[..rest.find('/').unwrap_or(rest.len())];
    let Some(at) = authority.rfind('@') else { return (server.to_string(), None) };
    let (userinfo, host) = (&rest[..at], &rest[at + 1..]);
    let credentials = match userinfo.split_once(':') {
        Some((user, password)) => {
            NatsAuth::UserPassword { user: user.to_string(), password: password.to_string() }
        }
        None => NatsAuth::Token(userinfo.to_string()),
    };
    let server = match scheme {
        Some(scheme) => format!("{scheme}://{host}"),
        None => host.to_string(),
    };
    (server, Some(credentials))
}

/// Drops of one connection within a minute beyond which the client is in a reconnect loop:
/// something it does makes the server (or itself) close the connection again and again.
pub const RECONNECTS_PER_MINUTE: usize = 3;

/// What a connection's event callback remembers, to tell a reconnect loop from an outage.
#[derive(Default)]
struct ConnectionLog {
    /// When the connection dropped, within the last minute.
    drops: std::collections::VecDeque<std::time::Instant>,
    /// The last error the server or the client reported.
    last_error: Option<String>,
    /// When the loop was last reported at ERROR, so it is said at most once a minute.
    reported: Option<std::time::Instant>,
}

impl ConnectionLog {
    /// Records a drop; the ERROR line to log when the connection is in a loop.
    fn dropped(&mut self, now: std::time::Instant) -> Option<String> {
        const MINUTE: Duration = Duration::from_secs(60);
        self.drops.push_back(now);
        while self.drops.front().is_some_and(|t| now.duration_since(*t) > MINUTE) {
            self.drops.pop_front();
        }
        let looping = self.drops.len() > RECONNECTS_PER_MINUTE;
        if !looping || self.reported.is_some_and(|t| now.duration_since(t) < MINUTE) {
            return None;
        }
        self.reported = Some(now);
        let seen = self.last_error.as_deref().unwrap_or("no error from the server or the client");
        Some(format!(
            "the NATS connection dropped {} times in the last minute, each time soon after              connecting; last error seen: {seen}. Events may not be flowing. Check the server's              log and version (`nats-server --version`; ofe is tested on 2.9 and 2.10+)",
            self.drops.len()
        ))
    }
}

/// Connection options: credentials, TLS, and the connection log.
async fn connect_options(
    auth: &NatsAuth,
    tls: Option<&TlsFiles>,
    state: Option<Arc<watch::Sender<Connection>>>,
) -> Result<ConnectOptions, BusError> {
    let log = Arc::new(std::sync::Mutex::new(ConnectionLog::default()));
    let mut options = ConnectOptions::new()
        .connection_timeout(Duration::from_secs(5))
        .event_callback(move |event| {
            let state = state.clone();
            let log = log.clone();
            async move {
                match event {
                    async_nats::Event::Disconnected => {
                        let looping =
                            log.lock().ok().and_then(|mut l| l.dropped(std::time::Instant::now()));
                        match &looping {
                            Some(message) => tracing::error!("{message}"),
                            None => tracing::warn!(
                                "lost the connection to NATS; reconnecting with backoff"
                            ),
                        }
                        if let Some(state) = &state {
                            let why = looping.unwrap_or_else(|| {
                                "lost the connection to NATS; reconnecting".into()
                            });
                            state.send_replace(Connection::Lost(why));
                        }
                    }
                    async_nats::Event::Connected => {
                        tracing::info!("connected to NATS");
                        if let Some(state) = &state {
                            state.send_replace(Connection::Up);
                        }
                    }
                    async_nats::Event::ServerError(e) => {
                        tracing::warn!(error = %e, "NATS server error");
                        if let Ok(mut l) = log.lock() {
                            l.last_error = Some(format!("server error: {e}"));
                        }
                    }
                    async_nats::Event::ClientError(e) => {
                        tracing::warn!(error = %e, "NATS client error");
                        if let Ok(mut l) = log.lock() {
                            l.last_error = Some(format!("client error: {e}"));
                        }
                    }
                    other => tracing::debug!(event = %other, "NATS client event"),
                }
            }
        });
    options = match auth {
        NatsAuth::None => options,
        NatsAuth::UserPassword { user, password } => {
            options.user_and_password(user.clone(), password.clone())
        }
        NatsAuth::Token(token) => options.token(token.clone()),
        NatsAuth::CredentialsFile(path) => options.credentials_file(path).await.map_err(|e| {
            BusError::config(format!("cannot read credentials file {}", path.display())).because(e)
        })?,
    };
    if let Some(tls) = tls {
        options = options.require_tls(true);
        if let Some(ca) = &tls.ca_file {
            options = options.add_root_certificates(ca.clone());
        }
        if let Some((cert, key)) = &tls.client {
            options = options.add_client_certificate(cert.clone(), key.clone());
        }
    }
    Ok(options)
}

/// The content type of a structured-mode CloudEvent.
pub const STRUCTURED: &str = "application/cloudevents+json";

/// How an event travels in a NATS message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Attributes in `ce-` headers, data as the payload.
    Binary,
    /// The whole CloudEvent as JSON in the payload (`application/cloudevents+json`), as Dapr
    /// and OpenFunction's async functions read it.
    Structured,
}

/// `event` as a NATS message in `mode`: its headers and payload.
pub fn encode(event: &Event, mode: Mode) -> Result<(HeaderMap, Vec<u8>), BusError> {
    let mut headers = HeaderMap::new();
    let payload = match mode {
        Mode::Structured => {
            headers.insert("content-type", STRUCTURED);
            event::to_structured(event)?
        }
        Mode::Binary => {
            for (name, value) in event::binary_attributes(event) {
                headers.insert(format!("ce-{name}").as_str(), value.as_ref());
            }
            if let Some(content_type) = event.datacontenttype() {
                headers.insert("content-type", content_type);
            }
            event::data_bytes(event)
        }
    };
    Ok((headers, payload))
}

/// What a NATS message's headers say under the binding.
#[derive(Debug, Default)]
pub struct Parts<'a> {
    /// Binary-mode attributes, without their `ce-` prefix; empty when there are none.
    pub attributes: Vec<(&'a str, &'a str)>,
    /// The `content-type` header.
    pub content_type: Option<&'a str>,
    /// The `Nats-Msg-Id` header: the publisher's id for the message, stable across retries.
    pub msg_id: Option<&'a str>,
}

/// Reads the binding's headers of a message.
pub fn parts(headers: Option<&HeaderMap>) -> Parts<'_> {
    let mut parts = Parts::default();
    for (name, values) in headers.into_iter().flat_map(|h| h.iter()) {
        let name: &str = name.as_ref();
        let Some(value) = values.first() else { continue };
        if let Some(attribute) = name.strip_prefix("ce-") {
            parts.attributes.push((attribute, value.as_str()));
        } else if name.eq_ignore_ascii_case("content-type") {
            parts.content_type = Some(value.as_str());
        } else if name.eq_ignore_ascii_case("Nats-Msg-Id") {
            parts.msg_id = Some(value.as_str());
        }
    }
    parts
}

/// The event of a message: binary mode (attributes in `ce-` headers), or structured mode (the
/// CloudEvent as JSON in the payload, marked by its content type or, as Dapr publishes it,
/// with no CloudEvents headers at all).
pub fn decode(headers: Option<&HeaderMap>, payload: &[u8]) -> Result<Event, BusError> {
    let parts = parts(headers);
    if parts.attributes.is_empty() {
        return serde_json::from_slice::<Event>(payload).map_err(|e| {
            BusError::decode(
                "neither a binary-mode CloudEvent (no ce- headers) nor a structured one",
            )
            .because(e)
        });
    }
    event::from_binary(parts.attributes, parts.content_type, payload)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reconnect_loop_is_reported_once_a_minute_with_what_was_seen() {
        let mut log = ConnectionLog::default();
        let start = std::time::Instant::now();
        let at = |s: u64| start + Duration::from_secs(s);
        for s in 0..RECONNECTS_PER_MINUTE as u64 {
            assert_eq!(log.dropped(at(s)), None, "an outage's few drops are a warning");
        }
        log.last_error = Some("client error: invalid message".into());
        let message = log.dropped(at(4)).expect("a loop is reported");
        assert!(message.contains("dropped 4 times"), "{message}");
        assert!(message.contains("client error: invalid message"), "{message}");
        let again: Vec<u64> =
            (5..=66).step_by(2).filter(|s| log.dropped(at(*s)).is_some()).collect();
        assert_eq!(again, vec![65], "said again once the minute is over, as the loop goes on");
        assert_eq!(log.dropped(at(300)), None, "a single drop much later is no loop");
    }

    #[test]
    fn credentials_leave_the_url() {
        let (server, auth) = without_credentials("nats://me:pw@127.0.0.1:4222");
        assert_eq!(server, "nats://127.0.0.1:4222");
        assert_eq!(auth, Some(NatsAuth::UserPassword { user: "me".into(), password: "pw".into() }));
        let (server, auth) = without_credentials("tls://s3cr3t@nats.example/x");
        assert_eq!(server, "tls://nats.example/x");
        assert_eq!(auth, Some(NatsAuth::Token("s3cr3t".into())));
        assert_eq!(without_credentials("127.0.0.1:4222"), ("127.0.0.1:4222".into(), None));
        let debug =
            format!("{:?}", NatsAuth::UserPassword { user: "me".into(), password: "pw".into() });
        assert!(!debug.contains("pw"), "{debug}");
    }

    #[test]
    fn binary_and_structured_messages_round_trip() {
        use cloudevents::{EventBuilder, EventBuilderV10};
        let event = EventBuilderV10::new()
            .id("1")
            .source("/s")
            .ty("t")
            .data("application/json", serde_json::json!({"speed": 130}))
            .build()
            .expect("event");
        for mode in [Mode::Binary, Mode::Structured] {
            let (headers, payload) = encode(&event, mode).expect("encode");
            let back = decode(Some(&headers), &payload).expect("decode");
            assert_eq!((back.id(), back.ty()), ("1", "t"), "{mode:?}");
        }
        assert!(decode(None, b"not json").is_err(), "neither mode");
    }
}
