//! How the HTTP sinks' client proves who it talks to, and who it is.

use std::sync::Arc;

use super::client::HttpClient;

/// How the delivery client proves who it talks to, and who it is, over HTTPS.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SinkTls {
    /// PEM certificates of CAs to trust besides the system's (a cluster's private CA).
    pub ca_file: Option<std::path::PathBuf>,
    /// A PEM client certificate and key, for sinks that ask for one (mutual TLS).
    pub client: Option<(std::path::PathBuf, std::path::PathBuf)>,
}

/// Why the delivery client could not be built.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// A certificate or key file is unreadable or not PEM; names the file and the fix.
    #[error("{0}")]
    Tls(String),
    /// The HTTP client itself.
    #[error("cannot build the HTTP client: {0}")]
    Build(#[from] reqwest::Error),
}

/// The HTTP client deliveries use: a keep-alive connection pool, trusting the system's CAs.
/// Clones share it.
pub fn http_client() -> Result<HttpClient, ClientError> {
    http_client_with(&SinkTls::default())
}

/// [`http_client`] with `tls`: more CAs to trust, and a client certificate.
pub fn http_client_with(tls: &SinkTls) -> Result<HttpClient, ClientError> {
    Ok(HttpClient::new(rustls_config(tls, &SINK_TLS_NAMES)?)?)
}

/// What a TLS setting is called where the user gives it, for errors: a flag, an env var.
#[derive(Clone, Copy, Debug)]
pub struct TlsNames {
    /// The CA file's name.
    pub ca: &'static str,
    /// The client certificate file's name.
    pub cert: &'static str,
    /// The client key file's name.
    pub key: &'static str,
}

const SINK_TLS_NAMES: TlsNames =
    TlsNames { ca: "--sink-ca-file", cert: "--sink-cert-file", key: "--sink-key-file" };

/// A rustls configuration on the ring provider (the one every TLS connection of ofe uses):
/// the system's roots plus `tls.ca_file`, and the client certificate if any; errors name the
/// settings as `names` says.
pub fn rustls_config(tls: &SinkTls, names: &TlsNames) -> Result<rustls::ClientConfig, ClientError> {
    use rustls::pki_types::pem::PemObject as _;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let read = |path: &std::path::Path, what: &str| {
        std::fs::read(path)
            .map_err(|e| ClientError::Tls(format!("cannot read {what} {}: {e}", path.display())))
    };
    let certs = |path: &std::path::Path, what: &str| {
        let found = CertificateDer::pem_slice_iter(&read(path, what)?)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| ClientError::Tls(format!("{what} {} is not PEM: {e}", path.display())))?;
        if found.is_empty() {
            return Err(ClientError::Tls(format!(
                "{what} {} holds no certificate; give a PEM file",
                path.display()
            )));
        }
        Ok(found)
    };
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_native_certs::load_native_certs().certs {
        // A system certificate rustls cannot use is skipped, as every TLS client does.
        let _ = roots.add(cert);
    }
    if let Some(ca) = &tls.ca_file {
        for cert in certs(ca, names.ca)? {
            roots.add(cert).map_err(|e| ClientError::Tls(format!("{}: {e}", names.ca)))?;
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| ClientError::Tls(e.to_string()))?
        .with_root_certificates(roots);
    let mut config = match &tls.client {
        Some((cert, key)) => {
            let chain = certs(cert, names.cert)?;
            let key = PrivateKeyDer::from_pem_slice(&read(key, names.key)?).map_err(|e| {
                ClientError::Tls(format!("{} {} is not a PEM key: {e}", names.key, key.display()))
            })?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| ClientError::Tls(format!("{}: {e}", names.cert)))?
        }
        None => builder.with_no_client_auth(),
    };
    // reqwest speaks HTTP/1.1 here; offer it, as its own configuration would.
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}
