//! The process's logs (to stderr, text or JSON lines) and OpenTelemetry traces (over OTLP,
//! off until the standard `OTEL_*` variables turn them on).

/// Installs the log subscriber: `RUST_LOG` if set, else `level`; JSON lines when asked.
pub fn init_logs(level: &str, json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}

/// The OpenTelemetry trace exporter, while it runs: [`Traces::shutdown`] sends what is
/// buffered.
struct Traces {
    provider: opentelemetry_sdk::trace::SdkTracerProvider,
}

impl Traces {
    /// Exports the spans still buffered (waiting at most the exporter's timeout) and stops.
    /// Call it outside the async runtime: the exporter's HTTP client blocks.
    fn shutdown(self) {
        if let Err(error) = self.provider.shutdown() {
            tracing::warn!(%error, "cannot export the last spans");
        }
    }
}

/// Runs `work`, the process's whole async life, on `runtime`, exporting spans when the
/// `OTEL_*` variables ask (see [`init_traces`]); the exporter's last batch goes out once the
/// runtime's tasks are gone.
pub fn run_traced<T>(
    runtime: tokio::runtime::Runtime,
    work: impl std::future::Future<Output = anyhow::Result<T>>,
) -> anyhow::Result<T> {
    let traces = init_traces()?;
    let result = runtime.block_on(work);
    drop(runtime);
    if let Some(traces) = traces {
        traces.shutdown();
    }
    result
}

/// Without the `otlp` feature there is no exporter: traces stay off, and a process asked for
/// them says so once.
#[cfg(not(feature = "otlp"))]
fn init_traces() -> anyhow::Result<Option<Traces>> {
    let asked = [
        "OTEL_TRACES_EXPORTER",
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    ]
    .iter()
    .any(|name| std::env::var(name).is_ok_and(|v| !v.trim().is_empty() && v.trim() != "none"));
    if asked {
        tracing::warn!("this ofe was built without the `otlp` feature: traces are not exported");
    }
    Ok(None)
}

/// Starts exporting ofe's spans over OTLP/HTTP when the standard variables ask for it, and
/// only then: `OTEL_TRACES_EXPORTER=otlp`, or an `OTEL_EXPORTER_OTLP_ENDPOINT` or
/// `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` (`OTEL_SDK_DISABLED=true` or
/// `OTEL_TRACES_EXPORTER=none` turn it off). The exporter reads the rest of the standard
/// variables itself: protocol (`http/protobuf`, the default, or `http/json`), headers,
/// timeout; the SDK reads the sampler, the batch settings and the resource
/// (`OTEL_SERVICE_NAME`, else `ofe`). A setting ofe cannot honour is an error that says
/// what to set instead. Call outside the async runtime.
#[cfg(feature = "otlp")]
fn init_traces() -> anyhow::Result<Option<Traces>> {
    use anyhow::{Context as _, bail};
    use opentelemetry_otlp::{Protocol, WithExportConfig as _, WithHttpConfig as _};
    let var = |name: &str| std::env::var(name).ok().filter(|v| !v.trim().is_empty());
    if var("OTEL_SDK_DISABLED").is_some_and(|v| v.trim().eq_ignore_ascii_case("true")) {
        return Ok(None);
    }
    let endpoint =
        var("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT").or_else(|| var("OTEL_EXPORTER_OTLP_ENDPOINT"));
    match var("OTEL_TRACES_EXPORTER").map(|v| v.trim().to_ascii_lowercase()).as_deref() {
        Some("none") => return Ok(None),
        Some("otlp") => {}
        Some(other) => bail!(
            "OTEL_TRACES_EXPORTER={other}: ofe exports traces over OTLP only; set it to `otlp` \
             (with OTEL_EXPORTER_OTLP_ENDPOINT) or `none`"
        ),
        None if endpoint.is_none() => return Ok(None),
        None => {}
    }
    // Read here, not left to the exporter: with JSON built in, its default would be JSON,
    // where the OpenTelemetry spec says http/protobuf.
    let protocol = ["OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL"]
        .into_iter()
        .find_map(|name| var(name).map(|value| (name, value.trim().to_ascii_lowercase())));
    let protocol = match protocol {
        None => Protocol::HttpBinary,
        Some((_, p)) if p == "http/protobuf" => Protocol::HttpBinary,
        Some((_, p)) if p == "http/json" => Protocol::HttpJson,
        Some((name, p)) if p == "grpc" => bail!(
            "{name}=grpc: ofe exports OTLP over HTTP; set {name}=http/protobuf and point \
             OTEL_EXPORTER_OTLP_ENDPOINT at the collector's HTTP port (4318 by default)"
        ),
        Some((name, p)) => bail!("{name}={p}: use http/protobuf (the default) or http/json"),
    };
    let client = otlp_client().context("cannot build the OTLP exporter's HTTP client")?;
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_http_client(client)
        .with_protocol(protocol)
        .build()
        .context("cannot set up the OTLP trace exporter from the OTEL_* variables")?;
    let mut resource = opentelemetry_sdk::Resource::builder();
    if var("OTEL_SERVICE_NAME").is_none() {
        resource = resource.with_service_name("ofe");
    }
    let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource.build())
        .build();
    opentelemetry::global::set_tracer_provider(provider.clone());
    ofe_core::trace::enable();
    let endpoint = endpoint.unwrap_or_else(|| "http://localhost:4318".into());
    // As every URL ofe logs: without a password or query values.
    let shown = reqwest::Url::parse(&endpoint)
        .map(|url| ofe_trigger::sink::http::redacted(&url))
        .unwrap_or(endpoint);
    tracing::info!(endpoint = %shown, "exporting traces over OTLP");
    Ok(Some(Traces { provider }))
}

/// The exporter's blocking HTTP client (the batch exporter runs on a thread of its own),
/// on ofe's TLS stack, trusting the system's CAs plus `OTEL_EXPORTER_OTLP_CERTIFICATE`, and
/// presenting `OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE`/`_KEY` when set. Built on a thread of
/// its own: a blocking client cannot be made inside an async runtime.
#[cfg(feature = "otlp")]
fn otlp_client() -> anyhow::Result<reqwest::blocking::Client> {
    use ofe_trigger::sink::http::tls::{SinkTls, TlsNames};
    let var = |signal: &'static str, general: &'static str| {
        std::env::var(signal)
            .ok()
            .map(|v| (signal, v))
            .or_else(|| std::env::var(general).ok().map(|v| (general, v)))
            .filter(|(_, v)| !v.trim().is_empty())
    };
    let ca = var("OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE", "OTEL_EXPORTER_OTLP_CERTIFICATE");
    let cert = var(
        "OTEL_EXPORTER_OTLP_TRACES_CLIENT_CERTIFICATE",
        "OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE",
    );
    let key = var("OTEL_EXPORTER_OTLP_TRACES_CLIENT_KEY", "OTEL_EXPORTER_OTLP_CLIENT_KEY");
    let client = match (&cert, &key) {
        (Some((_, cert)), Some((_, key))) => Some((cert.into(), key.into())),
        (None, None) => None,
        (Some((name, _)), None) | (None, Some((name, _))) => anyhow::bail!(
            "{name} is set without its pair; set both the client certificate and the key"
        ),
    };
    let names = TlsNames {
        ca: ca.as_ref().map_or("OTEL_EXPORTER_OTLP_CERTIFICATE", |(n, _)| *n),
        cert: cert.as_ref().map_or("OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE", |(n, _)| *n),
        key: key.as_ref().map_or("OTEL_EXPORTER_OTLP_CLIENT_KEY", |(n, _)| *n),
    };
    let tls = SinkTls { ca_file: ca.map(|(_, v)| v.into()), client };
    let config = ofe_trigger::sink::http::tls::rustls_config(&tls, &names)?;
    std::thread::spawn(move || {
        reqwest::blocking::Client::builder().tls_backend_preconfigured(config).build()
    })
    .join()
    .map_err(|_| anyhow::anyhow!("the thread building the client panicked"))?
    .map_err(Into::into)
}
