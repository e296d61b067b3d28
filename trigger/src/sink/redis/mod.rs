//! The Redis sink (`sink.redis`): each event is a stream entry (`XADD`), its attributes and
//! extensions as `ce_<name>` fields, its media type as `datacontenttype` and its data as
//! `data`: what the Redis source reads back as the same CloudEvent. Delivered once Redis
//! answered with the entry's id. One connection per server and credentials, shared by every
//! sink that uses them, made again after an error.

use std::sync::{Arc, LazyLock};

use async_trait::async_trait;
use cloudevents::{AttributesReader as _, Event};
use ofe_core::trace::{self, KeyValue};
use redis::IntoConnectionInfo as _;
use redis::aio::MultiplexedConnection;

use super::{Destination, Failure, Reply, Sink, SinkContext};

/// A connection to one server, made when first needed and again after an error.
struct Connection {
    client: redis::Client,
    open: tokio::sync::Mutex<Option<MultiplexedConnection>>,
}

impl Connection {
    async fn get(&self) -> Result<MultiplexedConnection, Failure> {
        let mut open = self.open.lock().await;
        if let Some(connection) = open.as_ref() {
            return Ok(connection.clone());
        }
        let connection = self
            .client
            .get_multiplexed_async_connection()
            .await
            .map_err(|e| Failure::transient(format!("cannot connect to Redis: {e}")))?;
        *open = Some(connection.clone());
        Ok(connection)
    }

    /// Forgets the connection after an error, so the next attempt makes a new one.
    async fn reset(&self) {
        *self.open.lock().await = None;
    }
}

/// The connections, per server and credentials.
static CONNECTIONS: LazyLock<super::broker::Shared<Connection>> =
    LazyLock::new(super::broker::Shared::new);

/// A Redis stream.
pub struct RedisSink {
    connection: Arc<Connection>,
    host: String,
    stream: String,
    max_len: Option<u64>,
}

impl std::fmt::Debug for RedisSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisSink").field("host", &self.host).field("stream", &self.stream).finish()
    }
}

impl RedisSink {
    /// The sink `spec` asks for; the error names the field.
    pub fn compile(spec: &ofe_crds::sinks::RedisSinkSpec) -> Result<Destination, String> {
        let host = spec.redis_host.trim();
        let tls = spec.enable_tls == Some(true);
        let scheme = if tls { "rediss" } else { "redis" };
        let info = format!("{scheme}://{host}")
            .into_connection_info()
            .map_err(|e| format!("redisHost: `{host}` is not `host:port`: {e}"))?;
        let mut settings = info.redis_settings().clone().set_db(spec.redis_db.unwrap_or(0));
        if !spec.redis_password.is_empty() {
            settings = settings.set_password(&spec.redis_password);
        }
        let info = info.set_redis_settings(settings);
        if tls {
            // The Redis client builds its TLS configuration from the process's default rustls
            // provider; make it ring, as for every other TLS connection of ofe.
            let _ = rustls::crypto::ring::default_provider().install_default();
        }
        let key =
            format!("{scheme}://{host}/{}\n{}", spec.redis_db.unwrap_or(0), spec.redis_password);
        let connection = CONNECTIONS.get_or(&key, || {
            redis::Client::open(info)
                .map(|client| Connection { client, open: tokio::sync::Mutex::new(None) })
                .map_err(|e| format!("redisHost: {e}"))
        })?;
        Ok(Destination::new(Self {
            connection,
            host: host.to_string(),
            stream: spec.stream.clone(),
            max_len: spec.max_len,
        }))
    }
}

#[async_trait]
impl Sink for RedisSink {
    fn describe(&self) -> String {
        format!("redis://{}/{}", self.host, self.stream)
    }

    fn span(&self, resend: Option<KeyValue>) -> trace::Span {
        super::broker::broker_span("redis", &self.stream, resend)
    }

    async fn attempt(
        &self,
        event: &Event,
        context: &SinkContext<'_>,
    ) -> Result<Option<Box<Reply>>, Failure> {
        let mut fields: Vec<(String, Vec<u8>)> = ofe_core::event::binary_attributes(event)
            .into_iter()
            .map(|(name, value)| (format!("ce_{name}"), value.as_bytes().to_vec()))
            .collect();
        if let Some(content_type) = event.datacontenttype() {
            fields.push(("datacontenttype".into(), content_type.as_bytes().to_vec()));
        }
        if event.data().is_some() {
            fields.push(("data".into(), ofe_core::event::data_bytes(event)));
        }
        let mut command = redis::cmd("XADD");
        command.arg(&self.stream);
        if let Some(max_len) = self.max_len {
            command.arg("MAXLEN").arg("~").arg(max_len);
        }
        command.arg("*");
        for (name, value) in &fields {
            command.arg(name).arg(value.as_slice());
        }
        let mut connection = self.connection.get().await?;
        let sent = command.query_async::<String>(&mut connection);
        match tokio::time::timeout(context.timeout, sent).await {
            Ok(Ok(_id)) => Ok(None),
            Ok(Err(error)) => {
                // A broken connection is made again; an error answer leaves it as it is.
                if error.is_io_error()
                    || error.is_connection_dropped()
                    || error.is_unrecoverable_error()
                {
                    self.connection.reset().await;
                }
                Err(Failure::transient(format!("Redis at {} refused XADD: {error}", self.host)))
            }
            Err(_) => {
                self.connection.reset().await;
                Err(Failure::transient(format!(
                    "Redis at {}: no answer within {:?}",
                    self.host, context.timeout
                )))
            }
        }
    }
}
