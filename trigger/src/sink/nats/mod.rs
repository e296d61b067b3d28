//! The NATS sink (`sink.nats`): each event is a message in the CloudEvents NATS binding's
//! binary mode (`ce-` headers, the data as the payload).
//!
//! - Core NATS: delivered once the server took the message (the client's flush returned).
//!   Core NATS acknowledges nothing further: a subscriber that is not listening never gets it.
//! - JetStream (`jetstream: true`): delivered once the stream acknowledged the message, with
//!   `Nats-Msg-Id` naming the event, so the stream drops the copy a retry sends.
//!
//! One connection per server and credentials, shared by every sink that uses them, made when
//! the first event is sent (a server that is down delays deliveries, which retry).

use std::sync::{Arc, LazyLock};

use async_trait::async_trait;
use cloudevents::{AttributesReader as _, Event};
use ofe_core::nats::{Mode, NatsAuth};
use ofe_core::trace::{self, KeyValue};
use tokio::sync::OnceCell;

use super::{Destination, Failure, Reply, Sink, SinkContext};

/// A connection, made when first needed.
struct Connection {
    url: String,
    auth: NatsAuth,
    tls: Option<ofe_core::TlsFiles>,
    client: OnceCell<async_nats::Client>,
}

impl Connection {
    async fn client(&self) -> Result<&async_nats::Client, Failure> {
        self.client
            .get_or_try_init(|| {
                ofe_core::nats::connect_client(&self.url, &self.auth, self.tls.as_ref())
            })
            .await
            .map_err(|e| Failure::transient(ofe_core::chain(&e)))
    }
}

/// The connections, per server and credentials.
static CONNECTIONS: LazyLock<super::broker::Shared<Connection>> =
    LazyLock::new(super::broker::Shared::new);

/// A NATS subject.
pub struct NatsSink {
    connection: Arc<Connection>,
    /// The URL without credentials, as logs show it.
    shown: String,
    subject: String,
    jetstream: bool,
}

impl std::fmt::Debug for NatsSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsSink")
            .field("url", &self.shown)
            .field("subject", &self.subject)
            .finish()
    }
}

impl NatsSink {
    /// The sink `spec` asks for.
    pub fn compile(spec: &ofe_crds::sinks::NatsSinkSpec) -> Result<Destination, String> {
        let auth: NatsAuth = spec.auth.as_ref().map(Into::into).unwrap_or_default();
        let tls: Option<ofe_core::TlsFiles> = spec.tls.as_ref().map(Into::into);
        let key = format!(
            "{}\n{auth:?}\n{:?}\n{}",
            spec.url,
            tls,
            match &auth {
                // The credentials themselves are part of what makes a connection another one.
                NatsAuth::UserPassword { password, .. } => password.clone(),
                NatsAuth::Token(token) => token.clone(),
                _ => String::new(),
            }
        );
        let connection = CONNECTIONS.get_or(&key, || {
            Ok::<_, String>(Connection {
                url: spec.url.clone(),
                auth,
                tls,
                client: OnceCell::new(),
            })
        })?;
        Ok(Destination::new(Self {
            connection,
            shown: ofe_core::nats::url_without_credentials(&spec.url),
            subject: spec.subject.clone(),
            jetstream: spec.jetstream.unwrap_or(false),
        }))
    }
}

#[async_trait]
impl Sink for NatsSink {
    fn describe(&self) -> String {
        let kind = if self.jetstream { "jetstream" } else { "nats" };
        format!("{kind}:{}/{}", self.shown, self.subject)
    }

    fn span(&self, resend: Option<KeyValue>) -> trace::Span {
        super::broker::broker_span("nats", &self.subject, resend)
    }

    async fn attempt(
        &self,
        event: &Event,
        context: &SinkContext<'_>,
    ) -> Result<Option<Box<Reply>>, Failure> {
        let (mut headers, payload) = ofe_core::nats::encode(event, Mode::Binary)
            .map_err(|e| Failure::permanent(ofe_core::chain(&e)))?;
        let client = self.connection.client().await?.clone();
        let subject = self.subject.clone();
        let sent = async {
            if self.jetstream {
                // The pair that names a CloudEvent, so that two sources' ids do not collide.
                headers
                    .insert("Nats-Msg-Id", format!("{} {}", event.source(), event.id()).as_str());
                let ack = async_nats::jetstream::new(client)
                    .publish_with_headers(subject, headers, payload.into())
                    .await
                    .map_err(|e| format!("JetStream refused the message: {e}"))?;
                ack.await.map_err(|e| format!("JetStream did not acknowledge the message: {e}"))?;
            } else {
                client
                    .publish_with_headers(subject, headers, payload.into())
                    .await
                    .map_err(|e| format!("NATS publish failed: {e}"))?;
                client.flush().await.map_err(|e| format!("NATS flush failed: {e}"))?;
            }
            Ok::<(), String>(())
        };
        match tokio::time::timeout(context.timeout, sent).await {
            Ok(Ok(())) => Ok(None),
            Ok(Err(reason)) => Err(Failure::transient(format!("{}: {reason}", self.shown))),
            Err(_) => Err(Failure::transient(format!(
                "{}: no acknowledgement within {:?}",
                self.shown, context.timeout
            ))),
        }
    }
}
