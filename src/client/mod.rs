//! The operator's tools, clients of a running ofe's endpoint (`ofe run` or `ofe operator`):
//! - `ofe send` publishes a test CloudEvent as an EventSource's event or on a topic;
//! - `ofe tail` prints each step of the events' paths as they flow;
//! - `ofe status` shows every EventSource and Trigger with its condition, rates and errors;
//! - `ofe pause` and `ofe resume` stop and restart a Trigger's subscribers reading the bus;
//! - `ofe deadletters` lists, shows, redrives and purges what they kept after failing;
//! - `ofe replay` delivers a subscriber's past events again, from a point in time.
//!
//! Each prints lines for a terminal, or JSON with `--json` for scripts. This module holds what
//! they share: where the endpoint is ([`Endpoint`]), and the HTTP client.

pub mod deadletters;
pub mod pause;
pub mod replay;
pub mod send;
pub mod status;
pub mod tail;

use std::time::Duration;

use anyhow::{Context as _, bail};

/// Where the running ofe is, and how to be let in.
#[derive(clap::Args, Clone)]
pub struct Endpoint {
    /// The running ofe's endpoint (its `--listen`).
    #[arg(long, default_value = "http://127.0.0.1:9464", env = "OFE_ENDPOINT")]
    endpoint: String,
    /// The console token the process was started with (`--console-token`).
    #[arg(long, env = "OFE_CONSOLE_TOKEN", hide_env_values = true)]
    token: Option<String>,
}

impl Endpoint {
    fn url(&self, path: &str) -> String {
        let base = self.endpoint.trim_end_matches('/');
        if base.contains("://") { format!("{base}{path}") } else { format!("http://{base}{path}") }
    }

    fn url_with(&self, path: &str, query: &[(&str, String)]) -> anyhow::Result<reqwest::Url> {
        let mut url = reqwest::Url::parse(&self.url(path))
            .with_context(|| format!("`{}` is not a URL (--endpoint)", self.endpoint))?;
        if !query.is_empty() {
            url.query_pairs_mut().extend_pairs(query);
        }
        Ok(url)
    }

    fn request(&self, request: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match self.token.as_deref().filter(|t| !t.is_empty()) {
            Some(token) => request.bearer_auth(token),
            None => request,
        }
    }

    /// The answer's body, or an error with what the endpoint said.
    async fn call(&self, request: reqwest::RequestBuilder) -> anyhow::Result<reqwest::Response> {
        let response = self
            .request(request)
            .send()
            .await
            .with_context(|| format!("cannot reach ofe at {} (--endpoint)", self.endpoint))?;
        if !response.status().is_success() {
            let status = response.status();
            let text = response.text().await.unwrap_or_default();
            bail!("ofe at {} answered {status}: {}", self.endpoint, text.trim());
        }
        Ok(response)
    }
}

/// Which Trigger subscribers a tool acts on.
#[derive(clap::Args, Clone)]
pub struct Subscribers {
    /// The Trigger's namespace.
    #[arg(short, long, default_value = "default")]
    namespace: String,
    /// The Trigger.
    #[arg(long)]
    trigger: String,
    /// Only this subscriber (its index in `spec.subscribers`); all of them when absent.
    #[arg(long)]
    subscriber: Option<String>,
}

impl Subscribers {
    /// The endpoint's query for them.
    fn query(&self) -> Vec<(&'static str, String)> {
        let mut query =
            vec![("namespace", self.namespace.clone()), ("trigger", self.trigger.clone())];
        query.extend(self.subscriber.clone().map(|s| ("subscriber", s)));
        query
    }
}

pub(crate) fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

pub(crate) fn client() -> anyhow::Result<reqwest::Client> {
    reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(5))
        .build()
        .context("cannot build the HTTP client")
}

/// Reads a JSON answer (reqwest's own `json` is a feature this build leaves out).
pub(crate) trait JsonText {
    async fn json_text<T: serde::de::DeserializeOwned>(self) -> anyhow::Result<T>;
}

impl JsonText for reqwest::Response {
    async fn json_text<T: serde::de::DeserializeOwned>(self) -> anyhow::Result<T> {
        let text = self.text().await.context("the answer broke off")?;
        serde_json::from_str(&text).with_context(|| format!("not JSON: {text}"))
    }
}
