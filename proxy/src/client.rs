//! Connections to upstreams: one hyper client (and so one connection pool) per cluster per
//! worker, so a worker's requests ride connections driven by its own event loop.

use crate::body::RequestBody;
use crate::config::{TransportConfig, UpstreamProtocol};
use http::uri::Scheme;
use hyper_rustls::FixedServerNameResolver;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use std::sync::Arc;
use std::time::Duration;

pub type Connector = hyper_rustls::HttpsConnector<HttpConnector>;
pub type UpstreamClient = Client<Connector, RequestBody>;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot read CA file {path}: {detail}")]
    CaFile { path: String, detail: String },
    #[error("no usable root certificates: {0}")]
    Roots(String),
    #[error("TLS setup: {0}")]
    Tls(#[from] rustls::Error),
}

/// A cluster's clients, one per worker, plus what built them (to reuse across reloads).
pub struct ClusterClients {
    pub transport: TransportConfig,
    pub scheme: Scheme,
    per_worker: Box<[UpstreamClient]>,
}

impl std::fmt::Debug for ClusterClients {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterClients")
            .field("transport", &self.transport)
            .field("workers", &self.per_worker.len())
            .finish()
    }
}

impl ClusterClients {
    pub fn build(
        transport: &TransportConfig,
        workers: usize,
    ) -> Result<ClusterClients, ClientError> {
        let tls = match &transport.tls {
            Some(t) => Some(client_tls_config(t.ca_file.as_deref())?),
            None => None,
        };
        let per_worker = (0..workers.max(1))
            .map(|_| build_client(transport, tls.clone()))
            .collect();
        Ok(ClusterClients {
            transport: transport.clone(),
            scheme: if transport.tls.is_some() {
                Scheme::HTTPS
            } else {
                Scheme::HTTP
            },
            per_worker,
        })
    }

    pub fn for_worker(&self, worker: usize) -> &UpstreamClient {
        &self.per_worker[worker % self.per_worker.len()]
    }
}

fn client_tls_config(
    ca_file: Option<&std::path::Path>,
) -> Result<rustls::ClientConfig, ClientError> {
    let mut roots = rustls::RootCertStore::empty();
    match ca_file {
        Some(path) => {
            let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
                .and_then(|it| it.collect::<Result<Vec<_>, _>>())
                .map_err(|e| ClientError::CaFile {
                    path: path.display().to_string(),
                    detail: e.to_string(),
                })?;
            if certs.is_empty() {
                return Err(ClientError::CaFile {
                    path: path.display().to_string(),
                    detail: "no PEM certificates in it".into(),
                });
            }
            for c in certs {
                roots.add(c)?;
            }
        }
        None => {
            let native = rustls_native_certs::load_native_certs();
            for c in native.certs {
                // Skip the odd unparsable system certificate rather than failing every cluster.
                let _ = roots.add(c);
            }
            if roots.is_empty() {
                return Err(ClientError::Roots(format!(
                    "the system has none ({} errors); set tls.ca_file",
                    native.errors.len()
                )));
            }
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

fn build_client(t: &TransportConfig, tls: Option<rustls::ClientConfig>) -> UpstreamClient {
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_connect_timeout(Some(t.connect_timeout));
    http.set_keepalive(Some(Duration::from_secs(60)));
    let builder = hyper_rustls::HttpsConnectorBuilder::new();
    let connector = match tls {
        Some(cfg) => {
            let mut b = builder.with_tls_config(cfg).https_only();
            // Validated as a server name when the config was loaded.
            if let Some(name) = t.tls.as_ref().and_then(|t| t.server_name.clone()) {
                if let Ok(name) = ServerName::try_from(name) {
                    b = b.with_server_name_resolver(FixedServerNameResolver::new(name));
                }
            }
            match t.protocol {
                UpstreamProtocol::Http1 => b.enable_http1().wrap_connector(http),
                UpstreamProtocol::Http2 => b.enable_http2().wrap_connector(http),
                UpstreamProtocol::Auto => b.enable_all_versions().wrap_connector(http),
            }
        }
        None => builder
            .with_tls_config(empty_tls_config())
            .https_or_http()
            .enable_http1()
            .wrap_connector(http),
    };
    let mut b = Client::builder(TokioExecutor::new());
    b.pool_idle_timeout(t.pool_idle_timeout)
        .pool_max_idle_per_host(t.pool_max_idle_per_endpoint)
        .pool_timer(TokioTimer::new())
        .timer(TokioTimer::new());
    if t.protocol == UpstreamProtocol::Http2 && t.tls.is_none() {
        b.http2_only(true);
    }
    b.build(connector)
}

/// Placeholder TLS config for cleartext clusters, whose connector never starts TLS.
fn empty_tls_config() -> rustls::ClientConfig {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    match rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
    {
        Ok(b) => b
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_no_client_auth(),
        // ring supports the default versions; this arm only keeps the type checker honest.
        Err(_) => rustls::ClientConfig::builder()
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_no_client_auth(),
    }
}
